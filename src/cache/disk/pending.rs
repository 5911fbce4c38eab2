//! The written list of invalidations a disk tier that is off has missed
//! (`invalidations.pending` in the cache directory), kept beside the list in memory (see
//! [`super::invalidations`]): a crash, or a stop while the disk still fails, no longer loses
//! them, since the next start applies them before the tier serves anything. Before, they
//! lived in memory alone, and the disk's copies of purged content were served after a
//! restart.
//!
//! Its room is written when it is made ([`PREALLOCATED`] bytes of zeros), so that the purges
//! of a tier that failed because its file system is full can still be written down.
//!
//! File: `OPINVL01` and a generation (u64), then records, each: the generation (u64), the
//! payload's length (u32), XXH3-64 of those twelve bytes and the payload, and the payload
//! (JSON, one [`Record`]). Clearing writes a new generation into the header, so records of
//! another generation, or the zeros past the last record, end the list: nothing is
//! truncated or allocated again. The last record failing its check is a write a crash
//! tore before its purge was answered: dropped. One with whole records after it (a flipped
//! bit) stands for "everything", since it may have named anything, and the file is started
//! again holding just that.

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, DiskError};

/// The file's name in the cache directory.
pub const PENDING_FILE: &str = "invalidations.pending";

const MAGIC: &[u8; 8] = b"OPINVL01";
const HEADER_LEN: u64 = 16;
const RECORD_HEAD: usize = 20;

/// Room written when the file is made: a few hundred purges' worth.
pub const PREALLOCATED: u64 = 64 << 10;

/// A file larger than this is not read: it stands for "everything". (The list in memory
/// stops at 100,000 invalidations, a few tens of MiB written.)
const MAX_READ: u64 = 256 << 20;

/// One invalidation as written down (made from one, and back, by
/// [`super::invalidations`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Remove {
        key: String,
    },
    MarkStale {
        key: String,
    },
    Everything {
        soft: bool,
    },
    Url {
        key: String,
        soft: bool,
    },
    Prefix {
        prefix: String,
        soft: bool,
    },
    Tag {
        tag: String,
        origin: Option<String>,
        surrogate_key: String,
        soft: bool,
    },
}

/// Removes everything: what an unreadable part of the file stands for.
pub fn everything() -> Record {
    Record::Everything { soft: false }
}

/// The open file, written at its end and cleared by generation.
pub struct PendingFile {
    file: fs::File,
    path: PathBuf,
    generation: u64,
    /// Where the next record goes.
    end: u64,
}

