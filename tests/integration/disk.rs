//! The disk tier end to end: a real origin, a real outpost with `cache.dir`, real HTTP.
//! Restarts are in-process (the same directory opened by a second outpost); the crash test
//! (`kill -9`) runs the binary in `cli.rs`.

use crate::support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use support::{client, get, post, start_admin, Fixture, Gate, Origin, Proxy};

fn disk_toml(dir: &Path, extra: &str) -> String {
    format!("[cache]\ndir = \"{}\"\n{extra}\n", dir.display())
}

/// Every body in a file of its own (none kept in the index), for tests of what happens to
/// the files.
const BODIES_IN_FILES: &str = "disk_inline_max = \"0\"";

/// Stops `proxy` and waits until it has flushed its disk tier.
async fn restart_point(proxy: Proxy) {
    proxy.stop().await;
}

/// The Host every request uses, so keys stay the same across restarts on new ports.
const HOST: (&str, &str) = ("host", "cache.test");

async fn get_as(url: &str, headers: &[(&str, &str)]) -> support::Reply {
    let mut with_host = vec![HOST];
    with_host.extend_from_slice(headers);
    get(url, &with_host).await
}

/// A body of `len` bytes stored on disk (memory keeps only objects up to 64 KiB) through
/// a new outpost, whose stored file then has byte `at` flipped.
async fn stored_then_damaged(
    dir: &Path,
    path: &'static str,
    len: usize,
    at: usize,
) -> (Origin, Proxy, Bytes) {
    let body = pattern(len);
    let origin = Origin::start(vec![(
        path,
        Fixture::Static {
            status: StatusCode::OK,
            headers: vec![("cache-control", "max-age=3600".into())],
            body: body.clone(),
        },
    )])
    .await;
    let proxy = start_large_objects_on_disk(&origin.url(), dir).await;
    assert_eq!(get_as(&proxy.url(path), &[]).await.body, body);
    let files = blob_files(dir);
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(&files[0], &bytes).unwrap();
    (origin, proxy, body)
}

/// A GET of `path` through `proxy` with the Host every test uses.
fn request_as(proxy: &Proxy, path: &str) -> Request<Full<Bytes>> {
    Request::get(proxy.url(path))
        .header(HOST.0, HOST.1)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// An outpost whose memory keeps only objects up to 64 KiB: larger ones go to disk.
async fn start_large_objects_on_disk(origin_url: &str, dir: &Path) -> Proxy {
    Proxy::start(origin_url, &disk_toml(dir, "max_object_size = \"64KiB\"")).await
}

/// Requests `path` until the origin has served it a second time (a removed entry is
/// refetched); the refetched body must be `body`.
async fn wait_for_refetch(proxy: &Proxy, origin: &Origin, path: &str, body: &Bytes) {
    let received = support::eventually_some("the damaged entry to be refetched", || async {
        // Until the damaged entry's removal (a background task) lands, a request may still
        // meet it and be aborted: that is the behaviour under test, not a failure here.
        // An abort can come before the head is flushed: then the request itself fails.
        let request = request_as(proxy, path);
        let response = client().request(request).await.ok()?;
        let received = response.into_body().collect().await.map(|b| b.to_bytes());
        match (origin.hits(path), received) {
            (2, Ok(received)) => Some(received),
            _ => None,
        }
    })
    .await;
    assert_eq!(&received, body);
}

/// An origin serving `body` at `path`, fresh for an hour.
async fn origin_of(path: &'static str, body: &Bytes) -> Origin {
    Origin::start(vec![(
        path,
        Fixture::Static {
            status: StatusCode::OK,
            headers: vec![("cache-control", "max-age=3600".into())],
            body: body.clone(),
        },
    )])
    .await
}

fn pattern(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn blob_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(dir.join("blobs")).unwrap().flatten() {
        for file in std::fs::read_dir(shard.path()).unwrap().flatten() {
            files.push(file.path());
        }
    }
    files
}

async fn metrics_text(proxy: &Proxy) -> String {
    let admin = start_admin(proxy).await;
    get(&format!("{admin}/metrics"), &[]).await.text()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found in\n{text}"))
}

/// RFC 9111 §3 storage that outlives the process: a restarted outpost with the same cache
/// directory answers from disk without asking the origin.
#[tokio::test]
async fn restart_with_the_same_cache_dir_serves_a_hit_without_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(vec![(
        "/kept",
        Fixture::with_headers(200, &[("cache-control", "max-age=3600")], "kept body"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    let first = get_as(&proxy.url("/kept"), &[]).await;
    assert_eq!(first.text(), "kept body");
    restart_point(proxy).await;

    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    let again = get_as(&proxy.url("/kept"), &[("outpost-debug", "1")]).await;
    assert_eq!(again.text(), "kept body");
    assert!(again.header("cache-status").unwrap().contains("hit"));
    assert!(
        again.header("outpost-path").unwrap().contains("tier=disk"),
        "{:?}",
        again.header("outpost-path")
    );
    let third = get_as(&proxy.url("/kept"), &[("outpost-debug", "1")]).await;
    assert!(third
        .header("outpost-path")
        .unwrap()
        .contains("tier=memory"));
    assert_eq!(
        origin.hits("/kept"),
        1,
        "the origin was asked once, before the restart"
    );
}

/// `cache.disk_max_objects` bounds the objects on disk (and so the index's memory) with
/// bytes to spare; a restarted outpost still serves what was kept.
#[tokio::test]
async fn the_disk_tier_keeps_at_most_disk_max_objects() {
    let dir = tempfile::tempdir().unwrap();
    let paths = ["/o1", "/o2", "/o3", "/o4"];
    let origin = Origin::start(
        paths
            .iter()
            .map(|path| {
                let fixture =
                    Fixture::with_headers(200, &[("cache-control", "max-age=3600")], path);
                (*path, fixture)
            })
            .collect(),
    )
    .await;
    let config = disk_toml(dir.path(), "disk_max_objects = 2");
    let proxy = Proxy::start(&origin.url(), &config).await;
    for path in paths {
        assert_eq!(get_as(&proxy.url(path), &[]).await.text(), path);
    }
    restart_point(proxy).await;

    let proxy = Proxy::start(&origin.url(), &config).await;
    let metrics = metrics_text(&proxy).await;
    assert_eq!(
        metric(&metrics, "outpost_cache_entries{tier=\"disk\"}"),
        2.0
    );
    // only-if-cached (RFC 9111 §5.2.1.7): answered from what is stored, never fetched (a
    // fetched object would be stored and push another out).
    let mut kept = Vec::new();
    for path in paths {
        let reply = get_as(&proxy.url(path), &[("cache-control", "only-if-cached")]).await;
        match reply.status {
            StatusCode::OK => {
                assert_eq!(reply.text(), path);
                kept.push(path);
            }
            status => assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{path}"),
        }
    }
    assert_eq!(kept.len(), 2, "kept {kept:?}");
    assert_eq!(
        origin.hits("/o1") + origin.hits("/o4"),
        2,
        "asked once each, before"
    );
}

/// A body whose digest does not match is never served: it is removed, counted and
/// refetched.
#[tokio::test]
async fn a_flipped_byte_in_a_stored_body_is_detected_and_refetched() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(vec![(
        "/flip",
        Fixture::with_headers(200, &[("cache-control", "max-age=3600")], "original bytes"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), BODIES_IN_FILES)).await;
    get_as(&proxy.url("/flip"), &[]).await;
    restart_point(proxy).await;
    let files = blob_files(dir.path());
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes[3] ^= 0x20;
    std::fs::write(&files[0], &bytes).unwrap();

    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), BODIES_IN_FILES)).await;
    let reply = get_as(&proxy.url("/flip"), &[]).await;
    assert_eq!(
        reply.text(),
        "original bytes",
        "the corrupt copy is not served"
    );
    assert_eq!(origin.hits("/flip"), 2, "refetched from the origin");
    let metrics = metrics_text(&proxy).await;
    assert_eq!(metric(&metrics, "outpost_integrity_failures_total"), 1.0);
    // The refetched copy replaced the corrupt one.
    proxy.outpost.proxy().cache().settle().await;
    let files = blob_files(dir.path());
    assert_eq!(std::fs::read(&files[0]).unwrap(), b"original bytes");
}

/// Small bodies share pack files (no file of their own): after a restart they answer
/// from the pack without the origin; a byte changed in the pack is detected (counted, never
/// served) and that one object refetched, while its neighbour in the pack still answers.
#[tokio::test]
async fn small_bodies_in_a_pack_survive_restart_and_damage_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let fixture =
        |body: &'static str| Fixture::with_headers(200, &[("cache-control", "max-age=3600")], body);
    let origin = Origin::start(vec![
        ("/first", fixture("first small body")),
        ("/second", fixture("second small body")),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    get_as(&proxy.url("/first"), &[]).await;
    get_as(&proxy.url("/second"), &[]).await;
    restart_point(proxy).await;
    assert!(blob_files(dir.path()).is_empty(), "no file per small body");
    let pack = dir.path().join("packs/00000001.pack");
    let stored = std::fs::read(&pack).unwrap();
    assert_eq!(stored, b"first small bodysecond small body");

    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    assert_eq!(
        get_as(&proxy.url("/first"), &[]).await.text(),
        "first small body"
    );
    assert_eq!(
        origin.hits("/first"),
        1,
        "served from the pack after a restart"
    );
    restart_point(proxy).await;

    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[2] ^= 0x20;
    std::fs::write(&pack, &bytes).unwrap();
    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    let reply = get_as(&proxy.url("/first"), &[]).await;
    assert_eq!(
        reply.text(),
        "first small body",
        "the damaged copy is not served"
    );
    assert_eq!(origin.hits("/first"), 2, "refetched from the origin");
    let reply = get_as(&proxy.url("/second"), &[]).await;
    assert_eq!(reply.text(), "second small body");
    assert_eq!(
        origin.hits("/second"),
        1,
        "its neighbour still answers from the pack"
    );
    let metrics = metrics_text(&proxy).await;
    assert_eq!(metric(&metrics, "outpost_integrity_failures_total"), 1.0);
}

/// Objects larger than the memory tier's object limit stream to disk while they are
/// served, and later hits (whole and RFC 9110 §14 ranges) are read from the file.
#[tokio::test]
async fn a_large_object_streams_to_disk_and_is_served_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(3 << 20);
    let origin = Origin::start(vec![(
        "/big.iso",
        Fixture::Static {
            status: StatusCode::OK,
            headers: vec![
                ("cache-control", "max-age=3600".into()),
                ("etag", "\"big-1\"".into()),
                ("content-type", "application/octet-stream".into()),
            ],
            body: body.clone(),
        },
    )])
    .await;
    let toml = disk_toml(dir.path(), "max_object_size = \"256KiB\"");
    let proxy = Proxy::start(&origin.url(), &toml).await;
    let miss = get_as(&proxy.url("/big.iso"), &[]).await;
    assert_eq!(miss.body, body);
    let hit = get_as(&proxy.url("/big.iso"), &[]).await;
    assert_eq!(hit.body, body);
    assert!(hit.header("cache-status").unwrap().contains("hit"));
    let ranged = get_as(
        &proxy.url("/big.iso"),
        &[("range", "bytes=1000000-1000099")],
    )
    .await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.body, body.slice(1_000_000..1_000_100));
    assert_eq!(
        ranged.header("content-range"),
        Some("bytes 1000000-1000099/3145728")
    );
    let suffix = get_as(&proxy.url("/big.iso"), &[("range", "bytes=-10")]).await;
    assert_eq!(suffix.body, body.slice(body.len() - 10..));
    // RFC 9110 §14.6: several ranges of a file body as multipart/byteranges.
    let multi = get_as(
        &proxy.url("/big.iso"),
        &[("range", "bytes=0-9,2000000-2000009")],
    )
    .await;
    assert_eq!(multi.status, StatusCode::PARTIAL_CONTENT);
    assert!(multi
        .header("content-type")
        .unwrap()
        .starts_with("multipart/byteranges; boundary="));
    assert_eq!(
        multi.header("content-length").unwrap(),
        multi.body.len().to_string()
    );
    let text = multi.body.as_ref();
    let contains = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"Content-Range: bytes 0-9/3145728"));
    assert!(contains(b"Content-Range: bytes 2000000-2000009/3145728"));
    assert!(contains(&body[2_000_000..2_000_010]));
    restart_point(proxy).await;

    let proxy = Proxy::start(&origin.url(), &toml).await;
    let after = get_as(&proxy.url("/big.iso"), &[("outpost-debug", "1")]).await;
    assert_eq!(after.body, body);
    assert!(after.header("outpost-path").unwrap().contains("tier=disk"));
    assert_eq!(origin.hits("/big.iso"), 1);
}

