//! Plain requests served by hyper one at a time, the connection coming back to
//! `prepared_http1` after each: a keep-alive connection that carries a miss (or any request
//! without a prepared answer) goes on answering its later prepared hits without hyper,
//! instead of staying with hyper for the rest of its life as a connection does that hyper
//! serves whole (hyper cannot hand a connection back while it serves it).
//!
//! One hyper connection serves all of a client connection's plain requests, in turns. In a
//! turn it reads exactly one request's head, given to it whole; once the response is
//! written, its next read (for the next request, hyper being idle between requests) finds
//! nothing and the turn ends, hyper waiting for bytes that only the next turn gives it. It
//! is not polled between turns, while `prepared_http1` has the socket. Only heads whose
//! message is the head alone go this way (`prepared_http1`'s plain heads: no body, no
//! upgrade, no `Expect`, no `Connection: close`, HTTP/1.1), so what hyper reads is exactly
//! the bytes it was given and nothing of a later request is ever in hyper's buffer.
//!
//! # When the response is written
//! hyper drops a response's body as soon as it has taken its last frame (the request's
//! [`super::activity::InflightGuard`] goes with it), and flushes the socket only once its
//! own write buffer is empty. So the first flush that finds no request in flight, after
//! the turn's request has started, comes after the whole response is in the socket.
//!
//! While the response is made, the socket is still read, as hyper reads it itself: a
//! client that closes is seen (hyper then drops the request, as it would), and bytes that
//! arrive early (a pipelined request) are kept, up to a bound, for the next head.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::activity::ConnActivity;

/// How many bytes read ahead of the request being served are kept; past that the socket
/// is not read until the connection's next turn.
const READ_AHEAD_LIMIT: usize = 64 * 1024;

/// The client connection between `prepared_http1` and the hyper connection that serves its
/// plain requests: the socket is here during a turn.
pub(super) struct Turns<S> {
    shared: Arc<Mutex<Turn<S>>>,
}

/// The client connection as hyper sees it: its reads and writes go to the turn's socket.
pub(super) struct HyperSide<S> {
    shared: Arc<Mutex<Turn<S>>>,
}

struct Turn<S> {
    /// The socket, while a turn is on.
    io: Option<S>,
    /// The request's head, not yet given to hyper.
    head: Bytes,
    /// Bytes read from the socket after the head, in order, for the next head.
    read_ahead: BytesMut,
    activity: Arc<ConnActivity>,
    /// Requests started on the connection before this turn's.
    started_before: u64,
    /// The response is in the socket.
    is_answered: bool,
    /// hyper asked for the next request after the response: the turn is over.
    is_over: bool,
    /// The client closed its side (or the socket failed) while the request was served.
    client_closed: bool,
    /// hyper's read, waiting for the response to be written.
    reader: Option<Waker>,
}

/// What is left of the connection after a turn, when it may go on.
pub(super) struct Served<S> {
    pub io: S,
    /// Bytes read after the request's head (those read before it was handed over, then
    /// those read while it was served), not yet parsed.
    pub read_ahead: BytesMut,
}

impl<S> Turns<S> {
    pub(super) fn new(activity: Arc<ConnActivity>) -> Turns<S> {
        Turns {
            shared: Arc::new(Mutex::new(Turn {
                io: None,
                head: Bytes::new(),
                read_ahead: BytesMut::new(),
                activity,
                started_before: 0,
                is_answered: false,
                is_over: false,
                client_closed: false,
                reader: None,
            })),
        }
    }

    /// What hyper reads from and writes to.
    pub(super) fn hyper_side(&self) -> HyperSide<S> {
        HyperSide {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Starts a turn: hyper is to read `head` from `io`; `read_ahead` holds the bytes
    /// already read after it, which bytes read during the turn follow.
    pub(super) fn begin(&self, io: S, head: Bytes, read_ahead: BytesMut) {
        let mut turn = self.shared.lock();
        turn.started_before = turn.activity.requests_started();
        turn.io = Some(io);
        turn.head = head;
        turn.read_ahead = read_ahead;
        turn.is_answered = false;
        turn.is_over = false;
        turn.client_closed = false;
        turn.reader = None;
    }

    /// Whether hyper has answered the turn's request and asked for the next one.
    pub(super) fn is_over(&self) -> bool {
        self.shared.lock().is_over
    }

    /// Ends the turn: the connection, when hyper read all it was given and the client is
    /// still there.
    pub(super) fn end(&self) -> Option<Served<S>> {
        let mut turn = self.shared.lock();
        let io = turn.io.take()?;
        let read_ahead = std::mem::take(&mut turn.read_ahead);
        (turn.is_over && !turn.client_closed && turn.head.is_empty())
            .then_some(Served { io, read_ahead })
    }
}

impl<S> Turn<S> {
    fn response_written(&mut self) {
        let has_started = self.activity.requests_started() > self.started_before;
        if !self.is_answered && has_started && self.activity.is_between_requests() {
            self.is_answered = true;
            // hyper reads again, for the next request, and so ends the turn.
            if let Some(reader) = self.reader.take() {
                reader.wake();
            }
        }
    }
}

impl<S: AsyncRead + Unpin> Turn<S> {
    /// Reads what the socket has into `read_ahead`: pending when it has nothing (or the
    /// bound is reached), ready when the client closed or the socket failed.
    fn poll_socket(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Pending;
        };
        while self.read_ahead.len() < READ_AHEAD_LIMIT {
            // Room only when little is left: the buffer is usually the rest of the one the
            // head was read into.
            self.read_ahead.reserve(1024);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut self.read_ahead) {
                Poll::Ready(Ok(0)) => {
                    self.client_closed = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => {
                    self.client_closed = true;
                    return Poll::Ready(Err(err));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Pending
    }
}

/// The turn's socket, or an error if hyper writes between turns (it never does: it is
/// polled only during them).
fn socket<S>(io: &mut Option<S>) -> io::Result<&mut S> {
    io.as_mut()
        .ok_or_else(|| io::Error::other("hyper used the connection between turns"))
}

impl<S: AsyncRead + Unpin> AsyncRead for HyperSide<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut turn = self.shared.lock();
        if !turn.head.is_empty() {
            let take = turn.head.len().min(buf.remaining());
            buf.put_slice(&turn.head.split_to(take));
            return Poll::Ready(Ok(()));
        }
        if turn.is_answered {
            // Idle, asking for the next request: the next turn gives it.
            turn.is_over = true;
            return Poll::Pending;
        }
        turn.reader = Some(cx.waker().clone());
        // The end of the stream (nothing put in `buf`) or the socket's error, as hyper
        // would have read them itself.
        turn.poll_socket(cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HyperSide<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut turn = self.shared.lock();
        Pin::new(socket(&mut turn.io)?).poll_write(cx, data)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut turn = self.shared.lock();
        Pin::new(socket(&mut turn.io)?).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        // hyper asks once, as it is made, during the first turn.
        self.shared
            .lock()
            .io
            .as_ref()
            .is_none_or(|io| io.is_write_vectored())
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut turn = self.shared.lock();
        let flushed = Pin::new(socket(&mut turn.io)?).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            turn.response_written();
        }
        flushed
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut turn = self.shared.lock();
        Pin::new(socket(&mut turn.io)?).poll_shutdown(cx)
    }
}
