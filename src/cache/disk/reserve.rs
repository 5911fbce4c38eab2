//! The reserve: a file of spare room kept in the cache directory (`reserve`), given up
//! when the file system is nearly full so that the index can always write.
//!
//! sled fails the whole index on a write it cannot complete: the error sticks until the
//! index is reopened, and an open that runs out of room midway fails, or can leave a log
//! that no longer opens at all (seen on a tmpfs filled to within a few hundred KiB). A
//! disk filled by someone else while outpost was down then cost the whole offline copy.
//! So the index must never be the writer that finds the file system full: when free room
//! falls below [`INDEX_HEADROOM`] the reserve is deleted, before the index opens and
//! whenever the tier writes. While it is given up its room stays owed: the tier writes as
//! if the file were there, and makes it again once the file system has the room.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::{io_err, DiskError};

/// The reserve's size: room for several of sled's 512 KiB log segments and a snapshot.
pub const RESERVE_BYTES: u64 = 4 << 20;

/// Free bytes below which the index is at risk of a write it cannot complete (an open
/// needs up to one 512 KiB segment, and the tier's own writes stop at its watermark).
pub const INDEX_HEADROOM: u64 = 1 << 20;

/// The file's name in the cache directory.
pub const RESERVE_FILE: &str = "reserve";

/// The reserve file and whether it is in place.
pub struct Reserve {
    path: PathBuf,
    size: u64,
    held: AtomicBool,
    /// Whether a failure to make it was logged (once, not at every write that retries).
    failure_logged: AtomicBool,
    /// Serialises giving up and taking back (a miss on the fast path never waits on it).
    changing: Mutex<()>,
}

impl Reserve {
    /// The reserve of the cache directory `root`, held when its file is there whole.
    pub fn open(root: &Path) -> Reserve {
        Reserve::with_size(root, RESERVE_BYTES)
    }

    fn with_size(root: &Path, size: u64) -> Reserve {
        let path = root.join(RESERVE_FILE);
        let held = fs::symlink_metadata(&path)
            .is_ok_and(|meta| meta.file_type().is_file() && meta.len() == size);
        Reserve {
            path,
            size,
            held: AtomicBool::new(held),
            failure_logged: AtomicBool::new(false),
            changing: Mutex::new(()),
        }
    }

    fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Gives the reserve up or makes it again, as `free_bytes` (the file system's free
    /// room, just measured) calls for; returns the room the tier must leave free for it
    /// beside its own watermark: the reserve's whenever it was not in place as measured or
    /// is not now (owed while given up, taken when made just now). `temp` gives a new
    /// temporary file to make it in.
    pub fn settle(
        &self,
        free_bytes: u64,
        temp: impl FnOnce() -> Result<(fs::File, PathBuf), DiskError>,
    ) -> u64 {
        let owed_as_measured = self.room_owed();
        if !self.give_up_if_short(free_bytes) {
            self.take_back_if_room(free_bytes, temp);
        }
        owed_as_measured.max(self.room_owed())
    }

    /// Room the tier must leave free beside its own watermark: the reserve's, while it is
    /// given up.
    fn room_owed(&self) -> u64 {
        if self.is_held() {
            0
        } else {
            self.size
        }
    }

    /// Deletes the reserve when `free_bytes` is below the index's headroom and it is in
    /// place; returns whether it did.
    fn give_up_if_short(&self, free_bytes: u64) -> bool {
        if free_bytes >= INDEX_HEADROOM || !self.is_held() {
            return false;
        }
        let _changing = self.changing.lock();
        if !self.is_held() {
            return false;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {
                self.held.store(false, Ordering::Release);
                tracing::warn!(
                    free_bytes,
                    reserve = self.size,
                    path = %self.path.display(),
                    "disk tier: file system nearly full; gave up the reserve so the index can go on writing (nothing new is stored until there is room again)"
                );
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, path = %self.path.display(), "disk tier: could not delete the reserve");
                false
            }
        }
    }

