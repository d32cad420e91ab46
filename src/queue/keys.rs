//! Every Redis key the queue uses, built in one place.
//!
//! Keys are `{prefix}:{s<shard>}:...`: the braces are a Redis Cluster hash
//! tag, so every key of one shard falls in one hash slot and every script
//! (which touches one conversation, hence one shard) stays in one slot.

use std::sync::Arc;

use crate::domain::ConversationId;

/// Key builder for a deployment (prefix) with a number of shards.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// Each shard's key prefix, `{prefix}:{s<shard>}` (shared: a shard's
    /// keys are built for every event, and cloning this costs no copy).
    bases: Vec<Arc<str>>,
    shards: u16,
}

impl Keys {
    pub fn new(prefix: &str, shards: u16) -> Self {
        let shards = shards.max(1);
        Self {
            prefix: prefix.to_string(),
            bases: (0..shards)
                .map(|n| Arc::from(format!("{prefix}:{{s{n}}}")))
                .collect(),
            shards,
        }
    }

    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// The shard a conversation lives in: a stable hash of its id.
    pub fn shard_of(&self, cid: &ConversationId) -> u16 {
        (fnv1a(cid.as_str().as_bytes()) % u64::from(self.shards)) as u16
    }

    /// Keys of shard `n`.
    pub fn shard(&self, n: u16) -> ShardKeys {
        ShardKeys {
            shard: n,
            base: match self.bases.get(usize::from(n)) {
                Some(base) => base.clone(),
                None => Arc::from(format!("{}:{{s{n}}}", self.prefix)),
            },
        }
    }

    /// Keys of the shard a conversation lives in.
    pub fn for_conversation(&self, cid: &ConversationId) -> ShardKeys {
        self.shard(self.shard_of(cid))
    }

    /// Every shard.
    pub fn all_shards(&self) -> impl Iterator<Item = ShardKeys> + '_ {
        (0..self.shards).map(|n| self.shard(n))
    }
}

/// Where a conversation's hash and inbox keys start, after the shard's base.
const CONV: &str = ":conv:";
const INBOX: &str = ":inbox:";

/// The keys of one shard.
#[derive(Debug, Clone)]
pub struct ShardKeys {
    pub shard: u16,
    base: Arc<str>,
}

impl ShardKeys {
    /// The shard's prefix, `{prefix}:{s<shard>}`: every key of the shard
    /// starts with it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The shard's prefix followed by `parts` (cheaper than `format!`: keys
    /// are built for every event).
    fn join(&self, parts: &[&str]) -> String {
        let len = self.base.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut key = String::with_capacity(len);
        key.push_str(&self.base);
        for part in parts {
            key.push_str(part);
        }
        key
    }

