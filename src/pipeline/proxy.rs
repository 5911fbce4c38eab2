//! [`Proxy`]: everything a request needs that outlives it, built once from the
//! configuration (and again on reload, keeping the cache and the metrics).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::{Request, Response};

use super::access_log::AccessLog;
use super::forwarding::ForwardingPolicy;
use super::route::{HostHeader, Router, Site};
use crate::body::Body;
use crate::cache::Cache;
use crate::config::Config;
use crate::error::ProxyError;
use crate::telemetry::metrics::{ErrorLabels, Metrics};
use crate::transform::compress::Compression;
use crate::upstream::pool::{Pools, Routing};
use crate::upstream::{buffer_replayable_body, OriginBody, Upstream, UpstreamSetupError};

/// Why a proxy could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsSetupError),
    #[error("log.access_log_path {path}: {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
}

/// Everything a request needs that outlives it: built once from the config.
pub struct Proxy {
    pub(super) router: Router,
    /// Every origin pool (a site with one origin URL has a pool of one).
    pub(super) pools: Pools,
    pub(super) forwarding: ForwardingPolicy,
    pub(super) upstream: Upstream,
    pub(super) cache: Cache,
    pub(super) compression: Compression,
    pub(super) metrics: Arc<Metrics>,
    pub(super) proxy_name: String,
    /// `Via` for responses we serve from the cache (RFC 9110 §7.6.3), by the version they
    /// were received in: see [`Proxy::via_for`].
    via_responses: [HeaderValue; VIA_VERSIONS.len()],
    /// Longest wait for the next chunk of an origin body being filled into the cache.
    pub(super) body_read_timeout: Duration,
    pub(super) access_log: Option<Arc<AccessLog>>,
    /// Peers allowed to send PURGE.
    pub(super) purge_allowed: Vec<ipnet::IpNet>,
    pub(super) unsafe_invalidation: crate::config::UnsafeInvalidation,
    pub(super) debug: crate::config::DebugConfig,
    /// Connection limits and timeouts, read by the server for each new connection.
    pub server: crate::config::ServerConfig,
    /// The TLS listeners' configurations (certificates read when this proxy was built).
    pub tls: Option<Arc<crate::server::tls::TlsListening>>,
    /// `tls.forward_client_cert`: verified client certificates go to origins (RFC 9440).
    forward_client_cert: bool,
    /// The first TLS listener's port: where redirects to https point.
    pub(super) https_port: Option<u16>,
    /// Forward-proxy use: which targets, for whom.
    pub(super) forward_proxy: super::forward_proxy::ForwardProxy,
    pub(super) connect_timeout: Duration,
    /// The package registries mounted under paths, when configured.
    pub(super) mirror: Option<Arc<crate::mirror::Mirror>>,
    /// Answers to repeated plain hits, made by the pipeline (this proxy's only).
    pub(super) prepared_hits: super::prepared::PreparedHits,
}

/// The versions a `Via` for a stored response is made ready for, once per proxy.
const VIA_VERSIONS: [http::Version; 5] = [
    http::Version::HTTP_09,
    http::Version::HTTP_10,
    http::Version::HTTP_11,
    http::Version::HTTP_2,
    http::Version::HTTP_3,
];
/// Where HTTP/1.1 is in [`VIA_VERSIONS`]: any other version is named as it.
const HTTP_11_INDEX: usize = 2;

impl Proxy {
    /// # Errors
    /// When the upstream client cannot be built (an unreadable CA file).
    /// Whether the certificate a TLS client presented goes to origins (RFC 9440).
    pub fn forwards_client_cert(&self) -> bool {
        self.forward_client_cert
    }

