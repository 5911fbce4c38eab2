//! Large memory-tier bodies kept in sealed memory files (memfd), so that a hit on a
//! cleartext HTTP/1 connection is sent with sendfile(2) like a disk hit: the kernel hands
//! the socket references to the file's pages instead of copying the body out of our heap.
//! Every other reader (TLS, HTTP/2, ranges, compression, the disk tier's writer) sees the
//! same bytes through a read-only mapping, so nothing is ever copied back out.
//!
//! # Why a sent body can never change under the socket
//! sendfile does not copy: the socket keeps the file's pages until the peer has read them,
//! after sendfile has returned and even after the entry is evicted. Those pages must never
//! be written again. A memory file is written once, then sealed against writes, growing
//! and shrinking (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK`) and against further seal
//! changes before anyone sees it, so no process, including this one, can change its bytes.
//! Evicting an entry only closes the file; pages still queued on a socket live on until
//! the socket lets them go.
//!
//! # What it costs
//! One file descriptor and one mapping per body, both process-wide limits shared with
//! connections, so at most [`max_live`] bodies are sealed at once; past that, and for
//! bodies below `cache.memory_sendfile_min`, bodies stay on the heap. A body whose length
//! the origin declared is written into its file as it arrives ([`GrowingBody`]) and sealed
//! when complete; any other is copied into its file once, at store time.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::digest::{BodyDigest, BodyHasher};
use crate::body::{Body, VerifiedFile};

/// Sealed bodies alive now, process-wide (descriptors and mappings are the process's).
static LIVE: AtomicU64 = AtomicU64::new(0);

/// Sealed bodies allowed at once: a quarter of the open-file limit (connections and disk
/// files need the rest) and a quarter of the kernel's mapping limit (`vm.max_map_count`;
/// the allocator and thread stacks need mappings too).
pub fn max_live() -> u64 {
    static MAX: OnceLock<u64> = OnceLock::new();
    *MAX.get_or_init(|| {
        let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1 << 20);
        let mappings = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(65_530);
        (open_files / 4).min(mappings / 4)
    })
}

/// The kernel's `shmem_enabled` setting when it keeps memory files in 4 KiB pages
/// (`never` or `deny`), `None` when it allows larger folios or cannot be read.
///
/// Sending a memory file (sendfile) looks its pages up one by one; in 4 KiB pages those
/// lookups were about 12% of a 100 KiB hit's CPU samples. With `within_size` the kernel
/// gives memory files folios as large as their size allows (measured on Linux 6.18), and
/// they fall to about 4% (`benches/sendfile_lookups.sh`).
pub fn small_pages_setting() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled").ok()?;
    small_pages_in(&text)
}

/// The chosen value of a `shmem_enabled` text (`always within_size [never] ...`) when it
/// is one that keeps memory files in 4 KiB pages.
fn small_pages_in(text: &str) -> Option<String> {
    let chosen = text.split_whitespace().find(|word| word.starts_with('['))?;
    let chosen = chosen.trim_matches(|c| c == '[' || c == ']');
    matches!(chosen, "never" | "deny").then(|| chosen.to_string())
}

/// Which bodies are sealed: those of at least `min_len` bytes (0: none); and the digest
/// every stored body gets, sealed or not.
#[derive(Debug, Clone, Copy)]
pub struct Sealer {
    min_len: u64,
    digest: BodyDigest,
}

impl Sealer {
    /// Bodies get blake3 digests unless told otherwise ([`Sealer::with_digest`]).
    pub fn new(min_len: u64) -> Sealer {
        Sealer {
            min_len,
            digest: BodyDigest::Blake3,
        }
    }

    pub fn with_digest(self, digest: BodyDigest) -> Sealer {
        Sealer { digest, ..self }
    }

    /// The digest stored bodies get.
    pub fn digest(&self) -> BodyDigest {
        self.digest
    }

