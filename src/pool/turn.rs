//! One claimed batch on one slot: make sure the slot's process holds the
//! conversation (warm, fresh, or resumed from the stored session), run the
//! turn under a kept lease, publish progress, then commit or fail.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::agent::{AgentProcess, SessionStart, TurnError, TurnResult, transcript};
use crate::domain::ConversationId;
use crate::queue::{
    Charge, Claim, Commit, LeaseKeeper, Owner, QueueError, QueuedMessage, SessionSave,
};

use super::slots::{Assignment, SlotState};
use super::worker::{Shared, fresh_or_starting, lock, replace_process, restart_slot, slot_dirs};

/// Sequence number of a final reply: above any progress sequence.
const FINAL_SEQ: u64 = u64::MAX / 2;

/// Run `claim` on the slot `assignment` chose (already marked Busy).
pub(super) async fn run(shared: Arc<Shared>, claim: Claim, assignment: Assignment) {
    let span = tracing::info_span!(
        "turn",
        conversation = %claim.lease.conversation,
        slot = assignment.slot(),
        attempt = claim.attempt,
        path = assignment.label()
    );
    run_claim(shared, claim, assignment).instrument(span).await
}

/// Benchmark hook: when a batch was claimed or committed, with its
/// messages' source ids. Debug level on its own target, so it costs one
/// level check unless `log.level` enables `switchboard::timing=debug`.
fn timing(claim: &Claim, what: &'static str) {
    tracing::debug!(
        target: "switchboard::timing",
        ids = %claim.messages.iter().map(|m| m.message.external_id.as_str()).collect::<Vec<_>>().join(","),
        "{what}"
    );
}

async fn run_claim(shared: Arc<Shared>, claim: Claim, assignment: Assignment) {
    timing(&claim, "claimed");
    let slot = assignment.slot();
    let ready = prepare(&shared, &claim, &assignment).await;
    if let Err(reason) = ready {
        fail(&shared, &claim, &reason, true).await;
        finish(&shared, slot, Finished::Restart).await;
        return;
    }
    let finished = run_turn(&shared, &claim, slot).await;
    finish(&shared, slot, finished).await;
}

/// Get the slot's process ready for this conversation.
async fn prepare(
    shared: &Arc<Shared>,
    claim: &Claim,
    assignment: &Assignment,
) -> Result<(), String> {
    let slot = assignment.slot();
    let usable = {
        let cell = shared.processes[slot as usize].lock().await;
        cell.as_ref().is_some_and(|p| p.is_usable())
    };
    match assignment {
        Assignment::Warm { .. } | Assignment::Fresh { .. } if usable => return Ok(()),
        Assignment::Restart {
            evicted: Some((cid, owner)),
            ..
        } => disown(shared, cid, owner).await,
        _ => {}
    }
    let session = restore_session(shared, claim, slot).await;
    match replace_process(shared, slot, session.clone()).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_missing_session() => {
            tracing::warn!(error = %e, "stored session could not be resumed; starting a new one");
            replace_process(shared, slot, SessionStart::New)
                .await
                .map_err(|e| format!("agent failed to start: {e}"))
        }
        Err(e) => Err(format!("agent failed to start: {e}")),
    }
}

/// Write the conversation's stored transcript into the slot, so the new
/// process can `--resume` it. Without one, the session starts anew.
async fn restore_session(shared: &Shared, claim: &Claim, slot: u32) -> SessionStart {
    let Some(session_id) = &claim.session_id else {
        return SessionStart::New;
    };
    let transcript = match shared.queue.load_session(&claim.lease.conversation).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            tracing::warn!("no stored transcript for the session; starting a new one");
            return SessionStart::New;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not load the stored session; starting a new one");
            return SessionStart::New;
        }
    };
    let written = match slot_dirs(shared, slot) {
        Ok(dirs) => transcript::write(&dirs, session_id, &transcript)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match written {
        Ok(()) => {
            lock(&shared.table)[slot as usize].stored =
                Some(transcript::Stored::of(session_id, &transcript));
            SessionStart::Resume(session_id.clone())
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not restore the transcript; starting a new one");
            SessionStart::New
        }
    }
}

/// How a turn left its slot.
enum Finished {
    /// The process holds the conversation (affinity for the next turn).
    Bound,
    /// The process must be replaced by a fresh one.
    Restart,
}

