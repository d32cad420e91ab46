//! `[agent]`: which agent CLI runs in the slots, how, and its guards.
//!
//! The documented section, as it goes into `config/switchboard.toml`:
//!
//! ```toml
//! [agent]
//! # Which driver runs the agent: "claude-code" (one long-lived Claude Code
//! # process per slot, stream-json protocol) or "command" (one process per
//! # turn: the message on stdin, the whole stdout is the reply).
//! kind = "claude-code"
//! # The program to run, found on `path` unless absolute.
//! command = "claude"
//! # Extra arguments, placed before the ones Switchboard adds.
//! args = []
//! # Model (`--model`); unset: the CLI's default.
//! # model = "claude-sonnet-4-5"
//! # Appended to the system prompt (`--append-system-prompt`).
//! # append_system_prompt = "You answer in a Slack thread."
//! # Tools the agent may use without asking (`--allowedTools`); empty: not passed.
//! allowed_tools = []
//! # Model round trips per user turn (`--max-turns`); unset: no limit.
//! # max_turns = 20
//! # Spending cap per process in USD (`--max-budget-usd`); unset: none.
//! # max_budget_usd = 5.0
//! # `--permission-mode` (default, acceptEdits, bypassPermissions, plan).
//! # permission_mode = "default"
//! # Run agents as this unix user (only when Switchboard runs as root);
//! # slot directories are handed to it. Unset: same user as Switchboard.
//! # user = "agent"
//! # Where slot directories (working, config and temp dirs) are made.
//! slots_dir = "switchboard-data/slots"
//! # PATH of the agent process (nothing else of our environment reaches it).
//! path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
//! # LANG of the agent process.
//! lang = "C.UTF-8"
//! # From a spawn until the agent answers the initialize handshake.
//! start_timeout = "60s"
//! # Longest a turn may take, from sending the message to the result.
//! turn_timeout = "10m"
//! # A running turn with no output line for this long is a hang: the
//! # agent is interrupted, then killed, and the turn fails (retryable).
//! silence_timeout = "3m"
//! # After an interrupt, how long to wait for the turn's result.
//! interrupt_grace = "5s"
//! # After SIGTERM, how long before SIGKILL.
//! terminate_timeout = "5s"
//! # Largest reply the command driver reads from stdout.
//! max_output_bytes = 4194304
//!
//! # Variables for the agent's environment, on top of PATH, HOME, LANG,
//! # the slot's directories and CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1.
//! # Nothing else of Switchboard's environment reaches the agent.
//! [agent.env]
//! # ANTHROPIC_BASE_URL = "http://127.0.0.1:8080"
//! ```
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
    /// Variables for the agent's environment, on top of PATH, HOME, LANG, the
    /// slot's directories and `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`.
    pub env: BTreeMap<String, String>,
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
            env: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snippet() -> String {
        let doc = include_str!("settings.rs");
        let start = doc.find("//! ```toml\n").expect("snippet start") + "//! ```toml\n".len();
        let end = start + doc[start..].find("//! ```\n").expect("snippet end");
        doc[start..end]
            .lines()
            .map(|l| {
                l.strip_prefix("//! ")
                    .or(l.strip_prefix("//!"))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn documented_snippet_parses_to_the_defaults() {
        #[derive(Deserialize)]
        struct File {
            agent: AgentSettings,
        }
        let file: File = toml::from_str(&snippet()).expect("snippet parses");
        assert_eq!(file.agent, AgentSettings::default());
    }

    #[test]
    fn snippet_file_matches_the_module_doc() {
        let file = include_str!("../../docs/agent-config-snippet.toml");
        assert_eq!(file.trim_end(), snippet().trim_end());
    }

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
