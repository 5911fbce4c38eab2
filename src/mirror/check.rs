//! An origin body passed on while something watches its bytes: a digest computed for an
//! artifact too large to hold before serving (`mirror.hold_max`), or a `Packages` index's
//! digests read on the blocking pool ([`super::recording`]). The newest chunk is held back
//! until the next arrives, and the last until the watcher is done with the end: a client
//! counting the declared length would otherwise have every byte, and a complete response,
//! before the check (a response relayed unstored, too large for the tiers, was), and a
//! fill would store an index whose digests were not yet recorded. A digest mismatch ends
//! the body as an error, so the fill stores nothing and every client's transfer is aborted
//! (a client sees a broken download, never a complete wrong one). Also replays bytes read
//! ahead (a prefix read while deciding to hold).

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

/// What looks at a body's bytes as they pass, and has the last word on its end.
pub trait Watcher: Send + Unpin {
    /// Ready when the watcher can take another chunk (it may keep a bounded queue).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }

    /// Sees each chunk of the body, in order, once [`Watcher::poll_ready`] was ready.
    fn update(&mut self, data: &Bytes);

    /// The body has ended cleanly: ready with `Ok` lets what is held go, with an error ends
    /// the body with it instead (what is held is dropped).
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;
}

/// What a checked stream compares against, and whom it tells of a mismatch.
pub struct Check {
    pub expected: Expected,
    pub registry: String,
    pub stats: Arc<RegistryStats>,
}

/// A running digest and the one it must come to.
pub struct DigestWatcher {
    context: ring::digest::Context,
    check: Check,
}

impl DigestWatcher {
    /// `context` must already hold any prefix the stream replays.
    pub fn new(context: ring::digest::Context, check: Check) -> DigestWatcher {
        DigestWatcher { context, check }
    }
}

impl Watcher for DigestWatcher {
    fn update(&mut self, data: &Bytes) {
        self.context.update(data);
    }

    fn poll_end(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let digest = self.context.clone().finish();
        let check = &self.check;
        if check.expected.is(digest.as_ref()) {
            return Poll::Ready(Ok(()));
        }
        check
            .stats
            .integrity_failures
            .fetch_add(1, Ordering::Relaxed);
        let err = MirrorError::Mismatch {
            algorithm: check.expected.algorithm.name(),
        };
        tracing::warn!(registry = %check.registry, error = %err, "artifact refused while streaming: transfer aborted, nothing stored");
        Poll::Ready(Err(Box::new(err)))
    }
}

pub struct CheckedStream {
    /// Bytes already read (and seen by the watcher), sent first.
    prefix: Option<Bytes>,
    inner: OriginBody,
    /// `None` passes the body on unwatched, or once the watcher has had the end.
    watcher: Option<Box<dyn Watcher>>,
    /// The newest chunk, sent once the next one (or a clean end) is known.
    held: Option<Bytes>,
    /// The origin's trailers, sent after what is held.
    trailers: Option<http::HeaderMap>,
    /// The inner body has ended; once the watcher is done, what is held goes out, then the
    /// trailers, then the end.
    ended: bool,
}

impl CheckedStream {
    /// `inner`'s bytes after `prefix`, watched by `watcher` when given; `prefix` must
    /// already have been shown to it.
    pub fn new(
        prefix: Bytes,
        inner: OriginBody,
        watcher: Option<Box<dyn Watcher>>,
    ) -> CheckedStream {
        CheckedStream {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
            watcher,
            held: None,
            trailers: None,
            ended: false,
        }
    }

    /// The body has ended: the watcher has its say; on an error what is held back is
    /// dropped and the error to end with comes back.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Option<BoxError>> {
        self.ended = true;
        let Some(watcher) = &mut self.watcher else {
            return Poll::Ready(None);
        };
        let verdict = ready!(watcher.poll_end(cx));
        self.watcher = None;
        Poll::Ready(verdict.err().inspect(|_| {
            self.held = None;
            self.trailers = None;
        }))
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
                if let Some(err) = ready!(this.poll_end(cx)) {
                    return Poll::Ready(Some(Err(err)));
                }
                let frame = match this.held.take() {
                    Some(data) => Some(Frame::data(data)),
                    None => this.trailers.take().map(Frame::trailers),
                };
                return Poll::Ready(frame.map(Ok));
            }
            let frame = match this.prefix.take() {
                // Seen already.
                Some(prefix) => Frame::data(prefix),
                None => {
                    if let Some(watcher) = &mut this.watcher {
                        ready!(watcher.poll_ready(cx));
                    }
                    match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let (Some(data), Some(watcher)) =
                                (frame.data_ref(), &mut this.watcher)
                            {
                                watcher.update(data);
                            }
                            frame
                        }
                        Some(Err(err)) => {
                            // Failed: the watcher never has an end (a reader of it records
                            // nothing), and a poll after this finds the body over.
                            this.watcher = None;
                            (this.held, this.trailers, this.ended) = (None, None, true);
                            return Poll::Ready(Some(Err(err)));
                        }
                        None => {
                            this.ended = true;
                            continue;
                        }
                    }
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    if let Some(previous) = this.held.replace(data) {
                        return Poll::Ready(Some(Ok(Frame::data(previous))));
                    }
                }
                // Trailers end the body: the watcher has the end before anything held
                // goes out, and they follow it.
                Err(trailers) => {
                    this.trailers = trailers.into_trailers().ok();
                    this.ended = true;
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
        self.ended && self.watcher.is_none() && self.held.is_none() && self.trailers.is_none()
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
        let watcher = DigestWatcher::new(context, check);
        CheckedStream::new(Bytes::new(), origin_body(frames), Some(Box::new(watcher)))
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
