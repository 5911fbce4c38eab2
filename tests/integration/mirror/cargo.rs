//! cargo through the mirror's `/crates/` registry (a sparse index): `config.json`'s `dl`
//! points at a second TLS host and is rewritten to come back through the mirror; the
//! `.crate` is checked against the index's `cksum`; `cargo fetch` works online, with the
//! upstream down, and offline.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;

use super::pip::{artifact, page};
use super::{client_available, run_blocking, sha256_hex, tar_gz, Mirror};
use crate::support::Origin;

pub const CRATE_PATH: &str = "/crates/outpost-demo/1.0.0/download";

/// A `.crate` file: a gzipped tar of `outpost-demo-1.0.0/` with a manifest and a library.
pub fn crate_file() -> Bytes {
    tar_gz(&[
        (
            "outpost-demo-1.0.0/Cargo.toml",
            "[package]\nname = \"outpost-demo\"\nversion = \"1.0.0\"\nedition = \"2021\"\n",
        ),
        (
            "outpost-demo-1.0.0/src/lib.rs",
            "pub fn demo() -> u32 { 1 }\n",
        ),
    ])
}

/// The crates.io-like upstream: a plain sparse index whose `dl` is a TLS files host.
pub struct CratesFixture {
    pub index: Origin,
    pub files: Origin,
    pub ca_pem: String,
    pub files_url: String,
}

impl CratesFixture {
    pub async fn start() -> CratesFixture {
        let file = crate_file();
        let (files, ca_pem) = Origin::start_tls(vec![(CRATE_PATH, artifact(file.clone()))]).await;
        let files_url = format!("https://localhost:{}", files.addr.port());
        let config = serde_json::json!({
            "dl": format!("{files_url}/crates"),
            "api": format!("{files_url}/api"),
        });
        let line = serde_json::json!({
            "name": "outpost-demo", "vers": "1.0.0", "deps": [], "features": {},
            "cksum": sha256_hex(&file), "yanked": false,
        });
        let index = Origin::start(vec![
            ("/config.json", page("application/json", config.to_string())),
            (
                "/ou/tp/outpost-demo",
                page("text/plain", format!("{line}\n")),
            ),
        ])
        .await;
        CratesFixture {
            index,
            files,
            ca_pem,
            files_url,
        }
    }

    pub fn swaps(&self) -> Vec<(&'static str, String)> {
        vec![
            ("https://index.crates.io", self.index.url()),
            ("https://static.crates.io", self.files_url.clone()),
        ]
    }

    pub fn stop(&mut self) {
        self.index.stop();
        self.files.stop();
    }
}

/// A project depending on outpost-demo, with its own CARGO_HOME whose config replaces
/// crates.io with the mirror (the README's one line).
pub fn cargo_project(registry: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("project/src")).unwrap();
    std::fs::create_dir_all(root.join("home")).unwrap();
    std::fs::write(
        root.join("project/Cargo.toml"),
        "[package]\nname = \"uses-demo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\noutpost-demo = \"1.0.0\"\n",
    )
    .unwrap();
    std::fs::write(root.join("project/src/lib.rs"), "").unwrap();
    std::fs::write(
        root.join("home/config.toml"),
        format!(
            "[source.crates-io]\nreplace-with = \"mirror\"\n[source.mirror]\nregistry = \"sparse+{registry}\"\n[net]\nretry = 0\n"
        ),
    )
    .unwrap();
    dir
}

pub fn cargo_available() -> bool {
    client_available("cargo", &["--version"])
}

