//! The config file's sections. Every field has a default that works on one
//! machine; `config/switchboard.toml` documents the same fields.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ingress::slack::socket::SocketModeSettings;
use crate::ingress::slack::{DmConversation, SlackIngressSettings};

impl Default for super::Settings {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(30),
            threads: 1,
            data_dir: PathBuf::from("switchboard-data"),
            log: LogSettings::default(),
            gateway: GatewaySettings::default(),
            admin: AdminSettings::default(),
            redis: RedisSettings::default(),
            slack: SlackSettings::default(),
            queue: crate::queue::QueueSettings::default(),
            pool: crate::pool::PoolSettings::default(),
            agent: crate::agent::AgentSettings::default(),
            egress: EgressSettings::default(),
            admission: crate::admission::AdmissionSettings::default(),
            source: None,
            email: super::EmailSettings::default(),
            secrets: super::Secrets::default(),
        }
    }
}

/// `[log]`: tracing output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Filter in `RUST_LOG` syntax, e.g. `info` or `switchboard=debug,info`.
    pub level: String,
    /// `pretty` for people, `json` for log collectors.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Pretty,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `[gateway]`: the public HTTP listener (Slack Events API, health probes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// Address the gateway's HTTP server binds (port 0: any free port).
    pub listen: SocketAddr,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
        }
    }
}

/// `[admin]`: the admin listener (`/metrics`, `/admin/*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address of the admin listener. Off loopback it requires a bearer token.
    pub listen: SocketAddr,
    /// File holding the admin bearer token, read when
    /// `SWITCHBOARD_ADMIN_TOKEN` is unset.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token_file: None,
        }
    }
}

/// `[redis]`: the queue's store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// File holding the Redis URL, read when `REDIS_URL` is unset. With
    /// neither, `switchboard serve` runs its own redis-server.
    pub url_file: Option<PathBuf>,
    /// Prefix of every key Switchboard writes, so several deployments or
    /// tests can share one Redis.
    pub key_prefix: String,
    /// Connections in the pool, per process.
    pub pool_size: usize,
    /// How long to wait for a connection to open.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long to wait for any reply. Must be longer than the longest
    /// blocking read (`blocking_read`).
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How long a blocking read (waiting for new work) waits at most.
    #[serde(with = "humantime_serde")]
    pub blocking_read: Duration,
    /// Where the embedded redis-server keeps its socket and append-only file.
    pub data_dir: PathBuf,
    /// The redis-server program the embedded default runs (found on PATH).
    pub server_binary: PathBuf,
}

impl RedisSettings {
    /// The response timeout must exceed this, or blocking reads time out.
    pub fn min_response_timeout(&self) -> Duration {
        self.blocking_read + Duration::from_secs(1)
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url_file: None,
            key_prefix: "switchboard".into(),
            pool_size: 32,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            blocking_read: Duration::from_secs(2),
            data_dir: PathBuf::from("switchboard-data/redis"),
            server_binary: PathBuf::from("redis-server"),
        }
    }
}

/// `[slack]`: the Slack app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackSettings {
    /// How events arrive: `events_api` (Slack POSTs to `/slack/events`; needs
    /// a public URL), `socket_mode` (the gateway opens websockets to Slack
    /// with `SLACK_APP_TOKEN`), or `both`.
    pub mode: SlackMode,
    /// Base URL of Slack's Web API. Point it at a local stand-in for tests.
    pub api_base_url: String,
    /// File holding the signing secret, read when `SLACK_SIGNING_SECRET` is unset.
    pub signing_secret_file: Option<PathBuf>,
    /// File holding the bot token, read when `SLACK_BOT_TOKEN` is unset.
    pub bot_token_file: Option<PathBuf>,
    /// File holding the app-level token, read when `SLACK_APP_TOKEN` is unset.
    pub app_token_file: Option<PathBuf>,
    /// This app's id (`A...`); events for other apps are ignored. Unset: any.
    pub app_id: Option<String>,
    /// The bot's own user id (`U...`). Unset: read from each event.
    pub bot_user_id: Option<String>,
    /// Accept messages written by other bots (never this bot's own).
    pub allow_other_bots: bool,
    /// A DM is one conversation per `channel`, or one per `thread`.
    pub dm_conversation: DmConversation,
    /// Largest Events API request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long a request may wait for its event to be queued before it is
    /// answered 503 (Slack retries). Under Slack's 3 s timeout.
    #[serde(with = "humantime_serde")]
    pub enqueue_deadline: Duration,
    /// Socket Mode connections per gateway, each independent (1 to 10; Slack
    /// allows 10 per app across all replicas).
    pub socket_connections: usize,
    /// How often each Socket Mode connection pings Slack.
    #[serde(with = "humantime_serde")]
    pub socket_ping_interval: Duration,
    /// A Socket Mode connection that received no frame for this long is
    /// replaced. Longer than `socket_ping_interval`.
    #[serde(with = "humantime_serde")]
    pub socket_silence_timeout: Duration,
    /// `/readyz` fails when no Socket Mode connection received a frame
    /// within this long. At least `socket_silence_timeout`.
    #[serde(with = "humantime_serde")]
    pub socket_readiness_max_age: Duration,
}

