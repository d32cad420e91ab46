//! `switchboard worker`: one pool container. Keeps `slots_per_container`
//! agent processes warm, claims conversations from the queue, runs their
//! turns (`turn.rs`) and keeps the pool's promises: new conversations get a
//! pre-started slot, follow-ups go back to the process that holds them,
//! idle or worn-out slots are replaced, and nothing is lost on shutdown.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::{
    AgentLauncher, AgentProcess, AgentSettings, SessionStart, SlotDirs, StartError,
};
use crate::queue::{Claim, ClaimOutcome, Queue, QueueError, WorkerId};

use super::PoolSettings;
use super::settings::MAX_SLOTS;
use super::slots::{Assignment, SlotMeta, SlotState, assign};

/// Why the worker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot prepare slot directories under {path}: {source}")]
    SlotsDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent: {0}")]
    Agent(#[from] StartError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
}

/// What a worker needs of the config.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub pool: PoolSettings,
    pub agent: AgentSettings,
    /// Progress is published at most this often per reply.
    pub update_interval: Duration,
    /// Longest wait for new work before looking again.
    pub blocking_read: Duration,
    /// A batch whose first message waited longer is not run (admission's
    /// `max_wait`); `None`: no limit.
    pub max_wait: Option<Duration>,
    /// Touched on every successful heartbeat, for `switchboard worker-alive`
    /// (a container health check or Kubernetes probe).
    pub alive_file: Option<PathBuf>,
    /// How often idle timeouts, failed starts and the pool's shape are
    /// checked. Fresh slots are topped up at once when one is taken, not
    /// only then.
    pub maintenance_interval: Duration,
}

/// A slot's process, owned by whichever task has the slot Busy/Starting.
pub(super) type ProcessCell = tokio::sync::Mutex<Option<Box<dyn AgentProcess>>>;

/// Everything the worker's tasks share.
pub(super) struct Shared {
    pub id: WorkerId,
    pub queue: Queue,
    pub launcher: Arc<dyn AgentLauncher>,
    pub settings: WorkerSettings,
    pub slots_base: PathBuf,
    /// One row per slot ever started; rows are never removed (a slot past
    /// the pool's size is Retired), so indexes stay valid.
    pub table: Mutex<Vec<SlotMeta>>,
    /// `MAX_SLOTS` cells: room to grow without reallocating.
    pub processes: Vec<ProcessCell>,
    /// How many slots the worker should run now (the pool's published shape,
    /// else `pool.slots_per_container`).
    pub target_slots: AtomicU32,
    /// Signalled whenever a slot may have become available.
    pub changed: Notify,
    /// Signalled (one permit) when the pool may be short of fresh slots, so
    /// maintenance tops them up without waiting for its next round.
    pub replenish: Notify,
    /// Cancelled when running turns must stop (after the drain deadline).
    pub abort_turns: CancellationToken,
}

