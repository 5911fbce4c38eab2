//! Partial entries on disk (RFC 9111 §3.3): each resource's pieces in one file of
//! `partials/`, named by its key, written whole (to a temporary name, then renamed) each
//! time a piece joins them, and checked whole when read. A range stored before a restart
//! is then still answered from the disk, and never with a byte that was not the origin's.
//! Their budget is `cache.partial_capacity`, as in memory; the oldest files go first.
//!
//! File: `OPPART01`, key (32 bytes), variant (32), the head's length (u32) and encoding
//! ([`EntryMeta::encode`]), the number of pieces (u32), each piece's first byte and length
//! (u64 each), the pieces' bytes, and XXH3-64 of everything before it.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{io_err, DiskError};
use crate::cache::entry::EntryMeta;
use crate::cache::key::{PrimaryKey, VariantKey};
use crate::cache::partial::PartialEntry;

const MAGIC: &[u8; 8] = b"OPPART01";

/// Where a file is written before it is renamed over the resource's.
const TEMP_PREFIX: &str = ".tmp-";

/// The partial entries' files.
pub struct PartialFiles {
    dir: PathBuf,
    fsync: bool,
    /// Bytes the files may take (0: none is kept).
    budget: AtomicU64,
    /// Bytes they take now, as counted when opened and kept since.
    held: AtomicU64,
    /// The resources with a file: asked before any trip to the disk, on every store and
    /// on range requests. Its lock also serialises writes and removals, so that a write
    /// that checked its entry is still current finishes before a removal looks (see
    /// [`PartialFiles::write_if`]).
    present: Mutex<HashSet<PrimaryKey>>,
}

