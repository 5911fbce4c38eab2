//! Test support: an in-process origin with named routes and misbehaving fixtures, a raw-TCP
//! origin for protocol abuse, an in-process outpost, and a real HTTP client.
//!
//! Everything binds `127.0.0.1:0`, so tests run in parallel; nothing sleeps to synchronise:
//! fixtures signal through `Notify`/channels what they have seen.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use outpost::body::Body;
use outpost::config::FlagOverrides;
use outpost::{Config, Outpost};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

/// Upper bound for anything a test waits on: a hang fails the test instead of the run.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What the origin saw of one request.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// Counts origin response bodies open at once, and the most ever open together.
#[derive(Clone, Default)]
pub struct OpenBodies(
    Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
);

/// One open body; closes it when dropped.
pub struct OpenBody(OpenBodies);

impl OpenBodies {
    pub fn now(&self) -> usize {
        self.0 .0.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn peak(&self) -> usize {
        self.0 .1.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn opened(&self) -> OpenBody {
        let now = self.0 .0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.0
             .1
            .fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        OpenBody(self.clone())
    }
}

impl Drop for OpenBody {
    fn drop(&mut self) {
        self.0
             .0
             .0
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reads `body` until at least `at_least` bytes have come (data frames only), and says how
/// many did; the rest is left to read.
pub async fn read_at_least(body: &mut hyper::body::Incoming, at_least: usize) -> usize {
    let mut read = 0;
    while read < at_least {
        let frame = body.frame().await.expect("a frame").expect("a good frame");
        read += frame.data_ref().map_or(0, Bytes::len);
    }
    read
}

/// A client that asks for `path` on a connection whose receive buffer is a few KiB (so
/// the kernel does not read on for it), reads the response head and then stops reading.
pub async fn stalled_client(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    stalled_client_with(addr, path, "").await
}

/// [`stalled_client`] whose request carries `fields` (whole lines, each ending in CRLF).
pub async fn stalled_client_with(
    addr: std::net::SocketAddr,
    path: &str,
    fields: &str,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    // The Host a client given the proxy's URL sends: the same cache key as theirs.
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{fields}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Waits until `condition` holds, looking again every millisecond; fails the test after
/// [`PATIENCE`]. For states a test observes but cannot be notified of.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// GETs `url` (with `headers`) until the proxy's `count` of some way of sending hits has
/// risen (`what` names it for a timeout); every body on the way must be `body`.
pub async fn until_hit_counted(
    proxy: &Proxy,
    (url, headers): (&str, &[(&str, &str)]),
    body: &Bytes,
    what: &str,
    count: fn(&outpost::telemetry::metrics::Metrics) -> u64,
) {
    let metrics = Arc::clone(proxy.outpost.proxy().metrics());
    let before = count(&metrics);
    eventually_some(what, || async {
        assert!(get(url, headers).await.body == *body);
        (count(&metrics) > before).then_some(())
    })
    .await;
}

/// As [`eventually`], for a check that awaits (a scrape, a request): retries `attempt`
/// until it gives a value, and returns it.
pub async fn eventually_some<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A sticky gate: requests wait at it until it is opened; it stays open until closed.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    pub fn closed() -> Gate {
        Gate(Arc::new(watch::channel(false).0))
    }
    pub fn open(&self) {
        self.0.send_replace(true);
    }
    pub fn close(&self) {
        self.0.send_replace(false);
    }
    async fn pass(&self) {
        let mut receiver = self.0.subscribe();
        let _ = receiver.wait_for(|open| *open).await;
    }
}

pub type HeaderList = Vec<(&'static str, String)>;

pub fn header_list(pairs: &[(&'static str, &str)]) -> HeaderList {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// A Cache-Control field alone.
pub fn cc(value: &str) -> HeaderList {
    header_list(&[("cache-control", value)])
}

/// A 200 with `headers` and `body`.
pub fn fixed(headers: &[(&'static str, &str)], body: &str) -> Fixture {
    Fixture::with_headers(200, headers, body)
}

/// Named behaviours of an origin route.
#[derive(Clone)]
pub enum Fixture {
    /// A fixed response.
    Static {
        status: StatusCode,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    },
    /// Waits for `release` to be notified, then answers 200 with `body`.
    Gated { release: Arc<Notify>, body: Bytes },
    /// Reads the request, then never answers.
    Stall,
    /// `size` bytes of a repeating pattern, generated chunk by chunk; `dropped` is notified
    /// when the body is dropped (finished or abandoned).
    Stream { size: u64, dropped: Arc<Notify> },
    /// As `Stream`, chunked (no Content-Length), as compressible `text/plain` stored for a
    /// minute; `sent` counts the bytes produced.
    ChunkedText {
        size: u64,
        dropped: Arc<Notify>,
        sent: Arc<std::sync::atomic::AtomicU64>,
    },
    /// Reads the whole request body and answers with its length in bytes.
    CountBody,
    /// Reads the request's body; 200 whose body lists its trailer fields, one
    /// `name: value` line each, sorted.
    RequestTrailers,
    /// 200 with `headers` and `body` sent in 16 KiB pieces without a Content-Length
    /// (chunked, RFC 9112 §7.1).
    Chunked { headers: HeaderList, body: Bytes },
    /// Waits at `gate`, then answers 200 with `headers` and `body`.
    GatedWith {
        gate: Gate,
        headers: HeaderList,
        body: Bytes,
    },
    /// 200 with `headers` (which should include the ETag) and `body`, or 304 with
    /// `not_modified_headers` when If-None-Match carries `etag`.
    Validated {
        etag: &'static str,
        headers: HeaderList,
        body: Bytes,
        not_modified_headers: HeaderList,
    },
    /// 200 whose body is the request's `name` field ("-" when absent), with `headers`.
    Echo {
        name: &'static str,
        headers: HeaderList,
    },
    /// 200 with `headers` and a Content-Length for `first` + `rest`: sends `first`, waits
    /// at `gate`, then sends `rest`.
    Halves {
        headers: HeaderList,
        first: Bytes,
        gate: Gate,
        rest: Bytes,
    },
    /// As `Halves`, without a Content-Length: the body is sent chunked.
    ChunkedHalves {
        headers: HeaderList,
        first: Bytes,
        gate: Gate,
        rest: Bytes,
    },
    /// 200 declaring `declared` bytes of Content-Length: sends `first`, waits at `gate`, then
    /// fails the body (the connection is aborted mid-body).
    FailsAfter {
        headers: HeaderList,
        first: Bytes,
        declared: usize,
        gate: Gate,
    },
    /// 200 declaring `declared` bytes of Content-Length: sends `first`, then nothing more
    /// until outpost lets go of the body; `open` counts such bodies open at once. `headers`
    /// are added to a `max-age=600` head.
    Held {
        first: Bytes,
        declared: usize,
        open: OpenBodies,
        headers: HeaderList,
    },
    /// A representation that honours a one-range request (`bytes=a-b`, `a-`, `-n`) with 206
    /// and Content-Range; anything else gets the whole 200, as does a Range whose If-Range
    /// does not name the ETag among `headers`. `headers` go on both. An If-None-Match naming
    /// that ETag gets 304 with them first (RFC 9110 §13.2.2: preconditions before Range).
    Ranged { headers: HeaderList, body: Bytes },
    /// As `Ranged`, with a 206's body sent in two halves: the second once `gate` is open.
    RangedHalves {
        headers: HeaderList,
        body: Bytes,
        gate: Gate,
    },
    /// 200 with `headers` and `body` while `healthy` holds, else 503 with them.
    Switch {
        healthy: Arc<std::sync::atomic::AtomicBool>,
        headers: HeaderList,
        body: Bytes,
    },
    /// 200 with `headers` and `body`, then `trailers` in a trailer section (as gRPC ends
    /// every response with its status).
    Trailers {
        headers: HeaderList,
        body: Bytes,
        trailers: HeaderList,
    },
    /// The n-th request gets the n-th fixture; the last one repeats.
    Sequence(Arc<Vec<Fixture>>, Arc<std::sync::atomic::AtomicUsize>),
    /// Waits at `gate`, then answers as `then` does.
    GatedThen { gate: Gate, then: Box<Fixture> },
    /// Answers as `matched` does when the request's Accept contains `contains`, else as
    /// `otherwise` does: content negotiation with no Vary, as some registry proxies do it.
    ByAccept {
        contains: &'static str,
        matched: Box<Fixture>,
        otherwise: Box<Fixture>,
    },
}

impl Fixture {
    pub fn ok(body: &str) -> Fixture {
        Fixture::Static {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    pub fn with_headers(status: u16, headers: &[(&'static str, &str)], body: &str) -> Fixture {
        Fixture::Static {
            status: StatusCode::from_u16(status).unwrap(),
            headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            body: Bytes::from(body.to_string()),
        }
    }

    /// 200 with `body`, fresh for an hour (`max-age=3600`).
    pub fn for_an_hour(body: &str) -> Fixture {
        Fixture::with_headers(200, &[("cache-control", "max-age=3600")], body)
    }

    pub fn sequence(fixtures: Vec<Fixture>) -> Fixture {
        Fixture::Sequence(
            Arc::new(fixtures),
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        )
    }

    fn respond(
        &self,
        request: Request<Incoming>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + '_>> {
        Box::pin(self.respond_inner(request))
    }

    async fn respond_inner(&self, request: Request<Incoming>) -> Response<Body> {
        match self {
            Fixture::GatedWith {
                gate,
                headers,
                body,
            } => {
                gate.pass().await;
                with_headers(Response::builder(), headers)
                    .body(Body::full(body.clone()))
                    .unwrap()
            }
            Fixture::Validated {
                etag,
                headers,
                body,
                not_modified_headers,
            } => {
                if if_none_match_names(request.headers(), etag) {
                    with_headers(Response::builder().status(304), not_modified_headers)
                        .header("etag", *etag)
                        .body(Body::empty())
                        .unwrap()
                } else {
                    with_headers(Response::builder(), headers)
                        .header("etag", *etag)
                        .body(Body::full(body.clone()))
                        .unwrap()
                }
            }
            Fixture::Ranged { headers, body } => {
                let etag = headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("etag"));
                if etag.is_some_and(|(_, etag)| if_none_match_names(request.headers(), etag)) {
                    return with_headers(Response::builder().status(304), headers)
                        .body(Body::empty())
                        .unwrap();
                }
                let len = body.len();
                // RFC 9110 §13.1.5: the range only while If-Range names this
                // representation's (strong) entity tag; a changed one gets the whole 200.
                let if_range_holds = request.headers().get("if-range").is_none_or(|asked| {
                    etag.is_some_and(|(_, etag)| asked == etag.as_str() && !etag.starts_with("W/"))
                });
                let range = asked_range(request.headers(), len).filter(|_| if_range_holds);
                let builder = with_headers(Response::builder(), headers);
                match range {
                    Some((first, last)) => builder
                        .status(206)
                        .header("content-range", format!("bytes {first}-{last}/{len}"))
                        .body(Body::full(body.slice(first..=last)))
                        .unwrap(),
                    None => builder.body(Body::full(body.clone())).unwrap(),
                }
            }
            Fixture::RangedHalves {
                headers,
                body,
                gate,
            } => {
                let len = body.len();
                let builder = with_headers(Response::builder(), headers);
                match asked_range(request.headers(), len) {
                    Some((first, last)) => {
                        let middle = first + (last - first) / 2 + 1;
                        builder
                            .status(206)
                            .header("content-range", format!("bytes {first}-{last}/{len}"))
                            .header("content-length", last - first + 1)
                            .body(halves(
                                &body.slice(first..middle),
                                gate,
                                &body.slice(middle..=last),
                            ))
                            .unwrap()
                    }
                    None => builder.body(Body::full(body.clone())).unwrap(),
                }
            }
            Fixture::Trailers {
                headers,
                body,
                trailers,
            } => {
                let mut fields = HeaderMap::new();
                for (name, value) in trailers {
                    fields.append(*name, value.parse().unwrap());
                }
                let frames = vec![
                    Ok::<_, Infallible>(http_body::Frame::data(body.clone())),
                    Ok(http_body::Frame::trailers(fields)),
                ];
                let stream = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                with_headers(Response::builder().status(200), headers)
                    .body(Body::boxed(stream))
                    .unwrap()
            }
            Fixture::Switch {
                healthy,
                headers,
                body,
            } => {
                let status = if healthy.load(std::sync::atomic::Ordering::SeqCst) {
                    200
                } else {
                    503
                };
                with_headers(Response::builder().status(status), headers)
                    .body(Body::full(body.clone()))
                    .unwrap()
            }
            Fixture::Echo { name, headers } => {
                let value = request
                    .headers()
                    .get(*name)
                    .map_or("-".to_string(), |v| v.to_str().unwrap_or("?").to_string());
                with_headers(Response::builder(), headers)
                    .body(Body::full(value))
                    .unwrap()
            }
            Fixture::GatedThen { gate, then } => {
                gate.pass().await;
                then.respond(request).await
            }
            Fixture::ByAccept {
                contains,
                matched,
                otherwise,
            } => {
                let accept = request
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if accept.contains(*contains) {
                    matched.respond(request).await
                } else {
                    otherwise.respond(request).await
                }
            }
            Fixture::Sequence(fixtures, next) => {
                let index = next
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    .min(fixtures.len() - 1);
                fixtures[index].respond(request).await
            }
            Fixture::Static {
                status,
                headers,
                body,
            } => {
                let mut builder = Response::builder().status(*status);
                for (name, value) in headers {
                    builder = builder.header(*name, value);
                }
                builder.body(Body::full(body.clone())).unwrap()
            }
            Fixture::Chunked { headers, body } => {
                let pieces: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..body.len())
                    .step_by(16 << 10)
                    .map(|start| {
                        let end = (start + (16 << 10)).min(body.len());
                        Ok(http_body::Frame::data(body.slice(start..end)))
                    })
                    .collect();
                let stream = futures_util::stream::iter(pieces);
                with_headers(Response::builder(), headers)
                    .body(Body::boxed(http_body_util::StreamBody::new(stream)))
                    .unwrap()
            }
            Fixture::Gated { release, body } => {
                release.notified().await;
                Response::new(Body::full(body.clone()))
            }
            Fixture::Stall => std::future::pending().await,
            Fixture::Held {
                first,
                declared,
                open,
                headers,
            } => {
                let state = (Some(first.clone()), open.opened());
                let stream = futures_util::stream::unfold(state, |(first, guard)| async move {
                    match first {
                        Some(chunk) => Some((
                            Ok::<_, Infallible>(http_body::Frame::data(chunk)),
                            (None, guard),
                        )),
                        // Holds the guard until outpost drops the body.
                        None => std::future::pending().await,
                    }
                });
                let mut builder = Response::builder()
                    .header("content-length", *declared)
                    .header("cache-control", "max-age=600");
                for (name, value) in headers {
                    builder = builder.header(*name, value);
                }
                builder
                    .body(Body::boxed(http_body_util::StreamBody::new(stream)))
                    .unwrap()
            }
            Fixture::Stream { size, dropped } => stream_response(*size, Arc::clone(dropped)),
            Fixture::ChunkedText {
                size,
                dropped,
                sent,
            } => {
                let mut body = PatternBody::new(*size, Arc::clone(dropped));
                body.sent = Some(Arc::clone(sent));
                Response::builder()
                    .header("content-type", "text/plain")
                    .header("cache-control", "max-age=60")
                    .body(Body::boxed(body))
                    .unwrap()
            }
            Fixture::FailsAfter {
                headers,
                first,
                declared,
                gate,
            } => {
                let parts = (first.clone(), gate.clone());
                let stream = futures_util::stream::unfold(Some((0, parts)), |state| async move {
                    let (step, (first, gate)) = state?;
                    if step == 0 {
                        let item: Result<http_body::Frame<Bytes>, std::io::Error> =
                            Ok(http_body::Frame::data(first.clone()));
                        return Some((item, Some((1, (first, gate)))));
                    }
                    gate.pass().await;
                    Some((Err(std::io::Error::other("origin dies mid-body")), None))
                });
                with_headers(Response::builder(), headers)
                    .header("content-length", *declared)
                    .body(Body::boxed(http_body_util::StreamBody::new(stream)))
                    .unwrap()
            }
            Fixture::Halves {
                headers,
                first,
                gate,
                rest,
            } => with_headers(Response::builder(), headers)
                .header("content-length", first.len() + rest.len())
                .body(halves(first, gate, rest))
                .unwrap(),
            Fixture::ChunkedHalves {
                headers,
                first,
                gate,
                rest,
            } => with_headers(Response::builder(), headers)
                .body(halves(first, gate, rest))
                .unwrap(),
            Fixture::CountBody => {
                let mut body = request.into_body();
                let mut total: u64 = 0;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                        Err(_) => break,
                    }
                }
                Response::new(Body::full(total.to_string()))
            }
            Fixture::RequestTrailers => {
                let mut body = request.into_body();
                let mut lines = Vec::new();
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(trailers) = frame.into_trailers() {
                        for (name, value) in &trailers {
                            lines.push(format!("{name}: {}", value.to_str().unwrap_or("?")));
                        }
                    }
                }
                lines.sort();
                Response::new(Body::full(lines.join("\n")))
            }
        }
    }
}

/// The one byte range `headers` ask of a body of `len` bytes, if any (RFC 9110 §14.1.2).
fn asked_range(headers: &HeaderMap, len: usize) -> Option<(usize, usize)> {
    headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .filter(|spec| !spec.contains(','))
        .and_then(|spec| spec.split_once('-'))
        .and_then(|(first, last)| match (first, last) {
            ("", suffix) => Some((len.saturating_sub(suffix.parse().ok()?), len - 1)),
            (first, "") => Some((first.parse().ok()?, len - 1)),
            (first, last) => Some((
                first.parse().ok()?,
                last.parse::<usize>().ok()?.min(len - 1),
            )),
        })
        .filter(|(first, last)| first <= last && *last < len)
}

/// `first`, then (once `gate` is open) `rest`.
fn halves(first: &Bytes, gate: &Gate, rest: &Bytes) -> Body {
    let parts = (first.clone(), gate.clone(), rest.clone());
    let stream = futures_util::stream::unfold(Some((0, parts)), |state| async move {
        let (step, (first, gate, rest)) = state?;
        match step {
            0 => Some((first.clone(), Some((1, (first, gate, rest))))),
            _ => {
                gate.pass().await;
                Some((rest, None))
            }
        }
    });
    let frames = futures_util::StreamExt::map(stream, |chunk| {
        Ok::<_, Infallible>(http_body::Frame::data(chunk))
    });
    Body::boxed(http_body_util::StreamBody::new(frames))
}

fn with_headers(
    mut builder: http::response::Builder,
    headers: &HeaderList,
) -> http::response::Builder {
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    builder
}

/// A streaming body of a repeating pattern that notifies when dropped.
pub struct PatternBody {
    remaining: u64,
    chunk: Bytes,
    dropped: Arc<Notify>,
    /// Counts the bytes produced, when set.
    pub sent: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Drop for PatternBody {
    fn drop(&mut self) {
        self.dropped.notify_one();
    }
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        let len = this.remaining.min(this.chunk.len() as u64) as usize;
        this.remaining -= len as u64;
        if let Some(sent) = &this.sent {
            sent.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        }
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(this.chunk.slice(..len)))))
    }
}

impl PatternBody {
    pub fn new(size: u64, dropped: Arc<Notify>) -> PatternBody {
        let chunk = Bytes::from((0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        PatternBody {
            remaining: size,
            chunk,
            dropped,
            sent: None,
        }
    }
}

fn stream_response(size: u64, dropped: Arc<Notify>) -> Response<Body> {
    let body = PatternBody::new(size, dropped);
    Response::builder()
        .header("content-length", size)
        .body(Body::boxed(body))
        .unwrap()
}

/// Whether the request's If-None-Match names `etag` (weak comparison, RFC 9110 §13.1.2).
fn if_none_match_names(headers: &HeaderMap, etag: &str) -> bool {
    let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
    headers
        .get_all("if-none-match")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|tag| weak(tag) == weak(etag)))
}

/// An origin server with named routes; unknown paths get 404.
pub struct Origin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Option<oneshot::Sender<()>>,
    counts: Arc<OriginCounts>,
}

/// Connections an origin accepted, and requests it was answering at once.
#[derive(Default)]
struct OriginCounts {
    connections: std::sync::atomic::AtomicUsize,
    in_flight: std::sync::atomic::AtomicUsize,
    peak_in_flight: std::sync::atomic::AtomicUsize,
}

impl Origin {
    pub async fn start(routes: Vec<(&str, Fixture)>) -> Origin {
        Origin::start_at("127.0.0.1:0", routes).await
    }

    /// An origin listening on `address` (another loopback address, a chosen port).
    pub async fn start_at(address: &str, routes: Vec<(&str, Fixture)>) -> Origin {
        let listener = TcpListener::bind(address).await.unwrap();
        Origin::serve(listener, routes, None, None)
    }

    /// An origin whose HTTP/2 connections allow `max_streams` concurrent streams
    /// (SETTINGS_MAX_CONCURRENT_STREAMS, RFC 9113 §6.5.2).
    pub async fn start_with_h2_streams(routes: Vec<(&str, Fixture)>, max_streams: u32) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Origin::serve(listener, routes, None, Some(max_streams))
    }

    /// An origin for `localhost` over TLS with a fresh self-signed certificate (returned as
    /// PEM, for `upstream.ca_file`), offering h2 and http/1.1.
    pub async fn start_tls(routes: Vec<(&str, Fixture)>) -> (Origin, String) {
        Origin::start_tls_at("127.0.0.1:0", routes).await
    }

    /// [`Origin::start_tls`] on `address` (a port chosen beforehand, for documents that
    /// name their own host).
    pub async fn start_tls_at(address: &str, routes: Vec<(&str, Fixture)>) -> (Origin, String) {
        let (acceptor, cert_pem) = localhost_tls(&["h2", "http/1.1"]);
        let listener = TcpListener::bind(address).await.unwrap();
        let tls = HeldTls {
            acceptor,
            held: None,
        };
        (Origin::serve(listener, routes, Some(tls), None), cert_pem)
    }

    /// [`Origin::start_tls`] whose connections after the first `first` wait at `gate`
    /// before their TLS handshake: connects that stay in flight.
    pub async fn start_tls_holding_handshakes(
        routes: Vec<(&str, Fixture)>,
        first: usize,
        gate: Gate,
    ) -> (Origin, String) {
        let (acceptor, cert_pem) = localhost_tls(&["h2", "http/1.1"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = HeldTls {
            acceptor,
            held: Some((first, gate)),
        };
        (Origin::serve(listener, routes, Some(tls), None), cert_pem)
    }

    fn serve(
        listener: TcpListener,
        routes: Vec<(&str, Fixture)>,
        tls: Option<HeldTls>,
        h2_max_streams: Option<u32>,
    ) -> Origin {
        let routes: HashMap<String, Fixture> = routes
            .into_iter()
            .map(|(p, f)| (p.to_string(), f))
            .collect();
        let routes = Arc::new(routes);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(OriginCounts::default());
        let handler: Handler = {
            let seen = Arc::clone(&seen);
            let counts = Arc::clone(&counts);
            Arc::new(move |request: Request<Incoming>| {
                use std::sync::atomic::Ordering::SeqCst;
                let routes = Arc::clone(&routes);
                let counts = Arc::clone(&counts);
                seen.lock().unwrap().push(SeenRequest {
                    method: request.method().clone(),
                    uri: request.uri().clone(),
                    version: request.version(),
                    headers: request.headers().clone(),
                });
                let now = counts.in_flight.fetch_add(1, SeqCst) + 1;
                counts.peak_in_flight.fetch_max(now, SeqCst);
                Box::pin(async move {
                    let response = match routes.get(request.uri().path()) {
                        Some(fixture) => fixture.respond(request).await,
                        None => Response::builder()
                            .status(404)
                            .body(Body::full("no such route"))
                            .unwrap(),
                    };
                    counts.in_flight.fetch_sub(1, SeqCst);
                    response
                })
            })
        };
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let accepted = Arc::clone(&counts);
        match tls {
            None => {
                tokio::spawn(serve_handler(
                    listener,
                    handler,
                    stopped,
                    accepted,
                    h2_max_streams,
                ));
            }
            Some(tls) => {
                tokio::spawn(serve_tls_handler(listener, tls, handler, stopped, accepted));
            }
        }
        Origin {
            addr,
            seen,
            stop: Some(stop),
            counts,
        }
    }

    /// Stops the origin: it refuses connections and closes the ones it had.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counts
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most requests the origin was answering at once (until each response head).
    pub fn peak_in_flight(&self) -> usize {
        self.counts
            .peak_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests reached `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.uri.path() == path)
            .count()
    }

    pub fn last(&self, path: &str) -> SeenRequest {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r.uri.path() == path)
            .cloned()
            .unwrap_or_else(|| panic!("origin never saw {path}"))
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve_handler(
    listener: TcpListener,
    handler: Handler,
    mut stopped: oneshot::Receiver<()>,
    counts: Arc<OriginCounts>,
    h2_max_streams: Option<u32>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(max) = h2_max_streams {
        builder.http2().max_concurrent_streams(max);
    }
    // A stopped origin closes its idle connections too (a GOAWAY, or a close between
    // requests), as a restarted server does; requests in flight finish.
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stopped => {
                drop(listener);
                tokio::spawn(graceful.shutdown());
                return;
            }
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
        };
        counts
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let handler = Arc::clone(&handler);
        let service = service_fn(move |request| {
            let handler = Arc::clone(&handler);
            async move { Ok::<_, Infallible>(handler(request).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(graceful.watch(connection));
    }
}

/// A TLS acceptor for `localhost` with a fresh self-signed certificate (returned as PEM)
/// offering `alpn`.
fn localhost_tls(alpn: &[&str]) -> (tokio_rustls::TlsAcceptor, String) {
    localhost_tls_verifying(alpn, None)
}

/// [`localhost_tls`], requiring a client certificate that `clients` verifies when given.
fn localhost_tls_verifying(
    alpn: &[&str],
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> (tokio_rustls::TlsAcceptor, String) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert_der: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(vec![cert_der], key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert_pem)
}

/// A TLS origin's acceptor, and the connections (after how many, until which gate opens)
/// whose handshake waits.
struct HeldTls {
    acceptor: tokio_rustls::TlsAcceptor,
    held: Option<(usize, Gate)>,
}

/// [`serve_handler`] over TLS; stopping closes every connection at once (a server gone).
async fn serve_tls_handler(
    listener: TcpListener,
    tls: HeldTls,
    handler: Handler,
    mut stopped: oneshot::Receiver<()>,
    counts: Arc<OriginCounts>,
) {
    let (gone, _) = tokio::sync::broadcast::channel::<()>(1);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stopped => {
                drop(listener);
                let _ = gone.send(());
                return;
            }
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
        };
        let earlier = counts
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let handler = Arc::clone(&handler);
        let acceptor = tls.acceptor.clone();
        let hold = tls
            .held
            .as_ref()
            .filter(|(first, _)| earlier >= *first)
            .map(|(_, gate)| gate.clone());
        let mut gone = gone.subscribe();
        tokio::spawn(async move {
            let serve = async {
                if let Some(gate) = hold {
                    gate.pass().await;
                }
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request| {
                    let handler = Arc::clone(&handler);
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            };
            tokio::select! {
                () = serve => {}
                _ = gone.recv() => {}
            }
        });
    }
}

/// A TLS origin for `localhost` with a fresh self-signed certificate, offering `alpn` (none:
/// no ALPN); it answers `secure {path}` and records the HTTP version of each request.
pub struct TlsOrigin {
    pub port: u16,
    pub cert_pem: String,
    pub versions: Arc<Mutex<Vec<Version>>>,
}

/// A client certificate (chain and key, PEM) issued by a fresh CA.
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TlsOrigin {
    pub async fn start(alpn: &[&str]) -> TlsOrigin {
        TlsOrigin::serve(localhost_tls(alpn)).await
    }

    /// A TLS origin (HTTP/1.1) that requires a client certificate from its own CA, and the
    /// identity that CA issued to its CDN.
    pub async fn start_requiring_client_cert() -> (TlsOrigin, ClientIdentity) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "origin's client CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let edge_key = KeyPair::generate().unwrap();
        let mut edge = CertificateParams::new(Vec::<String>::new()).unwrap();
        edge.distinguished_name.push(DnType::CommonName, "edge");
        edge.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let edge_cert = edge.signed_by(&edge_key, &ca_cert, &ca_key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let origin = TlsOrigin::serve(localhost_tls_verifying(&["http/1.1"], Some(verifier))).await;
        let identity = ClientIdentity {
            cert_pem: edge_cert.pem(),
            key_pem: edge_key.serialize_pem(),
        };
        (origin, identity)
    }

    async fn serve((acceptor, cert_pem): (tokio_rustls::TlsAcceptor, String)) -> TlsOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let versions = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&versions);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        seen.lock().unwrap().push(request.version());
                        let body = format!("secure {}", request.uri().path());
                        async move { Ok::<_, Infallible>(Response::new(Body::full(body))) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsOrigin {
            port,
            cert_pem,
            versions,
        }
    }
}

/// What a raw origin does with each connection.
#[derive(Clone)]
pub enum RawBehaviour {
    /// Reads the request head, then closes without a byte of response.
    CloseAfterRequest,
    /// Sends these bytes (a head and part of a body), then closes.
    SendThenClose(Bytes),
    /// Answers the first request on each connection with these bytes and keeps the
    /// connection; reads the second request and closes without a byte of response: the
    /// moment an origin's keep-alive timer closes a connection a request was just sent on.
    /// Counts request heads read and requests dropped.
    AnswerOnceThenClose(Bytes, Arc<KeepAliveRace>),
}

/// What an [`RawBehaviour::AnswerOnceThenClose`] origin has seen.
#[derive(Default)]
pub struct KeepAliveRace {
    /// The request line of every request head read, in order.
    pub request_lines: std::sync::Mutex<Vec<String>>,
    pub dropped: std::sync::atomic::AtomicUsize,
    /// The request lines of the requests dropped.
    pub dropped_lines: std::sync::Mutex<Vec<String>>,
}

impl KeepAliveRace {
    fn record(&self, head: &[u8]) {
        let text = String::from_utf8_lossy(head);
        // A small body sent with the previous request precedes this head in the bytes read.
        let line = text
            .lines()
            .find(|line| line.ends_with("HTTP/1.1"))
            .unwrap_or_default();
        self.request_lines.lock().unwrap().push(line.to_string());
    }

    pub fn dropped(&self) -> usize {
        self.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn lines_starting(&self, prefix: &str) -> usize {
        let lines = self.request_lines.lock().unwrap();
        lines.iter().filter(|line| line.starts_with(prefix)).count()
    }
}

/// A TCP origin that speaks broken HTTP on purpose.
pub struct RawOrigin {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RawOrigin {
    pub async fn start(behaviour: RawBehaviour) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    let head = read_head(&mut stream).await;
                    match behaviour {
                        RawBehaviour::CloseAfterRequest => {}
                        RawBehaviour::SendThenClose(bytes) => {
                            let _ = stream.write_all(&bytes).await;
                            let _ = stream.flush().await;
                        }
                        RawBehaviour::AnswerOnceThenClose(bytes, race) => {
                            race.record(&head);
                            let _ = stream.write_all(&bytes).await;
                            let _ = stream.flush().await;
                            let next = read_head(&mut stream).await;
                            if !next.is_empty() {
                                race.record(&next);
                                let line = race.request_lines.lock().unwrap().last().cloned();
                                race.dropped_lines.lock().unwrap().extend(line);
                                race.dropped
                                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                    }
                });
            }
        });
        RawOrigin { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads until the end of a request head (or EOF); returns what was read.
pub async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// An outpost running in-process on an ephemeral port.
pub struct Proxy {
    pub addr: SocketAddr,
    pub outpost: Arc<Outpost>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// Stops the admin servers [`start_admin`] started for it, which otherwise keep the
    /// outpost (and its cache directory's lock) past a restart.
    admin_stop: tokio_util::sync::CancellationToken,
}

impl Proxy {
    /// Starts outpost with `toml` layered over the defaults and `origin` as the default site.
    pub async fn start(origin: &str, toml: &str) -> Proxy {
        let flags = FlagOverrides {
            origins: vec![origin.to_string()],
            ..FlagOverrides::default()
        };
        let config = Config::from_toml_str(toml, &flags).expect("test config is valid");
        Proxy::start_with(config).await
    }

    pub async fn start_with(config: Config) -> Proxy {
        Proxy::start_outpost(Outpost::new(config).expect("outpost starts")).await
    }

    /// An outpost in front of `first`, with the site `b.test` in front of `second`, and the
    /// `upstream` settings (the section's lines).
    pub async fn start_with_second_site(first: &Origin, second: &Origin, upstream: &str) -> Proxy {
        let toml = format!(
            "origin = \"{}\"\n[upstream]\n{upstream}\n\n[[sites]]\nhosts = [\"b.test\"]\norigin = \"{}\"\n",
            first.url(),
            second.url()
        );
        let config = Config::from_toml_str(&toml, &FlagOverrides::default()).unwrap();
        Proxy::start_with(config).await
    }

    /// Serves an already built outpost (one with a config loader, for reload tests).
    pub async fn start_outpost(outpost: Outpost) -> Proxy {
        Proxy::start_outpost_at(outpost, "127.0.0.1:0").await
    }

    /// [`Proxy::start_with`] on `address` (a restart on the address clients know).
    pub async fn start_with_at(config: Config, address: &str) -> Proxy {
        Proxy::start_outpost_at(Outpost::new(config).expect("outpost starts"), address).await
    }

    async fn start_outpost_at(outpost: Outpost, address: &str) -> Proxy {
        let listener = TcpListener::bind(address).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let outpost = Arc::new(outpost);
        let serving = Arc::clone(&outpost);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serving
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        Proxy {
            addr,
            outpost,
            stop: Some(stop),
            task: Some(task),
            admin_stop: tokio_util::sync::CancellationToken::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops outpost cleanly, as a process exits before the next one starts: once this
    /// returns, nothing holds the outpost, so its cache directory's lock is free. Admin
    /// servers and connection tasks let go of it only when next scheduled, after serving
    /// has stopped; a restart before then found the index still locked, and ran degraded.
    pub async fn stop(mut self) {
        let stopped = self.shutdown().await;
        stopped
            .expect("outpost task")
            .expect("outpost stopped cleanly");
        let outpost = Arc::downgrade(&self.outpost);
        drop(self);
        eventually("the stopped outpost to be let go of", || {
            outpost.strong_count() == 0
        })
        .await;
    }

    /// Signals shutdown; the returned handle resolves when outpost has stopped.
    pub fn shutdown(&mut self) -> JoinHandle<std::io::Result<()>> {
        self.admin_stop.cancel();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("shutdown once")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.admin_stop.cancel();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the admin listener of `proxy` on an ephemeral port; returns its base URL.
pub async fn start_admin(proxy: &Proxy) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let outpost = Arc::clone(&proxy.outpost);
    let stopped = proxy.admin_stop.clone().cancelled_owned();
    tokio::spawn(async move { outpost.serve_admin(listener, stopped).await });
    base
}

/// A complete response as a client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Our member of the Cache-Status list: the last line (RFC 9211 §2: each cache appends its
/// own).
pub fn cache_status(reply: &Reply) -> String {
    reply
        .headers
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .next_back()
        .unwrap_or_default()
}

/// Our Cache-Status member split into its parameters without `ttl`, and the `ttl`.
///
/// The origin dates its responses to the whole second (RFC 9110 §5.6.7), so a response that
/// arrives in the second after the origin dated it already has an apparent age of one second
/// (RFC 9111 §4.2.3), and its ttl is one less than its lifetime: a test that compares ttl
/// exactly fails whenever a request straddles a second boundary.
pub fn cache_status_without_ttl(reply: &Reply) -> (String, Option<i64>) {
    let status = cache_status(reply);
    let mut ttl = None;
    let kept: Vec<&str> = status
        .split(';')
        .map(str::trim)
        .filter(|member| match member.strip_prefix("ttl=") {
            Some(seconds) => {
                ttl = seconds.parse().ok();
                false
            }
            None => true,
        })
        .collect();
    (kept.join("; "), ttl)
}

/// Asserts our Cache-Status member reads `expected` (written without `ttl`) and that its ttl
/// is the stored lifetime less at most the two seconds a loopback exchange can age a
/// response by whole-second Dates (see [`cache_status_without_ttl`]).
#[track_caller]
pub fn assert_cache_status_with_lifetime(reply: &Reply, expected: &str, lifetime: i64) {
    let (status, ttl) = cache_status_without_ttl(reply);
    assert_eq!(status, expected, "Cache-Status {:?}", cache_status(reply));
    let ttl = ttl.unwrap_or_else(|| panic!("no ttl in {:?}", cache_status(reply)));
    assert!(
        (lifetime - 2..=lifetime).contains(&ttl),
        "ttl {ttl} for a lifetime of {lifetime}"
    );
}

/// Whether outpost answered from its cache.
pub fn is_hit(reply: &Reply) -> bool {
    cache_status(reply).starts_with("outpost; hit")
}

/// A real HTTP/1.1 client (hyper-util's pooled client).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A real HTTP/2 client speaking h2c with prior knowledge.
pub fn h2c_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `request` and reads the whole response.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Reply {
    tokio::time::timeout(PATIENCE, async {
        let response = client.request(request).await.expect("request succeeds");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body completes").to_bytes();
        Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    })
    .await
    .expect("response within patience")
}

/// POST with an empty body (admin API calls).
pub async fn post(url: &str) -> Reply {
    send(
        &client(),
        Request::post(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

/// GET `url` with extra headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(&client(), builder.body(Full::new(Bytes::new())).unwrap()).await
}

/// GET `url` and say whether an origin's failure reached the client as one: a 502 (RFC 9110
/// §15.6.3: the failure came before the head was sent) or a response whose body breaks off
/// (it came after). A clean end of a truncated body is the one wrong answer.
pub async fn origin_failure_shown(url: &str) -> bool {
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = client().request(request).await.expect("request succeeds");
    if response.status() == StatusCode::BAD_GATEWAY {
        return true;
    }
    tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("the body ends or breaks off")
        .is_err()
}

/// GET `url` and read its body to the end: `Err` when the body breaks off (an aborted
/// response), which a plain [`get`] would fail the test on.
pub async fn get_body_or_break(url: &str) -> Result<Bytes, hyper::Error> {
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = client().request(request).await.expect("request succeeds");
    Ok(response.into_body().collect().await?.to_bytes())
}

/// Sends a GET for `path` on a raw connection, reads until the response head is complete
/// (or the connection ends), then hangs up; returns the status line.
pub async fn head_then_hang_up(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    text.lines().next().unwrap_or("").to_string()
}

/// Writes raw bytes to `addr` and reads until the server closes (or PATIENCE passes).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `request` on a new connection and reads until the server closes it: what it
/// answered, or `None` when it still held the connection open after [`PATIENCE`].
pub async fn exchange_until_closed(addr: SocketAddr, request: &[u8]) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    match tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await {
        Ok(Ok(_)) => Some(String::from_utf8_lossy(&out).into_owned()),
        Ok(Err(err)) => panic!("reading the reply: {err}"),
        Err(_) => None,
    }
}

/// An address nothing listens on, for the rest of the test run: a socket bound to it
/// without listening, so connecting is refused, and kept (leaked), so that no other test's
/// listener is given the port. A port bound and released was once handed to another
/// test's origin meanwhile, which took the connection and held it: a test expecting
/// `connection_refused` timed out instead.
pub async fn closed_port() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = socket.local_addr().unwrap();
    std::mem::forget(socket);
    address
}

/// The Content-Length a raw response head states.
pub fn content_length_in(head: &str) -> Option<usize> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().unwrap())
    })
}

/// Splits a stream of HTTP/1.1 responses to `heads` requests (HEAD ones flagged): each
/// response's status line and body.
pub fn split_responses(mut raw: &[u8], heads: &[bool]) -> Vec<(String, Vec<u8>)> {
    let mut responses = Vec::new();
    for &is_head in heads {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head")
            + 4;
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let len = content_length_in(&head).expect("content-length");
        let len = if is_head { 0 } else { len };
        responses.push((
            head.lines().next().unwrap().to_string(),
            raw[end..end + len].to_vec(),
        ));
        raw = &raw[end + len..];
    }
    assert!(
        raw.is_empty(),
        "{} bytes after the last response",
        raw.len()
    );
    responses
}

/// On one keep-alive connection to `addr` naming `host`: GET `large`, HEAD `large`, GET
/// `small`, GET bytes 1000-70999 of `large`, GET `large` again (closing). Checks the
/// statuses; returns each response's status line and body, in order.
pub async fn large_between_others(
    addr: SocketAddr,
    host: &str,
    large: &str,
    small: &str,
) -> Vec<(String, Vec<u8>)> {
    let requests = [
        format!("GET {large} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("HEAD {large} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("GET {small} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("GET {large} HTTP/1.1\r\nHost: {host}\r\nRange: bytes=1000-70999\r\n\r\n"),
        format!("GET {large} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    ];
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(requests.concat().as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("responses within patience")
        .unwrap();
    let responses = split_responses(&raw, &[false, true, false, false, false]);
    let statuses: Vec<&str> = responses
        .iter()
        .map(|(status, _)| status.as_str())
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 206 Partial Content",
            "HTTP/1.1 200 OK"
        ]
    );
    responses
}

/// Set in the copy of a test that [`small_file_system`] runs in a mount namespace.
const IN_MOUNT_NAMESPACE: &str = "OUTPOST_TEST_IN_MOUNT_NAMESPACE";

/// A tmpfs mounted for one test, unmounted when dropped.
pub struct SmallFileSystem {
    dir: tempfile::TempDir,
}

impl SmallFileSystem {
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("fs")
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.path())
            .status();
    }
}

/// A file system of `size` (a tmpfs) for a test that must fill one. In the test's own run
/// this runs the test binary again for `test` alone, inside `unshare --user
/// --map-root-user --mount` (a mount namespace of its own: the mount is private to it and
/// needs no privileges), and returns `None` once that copy passed; its failure fails the
/// test. In that copy it mounts the tmpfs and returns it. Where user namespaces are not
/// allowed the test is skipped with a note, unless `OUTPOST_REQUIRE_NAMESPACES` is set
/// (CI), when it fails.
pub fn small_file_system(test: &str, size: &str) -> Option<SmallFileSystem> {
    use std::process::Command;
    if std::env::var_os(IN_MOUNT_NAMESPACE).is_some() {
        let mounted = SmallFileSystem {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(mounted.path()).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "outpost-test"])
            .arg(mounted.path())
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs in the test's namespace");
        return Some(mounted);
    }
    let unshare = ["--user", "--map-root-user", "--mount", "--"];
    let allowed = Command::new("unshare")
        .args(unshare)
        .arg("true")
        .output()
        .is_ok_and(|probe| probe.status.success());
    if !allowed {
        assert!(
            std::env::var_os("OUTPOST_REQUIRE_NAMESPACES").is_none(),
            "{test} needs `unshare --user --mount` (OUTPOST_REQUIRE_NAMESPACES is set)"
        );
        eprintln!("skipped {test}: user and mount namespaces are not available here");
        return None;
    }
    let copy = Command::new("unshare")
        .args(unshare)
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_MOUNT_NAMESPACE, "1")
        .output()
        .expect("running the test in a mount namespace");
    let stdout = String::from_utf8_lossy(&copy.stdout);
    assert!(
        copy.status.success() && stdout.contains("1 passed"),
        "{test} in its mount namespace:\n{stdout}\n{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    None
}

/// A child process (an outpost started as its binary) killed and reaped when dropped, so
/// a test that fails midway leaves no server running after it.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        // Either may fail harmlessly: the test already stopped and reaped it.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
