//! The request filter and the request the origin receives: refusing what cannot be
//! forwarded safely ([`check_request`]), then building the origin's request from the
//! client's head ([`upstream_request`]): hop-by-hop stripping, forwarding headers inside
//! the trust boundary, `Via`, the Host the origin sees, and the origin's URI.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::{Method, Request, Uri, Version};

use super::final_recipient;
use super::forwarding::{self, Downstream};
use super::route::{HostHeader, Site};
use super::Proxy;
use crate::body::Body;
use crate::error::ProxyError;

/// Request filter: refuses what cannot be forwarded safely.
///
/// # Errors
/// [`ProxyError::BadRequest`] for ambiguous framing (RFC 9112 §6.3: Content-Length together
/// with Transfer-Encoding, or disagreeing Content-Length values: a request smuggling vector),
/// CONNECT (answered before the filter, by `connect`, or not at all) and targets that are not
/// origin- or absolute-form (but for `OPTIONS *`, answered by `final_recipient`).
pub fn check_request(request: &http::request::Parts) -> Result<(), ProxyError> {
    let headers = &request.headers;
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
    if request.method == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT is not supported by a reverse proxy",
        ));
    }
    if !request.uri.path().starts_with('/')
        && !super::final_recipient::is_server_wide_options(request)
    {
        return Err(ProxyError::BadRequest(
            "request target must be origin-form or absolute-form",
        ));
    }
    if has_dot_segment(request.uri.path()) {
        return Err(ProxyError::BadRequest("dot-segment in the request path"));
    }
    Ok(())
}

/// Bytes RFC 9113 §6.5.2 counts for each field of a header list beside its name and value.
const FIELD_OVERHEAD: usize = 32;

/// An HTTP/2 request's header section against `server.max_header_bytes` and
/// `server.max_headers`, as HTTP/1 heads are held to them while read. The HTTP/2 layer
/// lets through twice the size (see `server::connection_builder`), so that what passes
/// the limit is answered here (RFC 9113 §10.5.1: 431; a target that alone is too long, 414,
/// as HTTP/1 answers), rather than by that layer's bare 431 and stream reset, which knew
/// no field count and called a long target a header field.
///
/// # Errors
/// [`ProxyError::UriTooLong`] or [`ProxyError::HeaderFieldsTooLarge`].
pub fn check_h2_header_section(
    request: &http::request::Parts,
    settings: &crate::config::ServerConfig,
) -> Result<(), ProxyError> {
    let limit = settings.max_header_bytes.as_usize();
    let target = request
        .uri
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    // `:path` with its name and overhead.
    let path_field = target + 5 + FIELD_OVERHEAD;
    if path_field > limit {
        return Err(ProxyError::UriTooLong);
    }
    // Browsers send each cookie as a field of its own over HTTP/2 (RFC 9113 §8.2.3): they
    // count as the one `Cookie` line HTTP/1 would carry.
    let crumbs = request.headers.get_all(header::COOKIE).iter();
    let (cookies, cookie_bytes) = crumbs.fold((0, 0), |(n, bytes), value| {
        (n + 1, bytes + value.len() + if n > 0 { 2 } else { 0 })
    });
    let joined_cookies = usize::from(cookies > 0);
    if request.headers.len() - cookies + joined_cookies > settings.max_headers {
        return Err(ProxyError::HeaderFieldsTooLarge(
            "more fields than server.max_headers",
        ));
    }
    let authority = request.uri.authority().map_or(0, |a| a.as_str().len());
    let pseudo = path_field
        + (7 + request.method.as_str().len() + FIELD_OVERHEAD)
        + (7 + request.uri.scheme_str().map_or(0, str::len) + FIELD_OVERHEAD)
        + (10 + authority + FIELD_OVERHEAD);
    let fields: usize = request
        .headers
        .iter()
        .filter(|(name, _)| *name != header::COOKIE)
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
        .sum();
    let cookie_field = joined_cookies * (6 + cookie_bytes + FIELD_OVERHEAD);
    if pseudo + fields + cookie_field > limit {
        return Err(ProxyError::HeaderFieldsTooLarge(
            "larger than server.max_header_bytes",
        ));
    }
    Ok(())
}

/// No Transfer-Encoding, or exactly `chunked` (in any case, perhaps spread over fields).
/// Read from the head as it arrived (the field is hop-by-hop and stripped before the
/// filter). Anything else is refused (RFC 9112 §6.1): hyper undoes the chunked framing but
/// would hand on a body still in a coding applied before it (`gzip, chunked`), which the
/// origin would take for the content itself.
pub fn has_only_chunked_coding(headers: &http::HeaderMap) -> bool {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if values.peek().is_none() {
        return true;
    }
    let mut codings = values
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty());
    matches!(
        (codings.next(), codings.next()),
        (Some(only), None) if only.eq_ignore_ascii_case(b"chunked")
    )
}

