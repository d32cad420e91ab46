//! `[pool]`: how many worker containers, how many slots each, and how slots
//! are kept warm.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Who starts the pool's worker containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolRuntime {
    /// `serve` starts `pool.containers` local `switchboard worker` processes.
    Process,
    /// Workers are started by something else (Kubernetes, compose, by hand);
    /// the gateway only watches them.
    External,
}

/// `[pool]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Who starts worker containers: "process" or "external".
    pub runtime: PoolRuntime,
    /// Worker containers (with the process runtime: worker processes).
    pub containers: u32,
    /// Agent processes ("slots") kept warm per container.
    pub slots_per_container: u32,
    /// Keep at least this many slots fresh (started, no conversation) when
    /// possible, by evicting the least recently used idle conversation.
    pub min_fresh: u32,
    /// A slot holding a conversation idle this long is restarted fresh (the
    /// conversation resumes from its stored session when it comes back).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// On shutdown, how long running turns may take to finish before they
    /// are interrupted (their conversations then run elsewhere).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            runtime: PoolRuntime::Process,
            containers: 1,
            slots_per_container: 2,
            min_fresh: 1,
            idle_timeout: Duration::from_secs(30 * 60),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

impl PoolSettings {
    /// Checks beyond the types; returns (field, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.slots_per_container == 0 || self.slots_per_container > 256 {
            return Err(("pool.slots_per_container", "must be 1 to 256".into()));
        }
        if self.containers > 1024 {
            return Err(("pool.containers", "must be at most 1024".into()));
        }
        if self.min_fresh > self.slots_per_container {
            return Err((
                "pool.min_fresh",
                "cannot exceed pool.slots_per_container".into(),
            ));
        }
        Ok(())
    }
}
