//! Configuration: one TOML file, overridden field by field by
//! `SWITCHBOARD__SECTION__KEY` environment variables, with secrets read only
//! from their conventional environment variables or from files named here.
//!
//! Loaded and validated once, before anything starts. This is the only module
//! that reads the process environment.

mod email;
mod secret;
mod sections;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use email::{EmailSettings, MailboxSettings, TlsMode, is_loopback_host};
pub use secret::Secret;
pub use sections::*;

/// Environment variable prefix for field overrides (`SWITCHBOARD__GATEWAY__LISTEN=...`).
pub const ENV_PREFIX: &str = "SWITCHBOARD__";
/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "SWITCHBOARD_CONFIG";

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot read secret file {path} (named by `{field}`): {source}")]
    SecretFile {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Everything Switchboard reads from its config file and environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How long a stop (SIGINT/SIGTERM) may take before what is left is killed.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: std::time::Duration,
    /// Threads of this process's async runtime: 1 (the default) runs it on
    /// one thread; 0 uses one per core. See README "Sizing the gateway".
    pub threads: u16,
    /// Where Switchboard keeps its runtime files (the workers' config).
    pub data_dir: PathBuf,
    pub log: LogSettings,
    pub gateway: GatewaySettings,
    pub admin: AdminSettings,
    pub redis: RedisSettings,
    pub slack: SlackSettings,
    pub queue: crate::queue::QueueSettings,
    pub pool: crate::pool::PoolSettings,
    pub agent: crate::agent::AgentSettings,
    pub egress: EgressSettings,
    pub admission: crate::admission::AdmissionSettings,
    /// The file these settings came from (for reloads); not a setting.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    pub email: EmailSettings,
    /// Secrets, from the environment or the files named above; never serialized.
    #[serde(skip)]
    pub secrets: Secrets,
}

/// Secrets, each read from its conventional environment variable or, when
/// that is unset, from the file named in config.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Secrets {
    /// `REDIS_URL`: where Redis is. Unset: `serve` starts its own.
    pub redis_url: Option<Secret>,
    /// `SLACK_SIGNING_SECRET`: verifies Events API requests.
    pub slack_signing_secret: Option<Secret>,
    /// `SLACK_BOT_TOKEN`: the bot's Web API token (`xoxb-...`).
    pub slack_bot_token: Option<Secret>,
    /// `SLACK_APP_TOKEN`: the app-level token for Socket Mode (`xapp-...`).
    pub slack_app_token: Option<Secret>,
    /// `SWITCHBOARD_ADMIN_TOKEN`: bearer token for the admin listener.
    pub admin_token: Option<Secret>,
    /// `ANTHROPIC_API_KEY`: the agent's own API key, passed to agents only.
    pub anthropic_api_key: Option<Secret>,
    /// `SWITCHBOARD_WORKER_REDIS_PASSWORD`: the password of the worker Redis
    /// user (`pool.worker_redis_user`), from which workers' Redis URL is made.
    pub worker_redis_password: Option<Secret>,
    /// `WORKER_REDIS_URL`: the whole Redis URL workers use, when it cannot be
    /// made from REDIS_URL (e.g. Redis at another address on the pool's
    /// network).
    pub worker_redis_url: Option<Secret>,
    /// Mail passwords, by the environment variable a mailbox names
    /// (`imap_password_env`, `smtp_password_env`). Unset ones are absent.
    pub mail_passwords: std::collections::BTreeMap<String, Secret>,
}

