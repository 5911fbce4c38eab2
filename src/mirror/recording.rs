//! A Debian `Packages` index read for its `.deb` digests while it passes on to clients: a
//! blocking thread decodes it (gzip, xz or plain text) and reads each paragraph as it
//! arrives, so neither the index nor its decoded text (Debian's main index: 10 MB of xz,
//! 50 MB of text) is held whole, and no runtime thread spends the second it takes. The
//! digests are recorded before the index's last chunk goes on ([`super::check`]), so a fill
//! never stores an index whose packages a crash would leave unchecked; a body that fails,
//! or is given up, records nothing.

use std::future::Future;
use std::io::{BufRead, Read};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::check::Watcher;
use super::debian::{NotRead, PackagesRecords};
use super::decode::{self, Coding};
use super::digests::DigestStore;
use crate::body::BoxError;

/// Chunks waiting for the reading thread: the body waits for it beyond these, so what is
/// queued stays within a few origin reads.
const QUEUED_CHUNKS: usize = 4;

/// What the reading thread needs, owned.
pub struct PackagesReading {
    pub coding: Coding,
    /// A `by-hash` file: read only if its text starts like a `Packages` index.
    pub by_hash: bool,
    /// The most text it may decode to (`mirror.rewrite_max`).
    pub limit: u64,
    pub archive_root: String,
    pub registry: String,
    pub digests: Arc<DigestStore>,
}

enum Feed {
    Chunk(Bytes),
    /// The body ended cleanly: what was read is the whole index.
    End,
}

/// Feeds a body's chunks to the reading thread and, at the body's end, waits for the
/// digests to be recorded.
pub struct PackagesWatcher {
    /// `None` once the end was sent, or the thread stopped reading.
    feed: Option<PollSender<Feed>>,
    reading: tokio::task::JoinHandle<()>,
}

impl PackagesWatcher {
    pub fn start(reading: PackagesReading) -> PackagesWatcher {
        let (sender, receiver) = mpsc::channel(QUEUED_CHUNKS);
        let reading = tokio::task::spawn_blocking(move || reading.run(receiver));
        PackagesWatcher {
            feed: Some(PollSender::new(sender)),
            reading,
        }
    }
}

impl Watcher for PackagesWatcher {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(feed) = &mut self.feed {
            if std::task::ready!(feed.poll_reserve(cx)).is_err() {
                // The thread stopped reading: the rest passes unread.
                self.feed = None;
            }
        }
        Poll::Ready(())
    }

    fn update(&mut self, data: &Bytes) {
        if let Some(feed) = &mut self.feed {
            if feed.send_item(Feed::Chunk(data.clone())).is_err() {
                self.feed = None;
            }
        }
    }

    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Some(feed) = &mut self.feed {
            // A thread that stopped reading has nothing to record: no end to send it.
            if std::task::ready!(feed.poll_reserve(cx)).is_ok() {
                let _ = feed.send_item(Feed::End);
            }
            self.feed = None;
        }
        // Whatever the thread made of the index, the index goes on as it came: only when
        // it is done.
        let _ = std::task::ready!(std::pin::Pin::new(&mut self.reading).poll(cx));
        Poll::Ready(Ok(()))
    }
}

impl PackagesReading {
    /// On the blocking thread: reads the index as its chunks come and records its digests
    /// once it has ended cleanly.
    fn run(self, receiver: mpsc::Receiver<Feed>) {
        let mut text = PackagesRecords::new(&self.archive_root, self.limit, self.by_hash);
        let mut chunks = Chunks {
            receiver,
            current: Bytes::new(),
            ended: false,
        };
        let decoded = decode::decode_stream(self.coding, &mut chunks, &mut text);
        // Stopped early, the body must not wait on a queue nobody reads: this tells it.
        drop(chunks);
        let outcome = match (decoded, text.stopped()) {
            (_, Some(reason)) => Err(reason),
            (Ok(()), None) => text.finish(),
            (Err(err), None) if err.kind() == std::io::ErrorKind::BrokenPipe => return,
            // It does not decode: a `Packages` index left unchecked when it is one, or may
            // be (nothing decoded to say otherwise).
            (Err(_), None) if text.confirmed() || !self.by_hash => {
                tracing::warn!(registry = %self.registry, "Packages index does not decode: its packages go unchecked");
                return;
            }
            (Err(_), None) => Err(NotRead::OtherIndex),
        };
        match outcome {
            Ok(records) => self.digests.put_all(records),
            Err(NotRead::OtherIndex) => {}
            Err(NotRead::PastTheLimit) => {
                tracing::warn!(registry = %self.registry, limit = self.limit, "Packages index not decoded within mirror.rewrite_max: its packages go unchecked")
            }
            Err(NotRead::NotText) => {
                tracing::warn!(registry = %self.registry, "Packages index not understood (not UTF-8): its packages go unchecked")
            }
        }
    }
}

