//! Operating outpost through its admin listener and the PURGE method: metrics that move as
//! requests are served, purge by URL, prefix and tag (hard and soft), and who may purge.

use crate::support;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

/// Parses the exposition text into `name{labels} -> value`.
async fn scrape(admin: &str) -> HashMap<String, f64> {
    let reply = get(&format!("{admin}/metrics"), &[]).await;
    assert_eq!(reply.status, 200);
    reply
        .text()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Scrapes until `done` holds (or the test's patience runs out).
async fn scrape_until(
    admin: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    eventually_some("metrics to reach the expected values", || async {
        let metrics = scrape(admin).await;
        done(&metrics).then_some(metrics)
    })
    .await
}

/// An outpost whose configuration (TOML) is read from `text`, again on every reload.
async fn reloadable(text: &Arc<std::sync::Mutex<String>>) -> Proxy {
    let source = Arc::clone(text);
    let loader: outpost::ConfigLoader = Box::new(move || {
        outpost::Config::from_toml_str(&source.lock().unwrap(), &Default::default())
    });
    let initial =
        outpost::Config::from_toml_str(&text.lock().unwrap(), &Default::default()).unwrap();
    Proxy::start_outpost(outpost::Outpost::new(initial).unwrap().with_loader(loader)).await
}

async fn post(url: &str) -> Reply {
    send(
        &client(),
        Request::post(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

fn cached(body: &str) -> Fixture {
    Fixture::with_headers(200, &[("cache-control", "max-age=600")], body)
}

#[tokio::test]
async fn metrics_move_as_requests_are_served() {
    let origin = Origin::start(vec![("/m", cached("m"))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let admin = start_admin(&proxy).await;
    get(&proxy.url("/m"), &[]).await;
    get(&proxy.url("/m"), &[]).await;
    get(&proxy.url("/m"), &[]).await;
    let dead = Proxy::start(&format!("http://{}", closed_port().await), "").await;
    get(&dead.url("/x"), &[]).await;

    // Requests are counted when the server drops a finished response body, which can be
    // just after the client has read it: scrape until all three are in.
    let hits = "outpost_requests_total{cache=\"hit\",method=\"GET\"}";
    let metrics = scrape_until(&admin, |m| m.get(hits) == Some(&2.0)).await;
    assert_eq!(
        metrics["outpost_requests_total{cache=\"uri-miss\",method=\"GET\"}"],
        1.0
    );
    assert_eq!(
        metrics["outpost_requests_total{cache=\"hit\",method=\"GET\"}"],
        2.0
    );
    assert_eq!(metrics["outpost_origin_requests_total"], 1.0);
    assert_eq!(
        metrics["outpost_response_bytes_total{source=\"memory\"}"],
        2.0
    );
    assert_eq!(metrics["outpost_cache_entries{tier=\"memory\"}"], 1.0);
    assert!(metrics["outpost_cache_bytes{tier=\"memory\"}"] > 0.0);
    assert_eq!(metrics["outpost_origin_response_seconds_count"], 1.0);
    assert!(metrics.contains_key("outpost_open_connections"));

    let dead_metrics = scrape(&start_admin(&dead).await).await;
    assert_eq!(
        dead_metrics["outpost_origin_errors_total{error=\"connection_refused\"}"],
        1.0
    );
}

/// Purge by URL removes every variant; the next request is a miss.
#[tokio::test]
async fn purge_by_url_removes_all_variants() {
    let origin = Origin::start(vec![(
        "/v",
        Fixture::Echo {
            name: "accept-language",
            headers: header_list(&[
                ("cache-control", "max-age=600"),
                ("vary", "accept-language"),
            ]),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let admin = start_admin(&proxy).await;
    for language in ["en", "fr"] {
        get(
            &proxy.url("/v"),
            &[("host", "site.test"), ("accept-language", language)],
        )
        .await;
    }
    let reply = post(&format!("{admin}/purge?url=http://site.test/v")).await;
    assert_eq!(reply.text().trim(), r#"{"purged":2,"soft":false}"#);
    let again = get(
        &proxy.url("/v"),
        &[("host", "site.test"), ("accept-language", "en")],
    )
    .await;
    assert!(!is_hit(&again));
    assert_eq!(origin.hits("/v"), 3);
}

/// Purge by prefix removes everything under it and nothing else.
#[tokio::test]
async fn purge_by_prefix() {
    let origin = Origin::start(vec![
        ("/a/1", cached("1")),
        ("/a/2", cached("2")),
        ("/b/1", cached("3")),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let admin = start_admin(&proxy).await;
    for path in ["/a/1", "/a/2", "/b/1"] {
        get(&proxy.url(path), &[("host", "site.test")]).await;
    }
    let reply = post(&format!("{admin}/purge?prefix=http://site.test/a/")).await;
    assert_eq!(reply.text().trim(), r#"{"purged":2,"soft":false}"#);
    assert!(!is_hit(
        &get(&proxy.url("/a/1"), &[("host", "site.test")]).await
    ));
    assert!(is_hit(
        &get(&proxy.url("/b/1"), &[("host", "site.test")]).await
    ));
}

/// Purge by tag: Cache-Groups (RFC 9875) and Surrogate-Key both tag responses.
#[tokio::test]
async fn purge_by_tag_from_cache_groups_and_surrogate_key() {
    let origin = Origin::start(vec![
        (
            "/g",
            Fixture::with_headers(
                200,
                &[
                    ("cache-control", "max-age=600"),
                    ("cache-groups", "\"shop\", \"eu\""),
                ],
                "g",
            ),
        ),
        (
            "/s",
            Fixture::with_headers(
                200,
                &[
                    ("cache-control", "max-age=600"),
                    ("surrogate-key", "shop product-7"),
                ],
                "s",
            ),
        ),
        ("/o", cached("o")),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let admin = start_admin(&proxy).await;
    for path in ["/g", "/s", "/o"] {
        get(&proxy.url(path), &[]).await;
    }
    let reply = post(&format!("{admin}/purge?tag=shop")).await;
    assert_eq!(reply.text().trim(), r#"{"purged":2,"soft":false}"#);
    assert!(!is_hit(&get(&proxy.url("/g"), &[]).await));
    assert!(!is_hit(&get(&proxy.url("/s"), &[]).await));
    assert!(is_hit(&get(&proxy.url("/o"), &[]).await));
}

/// Soft purge keeps the entry but makes it stale: the next request revalidates it.
#[tokio::test]
async fn soft_purge_marks_stale_and_revalidates() {
    let origin = Origin::start(vec![(
        "/soft",
        Fixture::Validated {
            etag: "\"s1\"",
            headers: header_list(&[("cache-control", "max-age=600")]),
            body: Bytes::from_static(b"soft body"),
            not_modified_headers: header_list(&[("cache-control", "max-age=600")]),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let admin = start_admin(&proxy).await;
    get(&proxy.url("/soft"), &[("host", "site.test")]).await;
    let reply = post(&format!(
        "{admin}/purge?url=http://site.test/soft&soft=true"
    ))
    .await;
    assert_eq!(reply.text().trim(), r#"{"purged":1,"soft":true}"#);
    let revalidated = get(&proxy.url("/soft"), &[("host", "site.test")]).await;
    assert_eq!(revalidated.text(), "soft body");
    assert_eq!(origin.last("/soft").headers["if-none-match"], "\"s1\"");
    let status = revalidated
        .headers
        .get_all("cache-status")
        .iter()
        .next_back()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(status.contains("fwd=stale; fwd-status=304"), "{status}");
}

/// The PURGE method works only from addresses in cache.purge_allowed (403 with Proxy-Status
/// otherwise).
#[tokio::test]
async fn purge_method_is_refused_from_untrusted_addresses() {
    let origin = Origin::start(vec![("/p", cached("p"))]).await;
    let refusing = Proxy::start(&origin.url(), "[cache]\npurge_allowed = [\"10.0.0.0/8\"]").await;
    get(&refusing.url("/p"), &[]).await;
    let purge = || {
        Request::builder()
            .method("PURGE")
            .uri(refusing.url("/p"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let refused = send(&client(), purge()).await;
    assert_eq!(refused.status, 403);
    assert!(refused
        .header("proxy-status")
        .unwrap()
        .contains("error=http_request_denied"));
    assert!(
        is_hit(&get(&refusing.url("/p"), &[]).await),
        "nothing was purged"
    );

    let allowing = Proxy::start(&origin.url(), "[cache]\npurge_allowed = [\"127.0.0.0/8\"]").await;
    get(&allowing.url("/p"), &[]).await;
    let request = Request::builder()
        .method("PURGE")
        .uri(allowing.url("/p"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let purged = send(&client(), request).await;
    assert_eq!(
        (purged.status.as_u16(), purged.text().trim()),
        (200, r#"{"purged":1,"soft":false}"#)
    );
    assert!(!is_hit(&get(&allowing.url("/p"), &[]).await));
}

/// RFC 9875 §3: Cache-Group-Invalidation on a response to an unsafe request invalidates
/// those groups.
#[tokio::test]
async fn cache_group_invalidation_on_unsafe_response() {
    let origin = Origin::start(vec![
        (
            "/item",
            Fixture::with_headers(
                200,
                &[
                    ("cache-control", "max-age=600"),
                    ("cache-groups", "\"catalog\""),
                ],
                "item",
            ),
        ),
        (
            "/update",
            Fixture::with_headers(200, &[("cache-group-invalidation", "\"catalog\"")], "ok"),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/item"), &[]).await;
    assert!(is_hit(&get(&proxy.url("/item"), &[]).await));
    let update = Request::post(proxy.url("/update"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client(), update).await.status, 200);
    assert!(!is_hit(&get(&proxy.url("/item"), &[]).await));
}

/// The path view: a trusted client that asks sees site, origin, key digest, tier and
/// freshness; nobody else does.
#[tokio::test]
async fn path_view_for_trusted_clients_only() {
    let origin = Origin::start(vec![("/pv", cached("pv"))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let asked = [("outpost-debug", "1")];
    let miss = get(&proxy.url("/pv"), &asked).await;
    let view = miss
        .header("outpost-path")
        .expect("trusted loopback client that asked")
        .to_string();
    assert!(
        view.starts_with("site=\"default\"; origin=\"http://127.0.0.1:"),
        "{view}"
    );
    assert!(
        view.contains("cache=uri-miss; tier=origin; key=\""),
        "{view}"
    );
    let hit = get(&proxy.url("/pv"), &asked).await;
    let view = hit.header("outpost-path").unwrap();
    assert!(
        view.contains("cache=hit; tier=memory") && view.contains("ttl=") && view.contains("age="),
        "{view}"
    );
    assert!(
        get(&proxy.url("/pv"), &[])
            .await
            .header("outpost-path")
            .is_none(),
        "not asked"
    );

    let strict = Proxy::start(
        &origin.url(),
        "[debug]\ntrusted_clients = [\"10.0.0.0/8\"]\nalways = true",
    )
    .await;
    assert!(
        get(&strict.url("/pv"), &asked)
            .await
            .header("outpost-path")
            .is_none(),
        "untrusted client"
    );
}

/// Reload (admin `POST /reload`, the same path as SIGHUP) switches the origin for new
/// requests while a request in flight on the old origin completes; the cache is kept.
#[tokio::test]
async fn reload_switches_origin_without_dropping_in_flight_request() {
    let gate = Gate::closed();
    let old = Origin::start(vec![
        (
            "/slow",
            Fixture::GatedWith {
                gate: gate.clone(),
                headers: header_list(&[("cache-control", "no-store")]),
                body: Bytes::from_static(b"old, slow"),
            },
        ),
        (
            "/who",
            Fixture::with_headers(200, &[("cache-control", "no-store")], "old"),
        ),
        ("/kept", cached("kept")),
    ])
    .await;
    let new = Origin::start(vec![(
        "/who",
        Fixture::with_headers(200, &[("cache-control", "no-store")], "new"),
    )])
    .await;
    let text = Arc::new(std::sync::Mutex::new(format!("origin = \"{}\"", old.url())));
    let proxy = reloadable(&text).await;
    let admin = start_admin(&proxy).await;
    get(&proxy.url("/kept"), &[]).await;

    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    eventually("the request to reach the old origin", || {
        old.hits("/slow") > 0
    })
    .await;
    *text.lock().unwrap() = format!("origin = \"{}\"", new.url());
    let reloaded = post(&format!("{admin}/reload")).await;
    assert_eq!(
        (reloaded.status.as_u16(), reloaded.text().trim()),
        (200, r#"{"reloaded":true,"restart_needed_for":[]}"#)
    );
    assert_eq!(get(&proxy.url("/who"), &[]).await.text(), "new");
    gate.open();
    assert_eq!(in_flight.await.unwrap().text(), "old, slow");
    assert!(
        is_hit(&get(&proxy.url("/kept"), &[]).await),
        "the cache survives a reload"
    );

    // An invalid configuration is refused and the one in force stays.
    *text.lock().unwrap() = format!(
        "origin = \"{}\"\n[server]\nidle_timeout = \"soon\"",
        old.url()
    );
    let refused = post(&format!("{admin}/reload")).await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.text().contains("idle_timeout"),
        "{}",
        refused.text()
    );
    assert_eq!(get(&proxy.url("/who"), &[]).await.text(), "new");

    // A setting read only at start is put in force by no reload, and the answer says so.
    *text.lock().unwrap() = format!(
        "origin = \"{}\"\n[cache]\nmemory_policy = \"lru\"",
        new.url()
    );
    let partly = post(&format!("{admin}/reload")).await;
    assert_eq!(partly.status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&partly.body).unwrap();
    let needed = answer["restart_needed_for"].as_array().unwrap();
    assert!(
        needed
            .iter()
            .any(|s| s.as_str().unwrap().contains("memory_policy")),
        "{answer}"
    );
}

/// A reload that changes `cache.memory_capacity` resizes the memory tier in place (under
/// the default policy): shrunk, it evicts down to its new share at once rather than holding
/// the old size until a restart, and it goes on serving. The disk tier is unaffected.
#[tokio::test]
async fn reload_resizes_the_memory_tier() {
    let body = "x".repeat(48 << 10);
    let origin = Origin::start(vec![("/o", cached(&body))]).await;
    let config = |capacity: &str| {
        format!(
            "origin = \"{}\"\n[cache]\nmemory_capacity = \"{capacity}\"\n\
             max_object_size = \"1MiB\"\n",
            origin.url()
        )
    };
    let text = Arc::new(std::sync::Mutex::new(config("64MiB")));
    let proxy = reloadable(&text).await;
    let admin = start_admin(&proxy).await;
    let memory = || async {
        let status = get(&format!("{admin}/status.json"), &[]).await;
        let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
        let memory = &status["tiers"]["memory"];
        (
            memory["bytes"].as_u64().unwrap(),
            memory["capacity_now"].as_u64().unwrap(),
        )
    };
    // About 24 MiB, within the 64 MiB node's tier (32 MiB).
    for index in 0..500 {
        let reply = get(&proxy.url(&format!("/o?{index}")), &[]).await;
        assert_eq!(reply.body.len(), body.len());
    }
    let (held, capacity) = memory().await;
    assert!(held > 20 << 20 && held <= capacity, "{held} of {capacity}");

    *text.lock().unwrap() = config("16MiB");
    let reloaded = post(&format!("{admin}/reload")).await;
    assert_eq!(
        (reloaded.status.as_u16(), reloaded.text().trim()),
        (200, r#"{"reloaded":true,"restart_needed_for":[]}"#)
    );
    let expected = outpost::Config::from_toml_str(&config("16MiB"), &Default::default())
        .unwrap()
        .cache
        .memory_tier_capacity();
    let (held, capacity) = memory().await;
    assert_eq!(capacity, expected);
    assert!(
        held <= capacity,
        "evicted down at once: {held} of {capacity}"
    );
    let reply = get(&proxy.url("/o?0"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.body.len()), (200, body.len()));
    let reply = get(&proxy.url("/o?0"), &[]).await;
    assert!(is_hit(&reply), "stored again within the new size");
}

/// Without a configuration source (an embedded outpost), reload says so.
#[tokio::test]
async fn reload_without_a_source_is_not_implemented() {
    let origin = Origin::start(vec![]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let admin = start_admin(&proxy).await;
    assert_eq!(post(&format!("{admin}/reload")).await.status, 501);
}

/// Reads `path` until it holds `lines` lines (the writer is a background thread).
pub(crate) async fn log_lines(path: &std::path::Path, lines: usize) -> Vec<String> {
    eventually_some("access-log lines to be written", || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found: Vec<String> = text.lines().map(str::to_string).collect();
        (found.len() >= lines).then_some(found)
    })
    .await
}

/// The access log as JSON lines in a file: cache status, tier, timings, key.
#[tokio::test]
async fn access_log_json_lines_to_a_file() {
    let origin = Origin::start(vec![("/a", cached("a"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let config = format!(
        "[log]\naccess_log_format = \"json\"\naccess_log_path = \"{}\"",
        path.display()
    );
    let proxy = Proxy::start(&origin.url(), &config).await;
    get(&proxy.url("/a"), &[("host", "site.test")]).await;
    get(&proxy.url("/a"), &[("host", "site.test")]).await;
    let lines = log_lines(&path, 2).await;
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        (first["cache"].as_str(), first["tier"].as_str()),
        (Some("uri-miss"), Some("origin"))
    );
    assert!(first["upstream_ms"].as_f64().is_some());
    assert_eq!(
        (second["cache"].as_str(), second["tier"].as_str()),
        (Some("hit"), Some("memory"))
    );
    assert_eq!(second["target"], "/a");
    assert_eq!(second["host"], "site.test");
    assert_eq!(second["status"], 200);
    assert_eq!(second["key"].as_str().map(str::len), Some(64));
    assert_eq!(second["variant"].as_str().map(str::len), Some(16));
    assert!(second["ttl"].as_i64().is_some_and(|ttl| ttl > 500));
    assert_eq!(second["collapsed"], false);
}

/// The combined log format, with the cache fields appended.
#[tokio::test]
async fn access_log_combined_format() {
    let origin = Origin::start(vec![("/c", cached("c"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let config = format!(
        "[log]\naccess_log_format = \"combined\"\naccess_log_path = \"{}\"",
        path.display()
    );
    let proxy = Proxy::start(&origin.url(), &config).await;
    get(
        &proxy.url("/c"),
        &[("user-agent", "curl/8.0"), ("referer", "http://r.test/")],
    )
    .await;
    let line = log_lines(&path, 1).await.remove(0);
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("] \"GET /c HTTP/1.1\" 200 1 \"http://r.test/\" \"curl/8.0\" cache=uri-miss tier=origin duration_ms="), "{line}");
}

/// With admin_token set, admin endpoints other than health need `Authorization: Bearer`.
#[tokio::test]
async fn admin_token_is_required_when_configured() {
    let origin = Origin::start(vec![]).await;
    let proxy = Proxy::start(&origin.url(), "admin_token = \"s3cret-token-for-tests\"").await;
    let admin = start_admin(&proxy).await;
    assert_eq!(get(&format!("{admin}/healthz"), &[]).await.status, 200);
    assert_eq!(get(&format!("{admin}/metrics"), &[]).await.status, 401);
    let wrong = [("authorization", "Bearer s3cret-token-for-testX")];
    assert_eq!(get(&format!("{admin}/metrics"), &wrong).await.status, 401);
    let right = [("authorization", "Bearer s3cret-token-for-tests")];
    assert_eq!(get(&format!("{admin}/metrics"), &right).await.status, 200);
}

/// A soft purge keeps the entry for stale-if-error: when the origin then fails, the
/// soft-purged response is served stale (RFC 5861 §4).
#[tokio::test]
async fn soft_purged_entry_is_served_stale_on_origin_error() {
    let origin = Origin::start(vec![(
        "/sp",
        Fixture::sequence(vec![
            Fixture::with_headers(
                200,
                &[("cache-control", "max-age=600, stale-if-error=3600")],
                "soft",
            ),
            Fixture::with_headers(502, &[], "bad gateway"),
        ]),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let admin = start_admin(&proxy).await;
    get(&proxy.url("/sp"), &[("host", "site.test")]).await;
    post(&format!("{admin}/purge?url=http://site.test/sp&soft=true")).await;
    let reply = get(&proxy.url("/sp"), &[("host", "site.test")]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "soft")
    );
    assert_eq!(
        origin.hits("/sp"),
        2,
        "the soft-purged entry was revalidated first"
    );
}

/// Reload applies `server.*` limits to connections accepted after it.
#[tokio::test]
async fn reload_changes_server_limits_for_new_connections() {
    let origin = Origin::start(vec![("/h", cached("h"))]).await;
    let text = Arc::new(std::sync::Mutex::new(format!(
        "origin = \"{}\"",
        origin.url()
    )));
    let proxy = reloadable(&text).await;
    let admin = start_admin(&proxy).await;
    let big = "b".repeat(16 * 1024);
    let request =
        format!("GET /h HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    assert!(raw_exchange(proxy.addr, request.as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
    *text.lock().unwrap() = format!(
        "origin = \"{}\"\n[server]\nmax_header_bytes = \"8KiB\"",
        origin.url()
    );
    assert_eq!(post(&format!("{admin}/reload")).await.status, 200);
    assert!(raw_exchange(proxy.addr, request.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
}

/// Issue 12: without a token, the admin listener answers only requests that name it
/// (DNS rebinding gives a web page its own name for 127.0.0.1) and refuses cross-site
/// requests a page could make a browser send: nothing is switched or purged.
#[tokio::test]
async fn the_admin_listener_refuses_cross_site_and_rebound_requests() {
    let origin = Origin::start(vec![]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let admin = start_admin(&proxy).await;
    let offline = format!("{admin}/offline?enabled=true");
    let attempt = |headers: &'static [(&'static str, &'static str)]| {
        let mut request = Request::post(offline.as_str());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        async move { send(&client(), request).await }
    };
    let rebound = attempt(&[("host", "attacker.example")]).await;
    assert_eq!(rebound.status, 403, "{}", rebound.text());
    let cross_site = attempt(&[("origin", "https://attacker.example")]).await;
    assert_eq!(cross_site.status, 403);
    let fetched = attempt(&[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(fetched.status, 403);
    assert!(
        !proxy.outpost.proxy().cache().is_offline(),
        "nothing was switched"
    );
    let local = post(&offline).await;
    assert_eq!(local.status, 200, "{}", local.text());
    assert!(proxy.outpost.proxy().cache().is_offline());
}
