//! outpost as a package mirror, driven by real package clients (pip, cargo, npm, apt-get)
//! through the shipped `config/mirror.toml`, with only its upstream addresses swapped for
//! local registry-like fixtures. As on the real registries, the index documents link to a
//! second host over TLS (PyPI's files host, crates.io's `dl` host; npm's registry itself is
//! TLS), which outpost reaches with the fixture's CA (`upstream.ca_file`).
//!
//! Each client must be installed; without it a test fails when `OUTPOST_REQUIRE_MIRROR_CLIENTS`
//! is set (CI sets it, and installs them) and is skipped otherwise.

mod apt;
mod cargo;
mod npm;
mod pip;
mod warm;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::support::{self, Proxy};
use outpost::config::FlagOverrides;
use outpost::Config;

/// Whether `tool` runs; when not, the test is skipped unless CI requires the clients.
pub fn client_available(tool: &str, version_args: &[&str]) -> bool {
    let runs = Command::new(tool)
        .args(version_args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !runs {
        assert!(
            std::env::var_os("OUTPOST_REQUIRE_MIRROR_CLIENTS").is_none(),
            "{tool} is required (OUTPOST_REQUIRE_MIRROR_CLIENTS is set) but does not run"
        );
        eprintln!("skipped: {tool} is not available");
    }
    runs
}

/// A mirror under test: outpost with config/mirror.toml, its cache in a temporary folder.
pub struct Mirror {
    pub proxy: Proxy,
    pub cache_dir: tempfile::TempDir,
    _ca: Option<tempfile::NamedTempFile>,
}

/// The shipped profile with `swaps` (a quoted upstream URL in the file, and what replaces
/// it) applied, trusting `ca_pem` for HTTPS upstreams, caching in `cache_dir`.
pub fn mirror_config(swaps: &[(&str, String)], ca: Option<&Path>, cache_dir: &Path) -> Config {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/mirror.toml");
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in swaps {
        let quoted = format!("\"{from}\"");
        assert!(
            text.contains(&quoted),
            "{from} is not in config/mirror.toml"
        );
        text = text.replace(&quoted, &format!("\"{to}\""));
    }
    let mut config = Config::from_toml_str(&text, &FlagOverrides::default()).unwrap();
    config.cache.dir = Some(cache_dir.to_path_buf());
    config.cache.fsync = false;
    config.upstream.ca_file = ca.map(Path::to_path_buf);
    // The profile logs every request to stdout, which the test harness does not capture.
    config.log.access_log = false;
    config
}

impl Mirror {
    pub async fn start(swaps: &[(&str, String)], ca_pem: Option<&str>) -> Mirror {
        Mirror::start_tuned(swaps, ca_pem, |_| {}).await
    }

    /// A mirror whose configuration `tune` changes after the swaps.
    pub async fn start_tuned(
        swaps: &[(&str, String)],
        ca_pem: Option<&str>,
        tune: impl FnOnce(&mut Config),
    ) -> Mirror {
        let cache_dir = tempfile::tempdir().unwrap();
        Mirror::start_in(swaps, ca_pem, cache_dir, "127.0.0.1:0", tune).await
    }

    /// A mirror over an existing cache folder, listening on `address` (a restart).
    pub async fn restart(
        swaps: &[(&str, String)],
        ca_pem: Option<&str>,
        cache_dir: tempfile::TempDir,
        address: std::net::SocketAddr,
    ) -> Mirror {
        Mirror::start_in(swaps, ca_pem, cache_dir, &address.to_string(), |_| {}).await
    }

    async fn start_in(
        swaps: &[(&str, String)],
        ca_pem: Option<&str>,
        cache_dir: tempfile::TempDir,
        address: &str,
        tune: impl FnOnce(&mut Config),
    ) -> Mirror {
        let ca = ca_pem.map(|pem| {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(pem.as_bytes()).unwrap();
            file
        });
        let mut config = mirror_config(swaps, ca.as_ref().map(|f| f.path()), cache_dir.path());
        tune(&mut config);
        Mirror {
            proxy: Proxy::start_with_at(config, address).await,
            cache_dir,
            _ca: ca,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.proxy.url(path)
    }

    /// Switches offline mode through the admin endpoint.
    pub async fn go_offline(&self) {
        let admin = support::start_admin(&self.proxy).await;
        let switched = support::post(&format!("{admin}/offline?enabled=true")).await;
        assert_eq!(switched.status, http::StatusCode::OK);
    }

    /// The mirror card of `/status.json` for `registry`.
    pub async fn card(&self, registry: &str) -> serde_json::Value {
        let admin = support::start_admin(&self.proxy).await;
        let status = support::get(&format!("{admin}/status.json"), &[]).await;
        let json: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
        json["mirror"]["registries"]
            .as_array()
            .and_then(|all| all.iter().find(|r| r["name"] == registry).cloned())
            .unwrap_or_else(|| panic!("no mirror card for {registry}: {json}"))
    }
}

/// Runs a Python script that writes bytes to stdout (archives the fixtures serve).
pub fn python_bytes(script: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A gzipped tar of `files` (path, text), as `.crate` files and npm tarballs are.
pub fn tar_gz(files: &[(&str, &str)]) -> bytes::Bytes {
    let script = r#"
import io, sys, tarfile, gzip
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    for name, text in zip(sys.argv[1::2], sys.argv[2::2]):
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 1700000000
        tar.addfile(info, io.BytesIO(data))
sys.stdout.buffer.write(gzip.compress(buf.getvalue(), mtime=0))
"#;
    let args: Vec<&str> = files
        .iter()
        .flat_map(|(name, text)| [*name, *text])
        .collect();
    bytes::Bytes::from(python_bytes(script, &args))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `command`; its output, or its output as the error when it fails.
pub fn run(command: &mut Command) -> Result<String, String> {
    let output = command.output().map_err(|err| err.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// `run` on the blocking pool.
pub async fn run_blocking(mut command: Command) -> Result<String, String> {
    tokio::task::spawn_blocking(move || run(&mut command))
        .await
        .unwrap()
}
