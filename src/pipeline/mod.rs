//! The life of one request, as explicit phases called top to bottom by [`handle`]:
//!
//! 1. **request filter** ([`check_request`]): framing and target checks; anything ambiguous is
//!    answered here and never forwarded.
//! 2. **route** ([`route::Router::route`]): which site, hence which origin.
//! 3. **upstream request** ([`upstream_request`]): hop-by-hop stripping, forwarding headers
//!    inside the trust boundary, `Via`, the Host the origin sees.
//! 4. **upstream** ([`crate::upstream::Upstream::send`]): the exchange, with timeouts.
//! 5. **response filter** ([`downstream_response`]): hop-by-hop stripping and `Via` on the
//!    way back; the body streams through untouched.
//!
//! Errors from any phase become a response in exactly one place,
//! [`crate::error::ProxyError::to_response`]. Connection-level concerns (limits, timeouts,
//! shutdown, the access log's timing) stay in `server`.

pub mod forwarding;
pub mod route;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::Config;
use crate::error::{Fault, ProxyError};
use crate::upstream::{Upstream, UpstreamSetupError};
use forwarding::{Downstream, ForwardingPolicy};
use route::{HostHeader, Router, Site};

/// Everything a request needs that outlives it: built once from the config.
pub struct Proxy {
    router: Router,
    forwarding: ForwardingPolicy,
    upstream: Upstream,
    proxy_name: String,
    access_log: bool,
}

impl Proxy {
    /// # Errors
    /// When the upstream client cannot be built (an unreadable CA file).
    pub fn new(config: &Config) -> Result<Proxy, UpstreamSetupError> {
        Ok(Proxy {
            router: Router::new(config),
            forwarding: ForwardingPolicy::new(&config.forwarding),
            upstream: Upstream::new(&config.upstream)?,
            proxy_name: config.proxy_name.clone(),
            access_log: config.log.access_log,
        })
    }

    pub fn proxy_name(&self) -> &str {
        &self.proxy_name
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
    pub status: u16,
    pub upstream_duration: Option<Duration>,
    pub error: Option<&'static str>,
    pub enabled: bool,
}

impl AccessRecord {
    /// Emits the access-log line (target `outpost::access`).
    pub fn emit(&self, bytes: u64, complete: bool) {
        if !self.enabled {
            return;
        }
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let upstream_ms = self.upstream_duration.map(|d| d.as_secs_f64() * 1000.0);
        tracing::info!(
            target: "outpost::access",
            client = %self.client,
            peer = %self.peer,
            method = %self.method,
            version = ?self.version,
            host = %self.host,
            target = %self.target,
            site = %self.site,
            status = self.status,
            bytes,
            duration_ms,
            upstream_ms,
            error = self.error,
            complete,
        );
    }
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
    proxy: &Proxy,
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
        status: 0,
        upstream_duration: None,
        error: None,
        enabled: proxy.access_log,
    };
    let response = match forward(proxy, request, downstream, &mut record).await {
        Ok(response) => response,
        Err(err) => {
            match err.fault() {
                Fault::Downstream => tracing::debug!(%peer, error = %err, "request refused"),
                Fault::Upstream => tracing::warn!(%peer, error = %err, "origin failed"),
                Fault::Internal => tracing::error!(%peer, error = %err, "internal error"),
            }
            record.error = Some(err.proxy_status_error());
            err.to_response(&proxy.proxy_name)
        }
    };
    record.status = response.status().as_u16();
    (response, record)
}

async fn forward(
    proxy: &Proxy,
    request: Request<Incoming>,
    facts: DownstreamFacts,
    record: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    if facts.has_conflicting_framing {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    check_request(&request)?;
    let host = route::request_host(&request)?;
    record.host = host.clone().unwrap_or_default();
    let site = proxy.router.route(host.as_deref(), request.uri().path())?;
    record.site = site.name.clone();

    let downstream = Downstream {
        peer: facts.peer,
        scheme: "http",
        host: host.as_deref(),
    };
    let (upstream_request, client) = upstream_request(proxy, site, request, downstream)?;
    record.client = client;

    let sent_at = Instant::now();
    let response = proxy
        .upstream
        .send(upstream_request, site.origin.url().as_str())
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

/// Builds the request the origin receives; returns it with the client's address as far as
/// the trust boundary lets us know it.
fn upstream_request(
    proxy: &Proxy,
    site: &Site,
    request: Request<Incoming>,
    downstream: Downstream<'_>,
) -> Result<(Request<Body>, IpAddr), ProxyError> {
    let (mut parts, body) = request.into_parts();
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
    Ok((Request::from_parts(parts, Body::from(body)), client))
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

/// Response filter: what the client receives from an origin response.
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
