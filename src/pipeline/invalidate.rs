//! Invalidation from the proxy listener: RFC 9111 §4.4 (a non-error response to an unsafe
//! method invalidates the target and its Location/Content-Location), RFC 9875 §3
//! (`Cache-Group-Invalidation`), and the conventional PURGE method for allowed peers.

use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::{Method, Response, Uri};

use super::Proxy;
use crate::body::Body;
use crate::cache::key::{canonical_authority, PrimaryKey};
use crate::config::UnsafeInvalidation;
use crate::error::ProxyError;

/// Groups of one response's `Cache-Group-Invalidation` acted on; more are ignored (each is a
/// purge, and any client can provoke the response).
const MAX_INVALIDATED_GROUPS: usize = 8;

/// RFC 9110 §9.2.1 safe methods: their responses never invalidate anything.
pub(super) fn is_safe_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Applies RFC 9111 §4.4 and RFC 9875 §3 for the response `response` to an unsafe request
/// for `target` on `origin` (the downstream scheme and canonical authority).
pub(super) async fn after_unsafe(
    proxy: &Proxy,
    peer: SocketAddr,
    target: &Uri,
    origin: (&str, &str),
    response: &http::response::Parts,
) {
    let allowed = match proxy.unsafe_invalidation {
        UnsafeInvalidation::All => true,
        UnsafeInvalidation::Trusted => proxy.may_purge(peer),
        UnsafeInvalidation::Off => false,
    };
    if !allowed {
        return;
    }
    for key in invalidated_by_unsafe(target, origin, response) {
        proxy.cache.invalidate(&key).await;
    }
    let (scheme, authority) = origin;
    for tag in invalidated_groups(response) {
        let origin = Some(format!("{scheme}://{authority}"));
        let target = crate::cache::PurgeTarget::Tag { tag, origin };
        proxy.cache.purge(&target, false).await;
    }
}

/// RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI and
/// the same-origin URIs in Location and Content-Location (all their variants).
fn invalidated_by_unsafe(
    target: &Uri,
    (scheme, authority): (&str, &str),
    response: &http::response::Parts,
) -> Vec<PrimaryKey> {
    let status = response.status;
    if !(status.is_success() || status.is_redirection()) {
        return Vec::new();
    }
    let path = target.path_and_query().map_or("/", |pq| pq.as_str());
    let mut keys = vec![PrimaryKey::new(scheme, authority, path)];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(location) = response.headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Ok(uri) = location.parse::<Uri>() else {
            continue;
        };
        let same_origin = match (uri.scheme_str(), uri.authority()) {
            (None, None) => true,
            (Some(other_scheme), Some(other)) => {
                other_scheme.eq_ignore_ascii_case(scheme)
                    && canonical_authority(scheme, other.as_str()) == authority
            }
            _ => false,
        };
        if same_origin && uri.path().starts_with('/') {
            let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
            keys.push(PrimaryKey::new(scheme, authority, path));
        }
    }
    keys
}

/// RFC 9875 §3: the groups a non-error response to an unsafe request invalidates
/// (`Cache-Group-Invalidation`), to be purged for the same origin.
fn invalidated_groups(response: &http::response::Parts) -> Vec<String> {
    let status = response.status;
    if !(status.is_success() || status.is_redirection()) {
        return Vec::new();
    }
    let lines: Vec<&str> = response
        .headers
        .get_all("cache-group-invalidation")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut groups = crate::cache::tags::sf_strings(&lines.join(", "));
    if groups.len() > MAX_INVALIDATED_GROUPS {
        tracing::warn!(
            groups = groups.len(),
            kept = MAX_INVALIDATED_GROUPS,
            "Cache-Group-Invalidation names too many groups: the rest are ignored"
        );
        groups.truncate(MAX_INVALIDATED_GROUPS);
    }
    groups
}

/// The conventional PURGE method on the proxy listener: removes every variant of the
/// target URL (marks them stale with `Soft-Purge: 1`), for peers in `cache.purge_allowed`.
pub(super) async fn purge_request(
    proxy: &Proxy,
    request: &http::request::Parts,
    peer: SocketAddr,
    scheme: &str,
    authority: &str,
) -> Result<Response<Body>, ProxyError> {
    if !proxy.may_purge(peer) {
        return Err(ProxyError::Forbidden(
            "PURGE is not allowed from this address",
        ));
    }
    let path = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let soft = request
        .headers
        .get("soft-purge")
        .is_some_and(|v| v.as_bytes() == b"1");
    let target = crate::cache::PurgeTarget::Url(PrimaryKey::new(scheme, authority, path));
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