impl PartialFiles {
    /// The files under `root`'s `partials/`, made when missing; temporary files an earlier
    /// run left are removed.
    ///
    /// # Errors
    /// A directory that cannot be made or read.
    pub fn open(root: &Path, fsync: bool) -> Result<PartialFiles, DiskError> {
        let dir = root.join("partials");
        super::blobs::create_private_dir(&dir)?;
        let (mut held, mut present) = (0, HashSet::new());
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_file() {
                continue;
            }
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
            } else if let Some(key) = key_of(&entry.path()) {
                held += entry.metadata().map_or(0, |meta| meta.len());
                present.insert(key);
            }
        }
        Ok(PartialFiles {
            dir,
            fsync,
            budget: AtomicU64::new(0),
            held: AtomicU64::new(held),
            present: Mutex::new(present),
        })
    }

    /// Files and the bytes they take.
    pub fn usage(&self) -> (u64, u64) {
        let files = self.present.lock().len() as u64;
        (files, self.held.load(Ordering::Relaxed))
    }

    /// Whether `key` may have a file (one written or found at open, not removed since).
    pub fn may_hold(&self, key: &PrimaryKey) -> bool {
        self.present.lock().contains(key)
    }

    pub fn set_budget(&self, budget: u64) {
        self.budget.store(budget, Ordering::Relaxed);
    }

    fn path(&self, key: &PrimaryKey) -> PathBuf {
        self.dir.join(key.to_hex())
    }

    /// Writes `entry` in place of what its resource had, when `is_current` still says so
    /// once no removal can run (a removal that came first then finds it; one that comes
    /// later removes it). An entry larger than the whole budget is not kept.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_if(
        &self,
        entry: &PartialEntry,
        is_current: impl FnOnce() -> bool,
    ) -> Result<(), DiskError> {
        let encoded = encode(entry);
        let budget = self.budget.load(Ordering::Relaxed);
        let mut present = self.present.lock();
        if encoded.len() as u64 > budget || !is_current() {
            return Ok(());
        }
        let path = self.path(&entry.meta.key);
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}", entry.meta.key.to_hex()));
        // One left by a write that failed midway (its clean-up failing too) goes first: the
        // file is made anew, private, never through a link planted in its place.
        let _ = fs::remove_file(&temp);
        let mut file = super::blobs::create_private_file(&temp)?;
        let written = file.write_all(&encoded).and_then(|()| match self.fsync {
            true => file.sync_all(),
            false => Ok(()),
        });
        drop(file);
        if let Err(err) = written {
            let _ = fs::remove_file(&temp);
            return Err(io_err(&temp)(err));
        }
        let replaced = fs::metadata(&path).map_or(0, |meta| meta.len());
        fs::rename(&temp, &path).map_err(io_err(&path))?;
        present.insert(entry.meta.key);
        self.held.fetch_add(encoded.len() as u64, Ordering::Relaxed);
        self.forget_bytes(replaced);
        self.evict_over(budget, &path, &mut present);
        Ok(())
    }

    /// The entry of `key`, read and checked; one that fails the check, or names another
    /// resource, is removed (a miss).
    ///
    /// # Errors
    /// The file exists but cannot be read.
    pub fn read(&self, key: &PrimaryKey) -> Result<Option<PartialEntry>, DiskError> {
        if !self.may_hold(key) {
            return Ok(None);
        }
        let path = self.path(key);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_err(&path)(err)),
        };
        match decode(&bytes).filter(|entry| entry.meta.key == *key) {
            Some(entry) => Ok(Some(entry)),
            None => {
                tracing::warn!(path = %path.display(), "disk tier: a partial entry's file fails its check; removed");
                self.remove(key)?;
                Ok(None)
            }
        }
    }

    /// Removes the entry of `key`; whether there was one.
    ///
    /// # Errors
    /// The file exists but cannot be removed.
    pub fn remove(&self, key: &PrimaryKey) -> Result<bool, DiskError> {
        let mut present = self.present.lock();
        if !present.contains(key) {
            return Ok(false);
        }
        self.remove_file(&self.path(key), &mut present)
    }

    /// Removes every entry whose head `matches` (a purge by prefix or tag); returns their
    /// resources.
    ///
    /// # Errors
    /// The directory cannot be read, or a file removed.
    pub fn remove_where(
        &self,
        matches: &dyn Fn(&EntryMeta) -> bool,
    ) -> Result<Vec<PrimaryKey>, DiskError> {
        let mut present = self.present.lock();
        let mut removed = Vec::new();
        for path in self.files()? {
            let Ok(bytes) = fs::read(&path) else {
                continue;
            };
            // One that fails its check goes too (it would be removed when read), uncounted.
            let entry = decode(&bytes);
            let is_named = entry.as_ref().is_none_or(|entry| matches(&entry.meta));
            if is_named && self.remove_file(&path, &mut present)? {
                removed.extend(entry.map(|entry| entry.meta.key));
            }
        }
        Ok(removed)
    }

    fn remove_file(
        &self,
        path: &Path,
        present: &mut HashSet<PrimaryKey>,
    ) -> Result<bool, DiskError> {
        if let Some(key) = key_of(path) {
            present.remove(&key);
        }
        let len = match fs::metadata(path) {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(io_err(path)(err)),
        };
        match fs::remove_file(path) {
            Ok(()) => {
                self.forget_bytes(len);
                Ok(true)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(io_err(path)(err)),
        }
    }

    /// The entries' files (not temporary ones).
    fn files(&self) -> Result<Vec<PathBuf>, DiskError> {
        Ok(fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
            .filter(|entry| !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .map(|entry| entry.path())
            .collect())
    }

    /// Removes the least recently written files until what is held fits `budget`, never
    /// `keep` (the file just written).
    fn evict_over(&self, budget: u64, keep: &Path, present: &mut HashSet<PrimaryKey>) {
        if self.held.load(Ordering::Relaxed) <= budget {
            return;
        }
        let Ok(files) = self.files() else {
            return;
        };
        let mut dated: Vec<(std::time::SystemTime, PathBuf)> = files
            .into_iter()
            .filter(|path| path != keep)
            .filter_map(|path| Some((fs::metadata(&path).ok()?.modified().ok()?, path)))
            .collect();
        dated.sort();
        for (_, path) in dated {
            if self.held.load(Ordering::Relaxed) <= budget {
                break;
            }
            let _ = self.remove_file(&path, present);
        }
    }

    fn forget_bytes(&self, len: u64) {
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(len))
            });
    }
}