    /// Hash: the conversation record (destination, state, epoch, owner, counters).
    pub fn conv(&self, cid: &ConversationId) -> String {
        self.join(&[CONV, cid.as_str()])
    }
    /// A conversation's key is this and its id: for a script that names the
    /// key of a conversation it picks itself (pop_claim.lua).
    pub fn conv_prefix(&self) -> String {
        self.join(&[CONV])
    }
    /// Stream: messages waiting for the conversation, in arrival order.
    pub fn inbox(&self, cid: &ConversationId) -> String {
        self.join(&[INBOX, cid.as_str()])
    }
    /// As [`ShardKeys::conv_prefix`], for the inbox.
    pub fn inbox_prefix(&self) -> String {
        self.join(&[INBOX])
    }
    /// String: the agent session's transcript, for resume anywhere.
    pub fn session(&self, cid: &ConversationId) -> String {
        self.join(&[":session:", cid.as_str()])
    }
    /// String with TTL: an inbound dedupe key was seen.
    pub fn seen(&self, dedupe_key: &str) -> String {
        self.join(&[":seen:", dedupe_key])
    }
    /// Sorted set: conversations ready to run, by time scheduled.
    pub fn ready(&self) -> String {
        self.join(&[":ready"])
    }
    /// Sorted set (lexical): `worker|time|cid` routed to their owner worker.
    pub fn affine(&self) -> String {
        self.join(&[":ready:affine"])
    }
    /// Sorted set: conversation -> lease deadline (ms, server time).
    pub fn leases(&self) -> String {
        self.join(&[":leases"])
    }
    /// Hash: conversation -> the worker holding its lease.
    pub fn holders(&self) -> String {
        self.join(&[":holders"])
    }
    /// Sorted set: worker -> heartbeat deadline (ms, server time).
    pub fn workers(&self) -> String {
        self.join(&[":workers"])
    }
    /// Hash: worker -> its status JSON (slots), for `/admin/pool`.
    pub fn pool_status(&self) -> String {
        self.join(&[":pool"])
    }
    /// List: wake-up tokens for idle workers (shared queue).
    pub fn wake(&self) -> String {
        self.join(&[":wake"])
    }
    /// List: wake-up tokens for one worker (its affinity queue).
    pub fn wake_worker(&self, worker: &str) -> String {
        self.join(&[":wake:w:", worker])
    }
    /// Stream + consumer group: replies and progress for egress.
    pub fn outbox(&self) -> String {
        self.join(&[":outbox"])
    }
    /// String with TTL: who leads `role` for this shard (e.g. egress).
    pub fn lead(&self, role: &str) -> String {
        self.join(&[":lead:", role])
    }
    /// String with TTL: the pool's wanted shape (containers, slots per
    /// container), kept by the gateway that manages the pool.
    pub fn pool_shape(&self) -> String {
        self.join(&[":pool:shape"])
    }
    /// Sorted set: gateway -> liveness deadline (ms), of gateways that manage
    /// the pool (so a stopping leader knows whether another takes over).
    pub fn pool_managers(&self) -> String {
        self.join(&[":pool:managers"])
    }
    /// Hash: what egress has sent for a reply part (Slack ts, seq, pending).
    pub fn reply_state(&self, reply_id: &str) -> String {
        self.join(&[":reply:", reply_id])
    }
    /// List: replies for a `switchboard chat` session.
    pub fn console(&self, session: &str) -> String {
        self.join(&[":console:", session])
    }
    /// Hash: a shared token bucket.
    pub fn bucket(&self, name: &str) -> String {
        self.join(&[":bucket:", name])
    }
    /// The keys of notice.lua.
    pub fn notice_keys(&self, cid: &ConversationId) -> Vec<String> {
        vec![self.conv(cid), self.outbox()]
    }
    /// Hash: spend and turn counts of one UTC day (`YYYY-MM-DD`).
    pub fn usage(&self, day: &str) -> String {
        self.join(&[":usage:", day])
    }
    /// A small counter or flag with a TTL (loop guards, "told once" marks).
    pub fn mark(&self, name: &str) -> String {
        self.join(&[":mark:", name])
    }
    /// Stream: dead letters with their reason.
    pub fn dead(&self) -> String {
        self.join(&[":dead"])
    }
    /// Hash: an IMAP mailbox's progress (`uidvalidity`, `last_uid`).
    pub fn email_mailbox(&self, mailbox: &str) -> String {
        self.join(&[":email:", mailbox])
    }
    /// Counter with TTL: replies queued for one email thread in one hour.
    pub fn email_rate(&self, mailbox: &str, thread: &str, hour: u64) -> String {
        format!("{}:email-rate:{}:{}:{}", self.base, mailbox, thread, hour)
    }
}

