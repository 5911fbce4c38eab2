//! A Debian `Packages` index read for its `.deb` digests while it passes on to clients:
//! its chunks are decoded (gzip, xz or plain text) and its paragraphs read as they arrive,
//! in batches on the blocking pool, so neither the index nor its text (Debian's main
//! index: 10 MB of xz, 50 MB of text) is held whole, no runtime thread spends the second
//! it takes, and no thread waits on a slow body between batches. The digests are recorded
//! before the index's last chunk goes on ([`super::check`]), so a fill never stores an
//! index whose packages a crash would leave unchecked; a body that fails, or is given up,
//! records nothing.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::check::Watcher;
use super::debian::{NotRead, PackagesRecords};
use super::decode::{Coding, DecodingWriter};
use super::digests::DigestStore;
use crate::body::BoxError;

/// Bytes of chunks waiting while a batch is read: past them the body waits for the batch,
/// so what is queued stays within a few origin reads.
const QUEUED_MAX: usize = 1 << 20;

/// What reading an index needs besides its bytes.
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

/// The decoder and the paragraphs read so far, moved to the blocking pool for each batch.
type Decoding = Box<DecodingWriter<PackagesRecords>>;

enum Stage {
    /// Waiting for chunks.
    Idle(Decoding),
    /// A batch is being read.
    Reading(JoinHandle<Option<Decoding>>),
    /// The end is being read and the digests recorded.
    Concluding(JoinHandle<()>),
    /// Read to its end, or stopped early (the rest passes unread).
    Over,
}

/// Hands a body's chunks, in batches, to the blocking pool and, at the body's end, waits
/// for the digests to be recorded.
pub struct PackagesWatcher {
    reading: Arc<PackagesReading>,
    stage: Stage,
    queued: Vec<Bytes>,
    queued_len: usize,
}

impl PackagesWatcher {
    pub fn start(reading: PackagesReading) -> PackagesWatcher {
        let records = PackagesRecords::new(&reading.archive_root, reading.limit, reading.by_hash);
        let decoding = Box::new(DecodingWriter::new(reading.coding, records));
        PackagesWatcher {
            reading: Arc::new(reading),
            stage: Stage::Idle(decoding),
            queued: Vec::new(),
            queued_len: 0,
        }
    }

    /// Moves on from a finished batch, and starts the next one when chunks are waiting.
    fn poll_batches(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.stage {
                Stage::Reading(batch) => {
                    self.stage = match ready!(Pin::new(batch).poll(cx)) {
                        Ok(Some(decoding)) => Stage::Idle(decoding),
                        // Stopped (and said why), or the pool gave up on it.
                        Ok(None) | Err(_) => Stage::Over,
                    };
                }
                Stage::Idle(_) if !self.queued.is_empty() => {
                    if let Stage::Idle(decoding) = std::mem::replace(&mut self.stage, Stage::Over) {
                        let batch = std::mem::take(&mut self.queued);
                        self.queued_len = 0;
                        let reading = Arc::clone(&self.reading);
                        self.stage = Stage::Reading(tokio::task::spawn_blocking(move || {
                            reading.read_batch(decoding, batch)
                        }));
                    }
                }
                Stage::Over => {
                    self.queued.clear();
                    self.queued_len = 0;
                    return Poll::Ready(());
                }
                Stage::Idle(_) | Stage::Concluding(_) => return Poll::Ready(()),
            }
        }
    }
}

