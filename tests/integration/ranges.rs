//! Range requests (RFC 9110 §14) answered from stored objects, and partial content (RFC
//! 9111 §3.3, §3.4): 206 responses kept as partial entries, ranges served from them, pieces
//! combined into the whole representation. A real origin that honours Range, a real
//! outpost, on loopback.

use crate::support;

use support::*;

/// 1000 bytes whose every position is recognisable.
fn representation() -> bytes::Bytes {
    (0..1000u32)
        .map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz"[(i % 36) as usize])
        .collect()
}

fn ranged(etag: &str, body: bytes::Bytes) -> Fixture {
    Fixture::Ranged {
        headers: header_list(&[("cache-control", "max-age=60"), ("etag", etag)]),
        body,
    }
}

/// Ranges starting past 100 bytes are forwarded; purges are allowed from loopback.
const CONFIG: &str =
    "[cache]\nrange_fill_max_offset = \"100\"\npurge_allowed = [\"127.0.0.1/32\"]\n";

async fn range(proxy: &Proxy, path: &str, spec: &str) -> Reply {
    get(&proxy.url(path), &[("range", spec)]).await
}

fn assert_piece(reply: &Reply, first: usize, last: usize) {
    let whole = representation();
    assert_eq!(
        reply.status,
        http::StatusCode::PARTIAL_CONTENT,
        "{}",
        reply.text()
    );
    assert_eq!(
        reply.header("content-range"),
        Some(format!("bytes {first}-{last}/1000").as_str())
    );
    assert_eq!(reply.body, whole.slice(first..=last));
}

