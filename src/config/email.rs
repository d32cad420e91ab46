//! `[email]`: watched mailboxes (IMAP in) and how their replies go out (SMTP).
//! Passwords are never in the file: each mailbox names the environment
//! variables holding them, read in [`super::Secrets`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[email]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailSettings {
    /// Where attachments of inbound mail are saved for the agent's turn, one
    /// folder per message. Workers must see the same path (a shared volume).
    pub attachments_dir: PathBuf,
    /// The watched mailboxes (`[[email.mailboxes]]`). None by default.
    pub mailboxes: Vec<MailboxSettings>,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            attachments_dir: PathBuf::from("switchboard-data/attachments"),
            mailboxes: Vec::new(),
        }
    }
}

/// How a connection to a mail server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// TLS from the first byte (IMAP 993, SMTP 465).
    Implicit,
    /// Plain, upgraded with STARTTLS before login (IMAP 143, SMTP 587).
    Starttls,
    /// No TLS at all: only allowed for loopback hosts (tests, local relays).
    Plain,
}

/// One `[[email.mailboxes]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxSettings {
    /// Short name: part of conversation ids and Redis keys (`[A-Za-z0-9_-]`).
    pub name: String,
    /// IMAP server host name.
    pub imap_host: String,
    /// IMAP port (993 implicit TLS, 143 STARTTLS).
    pub imap_port: u16,
    /// `implicit`, `starttls`, or `plain` (loopback hosts only).
    pub imap_tls: TlsMode,
    /// IMAP login.
    pub imap_user: String,
    /// Name of the environment variable holding the IMAP password.
    pub imap_password_env: String,
    /// Folder watched for new mail.
    #[serde(default = "default_folder")]
    pub folder: String,
    /// Folder handled mail is moved to after it was queued; unset: it stays
    /// (marked \Seen).
    #[serde(default)]
    pub move_to: Option<String>,
    /// SMTP server host name for replies.
    pub smtp_host: String,
    /// SMTP port (465 implicit TLS, 587 STARTTLS).
    pub smtp_port: u16,
    /// `implicit`, `starttls`, or `plain` (loopback hosts only).
    pub smtp_tls: TlsMode,
    /// SMTP login; unset: no authentication.
    #[serde(default)]
    pub smtp_user: Option<String>,
    /// Name of the environment variable holding the SMTP password.
    #[serde(default)]
    pub smtp_password_env: Option<String>,
    /// The address replies come from (and whose own mail is never answered).
    pub from_address: String,
    /// Display name on replies.
    #[serde(default)]
    pub from_name: Option<String>,
    /// Senders who get agent replies: full addresses (`ann@example.com`) or
    /// domains (`example.com`). Empty: nobody.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Most replies per thread in any hour; mail past it is not answered.
    #[serde(default = "default_replies_per_hour")]
    pub replies_per_thread_per_hour: u32,
    /// Attachments larger than this are listed to the agent but not saved.
    #[serde(default = "default_attachment_bytes")]
    pub max_attachment_bytes: u64,
    /// Messages larger than this are dead-lettered without being downloaded.
    #[serde(default = "default_message_bytes")]
    pub max_message_bytes: u64,
    /// IDLE is restarted this often (servers drop it after 29 minutes).
    #[serde(default = "default_idle_renew", with = "humantime_serde")]
    pub idle_renew: Duration,
    /// How often to look for new mail when the server lacks IDLE.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
}

fn default_folder() -> String {
    "INBOX".into()
}
fn default_replies_per_hour() -> u32 {
    10
}
fn default_attachment_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_message_bytes() -> u64 {
    25 * 1024 * 1024
}
fn default_idle_renew() -> Duration {
    Duration::from_secs(600)
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}

impl EmailSettings {
    /// Checks that types cannot express: `(field, reason)` on failure.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let mut names = std::collections::HashSet::new();
        for m in &self.mailboxes {
            let ok = !m.name.is_empty()
                && m.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err((
                    "email.mailboxes.name",
                    format!("{:?} must be non-empty [A-Za-z0-9_-]", m.name),
                ));
            }
            if !names.insert(m.name.as_str()) {
                return Err((
                    "email.mailboxes.name",
                    format!("{:?} is used twice", m.name),
                ));
            }
            for (field, tls, host) in [
                ("email.mailboxes.imap_tls", m.imap_tls, &m.imap_host),
                ("email.mailboxes.smtp_tls", m.smtp_tls, &m.smtp_host),
            ] {
                if tls == TlsMode::Plain && !is_loopback_host(host) {
                    return Err((
                        field,
                        format!(
                            "mailbox {:?}: \"plain\" is only allowed for loopback hosts, not {host:?}",
                            m.name
                        ),
                    ));
                }
            }
            if !looks_like_address(&m.from_address) {
                return Err((
                    "email.mailboxes.from_address",
                    format!("{:?} is not a mail address", m.from_address),
                ));
            }
            if m.smtp_user.is_some() != m.smtp_password_env.is_some() {
                return Err((
                    "email.mailboxes.smtp_password_env",
                    format!(
                        "mailbox {:?}: smtp_user and smtp_password_env go together",
                        m.name
                    ),
                ));
            }
            if m.idle_renew.is_zero() || m.idle_renew > Duration::from_secs(25 * 60) {
                return Err((
                    "email.mailboxes.idle_renew",
                    "must be between 1s and 25m (servers end IDLE after 29m)".into(),
                ));
            }
            if m.poll_interval.is_zero() {
                return Err(("email.mailboxes.poll_interval", "must be positive".into()));
            }
        }
        Ok(())
    }
}

/// `localhost` or a loopback IP address.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn looks_like_address(address: &str) -> bool {
    match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && !domain.is_empty() && !address.contains(char::is_whitespace)
        }
        None => false,
    }
}
