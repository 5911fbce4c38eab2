//! `outpost load`: drives HTTP load at a running cache (outpost or any other) with a Zipf,
//! uniform or trace-driven key distribution, bounded in time and in requests, and reports
//! requests per second, latency percentiles and the hit ratio the cache reported in its
//! `Cache-Status` (RFC 9211) header.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::Distribution;
use serde::Serialize;

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
    /// A CA trusted besides the web roots for an `https://` URL.
    pub ca_file: Option<std::path::PathBuf>,
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
    /// How the first failed request failed, when one did.
    pub first_error: Option<String>,
}

/// Whether the cache nearest the client (the last Cache-Status member) answered from
/// cache: a `hit` parameter and no `fwd`.
pub fn is_hit(cache_status: &str) -> bool {
    let params = nearest_cache_params(cache_status);
    params.contains(&"hit") && !is_forwarded(&params)
}

/// The parameters of the last Cache-Status member (the cache nearest the client).
pub fn nearest_cache_params(cache_status: &str) -> Vec<&str> {
    let last = cache_status.rsplit(',').next().unwrap_or("");
    last.split(';').skip(1).map(str::trim).collect()
}

/// Whether `params` (of one Cache-Status member) say the request went forward.
pub fn is_forwarded(params: &[&str]) -> bool {
    params.iter().any(|p| p.starts_with("fwd="))
}

/// Why a load run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the URL `{url}` does not parse: {source}")]
    BadUrl {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("the URL `{0}` is not an http:// or https:// URL with a host")]
    NotHttp(String),
    #[error(transparent)]
    Client(#[from] super::client::ToolClientError),
    #[error("zipf exponent {0} is not usable (finite, 0 or more)")]
    BadZipf(f64),
}

struct Shared {
    issued: AtomicU64,
    done: AtomicU64,
    deadline: Instant,
    max_requests: u64,
}

/// What one worker saw.
struct Tally {
    /// Latency in microseconds, 1 µs to 10 minutes at three significant digits.
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    hits: u64,
    with_cache_status: u64,
    bytes: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            // invariant: these bounds are valid for hdrhistogram (low >= 1, high >= 2 low).
            latencies: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            errors: 0,
            first_error: None,
            hits: 0,
            with_cache_status: 0,
            bytes: 0,
            statuses: std::collections::BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        // Both histograms share the bounds; adding cannot fail.
        let _ = self.latencies.add(&other.latencies);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.hits += other.hits;
        self.with_cache_status += other.with_cache_status;
        self.bytes += other.bytes;
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
    }

    fn record(&mut self, latency: Duration, outcome: Result<Outcome, String>) {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => return self.failed(error),
        };
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latencies.saturating_record(micros.max(1));
        *self.statuses.entry(outcome.status).or_default() += 1;
        self.bytes += outcome.bytes;
        if let Some(hit) = outcome.hit {
            self.with_cache_status += 1;
            self.hits += u64::from(hit);
        }
    }

    fn failed(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    fn report(&self, seconds: f64) -> LoadReport {
        let millis = |quantile: f64| self.latencies.value_at_quantile(quantile) as f64 / 1000.0;
        let requests = self.latencies.len();
        LoadReport {
            requests,
            errors: self.errors,
            seconds,
            requests_per_second: requests as f64 / seconds.max(1e-9),
            p50_ms: millis(0.50),
            p90_ms: millis(0.90),
            p99_ms: millis(0.99),
            max_ms: self.latencies.max() as f64 / 1000.0,
            hits: self.hits,
            with_cache_status: self.with_cache_status,
            first_error: self.first_error.clone(),
            hit_ratio: (self.with_cache_status > 0)
                .then(|| self.hits as f64 / self.with_cache_status as f64),
            bytes: self.bytes,
            statuses: self.statuses.clone(),
        }
    }
}

/// One response as the load saw it.
struct Outcome {
    status: u16,
    hit: Option<bool>,
    bytes: u64,
}

/// How a worker picks its next key.
enum Keys {
    Zipf(rand_distr::Zipf<f64>),
    Uniform(u64),
    Trace(Arc<Vec<u64>>),
}

impl Keys {
    fn new(source: &KeySource) -> Result<Keys, LoadError> {
        Ok(match source {
            KeySource::Zipf { keys, alpha } if *alpha > 0.0 => Keys::Zipf(
                rand_distr::Zipf::new((*keys).max(1) as f64, *alpha)
                    .map_err(|_| LoadError::BadZipf(*alpha))?,
            ),
            KeySource::Zipf { alpha, .. } if !(alpha.is_finite() && *alpha >= 0.0) => {
                return Err(LoadError::BadZipf(*alpha))
            }
            KeySource::Zipf { keys, .. } => Keys::Uniform((*keys).max(1) as u64),
            KeySource::Trace(ids) => Keys::Trace(Arc::clone(ids)),
        })
    }

