//! A worker with stand-in agents on a test Redis, and ways to watch it.

use std::time::Duration;

use switchboard::agent::{self, AgentSettings};
use switchboard::domain::ConversationId;
use switchboard::pool::{MAINTENANCE_INTERVAL, PoolSettings, Worker, WorkerSettings};
use switchboard::queue::{OutboxKind, Queue, QueueSettings, WorkerId};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;
use crate::queue_support::*;

pub const STAND_IN: &str = env!("CARGO_BIN_EXE_stand-in-agent");

/// The stand-in agent at a path every user can reach: a checkout may sit
/// in a directory only its owner can enter (e.g. made by `mktemp -d`), and
/// tests that run agents as another user need to exec it.
pub fn stand_in_for_other_users() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    static COPY: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = COPY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod dir");
        let to = dir.path().join("stand-in-agent");
        std::fs::copy(STAND_IN, &to).expect("copy the stand-in");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
            .expect("chmod stand-in");
        dir
    });
    dir.path().join("stand-in-agent")
}

pub fn agent_settings(slots_dir: &std::path::Path) -> AgentSettings {
    AgentSettings {
        command: STAND_IN.into(),
        slots_dir: slots_dir.to_path_buf(),
        start_timeout: Duration::from_secs(20),
        turn_timeout: Duration::from_secs(20),
        silence_timeout: Duration::from_secs(10),
        interrupt_grace: Duration::from_secs(1),
        terminate_timeout: Duration::from_secs(2),
        ..AgentSettings::default()
    }
}

pub fn pool_queue_settings() -> QueueSettings {
    QueueSettings {
        // Short enough that reclaiming is quick in tests, long enough that
        // a loaded 2-core machine does not lose leases or heartbeats.
        lease_ttl: Duration::from_secs(4),
        lease_margin: Duration::from_millis(1500),
        reaper_interval: Duration::from_millis(100),
        heartbeat_ttl: Duration::from_secs(3),
        ..QueueSettings::default()
    }
}

/// A running in-process worker.
pub struct TestWorker {
    pub id: WorkerId,
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
}

impl TestWorker {
    pub async fn start(
        queue: &Queue,
        name: &str,
        pool: PoolSettings,
        agent: AgentSettings,
    ) -> Self {
        Self::start_maintained_every(queue, name, pool, agent, MAINTENANCE_INTERVAL).await
    }

    /// `start` with maintenance rounds `interval` apart.
    pub async fn start_maintained_every(
        queue: &Queue,
        name: &str,
        pool: PoolSettings,
        agent: AgentSettings,
        interval: Duration,
    ) -> Self {
        init_test_logging();
        let id = worker(name);
        let settings = WorkerSettings {
            pool,
            agent: agent.clone(),
            update_interval: Duration::from_millis(200),
            blocking_read: Duration::from_millis(500),
            max_wait: None,
            alive_file: None,
            maintenance_interval: interval,
        };
        let launcher = agent::launcher(&agent).expect("launcher");
        let w = Worker::new(id.clone(), queue.clone(), launcher, settings).expect("worker");
        let stop = CancellationToken::new();
        // Every worker process also runs a reaper, as the application does.
        tokio::spawn(switchboard::queue::Reaper::new(queue.clone()).run(stop.clone()));
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move { w.run(stop).await.expect("worker run") }
        });
        Self { id, stop, handle }
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("worker stops in time")
            .expect("worker task");
    }
}

pub fn pool(slots: u32, min_fresh: u32) -> PoolSettings {
    PoolSettings {
        slots_per_container: slots,
        min_fresh,
        drain_timeout: Duration::from_secs(5),
        ..PoolSettings::default()
    }
}

/// The slots of `worker` as published: (state, pid, conversation).
pub async fn slots_of(
    queue: &Queue,
    worker: &WorkerId,
) -> Vec<(String, Option<u32>, Option<String>)> {
    let all = queue.pool_status().await.expect("pool status");
    all.into_iter()
        .filter(|(id, _, _)| id == worker.as_str())
        .flat_map(|(_, _, status)| status["slots"].as_array().cloned().unwrap_or_default())
        .map(|s| {
            (
                s["state"].as_str().unwrap_or_default().to_string(),
                s["pid"].as_u64().map(|p| p as u32),
                s["conversation"].as_str().map(String::from),
            )
        })
        .collect()
}

/// Wait until every slot of `worker` is fresh; return their pids.
pub async fn fresh_pids(queue: &Queue, worker: &WorkerId, n: usize) -> Vec<u32> {
    wait_until(Duration::from_secs(30), "all slots fresh", || {
        let (queue, worker) = (queue.clone(), worker.clone());
        async move {
            let slots = slots_of(&queue, &worker).await;
            let fresh: Vec<u32> = slots
                .iter()
                .filter(|s| s.0 == "fresh")
                .filter_map(|s| s.1)
                .collect();
            (fresh.len() == n).then_some(fresh)
        }
    })
    .await
}

/// Final replies for a conversation, in order.
pub async fn replies_for(queue: &Queue, cid: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for shard in 0..queue.keys().shards() {
        for e in queue.outbox_entries(shard).await.expect("outbox") {
            if e.kind == OutboxKind::Final && e.conversation == ConversationId::new(cid) {
                out.push((e.text, e.error));
            }
        }
    }
    out
}

/// Wait for the `n`th final reply of a conversation and return it.
pub async fn nth_reply(queue: &Queue, cid: &str, n: usize) -> (String, Option<String>) {
    let what = format!("reply {n} for {cid}");
    wait_until(Duration::from_secs(40), &what, || {
        let queue = queue.clone();
        let cid = cid.to_string();
        async move { replies_for(&queue, &cid).await.into_iter().nth(n - 1) }
    })
    .await
}

/// Enqueue `text` as message `n` of `cid`.
pub async fn say(queue: &Queue, cid: &str, n: u32, text: &str) {
    let mut m = message(cid, n);
    m.text = text.to_string();
    queue
        .enqueue(&m, &dest(), switchboard::queue::EnqueueMode::CreateOrAppend)
        .await
        .expect("enqueue");
}

/// The pid the stand-in reported (`[[pid]]`).
pub fn reported_pid(reply: &str) -> u32 {
    reply
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in reply {reply:?}"))
}
