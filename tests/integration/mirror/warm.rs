//! `outpost warm` prepares a mirror for offline work: it reads a requirements.txt, a
//! Cargo.lock and a package-lock.json, fetches through the mirror everything they need,
//! and after a restart of the mirror (its disk tier kept) with every upstream gone and
//! offline mode on, pip, cargo and npm install from it.

use std::process::Command;

use super::cargo::{cargo_available, cargo_fetch, cargo_project, crate_file, CratesFixture};
use super::npm::{npm_available, npm_install, npm_project, NpmFixture};
use super::pip::{pip_available, pip_install, PypiFixture};
use super::{run_blocking, sha256_hex, Mirror};

fn outpost_warm(mirror: &str, files: &[&std::path::Path]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
    command
        .args(["warm", "--quiet", "--mirror", mirror])
        .args(files);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_then_install_offline_after_a_restart() {
    if !(pip_available() && cargo_available() && npm_available()) {
        return;
    }
    let mut pypi = PypiFixture::start(None).await;
    let mut crates = CratesFixture::start().await;
    let mut npm = NpmFixture::start().await;
    // One CA file for all three TLS upstreams.
    let ca = format!("{}{}{}", pypi.ca_pem, crates.ca_pem, npm.ca_pem);
    let mut swaps = pypi.swaps();
    swaps.extend(crates.swaps());
    swaps.push(("https://registry.npmjs.org", npm.url.clone()));
    let mirror = Mirror::start(&swaps, Some(&ca)).await;
    let base = mirror.url("");

    let locks = tempfile::tempdir().unwrap();
    let requirements = locks.path().join("requirements.txt");
    std::fs::write(
        &requirements,
        "demo-pkg==1.0\ndemo_json==2.0  # JSON page\n",
    )
    .unwrap();
    let cargo_lock = locks.path().join("Cargo.lock");
    std::fs::write(
        &cargo_lock,
        format!(
            "version = 3\n\n[[package]]\nname = \"outpost-demo\"\nversion = \"1.0.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"{}\"\n\n[[package]]\nname = \"uses-demo\"\nversion = \"0.1.0\"\n",
            sha256_hex(&crate_file())
        ),
    )
    .unwrap();
    let package_lock = locks.path().join("package-lock.json");
    std::fs::write(
        &package_lock,
        r#"{"name":"uses-demo","lockfileVersion":3,"packages":{"":{"name":"uses-demo"},"node_modules/outpost-demo":{"version":"1.0.0"}}}"#,
    )
    .unwrap();
    let files = [
        requirements.as_path(),
        cargo_lock.as_path(),
        package_lock.as_path(),
    ];

    let first = run_blocking(outpost_warm(&base, &files))
        .await
        .expect("outpost warm");
    assert!(first.contains(" 0 failed"), "{first}");
    assert!(first.contains(" 0 already cached"), "{first}");
    assert_eq!(pypi.files.hits(super::pip::HTML_WHEEL), 1, "{first}");
    assert_eq!(crates.files.hits(super::cargo::CRATE_PATH), 1, "{first}");
    assert_eq!(npm.registry.hits(super::npm::TARBALL_PATH), 1, "{first}");
    // Warming again finds every artifact stored.
    let again = run_blocking(outpost_warm(&base, &files))
        .await
        .expect("outpost warm, again");
    assert!(again.contains(" 0 failed"), "{again}");

    // The machine goes offline: the mirror restarts on its disk tier, the upstreams are
    // gone and offline mode is on.
    let Mirror {
        proxy, cache_dir, ..
    } = mirror;
    let address = proxy.addr;
    // The disk tier's index is locked while its outpost lives.
    proxy.stop().await;
    pypi.stop();
    crates.stop();
    npm.registry.stop();
    let mirror = Mirror::restart(&swaps, Some(&ca), cache_dir, address).await;
    mirror.go_offline().await;

    let target = tempfile::tempdir().unwrap();
    let mut pip = pip_install(
        &mirror.url("/pypi/simple/"),
        &["demo-pkg==1.0", "demo-json==2.0"],
    );
    pip.arg("--target").arg(target.path());
    run_blocking(pip).await.expect("pip offline after warm");
    assert!(target.path().join("demo_json/__init__.py").exists());
    // A client that names no form (no Accept: older pip, poetry's sources, curl) gets the
    // legacy HTML page, a variant of its own that warm stored beside pip's (PEP 691).
    let legacy = crate::support::get(&mirror.url("/pypi/simple/demo-pkg/"), &[]).await;
    assert_eq!(legacy.status, 200, "{}", legacy.text());
    assert!(legacy.text().contains("demo_pkg-1.0"), "{}", legacy.text());

    let project = cargo_project(&mirror.url("/crates/"));
    run_blocking(cargo_fetch(project.path()))
        .await
        .expect("cargo fetch offline after warm");

    let project = npm_project(&mirror.url("/npm/"));
    run_blocking(npm_install(project.path()))
        .await
        .expect("npm install offline after warm");
    assert!(project
        .path()
        .join("node_modules/outpost-demo/index.js")
        .exists());
}
