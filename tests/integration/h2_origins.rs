//! HTTP/2 to origins (issue 14 item 2): by prior knowledge over cleartext and by ALPN over
//! TLS (RFC 9113 §3.2, §3.3), many requests multiplexed on one connection with a stream
//! cap, the site's host in `:authority` (§8.3.1), and trailers end to end (RFC 9110 §6.5),
//! which is what gRPC needs.

use crate::support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use support::*;

const H2: &str = "[upstream]\nprotocol = \"h2\"\n";

/// `count` GETs of distinct URLs under `path` with Host `host`, all sent at once from a
/// task of their own; their replies in order.
fn spawn_gets(
    proxy: &Proxy,
    path: &str,
    host: &str,
    count: usize,
) -> tokio::task::JoinHandle<Vec<Reply>> {
    let client = client();
    let requests: Vec<_> = (0..count)
        .map(|n| {
            let client = client.clone();
            let request = Request::get(proxy.url(&format!("{path}?n={n}")))
                .header("host", host)
                .body(Full::default())
                .unwrap();
            async move { send(&client, request).await }
        })
        .collect();
    tokio::spawn(futures_util::future::join_all(requests))
}

/// A gated origin route for `path`, storable, and the gate.
async fn gated_origin(path: &str, body: &'static [u8]) -> (Origin, Gate) {
    let gate = Gate::closed();
    let fixture = Fixture::GatedWith {
        gate: gate.clone(),
        headers: cc("max-age=60"),
        body: Bytes::from_static(body),
    };
    (Origin::start(vec![(path, fixture)]).await, gate)
}

/// RFC 9113 §9.1: concurrent requests share one connection to the origin, each on its own
/// stream; the origin sees HTTP/2 and, in `:authority`, the host the client asked for.
#[tokio::test]
async fn an_h2_origin_multiplexes_concurrent_requests_over_one_connection() {
    let (origin, gate) = gated_origin("/held", b"together").await;
    let proxy = Proxy::start(&origin.url(), H2).await;
    let all = spawn_gets(&proxy, "/held", "www.example.test", 16);
    eventually("all 16 requests at the origin at once", || {
        origin.hits("/held") == 16
    })
    .await;
    gate.open();
    let replies = all.await.unwrap();
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.text() == "together"));
    assert_eq!(origin.connections(), 1, "one connection for 16 requests");
    for seen in origin.seen() {
        assert_eq!(seen.version, Version::HTTP_2);
        assert_eq!(
            seen.uri.authority().map(|a| a.as_str()),
            Some("www.example.test"),
            "§8.3.1: the client's host in :authority"
        );
        assert!(
            seen.headers.get("host").is_none(),
            "no Host beside :authority"
        );
    }
}

/// `upstream.max_streams_per_origin` caps the streams open to one server, response bodies
/// included; the rest wait their turn instead of failing.
#[tokio::test]
async fn streams_to_one_origin_are_capped() {
    let (origin, gate) = gated_origin("/held", b"x").await;
    let proxy = Proxy::start(&origin.url(), &format!("{H2}max_streams_per_origin = 3\n")).await;
    let all = spawn_gets(&proxy, "/held", "localhost", 9);
    eventually("three requests at the origin", || origin.hits("/held") >= 3).await;
    gate.open();
    let replies = all.await.unwrap();
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(origin.hits("/held"), 9);
    assert!(
        origin.peak_in_flight() <= 3,
        "at most 3 streams at once, saw {}",
        origin.peak_in_flight()
    );
}

/// Six requests for the gated `/held` (answering "spread") at once, all at the origin
/// together over three connections of two streams, then all answered.
async fn six_spread_over_three_connections(proxy: &Proxy, origin: &Origin, gate: &Gate) {
    let all = spawn_gets(proxy, "/held", "localhost", 6);
    eventually("all six requests at the origin at once", || {
        origin.hits("/held") == 6
    })
    .await;
    assert_eq!(origin.connections(), 3, "two streams on each of three");
    gate.open();
    let replies = all.await.unwrap();
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.text() == "spread"));
}

