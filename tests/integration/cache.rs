//! The shared cache through a real outpost and an in-process origin that counts requests per
//! path: RFC 9111 storing, keys and variants, freshness, invalidation, HEAD, and
//! Cache-Status (RFC 9211). Validation and request directives are in `validation.rs`,
//! coalescing in `coalescing.rs`, ranges in `ranges.rs`.

use crate::support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

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
    assert_cache_status_with_lifetime(&first, "outpost; fwd=uri-miss; fwd-status=200; stored", 60);
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

fn post_to(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::post(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from_static(b"form=1")))
        .unwrap()
}

/// RFC 9110 §9.3.3: a POST's response with explicit freshness and a Content-Location equal
/// to the target URI (§8.7, relative references resolved against it) is stored, after the
/// target's invalidation (RFC 9111 §4.4), and answers later GETs and HEADs; a later POST is
/// still forwarded.
#[tokio::test]
async fn a_post_response_naming_its_target_answers_later_gets() {
    let origin = Origin::start(vec![
        (
            "/form",
            fixed(
                &[
                    ("cache-control", "max-age=60"),
                    ("content-location", "/form"),
                ],
                "posted",
            ),
        ),
        (
            "/shop/cart",
            fixed(
                &[
                    ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
                    ("content-location", "cart"),
                ],
                "cart",
            ),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let posted = send(&client(), post_to(&proxy.url("/form"), &[])).await;
    assert_eq!(posted.text(), "posted");
    assert_cache_status_with_lifetime(&posted, "outpost; fwd=method; fwd-status=200; stored", 60);
    assert_eq!(origin.last("/form").method, http::Method::POST);

    let later = get(&proxy.url("/form"), &[]).await;
    assert!(is_hit(&later), "{}", cache_status(&later));
    assert_eq!(later.text(), "posted");
    let head = Request::head(proxy.url("/form"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(is_hit(&send(&client(), head).await));
    assert_eq!(origin.hits("/form"), 1);

    let again = send(&client(), post_to(&proxy.url("/form"), &[])).await;
    assert_eq!(again.text(), "posted");
    assert_eq!(
        origin.hits("/form"),
        2,
        "a POST is never answered from the cache"
    );

    // A path-relative Content-Location, and Expires as the explicit freshness.
    send(&client(), post_to(&proxy.url("/shop/cart"), &[])).await;
    let cart = get(&proxy.url("/shop/cart"), &[]).await;
    assert!(is_hit(&cart), "{}", cache_status(&cart));
    assert_eq!(origin.hits("/shop/cart"), 1);
}

/// A path, the origin's response headers for it, and the POST's own headers.
type PostCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [(&'static str, &'static str)],
);

/// RFC 9110 §9.3.3: without explicit freshness (RFC 9111 §4.2.1: `public` and a heuristic
/// are not), without a Content-Location naming the target, or for a POST the origin
/// judged preconditions of, the response is forwarded and nothing is stored.
#[tokio::test]
async fn post_responses_that_do_not_name_their_target_are_not_stored() {
    let cases: [PostCase; 5] = [
        ("/no-location", &[("cache-control", "max-age=60")], &[]),
        (
            "/elsewhere",
            &[
                ("cache-control", "max-age=60"),
                ("content-location", "/other"),
            ],
            &[],
        ),
        (
            "/other-origin",
            &[
                ("cache-control", "max-age=60"),
                ("content-location", "http://example.net/other-origin"),
            ],
            &[],
        ),
        (
            "/heuristic",
            &[
                ("cache-control", "public"),
                ("last-modified", "Thu, 01 Jan 2015 00:00:00 GMT"),
                ("content-location", "/heuristic"),
            ],
            &[],
        ),
        (
            "/conditional",
            &[
                ("cache-control", "max-age=60"),
                ("content-location", "/conditional"),
            ],
            &[("if-match", "\"v1\"")],
        ),
    ];
    let routes = cases
        .iter()
        .map(|(path, headers, _)| (*path, fixed(headers, "answer")))
        .collect();
    let origin = Origin::start(routes).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for (path, _, request_headers) in cases {
        let posted = send(&client(), post_to(&proxy.url(path), request_headers)).await;
        assert_eq!(
            cache_status(&posted),
            "outpost; fwd=method; fwd-status=200",
            "{path}"
        );
        let later = get(&proxy.url(path), &[]).await;
        assert!(!is_hit(&later), "{path}: {}", cache_status(&later));
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

/// `cache.unsafe_invalidation = "trusted"`: an untrusted peer's POST may neither invalidate
/// nor replace what is stored.
#[tokio::test]
async fn an_untrusted_peers_post_response_is_not_stored() {
    let origin = Origin::start(vec![(
        "/form",
        fixed(
            &[
                ("cache-control", "max-age=60"),
                ("content-location", "/form"),
            ],
            "posted",
        ),
    )])
    .await;
    let config = "[cache]\nunsafe_invalidation = \"trusted\"\npurge_allowed = []\n";
    let proxy = Proxy::start(&origin.url(), config).await;
    let posted = send(&client(), post_to(&proxy.url("/form"), &[])).await;
    assert_eq!(cache_status(&posted), "outpost; fwd=method; fwd-status=200");
    assert!(!is_hit(&get(&proxy.url("/form"), &[]).await));
    assert_eq!(origin.hits("/form"), 2);
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
