//! Warm pool benchmark: how fast a queued message reaches a warm agent's
//! stdin, against how long a cold agent takes to start, in the same run;
//! and what the worker itself costs in memory per slot.
//!
//! `cargo bench --bench pool_handoff` (needs redis-server on PATH). Uses the
//! stand-in agent, so agent think time is zero and what is measured is ours.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard::agent::{self, AgentSettings, SessionStart, SlotDirs};
use switchboard::config::{RedisSettings, Secret};
use switchboard::domain::{ConversationId, Destination, InboundMessage};
use switchboard::queue::{EnqueueMode, OutboxKind, Queue, QueueSettings};

const STAND_IN: &str = env!("CARGO_BIN_EXE_stand-in-agent");
const SWITCHBOARD: &str = env!("CARGO_BIN_EXE_switchboard");
const SAMPLES: usize = 300;
const COLD_STARTS: usize = 10;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &Path) -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|c| c.get_connection())
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis(child, port)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn worker_config(dir: &Path, prefix: &str, slots: u32, log: &Path) -> PathBuf {
    let path = dir.join(format!("worker-{slots}.toml"));
    let text = format!(
        "[log]\nlevel = \"warn\"\n[redis]\nkey_prefix = \"{prefix}\"\nblocking_read = \"1s\"\n\
         [pool]\nslots_per_container = {slots}\nmin_fresh = 0\n\
         [agent]\ncommand = \"{STAND_IN}\"\nslots_dir = \"{}\"\n[agent.env]\nSTAND_IN_STDIN_LOG = \"{}\"\n",
        dir.join(format!("slots-{slots}")).display(),
        log.display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn message(cid: &str, n: usize) -> InboundMessage {
    InboundMessage {
        conversation: ConversationId::new(cid),
        dedupe_keys: vec![format!("bench:{cid}:{n}")],
        sender: "U1".into(),
        sender_name: None,
        text: format!("m{n}"),
        files: vec![],
        external_id: n.to_string(),
        received_at_ms: 0,
    }
}

async fn finals(queue: &Queue) -> usize {
    queue
        .outbox_entries(0)
        .await
        .map(|e| e.iter().filter(|e| e.kind == OutboxKind::Final).count())
        .unwrap_or(0)
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Milliseconds from each enqueue to its arrival on an agent's stdin. Log
/// lines are `<unix ns> <pid> U1: m<n>`; the first 20 are warm-up.
fn handoff_samples(log: &str, sent: &[u128]) -> Vec<f64> {
    let mut samples: Vec<f64> = log
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let at: u128 = parts.next()?.parse().ok()?;
            let n: usize = parts.nth(1)?.rsplit('m').next()?.trim().parse().ok()?;
            let sent = *sent.get(n).filter(|_| n >= 20)?;
            Some((at as f64 - sent as f64) / 1e6)
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = start_redis(dir.path());
    let url = format!("redis://127.0.0.1:{}/", redis.1);
    let pool = switchboard::store::connect(&Secret::new(url.clone()), &RedisSettings::default())
        .expect("pool");
    let mut rss = Vec::new();
    for slots in [1u32, 8] {
        let prefix = format!("bench{slots}");
        let queue = Queue::new(pool.clone(), &prefix, QueueSettings::default());
        let log = dir.path().join(format!("stdin-{slots}.log"));
        let config = worker_config(dir.path(), &prefix, slots, &log);
        let child = Command::new(SWITCHBOARD)
            .args(["worker", "--config"])
            .arg(&config)
            .env_clear()
            .env("REDIS_URL", &url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker");
        let worker = Worker(child);
        wait_for("slots", async || {
            let status = queue.pool_status().await.unwrap_or_default();
            status
                .iter()
                .flat_map(|(_, _, s)| s["slots"].as_array().cloned().unwrap_or_default())
                .filter(|s| s["state"] == "fresh")
                .count()
                == slots as usize
        })
        .await;
        // One conversation per slot, messages round-robin, one at a time.
        let mut sent = Vec::with_capacity(SAMPLES);
        for n in 0..SAMPLES {
            let cid = format!("c{}", n % slots as usize);
            queue
                .enqueue(
                    &message(&cid, n),
                    &Destination::Console {
                        session: "bench".into(),
                    },
                    EnqueueMode::CreateOrAppend,
                )
                .await
                .expect("enqueue");
            sent.push(now_ns());
            wait_for("reply", async || finals(&queue).await > n).await;
        }
        rss.push((slots, rss_kib(worker.0.id())));
        drop(worker);
        if slots == 8 {
            let samples =
                handoff_samples(&std::fs::read_to_string(&log).unwrap_or_default(), &sent);
            println!(
                "warm handoff, enqueue committed -> agent stdin ({} samples after 20 warm-up, 8 slots):",
                samples.len()
            );
            println!(
                "  p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms",
                percentile(&samples, 0.5),
                percentile(&samples, 0.99),
                samples.last().copied().unwrap_or(f64::NAN)
            );
        }
    }
    // Cold: spawn to ready of the same agent, same run.
    let settings = AgentSettings {
        command: STAND_IN.into(),
        ..AgentSettings::default()
    };
    let launcher = agent::launcher(&settings).expect("launcher");
    let mut cold = Vec::new();
    for i in 0..COLD_STARTS {
        let slot = SlotDirs::new(dir.path(), &format!("cold-{i}")).expect("slot");
        let started = Instant::now();
        let mut process = launcher
            .start(&slot, SessionStart::New)
            .await
            .expect("start");
        cold.push(started.elapsed().as_secs_f64() * 1e3);
        process.terminate().await;
    }
    cold.sort_by(|a, b| a.total_cmp(b));
    println!(
        "cold spawn-to-ready of the same agent ({COLD_STARTS} starts): p50 {:.3} ms   max {:.3} ms",
        percentile(&cold, 0.5),
        cold.last().copied().unwrap_or(f64::NAN)
    );
    let (r1, r8) = (rss[0].1 as f64, rss[1].1 as f64);
    println!(
        "worker resident memory: 1 slot {:.1} MiB, 8 slots {:.1} MiB -> {:.3} MiB per extra slot (agent processes not included)",
        r1 / 1024.0,
        r8 / 1024.0,
        (r8 - r1) / 7.0 / 1024.0
    );
    let _ = std::io::stdout().flush();
}