/// The body's chunks as the decoders read them; a body that stops before its end reads as
/// a broken pipe.
struct Chunks {
    receiver: mpsc::Receiver<Feed>,
    current: Bytes,
    ended: bool,
}

impl Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let taken = available.len().min(out.len());
        out[..taken].copy_from_slice(&available[..taken]);
        self.consume(taken);
        Ok(taken)
    }
}

impl BufRead for Chunks {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() && !self.ended {
            match self.receiver.blocking_recv() {
                Some(Feed::Chunk(chunk)) => self.current = chunk,
                Some(Feed::End) => self.ended = true,
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the index's body ended before its end",
                    ))
                }
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, taken: usize) {
        self.current.advance(taken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::check::CheckedStream;
    use crate::upstream::OriginBody;
    use http_body::Frame;
    use http_body_util::BodyExt;

    const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn origin_body(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> OriginBody {
        OriginBody::checked(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    fn watched(
        frames: Vec<Result<Frame<Bytes>, BoxError>>,
        digests: &Arc<DigestStore>,
    ) -> CheckedStream {
        reading(origin_body(frames), digests)
    }

    fn reading(body: OriginBody, digests: &Arc<DigestStore>) -> CheckedStream {
        let watcher = PackagesWatcher::start(PackagesReading {
            coding: Coding::Sniffed,
            by_hash: false,
            limit: 1 << 20,
            archive_root: "/debian/".into(),
            registry: "debian".into(),
            digests: Arc::clone(digests),
        });
        CheckedStream::new(Bytes::new(), body, Some(Box::new(watcher)))
    }

    fn chunk(text: String) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from(text)))
    }

    /// The digests are in the store before the index's last byte goes on: a fill that
    /// stores the index has them (and a crash after cannot leave it unchecked).
    #[tokio::test]
    async fn digests_are_recorded_before_the_last_chunk_goes_on() {
        let digests = Arc::new(DigestStore::new(None));
        let last = format!("age: b\nFilename: pool/b.deb\nSHA256: {HEX}\n");
        let frames = vec![
            chunk(format!(
                "Package: a\nFilename: pool/a.deb\nSHA256: {HEX}\n\nPack"
            )),
            chunk(last.clone()),
        ];
        let mut body = watched(frames, &digests);
        let mut last_seen = false;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            if data == last.as_bytes() {
                assert!(digests.expected("/debian/pool/b.deb").is_some());
                last_seen = true;
            }
        }
        assert!(last_seen);
        assert!(digests.expected("/debian/pool/a.deb").is_some());
        assert!(digests.expected("/debian/pool/b.deb").is_some());
    }

    /// A body that fails before its end records nothing: its end was never seen, so what
    /// it listed may be cut short or forged by whatever broke it.
    #[tokio::test]
    async fn a_body_that_fails_records_nothing() {
        let digests = Arc::new(DigestStore::new(None));
        let frames = vec![
            chunk(format!(
                "Package: a\nFilename: pool/a.deb\nSHA256: {HEX}\n\n"
            )),
            Err("origin reset".into()),
        ];
        let mut body = watched(frames, &digests);
        let failed = loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => break err,
                None => panic!("ended cleanly"),
            }
        };
        assert!(failed.to_string().contains("reset"));
        drop(body);
        assert!(digests.expected("/debian/pool/a.deb").is_none());
    }

    /// A `by-hash` index too large to hold is checked against its name's digest as it
    /// streams, inside the reading of its paragraphs: when the digest does not match, the
    /// paragraphs it listed are not recorded.
    #[tokio::test]
    async fn an_index_failing_its_own_digest_records_nothing() {
        use crate::mirror::check::{Check, DigestWatcher};
        use crate::mirror::digests::{Algorithm, Expected};
        let digests = Arc::new(DigestStore::new(None));
        let first = format!("Package: a\nFilename: pool/a.deb\nSHA256: {HEX}\n\n");
        let expected = Expected::from_hex(Algorithm::Sha256, HEX).unwrap();
        let check = Check {
            expected: expected.clone(),
            registry: "debian".into(),
            stats: Arc::default(),
        };
        let digest_checked = CheckedStream::new(
            Bytes::new(),
            // The first chunk goes on (to be read) before the end shows the mismatch.
            origin_body(vec![chunk(first), chunk("Package: b\n".into())]),
            Some(Box::new(DigestWatcher::new(expected.context(), check))),
        );
        let mut body = reading(OriginBody::checked(digest_checked), &digests);
        let mut failed = false;
        while let Some(frame) = body.frame().await {
            failed |= frame.is_err();
        }
        assert!(failed, "the mismatch ends the body as an error");
        assert!(digests.expected("/debian/pool/a.deb").is_none());
    }
}
