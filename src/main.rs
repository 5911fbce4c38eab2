//! The `outpost` command: parse arguments, load the config, start logging, run the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::watch;

use outpost::config::{ByteSize, FlagOverrides, HumanDuration, LogFormat};
use outpost::sample_origin::{self, SampleOriginSettings};
use outpost::{Config, Outpost};

/// jemalloc, chosen deliberately: with glibc malloc, hit throughput of a proxy with a full
/// cache halves (fragmentation in `_int_malloc`, measured on this kind of machine with
/// Pingora); jemalloc also returns freed cache memory more predictably.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

#[derive(Debug, Clone, clap::Args)]
struct ReplayArgs {
    /// Trace file (oracleGeneral, optionally .zst; CSV; access log).
    #[arg(required_unless_present = "synthetic")]
    trace: Option<PathBuf>,
    /// Trace format [default: from the file name].
    #[arg(long, value_enum)]
    format: Option<TraceFormatArg>,
    /// Generate the workload instead: zipf:alpha=0.9,objects=1e6,requests=1e7,seed=1[,size=4096|MIN-MAX] or uniform:...
    #[arg(long, value_name = "SPEC")]
    synthetic: Option<String>,
    /// Policies, comma-separated: lru, tinylfu.
    #[arg(long, default_value = "lru", value_delimiter = ',')]
    policy: Vec<String>,
    /// Cache sizes, comma-separated: 64MiB,1GiB or fractions of the working set (0.01,0.1).
    #[arg(
        long,
        default_value = "0.001,0.01,0.05,0.1,0.2,0.5",
        value_delimiter = ','
    )]
    sizes: Vec<String>,
    /// Add a disk tier of this size behind the memory tier (LRU, stores everything).
    #[arg(long, value_name = "SIZE")]
    disk: Option<String>,
    /// Requests replayed before counting starts.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// `model`: outpost's policies as exact, deterministic models (fast); `moka`: through
    /// moka itself, configured as the memory tier (slower; no --disk), to check the models.
    #[arg(long, value_enum, default_value = "model")]
    engine: EngineArg,
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// SVG plot of the miss-ratio curve.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Also write the trace as oracleGeneral (zstd-compressed when the name ends in .zst).
    #[arg(long, value_name = "FILE")]
    write_oracle: Option<PathBuf>,
    /// Also write the trace as CSV (time,obj_id,size).
    #[arg(long, value_name = "FILE")]
    write_csv: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, clap::Args)]
struct LoadArgs {
    /// URL of the objects: `{key}` is replaced by the key, else the key is appended
    /// (http://127.0.0.1:8080/obj/ -> /obj/0, /obj/1, ...).
    url: String,
    /// Stop after this long.
    #[arg(long, default_value = "10s")]
    duration: HumanDuration,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 32)]
    concurrency: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Zipf exponent of key popularity (0: uniform).
    #[arg(long, default_value_t = 0.9)]
    zipf: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Take keys from a trace (in order) instead; its format from the name, or --format.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    #[arg(long, value_enum)]
    format: Option<TraceFormatArg>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    headers: Vec<String>,
    /// Also write the report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EngineArg {
    Model,
    Moka,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TraceFormatArg {
    Oracle,
    Csv,
    Clf,
}

#[derive(Debug, Clone, clap::Args)]
struct SettingsArgs {
    /// TOML configuration file (see config/outpost.toml for every setting).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to serve proxy traffic on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Origin URL of the default site, e.g. http://127.0.0.1:9000.
    #[arg(long, value_name = "URL")]
    origin: Option<String>,
    /// Address of the admin listener (health endpoints); loopback only.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Directory of the disk tier (config `cache.dir`); the cache survives restarts.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

impl SettingsArgs {
    fn load(&self) -> Result<Config> {
        Ok(self.load_config()?)
    }

