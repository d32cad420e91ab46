//! `[admission]`: who may talk to the bot, how often, and what it may spend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[admission]` settings (reloadable: `POST /admin/reload` or SIGHUP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSettings {
    /// Tell a refused user why, once per reason and day.
    pub refusal_replies: bool,
    /// Accept users from other organisations (Slack Connect).
    pub allow_external_users: bool,
    /// Accept messages from other bots (needs `slack.allow_other_bots`).
    pub allow_bots: bool,
    /// Bot-authored messages per conversation per `bot_loop_window` before
    /// the conversation stops taking them (two bots answering each other).
    pub bot_loop_limit: u32,
    #[serde(with = "humantime_serde")]
    pub bot_loop_window: Duration,
    /// Messages per minute per user (0: no limit), and the burst above it.
    pub user_per_minute: f64,
    pub user_burst: f64,
    /// Messages per minute per channel (0: no limit), and the burst.
    pub channel_per_minute: f64,
    pub channel_burst: f64,
    /// Conversations waiting for a slot, at most; more get "busy, try later".
    pub max_waiting: u64,
    /// A message that waited longer than this for a slot is not run; its
    /// sender gets "busy, try later".
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Daily spend caps in USD (UTC day; 0: none).
    pub user_daily_usd: f64,
    pub channel_daily_usd: f64,
    pub workspace_daily_usd: f64,
    /// Per-workspace lists.
    pub workspaces: Vec<WorkspacePolicy>,
}

/// Allow and deny lists for one Slack workspace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkspacePolicy {
    /// The workspace (team) id, `T...`.
    pub team: String,
    /// Only these channels (empty: any).
    pub allow_channels: Vec<String>,
    /// Never these channels.
    pub deny_channels: Vec<String>,
    /// Only these users (empty: any).
    pub allow_users: Vec<String>,
    /// Never these users.
    pub deny_users: Vec<String>,
    /// These external users are allowed even when external users are not.
    pub allow_external: Vec<String>,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            refusal_replies: true,
            allow_external_users: false,
            allow_bots: false,
            bot_loop_limit: 5,
            bot_loop_window: Duration::from_secs(600),
            user_per_minute: 20.0,
            user_burst: 5.0,
            channel_per_minute: 60.0,
            channel_burst: 20.0,
            max_waiting: 1000,
            max_wait: Duration::from_secs(600),
            user_daily_usd: 0.0,
            channel_daily_usd: 0.0,
            workspace_daily_usd: 0.0,
            workspaces: Vec::new(),
        }
    }
}

impl AdmissionSettings {
    /// Checks beyond the types; returns (field, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let rates = [
            self.user_per_minute,
            self.user_burst,
            self.channel_per_minute,
            self.channel_burst,
        ];
        if rates.iter().any(|r| *r < 0.0 || !r.is_finite()) {
            return Err((
                "admission.user_per_minute",
                "rates and bursts must be 0 or more".into(),
            ));
        }
        if (self.user_per_minute > 0.0 && self.user_burst < 1.0)
            || (self.channel_per_minute > 0.0 && self.channel_burst < 1.0)
        {
            return Err((
                "admission.user_burst",
                "a limited rate needs a burst of at least 1".into(),
            ));
        }
        let caps = [
            self.user_daily_usd,
            self.channel_daily_usd,
            self.workspace_daily_usd,
        ];
        if caps.iter().any(|c| *c < 0.0 || !c.is_finite()) {
            return Err((
                "admission.user_daily_usd",
                "caps must be 0 (none) or more".into(),
            ));
        }
        if self.workspaces.iter().any(|w| w.team.is_empty()) {
            return Err((
                "admission.workspaces",
                "every workspace needs its team id".into(),
            ));
        }
        Ok(())
    }
}
