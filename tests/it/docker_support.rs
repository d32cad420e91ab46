//! For the Docker runtime tests: whether an engine is there, the worker
//! image built from docker/Dockerfile on the local Debian base, a Redis on
//! a unix socket the containers can reach, a gateway managing a pool, and
//! clean-up of exactly the containers, volumes and network a test made.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};
use switchboard::domain::{Destination, InboundMessage};
use switchboard::queue::{EnqueueMode, Queue};

use crate::helpers::*;
use crate::queue_support::*;

pub const BASE_IMAGE: &str = "switchboard-base:bookworm";
pub const WORKER_PASSWORD: &str = "worker-test-password";
pub const WORKER_USER: &str = "switchboard-worker";

/// Run `docker` with `args`; Ok(stdout) or Err(stderr).
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The worker test image, built once per run; Err(why) when Docker or the
/// base image is not available (the test then reports itself not run).
pub fn worker_image() -> Result<String, String> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE.get_or_init(build_worker_image).clone()
}

/// Print why a Docker test did not run (no engine, or no base image could
/// be made).
pub fn not_run(test: &str, why: &str) {
    eprintln!("NOT RUN: {test}: {why}");
}

fn build_worker_image() -> Result<String, String> {
    docker(&["info", "--format", "{{.ServerVersion}}"])
        .map_err(|e| format!("no Docker engine here ({e})"))?;
    // Several test processes may get here at once: one builds the images, under a lock.
    let lock_path = std::env::temp_dir().join("switchboard-worker-test-image.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| e.to_string())?;
    // SAFETY: flock on a file we opened; released when `lock` is dropped.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if docker(&["image", "inspect", BASE_IMAGE]).is_err() {
        let status = Command::new(repo_root().join("docker/make-base.sh"))
            .arg(BASE_IMAGE)
            .status()
            .map_err(|e| format!("cannot run docker/make-base.sh: {e}"))?;
        if !status.success() {
            return Err(format!("docker/make-base.sh failed ({status})"));
        }
    }
    let switchboard = switchboard_bin();
    let stand_in = PathBuf::from(crate::pool_support::STAND_IN);
    let dockerfile = repo_root().join("docker/Dockerfile");
    let mut hash = Sha256::new();
    for file in [&switchboard, &stand_in, &dockerfile] {
        hash.update(std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?);
    }
    let tag = format!(
        "switchboard-worker-test:{}",
        &hex::encode(hash.finalize())[..16]
    );
    if docker(&["image", "inspect", &tag]).is_ok() {
        return Ok(tag);
    }
    let context = tempfile::tempdir().map_err(|e| e.to_string())?;
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, context.path().join(to))
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", from.display()))
    };
    copy(&switchboard, "switchboard")?;
    copy(&stand_in, "claude")?;
    let context_dir = context.path().display().to_string();
    let dockerfile = dockerfile.display().to_string();
    let out = Command::new("docker")
        .args([
            "build",
            "-q",
            "-f",
            &dockerfile,
            "--target",
            "worker-prebuilt",
        ])
        .args(["--build-arg", &format!("BASE={BASE_IMAGE}")])
        .args([
            "--build-arg",
            "BIN=switchboard",
            "--build-arg",
            "CLAUDE_BIN=claude",
        ])
        .args(["-t", &tag, &context_dir])
        .output()
        .map_err(|e| format!("cannot run docker build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Images of earlier builds (other binaries) are not needed any more;
    // one still in use by a running test stays (rmi refuses).
    let older = docker(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "switchboard-worker-test",
    ])
    .unwrap_or_default();
    for old in older.lines().filter(|t| *t != tag) {
        let _ = docker(&["rmi", old]);
    }
    Ok(tag)
}

/// Containers, volumes and network of one test's pool, removed on drop.
pub struct PoolGuard {
    pub name: String,
}

impl PoolGuard {
    pub fn new(test: &str) -> Self {
        Self {
            name: format!("sbt-{test}-{}", std::process::id()),
        }
    }

