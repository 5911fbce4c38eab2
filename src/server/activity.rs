//! Per-connection activity watchdog: enforces the request-head timeout (slowloris) and the
//! keep-alive idle timeout from what the connection is doing, which hyper does not expose.
//!
//! A connection is *busy* while a request is in flight, *reading a head* once bytes arrive
//! while it is not busy (HTTP/1 only: on HTTP/2 idle connections carry pings and settings
//! that are not requests), and *idle* otherwise. Fresh connections start out reading a head,
//! so a client that connects and says nothing is cut off after the head timeout.
//!
//! A busy connection is cut when a write to the client has been blocked for the send
//! timeout (nginx's `send_timeout`): a client that stops reading would otherwise hold its
//! connection slot, its buffers and a fill's reader forever. Waiting for the origin is not
//! blocked writing, so a slow origin never trips it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::sendfile::{is_placeholder, SendfileLink, SendfileSocket};
use crate::pipeline::interim::InterimLink;

/// Why the watchdog wants the connection to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A request head did not arrive in time: drop without answering.
    HeaderTimeout,
    /// Nothing in flight for the idle timeout: close gracefully.
    Idle,
    /// The server is shutting down: close gracefully.
    Shutdown,
    /// The client read nothing of a response for the send timeout: drop the connection
    /// (the response cannot end cleanly).
    SendTimeout,
}

/// The watchdog's limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub send: Duration,
}

/// Shared between the connection's I/O, its service and its watchdog. Times are whole
/// milliseconds since the connection was accepted; `head_started_at` stores time + 1 so
/// that 0 means "no head in progress".
pub struct ConnActivity {
    epoch: Instant,
    /// Set by the head scanner when the head being read had both Content-Length and
    /// Transfer-Encoding; taken by the next request.
    framing_conflict: AtomicBool,
    inflight: AtomicUsize,
    /// Requests started on the connection so far.
    started: AtomicU64,
    is_h2: AtomicBool,
    head_started_at: AtomicU64,
    idle_since: AtomicU64,
    /// When a write to the client last found the socket full (time + 1; 0: not blocked).
    write_blocked_at: AtomicU64,
}

