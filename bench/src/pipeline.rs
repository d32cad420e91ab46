//! The end-to-end reference: the bare Redis and HTTP work of one message,
//! in one task per lane. XADD the message, XREADGROUP it back, a pipe round
//! trip to a long-lived stand-in agent (the same program the gateway's slots
//! run, same protocol), XADD the reply, XREADGROUP it back, HTTP POST it to
//! the Slack stand-in.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::procs::Bins;

/// One stand-in agent process, initialized.
struct Agent {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Agent {
    async fn start(agent: PathBuf, base: PathBuf, log: PathBuf) -> anyhow::Result<Self> {
        for sub in ["home", "config", "work"] {
            std::fs::create_dir_all(base.join(sub))?;
        }
        let mut child = Command::new(agent)
            .args([
                "-p",
                "--input-format",
                "stream-json",
                "--output-format",
                "stream-json",
            ])
            .args(["--verbose", "--include-partial-messages"])
            .current_dir(base.join("work"))
            .env_clear()
            .env("HOME", base.join("home"))
            .env("CLAUDE_CONFIG_DIR", base.join("config"))
            .env("STAND_IN_STDIN_LOG", log)
            .env("STAND_IN_THINK_MS", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the stand-in agent")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the agent's pipes are missing");
        };
        let mut agent = Self {
            _child: child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        };
        let init = json!({"type": "control_request", "request_id": "init",
            "request": {"subtype": "initialize"}});
        agent.send(&init).await?;
        agent.read_until("control_response").await?;
        Ok(agent)
    }

    async fn send(&mut self, line: &Value) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        self.stdin.write_all(&bytes).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn read_until(&mut self, kind: &str) -> anyhow::Result<Value> {
        while let Some(line) = self.stdout.next_line().await? {
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if value["type"] == kind {
                return Ok(value);
            }
        }
        bail!("the agent closed its output")
    }
}

fn spawn_agent(
    bins: &Bins,
    dir: &Path,
    lane: usize,
    n: usize,
) -> JoinHandle<anyhow::Result<Agent>> {
    let base = dir.join(format!("lane-{lane}-{n}"));
    tokio::spawn(Agent::start(
        bins.agent.clone(),
        base,
        dir.join("stdin.log"),
    ))
}

/// One lane: its own agent process and streams. Like a slot, it moves to a
/// new agent (session) with each new conversation; the next one is started
/// in the background beforehand, as the pool keeps fresh slots.
pub struct Lane {
    index: usize,
    agent: Agent,
    next: JoinHandle<anyhow::Result<Agent>>,
    spawned: usize,
    bins: Bins,
    dir: PathBuf,
    redis: redis::aio::MultiplexedConnection,
    http: reqwest::Client,
    post_url: String,
}

impl Lane {
    pub async fn start(
        bins: &Bins,
        dir: &Path,
        index: usize,
        redis_url: &str,
        stub_base: &str,
    ) -> anyhow::Result<Self> {
        let mut redis = redis::Client::open(redis_url)?
            .get_multiplexed_async_connection()
            .await?;
        for stream in [format!("p:in:{index}"), format!("p:out:{index}")] {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg("g")
                .arg("$")
                .arg("MKSTREAM")
                .query_async::<()>(&mut redis)
                .await?;
        }
        let agent = spawn_agent(bins, dir, index, 0).await??;
        Ok(Self {
            index,
            agent,
            next: spawn_agent(bins, dir, index, 1),
            spawned: 2,
            bins: bins.clone(),
            dir: dir.to_path_buf(),
            redis,
            http: crate::events::client()?,
            post_url: format!("{stub_base}chat.postMessage"),
        })
    }

    /// Switch to the pre-started agent (a new conversation).
    pub async fn new_conversation(&mut self) -> anyhow::Result<()> {
        let following = spawn_agent(&self.bins, &self.dir, self.index, self.spawned);
        self.spawned += 1;
        self.agent = std::mem::replace(&mut self.next, following).await??;
        Ok(())
    }

    /// One message through the bare pipeline.
    pub async fn one(&mut self, channel: &str, text: &str) -> anyhow::Result<()> {
        let (input, output) = (
            format!("p:in:{}", self.index),
            format!("p:out:{}", self.index),
        );
        let message = json!({"channel": channel, "sender": "UALICE", "text": text}).to_string();
        redis::cmd("XADD")
            .arg(&input)
            .arg("*")
            .arg("m")
            .arg(&message)
            .query_async::<String>(&mut self.redis)
            .await?;
        let read = xreadgroup(&mut self.redis, &input).await?;
        let text = format!("UALICE: {}", read["text"].as_str().unwrap_or(""));
        self.agent
            .send(
                &json!({"type": "user", "message": {"role": "user", "content": text},
            "parent_tool_use_id": null, "session_id": "default"}),
            )
            .await?;
        let result = self.agent.read_until("result").await?;
        let reply = json!({"channel": channel, "text": result["result"]}).to_string();
        redis::cmd("XADD")
            .arg(&output)
            .arg("*")
            .arg("r")
            .arg(&reply)
            .query_async::<String>(&mut self.redis)
            .await?;
        let read = xreadgroup(&mut self.redis, &output).await?;
        let status = self
            .http
            .post(&self.post_url)
            .header(
                "authorization",
                format!("Bearer {}", crate::events::BOT_TOKEN),
            )
            .header("content-type", "application/json")
            .body(read.to_string())
            .send()
            .await?
            .status();
        if !status.is_success() {
            bail!("the Slack stand-in answered {status}");
        }
        Ok(())
    }
}

/// Read the next entry of `stream` for group `g` and decode its one field.
async fn xreadgroup(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> anyhow::Result<Value> {
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(redis)
        .await?;
    let entry = reply
        .keys
        .first()
        .and_then(|k| k.ids.first())
        .context("nothing to read")?;
    let field = entry.map.values().next().context("empty entry")?;
    let text: String = redis::from_redis_value(field.clone())?;
    Ok(serde_json::from_str(&text)?)
}
