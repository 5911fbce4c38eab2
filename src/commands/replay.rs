//! `outpost replay`: a request trace (or a synthetic workload) through the tiers' policies,
//! reported as hit ratios per cache size.

use std::path::PathBuf;

use anyhow::{Context, Result};
use outpost::tools::replay::{self, sim::Policy, trace, SizeSpec};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Trace file (oracleGeneral, optionally .zst; CSV; access log).
    #[arg(required_unless_present = "synthetic")]
    pub trace: Option<PathBuf>,
    /// Trace format [default: from the file name].
    #[arg(long, value_enum)]
    pub format: Option<TraceFormatArg>,
    /// Generate the workload instead: zipf:alpha=0.9,objects=1e6,requests=1e7,seed=1[,size=4096|MIN-MAX] or uniform:...
    #[arg(long, value_name = "SPEC")]
    pub synthetic: Option<String>,
    /// Policies, comma-separated: wtinylfu (the memory tier's default), lru, tinylfu
    /// (moka's).
    #[arg(long, default_value = "wtinylfu", value_delimiter = ',')]
    pub policy: Vec<String>,
    /// Cache sizes, comma-separated: 64MiB,1GiB or fractions of the working set (0.01,0.1).
    #[arg(
        long,
        default_value = "0.001,0.01,0.05,0.1,0.2,0.5",
        value_delimiter = ','
    )]
    pub sizes: Vec<String>,
    /// Add a disk tier of this size behind the memory tier (LRU, stores everything).
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<String>,
    /// Requests replayed before counting starts.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// `model`: outpost's policies as exact, deterministic models (fast); `moka`: through
    /// moka itself, configured as the memory tier (slower; no --disk), to check the models.
    #[arg(long, value_enum, default_value = "model")]
    pub engine: EngineArg,
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// SVG plot of the miss-ratio curve.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Also write the trace as oracleGeneral (zstd-compressed when the name ends in .zst).
    #[arg(long, value_name = "FILE")]
    pub write_oracle: Option<PathBuf>,
    /// Also write the trace as CSV (time,obj_id,size).
    #[arg(long, value_name = "FILE")]
    pub write_csv: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EngineArg {
    Model,
    Moka,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TraceFormatArg {
    Oracle,
    Csv,
    Clf,
}

pub fn replay(args: &ReplayArgs) -> Result<()> {
    let (requests, name) = workload(args)?;
    let policies = args
        .policy
        .iter()
        .map(|p| {
            Policy::parse(p)
                .with_context(|| format!("unknown policy `{p}` (wtinylfu, lru, tinylfu)"))
        })
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
    write_trace_copies(args, &requests)?;
    let summary = replay::summarise(&requests);
    let total = summary.requests * (policies.len() * sizes.len()) as u64;
    let bar = super::progress_bar(
        args.quiet,
        Some(total),
        "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} requests ({per_sec})",
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
    write_reports(args, &name, &summary, &results)
}

/// The requests to replay and a name for them: a trace file, or a synthetic workload.
fn workload(args: &ReplayArgs) -> Result<(Vec<trace::TraceRequest>, String)> {
    match (&args.synthetic, &args.trace) {
        (Some(spec), _) => {
            let synthetic: trace::Synthetic = spec.parse()?;
            Ok((synthetic.generate(), spec.clone()))
        }
        (None, Some(path)) => {
            let format = match args.format {
                Some(format) => format.into(),
                None => trace::guess_format(path),
            };
            let requests = trace::read(path, format)?;
            anyhow::ensure!(
                !requests.is_empty(),
                "{}: no requests in it",
                path.display()
            );
            Ok((requests, path.display().to_string()))
        }
        (None, None) => anyhow::bail!("give a TRACE file or --synthetic SPEC"),
    }
}

impl From<TraceFormatArg> for trace::TraceFormat {
    fn from(format: TraceFormatArg) -> trace::TraceFormat {
        match format {
            TraceFormatArg::Oracle => trace::TraceFormat::Oracle,
            TraceFormatArg::Csv => trace::TraceFormat::Csv,
            TraceFormatArg::Clf => trace::TraceFormat::Clf,
        }
    }
}

/// `--write-oracle` and `--write-csv`.
fn write_trace_copies(args: &ReplayArgs, requests: &[trace::TraceRequest]) -> Result<()> {
    if let Some(path) = &args.write_oracle {
        let compress = path.extension().is_some_and(|e| e == "zst");
        let file = std::fs::File::create(path).with_context(|| path.display().to_string())?;
        trace::write_oracle(file, requests, compress)?;
    }
    if let Some(path) = &args.write_csv {
        let file = std::fs::File::create(path).with_context(|| path.display().to_string())?;
        trace::write_csv(file, requests)?;
    }
    Ok(())
}

/// `--json`, `--csv` and `--plot`.
fn write_reports(
    args: &ReplayArgs,
    name: &str,
    summary: &replay::TraceSummary,
    results: &[replay::ReplayResult],
) -> Result<()> {
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    if let Some(path) = &args.json {
        write(path, replay::json(name, summary, args.warmup, results))?;
    }
    if let Some(path) = &args.csv {
        write(path, replay::csv(results))?;
    }
    if let Some(path) = &args.plot {
        write(path, replay::svg(&format!("miss ratio: {name}"), results))?;
    }
    Ok(())
}
