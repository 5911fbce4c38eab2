//! [`DiskStore`]: the index and the body files kept in step, synchronously. A body is
//! placed before the row that names it is indexed, and unindexed before it is deleted, so
//! after a crash at any moment the index names only complete files (see [`super::blobs`]).
//! One lock serialises every mutation across both.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use parking_lot::Mutex;

use super::blobs::{BlobFiles, BlobWriter, TempBlob};
use super::index::{DiskIndex, Released, SledIndex};
use super::{DiskError, ReadError};
use crate::cache::entry::EntryMeta;
use crate::cache::key::{PrimaryKey, VariantKey};

/// The persistent store: an index and the files it names, within a capacity.
pub struct DiskStore {
    pub(super) index: Box<dyn DiskIndex>,
    pub(super) blobs: BlobFiles,
    capacity: u64,
    fsync: bool,
    pub(super) write_lock: Mutex<()>,
}

impl DiskStore {
    /// Opens (or creates) the store under `root`: `index/` (sled), `blobs/`, `tmp/`. No
    /// body is read.
    ///
    /// # Errors
    /// An unusable directory, or an index sled cannot open (corrupt, another process).
    pub fn open(root: &Path, capacity: u64, fsync: bool) -> Result<DiskStore, DiskError> {
        let blobs = BlobFiles::open(root, fsync)?;
        let index_dir = root.join("index");
        super::blobs::create_private_dir(&index_dir)?;
        let index = SledIndex::open(&index_dir)?;
        Ok(DiskStore::with_index(
            Box::new(index),
            blobs,
            capacity,
            fsync,
        ))
    }

    pub fn with_index(
        index: Box<dyn DiskIndex>,
        blobs: BlobFiles,
        capacity: u64,
        fsync: bool,
    ) -> DiskStore {
        DiskStore {
            index,
            blobs,
            capacity,
            fsync,
            write_lock: Mutex::new(()),
        }
    }

    /// Deletes the files of released bodies (after their rows are gone).
    pub(super) fn delete(&self, released: Released) -> Result<(), DiskError> {
        for digest in released.0 {
            self.blobs.delete(&digest)?;
        }
        Ok(())
    }

    /// Every stored variant of `key`, newest first.
    pub fn variants(&self, key: &PrimaryKey) -> Result<Vec<EntryMeta>, DiskError> {
        let (metas, released) = self.index.variants(key)?;
        if !released.0.is_empty() {
            let _serialised = self.write_lock.lock();
            self.delete(released)?;
        }
        Ok(metas)
    }

    /// The body of `meta`, verified against its digest.
    pub fn read_body(&self, meta: &EntryMeta) -> Result<Bytes, ReadError> {
        self.blobs.read(&meta.body_digest, meta.body_len)
    }

    /// Where the body with `digest` lives (for streaming large bodies).
    pub fn blob_path(&self, digest: &[u8; 32]) -> PathBuf {
        self.blobs.path_of(digest)
    }

    pub fn blocks(&self, digest: &[u8; 32]) -> Result<Option<Vec<[u8; 32]>>, DiskError> {
        self.index.blocks(digest)
    }

    /// Writes `body` to a temporary file, to be committed.
    pub fn write_temp(&self, body: &[u8]) -> Result<TempBlob, DiskError> {
        self.blobs.write_temp(body)
    }

    /// A writer for a body that streams to disk.
    pub fn blob_writer(&self) -> Result<BlobWriter, DiskError> {
        self.blobs.writer()
    }

    /// Indexes `meta` with its body (`None`: the body is stored already under its digest,
    /// as when only headers were freshened). Returns the resources evicted for room.
    pub fn commit(
        &self,
        meta: &EntryMeta,
        body: Option<TempBlob>,
    ) -> Result<Vec<PrimaryKey>, DiskError> {
        let _serialised = self.write_lock.lock();
        let digest = meta.body_digest;
        let is_stored = match self.index.has_body(&digest) {
            Ok(is_stored) => is_stored,
            Err(err) => {
                if let Some(temp) = &body {
                    self.blobs.discard(temp);
                }
                return Err(err);
            }
        };
        match (is_stored, body) {
            // Stored already under this digest: identical bytes, keep one copy.
            (true, Some(temp)) => self.blobs.discard(&temp),
            (true, None) => {}
            (false, Some(temp)) => {
                self.blobs.place(&temp)?;
                self.index.add_body(&digest, temp.len, &temp.blocks)?;
            }
            // The body this row needs is gone (evicted meanwhile): index nothing that can
            // never be read.
            (false, None) => return Ok(Vec::new()),
        }
        let released = self.index.insert(meta)?;
        self.delete(released)?;
        let (evicted, released) = self.index.evict_over(self.capacity)?;
        self.delete(released)?;
        if self.fsync {
            // Durable before it counts as stored; otherwise the index flushes every 200 ms.
            self.index.flush()?;
        }
        Ok(evicted)
    }

    /// Removes every variant of `key`; returns how many.
    pub fn remove(&self, key: &PrimaryKey) -> Result<usize, DiskError> {
        let _serialised = self.write_lock.lock();
        let (removed, released) = self.index.remove(key)?;
        self.delete(released)?;
        Ok(removed)
    }

    pub fn remove_variant(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError> {
        let _serialised = self.write_lock.lock();
        let released = self.index.remove_variant(key, variant)?;
        self.delete(released)
    }

    /// Moves a row to the recent end of the replacement order.
    pub fn touch(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError> {
        let _serialised = self.write_lock.lock();
        self.index.touch(key, variant)
    }

    pub fn keys_where(
        &self,
        predicate: &dyn Fn(&EntryMeta) -> bool,
    ) -> Result<Vec<PrimaryKey>, DiskError> {
        self.index.keys_where(predicate)
    }

    /// Stored rows and bytes.
    pub fn usage(&self) -> (u64, u64) {
        self.index.usage()
    }

    /// Makes what was indexed so far durable.
    pub fn flush(&self) -> Result<(), DiskError> {
        self.index.flush()
    }

    pub(super) fn capacity(&self) -> u64 {
        self.capacity
    }
}
