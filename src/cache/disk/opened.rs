//! Body files held open after one full verification, so that a hit can hand the file to
//! the connection (sendfile) instead of reading, hashing and copying it again.
//!
//! # How a corrupt file is still never sent
//! This is the disk tier's verify-once model; every other read verifies every byte.
//! - A file is used only after a read has verified all of it against the index (its
//!   XXH3 check or blake3 digests): a disk load or a streamed hit that read the whole body
//!   (the file it opened is kept, so no byte is read twice), or a verification in the
//!   background for a body only ever read in parts. The file's status must be the same
//!   after the read as when it was opened. Until then, and whenever a check below fails, hits use the per-byte
//!   verified read.
//! - Before every use the open file's status is compared with what it was when it was
//!   verified: size, inode, link count, and modification and change times. Any write,
//!   truncation, replacement or removal through the file system changes one of them (the
//!   change time cannot be set back), and the file is dropped and verified again.
//! - A file is verified again [`REVERIFY_AFTER`] its last verification, which bounds what
//!   no file status shows: damage below the file system (the medium) that reaches the page
//!   cache after the file was verified.
//! - A file that turns out shorter while it is being sent ends the response short, never
//!   as a clean end (see `server::sendfile`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// How long a verification holds.
pub const REVERIFY_AFTER: Duration = Duration::from_secs(60);

/// Open files kept at most: each is a file descriptor, and deleting a body whose file is
/// held open frees its space only when it is closed (a delete closes it; see
/// [`OpenedBodies::forget`]).
const MAX_OPEN: u64 = 1024;

/// Open files kept: [`MAX_OPEN`], or a quarter of the process's file descriptor limit if
/// that is less (connections need the rest; a soft limit of 1024 is common).
fn max_open() -> u64 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    limit.map_or(MAX_OPEN, |limit| (limit / 4).min(MAX_OPEN))
}

/// Verifications running at once (each reads a whole body on tokio's blocking pool).
const MAX_VERIFYING: usize = 2;

/// Bytes read per call while verifying.
const VERIFY_CHUNK: usize = 256 << 10;

/// A body file verified in full, and the file status it was verified with.
#[derive(Debug)]
pub struct OpenedBody {
    file: Arc<File>,
    len: u64,
    status: FileStatus,
    verified_at: Instant,
}

/// What changes whenever a file's content is changed through the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStatus {
    inode: u64,
    size: u64,
    links: u64,
    modified: (i128, i128),
    changed: (i128, i128),
}

impl FileStatus {
    // `st_nlink` is a u32 on some targets.
    #[allow(clippy::useless_conversion)]
    fn of(file: &File) -> Option<FileStatus> {
        let stat = rustix::fs::fstat(file).ok()?;
        Some(FileStatus {
            inode: stat.st_ino,
            size: u64::try_from(stat.st_size).ok()?,
            links: u64::from(stat.st_nlink),
            modified: (i128::from(stat.st_mtime), i128::from(stat.st_mtime_nsec)),
            changed: (i128::from(stat.st_ctime), i128::from(stat.st_ctime_nsec)),
        })
    }
}

/// A body file opened by a read that verifies it, with its status when opened.
#[derive(Debug)]
pub struct Reading {
    file: Arc<File>,
    status: FileStatus,
}

impl Reading {
    /// Opens `path`. Blocking.
    ///
    /// # Errors
    /// The file cannot be opened or its status read.
    pub fn open(path: &std::path::Path) -> std::io::Result<Reading> {
        let file = File::open(path)?;
        let status =
            FileStatus::of(&file).ok_or_else(|| std::io::Error::other("file status unreadable"))?;
        Ok(Reading {
            file: Arc::new(file),
            status,
        })
    }

    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The file's size when it was opened.
    pub fn size(&self) -> u64 {
        self.status.size
    }

    /// The file, now that its `len` bytes have all been read and verified; `None` if its
    /// status changed since it was opened (what was read may not be what is there).
    fn verified(self, len: u64) -> Option<OpenedBody> {
        (self.status.size == len && FileStatus::of(&self.file) == Some(self.status)).then(|| {
            OpenedBody {
                file: self.file,
                len,
                status: self.status,
                verified_at: Instant::now(),
            }
        })
    }
}

