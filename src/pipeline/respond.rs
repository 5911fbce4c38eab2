//! Responses built by the cache rather than relayed from the origin: from a stored entry or
//! from a fill in progress, with `Age` (RFC 9111 §5.1), our `Via`, and a 304 when the
//! client's own validators match (RFC 9111 §4.3.2). The hit path lives here, so it does no
//! parsing: it clones the stored header map and adds two fields.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use super::Proxy;

use crate::body::{Body, FileBody, VerifiedFile};

use super::range::{RangeSource, Ranges, Window};

use crate::cache::disk::verified_file_body;
use crate::cache::entry::{EntryMeta, StoredBody, StoredResponse};
use crate::cache::fill::FillReader;
use crate::cache::partial::PartialEntry;
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
        stored_body(proxy, entry)
    };
    from_meta(proxy, &entry.meta, body, request, now)
}

/// A stored entry answering a Range request (RFC 9110 §14).
pub fn ranged_from_entry(
    proxy: &Proxy,
    entry: &StoredResponse,
    request: &http::request::Parts,
    now: SystemTime,
    range: &str,
) -> Response<Body> {
    let whole = from_entry(proxy, entry, request, now);
    match &entry.body {
        StoredBody::Memory(bytes) => super::range::apply(whole, RangeSource::Memory(bytes), range),
        // Windows of a sealed body can be sent from its file, as a disk body's can.
        StoredBody::Sealed(_) | StoredBody::File(_) => {
            let window = |first, last| stored_window(proxy, entry, first, last);
            let source = RangeSource::Streamed {
                len: entry.meta.body_len,
                window: &window,
            };
            super::range::apply(whole, source, range)
        }
    }
}

/// A partial entry answering a Range request it holds every byte of (RFC 9111 §3.3).
pub fn ranged_from_partial(
    proxy: &Proxy,
    entry: &PartialEntry,
    request: &http::request::Parts,
    now: SystemTime,
) -> Response<Body> {
    let whole = from_meta(proxy, &entry.meta, Body::empty(), request, now);
    let range = super::range::requested(request, &entry.meta.headers).unwrap_or_default();
    super::range::apply(whole, RangeSource::Partial(entry), &range)
}

/// What becomes of a fill's reader once the range cut from its body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterWindow {
    /// It reads on to the end in a task of its own (see [`read_on_detached`]).
    ReadsOn,
    /// It is let go: the fill goes on only for its other readers, or to the end within
    /// `unread_fill_limit`, as when a client of a whole GET hangs up.
    LetsGo,
}

/// The range asked for (one, or several in ascending order) of a body of `len` bytes that
/// a fill is fetching whole, cut from the body as it arrives (RFC 9110 §14.2, §14.6); an
/// unsatisfiable one answered 416 at once.
pub fn ranged_from_fill(
    proxy: &Proxy,
    meta: &EntryMeta,
    (reader, after): (FillReader, AfterWindow),
    (request, range): (&http::request::Parts, &str),
    len: u64,
    now: SystemTime,
) -> Response<Body> {
    let whole = from_meta(proxy, meta, Body::empty(), request, now);
    let rest: fn(FillReader) = match after {
        AfterWindow::ReadsOn => read_on_detached,
        AfterWindow::LetsGo => drop,
    };
    cut_as_it_arrives(whole, (reader, rest), len, range)
}

/// RFC 9110 §14.2: an origin's 200 of declared length that the cache does not keep (too
/// large, or not to be stored), answering a GET whose Range was not forwarded so that the
/// whole could be stored: one range (or none satisfiable) is cut from its body as it
/// arrives (several in ascending order as parts in turn), and the origin's body is let go
/// once they are sent. A client asking for two bytes of a private or oversized video
/// (Safari's first request) used to get all of it.
/// Anything else (another status, no declared length, ranges out of order, a range to
/// ignore) is left as it is.
pub fn ranged_from_relayed(response: Response<Body>, range: &str) -> Response<Body> {
    let len = match crate::cache::entry::content_length(response.headers()) {
        Some(len) if response.status() == StatusCode::OK => len,
        _ => return response,
    };
    match super::range::parse(range, len) {
        Ranges::Satisfiable(ranges) if super::range::in_order(&ranges) => {}
        Ranges::Unsatisfiable => {}
        Ranges::Satisfiable(_) | Ranges::Ignore => return response,
    }
    let (head, body) = response.into_parts();
    let whole = Response::from_parts(head, Body::empty());
    cut_as_it_arrives(whole, (body, drop), len, range)
}

/// `whole`, the head of a 200 of `len` bytes whose body is `body` read from its first
/// byte, as the answer to `range`: one range, several in ascending order (parts of a
/// `multipart/byteranges` body, RFC 9110 §14.6), or none satisfiable. The windows are cut
/// in turn as the body arrives, after which `rest` has the body.
fn cut_as_it_arrives<B>(
    whole: Response<Body>,
    (body, rest): (B, fn(B)),
    len: u64,
    range: &str,
) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    let ranges = super::range::parse(range, len);
    let cut: &[(u64, u64)] = match &ranges {
        Ranges::Satisfiable(ranges) => ranges,
        Ranges::Unsatisfiable | Ranges::Ignore => &[],
    };
    // `apply_parsed` asks for each range's window once, in order: they are cut in turn
    // from the one body.
    let windows = std::cell::RefCell::new(Window::in_turn(body, cut, rest).into_iter());
    let window = |_first, _last| match windows.borrow_mut().next() {
        Some(window) => Body::boxed(window),
        None => Body::empty(),
    };
    let source = RangeSource::Streamed {
        len,
        window: &window,
    };
    super::range::apply_parsed(whole, source, ranges)
}

