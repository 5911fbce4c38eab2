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

/// Whether the answers to `peer`'s unsafe requests may change what is stored
/// (`cache.unsafe_invalidation`): invalidate it, or (a POST's, RFC 9110 §9.3.3) replace it.
pub(super) fn unsafe_requests_change_cache(proxy: &Proxy, peer: SocketAddr) -> bool {
    match proxy.unsafe_invalidation {
        UnsafeInvalidation::All => true,
        UnsafeInvalidation::Trusted => proxy.may_purge(peer),
        UnsafeInvalidation::Off => false,
    }
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
    if !unsafe_requests_change_cache(proxy, peer) {
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
        if let Some(resolved) = same_origin_reference(location, target, (scheme, authority)) {
            keys.push(PrimaryKey::new(scheme, authority, &resolved));
        }
    }
    keys
}

/// The path and query the URI-reference `reference` (a Location or Content-Location value)
/// names when resolved against `target` on `origin` (RFC 3986 §5.2); `None` when it names
/// another origin, has dot segments (left unresolved: such a reference is rare and
/// ambiguous to compare), or is not a valid reference.
pub(super) fn same_origin_reference(
    reference: &str,
    target: &Uri,
    (scheme, authority): (&str, &str),
) -> Option<String> {
    let reference = reference.split('#').next().unwrap_or_default();
    let target_path = target.path();
    let path_and_query = if reference.contains("://") || reference.starts_with("//") {
        let absolute = if reference.starts_with("//") {
            format!("{scheme}:{reference}")
        } else {
            reference.to_owned()
        };
        let uri = absolute.parse::<Uri>().ok()?;
        let other = uri.authority()?;
        let same_origin = uri
            .scheme_str()
            .is_some_and(|other_scheme| other_scheme.eq_ignore_ascii_case(scheme))
            && canonical_authority(scheme, other.as_str()) == authority;
        if !same_origin {
            return None;
        }
        uri.path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned()
    } else if reference.is_empty() {
        target
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned()
    } else if reference.starts_with('?') {
        format!("{target_path}{reference}")
    } else if reference.starts_with('/') {
        reference.to_owned()
    } else {
        // A relative path: merged with the target's directory (RFC 3986 §5.2.3). A first
        // segment with a colon would be a scheme, not a path.
        let first_segment = reference.split(['/', '?']).next().unwrap_or_default();
        if first_segment.contains(':') {
            return None;
        }
        let directory = &target_path[..=target_path.rfind('/').unwrap_or(0)];
        format!("{directory}{reference}")
    };
    let path = path_and_query.split('?').next().unwrap_or_default();
    let has_dot_segment = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    let is_valid = path_and_query
        .parse::<http::uri::PathAndQuery>()
        .is_ok_and(|parsed| parsed.path().starts_with('/'));
    (is_valid && !has_dot_segment).then_some(path_and_query)
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

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: (&str, &str) = ("http", "example.com");

    fn resolved(reference: &str) -> Option<String> {
        let target: Uri = "/shop/cart?id=1".parse().expect("target");
        same_origin_reference(reference, &target, ORIGIN)
    }

    // RFC 3986 §5.2, as RFC 9110 §8.7 and RFC 9111 §4.4 resolve Content-Location and
    // Location against the target URI.
    #[test]
    fn references_resolve_against_the_target_uri() {
        assert_eq!(resolved("").as_deref(), Some("/shop/cart?id=1"));
        assert_eq!(resolved("#top").as_deref(), Some("/shop/cart?id=1"));
        assert_eq!(resolved("?id=2").as_deref(), Some("/shop/cart?id=2"));
        assert_eq!(resolved("/other").as_deref(), Some("/other"));
        assert_eq!(resolved("item/7").as_deref(), Some("/shop/item/7"));
        assert_eq!(
            resolved("http://EXAMPLE.com:80/shop/cart").as_deref(),
            Some("/shop/cart")
        );
        assert_eq!(resolved("//example.com/x?y").as_deref(), Some("/x?y"));
    }

    #[test]
    fn other_origins_and_unclear_references_resolve_to_nothing() {
        assert_eq!(resolved("https://example.com/shop/cart"), None);
        assert_eq!(resolved("http://example.net/shop/cart"), None);
        assert_eq!(resolved("//example.net/"), None);
        assert_eq!(resolved("../cart"), None);
        assert_eq!(resolved("mailto:someone@example.com"), None);
        assert_eq!(resolved("/a b"), None);
    }
}