impl ConnActivity {
    pub fn new() -> ConnActivity {
        ConnActivity {
            epoch: Instant::now(),
            framing_conflict: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            is_h2: AtomicBool::new(false),
            head_started_at: AtomicU64::new(1),
            idle_since: AtomicU64::new(0),
            write_blocked_at: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived. Returns whether they may begin a new HTTP/1 request head.
    fn bytes_read(&self) -> bool {
        let is_between_requests = self.inflight.load(Relaxed) == 0 && !self.is_h2.load(Relaxed);
        if is_between_requests && self.head_started_at.load(Relaxed) == 0 {
            self.head_started_at.store(self.now_ms() + 1, Relaxed);
        }
        is_between_requests
    }

    /// How many requests have started on the connection.
    pub fn requests_started(&self) -> u64 {
        self.started.load(Relaxed)
    }

    /// Whether no request is in flight: every one started has had its response body
    /// taken whole (or was abandoned).
    pub fn is_between_requests(&self) -> bool {
        self.inflight.load(Relaxed) == 0
    }

    /// Whether the head of the request now starting carried both Content-Length and
    /// Transfer-Encoding (hyper drops the Content-Length before we see the request).
    pub fn take_framing_conflict(&self) -> bool {
        self.framing_conflict.swap(false, Relaxed)
    }

    /// A write to the client was pending (the socket is full) or made progress.
    fn write_polled<T>(&self, polled: &Poll<T>) {
        match polled {
            Poll::Pending => {
                if self.write_blocked_at.load(Relaxed) == 0 {
                    self.write_blocked_at.store(self.now_ms() + 1, Relaxed);
                }
            }
            Poll::Ready(_) => self.write_blocked_at.store(0, Relaxed),
        }
    }

    /// A request head has been parsed; the returned guard marks the request finished when
    /// dropped (after its response body, or when the request is abandoned).
    pub fn request_started(self: &Arc<Self>, is_h2: bool) -> InflightGuard {
        self.inflight.fetch_add(1, Relaxed);
        self.started.fetch_add(1, Relaxed);
        self.head_started_at.store(0, Relaxed);
        if is_h2 {
            self.is_h2.store(true, Relaxed);
        }
        InflightGuard(Arc::clone(self))
    }

    /// Resolves when the connection should end for want of activity. Deadlines are checked
    /// when they fall due, so an idle connection closes within one idle period of its last
    /// response, or at most two when that response finished while the watchdog slept; a
    /// connection whose writes block is cut within two send timeouts.
    pub async fn watch(&self, timeouts: Timeouts) -> Ending {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (header_ms, idle_ms, send_ms) = (
            millis(timeouts.header_read),
            millis(timeouts.idle),
            millis(timeouts.send),
        );
        // The blocked write whose deadline has passed once: it is cut only if it is still
        // blocked after the runtime has had another turn (see below).
        let mut overdue_write = 0;
        loop {
            let now = self.now_ms();
            // Checked whatever the request state: hyper may still be writing a response
            // whose body it has taken whole (a stored body is one chunk).
            let send_deadline = match self.write_blocked_at.load(Relaxed) {
                0 => now.saturating_add(send_ms),
                blocked => {
                    let deadline = (blocked - 1).saturating_add(send_ms);
                    if now >= deadline {
                        if overdue_write == blocked {
                            return Ending::SendTimeout;
                        }
                        // When our own process stalled (CPU starvation, a paused VM), the
                        // deadline and the client's reads fall due in the same turn. One
                        // yield lets the client's socket events be handled and the
                        // connection write again, so only a client that still reads
                        // nothing is blamed.
                        overdue_write = blocked;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    deadline
                }
            };
            let wake_at = if self.inflight.load(Relaxed) > 0 {
                now.saturating_add(idle_ms)
            } else {
                let head = self.head_started_at.load(Relaxed);
                let (deadline, ending) = if head != 0 {
                    (head - 1 + header_ms, Ending::HeaderTimeout)
                } else {
                    (
                        self.idle_since.load(Relaxed).saturating_add(idle_ms),
                        Ending::Idle,
                    )
                };
                if now >= deadline {
                    return ending;
                }
                deadline
            };
            let wake_at = wake_at.min(send_deadline);
            tokio::time::sleep_until(self.epoch + Duration::from_millis(wake_at)).await;
        }
    }
}

/// Marks one request finished when dropped.
pub struct InflightGuard(Arc<ConnActivity>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.inflight.fetch_sub(1, Relaxed) == 1 {
            // A pipelined head read while busy is parsed by hyper at once (and calls
            // `request_started`), so only the idle clock needs starting here.
            activity.idle_since.store(activity.now_ms(), Relaxed);
        }
    }
}

/// The client socket, reporting reads to the watchdog and scanning HTTP/1 request heads;
/// it also writes the interim responses queued on `interim` (see [`InterimLink`]).
pub struct WatchedIo<S> {
    inner: S,
    activity: Arc<ConnActivity>,
    scanner: HeadScanner,
    /// Off while `prepared_http1` reads heads: those it answers are parsed whole there,
    /// and the bytes it hands on are scanned then ([`WatchedIo::scan_handed_over`]).
    is_scanning: bool,
    interim: Arc<InterimLink>,
    /// Interim heads taken from the link and partly written: finished before anything else.
    outbox: Vec<u8>,
    outbox_written: usize,
    /// Where stand-in body bytes find the file they stand for (see [`super::sendfile`]).
    sendfile: Option<Arc<SendfileLink>>,
    /// Set once a request line was too long (see [`HeadScanner`]): the 414 is written in
    /// the outbox, and reads then only drain the connection.
    refusal: Option<Refusal>,
}

/// How far the refusal of an over-long request line has gone.
#[derive(Clone, Copy)]
enum Refusal {
    /// The answer is in the outbox.
    Writing,
    ShuttingDown,
    /// What the client still sends is read and dropped (this many bytes so far), so that
    /// the close does not reset the connection under the answer.
    Draining(usize),
}

/// Bytes drained after a refusal before the connection is given up.
const REFUSAL_DRAIN_BYTES: usize = 1 << 20;

impl<S> WatchedIo<S> {
    pub fn new(
        inner: S,
        activity: Arc<ConnActivity>,
        interim: Arc<InterimLink>,
        sendfile: Option<Arc<SendfileLink>>,
    ) -> Self {
        WatchedIo {
            inner,
            activity,
            scanner: HeadScanner::default(),
            is_scanning: true,
            interim,
            outbox: Vec::new(),
            outbox_written: 0,
            sendfile,
            refusal: None,
        }
    }

    /// Request lines longer than `limit` bytes are refused with 414 here, before hyper
    /// would refuse them with 431 (see [`super::refusals`]).
    pub fn refuse_request_lines_over(&mut self, limit: usize) {
        self.scanner.request_line_limit = limit;
    }

    /// Reads from now on are not scanned for framing conflicts (see [`Self::is_scanning`]).
    pub fn pause_scanning(&mut self) {
        self.is_scanning = false;
    }

    /// Scans `read` (bytes read while paused, not yet served, beginning a request head) as
    /// if just read, and every read from now on.
    pub fn scan_handed_over(&mut self, read: &[u8]) {
        self.is_scanning = true;
        if !read.is_empty() && self.scanner.scan(read, true) {
            self.activity.framing_conflict.store(true, Relaxed);
        }
    }
}

impl<S: AsyncWrite + SendfileSocket + Unpin> WatchedIo<S> {
    /// Writes `bufs` up to the first stand-in slice, or from the file the stand-in slice
    /// at their head stands for; `None` when there is no stand-in among them.
    fn poll_write_with_files(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Option<Poll<std::io::Result<usize>>> {
        let first = bufs.iter().position(|buf| is_placeholder(buf))?;
        let (Some(link), Some(socket)) = (&self.sendfile, self.inner.tcp()) else {
            return Some(Poll::Ready(Err(std::io::Error::other(
                "sendfile stand-in bytes on a connection without sendfile",
            ))));
        };
        if first == 0 {
            return Some(link.poll_send(cx, socket, bufs[0].len()));
        }
        // The head goes out in a packet of its own, as nginx sends it, not held back
        // (MSG_MORE) to share the file's first packet: on a host that paces TCP in software
        // (BBR without the fq qdisc) the shared packet set off about 0.3 pacing timers per
        // 100 KiB hit and cost about 4% of its CPU (issue 17's note); on a real network one
        // more packet per file-sized body is noise.
        Some(Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..first]))
    }
}

impl<S: AsyncWrite + Unpin> WatchedIo<S> {
    /// Before hyper writes: queued interim heads go first when hyper starts writing after a
    /// completed flush (a new response, or a 100 Continue), and a half-written one is
    /// finished.
    fn poll_interim_before_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.interim.is_hyper_writing() {
            if let Some(queued) = self.interim.take_queued() {
                self.outbox.extend_from_slice(&queued);
            }
            self.interim.set_hyper_writing(true);
        }
        self.poll_outbox(cx)
    }

