//! One watcher per mailbox: hold the mailbox's lease (one gateway watches
//! it at a time), log in, select the folder, catch up from the last handled
//! UID, then wait with IDLE (renewed every `idle_renew`) or poll, and catch
//! up again. A dropped connection reconnects with backoff; the next catch-up
//! starts at the first UID not yet handled, so nothing is skipped.

use std::sync::Arc;
use std::time::Duration;

use async_imap::extensions::idle::IdleResponse;
use futures_util::TryStreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::{MailboxSettings, Secret};
use crate::queue::{Queue, QueueError};

use super::connect::{self, ImapError, ImapSession};
use super::intake::{Handled, Intake};
use super::state::{MailboxState, Progress};

/// Longest IDLE wait before a catch-up, whatever the server announced.
const IDLE_SAFETY_NET: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a mailbox lease lasts without renewal.
const LEASE_TTL: Duration = Duration::from_secs(15);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error("queue unavailable: {0}")]
    Queue(#[from] QueueError),
    #[error("the connection was closed")]
    Closed,
}

impl From<async_imap::error::Error> for WatchError {
    fn from(e: async_imap::error::Error) -> Self {
        WatchError::Imap(ImapError::Protocol(e))
    }
}

/// Watches one mailbox.
pub struct Watcher {
    mailbox: Arc<MailboxSettings>,
    password: Secret,
    queue: Queue,
    state: MailboxState,
    intake: Intake,
    holder: String,
}

impl Watcher {
    pub fn new(
        mailbox: Arc<MailboxSettings>,
        password: Secret,
        queue: Queue,
        intake: Intake,
        holder: String,
    ) -> Self {
        let state = MailboxState::new(queue.clone(), &mailbox.name);
        Self {
            mailbox,
            password,
            queue,
            state,
            intake,
            holder,
        }
    }

