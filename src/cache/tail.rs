//! Following a fill through its disk file: a request that joins a large fill after the
//! fill stopped keeping its body in memory (it streams to a disk-tier file instead) reads
//! that file as it grows, instead of making a second origin fetch.
//!
//! The reader hashes what it reads and holds back its last piece until the fill has
//! stored the object and the digest matches, so a failed or corrupt fill ends in an error
//! (an aborted response), never a clean end of a truncated body.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use super::coalesce::{Fill, FillStatus, SpillState};
use super::entry::StoredBody;
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
    let spill = fill.spill.borrow().clone();
    if spill.path.is_none() || spill.abandoned {
        return None;
    }
    if matches!(&*fill.status.borrow(), FillStatus::Failed(_)) {
        return None;
    }
    let state = Tail {
        _fill: Arc::clone(fill),
        spill: fill.spill.subscribe(),
        status: fill.status.subscribe(),
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
    /// Keeps the fill (and so its status and spill senders) alive while following it.
    _fill: Arc<Fill>,
    spill: tokio::sync::watch::Receiver<SpillState>,
    status: tokio::sync::watch::Receiver<FillStatus>,
    file: Option<Arc<File>>,
    /// Bytes read and hashed so far.
    offset: u64,
    /// Bytes before this offset were sent already (from memory) and are only hashed.
    emit_from: u64,
    hasher: blake3::Hasher,
    held: Option<Bytes>,
    done: bool,
}

/// The stored object, once the fill has indexed it: its file, length and digest.
fn stored(status: &FillStatus) -> Option<(Arc<PathBuf>, u64, [u8; 32])> {
    match status {
        FillStatus::Complete { entry, .. } => match &entry.body {
            StoredBody::File(file) => Some((
                Arc::new(file.path.clone()),
                entry.meta.body_len,
                entry.meta.body_digest,
            )),
            StoredBody::Memory(_) => None,
        },
        _ => None,
    }
}

impl Tail {
    async fn next(&mut self) -> Option<Result<Bytes, BoxError>> {
        loop {
            let spill = self.spill.borrow_and_update().clone();
            let status = self.status.borrow_and_update().clone();
            if spill.abandoned || matches!(status, FillStatus::Failed(_)) {
                return Some(Err("the fill being followed failed".into()));
            }
            let complete = stored(&status);
            if self.file.is_none() {
                // The temporary file is renamed when the object is indexed; an open handle
                // survives that, a late open uses the stored name.
                let path = complete
                    .as_ref()
                    .map(|(path, ..)| Arc::clone(path))
                    .or(spill.path.clone());
                if let Some(path) = path {
                    match File::open(path.as_ref()) {
                        Ok(file) => self.file = Some(Arc::new(file)),
                        Err(_) if complete.is_none() => {}
                        Err(err) => return Some(Err(err.into())),
                    }
                }
            }
            let available = complete.as_ref().map_or(spill.written, |(_, len, _)| *len);
            if let (Some(file), true) = (&self.file, self.offset < available) {
                let want = (available - self.offset).min(READ_CHUNK) as usize;
                let (file, offset) = (Arc::clone(file), self.offset);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buffer = vec![0u8; want];
                    file.read_exact_at(&mut buffer, offset).map(|()| buffer)
                })
                .await;
                let buffer = match read {
                    Ok(Ok(buffer)) => buffer,
                    Ok(Err(err)) => return Some(Err(err.into())),
                    Err(err) => return Some(Err(err.into())),
                };
                self.hasher.update(&buffer);
                let start = self.offset;
                self.offset += buffer.len() as u64;
                if self.offset <= self.emit_from {
                    continue;
                }
                let skip = self.emit_from.saturating_sub(start) as usize;
                let piece = Bytes::from(buffer).slice(skip..);
                if let Some(previous) = self.held.replace(piece) {
                    return Some(Ok(previous));
                }
                continue;
            }
            if let Some((_, len, digest)) = complete {
                if self.offset == len {
                    if *self.hasher.finalize().as_bytes() != digest {
                        return Some(Err("followed body does not match its digest".into()));
                    }
                    return self.held.take().map(Ok);
                }
            }
            if !matches!(status, FillStatus::Streaming(_) | FillStatus::Pending)
                && complete.is_none()
            {
                // Settled without a stored file (not stored after all).
                return Some(Err("the fill being followed was not stored".into()));
            }
            tokio::select! {
                changed = self.spill.changed() => if changed.is_err() {
                    return Some(Err("fill gone".into()));
                },
                changed = self.status.changed() => if changed.is_err() {
                    return Some(Err("fill gone".into()));
                },
            }
        }
    }
}
