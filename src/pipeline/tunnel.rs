//! Upgrade tunnels (RFC 9110 §7.8): a GET asking to switch protocols (WebSocket) goes to
//! the origin with its `Upgrade`; only when the origin answers 101 does the connection
//! become a byte tunnel between client and origin. Until then the client's connection is
//! HTTP as usual: bytes sent early are read by outpost as the next request (and judged as
//! one), never passed raw to the origin, and a refused upgrade is an ordinary response.
//!
//! WebSocket over HTTP/2 (RFC 8441) arrives as an extended CONNECT with `:protocol`; it
//! goes to the origin as the HTTP/1.1 upgrade RFC 6455 defines (with a `Sec-WebSocket-Key`
//! of outpost's making, whose answer is checked), and the client gets 200 on the origin's
//! 101, its stream then carrying the tunnel.
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
    /// An RFC 8441 extended CONNECT (HTTP/2): answered 200, not 101.
    pub over_h2: bool,
}

/// RFC 6455 §1.3: the GUID the origin appends to our key before hashing it.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
const SEC_WEBSOCKET_ACCEPT: &str = "sec-websocket-accept";

/// The protocol an RFC 8441 extended CONNECT asks for (`:protocol`), if `request` is one.
pub fn extended_connect<B>(request: &http::Request<B>) -> Option<HeaderValue> {
    if request.method() != Method::CONNECT || request.version() != Version::HTTP_2 {
        return None;
    }
    let protocol = request.extensions().get::<hyper::ext::Protocol>()?;
    HeaderValue::from_str(protocol.as_str()).ok()
}

/// A fresh `Sec-WebSocket-Key` (16 random bytes, base64) and the accept value it calls for.
fn websocket_key() -> Result<(String, String), ProxyError> {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut nonce = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| ProxyError::Internal("no randomness for a WebSocket key".into()))?;
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let accept = websocket_accept(&key);
    Ok((key, accept))
}

/// RFC 6455 §4.2.2: base64 of SHA-1 over the key and the GUID.
fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(WEBSOCKET_GUID.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The protocols `request` asks to switch to, if it is an HTTP/1.1 GET with `Upgrade` and
/// `Connection: upgrade` (RFC 9110 §7.8).
pub fn requested<B>(request: &http::Request<B>) -> Option<HeaderValue> {
    // Upgrade first: most requests have none, and many carry `Connection: keep-alive`,
    // whose tokens need not be split then.
    let upgrade = request.headers().get(header::UPGRADE)?;
    let asks = request.method() == Method::GET
        && request.version() == Version::HTTP_11
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    // An offer of h2c (cargo sends one with every plain-http request) is answered as the
    // ordinary HTTP/1.1 request it also is (RFC 9110 §7.8 lets a server ignore Upgrade;
    // RFC 9113 §3.1 retired h2c upgrades): never a tunnel to the origin.
    let only_h2c = upgrade
        .to_str()
        .is_ok_and(|v| v.split(',').all(|p| p.trim().eq_ignore_ascii_case("h2c")));
    (asks && !only_h2c).then(|| upgrade.clone())
}

/// Forwards the upgrade request (always over HTTP/1.1, where Upgrade exists); on 101
/// answers the client with the origin's 101 (200 to an RFC 8441 extended CONNECT) and joins
/// the two connections once both have switched; otherwise relays the answer.
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
    *request.version_mut() = Version::HTTP_11;
    let is_websocket = upgrade
        .protocol
        .as_bytes()
        .eq_ignore_ascii_case(b"websocket");
    // RFC 8441 §5: an HTTP/2 client sends no key; the HTTP/1.1 handshake needs one.
    let expected_accept = if upgrade.over_h2 && is_websocket {
        let (key, accept) = websocket_key()?;
        let headers = request.headers_mut();
        headers.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::try_from(key)
                .map_err(|_| ProxyError::Internal("WebSocket key is not a header value".into()))?,
        );
        headers
            .entry("sec-websocket-version")
            .or_insert(HeaderValue::from_static("13"));
        Some(accept)
    } else {
        None
    };
    let headers = request.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade.protocol);
    let mut response = proxy.send_upstream(request, site, None).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut head, body) = response.into_parts();
        forwarding::clean_response_head(&mut head.headers);
        return Ok(Response::from_parts(head, Body::from(body)));
    }
    if let Some(expected) = expected_accept {
        let accepted = response.headers().get(SEC_WEBSOCKET_ACCEPT);
        if accepted.is_none_or(|value| value.as_bytes() != expected.as_bytes()) {
            return Err(ProxyError::UpstreamProtocol {
                origin: site.pool.name.clone(),
                detail: "the origin's Sec-WebSocket-Accept does not answer our key".into(),
            });
        }
    }
    let origin = hyper::upgrade::on(&mut response);
    let (mut head, _) = response.into_parts();
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
    let mut answer = Response::new(Body::empty());
    if upgrade.over_h2 {
        // RFC 8441 §5: a 200 opens the stream; the HTTP/1.1 handshake fields stay behind.
        forwarding::clean_response_head(&mut head.headers);
        head.headers.remove(SEC_WEBSOCKET_ACCEPT);
        *answer.status_mut() = StatusCode::OK;
    } else {
        // The 101 keeps its Connection and Upgrade: they are what it says.
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    }
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

    /// cargo's `Upgrade: h2c` offer is an ordinary request; a WebSocket upgrade is not.
    #[test]
    fn an_h2c_offer_is_not_a_tunnel() {
        let offer = |upgrade: &str| {
            http::Request::get("/config.json")
                .header(header::CONNECTION, "Upgrade, HTTP2-Settings")
                .header(header::UPGRADE, upgrade)
                .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
                .body(())
                .unwrap()
        };
        assert!(requested(&offer("h2c")).is_none());
        assert!(requested(&offer("websocket")).is_some());
    }

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
