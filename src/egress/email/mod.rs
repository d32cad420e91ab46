//! Email replies over SMTP (lettre), from the outbox's final entries:
//! threaded (In-Reply-To the message answered, References its whole chain
//! plus it), `Auto-Submitted: auto-replied`, plain text and HTML.
//!
//! Exactly once, as far as SMTP allows: a reply's state in Redis is marked
//! done after the server accepted it, and the Message-ID is derived from the
//! reply id. A crash in the window between the server's 250 and that one
//! Redis write (one round trip, normally under a millisecond) sends the
//! reply again with the same Message-ID, which mail clients and most
//! servers collapse into one. Transient failures (4xx, connection refused,
//! timeouts) are retried from the outbox with backoff; permanent ones (5xx)
//! are dead-lettered with the server's reason.

pub mod render;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::{Digest, Sha256};

use crate::config::{MailboxSettings, Secret, TlsMode};
use crate::queue::{OutboxEntry, OutboxKind, Queue, QueueError};

use super::slack::deliver::Delivered;

/// How long one SMTP exchange may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait before retrying a transient failure (the outbox backs off further).
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Where an email reply goes (from the conversation record).
#[derive(Debug, Clone, Copy)]
pub struct EmailTarget<'a> {
    pub mailbox: &'a str,
    pub to: &'a str,
    pub subject: &'a str,
    pub message_id: &'a str,
    pub references: &'a [String],
}

/// Why a mailbox's SMTP sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("mailbox {mailbox:?}: {detail}")]
    Config { mailbox: String, detail: String },
}

struct Sender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// Sends email replies for every configured mailbox.
#[derive(Clone)]
pub struct EmailDelivery {
    queue: Queue,
    senders: Arc<HashMap<String, Sender>>,
}

impl EmailDelivery {
    /// One SMTP transport per mailbox. `passwords` by variable name.
    pub fn new(
        queue: Queue,
        mailboxes: &[MailboxSettings],
        passwords: &std::collections::BTreeMap<String, Secret>,
    ) -> Result<Self, SenderError> {
        let mut senders = HashMap::new();
        for m in mailboxes {
            senders.insert(m.name.clone(), sender(m, passwords)?);
        }
        Ok(Self {
            queue,
            senders: Arc::new(senders),
        })
    }

    /// Deliver one outbox entry. Only final replies are mailed: progress and
    /// acknowledgements mean nothing to email.
    pub async fn deliver(&self, entry: &OutboxEntry, target: EmailTarget<'_>) -> Delivered {
        if entry.kind != OutboxKind::Final {
            return Delivered::Done;
        }
        match self.reply(entry, target).await {
            Ok(delivered) => delivered,
            Err(e) => {
                tracing::warn!(error = %e, "email reply state unavailable");
                Delivered::Retry(Duration::from_secs(1))
            }
        }
    }

    async fn reply(
        &self,
        entry: &OutboxEntry,
        target: EmailTarget<'_>,
    ) -> Result<Delivered, QueueError> {
        let Some(sender) = self.senders.get(target.mailbox) else {
            return Ok(Delivered::Dead(format!(
                "mailbox {:?} is not configured on this gateway",
                target.mailbox
            )));
        };
        let key = self
            .queue
            .keys()
            .shard(entry.shard)
            .reply_state(&entry.reply_id);
        let mut conn = self.queue.connection().await?;
        let done: bool = redis::cmd("HEXISTS")
            .arg(&key)
            .arg("done")
            .query_async(&mut *conn)
            .await?;
        drop(conn);
        if done {
            // Sent before a crash and redelivered from the outbox.
            return Ok(Delivered::Done);
        }
        let message = match build_message(&sender.from, entry, target) {
            Ok(message) => message,
            Err(reason) => return Ok(Delivered::Dead(reason)),
        };
        if let Err(e) = sender.transport.send(message).await {
            return Ok(classify(&e, target.mailbox));
        }
        let mut conn = self.queue.connection().await?;
        redis::pipe()
            .hset(&key, "done", 1)
            .ignore()
            .expire(&key, 7 * 24 * 3600)
            .ignore()
            .query_async::<()>(&mut *conn)
            .await?;
        metrics::counter!("switchboard_egress_replies_total", "channel" => "email").increment(1);
        tracing::info!(mailbox = target.mailbox, reply = %entry.reply_id, "email reply sent");
        Ok(Delivered::Done)
    }
}

