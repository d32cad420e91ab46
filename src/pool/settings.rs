//! `[pool]`: how many worker containers, how many slots each, and how slots
//! are kept warm.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The most slots one worker container can run.
pub const MAX_SLOTS: u32 = 256;

/// Who starts the pool's worker containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolRuntime {
    /// `serve` starts `pool.containers` local `switchboard worker` processes.
    Process,
    /// The gateway keeps `pool.containers` worker containers running from
    /// `pool.image` through the Docker engine API (one gateway at a time
    /// manages them, by a leader lease in Redis).
    Docker,
    /// Workers are started by something else (Kubernetes, compose, by hand);
    /// the gateway only watches them.
    External,
}

/// `[pool]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Who starts worker containers: "process", "docker" or "external".
    pub runtime: PoolRuntime,
    /// Worker containers (with the process runtime: worker processes).
    pub containers: u32,
    /// Agent processes ("slots") kept warm per container.
    pub slots_per_container: u32,
    /// Keep at least this many slots fresh (started, no conversation) when
    /// possible, by evicting the least recently used idle conversation.
    pub min_fresh: u32,
    /// A slot holding a conversation idle this long is restarted fresh (the
    /// conversation resumes from its stored session when it comes back).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// On shutdown, how long running turns may take to finish before they
    /// are interrupted (their conversations then run elsewhere).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The worker image (Docker runtime): docker/Dockerfile's `worker` or
    /// `worker-prebuilt` target.
    pub image: String,
    /// The Redis user workers connect as: limited to the queue's keys and
    /// the commands workers use (`switchboard redis-acl` prints it). Its
    /// password comes from `SWITCHBOARD_WORKER_REDIS_PASSWORD`.
    pub worker_redis_user: String,
    /// File holding the worker user's password, read when
    /// `SWITCHBOARD_WORKER_REDIS_PASSWORD` is unset.
    pub worker_redis_password_file: Option<std::path::PathBuf>,
    /// The Docker runtime's settings.
    pub docker: DockerSettings,
}

/// `[pool.docker]`: how the Docker runtime runs worker containers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerSettings {
    /// The engine's API socket.
    pub host: String,
    /// The pool's name: the `switchboard.pool` label that marks its
    /// containers, and the prefix of their names and volumes. Two pools on
    /// one engine need two names.
    pub name: String,
    /// The pool's own Docker network (created when missing).
    pub network: String,
    /// Memory limit per container, in MiB (agents and their tools included).
    pub memory_mib: u64,
    /// CPU limit per container, in cores (fractions allowed).
    pub cpus: f64,
    /// Most processes per container (fork bombs from tools stop there).
    pub pids_limit: i64,
    /// Redis's unix socket on this host, mounted into the containers so
    /// workers reach Redis without any network. Unset: the socket of
    /// REDIS_URL when it is a unix socket (as with `serve`'s own Redis);
    /// otherwise set `WORKER_REDIS_URL` to an address the containers reach
    /// on the pool's network.
    pub redis_socket: Option<std::path::PathBuf>,
    /// Create or update the worker Redis user at start (needs a Redis user
    /// allowed to run ACL SETUSER, as `serve`'s own Redis has).
    pub install_acl: bool,
    /// How long a gateway's lease on managing the pool lasts unrenewed; the
    /// next gateway takes over this long after the manager dies.
    #[serde(with = "humantime_serde")]
    pub leader_ttl: Duration,
    /// How often the manager compares the containers with the wanted pool.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Container health check interval (`switchboard worker-alive`).
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// Longest wait before restarting a container that keeps failing.
    #[serde(with = "humantime_serde")]
    pub max_restart_backoff: Duration,
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            host: "unix:///var/run/docker.sock".into(),
            name: "switchboard".into(),
            network: "switchboard-pool".into(),
            memory_mib: 2048,
            cpus: 1.0,
            pids_limit: 1024,
            redis_socket: None,
            install_acl: true,
            leader_ttl: Duration::from_secs(15),
            reconcile_interval: Duration::from_secs(2),
            health_interval: Duration::from_secs(10),
            max_restart_backoff: Duration::from_secs(60),
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            runtime: PoolRuntime::Process,
            containers: 1,
            slots_per_container: 2,
            min_fresh: 1,
            idle_timeout: Duration::from_secs(30 * 60),
            drain_timeout: Duration::from_secs(20),
            image: "switchboard-worker:latest".into(),
            worker_redis_user: "switchboard-worker".into(),
            worker_redis_password_file: None,
            docker: DockerSettings::default(),
        }
    }
}

impl PoolSettings {
    /// Checks beyond the types; returns (field, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.slots_per_container == 0 || self.slots_per_container > MAX_SLOTS {
            return Err((
                "pool.slots_per_container",
                format!("must be 1 to {MAX_SLOTS}"),
            ));
        }
        if self.containers > 1024 {
            return Err(("pool.containers", "must be at most 1024".into()));
        }
        if self.min_fresh > self.slots_per_container {
            return Err((
                "pool.min_fresh",
                "cannot exceed pool.slots_per_container".into(),
            ));
        }
        crate::store::acl::check_user(&self.worker_redis_user)
            .map_err(|e| ("pool.worker_redis_user", e.to_string()))?;
        let docker = &self.docker;
        if docker.name.is_empty()
            || !docker
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err((
                "pool.docker.name",
                "must be letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if docker.memory_mib < 64 {
            return Err(("pool.docker.memory_mib", "must be at least 64".into()));
        }
        if !(docker.cpus > 0.0 && docker.cpus <= 1024.0) {
            return Err((
                "pool.docker.cpus",
                "must be above 0 and at most 1024".into(),
            ));
        }
        if docker.leader_ttl < Duration::from_secs(1)
            || docker.reconcile_interval.is_zero()
            || docker.health_interval < Duration::from_secs(1)
        {
            return Err((
                "pool.docker.leader_ttl",
                "leader_ttl and health_interval must be at least 1s, reconcile_interval above 0"
                    .into(),
            ));
        }
        if self.runtime == PoolRuntime::Docker && self.image.is_empty() {
            return Err(("pool.image", "the Docker runtime needs an image".into()));
        }
        Ok(())
    }
}
