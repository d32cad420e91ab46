//! Delivering outbox entries to Slack, exactly once per reply part:
//! - the acknowledgement reaction on a queued message;
//! - progress and the final text of a reply, posted once (its idempotency
//!   key marked pending in Redis first and carried in the message metadata)
//!   and updated after that; a post that may have happened before a crash
//!   is looked up in the thread and adopted instead of posted again;
//! - within Slack's rate limits, shared by all gateways through Redis token
//!   buckets: progress is shed first, then reaction removal, then the
//!   acknowledgement; the final reply waits its turn but is never shed.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::config::{EgressSettings, StaleReplies};
use crate::queue::{
    Bucket, OutboxEntry, OutboxKind, Queue, QueueError, REPLY_STATE_TTL_SECS, StateWrite,
};

use super::{PostMessage, SlackApi, SlackError, format_reply};

/// What became of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Done (or knowingly skipped): acknowledge the entry.
    Done,
    /// Not now: keep the entry and try again after this long.
    Retry(Duration),
    /// Can never be delivered: dead-letter it with this reason.
    Dead(String),
}

/// What sending one part of a reply came to.
enum Sent {
    /// Sent: these reply-state fields (message ts, text hash) are to be
    /// recorded.
    Fields(Vec<(String, String)>),
    /// Nothing to record: already sent, shed, or failed.
    Outcome(Delivered),
}

/// How much a call matters when tokens are short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// The final reply: waits for tokens, never shed.
    Final,
    Acknowledge,
    RemoveReaction,
    Progress,
}

impl Priority {
    /// Tokens that must stay in the bucket for this call to go ahead.
    fn reserve(self) -> f64 {
        match self {
            Priority::Final => 0.0,
            Priority::Acknowledge => 0.25,
            Priority::RemoveReaction => 0.5,
            Priority::Progress => 1.0,
        }
    }
}

/// Where a Slack reply goes (from the conversation record).
#[derive(Debug, Clone, Copy)]
pub struct SlackTarget<'a> {
    pub team: &'a str,
    pub channel: &'a str,
    pub thread_ts: Option<&'a str>,
}

/// Sends outbox entries to Slack.
#[derive(Clone)]
pub struct SlackDelivery {
    api: SlackApi,
    queue: Queue,
    settings: EgressSettings,
}

impl SlackDelivery {
    pub fn new(api: SlackApi, queue: Queue, settings: EgressSettings) -> Self {
        Self {
            api,
            queue,
            settings,
        }
    }

    /// Deliver one outbox entry. With `deferred`, the reply's state after
    /// a successful delivery is left there for the caller to write (with
    /// the entry's acknowledgement) instead of written here.
    pub async fn deliver(
        &self,
        entry: &OutboxEntry,
        target: SlackTarget<'_>,
        deferred: Option<&mut Vec<StateWrite>>,
    ) -> Delivered {
        let result = match entry.kind {
            OutboxKind::Ack => self.acknowledge(entry, target).await,
            OutboxKind::Progress | OutboxKind::Final | OutboxKind::Notice => {
                self.reply(entry, target, deferred).await
            }
        };
        match result {
            Ok(delivered) => delivered,
            // Redis trouble: keep the entry, try again shortly.
            Err(e) => {
                tracing::warn!(error = %e, "egress state unavailable");
                Delivered::Retry(Duration::from_secs(1))
            }
        }
    }

    async fn acknowledge(
        &self,
        entry: &OutboxEntry,
        target: SlackTarget<'_>,
    ) -> Result<Delivered, QueueError> {
        let name = self.settings.ack_reaction.as_str();
        if name.is_empty() {
            return Ok(Delivered::Done);
        }
        for ts in &entry.acks {
            if !self
                .tokens(target, "reactions.add", Priority::Acknowledge)
                .await?
            {
                metrics::counter!("switchboard_egress_slack_shed_total", "call" => "reaction_add")
                    .increment(1);
                continue;
            }
            if let Err(e) = self.api.add_reaction(target.channel, ts, name).await {
                // A missing acknowledgement is cosmetic; never retried.
                tracing::info!(error = %e, "acknowledgement reaction not added");
            }
        }
        Ok(Delivered::Done)
    }

