//! The Redis connection pool, and the checks that make Redis safe to hold
//! the queue: a response timeout longer than any blocking read, and no
//! eviction policy that could drop a queue key.

pub mod acl;
pub mod embedded;

use std::sync::atomic::{AtomicBool, Ordering};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::config::{RedisSettings, Secret};

/// The pool of Redis connections: each checkout is one connection of its
/// own, so a blocking read (`XREADGROUP BLOCK`, `BLPOP`) holds up nobody else.
pub type RedisPool = managed::Pool<Manager>;
/// A connection checked out of the pool; `&mut *conn` runs commands.
pub type Connection = managed::Object<Manager>;
/// Why no connection could be checked out.
pub type PoolError = managed::PoolError<RedisError>;

/// A connection unused for this long is checked with a `PING` before it is
/// handed out again.
pub const IDLE_BEFORE_PING: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens connections, and hands a returned connection out again unless it
/// saw its socket fail. Unlike `deadpool-redis`, no `PING` round trip on
/// every checkout (that was a round trip per command; a hung Redis is
/// caught by the response timeout anyway), only on one that sat unused for
/// [`IDLE_BEFORE_PING`].
#[derive(Debug)]
pub struct Manager {
    client: Client,
    config: AsyncConnectionConfig,
}

impl managed::Manager for Manager {
    type Type = PooledConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<PooledConnection, RedisError> {
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Tracked {
            conn,
            on_failure: Broken::default(),
        })
    }

    async fn recycle(
        &self,
        conn: &mut PooledConnection,
        metrics: &Metrics,
    ) -> RecycleResult<RedisError> {
        if conn.on_failure.0.load(Ordering::Relaxed) {
            return Err(RecycleError::message("the connection failed"));
        }
        // A connection out of use for a while may have been closed under us
        // (Redis restarted): one PING then, so the checkout gets a live
        // connection instead of one failed command. Under load connections
        // come back within milliseconds and are never pinged.
        if metrics.last_used() >= IDLE_BEFORE_PING {
            redis::cmd("PING").query_async::<()>(conn).await?;
        }
        Ok(())
    }
}

/// What to do when a connection's socket fails.
pub trait OnSocketFailure {
    fn socket_failed(&self);
}

/// A multiplexed connection that reports a failed socket (to the pool, or
/// to the [`SharedConnection`]) so it is not used again.
pub struct Tracked<F: OnSocketFailure> {
    conn: MultiplexedConnection,
    on_failure: F,
}

impl<F: OnSocketFailure> Tracked<F> {
    fn note<T>(&self, result: &Result<T, RedisError>) {
        if let Err(e) = result
            && (e.is_unrecoverable_error() || e.is_connection_dropped())
        {
            self.on_failure.socket_failed();
        }
    }
}

impl<F: OnSocketFailure + Send + Sync> ConnectionLike for Tracked<F> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.note(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(cmd, offset, count).await;
            self.note(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// A pooled connection remembers whether its socket failed, so the pool
/// drops it instead of handing it out again.
pub type PooledConnection = Tracked<Broken>;

/// Set once a pooled connection's socket failed.
#[derive(Default)]
pub struct Broken(AtomicBool);

impl OnSocketFailure for Broken {
    fn socket_failed(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One multiplexed connection shared by every caller of short commands
/// (never a blocking read): concurrent requests are pipelined on its one
/// socket, many commands to a write and a read, where each checkout of the
/// pool is a socket of its own. Ingress takes it for every event. It is
/// opened on first use and opened again after its socket fails.
pub struct SharedConnection {
    client: Client,
    config: AsyncConnectionConfig,
    /// The connection and its generation (so that a handle on an old one
    /// that failed does not drop its replacement).
    current: std::sync::Mutex<(u64, Option<MultiplexedConnection>)>,
}

impl SharedConnection {
    /// Sharing the pool's server and timeouts.
    pub fn of(pool: &RedisPool) -> Self {
        let manager = pool.manager();
        Self {
            client: manager.client.clone(),
            config: manager.config.clone(),
            current: std::sync::Mutex::new((0, None)),
        }
    }

    /// A handle on the shared connection (cheap: a clone of it).
    pub async fn get(self: &std::sync::Arc<Self>) -> Result<SharedHandle, RedisError> {
        let (generation, conn) = {
            let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            (current.0, current.1.clone())
        };
        let (generation, conn) = match conn {
            Some(conn) => (generation, conn),
            None => {
                // Opened outside the lock; two callers at once may both
                // open one, and the later one is kept.
                let conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?;
                let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
                current.0 += 1;
                current.1 = Some(conn.clone());
                (current.0, conn)
            }
        };
        Ok(Tracked {
            conn,
            on_failure: SharedFailure {
                generation,
                shared: self.clone(),
            },
        })
    }

    /// Drop connection `generation` after its socket failed; the next `get`
    /// opens another.
    fn failed(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 == generation {
            current.1 = None;
        }
    }
}

/// A handle on the [`SharedConnection`]; `&mut handle` runs commands.
pub type SharedHandle = Tracked<SharedFailure>;

/// Which shared connection a handle is on, to drop it when it fails.
pub struct SharedFailure {
    generation: u64,
    shared: std::sync::Arc<SharedConnection>,
}

impl OnSocketFailure for SharedFailure {
    fn socket_failed(&self) {
        self.shared.failed(self.generation);
    }
}

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
pub fn connect(url: &Secret, settings: &RedisSettings) -> Result<RedisPool, StoreError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout));
    let client = Client::open(url.expose()).map_err(StoreError::BadUrl)?;
    RedisPool::builder(Manager { client, config })
        .max_size(settings.pool_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .build()
        .map_err(|e| StoreError::Build(e.to_string()))
}

/// Check that Redis answers and will never evict a key.
pub async fn check_server(pool: &RedisPool) -> Result<(), StoreError> {
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
pub async fn ping(pool: &RedisPool) -> Result<(), StoreError> {
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
