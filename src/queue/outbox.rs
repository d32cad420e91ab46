//! Egress's side of the queue: reading and acknowledging the outbox, leader
//! leases (one outbox consumer per shard), shared token buckets, and dead
//! letters for replies that cannot be delivered.

use std::collections::HashMap;
use std::time::Duration;

use super::admin::{OUTBOX_GROUP, parse_outbox_entry};
use super::*;

/// The consumer name in the outbox group. Only a shard's leader reads, so
/// every leader uses the same name and inherits its predecessor's pending
/// entries.
const CONSUMER: &str = "leader";

/// A shared token bucket: its name, refill rate per second and burst.
#[derive(Debug, Clone, Copy)]
pub struct Bucket<'a> {
    pub name: &'a str,
    pub rate: f64,
    pub burst: f64,
}

/// A reply state to record: the hash's key and fields.
pub type StateWrite = (String, Vec<(String, String)>);

/// How long egress keeps a reply's delivery state (a week).
pub const REPLY_STATE_TTL_SECS: i64 = 7 * 24 * 3600;

type RawEntries = Vec<(String, Vec<(String, HashMap<String, String>)>)>;

impl Queue {
    /// Take or keep the `role` lease of `shard` for `holder`.
    pub async fn lead(
        &self,
        role: &str,
        shard: u16,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        let k = self.keys().shard(shard);
        let mut conn = self.conn().await?;
        let led: i64 = ScriptCall::new(&self.scripts().lead, vec![k.lead(role)])
            .arg(holder)
            .arg(Self::ms(ttl))
            .invoke(&mut conn)
            .await?;
        Ok(led == 1)
    }

