//! `[agent]`: which agent CLI runs in the slots, how, and its guards.
//!
//! Every field is documented, with its default, in `config/switchboard.toml`.
//!
//! The same text is in `docs/agent-config-snippet.toml`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which driver runs the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentKind {
    /// A long-lived Claude Code process per slot, stream-json protocol.
    ClaudeCode,
    /// One process per turn: message on stdin, reply on stdout.
    Command,
}

/// `[agent]`: which agent CLI runs in the slots, how, and its guards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// Which driver runs the agent: `claude-code` or `command`.
    pub kind: AgentKind,
    /// The program to run, found on `path` unless absolute.
    pub command: String,
    /// Extra arguments, placed before the ones Switchboard adds.
    pub args: Vec<String>,
    /// Model (`--model`); unset: the CLI's default.
    pub model: Option<String>,
    /// Appended to the system prompt (`--append-system-prompt`).
    pub append_system_prompt: Option<String>,
    /// Tools the agent may use without asking (`--allowedTools`); empty: not passed.
    pub allowed_tools: Vec<String>,
    /// Model round trips per user turn (`--max-turns`); unset: no limit.
    pub max_turns: Option<u32>,
    /// Spending cap per process in USD (`--max-budget-usd`); unset: none.
    pub max_budget_usd: Option<f64>,
    /// `--permission-mode` (default, acceptEdits, bypassPermissions, plan).
    pub permission_mode: Option<String>,
    /// Run agents as this unix user (only when Switchboard runs as root);
    /// slot directories are handed to it. Unset: same user as Switchboard.
    pub user: Option<String>,
    /// Where slot directories (working, config and temp dirs) are made.
    pub slots_dir: PathBuf,
    /// PATH of the agent process (nothing else of our environment reaches it).
    pub path: String,
    /// LANG of the agent process.
    pub lang: String,
    /// From a spawn until the agent answers the initialize handshake.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// Longest a turn may take, from sending the message to the result.
    #[serde(with = "humantime_serde")]
    pub turn_timeout: Duration,
    /// A running turn with no output line for this long is a hang: the agent
    /// is interrupted, then killed, and the turn fails (retryable).
    #[serde(with = "humantime_serde")]
    pub silence_timeout: Duration,
    /// After an interrupt, how long to wait for the turn's result.
    #[serde(with = "humantime_serde")]
    pub interrupt_grace: Duration,
    /// After SIGTERM, how long before SIGKILL.
    #[serde(with = "humantime_serde")]
    pub terminate_timeout: Duration,
    /// Largest reply the command driver reads from stdout.
    pub max_output_bytes: usize,
    /// A slot's process is replaced by a fresh one after this many turns
    /// (long-lived CLI processes grow).
    pub max_turns_per_process: u32,
    /// ...or when its resident memory passes this many MiB after a turn.
    pub max_rss_mib: u64,
    /// Variables for the agent's environment, on top of PATH, HOME, LANG, the
    /// slot's directories and `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`.
    pub env: BTreeMap<String, String>,
    /// File holding the agent's API key, read when `ANTHROPIC_API_KEY` is
    /// unset; passed to agents as `ANTHROPIC_API_KEY`.
    pub api_key_file: Option<PathBuf>,
    /// Secret variables for the agent (its own API key), filled from the
    /// environment at load; never serialized or logged.
    #[serde(skip)]
    pub secret_env: BTreeMap<String, crate::config::Secret>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            kind: AgentKind::ClaudeCode,
            command: "claude".into(),
            args: Vec::new(),
            model: None,
            append_system_prompt: None,
            allowed_tools: Vec::new(),
            max_turns: None,
            max_budget_usd: None,
            permission_mode: None,
            user: None,
            slots_dir: PathBuf::from("switchboard-data/slots"),
            path: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            lang: "C.UTF-8".into(),
            start_timeout: Duration::from_secs(60),
            turn_timeout: Duration::from_secs(600),
            silence_timeout: Duration::from_secs(180),
            interrupt_grace: Duration::from_secs(5),
            terminate_timeout: Duration::from_secs(5),
            max_output_bytes: 4 * 1024 * 1024,
            max_turns_per_process: 200,
            max_rss_mib: 1024,
            env: BTreeMap::new(),
            api_key_file: None,
            secret_env: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_errors_and_kinds_parse() {
        let bad = toml::from_str::<AgentSettings>("colour = \"blue\"");
        assert!(bad.is_err());
        let command: AgentSettings =
            toml::from_str("kind = \"command\"\nturn_timeout = \"90s\"").expect("parse");
        assert_eq!(command.kind, AgentKind::Command);
        assert_eq!(command.turn_timeout, Duration::from_secs(90));
    }
}
