//! One fetched mail to the queue: parse, guard, save attachments, enqueue.
//! Mail that can never be handled is dead-lettered with the reason; mail
//! the guards stop is logged and counted. Only a Redis failure is an error
//! (the watcher then retries the same UID: nothing is skipped).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::MailboxSettings;
use crate::domain::{ConversationId, Destination, FileRef, InboundMessage};
use crate::queue::{EnqueueMode, Enqueued, Queue, QueueError};

use super::guard::{self, Skip};
use super::parse::{self, ParseError, ParsedMail, safe_file_name};
use super::state::MailboxState;

/// What became of one mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Queued for the agent (mark it \Seen, move it).
    Queued,
    /// Queued before (a re-fetch after a crash or a rescan).
    Duplicate,
    /// No agent reply, for this reason.
    Skipped(Skip),
    /// Set aside for an operator, with this reason.
    DeadLettered(String),
}

impl Handled {
    /// Whether the mail was taken by the queue (so it is marked \Seen).
    pub fn queued(&self) -> bool {
        matches!(self, Handled::Queued | Handled::Duplicate)
    }
}

/// Turns a mailbox's mail into queued messages.
#[derive(Clone)]
pub struct Intake {
    queue: Queue,
    state: MailboxState,
    mailbox: Arc<MailboxSettings>,
    attachments_dir: PathBuf,
}

impl Intake {
    pub fn new(
        queue: Queue,
        state: MailboxState,
        mailbox: Arc<MailboxSettings>,
        attachments_dir: PathBuf,
    ) -> Self {
        Self {
            queue,
            state,
            mailbox,
            attachments_dir,
        }
    }

    fn source(&self, uid_validity: u32, uid: u32) -> String {
        format!("email:{}:uid:{uid_validity}:{uid}", self.mailbox.name)
    }

    /// A mail the server says is over the size limit: never downloaded.
    pub async fn too_large(
        &self,
        uid_validity: u32,
        uid: u32,
        size: u64,
    ) -> Result<Handled, QueueError> {
        let error = ParseError::TooLarge {
            size,
            max: self.mailbox.max_message_bytes,
        };
        self.dead_letter(uid_validity, uid, &error).await
    }

    /// Handle the raw bytes of mail `uid`.
    pub async fn handle(
        &self,
        uid_validity: u32,
        uid: u32,
        raw: &[u8],
    ) -> Result<Handled, QueueError> {
        let mail = match parse::parse(raw, self.mailbox.max_message_bytes) {
            Ok(mail) => mail,
            Err(e) => return self.dead_letter(uid_validity, uid, &e).await,
        };
        if let Err(skip) = guard::check(&mail, &self.mailbox.from_address, &self.mailbox.allow) {
            return Ok(self.skipped(&mail, skip));
        }
        let root = mail.thread_root().to_string();
        if self.state.thread_count(&root).await? >= self.mailbox.replies_per_thread_per_hour {
            return Ok(self.skipped(&mail, Skip::RateLimited));
        }
        let message = self.message(&mail, uid_validity, uid).await;
        let destination = Destination::Email {
            mailbox: self.mailbox.name.clone(),
            to: mail.reply_to.clone(),
            subject: mail.subject.clone(),
            message_id: mail.message_id.clone(),
            references: parent_chain(&mail),
        };
        let outcome = self
            .queue
            .enqueue(&message, &destination, EnqueueMode::CreateOrAppend)
            .await?;
        Ok(match outcome {
            Enqueued::Queued { .. } => {
                self.state.count_thread(&root).await?;
                metrics::counter!("switchboard_ingress_email_queued_total").increment(1);
                tracing::info!(mailbox = %self.mailbox.name, uid, conversation = %message.conversation, "mail queued");
                Handled::Queued
            }
            Enqueued::Duplicate | Enqueued::NoConversation => Handled::Duplicate,
            // The queue dead-lettered it and told the sender once.
            Enqueued::Overflow => Handled::Queued,
        })
    }

    fn skipped(&self, mail: &ParsedMail, skip: Skip) -> Handled {
        metrics::counter!("switchboard_ingress_email_skipped_total", "reason" => skip.label())
            .increment(1);
        tracing::info!(
            mailbox = %self.mailbox.name,
            message_id = %mail.message_id,
            reason = skip.label(),
            "mail gets no agent reply"
        );
        Handled::Skipped(skip)
    }

