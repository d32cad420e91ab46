//! A local stand-in for Slack's Socket Mode, speaking its wire protocol:
//! `POST /api/apps.connections.open` with `Authorization: Bearer xapp-...`
//! answers `{"ok":true,"url":"ws://127.0.0.1:PORT/link/?ticket=..."}`; the
//! websocket (one use per ticket) sends `hello`, then on command
//! `events_api` envelopes and `disconnect` messages, answers pings, closes
//! a socket without warning, can go silent (stops reading and writing, so pings go unanswered), and records
//! every acknowledgement per connection.
#![allow(dead_code)] // a harness: not every test uses every method

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_util::sync::CancellationToken;

use crate::helpers::wait_until;

/// The app-level token the stand-in accepts.
pub const APP_TOKEN: &str = "xapp-1-A0APP-1-stubsecret";

enum Command {
    Send(String),
    Silent,
    Close,
}

struct Conn {
    commands: mpsc::UnboundedSender<Command>,
    hello_at: Instant,
    closed_at: Option<Instant>,
    silent: bool,
    acks: Vec<String>,
    pings: u32,
}

#[derive(Default)]
struct Inner {
    refuse: bool,
    opens: u32,
    bad_auth: u32,
    tickets: HashSet<String>,
    next_ticket: u64,
    conns: Vec<Conn>,
}

/// The stand-in; stops when dropped.
pub struct SocketStub {
    pub http_addr: SocketAddr,
    pub ws_addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    shutdown: CancellationToken,
}

impl Drop for SocketStub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Clone)]
struct HttpState {
    inner: Arc<Mutex<Inner>>,
    ws_addr: SocketAddr,
}

impl SocketStub {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let shutdown = CancellationToken::new();
        let ws = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ws");
        let ws_addr = ws.local_addr().expect("ws addr");
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind http");
        let http_addr = http.local_addr().expect("http addr");
        let router = Router::new()
            .route("/api/apps.connections.open", post(open))
            .with_state(HttpState {
                inner: inner.clone(),
                ws_addr,
            });
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(http, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            served.expect("stand-in HTTP server");
        });
        tokio::spawn(accept(ws, inner.clone(), shutdown.clone()));
        Self {
            http_addr,
            ws_addr,
            inner,
            shutdown,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("stub lock")
    }

    /// `slack.api_base_url` for the gateway.
    pub fn api_base_url(&self) -> String {
        format!("http://{}/api/", self.http_addr)
    }

    /// Successful apps.connections.open calls.
    pub fn opens(&self) -> u32 {
        self.lock().opens
    }

    /// apps.connections.open calls with a wrong or missing token.
    pub fn bad_auth(&self) -> u32 {
        self.lock().bad_auth
    }

    /// Refuse (`ok:false`) new apps.connections.open calls, or stop refusing.
    pub fn refuse_connections(&self, refuse: bool) {
        self.lock().refuse = refuse;
    }

    /// Connections that said hello and are open and talking.
    pub fn live(&self) -> Vec<usize> {
        let inner = self.lock();
        (0..inner.conns.len())
            .filter(|&i| inner.conns[i].closed_at.is_none() && !inner.conns[i].silent)
            .collect()
    }

    /// Wait until at least `n` connections are live; returns them.
    pub async fn wait_live(&self, n: usize) -> Vec<usize> {
        wait_until(
            Duration::from_secs(10),
            &format!("{n} live sockets"),
            || {
                let live = self.live();
                async move { (live.len() >= n).then_some(live) }
            },
        )
        .await
    }

    /// Wait for a live connection other than those in `old`.
    pub async fn wait_new_live(&self, old: &[usize], timeout: Duration) -> usize {
        wait_until(timeout, "a new live socket", || {
            let fresh = self.live().into_iter().find(|c| !old.contains(c));
            async move { fresh }
        })
        .await
    }

    fn command(&self, conn: usize, command: Command) {
        let inner = self.lock();
        let sent = inner.conns[conn].commands.send(command);
        sent.unwrap_or_else(|_| panic!("connection {conn} is gone"));
    }

    /// Send a raw text frame on `conn`.
    pub fn send(&self, conn: usize, frame: &Value) {
        self.command(conn, Command::Send(frame.to_string()));
    }

    /// Send an `events_api` envelope carrying `payload` on `conn`.
    pub fn send_envelope(&self, conn: usize, envelope_id: &str, payload: &Value, retry: u64) {
        let reason = if retry > 0 { "timeout" } else { "" };
        self.send(
            conn,
            &json!({
                "envelope_id": envelope_id,
                "payload": payload,
                "type": "events_api",
                "accepts_response_payload": false,
                "retry_attempt": retry,
                "retry_reason": reason
            }),
        );
    }

    /// Tell `conn` Slack will close it (`refresh_requested`, `warning`...).
    pub fn disconnect(&self, conn: usize, reason: &str) {
        self.send(
            conn,
            &json!({"type": "disconnect", "reason": reason, "debug_info": {"host": "stub"}}),
        );
    }

    /// Stop reading and writing on `conn`: it stays open but says nothing.
    pub fn go_silent(&self, conn: usize) {
        self.lock().conns[conn].silent = true;
        self.command(conn, Command::Silent);
    }

    /// Close `conn` from Slack's side without warning.
    pub fn close(&self, conn: usize) {
        self.command(conn, Command::Close);
    }

    /// Envelope ids acknowledged on `conn`.
    pub fn acks(&self, conn: usize) -> Vec<String> {
        self.lock().conns[conn].acks.clone()
    }

    /// How many times `envelope_id` was acknowledged, on any connection.
    pub fn acked(&self, envelope_id: &str) -> usize {
        let inner = self.lock();
        inner
            .conns
            .iter()
            .flat_map(|c| &c.acks)
            .filter(|a| *a == envelope_id)
            .count()
    }

    /// Wait until `envelope_id` was acknowledged `times` times.
    pub async fn wait_acked(&self, envelope_id: &str, times: usize) {
        wait_until(
            Duration::from_secs(10),
            &format!("{times} acks of {envelope_id}"),
            || {
                let n = self.acked(envelope_id);
                async move { (n >= times).then_some(()) }
            },
        )
        .await;
    }

    pub fn hello_at(&self, conn: usize) -> Instant {
        self.lock().conns[conn].hello_at
    }

    pub fn closed_at(&self, conn: usize) -> Option<Instant> {
        self.lock().conns[conn].closed_at
    }

    /// Pings the client sent on `conn`.
    pub fn pings(&self, conn: usize) -> u32 {
        self.lock().conns[conn].pings
    }
}