/// Which transports bring Slack events in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlackMode {
    /// HTTP requests from Slack to `/slack/events`.
    #[default]
    EventsApi,
    /// Websockets the gateway opens to Slack.
    SocketMode,
    /// Both at once (e.g. while moving from one to the other).
    Both,
}

impl SlackMode {
    /// As written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            SlackMode::EventsApi => "events_api",
            SlackMode::SocketMode => "socket_mode",
            SlackMode::Both => "both",
        }
    }

    /// Whether `/slack/events` is served.
    pub fn events_api(self) -> bool {
        matches!(self, SlackMode::EventsApi | SlackMode::Both)
    }

    /// Whether Socket Mode connections are opened.
    pub fn socket_mode(self) -> bool {
        matches!(self, SlackMode::SocketMode | SlackMode::Both)
    }
}

impl SlackSettings {
    /// What the Socket Mode client needs of these settings.
    pub fn socket(&self) -> SocketModeSettings {
        SocketModeSettings {
            connections: self.socket_connections,
            ping_interval: self.socket_ping_interval,
            silence_timeout: self.socket_silence_timeout,
            readiness_max_age: self.socket_readiness_max_age,
        }
    }

    /// What Slack ingress needs of these settings.
    pub fn ingress(&self) -> SlackIngressSettings {
        SlackIngressSettings {
            app_id: self.app_id.clone(),
            bot_user_id: self.bot_user_id.clone(),
            allow_other_bots: self.allow_other_bots,
            dm_conversation: self.dm_conversation,
            max_body_bytes: self.max_body_bytes,
            enqueue_deadline: self.enqueue_deadline,
        }
    }
}

impl Default for SlackSettings {
    fn default() -> Self {
        let ingress = SlackIngressSettings::default();
        let socket = SocketModeSettings::default();
        Self {
            mode: SlackMode::default(),
            api_base_url: "https://slack.com/api/".into(),
            signing_secret_file: None,
            bot_token_file: None,
            app_token_file: None,
            app_id: ingress.app_id,
            bot_user_id: ingress.bot_user_id,
            allow_other_bots: ingress.allow_other_bots,
            dm_conversation: ingress.dm_conversation,
            max_body_bytes: ingress.max_body_bytes,
            enqueue_deadline: ingress.enqueue_deadline,
            socket_connections: socket.connections,
            socket_ping_interval: socket.ping_interval,
            socket_silence_timeout: socket.silence_timeout,
            socket_readiness_max_age: socket.readiness_max_age,
        }
    }
}

/// `[egress]`: how replies go out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressSettings {
    /// A streamed reply is updated at most this often (Slack allows about one
    /// chat.update per second per message); workers publish progress no
    /// faster either. The first progress waits 250 ms after the first text
    /// (`pool::progress::FIRST_UPDATE_DELAY`), so a quick reply is posted once.
    #[serde(with = "humantime_serde")]
    pub update_interval: Duration,
    /// Reaction added to a Slack message as soon as it is queued, removed
    /// when its reply is done. Empty: none.
    pub ack_reaction: String,
    /// Longest Slack message text; longer replies continue in new messages.
    pub message_limit: usize,
    /// Slack's per-method limit (chat.update, reactions.*,
    /// conversations.replies), per workspace, shared by all gateways.
    pub slack_calls_per_minute: f64,
    /// Burst allowed above that rate.
    pub slack_burst: f64,
    /// chat.postMessage per second per channel.
    pub slack_posts_per_second: f64,
    /// Burst of posts per channel.
    pub slack_post_burst: f64,
    /// A reply older than this when it can finally be sent (after an
    /// outage) is handled per `stale_replies`.
    #[serde(with = "humantime_serde")]
    pub max_reply_age: Duration,
    /// "note": send it with a note that it is late; "drop": dead-letter it.
    pub stale_replies: StaleReplies,
}

/// What happens to a reply that is too old when it can finally be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleReplies {
    Note,
    Drop,
}

impl Default for EgressSettings {
    fn default() -> Self {
        Self {
            update_interval: Duration::from_secs(1),
            ack_reaction: "eyes".into(),
            message_limit: 3500,
            slack_calls_per_minute: 45.0,
            slack_burst: 5.0,
            slack_posts_per_second: 1.0,
            slack_post_burst: 2.0,
            max_reply_age: Duration::from_secs(3600),
            stale_replies: StaleReplies::Note,
        }
    }
}
