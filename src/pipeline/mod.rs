//! The life of one request, as explicit phases called top to bottom by [`handle`]:
//!
//! 1. **request filter** ([`check_request`]): framing and target checks; anything ambiguous is
//!    answered here and never forwarded.
//! 2. **route** ([`route::Router::route`]): which site, hence which origin.
//! 3. **cache lookup** ([`lookup`]): hit (serve it), bypass (unsafe method, Range, cache
//!    off), or fetch (a miss, or a stored response to validate).
//! 4. **upstream request** ([`upstream_request`]): hop-by-hop stripping, forwarding headers
//!    inside the trust boundary, `Via`, the Host the origin sees.
//! 5. **upstream** ([`crate::upstream::Upstream::send`]): directly for bypasses, or through a
//!    coalesced fill ([`fetch`]) that stores what it may.
//! 6. **response filter** ([`downstream_response`], [`respond`]): hop-by-hop stripping,
//!    `Via`, `Age`, and `Cache-Status` on every response.
//!
//! Errors from any phase become a response in exactly one place,
//! [`crate::error::ProxyError::to_response`]. Connection-level concerns (limits, timeouts,
//! shutdown, the access log's timing) stay in `server`.

pub mod access_log;
pub mod cache_status;
mod encode;
mod fetch;
pub mod forwarding;
pub mod range;
pub mod respond;
pub mod route;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::admin::metrics::{self, Metrics, RequestLabels, SourceLabels};
use crate::body::Body;
use crate::cache::entry::StoredResponse;
use crate::cache::key::{PrimaryKey, VariantKey};
use crate::cache::memory::VariantSet;
use crate::cache::policy::{self, Reuse};
use crate::cache::Cache;
use crate::config::Config;
use crate::error::{Fault, ProxyError};
use crate::transform::compress::Compression;
use crate::upstream::{Upstream, UpstreamSetupError};
use access_log::AccessLog;
use cache_status::{CacheStatus, FwdReason};
use forwarding::{Downstream, ForwardingPolicy};
use route::{HostHeader, Router, Site};

/// Why a proxy could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    #[error("log.access_log_path {path}: {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
}

/// Everything a request needs that outlives it: built once from the config.
pub struct Proxy {
    router: Router,
    forwarding: ForwardingPolicy,
    upstream: Upstream,
    cache: Cache,
    compression: Compression,
    metrics: Arc<Metrics>,
    proxy_name: String,
    /// `Via` for responses we serve from the cache (RFC 9110 §7.6.3).
    via_response: HeaderValue,
    /// Longest wait for the next chunk of an origin body being filled into the cache.
    body_read_timeout: Duration,
    access_log: Option<Arc<AccessLog>>,
    /// Peers allowed to send PURGE.
    purge_allowed: Vec<ipnet::IpNet>,
    debug: crate::config::DebugConfig,
    /// Connection limits and timeouts, read by the server for each new connection.
    pub server: crate::config::ServerConfig,
}

impl Proxy {
    /// # Errors
    /// When the upstream client cannot be built (an unreadable CA file).
    pub fn new(config: &Config) -> Result<Proxy, SetupError> {
        let metrics = Arc::new(Metrics::new());
        let cache = Cache::new(&config.cache, &metrics);
        Proxy::build(config, cache, metrics)
    }

    /// A proxy for a reloaded `config` that keeps this one's cache contents, fills in flight
    /// and metrics.
    ///
    /// # Errors
    /// When the new upstream client cannot be built (an unreadable CA file).
    pub fn reconfigured(&self, config: &Config) -> Result<Proxy, SetupError> {
        Proxy::build(
            config,
            self.cache.reconfigured(&config.cache),
            Arc::clone(&self.metrics),
        )
    }