    /// Whether any body is sealed.
    pub fn is_on(&self) -> bool {
        self.min_len > 0
    }

    /// Whether a body of `len` bytes is to be sealed.
    pub fn takes(&self, len: usize) -> bool {
        self.min_len > 0 && len as u64 >= self.min_len
    }

    /// `body` in a sealed memory file, if it is large enough and a file is allowed and can
    /// be made; `None` keeps it on the heap (a failure is logged at debug level, never an
    /// error: the heap serves as well, only with a copy per hit).
    pub fn seal(&self, body: &Bytes) -> Option<Arc<SealedBody>> {
        self.seal_chunks(std::slice::from_ref(body))
    }

    /// Like [`Sealer::seal`] for a body that arrived in `chunks`: they are written to the
    /// file as they are, never joined into one heap copy first.
    pub fn seal_chunks(&self, chunks: &[Bytes]) -> Option<Arc<SealedBody>> {
        let len = chunks.iter().map(Bytes::len).sum::<usize>();
        if !self.takes(len) {
            return None;
        }
        let slot = Slot::take()?;
        match SealedBody::write(chunks, len, slot) {
            Ok(sealed) => Some(Arc::new(sealed)),
            Err(error) => {
                tracing::debug!(%error, len, "body kept on the heap: memory file failed");
                None
            }
        }
    }

    /// A memory file of `len` bytes to be written as a body arrives ([`GrowingBody`]), if
    /// bodies that long are sealed and a file is allowed and can be made.
    pub fn growing(&self, len: u64) -> Option<GrowingBody> {
        if !self.takes(usize::try_from(len).ok()?) {
            return None;
        }
        let slot = Slot::take()?;
        match GrowingBody::create(len, slot, self.digest.hasher()) {
            Ok(growing) => Some(growing),
            Err(error) => {
                tracing::debug!(%error, len, "body arrives on the heap: memory file failed");
                None
            }
        }
    }
}

/// One place in [`LIVE`], given back when dropped.
#[derive(Debug)]
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        let max = max_live();
        LIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| {
            (live < max).then_some(live + 1)
        })
        .ok()
        .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Something that must live exactly as long as a body's pages (see
/// [`SealedBody::keep_while_held`]).
pub type Keepsake = Box<dyn std::any::Any + Send + Sync>;

/// Where a body's keepsake is kept: shared by its mapping and its [`SealedBody`].
type KeepsakeSlot = Arc<parking_lot::Mutex<Option<Keepsake>>>;

/// A body's mapping, as the owner of the [`Bytes`] handed out of it: it is unmapped, and
/// what its keepsake slot holds let go, when the last slice of it is dropped.
struct Mapping {
    map: memmap2::Mmap,
    /// Never read: dropped with the mapping, which is what it is for.
    _keepsake: KeepsakeSlot,
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// The mapping of `map` as shared bytes, and its keepsake slot.
fn shared_mapping(map: memmap2::Mmap) -> (Bytes, KeepsakeSlot) {
    let keepsake = KeepsakeSlot::default();
    let mapping = Mapping {
        map,
        _keepsake: Arc::clone(&keepsake),
    };
    (Bytes::from_owner(mapping), keepsake)
}

/// A body in a sealed memory file, with a read-only view of it.
#[derive(Debug)]
pub struct SealedBody {
    file: File,
    /// The whole file, mapped read-only; slices of it are handed out as they are.
    bytes: Bytes,
    /// Kept until both the file (sent from by sendfile) and every slice are gone.
    keepsake: KeepsakeSlot,
    _slot: Slot,
}

impl SealedBody {
    fn write(chunks: &[Bytes], len: usize, slot: Slot) -> std::io::Result<SealedBody> {
        let mut file = new_memory_file()?;
        // Sized first, as a growing body is: with `shmem_enabled=within_size` the kernel
        // gives a file large folios only within its size (see `small_pages_setting`).
        file.set_len(len as u64)?;
        write_all_chunks(&mut file, chunks)?;
        seal_for_good(&file)?;
        // SAFETY: the file is sealed against writes, growing and shrinking (and against
        // removing those seals) by the call above, so the mapped bytes can never change
        // or disappear while the mapping lives; the mapping is read-only.
        let map = checked_len(unsafe { memmap2::Mmap::map(&file)? }, len)?;
        let (bytes, keepsake) = shared_mapping(map);
        Ok(SealedBody {
            file,
            bytes,
            keepsake,
            _slot: slot,
        })
    }

