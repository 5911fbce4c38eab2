//! Bounded fills: what one origin fetch, and many of them, may cost. Caps on fills and
//! origin connections (a bounded queue, then 503 with RFC 9209 `connection_limit_reached`),
//! fills nobody reads are abandoned, the origin body stalling between chunks ends at the
//! body-read timeout, and a burst for an object only on disk reads it once.

use crate::support;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use support::{eventually, get, head_then_hang_up, Fixture, Gate, OpenBodies, Origin, Proxy};

/// The attack of issue 11: cache-busting requests for a large, slow object, each closed
/// once the head arrives. Origin connections stay at the cap, every abandoned download is
/// stopped, and fills hold no memory afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_cache_busting_requests_stay_within_the_fill_cap() {
    let open = OpenBodies::default();
    let origin = Origin::start(vec![(
        "/big",
        Fixture::Held {
            first: Bytes::from(vec![b'x'; 64 << 10]),
            declared: 64 << 20,
            open: open.clone(),
            headers: Vec::new(),
        },
    )])
    .await;
    let proxy = Proxy::start(
        &origin.url(),
        // Storable in memory (the costliest case), four fills and four origin connections.
        "[cache]\nmax_object_size = \"100MiB\"\nmax_fills_per_origin = 4\nfill_queue = 100\n\
         unread_fill_limit = \"1MiB\"\n[upstream]\nmax_connections_per_origin = 4\n",
    )
    .await;
    let clients: Vec<_> = (0..40)
        .map(|n| {
            let addr = proxy.addr;
            tokio::spawn(async move { head_then_hang_up(addr, &format!("/big?bust={n}")).await })
        })
        .collect();
    for client in clients {
        let status = client.await.unwrap();
        assert!(status.contains(" 200 "), "{status}");
    }
    let outpost = proxy.outpost.proxy();
    let (_, most_at_once) = outpost.upstream().connections_in_use();
    let most_fills = outpost.cache().fills_in_use().1;
    assert!(most_fills <= 4, "{most_fills} fills at once; the cap is 4");
    assert!(
        most_at_once <= 4,
        "{most_at_once} origin connections were open at once; the cap is 4"
    );
    assert_eq!(
        origin.hits("/big"),
        40,
        "one origin request per client ({} sent again after a closing connection)",
        outpost.metrics().origin_retries.get()
    );
    eventually("every abandoned download to stop", || {
        open.now() == 0 && outpost.upstream().connections_in_use().0 == 0
    })
    .await;
    eventually("fills to release their memory", || {
        outpost.metrics().fill_bytes.get() == 0
    })
    .await;
}