/// RFC 9113 §5.1.2: a connection carries a bounded number of concurrent streams. Past
/// `upstream.max_streams_per_connection` on every open connection, another is opened
/// rather than making requests wait, and only as many as needed.
#[tokio::test]
async fn a_connection_full_of_streams_opens_another() {
    let (origin, gate) = gated_origin("/held", b"spread").await;
    let proxy = Proxy::start(
        &origin.url(),
        &format!("{H2}max_streams_per_connection = 2\n"),
    )
    .await;
    six_spread_over_three_connections(&proxy, &origin, &gate).await;
}

/// RFC 9113 §5.1.2, §6.5.2: a server that allows fewer concurrent streams than
/// `upstream.max_streams_per_connection` (SETTINGS_MAX_CONCURRENT_STREAMS) has a connection
/// carry that many: past it, another connection opens, rather than the rest of the
/// requests waiting on the full one until a stream closes.
#[tokio::test]
async fn a_servers_own_stream_limit_opens_further_connections() {
    let gate = Gate::closed();
    let held = Fixture::GatedWith {
        gate: gate.clone(),
        headers: cc("max-age=60"),
        body: Bytes::from_static(b"spread"),
    };
    let warm = Fixture::with_headers(200, &[("cache-control", "no-store")], "warm");
    let origin = Origin::start_with_h2_streams(vec![("/held", held), ("/warm", warm)], 2).await;
    let proxy = Proxy::start(&origin.url(), H2).await;
    // The server's SETTINGS come before its first response on the connection.
    assert_eq!(get(&proxy.url("/warm"), &[]).await.text(), "warm");
    six_spread_over_three_connections(&proxy, &origin, &gate).await;
}

/// When the connection caps allow no further connection, a request that found every
/// connection full takes the first place that frees on one, rather than waiting out the
/// caps' queue (60 s here) for a connection it cannot have.
#[tokio::test]
async fn a_freed_stream_beats_waiting_for_a_connection() {
    let (origin, gate) = gated_origin("/held", b"turn").await;
    let config = format!(
        "{H2}max_streams_per_connection = 1\nmax_connections_per_origin = 1\n\
         connection_queue_timeout = \"60s\"\n"
    );
    let proxy = Proxy::start(&origin.url(), &config).await;
    let both = spawn_gets(&proxy, "/held", "localhost", 2);
    eventually("one request at the origin", || origin.hits("/held") == 1).await;
    gate.open();
    let replies = tokio::time::timeout(std::time::Duration::from_secs(30), both)
        .await
        .expect("the second request took the freed stream")
        .unwrap();
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.text() == "turn"));
    assert_eq!(origin.connections(), 1);
}

