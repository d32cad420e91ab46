//! The processes a run starts: redis-servers, `switchboard serve` stacks,
//! the reference server. Each is stopped (SIGTERM, then SIGKILL) when its
//! guard drops, so a failed phase leaves nothing behind; only processes
//! started here are ever signalled, by their pid.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The programs a run needs (all from one target directory).
#[derive(Debug, Clone)]
pub struct Bins {
    pub switchboard: PathBuf,
    pub agent: PathBuf,
    pub bench: PathBuf,
}

impl Bins {
    /// `switchboard`, `stand-in-agent` and `switchboard-bench` in `dir`.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let bins = Self {
            switchboard: dir.join("switchboard"),
            agent: dir.join("stand-in-agent"),
            bench: dir.join("switchboard-bench"),
        };
        for path in [&bins.switchboard, &bins.agent, &bins.bench] {
            if !path.is_file() {
                bail!(
                    "{} is missing: build with `cargo build --release --bins --workspace` first",
                    path.display()
                );
            }
        }
        Ok(bins)
    }
}

/// A child process, stopped on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    stopped: bool,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command) -> anyhow::Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns whether it exited
    /// on its own (after SIGTERM).
    pub fn stop(&mut self, grace: Duration) -> bool {
        if self.stopped {
            return true;
        }
        self.stopped = true;
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by its pid; it is not reaped yet
        // (we still hold the Child), so the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Not reaped yet: killing by pid is still safe. Ignored errors mean
        // it exited in between, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// A free loopback port (bound then released; fine on a quiet loopback).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding port 0")?;
    Ok(listener.local_addr()?.port())
}

/// A process that exited before it was ready: most often a port that
/// [`free_port`] handed out was taken by another socket before the
/// process bound it.
#[derive(Debug)]
pub struct ExitedEarly(pub String);

impl std::fmt::Display for ExitedEarly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} exited before it was ready", self.0)
    }
}

impl std::error::Error for ExitedEarly {}

/// Wait until `check` holds while `proc` runs: fails at once with
/// [`ExitedEarly`] when it exits, else after `timeout`.
pub async fn wait_while_running<F, Fut>(
    proc: &mut Proc,
    what: &str,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if !proc.alive() {
            return Err(ExitedEarly(what.to_string()).into());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Start something that listens on ports from [`free_port`]; when it
/// exits before it is ready, start it again (on new ports), up to three
/// times in all.
pub async fn with_port_retries<T, F, Fut>(mut start: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match start().await {
            Err(e) if tries < 3 && e.downcast_ref::<ExitedEarly>().is_some() => {
                eprintln!("  {e:#}; starting it again on other ports");
            }
            other => return other,
        }
    }
}

/// Wait until `check` holds, polling, or fail after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A redis-server on a free loopback port, without persistence.
pub struct Redis {
    pub proc: Proc,
    pub url: String,
}

impl Redis {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        with_port_retries(|| Self::start_once(dir)).await
    }

    async fn start_once(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let mut proc = Proc::spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir)
                .stdout(Stdio::null()),
        )?;
        let url = format!("redis://127.0.0.1:{port}/");
        let client = redis::Client::open(url.as_str())?;
        wait_while_running(&mut proc, "redis-server", Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                match client.get_multiplexed_async_connection().await {
                    Ok(mut c) => redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await?;
        Ok(Self { proc, url })
    }

    /// Redis INFO commandstats (commands run inside scripts are counted too):
    /// (command, calls, total µs), most time first.
    pub async fn commandstats(&self) -> Vec<(String, u64, f64)> {
        let info = self.info("commandstats").await;
        let mut out: Vec<(String, u64, f64)> = info
            .lines()
            .filter_map(|line| {
                let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let field = |key: &str| {
                    fields
                        .split(',')
                        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                };
                Some((
                    name.to_string(),
                    field("calls")?.parse().ok()?,
                    field("usec")?.parse().ok()?,
                ))
            })
            .collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        out
    }

    /// Redis INFO stats counters that show its round trips: reads and
    /// writes it made on client sockets, and connections it accepted.
    pub async fn io_counts(&self) -> Vec<(String, u64)> {
        let info = self.info("stats").await;
        [
            "total_reads_processed",
            "total_writes_processed",
            "total_connections_received",
        ]
        .iter()
        .filter_map(|key| {
            let value = info
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
    }

    /// One section of Redis INFO (empty when Redis cannot be reached).
    async fn info(&self, section: &str) -> String {
        let Ok(mut conn) = self.connection().await else {
            return String::new();
        };
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut conn)
            .await
            .unwrap_or_default()
    }

    pub async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection()
            .await?)
    }
}

/// Resident memory of `pid` in KiB (0 when gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Direct children of `pid` (from /proc), with their command names.
pub fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces; split after ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push((child, comm));
        }
    }
    out
}

/// An HTTP GET that answers 200, within a short timeout.
pub async fn get_ok(http: &reqwest::Client, addr: SocketAddr, path: &str) -> bool {
    http.get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// CPU time `pid` has used (user + system), in seconds; 0 when gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_seconds(pid, 11)
}

/// CPU time of `pid`'s children that it has waited for, in seconds.
pub fn reaped_children_seconds(pid: u32) -> f64 {
    stat_seconds(pid, 13)
}

/// CPU time of the stand-in agents `pid` started: those still running
/// and those it has reaped (all its reaped children, in fact).
pub fn agents_seconds(pid: u32) -> f64 {
    reaped_children_seconds(pid)
        + children(pid)
            .iter()
            .filter(|(_, comm)| comm.starts_with("stand-in"))
            .map(|(child, _)| cpu_seconds(*child))
            .sum::<f64>()
}

/// Fields `first` and `first + 1` after the state in /proc/<pid>/stat, as
/// seconds (utime and stime at 11, cutime and cstime at 13); 0 when gone.
fn stat_seconds(pid: u32, first: usize) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after "(comm)": state is the 1st, utime the 12th, stime the 13th.
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports these in USER_HZ, 100 on every platform we run on.
    (ticks(first) + ticks(first + 1)) / 100.0
}

/// CPU time the whole machine has been busy (every state but idle and
/// iowait, summed over cores), in seconds; 0 when unreadable.
pub fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let ticks: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, t)| t)
        .sum();
    busy / 100.0
}

/// valgrind's arguments for a callgrind run writing to `out`. One-time
/// initialisations (`OnceCell`s) are not counted: one of them, quanta's
/// clock calibration behind the metrics exporter, loops on the clock for up
/// to 200 ms, so its count varies from run to run by more than an event's
/// cost, and "large run minus small run" would not cancel it.
pub fn callgrind_args(out: &Path) -> Vec<String> {
    vec![
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out.display()),
        "--toggle-collect=*OnceCell*initialize*".into(),
        // After --toggle-collect, which would turn collection off at start.
        "--collect-atstart=yes".into(),
    ]
}

/// Commandstats as JSON rows for the raw results.
pub fn commandstats_json(stats: &[(String, u64, f64)]) -> serde_json::Value {
    stats
        .iter()
        .map(|(c, calls, usec)| serde_json::json!({"command": c, "calls": calls, "usec": usec}))
        .collect()
}