/// Reads the rest of a fill and drops it, in a task of its own: the fill then counts a
/// reader to its end, so it is neither abandoned as unread nor held to the unread timeout
/// while a slow origin sends the rest of an object a range was cut from.
fn read_on_detached(mut reader: FillReader) {
    use http_body_util::BodyExt;
    tokio::spawn(async move { while let Some(Ok(_)) = reader.frame().await {} });
}

/// The whole body of a stored entry.
pub fn stored_body(proxy: &Proxy, entry: &StoredResponse) -> Body {
    stored_window(proxy, entry, 0, u64::MAX)
}

/// Bytes `first..=last` of a stored entry's body. A body kept in a disk-tier file is
/// verified as it streams; a corrupt one aborts the response and is removed. A sealed
/// memory body goes out as a window of its file, which the connection sends with
/// sendfile when it can and otherwise takes as a slice of the body.
pub fn stored_window(proxy: &Proxy, entry: &StoredResponse, first: u64, last: u64) -> Body {
    // A body in memory is measured as held, so a slice can never run past it.
    let len = entry
        .body
        .as_bytes()
        .map_or(entry.meta.body_len, |bytes| bytes.len() as u64);
    if first >= len {
        return Body::empty();
    }
    let end = last.min(len - 1);
    match &entry.body {
        StoredBody::Memory(bytes) => Body::full(bytes.slice(first as usize..=end as usize)),
        StoredBody::Sealed(sealed) => {
            let file: Arc<dyn VerifiedFile> = sealed.clone();
            Body::File(Box::new(FileBody::new(file, first, end - first + 1)))
        }
        StoredBody::File(file) => {
            let digest = entry.meta.body_digest;
            let disk = proxy.cache.live_disk();
            // Served from memory, which holds only where the body is: the disk tier's
            // recency must still see the use, or it would evict a hot body's file.
            if let Some(disk) = disk {
                disk.touch_later(entry.meta.key, entry.meta.variant);
            }
            let opened_bodies = disk.and_then(|disk| disk.sendfile_bodies());
            if let Some(bodies) = opened_bodies {
                if let Some(opened) = bodies.get(&digest, len) {
                    return Body::File(Box::new(FileBody::new(opened, first, end - first + 1)));
                }
                // The read below keeps the file once it has verified all of it; a window
                // of a body with per-block digests never reads it all.
                if file.blocks.is_some() && (first > 0 || end + 1 < len) {
                    bodies.verify_later(digest, len, file.path.clone());
                }
            }
            verified_file_body(
                file,
                len,
                digest,
                (first, end),
                proxy.cache.corruption_hook(&entry.meta),
                opened_bodies.cloned(),
            )
        }
    }
}

/// Serves a response described by `meta` with `body` (stored bytes or a fill's stream).
pub fn from_meta(
    proxy: &Proxy,
    meta: &EntryMeta,
    body: Body,
    request: &http::request::Parts,
    now: SystemTime,
) -> Response<Body> {
    let age = age_value(meta.freshness.current_age(now).as_secs());
    if meta.status == StatusCode::OK
        && policy::is_not_modified(
            &request.headers,
            &meta.headers,
            meta.freshness.response_time,
            now,
        )
    {
        let mut headers = HeaderMap::with_capacity(NOT_MODIFIED_FIELDS.len() + 3);
        for name in NOT_MODIFIED_FIELDS {
            for value in meta.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let via = proxy.via_for(meta.received);
        return finish(StatusCode::NOT_MODIFIED, headers, (age, via), Body::empty());
    }
    let body = if request.method == Method::HEAD {
        Body::empty()
    } else {
        body
    };
    let mut headers = meta.headers.clone();
    if proxy.mirror.is_some() {
        // Only the mirror's rewritten documents carry it; nobody else pays the lookup.
        headers.remove(policy::ORIGIN_ETAG);
    }
    let via = proxy.via_for(meta.received);
    finish(meta.status, headers, (age, via), body)
}

/// RFC 9111 §5.1: `Age` in seconds. Copied once from the digits into the value (`From<u64>`
/// allocates twice: a buffer sized for any u64, then its share when frozen).
fn age_value(seconds: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    HeaderValue::from_bytes(digits.format(seconds).as_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn finish(
    status: StatusCode,
    mut headers: HeaderMap,
    (age, via): (HeaderValue, &HeaderValue),
    body: Body,
) -> Response<Body> {
    headers.insert(header::AGE, age);
    headers.append(header::VIA, via.clone());
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

/// A site that is HTTPS only: 308 (method and body kept, RFC 9110 §15.4.9) to the same
/// host and target over https, on `https_port` unless it is 443.
pub fn redirect_to_https(
    host: Option<&str>,
    request: &http::request::Parts,
    https_port: Option<u16>,
) -> Response<Body> {
    let host = host.unwrap_or("");
    // The host without its cleartext port (an IPv6 literal keeps its brackets).
    let name = match host.rsplit_once(':') {
        Some((name, port))
            if !name.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && !host.ends_with(']') =>
        {
            name
        }
        _ => host,
    };
    let port = match https_port {
        Some(443) | None => String::new(),
        Some(port) => format!(":{port}"),
    };
    let target = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = format!("https://{name}{port}{target}");
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Offline mode and nothing suitable stored: the origin is not asked.
pub fn gateway_timeout_offline() -> Response<Body> {
    gateway_timeout("504 Gateway Timeout: offline mode and not cached\n")
}

/// RFC 9111 §5.2.1.7: `only-if-cached` with nothing suitable stored.
pub fn gateway_timeout_only_if_cached() -> Response<Body> {
    gateway_timeout("504 Gateway Timeout: only-if-cached and not cached\n")
}

fn gateway_timeout(text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(text));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
