//! The reaper: any process may run it (every gateway and worker does).
//! Each pass reclaims conversations whose lease expired and hands the work
//! of workers whose heartbeat expired back to the shared queue. Passes are
//! idempotent, so several reapers at once are harmless.

use tokio_util::sync::CancellationToken;

use super::workers::server_time_ms;
use super::*;

/// Most leases reclaimed per shard per pass (the rest wait for the next).
const BATCH: usize = 500;

impl Queue {
    /// One reaper pass over every shard.
    pub async fn reap(&self) -> Result<ReapReport, QueueError> {
        let mut report = ReapReport::default();
        for k in self.keys().all_shards() {
            let mut conn = self.conn().await?;
            let now = server_time_ms(&mut conn).await?;
            let dead: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(k.workers())
                .arg("-inf")
                .arg(now.saturating_sub(1))
                .query_async(&mut *conn)
                .await?;
            drop(conn);
            for worker in dead.iter().filter_map(|w| WorkerId::new(w.clone())) {
                let expired = self.reap_worker(&k, &worker, false).await?;
                tracing::warn!(worker = %worker, leases = expired.len(), "worker heartbeat expired");
                report.workers_expired += 1;
                report.reclaimed += self.reclaim_all(&k, &expired).await?;
            }
            let mut conn = self.conn().await?;
            let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(k.leases())
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(BATCH)
                .query_async(&mut *conn)
                .await?;
            drop(conn);
            report.reclaimed += self.reclaim_all(&k, &due).await?;
        }
        if report.reclaimed > 0 {
            metrics::counter!("switchboard_queue_reclaimed_total")
                .increment(report.reclaimed as u64);
        }
        Ok(report)
    }

    /// Reclaim each conversation whose lease is due; returns how many were.
    pub(crate) async fn reclaim_all(
        &self,
        k: &ShardKeys,
        cids: &[String],
    ) -> Result<usize, QueueError> {
        let mut reclaimed = 0;
        let mut conn = self.conn().await?;
        for cid in cids {
            let cid = ConversationId::new(cid.clone());
            let done: i64 = ScriptCall::new(&self.scripts().reclaim, k.reclaim_keys(&cid))
                .arg(&cid)
                .invoke(&mut conn)
                .await?;
            if done == 1 {
                tracing::info!(conversation = %cid, "lease expired; conversation reclaimed");
                reclaimed += 1;
            }
        }
        Ok(reclaimed)
    }
}

/// Runs [`Queue::reap`] every `queue.reaper_interval` until cancelled.
pub struct Reaper {
    queue: Queue,
}

impl Reaper {
    pub fn new(queue: Queue) -> Self {
        Self { queue }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.queue.settings().reaper_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.queue.reap().await {
                // Transient (Redis away): the next tick tries again.
                tracing::warn!(error = %e, "reaper pass failed");
            }
        }
    }
}
