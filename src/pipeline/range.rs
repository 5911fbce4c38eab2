//! Range requests answered from a stored body (RFC 9110 §14): one range as 206 with
//! Content-Range, several as `multipart/byteranges`, none satisfiable as 416, and `If-Range`
//! deciding between the range and the whole representation.
//!
//! Only stored identity representations are ranged, or the ranges of a body a fill is
//! storing (one, or several in ascending order), cut from it as it arrives ([`Window`]); a
//! Range the cache cannot serve this way is ignored (RFC 9110 §14.2 lets a server send the
//! whole 200). Finding the entry is the
//! lookup's business.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use parking_lot::Mutex;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::cache::partial::PartialEntry;
use crate::transform::compress::AcceptEncoding;

/// More ranges than this in one request are ignored (a whole 200 instead): many tiny
/// ranges cost more to send than the representation.
const MAX_RANGES: usize = 16;

/// What a Range header asks of a representation of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    /// Absent, not bytes, malformed or too many: send the whole representation.
    Ignore,
    /// Inclusive byte positions, in request order.
    Satisfiable(Vec<(u64, u64)>),
    /// Well-formed but nothing overlaps the representation: 416.
    Unsatisfiable,
}

/// RFC 9110 §14.1.2 byte ranges: `first-last`, `first-`, `-suffix`.
pub fn parse(value: &str, len: u64) -> Ranges {
    // Range unit names are case-insensitive (RFC 9110 §14.1).
    let Some(specs) = value
        .trim()
        .split_once('=')
        .filter(|(unit, _)| unit.eq_ignore_ascii_case("bytes"))
        .map(|(_, specs)| specs)
    else {
        return Ranges::Ignore;
    };
    let mut ranges = Vec::new();
    for spec in specs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Ignore;
        };
        let number = |text: &str| -> Option<u64> {
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse().ok())?
        };
        let range = match (first.trim(), last.trim()) {
            ("", suffix) => {
                let Some(suffix) = number(suffix) else {
                    return Ranges::Ignore;
                };
                if suffix == 0 || len == 0 {
                    None
                } else {
                    Some((len.saturating_sub(suffix), len - 1))
                }
            }
            (first, "") => {
                let Some(first) = number(first) else {
                    return Ranges::Ignore;
                };
                (first < len).then(|| (first, len - 1))
            }
            (first, last) => {
                let (Some(first), Some(last)) = (number(first), number(last)) else {
                    return Ranges::Ignore;
                };
                if last < first {
                    return Ranges::Ignore;
                }
                (first < len).then(|| (first, last.min(len - 1)))
            }
        };
        if let Some(range) = range {
            ranges.push(range);
        }
        if ranges.len() > MAX_RANGES {
            return Ranges::Ignore;
        }
    }
    if ranges.is_empty() {
        Ranges::Unsatisfiable
    } else {
        Ranges::Satisfiable(coalesce(ranges))
    }
}

/// Ranges closer than this are sent as one: a part's own head costs about as much.
const MIN_GAP: u64 = 80;

/// RFC 9110 §14.2: overlapping ranges, or ranges separated by less than a part's overhead,
/// are coalesced (sorted, merged), so the bytes sent never exceed the representation plus
/// multipart overhead however the request repeats itself (`bytes=0-,0-,0-,...`). Disjoint,
/// well-separated ranges keep the order they were asked in (§14.6).
fn coalesce(ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut sorted = ranges.clone();
    sorted.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (first, last) in sorted {
        match merged.last_mut() {
            Some(previous) if first <= previous.1.saturating_add(MIN_GAP) => {
                previous.1 = previous.1.max(last);
            }
            _ => merged.push((first, last)),
        }
    }
    if merged.len() == ranges.len() {
        ranges
    } else {
        merged
    }
}

/// RFC 9110 §13.1.5: whether `If-Range` (if present) lets the range be served. An entity
/// tag must match strongly; a date must equal Last-Modified exactly.
pub fn if_range_allows(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(condition) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let condition = condition.trim();
    if condition.starts_with('"') || condition.starts_with("W/") {
        let etag = stored
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        return !condition.starts_with("W/")
            && etag.is_some_and(|tag| !tag.starts_with("W/") && tag == condition);
    }
    let last_modified = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok());
    match (
        httpdate::parse_http_date(condition),
        last_modified.map(|lm| httpdate::parse_http_date(lm.trim())),
    ) {
        (Ok(date), Some(Ok(modified))) => date == modified,
        _ => false,
    }
}