    fn build(config: &Config, cache: Cache, metrics: Arc<Metrics>) -> Result<Proxy, SetupError> {
        Ok(Proxy {
            router: Router::new(config),
            forwarding: ForwardingPolicy::new(&config.forwarding),
            upstream: Upstream::new(&config.upstream)?,
            cache,
            compression: Compression::new(&config.compression, metrics.encoder_runs.clone()),
            metrics,
            proxy_name: config.proxy_name.clone(),
            via_response: HeaderValue::from_str(&format!("1.1 {}", config.proxy_name))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 outpost")),
            body_read_timeout: config.upstream.response_header_timeout.get(),
            access_log: AccessLog::open(&config.log)
                .map_err(|source| SetupError::AccessLog {
                    path: config.log.access_log_path.clone(),
                    source,
                })?
                .map(Arc::new),
            purge_allowed: config.cache.purge_allowed.clone(),
            debug: config.debug.clone(),
            server: config.server.clone(),
        })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn compression(&self) -> &Compression {
        &self.compression
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether this response gets the path view: a trusted client that asked (or always).
    fn wants_path_view(&self, peer: SocketAddr, asked: bool) -> bool {
        let peer = peer.ip().to_canonical();
        (asked || self.debug.always)
            && self
                .debug
                .trusted_clients
                .iter()
                .any(|net| net.contains(&peer))
    }

    /// Sends to the origin and records the exchange: count, latency to the response head,
    /// and the Proxy-Status error type of failures.
    async fn send_upstream(
        &self,
        request: Request<Body>,
        origin: &str,
    ) -> Result<Response<Incoming>, ProxyError> {
        let started = Instant::now();
        self.metrics.origin_requests.inc();
        let result = self.upstream.send(request, origin).await;
        self.metrics
            .origin_latency
            .observe(started.elapsed().as_secs_f64());
        if let Err(err) = &result {
            let error = err.proxy_status_error();
            self.metrics
                .origin_errors
                .get_or_create(&metrics::ErrorLabels { error })
                .inc();
        }
        result
    }
}

/// What the access log says about one exchange; completed by `server` when the response
/// body has been sent (or abandoned).
#[derive(Debug)]
pub struct AccessRecord {
    pub started: Instant,
    pub peer: SocketAddr,
    pub client: IpAddr,
    pub method: Method,
    pub version: Version,
    pub host: String,
    pub target: String,
    pub site: String,
    /// The origin the site forwards to.
    pub origin: String,
    /// Cache key and variant, once the lookup has computed them.
    pub key: Option<PrimaryKey>,
    pub variant: Option<VariantKey>,
    /// Freshness left (Cache-Status ttl) and whether the request joined another's fetch.
    pub ttl: Option<i64>,
    pub collapsed: bool,
    pub status: u16,
    pub cache: &'static str,
    pub upstream_duration: Option<Duration>,
    /// The tier a hit came from (`memory` or `disk`).
    pub hit_tier: &'static str,
    pub error: Option<&'static str>,
    pub log: Option<Arc<AccessLog>>,
    /// Kept only for the combined format.
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub metrics: Arc<Metrics>,
}

impl AccessRecord {
    /// Where the response body came from: the tier for hits, `origin` otherwise.
    pub fn tier(&self) -> &'static str {
        if matches!(self.cache, "hit" | "stale-hit") {
            self.hit_tier
        } else {
            "origin"
        }
    }

    /// Records the finished exchange in the metrics and emits the access-log line (target
    /// `outpost::access`).
    pub fn finish(&self, bytes: u64, complete: bool) {
        let method = metrics::method_label(&self.method);
        let labels = RequestLabels {
            cache: self.cache,
            method,
        };
        self.metrics.requests.get_or_create(&labels).inc();
        let source = self.tier();
        let url = || format!("http://{}{}", self.host, self.target);
        self.metrics
            .board
            .record(self.cache, source, self.key, url, bytes);
        self.metrics
            .response_bytes
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
        let Some(log) = &self.log else { return };
        let version = match self.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        };
        log.write(&access_log::Line {
            at: SystemTime::now(),
            client: self.client,
            method: self.method.as_str(),
            host: &self.host,
            target: &self.target,
            version,
            status: self.status,
            bytes,
            duration: self.started.elapsed(),
            upstream: self.upstream_duration,
            cache: self.cache,
            tier: self.tier(),
            site: &self.site,
            key: self.key.map(|key| key.to_hex()),
            variant: self
                .variant
                .map(|variant| variant.0[..8].iter().map(|b| format!("{b:02x}")).collect()),
            ttl: self.ttl,
            collapsed: self.collapsed,
            error: self.error,
            complete,
            referer: self.referer.as_deref(),
            user_agent: self.user_agent.as_deref(),
        });
    }
}

