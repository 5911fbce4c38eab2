//! Verified streaming reads of body files. One reader serves both a stored body (a disk
//! hit, a range of it) and a body still being written by a fill (followers of a large
//! fill, [`crate::cache::fill::tail`]): it reads what its [`Source`] says is readable,
//! hashes every byte, and holds back its last piece until the digest is known and matches.
//! Bodies with per-block digests are read block by block instead, each block checked before
//! any of its bytes is sent. Either way a corrupt or missing body ends in an error (an
//! aborted response), never a clean end of wrong bytes.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use super::opened::{OpenedBodies, Reading};
use super::BLOCK;
use crate::body::{Body, BoxError};
use crate::cache::entry::BodyFile;

/// Bytes read per blocking call: large, because each call is a trip to the blocking pool.
const READ_CHUNK: u64 = 512 << 10;

/// Run when a stored body turns out missing or corrupt while streaming: the caller's
/// chance to remove the entry and count it (`true`: corrupt, `false`: missing).
pub type CorruptionHook = Box<dyn FnOnce(bool) + Send>;

/// How much of a body file may be read now.
#[derive(Debug, Clone)]
pub struct Extent {
    pub path: Arc<PathBuf>,
    /// Bytes from the start that are in the file.
    pub readable: u64,
    /// The body's final length and digest, once known.
    pub complete: Option<(u64, [u8; 32])>,
}

/// Where a verified stream learns how far it may read.
pub trait Source: Send + 'static {
    /// The extent now.
    ///
    /// # Errors
    /// The body will never be complete (the fill writing it failed).
    fn extent(&mut self) -> Result<Extent, BoxError>;
    /// Waits until the extent may have changed.
    fn changed(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// A stored file: all of it is readable, and its length and digest are known.
struct Stored(Extent);

impl Source for Stored {
    fn extent(&mut self) -> Result<Extent, BoxError> {
        Ok(self.0.clone())
    }

    async fn changed(&mut self) -> Result<(), BoxError> {
        // Never changes: a reader that has read everything has ended before asking.
        std::future::pending().await
    }
}

/// One verified read after another, until the body ends or fails.
trait Step: Send + 'static {
    /// The next piece to send; `None` at a verified end.
    fn step(&mut self) -> impl Future<Output = Result<Option<Bytes>, Failure>> + Send;
    /// The hook to run once on a corrupt or missing body.
    fn hook(&mut self) -> &mut Option<CorruptionHook>;
}

/// A body of `reader`'s pieces; its first failure ends the body with an error.
fn verified_stream<R: Step>(reader: R) -> Body {
    let stream = futures_util::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        match reader.step().await {
            Ok(Some(piece)) => Some((Ok(piece), Some(reader))),
            Ok(None) => None,
            Err(failure) => {
                let error = failure.into_error(reader.hook());
                Some((Err(error), None))
            }
        }
    });
    Body::boxed(http_body_util::StreamBody::new(
        stream.map(|item| item.map(http_body::Frame::data)),
    ))
}

/// Why a verified stream failed.
enum Failure {
    Missing,
    Corrupt,
    Other(BoxError),
}

impl Failure {
    fn into_error(self, hook: &mut Option<CorruptionHook>) -> BoxError {
        let corrupt = match self {
            Failure::Missing => false,
            Failure::Corrupt => true,
            Failure::Other(err) => return err,
        };
        if let Some(hook) = hook.take() {
            hook(corrupt);
        }
        Box::new(LostStoredBody { corrupt })
    }
}

/// How a verified stream of a stored body ends when the body turns out corrupt or missing:
/// typed, so that a caller that has sent nothing yet can tell it from other failures and
/// fetch the object again instead (`pipeline::deliver`).
#[derive(Debug, thiserror::Error)]
#[error("{}", if *.corrupt { "stored body does not match its digest" } else { "stored body file is missing" })]
pub struct LostStoredBody {
    pub corrupt: bool,
}

impl LostStoredBody {
    /// Whether `err`, or an error it wraps (an encoder's I/O error over the read), is one.
    pub fn is_in(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(err);
        while let Some(err) = cause {
            if err.is::<LostStoredBody>() {
                return true;
            }
            // An I/O error's `source` skips the error it wraps.
            cause = match err.downcast_ref::<std::io::Error>() {
                Some(io) => io.get_ref().map(|inner| inner as _),
                None => err.source(),
            };
        }
        false
    }
}