    /// Read outbox entries of `shard`: with `pending_after = Some(id)`, the
    /// leader's pending entries (read before but never acknowledged, e.g. by
    /// a leader that died) after `id` (start with "0"); with `None`, new
    /// entries, waiting up to `block`.
    pub async fn read_outbox(
        &self,
        shard: u16,
        count: usize,
        block: Duration,
        pending_after: Option<&str>,
    ) -> Result<Vec<OutboxEntry>, QueueError> {
        let pending = pending_after.is_some();
        let k = self.keys().shard(shard);
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(OUTBOX_GROUP)
            .arg(CONSUMER)
            .arg("COUNT")
            .arg(count);
        if !pending {
            cmd.arg("BLOCK").arg(Self::ms(block));
        }
        cmd.arg("STREAMS")
            .arg(k.outbox())
            .arg(pending_after.unwrap_or(">"));
        let raw: Option<RawEntries> = cmd.query_async(&mut *conn).await?;
        let mut out = Vec::new();
        for (_, entries) in raw.unwrap_or_default() {
            for (id, fields) in entries {
                match parse_outbox_entry(shard, id.clone(), &fields) {
                    // Read again: a leader that stopped may have published it.
                    Ok(entry) if pending => out.push(OutboxEntry {
                        fresh: false,
                        ..entry
                    }),
                    Ok(entry) => out.push(entry),
                    Err(e) => {
                        // Not ours to deliver (bad entry): set it aside.
                        tracing::error!(entry = %id, error = %e, "malformed outbox entry dead-lettered");
                        self.ack_outbox(shard, &[id]).await?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Acknowledge and remove delivered entries.
    pub async fn ack_outbox(&self, shard: u16, ids: &[String]) -> Result<(), QueueError> {
        self.ack_outbox_after(shard, ids, &[]).await
    }

    /// Write `writes` (egress's reply states, each hash kept a week), then
    /// acknowledge and delete `ids`, in one round trip and in that order:
    /// an entry is never acknowledged without its state.
    pub async fn ack_outbox_after(
        &self,
        shard: u16,
        ids: &[String],
        writes: &[StateWrite],
    ) -> Result<(), QueueError> {
        if ids.is_empty() && writes.is_empty() {
            return Ok(());
        }
        let k = self.keys().shard(shard);
        let mut pipe = redis::pipe();
        for (key, fields) in writes {
            pipe.hset_multiple(key, fields)
                .ignore()
                .expire(key, REPLY_STATE_TTL_SECS)
                .ignore();
        }
        if !ids.is_empty() {
            pipe.cmd("XACK")
                .arg(k.outbox())
                .arg(OUTBOX_GROUP)
                .arg(ids)
                .ignore()
                .cmd("XDEL")
                .arg(k.outbox())
                .arg(ids)
                .ignore();
        }
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }

    /// A reply that cannot be delivered (e.g. the bot is not in the
    /// channel): into the dead-letter stream with the reason.
    pub async fn dead_letter_reply(
        &self,
        entry: &OutboxEntry,
        reason: &str,
    ) -> Result<(), QueueError> {
        let k = self.keys().shard(entry.shard);
        let mut conn = self.conn().await?;
        redis::cmd("XADD")
            .arg(k.dead())
            .arg("*")
            .arg(&[
                ("cid", entry.conversation.as_str()),
                ("reason", reason),
                ("attempts", "0"),
                ("batch", ""),
                ("messages", "[]"),
                ("reply_id", entry.reply_id.as_str()),
                ("text", entry.text.as_str()),
            ])
            .query_async::<String>(&mut *conn)
            .await?;
        Ok(())
    }

    /// An inbound message that can never be queued (e.g. broken MIME, too
    /// large): into shard 0's dead-letter stream with the reason, so an
    /// operator sees it. `source` names it (e.g. `email:support:uid:7:42`).
    pub async fn dead_letter_inbound(
        &self,
        source: &str,
        reason: &str,
        detail: &str,
    ) -> Result<(), QueueError> {
        let k = self.keys().shard(0);
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis().to_string())
            .unwrap_or_default();
        let mut conn = self.conn().await?;
        redis::cmd("XADD")
            .arg(k.dead())
            .arg("*")
            .arg(&[
                ("cid", source),
                ("reason", reason),
                ("attempts", "0"),
                ("batch", ""),
                ("messages", "[]"),
                ("detail", detail),
                ("at_ms", at_ms.as_str()),
            ])
            .query_async::<String>(&mut *conn)
            .await?;
        Ok(())
    }

    /// Take `tokens` from the shared bucket `name` (refilled at `rate` per
    /// second up to `burst`), only if `reserve` more would remain. Returns
    /// how long to wait when short.
    pub async fn take_tokens(
        &self,
        name: &str,
        rate: f64,
        burst: f64,
        tokens: f64,
        reserve: f64,
    ) -> Result<Option<Duration>, QueueError> {
        let bucket = Bucket { name, rate, burst };
        Ok(self
            .take_tokens_in_order(&[bucket], tokens, reserve)
            .await?
            .map(|(_, wait)| wait))
    }

    /// Take `tokens` from each of `buckets` in turn, in one round trip,
    /// stopping at the first that is short: returns its index and how long
    /// to wait (the buckets after it are not touched).
    pub async fn take_tokens_in_order(
        &self,
        buckets: &[Bucket<'_>],
        tokens: f64,
        reserve: f64,
    ) -> Result<Option<(usize, Duration)>, QueueError> {
        let k = self.keys().shard(0);
        let keys: Vec<String> = buckets.iter().map(|b| k.bucket(b.name)).collect();
        let mut call = ScriptCall::new(&self.scripts().take_tokens, keys)
            .arg(tokens)
            .arg(reserve);
        for b in buckets {
            call = call.arg(b.rate).arg(b.burst);
        }
        let mut conn = self.conn().await?;
        let (index, wait): (usize, u64) = call.invoke(&mut conn).await?;
        Ok(index
            .checked_sub(1)
            .map(|i| (i, Duration::from_millis(wait))))
    }

    /// [`Self::take_tokens`] for one token from `bucket`, and in the same
    /// round trip set `field` of the hash `key` to "1" (kept a week): egress
    /// marks a reply part's post as pending with the token it posts with.
    /// The mark is set whether or not the token is granted.
    pub async fn take_token_and_mark(
        &self,
        bucket: &Bucket<'_>,
        reserve: f64,
        (key, field): (&str, &str),
    ) -> Result<Option<Duration>, QueueError> {
        let k = self.keys().shard(0);
        let call = ScriptCall::new(&self.scripts().take_tokens, vec![k.bucket(bucket.name)])
            .arg(1.0)
            .arg(reserve)
            .arg(bucket.rate)
            .arg(bucket.burst);
        let mut pipe = redis::pipe();
        pipe.add_command(call.evalsha().clone())
            .cmd("HSET")
            .arg(key)
            .arg(field)
            .arg("1")
            .ignore()
            .expire(key, REPLY_STATE_TTL_SECS)
            .ignore();
        let mut conn = self.conn().await?;
        let (index, wait): (usize, u64) =
            match pipe.query_async::<((usize, u64),)>(&mut *conn).await {
                Ok((taken,)) => taken,
                // Redis lost its scripts (a restart): the mark is set, as
                // every command of a pipeline runs; load it and take again.
                Err(e) if super::scripts::is_no_script(&e) => call.invoke(&mut conn).await?,
                Err(e) => return Err(e.into()),
            };
        Ok(index.checked_sub(1).map(|_| Duration::from_millis(wait)))
    }

    /// Queue a notice for the sender of a conversation's message (posted
    /// once, keyed by `reply_id`).
    pub async fn notice(
        &self,
        cid: &ConversationId,
        destination: &Destination,
        reply_id: &str,
        text: &str,
    ) -> Result<(), QueueError> {
        let k = self.keys().for_conversation(cid);
        let mut conn = self.conn().await?;
        let _: i64 = ScriptCall::new(&self.scripts().notice, k.notice_keys(cid))
            .arg(cid)
            .arg(serde_json::to_string(destination)?)
            .arg(reply_id)
            .arg(text)
            .arg(Self::ms(self.settings().idle_ttl))
            .invoke(&mut conn)
            .await?;
        Ok(())
    }

    /// Whether any of the message's dedupe keys was seen (a retry), and how
    /// many conversations wait for a slot in its shard: one round trip.
    pub async fn seen_and_waiting(
        &self,
        message: &crate::domain::InboundMessage,
    ) -> Result<(bool, u64), QueueError> {
        let k = self.keys().for_conversation(&message.conversation);
        let keys: Vec<String> = message.dedupe_keys.iter().map(|d| k.seen(d)).collect();
        let mut pipe = redis::pipe();
        if keys.is_empty() {
            // EXISTS needs a key; none is seen.
            pipe.cmd("ECHO").arg(0);
        } else {
            pipe.cmd("EXISTS").arg(&keys);
        }
        pipe.cmd("ZCARD").arg(k.ready());
        let mut conn = self.conn().await?;
        let (seen, waiting): (u64, u64) = pipe.query_async(&mut *conn).await?;
        Ok((seen > 0, waiting))
    }

    /// Mark a message's ids seen without queueing it (a refused message, so
    /// that a retry of it is a duplicate and its sender is not told twice),
    /// as the admit script does.
    pub async fn mark_seen(
        &self,
        message: &crate::domain::InboundMessage,
    ) -> Result<(), QueueError> {
        if message.dedupe_keys.is_empty() {
            return Ok(());
        }
        let k = self.keys().for_conversation(&message.conversation);
        let ttl = self.settings().dedupe_ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        for id in &message.dedupe_keys {
            pipe.cmd("SET")
                .arg(k.seen(id))
                .arg(1)
                .arg("EX")
                .arg(ttl)
                .ignore();
        }
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }

    /// A handle for plain commands on a shard's keys (egress reply state).
    pub async fn connection(&self) -> Result<crate::store::Connection, QueueError> {
        self.conn().await
    }
}