impl super::DiskTier {
    /// The same tier, keeping up to `budget` bytes of partial entries.
    pub fn with_partial_budget(self, budget: u64) -> super::DiskTier {
        self.store.partials.set_budget(budget);
        self
    }

    /// Partial entries on disk and the bytes their files take.
    pub fn partial_usage(&self) -> (u64, u64) {
        self.store.partials.usage()
    }

    /// Whether `key` may have a partial entry on disk (no trip to the disk).
    pub fn may_hold_partial(&self, key: &PrimaryKey) -> bool {
        self.is_available() && self.store.partials.may_hold(key)
    }

    /// Writes `entry` as its resource's partial entry, if `is_current` still says it is
    /// once no removal can run meanwhile (see [`PartialFiles::write_if`]).
    pub async fn store_partial(
        &self,
        entry: std::sync::Arc<PartialEntry>,
        is_current: impl FnOnce() -> bool + Send + 'static,
    ) {
        self.run(move |s| s.partials.write_if(&entry, is_current))
            .await;
    }

    /// The partial entry of `key` kept on disk, checked.
    pub async fn load_partial(&self, key: PrimaryKey) -> Option<PartialEntry> {
        if !self.may_hold_partial(&key) {
            return None;
        }
        self.read(move |s| s.partials.read(&key)).await.flatten()
    }

    /// Removes the partial entry of `key`, if any.
    pub async fn remove_partial(&self, key: PrimaryKey) {
        if self.may_hold_partial(&key) {
            self.run(move |s| s.partials.remove(&key)).await;
        }
    }

    /// Removes the partial entries whose head `matches`; returns their resources.
    pub async fn remove_partials_where(&self, matches: super::Matcher) -> Vec<PrimaryKey> {
        self.run(move |s| s.partials.remove_where(&*matches))
            .await
            .unwrap_or_default()
    }
}

/// The key a file of the directory is named by (its hex, as [`PrimaryKey::to_hex`]).
fn key_of(path: &Path) -> Option<PrimaryKey> {
    super::blobs::parse_hex(path.file_name()?.to_str()?).map(PrimaryKey)
}

fn encode(entry: &PartialEntry) -> Vec<u8> {
    let meta = entry.meta.encode();
    let pieces = entry.pieces();
    let body: usize = pieces.iter().map(|(_, bytes)| bytes.len()).sum();
    let mut out = Vec::with_capacity(8 + 64 + 8 + meta.len() + pieces.len() * 16 + body + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&entry.meta.key.0);
    out.extend_from_slice(&entry.meta.variant.0);
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&(pieces.len() as u32).to_be_bytes());
    for (first, bytes) in pieces {
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    }
    for (_, bytes) in pieces {
        out.extend_from_slice(bytes);
    }
    let check = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&check.to_be_bytes());
    out
}

