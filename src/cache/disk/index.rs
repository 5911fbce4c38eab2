//! The disk tier's index: which variants are stored (their metadata), the order they were
//! last used in, and how many rows reference each body (by digest). It knows digests, never
//! files: where a body lives is [`super::blobs`]'s business, and keeping files and index in
//! step is [`super::store::DiskStore`]'s.
//!
//! The seam is a trait because sled, the one implementation, has had no stable release
//! since 2021 (see `shared/notes/crates.md`): another index can replace it without touching
//! files, sweep or the async tier.
//!
//! # Concurrent calls
//! Reads may run concurrently with anything. Mutating calls (`add_body`, `insert`,
//! `remove*`, `touch`, `evict_over`, `recount`) must be serialised by the caller, which
//! holds one lock across the index and the files.

use std::sync::atomic::{AtomicU64, Ordering};

use super::DiskError;
use crate::cache::entry::EntryMeta;
use crate::cache::key::{PrimaryKey, VariantKey};

/// Bytes counted per index row beyond its encoded metadata (sled's own structures).
const ROW_OVERHEAD: u64 = 128;

/// Digests of bodies whose last reference went: their files are to be deleted.
#[must_use]
#[derive(Debug, Default)]
pub struct Released(pub Vec<[u8; 32]>);

impl Released {
    fn add(&mut self, other: Released) {
        self.0.extend(other.0);
    }
}

/// What a sweep of the rows found and removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RowSweep {
    pub without_body: u64,
    pub undecodable: u64,
}

