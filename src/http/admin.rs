//! The admin listener. Bound to loopback by default; whenever a token is
//! configured, every request must carry `Authorization: Bearer <token>`.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::Secret;

#[derive(Clone)]
struct AdminState {
    token: Option<Secret>,
}

/// `/metrics` and the `/admin/*` routes, behind the bearer check.
pub fn admin_router(token: Option<Secret>, admin_routes: Router) -> Router {
    let state = AdminState { token };
    Router::new()
        .route("/metrics", get(metrics))
        .nest("/admin", admin_routes)
        .layer(middleware::from_fn_with_state(state, require_token))
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::metrics_handle().render(),
    )
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.expose().as_bytes())) {
            return (StatusCode::UNAUTHORIZED, "admin token required\n").into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
