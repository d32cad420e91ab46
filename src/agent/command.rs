//! The command driver (`agent.kind = "command"`): one process per turn for
//! CLIs without a streaming mode. The message goes to its stdin, the whole
//! stdout is the reply; a non-zero exit is a failed turn.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::slot::{StderrTail, base_command};
use super::spawn::{AgentChild, describe, spawn};
use super::{
    AgentLauncher, AgentProcess, AgentSettings, BoxFuture, Interrupter, SessionStart, SlotDirs,
    StartError, TurnError, TurnEvent, TurnResult, UnixUser, Usage,
};

/// Prepares slots for one-shot commands (`agent.kind = "command"`).
#[derive(Debug, Clone)]
pub struct CommandLauncher {
    settings: Arc<AgentSettings>,
    user: Option<UnixUser>,
}

impl CommandLauncher {
    /// A launcher for `settings`; looks `agent.user` up once, here.
    pub fn new(settings: AgentSettings) -> Result<Self, StartError> {
        let user = UnixUser::from_settings(&settings)?;
        Ok(Self {
            settings: Arc::new(settings),
            user,
        })
    }
}

impl AgentLauncher for CommandLauncher {
    /// Nothing runs between turns, so this only prepares the slot. A command
    /// has no sessions: `session` is ignored.
    fn start<'a>(
        &'a self,
        slot: &'a SlotDirs,
        session: SessionStart,
    ) -> BoxFuture<'a, Result<Box<dyn AgentProcess>, StartError>> {
        Box::pin(async move {
            if session != SessionStart::New {
                tracing::debug!(slot = %slot.name, "the command driver keeps no sessions");
            }
            slot.create()?;
            if let Some(user) = &self.user {
                slot.chown_to(user)?;
            }
            Ok(Box::new(CommandProcess {
                settings: self.settings.clone(),
                user: self.user.clone(),
                slot: slot.clone(),
                interrupter: Interrupter::new(),
            }) as Box<dyn AgentProcess>)
        })
    }
}

/// A slot running one command per turn.
#[derive(Debug)]
pub struct CommandProcess {
    settings: Arc<AgentSettings>,
    user: Option<UnixUser>,
    slot: SlotDirs,
    interrupter: Interrupter,
}

impl CommandProcess {
    async fn turn(
        &mut self,
        text: &str,
        events: &mpsc::Sender<TurnEvent>,
    ) -> Result<TurnResult, TurnError> {
        let started = Instant::now();
        let mut interrupts = self.interrupter.subscribe();
        let command = base_command(&self.settings, &self.slot, self.user.as_ref());
        let mut child = spawn(command).await.map_err(TurnError::Io)?;
        let pid = child.pid();
        let (stdin, stdout, stderr) = child.take_stdio();
        let stderr = StderrTail::collect(stderr, pid);
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            return Err(TurnError::Io(std::io::Error::other(
                "pipes were not set up",
            )));
        };
        let mut stdin = tokio::process::ChildStdin::from_std(stdin).map_err(TurnError::Io)?;
        let mut stdout = tokio::process::ChildStdout::from_std(stdout).map_err(TurnError::Io)?;
        let input = text.as_bytes().to_vec();
        tokio::spawn(async move {
            // A command may exit without reading its input; that is its choice.
            if let Err(e) = stdin.write_all(&input).await {
                tracing::debug!(pid, error = %e, "command did not take all of its input");
            }
        });
        let limit = self.settings.max_output_bytes;
        let read = async {
            let mut reply = Vec::new();
            let mut capped = (&mut stdout).take(limit as u64 + 1);
            capped.read_to_end(&mut reply).await.map(|_| reply)
        };
        let timeout = self.settings.turn_timeout;
        let reply = tokio::select! {
            reply = tokio::time::timeout(timeout, read) => reply,
            _ = interrupts.changed() => {
                child.terminate(self.settings.terminate_timeout).await;
                return Err(TurnError::Interrupted { process_kept: true });
            }
        };
        let reply = match reply {
            Ok(Ok(reply)) if reply.len() <= limit => reply,
            Ok(Ok(_)) => {
                child.terminate(self.settings.terminate_timeout).await;
                return Err(TurnError::CommandFailed {
                    status: format!("reply longer than {limit} bytes"),
                    stderr: String::new(),
                });
            }
            Ok(Err(e)) => {
                child.terminate(self.settings.terminate_timeout).await;
                return Err(TurnError::Io(e));
            }
            Err(_) => {
                tracing::warn!(pid, "command turn timed out; killing it");
                child.terminate(self.settings.terminate_timeout).await;
                return Err(TurnError::TimedOut {
                    after: timeout,
                    process_kept: true,
                });
            }
        };
        let remaining = timeout.saturating_sub(started.elapsed());
        self.finish(&mut child, &stderr, reply, remaining, started, events)
            .await
    }

    async fn finish(
        &self,
        child: &mut AgentChild,
        stderr: &StderrTail,
        reply: Vec<u8>,
        remaining: std::time::Duration,
        started: Instant,
        events: &mpsc::Sender<TurnEvent>,
    ) -> Result<TurnResult, TurnError> {
        let status = child.wait_exit(remaining).await;
        // Tools it left behind in its group go too.
        let status = child
            .terminate(self.settings.terminate_timeout)
            .await
            .or(status);
        match status {
            Some(s) if s.success() => {}
            Some(s) if s.code().is_some() => {
                return Err(TurnError::CommandFailed {
                    status: describe(Some(s)),
                    stderr: stderr.settled_text().await,
                });
            }
            None => {
                return Err(TurnError::TimedOut {
                    after: self.settings.turn_timeout,
                    process_kept: true,
                });
            }
            other => {
                return Err(TurnError::Crashed {
                    status: describe(other),
                    stderr: stderr.settled_text().await,
                });
            }
        }
        let text = String::from_utf8_lossy(&reply).into_owned();
        let result = TurnResult {
            text: text.clone(),
            is_error: false,
            subtype: "success".into(),
            session_id: None,
            cost_usd: 0.0,
            total_cost_usd: 0.0,
            usage: Usage::default(),
            num_turns: 1,
            duration: started.elapsed(),
        };
        for event in [TurnEvent::Delta(text), TurnEvent::Result(result.clone())] {
            if events.send(event).await.is_err() {
                tracing::trace!("turn events receiver is gone");
            }
        }
        Ok(result)
    }
}

impl AgentProcess for CommandProcess {
    fn run_turn<'a>(
        &'a mut self,
        text: &'a str,
        events: &'a mpsc::Sender<TurnEvent>,
    ) -> BoxFuture<'a, Result<TurnResult, TurnError>> {
        let span = tracing::info_span!("agent_turn", slot = %self.slot.name);
        Box::pin(self.turn(text, events).instrument(span))
    }

    fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// Each turn's process is stopped with its turn; nothing runs between.
    fn terminate(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn resident_memory_bytes(&self) -> Option<u64> {
        None
    }

    fn is_usable(&self) -> bool {
        true
    }

    fn session_id(&self) -> Option<&str> {
        None
    }
}
