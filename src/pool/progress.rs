//! Coalescing text deltas into progress updates: the full text so far, at
//! most once per interval per reply, with an increasing sequence number.
//! Not once per token: Slack allows about one update per second per message.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::agent::TurnEvent;
use crate::queue::{Lease, Queue, QueueError};

/// How long after a turn's first text its first progress goes out. A
/// reply done sooner is posted once, whole, rather than posted and then
/// updated at once: one Slack call instead of two (chat.update has the
/// tighter limit), and no progress write in Redis. A reader waiting on a
/// model does not see the difference.
pub const FIRST_UPDATE_DELAY: Duration = Duration::from_millis(250);

/// Publishes a turn's progress; returns the last sequence number used.
pub async fn publish_progress(
    queue: Queue,
    lease: Lease,
    mut events: mpsc::Receiver<TurnEvent>,
    interval: Duration,
) -> u64 {
    let mut text = String::new();
    let mut seq = 0u64;
    let mut last_sent: Option<Instant> = None;
    let mut first_text: Option<Instant> = None;
    let mut dirty = false;
    // One timer for the turn, moved only when the due time changes: a
    // turn's deltas (dozens) do not each add and remove a timer.
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        let due = match (dirty, last_sent, first_text) {
            (true, Some(at), _) => Some(at + interval),
            (true, None, Some(first)) => Some(first + FIRST_UPDATE_DELAY),
            _ => None,
        };
        let event = match due {
            Some(due) => {
                if armed != Some(due) {
                    timer.as_mut().reset(due);
                    armed = Some(due);
                }
                tokio::select! {
                    event = events.recv() => event,
                    () = &mut timer => {
                        armed = None;
                        seq += 1;
                        match queue.progress(&lease, 0, seq, &text).await {
                            Ok(()) => {}
                            // The keeper notices the lost lease and stops the turn.
                            Err(QueueError::Fenced(_)) => {}
                            Err(e) => tracing::warn!(error = %e, "progress not published"),
                        }
                        last_sent = Some(Instant::now());
                        dirty = false;
                        continue;
                    }
                }
            }
            None => events.recv().await,
        };
        match event {
            Some(TurnEvent::Delta(delta)) => {
                text.push_str(&delta);
                first_text.get_or_insert_with(Instant::now);
                dirty = true;
            }
            Some(TurnEvent::Result(_)) => {}
            // The turn is over; the final text supersedes any progress.
            None => return seq,
        }
    }
}
