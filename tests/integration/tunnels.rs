//! Upgrade tunnels (RFC 9110 §7.8, issue 14 item 3): a WebSocket-style upgrade through a
//! real outpost to a raw origin that answers 101 and echoes; early client bytes are never
//! sent to the origin before its 101, and a refused upgrade leaves plain HTTP.

use crate::support;

use std::sync::{Arc, Mutex};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// RFC 6455 §4.2.2: the accept value for a `Sec-WebSocket-Key`.
fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    let input = format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, input.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The `Sec-WebSocket-Key` of a request head.
fn websocket_key(head: &[u8]) -> String {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default()
}

/// An origin that answers every upgrade with 101 (accepting its key as RFC 6455 says) and
/// then echoes what it reads; it keeps each request head it saw, exactly as read.
async fn echo_origin() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                let accept = websocket_accept(&websocket_key(&head));
                seen.lock().unwrap().push(head);
                let switched = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                if stream.write_all(switched.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(read) = stream.read(&mut buf).await {
                    if read == 0 || stream.write_all(&buf[..read]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (url, heads)
}

/// Reads from `stream` until `seen` ends with `suffix`.
async fn read_until_suffix(stream: &mut TcpStream, seen: &mut Vec<u8>, suffix: &[u8]) {
    let mut buf = [0u8; 1024];
    while !seen.ends_with(suffix) {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("in time")
            .unwrap();
        assert!(read > 0, "closed after {}", String::from_utf8_lossy(seen));
        seen.extend_from_slice(&buf[..read]);
    }
}

/// The upgrade reaches the origin with its Upgrade and Connection, the client gets the
/// origin's 101, and bytes then flow both ways; early bytes sent with the request head
/// reach the origin only after its 101, as tunnel data.
#[tokio::test]
async fn a_websocket_upgrade_becomes_a_tunnel_after_the_101() {
    let (origin, heads) = echo_origin().await;
    let proxy = Proxy::start(&origin, "").await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(&[UPGRADE, b"EARLY"].concat())
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until_suffix(&mut client, &mut seen, b"EARLY").await;
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{text}"
    );

    let head = heads.lock().unwrap()[0].clone();
    let head_text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(
        head.ends_with(b"\r\n\r\n"),
        "bytes beyond the head reached the origin before its 101: {head_text}"
    );
    assert!(
        head_text.contains("upgrade: websocket") && head_text.contains("connection: upgrade"),
        "{head_text}"
    );

    seen.clear();
    client.write_all(b"hello through the tunnel").await.unwrap();
    read_until_suffix(&mut client, &mut seen, b"hello through the tunnel").await;
    let metrics = proxy.outpost.proxy().metrics().encode();
    assert!(metrics.contains("outpost_tunnels_open 1"), "{metrics}");
}

/// A refused upgrade is an ordinary response, and what the client sent after the head is
/// read by outpost as the next request: the origin gets it as a forwarded request (with
/// our Via), never as raw bytes.
#[tokio::test]
async fn a_refused_upgrade_leaves_plain_http_and_early_bytes_are_a_request() {
    let origin = Origin::start(vec![
        (
            "/ws",
            fixed(&[("cache-control", "no-store")], "no upgrade here"),
        ),
        ("/next", fixed(&[("cache-control", "no-store")], "next")),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let next = b"GET /next HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(proxy.addr, &[UPGRADE, next].concat()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("no upgrade here") && answer.ends_with("next"),
        "{answer}"
    );
    let forwarded = origin.last("/next");
    assert!(forwarded.headers["via"]
        .to_str()
        .unwrap()
        .contains("outpost"));
    assert_eq!(origin.hits("/ws"), 1);
}

/// A TCP server that echoes, counting the connections it accepts.
async fn tcp_echo() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    (addr, accepted)
}

/// A CONNECT for `target`; `Connection: close` unless it is to be a tunnel (`open`).
fn connect_request(target: std::net::SocketAddr, authorization: Option<&str>) -> Vec<u8> {
    connect_head(target, authorization, false)
}

fn connect_head(target: std::net::SocketAddr, authorization: Option<&str>, open: bool) -> Vec<u8> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if !open {
        request.push_str("Connection: close\r\n");
    }
    if let Some(authorization) = authorization {
        request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// RFC 9110 §9.3.6: a CONNECT to an allowed target with the right credentials opens a
/// tunnel (200, then bytes both ways); without credentials or with wrong ones it gets 407,
/// to a target not allowed 403, and neither opens a connection to the target.
#[tokio::test]
async fn connect_tunnels_only_to_allowed_targets_with_credentials() {
    let (target, accepted) = tcp_echo().await;
    let (other, other_accepted) = tcp_echo().await;
    let origin = Origin::start(vec![]).await;
    let toml = format!(
        "[forward_proxy]\nconnect_allow = [\"127.0.0.1:{}\"]\ncredentials = \"alice:s3cret\"\n",
        target.port()
    );
    let proxy = Proxy::start(&origin.url(), &toml).await;
    let good = "Basic YWxpY2U6czNjcmV0";

    let refused = raw_exchange(proxy.addr, &connect_request(other, Some(good))).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    for authorization in [None, Some("Basic YWxpY2U6d3Jvbmc=")] {
        let answer = raw_exchange(proxy.addr, &connect_request(target, authorization)).await;
        assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("proxy-authenticate: basic"),
            "{answer}"
        );
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(other_accepted.load(std::sync::atomic::Ordering::SeqCst), 0);

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(&connect_request(target, Some(good)))
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until_suffix(&mut client, &mut seen, b"\r\n\r\n").await;
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    seen.clear();
    client.write_all(b"ping over CONNECT").await.unwrap();
    read_until_suffix(&mut client, &mut seen, b"ping over CONNECT").await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Never an open proxy: with no allowed targets configured, every CONNECT is refused.
#[tokio::test]
async fn connect_is_refused_by_default() {
    let (target, accepted) = tcp_echo().await;
    let origin = Origin::start(vec![]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let answer = raw_exchange(proxy.addr, &connect_request(target, None)).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// RFC 8441: WebSocket over HTTP/2 is an extended CONNECT with `:protocol: websocket`; the
/// origin gets the RFC 6455 upgrade (a GET with a key of outpost's making, whose accept is
/// checked), the client a 200, and its stream carries the tunnel.
#[tokio::test]
async fn websocket_over_h2_becomes_an_http1_upgrade_to_the_origin() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (origin, heads) = echo_origin().await;
    let proxy = Proxy::start(&origin, "").await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    // One exchange first, so the server's SETTINGS (ENABLE_CONNECT_PROTOCOL) are in.
    let warm = http::Request::get(proxy.url("/warm"))
        .body(Empty::new())
        .unwrap();
    let _ = tokio::time::timeout(PATIENCE, sender.send_request(warm)).await;

    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(proxy.url("/chat"))
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("sec-websocket-accept").is_none());
    let upgraded = tokio::time::timeout(PATIENCE, hyper::upgrade::on(&mut response))
        .await
        .unwrap()
        .unwrap();
    let mut stream = TokioIo::new(upgraded);
    stream.write_all(b"over h2").await.unwrap();
    let mut echoed = [0u8; 7];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"over h2");

    let heads = heads.lock().unwrap().clone();
    let head = String::from_utf8_lossy(heads.last().unwrap()).to_ascii_lowercase();
    assert!(head.starts_with("get /chat http/1.1\r\n"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("connection: upgrade"),
        "{head}"
    );
    assert!(head.contains("sec-websocket-version: 13"), "{head}");
    assert!(!websocket_key(heads.last().unwrap()).is_empty(), "{head}");
}
