//! The status board behind `/status.json` and the `/status` page: request counts by cache
//! outcome, bytes by source, requests per second, the busiest keys by hits and by bytes, and
//! the last origin errors. Prometheus series are `metrics`' business; this keeps the few
//! figures a person (or a script) wants at a glance, cheaply enough for the hit path.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use serde_json::{json, Value};

use crate::cache::key::PrimaryKey;

/// Cache-Status labels counted, in display order.
const LABELS: [&str; 9] = [
    "hit",
    "stale-hit",
    "uri-miss",
    "vary-miss",
    "stale",
    "request",
    "method",
    "bypass",
    "none",
];
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
    error: &'static str,
    detail: String,
}

/// What the status page shows, updated as requests finish.
#[derive(Debug)]
pub struct StatusBoard {
    started: Instant,
    by_label: [AtomicU64; LABELS.len()],
    bytes_memory: AtomicU64,
    bytes_disk: AtomicU64,
    bytes_origin: AtomicU64,
    top: Mutex<HashMap<PrimaryKey, KeyStat>>,
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
            top: Mutex::new(HashMap::new()),
            errors: Mutex::new(VecDeque::new()),
            last_sample: Mutex::new(None),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StatusBoard {
    /// A finished request: its Cache-Status label, the tier that answered (`memory`,
    /// `disk`, `origin`), key (if it had one), bytes sent.
    pub fn record(
        &self,
        label: &'static str,
        tier: &'static str,
        key: Option<PrimaryKey>,
        url: impl FnOnce() -> String,
        bytes: u64,
    ) {
        let index = LABELS
            .iter()
            .position(|l| *l == label)
            .unwrap_or(LABELS.len() - 1);
        self.by_label[index].fetch_add(1, Relaxed);
        let is_hit = index < 2;
        if is_hit && tier == "disk" {
            self.bytes_disk.fetch_add(bytes, Relaxed);
        } else if is_hit {
            self.bytes_memory.fetch_add(bytes, Relaxed);
        } else {
            self.bytes_origin.fetch_add(bytes, Relaxed);
        }
        let Some(key) = key else { return };
        let mut top = lock(&self.top);
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
    pub fn record_origin_error(
        &self,
        site: &str,
        url: String,
        error: &'static str,
        detail: String,
    ) {
        let mut errors = lock(&self.errors);
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
        let hits = counts[0] + counts[1];
        let lookups = hits + counts[2..6].iter().sum::<u64>();
        let (memory, disk, origin) = (
            self.bytes_memory.load(Relaxed),
            self.bytes_disk.load(Relaxed),
            self.bytes_origin.load(Relaxed),
        );
        let by_label: serde_json::Map<String, Value> = LABELS
            .iter()
            .zip(&counts)
            .map(|(l, c)| (l.to_string(), json!(c)))
            .collect();
        let ratio = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 / whole as f64
            }
        };
        let (by_hits, by_bytes) = self.top_lists(10);
        let errors: Vec<Value> = lock(&self.errors)
            .iter()
            .rev()
            .map(|e| {
                json!({"at": httpdate::fmt_http_date(e.at), "site": e.site, "url": e.url,
                       "error": e.error, "detail": e.detail})
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
        let mut last = lock(&self.last_sample);
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
        let mut stats: Vec<KeyStat> = lock(&self.top).values().cloned().collect();
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

fn forget_less_busy_half(top: &mut HashMap<PrimaryKey, KeyStat>) {
    let mut weights: Vec<(u64, u64)> = top.values().map(|s| (s.hits, s.bytes)).collect();
    weights.sort_unstable();
    let median = weights[weights.len() / 2];
    top.retain(|_, s| (s.hits, s.bytes) > median);
}

/// The status page: plain HTML, CSS and JavaScript, no external assets; it polls
/// `/status.json` every two seconds.
pub const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>outpost status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24;background:#f6f8fa}
h1{font-size:20px;margin:0 0 16px}h2{font-size:15px;margin:20px 0 8px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 16px;min-width:150px}
.card b{display:block;font-size:24px}.muted{color:#57606a}
table{border-collapse:collapse;background:#fff;width:100%;max-width:1100px}td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
</style></head><body>
<h1>outpost <span class="muted" id="uptime"></span></h1>
<div class="cards">
<div class="card">hit ratio<b id="hit_ratio">-</b></div>
<div class="card">byte hit ratio<b id="byte_hit_ratio">-</b></div>
<div class="card">requests/s<b id="rps">-</b></div>
<div class="card">requests<b id="requests">-</b></div>
<div class="card">memory tier<b id="memory">-</b><span class="muted" id="memory_detail"></span></div>
<div class="card" id="disk_card" hidden>disk tier<b id="disk">-</b><span class="muted" id="disk_detail"></span></div>
<div class="card" id="offline_card" hidden>mode<b>offline</b><span class="muted">serving stored objects only</span></div>
</div>
<h2>By cache status</h2><table id="by_status"></table>
<h2>Top keys by hits</h2><table id="top_hits"></table>
<h2>Top keys by bytes</h2><table id="top_bytes"></table>
<h2>Recent origin errors</h2><table id="errors"></table>
<script>
const el = id => document.getElementById(id);
const pct = x => (100 * x).toFixed(1) + '%';
const size = b => b >= 1<<30 ? (b/(1<<30)).toFixed(1)+' GiB' : b >= 1<<20 ? (b/(1<<20)).toFixed(1)+' MiB' : b >= 1024 ? (b/1024).toFixed(1)+' KiB' : b+' B';
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function rows(table, head, items, cells) {
  el(table).innerHTML = '<tr>' + head.map(h => '<th>' + h + '</th>').join('') + '</tr>' +
    (items.length ? items.map(i => '<tr>' + cells(i).map(([v, n]) => '<td' + (n ? ' class="n"' : '') + '>' + esc(v) + '</td>').join('') + '</tr>').join('')
                  : '<tr><td colspan="' + head.length + '" class="muted">none yet</td></tr>');
}
async function refresh() {
  try {
    const s = await (await fetch('/status.json', {cache: 'no-store'})).json();
    el('uptime').textContent = 'up ' + s.uptime_seconds + ' s';
    el('hit_ratio').textContent = pct(s.hit_ratio);
    el('byte_hit_ratio').textContent = pct(s.byte_hit_ratio);
    el('rps').textContent = s.requests_per_second.toFixed(1);
    el('requests').textContent = s.requests;
    const m = s.tiers.memory;
    el('memory').textContent = m.entries + (m.entries === 1 ? ' entry' : ' entries');
    el('memory_detail').textContent = size(m.bytes) + ' of ' + size(m.capacity);
    const d = s.tiers.disk;
    el('disk_card').hidden = !d;
    if (d) {
      el('disk').textContent = d.degraded ? 'failed' : d.entries + (d.entries === 1 ? ' entry' : ' entries');
      el('disk_detail').textContent = size(d.bytes) + ' of ' + size(d.capacity) + (d.degraded ? ' (memory only)' : '');
    }
    el('offline_card').hidden = !s.tiers.offline;
    rows('by_status', ['cache status', 'requests'], Object.entries(s.by_cache_status).filter(([, n]) => n > 0), ([k, n]) => [[k], [n, 1]]);
    rows('top_hits', ['url', 'hits', 'bytes'], s.top_keys_by_hits, k => [[k.url], [k.hits, 1], [size(k.bytes), 1]]);
    rows('top_bytes', ['url', 'bytes', 'hits'], s.top_keys_by_bytes, k => [[k.url], [size(k.bytes), 1], [k.hits, 1]]);
    rows('errors', ['at', 'site', 'url', 'error', 'detail'], s.recent_origin_errors, e => [[e.at], [e.site], [e.url], [e.error], [e.detail]]);
  } catch (e) { el('uptime').textContent = 'status unavailable: ' + e; }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"#;