    async fn reply(
        &self,
        entry: &OutboxEntry,
        target: SlackTarget<'_>,
        deferred: Option<&mut Vec<StateWrite>>,
    ) -> Result<Delivered, QueueError> {
        let key = self
            .queue
            .keys()
            .shard(entry.shard)
            .reply_state(&entry.reply_id);
        // A fresh final reply has no state yet: one round trip fewer on
        // the way from the agent's result to Slack.
        let state: HashMap<String, String> = if entry.fresh {
            HashMap::new()
        } else {
            let mut conn = self.queue.connection().await?;
            redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut *conn)
                .await?
        };
        let applied: u64 = state.get("seq").and_then(|s| s.parse().ok()).unwrap_or(0);
        let done = state.contains_key("done");
        let is_final = entry.kind != OutboxKind::Progress;
        if done || (!is_final && applied >= entry.seq) {
            // Superseded, or delivered before a crash and redelivered.
            return Ok(Delivered::Done);
        }
        let text = match self.stale_text(entry) {
            Ok(text) => text,
            // Stale progress is not replayed; the final text decides.
            Err(_) if !is_final => return Ok(Delivered::Done),
            Err(reason) => return Ok(Delivered::Dead(reason)),
        };
        let priority = if is_final {
            Priority::Final
        } else {
            Priority::Progress
        };
        let parts = format_reply(&text, self.settings.message_limit);
        // What the last part sent is recorded together with the reply's
        // progress below: one round trip instead of two.
        let mut sent = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 && !sent.is_empty() {
                self.set(&key, &std::mem::take(&mut sent)).await?;
            }
            match self
                .send_part(entry, target, &key, &state, i, part, priority)
                .await?
            {
                Sent::Fields(fields) => sent = fields,
                Sent::Outcome(Delivered::Done) => {}
                Sent::Outcome(other) => return Ok(other),
            }
        }
        sent.push(("seq".into(), entry.seq.to_string()));
        if is_final {
            sent.push(("done".into(), "1".into()));
        }
        if deferred.is_none() {
            self.set(&key, &sent).await?;
        }
        if is_final {
            metrics::counter!("switchboard_egress_replies_total", "channel" => "slack")
                .increment(1);
            if let Err(e) = self.remove_acks(entry, target).await {
                // Retried: record what was sent first, or the retry would
                // look for the message instead of seeing it done.
                if deferred.is_some() {
                    self.set(&key, &sent).await?;
                }
                return Err(e);
            }
        }
        if let Some(deferred) = deferred {
            deferred.push((key, sent));
        }
        Ok(Delivered::Done)
    }

    /// Post or update one Slack message of a reply part.
    #[allow(clippy::too_many_arguments)]
    async fn send_part(
        &self,
        entry: &OutboxEntry,
        target: SlackTarget<'_>,
        key: &str,
        state: &HashMap<String, String>,
        i: usize,
        text: &str,
        priority: Priority,
    ) -> Result<Sent, QueueError> {
        let digest = hex_digest(text);
        if state.get(&format!("hash.{i}")) == Some(&digest) {
            return Ok(Sent::Outcome(Delivered::Done));
        }
        let message_key = format!("{}#{i}", entry.reply_id);
        let mut ts = state.get(&format!("ts.{i}")).cloned();
        if ts.is_none() && state.contains_key(&format!("pending.{i}")) {
            // A post may have succeeded before a crash: look for it first.
            match self
                .api
                .find_reply(target.channel, target.thread_ts, &message_key)
                .await
            {
                Ok(Some(found)) => {
                    tracing::info!(reply = %message_key, ts = %found.ts, "adopted a message posted before a crash");
                    self.set(key, &[(format!("ts.{i}"), found.ts.clone())])
                        .await?;
                    ts = Some(found.ts);
                }
                Ok(None) => {}
                Err(e) => return Ok(Sent::Outcome(self.on_error(e, priority))),
            }
        }
        let method = if ts.is_some() {
            "chat.update"
        } else {
            "chat.postMessage"
        };
        // A final reply's new message is marked pending with the token it
        // posts with (one round trip); progress, which may be shed, only
        // once it has its token.
        let pending = format!("pending.{i}");
        let marked = ts.is_none() && priority == Priority::Final;
        let mark = marked.then_some((key, pending.as_str()));
        if !self.wait_tokens(target, method, priority, mark).await? {
            metrics::counter!("switchboard_egress_slack_shed_total", "call" => "progress")
                .increment(1);
            return Ok(Sent::Outcome(Delivered::Done));
        }
        let mut fields = Vec::with_capacity(2);
        let sent = match &ts {
            Some(ts) => self.api.update_message(target.channel, ts, text).await,
            None => {
                if !marked {
                    self.set(key, &[(pending, "1".into())]).await?;
                }
                let message = PostMessage {
                    channel: target.channel,
                    thread_ts: target.thread_ts,
                    text,
                    reply_id: Some(&message_key),
                };
                self.api.post_message(&message).await.map(|posted| {
                    fields.push((format!("ts.{i}"), posted.ts));
                })
            }
        };
        match sent {
            Ok(()) => {
                fields.push((format!("hash.{i}"), digest));
                Ok(Sent::Fields(fields))
            }
            Err(e) => Ok(Sent::Outcome(self.on_error(e, priority))),
        }
    }

    fn on_error(&self, e: SlackError, priority: Priority) -> Delivered {
        let is_final = priority == Priority::Final;
        match e {
            SlackError::RateLimited { retry_after } if is_final => {
                metrics::counter!("switchboard_egress_slack_rate_limited_total").increment(1);
                Delivered::Retry(retry_after)
            }
            SlackError::Permanent { code } if is_final => {
                tracing::error!(%code, "Slack refused the reply for good");
                Delivered::Dead(format!("slack: {code}"))
            }
            e if is_final => {
                tracing::warn!(error = %e, "Slack failed; retrying the reply");
                Delivered::Retry(Duration::from_secs(1))
            }
            // Progress is best effort: the final text replaces it anyway.
            e => {
                tracing::debug!(error = %e, "progress update dropped");
                Delivered::Done
            }
        }
    }

    async fn remove_acks(
        &self,
        entry: &OutboxEntry,
        target: SlackTarget<'_>,
    ) -> Result<(), QueueError> {
        let name = self.settings.ack_reaction.as_str();
        if name.is_empty() {
            return Ok(());
        }
        for ts in &entry.acks {
            if !self
                .tokens(target, "reactions.remove", Priority::RemoveReaction)
                .await?
            {
                metrics::counter!("switchboard_egress_slack_shed_total", "call" => "reaction_remove").increment(1);
                continue;
            }
            if let Err(e) = self.api.remove_reaction(target.channel, ts, name).await {
                tracing::info!(error = %e, "acknowledgement reaction not removed");
            }
        }
        Ok(())
    }

    /// The text to send, with a note when it is late; Err when too late.
    fn stale_text(&self, entry: &OutboxEntry) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let age = Duration::from_millis(now.saturating_sub(entry.at_ms));
        if age <= self.settings.max_reply_age {
            return Ok(entry.text.clone());
        }
        if entry.kind != OutboxKind::Final {
            return Err("progress too old".into());
        }
        match self.settings.stale_replies {
            StaleReplies::Drop => Err(format!("reply too old to send ({}s)", age.as_secs())),
            StaleReplies::Note => Ok(format!(
                "_(Sorry for the delay: this reply was held up for {} minutes.)_\n\n{}",
                age.as_secs() / 60,
                entry.text
            )),
        }
    }

    /// Take a token now if one is free (sheddable calls).
    async fn tokens(
        &self,
        target: SlackTarget<'_>,
        method: &str,
        priority: Priority,
    ) -> Result<bool, QueueError> {
        let (name, rate, burst) = self.bucket(target, method);
        Ok(self
            .queue
            .take_tokens(&name, rate, burst, 1.0, priority.reserve())
            .await?
            .is_none())
    }

    /// Final replies wait for a token; others take one only if free. With
    /// `mark` (a hash key and field), the first try also sets that field.
    async fn wait_tokens(
        &self,
        target: SlackTarget<'_>,
        method: &str,
        priority: Priority,
        mut mark: Option<(&str, &str)>,
    ) -> Result<bool, QueueError> {
        let (name, rate, burst) = self.bucket(target, method);
        let bucket = Bucket {
            name: &name,
            rate,
            burst,
        };
        loop {
            let taken = match mark.take() {
                Some(mark) => {
                    self.queue
                        .take_token_and_mark(&bucket, priority.reserve(), mark)
                        .await?
                }
                None => {
                    self.queue
                        .take_tokens(&name, rate, burst, 1.0, priority.reserve())
                        .await?
                }
            };
            match taken {
                None => return Ok(true),
                Some(_) if priority != Priority::Final => return Ok(false),
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    fn bucket(&self, target: SlackTarget<'_>, method: &str) -> (String, f64, f64) {
        let s = &self.settings;
        if method == "chat.postMessage" {
            (
                format!("slack:{}:{}:post", target.team, target.channel),
                s.slack_posts_per_second,
                s.slack_post_burst,
            )
        } else {
            (
                format!("slack:{}:{method}", target.team),
                s.slack_calls_per_minute / 60.0,
                s.slack_burst,
            )
        }
    }

    /// Record fields of a reply's state (kept a week), in one round trip.
    async fn set(&self, key: &str, fields: &[(String, String)]) -> Result<(), QueueError> {
        let mut conn = self.queue.connection().await?;
        redis::pipe()
            .hset_multiple(key, fields)
            .ignore()
            .expire(key, REPLY_STATE_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }
}

fn hex_digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}
