//! The one path every Slack transport shares once it has a verified event:
//! decide (filter), then dedupe and enqueue in one Redis script, within a
//! deadline. The Events API handler and the Socket Mode client both call it,
//! so both follow the same rules.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::admission::{Admission, Refusal};
use crate::queue::{Admitted, EnqueueMode, Enqueued, Queue};

use super::{
    Candidate, Decision, EventError, IgnoreReason, SlackIngressSettings, decide, decide_value,
};

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeOutcome {
    /// A `url_verification` request: answer with this challenge.
    Challenge(String),
    /// Not for us (a bot, an edit, another app...): nothing queued.
    Ignored(IgnoreReason),
    /// Queued for its conversation.
    Queued,
    /// Seen before (a Slack retry, or the `message` twin of an `app_mention`).
    Duplicate,
    /// The conversation's inbox is full: dead-lettered, the user told once.
    Overflow,
    /// A thread reply in a thread the bot is not part of.
    NotInConversation,
    /// Refused by admission control (the sender may have been told why).
    Refused(Refusal),
}

/// The outcomes' metric labels, in [`IntakeOutcome::index`] order.
const OUTCOME_LABELS: [&str; 7] = [
    "url_verification",
    "ignored",
    "queued",
    "duplicate",
    "overflow",
    "not_in_conversation",
    "refused",
];

impl IntakeOutcome {
    /// A metric label.
    pub fn label(&self) -> &'static str {
        OUTCOME_LABELS[self.index()]
    }

    fn index(&self) -> usize {
        match self {
            IntakeOutcome::Challenge(_) => 0,
            IntakeOutcome::Ignored(_) => 1,
            IntakeOutcome::Queued => 2,
            IntakeOutcome::Duplicate => 3,
            IntakeOutcome::Overflow => 4,
            IntakeOutcome::NotInConversation => 5,
            IntakeOutcome::Refused(_) => 6,
        }
    }
}

/// `switchboard_ingress_slack_events_total` by outcome, registered once:
/// finding a counter by its name and labels costs more, on every event,
/// than counting.
fn outcome_counters() -> Arc<[metrics::Counter; 7]> {
    // The process's recorder first, or these would count nowhere.
    crate::telemetry::metrics_handle();
    Arc::new(OUTCOME_LABELS.map(
        |outcome| metrics::counter!("switchboard_ingress_slack_events_total", "outcome" => outcome),
    ))
}

/// Why an event could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The body is not a Slack event: reject it (4xx); retrying won't help.
    #[error("malformed event: {0}")]
    Malformed(#[from] EventError),
    /// Redis is down or slower than the deadline: Slack should retry (503).
    #[error("could not queue the event in time: {0}")]
    Unavailable(String),
}

/// Filter, dedupe and enqueue Slack events.
#[derive(Clone)]
pub struct SlackIntake {
    queue: Queue,
    settings: Arc<SlackIngressSettings>,
    admission: Option<Admission>,
    /// Whether egress shows the sender their message was seen (a reaction).
    acknowledge: bool,
    outcomes: Arc<[metrics::Counter; 7]>,
}

impl SlackIntake {
    pub fn new(queue: Queue, settings: SlackIngressSettings) -> Self {
        Self {
            queue,
            settings: Arc::new(settings),
            admission: None,
            acknowledge: true,
            outcomes: outcome_counters(),
        }
    }

    /// Whether queued messages get an acknowledgement entry for egress
    /// (false when no acknowledgement reaction is configured).
    pub fn with_acknowledgement(mut self, acknowledge: bool) -> Self {
        self.acknowledge = acknowledge;
        self
    }

