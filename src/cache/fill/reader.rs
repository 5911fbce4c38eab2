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
        FillReader::Live(LiveReader {
            fill,
            slot,
            own_fields: None,
        })
    }

    /// This reader, which asks for the rest of the body with `own_fields` (its client's
    /// forwarding fields) should it be left behind, rather than with the leader's.
    pub fn speaking_for(mut self, own_fields: http::HeaderMap) -> FillReader {
        if let FillReader::Live(live) = &mut self {
            live.own_fields = Some(own_fields);
        }
        self
    }
}

impl http_body::Body for FillReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        let this = self.get_mut();
        let live = match this {
            FillReader::Tail(tail) => return Pin::new(tail).poll_frame(cx),
            FillReader::Live(live) => live,
        };
        let mut rest = match live.poll_chunk(cx) {
            Ok(polled) => return polled,
            // Fell behind: go on from the file the fill writes, or else from the origin.
            Err(NextSource::File(offset)) => match super::tail::reader_at(&live.fill, offset)
                .or_else(|| live.fill.resumed_from(offset, live.own_fields.as_ref()))
            {
                Some(tail) => tail,
                None => {
                    let why = "fell behind a fill it cannot follow (failed, or not resumable)";
                    return Poll::Ready(Some(Err(why.into())));
                }
            },
            Err(NextSource::Stored(rest)) => rest,
        };
        let polled = Pin::new(&mut rest).poll_frame(cx);
        *this = FillReader::Tail(rest);
        polled
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
    /// Sent in a request for the rest in place of the fill's request's fields of the same
    /// names ([`FillReader::speaking_for`]).
    own_fields: Option<http::HeaderMap>,
}

/// What polling a body gives.
type PolledFrame = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// Where a live reader's next bytes come from when not from the chunks.
enum NextSource {
    /// The fill's disk file, from this offset.
    File(u64),
    /// The rest of the stored entry's body.
    Stored(Body),
}

impl LiveReader {
    /// The next chunk, or where the reader must go on from instead. Decided under the same
    /// lock as the read: the fill may hand its body over to the stored entry (and drop the
    /// chunks, the last one included) at any moment, and a reader that had judged the chunks
    /// still its source would find its next chunk gone and cut the client's response short.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Result<PolledFrame, NextSource> {
        let mut body = self.fill.body.lock();
        let first_index = body.first_index;
        let available = first_index + body.chunks.len();
        let end = body.end;
        let Some(slot) = body.readers.get(self.slot).and_then(Option::as_ref) else {
            return Ok(Poll::Ready(Some(Err("fill reader detached".into()))));
        };
        if let Some(offset) = slot.detached_at {
            return Err(NextSource::File(offset));
        }
        let (next, next_offset) = (slot.next_index, slot.next_offset);
        if let Some(entry) = &body.handed_over {
            let len = entry.meta.body_len;
            let from = next_offset.min(len);
            match &entry.body {
                StoredBody::Memory(bytes) => {
                    return Err(NextSource::Stored(Body::full(bytes.slice(from as usize..))));
                }
                StoredBody::Sealed(sealed) => {
                    let rest = VerifiedFile::read(Arc::clone(sealed), from, len - from);
                    return Err(NextSource::Stored(rest));
                }
                // Never handed over: a file body is read through the fill's own file.
                StoredBody::File(_) => {}
            }
        }
        if next < first_index {
            return Ok(Poll::Ready(Some(Err("fill discarded unread bytes".into()))));
        }
        if next < available {
            let chunk = body.chunks[next - first_index].clone();
            if let Some(slot) = body.readers[self.slot].as_mut() {
                slot.next_index += 1;
                slot.next_offset += chunk.len() as u64;
            }
            body.waiting_at[next - first_index] -= 1;
            body.waiting_at[next + 1 - first_index] += 1;
            if self.fill.trim(&mut body) {
                drop(body);
                self.fill.space.notify_waiters();
            }
            return Ok(Poll::Ready(Some(Ok(Frame::data(chunk)))));
        }
        Ok(match end {
            BodyEnd::Complete => Poll::Ready(None),
            // Never a clean end for a truncated body: the client's response is aborted.
            BodyEnd::Failed => Poll::Ready(Some(Err("origin response failed mid-body".into()))),
            BodyEnd::Open => {
                if let Some(slot) = body.readers[self.slot].as_mut() {
                    slot.waker = Some(cx.waker().clone());
                }
                if body.awaits_demand {
                    drop(body);
                    self.fill.space.notify_waiters();
                }
                Poll::Pending
            }
        })
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
            // One that went on from the origin left the count when it was detached.
            if !slot.resumes {
                body.reader_count -= 1;
            }
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