impl PendingFile {
    /// Opens (or makes) the file in `root`, with the invalidations it holds from an earlier
    /// run, in order.
    ///
    /// # Errors
    /// The file cannot be opened, read or made.
    pub fn open(root: &Path) -> Result<(PendingFile, Vec<Record>), DiskError> {
        let path = root.join(PENDING_FILE);
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true).create(true);
        // Never through a link planted in the directory.
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        let mut file = options.open(&path).map_err(io_err(&path))?;
        // One writer: another outpost on this directory (a restart that overlaps) keeps it
        // until it exits, as sled keeps the index.
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|errno| io_err(&path)(errno.into()))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len > MAX_READ {
            tracing::error!(path = %path.display(), len, "disk tier: the file of pending invalidations is too large to read; the tier is emptied instead");
            return PendingFile::emptying(file, path, 0);
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes).map_err(io_err(&path))?;
        let header = bytes.get(..HEADER_LEN as usize);
        let Some(header) = header.filter(|header| header.iter().any(|&byte| byte != 0)) else {
            // New, or made by a run that stopped before writing its header: nothing pending.
            let mut pending = PendingFile::at(file, path, fresh_generation(0));
            pending.make_room(len)?;
            pending.write_header()?;
            return Ok((pending, Vec::new()));
        };
        let generation = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if &header[..8] != MAGIC {
            tracing::error!(path = %path.display(), "disk tier: the file of pending invalidations is not readable; the tier is emptied instead");
            return PendingFile::emptying(file, path, generation);
        }
        match read_records(&bytes, generation) {
            Records::Found(records, end) => {
                let mut pending = PendingFile::at(file, path, generation);
                pending.end = end;
                Ok((pending, records))
            }
            Records::Damaged => PendingFile::emptying(file, path, generation),
        }
    }

    /// The file started again holding one removal of everything (and that alone, for the
    /// caller): what a damaged file stands for, written down so that the records after
    /// the damage are never read as if they were whole.
    fn emptying(
        file: fs::File,
        path: PathBuf,
        after_generation: u64,
    ) -> Result<(PendingFile, Vec<Record>), DiskError> {
        let mut pending = PendingFile::at(file, path, fresh_generation(after_generation));
        pending.write_header()?;
        pending.append(&[everything()], true)?;
        Ok((pending, vec![everything()]))
    }

    fn at(file: fs::File, path: PathBuf, generation: u64) -> PendingFile {
        PendingFile {
            file,
            path,
            generation,
            end: HEADER_LEN,
        }
    }

    /// Writes zeros up to [`PREALLOCATED`] bytes (from `len`, what the file has), so that
    /// the records to come have their room already.
    fn make_room(&mut self, len: u64) -> Result<(), DiskError> {
        if len < PREALLOCATED {
            let zeros = vec![0u8; (PREALLOCATED - len) as usize];
            self.file
                .write_all_at(&zeros, len)
                .map_err(io_err(&self.path))?;
        }
        self.file.sync_data().map_err(io_err(&self.path))
    }

    fn write_header(&mut self) -> Result<(), DiskError> {
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&self.generation.to_le_bytes());
        self.file
            .write_all_at(&header, 0)
            .map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))
    }

    /// Whether records were written since the file was last cleared.
    pub fn holds_records(&self) -> bool {
        self.end > HEADER_LEN
    }

    /// Writes `invalidations` after the records already there (`durable`: and syncs them,
    /// for a purge that is answered once it would survive a crash).
    ///
    /// # Errors
    /// The write fails (a full file system past the room made at first, an I/O error).
    pub fn append(&mut self, records: &[Record], durable: bool) -> Result<(), DiskError> {
        let mut bytes = Vec::new();
        for record in records {
            let payload = serde_json::to_vec(record).expect("a record serialises");
            encode_record(&mut bytes, self.generation, &payload);
        }
        if !bytes.is_empty() {
            self.file
                .write_all_at(&bytes, self.end)
                .map_err(io_err(&self.path))?;
            self.end += bytes.len() as u64;
        }
        if durable {
            self.file.sync_data().map_err(io_err(&self.path))?;
        }
        Ok(())
    }

    /// Forgets every record (all applied), by a new generation in the header.
    ///
    /// # Errors
    /// The header cannot be written (the records are then applied again at the next
    /// start: removals twice, which only costs refetches).
    pub fn clear(&mut self) -> Result<(), DiskError> {
        if !self.holds_records() {
            return Ok(());
        }
        self.generation = fresh_generation(self.generation);
        self.write_header()?;
        self.end = HEADER_LEN;
        Ok(())
    }
}

/// A generation no record in the file has: past `after`, and past any an earlier clear
/// could have written (the time in nanoseconds), so that a damaged header read as some
/// number does not make old records current again.
fn fresh_generation(after: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    after.saturating_add(1).max(now)
}

fn record_check(head: &[u8], payload: &[u8]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(head);
    hasher.update(payload);
    hasher.digest()
}

fn encode_record(into: &mut Vec<u8>, generation: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("a record is small");
    let start = into.len();
    into.extend_from_slice(&generation.to_le_bytes());
    into.extend_from_slice(&len.to_le_bytes());
    let check = record_check(&into[start..], payload);
    into.extend_from_slice(&check.to_le_bytes());
    into.extend_from_slice(payload);
}

/// What a file's records hold.
enum Records {
    /// The records, in order, and where they end.
    Found(Vec<Record>, u64),
    /// A record that fails its check with a whole record of this generation after it,
    /// or one that names nothing this build reads: it may have named anything.
    Damaged,
}

/// The records `bytes` holds for `generation`. A last record that is cut short or
/// fails its check is a write a crash tore: it is dropped (its purge had not been answered,
/// since a purge's record is synced first), and the next record goes in its place.
fn read_records(bytes: &[u8], generation: u64) -> Records {
    let mut records = Vec::new();
    let mut at = HEADER_LEN as usize;
    while let Some(record) = record_at(bytes, at, generation) {
        let len = match record {
            Ok(len) => len,
            Err(len) => {
                let next = at.saturating_add(RECORD_HEAD).saturating_add(len);
                if matches!(record_at(bytes, next, generation), Some(Ok(_))) {
                    tracing::error!(
                        offset = at,
                        "disk tier: a pending invalidation is damaged; the tier is emptied instead"
                    );
                    return Records::Damaged;
                }
                tracing::warn!(
                    offset = at,
                    "disk tier: the last pending invalidation was cut short by a crash (its purge was not answered); dropped"
                );
                break;
            }
        };
        let payload = &bytes[at + RECORD_HEAD..at + RECORD_HEAD + len];
        let Ok(record) = serde_json::from_slice::<Record>(payload) else {
            tracing::error!(
                offset = at,
                "disk tier: a pending invalidation is of a kind this build does not read; the tier is emptied instead"
            );
            return Records::Damaged;
        };
        records.push(record);
        at += RECORD_HEAD + len;
    }
    Records::Found(records, at as u64)
}

