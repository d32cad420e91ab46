//! The `switchboard` command: parse the command line, load config, start
//! telemetry, and hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::app::{Application, Role};
use switchboard::config::Settings;

// mimalloc instead of the system allocator: an event's path makes dozens of
// small allocations (JSON, keys, script arguments, hyper's buffers), and
// glibc's malloc and free took about a fifth of its instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Runs AI agents on Slack and email")]
struct Cli {
    /// Config file (default: $SWITCHBOARD_CONFIG, else built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every role on one machine (starts its own Redis if REDIS_URL is unset).
    Serve,
    /// Ingress, egress and admin HTTP only.
    Gateway,
    /// One pool container: agent slots fed from the queue.
    Worker,
    /// Validate the config and print it, secrets redacted.
    CheckConfig,
    /// Exit 0 when this machine's worker had a successful Redis heartbeat
    /// lately (a container health check or Kubernetes probe).
    WorkerAlive {
        /// Oldest acceptable heartbeat (default: 3 x queue.heartbeat_ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        max_age: Option<std::time::Duration>,
    },
    /// Print the worker Redis user's ACL rule (for an ACL file, or with
    /// --setuser as an ACL SETUSER command), from pool.worker_redis_user,
    /// redis.key_prefix and SWITCHBOARD_WORKER_REDIS_PASSWORD.
    RedisAcl {
        /// Print `ACL SETUSER ...` instead of an ACL file line.
        #[arg(long)]
        setuser: bool,
    },
    /// Talk to the pool from this terminal (through a running gateway).
    Chat {
        /// Conversation name; the same name continues a conversation.
        #[arg(long)]
        session: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("switchboard: configuration error:\n{e}");
            return ExitCode::from(2);
        }
    };
    let role = match cli.command {
        Command::CheckConfig => {
            print!("{}", settings.render_redacted());
            return ExitCode::SUCCESS;
        }
        Command::WorkerAlive { max_age } => {
            let max_age = max_age.unwrap_or(settings.queue.heartbeat_ttl * 3);
            return match switchboard::pool::check_alive(&settings.data_dir, max_age) {
                Ok(age) => {
                    println!("alive: last heartbeat {} ms ago", age.as_millis());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchboard: worker not alive: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::RedisAcl { setuser } => return redis_acl(&settings, setuser),
        Command::Serve => Role::Serve,
        Command::Gateway => Role::Gateway,
        Command::Worker => Role::Worker,
        Command::Chat { session } => return chat(settings, session),
    };
    switchboard::telemetry::init_logging(&settings.log);
    let runtime = match runtime(settings.threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("switchboard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // block_on runs on this (main) thread, which lives as long as the
    // process: children spawned from it keep their parent-death signal.
    match runtime.block_on(run(settings, role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime, on `threads` threads (0: one per core). One thread
/// is the default: a gateway's Redis saturates before one core of event
/// handling does (about 20 µs of gateway CPU per Slack event against 22 µs
/// in its Redis), a worker relays lines between Redis and its agents'
/// pipes, and every hand-off between runtime threads is a futex wake-up.
/// On 2 cores (docs/performance.md) one thread took a fifth less CPU per
/// reply in the gateway and a tenth less in the worker, with no loss of
/// ingress throughput. Scale a gateway out with replicas.
fn runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 1 {
        builder.worker_threads(usize::from(threads));
    }
    builder.enable_all().build()
}

fn redis_acl(settings: &Settings, setuser: bool) -> ExitCode {
    let Some(password) = &settings.secrets.worker_redis_password else {
        eprintln!(
            "switchboard: set SWITCHBOARD_WORKER_REDIS_PASSWORD (or \
             pool.worker_redis_password_file) to the worker user's password"
        );
        return ExitCode::from(2);
    };
    let user = &settings.pool.worker_redis_user;
    let prefix = &settings.redis.key_prefix;
    let made = if setuser {
        switchboard::store::acl::worker_rules(prefix, password)
            .map(|rules| format!("ACL SETUSER {user} {}", rules.join(" ")))
    } else {
        switchboard::store::acl::worker_acl_line(user, prefix, password)
    };
    match made {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::from(2)
        }
    }
}

fn chat(settings: Settings, session: Option<String>) -> ExitCode {
    let session = session.unwrap_or_else(|| format!("chat-{}", std::process::id()));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("switchboard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let queue = switchboard::app::connect_queue(&settings).await?;
        eprintln!("chatting as session {session:?}; Ctrl-D to leave");
        let input = tokio::io::BufReader::new(tokio::io::stdin());
        let mut output = tokio::io::stdout();
        let timeout = settings.agent.turn_timeout + std::time::Duration::from_secs(30);
        switchboard::console::chat(&queue, &session, input, &mut output, timeout).await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings, role: Role) -> anyhow::Result<()> {
    let shutdown = switchboard::shutdown::on_signals()?;
    let app = Application::build(settings, role).await?;
    app.run_until_stopped(shutdown).await
}