/// A large stored body corrupted on disk aborts the response (never a clean end of wrong
/// bytes), is removed, and the next request refetches it.
#[tokio::test]
async fn a_corrupt_large_body_aborts_the_response_and_is_refetched() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, proxy, body) = stored_then_damaged(dir.path(), "/big", 1 << 20, 900_000).await;

    let response = client().request(request_as(&proxy, "/big")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await;
    assert!(collected.is_err(), "a corrupt body must end in an error");

    // The entry is removed in the background; the next request goes to the origin.
    wait_for_refetch(&proxy, &origin, "/big", &body).await;
    let metrics = metrics_text(&proxy).await;
    assert_eq!(metric(&metrics, "outpost_integrity_failures_total"), 1.0);
}

/// An origin that fails mid-body while a large object streams to disk: every reader is
/// aborted and nothing is indexed.
#[tokio::test]
async fn an_origin_reset_mid_body_stores_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let head = "HTTP/1.1 200 OK\r\ncache-control: max-age=3600\r\ncontent-length: 2000000\r\n\r\n";
    let mut raw = head.as_bytes().to_vec();
    raw.extend(std::iter::repeat_n(b'x', 500_000));
    let origin =
        support::RawOrigin::start(support::RawBehaviour::SendThenClose(Bytes::from(raw))).await;
    let proxy = start_large_objects_on_disk(&origin.url(), dir.path()).await;
    let response = client()
        .request(request_as(&proxy, "/partial"))
        .await
        .unwrap();
    assert!(response.into_body().collect().await.is_err());
    proxy.outpost.proxy().cache().settle().await;
    assert_eq!(proxy.outpost.proxy().cache().disk_usage().unwrap().0, 0);
    assert!(blob_files(dir.path()).is_empty());
}