    /// The pool's containers: (id, state, index label), running or not.
    pub fn containers(&self) -> Vec<(String, String, String)> {
        let filter = format!("label=switchboard.pool={}", self.name);
        let format = "{{.ID}} {{.State}} {{.Label \"switchboard.index\"}}";
        docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &filter,
            "--format",
            format,
        ])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((
                parts.next()?.to_string(),
                parts.next()?.to_string(),
                parts.next().unwrap_or_default().to_string(),
            ))
        })
        .collect()
    }

    /// Ids of the running containers, sorted.
    pub fn running(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .containers()
            .into_iter()
            .filter(|(_, state, _)| state == "running")
            .map(|(id, _, _)| id)
            .collect();
        ids.sort();
        ids
    }

    /// Wait until exactly `n` containers exist, all running and healthy
    /// enough to have registered a worker; returns their ids.
    pub async fn wait_running(&self, n: usize, timeout: Duration) -> Vec<String> {
        wait_until(timeout, &format!("{n} running containers"), || {
            let all = self.containers();
            let running = self.running();
            async move { (all.len() == n && running.len() == n).then_some(running) }
        })
        .await
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        for (id, _, _) in self.containers() {
            let _ = docker(&["rm", "-f", "-v", &id]);
        }
        let filter = format!("name=^{}-work-", self.name);
        if let Ok(volumes) = docker(&["volume", "ls", "-q", "--filter", &filter]) {
            for volume in volumes.lines() {
                let _ = docker(&["volume", "rm", "-f", volume]);
            }
        }
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A redis-server on a free port and a unix socket (for the containers).
pub struct SocketRedis {
    pub redis: TestRedis,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl SocketRedis {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("redis.sock");
        let socket_arg = socket.display().to_string();
        let redis =
            TestRedis::start_with(&["--unixsocket", &socket_arg, "--unixsocketperm", "777"]);
        Self {
            redis,
            socket,
            _dir: dir,
        }
    }

    /// The URL the gateway uses (the socket, as the default user).
    pub fn gateway_url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Install the worker user from `switchboard redis-acl --setuser`.
    pub fn install_worker_acl(&self, config: &Path) {
        let out = Command::new(switchboard_bin())
            .args(["redis-acl", "--setuser", "--config"])
            .arg(config)
            .env("SWITCHBOARD_WORKER_REDIS_PASSWORD", WORKER_PASSWORD)
            .env_remove("SWITCHBOARD_CONFIG")
            .output()
            .expect("run redis-acl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).expect("utf-8");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&words[..3], ["ACL", "SETUSER", WORKER_USER], "{line}");
        let mut cmd = redis::cmd("ACL");
        cmd.arg(&words[1..]);
        let mut conn = self.redis.client();
        cmd.query::<()>(&mut conn).expect("ACL SETUSER");
    }
}

/// A message for a console session named after its conversation.
pub async fn ask(queue: &Queue, cid: &str, n: u32, text: &str) {
    let mut m: InboundMessage = message(cid, n);
    m.text = text.to_string();
    let dest = Destination::Console {
        session: cid.to_string(),
    };
    queue
        .enqueue(&m, &dest, EnqueueMode::CreateOrAppend)
        .await
        .expect("enqueue");
}

/// Final replies delivered to `cid`'s console session.
pub async fn console_finals(queue: &Queue, cid: &str) -> Vec<String> {
    let key = queue.keys().shard(0).console(cid);
    let mut conn = queue.connection().await.expect("conn");
    let items: Vec<String> = redis::cmd("LRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut *conn)
        .await
        .expect("lrange");
    items
        .iter()
        .filter_map(|i| serde_json::from_str::<serde_json::Value>(i).ok())
        .filter(|v| v["kind"] == "final")
        .map(|v| v["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Wait until every conversation in `cids` has a final reply; then check
/// none has more than one.
pub async fn all_answered_once(queue: &Queue, cids: &[String], timeout: Duration) {
    wait_until(timeout, "every conversation answered", || {
        let queue = queue.clone();
        let cids = cids.to_vec();
        async move {
            for cid in &cids {
                if console_finals(&queue, cid).await.is_empty() {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    for cid in cids {
        let finals = console_finals(queue, cid).await;
        assert_eq!(finals.len(), 1, "{cid} answered once: {finals:?}");
    }
}

/// The gateway config for a Docker pool (`containers` x 2 slots).
pub fn docker_config(
    dir: &Path,
    prefix: &str,
    guard: &PoolGuard,
    image: &str,
    containers: u32,
) -> PathBuf {
    let path = dir.join("gateway.toml");
    write_docker_config(&path, prefix, guard, image, containers, 2);
    path
}

pub fn write_docker_config(
    path: &Path,
    prefix: &str,
    guard: &PoolGuard,
    image: &str,
    containers: u32,
    slots: u32,
) {
    let text = format!(
        r#"{common}
[pool]
runtime = "docker"
containers = {containers}
slots_per_container = {slots}
drain_timeout = "10s"
image = "{image}"
[pool.docker]
name = "{name}"
network = "{name}"
memory_mib = 256
cpus = 0.5
install_acl = false
leader_ttl = "3s"
reconcile_interval = "500ms"
health_interval = "2s"
max_restart_backoff = "2s"
[agent]
interrupt_grace = "1s"
terminate_timeout = "2s"
"#,
        name = guard.name,
        common = common_config(prefix),
    );
    std::fs::write(path, text).expect("write config");
}

/// Start `switchboard gateway` managing the pool.
pub fn start_gateway(redis: &SocketRedis, config: &Path) -> ServeProcess {
    let config = config.display().to_string();
    ServeProcess::start(
        &["gateway", "--config", &config],
        &[
            ("REDIS_URL", redis.gateway_url().as_str()),
            ("SWITCHBOARD_WORKER_REDIS_PASSWORD", WORKER_PASSWORD),
            ("SLACK_BOT_TOKEN", "xoxb-secret-bot-token"),
            ("SLACK_SIGNING_SECRET", "secret-signing-secret"),
        ],
    )
}

/// A queue handle for assertions (the default user, over TCP).
pub fn assertion_queue(redis: &SocketRedis, prefix: &str) -> Queue {
    queue_on(
        &redis.redis.url(),
        prefix,
        crate::pool_support::pool_queue_settings(),
    )
}

/// The config sections every pool test shares: JSON logs, no reachable
/// Slack, the key prefix, and queue timings for a busy 2-core machine.
pub fn common_config(prefix: &str) -> String {
    format!(
        r#"
[log]
format = "json"
[slack]
api_base_url = "http://127.0.0.1:9/api/"
[redis]
key_prefix = "{prefix}"
[queue]
lease_ttl = "4s"
lease_margin = "1500ms"
reaper_interval = "200ms"
heartbeat_ttl = "3s""#
    )
}

/// Names for new conversations, remembered for checking at the end.
#[derive(Default)]
pub struct Conversations {
    pub all: Vec<String>,
    prefix: &'static str,
}

impl Conversations {
    pub fn new(prefix: &'static str) -> Self {
        Self {
            all: Vec::new(),
            prefix,
        }
    }

    /// `count` new conversation ids.
    pub fn next(&mut self, count: usize) -> Vec<String> {
        let start = self.all.len();
        let batch: Vec<String> = (start..start + count)
            .map(|i| format!("{}{}", self.prefix, i + 1))
            .collect();
        self.all.extend(batch.clone());
        batch
    }
}
