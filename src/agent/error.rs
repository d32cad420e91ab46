//! Why a process did not start or a turn failed, classified for the caller:
//! retry (with backoff, usually on a fresh process) or give up.

use std::time::Duration;

use super::TurnResult;

/// Why an agent process did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The settings cannot work (unknown user, bad session id...).
    #[error("agent settings: {0}")]
    Config(String),
    /// The slot's directories could not be made or handed over.
    #[error("preparing slot directory {path}: {source}")]
    SlotDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The program could not be started.
    #[error("starting agent command {command:?}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// No answer to the initialize handshake in time.
    #[error("agent did not become ready within {0:?}")]
    Timeout(Duration),
    /// The process exited (or closed its output) before it was ready.
    #[error("agent exited before it was ready ({status}); stderr: {stderr}")]
    Exited { status: String, stderr: String },
    /// The process answered the handshake with an error.
    #[error("agent refused the initialize request: {0}")]
    Refused(String),
    /// Reading from or writing to the process failed.
    #[error("talking to the agent during start: {0}")]
    Io(std::io::Error),
}

impl StartError {
    /// Whether starting again may work.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Config(_) | Self::Refused(_) => false,
            Self::Spawn { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            Self::SlotDir { .. } | Self::Timeout(_) | Self::Exited { .. } | Self::Io(_) => true,
        }
    }

    /// Whether the process said the session to resume does not exist (the
    /// caller may start a new session instead).
    pub fn is_missing_session(&self) -> bool {
        matches!(self, Self::Exited { stderr, .. } if stderr.contains("No conversation found"))
    }
}

/// Why a turn failed.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The process is gone or was given up earlier.
    #[error("agent process is not running")]
    NotRunning,
    /// The turn went past `agent.turn_timeout`; it was interrupted, and the
    /// process killed when it did not stop within the grace period.
    #[error("turn took longer than {after:?}")]
    TimedOut { after: Duration, process_kept: bool },
    /// No output for `agent.silence_timeout`: a hang. The process was killed.
    #[error("agent was silent for {after:?}; killed it")]
    Silent { after: Duration },
    /// The process exited or closed its output mid-turn.
    #[error("agent process died mid-turn ({status}); stderr: {stderr}")]
    Crashed { status: String, stderr: String },
    /// The agent ended the turn with `is_error` (API error, max turns...).
    #[error("agent reported an error ({}): {}", result.subtype, short(&result.text))]
    Agent { result: TurnResult },
    /// The turn was interrupted on request.
    #[error("turn interrupted")]
    Interrupted { process_kept: bool },
    /// A one-shot command exited with a non-zero code.
    #[error("agent command failed ({status}); stderr: {stderr}")]
    CommandFailed { status: String, stderr: String },
    /// Writing to or reading from the process failed.
    #[error("talking to the agent: {0}")]
    Io(std::io::Error),
}

impl TurnError {
    /// Whether running the turn again (on a fresh process when
    /// [`Self::process_dead`]) may work.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::NotRunning | Self::Silent { .. } | Self::Crashed { .. } | Self::Io(_) => true,
            Self::Agent { result } => {
                result.subtype == "success" && result.text.starts_with("API Error")
            }
            Self::TimedOut { .. } | Self::Interrupted { .. } | Self::CommandFailed { .. } => false,
        }
    }

    /// Whether the process is gone and the slot needs a new one.
    pub fn process_dead(&self) -> bool {
        match self {
            Self::NotRunning | Self::Silent { .. } | Self::Crashed { .. } | Self::Io(_) => true,
            Self::TimedOut { process_kept, .. } | Self::Interrupted { process_kept } => {
                !process_kept
            }
            Self::Agent { .. } | Self::CommandFailed { .. } => false,
        }
    }
}

/// The start of a possibly long text, for error messages.
fn short(text: &str) -> &str {
    match text.char_indices().nth(200) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}
