//! apt-get through the mirror's `/debian/` registry: `apt-get update` and `apt-get
//! download` work, and keep working when the upstream answers 503 for every index file
//! (stored indexes served stale, RFC 5861 §4); each `.deb` is checked against the SHA256
//! its `Packages` file published (a mismatch is refused), and fetched once.

use std::process::Command;

use bytes::Bytes;
use http::StatusCode;

use super::{client_available, sha256_hex, Mirror};
use crate::support::{Fixture, Origin};

/// A private apt: its own state, lists, cache and sources under `root`, fetching the
/// translations `languages` names (`Acquire::Languages`, comma-separated, or `none`).
fn apt(root: &std::path::Path, languages: &str, args: &[&str]) -> Result<String, String> {
    let dir = |name: &str| format!("-o{name}={}", root.display());
    // The machine's own apt configuration is not read (Debian's container images turn
    // translations off in it): APT_CONFIG is read first and points apt's parts elsewhere.
    let config = root.join("apt.conf");
    let parts = root.join("apt.conf.d");
    std::fs::create_dir_all(&parts).map_err(|err| err.to_string())?;
    let list: String = languages
        .split(',')
        .map(|language| format!("\"{language}\"; "))
        .collect();
    std::fs::write(
        &config,
        format!(
            "Dir::Etc::parts \"{}\";\nAcquire::Languages {{ {list}}};\n",
            parts.display()
        ),
    )
    .map_err(|err| err.to_string())?;
    let output = Command::new("apt-get")
        .env("APT_CONFIG", &config)
        .arg(dir("Dir"))
        .arg(format!("-oDir::State::status={}/status", root.display()))
        .args([
            "-oDebug::NoLocking=1",
            "-oAPT::Architecture=amd64",
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

/// apt through the shipped config/mirror.toml: `apt-get update` and
/// `apt-get download` work, and keep working when the origin answers 503 for every index
/// file (stored indexes served stale; the .deb is immutable and never fetched twice).
/// The repository has no InRelease (404, as the notes describe), so apt falls back to
/// Release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_update_and_download_keep_working_when_the_origin_fails() {
    if !client_available("apt-get", &["--version"]) || !client_available("dpkg-deb", &["--version"])
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let deb = hello_deb(work.path());
    let packages = packages_listing(&deb);
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
    let mut routes = vec![
        ("/debian/dists/stable/Release", index(&release)),
        (
            "/debian/dists/stable/main/binary-amd64/Packages",
            index(&packages),
        ),
    ];
    routes.extend(pool_routes(&deb));
    let origin = Origin::start(routes).await;
    let mirror = debian_mirror_of(&origin).await;
    for round in ["origin up", "origin failing"] {
        // apt asks for the pool file as `%2b` (the notes' observation) and saves it under
        // package_version_arch.
        let outcome = update_and_download(&mirror).await;
        assert_eq!(outcome.expect(round), deb, "{round}");
    }
    // The Packages file's SHA256 was recorded when apt fetched it through the mirror: a
    // pool file that does not match is refused (502) and never stored.
    for _ in 0..2 {
        let refused = crate::support::get(
            &mirror.url("/debian/pool/main/s/swapped-outpost_1.0_all.deb"),
            &[],
        )
        .await;
        assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(
        origin.hits("/debian/pool/main/s/swapped-outpost_1.0_all.deb"),
        2
    );
    assert_eq!(mirror.card("debian").await["integrity_failures"], 2);
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

/// The `hello-outpost` package, built with dpkg-deb under `work`.
fn hello_deb(work: &std::path::Path) -> Bytes {
    let package = work.join("pkg");
    std::fs::create_dir_all(package.join("DEBIAN")).unwrap();
    std::fs::write(
        package.join("DEBIAN/control"),
        "Package: hello-outpost\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\nDescription: test package\n",
    )
    .unwrap();
    let deb_path = work.join("hello.deb");
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
    Bytes::from(std::fs::read(&deb_path).unwrap())
}

/// A `Packages` index listing `deb` twice: as itself (`hello-outpost`, whose file name
/// apt asks for with `%2b`) and as `swapped-outpost`, whose file the upstream will serve
/// with other bytes.
fn packages_listing(deb: &Bytes) -> String {
    format!(
        "Package: hello-outpost\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\n\
         Filename: pool/main/h/hello-outpost_1.0+b1_all.deb\nSize: {}\nSHA256: {}\nDescription: test package\n\n\
         Package: swapped-outpost\nVersion: 1.0\nArchitecture: all\n\
         Filename: pool/main/s/swapped-outpost_1.0_all.deb\nSize: {}\nSHA256: {}\nDescription: served wrong\n\n",
        deb.len(),
        sha256_hex(deb),
        deb.len(),
        sha256_hex(deb)
    )
}

/// The pool files of [`packages_listing`]: the package, and other bytes for the swapped one.
fn pool_routes(deb: &Bytes) -> Vec<(&'static str, Fixture)> {
    vec![
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
        // The index lists this file with the hello package's digest; the upstream serves
        // other bytes (a compromised or corrupted archive).
        (
            "/debian/pool/main/s/swapped-outpost_1.0_all.deb",
            Fixture::ok("not the package the index describes"),
        ),
    ]
}

/// A fresh apt root under `root` whose one source is `source`.
fn apt_root(root: &std::path::Path, source: &str) {
    for dir in [
        "etc/apt",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("status"), "").unwrap();
    std::fs::write(root.join("etc/apt/sources.list"), source).unwrap();
}

/// Debian's own archive as apt meets it: `Release` says `Acquire-By-Hash: yes` and lists
/// `Packages.xz`, so apt fetches the index as `by-hash/SHA256/<digest of the xz file>`.
/// The mirror checks that file against its name, decodes it and reads it for the `.deb`
/// digests, so the swapped package is refused from its first download, as with a plain
/// `Packages`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_by_hash_xz_indexes_still_check_every_package() {
    let work = tempfile::tempdir().unwrap();
    let Some(archive) = ByHashArchive::behind_a_mirror(work.path()).await else {
        return;
    };
    let (deb, by_hash, origin, mirror) = archive.parts();
    let downloaded = update_and_download(&mirror).await;
    assert_eq!(downloaded.expect("apt through the mirror"), deb);
    assert_eq!(origin.hits(&by_hash), 1, "apt took the index by hash");
    let refused = crate::support::get(
        &mirror.url("/debian/pool/main/s/swapped-outpost_1.0_all.deb"),
        &[],
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert_eq!(mirror.card("debian").await["integrity_failures"], 1);
}

/// A `Packages.xz` index of a few thousand packages, sent chunked in 16 KiB pieces, is read
/// for its digests while it streams on to apt: the package whose paragraph falls deep in
/// the index (across many chunks and read batches) downloads, and the swapped one listed
/// beside it is refused from its first download, as with a small index read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_xz_index_streamed_in_chunks_still_checks_every_package() {
    if !client_available("apt-get", &["--version"]) || !client_available("dpkg-deb", &["--version"])
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let deb = hello_deb(work.path());
    let filler = |from: usize| -> String {
        (from..from + 3000)
            .map(|i| {
                format!(
                    "Package: filler-{i}\nVersion: 1.{i}\nArchitecture: all\n\
                     Filename: pool/main/f/filler-{i}_1.{i}_all.deb\nSize: {i}\nSHA256: {}\n\
                     Description: filler {i}\n more words about filler {i} than apt reads\n\n",
                    sha256_hex(format!("filler {i}").as_bytes())
                )
            })
            .collect()
    };
    let packages = format!("{}{}{}", filler(0), packages_listing(&deb), filler(3000));
    let xz = xz_coded(packages.as_bytes());
    assert!(xz.len() > 64 << 10, "many chunks: {}", xz.len());
    let release = format!(
        "Origin: test\nLabel: test\nSuite: stable\nCodename: stable\nDate: {}\nArchitectures: amd64\n\
         Components: main\nSHA256:\n {} {} main/binary-amd64/Packages\n {} {} main/binary-amd64/Packages.xz\n",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        sha256_hex(packages.as_bytes()),
        packages.len(),
        sha256_hex(&xz),
        xz.len(),
    );
    let mut routes = vec![
        (
            "/debian/dists/stable/Release",
            Fixture::ok(release.as_str()),
        ),
        (
            "/debian/dists/stable/main/binary-amd64/Packages.xz",
            Fixture::Chunked {
                headers: Vec::new(),
                body: Bytes::from(xz),
            },
        ),
    ];
    routes.extend(pool_routes(&deb));
    let origin = Origin::start(routes).await;
    let mirror = debian_mirror_of(&origin).await;
    let downloaded = update_and_download(&mirror).await;
    assert_eq!(downloaded.expect("apt through the mirror"), deb);
    assert_eq!(
        origin.hits("/debian/dists/stable/main/binary-amd64/Packages.xz"),
        1
    );
    let refused = crate::support::get(
        &mirror.url("/debian/pool/main/s/swapped-outpost_1.0_all.deb"),
        &[],
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert_eq!(mirror.card("debian").await["integrity_failures"], 1);
}

/// `bytes` as xz, as Debian's archive codes its indexes.
fn xz_coded(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 6);
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// An archive laid out as Debian's: `Release` says `Acquire-By-Hash: yes` and lists the
/// `Packages` index plain and as xz, which is served only by hash; the pool files of
/// [`packages_listing`]. The routes, and the path of the by-hash index.
fn by_hash_xz_archive(deb: &Bytes) -> (Vec<(String, Fixture)>, String) {
    let packages = packages_listing(deb);
    let xz = xz_coded(packages.as_bytes());
    let by_hash = format!(
        "/debian/dists/stable/main/binary-amd64/by-hash/SHA256/{}",
        sha256_hex(&xz)
    );
    let translation = "Package: hello-outpost\nDescription-md5: 0123456789abcdef0123456789abcdef\n\
                       Description-en: greets from the mirror\n\n";
    let translation_xz = xz_coded(translation.as_bytes());
    let release = format!(
        "Origin: test\nLabel: test\nSuite: stable\nCodename: stable\nDate: {}\nArchitectures: amd64\n\
         Components: main\nAcquire-By-Hash: yes\nSHA256:\n {} {} main/binary-amd64/Packages\n {} {} main/binary-amd64/Packages.xz\n \
         {} {} main/i18n/Translation-en\n {} {} main/i18n/Translation-en.xz\n",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        sha256_hex(packages.as_bytes()),
        packages.len(),
        sha256_hex(&xz),
        xz.len(),
        // Listed uncompressed too, as Debian does (apt looks for that name; the file
        // itself is not served).
        sha256_hex(translation.as_bytes()),
        translation.len(),
        sha256_hex(&translation_xz),
        translation_xz.len()
    );
    let translation_by_hash = format!(
        "/debian/dists/stable/main/i18n/by-hash/SHA256/{}",
        sha256_hex(&translation_xz)
    );
    let mut routes = vec![
        (
            "/debian/dists/stable/Release".to_string(),
            Fixture::ok(release.as_str()),
        ),
        (
            by_hash.clone(),
            Fixture::Static {
                status: StatusCode::OK,
                headers: Vec::new(),
                body: Bytes::from(xz),
            },
        ),
        (
            translation_by_hash,
            Fixture::Static {
                status: StatusCode::OK,
                headers: Vec::new(),
                body: Bytes::from(translation_xz),
            },
        ),
    ];
    routes.extend(
        pool_routes(deb)
            .into_iter()
            .map(|(path, fixture)| (path.to_string(), fixture)),
    );
    (routes, by_hash)
}

/// `outpost warm` with a Debian package list against an archive apt reads by hash: it
/// fetches the index as apt will (the xz file, by hash) and the package, so that with the
/// mirror offline `apt-get update` and `apt-get download` still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_prepares_a_by_hash_archive_for_offline_apt() {
    let work = tempfile::tempdir().unwrap();
    let Some(archive) = ByHashArchive::behind_a_mirror(work.path()).await else {
        return;
    };
    let (deb, by_hash, origin, mirror) = archive.parts();
    let list = work.path().join("packages.txt");
    std::fs::write(&list, "hello-outpost\n").unwrap();
    let mut warm = Command::new(env!("CARGO_BIN_EXE_outpost"));
    warm.args(["warm", "--quiet", "--mirror", &mirror.url("")])
        .arg(format!("debian:{}", list.display()));
    let summary = super::run_blocking(warm).await.expect("outpost warm");
    assert!(summary.contains(" 0 failed"), "{summary}");
    assert_eq!(
        origin.hits(&by_hash),
        1,
        "the index as apt takes it: {summary}"
    );
    assert_eq!(
        origin.hits("/debian/pool/main/h/hello-outpost_1.0%2bb1_all.deb"),
        1,
        "{summary}"
    );

    mirror.go_offline().await;
    let (updated, downloaded) = update_and_download_with_languages(&mirror, "en")
        .await
        .expect("apt with the mirror offline");
    assert_eq!(downloaded, deb);
    // apt also takes the English descriptions (its default languages include "en"); one
    // it cannot fetch is a warning on every update.
    assert!(
        updated.contains("Translation-en") && !updated.contains("W: "),
        "{updated}"
    );
    assert_eq!(
        origin.hits(&by_hash),
        1,
        "offline: nothing more from the upstream"
    );
}

/// [`by_hash_xz_archive`] served by an origin, with a mirror in front of it.
struct ByHashArchive {
    deb: Bytes,
    by_hash: String,
    origin: Origin,
    mirror: Mirror,
}

impl ByHashArchive {
    /// `None` (the test is skipped) when apt-get or dpkg-deb does not run here.
    async fn behind_a_mirror(work: &std::path::Path) -> Option<ByHashArchive> {
        if !client_available("apt-get", &["--version"])
            || !client_available("dpkg-deb", &["--version"])
        {
            return None;
        }
        let deb = hello_deb(work);
        let (routes, by_hash) = by_hash_xz_archive(&deb);
        let routes = routes
            .iter()
            .map(|(path, fixture)| (path.as_str(), fixture.clone()))
            .collect();
        let origin = Origin::start(routes).await;
        let mirror = debian_mirror_of(&origin).await;
        Some(ByHashArchive {
            deb,
            by_hash,
            origin,
            mirror,
        })
    }

    fn parts(self) -> (Bytes, String, Origin, Mirror) {
        (self.deb, self.by_hash, self.origin, self.mirror)
    }
}

/// `apt-get update` then `apt-get download hello-outpost` in a fresh apt root whose one
/// source is `mirror`'s Debian registry; the package file apt saved.
async fn update_and_download(mirror: &Mirror) -> Result<Vec<u8>, String> {
    update_and_download_with_languages(mirror, "none")
        .await
        .map(|(_, deb)| deb)
}

/// [`update_and_download`] with apt fetching the translations `languages` names; also what
/// `apt-get update` said.
async fn update_and_download_with_languages(
    mirror: &Mirror,
    languages: &'static str,
) -> Result<(String, Vec<u8>), String> {
    let source = format!("deb [trusted=yes] {} stable main\n", mirror.url("/debian"));
    let root = tempfile::tempdir().unwrap();
    apt_root(root.path(), &source);
    let path = root.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let updated = apt(&path, languages, &["update"])?;
        apt(&path, languages, &["download", "hello-outpost"])?;
        let deb =
            std::fs::read(path.join("hello-outpost_1.0_all.deb")).map_err(|err| err.to_string())?;
        Ok((updated, deb))
    })
    .await
    .unwrap()
}

/// The shipped mirror profile with its Debian registry pointed at `origin`'s `/debian`.
async fn debian_mirror_of(origin: &Origin) -> Mirror {
    Mirror::start(
        &[(
            "https://deb.debian.org/debian",
            format!("{}/debian", origin.url()),
        )],
        None,
    )
    .await
}
