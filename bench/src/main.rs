//! `switchboard-bench`: run the benchmarks (`all`), or serve the ingress
//! reference (`reference`, started by `all` as its own process).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use switchboard_bench::opts::Opts;

#[derive(Parser)]
#[command(about = "Switchboard benchmarks, side by side with references")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every phase, print the table, write the results file.
    All {
        /// Tiny counts, for CI: checks the bench works, measures nothing.
        #[arg(long)]
        quick: bool,
        /// Keep the run's directory (configs, logs, callgrind output).
        #[arg(long)]
        keep_dir: bool,
        /// Skip phase 8 (callgrind), e.g. to iterate on the others.
        #[arg(long)]
        no_cpu: bool,
        /// Run phase 8 (callgrind) alone.
        #[arg(long, conflicts_with = "no_cpu")]
        only_cpu: bool,
        /// Run phases 5 and 6 (warm hit, end to end) alone, without phase 8.
        #[arg(long, conflicts_with = "only_cpu")]
        only_pool: bool,
        /// Run phases 1 and 2 (ack latency, saturation) alone, without
        /// phase 8.
        #[arg(long, conflicts_with_all = ["only_cpu", "only_pool"])]
        only_ack: bool,
        /// Agent slots per worker (default: 4 per core). Phase 6 runs one
        /// closed loop per slot that stays warm (slots minus the fresh
        /// slots kept ready), on both sides alike.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
        slots: Option<u32>,
        /// Where switchboard, stand-in-agent and switchboard-bench are
        /// (default: next to this program).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// The results file (default: bench/results/<date>.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The ingress reference server (verify, XADD, 200).
    Reference {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        redis_url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Reference { listen, redis_url } => {
            switchboard_bench::reference::serve(listen, &redis_url).await
        }
        Cmd::All {
            quick,
            keep_dir,
            no_cpu,
            only_cpu,
            only_pool,
            only_ack,
            slots,
            bin_dir,
            out,
        } => {
            let exe = std::env::current_exe()?;
            let bin_dir = match bin_dir {
                Some(dir) => dir,
                None => exe
                    .parent()
                    .map(PathBuf::from)
                    .ok_or_else(|| anyhow::anyhow!("cannot locate {}", exe.display()))?,
            };
            let root = std::env::current_dir()?;
            let out = out.unwrap_or_else(|| switchboard_bench::default_out(&root));
            let mut opts = if quick {
                Opts::quick(bin_dir, out)
            } else {
                Opts::full(bin_dir, out)
            };
            opts.keep_dir = keep_dir;
            opts.only_cpu = only_cpu;
            opts.only_pool = only_pool;
            opts.only_ack = only_ack;
            if let Some(slots) = slots {
                if slots <= opts.min_fresh {
                    anyhow::bail!(
                        "--slots {slots}: needs more than the {} fresh slots kept ready, \
                         or no conversation stays warm",
                        opts.min_fresh
                    );
                }
                opts.slots = slots;
            }
            if no_cpu || only_pool || only_ack {
                opts.cpu_small = 0;
            }
            // Stopped by a signal, the run is dropped: each process it
            // started is stopped by its guard before this one exits.
            let stop = stop_requested();
            let outcome = tokio::select! {
                outcome = switchboard_bench::run(opts) => outcome?,
                signal = stop => {
                    anyhow::bail!("{signal}: stopped the run and every process it started")
                }
            };
            println!("{}", outcome.table);
            println!("raw results: {}", outcome.results.display());
            if !outcome.failed.is_empty() {
                anyhow::bail!("{} phase(s) failed", outcome.failed.len());
            }
            Ok(())
        }
    }
}

/// SIGTERM or SIGINT: which one came. Never, if they cannot be watched.
/// Both are watched from this call on, before the returned future runs.
fn stop_requested() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}
