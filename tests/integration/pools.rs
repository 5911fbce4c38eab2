//! Origin pools (issue 15) with three or more real origins on loopback and a real outpost:
//! selection by weight, by load and by key; passive ejection and active checks; failover
//! within a retry budget; draining; membership that follows name resolution.

use crate::support;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use outpost::config::FlagOverrides;
use outpost::Config;
use support::*;

/// Never stored: every request reaches an origin.
fn uncached(body: &str) -> Fixture {
    fixed(&[("cache-control", "no-store")], body)
}

async fn origins(
    count: usize,
    routes: impl Fn(usize) -> Vec<(&'static str, Fixture)>,
) -> Vec<Origin> {
    let mut started = Vec::new();
    for n in 0..count {
        started.push(Origin::start(routes(n)).await);
    }
    started
}

/// A proxy whose default site is the pool `app` of `servers` (URL, weight), with `extra`
/// lines in its `[[pools]]` table and `after` as further TOML.
async fn pool_proxy(servers: &[(String, u32)], extra: &str, after: &str) -> Proxy {
    let servers: Vec<String> = servers
        .iter()
        .map(|(url, weight)| format!("{{ url = \"{url}\", weight = {weight} }}"))
        .collect();
    let toml = format!(
        "pool = \"app\"\n{after}\n[[pools]]\nname = \"app\"\nservers = [{}]\n{extra}\n",
        servers.join(", ")
    );
    let config =
        Config::from_toml_str(&toml, &FlagOverrides::default()).expect("valid pool config");
    Proxy::start_with(config).await
}

/// An origin whose `/r` answers (uncached) only once `gate` opens.
async fn held_origin(gate: &Gate, body: &'static str) -> Origin {
    let fixture = Fixture::GatedWith {
        gate: gate.clone(),
        headers: header_list(&[("cache-control", "no-store")]),
        body: bytes::Bytes::from_static(body.as_bytes()),
    };
    Origin::start(vec![("/r", fixture)]).await
}

fn weighted(origins: &[Origin], weights: &[u32]) -> Vec<(String, u32)> {
    origins
        .iter()
        .zip(weights)
        .map(|(o, w)| (o.url(), *w))
        .collect()
}

fn member_state(proxy: &Proxy, address: &str) -> String {
    let pools = proxy.outpost.proxy();
    let pool = pools.pools().named("app").expect("pool app");
    let member = pool.members().into_iter().find(|m| m.address == address);
    member.map_or("absent".into(), |m| {
        m.state(std::time::Instant::now()).to_string()
    })
}

/// Smooth weighted round robin: 600 requests over weights 1, 2, 3 land within ±5% of
/// 100, 200 and 300.
#[tokio::test]
async fn round_robin_spreads_by_weight() {
    let origins = origins(3, |_| vec![("/r", uncached("ok"))]).await;
    let proxy = pool_proxy(&weighted(&origins, &[1, 2, 3]), "", "").await;
    for _ in 0..600 {
        assert_eq!(get(&proxy.url("/r"), &[]).await.status, 200);
    }
    for (origin, expected) in origins.iter().zip([100.0, 200.0, 300.0]) {
        let hits = origin.hits("/r") as f64;
        assert!(
            (hits - expected).abs() <= expected * 0.05,
            "{hits} for {expected}"
        );
    }
}

/// Least outstanding: a server still working on a request gets no more while others are
/// idle, where round robin would send it a third of them.
#[tokio::test]
async fn least_outstanding_sends_less_to_a_slow_server() {
    let gate = Gate::closed();
    let slow = held_origin(&gate, "slow").await;
    let fast = origins(2, |_| vec![("/r", uncached("fast"))]).await;
    let servers = vec![(slow.url(), 1), (fast[0].url(), 1), (fast[1].url(), 1)];
    let proxy = pool_proxy(&servers, "selection = \"least-outstanding\"", "").await;
    let mut held = Vec::new();
    let fast_addresses: Vec<String> = fast.iter().map(|o| o.addr.to_string()).collect();
    for n in 0..30 {
        // A fast server's last body may still be let go of after its client has it.
        eventually("the fast servers' bodies done", || {
            fast_addresses
                .iter()
                .all(|address| outstanding(&proxy, address) == 0)
        })
        .await;
        // Distinct URLs: misses for one URL would wait for the held one (coalescing).
        held.push(answered_or_held(proxy.url(&format!("/r?{n}")), &slow).await);
    }
    assert!(
        slow.hits("/r") <= 1,
        "the slow server got {}",
        slow.hits("/r")
    );
    assert_eq!(
        fast[0].hits("/r") + fast[1].hits("/r") + slow.hits("/r"),
        30
    );
    gate.open();
    for request in held {
        assert_eq!(request.await.unwrap().status, 200);
    }
}

/// A GET of `url` from a task of its own, once it is answered or `holder` has it (and
/// holds it: its `/r` waits at a gate).
async fn answered_or_held(url: String, holder: &Origin) -> tokio::task::JoinHandle<Reply> {
    let before = holder.hits("/r");
    let request = tokio::spawn(async move { get(&url, &[]).await });
    eventually("the request answered or held", || {
        request.is_finished() || holder.hits("/r") > before
    })
    .await;
    request
}

/// Requests `member` (its address) is counted as working on.
fn outstanding(proxy: &Proxy, address: &str) -> usize {
    let pools = proxy.outpost.proxy();
    let pool = pools.pools().named("app").expect("pool app");
    let member = pool.members().into_iter().find(|m| m.address == address);
    member.map_or(0, |m| m.outstanding())
}

/// Least outstanding counts a request until its response body is done, not only until
/// its head: a server still sending a body gets no more while another is idle (as nginx's
/// least_conn counts the connection).
#[tokio::test]
async fn least_outstanding_counts_a_body_still_being_sent() {
    let gate = Gate::closed();
    let busy = Origin::start(vec![(
        "/r",
        Fixture::Halves {
            headers: header_list(&[("cache-control", "no-store")]),
            first: bytes::Bytes::from_static(b"first half "),
            gate: gate.clone(),
            rest: bytes::Bytes::from_static(b"second half"),
        },
    )])
    .await;
    let idle = Origin::start(vec![("/r", uncached("idle"))]).await;
    let idle_address = idle.addr.to_string();
    let servers = vec![(busy.url(), 1), (idle.url(), 1)];
    let proxy = pool_proxy(&servers, "selection = \"least-outstanding\"", "").await;
    let mut held = Vec::new();
    for n in 0..10 {
        // The idle server's last body may still be let go of after its client has it.
        eventually("the idle server's bodies done", || {
            outstanding(&proxy, &idle_address) == 0
        })
        .await;
        held.push(answered_or_held(proxy.url(&format!("/r?{n}")), &busy).await);
    }
    assert_eq!(busy.hits("/r"), 1, "only the first that met it");
    assert_eq!(idle.hits("/r"), 9);
    gate.open();
    for request in held {
        assert_eq!(request.await.unwrap().status, 200);
    }
}

/// Consistent hashing on the cache key: every request for one URL goes to one server
/// (the ring itself is measured over 10k keys in `upstream::pool::select`).
#[tokio::test]
async fn consistent_hashing_keeps_each_key_on_one_server() {
    let paths: Vec<String> = (0..30).map(|n| format!("/k{n}")).collect();
    let mut origins = Vec::new();
    for _ in 0..3 {
        let routes = paths
            .iter()
            .map(|path| (path.as_str(), uncached("ok")))
            .collect();
        origins.push(Origin::start(routes).await);
    }
    let proxy = pool_proxy(
        &weighted(&origins, &[1, 1, 1]),
        "selection = \"consistent-hash\"",
        "",
    )
    .await;
    for path in &paths {
        for _ in 0..3 {
            assert_eq!(get(&proxy.url(path), &[]).await.status, 200);
        }
    }
    let mut used = [0; 3];
    for path in &paths {
        let counts: Vec<usize> = origins.iter().map(|o| o.hits(path)).collect();
        assert_eq!(
            counts.iter().filter(|c| **c > 0).count(),
            1,
            "{path}: {counts:?}"
        );
        assert_eq!(counts.iter().sum::<usize>(), 3);
        used[counts.iter().position(|c| *c > 0).unwrap()] += 1;
    }
    assert!(
        used.iter().all(|n| *n > 0),
        "every server gets keys: {used:?}"
    );
}

/// A server that fails is ejected after the configured consecutive failures (its clients
/// are answered by the others), is taken out by the active checks, and gets traffic again
/// once the checks pass.
#[tokio::test]
async fn a_failing_server_is_ejected_and_returns_after_checks_pass() {
    let healthy = Arc::new(AtomicBool::new(false));
    let switch = || Fixture::Switch {
        healthy: Arc::clone(&healthy),
        headers: header_list(&[("cache-control", "no-store")]),
        body: bytes::Bytes::from_static(b"s"),
    };
    let sick = Origin::start(vec![("/r", switch()), ("/health", switch())]).await;
    let good = origins(2, |_| {
        vec![("/r", uncached("ok")), ("/health", fixed(&[], "ok"))]
    })
    .await;
    let servers = vec![(sick.url(), 1), (good[0].url(), 1), (good[1].url(), 1)];
    let extra = "passive = { consecutive_failures = 2, ejection = \"1h\" }\n\
                 health = { path = \"/health\", interval = \"20ms\", timeout = \"1s\", \
                 healthy_threshold = 1, unhealthy_threshold = 1 }";
    let proxy = pool_proxy(&servers, extra, "").await;
    let sick_address = sick.addr.to_string();

    for _ in 0..30 {
        let reply = get(&proxy.url("/r"), &[]).await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "ok"));
    }
    assert!(
        sick.hits("/r") <= 2,
        "the failing server got {} requests",
        sick.hits("/r")
    );
    eventually("the checks to take the server out", || {
        member_state(&proxy, &sick_address) == "check-down"
    })
    .await;

    healthy.store(true, SeqCst);
    eventually("the checks to bring the server back", || {
        member_state(&proxy, &sick_address) == "up"
    })
    .await;
    let before = sick.hits("/r");
    for _ in 0..30 {
        assert_eq!(get(&proxy.url("/r"), &[]).await.status, 200);
    }
    assert!(
        sick.hits("/r") - before >= 5,
        "back in rotation: {}",
        sick.hits("/r") - before
    );
}

