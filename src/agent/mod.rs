//! The agent layer: runs agent CLI processes for slots and drives turns.
//!
//! A slot is one directory tree ([`SlotDirs`]) and, with the Claude Code
//! driver, one long-lived process speaking the stream-json protocol
//! (`protocol`). An [`AgentLauncher`] starts a process for a slot and makes
//! it ready; an [`AgentProcess`] runs one turn at a time, sends text deltas
//! and the result through a channel as they come, and guards the turn with
//! a turn timeout, a silence watchdog and crash detection. Two drivers
//! exist, chosen by `agent.kind`: `claude` (a process per slot) and
//! `command` (a process per turn).
//!
//! Every agent process gets a cleared environment (only PATH, HOME, LANG,
//! the slot's directories and `agent.env`), its own process group, a
//! parent-death signal, and optionally another unix user (`spawn`, `slot`).

mod claude;
mod command;
mod error;
pub mod protocol;
mod settings;
mod slot;
mod spawn;
pub mod transcript;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub use claude::{ClaudeLauncher, ClaudeProcess};
pub use command::{CommandLauncher, CommandProcess};
pub use error::{StartError, TurnError};
pub use protocol::Usage;
pub use settings::{AgentKind, AgentSettings};
pub use slot::{SlotDirs, UnixUser};
pub use transcript::TranscriptError;

/// A boxed future, so the driver traits can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which conversation a new process starts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SessionStart {
    /// A fresh session; the CLI picks its id (learned from the first turn).
    #[default]
    New,
    /// A fresh session with this id (`--session-id`, a UUID).
    NewWithId(String),
    /// Continue this session (`--resume`); its transcript must already be in
    /// the slot's config directory (see [`transcript::write`]).
    Resume(String),
}

/// Starts agent processes for slots. One implementation per `agent.kind`.
pub trait AgentLauncher: Send + Sync {
    /// Start an agent for `slot` on `session` and wait until it is ready for
    /// its first turn. The slot's directories are created (and handed to
    /// `agent.user`) first.
    fn start<'a>(
        &'a self,
        slot: &'a SlotDirs,
        session: SessionStart,
    ) -> BoxFuture<'a, Result<Box<dyn AgentProcess>, StartError>>;
}

/// A started agent: runs turns one at a time.
pub trait AgentProcess: Send {
    /// Run one turn: send `text` (the batch, formatted by the caller) and
    /// wait for its result. Text deltas and the result also go to `events`
    /// as they come (a full channel slows reading; the turn timeout still
    /// counts). After an error with [`TurnError::process_dead`], or when
    /// [`AgentProcess::is_usable`] turns false, call
    /// [`AgentProcess::terminate`] and start a new process. Dropping this
    /// future mid-turn leaves the process unusable.
    fn run_turn<'a>(
        &'a mut self,
        text: &'a str,
        events: &'a mpsc::Sender<TurnEvent>,
    ) -> BoxFuture<'a, Result<TurnResult, TurnError>>;

    /// A handle that interrupts the running turn from elsewhere.
    fn interrupter(&self) -> Interrupter;

    /// Stop the process: SIGTERM to its process group, SIGKILL after
    /// `agent.terminate_timeout`, and reap it. Idempotent.
    fn terminate(&mut self) -> BoxFuture<'_, ()>;

    /// The process id, while a process runs.
    fn pid(&self) -> Option<u32>;

    /// Resident memory of the process in bytes (VmRSS), while it runs.
    fn resident_memory_bytes(&self) -> Option<u64>;

    /// Whether the process can take another turn.
    fn is_usable(&self) -> bool;

    /// The session id, once known.
    fn session_id(&self) -> Option<&str>;
}

/// What a running turn reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    /// A piece of reply text, in order; together they make the final text.
    Delta(String),
    /// The turn's result line (also for a failed turn the agent reported).
    Result(TurnResult),
}

/// How a turn ended, as the agent reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnResult {
    /// The final text of the turn.
    pub text: String,
    /// The agent reported a failure (API error, max turns, interrupted...).
    pub is_error: bool,
    /// The result subtype (`success`, `error_max_turns`, ...).
    pub subtype: String,
    /// The session the turn belongs to.
    pub session_id: Option<String>,
    /// What this turn cost in USD.
    pub cost_usd: f64,
    /// What the process has cost so far in USD.
    pub total_cost_usd: f64,
    /// Tokens of this turn.
    pub usage: Usage,
    /// Model round trips in this turn.
    pub num_turns: u32,
    /// From sending the message to the result, as we measured it.
    pub duration: Duration,
}

/// Interrupts the running turn of one process; cheap to clone.
///
/// An interrupt with no turn running is forgotten, not kept for the next.
#[derive(Debug, Clone)]
pub struct Interrupter(Arc<watch::Sender<u64>>);

impl Interrupter {
    fn new() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }

    /// Ask the running turn to stop. It ends with [`TurnError::Interrupted`].
    pub fn interrupt(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Watch for interrupts that come after this call.
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// The launcher for `settings.kind`.
pub fn launcher(settings: &AgentSettings) -> Result<Arc<dyn AgentLauncher>, StartError> {
    Ok(match settings.kind {
        AgentKind::ClaudeCode => Arc::new(ClaudeLauncher::new(settings.clone())?),
        AgentKind::Command => Arc::new(CommandLauncher::new(settings.clone())?),
    })
}
