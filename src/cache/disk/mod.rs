//! The disk tier: stored responses that survive restarts and crashes.
//!
//! - [`index`]: the narrow index trait ([`index::DiskIndex`]: rows, recency, body
//!   reference counts; no paths) and its sled implementation, in `index/`;
//! - [`blobs`]: body files, `blobs/ab/abcdef…` one per distinct blake3 digest (identical
//!   bodies stored once, every read verifiable), and `tmp/` for bodies being written;
//! - [`packs`]: small bodies appended to shared pack files, `packs/00000001.pack`, each
//!   recorded in its row;
//! - [`store`]: the two kept in step under one lock; [`sweep`]: cleaning up after a crash;
//! - [`reserve`]: spare room given up for the index when the file system fills;
//! - [`read`]: the verified streaming reader shared by disk hits and fill followers;
//! - [`readers`]: the threads that serve reads from a queue;
//! - this module: [`DiskTier`], the async face the cache uses.
//!
//! # Crash safety
//! A body is written to `tmp/`, optionally fsynced, renamed into `blobs/` (a small one
//! appended to a pack), and only then indexed; removal unindexes first and deletes the file
//! last. So after `kill -9` at any moment the index names only complete files, and what is
//! left over is an orphan file, dead bytes in a pack (or a row whose body a power cut
//! lost), which [`DiskStore::sweep`] and pack compaction clean up and a read treats as a
//! miss. Every body read is checked against its recorded check; a mismatch is reported as
//! [`ReadError::Corrupt`] and never returned.
//!
//! # Replacement
//! Least recently used first: the tick of a row moves when it is read from disk, stored,
//! or evicted from the memory tier (still in use until then). Among more than 1,024 rows
//! the victim is the oldest of sampled rows (see [`index::SledIndex`]), not an exact LRU. LRU because the disk tier sees
//! only what memory missed or let go, so recency is the signal it has; frequency-based
//! admission already failed us in memory (see `memory`).
//!
//! # Concurrency
//! sled and the file system block; [`DiskTier`] runs every call on tokio's blocking pool.
//! Mutations take one lock so reference counts and the byte total stay consistent; reads
//! take none.

pub mod blobs;
pub mod index;
pub mod invalidations;
pub mod opened;
pub mod packs;
pub mod partials;
pub mod pending;
pub mod read;
pub mod readers;
pub mod reserve;
pub mod store;
pub mod sweep;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::entry::EntryMeta;
use super::key::{PrimaryKey, VariantKey};
pub use crate::cache::purge_target::Matcher;
pub use blobs::{BlobWriter, TempBlob};
use index::BodyRecord;
pub use invalidations::{Invalidated, Invalidation};
pub use read::{verified_file_body, CorruptionHook, LostStoredBody};
pub use store::{DiskStore, NewBody, StoreLimits};
pub use sweep::SweepReport;

/// Bodies larger than this also get a digest per block of this size, so a range read
/// verifies only the blocks it touches and a streamed body is verified block by block.
pub const BLOCK: u64 = 1 << 20;

/// The check a stored body is verified against when it is read whole: XXH3-64, written
/// beside the body's blake3 digest when it is stored.
///
/// blake3 names the body (identical bodies are stored once) and stays the check for
/// records written before this one existed; but verifying 100 KiB with blake3 took 30 us
/// on the disk-hit path, a third of a hit's reader time, and XXH3 takes 5. What a read
/// guards against is accidental damage (a flipped bit, a torn or truncated write, a file
/// changed under us), which a 64-bit check catches but for one in 2^64; someone able to
/// rewrite files in the cache directory can rewrite the index's digests beside them too,
/// so a cryptographic hash bought no more there.
pub fn body_check(body: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(body)
}

/// blake3 of each [`BLOCK`] of `body`; empty when the body fits in one block (its digest is
/// then the body's).
pub fn block_digests(body: &[u8]) -> Vec<[u8; 32]> {
    if body.len() as u64 <= BLOCK {
        return Vec::new();
    }
    body.chunks(BLOCK as usize)
        .map(|block| *blake3::hash(block).as_bytes())
        .collect()
}