/// Streams bytes `window.0..=window.1` of a stored body file, verified; see the module
/// doc. `on_corrupt` runs once if the file is corrupt or missing.
///
/// A read that verifies the whole body keeps its file open in `opened`, when given, for
/// later hits (see [`super::opened`]).
pub fn verified_file_body(
    file: &Arc<BodyFile>,
    len: u64,
    digest: [u8; 32],
    window: (u64, u64),
    on_corrupt: CorruptionHook,
    opened: Option<OpenedBodies>,
) -> Body {
    let path = Arc::new(file.path.clone());
    // Reported once per stored body: later reads that meet it before its removal lands
    // fail the same way but count nothing more.
    let flagged = Arc::clone(file);
    let on_corrupt: CorruptionHook = Box::new(move |corrupt| {
        let was_reported = flagged
            .is_reported_bad
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        if !was_reported {
            on_corrupt(corrupt);
        }
    });
    match &file.blocks {
        Some(blocks) if blocks.len() as u64 == len.div_ceil(BLOCK) && len > 0 => {
            let blocks = Arc::clone(blocks);
            let keep = opened.map(|opened| (opened, digest));
            verified_blocks_body(path, len, blocks, window, on_corrupt, keep)
        }
        _ => {
            let source = Stored(Extent {
                path,
                readable: len,
                complete: Some((len, digest)),
            });
            let mut body = Hashed::new(source, window, Some(on_corrupt));
            body.keep = opened;
            verified_stream(body)
        }
    }
}

/// Streams bytes `window.0..` of the body `source` describes as it becomes readable, hashing
/// all of it and holding back the last piece until the digest matches.
pub fn hashed_body<S: Source>(
    source: S,
    window: (u64, u64),
    on_corrupt: Option<CorruptionHook>,
) -> Body {
    verified_stream(Hashed::new(source, window, on_corrupt))
}

struct Hashed<S> {
    source: S,
    file: Option<Arc<File>>,
    /// The stored file as opened, to keep in `keep` once all of it is verified.
    reading: Option<Reading>,
    keep: Option<OpenedBodies>,
    /// Bytes read and hashed so far.
    offset: u64,
    /// The bytes to send, inclusive; the rest is only hashed.
    window: (u64, u64),
    hasher: blake3::Hasher,
    held: Option<Bytes>,
    done: bool,
    on_corrupt: Option<CorruptionHook>,
}

impl<S: Source> Hashed<S> {
    fn new(source: S, window: (u64, u64), on_corrupt: Option<CorruptionHook>) -> Hashed<S> {
        Hashed {
            source,
            file: None,
            reading: None,
            keep: None,
            offset: 0,
            window,
            hasher: blake3::Hasher::new(),
            held: None,
            done: false,
            on_corrupt,
        }
    }
}

impl<S: Source> Step for Hashed<S> {
    async fn step(&mut self) -> Result<Option<Bytes>, Failure> {
        if self.done {
            return Ok(None);
        }
        loop {
            let extent = self.source.extent().map_err(Failure::Other)?;
            if self.file.is_none() {
                // A fill's temporary file is renamed when it is committed; an open handle
                // survives that, a late open uses the committed name.
                match Reading::open(extent.path.as_ref()) {
                    Ok(reading) => {
                        self.file = Some(Arc::clone(reading.file()));
                        self.reading = Some(reading);
                    }
                    Err(_) if extent.complete.is_some() => return Err(Failure::Missing),
                    Err(_) => {}
                }
            }
            if let (Some(file), true) = (&self.file, self.offset < extent.readable) {
                let file = Arc::clone(file);
                if let Some(piece) = self.read_piece(file, extent.readable).await? {
                    return Ok(Some(piece));
                }
                continue;
            }
            if let Some((len, digest)) = extent.complete {
                if self.offset != len || *self.hasher.finalize().as_bytes() != digest {
                    return Err(Failure::Corrupt);
                }
                self.done = true;
                if let (Some(keep), Some(reading)) = (&self.keep, self.reading.take()) {
                    keep.register(&digest, reading, len);
                }
                return Ok(self.held.take());
            }
            self.source.changed().await.map_err(Failure::Other)?;
        }
    }