impl OpenedBody {
    /// Opens `path` and verifies that it holds exactly `len` bytes with blake3 `digest`.
    /// Blocking. `None`: missing, unreadable, or not that body.
    pub fn verify(path: &std::path::Path, len: u64, digest: &[u8; 32]) -> Option<OpenedBody> {
        let reading = Reading::open(path).ok()?;
        if reading.size() != len {
            return None;
        }
        let file = Arc::clone(&reading.file);
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; VERIFY_CHUNK.min(usize::try_from(len).ok()?)];
        let mut offset = 0;
        while offset < len {
            let want = buffer.len().min(usize::try_from(len - offset).ok()?);
            file.read_exact_at(&mut buffer[..want], offset).ok()?;
            hasher.update(&buffer[..want]);
            offset += want as u64;
        }
        if hasher.finalize().as_bytes() != digest {
            return None;
        }
        reading.verified(len)
    }

    /// Whether the file is as it was verified, and the verification recent enough.
    pub fn is_intact(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.verified_at) < REVERIFY_AFTER
            && FileStatus::of(&self.file) == Some(self.status)
    }
}

impl crate::body::VerifiedFile for OpenedBody {
    fn file(&self) -> &File {
        &self.file
    }

    fn read(self: Arc<Self>, offset: u64, len: u64) -> crate::body::Body {
        read_body(self, offset, len)
    }
}

/// Bytes read at a time when a verified file is read rather than sent (TLS, HTTP/2, ranges
/// of several parts): what a client that stops reading pins in its connection's write
/// queue. At 512 KiB, 64 TLS clients stalled on 8 MiB disk hits added 71 MiB of heap (50 MiB
/// more at 128 KiB); reads from the page cache need no trip to the blocking pool
/// ([`read_cached`]), so the smaller size costs no throughput.
const READ_CHUNK: u64 = 128 << 10;

/// `len` bytes of `opened` from `offset`, read with no hashing (the file is verified; see
/// the module doc): for connections sendfile cannot write to. Bytes in the page cache are
/// read at once, others on tokio's blocking pool. A file found shorter ends the body in an
/// error.
fn read_body(opened: Arc<OpenedBody>, offset: u64, len: u64) -> crate::body::Body {
    use futures_util::StreamExt;
    let end = offset.saturating_add(len);
    let chunks = futures_util::stream::unfold(offset, move |at| {
        let opened = Arc::clone(&opened);
        async move {
            if at >= end {
                return None;
            }
            let want = usize::try_from((end - at).min(READ_CHUNK)).ok()?;
            if let Some(buffer) = read_cached(&opened.file, at, want) {
                return Some((Ok(bytes::Bytes::from(buffer)), at + want as u64));
            }
            let read = tokio::task::spawn_blocking(move || {
                // Not zeroed: every byte is overwritten or the read fails.
                let mut buffer = Vec::with_capacity(want);
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(FileAt(&opened.file, at), want as u64),
                    &mut buffer,
                )
                .map(|_| buffer)
            })
            .await;
            let piece = match read {
                Ok(Ok(buffer)) if buffer.len() == want => Ok(bytes::Bytes::from(buffer)),
                Ok(Ok(_)) => Err("stored body file shorter than when it was verified".into()),
                Ok(Err(err)) => Err(err.into()),
                Err(err) => Err(err.into()),
            };
            let next = if piece.is_ok() { at + want as u64 } else { end };
            Some((piece, next))
        }
    });
    crate::body::Body::boxed(http_body_util::StreamBody::new(chunks.map(
        |piece: Result<bytes::Bytes, crate::body::BoxError>| piece.map(http_body::Frame::data),
    )))
}

/// Whether reads that must not wait for the disk (`RWF_NOWAIT`) work here: cleared the first
/// time the kernel or the file system says they are not supported.
static CACHED_READS_WORK: AtomicBool = AtomicBool::new(true);

