//! The `outpost` command: parse arguments, load the config, start logging, run the library.

mod commands;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use commands::load::LoadArgs;
use commands::replay::ReplayArgs;
use commands::serve::{demo, serve, shutdown_signal, SettingsArgs};
use commands::warm::WarmArgs;
use outpost::config::{ByteSize, HumanDuration, LogFormat};
use outpost::tools::sample_origin::{self, SampleOriginSettings};
use outpost::Config;

/// jemalloc, chosen deliberately: with glibc malloc, hit throughput of a proxy with a full
/// cache halves (fragmentation in `_int_malloc`, measured on this kind of machine with
/// Pingora); jemalloc also returns freed cache memory more predictably.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (the `_RJEM_MALLOC_CONF` environment variable
/// still overrides them). `background_thread`: freed pages are returned to the system by a
/// thread of jemalloc's own as they age (`dirty_decay_ms`, 10 s), not only when this
/// process next allocates, so a node's memory falls back after a burst of large misses
/// even when it then goes quiet; one such thread does for every arena.
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_OPTIONS: &[u8; 48] = b"background_thread:true,max_background_threads:1\0";

/// outpost: a caching edge proxy in front of a slow origin.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    ///
    /// Settings come from built-in defaults, then --config FILE, then OUTPOST_* environment
    /// variables (nested keys joined by `__`, e.g. OUTPOST_SERVER__IDLE_TIMEOUT=30s), then
    /// these flags.
    Serve {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Validate a configuration and print the effective settings as TOML.
    Check {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Run the sample origin: deterministic content per path, slow on purpose.
    ///
    /// Query overrides per request: latency=250ms, size=1MiB, cc=<Cache-Control>, status=404.
    Origin {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Delay before each response.
        #[arg(long, default_value = "300ms")]
        latency: HumanDuration,
        /// Body size of each response.
        #[arg(long, default_value = "16KiB")]
        body_size: ByteSize,
        /// Cache-Control sent with each response ("" for none).
        #[arg(long, default_value = "public, max-age=60")]
        cache_control: String,
    },
    /// Replay a request trace through outpost's replacement policies and report hit ratios
    /// per cache size (table, CSV, JSON, SVG miss-ratio curve).
    Replay(ReplayArgs),
    /// Drive HTTP load at a running cache with Zipf (or trace-driven) keys; report
    /// requests/s, latency percentiles and the hit ratio seen in Cache-Status.
    Load(LoadArgs),
    /// Fetch through a running package mirror everything lock files need (pip, cargo,
    /// npm, Debian), so the mirror can serve them offline; prints fetched, already cached
    /// and failed.
    Warm(WarmArgs),
    /// Start the sample origin and outpost in front of it, and print what to try.
    Demo {
        /// Address outpost listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Origin latency, to make the proxy's effect visible.
        #[arg(long, default_value = "300ms")]
        latency: HumanDuration,
    },
}

/// Returns the pages jemalloc holds freed, in every arena, to the system now rather than
/// as they age: asked by the memory tier when heap it let go of will not be reused soon
/// (see `outpost::cache::heap_release`).
fn release_freed_heap() {
    // "arena.<MALLCTL_ARENAS_ALL>.purge" (4096 in jemalloc 5) reads and writes no value.
    let name = c"arena.4096.purge";
    // SAFETY: the name is a NUL-terminated string, and a control without values is given
    // null pointers and lengths, as jemalloc's mallctl(3) requires.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if status != 0 {
        tracing::debug!(status, "the allocator did not release its freed pages");
    }
}

fn main() -> std::process::ExitCode {
    outpost::cache::heap_release::install_release(release_freed_heap);
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("outpost: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Check { settings } => {
            let config = settings.load()?;
            let warnings = commands::check::preflight(&config)?;
            print!("{}{}", config.to_toml(), config.derived_comments());
            for warning in warnings {
                eprintln!("outpost: warning: {warning}");
            }
            eprintln!("outpost: configuration is valid");
            Ok(())
        }
        Command::Serve { settings } => {
            let config = settings.load()?;
            let _log_guard = init_logging(&config);
            let ignored = outpost::config::ignored_env_vars();
            if !ignored.is_empty() {
                tracing::warn!(
                    ?ignored,
                    "OUTPOST_ environment variables that name no setting are ignored"
                );
            }
            let loader: outpost::ConfigLoader = Box::new(move || settings.load_config());
            // On a worker, not the thread that blocks: accepted connections are then spawned
            // onto the accepting worker's own queue rather than handed across threads (a
            // wake-up and a context switch per connection). On one CPU the thread that
            // blocks is the only worker, and the spawn costs nothing.
            runtime()?.block_on(async move {
                tokio::spawn(serve(config, Some(loader)))
                    .await
                    .context("the server task failed")?
            })
        }
        Command::Origin {
            listen,
            latency,
            body_size,
            cache_control,
        } => {
            let _log_guard = init_logging(&Config::default());
            let settings = SampleOriginSettings {
                latency: latency.get(),
                body_size: body_size.as_u64(),
                cache_control,
            };
            runtime()?.block_on(async move {
                let listener = TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding sample origin to {listen}"))?;
                tracing::info!(%listen, "sample origin listening");
                sample_origin::serve(listener, settings, shutdown_signal()).await?;
                Ok(())
            })
        }
        Command::Replay(args) => commands::replay::replay(&args),
        Command::Load(args) => commands::load::load(&args),
        Command::Warm(args) => commands::warm::warm(&args),
        Command::Demo { listen, latency } => {
            let config = Config {
                listen,
                ..Config::default()
            };
            let _log_guard = init_logging(&config);
            runtime()?.block_on(demo(config, latency.get()))
        }
    }
}

/// The async runtime. On one CPU (an affinity mask or a cgroup quota of one) it is tokio's
/// current-thread scheduler: a multi-thread scheduler's single worker does the same work
/// with work-stealing queues, a LIFO slot and cross-thread wake-ups around it. Measured
/// with `../shared/bench` test a, server on one CPU: 100 KiB hits 1.02x to 1.07x the
/// requests per server CPU-second of the multi-thread runtime in three runs, 1 KiB hits
/// within noise.
fn runtime() -> Result<tokio::runtime::Runtime> {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Diagnostic lines that may wait for stderr. The writer's queue is allocated, and touched,
/// in full at start: tracing-appender's default of 128k lines is 4 MiB of resident memory
/// for a log that writes a few lines a minute (issue 17 item 6 counts it against the
/// cache). 8k lines still absorb a burst of warnings from every connection at once.
const DIAGNOSTIC_LINES_PENDING: usize = 8 * 1024;

/// Logs go through a background writer: a request never waits for stderr (a slow pipe or
/// terminal would otherwise stall the worker that logs). When more than
/// [`DIAGNOSTIC_LINES_PENDING`] lines are pending, lines are dropped rather than block
/// serving. The returned guard flushes what is pending when `main` ends.
fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(DIAGNOSTIC_LINES_PENDING)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(is_terminal)
        .with_writer(writer);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    guard
}
