//! The process runtime: `serve` runs the pool's containers as local
//! `switchboard worker` processes, restarts one that exits (with backoff),
//! follows the wanted shape while running (more workers are started, the
//! highest-numbered ones drained and stopped), and stops them (drain first)
//! when it stops. A worker's environment holds only the Redis URL (the
//! worker user's, when its password is set) and the agent's key: no Slack
//! token, signing secret or mail password.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Secret;
use crate::process::{self, ChildOptions};
use crate::queue::PoolShape;

/// How to start worker processes.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    /// The switchboard binary.
    pub program: PathBuf,
    /// The effective config, written for the workers (no secrets in it).
    pub config_file: PathBuf,
    /// The Redis URL workers use (passed in their environment).
    pub redis_url: Secret,
    /// The agents' API key, when set (passed on to agents only).
    pub agent_api_key: Option<Secret>,
    /// How long a worker may take to drain and stop.
    pub stop_timeout: Duration,
}

impl ProcessRuntime {
    /// Keep `shape.containers` workers running until `shutdown`, following
    /// changes of the shape: growing starts workers, shrinking stops the
    /// highest-numbered ones (each drains: no new claims, running turns
    /// finish, its conversations go back to the queue).
    pub async fn run(self, mut shape: watch::Receiver<PoolShape>, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        let mut running: Vec<CancellationToken> = Vec::new();
        loop {
            let wanted = shape.borrow_and_update().containers as usize;
            if wanted != running.len() {
                tracing::info!(
                    from = running.len(),
                    to = wanted,
                    "resizing: worker processes"
                );
            }
            while running.len() < wanted {
                let stop = shutdown.child_token();
                let index = running.len() as u32;
                tasks.spawn(supervise(self.clone(), index, stop.clone()));
                running.push(stop);
            }
            while running.len() > wanted {
                if let Some(stop) = running.pop() {
                    stop.cancel();
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = shape.changed() => if changed.is_err() { break },
            }
        }
        tasks.close();
        tasks.wait().await;
    }
}

/// Publish the wanted shape in Redis (for workers to follow their slot
/// count) on every change and before it lapses, until `shutdown`.
pub async fn publish_shape(
    queue: crate::queue::Queue,
    mut shape: watch::Receiver<PoolShape>,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let current = *shape.borrow_and_update();
        if let Err(e) = queue.set_pool_shape(current, ttl).await {
            tracing::warn!(error = %e, "cannot publish the pool's shape; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = shape.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(ttl / 3) => {}
        }
    }
}

async fn supervise(runtime: ProcessRuntime, index: u32, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        let mut command = Command::new(&runtime.program);
        command
            .arg("worker")
            .arg("--config")
            .arg(&runtime.config_file)
            .env_clear()
            .env("REDIS_URL", runtime.redis_url.expose())
            .envs(
                runtime
                    .agent_api_key
                    .iter()
                    .map(|k| ("ANTHROPIC_API_KEY", k.expose())),
            )
            .stdin(Stdio::null());
        process::configure(
            &mut command,
            ChildOptions {
                own_process_group: true,
                parent_death_signal: Some(libc::SIGTERM),
            },
        );
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "cannot start a worker process");
                sleep_or_stop(&shutdown, delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let started = tokio::time::Instant::now();
        tracing::info!(worker = index, pid = ?child.id(), "worker process started");
        tokio::select! {
            status = child.wait() => {
                metrics::counter!("switchboard_pool_worker_restarts_total").increment(1);
                tracing::error!(worker = index, ?status, "worker process exited; restarting it");
                if started.elapsed() > Duration::from_secs(60) {
                    delay = Duration::from_millis(500);
                }
                sleep_or_stop(&shutdown, delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            _ = shutdown.cancelled() => {
                process::terminate(&mut child, runtime.stop_timeout).await;
                tracing::info!(worker = index, "worker process stopped");
            }
        }
    }
}

async fn sleep_or_stop(shutdown: &CancellationToken, delay: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
