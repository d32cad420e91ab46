//! The Claude Code driver: one long-lived CLI process per slot, speaking
//! stream-json. Ready once the initialize control request is answered; one
//! user message per turn; the turn ends at its `result` line or at a guard
//! (turn timeout, silence watchdog, crash).

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Split};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::protocol::{self, Delta, OutLine, ResultLine, StreamEvent};
use super::slot::{StderrTail, base_command};
use super::spawn::{AgentChild, describe, spawn};
use super::{
    AgentLauncher, AgentProcess, AgentSettings, BoxFuture, Interrupter, SessionStart, SlotDirs,
    StartError, TurnError, TurnEvent, TurnResult, UnixUser, transcript,
};

/// The fixed part of the command line.
const STREAM_JSON_ARGS: [&str; 7] = [
    "-p",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
];

/// Starts Claude Code processes (`agent.kind = "claude-code"`).
#[derive(Debug, Clone)]
pub struct ClaudeLauncher {
    settings: Arc<AgentSettings>,
    user: Option<UnixUser>,
}

impl ClaudeLauncher {
    /// A launcher for `settings`; looks `agent.user` up once, here.
    pub fn new(settings: AgentSettings) -> Result<Self, StartError> {
        let user = UnixUser::from_settings(&settings)?;
        Ok(Self {
            settings: Arc::new(settings),
            user,
        })
    }

    fn command(
        &self,
        slot: &SlotDirs,
        session: &SessionStart,
    ) -> Result<tokio::process::Command, StartError> {
        let s = &self.settings;
        let mut command = base_command(s, slot, self.user.as_ref());
        command.args(STREAM_JSON_ARGS);
        if let Some(model) = &s.model {
            command.arg("--model").arg(model);
        }
        if let Some(prompt) = &s.append_system_prompt {
            command.arg("--append-system-prompt").arg(prompt);
        }
        if !s.allowed_tools.is_empty() {
            command.arg("--allowedTools").arg(s.allowed_tools.join(","));
        }
        if let Some(max_turns) = s.max_turns {
            command.arg("--max-turns").arg(max_turns.to_string());
        }
        if let Some(budget) = s.max_budget_usd {
            command.arg("--max-budget-usd").arg(budget.to_string());
        }
        if let Some(mode) = &s.permission_mode {
            command.arg("--permission-mode").arg(mode);
        }
        let (flag, id) = match session {
            SessionStart::New => return Ok(command),
            SessionStart::NewWithId(id) => ("--session-id", id),
            SessionStart::Resume(id) => ("--resume", id),
        };
        transcript::validate_session_id(id).map_err(|e| StartError::Config(e.to_string()))?;
        command.arg(flag).arg(id);
        Ok(command)
    }

    async fn start_process(
        &self,
        slot: &SlotDirs,
        session: SessionStart,
    ) -> Result<ClaudeProcess, StartError> {
        slot.create()?;
        if let Some(user) = &self.user {
            slot.chown_to(user)?;
        }
        let command = self.command(slot, &session)?;
        let mut child = spawn(command).await.map_err(|source| StartError::Spawn {
            command: self.settings.command.clone(),
            source,
        })?;
        let pid = child.pid();
        let (stdin, stdout, stderr) = child.take_stdio();
        let stderr = StderrTail::collect(stderr, pid);
        let pipes = stdin
            .zip(stdout)
            .ok_or_else(|| StartError::Io(std::io::Error::other("agent pipes were not set up")));
        let (stdin, stdout) = pipes.and_then(|(i, o)| {
            Ok((
                ChildStdin::from_std(i).map_err(StartError::Io)?,
                ChildStdout::from_std(o).map_err(StartError::Io)?,
            ))
        })?;
        let mut process = ClaudeProcess {
            slot: slot.name.clone(),
            settings: self.settings.clone(),
            child,
            stdin,
            stdout: BufReader::new(stdout).split(b'\n'),
            stderr,
            interrupter: Interrupter::new(),
            session_id: match session {
                SessionStart::New => None,
                SessionStart::NewWithId(id) | SessionStart::Resume(id) => Some(id),
            },
            total_cost_usd: 0.0,
            next_request: 0,
            usable: true,
            stopped: false,
        };
        let timeout = self.settings.start_timeout;
        let outcome = match tokio::time::timeout(timeout, process.handshake()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StartError::Timeout(timeout)),
        };
        match outcome {
            Ok(()) => {
                tracing::debug!(pid, "agent ready");
                Ok(process)
            }
            Err(e) => {
                process.kill().await;
                Err(e)
            }
        }
    }
}

