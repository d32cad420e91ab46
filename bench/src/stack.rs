//! One Switchboard under test: its own redis-server, `switchboard serve`
//! (or `gateway`) pointed at it with `REDIS_URL`, a config file written
//! for the bench, stand-in agents logging to a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use switchboard::config::{RedisSettings, Secret};
use switchboard::queue::{Queue, QueueSettings};

use crate::events::{BOT_TOKEN, SIGNING_SECRET};
use crate::procs::{
    Bins, Proc, Redis, children, free_port, get_ok, rss_kib, wait_for, wait_while_running,
    with_port_retries,
};

pub const PREFIX: &str = "bench";

/// How to configure one stack.
#[derive(Debug, Clone)]
pub struct StackSpec {
    pub name: String,
    /// `serve` (gateway and workers) or `gateway` (no workers).
    pub role: &'static str,
    pub slots: u32,
    pub min_fresh: u32,
    /// STAND_IN_THINK_MS of every agent.
    pub think_ms: u64,
    /// Log the worker's claim/commit times (`switchboard::timing=debug`).
    pub timing_log: bool,
    /// egress.ack_reaction ("" for none).
    pub ack_reaction: String,
    /// Run the gateway under `valgrind --tool=callgrind`, writing here.
    pub callgrind_out: Option<PathBuf>,
}

impl StackSpec {
    pub fn serve(name: &str, slots: u32, min_fresh: u32) -> Self {
        Self {
            name: name.to_string(),
            role: "serve",
            slots,
            min_fresh,
            think_ms: 0,
            timing_log: false,
            ack_reaction: "eyes".into(),
            callgrind_out: None,
        }
    }
}

/// A running stack.
pub struct Stack {
    pub spec: StackSpec,
    pub dir: PathBuf,
    pub gateway: SocketAddr,
    pub queue: Queue,
    pub stdin_log: PathBuf,
    pub stderr_log: PathBuf,
    // Field order is drop order: Switchboard stops before its Redis.
    pub serve: Proc,
    pub redis: Redis,
}

impl Stack {
    pub async fn start(
        bins: &Bins,
        root: &Path,
        spec: StackSpec,
        slack_api: &str,
    ) -> anyhow::Result<Self> {
        with_port_retries(|| Self::start_once(bins, root, spec.clone(), slack_api)).await
    }

