//! Types every layer shares: conversations, inbound messages, where replies
//! go. Ingress builds them, the queue stores them, workers and egress read them.

use serde::{Deserialize, Serialize};

/// A conversation: the unit of ordering and of agent memory.
///
/// Slack: `slack:{team}:{channel}:{thread_ts}`; email: `email:{mailbox}:{root
/// message id}`; console: `console:{id}`. Built only by ingress.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConversationId(String);

impl ConversationId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn slack(team: &str, channel: &str, thread_ts: &str) -> Self {
        Self(["slack:", team, ":", channel, ":", thread_ts].concat())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a conversation's replies go. Written by ingress when it creates the
/// conversation; egress reads it from there, never from a worker's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Destination {
    /// A Slack thread (or a DM channel when `thread_ts` is None).
    Slack {
        team: String,
        channel: String,
        thread_ts: Option<String>,
    },
    /// An email thread: the reply goes to `to`, threaded on `message_id`.
    Email {
        mailbox: String,
        to: String,
        subject: String,
        message_id: String,
        references: Vec<String>,
    },
    /// The local console (`switchboard chat`).
    Console { session: String },
}

/// A file attached to a message (metadata only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub id: String,
    pub name: String,
    pub mimetype: Option<String>,
    pub size: Option<u64>,
    pub url: Option<String>,
}

/// One message from a person, as queued for a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    pub conversation: ConversationId,
    /// Keys this message is deduplicated on (e.g. `slack:event:Ev1`,
    /// `slack:msg:C1:1700000000.000100`). Any one already seen: duplicate.
    pub dedupe_keys: Vec<String>,
    /// Who wrote it (a Slack user id, a mail address).
    pub sender: String,
    /// A display name, when known.
    #[serde(default)]
    pub sender_name: Option<String>,
    pub text: String,
    #[serde(default)]
    pub files: Vec<FileRef>,
    /// The source's own id of the message (Slack ts, Message-ID).
    pub external_id: String,
    /// When ingress received it, ms since the epoch.
    pub received_at_ms: u64,
}
