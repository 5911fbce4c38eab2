//! Forward-proxy mode: who may use outpost as their proxy, and for which targets. A client
//! configured with outpost as its HTTP proxy sends absolute-form requests (`GET
//! http://host/path`, RFC 9112 §3.2.2) and CONNECT for https (see `connect`).
//!
//! Absolute-form `http://` requests for a `forward_proxy.allow` host:port go to that host, through a
//! pool of one made on first use and kept while it is used, and are cached like reverse
//! ones, under the target URL. Every other absolute-form request is routed as before, by
//! its authority to a site or the default origin: never to the host it names, so outpost is
//! never an open proxy. When credentials are configured, both kinds of forward-proxy use
//! need them as `Proxy-Authorization: Basic` (compared in constant time), else 407.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::route::{Router, Site};
use crate::body::Body;
use crate::config::{Config, ForwardProxyConfig, OriginUrl};
use crate::telemetry::metrics::Metrics;
use crate::upstream::pool::Pool;

/// Forward-proxy targets kept at once; the least recently used go first.
const MAX_TARGETS: u64 = 4096;
/// A target unused this long is forgotten (its pool and connections dropped).
const TARGET_IDLE: Duration = Duration::from_secs(600);

/// The configured policy, compiled, and the targets in use.
pub struct ForwardProxy {
    connect_allow: Vec<HostPort>,
    allow: Vec<HostPort>,
    /// `Basic base64(user:password)`, as the header must read.
    expected_authorization: Option<String>,
    targets: moka::sync::Cache<String, Arc<Site>>,
    /// What a target's pool is built with (timeouts, protocol).
    settings: Arc<Config>,
    metrics: Arc<Metrics>,
}

/// A `host:port` pattern (`*` matches within either part).
struct HostPort {
    host: glob::Pattern,
    port: glob::Pattern,
}

impl HostPort {
    fn parse(pattern: &str) -> Option<HostPort> {
        let (host, port) = pattern.rsplit_once(':')?;
        Some(HostPort {
            host: glob::Pattern::new(&host.to_ascii_lowercase()).ok()?,
            port: glob::Pattern::new(port).ok()?,
        })
    }
}

fn matches(patterns: &[HostPort], host: &str, port: u16) -> bool {
    let host = host.to_ascii_lowercase();
    let port = port.to_string();
    patterns
        .iter()
        .any(|p| p.host.matches(&host) && p.port.matches(&port))
}

/// Where an absolute-form request goes.
pub enum Target {
    /// Routed by its authority like any request (not a forward-proxy target).
    Routed,
    /// To its own host, through this site.
    Forward(Arc<Site>),
    /// A forward-proxy target without the credentials: answer 407.
    Unauthorised,
}

impl ForwardProxy {
    pub fn new(config: &Config, metrics: &Arc<Metrics>) -> ForwardProxy {
        let compile = |patterns: &[String]| -> Vec<HostPort> {
            patterns.iter().filter_map(|p| HostPort::parse(p)).collect()
        };
        let ForwardProxyConfig {
            connect_allow,
            allow,
            credentials,
        } = &config.forward_proxy;
        let expected_authorization = credentials.as_ref().map(|secret| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(secret.expose());
            format!("Basic {encoded}")
        });
        ForwardProxy {
            connect_allow: compile(connect_allow),
            allow: compile(allow),
            expected_authorization,
            targets: moka::sync::Cache::builder()
                .max_capacity(MAX_TARGETS)
                .time_to_idle(TARGET_IDLE)
                .build(),
            settings: Arc::new(config.clone()),
            metrics: Arc::clone(metrics),
        }
    }

    /// Whether a CONNECT may reach `host:port`.
    pub fn allows_connect(&self, host: &str, port: u16) -> bool {
        matches(&self.connect_allow, host, port)
    }

    /// Whether the request carries the configured credentials (or none are configured).
    /// Call it before hop-by-hop fields are stripped: Proxy-Authorization is one.
    pub fn is_authorised(&self, request: &http::request::Parts) -> bool {
        let Some(expected) = &self.expected_authorization else {
            return true;
        };
        let presented = request
            .headers
            .get(header::PROXY_AUTHORIZATION)
            .map_or(&[][..], HeaderValue::as_bytes);
        subtle::ConstantTimeEq::ct_eq(presented, expected.as_bytes()).into()
    }

    /// Where `request` goes: a forward-proxy target when it is absolute-form, names an
    /// allowed host:port, and no site claims that host (an operator's site wins).
    pub fn target(&self, request: &http::request::Parts, router: &Router) -> Target {
        if self.allow.is_empty() {
            return Target::Routed;
        }
        let uri = &request.uri;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Target::Routed;
        };
        // `https://` targets come as CONNECT from every real client; an absolute-form
        // https request would be keyed as the cleartext connection it arrived on.
        if scheme != "http" {
            return Target::Routed;
        }
        if authority.as_str().contains('@') {
            return Target::Routed;
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        if !matches(&self.allow, host, port) || router.names_host(host) {
            return Target::Routed;
        }
        if !self.is_authorised(request) {
            return Target::Unauthorised;
        }
        let canonical = crate::cache::key::canonical_authority(scheme, authority.as_str());
        let key = format!("{scheme}://{canonical}");
        let site = self
            .targets
            .optionally_get_with_by_ref(&key, || self.site_for(&key));
        match site {
            Some(site) => Target::Forward(site),
            None => Target::Routed,
        }
    }

    fn site_for(&self, origin: &str) -> Option<Arc<Site>> {
        let url: OriginUrl = origin.parse().ok()?;
        let pool = Pool::single(origin, url, &self.settings, &self.metrics);
        Some(Arc::new(Site::catch_all(origin, Arc::new(pool))))
    }
}

/// 407 with a challenge for the one scheme outpost takes (RFC 9110 §11.7.1).
pub fn authentication_required() -> Response<Body> {
    let mut refused = Response::new(Body::full("407 Proxy Authentication Required\n"));
    *refused.status_mut() = StatusCode::PROXY_AUTHENTICATION_REQUIRED;
    refused.headers_mut().insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"outpost\""),
    );
    refused
}