    /// The key of request number `index`.
    fn pick(&self, index: u64, random: &mut SmallRng) -> u64 {
        match self {
            // Ranks start at 1 in rand_distr; keys start at 0.
            Keys::Zipf(zipf) => zipf.sample(random) as u64 - 1,
            Keys::Uniform(keys) => random.random_range(0..*keys),
            Keys::Trace(ids) => ids[(index % ids.len().max(1) as u64) as usize],
        }
    }
}

type LoadClient = super::client::ToolClient;

/// Runs the plan; `progress` is called about ten times a second with requests done so far.
///
/// # Errors
/// [`LoadError`] for a URL that does not parse once the key is substituted, or an unusable
/// Zipf exponent.
pub async fn run(
    plan: LoadPlan,
    progress: impl Fn(u64) + Send + 'static,
) -> Result<LoadReport, LoadError> {
    let client: LoadClient =
        super::client::tool_client(plan.concurrency.max(1), plan.ca_file.as_deref())?;
    let sample = url_for(&plan.url, 0);
    let parsed = sample
        .parse::<http::Uri>()
        .map_err(|source| LoadError::BadUrl {
            url: sample.clone(),
            source,
        })?;
    let web = [http::uri::Scheme::HTTP, http::uri::Scheme::HTTPS];
    if !parsed.scheme().is_some_and(|scheme| web.contains(scheme)) || parsed.host().is_none() {
        return Err(LoadError::NotHttp(plan.url));
    }
    let keys = Arc::new(Keys::new(&plan.keys)?);
    let shared = Arc::new(Shared {
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        deadline: Instant::now() + plan.duration,
        max_requests: plan.max_requests,
    });
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
    let plan = Arc::new(plan);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..plan.concurrency.max(1) {
        let random = SmallRng::seed_from_u64(plan.seed.wrapping_add(worker as u64 * 0x9e37));
        let work = work(
            client.clone(),
            Arc::clone(&plan),
            Arc::clone(&keys),
            Arc::clone(&shared),
            random,
        );
        workers.spawn(work);
    }
    let mut total = Tally::new();
    while let Some(joined) = workers.join_next().await {
        if let Ok(tally) = joined {
            total.merge(tally);
        }
    }
    ticker.abort();
    Ok(total.report(started.elapsed().as_secs_f64()))
}

/// The URL for `key`: `{key}` in the template replaced, or the key appended.
fn url_for(template: &str, key: u64) -> String {
    if template.contains("{key}") {
        template.replace("{key}", &key.to_string())
    } else {
        format!("{template}{key}")
    }
}

/// One worker: requests one after another until the count or the time is used up.
async fn work(
    client: LoadClient,
    plan: Arc<LoadPlan>,
    keys: Arc<Keys>,
    shared: Arc<Shared>,
    mut random: SmallRng,
) -> Tally {
    let mut tally = Tally::new();
    loop {
        let index = shared.issued.fetch_add(1, Ordering::Relaxed);
        if index >= shared.max_requests || Instant::now() >= shared.deadline {
            return tally;
        }
        let key = keys.pick(index, &mut random);
        let mut request = http::Request::get(url_for(&plan.url, key));
        for (name, value) in &plan.headers {
            request = request.header(name, value);
        }
        let request = match request.body(Empty::new()) {
            Ok(request) => request,
            Err(err) => {
                tally.failed(format!("building the request: {err}"));
                continue;
            }
        };
        let sent = Instant::now();
        let patience = shared.deadline.saturating_duration_since(sent) + Duration::from_secs(5);
        let outcome = tokio::time::timeout(patience, exchange(&client, request))
            .await
            .unwrap_or_else(|_| Err("no response before the run ended".to_string()));
        shared.done.fetch_add(1, Ordering::Relaxed);
        tally.record(sent.elapsed(), outcome);
    }
}

/// Sends one request and reads the whole response; how it failed, if it did.
async fn exchange(
    client: &LoadClient,
    request: http::Request<Empty<Bytes>>,
) -> Result<Outcome, String> {
    let response = client
        .request(request)
        .await
        .map_err(|err| crate::upstream::chain_text(&err))?;
    let status = response.status().as_u16();
    let hit = response
        .headers()
        .get(crate::telemetry::cache_status::CACHE_STATUS)
        .and_then(|v| v.to_str().ok())
        .map(is_hit);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| format!("reading the body: {}", crate::upstream::chain_text(&err)))?
        .to_bytes();
    Ok(Outcome {
        status,
        hit,
        bytes: body.len() as u64,
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
