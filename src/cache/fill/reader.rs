//! One request's view of a fill's body, streamed as it arrives: from the fill's chunks in
//! memory, or, for a request that joined a large fill after it started streaming to disk
//! (or fell too far behind it), from the disk-tier file the fill is writing ([`super::tail`]).
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
use crate::body::{Body, BoxError};

/// A request's reader of a fill.
pub enum FillReader {
    Live(LiveReader),
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
            let Some(offset) = live.detached_at() else {
                return Pin::new(live).poll_frame(cx);
            };
            // Fell behind a fill that streams to disk: go on from its file.
            match super::tail::reader_at(&live.fill, offset) {
                Some(tail) => *this = FillReader::Tail(tail),
                None => return Poll::Ready(Some(Err("fell behind a fill that failed".into()))),
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

impl LiveReader {
    fn detached_at(&self) -> Option<u64> {
        self.fill
            .body
            .lock()
            .readers
            .get(self.slot)
            .and_then(Option::as_ref)
            .and_then(|slot| slot.detached_at)
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
            if slot.detached_at.is_none() && slot.next_index >= first_index {
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
    }
}
