//! `outpost load --burst N`: the coalescing probe. N connections are opened first, then
//! all N send a GET for one URL at the same moment; the report is the time from that moment
//! to the last response read whole, and how the cache answered each (RFC 9211
//! Cache-Status).
//!
//! Run against a cold key, a cache that coalesces answers all N with one origin fetch, so
//! the burst should take about one origin round trip. The client is Rust on raw sockets
//! (HTTP/1.1, `Connection: close`, each response read to its end), so it adds little of its
//! own: a Python probe spent 20-30 ms on 200 connections by itself, more than the margin
//! being measured.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::load;

/// What a burst observed.
#[derive(Debug, Clone, Serialize)]
pub struct BurstReport {
    pub requests: usize,
    pub completed: usize,
    pub errors: usize,
    /// From the moment all requests were released to the last response read whole.
    pub burst_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub statuses: BTreeMap<u16, usize>,
    /// Responses whose Cache-Status said they were answered from cache.
    pub hits: usize,
    /// Responses whose Cache-Status said they were forwarded (`fwd=`), collapsed or not.
    pub forwarded: usize,
    pub collapsed: usize,
}

/// Why a burst could not start.
#[derive(Debug, thiserror::Error)]
pub enum BurstError {
    #[error("the URL `{0}` is not an http:// URL with a host (bursts speak plain HTTP/1.1)")]
    BadUrl(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
}

/// One response: when it ended, its status and Cache-Status.
struct Answer {
    ended: Instant,
    status: u16,
    cache_status: String,
}

/// Sends `requests` GETs of `url` at once over as many connections opened beforehand, with
/// `headers`; gives up on responses not complete within `timeout`.
///
/// # Errors
/// A URL that is not plain http, or a connection that cannot be opened.
pub async fn run(
    url: &str,
    requests: usize,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<BurstReport, BurstError> {
    let uri: http::Uri = url.parse().map_err(|_| BurstError::BadUrl(url.into()))?;
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(BurstError::BadUrl(url.into()));
    };
    let addr = match authority.port_u16() {
        Some(_) => authority.to_string(),
        None => format!("{}:80", authority.host()),
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let head = Arc::new(head.into_bytes());

    let mut streams = Vec::with_capacity(requests);
    for _ in 0..requests {
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|source| BurstError::Connect {
                addr: addr.clone(),
                source,
            })?;
        stream.set_nodelay(true).ok();
        streams.push(stream);
    }
    let (go, _) = tokio::sync::broadcast::channel::<()>(1);
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let mut released = go.subscribe();
            let head = Arc::clone(&head);
            tokio::spawn(async move {
                released.recv().await.ok()?;
                tokio::time::timeout(timeout, exchange(stream, &head))
                    .await
                    .ok()?
            })
        })
        .collect();
    // Every task is waiting on its receiver before the release: subscribed above.
    let started = Instant::now();
    let _ = go.send(());
    let mut answers = Vec::with_capacity(requests);
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok(Some(answer)) => answers.push(answer),
            _ => errors += 1,
        }
    }
    Ok(summarise(requests, errors, started, &answers))
}

/// Writes the request and reads the response to its end (the server closes).
async fn exchange(mut stream: TcpStream, head: &[u8]) -> Option<Answer> {
    stream.write_all(head).await.ok()?;
    let mut response = Vec::with_capacity(16 << 10);
    stream.read_to_end(&mut response).await.ok()?;
    let ended = Instant::now();
    let end_of_head = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&response[..end_of_head]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let cache_status = lines
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.eq_ignore_ascii_case("cache-status"))
        .map(|(_, value)| value.trim())
        .collect::<Vec<_>>()
        .join(", ");
    Some(Answer {
        ended,
        status,
        cache_status,
    })
}

fn summarise(requests: usize, errors: usize, started: Instant, answers: &[Answer]) -> BurstReport {
    let mut latencies: Vec<f64> = answers
        .iter()
        .map(|a| a.ended.duration_since(started).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let mut statuses = BTreeMap::new();
    let (mut hits, mut forwarded, mut collapsed) = (0, 0, 0);
    for answer in answers {
        *statuses.entry(answer.status).or_insert(0) += 1;
        let params = load::nearest_cache_params(&answer.cache_status);
        if load::is_hit(&answer.cache_status) {
            hits += 1;
        }
        if load::is_forwarded(&params) {
            forwarded += 1;
        }
        if params.contains(&"collapsed") {
            collapsed += 1;
        }
    }
    BurstReport {
        requests,
        completed: answers.len(),
        errors,
        burst_ms: latencies.last().copied().unwrap_or(0.0),
        p50_ms: percentile(0.5),
        p99_ms: percentile(0.99),
        statuses,
        hits,
        forwarded,
        collapsed,
    }
}