/// RFC 3986 §3.3: a `.` or `..` segment, also percent-encoded (`%2e%2e`). Resolved by
/// the origin but not by routing, it would step out of a site's path prefix or the origin's
/// base path, so such a request is refused rather than forwarded.
fn has_dot_segment(path: &str) -> bool {
    // A dot-segment starts `/.` or `/%`: most paths have neither, and need no split.
    let may_have_one = path
        .as_bytes()
        .windows(2)
        .any(|pair| pair[0] == b'/' && matches!(pair[1], b'.' | b'%'));
    may_have_one && path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot possibly written `%2e` or `%2E`; read in place (this runs on every
/// request).
fn is_dot_segment(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let (mut dots, mut at) = (0, 0);
    while at < bytes.len() {
        match bytes[at..] {
            [b'.', ..] => at += 1,
            [b'%', b'2', e, ..] if e.eq_ignore_ascii_case(&b'e') => at += 3,
            _ => return false,
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Builds the request the origin receives from the client's request head; returns it with
/// the client's address as far as the trust boundary lets us know it.
pub(super) fn upstream_request(
    proxy: &Proxy,
    site: &Site,
    mut parts: http::request::Parts,
    body: Body,
    downstream: Downstream<'_>,
) -> Result<(Request<Body>, IpAddr), ProxyError> {
    // Hop-by-hop fields were stripped when the request arrived (`handle`).
    let headers = &mut parts.headers;
    // Room for the fields added below (forwarding, Via, Host) in one growth, not several.
    let _ = headers.try_reserve(7);
    // We answer `Expect: 100-continue` ourselves (hyper does, when the body is first read);
    // the upstream client streams the body without waiting for the origin's 100.
    headers.remove(header::EXPECT);
    final_recipient::lower_max_forwards(&parts.method, headers);
    join_cookie_fields(headers);
    let client = proxy.forwarding.apply(headers, downstream);
    forwarding::append_via(headers, proxy.via_for(parts.version));
    match &site.host_header {
        HostHeader::Preserve => {
            if let Some(host) = downstream.host.and_then(|h| HeaderValue::from_str(h).ok()) {
                headers.insert(header::HOST, host);
            }
        }
        HostHeader::Fixed(value) => {
            headers.insert(header::HOST, value.clone());
        }
        // Set when the pool has chosen the server.
        HostHeader::Server => {}
    }

    // Origin-form: the pool addresses it to the server it chooses.
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = site
        .origin_target(path_and_query)
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
        assert!(check_request(&both.into_parts().0).is_err());
        let conflicting = Request::post("/")
            .header(header::CONTENT_LENGTH, "3")
            .header(header::CONTENT_LENGTH, "4")
            .body(())
            .unwrap();
        assert!(check_request(&conflicting.into_parts().0).is_err());
        let repeated_same = Request::post("/")
            .header(header::CONTENT_LENGTH, "3, 3")
            .body(())
            .unwrap();
        assert!(check_request(&repeated_same.into_parts().0).is_ok());
    }

    /// RFC 9112 §6.1: chunked is the only transfer coding a request may use here.
    #[test]
    fn only_the_chunked_transfer_coding_is_taken() {
        let coded = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for value in values {
                headers.append(header::TRANSFER_ENCODING, value.parse().unwrap());
            }
            has_only_chunked_coding(&headers)
        };
        assert!(coded(&[]) && coded(&["chunked"]) && coded(&["Chunked "]));
        for refused in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["chunked, chunked"],
            &["identity"],
            &[""],
        ] {
            assert!(!coded(refused), "{refused:?}");
        }
    }

    /// RFC 3986 §3.3: dot-segments, plain or percent-encoded, are refused; dots inside a
    /// segment are ordinary characters.
    #[test]
    fn dot_segments_are_refused() {
        for path in ["/a/../b", "/..", "/a/./b", "/a/%2e%2E/b", "/a/%2E/b"] {
            let request = Request::get(path).body(()).unwrap();
            assert!(check_request(&request.into_parts().0).is_err(), "{path}");
        }
        assert!(is_dot_segment(".%2e") && is_dot_segment("%2E."));
        for path in [
            "/a/..b/c",
            "/a.../b",
            "/.well-known/x",
            "/a/%2e%2ex",
            "/a/%2",
            "/%2e%2e%2e",
        ] {
            let request = Request::get(path).body(()).unwrap();
            assert!(check_request(&request.into_parts().0).is_ok(), "{path}");
        }
    }
}