    async fn dead_letter(
        &self,
        uid_validity: u32,
        uid: u32,
        error: &ParseError,
    ) -> Result<Handled, QueueError> {
        let reason = error.to_string();
        self.queue
            .dead_letter_inbound(&self.source(uid_validity, uid), &reason, error.label())
            .await?;
        metrics::counter!("switchboard_ingress_email_dead_letters_total", "reason" => error.label())
            .increment(1);
        tracing::warn!(mailbox = %self.mailbox.name, uid, %reason, "mail dead-lettered");
        Ok(Handled::DeadLettered(reason))
    }

    /// The queued message: subject and new text, attachments saved.
    async fn message(&self, mail: &ParsedMail, uid_validity: u32, uid: u32) -> InboundMessage {
        let name = &self.mailbox.name;
        let mut text = format!("Subject: {}\n\n{}", mail.subject, mail.text);
        let (files, skipped) = self.save_attachments(mail, uid_validity, uid).await;
        for line in skipped {
            text.push('\n');
            text.push_str(&line);
        }
        InboundMessage {
            conversation: conversation_id(name, mail.thread_root()),
            dedupe_keys: vec![
                format!("email:{name}:msgid:{}", mail.message_id),
                format!("email:{name}:uid:{uid_validity}:{uid}"),
            ],
            sender: mail.from.clone(),
            sender_name: mail.from_name.clone(),
            text,
            files,
            external_id: mail.message_id.clone(),
            received_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }

    /// Save attachments under the size cap in a folder of this mail's own;
    /// return them, and a line for each one that was not saved.
    async fn save_attachments(
        &self,
        mail: &ParsedMail,
        uid_validity: u32,
        uid: u32,
    ) -> (Vec<FileRef>, Vec<String>) {
        let dir = self
            .attachments_dir
            .join(&self.mailbox.name)
            .join(format!("{uid_validity}-{uid}"));
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        for (i, a) in mail.attachments.iter().enumerate() {
            let size = a.data.len() as u64;
            let listed = format!("{} ({}, {size} bytes)", a.name, a.mimetype);
            if size > self.mailbox.max_attachment_bytes {
                skipped.push(format!(
                    "[attached file: {listed}; not saved: larger than {} bytes]",
                    self.mailbox.max_attachment_bytes
                ));
                continue;
            }
            let path = dir.join(format!("{}-{}", i + 1, safe_file_name(&a.name)));
            match write_file(&dir, &path, &a.data).await {
                Ok(()) => files.push(FileRef {
                    id: format!("{uid_validity}-{uid}-{}", i + 1),
                    name: a.name.clone(),
                    mimetype: Some(a.mimetype.clone()),
                    size: Some(size),
                    url: Some(path.display().to_string()),
                }),
                Err(e) => {
                    tracing::warn!(mailbox = %self.mailbox.name, uid, error = %e, "cannot save an attachment");
                    skipped.push(format!("[attached file: {listed}; could not be saved]"));
                }
            }
        }
        (files, skipped)
    }
}

async fn write_file(dir: &Path, path: &Path, data: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    tokio::fs::write(path, data).await
}

/// `email:{mailbox}:{thread root}`; an unusual root (spaces, braces, very
/// long) is replaced by its digest so keys stay well-formed.
pub fn conversation_id(mailbox: &str, root: &str) -> ConversationId {
    use sha2::{Digest, Sha256};
    let plain = root.len() <= 200
        && root
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '{' | '}'));
    if plain {
        ConversationId::new(format!("email:{mailbox}:{root}"))
    } else {
        let digest = hex::encode(&Sha256::digest(root.as_bytes())[..16]);
        ConversationId::new(format!("email:{mailbox}:h-{digest}"))
    }
}

/// The parent's chain for a reply's References: its References, or its
/// In-Reply-To when it has none (RFC 5322 3.6.4). Egress appends the
/// parent's own Message-ID.
fn parent_chain(mail: &ParsedMail) -> Vec<String> {
    if !mail.references.is_empty() {
        mail.references.clone()
    } else {
        mail.in_reply_to.iter().cloned().collect()
    }
}
