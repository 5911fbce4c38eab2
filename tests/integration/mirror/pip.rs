//! pip through the mirror's `/pypi/` registry: PEP 503 HTML and PEP 691 JSON simple pages
//! whose links point at a second (TLS) files host are rewritten to come back through the
//! mirror; installs work online, with the upstream down (stale indexes, RFC 5861 §4 and
//! RFC 9111 §4.2.4), and in offline mode; a wheel that does not match the page's sha256 is
//! refused.

use std::process::Command;

use bytes::Bytes;
use http::StatusCode;

use super::{client_available, python_bytes, run_blocking, sha256_hex, Mirror};
use crate::support::{self, Fixture, Gate, Origin};

/// A minimal, valid wheel of `name` `version` (a zip with the dist-info files pip reads),
/// the same bytes every time.
pub fn wheel(name: &str, version: &str) -> Bytes {
    let script = r#"
import io, sys, zipfile
name, version = sys.argv[1], sys.argv[2]
buf = io.BytesIO()
def put(z, path, text):
    z.writestr(zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0)), text)
with zipfile.ZipFile(buf, "w") as z:
    put(z, f"{name}/__init__.py", "VALUE = 1\n")
    info = f"{name}-{version}.dist-info"
    put(z, f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    put(z, f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    put(z, f"{info}/RECORD", "")
sys.stdout.buffer.write(buf.getvalue())
"#;
    Bytes::from(python_bytes(script, &[name, version]))
}

pub fn pip_available() -> bool {
    client_available("python3", &["-m", "pip", "--version"])
}

/// `pip install --target` of `requirements` through `index` into a fresh folder, with no
/// pip cache: what a new machine does. The folder, for checking what was installed.
pub fn pip_install(index: &str, requirements: &[&str]) -> Command {
    let mut command = Command::new("python3");
    command
        .args(["-m", "pip", "install", "--no-deps", "--no-cache-dir"])
        .args(["--retries", "0", "--timeout", "20", "--index-url", index])
        .args(requirements)
        // This machine's pip configuration must not send pip elsewhere.
        .env_remove("PIP_FIND_LINKS")
        .env_remove("PIP_INDEX_URL")
        .env_remove("PIP_EXTRA_INDEX_URL")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    command
}

async fn install(index: &str, requirements: &[&str]) -> Result<tempfile::TempDir, String> {
    let target = tempfile::tempdir().unwrap();
    let mut command = pip_install(index, requirements);
    command.arg("--target").arg(target.path());
    run_blocking(command).await?;
    Ok(target)
}

/// An index page fixture: 200 with an ETag, 304 when revalidated with it.
pub fn page(content_type: &str, body: String) -> Fixture {
    Fixture::Validated {
        etag: "\"page-1\"",
        headers: support::header_list(&[
            ("content-type", content_type),
            ("cache-control", "max-age=600"),
        ]),
        body: Bytes::from(body),
        not_modified_headers: Vec::new(),
    }
}

pub fn artifact(body: Bytes) -> Fixture {
    Fixture::Static {
        status: StatusCode::OK,
        headers: vec![("content-type", "application/octet-stream".into())],
        body,
    }
}

/// The PyPI-like upstream: `/simple/demo-pkg/` (HTML) and `/simple/demo-json/` (JSON) on a
/// plain index host, their wheels on a TLS files host.
pub struct PypiFixture {
    pub index: Origin,
    pub files: Origin,
    pub ca_pem: String,
    pub files_url: String,
}

pub const HTML_WHEEL: &str = "/packages/ab/cd/demo_pkg-1.0-py3-none-any.whl";
pub const JSON_WHEEL: &str = "/packages/ef/gh/demo_json-2.0-py3-none-any.whl";

impl PypiFixture {
    /// `served` replaces the HTML wheel's bytes at the files host (a tampered upload).
    pub async fn start(served: Option<Bytes>) -> PypiFixture {
        PypiFixture::start_serving(served, artifact).await
    }

    /// As [`PypiFixture::start`], the HTML wheel's bytes served by `serve`.
    pub async fn start_serving(served: Option<Bytes>, serve: fn(Bytes) -> Fixture) -> PypiFixture {
        let html_wheel = wheel("demo_pkg", "1.0");
        let json_wheel = wheel("demo_json", "2.0");
        let html_served = served.unwrap_or_else(|| html_wheel.clone());
        let (files, ca_pem) = Origin::start_tls(vec![
            (HTML_WHEEL, serve(html_served)),
            (JSON_WHEEL, artifact(json_wheel.clone())),
        ])
        .await;
        let files_url = format!("https://localhost:{}", files.addr.port());
        let html = format!(
            "<!DOCTYPE html><html><body>\n<a href=\"{files_url}{HTML_WHEEL}#sha256={}\" data-requires-python=\"&gt;=3\">demo_pkg-1.0-py3-none-any.whl</a>\n</body></html>\n",
            sha256_hex(&html_wheel)
        );
        let json = serde_json::json!({
            "meta": {"api-version": "1.0"},
            "name": "demo-json",
            "files": [{
                "filename": "demo_json-2.0-py3-none-any.whl",
                "url": format!("{files_url}{JSON_WHEEL}"),
                "hashes": {"sha256": sha256_hex(&json_wheel)},
            }],
        });
        let index = Origin::start(vec![
            ("/simple/demo-pkg/", page("text/html", html)),
            (
                "/simple/demo-json/",
                page("application/vnd.pypi.simple.v1+json", json.to_string()),
            ),
        ])
        .await;
        PypiFixture {
            index,
            files,
            ca_pem,
            files_url,
        }
    }

    pub fn swaps(&self) -> Vec<(&'static str, String)> {
        vec![
            ("https://pypi.org", self.index.url()),
            ("https://files.pythonhosted.org", self.files_url.clone()),
        ]
    }

    pub fn stop(&mut self) {
        self.index.stop();
        self.files.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_installs_through_the_mirror_online_with_the_upstream_down_and_offline() {
    if !pip_available() {
        return;
    }
    let mut pypi = PypiFixture::start(None).await;
    let mirror = Mirror::start(&pypi.swaps(), Some(&pypi.ca_pem)).await;
    let index = mirror.url("/pypi/simple/");
    let requirements = ["demo-pkg==1.0", "demo-json==2.0"];

    let installed = install(&index, &requirements).await.expect("pip online");
    assert!(installed.path().join("demo_pkg/__init__.py").exists());
    assert!(installed.path().join("demo_json/__init__.py").exists());
    // Every download came through the mirror (pip never talked to the files host itself:
    // it does not trust the fixture's certificate), once.
    assert_eq!(pypi.files.hits(HTML_WHEEL), 1);
    assert_eq!(pypi.files.hits(JSON_WHEEL), 1);

    install(&index, &requirements)
        .await
        .expect("pip, second machine");
    assert_eq!(pypi.files.hits(HTML_WHEEL), 1, "wheels come from the cache");
    let card = mirror.card("pypi").await;
    assert!(card["hits"].as_u64().unwrap() >= 2, "{card}");
    assert!(
        card["last_upstream_contact"].as_u64().unwrap() > 0,
        "{card}"
    );

    pypi.stop();
    install(&index, &requirements)
        .await
        .expect("pip with the upstream down");

    mirror.go_offline().await;
    install(&index, &requirements)
        .await
        .expect("pip in offline mode");
}

/// A wheel whose bytes do not match the sha256 its page published is never stored or
/// served: 502 with Proxy-Status (RFC 9209 §2.3.14), counted on the mirror card, and asked
/// for again next time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_wheel_is_refused_and_never_stored() {
    let tampered = wheel("demo_pkg", "6.6.6");
    let pypi = PypiFixture::start(Some(tampered)).await;
    let mirror = Mirror::start(&pypi.swaps(), Some(&pypi.ca_pem)).await;
    let page = support::get(&mirror.url("/pypi/simple/demo-pkg/"), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let link = format!("/pypi/_files{HTML_WHEEL}");
    let text = String::from_utf8_lossy(&page.body);
    assert!(text.contains(&mirror.url(&link)), "{text}");
    for _ in 0..2 {
        let refused = support::get(&mirror.url(&link), &[]).await;
        assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
        let proxy_status = refused.header("proxy-status").unwrap_or_default();
        assert!(
            proxy_status.contains("error=http_protocol_error")
                && proxy_status.contains("sha256 of the artifact does not match"),
            "{proxy_status}"
        );
    }
    assert_eq!(
        pypi.files.hits(HTML_WHEEL),
        2,
        "a refused artifact is not stored"
    );
    assert_eq!(mirror.card("pypi").await["integrity_failures"], 2);
    if pip_available() {
        let failed = install(&mirror.url("/pypi/simple/"), &["demo-pkg==1.0"]).await;
        assert!(failed.is_err(), "pip must not install the tampered wheel");
    }
}

/// Artifacts larger than `mirror.hold_max` are checked as they stream: a good one is
/// served whole and stored; a tampered one is cut off (the client never gets a complete
/// wrong file) and never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_too_large_to_hold_are_checked_as_they_stream() {
    use http_body_util::BodyExt;
    let small_hold = |config: &mut outpost::Config| {
        config.mirror.hold_max = outpost::config::ByteSize(64);
    };
    let fetch = |url: String| async move {
        let request = http::Request::get(url)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        // `None`: the connection closed before a response head arrived.
        let response = support::client().request(request).await.ok()?;
        let status = response.status();
        Some((
            status,
            response.into_body().collect().await.map(|b| b.to_bytes()),
        ))
    };
    for tampered in [false, true] {
        let served = tampered.then(|| wheel("demo_pkg", "6.6.6"));
        let pypi = PypiFixture::start(served).await;
        let mirror = Mirror::start_tuned(&pypi.swaps(), Some(&pypi.ca_pem), small_hold).await;
        let page = support::get(&mirror.url("/pypi/simple/demo-pkg/"), &[]).await;
        assert_eq!(page.status, StatusCode::OK);
        let link = mirror.url(&format!("/pypi/_files{HTML_WHEEL}"));
        for _ in 0..2 {
            let fetched = fetch(link.clone()).await;
            if tampered {
                // Whether the head went out before the end was checked depends on timing:
                // a 502 (the fill failed first), an aborted body, or a connection closed
                // before its head was flushed; never a whole wrong file.
                let cut_off = match &fetched {
                    None => true,
                    Some((status, body)) => *status == StatusCode::BAD_GATEWAY || body.is_err(),
                };
                assert!(cut_off, "a tampered artifact must not arrive whole");
            } else {
                let (status, body) = fetched.expect("a good artifact is answered");
                assert_eq!(status, StatusCode::OK);
                assert_eq!(body.unwrap(), wheel("demo_pkg", "1.0"));
            }
        }
        let expected_hits = if tampered { 2 } else { 1 };
        assert_eq!(
            pypi.files.hits(HTML_WHEEL),
            expected_hits,
            "tampered: {tampered}"
        );
        let failures = mirror.card("pypi").await["integrity_failures"].clone();
        assert_eq!(failures, if tampered { 2 } else { 0 });
    }
}

/// A tampered artifact with a strong ETag, from an origin that honours Range: what
/// arrived of it before its digest failed is not kept (RFC 9111 §3.3 would allow keeping
/// an incomplete response, but its bytes were never checked), and a 206 piece of it is not
/// kept either: pieces combined into a whole would be stored without the digest check a
/// whole fetch gets. A range inside the start, asked twice, goes to the origin each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_piece_of_an_unchecked_artifact_is_kept() {
    let tagged = |body: Bytes| Fixture::Ranged {
        headers: support::header_list(&[
            ("content-type", "application/octet-stream"),
            ("etag", "\"wheel-1\""),
        ]),
        body,
    };
    let pypi = PypiFixture::start_serving(Some(wheel("demo_pkg", "6.6.6")), tagged).await;
    let small_hold = |config: &mut outpost::Config| {
        config.mirror.hold_max = outpost::config::ByteSize(64);
        config.cache.range_fill_max_offset = outpost::config::ByteSize(10);
    };
    let mirror = Mirror::start_tuned(&pypi.swaps(), Some(&pypi.ca_pem), small_hold).await;
    let page = support::get(&mirror.url("/pypi/simple/demo-pkg/"), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let link = mirror.url(&format!("/pypi/_files{HTML_WHEEL}"));
    // Cut off as it streams: a 502, an aborted body or a closed connection (see above).
    let request = http::Request::get(link.clone())
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    if let Ok(response) = support::client().request(request).await {
        use http_body_util::BodyExt;
        let whole = response.into_body().collect().await;
        assert!(whole.is_err() || whole.unwrap().to_bytes().len() < 100);
    }
    for round in 1..=2 {
        let piece = support::get(&link, &[("range", "bytes=20-29")]).await;
        assert_eq!(piece.status, StatusCode::PARTIAL_CONTENT, "{round}");
        let status = support::cache_status(&piece);
        assert!(status.contains("fwd=uri-miss"), "{round}: {status}");
    }
    assert_eq!(pypi.files.hits(HTML_WHEEL), 3);
}

/// The gate of the second half of the artifact [`held_artifact`] made last.
static SECOND_HALF: std::sync::Mutex<Option<Gate>> = std::sync::Mutex::new(None);

/// A tampered artifact of 2 MiB: its first half is sent at once, its second once the gate
/// left in [`SECOND_HALF`] opens.
fn held_artifact(_: Bytes) -> Fixture {
    let gate = Gate::closed();
    *SECOND_HALF.lock().unwrap() = Some(gate.clone());
    Fixture::Halves {
        headers: support::header_list(&[("content-type", "application/octet-stream")]),
        first: Bytes::from(vec![b'x'; 1 << 20]),
        gate,
        rest: Bytes::from(vec![b'y'; 1 << 20]),
    }
}

/// A range of an artifact checked as it streams (past `mirror.hold_max`) is not cut from
/// it before its digest is checked at the end, so a client never gets a complete 206 of a
/// tampered artifact: one being stored waits for the checked object (here: 502, refused),
/// one too large to store gets the whole 200, cut off before its last bytes. A range cut
/// from the body as it arrived was complete while the origin still held the second half;
/// and an artifact too large to store arrived whole, its last chunk sent before the check
/// (the client had every byte its Content-Length declared; nothing counted the failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_range_of_an_artifact_is_sent_before_its_check() {
    use http_body_util::BodyExt;
    for too_large in [false, true] {
        let pypi = PypiFixture::start_serving(None, held_artifact).await;
        let gate = SECOND_HALF.lock().unwrap().take().expect("served");
        let tuned = if too_large {
            |config: &mut outpost::Config| {
                config.mirror.hold_max = outpost::config::ByteSize(64);
                config.cache.max_object_size = outpost::config::ByteSize(64 << 10);
                config.cache.disk_max_object_size = outpost::config::ByteSize(64 << 10);
            }
        } else {
            |config: &mut outpost::Config| config.mirror.hold_max = outpost::config::ByteSize(64)
        };
        let mirror = Mirror::start_tuned(&pypi.swaps(), Some(&pypi.ca_pem), tuned).await;
        let page = support::get(&mirror.url("/pypi/simple/demo-pkg/"), &[]).await;
        assert_eq!(page.status, StatusCode::OK);
        let request = http::Request::get(mirror.url(&format!("/pypi/_files{HTML_WHEEL}")))
            .header("range", "bytes=0-9")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let asked = tokio::spawn(async move {
            let response = support::client().request(request).await.ok()?;
            let status = response.status();
            Some((status, response.into_body().collect().await.is_ok()))
        });
        support::eventually("the artifact to be asked for", || {
            pypi.files.hits(HTML_WHEEL) == 1
        })
        .await;
        gate.open();
        if let Some((status, complete)) = asked.await.unwrap() {
            assert!(
                !(status.is_success() && complete),
                "too large: {too_large}: a complete {status} of a tampered artifact"
            );
        }
        assert_eq!(
            mirror.card("pypi").await["integrity_failures"],
            1,
            "{too_large}"
        );
    }
}

/// A gzip-coded artifact is checked against the page's digest once decoded, and decoding is
/// bounded by `mirror.hold_max`: a few KiB of coded zeros that decode to more than it are
/// refused (502 with Proxy-Status, RFC 9209 §2.3.14) and counted, not decoded into memory;
/// within it, the same artifact is checked and served as it came (RFC 9110 §8.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_coded_artifact_is_checked_decoded_within_hold_max() {
    use std::io::Write;
    const WHEEL: &str = "/packages/00/00/zeros-1.0-py3-none-any.whl";
    let decoded = vec![0u8; 4 << 20];
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&decoded).unwrap();
    let coded = Bytes::from(encoder.finish().unwrap());
    assert!(coded.len() < 64 << 10, "{}", coded.len());
    let (files, ca_pem) = Origin::start_tls(vec![(
        WHEEL,
        Fixture::Static {
            status: StatusCode::OK,
            headers: vec![
                ("content-type", "application/octet-stream".into()),
                ("content-encoding", "gzip".into()),
            ],
            body: coded.clone(),
        },
    )])
    .await;
    let files_url = format!("https://localhost:{}", files.addr.port());
    let html = format!(
        "<!DOCTYPE html><html><body>\n<a href=\"{files_url}{WHEEL}#sha256={}\">zeros-1.0-py3-none-any.whl</a>\n</body></html>\n",
        sha256_hex(&decoded)
    );
    let index = Origin::start(vec![("/simple/zeros/", page("text/html", html))]).await;
    let swaps = vec![
        ("https://pypi.org", index.url()),
        ("https://files.pythonhosted.org", files_url.clone()),
    ];
    for (hold_max, served) in [(1u64 << 20, false), (8 << 20, true)] {
        let mirror = Mirror::start_tuned(&swaps, Some(&ca_pem), |config| {
            config.mirror.hold_max = outpost::config::ByteSize(hold_max);
        })
        .await;
        let page = support::get(&mirror.url("/pypi/simple/zeros/"), &[]).await;
        assert_eq!(page.status, StatusCode::OK);
        let link = mirror.url(&format!("/pypi/_files{WHEEL}"));
        let fetched = support::get(&link, &[("accept-encoding", "gzip")]).await;
        if served {
            assert_eq!(fetched.status, StatusCode::OK);
            assert_eq!(fetched.header("content-encoding"), Some("gzip"));
            assert_eq!(fetched.body, coded, "served as it came");
            assert_eq!(mirror.card("pypi").await["integrity_failures"], 0);
        } else {
            assert_eq!(fetched.status, StatusCode::BAD_GATEWAY);
            let proxy_status = fetched.header("proxy-status").unwrap_or_default();
            assert!(
                proxy_status.contains("larger than mirror.hold_max"),
                "{proxy_status}"
            );
            assert_eq!(mirror.card("pypi").await["integrity_failures"], 1);
        }
    }
}

