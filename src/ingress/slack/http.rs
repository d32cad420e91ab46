//! `POST /slack/events`: the Events API endpoint. Verifies the signature
//! over the raw body, then hands the event to [`SlackIntake`]; answers 200
//! only once the event is queued (or knowingly ignored), 503 when Redis
//! could not queue it in time so Slack retries.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::intake::{IntakeError, IntakeOutcome, SlackIntake};
use super::verify::{SIGNATURE_HEADER, SignatureVerifier, TIMESTAMP_HEADER};

/// Shared behind one `Arc`: axum clones the state for every request.
struct EventsState {
    intake: SlackIntake,
    verifier: SignatureVerifier,
}

/// The `/slack/events` route, with the configured body limit (413 above it).
pub fn events_router(intake: SlackIntake, verifier: SignatureVerifier) -> Router {
    let limit = intake.settings().max_body_bytes;
    Router::new()
        .route("/slack/events", post(events))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Arc::new(EventsState { intake, verifier }))
}

/// The two headers the signature check reads. Taken out of the request
/// rather than copying all of its headers, as the `HeaderMap` extractor does.
struct SignatureHeaders {
    signature: Option<HeaderValue>,
    timestamp: Option<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for SignatureHeaders {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            signature: parts.headers.get(SIGNATURE_HEADER).cloned(),
            timestamp: parts.headers.get(TIMESTAMP_HEADER).cloned(),
        })
    }
}

fn rejected(reason: &'static str) {
    metrics::counter!("switchboard_ingress_slack_rejected_total", "reason" => reason).increment(1);
}

async fn events(
    State(state): State<Arc<EventsState>>,
    headers: SignatureHeaders,
    body: Bytes,
) -> Response {
    if let Err(e) = state.verifier.verify_values(
        headers.signature.as_ref(),
        headers.timestamp.as_ref(),
        &body,
        SystemTime::now(),
    ) {
        rejected(e.reason());
        tracing::warn!(reason = e.reason(), "rejected a Slack request");
        return (StatusCode::UNAUTHORIZED, "invalid request signature\n").into_response();
    }
    // Boxed: the intake's future is large (admission, queue and Redis calls
    // nested inline), and axum and tower move the handler's future a few
    // times before polling it; a box makes those moves cheap.
    match Box::pin(state.intake.accept_body(&body)).await {
        Ok(IntakeOutcome::Challenge(challenge)) => {
            axum::Json(serde_json::json!({ "challenge": challenge })).into_response()
        }
        Ok(_) => StatusCode::OK.into_response(),
        Err(IntakeError::Malformed(e)) => {
            rejected(e.reason());
            tracing::warn!(error = %e, "rejected a malformed Slack event");
            (StatusCode::BAD_REQUEST, "malformed event\n").into_response()
        }
        Err(e @ IntakeError::Unavailable(_)) => {
            metrics::counter!("switchboard_ingress_slack_unavailable_total").increment(1);
            tracing::error!(error = %e, "answering 503 so Slack retries");
            (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response()
        }
    }
}
