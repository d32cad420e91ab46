//! What the queue's calls take and return.

use serde::{Deserialize, Serialize};

use crate::domain::{ConversationId, Destination, InboundMessage};

/// A worker's id: unique per worker process; no `|` (used as a separator).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(String);

impl WorkerId {
    /// `None` when the id is empty or contains `|`, `:` or whitespace.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        let ok = !id.is_empty()
            && !id.contains(['|', ':', '{', '}'])
            && !id.contains(char::is_whitespace);
        ok.then_some(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `worker-<pid>`, always valid.
    pub fn fallback() -> Self {
        Self(format!("worker-{}", std::process::id()))
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ids go to scripts as their text.
macro_rules! redis_arg_as_str {
    ($($t:ty),*) => {$(
        impl redis::ToRedisArgs for $t {
            fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
                out.write_arg(self.as_str().as_bytes());
            }
        }
    )*};
}
redis_arg_as_str!(WorkerId, ConversationId);

/// Which slot of which worker holds (or last held) a conversation's live
/// session. The generation changes each time the slot's process is replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub worker: WorkerId,
    pub slot: u32,
    pub generation: u64,
}

/// Whether enqueue may create the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueMode {
    /// Create it when new (mentions, DMs, new mail).
    CreateOrAppend,
    /// Only append to a conversation that exists (thread follow-ups).
    ExistingOnly,
}

/// What happened to an enqueued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued; `position` is its place in the conversation's inbox (1 = next),
    /// `ahead` how many conversations wait before it in the shared ready
    /// queue when this message put the conversation there (`None` when it
    /// did not: it was already waiting, running, or routed to its owner).
    Queued {
        id: String,
        position: u64,
        ahead: Option<u64>,
    },
    /// One of its dedupe keys was seen before: not queued again.
    Duplicate,
    /// The conversation's inbox is full: dead-lettered, the user told once.
    Overflow,
    /// `ExistingOnly` and there is no such conversation.
    NoConversation,
}

/// A message as stored in a conversation's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The inbox entry id (arrival order).
    pub id: String,
    pub message: InboundMessage,
}

/// A held lease: the right to run one turn of a conversation. Every fenced
/// call checks it at its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub conversation: ConversationId,
    pub epoch: u64,
    pub worker: WorkerId,
    pub slot: u32,
}

/// A claimed conversation: a frozen batch to answer in one turn.
#[derive(Debug, Clone)]
pub struct Claim {
    pub lease: Lease,
    /// The batch's id (its last inbox id): replies are keyed on it, so every
    /// attempt at one batch updates the same reply.
    pub batch: String,
    /// Which attempt at this batch this is (1 = first).
    pub attempt: u32,
    pub messages: Vec<QueuedMessage>,
    /// Where the conversation's live session was, if anywhere.
    pub owner: Option<Owner>,
    /// The agent's session id, when one was saved.
    pub session_id: Option<String>,
    pub destination: Option<Destination>,
    /// Whether more may be ready for this worker right away: when false,
    /// the worker waits for a wake-up instead of popping an empty queue.
    pub more_ready: bool,
}

/// The outcome of claiming.
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    Claimed(Box<Claim>),
    /// The batch had used up its attempts: dead-lettered with an error reply.
    DeadLettered {
        conversation: ConversationId,
    },
    /// Nothing ready.
    Empty,
}

/// What a committed turn leaves behind.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The reply's parts (usually one); each gets its own reply id.
    pub parts: Vec<String>,
    /// Keep the live session on this slot (affinity), or `None` to let the
    /// next turn resume anywhere.
    pub owner: Option<Owner>,
    /// What this turn cost (USD).
    pub cost_usd: f64,
    /// Sequence number of the final text; above every progress seq.
    pub final_seq: u64,
    /// The agent's session to store with the reply (as `save_session` does),
    /// so any slot can resume it; `None` leaves the stored one as it is.
    pub session: Option<SessionSave>,
    /// The turn's cost to add to the day's usage. Charged whether or not
    /// the commit lands (it was spent either way): in the commit script
    /// when the conversation is in shard 0 (where usage lives; always with
    /// one shard), else alongside it.
    pub charge: Option<Charge>,
}