    /// The layered configuration, as at start-up; also what a reload reads.
    fn load_config(&self) -> Result<Config, outpost::config::ConfigError> {
        let flags = FlagOverrides {
            listen: self.listen,
            admin: self.admin,
            origin: self.origin.clone(),
            log_format: self.log_format.map(|f| match f {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            }),
            cache_dir: self.cache_dir.clone(),
        };
        Config::load(self.config.as_deref(), &flags)
    }
}

fn main() -> std::process::ExitCode {
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
            print!("{}", config.to_toml());
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
            runtime()?.block_on(serve(config, Some(loader)))
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
        Command::Replay(args) => replay(&args),
        Command::Load(args) => load(&args),
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Logs go through a background writer: a request never waits for stderr (a slow pipe or
/// terminal would otherwise stall the worker that logs). When more than the writer's buffer
/// (128k lines) is pending, lines are dropped rather than block serving. The returned guard
/// flushes what is pending when `main` ends.
fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
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

async fn serve(config: Config, loader: Option<outpost::ConfigLoader>) -> Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding listen address {}", config.listen))?;
    let admin_listener = match config.admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding admin address {addr}"))?,
        ),
        None => None,
    };
    let mut outpost = Outpost::new(config)?;
    if let Some(loader) = loader {
        outpost = outpost.with_loader(loader);
    }
    let outpost = Arc::new(outpost);
    let reloads = tokio::spawn(reload_on_sighup(Arc::clone(&outpost)));
    let (stop_tx, stop_rx) = watch::channel(false);
    tracing::info!(
        listen = %outpost.config().listen,
        admin = ?outpost.config().admin,
        origin = ?outpost.config().origin.as_ref().map(ToString::to_string),
        sites = outpost.config().sites.len(),
        "outpost serving"
    );
    let admin = async {
        if let Some(listener) = admin_listener {
            outpost
                .serve_admin(listener, stopped(stop_rx.clone()))
                .await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let proxy = async {
        let result = outpost.serve(listener, shutdown_signal()).await;
        let _ = stop_tx.send(true);
        result
    };
    let (proxy_result, admin_result) = tokio::join!(proxy, admin);
    reloads.abort();
    proxy_result?;
    admin_result?;
    tracing::info!("outpost stopped");
    Ok(())
}

async fn demo(mut config: Config, latency: Duration) -> Result<()> {
    let origin_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the sample origin")?;
    let origin_addr = origin_listener.local_addr()?;
    config.origin = Some(
        format!("http://{origin_addr}")
            .parse()
            .map_err(anyhow::Error::msg)?,
    );
    let listen = config.listen;
    let settings = SampleOriginSettings {
        latency,
        ..SampleOriginSettings::default()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let origin = tokio::spawn(sample_origin::serve(
        origin_listener,
        settings,
        stopped(stop_rx),
    ));
    println!(
        "outpost demo: sample origin on http://{origin_addr} ({} ms per response), outpost on http://{listen}\n\
         Try:\n  curl -s -o /dev/null -D - http://{listen}/hello.txt          # through outpost\n  \
         curl -s -o /dev/null -D - http://{origin_addr}/hello.txt     # the origin itself\n  \
         curl -s 'http://{listen}/anything?size=1KiB&latency=1s'\n\
         Stop with Ctrl-C.",
        latency.as_millis()
    );
    let result = serve(config, None).await;
    let _ = stop_tx.send(true);
    origin.await??;
    result
}

/// Reloads the configuration on every SIGHUP; a refused reload is logged and the
/// configuration in force stays.
async fn reload_on_sighup(outpost: Arc<Outpost>) {
    #[cfg(unix)]
    {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGHUP: reload only through the admin API");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            if let Err(err) = outpost.reload() {
                tracing::error!(error = %err, "reload refused; the configuration in force stays");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = outpost;
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn replay(args: &ReplayArgs) -> Result<()> {
    use outpost::replay::{self, sim::Policy, trace, SizeSpec};
    let (requests, name) = match (&args.synthetic, &args.trace) {
        (Some(spec), _) => {
            let synthetic: trace::Synthetic = spec.parse()?;
            (synthetic.generate(), spec.clone())
        }
        (None, Some(path)) => {
            let format = match args.format {
                Some(TraceFormatArg::Oracle) => trace::TraceFormat::Oracle,
                Some(TraceFormatArg::Csv) => trace::TraceFormat::Csv,
                Some(TraceFormatArg::Clf) => trace::TraceFormat::Clf,
                None => trace::guess_format(path),
            };
            (trace::read(path, format)?, path.display().to_string())
        }
        (None, None) => anyhow::bail!("give a TRACE file or --synthetic SPEC"),
    };
    let policies = args
        .policy
        .iter()
        .map(|p| Policy::parse(p).with_context(|| format!("unknown policy `{p}` (lru, tinylfu)")))
        .collect::<Result<Vec<_>>>()?;
    let sizes = args
        .sizes
        .iter()
        .map(|s| s.parse::<SizeSpec>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let disk = args
        .disk
        .as_deref()
        .map(|d| d.parse::<outpost::config::ByteSize>().map(|b| b.as_u64()))
        .transpose()
        .map_err(|err| anyhow::anyhow!("--disk: {err}"))?;
    if let Some(path) = &args.write_oracle {
        let compress = path.extension().is_some_and(|e| e == "zst");
        let file = std::fs::File::create(path).with_context(|| path.display().to_string())?;
        trace::write_oracle(file, &requests, compress)?;
    }
    if let Some(path) = &args.write_csv {
        let file = std::fs::File::create(path).with_context(|| path.display().to_string())?;
        trace::write_csv(file, &requests)?;
    }
    let engine = match args.engine {
        EngineArg::Model => replay::Engine::Model,
        EngineArg::Moka => {
            anyhow::ensure!(
                disk.is_none(),
                "--engine moka replays the memory tier only: drop --disk"
            );
            replay::Engine::Moka
        }
    };
    let summary = replay::summarise(&requests);
    let total = summary.requests * (policies.len() * sizes.len()) as u64;
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        )
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} requests ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let results = replay::sweep(
        &requests,
        &summary,
        &policies,
        &sizes,
        disk,
        args.warmup,
        engine,
        &|n| bar.inc(n),
    );
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    eprintln!(
        "{}: {} requests, {} objects, working set {}; replayed {} requests in {:.2?} ({:.1}M req/s)",
        name,
        summary.requests,
        summary.objects,
        bytesize::ByteSize(summary.working_set_bytes),
        total,
        elapsed,
        total as f64 / elapsed.as_secs_f64() / 1e6
    );
    print!("{}", replay::table(&results));
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    if let Some(path) = &args.json {
        write(path, replay::json(&name, &summary, args.warmup, &results))?;
    }
    if let Some(path) = &args.csv {
        write(path, replay::csv(&results))?;
    }
    if let Some(path) = &args.plot {
        write(path, replay::svg(&format!("miss ratio: {name}"), &results))?;
    }
    Ok(())
}

fn load(args: &LoadArgs) -> Result<()> {
    use outpost::load::{self, KeySource, LoadPlan};
    use outpost::replay::trace;
    let keys = match &args.trace {
        Some(path) => {
            let format = match args.format {
                Some(TraceFormatArg::Oracle) => trace::TraceFormat::Oracle,
                Some(TraceFormatArg::Csv) => trace::TraceFormat::Csv,
                Some(TraceFormatArg::Clf) => trace::TraceFormat::Clf,
                None => trace::guess_format(path),
            };
            let ids: Vec<u64> = trace::read(path, format)?.iter().map(|r| r.id).collect();
            anyhow::ensure!(!ids.is_empty(), "{}: the trace is empty", path.display());
            KeySource::Trace(std::sync::Arc::new(ids))
        }
        None => {
            anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
            KeySource::Zipf {
                keys: args.keys,
                alpha: args.zipf,
            }
        }
    };
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--header `{h}`: expected `Name: value`"))
        })
        .collect::<Result<Vec<_>>>()?;
    let plan = LoadPlan {
        url: args.url.clone(),
        keys,
        concurrency: args.concurrency,
        duration: args.duration.get(),
        max_requests: args.requests,
        seed: args.seed,
        headers,
    };
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} {human_pos} requests ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let progress_bar = bar.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(load::run(plan, move |done| progress_bar.set_position(done)))?;
    bar.finish_and_clear();
    println!(
        "{} requests in {:.2} s: {:.0} req/s, {} errors",
        report.requests, report.seconds, report.requests_per_second, report.errors
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        report.p50_ms, report.p90_ms, report.p99_ms, report.max_ms
    );
    match report.hit_ratio {
        Some(ratio) => println!(
            "hit ratio (Cache-Status): {ratio:.4} ({} of {})",
            report.hits, report.with_cache_status
        ),
        None => println!("hit ratio: no Cache-Status headers seen"),
    }
    println!("statuses: {:?}", report.statuses);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