/// `want` bytes of `file` at `at` when all of them are in the page cache, read at once on
/// the calling thread: a trip to the blocking pool costs more than copying them. `None`
/// when any would have to come from the disk (or the file is shorter): the caller reads
/// them the blocking way, which also reports any error.
fn read_cached(file: &File, at: u64, want: usize) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    if !CACHED_READS_WORK.load(Ordering::Relaxed) {
        return None;
    }
    let offset = libc::off_t::try_from(at).ok()?;
    let mut buffer: Vec<u8> = Vec::with_capacity(want);
    let spare = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: want,
    };
    // SAFETY: the one iovec describes `want` bytes of `buffer`'s capacity, which the kernel
    // only writes to, and `file` keeps the descriptor open for the call.
    let read = unsafe { libc::preadv2(file.as_raw_fd(), &spare, 1, offset, libc::RWF_NOWAIT) };
    if read < 0 {
        let unsupported = matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
        );
        if unsupported {
            CACHED_READS_WORK.store(false, Ordering::Relaxed);
        }
        return None;
    }
    if usize::try_from(read).ok()? != want {
        return None;
    }
    // SAFETY: the kernel wrote all `want` bytes.
    unsafe { buffer.set_len(want) };
    Some(buffer)
}

/// A file read from a fixed offset on, with positioned reads.
struct FileAt<'a>(&'a File, u64);

impl std::io::Read for FileAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.0.read_at(buf, self.1)?;
        self.1 += read as u64;
        Ok(read)
    }
}

/// The verified open body files, by digest; see the module doc. Clones share them.
#[derive(Clone)]
pub struct OpenedBodies {
    opened: moka::sync::Cache<[u8; 32], Arc<OpenedBody>>,
    /// Digests being verified, so one body is verified once however many hits ask.
    verifying: Arc<Mutex<std::collections::HashSet<[u8; 32]>>>,
    /// Off (`cache.disk_sendfile = false`), reads keep no file open.
    enabled: Arc<AtomicBool>,
}

impl Default for OpenedBodies {
    fn default() -> Self {
        OpenedBodies {
            opened: moka::sync::Cache::new(max_open()),
            verifying: Arc::default(),
            enabled: Arc::default(),
        }
    }
}

