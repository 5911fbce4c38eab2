//! npm through the mirror's `/npm/` registry: the package document's `dist.tarball` (an
//! absolute URL on the TLS registry host) is rewritten to come back through the mirror,
//! the tarball checked against `dist.integrity`; `npm install` works online, with the
//! upstream down, and offline.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;

use super::pip::{artifact, page};
use super::{client_available, run_blocking, tar_gz, Mirror};
use crate::support::Origin;

pub const TARBALL_PATH: &str = "/outpost-demo/-/outpost-demo-1.0.0.tgz";

/// An npm tarball: `package/package.json` and `package/index.js`, gzipped.
pub fn tarball() -> Bytes {
    tar_gz(&[
        (
            "package/package.json",
            r#"{"name":"outpost-demo","version":"1.0.0","main":"index.js"}"#,
        ),
        ("package/index.js", "module.exports = 1;\n"),
    ])
}

/// The npm-like registry: over TLS, the package document and its tarball on one host.
pub struct NpmFixture {
    pub registry: Origin,
    pub ca_pem: String,
    pub url: String,
}

impl NpmFixture {
    pub async fn start() -> NpmFixture {
        use base64::Engine;
        let tarball = tarball();
        let digest = ring::digest::digest(&ring::digest::SHA512, &tarball);
        let integrity = format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
        );
        // The document must name its own host, which is known once the port is: a second
        // route table is not possible, so the document is served by a listener started first.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("https://localhost:{port}");
        // As large as a popular package's (hundreds of versions and a long readme): the
        // mirror reads documents past 64 KiB on a blocking thread, and that path must
        // rewrite them as well.
        let mut versions = serde_json::Map::new();
        for minor in 0..200 {
            let version = format!("0.{minor}.0");
            versions.insert(
                version.clone(),
                serde_json::json!({
                    "name": "outpost-demo", "version": version,
                    "dist": {"tarball": format!("{url}/outpost-demo/-/outpost-demo-{version}.tgz"),
                             "integrity": integrity},
                }),
            );
        }
        versions.insert(
            "1.0.0".into(),
            serde_json::json!({
                "name": "outpost-demo", "version": "1.0.0",
                "dist": {"tarball": format!("{url}{TARBALL_PATH}"), "integrity": integrity},
            }),
        );
        let document = serde_json::json!({
            "name": "outpost-demo",
            "dist-tags": {"latest": "1.0.0"},
            "readme": "An outpost demo. ".repeat(4096),
            "versions": versions,
        });
        assert!(document.to_string().len() > 64 << 10);
        let (registry, ca_pem) = Origin::start_tls_at(
            &format!("127.0.0.1:{port}"),
            vec![
                (
                    "/outpost-demo",
                    page("application/json", document.to_string()),
                ),
                (TARBALL_PATH, artifact(tarball)),
            ],
        )
        .await;
        NpmFixture {
            registry,
            ca_pem,
            url,
        }
    }
}

pub fn npm_available() -> bool {
    client_available("npm", &["--version"])
}

/// A project depending on outpost-demo, its `.npmrc` pointing at `registry`.
pub fn npm_project(registry: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("package.json"),
        r#"{"name":"uses-demo","version":"1.0.0","private":true,"dependencies":{"outpost-demo":"1.0.0"}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join(".npmrc"), format!("registry={registry}\n")).unwrap();
    dir
}

