//! Small bodies appended to pack files (`packs/00000001.pack`, ...): one write per body and
//! no file, inode or block of its own, and none of the index's own space either.
//!
//! Why not in the index: sled keeps each value about twice over in its log (it reclaims a
//! segment only once half of it is dead), so a 1 KiB body kept there took 2 KiB of disk. A
//! pack holds each body once; the space of bodies released is reclaimed by compaction.
//!
//! # Layout and crash safety
//! Bodies are appended to the current pack at its end; a pack reaching [`PACK_SIZE`] is
//! closed and a new one begun. The index records a body's pack and offset only after the
//! append, so a crash leaves at worst unreferenced bytes at a pack's end (dead space that
//! compaction reclaims); a read checks the bytes against the check the index recorded, so
//! a torn or lost write is a miss, never a wrong body.
//!
//! # Compaction
//! The store knows how many live bytes each closed pack holds (counted when the sweep
//! recounts, then kept as bodies are released). A pack at most half live has its live
//! bodies appended to the current pack, their records moved, the index flushed, and only
//! then is it deleted, so no record ever names a deleted pack's bytes.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{io_err, DiskError, ReadError};

/// A pack is closed once it holds this many bytes.
pub const PACK_SIZE: u64 = 16 << 20;

/// Where a packed body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackedAt {
    pub pack: u32,
    pub offset: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PackUsage {
    size: u64,
    live: u64,
}

struct Current {
    id: u32,
    file: Arc<fs::File>,
    len: u64,
}

/// The pack files under one cache directory.
pub struct Packs {
    dir: PathBuf,
    fsync: bool,
    /// The pack appended to; appends are serialised by the store's write lock, and this
    /// lock besides.
    current: Mutex<Current>,
    /// Open packs, for reads (positioned, so shared).
    open: Mutex<HashMap<u32, Arc<fs::File>>>,
    /// Per pack, its size and the bytes of it bodies still use; `None` until the sweep
    /// has counted them (no pack is compacted before).
    usage: Mutex<Option<HashMap<u32, PackUsage>>>,
}

fn pack_name(id: u32) -> String {
    format!("{id:08}.pack")
}

fn parse_pack_name(name: &str) -> Option<u32> {
    let id = name.strip_suffix(".pack")?;
    (id.len() == 8).then(|| id.parse().ok()).flatten()
}

fn open_for_append(path: &Path) -> Result<fs::File, DiskError> {
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(io_err(path))
}

impl Packs {
    /// Opens the packs under `root/packs/`, appending to the newest.
    ///
    /// # Errors
    /// The directory or the newest pack cannot be created or opened.
    pub fn open(root: &Path, fsync: bool) -> Result<Packs, DiskError> {
        let dir = root.join("packs");
        super::blobs::create_private_dir(&dir)?;
        let newest = Self::ids_in(&dir)?.into_iter().max().unwrap_or(1);
        let path = dir.join(pack_name(newest));
        let file = Arc::new(open_for_append(&path)?);
        let len = file.metadata().map_err(io_err(&path))?.len();
        Ok(Packs {
            current: Mutex::new(Current {
                id: newest,
                file: Arc::clone(&file),
                len,
            }),
            open: Mutex::new(HashMap::from([(newest, file)])),
            usage: Mutex::new(None),
            dir,
            fsync,
        })
    }

    fn ids_in(dir: &Path) -> Result<Vec<u32>, DiskError> {
        Ok(fs::read_dir(dir)
            .map_err(io_err(dir))?
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
            .filter_map(|entry| parse_pack_name(&entry.file_name().to_string_lossy()))
            .collect())
    }

    fn path(&self, id: u32) -> PathBuf {
        self.dir.join(pack_name(id))
    }

    /// Appends `body` to the current pack (beginning a new one when it is full).
    ///
    /// # Errors
    /// The write failed (nothing is recorded then; the bytes written are dead space).
    pub fn append(&self, body: &[u8]) -> Result<PackedAt, DiskError> {
        let mut current = self.current.lock();
        if current.len > 0 && current.len + body.len() as u64 > PACK_SIZE {
            let closed = current.id;
            let id = closed + 1;
            let path = self.path(id);
            let file = Arc::new(open_for_append(&path)?);
            let len = file.metadata().map_err(io_err(&path))?.len();
            self.open.lock().insert(id, Arc::clone(&file));
            *current = Current { id, file, len };
            tracing::debug!(closed, "disk tier: pack closed");
        }
        let at = PackedAt {
            pack: current.id,
            offset: current.len,
        };
        let failed = |err| io_err(&self.path(at.pack))(err);
        current.file.write_all_at(body, at.offset).map_err(failed)?;
        if self.fsync {
            current.file.sync_data().map_err(failed)?;
        }
        current.len += body.len() as u64;
        if let Some(usage) = self.usage.lock().as_mut() {
            let pack = usage.entry(at.pack).or_default();
            pack.size = current.len;
            pack.live += body.len() as u64;
        }
        Ok(at)
    }