/// A client whose request body breaks (bad chunked framing, RFC 9112 §7.1) gets a 400
/// with `http_request_error` (RFC 9209 §2.3.2), not a 502 that blames the origin; and,
/// since it says nothing of the server's health, no client can eject servers so.
#[tokio::test]
async fn a_broken_request_body_is_the_clients_fault_and_ejects_no_server() {
    let only = Origin::start(vec![
        ("/upload", Fixture::CountBody),
        ("/r", uncached("ok")),
    ])
    .await;
    let extra = "passive = { consecutive_failures = 1, ejection = \"1h\" }";
    let proxy = pool_proxy(&[(only.url(), 1)], extra, "").await;
    for _ in 0..3 {
        let reply = raw_exchange(
            proxy.addr,
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\nnot-a-size\r\n",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert!(
            reply.contains("proxy-status: outpost; error=http_request_error"),
            "{reply}"
        );
    }
    assert_eq!(member_state(&proxy, &only.addr.to_string()), "up");
    let reply = get(&proxy.url("/r"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "ok"));
}

/// When every server answers 503, retries stay within the budget: 20% of the requests
/// plus the reserve, not the 3x that three attempts each would make.
#[tokio::test]
async fn a_retry_budget_bounds_the_extra_load_when_every_server_fails() {
    let failing = || Fixture::with_headers(503, &[("cache-control", "no-store")], "down");
    let origins = origins(3, |_| vec![("/r", failing())]).await;
    let extra = "passive = { consecutive_failures = 0 }\n\
                 retry = { max_attempts = 3, budget = 0.2, budget_reserve = 2 }";
    let proxy = pool_proxy(
        &weighted(&origins, &[1, 1, 1]),
        extra,
        "[cache]\nstale_on_error = \"0s\"",
    )
    .await;
    for _ in 0..100 {
        assert_eq!(get(&proxy.url("/r"), &[]).await.status, 503);
    }
    let total: usize = origins.iter().map(|o| o.hits("/r")).sum();
    assert!(
        (100..=122).contains(&total),
        "{total} origin requests for 100"
    );
}