/// One pool container.
pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    pub fn new(
        id: WorkerId,
        queue: Queue,
        launcher: Arc<dyn AgentLauncher>,
        settings: WorkerSettings,
    ) -> Result<Self, WorkerError> {
        let base = std::path::absolute(&settings.agent.slots_dir)
            .map(|p| p.join(id.as_str()))
            .map_err(|source| WorkerError::SlotsDir {
                path: settings.agent.slots_dir.clone(),
                source,
            })?;
        std::fs::create_dir_all(&base).map_err(|source| WorkerError::SlotsDir {
            path: base.clone(),
            source,
        })?;
        let n = settings.pool.slots_per_container;
        Ok(Self {
            shared: Arc::new(Shared {
                id,
                queue,
                launcher,
                table: Mutex::new((0..n).map(SlotMeta::new).collect()),
                processes: (0..MAX_SLOTS.max(n))
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                target_slots: AtomicU32::new(n),
                settings,
                slots_base: base,
                changed: Notify::new(),
                replenish: Notify::new(),
                abort_turns: CancellationToken::new(),
            }),
        })
    }

    pub fn id(&self) -> &WorkerId {
        &self.shared.id
    }

    /// Run until `shutdown`, then drain: stop claiming, let running turns
    /// finish within `pool.drain_timeout`, interrupt the rest, stop every
    /// agent process, and hand this worker's conversations back.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let shared = self.shared;
        shared.queue.heartbeat(&shared.id).await?;
        let initial = lock(&shared.table).len() as u32;
        tracing::info!(worker = %shared.id, slots = initial, "worker starting its slots");
        let background = TaskTracker::new();
        let stop_background = CancellationToken::new();
        background.spawn(heartbeat(shared.clone(), stop_background.clone()));
        // Every slot is started before the worker claims anything.
        let starts: Vec<_> = (0..initial)
            .map(|i| tokio::spawn(restart_slot(shared.clone(), i, SessionStart::New)))
            .collect();
        for start in starts {
            // A panicked start task leaves its slot Starting; maintenance
            // does not retry it, which a test would show.
            let _ = start.await;
        }
        background.spawn(maintain(shared.clone(), stop_background.clone()));
        let turns = TaskTracker::new();
        claim_loop(&shared, &turns, &shutdown).await;
        drain(&shared, &turns).await;
        stop_background.cancel();
        background.close();
        background.wait().await;
        for cell in &shared.processes {
            if let Some(mut process) = cell.lock().await.take() {
                process.terminate().await;
            }
        }
        // Bounded: when Redis is going away too (a stopping `serve`), the
        // heartbeat lapsing does the same job.
        match tokio::time::timeout(Duration::from_secs(2), shared.queue.deregister(&shared.id))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not deregister; the heartbeat will lapse instead")
            }
            Err(_) => tracing::warn!("deregistering timed out; the heartbeat will lapse instead"),
        }
        tracing::info!(worker = %shared.id, "worker stopped");
        Ok(())
    }
}

async fn claim_loop(shared: &Arc<Shared>, turns: &TaskTracker, shutdown: &CancellationToken) {
    // Whether the last claim said more was ready: this claim then holds no
    // wake-up, and takes the one queued with what it pops.
    let mut more_ready = false;
    // A claim made as a wait ended (`wait_then_claim`).
    let mut waited: Option<Result<ClaimOutcome, QueueError>> = None;
    loop {
        if shutdown.is_cancelled() {
            if let Some(Ok(ClaimOutcome::Claimed(claim))) = waited {
                hand_back(shared, &claim, "worker shutting down").await;
            }
            return;
        }
        let claimed = match waited.take() {
            Some(claimed) => claimed,
            None => {
                // Created before the check, so a slot freed in between wakes us.
                let changed = shared.changed.notified();
                if !slot_available(shared) {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = changed => continue,
                        // A safety net only: every slot change notifies.
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    }
                }
                if std::mem::take(&mut more_ready) {
                    shared.queue.claim_more(&shared.id, 0).await
                } else {
                    shared.queue.claim(&shared.id, 0).await
                }
            }
        };
        match claimed {
            Ok(ClaimOutcome::Claimed(claim)) if waited_too_long(shared, &claim) => {
                more_ready = claim.more_ready;
                let busy = "I was too busy to get to this in time; please try again later.";
                if let Err(e) = shared
                    .queue
                    .refuse_batch(&claim.lease, "waited too long for a slot", busy)
                    .await
                {
                    tracing::warn!(error = %e, "could not set aside a batch that waited too long");
                }
            }
            Ok(ClaimOutcome::Claimed(claim)) => {
                more_ready = claim.more_ready;
                start_turn(shared, turns, shutdown, claim).await;
                if !more_ready {
                    waited = wait_then_claim(shared, shutdown).await;
                }
            }
            Ok(ClaimOutcome::DeadLettered { conversation }) => {
                tracing::warn!(%conversation, "batch out of attempts: dead-lettered");
            }
            Ok(ClaimOutcome::Empty) => waited = wait_then_claim(shared, shutdown).await,
            Err(e) => {
                tracing::warn!(error = %e, "claim failed");
                backoff(shutdown).await;
            }
        }
    }
}

/// Put a claimed conversation on a slot and start its turn, or hand it back.
async fn start_turn(
    shared: &Arc<Shared>,
    turns: &TaskTracker,
    shutdown: &CancellationToken,
    claim: Box<Claim>,
) {
    match assign_slot(shared, &claim, shutdown).await {
        Some(assignment) => {
            if !matches!(assignment, Assignment::Warm { .. }) {
                // A fresh slot was taken (or an idle one evicted):
                // start its replacement now, so the next new
                // conversation finds one ready.
                shared.replenish.notify_one();
            }
            metrics::counter!("switchboard_pool_claims_total", "slot" => assignment.label())
                .increment(1);
            // Boxed: the turn's future is about 16 kB, and a task would
            // otherwise copy it whole as it is spawned and as it ends.
            turns.spawn(Box::pin(super::turn::run(
                shared.clone(),
                *claim,
                assignment,
            )));
        }
        None => {
            // No slot came back in time (or we are stopping): hand
            // the conversation back rather than hold it.
            tracing::warn!("claimed but no slot became available; handing it back");
            hand_back(shared, &claim, "no slot available").await;
        }
    }
}