    /// Check who may talk, how often and what they may spend first.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = Some(admission);
        self
    }

    pub fn settings(&self) -> &SlackIngressSettings {
        &self.settings
    }

    /// Take an event body (raw bytes, already authenticated). The envelope
    /// is read straight from the bytes, without a JSON tree in between.
    pub async fn accept_body(&self, body: &[u8]) -> Result<IntakeOutcome, IntakeError> {
        self.accept(decide(body, &self.settings, now_ms())?).await
    }

    /// Take an event already parsed as JSON (Socket Mode payloads).
    pub async fn accept_value(
        &self,
        value: serde_json::Value,
    ) -> Result<IntakeOutcome, IntakeError> {
        self.accept(decide_value(value, &self.settings, now_ms())?)
            .await
    }

    async fn accept(&self, decision: Decision) -> Result<IntakeOutcome, IntakeError> {
        let outcome = match decision {
            Decision::UrlVerification { challenge } => IntakeOutcome::Challenge(challenge),
            Decision::Ignore(reason) => {
                metrics::counter!("switchboard_ingress_slack_ignored_total", "reason" => reason.as_str())
                    .increment(1);
                IntakeOutcome::Ignored(reason)
            }
            Decision::Message(candidate) => self.enqueue(*candidate).await?,
        };
        self.outcomes[outcome.index()].increment(1);
        Ok(outcome)
    }

    async fn enqueue(&self, candidate: Candidate) -> Result<IntakeOutcome, IntakeError> {
        let deadline = self.settings.enqueue_deadline;
        // Boxed so that wrapping it in the timeout moves a pointer, not the
        // whole (large) future.
        tokio::time::timeout(deadline, Box::pin(self.admit_and_enqueue(candidate)))
            .await
            .map_err(|_| {
                IntakeError::Unavailable(format!("Redis did not answer within {deadline:?}"))
            })?
    }

    async fn admit_and_enqueue(&self, candidate: Candidate) -> Result<IntakeOutcome, IntakeError> {
        if let Some(admission) = &self.admission
            && let Some(check) = admission.script_check(&candidate)
        {
            // The common case: admission and enqueue in one round trip.
            let admitted = self
                .queue
                .admit_and_enqueue(
                    &candidate.message,
                    &candidate.destination,
                    self.mode(&candidate),
                    self.acknowledge,
                    &check.limits,
                )
                .await
                .map_err(unavailable)?;
            if let Some(refusal) = check.refusal(&admitted) {
                // Boxed, as every rare step here: the futures of admission's
                // steps are several KB each (a pooled connection's), and
                // held inline they would make this one, which is boxed and
                // so copied for every event, as large.
                Box::pin(admission.refuse(&candidate, refusal))
                    .await
                    .map_err(unavailable)?;
                return Ok(IntakeOutcome::Refused(refusal));
            }
            let Admitted::Enqueued(enqueued) = admitted else {
                return Err(IntakeError::Unavailable(format!(
                    "admission answered {admitted:?} without a refusal"
                )));
            };
            return Ok(self.after_enqueue(&candidate, enqueued).await);
        }
        if let Some(admission) = &self.admission
            && let Some(outcome) = Box::pin(self.admit_step_by_step(admission, &candidate)).await?
        {
            return Ok(outcome);
        }
        let enqueued = self
            .queue
            .enqueue_acknowledged(
                &candidate.message,
                &candidate.destination,
                self.mode(&candidate),
                self.acknowledge,
            )
            .await
            .map_err(unavailable)?;
        Ok(self.after_enqueue(&candidate, enqueued).await)
    }

    /// Admission without the one-script path (another shard than the
    /// limits, a bot's message): each check a call of its own. `Some` when
    /// the message goes no further (a duplicate or refused), `None` when it
    /// is to be queued.
    async fn admit_step_by_step(
        &self,
        admission: &Admission,
        candidate: &Candidate,
    ) -> Result<Option<IntakeOutcome>, IntakeError> {
        // A retry of a message already queued is not a new request.
        let (seen, waiting) = self
            .queue
            .seen_and_waiting(&candidate.message)
            .await
            .map_err(unavailable)?;
        if seen {
            return Ok(Some(IntakeOutcome::Duplicate));
        }
        // A thread reply outside a conversation of ours is not for us:
        // say nothing about it, whatever the policy.
        let ours = !candidate.needs_existing_conversation
            || self
                .queue
                .conversation_exists(&candidate.message.conversation)
                .await
                .map_err(unavailable)?;
        if ours
            && let Some(refusal) = admission
                .check(candidate, waiting)
                .await
                .map_err(unavailable)?
        {
            // As the admit script does: a retry of a refused message is
            // a duplicate, so its sender is told once.
            self.queue
                .mark_seen(&candidate.message)
                .await
                .map_err(unavailable)?;
            admission
                .refuse(candidate, refusal)
                .await
                .map_err(unavailable)?;
            return Ok(Some(IntakeOutcome::Refused(refusal)));
        }
        Ok(None)
    }

    fn mode(&self, candidate: &Candidate) -> EnqueueMode {
        if candidate.needs_existing_conversation {
            EnqueueMode::ExistingOnly
        } else {
            EnqueueMode::CreateOrAppend
        }
    }

    /// The outcome of an enqueue; a queued message's sender is told their
    /// place in line when conversations wait before theirs.
    async fn after_enqueue(&self, candidate: &Candidate, enqueued: Enqueued) -> IntakeOutcome {
        match enqueued {
            Enqueued::Queued { ahead, .. } => {
                tracing::info!(
                    conversation = %candidate.message.conversation,
                    kind = candidate.kind.as_str(),
                    "slack message queued"
                );
                // Only when others wait first (tell_position checks it too):
                // its boxed future is not made for every message.
                if let Some(admission) = &self.admission
                    && ahead.is_some_and(|n| n > 0)
                    && let Err(e) = Box::pin(admission.tell_position(candidate, ahead)).await
                {
                    // The message is queued; only the courtesy notice is lost.
                    tracing::warn!(error = %e, "could not tell the sender their place in line");
                }
                IntakeOutcome::Queued
            }
            Enqueued::Duplicate => IntakeOutcome::Duplicate,
            Enqueued::Overflow => IntakeOutcome::Overflow,
            Enqueued::NoConversation => IntakeOutcome::NotInConversation,
        }
    }
}

/// Redis trouble while taking an event: Slack should retry.
fn unavailable(e: crate::queue::QueueError) -> IntakeError {
    IntakeError::Unavailable(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