/// Offline mode (the operator's switch): whatever is stored is served, fresh or not, and
/// nothing else reaches the origin; entries that forbid stale use are not served.
#[tokio::test]
async fn offline_mode_serves_what_is_stored_and_504_for_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(vec![
        (
            "/stale",
            Fixture::with_headers(
                200,
                &[("cache-control", "max-age=0"), ("etag", "\"s\"")],
                "stale copy",
            ),
        ),
        (
            "/strict",
            Fixture::with_headers(
                200,
                &[("cache-control", "max-age=0, must-revalidate")],
                "strict copy",
            ),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    let admin = start_admin(&proxy).await;
    get_as(&proxy.url("/stale"), &[]).await;
    get_as(&proxy.url("/strict"), &[]).await;

    let switched = post(&format!("{admin}/offline?enabled=true")).await;
    assert_eq!(switched.status, StatusCode::OK);
    let stale = get_as(&proxy.url("/stale"), &[("cache-control", "max-age=0")]).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.text(), "stale copy");
    assert!(stale
        .header("cache-status")
        .unwrap()
        .contains("detail=\"offline\""));
    let strict = get_as(&proxy.url("/strict"), &[]).await;
    assert_eq!(strict.status, StatusCode::GATEWAY_TIMEOUT);
    let unknown = get_as(&proxy.url("/never-seen"), &[]).await;
    assert_eq!(unknown.status, StatusCode::GATEWAY_TIMEOUT);
    let unsafe_method = post(&proxy.url("/stale")).await;
    assert_eq!(
        unsafe_method.status,
        StatusCode::GATEWAY_TIMEOUT,
        "nothing is forwarded"
    );
    let metrics = metrics_text(&proxy).await;
    assert_eq!(metric(&metrics, "outpost_offline"), 1.0);
    assert_eq!(origin.hits("/stale") + origin.hits("/strict"), 2);
    assert!(origin.seen().iter().all(|r| r.uri.path() != "/never-seen"));

    post(&format!("{admin}/offline?enabled=false")).await;
    get_as(&proxy.url("/stale"), &[]).await;
    assert_eq!(
        origin.hits("/stale"),
        2,
        "online again: validated with the origin"
    );
}

/// `offline_ignores_revalidation` lets offline mode serve must-revalidate entries too.
#[tokio::test]
async fn offline_mode_can_override_must_revalidate_when_configured() {
    let origin = Origin::start(vec![(
        "/strict",
        Fixture::with_headers(200, &[("cache-control", "no-cache")], "strict copy"),
    )])
    .await;
    let proxy = Proxy::start(
        &origin.url(),
        "[cache]\noffline_ignores_revalidation = true\n",
    )
    .await;
    get_as(&proxy.url("/strict"), &[]).await;
    proxy.outpost.proxy().cache().set_offline(true);
    let reply = get_as(&proxy.url("/strict"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "strict copy");
    assert_eq!(origin.hits("/strict"), 1);
}

/// RFC 5861 §3: within stale-while-revalidate the stale response is served at once and
/// validated once in the background, however many requests arrive meanwhile.
#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_revalidates_once() {
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/swr",
        Fixture::sequence(vec![
            Fixture::with_headers(
                200,
                &[("cache-control", "max-age=0, stale-while-revalidate=600")],
                "old",
            ),
            Fixture::GatedWith {
                gate: gate.clone(),
                headers: support::header_list(&[("cache-control", "max-age=600")]),
                body: Bytes::from_static(b"new"),
            },
        ]),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    assert_eq!(get_as(&proxy.url("/swr"), &[]).await.text(), "old");
    for _ in 0..5 {
        let reply = get_as(&proxy.url("/swr"), &[]).await;
        assert_eq!(reply.text(), "old", "served stale without waiting");
        let status = reply.header("cache-status").unwrap().to_string();
        assert!(
            status.contains("hit") && status.contains("stale-while-revalidate"),
            "{status}"
        );
    }
    // The background validation reaches the origin on its own schedule: wait for it, then
    // check that the five stale hits started exactly one.
    support::eventually("the background validation", || origin.hits("/swr") >= 2).await;
    assert_eq!(get_as(&proxy.url("/swr"), &[]).await.text(), "old");
    assert_eq!(
        origin.hits("/swr"),
        2,
        "one fill and one background validation"
    );
    gate.open();
    let reply = support::eventually_some("the revalidated response", || async {
        let reply = get_as(&proxy.url("/swr"), &[]).await;
        (reply.text() == "new").then_some(reply)
    })
    .await;
    assert!(reply.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits("/swr"), 2);
}

/// Per-path rules: `immutable` paths are not revalidated on a client's reload (RFC 8246);
/// `revalidate` paths are validated on every use and fall back to the stored copy when the
/// origin fails (stale_if_error, RFC 5861 §4).
#[tokio::test]
async fn path_rules_make_packages_immutable_and_indexes_revalidated() {
    let origin = Origin::start(vec![
        (
            "/pool/sl_5.02-1%2bb1_amd64.deb",
            Fixture::with_headers(
                200,
                &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
                "deb",
            ),
        ),
        (
            "/dists/stable/InRelease",
            Fixture::sequence(vec![
                Fixture::Validated {
                    etag: "\"r1\"",
                    headers: support::header_list(&[("cache-control", "max-age=3600")]),
                    body: Bytes::from_static(b"release"),
                    not_modified_headers: Vec::new(),
                },
                Fixture::Validated {
                    etag: "\"r1\"",
                    headers: support::header_list(&[("cache-control", "max-age=3600")]),
                    body: Bytes::from_static(b"release"),
                    not_modified_headers: Vec::new(),
                },
                Fixture::with_headers(503, &[], "down"),
            ]),
        ),
    ])
    .await;
    let toml = r#"
[[cache.rules]]
match = "*.deb"
immutable = true

[[cache.rules]]
match = "*/InRelease"
revalidate = true
stale_if_error = "7d"
"#;
    let proxy = Proxy::start(&origin.url(), toml).await;
    let deb = "/pool/sl_5.02-1%2bb1_amd64.deb";
    get_as(&proxy.url(deb), &[]).await;
    let reload = get_as(&proxy.url(deb), &[("cache-control", "max-age=0")]).await;
    assert_eq!(reload.text(), "deb");
    assert!(reload.header("cache-status").unwrap().contains("hit"));
    assert_eq!(
        origin.hits(deb),
        1,
        "immutable: the reload did not reach the origin"
    );

    let index = "/dists/stable/InRelease";
    assert_eq!(get_as(&proxy.url(index), &[]).await.text(), "release");
    let validated = get_as(&proxy.url(index), &[]).await;
    assert_eq!(validated.text(), "release");
    assert!(validated
        .header("cache-status")
        .unwrap()
        .contains("fwd-status=304"));
    let origin_down = get_as(&proxy.url(index), &[]).await;
    assert_eq!(origin_down.status, StatusCode::OK);
    assert_eq!(origin_down.text(), "release");
    assert!(origin_down
        .header("cache-status")
        .unwrap()
        .contains("http_503"));
    assert_eq!(origin.hits(index), 3);
}

/// A cache directory that cannot be used: outpost starts memory-only, says so in a metric,
/// and keeps serving (and caching in memory).
#[tokio::test]
async fn an_unusable_cache_dir_degrades_to_memory_only() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"in the way").unwrap();
    let origin = Origin::start(vec![(
        "/a",
        Fixture::with_headers(200, &[("cache-control", "max-age=60")], "a"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), &disk_toml(&not_a_dir, "")).await;
    assert_eq!(get_as(&proxy.url("/a"), &[]).await.text(), "a");
    assert_eq!(get_as(&proxy.url("/a"), &[]).await.text(), "a");
    assert_eq!(origin.hits("/a"), 1);
    let metrics = metrics_text(&proxy).await;
    assert_eq!(metric(&metrics, "outpost_disk_degraded"), 1.0);
}

/// A disk that fails while running (here: its temp directory replaced by a file, as a full
/// or broken disk would fail writes) switches outpost to memory only; requests go on.
#[tokio::test]
async fn a_disk_failure_at_run_time_degrades_to_memory_only() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(vec![
        (
            "/a",
            Fixture::with_headers(200, &[("cache-control", "max-age=60")], "a"),
        ),
        (
            "/b",
            Fixture::with_headers(200, &[("cache-control", "max-age=60")], "b"),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), BODIES_IN_FILES)).await;
    assert_eq!(get_as(&proxy.url("/a"), &[]).await.text(), "a");
    proxy.outpost.proxy().cache().settle().await;
    std::fs::remove_dir_all(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("tmp"), b"not a directory").unwrap();
    assert_eq!(get_as(&proxy.url("/b"), &[]).await.text(), "b");
    proxy.outpost.proxy().cache().settle().await;
    assert_eq!(get_as(&proxy.url("/b"), &[]).await.text(), "b");
    assert_eq!(origin.hits("/b"), 1, "still cached in memory");
    let metrics = metrics_text(&proxy).await;
    assert_eq!(metric(&metrics, "outpost_disk_degraded"), 1.0);
    assert!(metric(&metrics, "outpost_disk_errors_total") >= 1.0);
}

/// Purge reaches the disk tier: a purged URL is not resurrected from disk after a restart.
#[tokio::test]
async fn purge_removes_entries_from_disk_too() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(vec![(
        "/p",
        Fixture::with_headers(200, &[("cache-control", "max-age=3600")], "p"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    get_as(&proxy.url("/p"), &[]).await;
    proxy.outpost.proxy().cache().settle().await;
    let admin = start_admin(&proxy).await;
    let purge = post(&format!("{admin}/purge?prefix=http://cache.test/")).await;
    assert!(purge.text().contains("\"purged\":1"), "{}", purge.text());
    restart_point(proxy).await;
    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    get_as(&proxy.url("/p"), &[]).await;
    assert_eq!(origin.hits("/p"), 2);
}

/// A request that joins a large fill after it started streaming to disk follows the file
/// as it grows: it receives bytes before the origin has sent the last one, and the origin
/// is asked once.
#[tokio::test]
async fn a_late_follower_of_a_large_fill_streams_from_its_disk_file() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(4 << 20);
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/big.deb",
        Fixture::Halves {
            headers: support::header_list(&[("cache-control", "max-age=3600")]),
            first: body.slice(..3 << 20),
            gate: gate.clone(),
            rest: body.slice(3 << 20..),
        },
    )])
    .await;
    let proxy = start_large_objects_on_disk(&origin.url(), dir.path()).await;
    let request = || request_as(&proxy, "/big.deb");
    // The leader reads most of the origin's first part (the fill holds back its newest
    // chunk until the object is stored).
    let leader = client().request(request()).await.unwrap();
    let mut leader_body = leader.into_body();
    let mut leader_bytes = Vec::new();
    while leader_bytes.len() < 2 << 20 {
        let frame = leader_body.frame().await.unwrap().unwrap();
        leader_bytes.extend_from_slice(&frame.into_data().unwrap());
    }
    // A late follower: the fill no longer keeps its body in memory.
    let follower = client().request(request()).await.unwrap();
    assert!(follower
        .headers()
        .get("cache-status")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("collapsed"));
    let mut follower_body = follower.into_body();
    let first = follower_body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(
        !first.is_empty(),
        "bytes before the origin sent its last part"
    );
    assert_eq!(first, body.slice(..first.len()));
    gate.open();
    let mut follower_bytes = first.to_vec();
    follower_bytes.extend_from_slice(&follower_body.collect().await.unwrap().to_bytes());
    leader_bytes.extend_from_slice(&leader_body.collect().await.unwrap().to_bytes());
    assert_eq!(leader_bytes, body);
    assert_eq!(follower_bytes, body);
    assert_eq!(origin.hits("/big.deb"), 1);
}

