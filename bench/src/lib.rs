//! Switchboard's benchmarks: every figure measured side by side with a
//! reference in the same run, on loopback, on a noisy machine. See
//! docs/performance.md for what each phase measures and how to read the
//! table.

pub mod agentlog;
pub mod events;
pub mod load;
pub mod opts;
pub mod phases;
pub mod pipeline;
pub mod procs;
pub mod reference;
pub mod report;
pub mod stack;
pub mod stats;
pub mod stub;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};

use crate::opts::Opts;
use crate::procs::Bins;
use crate::report::{PhaseOut, Row};
use crate::stack::{Stack, StackSpec};
use crate::stub::SlackStub;

/// Progress on stderr (the table goes to stdout).
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { eprintln!($($arg)*) };
}

/// What every phase may use.
pub struct Ctx {
    pub opts: Opts,
    pub bins: Bins,
    pub dir: PathBuf,
    pub http: reqwest::Client,
    pub stub: SlackStub,
    /// The main stack: `serve` with `opts.slots` slots.
    pub main: Stack,
}

impl Ctx {
    /// Start another stack (its own Redis) next to the main one.
    pub async fn stack(&self, spec: StackSpec) -> anyhow::Result<Stack> {
        Stack::start(&self.bins, &self.dir, spec, &self.stub.base_url()).await
    }
}

/// What a run produced.
pub struct Outcome {
    pub rows: Vec<Row>,
    pub table: String,
    pub results: PathBuf,
    /// Phases that failed, with their error.
    pub failed: Vec<(String, String)>,
}

/// Run every phase; print the table; write the results file.
pub async fn run(opts: Opts) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let bins = Bins::in_dir(&opts.bin_dir)?;
    let tmp = tempfile::Builder::new()
        .prefix("switchboard-bench")
        .tempdir()?;
    // With --keep-dir it is kept from the start, so a run that fails or is
    // stopped part way keeps its logs too; else it goes when `_tmp` drops.
    let (dir, _tmp) = if opts.keep_dir {
        (tmp.keep(), None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    };
    let dir = std::path::absolute(dir)?;
    let stub = SlackStub::start().await?;
    let spec = StackSpec::serve("main", opts.slots, opts.min_fresh);
    let main = Stack::start(&bins, &dir, spec, &stub.base_url()).await?;
    let idle = phases::e2e::Memory::of(&main);
    if opts.keep_dir {
        log!("keeping the run's files in {}", dir.display());
    }
    let ctx = Ctx {
        opts,
        bins,
        dir,
        http: events::client()?,
        stub,
        main,
    };
    let mut rows = Vec::new();
    let mut raw = serde_json::Map::new();
    let mut failed = Vec::new();
    let mut record = |name: &str, out: anyhow::Result<PhaseOut>, at: Instant| {
        log!("{name}: {:.1}s", at.elapsed().as_secs_f64());
        match out {
            Ok(out) => {
                rows.extend(out.rows);
                raw.insert(name.into(), out.raw);
            }
            Err(e) => {
                log!("{name} FAILED: {e:#}");
                rows.push(Row::new(name, "FAILED", format!("{e:#}")));
                failed.push((name.to_string(), format!("{e:#}")));
            }
        }
    };
    if ctx.opts.only_pool {
        run_pool_phases(&ctx, &mut record).await;
    } else if ctx.opts.only_ack {
        log!("phases 1-2: ack latency and throughput, gateway vs reference");
        let at = Instant::now();
        record("1-2 ack", phases::ack::ack(&ctx).await, at);
    } else if !ctx.opts.only_cpu {
        run_phases_1_to_7(&ctx, &idle, &mut record).await;
    }
    // Instruction counts do not care that the main stack idles meanwhile.
    log!("phase 8: instructions per event (callgrind)");
    let at = Instant::now();
    let cpu = if ctx.opts.cpu_small == 0 {
        Ok(skipped("8", "skipped (--no-cpu)"))
    } else if !valgrind_present() {
        Ok(skipped("8", "skipped: valgrind is not installed"))
    } else {
        phases::cpu::cpu(&ctx).await
    };
    record("8 cpu", cpu, at);
    let table = report::table(&rows);
    let results = write_results(&ctx.opts, &rows, raw, started)?;
    ctx.main.stop();
    Ok(Outcome {
        rows,
        table,
        results,
        failed,
    })
}

/// Phases 1 to 7, each recorded as it ends.
async fn run_phases_1_to_7(
    ctx: &Ctx,
    idle: &phases::e2e::Memory,
    record: &mut impl FnMut(&str, anyhow::Result<PhaseOut>, Instant),
) {
    log!("phases 1-2: ack latency and throughput, gateway vs reference");
    let at = Instant::now();
    record("1-2 ack", phases::ack::ack(ctx).await, at);
    log!("phase 3: ack latency, busy slots + backlog vs idle");
    let at = Instant::now();
    record("3 backlog", phases::ack::backlog(ctx).await, at);
    log!("phase 4: the message path, decomposed");
    let at = Instant::now();
    ctx.stub.clear();
    record("4 path", phases::path::path(ctx).await, at);
    run_pool_phases(ctx, record).await;
    log!("phase 7: memory");
    let at = Instant::now();
    let messages = agentlog::turns(&agentlog::read(&ctx.main.stdin_log)).len();
    record(
        "7 memory",
        phases::e2e::memory(ctx, idle, messages).await,
        at,
    );
}

/// Phases 5 and 6: what the pool decides.
async fn run_pool_phases(
    ctx: &Ctx,
    record: &mut impl FnMut(&str, anyhow::Result<PhaseOut>, Instant),
) {
    log!("phase 5: warm vs cold");
    let at = Instant::now();
    record("5 warm", phases::path::warm(ctx).await, at);
    log!("phase 6: end-to-end throughput, gateway vs pipeline reference");
    let at = Instant::now();
    ctx.stub.clear();
    record("6 e2e", phases::e2e::e2e(ctx).await, at);
}

fn skipped(phase: &str, why: &str) -> PhaseOut {
    PhaseOut {
        rows: vec![Row::new(phase, "instructions/event", why.to_string())],
        raw: json!({ "skipped": why }),
    }
}

fn valgrind_present() -> bool {
    std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn write_results(
    opts: &Opts,
    rows: &[Row],
    raw: serde_json::Map<String, Value>,
    started: Instant,
) -> anyhow::Result<PathBuf> {
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let doc = json!({
        "date": when,
        "machine": report::machine(),
        "opts": opts,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "table": rows,
        "phases": raw,
    });
    if let Some(parent) = opts.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&doc)?)?;
    Ok(opts.out.clone())
}

/// `bench/results/<date>.json` under `root`.
pub fn default_out(root: &Path) -> PathBuf {
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    root.join("bench/results")
        .join(format!("{}.json", when.replace(':', "-")))
}
