//! The shared cache through a real outpost and an in-process origin that counts requests per
//! path: RFC 9111 storing, freshness, validation, invalidation and serving rules, request
//! coalescing, and Cache-Status (RFC 9211).

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

fn cc(value: &str) -> Vec<(&'static str, String)> {
    header_list(&[("cache-control", value)])
}

fn fixed(headers: &[(&'static str, &str)], body: &str) -> Fixture {
    Fixture::with_headers(200, headers, body)
}

/// RFC 9111 §3, §4.2: a response with max-age is stored and reused while fresh; the hit
/// carries Age (§5.1) and Cache-Status `hit` with a ttl (RFC 9211 §2.1, §2.5).
#[tokio::test]
async fn fresh_response_is_served_from_cache() {
    let origin = Origin::start(vec![(
        "/a",
        fixed(&[("cache-control", "max-age=60")], "alpha"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let first = get(&proxy.url("/a"), &[]).await;
    assert_eq!(
        cache_status(&first),
        "outpost; fwd=uri-miss; fwd-status=200; ttl=60; stored"
    );
    let second = get(&proxy.url("/a"), &[]).await;
    assert_eq!(second.text(), "alpha");
    assert!(
        cache_status(&second).starts_with("outpost; hit; ttl="),
        "{}",
        cache_status(&second)
    );
    assert!(second.header("age").is_some());
    assert_eq!(second.header("via"), Some("1.1 outpost"));
    assert_eq!(origin.hits("/a"), 1);
}

/// RFC 9111 §4.2.3: the Age the origin sent counts towards the stored response's age.
#[tokio::test]
async fn origin_age_is_included_in_current_age() {
    let origin = Origin::start(vec![(
        "/aged",
        fixed(&[("cache-control", "max-age=100"), ("age", "40")], "x"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/aged"), &[]).await;
    let hit = get(&proxy.url("/aged"), &[]).await;
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((40..50).contains(&age), "age {age}");
    let status = cache_status(&hit);
    let ttl: i64 = status.rsplit("ttl=").next().unwrap().parse().unwrap();
    assert!((50..=60).contains(&ttl), "{status}");
}

/// RFC 9111 §3, §5.2.2.5, §5.2.2.7: no-store and private responses are never stored.
#[tokio::test]
async fn no_store_and_private_are_not_stored() {
    let origin = Origin::start(vec![
        (
            "/ns",
            fixed(&[("cache-control", "no-store, max-age=60")], "n"),
        ),
        (
            "/pv",
            fixed(&[("cache-control", "private, max-age=60")], "p"),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for path in ["/ns", "/pv"] {
        let first = get(&proxy.url(path), &[]).await;
        let second = get(&proxy.url(path), &[]).await;
        assert!(!is_hit(&second), "{path}: {}", cache_status(&second));
        assert!(!cache_status(&first).contains("stored"));
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

/// RFC 9111 §3.5: a response to a request with Authorization is stored only when the
/// response allows it explicitly (public, s-maxage, must-revalidate).
#[tokio::test]
async fn authorization_requests_are_shared_only_when_allowed() {
    let origin = Origin::start(vec![
        (
            "/auth-plain",
            fixed(&[("cache-control", "max-age=60")], "secret"),
        ),
        (
            "/auth-public",
            fixed(&[("cache-control", "public, max-age=60")], "shared"),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let auth = [("authorization", "Bearer token")];
    get(&proxy.url("/auth-plain"), &auth).await;
    let anonymous = get(&proxy.url("/auth-plain"), &[]).await;
    assert!(
        !is_hit(&anonymous),
        "an authorised response must not be served to others"
    );
    assert_eq!(origin.hits("/auth-plain"), 2);

    get(&proxy.url("/auth-public"), &auth).await;
    assert!(is_hit(&get(&proxy.url("/auth-public"), &[]).await));
    assert_eq!(origin.hits("/auth-public"), 1);
}

/// Set-Cookie responses are not stored unless configured: the cookie must not be handed to
/// other users. Two Set-Cookie lines on the uncached path both reach the client.
#[tokio::test]
async fn set_cookie_responses_pass_through_with_every_cookie() {
    let origin = Origin::start(vec![(
        "/login",
        fixed(
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "a=1; Path=/"),
                ("set-cookie", "b=2; Path=/"),
            ],
            "hi",
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let first = get(&proxy.url("/login"), &[]).await;
    let cookies: Vec<_> = first.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
    assert!(
        cache_status(&first).contains("detail=\"set-cookie\""),
        "{}",
        cache_status(&first)
    );
    get(&proxy.url("/login"), &[]).await;
    assert_eq!(origin.hits("/login"), 2);
}

/// Repeated response fields (two Link lines) survive storage and are served on hits;
/// http-cache-semantics would collapse them.
#[tokio::test]
async fn repeated_headers_survive_on_cached_path() {
    let origin = Origin::start(vec![(
        "/page",
        fixed(
            &[
                ("cache-control", "max-age=60"),
                ("link", "</a.css>; rel=preload"),
                ("link", "</b.js>; rel=preload"),
            ],
            "page",
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/page"), &[]).await;
    let hit = get(&proxy.url("/page"), &[]).await;
    assert!(is_hit(&hit));
    let links: Vec<_> = hit.headers.get_all("link").iter().collect();
    assert_eq!(links, ["</a.css>; rel=preload", "</b.js>; rel=preload"]);
}

/// RFC 9111 §4.1: each variant answers only requests whose Vary'd fields match; variants do
/// not leak across each other, and equivalent spellings share a variant.
#[tokio::test]
async fn vary_variants_do_not_leak() {
    let origin = Origin::start(vec![(
        "/greeting",
        Fixture::Echo {
            name: "accept-language",
            headers: header_list(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")]),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(get(&proxy.url("/greeting"), &en).await.text(), "en");
    let fr_first = get(&proxy.url("/greeting"), &fr).await;
    assert_eq!(fr_first.text(), "fr");
    assert!(
        cache_status(&fr_first).contains("fwd=vary-miss"),
        "{}",
        cache_status(&fr_first)
    );
    let en_hit = get(&proxy.url("/greeting"), &[("accept-language", "EN")]).await;
    assert_eq!((en_hit.text().as_str(), is_hit(&en_hit)), ("en", true));
    let fr_hit = get(&proxy.url("/greeting"), &fr).await;
    assert_eq!((fr_hit.text().as_str(), is_hit(&fr_hit)), ("fr", true));
    let none = get(&proxy.url("/greeting"), &[]).await;
    assert_eq!(none.text(), "-");
    assert_eq!(origin.hits("/greeting"), 3);
}

/// RFC 9111 §4.1: `Vary: *` never matches, so such responses are not kept.
#[tokio::test]
async fn vary_star_is_never_reused() {
    let origin = Origin::start(vec![(
        "/star",
        fixed(&[("cache-control", "max-age=60"), ("vary", "*")], "s"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/star"), &[]).await;
    get(&proxy.url("/star"), &[]).await;
    assert_eq!(origin.hits("/star"), 2);
}

/// Unkeyed request headers cannot poison the cache: the host is part of the key, and the
/// override headers that could change what the origin renders are stripped.
#[tokio::test]
async fn host_is_keyed_and_override_headers_cannot_poison() {
    let origin = Origin::start(vec![(
        "/home",
        Fixture::Echo {
            name: "host",
            headers: cc("max-age=60"),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    assert_eq!(
        get(
            &proxy.url("/home"),
            &[("host", "a.test"), ("x-forwarded-host", "evil.test")]
        )
        .await
        .text(),
        "a.test"
    );
    assert_eq!(
        get(&proxy.url("/home"), &[("host", "b.test")]).await.text(),
        "b.test"
    );
    assert_eq!(
        get(&proxy.url("/home"), &[("host", "a.test")]).await.text(),
        "a.test"
    );
    assert_eq!(origin.hits("/home"), 2);
    assert_eq!(origin.last("/home").headers["x-forwarded-host"], "b.test");
}

/// RFC 9111 §4.2.1: s-maxage overrides max-age in a shared cache.
#[tokio::test]
async fn s_maxage_wins_over_max_age() {
    let origin = Origin::start(vec![(
        "/s",
        fixed(&[("cache-control", "max-age=0, s-maxage=60")], "s"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/s"), &[]).await;
    assert!(is_hit(&get(&proxy.url("/s"), &[]).await));
    assert_eq!(origin.hits("/s"), 1);
}

/// RFC 9111 §4.2.2: heuristic freshness from Last-Modified for a 200 without explicit
/// freshness.
#[tokio::test]
async fn heuristic_freshness_from_last_modified() {
    let origin = Origin::start(vec![(
        "/static.css",
        fixed(&[("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT")], "css"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/static.css"), &[]).await;
    assert!(is_hit(&get(&proxy.url("/static.css"), &[]).await));
    assert_eq!(origin.hits("/static.css"), 1);
}

/// RFC 9213 §2.2: CDN-Cache-Control governs this cache and is passed downstream.
#[tokio::test]
async fn cdn_cache_control_takes_precedence_and_passes_downstream() {
    let origin = Origin::start(vec![(
        "/cdn",
        fixed(
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ],
            "cdn",
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/cdn"), &[]).await;
    let hit = get(&proxy.url("/cdn"), &[]).await;
    assert!(is_hit(&hit));
    assert_eq!(hit.header("cdn-cache-control"), Some("max-age=60"));
    assert_eq!(hit.header("cache-control"), Some("no-store"));
    assert_eq!(origin.hits("/cdn"), 1);
}

/// RFC 9213 §2.1: CDN-Cache-Control is a Structured Field Dictionary; a value that does
/// not parse as one, or gives a directive the wrong type, is ignored as a whole, and then
/// Cache-Control applies (here: no-store, so nothing is stored).
#[tokio::test]
async fn an_invalid_cdn_cache_control_is_ignored_for_cache_control() {
    let paths = ["/bad-syntax", "/wrong-type", "/negative"];
    let values = ["max-age=60, (", "max-age=\"60\"", "max-age=-1"];
    let routes = paths
        .iter()
        .zip(values)
        .map(|(path, value)| {
            let headers = [("cache-control", "no-store"), ("cdn-cache-control", value)];
            (*path, fixed(&headers, "body"))
        })
        .collect();
    let origin = Origin::start(routes).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for path in paths {
        get(&proxy.url(path), &[]).await;
        let again = get(&proxy.url(path), &[]).await;
        assert!(!is_hit(&again), "{path}: {}", cache_status(&again));
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

/// RFC 9111 §4.3.1, §4.3.3, §4.3.4: a stale response with an ETag is revalidated with
/// If-None-Match; the 304 freshens the stored headers and the stored body is served as 200.
#[tokio::test]
async fn stale_entry_is_revalidated_and_freshened_by_304() {
    let origin = Origin::start(vec![(
        "/doc",
        Fixture::Validated {
            etag: "\"v1\"",
            headers: header_list(&[("cache-control", "max-age=0"), ("x-version", "one")]),
            body: Bytes::from_static(b"document"),
            not_modified_headers: header_list(&[
                ("cache-control", "max-age=60"),
                ("x-version", "freshened"),
            ]),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/doc"), &[]).await;
    let revalidated = get(&proxy.url("/doc"), &[]).await;
    assert_eq!(
        (revalidated.status.as_u16(), revalidated.text().as_str()),
        (200, "document")
    );
    assert_eq!(
        cache_status(&revalidated),
        "outpost; fwd=stale; fwd-status=304; ttl=60; stored"
    );
    assert_eq!(origin.last("/doc").headers["if-none-match"], "\"v1\"");
    assert_eq!(revalidated.header("x-version"), Some("freshened"));
    let hit = get(&proxy.url("/doc"), &[]).await;
    assert!(is_hit(&hit));
    assert_eq!(hit.header("x-version"), Some("freshened"));
    assert_eq!(origin.hits("/doc"), 2);
}

/// RFC 9111 §4.3.3: a full 200 to a revalidation replaces the stored response.
#[tokio::test]
async fn full_response_to_revalidation_replaces_entry() {
    let origin = Origin::start(vec![(
        "/news",
        Fixture::sequence(vec![
            fixed(
                &[("cache-control", "max-age=0"), ("etag", "\"old\"")],
                "old news",
            ),
            fixed(
                &[("cache-control", "max-age=60"), ("etag", "\"new\"")],
                "new news",
            ),
        ]),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    assert_eq!(get(&proxy.url("/news"), &[]).await.text(), "old news");
    assert_eq!(get(&proxy.url("/news"), &[]).await.text(), "new news");
    let hit = get(&proxy.url("/news"), &[]).await;
    assert_eq!((hit.text().as_str(), is_hit(&hit)), ("new news", true));
    assert_eq!(origin.hits("/news"), 2);
}

/// RFC 9111 §5.2.2.4: a no-cache response is stored but validated on every reuse.
#[tokio::test]
async fn no_cache_response_is_revalidated_every_time() {
    let origin = Origin::start(vec![(
        "/nc",
        Fixture::Validated {
            etag: "\"nc\"",
            headers: cc("no-cache, max-age=600"),
            body: Bytes::from_static(b"nc-body"),
            not_modified_headers: cc("no-cache, max-age=600"),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for _ in 0..3 {
        let reply = get(&proxy.url("/nc"), &[]).await;
        assert_eq!(reply.text(), "nc-body");
    }
    assert_eq!(origin.hits("/nc"), 3);
    assert_eq!(origin.last("/nc").headers["if-none-match"], "\"nc\"");
}

/// RFC 9111 §5.2.1.4 and §5.4: request no-cache (and Pragma: no-cache) makes the cache
/// validate a fresh response first; Cache-Status says `fwd=request`.
#[tokio::test]
async fn request_no_cache_forces_validation() {
    let origin = Origin::start(vec![(
        "/idx",
        Fixture::Validated {
            etag: "\"i\"",
            headers: cc("max-age=600"),
            body: Bytes::from_static(b"index"),
            not_modified_headers: cc("max-age=600"),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/idx"), &[]).await;
    let reply = get(&proxy.url("/idx"), &[("cache-control", "no-cache")]).await;
    assert_eq!(reply.text(), "index");
    assert_eq!(
        cache_status(&reply),
        "outpost; fwd=request; fwd-status=304; ttl=600; stored"
    );
    get(&proxy.url("/idx"), &[("pragma", "no-cache")]).await;
    // apt and pip ask for index files with max-age=0.
    get(&proxy.url("/idx"), &[("cache-control", "max-age=0")]).await;
    assert_eq!(origin.hits("/idx"), 4);
    assert!(is_hit(&get(&proxy.url("/idx"), &[]).await));
}

/// RFC 9111 §5.2.1.3: min-fresh asks for at least that much freshness left.
#[tokio::test]
async fn request_min_fresh_is_honoured() {
    let origin = Origin::start(vec![(
        "/mf",
        fixed(&[("cache-control", "max-age=30")], "mf"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/mf"), &[]).await;
    assert!(is_hit(
        &get(&proxy.url("/mf"), &[("cache-control", "min-fresh=10")]).await
    ));
    let reply = get(&proxy.url("/mf"), &[("cache-control", "min-fresh=3600")]).await;
    assert!(
        cache_status(&reply).contains("fwd=request"),
        "{}",
        cache_status(&reply)
    );
}

/// RFC 9111 §5.2.1.2 and §4.2.4: max-stale lets a client take a stale response, unless the
/// response says must-revalidate.
#[tokio::test]
async fn max_stale_serves_stale_unless_must_revalidate() {
    let origin = Origin::start(vec![
        (
            "/old",
            fixed(&[("cache-control", "max-age=1"), ("age", "100")], "old"),
        ),
        (
            "/strict",
            fixed(
                &[
                    ("cache-control", "max-age=1, must-revalidate"),
                    ("age", "100"),
                ],
                "strict",
            ),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/old"), &[]).await;
    let stale = get(&proxy.url("/old"), &[("cache-control", "max-stale")]).await;
    assert!(
        cache_status(&stale).starts_with("outpost; hit; ttl=-"),
        "{}",
        cache_status(&stale)
    );
    assert_eq!(origin.hits("/old"), 1);
    let too_stale = get(&proxy.url("/old"), &[("cache-control", "max-stale=5")]).await;
    assert!(!is_hit(&too_stale));

    get(&proxy.url("/strict"), &[]).await;
    let strict = get(&proxy.url("/strict"), &[("cache-control", "max-stale")]).await;
    assert!(
        cache_status(&strict).contains("fwd=stale"),
        "{}",
        cache_status(&strict)
    );
    assert_eq!(origin.hits("/strict"), 2);
}

/// RFC 9111 §5.2.1.7: only-if-cached answers from the cache or with 504, never asking the
/// origin.
#[tokio::test]
async fn only_if_cached_never_contacts_origin() {
    let origin = Origin::start(vec![("/o", fixed(&[("cache-control", "max-age=60")], "o"))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let miss = get(&proxy.url("/o"), &[("cache-control", "only-if-cached")]).await;
    assert_eq!(miss.status, 504);
    assert_eq!(origin.hits("/o"), 0);
    get(&proxy.url("/o"), &[]).await;
    let hit = get(&proxy.url("/o"), &[("cache-control", "only-if-cached")]).await;
    assert_eq!((hit.status.as_u16(), hit.text().as_str()), (200, "o"));
    assert_eq!(origin.hits("/o"), 1);
}

/// RFC 9111 §4.3.2 and RFC 9110 §13.2.2: a client's conditional request is answered 304
/// from a fresh entry; If-None-Match takes precedence over If-Modified-Since.
#[tokio::test]
async fn client_conditionals_are_answered_from_cache() {
    let origin = Origin::start(vec![(
        "/c",
        fixed(
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"c1\""),
                ("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT"),
            ],
            "content",
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    // A conditional first request still fills the cache with a full response.
    let first = get(&proxy.url("/c"), &[("if-none-match", "\"c1\"")]).await;
    assert_eq!(first.status, 304);
    assert!(!origin.last("/c").headers.contains_key("if-none-match"));
    let not_modified = get(&proxy.url("/c"), &[("if-none-match", "W/\"c1\"")]).await;
    assert_eq!(not_modified.status, 304);
    assert!(is_hit(&not_modified));
    assert_eq!(not_modified.header("etag"), Some("\"c1\""));
    let changed = get(
        &proxy.url("/c"),
        &[
            ("if-none-match", "\"other\""),
            ("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT"),
        ],
    )
    .await;
    assert_eq!(
        (changed.status.as_u16(), changed.text().as_str()),
        (200, "content"),
        "INM wins over IMS"
    );
    let since = get(
        &proxy.url("/c"),
        &[("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT")],
    )
    .await;
    assert_eq!(since.status, 304);
    assert_eq!(origin.hits("/c"), 1);
}

/// RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI and a
/// same-origin Location; unsafe methods are forwarded, never stored (Cache-Status
/// `fwd=method`).
#[tokio::test]
async fn unsafe_methods_invalidate_target_and_location() {
    let origin = Origin::start(vec![
        (
            "/item",
            fixed(
                &[("cache-control", "max-age=60"), ("location", "/list")],
                "item",
            ),
        ),
        ("/list", fixed(&[("cache-control", "max-age=60")], "list")),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/item"), &[]).await;
    get(&proxy.url("/list"), &[]).await;
    assert!(is_hit(&get(&proxy.url("/item"), &[]).await));

    let post = Request::post(proxy.url("/item"))
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let reply = send(&client(), post).await;
    assert_eq!(cache_status(&reply), "outpost; fwd=method; fwd-status=200");
    assert!(
        !is_hit(&get(&proxy.url("/item"), &[]).await),
        "target invalidated"
    );
    assert!(
        !is_hit(&get(&proxy.url("/list"), &[]).await),
        "Location invalidated"
    );
    assert_eq!(origin.hits("/item"), 3);

    let delete = Request::delete(proxy.url("/nope"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client(), delete).await.status, 404);
    assert!(
        is_hit(&get(&proxy.url("/item"), &[]).await),
        "an error response invalidates nothing"
    );
}

/// RFC 9110 §9.3.2 / RFC 9111 §4: a HEAD miss is forwarded as HEAD and stores nothing (a
/// HEAD must not download a body); a HEAD is answered from a stored GET.
#[tokio::test]
async fn head_is_served_from_stored_get() {
    let origin = Origin::start(vec![(
        "/h",
        fixed(&[("cache-control", "max-age=60")], "head-body"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let head_request = || {
        Request::head(proxy.url("/h"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let head = send(&client(), head_request()).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("9"));
    assert_eq!(origin.last("/h").method, http::Method::HEAD);
    let get_reply = get(&proxy.url("/h"), &[]).await;
    assert_eq!(
        (get_reply.text().as_str(), is_hit(&get_reply)),
        ("head-body", false),
        "the HEAD stored nothing"
    );
    let head_again = send(&client(), head_request()).await;
    assert!(is_hit(&head_again) && head_again.body.is_empty());
    assert_eq!(head_again.header("content-length"), Some("9"));
    assert_eq!(origin.hits("/h"), 2);
}

/// RFC 9211 §2: our Cache-Status member is appended after the origin's.
#[tokio::test]
async fn cache_status_is_appended_after_upstream_members() {
    let origin = Origin::start(vec![(
        "/cs",
        fixed(
            &[
                ("cache-control", "max-age=60"),
                ("cache-status", "origin-cache; hit"),
            ],
            "cs",
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/cs"), &[]).await;
    let hit = get(&proxy.url("/cs"), &[]).await;
    let members: Vec<_> = hit
        .headers
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0], "origin-cache; hit");
    assert!(members[1].starts_with("outpost; hit"));
}

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

/// An origin reset mid-body stores nothing: the next request goes to the origin again.
#[tokio::test]
async fn origin_reset_mid_body_stores_nothing() {
    let origin = RawOrigin::start(RawBehaviour::SendThenClose(Bytes::from_static(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 1000\r\n\r\npartial",
    )))
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for _ in 0..2 {
        let response = client()
            .request(
                Request::get(proxy.url("/r"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let collected = http_body_util::BodyExt::collect(response.into_body()).await;
        assert!(
            collected.is_err(),
            "truncated body must abort, and must not be served from cache"
        );
    }
}

/// With the cache disabled every request is forwarded (Cache-Status `fwd=bypass`).
#[tokio::test]
async fn disabled_cache_bypasses() {
    let origin = Origin::start(vec![("/d", fixed(&[("cache-control", "max-age=60")], "d"))]).await;
    let proxy = Proxy::start(&origin.url(), "[cache]\nenabled = false").await;
    get(&proxy.url("/d"), &[]).await;
    let reply = get(&proxy.url("/d"), &[]).await;
    assert_eq!(
        cache_status(&reply),
        "outpost; fwd=bypass; fwd-status=200; detail=\"disabled\""
    );
    assert_eq!(origin.hits("/d"), 2);
}

/// RFC 5861 §4: when validating a stale entry meets an error status, the stale entry is
/// served within its stale-if-error window; Cache-Status says why.
#[tokio::test]
async fn stale_if_error_serves_stale_on_origin_error_status() {
    let origin = Origin::start(vec![
        (
            "/sie",
            Fixture::sequence(vec![
                fixed(
                    &[
                        ("cache-control", "max-age=1, stale-if-error=3600"),
                        ("age", "100"),
                        ("etag", "\"e\""),
                    ],
                    "kept",
                ),
                Fixture::with_headers(503, &[], "down"),
            ]),
        ),
        (
            "/plain",
            Fixture::sequence(vec![
                fixed(&[("cache-control", "max-age=1"), ("age", "100")], "gone"),
                Fixture::with_headers(503, &[], "down"),
            ]),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/sie"), &[]).await;
    let stale = get(&proxy.url("/sie"), &[]).await;
    assert_eq!(
        (stale.status.as_u16(), stale.text().as_str()),
        (200, "kept")
    );
    let status = cache_status(&stale);
    assert!(
        status.contains("fwd=stale; fwd-status=503") && status.contains("detail=\"http_503\""),
        "{status}"
    );

    // Without stale-if-error and with the operator's window off, the error goes through.
    let no_window = Proxy::start(&origin.url(), "[cache]\nstale_on_error = \"0s\"").await;
    get(&no_window.url("/plain"), &[]).await;
    let error = get(&no_window.url("/plain"), &[]).await;
    assert_eq!(
        error.status, 503,
        "no stale-if-error: the error goes through"
    );
}

/// RFC 5861 §4: a stale-if-error window also covers an origin that does not answer in time,
/// and a request may grant the window itself; must-revalidate forbids it (RFC 9111 §4.2.4).
#[tokio::test]
async fn stale_if_error_covers_timeouts_and_respects_must_revalidate() {
    let origin = Origin::start(vec![
        (
            "/slow",
            Fixture::sequence(vec![
                fixed(
                    &[("cache-control", "max-age=1"), ("age", "100")],
                    "old slow",
                ),
                Fixture::Stall,
            ]),
        ),
        (
            "/strict",
            Fixture::sequence(vec![
                fixed(
                    &[
                        (
                            "cache-control",
                            "max-age=1, must-revalidate, stale-if-error=3600",
                        ),
                        ("age", "100"),
                    ],
                    "strict",
                ),
                Fixture::Stall,
            ]),
        ),
    ])
    .await;
    let proxy = Proxy::start(
        &origin.url(),
        "[upstream]\nresponse_header_timeout = \"300ms\"",
    )
    .await;
    get(&proxy.url("/slow"), &[]).await;
    let stale = get(
        &proxy.url("/slow"),
        &[("cache-control", "stale-if-error=600")],
    )
    .await;
    assert_eq!(
        (stale.status.as_u16(), stale.text().as_str()),
        (200, "old slow")
    );
    assert!(
        cache_status(&stale).contains("detail=\"http_response_timeout\""),
        "{}",
        cache_status(&stale)
    );

    get(&proxy.url("/strict"), &[]).await;
    let refused = get(&proxy.url("/strict"), &[]).await;
    assert_eq!(refused.status, 504);
}

/// RFC 9110 §14: ranges are served from the stored body: one range as 206 with
/// Content-Range, several as multipart/byteranges, none satisfiable as 416.
#[tokio::test]
async fn ranges_are_served_from_the_cache() {
    // Long enough that the two ranges below are too far apart to be coalesced.
    let body = "0123456789abcdefghij".repeat(10);
    let body = body.as_str();
    let origin = Origin::start(vec![(
        "/file",
        fixed(
            &[
                ("cache-control", "max-age=600"),
                ("etag", "\"f1\""),
                ("content-type", "application/octet-stream"),
            ],
            body,
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/file"), &[]).await;

    let single = get(&proxy.url("/file"), &[("range", "bytes=2-5")]).await;
    assert_eq!(
        (single.status.as_u16(), single.text().as_str()),
        (206, "2345")
    );
    assert_eq!(single.header("content-range"), Some("bytes 2-5/200"));
    assert!(is_hit(&single));
    let suffix = get(&proxy.url("/file"), &[("range", "bytes=-3")]).await;
    assert_eq!(
        (suffix.text().as_str(), suffix.header("content-range")),
        ("hij", Some("bytes 197-199/200"))
    );
    let open = get(&proxy.url("/file"), &[("range", "bytes=195-")]).await;
    assert_eq!(open.text(), "fghij");

    let multi = get(&proxy.url("/file"), &[("range", "bytes=0-1, 198-199")]).await;
    assert_eq!(multi.status, 206);
    let content_type = multi.header("content-type").unwrap().to_string();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .expect(&content_type);
    let text = multi.text();
    assert!(text.contains(&format!("--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-1/200\r\n\r\n01")), "{text}");
    assert!(
        text.contains("Content-Range: bytes 198-199/200\r\n\r\nij"),
        "{text}"
    );
    assert!(text.ends_with(&format!("--{boundary}--\r\n")));

    let unsatisfiable = get(&proxy.url("/file"), &[("range", "bytes=500-600")]).await;
    assert_eq!(
        (
            unsatisfiable.status.as_u16(),
            unsatisfiable.header("content-range")
        ),
        (416, Some("bytes */200"))
    );
    assert_eq!(origin.hits("/file"), 1);
}

/// RFC 9110 §13.1.5: If-Range with the current strong ETag gets the range; otherwise the
/// whole representation.
#[tokio::test]
async fn if_range_decides_between_range_and_whole() {
    let origin = Origin::start(vec![(
        "/r",
        fixed(
            &[("cache-control", "max-age=600"), ("etag", "\"r1\"")],
            "abcdefgh",
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/r"), &[]).await;
    let matching = get(
        &proxy.url("/r"),
        &[("range", "bytes=0-2"), ("if-range", "\"r1\"")],
    )
    .await;
    assert_eq!(
        (matching.status.as_u16(), matching.text().as_str()),
        (206, "abc")
    );
    let changed = get(
        &proxy.url("/r"),
        &[("range", "bytes=0-2"), ("if-range", "\"r0\"")],
    )
    .await;
    assert_eq!(
        (changed.status.as_u16(), changed.text().as_str()),
        (200, "abcdefgh")
    );
}

/// A Range miss fills the whole object once (the origin sees no Range) and serves the range
/// from it; later requests hit.
#[tokio::test]
async fn range_miss_fills_the_whole_object() {
    let origin = Origin::start(vec![(
        "/pkg.deb",
        fixed(&[("cache-control", "max-age=600")], "package-bytes"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let first = get(&proxy.url("/pkg.deb"), &[("range", "bytes=8-")]).await;
    assert_eq!(
        (first.status.as_u16(), first.text().as_str()),
        (206, "bytes")
    );
    assert!(!origin.last("/pkg.deb").headers.contains_key("range"));
    let whole = get(&proxy.url("/pkg.deb"), &[]).await;
    assert_eq!(
        (whole.text().as_str(), is_hit(&whole)),
        ("package-bytes", true)
    );
    assert_eq!(origin.hits("/pkg.deb"), 1);
}
