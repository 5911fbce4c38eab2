//! The package mirror: registries mounted under paths of one base URL
//! (`[[mirror.registries]]`), and what happens to their responses on the way from the
//! upstream into the cache.
//!
//! - Index documents (PyPI simple pages, cargo `config.json`, npm package documents) are
//!   rewritten once, when they are stored: absolute links to a mounted upstream point back
//!   at the mirror. The stored document is the rewritten one, with its own weak validator
//!   (`W/"<origin's>.m<base>"`); the origin's ETag is kept beside it for revalidation, so a
//!   304 keeps the rewritten copy and a hit does no work.
//! - Every document that publishes digests (those, cargo index files, Debian `Packages`)
//!   has them recorded for the artifacts it lists ([`digests`]).
//! - An artifact with a recorded digest is read whole and checked before any byte of it is
//!   stored or served; a mismatch is a 502 with `Proxy-Status`, counted per registry.
//!
//! Routing to the registries' upstreams is ordinary routing ([`crate::config::Config::all_sites`]);
//! freshness is the operator's rules (`config/mirror.toml`).

pub mod check;
pub mod debian;
pub mod decode;
pub mod digests;
pub mod documents;
pub mod negotiate;
pub mod recording;
pub mod room;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, GetAll, HeaderValue};
use http::StatusCode;
use http_body_util::BodyExt;

use crate::cache::disk::DiskTier;
use crate::config::{MirrorConfig, RegistryKind};
use crate::upstream::OriginBody;
use decode::Coding;
use digests::DigestStore;
use documents::{DocumentError, Links};

use crate::cache::policy::ORIGIN_ETAG;

/// What one registry has seen, for the status page and `/status.json`.
#[derive(Default)]
pub struct RegistryStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub integrity_failures: AtomicU64,
    pub documents_rewritten: AtomicU64,
    /// Documents that waited for room in the fills' memory budget before being read on.
    pub documents_waited: AtomicU64,
    /// Seconds since the epoch of the last complete answer from the upstream; 0: none yet.
    pub last_upstream_contact: AtomicU64,
}

/// One mounted registry.
pub struct Registry {
    pub name: String,
    pub kind: RegistryKind,
    /// The mount, with its trailing slash (`/pypi/`).
    pub path: String,
    /// Where the artifacts host is mounted (`/pypi/_files/`), when the registry has one.
    files_path: Option<String>,
    /// Upstream URL prefixes (`scheme://authority/base`, no trailing slash) and the mirror
    /// paths they are mounted at (no trailing slash), longest upstream first. Shared with
    /// every document read (one per index document fetched).
    mounts: Arc<[(String, String)]>,
    pub stats: Arc<RegistryStats>,
}

impl Registry {
    fn new(config: &crate::config::RegistryConfig) -> Registry {
        let prefix = |url: &crate::config::OriginUrl| {
            format!(
                "{}://{}{}",
                url.url().scheme(),
                url.authority(),
                url.base_path()
            )
        };
        let files_path = config.files.as_ref().map(|_| config.files_path());
        let mut mounts = vec![(
            prefix(&config.upstream),
            config.path.trim_end_matches('/').to_string(),
        )];
        if let (Some(files), Some(path)) = (&config.files, &files_path) {
            mounts.push((prefix(files), path.trim_end_matches('/').to_string()));
        }
        mounts.sort_by_key(|(upstream, _)| std::cmp::Reverse(upstream.len()));
        Registry {
            name: config.name.clone(),
            kind: config.kind,
            path: config.path.clone(),
            files_path,
            mounts: mounts.into(),
            stats: Arc::default(),
        }
    }

    /// Whether `path` (below this registry's mount) is a page of PyPI's Simple API, which
    /// is negotiated by Accept ([`negotiate`]).
    fn is_simple_api(&self, path: &str) -> bool {
        self.kind == RegistryKind::Pypi && path[self.path.len() - 1..].starts_with("/simple/")
    }

    /// Whether `path` (below this registry) names an npm package document: anything but
    /// the registry's root and its `/-/` paths (tarballs, search, audits).
    fn is_npm_document(&self, path: &str) -> bool {
        let inner = &path[self.path.len() - 1..];
        self.kind == RegistryKind::Npm && inner.len() > 1 && !inner.contains("/-/")
    }

