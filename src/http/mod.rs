//! The gateway's HTTP servers: the public listener (Slack Events API and
//! health probes) and the admin listener (`/metrics`, `/admin/*`).

mod admin;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::store::RedisPool;

pub use admin::admin_router;

/// A readiness condition besides Redis (e.g. a live Slack socket):
/// `Err(reason)` while not ready.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the public listener's handlers share.
#[derive(Clone)]
pub struct GatewayState {
    pub redis: RedisPool,
    /// Further conditions `/readyz` requires.
    pub readiness: Vec<ReadinessCheck>,
}

/// `/healthz` (the process runs) and `/readyz` (Redis answers and every
/// readiness check passes).
pub fn gateway_router(state: GatewayState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<GatewayState>) -> (StatusCode, String) {
    let result = match crate::store::ping(&state.redis).await {
        Ok(()) => state.readiness.iter().try_for_each(|check| check()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n"))
        }
    }
}
