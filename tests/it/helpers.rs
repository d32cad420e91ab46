//! The test harness: real redis-servers on free loopback ports, the
//! application started in-process on port 0, and polling with deadlines.
#![allow(dead_code)] // shared by every test module; not each uses every helper

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use switchboard::app::{Application, Role};
use switchboard::config::{Secret, Settings};
use tokio_util::sync::CancellationToken;

/// Turn on tracing output with `TEST_LOG=1`.
pub fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        switchboard::telemetry::init_logging(&switchboard::config::LogSettings {
            level: "debug".into(),
            ..Default::default()
        });
    }
}

/// Poll `check` until it returns `Some`, or panic after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A unique key prefix per test, so tests can share one Redis.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        test
    )
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A real redis-server on a free loopback port, stopped on drop.
pub struct TestRedis {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl TestRedis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start with extra redis-server arguments (e.g. a maxmemory-policy).
    pub fn start_with(extra: &[&str]) -> Self {
        for _ in 0..10 {
            if let Some(redis) = Self::try_start(extra) {
                return redis;
            }
        }
        panic!("could not start redis-server (is it installed? apt-get install redis-server)");
    }

    fn try_start(extra: &[&str]) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(port, dir.path(), &extra)?;
        Some(Self {
            child,
            port,
            dir,
            extra,
        })
    }

    /// Start it again on the same port after [`TestRedis::kill`] (an outage ends).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = Self::spawn(self.port, self.dir.path(), &self.extra) {
                self.child = child;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(port: u16, dir: &Path, extra: &[String]) -> Option<Child> {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                let _ = child.wait();
                return None; // port taken in the meantime: try another
            }
            if redis_ping(port) {
                return Some(child);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop the server (as an outage would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Pause the server (SIGSTOP): it accepts nothing and answers nothing.
    pub fn pause(&self) {
        signal_pid(self.child.id(), libc::SIGSTOP);
    }

    /// Resume a paused server.
    pub fn resume(&self) {
        signal_pid(self.child.id(), libc::SIGCONT);
    }

    /// A synchronous client connection for assertions.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to test redis")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
        return false;
    };
    client
        .get_connection_with_timeout(Duration::from_millis(200))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok()
}

/// Children the test starts die with the test process.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
}

/// Settings for an in-process application on `redis`, listeners on port 0.
pub fn test_settings(redis: &TestRedis, test: &str) -> Settings {
    let mut settings = Settings::default();
    settings.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.redis.key_prefix = unique_prefix(test);
    settings.redis.pool_size = 8;
    settings.shutdown_timeout = Duration::from_secs(5);
    settings.secrets.redis_url = Some(Secret::new(redis.url()));
    // Rate limits would get in the way of tests about other things; the
    // admission tests turn them on.
    settings.admission.user_per_minute = 0.0;
    settings.admission.channel_per_minute = 0.0;
    settings
}

/// A running in-process application.
pub struct TestApp {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
}

impl TestApp {
    pub fn gateway_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub async fn get_status(&self, url: &str) -> u16 {
        self.http
            .get(url)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("join").expect("clean stop");
    }
}

/// Build and start the application as `role` with `settings`.
pub async fn spawn_app(settings: Settings, role: Role) -> TestApp {
    init_test_logging();
    let app = Application::build(settings, role).await.expect("build app");
    let gateway = app.gateway_addr().expect("gateway addr");
    let admin = app.admin_addr().expect("admin addr");
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        gateway,
        admin,
        shutdown,
        handle,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client"),
    }
}

/// The built `switchboard` binary.
pub fn switchboard_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchboard"))
}

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every descendant pid of `pid` (from /proc), children first.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                out.push(child);
                stack.push(child);
            }
        }
    }
    out
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// The command name of `pid`.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Send `sig` to a process we started.
pub fn signal_pid(pid: u32, sig: i32) {
    let pid = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid, sig) };
}

/// A `switchboard` command run as a child process, with its log lines read.
pub struct ServeProcess {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
    pub _dir: tempfile::TempDir,
}

impl ServeProcess {
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new(switchboard_bin());
        command
            .args(args)
            .current_dir(dir.path())
            .env_remove("REDIS_URL")
            .env_remove("SWITCHBOARD_CONFIG")
            .env("SWITCHBOARD__GATEWAY__LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD__ADMIN__LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD__LOG__FORMAT", "json")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("spawn switchboard");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok)
            {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            _dir: dir,
        }
    }

    /// Wait for the "listening" lines and return (gateway, admin).
    pub fn addresses(&self) -> (SocketAddr, SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut gateway, mut admin) = (None, None);
        while gateway.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("serve logged its listeners");
            if line["message"] == "listening" {
                let addr = line["addr"].as_str().and_then(|a| a.parse().ok());
                match line["listener"].as_str() {
                    Some("gateway") => gateway = addr,
                    Some("admin") => admin = addr,
                    _ => {}
                }
            }
        }
        (gateway.expect("gateway"), admin.expect("admin"))
    }

    /// Wait for a log line whose message is `message` (earlier lines are
    /// consumed); returns it.
    pub fn wait_for_message(&self, message: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line["message"] == message => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line {message:?} within {timeout:?}: {e}"),
            }
        }
    }

    /// Wait for a log line (or raw stderr line) holding `text` anywhere.
    pub fn wait_for_message_containing(&self, text: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.to_string().contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line holding {text:?} within {timeout:?}: {e}"),
            }
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