/// How long a day's usage hash is kept (eight days).
pub const USAGE_TTL_SECS: i64 = 8 * 86_400;

/// Money in Redis is counted in whole millionths of a dollar: `HINCRBY`
/// adds integers exactly and costs Redis about a quarter of what
/// `HINCRBYFLOAT` does (no long-double parsing and printing, no rewrite
/// for replication). Rounded to the nearest; anything not a positive
/// finite amount counts as nothing.
pub fn micro_usd(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        // `as` saturates: no amount overflows.
        (usd * 1e6).round() as i64
    } else {
        0
    }
}

/// What a turn adds to one day's usage hash (shard 0): `cost_usd` (in
/// millionths of a dollar, see [`micro_usd`]) to each spend field and 1 to
/// the turns field.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub day: String,
    pub spend_fields: Vec<String>,
    pub turns_field: String,
    pub cost_usd: f64,
}

/// An agent session to store: its resume id and transcript, whole or
/// only what was appended since the last save.
#[derive(Debug, Clone)]
pub struct SessionSave {
    pub id: String,
    /// The transcript's bytes from `offset` on.
    pub transcript: Vec<u8>,
    /// 0: `transcript` is the whole transcript. Otherwise it continues the
    /// stored one of the same session, which must be `offset` bytes long
    /// (else the commit is refused with [`QueueError::SessionMismatch`]
    /// and nothing is written: send the whole transcript instead).
    ///
    /// [`QueueError::SessionMismatch`]: super::QueueError::SessionMismatch
    pub offset: u64,
}

/// The outcome of a failed turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailOutcome {
    /// It will be tried again (elsewhere, resumed).
    Retrying,
    /// Out of attempts or not retryable: dead-lettered with an error reply.
    DeadLettered,
}

/// A dead letter, for admins.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub shard: u16,
    pub conversation: ConversationId,
    pub reason: String,
    pub attempts: u32,
    /// The batch it held (empty for a message that overflowed the inbox).
    pub batch: String,
    pub messages: Vec<InboundMessage>,
    pub at_ms: u64,
}

/// One outbox entry, as egress reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// The stream entry id.
    pub id: String,
    pub shard: u16,
    pub kind: OutboxKind,
    pub conversation: ConversationId,
    /// `conversation/batch/part`: the idempotency key of a reply part.
    pub reply_id: String,
    pub part: u32,
    /// A later seq supersedes an earlier one for the same reply id.
    pub seq: u64,
    pub text: String,
    /// Set on error replies (dead letters, overflow): the reason.
    pub error: Option<String>,
    /// Source ids (Slack ts) of the messages this entry acknowledges (`Ack`)
    /// or answers (`Final`: their acknowledgements can be removed).
    pub acks: Vec<String>,
    pub at_ms: u64,
    /// Where the reply goes, when the entry carries it (final replies
    /// do); else egress reads the conversation's.
    pub destination: Option<Destination>,
    /// A final reply of which nothing was published before (a batch's first
    /// attempt, with no progress), read as a new entry: it has no reply
    /// state, and egress does not read it. False once a delivery of it was
    /// tried, and for entries read again after a leader stopped.
    pub fresh: bool,
}

/// What an outbox entry asks egress to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// Show the user their message was received (a reaction).
    Ack,
    /// The reply's text so far.
    Progress,
    /// The reply's final text.
    Final,
    /// A notice to the sender (a refusal, their place in line), posted once.
    Notice,
}

/// What one reaper pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub reclaimed: usize,
    pub workers_expired: usize,
}

#[cfg(test)]
mod tests {
    use super::micro_usd;

    #[test]
    fn money_in_millionths() {
        assert_eq!(micro_usd(0.0123), 12_300);
        assert_eq!(micro_usd(2.25), 2_250_000);
        assert_eq!(micro_usd(0.000_000_4), 0);
        assert_eq!(micro_usd(0.000_000_6), 1);
        assert_eq!(micro_usd(-1.0), 0);
        assert_eq!(micro_usd(f64::NAN), 0);
        assert_eq!(micro_usd(f64::INFINITY), 0);
        assert_eq!(micro_usd(1e30), i64::MAX);
    }
}