impl Watcher for PackagesWatcher {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Pending only while a batch is read: then chunks queue up to the limit.
        if self.poll_batches(cx).is_pending() && self.queued_len >= QUEUED_MAX {
            return Poll::Pending;
        }
        Poll::Ready(())
    }

    fn update(&mut self, data: &Bytes) {
        if matches!(self.stage, Stage::Over) || data.is_empty() {
            return;
        }
        self.queued_len += data.len();
        self.queued.push(data.clone());
    }

    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            ready!(self.poll_batches(cx));
            match &mut self.stage {
                // Whatever was made of the index, it goes on as it came: once read.
                Stage::Over => return Poll::Ready(Ok(())),
                // Waited for by `poll_batches`.
                Stage::Reading(_) => {}
                Stage::Concluding(end) => {
                    let _ = ready!(Pin::new(end).poll(cx));
                    self.stage = Stage::Over;
                }
                Stage::Idle(_) => {
                    if let Stage::Idle(decoding) = std::mem::replace(&mut self.stage, Stage::Over) {
                        let reading = Arc::clone(&self.reading);
                        self.stage = Stage::Concluding(tokio::task::spawn_blocking(move || {
                            reading.conclude(decoding)
                        }));
                    }
                }
            }
        }
    }
}

impl PackagesReading {
    /// On the blocking pool: `batch` decoded and its whole paragraphs read; `None` once
    /// the index stopped being read (and why was said).
    fn read_batch(&self, mut decoding: Decoding, batch: Vec<Bytes>) -> Option<Decoding> {
        for chunk in batch {
            if let Err(err) = decoding.write_all(&chunk) {
                self.stopped(&mut decoding, &err);
                return None;
            }
        }
        Some(decoding)
    }

    /// On the blocking pool, once the body has ended cleanly: the end decoded and the
    /// index's digests recorded.
    fn conclude(&self, mut decoding: Decoding) {
        if let Err(err) = decoding.try_finish() {
            self.stopped(&mut decoding, &err);
            return;
        }
        let Some(text) = decoding.get_mut() else {
            return;
        };
        match text.finish() {
            Ok(records) => self.digests.put_all(records),
            Err(reason) => self.not_read(reason),
        }
    }

    /// Says why the index was not read, when that is worth the operator's attention.
    fn stopped(&self, decoding: &mut Decoding, err: &std::io::Error) {
        match decoding.get_mut().and_then(|text| text.stopped()) {
            Some(reason) => self.not_read(reason),
            // It does not decode (truncated, damaged): a `Packages` index, or a `by-hash`
            // file that may be one, left unchecked.
            None => {
                tracing::warn!(registry = %self.registry, error = %err, "Packages index does not decode: its packages go unchecked")
            }
        }
    }

    fn not_read(&self, reason: NotRead) {
        match reason {
            NotRead::OtherIndex => {}
            NotRead::PastTheLimit => {
                tracing::warn!(registry = %self.registry, limit = self.limit, "Packages index not decoded within mirror.rewrite_max: its packages go unchecked")
            }
            NotRead::NotText => {
                tracing::warn!(registry = %self.registry, "Packages index not understood (not UTF-8): its packages go unchecked")
            }
            NotRead::ParagraphTooLong => {
                tracing::warn!(registry = %self.registry, "Packages index not understood (a paragraph over 1 MiB): its packages go unchecked")
            }
        }
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
            limit: 64 << 20,
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

    /// Chunks queue while a batch is read and go in the next batch, in order: an xz index
    /// of 1.5 MB of text in thousands of uneven chunks reads as the whole text does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_keep_the_chunks_in_order() {
        use std::io::Write;
        let text: String = (0..20_000)
            .map(|i| format!("Package: p{i}\nDescription: d\n more\nFilename: pool/p{i}.deb\nSHA256: {HEX}\n\n"))
            .collect();
        let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 1);
        encoder.write_all(text.as_bytes()).unwrap();
        let coded = Bytes::from(encoder.finish().unwrap());
        let mut frames = Vec::new();
        let mut at = 0;
        for size in [1, 7, 300, 4096, 65536].into_iter().cycle() {
            if at == coded.len() {
                break;
            }
            let end = (at + size).min(coded.len());
            frames.push(Ok(Frame::data(coded.slice(at..end))));
            at = end;
        }
        let digests = Arc::new(DigestStore::new(None));
        let collected = watched(frames, &digests).collect().await.unwrap();
        assert_eq!(collected.to_bytes(), coded);
        for i in [0, 9_999, 19_999] {
            let path = format!("/debian/pool/p{i}.deb");
            assert!(digests.expected(&path).is_some(), "{path}");
        }
    }
}