async fn run_turn(shared: &Arc<Shared>, claim: &Claim, slot: u32) -> Finished {
    let keeper = LeaseKeeper::start(shared.queue.clone(), claim.lease.clone());
    let mut cell = shared.processes[slot as usize].lock().await;
    let Some(process) = cell.as_mut() else {
        drop(cell);
        keeper.stop().await;
        fail(shared, claim, "slot has no process", true).await;
        return Finished::Restart;
    };
    let (tx, rx) = mpsc::channel(256);
    let progress = tokio::spawn(super::progress::publish_progress(
        shared.queue.clone(),
        claim.lease.clone(),
        rx,
        shared.settings.update_interval,
    ));
    // Stop the turn when the lease is lost or the drain deadline passes.
    let interrupter = process.interrupter();
    let (lost, abort) = (keeper.lost().clone(), shared.abort_turns.clone());
    let watchdog = tokio::spawn(async move {
        tokio::select! {
            _ = lost.cancelled() => {}
            _ = abort.cancelled() => {}
        }
        interrupter.interrupt();
    });
    let text = format_batch(&claim.messages);
    let started = Instant::now();
    let outcome = process.run_turn(&text, &tx).await;
    watchdog.abort();
    drop(tx);
    // A join error means the publisher panicked; the final text still goes out.
    let _ = progress.await;
    metrics::histogram!("switchboard_pool_turn_seconds").record(started.elapsed().as_secs_f64());
    let lease_lost = keeper.lost().is_cancelled();
    keeper.stop().await;
    if lease_lost {
        tracing::warn!("lease lost during the turn; not committing");
        return Finished::Restart;
    }
    if shared.abort_turns.is_cancelled() {
        // Shutting down: the conversation runs elsewhere, resumed.
        fail(shared, claim, "worker shutting down", true).await;
        return Finished::Restart;
    }
    match outcome {
        Ok(result) if !result.is_error => {
            commit(shared, claim, slot, process.as_mut(), result).await
        }
        Ok(result) => {
            let reason = format!(
                "agent reported an error ({}): {}",
                result.subtype,
                truncate(&result.text, 200)
            );
            fail(shared, claim, &reason, true).await;
            if process.is_usable() {
                Finished::Bound
            } else {
                Finished::Restart
            }
        }
        Err(e) => {
            fail(shared, claim, &e.to_string(), e.is_retryable()).await;
            if e.process_dead()
                || !process.is_usable()
                || matches!(e, TurnError::Interrupted { .. })
            {
                Finished::Restart
            } else {
                Finished::Bound
            }
        }
    }
}

async fn commit(
    shared: &Arc<Shared>,
    claim: &Claim,
    slot: u32,
    process: &mut dyn AgentProcess,
    result: TurnResult,
) -> Finished {
    let session_id = result
        .session_id
        .clone()
        .or_else(|| process.session_id().map(String::from));
    let stored = lock(&shared.table)[slot as usize].stored.clone();
    let session = match &session_id {
        Some(id) => read_transcript(shared, slot, id, stored.as_ref()).await,
        None => None,
    };
    let recycle = needs_recycle(shared, slot, process);
    let generation = lock(&shared.table)[slot as usize].generation;
    let owner = (!recycle && process.is_usable()).then(|| Owner {
        worker: shared.id.clone(),
        slot,
        generation,
    });
    let keep = owner.is_some();
    let (save, mut now_stored) = session.unzip();
    let mut commit = Commit {
        parts: vec![result.text],
        owner,
        cost_usd: result.cost_usd,
        final_seq: FINAL_SEQ,
        session: save,
        charge: charge(claim, result.cost_usd),
    };
    let mut committed = shared.queue.commit(&claim.lease, &commit).await;
    if let (Err(QueueError::SessionMismatch(_)), Some(id)) = (&committed, &session_id) {
        // The stored transcript is not what this slot last stored (it
        // moved on elsewhere, or expired): store it whole.
        tracing::info!("stored session differs from this slot's; storing the transcript whole");
        (commit.session, now_stored) = read_transcript(shared, slot, id, None).await.unzip();
        // Charged by the first try already.
        commit.charge = None;
        committed = shared.queue.commit(&claim.lease, &commit).await;
    }
    match committed {
        Ok(()) => {
            if now_stored.is_some() {
                lock(&shared.table)[slot as usize].stored = now_stored;
            }
            timing(claim, "committed");
            metrics::counter!("switchboard_pool_turns_total", "outcome" => "committed")
                .increment(1);
            lock(&shared.table)[slot as usize].turns += 1;
        }
        Err(QueueError::Fenced(_)) => {
            tracing::warn!(
                "lease lost before commit; the reply is dropped, another worker answers"
            );
            return Finished::Restart;
        }
        Err(e) => {
            // Not committed: the lease expires and the batch runs again
            // (its reply id is the same, so egress does not post twice).
            tracing::error!(error = %e, "commit failed");
            return Finished::Restart;
        }
    }
    if keep {
        Finished::Bound
    } else {
        Finished::Restart
    }
}

/// The turn's cost for its sender, channel and workspace.
fn charge(claim: &Claim, cost_usd: f64) -> Option<Charge> {
    let (Some(destination), Some(last)) = (&claim.destination, claim.messages.last()) else {
        return None;
    };
    crate::admission::turn_charge(
        destination,
        &last.message.sender,
        cost_usd,
        std::time::SystemTime::now(),
    )
}

