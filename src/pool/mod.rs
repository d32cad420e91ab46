//! The warm agent pool: workers (one per pool container), their slots (one
//! long-lived agent process each), and the runtime that starts workers.

pub mod docker;
mod progress;
pub mod runtime;
mod settings;
pub mod slots;
mod status;
mod turn;
mod worker;

pub use settings::{DockerSettings, MAX_SLOTS, PoolRuntime, PoolSettings};
pub use turn::format_batch;
pub use worker::{Worker, WorkerError, WorkerSettings};

use std::path::Path;
use std::time::Duration;

/// The file a worker touches on each successful heartbeat, in `data_dir`.
pub const ALIVE_FILE: &str = "worker.alive";

/// How often a worker's maintenance round runs (`WorkerSettings::maintenance_interval`).
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(500);

/// `switchboard worker-alive`: whether the worker with this `data_dir` had
/// a successful heartbeat within `max_age`. Returns the age, or why not.
pub fn check_alive(data_dir: &Path, max_age: Duration) -> Result<Duration, String> {
    let path = data_dir.join(ALIVE_FILE);
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|e| format!("no heartbeat recorded at {}: {e}", path.display()))?;
    let age = modified.elapsed().unwrap_or(Duration::ZERO);
    if age > max_age {
        return Err(format!(
            "last heartbeat {} ago (more than {})",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(max_age)
        ));
    }
    Ok(age)
}
