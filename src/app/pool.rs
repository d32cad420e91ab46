//! Wiring of the pool: the worker role, the process runtime of `serve`, and
//! the pool's admin routes.

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Application, Role};
use std::time::Duration;

use tokio::sync::watch;

use crate::pool::docker::{DockerRuntime, DockerRuntimeParts};
use crate::pool::runtime::{ProcessRuntime, publish_shape};
use crate::pool::{ALIVE_FILE, MAINTENANCE_INTERVAL, PoolRuntime, Worker, WorkerSettings};
use crate::queue::{PoolShape, Queue, WorkerId};
use crate::store::acl::{self, WorkerRedis};

/// How long a published pool shape lasts unrefreshed (workers then go
/// back to their own config).
const SHAPE_TTL: Duration = Duration::from_secs(30);

impl Application {
    /// Start what this role runs of the pool. Returns the handle that
    /// resizes it while running, when this process manages the pool.
    pub(super) async fn start_pool(
        &self,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<watch::Sender<PoolShape>>> {
        let pool = &self.settings.pool;
        let (shape_tx, shape_rx) = watch::channel(PoolShape {
            containers: pool.containers,
            slots_per_container: pool.slots_per_container,
        });
        match (self.role, pool.runtime) {
            (Role::Worker, _) => {
                let worker = self.worker()?;
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    if let Err(e) = worker.run(shutdown).await {
                        tracing::error!(error = %e, "worker failed");
                    }
                });
            }
            (Role::Serve, PoolRuntime::Process) => {
                let runtime = self.process_runtime().await?;
                tasks.spawn(publish_shape(
                    self.queue.clone(),
                    shape_rx.clone(),
                    SHAPE_TTL,
                    shutdown.clone(),
                ));
                tasks.spawn(runtime.run(shape_rx, shutdown.clone()));
                return Ok(Some(shape_tx));
            }
            (Role::Serve | Role::Gateway, PoolRuntime::Docker) => {
                let runtime = self.docker_runtime().await?;
                tasks.spawn(runtime.run(shape_rx, shutdown.clone()));
                return Ok(Some(shape_tx));
            }
            _ => {}
        }
        Ok(None)
    }

    /// How workers reach Redis, and the worker user installed when asked.
    async fn worker_redis(&self, in_container: bool) -> anyhow::Result<WorkerRedis> {
        let pool = &self.settings.pool;
        let secrets = &self.settings.secrets;
        let mut redis = acl::worker_redis(
            &self.redis_url,
            secrets.worker_redis_url.as_ref(),
            &pool.worker_redis_user,
            secrets.worker_redis_password.as_ref(),
            in_container,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        if let Some(socket) = &pool.docker.redis_socket {
            redis.socket = Some(socket.clone());
        }
        if let (Some(password), true, None) = (
            &secrets.worker_redis_password,
            pool.docker.install_acl,
            &secrets.worker_redis_url,
        ) {
            self.install_worker_acl(password).await?;
        }
        Ok(redis)
    }

    /// `ACL SETUSER` the worker user (prefix, commands, password).
    async fn install_worker_acl(&self, password: &crate::config::Secret) -> anyhow::Result<()> {
        let pool = &self.settings.pool;
        let rules = acl::worker_rules(&self.settings.redis.key_prefix, password)?;
        let mut conn = self.redis.get().await.context("Redis connection")?;
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(&pool.worker_redis_user).arg(&rules);
        match cmd.query_async::<()>(&mut *conn).await {
            Ok(()) => {
                tracing::info!(user = %pool.worker_redis_user, "worker Redis user installed");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    user = %pool.worker_redis_user,
                    error = %e,
                    "cannot install the worker Redis user (set pool.docker.install_acl = false \
                     and load `switchboard redis-acl` into Redis's ACL file instead); workers \
                     will fail to connect unless it exists"
                );
                Ok(())
            }
        }
    }

    fn worker(&self) -> anyhow::Result<Worker> {
        let launcher = crate::agent::launcher(&self.settings.agent).context("agent settings")?;
        let settings = WorkerSettings {
            pool: self.settings.pool.clone(),
            agent: self.settings.agent.clone(),
            update_interval: self.settings.egress.update_interval,
            blocking_read: self.settings.redis.blocking_read,
            max_wait: Some(self.settings.admission.max_wait),
            alive_file: Some(self.settings.data_dir.join(ALIVE_FILE)),
            maintenance_interval: MAINTENANCE_INTERVAL,
        };
        Ok(Worker::new(
            worker_id(),
            self.queue.clone(),
            launcher,
            settings,
        )?)
    }

    async fn process_runtime(&self) -> anyhow::Result<ProcessRuntime> {
        let program = std::env::current_exe().context("locating the switchboard binary")?;
        let dir = &self.settings.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        let config_file = dir.join("worker.toml");
        std::fs::write(&config_file, self.settings.render_redacted())
            .with_context(|| format!("writing {}", config_file.display()))?;
        let redis = self.worker_redis(false).await?;
        Ok(ProcessRuntime {
            program,
            config_file,
            redis_url: redis.url,
            agent_api_key: self.settings.secrets.anthropic_api_key.clone(),
            stop_timeout: self.worker_stop_timeout(),
        })
    }

    async fn docker_runtime(&self) -> anyhow::Result<DockerRuntime> {
        let pool = &self.settings.pool;
        let redis = self.worker_redis(true).await?;
        let parts = DockerRuntimeParts {
            queue: self.queue.clone(),
            settings: pool.docker.clone(),
            image: pool.image.clone(),
            holder: format!("gateway-{}", process_name()),
            redis_url: redis.url,
            redis_socket: redis.socket,
            agent_api_key: self.settings.secrets.anthropic_api_key.clone(),
            config_toml: self.settings.render_redacted(),
            stop_timeout: self.worker_stop_timeout(),
        };
        Ok(DockerRuntime::connect(parts).await?)
    }

    /// How long a worker may take to drain and stop.
    fn worker_stop_timeout(&self) -> Duration {
        let (pool, agent) = (&self.settings.pool, &self.settings.agent);
        pool.drain_timeout + agent.interrupt_grace + agent.terminate_timeout
    }
}

/// `<host>-<pid>`: unique per worker process, stable while it runs.
fn worker_id() -> WorkerId {
    // Only letters, digits, '-' and '.' remain, which WorkerId accepts; the
    // fallback is for the impossible case anyway.
    WorkerId::new(process_name()).unwrap_or_else(WorkerId::fallback)
}

/// `<host>-<pid>`, with only letters, digits, '-' and '.'.
pub(super) fn process_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let host: String = if ok {
        String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())])
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
            .collect()
    } else {
        String::new()
    };
    let host = if host.is_empty() {
        "worker".into()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

/// `/admin/pool`: every worker's slots, from Redis.
pub(super) fn admin_routes(queue: Queue) -> Router {
    Router::new()
        .route("/pool", get(pool_status))
        .with_state(queue)
}

async fn pool_status(State(queue): State<Queue>) -> (StatusCode, axum::Json<serde_json::Value>) {
    match queue.pool_status().await {
        Ok(workers) => {
            let workers: Vec<serde_json::Value> = workers
                .into_iter()
                .map(|(id, live, status)| serde_json::json!({"worker": id, "live": live, "status": status}))
                .collect();
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({ "workers": workers })),
            )
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "error": e.to_string() })),
        ),
    }
}
