//! The metrics outpost exposes on `/metrics`, in the OpenMetrics text format of the
//! `prometheus-client` crate: requests by cache status and method, bytes by where they came
//! from, origin requests, errors and latency, coalesced waits, connections, and the memory
//! tier's size and evictions.
//!
//! Labels reuse the strings of Cache-Status and Proxy-Status, so a metric, a log line and a
//! header say the same thing. Recording is a few atomic operations; where to record is the
//! pipeline's and the server's business.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::CacheOutcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub cache: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `memory` for responses served from the cache, `origin` for the rest.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The RFC 9209 error type, as in Proxy-Status.
    pub error: &'static str,
}

/// One member of an origin pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub pool: String,
    /// Its `host:port`.
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerErrorLabels {
    pub pool: String,
    pub server: String,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

/// Builds a pool member's latency histogram.
type HistogramMaker = fn() -> Histogram;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: &'static str,
}

/// Counts one in a gauge while it lives: the count comes down however the scope ends
/// (a connection closing, a client hanging up mid-wait).
pub struct CountedWhile(Gauge);

impl CountedWhile {
    pub fn new(gauge: &Gauge) -> CountedWhile {
        gauge.inc();
        CountedWhile(gauge.clone())
    }
}

impl Drop for CountedWhile {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    /// The series of `requests` and `response_bytes` each request counts in, found in
    /// their families once (a family lookup hashes its labels with SipHash under a lock).
    per_request: PerRequestSeries,
    pub requests: Family<RequestLabels, Counter>,
    pub response_bytes: Family<SourceLabels, Counter>,
    pub origin_requests: Counter,
    /// Idempotent requests sent again after meeting a closing keep-alive connection.
    pub origin_retries: Counter,
    pub origin_errors: Family<ErrorLabels, Counter>,
    pub origin_latency: Histogram,
    pub pool_server_requests: Family<ServerLabels, Counter>,
    pub pool_server_errors: Family<ServerErrorLabels, Counter>,
    pub pool_server_latency: Family<ServerLabels, Histogram, HistogramMaker>,
    /// 1 while a member may take requests; 0 while drained, ejected or failing its checks.
    pub pool_server_up: Family<ServerLabels, Gauge>,
    pub pool_server_ejections: Family<ServerLabels, Counter>,
    pub pool_retries: Family<PoolLabels, Counter>,
    pub pool_retry_budget_exhausted: Family<PoolLabels, Counter>,
    pub coalesced_waits: Counter,
    /// Requests waiting now for the response head of a fetch another request leads.
    pub coalesced_waiting: Gauge,
    pub coalesced_wait_seconds: Histogram,
    /// Coalesced clients left behind by a fill streaming through unstored, that asked the
    /// origin for the rest themselves (`pipeline::resume`).
    pub fill_resumes: Counter,
    /// Fills of a whole representation that started from a kept prefix and asked the
    /// origin for the rest alone (`pipeline::prefix`), and the bytes they were spared.
    pub prefix_completions: Counter,
    pub prefix_bytes_spared: Counter,
    pub open_connections: Gauge,
    /// Upgraded connections (WebSocket) opened, and open now.
    pub tunnels: Counter,
    pub tunnels_open: Gauge,
    /// Client connections cut because the client read nothing for `server.send_timeout`.
    pub client_send_timeouts: Counter,
    /// Client connections closed on accept by `server.max_connections_per_client`.
    pub client_connections_refused: Counter,
    /// TLS handshakes refused for the client's certificate (`tls.client_ca_file`).
    pub client_certificates_refused: Counter,
    pub cache_entries: Family<TierLabels, Gauge>,
    pub cache_bytes: Family<TierLabels, Gauge>,
    pub evictions: Family<TierLabels, Counter>,
    pub purged: Counter,
    /// Disk-tier bodies that failed verification (removed and refetched).
    pub integrity_failures: Counter,
    /// Disk-tier I/O or index failures.
    pub disk_errors: Counter,
    /// 1 while the disk tier is out of use after a failure.
    pub disk_degraded: Gauge,
    /// Objects not stored on disk because the file system was at its free-space watermark.
    pub disk_full_refusals: Counter,
    /// Bodies not written to disk because the write queue was full (a disk slower than
    /// the misses).
    pub disk_writes_skipped: Counter,
    pub disk_write_backlog: Gauge,
    /// Invalidations (purges) the disk tier missed while off, to apply when it is back.
    pub disk_invalidations_pending: Gauge,
    /// 1 while offline mode is on.
    pub offline: Gauge,
    pub encoder_runs: Counter,
    /// Responses sent unencoded because running encoders held their memory budget.
    pub encodings_refused: Counter,
    /// Body bytes every fill in flight holds in memory (bounded by `cache.fill_memory_budget`).
    pub fill_bytes: Gauge,
    /// What counts against `cache.fill_memory_budget` (set when scraped).
    pub fill_budget_used_bytes: Gauge,
    /// Times the allocator was asked to return heap the memory tier freed (`cache::heap_release`).
    pub heap_releases: Counter,
    /// Reads of an object from the disk tier into memory (concurrent ones for a key coalesce).
    pub disk_loads: Counter,
    /// Responses whose body was sent from a verified open disk-tier file (sendfile).
    pub sendfile_responses: Counter,
    /// Responses whose body was read from a verified open disk-tier file without hashing
    /// (connections sendfile cannot write to: TLS, HTTP/2).
    pub verified_file_reads: Counter,
    /// Memory hits whose body was sent from its sealed memory file (sendfile).
    pub memory_sendfile_responses: Counter,
    /// Memory hits answered from a prepared head on a cleartext HTTP/1.1 connection
    /// (`pipeline::prepared`), without the pipeline.
    pub prepared_hits: Counter,
    /// Requests answered 503 because a fill or upstream connection limit and its queue
    /// were full.
    pub overloaded: Counter,
    /// The figures of the status page (kept beside the metrics, shared across reloads).
    pub board: super::board::StatusBoard,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers `metric` under `name` and hands it back (metrics are shared handles).
fn register<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("outpost");
        Metrics {
            per_request: PerRequestSeries::default(),
            requests: register(
                &mut registry,
                "requests",
                "Requests by Cache-Status and method",
                Family::<RequestLabels, Counter>::default(),
            ),
            response_bytes: register(
                &mut registry,
                "response_bytes",
                "Response body bytes sent, by where they came from",
                Family::<SourceLabels, Counter>::default(),
            ),
            origin_requests: register(
                &mut registry,
                "origin_requests",
                "Requests sent to origins",
                Counter::default(),
            ),
            origin_retries: register(
                &mut registry,
                "origin_retries",
                "Idempotent requests sent again on a new connection after a pooled one closed under them",
                Counter::default(),
            ),
            origin_errors: register(
                &mut registry,
                "origin_errors",
                "Origin failures by Proxy-Status error type",
                Family::<ErrorLabels, Counter>::default(),
            ),
            origin_latency: register(
                &mut registry,
                "origin_response_seconds",
                "Time from sending a request to an origin to its response head",
                Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ),
            pool_server_requests: register(
                &mut registry,
                "pool_server_requests",
                "Exchanges with each member of each origin pool",
                Family::default(),
            ),
            pool_server_errors: register(
                &mut registry,
                "pool_server_errors",
                "Failed exchanges with pool members, by Proxy-Status error type",
                Family::default(),
            ),
            pool_server_latency: register(
                &mut registry,
                "pool_server_response_seconds",
                "Time from sending a request to a pool member to its response head",
                Family::new_with_constructor(latency_histogram as HistogramMaker),
            ),
            pool_server_up: register(
                &mut registry,
                "pool_server_up",
                "1 while a pool member may take requests (not drained, ejected or failing checks)",
                Family::default(),
            ),
            pool_server_ejections: register(
                &mut registry,
                "pool_server_ejections",
                "Times a pool member was ejected after consecutive failed requests",
                Family::default(),
            ),
            pool_retries: register(
                &mut registry,
                "pool_retries",
                "Requests moved to another pool member after a failure",
                Family::default(),
            ),
            pool_retry_budget_exhausted: register(
                &mut registry,
                "pool_retry_budget_exhausted",
                "Failures that would have moved to another member but the retry budget was spent",
                Family::default(),
            ),
            tunnels: register(
                &mut registry,
                "tunnels",
                "Connections upgraded (101 from the origin) into byte tunnels",
                Counter::default(),
            ),
            tunnels_open: register(
                &mut registry,
                "tunnels_open",
                "Upgraded connections open now",
                Gauge::default(),
            ),
            coalesced_waits: register(
                &mut registry,
                "coalesced_waits",
                "Requests that waited for another request's origin fetch",
                Counter::default(),
            ),
            coalesced_waiting: register(
                &mut registry,
                "coalesced_waiting",
                "Requests waiting now for the response head of a fetch another request leads",
                Gauge::default(),
            ),
            fill_resumes: register(
                &mut registry,
                "fill_resumes",
                "Coalesced clients left behind by a fill streaming through unstored that asked the origin for the rest by range",
                Counter::default(),
            ),
            prefix_completions: register(
                &mut registry,
                "prefix_completions",
                "Fills that joined a kept prefix of the representation to the origin's 206 for the rest",
                Counter::default(),
            ),
            prefix_bytes_spared: register(
                &mut registry,
                "prefix_bytes_spared",
                "Bytes of kept prefixes that fills did not ask the origin for again",
                Counter::default(),
            ),
            coalesced_wait_seconds: register(
                &mut registry,
                "coalesced_wait_seconds",
                "How long coalesced requests waited for the fetch they joined",
                Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ),
            client_send_timeouts: register(
                &mut registry,
                "client_send_timeouts",
                "Client connections cut because the client read nothing for server.send_timeout",
                Counter::default(),
            ),
            client_connections_refused: register(
                &mut registry,
                "client_connections_refused",
                "Client connections closed on accept: the address had server.max_connections_per_client open",
                Counter::default(),
            ),
            client_certificates_refused: register(
                &mut registry,
                "client_certificates_refused",
                "TLS handshakes refused for the client's certificate: none where tls.client_ca_file requires one, or one its CAs did not issue, expired or revoked",
                Counter::default(),
            ),
            open_connections: register(
                &mut registry,
                "open_connections",
                "Client connections open",
                Gauge::default(),
            ),
            cache_entries: register(
                &mut registry,
                "cache_entries",
                "Resources stored, by tier",
                Family::<TierLabels, Gauge>::default(),
            ),
            cache_bytes: register(
                &mut registry,
                "cache_bytes",
                "Bytes stored (as weighed), by tier",
                Family::<TierLabels, Gauge>::default(),
            ),
            evictions: register(
                &mut registry,
                "evictions",
                "Resources evicted for room, by tier",
                Family::<TierLabels, Counter>::default(),
            ),
            integrity_failures: register(
                &mut registry,
                "integrity_failures",
                "Stored bodies that did not match their digest on read (removed, refetched), and reads of a corrupt disk index page",
                Counter::default(),
            ),
            disk_errors: register(
                &mut registry,
                "disk_errors",
                "Disk tier I/O or index failures",
                Counter::default(),
            ),
            disk_full_refusals: register(
                &mut registry,
                "disk_full_refusals",
                "Objects not stored on disk: the file system was at cache.disk_min_free (or out of inodes)",
                Counter::default(),
            ),
            disk_writes_skipped: register(
                &mut registry,
                "disk_writes_skipped",
                "Objects not written to disk: the writes queued already held a sixteenth of cache.memory_capacity (the disk is slower than the misses)",
                Counter::default(),
            ),
            disk_write_backlog: register(
                &mut registry,
                "disk_write_backlog_bytes",
                "Memory held by writes queued for the disk tier (bodies, metadata, tasks); at most a sixteenth of cache.memory_capacity",
                Gauge::default(),
            ),
            disk_invalidations_pending: register(
                &mut registry,
                "disk_invalidations_pending",
                "Invalidations (purges, unsafe requests) the disk tier missed while it was off, applied before it is used again",
                Gauge::default(),
            ),
            disk_degraded: register(
                &mut registry,
                "disk_degraded",
                "1 while the disk tier is out of use after a failure (memory only)",
                Gauge::default(),
            ),
            offline: register(
                &mut registry,
                "offline",
                "1 while offline mode serves only what is stored",
                Gauge::default(),
            ),
            purged: register(
                &mut registry,
                "purged",
                "Stored responses removed or marked stale by purge",
                Counter::default(),
            ),
            encoder_runs: register(
                &mut registry,
                "encoder_runs",
                "Compression encoder runs started",
                Counter::default(),
            ),
            encodings_refused: register(
                &mut registry,
                "encodings_refused",
                "Responses sent unencoded because running encoders held compression.encoder_memory_budget",
                Counter::default(),
            ),
            fill_bytes: register(
                &mut registry,
                "fill_bytes",
                "Body bytes held in memory by fills in flight",
                Gauge::default(),
            ),
            fill_budget_used_bytes: register(
                &mut registry,
                "fill_budget_used_bytes",
                "Bytes counted against cache.fill_memory_budget: bodies kept or held whole, streams' read-ahead and buffers, kept bodies still being sent outside the memory tier",
                Gauge::default(),
            ),
            heap_releases: register(
                &mut registry,
                "heap_releases",
                "Times the allocator was asked to return heap the memory tier freed to bodies off the heap",
                Counter::default(),
            ),
            disk_loads: register(
                &mut registry,
                "disk_loads",
                "Objects read from the disk tier into memory",
                Counter::default(),
            ),
            sendfile_responses: register(
                &mut registry,
                "sendfile_responses",
                "Responses whose body was sent from a verified open disk-tier file (sendfile)",
                Counter::default(),
            ),
            verified_file_reads: register(
                &mut registry,
                "verified_file_reads",
                "Responses whose body was read from a verified open disk-tier file without hashing",
                Counter::default(),
            ),
            memory_sendfile_responses: register(
                &mut registry,
                "memory_sendfile_responses",
                "Memory hits whose body was sent from its sealed memory file (sendfile)",
                Counter::default(),
            ),
            prepared_hits: register(
                &mut registry,
                "prepared_hits",
                "Memory hits answered from a prepared response head, without the pipeline",
                Counter::default(),
            ),
            overloaded: register(
                &mut registry,
                "overloaded",
                "Requests refused (503) because a fill or upstream connection limit was reached",
                Counter::default(),
            ),
            board: super::board::StatusBoard::default(),
            registry,
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // invariant: writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encode into String");
        text
    }
}