    /// Writes what is left of the outbox; ready once it is empty.
    fn poll_outbox(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.outbox_written < self.outbox.len() {
            let rest = &self.outbox[self.outbox_written..];
            let polled = Pin::new(&mut self.inner).poll_write(cx, rest);
            self.activity.write_polled(&polled);
            match polled {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(written)) => self.outbox_written += written,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !self.outbox.is_empty() {
            self.outbox.clear();
            self.outbox_written = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// Finds request heads carrying both `Content-Length` and `Transfer-Encoding` (RFC 9112
/// §6.3, the request-smuggling pattern). hyper resolves that case by ignoring the length,
/// which is allowed, but we refuse such requests outright and must see the raw head to know.
///
/// It scans only from the first byte that arrives between requests up to the blank line
/// ending the head, a few hundred bytes per request; pipelined heads that arrive while a
/// request is in flight are not scanned (hyper still handles them safely). A connection
/// that opens with the HTTP/2 preface is never scanned.
#[derive(Default)]
struct HeadScanner {
    is_in_head: bool,
    is_disabled: bool,
    is_first_read: bool,
    /// Lower-cased start of the current line (enough for the longest name we look for).
    line: [u8; 18],
    line_len: usize,
    /// The current line may name a framing field or end the head: only then is its start
    /// kept (most lines are neither, and copying each cost a tenth of a small hit's work).
    is_line_kept: bool,
    saw_content_length: bool,
    saw_transfer_encoding: bool,
    /// The current line is the head's first (its request line).
    is_request_line: bool,
    /// Longer request lines are refused (0: none is).
    request_line_limit: usize,
    /// A request line was longer than the limit.
    saw_request_line_too_long: bool,
}

impl HeadScanner {
    const CONTENT_LENGTH: &'static [u8] = b"content-length:";
    const TRANSFER_ENCODING: &'static [u8] = b"transfer-encoding:";

    /// Scans `bytes`; returns true when a head ended with both fields present.
    fn scan(&mut self, bytes: &[u8], may_start_head: bool) -> bool {
        if !self.is_first_read {
            self.is_first_read = true;
            self.is_disabled = bytes.starts_with(b"PRI ");
        }
        if self.is_disabled || (!self.is_in_head && !may_start_head) {
            return false;
        }
        if !self.is_in_head {
            *self = HeadScanner {
                is_in_head: true,
                is_first_read: true,
                is_request_line: true,
                request_line_limit: self.request_line_limit,
                ..HeadScanner::default()
            };
        }
        // Line by line: only a line's first bytes are kept, and its name is judged once the
        // line ends (a line split across reads is judged when its end arrives).
        let mut rest = bytes;
        while !rest.is_empty() {
            let (text, line_ends) = match memchr::memchr(b'\n', rest) {
                Some(end) => (&rest[..end], Some(end)),
                None => (rest, None),
            };
            if self.line_len == 0 {
                self.is_line_kept =
                    matches!(text.first(), None | Some(b'c' | b'C' | b't' | b'T' | b'\r'));
            }
            if self.is_line_kept {
                let (capacity, filled) = (self.line.len(), self.line_len.min(self.line.len()));
                let room = capacity - filled;
                for (slot, byte) in self.line[filled..]
                    .iter_mut()
                    .zip(&text[..text.len().min(room)])
                {
                    *slot = byte.to_ascii_lowercase();
                }
            }
            self.line_len += text.len();
            if self.is_request_line && self.request_line_limit > 0 {
                self.saw_request_line_too_long |= self.line_len >= self.request_line_limit;
            }
            let Some(end) = line_ends else { break };
            self.is_request_line = false;
            rest = &rest[end + 1..];
            let is_blank = self.line_len == 0
                || (self.line_len == 1 && self.is_line_kept && self.line[0] == b'\r');
            if self.is_line_kept {
                let kept = &self.line[..self.line_len.min(self.line.len())];
                self.saw_content_length |= kept.starts_with(Self::CONTENT_LENGTH);
                self.saw_transfer_encoding |= kept.starts_with(Self::TRANSFER_ENCODING);
            }
            self.line_len = 0;
            if is_blank {
                self.is_in_head = false;
                return self.saw_content_length && self.saw_transfer_encoding;
            }
        }
        false
    }
}

impl<S: AsyncRead + AsyncWrite + SendfileSocket + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.refusal.is_some() {
            return this.poll_refusal(cx);
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let may_start_head = this.activity.bytes_read();
            if this.is_scanning && this.scanner.scan(&buf.filled()[before..], may_start_head) {
                this.activity.framing_conflict.store(true, Relaxed);
            }
            if this.scanner.saw_request_line_too_long {
                // hyper never sees this head: it would answer 431.
                buf.set_filled(before);
                this.outbox
                    .extend_from_slice(&super::refusals::uri_too_long());
                this.refusal = Some(Refusal::Writing);
                return this.poll_refusal(cx);
            }
        }
        result
    }
}

impl<S: AsyncRead + AsyncWrite + SendfileSocket + Unpin> WatchedIo<S> {
    /// Goes on with the refusal of an over-long request line; ends, for hyper, as a read
    /// error (so it writes nothing of its own) once the answer is out and the client is
    /// done or has sent too much.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let refused = || {
            Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request line longer than server.max_header_bytes: answered 414",
            )))
        };
        loop {
            match self.refusal {
                None => return refused(),
                Some(Refusal::Writing) => {
                    std::task::ready!(self.poll_outbox(cx))?;
                    self.refusal = Some(Refusal::ShuttingDown);
                }
                Some(Refusal::ShuttingDown) => {
                    std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
                    self.refusal = Some(Refusal::Draining(0));
                }
                Some(Refusal::Draining(drained)) => {
                    let mut scratch = [0u8; 4096];
                    let mut read = ReadBuf::new(&mut scratch);
                    std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
                    let drained = drained + read.filled().len();
                    if read.filled().is_empty() || drained >= REFUSAL_DRAIN_BYTES {
                        return refused();
                    }
                    self.refusal = Some(Refusal::Draining(drained));
                }
            }
        }
    }
}

