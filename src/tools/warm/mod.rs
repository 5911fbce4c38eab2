//! `outpost warm`: fetches through a running mirror everything the given lock files need
//! (index documents and artifacts), so the mirror holds them before a machine goes
//! offline. It is an ordinary client of the mirror: what it fetches is stored, rewritten
//! and checked exactly as for pip, cargo, npm or apt.
//!
//! Reading the lock files is [`manifest`]'s business; this module finds each package's
//! artifacts in the registry's index (through the mirror) and fetches them.

pub mod manifest;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;

use super::client::ToolClientError;
use crate::config::{MirrorConfig, RegistryKind};
use crate::mirror::documents::{cargo_download_path, cargo_index_prefix, debian_field, html_links};
use crate::mirror::{debian, decode};
use manifest::{Kind, Manifest, Package};

/// Where the registries are mounted on the mirror (paths with both slashes).
#[derive(Debug, Clone)]
pub struct Mounts {
    pub pypi: String,
    pub crates: String,
    pub npm: String,
    pub debian: String,
}

impl Default for Mounts {
    fn default() -> Self {
        Mounts {
            pypi: "/pypi/".into(),
            crates: "/crates/".into(),
            npm: "/npm/".into(),
            debian: "/debian/".into(),
        }
    }
}

impl Mounts {
    /// The first registry of each kind in a mirror configuration; defaults for the rest.
    pub fn from_config(config: &MirrorConfig) -> Mounts {
        let mut mounts = Mounts::default();
        for kind in [
            RegistryKind::Pypi,
            RegistryKind::Cargo,
            RegistryKind::Npm,
            RegistryKind::Debian,
        ] {
            let Some(registry) = config.registries.iter().find(|r| r.kind == kind) else {
                continue;
            };
            let path = registry.path.clone();
            match kind {
                RegistryKind::Pypi => mounts.pypi = path,
                RegistryKind::Cargo => mounts.crates = path,
                RegistryKind::Npm => mounts.npm = path,
                RegistryKind::Debian => mounts.debian = path,
            }
        }
        mounts
    }
}

/// Which Debian index the package names are looked up in.
#[derive(Debug, Clone)]
pub struct DebianIndex {
    pub suite: String,
    pub component: String,
    pub architecture: String,
    /// The `Translation-<language>` files apt fetches with the index.
    pub languages: Vec<String>,
}

/// What to warm and where.
#[derive(Debug, Clone)]
pub struct WarmPlan {
    /// The mirror's base URL (`http://mirror:8080`).
    pub mirror: String,
    pub mounts: Mounts,
    pub debian: DebianIndex,
    /// Artifact downloads in flight at once.
    pub concurrency: usize,
    /// A CA trusted besides the web roots for an `https://` mirror.
    pub ca_file: Option<std::path::PathBuf>,
}

/// What a warm run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct WarmReport {
    /// Fetched from the upstream through the mirror (now stored).
    pub fetched: u64,
    /// Already stored: answered by the mirror's cache.
    pub cached: u64,
    /// What could not be fetched, and why.
    pub failed: Vec<(String, String)>,
    pub bytes: u64,
}

/// One answer of the mirror.
struct Answer {
    status: http::StatusCode,
    hit: bool,
    content_type: String,
    body: Bytes,
}

/// Counts shared by concurrent fetches.
#[derive(Default)]
struct Tally {
    fetched: AtomicU64,
    cached: AtomicU64,
    bytes: AtomicU64,
    failed: parking_lot::Mutex<Vec<(String, String)>>,
}

struct Warmer {
    client: super::client::ToolClient,
    plan: WarmPlan,
    tally: Tally,
}

