//! Reading the outbox and the dead letters; retrying dead letters.

use std::collections::HashMap;

use super::*;

/// The consumer group egress reads the outbox with.
pub const OUTBOX_GROUP: &str = "egress";

impl Queue {
    /// Create the outbox consumer group on every shard (idempotent).
    pub async fn ensure_outbox_group(&self) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        for k in self.keys().all_shards() {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(k.outbox())
                .arg(OUTBOX_GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut *conn)
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Every entry now in a shard's outbox, oldest first (tests and admin).
    pub async fn outbox_entries(&self, shard: u16) -> Result<Vec<OutboxEntry>, QueueError> {
        let k = self.keys().shard(shard);
        let mut conn = self.conn().await?;
        let raw: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(k.outbox())
            .arg("-")
            .arg("+")
            .query_async(&mut *conn)
            .await?;
        raw.into_iter()
            .map(|(id, fields)| parse_outbox_entry(shard, id, &fields))
            .collect()
    }

    /// Dead letters, newest first, up to `limit` per shard.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut out = Vec::new();
        let mut conn = self.conn().await?;
        for k in self.keys().all_shards() {
            let raw: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
                .arg(k.dead())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut *conn)
                .await?;
            for (id, fields) in raw {
                out.push(parse_dead_letter(k.shard, id, &fields)?);
            }
        }
        Ok(out)
    }

    /// Put a dead letter's messages back in its conversation's inbox.
    /// Returns false when it is gone (retried or removed already).
    pub async fn retry_dead_letter(&self, shard: u16, id: &str) -> Result<bool, QueueError> {
        let k = self.keys().shard(shard);
        let mut conn = self.conn().await?;
        let raw: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(k.dead())
            .arg(id)
            .arg(id)
            .query_async(&mut *conn)
            .await?;
        let Some((id, fields)) = raw.into_iter().next() else {
            return Ok(false);
        };
        let letter = parse_dead_letter(shard, id.clone(), &fields)?;
        let cid = &letter.conversation;
        let mut call = ScriptCall::new(&self.scripts().requeue_dead, k.requeue_dead_keys(cid))
            .arg(&id)
            .arg(cid)
            .arg(Self::ms(self.settings().idle_ttl))
            .arg(fields.get("dest").map(String::as_str).unwrap_or(""));
        for message in &letter.messages {
            call = call.arg(serde_json::to_string(message)?);
        }
        let n: i64 = call.invoke(&mut conn).await?;
        Ok(n >= 0)
    }
}

fn field<'a>(fields: &'a HashMap<String, String>, name: &str) -> &'a str {
    fields.get(name).map(String::as_str).unwrap_or("")
}

/// Parse one outbox stream entry.
pub fn parse_outbox_entry(
    shard: u16,
    id: String,
    fields: &HashMap<String, String>,
) -> Result<OutboxEntry, QueueError> {
    let kind = match field(fields, "kind") {
        "ack" => OutboxKind::Ack,
        "progress" => OutboxKind::Progress,
        "final" => OutboxKind::Final,
        "notice" => OutboxKind::Notice,
        other => return Err(protocol("outbox", format!("entry {id} has kind {other:?}"))),
    };
    Ok(OutboxEntry {
        shard,
        kind,
        conversation: ConversationId::new(field(fields, "cid")),
        reply_id: field(fields, "reply_id").to_string(),
        part: field(fields, "part").parse().unwrap_or(0),
        seq: field(fields, "seq").parse().unwrap_or(0),
        text: field(fields, "text").to_string(),
        error: fields.get("error").cloned(),
        acks: serde_json::from_str(field(fields, "acks")).unwrap_or_default(),
        at_ms: field(fields, "at_ms").parse().unwrap_or(0),
        destination: serde_json::from_str(field(fields, "dest")).ok(),
        fresh: field(fields, "fresh") == "1",
        id,
    })
}

fn parse_dead_letter(
    shard: u16,
    id: String,
    fields: &HashMap<String, String>,
) -> Result<DeadLetter, QueueError> {
    Ok(DeadLetter {
        shard,
        conversation: ConversationId::new(field(fields, "cid")),
        reason: field(fields, "reason").to_string(),
        attempts: field(fields, "attempts").parse().unwrap_or(0),
        batch: field(fields, "batch").to_string(),
        messages: serde_json::from_str(field(fields, "messages"))?,
        at_ms: field(fields, "at_ms").parse().unwrap_or(0),
        id,
    })
}