impl AgentLauncher for ClaudeLauncher {
    fn start<'a>(
        &'a self,
        slot: &'a SlotDirs,
        session: SessionStart,
    ) -> BoxFuture<'a, Result<Box<dyn AgentProcess>, StartError>> {
        let span = tracing::info_span!("agent_start", slot = %slot.name);
        Box::pin(
            async move {
                let process = self.start_process(slot, session).await?;
                Ok(Box::new(process) as Box<dyn AgentProcess>)
            }
            .instrument(span),
        )
    }
}

/// Why a running turn is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Caller,
    TurnTimeout,
    Silence,
}

/// A running Claude Code process.
pub struct ClaudeProcess {
    slot: String,
    settings: Arc<AgentSettings>,
    child: AgentChild,
    stdin: ChildStdin,
    stdout: Split<BufReader<ChildStdout>>,
    stderr: StderrTail,
    interrupter: Interrupter,
    session_id: Option<String>,
    total_cost_usd: f64,
    next_request: u64,
    /// Can take a turn: false once killed, and while a turn is open (a
    /// turn whose future was dropped leaves the process in an unknown state).
    usable: bool,
    /// Killed and reaped.
    stopped: bool,
}

impl std::fmt::Debug for ClaudeProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaudeProcess")
            .field("slot", &self.slot)
            .field("pid", &self.child.pid())
            .field("session_id", &self.session_id)
            .field("usable", &self.usable)
            .finish_non_exhaustive()
    }
}

impl ClaudeProcess {
    fn request_id(&mut self) -> String {
        self.next_request += 1;
        format!("sb-{}", self.next_request)
    }