/// Why the disk tier failed an operation; the caller degrades to memory only.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk tier I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("disk tier index: {0}")]
    Index(#[from] sled::Error),
    /// A failed index was closed to be opened again, and is not open (yet).
    #[error("disk tier index is closed after a failure")]
    IndexClosed,
    #[error("disk tier index is inconsistent: {0}")]
    Inconsistent(&'static str),
    /// The file system is at its free-space watermark, or the body cannot fit the tier:
    /// this object is not stored on disk (the tier stays in use).
    #[error("disk tier full: object not stored")]
    Full,
    /// The directory holds files outpost did not create and no outpost mark.
    #[error("cache dir {path} is not empty and not an outpost cache (found {found}): refusing to use it, since outpost deletes files in its cache dir; give an empty or new directory")]
    NotOurs { path: PathBuf, found: String },
}

impl DiskError {
    /// Whether the file system had no room for a write (ENOSPC), from the index or a file.
    pub fn is_out_of_room(&self) -> bool {
        let source = match self {
            DiskError::Io { source, .. } | DiskError::Index(sled::Error::Io(source)) => source,
            _ => return false,
        };
        source.kind() == io::ErrorKind::StorageFull
    }
}

/// Why a stored body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file is gone (a lost write, or removed meanwhile): a miss.
    #[error("body file missing")]
    Missing,
    /// The bytes do not match the digest or length the index recorded.
    #[error("body does not match its digest")]
    Corrupt,
    #[error(transparent)]
    Disk(#[from] DiskError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Counters the disk tier moves.
#[derive(Clone, Default)]
pub struct DiskMetrics {
    pub integrity_failures: Counter,
    pub errors: Counter,
    pub degraded: Gauge,
    pub evictions: Counter,
    /// Objects not stored because the file system is at its watermark.
    pub full_refusals: Counter,
    /// Bodies not written because the writes queued before them held too many bytes.
    pub writes_skipped: Counter,
    /// Bytes held by writes queued now (bodies, metadata, tasks).
    pub write_backlog: Gauge,
    /// Invalidations missed while the tier is off, not applied yet.
    pub invalidations_pending: Gauge,
}

/// The async face of a [`DiskStore`]: every call on the blocking pool, and the switch to
/// memory-only after an I/O failure, until a probe after a back-off (doubling from
/// `retry_after` up to [`MAX_RETRY_AFTER`]) finds the disk writable again: a mirror must not
/// lose its offline copy to one full-disk moment.
#[derive(Clone)]
pub struct DiskTier {
    store: Arc<DiskStore>,
    degraded: Arc<AtomicBool>,
    /// Invalidations made while the tier is off, applied before it is used again.
    missed: Arc<parking_lot::Mutex<invalidations::Missed>>,
    metrics: DiskMetrics,
    /// Recency updates, applied in batches by one background task (each would otherwise be
    /// its own trip to the blocking pool).
    touches: Option<tokio::sync::mpsc::UnboundedSender<(PrimaryKey, VariantKey)>>,
    /// Objects up to this size are read whole (and promoted to memory); larger ones stream.
    pub memory_object_limit: u64,
    pub max_object_size: u64,
    /// First wait before probing a degraded tier.
    retry_after: std::time::Duration,
    /// Bodies up to this size are kept in the index, not in files.
    inline_max: u64,
    /// Where reads run (writes go to tokio's blocking pool); `None`: there too.
    readers: Option<Arc<readers::Readers>>,
    /// Where writes run (see [`readers`]); `None`: on tokio's blocking pool.
    writers: Option<Arc<readers::Readers>>,
    /// The most memory writes queued may hold (what they hold is `metrics.write_backlog`).
    backlog_limit: u64,
}

/// Memory held by a write queued for the disk tier, counted in its backlog until dropped.
pub struct QueuedWrite {
    backlog: Gauge,
    bytes: i64,
}

impl Drop for QueuedWrite {
    fn drop(&mut self) {
        self.backlog.dec_by(self.bytes);
    }
}

/// Reader threads: two, so one read waiting on a slow disk does not hold up the next.
const READER_THREADS: usize = 2;

/// Writer threads: one placing a body file while another commits under the store's lock.
const WRITER_THREADS: usize = 2;

/// The longest wait between probes of a degraded tier.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

impl DiskTier {
    pub fn new(
        store: Arc<DiskStore>,
        metrics: DiskMetrics,
        memory_object_limit: u64,
        max_object_size: u64,
    ) -> DiskTier {
        let missed = invalidations::Missed::counted_in(metrics.invalidations_pending.clone())
            .written_in(store.root());
        let mut tier = DiskTier {
            store,
            degraded: Arc::new(AtomicBool::new(false)),
            missed: Arc::new(parking_lot::Mutex::new(missed)),
            metrics,
            touches: None,
            memory_object_limit,
            max_object_size,
            retry_after: std::time::Duration::from_secs(30),
            inline_max: 0,
            readers: match readers::Readers::start(READER_THREADS, "read") {
                Ok(readers) => Some(Arc::new(readers)),
                Err(err) => {
                    tracing::warn!(error = %err, "disk tier: no reader threads; reads use the blocking pool");
                    None
                }
            },
            writers: match readers::Readers::start(WRITER_THREADS, "write") {
                Ok(writers) => Some(Arc::new(writers)),
                Err(err) => {
                    tracing::warn!(error = %err, "disk tier: no writer threads; writes use the blocking pool");
                    None
                }
            },
            backlog_limit: u64::MAX,
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            let store = Arc::downgrade(&tier.store);
            runtime.spawn(apply_touches(store, Arc::clone(&tier.degraded), receiver));
            tier.touches = Some(sender);
        }
        tier
    }

    /// Records facts kept beside the cache (see [`index::DiskIndex::put_notes`]); a
    /// failure only loses them.
    pub fn put_notes(&self, notes: &[(Vec<u8>, Vec<u8>)]) {
        if let Err(err) = self.store.index().and_then(|index| index.put_notes(notes)) {
            tracing::warn!(error = %err, "disk tier: notes not recorded");
        }
    }

    /// A fact recorded with [`DiskTier::put_notes`].
    pub fn note(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.store
            .index()
            .and_then(|index| index.note(key))
            .ok()
            .flatten()
    }

    /// Whether the tier is in use (not degraded by an earlier failure).
    pub fn is_available(&self) -> bool {
        !self.degraded.load(Ordering::Relaxed)
    }

    pub fn usage(&self) -> (u64, u64) {
        self.store.usage()
    }

    /// Memory the tier holds in the process, estimated: the index's fixed part
    /// ([`index::INDEX_BASE_MEMORY`]) and its rows ([`index::INDEX_MEMORY_PER_ROW`]), and
    /// bodies queued for writing up to the backlog's limit (a limit, so that the memory
    /// tier need not shrink and grow with every burst).
    pub fn memory_held(&self) -> u64 {
        let (rows, _) = self.store.usage();
        let backlog = match self.backlog_limit {
            u64::MAX => 0,
            limit => limit,
        };
        rows.saturating_mul(index::INDEX_MEMORY_PER_ROW)
            .saturating_add(index::INDEX_BASE_MEMORY)
            .saturating_add(backlog)
    }

    /// Where the body with `digest` lives.
    pub fn blob_path(&self, digest: &[u8; 32]) -> PathBuf {
        self.store.blob_path(digest)
    }

    /// The same tier, first probing `retry_after` after a failure.
    pub fn with_retry_after(mut self, retry_after: std::time::Duration) -> DiskTier {
        self.retry_after = retry_after;
        self
    }

    /// The same tier, keeping bodies up to `inline_max` bytes in the index.
    pub fn with_inline_max(mut self, inline_max: u64) -> DiskTier {
        self.inline_max = inline_max;
        self
    }

    /// The same tier, letting hits be sent from verified open files (`cache.disk_sendfile`).
    pub fn with_sendfile(self, sendfile: bool) -> DiskTier {
        self.store.blobs.opened.enable(sendfile);
        self
    }

    /// The verified open files hits may be sent from (see [`opened`]), when
    /// `cache.disk_sendfile` is on.
    pub fn sendfile_bodies(&self) -> Option<&opened::OpenedBodies> {
        let opened = &self.store.blobs.opened;
        opened.is_enabled().then_some(opened)
    }

    /// The same tier, queueing at most `limit` bytes of bodies for writing.
    pub fn with_backlog_limit(mut self, limit: u64) -> DiskTier {
        self.backlog_limit = limit;
        self
    }

    /// Counts a write holding `bytes` of memory (its body, metadata and task) into the
    /// write backlog, or `None` (counted as skipped) when the backlog is full: a disk
    /// slower than the misses must not make the process hold every body it has not
    /// written yet. A write too large for the whole backlog goes alone.
    pub fn queue_write(&self, bytes: u64) -> Option<QueuedWrite> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let backlog = &self.metrics.write_backlog;
        let queued = u64::try_from(backlog.inc_by(bytes)).unwrap_or(0);
        if queued > 0 && queued.saturating_add(bytes as u64) > self.backlog_limit {
            backlog.dec_by(bytes);
            self.metrics.writes_skipped.inc();
            return None;
        }
        Some(QueuedWrite {
            backlog: backlog.clone(),
            bytes,
        })
    }

    /// Stops using the disk, loudly, once, and starts probing it to come back.
    pub fn degrade(&self, err: &DiskError) {
        self.metrics.errors.inc();
        if !self.degraded.swap(true, Ordering::Relaxed) {
            self.metrics.degraded.set(1);
            tracing::error!(error = %err, retry_after = ?self.retry_after, "disk tier failed: continuing with the memory tier only until it works again");
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let store = Arc::downgrade(&self.store);
                    runtime.spawn(come_back(store, self.switch(), self.retry_after));
                }
                Err(_) => tracing::warn!("no runtime: the disk tier stays off until restart"),
            }
        }
    }

    /// What switching the tier back on takes (see [`invalidations::Switch`]).
    fn switch(&self) -> invalidations::Switch {
        invalidations::Switch {
            degraded: Arc::clone(&self.degraded),
            missed: Arc::downgrade(&self.missed),
            degraded_gauge: self.metrics.degraded.clone(),
        }
    }

    /// A page of the index that fails sled's check, met while running: what it holds is
    /// lost (a miss, or an object not stored), the rest is not. Degrading for it, as for an
    /// I/O failure, made the tier flap: the probe's flush works, the tier came back, and
    /// the next request for a row on that page took it off again, offline copy and all.
    /// Counted as an integrity failure; logged loudly once.
    fn report_corrupt_index(&self, err: &DiskError) {
        self.metrics.integrity_failures.inc();
        if !self.store.corruption_reported() {
            tracing::error!(error = %err, "disk tier: the index has a corrupt page; what it held is refetched on demand and the rest is still served; to start the index afresh, stop outpost and delete the cache dir's index/ (its bodies are then swept)");
        } else {
            tracing::debug!(error = %err, "disk tier: corrupt index page met again");
        }
    }

    /// Counts and logs a body that failed verification (the caller removes it).
    pub fn report_corrupt(&self, url: &str) {
        self.metrics.integrity_failures.inc();
        tracing::warn!(%url, "disk tier: stored body does not match its digest; removed, will refetch");
    }

    async fn run<T, F>(&self, op: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(&DiskStore) -> Result<T, DiskError> + Send + 'static,
    {
        self.dispatch(op, false).await
    }

    /// As [`DiskTier::run`], for an operation that only reads: on the reader threads.
    async fn read<T, F>(&self, op: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(&DiskStore) -> Result<T, DiskError> + Send + 'static,
    {
        self.dispatch(op, true).await
    }

    async fn dispatch<T, F>(&self, op: F, is_read: bool) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(&DiskStore) -> Result<T, DiskError> + Send + 'static,
    {
        if !self.is_available() {
            return None;
        }
        let store = Arc::clone(&self.store);
        let threads = if is_read {
            &self.readers
        } else {
            &self.writers
        };
        let outcome = match threads {
            Some(threads) => threads.run(move || op(&store)).await,
            None => tokio::task::spawn_blocking(move || op(&store)).await.ok(),
        };
        match outcome {
            Some(Ok(value)) => Some(value),
            Some(Err(DiskError::Full)) => {
                self.metrics.full_refusals.inc();
                None
            }
            Some(Err(err @ DiskError::Index(sled::Error::Corruption { .. }))) => {
                self.report_corrupt_index(&err);
                None
            }
            Some(Err(err)) => {
                self.degrade(&err);
                None
            }
            None => {
                tracing::error!("disk tier task failed");
                None
            }
        }
    }

    pub async fn variants(&self, key: PrimaryKey) -> Vec<EntryMeta> {
        self.read(move |s| s.variants(&key))
            .await
            .unwrap_or_default()
    }

    /// Stores `meta` with `body` (`None`: only the headers changed). Returns the resources
    /// evicted for room (`None` when the tier failed).
    pub async fn store(&self, meta: EntryMeta, body: Option<Bytes>) -> Option<Vec<PrimaryKey>> {
        let evictions = self.metrics.evictions.clone();
        let inline_max = self.inline_max;
        self.run(move |s| {
            let body = match body {
                Some(small) if small.len() as u64 <= inline_max => Some(NewBody::Inline(small)),
                // A new row for a body in a file already (a 304 that re-keys an entry, a
                // variant validated by another's tag): the row names that file, and
                // writing the body again only to discard it as a duplicate is skipped.
                // (Were the file released meanwhile, the row is not indexed: a miss.)
                Some(_) if s.index()?.has_body(&meta.body_digest)? => None,
                Some(large) => Some(NewBody::File(s.write_temp(&large)?)),
                None => None,
            };
            let evicted = s.commit(&meta, body)?;
            evictions.inc_by(evicted.len() as u64);
            Ok(evicted)
        })
        .await
    }

    /// Indexes a body already written to a temporary file by a streaming fill. Returns the
    /// resources evicted for room (`None` when the tier failed; the file is removed).
    pub async fn commit_temp(&self, meta: EntryMeta, temp: TempBlob) -> Option<Vec<PrimaryKey>> {
        if !self.is_available() {
            self.store.blobs.discard(&temp);
            return None;
        }
        let evictions = self.metrics.evictions.clone();
        self.run(move |s| {
            let evicted = s.commit(&meta, Some(NewBody::File(temp)))?;
            evictions.inc_by(evicted.len() as u64);
            Ok(evicted)
        })
        .await
    }

    pub async fn remove_variant(&self, key: PrimaryKey, variant: VariantKey) {
        self.run(move |s| s.remove_variant(&key, &variant)).await;
    }

    /// Queues a recency update (applied in the background, in batches).
    pub fn touch_later(&self, key: PrimaryKey, variant: VariantKey) {
        if let Some(touches) = &self.touches {
            let _ = touches.send((key, variant));
        }
    }

    /// Everything a memory miss needs from disk in one trip to the blocking pool: the
    /// stored variants, and for the one `select` picks, its body (verified) when it is at
    /// most `inline_limit` bytes, with the bodies of its encoded variants. A corrupt or
    /// missing body removes its row (and a corrupt one is counted).
    pub async fn load<F>(&self, key: PrimaryKey, select: F, inline_limit: u64) -> Option<Loaded>
    where
        F: FnOnce(&[EntryMeta]) -> Option<usize> + Send + 'static,
    {
        // A read (removing a row whose body turns out corrupt or missing is the rare write).
        let loaded = self
            .read(move |s| {
                let (metas, packed): (Vec<EntryMeta>, Vec<Option<BodyRecord>>) = s
                    .stored_variants(&key)?
                    .into_iter()
                    .map(|variant| (variant.meta, variant.packed))
                    .unzip();
                let Some(index) = select(&metas) else {
                    return Ok(None);
                };
                let selected = metas[index].clone();
                let mut corrupt = Vec::new();
                let mut read = |at: usize| -> Result<Option<(Bytes, bool)>, DiskError> {
                    let meta = &metas[at];
                    match s.read_body_of(meta, packed[at].clone()) {
                        Ok(read) => Ok(Some(read)),
                        Err(ReadError::Disk(err)) => Err(err),
                        Err(other) => {
                            if matches!(other, ReadError::Corrupt) {
                                corrupt.push(meta.url.clone());
                            }
                            s.remove_variant(&meta.key, &meta.variant)?;
                            Ok(None)
                        }
                    }
                };
                // A small body (packed: its row says so) is read whole, whatever the limit.
                let (body, blocks, in_file) = if selected.body_len <= inline_limit
                    || packed[index].is_some()
                    || s.is_inline(&selected)
                {
                    match read(index)? {
                        Some((body, in_file)) => (Some(body), None, in_file),
                        None => return Ok(Some((None, corrupt))),
                    }
                } else {
                    (None, s.blocks(&selected.body_digest)?, true)
                };
                let mut encoded = Vec::new();
                for at in (0..metas.len()).filter(|&at| {
                    metas[at]
                        .derivation
                        .is_some_and(|d| d.source_digest == selected.body_digest)
                        && metas[at].body_len <= inline_limit
                }) {
                    if let Some((body, _)) = read(at)? {
                        encoded.push((metas[at].clone(), body));
                    }
                }
                Ok(Some((
                    Some(Loaded {
                        selected,
                        blocks,
                        body,
                        in_file,
                        encoded,
                    }),
                    corrupt,
                )))
            })
            .await??;
        let (loaded, corrupt) = loaded;
        for url in corrupt {
            self.report_corrupt(&url);
        }
        if let Some(loaded) = &loaded {
            // Recency is written in the background, in batches: a read's trip to the
            // blocking pool takes no write lock and writes nothing to the index.
            self.touch_later(loaded.selected.key, loaded.selected.variant);
        }
        loaded
    }

    pub async fn keys_where<P>(&self, predicate: P) -> Vec<PrimaryKey>
    where
        P: Fn(&EntryMeta) -> bool + Send + 'static,
    {
        self.run(move |s| s.keys_where(&predicate))
            .await
            .unwrap_or_default()
    }

    pub async fn sweep(&self) -> Option<SweepReport> {
        self.run(|s| s.sweep()).await
    }

    pub async fn flush(&self) {
        self.run(|s| s.flush()).await;
    }

    /// A streaming writer for a body of about `expected` bytes, too large to hold in
    /// memory; `None` when the tier cannot take it.
    pub async fn blob_writer(&self, expected: u64) -> Option<BlobWriter> {
        self.run(move |s| s.blob_writer(expected)).await
    }
}

/// What [`DiskTier::load`] found.
pub struct Loaded {
    pub selected: EntryMeta,
    /// Block digests of a selected body left in its file.
    pub blocks: Option<Vec<[u8; 32]>>,
    /// The selected body, when it was small enough to read whole (else it stays in its file).
    pub body: Option<Bytes>,
    /// Whether the selected body has a file of its own (not in a pack or the index).
    pub in_file: bool,
    /// Encoded variants of the selected body, with their bodies.
    pub encoded: Vec<(EntryMeta, Bytes)>,
}

/// Rows moved to the recent end within the current window ([`TOUCH_WINDOW`]): another
/// touch of one of them changes nothing eviction would notice. Without this, a hot set that
/// fits the disk tier had its rows rewritten on every hit (three index writes each: a
/// twelfth of a 100 KiB disk hit's CPU), however recently they had been moved.
#[derive(Default)]
struct RecentTouches {
    rows: std::collections::HashSet<(PrimaryKey, VariantKey)>,
    window_start: Option<std::time::Instant>,
}

/// How long a touched row counts as recent enough.
const TOUCH_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
/// Rows remembered per window at most (about 7 MiB): a window that sees more distinct rows
/// ends early, so the set stays bounded however many rows are hit in a second.
const TOUCH_WINDOW_ROWS: usize = 65_536;

impl RecentTouches {
    /// Drops from `rows` those touched in this window (and repeats within `rows`); the rest
    /// count as touched now.
    fn keep_new(&mut self, rows: &mut Vec<(PrimaryKey, VariantKey)>, now: std::time::Instant) {
        let expired = self.rows.len() >= TOUCH_WINDOW_ROWS
            || self
                .window_start
                .is_none_or(|start| now.duration_since(start) >= TOUCH_WINDOW);
        if expired {
            self.rows.clear();
            self.window_start = Some(now);
        }
        rows.retain(|row| self.rows.insert(*row));
    }
}

/// Probes a degraded tier after a back-off (doubling from `retry_after` up to
/// [`MAX_RETRY_AFTER`]) until a probe succeeds and what it missed is applied (see
/// [`DiskStore::recover`]), which puts it back in use. Holds the store weakly while it
/// waits, so that a closed cache lets go of its directory (and sled's lock on it).
async fn come_back(
    store: std::sync::Weak<DiskStore>,
    switch: invalidations::Switch,
    retry_after: std::time::Duration,
) {
    let mut wait = retry_after;
    loop {
        tokio::time::sleep(wait).await;
        let (Some(store), 1..) = (store.upgrade(), switch.missed.strong_count()) else {
            return;
        };
        let switch = switch.clone();
        match tokio::task::spawn_blocking(move || store.recover(&switch)).await {
            Ok(Ok(())) => {
                tracing::warn!("disk tier works again: back in use");
                return;
            }
            Ok(Err(err)) => {
                wait = (wait * 2).min(MAX_RETRY_AFTER);
                tracing::warn!(error = %err, next_probe = ?wait, "disk tier still failing");
            }
            Err(join) => {
                tracing::error!(error = %join, "disk tier probe failed to run");
                return;
            }
        }
    }
}

/// Applies queued recency updates in batches: one blocking call per batch. Holds the store
/// weakly, so a closed cache is not kept open by its queue.
async fn apply_touches(
    store: std::sync::Weak<DiskStore>,
    degraded: Arc<AtomicBool>,
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<(PrimaryKey, VariantKey)>,
) {
    let mut batch = Vec::with_capacity(256);
    let mut recent = RecentTouches::default();
    while receiver.recv_many(&mut batch, 256).await > 0 {
        let mut rows = std::mem::take(&mut batch);
        if degraded.load(Ordering::Relaxed) {
            continue;
        }
        recent.keep_new(&mut rows, std::time::Instant::now());
        if rows.is_empty() {
            continue;
        }
        let Some(store) = store.upgrade() else {
            return;
        };
        let applied = tokio::task::spawn_blocking(move || {
            rows.iter()
                .try_for_each(|(key, variant)| store.touch(key, variant))
        })
        .await;
        if let Ok(Err(err)) = applied {
            tracing::debug!(error = %err, "disk tier: recency update failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::StoredResponse;
    use std::fs;

    /// A page of the index that fails sled's check while running (bit rot under an open
    /// index) costs the rows on it, not the tier: reads of those rows are misses, counted as
    /// integrity failures, the rest are served, and the tier stays in use. Before, the
    /// first such read switched the tier off; the probe, whose flush works, switched it
    /// back on; and the next read of that page switched it off again, offline copy and all.
    #[tokio::test]
    async fn a_corrupt_index_page_costs_its_rows_not_the_tier() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<_> = (0..40_000)
            .map(|i| {
                crate::cache::entry::testing::entry(&format!("/e/{i}"), vec![(i % 251) as u8; 600])
            })
            .collect();
        {
            let store = DiskStore::open(dir.path(), 1 << 34, false).unwrap();
            for stored in &entries {
                store.commit_inline(stored);
            }
            store.flush().unwrap();
        }
        // Opened (the log read back into sled's page table), then damaged on disk before
        // any row is read: the pages are read from the file when first asked for.
        let store = Arc::new(DiskStore::open(dir.path(), 1 << 34, false).unwrap());
        let db = dir.path().join("index").join("db");
        let mut bytes = fs::read(&db).unwrap();
        for at in (bytes.len() / 4..bytes.len() * 3 / 4).step_by(40_000) {
            bytes[at] ^= 0xff;
        }
        fs::write(&db, &bytes).unwrap();
        let metrics = DiskMetrics::default();
        let tier = DiskTier::new(store, metrics.clone(), 1 << 20, 1 << 30);
        let mut served = 0;
        for stored in &entries {
            if !tier.variants(stored.meta.key).await.is_empty() {
                served += 1;
            }
        }
        assert!(tier.is_available(), "the tier stays in use");
        assert!(metrics.integrity_failures.get() > 0, "a page was damaged");
        assert!(served > entries.len() * 9 / 10, "served {served}");
        assert!(served + metrics.integrity_failures.get() as usize >= entries.len());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_file_system_is_told_apart_from_other_failures() {
        const ENOSPC: i32 = 28;
        let full = || io::Error::from_raw_os_error(ENOSPC);
        assert!(DiskError::Index(sled::Error::Io(full())).is_out_of_room());
        let path = PathBuf::from("tmp/x.part");
        let source = full();
        assert!(DiskError::Io { path, source }.is_out_of_room());
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(!DiskError::Index(sled::Error::Io(denied)).is_out_of_room());
        assert!(!DiskError::Full.is_out_of_room());
    }

    fn entry(path: &str, body: &'static [u8]) -> StoredResponse {
        crate::cache::entry::testing::entry(path, Bytes::from_static(body))
    }

    fn store_entry(store: &DiskStore, entry: &StoredResponse) {
        let temp = store.write_temp(entry.body.as_bytes().unwrap()).unwrap();
        store
            .commit(&entry.meta, Some(NewBody::File(temp)))
            .unwrap();
    }

    /// A small body kept in the index: read back (verified) after reopening, no file
    /// made, and gone with its last row.
    #[test]
    fn inline_bodies_live_in_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let a = entry("/small", b"a small body");
        let b = entry("/same", b"a small body");
        {
            let store = DiskStore::open(dir.path(), 1 << 20, false).unwrap();
            for stored in [&a, &b] {
                store.commit_inline(stored);
            }
            assert!(!store.blob_path(&a.meta.body_digest).exists());
            store.flush().unwrap();
        }
        let store = DiskStore::open(dir.path(), 1 << 20, false).unwrap();
        let report = store.sweep().unwrap();
        assert_eq!(report.rows_without_body, 0, "inline rows have their body");
        let metas = store.variants(&a.meta.key).unwrap();
        assert_eq!(&store.read_body(&metas[0]).unwrap()[..], b"a small body");
        // Freshened (new headers, same body): the row keeps its packed body.
        store.commit(&metas[0], None).unwrap();
        let metas = store.variants(&a.meta.key).unwrap();
        assert_eq!(&store.read_body(&metas[0]).unwrap()[..], b"a small body");
        store.remove(&a.meta.key).unwrap();
        assert!(store.is_inline(&b.meta), "/same keeps its own");
        store.remove(&b.meta.key).unwrap();
        assert!(!store.is_inline(&b.meta));
        assert_eq!(store.usage(), (0, 0));
    }

    fn store_packed(store: &DiskStore, path: &str, body: Vec<u8>) -> StoredResponse {
        let stored = crate::cache::entry::testing::entry(path, body);
        store.commit_inline(&stored);
        stored
    }

    /// Once a closed pack is mostly released, its live bodies move to the current pack
    /// and it is deleted; every remaining body reads back intact, after reopening too.
    #[test]
    fn a_mostly_released_pack_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let body_len = 8 << 10;
        let count = (packs::PACK_SIZE / body_len) as usize + 10;
        let body = |n: usize| -> Vec<u8> {
            let mut body = vec![(n % 251) as u8; body_len as usize];
            body[..8].copy_from_slice(&(n as u64).to_le_bytes());
            body
        };
        let first_pack = dir.path().join("packs/00000001.pack");
        let kept: Vec<StoredResponse> = {
            let store = DiskStore::open(dir.path(), 1 << 30, false).unwrap();
            let stored: Vec<_> = (0..count)
                .map(|n| store_packed(&store, &format!("/{n}"), body(n)))
                .collect();
            assert!(dir.path().join("packs/00000002.pack").exists());
            store.sweep().unwrap();
            // Three of every four bodies of the first pack go.
            for (n, gone) in stored.iter().enumerate().filter(|(n, _)| n % 4 != 0) {
                assert!(n < count);
                store.remove(&gone.meta.key).unwrap();
                if !first_pack.exists() {
                    break;
                }
            }
            assert!(!first_pack.exists(), "compacted once half released");
            let kept: Vec<StoredResponse> = stored
                .into_iter()
                .filter(|s| !store.variants(&s.meta.key).unwrap().is_empty())
                .collect();
            for stored in &kept {
                let read = store.read_body(&stored.meta).unwrap();
                assert_eq!(read, stored.body.as_bytes().unwrap(), "{}", stored.meta.url);
            }
            store.flush().unwrap();
            kept
        };
        let store = DiskStore::open(dir.path(), 1 << 30, false).unwrap();
        let report = store.sweep().unwrap();
        assert_eq!(report.rows_without_body, 0);
        assert_eq!(report.entries, kept.len() as u64);
        for stored in &kept {
            let meta = &store.variants(&stored.meta.key).unwrap()[0];
            assert_eq!(
                store.read_body(meta).unwrap(),
                stored.body.as_bytes().unwrap()
            );
        }
    }

    /// A packed body whose bytes changed is refused; one a power cut cut off (the pack
    /// is shorter than recorded) is removed by the sweep.
    #[test]
    fn damaged_or_lost_packed_bodies_are_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 30, false).unwrap();
        let a = store_packed(&store, "/a", b"first small body".to_vec());
        let b = store_packed(&store, "/b", b"second small body".to_vec());
        let pack = dir.path().join("packs/00000001.pack");
        let mut bytes = fs::read(&pack).unwrap();
        bytes[3] ^= 1;
        fs::write(&pack, &bytes).unwrap();
        assert!(matches!(store.read_body(&a.meta), Err(ReadError::Corrupt)));
        assert_eq!(store.read_body(&b.meta).unwrap(), &b"second small body"[..]);
        let file = fs::OpenOptions::new().write(true).open(&pack).unwrap();
        file.set_len(20).unwrap();
        assert!(matches!(store.read_body(&b.meta), Err(ReadError::Corrupt)));
        let report = store.sweep().unwrap();
        assert_eq!(report.rows_without_body, 1, "b's bytes are gone");
        assert!(store.variants(&b.meta.key).unwrap().is_empty());
    }

    #[test]
    fn stores_reads_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let a = entry("/a", b"alpha");
        {
            let store = DiskStore::open(dir.path(), 1 << 30, false).unwrap();
            store_entry(&store, &a);
            store.flush().unwrap();
        }
        let store = DiskStore::open(dir.path(), 1 << 30, false).unwrap();
        let variants = store.variants(&a.meta.key).unwrap();
        assert_eq!(variants.len(), 1);
        assert_eq!(store.read_body(&variants[0]).unwrap(), &b"alpha"[..]);
        assert_eq!(store.usage().0, 1);
    }

    #[test]
    fn identical_bodies_are_stored_once_and_kept_while_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 30, false).unwrap();
        let (a, b) = (entry("/a", b"same"), entry("/b", b"same"));
        store_entry(&store, &a);
        store_entry(&store, &b);
        let shard = store.blob_path(&a.meta.body_digest);
        assert_eq!(fs::read_dir(shard.parent().unwrap()).unwrap().count(), 1);
        store.remove(&a.meta.key).unwrap();
        assert!(shard.exists(), "still referenced by /b");
        store.remove(&b.meta.key).unwrap();
        assert!(!shard.exists());
        // Re-storing the same row twice keeps one reference.
        store_entry(&store, &a);
        store_entry(&store, &a);
        store.remove(&a.meta.key).unwrap();
        assert!(!shard.exists());
    }

    /// Re-storing a row with the same body (a response freshened by a 304) keeps the body
    /// file: the new reference is taken before the replaced row's is released.
    #[test]
    fn freshening_a_row_keeps_its_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 30, false).unwrap();
        let a = entry("/a", b"alpha");
        store_entry(&store, &a);
        store.commit(&a.meta, None).unwrap();
        assert_eq!(store.read_body(&a.meta).unwrap(), &b"alpha"[..]);
        store_entry(&store, &a);
        assert_eq!(store.read_body(&a.meta).unwrap(), &b"alpha"[..]);
        store.remove(&a.meta.key).unwrap();
        assert!(!store.blob_path(&a.meta.body_digest).exists());
    }

    #[test]
    fn a_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 30, false).unwrap();
        let a = entry("/a", b"alpha");
        store_entry(&store, &a);
        let path = store.blob_path(&a.meta.body_digest);
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(store.read_body(&a.meta), Err(ReadError::Corrupt)));
        fs::remove_file(&path).unwrap();
        assert!(matches!(store.read_body(&a.meta), Err(ReadError::Missing)));
    }

    /// The write backlog holds at most its limit (a body larger than the limit goes
    /// alone); what does not fit is skipped and counted; a written body frees its room.
    #[tokio::test]
    async fn the_write_backlog_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path(), 1 << 30, false).unwrap());
        let metrics = DiskMetrics::default();
        let tier = DiskTier::new(store, metrics.clone(), 1 << 20, 1 << 30).with_backlog_limit(100);
        let first = tier.queue_write(60).expect("room");
        assert!(tier.queue_write(50).is_none(), "over the limit");
        let second = tier.queue_write(40).expect("exactly at the limit");
        assert_eq!(metrics.writes_skipped.get(), 1);
        assert_eq!(
            metrics.write_backlog.get(),
            100,
            "the gauge shows what is queued"
        );
        drop((first, second));
        assert_eq!(metrics.write_backlog.get(), 0);
        let alone = tier.queue_write(500).expect("alone, whatever its size");
        assert!(tier.queue_write(1).is_none());
        drop(alone);
        assert!(tier.queue_write(1).is_some());
    }

    /// Repeated touches of a row within a window are applied once; a new window applies
    /// them again.
    #[test]
    fn touches_within_a_window_are_applied_once() {
        let row = |n: u8| (PrimaryKey([n; 32]), VariantKey([0; 32]));
        let mut recent = RecentTouches::default();
        let start = std::time::Instant::now();
        let mut batch = vec![row(1), row(2), row(1)];
        recent.keep_new(&mut batch, start);
        assert_eq!(batch, vec![row(1), row(2)]);
        let mut batch = vec![row(2), row(3)];
        recent.keep_new(&mut batch, start + TOUCH_WINDOW / 2);
        assert_eq!(batch, vec![row(3)]);
        let mut batch = vec![row(1), row(2)];
        recent.keep_new(&mut batch, start + TOUCH_WINDOW);
        assert_eq!(batch, vec![row(1), row(2)]);
    }

    /// A file longer than its body (bytes appended) is as wrong as a changed one.
    #[test]
    fn a_longer_or_shorter_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 30, false).unwrap();
        let a = entry("/a", &[7; 20_000]);
        store_entry(&store, &a);
        let path = store.blob_path(&a.meta.body_digest);
        let mut bytes = fs::read(&path).unwrap();
        bytes.push(7);
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(store.read_body(&a.meta), Err(ReadError::Corrupt)));
        bytes.truncate(19_999);
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(store.read_body(&a.meta), Err(ReadError::Corrupt)));
        // A damaged row claiming an enormous body is refused before anything is allocated.
        let mut claims_more = a.meta.clone();
        claims_more.body_len = 1 << 50;
        assert!(matches!(
            store.read_body(&claims_more),
            Err(ReadError::Corrupt)
        ));
    }

    #[test]
    fn least_recently_used_goes_first_when_full() {
        let dir = tempfile::tempdir().unwrap();
        // Room for about two rows of this size.
        let a = entry("/a", &[1; 4000]);
        let b = entry("/b", &[2; 4000]);
        let c = entry("/c", &[3; 4000]);
        let store = DiskStore::open(dir.path(), 9000, false).unwrap();
        store_entry(&store, &a);
        store_entry(&store, &b);
        store.touch(&a.meta.key, &a.meta.variant).unwrap();
        store_entry(&store, &c);
        assert_eq!(
            store.variants(&b.meta.key).unwrap().len(),
            0,
            "b was least recent"
        );
        assert_eq!(store.variants(&a.meta.key).unwrap().len(), 1);
        assert_eq!(store.variants(&c.meta.key).unwrap().len(), 1);
        assert!(store.usage().1 <= 9000);
    }

    /// `cache.disk_max_objects`: with bytes to spare, the least recently used object goes
    /// once there are more objects than allowed, the limit holds after a reopen, and what
    /// stays is served.
    #[test]
    fn the_object_limit_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<_> = ["/a", "/b", "/c", "/d"]
            .iter()
            .map(|path| entry(path, b"a small body"))
            .collect();
        let limits = StoreLimits {
            max_objects: 2,
            ..StoreLimits::default()
        };
        {
            let store = DiskStore::open(dir.path(), 1 << 30, false)
                .unwrap()
                .with_limits(limits);
            let commit = |stored: &StoredResponse| store.commit_inline(stored);
            commit(&entries[0]);
            commit(&entries[1]);
            store
                .touch(&entries[0].meta.key, &entries[0].meta.variant)
                .unwrap();
            let evicted = commit(&entries[2]);
            assert_eq!(evicted, vec![entries[1].meta.key], "b was least recent");
            assert_eq!(store.usage().0, 2);
            store.flush().unwrap();
        }
        // A lower limit at the next open: the sweep brings the store down to it.
        let store = DiskStore::open(dir.path(), 1 << 30, false)
            .unwrap()
            .with_limits(StoreLimits {
                max_objects: 1,
                ..limits
            });
        store.sweep().unwrap();
        assert_eq!(store.usage().0, 1);
        let kept = store.variants(&entries[2].meta.key).unwrap();
        assert_eq!(kept.len(), 1, "the most recent stays");
        assert_eq!(store.read_body(&kept[0]).unwrap(), &b"a small body"[..]);
    }

    /// A new row whose body is in a file already is indexed without writing the body
    /// again: it works even where no temporary file can be made.
    #[tokio::test]
    async fn a_new_row_for_a_body_on_disk_writes_no_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path(), 1 << 30, false).unwrap());
        let tier = DiskTier::new(Arc::clone(&store), DiskMetrics::default(), 1 << 20, 1 << 30);
        let body = Bytes::from(vec![7u8; 64 << 10]);
        let first = entry("/first", b"");
        let mut first_meta = first.meta.clone();
        first_meta.body_len = body.len() as u64;
        first_meta.body_digest = *blake3::hash(&body).as_bytes();
        assert!(tier
            .store(first_meta.clone(), Some(body.clone()))
            .await
            .is_some());
        // No temporary file can be made now.
        let tmp = dir.path().join("tmp");
        fs::remove_dir_all(&tmp).unwrap();
        fs::write(&tmp, b"not a directory").unwrap();
        let mut second_meta = first_meta.clone();
        second_meta.key = crate::cache::key::PrimaryKey::new("http", "example.com", "/second");
        second_meta.url = "http://example.com/second".into();
        assert!(tier
            .store(second_meta.clone(), Some(body.clone()))
            .await
            .is_some());
        assert!(tier.is_available());
        let stored = store.variants(&second_meta.key).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(store.read_body(&stored[0]).unwrap(), body);
    }

    /// A body written in odd-sized chunks gets the same block digests as one hashed whole.
    #[tokio::test]
    async fn streamed_block_digests_match_whole_body_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path(), 1 << 30, false).unwrap());
        let tier = DiskTier::new(store, DiskMetrics::default(), 1 << 20, 1 << 30);
        let body: Vec<u8> = (0..(2 * BLOCK as usize + 4321))
            .map(|i| (i % 253) as u8)
            .collect();
        let mut writer = tier.blob_writer(1 << 20).await.unwrap();
        for chunk in body.chunks(77_777) {
            writer.write(chunk).await.unwrap();
        }
        let temp = writer.finish().await.unwrap();
        assert_eq!(temp.blocks, block_digests(&body));
        assert_eq!(temp.blocks.len(), 3);
        assert_eq!(temp.digest, *blake3::hash(&body).as_bytes());
        assert!(block_digests(&body[..BLOCK as usize]).is_empty());
    }

    #[test]
    fn sweep_removes_orphans_temp_files_and_rows_without_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 30, false).unwrap();
        let (a, b) = (entry("/a", b"alpha"), entry("/b", b"beta"));
        store_entry(&store, &a);
        store_entry(&store, &b);
        // A crash between rename and indexing leaves an unindexed file...
        let orphan = store.blob_path(&[7; 32]);
        fs::create_dir_all(orphan.parent().unwrap()).unwrap();
        fs::write(&orphan, b"orphan").unwrap();
        // ...an earlier run killed mid-write leaves a temp file; a power cut can lose an
        // indexed file. A temp file this run is writing must survive.
        fs::write(dir.path().join("tmp/4242-1-0.part"), b"partial").unwrap();
        let in_use = store.write_temp(b"being written").unwrap();
        fs::remove_file(store.blob_path(&b.meta.body_digest)).unwrap();
        let report = store.sweep().unwrap();
        store
            .commit(
                &entry("/c", b"being written").meta,
                Some(NewBody::File(in_use)),
            )
            .unwrap();
        assert_eq!(report.orphan_files, 1);
        assert_eq!(report.temp_files, 1);
        assert_eq!(report.rows_without_body, 1);
        assert_eq!(report.entries, 1);
        assert!(!orphan.exists());
        assert!(store.variants(&b.meta.key).unwrap().is_empty());
        assert_eq!(store.read_body(&a.meta).unwrap(), &b"alpha"[..]);
    }
}
