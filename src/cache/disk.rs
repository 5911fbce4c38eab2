//! The disk tier: stored responses that survive restarts and crashes.
//!
//! Layout under the cache directory:
//! - `index/`: a sled database with three trees. `entries` maps primary key ++ variant key
//!   to the last-use tick and the encoded [`EntryMeta`]; `recency` maps tick ++ row key to
//!   nothing (the LRU order); `blobs` maps a body digest to its reference count and size.
//! - `blobs/ab/abcdef…`: bodies, one file per distinct blake3 digest, so identical bodies are
//!   stored once and every read can be verified.
//! - `tmp/`: bodies being written.
//!
//! # Crash safety
//! A body is written to `tmp/`, optionally fsynced, renamed into `blobs/`, and only then
//! indexed; removal unindexes first and deletes the file last. So after `kill -9` at any
//! moment the index names only complete files, and what is left over is an orphan file (or
//! a row whose file a power cut lost), which [`DiskStore::sweep`] cleans up and a read
//! treats as a miss. Every body read is checked against its digest; a mismatch is reported
//! as [`ReadError::Corrupt`] and never returned.
//!
//! # Replacement
//! Least recently used first: the tick of a row moves when it is read from disk, stored,
//! or evicted from the memory tier (still in use until then). LRU because the disk tier sees
//! only what memory missed or let go, so recency is the signal it has; frequency-based
//! admission already failed us in memory (see `memory`).
//!
//! # Concurrency
//! sled and the file system block; [`DiskTier`] runs every call on tokio's blocking pool.
//! Mutations take one lock so reference counts and the byte total stay consistent; reads
//! take none.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::entry::EntryMeta;
use super::key::{PrimaryKey, VariantKey};

/// Bytes counted per index row beyond its encoded metadata (sled's own structures).
const ROW_OVERHEAD: u64 = 128;

/// Bodies larger than this also get a digest per block of this size, so a range read
/// verifies only the blocks it touches and a streamed body is verified block by block.
pub const BLOCK: u64 = 1 << 20;

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

/// A body file written but not yet indexed.
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    pub digest: [u8; 32],
    pub len: u64,
    /// Per-block digests (empty for single-block bodies).
    pub blocks: Vec<[u8; 32]>,
}

/// What a start-up sweep found and removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub entries: u64,
    pub orphan_files: u64,
    pub rows_without_body: u64,
    pub temp_files: u64,
    pub undecodable_rows: u64,
}

/// The persistent store the cache talks to.
pub trait DiskStore: Send + Sync {
    /// Every stored variant of `key`, undecodable rows skipped (and removed).
    fn variants(&self, key: &PrimaryKey) -> Result<Vec<EntryMeta>, DiskError>;
    /// The body of `meta`, verified against its digest.
    fn read_body(&self, meta: &EntryMeta) -> Result<Bytes, ReadError>;
    /// Where the body of `digest` lives (for streaming large bodies).
    fn blob_path(&self, digest: &[u8; 32]) -> PathBuf;
    /// The per-block digests of a stored body, if it has them.
    fn blocks(&self, digest: &[u8; 32]) -> Result<Option<Vec<[u8; 32]>>, DiskError>;
    /// A writer for a new body in `tmp/`.
    fn create_temp(&self) -> Result<(fs::File, PathBuf), DiskError>;
    /// Writes `body` to a temporary file.
    fn write_temp(&self, body: &[u8]) -> Result<TempBlob, DiskError>;
    /// Indexes `meta` with its body (`None`: the body is already stored under its digest,
    /// as when only headers were freshened). Returns the resources evicted for room.
    fn commit(
        &self,
        meta: &EntryMeta,
        body: Option<TempBlob>,
    ) -> Result<Vec<PrimaryKey>, DiskError>;
    /// Removes every variant of `key`; returns how many.
    fn remove(&self, key: &PrimaryKey) -> Result<usize, DiskError>;
    /// Removes one variant.
    fn remove_variant(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError>;
    /// Moves a row to the recent end of the replacement order.
    fn touch(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError>;
    /// Primary keys with at least one variant matching `predicate`.
    fn keys_where(
        &self,
        predicate: &dyn Fn(&EntryMeta) -> bool,
    ) -> Result<Vec<PrimaryKey>, DiskError>;
    /// Stored rows and bytes.
    fn usage(&self) -> (u64, u64);
    /// Removes temporary files, body files nobody indexes and rows whose body is gone.
    fn sweep(&self) -> Result<SweepReport, DiskError>;
    /// Makes what was indexed so far durable.
    fn flush(&self) -> Result<(), DiskError>;
}

/// The sled + files implementation of [`DiskStore`].
pub struct SledStore {
    root: PathBuf,
    db: sled::Db,
    entries: sled::Tree,
    recency: sled::Tree,
    blobs: sled::Tree,
    /// Body digest -> its block digests, concatenated (multi-block bodies only).
    block_digests: sled::Tree,
    capacity: u64,
    fsync: bool,
    write_lock: Mutex<()>,
    next_tick: AtomicU64,
    bytes: AtomicU64,
    rows: AtomicU64,
    temp_counter: AtomicU64,
    /// Prefix of this opening's temporary files: the sweep removes every other one (left by
    /// an earlier run), never a file a fill of this run is writing.
    temp_prefix: String,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn row_key(key: &PrimaryKey, variant: &VariantKey) -> [u8; 64] {
    let mut row = [0u8; 64];
    row[..32].copy_from_slice(&key.0);
    row[32..].copy_from_slice(&variant.0);
    row
}

fn recency_key(tick: u64, row: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + row.len());
    out.extend_from_slice(&tick.to_be_bytes());
    out.extend_from_slice(row);
    out
}

/// A row value: tick (8 bytes) then the encoded metadata.
fn split_row(value: &[u8]) -> Option<(u64, &[u8])> {
    let (tick, meta) = value.split_at_checked(8)?;
    Some((u64::from_be_bytes(tick.try_into().ok()?), meta))
}

/// A blob record: reference count (4 bytes) then size (8 bytes).
fn blob_record(refs: u32, size: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&refs.to_be_bytes());
    out[4..].copy_from_slice(&size.to_be_bytes());
    out
}

fn parse_blob_record(value: &[u8]) -> Option<(u32, u64)> {
    if value.len() != 12 {
        return None;
    }
    Some((
        u32::from_be_bytes(value[..4].try_into().ok()?),
        u64::from_be_bytes(value[4..].try_into().ok()?),
    ))
}

fn hex(digest: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*digest).to_hex().to_string()
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(text)
        .ok()
        .map(|hash| *hash.as_bytes())
}

