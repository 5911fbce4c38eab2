//! Body files: one file per distinct body under `blobs/ab/abcdef…`, named by its blake3
//! digest, so identical bodies are stored once and every read can be verified; bodies being
//! written live in `tmp/` until they are placed. This is the only code that knows paths.
//!
//! # Whose directory
//! The directory is marked as outpost's ([`MARK_FILE`]) on first use; one that holds other
//! files and no mark (`--cache-dir .` in a project) is refused, so a sweep never deletes a
//! file outpost did not create. Sweeps never follow symlinks, files are created exclusively,
//! and files are 0600 and directories 0700: bodies may be private to the sites cached.
//!
//! # Crash safety
//! A body is written to `tmp/`, optionally fsynced, then renamed into `blobs/` (and the
//! directory fsynced); the store indexes it only after that, and deletes a file only after
//! unindexing it. What a crash leaves behind is a temporary file or an unindexed body,
//! both removed by the sweep.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{block_digests, io_err, DiskError, ReadError, BLOCK};

/// Removes a stored file (given its digest and path) if nobody indexes it; returns whether
/// it did.
pub type OrphanCheck<'a> = dyn FnMut(&[u8; 32], &Path) -> Result<bool, DiskError> + 'a;

/// A body file written but not yet placed and indexed.
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    pub digest: [u8; 32],
    pub len: u64,
    /// Per-block digests (empty for single-block bodies).
    pub blocks: Vec<[u8; 32]>,
    /// [`super::body_check`] of the whole body.
    pub check: u64,
    /// Room held for this body against the tier's capacity until it is committed or
    /// discarded.
    _reservation: Option<Reservation>,
}

/// Bytes of the tier's capacity held for bodies being written (fills spilling to disk), so
/// that concurrent large fills cannot together overrun `disk_capacity`. Released on drop.
#[derive(Debug)]
pub struct Reservation {
    held: std::sync::Arc<AtomicU64>,
    bytes: u64,
}

impl Reservation {
    pub fn new(held: &std::sync::Arc<AtomicU64>, bytes: u64) -> Reservation {
        held.fetch_add(bytes, Ordering::Relaxed);
        Reservation {
            held: std::sync::Arc::clone(held),
            bytes,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The body files under one cache directory.
pub struct BlobFiles {
    root: PathBuf,
    fsync: bool,
    temp_counter: AtomicU64,
    /// Prefix of this opening's temporary files: the sweep removes every other one (left by
    /// an earlier run), never a file a fill of this run is writing.
    temp_prefix: String,
    /// Bodies held open after a full verification (sendfile hits); closed on delete.
    pub opened: super::opened::OpenedBodies,
}

pub(super) fn parse_hex(text: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(text)
        .ok()
        .map(|hash| *hash.as_bytes())
}

/// The bytes a file occupies on disk.
fn allocated_bytes(path: &Path) -> Option<u64> {
    let meta = fs::symlink_metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(meta.blocks() * 512)
    }
    #[cfg(not(unix))]
    {
        Some(meta.len())
    }
}

/// The file that marks a directory as an outpost cache.
pub const MARK_FILE: &str = "OUTPOST-CACHE-DIR";

/// What an unmarked directory may hold to be adopted: an earlier outpost's layout.
const OUR_NAMES: [&str; 8] = [
    "blobs",
    "index",
    "index.corrupt",
    "invalidations.pending",
    "packs",
    "partials",
    "reserve",
    "tmp",
];

/// Makes `root` outpost's, or checks that it is: creates it (0700) when missing, marks an
/// empty one (or one laid out by an earlier outpost), and refuses one holding anything
/// else. `blobs/` and `tmp/` must be real directories, not symlinks.
///
/// # Errors
/// [`DiskError::NotOurs`] for a foreign directory; [`DiskError::Io`] when it cannot be
/// created, read or marked.
pub fn claim_dir(root: &Path) -> Result<(), DiskError> {
    create_private_dir(root)?;
    let mark = root.join(MARK_FILE);
    if !mark.exists() {
        let foreign: Vec<String> = fs::read_dir(root)
            .map_err(io_err(root))?
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !OUR_NAMES.contains(&name.as_str()))
            .take(3)
            .collect();
        if !foreign.is_empty() {
            return Err(DiskError::NotOurs {
                path: root.to_path_buf(),
                found: foreign.join(", "),
            });
        }
        let mut file = create_private_file(&mark)?;
        file.write_all(b"This directory is an outpost cache. outpost deletes files in it.\n")
            .map_err(io_err(&mark))?;
    }
    for sub in ["blobs", "tmp"] {
        let path = root.join(sub);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => {
                return Err(DiskError::NotOurs {
                    path: root.to_path_buf(),
                    found: format!("{sub} is not a directory (a symlink?)"),
                })
            }
            Err(_) => create_private_dir(&path)?,
        }
    }
    Ok(())
}

