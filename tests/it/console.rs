//! `switchboard chat`: the console channel through the real queue, pool and
//! egress.

use std::time::Duration;

use switchboard::app::Role;

use crate::helpers::*;
use crate::pool_support::*;
use crate::queue_support::*;

#[tokio::test]
async fn chat_lines_get_streamed_replies_that_remember_the_conversation() {
    let redis = TestRedis::start();
    let mut settings = test_settings(&redis, "console");
    settings.queue = pool_queue_settings();
    let queue = queue_on(
        &redis.url(),
        &settings.redis.key_prefix,
        pool_queue_settings(),
    );
    let app = spawn_app(settings.clone(), Role::Gateway).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = TestWorker::start(&queue, "console", pool(1, 1), agent_settings(dir.path())).await;
    fresh_pids(&queue, &worker.id, 1).await;
    let client = switchboard::app::connect_queue(&settings)
        .await
        .expect("chat connects");
    let input: &[u8] = b"hello pool\n\nwhat did I say?\n";
    let mut output = Vec::new();
    switchboard::console::chat(
        &client,
        "t1",
        tokio::io::BufReader::new(input),
        &mut output,
        Duration::from_secs(30),
    )
    .await
    .expect("chat");
    let shown = String::from_utf8_lossy(&output);
    assert!(
        shown.contains("reply to: you (console): hello pool"),
        "{shown}"
    );
    assert!(
        shown.contains("reply to: you (console): what did I say?"),
        "{shown}"
    );
    assert!(
        shown.contains("earlier: 1"),
        "the second turn remembers the first: {shown}"
    );
    worker.shutdown().await;
    app.stop().await;
}
