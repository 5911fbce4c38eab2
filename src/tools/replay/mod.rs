//! Trace replay (`outpost replay`): what hit ratio would this node get on a workload, at
//! which size, with which policy, with or without the disk tier.
//!
//! - [`trace`]: reading and writing traces, synthetic workloads.
//! - [`sim`]: outpost's replacement policies as deterministic simulations.
//! - [`engine`]: the same replay through moka itself, to check the models.
//!
//! This module runs the sweep (every policy at every size, in parallel on the available
//! cores) and renders the results: a terminal table, CSV, JSON, and an SVG miss-ratio curve.

pub mod engine;
pub mod sim;
pub mod trace;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use sim::{Counts, Policy};
use trace::TraceRequest;

/// A cache size to try: bytes, or a fraction of the trace's working set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeSpec {
    Bytes(u64),
    Fraction(f64),
}

impl std::str::FromStr for SizeSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<SizeSpec, String> {
        let text = text.trim();
        if let Ok(fraction) = text.parse::<f64>() {
            if text.contains('.') || fraction < 1.0 {
                if !(fraction > 0.0 && fraction <= 1.0) {
                    return Err(format!("{text}: a fraction must be in (0, 1]"));
                }
                return Ok(SizeSpec::Fraction(fraction));
            }
        }
        text.parse::<crate::config::ByteSize>()
            .map(|size| SizeSpec::Bytes(size.as_u64()))
            .map_err(|err| format!("{text}: {err}"))
    }
}

/// What a trace holds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TraceSummary {
    pub requests: u64,
    pub objects: u64,
    /// Sum of the sizes of distinct objects (the last size seen for each).
    pub working_set_bytes: u64,
}

pub fn summarise(requests: &[TraceRequest]) -> TraceSummary {
    let mut sizes: HashMap<u64, u32, std::hash::BuildHasherDefault<sim::IdHasher>> =
        HashMap::default();
    for request in requests {
        sizes.insert(request.id, request.size);
    }
    TraceSummary {
        requests: requests.len() as u64,
        objects: sizes.len() as u64,
        working_set_bytes: sizes.values().map(|s| u64::from(*s)).sum(),
    }
}

/// One (policy, size) outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    pub policy: &'static str,
    pub size_bytes: u64,
    /// The size as asked for, when it was a fraction of the working set.
    pub size_fraction: Option<f64>,
    pub disk_bytes: Option<u64>,
    pub requests: u64,
    pub hits: u64,
    pub hit_ratio: f64,
    pub miss_ratio: f64,
    pub byte_hit_ratio: f64,
    /// Of all requests, the share the disk tier answered (with `--disk`).
    pub disk_hit_ratio: Option<f64>,
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Which implementation replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The deterministic models ([`sim`]).
    Model,
    /// moka itself ([`engine`]); memory tier only.
    Moka,
}

/// Runs every policy at every size; results in (policy, size) order.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    requests: &[TraceRequest],
    summary: &TraceSummary,
    policies: &[Policy],
    sizes: &[SizeSpec],
    disk: Option<u64>,
    warmup: usize,
    engine: Engine,
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<ReplayResult> {
    let runs: Vec<(Policy, SizeSpec, u64)> = policies
        .iter()
        .flat_map(|policy| {
            sizes.iter().map(move |spec| {
                let bytes = match *spec {
                    SizeSpec::Bytes(bytes) => bytes,
                    SizeSpec::Fraction(f) => (summary.working_set_bytes as f64 * f).round() as u64,
                };
                (*policy, *spec, bytes)
            })
        })
        .collect();
    let workers = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(runs.len().max(1));
    let next = AtomicU64::new(0);
    let mut results: Vec<Option<Counts>> = vec![None; runs.len()];
    let slots: Vec<std::sync::Mutex<Option<Counts>>> =
        runs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((policy, _, bytes)) = runs.get(index) else {
                    break;
                };
                let counts = match engine {
                    Engine::Model => sim::replay(
                        requests,
                        *policy,
                        *bytes,
                        disk,
                        warmup,
                        summary.objects as usize,
                        progress,
                    ),
                    Engine::Moka => engine::replay(requests, *policy, *bytes, warmup, progress),
                };
                if let Ok(mut slot) = slots[index].lock() {
                    *slot = Some(counts);
                }
            });
        }
    });
    for (result, slot) in results.iter_mut().zip(slots) {
        *result = slot.into_inner().ok().flatten();
    }
    runs.iter()
        .zip(results)
        .map(|((policy, spec, bytes), counts)| {
            let counts = counts.unwrap_or_default();
            ReplayResult {
                policy: policy.as_str(),
                size_bytes: *bytes,
                size_fraction: match spec {
                    SizeSpec::Fraction(f) => Some(*f),
                    SizeSpec::Bytes(_) => None,
                },
                disk_bytes: disk,
                requests: counts.requests,
                hits: counts.hits,
                hit_ratio: ratio(counts.hits, counts.requests),
                miss_ratio: 1.0 - ratio(counts.hits, counts.requests),
                byte_hit_ratio: ratio(counts.hit_bytes, counts.bytes),
                disk_hit_ratio: disk.map(|_| ratio(counts.disk_hits, counts.requests)),
            }
        })
        .collect()
}

fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

