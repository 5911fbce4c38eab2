//! Following a fill through its disk file: a request that joins a large fill after the
//! fill stopped keeping its body in memory (it streams to a disk-tier file instead) reads
//! that file as it grows, instead of making a second origin fetch.
//!
//! The reader hashes what it reads and holds back its last piece until the fill has
//! committed the object and the digest matches, so a failed or corrupt fill ends in an
//! error (an aborted response), never a clean end of a truncated body. It watches only the
//! fill's [`SpillState`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use super::{Fill, SpillState};
use crate::body::{Body, BoxError};

/// Bytes per blocking read.
const READ_CHUNK: u64 = 512 << 10;

/// A reader for a late follower of `fill`, if the fill is writing its body to disk.
pub fn reader(fill: &Arc<Fill>) -> Option<Body> {
    reader_at(fill, 0)
}

/// As [`reader`], sending only bytes from `emit_from` on (a reader that already received
/// the bytes before it from memory); the whole file is still hashed.
pub fn reader_at(fill: &Arc<Fill>, emit_from: u64) -> Option<Body> {
    if !matches!(
        &*fill.spill.borrow(),
        SpillState::Writing { .. } | SpillState::Committed { .. }
    ) {
        return None;
    }
    let state = Tail {
        _fill: Arc::clone(fill),
        spill: fill.spill.subscribe(),
        file: None,
        offset: 0,
        emit_from,
        hasher: blake3::Hasher::new(),
        held: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut tail| async move {
        if tail.done {
            return None;
        }
        let item = tail.next().await;
        if !matches!(item, Some(Ok(_))) {
            tail.done = true;
        }
        item.map(|item| (item, tail))
    });
    let frames = stream.map(|item| item.map(http_body::Frame::data));
    Some(Body::boxed(http_body_util::StreamBody::new(frames)))
}

struct Tail {
    /// Keeps the fill (and so its spill sender) alive while following it.
    _fill: Arc<Fill>,
    spill: tokio::sync::watch::Receiver<SpillState>,
    file: Option<Arc<File>>,
    /// Bytes read and hashed so far.
    offset: u64,
    /// Bytes before this offset were sent already (from memory) and are only hashed.
    emit_from: u64,
    hasher: blake3::Hasher,
    held: Option<Bytes>,
    done: bool,
}

impl Tail {
    async fn next(&mut self) -> Option<Result<Bytes, BoxError>> {
        loop {
            let spill = self.spill.borrow_and_update().clone();
            let (path, available, committed) = match &spill {
                SpillState::Writing { path, written } => (path, *written, None),
                SpillState::Committed { path, len, digest } => (path, *len, Some(*digest)),
                SpillState::None | SpillState::Abandoned => {
                    return Some(Err("the fill being followed failed".into()))
                }
            };
            if self.file.is_none() {
                // The temporary file is renamed when the object is committed; an open handle
                // survives that, a late open uses the committed name.
                match File::open(path.as_ref()) {
                    Ok(file) => self.file = Some(Arc::new(file)),
                    Err(_) if committed.is_none() => {}
                    Err(err) => return Some(Err(err.into())),
                }
            }
            if let (Some(file), true) = (&self.file, self.offset < available) {
                match self.read_piece(Arc::clone(file), available).await {
                    Ok(Some(piece)) => return Some(Ok(piece)),
                    Ok(None) => continue,
                    Err(err) => return Some(Err(err)),
                }
            }
            if let Some(digest) = committed {
                if self.offset == available {
                    if *self.hasher.finalize().as_bytes() != digest {
                        return Some(Err("followed body does not match its digest".into()));
                    }
                    return self.held.take().map(Ok);
                }
            }
            if self.spill.changed().await.is_err() {
                return Some(Err("fill gone".into()));
            }
        }
    }

    /// Reads the next piece below `available`; returns the piece to send (the one held
    /// back before it), or `None` when there is nothing to send yet.
    async fn read_piece(
        &mut self,
        file: Arc<File>,
        available: u64,
    ) -> Result<Option<Bytes>, BoxError> {
        let want = (available - self.offset).min(READ_CHUNK) as usize;
        let offset = self.offset;
        let buffer = tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0u8; want];
            file.read_exact_at(&mut buffer, offset).map(|()| buffer)
        })
        .await??;
        self.hasher.update(&buffer);
        let start = self.offset;
        self.offset += buffer.len() as u64;
        if self.offset <= self.emit_from {
            return Ok(None);
        }
        let skip = self.emit_from.saturating_sub(start) as usize;
        let piece = Bytes::from(buffer).slice(skip..);
        Ok(self.held.replace(piece))
    }
}