/// A client that stops reading a large object streaming to disk goes on from the file;
/// what the fill reads after that is not held in memory for it. Before, a stalled client
/// kept the rest of the body in memory for as long as it held its connection (64 of them
/// on 40 MiB objects took a 128 MiB node past 2 GiB). It still gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_of_a_fill_streaming_to_disk_holds_none_of_it_in_memory() {
    use tokio::io::AsyncReadExt;
    const FIRST: usize = 24 << 20;
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(32 << 20);
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/big.iso",
        Fixture::Halves {
            headers: support::header_list(&[("cache-control", "max-age=3600")]),
            first: body.slice(..FIRST),
            gate: gate.clone(),
            rest: body.slice(FIRST..),
        },
    )])
    .await;
    let proxy = start_large_objects_on_disk(&origin.url(), dir.path()).await;
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    let mut stalled = support::stalled_client(proxy.addr, "/big.iso").await;
    support::eventually("the stalled client's fetch", || {
        origin.hits("/big.iso") == 1
    })
    .await;
    // A follower reads from the fill's file what the origin has sent (all but the last
    // write batch and chunk of it): by then the stalled client, some MiB in at most, has
    // long gone on from the file.
    let request = Request::get(proxy.url("/big.iso"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut follower = client().request(request).await.unwrap().into_body();
    let mut followed = Vec::new();
    while followed.len() < FIRST - (2 << 20) {
        let frame = follower.frame().await.unwrap().unwrap();
        followed.extend_from_slice(&frame.into_data().unwrap());
    }
    let held = metrics.fill_bytes.get();
    assert!(held < 1 << 20, "the fill holds {held} bytes for nobody");
    gate.open();
    followed.extend_from_slice(&follower.collect().await.unwrap().to_bytes());
    assert!(followed == body[..], "the follower's body");
    let mut raw = Vec::new();
    stalled.read_to_end(&mut raw).await.unwrap();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert!(raw[head_end..] == body[..], "the stalled client's body");
    assert_eq!(origin.hits("/big.iso"), 1);
}

/// Once a large object streaming to disk is stored whole, a client still reading it
/// goes on from its file, and the fill lets go of the chunks it kept for that client: a
/// stalled client within 4 MiB of the end held them for as long as it stalled (64 on 8
/// MiB objects: 231 MiB of fill chunks at 128 MiB of capacity). It still gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_fill_keeps_no_chunks_for_a_client_still_reading_it() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(6 << 20);
    let origin = Origin::start(vec![(
        "/big.iso",
        Fixture::Static {
            status: StatusCode::OK,
            headers: vec![("cache-control", "max-age=3600".into())],
            body: body.clone(),
        },
    )])
    .await;
    let proxy = start_large_objects_on_disk(&origin.url(), dir.path()).await;
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    let mut stalled = support::stalled_client(proxy.addr, "/big.iso").await;
    let stored = support::eventually_some("the object to be stored on disk", || async {
        let reply = get(&proxy.url("/big.iso"), &[]).await;
        support::is_hit(&reply).then_some(reply)
    })
    .await;
    assert_eq!(stored.body, body);
    support::eventually("the fill to let go of its chunks", || {
        metrics.fill_bytes.get() == 0
    })
    .await;
    let mut raw = Vec::new();
    stalled.read_to_end(&mut raw).await.unwrap();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(raw[head_end..] == body[..], "the stalled client's body");
    assert_eq!(origin.hits("/big.iso"), 1);
}

/// With per-block digests, a range touching only intact blocks is served, while a read
/// reaching the corrupt block sends nothing of it: the client gets only verified bytes,
/// then an error; the entry is removed and refetched.
#[tokio::test]
async fn a_corrupt_block_is_never_sent_and_intact_ranges_still_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, proxy, body) =
        stored_then_damaged(dir.path(), "/blocks", 3 << 20, (2 << 20) + 12345).await;

    let intact = get_as(&proxy.url("/blocks"), &[("range", "bytes=100-199")]).await;
    assert_eq!(intact.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(intact.body, body.slice(100..200));

    let response = client()
        .request(request_as(&proxy, "/blocks"))
        .await
        .unwrap();
    let mut stream = response.into_body();
    let mut received = Vec::new();
    let ended_in_error = loop {
        match stream.frame().await {
            Some(Ok(frame)) => received.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(ended_in_error, "a corrupt block must abort the response");
    assert!(
        received.len() <= 2 << 20,
        "nothing of the corrupt block was sent"
    );
    assert_eq!(&received[..], &body[..received.len()]);

    wait_for_refetch(&proxy, &origin, "/blocks", &body).await;
}

/// A corrupt index never stops outpost: damaged records are dropped (their files swept as
/// orphans and refetched on demand), and an index sled cannot open at all is set aside
/// (`index.corrupt`) for an empty one. Either way the request is answered with the
/// origin's bytes, and the tier works again: what is stored next survives a restart.
#[tokio::test]
async fn a_corrupt_index_is_dropped_or_set_aside_never_fatal() {
    for damage in ["zeroed log", "garbage config"] {
        let dir = tempfile::tempdir().unwrap();
        let origin = Origin::start(vec![(
            "/kept",
            Fixture::with_headers(200, &[("cache-control", "max-age=3600")], "kept body"),
        )])
        .await;
        let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
        get_as(&proxy.url("/kept"), &[]).await;
        restart_point(proxy).await;
        let index = dir.path().join("index");
        match damage {
            "zeroed log" => {
                let db = index.join("db");
                let len = std::fs::metadata(&db).unwrap().len() as usize;
                std::fs::write(&db, vec![0u8; len]).unwrap();
            }
            _ => std::fs::write(index.join("conf"), "garbage!!").unwrap(),
        }
        let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
        let reply = get_as(&proxy.url("/kept"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{damage}");
        assert_eq!(reply.text(), "kept body", "{damage}");
        assert_eq!(
            origin.hits("/kept"),
            2,
            "{damage}: refetched, not served from a lost row"
        );
        restart_point(proxy).await;
        let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
        assert_eq!(get_as(&proxy.url("/kept"), &[]).await.text(), "kept body");
        assert_eq!(origin.hits("/kept"), 2, "{damage}: stored again, on disk");
        if damage == "garbage config" {
            assert!(dir.path().join("index.corrupt").join("conf").exists());
        }
    }
}

/// When the disk tier evicts a large object for room, memory forgets the entry that
/// pointed at its file: the next request is a clean miss, never an aborted hit.
#[tokio::test]
async fn a_large_object_evicted_from_disk_is_refetched_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pattern(3 << 20), Bytes::from(vec![7u8; 3 << 20]));
    let static_body = |body: &Bytes| Fixture::Static {
        status: StatusCode::OK,
        headers: vec![("cache-control", "max-age=3600".into())],
        body: body.clone(),
    };
    let origin = Origin::start(vec![
        ("/a.iso", static_body(&a)),
        ("/b.iso", static_body(&b)),
    ])
    .await;
    let toml = disk_toml(
        dir.path(),
        "max_object_size = \"64KiB\"\ndisk_capacity = \"5MiB\"",
    );
    let proxy = Proxy::start(&origin.url(), &toml).await;
    assert_eq!(get_as(&proxy.url("/a.iso"), &[]).await.body, a);
    assert_eq!(get_as(&proxy.url("/b.iso"), &[]).await.body, b);
    // /a.iso's file made room for /b.iso.
    let again = get_as(&proxy.url("/a.iso"), &[]).await;
    assert_eq!(again.body, a);
    assert!(again
        .header("cache-status")
        .unwrap()
        .contains("fwd=uri-miss"));
    assert_eq!(origin.hits("/a.iso"), 2);
    let metrics = metrics_text(&proxy).await;
    assert!(metric(&metrics, "outpost_evictions_total{tier=\"disk\"}") >= 1.0);
}

/// The origin dies mid-body while a large fill streams to disk with a late follower reading
/// its file: both readers get an aborted response, never a clean end, and nothing is stored.
#[tokio::test]
async fn an_origin_failing_mid_body_aborts_the_leader_and_a_late_follower() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/dies.iso",
        Fixture::FailsAfter {
            headers: support::header_list(&[("cache-control", "max-age=3600")]),
            first: pattern(3 << 20),
            declared: 8 << 20,
            gate: gate.clone(),
        },
    )])
    .await;
    let proxy = start_large_objects_on_disk(&origin.url(), dir.path()).await;
    let request = || request_as(&proxy, "/dies.iso");
    let mut leader = client().request(request()).await.unwrap().into_body();
    support::read_at_least(&mut leader, 2 << 20).await;
    let follower = client().request(request()).await.unwrap();
    assert!(follower
        .headers()
        .get("cache-status")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("collapsed"));
    let mut follower = follower.into_body();
    assert!(!follower
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
        .is_empty());
    gate.open();
    assert!(
        leader.collect().await.is_err(),
        "the leader's response is aborted"
    );
    assert!(
        follower.collect().await.is_err(),
        "the follower's response is aborted"
    );
    proxy.outpost.proxy().cache().settle().await;
    assert_eq!(proxy.outpost.proxy().cache().disk_usage().unwrap().0, 0);
    assert!(blob_files(dir.path()).is_empty());
    assert_eq!(origin.hits("/dies.iso"), 1);
}

/// A client that stops reading does not hold back a large fill streaming to disk: the
/// object is stored while that client reads nothing, and when it resumes it gets the whole
/// body (from the file) intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_hold_back_a_large_fill() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(24 << 20);
    let origin = origin_of("/big.bin", &body).await;
    let proxy = start_large_objects_on_disk(&origin.url(), dir.path()).await;
    let stalled = client()
        .request(request_as(&proxy, "/big.bin"))
        .await
        .unwrap();
    // Nothing is read from `stalled` while the fill completes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        proxy.outpost.proxy().cache().settle().await;
        if proxy.outpost.proxy().cache().disk_usage().unwrap().0 == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fill waited for the stalled client"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = stalled.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(received.len(), body.len());
    assert!(
        received == body,
        "the resumed client got the origin's bytes"
    );
    assert_eq!(origin.hits("/big.bin"), 1);
}