    /// The body.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Keeps `keepsake` until nothing holds this body's pages any more: neither this value
    /// nor any slice handed out of it (a client still being sent the body). The first
    /// keepsake given is kept; later ones are dropped at once.
    pub fn keep_while_held(&self, keepsake: Keepsake) {
        let mut slot = self.keepsake.lock();
        if slot.is_none() {
            *slot = Some(keepsake);
        }
    }

    /// Lets go of the keepsake now: the body is back where it is counted (the memory tier
    /// took it again, say after a revalidation of an evicted entry found by a request in
    /// flight), so what the keepsake stood for would count it twice.
    pub fn release_keepsake(&self) {
        let released = self.keepsake.lock().take();
        drop(released);
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("len", &self.map.len())
            .finish()
    }
}

/// A body written into its memory file as it arrives, to be sealed once complete: the
/// bytes a fill receives go straight to the pages the stored entry will keep, so a large
/// body in flight is never held twice (on the heap as it arrives, then in its file), and
/// the connection's read buffer is free for the next read at once.
///
/// Readers get the bytes written so far as slices of a private read-only mapping of the
/// whole declared length. Private, because a shared mapping of a writable descriptor counts
/// as writable and would forbid the write seal; a private mapping that is never written
/// maps the file's own pages (it is never copied), so it shows each byte once written. A
/// written byte is never written again (the body is appended once, in order), so a slice
/// handed out never changes, before or after the seal.
#[derive(Debug)]
pub struct GrowingBody {
    file: File,
    /// The whole declared length, mapped read-only; bytes past `written` are not yet valid.
    bytes: Bytes,
    keepsake: KeepsakeSlot,
    written: usize,
    /// Boxed (see [`BodyHasher`]): the fill's writer, which holds this body, is moved by
    /// value through the miss path's futures.
    hasher: BodyHasher,
    slot: Slot,
}

impl GrowingBody {
    fn create(len: u64, slot: Slot, hasher: BodyHasher) -> std::io::Result<GrowingBody> {
        let file = new_memory_file()?;
        // Sized up front so the mapping never reaches past the end of the file; pages are
        // only allocated as they are written.
        file.set_len(len)?;
        // SAFETY: the mapping is read-only, and the file is written only by `append`, which
        // writes each byte once, past every byte already handed out; bytes past `written`
        // are never handed out. The file cannot shrink while mapped: only this value holds
        // its descriptor, it never truncates, and `seal` forbids it for good.
        let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file)? };
        let map = checked_len(map, usize::try_from(len).map_err(std::io::Error::other)?)?;
        let (bytes, keepsake) = shared_mapping(map);
        Ok(GrowingBody {
            file,
            bytes,
            keepsake,
            written: 0,
            hasher,
            slot,
        })
    }

    /// Appends `chunk` and returns the same bytes as a slice of the file's mapping.
    ///
    /// # Errors
    /// The chunk would pass the declared length, or the write failed (out of memory for
    /// the file's pages); the body must then be kept some other way.
    pub fn append(&mut self, chunk: &[u8]) -> std::io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let end = self.written + chunk.len();
        if end > self.bytes.len() {
            return Err(std::io::Error::other("body longer than declared"));
        }
        self.file.write_all_at(chunk, self.written as u64)?;
        self.hasher.update(chunk);
        let written = self.bytes.slice(self.written..end);
        self.written = end;
        Ok(written)
    }

    /// Seals the complete body; returns it with its digest.
    ///
    /// # Errors
    /// Fewer bytes than declared were written, or sealing failed.
    pub fn seal(self) -> std::io::Result<(Arc<SealedBody>, [u8; 32])> {
        if self.written != self.bytes.len() {
            return Err(std::io::Error::other("body shorter than declared"));
        }
        seal_for_good(&self.file)?;
        let sealed = SealedBody {
            file: self.file,
            bytes: self.bytes,
            keepsake: self.keepsake,
            _slot: self.slot,
        };
        Ok((Arc::new(sealed), self.hasher.finalize()))
    }
}

