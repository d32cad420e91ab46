//! The pool's shared state for resizing and management: the wanted shape
//! (containers x slots) that workers follow while running, the managers'
//! liveness set, and releasing a leader lease.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::workers::server_time_ms;
use super::*;

/// The pool's wanted size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolShape {
    pub containers: u32,
    pub slots_per_container: u32,
}

impl Queue {
    /// Publish the wanted shape for `ttl` (the manager refreshes it; when it
    /// lapses, workers fall back to their own config).
    pub async fn set_pool_shape(&self, shape: PoolShape, ttl: Duration) -> Result<(), QueueError> {
        let k = self.keys().shard(0);
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(k.pool_shape())
            .arg(serde_json::to_string(&shape)?)
            .arg("PX")
            .arg(Self::ms(ttl).max(1))
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }

    /// The wanted shape, if a manager publishes one.
    pub async fn pool_shape(&self) -> Result<Option<PoolShape>, QueueError> {
        let k = self.keys().shard(0);
        let mut conn = self.conn().await?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(k.pool_shape())
            .query_async(&mut *conn)
            .await?;
        Ok(raw.map(|r| serde_json::from_str(&r)).transpose()?)
    }

    /// Give up the `role` lease of shard 0 if `holder` has it.
    pub async fn release_lead(&self, role: &str, holder: &str) -> Result<bool, QueueError> {
        let k = self.keys().shard(0);
        let mut conn = self.conn().await?;
        let released: i64 = ScriptCall::new(&self.scripts().release, vec![k.lead(role)])
            .arg(holder)
            .invoke(&mut conn)
            .await?;
        Ok(released == 1)
    }

    /// Say that gateway `id` can manage the pool for `ttl`; returns how many
    /// other managers are alive. With `ttl = None`, leave.
    pub async fn pool_manager_alive(
        &self,
        id: &str,
        ttl: Option<Duration>,
    ) -> Result<usize, QueueError> {
        let k = self.keys().shard(0);
        let mut conn = self.conn().await?;
        let now = server_time_ms(&mut conn).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(k.pool_managers())
            .arg("-inf")
            .arg(now)
            .ignore();
        match ttl {
            Some(ttl) => pipe
                .cmd("ZADD")
                .arg(k.pool_managers())
                .arg(now + Self::ms(ttl))
                .arg(id)
                .ignore(),
            None => pipe.cmd("ZREM").arg(k.pool_managers()).arg(id).ignore(),
        };
        pipe.cmd("ZRANGE").arg(k.pool_managers()).arg(0).arg(-1);
        let (members,): (Vec<String>,) = pipe.query_async(&mut *conn).await?;
        Ok(members.iter().filter(|m| m.as_str() != id).count())
    }
}