/// RFC 9111 §4.3.4: a 304 freshens the stored headers and keeps the stored body, on disk
/// too. Revalidated twice, then restarted with the origin gone, the object is still served
/// from the disk tier (the freshened row must still have its body file).
#[tokio::test]
async fn a_freshened_response_keeps_its_body_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(vec![(
        "/freshened",
        Fixture::Validated {
            etag: "\"v1\"",
            headers: support::header_list(&[("cache-control", "max-age=0")]),
            body: Bytes::from_static(b"kept across revalidations"),
            not_modified_headers: support::header_list(&[("cache-control", "max-age=0")]),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    for _ in 0..3 {
        let reply = get_as(&proxy.url("/freshened"), &[]).await;
        assert_eq!(reply.text(), "kept across revalidations");
    }
    assert_eq!(origin.hits("/freshened"), 3, "a fetch, then two 304s");
    restart_point(proxy).await;
    drop(origin);

    let gone = support::closed_port().await;
    let proxy = Proxy::start(
        &format!("http://{gone}"),
        &disk_toml(dir.path(), "offline = true"),
    )
    .await;
    let reply = get_as(&proxy.url("/freshened"), &[]).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{:?}",
        reply.header("cache-status")
    );
    assert_eq!(reply.text(), "kept across revalidations");
}

/// Requests `path` until a hit is sent from its verified file (the first hits verify the
/// file in the background); every body on the way must be `body`.
async fn until_sent_from_file(proxy: &Proxy, path: &str, body: &Bytes) {
    let url = proxy.url(path);
    support::until_hit_counted(
        proxy,
        (&url, &[HOST]),
        body,
        "a hit sent from its file",
        |metrics| metrics.sendfile_responses.get(),
    )
    .await;
}

/// `cache.disk_sendfile`: once a stored file has been verified, disk hits on cleartext
/// HTTP/1 are sent from it. On one keep-alive connection, between other responses and
/// after a HEAD (whose body is never sent), each response carries exactly its own bytes:
/// whole, one range (RFC 9110 §14.2), and over HTTP/2, which does not send from files.
#[tokio::test]
async fn a_verified_file_is_sent_as_stored_between_other_responses() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(300 << 10);
    let origin = Origin::start(vec![
        (
            "/file",
            Fixture::Static {
                status: StatusCode::OK,
                headers: vec![("cache-control", "max-age=3600".into())],
                body: body.clone(),
            },
        ),
        (
            "/small",
            Fixture::with_headers(200, &[("cache-control", "max-age=3600")], "small"),
        ),
    ])
    .await;
    let proxy = start_large_objects_on_disk(&origin.url(), dir.path()).await;
    until_sent_from_file(&proxy, "/file", &body).await;
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    let sent_before = metrics.sendfile_responses.get();

    let responses =
        support::large_between_others(proxy.addr, "cache.test", "/file", "/small").await;
    assert!(responses[0].1 == body);
    assert!(responses[1].1.is_empty());
    assert_eq!(responses[2].1, b"small");
    assert!(responses[3].1 == body[1000..71000]);
    assert!(responses[4].1 == body);
    assert_eq!(metrics.sendfile_responses.get() - sent_before, 3);
    assert_eq!(origin.hits("/file"), 1);

    // HTTP/2 names the host differently (its own key, one more fetch, the same file): its
    // hits are read from the verified file instead. The miss may be answered from that
    // file too, when its fill is stored before its response is made (on a loaded machine),
    // so the hit's read is counted alone, once the miss is stored.
    let over_h2 = support::send(&support::h2c_client(), request_as(&proxy, "/file")).await;
    assert_eq!(over_h2.version, http::Version::HTTP_2);
    assert!(over_h2.body == body);
    proxy.outpost.proxy().cache().settle().await;
    let reads_before = metrics.verified_file_reads.get();
    let over_h2 = support::send(&support::h2c_client(), request_as(&proxy, "/file")).await;
    assert_eq!(over_h2.version, http::Version::HTTP_2);
    assert!(over_h2.body == body);
    assert_eq!(metrics.sendfile_responses.get() - sent_before, 3);
    assert_eq!(metrics.verified_file_reads.get() - reads_before, 1);
}

/// The verify-once model's guard: a stored file changed in place after it was verified
/// (same size, one byte) is never sent from the file. Its status shows the write, so the
/// hit takes the verified read, which finds the damage before the head is sent: the entry
/// is dropped and counted, and the client gets the origin's bytes instead.
#[tokio::test]
async fn a_file_changed_after_its_verification_is_never_sent() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(200 << 10);
    let origin = origin_of("/file", &body).await;
    let proxy = start_large_objects_on_disk(&origin.url(), dir.path()).await;
    assert!(get_as(&proxy.url("/file"), &[]).await.body == body);
    let files = blob_files(dir.path());
    assert_eq!(files.len(), 1);
    // As a file stored a while ago: the write below then moves its modification time
    // however coarse the file system's clock.
    let stored = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap();
    stored
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    until_sent_from_file(&proxy, "/file", &body).await;

    stored.write_all_at(&[body[5000] ^ 0x01], 5000).unwrap();
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    let sent_before = metrics.sendfile_responses.get();
    let reply = get_as(&proxy.url("/file"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.body == body,
        "the origin's bytes, never the changed file's"
    );
    assert_eq!(origin.hits("/file"), 2, "fetched again at once");
    assert_eq!(metrics.sendfile_responses.get(), sent_before);
    let metrics = metrics_text(&proxy).await;
    assert_eq!(metric(&metrics, "outpost_integrity_failures_total"), 1.0);
}

/// A stored body whose file is gone (a cache directory cleaned by hand, a lost disk) or
/// damaged in the first bytes a read checks, met by a hit before any byte is sent, costs
/// the client nothing: the entry is dropped and the request answered as the miss it now
/// is, whole or as the range it asked for (RFC 9110 §14.2), every time. Damage further in
/// still ends the response in an error after the verified bytes
/// (`a_corrupt_block_is_never_sent_and_intact_ranges_still_serve`).
#[tokio::test]
async fn a_stored_body_found_lost_before_its_head_is_fetched_again_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    // Three blocks with digests of their own: a read checks the first before sending.
    let (origin, proxy, body) = stored_then_damaged(dir.path(), "/blocks", 3 << 20, 777).await;
    let ranged = get_as(&proxy.url("/blocks"), &[("range", "bytes=10-19")]).await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.body, body.slice(10..20));
    assert_eq!(
        origin.hits("/blocks"),
        2,
        "the damaged body was fetched again"
    );

    let body = pattern(200 << 10);
    let origin = origin_of("/gone", &body).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_large_objects_on_disk(&origin.url(), dir.path()).await;
    assert!(get_as(&proxy.url("/gone"), &[]).await.body == body);
    for file in blob_files(dir.path()) {
        std::fs::remove_file(file).unwrap();
    }
    for round in 2..4 {
        let reply = get_as(&proxy.url("/gone"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.body == body, "round {round}: the whole body");
        assert_eq!(
            origin.hits("/gone"),
            2,
            "fetched once more, then stored again"
        );
    }

    // Several ranges (RFC 9110 §14.6): the first part's bytes are read before the first
    // boundary line, so a lost file shows before the head here too.
    for file in blob_files(dir.path()) {
        std::fs::remove_file(file).unwrap();
    }
    let ranges = get_as(&proxy.url("/gone"), &[("range", "bytes=0-9,1000-1009")]).await;
    assert_eq!(ranges.status, StatusCode::PARTIAL_CONTENT);
    let text = String::from_utf8_lossy(&ranges.body).into_owned();
    assert!(
        text.contains(&String::from_utf8_lossy(&body[..10]).into_owned())
            && text.contains(&String::from_utf8_lossy(&body[1000..1010]).into_owned()),
        "{text}"
    );
    assert_eq!(origin.hits("/gone"), 3, "the lost body was fetched again");
}

/// The read that verifies a whole stored file is the one that opens it for sendfile: the
/// hit after the first streamed one is sent from the file, with nothing read twice. A
/// range of a body with per-block digests never reads the whole file, so its file is
/// verified in the background and later ranges are sent from it.
#[tokio::test]
async fn the_read_that_verifies_a_whole_file_opens_it_for_the_next_hit() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(3 << 20);
    let origin = origin_of("/big.bin", &body).await;
    let proxy = start_large_objects_on_disk(&origin.url(), dir.path()).await;
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    assert!(get_as(&proxy.url("/big.bin"), &[]).await.body == body);
    assert!(get_as(&proxy.url("/big.bin"), &[]).await.body == body);
    assert_eq!(
        metrics.sendfile_responses.get(),
        0,
        "the first hit verifies"
    );
    assert!(get_as(&proxy.url("/big.bin"), &[]).await.body == body);
    assert_eq!(metrics.sendfile_responses.get(), 1);

    let second = pattern(3 << 20).slice(1..);
    let origin = origin_of("/other.bin", &second).await;
    let other_dir = tempfile::tempdir().unwrap();
    let proxy = start_large_objects_on_disk(&origin.url(), other_dir.path()).await;
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    assert!(get_as(&proxy.url("/other.bin"), &[]).await.body == second);
    let range = [("range", "bytes=2000000-2000999")];
    support::eventually_some("a range sent from its file", || async {
        let reply = get_as(&proxy.url("/other.bin"), &range).await;
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
        assert!(reply.body == second.slice(2_000_000..2_001_000));
        (metrics.sendfile_responses.get() > 0).then_some(())
    })
    .await;
}

