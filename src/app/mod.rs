//! Wiring: build every component a role needs from the settings, run them
//! until the shutdown token fires, then stop them in order within the
//! shutdown deadline.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::config::Settings;
use crate::egress::Egress;
use crate::egress::email::EmailDelivery;
use crate::egress::slack::deliver::SlackDelivery;
use crate::egress::slack::{DEFAULT_TIMEOUT, SlackApi};
use crate::http::{GatewayState, ReadinessCheck, admin_router, gateway_router};
use crate::ingress::slack::socket::SocketMode;
use crate::ingress::slack::{SignatureVerifier, SlackIntake, http::events_router};
use crate::queue::{Queue, Reaper};
use crate::store::{self, RedisPool, embedded::EmbeddedRedis};

mod pool;
mod reload;

/// Which parts of Switchboard this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every role on one machine; starts its own Redis when none is configured.
    Serve,
    /// Ingress, egress and admin HTTP.
    Gateway,
    /// One pool container: agent slots fed from the queue.
    Worker,
}

impl Role {
    fn runs_gateway(self) -> bool {
        matches!(self, Role::Serve | Role::Gateway)
    }
}

/// A built, not yet running, Switchboard process.
pub struct Application {
    settings: Settings,
    role: Role,
    redis_url: crate::config::Secret,
    embedded: Option<EmbeddedRedis>,
    redis: RedisPool,
    queue: Queue,
    admission: Admission,
    gateway: Option<TcpListener>,
    admin: Option<TcpListener>,
}

impl Application {
    /// Start Redis if needed, connect and check it, bind the listeners.
    pub async fn build(settings: Settings, role: Role) -> anyhow::Result<Self> {
        // Install the metrics recorder before anything counts.
        crate::telemetry::metrics_handle();
        if role.runs_gateway()
            && settings.slack.mode.socket_mode()
            && settings.secrets.slack_app_token.is_none()
        {
            anyhow::bail!(
                "slack.mode = \"{}\" needs Slack's app-level token: set SLACK_APP_TOKEN \
                 (xapp-..., with the connections:write scope) or slack.app_token_file",
                settings.slack.mode.as_str()
            );
        }
        let mut embedded = None;
        let url = match (&settings.secrets.redis_url, role) {
            (Some(url), _) => url.clone(),
            (None, Role::Serve) => {
                let redis = EmbeddedRedis::start(&settings.redis).await?;
                let url = redis.url().clone();
                embedded = Some(redis);
                url
            }
            (None, _) => anyhow::bail!(
                "REDIS_URL is not set (nor redis.url_file): `gateway` and `worker` need a \
                 shared Redis; only `serve` starts its own"
            ),
        };
        match Self::connect(&settings, &url).await {
            Ok(redis) => {
                let (gateway, admin) = if role.runs_gateway() {
                    (
                        Some(bind(settings.gateway.listen, "gateway.listen").await?),
                        Some(bind(settings.admin.listen, "admin.listen").await?),
                    )
                } else {
                    (None, None)
                };
                let queue = Queue::new(
                    redis.clone(),
                    &settings.redis.key_prefix,
                    settings.queue.clone(),
                );
                let admission = Admission::new(
                    queue.clone(),
                    settings.admission.clone(),
                    crate::admission::system_clock(),
                );
                Ok(Self {
                    settings,
                    role,
                    redis_url: url,
                    embedded,
                    redis,
                    queue,
                    admission,
                    gateway,
                    admin,
                })
            }
            Err(e) => {
                if let Some(redis) = embedded {
                    redis.stop(settings.shutdown_timeout).await;
                }
                Err(e)
            }
        }
    }

    async fn connect(
        settings: &Settings,
        url: &crate::config::Secret,
    ) -> anyhow::Result<RedisPool> {
        let pool = store::connect(url, &settings.redis)?;
        store::check_server(&pool)
            .await
            .context("Redis is not usable as the queue store")?;
        Ok(pool)
    }

    /// Read the wall clock admission uses from `clock` (tests move it).
    pub fn set_admission_clock(&mut self, clock: crate::admission::Clock) {
        self.admission = Admission::new(self.queue.clone(), self.settings.admission.clone(), clock);
    }

