//! The conversation queue on Redis: per-conversation order, collect mode,
//! fenced leases, affinity, reclaim, dead letters and the outbox.
//!
//! Ingress calls [`Queue::enqueue`]; workers [`Queue::claim`] a conversation,
//! run a turn under a [`Lease`] (kept alive by a [`LeaseKeeper`]) and
//! [`Queue::commit`] or [`Queue::fail`] it; egress reads the outbox; any
//! process runs the [`Reaper`]. docs/queue.md explains the keys, the state
//! machine and why each rule holds.

mod admin;
mod admit;
mod depth;
mod encode;
mod keys;
mod lease;
mod outbox;
mod pool;
mod reaper;
mod scripts;
mod settings;
mod turn;
mod types;
mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::domain::{ConversationId, Destination, InboundMessage};
use crate::store::RedisPool;

pub use admit::{AdmitLimits, Admitted, ScriptBucket};
pub use depth::{DEPTH_EXPORT_INTERVAL, PoolSummary, QueueDepth, export_depth};
pub use keys::{Keys, ShardKeys};
pub use lease::LeaseKeeper;
pub use outbox::{Bucket, REPLY_STATE_TTL_SECS, StateWrite};
pub use pool::PoolShape;
pub use reaper::Reaper;
pub use scripts::ScriptCall;
pub use settings::QueueSettings;
pub use types::*;

use scripts::Scripts;

/// Why a queue call failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no Redis connection: {0}")]
    Pool(#[from] crate::store::PoolError),
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("lease on {0} is no longer held (fenced out)")]
    Fenced(ConversationId),
    #[error("unexpected reply from the {script} script: {detail}")]
    Protocol {
        script: &'static str,
        detail: String,
    },
    #[error("cannot encode or decode a queued message: {0}")]
    Codec(#[from] serde_json::Error),
    /// A commit's transcript continues a stored session that is not there
    /// (another session, or another length): nothing was written.
    #[error("the stored session of {0} does not end where the transcript's new part begins")]
    SessionMismatch(ConversationId),
}

impl QueueError {
    /// Worth retrying with backoff (Redis down or slow), as opposed to a
    /// verdict (fenced) or a bug.
    pub fn is_transient(&self) -> bool {
        matches!(self, QueueError::Pool(_) | QueueError::Redis(_))
    }
}

/// Text of the error reply a dead-lettered batch gets.
const DEAD_LETTER_TEXT: &str = "Sorry, I could not answer this message: it failed several \
    times, so I have set it aside for an operator to look at. You can try again later.";

/// A cheap, clonable handle on the queue.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    pool: RedisPool,
    /// Short commands on the hot ingress path, pipelined on one socket.
    shared: Arc<crate::store::SharedConnection>,
    keys: Keys,
    settings: QueueSettings,
    scripts: Scripts,
    /// Round-robin start shard for claims.
    next_shard: AtomicUsize,
}

