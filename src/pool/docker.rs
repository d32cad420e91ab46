//! The Docker runtime: the gateway keeps `pool.containers` worker containers
//! running from `pool.image` through the Docker engine API.
//!
//! - Ownership: containers carry the labels `switchboard.pool=<name>` and
//!   `switchboard.index=<i>`; whatever runs with the pool's label is adopted,
//!   so a restarted gateway neither duplicates nor loses containers. Extra
//!   ones (an index past the pool's size, a second container for an index)
//!   are drained and removed.
//! - One manager: with several gateways, the one holding the `pool` lease in
//!   Redis manages; another takes over when the lease lapses.
//! - Sandbox: each container gets memory, CPU and process limits, a work
//!   volume for its slots, a health check (`switchboard worker-alive`), the
//!   config as a file, and in its environment only the worker Redis user's
//!   URL and the agent's API key.
//! - Restarts: a container that exits or turns unhealthy is removed and
//!   started again after a backoff that doubles per failure (counted in
//!   `switchboard_pool_container_restarts_total`).
//! - Resizing: the wanted shape comes from a watch channel (config reloads);
//!   the manager publishes it in Redis, where workers read their slot count.
//! - Shutdown: the manager hands the lease on; when no other gateway is
//!   there to take over, it drains and stops its containers.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HealthConfig, HostConfig,
    Mount, MountType, NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::DockerSettings;
use crate::config::Secret;
use crate::queue::{PoolShape, Queue};
use crate::store::acl::CONTAINER_SOCKET_DIR;