    pub fn new(config: &Config) -> Result<Proxy, SetupError> {
        let metrics = Arc::new(Metrics::new());
        let cache = Cache::new(&config.cache, &metrics);
        Proxy::build(config, cache, metrics, None)
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
            Some(&self.pools),
        )
    }

    /// `previous`: the pools of the proxy this one replaces, whose members (and their
    /// health and drain state) are kept for servers that remain.
    fn build(
        config: &Config,
        cache: Cache,
        metrics: Arc<Metrics>,
        previous: Option<&Pools>,
    ) -> Result<Proxy, SetupError> {
        let upstream = Upstream::new(config)?;
        // Streams count the origin connections' buffers against the fills' budget.
        cache
            .coalescer()
            .set_origin_read_buffer(config.origin_read_buffer().as_u64());
        let tls = crate::server::tls::server_config(config)?;
        let pools = Pools::new(config, previous, &metrics);
        pools.connect_with(config, &upstream)?;
        pools.start(&upstream);
        let forward_proxy = super::forward_proxy::ForwardProxy::new(config, &metrics);
        let mirror = crate::mirror::Mirror::new(&config.mirror, cache.disk_tier().cloned());
        let prepared_hits = super::prepared::PreparedHits::new(
            config.cache.memory_tier_capacity(),
            config.server.prepared_hits,
        );
        Ok(Proxy {
            forward_client_cert: config.tls.forward_client_cert,
            prepared_hits,
            mirror: mirror.map(Arc::new),
            router: Router::new(config, &pools),
            pools,
            forwarding: ForwardingPolicy::new(&config.forwarding),
            upstream,
            cache,
            compression: Compression::new(&config.compression, metrics.encoder_runs.clone())
                .with_encoder_budget(
                    config.effective_encoder_memory_budget(),
                    metrics.encodings_refused.clone(),
                ),
            metrics,
            proxy_name: config.proxy_name.clone(),
            via_responses: VIA_VERSIONS.map(|version| {
                let protocol = super::forwarding::received_protocol(version);
                // invariant: `check` refuses a proxy_name that is not a valid field value.
                HeaderValue::from_str(&format!("{protocol} {}", config.proxy_name))
                    .unwrap_or_else(|_| HeaderValue::from_static("1.1 outpost"))
            }),
            body_read_timeout: config.upstream.body_read_timeout.get(),
            access_log: AccessLog::open(&config.log)
                .map_err(|source| SetupError::AccessLog {
                    path: config.log.access_log_path.to_string(),
                    source,
                })?
                .map(Arc::new),
            purge_allowed: config.cache.purge_allowed.clone(),
            unsafe_invalidation: config.cache.unsafe_invalidation,
            debug: config.debug.clone(),
            server: config.server.clone(),
            tls,
            https_port: config.tls.listen.first().map(std::net::SocketAddr::port),
            forward_proxy,
            connect_timeout: config.upstream.connect_timeout.get(),
        })
    }

    pub fn prepared_hits(&self) -> &super::prepared::PreparedHits {
        &self.prepared_hits
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The package mirror's registries, when configured.
    pub fn mirror(&self) -> Option<&crate::mirror::Mirror> {
        self.mirror.as_deref()
    }

    /// Whether some site answers requests for `authority` (canonical) and `path`.
    pub fn serves(&self, authority: &str, path: &str) -> bool {
        self.router.route(Some(authority), path).is_ok()
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    pub fn compression(&self) -> &Compression {
        &self.compression
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// `Via` for a response we serve from the cache that was received in `version`.
    pub(super) fn via_for(&self, version: http::Version) -> &HeaderValue {
        let index = VIA_VERSIONS.iter().position(|v| *v == version);
        &self.via_responses[index.unwrap_or(HTTP_11_INDEX)]
    }

    /// Whether `peer` may purge (PURGE, and unsafe-request invalidation when it is limited
    /// to trusted peers).
    pub(super) fn may_purge(&self, peer: SocketAddr) -> bool {
        let peer = peer.ip().to_canonical();
        self.purge_allowed.iter().any(|net| net.contains(&peer))
    }

    /// Whether this response gets the path view and error details: a trusted debug client
    /// that asked (or always), speaking for itself. A request a proxy relays on behalf of
    /// someone else (it carries forwarding headers) gets neither, whoever the proxy is.
    pub(super) fn wants_path_view(
        &self,
        peer: SocketAddr,
        asked: bool,
        request: &http::HeaderMap,
    ) -> bool {
        let peer = peer.ip().to_canonical();
        let is_relayed = || {
            ["x-forwarded-for", "forwarded", "x-real-ip"]
                .iter()
                .any(|name| request.contains_key(*name))
        };
        (asked || self.debug.always)
            && !is_relayed()
            && self
                .debug
                .trusted_clients
                .iter()
                .any(|net| net.contains(&peer))
    }

    /// Sends to `site`'s origin pool and records the exchange: count (retries included),
    /// latency to the response head, and the Proxy-Status error type of failures.
    /// `affinity` (the cache key) places the request on a consistent-hash ring; a sticky
    /// cookie or header, when the pool names one, does so for the others.
    pub(super) async fn send_upstream(
        &self,
        request: Request<Body>,
        site: &Site,
        affinity: Option<&[u8]>,
    ) -> Result<Response<OriginBody>, ProxyError> {
        // As prompt as a request head must be (the slowloris guard).
        let wait = self.server.header_read_timeout.get();
        let request = buffer_replayable_body(request, REPLAYABLE_BODY_LIMIT, wait).await?;
        let sticky = match affinity {
            Some(_) => None,
            None => site
                .pool
                .sticky_value(request.headers())
                .map(<[u8]>::to_vec),
        };
        let routing = Routing {
            affinity: affinity.or(sticky.as_deref()),
            is_sticky: sticky.is_some(),
            host_from_server: site.host_header == HostHeader::Server,
        };
        let started = Instant::now();
        let sent = site.pool.send(&self.upstream, request, routing).await;
        self.metrics
            .origin_requests
            .inc_by(u64::from(sent.exchanges));
        self.metrics
            .origin_retries
            .inc_by(u64::from(sent.exchanges.saturating_sub(1)));
        self.metrics
            .origin_latency
            .observe(started.elapsed().as_secs_f64());
        if let Err(err) = &sent.result {
            let error = err.proxy_status_error().as_str();
            self.metrics
                .origin_errors
                .get_or_create(&ErrorLabels { error })
                .inc();
            if let ProxyError::LimitReached { .. } = err.last_try() {
                self.metrics.overloaded.inc();
            }
        }
        sent.result
    }
}

/// Request bodies up to this size are read before an idempotent request is sent, so it can
/// be sent again when it meets a closing keep-alive connection (a PUT of a small document is
/// the common case; larger bodies stream and are not retried).
const REPLAYABLE_BODY_LIMIT: u64 = 64 * 1024;
