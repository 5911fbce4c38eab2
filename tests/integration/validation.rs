//! Validation and reuse under directives, through a real outpost and origin: RFC 9111 §4.3
//! (conditional requests, 304 freshening, client conditionals), §5.2.1 request directives,
//! and stale responses when the origin fails (§4.2.4, RFC 5861 §4).

use crate::support;

use bytes::Bytes;
use support::*;

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
    assert_cache_status_with_lifetime(
        &revalidated,
        "outpost; fwd=stale; fwd-status=304; stored",
        60,
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
    assert_cache_status_with_lifetime(&reply, "outpost; fwd=request; fwd-status=304; stored", 600);
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

/// RFC 9111 §4.3.2: a stored response without Last-Modified answers If-Modified-Since by
/// its Date: a date at or after it is a 304 from the cache, an earlier one the full 200.
#[tokio::test]
async fn if_modified_since_without_last_modified_is_judged_by_date() {
    let generated = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    let date = httpdate::fmt_http_date(generated);
    let origin = Origin::start(vec![(
        "/undated",
        fixed(
            &[("cache-control", "max-age=600"), ("date", &date)],
            "content",
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    assert_eq!(get(&proxy.url("/undated"), &[]).await.status, 200);
    let since = |date: String| {
        let url = proxy.url("/undated");
        async move { get(&url, &[("if-modified-since", &date)]).await }
    };
    let not_modified = since(date.clone()).await;
    assert_eq!(not_modified.status, 304);
    assert!(is_hit(&not_modified));
    let before = generated - std::time::Duration::from_secs(1);
    let earlier = since(httpdate::fmt_http_date(before)).await;
    assert_eq!(
        (earlier.status.as_u16(), earlier.text().as_str()),
        (200, "content")
    );
    assert!(is_hit(&earlier));
    assert_eq!(origin.hits("/undated"), 1);
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

/// RFC 9110 §8.8.3 and §13.1.2: an entity tag may hold obs-text and commas; a client's
/// If-None-Match list is split between tags, not inside one, and tags compare by their
/// bytes, so the stored response answers 304 to its own tag and 200 to a tag one byte off.
#[tokio::test]
async fn entity_tags_with_obs_text_and_commas_validate_by_their_bytes() {
    let origin = RawOrigin::start(RawBehaviour::SendThenClose(Bytes::from_static(
        b"HTTP/1.1 200 OK\r\nETag: \"caf\xe9,1\"\r\nCache-Control: max-age=600\r\n\
          Content-Length: 4\r\n\r\nbody",
    )))
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let first = get(&proxy.url("/tagged"), &[]).await;
    assert_eq!(first.text(), "body");
    let matched = if_none_match(&proxy, b"\"other\", \"caf\xe9,1\"").await;
    assert!(matched.starts_with("HTTP/1.1 304"), "{matched}");
    let one_byte_off = if_none_match(&proxy, b"\"caf\xe8,1\"").await;
    assert!(one_byte_off.starts_with("HTTP/1.1 200"), "{one_byte_off}");
    let split_inside = if_none_match(&proxy, b"\"caf\xe9").await;
    assert!(split_inside.starts_with("HTTP/1.1 200"), "{split_inside}");
}

/// A GET of `/tagged` with `tags` as its If-None-Match bytes; the raw answer.
async fn if_none_match(proxy: &Proxy, tags: &[u8]) -> String {
    let mut request = b"GET /tagged HTTP/1.1\r\nHost: a\r\nConnection: close\r\n".to_vec();
    request.extend_from_slice(b"If-None-Match: ");
    request.extend_from_slice(tags);
    request.extend_from_slice(b"\r\n\r\n");
    raw_exchange(proxy.addr, &request).await
}
