//! `outpost load`: HTTP load at a running cache with Zipf or trace-driven keys.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::replay::TraceFormatArg;
use outpost::config::HumanDuration;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// URL of the objects: `{key}` is replaced by the key, else the key is appended
    /// (http://127.0.0.1:8080/obj/ -> /obj/0, /obj/1, ...).
    pub url: String,
    /// Stop after this long.
    #[arg(long, default_value = "10s")]
    pub duration: HumanDuration,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: u64,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Zipf exponent of key popularity (0: uniform).
    #[arg(long, default_value_t = 0.9)]
    pub zipf: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Take keys from a trace (in order) instead; its format from the name, or --format.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub format: Option<TraceFormatArg>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Also write the report as JSON.
    /// A CA certificate (PEM) trusted besides the web roots, for an https:// URL (an edge
    /// whose certificate your own authority issued).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Instead of a load: open N connections, then send N GETs of URL (as given, no key)
    /// at once, and report the time to the last response and how the cache answered (the
    /// coalescing probe; give it a cold URL). Plain http only.
    #[arg(long, value_name = "N", conflicts_with_all = ["trace", "requests"])]
    pub burst: Option<usize>,
}

pub fn load(args: &LoadArgs) -> Result<()> {
    use outpost::tools::load::{self, KeySource, LoadPlan};
    if let Some(requests) = args.burst {
        return burst(args, requests);
    }
    use outpost::tools::replay::trace;
    let keys = match &args.trace {
        Some(path) => {
            let format = match args.format {
                Some(format) => format.into(),
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
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let headers = parse_headers(&args.headers)?;
    let plan = LoadPlan {
        url: args.url.clone(),
        keys,
        concurrency: args.concurrency,
        duration: args.duration.get(),
        max_requests: args.requests,
        seed: args.seed,
        headers,
        ca_file: args.ca_file.clone(),
    };
    let bar = super::progress_bar(
        args.quiet,
        None,
        "{elapsed_precise} {human_pos} requests ({per_sec})",
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
    if let Some(error) = &report.first_error {
        println!("first error: {error}");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // A run in which nothing got through measured nothing: say so in the exit status.
    anyhow::ensure!(
        report.requests > 0 || report.errors == 0,
        "every request failed ({}), the first with: {}",
        report.errors,
        report.first_error.as_deref().unwrap_or("an unknown error")
    );
    Ok(())
}

fn parse_headers(headers: &[String]) -> Result<Vec<(String, String)>> {
    headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--header `{h}`: expected `Name: value`"))
        })
        .collect()
}

/// `--burst N`: the coalescing probe ([`outpost::tools::burst`]); bounded by `--duration`.
fn burst(args: &LoadArgs, requests: usize) -> Result<()> {
    anyhow::ensure!(requests > 0, "--burst must be at least 1");
    let headers = parse_headers(&args.headers)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(outpost::tools::burst::run(
        &args.url,
        requests,
        &headers,
        args.duration.get(),
    ))?;
    println!(
        "{} requests at once: last response after {:.2} ms ({} completed, {} errors)",
        report.requests, report.burst_ms, report.completed, report.errors
    );
    println!(
        "latency ms: p50 {:.2}  p99 {:.2}",
        report.p50_ms, report.p99_ms
    );
    println!(
        "Cache-Status: {} hits, {} forwarded, {} collapsed; statuses {:?}",
        report.hits, report.forwarded, report.collapsed, report.statuses
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(
        report.errors == 0,
        "{} of {} requests failed or timed out",
        report.errors,
        report.requests
    );
    Ok(())
}