/// A new, empty memory file that can be sealed.
fn new_memory_file() -> std::io::Result<File> {
    use rustix::fs::{fcntl_getfl, fcntl_setfl, memfd_create, MemfdFlags, OFlags};
    let fd = memfd_create(
        "outpost-body",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    // Every sendfile from the file would otherwise check (and now and then write) its
    // access time, which nothing reads.
    fcntl_setfl(&fd, fcntl_getfl(&fd)? | OFlags::NOATIME)?;
    Ok(File::from(fd))
}

/// Seals `file` against writes, growing and shrinking, and against removing those seals.
fn seal_for_good(file: &File) -> std::io::Result<()> {
    use rustix::fs::{fcntl_add_seals, SealFlags};
    fcntl_add_seals(
        file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    Ok(())
}

/// `map`, if it is `len` bytes long.
fn checked_len(map: memmap2::Mmap, len: usize) -> std::io::Result<memmap2::Mmap> {
    if map.len() != len {
        return Err(std::io::Error::other(
            "memory file mapped at the wrong length",
        ));
    }
    Ok(map)
}

/// Writes every chunk, in order, a batch of them per system call.
fn write_all_chunks(file: &mut File, chunks: &[Bytes]) -> std::io::Result<()> {
    /// The kernel's limit on slices per call (`IOV_MAX`).
    const MAX_SLICES: usize = 1024;
    for batch in chunks.chunks(MAX_SLICES) {
        let mut slices: Vec<std::io::IoSlice<'_>> = batch
            .iter()
            .map(|chunk| std::io::IoSlice::new(chunk))
            .collect();
        let mut remaining: &mut [std::io::IoSlice<'_>] = &mut slices;
        while !remaining.is_empty() {
            match file.write_vectored(remaining) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => std::io::IoSlice::advance_slices(&mut remaining, written),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}

impl VerifiedFile for SealedBody {
    fn file(&self) -> &File {
        &self.file
    }

    fn read(self: Arc<Self>, offset: u64, len: u64) -> Body {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        Body::full(self.bytes.slice(start..end.min(self.bytes.len())))
    }

    fn is_in_memory(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::SealFlags;

    #[test]
    fn the_shmem_setting_is_read_from_its_bracketed_choice() {
        let setting = |text| small_pages_in(text);
        assert_eq!(
            setting("always within_size advise [never] deny force\n").as_deref(),
            Some("never")
        );
        assert_eq!(
            setting("always within_size advise never [deny] force").as_deref(),
            Some("deny")
        );
        assert_eq!(
            setting("always [within_size] advise never deny force"),
            None
        );
        assert_eq!(setting("[always] within_size advise never"), None);
        assert_eq!(setting(""), None);
    }

    #[test]
    fn large_bodies_are_sealed_and_read_back_unchanged() {
        let body = Bytes::from((0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let sealed = Sealer::new(64 << 10).seal(&body).expect("sealed");
        assert_eq!(sealed.bytes(), &body);
        let window = Arc::clone(&sealed).read(1000, 500);
        let Body::Full(Some(bytes)) = window else {
            panic!("a window of a sealed body is its bytes");
        };
        assert_eq!(bytes, body.slice(1000..1500));
    }

    /// A keepsake lives as long as the body's pages: past the body itself while a slice
    /// handed out (a client still being sent it) holds them.
    #[test]
    fn a_keepsake_lives_until_the_last_slice_is_dropped() {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = Bytes::from(vec![7u8; 100_000]);
        let sealed = Sealer::new(1).seal(&body).expect("sealed");
        sealed.keep_while_held(Box::new(Flag(Arc::clone(&dropped))));
        let slice = sealed.bytes().slice(10..20);
        drop(sealed);
        assert!(
            !dropped.load(Ordering::SeqCst),
            "a slice still holds the pages"
        );
        drop(slice);
        assert!(dropped.load(Ordering::SeqCst), "nothing holds them");
    }

    #[test]
    fn a_body_in_many_chunks_is_sealed_as_their_concatenation() {
        // More chunks than one write call takes, some empty, of uneven sizes.
        let chunks: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; (i % 7 * 13) as usize]))
            .collect();
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let sealed = Sealer::new(1).seal_chunks(&chunks).expect("sealed");
        assert_eq!(sealed.bytes(), &whole[..]);
    }

    #[test]
    fn a_growing_body_hands_out_what_it_wrote_and_seals_unchanged() {
        use std::os::unix::fs::FileExt;
        let whole: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut growing = Sealer::new(1)
            .growing(whole.len() as u64)
            .expect("memory file");
        let mut handed_out = Vec::new();
        for piece in whole.chunks(70_001) {
            let slice = growing.append(piece).expect("appended");
            assert_eq!(&slice[..], piece);
            handed_out.push(slice);
        }
        assert!(growing.append(b"x").is_err(), "past the declared length");
        let (sealed, digest) = growing.seal().expect("sealed");
        assert_eq!(digest, *blake3::hash(&whole).as_bytes());
        assert_eq!(sealed.bytes(), &whole[..]);
        assert_eq!(handed_out.concat(), whole, "slices unchanged by the seal");
        let file = sealed.file();
        assert!(file.write_at(b"X", 0).is_err(), "written in place");
        assert!(file.set_len(1).is_err(), "shrunk");
        let seals = rustix::fs::fcntl_get_seals(file).expect("seals");
        assert!(seals.contains(SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK));
    }

    #[test]
    fn a_short_growing_body_is_not_sealed() {
        let mut growing = Sealer::new(1).growing(10).expect("memory file");
        growing.append(b"12345").expect("appended");
        assert!(growing.seal().is_err());
        assert!(
            Sealer::new(64 << 10).growing(1000).is_none(),
            "below the threshold"
        );
        assert!(Sealer::new(1).growing(0).is_none(), "nothing to write");
    }

    #[test]
    fn small_bodies_and_a_zero_threshold_stay_on_the_heap() {
        let body = Bytes::from(vec![7u8; 1000]);
        assert!(Sealer::new(64 << 10).seal(&body).is_none());
        assert!(Sealer::new(0)
            .seal(&Bytes::from(vec![7u8; 1 << 20]))
            .is_none());
    }

    #[test]
    fn a_sealed_file_refuses_every_write() {
        use std::os::unix::fs::FileExt;
        let sealed = Sealer::new(1)
            .seal(&Bytes::from_static(b"stored bytes"))
            .expect("sealed");
        let file = sealed.file();
        assert!(file.write_at(b"X", 0).is_err(), "written in place");
        assert!(file.set_len(1).is_err(), "shrunk");
        assert!(file.set_len(100).is_err(), "grown");
        assert_eq!(&sealed.bytes()[..], b"stored bytes");
    }

    /// Sending the file does not touch its access time.
    #[test]
    fn memory_files_skip_access_times() {
        let sealed = Sealer::new(1)
            .seal(&Bytes::from_static(b"stored bytes"))
            .expect("sealed");
        let flags = rustix::fs::fcntl_getfl(sealed.file()).unwrap();
        assert!(flags.contains(rustix::fs::OFlags::NOATIME));
    }
}
