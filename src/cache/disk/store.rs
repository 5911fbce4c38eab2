//! [`DiskStore`]: the index and the body files kept in step, synchronously. A body is
//! placed before the row that names it is indexed, and unindexed before it is deleted, so
//! after a crash at any moment the index names only complete files (see [`super::blobs`]).
//! One lock serialises every mutation across both.
//!
//! # Capacity
//! `capacity` bounds what the tier occupies: bodies counted by their allocated blocks, the
//! index's own files, and room reserved for bodies being written (fills spilling to disk).
//! Besides, nothing is written when the file system would be left with less than
//! `min_free` bytes or [`MIN_FREE_INODES`] inodes, so a full disk refuses objects instead
//! of failing writes; and a resource keeps at most `max_variants` variants, as in memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};

use super::blobs::{BlobFiles, BlobWriter, Reservation, TempBlob};
use super::index::{BodyPlace, BodyRecord, DiskIndex, Released, SledIndex, StoredVariant};
use super::packs::Packs;
use super::partials::PartialFiles;
use super::reserve::Reserve;
use super::{DiskError, ReadError};
use crate::cache::entry::EntryMeta;
use crate::cache::key::{PrimaryKey, VariantKey};

/// A body to store with a row: in a temporary file to be placed, or small enough to be
/// appended to a pack (no file, no block of its own on disk).
pub enum NewBody {
    File(TempBlob),
    Inline(Bytes),
}

/// The persistent store: an index and the files it names, within a capacity.
pub struct DiskStore {
    /// The index; `None` between closing a failed one and opening it again (see
    /// [`DiskStore::reopen_index`]), or until one that did not open at first does. Each
    /// call takes the lock for itself (recursively: only a reopening writes).
    index: RwLock<Option<Box<dyn DiskIndex>>>,
    /// The cache directory, where the index is opened again.
    root: PathBuf,
    pub(super) blobs: BlobFiles,
    pub(super) packs: Packs,
    /// Partial entries (RFC 9111 §3.3), beside the index rather than in it.
    pub(super) partials: PartialFiles,
    capacity: u64,
    fsync: bool,
    pub(super) write_lock: Mutex<()>,
    /// Bytes reserved by bodies being written.
    reserved: Arc<AtomicU64>,
    limits: StoreLimits,
    /// Spare room given up for the index when the file system fills (see [`super::reserve`]).
    reserve: Reserve,
    /// A corrupt index page was logged (see `DiskTier::report_corrupt_index`).
    corruption_reported: AtomicBool,
}

/// What the store keeps free, how many variants a resource may have and how many objects
/// the store may hold.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Free bytes the file system keeps; below, nothing more is written.
    pub min_free: u64,
    pub max_variants: usize,
    /// Rows (stored variants) beyond which the least recently used go, whatever room is
    /// left: each row the index has read stays in the process's memory (a few hundred
    /// bytes), so this bounds the disk tier's memory as the byte capacity cannot.
    pub max_objects: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            min_free: 0,
            max_variants: usize::MAX,
            max_objects: u64::MAX,
        }
    }
}

/// Where an index that sled reports corrupt is set aside (the last one only).
pub const CORRUPT_INDEX_DIR: &str = "index.corrupt";

/// Opens (or creates) the index in `root`'s `index/`; one sled reports corrupt is set
/// aside as [`CORRUPT_INDEX_DIR`] for an empty one.
fn open_index(root: &Path) -> Result<SledIndex, DiskError> {
    let index_dir = root.join("index");
    super::blobs::create_private_dir(&index_dir)?;
    match SledIndex::open(&index_dir) {
        Err(DiskError::Index(sled::Error::Corruption { .. })) => {
            // Refusing to open would leave the tier off for good; an empty index lets
            // it work again (the bodies the old one named are swept as orphans).
            let kept = root.join(CORRUPT_INDEX_DIR);
            let _ = std::fs::remove_dir_all(&kept);
            std::fs::rename(&index_dir, &kept).map_err(super::io_err(&index_dir))?;
            tracing::error!(kept = %kept.display(), "disk tier: the index is corrupt and does not open; set it aside and started an empty one (what it held is refetched on demand)");
            super::blobs::create_private_dir(&index_dir)?;
            SledIndex::open(&index_dir)
        }
        opened => opened,
    }
}

/// Free inodes the file system keeps; below, nothing more is written.
pub const MIN_FREE_INODES: u64 = 1000;