/// `cargo fetch` in the project of `dir`, with a fresh download cache each time.
pub fn cargo_fetch(dir: &Path) -> Command {
    let home = tempfile::Builder::new().tempdir_in(dir).unwrap().keep();
    std::fs::copy(dir.join("home/config.toml"), home.join("config.toml")).unwrap();
    let mut command = Command::new("cargo");
    command
        .arg("fetch")
        .current_dir(dir.join("project"))
        .env("CARGO_HOME", &home)
        .env("CARGO_HTTP_TIMEOUT", "20")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_REGISTRIES_CRATES_IO_PROTOCOL");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_fetches_through_the_mirror_online_with_the_upstream_down_and_offline() {
    if !cargo_available() {
        return;
    }
    let mut crates = CratesFixture::start().await;
    let mirror = Mirror::start(&crates.swaps(), Some(&crates.ca_pem)).await;
    let project = cargo_project(&mirror.url("/crates/"));

    run_blocking(cargo_fetch(project.path()))
        .await
        .expect("cargo fetch online");
    assert_eq!(
        crates.files.hits(CRATE_PATH),
        1,
        "the crate came through the mirror"
    );
    let config = crate::support::get(&mirror.url("/crates/config.json"), &[]).await;
    let config: serde_json::Value = serde_json::from_slice(&config.body).unwrap();
    assert_eq!(config["dl"], mirror.url("/crates/_files/crates"));

    run_blocking(cargo_fetch(project.path()))
        .await
        .expect("cargo fetch, second machine");
    assert_eq!(
        crates.files.hits(CRATE_PATH),
        1,
        "the crate comes from the cache"
    );

    crates.stop();
    run_blocking(cargo_fetch(project.path()))
        .await
        .expect("cargo fetch with the upstream down");

    mirror.go_offline().await;
    run_blocking(cargo_fetch(project.path()))
        .await
        .expect("cargo fetch in offline mode");
    assert_eq!(mirror.card("crates").await["integrity_failures"], 0);
}

/// A registry fronted by Artifactory or Nexus serves its crate files from the index's own
/// host, under a longer path, and may spell that host differently from the configured
/// upstream (here in capitals; RFC 3986 §6.2.2.1). The `dl` is still rewritten, so cargo
/// downloads through the mirror; the crate file is an artifact, checked against the
/// index's `cksum` (a tampered one is refused) and immutable: fetched once, then served
/// offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crate_files_on_the_index_host_come_through_the_mirror_checked() {
    if !cargo_available() {
        return;
    }
    const DL: &str = "/artifactory/api/cargo/crates-io/v1/crates";
    let file = crate_file();
    let good = format!("{DL}/outpost-demo/1.0.0/download");
    let bad = format!("{DL}/swapped-demo/1.0.0/download");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = serde_json::json!({"dl": format!("HTTP://127.0.0.1:{port}{DL}")});
    let line = |name: &str| {
        serde_json::json!({
            "name": name, "vers": "1.0.0", "deps": [], "features": {},
            "cksum": sha256_hex(&file), "yanked": false,
        })
        .to_string()
            + "\n"
    };
    let mut index = Origin::start_at(
        &format!("127.0.0.1:{port}"),
        vec![
            ("/config.json", page("application/json", config.to_string())),
            (
                "/ou/tp/outpost-demo",
                page("text/plain", line("outpost-demo")),
            ),
            (
                "/sw/ap/swapped-demo",
                page("text/plain", line("swapped-demo")),
            ),
            (good.as_str(), artifact(file.clone())),
            (bad.as_str(), artifact(Bytes::from_static(b"not the crate"))),
        ],
    )
    .await;
    let swaps = vec![("https://index.crates.io", index.url())];
    let mirror = Mirror::start(&swaps, None).await;
    let project = cargo_project(&mirror.url("/crates/"));

    run_blocking(cargo_fetch(project.path()))
        .await
        .expect("cargo fetch online");
    let served = crate::support::get(&mirror.url("/crates/config.json"), &[]).await;
    let served: serde_json::Value = serde_json::from_slice(&served.body).unwrap();
    assert_eq!(served["dl"], mirror.url(&format!("/crates{DL}")));
    assert_eq!(index.hits(&good), 1, "the crate came through the mirror");
    run_blocking(cargo_fetch(project.path()))
        .await
        .expect("cargo fetch, second machine");
    assert_eq!(index.hits(&good), 1, "immutable: not fetched again");

    let listing = crate::support::get(&mirror.url("/crates/sw/ap/swapped-demo"), &[]).await;
    assert_eq!(listing.status, 200);
    let refused = crate::support::get(&mirror.url(&format!("/crates{bad}")), &[]).await;
    assert_eq!(refused.status, 502);
    assert_eq!(mirror.card("crates").await["integrity_failures"], 1);

    index.stop();
    mirror.go_offline().await;
    run_blocking(cargo_fetch(project.path()))
        .await
        .expect("cargo fetch in offline mode");
}
