//! `outpost serve`, `check`, `origin` and `demo`: the layered settings a command line names,
//! the proxy and admin listeners, signals (SIGHUP reloads, SIGINT/SIGTERM stop) and the
//! sample origin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;

use outpost::config::{FlagOverrides, HostHeaderSetting, LogFormat};
use outpost::tools::sample_origin::{self, SampleOriginSettings};
use outpost::{Config, Outpost};

use super::listeners::{stopped, Listeners, Serves};

#[derive(Debug, Clone, clap::Args)]
pub struct SettingsArgs {
    /// TOML configuration file (see config/outpost.toml for every setting).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve proxy traffic on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Origin URL of the default site, e.g. http://127.0.0.1:9000; given several times,
    /// a pool of them (round robin, failover), named `origin`.
    #[arg(long, value_name = "URL")]
    pub origin: Vec<String>,
    /// Host header the default site sends to its origin: `origin` for the origin URL's
    /// host (what a virtual-hosted or public upstream needs), or a value sent as written;
    /// unset keeps the client's Host (config `host_header`).
    #[arg(long, value_name = "origin|HOST")]
    pub host_header: Option<HostHeaderSetting>,
    /// Address of the admin listener (health endpoints); loopback only.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Directory of the disk tier (config `cache.dir`); the cache survives restarts.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Address to serve HTTPS on (config `tls.listen`); may be given several times.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for the TLS listeners (config `tls.cert`).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate (config `tls.key`).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl SettingsArgs {
    pub fn load(&self) -> Result<Config> {
        Ok(self.load_config()?)
    }

    /// The layered configuration, as at start-up; also what a reload reads.
    pub fn load_config(&self) -> Result<Config, outpost::config::ConfigError> {
        let flags = FlagOverrides {
            listen: self.listen,
            admin: self.admin,
            origins: self.origin.clone(),
            host_header: self.host_header.clone(),
            log_format: self.log_format.map(|f| match f {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            }),
            cache_dir: self.cache_dir.clone(),
            tls_listen: self.tls_listen.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        };
        Config::load(self.config.as_deref(), &flags)
    }
}

pub async fn serve(config: Config, loader: Option<outpost::ConfigLoader>) -> Result<()> {
    raise_open_file_limit();
    let bound = Listeners::bind(&config).await?;
    let mut outpost = Outpost::new(config)?;
    if let Some(loader) = loader {
        outpost = outpost.with_loader(loader);
    }
    let outpost = Arc::new(outpost);
    let mut in_force = outpost.follow_listen_addresses();
    let reloads = tokio::spawn(reload_on_sighup(Arc::clone(&outpost)));
    tracing::info!(
        listen = %outpost.config().listen,
        admin = ?outpost.config().admin,
        origin = ?outpost.config().origin.as_ref().map(ToString::to_string),
        pool = ?outpost.config().pool,
        tls = ?outpost.config().tls.listen,
        sites = outpost.config().sites.len(),
        "outpost serving"
    );
    if outpost.config().cache.memory_sendfile_min.as_u64() > 0 {
        if let Some(setting) = outpost::cache::sealed::small_pages_setting() {
            tracing::info!(
                shmem_enabled = %setting,
                "memory files are kept in 4 KiB pages: with \
                 /sys/kernel/mm/transparent_hugepage/shmem_enabled set to within_size, \
                 hits on bodies in memory files cost less CPU (README, Tuning)"
            );
        }
    }
    let mut listeners = Listeners::serve(Arc::clone(&outpost), bound);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut failed = Ok(());
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Ok(()) = in_force.changed() => {
                let config = Arc::clone(&in_force.borrow_and_update());
                listeners.follow(&config).await;
            }
            Some(Err(err)) = listeners.next_ended() => {
                tracing::error!(error = %err, "a listener failed; stopping");
                failed = Err(err);
                break;
            }
        }
    }
    // The proxy drains first, with the admin endpoints still answering health checks.
    let proxies = listeners.stop(|serves| serves != Serves::Admin).await;
    outpost.finish().await;
    let admin = listeners.stop(|_| true).await;
    reloads.abort();
    failed.and(proxies).and(admin)?;
    tracing::info!("outpost stopped");
    Ok(())
}

pub async fn demo(mut config: Config, latency: Duration) -> Result<()> {
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
pub async fn reload_on_sighup(outpost: Arc<Outpost>) {
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
pub async fn shutdown_signal() {
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

/// Raises the soft limit on open files to the hard one, as servers commonly do: every
/// client and origin connection is a descriptor, and so is each disk-tier file held open
/// for sendfile; the usual soft limit of 1024 would cap a busy node well below what the
/// system allows it. A failure leaves the limit as it was.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let Some(soft) = limit.current else {
        return;
    };
    // An unlimited hard limit still cannot exceed the kernel's per-process cap.
    let hard = limit.maximum.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(soft)
    });
    if soft >= hard {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(hard),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(from = soft, to = hard, "open file limit raised"),
        Err(err) => tracing::warn!(limit = soft, error = %err, "open file limit not raised"),
    }
}
