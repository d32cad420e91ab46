//! Replies to `switchboard chat`: pushed to a Redis list the console reads.

use crate::queue::{OutboxEntry, OutboxKind, Queue, QueueError};

/// How long a console session's undelivered replies are kept.
const KEEP_SECONDS: i64 = 3600;

/// Push `entry` to the console session's list.
pub async fn deliver(queue: &Queue, entry: &OutboxEntry, session: &str) -> Result<(), QueueError> {
    if entry.kind == OutboxKind::Ack {
        return Ok(());
    }
    let key = queue.keys().shard(0).console(session);
    let item = serde_json::json!({
        "kind": match entry.kind {
            OutboxKind::Final => "final",
            OutboxKind::Notice => "notice",
            _ => "progress",
        },
        "reply_id": entry.reply_id,
        "seq": entry.seq,
        "text": entry.text,
        "error": entry.error,
    });
    let mut conn = queue.connection().await?;
    redis::pipe()
        .rpush(&key, item.to_string())
        .ignore()
        .expire(&key, KEEP_SECONDS)
        .ignore()
        .query_async::<()>(&mut *conn)
        .await?;
    Ok(())
}