    fn file(&self, pack: u32) -> Result<Arc<fs::File>, ReadError> {
        if let Some(file) = self.open.lock().get(&pack) {
            return Ok(Arc::clone(file));
        }
        let path = self.path(pack);
        let file = match fs::File::open(&path) {
            Ok(file) => Arc::new(file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
            Err(err) => return Err(ReadError::Disk(io_err(&path)(err))),
        };
        self.open.lock().insert(pack, Arc::clone(&file));
        Ok(file)
    }

    /// The `len` bytes at `at`, unverified. A record no pack could hold (longer than a
    /// pack) or reaching past its pack's end is [`ReadError::Corrupt`]: the first before a
    /// buffer is sized from `len`, the second by the read itself, with no `fstat` per read.
    pub fn read(&self, at: PackedAt, len: u64) -> Result<Bytes, ReadError> {
        if len > PACK_SIZE {
            return Err(ReadError::Corrupt);
        }
        let file = self.file(at.pack)?;
        let want = usize::try_from(len).map_err(|_| ReadError::Corrupt)?;
        let mut buffer = vec![0; want];
        match file.read_exact_at(&mut buffer, at.offset) {
            Ok(()) => Ok(Bytes::from(buffer)),
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Err(ReadError::Corrupt),
            Err(err) => Err(ReadError::Disk(io_err(&self.path(at.pack))(err))),
        }
    }

    /// Whether `len` bytes at `at` lie within an existing pack.
    pub fn holds(&self, at: PackedAt, len: u64) -> bool {
        let Ok(file) = self.file(at.pack) else {
            return false;
        };
        file.metadata().is_ok_and(|meta| {
            at.offset
                .checked_add(len)
                .is_some_and(|end| end <= meta.len())
        })
    }

    /// Notes that a packed body of `len` bytes is no longer referenced.
    pub fn released(&self, at: PackedAt, len: u64) {
        if let Some(pack) = self
            .usage
            .lock()
            .as_mut()
            .and_then(|usage| usage.get_mut(&at.pack))
        {
            pack.live = pack.live.saturating_sub(len);
        }
    }

    /// Takes the bytes bodies use in each pack as the sweep counted them (under the
    /// store's write lock); packs not named hold none.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn set_live(&self, counted: &HashMap<u32, u64>) -> Result<(), DiskError> {
        let mut usage = HashMap::new();
        for id in Self::ids_in(&self.dir)? {
            let path = self.path(id);
            let size = fs::metadata(&path).map_err(io_err(&path))?.len();
            let live = counted.get(&id).copied().unwrap_or(0);
            usage.insert(id, PackUsage { size, live });
        }
        *self.usage.lock() = Some(usage);
        Ok(())
    }

    /// A pack not being appended to whose bodies use at most half of it, if any: the next
    /// to compact.
    pub fn to_compact(&self) -> Option<u32> {
        let current = self.current.lock().id;
        let usage = self.usage.lock();
        usage
            .as_ref()?
            .iter()
            .filter(|(&id, pack)| id != current && pack.live <= pack.size / 2)
            .map(|(&id, _)| id)
            .min()
    }

    /// Deletes a pack whose bodies have all been moved or released.
    ///
    /// # Errors
    /// The file cannot be removed.
    pub fn delete(&self, pack: u32) -> Result<(), DiskError> {
        if let Some(usage) = self.usage.lock().as_mut() {
            usage.remove(&pack);
        }
        self.open.lock().remove(&pack);
        let path = self.path(pack);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_err(&path)(err)),
        }
    }

    /// Bytes the packs occupy that no body uses (released, or left by a crash); known
    /// once the sweep has counted.
    pub fn dead_bytes(&self) -> u64 {
        self.usage.lock().as_ref().map_or(0, |usage| {
            usage
                .values()
                .map(|pack| pack.size.saturating_sub(pack.live))
                .sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_bodies_are_read_back_and_packs_roll_over() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path(), false).unwrap();
        let first = packs.append(b"first body").unwrap();
        let second = packs.append(b"second").unwrap();
        assert_eq!(first, PackedAt { pack: 1, offset: 0 });
        assert_eq!(
            second,
            PackedAt {
                pack: 1,
                offset: 10
            }
        );
        assert_eq!(&packs.read(second, 6).unwrap()[..], b"second");
        // A record past the pack's end is refused before anything is allocated.
        assert!(matches!(
            packs.read(second, 1 << 40),
            Err(ReadError::Corrupt)
        ));
        let big = vec![7u8; PACK_SIZE as usize - 5];
        let rolled = packs.append(&big).unwrap();
        assert_eq!(rolled, PackedAt { pack: 2, offset: 0 });
        drop(packs);
        // Reopened, appends go on at the newest pack's end.
        let packs = Packs::open(dir.path(), false).unwrap();
        let next = packs.append(b"x").unwrap();
        assert_eq!(
            next,
            PackedAt {
                pack: 2,
                offset: PACK_SIZE - 5
            }
        );
        assert_eq!(&packs.read(first, 10).unwrap()[..], b"first body");
        packs.delete(1).unwrap();
        assert!(matches!(packs.read(first, 10), Err(ReadError::Missing)));
        assert!(!packs.holds(first, 10));
    }

    #[test]
    fn only_closed_packs_at_most_half_live_are_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path(), false).unwrap();
        let body = vec![1u8; (PACK_SIZE / 4) as usize];
        let mut placed = Vec::new();
        for _ in 0..5 {
            placed.push(packs.append(&body).unwrap());
        }
        assert_eq!(placed[4].pack, 2, "the fifth quarter begins pack 2");
        assert_eq!(packs.to_compact(), None, "nothing counted yet");
        let quarter = body.len() as u64;
        packs
            .set_live(&HashMap::from([(1, 4 * quarter), (2, quarter)]))
            .unwrap();
        assert_eq!(packs.to_compact(), None, "pack 1 is full, pack 2 current");
        packs.released(placed[0], quarter);
        assert_eq!(packs.to_compact(), None, "three quarters live");
        packs.released(placed[1], quarter);
        assert_eq!(packs.to_compact(), Some(1));
        assert_eq!(packs.dead_bytes(), 2 * quarter);
        // Appends after counting are counted live.
        packs.append(&body).unwrap();
        assert_eq!(packs.dead_bytes(), 2 * quarter);
        packs.delete(1).unwrap();
        assert_eq!((packs.to_compact(), packs.dead_bytes()), (None, 0));
    }
}