/// The Range to serve from a stored representation, if this request has one that the
/// cache answers: a GET whose If-Range (if any) holds for `stored`, and whose client takes
/// the stored content coding (a range of an origin's gzip is no use to a client that must
/// have it decoded; RFC 9110 §14.2 lets us send the whole, decoded, instead), of a
/// representation whose origin did not say `Accept-Ranges: none` (RFC 9110 §14.3; the
/// field goes to clients as the origin sent it, so ranges served anyway would contradict
/// it, and nginx by default honours it too).
pub fn requested(parts: &http::request::Parts, stored: &HeaderMap) -> Option<String> {
    if parts.method != http::Method::GET || crate::cache::entry::refuses_ranges(stored) {
        return None;
    }
    let range = parts.headers.get(header::RANGE)?.to_str().ok()?;
    let coding = stored
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|coding| !coding.eq_ignore_ascii_case("identity"));
    let takes_coding =
        coding.is_none_or(|coding| AcceptEncoding::parse(&parts.headers).accepts(coding));
    (takes_coding && if_range_allows(&parts.headers, stored)).then(|| range.to_string())
}

/// RFC 9111 §3.3: whether the partial `entry` can answer the request's Range: it holds
/// every byte asked for, or knows that none of them exist (416).
pub fn partial_answers(entry: &PartialEntry, parts: &http::request::Parts) -> bool {
    let Some(range) = requested(parts, &entry.meta.headers) else {
        return false;
    };
    match parse(&range, entry.complete_len()) {
        Ranges::Ignore => false,
        Ranges::Unsatisfiable => true,
        Ranges::Satisfiable(ranges) => ranges
            .iter()
            .all(|&(first, last)| entry.window(first, last).is_some()),
    }
}

/// Whether a Range miss is forwarded with its Range instead of fetching the whole
/// representation: one range, and no If-Range (which may ask for the whole); and either
/// the range starts past `max_offset` (a suffix range when the length is not known), or
/// pieces of the representation are `held` already (the missing piece is fetched to
/// combine with them, RFC 9111 §3.4) and the range ends before the end. One that starts
/// early and runs to the end is read whole as a GET would be, so the whole object is
/// fetched and stored: forwarded, a piece larger than the partial store takes would be
/// relayed unkept (Safari asks `bytes=0-1`, which leaves a piece, then for the whole
/// video by range). So is one that runs to the end from inside a prefix the whole can
/// start from (`curl -C -` after a download that stopped): the origin is asked only for
/// what the prefix lacks.
pub fn forwards(parts: &http::request::Parts, held: Option<Held>, max_offset: u64) -> bool {
    if parts.method != http::Method::GET || parts.headers.contains_key(header::IF_RANGE) {
        return false;
    }
    let Some(range) = parts
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    match parse(range, held.map_or(u64::MAX, |held| held.len)) {
        Ranges::Satisfiable(ranges) => match (&ranges[..], held) {
            (&[(first, _)], None) => first > max_offset,
            // Running to the end from inside a prefix the whole could start from: the
            // fetch asks for the rest past the prefix alone, and stores the whole.
            (&[(first, last)], Some(held))
                if last + 1 == held.len && first < held.completable_prefix =>
            {
                false
            }
            (&[(first, last)], Some(held)) => first > max_offset || last + 1 < held.len,
            _ => false,
        },
        Ranges::Ignore | Ranges::Unsatisfiable => false,
    }
}

/// What a partial entry holds of the representation a Range miss asks for.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    /// The representation's length.
    pub len: u64,
    /// Its [`PartialEntry::completable_prefix`].
    pub completable_prefix: u64,
}

impl Held {
    /// What `entry` holds.
    pub fn of(entry: &PartialEntry) -> Held {
        Held {
            len: entry.complete_len(),
            completable_prefix: entry.completable_prefix(),
        }
    }
}