/// `npm install` in `dir` with a fresh npm cache and no lock file or modules left over:
/// what a new machine does.
pub fn npm_install(dir: &Path) -> Command {
    let _ = std::fs::remove_dir_all(dir.join("node_modules"));
    let _ = std::fs::remove_file(dir.join("package-lock.json"));
    let cache = tempfile::Builder::new().tempdir_in(dir).unwrap().keep();
    let mut command = Command::new("npm");
    command
        .args(["install", "--no-audit", "--no-fund", "--fetch-retries=0"])
        .arg("--cache")
        .arg(&cache)
        .current_dir(dir)
        .env("npm_config_userconfig", dir.join(".npmrc"))
        .env("npm_config_update_notifier", "false")
        .env_remove("npm_config_registry")
        .env_remove("NPM_CONFIG_REGISTRY");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_installs_through_the_mirror_online_with_the_upstream_down_and_offline() {
    if !npm_available() {
        return;
    }
    let mut npm = NpmFixture::start().await;
    let mirror = Mirror::start(
        &[("https://registry.npmjs.org", npm.url.clone())],
        Some(&npm.ca_pem),
    )
    .await;
    let project = npm_project(&mirror.url("/npm/"));
    let installed = project.path().join("node_modules/outpost-demo/index.js");

    run_blocking(npm_install(project.path()))
        .await
        .expect("npm install online");
    assert!(installed.exists());
    assert_eq!(npm.registry.hits(TARBALL_PATH), 1);
    let lock = std::fs::read_to_string(project.path().join("package-lock.json")).unwrap();
    assert!(
        lock.contains(&mirror.url("/npm/outpost-demo/-/outpost-demo-1.0.0.tgz")),
        "{lock}"
    );

    run_blocking(npm_install(project.path()))
        .await
        .expect("npm install, second machine");
    assert_eq!(
        npm.registry.hits(TARBALL_PATH),
        1,
        "the tarball comes from the cache"
    );

    npm.registry.stop();
    run_blocking(npm_install(project.path()))
        .await
        .expect("npm install with the upstream down");
    assert!(installed.exists());

    mirror.go_offline().await;
    run_blocking(npm_install(project.path()))
        .await
        .expect("npm install in offline mode");
    assert!(installed.exists());
}

/// npm's package document comes in two forms negotiated by Accept: the abbreviated one
/// installers ask for and the full one (`npm view`, plain HTTP tools). From an upstream
/// that negotiates without Vary, a stored abbreviated document never answers a client that
/// asked for the full one (RFC 9111 §4.1), and however a client spells "abbreviated
/// first", it shares the document npm's spelling stored: offline it is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_documents_are_stored_per_form_whatever_the_accept_spelling() {
    const NPM: &str = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
    let form = |content_type: &str, body: &str| crate::support::Fixture::Static {
        status: http::StatusCode::OK,
        headers: vec![("content-type", content_type.into())],
        body: Bytes::from(body.to_string()),
    };
    let registry = Origin::start(vec![(
        "/demo",
        crate::support::Fixture::ByAccept {
            contains: "install-v1",
            matched: Box::new(form(
                "application/vnd.npm.install-v1+json",
                r#"{"name":"demo","modified":"2026-01-01T00:00:00Z","versions":{}}"#,
            )),
            otherwise: Box::new(form(
                "application/json",
                r#"{"name":"demo","time":{},"readme":"full","versions":{}}"#,
            )),
        },
    )])
    .await;
    let mirror = Mirror::start(&[("https://registry.npmjs.org", registry.url())], None).await;
    let url = mirror.url("/npm/demo");
    let is_full = |reply: &crate::support::Reply| reply.text().contains("readme");

    let by_npm = crate::support::get(&url, &[("accept", NPM)]).await;
    assert!(!is_full(&by_npm), "{}", by_npm.text());
    assert!(by_npm.header("vary").is_some_and(|v| v.contains("Accept")));
    let full = crate::support::get(&url, &[("accept", "application/json")]).await;
    assert!(is_full(&full), "not the stored abbreviated document");

    mirror.go_offline().await;
    let terse = "application/vnd.npm.install-v1+json";
    let by_other_tool = crate::support::get(&url, &[("accept", terse)]).await;
    assert_eq!(by_other_tool.status, http::StatusCode::OK);
    assert!(!is_full(&by_other_tool));
    let plain = crate::support::get(&url, &[]).await;
    assert_eq!(plain.status, http::StatusCode::OK);
    assert!(is_full(&plain), "no Accept: the full document");
}

/// Large package documents read at once, together far past the fills' memory budget
/// (`cache.fill_memory_budget`), each held whole to be rewritten: they wait for room in
/// turn (one at a time may pass the budget; `mirror::room`) instead of all being held at
/// once, and none of them is relayed unrewritten for want of room, nor waits for ever on
/// the others, gzip-coded or not. Every client gets its document with every tarball link
/// on the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_documents_read_at_once_past_the_budget_are_all_rewritten_in_turn() {
    const DOCUMENTS: usize = 6;
    // The documents name their registry's own address, known once its port is.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let upstream = format!("http://{address}");
    let document = |name: &str| {
        let mut versions = serde_json::Map::new();
        for minor in 0..2_000 {
            let version = format!("0.{minor}.0");
            versions.insert(
                version.clone(),
                serde_json::json!({
                    "name": name, "version": version,
                    "description": "d".repeat(600),
                    "dist": {"tarball": format!("{upstream}/{name}/-/{name}-{version}.tgz")},
                }),
            );
        }
        let text = serde_json::json!({"name": name, "versions": versions}).to_string();
        assert!(text.len() > 1 << 20, "larger than a small document");
        text
    };
    // Every other one gzip-coded, as the registry sends them to clients that accept it:
    // counted at the length its trailer states before it is decoded.
    let gzip_coded = |text: String| {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        crate::support::Fixture::Static {
            status: http::StatusCode::OK,
            headers: vec![
                ("content-type", "application/json".into()),
                ("content-encoding", "gzip".into()),
                ("cache-control", "max-age=600".into()),
            ],
            body: Bytes::from(encoder.finish().unwrap()),
        }
    };
    let routes = (0..DOCUMENTS)
        .map(|n| {
            let name = format!("big{n}");
            let path: &'static str = Box::leak(format!("/{name}").into_boxed_str());
            let text = document(&name);
            let fixture = if n % 2 == 0 {
                page("application/json", text)
            } else {
                gzip_coded(text)
            };
            (path, fixture)
        })
        .collect();
    let _registry = Origin::start_at(&address, routes).await;
    let swap = [("https://registry.npmjs.org", upstream.clone())];
    let mirror = Mirror::start_tuned(&swap, None, |config| {
        config.cache.fill_memory_budget = Some(outpost::config::ByteSize(2 << 20));
    })
    .await;
    let fetches = (0..DOCUMENTS).map(|n| {
        let url = mirror.url(&format!("/npm/big{n}"));
        async move { crate::support::get(&url, &[("accept", "application/json")]).await }
    });
    let replies = futures_util::future::join_all(fetches).await;
    let on_mirror = format!("{}/npm/", mirror.url("").trim_end_matches('/'));
    for (n, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, http::StatusCode::OK, "big{n}");
        let text = reply.text();
        assert!(!text.contains(&upstream), "big{n} relayed unrewritten");
        assert_eq!(text.matches(&on_mirror).count(), 2_000, "big{n}");
    }
}