fn slot_available(shared: &Shared) -> bool {
    lock(&shared.table).iter().any(SlotMeta::available)
}

/// Wait for work, and claim it in the same round trip when a slot is free
/// and the queue has one shard ([`crate::queue::Queue::wait_and_claim`]):
/// the claim's outcome, for the loop to act on. Otherwise (or stopping)
/// only wait, and the loop claims when it has a slot.
async fn wait_then_claim(
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<Result<ClaimOutcome, QueueError>> {
    if shared.queue.keys().shards() != 1 || !slot_available(shared) || shutdown.is_cancelled() {
        wait_for_work(shared, shutdown).await;
        return None;
    }
    let wait = shared
        .queue
        .wait_and_claim(&shared.id, 0, shared.settings.blocking_read);
    tokio::pin!(wait);
    tokio::select! {
        claimed = &mut wait => return Some(claimed),
        _ = shutdown.cancelled() => {}
    }
    // Stopping. Dropping the wait could leave a claim made as it ended
    // leased to no one until the lease expired: wake it instead, and let
    // the loop hand back whatever it claimed (at worst `blocking_read`
    // later, if the wake-up cannot be sent).
    if let Err(e) = shared.queue.wake_worker(&shared.id).await {
        tracing::debug!(error = %e, "could not end the wait for work early");
    }
    Some(wait.await)
}

/// Give a claimed batch back for another worker (or a later claim).
async fn hand_back(shared: &Shared, claim: &crate::queue::Claim, reason: &str) {
    if let Err(e) = shared.queue.fail(&claim.lease, reason, true).await {
        tracing::warn!(error = %e, "could not hand a claim back; its lease will expire");
    }
}

/// Block until a wake-up (or `blocking_read` passes, or we are stopping).
async fn wait_for_work(shared: &Shared, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        result = shared.queue.wait_for_work(&shared.id, shared.settings.blocking_read) => {
            if let Err(e) = result {
                tracing::warn!(error = %e, "waiting for work failed");
                backoff(shutdown).await;
            }
        }
    }
}

/// Whether the batch's first message waited past `max_wait`.
fn waited_too_long(shared: &Shared, claim: &crate::queue::Claim) -> bool {
    let (Some(max_wait), Some(first)) = (shared.settings.max_wait, claim.messages.first()) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let received = first.message.received_at_ms;
    received > 0 && now.saturating_sub(received) > max_wait.as_millis() as u64
}