/// Whether a record of `generation` starts at `at`: `Ok(len)` when it is whole and passes
/// its check, `Err(len)` (its stated length) when it does not; `None` past the records.
fn record_at(bytes: &[u8], at: usize, generation: u64) -> Option<Result<usize, usize>> {
    let head = bytes.get(at..at.checked_add(RECORD_HEAD)?)?;
    if u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) != generation {
        return None;
    }
    let len = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) as usize;
    let check = u64::from_le_bytes(head[12..20].try_into().expect("8 bytes"));
    let payload = bytes.get(at + RECORD_HEAD..at + RECORD_HEAD + len);
    Some(match payload {
        Some(payload) if record_check(&head[..12], payload) == check => Ok(len),
        _ => Err(len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn remove(n: u8) -> Record {
        Record::Remove { key: hex(n) }
    }

    fn all_kinds() -> Vec<Record> {
        vec![
            remove(1),
            Record::MarkStale { key: hex(2) },
            Record::Prefix {
                prefix: "example.test/a/".into(),
                soft: true,
            },
            Record::Tag {
                tag: "blue".into(),
                origin: Some("https://example.test".into()),
                surrogate_key: "x-tags".into(),
                soft: false,
            },
            Record::Url {
                key: hex(3),
                soft: false,
            },
            everything(),
        ]
    }

    fn reopen(root: &Path) -> (PendingFile, Vec<Record>) {
        PendingFile::open(root).unwrap()
    }

    #[test]
    fn records_are_read_back_in_order_and_cleared_ones_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pending, left) = reopen(dir.path());
        assert!(left.is_empty() && !pending.holds_records());
        let path = dir.path().join(PENDING_FILE);
        assert_eq!(fs::metadata(&path).unwrap().len(), PREALLOCATED);
        pending.append(&all_kinds()[..3], true).unwrap();
        pending.append(&all_kinds()[3..], false).unwrap();
        drop(pending);
        let (mut pending, left) = reopen(dir.path());
        assert_eq!(left, all_kinds());
        pending.clear().unwrap();
        pending.append(&[remove(9)], true).unwrap();
        drop(pending);
        // The old generation's records after the new one's end are not read.
        let (_, left) = reopen(dir.path());
        assert_eq!(left, vec![remove(9)]);
        // Clearing neither shrank nor grew the file: the room is kept.
        assert_eq!(fs::metadata(&path).unwrap().len(), PREALLOCATED);
    }

    /// A damaged record followed by whole ones could have named anything: the tier is
    /// emptied, and the file says so from then on. A damaged header likewise.
    #[test]
    fn a_damaged_record_or_header_stands_for_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PENDING_FILE);
        let (mut pending, _) = reopen(dir.path());
        pending.append(&[remove(1), remove(2)], true).unwrap();
        drop(pending);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_LEN as usize + RECORD_HEAD + 3] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let (pending, left) = reopen(dir.path());
        assert_eq!(left, vec![everything()]);
        drop(pending);
        let (_, left) = reopen(dir.path());
        assert_eq!(left, vec![everything()], "written down");

        let mut bytes = fs::read(&path).unwrap();
        bytes[0] = b'X';
        fs::write(&path, &bytes).unwrap();
        let (mut pending, left) = reopen(dir.path());
        assert_eq!(left, vec![everything()]);
        // Once applied and cleared, the file is sound again.
        pending.clear().unwrap();
        drop(pending);
        let (_, left) = reopen(dir.path());
        assert!(left.is_empty());
    }

    /// The last record cut short by a crash, at any byte, is dropped (its purge was not
    /// answered), and the next record takes its place.
    #[test]
    fn a_torn_last_record_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PENDING_FILE);
        let (mut pending, _) = reopen(dir.path());
        pending.append(&[remove(1)], true).unwrap();
        let first_end = pending.end as usize;
        pending.append(&[remove(2)], true).unwrap();
        let second_end = pending.end as usize;
        drop(pending);
        let whole = fs::read(&path).unwrap();
        for cut in first_end + 1..second_end {
            let mut torn = whole.clone();
            torn[cut..second_end].fill(0);
            fs::write(&path, &torn).unwrap();
            let (mut pending, left) = reopen(dir.path());
            assert_eq!(left, vec![remove(1)], "cut at {cut}");
            pending.append(&[remove(3)], true).unwrap();
            drop(pending);
            let (_, left) = reopen(dir.path());
            assert_eq!(left, vec![remove(1), remove(3)], "cut at {cut}");
        }
    }

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = reopen(dir.path());
        assert!(PendingFile::open(dir.path()).is_err());
        drop(first);
        assert!(PendingFile::open(dir.path()).is_ok());
    }

    #[test]
    fn a_link_planted_in_its_place_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"not ours").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(PENDING_FILE)).unwrap();
        assert!(PendingFile::open(dir.path()).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"not ours");
    }
}
