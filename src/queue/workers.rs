//! Worker membership (heartbeats), waking idle workers, and pool status.

use std::time::Duration;

use super::*;

impl Queue {
    /// Announce a worker, or keep it alive: call every `heartbeat_ttl / 3`.
    /// Returns false when the worker was unknown or had expired (its
    /// affinity queue went back to the shared queue in the meantime).
    pub async fn heartbeat(&self, worker: &WorkerId) -> Result<bool, QueueError> {
        let ttl = Self::ms(self.settings().heartbeat_ttl);
        let mut conn = self.conn().await?;
        let mut known = true;
        for k in self.keys().all_shards() {
            let was: i64 = ScriptCall::new(&self.scripts().heartbeat, k.heartbeat_keys())
                .arg(worker)
                .arg(ttl)
                .invoke(&mut conn)
                .await?;
            known &= was == 1;
        }
        Ok(known)
    }

    /// Leave: affinity queue and held leases go back to the shared queue at
    /// once (a clean stop does not wait for the heartbeat to lapse).
    pub async fn deregister(&self, worker: &WorkerId) -> Result<(), QueueError> {
        for k in self.keys().all_shards() {
            let expired = self.reap_worker(&k, worker, true).await?;
            self.reclaim_all(&k, &expired).await?;
            let mut conn = self.conn().await?;
            redis::cmd("HDEL")
                .arg(k.pool_status())
                .arg(worker.as_str())
                .query_async::<i64>(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Publish this worker's status (slots, pids, states) for `/admin/pool`.
    pub async fn publish_status(
        &self,
        worker: &WorkerId,
        status: &serde_json::Value,
    ) -> Result<(), QueueError> {
        let k = self.keys().shard(0);
        let mut conn = self.conn().await?;
        redis::cmd("HSET")
            .arg(k.pool_status())
            .arg(worker.as_str())
            .arg(status.to_string())
            .query_async::<i64>(&mut *conn)
            .await?;
        Ok(())
    }

    /// Every worker's published status, and whether its heartbeat is live.
    pub async fn pool_status(&self) -> Result<Vec<(String, bool, serde_json::Value)>, QueueError> {
        let k = self.keys().shard(0);
        let mut conn = self.conn().await?;
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(k.pool_status())
            .query_async(&mut *conn)
            .await?;
        let now = server_time_ms(&mut conn).await?;
        let mut out = Vec::with_capacity(all.len());
        for (worker, status) in all {
            let deadline: Option<f64> = redis::cmd("ZSCORE")
                .arg(k.workers())
                .arg(&worker)
                .query_async(&mut *conn)
                .await?;
            let live = deadline.is_some_and(|d| d >= now as f64);
            let status = serde_json::from_str(&status).unwrap_or(serde_json::Value::Null);
            out.push((worker, live, status));
        }
        Ok(out)
    }

    /// Block until there may be work for `worker`, or `timeout` passes.
    /// Wake-ups are hints: the caller claims and finds out.
    pub async fn wait_for_work(
        &self,
        worker: &WorkerId,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let shards = usize::from(self.keys().shards());
        let per_shard =
            (timeout / u32::try_from(shards).unwrap_or(1)).max(Duration::from_millis(10));
        let start = self
            .inner
            .next_shard
            .load(std::sync::atomic::Ordering::Relaxed);
        for i in 0..shards {
            let k = self.keys().shard(((start + i) % shards) as u16);
            let mut conn = self.conn().await?;
            let got: Option<(String, String)> = redis::cmd("BLPOP")
                .arg(k.wake_worker(worker.as_str()))
                .arg(k.wake())
                .arg(per_shard.as_secs_f64())
                .query_async(&mut *conn)
                .await?;
            if got.is_some() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// End `worker`'s own wait now ([`Queue::wait_and_claim`] on its
    /// stopping), with a wake-up in its list that expires if nothing takes it.
    pub async fn wake_worker(&self, worker: &WorkerId) -> Result<(), QueueError> {
        let key = self.keys().shard(0).wake_worker(worker.as_str());
        let mut conn = self.conn().await?;
        redis::pipe()
            .rpush(&key, "1")
            .ignore()
            .expire(&key, 60)
            .ignore()
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }

    pub(crate) async fn reap_worker(
        &self,
        k: &ShardKeys,
        worker: &WorkerId,
        force: bool,
    ) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn().await?;
        Ok(
            ScriptCall::new(&self.scripts().reap_worker, k.reap_worker_keys())
                .arg(worker)
                .arg(if force { "1" } else { "0" })
                .invoke(&mut conn)
                .await?,
        )
    }
}

/// Redis server time in ms (the clock every lease and heartbeat uses).
pub(crate) async fn server_time_ms(conn: &mut crate::store::Connection) -> Result<u64, QueueError> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut **conn).await?;
    Ok(secs * 1000 + micros / 1000)
}