    /// The canonical `Accept` for a request for `path` whose own is `accept`, when `path`
    /// is a document the upstream negotiates by Accept ([`negotiate`]).
    fn canonical_accept(
        &self,
        path: &str,
        accept: GetAll<'_, HeaderValue>,
    ) -> Option<&'static str> {
        if self.is_simple_api(path) {
            Some(negotiate::simple_api_accept(accept))
        } else if self.is_npm_document(path) {
            Some(negotiate::npm_document_accept(accept))
        } else {
            None
        }
    }

    /// What a response for `path` (a mirror path under this registry) is.
    fn classify(&self, path: &str, content_type: &str) -> Handling {
        let in_files = self
            .files_path
            .as_ref()
            .is_some_and(|f| path.starts_with(f.as_str()));
        if in_files {
            return Handling::Artifact;
        }
        let inner = &path[self.path.len() - 1..];
        let document = match self.kind {
            RegistryKind::Pypi if self.is_simple_api(path) => {
                if content_type.contains("json") {
                    Some(Document::PypiJson)
                } else if content_type.contains("html") {
                    Some(Document::PypiHtml)
                } else {
                    None
                }
            }
            RegistryKind::Cargo if inner == "/config.json" => Some(Document::CargoConfig),
            RegistryKind::Cargo if is_sparse_index_file(inner) => Some(Document::CargoIndex),
            RegistryKind::Npm if self.is_npm_document(path) && content_type.contains("json") => {
                Some(Document::NpmPackument)
            }
            RegistryKind::Debian if debian::is_packages_index(inner) => {
                Some(Document::DebianPackages)
            }
            _ => None,
        };
        document.map_or(Handling::Artifact, Handling::Document)
    }
}

/// Whether an artifact held whole (`encoded`: gzip-coded) matches `expected`. A coded
/// artifact is checked decoded (what the index's digest is of), on a blocking thread and
/// within `limit` decoded bytes: a small coded body may decode to any size. A plain one
/// past [`HASH_OFF_RUNTIME_MIN`] is hashed on a blocking thread too.
async fn held_verdict(
    bytes: &Bytes,
    expected: &digests::Expected,
    encoded: bool,
    limit: u64,
) -> decode::CodedVerdict {
    if encoded {
        let (coded, expected) = (bytes.clone(), expected.clone());
        let check = move || decode::gunzipped_matches(&coded, &expected, limit);
        return tokio::task::spawn_blocking(check)
            .await
            .unwrap_or(decode::CodedVerdict::Mismatch);
    }
    let matches = if bytes.len() >= HASH_OFF_RUNTIME_MIN {
        let (held, expected) = (bytes.clone(), expected.clone());
        tokio::task::spawn_blocking(move || expected.matches(&held))
            .await
            .unwrap_or(false)
    } else {
        expected.matches(bytes)
    };
    if matches {
        decode::CodedVerdict::Matches
    } else {
        decode::CodedVerdict::Mismatch
    }
}

/// Whether `inner` (a path below a cargo registry's mount) is where a sparse index keeps a
/// crate's file: `/1/{name}`, `/2/{name}`, `/3/{first char}/{name}` or
/// `/{first two}/{next two}/{name}` (the cargo book, "Index format"). Anything else below
/// the mount is an artifact: a registry fronted by Artifactory or Nexus serves its crate
/// files (`dl`) from the index's own host, under a longer path.
fn is_sparse_index_file(inner: &str) -> bool {
    let segments: Vec<&str> = inner.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["1" | "2", name] => !name.is_empty(),
        ["3", first, name] => first.len() == 1 && !name.is_empty(),
        [first, second, name] => first.len() == 2 && second.len() == 2 && !name.is_empty(),
        _ => false,
    }
}

/// How the mirror treats a registry's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handling {
    Document(Document),
    /// Anything else: checked when a digest was published for it.
    Artifact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Document {
    PypiHtml,
    PypiJson,
    CargoConfig,
    CargoIndex,
    NpmPackument,
    /// `Packages`, `Packages.gz` or `Packages.xz`, read decoded.
    DebianPackages,
}

impl Document {
    /// Whether clients get a rewritten copy (the others are only read for digests).
    fn is_rewritten(self) -> bool {
        matches!(
            self,
            Document::PypiHtml
                | Document::PypiJson
                | Document::CargoConfig
                | Document::NpmPackument
        )
    }
}