/// With every fill slot taken and no queue, another miss gets 503 at once with
/// `Proxy-Status: ...; error=connection_limit_reached` (RFC 9209 §2.3.12), not a wait.
#[tokio::test]
async fn a_full_fill_cap_answers_503_with_proxy_status() {
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/slow",
        Fixture::GatedWith {
            gate: gate.clone(),
            headers: support::header_list(&[("cache-control", "max-age=60")]),
            body: Bytes::from_static(b"eventually"),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "[cache]\nmax_fills = 1\nfill_queue = 0\n").await;
    let first = {
        let url = proxy.url("/slow?n=1");
        tokio::spawn(async move { get(&url, &[]).await })
    };
    eventually("the first fill to reach the origin", || {
        origin.hits("/slow") == 1
    })
    .await;
    let refused = get(&proxy.url("/slow?n=2"), &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let proxy_status = refused.header("proxy-status").unwrap();
    assert!(
        proxy_status.contains("error=connection_limit_reached"),
        "{proxy_status}"
    );
    gate.open();
    assert_eq!(first.await.unwrap().text(), "eventually");
    assert_eq!(
        get(&proxy.url("/slow?n=2"), &[]).await.text(),
        "eventually",
        "a slot is free again"
    );
}

/// RFC 9112 §6.3 / issue 11: an origin that sends its head and part of the body, then
/// stalls, ends at `upstream.body_read_timeout`: the client's response is aborted (never a
/// clean end of a truncated body) and nothing is stored.
#[tokio::test]
async fn an_origin_stalling_after_its_head_ends_at_the_body_read_timeout() {
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/stalls",
        Fixture::Halves {
            headers: support::header_list(&[("cache-control", "max-age=60")]),
            first: Bytes::from_static(b"first half, "),
            gate: gate.clone(),
            rest: Bytes::from_static(b"second half"),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "[upstream]\nbody_read_timeout = \"200ms\"\n").await;
    let request = http::Request::get(proxy.url("/stalls"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let response = support::client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await;
    assert!(body.is_err(), "a truncated body must not end cleanly");
    gate.open();
    let again = get(&proxy.url("/stalls"), &[]).await;
    assert_eq!(again.text(), "first half, second half");
    assert_eq!(
        origin.hits("/stalls"),
        2,
        "the stalled response was not stored"
    );
}

/// A burst of 100 requests for an object that is only on disk (after a restart) reads it
/// from disk once; the other requests wait for that promotion and hit memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_for_a_disk_only_object_makes_one_disk_read() {
    let dir = tempfile::tempdir().unwrap();
    let body = "stored before the restart ".repeat(100);
    let origin = Origin::start(vec![(
        "/on-disk",
        Fixture::with_headers(200, &[("cache-control", "max-age=3600")], &body),
    )])
    .await;
    let toml = format!("[cache]\ndir = \"{}\"\n", dir.path().display());
    let first = Proxy::start(&origin.url(), &toml).await;
    assert_eq!(
        get(&first.url("/on-disk"), &[("host", "a")]).await.text(),
        body
    );
    first.stop().await;

    let proxy = Proxy::start(&origin.url(), &toml).await;
    let burst: Vec<_> = (0..100)
        .map(|_| {
            let url = proxy.url("/on-disk");
            tokio::spawn(async move { get(&url, &[("host", "a")]).await })
        })
        .collect();
    for reply in burst {
        assert_eq!(reply.await.unwrap().text(), body);
    }
    assert_eq!(origin.hits("/on-disk"), 1, "every request was a hit");
    assert_eq!(proxy.outpost.proxy().metrics().disk_loads.get(), 1);
}

/// A small storable object still finishes and is stored when its only client hangs up
/// (the unread limit spares it), so the next request is a hit.
#[tokio::test]
async fn a_small_fill_whose_client_left_is_still_stored() {
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/small",
        Fixture::Halves {
            headers: support::header_list(&[("cache-control", "max-age=60")]),
            first: Bytes::from_static(b"small "),
            gate: gate.clone(),
            rest: Bytes::from_static(b"object"),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let status = head_then_hang_up(proxy.addr, "/small").await;
    assert!(status.contains(" 200 "), "{status}");
    gate.open();
    let proxy_ref = proxy.outpost.proxy();
    eventually("the fill to be stored", || {
        proxy_ref.cache().coalescer().in_flight() == 0
    })
    .await;
    let reply = get(&proxy.url("/small"), &[("host", "a")]).await;
    assert_eq!(reply.text(), "small object");
    assert_eq!(
        origin.hits("/small"),
        1,
        "{:?}",
        reply.header("cache-status")
    );
}

/// The GET of `url` up to its response head: the fill behind it has begun (its head is
/// published when the fill starts); the body is read later.
async fn head_of(url: &str) -> http::Response<hyper::body::Incoming> {
    let request = http::Request::get(url)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    support::client().request(request).await.unwrap()
}

/// Whether the response's Cache-Status says the cache is storing it (RFC 9211 §2.5).
fn says_stored(response: &http::Response<hyper::body::Incoming>) -> bool {
    let status = response.headers()["cache-status"].to_str().unwrap();
    status.split(';').any(|param| param.trim() == "stored")
}

/// An origin answering each of `paths` with 600 KiB (`max-age=60`) in two halves, the
/// second held at `gate`, behind an 8 MiB memory tier: 1 MiB for fills, room for one body.
async fn halves_behind_a_small_tier(paths: &[&'static str], gate: &Gate) -> (Origin, Proxy) {
    let half = Bytes::from(vec![b'h'; 300 << 10]);
    let routes = paths
        .iter()
        .map(|path| {
            let fixture = Fixture::Halves {
                headers: support::cc("max-age=60"),
                first: half.clone(),
                gate: gate.clone(),
                rest: half.clone(),
            };
            (*path, fixture)
        })
        .collect();
    let origin = Origin::start(routes).await;
    let proxy = Proxy::start(
        &origin.url(),
        "[cache]\nmemory_capacity = \"8MiB\"\nmax_object_size = \"2MiB\"\n",
    )
    .await;
    (origin, proxy)
}

/// Reads each response whole (every client gets every byte of its `len`), then waits for
/// the fills to settle.
async fn read_whole_then_settle(
    proxy: &Proxy,
    responses: Vec<http::Response<hyper::body::Incoming>>,
    len: usize,
) {
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), len, "every client gets the whole body");
    }
    let outpost = proxy.outpost.proxy();
    eventually("the fills to settle", || {
        outpost.cache().coalescer().in_flight() == 0
    })
    .await;
}

/// The fills' memory budget (by default an eighth of the memory tier) is shared out when
/// each fill begins, by declared length: with room for one body, the first is kept to its
/// end and stored, and those that begin while it is kept stream through unstored. Counted
/// only as bytes arrived, fills that all began within the budget passed it together, and
/// which of them kept their bodies depended on the order their last chunks came in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fills_memory_budget_goes_to_the_fills_that_began_first() {
    let gate = Gate::closed();
    let paths = ["/first", "/second", "/third"];
    let (origin, proxy) = halves_behind_a_small_tier(&paths, &gate).await;
    let mut responses = Vec::new();
    for path in paths {
        // One after the other: each fill has begun before the next is asked for.
        responses.push(head_of(&proxy.url(path)).await);
    }
    let said_stored: Vec<bool> = responses.iter().map(says_stored).collect();
    assert_eq!(
        said_stored,
        [true, false, false],
        "RFC 9211 §2.5: `stored` only for the body being stored"
    );
    gate.open();
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 600 << 10, "every client gets the whole body");
    }
    let outpost = proxy.outpost.proxy();
    eventually("the fills to settle", || {
        outpost.cache().coalescer().in_flight() == 0
    })
    .await;
    for path in paths {
        let again = get(&proxy.url(path), &[]).await;
        assert_eq!(again.body.len(), 600 << 10);
    }
    assert_eq!(
        origin.hits("/first"),
        1,
        "the first body was kept and stored"
    );
    assert_eq!(origin.hits("/second"), 2, "no room was left for the second");
    assert_eq!(origin.hits("/third"), 2, "no room was left for the third");
    assert_eq!(outpost.metrics().fill_bytes.get(), 0);
}