/// RFC 9111 §4.1 and §4.3.4: a vary-miss validated against another variant's entity tag
/// (the origin answers 304: that stored body answers this request too) stores the body
/// under the new variant as well, on disk too (a small body is its row's own, in a pack).
/// After a restart each variant is found, whichever is asked for first: memory holds only
/// the variants asked for since, so a vary-miss in memory looks on disk before it goes to
/// the origin, here gone.
#[tokio::test]
async fn variants_validated_by_one_tag_each_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let page = || Fixture::Validated {
        etag: "\"same\"",
        headers: support::header_list(&[
            ("etag", "\"same\""),
            ("cache-control", "max-age=3600"),
            ("vary", "accept-language"),
        ]),
        body: Bytes::from_static(b"one body for every language"),
        not_modified_headers: support::header_list(&[("cache-control", "max-age=3600")]),
    };
    let mut origin = Origin::start(vec![("/v", page())]).await;
    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    for language in ["en", "fr"] {
        let reply = get_as(&proxy.url("/v"), &[("accept-language", language)]).await;
        assert_eq!(reply.text(), "one body for every language", "{language}");
    }
    let second = origin.last("/v");
    assert_eq!(second.headers["if-none-match"], "\"same\"", "validated");
    restart_point(proxy).await;
    origin.stop();

    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    for language in ["en", "fr"] {
        let reply = get_as(&proxy.url("/v"), &[("accept-language", language)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{language}: {}", reply.text());
        assert_eq!(reply.text(), "one body for every language", "{language}");
        let status = reply.header("cache-status").unwrap();
        assert!(status.contains("hit"), "{language}: {status}");
    }
    assert_eq!(origin.hits("/v"), 2, "nothing asked after the restart");
}

/// RFC 9111 §4.3.4: a 304 whose Vary differs from the stored response's re-keys the entry,
/// on disk too: the small body moves to the new row before the old row goes, so after a
/// restart the re-keyed entry still answers (before, the new row found no body of its own
/// and the old one was dropped: nothing was left).
#[tokio::test]
async fn an_entry_rekeyed_by_a_304_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut origin = Origin::start(vec![(
        "/greeting",
        Fixture::Validated {
            etag: "\"v1\"",
            headers: support::header_list(&[
                ("etag", "\"v1\""),
                ("cache-control", "max-age=60"),
                ("age", "3600"),
            ]),
            body: Bytes::from_static(b"bonjour"),
            not_modified_headers: support::header_list(&[
                ("cache-control", "max-age=3600"),
                ("vary", "accept-language"),
            ]),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    let french = [("accept-language", "fr")];
    get_as(&proxy.url("/greeting"), &french).await;
    let rekeyed = get_as(&proxy.url("/greeting"), &french).await;
    assert!(support::cache_status(&rekeyed).contains("fwd-status=304"));
    restart_point(proxy).await;
    origin.stop();

    let proxy = Proxy::start(&origin.url(), &disk_toml(dir.path(), "")).await;
    let again = get_as(&proxy.url("/greeting"), &french).await;
    assert_eq!(again.text(), "bonjour");
    assert!(
        support::cache_status(&again).contains("hit"),
        "{}",
        support::cache_status(&again)
    );
}

/// Writes to `path` until the file system holding it has no room left.
fn fill_file_system(path: &Path) {
    use std::io::Write;
    let mut filler = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 << 10];
    while filler.write_all(&chunk).is_ok() {}
    // What a full last chunk could not take, a byte at a time.
    while filler.write_all(&[0x5a]).is_ok() {}
}

/// A file system that filled up while outpost was down costs nothing stored: the disk
/// tier gives up its reserve before the index writes a byte, so the index opens and
/// what it names is served (before, sled ran out of room opening it, and the whole tier
/// was off: 502s with the origin down). Nothing new is stored until there is room again;
/// then storing resumes, the reserve is made again and the new object survives a restart.
#[tokio::test]
async fn a_file_system_filled_while_down_loses_nothing_stored() {
    let Some(fs) = support::small_file_system(
        "disk::a_file_system_filled_while_down_loses_nothing_stored",
        "16m",
    ) else {
        return;
    };
    let dir = fs.path().join("cache");
    let big = pattern(300 << 10);
    let cached = |body: Bytes| Fixture::Static {
        status: StatusCode::OK,
        headers: vec![("cache-control", "max-age=3600".into())],
        body,
    };
    let origin = Origin::start(vec![
        ("/small", cached(Bytes::from_static(b"small body"))),
        ("/big", cached(big.clone())),
        (
            "/later",
            cached(Bytes::from_static(b"stored once there was room")),
        ),
    ])
    .await;
    let toml = disk_toml(&dir, "disk_min_free = \"1MiB\"");
    let proxy = Proxy::start(&origin.url(), &toml).await;
    get_as(&proxy.url("/small"), &[]).await;
    get_as(&proxy.url("/big"), &[]).await;
    restart_point(proxy).await;
    let reserve = dir.join("reserve");
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 4 << 20);

    let filler = fs.path().join("filler");
    fill_file_system(&filler);
    let proxy = Proxy::start(&origin.url(), &toml).await;
    let small = get_as(&proxy.url("/small"), &[]).await;
    assert_eq!(
        (small.status, small.text().as_str()),
        (StatusCode::OK, "small body")
    );
    assert_eq!(get_as(&proxy.url("/big"), &[]).await.body, big);
    assert_eq!(
        (origin.hits("/small"), origin.hits("/big")),
        (1, 1),
        "served from the disk tier"
    );
    assert!(!reserve.exists(), "the reserve was given up");

    std::fs::remove_file(&filler).unwrap();
    get_as(&proxy.url("/later"), &[]).await;
    proxy.outpost.proxy().cache().settle().await;
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 4 << 20);
    restart_point(proxy).await;
    drop(origin);

    let down = support::closed_port().await;
    let proxy = Proxy::start(&format!("http://{down}"), &toml).await;
    for (path, body) in [
        ("/small", Bytes::from_static(b"small body")),
        ("/big", big),
        ("/later", Bytes::from_static(b"stored once there was room")),
    ] {
        let reply = get_as(&proxy.url(path), &[]).await;
        assert_eq!(
            (reply.status, &reply.body),
            (StatusCode::OK, &body),
            "{path}"
        );
    }
}

/// A file system that fills while outpost runs: the next write gives the reserve up and
/// is refused (counted, not an error: the tier stays in use and its index keeps
/// working); what was stored before stays, and once there is room again objects are
/// stored and the reserve is made again. After a restart with the origin down, the
/// objects stored before and after are served, the one refused is not.
#[tokio::test]
async fn a_file_system_filling_while_running_refuses_objects_and_loses_none() {
    let Some(fs) = support::small_file_system(
        "disk::a_file_system_filling_while_running_refuses_objects_and_loses_none",
        "16m",
    ) else {
        return;
    };
    let dir = fs.path().join("cache");
    let cached =
        |body: &'static str| Fixture::with_headers(200, &[("cache-control", "max-age=3600")], body);
    let origin = Origin::start(vec![
        ("/before", cached("stored before the disk filled")),
        ("/while", cached("refused while it was full")),
        ("/after", cached("stored once there was room")),
    ])
    .await;
    let toml = disk_toml(&dir, "disk_min_free = \"1MiB\"");
    let proxy = Proxy::start(&origin.url(), &toml).await;
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    get_as(&proxy.url("/before"), &[]).await;
    proxy.outpost.proxy().cache().settle().await;
    let reserve = dir.join("reserve");
    assert!(reserve.exists());

    let filler = fs.path().join("filler");
    fill_file_system(&filler);
    let reply = get_as(&proxy.url("/while"), &[]).await;
    assert_eq!(reply.text(), "refused while it was full");
    proxy.outpost.proxy().cache().settle().await;
    assert!(!reserve.exists(), "given up at the write");
    assert!(metrics.disk_full_refusals.get() >= 1);
    assert_eq!(
        (metrics.disk_errors.get(), metrics.disk_degraded.get()),
        (0, 0),
        "refused, not failed"
    );

    std::fs::remove_file(&filler).unwrap();
    get_as(&proxy.url("/after"), &[]).await;
    proxy.outpost.proxy().cache().settle().await;
    assert!(reserve.exists(), "made again");
    restart_point(proxy).await;
    drop(origin);

    let down = support::closed_port().await;
    let proxy = Proxy::start(&format!("http://{down}"), &toml).await;
    for (path, body) in [
        ("/before", "stored before the disk filled"),
        ("/after", "stored once there was room"),
    ] {
        let reply = get_as(&proxy.url(path), &[]).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, body)
        );
    }
    let refused = get_as(&proxy.url("/while"), &[]).await;
    assert_ne!(refused.status, StatusCode::OK, "never stored");
}

/// Replaces the tier's `tmp/` by a file: the next body write fails (for root too) and
/// the tier goes off. Returns its path for [`give_tmp_back`].
fn take_tmp_away(dir: &Path) -> std::path::PathBuf {
    let tmp = dir.join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, "not a directory").unwrap();
    tmp
}