async fn open(State(state): State<HttpState>, headers: HeaderMap) -> axum::Json<Value> {
    let mut inner = state.inner.lock().expect("stub lock");
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {APP_TOKEN}") {
        inner.bad_auth += 1;
        return axum::Json(json!({"ok": false, "error": "invalid_auth"}));
    }
    if inner.refuse {
        return axum::Json(json!({"ok": false, "error": "internal_error"}));
    }
    inner.opens += 1;
    inner.next_ticket += 1;
    let ticket = format!("ticket-{}", inner.next_ticket);
    inner.tickets.insert(ticket.clone());
    axum::Json(json!({
        "ok": true,
        "url": format!("ws://{}/link/?ticket={ticket}&app_id=A0APP", state.ws_addr)
    }))
}

async fn accept(
    listener: tokio::net::TcpListener,
    inner: Arc<Mutex<Inner>>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        tokio::spawn(connection(stream, inner.clone(), shutdown.clone()));
    }
}

/// One websocket: check the ticket, say hello, then follow commands and
/// record what the client sends.
async fn connection(
    stream: tokio::net::TcpStream,
    inner: Arc<Mutex<Inner>>,
    shutdown: CancellationToken,
) {
    #[allow(clippy::result_large_err)] // the signature tungstenite's handshake callback takes
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let ticket = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ticket=")))
            .unwrap_or_default();
        if inner.lock().expect("stub lock").tickets.remove(ticket) {
            Ok(response)
        } else {
            let mut refused = ErrorResponse::new(Some("invalid ticket".into()));
            *refused.status_mut() = axum::http::StatusCode::FORBIDDEN;
            Err(refused)
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let hello = json!({
        "type": "hello",
        "num_connections": 1,
        "debug_info": {"host": "stub", "approximate_connection_time": 18060},
        "connection_info": {"app_id": "A0APP"}
    });
    let (tx, mut commands) = mpsc::unbounded_channel();
    if sink.send(Message::text(hello.to_string())).await.is_err() {
        return;
    }
    let index = {
        let mut inner = inner.lock().expect("stub lock");
        inner.conns.push(Conn {
            commands: tx,
            hello_at: Instant::now(),
            closed_at: None,
            silent: false,
            acks: Vec::new(),
            pings: 0,
        });
        inner.conns.len() - 1
    };
    let mut silent = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            command = commands.recv() => match command {
                Some(Command::Send(text)) => {
                    if sink.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Some(Command::Silent) => silent = true,
                Some(Command::Close) => {
                    // Best effort, as Slack's own close: the socket goes either way.
                    let _ = sink.close().await;
                    break;
                }
                None => break,
            },
            message = stream.next(), if !silent => match message {
                Some(Ok(Message::Text(text))) => {
                    let ack: Value = serde_json::from_str(text.as_str()).expect("ack is JSON");
                    let id = ack["envelope_id"].as_str().expect("ack names an envelope");
                    inner.lock().expect("stub lock").conns[index].acks.push(id.to_string());
                }
                Some(Ok(Message::Ping(_))) => inner.lock().expect("stub lock").conns[index].pings += 1,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    inner.lock().expect("stub lock").conns[index].closed_at = Some(Instant::now());
}