/// A body streamed through only because the fills' memory budget was taken (it was not
/// too large to keep) does not mark its URL as uncacheable: the next burst for it shares
/// one fetch again (RFC 9111 §4: a cache may keep one fetch for concurrent requests), and
/// that fetch stores it. Marked like a body too large to keep, each request of the burst
/// went to the origin on its own, the herd a node under load is there to absorb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_refused_only_for_the_fills_budget_is_fetched_once_by_the_next_burst() {
    let gate = Gate::closed();
    let (origin, proxy) = halves_behind_a_small_tier(&["/first", "/second"], &gate).await;
    let first = head_of(&proxy.url("/first")).await;
    let second = head_of(&proxy.url("/second")).await;
    assert!(says_stored(&first) && !says_stored(&second));
    gate.open();
    read_whole_then_settle(&proxy, vec![first, second], 600 << 10).await;

    gate.close();
    let mut burst = Vec::new();
    for _ in 0..3 {
        // One after the other: each has joined (or led) before the next is asked for.
        burst.push(head_of(&proxy.url("/second")).await);
    }
    gate.open();
    read_whole_then_settle(&proxy, burst, 600 << 10).await;
    assert_eq!(origin.hits("/second"), 2, "the burst shared one fetch");
    let again = get(&proxy.url("/second"), &[]).await;
    assert!(
        support::is_hit(&again),
        "{:?}",
        again.header("cache-status")
    );
    assert_eq!(origin.hits("/second"), 2, "and it stored the body");
}