/// The index the disk tier keeps; see the module doc.
pub trait DiskIndex: Send + Sync {
    /// Every stored variant of `key`, newest first; rows this build cannot decode are
    /// removed.
    fn variants(&self, key: &PrimaryKey) -> Result<(Vec<EntryMeta>, Released), DiskError>;
    /// The per-block digests of a stored body, if it has them.
    fn blocks(&self, digest: &[u8; 32]) -> Result<Option<Vec<[u8; 32]>>, DiskError>;
    /// Whether a body with this digest is recorded.
    fn has_body(&self, digest: &[u8; 32]) -> Result<bool, DiskError>;
    /// Records a body just stored under `digest`, with no reference yet, and the check
    /// ([`super::body_check`]) its reads are verified against.
    fn add_body(
        &self,
        digest: &[u8; 32],
        len: u64,
        blocks: &[[u8; 32]],
        check: u64,
    ) -> Result<(), DiskError>;
    /// Records a small body kept in the index itself (no file), with no reference yet;
    /// it goes with its last reference like any body.
    fn add_inline_body(&self, digest: &[u8; 32], body: &[u8], check: u64) -> Result<(), DiskError>;
    /// The check recorded for a body; `None` for bodies recorded before checks were (their
    /// blake3 digest is the check then).
    fn body_check(&self, digest: &[u8; 32]) -> Result<Option<u64>, DiskError>;
    /// A body kept in the index, unverified.
    fn inline_body(&self, digest: &[u8; 32]) -> Result<Option<bytes::Bytes>, DiskError>;
    /// Whether the body with `digest` is kept in the index.
    fn has_inline_body(&self, digest: &[u8; 32]) -> Result<bool, DiskError>;
    /// Indexes `meta` (replacing the row of the same variant) and takes a reference on its
    /// body, which must be recorded.
    fn insert(&self, meta: &EntryMeta) -> Result<Released, DiskError>;
    /// Removes every variant of `key`; returns how many.
    fn remove(&self, key: &PrimaryKey) -> Result<(usize, Released), DiskError>;
    fn remove_variant(&self, key: &PrimaryKey, variant: &VariantKey)
        -> Result<Released, DiskError>;
    /// Moves a row to the recent end of the replacement order.
    fn touch(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError>;
    /// Removes least recently used rows until rows and bodies take at most `capacity`
    /// bytes; returns the resources evicted.
    fn evict_over(&self, capacity: u64) -> Result<(Vec<PrimaryKey>, Released), DiskError>;
    /// Primary keys with at least one variant matching `predicate`.
    fn keys_where(
        &self,
        predicate: &dyn Fn(&EntryMeta) -> bool,
    ) -> Result<Vec<PrimaryKey>, DiskError>;
    /// Removes rows `is_doomed` picks and rows it cannot decode. Scans without the caller's
    /// lock (stores go on meanwhile) and takes `serialise` for each removal, re-checking
    /// that the row is still as seen.
    fn sweep_rows(
        &self,
        is_doomed: &dyn Fn(&EntryMeta) -> bool,
        serialise: &parking_lot::Mutex<()>,
    ) -> Result<(RowSweep, Released), DiskError>;
    /// Counts rows and bytes exactly (replacing the estimate made at open).
    fn recount(&self) -> Result<(), DiskError>;
    /// Stored rows, and bytes of rows and bodies.
    fn usage(&self) -> (u64, u64);
    /// Bytes the index's own files occupy (counted against the capacity).
    fn own_size(&self) -> u64;
    /// Makes what was indexed so far durable.
    fn flush(&self) -> Result<(), DiskError>;
    /// Records small facts other parts keep beside the cache (the digests a package
    /// index published), replacing earlier values of the same keys.
    fn put_notes(&self, notes: &[(Vec<u8>, Vec<u8>)]) -> Result<(), DiskError>;
    /// A fact recorded with [`DiskIndex::put_notes`].
    fn note(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError>;
}

/// The sled implementation: trees `entries` (primary key ++ variant key -> tick ++ encoded
/// metadata), `recency` (tick ++ row key -> nothing: the LRU order), `blobs` (digest ->
/// reference count and size), `blocks` (digest -> block digests of multi-block bodies) and
/// `inline` (digest -> the bytes of a small body kept here rather than in a file), and
/// `notes` (facts kept beside the cache, such as published digests).
pub struct SledIndex {
    db: sled::Db,
    entries: sled::Tree,
    recency: sled::Tree,
    blobs: sled::Tree,
    block_digests: sled::Tree,
    inline_bodies: sled::Tree,
    notes: sled::Tree,
    next_tick: AtomicU64,
    bytes: AtomicU64,
    rows: AtomicU64,
    /// The index files' size, and when it was measured.
    own_size: parking_lot::Mutex<(std::time::Instant, u64)>,
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

fn decode_row(value: &[u8]) -> Option<(u64, EntryMeta)> {
    let (tick, meta) = split_row(value)?;
    Some((tick, EntryMeta::decode(meta).ok()?))
}

/// A body's record in `blobs`: references, bytes it occupies, and its check (20 bytes;
/// records written before checks existed are 12 bytes and have none).
#[derive(Debug, Clone, Copy, PartialEq)]
struct BlobRecord {
    refs: u32,
    size: u64,
    check: Option<u64>,
}

impl BlobRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        out.extend_from_slice(&self.refs.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        if let Some(check) = self.check {
            out.extend_from_slice(&check.to_be_bytes());
        }
        out
    }

    fn parse(value: &[u8]) -> Option<BlobRecord> {
        let refs = u32::from_be_bytes(value.get(..4)?.try_into().ok()?);
        let size = u64::from_be_bytes(value.get(4..12)?.try_into().ok()?);
        let check = match value.len() {
            12 => None,
            20 => Some(u64::from_be_bytes(value.get(12..20)?.try_into().ok()?)),
            _ => return None,
        };
        Some(BlobRecord { refs, size, check })
    }

    /// The same record with `refs` references.
    fn with_refs(self, refs: u32) -> BlobRecord {
        BlobRecord { refs, ..self }
    }
}

fn primary_of(row: &[u8]) -> Option<PrimaryKey> {
    row.get(..32)
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .map(PrimaryKey)
}

/// How long an open waits for an index lock still held by a closing instance.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the sled database in `dir`. sled releases its lock file from a background thread a
/// moment after the last handle is dropped, so an instance reopened at once (a restart in
/// the same process) can find it still locked: that, and only that, is retried for a while.
fn open_db(dir: &std::path::Path) -> Result<sled::Db, DiskError> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(32 << 20)
            .flush_every_ms(Some(200))
            .open();
        match opened {
            Err(sled::Error::Io(err))
                if err.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_PATIENCE =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

impl SledIndex {
    /// Opens (or creates) the index in `dir` without reading any row: the byte total comes
    /// from the body records and the row count from the tree.
    ///
    /// # Errors
    /// An index sled cannot open (corrupt, or open in another process).
    pub fn open(dir: &std::path::Path) -> Result<SledIndex, DiskError> {
        let db = open_db(dir)?;
        let entries = db.open_tree("entries")?;
        let recency = db.open_tree("recency")?;
        let blobs = db.open_tree("blobs")?;
        let block_digests = db.open_tree("blocks")?;
        let inline_bodies = db.open_tree("inline")?;
        let notes = db.open_tree("notes")?;
        let next_tick = match recency.last()? {
            Some((key, _)) if key.len() >= 8 => {
                u64::from_be_bytes(key[..8].try_into().unwrap_or([0; 8])) + 1
            }
            _ => 1,
        };
        let mut bytes = 0u64;
        for item in blobs.iter() {
            let (_, value) = item?;
            if let Some(record) = BlobRecord::parse(&value) {
                bytes += record.size;
            }
        }
        let rows = entries.len() as u64;
        // Row sizes are not summed at open (that would read every row); an allowance per
        // row stands in until the sweep recounts.
        bytes += rows * (ROW_OVERHEAD + 512);
        let own_size = db.size_on_disk().unwrap_or(0);
        Ok(SledIndex {
            own_size: parking_lot::Mutex::new((std::time::Instant::now(), own_size)),
            db,
            entries,
            recency,
            blobs,
            block_digests,
            inline_bodies,
            notes,
            next_tick: AtomicU64::new(next_tick),
            bytes: AtomicU64::new(bytes),
            rows: AtomicU64::new(rows),
        })
    }

    fn tick(&self) -> u64 {
        self.next_tick.fetch_add(1, Ordering::Relaxed)
    }

    fn sub_bytes(&self, amount: u64) {
        let current = self.bytes.load(Ordering::Relaxed);
        self.bytes.fetch_sub(amount.min(current), Ordering::Relaxed);
    }

    /// Unindexes one row and releases its body.
    fn remove_row(&self, row: &[u8]) -> Result<(bool, Released), DiskError> {
        let Some(value) = self.entries.remove(row)? else {
            return Ok((false, Released::default()));
        };
        self.rows.fetch_sub(1, Ordering::Relaxed);
        self.sub_bytes(value.len() as u64 + ROW_OVERHEAD);
        let mut released = Released::default();
        if let Some((tick, meta)) = split_row(&value) {
            self.recency.remove(recency_key(tick, row))?;
            if let Ok(meta) = EntryMeta::decode(meta) {
                released = self.release_body(&meta.body_digest)?;
            }
        }
        Ok((true, released))
    }

    /// Drops one reference to a body; the last one releases it.
    fn release_body(&self, digest: &[u8; 32]) -> Result<Released, DiskError> {
        let Some(record) = self.blobs.get(digest)? else {
            return Ok(Released::default());
        };
        let record = BlobRecord::parse(&record).unwrap_or(BlobRecord {
            refs: 1,
            size: 0,
            check: None,
        });
        let size = record.size;
        if record.refs > 1 {
            self.blobs
                .insert(digest, record.with_refs(record.refs - 1).encode())?;
            return Ok(Released::default());
        }
        self.blobs.remove(digest)?;
        self.block_digests.remove(digest)?;
        self.sub_bytes(size);
        let was_inline = self.inline_bodies.remove(digest)?.is_some();
        // An inline body has no file to delete.
        Ok(if was_inline {
            Released::default()
        } else {
            Released(vec![*digest])
        })
    }
}

impl DiskIndex for SledIndex {
    fn variants(&self, key: &PrimaryKey) -> Result<(Vec<EntryMeta>, Released), DiskError> {
        let mut out = Vec::new();
        let mut undecodable = Vec::new();
        for item in self.entries.scan_prefix(key.0) {
            let (row, value) = item?;
            match decode_row(&value) {
                Some((_, meta)) => out.push(meta),
                None => undecodable.push(row),
            }
        }
        let mut released = Released::default();
        for row in undecodable {
            tracing::warn!("disk tier: removing an index row this build cannot read");
            released.add(self.remove_row(&row)?.1);
        }
        // Newest first, as the memory tier orders variants.
        out.sort_by_key(|meta| std::cmp::Reverse(meta.freshness.response_time));
        Ok((out, released))
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
                .filter_map(|d| <[u8; 32]>::try_from(d).ok())
                .collect(),
        ))
    }

    fn has_body(&self, digest: &[u8; 32]) -> Result<bool, DiskError> {
        Ok(self.blobs.contains_key(digest)?)
    }

    fn add_body(
        &self,
        digest: &[u8; 32],
        len: u64,
        blocks: &[[u8; 32]],
        check: u64,
    ) -> Result<(), DiskError> {
        if !blocks.is_empty() {
            self.block_digests.insert(digest, blocks.concat())?;
        }
        let record = BlobRecord {
            refs: 0,
            size: len,
            check: Some(check),
        };
        self.blobs.insert(digest, record.encode())?;
        self.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn add_inline_body(&self, digest: &[u8; 32], body: &[u8], check: u64) -> Result<(), DiskError> {
        // Counted with an allowance for sled's own record, as rows are.
        let size = body.len() as u64 + ROW_OVERHEAD;
        self.inline_bodies.insert(digest, body)?;
        let record = BlobRecord {
            refs: 0,
            size,
            check: Some(check),
        };
        self.blobs.insert(digest, record.encode())?;
        self.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    fn inline_body(&self, digest: &[u8; 32]) -> Result<Option<bytes::Bytes>, DiskError> {
        Ok(self
            .inline_bodies
            .get(digest)?
            .map(|value| bytes::Bytes::copy_from_slice(&value)))
    }

    fn has_inline_body(&self, digest: &[u8; 32]) -> Result<bool, DiskError> {
        Ok(self.inline_bodies.contains_key(digest)?)
    }

    fn body_check(&self, digest: &[u8; 32]) -> Result<Option<u64>, DiskError> {
        Ok(self
            .blobs
            .get(digest)?
            .and_then(|value| BlobRecord::parse(&value))
            .and_then(|record| record.check))
    }

    fn insert(&self, meta: &EntryMeta) -> Result<Released, DiskError> {
        let digest = meta.body_digest;
        let Some(record) = self.blobs.get(digest)?.and_then(|r| BlobRecord::parse(&r)) else {
            return Err(DiskError::Inconsistent(
                "a row for a body that is not recorded",
            ));
        };
        // The new reference first, then the replaced row's release: replacing a row with
        // the same body (a freshened response) never drops its count to zero.
        self.blobs
            .insert(digest, record.with_refs(record.refs + 1).encode())?;
        let row = row_key(&meta.key, &meta.variant);
        let (_, released) = self.remove_row(&row)?;
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
        Ok(released)
    }

    fn remove(&self, key: &PrimaryKey) -> Result<(usize, Released), DiskError> {
        let rows: Vec<_> = self
            .entries
            .scan_prefix(key.0)
            .keys()
            .collect::<Result<_, _>>()?;
        let mut removed = 0;
        let mut released = Released::default();
        for row in rows {
            let (was_there, freed) = self.remove_row(&row)?;
            removed += usize::from(was_there);
            released.add(freed);
        }
        Ok((removed, released))
    }

    fn remove_variant(
        &self,
        key: &PrimaryKey,
        variant: &VariantKey,
    ) -> Result<Released, DiskError> {
        Ok(self.remove_row(&row_key(key, variant))?.1)
    }

    fn touch(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError> {
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

    fn evict_over(&self, capacity: u64) -> Result<(Vec<PrimaryKey>, Released), DiskError> {
        let mut evicted = Vec::new();
        let mut released = Released::default();
        while self.bytes.load(Ordering::Relaxed) > capacity {
            let Some((key, _)) = self.recency.first()? else {
                break;
            };
            let row = key.get(8..).unwrap_or_default().to_vec();
            let (was_there, freed) = self.remove_row(&row)?;
            released.add(freed);
            if !was_there {
                // A recency record without its row: drop it and go on.
                self.recency.remove(key)?;
                continue;
            }
            if let Some(primary) = primary_of(&row) {
                evicted.push(primary);
            }
        }
        Ok((evicted, released))
    }

    fn keys_where(
        &self,
        predicate: &dyn Fn(&EntryMeta) -> bool,
    ) -> Result<Vec<PrimaryKey>, DiskError> {
        let mut keys = Vec::new();
        for item in self.entries.iter() {
            let (row, value) = item?;
            let Some((_, meta)) = decode_row(&value) else {
                continue;
            };
            if predicate(&meta) {
                if let Some(key) = primary_of(&row).filter(|key| keys.last() != Some(key)) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }

    fn sweep_rows(
        &self,
        is_doomed: &dyn Fn(&EntryMeta) -> bool,
        serialise: &parking_lot::Mutex<()>,
    ) -> Result<(RowSweep, Released), DiskError> {
        let mut sweep = RowSweep::default();
        let mut doomed = Vec::new();
        for item in self.entries.iter() {
            let (row, value) = item?;
            match decode_row(&value) {
                Some((_, meta)) if !is_doomed(&meta) => {}
                Some(_) => {
                    sweep.without_body += 1;
                    doomed.push((row, value));
                }
                None => {
                    sweep.undecodable += 1;
                    doomed.push((row, value));
                }
            }
        }
        let mut released = Released::default();
        for (row, seen) in doomed {
            let _serialised = serialise.lock();
            if self.entries.get(&row)?.as_ref() == Some(&seen) {
                released.add(self.remove_row(&row)?.1);
            }
        }
        Ok((sweep, released))
    }

    fn recount(&self) -> Result<(), DiskError> {
        let mut bytes = 0u64;
        let mut rows = 0u64;
        for item in self.entries.iter() {
            let (_, value) = item?;
            rows += 1;
            bytes += value.len() as u64 + ROW_OVERHEAD;
        }
        for item in self.blobs.iter() {
            let (_, value) = item?;
            if let Some(record) = BlobRecord::parse(&value) {
                bytes += record.size;
            }
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.rows.store(rows, Ordering::Relaxed);
        Ok(())
    }

    fn usage(&self) -> (u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn own_size(&self) -> u64 {
        // sled sums its files' sizes: cheap, but not for every commit.
        let mut cached = self.own_size.lock();
        let (measured_at, size) = *cached;
        if measured_at.elapsed() >= std::time::Duration::from_secs(1) {
            let size = self.db.size_on_disk().unwrap_or(size);
            *cached = (std::time::Instant::now(), size);
            return size;
        }
        size
    }

    fn flush(&self) -> Result<(), DiskError> {
        self.db.flush()?;
        Ok(())
    }

    fn put_notes(&self, notes: &[(Vec<u8>, Vec<u8>)]) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for (key, value) in notes {
            batch.insert(key.as_slice(), value.as_slice());
        }
        self.notes.apply_batch(batch)?;
        Ok(())
    }

    fn note(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.notes.get(key)?.map(|value| value.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records written before checks existed (12 bytes) still parse, have no check (their
    /// readers fall back to the blake3 digest), and keep having none as references move.
    #[test]
    fn blob_records_with_and_without_a_check() {
        let dir = tempfile::tempdir().unwrap();
        let index = SledIndex::open(dir.path()).unwrap();
        let digest = [3u8; 32];
        index.add_body(&digest, 4096, &[], 0xfeed).unwrap();
        assert_eq!(index.body_check(&digest).unwrap(), Some(0xfeed));
        let legacy = BlobRecord {
            refs: 2,
            size: 4096,
            check: None,
        };
        assert_eq!(legacy.encode().len(), 12);
        index.blobs.insert(digest, legacy.encode()).unwrap();
        assert_eq!(index.body_check(&digest).unwrap(), None);
        let moved = BlobRecord::parse(&legacy.with_refs(3).encode()).unwrap();
        assert_eq!(moved, legacy.with_refs(3));
        assert_eq!(BlobRecord::parse(&[0; 13]), None);
    }
}
