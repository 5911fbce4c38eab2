//! The status board behind `/status.json` and the `/status` page: request counts by cache
//! outcome, bytes by source, requests per second, the busiest keys by hits and by bytes, and
//! the last origin errors. Prometheus series are `metrics`' business; this keeps the few
//! figures a person (or a script) wants at a glance, cheaply enough for the hit path.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime};

use serde_json::{json, Value};

use super::{CacheOutcome, Tier};
use crate::cache::key::{DigestHasher, PrimaryKey};
use crate::error::ErrorType;

/// Keys tracked for the top lists; when full, the less busy half is forgotten.
const TOP_CAPACITY: usize = 2048;
const RECENT_ERRORS: usize = 20;

#[derive(Debug, Clone)]
struct KeyStat {
    url: String,
    hits: u64,
    bytes: u64,
}

#[derive(Debug, Clone)]
struct OriginError {
    at: SystemTime,
    site: String,
    url: String,
    error: ErrorType,
    detail: String,
}

/// What the status page shows, updated as requests finish.
#[derive(Debug)]
pub struct StatusBoard {
    started: Instant,
    by_label: [AtomicU64; CacheOutcome::ALL.len()],
    bytes_memory: AtomicU64,
    bytes_disk: AtomicU64,
    bytes_origin: AtomicU64,
    top: Mutex<HashMap<PrimaryKey, KeyStat, DigestHasher>>,
    errors: Mutex<VecDeque<OriginError>>,
    last_sample: Mutex<Option<(Instant, u64)>>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            started: Instant::now(),
            by_label: Default::default(),
            bytes_memory: AtomicU64::new(0),
            bytes_disk: AtomicU64::new(0),
            bytes_origin: AtomicU64::new(0),
            top: Mutex::new(HashMap::default()),
            errors: Mutex::new(VecDeque::new()),
            last_sample: Mutex::new(None),
        }
    }
}

impl StatusBoard {
    /// A finished request: its Cache-Status label, the tier that answered (`memory`,
    /// `disk`, `origin`), key (if it had one), bytes sent.
    pub fn record(
        &self,
        outcome: CacheOutcome,
        tier: Tier,
        key: Option<PrimaryKey>,
        url: impl FnOnce() -> String,
        bytes: u64,
    ) {
        self.by_label[outcome.index()].fetch_add(1, Relaxed);
        let is_hit = outcome.is_hit();
        if is_hit && tier == Tier::Disk {
            self.bytes_disk.fetch_add(bytes, Relaxed);
        } else if is_hit {
            self.bytes_memory.fetch_add(bytes, Relaxed);
        } else {
            self.bytes_origin.fetch_add(bytes, Relaxed);
        }
        let Some(key) = key else { return };
        let mut top = self.top.lock();
        if top.len() >= TOP_CAPACITY && !top.contains_key(&key) {
            forget_less_busy_half(&mut top);
        }
        let stat = top.entry(key).or_insert_with(|| KeyStat {
            url: url(),
            hits: 0,
            bytes: 0,
        });
        stat.hits += u64::from(is_hit);
        stat.bytes += bytes;
    }

    /// An origin failure, for the recent-errors list.
    pub fn record_origin_error(&self, site: &str, url: String, error: ErrorType, detail: String) {
        let mut errors = self.errors.lock();
        if errors.len() == RECENT_ERRORS {
            errors.pop_front();
        }
        errors.push_back(OriginError {
            at: SystemTime::now(),
            site: site.to_string(),
            url,
            error,
            detail,
        });
    }

    /// The board as JSON; `tiers` is added by the caller, who knows the tiers.
    pub fn snapshot(&self, tiers: Value) -> Value {
        let counts: Vec<u64> = self.by_label.iter().map(|c| c.load(Relaxed)).collect();
        let requests: u64 = counts.iter().sum();
        let count = |outcome: CacheOutcome| counts[outcome.index()];
        let hits = count(CacheOutcome::Hit) + count(CacheOutcome::StaleHit);
        // Requests the cache looked up: hits and every kind of miss, not bypasses.
        let lookups = hits
            + [
                CacheOutcome::UriMiss,
                CacheOutcome::VaryMiss,
                CacheOutcome::Stale,
                CacheOutcome::Request,
            ]
            .into_iter()
            .map(count)
            .sum::<u64>();
        let (memory, disk, origin) = (
            self.bytes_memory.load(Relaxed),
            self.bytes_disk.load(Relaxed),
            self.bytes_origin.load(Relaxed),
        );
        let by_label: serde_json::Map<String, Value> = CacheOutcome::ALL
            .iter()
            .zip(&counts)
            .map(|(outcome, c)| (outcome.as_str().to_string(), json!(c)))
            .collect();
        let ratio = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 / whole as f64
            }
        };
        let (by_hits, by_bytes) = self.top_lists(10);
        let errors: Vec<Value> = self
            .errors
            .lock()
            .iter()
            .rev()
            .map(|e| {
                json!({"at": httpdate::fmt_http_date(e.at), "site": e.site, "url": e.url,
                       "error": e.error.as_str(), "detail": e.detail})
            })
            .collect();
        json!({
            "uptime_seconds": self.started.elapsed().as_secs(),
            "requests": requests,
            "requests_per_second": self.rate(requests),
            "hit_ratio": ratio(hits, lookups),
            "byte_hit_ratio": ratio(memory + disk, memory + disk + origin),
            "bytes_served": {"memory": memory, "disk": disk, "origin": origin},
            "by_cache_status": by_label,
            "tiers": tiers,
            "top_keys_by_hits": by_hits,
            "top_keys_by_bytes": by_bytes,
            "recent_origin_errors": errors,
        })
    }

    /// Requests per second since the previous snapshot taken at least a second ago (or
    /// since start-up).
    fn rate(&self, requests: u64) -> f64 {
        let now = Instant::now();
        let mut last = self.last_sample.lock();
        let (since, before) = last.unwrap_or((self.started, 0));
        let seconds = now.duration_since(since).as_secs_f64();
        if seconds >= 1.0 || last.is_none() {
            *last = Some((now, requests));
        }
        if seconds <= 0.0 {
            return 0.0;
        }
        (requests.saturating_sub(before)) as f64 / seconds
    }

    fn top_lists(&self, count: usize) -> (Vec<Value>, Vec<Value>) {
        let mut stats: Vec<KeyStat> = self.top.lock().values().cloned().collect();
        let render = |s: &KeyStat| json!({"url": s.url, "hits": s.hits, "bytes": s.bytes});
        stats.sort_by(|a, b| b.hits.cmp(&a.hits).then(b.bytes.cmp(&a.bytes)));
        let by_hits = stats
            .iter()
            .filter(|s| s.hits > 0)
            .take(count)
            .map(render)
            .collect();
        stats.sort_by_key(|s| std::cmp::Reverse(s.bytes));
        let by_bytes = stats.iter().take(count).map(render).collect();
        (by_hits, by_bytes)
    }
}

fn forget_less_busy_half(top: &mut HashMap<PrimaryKey, KeyStat, DigestHasher>) {
    let mut weights: Vec<(u64, u64)> = top.values().map(|s| (s.hits, s.bytes)).collect();
    weights.sort_unstable();
    let median = weights[weights.len() / 2];
    top.retain(|_, s| (s.hits, s.bytes) > median);
}
