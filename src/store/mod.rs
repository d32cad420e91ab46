//! The Redis connection pool, and the checks that make Redis safe to hold
//! the queue: a response timeout longer than any blocking read, and no
//! eviction policy that could drop a queue key.

pub mod acl;
pub mod embedded;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::AsyncConnectionConfig;

use crate::config::{RedisSettings, Secret};

pub use deadpool_redis::Pool as RedisPool;

/// Why Redis cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL: {0}")]
    BadUrl(#[source] redis::RedisError),
    #[error("cannot build the Redis pool: {0}")]
    Build(String),
    #[error("cannot reach Redis: {0}")]
    Unreachable(String),
    #[error(
        "Redis has maxmemory-policy `{0}`, which can evict keys and so lose queued work; \
         set `maxmemory-policy noeviction` (in redis.conf or with CONFIG SET) and start again"
    )]
    EvictingPolicy(String),
    #[error("Redis did not report its maxmemory-policy (INFO memory)")]
    UnknownPolicy,
}

/// Build the pool. Connections are opened lazily; call [`check_server`]
/// before relying on it.
pub fn connect(url: &Secret, settings: &RedisSettings) -> Result<Pool, StoreError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout));
    let manager = Manager::new_with_config(url.expose(), config).map_err(StoreError::BadUrl)?;
    Pool::builder(manager)
        .max_size(settings.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .build()
        .map_err(|e| StoreError::Build(e.to_string()))
}

/// Check that Redis answers and will never evict a key.
pub async fn check_server(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| StoreError::Unreachable(e.to_string()))?;
    // INFO rather than CONFIG GET: managed Redis and ACL users often may not
    // run CONFIG, but INFO reports the policy too.
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut *conn)
        .await
        .map_err(|e| StoreError::Unreachable(e.to_string()))?;
    let policy = parse_eviction_policy(&info).ok_or(StoreError::UnknownPolicy)?;
    if policy != "noeviction" {
        return Err(StoreError::EvictingPolicy(policy.to_string()));
    }
    Ok(())
}

/// Answer a PING within the pool's timeouts: the readiness probe.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| StoreError::Unreachable(e.to_string()))?;
    redis::cmd("PING")
        .query_async::<String>(&mut *conn)
        .await
        .map(|_| ())
        .map_err(|e| StoreError::Unreachable(e.to_string()))
}

fn parse_eviction_policy(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.strip_prefix("maxmemory_policy:"))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_policy_is_read_from_info() {
        let info = "# Memory\r\nused_memory:1\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(parse_eviction_policy(info), Some("allkeys-lru"));
        assert_eq!(parse_eviction_policy("# Memory\r\n"), None);
    }
}