impl Queue {
    pub fn new(pool: RedisPool, prefix: &str, settings: QueueSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared: Arc::new(crate::store::SharedConnection::of(&pool)),
                pool,
                keys: Keys::new(prefix, settings.shards),
                settings,
                scripts: Scripts::load(),
                next_shard: AtomicUsize::new(0),
            }),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.inner.settings
    }

    pub(crate) fn scripts(&self) -> &Scripts {
        &self.inner.scripts
    }

    pub(crate) async fn conn(&self) -> Result<crate::store::Connection, QueueError> {
        Ok(self.inner.pool.get().await?)
    }

    /// The connection shared by short commands (see
    /// [`crate::store::SharedConnection`]); never for a blocking read.
    pub(crate) async fn shared_conn(&self) -> Result<crate::store::SharedHandle, QueueError> {
        Ok(self.inner.shared.get().await?)
    }

    fn ms(d: std::time::Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    /// The enqueue call for `message` (public so tests can check its keys).
    /// With `acknowledge`, a Slack message also gets an acknowledgement
    /// entry in the outbox (egress adds the reaction).
    pub fn enqueue_call(
        &self,
        message: &InboundMessage,
        destination: &Destination,
        mode: EnqueueMode,
        acknowledge: bool,
    ) -> Result<ScriptCall<'_>, QueueError> {
        let enqueue = &self.scripts().enqueue;
        self.enqueue_call_of(enqueue, message, destination, mode, acknowledge)
    }

    /// [`Queue::enqueue_call`] of `script` (enqueue.lua, or admit.lua
    /// before it): the keys and arguments of enqueue.lua, to which `script`
    /// may add its own arguments.
    fn enqueue_call_of<'a>(
        &'a self,
        script: &'a redis::Script,
        message: &InboundMessage,
        destination: &Destination,
        mode: EnqueueMode,
        acknowledge: bool,
    ) -> Result<ScriptCall<'a>, QueueError> {
        let cid = &message.conversation;
        let k = self.keys().for_conversation(cid);
        let keys = k.enqueue_keys(cid);
        let s = self.settings();
        let mut call = ScriptCall::new(script, keys)
            .arg(cid)
            .arg_with(|out| encode::message_json(out, message))?
            .arg_with(|out| encode::destination_json(out, destination))?
            .arg(s.inbox_cap)
            .arg(Self::ms(s.idle_ttl))
            .arg(s.dedupe_ttl.as_secs().max(1))
            .arg(if mode == EnqueueMode::ExistingOnly {
                "1"
            } else {
                "0"
            })
            .arg(match destination {
                // Slack users see a reaction on their message at once.
                Destination::Slack { .. } if acknowledge => message.external_id.as_str(),
                _ => "",
            })
            .arg(k.base())
            .arg(message.dedupe_keys.len());
        for key in &message.dedupe_keys {
            call = call.arg(key);
        }
        Ok(call)
    }

    /// Queue one message for its conversation, deduplicated on its keys, and
    /// schedule the conversation if it is idle (waking the worker that
    /// should take it). One round trip. A Slack message is
    /// acknowledged (see [`Queue::enqueue_acknowledged`]).
    pub async fn enqueue(
        &self,
        message: &InboundMessage,
        destination: &Destination,
        mode: EnqueueMode,
    ) -> Result<Enqueued, QueueError> {
        self.enqueue_acknowledged(message, destination, mode, true)
            .await
    }

    /// [`Queue::enqueue`], with an acknowledgement entry in the outbox for a
    /// Slack message only when `acknowledge` (no reaction configured: no
    /// entry, so egress has nothing to read for it).
    pub async fn enqueue_acknowledged(
        &self,
        message: &InboundMessage,
        destination: &Destination,
        mode: EnqueueMode,
        acknowledge: bool,
    ) -> Result<Enqueued, QueueError> {
        let call = self.enqueue_call(message, destination, mode, acknowledge)?;
        let mut conn = self.shared_conn().await?;
        enqueued(&call.invoke_on::<String, _>(&mut conn).await?)
    }

    /// Whether a conversation record exists (e.g. a Slack thread the bot is in).
    pub async fn conversation_exists(&self, cid: &ConversationId) -> Result<bool, QueueError> {
        let key = self.keys().for_conversation(cid).conv(cid);
        let mut conn = self.conn().await?;
        Ok(redis::cmd("EXISTS")
            .arg(key)
            .query_async::<i64>(&mut *conn)
            .await?
            == 1)
    }

    /// The conversation record's fields (admin views and tests).
    pub async fn conversation(
        &self,
        cid: &ConversationId,
    ) -> Result<std::collections::HashMap<String, String>, QueueError> {
        let key = self.keys().for_conversation(cid).conv(cid);
        let mut conn = self.conn().await?;
        Ok(redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut *conn)
            .await?)
    }

    /// The destination ingress recorded for a conversation.
    pub async fn destination(
        &self,
        cid: &ConversationId,
    ) -> Result<Option<Destination>, QueueError> {
        let key = self.keys().for_conversation(cid).conv(cid);
        let mut conn = self.conn().await?;
        let dest: Option<String> = redis::cmd("HGET")
            .arg(key)
            .arg("dest")
            .query_async(&mut *conn)
            .await?;
        Ok(dest.map(|d| serde_json::from_str(&d)).transpose()?)
    }

    /// Claim the next ready conversation for `worker`'s `slot`: its own
    /// affinity queue first, then the shared queue, over every shard. The
    /// caller has just taken a wake-up from its wake list (or has none to
    /// take): see [`Queue::claim_more`] for a claim made because the last
    /// one said more was ready.
    pub async fn claim(&self, worker: &WorkerId, slot: u32) -> Result<ClaimOutcome, QueueError> {
        self.claim_taking(worker, slot, false).await
    }

    /// [`Queue::claim`] after a claim that said `more_ready`: the worker
    /// took no wake-up for this one, so the pop removes the one queued with
    /// what it takes. Otherwise that wake-up would be left behind, and the
    /// worker's next wait would return at once only to pop an empty queue.
    /// With several shards a wake-up cannot be matched to its shard, and
    /// this is [`Queue::claim`].
    pub async fn claim_more(
        &self,
        worker: &WorkerId,
        slot: u32,
    ) -> Result<ClaimOutcome, QueueError> {
        self.claim_taking(worker, slot, self.keys().shards() == 1)
            .await
    }

    async fn claim_taking(
        &self,
        worker: &WorkerId,
        slot: u32,
        take_wake: bool,
    ) -> Result<ClaimOutcome, QueueError> {
        let shards = usize::from(self.keys().shards());
        let start = self.inner.next_shard.fetch_add(1, Ordering::Relaxed);
        for i in 0..shards {
            let shard = ((start + i) % shards) as u16;
            // A popped conversation can turn out stale (its state moved on);
            // keep popping this shard until a claim or an empty queue. The
            // pops after the first hold no wake-up of their own.
            for attempt in 0..64 {
                let take = take_wake || (attempt > 0 && shards == 1);
                match self.claim_in_shard(shard, worker, slot, take).await? {
                    Some(ClaimOutcome::Empty) => break,
                    Some(outcome) => return Ok(outcome),
                    None => continue,
                }
            }
        }
        Ok(ClaimOutcome::Empty)
    }

    /// Wait up to `timeout` for a wake-up, then claim as [`Queue::claim`]
    /// does, in one round trip: the claim is pipelined behind the blocking
    /// pop, so Redis runs it the moment the wait ends (a wake-up or the
    /// timeout) instead of answering the wait and then hearing from the
    /// worker again. One shard only: with more, a worker waits on each in
    /// turn ([`Queue::wait_for_work`]) and then claims.
    pub async fn wait_and_claim(
        &self,
        worker: &WorkerId,
        slot: u32,
        timeout: std::time::Duration,
    ) -> Result<ClaimOutcome, QueueError> {
        let k = self.keys().shard(0);
        let call = self.pop_claim_call(&k, worker, slot, false);
        let mut pipe = redis::pipe();
        pipe.cmd("BLPOP")
            .arg(k.wake_worker(worker.as_str()))
            .arg(k.wake())
            .arg(timeout.as_secs_f64())
            .ignore()
            .add_command(call.evalsha().clone());
        let mut conn = self.conn().await?;
        let reply: redis::RedisResult<(Option<Vec<String>>,)> = pipe.query_async(&mut *conn).await;
        drop(conn);
        let outcome = match reply {
            Ok((reply,)) => self.pop_claim_outcome(reply, worker, slot)?,
            // Redis lost its scripts (a restart): the plain claim loads it.
            // The wake-up, if any, was taken by the pop.
            Err(e) if scripts::is_no_script(&e) => None,
            Err(e) => return Err(e.into()),
        };
        match outcome {
            Some(outcome) => Ok(outcome),
            // Stale (or no script): pop again, as a claim does, holding no
            // wake-up for the pops after the first.
            None => self.claim_taking(worker, slot, true).await,
        }
    }

    /// The pop_claim call for `worker`'s `slot` in shard `k`.
    fn pop_claim_call<'a>(
        &'a self,
        k: &keys::ShardKeys,
        worker: &WorkerId,
        slot: u32,
        take_wake: bool,
    ) -> ScriptCall<'a> {
        ScriptCall::new(&self.scripts().pop_claim, k.pop_claim_keys(worker.as_str()))
            .arg(k.conv_prefix())
            .arg(k.inbox_prefix())
            .arg(worker)
            .arg(slot)
            .arg(Self::ms(self.settings().lease_ttl))
            .arg(self.settings().max_attempts)
            .arg(DEAD_LETTER_TEXT)
            .arg(if take_wake { "1" } else { "0" })
    }

    /// One pop and claim in one shard. `None`: the popped entry was stale.
    async fn claim_in_shard(
        &self,
        shard: u16,
        worker: &WorkerId,
        slot: u32,
        take_wake: bool,
    ) -> Result<Option<ClaimOutcome>, QueueError> {
        let k = self.keys().shard(shard);
        let mut conn = self.conn().await?;
        let reply: Option<Vec<String>> = self
            .pop_claim_call(&k, worker, slot, take_wake)
            .invoke(&mut conn)
            .await?;
        self.pop_claim_outcome(reply, worker, slot)
    }

    /// What a pop_claim reply says. `None`: the popped entry was stale.
    fn pop_claim_outcome(
        &self,
        reply: Option<Vec<String>>,
        worker: &WorkerId,
        slot: u32,
    ) -> Result<Option<ClaimOutcome>, QueueError> {
        let Some(reply) = reply else {
            return Ok(Some(ClaimOutcome::Empty));
        };
        let (Some(outcome), Some(cid), Some(more)) = (reply.first(), reply.get(1), reply.get(2))
        else {
            return Err(protocol("pop_claim", format!("{reply:?}")));
        };
        // With more than one shard, another shard may hold work.
        let more_ready = more == "1" || self.keys().shards() > 1;
        let cid = ConversationId::new(cid.clone());
        match outcome.as_str() {
            "claimed" => {
                // From the third field on, the fields are the claim's.
                let mut claim = parse_claim(cid, worker, slot, &reply[2..])?;
                claim.more_ready = more_ready;
                Ok(Some(ClaimOutcome::Claimed(Box::new(claim))))
            }
            "dead" => Ok(Some(ClaimOutcome::DeadLettered { conversation: cid })),
            "stale" => Ok(None),
            _ => Err(protocol("pop_claim", format!("{reply:?}"))),
        }
    }
}