/// A method as a label without allocating: the standard methods by name, others as `other`.
/// Methods with a label of their own, then `other`.
const METHOD_LABELS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE", "other",
];
const TIERS: [crate::telemetry::Tier; 3] = [
    crate::telemetry::Tier::Memory,
    crate::telemetry::Tier::Disk,
    crate::telemetry::Tier::Origin,
];

/// Series found once per label combination, each created when first counted (so
/// `/metrics` lists only combinations that happened).
struct PerRequestSeries {
    requests: Vec<std::sync::OnceLock<Counter>>,
    bytes: [std::sync::OnceLock<Counter>; 3],
}

impl Default for PerRequestSeries {
    fn default() -> Self {
        PerRequestSeries {
            requests: (0..CacheOutcome::ALL.len() * METHOD_LABELS.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            bytes: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts a finished request: its outcome and method, and the body bytes from `tier`.
    pub fn count_request(
        &self,
        outcome: CacheOutcome,
        method: &http::Method,
        tier: crate::telemetry::Tier,
        bytes: u64,
    ) {
        let method_index = method_index(method);
        let slot = &self.per_request.requests[outcome.index() * METHOD_LABELS.len() + method_index];
        slot.get_or_init(|| {
            self.requests
                .get_or_create(&RequestLabels {
                    cache: outcome.as_str(),
                    method: METHOD_LABELS[method_index],
                })
                .clone()
        })
        .inc();
        let tier_index = TIERS.iter().position(|t| *t == tier).unwrap_or(0);
        self.per_request.bytes[tier_index]
            .get_or_init(|| {
                self.response_bytes
                    .get_or_create(&SourceLabels {
                        source: tier.as_str(),
                    })
                    .clone()
            })
            .inc_by(bytes);
    }
}

pub fn method_label(method: &http::Method) -> &'static str {
    METHOD_LABELS[method_index(method)]
}

/// Position of `method`'s label in [`METHOD_LABELS`].
fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ if method.as_str() == "PURGE" => 7,
        _ => 8,
    }
}