/// The KEYS of each script, in the order the script reads them. Every list
/// belongs to one shard, hence (thanks to the hash tag) one hash slot.
impl ShardKeys {
    /// enqueue.lua (and admit.lua). The other keys it touches are named
    /// in the script from [`ShardKeys::base`] (see
    /// [`ShardKeys::named_by_enqueue`]).
    pub fn enqueue_keys(&self, cid: &ConversationId) -> [String; 2] {
        [self.conv(cid), self.inbox(cid)]
    }
    /// The keys enqueue.lua and admit.lua name from the base (`shard_key`
    /// in the prelude): what the script puts after `<base>:`, the value it
    /// appends (a message's dedupe key, a bucket's name, a usage day; here
    /// `dedupe`, `bucket` and `day`), and this file's name for the key. A
    /// test reads the scripts' `shard_key` calls and checks them against it.
    pub fn named_by_enqueue<'a>(
        &self,
        dedupe: &'a str,
        bucket: &'a str,
        day: &'a str,
    ) -> [(&'static str, &'a str, String); 9] {
        [
            ("ready", "", self.ready()),
            ("ready:affine", "", self.affine()),
            ("workers", "", self.workers()),
            ("wake", "", self.wake()),
            ("outbox", "", self.outbox()),
            ("dead", "", self.dead()),
            ("seen:", dedupe, self.seen(dedupe)),
            ("bucket:", bucket, self.bucket(bucket)),
            ("usage:", day, self.usage(day)),
        ]
    }
    /// The shard-wide keys of a claim or a turn's end, in the order
    /// pop_claim.lua and fail.lua take them.
    fn turn_keys(&self) -> [String; 8] {
        [
            self.leases(),
            self.holders(),
            self.ready(),
            self.affine(),
            self.workers(),
            self.wake(),
            self.outbox(),
            self.dead(),
        ]
    }
    /// pop_claim.lua. The popped conversation's keys are named in the
    /// script from [`ShardKeys::conv_prefix`] and
    /// [`ShardKeys::inbox_prefix`].
    pub fn pop_claim_keys(&self, worker: &str) -> Vec<String> {
        let mut keys = Vec::with_capacity(9);
        keys.extend(self.turn_keys());
        keys.push(self.wake_worker(worker));
        keys
    }
    /// fail.lua.
    pub fn turn_end_keys(&self, cid: &ConversationId) -> Vec<String> {
        let mut keys = Vec::with_capacity(10);
        keys.push(self.conv(cid));
        keys.push(self.inbox(cid));
        keys.extend(self.turn_keys());
        keys
    }
    pub fn renew_keys(&self, cid: &ConversationId) -> Vec<String> {
        vec![self.conv(cid), self.leases()]
    }
    pub fn progress_keys(&self, cid: &ConversationId) -> Vec<String> {
        vec![self.conv(cid), self.leases(), self.outbox()]
    }
    pub fn save_session_keys(&self, cid: &ConversationId) -> Vec<String> {
        vec![self.conv(cid), self.leases(), self.session(cid)]
    }
    pub fn commit_keys(&self, cid: &ConversationId) -> Vec<String> {
        vec![
            self.conv(cid),
            self.inbox(cid),
            self.leases(),
            self.holders(),
            self.ready(),
            self.affine(),
            self.workers(),
            self.wake(),
            self.outbox(),
            self.session(cid),
        ]
    }
    pub fn reclaim_keys(&self, cid: &ConversationId) -> Vec<String> {
        vec![
            self.conv(cid),
            self.leases(),
            self.holders(),
            self.ready(),
            self.affine(),
            self.workers(),
            self.wake(),
        ]
    }
    pub fn heartbeat_keys(&self) -> Vec<String> {
        vec![self.workers()]
    }
    pub fn reap_worker_keys(&self) -> Vec<String> {
        vec![
            self.workers(),
            self.affine(),
            self.ready(),
            self.holders(),
            self.leases(),
            self.wake(),
        ]
    }
    pub fn disown_keys(&self, cid: &ConversationId) -> Vec<String> {
        vec![self.conv(cid)]
    }
    pub fn requeue_dead_keys(&self, cid: &ConversationId) -> Vec<String> {
        vec![
            self.dead(),
            self.conv(cid),
            self.inbox(cid),
            self.ready(),
            self.affine(),
            self.workers(),
            self.wake(),
        ]
    }
}

/// FNV-1a, 64 bit: stable across processes and versions (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_spread_and_are_stable() {
        let keys = Keys::new("sb", 4);
        let cid = ConversationId::new("slack:T1:C1:1.2");
        assert_eq!(keys.shard_of(&cid), keys.shard_of(&cid.clone()));
        let used: std::collections::HashSet<u16> = (0..100)
            .map(|i| keys.shard_of(&ConversationId::new(format!("c{i}"))))
            .collect();
        assert_eq!(used.len(), 4);
        assert!(keys.for_conversation(&cid).conv(&cid).starts_with("sb:{s"));
    }
}