/// The stored body a range is cut from.
pub enum RangeSource<'a> {
    Memory(&'a Bytes),
    /// The pieces of a partial entry: every range asked for is inside one
    /// ([`partial_answers`]).
    Partial(&'a PartialEntry),
    /// A body of `len` bytes read through `window(first, last)`.
    Streamed {
        len: u64,
        window: &'a dyn Fn(u64, u64) -> Body,
    },
}

impl RangeSource<'_> {
    fn len(&self) -> u64 {
        match self {
            RangeSource::Memory(body) => body.len() as u64,
            RangeSource::Partial(entry) => entry.complete_len(),
            RangeSource::Streamed { len, .. } => *len,
        }
    }

    /// Bytes `first..=last`: a slice of a memory body (no copy), or a verified window of a
    /// file.
    fn part(&self, first: u64, last: u64) -> Body {
        match self {
            RangeSource::Memory(body) => Body::full(body.slice(first as usize..=last as usize)),
            // Held: checked on this same entry before it was chosen. Were it not, the body
            // would fall short of its Content-Length and hyper would abort the response.
            RangeSource::Partial(entry) => {
                Body::full(entry.window(first, last).unwrap_or_default())
            }
            RangeSource::Streamed { window, .. } => window(first, last),
        }
    }
}

/// Turns a whole 200 `response` built from `source` into the answer to `range`.
pub fn apply(response: Response<Body>, source: RangeSource<'_>, range: &str) -> Response<Body> {
    let ranges = parse(range, source.len());
    apply_parsed(response, source, ranges)
}

/// [`apply`] with the Range already parsed against `source`'s length.
pub fn apply_parsed(
    mut response: Response<Body>,
    source: RangeSource<'_>,
    ranges: Ranges,
) -> Response<Body> {
    if response.status() != StatusCode::OK {
        return response;
    }
    let len = source.len();
    response
        .headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    match ranges {
        Ranges::Ignore => response,
        Ranges::Unsatisfiable => {
            let headers = response.headers_mut();
            // No content goes with the 416, so no coding either: decoders in clients
            // (httpx, for one) fail on an empty body said to be gzip.
            headers.remove(header::CONTENT_ENCODING);
            headers.insert(header::CONTENT_RANGE, value(&format!("bytes */{len}")));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            *response.body_mut() = Body::empty();
            response
        }
        Ranges::Satisfiable(ranges) if ranges.len() == 1 => {
            let (first, last) = ranges[0];
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_RANGE,
                value(&format!("bytes {first}-{last}/{len}")),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            *response.body_mut() = source.part(first, last);
            response
        }
        Ranges::Satisfiable(ranges) => multipart(response, &source, &ranges),
    }
}

