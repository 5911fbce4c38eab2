//! Connections to HTTP/1.1 origins: kept alive and reused across exchanges (RFC 9112 §9.3),
//! whatever the response's body was (one read whole, none for a 304 or a HEAD, one the
//! client stopped reading), and closed once idle past `upstream.pool_idle_timeout`.

use crate::support;

use bytes::Bytes;
use support::*;

/// RFC 9112 §9.3: a persistent connection carries one exchange after another. Misses with
/// bodies, a revalidation answered 304 (RFC 9111 §4.3.3, no body) and a HEAD (RFC 9110
/// §9.3.2, no body) in turn all go over the one connection the first miss opened.
#[tokio::test]
async fn exchanges_one_after_another_share_one_origin_connection() {
    let origin = Origin::start(vec![
        (
            "/a",
            Fixture::with_headers(200, &[("cache-control", "max-age=60")], "first"),
        ),
        (
            "/b",
            Fixture::with_headers(200, &[("cache-control", "no-store")], "second"),
        ),
        (
            "/doc",
            Fixture::Validated {
                etag: "\"v1\"",
                headers: cc("no-cache"),
                body: Bytes::from_static(b"document"),
                not_modified_headers: cc("no-cache"),
            },
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    assert_eq!(get(&proxy.url("/a"), &[]).await.text(), "first");
    assert_eq!(get(&proxy.url("/b"), &[]).await.text(), "second");
    assert_eq!(get(&proxy.url("/doc"), &[]).await.text(), "document");
    // Stored with no-cache: each later request is a revalidation, answered 304.
    for _ in 0..2 {
        assert_eq!(get(&proxy.url("/doc"), &[]).await.text(), "document");
    }
    let head = send(
        &client(),
        http::Request::head(proxy.url("/b"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status.as_u16(), 200);
    assert_eq!(get(&proxy.url("/b"), &[]).await.text(), "second");
    assert_eq!(
        origin.hits("/doc"),
        3,
        "two revalidations after the first fetch"
    );
    assert_eq!(origin.hits("/b"), 3);
    assert_eq!(
        origin.connections(),
        1,
        "every exchange reused the first connection"
    );
}

/// A response body the client abandons halfway leaves its connection in an unknown state:
/// it is closed, never offered to the next request, which gets a connection of its own
/// and its whole response.
#[tokio::test]
async fn a_connection_whose_body_was_abandoned_is_not_reused() {
    let big = Bytes::from(vec![b'x'; 4 << 20]);
    let origin = Origin::start(vec![
        (
            "/big",
            Fixture::Static {
                status: http::StatusCode::OK,
                headers: cc("no-store"),
                body: big.clone(),
            },
        ),
        (
            "/small",
            Fixture::with_headers(200, &[("cache-control", "no-store")], "small"),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let status = head_then_hang_up(proxy.addr, "/big").await;
    assert!(status.contains(" 200 "), "{status}");
    let outpost = proxy.outpost.proxy();
    eventually("the abandoned download's connection to close", || {
        outpost.upstream().connections_in_use().0 == 0
    })
    .await;
    assert_eq!(get(&proxy.url("/small"), &[]).await.text(), "small");
    assert_eq!(origin.connections(), 2);
    let whole = get(&proxy.url("/big"), &[]).await;
    assert!(whole.body == big, "the next download is whole");
}

/// Idle connections are closed once they have waited `upstream.pool_idle_timeout`, so an
/// origin that is not asked for anything for a while holds none of the connection caps
/// (and none of its own sockets); the next request opens a new one.
#[tokio::test]
async fn idle_origin_connections_close_after_the_idle_timeout() {
    let origin = Origin::start(vec![(
        "/x",
        Fixture::with_headers(200, &[("cache-control", "no-store")], "x"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "[upstream]\npool_idle_timeout = \"200ms\"\n").await;
    assert_eq!(get(&proxy.url("/x"), &[]).await.text(), "x");
    let outpost = proxy.outpost.proxy();
    eventually("the idle connection to be closed", || {
        outpost.upstream().connections_in_use().0 == 0
    })
    .await;
    assert_eq!(get(&proxy.url("/x"), &[]).await.text(), "x");
    assert_eq!(origin.connections(), 2);
}

/// Under a per-origin connection cap a new connection waits for a place, which only
/// closing a connection frees; a connection released by its exchange stays open in the
/// pool. So requests waiting behind the cap take connections as they are released (RFC
/// 9112 §9.3: one exchange after another on a persistent connection) rather than wait
/// beside an idle one until it times out (here past `connection_queue_timeout`: 503).
#[tokio::test]
async fn requests_waiting_under_the_connection_cap_take_released_connections() {
    three_requests_share_one_capped_connection(|origin| async move {
        Proxy::start(
            &origin,
            "[upstream]\nmax_connections_per_origin = 1\npool_idle_timeout = \"60s\"\n\
             connection_queue_timeout = \"10s\"\n",
        )
        .await
    })
    .await;
}

/// A pool server's own cap (`max_connections`, nginx's `max_conns`) holds it to fewer
/// connections than `upstream.max_connections_per_origin` allows: with one, a request
/// held at the origin leaves two more waiting for its connection, which each then takes
/// in turn, and the origin sees one connection in all.
#[tokio::test]
async fn a_pool_server_with_a_cap_of_its_own_gets_no_more_connections() {
    three_requests_share_one_capped_connection(|origin| async move {
        let toml = format!(
            "pool = \"small\"\n[upstream]\npool_idle_timeout = \"60s\"\nconnection_queue_timeout = \"10s\"\n\
             [[pools]]\nname = \"small\"\nservers = [{{ url = \"{origin}\", max_connections = 1 }}]\n"
        );
        Proxy::start_with(outpost::Config::from_toml_str(&toml, &Default::default()).unwrap())
            .await
    })
    .await;
}

/// Under a cap of one connection to the origin (however `start` sets it, given the
/// origin's URL): a request held at the origin leaves two more waiting for a place; once
/// it is answered they take the released connection in turn, and the origin sees one
/// connection in all.
async fn three_requests_share_one_capped_connection<F, Started>(start: F)
where
    F: FnOnce(String) -> Started,
    Started: std::future::Future<Output = Proxy>,
{
    let gate = Gate::closed();
    let origin = Origin::start(vec![
        (
            "/held",
            Fixture::GatedWith {
                gate: gate.clone(),
                headers: cc("no-store"),
                body: Bytes::from_static(b"held"),
            },
        ),
        (
            "/b",
            Fixture::with_headers(200, &[("cache-control", "no-store")], "b"),
        ),
        (
            "/c",
            Fixture::with_headers(200, &[("cache-control", "no-store")], "c"),
        ),
    ])
    .await;
    let proxy = start(origin.url()).await;
    let fetch = |path: &str| {
        let url = proxy.url(path);
        tokio::spawn(async move { get(&url, &[]).await })
    };
    let held = fetch("/held");
    eventually("the held request at the origin", || {
        origin.hits("/held") == 1
    })
    .await;
    let (b, c) = (fetch("/b"), fetch("/c"));
    let outpost = proxy.outpost.proxy();
    eventually("both waiting for a place", || {
        outpost.upstream().connections_waiting() == 2
    })
    .await;
    gate.open();
    assert_eq!(held.await.unwrap().text(), "held");
    for (reply, body) in [(b.await.unwrap(), "b"), (c.await.unwrap(), "c")] {
        assert_eq!(reply.status, 200, "{body}");
        assert_eq!(reply.text(), body);
    }
    assert_eq!(origin.connections(), 1, "one connection, passed on");
}

/// When the cap on connections in all (`upstream.max_connections`) is what a new
/// connection waits for, the connection idle longest, to another origin, is closed for
/// it: otherwise the request would wait beside it until its idle timeout (here past
/// `connection_queue_timeout`: 503).
#[tokio::test]
async fn a_connection_waiting_on_the_total_cap_closes_another_origins_idle_one() {
    let no_store = |body| Fixture::with_headers(200, &[("cache-control", "no-store")], body);
    let first = Origin::start(vec![("/a", no_store("a"))]).await;
    let second = Origin::start(vec![("/b", no_store("b"))]).await;
    let upstream =
        "max_connections = 1\npool_idle_timeout = \"60s\"\nconnection_queue_timeout = \"10s\"";
    let proxy = Proxy::start_with_second_site(&first, &second, upstream).await;
    assert_eq!(get(&proxy.url("/a"), &[]).await.text(), "a");
    let outpost = proxy.outpost.proxy();
    assert_eq!(outpost.upstream().connections_in_use().0, 1, "pooled idle");
    let reply = get(&proxy.url("/b"), &[("host", "b.test")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "b");
    assert_eq!(get(&proxy.url("/a"), &[]).await.text(), "a");
    assert_eq!(
        (first.connections(), second.connections()),
        (2, 1),
        "the first origin's idle connection was closed for the second's"
    );
}

/// A connect that a released connection beats while the origin is already taking it (here
/// its TLS handshake is held) is finished and pooled, not dropped (RFC 9112 §9.3:
/// persistent connections are for reuse): the origin has spent an accept and a handshake
/// on it, and the next requests of a burst want it. So two requests at once afterwards
/// need no third connection.
#[tokio::test]
async fn a_connect_that_loses_to_a_released_connection_is_pooled() {
    let (response_gate, handshake_gate) = (Gate::closed(), Gate::closed());
    let held = |gate: &Gate, body: &'static [u8]| Fixture::GatedWith {
        gate: gate.clone(),
        headers: cc("no-store"),
        body: Bytes::from_static(body),
    };
    let second_gate = Gate::closed();
    let (origin, cert_pem) = Origin::start_tls_holding_handshakes(
        vec![
            ("/held", held(&response_gate, b"held")),
            ("/again", held(&second_gate, b"again")),
            (
                "/b",
                Fixture::with_headers(200, &[("cache-control", "no-store")], "b"),
            ),
        ],
        1,
        handshake_gate.clone(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert_pem).unwrap();
    let proxy = Proxy::start(
        &format!("https://localhost:{}", origin.addr.port()),
        &format!(
            "[upstream]\nca_file = \"{}\"\npool_idle_timeout = \"60s\"\n",
            ca.display()
        ),
    )
    .await;
    let fetch = |path: &str| {
        let url = proxy.url(path);
        tokio::spawn(async move { get(&url, &[]).await })
    };
    let held_reply = fetch("/held");
    eventually("the held request at the origin", || {
        origin.hits("/held") == 1
    })
    .await;
    // No idle connection: /b waits for a released one while it opens its own, whose
    // handshake the origin holds.
    let b = fetch("/b");
    eventually("the second connection accepted", || {
        origin.connections() == 2
    })
    .await;
    response_gate.open();
    assert_eq!(held_reply.await.unwrap().text(), "held");
    let b = b.await.unwrap();
    assert_eq!(b.status, 200);
    assert_eq!(b.text(), "b");
    assert_eq!(origin.hits("/b"), 1);
    // The connect /b no longer needed finishes now, and waits in the pool.
    handshake_gate.open();
    let outpost = proxy.outpost.proxy();
    eventually("the losing connect pooled", || {
        outpost.upstream().connections_in_use().0 == 2
    })
    .await;
    let (first, second) = (fetch("/again"), fetch("/b"));
    eventually("/again at the origin", || origin.hits("/again") == 1).await;
    assert_eq!(second.await.unwrap().text(), "b");
    second_gate.open();
    assert_eq!(first.await.unwrap().text(), "again");
    assert_eq!(origin.connections(), 2, "both pooled connections reused");
}
