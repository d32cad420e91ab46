//! One connection slot: keep one Socket Mode session open, replacing it
//! when it ends. On a `disconnect` message the new connection is opened
//! *before* the old one is closed (the old one keeps taking envelopes until
//! the new one said `hello`), so a refresh loses nothing. Failures back off
//! exponentially with jitter, capped.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use super::session::{self, EndReason, SessionEvent, SessionHandle, Shared, Socket};
use crate::config::Secret;
use crate::egress::slack::{SlackApi, SlackError};

/// The first retry after a failure waits about this long...
const BACKOFF_START: Duration = Duration::from_millis(500);
/// ...doubling up to this.
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// The websocket handshake may take this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("apps.connections.open: {0}")]
    Open(#[from] SlackError),
    #[error("websocket handshake: {0}")]
    Handshake(String),
    #[error("websocket handshake took longer than {0:?}")]
    Timeout(Duration),
}

/// Opens Socket Mode websockets: apps.connections.open, then the handshake.
pub(super) struct Opener {
    pub api: SlackApi,
}

impl Opener {
    async fn connect(&self) -> Result<Socket, ConnectError> {
        let url: Secret = self.api.open_socket_connection().await?;
        let handshake = tokio_tungstenite::connect_async(url.expose());
        let (socket, _response) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| ConnectError::Timeout(HANDSHAKE_TIMEOUT))?
            .map_err(|e| ConnectError::Handshake(describe(&e)))?;
        Ok(socket)
    }
}

/// A handshake error without the URL: its ticket is a secret.
fn describe(error: &tungstenite::Error) -> String {
    match error {
        tungstenite::Error::Url(tungstenite::error::UrlError::UnableToConnect(_)) => {
            "unable to connect to the Socket Mode URL".into()
        }
        other => other.to_string(),
    }
}

/// Keep slot `slot` connected until `shutdown`.
pub(super) async fn run(slot: usize, shared: Shared, opener: &Opener, shutdown: CancellationToken) {
    let mut slot = Slot {
        slot,
        shared,
        opener,
        shutdown,
        next_id: 0,
    };
    slot.run().await;
}

struct Slot<'a> {
    slot: usize,
    shared: Shared,
    opener: &'a Opener,
    shutdown: CancellationToken,
    next_id: u64,
}

impl Slot<'_> {
    async fn run(&mut self) {
        let mut failures: u32 = 0;
        let mut current: Option<SessionHandle> = None;
        // Sessions being replaced: closed once their successor said hello.
        let mut draining: Vec<CancellationToken> = Vec::new();
        loop {
            let Some(mut session) = current.take() else {
                let delay = backoff(failures);
                if !delay.is_zero() {
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                match self.open().await {
                    Some(Ok(new)) => current = Some(new),
                    Some(Err(e)) => {
                        failures = failures.saturating_add(1);
                        metrics::counter!(
                            "switchboard_ingress_slack_socket_connect_failures_total"
                        )
                        .increment(1);
                        tracing::warn!(
                            slot = self.slot,
                            failures,
                            retry_in = ?backoff(failures),
                            error = %e,
                            "could not open a Socket Mode connection"
                        );
                    }
                    None => return,
                }
                continue;
            };
            let event = tokio::select! {
                // Sessions hold child tokens of `shutdown`: they close
                // themselves, finishing their envelopes, tracked by `tasks`.
                () = self.shutdown.cancelled() => return,
                event = session.events.recv() => event,
            };
            match event {
                Some(SessionEvent::Hello) => {
                    failures = 0;
                    for old in draining.drain(..) {
                        old.cancel();
                    }
                    current = Some(session);
                }
                Some(SessionEvent::Disconnect(reason)) => {
                    reconnected(disconnect_label(&reason));
                    if reason == "link_disabled" {
                        tracing::error!(
                            slot = self.slot,
                            "Slack disabled Socket Mode for this app; reconnecting will fail \
                             until it is enabled again"
                        );
                    }
                    match self.open().await {
                        Some(Ok(new)) => {
                            draining.push(session.close.clone());
                            current = Some(new);
                        }
                        Some(Err(e)) => {
                            tracing::warn!(
                                slot = self.slot,
                                error = %e,
                                "could not open a replacement; keeping the old connection until \
                                 Slack closes it"
                            );
                            current = Some(session);
                        }
                        None => return,
                    }
                }
                Some(SessionEvent::Ended(reason)) => {
                    // A session that outlived one watchdog period was healthy:
                    // replace it at once. One that died young counts as a
                    // failure, so a link that flaps backs off.
                    let healthy = session.started.elapsed() >= self.shared.settings.silence_timeout;
                    failures = if healthy {
                        0
                    } else {
                        failures.saturating_add(1)
                    };
                    if !matches!(reason, EndReason::Closing) {
                        reconnected(reason.label());
                    }
                }
                None => {
                    // The session task ended without reporting (it panicked).
                    failures = failures.saturating_add(1);
                    reconnected("lost");
                }
            }
        }
    }

    /// Open a new session; None when shutdown came first.
    async fn open(&mut self) -> Option<Result<SessionHandle, ConnectError>> {
        let socket = tokio::select! {
            () = self.shutdown.cancelled() => return None,
            socket = self.opener.connect() => socket,
        };
        Some(socket.map(|socket| {
            self.next_id += 1;
            session::spawn(
                socket,
                self.slot,
                self.next_id,
                &self.shared,
                &self.shutdown,
            )
        }))
    }
}

fn reconnected(reason: &'static str) {
    metrics::counter!("switchboard_ingress_slack_socket_reconnects_total", "reason" => reason)
        .increment(1);
}

fn disconnect_label(reason: &str) -> &'static str {
    match reason {
        "refresh_requested" => "refresh_requested",
        "warning" => "warning",
        "link_disabled" => "link_disabled",
        _ => "disconnect_other",
    }
}

/// How long to wait before connecting after `failures` failures in a row:
/// nothing after none, then 0.5 s, 1 s, 2 s... up to 30 s, each jittered
/// down by up to half so replicas do not reconnect in step.
fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exponent = (failures - 1).min(16);
    let full = BACKOFF_START.saturating_mul(1 << exponent).min(BACKOFF_CAP);
    let half = full / 2;
    // RandomState is seeded randomly per instance: enough for jitter.
    let random = RandomState::new().hash_one(failures);
    let jitter_ms = u64::try_from(half.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    half + Duration::from_millis(random % jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        for _ in 0..50 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(250) && first <= BACKOFF_START);
            let third = backoff(3);
            assert!(third >= Duration::from_secs(1) && third <= Duration::from_secs(2));
            let late = backoff(40);
            assert!(late >= BACKOFF_CAP / 2 && late <= BACKOFF_CAP);
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(5)).collect();
        assert!(spread.len() > 1, "backoff is jittered");
    }

    #[test]
    fn handshake_errors_never_show_the_ticket() {
        let error = tungstenite::Error::Url(tungstenite::error::UrlError::UnableToConnect(
            "wss://wss.slack.com/link/?ticket=s3cret".into(),
        ));
        assert!(!describe(&error).contains("s3cret"));
    }

    #[test]
    fn disconnect_reasons_map_to_few_labels() {
        assert_eq!(disconnect_label("refresh_requested"), "refresh_requested");
        assert_eq!(disconnect_label("something new"), "disconnect_other");
    }
}
