//! Requests outpost answers itself as their final recipient instead of forwarding them
//! (RFC 9110 §7.6.2): a `TRACE` or `OPTIONS` whose `Max-Forwards` has run out, and
//! `OPTIONS *`, which asks about the server in general (§9.3.7) and names no resource at
//! the origin. A `TRACE` or `OPTIONS` that goes on has its `Max-Forwards` lowered by one.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::Body;

/// Fields a `TRACE` reflection leaves out: credentials the request should not have carried
/// (RFC 9110 §9.3.8), which a reflected body would hand to a script that can read it but
/// not the cookie itself.
const NOT_REFLECTED: [HeaderName; 3] = [
    header::COOKIE,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
];

/// The methods `Max-Forwards` counts hops for; other methods ignore it (§7.6.2).
fn counts_hops(method: &Method) -> bool {
    method == Method::TRACE || method == Method::OPTIONS
}

/// The `Max-Forwards` of a request with `method` and `headers`, when the method counts
/// hops. A value that is not a number is ignored, as for other methods: the field is then
/// forwarded as it came. A count too large for u64 is as good as unlimited.
fn hops_left(method: &Method, headers: &HeaderMap) -> Option<u64> {
    if !counts_hops(method) {
        return None;
    }
    let value = headers.get(header::MAX_FORWARDS)?.to_str().ok()?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse().unwrap_or(u64::MAX))
}

/// Whether outpost answers this request itself: `OPTIONS *`, or a `TRACE` or `OPTIONS`
/// with `Max-Forwards: 0`.
pub fn answers_here(parts: &http::request::Parts) -> bool {
    is_server_wide_options(parts) || hops_left(&parts.method, &parts.headers) == Some(0)
}

/// `OPTIONS *` (the asterisk-form target, RFC 9112 §3.2.4).
pub fn is_server_wide_options(parts: &http::request::Parts) -> bool {
    parts.method == Method::OPTIONS && parts.uri.path() == "*"
}

/// The answer to a request [`answers_here`] takes: a `TRACE` reflects the request as
/// received (hop-by-hop fields and credentials left out) as `message/http`; an `OPTIONS`
/// gets an empty 200.
pub fn answer(parts: &http::request::Parts) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    if parts.method == Method::TRACE {
        let reflected = reflection(parts);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("message/http"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(reflected.len()));
        *response.body_mut() = Body::full(reflected);
    } else {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    }
    // The answer is about this hop, not a resource: nobody may store it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    *response.status_mut() = StatusCode::OK;
    response
}

/// The request line and fields of `parts` as an HTTP/1.1 message head.
fn reflection(parts: &http::request::Parts) -> bytes::Bytes {
    let mut out = BytesMut::new();
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(parts.uri.to_string().as_bytes());
    out.put_slice(format!(" {:?}\r\n", parts.version).as_bytes());
    for (name, value) in &parts.headers {
        if NOT_REFLECTED.contains(name) {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// Lowers a forwarded `TRACE` or `OPTIONS` request's `Max-Forwards` by one (§7.6.2: each
/// intermediary MUST update it before forwarding).
pub fn lower_max_forwards(method: &Method, headers: &mut HeaderMap) {
    if let Some(left) = hops_left(method, headers) {
        let lowered = HeaderValue::from(left.saturating_sub(1));
        headers.insert(header::MAX_FORWARDS, lowered);
    }
}