impl SledStore {
    /// Opens (or creates) the tier under `root` without reading any body: the byte total
    /// comes from the blob records and the row count from the index.
    ///
    /// # Errors
    /// An unusable directory or an index sled cannot open (corrupt, another process).
    pub fn open(root: &Path, capacity: u64, fsync: bool) -> Result<SledStore, DiskError> {
        for sub in ["blobs", "tmp"] {
            let path = root.join(sub);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        let db = sled::Config::new()
            .path(root.join("index"))
            .cache_capacity(32 << 20)
            .flush_every_ms(Some(200))
            .open()?;
        let entries = db.open_tree("entries")?;
        let recency = db.open_tree("recency")?;
        let blobs = db.open_tree("blobs")?;
        let block_digests = db.open_tree("blocks")?;
        let next_tick = match recency.last()? {
            Some((key, _)) if key.len() >= 8 => {
                u64::from_be_bytes(key[..8].try_into().unwrap_or([0; 8])) + 1
            }
            _ => 1,
        };
        let mut bytes = 0u64;
        for item in blobs.iter() {
            let (_, value) = item?;
            if let Some((_, size)) = parse_blob_record(&value) {
                bytes += size;
            }
        }
        let rows = entries.len() as u64;
        // Row sizes are not summed at start-up (that would read every row); an allowance
        // per row stands in until the sweep counts them.
        bytes += rows * (ROW_OVERHEAD + 512);
        Ok(SledStore {
            root: root.to_path_buf(),
            db,
            entries,
            recency,
            blobs,
            block_digests,
            capacity,
            fsync,
            write_lock: Mutex::new(()),
            next_tick: AtomicU64::new(next_tick),
            bytes: AtomicU64::new(bytes),
            rows: AtomicU64::new(rows),
            temp_counter: AtomicU64::new(0),
            temp_prefix: format!(
                "{}-{}-",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tick(&self) -> u64 {
        self.next_tick.fetch_add(1, Ordering::Relaxed)
    }

    /// Unindexes one row (caller holds the lock) and releases its body.
    fn remove_row_locked(&self, row: &[u8]) -> Result<bool, DiskError> {
        let Some(value) = self.entries.remove(row)? else {
            return Ok(false);
        };
        self.rows.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(
            (value.len() as u64 + ROW_OVERHEAD).min(self.bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        if let Some((tick, meta)) = split_row(&value) {
            self.recency.remove(recency_key(tick, row))?;
            if let Ok(meta) = EntryMeta::decode(meta) {
                self.release_blob_locked(&meta.body_digest)?;
            }
        }
        Ok(true)
    }

    /// Drops one reference to a body; deletes the file with the last one.
    fn release_blob_locked(&self, digest: &[u8; 32]) -> Result<(), DiskError> {
        let Some(record) = self.blobs.get(digest)? else {
            return Ok(());
        };
        let (refs, size) = parse_blob_record(&record).unwrap_or((1, 0));
        if refs > 1 {
            self.blobs
                .insert(digest, blob_record(refs - 1, size).as_slice())?;
            return Ok(());
        }
        self.blobs.remove(digest)?;
        self.block_digests.remove(digest)?;
        self.bytes.fetch_sub(
            size.min(self.bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_err(&path)(err)),
        }
    }

    /// Evicts least recently used rows until the tier fits its capacity.
    /// Evicts least recently used rows until the tier fits; returns the evicted resources.
    fn evict_locked(&self) -> Result<Vec<PrimaryKey>, DiskError> {
        let mut evicted = Vec::new();
        while self.bytes.load(Ordering::Relaxed) > self.capacity {
            let Some((key, _)) = self.recency.first()? else {
                break;
            };
            let row = key.get(8..).unwrap_or_default().to_vec();
            if self.remove_row_locked(&row)? {
                if let Some(primary) = row.get(..32).and_then(|k| <[u8; 32]>::try_from(k).ok()) {
                    evicted.push(PrimaryKey(primary));
                }
            } else {
                // A recency record without its row: drop it and go on.
                self.recency.remove(key)?;
            }
        }
        Ok(evicted)
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        if self.fsync {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
        }
        Ok(())
    }
}

impl DiskStore for SledStore {
    fn variants(&self, key: &PrimaryKey) -> Result<Vec<EntryMeta>, DiskError> {
        let mut out = Vec::new();
        let mut undecodable = Vec::new();
        for item in self.entries.scan_prefix(key.0) {
            let (row, value) = item?;
            match split_row(&value).map(|(_, meta)| EntryMeta::decode(meta)) {
                Some(Ok(meta)) => out.push(meta),
                _ => undecodable.push(row),
            }
        }
        if !undecodable.is_empty() {
            let _guard = self.lock();
            for row in undecodable {
                tracing::warn!("disk tier: removing an index row this build cannot read");
                self.remove_row_locked(&row)?;
            }
        }
        // Newest first, as the memory tier orders variants.
        out.sort_by_key(|meta| std::cmp::Reverse(meta.freshness.response_time));
        Ok(out)
    }

    fn read_body(&self, meta: &EntryMeta) -> Result<Bytes, ReadError> {
        let path = self.blob_path(&meta.body_digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
            Err(err) => return Err(ReadError::Disk(io_err(&path)(err))),
        };
        if bytes.len() as u64 != meta.body_len
            || *blake3::hash(&bytes).as_bytes() != meta.body_digest
        {
            return Err(ReadError::Corrupt);
        }
        Ok(Bytes::from(bytes))
    }

    fn blob_path(&self, digest: &[u8; 32]) -> PathBuf {
        let name = hex(digest);
        self.root.join("blobs").join(&name[..2]).join(name)
    }

    fn blocks(&self, digest: &[u8; 32]) -> Result<Option<Vec<[u8; 32]>>, DiskError> {
        let Some(value) = self.block_digests.get(digest)? else {
            return Ok(None);
        };
        if value.len() % 32 != 0 {
            return Ok(None);
        }
        Ok(Some(
            value
                .chunks_exact(32)
                .map(|d| {
                    let mut digest = [0u8; 32];
                    digest.copy_from_slice(d);
                    digest
                })
                .collect(),
        ))
    }

    fn create_temp(&self) -> Result<(fs::File, PathBuf), DiskError> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("tmp")
            .join(format!("{}{n}.part", self.temp_prefix));
        let file = fs::File::create(&path).map_err(io_err(&path))?;
        Ok((file, path))
    }

    fn write_temp(&self, body: &[u8]) -> Result<TempBlob, DiskError> {
        let (mut file, path) = self.create_temp()?;
        let written =
            file.write_all(body)
                .and_then(|()| if self.fsync { file.sync_all() } else { Ok(()) });
        if let Err(err) = written {
            let _ = fs::remove_file(&path);
            return Err(io_err(&path)(err));
        }
        Ok(TempBlob {
            path,
            digest: *blake3::hash(body).as_bytes(),
            len: body.len() as u64,
            blocks: block_digests(body),
        })
    }

    fn commit(
        &self,
        meta: &EntryMeta,
        body: Option<TempBlob>,
    ) -> Result<Vec<PrimaryKey>, DiskError> {
        let _guard = self.lock();
        let digest = meta.body_digest;
        let existing_blob = self.blobs.get(digest)?.and_then(|r| parse_blob_record(&r));
        match (existing_blob, body) {
            (Some(_), Some(temp)) => {
                // Stored already under this digest: identical bytes, keep one copy.
                let _ = fs::remove_file(&temp.path);
            }
            (Some(_), None) => {}
            (None, Some(temp)) => {
                let target = self.blob_path(&digest);
                let dir = target.parent().unwrap_or(&self.root).to_path_buf();
                fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                if let Err(err) = fs::rename(&temp.path, &target) {
                    let _ = fs::remove_file(&temp.path);
                    return Err(io_err(&target)(err));
                }
                self.sync_dir(&dir)?;
                if !temp.blocks.is_empty() {
                    self.block_digests.insert(digest, temp.blocks.concat())?;
                }
                self.blobs
                    .insert(digest, blob_record(0, temp.len).as_slice())?;
                self.bytes.fetch_add(temp.len, Ordering::Relaxed);
            }
            (None, None) => {
                // The body this row needs is gone (evicted meanwhile): do not index a row
                // that can never be read.
                return Ok(Vec::new());
            }
        }
        let row = row_key(&meta.key, &meta.variant);
        self.remove_row_locked(&row)?;
        // Take the reference after releasing the old row's, so replacing a row with the
        // same body never drops the count to zero in between.
        let (refs, size) = self
            .blobs
            .get(digest)?
            .and_then(|r| parse_blob_record(&r))
            .unwrap_or((0, meta.body_len));
        self.blobs
            .insert(digest, blob_record(refs + 1, size).as_slice())?;
        let tick = self.tick();
        let encoded = meta.encode();
        let mut value = Vec::with_capacity(8 + encoded.len());
        value.extend_from_slice(&tick.to_be_bytes());
        value.extend_from_slice(&encoded);
        self.bytes
            .fetch_add(value.len() as u64 + ROW_OVERHEAD, Ordering::Relaxed);
        self.entries.insert(row, value)?;
        self.recency.insert(recency_key(tick, &row), &[])?;
        self.rows.fetch_add(1, Ordering::Relaxed);
        let evicted = self.evict_locked()?;
        if self.fsync {
            // Durable before it counts as stored; otherwise sled flushes every 200 ms.
            self.db.flush()?;
        }
        Ok(evicted)
    }

    fn remove(&self, key: &PrimaryKey) -> Result<usize, DiskError> {
        let _guard = self.lock();
        let rows: Vec<_> = self
            .entries
            .scan_prefix(key.0)
            .keys()
            .collect::<Result<_, _>>()?;
        let mut removed = 0;
        for row in rows {
            removed += usize::from(self.remove_row_locked(&row)?);
        }
        Ok(removed)
    }

    fn remove_variant(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError> {
        let _guard = self.lock();
        self.remove_row_locked(&row_key(key, variant))?;
        Ok(())
    }

    fn touch(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError> {
        let _guard = self.lock();
        let row = row_key(key, variant);
        let Some(value) = self.entries.get(row)? else {
            return Ok(());
        };
        let Some((old_tick, meta)) = split_row(&value) else {
            return Ok(());
        };
        // Already among the most recent quarter of rows: moving it again changes nothing
        // eviction would notice, and costs three index writes.
        let newest = self.next_tick.load(Ordering::Relaxed);
        if newest.saturating_sub(old_tick) < self.rows.load(Ordering::Relaxed) / 4 + 1 {
            return Ok(());
        }
        let tick = self.tick();
        let mut updated = Vec::with_capacity(value.len());
        updated.extend_from_slice(&tick.to_be_bytes());
        updated.extend_from_slice(meta);
        self.entries.insert(row, updated)?;
        self.recency.remove(recency_key(old_tick, &row))?;
        self.recency.insert(recency_key(tick, &row), &[])?;
        Ok(())
    }

    fn keys_where(
        &self,
        predicate: &dyn Fn(&EntryMeta) -> bool,
    ) -> Result<Vec<PrimaryKey>, DiskError> {
        let mut keys = Vec::new();
        for item in self.entries.iter() {
            let (row, value) = item?;
            let Some(Ok(meta)) = split_row(&value).map(|(_, m)| EntryMeta::decode(m)) else {
                continue;
            };
            if predicate(&meta) {
                let mut key = [0u8; 32];
                key.copy_from_slice(&row[..32]);
                if keys.last() != Some(&PrimaryKey(key)) {
                    keys.push(PrimaryKey(key));
                }
            }
        }
        Ok(keys)
    }

    fn usage(&self) -> (u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn sweep(&self) -> Result<SweepReport, DiskError> {
        let mut report = SweepReport::default();
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            // Only one process opens the index at a time, so files without this opening's
            // prefix are an earlier run's leftovers; this run's may be in use.
            let ours = entry
                .file_name()
                .to_string_lossy()
                .starts_with(&self.temp_prefix);
            if !ours && fs::remove_file(entry.path()).is_ok() {
                report.temp_files += 1;
            }
        }
        // The scans run without the write lock (stores go on meanwhile); each removal
        // takes it and checks again that what it removes is still as seen.
        let mut doomed = Vec::new();
        for item in self.entries.iter() {
            let (row, value) = item?;
            match split_row(&value).map(|(_, m)| EntryMeta::decode(m)) {
                Some(Ok(meta)) => {
                    if !(self.blobs.contains_key(meta.body_digest)?
                        && self.blob_path(&meta.body_digest).exists())
                    {
                        report.rows_without_body += 1;
                        doomed.push((row, value));
                    }
                }
                _ => {
                    report.undecodable_rows += 1;
                    doomed.push((row, value));
                }
            }
        }
        for (row, seen) in doomed {
            let _guard = self.lock();
            if self.entries.get(&row)?.as_ref() != Some(&seen) {
                continue;
            }
            self.entries.remove(&row)?;
            if let Some((tick, meta)) = split_row(&seen) {
                self.recency.remove(recency_key(tick, &row))?;
                if let Ok(meta) = EntryMeta::decode(meta) {
                    if let Some((refs, size)) = self
                        .blobs
                        .get(meta.body_digest)?
                        .and_then(|r| parse_blob_record(&r))
                    {
                        if refs > 1 {
                            self.blobs
                                .insert(meta.body_digest, blob_record(refs - 1, size).as_slice())?;
                        } else {
                            // The file, if any, goes with the orphan scan below.
                            self.blobs.remove(meta.body_digest)?;
                            self.block_digests.remove(meta.body_digest)?;
                        }
                    }
                }
            }
        }
        // Files nobody indexes (written, renamed, then a crash before the index row). A
        // store renames and indexes under the lock, so the check under it is exact.
        let blobs_dir = self.root.join("blobs");
        for shard in fs::read_dir(&blobs_dir)
            .map_err(io_err(&blobs_dir))?
            .flatten()
        {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let Some(digest) = parse_hex(&file.file_name().to_string_lossy()) else {
                    if fs::remove_file(file.path()).is_ok() {
                        report.orphan_files += 1;
                    }
                    continue;
                };
                if self.blobs.contains_key(digest)? {
                    continue;
                }
                let _guard = self.lock();
                if !self.blobs.contains_key(digest)? && fs::remove_file(file.path()).is_ok() {
                    report.orphan_files += 1;
                }
            }
        }
        // The exact totals, replacing the estimate `open` made; a short hold of the lock.
        let _guard = self.lock();
        let mut bytes = 0u64;
        let mut rows = 0u64;
        for item in self.entries.iter() {
            let (_, value) = item?;
            rows += 1;
            bytes += value.len() as u64 + ROW_OVERHEAD;
        }
        for item in self.blobs.iter() {
            let (_, value) = item?;
            if let Some((_, size)) = parse_blob_record(&value) {
                bytes += size;
            }
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.rows.store(rows, Ordering::Relaxed);
        report.entries = rows;
        self.evict_locked()?;
        Ok(report)
    }

    fn flush(&self) -> Result<(), DiskError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Counters the disk tier moves.
#[derive(Clone, Default)]
pub struct DiskMetrics {
    pub integrity_failures: Counter,
    pub errors: Counter,
    pub degraded: Gauge,
    pub evictions: Counter,
}

/// The async face of a [`DiskStore`]: every call on the blocking pool, and the switch to
/// memory-only after the first I/O failure.
#[derive(Clone)]
pub struct DiskTier {
    store: Arc<dyn DiskStore>,
    degraded: Arc<AtomicBool>,
    metrics: DiskMetrics,
    /// Recency updates, applied in batches by one background task (each would otherwise be
    /// its own trip to the blocking pool).
    touches: Option<tokio::sync::mpsc::UnboundedSender<(PrimaryKey, VariantKey)>>,
    /// Objects up to this size are read whole (and promoted to memory); larger ones stream.
    pub memory_object_limit: u64,
    /// fsync bodies written by streaming fills, as the store does its own writes.
    pub fsync: bool,
    pub max_object_size: u64,
}

impl DiskTier {
    pub fn new(
        store: Arc<dyn DiskStore>,
        metrics: DiskMetrics,
        memory_object_limit: u64,
        max_object_size: u64,
    ) -> DiskTier {
        let mut tier = DiskTier {
            store,
            degraded: Arc::new(AtomicBool::new(false)),
            metrics,
            touches: None,
            fsync: false,
            memory_object_limit,
            max_object_size,
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            let store = Arc::downgrade(&tier.store);
            runtime.spawn(apply_touches(store, Arc::clone(&tier.degraded), receiver));
            tier.touches = Some(sender);
        }
        tier
    }

    /// Whether the tier is in use (not degraded by an earlier failure).
    pub fn is_available(&self) -> bool {
        !self.degraded.load(Ordering::Relaxed)
    }

    pub fn usage(&self) -> (u64, u64) {
        self.store.usage()
    }

    /// Where the body with `digest` lives.
    pub fn blob_path(&self, digest: &[u8; 32]) -> PathBuf {
        self.store.blob_path(digest)
    }

    /// Stops using the disk, loudly, once.
    pub fn degrade(&self, err: &DiskError) {
        self.metrics.errors.inc();
        if !self.degraded.swap(true, Ordering::Relaxed) {
            self.metrics.degraded.set(1);
            tracing::error!(error = %err, "disk tier failed: continuing with the memory tier only");
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
        F: FnOnce(&dyn DiskStore) -> Result<T, DiskError> + Send + 'static,
    {
        if !self.is_available() {
            return None;
        }
        let store = Arc::clone(&self.store);
        let result = tokio::task::spawn_blocking(move || op(store.as_ref())).await;
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                self.degrade(&err);
                None
            }
            Err(join) => {
                tracing::error!(error = %join, "disk tier task failed");
                None
            }
        }
    }

    pub async fn variants(&self, key: PrimaryKey) -> Vec<EntryMeta> {
        self.run(move |s| s.variants(&key))
            .await
            .unwrap_or_default()
    }

    /// Stores `meta` with `body` (`None`: only the headers changed). Returns the resources
    /// evicted for room (`None` when the tier failed).
    pub async fn store(&self, meta: EntryMeta, body: Option<Bytes>) -> Option<Vec<PrimaryKey>> {
        let evictions = self.metrics.evictions.clone();
        self.run(move |s| {
            let temp = body.map(|b| s.write_temp(&b)).transpose()?;
            let evicted = s.commit(&meta, temp)?;
            evictions.inc_by(evicted.len() as u64);
            Ok(evicted)
        })
        .await
    }

    /// Indexes a body already written to a temporary file by a streaming fill. Returns the
    /// resources evicted for room (`None` when the tier failed; the file is removed).
    pub async fn commit_temp(&self, meta: EntryMeta, temp: TempBlob) -> Option<Vec<PrimaryKey>> {
        let evictions = self.metrics.evictions.clone();
        let path = temp.path.clone();
        let stored = self
            .run(move |s| {
                let evicted = s.commit(&meta, Some(temp))?;
                evictions.inc_by(evicted.len() as u64);
                Ok(evicted)
            })
            .await;
        if stored.is_none() {
            let _ = tokio::fs::remove_file(path).await;
        }
        stored
    }

    pub async fn remove(&self, key: PrimaryKey) -> usize {
        self.run(move |s| s.remove(&key)).await.unwrap_or(0)
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
        let loaded = self
            .run(move |s| {
                let metas = s.variants(&key)?;
                let Some(index) = select(&metas) else {
                    return Ok(None);
                };
                let selected = metas[index].clone();
                let mut corrupt = Vec::new();
                let mut read = |meta: &EntryMeta| -> Result<Option<Bytes>, DiskError> {
                    match s.read_body(meta) {
                        Ok(body) => Ok(Some(body)),
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
                let (body, blocks) = if selected.body_len <= inline_limit {
                    match read(&selected)? {
                        Some(body) => (Some(body), None),
                        None => return Ok(Some((None, corrupt))),
                    }
                } else {
                    (None, s.blocks(&selected.body_digest)?)
                };
                let mut encoded = Vec::new();
                for meta in metas.iter().filter(|m| {
                    m.derivation
                        .is_some_and(|d| d.source_digest == selected.body_digest)
                        && m.body_len <= inline_limit
                }) {
                    if let Some(body) = read(meta)? {
                        encoded.push((meta.clone(), body));
                    }
                }
                s.touch(&selected.key, &selected.variant)?;
                Ok(Some((
                    Some(Loaded {
                        selected,
                        blocks,
                        body,
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

    /// A streaming writer for a body too large to hold in memory.
    pub async fn blob_writer(&self) -> Option<BlobWriter> {
        let (file, path) = self.run(|s| s.create_temp()).await?;
        Some(BlobWriter {
            file: Some(file),
            path,
            hasher: blake3::Hasher::new(),
            block_hasher: blake3::Hasher::new(),
            block_fill: 0,
            blocks: Vec::new(),
            len: 0,
            flushed: 0,
            pending: Vec::new(),
            fsync: self.fsync,
        })
    }
}

/// What [`DiskTier::load`] found.
pub struct Loaded {
    pub selected: EntryMeta,
    /// Block digests of a selected body left in its file.
    pub blocks: Option<Vec<[u8; 32]>>,
    /// The selected body, when it was small enough to read whole (else it stays in its file).
    pub body: Option<Bytes>,
    /// Encoded variants of the selected body, with their bodies.
    pub encoded: Vec<(EntryMeta, Bytes)>,
}

/// Applies queued recency updates in batches: one blocking call per batch. Holds the store
/// weakly, so a closed cache is not kept open by its queue.
async fn apply_touches(
    store: std::sync::Weak<dyn DiskStore>,
    degraded: Arc<AtomicBool>,
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<(PrimaryKey, VariantKey)>,
) {
    let mut batch = Vec::with_capacity(256);
    while receiver.recv_many(&mut batch, 256).await > 0 {
        let rows = std::mem::take(&mut batch);
        if degraded.load(Ordering::Relaxed) {
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

/// Writes a body to a temporary file as it streams, hashing as it goes. Writes are batched
/// (1 MiB) and run on the blocking pool.
pub struct BlobWriter {
    file: Option<fs::File>,
    path: PathBuf,
    hasher: blake3::Hasher,
    /// The block being hashed, and how much of it is filled.
    block_hasher: blake3::Hasher,
    block_fill: u64,
    blocks: Vec<[u8; 32]>,
    len: u64,
    /// Bytes written to the file so far (the rest is batched in `pending`).
    flushed: u64,
    pending: Vec<u8>,
    fsync: bool,
}

const WRITE_BATCH: usize = 1 << 20;

impl BlobWriter {
    /// The temporary file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes already in the file (readable by someone following it).
    pub fn flushed(&self) -> u64 {
        self.flushed
    }

    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.hasher.update(chunk);
        let mut rest = chunk;
        while !rest.is_empty() {
            let room = (BLOCK - self.block_fill) as usize;
            let (part, tail) = rest.split_at(room.min(rest.len()));
            self.block_hasher.update(part);
            self.block_fill += part.len() as u64;
            if self.block_fill == BLOCK {
                self.blocks.push(*self.block_hasher.finalize().as_bytes());
                self.block_hasher.reset();
                self.block_fill = 0;
            }
            rest = tail;
        }
        self.len += chunk.len() as u64;
        self.pending.extend_from_slice(chunk);
        if self.pending.len() >= WRITE_BATCH {
            self.flush_pending(false).await?;
        }
        Ok(())
    }

    async fn flush_pending(&mut self, sync: bool) -> io::Result<()> {
        let Some(mut file) = self.file.take() else {
            return Err(io::Error::other("writer already failed"));
        };
        let data = std::mem::take(&mut self.pending);
        let batch = data.len() as u64;
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result =
                file.write_all(&data)
                    .and_then(|()| if sync { file.sync_all() } else { Ok(()) });
            (file, result)
        })
        .await
        .map_err(io::Error::other)?;
        self.file = Some(file);
        if result.is_ok() {
            self.flushed += batch;
        }
        result
    }

    /// Finishes the file: its digest and length, ready for [`DiskTier::commit_temp`].
    pub async fn finish(mut self) -> io::Result<TempBlob> {
        let sync = self.fsync;
        let result = self.flush_pending(sync).await;
        let path = self.path.clone();
        if let Err(err) = result {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(err);
        }
        self.file = None;
        if self.block_fill > 0 {
            self.blocks.push(*self.block_hasher.finalize().as_bytes());
        }
        if self.len <= BLOCK {
            self.blocks.clear();
        }
        Ok(TempBlob {
            path,
            digest: *self.hasher.finalize().as_bytes(),
            len: self.len,
            blocks: std::mem::take(&mut self.blocks),
        })
    }

    /// Abandons the file (the fill failed).
    pub async fn discard(self) {
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

/// Run when a body streamed from a file turns out missing or corrupt: the caller's chance
/// to remove the entry and count it.
pub type CorruptionHook = Box<dyn FnOnce(bool) + Send>;

/// Bytes read per blocking call while streaming a body file: large, because each call is a
/// trip to the blocking pool.
const READ_CHUNK: usize = 512 << 10;

/// Streams bytes `window.0..=window.1` of a stored body file, verified. With per-block
/// digests only the blocks the window touches are read, and each is checked before any of
/// its bytes is sent; otherwise the whole file is hashed and the last piece held back until
/// the digest checks out. Either way a corrupt body ends in an error (an aborted response),
/// never a clean end; `on_corrupt` gets `true` for a corrupt file, `false` for a missing one.
pub fn verified_file_body(
    file: &crate::cache::entry::BodyFile,
    len: u64,
    digest: [u8; 32],
    window: (u64, u64),
    on_corrupt: CorruptionHook,
) -> crate::body::Body {
    let path = Arc::new(file.path.clone());
    match &file.blocks {
        Some(blocks) if blocks.len() as u64 == len.div_ceil(BLOCK) && len > 0 => {
            verified_blocks_body(path, len, Arc::clone(blocks), window, on_corrupt)
        }
        _ => verified_whole_file_body(path, len, digest, window, on_corrupt),
    }
}

/// Ends a verified stream: marks it done, runs the corruption hook once, and gives the
/// error that aborts the response.
fn stream_failure(
    done: &mut bool,
    hook: &mut Option<CorruptionHook>,
    corrupt: bool,
) -> crate::body::BoxError {
    *done = true;
    if let Some(hook) = hook.take() {
        hook(corrupt);
    }
    if corrupt {
        "stored body does not match its digest".into()
    } else {
        "stored body file is missing".into()
    }
}

fn verified_blocks_body(
    path: Arc<PathBuf>,
    len: u64,
    blocks: Arc<Vec<[u8; 32]>>,
    window: (u64, u64),
    on_corrupt: CorruptionHook,
) -> crate::body::Body {
    use futures_util::StreamExt;
    use std::os::unix::fs::FileExt;

    struct State {
        file: Option<Arc<fs::File>>,
        path: Arc<PathBuf>,
        next_block: u64,
        last_block: u64,
        done: bool,
        on_corrupt: Option<CorruptionHook>,
    }
    let (first, last) = (window.0, window.1.min(len.saturating_sub(1)));
    let state = State {
        file: None,
        path,
        next_block: first / BLOCK,
        last_block: last / BLOCK,
        done: first > last,
        on_corrupt: Some(on_corrupt),
    };
    let fail = |state: &mut State, corrupt: bool| {
        Err(stream_failure(
            &mut state.done,
            &mut state.on_corrupt,
            corrupt,
        ))
    };
    let stream = futures_util::stream::unfold(state, move |mut state| {
        let blocks = Arc::clone(&blocks);
        async move {
            if state.done || state.next_block > state.last_block {
                return None;
            }
            if state.file.is_none() {
                match fs::File::open(state.path.as_ref()) {
                    Ok(file) => state.file = Some(Arc::new(file)),
                    Err(_) => {
                        let item = fail(&mut state, false);
                        return Some((item, state));
                    }
                }
            }
            let block = state.next_block;
            state.next_block += 1;
            let start = block * BLOCK;
            let size = BLOCK.min(len - start) as usize;
            let file = state.file.as_ref().map(Arc::clone)?;
            let read = tokio::task::spawn_blocking(move || {
                let mut buffer = vec![0u8; size];
                file.read_exact_at(&mut buffer, start).map(|()| buffer)
            })
            .await;
            let buffer = match read {
                Ok(Ok(buffer)) if *blake3::hash(&buffer).as_bytes() == blocks[block as usize] => {
                    Bytes::from(buffer)
                }
                _ => {
                    let item = fail(&mut state, true);
                    return Some((item, state));
                }
            };
            let from = first.max(start) - start;
            let to = (last + 1).min(start + size as u64) - start;
            Some((Ok(buffer.slice(from as usize..to as usize)), state))
        }
    });
    let frames =
        stream.map(|item: Result<Bytes, crate::body::BoxError>| item.map(http_body::Frame::data));
    crate::body::Body::boxed(http_body_util::StreamBody::new(frames))
}

fn verified_whole_file_body(
    path: Arc<PathBuf>,
    len: u64,
    digest: [u8; 32],
    window: (u64, u64),
    on_corrupt: CorruptionHook,
) -> crate::body::Body {
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;

    struct State {
        file: Option<tokio::fs::File>,
        path: Arc<PathBuf>,
        hasher: blake3::Hasher,
        offset: u64,
        held: Option<Bytes>,
        done: bool,
        on_corrupt: Option<CorruptionHook>,
    }
    let state = State {
        file: None,
        path,
        hasher: blake3::Hasher::new(),
        offset: 0,
        held: None,
        done: false,
        on_corrupt: Some(on_corrupt),
    };
    let fail = |state: &mut State, corrupt: bool| {
        Some(Err(stream_failure(
            &mut state.done,
            &mut state.on_corrupt,
            corrupt,
        )))
    };
    let stream = futures_util::stream::unfold(state, move |mut state| async move {
        loop {
            if state.done {
                return None;
            }
            if state.file.is_none() {
                match tokio::fs::File::open(state.path.as_ref()).await {
                    Ok(file) => state.file = Some(file),
                    Err(_) => {
                        let item = fail(&mut state, false);
                        return item.map(|item| (item, state));
                    }
                }
            }
            let mut buffer = vec![0u8; READ_CHUNK];
            let file = state.file.as_mut()?;
            let read = match file.read(&mut buffer).await {
                Ok(read) => read,
                Err(_) => {
                    let item = fail(&mut state, true);
                    return item.map(|item| (item, state));
                }
            };
            if read == 0 {
                if state.offset == len && *state.hasher.finalize().as_bytes() == digest {
                    state.done = true;
                    return state.held.take().map(|last| (Ok(last), state));
                }
                let item = fail(&mut state, true);
                return item.map(|item| (item, state));
            }
            buffer.truncate(read);
            state.hasher.update(&buffer);
            let start = state.offset;
            state.offset += read as u64;
            let (first, last) = window;
            let from = first.max(start);
            let to = last.saturating_add(1).min(state.offset);
            if from < to {
                let buffer = Bytes::from(buffer);
                let part = buffer.slice((from - start) as usize..(to - start) as usize);
                if let Some(previous) = state.held.replace(part) {
                    return Some((Ok(previous), state));
                }
            }
        }
    });
    let frames =
        stream.map(|item: Result<Bytes, crate::body::BoxError>| item.map(http_body::Frame::data));
    crate::body::Body::boxed(http_body_util::StreamBody::new(frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::StoredResponse;
    use crate::cache::key::Vary;
    use crate::cache::policy::{Freshness, PolicySettings};
    use http::{HeaderMap, StatusCode};
    use std::time::SystemTime;

    fn entry(path: &str, body: &'static [u8]) -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", "max-age=60".parse().unwrap());
        let now = SystemTime::now();
        let freshness = Freshness::compute(
            StatusCode::OK,
            &headers,
            &PolicySettings::default(),
            now,
            now,
        );
        let meta = EntryMeta::new(
            PrimaryKey::new("http", "example.com", path),
            format!("http://example.com{path}"),
            StatusCode::OK,
            headers,
            (Vary::None, VariantKey::NONE),
            freshness,
        );
        StoredResponse::new(meta, Bytes::from_static(body))
    }

    fn store_entry(store: &SledStore, entry: &StoredResponse) {
        let temp = store.write_temp(entry.body.as_bytes().unwrap()).unwrap();
        store.commit(&entry.meta, Some(temp)).unwrap();
    }

    #[test]
    fn stores_reads_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let a = entry("/a", b"alpha");
        {
            let store = SledStore::open(dir.path(), 1 << 30, false).unwrap();
            store_entry(&store, &a);
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path(), 1 << 30, false).unwrap();
        let variants = store.variants(&a.meta.key).unwrap();
        assert_eq!(variants.len(), 1);
        assert_eq!(store.read_body(&variants[0]).unwrap(), &b"alpha"[..]);
        assert_eq!(store.usage().0, 1);
    }

    #[test]
    fn identical_bodies_are_stored_once_and_kept_while_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 30, false).unwrap();
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

    #[test]
    fn a_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 30, false).unwrap();
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

    #[test]
    fn least_recently_used_goes_first_when_full() {
        let dir = tempfile::tempdir().unwrap();
        // Room for about two rows of this size.
        let a = entry("/a", &[1; 4000]);
        let b = entry("/b", &[2; 4000]);
        let c = entry("/c", &[3; 4000]);
        let store = SledStore::open(dir.path(), 9000, false).unwrap();
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

    /// A body written in odd-sized chunks gets the same block digests as one hashed whole.
    #[tokio::test]
    async fn streamed_block_digests_match_whole_body_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 1 << 30, false).unwrap());
        let tier = DiskTier::new(store, DiskMetrics::default(), 1 << 20, 1 << 30);
        let body: Vec<u8> = (0..(2 * BLOCK as usize + 4321))
            .map(|i| (i % 253) as u8)
            .collect();
        let mut writer = tier.blob_writer().await.unwrap();
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
        let store = SledStore::open(dir.path(), 1 << 30, false).unwrap();
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
            .commit(&entry("/c", b"being written").meta, Some(in_use))
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