/// Label: which pool a container belongs to.
pub const POOL_LABEL: &str = "switchboard.pool";
/// Label: the container's place in the pool (0-based).
pub const INDEX_LABEL: &str = "switchboard.index";
/// Where the worker's config file is put inside a container.
const CONFIG_PATH: &str = "/etc/switchboard/worker.toml";
/// Where the work volume is mounted (the image's data directory).
const WORK_DIR: &str = "/var/lib/switchboard/data";
/// How long a published shape lasts unrefreshed.
const SHAPE_TTL: Duration = Duration::from_secs(30);
/// A container up this long has its failure count forgotten.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Why the Docker runtime cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine at {host}: {detail}")]
    Unreachable { host: String, detail: String },
    #[error(
        "the worker image {image} is not on this Docker engine ({detail}); build it from \
         docker/Dockerfile (see docker/README.md) or set pool.image"
    )]
    NoImage { image: String, detail: String },
    #[error("Docker engine: {0}")]
    Engine(#[from] bollard::errors::Error),
    #[error("cannot pack the worker config: {0}")]
    Pack(#[from] std::io::Error),
}

/// What the runtime needs besides its settings.
pub struct DockerRuntimeParts {
    pub queue: Queue,
    pub settings: DockerSettings,
    pub image: String,
    /// This gateway's name in the leader lease.
    pub holder: String,
    /// The worker's Redis URL, as seen from inside a container.
    pub redis_url: Secret,
    /// Redis's unix socket on this host, mounted into each container.
    pub redis_socket: Option<PathBuf>,
    /// The agents' API key, when set.
    pub agent_api_key: Option<Secret>,
    /// The worker's config (no secrets in it).
    pub config_toml: String,
    /// How long a worker may take to drain and stop.
    pub stop_timeout: Duration,
}

/// A connected Docker runtime, ready to run.
pub struct DockerRuntime {
    docker: Docker,
    parts: Arc<DockerRuntimeParts>,
}

impl DockerRuntime {
    /// Connect to the engine and check the image and network; a missing or
    /// unreachable engine is an error here, not a hang later.
    pub async fn connect(parts: DockerRuntimeParts) -> Result<Self, DockerError> {
        let host = parts.settings.host.clone();
        let unreachable = |detail: String| DockerError::Unreachable {
            host: host.clone(),
            detail,
        };
        let path = host.strip_prefix("unix://").unwrap_or(&host);
        let docker = Docker::connect_with_unix(path, 30, bollard::API_DEFAULT_VERSION)
            .map_err(|e| unreachable(e.to_string()))?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| unreachable("no answer within 10s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::time::timeout(Duration::from_secs(10), docker.ping())
            .await
            .map_err(|_| unreachable("no answer within 10s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        if let Err(e) = docker.inspect_image(&parts.image).await {
            return Err(DockerError::NoImage {
                image: parts.image.clone(),
                detail: e.to_string(),
            });
        }
        let runtime = Self {
            docker,
            parts: Arc::new(parts),
        };
        runtime.ensure_network().await?;
        Ok(runtime)
    }

    async fn ensure_network(&self) -> Result<(), DockerError> {
        let settings = &self.parts.settings;
        if self
            .docker
            .inspect_network(&settings.network, None)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let request = NetworkCreateRequest {
            name: settings.network.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(POOL_LABEL.into(), settings.name.clone())])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => {
                tracing::info!(network = %settings.network, "created the pool's Docker network");
                Ok(())
            }
            // Another gateway created it meanwhile.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Manage the pool (when leading) until `shutdown`.
    pub async fn run(self, shape: watch::Receiver<PoolShape>, shutdown: CancellationToken) {
        let mut manager = Manager {
            docker: self.docker,
            parts: self.parts,
            shape,
            leading: false,
            decided: false,
            backoff: HashMap::new(),
            stopping: Arc::new(Mutex::new(HashSet::new())),
            drains: TaskTracker::new(),
        };
        manager.run(shutdown).await;
    }
}

/// Failures of one index, for the restart backoff.
#[derive(Debug, Default, Clone, Copy)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

struct Manager {
    docker: Docker,
    parts: Arc<DockerRuntimeParts>,
    shape: watch::Receiver<PoolShape>,
    leading: bool,
    /// Whether leadership was decided once (so a follower says so too).
    decided: bool,
    backoff: HashMap<u32, Backoff>,
    /// Containers being drained and removed (ids).
    stopping: Arc<Mutex<HashSet<String>>>,
    drains: TaskTracker,
}

impl Manager {
    async fn run(&mut self, shutdown: CancellationToken) {
        let settings = self.parts.settings.clone();
        let renew_every = settings.leader_ttl / 3;
        let mut last_renew: Option<Instant> = None;
        // What was last published, and when: published again on a change,
        // or with the lease renewal so it does not lapse.
        let mut published: Option<PoolShape> = None;
        loop {
            let renewing = last_renew.is_none_or(|t| t.elapsed() >= renew_every);
            if renewing {
                self.renew_lease().await;
                last_renew = Some(Instant::now());
            }
            if self.leading {
                let shape = *self.shape.borrow_and_update();
                if renewing || published != Some(shape) {
                    match self.parts.queue.set_pool_shape(shape, SHAPE_TTL).await {
                        Ok(()) => published = Some(shape),
                        Err(e) => tracing::warn!(error = %e, "cannot publish the pool's shape"),
                    }
                }
                if let Err(e) = self.reconcile(shape.containers).await {
                    tracing::warn!(error = %e, "could not bring the pool to its size; retrying");
                }
            }
            let wait = settings.reconcile_interval.min(renew_every);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.shape.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.stop().await;
    }

    /// Take or keep the lease; say we are alive as a possible manager.
    async fn renew_lease(&mut self) {
        let (queue, holder) = (&self.parts.queue, &self.parts.holder);
        let ttl = self.parts.settings.leader_ttl;
        if let Err(e) = queue.pool_manager_alive(holder, Some(ttl * 2)).await {
            tracing::debug!(error = %e, "manager liveness not recorded");
        }
        let leading = match queue.lead("pool", 0, holder, ttl).await {
            Ok(leading) => leading,
            Err(e) => {
                // Without Redis we cannot know; stop acting until we can.
                tracing::warn!(error = %e, "cannot renew the pool lease");
                false
            }
        };
        if leading != self.leading || !self.decided {
            self.decided = true;
            if leading {
                tracing::info!(holder = %holder, "managing the Docker pool");
            } else {
                tracing::info!(holder = %holder, "another gateway manages the Docker pool");
            }
        }
        metrics::gauge!("switchboard_pool_manager").set(if leading { 1.0 } else { 0.0 });
        self.leading = leading;
    }

    /// The pool's containers, by index; strays (bad labels) under `None`.
    async fn list(&self) -> Result<Vec<(Option<u32>, ContainerSummary)>, DockerError> {
        let filters = HashMap::from([(
            "label",
            vec![format!("{POOL_LABEL}={}", self.parts.settings.name)],
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self.docker.list_containers(Some(options)).await?;
        Ok(containers
            .into_iter()
            .map(|c| {
                let index = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(INDEX_LABEL))
                    .and_then(|i| i.parse().ok());
                (index, c)
            })
            .collect())
    }

    /// Compare the containers with the wanted count and act.
    async fn reconcile(&mut self, wanted: u32) -> Result<(), DockerError> {
        let containers = self.list().await?;
        let stopping = lock(&self.stopping).clone();
        let mut kept: HashMap<u32, String> = HashMap::new();
        let mut running = 0;
        // Running ones first, so a duplicate index keeps the live container.
        let mut ordered = containers;
        ordered.sort_by_key(|(_, c)| !is_running(c));
        for (index, container) in ordered {
            let Some(id) = container.id.clone() else {
                continue;
            };
            if stopping.contains(&id) {
                continue;
            }
            match index {
                Some(i) if i < wanted && !kept.contains_key(&i) => {
                    if let Some(reason) = failed(&container) {
                        self.replace(i, &id, reason).await;
                    } else {
                        if is_running(&container)
                            && created_ago(&container).is_some_and(|d| d >= STABLE_AFTER)
                        {
                            self.backoff.remove(&i);
                        }
                        running += 1;
                        kept.insert(i, id);
                    }
                }
                Some(i) if i >= wanted => self.drain(id, Some(i), "the pool shrank"),
                _ => self.drain(id, None, "a stray or duplicate container"),
            }
        }
        metrics::gauge!("switchboard_pool_containers").set(f64::from(running));
        for i in 0..wanted {
            if kept.contains_key(&i) {
                continue;
            }
            let backoff = self.backoff.get(&i).copied().unwrap_or_default();
            if backoff.not_before.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            if let Err(e) = self.start(i).await {
                tracing::error!(index = i, error = %e, "cannot start a worker container");
                self.note_failure(i);
            }
        }
        Ok(())
    }

    /// Remove a failed container; it is started again after the backoff.
    async fn replace(&mut self, index: u32, id: &str, reason: &'static str) {
        metrics::counter!("switchboard_pool_container_restarts_total", "reason" => reason)
            .increment(1);
        tracing::warn!(index, container = %short(id), reason, "worker container failed; replacing it");
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        if let Err(e) = self.docker.remove_container(id, Some(options)).await {
            tracing::warn!(container = %short(id), error = %e, "cannot remove a failed container");
        }
        self.note_failure(index);
    }

    fn note_failure(&mut self, index: u32) {
        let max = self.parts.settings.max_restart_backoff;
        let entry = self.backoff.entry(index).or_default();
        let delay = Duration::from_millis(500)
            .saturating_mul(1 << entry.failures.min(16))
            .min(max);
        entry.failures += 1;
        entry.not_before = Some(Instant::now() + delay);
        tracing::info!(
            index,
            ?delay,
            failures = entry.failures,
            "next start after a backoff"
        );
    }

    /// Create, configure and start the container for `index`.
    async fn start(&self, index: u32) -> Result<(), DockerError> {
        let parts = &self.parts;
        let settings = &parts.settings;
        let name = format!("{}-worker-{index}", settings.name);
        let mut env = vec![format!("REDIS_URL={}", parts.redis_url.expose())];
        if let Some(key) = &parts.agent_api_key {
            env.push(format!("ANTHROPIC_API_KEY={}", key.expose()));
        }
        let mut mounts = vec![Mount {
            target: Some(WORK_DIR.into()),
            source: Some(format!("{}-work-{index}", settings.name)),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        }];
        if let Some(socket) = &parts.redis_socket {
            let file = socket
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "redis.sock".into());
            mounts.push(Mount {
                target: Some(format!("{CONTAINER_SOCKET_DIR}/{file}")),
                source: Some(socket.display().to_string()),
                typ: Some(MountType::BIND),
                ..Default::default()
            });
        }
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let memory =
            i64::try_from(settings.memory_mib.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
        let body = ContainerCreateBody {
            image: Some(parts.image.clone()),
            cmd: Some(vec!["worker".into(), "--config".into(), CONFIG_PATH.into()]),
            env: Some(env),
            labels: Some(HashMap::from([
                (POOL_LABEL.into(), settings.name.clone()),
                (INDEX_LABEL.into(), index.to_string()),
            ])),
            healthcheck: Some(HealthConfig {
                test: Some(vec![
                    "CMD".into(),
                    "/usr/local/bin/switchboard".into(),
                    "worker-alive".into(),
                    "--config".into(),
                    CONFIG_PATH.into(),
                ]),
                interval: Some(nanos(settings.health_interval)),
                timeout: Some(nanos(Duration::from_secs(5))),
                retries: Some(3),
                start_period: Some(nanos(Duration::from_secs(30))),
                ..Default::default()
            }),
            stop_timeout: Some(i64::try_from(parts.stop_timeout.as_secs() + 1).unwrap_or(60)),
            host_config: Some(HostConfig {
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some((settings.cpus * 1e9) as i64),
                pids_limit: Some(settings.pids_limit),
                init: Some(true),
                network_mode: Some(settings.network.clone()),
                mounts: Some(mounts),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            }) => {
                // A container of that name exists but was not listed as
                // ours (a lagging removal): look again next round.
                tracing::info!(%name, %message, "container name taken; retrying next round");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let tar = pack_config(&parts.config_toml)?;
        let upload = UploadToContainerOptionsBuilder::new().path("/").build();
        let started = async {
            self.docker
                .upload_to_container(&created.id, Some(upload), bollard::body_full(tar.into()))
                .await?;
            self.docker.start_container(&created.id, None).await
        }
        .await;
        if let Err(e) = started {
            let options = RemoveContainerOptionsBuilder::new().force(true).build();
            let _ = self
                .docker
                .remove_container(&created.id, Some(options))
                .await;
            return Err(e.into());
        }
        tracing::info!(index, container = %short(&created.id), %name, "worker container started");
        Ok(())
    }

    /// Stop a container gracefully (the worker drains) and remove it, in
    /// the background; with `index`, its work volume goes too.
    fn drain(&self, id: String, index: Option<u32>, why: &'static str) {
        if !lock(&self.stopping).insert(id.clone()) {
            return;
        }
        tracing::info!(container = %short(&id), ?index, why, "draining a worker container");
        let docker = self.docker.clone();
        let stopping = self.stopping.clone();
        let timeout = self.parts.stop_timeout;
        let volume = index.map(|i| format!("{}-work-{i}", self.parts.settings.name));
        self.drains.spawn(async move {
            stop_and_remove(&docker, &id, timeout).await;
            if let Some(volume) = volume {
                let options = RemoveVolumeOptionsBuilder::new().force(true).build();
                if let Err(e) = docker.remove_volume(&volume, Some(options)).await {
                    tracing::debug!(%volume, error = %e, "work volume not removed");
                }
            }
            lock(&stopping).remove(&id);
        });
    }

    /// On shutdown: hand the lease on; if no other gateway can take over,
    /// drain and stop every container.
    async fn stop(&mut self) {
        let (queue, holder) = (&self.parts.queue, &self.parts.holder);
        let others = match queue.pool_manager_alive(holder, None).await {
            Ok(others) => others,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether another gateway takes over");
                0
            }
        };
        if self.leading {
            if let Err(e) = queue.release_lead("pool", holder).await {
                tracing::warn!(error = %e, "cannot release the pool lease; it will lapse");
            }
            if others > 0 {
                tracing::info!(
                    others,
                    "leaving the worker containers to the other gateways"
                );
            } else {
                match self.list().await {
                    Ok(containers) => {
                        for (_, c) in containers {
                            if let Some(id) = c.id {
                                self.drain(id, None, "the gateway is stopping");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot list the pool's containers"),
                }
            }
        }
        self.drains.close();
        self.drains.wait().await;
    }
}

async fn stop_and_remove(docker: &Docker, id: &str, timeout: Duration) {
    let secs = i32::try_from(timeout.as_secs() + 1).unwrap_or(i32::MAX);
    let options = StopContainerOptionsBuilder::new().t(secs).build();
    if let Err(e) = docker.stop_container(id, Some(options)).await {
        tracing::debug!(container = %short(id), error = %e, "stop");
    }
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => tracing::info!(container = %short(id), "worker container removed"),
        Err(e) => tracing::warn!(container = %short(id), error = %e, "cannot remove a container"),
    }
}

/// Why a container must be replaced, if it must.
fn failed(c: &ContainerSummary) -> Option<&'static str> {
    match c.state {
        Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD) => Some("exited"),
        Some(ContainerSummaryStateEnum::CREATED)
            if created_ago(c).is_some_and(|d| d > Duration::from_secs(30)) =>
        {
            Some("never started")
        }
        _ if c
            .status
            .as_deref()
            .is_some_and(|s| s.contains("(unhealthy)")) =>
        {
            Some("unhealthy")
        }
        _ => None,
    }
}

fn is_running(c: &ContainerSummary) -> bool {
    matches!(
        c.state,
        Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::RESTARTING)
    )
}

fn created_ago(c: &ContainerSummary) -> Option<Duration> {
    let created = u64::try_from(c.created?).ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(now.saturating_sub(created)))
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A tar holding `etc/switchboard/worker.toml` (mode 0644).
fn pack_config(toml: &str) -> Result<Vec<u8>, std::io::Error> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder.append_data(&mut dir, "etc/switchboard/", std::io::empty())?;
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o644);
    file.set_size(toml.len() as u64);
    builder.append_data(
        &mut file,
        CONFIG_PATH.trim_start_matches('/'),
        toml.as_bytes(),
    )?;
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_tar_holds_the_file() {
        let tar = pack_config("a = 1\n").expect("tar");
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut found = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).expect("read");
            found.push((path, text));
        }
        assert_eq!(
            found,
            vec![
                ("etc/switchboard/".to_string(), String::new()),
                (
                    "etc/switchboard/worker.toml".to_string(),
                    "a = 1\n".to_string()
                ),
            ]
        );
    }

    #[test]
    fn exited_and_unhealthy_containers_are_replaced_healthy_ones_kept() {
        let with = |state, status: &str| ContainerSummary {
            state: Some(state),
            status: Some(status.into()),
            ..Default::default()
        };
        assert_eq!(
            failed(&with(ContainerSummaryStateEnum::EXITED, "Exited (137)")),
            Some("exited")
        );
        assert_eq!(
            failed(&with(
                ContainerSummaryStateEnum::RUNNING,
                "Up 2 minutes (unhealthy)"
            )),
            Some("unhealthy")
        );
        assert_eq!(
            failed(&with(
                ContainerSummaryStateEnum::RUNNING,
                "Up 2 minutes (healthy)"
            )),
            None
        );
    }
}