/// The terminal table.
pub fn table(results: &[ReplayResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "policy", "size", "requests", "hit ratio", "byte hit", "disk hits"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<8} {:>12} {:>10} {:>10.4} {:>10.4} {:>10}",
            r.policy,
            human(r.size_bytes),
            r.requests,
            r.hit_ratio,
            r.byte_hit_ratio,
            r.disk_hit_ratio
                .map_or("-".to_string(), |d| format!("{d:.4}")),
        );
    }
    out
}

/// CSV with a header.
pub fn csv(results: &[ReplayResult]) -> String {
    let mut out = String::from(
        "policy,size_bytes,size_fraction,disk_bytes,requests,hits,hit_ratio,miss_ratio,byte_hit_ratio,disk_hit_ratio\n",
    );
    for r in results {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{:.6},{:.6},{:.6},{}",
            r.policy,
            r.size_bytes,
            r.size_fraction.map_or(String::new(), |f| f.to_string()),
            r.disk_bytes.map_or(String::new(), |d| d.to_string()),
            r.requests,
            r.hits,
            r.hit_ratio,
            r.miss_ratio,
            r.byte_hit_ratio,
            r.disk_hit_ratio
                .map_or(String::new(), |d| format!("{d:.6}")),
        );
    }
    out
}

/// JSON: the trace summary and `results`.
pub fn json(
    trace: &str,
    summary: &TraceSummary,
    warmup: usize,
    results: &[ReplayResult],
) -> String {
    let document = serde_json::json!({
        "trace": trace,
        "summary": summary,
        "warmup": warmup,
        "results": results,
    });
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

/// An SVG miss-ratio curve: miss ratio against cache size (log scale), one line per policy.
pub fn svg(title: &str, results: &[ReplayResult]) -> String {
    let plot = Plot::new(results);
    let mut out = plot.frame(title);
    for tick in 0..=5 {
        let miss = f64::from(tick) / 5.0;
        let y = plot.y_of(miss);
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{miss:.1}</text>"##,
            plot.left,
            plot.left + plot.width,
            plot.left - 6.0,
            y + 4.0
        );
    }
    let mut seen_sizes: Vec<u64> = results.iter().map(|r| r.size_bytes).collect();
    seen_sizes.sort_unstable();
    seen_sizes.dedup();
    for size in seen_sizes {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle">{}</text>"##,
            plot.x_of(size),
            plot.top + plot.height + 18.0,
            human(size)
        );
    }
    let mut policies: Vec<&str> = results.iter().map(|r| r.policy).collect();
    policies.dedup();
    for (index, policy) in policies.iter().enumerate() {
        plot.curve(&mut out, index, policy, results);
    }
    out.push_str("</svg>\n");
    out
}

/// The geometry of the miss-ratio plot: a log scale of cache sizes across, miss ratio up.
struct Plot {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    min_x: f64,
    span: f64,
}

const SVG_SIZE: (f64, f64) = (720.0, 440.0);
const CURVE_COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

impl Plot {
    fn new(results: &[ReplayResult]) -> Plot {
        let (left, right, top, bottom) = (70.0, 150.0, 40.0, 60.0);
        let (min_x, max_x) = results
            .iter()
            .map(|r| (r.size_bytes.max(1) as f64).log10())
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
        Plot {
            left,
            top,
            width: SVG_SIZE.0 - left - right,
            height: SVG_SIZE.1 - top - bottom,
            min_x,
            span: if max_x > min_x { max_x - min_x } else { 1.0 },
        }
    }

    fn x_of(&self, size: u64) -> f64 {
        self.left + ((size.max(1) as f64).log10() - self.min_x) / self.span * self.width
    }

    fn y_of(&self, miss: f64) -> f64 {
        self.top + (1.0 - miss) * self.height
    }

    /// The document head: title, axes and their labels.
    fn frame(&self, title: &str) -> String {
        let (width, height) = SVG_SIZE;
        let (left, top) = (self.left, self.top);
        let bottom_y = top + self.height;
        let mid_y = top + self.height / 2.0;
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
<line x1="{left}" y1="{bottom_y}" x2="{}" y2="{bottom_y}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom_y}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">cache size</text>
<text x="18" y="{mid_y}" transform="rotate(-90 18 {mid_y})" text-anchor="middle">miss ratio</text>
"##,
            width / 2.0,
            xml_escape(title),
            left + self.width,
            left + self.width / 2.0,
            height - 15.0,
        )
    }

    /// One policy's curve, its points and its legend entry.
    fn curve(&self, out: &mut String, index: usize, policy: &str, results: &[ReplayResult]) {
        let colour = CURVE_COLOURS[index % CURVE_COLOURS.len()];
        let mut points: Vec<(u64, f64)> = results
            .iter()
            .filter(|r| r.policy == policy)
            .map(|r| (r.size_bytes, r.miss_ratio))
            .collect();
        points.sort_by_key(|p| p.0);
        let path: Vec<String> = points
            .iter()
            .map(|(size, miss)| format!("{:.1},{:.1}", self.x_of(*size), self.y_of(*miss)))
            .collect();
        let _ = writeln!(
            out,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
        for (size, miss) in &points {
            let _ = writeln!(
                out,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{policy} {}: miss ratio {miss:.4}</title></circle>"##,
                self.x_of(*size),
                self.y_of(*miss),
                human(*size)
            );
        }
        let legend_x = self.left + self.width;
        let legend_y = self.top + 20.0 * index as f64;
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{policy}</text>"##,
            legend_x + 15.0,
            legend_x + 40.0,
            legend_x + 46.0,
            legend_y + 4.0
        );
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