/// Creates `dir` (and missing parents) readable by this user only.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), DiskError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_err(dir))
}

/// Creates a new file (never opening an existing one, nor following a symlink planted in
/// its place), readable by this user only.
pub(super) fn create_private_file(path: &Path) -> Result<fs::File, DiskError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(io_err(path))
}

impl BlobFiles {
    /// # Errors
    /// [`DiskError::NotOurs`] or [`DiskError::Io`] from [`claim_dir`].
    pub fn open(root: &Path, fsync: bool) -> Result<BlobFiles, DiskError> {
        claim_dir(root)?;
        Ok(BlobFiles {
            root: root.to_path_buf(),
            fsync,
            temp_counter: AtomicU64::new(0),
            temp_prefix: format!(
                "{}-{}-",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ),
            opened: super::opened::OpenedBodies::default(),
        })
    }

    /// Free bytes (for unprivileged users) and free inodes of the file system holding the
    /// files; `None` when it cannot be measured.
    pub fn free_space(&self) -> Option<(u64, u64)> {
        let stats = rustix::fs::statvfs(&self.root).ok()?;
        let bytes = stats.f_bavail.saturating_mul(stats.f_frsize);
        // File systems without inode limits report zero inodes in all.
        let inodes = if stats.f_files == 0 {
            u64::MAX
        } else {
            stats.f_favail
        };
        Some((bytes, inodes))
    }

    /// Where the body with `digest` lives.
    pub fn path_of(&self, digest: &[u8; 32]) -> PathBuf {
        // Built in one buffer: every file-backed disk hit asks (three joins were three
        // allocations and copies).
        let hex = blake3::Hash::from_bytes(*digest).to_hex();
        let name = hex.as_str();
        let mut path = std::ffi::OsString::with_capacity(self.root.as_os_str().len() + 76);
        path.push(self.root.as_os_str());
        path.push("/blobs/");
        path.push(&name[..2]);
        path.push("/");
        path.push(name);
        PathBuf::from(path)
    }

    /// A new file in `tmp/`, for a body written as it streams.
    pub fn create_temp(&self) -> Result<(fs::File, PathBuf), DiskError> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("tmp")
            .join(format!("{}{n}.part", self.temp_prefix));
        let file = create_private_file(&path)?;
        Ok((file, path))
    }

    /// Writes a whole body to a temporary file.
    pub fn write_temp(&self, body: &[u8]) -> Result<TempBlob, DiskError> {
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
            check: super::body_check(body),
            _reservation: None,
        })
    }

    /// Moves a temporary body to its place under `blobs/`; returns the bytes it occupies on
    /// disk (allocated blocks, which a small body rounds up and a sparse one rounds down).
    pub fn place(&self, temp: &TempBlob) -> Result<u64, DiskError> {
        let target = self.path_of(&temp.digest);
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        create_private_dir(&dir)?;
        if let Err(err) = fs::rename(&temp.path, &target) {
            self.discard(temp);
            return Err(io_err(&target)(err));
        }
        if self.fsync {
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&dir))?;
        }
        Ok(allocated_bytes(&target).unwrap_or(temp.len))
    }

    /// Removes a temporary body that will not be placed.
    pub fn discard(&self, temp: &TempBlob) {
        let _ = fs::remove_file(&temp.path);
    }

    /// Deletes a stored body (gone already is fine).
    pub fn delete(&self, digest: &[u8; 32]) -> Result<(), DiskError> {
        self.opened.forget(digest);
        let path = self.path_of(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_err(&path)(err)),
        }
    }

    pub fn exists(&self, digest: &[u8; 32]) -> bool {
        self.path_of(digest).exists()
    }

    /// A stored body, whole, if its file holds exactly `len` bytes (the caller verifies
    /// the bytes), and the file it was read from (kept open if the bytes prove right).
    pub fn read_exactly(
        &self,
        digest: &[u8; 32],
        len: u64,
    ) -> Result<(Bytes, super::opened::Reading), ReadError> {
        let path = self.path_of(digest);
        let reading = match super::opened::Reading::open(&path) {
            Ok(reading) => reading,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
            Err(err) => return Err(ReadError::Disk(io_err(&path)(err))),
        };
        // The file's own size first: the buffer is sized from `len`, which comes from the
        // index, and a damaged row must not make us allocate what it says.
        if reading.size() != len {
            return Err(ReadError::Corrupt);
        }
        let want = usize::try_from(len).map_err(|_| ReadError::Corrupt)?;
        // Not zeroed first: a zeroed buffer of this size came as fresh pages from the
        // kernel, a page fault per 4 KiB on every read. Exactly `len` asked for: the size
        // was checked above, so no read past it to find the end (a syscall per hit).
        let mut buffer = Vec::with_capacity(want);
        io::Read::read_to_end(
            &mut io::Read::take(reading.file().as_ref(), len),
            &mut buffer,
        )
        .map_err(|err| ReadError::Disk(io_err(&path)(err)))?;
        if buffer.len() != want {
            return Err(ReadError::Corrupt);
        }
        Ok((Bytes::from(buffer), reading))
    }

    /// Removes an earlier run's temporary files; returns how many.
    pub fn sweep_temp(&self) -> Result<u64, DiskError> {
        let tmp = self.root.join("tmp");
        let mut removed = 0;
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            // Only one process opens the index at a time, so files without this opening's
            // prefix are an earlier run's leftovers; this run's may be in use. Only regular
            // files: a symlink is neither followed nor removed.
            let ours = entry
                .file_name()
                .to_string_lossy()
                .starts_with(&self.temp_prefix);
            let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
            if is_file && !ours && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Walks the stored files: `remove_if_orphan` gets each one's digest and path and
    /// returns whether it removed it; files whose name is no digest are removed here.
    /// Returns how many were removed.
    pub fn sweep_orphans(&self, remove_if_orphan: &mut OrphanCheck<'_>) -> Result<u64, DiskError> {
        let blobs_dir = self.root.join("blobs");
        let mut removed = 0;
        for shard in fs::read_dir(&blobs_dir)
            .map_err(io_err(&blobs_dir))?
            .flatten()
        {
            // Never into a symlinked directory.
            if !shard.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                if !file.file_type().is_ok_and(|kind| kind.is_file()) {
                    continue;
                }
                let path = file.path();
                let was_removed = match parse_hex(&file.file_name().to_string_lossy()) {
                    Some(digest) => {
                        let was_orphan = remove_if_orphan(&digest, &path)?;
                        if was_orphan {
                            self.opened.forget(&digest);
                        }
                        was_orphan
                    }
                    None => fs::remove_file(&path).is_ok(),
                };
                removed += u64::from(was_removed);
            }
        }
        Ok(removed)
    }

    /// A streaming writer for a body too large to hold in memory, holding `reservation`
    /// until its body is committed or discarded.
    pub fn writer(&self, reservation: Reservation) -> Result<BlobWriter, DiskError> {
        let (file, path) = self.create_temp()?;
        Ok(BlobWriter {
            reservation: Some(reservation),
            file: Some(file),
            path,
            digests: Box::new(Digests {
                hasher: blake3::Hasher::new(),
                checker: xxhash_rust::xxh3::Xxh3::new(),
                block_hasher: blake3::Hasher::new(),
            }),
            block_fill: 0,
            blocks: Vec::new(),
            len: 0,
            flushed: 0,
            pending: Vec::new(),
            fsync: self.fsync,
        })
    }
}

