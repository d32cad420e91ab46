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
use crate::pool::runtime::ProcessRuntime;
use crate::pool::{ALIVE_FILE, PoolRuntime, Worker, WorkerSettings};
use crate::queue::{Queue, WorkerId};

impl Application {
    /// Start what this role runs of the pool.
    pub(super) fn start_pool(
        &self,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        match (self.role, self.settings.pool.runtime) {
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
                let runtime = self.process_runtime()?;
                tasks.spawn(runtime.run(shutdown.clone()));
            }
            _ => {}
        }
        Ok(())
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
        };
        Ok(Worker::new(
            worker_id(),
            self.queue.clone(),
            launcher,
            settings,
        )?)
    }

    fn process_runtime(&self) -> anyhow::Result<ProcessRuntime> {
        let program = std::env::current_exe().context("locating the switchboard binary")?;
        let dir = &self.settings.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        let config_file = dir.join("worker.toml");
        std::fs::write(&config_file, self.settings.render_redacted())
            .with_context(|| format!("writing {}", config_file.display()))?;
        let pool = &self.settings.pool;
        let agent = &self.settings.agent;
        Ok(ProcessRuntime {
            program,
            config_file,
            redis_url: self.redis_url.clone(),
            agent_api_key: self.settings.secrets.anthropic_api_key.clone(),
            containers: pool.containers,
            stop_timeout: pool.drain_timeout + agent.interrupt_grace + agent.terminate_timeout,
        })
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
