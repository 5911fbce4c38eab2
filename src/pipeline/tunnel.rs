//! Upgrade tunnels (RFC 9110 §7.8): a GET asking to switch protocols (WebSocket) goes to
//! the origin with its `Upgrade`; only when the origin answers 101 does the connection
//! become a byte tunnel between client and origin. Until then the client's connection is
//! HTTP as usual: bytes sent early are read by outpost as the next request (and judged as
//! one), never passed raw to the origin, and a refused upgrade is an ordinary response.
//!
//! A tunnel closes when neither side sends anything for `server.tunnel_idle_timeout` or
//! after `server.tunnel_max_duration`; `outpost_tunnels_open` counts the open ones.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::forwarding::{self, Downstream};
use super::route::Site;
use super::{upstream_request, Proxy, RequestCtx};
use crate::body::Body;
use crate::error::ProxyError;

/// The client's upgrade: the protocols it asks for, and its connection once switched.
pub struct Upgrade {
    pub protocol: HeaderValue,
    pub client: OnUpgrade,
}

/// The protocols `request` asks to switch to, if it is an HTTP/1.1 GET with `Upgrade` and
/// `Connection: upgrade` (RFC 9110 §7.8).
pub fn requested<B>(request: &http::Request<B>) -> Option<HeaderValue> {
    let asks = request.method() == Method::GET
        && request.version() == Version::HTTP_11
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| request.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// Forwards the upgrade request; on 101 answers the client with the origin's 101 and
/// joins the two connections once both have switched; otherwise relays the answer.
///
/// # Errors
/// What sending to the origin gives.
pub(super) async fn open(
    proxy: &Arc<Proxy>,
    site: &Site,
    parts: &http::request::Parts,
    downstream: Downstream<'_>,
    upgrade: Upgrade,
    ctx: &mut RequestCtx,
) -> Result<Response<Body>, ProxyError> {
    let (mut request, client) =
        upstream_request(proxy, site, parts.clone(), Body::empty(), downstream)?;
    ctx.client = client;
    let headers = request.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade.protocol);
    let mut response = proxy.send_upstream(request, site, None).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut head, body) = response.into_parts();
        forwarding::clean_response_head(&mut head.headers);
        return Ok(Response::from_parts(head, Body::from(body)));
    }
    let origin = hyper::upgrade::on(&mut response);
    let (head, _) = response.into_parts();
    let peer = ctx.peer;
    spawn(proxy, peer.to_string(), async move {
        match tokio::join!(upgrade.client, origin) {
            (Ok(client), Ok(origin)) => Some((TokioIo::new(client), TokioIo::new(origin))),
            (client, origin) => {
                tracing::debug!(%peer, client_ok = client.is_ok(), origin_ok = origin.is_ok(), "tunnel not opened");
                None
            }
        }
    });
    // The 101 keeps its Connection and Upgrade: they are what it says.
    let mut answer = Response::new(Body::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *answer.headers_mut() = head.headers;
    Ok(answer)
}

/// Runs a tunnel between the two connections `sides` yields (`None`: they never came up),
/// within the proxy's tunnel limits and counted in its tunnel metrics; `label` names it
/// in the log.
pub(super) fn spawn<A, B>(
    proxy: &Proxy,
    label: String,
    sides: impl std::future::Future<Output = Option<(A, B)>> + Send + 'static,
) where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = Limits {
        idle: proxy.server.tunnel_idle_timeout.get(),
        total: proxy.server.tunnel_max_duration.get(),
    };
    let gauge = proxy.metrics.tunnels_open.clone();
    proxy.metrics.tunnels.inc();
    tokio::spawn(async move {
        let Some((client, far)) = sides.await else {
            return;
        };
        gauge.inc();
        let ended = join(client, far, limits).await;
        gauge.dec();
        tracing::debug!(tunnel = %label, ?ended, "tunnel closed");
    });
}

/// How long a tunnel may sit idle, and live.
#[derive(Debug, Clone, Copy)]
struct Limits {
    idle: Duration,
    total: Duration,
}

/// Why a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Closed,
    Idle,
    TooLong,
}

/// Copies both ways until either side closes, nothing moves for `idle`, or `total` passed.
async fn join<A, B>(client: A, origin: B, limits: Limits) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || {
        last.store(
            u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX),
            Relaxed,
        )
    };
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut origin_read, mut origin_write) = tokio::io::split(origin);
    let upstream = pump(&mut client_read, &mut origin_write, &touch);
    let downstream = pump(&mut origin_read, &mut client_write, &touch);
    let idle = async {
        loop {
            let quiet_since = epoch + Duration::from_millis(last.load(Relaxed));
            if Instant::now() >= quiet_since + limits.idle {
                return;
            }
            tokio::time::sleep_until(quiet_since + limits.idle).await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(upstream, downstream) } => Ended::Closed,
        () = idle => Ended::Idle,
        () = tokio::time::sleep(limits.total) => Ended::TooLong,
    }
}

/// Copies `from` into `to` until `from` ends (then `to` is shut for writing) or fails.
async fn pump<R, W>(from: &mut R, to: &mut W, touch: &impl Fn())
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        touch();
        if to.write_all(&buf[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tunnel nobody writes to closes after the idle limit; one kept busy closes at the
    /// total limit; bytes go both ways meanwhile.
    #[tokio::test(start_paused = true)]
    async fn tunnels_end_when_idle_or_too_long() {
        let limits = Limits {
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
        };
        let (client, _client_far) = tokio::io::duplex(64);
        let (origin, _origin_far) = tokio::io::duplex(64);
        let started = Instant::now();
        assert_eq!(join(client, origin, limits).await, Ended::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(60));

        let (client, mut client_far) = tokio::io::duplex(64);
        let (origin, mut origin_far) = tokio::io::duplex(64);
        let chatter = async move {
            let mut buf = [0u8; 4];
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                client_far.write_all(b"ping").await.unwrap();
                origin_far.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"ping");
            }
        };
        let started = Instant::now();
        let ended = tokio::select! {
            ended = join(client, origin, limits) => ended,
            () = chatter => unreachable!("the chatter never ends"),
        };
        assert_eq!(ended, Ended::TooLong);
        assert_eq!(started.elapsed(), Duration::from_secs(600));
    }
}
