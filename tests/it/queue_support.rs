//! Helpers for queue tests: a queue on a test Redis, messages, outbox reading.

use std::time::Duration;

use switchboard::config::{RedisSettings, Secret};
use switchboard::domain::{ConversationId, Destination, InboundMessage};
use switchboard::queue::{
    Claim, ClaimOutcome, Commit, EnqueueMode, Enqueued, OutboxKind, Owner, Queue, QueueSettings,
    WorkerId,
};

use crate::helpers::{TestRedis, unique_prefix};

/// Queue settings with short leases, so reclaim happens within a test.
pub fn fast_settings() -> QueueSettings {
    QueueSettings {
        lease_ttl: Duration::from_millis(800),
        lease_margin: Duration::from_millis(300),
        reaper_interval: Duration::from_millis(50),
        heartbeat_ttl: Duration::from_millis(600),
        max_attempts: 3,
        ..QueueSettings::default()
    }
}

pub fn queue_on(url: &str, prefix: &str, settings: QueueSettings) -> Queue {
    let redis = RedisSettings {
        pool_size: 16,
        ..RedisSettings::default()
    };
    let pool = switchboard::store::connect(&Secret::new(url), &redis).expect("pool");
    Queue::new(pool, prefix, settings)
}

pub fn test_queue(redis: &TestRedis, test: &str, settings: QueueSettings) -> (Queue, String) {
    let prefix = unique_prefix(test);
    (queue_on(&redis.url(), &prefix, settings), prefix)
}

pub fn message(cid: &str, n: u32) -> InboundMessage {
    InboundMessage {
        conversation: ConversationId::new(cid),
        dedupe_keys: vec![format!("test:{cid}:{n}")],
        sender: "U1".into(),
        sender_name: Some("Ada".into()),
        text: format!("message {n}"),
        files: vec![],
        external_id: n.to_string(),
        received_at_ms: 0,
    }
}

pub fn dest() -> Destination {
    Destination::Console {
        session: "test".into(),
    }
}

pub async fn enqueue(queue: &Queue, cid: &str, n: u32) -> Enqueued {
    queue
        .enqueue(&message(cid, n), &dest(), EnqueueMode::CreateOrAppend)
        .await
        .expect("enqueue")
}

pub fn worker(name: &str) -> WorkerId {
    WorkerId::new(name).expect("worker id")
}

pub async fn claim(queue: &Queue, w: &WorkerId) -> Option<Claim> {
    match queue.claim(w, 0).await.expect("claim") {
        ClaimOutcome::Claimed(c) => Some(*c),
        _ => None,
    }
}

/// The texts of a batch, in order.
pub fn texts(claim: &Claim) -> Vec<String> {
    claim
        .messages
        .iter()
        .map(|m| m.message.text.clone())
        .collect()
}

pub fn reply(text: &str) -> Commit {
    Commit {
        parts: vec![text.to_string()],
        owner: None,
        cost_usd: 0.0,
        final_seq: 1_000,
        session: None,
        charge: None,
    }
}

/// Commit `claim` with `text`, keeping the session on `worker`'s `slot`
/// (generation `generation`), so its follow-ups are routed back there.
pub async fn commit_owned(
    queue: &Queue,
    claim: &Claim,
    text: &str,
    (worker, slot, generation): (&WorkerId, u32, u64),
) {
    let mut commit = reply(text);
    commit.owner = Some(Owner {
        worker: worker.clone(),
        slot,
        generation,
    });
    queue.commit(&claim.lease, &commit).await.expect("commit");
}

/// Final (non-progress) outbox entries: (reply id, text, error).
pub async fn finals(queue: &Queue) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for shard in 0..queue.keys().shards() {
        for e in queue.outbox_entries(shard).await.expect("outbox") {
            if e.kind == OutboxKind::Final {
                out.push((e.reply_id, e.text, e.error));
            }
        }
    }
    out
}