/// The path view (`Outpost-Path`): which site and origin, the cache key digest and
/// variant, the tier that answered, freshness left and age, and whether the request was
/// collapsed into another's fetch. The access log carries the same fields.
fn path_view(record: &AccessRecord, status: &CacheStatus, response: &Response<Body>) -> String {
    let short = |bytes: &[u8; 32]| {
        bytes[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let mut view = format!(
        "site={}; origin={}; cache={}; tier={}",
        crate::error::sf_string(&record.site),
        crate::error::sf_string(&record.origin),
        record.cache,
        record.tier(),
    );
    if let Some(key) = &record.key {
        view.push_str(&format!("; key=\"{}\"", short(&key.0)));
    }
    if let Some(variant) = &record.variant {
        view.push_str(&format!("; variant=\"{}\"", short(&variant.0)));
    }
    if let Some(ttl) = status.ttl {
        view.push_str(&format!("; ttl={ttl}"));
    }
    if let Some(age) = response
        .headers()
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
    {
        view.push_str(&format!("; age={age}"));
    }
    if status.collapsed {
        view.push_str("; collapsed");
    }
    view
}

/// A request field the combined access-log format records; not copied otherwise.
fn agent_field(
    proxy: &Proxy,
    request: &Request<Incoming>,
    name: header::HeaderName,
) -> Option<String> {
    proxy
        .access_log
        .as_ref()
        .filter(|log| log.wants_agent_fields())?;
    request
        .headers()
        .get(name)?
        .to_str()
        .ok()
        .map(str::to_string)
}

/// What the connection layer knows about a request that the request itself does not show.
#[derive(Debug, Clone, Copy)]
pub struct DownstreamFacts {
    pub peer: SocketAddr,
    /// The raw head had both Content-Length and Transfer-Encoding (hyper keeps only the
    /// latter, so the request no longer shows it).
    pub has_conflicting_framing: bool,
}

/// Runs one request through every phase and returns the response to send, never an error:
/// failures are already turned into responses.
pub async fn handle(
    proxy: &Arc<Proxy>,
    request: Request<Incoming>,
    downstream: DownstreamFacts,
) -> (Response<Body>, AccessRecord) {
    let peer = downstream.peer;
    let mut record = AccessRecord {
        started: Instant::now(),
        peer,
        client: peer.ip(),
        method: request.method().clone(),
        version: request.version(),
        host: String::new(),
        target: request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().to_string(), |pq| pq.as_str().to_string()),
        site: String::new(),
        origin: String::new(),
        key: None,
        variant: None,
        ttl: None,
        collapsed: false,
        status: 0,
        cache: "none",
        upstream_duration: None,
        hit_tier: "memory",
        error: None,
        log: proxy.access_log.clone(),
        referer: agent_field(proxy, &request, header::REFERER),
        user_agent: agent_field(proxy, &request, header::USER_AGENT),
        metrics: Arc::clone(&proxy.metrics),
    };
    let mut cache_status = CacheStatus::forward(FwdReason::Bypass);
    let request_debug = request
        .headers()
        .get("outpost-debug")
        .is_some_and(|v| v.as_bytes() == b"1");
    let mut response = match serve(proxy, request, downstream, &mut record, &mut cache_status).await
    {
        Ok(response) => response,
        Err(err) => {
            match err.fault() {
                Fault::Downstream => tracing::debug!(%peer, error = %err, "request refused"),
                Fault::Upstream => {
                    tracing::warn!(%peer, error = %err, "origin failed");
                    let url = format!("http://{}{}", record.host, record.target);
                    let error = err.proxy_status_error();
                    proxy.metrics.board.record_origin_error(
                        &record.site,
                        url,
                        error,
                        err.to_string(),
                    );
                }
                Fault::Internal => tracing::error!(%peer, error = %err, "internal error"),
            }
            record.error = Some(err.proxy_status_error());
            err.to_response(&proxy.proxy_name)
        }
    };
    // RFC 9211 §2: appended after any Cache-Status members from caches nearer the origin.
    response.headers_mut().append(
        "cache-status",
        cache_status.to_header_value(&proxy.proxy_name),
    );
    record.status = response.status().as_u16();
    record.cache = cache_status.label();
    record.ttl = cache_status.ttl;
    record.collapsed = cache_status.collapsed;
    if proxy.wants_path_view(downstream.peer, request_debug) {
        if let Ok(value) = HeaderValue::from_str(&path_view(&record, &cache_status, &response)) {
            response.headers_mut().insert("outpost-path", value);
        }
    }
    (response, record)
}

async fn serve(
    proxy: &Arc<Proxy>,
    request: Request<Incoming>,
    facts: DownstreamFacts,
    record: &mut AccessRecord,
    cache_status: &mut CacheStatus,
) -> Result<Response<Body>, ProxyError> {
    if facts.has_conflicting_framing {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    check_request(&request)?;
    let host = route::request_host(&request)?;
    record.host = host.clone().unwrap_or_default();
    let site = Arc::clone(proxy.router.route(host.as_deref(), request.uri().path())?);
    record.site = site.name.clone();
    record.origin = site.origin.url().to_string();
    let downstream = Downstream {
        peer: facts.peer,
        scheme: "http",
        host: host.as_deref(),
    };

    if request.method().as_str() == "PURGE" {
        *cache_status = CacheStatus::forward(FwdReason::Bypass).with_detail("purge");
        return purge_request(proxy, &request, facts.peer, host.as_deref().unwrap_or("")).await;
    }

    let now = SystemTime::now();
    match lookup(&proxy.cache, &request, host.as_deref().unwrap_or(""), now).await {
        Lookup::Hit {
            entry,
            set,
            status,
            tier,
            revalidate,
        } => {
            *cache_status = status;
            record.key = Some(entry.meta.key);
            record.variant = Some(entry.meta.variant);
            record.hit_tier = tier;
            let (parts, _) = request.into_parts();
            if let Some(plan) = revalidate {
                fetch::revalidate_in_background(proxy, &site, &parts, downstream, plan);
            }
            if let Some(range) = range::requested(&parts, &entry.meta.headers) {
                return Ok(respond::ranged_from_entry(
                    proxy, &entry, &parts, now, &range,
                ));
            }
            Ok(encode::serve_stored(proxy, &set, &entry, &parts, now).await)
        }
        Lookup::OnlyIfCachedMiss => {
            // RFC 9111 §5.2.1.7: nothing suitable is stored and the origin may not be asked.
            *cache_status = CacheStatus::default().with_detail("only-if-cached");
            Ok(respond::gateway_timeout_only_if_cached())
        }
        Lookup::OfflineMiss => {
            *cache_status = CacheStatus::default().with_detail("offline");
            Ok(respond::gateway_timeout_offline())
        }
        // Offline, nothing is forwarded: unsafe methods, preconditions and the rest.
        Lookup::Bypass(_) if proxy.cache.is_offline() => {
            *cache_status = CacheStatus::default().with_detail("offline");
            Ok(respond::gateway_timeout_offline())
        }
        Lookup::Bypass(status) => {
            *cache_status = status;
            let is_unsafe = !is_safe_method(request.method());
            let target = is_unsafe.then(|| request.uri().clone());
            let response = forward(proxy, &site, request, downstream, record).await?;
            cache_status.fwd_status = Some(response.status().as_u16());
            if let Some(target) = target {
                let authority = host.as_deref().unwrap_or("");
                for key in invalidated_by_unsafe(&target, authority, &response) {
                    proxy.cache.invalidate(&key).await;
                }
                for tag in invalidated_groups(&response) {
                    let authority = Some(authority.to_string());
                    let target = crate::cache::PurgeTarget::Tag { tag, authority };
                    proxy.cache.purge(&target, false).await;
                }
            }
            Ok(response)
        }
        Lookup::Fetch(plan) => {
            *cache_status = CacheStatus::forward(plan.reason);
            record.key = Some(plan.key);
            record.variant = plan.stale.as_ref().map(|entry| entry.meta.variant);
            let (parts, _) = request.into_parts();
            let (response, status) =
                fetch::through_cache(proxy, &site, parts, downstream, plan, record).await?;
            *cache_status = status;
            Ok(response)
        }
    }
}

/// The outcome of the cache-lookup phase.
enum Lookup {
    /// Serve this stored response (`set` holds its encoded variants), found in `tier`;
    /// with a plan when it is served stale and validated in the background (RFC 5861 §3).
    Hit {
        entry: Arc<StoredResponse>,
        set: Arc<VariantSet>,
        status: CacheStatus,
        tier: &'static str,
        revalidate: Option<fetch::FetchPlan>,
    },
    /// `only-if-cached` and nothing usable is stored: 504 without asking the origin.
    OnlyIfCachedMiss,
    /// Offline mode and nothing usable is stored: 504 without asking the origin.
    OfflineMiss,
    /// Forward without the cache (unsafe method, Range, preconditions, cache off).
    Bypass(CacheStatus),
    /// Fetch through the cache: a miss, or a stored response to validate.
    Fetch(fetch::FetchPlan),
}

/// RFC 9110 §9.2.1 safe methods: their responses never invalidate anything.
fn is_safe_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The cache-lookup phase: what the cache can do for this request at `now`.
async fn lookup(
    cache: &Cache,
    request: &Request<Incoming>,
    authority: &str,
    now: SystemTime,
) -> Lookup {
    let bypass =
        |detail| Lookup::Bypass(CacheStatus::forward(FwdReason::Bypass).with_detail(detail));
    if !cache.is_enabled {
        return bypass("disabled");
    }
    let method = request.method();
    let is_offline = cache.is_offline();
    if method != Method::GET && method != Method::HEAD {
        return Lookup::Bypass(CacheStatus::forward(FwdReason::Method));
    }
    let headers = request.headers();
    if headers.contains_key(header::IF_MATCH) || headers.contains_key(header::IF_UNMODIFIED_SINCE) {
        return bypass("precondition");
    }
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let key = PrimaryKey::new("http", authority, path_and_query);
    let directives = policy::request_directives(headers);
    let has_authorization = headers.contains_key(header::AUTHORIZATION);
    let (variants, tier) = match cache.variants(&key, headers).await {
        Some((set, tier)) => (Some(set), tier),
        None => (None, "memory"),
    };
    let variant_hint = variants
        .as_ref()
        .and_then(|set| set.iter().next())
        .and_then(|entry| entry.meta.vary.variant_key(headers))
        .unwrap_or(VariantKey::NONE);
    let selected = variants
        .as_ref()
        .and_then(|set| set.select(headers))
        .cloned();
    let plan = |stale: Option<Arc<StoredResponse>>, reason| {
        Lookup::Fetch(fetch::FetchPlan {
            key,
            url: format!("http://{authority}{path_and_query}"),
            variant_hint,
            stale,
            reason,
            // §3.5: an authorised request must not share a fetch it might not be allowed to
            // share; a no-store request stores nothing for others to share.
            is_coalescable: !has_authorization && !directives.no_store,
        })
    };
    let Some(entry) = selected else {
        if directives.only_if_cached {
            return Lookup::OnlyIfCachedMiss;
        }
        if is_offline {
            return Lookup::OfflineMiss;
        }
        let is_vary_miss = variants.is_some_and(|set| !set.is_empty());
        return plan(
            None,
            if is_vary_miss {
                FwdReason::VaryMiss
            } else {
                FwdReason::UriMiss
            },
        );
    };
    if has_authorization && !entry.meta.freshness.is_shareable_with_authorization {
        // RFC 9111 §3.5: not reusable for a request with Authorization.
        return Lookup::Bypass(
            CacheStatus::forward(FwdReason::Request).with_detail("authorization"),
        );
    }
    let Some(set) = variants else {
        // invariant: `entry` was selected from `variants`.
        return plan(None, FwdReason::UriMiss);
    };
    let ttl = entry.meta.freshness.ttl_seconds(now);
    let hit = |entry, status, revalidate| Lookup::Hit {
        entry,
        set,
        status,
        tier,
        revalidate,
    };
    let reuse = policy::evaluate_reuse(&entry.meta.freshness, &directives, now);
    if is_offline && !matches!(reuse, Reuse::Fresh | Reuse::StaleAllowed) {
        // Offline mode serves what is stored, fresh or not, unless the response forbids
        // stale use and the operator did not override that.
        let forbids = entry.meta.freshness.forbids_stale;
        if forbids && !cache.offline_ignores_revalidation {
            return Lookup::OfflineMiss;
        }
        return hit(entry, CacheStatus::hit(ttl).with_detail("offline"), None);
    }
    match reuse {
        Reuse::Fresh | Reuse::StaleAllowed => hit(entry, CacheStatus::hit(ttl), None),
        Reuse::StaleWhileRevalidate if !directives.only_if_cached => {
            let Lookup::Fetch(revalidate) = plan(Some(Arc::clone(&entry)), FwdReason::Stale) else {
                return plan(Some(entry), FwdReason::Stale);
            };
            let status = CacheStatus::hit(ttl).with_detail("stale-while-revalidate");
            hit(entry, status, Some(revalidate))
        }
        _ if directives.only_if_cached => Lookup::OnlyIfCachedMiss,
        Reuse::ValidateStale | Reuse::StaleWhileRevalidate => plan(Some(entry), FwdReason::Stale),
        Reuse::ValidateForRequest => plan(Some(entry), FwdReason::Request),
    }
}

/// RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI and
/// the same-origin URIs in Location and Content-Location (all their variants).
fn invalidated_by_unsafe(
    target: &Uri,
    authority: &str,
    response: &Response<Body>,
) -> Vec<PrimaryKey> {
    let status = response.status();
    if !(status.is_success() || status.is_redirection()) {
        return Vec::new();
    }
    let path = target.path_and_query().map_or("/", |pq| pq.as_str());
    let mut keys = vec![PrimaryKey::new("http", authority, path)];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(location) = response.headers().get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Ok(uri) = location.parse::<Uri>() else {
            continue;
        };
        let same_origin = match uri.authority() {
            None => true,
            Some(other) => other.as_str().eq_ignore_ascii_case(authority),
        };
        if same_origin && uri.path().starts_with('/') {
            let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
            keys.push(PrimaryKey::new("http", authority, path));
        }
    }
    keys
}

/// RFC 9875 §3: the groups a non-error response to an unsafe request invalidates
/// (`Cache-Group-Invalidation`), to be purged for the same origin.
fn invalidated_groups(response: &Response<Body>) -> Vec<String> {
    let status = response.status();
    if !(status.is_success() || status.is_redirection()) {
        return Vec::new();
    }
    response
        .headers()
        .get_all("cache-group-invalidation")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(crate::cache::tags::sf_strings)
        .collect()
}

/// The conventional PURGE method on the proxy listener: removes every variant of the
/// target URL (marks them stale with `Soft-Purge: 1`), for peers in `cache.purge_allowed`.
async fn purge_request(
    proxy: &Proxy,
    request: &Request<Incoming>,
    peer: SocketAddr,
    authority: &str,
) -> Result<Response<Body>, ProxyError> {
    let peer_ip = peer.ip().to_canonical();
    if !proxy.purge_allowed.iter().any(|net| net.contains(&peer_ip)) {
        return Err(ProxyError::Forbidden(
            "PURGE is not allowed from this address",
        ));
    }
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let soft = request
        .headers()
        .get("soft-purge")
        .is_some_and(|v| v.as_bytes() == b"1");
    let target = crate::cache::PurgeTarget::Url(PrimaryKey::new("http", authority, path));
    let purged = proxy.cache.purge(&target, soft).await;
    proxy.metrics.purged.inc_by(purged as u64);
    let summary = serde_json::json!({"purged": purged, "soft": soft});
    let mut response = Response::new(Body::full(format!("{summary}\n")));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Forwards a request without the cache and streams the response back.
async fn forward(
    proxy: &Proxy,
    site: &Site,
    request: Request<Incoming>,
    downstream: Downstream<'_>,
    record: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = request.into_parts();
    let (upstream_request, client) =
        upstream_request(proxy, site, parts, Body::from(body), downstream)?;
    record.client = client;
    let sent_at = Instant::now();
    let response = proxy
        .send_upstream(upstream_request, site.origin.url().as_str())
        .await;
    record.upstream_duration = Some(sent_at.elapsed());
    Ok(downstream_response(proxy, response?))
}

/// Request filter: refuses what cannot be forwarded safely.
///
/// # Errors
/// [`ProxyError::BadRequest`] for ambiguous framing (RFC 9112 §6.3: Content-Length together
/// with Transfer-Encoding, or disagreeing Content-Length values: a request smuggling vector),
/// CONNECT (we are not a forward proxy) and targets that are not origin- or absolute-form.
pub fn check_request<B>(request: &Request<B>) -> Result<(), ProxyError> {
    let headers = request.headers();
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let mut lengths = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(|part| part.trim_ascii());
    if let Some(first) = lengths.next() {
        if first.is_empty()
            || !first.iter().all(u8::is_ascii_digit)
            || lengths.any(|other| other != first)
        {
            return Err(ProxyError::BadRequest(
                "invalid or conflicting Content-Length",
            ));
        }
    }
    if request.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT is not supported by a reverse proxy",
        ));
    }
    if !request.uri().path().starts_with('/') {
        return Err(ProxyError::BadRequest(
            "request target must be origin-form or absolute-form",
        ));
    }
    Ok(())
}