fn give_tmp_back(tmp: &Path) {
    std::fs::remove_file(tmp).unwrap();
    std::fs::create_dir(tmp).unwrap();
}

/// An outpost with its disk tier in `dir` (probed `retry_after` after a failure) in
/// front of an origin serving each of `stored` (its body its path) and `/while-off`, all
/// fresh for an hour, once it has stored `stored` on disk and its tier has gone off
/// ([`take_tmp_away`], whose path it returns).
async fn stored_then_off(
    dir: &Path,
    stored: &[&'static str],
    retry_after: &str,
) -> (Origin, Proxy, std::path::PathBuf) {
    let mut routes: Vec<(&str, Fixture)> = stored
        .iter()
        .map(|path| (*path, Fixture::for_an_hour(path)))
        .collect();
    routes.push(("/while-off", Fixture::for_an_hour("while off")));
    let origin = Origin::start(routes).await;
    let toml = disk_toml(
        dir,
        &format!("{BODIES_IN_FILES}\ndisk_retry_after = \"{retry_after}\""),
    );
    let proxy = Proxy::start(&origin.url(), &toml).await;
    for path in stored {
        get_as(&proxy.url(path), &[]).await;
    }
    proxy.outpost.proxy().cache().settle().await;
    let tmp = take_tmp_away(dir);
    get_as(&proxy.url("/while-off"), &[]).await;
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    support::eventually("the tier to go off", || metrics.disk_degraded.get() == 1).await;
    (origin, proxy, tmp)
}

/// Invalidations reach the disk tier even while it is off: a purge by URL or prefix and a
/// POST's invalidation (RFC 9111 §4.4) made while the tier is degraded are remembered and
/// applied before the tier is used again. Before, they reached memory alone, and the
/// disk's copies came back with the tier: purged content served again.
#[tokio::test]
async fn invalidations_while_the_disk_tier_is_off_are_applied_before_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let stored = ["/purged", "/tree/leaf", "/posted", "/kept"];
    let (origin, proxy, tmp) = stored_then_off(dir.path(), &stored, "50ms").await;
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());

    let admin = start_admin(&proxy).await;
    let purged = post(&format!("{admin}/purge?url=http://cache.test/purged")).await;
    assert!(purged.text().contains("\"purged\":1"), "{}", purged.text());
    let pruned = post(&format!("{admin}/purge?prefix=http://cache.test/tree/")).await;
    assert!(pruned.text().contains("\"purged\":1"), "{}", pruned.text());
    let posted = support::send(
        &client(),
        Request::post(proxy.url("/posted"))
            .header(HOST.0, HOST.1)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(posted.status, StatusCode::OK);
    // /purged over http and https, the prefix (its one key in memory, and the prefix for
    // the disk to list), /posted.
    assert_eq!(metrics.disk_invalidations_pending.get(), 5);

    give_tmp_back(&tmp);
    support::eventually("the tier to come back", || metrics.disk_degraded.get() == 0).await;
    assert_eq!(metrics.disk_invalidations_pending.get(), 0);
    for path in ["/purged", "/tree/leaf", "/posted", "/kept"] {
        assert_eq!(get_as(&proxy.url(path), &[]).await.status, StatusCode::OK);
    }
    assert_eq!(
        (
            origin.hits("/purged"),
            origin.hits("/tree/leaf"),
            origin.hits("/posted"),
            origin.hits("/kept"),
        ),
        (2, 2, 3, 1),
        "the invalidated ones fetched again (and POSTed once), the other still stored"
    );
}

/// How many objects [`PurgedObjects`] stores.
const PURGED: usize = 200;

/// Objects under `/purged?n=N`, each with a body of its own (`N` padded to `width`) that the
/// origin echoes from `x-body`: rows for a purge by prefix to remove.
struct PurgedObjects {
    width: usize,
}

impl PurgedObjects {
    /// The origin's route that answers them, fresh for an hour.
    fn route() -> (&'static str, Fixture) {
        (
            "/purged",
            Fixture::Echo {
                name: "x-body",
                headers: support::header_list(&[("cache-control", "max-age=3600")]),
            },
        )
    }

    fn url_and_body(&self, proxy: &Proxy, n: usize) -> (String, String) {
        (
            proxy.url(&format!("/purged?n={n}")),
            format!("{n:0>width$}", width = self.width),
        )
    }

    /// Requests each of them once through `proxy`: each body, with the reply.
    async fn store(&self, proxy: &Proxy) -> Vec<(String, support::Reply)> {
        let mut replies = Vec::with_capacity(PURGED);
        for n in 0..PURGED {
            let (url, body) = self.url_and_body(proxy, n);
            let reply = get_as(&url, &[("x-body", &body)]).await;
            replies.push((body, reply));
        }
        replies
    }

    /// Purges them all by prefix through `admin`, which must count every one.
    async fn purge_all(&self, admin: &str) {
        let purged = post(&format!("{admin}/purge?prefix=http://cache.test/purged")).await;
        assert!(
            purged.text().contains(&format!("\"purged\":{PURGED}")),
            "{}",
            purged.text()
        );
    }

    /// The first, a middle and the last are not answered 200 by `proxy` (`why` says what
    /// that would mean).
    async fn assert_none_served(&self, proxy: &Proxy, why: &str) {
        for n in [0, PURGED / 2, PURGED - 1] {
            let (url, body) = self.url_and_body(proxy, n);
            let reply = get_as(&url, &[("x-body", &body)]).await;
            assert_ne!(reply.status, StatusCode::OK, "{why}");
        }
    }
}

/// sled keeps an I/O error of its own writes until its index is reopened: here the index
/// itself meets a full file system (a purge's removals, which take no room, written while
/// the reserve is still in place). The tier goes off; once there is room again the probe
/// reopens the index in place, so the tier comes back without a restart, the purge it
/// missed is applied, and what it held before is still served.
#[tokio::test]
async fn an_index_failed_by_a_full_file_system_is_reopened_when_there_is_room() {
    let Some(fs) = support::small_file_system(
        "disk::an_index_failed_by_a_full_file_system_is_reopened_when_there_is_room",
        "16m",
    ) else {
        return;
    };
    let dir = fs.path().join("cache");
    let origin = Origin::start(vec![
        ("/before", Fixture::for_an_hour("stored before")),
        PurgedObjects::route(),
        ("/after", Fixture::for_an_hour("stored after the reopening")),
    ])
    .await;
    let toml = disk_toml(
        &dir,
        "disk_min_free = \"1MiB\"\ndisk_retry_after = \"50ms\"",
    );
    let proxy = Proxy::start(&origin.url(), &toml).await;
    let metrics = std::sync::Arc::clone(proxy.outpost.proxy().metrics());
    get_as(&proxy.url("/before"), &[]).await;
    // Enough rows that removing them writes more than the index's last page has left.
    let purged = PurgedObjects { width: 1000 };
    for (body, reply) in purged.store(&proxy).await {
        assert_eq!(reply.text(), body);
    }
    proxy.outpost.proxy().cache().settle().await;

    let filler = fs.path().join("filler");
    fill_file_system(&filler);
    purged.purge_all(&start_admin(&proxy).await).await;
    support::eventually("the tier to go off", || metrics.disk_degraded.get() == 1).await;

    std::fs::remove_file(&filler).unwrap();
    support::eventually("the tier to come back", || metrics.disk_degraded.get() == 0).await;
    get_as(&proxy.url("/after"), &[]).await;
    proxy.outpost.proxy().cache().settle().await;
    restart_point(proxy).await;
    drop(origin);

    let down = support::closed_port().await;
    let proxy = Proxy::start(&format!("http://{down}"), &toml).await;
    for (path, body) in [
        ("/before", "stored before"),
        ("/after", "stored after the reopening"),
    ] {
        let reply = get_as(&proxy.url(path), &[]).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, body)
        );
    }
    purged
        .assert_none_served(&proxy, "the purge reached the disk")
        .await;
}

/// Invalidations a tier that is off missed live in memory, so a clean shutdown tries the
/// tier once more for them: here the disk works again before the next probe is due, and
/// after the restart (origin gone) the purged object is not served while the other is.
#[tokio::test]
async fn invalidations_missed_while_off_are_applied_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, proxy, tmp) = stored_then_off(dir.path(), &["/purged", "/kept"], "1h").await;
    let admin = start_admin(&proxy).await;
    let purged = post(&format!("{admin}/purge?url=http://cache.test/purged")).await;
    assert!(purged.text().contains("\"purged\":1"), "{}", purged.text());

    give_tmp_back(&tmp);
    restart_point(proxy).await;
    drop(origin);
    let down = support::closed_port().await;
    let proxy = Proxy::start(&format!("http://{down}"), &disk_toml(dir.path(), "")).await;
    assert_eq!(get_as(&proxy.url("/kept"), &[]).await.text(), "/kept");
    let purged = get_as(&proxy.url("/purged"), &[]).await;
    assert_ne!(
        purged.status,
        StatusCode::OK,
        "the purge reached the disk at shutdown"
    );
}