/// Why the mirror refused an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{algorithm} of the artifact does not match the digest its index published")]
    Mismatch { algorithm: &'static str },
    #[error("gzip-coded artifact larger than mirror.hold_max ({0} bytes), coded or decoded: cannot be checked")]
    TooLargeToVerify(u64),
    #[error("response body failed: {0}")]
    Body(String),
    #[error("response body stalled past the body-read timeout")]
    Stalled,
}

/// The mirror of a configuration.
pub struct Mirror {
    registries: Vec<Registry>,
    public_url: Option<String>,
    rewrite_max: u64,
    hold_max: u64,
    /// Shared with the blocking threads that record a large index's digests.
    digests: Arc<DigestStore>,
    /// The one index document at a time that may be held past the fills' budget.
    document_pass: room::DocumentPass,
    /// The last count of stored objects and bytes per registry, and when it was made.
    stored: tokio::sync::Mutex<Option<StoredCount>>,
}

/// Objects and bytes stored per registry (in `registries` order), counted at an instant.
type StoredCount = (std::time::Instant, Vec<(u64, u64)>);

/// How long a count of stored objects serves reports before the index is scanned again.
const STORED_COUNT_LIFETIME: Duration = Duration::from_secs(30);

/// Index documents this large (npm's `typescript` packument is 10 MB, and took about
/// 150 ms to read and rewrite) are read on a blocking thread; smaller ones, most of them,
/// where they are.
const DOCUMENT_OFF_RUNTIME_MIN: usize = 64 << 10;

/// Artifacts held whole this large are hashed on a blocking thread: a 64 MiB one
/// (`mirror.hold_max`) takes tens of milliseconds, SHA-512 for npm's the longest.
const HASH_OFF_RUNTIME_MIN: usize = 1 << 20;

/// What reading one index document needs, owned, so that it can run on a blocking thread.
struct DocumentJob {
    document: Document,
    text: Bytes,
    mounts: Arc<[(String, String)]>,
    base: String,
    /// The document's path below the mirror.
    path: String,
    registry_path: String,
    digests: Arc<DigestStore>,
}

impl DocumentJob {
    /// [`DocumentJob::read_and_record`], on a blocking thread when the document is large.
    async fn run(self) -> Result<Option<Bytes>, DocumentError> {
        if self.text.len() < DOCUMENT_OFF_RUNTIME_MIN {
            return self.read_and_record();
        }
        tokio::task::spawn_blocking(move || self.read_and_record())
            .await
            .unwrap_or_else(|err| Err(DocumentError::Failed(err.to_string())))
    }

    /// Reads the document, records the digests it publishes, and returns it rewritten
    /// (`None`: no link changed).
    fn read_and_record(self) -> Result<Option<Bytes>, DocumentError> {
        let links = Links {
            mounts: &self.mounts,
            base: &self.base,
        };
        let (text, path) = (&self.text[..], self.path.as_str());
        let read = match self.document {
            Document::PypiHtml => {
                let text = std::str::from_utf8(text).map_err(|_| DocumentError::NotText)?;
                documents::pypi_html(text, &links, path)
            }
            Document::PypiJson => documents::pypi_json(text, &links, path)?,
            Document::CargoConfig => documents::cargo_config(text, &links, &self.registry_path)?,
            Document::CargoIndex => {
                let template = self
                    .digests
                    .get(&documents::cargo_template_key(&self.registry_path))
                    .and_then(|t| String::from_utf8(t).ok())
                    .unwrap_or_else(|| self.registry_path.trim_end_matches('/').to_string());
                documents::cargo_index(text, &template)
            }
            Document::NpmPackument => documents::npm_packument(text, &links, path)?,
            // Read as it streams by `Mirror::reading_packages`, never here.
            Document::DebianPackages => documents::Read::default(),
        };
        self.digests.put_all(read.records);
        Ok(read.body)
    }
}

/// An origin response as the fill task holds it.
pub type Head = http::response::Parts;

impl Mirror {
    /// `None` when no registry is configured.
    pub fn new(config: &MirrorConfig, disk: Option<DiskTier>) -> Option<Mirror> {
        if config.registries.is_empty() {
            return None;
        }
        let registries = config.registries.iter().map(Registry::new).collect();
        Some(Mirror {
            registries,
            public_url: config
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
            rewrite_max: config.rewrite_max.0,
            hold_max: config.hold_max.0,
            digests: Arc::new(DigestStore::new(disk)),
            document_pass: room::DocumentPass::default(),
            stored: tokio::sync::Mutex::new(None),
        })
    }

