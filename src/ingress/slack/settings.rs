//! What Slack ingress reads from the `[slack]` config section.
//!
//! The same fields, documented for `config/switchboard.toml`:
//!
//! ```toml
//! [slack]
//! # This app's id (Basic Information > App ID, e.g. "A0123456789"). Events
//! # for any other app id are ignored. Unset: events for any app are accepted.
//! # app_id = "A0123456789"
//! # The bot's own user id ("U..."), whose messages are always ignored and
//! # whose leading @-mention is stripped. Unset: taken from each event's
//! # `authorizations`.
//! # bot_user_id = "U0123456789"
//! # Accept messages written by other bots and apps (never this bot's own).
//! # Beware of two bots answering each other in a loop.
//! allow_other_bots = false
//! # What one DM conversation is: "channel" (one continuing conversation per
//! # DM, replies posted in the DM itself) or "thread" (one per thread, like
//! # channels).
//! dm_conversation = "channel"
//! # Largest Events API request body accepted; larger ones get 413.
//! max_body_bytes = 1048576
//! # How long a request may wait for Redis to queue its event before it is
//! # answered 503 (Slack then retries). Keep it under Slack's 3s timeout.
//! enqueue_deadline = "2s"
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Slack ingress settings (part of `[slack]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackIngressSettings {
    /// This app's id (`A...`). Events for any other app id are ignored.
    /// Unset: events for any app are accepted.
    pub app_id: Option<String>,
    /// The bot's own user id (`U...`): its messages are always ignored and its
    /// leading @-mention is stripped. Unset: taken from each event's
    /// `authorizations`.
    pub bot_user_id: Option<String>,
    /// Accept messages written by other bots and apps (never this bot's own).
    pub allow_other_bots: bool,
    /// What one DM conversation is: the whole DM channel, or one thread.
    pub dm_conversation: DmConversation,
    /// Largest Events API request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long a request may wait for its event to be queued before it is
    /// answered 503 (Slack retries). Keep it under Slack's 3 s timeout.
    #[serde(with = "humantime_serde")]
    pub enqueue_deadline: Duration,
}

impl Default for SlackIngressSettings {
    fn default() -> Self {
        Self {
            app_id: None,
            bot_user_id: None,
            allow_other_bots: false,
            dm_conversation: DmConversation::Channel,
            max_body_bytes: 1024 * 1024,
            enqueue_deadline: Duration::from_secs(2),
        }
    }
}

/// How direct messages map to conversations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DmConversation {
    /// One continuing conversation per DM channel; replies go to the DM
    /// itself, not into a thread.
    #[default]
    Channel,
    /// One conversation per thread, as in channels: a top-level DM starts a
    /// thread rooted at itself and the reply goes into that thread.
    Thread,
}

/// A setting with a value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `slack.{field}`: {reason}")]
pub struct InvalidSetting {
    pub field: &'static str,
    pub reason: &'static str,
}

/// Slack gives up on a request after this long.
const SLACK_ACK_TIMEOUT: Duration = Duration::from_secs(3);

impl SlackIngressSettings {
    /// Check the values together; call once when config is loaded.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |field, reason| Err(InvalidSetting { field, reason });
        if self
            .app_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return invalid(
                "app_id",
                "must not be empty; leave it unset to accept any app",
            );
        }
        if self
            .bot_user_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return invalid("bot_user_id", "must not be empty; leave it unset");
        }
        if self.max_body_bytes == 0 {
            return invalid("max_body_bytes", "must be greater than 0");
        }
        if self.enqueue_deadline.is_zero() || self.enqueue_deadline >= SLACK_ACK_TIMEOUT {
            return invalid(
                "enqueue_deadline",
                "must be more than 0s and less than Slack's 3s timeout",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let s = SlackIngressSettings::default();
        assert_eq!(s.dm_conversation, DmConversation::Channel);
        assert_eq!(s.max_body_bytes, 1_048_576);
        assert_eq!(s.enqueue_deadline, Duration::from_secs(2));
        assert!(!s.allow_other_bots);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn the_documented_toml_parses_to_the_defaults() {
        let doc = include_str!("settings.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! [slack]"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: SlackIngressSettings = toml::from_str(&doc).expect("documented toml");
        assert_eq!(parsed, SlackIngressSettings::default());
    }

    #[test]
    fn fields_parse_from_toml_and_unknown_fields_are_errors() {
        let parsed: SlackIngressSettings = toml::from_str(
            r#"
            app_id = "A1"
            bot_user_id = "UBOT"
            allow_other_bots = true
            dm_conversation = "thread"
            max_body_bytes = 2048
            enqueue_deadline = "1500ms"
            "#,
        )
        .expect("toml");
        assert_eq!(parsed.app_id.as_deref(), Some("A1"));
        assert_eq!(parsed.dm_conversation, DmConversation::Thread);
        assert_eq!(parsed.enqueue_deadline, Duration::from_millis(1500));
        assert_eq!(parsed.validate(), Ok(()));

        let unknown = toml::from_str::<SlackIngressSettings>("dm_conversations = \"thread\"");
        assert!(unknown.is_err());
        let bad_mode = toml::from_str::<SlackIngressSettings>("dm_conversation = \"dm\"");
        assert!(bad_mode.is_err());
    }

    #[test]
    fn impossible_values_are_refused() {
        let check = |s: SlackIngressSettings| s.validate().map_err(|e| e.field);
        let base = SlackIngressSettings::default;
        assert_eq!(
            check(SlackIngressSettings {
                enqueue_deadline: Duration::from_secs(3),
                ..base()
            }),
            Err("enqueue_deadline")
        );
        assert_eq!(
            check(SlackIngressSettings {
                max_body_bytes: 0,
                ..base()
            }),
            Err("max_body_bytes")
        );
        assert_eq!(
            check(SlackIngressSettings {
                app_id: Some(" ".into()),
                ..base()
            }),
            Err("app_id")
        );
    }
}