/// A body larger than the fills' memory budget but within `max_object_size` is still kept
/// when no other fill holds memory: a small budget does not keep large objects out.
#[tokio::test]
async fn a_body_larger_than_the_fills_budget_is_kept_when_it_is_the_only_fill() {
    let body = "b".repeat(1536 << 10);
    let origin = Origin::start(vec![(
        "/large",
        support::fixed(&[("cache-control", "max-age=60")], &body),
    )])
    .await;
    // A 1 MiB budget (an eighth of 8 MiB) for a 1.5 MiB body.
    let proxy = Proxy::start(
        &origin.url(),
        "[cache]\nmemory_capacity = \"8MiB\"\nmax_object_size = \"2MiB\"\n",
    )
    .await;
    assert_eq!(get(&proxy.url("/large"), &[]).await.body.len(), body.len());
    let outpost = proxy.outpost.proxy();
    eventually("the fill to settle", || {
        outpost.cache().coalescer().in_flight() == 0
    })
    .await;
    let again = get(&proxy.url("/large"), &[]).await;
    assert_eq!(again.body.len(), body.len());
    assert_eq!(
        origin.hits("/large"),
        1,
        "{:?}",
        again.header("cache-status")
    );
}

/// The GET of `path` with a fixed Host (so the cache keys, and the memory policy's
/// decisions on them, are the same on every run) up to its response head.
async fn head_with_fixed_host(proxy: &Proxy, path: &str) -> http::Response<hyper::body::Incoming> {
    let request = http::Request::get(proxy.url(path))
        .header("host", "fills.test")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    support::client().request(request).await.unwrap()
}

/// Three 600 KiB bodies asked for once each, begun together behind a closed gate, in an
/// 8 MiB tier (16 MiB less the fills' budget) whose fills' budget (8 MiB) has room for all three; how many of their
/// bodies the fills kept in memory (committed against the budget) while the gate was shut,
/// and which of the three responses said they were being stored (RFC 9211 §2.5 `stored`).
/// Every client still gets every byte.
async fn newcomer_bytes_kept(fill_the_tier_first: bool) -> (u64, Vec<bool>) {
    let gate = Gate::closed();
    let half = Bytes::from(vec![b'h'; 300 << 10]);
    let newcomer = Fixture::Halves {
        headers: support::cc("max-age=60"),
        first: half.clone(),
        gate: gate.clone(),
        rest: half,
    };
    let pad = Fixture::with_headers(
        200,
        &[("cache-control", "max-age=3600")],
        &"p".repeat(256 << 10),
    );
    let origin = Origin::start(vec![("/new", newcomer), ("/pad", pad)]).await;
    let proxy = Proxy::start(
        &origin.url(),
        "[cache]\nmemory_capacity = \"16MiB\"\nmax_object_size = \"2MiB\"\nfill_memory_budget = \"8MiB\"\n",
    )
    .await;
    if fill_the_tier_first {
        // 10 MiB of 256 KiB objects asked for once each: the tier is full of them.
        for n in 0..40 {
            let reply = get(
                &proxy.url(&format!("/pad?n={n}")),
                &[("host", "fills.test")],
            )
            .await;
            assert_eq!(reply.body.len(), 256 << 10);
        }
    }
    let mut responses = Vec::new();
    for n in 0..3 {
        responses.push(head_with_fixed_host(&proxy, &format!("/new?n={n}")).await);
    }
    let outpost = proxy.outpost.proxy();
    let kept = outpost.cache().coalescer().committed_bytes();
    let said_stored = responses.iter().map(says_stored).collect();
    gate.open();
    read_whole_then_settle(&proxy, responses, 600 << 10).await;
    assert_eq!(outpost.cache().coalescer().committed_bytes(), 0);
    (kept, said_stored)
}

