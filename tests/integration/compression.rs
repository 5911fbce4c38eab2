//! Compression through a real outpost: negotiation (RFC 9110 §12.5.3), each coding decoding
//! to the origin's exact bytes, what is never compressed, Vary and ETag rules, encoded
//! variants stored once, and the origin's own gzip passed through or decoded.

use crate::support;

use std::sync::Arc;

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, GzipEncoder, ZstdDecoder};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::AsyncReadExt;

fn text(len: usize) -> String {
    let words = [
        "edge", "cache", "origin", "stale", "fresh", "vary", "coding", "proxy", "hit", "miss",
    ];
    let mut out = String::with_capacity(len + 16);
    let mut n: u64 = 7;
    while out.len() < len {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(words[(n >> 33) as usize % words.len()]);
        out.push(if n % 11 == 0 { '\n' } else { ' ' });
    }
    out.truncate(len);
    out
}

async fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "br" => BrotliDecoder::new(bytes)
            .read_to_end(&mut out)
            .await
            .unwrap(),
        "zstd" => ZstdDecoder::new(bytes).read_to_end(&mut out).await.unwrap(),
        "gzip" => GzipDecoder::new(bytes).read_to_end(&mut out).await.unwrap(),
        other => panic!("unexpected coding {other}"),
    };
    out
}

async fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzipEncoder::new(bytes).read_to_end(&mut out).await.unwrap();
    out
}

