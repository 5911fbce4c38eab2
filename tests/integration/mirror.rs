//! outpost as a package mirror, driven by real package clients. pip downloads a wheel
//! through outpost from a PyPI-like origin, then again while the origin fails, then in
//! offline mode. The rules are those of config/mirror.toml's PyPI part: `/packages/` is
//! immutable, `/simple/` is revalidated on every use and served stale when the origin fails
//! (pip sends `Cache-Control: max-age=0` for index pages).
//!
//! apt-get updates and downloads a package from a Debian-like repository (no InRelease,
//! a `+` in the pool file name) with the Debian rules, then again while every index file
//! answers 503.
//!
//! The clients must be installed (`python3 -m pip`; `apt-get`, `dpkg-deb`); without them a
//! test fails when `OUTPOST_REQUIRE_PIP` / `OUTPOST_REQUIRE_APT` is set (CI sets both) and
//! is skipped otherwise.

use crate::support;

use std::io::Write;
use std::process::Command;

use bytes::Bytes;
use http::StatusCode;
use support::{post, start_admin, Fixture, Origin, Proxy};

const WHEEL: &str = "demo_pkg-1.0-py3-none-any.whl";

/// A minimal, valid wheel (a zip with the dist-info files pip reads).
fn wheel() -> Vec<u8> {
    let script = r#"
import io, sys, zipfile
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w") as z:
    z.writestr("demo_pkg/__init__.py", "VALUE = 1\n")
    z.writestr("demo_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n")
    z.writestr("demo_pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr("demo_pkg-1.0.dist-info/RECORD", "")
sys.stdout.buffer.write(buf.getvalue())
"#;
    let output = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 runs");
    assert!(output.status.success());
    output.stdout
}

fn pip_available() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `pip download` of demo-pkg through `index` into a fresh directory; the wheel's bytes.
fn pip_download(index: &str) -> Result<Vec<u8>, String> {
    let dest = tempfile::tempdir().unwrap();
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--index-url",
        ])
        .arg(index)
        .args(["--retries", "0", "--timeout", "10", "-d"])
        .arg(dest.path())
        .arg("demo-pkg==1.0")
        // This machine's pip configuration must not send pip elsewhere.
        .env_remove("PIP_FIND_LINKS")
        .env_remove("PIP_INDEX_URL")
        .env_remove("PIP_EXTRA_INDEX_URL")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .output()
        .map_err(|err| err.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    std::fs::read(dest.path().join(WHEEL)).map_err(|err| err.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_keeps_working_through_the_mirror_when_the_origin_fails_and_offline() {
    if !pip_available() {
        assert!(
            std::env::var_os("OUTPOST_REQUIRE_PIP").is_none(),
            "pip is required (OUTPOST_REQUIRE_PIP is set) but `python3 -m pip` does not run"
        );
        eprintln!("skipped: python3 -m pip is not available");
        return;
    }
    let wheel = Bytes::from(wheel());
    let digest = {
        let output = Command::new("python3")
            .args([
                "-c",
                "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(&wheel)?;
                child.wait_with_output()
            })
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let page = format!(
        "<!DOCTYPE html><html><body><a href=\"/packages/{WHEEL}#sha256={digest}\">{WHEEL}</a></body></html>\n"
    );
    let index_page = |page: &str| Fixture::Validated {
        etag: "\"simple-1\"",
        headers: support::header_list(&[
            ("content-type", "text/html"),
            ("cache-control", "max-age=600"),
        ]),
        body: Bytes::from(page.to_string()),
        not_modified_headers: Vec::new(),
    };
    let origin = Origin::start(vec![
        (
            "/simple/demo-pkg/",
            Fixture::sequence(vec![
                index_page(&page),
                index_page(&page),
                Fixture::with_headers(503, &[], "upstream down"),
            ]),
        ),
        (
            "/packages/demo_pkg-1.0-py3-none-any.whl",
            Fixture::Static {
                status: StatusCode::OK,
                headers: vec![
                    ("content-type", "application/octet-stream".into()),
                    ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT".into()),
                ],
                body: wheel.clone(),
            },
        ),
    ])
    .await;
    let toml = r#"
[[cache.rules]]
prefix = "/packages/"
immutable = true

[[cache.rules]]
prefix = "/simple/"
revalidate = true
stale_if_error = "30d"
"#;
    let proxy = Proxy::start(&origin.url(), toml).await;
    let index = proxy.url("/simple/");

    let first = tokio::task::spawn_blocking({
        let index = index.clone();
        move || pip_download(&index)
    })
    .await
    .unwrap();
    assert_eq!(first.expect("pip through outpost"), wheel);

    // Second run: the index is revalidated (304); the wheel comes from the cache.
    let second = tokio::task::spawn_blocking({
        let index = index.clone();
        move || pip_download(&index)
    })
    .await
    .unwrap();
    assert_eq!(second.expect("pip, index revalidated"), wheel);

    // The origin now fails: the stored index is served stale (RFC 5861 §4), the wheel is
    // immutable and never asked for again.
    let third = tokio::task::spawn_blocking({
        let index = index.clone();
        move || pip_download(&index)
    })
    .await
    .unwrap();
    assert_eq!(third.expect("pip while the origin fails"), wheel);
    assert_eq!(origin.hits("/packages/demo_pkg-1.0-py3-none-any.whl"), 1);
    let index_hits = origin.hits("/simple/demo-pkg/");
    assert!(
        index_hits >= 3,
        "the index was revalidated each time ({index_hits})"
    );

    // Offline mode: nothing reaches the origin, pip still works.
    let admin = start_admin(&proxy).await;
    let switched = post(&format!("{admin}/offline?enabled=true")).await;
    assert_eq!(switched.status, StatusCode::OK);
    let offline = tokio::task::spawn_blocking(move || pip_download(&index))
        .await
        .unwrap();
    assert_eq!(offline.expect("pip in offline mode"), wheel);
    assert_eq!(
        origin.hits("/simple/demo-pkg/"),
        index_hits,
        "offline: origin untouched"
    );
}

fn tool_available(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A private apt: its own state, lists, cache and sources under `root`.
fn apt(root: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let dir = |name: &str| format!("-o{name}={}", root.display());
    let output = Command::new("apt-get")
        .arg(dir("Dir"))
        .arg(format!("-oDir::State::status={}/status", root.display()))
        .args([
            "-oDebug::NoLocking=1",
            "-oAPT::Architecture=amd64",
            "-oAcquire::Languages=none",
            "-oAcquire::Retries=0",
            "-oDir::Etc::sourceparts=-",
            "-oDir::Etc::trusted=/dev/null",
            "-oDir::Etc::trustedparts=-",
            "-oDir::Etc::preferencesparts=/dev/null",
            "-oAPT::Sandbox::User=root",
        ])
        .args(args)
        .current_dir(root)
        .output()
        .map_err(|err| err.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if output.status.success() && !text.contains("E: ") {
        Ok(text)
    } else {
        Err(text)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout).unwrap()[..64].to_string()
}

/// apt through outpost with the Debian rules of config/mirror.toml: `apt-get update` and
/// `apt-get download` work, and keep working when the origin answers 503 for every index
/// file (stored indexes served stale; the .deb is immutable and never fetched twice).
/// The repository has no InRelease (404, as the notes describe), so apt falls back to
/// Release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_update_and_download_keep_working_when_the_origin_fails() {
    let tools = ["apt-get", "dpkg-deb", "sha256sum"];
    if !tools.iter().all(|t| tool_available(t)) {
        assert!(
            std::env::var_os("OUTPOST_REQUIRE_APT").is_none(),
            "apt-get and dpkg-deb are required (OUTPOST_REQUIRE_APT is set)"
        );
        eprintln!("skipped: apt-get or dpkg-deb is not available");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let package = work.path().join("pkg");
    std::fs::create_dir_all(package.join("DEBIAN")).unwrap();
    std::fs::write(
        package.join("DEBIAN/control"),
        "Package: hello-outpost\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\nDescription: test package\n",
    )
    .unwrap();
    let deb_path = work.path().join("hello.deb");
    let built = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&package)
        .arg(&deb_path)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = Bytes::from(std::fs::read(&deb_path).unwrap());
    let packages = format!(
        "Package: hello-outpost\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\n\
         Filename: pool/main/h/hello-outpost_1.0+b1_all.deb\nSize: {}\nSHA256: {}\nDescription: test package\n\n",
        deb.len(),
        sha256_hex(&deb)
    );
    let release = format!(
        "Origin: test\nLabel: test\nSuite: stable\nCodename: stable\nDate: {}\nArchitectures: amd64\n\
         Components: main\nSHA256:\n {} {} main/binary-amd64/Packages\n",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        sha256_hex(packages.as_bytes()),
        packages.len()
    );
    let index = |body: &str| {
        Fixture::sequence(vec![
            Fixture::with_headers(
                200,
                &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
                body,
            ),
            Fixture::with_headers(503, &[], "upstream down"),
        ])
    };
    let origin = Origin::start(vec![
        ("/debian/dists/stable/Release", index(&release)),
        (
            "/debian/dists/stable/main/binary-amd64/Packages",
            index(&packages),
        ),
        (
            "/debian/pool/main/h/hello-outpost_1.0%2bb1_all.deb",
            Fixture::Static {
                status: StatusCode::OK,
                headers: vec![(
                    "content-type",
                    "application/vnd.debian.binary-package".into(),
                )],
                body: deb.clone(),
            },
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
stale_if_error = "30d"
[[cache.rules]]
match = "*/Release*"
revalidate = true
stale_if_error = "30d"
[[cache.rules]]
match = "*/Packages*"
revalidate = true
stale_if_error = "30d"
"#;
    let proxy = Proxy::start(&origin.url(), toml).await;
    let source = format!("deb [trusted=yes] {} stable main\n", proxy.url("/debian"));

    for round in ["origin up", "origin failing"] {
        let root = tempfile::tempdir().unwrap();
        for dir in [
            "etc/apt",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
        ] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        std::fs::write(root.path().join("status"), "").unwrap();
        std::fs::write(root.path().join("etc/apt/sources.list"), &source).unwrap();
        let path = root.path().to_path_buf();
        let outcome = tokio::task::spawn_blocking(move || {
            apt(&path, &["update"])?;
            apt(&path, &["download", "hello-outpost"])?;
            // apt asks for the pool file as `%2b` (the notes' observation) and saves it
            // under package_version_arch.
            std::fs::read(path.join("hello-outpost_1.0_all.deb")).map_err(|err| err.to_string())
        })
        .await
        .unwrap();
        assert_eq!(outcome.expect(round), deb, "{round}");
    }
    assert_eq!(
        origin.hits("/debian/pool/main/h/hello-outpost_1.0%2bb1_all.deb"),
        1,
        "the package is immutable: fetched once"
    );
    assert!(
        origin.hits("/debian/dists/stable/Release") >= 2,
        "Release was revalidated"
    );
}