    /// Makes the reserve again when it is missing and `free_bytes` leaves the index its
    /// headroom beside it; `temp` gives a new temporary file (renamed into place when
    /// whole, so a crash never leaves a short reserve counted as held). Returns whether
    /// the reserve is now in place. A failure is logged and tried again at a later write.
    fn take_back_if_room(
        &self,
        free_bytes: u64,
        temp: impl FnOnce() -> Result<(fs::File, PathBuf), DiskError>,
    ) -> bool {
        if self.is_held() {
            return true;
        }
        if free_bytes < self.size.saturating_add(INDEX_HEADROOM) {
            return false;
        }
        // Another thread making it: this write goes on as if it were not there yet.
        let Some(_changing) = self.changing.try_lock() else {
            return false;
        };
        if self.is_held() {
            return true;
        }
        match self.fill(temp) {
            Ok(()) => {
                self.held.store(true, Ordering::Release);
                tracing::info!(path = %self.path.display(), reserve = self.size, "disk tier: reserve in place");
                true
            }
            Err(err) => {
                if self.failure_logged.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %err, "disk tier: could not make the reserve");
                } else {
                    tracing::warn!(error = %err, "disk tier: could not make the reserve; trying again at later writes");
                }
                false
            }
        }
    }

    /// Writes the reserve's bytes to a temporary file and renames it into place. The bytes
    /// are a blake3 stream, not zeros, so that a compressing file system allocates them.
    fn fill(
        &self,
        temp: impl FnOnce() -> Result<(fs::File, PathBuf), DiskError>,
    ) -> Result<(), DiskError> {
        let (mut file, temp_path) = temp()?;
        let written = (|| {
            let mut stream = blake3::Hasher::new()
                .update(b"outpost disk tier reserve")
                .finalize_xof();
            let mut chunk = vec![0u8; 64 << 10];
            let mut left = self.size;
            while left > 0 {
                let take = left.min(chunk.len() as u64) as usize;
                stream.fill(&mut chunk[..take]);
                file.write_all(&chunk[..take])?;
                left -= take as u64;
            }
            // Not synced: written blocks count against the file system's free room at
            // once (delayed allocation reserves them), and a reserve a power cut
            // shortens is found short and made again.
            fs::rename(&temp_path, &self.path)
        })();
        if let Err(err) = written {
            let _ = fs::remove_file(&temp_path);
            return Err(io_err(&self.path)(err));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_in(dir: &Path) -> impl FnOnce() -> Result<(fs::File, PathBuf), DiskError> + '_ {
        move || {
            let path = dir.join("reserve.part");
            Ok((fs::File::create(&path).unwrap(), path))
        }
    }

    #[test]
    fn is_made_whole_only_with_room_and_given_up_only_when_short() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::with_size(dir.path(), 100_000);
        assert!(!reserve.is_held());
        assert_eq!(reserve.room_owed(), 100_000);
        // Not enough room beside the index's headroom: not made.
        assert!(!reserve.take_back_if_room(INDEX_HEADROOM + 99_999, temp_in(dir.path())));
        assert!(!dir.path().join(RESERVE_FILE).exists());
        assert!(reserve.take_back_if_room(INDEX_HEADROOM + 100_000, temp_in(dir.path())));
        assert_eq!(
            fs::metadata(dir.path().join(RESERVE_FILE)).unwrap().len(),
            100_000
        );
        assert!(!dir.path().join("reserve.part").exists());
        assert_eq!(reserve.room_owed(), 0);
        // Reopened: held, since the file is whole.
        assert!(Reserve::with_size(dir.path(), 100_000).is_held());
        // Room enough: kept.
        assert!(!reserve.give_up_if_short(INDEX_HEADROOM));
        assert!(reserve.is_held());
        assert!(reserve.give_up_if_short(INDEX_HEADROOM - 1));
        assert!(!dir.path().join(RESERVE_FILE).exists());
        assert_eq!(reserve.room_owed(), 100_000);
        // Already given up: nothing more to give.
        assert!(!reserve.give_up_if_short(0));
    }

    #[test]
    fn a_short_file_is_not_counted_as_held() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(RESERVE_FILE), vec![1u8; 10]).unwrap();
        let reserve = Reserve::with_size(dir.path(), 100_000);
        assert!(!reserve.is_held());
        assert!(reserve.take_back_if_room(u64::MAX, temp_in(dir.path())));
        assert_eq!(
            fs::metadata(dir.path().join(RESERVE_FILE)).unwrap().len(),
            100_000
        );
    }
}