/// Builds the request the origin receives from the client's request head; returns it with
/// the client's address as far as the trust boundary lets us know it.
fn upstream_request(
    proxy: &Proxy,
    site: &Site,
    mut parts: http::request::Parts,
    body: Body,
    downstream: Downstream<'_>,
) -> Result<(Request<Body>, IpAddr), ProxyError> {
    let headers = &mut parts.headers;
    forwarding::strip_hop_by_hop(headers);
    // We answer `Expect: 100-continue` ourselves (hyper does, when the body is first read);
    // the upstream client streams the body without waiting for the origin's 100.
    headers.remove(header::EXPECT);
    join_cookie_fields(headers);
    let client = proxy.forwarding.apply(headers, downstream);
    forwarding::append_via(headers, parts.version, &proxy.proxy_name);
    match &site.host_header {
        HostHeader::Preserve => {
            if let Some(host) = downstream.host.and_then(|h| HeaderValue::from_str(h).ok()) {
                headers.insert(header::HOST, host);
            }
        }
        HostHeader::Fixed(value) => {
            headers.insert(header::HOST, value.clone());
        }
    }

    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let origin = &site.origin;
    let uri = format!(
        "{}://{}{}{}",
        origin.url().scheme(),
        origin.authority(),
        origin.base_path(),
        path_and_query
    );
    parts.uri = uri
        .parse::<Uri>()
        .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
    parts.version = Version::HTTP_11;
    Ok((Request::from_parts(parts, body), client))
}

