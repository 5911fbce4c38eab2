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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: &'static str,
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub response_bytes: Family<SourceLabels, Counter>,
    pub origin_requests: Counter,
    pub origin_errors: Family<ErrorLabels, Counter>,
    pub origin_latency: Histogram,
    pub coalesced_waits: Counter,
    pub coalesced_wait_seconds: Histogram,
    pub open_connections: Gauge,
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
    /// 1 while offline mode is on.
    pub offline: Gauge,
    pub encoder_runs: Counter,
    /// Body bytes every fill in flight holds in memory (bounded by `cache.fill_memory_budget`).
    pub fill_bytes: Gauge,
    /// Reads of an object from the disk tier into memory (concurrent ones for a key coalesce).
    pub disk_loads: Counter,
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

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("outpost");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by Cache-Status and method",
            requests.clone(),
        );
        let response_bytes = Family::<SourceLabels, Counter>::default();
        registry.register(
            "response_bytes",
            "Response body bytes sent, by where they came from",
            response_bytes.clone(),
        );
        let origin_requests = Counter::default();
        registry.register(
            "origin_requests",
            "Requests sent to origins",
            origin_requests.clone(),
        );
        let origin_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "origin_errors",
            "Origin failures by Proxy-Status error type",
            origin_errors.clone(),
        );
        let origin_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "origin_response_seconds",
            "Time from sending a request to an origin to its response head",
            origin_latency.clone(),
        );
        let coalesced_waits = Counter::default();
        registry.register(
            "coalesced_waits",
            "Requests that waited for another request's origin fetch",
            coalesced_waits.clone(),
        );
        let coalesced_wait_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "coalesced_wait_seconds",
            "How long coalesced requests waited for the fetch they joined",
            coalesced_wait_seconds.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open",
            open_connections.clone(),
        );
        let cache_entries = Family::<TierLabels, Gauge>::default();
        registry.register(
            "cache_entries",
            "Resources stored, by tier",
            cache_entries.clone(),
        );
        let cache_bytes = Family::<TierLabels, Gauge>::default();
        registry.register(
            "cache_bytes",
            "Bytes stored (as weighed), by tier",
            cache_bytes.clone(),
        );
        let evictions = Family::<TierLabels, Counter>::default();
        registry.register(
            "evictions",
            "Resources evicted for room, by tier",
            evictions.clone(),
        );
        let integrity_failures = Counter::default();
        registry.register(
            "integrity_failures",
            "Stored bodies that did not match their digest on read (removed, refetched)",
            integrity_failures.clone(),
        );
        let disk_errors = Counter::default();
        registry.register(
            "disk_errors",
            "Disk tier I/O or index failures",
            disk_errors.clone(),
        );
        let disk_degraded = Gauge::default();
        registry.register(
            "disk_degraded",
            "1 while the disk tier is out of use after a failure (memory only)",
            disk_degraded.clone(),
        );
        let offline = Gauge::default();
        registry.register(
            "offline",
            "1 while offline mode serves only what is stored",
            offline.clone(),
        );
        let purged = Counter::default();
        registry.register(
            "purged",
            "Stored responses removed or marked stale by purge",
            purged.clone(),
        );
        let encoder_runs = Counter::default();
        registry.register(
            "encoder_runs",
            "Compression encoder runs started",
            encoder_runs.clone(),
        );
        let fill_bytes = Gauge::default();
        registry.register(
            "fill_bytes",
            "Body bytes held in memory by fills in flight",
            fill_bytes.clone(),
        );
        let disk_loads = Counter::default();
        registry.register(
            "disk_loads",
            "Objects read from the disk tier into memory",
            disk_loads.clone(),
        );
        let overloaded = Counter::default();
        registry.register(
            "overloaded",
            "Requests refused (503) because a fill or upstream connection limit was reached",
            overloaded.clone(),
        );
        Metrics {
            registry,
            requests,
            response_bytes,
            origin_requests,
            origin_errors,
            origin_latency,
            coalesced_waits,
            coalesced_wait_seconds,
            open_connections,
            cache_entries,
            cache_bytes,
            evictions,
            purged,
            integrity_failures,
            disk_errors,
            disk_degraded,
            offline,
            encoder_runs,
            fill_bytes,
            disk_loads,
            overloaded,
            board: super::board::StatusBoard::default(),
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
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ if method.as_str() == "PURGE" => "PURGE",
        _ => "other",
    }
}