    /// The queue this process uses.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The gateway listener's address (port 0 resolved).
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The admin listener's address (port 0 resolved).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Run until `shutdown` fires, then stop in order within the deadline.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        tasks.spawn(Reaper::new(self.queue.clone()).run(shutdown.clone()));
        let pool_shape = self.start_pool(&tasks, &shutdown).await?;
        let reloader = reload::Reloader {
            admission: self.admission.clone(),
            source: self.settings.source.clone(),
            pool: pool_shape,
            started_with: self.settings.pool.clone(),
        };
        let mut readiness = Vec::new();
        if self.role.runs_gateway() {
            tasks.spawn(self.egress()?.run(shutdown.clone()));
            tasks.spawn(crate::admission::export_usage(
                self.queue.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(crate::queue::export_depth(
                self.queue.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(reload::on_sighup_or_change(
                reloader.clone(),
                shutdown.clone(),
            ));
            if let Some(socket) = self.socket_mode()? {
                let health = socket.health();
                readiness.push(Arc::new(move || health.check()) as ReadinessCheck);
                tasks.spawn(socket.run(shutdown.clone()));
            }
            crate::ingress::email::start_watchers(
                &self.settings.email,
                &self.settings.secrets.mail_passwords,
                &self.queue,
                &format!("gateway-{}", pool::process_name()),
                &tasks,
                &shutdown,
            )?;
        }
        let slack_events = match self.gateway.is_some() {
            true => self.slack_events_router()?,
            false => Router::new(),
        };
        if let Some(listener) = self.gateway {
            let router = gateway_router(GatewayState {
                redis: self.redis.clone(),
                readiness,
            })
            .merge(slack_events);
            serve(&tasks, "gateway", listener, router, shutdown.clone());
        }
        if let Some(listener) = self.admin {
            let router = admin_router(
                self.settings.secrets.admin_token.clone(),
                pool::admin_routes(self.queue.clone()).merge(reload::admin_routes(reloader)),
            );
            serve(&tasks, "admin", listener, router, shutdown.clone());
        }

        tasks.close();
        shutdown.cancelled().await;
        let deadline = self.settings.shutdown_timeout;
        if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
            tracing::warn!(
                ?deadline,
                "components did not stop within the shutdown deadline"
            );
        }
        if let Some(redis) = self.embedded {
            // Redis goes last: everything above may still write to it.
            redis.stop(deadline).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

impl Application {
    /// The outbox consumer, with Slack delivery when a bot token is set.
    fn egress(&self) -> anyhow::Result<Egress> {
        let slack = match &self.settings.secrets.slack_bot_token {
            Some(token) => {
                let api = SlackApi::new(&self.settings.slack.api_base_url, token, DEFAULT_TIMEOUT)
                    .context("Slack Web API client")?;
                Some(SlackDelivery::new(
                    api,
                    self.queue.clone(),
                    self.settings.egress.clone(),
                ))
            }
            None => {
                tracing::warn!("SLACK_BOT_TOKEN is not set: replies to Slack cannot be sent");
                None
            }
        };
        let email = if self.settings.email.mailboxes.is_empty() {
            None
        } else {
            Some(
                EmailDelivery::new(
                    self.queue.clone(),
                    &self.settings.email.mailboxes,
                    &self.settings.secrets.mail_passwords,
                )
                .context("SMTP senders")?,
            )
        };
        let holder = format!("gateway-{}", pool::process_name());
        Ok(Egress::new(
            self.queue.clone(),
            slack,
            email,
            holder,
            self.settings.redis.blocking_read,
        ))
    }

    /// `/slack/events`, when the Events API is on and a signing secret is
    /// configured.
    fn slack_events_router(&self) -> anyhow::Result<Router> {
        if !self.settings.slack.mode.events_api() {
            return Ok(Router::new());
        }
        let Some(secret) = &self.settings.secrets.slack_signing_secret else {
            tracing::warn!("SLACK_SIGNING_SECRET is not set: the Slack Events API endpoint is off");
            return Ok(Router::new());
        };
        let verifier = SignatureVerifier::new(secret).context("SLACK_SIGNING_SECRET")?;
        let intake = SlackIntake::new(self.queue.clone(), self.settings.slack.ingress())
            .with_admission(self.admission.clone())
            .with_acknowledgement(!self.settings.egress.ack_reaction.is_empty());
        Ok(events_router(intake, verifier))
    }

    /// The Socket Mode client, when Socket Mode is on (the app token was
    /// checked by [`Application::build`]).
    fn socket_mode(&self) -> anyhow::Result<Option<SocketMode>> {
        let slack = &self.settings.slack;
        let (true, Some(token)) = (
            slack.mode.socket_mode(),
            &self.settings.secrets.slack_app_token,
        ) else {
            return Ok(None);
        };
        if !token.expose().starts_with("xapp-") {
            tracing::warn!(
                "SLACK_APP_TOKEN does not look like an app-level token (xapp-...); \
                 apps.connections.open will likely refuse it"
            );
        }
        let intake = SlackIntake::new(self.queue.clone(), slack.ingress())
            .with_admission(self.admission.clone())
            .with_acknowledgement(!self.settings.egress.ack_reaction.is_empty());
        let socket = SocketMode::new(slack.socket(), &slack.api_base_url, token, intake)
            .context("Slack Socket Mode client")?;
        Ok(Some(socket))
    }
}

/// A queue handle for a client command (`chat`): `REDIS_URL`, or the
/// embedded Redis of a `serve` running in this directory.
pub async fn connect_queue(settings: &Settings) -> anyhow::Result<Queue> {
    let url = match &settings.secrets.redis_url {
        Some(url) => url.clone(),
        None => {
            let socket = std::path::absolute(settings.redis.data_dir.join("redis.sock"))
                .context("locating the embedded Redis socket")?;
            if !socket.exists() {
                anyhow::bail!(
                    "REDIS_URL is not set and no `switchboard serve` runs here ({} is missing)",
                    socket.display()
                );
            }
            crate::config::Secret::new(format!("unix://{}", socket.display()))
        }
    };
    let pool = store::connect(&url, &settings.redis)?;
    store::ping(&pool).await.context("Redis")?;
    Ok(Queue::new(
        pool,
        &settings.redis.key_prefix,
        settings.queue.clone(),
    ))
}

async fn bind(addr: SocketAddr, field: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (`{field}`)"))
}

fn serve(
    tasks: &TaskTracker,
    name: &'static str,
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = name, %addr, "listening");
    }
    tasks.spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::error!(listener = name, error = %e, "HTTP server failed");
        }
    });
}
