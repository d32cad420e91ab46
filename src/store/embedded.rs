//! The embedded default: when no Redis URL is configured, `serve` runs its
//! own redis-server on a unix socket in its data directory, with the
//! append-only file fsynced on every write, so an acknowledged message is on
//! disk. It is stopped when Switchboard stops, and cannot outlive it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::config::{RedisSettings, Secret};
use crate::process::{self, ChildOptions};

/// A redis-server child process.
#[derive(Debug)]
pub struct EmbeddedRedis {
    child: Child,
    url: Secret,
    log_path: PathBuf,
    /// Held while it runs: a second `serve` on the same data directory
    /// would otherwise take over (and later delete) this one's socket.
    _lock: std::fs::File,
}

/// Why the embedded redis-server could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "`{0}` was not found on PATH: install Redis (Debian/Ubuntu: `apt-get install \
         redis-server`), or set REDIS_URL to use a Redis you run"
    )]
    NotInstalled(PathBuf),
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("redis-server exited during start-up ({status}); its log {log} ends with:\n{tail}")]
    Exited {
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "another `switchboard serve` already runs its Redis in {0}; stop it, or give this one \
         another redis.data_dir"
    )]
    InUse(PathBuf),
    #[error("redis-server did not answer on {socket} within {timeout:?}")]
    NotReady { socket: PathBuf, timeout: Duration },
}

const START_TIMEOUT: Duration = Duration::from_secs(15);

impl EmbeddedRedis {
    /// Start redis-server in `settings.data_dir` and wait until it answers.
    pub async fn start(settings: &RedisSettings) -> Result<Self, EmbeddedError> {
        let dir = absolute(&settings.data_dir).map_err(|source| EmbeddedError::DataDir {
            path: settings.data_dir.clone(),
            source,
        })?;
        let lock = lock_dir(&dir)?;
        let socket = dir.join("redis.sock");
        let log_path = dir.join("redis.log");
        let mut command = Command::new(&settings.server_binary);
        command
            .args(["--port", "0", "--unixsocketperm", "700"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log_path)
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--maxmemory-policy", "noeviction"])
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        process::configure(
            &mut command,
            ChildOptions {
                own_process_group: true,
                parent_death_signal: Some(libc::SIGTERM),
            },
        );
        let child = command.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                EmbeddedError::NotInstalled(settings.server_binary.clone())
            } else {
                EmbeddedError::Spawn {
                    program: settings.server_binary.clone(),
                    source,
                }
            }
        })?;
        let url = Secret::new(format!("unix://{}", socket.display()));
        let mut redis = Self {
            child,
            url,
            log_path,
            _lock: lock,
        };
        redis.wait_ready(&socket).await?;
        tracing::info!(socket = %socket.display(), "embedded redis-server started");
        Ok(redis)
    }

    /// The URL clients use to reach it.
    pub fn url(&self) -> &Secret {
        &self.url
    }

    /// The process id, for tests and diagnostics.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn wait_ready(&mut self, socket: &Path) -> Result<(), EmbeddedError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(EmbeddedError::Exited {
                    status,
                    log: self.log_path.clone(),
                    tail: log_tail(&self.log_path),
                });
            }
            if socket.exists() && ping(&self.url).await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(EmbeddedError::NotReady {
                    socket: socket.to_path_buf(),
                    timeout: START_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop it: SIGTERM (Redis flushes and exits), SIGKILL after `timeout`.
    pub async fn stop(mut self, timeout: Duration) {
        process::terminate(&mut self.child, timeout).await;
        tracing::info!("embedded redis-server stopped");
    }
}

async fn ping(url: &Secret) -> bool {
    let Ok(client) = redis::Client::open(url.expose()) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok()
}

/// Take an exclusive lock on `dir/lock` for as long as the file is open.
fn lock_dir(dir: &Path) -> Result<std::fs::File, EmbeddedError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| EmbeddedError::DataDir { path, source })?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        return Err(EmbeddedError::InUse(dir.to_path_buf()));
    }
    Ok(file)
}

fn absolute(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    dir.canonicalize()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}