    pub fn registries(&self) -> &[Registry] {
        &self.registries
    }

    /// The registry mounted at `path`, if any.
    pub fn registry_for(&self, path: &str) -> Option<&Registry> {
        self.registries
            .iter()
            .find(|r| path.starts_with(r.path.as_str()))
    }

    /// The mirror card of the status page: per registry, objects and bytes stored, hit
    /// ratio, last successful upstream contact and integrity failures.
    pub async fn report(&self, cache: &crate::cache::Cache) -> serde_json::Value {
        let stored = {
            let mut last = self.stored.lock().await;
            match &*last {
                Some((at, counts)) if at.elapsed() < STORED_COUNT_LIFETIME => counts.clone(),
                _ => {
                    let prefixes = self.registries.iter().map(|r| r.path.clone()).collect();
                    let counts = cache.stored_under(prefixes).await;
                    *last = Some((std::time::Instant::now(), counts.clone()));
                    counts
                }
            }
        };
        let registries: Vec<serde_json::Value> = self
            .registries
            .iter()
            .zip(stored)
            .map(|(registry, (objects, bytes))| {
                let stats = &registry.stats;
                let (hits, misses) = (
                    stats.hits.load(Ordering::Relaxed),
                    stats.misses.load(Ordering::Relaxed),
                );
                let last_contact = stats.last_upstream_contact.load(Ordering::Relaxed);
                serde_json::json!({
                    "name": registry.name,
                    "kind": registry.kind.as_str(),
                    "path": registry.path,
                    "objects": objects,
                    "bytes": bytes,
                    "hits": hits,
                    "misses": misses,
                    "hit_ratio": if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 },
                    "last_upstream_contact": last_contact,
                    "integrity_failures": stats.integrity_failures.load(Ordering::Relaxed),
                    "documents_rewritten": stats.documents_rewritten.load(Ordering::Relaxed),
                    "documents_waited": stats.documents_waited.load(Ordering::Relaxed),
                })
            })
            .collect();
        serde_json::json!({ "registries": registries })
    }

    /// Counts a request answered from the cache (`hit`) or the upstream for `path`.
    pub fn count(&self, path: &str, hit: bool) {
        if let Some(registry) = self.registry_for(path) {
            let counter = if hit {
                &registry.stats.hits
            } else {
                &registry.stats.misses
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the Accept of a request for a negotiated document (a Simple API page, an npm
    /// package document) in its canonical spelling ([`negotiate`]), before the cache looks it up.
    pub fn negotiate(&self, request: &mut http::request::Parts) {
        let path = request.uri.path();
        let accept = request.headers.get_all(header::ACCEPT);
        let Some(canonical) = self
            .registry_for(path)
            .and_then(|registry| registry.canonical_accept(path, accept))
        else {
            return;
        };
        request
            .headers
            .insert(header::ACCEPT, http::HeaderValue::from_static(canonical));
    }

    /// What the mirror makes of the upstream's answer to `path` (the client's path) for the
    /// entry at `url` (`scheme://authority/path?query`): a rewritten document, a verified
    /// artifact, or the answer as it came. A response the mirror does not touch is not read.
    ///
    /// An artifact is held whole to be checked while `room` allows as many bytes (the fills'
    /// memory budget), else checked as it streams.
    ///
    /// # Errors
    /// [`MirrorError`] when an artifact fails its check or cannot be read to be checked; the
    /// refusal is counted for the registry.
    pub async fn on_response(
        &self,
        (path, url): (&str, &str),
        mut head: Head,
        body: OriginBody,
        (body_read_timeout, held): (Duration, &mut dyn room::HeldBytes),
    ) -> Result<(Head, OriginBody), MirrorError> {
        let Some(registry) = self.registry_for(path) else {
            return Ok((head, body));
        };
        if registry.is_simple_api(path) || registry.is_npm_document(path) {
            // The page is one of several forms of its URL, whether the upstream says so
            // or not: a stored JSON page must never answer a client that asked for HTML,
            // nor an abbreviated npm document one that needs the full one.
            crate::cache::key::vary_on(&mut head.headers, "Accept");
        }
        if head.status != StatusCode::OK {
            return Ok((head, body));
        }
        let content_type = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let outcome = match registry.classify(path, &content_type) {
            Handling::Document(document) => {
                // Waiting for room is bounded by half the body-read timeout (see `room`).
                let room = self.document_pass.room(held, body_read_timeout / 2);
                self.document(
                    registry,
                    document,
                    (path, url),
                    &mut head,
                    body,
                    (body_read_timeout, room),
                )
                .await
            }
            Handling::Artifact => match self.digests.expected(path) {
                None => Ok(body),
                Some(expected) => {
                    let checked = (registry, &expected);
                    let verified = self
                        .verified(checked, &head, body, (body_read_timeout, held))
                        .await;
                    if registry.kind == RegistryKind::Debian && debian::is_by_hash(path) {
                        // apt fetches its indexes by hash when the archive's `Release`
                        // says `Acquire-By-Hash: yes`, as Debian's does: one that turns out
                        // to be a `Packages` index is read on its way to apt, so the
                        // packages it lists are checked from the first download.
                        verified.map(|body| {
                            self.reading_packages(registry, (Coding::Sniffed, true), body)
                        })
                    } else {
                        verified
                    }
                }
            },
        };
        if outcome.is_ok() {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            registry
                .stats
                .last_upstream_contact
                .store(now, Ordering::Relaxed);
        }
        Ok((head, outcome?))
    }

    /// The artifact's body, checked against `expected`: held and checked whole up to
    /// `hold_max` while `room` allows, else checked as it streams ([`check`]). A gzip-coded
    /// one is held whatever `room` says: it is checked decoded, which streaming cannot do.
    async fn verified(
        &self,
        (registry, expected): (&Registry, &digests::Expected),
        head: &Head,
        body: OriginBody,
        (body_read_timeout, held): (Duration, &mut dyn room::HeldBytes),
    ) -> Result<OriginBody, MirrorError> {
        let encoded = head.headers.contains_key(header::CONTENT_ENCODING);
        let streamed = |prefix: Bytes, context, body| {
            let check = check::Check {
                expected: expected.clone(),
                registry: registry.name.clone(),
                stats: Arc::clone(&registry.stats),
            };
            let watcher = check::DigestWatcher::new(context, check);
            OriginBody::checked(check::CheckedStream::new(
                prefix,
                body,
                Some(Box::new(watcher)),
            ))
        };
        let declared = crate::cache::entry::content_length(&head.headers);
        let mut room = |len: u64| encoded || held.grow_to(len);
        let holdable = encoded
            || match declared {
                Some(len) => len <= self.hold_max && room(len),
                // Held as it arrives, while there is room.
                None => room(0),
            };
        if !holdable {
            return Ok(streamed(Bytes::new(), expected.context(), body));
        }
        let refuse = |err: MirrorError| {
            if matches!(
                err,
                MirrorError::Mismatch { .. } | MirrorError::TooLargeToVerify(_)
            ) {
                registry
                    .stats
                    .integrity_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(registry = %registry.name, error = %err, "artifact refused");
            }
            err
        };
        let mismatch = || MirrorError::Mismatch {
            algorithm: expected.algorithm.name(),
        };
        let room = ReadRoom::Asked(&mut room);
        let bytes = match read_whole(body, (self.hold_max, room), body_read_timeout).await? {
            Whole::Read(bytes) => bytes,
            Whole::TooLarge(..) if encoded => {
                return Err(refuse(MirrorError::TooLargeToVerify(self.hold_max)))
            }
            Whole::TooLarge(prefix, rest) => {
                let mut context = expected.context();
                context.update(&prefix);
                return Ok(streamed(prefix, context, rest));
            }
        };
        let verdict = held_verdict(&bytes, expected, encoded, self.hold_max).await;
        match verdict {
            decode::CodedVerdict::Matches => {}
            decode::CodedVerdict::Mismatch => return Err(refuse(mismatch())),
            decode::CodedVerdict::TooLarge => {
                return Err(refuse(MirrorError::TooLargeToVerify(self.hold_max)))
            }
        }
        Ok(OriginBody::read(bytes))
    }

    /// `body` passed on while it is read, in batches on the blocking pool, as a Debian
    /// `Packages` index and the `.deb` digests it lists recorded ([`recording`]); a
    /// `by_hash` file is read only if its text starts like one (it may be any index).
    fn reading_packages(
        &self,
        registry: &Registry,
        (coding, by_hash): (Coding, bool),
        body: OriginBody,
    ) -> OriginBody {
        let watcher = recording::PackagesWatcher::start(recording::PackagesReading {
            coding,
            by_hash,
            limit: self.rewrite_max,
            archive_root: registry.path.clone(),
            registry: registry.name.clone(),
            digests: Arc::clone(&self.digests),
        });
        OriginBody::checked(check::CheckedStream::new(
            Bytes::new(),
            body,
            Some(Box::new(watcher)),
        ))
    }

    /// Reads a document, records its digests and, for the documents clients get rewritten,
    /// replaces the body and the validators. What it holds meanwhile is counted in `room`,
    /// waiting for room when there is none ([`room`]).
    async fn document(
        &self,
        registry: &Registry,
        document: Document,
        (path, url): (&str, &str),
        head: &mut Head,
        body: OriginBody,
        (body_read_timeout, mut room): (Duration, room::DocumentRoom<'_>),
    ) -> Result<OriginBody, MirrorError> {
        let gzip_coded = gzip_coded(head);
        if document == Document::DebianPackages {
            // Read for its digests only, as it goes on as it came.
            return Ok(match gzip_coded {
                None => self.reading_packages(registry, (Coding::Sniffed, false), body),
                Some(true) => self.reading_packages(registry, (Coding::Gzip, false), body),
                Some(false) => body,
            });
        }
        let declared = crate::cache::entry::content_length(&head.headers);
        if declared.is_some_and(|len| len > self.rewrite_max) {
            tracing::warn!(registry = %registry.name, path, "index document over mirror.rewrite_max: relayed as it came");
            return Ok(body);
        }
        let waited = ReadRoom::Waited(&mut room);
        let raw = match read_whole(body, (self.rewrite_max, waited), body_read_timeout).await? {
            Whole::Read(raw) => raw,
            Whole::TooLarge(prefix, rest) => {
                tracing::warn!(registry = %registry.name, path, "index document over mirror.rewrite_max: relayed as it came");
                return Ok(OriginBody::checked(check::CheckedStream::new(
                    prefix, rest, None,
                )));
            }
        };
        let body = self
            .held_document(registry, document, (path, url), (head, raw), &mut room)
            .await;
        if room.has_waited() {
            registry
                .stats
                .documents_waited
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(body)
    }

    /// [`Mirror::document`] once its body `raw` is held whole: the body that goes on.
    async fn held_document(
        &self,
        registry: &Registry,
        document: Document,
        (path, url): (&str, &str),
        (head, raw): (&mut Head, Bytes),
        room: &mut room::DocumentRoom<'_>,
    ) -> OriginBody {
        let gzip_coded = gzip_coded(head);
        // What the document holds with a text of `text_len`: its body, the text when it is
        // decoded from the body, and the rewritten copy made beside the text (about the
        // text's size).
        let holding = |text_len: u64, decoded: bool| {
            let copies = u64::from(decoded) + u64::from(document.is_rewritten());
            raw.len() as u64 + text_len * copies
        };
        let text = match gzip_coded {
            None => raw.clone(),
            Some(true) => {
                // Counted before it is decoded, at the length its trailer states (within
                // the limit), and again below at the length it has.
                let stated =
                    decode::gzip_stated_len(&raw).map_or(0, |len| len.min(self.rewrite_max));
                room.grow_to(holding(stated, true)).await;
                match decode::off_runtime(&raw, self.rewrite_max, decode::gunzipped).await {
                    Some(text) => text,
                    None => {
                        tracing::warn!(registry = %registry.name, path, "gzip-coded index document not decoded within mirror.rewrite_max: relayed as it came");
                        return OriginBody::read(raw);
                    }
                }
            }
            // A coding we cannot read: the document goes on untouched.
            Some(false) => return OriginBody::read(raw),
        };
        room.grow_to(holding(text.len() as u64, gzip_coded.is_some()))
            .await;
        let base = self.base_for(url);
        let job = DocumentJob {
            document,
            text,
            mounts: Arc::clone(&registry.mounts),
            base: base.clone(),
            path: path.to_string(),
            registry_path: registry.path.clone(),
            digests: Arc::clone(&self.digests),
        };
        let read = match job.run().await {
            Ok(read) => read,
            Err(err) => {
                tracing::warn!(registry = %registry.name, path, error = %err, "index document not understood: relayed as it came");
                return OriginBody::read(raw);
            }
        };
        match read.filter(|_| document.is_rewritten()) {
            Some(rewritten) => {
                registry
                    .stats
                    .documents_rewritten
                    .fetch_add(1, Ordering::Relaxed);
                rewritten_head(head, &rewritten, &base);
                OriginBody::read(rewritten)
            }
            None => OriginBody::read(raw),
        }
    }

    /// The base URL links point under: the configured one, or the entry's own scheme and
    /// authority (part of its cache key, so each Host has its own copy).
    fn base_for(&self, url: &str) -> String {
        if let Some(public) = &self.public_url {
            return public.clone();
        }
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        let end = url[after_scheme..]
            .find('/')
            .map_or(url.len(), |i| after_scheme + i);
        url[..end].to_string()
    }
}

/// Whether a response is gzip-coded: `None` when it has no `Content-Encoding`,
/// `Some(false)` for a coding the mirror cannot read.
fn gzip_coded(head: &Head) -> Option<bool> {
    head.headers
        .get(header::CONTENT_ENCODING)
        .map(|coding| coding.as_bytes().eq_ignore_ascii_case(b"gzip"))
}

/// The fields of a rewritten document: its length, no coding, and a weak validator of its
/// own; the origin's ETag is kept (under [`ORIGIN_ETAG`]) for revalidation.
fn rewritten_head(head: &mut Head, body: &Bytes, base: &str) {
    let headers = &mut head.headers;
    headers.remove(header::CONTENT_ENCODING);
    for name in ["content-md5", "content-digest", "repr-digest"] {
        headers.remove(name);
    }
    headers.remove(header::ACCEPT_RANGES);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let Some(origin_etag) = headers.remove(header::ETAG) else {
        return;
    };
    let opaque = origin_etag
        .to_str()
        .unwrap_or_default()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string();
    let base_tag = &blake3::hash(base.as_bytes()).to_hex()[..8];
    if let Ok(own) = HeaderValue::from_str(&format!("W/\"{opaque}.m{base_tag}\"")) {
        headers.insert(header::ETAG, own);
    }
    headers.insert(ORIGIN_ETAG, origin_etag);
}

/// A body read up to a limit.
enum Whole {
    Read(Bytes),
    /// Over the limit: what was read, and the rest unread.
    TooLarge(Bytes, OriginBody),
}

/// How a body read whole is given room for what it holds.
enum ReadRoom<'r, 'a> {
    /// Asked at each length: without it the reading stops, and the rest streams.
    Asked(&'r mut (dyn FnMut(u64) -> bool + Send)),
    /// Waited for (an index document: see [`room`]).
    Waited(&'r mut room::DocumentRoom<'a>),
}

/// The whole body if it has at most `max` bytes, each frame within `frame_timeout`.
async fn read_whole(
    mut body: OriginBody,
    (max, mut room): (u64, ReadRoom<'_, '_>),
    frame_timeout: Duration,
) -> Result<Whole, MirrorError> {
    let mut chunks = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(frame_timeout, body.frame()).await {
            Err(_) => return Err(MirrorError::Stalled),
            Ok(None) => break,
            Ok(Some(Err(err))) => return Err(MirrorError::Body(err.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            chunks.extend_from_slice(&data);
            let len = chunks.len() as u64;
            let has_room = len <= max
                && match &mut room {
                    ReadRoom::Asked(room) => room(len),
                    ReadRoom::Waited(room) => {
                        room.grow_to(len).await;
                        true
                    }
                };
            if !has_room {
                return Ok(Whole::TooLarge(chunks.freeze(), body));
            }
        }
    }
    Ok(Whole::Read(chunks.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror() -> Mirror {
        let config: MirrorConfig = toml::from_str(
            r#"
            [[registries]]
            name = "pypi"
            kind = "pypi"
            path = "/pypi/"
            upstream = "https://pypi.example"
            files = "https://files.example"
            [[registries]]
            name = "crates"
            kind = "cargo"
            path = "/crates/"
            upstream = "https://index.example"
            "#,
        )
        .unwrap();
        Mirror::new(&config, None).unwrap()
    }

    #[test]
    fn responses_are_classified_by_mount_and_type() {
        let mirror = mirror();
        let pypi = mirror.registry_for("/pypi/simple/x/").unwrap();
        assert_eq!(
            pypi.classify("/pypi/simple/x/", "text/html"),
            Handling::Document(Document::PypiHtml)
        );
        assert_eq!(
            pypi.classify("/pypi/simple/x/", "application/vnd.pypi.simple.v1+json"),
            Handling::Document(Document::PypiJson)
        );
        assert_eq!(
            pypi.classify("/pypi/_files/p/x.whl", "text/html"),
            Handling::Artifact
        );
        let crates = mirror.registry_for("/crates/config.json").unwrap();
        assert_eq!(
            crates.classify("/crates/config.json", "application/json"),
            Handling::Document(Document::CargoConfig)
        );
        // The sparse index's four shapes, a crate named `download` included; crate files
        // served from the index's own host (Artifactory's `dl`) are artifacts.
        for index in [
            "/crates/1/a",
            "/crates/2/ab",
            "/crates/3/a/abc",
            "/crates/se/rd/serde",
            "/crates/do/wn/download",
        ] {
            let handling = crates.classify(index, "text/plain");
            assert_eq!(
                handling,
                Handling::Document(Document::CargoIndex),
                "{index}"
            );
        }
        for artifact in [
            "/crates/artifactory/api/cargo/crates-io/v1/crates/serde/1.0.0/download",
            "/crates/serde/1.0.0/download",
            "/crates/3/ab/abc",
        ] {
            assert_eq!(
                crates.classify(artifact, "application/gzip"),
                Handling::Artifact,
                "{artifact}"
            );
        }
        assert!(mirror.registry_for("/other/").is_none());
        assert_eq!(
            mirror.base_for("http://m:8080/pypi/simple/?q"),
            "http://m:8080"
        );
    }

    /// Room as a closure says: `true` when there is room.
    struct Asked<F>(F);

    impl<F: FnMut(u64) -> bool + Send> room::HeldBytes for Asked<F> {
        fn grow_to(&mut self, len: u64) -> bool {
            (self.0)(len)
        }
        fn grow_within(&mut self, len: u64) -> bool {
            (self.0)(len)
        }
        fn force_to(&mut self, _len: u64) {}
        fn release(&mut self) {}
    }

    fn artifact_head(len: usize) -> Head {
        let response = http::Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .body(())
            .unwrap();
        response.into_parts().0
    }

    /// An artifact is held whole for its check only while the fills' memory budget has
    /// room for it (`room`): then a mismatch is refused before any byte goes on. Without
    /// room it is checked as it streams, and a mismatch ends its body as an error.
    #[tokio::test]
    async fn an_artifact_without_room_to_be_held_is_checked_as_it_streams() {
        use http_body_util::BodyExt;
        let mirror = mirror();
        let published = b"the artifact as published";
        let digest = ring::digest::digest(&ring::digest::SHA256, published);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let path = format!("/pypi/_files/by-hash/SHA256/{hex}");
        let url = format!("https://files.example/by-hash/SHA256/{hex}");
        let tampered = Bytes::from_static(b"the artifact as tampered!");
        let timeout = Duration::from_secs(5);

        let mut asked = Vec::new();
        let mut room = Asked(|len: u64| {
            asked.push(len);
            true
        });
        let held = mirror
            .on_response(
                (&path, &url),
                artifact_head(tampered.len()),
                OriginBody::read(tampered.clone()),
                (timeout, &mut room),
            )
            .await;
        assert!(matches!(held, Err(MirrorError::Mismatch { .. })));
        let len = tampered.len() as u64;
        assert!(
            !asked.is_empty() && asked.iter().all(|&asked| asked == len),
            "counted for its declared length: {asked:?}"
        );

        let (_, body) = mirror
            .on_response(
                (&path, &url),
                artifact_head(tampered.len()),
                OriginBody::read(tampered.clone()),
                (timeout, &mut Asked(|_| false)),
            )
            .await
            .expect("checked as it streams");
        assert!(body.collect().await.is_err(), "the mismatch ends the body");

        let (_, body) = mirror
            .on_response(
                (&path, &url),
                artifact_head(published.len()),
                OriginBody::read(Bytes::from_static(published)),
                (timeout, &mut Asked(|_| false)),
            )
            .await
            .expect("checked as it streams");
        assert_eq!(body.collect().await.unwrap().to_bytes(), &published[..]);
    }
}
