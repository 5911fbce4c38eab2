//! `outpost load`: drives HTTP load at a running cache (outpost or any other) with a Zipf,
//! uniform or trace-driven key distribution, bounded in time and in requests, and reports
//! requests per second, latency percentiles and the hit ratio the cache reported in its
//! `Cache-Status` (RFC 9211) header.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::replay::trace::{SplitMix, Zipf};

/// Which keys the load requests.
pub enum KeySource {
    /// Ranks 0..keys drawn from Zipf(alpha) (alpha 0: uniform).
    Zipf { keys: usize, alpha: f64 },
    /// Object ids of a trace, in order, cycling.
    Trace(Arc<Vec<u64>>),
}

pub struct LoadPlan {
    /// URL template: `{key}` is replaced by the key; without it the key is appended.
    pub url: String,
    pub keys: KeySource,
    pub concurrency: usize,
    pub duration: Duration,
    pub max_requests: u64,
    pub seed: u64,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
}

/// What a load run observed.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Responses whose Cache-Status said `hit`, of those that carried Cache-Status.
    pub hits: u64,
    pub with_cache_status: u64,
    pub hit_ratio: Option<f64>,
    pub bytes: u64,
    pub statuses: std::collections::BTreeMap<u16, u64>,
}

/// Whether the cache nearest the client (the last Cache-Status member) answered from
/// cache: a `hit` parameter and no `fwd`.
pub fn is_hit(cache_status: &str) -> bool {
    let last = cache_status.rsplit(',').next().unwrap_or("");
    let params: Vec<&str> = last.split(';').skip(1).map(str::trim).collect();
    params.contains(&"hit") && !params.iter().any(|p| p.starts_with("fwd="))
}

struct Shared {
    issued: AtomicU64,
    done: AtomicU64,
    deadline: Instant,
    max_requests: u64,
}

#[derive(Default)]
struct WorkerTally {
    latencies_us: Vec<u32>,
    errors: u64,
    hits: u64,
    with_cache_status: u64,
    bytes: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
}

/// Runs the plan; `progress` is called about ten times a second with requests done so far.
///
/// # Errors
/// A URL that does not parse once the key is substituted.
pub async fn run(
    plan: LoadPlan,
    progress: impl Fn(u64) + Send + 'static,
) -> anyhow::Result<LoadReport> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(plan.concurrency.max(1))
        .build_http();
    let url_for = {
        let template = plan.url.clone();
        move |key: u64| {
            if template.contains("{key}") {
                template.replace("{key}", &key.to_string())
            } else {
                format!("{template}{key}")
            }
        }
    };
    url_for(0).parse::<http::Uri>()?;
    let shared = Arc::new(Shared {
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        deadline: Instant::now() + plan.duration,
        max_requests: plan.max_requests,
    });
    let zipf = match &plan.keys {
        KeySource::Zipf { keys, alpha } if *alpha > 0.0 => Some(Arc::new(Zipf::new(*keys, *alpha))),
        _ => None,
    };
    let started = Instant::now();
    let ticker = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                progress(shared.done.load(Ordering::Relaxed));
            }
        })
    };
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..plan.concurrency.max(1) {
        let client = client.clone();
        let shared = Arc::clone(&shared);
        let url_for = url_for.clone();
        let zipf = zipf.clone();
        let headers = plan.headers.clone();
        let keys = match &plan.keys {
            KeySource::Zipf { keys, .. } => KeySource::Zipf {
                keys: *keys,
                alpha: 0.0,
            },
            KeySource::Trace(ids) => KeySource::Trace(Arc::clone(ids)),
        };
        let mut random = SplitMix::new(plan.seed.wrapping_add(worker as u64 * 0x9e37));
        workers.spawn(async move {
            let mut tally = WorkerTally::default();
            loop {
                let index = shared.issued.fetch_add(1, Ordering::Relaxed);
                if index >= shared.max_requests || Instant::now() >= shared.deadline {
                    break;
                }
                let key = match (&keys, &zipf) {
                    (KeySource::Trace(ids), _) => ids[(index % ids.len() as u64) as usize],
                    (KeySource::Zipf { .. }, Some(zipf)) => zipf.sample(&mut random) as u64,
                    (KeySource::Zipf { keys, .. }, None) => {
                        random.next_u64() % (*keys as u64).max(1)
                    }
                };
                let mut request = http::Request::get(url_for(key));
                for (name, value) in &headers {
                    request = request.header(name, value);
                }
                let Ok(request) = request.body(Empty::new()) else {
                    tally.errors += 1;
                    continue;
                };
                let sent = Instant::now();
                let remaining =
                    shared.deadline.saturating_duration_since(sent) + Duration::from_secs(5);
                let outcome = tokio::time::timeout(remaining, async {
                    let response = client.request(request).await.ok()?;
                    let status = response.status().as_u16();
                    let hit = response
                        .headers()
                        .get("cache-status")
                        .and_then(|v| v.to_str().ok())
                        .map(is_hit);
                    let body = response.into_body().collect().await.ok()?.to_bytes();
                    Some((status, hit, body.len() as u64))
                })
                .await
                .ok()
                .flatten();
                shared.done.fetch_add(1, Ordering::Relaxed);
                match outcome {
                    Some((status, hit, bytes)) => {
                        let micros = sent.elapsed().as_micros();
                        tally
                            .latencies_us
                            .push(u32::try_from(micros).unwrap_or(u32::MAX));
                        *tally.statuses.entry(status).or_default() += 1;
                        tally.bytes += bytes;
                        if let Some(hit) = hit {
                            tally.with_cache_status += 1;
                            tally.hits += u64::from(hit);
                        }
                    }
                    None => tally.errors += 1,
                }
            }
            tally
        });
    }
    let mut total = WorkerTally::default();
    while let Some(joined) = workers.join_next().await {
        if let Ok(tally) = joined {
            total.latencies_us.extend(tally.latencies_us);
            total.errors += tally.errors;
            total.hits += tally.hits;
            total.with_cache_status += tally.with_cache_status;
            total.bytes += tally.bytes;
            for (status, count) in tally.statuses {
                *total.statuses.entry(status).or_default() += count;
            }
        }
    }
    ticker.abort();
    let seconds = started.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    let percentile = |p: f64| {
        if total.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * (total.latencies_us.len() - 1) as f64).round() as usize;
        f64::from(total.latencies_us[rank]) / 1000.0
    };
    let requests = total.latencies_us.len() as u64;
    Ok(LoadReport {
        requests,
        errors: total.errors,
        seconds,
        requests_per_second: requests as f64 / seconds.max(1e-9),
        p50_ms: percentile(50.0),
        p90_ms: percentile(90.0),
        p99_ms: percentile(99.0),
        max_ms: percentile(100.0),
        hits: total.hits,
        with_cache_status: total.with_cache_status,
        hit_ratio: (total.with_cache_status > 0)
            .then(|| total.hits as f64 / total.with_cache_status as f64),
        bytes: total.bytes,
        statuses: total.statuses,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hits_are_read_from_the_nearest_cache() {
        assert!(super::is_hit("outpost; hit; ttl=30"));
        assert!(!super::is_hit("outpost; fwd=uri-miss; stored"));
        assert!(!super::is_hit(
            "origin-cache; hit, outpost; fwd=stale; fwd-status=304"
        ));
        assert!(super::is_hit("origin-cache; fwd=uri-miss, outpost; hit"));
    }
}