    fn hook(&mut self) -> &mut Option<CorruptionHook> {
        &mut self.on_corrupt
    }
}

impl<S: Source> Hashed<S> {
    /// Reads and hashes the next chunk below `readable`; returns the piece to send now
    /// (the one held back before it), if any.
    async fn read_piece(
        &mut self,
        file: Arc<File>,
        readable: u64,
    ) -> Result<Option<Bytes>, Failure> {
        let want = (readable - self.offset).min(READ_CHUNK) as usize;
        let offset = self.offset;
        let buffer = tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0u8; want];
            file.read_exact_at(&mut buffer, offset).map(|()| buffer)
        })
        .await
        .map_err(|err| Failure::Other(err.into()))?
        // Shorter than the index says: truncated.
        .map_err(|_| Failure::Corrupt)?;
        self.hasher.update(&buffer);
        let start = self.offset;
        self.offset += buffer.len() as u64;
        let (first, last) = self.window;
        let from = first.max(start);
        let to = last.saturating_add(1).min(self.offset);
        if from >= to {
            return Ok(None);
        }
        let piece = Bytes::from(buffer).slice((from - start) as usize..(to - start) as usize);
        Ok(self.held.replace(piece))
    }
}

fn verified_blocks_body(
    path: Arc<PathBuf>,
    len: u64,
    blocks: Arc<Vec<[u8; 32]>>,
    window: (u64, u64),
    on_corrupt: CorruptionHook,
    keep: Option<(OpenedBodies, [u8; 32])>,
) -> Body {
    let (first, last) = (window.0, window.1.min(len.saturating_sub(1)));
    // Only a read of every block verifies the whole file.
    let keep = keep.filter(|_| first == 0 && last + 1 == len);
    let state = Blocks {
        file: None,
        reading: None,
        keep,
        path,
        blocks,
        len,
        window: (first, last),
        next_block: first / BLOCK,
        done: first > last,
        on_corrupt: Some(on_corrupt),
    };
    verified_stream(state)
}

struct Blocks {
    file: Option<Arc<File>>,
    /// The file as opened, to keep once every block is verified (a read of the whole body).
    reading: Option<Reading>,
    keep: Option<(OpenedBodies, [u8; 32])>,
    path: Arc<PathBuf>,
    blocks: Arc<Vec<[u8; 32]>>,
    len: u64,
    window: (u64, u64),
    next_block: u64,
    done: bool,
    on_corrupt: Option<CorruptionHook>,
}

impl Step for Blocks {
    fn hook(&mut self) -> &mut Option<CorruptionHook> {
        &mut self.on_corrupt
    }

    /// The window's part of the next block, checked against its digest.
    async fn step(&mut self) -> Result<Option<Bytes>, Failure> {
        if self.done || self.next_block > self.window.1 / BLOCK {
            return Ok(None);
        }
        if self.file.is_none() {
            let reading = Reading::open(self.path.as_ref()).map_err(|_| Failure::Missing)?;
            self.file = Some(Arc::clone(reading.file()));
            self.reading = Some(reading);
        }
        let block = self.next_block;
        self.next_block += 1;
        let start = block * BLOCK;
        let size = BLOCK.min(self.len - start) as usize;
        let file = self.file.as_ref().map(Arc::clone).ok_or(Failure::Missing)?;
        let buffer = tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0u8; size];
            file.read_exact_at(&mut buffer, start).map(|()| buffer)
        })
        .await
        .map_err(|err| Failure::Other(err.into()))?
        .map_err(|_| Failure::Corrupt)?;
        if *blake3::hash(&buffer).as_bytes() != self.blocks[block as usize] {
            return Err(Failure::Corrupt);
        }
        if start + size as u64 == self.len {
            if let (Some((keep, digest)), Some(reading)) = (self.keep.take(), self.reading.take()) {
                keep.register(&digest, reading, self.len);
            }
        }
        let (first, last) = self.window;
        let from = first.max(start) - start;
        let to = (last + 1).min(start + size as u64) - start;
        Ok(Some(Bytes::from(buffer).slice(from as usize..to as usize)))
    }
}
