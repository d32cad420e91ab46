//! The outbox consumer. For each shard, one gateway at a time holds the
//! egress lease and reads the shard's outbox; a new leader first re-reads
//! what its predecessor read but never acknowledged. Entries are handed to
//! one task per conversation, so a reply's entries are applied in order
//! while conversations go out in parallel. An entry is acknowledged only
//! once it was delivered, knowingly skipped (superseded progress), or
//! dead-lettered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{ConversationId, Destination};
use crate::queue::{OutboxEntry, OutboxKind, Queue, StateWrite};

use super::email::{EmailDelivery, EmailTarget};
use super::slack::deliver::{Delivered, SlackDelivery, SlackTarget};

/// How long an egress lease lasts without renewal.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// A conversation task with nothing to do for this long ends.
const IDLE: Duration = Duration::from_secs(30);
/// The longest wait between retries of one entry.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Delivers the outbox.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Queue,
    slack: Option<SlackDelivery>,
    email: Option<EmailDelivery>,
    /// This gateway's name for the egress lease.
    holder: String,
    block: Duration,
}

impl Egress {
    pub fn new(
        queue: Queue,
        slack: Option<SlackDelivery>,
        email: Option<EmailDelivery>,
        holder: String,
        block: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                queue,
                slack,
                email,
                holder,
                block,
            }),
        }
    }

    /// Run until `shutdown`: lead what shards it can and deliver them.
    pub async fn run(self, shutdown: CancellationToken) {
        if let Err(e) = self.inner.queue.ensure_outbox_group().await {
            tracing::error!(error = %e, "cannot create the outbox consumer group; egress retries");
        }
        let tasks = TaskTracker::new();
        for shard in 0..self.inner.queue.keys().shards() {
            tasks.spawn(self.clone().lead_shard(shard, shutdown.clone()));
        }
        tasks.close();
        tasks.wait().await;
    }

    async fn lead_shard(self, shard: u16, shutdown: CancellationToken) {
        let queue = &self.inner.queue;
        while !shutdown.is_cancelled() {
            match queue
                .lead("egress", shard, &self.inner.holder, LEASE_TTL)
                .await
            {
                Ok(true) => {
                    tracing::info!(shard, "leading egress for this shard");
                    self.consume(shard, &shutdown).await;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(shard, error = %e, "egress lease check failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Read and dispatch while this gateway leads `shard`.
    async fn consume(&self, shard: u16, shutdown: &CancellationToken) {
        let queue = &self.inner.queue;
        let mut router = Router::new(self.clone(), shard, shutdown.clone());
        // First what a previous leader read but never acknowledged, page by
        // page, then new entries.
        let mut pending: Option<String> = Some("0".into());
        let mut renewed = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if renewed.elapsed() >= LEASE_TTL / 3 {
                match queue
                    .lead("egress", shard, &self.inner.holder, LEASE_TTL)
                    .await
                {
                    Ok(true) => renewed = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::warn!(shard, "lost the egress lease");
                        break;
                    }
                    Err(e) if renewed.elapsed() >= LEASE_TTL / 2 => {
                        tracing::warn!(shard, error = %e, "cannot renew the egress lease; stepping down");
                        break;
                    }
                    Err(_) => {}
                }
            }
            let read = tokio::select! {
                _ = shutdown.cancelled() => break,
                read = queue.read_outbox(shard, 200, self.inner.block.min(LEASE_TTL / 4), pending.as_deref()) => read,
            };
            match read {
                Ok(entries) if pending.is_some() && entries.is_empty() => pending = None,
                Ok(entries) => {
                    if pending.is_some() {
                        pending = entries.last().map(|e| e.id.clone());
                    }
                    for entry in entries {
                        router.dispatch(entry);
                    }
                }
                Err(e) => {
                    tracing::warn!(shard, error = %e, "reading the outbox failed");
                    if e.to_string().contains("NOGROUP") {
                        // The stream was lost (Redis restarted empty): recreate.
                        let _ = queue.ensure_outbox_group().await;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        router.close().await;
    }

    /// Deliver one entry; retries transient failures with backoff until it
    /// is delivered, dead-lettered, or the gateway stops (then it stays
    /// pending for the next leader).
    /// `destination` caches the conversation's destination across one
    /// batch of its entries. With `deferred`, a Slack reply's final state
    /// write is left there, to go with the batch's acknowledgement.
    async fn handle(
        &self,
        entry: &OutboxEntry,
        destination: &mut Option<Destination>,
        shutdown: &CancellationToken,
        mut deferred: Option<&mut Vec<StateWrite>>,
    ) -> bool {
        let mut backoff = Duration::from_millis(200);
        // A retry may follow a post that Slack stored: it reads the state.
        let mut entry = std::borrow::Cow::Borrowed(entry);
        loop {
            let delivered = self
                .deliver(&entry, destination, deferred.as_deref_mut())
                .await;
            if entry.fresh {
                entry.to_mut().fresh = false;
            }
            match delivered {
                Delivered::Done => return true,
                Delivered::Dead(reason) => {
                    metrics::counter!("switchboard_egress_dead_letters_total").increment(1);
                    if let Err(e) = self.inner.queue.dead_letter_reply(&entry, &reason).await {
                        tracing::warn!(error = %e, "could not dead-letter a reply; retrying");
                    } else {
                        return true;
                    }
                }
                Delivered::Retry(after) => {
                    let wait = after.max(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn deliver(
        &self,
        entry: &OutboxEntry,
        cached: &mut Option<Destination>,
        deferred: Option<&mut Vec<StateWrite>>,
    ) -> Delivered {
        let destination = match (cached, &entry.destination) {
            (_, Some(d)) => d,
            (Some(d), None) => d,
            (cached, None) => match self.inner.queue.destination(&entry.conversation).await {
                Ok(Some(d)) => cached.insert(d),
                Ok(None) => {
                    return Delivered::Dead("conversation record is gone; no destination".into());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the destination");
                    return Delivered::Retry(Duration::from_secs(1));
                }
            },
        };
        match destination {
            Destination::Slack {
                team,
                channel,
                thread_ts,
            } => match &self.inner.slack {
                Some(slack) => {
                    let target = SlackTarget {
                        team,
                        channel,
                        thread_ts: thread_ts.as_deref(),
                    };
                    slack.deliver(entry, target, deferred).await
                }
                None => Delivered::Dead("SLACK_BOT_TOKEN is not set: cannot reply on Slack".into()),
            },
            Destination::Console { session } => {
                match super::console::deliver(&self.inner.queue, entry, session).await {
                    Ok(()) => Delivered::Done,
                    Err(_) => Delivered::Retry(Duration::from_secs(1)),
                }
            }
            Destination::Email {
                mailbox,
                to,
                subject,
                message_id,
                references,
            } => match &self.inner.email {
                Some(email) => {
                    let target = EmailTarget {
                        mailbox,
                        to,
                        subject,
                        message_id,
                        references,
                    };
                    email.deliver(entry, target).await
                }
                None => Delivered::Dead("email replies are not configured".into()),
            },
        }
    }
}

/// One task per conversation with entries in flight.
struct Router {
    egress: Egress,
    shard: u16,
    shutdown: CancellationToken,
    lanes: HashMap<ConversationId, mpsc::UnboundedSender<OutboxEntry>>,
    tasks: TaskTracker,
}

impl Router {
    fn new(egress: Egress, shard: u16, shutdown: CancellationToken) -> Self {
        Self {
            egress,
            shard,
            shutdown,
            lanes: HashMap::new(),
            tasks: TaskTracker::new(),
        }
    }

    fn dispatch(&mut self, entry: OutboxEntry) {
        let cid = entry.conversation.clone();
        let entry = match self.lanes.get(&cid) {
            Some(lane) => match lane.send(entry) {
                Ok(()) => return,
                Err(mpsc::error::SendError(entry)) => entry,
            },
            None => entry,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        // A fresh lane: its receiver is alive, so this send cannot fail.
        let _ = tx.send(entry);
        self.lanes.insert(cid, tx);
        self.lanes.retain(|_, lane| !lane.is_closed());
        self.tasks.spawn(lane(
            self.egress.clone(),
            self.shard,
            rx,
            self.shutdown.clone(),
        ));
    }

    async fn close(self) {
        drop(self.lanes);
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Deliver one conversation's entries in order.
async fn lane(
    egress: Egress,
    shard: u16,
    mut rx: mpsc::UnboundedReceiver<OutboxEntry>,
    shutdown: CancellationToken,
) {
    let queue = egress.inner.queue.clone();
    loop {
        let first = match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return,
            Err(_) => {
                // Idle: close, but deliver what slipped in meanwhile.
                rx.close();
                match rx.recv().await {
                    Some(entry) => entry,
                    None => return,
                }
            }
        };
        let mut batch = vec![first];
        while let Ok(entry) = rx.try_recv() {
            batch.push(entry);
        }
        // The destination is read once per batch (a new message may change
        // it between batches), and the batch acknowledged in one round trip.
        let mut destination = None;
        let mut done = Vec::with_capacity(batch.len());
        let mut stopping = false;
        // The last entry's reply state is written with the acknowledgement
        // (one round trip); earlier entries' states are written at once, as
        // a later entry of the batch may read them.
        let mut deferred = Vec::new();
        for (i, entry) in batch.iter().enumerate() {
            let superseded = entry.kind == OutboxKind::Progress
                && batch[i + 1..]
                    .iter()
                    .any(|later| later.reply_id == entry.reply_id);
            let last = (i + 1 == batch.len()).then_some(&mut deferred);
            if !superseded
                && !egress
                    .handle(entry, &mut destination, &shutdown, last)
                    .await
            {
                // Stopping: the rest stay pending for the next leader.
                stopping = true;
                break;
            }
            done.push(entry.id.clone());
        }
        if let Err(e) = queue.ack_outbox_after(shard, &done, &deferred).await {
            tracing::warn!(error = %e, "could not acknowledge outbox entries; they may be delivered again (idempotent)");
        }
        if stopping {
            return;
        }
    }
}