impl<S: AsyncWrite + SendfileSocket + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_interim_before_write(cx))?;
        let polled = match this.poll_write_with_files(cx, &[std::io::IoSlice::new(data)]) {
            Some(polled) => polled,
            None => Pin::new(&mut this.inner).poll_write(cx, data),
        };
        this.activity.write_polled(&polled);
        polled
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_interim_before_write(cx))?;
        let polled = match this.poll_write_with_files(cx, bufs) {
            Some(polled) => polled,
            None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        };
        this.activity.write_polled(&polled);
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    /// hyper flushes only once its own buffer is written out, so interim responses may go
    /// here: never inside a response.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(queued) = this.interim.take_queued() {
            this.outbox.extend_from_slice(&queued);
        }
        std::task::ready!(this.poll_outbox(cx))?;
        // A socket's flush is ready at once and says nothing about the client: not watched.
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            this.interim.set_hyper_writing(false);
        }
        flushed
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that says nothing is cut off after the head timeout (slowloris).
    #[tokio::test(start_paused = true)]
    async fn silent_connection_hits_header_timeout() {
        let activity = Arc::new(ConnActivity::new());
        let ending = activity.watch(timeouts(10, 60, 60)).await;
        assert_eq!(ending, Ending::HeaderTimeout);
        assert_eq!(activity.now_ms(), 10_000);
    }

    /// After a response, keep-alive idle time is the idle timeout, not the head timeout.
    #[tokio::test(start_paused = true)]
    async fn keep_alive_connection_idles_for_idle_timeout() {
        let activity = Arc::new(ConnActivity::new());
        drop(activity.request_started(false));
        let ending = activity.watch(timeouts(10, 60, 60)).await;
        assert_eq!(ending, Ending::Idle);
        assert_eq!(activity.now_ms(), 60_000);
    }

    /// RFC 9112 §6.3: both framing fields in one head are flagged, split across reads too.
    #[test]
    fn scanner_flags_a_request_line_past_its_limit_in_any_split() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(40));
        for cut in 1..long.len() {
            let mut scanner = HeadScanner {
                request_line_limit: 32,
                ..HeadScanner::default()
            };
            scanner.scan(&long.as_bytes()[..cut], true);
            scanner.scan(&long.as_bytes()[cut..], false);
            assert!(scanner.saw_request_line_too_long, "cut at {cut}");
        }
        // Long header lines, and later heads' short request lines, are not the request
        // line's to answer for.
        let mut scanner = HeadScanner {
            request_line_limit: 32,
            ..HeadScanner::default()
        };
        let headers = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(100));
        scanner.scan(headers.as_bytes(), true);
        scanner.scan(b"GET /again HTTP/1.1\r\n\r\n", true);
        assert!(!scanner.saw_request_line_too_long);
    }

    #[test]
    fn scanner_flags_content_length_with_transfer_encoding() {
        let mut scanner = HeadScanner::default();
        assert!(!scanner.scan(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Le", true));
        assert!(!scanner.scan(b"ngth: 4\r\nTRANSFER-ENCODING: chunked\r", false));
        assert!(scanner.scan(b"\n\r\n0\r\n\r\n", false));
        assert!(!scanner.scan(
            b"GET / HTTP/1.1\r\nX-Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            true
        ));
        // However the head is cut into reads.
        let head = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        for cut in 0..head.len() {
            let mut scanner = HeadScanner::default();
            let first = scanner.scan(&head[..cut], true);
            assert!(first || scanner.scan(&head[cut..], false), "cut at {cut}");
        }
        let mut h2 = HeadScanner::default();
        assert!(!h2.scan(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ncontent-length:\ntransfer-encoding:\n\n",
            true
        ));
    }

    fn timeouts(header_read: u64, idle: u64, send: u64) -> Timeouts {
        Timeouts {
            header_read: Duration::from_secs(header_read),
            idle: Duration::from_secs(idle),
            send: Duration::from_secs(send),
        }
    }

    /// A busy connection whose writes keep moving (or that waits for the origin) is never
    /// cut, however long the response takes.
    #[tokio::test(start_paused = true)]
    async fn busy_connection_that_is_read_is_never_cut() {
        let activity = Arc::new(ConnActivity::new());
        let guard = activity.request_started(false);
        let watch = activity.watch(timeouts(1, 5, 60));
        tokio::pin!(watch);
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), watch.as_mut())
                .await
                .is_err()
        );
        drop(guard);
        assert_eq!(watch.await, Ending::Idle);
    }

    /// A client that stops reading (writes stay blocked) is cut after the send timeout;
    /// a write that moves restarts the clock.
    #[tokio::test(start_paused = true)]
    async fn client_that_stops_reading_hits_send_timeout() {
        let activity = Arc::new(ConnActivity::new());
        let _guard = activity.request_started(false);
        let watch = activity.watch(timeouts(1, 5, 60));
        tokio::pin!(watch);
        tokio::time::sleep(Duration::from_secs(30)).await;
        activity.write_polled(&Poll::<()>::Pending);
        tokio::time::sleep(Duration::from_secs(50)).await;
        activity.write_polled(&Poll::Ready(()));
        activity.write_polled(&Poll::<()>::Pending);
        let blocked_at = activity.now_ms();
        assert!(
            tokio::time::timeout(Duration::from_secs(59), watch.as_mut())
                .await
                .is_err()
        );
        assert_eq!(watch.await, Ending::SendTimeout);
        assert_eq!(activity.now_ms() - blocked_at, 60_000);
    }

    /// After a stall of our own process the send deadline and the client's reads fall due
    /// in the same turn: a write that moves in that turn keeps the connection.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_moves_as_the_deadline_falls_due_is_not_cut() {
        let activity = Arc::new(ConnActivity::new());
        let _guard = activity.request_started(false);
        activity.write_polled(&Poll::<()>::Pending);
        let watch = activity.watch(timeouts(1, 5, 60));
        tokio::pin!(watch);
        // The watchdog sleeps until the deadline first, so its timer is woken first.
        assert!(tokio::time::timeout(Duration::from_secs(1), watch.as_mut())
            .await
            .is_err());
        let client = Arc::clone(&activity);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(59)).await;
            client.write_polled(&Poll::Ready(()));
        });
        assert!(
            tokio::time::timeout(Duration::from_secs(120), watch.as_mut())
                .await
                .is_err()
        );
        activity.write_polled(&Poll::<()>::Pending);
        assert_eq!(watch.await, Ending::SendTimeout);
    }
}
