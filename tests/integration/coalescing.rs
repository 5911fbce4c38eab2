//! Request coalescing and fills through a real outpost and origin: concurrent misses make
//! one origin fetch, a fill outlives its leader, uncacheable answers do not serialise the
//! next burst, and a broken or oversized body is never stored.

use crate::support;

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

/// Bodies above `cache.max_object_size` stream through and are not stored.
#[tokio::test]
async fn objects_over_max_size_are_streamed_uncached() {
    let origin = Origin::start(vec![(
        "/big",
        fixed(&[("cache-control", "max-age=60")], &"z".repeat(200_000)),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "[cache]\nmax_object_size = \"64KiB\"").await;
    let first = get(&proxy.url("/big"), &[]).await;
    assert_eq!(first.body.len(), 200_000);
    assert!(
        cache_status(&first).contains("detail=\"too-large\""),
        "{}",
        cache_status(&first)
    );
    get(&proxy.url("/big"), &[]).await;
    assert_eq!(origin.hits("/big"), 2);
}

/// Coalescing: 100 concurrent requests for one cold key reach the origin exactly once, and
/// every client gets the whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_cold_requests_make_one_origin_fetch() {
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/cold",
        Fixture::GatedWith {
            gate: gate.clone(),
            headers: cc("max-age=60"),
            body: Bytes::from(vec![b'c'; 50_000]),
        },
    )])
    .await;
    let proxy = Arc::new(Proxy::start(&origin.url(), "").await);
    let http = client();
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let http = http.clone();
            let url = proxy.url("/cold");
            tokio::spawn(async move {
                send(
                    &http,
                    Request::get(url).body(Full::new(Bytes::new())).unwrap(),
                )
                .await
            })
        })
        .collect();
    eventually("the fill to reach the origin", || origin.hits("/cold") > 0).await;
    gate.open();
    let mut collapsed_or_hit = 0;
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.body.len()), (200, 50_000));
        let status = cache_status(&reply);
        if status.contains("collapsed") || status.contains("; hit") {
            collapsed_or_hit += 1;
        }
    }
    assert_eq!(origin.hits("/cold"), 1);
    assert_eq!(collapsed_or_hit, 99);
}