/// An artifact large enough to be hashed off the runtime (past 1 MiB, held whole within
/// `mirror.hold_max`) is checked all the same: the one that matches the page's digest is
/// served whole, one with a single byte changed is refused (502, RFC 9209 §2.3.14) and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_artifact_held_whole_is_checked_against_the_page() {
    const GOOD: &str = "/packages/00/01/large-1.0-py3-none-any.whl";
    const BAD: &str = "/packages/00/02/large-2.0-py3-none-any.whl";
    let wheel: Vec<u8> = (0..3u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let mut tampered = wheel.clone();
    tampered[2 << 20] ^= 1;
    let (files, ca_pem) = Origin::start_tls(vec![
        (GOOD, artifact(Bytes::from(wheel.clone()))),
        (BAD, artifact(Bytes::from(tampered))),
    ])
    .await;
    let files_url = format!("https://localhost:{}", files.addr.port());
    let digest = sha256_hex(&wheel);
    let html = format!(
        "<!DOCTYPE html><html><body>\n<a href=\"{files_url}{GOOD}#sha256={digest}\">large-1.0-py3-none-any.whl</a>\n\
         <a href=\"{files_url}{BAD}#sha256={digest}\">large-2.0-py3-none-any.whl</a>\n</body></html>\n"
    );
    let index = Origin::start(vec![("/simple/large/", page("text/html", html))]).await;
    let swaps = vec![
        ("https://pypi.org", index.url()),
        ("https://files.pythonhosted.org", files_url.clone()),
    ];
    let mirror = Mirror::start(&swaps, Some(&ca_pem)).await;
    let page = support::get(&mirror.url("/pypi/simple/large/"), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let good = support::get(&mirror.url(&format!("/pypi/_files{GOOD}")), &[]).await;
    assert_eq!(good.status, StatusCode::OK);
    assert!(good.body == wheel, "served whole");
    let bad = support::get(&mirror.url(&format!("/pypi/_files{BAD}")), &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY);
    assert_eq!(mirror.card("pypi").await["integrity_failures"], 1);
}

/// The rewritten page is a stored transform: its own weak validator (RFC 9110 §8.8.1) for
/// clients, the origin's for revalidation (RFC 9111 §4.3.1), and a 304 from the origin
/// keeps the rewritten copy (§4.3.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_page_has_its_own_validator_and_revalidates_with_the_origins() {
    let pypi = PypiFixture::start(None).await;
    let mirror = Mirror::start(&pypi.swaps(), Some(&pypi.ca_pem)).await;
    let url = mirror.url("/pypi/simple/demo-json/");
    let first = support::get(&url, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.header("etag").unwrap().to_string();
    assert!(etag.starts_with("W/\"page-1."), "{etag}");
    assert!(first.header("outpost-origin-etag").is_none());
    let json: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(
        json["files"][0]["url"],
        mirror.url(&format!("/pypi/_files{JSON_WHEEL}"))
    );
    assert_eq!(
        first.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );

    let not_modified = support::get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);

    // pip's `max-age=0`: revalidated with the origin's own ETag, answered 304, and the
    // client gets the same rewritten page.
    let revalidated = support::get(&url, &[("cache-control", "max-age=0")]).await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(revalidated.body, first.body);
    assert_eq!(revalidated.header("etag"), Some(etag.as_str()));
    let conditional = pypi
        .index
        .seen()
        .into_iter()
        .filter(|r| r.uri.path() == "/simple/demo-json/")
        .filter_map(|r| r.headers.get("if-none-match").cloned())
        .collect::<Vec<_>>();
    // The profile revalidates index pages on every use: both later requests asked the
    // origin, each with the origin's validator, never the mirror's own.
    assert_eq!(conditional, ["\"page-1\"", "\"page-1\""]);
}

