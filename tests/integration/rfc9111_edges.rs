//! The edges of RFC 9111 (issue 13): Age lists, statuses with explicit freshness,
//! `must-understand`, stored `Set-Cookie` by choice, HEAD. Each test names its section and
//! runs a real origin and a real outpost on loopback.

use crate::support;

use support::*;

/// RFC 9111 §5.1: an Age list (`3600, 0`, or two lines) counts by its first member; a first
/// member that is not a number makes the field invalid, and it is ignored.
#[tokio::test]
async fn age_lists_use_the_first_member() {
    let fixture = |age: &[&'static str]| {
        let mut headers = vec![("cache-control", "max-age=60".to_string())];
        headers.extend(age.iter().map(|value| ("age", value.to_string())));
        Fixture::Static {
            status: http::StatusCode::OK,
            headers,
            body: bytes::Bytes::from_static(b"body"),
        }
    };
    let origin = Origin::start(vec![
        ("/list", fixture(&["3600, 0"])),
        ("/lines", fixture(&["3600", "0"])),
        ("/invalid", fixture(&["soon, 3600"])),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for path in ["/list", "/lines", "/invalid"] {
        get(&proxy.url(path), &[]).await;
    }
    for stale in ["/list", "/lines"] {
        let reply = get(&proxy.url(stale), &[]).await;
        assert!(!is_hit(&reply), "{stale}: {}", cache_status(&reply));
        assert_eq!(origin.hits(stale), 2, "{stale}");
    }
    let ignored = get(&proxy.url("/invalid"), &[]).await;
    assert!(is_hit(&ignored), "{}", cache_status(&ignored));
    assert_eq!(origin.hits("/invalid"), 1);
}

/// RFC 9111 §5.2 and §4.2.1: `max-age =3600` and `max-age= 3600` do not match the
/// directive grammar (no whitespace around "="); invalid freshness information makes the
/// response stale, so it is validated on every reuse. Whitespace after a comma is fine.
#[tokio::test]
async fn a_max_age_with_whitespace_around_the_equals_sign_is_not_fresh() {
    let origin = Origin::start(vec![
        (
            "/before",
            Fixture::with_headers(200, &[("cache-control", "max-age =3600")], "b"),
        ),
        (
            "/after",
            Fixture::with_headers(200, &[("cache-control", "max-age= 3600")], "a"),
        ),
        (
            "/list",
            Fixture::with_headers(200, &[("cache-control", "public,  max-age=3600")], "l"),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for path in ["/before", "/after", "/list"] {
        get(&proxy.url(path), &[]).await;
    }
    for spaced in ["/before", "/after"] {
        let reply = get(&proxy.url(spaced), &[]).await;
        assert!(!is_hit(&reply), "{spaced}: {}", cache_status(&reply));
        assert_eq!(origin.hits(spaced), 2, "{spaced}");
    }
    let listed = get(&proxy.url("/list"), &[]).await;
    assert!(is_hit(&listed), "{}", cache_status(&listed));
    assert_eq!(origin.hits("/list"), 1);
}

/// RFC 9111 §3: any final status is storable with explicit freshness (a 500 with max-age,
/// an unknown 499 or 599, a 299); without it, only the heuristically cacheable ones and
/// `public` ones are (§4.2.2), given a Last-Modified to reckon from.
#[tokio::test]
async fn any_final_status_with_explicit_freshness_is_stored() {
    let routes: Vec<(&'static str, Fixture)> = vec![
        (
            "/500",
            Fixture::with_headers(500, &[("cache-control", "max-age=60")], "e"),
        ),
        (
            "/502",
            Fixture::with_headers(502, &[("cache-control", "s-maxage=60")], "e"),
        ),
        (
            "/400",
            Fixture::with_headers(400, &[("cache-control", "max-age=60")], "e"),
        ),
        (
            "/499",
            Fixture::with_headers(499, &[("cache-control", "max-age=60")], "e"),
        ),
        (
            "/599",
            Fixture::with_headers(599, &[("cache-control", "max-age=60")], "e"),
        ),
        (
            "/299",
            Fixture::with_headers(299, &[("cache-control", "max-age=60")], "e"),
        ),
        (
            "/expires",
            Fixture::with_headers(
                503,
                &[
                    ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
                    ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
                ],
                "e",
            ),
        ),
        // Heuristic freshness stays with the heuristically cacheable statuses...
        (
            "/heuristic-500",
            Fixture::with_headers(
                500,
                &[("last-modified", "Thu, 01 Jan 2015 00:00:00 GMT")],
                "e",
            ),
        ),
        // ...and responses marked explicitly cacheable (§4.2.2: "e.g., with a public
        // response directive"), whatever their status.
        (
            "/heuristic-599-public",
            Fixture::with_headers(
                599,
                &[
                    ("cache-control", "public"),
                    ("last-modified", "Thu, 01 Jan 2015 00:00:00 GMT"),
                ],
                "e",
            ),
        ),
    ];
    let paths: Vec<&'static str> = routes.iter().map(|(path, _)| *path).collect();
    let origin = Origin::start(routes).await;
    // No stale-on-error window in the way of seeing what is stored.
    let proxy = Proxy::start(&origin.url(), "[cache]\nstale_on_error = \"0s\"").await;
    for path in &paths {
        get(&proxy.url(path), &[]).await;
        let again = get(&proxy.url(path), &[]).await;
        let stored = *path != "/heuristic-500";
        assert_eq!(is_hit(&again), stored, "{path}: {}", cache_status(&again));
        assert_eq!(origin.hits(path), if stored { 1 } else { 2 }, "{path}");
    }
}

/// RFC 9111 §3 and §4.2.1: a path rule's `error_ttl` caps how long error statuses stay
/// fresh (here to nothing: they must be fetched again), while a 200 under the same rule and
/// errors elsewhere keep the origin's explicit freshness (the default).
#[tokio::test]
async fn a_path_rule_caps_the_lifetime_of_errors() {
    let long = [("cache-control", "max-age=600")];
    let origin = Origin::start(vec![
        ("/api/missing", Fixture::with_headers(404, &long, "e")),
        ("/api/broken", Fixture::with_headers(503, &long, "e")),
        ("/api/fine", Fixture::with_headers(200, &long, "ok")),
        ("/other/missing", Fixture::with_headers(404, &long, "e")),
    ])
    .await;
    let config = "[cache]\nstale_on_error = \"0s\"\n\
                  [[cache.rules]]\nprefix = \"/api/\"\nerror_ttl = \"0s\"\n";
    let proxy = Proxy::start(&origin.url(), config).await;
    for (path, capped) in [
        ("/api/missing", true),
        ("/api/broken", true),
        ("/api/fine", false),
        ("/other/missing", false),
    ] {
        get(&proxy.url(path), &[]).await;
        let again = get(&proxy.url(path), &[]).await;
        assert_eq!(is_hit(&again), !capped, "{path}: {}", cache_status(&again));
        assert_eq!(origin.hits(path), if capped { 2 } else { 1 }, "{path}");
    }
}

/// RFC 9111 §5.2.2.3: `must-understand` stores a response whose status this cache
/// understands even with `no-store`; with a status it does not understand, it is not
/// stored, whatever else the response says.
#[tokio::test]
async fn must_understand_depends_on_the_status() {
    let origin = Origin::start(vec![
        (
            "/understood",
            Fixture::with_headers(
                200,
                &[("cache-control", "max-age=60, must-understand, no-store")],
                "ok",
            ),
        ),
        (
            "/unknown",
            Fixture::with_headers(
                299,
                &[("cache-control", "max-age=60, must-understand")],
                "odd",
            ),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for path in ["/understood", "/unknown"] {
        get(&proxy.url(path), &[]).await;
    }
    assert!(is_hit(&get(&proxy.url("/understood"), &[]).await));
    let unknown = get(&proxy.url("/unknown"), &[]).await;
    assert!(!is_hit(&unknown), "{}", cache_status(&unknown));
    assert_eq!(origin.hits("/unknown"), 2);
}

/// RFC 9111 §7.3 and §3: by default a response with Set-Cookie is not shared; with
/// `cache.store_set_cookie = true` it is stored with its Set-Cookie fields and reused.
#[tokio::test]
async fn set_cookie_is_stored_only_when_configured() {
    let origin = Origin::start(vec![(
        "/landing",
        Fixture::with_headers(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "ab=variant-b"),
            ],
            "landing",
        ),
    )])
    .await;
    let safe = Proxy::start(&origin.url(), "").await;
    get(&safe.url("/landing"), &[]).await;
    let again = get(&safe.url("/landing"), &[]).await;
    assert!(!is_hit(&again), "{}", cache_status(&again));

    let rfc = Proxy::start(&origin.url(), "[cache]\nstore_set_cookie = true").await;
    get(&rfc.url("/landing"), &[]).await;
    let hit = get(&rfc.url("/landing"), &[]).await;
    assert!(is_hit(&hit), "{}", cache_status(&hit));
    assert_eq!(hit.header("set-cookie"), Some("ab=variant-b"));
}

fn head(url: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::head(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

/// RFC 9111 §4.3.5: a HEAD for a stale stored GET response is forwarded as HEAD; its 200
/// with the same validators freshens the stored response (the next GET is a hit, with the
/// new headers), and one with another validator drops it (the next GET goes to the origin).
#[tokio::test]
async fn a_head_freshens_or_invalidates_the_stored_get() {
    let stale = |etag: &'static str| Fixture::Static {
        status: http::StatusCode::OK,
        headers: vec![
            ("cache-control", "max-age=60".to_string()),
            ("age", "3600".to_string()),
            ("etag", etag.to_string()),
        ],
        body: bytes::Bytes::from_static(b"body"),
    };
    let fresh_head = |etag: &'static str| Fixture::Static {
        status: http::StatusCode::OK,
        headers: vec![
            ("cache-control", "max-age=600".to_string()),
            ("etag", etag.to_string()),
            ("x-refreshed", "yes".to_string()),
        ],
        body: bytes::Bytes::from_static(b"body"),
    };
    let origin = Origin::start(vec![
        (
            "/same",
            Fixture::sequence(vec![stale("\"v1\""), fresh_head("\"v1\"")]),
        ),
        (
            "/changed",
            Fixture::sequence(vec![stale("\"v1\""), fresh_head("\"v2\"")]),
        ),
    ])
    .await;
    head_freshens_same_and_drops(&origin, "/changed").await;
}

/// RFC 9111 §4.3.5 is for stored responses without validators, which a conditional GET
/// cannot check: a HEAD 200 with no validator either freshens the stored response with
/// its fields, unless the length it states is not the stored body's (then the stored
/// response is outdated and the next GET goes to the origin).
#[tokio::test]
async fn a_head_freshens_a_stored_get_that_has_no_validators() {
    let stale = Fixture::Static {
        status: http::StatusCode::OK,
        headers: vec![
            ("cache-control", "max-age=60".to_string()),
            ("age", "3600".to_string()),
        ],
        body: bytes::Bytes::from_static(b"body"),
    };
    // A HEAD answer of the fixture states the body's length: "body" or "longer body".
    let fresh_head = |body: &'static [u8]| Fixture::Static {
        status: http::StatusCode::OK,
        headers: vec![
            ("cache-control", "max-age=600".to_string()),
            ("x-refreshed", "yes".to_string()),
        ],
        body: bytes::Bytes::from_static(body),
    };
    let origin = Origin::start(vec![
        (
            "/same",
            Fixture::sequence(vec![stale.clone(), fresh_head(b"body")]),
        ),
        (
            "/longer",
            Fixture::sequence(vec![stale, fresh_head(b"longer body")]),
        ),
    ])
    .await;
    head_freshens_same_and_drops(&origin, "/longer").await;
}

/// Stores `/same` and `dropped` from `origin`, sends a HEAD for each (forwarded as HEAD),
/// and checks that `/same` was freshened by its HEAD (a hit with the HEAD's `X-Refreshed`)
/// and `dropped` was not (the next GET goes to the origin).
async fn head_freshens_same_and_drops(origin: &Origin, dropped: &str) {
    let proxy = Proxy::start(&origin.url(), "").await;
    let client = client();
    for path in ["/same", dropped] {
        get(&proxy.url(path), &[]).await;
        let reply = send(&client, head(&proxy.url(path))).await;
        assert_eq!(reply.status, 200);
        assert_eq!(origin.last(path).method, http::Method::HEAD, "{path}");
    }
    let freshened = get(&proxy.url("/same"), &[]).await;
    assert!(is_hit(&freshened), "{}", cache_status(&freshened));
    assert_eq!(freshened.header("x-refreshed"), Some("yes"));
    assert_eq!(freshened.text(), "body");
    assert_eq!(origin.hits("/same"), 2);

    let replaced = get(&proxy.url(dropped), &[]).await;
    assert!(!is_hit(&replaced), "{}", cache_status(&replaced));
    assert_eq!(origin.hits(dropped), 3);
}

/// RFC 9213 §2.1: a configured targeted field (here `Edge-Control`) that does not parse as a
/// Structured Field Dictionary is ignored whole and Cache-Control applies; a valid one
/// overrides Cache-Control for this cache.
#[tokio::test]
async fn a_configured_targeted_field_is_ignored_when_invalid() {
    let origin = Origin::start(vec![
        (
            "/invalid",
            Fixture::with_headers(
                200,
                &[
                    ("cache-control", "no-store"),
                    ("edge-control", "max-age=60, ("),
                ],
                "body",
            ),
        ),
        (
            "/valid",
            Fixture::with_headers(
                200,
                &[
                    ("cache-control", "no-store"),
                    ("edge-control", "max-age=60"),
                ],
                "body",
            ),
        ),
    ])
    .await;
    let proxy = Proxy::start(
        &origin.url(),
        "[cache]\ntargeted_cache_control = [\"Edge-Control\", \"CDN-Cache-Control\"]",
    )
    .await;
    for path in ["/invalid", "/valid"] {
        get(&proxy.url(path), &[]).await;
    }
    let invalid = get(&proxy.url("/invalid"), &[]).await;
    assert!(!is_hit(&invalid), "{}", cache_status(&invalid));
    let valid = get(&proxy.url("/valid"), &[]).await;
    assert!(is_hit(&valid), "{}", cache_status(&valid));
}

/// RFC 9111 §4.2.4 for HEAD: when the origin answers a forwarded HEAD with 503, the stored
/// GET response answers it stale, as it would a GET.
#[tokio::test]
async fn a_head_is_answered_stale_when_the_origin_fails() {
    let origin = Origin::start(vec![(
        "/doc",
        Fixture::sequence(vec![
            Fixture::with_headers(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("age", "3600"),
                    ("etag", "\"v1\""),
                ],
                "body",
            ),
            Fixture::with_headers(503, &[], "down"),
        ]),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/doc"), &[]).await;
    let reply = send(&client(), head(&proxy.url("/doc"))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("4"));
    let status = cache_status(&reply);
    assert!(status.contains("fwd=stale; fwd-status=503"), "{status}");
    assert_eq!(origin.last("/doc").method, http::Method::HEAD);
}

/// RFC 9110 §10.1.1, §15.2.1: a client that sends `Expect: 100-continue` gets the interim
/// 100 before it sends its body, then the origin's final answer; the origin receives the
/// whole body and no Expect of ours.
#[tokio::test]
async fn expect_100_continue_works_for_request_bodies() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start(vec![("/upload", Fixture::CountBody)]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"PUT /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 11\r\n\
              Expect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = read_head(&mut stream).await;
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    stream.write_all(b"hello world").await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.ends_with("11"), "{rest}");
    assert!(!origin.last("/upload").headers.contains_key("expect"));
}

/// An origin that precedes every answer with `102 Processing` and `103 Early Hints`; for
/// `/hinted` it sends the final response only once `final_may_go` is notified.
async fn hinting_origin(
    final_may_go: std::sync::Arc<tokio::sync::Notify>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (final_may_go, requests) = (final_may_go.clone(), requests.clone());
            tokio::spawn(async move {
                loop {
                    let head = read_head(&mut stream).await;
                    if head.is_empty() {
                        return;
                    }
                    requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let interim = b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\
                                    Link: </style.css>; rel=preload\r\n\r\n";
                    let _ = stream.write_all(interim).await;
                    if head.starts_with(b"GET /hinted ") {
                        final_may_go.notified().await;
                    }
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n\
                              Content-Length: 5\r\n\r\nfinal",
                        )
                        .await;
                }
            });
        }
    });
    (url, task)
}

/// Reads from `stream` into `seen` until `done` holds for it.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    seen: &mut Vec<u8>,
    done: impl Fn(&str) -> bool,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while !done(&String::from_utf8_lossy(seen)) {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("outpost answers in time")
            .unwrap();
        assert!(read > 0, "closed after {}", String::from_utf8_lossy(seen));
        seen.extend_from_slice(&buf[..read]);
    }
    String::from_utf8_lossy(&std::mem::take(seen)).into_owned()
}

/// RFC 9110 §15.2 and RFC 8297: the origin's 102 and 103 reach an HTTP/1.1 client before
/// the final response (the origin holds the final one back until the client has them), in
/// order, with their fields; they are not merged into the final response or stored, so a
/// hit carries neither. An uncached POST gets them too.
#[tokio::test]
async fn interim_responses_reach_the_client_first_and_are_never_stored() {
    use tokio::io::AsyncWriteExt;
    let final_may_go = std::sync::Arc::new(tokio::sync::Notify::new());
    let requests = std::sync::Arc::default();
    let (origin, _task) =
        hinting_origin(final_may_go.clone(), std::sync::Arc::clone(&requests)).await;
    let proxy = Proxy::start(&origin, "").await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request = b"GET /hinted HTTP/1.1\r\nHost: example.test\r\n\r\n";
    let mut seen = Vec::new();

    client.write_all(request).await.unwrap();
    let interim = read_until(&mut client, &mut seen, |s| {
        s.matches("\r\n\r\n").count() >= 2
    })
    .await;
    assert_eq!(
        interim,
        "HTTP/1.1 102 Processing\r\n\r\n\
         HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
    );
    final_may_go.notify_one();
    let first = read_until(&mut client, &mut seen, |s| s.ends_with("final")).await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(!first.to_ascii_lowercase().contains("link:"), "{first}");

    client.write_all(request).await.unwrap();
    let hit = read_until(&mut client, &mut seen, |s| s.ends_with("final")).await;
    assert!(hit.starts_with("HTTP/1.1 200 OK\r\n"), "{hit}");
    assert!(hit.contains("; hit"), "{hit}");
    assert!(!hit.to_ascii_lowercase().contains("link:"), "{hit}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Forwarded uncached, with the final response right behind: still first, in order.
    client
        .write_all(b"POST /form HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let posted = read_until(&mut client, &mut seen, |s| s.ends_with("final")).await;
    assert!(
        posted.starts_with(
            "HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\
             link: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        "{posted}"
    );
}

/// RFC 9110 §15.2: "A server MUST NOT send a 1xx response to an HTTP/1.0 client"; HTTP/2
/// clients get none either (hyper's server cannot send them), and both get the final
/// response.
#[tokio::test]
async fn http_1_0_and_h2_clients_get_only_the_final_response() {
    let requests = std::sync::Arc::default();
    let (origin, _task) = hinting_origin(std::sync::Arc::default(), requests).await;
    let proxy = Proxy::start(&origin, "").await;
    let old = raw_exchange(
        proxy.addr,
        b"GET /old HTTP/1.0\r\nHost: example.test\r\n\r\n",
    )
    .await;
    assert!(old.starts_with("HTTP/1.0 200 OK\r\n"), "{old}");
    assert!(old.ends_with("final"), "{old}");
    let h2 = h2c_client()
        .request(
            http::Request::get(proxy.url("/h2"))
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(h2.status(), http::StatusCode::OK);
    assert!(!h2.headers().contains_key("link"));
}

/// RFC 9110 §5.6.7 and RFC 9111 §5.3: an `Expires` in any of the three HTTP-date formats
/// (the obsolete RFC 850 and asctime ones a recipient must accept), or with its names in
/// another case or a weekday that does not match the date (read robustly, as §5.6.7
/// encourages), makes the response fresh; one that is no date at all means already
/// expired. The dates are ten years from now (an RFC 850 year has two digits, read as
/// within 50 years of now).
#[tokio::test]
async fn expires_is_read_in_every_http_date_format() {
    let ten_years = std::time::Duration::from_secs(10 * 365 * 86_400);
    let imf = httpdate::fmt_http_date(std::time::SystemTime::now() + ten_years);
    // `Thu, 18 Aug 2036 02:01:18 GMT`
    let fields: Vec<&str> = imf.split([' ', ',']).filter(|f| !f.is_empty()).collect();
    let [weekday, day, month, year, time, _zone] = fields[..] else {
        panic!("an IMF-fixdate: {imf}");
    };
    let full_weekday = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ]
    .into_iter()
    .find(|full| full.starts_with(weekday))
    .unwrap();
    let other_weekday = if weekday == "Mon" { "Tue" } else { "Mon" };
    let day_number: u32 = day.parse().unwrap();
    let fresh = [
        ("/imf", imf.clone()),
        (
            "/rfc850",
            format!("{full_weekday}, {day}-{month}-{} {time} GMT", &year[2..]),
        ),
        (
            "/asctime",
            format!("{weekday} {month} {day_number:>2} {time} {year}"),
        ),
        ("/wrong-weekday", imf.replacen(weekday, other_weekday, 1)),
        ("/upper-case", imf.to_uppercase()),
        ("/lower-zone", imf.replace("GMT", "gmt")),
    ];
    let expired = [
        ("/zero", "0".to_string()),
        ("/no-time", format!("{weekday}, {day} {month} {year}")),
        // Off the formats' shapes: no comma, a two-digit year in IMF-fixdate.
        ("/no-comma", imf.replacen(',', "", 1)),
        ("/short-year", imf.replacen(year, &year[2..], 1)),
    ];
    let origin = Origin::start(
        fresh
            .iter()
            .chain(&expired)
            .map(|(path, expires)| {
                (
                    *path,
                    Fixture::with_headers(200, &[("expires", expires)], "body"),
                )
            })
            .collect(),
    )
    .await;
    let proxy = Proxy::start(&origin.url(), "[cache]\nstale_on_error = \"0s\"").await;
    let cases = fresh
        .iter()
        .map(|c| (c, true))
        .chain(expired.iter().map(|c| (c, false)));
    for ((path, expires), is_fresh) in cases {
        get(&proxy.url(path), &[]).await;
        let again = get(&proxy.url(path), &[]).await;
        assert_eq!(
            is_hit(&again),
            is_fresh,
            "{path} ({expires}): {}",
            cache_status(&again)
        );
        assert_eq!(origin.hits(path), if is_fresh { 1 } else { 2 }, "{path}");
    }
}

/// RFC 9110 §13.1.2: a client's If-None-Match that repeats a stored malformed ETag (an
/// unquoted one, as some origins send) character for character gets a 304 from the cache,
/// as nginx and Varnish give it; a different one gets the response.
#[tokio::test]
async fn a_malformed_etag_echoed_back_is_not_modified() {
    let origin = Origin::start(vec![(
        "/unquoted",
        Fixture::with_headers(
            200,
            &[("cache-control", "max-age=3600"), ("etag", "abcdef")],
            "body",
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/unquoted"), &[]).await;
    let same = get(&proxy.url("/unquoted"), &[("if-none-match", "abcdef")]).await;
    assert_eq!(same.status, http::StatusCode::NOT_MODIFIED);
    let other = get(&proxy.url("/unquoted"), &[("if-none-match", "abcdeg")]).await;
    assert_eq!(
        (other.status, other.body.as_ref()),
        (http::StatusCode::OK, &b"body"[..])
    );
    assert_eq!(origin.hits("/unquoted"), 1);
}

/// RFC 9111 §5.2.2.4 and §5.2.2.7: a qualified `no-cache` or `private` limits only the fields
/// it names. The response is stored and reused without revalidation, minus those fields:
/// the client whose request brought it gets them (both cookie lines), later clients are
/// served from the cache without them.
#[tokio::test]
async fn qualified_no_cache_and_private_store_the_rest_of_the_response() {
    let origin = Origin::start(vec![
        (
            "/no-cache-cookie",
            fixed(
                &[
                    ("cache-control", "max-age=60, no-cache=\"Set-Cookie\""),
                    ("set-cookie", "a=1; Path=/"),
                    ("set-cookie", "b=2; Path=/"),
                ],
                "page",
            ),
        ),
        (
            "/private-field",
            fixed(
                &[
                    ("cache-control", "max-age=60, private=\"x-user\""),
                    ("x-user", "alice"),
                    ("x-shared", "yes"),
                ],
                "page",
            ),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;

    let first = get(&proxy.url("/no-cache-cookie"), &[]).await;
    let cookies: Vec<_> = first.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
    let second = get(&proxy.url("/no-cache-cookie"), &[]).await;
    assert!(is_hit(&second), "{}", cache_status(&second));
    assert_eq!(second.text(), "page");
    assert_eq!(
        second.header("set-cookie"),
        None,
        "a user's cookie was shared"
    );
    assert_eq!(origin.hits("/no-cache-cookie"), 1);

    let first = get(&proxy.url("/private-field"), &[]).await;
    assert_eq!(first.header("x-user"), Some("alice"));
    let second = get(&proxy.url("/private-field"), &[]).await;
    assert!(is_hit(&second), "{}", cache_status(&second));
    assert_eq!(second.header("x-user"), None, "a private field was shared");
    assert_eq!(second.header("x-shared"), Some("yes"));
    assert_eq!(origin.hits("/private-field"), 1);
}

/// RFC 9111 §5.2.2.4 and §5.2.2.7 let a cache take the qualified forms as unqualified; we
/// do when they name a field the response cannot do without (here Content-Type): then
/// `no-cache` means every reuse is validated, and `private` that nothing is stored.
#[tokio::test]
async fn qualified_forms_naming_essential_fields_act_unqualified() {
    let origin = Origin::start(vec![
        (
            "/no-cache-type",
            fixed(
                &[("cache-control", "max-age=60, no-cache=\"content-type\"")],
                "page",
            ),
        ),
        (
            "/private-vary",
            fixed(&[("cache-control", "max-age=60, private=\"vary\"")], "page"),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for path in ["/no-cache-type", "/private-vary"] {
        get(&proxy.url(path), &[]).await;
        let again = get(&proxy.url(path), &[]).await;
        assert!(!is_hit(&again), "{path}: {}", cache_status(&again));
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

/// RFC 9111 §4.1: selecting fields match when they mean the same (RFC 9110 §12.4.2: a
/// language list's preference is its weights, so order among equal weights says nothing)
/// or, by the field's semantics, when the stored response is the one the origin would
/// choose: a response in German (`Content-Language: de`) answers a request that prefers
/// German most, whatever else it lists; a request that prefers another language first goes
/// to the origin.
#[tokio::test]
async fn accept_language_variants_match_by_meaning() {
    let origin = Origin::start(vec![(
        "/page",
        Fixture::Static {
            status: http::StatusCode::OK,
            headers: header_list(&[
                ("cache-control", "max-age=600"),
                ("vary", "Accept-Language"),
                ("content-language", "de"),
            ]),
            body: bytes::Bytes::from_static(b"Seite"),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let ask = |languages: &'static str| {
        let url = proxy.url("/page");
        async move { get(&url, &[("accept-language", languages)]).await }
    };
    assert!(!is_hit(&ask("en, de").await));
    for same in ["de, en", "DE ,en;q=1", "fr;q=0.5, de;q=1.0", "de"] {
        let reply = ask(same).await;
        assert!(is_hit(&reply), "{same}: {}", cache_status(&reply));
        assert_eq!(reply.text(), "Seite");
    }
    assert_eq!(origin.hits("/page"), 1);
    for other in ["en, de;q=0.5", "de-AT", "fr"] {
        let reply = ask(other).await;
        assert!(!is_hit(&reply), "{other}: {}", cache_status(&reply));
    }
    assert_eq!(origin.hits("/page"), 4);
}

/// RFC 9111 §4.3.1 and §4.3.4: on a Vary miss the fill asks the origin with another stored
/// variant's strong entity tag (and nothing else); the origin's 304 says this request
/// selects that same representation, so its stored body answers and is stored for this
/// request's variant too, without the origin sending it again. A variant with only a weak
/// tag is not offered this way.
#[tokio::test]
async fn a_vary_miss_is_validated_with_another_variants_entity_tag() {
    let validated = |etag: &'static str| Fixture::Validated {
        etag,
        headers: header_list(&[("cache-control", "max-age=600"), ("vary", "X-Device")]),
        body: bytes::Bytes::from_static(b"one body for every device"),
        not_modified_headers: header_list(&[
            ("cache-control", "max-age=600"),
            ("vary", "X-Device"),
            ("x-validated", "yes"),
        ]),
    };
    let origin = Origin::start(vec![
        ("/strong", validated("\"v1\"")),
        ("/weak", validated("W/\"v1\"")),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let device = |name: &'static str| [("x-device", name)];

    let first = get(&proxy.url("/strong"), &device("phone")).await;
    assert_eq!(first.text(), "one body for every device");
    assert!(origin
        .last("/strong")
        .headers
        .get("if-none-match")
        .is_none());
    let other = get(&proxy.url("/strong"), &device("desktop")).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.text(), "one body for every device");
    assert_eq!(other.header("x-validated"), Some("yes"));
    let asked = origin.last("/strong");
    assert_eq!(asked.headers["if-none-match"], "\"v1\"");
    assert!(asked.headers.get("if-modified-since").is_none());
    let again = get(&proxy.url("/strong"), &device("desktop")).await;
    assert!(is_hit(&again), "{}", cache_status(&again));
    let phone = get(&proxy.url("/strong"), &device("phone")).await;
    assert!(is_hit(&phone), "{}", cache_status(&phone));
    assert_eq!(origin.hits("/strong"), 2);
    // A request that stores nothing (RFC 9111 §5.2.1.5) does not validate others' variant.
    let unstored = [("x-device", "tablet"), ("cache-control", "no-store")];
    assert_eq!(get(&proxy.url("/strong"), &unstored).await.status, 200);
    assert!(origin
        .last("/strong")
        .headers
        .get("if-none-match")
        .is_none());
    assert!(is_hit(&get(&proxy.url("/strong"), &device("phone")).await));

    get(&proxy.url("/weak"), &device("phone")).await;
    let other = get(&proxy.url("/weak"), &device("desktop")).await;
    assert_eq!(other.text(), "one body for every device");
    assert!(origin.last("/weak").headers.get("if-none-match").is_none());
}

/// RFC 9111 §4.3.1 and §4.3.4: with several representations stored (one per device
/// class), a Vary miss offers the entity tags of all of them in one If-None-Match; the
/// origin's 304 names the one this request selects, and that one's body answers. A 304
/// that names none of them (here: no ETag at all, which could be any) is not guessed at:
/// the representation is asked for again, whole.
#[tokio::test]
async fn a_vary_miss_offers_every_stored_entity_tag_and_the_304_names_one() {
    let full = |etag: &'static str, body: &'static [u8]| Fixture::Static {
        status: http::StatusCode::OK,
        headers: vec![
            ("cache-control", "max-age=600".to_string()),
            ("vary", "X-Device".to_string()),
            ("etag", etag.to_string()),
        ],
        body: bytes::Bytes::from_static(body),
    };
    let not_modified = |etag: Option<&'static str>| Fixture::Static {
        status: http::StatusCode::NOT_MODIFIED,
        headers: [("cache-control", "max-age=600"), ("vary", "X-Device")]
            .into_iter()
            .chain(etag.map(|etag| ("etag", etag)))
            .map(|(name, value)| (name, value.to_string()))
            .collect(),
        body: bytes::Bytes::new(),
    };
    let origin = Origin::start(vec![(
        "/page",
        Fixture::sequence(vec![
            full("\"small\"", b"small page"),
            full("\"large\"", b"large page"),
            not_modified(Some("\"large\"")),
            not_modified(None),
            full("\"watch\"", b"watch page"),
        ]),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let device = |name: &'static str| [("x-device", name)];
    assert_eq!(
        get(&proxy.url("/page"), &device("phone")).await.text(),
        "small page"
    );
    assert_eq!(
        get(&proxy.url("/page"), &device("desktop")).await.text(),
        "large page"
    );

    let tablet = get(&proxy.url("/page"), &device("tablet")).await;
    assert_eq!(tablet.status, 200);
    assert_eq!(tablet.text(), "large page");
    let offered = origin.last("/page").headers["if-none-match"].clone();
    let mut tags: Vec<&str> = offered.to_str().unwrap().split(", ").collect();
    tags.sort_unstable();
    assert_eq!(tags, ["\"large\"", "\"small\""]);
    let again = get(&proxy.url("/page"), &device("tablet")).await;
    assert!(is_hit(&again), "{}", cache_status(&again));
    assert_eq!(again.text(), "large page");

    let watch = get(&proxy.url("/page"), &device("watch")).await;
    assert_eq!(watch.status, 200);
    assert_eq!(watch.text(), "watch page");
    assert!(origin.last("/page").headers.get("if-none-match").is_none());
    assert_eq!(origin.hits("/page"), 5);
}

/// RFC 9111 §4.3.3, §4.3.4: a 304 that selects no stored response the fill validated (it
/// names another entity tag) answers nobody: the client asked without validators of its
/// own. The fill asks again without validators and serves (and stores) the full answer, on
/// a Vary miss and on a stale entry's revalidation alike.
#[tokio::test]
async fn a_304_for_another_representation_is_asked_again_whole() {
    let full = |etag: &'static str, body: &'static [u8], age: &'static str| Fixture::Static {
        status: http::StatusCode::OK,
        headers: vec![
            ("cache-control", "max-age=600".to_string()),
            ("vary", "X-Device".to_string()),
            ("etag", etag.to_string()),
            ("age", age.to_string()),
        ],
        body: bytes::Bytes::from_static(body),
    };
    let elsewhere = Fixture::Static {
        status: http::StatusCode::NOT_MODIFIED,
        headers: vec![
            ("cache-control", "max-age=600".to_string()),
            ("etag", "\"elsewhere\"".to_string()),
        ],
        body: bytes::Bytes::new(),
    };
    let origin = Origin::start(vec![
        (
            "/vary",
            Fixture::sequence(vec![
                full("\"v1\"", b"phone body", "0"),
                elsewhere.clone(),
                full("\"v2\"", b"desktop body", "0"),
            ]),
        ),
        (
            "/stale",
            Fixture::sequence(vec![
                full("\"v1\"", b"old body", "3600"),
                elsewhere,
                full("\"v2\"", b"new body", "0"),
            ]),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let device = |name: &'static str| [("x-device", name)];
    get(&proxy.url("/vary"), &device("phone")).await;
    let desktop = get(&proxy.url("/vary"), &device("desktop")).await;
    assert_eq!(desktop.status, 200);
    assert_eq!(desktop.text(), "desktop body");
    assert_eq!(origin.hits("/vary"), 3);
    assert!(origin.last("/vary").headers.get("if-none-match").is_none());
    assert!(is_hit(&get(&proxy.url("/vary"), &device("desktop")).await));

    get(&proxy.url("/stale"), &device("phone")).await;
    let renewed = get(&proxy.url("/stale"), &device("phone")).await;
    assert_eq!(renewed.status, 200);
    assert_eq!(renewed.text(), "new body");
    assert_eq!(origin.hits("/stale"), 3);
}