/// Coalescing: the fill runs in its own task, so a leader whose client hangs up still fills
/// the cache for everyone after it.
#[tokio::test]
async fn leader_disconnect_still_fills_the_cache() {
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/lead",
        Fixture::GatedWith {
            gate: gate.clone(),
            headers: cc("max-age=60"),
            body: Bytes::from_static(b"filled"),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let leader = {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /lead HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        stream
    };
    eventually("the leader to reach the origin", || {
        origin.hits("/lead") > 0
    })
    .await;
    let url = proxy.url("/lead");
    let follower = tokio::spawn(async move { get(&url, &[("host", "a")]).await });
    drop(leader);
    gate.open();
    let reply = follower.await.unwrap();
    assert_eq!(reply.text(), "filled");
    let later = get(&proxy.url("/lead"), &[("host", "a")]).await;
    assert!(is_hit(&later), "{}", cache_status(&later));
    assert_eq!(origin.hits("/lead"), 1);
}

/// Hit-for-miss: once a URL answered uncacheable, the next burst goes to the origin in
/// parallel instead of queueing behind one request. (With the gate closed, every request
/// of the burst must reach the origin, or this test never finishes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uncacheable_response_does_not_serialise_the_next_burst() {
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/private",
        Fixture::GatedWith {
            gate: gate.clone(),
            headers: cc("private"),
            body: Bytes::from_static(b"mine"),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    gate.open();
    assert_eq!(get(&proxy.url("/private"), &[]).await.text(), "mine");
    gate.close();

    let burst: Vec<_> = (0..20)
        .map(|_| {
            let url = proxy.url("/private");
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    eventually(
        "every request of the burst to reach the origin while the first is still held",
        || origin.hits("/private") >= 21,
    )
    .await;
    gate.open();
    for request in burst {
        assert_eq!(request.await.unwrap().text(), "mine");
    }
}

/// A response refused storage only because its request carried Authorization (RFC 9111
/// §3.5) does not mark the URL hit-for-miss: requests without credentials, whose answer may
/// be stored, still share one fetch in the next burst (and it stores the answer). Marked,
/// each went to the origin on its own for `hit_for_miss_ttl`, as after an uncacheable
/// answer. (A request's own `no-store` was already left out the same way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_request_does_not_stop_the_next_burst_sharing_a_fetch() {
    let gate = Gate::closed();
    let half = Bytes::from(vec![b'd'; 32 << 10]);
    let origin = Origin::start(vec![(
        "/doc",
        Fixture::Halves {
            headers: cc("max-age=60"),
            first: half.clone(),
            gate: gate.clone(),
            rest: half,
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    gate.open();
    let authorized = get(&proxy.url("/doc"), &[("authorization", "Bearer secret")]).await;
    assert_eq!(authorized.body.len(), 64 << 10);
    proxy.outpost.proxy().cache().settle().await;
    gate.close();

    let mut burst = Vec::new();
    for _ in 0..3 {
        // One after the other, each up to its head: each has joined (or led) the fetch
        // before the next is asked for.
        let request = Request::get(proxy.url("/doc"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        burst.push(client().request(request).await.unwrap());
    }
    gate.open();
    for response in burst {
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body.len(), 64 << 10);
    }
    assert_eq!(origin.hits("/doc"), 2, "the burst shared one fetch");
    proxy.outpost.proxy().cache().settle().await;
    let again = get(&proxy.url("/doc"), &[]).await;
    assert!(is_hit(&again), "{:?}", again.header("cache-status"));
    assert_eq!(origin.hits("/doc"), 2);
}

/// An origin reset mid-body stores nothing: the next request goes to the origin again.
#[tokio::test]
async fn origin_reset_mid_body_stores_nothing() {
    let origin = RawOrigin::start(RawBehaviour::SendThenClose(Bytes::from_static(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 1000\r\n\r\npartial",
    )))
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for _ in 0..2 {
        assert!(
            origin_failure_shown(&proxy.url("/r")).await,
            "truncated body must abort or be a 502, and must not be served from cache"
        );
    }
}

/// Reads a response to the end of its connection: its head, and its chunked body decoded
/// as far as it goes, and whether the body was complete (its last chunk arrived).
async fn read_chunked_to_close(mut stream: tokio::net::TcpStream) -> (String, Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let (mut rest, mut body) = (&raw[end..], Vec::new());
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (head, body, false);
        };
        let size_text = String::from_utf8_lossy(&rest[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.trim(), 16).expect("a chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (head, body, true);
        }
        if rest.len() < size + 2 {
            body.extend_from_slice(&rest[..rest.len().min(size)]);
            return (head, body, false);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A burst of two for `/big`, a body that outgrows `cache.max_object_size` as it streams
/// (chunked, with `headers`), so it streams through unstored to both: a client that stops
/// reading leads, a normal one follows. The origin answers the next request as `next`
/// does. Returns the stalled connection and the follower's reply, which must come well
/// before the stalled client's 60 s send timeout (it waited for that before).
async fn burst_with_a_stalled_client(
    (headers, body): (HeaderList, Bytes),
    next: Fixture,
) -> (Origin, Proxy, tokio::net::TcpStream, Reply) {
    let gate = Gate::closed();
    let first = Fixture::GatedThen {
        gate: gate.clone(),
        then: Box::new(Fixture::Chunked { headers, body }),
    };
    let origin = Origin::start(vec![("/big", Fixture::sequence(vec![first, next]))]).await;
    let proxy = Proxy::start(&origin.url(), "[cache]\nmax_object_size = \"1MiB\"\n").await;
    let stalled = stalled_client(proxy.addr, "/big").await;
    eventually("the fill to reach the origin", || origin.hits("/big") == 1).await;
    let url = proxy.url("/big");
    let follower = tokio::spawn(async move { get(&url, &[]).await });
    let metrics = Arc::clone(proxy.outpost.proxy().metrics());
    eventually("the follower to join the fill", || {
        metrics.coalesced_waiting.get() == 1
    })
    .await;
    gate.open();
    let reply = tokio::time::timeout(std::time::Duration::from_secs(30), follower)
        .await
        .expect("the follower is not held to the stalled client")
        .unwrap();
    (origin, proxy, stalled, reply)
}

/// 16 MiB of a pattern that never repeats at a chunk boundary.
fn big_body(seed: u8) -> Bytes {
    Bytes::from(
        (0..16u32 << 20)
            .map(|i| (i % 251) as u8 ^ seed)
            .collect::<Vec<u8>>(),
    )
}

/// RFC 9110 §14.2 and §13.1.5: a client that stops reading a body streaming through
/// unstored does not hold the other clients of its burst to its pace (before, they waited
/// for it until its send timeout). Left a window behind, it goes on by its own request for
/// the rest, `Range` with `If-Range` of the strong entity tag, and once it reads again it
/// receives every byte, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_left_to_the_origin_and_holds_back_no_one() {
    let body = big_body(0);
    let headers = header_list(&[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
    let rest = Fixture::Ranged {
        headers: headers.clone(),
        body: body.clone(),
    };
    let (origin, proxy, stalled, reply) =
        burst_with_a_stalled_client((headers, body.clone()), rest).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == body, "the follower's body is the origin's");

    let (head, received, complete) = read_chunked_to_close(stalled).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(complete, "the stalled client's body ends cleanly");
    assert!(received == body, "every byte, in order");
    assert_eq!(
        origin.hits("/big"),
        2,
        "one fill and one request for the rest"
    );
    let resumed = origin.last("/big");
    let range = resumed.headers["range"].to_str().unwrap();
    assert!(
        range.starts_with("bytes=") && range.ends_with('-'),
        "{range}"
    );
    assert_ne!(range, "bytes=0-", "from where the client was left");
    assert_eq!(resumed.headers["if-range"], "\"v1\"");
    assert_eq!(proxy.outpost.proxy().metrics().fill_resumes.get(), 1);
}

/// RFC 7239 §4 and RFC 9110 §7.6: a follower left behind asks for the rest on its own
/// client's behalf. The origin sees that client in its forwarding fields, not the client
/// whose request started the fill (both behind a trusted proxy, so each names its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_left_behind_asks_for_the_rest_as_its_own_client() {
    let body = big_body(0);
    let headers = header_list(&[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
    let gate = Gate::closed();
    let first = Fixture::GatedThen {
        gate: gate.clone(),
        then: Box::new(Fixture::Chunked {
            headers: headers.clone(),
            body: body.clone(),
        }),
    };
    let rest = Fixture::Ranged {
        headers,
        body: body.clone(),
    };
    let origin = Origin::start(vec![("/big", Fixture::sequence(vec![first, rest]))]).await;
    let proxy = Proxy::start(
        &origin.url(),
        "[cache]\nmax_object_size = \"1MiB\"\n[forwarding]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .await;
    let url = proxy.url("/big");
    let leader =
        tokio::spawn(async move { get(&url, &[("x-forwarded-for", "198.51.100.1")]).await });
    eventually("the fill to reach the origin", || origin.hits("/big") == 1).await;
    let stalled = stalled_client_with(proxy.addr, "/big", "X-Forwarded-For: 203.0.113.9\r\n").await;
    let metrics = Arc::clone(proxy.outpost.proxy().metrics());
    eventually("the stalled client to join the fill", || {
        metrics.coalesced_waiting.get() == 1
    })
    .await;
    gate.open();
    let reply = tokio::time::timeout(std::time::Duration::from_secs(30), leader)
        .await
        .expect("the leader is not held to the stalled follower")
        .unwrap();
    assert!(reply.body == body);
    let first = origin.last("/big");
    assert!(first.headers.get("range").is_none());
    assert!(
        first.headers["x-forwarded-for"]
            .to_str()
            .unwrap()
            .starts_with("198.51.100.1"),
        "the fill is the leader's request"
    );

    let (_head, received, complete) = read_chunked_to_close(stalled).await;
    assert!(complete && received == body, "every byte, in order");
    let resumed = origin.last("/big");
    assert!(
        resumed.headers.get("range").is_some(),
        "the request for the rest"
    );
    let forwarded_for: Vec<_> = resumed
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect();
    assert_eq!(forwarded_for, ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(resumed.headers["x-real-ip"], "203.0.113.9");
    let forwarded = resumed.headers["forwarded"].to_str().unwrap();
    assert!(forwarded.contains("for=127.0.0.1"), "{forwarded}");
    assert!(!format!("{:?}", resumed.headers).contains("198.51.100.1"));
}

/// RFC 9110 §13.1.5: when the representation changed in between, the origin answers the
/// request for the rest with the whole new one (its If-Range fails): the client left behind
/// gets an aborted response, never the old body's start spliced to the new one's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_left_behind_never_gets_two_representations_spliced() {
    let old = big_body(0);
    let headers = header_list(&[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
    // What an origin honouring If-Range sends once the tag has changed.
    let changed = Fixture::Chunked {
        headers: header_list(&[("cache-control", "max-age=60"), ("etag", "\"v2\"")]),
        body: big_body(7),
    };
    let (_origin, _proxy, stalled, reply) =
        burst_with_a_stalled_client((headers, old.clone()), changed).await;
    assert!(reply.body == old);

    let (head, received, complete) = read_chunked_to_close(stalled).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!complete, "the response is aborted, not ended cleanly");
    assert!(received.len() < old.len());
    assert!(
        received[..] == old[..received.len()],
        "only the old body's bytes"
    );
}

/// A body with no strong validator cannot be asked for again from an offset (RFC 9110
/// §13.1.5: If-Range needs one), so a client that stops reading it cannot be left to the
/// origin. It still does not hold the rest of its burst to its pace: after a longer grace
/// its response is cut off (aborted, never ended as if complete), and nothing more is
/// asked of the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_of_a_body_that_cannot_resume_is_cut_off() {
    let body = big_body(3);
    let headers = header_list(&[("cache-control", "max-age=60")]);
    let (origin, _proxy, stalled, reply) =
        burst_with_a_stalled_client((headers, body.clone()), Fixture::ok("not asked")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == body, "the follower's body is the origin's");

    let (head, received, complete) = read_chunked_to_close(stalled).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!complete, "the response is aborted, not ended cleanly");
    assert!(received[..] == body[..received.len()]);
    assert_eq!(origin.hits("/big"), 1, "nothing asked of the origin again");
}
