//! The parts of Slack's Events API payloads that ingress reads, as lenient
//! serde structs: every field optional, unknown fields ignored.
//!
//! Why not slack-morphism's `SlackPushEvent`: it requires fields we do not
//! need (`event_time`, ...), parses `subtype` into a closed enum and file URLs
//! into `Url`, and a known event type whose payload does not match its model
//! falls through to `Unknown`, so one odd field would turn a user's message
//! into an ignored event with no reason given. Here the envelope is parsed
//! with `event` kept as raw JSON; only `message` and `app_mention` events are
//! then read into [`MessageEvent`], and a mismatch there is reported as such.

use serde::Deserialize;

/// The outer body of every Events API request.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope {
    /// `url_verification`, `event_callback`, `app_rate_limited`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Set on `url_verification`.
    #[serde(default)]
    pub challenge: Option<String>,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub api_app_id: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
    /// Read according to its `type`; other types' shapes vary too much.
    #[serde(default)]
    pub event: Option<Box<serde_json::value::RawValue>>,
    /// Who the event is delivered to: includes this app's bot user.
    #[serde(default)]
    pub authorizations: Option<Vec<Authorization>>,
}

/// Just an event's `type`.
#[derive(Debug, Deserialize)]
pub(super) struct EventKind {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Authorization {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub is_bot: Option<bool>,
}

/// A `message` or `app_mention` event.
#[derive(Debug, Default, Deserialize)]
pub(super) struct MessageEvent {
    /// `message` or `app_mention` (other types are not read as this).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub subtype: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub bot_id: Option<String>,
    /// The sender's own workspace, when it differs (Slack Connect).
    #[serde(default)]
    pub user_team: Option<String>,
    /// The sender's profile, where Slack includes it.
    #[serde(default)]
    pub user_profile: Option<UserProfile>,
    /// The app that posted the message, when an app did.
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub bot_profile: Option<BotProfile>,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    /// `channel`, `group`, `im`, `mpim`; absent on `app_mention`.
    #[serde(default)]
    pub channel_type: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub ts: Option<String>,
    #[serde(default)]
    pub thread_ts: Option<String>,
    #[serde(default)]
    pub files: Option<Vec<File>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct BotProfile {
    #[serde(default)]
    pub app_id: Option<String>,
}

/// File metadata. Files hidden by plan limits carry little more than an id.
#[derive(Debug, Deserialize)]
pub(super) struct File {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub mimetype: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub url_private: Option<String>,
}

/// The part of `user_profile` admission reads.
#[derive(Debug, Default, Deserialize)]
pub struct UserProfile {
    /// A user from another organisation (Slack Connect).
    #[serde(default)]
    pub is_stranger: Option<bool>,
    #[serde(default)]
    pub team: Option<String>,
}