/// Pick a slot for a claimed conversation. A slot free when the claim began
/// may have been taken meanwhile (maintenance restarts an idle bound slot
/// to keep `min_fresh` fresh); then wait briefly for one to come back
/// instead of handing the claim back, which would use up an attempt.
async fn assign_slot(
    shared: &Arc<Shared>,
    claim: &Claim,
    shutdown: &CancellationToken,
) -> Option<Assignment> {
    let deadline = Instant::now() + shared.queue.settings().lease_ttl / 3;
    loop {
        // Created before the check, so a change in between is not missed.
        let changed = shared.changed.notified();
        let assignment = assign(
            &mut lock(&shared.table),
            &shared.id,
            &claim.lease.conversation,
            claim.owner.as_ref(),
            claim.session_id.is_some(),
        );
        if assignment.is_some() || Instant::now() >= deadline {
            return assignment;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = changed => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

async fn backoff(shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
}

async fn drain(shared: &Arc<Shared>, turns: &TaskTracker) {
    turns.close();
    let deadline = shared.settings.pool.drain_timeout;
    if tokio::time::timeout(deadline, turns.wait()).await.is_err() {
        tracing::warn!(
            ?deadline,
            "turns still running after the drain deadline; interrupting them"
        );
        shared.abort_turns.cancel();
        let grace = shared.settings.agent.interrupt_grace + shared.settings.agent.terminate_timeout;
        if tokio::time::timeout(grace, turns.wait()).await.is_err() {
            tracing::error!("turns did not stop after interrupting; their leases will expire");
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic while holding it; the table is still
    // plain data, so keep going with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The directories of slot `index`.
pub(super) fn slot_dirs(shared: &Shared, index: u32) -> Result<SlotDirs, StartError> {
    SlotDirs::new(&shared.slots_base, &format!("slot-{index}"))
}

/// Replace slot `index`'s process with a new one on `session`. Marks the
/// slot Fresh (or Failed) when done, unless the caller keeps it (returns the
/// result for the caller to set the state).
pub(super) async fn restart_slot(shared: Arc<Shared>, index: u32, session: SessionStart) -> bool {
    let ok = replace_process(&shared, index, session).await.is_ok();
    {
        let mut table = lock(&shared.table);
        let slot = &mut table[index as usize];
        slot.state = if ok {
            SlotState::Fresh
        } else {
            SlotState::Failed
        };
        slot.conversation = None;
    }
    shared.changed.notify_waiters();
    ok
}

/// Stop slot `index`'s current process (if any) and start a new one.
pub(super) async fn replace_process(
    shared: &Shared,
    index: u32,
    session: SessionStart,
) -> Result<(), StartError> {
    {
        let mut table = lock(&shared.table);
        let slot = &mut table[index as usize];
        if slot.state != SlotState::Busy {
            slot.state = SlotState::Starting;
        }
        slot.pid = None;
    }
    let mut cell = shared.processes[index as usize].lock().await;
    if let Some(mut old) = cell.take() {
        old.terminate().await;
    }
    let dirs = slot_dirs(shared, index)?;
    let started = Instant::now();
    let result = shared.launcher.start(&dirs, session).await;
    let mut table = lock(&shared.table);
    let slot = &mut table[index as usize];
    slot.generation += 1;
    slot.turns = 0;
    match result {
        Ok(process) => {
            slot.pid = process.pid();
            slot.started_at = Some(SystemTime::now());
            slot.started = Some(Instant::now());
            metrics::histogram!("switchboard_pool_slot_start_seconds")
                .record(started.elapsed().as_secs_f64());
            tracing::info!(slot = index, pid = ?slot.pid, generation = slot.generation, elapsed = ?started.elapsed(), "slot ready");
            *cell = Some(process);
            Ok(())
        }
        Err(e) => {
            metrics::counter!("switchboard_pool_slot_start_failures_total").increment(1);
            tracing::error!(slot = index, error = %e, "slot failed to start");
            Err(e)
        }
    }
}

/// Heartbeat and pool status, every third of the heartbeat TTL.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.queue.settings().heartbeat_ttl / 3;
    loop {
        let beat = shared.queue.heartbeat(&shared.id).await;
        match &beat {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(worker = %shared.id, "heartbeat had lapsed; registered again")
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        if let (Ok(_), Some(path)) = (&beat, &shared.settings.alive_file)
            && let Err(e) = tokio::fs::write(path, shared.id.as_str()).await
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot touch the liveness file");
        }
        let status = super::status::worker_status(&shared);
        if let Err(e) = shared.queue.publish_status(&shared.id, &status).await {
            tracing::debug!(error = %e, "pool status not published");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Resizing, idle timeouts, keeping `min_fresh` fresh slots, retrying
/// failed starts.
async fn maintain(shared: Arc<Shared>, stop: CancellationToken) {
    let mut failed_since: Vec<Option<Instant>> = vec![None; shared.processes.len()];
    let mut tick: u64 = 0;
    let mut every = tokio::time::interval(shared.settings.maintenance_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the slots were only just started.
    every.tick().await;
    loop {
        let round = tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => true,
            _ = shared.replenish.notified() => false,
        };
        if round {
            tick += 1;
            if tick % 2 == 1 {
                follow_shape(&shared).await;
            }
            let (start, retire) = resize(&shared);
            for index in start {
                tokio::spawn(restart_slot(shared.clone(), index, SessionStart::New));
            }
            for index in retire {
                tokio::spawn(retire_slot(shared.clone(), index));
            }
        }
        for index in pick_maintenance(&shared, &mut failed_since) {
            super::turn::evict(&shared, index).await;
            tokio::spawn(restart_slot(shared.clone(), index, SessionStart::New));
        }
    }
}

/// Take the slot count from the pool's published shape (the manager's
/// current config), else keep this worker's own.
async fn follow_shape(shared: &Shared) {
    let wanted = match shared.queue.pool_shape().await {
        Ok(Some(shape)) => shape.slots_per_container,
        Ok(None) => shared.settings.pool.slots_per_container,
        Err(e) => {
            tracing::debug!(error = %e, "pool shape not read");
            return;
        }
    };
    if wanted == 0 || wanted > MAX_SLOTS {
        tracing::warn!(
            wanted,
            "ignoring a published pool shape with an invalid slot count"
        );
        return;
    }
    let before = shared.target_slots.swap(wanted, Ordering::Relaxed);
    if before != wanted {
        tracing::info!(worker = %shared.id, from = before, to = wanted, "resizing: slots per container");
    }
}

/// Bring the table to `target_slots`: slots below it that were retired
/// start again (ready before they take work); slots at or above it stop
/// taking work and, once idle, are retired. Returns (to start, to retire),
/// already marked Starting / Stopping.
fn resize(shared: &Shared) -> (Vec<u32>, Vec<u32>) {
    let target = shared.target_slots.load(Ordering::Relaxed);
    let mut table = lock(&shared.table);
    let (mut start, mut retire) = (Vec::new(), Vec::new());
    for slot in table.iter_mut() {
        if slot.index < target {
            slot.retiring = false;
            if slot.state == SlotState::Retired {
                slot.state = SlotState::Starting;
                start.push(slot.index);
            }
        } else {
            slot.retiring = true;
            if matches!(
                slot.state,
                SlotState::Fresh | SlotState::Bound | SlotState::Failed
            ) {
                slot.state = SlotState::Stopping;
                retire.push(slot.index);
            }
        }
    }
    for index in table.len() as u32..target {
        table.push(SlotMeta::new(index));
        start.push(index);
    }
    (start, retire)
}

/// Stop a slot the pool no longer has room for: hand its conversation back
/// (it resumes from its stored session wherever it is claimed next), stop
/// its process, and mark it Retired.
async fn retire_slot(shared: Arc<Shared>, index: u32) {
    super::turn::evict(&shared, index).await;
    if let Some(mut process) = shared.processes[index as usize].lock().await.take() {
        process.terminate().await;
    }
    {
        let mut table = lock(&shared.table);
        let slot = &mut table[index as usize];
        slot.state = SlotState::Retired;
        slot.conversation = None;
        slot.pid = None;
        slot.rss_bytes = None;
        slot.started = None;
        slot.started_at = None;
    }
    tracing::info!(worker = %shared.id, slot = index, "slot retired (pool shrank)");
    shared.changed.notify_waiters();
}

/// Which slots maintenance restarts now (marked Starting).
fn pick_maintenance(shared: &Shared, failed_since: &mut [Option<Instant>]) -> Vec<u32> {
    let pool = &shared.settings.pool;
    let mut table = lock(&shared.table);
    let mut picked = Vec::new();
    for slot in table.iter().filter(|s| !s.retiring) {
        let i = slot.index as usize;
        match slot.state {
            SlotState::Failed => {
                let since = *failed_since[i].get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(5) {
                    failed_since[i] = None;
                    picked.push(slot.index);
                }
            }
            SlotState::Bound if slot.last_used.elapsed() >= pool.idle_timeout => {
                picked.push(slot.index)
            }
            _ => failed_since[i] = None,
        }
    }
    let fresh = fresh_or_starting(&table) + picked.len() as u32;
    if fresh < pool.min_fresh {
        let mut bound: Vec<&SlotMeta> = table
            .iter()
            .filter(|s| s.state == SlotState::Bound && !s.retiring && !picked.contains(&s.index))
            .collect();
        bound.sort_by_key(|s| s.last_used);
        picked.extend(
            bound
                .iter()
                .take((pool.min_fresh - fresh) as usize)
                .map(|s| s.index),
        );
    }
    for &index in &picked {
        table[index as usize].state = SlotState::Starting;
    }
    picked
}

/// Slots that are fresh or on their way to it (not being retired).
pub(super) fn fresh_or_starting(table: &[SlotMeta]) -> u32 {
    table
        .iter()
        .filter(|s| !s.retiring && matches!(s.state, SlotState::Fresh | SlotState::Starting))
        .count() as u32
}
