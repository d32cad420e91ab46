//! `switchboard chat`: a local console channel for trying the pool without
//! Slack. Each line typed is a message in one conversation; it goes through
//! the same queue, pool and outbox as Slack, and the reply is printed as it
//! streams (egress pushes it to a Redis list this console reads).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::domain::{ConversationId, Destination, InboundMessage};
use crate::queue::{EnqueueMode, Enqueued, Queue, QueueError};

/// Why the console stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("terminal: {0}")]
    Io(#[from] std::io::Error),
    #[error("no reply within {0:?}: is a gateway (serve or gateway) running on this Redis?")]
    NoReply(Duration),
}

/// Chat in `session` until `input` ends: send each line, print each reply.
pub async fn chat<R, W>(
    queue: &Queue,
    session: &str,
    input: R,
    output: &mut W,
    reply_timeout: Duration,
) -> Result<(), ConsoleError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let cid = ConversationId::new(format!("console:{session}"));
    let destination = Destination::Console {
        session: session.to_string(),
    };
    let mut lines = input.lines();
    let mut n = 0u64;
    output.write_all(b"> ").await?;
    output.flush().await?;
    while let Some(line) = lines.next_line().await? {
        let text = line.trim();
        if text.is_empty() {
            output.write_all(b"> ").await?;
            output.flush().await?;
            continue;
        }
        n += 1;
        let message = InboundMessage {
            conversation: cid.clone(),
            dedupe_keys: vec![format!("console:{session}:{}:{n}", now_ns())],
            sender: "console".into(),
            sender_name: Some("you".into()),
            text: text.to_string(),
            files: Vec::new(),
            external_id: n.to_string(),
            received_at_ms: (now_ns() / 1_000_000) as u64,
        };
        match queue
            .enqueue(&message, &destination, EnqueueMode::CreateOrAppend)
            .await?
        {
            Enqueued::Queued { .. } => print_reply(queue, session, output, reply_timeout).await?,
            Enqueued::Overflow => output.write_all(b"(too many messages waiting)\n").await?,
            Enqueued::Duplicate | Enqueued::NoConversation => {}
        }
        output.write_all(b"> ").await?;
        output.flush().await?;
    }
    Ok(())
}

/// Print one reply as it streams, until its final text.
async fn print_reply<W: AsyncWrite + Unpin>(
    queue: &Queue,
    session: &str,
    output: &mut W,
    timeout: Duration,
) -> Result<(), ConsoleError> {
    let key = queue.keys().shard(0).console(session);
    let mut shown = String::new();
    loop {
        let mut conn = queue.connection().await?;
        let got: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(&key)
            .arg(timeout.as_secs_f64())
            .query_async(&mut *conn)
            .await
            .map_err(QueueError::from)?;
        let Some((_, item)) = got else {
            return Err(ConsoleError::NoReply(timeout));
        };
        let item: serde_json::Value = serde_json::from_str(&item).unwrap_or_default();
        let text = item["text"].as_str().unwrap_or_default();
        // Progress carries the whole text so far: print what is new.
        if let Some(new) = text.strip_prefix(shown.as_str()) {
            output.write_all(new.as_bytes()).await?;
        } else {
            output.write_all(format!("\n{text}").as_bytes()).await?;
        }
        output.flush().await?;
        shown = text.to_string();
        if item["kind"] == "final" {
            output.write_all(b"\n").await?;
            return Ok(());
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