impl OpenedBodies {
    pub fn enable(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Keeps the file `reading` has opened, now that a read has verified all `len` bytes
    /// of the body `digest` in it.
    pub fn register(&self, digest: &[u8; 32], reading: Reading, len: u64) {
        if !self.is_enabled() || self.opened.contains_key(digest) {
            return;
        }
        if let Some(opened) = reading.verified(len) {
            self.opened.insert(*digest, Arc::new(opened));
        }
    }

    /// The verified file of the body `digest` (of `len` bytes), if it is open and intact.
    pub fn get(&self, digest: &[u8; 32], len: u64) -> Option<Arc<OpenedBody>> {
        let opened = self.opened.get(digest)?;
        if opened.len == len && opened.is_intact(Instant::now()) {
            return Some(opened);
        }
        self.opened.invalidate(digest);
        None
    }

    /// Verifies the body file at `path` in the background, for a body only read in parts
    /// (no read verifies it whole).
    pub fn verify_later(&self, digest: [u8; 32], len: u64, path: PathBuf) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut verifying = self.verifying.lock();
            if verifying.len() >= MAX_VERIFYING || !verifying.insert(digest) {
                // Busy, or under way: a later hit asks again.
                return;
            }
        }
        let opened = self.opened.clone();
        let verifying = Arc::clone(&self.verifying);
        runtime.spawn_blocking(move || {
            if let Some(body) = OpenedBody::verify(&path, len, &digest) {
                opened.insert(digest, Arc::new(body));
            }
            verifying.lock().remove(&digest);
        });
    }

    /// Closes the body `digest`'s file, if open: it is being deleted.
    pub fn forget(&self, digest: &[u8; 32]) {
        self.opened.invalidate(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A body file last modified an hour ago, as stored bodies are: a write now changes its
    /// modification time whatever the clock's granularity.
    fn body_file(dir: &std::path::Path, body: &[u8]) -> (PathBuf, [u8; 32]) {
        let path = dir.join("body");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(body).unwrap();
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        file.set_modified(an_hour_ago).unwrap();
        (path, *blake3::hash(body).as_bytes())
    }

    /// A read that verified a whole file leaves it open for hits, unless the file changed
    /// while it was read, or keeping files is off.
    #[test]
    fn a_verifying_read_keeps_its_file_only_if_unchanged_since_opened() {
        let dir = tempfile::tempdir().unwrap();
        let body = vec![3u8; 32 << 10];
        let (path, digest) = body_file(dir.path(), &body);
        let len = body.len() as u64;
        let opened = OpenedBodies::default();
        opened.register(&digest, Reading::open(&path).unwrap(), len);
        assert!(opened.get(&digest, len).is_none(), "off: nothing kept");

        opened.enable(true);
        let changed_meanwhile = Reading::open(&path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(b"y", 0)
            .unwrap();
        opened.register(&digest, changed_meanwhile, len);
        assert!(opened.get(&digest, len).is_none(), "changed while read");

        opened.register(&digest, Reading::open(&path).unwrap(), len);
        assert!(opened.get(&digest, len).is_some());
        assert!(opened.get(&digest, len + 1).is_none(), "another length");
        opened.forget(&digest);
        assert!(opened.get(&digest, len).is_none(), "deleted");
    }

    #[test]
    fn a_file_is_verified_whole_before_it_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let body = vec![7u8; 600 << 10];
        let (path, digest) = body_file(dir.path(), &body);
        let opened = OpenedBody::verify(&path, body.len() as u64, &digest).unwrap();
        assert!(opened.is_intact(Instant::now()));
        assert!(OpenedBody::verify(&path, body.len() as u64 - 1, &digest).is_none());
        let mut other = digest;
        other[0] ^= 1;
        assert!(OpenedBody::verify(&path, body.len() as u64, &other).is_none());
        assert!(OpenedBody::verify(&dir.path().join("missing"), 1, &digest).is_none());
    }

    /// A write through the file system after verification, even one that keeps the size,
    /// or a removal, shows in the file's status; so does the verification's age.
    #[test]
    fn a_file_changed_or_removed_after_verification_is_not_intact() {
        let dir = tempfile::tempdir().unwrap();
        let body = vec![1u8; 64 << 10];
        let (path, digest) = body_file(dir.path(), &body);
        let opened = OpenedBody::verify(&path, body.len() as u64, &digest).unwrap();
        let now = Instant::now();
        assert!(opened.is_intact(now));
        assert!(!opened.is_intact(now + REVERIFY_AFTER));

        // The same size: only the file's status shows the write.
        let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writer.write_all_at(b"x", 10).unwrap();
        assert!(!opened.is_intact(Instant::now()));

        let (path, digest) = body_file(dir.path(), &body);
        let opened = OpenedBody::verify(&path, body.len() as u64, &digest).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!opened.is_intact(Instant::now()));
    }

    /// A read from the page cache gives the file's bytes or nothing (never a part, never
    /// past the end); the body read from a file, cached or not, is the file, chunk by chunk.
    #[tokio::test]
    async fn reads_from_the_page_cache_give_the_files_bytes_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..(READ_CHUNK as usize * 2 + 1000))
            .map(|i| (i % 251) as u8)
            .collect();
        let (path, digest) = body_file(dir.path(), &body);
        let file = std::fs::File::open(&path).unwrap();
        if let Some(cached) = read_cached(&file, 10, 5000) {
            assert_eq!(cached, body[10..5010]);
        }
        let past_end = body.len() as u64 - 10;
        assert!(
            read_cached(&file, past_end, 100).is_none(),
            "short: not a whole piece"
        );

        let opened = Arc::new(OpenedBody::verify(&path, body.len() as u64, &digest).unwrap());
        let read = read_body(opened, 7, body.len() as u64 - 7);
        let whole = http_body_util::BodyExt::collect(read)
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(whole, body[7..]);
    }
}
