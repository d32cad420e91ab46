//! How much work the queue holds and how big the pool is, over every shard,
//! exported as gauges for dashboards and autoscalers (KEDA, an HPA).
//!
//! Every gateway exports the same deployment-wide numbers, so a query over
//! several gateways takes their `max`, not their `sum`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;

/// How often a gateway reads the depth and sets the gauges.
pub const DEPTH_EXPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Conversations in the queue, summed over every shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Scheduled, waiting for any worker (the shared `ready` queues).
    pub ready: u64,
    /// Scheduled, waiting for the worker that holds their warm session
    /// (the affinity queues).
    pub affine: u64,
    /// Held under a lease: a turn runs (or is about to).
    pub leased: u64,
}

impl QueueDepth {
    /// Conversations waiting for a slot, shared or affine.
    pub fn waiting(&self) -> u64 {
        self.ready + self.affine
    }
}

/// Live workers and their slots by state, from the status workers publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSummary {
    /// Workers whose heartbeat is live.
    pub workers: u64,
    /// Slots of live workers, by state (`fresh`, `busy`, ...).
    pub slots: BTreeMap<String, u64>,
}

impl PoolSummary {
    /// Summarize [`Queue::pool_status`]'s answer: `(worker, live, status)`.
    pub fn from_status(workers: &[(String, bool, serde_json::Value)]) -> Self {
        let mut summary = PoolSummary::default();
        for (_, _, status) in workers.iter().filter(|(_, live, _)| *live) {
            summary.workers += 1;
            let slots = status["slots"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            for slot in slots {
                let state = slot["state"].as_str().unwrap_or("unknown");
                *summary.slots.entry(state.to_string()).or_default() += 1;
            }
        }
        summary
    }
}

impl Queue {
    /// Conversations waiting and leased, over every shard. One round trip
    /// per shard.
    pub async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let mut conn = self.conn().await?;
        let mut depth = QueueDepth::default();
        for k in self.keys().all_shards() {
            let (ready, affine, leased): (u64, u64, u64) = redis::pipe()
                .zcard(k.ready())
                .zcard(k.affine())
                .zcard(k.leases())
                .query_async(&mut *conn)
                .await?;
            depth.ready += ready;
            depth.affine += affine;
            depth.leased += leased;
        }
        Ok(depth)
    }
}

/// Set the queue and pool gauges every [`DEPTH_EXPORT_INTERVAL`] until
/// `shutdown`:
/// - `switchboard_queue_ready_conversations`: waiting for a slot (shared
///   and affinity queues), the number autoscalers scale workers on;
/// - `switchboard_queue_leased_conversations`: turns running;
/// - `switchboard_pool_workers`: workers with a live heartbeat;
/// - `switchboard_pool_slots{state}`: their slots by state.
pub async fn export_depth(queue: Queue, shutdown: CancellationToken) {
    // States seen before, so a state no slot is in any more reads 0 instead
    // of its last count.
    let mut states = BTreeSet::new();
    loop {
        match queue.depth().await {
            Ok(depth) => {
                metrics::gauge!("switchboard_queue_ready_conversations")
                    .set(depth.waiting() as f64);
                metrics::gauge!("switchboard_queue_leased_conversations").set(depth.leased as f64);
            }
            Err(e) => tracing::debug!(error = %e, "queue depth not exported"),
        }
        match queue.pool_status().await {
            Ok(workers) => {
                let pool = PoolSummary::from_status(&workers);
                metrics::gauge!("switchboard_pool_workers").set(pool.workers as f64);
                states.extend(pool.slots.keys().cloned());
                for state in &states {
                    let n = pool.slots.get(state).copied().unwrap_or(0);
                    metrics::gauge!("switchboard_pool_slots", "state" => state.clone())
                        .set(n as f64);
                }
            }
            Err(e) => tracing::debug!(error = %e, "pool size not exported"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(DEPTH_EXPORT_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pool_summary_counts_only_live_workers_and_their_slots_by_state() {
        let workers = vec![
            (
                "a".to_string(),
                true,
                json!({"slots": [{"state": "busy"}, {"state": "fresh"}, {"state": "busy"}]}),
            ),
            (
                "b".to_string(),
                false,
                json!({"slots": [{"state": "busy"}, {"state": "bound"}]}),
            ),
            ("c".to_string(), true, serde_json::Value::Null),
        ];
        let summary = PoolSummary::from_status(&workers);
        assert_eq!(summary.workers, 2);
        assert_eq!(
            summary.slots,
            BTreeMap::from([("busy".to_string(), 2), ("fresh".to_string(), 1)])
        );
    }

    #[test]
    fn waiting_counts_shared_and_affine_queues() {
        let depth = QueueDepth {
            ready: 3,
            affine: 2,
            leased: 7,
        };
        assert_eq!(depth.waiting(), 5);
    }
}