/// HTTP/2 clients may split `Cookie` into several fields (RFC 9113 §8.2.3); an HTTP/1.1
/// origin expects one, joined with "; ".
fn join_cookie_fields(headers: &mut http::HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|value| value.as_bytes())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Response filter for a response streamed from the origin without the cache.
fn downstream_response(proxy: &Proxy, response: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    forwarding::strip_hop_by_hop(&mut parts.headers);
    forwarding::append_via(&mut parts.headers, parts.version, &proxy.proxy_name);
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9112 §6.3: CL with TE, or disagreeing CLs, is refused.
    #[test]
    fn ambiguous_framing_is_refused() {
        let both = Request::post("/")
            .header(header::CONTENT_LENGTH, "3")
            .header(header::TRANSFER_ENCODING, "chunked")
            .body(())
            .unwrap();
        assert!(check_request(&both).is_err());
        let conflicting = Request::post("/")
            .header(header::CONTENT_LENGTH, "3")
            .header(header::CONTENT_LENGTH, "4")
            .body(())
            .unwrap();
        assert!(check_request(&conflicting).is_err());
        let repeated_same = Request::post("/")
            .header(header::CONTENT_LENGTH, "3, 3")
            .body(())
            .unwrap();
        assert!(check_request(&repeated_same).is_ok());
    }
}
