//! One request's view of a fill's body, streamed as it arrives: from the fill's chunks in
//! memory, or, for a request that joined a large fill after it started streaming to disk
//! (or fell too far behind it), from the disk-tier file the fill is writing ([`super::tail`]).
//! Once the body is stored in one piece, a reader goes on from the stored entry's body
//! (see `Fill::hand_over`).
//!
//! # Cancellation
//! Dropping a reader releases its position: chunks only it still needed are freed, and a
//! fill waiting for room (or for its last reader to leave) is woken.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;

use super::{BodyEnd, Fill};
use crate::body::{Body, BoxError, VerifiedFile};
use crate::cache::entry::StoredBody;

/// A request's reader of a fill.
pub enum FillReader {
    Live(LiveReader),
    /// The rest of the body from elsewhere: the file the fill writes, or the stored entry.
    Tail(Body),
}

impl FillReader {
    pub(super) fn live(fill: Arc<Fill>, slot: usize) -> FillReader {
        FillReader::Live(LiveReader { fill, slot })
    }
}

impl http_body::Body for FillReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let FillReader::Live(live) = this {
            match live.next_source() {
                NextSource::Chunks => return Pin::new(live).poll_frame(cx),
                // Fell behind a fill that streams to disk: go on from its file.
                NextSource::File(offset) => match super::tail::reader_at(&live.fill, offset) {
                    Some(tail) => *this = FillReader::Tail(tail),
                    None => return Poll::Ready(Some(Err("fell behind a fill that failed".into()))),
                },
                NextSource::Stored(rest) => *this = FillReader::Tail(rest),
            }
        }
        match this {
            FillReader::Live(live) => Pin::new(live).poll_frame(cx),
            FillReader::Tail(tail) => Pin::new(tail).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FillReader::Live(live) => live.is_end_stream(),
            FillReader::Tail(tail) => tail.is_end_stream(),
        }
    }
}

/// A reader of the fill's chunks in memory.
pub struct LiveReader {
    fill: Arc<Fill>,
    slot: usize,
}

/// Where a live reader's next bytes come from.
enum NextSource {
    Chunks,
    /// The fill's disk file, from this offset.
    File(u64),
    /// The rest of the stored entry's body.
    Stored(Body),
}

impl LiveReader {
    fn next_source(&self) -> NextSource {
        let body = self.fill.body.lock();
        let Some(slot) = body.readers.get(self.slot).and_then(Option::as_ref) else {
            return NextSource::Chunks;
        };
        if let Some(offset) = slot.detached_at {
            return NextSource::File(offset);
        }
        let Some(entry) = &body.handed_over else {
            return NextSource::Chunks;
        };
        let len = entry.meta.body_len;
        let from = slot.next_offset.min(len);
        match &entry.body {
            StoredBody::Memory(bytes) => {
                NextSource::Stored(Body::full(bytes.slice(from as usize..)))
            }
            StoredBody::Sealed(sealed) => {
                NextSource::Stored(VerifiedFile::read(Arc::clone(sealed), from, len - from))
            }
            // Never handed over: a file body is read through the fill's own file.
            StoredBody::File(_) => NextSource::Chunks,
        }
    }
}

impl http_body::Body for LiveReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut body = this.fill.body.lock();
        let first_index = body.first_index;
        let available = first_index + body.chunks.len();
        let end = body.end;
        let Some(slot) = body.readers.get_mut(this.slot).and_then(Option::as_mut) else {
            return Poll::Ready(Some(Err("fill reader detached".into())));
        };
        if slot.detached_at.is_some() {
            // Detached between the caller's check and now: wake to switch to the file.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let next = slot.next_index;
        if next < first_index {
            return Poll::Ready(Some(Err("fill discarded unread bytes".into())));
        }
        if next < available {
            let chunk = body.chunks[next - first_index].clone();
            if let Some(slot) = body.readers[this.slot].as_mut() {
                slot.next_index += 1;
                slot.next_offset += chunk.len() as u64;
            }
            body.waiting_at[next - first_index] -= 1;
            body.waiting_at[next + 1 - first_index] += 1;
            if this.fill.trim(&mut body) {
                drop(body);
                this.fill.space.notify_waiters();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match end {
            BodyEnd::Complete => Poll::Ready(None),
            // Never a clean end for a truncated body: the client's response is aborted.
            BodyEnd::Failed => Poll::Ready(Some(Err("origin response failed mid-body".into()))),
            BodyEnd::Open => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let body = self.fill.body.lock();
        let at_end = body.readers[self.slot]
            .as_ref()
            .is_some_and(|slot| slot.next_index >= body.first_index + body.chunks.len());
        at_end && body.end == BodyEnd::Complete
    }
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        let mut body = self.fill.body.lock();
        let first_index = body.first_index;
        if let Some(slot) = body.readers.get_mut(self.slot).and_then(Option::take) {
            let reads_chunks = slot.detached_at.is_none() && body.handed_over.is_none();
            if reads_chunks && slot.next_index >= first_index {
                body.waiting_at[slot.next_index - first_index] -= 1;
            }
            body.reader_count -= 1;
            if body.reader_count == 0 {
                body.unread_since = Some(Instant::now());
            }
        }
        self.fill.trim(&mut body);
        drop(body);
        self.fill.space.notify_waiters();
        self.fill.readers_left.notify_waiters();
    }
}