    async fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.stdin.write_all(&bytes).await?;
        self.stdin.flush().await
    }

    async fn handshake(&mut self) -> Result<(), StartError> {
        let id = self.request_id();
        if let Err(e) = self
            .write_line(&protocol::control_request(&id, "initialize"))
            .await
        {
            return Err(match e.kind() {
                std::io::ErrorKind::BrokenPipe => self.exited_during_start().await,
                _ => StartError::Io(e),
            });
        }
        loop {
            let line = match self.stdout.next_segment().await {
                Ok(Some(line)) => line,
                Ok(None) => return Err(self.exited_during_start().await),
                Err(e) => return Err(StartError::Io(e)),
            };
            match protocol::parse_line(&line_text(&line)) {
                Ok(OutLine::ControlResponse(c))
                    if c.response.request_id.as_deref() == Some(&id) =>
                {
                    return if c.response.is_success() {
                        Ok(())
                    } else {
                        Err(StartError::Refused(c.response.error.unwrap_or_default()))
                    };
                }
                Ok(OutLine::System(s)) if s.session_id.is_some() => self.session_id = s.session_id,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "skipping an unparsable line during start"),
            }
        }
    }

    async fn exited_during_start(&mut self) -> StartError {
        let status = self.child.wait_exit(self.settings.terminate_timeout).await;
        StartError::Exited {
            status: describe(status),
            stderr: self.stderr.settled_text().await,
        }
    }

    /// Stop the process for good (SIGTERM, then SIGKILL).
    async fn kill(&mut self) {
        self.usable = false;
        self.stopped = true;
        self.child.terminate(self.settings.terminate_timeout).await;
    }

    /// The process died mid-turn: collect why, make sure all of it is gone.
    async fn crashed(&mut self) -> TurnError {
        self.usable = false;
        self.stopped = true;
        let status = self.child.wait_exit(self.settings.interrupt_grace).await;
        self.child.terminate(self.settings.terminate_timeout).await;
        let error = TurnError::Crashed {
            status: describe(status.or(self.child.try_status())),
            stderr: self.stderr.settled_text().await,
        };
        tracing::warn!(error = %error, "agent died mid-turn");
        error
    }

    /// Send a line during a turn; a process that does not take it in time is
    /// hung, one whose pipe is closed has died.
    async fn send(&mut self, line: &str) -> Result<(), TurnError> {
        let limit = self.settings.silence_timeout;
        match tokio::time::timeout(limit, self.write_line(line)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(self.crashed().await),
            Ok(Err(e)) => {
                self.kill().await;
                Err(TurnError::Io(e))
            }
            Err(_) => {
                tracing::warn!("agent does not read its input; killing it");
                self.kill().await;
                Err(TurnError::Silent { after: limit })
            }
        }
    }

    async fn turn(
        &mut self,
        text: &str,
        events: &mpsc::Sender<TurnEvent>,
    ) -> Result<TurnResult, TurnError> {
        if !self.usable || !self.child.running() {
            // Dead, or a dropped turn left it mid-answer: either way, gone.
            self.kill().await;
            return Err(TurnError::NotRunning);
        }
        self.usable = false; // until the turn ends cleanly
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + self.settings.turn_timeout);
        let mut interrupts = self.interrupter.subscribe();
        let mut interrupts_open = true;
        self.send(&protocol::user_message(text)).await?;
        let mut stopping: Option<(Stop, tokio::time::Instant)> = None;
        let mut last_output = tokio::time::Instant::now();
        let mut streamed = String::new();
        // One timer for the turn. Output moves the wake-up later; the timer
        // is not moved for that (dozens of times a turn) but checks, when it
        // fires, whether the wake-up it stood for is still due.
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            // Checked here too, not only by the timer below: an agent that
            // writes without pause would otherwise never let the timer run.
            let now = tokio::time::Instant::now();
            match stopping {
                Some((why, until)) if now >= until => return Err(self.give_up(why).await),
                None if now >= deadline => {
                    self.begin_stop(Stop::TurnTimeout, &mut stopping).await?
                }
                _ => {}
            }
            let wake = match stopping {
                Some((_, until)) => until,
                None => deadline.min(last_output + self.settings.silence_timeout),
            };
            if wake < timer.deadline() || timer.is_elapsed() {
                timer.as_mut().reset(wake);
            }
            let line = tokio::select! {
                biased;
                changed = interrupts.changed(), if interrupts_open && stopping.is_none() => {
                    match changed {
                        Ok(()) => self.begin_stop(Stop::Caller, &mut stopping).await?,
                        Err(_) => interrupts_open = false,
                    }
                    continue;
                }
                line = self.stdout.next_segment() => line,
                () = &mut timer => {
                    if tokio::time::Instant::now() < wake {
                        // Armed for an earlier wake-up that output has moved on.
                        timer.as_mut().reset(wake);
                        continue;
                    }
                    match stopping {
                        Some((why, _)) => return Err(self.give_up(why).await),
                        None if tokio::time::Instant::now() >= deadline => {
                            self.begin_stop(Stop::TurnTimeout, &mut stopping).await?;
                        }
                        None => self.begin_stop(Stop::Silence, &mut stopping).await?,
                    }
                    continue;
                }
            };
            last_output = tokio::time::Instant::now();
            let line = match line {
                Ok(Some(line)) => line,
                Ok(None) => return Err(self.crashed().await),
                Err(e) => {
                    self.kill().await;
                    return Err(TurnError::Io(e));
                }
            };
            let parsed = match protocol::parse_line(&line_text(&line)) {
                Ok(parsed) => parsed,
                Err(e) => {
                    tracing::debug!(error = %e, bytes = line.len(), "skipping an unparsable line");
                    continue;
                }
            };
            match parsed {
                OutLine::System(s) => {
                    if s.subtype == "api_retry" {
                        tracing::info!("agent retries an API call");
                    }
                    if s.session_id.is_some() {
                        self.session_id = s.session_id;
                    }
                }
                OutLine::StreamEvent(e) => {
                    if let StreamEvent::ContentBlockDelta {
                        delta: Delta::TextDelta { text },
                    } = e.event
                    {
                        streamed.push_str(&text);
                        emit(events, TurnEvent::Delta(text)).await;
                    }
                }
                OutLine::Result(result) => {
                    let result = self.turn_result(result, streamed, started);
                    emit(events, TurnEvent::Result(result.clone())).await;
                    return self.finish(result, stopping.map(|(why, _)| why)).await;
                }
                OutLine::ControlRequest(request) => {
                    let answer = if request.request.subtype == "can_use_tool" {
                        tracing::info!(tool = ?request.request.tool_name, "denied a tool permission prompt");
                        protocol::deny_tool(
                            &request.request_id,
                            "tools must be allowed in switchboard's agent.allowed_tools",
                        )
                    } else {
                        protocol::unsupported_request(&request.request_id, &request.request.subtype)
                    };
                    self.send(&answer).await?;
                }
                OutLine::Assistant(_) | OutLine::ControlResponse(_) | OutLine::Other => {}
            }
        }
    }

    /// Send an interrupt and start the grace period for the turn to end.
    async fn begin_stop(
        &mut self,
        why: Stop,
        stopping: &mut Option<(Stop, tokio::time::Instant)>,
    ) -> Result<(), TurnError> {
        match why {
            Stop::Caller => tracing::debug!("interrupting the turn on request"),
            Stop::TurnTimeout => tracing::warn!("turn timed out; interrupting it"),
            Stop::Silence => tracing::warn!("agent silent during a turn; interrupting it"),
        }
        let id = self.request_id();
        *stopping = Some((
            why,
            tokio::time::Instant::now() + self.settings.interrupt_grace,
        ));
        self.send(&protocol::control_request(&id, "interrupt"))
            .await
    }

    /// The grace period after an interrupt passed with no result: kill.
    async fn give_up(&mut self, why: Stop) -> TurnError {
        tracing::warn!(
            ?why,
            "turn did not end after an interrupt; killing the agent"
        );
        self.kill().await;
        match why {
            Stop::Caller => TurnError::Interrupted {
                process_kept: false,
            },
            Stop::TurnTimeout => TurnError::TimedOut {
                after: self.settings.turn_timeout,
                process_kept: false,
            },
            Stop::Silence => TurnError::Silent {
                after: self.settings.silence_timeout,
            },
        }
    }

    fn turn_result(&mut self, line: ResultLine, streamed: String, started: Instant) -> TurnResult {
        if line.session_id.is_some() {
            self.session_id.clone_from(&line.session_id);
        }
        let total = line.total_cost_usd.unwrap_or(self.total_cost_usd);
        let cost = (total - self.total_cost_usd).max(0.0);
        self.total_cost_usd = total;
        TurnResult {
            text: line.result.unwrap_or(streamed),
            is_error: line.is_error,
            subtype: line.subtype,
            session_id: line.session_id.or_else(|| self.session_id.clone()),
            cost_usd: cost,
            total_cost_usd: total,
            usage: line.usage.unwrap_or_default(),
            num_turns: line.num_turns.unwrap_or(0),
            duration: started.elapsed(),
        }
    }

    async fn finish(
        &mut self,
        result: TurnResult,
        stopped: Option<Stop>,
    ) -> Result<TurnResult, TurnError> {
        tracing::debug!(
            is_error = result.is_error,
            subtype = %result.subtype,
            cost_usd = result.cost_usd,
            duration_ms = result.duration.as_millis() as u64,
            "turn ended"
        );
        self.usable = true;
        if stopped == Some(Stop::Silence) {
            // A process that went silent is not trusted with another turn.
            self.kill().await;
            if !result.is_error {
                return Ok(result);
            }
            return Err(TurnError::Silent {
                after: self.settings.silence_timeout,
            });
        }
        if !result.is_error {
            return Ok(result);
        }
        Err(match stopped {
            Some(Stop::Caller) => TurnError::Interrupted { process_kept: true },
            Some(Stop::TurnTimeout) => TurnError::TimedOut {
                after: self.settings.turn_timeout,
                process_kept: true,
            },
            _ => TurnError::Agent { result },
        })
    }
}

