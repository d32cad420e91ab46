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

use std::borrow::Cow;
use std::ops::Deref;

use serde::{Deserialize, Deserializer};

/// A string field, borrowed from the request body when it holds no escapes
/// (the common case: no copy), else unescaped into its own buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Text<'a>(Cow<'a, str>);

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// The outer body of every Events API request. Its `event` is read as
/// raw JSON by default, or straight as a [`MessageEvent`] (one pass, for
/// the common case; any other shape fails the whole read).
#[derive(Debug, Deserialize)]
#[serde(bound(deserialize = "E: Deserialize<'de>"))]
pub(super) struct Envelope<'a, E = &'a serde_json::value::RawValue> {
    /// `url_verification`, `event_callback`, `app_rate_limited`, ...
    #[serde(borrow, rename = "type")]
    pub kind: Text<'a>,
    /// Set on `url_verification`.
    #[serde(default, borrow)]
    pub challenge: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub team_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub api_app_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub event_id: Option<Text<'a>>,
    /// Read according to its `type`; other types' shapes vary too much.
    #[serde(default)]
    pub event: Option<E>,
    /// Who the event is delivered to: includes this app's bot user.
    #[serde(default, borrow)]
    pub authorizations: Option<Vec<Authorization<'a>>>,
}

/// Just an event's `type`.
#[derive(Debug, Deserialize)]
pub(super) struct EventKind<'a> {
    #[serde(default, borrow, rename = "type")]
    pub kind: Option<Text<'a>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Authorization<'a> {
    #[serde(default, borrow)]
    pub user_id: Option<Text<'a>>,
    #[serde(default)]
    pub is_bot: Option<bool>,
}

/// A `message` or `app_mention` event.
#[derive(Debug, Default, Deserialize)]
pub(super) struct MessageEvent<'a> {
    /// `message` or `app_mention` (other types are not read as this).
    #[serde(default, borrow, rename = "type")]
    pub kind: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub subtype: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub user: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub bot_id: Option<Text<'a>>,
    /// The sender's own workspace, when it differs (Slack Connect).
    #[serde(default, borrow)]
    pub user_team: Option<Text<'a>>,
    /// The sender's profile, where Slack includes it.
    #[serde(default, borrow)]
    pub user_profile: Option<UserProfile<'a>>,
    /// The app that posted the message, when an app did.
    #[serde(default, borrow)]
    pub app_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub bot_profile: Option<BotProfile<'a>>,
    #[serde(default, borrow)]
    pub team: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub channel: Option<Text<'a>>,
    /// `channel`, `group`, `im`, `mpim`; absent on `app_mention`.
    #[serde(default, borrow)]
    pub channel_type: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub text: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub ts: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub thread_ts: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub files: Option<Vec<File<'a>>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct BotProfile<'a> {
    #[serde(default, borrow)]
    pub app_id: Option<Text<'a>>,
}

/// File metadata. Files hidden by plan limits carry little more than an id.
#[derive(Debug, Deserialize)]
pub(super) struct File<'a> {
    #[serde(default, borrow)]
    pub id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub name: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub title: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub mimetype: Option<Text<'a>>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, borrow)]
    pub url_private: Option<Text<'a>>,
}

/// The part of `user_profile` admission reads.
#[derive(Debug, Default, Deserialize)]
pub struct UserProfile<'a> {
    /// A user from another organisation (Slack Connect).
    #[serde(default)]
    pub is_stranger: Option<bool>,
    #[serde(default, borrow)]
    pub team: Option<Text<'a>>,
}
