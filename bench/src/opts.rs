//! How big a run is. `full` is the real benchmark (under 10 minutes after
//! the release build); `quick` runs every phase with tiny counts so CI can
//! check the bench still works (no timing assertions).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Opts {
    /// Where the binaries are (`target/release` or `target/debug`).
    pub bin_dir: PathBuf,
    /// Where the results JSON goes (a file).
    pub out: PathBuf,
    /// "full" or "quick".
    pub mode: String,
    /// Keep the run's directory (configs, logs, callgrind files) after it.
    pub keep_dir: bool,
    /// Run phase 8 alone (to iterate on what it measures).
    pub only_cpu: bool,
    /// Run phases 5 and 6 alone (to iterate on the pool).
    pub only_pool: bool,
    /// Phases 1 and 2 alone.
    pub only_ack: bool,
    /// Interleaved rounds of each comparison.
    pub rounds: usize,
    /// Requests per round at 100/s, at 1000/s, and saturated.
    pub n_100: usize,
    pub n_1000: usize,
    pub n_saturated: usize,
    /// Concurrent connections for saturation.
    pub connections: usize,
    /// Upper bound on any one load loop.
    pub max_loop: Duration,
    /// Phase 3: queued messages in the backlog; requests per round.
    pub backlog: usize,
    pub n_backlog_round: usize,
    /// Phase 4: messages, rate, agent think time (ms).
    pub n_path: usize,
    pub path_rate: f64,
    pub think_ms: u64,
    /// Phase 5: new conversations and their rate; cold starts measured.
    pub n_new: usize,
    pub new_rate: f64,
    pub cold_starts: usize,
    /// Phase 6: messages through the gateway (and as many through the
    /// pipeline reference), split over `rounds` rounds.
    pub n_e2e: usize,
    /// Slots per worker; phase 6 lanes are slots - min_fresh.
    pub slots: u32,
    pub min_fresh: u32,
    /// A conversation moves to a new DM channel after this many turns.
    pub turns_per_conversation: usize,
    /// Phase 8: requests in the small and the large callgrind run (0: skip).
    pub cpu_small: usize,
    pub cpu_large: usize,
}

impl Opts {
    pub fn full(bin_dir: PathBuf, out: PathBuf) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
        Self {
            bin_dir,
            out,
            mode: "full".into(),
            keep_dir: false,
            only_cpu: false,
            only_pool: false,
            only_ack: false,
            rounds: 5,
            n_100: 300,
            n_1000: 3000,
            n_saturated: 20_000,
            connections: 64,
            max_loop: Duration::from_secs(10),
            backlog: 100_000,
            n_backlog_round: 2000,
            n_path: 3000,
            path_rate: 100.0,
            think_ms: 10,
            n_new: 60,
            new_rate: 3.0,
            cold_starts: 10,
            n_e2e: 10_000,
            slots: 4 * cores,
            min_fresh: 2,
            turns_per_conversation: 20,
            cpu_small: 200,
            cpu_large: 1200,
        }
    }

    pub fn quick(bin_dir: PathBuf, out: PathBuf) -> Self {
        Self {
            mode: "quick".into(),
            rounds: 2,
            n_100: 10,
            n_1000: 30,
            n_saturated: 40,
            connections: 8,
            max_loop: Duration::from_secs(5),
            backlog: 500,
            n_backlog_round: 20,
            n_path: 30,
            path_rate: 50.0,
            think_ms: 5,
            n_new: 4,
            new_rate: 4.0,
            cold_starts: 2,
            n_e2e: 60,
            slots: 3,
            min_fresh: 1,
            turns_per_conversation: 5,
            cpu_small: 3,
            cpu_large: 9,
            ..Self::full(bin_dir, out)
        }
    }

    /// Phase 6 lanes (conversations in flight): the slots that stay warm.
    pub fn lanes(&self) -> usize {
        self.slots.saturating_sub(self.min_fresh).max(1) as usize
    }
}
