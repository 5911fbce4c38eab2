//! An origin body passed on while its digest is computed: for artifacts too large to hold
//! before serving (`mirror.hold_max`). At the end the digest is compared with the one the
//! index published; a mismatch ends the body as an error, so the fill stores nothing and
//! every client's transfer is aborted (a client sees a broken download, never a complete
//! wrong one). The newest chunk is held back until the next arrives, and the last until
//! the digest matches: a client counting the declared length would otherwise have every
//! byte, and a complete response, before the check (a response relayed unstored, too large
//! for the tiers, was). Also replays bytes read ahead (a prefix read while deciding to
//! hold).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::digests::Expected;
use super::{MirrorError, RegistryStats};
use crate::body::BoxError;
use crate::upstream::OriginBody;

/// What a checked stream compares against, and whom it tells of a mismatch.
pub struct Check {
    pub expected: Expected,
    pub registry: String,
    pub stats: Arc<RegistryStats>,
}

pub struct CheckedStream {
    /// Bytes already read (and hashed), sent first.
    prefix: Option<Bytes>,
    inner: OriginBody,
    /// The running digest and what it must come to; `None` passes the body unchecked.
    check: Option<(ring::digest::Context, Check)>,
    /// The newest chunk, sent once the next one (or a checked end) is known.
    held: Option<Bytes>,
    /// The inner body has ended (checked); what is held goes out, then the end.
    ended: bool,
}

impl CheckedStream {
    /// `inner`'s bytes after `prefix`, checked against `check` when given; `prefix` must
    /// already be in `context`.
    pub fn new(
        prefix: Bytes,
        inner: OriginBody,
        check: Option<(ring::digest::Context, Check)>,
    ) -> CheckedStream {
        CheckedStream {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
            check,
            held: None,
            ended: false,
        }
    }

    /// The body has ended: its digest is compared; on a mismatch what is held back is
    /// dropped and the error to end with comes back.
    fn end(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        self.ended = true;
        let (context, check) = self.check.take()?;
        let digest = context.finish();
        if check.expected.is(digest.as_ref()) {
            return None;
        }
        self.held = None;
        check
            .stats
            .integrity_failures
            .fetch_add(1, Ordering::Relaxed);
        let err = MirrorError::Mismatch {
            algorithm: check.expected.algorithm.name(),
        };
        tracing::warn!(registry = %check.registry, error = %err, "artifact refused while streaming: transfer aborted, nothing stored");
        Some(Err(Box::new(err)))
    }
}

impl Body for CheckedStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(this.held.take().map(|data| Ok(Frame::data(data))));
            }
            let frame = match this.prefix.take() {
                // Hashed already.
                Some(prefix) => Frame::data(prefix),
                None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        if let (Some(data), Some((context, _))) =
                            (frame.data_ref(), &mut this.check)
                        {
                            context.update(data);
                        }
                        frame
                    }
                    Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                    None => match this.end() {
                        Some(mismatch) => return Poll::Ready(Some(mismatch)),
                        None => continue,
                    },
                },
            };
            match frame.into_data() {
                Ok(data) => {
                    if let Some(previous) = this.held.replace(data) {
                        return Poll::Ready(Some(Ok(Frame::data(previous))));
                    }
                }
                // Trailers end the body: checked before anything held goes out.
                Err(trailers) => {
                    if let Some(mismatch) = this.end() {
                        return Poll::Ready(Some(mismatch));
                    }
                    if let Some(previous) = this.held.take() {
                        // Sent before the trailers; these are dropped (an artifact's body
                        // is what is checked and stored).
                        return Poll::Ready(Some(Ok(Frame::data(previous))));
                    }
                    return Poll::Ready(Some(Ok(trailers)));
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Bytes read but not yet sent: the prefix, and the chunk held back.
        let waiting =
            self.prefix.as_ref().map_or(0, Bytes::len) + self.held.as_ref().map_or(0, Bytes::len);
        let waiting = waiting as u64;
        if self.ended {
            return SizeHint::with_exact(waiting);
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + waiting);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + waiting);
        }
        hint
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.held.is_none()
    }
}