/// PEP 691: the Simple API is one URL in several forms, negotiated by Accept. From an
/// upstream that negotiates without saying so (no Vary, as some registry proxies do), a
/// stored JSON page never answers a client that asked for HTML (RFC 9111 §4.1), and pip's
/// and uv's spellings of "JSON first" share one stored page: offline, uv gets what pip
/// (or `outpost warm`, which asks as pip does) stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_pages_are_stored_per_form_whatever_the_accept_spelling() {
    const PIP: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
    const UV: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";
    let form = |content_type: &str, body: &str| Fixture::Static {
        status: StatusCode::OK,
        headers: vec![("content-type", content_type.into())],
        body: Bytes::from(body.to_string()),
    };
    let index = Origin::start(vec![(
        "/simple/demo/",
        Fixture::ByAccept {
            contains: "json",
            matched: Box::new(form(
                "application/vnd.pypi.simple.v1+json",
                r#"{"meta": {"api-version": "1.0"}, "name": "demo", "files": []}"#,
            )),
            otherwise: Box::new(form(
                "text/html",
                "<!DOCTYPE html><html><body></body></html>\n",
            )),
        },
    )])
    .await;
    let mirror = Mirror::start(&[("https://pypi.org", index.url())], None).await;
    let url = mirror.url("/pypi/simple/demo/");
    let content_type = |reply: &support::Reply| reply.header("content-type").map(str::to_string);
    let json = Some("application/vnd.pypi.simple.v1+json".to_string());
    let html = Some("text/html".to_string());

    let by_pip = support::get(&url, &[("accept", PIP)]).await;
    assert_eq!(content_type(&by_pip), json);
    assert!(by_pip.header("vary").is_some_and(|v| v.contains("Accept")));
    let legacy = support::get(&url, &[]).await;
    assert_eq!(content_type(&legacy), html, "not the stored JSON page");

    mirror.go_offline().await;
    let by_uv = support::get(&url, &[("accept", UV)]).await;
    assert_eq!(by_uv.status, StatusCode::OK);
    assert_eq!(content_type(&by_uv), json);
    let legacy = support::get(&url, &[("accept", "text/html")]).await;
    assert_eq!(legacy.status, StatusCode::OK);
    assert_eq!(content_type(&legacy), html);
}
