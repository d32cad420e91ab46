//! `switchboard worker` as a real process: killed with SIGKILL mid-turn,
//! its conversation is resumed elsewhere and answered once, and none of its
//! agent processes outlive it.

use std::process::{Command, Stdio};
use std::time::Duration;

use switchboard::domain::ConversationId;

use crate::helpers::*;
use crate::pool_support::*;
use crate::queue_support::*;

fn worker_config(dir: &std::path::Path, prefix: &str) -> std::path::PathBuf {
    let path = dir.join("worker.toml");
    let text = format!(
        r#"
[log]
format = "json"
[redis]
key_prefix = "{prefix}"
[queue]
lease_ttl = "2s"
lease_margin = "700ms"
reaper_interval = "100ms"
heartbeat_ttl = "1s"
[pool]
slots_per_container = 2
drain_timeout = "5s"
[agent]
command = "{STAND_IN}"
slots_dir = "{slots}"
terminate_timeout = "2s"
"#,
        slots = dir.join("slots").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test]
async fn a_worker_killed_mid_turn_leaves_no_agent_and_its_conversation_is_answered_once_elsewhere()
{
    let redis = TestRedis::start();
    let (queue, prefix) = test_queue(&redis, "workerkill", pool_queue_settings());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = worker_config(dir.path(), &prefix);
    let mut command = Command::new(switchboard_bin());
    command
        .args(["worker", "--config"])
        .arg(&config)
        .env_clear()
        .env("REDIS_URL", redis.url())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut command);
    let mut child = command.spawn().expect("spawn worker");
    // Wait until its slots are up, then give it a slow turn.
    wait_until(Duration::from_secs(30), "the worker's slots", || {
        let queue = queue.clone();
        async move {
            let all = queue.pool_status().await.expect("status");
            let fresh = all
                .iter()
                .flat_map(|(_, _, s)| s["slots"].as_array().cloned().unwrap_or_default())
                .filter(|s| s["state"] == "fresh")
                .count();
            (fresh == 2).then_some(())
        }
    })
    .await;
    say(&queue, "c1", 0, "[[delay:4000]] take your time").await;
    let cid = ConversationId::new("c1");
    wait_until(Duration::from_secs(20), "the turn to start", || {
        let (queue, cid) = (queue.clone(), cid.clone());
        async move {
            let conv = queue.conversation(&cid).await.expect("conv");
            (conv.get("state").map(String::as_str) == Some("running")).then_some(())
        }
    })
    .await;
    let agents = descendants(child.id());
    assert_eq!(
        agents
            .iter()
            .filter(|&&p| comm(p).starts_with("stand-in"))
            .count(),
        2,
        "two warm agents"
    );
    child.kill().expect("kill -9 the worker");
    child.wait().expect("reap");
    wait_until(
        Duration::from_secs(10),
        "the killed worker's agents to die with it",
        || {
            let left: Vec<u32> = agents.iter().copied().filter(|&p| alive(p)).collect();
            async move { left.is_empty().then_some(()) }
        },
    )
    .await;
    // Another worker takes over once the lease expires.
    let other = TestWorker::start(
        &queue,
        "rescuer",
        pool(1, 1),
        agent_settings(&dir.path().join("rescuer")),
    )
    .await;
    let (reply, error) = nth_reply(&queue, "c1", 1).await;
    assert!(error.is_none(), "{reply}");
    assert!(reply.contains("take your time"), "{reply}");
    other.shutdown().await;
    assert_eq!(
        replies_for(&queue, "c1").await.len(),
        1,
        "answered exactly once"
    );
}