/// Send `event` to the caller. A closed channel means the caller no longer
/// wants progress; the turn still runs to its end.
async fn emit(events: &mpsc::Sender<TurnEvent>, event: TurnEvent) {
    if events.send(event).await.is_err() {
        tracing::trace!("turn events receiver is gone");
    }
}

impl AgentProcess for ClaudeProcess {
    fn run_turn<'a>(
        &'a mut self,
        text: &'a str,
        events: &'a mpsc::Sender<TurnEvent>,
    ) -> BoxFuture<'a, Result<TurnResult, TurnError>> {
        let span = tracing::info_span!("agent_turn", slot = %self.slot, pid = self.child.pid());
        Box::pin(self.turn(text, events).instrument(span))
    }

    fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    fn terminate(&mut self) -> BoxFuture<'_, ()> {
        let span = tracing::info_span!("agent_stop", slot = %self.slot, pid = self.child.pid());
        Box::pin(self.kill().instrument(span))
    }

    fn pid(&self) -> Option<u32> {
        (!self.stopped).then(|| self.child.pid())
    }

    fn resident_memory_bytes(&self) -> Option<u64> {
        self.child.resident_memory_bytes()
    }

    fn is_usable(&self) -> bool {
        self.usable
    }

    fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }
}

/// A line of output as text: borrowed when it is UTF-8 (always, from the
/// CLI; the check is the fast one), else with the bad bytes replaced.
fn line_text(line: &[u8]) -> std::borrow::Cow<'_, str> {
    std::str::from_utf8(line).map_or_else(
        |_| String::from_utf8_lossy(line),
        std::borrow::Cow::Borrowed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(settings: AgentSettings, session: SessionStart) -> Vec<String> {
        let slot = SlotDirs::new(std::path::Path::new("/slots"), "a").expect("slot");
        let launcher = ClaudeLauncher::new(settings).expect("launcher");
        let command = launcher.command(&slot, &session).expect("command");
        command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn output_lines_are_read_as_text_in_place_and_bad_bytes_are_replaced() {
        assert!(matches!(
            line_text(br#"{"type":"result"}"#),
            std::borrow::Cow::Borrowed(r#"{"type":"result"}"#)
        ));
        assert_eq!(line_text(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn the_command_line_carries_the_settings() {
        let settings = AgentSettings {
            args: vec!["--bare".into()],
            model: Some("m".into()),
            append_system_prompt: Some("be brief".into()),
            allowed_tools: vec!["Read".into(), "Bash(git log:*)".into()],
            max_turns: Some(3),
            permission_mode: Some("plan".into()),
            ..AgentSettings::default()
        };
        let args = args(settings, SessionStart::Resume("s-1".into()));
        let expected = [
            "--bare",
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--model",
            "m",
            "--append-system-prompt",
            "be brief",
            "--allowedTools",
            "Read,Bash(git log:*)",
            "--max-turns",
            "3",
            "--permission-mode",
            "plan",
            "--resume",
            "s-1",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn defaults_add_only_the_stream_json_flags_and_bad_ids_are_refused() {
        assert_eq!(
            args(AgentSettings::default(), SessionStart::New),
            STREAM_JSON_ARGS
        );
        let with_id = args(
            AgentSettings::default(),
            SessionStart::NewWithId("abc".into()),
        );
        assert_eq!(with_id[with_id.len() - 2..], ["--session-id", "abc"]);
        let slot = SlotDirs::new(std::path::Path::new("/slots"), "a").expect("slot");
        let launcher = ClaudeLauncher::new(AgentSettings::default()).expect("launcher");
        assert!(
            launcher
                .command(&slot, &SessionStart::Resume("../x".into()))
                .is_err()
        );
    }
}
