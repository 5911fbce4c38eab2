//! Partial entries on disk (RFC 9111 §3.3): each resource's pieces in one file of
//! `partials/`, named by its key, and checked record by record when read. A range stored
//! before a restart is then still answered from the disk, and never with a byte that was
//! not the origin's. Their budget is `cache.partial_capacity`, as in memory; the oldest
//! files go first.
//!
//! A piece that joins pieces of the same representation is appended, with the newest
//! head, to its file; a new representation (or a file this run knows nothing of) is
//! written whole, to a temporary name and renamed. Before, every piece rewrote the whole
//! file: a 50 MB video seeked 100 times wrote up to 5 GB.
//!
//! File: `OPPART02`, key (32 bytes), variant (32), then records, each: its kind (1: a head,
//! [`EntryMeta::encode`]; 2: a piece, its first byte as u64 and its bytes), the payload's
//! length (u32), the payload, and XXH3-64 of the kind, length and payload. The last head
//! read is the entry's. A record cut short or failing its check ends the file: what came
//! before it is read (a crash mid-append loses that piece alone), and the next write
//! rewrites the file whole. Files of the first format (`OPPART01`, one check over the
//! whole file) are still read.

use std::collections::HashMap;
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

const MAGIC: &[u8; 8] = b"OPPART02";
/// The first format: the entry whole, under one check.
const MAGIC_V1: &[u8; 8] = b"OPPART01";
const PREAMBLE_LEN: usize = 8 + 32 + 32;
const HEAD_RECORD: u8 = 1;
const PIECE_RECORD: u8 = 2;
/// Records past which a file is written whole again (each append adds a head).
const MOST_RECORDS: usize = 256;

/// What this run knows a file holds (written by it, or read whole since it opened).
#[derive(Clone)]
struct Written {
    /// The representation its pieces are of (see [`PartialEntry::representation`]).
    representation: Option<(Vec<u8>, u64, VariantKey)>,
    /// The bytes its pieces cover, as sorted, disjoint `[start, end)` spans.
    covered: Vec<(u64, u64)>,
    records: usize,
    size: u64,
}