/// A fresh (max-age=60) response the origin itself gzipped, with `extra` fields.
fn gzipped(compressed: &[u8], extra: &[(&'static str, &str)]) -> Fixture {
    let mut headers = header_list(&[
        ("content-encoding", "gzip"),
        ("cache-control", "max-age=60"),
    ]);
    headers.extend(header_list(extra));
    Fixture::Static {
        status: http::StatusCode::OK,
        headers,
        body: Bytes::from(compressed.to_vec()),
    }
}

fn page(body: &str) -> Fixture {
    Fixture::with_headers(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/html; charset=utf-8"),
            ("etag", "\"p1\""),
        ],
        body,
    )
}

/// RFC 9110 §8.4: every coding decodes to the origin's exact bytes, on the miss (encoded on
/// the fly) and on hits (the stored encoded variant).
#[tokio::test]
async fn each_coding_round_trips_to_the_origin_bytes() {
    let body = text(40_000);
    let origin = Origin::start(vec![("/page.html", page(&body))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for coding in ["br", "zstd", "gzip"] {
        for round in 0..3 {
            let reply = get(&proxy.url("/page.html"), &[("accept-encoding", coding)]).await;
            assert_eq!(
                reply.header("content-encoding"),
                Some(coding),
                "{coding} round {round}"
            );
            assert!(reply.body.len() < body.len() / 2, "{coding} compresses");
            assert_eq!(
                decode(coding, &reply.body).await,
                body.as_bytes(),
                "{coding} round {round}"
            );
        }
    }
    let identity = get(&proxy.url("/page.html"), &[]).await;
    assert_eq!(
        (identity.header("content-encoding"), identity.text()),
        (None, body.clone())
    );
    assert_eq!(origin.hits("/page.html"), 1);
    assert_eq!(origin.last("/page.html").headers["accept-encoding"], "gzip");
}

/// A chunked response (RFC 9112 §7.1) tells no length, so its miss is encoded with the
/// streaming window (512 KiB), shorter than this body; the hit's variant is encoded from the
/// stored body, whose length is known. Both decode to the origin's bytes (RFC 9110 §8.4).
#[tokio::test]
async fn a_chunked_body_longer_than_the_streaming_window_round_trips() {
    let body = text(1_500_000);
    let mut routes = Vec::new();
    for coding in ["br", "zstd", "gzip"] {
        let fixture = Fixture::Chunked {
            headers: vec![
                ("cache-control", "max-age=60".to_string()),
                ("content-type", "text/plain".to_string()),
            ],
            body: Bytes::from(body.clone()),
        };
        routes.push((format!("/{coding}.txt"), fixture));
    }
    let routes = routes
        .iter()
        .map(|(path, fixture)| (path.as_str(), fixture.clone()))
        .collect();
    let origin = Origin::start(routes).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for coding in ["br", "zstd", "gzip"] {
        let path = format!("/{coding}.txt");
        for round in ["miss", "hit"] {
            let reply = get(&proxy.url(&path), &[("accept-encoding", coding)]).await;
            assert_eq!(
                reply.header("content-encoding"),
                Some(coding),
                "{coding} {round}"
            );
            assert!(
                reply.body.len() < body.len() / 2,
                "{coding} {round} compresses"
            );
            assert!(
                decode(coding, &reply.body).await == body.as_bytes(),
                "{coding} {round} decodes to the origin's bytes"
            );
        }
        assert_eq!(origin.hits(&path), 1, "{coding}: stored once");
    }
}

/// "Stored once": the second compressed hit does no compression work, and concurrent first
/// requests for one coding compress once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encoded_variant_is_made_once_and_reused() {
    let body = text(30_000);
    let origin = Origin::start(vec![("/app.js", page(&body))]).await;
    let proxy = Arc::new(Proxy::start(&origin.url(), "").await);
    get(&proxy.url("/app.js"), &[]).await; // fill, identity: no encoder
    assert_eq!(proxy.outpost.encoder_runs(), 0);

    let burst: Vec<_> = (0..20)
        .map(|_| {
            let url = proxy.url("/app.js");
            tokio::spawn(async move { get(&url, &[("accept-encoding", "br, gzip")]).await })
        })
        .collect();
    for reply in burst {
        let reply = reply.await.unwrap();
        assert_eq!(decode("br", &reply.body).await, body.as_bytes());
    }
    assert_eq!(
        proxy.outpost.encoder_runs(),
        1,
        "twenty concurrent first hits, one encoder run"
    );
    let again = get(&proxy.url("/app.js"), &[("accept-encoding", "br")]).await;
    assert_eq!(
        again.header("content-length"),
        Some(again.body.len().to_string().as_str())
    );
    assert_eq!(
        proxy.outpost.encoder_runs(),
        1,
        "a later hit reuses the stored variant"
    );
    get(&proxy.url("/app.js"), &[("accept-encoding", "gzip")]).await;
    get(&proxy.url("/app.js"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(proxy.outpost.encoder_runs(), 2, "one run per coding");
    assert_eq!(origin.hits("/app.js"), 1);
}

/// A cold burst for a new object (a deploy's script bundle, every browser asking for br or
/// gzip at once) shares one origin fetch, and one encoder run per coding, made from the
/// body as it arrives rather than once per client; each reply decodes to the origin's
/// exact bytes (RFC 9110 §8.4) and the encodings are stored beside the entry, so a later
/// hit encodes nothing. Every client has its head before the origin sends the second half
/// of the body: all of them were served from the fill as it streamed. Half the clients speak
/// HTTP/2; with a disk tier as without; with a declared length and chunked (origins that
/// build their responses as they send them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_burst_makes_one_encoding_per_coding_as_the_body_arrives() {
    for chunked in [false, true] {
        cold_burst_encoded_once("", chunked).await;
        let disk = tempfile::tempdir().unwrap();
        let config = format!("[cache]\ndir = \"{}\"\n", disk.path().display());
        cold_burst_encoded_once(&config, chunked).await;
    }
}

async fn cold_burst_encoded_once(config: &str, chunked: bool) {
    let body = Bytes::from(text(100_000));
    let (head_gate, rest_gate) = (Gate::closed(), Gate::closed());
    let headers = header_list(&[
        ("cache-control", "max-age=60"),
        ("content-type", "application/javascript"),
        ("etag", "\"b1\""),
    ]);
    let (first, gate, rest) = (
        body.slice(..40_000),
        rest_gate.clone(),
        body.slice(40_000..),
    );
    let halves = if chunked {
        Fixture::ChunkedHalves {
            headers,
            first,
            gate,
            rest,
        }
    } else {
        Fixture::Halves {
            headers,
            first,
            gate,
            rest,
        }
    };
    let bundle = Fixture::GatedThen {
        gate: head_gate.clone(),
        then: Box::new(halves),
    };
    let origin = Origin::start(vec![("/bundle.js", bundle)]).await;
    let proxy = Proxy::start(&origin.url(), config).await;
    let codings = ["br", "gzip", "br", "identity", "br", "gzip", "br", "gzip"];
    let heads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = codings
        .iter()
        .enumerate()
        .map(|(n, &coding)| {
            let (url, heads) = (proxy.url("/bundle.js"), Arc::clone(&heads));
            let client = if n % 2 == 0 { client() } else { h2c_client() };
            tokio::spawn(async move {
                let request = Request::get(url)
                    .header("accept-encoding", coding)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let response = client.request(request).await.unwrap();
                heads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let encoding = response
                    .headers()
                    .get("content-encoding")
                    .map(|value| value.to_str().unwrap().to_string());
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                (coding, encoding, bytes)
            })
        })
        .collect();
    let metrics = Arc::clone(proxy.outpost.proxy().metrics());
    eventually("every request to wait on the one fetch", || {
        origin.hits("/bundle.js") == 1 && metrics.coalesced_waiting.get() == 7
    })
    .await;
    head_gate.open();
    eventually("every client to have its head", || {
        heads.load(std::sync::atomic::Ordering::SeqCst) == codings.len()
    })
    .await;
    rest_gate.open();
    for client in clients {
        let (asked, encoding, bytes) = client.await.unwrap();
        if asked == "identity" {
            assert_eq!(encoding, None);
            assert_eq!(bytes, body);
        } else {
            assert_eq!(encoding.as_deref(), Some(asked));
            assert_eq!(decode(asked, &bytes).await, body, "{asked}");
        }
    }
    assert_eq!(
        proxy.outpost.encoder_runs(),
        2,
        "seven clients asking for two codings, two encoder runs (chunked: {chunked})"
    );
    for coding in ["br", "gzip"] {
        let hit = get(&proxy.url("/bundle.js"), &[("accept-encoding", coding)]).await;
        assert!(is_hit(&hit), "{coding}: {}", cache_status(&hit));
        assert_eq!(
            hit.header("content-length"),
            Some(hit.body.len().to_string().as_str()),
            "{coding}: the encoding made during the burst is stored"
        );
        assert_eq!(decode(coding, &hit.body).await, body);
    }
    assert_eq!(
        proxy.outpost.encoder_runs(),
        2,
        "hits reuse the stored encodings"
    );
    assert_eq!(origin.hits("/bundle.js"), 1);
}

/// A shared encoding of a chunked body reads the whole body, but it does not keep a
/// download going once its clients have gone: past `unread_fill_limit` of the body it
/// encodes, an encoding nobody reads stops, and with it the origin's download, as a fill
/// nobody reads does. Its own output is far smaller than what it read (this pattern
/// compresses about 250 times), so counting only that let it run on for hundreds of MiB.
#[tokio::test]
async fn a_shared_encoding_nobody_reads_stops_the_download() {
    use tokio::io::AsyncWriteExt;
    let dropped = Arc::new(tokio::sync::Notify::new());
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let huge = Fixture::ChunkedText {
        size: 1 << 30,
        dropped: Arc::clone(&dropped),
        sent: Arc::clone(&sent),
    };
    let origin = Origin::start(vec![("/huge.txt", huge)]).await;
    let proxy = Proxy::start(&origin.url(), "[cache]\nunread_fill_limit = \"1MiB\"\n").await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request = "GET /huge.txt HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a head");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    drop(stream);
    tokio::time::timeout(PATIENCE, dropped.notified())
        .await
        .expect("the origin's download stops once nobody reads the encoding");
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    // The limit, plus what the encoder and the sockets between held.
    assert!(sent < 32 << 20, "the origin sent {sent} bytes");
    assert_eq!(proxy.outpost.encoder_runs(), 1);
}

/// The shared encoding of a body that breaks off mid-way breaks off too (RFC 9112 §6.3: a
/// clean end would pass a truncated body for a whole one), and nothing is stored: the next
/// request goes to the origin again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_encoding_of_a_body_that_breaks_off_breaks_off_too() {
    let body = Bytes::from(text(100_000));
    let gate = Gate::closed();
    let breaking = Fixture::FailsAfter {
        headers: header_list(&[
            ("cache-control", "max-age=60"),
            ("content-type", "text/html"),
        ]),
        first: body.slice(..30_000),
        declared: body.len(),
        gate: gate.clone(),
    };
    let origin = Origin::start(vec![(
        "/page",
        Fixture::sequence(vec![breaking, page(&text(100_000))]),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let heads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (url, heads) = (proxy.url("/page"), Arc::clone(&heads));
            tokio::spawn(async move {
                let request = Request::get(url)
                    .header("accept-encoding", "gzip")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let response = client().request(request).await.unwrap();
                heads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                response.into_body().collect().await.map(|_| ())
            })
        })
        .collect();
    eventually("every client to have its head", || {
        heads.load(std::sync::atomic::Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(
        proxy.outpost.encoder_runs(),
        1,
        "one encoding for the three"
    );
    gate.open();
    for client in clients {
        assert!(
            client.await.unwrap().is_err(),
            "a body that broke off must not end cleanly"
        );
    }
    let next = get(&proxy.url("/page"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(decode("gzip", &next.body).await, text(100_000).as_bytes());
    assert_eq!(
        origin.hits("/page"),
        2,
        "nothing of the broken body was stored"
    );
}

/// RFC 9111 §5.2.1.6: a request's `no-transform` asks intermediaries not to transform the
/// content (RFC 9110 §7.7), and an encoding outpost adds is one. Such a request gets the
/// origin's bytes unencoded, on the miss (nothing encoded on its way) and on a hit where
/// an encoded variant is stored for other clients; the response still varies on
/// Accept-Encoding. Others go on getting their encoding.
#[tokio::test]
async fn a_request_asking_for_no_transform_gets_the_content_unencoded() {
    let body = text(5_000);
    let origin = Origin::start(vec![("/page", page(&body))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let untouched = [
        ("accept-encoding", "gzip, br"),
        ("cache-control", "no-transform"),
    ];
    for round in ["miss", "hit"] {
        let reply = get(&proxy.url("/page"), &untouched).await;
        assert_eq!(reply.header("content-encoding"), None, "{round}");
        assert_eq!(reply.text(), body, "{round}");
        assert!(
            reply
                .header("vary")
                .is_some_and(|vary| vary.contains("Accept-Encoding")),
            "{round}: {:?}",
            reply.header("vary")
        );
        // Another client's encoding is made and stored between the two rounds.
        let encoded = get(&proxy.url("/page"), &[("accept-encoding", "gzip")]).await;
        assert_eq!(encoded.header("content-encoding"), Some("gzip"), "{round}");
        assert_eq!(decode("gzip", &encoded.body).await, body.as_bytes());
    }
    assert_eq!(origin.hits("/page"), 1);
}

/// Only what benefits is compressed: not images, not small bodies, not no-transform
/// (RFC 9111 §5.2.2.6), not HEAD bodies, not Range answers (206).
#[tokio::test]
async fn what_is_never_compressed() {
    let big = text(5_000);
    let origin = Origin::start(vec![
        (
            "/img.png",
            Fixture::with_headers(
                200,
                &[
                    ("content-type", "image/png"),
                    ("cache-control", "max-age=60"),
                ],
                &big,
            ),
        ),
        (
            "/small.txt",
            Fixture::with_headers(
                200,
                &[
                    ("content-type", "text/plain"),
                    ("cache-control", "max-age=60"),
                ],
                "tiny",
            ),
        ),
        (
            "/nt.txt",
            Fixture::with_headers(
                200,
                &[
                    ("content-type", "text/plain"),
                    ("cache-control", "max-age=60, no-transform"),
                ],
                &big,
            ),
        ),
        (
            "/range.txt",
            Fixture::with_headers(
                206,
                &[
                    ("content-type", "text/plain"),
                    ("content-range", "bytes 0-9/5000"),
                ],
                "0123456789",
            ),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let ae = [("accept-encoding", "br, gzip")];
    for path in ["/img.png", "/small.txt", "/nt.txt"] {
        for _ in 0..2 {
            let reply = get(&proxy.url(path), &ae).await;
            assert_eq!(reply.header("content-encoding"), None, "{path}");
        }
    }
    let range = get(
        &proxy.url("/range.txt"),
        &[("accept-encoding", "gzip"), ("range", "bytes=0-9")],
    )
    .await;
    assert_eq!(
        (range.status.as_u16(), range.header("content-encoding")),
        (206, None)
    );
    let head = send(
        &client(),
        Request::head(proxy.url("/nt.txt"))
            .header("accept-encoding", "gzip")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert!(head.body.is_empty());
    assert_eq!(proxy.outpost.encoder_runs(), 0);
}

/// RFC 9110 §12.5.5 and §8.8.3: compressed responses carry Vary: Accept-Encoding (merged
/// with the origin's) and an ETag distinct from identity's; If-None-Match accepts either.
#[tokio::test]
async fn vary_and_etag_rules() {
    let body = text(10_000);
    let origin = Origin::start(vec![(
        "/doc.txt",
        Fixture::with_headers(
            200,
            &[
                ("content-type", "text/plain"),
                ("cache-control", "max-age=60"),
                ("etag", "\"d7\""),
                ("vary", "Accept-Language"),
            ],
            &body,
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let identity = get(&proxy.url("/doc.txt"), &[]).await;
    assert_eq!(identity.header("etag"), Some("\"d7\""));
    let vary: Vec<_> = identity
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(vary, ["Accept-Language", "Accept-Encoding"]);

    let br = get(&proxy.url("/doc.txt"), &[("accept-encoding", "br")]).await;
    assert_eq!(br.header("etag"), Some("\"d7-br\""));
    assert!(br
        .headers
        .get_all("vary")
        .iter()
        .any(|v| v == "Accept-Encoding"));
    let again = get(&proxy.url("/doc.txt"), &[("accept-encoding", "br")]).await;
    assert_eq!(again.header("etag"), Some("\"d7-br\""));

    for tag in ["\"d7-br\"", "\"d7\""] {
        let not_modified = get(
            &proxy.url("/doc.txt"),
            &[("accept-encoding", "br"), ("if-none-match", tag)],
        )
        .await;
        assert_eq!(not_modified.status, 304, "If-None-Match: {tag}");
        assert_eq!(not_modified.header("etag"), Some("\"d7-br\""));
    }
}

/// The origin's own gzip is passed to clients that accept gzip and decoded for those that
/// do not (with a weak ETag for the decoded representation).
#[tokio::test]
async fn origin_gzip_is_passed_through_or_decoded() {
    let body = text(20_000);
    let compressed = gzip(body.as_bytes()).await;
    let extra = [("content-type", "application/json"), ("etag", "\"g1\"")];
    let origin = Origin::start(vec![("/data.json", gzipped(&compressed, &extra))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let passed = get(&proxy.url("/data.json"), &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(passed.header("content-encoding"), Some("gzip"));
    assert_eq!(passed.body.as_ref(), compressed.as_slice());
    for headers in [
        &[][..],
        &[("accept-encoding", "br")][..],
        &[("accept-encoding", "identity")][..],
    ] {
        let decoded = get(&proxy.url("/data.json"), headers).await;
        assert_eq!(decoded.header("content-encoding"), None, "{headers:?}");
        assert_eq!(decoded.text(), body, "{headers:?}");
        assert_eq!(decoded.header("etag"), Some("W/\"g1\""));
    }
    assert_eq!(origin.hits("/data.json"), 1);
    assert_eq!(proxy.outpost.encoder_runs(), 0);
}

/// An origin's gzip that is corrupt from its start cannot be decoded for a client without
/// gzip: it gets a 502 with `http_protocol_error` (RFC 9209 §2.3.15), on the miss and on
/// the hit, rather than a connection cut with nothing sent; gzip clients get the bytes as
/// the origin sent them.
#[tokio::test]
async fn gzip_that_does_not_decode_is_a_502_for_clients_without_gzip() {
    let corrupt = b"\x1f\x8b\x08\x00not a deflate stream at all";
    let extra = [("content-type", "text/plain")];
    let origin = Origin::start(vec![("/bad.txt", gzipped(corrupt, &extra))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for _ in 0..2 {
        let reply = get(&proxy.url("/bad.txt"), &[("accept-encoding", "identity")]).await;
        assert_eq!(reply.status, 502, "{}", reply.text());
        assert_eq!(
            reply.header("proxy-status"),
            Some("outpost; error=http_protocol_error")
        );
    }
    let passed = get(&proxy.url("/bad.txt"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(passed.status, 200);
    assert_eq!(passed.body.as_ref(), corrupt);
    assert_eq!(origin.hits("/bad.txt"), 1);
}

/// RFC 9110 §12.5.3: with identity excluded and nothing acceptable, 406.
#[tokio::test]
async fn identity_excluded_and_nothing_acceptable_is_406() {
    let origin = Origin::start(vec![("/page.html", page(&text(5_000)))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let reply = get(
        &proxy.url("/page.html"),
        &[("accept-encoding", "identity;q=0, deflate")],
    )
    .await;
    assert_eq!(reply.status, 406);
    let reply = get(&proxy.url("/page.html"), &[("accept-encoding", "*;q=0")]).await;
    assert_eq!(reply.status, 406);
    let reply = get(
        &proxy.url("/page.html"),
        &[("accept-encoding", "identity;q=0, gzip")],
    )
    .await;
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
}

/// Compression can be switched off: identity for everyone, nothing encoded.
#[tokio::test]
async fn disabled_compression_sends_identity() {
    let origin = Origin::start(vec![("/page.html", page(&text(5_000)))]).await;
    let proxy = Proxy::start(&origin.url(), "[compression]\nenabled = false").await;
    for _ in 0..2 {
        let reply = get(&proxy.url("/page.html"), &[("accept-encoding", "br, gzip")]).await;
        assert_eq!(reply.header("content-encoding"), None);
    }
    assert_eq!(proxy.outpost.encoder_runs(), 0);
}

/// RFC 9111 §4.4: invalidating a URL removes its encoded variants with it; the next request
/// refetches and the next hit encodes afresh.
#[tokio::test]
async fn encoded_variants_are_invalidated_with_their_url() {
    let body = text(8_000);
    let origin = Origin::start(vec![("/page.html", page(&body))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/page.html"), &[]).await;
    get(&proxy.url("/page.html"), &[("accept-encoding", "br")]).await;
    assert_eq!(proxy.outpost.encoder_runs(), 1);
    let post = Request::post(proxy.url("/page.html"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client(), post).await.status, 200);
    // The refill takes the body as it is: a br variant found afterwards can only be the
    // one made before the POST (same body, so its digest would still match).
    let refetched = get(&proxy.url("/page.html"), &[]).await;
    assert_eq!(refetched.text(), body);
    assert_eq!(origin.hits("/page.html"), 3, "fill, POST, refill");
    let encoded = get(&proxy.url("/page.html"), &[("accept-encoding", "br")]).await;
    assert_eq!(decode("br", &encoded.body).await, body.as_bytes());
    assert_eq!(
        proxy.outpost.encoder_runs(),
        2,
        "the variant made before the POST went with it: the next hit encodes afresh"
    );
}

/// An encoded variant is served only while its source still has the body it was made
/// from (RFC 9110 §8.4: it is a coding of that representation). The client's `no-cache`
/// (RFC 9111 §5.2.1.4) makes outpost fetch the resource again, and the origin now sends
/// another body under the same URL and no validator: the stored br variant of the old body
/// must not answer for the new one, with the memory tier alone or a disk tier (whose
/// bodies are told apart by different digests).
#[tokio::test]
async fn an_encoding_of_a_replaced_body_is_not_served_rfc9110_8_4() {
    let (old, new) = (text(9_000), text(9_001));
    let fixture = |body: &str| {
        Fixture::with_headers(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("content-type", "text/plain"),
            ],
            body,
        )
    };
    for with_disk in [false, true] {
        let origin = Origin::start(vec![(
            "/notes.txt",
            Fixture::sequence(vec![fixture(&old), fixture(&new)]),
        )])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let config = if with_disk {
            format!("[cache]\ndir = \"{}\"\n", dir.path().display())
        } else {
            String::new()
        };
        let proxy = Proxy::start(&origin.url(), &config).await;
        get(&proxy.url("/notes.txt"), &[]).await;
        let first = get(&proxy.url("/notes.txt"), &[("accept-encoding", "br")]).await;
        assert_eq!(decode("br", &first.body).await, old.as_bytes());
        assert_eq!(proxy.outpost.encoder_runs(), 1, "disk tier: {with_disk}");

        let refetched = get(&proxy.url("/notes.txt"), &[("cache-control", "no-cache")]).await;
        assert_eq!(refetched.body, new.as_bytes());
        assert_eq!(origin.hits("/notes.txt"), 2);
        let after = get(&proxy.url("/notes.txt"), &[("accept-encoding", "br")]).await;
        let decoded = decode("br", &after.body).await;
        assert!(
            decoded == new.as_bytes(),
            "disk tier: {with_disk}: {} bytes of br decoded, the new body has {} (the old {})",
            decoded.len(),
            new.len(),
            old.len()
        );
        assert_eq!(origin.hits("/notes.txt"), 2, "the new body is a hit");
    }
}

/// RFC 9110 §14.2: a Range on a stored gzip representation is served as a range of the
/// gzip bytes to a client that takes gzip, and ignored (the whole, decoded) for one that
/// does not: a slice of a gzip stream is no use to it.
#[tokio::test]
async fn ranges_of_origin_gzip_go_only_to_clients_that_take_gzip() {
    let body = text(5_000);
    let compressed = gzip(body.as_bytes()).await;
    let origin = Origin::start(vec![("/data.json", gzipped(&compressed, &[]))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let takes_gzip = [("accept-encoding", "gzip"), ("range", "bytes=0-9")];
    let ranged = get(&proxy.url("/data.json"), &takes_gzip).await;
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body.as_ref(), &compressed[..10]);
    let identity = [("accept-encoding", "identity"), ("range", "bytes=0-9")];
    let whole = get(&proxy.url("/data.json"), &identity).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-encoding"), None);
    assert_eq!(whole.text(), body);
    assert_eq!(origin.hits("/data.json"), 1);
}

/// Each response encoded on its way holds an encoder until its client has it all; past
/// `compression.encoder_memory_budget`, a response goes in the identity representation,
/// which RFC 9110 §12.5.3 makes acceptable unless the client excludes it (then it is
/// encoded all the same), with `Vary: Accept-Encoding` as any negotiated response. A stored
/// response's encoding refused so is not remembered as unencodable: once the running
/// encoder ends, the next request gets (and stores) the encoding.
#[tokio::test]
async fn responses_past_the_encoders_memory_budget_go_unencoded_rfc9110_12_5_3() {
    let gate = Gate::closed();
    let (first, rest) = (text(40 << 10), text(20 << 10));
    let other = text(20 << 10);
    let uncached = [
        ("content-type", "text/plain"),
        ("cache-control", "no-store"),
    ];
    let origin = Origin::start(vec![
        (
            "/held",
            Fixture::Halves {
                headers: header_list(&uncached),
                first: Bytes::from(first.clone()),
                gate: gate.clone(),
                rest: Bytes::from(rest.clone()),
            },
        ),
        ("/other", fixed(&uncached, &other)),
        (
            "/stored",
            fixed(
                &[
                    ("content-type", "text/plain"),
                    ("cache-control", "max-age=60"),
                ],
                &other,
            ),
        ),
    ])
    .await;
    // Less than any one encoder: one runs alone, a second is refused.
    let proxy = Proxy::start(
        &origin.url(),
        "[compression]\nencoder_memory_budget = \"1KiB\"\n",
    )
    .await;
    assert_eq!(get(&proxy.url("/stored"), &[]).await.text(), other);
    let refused = || proxy.outpost.proxy().metrics().encodings_refused.get();

    // The held response's encoder runs until the origin sends the rest.
    let request = Request::get(proxy.url("/held"))
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let held = client().request(request).await.unwrap();
    assert_eq!(held.headers()["content-encoding"], "gzip");

    let plain = get(&proxy.url("/other"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.text(), other);
    assert!(plain
        .header("vary")
        .is_some_and(|vary| vary.to_ascii_lowercase().contains("accept-encoding")));
    assert_eq!(refused(), 1);

    let stored_plain = get(&proxy.url("/stored"), &[("accept-encoding", "br")]).await;
    assert!(is_hit(&stored_plain));
    assert_eq!(stored_plain.header("content-encoding"), None);
    assert_eq!(stored_plain.text(), other);
    assert_eq!(refused(), 2);

    let insists = get(
        &proxy.url("/other"),
        &[("accept-encoding", "gzip, identity;q=0")],
    )
    .await;
    assert_eq!(insists.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &insists.body).await, other.as_bytes());
    assert_eq!(
        refused(),
        2,
        "a client that excludes identity is not refused"
    );

    gate.open();
    let body = http_body_util::BodyExt::collect(held.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        decode("gzip", &body).await,
        format!("{first}{rest}").as_bytes()
    );

    // The held encoder's room comes back when hyper lets go of its body.
    let encoded = eventually_some("the held encoder's room back", || async {
        let reply = get(&proxy.url("/stored"), &[("accept-encoding", "br")]).await;
        (reply.header("content-encoding") == Some("br")).then_some(reply)
    })
    .await;
    assert_eq!(decode("br", &encoded.body).await, other.as_bytes());
    let again = get(&proxy.url("/stored"), &[("accept-encoding", "br")]).await;
    assert_eq!(again.header("content-encoding"), Some("br"));
    assert_eq!(origin.hits("/stored"), 1);
}

/// "Stored once" holds when the fills' memory budget was taken as the encoding was made: an
/// encoding that went out unstored only for want of room (a large body being kept took the
/// budget) is not remembered as too large to keep, so once the budget is free the next
/// request makes and stores it, and later ones reuse it. Remembered as too large, every
/// request for `hit_for_miss_ttl` (30 s) got the identity representation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoding_refused_room_only_for_the_fills_budget_is_stored_next_time() {
    let gate = Gate::closed();
    let body = text(200 << 10);
    let half = Bytes::from(vec![b'k'; 600 << 10]);
    let origin = Origin::start(vec![
        ("/app.js", page(&body)),
        (
            "/large",
            Fixture::Halves {
                headers: header_list(&[("cache-control", "max-age=60")]),
                first: half.clone(),
                gate: gate.clone(),
                rest: half,
            },
        ),
    ])
    .await;
    // An 8 MiB tier: a fills' budget of 1 MiB, which the 1.2 MiB body takes alone.
    let proxy = Proxy::start(
        &origin.url(),
        "[cache]\nmemory_capacity = \"8MiB\"\nmax_object_size = \"2MiB\"\n",
    )
    .await;
    get(&proxy.url("/app.js"), &[]).await;
    let request = Request::get(proxy.url("/large"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let large = client().request(request).await.unwrap();

    let gzip = [("accept-encoding", "gzip")];
    let unstored = get(&proxy.url("/app.js"), &gzip).await;
    assert_eq!(decode("gzip", &unstored.body).await, body.as_bytes());
    assert_eq!(proxy.outpost.encoder_runs(), 1);

    gate.open();
    let large = http_body_util::BodyExt::collect(large.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(large.len(), 1200 << 10);
    let outpost = proxy.outpost.proxy();
    eventually("the fills to settle", || {
        outpost.cache().coalescer().in_flight() == 0
    })
    .await;

    let stored = get(&proxy.url("/app.js"), &gzip).await;
    assert_eq!(decode("gzip", &stored.body).await, body.as_bytes());
    assert_eq!(proxy.outpost.encoder_runs(), 2, "made again, and kept");
    let reused = get(&proxy.url("/app.js"), &gzip).await;
    assert_eq!(decode("gzip", &reused.body).await, body.as_bytes());
    assert_eq!(
        proxy.outpost.encoder_runs(),
        2,
        "the stored encoding reused"
    );
    assert_eq!(origin.hits("/app.js"), 1);
}

/// A client that excludes identity (`identity;q=0`, RFC 9110 §12.5.3) still gets the
/// encoding it asks for when that encoding is too large to keep (a body the disk tier
/// stores whose encoding is past `max_object_size`): encoded on its way each time. It got
/// the identity representation it had excluded once the encoding was known too large.
#[tokio::test]
async fn a_client_excluding_identity_gets_an_encoding_too_large_to_keep() {
    let dir = tempfile::tempdir().unwrap();
    let body = text(600 << 10);
    let origin = Origin::start(vec![("/big.txt", page(&body))]).await;
    let config = format!(
        "[cache]\nmax_object_size = \"16KiB\"\ndisk_max_object_size = \"1MiB\"\ndir = \"{}\"\n",
        dir.path().display()
    );
    let proxy = Proxy::start(&origin.url(), &config).await;
    assert_eq!(get(&proxy.url("/big.txt"), &[]).await.text(), body);
    proxy.outpost.proxy().cache().settle().await;
    let strict = [("accept-encoding", "gzip, identity;q=0")];
    for attempt in 0..3 {
        let reply = get(&proxy.url("/big.txt"), &strict).await;
        assert_eq!(reply.status, 200, "attempt {attempt}");
        assert_eq!(
            reply.header("content-encoding"),
            Some("gzip"),
            "attempt {attempt}"
        );
        assert_eq!(decode("gzip", &reply.body).await, body.as_bytes());
        proxy.outpost.proxy().cache().settle().await;
    }
    let lenient = get(&proxy.url("/big.txt"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(lenient.text(), body, "identity, which this client takes");
    assert_eq!(origin.hits("/big.txt"), 1);
}