/// RFC 9110 §6.5 and §10.1.4: a gRPC call (POST, `TE: trailers`) passes through uncached
/// over HTTP/2 both ways, and the origin's trailer section (`grpc-status`) reaches the
/// client.
#[tokio::test]
async fn grpc_trailers_pass_end_to_end() {
    let origin = Origin::start(vec![(
        "/echo.Echo/Say",
        Fixture::Trailers {
            headers: header_list(&[("content-type", "application/grpc")]),
            body: Bytes::from_static(b"\0\0\0\0\x05hello"),
            trailers: header_list(&[("grpc-status", "0"), ("grpc-message", "fine")]),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), H2).await;
    let request = Request::post(proxy.url("/echo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, h2c_client().request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    let collected = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = collected.trailers().cloned().expect("a trailer section");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "fine");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x05hello");
    let seen = origin.last("/echo.Echo/Say");
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.headers.get("te").unwrap(), "trailers");
}

/// A client that does not offer `TE: trailers` is not made to: the origin is not told it
/// may send trailers (RFC 9110 §10.1.4), and the response still arrives whole.
#[tokio::test]
async fn te_trailers_is_forwarded_only_when_the_client_sent_it() {
    let origin = Origin::start(vec![("/plain", Fixture::ok("plain"))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let reply = get(&proxy.url("/plain"), &[("te", "gzip, trailers;q=0.5")]).await;
    assert_eq!(reply.text(), "plain");
    assert_eq!(origin.last("/plain").headers.get("te").unwrap(), "trailers");
    let reply = get(&proxy.url("/plain?b"), &[("te", "gzip")]).await;
    assert_eq!(reply.text(), "plain");
    assert!(origin.last("/plain").headers.get("te").is_none());
}

fn ca_config(origin: &TlsOrigin, protocol: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &origin.cert_pem).unwrap();
    let config = format!(
        "[upstream]\nca_file = \"{}\"\nprotocol = \"{protocol}\"\n",
        ca.display()
    );
    (dir, config)
}

/// RFC 9113 §3.2: over TLS, `auto` speaks HTTP/2 to a server that picks `h2` by ALPN, and
/// HTTP/1.1 to one that picks `http/1.1`.
#[tokio::test]
async fn auto_follows_the_origins_alpn_choice() {
    for (offered, expected) in [
        (vec!["h2", "http/1.1"], Version::HTTP_2),
        (vec!["http/1.1"], Version::HTTP_11),
    ] {
        let origin = TlsOrigin::start(&offered).await;
        let (_dir, config) = ca_config(&origin, "auto");
        let proxy = Proxy::start(&format!("https://localhost:{}", origin.port), &config).await;
        for path in ["/a", "/b"] {
            let reply = get(&proxy.url(path), &[]).await;
            assert_eq!(reply.text(), format!("secure {path}"), "{offered:?}");
        }
        let versions = origin.versions.lock().unwrap().clone();
        assert_eq!(versions, vec![expected; 2], "offered {offered:?}");
    }
}

/// `h2` insists: a TLS origin that will not speak it by ALPN fails the handshake (RFC 7301
/// §3.2: rustls answers `no_application_protocol`), a 502 whose Proxy-Status says so
/// (RFC 9209 §2.3.10), not a silent downgrade to HTTP/1.1.
#[tokio::test]
async fn h2_refuses_an_origin_without_h2_alpn() {
    let origin = TlsOrigin::start(&["http/1.1"]).await;
    let (_dir, config) = ca_config(&origin, "h2");
    let proxy = Proxy::start(&format!("https://localhost:{}", origin.port), &config).await;
    let reply = get(&proxy.url("/a"), &[]).await;
    assert_eq!(reply.status, 502);
    let proxy_status = reply.header("proxy-status").unwrap();
    assert!(
        proxy_status.contains("tls_protocol_error"),
        "{proxy_status}"
    );
    assert!(origin.versions.lock().unwrap().is_empty());
}

/// An HTTP/2 origin that goes away is dialled again for the next request.
#[tokio::test]
async fn a_closed_h2_connection_is_reopened() {
    let origin = Origin::start(vec![("/n", Fixture::ok("n"))]).await;
    let address = origin.addr.to_string();
    let proxy = Proxy::start(&origin.url(), H2).await;
    let replies = spawn_gets(&proxy, "/n", "localhost", 4).await.unwrap();
    assert!(replies.iter().all(|reply| reply.status == 200));
    drop(origin);
    eventually_some("the origin's port free again", || {
        let address = address.clone();
        async move { std::net::TcpListener::bind(&address).ok() }
    })
    .await;
    let origin = Arc::new(Origin::start_at(&address, vec![("/n", Fixture::ok("restarted"))]).await);
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    eventually_some("a request answered by the restarted origin", || {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let url = proxy.url(&format!("/n?after={n}"));
        async move {
            let reply = get(&url, &[]).await;
            (reply.text() == "restarted").then_some(())
        }
    })
    .await;
    assert_eq!(origin.seen().last().unwrap().version, Version::HTTP_2);
}

/// RFC 9110 §7.6.3: Via's received-protocol is the version the response came in, on a
/// miss and on every hit from the stored entry alike: `2` from an HTTP/2 origin, `1.0`
/// from one that answers in HTTP/1.0, `1.1` otherwise (an entry stored before the
/// version was kept reads as `1.1`, as it was served).
#[tokio::test]
async fn via_names_the_version_the_stored_response_was_received_in() {
    let origin = Origin::start(vec![(
        "/v",
        Fixture::with_headers(200, &[("cache-control", "max-age=60")], "v"),
    )])
    .await;
    let old = RawOrigin::start(RawBehaviour::SendThenClose(Bytes::from_static(
        b"HTTP/1.0 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 2\r\n\r\nok",
    )))
    .await;
    let over_h2 = Proxy::start(&origin.url(), H2).await;
    let over_h1 = Proxy::start(&origin.url(), "").await;
    let over_h10 = Proxy::start(&old.url(), "").await;
    for (proxy, via) in [
        (&over_h2, "2 outpost"),
        (&over_h1, "1.1 outpost"),
        (&over_h10, "1.0 outpost"),
    ] {
        let miss = get(&proxy.url("/v"), &[]).await;
        // The third is answered by the prepared head the second made.
        for hit in [
            get(&proxy.url("/v"), &[]).await,
            get(&proxy.url("/v"), &[]).await,
        ] {
            assert!(is_hit(&hit), "{via}: {}", cache_status(&hit));
            assert_eq!(hit.header("via"), Some(via));
        }
        assert_eq!(miss.header("via"), Some(via));
    }
}

/// An HTTP/2 connection that carries no stream holds a place under
/// `upstream.max_connections` for as long as its server keeps it open. A connection to
/// another origin that waits for that place has it let go (hyper then closes it, RFC 9113
/// §6.8 GOAWAY), rather than wait until the connection queue's time runs out (503).
#[tokio::test]
async fn a_connection_waiting_on_the_total_cap_lets_go_of_an_idle_h2_one() {
    let first = Origin::start(vec![("/a", Fixture::ok("a"))]).await;
    let second = Origin::start(vec![("/b", Fixture::ok("b"))]).await;
    let upstream = "protocol = \"h2\"\nmax_connections = 1\nconnection_queue_timeout = \"10s\"";
    let proxy = Proxy::start_with_second_site(&first, &second, upstream).await;
    assert_eq!(get(&proxy.url("/a"), &[]).await.text(), "a");
    let reply = get(&proxy.url("/b"), &[("host", "b.test")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "b");
    assert_eq!((first.connections(), second.connections()), (1, 1));
}

/// RFC 9110 §6.5.1: a client's trailer section reaches the origin without the fields a
/// trailer may not carry, nor the forwarding fields this edge writes: a chunked request
/// whose trailers claim another client address, a client certificate and an override of
/// the URL arrives with its content digest alone.
#[tokio::test]
async fn a_clients_trailers_cannot_speak_for_the_edge() {
    let origin = Origin::start(vec![("/upload", Fixture::RequestTrailers)]).await;
    let proxy = Proxy::start(&origin.url(), H2).await;
    let request = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
        Transfer-Encoding: chunked\r\nTE: trailers\r\n\r\n5\r\nhello\r\n0\r\n\
        X-Forwarded-For: 6.6.6.6\r\nClient-Cert: :Zm9v:\r\nX-Original-URL: /admin\r\n\
        Content-Digest: sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:\r\n\r\n";
    let reply = exchange_until_closed(proxy.addr, request)
        .await
        .expect("a reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(
        body.contains("content-digest: sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:"),
        "the digest arrives: {body}"
    );
    for ruled_out in ["x-forwarded-for: 6.6.6.6", "client-cert", "x-original-url"] {
        assert!(!body.contains(ruled_out), "{ruled_out} in {body}");
    }
}
