//! IMAP mailboxes in: one watcher per configured mailbox turns new mail into
//! queued messages (conversation: mailbox + thread root), never marking mail
//! read before it is queued and never skipping a UID. See docs/email.md.
//!
//! - `parse`: raw mail to [`parse::ParsedMail`] (pure, unit-tested, fuzzed).
//! - `guard`: which mail gets no agent reply (pure).
//! - `intake`: one mail to the queue (attachments, dead letters, rate cap).
//! - `state`: last handled UID and reply counts in Redis.
//! - `connect`, `watcher`: the IMAP side.

pub mod connect;
pub mod guard;
pub mod intake;
pub mod parse;
#[cfg(test)]
mod parse_fuzz;
pub mod state;
pub mod watcher;

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{EmailSettings, Secret};
use crate::queue::Queue;

pub use watcher::Watcher;

/// A mailbox whose IMAP password variable is unset.
#[derive(Debug, thiserror::Error)]
#[error("mailbox {mailbox:?}: environment variable {variable} (imap_password_env) is not set")]
pub struct MissingPassword {
    pub mailbox: String,
    pub variable: String,
}

/// Start one watcher per mailbox on `tasks`.
pub fn start_watchers(
    email: &EmailSettings,
    passwords: &std::collections::BTreeMap<String, Secret>,
    queue: &Queue,
    holder: &str,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), MissingPassword> {
    let mut watchers = Vec::new();
    for mailbox in &email.mailboxes {
        let password = passwords
            .get(&mailbox.imap_password_env)
            .cloned()
            .ok_or_else(|| MissingPassword {
                mailbox: mailbox.name.clone(),
                variable: mailbox.imap_password_env.clone(),
            })?;
        let mailbox = Arc::new(mailbox.clone());
        let intake = intake::Intake::new(
            queue.clone(),
            state::MailboxState::new(queue.clone(), &mailbox.name),
            mailbox.clone(),
            absolute(&email.attachments_dir),
        );
        watchers.push(Watcher::new(
            mailbox,
            password,
            queue.clone(),
            intake,
            holder.to_string(),
        ));
    }
    for watcher in watchers {
        tasks.spawn(watcher.run(shutdown.child_token()));
    }
    Ok(())
}

/// Attachment paths are given to agents, which run elsewhere: make them absolute.
fn absolute(path: &Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