    async fn start_once(
        bins: &Bins,
        root: &Path,
        spec: StackSpec,
        slack_api: &str,
    ) -> anyhow::Result<Self> {
        let dir = root.join(&spec.name);
        std::fs::create_dir_all(&dir)?;
        let redis = Redis::start(&dir.join("redis")).await?;
        let gateway: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let stdin_log = dir.join("stdin.log");
        let config = dir.join("switchboard.toml");
        std::fs::write(
            &config,
            config_text(bins, &dir, &spec, gateway, admin, slack_api),
        )?;
        let stderr_log = dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_log)?;
        let mut command = match &spec.callgrind_out {
            Some(out) => {
                let mut c = Command::new("valgrind");
                c.args(crate::procs::callgrind_args(out))
                    .arg(&bins.switchboard);
                c
            }
            None => Command::new(&bins.switchboard),
        };
        command
            .arg(spec.role)
            .arg("--config")
            .arg(&config)
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("REDIS_URL", &redis.url)
            .env("SLACK_SIGNING_SECRET", SIGNING_SECRET)
            .env("SLACK_BOT_TOKEN", BOT_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let serve = Proc::spawn(
            &format!("switchboard {} ({})", spec.role, spec.name),
            &mut command,
        )?;
        let pool = switchboard::store::connect(
            &Secret::new(redis.url.clone()),
            &RedisSettings::default(),
        )?;
        let settings = QueueSettings {
            inbox_cap: 1_000_000,
            ..QueueSettings::default()
        };
        let queue = Queue::new(pool, PREFIX, settings);
        let mut stack = Self {
            spec,
            dir,
            gateway,
            queue,
            stdin_log,
            stderr_log,
            serve,
            redis,
        };
        stack.wait_ready().await?;
        Ok(stack)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let slow = if self.spec.callgrind_out.is_some() {
            120
        } else {
            30
        };
        let gateway = self.gateway;
        let what = "the gateway's /readyz";
        wait_while_running(&mut self.serve, what, Duration::from_secs(slow), || {
            get_ok(&http, gateway, "/readyz")
        })
        .await
        .with_context(|| {
            format!(
                "stack {} (see {})",
                self.spec.name,
                self.stderr_log.display()
            )
        })?;
        if self.spec.role == "serve" {
            let want = self.spec.slots as usize;
            wait_for(
                "every slot's agent to be ready",
                // Agents start slowly on a loaded 2-core machine (debug
                // builds in CI); generous, it only bounds a stuck start.
                Duration::from_secs(120),
                || async { self.ready_pids().len() >= want },
            )
            .await?;
            // The worker marks its slots fresh just after the agents answer.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }

    /// `/slack/events` of this stack.
    pub fn events_url(&self) -> String {
        format!("http://{}/slack/events", self.gateway)
    }

    /// `(pid, ready at ns)` of every agent that has answered `initialize`.
    pub fn ready_pids(&self) -> Vec<(u32, u128)> {
        crate::agentlog::read(&self.stdin_log)
            .into_iter()
            .filter(|l| l.what == "<<ready>>")
            .map(|l| (l.pid, l.at_ns))
            .collect()
    }

    /// Resident memory (KiB): the gateway process and its worker processes.
    pub fn memory(&self) -> (u64, Vec<u64>) {
        let pid = self.serve.pid();
        let workers = children(pid)
            .into_iter()
            .filter(|(_, comm)| comm.starts_with("switchboard"))
            .map(|(p, _)| rss_kib(p))
            .collect();
        (rss_kib(pid), workers)
    }

    /// Stop Switchboard (SIGTERM, orderly), then Redis.
    pub fn stop(mut self) {
        let grace = if self.spec.callgrind_out.is_some() {
            90
        } else {
            20
        };
        self.serve.stop(Duration::from_secs(grace));
    }
}

fn config_text(
    bins: &Bins,
    dir: &Path,
    spec: &StackSpec,
    gateway: SocketAddr,
    admin: SocketAddr,
    slack_api: &str,
) -> String {
    let level = if spec.timing_log {
        "warn,switchboard::timing=debug"
    } else {
        "warn"
    };
    format!(
        r#"# Written by switchboard-bench for stack "{name}".
data_dir = "{dir}/data"
shutdown_timeout = "10s"
[log]
level = "{level}"
format = "json"
[gateway]
listen = "{gateway}"
[admin]
listen = "{admin}"
[redis]
key_prefix = "{PREFIX}"
[slack]
api_base_url = "{slack_api}"
[queue]
inbox_cap = 1000000
[pool]
runtime = "{runtime}"
slots_per_container = {slots}
min_fresh = {min_fresh}
drain_timeout = "1s"
[agent]
command = "{agent}"
slots_dir = "{dir}/slots"
turn_timeout = "30m"
silence_timeout = "30m"
interrupt_grace = "1s"
terminate_timeout = "1s"
[agent.env]
STAND_IN_STDIN_LOG = "{dir}/stdin.log"
STAND_IN_THINK_MS = "{think}"
[admission]
# Every bench event comes from one user in a few channels: the rate
# limits are checked as deployed but set out of the way.
user_per_minute = 1000000000.0
user_burst = 1000000.0
channel_per_minute = 1000000000.0
channel_burst = 1000000.0
max_waiting = 1000000000
[egress]
ack_reaction = "{ack}"
slack_calls_per_minute = 1000000000.0
slack_burst = 1000000.0
slack_posts_per_second = 1000000000.0
slack_post_burst = 1000000.0
"#,
        name = spec.name,
        dir = dir.display(),
        runtime = if spec.role == "serve" {
            "process"
        } else {
            "external"
        },
        slots = spec.slots,
        min_fresh = spec.min_fresh,
        agent = bins.agent.display(),
        think = spec.think_ms,
        ack = spec.ack_reaction,
    )
}