/// RFC 9111 §3.3: a 206 to a forwarded range is stored as a partial entry, and a later
/// range wholly inside it is served from it without the origin; a range that is not
/// inside goes to the origin with its Range, never as a whole fetch. A purge removes it.
#[tokio::test]
async fn a_stored_206_answers_the_ranges_inside_it() {
    let origin = Origin::start(vec![("/video", ranged("\"v1\"", representation()))]).await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;
    let admin = start_admin(&proxy).await;

    let first = range(&proxy, "/video", "bytes=200-599").await;
    assert_piece(&first, 200, 599);
    // The status board counts the partial entry and its bytes against its own budget.
    let status = get(&format!("{admin}/status.json"), &[]).await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let partial = &status["tiers"]["partial"];
    assert_eq!(partial["entries"], 1, "{partial}");
    assert!(partial["bytes"].as_u64().unwrap() >= 400, "{partial}");
    assert_eq!(partial["capacity"], 64 << 20, "{partial}");
    let status = cache_status(&first);
    assert!(
        status.contains("fwd=uri-miss") && status.contains("stored"),
        "{status}"
    );
    assert_eq!(origin.last("/video").headers["range"], "bytes=200-599");
    assert_eq!(origin.last("/video").headers["accept-encoding"], "identity");

    let inside = range(&proxy, "/video", "bytes=300-399").await;
    assert_piece(&inside, 300, 399);
    assert!(is_hit(&inside), "{}", cache_status(&inside));
    let suffix_outside = range(&proxy, "/video", "bytes=-10").await;
    assert_piece(&suffix_outside, 990, 999);
    assert!(!is_hit(&suffix_outside));
    assert_eq!(origin.last("/video").headers["range"], "bytes=-10");
    assert_eq!(origin.hits("/video"), 2);

    let purge = send(
        &client(),
        http::Request::builder()
            .method("PURGE")
            .uri(proxy.url("/video"))
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(purge.status, http::StatusCode::OK, "{}", purge.text());
    let after_purge = range(&proxy, "/video", "bytes=300-399").await;
    assert_piece(&after_purge, 300, 399);
    assert!(!is_hit(&after_purge));
    assert_eq!(origin.hits("/video"), 3);
}

/// RFC 9111 §4.3.1, §4.3.4: a partial entry that may not be reused unvalidated (here
/// `no-cache`) is validated with its strong entity tag when it holds the range asked for:
/// the origin's 304 freshens it and the range is answered from its pieces, the bytes not
/// sent again (`fwd=stale; fwd-status=304`). When the representation changed, the origin's
/// 206 replaces the piece, and the client gets the new bytes. One with a weak entity tag
/// cannot vouch for bytes and is fetched anew, unvalidated.
#[tokio::test]
async fn a_partial_entry_that_must_be_validated_is_revalidated_with_its_entity_tag() {
    let changed: bytes::Bytes = representation()
        .iter()
        .map(u8::to_ascii_uppercase)
        .collect();
    let must_validate = |etag: &str, body| Fixture::Ranged {
        headers: header_list(&[("cache-control", "no-cache"), ("etag", etag)]),
        body,
    };
    let origin = Origin::start(vec![
        (
            "/movie",
            Fixture::sequence(vec![
                must_validate("\"m1\"", representation()),
                must_validate("\"m1\"", representation()),
                must_validate("\"m2\"", changed.clone()),
            ]),
        ),
        ("/weak", must_validate("W/\"w1\"", representation())),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;

    assert_piece(&range(&proxy, "/movie", "bytes=200-599").await, 200, 599);
    let validated = range(&proxy, "/movie", "bytes=300-399").await;
    assert_piece(&validated, 300, 399);
    let status = cache_status(&validated);
    assert!(
        status.contains("fwd=stale") && status.contains("fwd-status=304"),
        "{status}"
    );
    let asked = origin.last("/movie");
    assert_eq!(asked.headers["if-none-match"], "\"m1\"");
    assert_eq!(asked.headers["range"], "bytes=300-399");
    assert_eq!(origin.hits("/movie"), 2);

    let replaced = range(&proxy, "/movie", "bytes=250-349").await;
    assert_eq!(replaced.status, http::StatusCode::PARTIAL_CONTENT);
    assert_eq!(replaced.body, changed.slice(250..=349), "the new bytes");
    assert_eq!(replaced.header("etag"), Some("\"m2\""));
    assert!(cache_status(&replaced).contains("fwd-status=206"));

    assert_piece(&range(&proxy, "/weak", "bytes=200-599").await, 200, 599);
    let refetched = range(&proxy, "/weak", "bytes=300-399").await;
    assert_piece(&refetched, 300, 399);
    assert!(!origin.last("/weak").headers.contains_key("if-none-match"));
}

/// RFC 5861 §4, RFC 9111 §4.2.4: a stale partial entry whose validation meets an origin
/// that is down answers the range it holds, as a whole stale response would
/// (`fwd=stale`, the error in `detail`); one that forbids stale use does not.
#[tokio::test]
async fn a_stale_partial_entry_answers_when_the_origin_is_down() {
    let stale_piece = |cache_control: &str| Fixture::Ranged {
        headers: header_list(&[
            ("cache-control", cache_control),
            ("age", "3600"),
            ("etag", "\"s1\""),
        ]),
        body: representation(),
    };
    let mut origin = Origin::start(vec![
        ("/clip", stale_piece("max-age=60")),
        ("/strict", stale_piece("max-age=60, must-revalidate")),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;
    assert_piece(&range(&proxy, "/clip", "bytes=200-599").await, 200, 599);
    assert_piece(&range(&proxy, "/strict", "bytes=200-599").await, 200, 599);
    origin.stop();

    let served = range(&proxy, "/clip", "bytes=300-399").await;
    assert_piece(&served, 300, 399);
    let status = cache_status(&served);
    assert!(
        status.contains("fwd=stale") && status.contains("detail=\"connection_refused\""),
        "{status}"
    );
    let refused = range(&proxy, "/strict", "bytes=300-399").await;
    assert_eq!(
        refused.status,
        http::StatusCode::BAD_GATEWAY,
        "{}",
        refused.text()
    );
}

/// RFC 9111 §3.4: pieces with the same strong validator combine; once they cover the
/// representation it is stored whole, and a request without Range is a hit with every
/// byte, though the origin was only ever asked for ranges.
#[tokio::test]
async fn adjoining_pieces_with_one_strong_validator_become_the_whole_representation() {
    let origin = Origin::start(vec![("/iso", ranged("\"v1\"", representation()))]).await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;

    assert_piece(&range(&proxy, "/iso", "bytes=500-").await, 500, 999);
    // Starts within the first 100 bytes, but pieces are held: the missing one is fetched.
    assert_piece(&range(&proxy, "/iso", "bytes=0-520").await, 0, 520);
    assert_eq!(origin.last("/iso").headers["range"], "bytes=0-520");

    let whole = get(&proxy.url("/iso"), &[]).await;
    assert_eq!(whole.status, http::StatusCode::OK);
    assert_eq!(whole.body, representation());
    assert!(is_hit(&whole), "{}", cache_status(&whole));
    assert!(origin
        .seen()
        .iter()
        .all(|seen| seen.headers.contains_key("range")));
    assert_eq!(origin.hits("/iso"), 2);
}

/// RFC 9111 §3.4: pieces with different validators are never combined: the newer one
/// replaces what was held, so no response mixes bytes of two representations.
#[tokio::test]
async fn pieces_of_a_changed_representation_are_never_mixed() {
    let changed: bytes::Bytes = representation()
        .iter()
        .map(u8::to_ascii_uppercase)
        .collect();
    let origin = Origin::start(vec![(
        "/doc",
        Fixture::sequence(vec![
            ranged("\"v1\"", representation()),
            ranged("\"v2\"", changed.clone()),
        ]),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;

    assert_piece(&range(&proxy, "/doc", "bytes=500-999").await, 500, 999);
    let newer = range(&proxy, "/doc", "bytes=0-499").await;
    assert_eq!(newer.body, changed.slice(0..=499));
    assert_eq!(newer.header("etag"), Some("\"v2\""));

    let old_bytes = range(&proxy, "/doc", "bytes=600-699").await;
    assert_eq!(
        old_bytes.body,
        changed.slice(600..=699),
        "v2's bytes, fetched"
    );
    assert_eq!(origin.hits("/doc"), 3);
    let whole = get(&proxy.url("/doc"), &[]).await;
    assert!(!is_hit(&whole), "v1 and v2 pieces must not make a whole");
}

/// RFC 9111 §3.3: an origin that answers a whole fetch with a 206 has it kept as a
/// partial entry, which answers the ranges inside it; one whose complete length is unknown
/// (`bytes 0-4/*`), or a piece of a gzip-encoded representation (which could not be
/// decoded for clients that do not take gzip), is relayed and not kept.
#[tokio::test]
async fn an_unasked_206_is_kept_only_with_a_complete_content_range() {
    let fixture = |content_range: &str, coding: &str| {
        Fixture::with_headers(
            206,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"p\""),
                ("content-range", content_range),
                ("content-encoding", coding),
            ],
            "hello",
        )
    };
    let origin = Origin::start(vec![
        ("/known", fixture("bytes 0-4/10", "identity")),
        ("/unknown", fixture("bytes 0-4/*", "identity")),
        ("/gzipped", fixture("bytes 0-4/10", "gzip")),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;

    let first = range(&proxy, "/known", "bytes=0-4").await;
    assert_eq!(first.status, http::StatusCode::PARTIAL_CONTENT);
    assert!(
        !origin.last("/known").headers.contains_key("range"),
        "a whole fetch"
    );
    let inside = range(&proxy, "/known", "bytes=1-3").await;
    assert_eq!(inside.body, "ell");
    assert_eq!(inside.header("content-range"), Some("bytes 1-3/10"));
    assert!(is_hit(&inside), "{}", cache_status(&inside));
    assert_eq!(origin.hits("/known"), 1);

    for path in ["/unknown", "/gzipped"] {
        for _ in 0..2 {
            // The body is no real gzip: a client that takes gzip gets it untouched.
            let headers = [("range", "bytes=0-4"), ("accept-encoding", "gzip")];
            let relayed = get(&proxy.url(path), &headers).await;
            assert_eq!(relayed.body, "hello", "{path}");
            assert!(!is_hit(&relayed), "{path}");
        }
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

/// A 206 whose body, framed correctly by its Content-Length, holds more or fewer bytes
/// than its Content-Range names (RFC 9110 §14.4) is relayed to the client as the origin
/// sent it, not refused with a 502 and not kept as a partial entry: stored, its bytes
/// would answer later ranges at the wrong offsets.
#[tokio::test]
async fn a_206_whose_body_disagrees_with_its_content_range_is_relayed_unstored() {
    let fixture = |content_range: &str, body: &str| {
        Fixture::with_headers(
            206,
            &[
                ("cache-control", "max-age=3600"),
                ("content-range", content_range),
            ],
            body,
        )
    };
    let long_body = "x".repeat(100_000);
    let origin = Origin::start(vec![
        // Six bytes named, five sent (as http-tests/cache-tests' partial tests do).
        ("/short", fixture("bytes 4-9/10", "01234")),
        ("/long", fixture("bytes 0-4/200000", &long_body)),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;
    for (path, body, spec) in [
        ("/short", "01234", "bytes=-5"),
        ("/long", long_body.as_str(), "bytes=0-4"),
    ] {
        for _ in 0..2 {
            let relayed = range(&proxy, path, spec).await;
            assert_eq!(relayed.status, http::StatusCode::PARTIAL_CONTENT, "{path}");
            assert_eq!(relayed.body, body.as_bytes(), "{path}");
            assert!(!cache_status(&relayed).contains("stored"), "{path}");
            assert!(!is_hit(&relayed), "{path}");
        }
        assert_eq!(
            origin.hits(path),
            2,
            "{path}: never answered from the cache"
        );
    }
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

/// RFC 9110 §14.3: a stored 200 says `Accept-Ranges: bytes`, on the miss that stores it and
/// on hits (over HTTP/1.1 and in the prepared hit path alike), though its origin did not:
/// outpost serves its ranges. An origin's own value is kept, and an origin's `none` is
/// honoured (a Range gets the whole 200, as §14.2 allows); an encoding outpost makes says
/// nothing of ranges (they are of the identity body).
#[tokio::test]
async fn a_stored_response_advertises_byte_ranges() {
    let text = "range me ".repeat(200);
    let origin = Origin::start(vec![
        (
            "/plain.txt",
            fixed(
                &[
                    ("cache-control", "max-age=600"),
                    ("content-type", "text/plain"),
                ],
                &text,
            ),
        ),
        (
            "/none.bin",
            fixed(
                &[("cache-control", "max-age=600"), ("accept-ranges", "none")],
                "abc",
            ),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for round in ["miss", "hit", "hit again"] {
        let reply = get(&proxy.url("/plain.txt"), &[]).await;
        assert_eq!(reply.header("accept-ranges"), Some("bytes"), "{round}");
        let none = get(&proxy.url("/none.bin"), &[]).await;
        assert_eq!(none.header("accept-ranges"), Some("none"), "{round}");
        let ranged = get(&proxy.url("/none.bin"), &[("range", "bytes=0-0")]).await;
        assert_eq!(
            (ranged.status.as_u16(), ranged.text().as_str()),
            (200, "abc")
        );
    }
    let gzipped = get(&proxy.url("/plain.txt"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert_eq!(gzipped.header("accept-ranges"), None);
    assert_eq!(origin.hits("/plain.txt"), 1);
}

/// RFC 9110 §15.5.17: a 416 for a stored gzip-encoded representation carries the
/// unsatisfied Content-Range and no Content-Encoding, since it sends no content (an empty
/// body said to be gzip breaks clients that decode it).
#[tokio::test]
async fn an_unsatisfiable_range_of_an_encoded_representation_names_no_coding() {
    let origin = Origin::start(vec![(
        "/g",
        fixed(
            &[
                ("cache-control", "max-age=600"),
                ("content-encoding", "gzip"),
                ("content-type", "text/plain"),
            ],
            "not-really-gzip-but-eighteen-bytes",
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let headers = [("accept-encoding", "gzip")];
    get(&proxy.url("/g"), &headers).await;
    let unsatisfiable = get(
        &proxy.url("/g"),
        &[("accept-encoding", "gzip"), ("range", "bytes=500-")],
    )
    .await;
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(unsatisfiable.header("content-range"), Some("bytes */34"));
    assert_eq!(unsatisfiable.header("content-encoding"), None);
    assert!(unsatisfiable.body.is_empty());
    assert!(is_hit(&unsatisfiable));
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

/// RFC 9110 §14.2: a range ending early in an object past `unread_fill_limit` (Safari's
/// `bytes=0-1` probe of a video, a download manager's first segment) is cut from the whole
/// fetch as the body arrives, and the fetch stops once it is sent, as when a whole GET's
/// client hangs up. It used to wait for the whole object to be stored: a client asking for
/// two bytes of a large video waited for all of it, and a few bytes asked for kept a
/// download of the whole object running (the "small byte range" amplification). Its
/// Cache-Status does not say `stored` (RFC 9211 §2.6). The same with a disk tier, and for an
/// object too large to store, which streams through: that used to answer the range with the
/// whole 200. A range past the object's end is answered 416 from the head alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_range_of_a_large_object_is_sent_at_once_and_lets_the_fetch_stop() {
    // Sent at once, then nothing more: outpost reads it in several pieces (hyper's read
    // buffer is smaller), and a body being stored holds back only the newest.
    let first: bytes::Bytes = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let open = OpenBodies::default();
    let origin = Origin::start(vec![(
        "/film.mov",
        Fixture::Held {
            first: first.clone(),
            declared: 3_000_000,
            open: open.clone(),
            headers: Vec::new(),
        },
    )])
    .await;
    let disk = tempfile::tempdir().unwrap();
    let limits = "[cache]\nunread_fill_limit = \"1MiB\"\n";
    let configs = [
        ("memory", limits.to_string()),
        // Past the memory tier's object size: the fill writes it to a disk file as it comes.
        (
            "disk",
            format!(
                "{limits}max_object_size = \"1MiB\"\ndir = \"{}\"\n",
                disk.path().display()
            ),
        ),
        ("unstored", format!("{limits}max_object_size = \"1MiB\"\n")),
    ];
    for (tier, config) in configs {
        let path = format!("/film.mov?{tier}");
        let proxy = Proxy::start(&origin.url(), &config).await;
        for (spec, piece) in [("bytes=0-1", 0..=1), ("bytes=100-199", 100..=199)] {
            let reply = get(&proxy.url(&path), &[("range", spec)]).await;
            assert_eq!(
                reply.status.as_u16(),
                206,
                "{tier} {spec}: {}",
                reply.text()
            );
            let content_range = format!("bytes {}-{}/3000000", piece.start(), piece.end());
            assert_eq!(reply.header("content-range"), Some(content_range.as_str()));
            assert_eq!(reply.body, first.slice(piece), "{tier} {spec}");
            let status = cache_status(&reply);
            assert!(!status.contains("stored"), "{tier} {spec}: {status}");
            eventually("outpost to let go of the origin's body", || open.now() == 0).await;
        }
        let past_end = get(&proxy.url(&path), &[("range", "bytes=5000000-")]).await;
        assert_eq!(past_end.status.as_u16(), 416, "{tier}: {}", past_end.text());
        assert_eq!(past_end.header("content-range"), Some("bytes */3000000"));
        eventually("outpost to let go of the origin's body", || open.now() == 0).await;
    }
}

/// An origin serving `path`, 400,000 recognisable bytes with a strong ETag: its first
/// request gets a 200 of which 300,000 bytes are sent, then nothing more until outpost lets
/// go (`open` counts it open); later ones are answered in full, honouring Range.
async fn held_then_ranged(path: &'static str) -> (Origin, OpenBodies, bytes::Bytes) {
    let (answers, open, whole) = held_then_ranged_answers();
    let origin = Origin::start(vec![(path, answers)]).await;
    (origin, open, whole)
}

/// The answers [`held_then_ranged`] gives, the bodies they hold open, and the whole.
fn held_then_ranged_answers() -> (Fixture, OpenBodies, bytes::Bytes) {
    let whole: bytes::Bytes = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let open = OpenBodies::default();
    let headers = header_list(&[("cache-control", "max-age=600"), ("etag", "\"t1\"")]);
    let answers = Fixture::sequence(vec![
        Fixture::Held {
            first: whole.slice(..300_000),
            declared: whole.len(),
            open: open.clone(),
            headers: headers.clone(),
        },
        Fixture::Ranged {
            headers,
            body: whole.clone(),
        },
    ]);
    (answers, open, whole)
}

/// RFC 9111 §3.3, §3.4: what arrived of a 200 whose only client hung up (a viewer
/// stopping a video; aria2's first connection, a plain GET it drops at its segment's end)
/// is kept as a partial entry when it has a strong entity tag, where nothing was kept
/// before: a range inside it is answered from it, and one running past it fetches only
/// what it lacks, which makes the whole object, which a GET then finds stored. In
/// memory, and from the file a body too large for memory was being written to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_arrived_of_an_abandoned_download_is_kept_as_a_partial_entry() {
    let disk = tempfile::tempdir().unwrap();
    let limits = format!("{CONFIG}unread_fill_limit = \"64KiB\"\n");
    let configs = [
        ("memory", limits.clone()),
        (
            "disk",
            format!(
                "{limits}max_object_size = \"64KiB\"\ndir = \"{}\"\n",
                disk.path().display()
            ),
        ),
    ];
    for (tier, config) in configs {
        let (origin, open, whole) = held_then_ranged("/talk.mp4").await;
        let proxy = Proxy::start(&origin.url(), &config).await;
        let request = http::Request::get(proxy.url("/talk.mp4"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = client().request(request).await.unwrap();
        let mut body = response.into_body();
        read_at_least(&mut body, 100).await;
        drop(body);
        eventually("outpost to let go of the origin's body", || open.now() == 0).await;

        let start = range(&proxy, "/talk.mp4", "bytes=0-99").await;
        assert_eq!(start.status.as_u16(), 206, "{tier}: {}", start.text());
        assert_eq!(start.body, whole.slice(..100), "{tier}");
        assert!(is_hit(&start), "{tier}: {}", cache_status(&start));
        assert_eq!(origin.hits("/talk.mp4"), 1, "{tier}");

        let rest = range(&proxy, "/talk.mp4", "bytes=101-399999").await;
        assert_eq!(rest.status.as_u16(), 206, "{tier}: {}", rest.text());
        assert_eq!(rest.body, whole.slice(101..), "{tier}");
        // Only what the kept start lacks (see the test for a range from inside a prefix).
        let kept = rest_asked_from(&origin.last("/talk.mp4").headers, "\"t1\"");
        assert!(kept > 101, "{tier}: asked from {kept}");
        // With the disk tier the whole object is written to disk, past the memory tier's
        // object size.
        proxy.outpost.proxy().cache().settle().await;
        let stored = get(&proxy.url("/talk.mp4"), &[]).await;
        assert_eq!(stored.status.as_u16(), 200, "{tier}");
        assert_eq!(stored.body, whole, "{tier}");
        assert!(is_hit(&stored), "{tier}: {}", cache_status(&stored));
        assert_eq!(origin.hits("/talk.mp4"), 2, "{tier}");
    }
}

/// RFC 9111 §3.3: an origin that breaks off a 200 with a strong ETag mid-body leaves what
/// arrived as a partial entry: the client's response is aborted (never a clean end), and a
/// range inside what arrived is answered from the partial entry, not from a whole stored
/// response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_arrived_before_the_origin_broke_off_is_kept_as_a_partial_entry() {
    use http_body_util::BodyExt;
    let whole: bytes::Bytes = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/broken.bin",
        Fixture::FailsAfter {
            headers: header_list(&[("cache-control", "max-age=600"), ("etag", "\"b1\"")]),
            first: whole.slice(..300_000),
            declared: whole.len(),
            gate: gate.clone(),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;
    let request = http::Request::get(proxy.url("/broken.bin"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let mut body = client().request(request).await.unwrap().into_body();
    read_at_least(&mut body, 100).await;
    gate.open();
    assert!(body.collect().await.is_err(), "the response is aborted");

    // Kept before the fill's readers are failed, so before the client saw the abort.
    let start = range(&proxy, "/broken.bin", "bytes=0-99").await;
    assert_eq!(start.body, whole.slice(..100));
    let status = cache_status(&start);
    assert!(
        status.contains("detail=\"partial\""),
        "a partial entry: {status}"
    );
    assert_eq!(origin.hits("/broken.bin"), 1);
}

/// RFC 9110 §14.2, RFC 9111 §3.4: Safari asks a video for `bytes=0-1`, which leaves the
/// start of it as a partial entry, then for the whole of it by range. That range runs to
/// the end, so the whole object is fetched and stored, as for a GET; it used to be
/// forwarded as a piece, and a piece larger than the partial store takes was relayed
/// unkept, so the video was never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_to_the_end_beside_a_partial_entry_fetches_the_whole_object() {
    let (origin, open, whole) = held_then_ranged("/clip.mov").await;
    // The largest piece kept is 64 KiB, well under the object.
    let config = "[cache]\nunread_fill_limit = \"64KiB\"\npartial_capacity = \"256KiB\"\n";
    let proxy = Proxy::start(&origin.url(), config).await;
    let probe = range(&proxy, "/clip.mov", "bytes=0-1").await;
    assert_eq!(probe.header("content-range"), Some("bytes 0-1/400000"));
    eventually("outpost to let go of the origin's body", || open.now() == 0).await;

    let video = range(&proxy, "/clip.mov", "bytes=0-399999").await;
    assert_eq!(video.status.as_u16(), 206, "{}", video.text());
    assert_eq!(video.body, whole);
    // Fetched whole, starting from what the probe left (see the next test).
    let asked = origin.last("/clip.mov");
    let kept = rest_asked_from(&asked.headers, "\"t1\"");
    assert!(kept > 0 && kept < whole.len(), "asked from {kept}");
    let stored = eventually_some("the object to be stored", || async {
        let reply = get(&proxy.url("/clip.mov"), &[]).await;
        is_hit(&reply).then_some(reply)
    })
    .await;
    assert_eq!(stored.body, whole);
    assert_eq!(origin.hits("/clip.mov"), 2);
}

/// Where a request for the rest of a kept prefix starts: its `Range: bytes=N-`, which must
/// carry `If-Range` with the prefix's entity tag (RFC 9110 §13.1.5).
fn rest_asked_from(headers: &http::HeaderMap, etag: &str) -> usize {
    assert_eq!(headers.get("if-range").unwrap(), etag, "If-Range");
    let range = headers.get("range").unwrap().to_str().unwrap();
    let offset = range
        .strip_prefix("bytes=")
        .unwrap()
        .strip_suffix('-')
        .unwrap();
    offset.parse().unwrap()
}

/// Leaves the start of `path` as a partial entry: a GET whose client hangs up after 100
/// bytes, past the unread limit.
async fn abandon_after_some(proxy: &Proxy, path: &str, open: &OpenBodies) {
    let request = http::Request::get(proxy.url(path))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let mut body = client().request(request).await.unwrap().into_body();
    read_at_least(&mut body, 100).await;
    drop(body);
    eventually("outpost to let go of the origin's body", || open.now() == 0).await;
}

/// An origin whose first answer for `path` sends the first 300,000 bytes of `whole` (a
/// 400,000-byte 200 under `headers`) and then holds, and whose later answers are `then`;
/// an outpost in front of it that stops a fill nobody reads past 64 KiB; and what arrived
/// of the first answer left as a partial entry by a GET that hung up.
async fn prefix_kept(
    path: &'static str,
    whole: &bytes::Bytes,
    headers: HeaderList,
    then: Vec<Fixture>,
) -> (Origin, Proxy) {
    let open = OpenBodies::default();
    let held = Fixture::Held {
        first: whole.slice(..300_000),
        declared: whole.len(),
        open: open.clone(),
        headers,
    };
    let sequence = std::iter::once(held).chain(then).collect();
    let origin = Origin::start(vec![(path, Fixture::sequence(sequence))]).await;
    let config = format!("{CONFIG}unread_fill_limit = \"64KiB\"\n");
    let proxy = Proxy::start(&origin.url(), &config).await;
    abandon_after_some(&proxy, path, &open).await;
    (origin, proxy)
}

/// RFC 9111 §3.3, §3.4: a GET beside a kept prefix of the representation (a download that
/// stopped early) asks the origin for the rest alone, `Range: bytes=N-` with the prefix's
/// strong entity tag as If-Range, and the client gets the whole 200 the two make, which is
/// stored. In memory, and with the disk tier holding the partial entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_beside_a_kept_prefix_asks_the_origin_for_the_rest_alone() {
    let disk = tempfile::tempdir().unwrap();
    let limits = format!("{CONFIG}unread_fill_limit = \"64KiB\"\n");
    let configs = [
        ("memory", limits.clone()),
        (
            "disk",
            format!("{limits}dir = \"{}\"\n", disk.path().display()),
        ),
    ];
    for (tier, config) in configs {
        let (origin, open, whole) = held_then_ranged("/talk.mp4").await;
        let proxy = Proxy::start(&origin.url(), &config).await;
        abandon_after_some(&proxy, "/talk.mp4", &open).await;

        let again = get(&proxy.url("/talk.mp4"), &[]).await;
        assert_eq!(again.status.as_u16(), 200, "{tier}: {}", again.text());
        assert_eq!(again.header("content-range"), None, "{tier}");
        assert_eq!(again.body, whole, "{tier}");
        // RFC 9211 §2.4: what the origin answered, though the client gets the whole.
        let status = cache_status(&again);
        assert!(status.contains("fwd-status=206"), "{tier}: {status}");
        let kept = rest_asked_from(&origin.last("/talk.mp4").headers, "\"t1\"");
        assert!(
            kept >= 100 && kept < whole.len(),
            "{tier}: asked from {kept}"
        );
        let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
        assert_eq!(metrics.prefix_completions.get(), 1, "{tier}");
        assert_eq!(metrics.prefix_bytes_spared.get(), kept as u64, "{tier}");

        let stored = eventually_some("the whole object to be stored", || async {
            let reply = get(&proxy.url("/talk.mp4"), &[]).await;
            is_hit(&reply).then_some(reply)
        })
        .await;
        assert_eq!(stored.body, whole, "{tier}");
        assert_eq!(origin.hits("/talk.mp4"), 2, "{tier}");
    }
}

/// RFC 9111 §3.3: a range that runs to the end from inside a kept prefix (`curl -C -` after
/// a download that stopped) is fetched as the whole representation, which asks the origin
/// only for what the prefix lacks; the client gets its range, cut as the body arrives, and
/// the whole is stored. It used to be forwarded as it was, the origin sending again bytes
/// the prefix held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_to_the_end_from_inside_a_kept_prefix_asks_only_for_the_rest() {
    let whole: bytes::Bytes = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let etag = header_list(&[("cache-control", "max-age=600"), ("etag", "\"c1\"")]);
    let ranged = Fixture::Ranged {
        headers: etag.clone(),
        body: whole.clone(),
    };
    let (origin, proxy) = prefix_kept("/resume.iso", &whole, etag, vec![ranged]).await;

    let resumed = range(&proxy, "/resume.iso", "bytes=200000-").await;
    assert_eq!(resumed.status.as_u16(), 206, "{}", resumed.text());
    assert_eq!(
        resumed.header("content-range"),
        Some("bytes 200000-399999/400000")
    );
    assert!(resumed.body == whole.slice(200_000..));
    let kept = rest_asked_from(&origin.last("/resume.iso").headers, "\"c1\"");
    assert!(kept > 200_000, "asked from {kept}");
    let stored = eventually_some("the whole object to be stored", || async {
        let reply = get(&proxy.url("/resume.iso"), &[]).await;
        is_hit(&reply).then_some(reply)
    })
    .await;
    assert!(stored.body == whole);
    assert_eq!(origin.hits("/resume.iso"), 2);
}

/// RFC 9110 §14.3: an origin that says `Accept-Ranges: none` is not asked for the rest of
/// a kept prefix; the whole representation is fetched, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_serves_no_ranges_is_not_asked_for_the_rest() {
    let whole: bytes::Bytes = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let headers = header_list(&[
        ("cache-control", "max-age=600"),
        ("etag", "\"n1\""),
        ("accept-ranges", "none"),
    ]);
    let whole_again = Fixture::Static {
        status: http::StatusCode::OK,
        headers: headers.clone(),
        body: whole.clone(),
    };
    let (origin, proxy) = prefix_kept("/plain.bin", &whole, headers, vec![whole_again]).await;

    let again = get(&proxy.url("/plain.bin"), &[]).await;
    assert!(again.body == whole);
    let asked = origin.last("/plain.bin").headers;
    assert_eq!(asked.get("range"), None, "{asked:?}");
    assert_eq!(origin.hits("/plain.bin"), 2);
}

/// RFC 9110 §13.1.5: when the representation changed since the prefix was kept, the
/// origin answers the request for the rest with the whole new 200 (its If-Range no longer
/// holds), which the client gets as it is: never the old prefix spliced to new bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_prefix_of_a_changed_representation_is_not_used() {
    let old: bytes::Bytes = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let new: bytes::Bytes = (0..400_000u32).map(|i| (i % 241) as u8).collect();
    let changed = Fixture::Ranged {
        headers: header_list(&[("cache-control", "max-age=600"), ("etag", "\"new\"")]),
        body: new.clone(),
    };
    let old_tag = header_list(&[("etag", "\"old\"")]);
    let (origin, proxy) = prefix_kept("/build.iso", &old, old_tag, vec![changed]).await;

    let again = get(&proxy.url("/build.iso"), &[]).await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.text());
    assert_eq!(again.header("etag"), Some("\"new\""));
    assert!(again.body == new, "the new representation, whole");
    rest_asked_from(&origin.last("/build.iso").headers, "\"old\"");
    assert_eq!(proxy.outpost.proxy().metrics().prefix_completions.get(), 0);
    let stored = eventually_some("the new object to be stored", || async {
        let reply = get(&proxy.url("/build.iso"), &[]).await;
        is_hit(&reply).then_some(reply)
    })
    .await;
    assert!(stored.body == new);
    assert_eq!(origin.hits("/build.iso"), 2);
}

/// RFC 9111 §3.4: a 206 that is not exactly the rest asked for (here the origin ignored the
/// Range's start and sent every byte as a 206) is not joined to the prefix; the whole
/// representation is asked for again, without a Range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_206_that_is_not_the_rest_of_the_prefix_is_not_joined() {
    let whole: bytes::Bytes = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let etag = [("cache-control", "max-age=600"), ("etag", "\"t1\"")];
    let every_byte = Fixture::Static {
        status: http::StatusCode::PARTIAL_CONTENT,
        headers: header_list(&[etag[0], etag[1], ("content-range", "bytes 0-399999/400000")]),
        body: whole.clone(),
    };
    let ranged = Fixture::Ranged {
        headers: header_list(&etag),
        body: whole.clone(),
    };
    let then = vec![every_byte, ranged];
    let (origin, proxy) = prefix_kept("/odd.bin", &whole, header_list(&etag[1..]), then).await;

    let again = get(&proxy.url("/odd.bin"), &[]).await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.text());
    assert!(again.body == whole, "the whole object, once");
    assert_eq!(origin.hits("/odd.bin"), 3);
    assert_eq!(origin.last("/odd.bin").headers.get("range"), None);
    assert_eq!(proxy.outpost.proxy().metrics().prefix_completions.get(), 0);
}

/// RFC 9110 §14.2: a Range miss fetches the whole object to store it; when the origin's
/// 200 may not be stored (`private`), the client still gets the range it asked for, cut
/// from that 200, where it used to get the whole body. Several ranges in ascending order
/// are cut from it as the parts of a `multipart/byteranges` 206 (§14.6); several out of
/// order get the whole 200, which §14.2 allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_an_unstorable_response_is_cut_from_it() {
    let origin = Origin::start(vec![(
        "/mine.mp4",
        Fixture::Static {
            status: http::StatusCode::OK,
            headers: header_list(&[("cache-control", "private, max-age=60")]),
            body: representation(),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;
    let reply = range(&proxy, "/mine.mp4", "bytes=0-1").await;
    assert_piece(&reply, 0, 1);
    let whole = representation();
    let len = whole.len();
    let reply = range(&proxy, "/mine.mp4", "bytes=10-19,900-909").await;
    assert_eq!(reply.status, http::StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        parts_of(&reply),
        [
            (format!("10-19/{len}"), whole.slice(10..20)),
            (format!("900-909/{len}"), whole.slice(900..910)),
        ]
    );
    let status = cache_status(&reply);
    assert!(!status.contains("stored"), "{status}");
    let reply = range(&proxy, "/mine.mp4", "bytes=900-909,10-19").await;
    assert_eq!(reply.status, http::StatusCode::OK);
    assert_eq!(reply.body, whole);
}

/// Concurrent requests for one range past `range_fill_max_offset` share one origin
/// request: the leader's 206 is kept as a partial entry (RFC 9111 §3.3) and the others are
/// answered from it; against an origin that ignores Range (RFC 9110 §14.2 allows it) and
/// answers with the whole object, that one fetch is stored and every request gets its 206
/// from it. Before, each request was its own origin fetch of the whole object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_for_one_forwarded_range_share_one_fetch() {
    let honours = Gate::closed();
    let ignores = Gate::closed();
    let origin = Origin::start(vec![
        (
            "/movie",
            Fixture::GatedThen {
                gate: honours.clone(),
                then: Box::new(ranged("\"m1\"", representation())),
            },
        ),
        (
            "/whole",
            Fixture::GatedWith {
                gate: ignores.clone(),
                headers: header_list(&[("cache-control", "max-age=60"), ("etag", "\"w1\"")]),
                body: representation(),
            },
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    for (path, gate) in [("/movie", honours), ("/whole", ignores)] {
        let waiting_before = metrics.coalesced_waits.get();
        let requests: Vec<_> = (0..4)
            .map(|_| {
                let url = proxy.url(path);
                tokio::spawn(async move { get(&url, &[("range", "bytes=500-599")]).await })
            })
            .collect();
        eventually("the requests to share one fetch", || {
            origin.hits(path) == 1 && metrics.coalesced_waiting.get() == 3
        })
        .await;
        gate.open();
        for request in requests {
            assert_piece(&request.await.unwrap(), 500, 599);
        }
        assert_eq!(origin.hits(path), 1, "{path}");
        assert_eq!(metrics.coalesced_waits.get() - waiting_before, 3, "{path}");
    }
    // Another range is not answered from a fetch of this one.
    assert_piece(&range(&proxy, "/movie", "bytes=700-799").await, 700, 799);
    assert_eq!(origin.hits("/movie"), 2);
}

/// RFC 9110 §14.1: range unit names are case-insensitive, so `Bytes=` is a byte range
/// like `bytes=`, from a stored object as from the origin's 206.
#[tokio::test]
async fn the_range_unit_is_case_insensitive() {
    let origin = Origin::start(vec![("/doc", ranged("\"v1\"", representation()))]).await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;
    let forwarded = range(&proxy, "/doc", "BYTES=500-509").await;
    assert_piece(&forwarded, 500, 509);
    let from_piece = range(&proxy, "/doc", "Bytes=502-503").await;
    assert_piece(&from_piece, 502, 503);
    assert!(is_hit(&from_piece), "{}", cache_status(&from_piece));
}

/// The 206 to a `range` request for `path` as soon as its head arrives, its body still to
/// be read; its Content-Range must be `bytes {content_range}`.
async fn streamed_piece(
    proxy: &Proxy,
    path: &str,
    range: &str,
    content_range: &str,
) -> http::Response<hyper::body::Incoming> {
    let request = http::Request::get(proxy.url(path))
        .header("range", range)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 206);
    assert_eq!(
        response.headers()["content-range"].to_str().unwrap(),
        format!("bytes {content_range}")
    );
    response
}

/// An origin serving `path`, `len` recognisable bytes stored for ten minutes, whose second
/// half is sent once the gate is open.
async fn sent_in_halves(path: &'static str, len: u32) -> (Origin, Gate, bytes::Bytes) {
    let whole: bytes::Bytes = (0..len).map(|i| (i % 251) as u8).collect();
    let gate = Gate::closed();
    let half = whole.len() / 2;
    let origin = Origin::start(vec![(
        path,
        Fixture::Halves {
            headers: header_list(&[("cache-control", "max-age=600"), ("etag", "\"h1\"")]),
            first: whole.slice(..half),
            gate: gate.clone(),
            rest: whole.slice(half..),
        },
    )])
    .await;
    (origin, gate, whole)
}

/// RFC 9110 §14.2: a Range miss within `range_fill_max_offset` fetches the whole object
/// once, and its range is cut from the body as the body arrives. A client asking for the
/// object's first half has its 206 before the origin sends the second half (it used to wait
/// for the whole object to be stored); one asking for a piece of the second half, joined to
/// the same fetch, gets it once that half arrives; and the object is stored whole, so a
/// later Range request is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_miss_is_cut_from_the_body_as_it_arrives() {
    let (origin, gate, whole) = sent_in_halves("/clip.mp4", 200_000).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let early = get(&proxy.url("/clip.mp4"), &[("range", "bytes=1000-1999")]).await;
    assert_eq!(early.status.as_u16(), 206, "{}", early.text());
    assert_eq!(
        early.header("content-range"),
        Some("bytes 1000-1999/200000")
    );
    assert_eq!(early.body, whole.slice(1000..2000));
    assert!(
        cache_status(&early).contains("stored"),
        "{}",
        cache_status(&early)
    );

    let url = proxy.url("/clip.mp4");
    let late = tokio::spawn(async move { get(&url, &[("range", "bytes=150000-150099")]).await });
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    eventually("the second request to join the fetch", || {
        metrics.coalesced_waits.get() >= 1
    })
    .await;
    gate.open();
    let late = late.await.unwrap();
    assert_eq!(late.status.as_u16(), 206, "{}", late.text());
    assert_eq!(late.body, whole.slice(150_000..150_100));

    let hit = eventually_some("the object to be stored", || async {
        let reply = get(&proxy.url("/clip.mp4"), &[("range", "bytes=-10")]).await;
        is_hit(&reply).then_some(reply)
    })
    .await;
    assert_eq!(
        hit.header("content-range"),
        Some("bytes 199990-199999/200000")
    );
    assert_eq!(hit.body, whole.slice(199_990..));
    assert_eq!(origin.hits("/clip.mp4"), 1);
}

/// The parts of a `multipart/byteranges` reply, each as its Content-Range and its bytes.
fn parts_of(reply: &Reply) -> Vec<(String, bytes::Bytes)> {
    let content_type = reply.header("content-type").unwrap_or_default().to_string();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .expect(&content_type);
    let delimiter = format!("\r\n--{boundary}");
    let body = &reply.body[..];
    assert!(
        body.ends_with(format!("{delimiter}--\r\n").as_bytes()),
        "closed by the final delimiter"
    );
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let head_end = find(rest, b"\r\n\r\n").expect("a part's head");
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        let range = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Range: bytes "))
            .expect(&head)
            .to_string();
        rest = &rest[head_end + 4..];
        let end = find(rest, delimiter.as_bytes()).expect("the next delimiter");
        parts.push((range, bytes::Bytes::copy_from_slice(&rest[..end])));
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// RFC 9110 §14.6: several ranges of a miss, in ascending order, are cut from the body as
/// it arrives, as the parts of a `multipart/byteranges` 206: ranges in the half the origin
/// has sent are answered whole before it sends the rest (they used to wait for the whole
/// object to be stored), and a range in the second half follows once it arrives. Ranges
/// out of order wait for the stored object and keep the order they were asked in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_ranges_of_a_miss_are_cut_as_the_body_arrives() {
    let (origin, gate, whole) = sent_in_halves("/talk.mp4", 200_000).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let early = get(&proxy.url("/talk.mp4"), &[("range", "bytes=0-9,1000-1999")]).await;
    assert_eq!(early.status.as_u16(), 206, "{}", early.text());
    assert_eq!(
        early.header("content-length"),
        Some(early.body.len().to_string().as_str())
    );
    assert_eq!(
        parts_of(&early),
        [
            ("0-9/200000".to_string(), whole.slice(0..10)),
            ("1000-1999/200000".to_string(), whole.slice(1000..2000)),
        ]
    );

    let url = proxy.url("/talk.mp4");
    let spanning =
        tokio::spawn(async move { get(&url, &[("range", "bytes=10-19,150000-150099")]).await });
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    eventually("the second request to join the fetch", || {
        metrics.coalesced_waits.get() >= 1
    })
    .await;
    gate.open();
    let spanning = spanning.await.unwrap();
    assert_eq!(
        parts_of(&spanning),
        [
            ("10-19/200000".to_string(), whole.slice(10..20)),
            (
                "150000-150099/200000".to_string(),
                whole.slice(150_000..150_100)
            ),
        ]
    );

    let out_of_order = eventually_some("the object to be stored", || async {
        let reply = get(
            &proxy.url("/talk.mp4"),
            &[("range", "bytes=199990-199999,0-9")],
        )
        .await;
        is_hit(&reply).then_some(reply)
    })
    .await;
    assert_eq!(
        parts_of(&out_of_order),
        [
            ("199990-199999/200000".to_string(), whole.slice(199_990..)),
            ("0-9/200000".to_string(), whole.slice(0..10)),
        ]
    );
    assert_eq!(origin.hits("/talk.mp4"), 1);
}

/// RFC 9110 §14.2: an open range (`bytes=N-`, what media players ask for first) on an
/// object past `unread_fill_limit` is read to the object's end, as a whole GET is, so it
/// too is cut from the body as it arrives: the client has its head and first bytes before
/// the origin sends the second half (it used to wait for the whole object), and the object
/// is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_range_on_a_large_object_streams_as_it_arrives() {
    use http_body_util::BodyExt;
    let (origin, gate, whole) = sent_in_halves("/film.mp4", 400_000).await;
    let proxy = Proxy::start(&origin.url(), "[cache]\nunread_fill_limit = \"64KiB\"\n").await;
    let response = streamed_piece(&proxy, "/film.mp4", "bytes=1000-", "1000-399999/400000").await;
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, whole.slice(1000..1000 + first.len()));
    gate.open();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!([first, rest].concat(), whole.slice(1000..));

    let hit = eventually_some("the object to be stored", || async {
        let reply = get(&proxy.url("/film.mp4"), &[("range", "bytes=5-9")]).await;
        is_hit(&reply).then_some(reply)
    })
    .await;
    assert_eq!(hit.body, whole.slice(5..10));
    assert_eq!(origin.hits("/film.mp4"), 1);
}

/// RFC 9111 §3.3: a range forwarded to the origin (it starts past
/// `range_fill_max_offset`) reaches its client as the origin's 206 arrives, while the
/// piece is read whole to be kept: the client has its head and the first half of the piece
/// before the origin sends the second (it used to wait for the whole piece). A request for
/// the same range that waited on that fetch, and a later one inside it, are served from
/// the kept piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_range_streams_to_its_client_as_it_arrives() {
    use http_body_util::BodyExt;
    let whole = representation();
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/seek.mp4",
        Fixture::RangedHalves {
            headers: header_list(&[("cache-control", "max-age=60"), ("etag", "\"s1\"")]),
            body: whole.clone(),
            gate: gate.clone(),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), CONFIG).await;
    let response = streamed_piece(&proxy, "/seek.mp4", "bytes=500-899", "500-899/1000").await;
    let status = response.headers()["cache-status"].to_str().unwrap();
    assert!(status.contains("stored; detail=\"partial\""), "{status}");
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, whole.slice(500..500 + first.len()));

    let url = proxy.url("/seek.mp4");
    let follower = tokio::spawn(async move { get(&url, &[("range", "bytes=500-899")]).await });
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    eventually("the second request to wait on the fetch", || {
        metrics.coalesced_waiting.get() == 1
    })
    .await;
    gate.open();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!([first, rest].concat(), whole.slice(500..900));
    let follower = follower.await.unwrap();
    assert_piece(&follower, 500, 899);
    let inside = range(&proxy, "/seek.mp4", "bytes=600-699").await;
    assert_piece(&inside, 600, 699);
    assert!(is_hit(&inside), "{}", cache_status(&inside));
    assert_eq!(origin.hits("/seek.mp4"), 1);
}

/// A piece is read whole before it is kept (RFC 9111 §3.3), and a leader reading slower
/// than the origin sends holds what it has not read yet besides: both count against the
/// fills' memory budget (`cache.fill_memory_budget`). Past it, a 206 is relayed as it
/// arrives and not kept, so clients stalled on range misses cannot hold a piece each
/// beyond any bound; once they have read theirs, pieces are kept again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_for_stalled_clients_count_against_the_fills_memory_budget() {
    use tokio::io::AsyncReadExt;
    // Larger than the socket buffers a stalled client's connection can take.
    const PIECE: usize = 6 << 20;
    let film: bytes::Bytes = (0..32usize << 20).map(|i| (i % 251) as u8).collect();
    let origin = Origin::start(vec![("/film", ranged("\"f1\"", film.clone()))]).await;
    let config = "[cache]\nrange_fill_max_offset = \"100\"\nfill_memory_budget = \"8MiB\"\n\
                  max_object_size = \"32MiB\"\n";
    let proxy = Proxy::start(&origin.url(), config).await;
    let spec = |first: usize| format!("bytes={first}-{}", first + PIECE - 1);
    let check = |reply: &Reply, first: usize| {
        assert_eq!(reply.status, http::StatusCode::PARTIAL_CONTENT);
        assert_eq!(reply.body, film.slice(first..first + PIECE));
    };

    let mut stalled = Vec::new();
    for (fetched, first) in [(1, 1000), (2, 8_000_000)] {
        let fields = format!("Range: {}\r\n", spec(first));
        stalled.push((
            first,
            stalled_client_with(proxy.addr, "/film", &fields).await,
        ));
        eventually("the stalled client's range to be asked for", || {
            origin.hits("/film") == fetched
        })
        .await;
        // The same range read whole: answered once the piece is kept, from the piece.
        let probe = range(&proxy, "/film", &spec(first)).await;
        check(&probe, first);
    }
    assert_eq!(origin.hits("/film"), 2, "each kept piece fetched once");

    // Two stalled clients hold most of their 12 MiB: the next piece is relayed, unkept.
    let relayed = range(&proxy, "/film", &spec(16_000_000)).await;
    check(&relayed, 16_000_000);
    let status = cache_status(&relayed);
    assert!(!status.contains("stored"), "{status}");
    let again = range(&proxy, "/film", &spec(16_000_000)).await;
    check(&again, 16_000_000);
    assert!(!is_hit(&again), "{}", cache_status(&again));
    assert_eq!(origin.hits("/film"), 4);

    // Read to their end, the stalled clients' pieces no longer count, once the server has
    // let go of their fills: a client may see the end of its response first, and a request
    // meeting a fill still registered for the resource follows it rather than storing.
    for (first, mut client) in stalled {
        let mut raw = Vec::new();
        client.read_to_end(&mut raw).await.unwrap();
        let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(raw.starts_with(b"HTTP/1.1 206"));
        assert_eq!(&raw[head_end..], &film[first..first + PIECE]);
    }
    let serving = proxy.outpost.proxy();
    let coalescer = serving.cache().coalescer();
    eventually("the stalled clients' fills to be over", || {
        coalescer.in_flight() == 0 && coalescer.budget_used() == 0
    })
    .await;
    let admin = crate::support::start_admin(&proxy).await;
    let metrics = crate::support::get(&format!("{admin}/metrics"), &[])
        .await
        .text();
    assert!(
        metrics.contains("\noutpost_fill_budget_used_bytes 0\n"),
        "{metrics}"
    );
    let kept = range(&proxy, "/film", &spec(24_000_000)).await;
    check(&kept, 24_000_000);
    let status = cache_status(&kept);
    assert!(status.contains("stored"), "{status}");
    let hit = range(&proxy, "/film", &spec(24_000_000)).await;
    check(&hit, 24_000_000);
    assert!(is_hit(&hit), "{}", cache_status(&hit));
    assert_eq!(origin.hits("/film"), 5);
}

/// What arrived of an abandoned download is read back from its file to be kept as a
/// prefix (RFC 9111 §3.3), and held in memory meanwhile: it counts against the fills'
/// memory budget too, so downloads cancelled together cannot each read back a piece at
/// once. While a client stalled on a range miss holds the budget, the prefix is not kept
/// and the next GET fetches the whole; the client still gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_read_back_past_the_fills_memory_budget_is_not_kept() {
    const PIECE: usize = 6 << 20;
    let film: bytes::Bytes = (0..32usize << 20).map(|i| (i % 251) as u8).collect();
    let (talk, open, whole) = held_then_ranged_answers();
    let origin = Origin::start(vec![
        ("/film", ranged("\"f1\"", film.clone())),
        ("/talk.mp4", talk),
    ])
    .await;
    let disk = tempfile::tempdir().unwrap();
    // Bodies past 64 KiB go to their disk file as they arrive: a prefix is read back.
    let config = format!(
        "{CONFIG}unread_fill_limit = \"64KiB\"\nmax_object_size = \"64KiB\"\n\
         fill_memory_budget = \"1MiB\"\ndir = \"{}\"\n",
        disk.path().display()
    );
    let proxy = Proxy::start(&origin.url(), &config).await;
    let spec = format!("bytes=1000-{}", 1000 + PIECE - 1);
    let _stalled = stalled_client_with(proxy.addr, "/film", &format!("Range: {spec}\r\n")).await;
    eventually("the stalled client's range to be asked for", || {
        origin.hits("/film") == 1
    })
    .await;
    let probe = range(&proxy, "/film", &spec).await;
    assert_eq!(probe.body, film.slice(1000..1000 + PIECE));

    abandon_after_some(&proxy, "/talk.mp4", &open).await;
    let again = get(&proxy.url("/talk.mp4"), &[]).await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.text());
    assert_eq!(again.body, whole);
    let asked = &origin.last("/talk.mp4").headers;
    assert!(
        asked.get("range").is_none(),
        "no prefix to complete: {asked:?}"
    );
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    assert_eq!(metrics.prefix_completions.get(), 0);
}
