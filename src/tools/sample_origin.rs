//! A deliberately slow sample origin for newcomers and benchmarks (`outpost origin`,
//! `outpost demo`): deterministic content per path, configurable latency, body size and
//! cache headers, validators, and a hit counter, so a person can watch what the proxy in
//! front of it saves.
//!
//! Per-request overrides in the query: `latency=250ms`, `size=1MiB`, `cc=no-store` (a
//! Cache-Control value), `status=404`. The query does not change the content, only the path
//! does. Bodies are generated chunk by chunk, so a 10 GiB response costs no memory.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::Body;
use crate::config::{ByteSize, HumanDuration};

const CHUNK: usize = 64 * 1024;
/// Responses are never larger than this, whatever the query asks.
const MAX_SIZE: u64 = 64 << 30;
/// Fixed so validators are stable across restarts.
const LAST_MODIFIED: &str = "Wed, 01 Jan 2025 00:00:00 GMT";

/// How the sample origin answers by default.
#[derive(Debug, Clone)]
pub struct SampleOriginSettings {
    pub latency: Duration,
    pub body_size: u64,
    /// Cache-Control sent with every response; empty sends none.
    pub cache_control: String,
}

impl Default for SampleOriginSettings {
    fn default() -> Self {
        SampleOriginSettings {
            latency: Duration::from_millis(300),
            body_size: 16 * 1024,
            cache_control: "public, max-age=60".to_string(),
        }
    }
}

/// Serves the sample origin on `listener` until `shutdown` completes.
///
/// # Errors
/// None today; accept errors are logged and the loop goes on.
pub async fn serve(
    listener: TcpListener,
    settings: SampleOriginSettings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let settings = Arc::new(settings);
    let hits = Arc::new(AtomicU64::new(0));
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "sample origin accept failed");
                    continue;
                }
            },
        };
        let settings = Arc::clone(&settings);
        let hits = Arc::clone(&hits);
        let service = service_fn(move |request| {
            let settings = Arc::clone(&settings);
            let hits = Arc::clone(&hits);
            async move { Ok::<_, Infallible>(respond(&settings, &hits, request).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

async fn respond(
    settings: &SampleOriginSettings,
    hits: &AtomicU64,
    request: Request<Incoming>,
) -> Response<Body> {
    let count = hits.fetch_add(1, Relaxed) + 1;
    let query = Query::parse(request.uri().query().unwrap_or(""), settings);
    tokio::time::sleep(query.latency).await;

    let path = request.uri().path().to_string();
    let etag = format!("\"{:016x}-{}\"", fnv1a(path.as_bytes()), query.size);
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, LAST_MODIFIED)
        .header("x-origin-hits", count);
    if !query.cache_control.is_empty() {
        builder = builder.header(header::CACHE_CONTROL, &query.cache_control);
    }
    let matches_etag = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if matches_etag && query.status == StatusCode::OK {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_else(|_| fallback());
    }
    let content_type = if path.ends_with(".json") {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let body = if request.method() == Method::HEAD {
        Body::empty()
    } else {
        content_body(&path, query.size)
    };
    builder
        .status(query.status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, query.size)
        .body(body)
        .unwrap_or_else(|_| fallback())
}

fn fallback() -> Response<Body> {
    let mut response = Response::new(Body::full("sample origin: bad override\n"));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}

/// `size` bytes of text that depend only on `path`, produced one chunk at a time.
fn content_body(path: &str, size: u64) -> Body {
    let line = format!("outpost sample origin, path {path}: the same bytes every time.\n");
    let pattern: Bytes = Bytes::from(line.repeat(CHUNK / line.len() + 2));
    let period = line.len();
    let chunks = size.div_ceil(CHUNK as u64);
    let frames = stream::iter((0..chunks).map(move |index| {
        let start = index * CHUNK as u64;
        let len = (size - start).min(CHUNK as u64) as usize;
        let offset = (start % period as u64) as usize;
        Ok::<_, Infallible>(Frame::data(pattern.slice(offset..offset + len)))
    }));
    Body::boxed(StreamBody::new(frames))
}

struct Query {
    latency: Duration,
    size: u64,
    cache_control: String,
    status: StatusCode,
}

impl Query {
    fn parse(query: &str, settings: &SampleOriginSettings) -> Query {
        let mut parsed = Query {
            latency: settings.latency,
            size: settings.body_size,
            cache_control: settings.cache_control.clone(),
            status: StatusCode::OK,
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "latency" => {
                    if let Ok(d) = value.parse::<HumanDuration>() {
                        parsed.latency = d.get().min(Duration::from_secs(600));
                    }
                }
                "size" => {
                    if let Ok(s) = value.parse::<ByteSize>() {
                        parsed.size = s.as_u64().min(MAX_SIZE);
                    }
                }
                "cc" if HeaderValue::from_str(&value).is_ok() => {
                    parsed.cache_control = value.into_owned()
                }
                "status" => {
                    if let Some(status) = value
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                    {
                        parsed.status = status;
                    }
                }
                _ => {}
            }
        }
        parsed
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