/// Connection failures move a request to another server; when every one fails, the
/// 502's Proxy-Status names the last error and the attempts (RFC 9209 §2.1).
#[tokio::test]
async fn connection_failures_fail_over_and_the_last_error_counts_the_attempts() {
    let origin = Origin::start(vec![("/r", uncached("ok"))]).await;
    let dead = format!("http://{}", closed_port().await);
    let proxy = pool_proxy(&[(dead.clone(), 1), (origin.url(), 1)], "", "").await;
    for _ in 0..10 {
        let reply = get(&proxy.url("/r"), &[]).await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "ok"));
    }

    let (other, third) = (closed_port().await, closed_port().await);
    let all_dead = vec![
        (dead, 1),
        (format!("http://{other}"), 1),
        (format!("http://{third}"), 1),
    ];
    let proxy = pool_proxy(&all_dead, "retry = { max_attempts = 3 }", "").await;
    let reply = get(&proxy.url("/r"), &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.header("proxy-status"),
        Some("outpost; error=connection_refused; details=\"after 3 attempts\"")
    );
}

/// A drained server finishes the request it has and gets no new ones; enabled again, it
/// is back in rotation (admin `POST /origins/{pool}/{server}?state=...`, no reload).
#[tokio::test]
async fn a_drained_server_finishes_in_flight_and_gets_nothing_new() {
    let gate = Gate::closed();
    let first = held_origin(&gate, "first").await;
    let others = origins(2, |_| vec![("/r", uncached("other"))]).await;
    let servers = vec![(first.url(), 1), (others[0].url(), 1), (others[1].url(), 1)];
    let proxy = pool_proxy(&servers, "", "").await;
    let admin = start_admin(&proxy).await;

    let url = proxy.url("/r");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    eventually("the first server to have a request", || {
        first.hits("/r") == 1
    })
    .await;
    let admin_client = client();
    let steer = |state: &'static str| {
        let uri = format!("{admin}/origins/app/{}?state={state}", first.addr);
        send(
            &admin_client,
            http::Request::post(uri)
                .body(http_body_util::Full::default())
                .unwrap(),
        )
    };
    let drained = steer("drain").await;
    assert_eq!(drained.status, 200, "{}", drained.text());
    for n in 0..10 {
        // Distinct URLs: misses for one URL would wait for the held one (coalescing).
        let reply = get(&proxy.url(&format!("/r?{n}")), &[]).await;
        assert_eq!(reply.text(), "other");
    }
    assert_eq!(first.hits("/r"), 1);
    gate.open();
    assert_eq!(in_flight.await.unwrap().text(), "first");

    assert_eq!(steer("enable").await.status, 200);
    for n in 10..16 {
        get(&proxy.url(&format!("/r?{n}")), &[]).await;
    }
    assert!(first.hits("/r") > 1);
    let listing = get(&format!("{admin}/origins"), &[]).await.text();
    assert!(listing.contains("\"state\":\"up\""), "{listing}");
}

