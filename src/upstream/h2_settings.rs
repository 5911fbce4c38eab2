//! What an HTTP/2 origin server allows: its SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113
//! §6.5.2), read from the frames it sends, since hyper does not say. A connection's
//! stream places ([`StreamPlaces`]) follow it, so that a server allowing fewer streams than
//! `upstream.max_streams_per_connection` gets a further connection instead of requests
//! queueing on a full one.
//!
//! [`SettingsWatch`] wraps the connection's byte stream (under TLS, the decrypted one) and
//! walks the frame headers of what is read: payloads are skipped but for SETTINGS frames,
//! whose entries are parsed (§6.5.1). Frames are checked by hyper's own h2 as usual; this
//! only looks.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

/// Frame type of SETTINGS (RFC 9113 §6.5), its ACK flag, and the identifier of
/// SETTINGS_MAX_CONCURRENT_STREAMS.
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// The places for streams on one connection: `configured` at first, then as many as the
/// server allows, if fewer.
pub struct StreamPlaces {
    pub semaphore: Arc<Semaphore>,
    configured: usize,
    /// What the places add up to now, held ones included.
    capacity: Mutex<usize>,
}

impl StreamPlaces {
    pub fn new(configured: usize) -> Arc<StreamPlaces> {
        Arc::new(StreamPlaces {
            semaphore: Arc::new(Semaphore::new(configured)),
            configured,
            capacity: Mutex::new(configured),
        })
    }

    /// Whether no stream holds a place.
    pub fn is_idle(&self) -> bool {
        self.semaphore.available_permits() >= *self.capacity.lock()
    }

    /// The server's limit is now `allowed`. 0 is taken as 1: a server that allows no
    /// stream for a while is still this connection's to wait on, not a reason to open
    /// connection after connection.
    fn server_allows(&self, allowed: u32) {
        let wanted = self
            .configured
            .min(usize::try_from(allowed).unwrap_or(usize::MAX))
            .max(1);
        let mut capacity = self.capacity.lock();
        if wanted < *capacity {
            let fewer = *capacity - wanted;
            let held = fewer - self.semaphore.forget_permits(fewer);
            // Places held by streams now: taken out of use as those streams end (ahead of
            // any request waiting for a place).
            if let (Ok(held), Ok(runtime)) =
                (u32::try_from(held), tokio::runtime::Handle::try_current())
            {
                if held > 0 {
                    let semaphore = Arc::clone(&self.semaphore);
                    runtime.spawn(async move {
                        if let Ok(places) = semaphore.acquire_many_owned(held).await {
                            places.forget();
                        }
                    });
                }
            }
        } else if wanted > *capacity {
            self.semaphore.add_permits(wanted - *capacity);
        }
        *capacity = wanted;
    }
}

/// Where the walk through the frames read is.
#[derive(Default)]
struct FrameWalker {
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    /// Whether the current frame is a SETTINGS frame to parse (not an ACK).
    in_settings: bool,
    entry: [u8; 6],
    entry_len: usize,
}

impl FrameWalker {
    /// Walks `bytes`, the next read from the server; calls `on_limit` with each
    /// SETTINGS_MAX_CONCURRENT_STREAMS value met.
    fn walk(&mut self, mut bytes: &[u8], on_limit: &mut impl FnMut(u32)) {
        while !bytes.is_empty() {
            if self.remaining == 0 && self.header_len < 9 {
                let take = (9 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len == 9 {
                    let length =
                        u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
                    self.remaining = length as usize;
                    self.in_settings = self.header[3] == SETTINGS && self.header[4] & ACK == 0;
                    self.entry_len = 0;
                    if self.remaining == 0 {
                        self.header_len = 0;
                    }
                }
                continue;
            }
            let take = self.remaining.min(bytes.len());
            if self.in_settings {
                for &byte in &bytes[..take] {
                    self.entry[self.entry_len] = byte;
                    self.entry_len += 1;
                    if self.entry_len == 6 {
                        self.entry_len = 0;
                        let id = u16::from_be_bytes([self.entry[0], self.entry[1]]);
                        if id == MAX_CONCURRENT_STREAMS {
                            let [_, _, a, b, c, d] = self.entry;
                            on_limit(u32::from_be_bytes([a, b, c, d]));
                        }
                    }
                }
            }
            self.remaining -= take;
            bytes = &bytes[take..];
            if self.remaining == 0 {
                self.header_len = 0;
            }
        }
    }
}

/// A connection's byte stream, watched for the server's stream limit.
pub struct SettingsWatch<T> {
    inner: T,
    walker: FrameWalker,
    places: std::sync::Weak<StreamPlaces>,
}

impl<T> SettingsWatch<T> {
    pub fn new(inner: T, places: &Arc<StreamPlaces>) -> SettingsWatch<T> {
        SettingsWatch {
            inner,
            walker: FrameWalker::default(),
            places: Arc::downgrade(places),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SettingsWatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let places = &this.places;
            this.walker.walk(&buf.filled()[before..], &mut |allowed| {
                if let Some(places) = places.upgrade() {
                    places.server_allows(allowed);
                }
            });
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SettingsWatch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let payload: Vec<u8> = entries
            .iter()
            .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
            .collect();
        frame(SETTINGS, 0, 0, &payload)
    }

    /// Every limit in the server's SETTINGS frames is found however the bytes are split
    /// across reads; an ACK, and bytes inside other frames' payloads that look like a
    /// SETTINGS frame, are not.
    #[test]
    fn the_limit_is_found_in_settings_frames_only() {
        let mut stream = settings(&[(0x4, 65_535), (MAX_CONCURRENT_STREAMS, 2), (0x5, 16_384)]);
        stream.extend(frame(SETTINGS, ACK, 0, &[]));
        // A DATA frame whose payload is a SETTINGS frame naming 7.
        stream.extend(frame(0x0, 0, 1, &settings(&[(MAX_CONCURRENT_STREAMS, 7)])));
        stream.extend(frame(0x1, 0x4, 1, b"header block"));
        stream.extend(settings(&[(MAX_CONCURRENT_STREAMS, 50)]));
        for split in [1, 2, 5, 9, 13, stream.len()] {
            let mut walker = FrameWalker::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(split) {
                walker.walk(chunk, &mut |limit| seen.push(limit));
            }
            assert_eq!(seen, vec![2, 50], "reads of {split} bytes");
        }
    }

    /// A lower limit takes free places out of use at once and held ones as they are given
    /// back; a higher one (up to the configured number) gives places back.
    #[tokio::test]
    async fn places_follow_the_servers_limit() {
        let places = StreamPlaces::new(4);
        let held: Vec<_> = (0..3)
            .map(|_| Arc::clone(&places.semaphore).try_acquire_owned().unwrap())
            .collect();
        places.server_allows(2);
        assert_eq!(places.semaphore.available_permits(), 0);
        drop(held);
        tokio::task::yield_now().await;
        // One owed place went with the streams' end: two for new streams.
        let again: Vec<_> = (0..2)
            .map(|_| Arc::clone(&places.semaphore).try_acquire_owned().unwrap())
            .collect();
        assert!(Arc::clone(&places.semaphore).try_acquire_owned().is_err());
        assert!(!places.is_idle());
        drop(again);
        assert!(places.is_idle());
        places.server_allows(1000);
        assert_eq!(
            places.semaphore.available_permits(),
            4,
            "never past the configured 4"
        );
        places.server_allows(0);
        assert_eq!(
            places.semaphore.available_permits(),
            1,
            "none is taken as one"
        );
    }
}
