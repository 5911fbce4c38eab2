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
