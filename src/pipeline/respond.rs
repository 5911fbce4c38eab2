//! Responses built by the cache rather than relayed from the origin: from a stored entry or
//! from a fill in progress, with `Age` (RFC 9111 §5.1), our `Via`, and a 304 when the
//! client's own validators match (RFC 9111 §4.3.2). The hit path lives here, so it does no
//! parsing: it clones the stored header map and adds two fields.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use super::Proxy;
use crate::body::Body;
use crate::cache::entry::{EntryMeta, StoredResponse};
use crate::cache::policy;

/// Fields a 304 carries (RFC 9110 §15.4.5), besides Age, Via and Cache-Status.
const NOT_MODIFIED_FIELDS: [HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
];

/// Serves a stored response to the request whose head is `request`.
pub fn from_entry(
    proxy: &Proxy,
    entry: &StoredResponse,
    request: &http::request::Parts,
    now: SystemTime,
) -> Response<Body> {
    let body = if request.method == Method::HEAD {
        Body::empty()
    } else {
        Body::full(entry.body.clone())
    };
    from_meta(proxy, &entry.meta, body, request, now)
}

/// Serves a response described by `meta` with `body` (stored bytes or a fill's stream).
pub fn from_meta(
    proxy: &Proxy,
    meta: &EntryMeta,
    body: Body,
    request: &http::request::Parts,
    now: SystemTime,
) -> Response<Body> {
    let age = HeaderValue::from(meta.freshness.current_age(now).as_secs());
    if meta.status == StatusCode::OK && policy::is_not_modified(&request.headers, &meta.headers) {
        let mut headers = HeaderMap::with_capacity(NOT_MODIFIED_FIELDS.len() + 3);
        for name in NOT_MODIFIED_FIELDS {
            for value in meta.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        return finish(proxy, StatusCode::NOT_MODIFIED, headers, age, Body::empty());
    }
    let body = if request.method == Method::HEAD {
        Body::empty()
    } else {
        body
    };
    finish(proxy, meta.status, meta.headers.clone(), age, body)
}

fn finish(
    proxy: &Proxy,
    status: StatusCode,
    mut headers: HeaderMap,
    age: HeaderValue,
    body: Body,
) -> Response<Body> {
    headers.insert(header::AGE, age);
    headers.append(header::VIA, proxy.via_response.clone());
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// RFC 9110 §15.5.7: identity is excluded and no coding we produce is acceptable.
pub fn not_acceptable() -> Response<Body> {
    let mut response = Response::new(Body::full(
        "406 Not Acceptable: no acceptable content-coding\n",
    ));
    *response.status_mut() = StatusCode::NOT_ACCEPTABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    response
}

/// RFC 9111 §5.2.1.7: `only-if-cached` with nothing suitable stored.
pub fn gateway_timeout_only_if_cached() -> Response<Body> {
    let mut response = Response::new(Body::full(
        "504 Gateway Timeout: only-if-cached and not cached\n",
    ));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