impl Written {
    /// A file of `size` bytes in `records` records holding `entry` and nothing else.
    fn holding(entry: &PartialEntry, records: usize, size: u64) -> Written {
        Written {
            representation: entry.representation(),
            covered: entry
                .pieces()
                .iter()
                .map(|(first, bytes)| (*first, first + bytes.len() as u64))
                .collect(),
            records,
            size,
        }
    }
}

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
    /// The resources with a file, and what it holds when this run knows: asked before
    /// any trip to the disk, on every store and on range requests. Its lock also
    /// serialises writes and removals, so that a write that checked its entry is still
    /// current finishes before a removal looks (see [`PartialFiles::write_if`]).
    present: Mutex<HashMap<PrimaryKey, Option<Written>>>,
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
        let (mut held, mut present) = (0, HashMap::new());
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
                present.insert(key, None);
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
        self.present.lock().contains_key(key)
    }

    pub fn set_budget(&self, budget: u64) {
        self.budget.store(budget, Ordering::Relaxed);
    }

    fn path(&self, key: &PrimaryKey) -> PathBuf {
        self.dir.join(key.to_hex())
    }

    /// Writes `entry` as its resource's, when `is_current` still says so once no removal
    /// can run (a removal that came first then finds it; one that comes later removes it):
    /// appended to the file when that holds pieces of the same representation, else in
    /// place of it. An entry larger than the whole budget is not kept.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_if(
        &self,
        entry: &PartialEntry,
        is_current: impl FnOnce() -> bool,
    ) -> Result<(), DiskError> {
        let budget = self.budget.load(Ordering::Relaxed);
        let mut present = self.present.lock();
        if !is_current() {
            return Ok(());
        }
        let key = entry.meta.key;
        let path = self.path(&key);
        let appendable = match (present.get(&key), entry.representation()) {
            (Some(Some(written)), Some(representation)) => {
                let is_same = written.representation.as_ref() == Some(&representation);
                (is_same && written.records < MOST_RECORDS).then(|| written.clone())
            }
            _ => None,
        };
        let written = match appendable {
            Some(written) => self.append(entry, written, &path, budget),
            None => {
                let encoded = encode(entry);
                if encoded.len() as u64 > budget {
                    return Ok(());
                }
                self.write_whole(entry, &encoded, &path)
            }
        };
        let written = match written {
            Ok(written) => written,
            Err(err) => {
                // What the file holds is not known any more: the next write replaces it.
                if let Some(state) = present.get_mut(&key) {
                    *state = None;
                }
                return Err(err);
            }
        };
        let Some(written) = written else {
            // Past the whole budget: the file stays as it was.
            return Ok(());
        };
        present.insert(key, Some(written));
        self.evict_over(budget, &path, &mut present);
        Ok(())
    }

    /// Writes `entry`, `encoded` whole, to a temporary file renamed over the resource's.
    fn write_whole(
        &self,
        entry: &PartialEntry,
        encoded: &[u8],
        path: &Path,
    ) -> Result<Option<Written>, DiskError> {
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}", entry.meta.key.to_hex()));
        // One left by a write that failed midway (its clean-up failing too) goes first: the
        // file is made anew, private, never through a link planted in its place.
        let _ = fs::remove_file(&temp);
        let mut file = super::blobs::create_private_file(&temp)?;
        let written = file.write_all(encoded).and_then(|()| match self.fsync {
            true => file.sync_all(),
            false => Ok(()),
        });
        drop(file);
        if let Err(err) = written {
            let _ = fs::remove_file(&temp);
            return Err(io_err(&temp)(err));
        }
        let replaced = fs::metadata(path).map_or(0, |meta| meta.len());
        fs::rename(&temp, path).map_err(io_err(path))?;
        self.held.fetch_add(encoded.len() as u64, Ordering::Relaxed);
        self.forget_bytes(replaced);
        let records = 1 + entry.pieces().len();
        Ok(Some(Written::holding(entry, records, encoded.len() as u64)))
    }

    /// Appends `entry`'s head and the bytes of its pieces the file (holding `written`)
    /// lacks; `None` when that would take the file past `budget` (it stays as it was).
    fn append(
        &self,
        entry: &PartialEntry,
        mut written: Written,
        path: &Path,
        budget: u64,
    ) -> Result<Option<Written>, DiskError> {
        let mut records = Vec::new();
        push_record(&mut records, HEAD_RECORD, &[&entry.meta.encode()]);
        let mut added = Vec::new();
        for (first, bytes) in entry.pieces() {
            for (start, end) in uncovered(&written.covered, *first, first + bytes.len() as u64) {
                let part = &bytes[(start - first) as usize..(end - first) as usize];
                push_record(&mut records, PIECE_RECORD, &[&start.to_be_bytes(), part]);
                added.push((start, end));
            }
        }
        if written.size + records.len() as u64 > budget {
            return Ok(None);
        }
        let mut options = fs::OpenOptions::new();
        options.append(true);
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        let appended = options.open(path).and_then(|mut file| {
            file.write_all(&records)?;
            match self.fsync {
                true => file.sync_data(),
                false => Ok(()),
            }
        });
        appended.map_err(io_err(path))?;
        self.held.fetch_add(records.len() as u64, Ordering::Relaxed);
        written.records += 1 + added.len();
        written.covered.extend(added);
        written.covered = joined(std::mem::take(&mut written.covered));
        written.size += records.len() as u64;
        Ok(Some(written))
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
        match decode(&bytes).filter(|decoded| decoded.entry.meta.key == *key) {
            Some(decoded) => {
                let mut present = self.present.lock();
                if let Some(state) = present.get_mut(key) {
                    match (&state, decoded.written) {
                        // Learnt, unless a write since knows better.
                        (None, Some(written)) => *state = Some(written),
                        // A torn end: the next write replaces the file.
                        (_, None) => *state = None,
                        _ => {}
                    }
                }
                Ok(Some(decoded.entry))
            }
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
        if !present.contains_key(key) {
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
            let entry = decode(&bytes).map(|decoded| decoded.entry);
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
        present: &mut HashMap<PrimaryKey, Option<Written>>,
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
    fn evict_over(
        &self,
        budget: u64,
        keep: &Path,
        present: &mut HashMap<PrimaryKey, Option<Written>>,
    ) {
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

/// `entry` as a whole file: preamble, head, pieces.
fn encode(entry: &PartialEntry) -> Vec<u8> {
    let body: usize = entry.pieces().iter().map(|(_, bytes)| bytes.len()).sum();
    let mut out = Vec::with_capacity(PREAMBLE_LEN + 1024 + entry.pieces().len() * 21 + body);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&entry.meta.key.0);
    out.extend_from_slice(&entry.meta.variant.0);
    push_record(&mut out, HEAD_RECORD, &[&entry.meta.encode()]);
    for (first, bytes) in entry.pieces() {
        push_record(&mut out, PIECE_RECORD, &[&first.to_be_bytes(), bytes]);
    }
    out
}

/// Appends a record of `kind` whose payload is `parts` one after another.
fn push_record(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    let check = xxhash_rust::xxh3::xxh3_64(&out[start..]);
    out.extend_from_slice(&check.to_be_bytes());
}

/// The parts of `[first, end)` that `covered` (sorted, disjoint spans) does not cover.
fn uncovered(covered: &[(u64, u64)], first: u64, end: u64) -> Vec<(u64, u64)> {
    let mut parts = Vec::new();
    let mut from = first;
    for &(start, stop) in covered {
        if stop <= from || start >= end {
            continue;
        }
        if start > from {
            parts.push((from, start));
        }
        from = from.max(stop);
    }
    if from < end {
        parts.push((from, end));
    }
    parts
}

/// `spans` sorted, with those that overlap or adjoin joined.
fn joined(mut spans: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// A file read back: its entry, and what it holds when it was read to its end (`None`
/// for a file of the first format, or one whose end was torn).
struct Decoded {
    entry: PartialEntry,
    written: Option<Written>,
}

/// The entry `bytes` hold, when their records pass their checks and make sense (pieces
/// within the representation); never panics on hostile bytes.
fn decode(bytes: &[u8]) -> Option<Decoded> {
    if bytes.starts_with(MAGIC_V1) {
        return decode_v1(bytes).map(|entry| Decoded {
            entry,
            written: None,
        });
    }
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let key = PrimaryKey(rest.get(..32)?.try_into().ok()?);
    let variant = VariantKey(rest.get(32..64)?.try_into().ok()?);
    let mut rest = &rest[64..];
    let (mut meta, mut pieces, mut records) = (None, Vec::new(), 0);
    let mut whole = true;
    while !rest.is_empty() {
        let Some((kind, payload, left)) = next_record(rest) else {
            whole = false;
            break;
        };
        rest = left;
        records += 1;
        match kind {
            HEAD_RECORD => meta = Some(EntryMeta::decode(payload, &key, &variant).ok()?),
            PIECE_RECORD => {
                let (first, piece) = payload.split_at_checked(8)?;
                let first = u64::from_be_bytes(first.try_into().ok()?);
                pieces.push((first, Bytes::copy_from_slice(piece)));
            }
            _ => return None,
        }
    }
    let entry = PartialEntry::from_written(meta?, pieces)?;
    let written = whole.then(|| Written::holding(&entry, records, bytes.len() as u64));
    Some(Decoded { entry, written })
}

/// The next record of `bytes` (its kind, its payload, and what follows it), when it is
/// whole and passes its check.
fn next_record(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let len = u32::from_be_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
    let end = 5usize.checked_add(len)?;
    let (record, rest) = bytes.split_at_checked(end)?;
    let (check, rest) = rest.split_at_checked(8)?;
    if xxhash_rust::xxh3::xxh3_64(record) != u64::from_be_bytes(check.try_into().ok()?) {
        return None;
    }
    Some((record[0], &record[5..], rest))
}

/// A file of the first format: the entry whole, under one check.
fn decode_v1(bytes: &[u8]) -> Option<PartialEntry> {
    let (content, check) = bytes.split_at_checked(bytes.len().checked_sub(8)?)?;
    if xxhash_rust::xxh3::xxh3_64(content) != u64::from_be_bytes(check.try_into().ok()?) {
        return None;
    }
    let mut rest = content.strip_prefix(MAGIC_V1.as_slice())?;
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

    /// Partial files under `dir` with room for 1 MiB of pieces.
    fn budgeted(dir: &Path) -> PartialFiles {
        let files = PartialFiles::open(dir, false).unwrap();
        files.set_budget(1 << 20);
        files
    }

    /// An entry read back after reopening holds exactly its pieces; one whose file lost a
    /// byte, or was cut short, is a miss and is gone.
    #[test]
    fn entries_come_back_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let kept = piece("/kept", 2, "cdef", 10);
        let damaged = piece("/damaged", 0, "abc", 10);
        {
            let files = budgeted(dir.path());
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
        // Cut anywhere before its one piece's record ends, a file holds no entry.
        for cut in [0, 8, 40, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
    }

    fn inode(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap())
    }

    /// A piece joining pieces of the same representation is appended (the file is not
    /// written anew: same inode, grown by about the piece), with the newest head; the
    /// bytes it shares with what the file holds are not written twice. After a restart,
    /// the file read whole is appended to as well. Another representation replaces it.
    #[test]
    fn pieces_of_one_representation_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let files = budgeted(dir.path());
        let first = piece("/video", 0, &"a".repeat(4000), 100_000);
        files.write_if(&first, || true).unwrap();
        let path = dir.path().join("partials").join(first.meta.key.to_hex());
        let (inode_before, size_before) = (inode(&path), fs::metadata(&path).unwrap().len());
        // As memory holds it: both pieces, the second overlapping the first by 1000 bytes.
        let both = PartialEntry::from_written(
            first.meta.clone(),
            vec![
                (0, Bytes::from("a".repeat(4000))),
                (3000, Bytes::from("b".repeat(4000))),
            ],
        )
        .unwrap();
        files.write_if(&both, || true).unwrap();
        let grown = fs::metadata(&path).unwrap().len() - size_before;
        assert_eq!(inode(&path), inode_before, "appended, not rewritten");
        assert!((3000..3000 + 1024).contains(&grown), "grew by {grown}");
        assert_eq!(files.usage().1, fs::metadata(&path).unwrap().len());
        drop(files);

        let files = budgeted(dir.path());
        let read = files.read(&first.meta.key).unwrap().unwrap();
        assert_eq!(read.pieces().len(), 1, "joined");
        assert_eq!(
            &read.window(0, 3999).unwrap()[..],
            "a".repeat(4000).as_bytes()
        );
        assert_eq!(
            &read.window(4000, 6999).unwrap()[..],
            "b".repeat(3000).as_bytes()
        );
        let third = PartialEntry::from_written(
            read.meta.clone(),
            vec![
                (0, read.window(0, 6999).unwrap()),
                (50_000, Bytes::from("c")),
            ],
        )
        .unwrap();
        files.write_if(&third, || true).unwrap();
        assert_eq!(inode(&path), inode_before, "appended after a restart too");
        let read = files.read(&first.meta.key).unwrap().unwrap();
        assert_eq!(&read.window(50_000, 50_000).unwrap()[..], b"c");

        let other = crate::cache::partial::testing::piece("/video", "\"v2\"", 10, "new", 100_000);
        files.write_if(&other, || true).unwrap();
        assert_ne!(
            inode(&path),
            inode_before,
            "another representation is written whole"
        );
        let read = files.read(&first.meta.key).unwrap().unwrap();
        assert_eq!(read.pieces().len(), 1);
        assert_eq!(&read.window(10, 12).unwrap()[..], b"new");
    }

    /// An append cut short by a crash loses that piece alone: what came before is read,
    /// and the next write replaces the file.
    #[test]
    fn a_torn_append_loses_only_its_own_piece() {
        let dir = tempfile::tempdir().unwrap();
        let files = budgeted(dir.path());
        let first = piece("/torn", 0, "0123", 100);
        files.write_if(&first, || true).unwrap();
        let path = dir.path().join("partials").join(first.meta.key.to_hex());
        let whole_len = fs::metadata(&path).unwrap().len();
        let both = PartialEntry::from_written(
            first.meta.clone(),
            vec![(0, Bytes::from("0123")), (50, Bytes::from("fifty"))],
        )
        .unwrap();
        files.write_if(&both, || true).unwrap();
        let appended = fs::read(&path).unwrap();
        for cut in whole_len as usize..appended.len() {
            fs::write(&path, &appended[..cut]).unwrap();
            let read = files
                .read(&first.meta.key)
                .unwrap()
                .expect("the first piece");
            assert_eq!(read.pieces().len(), 1, "cut at {cut}");
            assert_eq!(&read.window(0, 3).unwrap()[..], b"0123");
        }
        let inode_torn = inode(&path);
        files.write_if(&both, || true).unwrap();
        assert_ne!(inode(&path), inode_torn, "a torn file is replaced whole");
        let read = files.read(&first.meta.key).unwrap().unwrap();
        assert_eq!(&read.window(50, 54).unwrap()[..], b"fifty");
    }

    /// A file of the first format (one check over it all) is still read, and replaced by
    /// the next write.
    #[test]
    fn files_of_the_first_format_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let files = budgeted(dir.path());
        let old = piece("/old", 2, "cdef", 10);
        let meta = old.meta.encode();
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(&old.meta.key.0);
        v1.extend_from_slice(&old.meta.variant.0);
        v1.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        v1.extend_from_slice(&meta);
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&2u64.to_be_bytes());
        v1.extend_from_slice(&4u64.to_be_bytes());
        v1.extend_from_slice(b"cdef");
        let check = xxhash_rust::xxh3::xxh3_64(&v1);
        v1.extend_from_slice(&check.to_be_bytes());
        let path = dir.path().join("partials").join(old.meta.key.to_hex());
        fs::write(&path, &v1).unwrap();
        drop(files);
        let files = budgeted(dir.path());
        let read = files.read(&old.meta.key).unwrap().unwrap();
        assert_eq!(&read.window(2, 5).unwrap()[..], b"cdef");
        files.write_if(&read, || true).unwrap();
        assert!(fs::read(&path).unwrap().starts_with(MAGIC));
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
