//! [`RequestCtx`]: everything one request's phases learn about it, carried from the first
//! phase to the access-log line. Phases write into it; [`RequestCtx::finish`] (called by
//! `server` when the body has been sent or abandoned) turns it into metrics, a status-board
//! entry and the access-log line, so all three always agree.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Method, Version};

use super::access_log::{self, AccessLog};
use super::route::Site;
use crate::cache::entry::StoredResponse;
use crate::cache::key::{PrimaryKey, VariantKey};
use crate::cache::memory::VariantSet;
use crate::telemetry::cache_status::{CacheStatus, FwdReason};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::Tier;

/// One request's state across the phases.
pub struct RequestCtx {
    pub started: Instant,
    /// The time the cache judges freshness at, taken once per request.
    pub now: SystemTime,
    pub peer: SocketAddr,
    /// The client's address as far as the trust boundary lets us know it.
    pub client: IpAddr,
    pub method: Method,
    pub version: Version,
    pub host: String,
    /// The request target as the client sent it (a clone shares the parsed bytes).
    pub uri: http::Uri,
    /// The site the request was routed to, and through it the origin it forwards to.
    pub site: Option<Arc<Site>>,
    /// Cache key and variant, once the lookup has computed them.
    pub key: Option<PrimaryKey>,
    pub variant: Option<VariantKey>,
    /// What the cache did: the Cache-Status member, and the outcome logs and metrics use.
    pub status: CacheStatus,
    /// Where a hit's body came from (memory or disk).
    pub hit_tier: Tier,
    pub upstream_duration: Option<Duration>,
    /// The RFC 9209 error type of a failed request.
    pub error: Option<crate::error::ErrorType>,
    pub response_status: u16,
    pub log: Option<Arc<AccessLog>>,
    /// Kept only for the combined format.
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub metrics: Arc<Metrics>,
    /// `Strict-Transport-Security` to add: the site's, on a request over TLS.
    pub hsts: Option<http::HeaderValue>,
    /// What a plain memory hit was served from, for `prepared` to keep its answer.
    pub hit_source: Option<HitSource>,
    /// Fields of the origin's response meant for this client alone (named by a qualified
    /// `no-cache` or `private`, RFC 9111 §5.2.2.4, §5.2.2.7): stored without them, the
    /// response that caused the fill gets them back.
    pub own_fields: Option<http::HeaderMap>,
    /// The client certificate the connection's handshake verified, for the access log.
    pub client_cert: Option<Arc<super::client_cert::VerifiedClient>>,
    /// A Range miss sent again after the object it waited for was not stored: its Range
    /// goes to the origin as it is.
    pub forwards_range: bool,
}

impl RequestCtx {
    pub fn new(
        request: &http::request::Parts,
        peer: SocketAddr,
        log: Option<Arc<AccessLog>>,
        metrics: Arc<Metrics>,
    ) -> RequestCtx {
        let agent_field = |name| {
            log.as_ref().filter(|log| log.wants_agent_fields())?;
            request.headers.get(name)?.to_str().ok().map(str::to_string)
        };
        RequestCtx {
            started: Instant::now(),
            now: SystemTime::now(),
            peer,
            client: peer.ip(),
            method: request.method.clone(),
            version: request.version,
            host: String::new(),
            uri: request.uri.clone(),
            site: None,
            key: None,
            variant: None,
            status: CacheStatus::forward(FwdReason::Bypass),
            hit_tier: Tier::Memory,
            upstream_duration: None,
            error: None,
            response_status: 0,
            referer: agent_field(http::header::REFERER),
            hsts: None,
            user_agent: agent_field(http::header::USER_AGENT),
            hit_source: None,
            client_cert: None,
            own_fields: None,
            forwards_range: false,
            log,
            metrics,
        }
    }

    /// Forgets what a hit noted, for a request looked up again after its stored body
    /// turned out lost: nothing of that entry may describe or prepare the new answer.
    pub fn forget_hit(&mut self) {
        self.key = None;
        self.variant = None;
        self.status = CacheStatus::forward(FwdReason::Bypass);
        self.hit_tier = Tier::Memory;
        self.hit_source = None;
        self.own_fields = None;
    }

    /// Where the response body came from: the tier for hits, the origin otherwise.
    pub fn tier(&self) -> Tier {
        if self.status.outcome().is_hit() {
            self.hit_tier
        } else {
            Tier::Origin
        }
    }