fn protocol(script: &'static str, detail: String) -> QueueError {
    QueueError::Protocol { script, detail }
}

/// A claim from pop_claim.lua's fields: `reply[0]` is skipped, then epoch,
/// attempt, batch end, owner (worker, slot, generation), session id,
/// destination, and the batch's (id, message) pairs.
fn parse_claim(
    cid: ConversationId,
    worker: &WorkerId,
    slot: u32,
    reply: &[String],
) -> Result<Claim, QueueError> {
    if reply.len() < 9 || !(reply.len() - 9).is_multiple_of(2) {
        return Err(protocol("claim", format!("{} fields", reply.len())));
    }
    let num = |i: usize| -> Result<u64, QueueError> {
        reply[i]
            .parse()
            .map_err(|_| protocol("claim", format!("field {i} is not a number: {}", reply[i])))
    };
    let owner = match (
        WorkerId::new(reply[4].clone()),
        reply[5].parse(),
        reply[6].parse(),
    ) {
        (Some(worker), Ok(slot), Ok(generation)) => Some(Owner {
            worker,
            slot,
            generation,
        }),
        _ => None,
    };
    let mut messages = Vec::with_capacity((reply.len() - 9) / 2);
    for pair in reply[9..].chunks(2) {
        messages.push(QueuedMessage {
            id: pair[0].clone(),
            message: serde_json::from_str(&pair[1])?,
        });
    }
    Ok(Claim {
        lease: Lease {
            conversation: cid,
            epoch: num(1)?,
            worker: worker.clone(),
            slot,
        },
        attempt: u32::try_from(num(2)?).unwrap_or(u32::MAX),
        batch: reply[3].clone(),
        owner,
        session_id: Some(reply[7].clone()).filter(|s| !s.is_empty()),
        destination: serde_json::from_str(&reply[8]).ok(),
        messages,
        more_ready: true,
    })
}

/// What enqueue.lua answered.
fn enqueued(reply: &str) -> Result<Enqueued, QueueError> {
    let mut words = reply.splitn(5, ' ');
    match words.next() {
        // The script woke the owner it routed the conversation to.
        Some("queued") => match (words.next(), words.next(), words.next(), words.next()) {
            (Some(id), Some(position), Some(ahead), Some(_owner)) => Ok(Enqueued::Queued {
                position: position.parse().unwrap_or(0),
                ahead: ahead.parse().ok(),
                id: id.to_owned(),
            }),
            _ => Err(protocol("enqueue", reply.to_owned())),
        },
        Some("duplicate") => Ok(Enqueued::Duplicate),
        Some("overflow") => Ok(Enqueued::Overflow),
        Some("no_conversation") => Ok(Enqueued::NoConversation),
        _ => Err(protocol("enqueue", reply.to_owned())),
    }
}

#[cfg(test)]
mod tests;
