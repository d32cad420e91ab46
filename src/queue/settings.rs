//! `[queue]`: leases, attempts, limits and sharding.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[queue]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Queue shards (Redis Cluster: each shard's keys share one hash slot).
    /// Changing it strands queued work: drain the queue first.
    pub shards: u16,
    /// How long a claimed conversation's lease lasts without renewal.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// A worker that could not renew for `lease_ttl - lease_margin` stops
    /// its turn and does not commit, before anyone else can reclaim it.
    #[serde(with = "humantime_serde")]
    pub lease_margin: Duration,
    /// How often any process looks for expired leases and dead workers.
    #[serde(with = "humantime_serde")]
    pub reaper_interval: Duration,
    /// A worker whose heartbeat is older than this is dead: its affinity
    /// queue and leases go back to the shared queue.
    #[serde(with = "humantime_serde")]
    pub heartbeat_ttl: Duration,
    /// Attempts per batch (including attempts whose worker died) before it
    /// is dead-lettered with one error reply.
    pub max_attempts: u32,
    /// Messages waiting per conversation; more get one "too many messages"
    /// reply and are dead-lettered.
    pub inbox_cap: u32,
    /// Conversation state and stored sessions expire after this long idle.
    #[serde(with = "humantime_serde")]
    pub idle_ttl: Duration,
    /// How long an inbound message id is remembered for deduplication.
    #[serde(with = "humantime_serde")]
    pub dedupe_ttl: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            shards: 1,
            lease_ttl: Duration::from_secs(30),
            lease_margin: Duration::from_secs(5),
            reaper_interval: Duration::from_secs(1),
            heartbeat_ttl: Duration::from_secs(10),
            max_attempts: 3,
            inbox_cap: 100,
            idle_ttl: Duration::from_secs(7 * 24 * 3600),
            dedupe_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl QueueSettings {
    /// Checks beyond the types; returns (field, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.shards == 0 {
            return Err(("queue.shards", "must be at least 1".into()));
        }
        if self.lease_margin >= self.lease_ttl {
            return Err((
                "queue.lease_margin",
                "must be shorter than queue.lease_ttl".into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(("queue.max_attempts", "must be at least 1".into()));
        }
        if self.inbox_cap == 0 {
            return Err(("queue.inbox_cap", "must be at least 1".into()));
        }
        if self.idle_ttl < Duration::from_secs(1) || self.dedupe_ttl < Duration::from_secs(1) {
            return Err((
                "queue.idle_ttl",
                "idle_ttl and dedupe_ttl must be at least 1s".into(),
            ));
        }
        Ok(())
    }
}