/// A server named by host name stands for the addresses the name resolves to, resolved
/// again every `resolve_interval`: a changed address (here in `upstream.hosts_file`) moves
/// the traffic.
#[tokio::test]
async fn pool_membership_follows_name_resolution() {
    let before = Origin::start(vec![("/r", uncached("before"))]).await;
    let port = before.addr.port();
    let _after = Origin::start_at(
        &format!("127.0.0.2:{port}"),
        vec![("/r", uncached("after"))],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 app.test\n").unwrap();
    let extra = "resolve_interval = \"20ms\"";
    let settings = format!("[upstream]\nhosts_file = \"{}\"", hosts.display());
    let proxy = pool_proxy(&[(format!("http://app.test:{port}"), 1)], extra, &settings).await;
    assert_eq!(get(&proxy.url("/r"), &[]).await.text(), "before");

    std::fs::write(&hosts, "127.0.0.2 app.test\n").unwrap();
    eventually_some("requests to reach the new address", || async {
        (get(&proxy.url("/r"), &[]).await.text() == "after").then_some(())
    })
    .await;
    assert_eq!(member_state(&proxy, &format!("127.0.0.2:{port}")), "up");
    assert_eq!(member_state(&proxy, &format!("127.0.0.1:{port}")), "absent");
}

/// Pass-through requests carrying the pool's sticky cookie stay on one server per session;
/// without it they are spread.
#[tokio::test]
async fn a_sticky_cookie_keeps_a_session_on_one_server() {
    let origins = origins(3, |_| vec![("/cart", uncached("ok"))]).await;
    let proxy = pool_proxy(
        &weighted(&origins, &[1, 1, 1]),
        "sticky_cookie = \"route\"",
        "",
    )
    .await;
    let poster = client();
    let post = |cookie: Option<String>| {
        let mut request = http::Request::post(proxy.url("/cart"));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        send(
            &poster,
            request.body(http_body_util::Full::default()).unwrap(),
        )
    };
    let hits = || -> Vec<usize> { origins.iter().map(|o| o.hits("/cart")).collect() };
    for session in ["a", "b", "c", "d", "e"] {
        let before = hits();
        for _ in 0..5 {
            let reply = post(Some(format!("theme=dark; route={session}"))).await;
            assert_eq!(reply.status, 200);
        }
        let gained: Vec<usize> = hits()
            .iter()
            .zip(&before)
            .map(|(now, then)| now - then)
            .collect();
        assert_eq!(
            gained.iter().filter(|g| **g > 0).count(),
            1,
            "{session}: {gained:?}"
        );
    }
    let before = hits();
    for _ in 0..6 {
        assert_eq!(post(None).await.status, 200);
    }
    let spread: Vec<usize> = hits()
        .iter()
        .zip(&before)
        .map(|(now, then)| now - then)
        .collect();
    assert!(
        spread.iter().all(|n| *n > 0),
        "without the cookie: {spread:?}"
    );
}

/// RFC 5861 §4, RFC 9111 §4.2.4: when no server of the pool may take requests (every one
/// fails its checks), a stored response answers stale instead of an error.
#[tokio::test]
async fn when_every_server_is_down_stored_responses_answer_stale() {
    let healthy = Arc::new(AtomicBool::new(true));
    let switch = || Fixture::Switch {
        healthy: Arc::clone(&healthy),
        headers: header_list(&[("cache-control", "max-age=0")]),
        body: bytes::Bytes::from_static(b"stored"),
    };
    let mut origins = Vec::new();
    for _ in 0..3 {
        origins.push(Origin::start(vec![("/doc", switch()), ("/health", switch())]).await);
    }
    let extra = "health = { path = \"/health\", interval = \"20ms\", timeout = \"1s\", \
                 healthy_threshold = 1, unhealthy_threshold = 1 }";
    let proxy = pool_proxy(&weighted(&origins, &[1, 1, 1]), extra, "").await;
    assert_eq!(get(&proxy.url("/doc"), &[]).await.text(), "stored");

    healthy.store(false, SeqCst);
    eventually("every server to fail its checks", || {
        origins
            .iter()
            .all(|o| member_state(&proxy, &o.addr.to_string()) == "check-down")
    })
    .await;
    let stale = get(&proxy.url("/doc"), &[]).await;
    assert_eq!(
        (stale.status.as_u16(), stale.text().as_str()),
        (200, "stored")
    );
    let status = cache_status(&stale);
    assert!(status.contains("fwd=stale"), "{status}");
    assert!(status.contains("destination_unavailable"), "{status}");
}