/// Purges missed while the tier is off are written down in the cache dir, in room made
/// in advance, so that even a full file system takes them, and they outlive the outpost
/// that took them. Here the tier is off (its `tmp/` made unusable) when the file system
/// fills and a purge by prefix comes; outpost stops with the disk still failing, so it
/// cannot apply the purge; the next start, with room again and the origin gone, applies
/// what it finds written down before it serves from disk. Before, the purge lived in
/// memory and was lost at exit: purged content served again.
#[tokio::test]
async fn a_purge_written_down_on_a_full_disk_is_applied_at_the_next_start() {
    let Some(fs) = support::small_file_system(
        "disk::a_purge_written_down_on_a_full_disk_is_applied_at_the_next_start",
        "16m",
    ) else {
        return;
    };
    let dir = fs.path().join("cache");
    let origin = Origin::start(vec![
        ("/kept", Fixture::for_an_hour("kept")),
        ("/while-off", Fixture::for_an_hour("while off")),
        PurgedObjects::route(),
    ])
    .await;
    let toml = |retry_after: &str| {
        disk_toml(
            &dir,
            &format!(
                "{BODIES_IN_FILES}\ndisk_min_free = \"1MiB\"\ndisk_retry_after = \"{retry_after}\""
            ),
        )
    };
    // No probe while the first is off: a probe would give the reserve up, making room.
    let first = Proxy::start(&origin.url(), &toml("1h")).await;
    get_as(&first.url("/kept"), &[]).await;
    // More purged objects than a page of the file holds, written down.
    let purged = PurgedObjects { width: 100 };
    purged.store(&first).await;
    first.outpost.proxy().cache().settle().await;
    let first_metrics = std::sync::Arc::clone(first.outpost.proxy().metrics());
    let tmp = take_tmp_away(&dir);
    get_as(&first.url("/while-off"), &[]).await;
    support::eventually("the tier to go off", || {
        first_metrics.disk_degraded.get() == 1
    })
    .await;
    let filler = fs.path().join("filler");
    fill_file_system(&filler);
    purged.purge_all(&start_admin(&first).await).await;
    // 200 removals and the prefix (the tier could not list its own keys).
    assert_eq!(
        first_metrics.disk_invalidations_pending.get(),
        PURGED as i64 + 1
    );
    restart_point(first).await;
    give_tmp_back(&tmp);
    std::fs::remove_file(&filler).unwrap();
    drop(origin);

    let down = support::closed_port().await;
    let second = Proxy::start(&format!("http://{down}"), &toml("50ms")).await;
    let metrics = std::sync::Arc::clone(second.outpost.proxy().metrics());
    assert_eq!(metrics.disk_degraded.get(), 0);
    assert_eq!(metrics.disk_invalidations_pending.get(), 0);
    let kept = get_as(&second.url("/kept"), &[]).await;
    assert_eq!(
        (kept.status, kept.text().as_str()),
        (StatusCode::OK, "kept")
    );
    purged
        .assert_none_served(&second, "purged content came back")
        .await;
}

/// A directory another outpost still holds (a restart that overlaps the old process)
/// does not cost the new one its disk tier until its own next restart: it runs from
/// memory, probes, and takes the tier over once the old one lets go, serving what the old
/// one stored.
#[tokio::test]
async fn a_disk_tier_another_outpost_holds_is_taken_over_when_it_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(vec![(
        "/kept",
        Fixture::with_headers(
            200,
            &[("cache-control", "max-age=3600")],
            "stored by the first",
        ),
    )])
    .await;
    let toml = disk_toml(dir.path(), "disk_retry_after = \"50ms\"");
    let first = Proxy::start(&origin.url(), &toml).await;
    get_as(&first.url("/kept"), &[]).await;
    first.outpost.proxy().cache().settle().await;

    let second = Proxy::start(&origin.url(), &toml).await;
    let metrics = std::sync::Arc::clone(second.outpost.proxy().metrics());
    assert_eq!(metrics.disk_degraded.get(), 1, "the first holds the index");
    restart_point(first).await;
    support::eventually("the second to take the tier over", || {
        metrics.disk_degraded.get() == 0
    })
    .await;
    drop(origin);
    let reply = get_as(&second.url("/kept"), &[]).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "stored by the first")
    );
}

/// RFC 9111 §3.3: partial entries are kept on disk too. After a restart with the origin
/// gone, a range inside a stored 206 is answered from it, every byte the origin's; one
/// outside it is not. A purge by prefix reaches the file, counts the entry once, and
/// stays done after the next restart.
#[tokio::test]
async fn partial_entries_survive_a_restart_and_purges_reach_them() {
    let dir = tempfile::tempdir().unwrap();
    let whole: Bytes = (0..1000u32)
        .map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz"[(i % 36) as usize])
        .collect();
    let origin = Origin::start(vec![(
        "/video",
        Fixture::Ranged {
            headers: support::header_list(&[("cache-control", "max-age=3600"), ("etag", "\"v1\"")]),
            body: whole.clone(),
        },
    )])
    .await;
    // Ranges starting past 100 bytes are forwarded as ranges (kept as partial entries).
    let toml = disk_toml(dir.path(), "range_fill_max_offset = \"100\"");
    let proxy = Proxy::start(&origin.url(), &toml).await;
    let first = get_as(&proxy.url("/video"), &[("range", "bytes=200-599")]).await;
    assert_eq!(first.status, StatusCode::PARTIAL_CONTENT);
    proxy.outpost.proxy().cache().settle().await;
    restart_point(proxy).await;
    drop(origin);

    let down = format!("http://{}", support::closed_port().await);
    let proxy = Proxy::start(&down, &toml).await;
    let inside = get_as(&proxy.url("/video"), &[("range", "bytes=300-399")]).await;
    assert_eq!(
        (inside.status, inside.header("content-range")),
        (StatusCode::PARTIAL_CONTENT, Some("bytes 300-399/1000"))
    );
    assert_eq!(inside.body, whole.slice(300..400));
    assert!(support::cache_status(&inside).contains("hit"));
    let outside = get_as(&proxy.url("/video"), &[("range", "bytes=900-950")]).await;
    assert_ne!(outside.status, StatusCode::PARTIAL_CONTENT);

    let admin = start_admin(&proxy).await;
    let status = support::get(&format!("{admin}/status.json"), &[]).await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(status["tiers"]["partial"]["disk_entries"], 1, "{status}");
    // Held in memory again (read back above) and on disk: one partial entry, counted once.
    let purged = post(&format!("{admin}/purge?prefix=http://cache.test/vid")).await;
    assert!(purged.text().contains("\"purged\":1,"), "{}", purged.text());
    let after = get_as(&proxy.url("/video"), &[("range", "bytes=300-399")]).await;
    assert_ne!(after.status, StatusCode::PARTIAL_CONTENT, "purged");
    restart_point(proxy).await;
    let proxy = Proxy::start(&down, &toml).await;
    let restarted = get_as(&proxy.url("/video"), &[("range", "bytes=300-399")]).await;
    assert_ne!(
        restarted.status,
        StatusCode::PARTIAL_CONTENT,
        "still purged"
    );
}

/// RFC 9110 §14.2: a miss asking for several ranges out of ascending order (parts sent in
/// the order asked, §14.6, which a body read once cannot give) waits for its fill to store
/// the object (here written to a disk file as it comes). When the file fails mid-way (the file
/// system fills up), the request is sent again with its Range forwarded, and answered: here
/// by an origin that ignores Range, with the whole 200, as RFC 9110 §14.2 allows. It used
/// to get a 500.
#[tokio::test]
async fn a_range_miss_whose_object_could_not_be_stored_is_forwarded() {
    let Some(fs) = support::small_file_system(
        "disk::a_range_miss_whose_object_could_not_be_stored_is_forwarded",
        "64m",
    ) else {
        return;
    };
    let body = pattern(8 << 20);
    let gate = Gate::closed();
    let origin = Origin::start(vec![(
        "/disc.iso",
        Fixture::Halves {
            headers: support::header_list(&[("cache-control", "max-age=600")]),
            first: body.slice(..1 << 20),
            gate: gate.clone(),
            rest: body.slice(1 << 20..),
        },
    )])
    .await;
    let limits =
        "unread_fill_limit = \"1MiB\"\nmax_object_size = \"512KiB\"\ndisk_min_free = \"1MiB\"";
    let proxy = Proxy::start(&origin.url(), &disk_toml(&fs.path().join("cache"), limits)).await;
    let url = proxy.url("/disc.iso");
    let ranges = "bytes=300-399,100-199";
    let ranged = tokio::spawn(async move { get_as(&url, &[("range", ranges)]).await });
    let spill = fs.path().join("cache").join("tmp");
    let first_half_written = || {
        std::fs::read_dir(&spill).is_ok_and(|files| {
            files
                .flatten()
                .any(|file| file.metadata().is_ok_and(|m| m.len() >= 1 << 20))
        })
    };
    support::eventually("the first half in the fill's file", first_half_written).await;
    fill_file_system(&fs.path().join("filler"));
    gate.open();
    let reply = ranged.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.body, body);
    assert_eq!(origin.hits("/disc.iso"), 2);
    assert_eq!(
        origin
            .last("/disc.iso")
            .headers
            .get("range")
            .map(|v| v.to_str().unwrap()),
        Some(ranges),
        "the second request forwards the range"
    );
}
