//! What a mailbox watcher keeps in Redis: the last handled UID under its
//! UIDVALIDITY, and per-thread reply counts for the hourly cap.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::queue::{Queue, QueueError};

/// Where a mailbox's catch-up starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub uid_validity: u32,
    /// The highest UID handled (0: none).
    pub last_uid: u32,
}

/// A mailbox's state in Redis.
#[derive(Clone)]
pub struct MailboxState {
    queue: Queue,
    mailbox: String,
}

impl MailboxState {
    pub fn new(queue: Queue, mailbox: &str) -> Self {
        Self {
            queue,
            mailbox: mailbox.to_string(),
        }
    }

    fn key(&self) -> String {
        self.queue.keys().shard(0).email_mailbox(&self.mailbox)
    }

    /// The stored progress, if any.
    pub async fn load(&self) -> Result<Option<Progress>, QueueError> {
        let mut conn = self.queue.connection().await?;
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key())
            .query_async(&mut *conn)
            .await?;
        let num = |f: &str| fields.get(f).and_then(|v| v.parse::<u32>().ok());
        Ok(match (num("uidvalidity"), num("last_uid")) {
            (Some(uid_validity), Some(last_uid)) => Some(Progress {
                uid_validity,
                last_uid,
            }),
            _ => None,
        })
    }

    /// Record that every UID up to `progress.last_uid` was handled.
    pub async fn save(&self, progress: Progress) -> Result<(), QueueError> {
        let mut conn = self.queue.connection().await?;
        redis::cmd("HSET")
            .arg(self.key())
            .arg("uidvalidity")
            .arg(progress.uid_validity)
            .arg("last_uid")
            .arg(progress.last_uid)
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }

    fn rate_key(&self, thread: &str) -> String {
        let hour = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() / 3600)
            .unwrap_or(0);
        let digest = hex::encode(&Sha256::digest(thread.as_bytes())[..12]);
        self.queue
            .keys()
            .shard(0)
            .email_rate(&self.mailbox, &digest, hour)
    }

    /// Mail already queued for `thread` this hour.
    pub async fn thread_count(&self, thread: &str) -> Result<u32, QueueError> {
        let mut conn = self.queue.connection().await?;
        let n: Option<u32> = redis::cmd("GET")
            .arg(self.rate_key(thread))
            .query_async(&mut *conn)
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Count one more mail queued for `thread` this hour.
    pub async fn count_thread(&self, thread: &str) -> Result<(), QueueError> {
        let key = self.rate_key(thread);
        let mut conn = self.queue.connection().await?;
        redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(2 * 3600)
            .ignore()
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }
}
