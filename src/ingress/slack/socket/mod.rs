//! Slack Socket Mode: the gateway opens websockets to Slack (no public URL
//! needed) and Slack pushes events through them.
//!
//! Each of `slack.socket_connections` slots keeps one connection open
//! ([`slot`]): `apps.connections.open` with the app-level token at the
//! configured Web API base URL, then the websocket ([`session`]). Every
//! `events_api` envelope goes through [`SlackIntake`], the same filter,
//! dedupe and enqueue as the Events API endpoint, and is acknowledged only
//! after the intake returned: not at all when the queue could not take it
//! (Slack then redelivers it, to any connection of any replica; dedupe in
//! Redis makes that safe).
//!
//! Liveness: `disconnect` messages get a new connection before the old one
//! closes; closed sockets and failed writes reconnect with jittered, capped
//! backoff; a watchdog replaces a connection that received no frame for
//! `slack.socket_silence_timeout` (the client pings, so a healthy socket is
//! never that quiet). The age of the last frame is the metric
//! `switchboard_ingress_slack_socket_last_frame_age_seconds` (the stalest
//! connection) and, via [`SocketHealth`], part of `/readyz`.
//!
//! Written on tokio-tungstenite rather than slack-morphism's Socket Mode
//! listener: that one hands callbacks a re-typed event (our filter reads
//! the raw JSON), closes the old connection before opening the new one on a
//! refresh, and keeps no last-frame time to watch or export.

mod frame;
mod health;
mod session;
pub mod settings;
mod slot;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Secret;
use crate::egress::slack::{DEFAULT_TIMEOUT, SlackApi, SlackSetupError};

use super::SlackIntake;
pub use health::SocketHealth;
pub use settings::SocketModeSettings;

/// The Socket Mode client of one gateway.
pub struct SocketMode {
    settings: Arc<SocketModeSettings>,
    intake: SlackIntake,
    health: SocketHealth,
    opener: Arc<slot::Opener>,
}

impl SocketMode {
    /// A client for the Web API at `api_base_url` with the app-level token.
    pub fn new(
        settings: SocketModeSettings,
        api_base_url: &str,
        app_token: &Secret,
        intake: SlackIntake,
    ) -> Result<Self, SlackSetupError> {
        let api = SlackApi::new(api_base_url, app_token, DEFAULT_TIMEOUT)?;
        let health = SocketHealth::new(settings.connections, settings.readiness_max_age);
        Ok(Self {
            settings: Arc::new(settings),
            intake,
            health,
            opener: Arc::new(slot::Opener { api }),
        })
    }

    /// When the connections last heard from Slack (for `/readyz`).
    pub fn health(&self) -> SocketHealth {
        self.health.clone()
    }

    /// Keep the connections open until `shutdown`; then close them after
    /// their in-flight envelopes.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        let shared = session::Shared {
            intake: self.intake,
            settings: self.settings.clone(),
            health: self.health.clone(),
            tasks: tasks.clone(),
        };
        tracing::info!(
            connections = self.settings.connections,
            "starting Slack Socket Mode"
        );
        for index in 0..self.settings.connections {
            let (shared, opener, shutdown) =
                (shared.clone(), self.opener.clone(), shutdown.clone());
            tasks.spawn(async move { slot::run(index, shared, &opener, shutdown).await });
        }
        let gauge = metrics::gauge!("switchboard_ingress_slack_socket_last_frame_age_seconds");
        let mut every =
            tokio::time::interval(Duration::from_secs(1).min(self.settings.ping_interval));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => gauge.set(self.health.oldest_frame_age().as_secs_f64()),
            }
        }
        tasks.close();
        tasks.wait().await;
        tracing::info!("Slack Socket Mode stopped");
    }
}
