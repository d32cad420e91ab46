//! Changing admission settings while running, and showing usage:
//! `POST /admin/reload` (or SIGHUP) re-reads the config file and applies its
//! `[admission]` section; `GET /admin/usage` shows a day's spend and turns.
//! An invalid file changes nothing and says why.

use std::path::PathBuf;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::admission::{self, Admission};
use crate::config::Settings;

#[derive(Clone)]
struct ReloadState {
    admission: Admission,
    source: Option<PathBuf>,
}

pub(super) fn admin_routes(admission: Admission, source: Option<PathBuf>) -> Router {
    Router::new()
        .route("/reload", post(reload))
        .route("/usage", get(usage))
        .with_state(ReloadState { admission, source })
}

/// Re-read the config and apply what can change while running.
pub(super) fn apply(admission: &Admission, source: Option<&PathBuf>) -> Result<(), String> {
    let settings = Settings::load(source.map(PathBuf::as_path)).map_err(|e| e.to_string())?;
    admission.update(settings.admission);
    tracing::info!("admission settings reloaded");
    Ok(())
}

async fn reload(State(state): State<ReloadState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    match apply(&state.admission, state.source.as_ref()) {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(json!({"reloaded": ["admission"]})),
        ),
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
    State(state): State<ReloadState>,
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

/// Reload on SIGHUP until `shutdown`.
pub(super) async fn on_sighup(
    admission: Admission,
    source: Option<PathBuf>,
    shutdown: CancellationToken,
) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("cannot listen for SIGHUP; use POST /admin/reload");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hangup.recv() => {
                if let Err(e) = apply(&admission, source.as_ref()) {
                    tracing::warn!(error = %e, "reload refused; the running settings stay");
                }
            }
        }
    }
}