impl DiskStore {
    /// Opens (or creates) the store under `root`: `index/` (sled), `blobs/`, `packs/`,
    /// `tmp/` and the `reserve` (given up first when the file system is nearly full). An
    /// index sled reports corrupt is set aside as [`CORRUPT_INDEX_DIR`] for an empty one.
    /// No body is read.
    ///
    /// # Errors
    /// An unusable directory, or an index sled cannot open for another reason (open in
    /// another process, an I/O error such as a full file system without a reserve left).
    pub fn open(root: &Path, capacity: u64, fsync: bool) -> Result<DiskStore, DiskError> {
        match DiskStore::open_awaiting_index(root, capacity, fsync)? {
            (store, None) => Ok(store),
            (_, Some(index_failure)) => Err(index_failure),
        }
    }

    /// As [`DiskStore::open`], except that an index that does not open leaves the store
    /// without one, beside the failure: [`DiskStore::probe`] opens it once it can. Another
    /// outpost still holding the directory (a restart that overlaps), or a full file system
    /// with no reserve left to give up, then costs the disk tier until it is over, not
    /// until the next restart.
    ///
    /// # Errors
    /// A directory that cannot be used at all (not ours, not writable).
    pub fn open_awaiting_index(
        root: &Path,
        capacity: u64,
        fsync: bool,
    ) -> Result<(DiskStore, Option<DiskError>), DiskError> {
        let blobs = BlobFiles::open(root, fsync)?;
        let reserve = Reserve::open(root);
        // Before the index writes a byte: an open that runs out of room can ruin it.
        if let Some((free_bytes, _)) = blobs.free_space() {
            reserve.settle(free_bytes, || blobs.create_temp());
        }
        let (index, index_failure) = match open_index(root) {
            Ok(index) => (Some(Box::new(index) as Box<dyn DiskIndex>), None),
            Err(err) => (None, Some(err)),
        };
        let packs = Packs::open(root, fsync)?;
        let partials = PartialFiles::open(root, fsync)?;
        let store = DiskStore {
            index: RwLock::new(index),
            root: root.to_path_buf(),
            blobs,
            packs,
            partials,
            capacity,
            fsync,
            write_lock: Mutex::new(()),
            reserved: Arc::default(),
            limits: StoreLimits::default(),
            reserve,
            corruption_reported: AtomicBool::new(false),
        };
        Ok((store, index_failure))
    }

