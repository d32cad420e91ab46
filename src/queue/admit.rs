//! Admission and enqueue in one script (`admit.lua` + `enqueue.lua`): a
//! Slack event costs one Redis round trip when every key it touches is in
//! one slot (see [`Queue::admits_in_one_script`]).

use crate::domain::{ConversationId, Destination, InboundMessage};

use super::{EnqueueMode, Enqueued, Queue, QueueError};

/// A token bucket for the script, its numbers already formatted (they are
/// the same for every event until the settings change).
#[derive(Debug, Clone)]
pub struct ScriptBucket {
    /// The bucket's name (its key is in shard 0).
    pub name: String,
    /// Refill rate per second (shared: the same for every event).
    pub rate: std::sync::Arc<str>,
    pub burst: std::sync::Arc<str>,
}

/// What admission asks of Redis for one message.
#[derive(Debug, Clone, Default)]
pub struct AdmitLimits {
    /// Buckets to take one token from, in order; the first one short refuses.
    pub buckets: Vec<ScriptBucket>,
    /// Refuse when this many conversations already wait in the shared queue.
    pub max_waiting: u64,
    /// The UTC day whose spend is compared, and the `(usage field, cap in
    /// millionths of a dollar)` pairs; a field at or above its cap refuses.
    pub budget: Option<(String, Vec<(String, String)>)>,
}

/// What became of a message through [`Queue::admit_and_enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Admitted (or a duplicate, or not in a conversation): as `enqueue`.
    Enqueued(Enqueued),
    /// `AdmitLimits::buckets[i]` had no token: not queued.
    RateShort(usize),
    /// Too many conversations waiting: not queued.
    Busy,
    /// The cap `AdmitLimits::budget` `[i]` is reached: not queued.
    OverBudget(usize),
}

impl Queue {
    /// Whether admission and enqueue of a message for `cid` can be one
    /// script: the buckets and the usage hash live in shard 0, so the
    /// conversation must too (always so with one shard, the default).
    pub fn admits_in_one_script(&self, cid: &ConversationId) -> bool {
        self.keys().shard_of(cid) == 0
    }

    /// Check `limits`, then enqueue as [`Queue::enqueue_acknowledged`] does,
    /// in one script. A duplicate or a follow-up with no conversation takes
    /// no token. Only when [`Queue::admits_in_one_script`].
    pub async fn admit_and_enqueue(
        &self,
        message: &InboundMessage,
        destination: &Destination,
        mode: EnqueueMode,
        acknowledge: bool,
        limits: &AdmitLimits,
    ) -> Result<Admitted, QueueError> {
        if !self.admits_in_one_script(&message.conversation) {
            return Err(super::protocol(
                "admit",
                "the conversation is not in the admission keys' shard".into(),
            ));
        }
        let caps = limits.budget.as_ref().map_or(&[][..], |(_, c)| &c[..]);
        let mut call = self
            .enqueue_call_of(
                &self.scripts().admit,
                message,
                destination,
                mode,
                acknowledge,
            )?
            .arg(limits.buckets.len())
            .arg(limits.max_waiting)
            .arg(caps.len());
        for b in &limits.buckets {
            call = call.arg(&b.name).arg(&*b.rate).arg(&*b.burst);
        }
        if let Some((day, caps)) = limits.budget.as_ref().filter(|_| !caps.is_empty()) {
            call = call.arg(day);
            for (field, cap) in caps {
                call = call.arg(field).arg(cap);
            }
        }
        let mut conn = self.shared_conn().await?;
        let reply: String = call.invoke_on(&mut conn).await?;
        let index = |i: Option<&str>| {
            i.and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| i.checked_sub(1))
                .ok_or_else(|| super::protocol("admit", reply.clone()))
        };
        // Read as enqueue's reply unless it is a refusal (split once).
        let Some(refusal) = reply.strip_prefix("refused ") else {
            return Ok(Admitted::Enqueued(super::enqueued(&reply)?));
        };
        let mut words = refusal.split(' ');
        match words.next() {
            Some("rate") => Ok(Admitted::RateShort(index(words.next())?)),
            Some("busy") => Ok(Admitted::Busy),
            Some("budget") => Ok(Admitted::OverBudget(index(words.next())?)),
            _ => Err(super::protocol("admit", reply.clone())),
        }
    }
}
