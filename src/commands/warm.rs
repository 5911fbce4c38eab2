//! `outpost warm`: prepares a package mirror for offline work from lock files.

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct WarmArgs {
    /// Lock files or lists: requirements*.txt / pylock.toml (pip), Cargo.lock,
    /// package-lock.json, or a list of Debian package names (prefix it with `debian:`;
    /// any file may be prefixed with `pip:`, `cargo:`, `npm:` or `debian:`).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
    /// The running mirror's base URL (http:// or https://).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub mirror: String,
    /// A CA certificate (PEM) trusted besides the web roots, for an https:// mirror whose
    /// certificate your own authority issued.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The mirror's configuration, for where its registries are mounted (else /pypi/,
    /// /crates/, /npm/, /debian/).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Debian suite, component and architecture the package names are looked up in.
    #[arg(long, default_value = "stable")]
    pub debian_suite: String,
    #[arg(long, default_value = "main")]
    pub debian_component: String,
    #[arg(long, default_value = "amd64")]
    pub debian_arch: String,
    /// The translations apt fetches (its `Acquire::Languages`), comma-separated; `none`
    /// for none. apt offline warns of each one it cannot fetch.
    #[arg(long, default_value = "en", value_delimiter = ',')]
    pub debian_languages: Vec<String>,
    /// Downloads in flight at once.
    #[arg(long, short = 'c', default_value_t = 4)]
    pub concurrency: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Also write the summary as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Runs the warm; fails (exit status 1) when anything could not be fetched.
pub fn warm(args: &WarmArgs) -> Result<()> {
    use outpost::tools::warm::{self, manifest, DebianIndex, Mounts, WarmPlan};
    let mounts = match &args.config {
        Some(path) => {
            let config = outpost::Config::load(Some(path), &Default::default())
                .with_context(|| format!("reading {}", path.display()))?;
            Mounts::from_config(&config.mirror)
        }
        None => Mounts::default(),
    };
    let manifests = args
        .files
        .iter()
        .map(|spec| manifest::read(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = WarmPlan {
        mirror: args.mirror.clone(),
        mounts,
        debian: DebianIndex {
            suite: args.debian_suite.clone(),
            component: args.debian_component.clone(),
            architecture: args.debian_arch.clone(),
            languages: args
                .debian_languages
                .iter()
                .map(|language| language.trim().to_string())
                .filter(|language| !language.is_empty() && language != "none")
                .collect(),
        },
        concurrency: args.concurrency,
        ca_file: args.ca_file.clone(),
    };
    let bar = super::progress_bar(
        args.quiet,
        None,
        "{elapsed_precise} [{bar:30}] {pos}/{len} artifacts",
    );
    let progress = bar.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(warm::warm(plan, manifests, move |done, total| {
        progress.set_length(total);
        progress.set_position(done);
    }))?;
    bar.finish_and_clear();
    println!(
        "warmed through {}: {} fetched, {} already cached, {} failed ({} bytes)",
        args.mirror,
        report.fetched,
        report.cached,
        report.failed.len(),
        report.bytes
    );
    for (what, why) in &report.failed {
        println!("  failed: {what}: {why}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(
        report.failed.is_empty(),
        "{} item(s) could not be fetched",
        report.failed.len()
    );
    Ok(())
}