/// Runs the plan over `manifests`; `progress(done, total)` follows the artifact downloads.
///
/// # Errors
/// [`ToolClientError`] when the plan's CA file cannot be read; what could not be fetched
/// is in the report.
pub async fn warm(
    plan: WarmPlan,
    manifests: Vec<(Kind, Manifest)>,
    progress: impl Fn(u64, u64) + Send + Sync + 'static,
) -> Result<WarmReport, ToolClientError> {
    let client = super::client::tool_client(plan.concurrency.max(1), plan.ca_file.as_deref())?;
    let warmer = Arc::new(Warmer {
        client,
        plan,
        tally: Tally::default(),
    });
    let mut artifacts = Vec::new();
    for (kind, manifest) in &manifests {
        for skipped in &manifest.skipped {
            warmer.failed(skipped.clone(), "not pinned to one version".into());
        }
        artifacts.extend(warmer.artifacts_of(*kind, &manifest.packages).await);
    }
    artifacts.sort();
    artifacts.dedup();
    let total = artifacts.len() as u64;
    let done = Arc::new(AtomicU64::new(0));
    progress(0, total);
    let progress = Arc::new(progress);
    let queue = Arc::new(parking_lot::Mutex::new(artifacts));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..warmer.plan.concurrency.max(1) {
        let (warmer, queue, done, progress) = (
            Arc::clone(&warmer),
            Arc::clone(&queue),
            Arc::clone(&done),
            Arc::clone(&progress),
        );
        workers.spawn(async move {
            loop {
                let Some(url) = queue.lock().pop() else { break };
                warmer.fetch(&url, None).await;
                progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let tally = &warmer.tally;
    let failed = tally.failed.lock().clone();
    Ok(WarmReport {
        fetched: tally.fetched.load(Ordering::Relaxed),
        cached: tally.cached.load(Ordering::Relaxed),
        failed,
        bytes: tally.bytes.load(Ordering::Relaxed),
    })
}

impl Warmer {
    fn failed(&self, what: String, why: String) {
        self.tally.failed.lock().push((what, why));
    }

    fn url(&self, mount: &str, rest: &str) -> String {
        format!("{}{mount}{rest}", self.plan.mirror.trim_end_matches('/'))
    }

    /// GETs `url` through the mirror and reads it whole; counts it; `None` (and a failure
    /// recorded) unless it is a 200.
    async fn fetch(&self, url: &str, accept: Option<&str>) -> Option<Answer> {
        match self.exchange(url, accept).await {
            Ok(answer) if answer.status == http::StatusCode::OK => {
                let counter = if answer.hit {
                    &self.tally.cached
                } else {
                    &self.tally.fetched
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.tally
                    .bytes
                    .fetch_add(answer.body.len() as u64, Ordering::Relaxed);
                Some(answer)
            }
            Ok(answer) => {
                self.failed(url.to_string(), format!("status {}", answer.status));
                None
            }
            Err(err) => {
                self.failed(url.to_string(), err);
                None
            }
        }
    }

    async fn exchange(&self, url: &str, accept: Option<&str>) -> Result<Answer, String> {
        let mut request = http::Request::get(url);
        if let Some(accept) = accept {
            request = request.header(http::header::ACCEPT, accept);
        }
        let request = request
            .body(Empty::new())
            .map_err(|err| format!("bad URL: {err}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| format!("mirror unreachable: {err}"))?;
        let field = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let hit = super::load::is_hit(&field(crate::telemetry::cache_status::CACHE_STATUS));
        let content_type = field(http::header::CONTENT_TYPE);
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| format!("body failed: {err}"))?
            .to_bytes();
        Ok(Answer {
            status,
            hit,
            content_type,
            body,
        })
    }

    /// The artifact URLs of `packages`, found in their index (which this warms too).
    async fn artifacts_of(&self, kind: Kind, packages: &[Package]) -> Vec<String> {
        match kind {
            Kind::Pip => {
                let mut urls = Vec::new();
                for package in packages {
                    urls.extend(self.pypi_files(package).await);
                }
                urls
            }
            Kind::Cargo => self.crate_files(packages).await,
            Kind::Npm => {
                let mut urls = Vec::new();
                for package in packages {
                    urls.extend(self.npm_tarball(package).await);
                }
                urls
            }
            Kind::Debian => self.debian_files(packages).await,
        }
    }

    async fn pypi_files(&self, package: &Package) -> Vec<String> {
        let name = normalized_pypi_name(&package.name);
        let page_url = self.url(&self.plan.mounts.pypi, &format!("simple/{name}/"));
        // pip's own Accept, so a page that varies on it is stored as pip will ask for it.
        let accept = PIP_ACCEPT;
        let Some(page) = self.fetch(&page_url, Some(accept)).await else {
            return Vec::new();
        };
        // The mirror stores each form of the page apart (`mirror::negotiate`): clients that
        // name no form (no Accept, `*/*`, `text/html`: older pip, poetry's sources, plain
        // HTTP tools) get the legacy HTML, which offline is there only if stored too.
        self.fetch(&page_url, Some(crate::mirror::negotiate::LEGACY_HTML))
            .await;
        let base = url::Url::parse(&page_url).ok();
        let resolve = |href: &str| {
            let href = href.split('#').next().unwrap_or_default();
            base.as_ref()
                .and_then(|b| b.join(href).ok())
                .map(String::from)
        };
        let mut files: Vec<(String, String, bool)> = Vec::new();
        if page.content_type.contains("json") {
            let page: Value = serde_json::from_slice(&page.body).unwrap_or_default();
            for file in page["files"].as_array().into_iter().flatten() {
                let (Some(filename), Some(url)) = (file["filename"].as_str(), file["url"].as_str())
                else {
                    continue;
                };
                let metadata = ["core-metadata", "dist-info-metadata"]
                    .iter()
                    .any(|k| file.get(*k).is_some_and(|m| m != &Value::Bool(false)));
                files.push((filename.to_string(), url.to_string(), metadata));
            }
        } else {
            let text = String::from_utf8_lossy(&page.body);
            for (href, has_metadata) in html_links(&text) {
                let path = href.split(['#', '?']).next().unwrap_or_default();
                let filename = path.rsplit('/').next().unwrap_or_default().to_string();
                files.push((filename, href, has_metadata));
            }
        }
        let version = package.version.as_deref().unwrap_or_default();
        let mut urls = Vec::new();
        for (filename, href, metadata) in files {
            if pypi_file_version(&filename, &name).as_deref() != Some(version) {
                continue;
            }
            if let Some(url) = resolve(&href) {
                if metadata {
                    urls.push(format!("{url}.metadata"));
                }
                urls.push(url);
            }
        }
        if urls.is_empty() {
            self.failed(
                format!("{} {version}", package.name),
                "no file of that version in the index".into(),
            );
        }
        urls
    }

    async fn crate_files(&self, packages: &[Package]) -> Vec<String> {
        if packages.is_empty() {
            return Vec::new();
        }
        let mount = self.plan.mounts.crates.clone();
        let config = self.fetch(&self.url(&mount, "config.json"), None).await;
        let dl = config
            .and_then(|c| serde_json::from_slice::<Value>(&c.body).ok())
            .and_then(|c| c["dl"].as_str().map(str::to_string));
        let Some(dl) = dl else {
            self.failed(
                self.url(&mount, "config.json"),
                "no `dl` in config.json".into(),
            );
            return Vec::new();
        };
        let mut urls = Vec::new();
        for package in packages {
            let name = package.name.to_lowercase();
            let prefix = cargo_index_prefix(&name);
            self.fetch(&self.url(&mount, &format!("{prefix}/{name}")), None)
                .await;
            let version = package.version.as_deref().unwrap_or_default();
            let checksum = package.checksum.as_deref().unwrap_or_default();
            urls.push(cargo_download_path(&dl, &package.name, version, checksum));
        }
        urls
    }

    async fn npm_tarball(&self, package: &Package) -> Option<String> {
        let path = package.name.replace('/', "%2f");
        let url = self.url(&self.plan.mounts.npm, &path);
        // npm asks for both forms (full during install, abbreviated in older versions);
        // a registry that varies on Accept stores them apart.
        let _ = self
            .fetch(&url, Some(crate::mirror::negotiate::NPM_ABBREVIATED))
            .await;
        let document = self
            .fetch(&url, Some(crate::mirror::negotiate::NPM_FULL))
            .await?;
        let document: Value = serde_json::from_slice(&document.body).unwrap_or_default();
        let version = package.version.as_deref().unwrap_or_default();
        let tarball = document["versions"][version]["dist"]["tarball"].as_str();
        if tarball.is_none() {
            self.failed(
                format!("{} {version}", package.name),
                "no such version in the package document".into(),
            );
        }
        tarball.map(str::to_string)
    }

    /// The `Packages` index `index` (below `dists`) as apt will fetch it, decoded (see
    /// [`apt_index_path`]); `Packages.gz`, else `Packages`, by name when `Release` lists
    /// none.
    async fn debian_index(
        &self,
        mount: &str,
        dists: &str,
        index: &str,
        listed: &debian::ReleaseIndex,
    ) -> Option<Bytes> {
        if let Some(path) = apt_index_path(listed, dists, index) {
            let answer = self.fetch(&self.url(mount, &path), None).await?;
            if let Some(text) = packages_of(&answer).await {
                return Some(text);
            }
            // apt's form is one outpost does not decode (bzip2, lzma, lz4, zstd): it is
            // stored for apt now, and a form outpost reads is what the names come from.
            let readable = ["xz", "gz"]
                .iter()
                .map(|suffix| format!("{index}.{suffix}"))
                .chain([index.to_string()])
                .find(|name| listed.digest_of(name).is_some())?;
            let answer = self
                .fetch(&self.url(mount, &format!("{dists}{readable}")), None)
                .await?;
            return packages_of(&answer).await;
        }
        let by_name = format!("{dists}{index}");
        let answer = match self
            .exchange(&self.url(mount, &format!("{by_name}.gz")), None)
            .await
        {
            Ok(answer) if answer.status == http::StatusCode::OK => {
                self.tally.fetched.fetch_add(1, Ordering::Relaxed);
                answer
            }
            _ => self.fetch(&self.url(mount, &by_name), None).await?,
        };
        packages_of(&answer).await
    }

    async fn debian_files(&self, packages: &[Package]) -> Vec<String> {
        let debian = &self.plan.debian;
        let mount = self.plan.mounts.debian.clone();
        let dists = format!("dists/{}/", debian.suite);
        // apt fetches these first; a repository may lack InRelease (its 404 is stored too).
        let in_release = self
            .exchange(&self.url(&mount, &format!("{dists}InRelease")), None)
            .await;
        let release = self
            .fetch(&self.url(&mount, &format!("{dists}Release")), None)
            .await;
        let release = match in_release {
            Ok(answer) if answer.status == http::StatusCode::OK => Some(answer.body),
            _ => {
                // Without InRelease, apt asks for the detached signature next (a missing
                // one's 404 is stored too, and apt offline needs that answer as well).
                let _ = self
                    .exchange(&self.url(&mount, &format!("{dists}Release.gpg")), None)
                    .await;
                release.map(|answer| answer.body)
            }
        };
        let listed = release
            .map(|text| debian::ReleaseIndex::parse(&String::from_utf8_lossy(&text)))
            .unwrap_or_default();
        let index = format!(
            "{}/binary-{}/Packages",
            debian.component, debian.architecture
        );
        let Some(text) = self.debian_index(&mount, &dists, &index, &listed).await else {
            return Vec::new();
        };
        for language in &debian.languages {
            let translation = format!("{}/i18n/Translation-{language}", debian.component);
            // A language the archive does not list is one apt does not ask for either.
            if let Some(path) = apt_index_path(&listed, &dists, &translation) {
                self.fetch(&self.url(&mount, &path), None).await;
            }
        }
        let available = debian_filenames(&String::from_utf8_lossy(&text));
        let mut urls = Vec::new();
        for package in packages {
            let found = available.iter().rev().find(|(name, version, _)| {
                name == &package.name && package.version.as_ref().is_none_or(|v| v == version)
            });
            match found {
                Some((_, _, filename)) => urls.push(self.url(&mount, &apt_quoted(filename))),
                None => self.failed(package.name.clone(), format!("not in {index}")),
            }
        }
        urls
    }
}

/// The compressions apt takes an index in, in its order of preference
/// (`Acquire::CompressionTypes`), the uncompressed file last.
const APT_COMPRESSIONS: [&str; 7] = [".xz", ".bz2", ".lzma", ".gz", ".lz4", ".zst", ""];

/// The path (below the mount) apt fetches the index file `name` (below `dists`) by: the
/// first compression of it that `Release` lists, by hash when `Release` says
/// `Acquire-By-Hash: yes` (Debian's does), so that apt finds it stored when offline.
/// `None` when `Release` lists no form of it.
fn apt_index_path(listed: &debian::ReleaseIndex, dists: &str, name: &str) -> Option<String> {
    APT_COMPRESSIONS.iter().find_map(|suffix| {
        let file = format!("{name}{suffix}");
        let hex = listed.digest_of(&file)?;
        Some(match file.rsplit_once('/') {
            Some((dir, _)) if listed.by_hash => format!("{dists}{dir}/by-hash/SHA256/{hex}"),
            _ => format!("{dists}{file}"),
        })
    })
}

/// The most a Debian `Packages` index may decode to (Debian's largest are some 70 MB).
const DEBIAN_INDEX_LIMIT: u64 = 1 << 30;

/// `answer`'s body as a `Packages` index's text, decoded off the runtime; `None` when it is
/// not one, or is in a compression outpost does not decode.
async fn packages_of(answer: &Answer) -> Option<Bytes> {
    decode::off_runtime(&answer.body, DEBIAN_INDEX_LIMIT, debian::packages_text).await
}

/// What pip 23 sends for simple pages.
const PIP_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";

/// PEP 503 normalisation: lower case, runs of `-`, `_`, `.` as one `-`.
pub fn normalized_pypi_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The version in a distribution's file name (`name-1.0-py3-none-any.whl`,
/// `name-1.0.tar.gz`), for the project normalised as `name`.
fn pypi_file_version(filename: &str, name: &str) -> Option<String> {
    let stem = filename
        .strip_suffix(".whl")
        .or_else(|| filename.strip_suffix(".tar.gz"))
        .or_else(|| filename.strip_suffix(".zip"))
        .or_else(|| filename.strip_suffix(".tar.bz2"))?;
    if filename.ends_with(".whl") {
        let mut parts = stem.split('-');
        let project = parts.next()?;
        let version = parts.next()?;
        return (normalized_pypi_name(project) == name).then(|| version.to_string());
    }
    let (project, version) = stem.rsplit_once('-')?;
    (normalized_pypi_name(project) == name).then(|| version.to_string())
}

/// A pool file's path as apt's http method sends it (`QuoteString(path, "+~ ")`): `+`,
/// `~`, space, `%` and bytes outside printable ASCII percent-encoded in lower case. The
/// mirror keys paths exactly as received (`+` and `%2b` are different resources to it),
/// so a file warmed under another spelling would not be the one apt asks for offline.
fn apt_quoted(path: &str) -> String {
    let mut quoted = String::with_capacity(path.len());
    for byte in path.bytes() {
        if matches!(byte, b'+' | b'~' | b' ' | b'%') || !(0x21..0x7f).contains(&byte) {
            quoted.push_str(&format!("%{byte:02x}"));
        } else {
            quoted.push(char::from(byte));
        }
    }
    quoted
}

/// `(Package, Version, Filename)` of every paragraph of a `Packages` file.
fn debian_filenames(text: &str) -> Vec<(String, String, String)> {
    text.split("\n\n")
        .filter_map(|paragraph| {
            let field = |name| debian_field(paragraph, name).map(str::to_string);
            Some((field("Package")?, field("Version")?, field("Filename")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// apt's order of compressions, by hash only when `Release` asks for it.
    #[test]
    fn index_files_are_fetched_in_the_form_apt_takes() {
        let release =
            "SHA256:\n aa 1 main/i18n/Translation-en\n bb 1 main/i18n/Translation-en.gz\n \
                       cc 1 main/i18n/Translation-en.bz2\n dd 1 main/binary-amd64/Packages\n";
        let listed = debian::ReleaseIndex::parse(release);
        let path = |name| apt_index_path(&listed, "dists/s/", name);
        assert_eq!(
            path("main/i18n/Translation-en").as_deref(),
            Some("dists/s/main/i18n/Translation-en.bz2")
        );
        assert_eq!(
            path("main/binary-amd64/Packages").as_deref(),
            Some("dists/s/main/binary-amd64/Packages")
        );
        assert_eq!(path("main/i18n/Translation-de"), None);
        let by_hash = debian::ReleaseIndex::parse(&format!("Acquire-By-Hash: yes\n{release}"));
        assert_eq!(
            apt_index_path(&by_hash, "dists/s/", "main/i18n/Translation-en").as_deref(),
            Some("dists/s/main/i18n/by-hash/SHA256/cc")
        );
    }

    #[test]
    fn pool_paths_are_spelled_as_apt_sends_them() {
        assert_eq!(
            apt_quoted("pool/main/s/sl/sl_5.02-1+b1_amd64.deb"),
            "pool/main/s/sl/sl_5.02-1%2bb1_amd64.deb"
        );
        assert_eq!(
            apt_quoted("pool/a_1.0~rc1 x%.deb"),
            "pool/a_1.0%7erc1%20x%25.deb"
        );
        assert_eq!(apt_quoted("pool/\u{e9}.deb"), "pool/%c3%a9.deb");
    }

    #[test]
    fn file_names_give_their_version() {
        assert_eq!(
            pypi_file_version("Demo_Pkg-1.0-py3-none-any.whl", "demo-pkg").as_deref(),
            Some("1.0")
        );
        assert_eq!(
            pypi_file_version("demo-pkg-2.0.tar.gz", "demo-pkg").as_deref(),
            Some("2.0")
        );
        assert_eq!(pypi_file_version("other-1.0.tar.gz", "demo-pkg"), None);
        assert_eq!(normalized_pypi_name("Foo__Bar.baz"), "foo-bar-baz");
    }
}