/// The session to store with the commit, so any slot can resume it: only
/// what was appended since `stored`, when that is this session's. With
/// what will be stored once it is.
async fn read_transcript(
    shared: &Shared,
    slot: u32,
    id: &str,
    stored: Option<&transcript::Stored>,
) -> Option<(SessionSave, transcript::Stored)> {
    let part = match slot_dirs(shared, slot) {
        Ok(dirs) => transcript::read_new(&dirs, id, stored)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match part {
        Ok(part) => Some((
            SessionSave {
                id: id.to_string(),
                transcript: part.bytes,
                offset: part.offset,
            },
            part.stored,
        )),
        // The command driver keeps no transcript; nothing to save.
        Err(e) => {
            tracing::debug!(error = %e, "no transcript to save");
            None
        }
    }
}

/// Worn out: too many turns or too much memory.
fn needs_recycle(shared: &Shared, slot: u32, process: &dyn AgentProcess) -> bool {
    let agent = &shared.settings.agent;
    let rss = process.resident_memory_bytes();
    let mut table = lock(&shared.table);
    let meta = &mut table[slot as usize];
    meta.rss_bytes = rss;
    let turns = meta.turns + 1;
    let over_memory = rss.is_some_and(|r| r > agent.max_rss_mib * 1024 * 1024);
    if turns >= agent.max_turns_per_process || over_memory {
        tracing::info!(slot, turns, rss, "recycling the slot's process");
        metrics::counter!("switchboard_pool_recycles_total").increment(1);
        return true;
    }
    false
}

async fn finish(shared: &Arc<Shared>, slot: u32, finished: Finished) {
    match finished {
        Finished::Bound => {
            let short = {
                let mut table = lock(&shared.table);
                let meta = &mut table[slot as usize];
                meta.state = SlotState::Bound;
                meta.last_used = Instant::now();
                fresh_or_starting(&table) < shared.settings.pool.min_fresh
            };
            shared.changed.notify_waiters();
            if short {
                // Fresh slots were taken while every other slot was busy:
                // this one can now be evicted to make a fresh one.
                shared.replenish.notify_one();
            }
        }
        Finished::Restart => {
            restart_slot(shared.clone(), slot, SessionStart::New).await;
        }
    }
}

/// Give up slot `index`'s conversation before its process goes away.
pub(super) async fn evict(shared: &Shared, index: u32) {
    let (cid, generation) = {
        let table = lock(&shared.table);
        let meta = &table[index as usize];
        (meta.conversation.clone(), meta.generation)
    };
    if let Some(cid) = cid {
        let owner = Owner {
            worker: shared.id.clone(),
            slot: index,
            generation,
        };
        disown(shared, &cid, &owner).await;
    }
}

async fn disown(shared: &Shared, cid: &ConversationId, owner: &Owner) {
    match shared.queue.disown(cid, owner).await {
        Ok(_) => metrics::counter!("switchboard_pool_evictions_total").increment(1),
        // The conversation resumes from its session either way; a stale
        // owner only delays it until this worker's claim finds the slot gone.
        Err(e) => {
            tracing::warn!(conversation = %cid, error = %e, "could not clear the owner on eviction")
        }
    }
}

async fn fail(shared: &Shared, claim: &Claim, reason: &str, retryable: bool) {
    metrics::counter!("switchboard_pool_turns_total", "outcome" => "failed").increment(1);
    tracing::warn!(reason, retryable, "turn failed");
    match shared.queue.fail(&claim.lease, reason, retryable).await {
        Ok(outcome) => tracing::info!(?outcome, "failure recorded"),
        Err(e) => tracing::warn!(error = %e, "could not record the failure; the lease will expire"),
    }
}

/// The batch as one user turn: each message with its sender, and files.
pub fn format_batch(messages: &[QueuedMessage]) -> String {
    let mut out = String::new();
    for (i, queued) in messages.iter().enumerate() {
        let m = &queued.message;
        if i > 0 {
            out.push_str("\n\n");
        }
        let who = match &m.sender_name {
            Some(name) => format!("{name} ({})", m.sender),
            None => m.sender.clone(),
        };
        out.push_str(&format!("{who}: {}", m.text));
        for f in &m.files {
            // Email attachments are saved locally: tell the agent where.
            let saved = match &f.url {
                Some(path) if path.starts_with('/') => format!(", saved at {path}"),
                _ => String::new(),
            };
            out.push_str(&format!(
                "\n[attached file: {} ({}, {} bytes){saved}]",
                f.name,
                f.mimetype.as_deref().unwrap_or("unknown type"),
                f.size
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown".into())
            ));
        }
    }
    out
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}