/// RFC 9110 §14.6: several ranges as multipart/byteranges, each part with its own
/// Content-Range; parts are slices or verified file windows, never copies.
fn multipart(
    mut response: Response<Body>,
    source: &RangeSource<'_>,
    ranges: &[(u64, u64)],
) -> Response<Body> {
    let len = source.len();
    let boundary = format!("outpost-{:016x}", fnv(len, ranges));
    let content_type = response.headers_mut().remove(header::CONTENT_TYPE);
    let part_head = |first: u64, last: u64| {
        let mut head = format!("\r\n--{boundary}\r\n");
        if let Some(content_type) = content_type.as_ref().and_then(|v| v.to_str().ok()) {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        head.push_str(&format!(
            "Content-Range: bytes {first}-{last}/{len}\r\n\r\n"
        ));
        head
    };
    let tail = format!("\r\n--{boundary}--\r\n");
    let mut parts = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut total = tail.len() as u64;
    for (index, &(first, last)) in ranges.iter().enumerate() {
        let head = part_head(first, last);
        total += head.len() as u64 + (last - first + 1);
        let part = source.part(first, last);
        if index == 0 {
            parts.push(Body::read_first(part, Body::full(head)));
        } else {
            parts.push(Body::full(head));
            parts.push(part);
        }
    }
    parts.push(Body::full(tail));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        value(&format!("multipart/byteranges; boundary={boundary}")),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    *response.body_mut() = Body::chain(parts);
    response
}

fn value(text: &str) -> HeaderValue {
    // invariant: built from digits, `bytes`, `/`, `-`, `*` and a hex boundary.
    HeaderValue::from_str(text).expect("ASCII header value")
}

fn fnv(seed: u64, ranges: &[(u64, u64)]) -> u64 {
    ranges
        .iter()
        .fold(seed ^ 0xcbf2_9ce4_8422_2325, |hash, (a, b)| {
            (hash ^ a.wrapping_mul(31) ^ b).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Bytes `first..=last` of `body`, which is read from its start: what comes before the
/// window is read and dropped. Once the window is sent, the body is handed to `rest` (a
/// fill's reader goes on reading, as the client would have), or to the next window cut
/// from it ([`Window::in_turn`]). A body that ends before the window does is an error, so
/// a response never falls short of its Content-Length quietly.
pub struct Window<B> {
    /// The body once this window has it (the first window has it from the start).
    body: Option<B>,
    /// Bytes read from the body past the window before: the start of this one's input.
    read_ahead: Option<Bytes>,
    /// Where the windows cut in turn from one body pass it on, with what was read past
    /// the window: taken from at the first poll by all but the first, put into when done
    /// by all but the last.
    baton: Option<Baton<B>>,
    /// Whether the next window takes the body from `baton` once this one is sent.
    passes_on: bool,
    skip: u64,
    remaining: u64,
    rest: fn(B),
}

type Baton<B> = Arc<Mutex<Option<(B, Option<Bytes>)>>>;

impl<B> Window<B> {
    pub fn new(body: B, (first, last): (u64, u64), rest: fn(B)) -> Window<B> {
        Window {
            body: Some(body),
            read_ahead: None,
            baton: None,
            passes_on: false,
            skip: first,
            remaining: last.saturating_sub(first) + 1,
            rest,
        }
    }

    /// Windows for `ranges` (ascending and disjoint, as [`in_order`] says) cut in turn
    /// from one `body` read once from its start: each goes on from where the one before
    /// stopped, and the last hands the body to `rest`. They must be read in order (the
    /// parts of one multipart body are).
    pub fn in_turn(body: B, ranges: &[(u64, u64)], rest: fn(B)) -> Vec<Window<B>> {
        let baton = Arc::new(Mutex::new(None));
        let mut body = Some(body);
        let mut read_to = 0;
        let mut windows = Vec::with_capacity(ranges.len());
        for (index, &(first, last)) in ranges.iter().enumerate() {
            windows.push(Window {
                body: body.take(),
                read_ahead: None,
                baton: Some(Arc::clone(&baton)),
                passes_on: index + 1 < ranges.len(),
                skip: first.saturating_sub(read_to),
                remaining: last.saturating_sub(first) + 1,
                rest,
            });
            read_to = last + 1;
        }
        windows
    }
}

/// Whether `ranges` ascend without overlapping: then they can be cut in turn from a body
/// as it arrives ([`Window::in_turn`]).
pub fn in_order(ranges: &[(u64, u64)]) -> bool {
    ranges.windows(2).all(|pair| pair[0].1 < pair[1].0)
}

impl<B> http_body::Body for Window<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.body.is_none() && this.remaining > 0 {
            match this.baton.as_ref().and_then(|baton| baton.lock().take()) {
                Some((body, read_ahead)) => (this.body, this.read_ahead) = (Some(body), read_ahead),
                None => {
                    // The window before this one failed, or was dropped unread.
                    this.remaining = 0;
                    let why = "the body went with an earlier range";
                    return Poll::Ready(Some(Err(why.into())));
                }
            }
        }
        loop {
            if this.remaining == 0 {
                if let Some(body) = this.body.take() {
                    match this.baton.take().filter(|_| this.passes_on) {
                        Some(baton) => *baton.lock() = Some((body, this.read_ahead.take())),
                        None => (this.rest)(body),
                    }
                }
                return Poll::Ready(None);
            }
            let data = match this.read_ahead.take() {
                Some(data) => data,
                None => {
                    let Some(body) = this.body.as_mut() else {
                        return Poll::Ready(None);
                    };
                    let frame = match ready!(Pin::new(body).poll_frame(cx)) {
                        Some(Ok(frame)) => frame,
                        Some(Err(err)) => {
                            this.body = None;
                            return Poll::Ready(Some(Err(err.into())));
                        }
                        None => {
                            this.body = None;
                            let why = "the body ended before the range cut from it";
                            return Poll::Ready(Some(Err(why.into())));
                        }
                    };
                    // Trailers are no part of a range.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    data
                }
            };
            let len = data.len() as u64;
            if this.skip >= len {
                this.skip -= len;
                continue;
            }
            let start = this.skip;
            this.skip = 0;
            let end = len.min(start + this.remaining);
            this.remaining -= end - start;
            // invariant: start < end <= len, a chunk's length, so both fit a usize.
            if end < len && this.passes_on {
                this.read_ahead = Some(data.slice(end as usize..));
            }
            return Poll::Ready(Some(Ok(Frame::data(
                data.slice(start as usize..end as usize),
            ))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of `chunks` as they would arrive, then an end (or `breaks`: an error).
    fn arriving(chunks: &[&'static [u8]], breaks: bool) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|chunk| Ok(Frame::data(Bytes::from_static(chunk))))
            .collect();
        if breaks {
            frames.push(Err("the origin broke off".into()));
        }
        Body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    /// A window is cut across chunk boundaries, the body goes to `rest` once the window is
    /// sent, and a body ending (or failing) inside the window fails the window.
    #[tokio::test]
    async fn a_window_is_cut_from_a_body_as_it_arrives() {
        use http_body_util::BodyExt;
        use std::sync::atomic::{AtomicUsize, Ordering};
        static HANDED_ON: AtomicUsize = AtomicUsize::new(0);
        let chunks: &[&'static [u8]] = &[b"0123", b"4567", b"89ab"];
        let cut = |first, last, breaks| {
            Window::new(arriving(chunks, breaks), (first, last), |_| {
                HANDED_ON.fetch_add(1, Ordering::SeqCst);
            })
        };
        for ((first, last), want) in [
            ((0, 0), &b"0"[..]),
            ((2, 9), b"23456789"),
            ((4, 7), b"4567"),
            ((11, 11), b"b"),
            ((0, 11), b"0123456789ab"),
        ] {
            let body = cut(first, last, true).collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], want, "{first}-{last}");
        }
        assert_eq!(HANDED_ON.load(Ordering::SeqCst), 5);
        assert!(cut(10, 12, false).collect().await.is_err(), "ends short");
        assert!(cut(10, 12, true).collect().await.is_err(), "breaks off");
        assert_eq!(HANDED_ON.load(Ordering::SeqCst), 5);
    }

    /// RFC 9110 §14.6: windows cut in turn from one body go on where the one before
    /// stopped, inside a chunk or across chunks; the last hands the body on; a body that
    /// breaks off fails the window it breaks in and every one after.
    #[tokio::test]
    async fn windows_in_turn_share_one_reading_of_the_body() {
        use http_body_util::BodyExt;
        use std::sync::atomic::{AtomicUsize, Ordering};
        static HANDED_ON: AtomicUsize = AtomicUsize::new(0);
        let chunks: &[&'static [u8]] = &[b"0123", b"4567", b"89ab"];
        let in_turn = |ranges: &[(u64, u64)], breaks| {
            Window::in_turn(arriving(chunks, breaks), ranges, |_| {
                HANDED_ON.fetch_add(1, Ordering::SeqCst);
            })
        };
        for (ranges, want) in [
            (
                &[(0, 0), (2, 2), (3, 5)][..],
                &[&b"0"[..], b"2", b"345"][..],
            ),
            (&[(1, 1), (9, 11)], &[b"1", b"9ab"]),
            (&[(0, 3), (4, 7), (8, 11)], &[b"0123", b"4567", b"89ab"]),
        ] {
            let mut got = Vec::new();
            for window in in_turn(ranges, false) {
                got.push(window.collect().await.unwrap().to_bytes());
            }
            assert_eq!(
                got,
                want.iter()
                    .map(|w| Bytes::from_static(w))
                    .collect::<Vec<_>>()
            );
        }
        assert_eq!(HANDED_ON.load(Ordering::SeqCst), 3);
        let mut windows = in_turn(&[(0, 1), (10, 12), (13, 13)], false).into_iter();
        assert_eq!(
            windows.next().unwrap().collect().await.unwrap().to_bytes(),
            &b"01"[..]
        );
        assert!(
            windows.next().unwrap().collect().await.is_err(),
            "ends short"
        );
        assert!(
            windows.next().unwrap().collect().await.is_err(),
            "nothing left"
        );
        assert_eq!(HANDED_ON.load(Ordering::SeqCst), 3);
        assert!(in_order(&[(0, 1), (2, 3)]) && !in_order(&[(2, 3), (0, 1)]));
        assert!(!in_order(&[(0, 5), (5, 6)]), "overlapping");
    }

    /// RFC 9110 §14.1.2 examples and edge cases.
    #[test]
    fn parses_byte_ranges() {
        assert_eq!(
            parse("bytes=0-499", 10_000),
            Ranges::Satisfiable(vec![(0, 499)])
        );
        assert_eq!(
            parse("bytes=9500-", 10_000),
            Ranges::Satisfiable(vec![(9500, 9999)])
        );
        assert_eq!(
            parse("bytes=-500", 10_000),
            Ranges::Satisfiable(vec![(9500, 9999)])
        );
        assert_eq!(
            parse("bytes=-20000", 100),
            Ranges::Satisfiable(vec![(0, 99)])
        );
        assert_eq!(
            parse("bytes=0-0,-1", 1000),
            Ranges::Satisfiable(vec![(0, 0), (999, 999)])
        );
        assert_eq!(parse("bytes=5-100", 10), Ranges::Satisfiable(vec![(5, 9)]));
        assert_eq!(parse("bytes=10-20", 10), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 10), Ranges::Unsatisfiable);
        // RFC 9110 §14.1: the unit is case-insensitive; other units are ignored (below).
        assert_eq!(parse("Bytes=0-1", 10), Ranges::Satisfiable(vec![(0, 1)]));
        assert_eq!(parse("bytes=5-1", 10), Ranges::Ignore);
        assert_eq!(parse("items=0-1", 10), Ranges::Ignore);
        assert_eq!(parse("bytes=a-b", 10), Ranges::Ignore);
    }

    /// RFC 9110 §14.2: overlapping or nearly adjacent ranges are coalesced; disjoint ones
    /// keep the request's order.
    #[test]
    fn overlapping_ranges_are_coalesced() {
        let len = 32 << 20;
        let repeated = format!("bytes={}", vec!["0-"; 16].join(","));
        assert_eq!(
            parse(&repeated, len),
            Ranges::Satisfiable(vec![(0, len - 1)])
        );
        assert_eq!(
            parse("bytes=500-999,0-499,-10", 10_000),
            Ranges::Satisfiable(vec![(0, 999), (9990, 9999)])
        );
        assert_eq!(
            parse("bytes=5000-5009,0-9", 10_000),
            Ranges::Satisfiable(vec![(5000, 5009), (0, 9)])
        );
        assert_eq!(
            parse("bytes=0-9,50-59", 10_000),
            Ranges::Satisfiable(vec![(0, 59)])
        );
        assert_eq!(
            parse(&format!("bytes={}", vec!["1-1"; 17].join(",")), 10),
            Ranges::Ignore
        );
    }

    /// RFC 9110 §13.1.5: strong ETag match or exact date.
    #[test]
    fn if_range_needs_a_strong_match() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        stored.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Wed, 01 Jan 2025 00:00:00 GMT"),
        );
        let ask = |value: &'static str| {
            let mut request = HeaderMap::new();
            request.insert(header::IF_RANGE, HeaderValue::from_static(value));
            if_range_allows(&request, &stored)
        };
        assert!(ask("\"v1\""));
        assert!(!ask("W/\"v1\""));
        assert!(!ask("\"v2\""));
        assert!(ask("Wed, 01 Jan 2025 00:00:00 GMT"));
        assert!(!ask("Thu, 02 Jan 2025 00:00:00 GMT"));
        assert!(if_range_allows(&HeaderMap::new(), &stored));
    }
}