/// Transient (4xx, connection trouble, timeouts): retry. Permanent (5xx):
/// dead-letter with the server's words.
fn classify(e: &lettre::transport::smtp::Error, mailbox: &str) -> Delivered {
    if e.is_permanent() {
        tracing::warn!(mailbox, error = %e, "SMTP server rejected a reply permanently");
        Delivered::Dead(format!("SMTP rejected the reply: {e}"))
    } else {
        tracing::warn!(mailbox, error = %e, "SMTP delivery failed; retrying");
        metrics::counter!("switchboard_egress_email_retries_total").increment(1);
        Delivered::Retry(RETRY_AFTER)
    }
}

fn sender(
    m: &MailboxSettings,
    passwords: &std::collections::BTreeMap<String, Secret>,
) -> Result<Sender, SenderError> {
    let config = |detail: String| SenderError::Config {
        mailbox: m.name.clone(),
        detail,
    };
    let builder = match m.smtp_tls {
        TlsMode::Plain => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&m.smtp_host),
        TlsMode::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&m.smtp_host)
            .map_err(|e| config(format!("SMTP TLS setup: {e}")))?,
        TlsMode::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&m.smtp_host)
            .map_err(|e| config(format!("SMTP TLS setup: {e}")))?,
    };
    let mut builder = builder.port(m.smtp_port).timeout(Some(SMTP_TIMEOUT));
    if let (Some(user), Some(var)) = (&m.smtp_user, &m.smtp_password_env) {
        let password = passwords.get(var).ok_or_else(|| {
            config(format!(
                "environment variable {var} (smtp_password_env) is not set"
            ))
        })?;
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.expose().to_string(),
        ));
    }
    let address = m
        .from_address
        .parse()
        .map_err(|e| config(format!("from_address: {e}")))?;
    Ok(Sender {
        transport: builder.build(),
        from: Mailbox::new(m.from_name.clone(), address),
    })
}

/// The reply as a MIME message. `Err`: it can never be built (bad address).
pub fn build_message(
    from: &Mailbox,
    entry: &OutboxEntry,
    target: EmailTarget<'_>,
) -> Result<Message, String> {
    let to: Mailbox = target
        .to
        .parse()
        .map_err(|e| format!("bad recipient address {:?}: {e}", target.to))?;
    let mut chain: Vec<&str> = target.references.iter().map(String::as_str).collect();
    if !chain.contains(&target.message_id) {
        chain.push(target.message_id);
    }
    let references = chain
        .iter()
        .map(|id| format!("<{id}>"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut message = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(render::reply_subject(target.subject))
        .message_id(Some(reply_message_id(&entry.reply_id, from)))
        .in_reply_to(format!("<{}>", target.message_id))
        .references(references)
        .multipart(MultiPart::alternative_plain_html(
            entry.text.clone(),
            render::html_body(&entry.text),
        ))
        .map_err(|e| format!("cannot build the reply: {e}"))?;
    let name = HeaderName::new_from_ascii("Auto-Submitted".into())
        .map_err(|e| format!("header name: {e}"))?;
    message
        .headers_mut()
        .insert_raw(HeaderValue::new(name, "auto-replied".into()));
    Ok(message)
}

/// `<sha256(reply id)[..16]@from-domain>`: the same for every attempt at
/// one reply, so a resend is recognisable as the same message.
pub fn reply_message_id(reply_id: &str, from: &Mailbox) -> String {
    let digest = hex::encode(&Sha256::digest(reply_id.as_bytes())[..16]);
    format!("<{digest}.switchboard@{}>", from.email.domain())
}

#[cfg(test)]
mod tests;