impl Settings {
    /// Load from `path` (or `$SWITCHBOARD_CONFIG`, or built-in defaults when
    /// neither is set), apply environment overrides, read secrets, validate.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env_path = std::env::var_os(CONFIG_PATH_ENV).map(PathBuf::from);
        let path = path.map(Path::to_path_buf).or(env_path);
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = &path {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.clone()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
        let mut settings: Settings = figment.extract().map_err(describe_figment_error)?;
        settings.source = path;
        settings.secrets = Secrets::from_env(&settings)?;
        if let Some(key) = &settings.secrets.anthropic_api_key {
            settings
                .agent
                .secret_env
                .insert("ANTHROPIC_API_KEY".into(), key.clone());
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Parse a TOML document alone (no environment), as tests of shipped
    /// config files do.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let settings: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(describe_figment_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.threads > 1024 {
            return invalid("threads", "must be at most 1024 (0: one per core)");
        }
        if self.redis.pool_size == 0 {
            return invalid("redis.pool_size", "must be at least 1");
        }
        if self.redis.response_timeout < self.redis.min_response_timeout() {
            return invalid(
                "redis.response_timeout",
                format!(
                    "must be longer than the longest blocking read ({}); Redis replies to \
                     a blocking read only when it ends",
                    humantime::format_duration(self.redis.min_response_timeout())
                ),
            );
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(['{', '}', ' ']) {
            return invalid(
                "redis.key_prefix",
                "must be non-empty, without spaces or braces",
            );
        }
        if let Err(e) = self.slack.ingress().validate() {
            // Its Display names the field (`slack.<field>`) and the reason.
            return Err(ConfigError::Parse(e.to_string()));
        }
        if let Err(e) = self.slack.socket().validate() {
            return Err(ConfigError::Parse(e.to_string()));
        }
        if let Err((field, reason)) = self.queue.check() {
            return invalid(field, reason);
        }
        if let Err((field, reason)) = self.pool.check() {
            return invalid(field, reason);
        }
        if let Err((field, reason)) = self.admission.check() {
            return invalid(field, reason);
        }
        if let Err((field, reason)) = self.email.check() {
            return invalid(field, reason);
        }
        if self.egress.update_interval < std::time::Duration::from_millis(100) {
            return invalid("egress.update_interval", "must be at least 100ms");
        }
        if self.egress.message_limit < 64 || self.egress.message_limit > 40_000 {
            return invalid("egress.message_limit", "must be 64 to 40000 characters");
        }
        if self.egress.slack_calls_per_minute <= 0.0 || self.egress.slack_posts_per_second <= 0.0 {
            return invalid("egress.slack_calls_per_minute", "rates must be positive");
        }
        if self.egress.slack_burst < 2.0 || self.egress.slack_post_burst < 2.0 {
            // Sheddable calls (progress) need one token of headroom.
            return invalid("egress.slack_burst", "bursts must be at least 2");
        }
        if !is_loopback(self.admin.listen) && self.secrets.admin_token.is_none() {
            return invalid(
                "admin.listen",
                format!(
                    "{} is not a loopback address, so the admin listener needs a bearer \
                     token: set SWITCHBOARD_ADMIN_TOKEN or admin.token_file",
                    self.admin.listen
                ),
            );
        }
        if !(self.slack.api_base_url.starts_with("https://")
            || self.slack.api_base_url.starts_with("http://"))
        {
            return invalid("slack.api_base_url", "must be an http:// or https:// URL");
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets shown only as set/unset.
    pub fn render_redacted(&self) -> String {
        let mut out = toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render config: {e}\n"));
        out.push_str("\n# secrets (from the environment or secret files)\n");
        for (name, value) in self.secrets.listing() {
            let shown = if value.is_some() {
                "[redacted]"
            } else {
                "<unset>"
            };
            out.push_str(&format!("# {name} = {shown}\n"));
        }
        for name in self.secrets.mail_passwords.keys() {
            out.push_str(&format!("# {name} = [redacted]\n"));
        }
        out
    }
}

impl Secrets {
    fn from_env(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            redis_url: secret("REDIS_URL", "redis.url_file", &settings.redis.url_file)?,
            slack_signing_secret: secret(
                "SLACK_SIGNING_SECRET",
                "slack.signing_secret_file",
                &settings.slack.signing_secret_file,
            )?,
            slack_bot_token: secret(
                "SLACK_BOT_TOKEN",
                "slack.bot_token_file",
                &settings.slack.bot_token_file,
            )?,
            slack_app_token: secret(
                "SLACK_APP_TOKEN",
                "slack.app_token_file",
                &settings.slack.app_token_file,
            )?,
            admin_token: secret(
                "SWITCHBOARD_ADMIN_TOKEN",
                "admin.token_file",
                &settings.admin.token_file,
            )?,
            anthropic_api_key: secret(
                "ANTHROPIC_API_KEY",
                "agent.api_key_file",
                &settings.agent.api_key_file,
            )?,
            worker_redis_password: secret(
                "SWITCHBOARD_WORKER_REDIS_PASSWORD",
                "pool.worker_redis_password_file",
                &settings.pool.worker_redis_password_file,
            )?,
            worker_redis_url: secret("WORKER_REDIS_URL", "", &None)?,
            mail_passwords: mail_passwords(&settings.email),
        })
    }

    fn listing(&self) -> [(&'static str, &Option<Secret>); 8] {
        [
            ("REDIS_URL", &self.redis_url),
            ("SLACK_SIGNING_SECRET", &self.slack_signing_secret),
            ("SLACK_BOT_TOKEN", &self.slack_bot_token),
            ("SLACK_APP_TOKEN", &self.slack_app_token),
            ("SWITCHBOARD_ADMIN_TOKEN", &self.admin_token),
            ("ANTHROPIC_API_KEY", &self.anthropic_api_key),
            (
                "SWITCHBOARD_WORKER_REDIS_PASSWORD",
                &self.worker_redis_password,
            ),
            ("WORKER_REDIS_URL", &self.worker_redis_url),
        ]
    }
}

/// The passwords the mailboxes name, from the environment (unset or empty
/// ones are left out: the gateway refuses to start a mailbox without them,
/// while a worker, which holds no mail password, never needs them).
fn mail_passwords(email: &EmailSettings) -> std::collections::BTreeMap<String, Secret> {
    let names = email.mailboxes.iter().flat_map(|m| {
        std::iter::once(m.imap_password_env.clone()).chain(m.smtp_password_env.clone())
    });
    names
        .filter_map(|var| match std::env::var(&var) {
            Ok(value) if !value.is_empty() => Some((var, Secret::new(value))),
            _ => None,
        })
        .collect()
}

/// A secret from environment variable `var`, else from the file `file`
/// names (trailing newline removed). Empty values count as unset.
fn secret(
    var: &str,
    field: &'static str,
    file: &Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    if let Ok(value) = std::env::var(var)
        && !value.trim().is_empty()
    {
        return Ok(Some(Secret::new(value.trim())));
    }
    let Some(path) = file else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        field,
        path: path.clone(),
        source,
    })?;
    let value = text.trim();
    Ok((!value.is_empty()).then(|| Secret::new(value)))
}

fn invalid<T>(field: &'static str, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        field,
        reason: reason.into(),
    })
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Figment's errors name the key and the source; list every one of them.
fn describe_figment_error(error: figment::Error) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(
                    |m| match &e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                        Some(src) => format!(" (from {src})"),
                        None => format!(" (from {})", m.name),
                    },
                )
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("`{key}`: {}{source}", e.kind)
            }
        })
        .collect();
    ConfigError::Parse(lines.join("\n"))
}

#[cfg(test)]
mod tests;