/// The entry `bytes` hold, when they pass the check and make sense (pieces in order,
/// apart, within the representation); never panics on hostile bytes.
fn decode(bytes: &[u8]) -> Option<PartialEntry> {
    let (content, check) = bytes.split_at_checked(bytes.len().checked_sub(8)?)?;
    if xxhash_rust::xxh3::xxh3_64(content) != u64::from_be_bytes(check.try_into().ok()?) {
        return None;
    }
    let mut rest = content.strip_prefix(MAGIC.as_slice())?;
    let mut take = |len: usize| -> Option<&[u8]> {
        let (taken, left) = rest.split_at_checked(len)?;
        rest = left;
        Some(taken)
    };
    let key = PrimaryKey(take(32)?.try_into().ok()?);
    let variant = VariantKey(take(32)?.try_into().ok()?);
    let meta_len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    let meta = EntryMeta::decode(take(meta_len)?, &key, &variant).ok()?;
    let count = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    let mut spans = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let first = u64::from_be_bytes(take(8)?.try_into().ok()?);
        let len = usize::try_from(u64::from_be_bytes(take(8)?.try_into().ok()?)).ok()?;
        spans.push((first, len));
    }
    let mut pieces = Vec::with_capacity(spans.len());
    for (first, len) in spans {
        pieces.push((first, Bytes::copy_from_slice(take(len)?)));
    }
    if !rest.is_empty() {
        return None;
    }
    PartialEntry::from_stored(meta, pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(path: &str, first: u64, text: &str, len: u64) -> PartialEntry {
        crate::cache::partial::testing::piece(path, "\"v1\"", first, text, len)
    }

    /// An entry read back after reopening holds exactly its pieces; one whose file lost a
    /// byte, or was cut short, is a miss and is gone.
    #[test]
    fn entries_come_back_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let kept = piece("/kept", 2, "cdef", 10);
        let damaged = piece("/damaged", 0, "abc", 10);
        {
            let files = PartialFiles::open(dir.path(), false).unwrap();
            files.set_budget(1 << 20);
            files.write_if(&kept, || true).unwrap();
            files.write_if(&damaged, || true).unwrap();
            files
                .write_if(&piece("/not-current", 0, "x", 2), || false)
                .unwrap();
        }
        let path = dir.path().join("partials").join(damaged.meta.key.to_hex());
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 12;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let kept_path = dir.path().join("partials").join(kept.meta.key.to_hex());
            let mode = fs::metadata(kept_path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "private, as every file of the tier");
        }
        let files = PartialFiles::open(dir.path(), false).unwrap();
        let read = files.read(&kept.meta.key).unwrap().expect("kept");
        assert_eq!(read.window(2, 5).unwrap(), "cdef");
        assert!(read.window(0, 2).is_none());
        assert_eq!(read.meta.body_len, 10);
        assert!(files.read(&damaged.meta.key).unwrap().is_none());
        assert!(!path.exists(), "removed");
        let not_current = piece("/not-current", 0, "x", 2);
        assert!(files.read(&not_current.meta.key).unwrap().is_none());
        for cut in [0, 8, 40, bytes.len() / 2] {
            assert!(decode(&bytes[..cut]).is_none());
        }
    }

    /// Past the budget the least recently written files go; one larger than the budget is
    /// not kept; removal by head takes what it names.
    #[test]
    fn the_budget_holds_and_purges_reach_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = PartialFiles::open(dir.path(), false).unwrap();
        let one = piece("/a/one", 0, "0123456789", 100);
        let size = encode(&one).len() as u64;
        files.set_budget(size * 2 + size / 2);
        files.write_if(&one, || true).unwrap();
        // Modification times a second apart, however coarse the file system's clock.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(dir.path().join("partials").join(one.meta.key.to_hex()))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let two = piece("/a/two", 0, "0123456789", 100);
        let three = piece("/b/three", 0, "0123456789", 100);
        files.write_if(&two, || true).unwrap();
        files.write_if(&three, || true).unwrap();
        assert!(
            files.read(&one.meta.key).unwrap().is_none(),
            "the oldest went"
        );
        assert!(files.read(&two.meta.key).unwrap().is_some());
        files.set_budget(10);
        files.write_if(&piece("/c", 0, "x", 5), || true).unwrap();
        assert!(files
            .read(&piece("/c", 0, "x", 5).meta.key)
            .unwrap()
            .is_none());
        let removed = files
            .remove_where(&|meta: &EntryMeta| meta.url.contains("/a/"))
            .unwrap();
        assert_eq!(removed, vec![two.meta.key]);
        assert!(files.read(&two.meta.key).unwrap().is_none());
        assert!(files.read(&three.meta.key).unwrap().is_some());
    }
}