    /// The request target: path and query, or the whole target when it has no path.
    pub fn target(&self) -> Cow<'_, str> {
        match self.uri.path_and_query() {
            Some(path_and_query) => Cow::Borrowed(path_and_query.as_str()),
            None => Cow::Owned(self.uri.to_string()),
        }
    }

    /// The name of the site the request was routed to (empty before routing).
    pub fn site_name(&self) -> &str {
        self.site.as_ref().map_or("", |site| site.name.as_str())
    }

    /// The name of the origin the request's site forwards to (empty before routing).
    pub fn origin_name(&self) -> &str {
        self.site
            .as_ref()
            .map_or("", |site| site.pool.name.as_str())
    }

    /// `http://host/target`, for the status page and error lists.
    pub fn url(&self) -> String {
        // Pushed, not `format!`ed: a miss on a new key makes one for the status board.
        let target = self.target();
        let mut url = String::with_capacity(7 + self.host.len() + target.len());
        url.push_str("http://");
        url.push_str(&self.host);
        url.push_str(&target);
        url
    }

    /// Records the finished exchange in the metrics and emits the access-log line (target
    /// `outpost::access`).
    pub fn finish(&self, bytes: u64, complete: bool) {
        let outcome = self.status.outcome();
        let tier = self.tier();
        let exchange = Exchange {
            outcome,
            method: &self.method,
            tier,
            key: self.key,
            bytes,
        };
        exchange.count(&self.metrics, || self.url());
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
            target: &self.target(),
            version,
            status: self.response_status,
            bytes,
            duration: self.started.elapsed(),
            upstream: self.upstream_duration,
            cache: outcome.as_str(),
            tier: tier.as_str(),
            site: self.site_name(),
            key: self.key.map(|key| key.to_hex()),
            variant: self.variant.map(|variant| short_hex(&variant.0)),
            ttl: self.status.ttl,
            collapsed: self.status.collapsed,
            error: self.error.map(crate::error::ErrorType::as_str),
            complete,
            referer: self.referer.as_deref(),
            user_agent: self.user_agent.as_deref(),
            client_cert: self
                .client_cert
                .as_deref()
                .map(|client| client.fingerprint()),
        });
    }

    /// The path view (`Outpost-Path`): which site and origin, the cache key digest and
    /// variant, the tier that answered, freshness left and age, and whether the request
    /// was collapsed into another's fetch. The access log carries the same fields.
    pub fn path_view(&self, age: Option<&str>) -> String {
        let mut view = format!(
            "site={}; origin={}; cache={}; tier={}",
            crate::error::sf_string(self.site_name()),
            crate::error::sf_string(self.origin_name()),
            self.status.outcome().as_str(),
            self.tier().as_str(),
        );
        if let Some(key) = &self.key {
            let _ = write!(view, "; key=\"{}\"", short_hex(&key.0));
        }
        if let Some(variant) = &self.variant {
            let _ = write!(view, "; variant=\"{}\"", short_hex(&variant.0));
        }
        if let Some(ttl) = self.status.ttl {
            let _ = write!(view, "; ttl={ttl}");
        }
        if let Some(age) = age {
            let _ = write!(view, "; age={age}");
        }
        if self.status.collapsed {
            view.push_str("; collapsed");
        }
        view
    }
}

/// What the pipeline served a plain memory hit from: what `prepared` keeps an answer
/// beside, and checks is still current before using it.
pub struct HitSource {
    pub set: Arc<VariantSet>,
    /// The stored response whose freshness and `Age` the answer carries.
    pub entry: Arc<StoredResponse>,
    /// Whose body was sent whole (the entry, or a stored encoding of it); `None` when the
    /// body was anything else (a range, an encoding made on the fly).
    pub body_of: Option<Arc<StoredResponse>>,
}

/// What the metrics and the status board count of a finished exchange.
pub struct Exchange<'a> {
    pub outcome: crate::telemetry::CacheOutcome,
    pub method: &'a Method,
    pub tier: Tier,
    pub key: Option<PrimaryKey>,
    pub bytes: u64,
}

impl Exchange<'_> {
    /// Counts it; `url` (`http://host/target`) is made only if the board keeps it.
    pub fn count(&self, metrics: &Metrics, url: impl FnOnce() -> String) {
        metrics.count_request(self.outcome, self.method, self.tier, self.bytes);
        metrics
            .board
            .record(self.outcome, self.tier, self.key, url, self.bytes);
    }
}

/// The first eight bytes of a digest, in hex.
fn short_hex(bytes: &[u8; 32]) -> String {
    bytes[..8]
        .iter()
        .fold(String::with_capacity(16), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}