/// Writes a body to a temporary file as it streams, hashing as it goes. Writes are batched
/// (1 MiB) and run on the blocking pool.
pub struct BlobWriter {
    reservation: Option<Reservation>,
    file: Option<fs::File>,
    path: PathBuf,
    /// Boxed: the hashers' states are about 4.5 KB, and a writer rides inside every future
    /// of the miss path, which moves it by value several times per fill (measured: the
    /// copies were a quarter of a 1 KiB miss's instructions).
    digests: Box<Digests>,
    /// How much of the block being hashed is filled.
    block_fill: u64,
    blocks: Vec<[u8; 32]>,
    len: u64,
    /// Bytes written to the file so far (the rest is batched in `pending`).
    flushed: u64,
    pending: Vec<u8>,
    fsync: bool,
}

/// What a blob writer hashes as the bytes pass: the whole body's digest, the quick
/// checksum, and the current block's digest.
struct Digests {
    hasher: blake3::Hasher,
    checker: xxhash_rust::xxh3::Xxh3,
    block_hasher: blake3::Hasher,
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

    /// The bytes written after those in the file, batched for its next write.
    pub fn unflushed(&self) -> &[u8] {
        &self.pending
    }

    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.digests.hasher.update(chunk);
        self.digests.checker.update(chunk);
        let mut rest = chunk;
        while !rest.is_empty() {
            let room = (BLOCK - self.block_fill) as usize;
            let (part, tail) = rest.split_at(room.min(rest.len()));
            self.digests.block_hasher.update(part);
            self.block_fill += part.len() as u64;
            if self.block_fill == BLOCK {
                self.blocks
                    .push(*self.digests.block_hasher.finalize().as_bytes());
                self.digests.block_hasher.reset();
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

    /// Finishes the file: its digest and length, ready to be committed.
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
            self.blocks
                .push(*self.digests.block_hasher.finalize().as_bytes());
        }
        if self.len <= BLOCK {
            self.blocks.clear();
        }
        Ok(TempBlob {
            path,
            digest: *self.digests.hasher.finalize().as_bytes(),
            len: self.len,
            blocks: std::mem::take(&mut self.blocks),
            check: self.digests.checker.digest(),
            _reservation: self.reservation.take(),
        })
    }

    /// Abandons the file (the fill failed).
    pub async fn discard(self) {
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}