/// Once the tier is full, bodies asked for once enter it only through its admission
/// window (1% of it) and leave it at once unless asked for again; a newcomer larger than
/// the window and the free room loses its contest, so the tier declines it on sight, and
/// its body is not kept in memory for it: all three stream through. Fills of a full tier
/// then cost the window, not the fills' whole budget (issue 17, target 6); before, the
/// first of the three was kept, and declined once stored. It also pins that a miss
/// counts as one request for the policy, as `outpost replay` counts it: counted twice,
/// each newcomer looked asked for before, and all three were kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomers_past_a_full_tiers_window_are_not_kept_in_memory() {
    let (kept, said_stored) = newcomer_bytes_kept(true).await;
    assert_eq!(kept, 0);
    assert_eq!(
        said_stored,
        [false, false, false],
        "Cache-Status says `stored` only for a body being stored"
    );
}

/// A tier with room keeps every newcomer's body, as before: the window bounds newcomers
/// only once the tier is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomers_are_all_kept_while_the_tier_has_room() {
    let (kept, said_stored) = newcomer_bytes_kept(false).await;
    assert_eq!(kept, 3 * (600 << 10));
    assert_eq!(said_stored, [true, true, true]);
}

/// A client that asks again right after cancelling a large download (a browser's retry,
/// a package manager's next attempt) gets the whole body: it joins the download while it
/// runs, which then goes on for it, or, once the download is being stopped, starts
/// another from the bytes the stopped one brought (RFC 9111 §3.3: asked for the rest
/// alone, with If-Range). It used to be able to join a download in the middle of being
/// stopped (while what had arrived was read back from its disk file to be kept) and got a
/// response cut short: `curl` exited with "transfer closed with outstanding read data".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_right_after_a_cancel_gets_the_whole_body() {
    const PATHS: [&str; 8] = [
        "/0.iso", "/1.iso", "/2.iso", "/3.iso", "/4.iso", "/5.iso", "/6.iso", "/7.iso",
    ];
    let dir = tempfile::tempdir().unwrap();
    let whole: Bytes = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
    let gate = Gate::closed();
    let headers = support::header_list(&[("cache-control", "max-age=600"), ("etag", "\"r1\"")]);
    let routes = PATHS
        .iter()
        .map(|path| {
            let fixture = Fixture::Halves {
                headers: headers.clone(),
                first: whole.slice(..8 << 20),
                gate: gate.clone(),
                rest: whole.slice(8 << 20..),
            };
            (*path, fixture)
        })
        .collect();
    let origin = Origin::start(routes).await;
    // Bodies go to disk files, and a fill nobody reads stops at once.
    let config = format!(
        "[cache]\nunread_fill_limit = \"64KiB\"\nmax_object_size = \"64KiB\"\ndir = \"{}\"\n",
        dir.path().display()
    );
    let proxy = Proxy::start(&origin.url(), &config).await;
    let mut retries = Vec::new();
    // The window a retry could land in is narrow: several rounds make landing in it near
    // certain where it can happen.
    for path in PATHS {
        let url = proxy.url(path);
        let mut cancelled = head_of(&url).await.into_body();
        support::read_at_least(&mut cancelled, 100).await;
        drop(cancelled);
        let retry = head_of(&url).await;
        assert_eq!(retry.status(), StatusCode::OK, "{path}");
        retries.push(tokio::spawn(retry.into_body().collect()));
    }
    gate.open();
    for (path, retry) in PATHS.iter().zip(retries) {
        let body = retry.await.unwrap();
        let body = body.unwrap_or_else(|err| panic!("{path}: cut short: {err}"));
        assert!(body.to_bytes() == whole, "{path}: the whole body");
        // Either the retry joined the download, or it asked for what it had not brought.
        match origin.hits(path) {
            1 => {}
            2 => {
                let asked = origin.last(path).headers;
                let if_range = asked.get("if-range").and_then(|value| value.to_str().ok());
                assert_eq!(if_range, Some("\"r1\""), "{path}: {asked:?}");
            }
            hits => panic!("{path}: {hits} origin requests"),
        }
    }
}
