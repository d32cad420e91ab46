//! The ingress reference: the least a Slack Events API endpoint must do.
//! Verify the v0 signature (with Switchboard's own verifier, so only what
//! surrounds it is compared), one XADD of the body, answer 200. Runs as its
//! own process (`switchboard-bench reference`), like the gateway.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use switchboard::config::Secret;
use switchboard::ingress::slack::SignatureVerifier;

use crate::events::SIGNING_SECRET;
use crate::procs::{Bins, Proc, Redis, free_port, get_ok, wait_while_running, with_port_retries};

#[derive(Clone)]
struct RefState {
    verifier: Arc<SignatureVerifier>,
    redis: redis::aio::MultiplexedConnection,
}

/// Serve the reference on `listen` until the process is stopped.
pub async fn serve(listen: SocketAddr, redis_url: &str) -> anyhow::Result<()> {
    let redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let state = RefState {
        verifier: Arc::new(SignatureVerifier::new(&Secret::new(SIGNING_SECRET))?),
        redis,
    };
    let router = Router::new()
        .route("/slack/events", post(events))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| eprintln!("no SIGTERM handler: {e}"))
            .ok();
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await?;
    Ok(())
}

async fn events(State(state): State<RefState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if state
        .verifier
        .verify_headers(&headers, &body, SystemTime::now())
        .is_err()
    {
        return StatusCode::UNAUTHORIZED;
    }
    let mut redis = state.redis.clone();
    let added: redis::RedisResult<String> = redis::cmd("XADD")
        .arg("ref:events")
        .arg("*")
        .arg("event")
        .arg(body.as_ref())
        .query_async(&mut redis)
        .await;
    match added {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The reference server running as a child process, with its own Redis.
pub struct RefServer {
    pub addr: SocketAddr,
    // Drop order: the server, then its Redis.
    pub proc: Proc,
    pub redis: Redis,
}

impl RefServer {
    pub async fn start(bins: &Bins, dir: &Path, callgrind: Option<&Path>) -> anyhow::Result<Self> {
        with_port_retries(|| Self::start_once(bins, dir, callgrind)).await
    }

    async fn start_once(bins: &Bins, dir: &Path, callgrind: Option<&Path>) -> anyhow::Result<Self> {
        let redis = Redis::start(&dir.join("redis")).await?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut command = match callgrind {
            Some(out) => {
                let mut c = Command::new("valgrind");
                c.args(crate::procs::callgrind_args(out)).arg(&bins.bench);
                c
            }
            None => Command::new(&bins.bench),
        };
        command
            .args([
                "reference",
                "--listen",
                &addr.to_string(),
                "--redis-url",
                &redis.url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut proc = Proc::spawn("reference server", &mut command)?;
        let http = reqwest::Client::new();
        let slow = if callgrind.is_some() { 120 } else { 20 };
        let what = "the reference server";
        wait_while_running(&mut proc, what, Duration::from_secs(slow), || {
            get_ok(&http, addr, "/readyz")
        })
        .await?;
        Ok(Self { addr, proc, redis })
    }

    pub fn events_url(&self) -> String {
        format!("http://{}/slack/events", self.addr)
    }
}
