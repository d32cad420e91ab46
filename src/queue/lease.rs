//! Keeping a lease alive during a turn, and giving it up in time.
//!
//! The keeper renews every `lease_ttl / 3`. If no renewal has succeeded for
//! `lease_ttl - lease_margin` (measured from when the last good renewal was
//! *sent*, so never later than the server's deadline), or a renewal is
//! refused, it cancels `lost`: the turn must stop and must not commit. The
//! server's deadline is at least `lease_margin` later, so the turn has
//! stopped before any reaper can hand the conversation to someone else.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Lease, Queue, QueueError};

/// Renews one lease in the background while a turn runs.
pub struct LeaseKeeper {
    lost: CancellationToken,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Start keeping `lease` (just claimed, so freshly renewed).
    pub fn start(queue: Queue, lease: Lease) -> Self {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep(queue, lease, lost.clone(), stop.clone()));
        Self { lost, stop, task }
    }

    /// Cancelled when the lease is lost: stop the turn, do not commit.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Stop renewing (the turn is over).
    pub async fn stop(self) {
        self.stop.cancel();
        // A join error means the task panicked; it held nothing to clean up.
        let _ = self.task.await;
    }
}

async fn keep(queue: Queue, lease: Lease, lost: CancellationToken, stop: CancellationToken) {
    let settings = queue.settings();
    let every = settings.lease_ttl / 3;
    let budget = settings.lease_ttl - settings.lease_margin;
    let mut last_ok = Instant::now();
    loop {
        let give_up_at = last_ok + budget;
        let next = (Instant::now() + every).min(give_up_at);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        if Instant::now() >= give_up_at {
            tracing::warn!(conversation = %lease.conversation, "lease not renewed in time; stopping the turn");
            lost.cancel();
            return;
        }
        let sent = Instant::now();
        let left = give_up_at.saturating_duration_since(sent);
        tokio::select! {
            _ = stop.cancelled() => return,
            result = tokio::time::timeout(left.max(Duration::from_millis(1)), queue.renew(&lease)) => match result {
                Ok(Ok(())) => last_ok = sent,
                Ok(Err(QueueError::Fenced(_))) => {
                    tracing::warn!(conversation = %lease.conversation, "lease lost to another worker; stopping the turn");
                    lost.cancel();
                    return;
                }
                Ok(Err(e)) => tracing::warn!(conversation = %lease.conversation, error = %e, "lease renewal failed; retrying"),
                Err(_) => tracing::warn!(conversation = %lease.conversation, "lease renewal timed out"),
            }
        }
    }
}