    /// The index, for one call.
    ///
    /// # Errors
    /// [`DiskError::IndexClosed`] while a failed index is being (or could not be) reopened.
    pub(super) fn index(&self) -> Result<MappedRwLockReadGuard<'_, dyn DiskIndex>, DiskError> {
        RwLockReadGuard::try_map(self.index.read_recursive(), |slot| slot.as_deref())
            .map_err(|_| DiskError::IndexClosed)
    }

    /// Opens the index again in place, as a restart would, then sweeps: sled keeps an I/O
    /// error of its own writes (the file system full under it) until it is reopened, so
    /// without this a tier that met one stayed off until the next restart. (An index that
    /// did not open at first is opened here too.) What sled had not flushed is lost, as in
    /// a crash: bodies placed for rows it forgot are swept as orphans, and invalidations
    /// it forgot were remembered by the tier (see [`super::invalidations`]), which applies
    /// them next.
    ///
    /// # Errors
    /// The index does not open again (the tier stays off, and the next probe retries).
    fn reopen_index(&self) -> Result<(), DiskError> {
        {
            let mut slot = self.index.write();
            // sled's lock on its directory goes with the last handle: close first.
            drop(slot.take());
            *slot = Some(Box::new(open_index(&self.root)?));
        }
        tracing::warn!("disk tier: index reopened after a failure of its own");
        self.sweep().map(drop)
    }

    /// Deletes the files of released bodies (after their rows are gone) and counts the
    /// space of released packed bodies as dead.
    pub(super) fn delete(&self, released: Released) -> Result<(), DiskError> {
        for (at, len) in released.packed {
            self.packs.released(at, len);
        }
        for digest in released.files {
            self.blobs.delete(&digest)?;
        }
        Ok(())
    }

    /// Every stored variant of `key`, newest first.
    pub fn variants(&self, key: &PrimaryKey) -> Result<Vec<EntryMeta>, DiskError> {
        Ok(self
            .stored_variants(key)?
            .into_iter()
            .map(|variant| variant.meta)
            .collect())
    }

    /// As [`DiskStore::variants`], each with the record of its body when its row holds it.
    pub fn stored_variants(&self, key: &PrimaryKey) -> Result<Vec<StoredVariant>, DiskError> {
        let (variants, released) = self.index()?.variants(key)?;
        if !released.is_empty() {
            let _serialised = self.write_lock.lock();
            self.delete(released)?;
        }
        Ok(variants)
    }

    /// The body of `meta`, verified against its recorded check (its digest for bodies
    /// recorded before checks were): from its pack, its file, or the index.
    pub fn read_body(&self, meta: &EntryMeta) -> Result<Bytes, ReadError> {
        self.read_body_of(meta, None).map(|(body, _)| body)
    }

    /// As [`DiskStore::read_body`], from `known` when the caller has the body's record
    /// already (from [`DiskStore::stored_variants`]): no index lookup then. Also says
    /// whether the body has a file of its own.
    pub fn read_body_of(
        &self,
        meta: &EntryMeta,
        known: Option<BodyRecord>,
    ) -> Result<(Bytes, bool), ReadError> {
        let record = match known {
            Some(record) => record,
            None => match self.index().and_then(|index| index.body_record(meta)) {
                Ok(Some(record)) => record,
                Ok(None) => return Err(ReadError::Missing),
                Err(err) => return Err(ReadError::Disk(err)),
            },
        };
        let mut reading = None;
        let body = match record.place {
            BodyPlace::File => {
                let (body, opened) = self.blobs.read_exactly(&meta.body_digest, meta.body_len)?;
                reading = Some(opened);
                body
            }
            BodyPlace::Packed(at) => match self.packs.read(at, meta.body_len) {
                // Compaction moved the body and deleted its pack since the record was read:
                // read it where it is now.
                Err(ReadError::Missing) => {
                    match self.index().and_then(|index| index.body_record(meta)) {
                        Ok(Some(BodyRecord {
                            place: BodyPlace::Packed(moved),
                            ..
                        })) if moved != at => self.packs.read(moved, meta.body_len)?,
                        _ => return Err(ReadError::Missing),
                    }
                }
                read => read?,
            },
            BodyPlace::InIndex(body) => body,
        };
        let intact = body.len() as u64 == meta.body_len
            && match record.check {
                Some(check) => super::body_check(&body) == check,
                None => *blake3::hash(&body).as_bytes() == meta.body_digest,
            };
        if intact {
            let in_file = reading.is_some();
            if let Some(reading) = reading {
                // Verified whole: hits may now be sent from it (`cache.disk_sendfile`).
                self.blobs
                    .opened
                    .register(&meta.body_digest, reading, meta.body_len);
            }
            Ok((body, in_file))
        } else {
            Err(ReadError::Corrupt)
        }
    }

    /// Whether the body of `meta` is small (packed, or kept in the index): read whole,
    /// never streamed from a file.
    pub fn is_inline(&self, meta: &EntryMeta) -> bool {
        matches!(
            self.index().and_then(|index| index.body_record(meta)),
            Ok(Some(record)) if record.place != BodyPlace::File
        )
    }

    /// Whether the body `meta` names is recorded and its bytes are there (a file, or
    /// within its pack); not read or verified.
    pub fn body_is_present(&self, meta: &EntryMeta) -> bool {
        match self.index().and_then(|index| index.body_record(meta)) {
            Ok(Some(record)) => match record.place {
                BodyPlace::File => self.blobs.exists(&meta.body_digest),
                BodyPlace::Packed(at) => self.packs.holds(at, meta.body_len),
                BodyPlace::InIndex(_) => true,
            },
            Ok(None) | Err(_) => false,
        }
    }

    /// Where the body with `digest` lives (for streaming large bodies).
    pub fn blob_path(&self, digest: &[u8; 32]) -> PathBuf {
        self.blobs.path_of(digest)
    }

    pub fn blocks(&self, digest: &[u8; 32]) -> Result<Option<Vec<[u8; 32]>>, DiskError> {
        self.index()?.blocks(digest)
    }

    /// The same store with `limits`.
    pub fn with_limits(mut self, limits: StoreLimits) -> DiskStore {
        self.limits = limits;
        self
    }

    /// Writes `body` to a temporary file, to be committed.
    ///
    /// # Errors
    /// [`DiskError::Full`] when the file system is at its free-space watermark.
    pub fn write_temp(&self, body: &[u8]) -> Result<TempBlob, DiskError> {
        self.check_room(body.len() as u64)?;
        self.blobs.write_temp(body)
    }

    /// A writer for a body of about `expected` bytes that streams to disk; the room is
    /// reserved against the capacity until the body is committed.
    ///
    /// # Errors
    /// [`DiskError::Full`] when the file system is at its watermark, or the body cannot fit
    /// the capacity at all.
    pub fn blob_writer(&self, expected: u64) -> Result<BlobWriter, DiskError> {
        if expected > self.capacity {
            return Err(DiskError::Full);
        }
        self.check_room(expected)?;
        // Held until the body is committed; every commit meanwhile (this one's too) evicts
        // for it.
        let reservation = Reservation::new(&self.reserved, expected);
        self.blobs.writer(reservation)
    }

    /// Checks that the tier works: a body file can be written and removed, and the index
    /// flushed.
    ///
    /// # Errors
    /// The failure met.
    pub fn probe(&self) -> Result<(), DiskError> {
        self.check_room(0)?;
        let temp = self.blobs.write_temp(b"outpost disk tier probe")?;
        self.blobs.discard(&temp);
        match self.index().and_then(|index| index.flush()) {
            Err(DiskError::Index(_) | DiskError::IndexClosed) => self.reopen_index(),
            flushed => flushed,
        }
    }

    /// Whether writing `len` more bytes keeps the file system above its watermarks, with
    /// the reserve's room still free. Gives the reserve up when the file system is nearly
    /// full, and makes it again when there is room.
    fn check_room(&self, len: u64) -> Result<(), DiskError> {
        let Some((free_bytes, free_inodes)) = self.blobs.free_space() else {
            // Not measurable here: the capacity alone bounds the tier.
            return Ok(());
        };
        let owed = self.reserve.settle(free_bytes, || self.blobs.create_temp());
        let wanted = self
            .limits
            .min_free
            .saturating_add(owed)
            .saturating_add(len);
        if free_bytes < wanted || free_inodes < MIN_FREE_INODES {
            return Err(DiskError::Full);
        }
        Ok(())
    }

    /// What rows and bodies may occupy: the capacity less the index's own files, the
    /// packs' dead space and the room reserved for bodies being written.
    fn room_for_rows(&self) -> u64 {
        self.capacity
            .saturating_sub(self.index().map_or(0, |index| index.own_size()))
            .saturating_sub(self.packs.dead_bytes())
            .saturating_sub(self.reserved.load(Ordering::Relaxed))
    }

    /// Compacts every pack at most half live (under the write lock): its live bodies are
    /// appended to the current pack and their records moved, the index is flushed, and
    /// then the pack is deleted. A body that cannot be read back keeps its old record,
    /// which then names a deleted pack: a miss when next read, removed by the next sweep.
    pub(super) fn compact_packs(&self) -> Result<(), DiskError> {
        while let Some(pack) = self.packs.to_compact() {
            let mut moved = 0u64;
            for (row, from, len) in self.index()?.packed_in(pack)? {
                let Ok(body) = self.packs.read(from, len) else {
                    continue;
                };
                let to = self.packs.append(&body)?;
                if self.index()?.move_packed(&row, from, to)? {
                    moved += len;
                } else {
                    self.packs.released(to, len);
                }
            }
            self.index()?.flush()?;
            self.packs.delete(pack)?;
            tracing::debug!(pack, moved, "disk tier: pack compacted");
        }
        Ok(())
    }

    /// Indexes `meta` with its body (`None`: the body is stored already under its digest,
    /// as when only headers were freshened). Returns the resources evicted for room.
    pub fn commit(
        &self,
        meta: &EntryMeta,
        body: Option<NewBody>,
    ) -> Result<Vec<PrimaryKey>, DiskError> {
        let _serialised = self.write_lock.lock();
        let digest = meta.body_digest;
        let is_stored = match self.index()?.has_body(&digest) {
            Ok(is_stored) => is_stored,
            Err(err) => {
                if let Some(NewBody::File(temp)) = &body {
                    self.blobs.discard(temp);
                }
                return Err(err);
            }
        };
        match (is_stored, body) {
            // Stored already under this digest: identical bytes, keep one copy.
            (true, Some(NewBody::File(temp))) => self.blobs.discard(&temp),
            (true, Some(NewBody::Inline(_)) | None) => {}
            (false, Some(NewBody::File(temp))) => {
                let allocated = self.blobs.place(&temp)?;
                self.index()?
                    .add_body(&digest, allocated, &temp.blocks, temp.check)?;
            }
            (false, Some(NewBody::Inline(body))) => {
                self.check_room(body.len() as u64)?;
                let at = self.packs.append(&body)?;
                let released = self.index()?.insert_packed(meta, at)?;
                return self.after_insert(meta, released);
            }
            // The body is the row's own, in a pack: the row is rewritten in place.
            // Otherwise it is gone (evicted meanwhile): index nothing that can never be
            // read.
            (false, None) => {
                return match self.index()?.reindex_packed(meta)? {
                    Some(released) => self.after_insert(meta, released),
                    None => Ok(Vec::new()),
                }
            }
        }
        let released = self.index()?.insert(meta)?;
        self.after_insert(meta, released)
    }

    /// What follows indexing a row (under the write lock): deleting the body the replaced
    /// row released, capping variants, evicting for room, and flushing when durable
    /// stores are asked for.
    fn after_insert(
        &self,
        meta: &EntryMeta,
        released: Released,
    ) -> Result<Vec<PrimaryKey>, DiskError> {
        self.delete(released)?;
        self.cap_variants(&meta.key)?;
        let (evicted, released) = self
            .index()?
            .evict_over(self.room_for_rows(), self.limits.max_objects)?;
        self.delete(released)?;
        self.compact_packs()?;
        if self.fsync {
            // Durable before it counts as stored; otherwise the index flushes every 200 ms.
            self.index()?.flush()?;
        }
        Ok(evicted)
    }

    /// Removes the oldest variants of `key` past `max_variants` (under the write lock).
    fn cap_variants(&self, key: &PrimaryKey) -> Result<(), DiskError> {
        let (variants, released) = self.index()?.variants(key)?;
        self.delete(released)?;
        for stored in variants.iter().skip(self.limits.max_variants.max(1)) {
            let released = self.index()?.remove_variant(key, &stored.meta.variant)?;
            self.delete(released)?;
        }
        Ok(())
    }

    /// Removes every variant of `key`; returns how many.
    pub fn remove(&self, key: &PrimaryKey) -> Result<usize, DiskError> {
        let _serialised = self.write_lock.lock();
        let (removed, released) = self.index()?.remove(key)?;
        self.delete(released)?;
        self.compact_packs()?;
        Ok(removed)
    }

    pub fn remove_variant(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError> {
        let _serialised = self.write_lock.lock();
        let released = self.index()?.remove_variant(key, variant)?;
        self.delete(released)
    }

    /// Moves a row to the recent end of the replacement order.
    pub fn touch(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError> {
        let _serialised = self.write_lock.lock();
        self.index()?.touch(key, variant)
    }

    pub fn keys_where(
        &self,
        predicate: &dyn Fn(&EntryMeta) -> bool,
    ) -> Result<Vec<PrimaryKey>, DiskError> {
        self.index()?.keys_where(predicate)
    }

    /// Stored rows and bytes.
    pub fn usage(&self) -> (u64, u64) {
        self.index().map_or((0, 0), |index| index.usage())
    }

    /// Makes what was indexed so far durable.
    pub fn flush(&self) -> Result<(), DiskError> {
        self.index()?.flush()
    }

    /// Rows the store may hold (see [`StoreLimits::max_objects`]).
    pub(super) fn max_objects(&self) -> u64 {
        self.limits.max_objects
    }

    /// Whether a corrupt index page was reported already (and, from now on, that it was).
    pub(super) fn corruption_reported(&self) -> bool {
        self.corruption_reported.swap(true, Ordering::Relaxed)
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether every store is made durable before it counts (`cache.fsync`).
    pub(super) fn fsync(&self) -> bool {
        self.fsync
    }

    pub(super) fn capacity(&self) -> u64 {
        self.capacity
    }
}

#[cfg(test)]
impl DiskStore {
    /// Indexes a test entry held in memory with its body in the index.
    pub(crate) fn commit_inline(
        &self,
        stored: &crate::cache::entry::StoredResponse,
    ) -> Vec<PrimaryKey> {
        // invariant: test entries hold their bodies in memory.
        let body = NewBody::Inline(stored.body.as_bytes().unwrap().clone());
        self.commit(&stored.meta, Some(body)).unwrap()
    }
}
