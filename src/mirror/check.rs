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
    /// The origin's trailers, sent after what is held.
    trailers: Option<http::HeaderMap>,
    /// The inner body has ended (checked); what is held goes out, then the trailers, then
    /// the end.
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
            trailers: None,
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
                let frame = match this.held.take() {
                    Some(data) => Some(Frame::data(data)),
                    None => this.trailers.take().map(Frame::trailers),
                };
                return Poll::Ready(frame.map(Ok));
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
                // Trailers end the body: checked before anything held goes out, and sent
                // after it.
                Err(trailers) => {
                    if let Some(mismatch) = this.end() {
                        return Poll::Ready(Some(mismatch));
                    }
                    this.trailers = trailers.into_trailers().ok();
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
        self.ended && self.held.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::digests::Algorithm;
    use http_body_util::BodyExt;

    fn origin_body(frames: Vec<Frame<Bytes>>) -> OriginBody {
        let frames = frames.into_iter().map(Ok::<_, BoxError>);
        OriginBody::checked(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    fn checked(frames: Vec<Frame<Bytes>>, digest_of: &[u8]) -> CheckedStream {
        let digest = ring::digest::digest(&ring::digest::SHA256, digest_of);
        let check = Check {
            expected: Expected {
                algorithm: Algorithm::Sha256,
                digest: digest.as_ref().to_vec(),
            },
            registry: "test".into(),
            stats: Arc::default(),
        };
        let context = ring::digest::Context::new(&ring::digest::SHA256);
        CheckedStream::new(Bytes::new(), origin_body(frames), Some((context, check)))
    }

    fn trailers() -> http::HeaderMap {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("done"));
        trailers
    }

    /// RFC 9110 §6.5: trailers follow the content; holding the last chunk back for the
    /// check must not lose them.
    #[tokio::test]
    async fn trailers_follow_the_held_chunk_once_the_digest_matches() {
        let frames = vec![
            Frame::data(Bytes::from_static(b"first ")),
            Frame::data(Bytes::from_static(b"last")),
            Frame::trailers(trailers()),
        ];
        let collected = checked(frames, b"first last").collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers()));
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"first last"));
    }

    #[tokio::test]
    async fn a_mismatch_before_trailers_ends_the_body_as_an_error() {
        let frames = vec![
            Frame::data(Bytes::from_static(b"tampered")),
            Frame::trailers(trailers()),
        ];
        let mut body = checked(frames, b"original");
        let mut data = Vec::new();
        let error = loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    assert!(frame.is_data(), "no trailers after a mismatch");
                    data.extend_from_slice(frame.data_ref().unwrap());
                }
                Some(Err(error)) => break error,
                None => panic!("ended without the mismatch"),
            }
        };
        assert!(error.to_string().contains("sha256"), "{error}");
        assert!(data.is_empty(), "the held chunk is dropped: {data:?}");
    }
}