    /// Run until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.mailbox.name.clone();
        let role = format!("imap-{name}");
        let mut backoff = MIN_BACKOFF;
        while !shutdown.is_cancelled() {
            match self.queue.lead(&role, 0, &self.holder, LEASE_TTL).await {
                Ok(true) => {}
                Ok(false) => {
                    sleep_or_stop(Duration::from_secs(1), &shutdown).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(mailbox = %name, error = %e, "mailbox lease check failed");
                    sleep_or_stop(Duration::from_secs(1), &shutdown).await;
                    continue;
                }
            }
            let leading = shutdown.child_token();
            let keeper = tokio::spawn(keep_lease(
                self.queue.clone(),
                role.clone(),
                self.holder.clone(),
                leading.clone(),
            ));
            let result = self.session(&leading, &mut backoff).await;
            leading.cancel();
            // The keeper ends when `leading` is cancelled; its result is nothing.
            let _ = keeper.await;
            match result {
                Ok(()) => {}
                Err(e) => {
                    metrics::counter!("switchboard_ingress_email_reconnects_total").increment(1);
                    tracing::warn!(mailbox = %name, error = %e, retry_in = ?backoff, "mailbox session ended; reconnecting");
                    sleep_or_stop(backoff, &shutdown).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One connection: catch up, wait, catch up, until stopped or dropped.
    async fn session(
        &self,
        stop: &CancellationToken,
        backoff: &mut Duration,
    ) -> Result<(), WatchError> {
        let m = &self.mailbox;
        let mut session = connect::open(m, &self.password).await?;
        let has_idle = session.capabilities().await?.has_str("IDLE");
        if let Some(folder) = &m.move_to {
            // It may exist already; any real problem shows when moving.
            let _ = session.create(folder).await;
        }
        let selected = session.select(&m.folder).await?;
        let validity = selected.uid_validity.unwrap_or(0);
        let uid_next = selected.uid_next.unwrap_or(1);
        tracing::info!(mailbox = %m.name, folder = %m.folder, idle = has_idle, "watching mailbox");
        *backoff = MIN_BACKOFF;
        self.first_catch_up(&mut session, validity, uid_next)
            .await?;
        loop {
            if stop.is_cancelled() {
                // Best effort: the server drops the session anyway.
                let _ = session.logout().await;
                return Ok(());
            }
            if has_idle {
                session = match self.idle(session, stop).await? {
                    Some(session) => session,
                    None => return Ok(()),
                };
            } else {
                if sleep_or_stop(m.poll_interval, stop).await {
                    return Ok(());
                }
                session.noop().await?;
            }
            self.catch_up(&mut session, validity).await?;
        }
    }

    /// IDLE until the server reports news, it is time to renew, or the
    /// safety-net catch-up is due. `None`: stopped.
    async fn idle(
        &self,
        session: ImapSession,
        stop: &CancellationToken,
    ) -> Result<Option<ImapSession>, WatchError> {
        let mut handle = session.idle();
        handle.init().await?;
        let response = {
            // Mail that lands between the catch-up and the IDLE command is
            // not always announced once IDLE starts (seen with Dovecot after
            // a reconnect), so IDLE also ends every IDLE_SAFETY_NET for a
            // catch-up: a missed notification costs seconds, not minutes.
            let wait_for = self.mailbox.idle_renew.min(IDLE_SAFETY_NET);
            let (wait, _interrupt) = handle.wait_with_timeout(wait_for);
            tokio::select! {
                response = wait => response?,
                _ = stop.cancelled() => return Ok(None),
            }
        };
        if matches!(response, IdleResponse::ManualInterrupt) {
            // We never interrupt: the server's stream ended.
            return Err(WatchError::Closed);
        }
        Ok(Some(handle.done().await?))
    }

    /// The catch-up right after login. With no stored progress, or a changed
    /// UIDVALIDITY (UIDs renumbered), rescan every unseen mail: queued mail
    /// was marked \Seen, and Message-ID dedupe stops repeats. Else go on
    /// from the last handled UID.
    async fn first_catch_up(
        &self,
        session: &mut ImapSession,
        validity: u32,
        uid_next: u32,
    ) -> Result<(), WatchError> {
        match self.state.load().await? {
            Some(p) if p.uid_validity == validity => self.catch_up(session, validity).await,
            stored => {
                if stored.is_some() {
                    tracing::warn!(mailbox = %self.mailbox.name, "UIDVALIDITY changed: rescanning unseen mail");
                }
                let uids = session.uid_search("UNSEEN").await?;
                let mut uids: Vec<u32> = uids.into_iter().collect();
                uids.sort_unstable();
                self.handle_uids(session, validity, &uids).await?;
                let last = uids
                    .last()
                    .copied()
                    .unwrap_or(0)
                    .max(uid_next.saturating_sub(1));
                self.state
                    .save(Progress {
                        uid_validity: validity,
                        last_uid: last,
                    })
                    .await?;
                // Mail that came in during the rescan.
                self.catch_up(session, validity).await
            }
        }
    }

    /// Handle every mail after the last handled UID, in UID order.
    async fn catch_up(&self, session: &mut ImapSession, validity: u32) -> Result<(), WatchError> {
        let last = match self.state.load().await? {
            Some(p) if p.uid_validity == validity => p.last_uid,
            _ => 0,
        };
        let start = last.saturating_add(1);
        let found = session.uid_search(format!("UID {start}:*")).await?;
        // `n:*` also matches the highest UID when it is below n.
        let mut uids: Vec<u32> = found.into_iter().filter(|&u| u >= start).collect();
        uids.sort_unstable();
        self.handle_uids(session, validity, &uids).await
    }

    async fn handle_uids(
        &self,
        session: &mut ImapSession,
        validity: u32,
        uids: &[u32],
    ) -> Result<(), WatchError> {
        for &uid in uids {
            self.handle_uid(session, validity, uid).await?;
            let stored = self.state.load().await?;
            if stored.is_none_or(|p| p.uid_validity != validity || p.last_uid < uid) {
                self.state
                    .save(Progress {
                        uid_validity: validity,
                        last_uid: uid,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Fetch (without marking read), hand to intake, then mark \Seen and
    /// move when it was queued.
    async fn handle_uid(
        &self,
        session: &mut ImapSession,
        validity: u32,
        uid: u32,
    ) -> Result<(), WatchError> {
        let m = &self.mailbox;
        let size = fetch_size(session, uid).await?;
        let handled = match size {
            // Expunged meanwhile: nothing to do.
            None => return Ok(()),
            Some(size) if size > m.max_message_bytes => {
                self.intake.too_large(validity, uid, size).await?
            }
            Some(_) => {
                let Some(raw) = fetch_body(session, uid).await? else {
                    return Ok(());
                };
                self.intake.handle(validity, uid, &raw).await?
            }
        };
        if handled.queued() {
            let flagged: Vec<_> = session
                .uid_store(uid.to_string(), "+FLAGS.SILENT (\\Seen)")
                .await?
                .try_collect()
                .await?;
            drop(flagged);
            if let Some(folder) = &m.move_to {
                session.uid_mv(uid.to_string(), folder).await?;
            }
        }
        if let Handled::DeadLettered(reason) = &handled {
            tracing::debug!(mailbox = %m.name, uid, %reason, "left unseen in place");
        }
        Ok(())
    }
}

async fn fetch_size(session: &mut ImapSession, uid: u32) -> Result<Option<u64>, WatchError> {
    let fetches: Vec<_> = session
        .uid_fetch(uid.to_string(), "(UID RFC822.SIZE)")
        .await?
        .try_collect()
        .await?;
    Ok(fetches
        .iter()
        .find(|f| f.uid == Some(uid))
        .map(|f| u64::from(f.size.unwrap_or(0))))
}

async fn fetch_body(session: &mut ImapSession, uid: u32) -> Result<Option<Vec<u8>>, WatchError> {
    let fetches: Vec<_> = session
        .uid_fetch(uid.to_string(), "(UID BODY.PEEK[])")
        .await?
        .try_collect()
        .await?;
    Ok(fetches
        .iter()
        .find(|f| f.uid == Some(uid))
        .and_then(|f| f.body().map(<[u8]>::to_vec)))
}

/// Renew the mailbox lease until `leading` is cancelled; cancel it when the
/// lease is lost, so another gateway can take over.
async fn keep_lease(queue: Queue, role: String, holder: String, leading: CancellationToken) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        if sleep_or_stop(LEASE_TTL / 3, &leading).await {
            return;
        }
        match queue.lead(&role, 0, &holder, LEASE_TTL).await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::warn!(%role, "lost the mailbox lease");
                leading.cancel();
                return;
            }
            Err(e) if renewed.elapsed() >= LEASE_TTL / 2 => {
                tracing::warn!(%role, error = %e, "cannot renew the mailbox lease; stepping down");
                leading.cancel();
                return;
            }
            Err(_) => {}
        }
    }
}

/// Sleep, or return `true` early when `stop` fires.
async fn sleep_or_stop(duration: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}
