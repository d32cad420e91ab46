//! Changing admission settings while running, and showing usage:
//! `POST /admin/reload` (or SIGHUP) re-reads the config file and applies its
//! `[admission]` section; `GET /admin/usage` shows a day's spend and turns.
//! An invalid file changes nothing and says why.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admission::{self, Admission};
use crate::config::Settings;
use crate::pool::PoolSettings;
use crate::queue::PoolShape;

/// What a reload can change, and where the config comes from.
#[derive(Clone)]
pub(super) struct Reloader {
    pub admission: Admission,
    pub source: Option<PathBuf>,
    /// The pool's wanted shape, when this process manages a pool.
    pub pool: Option<watch::Sender<PoolShape>>,
    /// The pool settings at start, to say which changes need a restart.
    pub started_with: PoolSettings,
}

impl Reloader {
    /// Re-read the config and apply what can change while running; on an
    /// invalid config nothing changes and the reason is returned.
    pub fn apply(&self) -> Result<Vec<&'static str>, String> {
        let settings = Settings::load(self.source.as_deref()).map_err(|e| e.to_string())?;
        self.admission.update(settings.admission);
        let mut reloaded = vec!["admission"];
        if let Some(pool) = &self.pool {
            let shape = PoolShape {
                containers: settings.pool.containers,
                slots_per_container: settings.pool.slots_per_container,
            };
            let changed = pool.send_if_modified(|current| {
                let changed = *current != shape;
                *current = shape;
                changed
            });
            if changed {
                tracing::info!(
                    containers = shape.containers,
                    slots_per_container = shape.slots_per_container,
                    "pool resized"
                );
            }
            reloaded.push("pool");
            let (new, old) = (&settings.pool, &self.started_with);
            if new.runtime != old.runtime
                || new.image != old.image
                || new.docker.memory_mib != old.docker.memory_mib
                || new.docker.cpus != old.docker.cpus
                || new.docker.name != old.docker.name
            {
                tracing::warn!(
                    "pool.runtime, pool.image and pool.docker changes take effect when the \
                     gateway restarts; only pool.containers and pool.slots_per_container \
                     change while running"
                );
            }
        }
        tracing::info!(?reloaded, "settings reloaded");
        Ok(reloaded)
    }
}

pub(super) fn admin_routes(reloader: Reloader) -> Router {
    Router::new()
        .route("/reload", post(reload))
        .route("/usage", get(usage))
        .with_state(reloader)
}

async fn reload(State(reloader): State<Reloader>) -> (StatusCode, axum::Json<serde_json::Value>) {
    match reloader.apply() {
        Ok(reloaded) => (StatusCode::OK, axum::Json(json!({"reloaded": reloaded}))),
        Err(e) => {
            tracing::warn!(error = %e, "reload refused; the running settings stay");
            (StatusCode::BAD_REQUEST, axum::Json(json!({"error": e})))
        }
    }
}

#[derive(Deserialize)]
struct UsageQuery {
    day: Option<String>,
}

async fn usage(
    State(state): State<Reloader>,
    Query(query): Query<UsageQuery>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let day = query
        .day
        .unwrap_or_else(|| admission::day(std::time::SystemTime::now()));
    match admission::usage(state.admission.queue(), &day).await {
        Ok(usage) => (
            StatusCode::OK,
            axum::Json(json!({"day": day, "usage": usage})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": e.to_string()})),
        ),
    }
}

/// How often the config file is looked at for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Reload on SIGHUP, and when the config file changes, until `shutdown`.
pub(super) async fn on_sighup_or_change(reloader: Reloader, shutdown: CancellationToken) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; use POST /admin/reload");
            None
        }
    };
    let mut seen = reloader.source.as_deref().map(file_stamp);
    let mut every = tokio::time::interval(WATCH_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let signalled = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = signalled => {}
            _ = every.tick() => {
                let Some(path) = reloader.source.as_deref() else { continue };
                let now = file_stamp(path);
                if Some(&now) == seen.as_ref() {
                    continue;
                }
                seen = Some(now);
                tracing::info!(file = %path.display(), "config file changed");
            }
        }
        if let Err(e) = reloader.apply() {
            tracing::warn!(error = %e, "reload refused; the running settings stay");
        }
    }
}

/// What tells a file's content changed: modification time and length
/// (`None` while it is missing, e.g. mid-replacement by an editor).
fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
