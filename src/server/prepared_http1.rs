//! Cleartext HTTP/1.1 connections start here: each request head is read and, when it is a
//! request the pipeline has prepared an answer to (`pipeline::prepared`: a repeated plain
//! memory hit), answered at once from that answer. A plain request without one (a GET or
//! HEAD that is its head alone: a miss, a first hit) is served by hyper alone and the
//! connection comes back here after it (`super::one_request`). At the first request that
//! is anything else (a body, an upgrade, `Expect`, `Connection: close`, HTTP/1.0, a head
//! hyper must judge) the connection goes to hyper, with the bytes read so far, for the
//! rest of its life (hyper serves a connection to its end and cannot hand it back).
//!
//! Heads are parsed with httparse, the parser hyper uses, so a head is either one both read
//! alike or one hyper gets to judge (and refuse) itself: anything incomplete past
//! `server.max_header_bytes`, malformed, or with too many fields goes to hyper untouched.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::activity::WatchedIo;
use super::sendfile::{self, SendfileSocket};
use super::{ConnectionLink, SharedProxy};
use crate::pipeline::prepared::{ReadyHit, Shape};

/// Fields a head may have and still be parsed here; more go to hyper (which allows
/// `server.max_headers`). Browsers send about 15, benchmark tools 1 to 3.
const MOST_FIELDS: usize = 24;

/// What the answering loop tells its supervisor, and is told.
#[derive(Default)]
pub(super) struct Control {
    /// An answer is being written: a graceful stop waits for it.
    busy: AtomicBool,
    /// Stop after the answer being written.
    stopping: AtomicBool,
}

impl Control {
    pub(super) fn is_busy(&self) -> bool {
        self.busy.load(Relaxed)
    }

    pub(super) fn stop(&self) {
        self.stopping.store(true, Relaxed);
    }
}

/// A request head read whole: how long it is and where its parts are in the buffer.
struct Head {
    len: usize,
    target: Range<usize>,
    referer: Option<Range<usize>>,
    user_agent: Option<Range<usize>>,
}

/// What the buffered bytes hold.
enum Parsed {
    /// A head whose message is the head alone, that hyper may serve by itself and hand
    /// back (see [`super::one_request`]); its length.
    Plain(usize),
    /// A head whose shape is now in the [`Shape`].
    Preparable(Head),
    /// Not a whole head yet.
    Partial,
    /// Anything else: hyper's to serve.
    Other,
}

/// Where `part` (a slice of `buf`) lies in `buf`.
fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn parse(buf: &[u8], shape: &mut Shape) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MOST_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some("GET"), Some(1), Some(target)) = (request.method, request.version, request.path)
    else {
        return plain_or_other(&request, len);
    };
    let fields = request.headers.iter().map(|f| (f.name, f.value));
    if shape.read(target.as_bytes(), fields).is_none() {
        return plain_or_other(&request, len);
    }
    let field = |name: &str| {
        let found = request
            .headers
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))?;
        Some(range_in(buf, found.value))
    };
    Parsed::Preparable(Head {
        len,
        target: range_in(buf, target.as_bytes()),
        referer: field("referer"),
        user_agent: field("user-agent"),
    })
}

/// Fields that make a request more than its head, or ask the connection to change or
/// end: a request with any of them is hyper's to the end of the connection.
const NOT_PLAIN_FIELDS: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "upgrade",
    "expect",
    "http2-settings",
    "connection",
];

/// [`Parsed::Plain`] for a whole head of `len` bytes whose message is the head alone (an
/// HTTP/1.1 GET or HEAD with no body, no upgrade, no expectation, and a connection that
/// stays open), else [`Parsed::Other`].
fn plain_or_other(request: &httparse::Request<'_, '_>, len: usize) -> Parsed {
    let is_plain = request.version == Some(1)
        && matches!(request.method, Some("GET" | "HEAD"))
        && request.headers.iter().all(|field| {
            let name = field.name;
            match NOT_PLAIN_FIELDS
                .iter()
                .find(|other| name.eq_ignore_ascii_case(other))
            {
                None => true,
                // `Connection: keep-alive` only restates HTTP/1.1's default.
                Some(&"connection") => field.value.eq_ignore_ascii_case(b"keep-alive"),
                Some(_) => false,
            }
        });
    if is_plain {
        Parsed::Plain(len)
    } else {
        Parsed::Other
    }
}

/// What the connection does next.
enum Next {
    /// Answer this head, if a prepared answer is still good.
    Head(Head),
    /// Let hyper serve the plain request whose head is this long, then go on.
    OneRequest(usize),
    /// Give the connection to hyper.
    HandOver,
    /// Close it (the client closed, or a stop was asked for between requests).
    Close,
    /// Refuse the request whose line is longer than the head may be (414), and close.
    UriTooLong,
}

/// Reads until `buf` holds a whole head of a request that may have a prepared answer
/// (its shape then in `shape`), or the connection is to go on elsewhere or end.
async fn next_head<S: AsyncRead + AsyncWrite + SendfileSocket + Unpin>(
    (io, peer): (&mut WatchedIo<S>, std::net::SocketAddr),
    buf: &mut BytesMut,
    shape: &mut Shape,
    control: &Control,
    max_head: usize,
) -> Next {
    loop {
        if !buf.is_empty() {
            match parse(buf, shape) {
                // hyper's limit is on its read buffer; a head near it is its to judge.
                Parsed::Preparable(head) if head.len < max_head => return Next::Head(head),
                Parsed::Plain(len) if len < max_head => return Next::OneRequest(len),
                Parsed::Partial if buf.len() < max_head => {}
                // Whole or not: a head already read past the limit (a pipelined one comes
                // in with the request before it) would reach hyper, which says 431.
                _ if super::refusals::is_request_line_too_long(buf, max_head) => {
                    return Next::UriTooLong
                }
                Parsed::Preparable(_) | Parsed::Plain(_) | Parsed::Partial | Parsed::Other => {
                    return Next::HandOver
                }
            }
        } else if control.stopping.load(Relaxed) {
            return Next::Close;
        }
        buf.reserve(2048);
        match io.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Next::Close,
            // A head cut short: hyper says so as it would have.
            Ok(0) => return Next::HandOver,
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(%peer, error = %err, "client connection failed");
                return Next::Close;
            }
        }
    }
}

/// Where the connection goes after [`answer`].
pub(super) enum Handed<S> {
    /// To hyper for the rest of its life, with the bytes read but not answered.
    ToHyper(WatchedIo<S>, Bytes),
    /// To hyper for one plain request, whose head is `head`; `rest` was read after it.
    OneRequest {
        io: WatchedIo<S>,
        head: Bytes,
        rest: BytesMut,
    },
}

/// Answers requests on `io` (the bytes in `buf` read from it and not yet answered) for as
/// long as they have prepared answers. Returns `None` when the connection is over (closed
/// by the client, failed, or stopped), or where it goes next.
pub(super) async fn answer<S>(
    mut io: WatchedIo<S>,
    mut buf: BytesMut,
    proxy: &SharedProxy,
    link: &ConnectionLink,
    control: &Control,
    max_head: usize,
) -> Option<Handed<S>>
where
    S: AsyncRead + AsyncWrite + SendfileSocket + Unpin,
{
    let mut shape = Shape::default();
    io.pause_scanning();
    loop {
        let head = match next_head(
            (&mut io, link.peer),
            &mut buf,
            &mut shape,
            control,
            max_head,
        )
        .await
        {
            Next::Head(head) => head,
            Next::OneRequest(len) => return Some(one_request(io, buf, len)),
            Next::Close => return None,
            Next::HandOver => break,
            Next::UriTooLong => {
                let answer = super::refusals::uri_too_long();
                super::refusals::refuse(&mut io, &answer, link.peer).await;
                return None;
            }
        };
        let started = Instant::now();
        let proxy = proxy.load_full();
        let answer = proxy
            .prepared_hits()
            .answer(&proxy, &shape, SystemTime::now());
        let Some(ReadyHit {
            head: fields,
            tail,
            body,
            record,
        }) = answer.await
        else {
            if shape.closes() {
                break;
            }
            // A plain request (a preparable head is one, unless it asks to close).
            return Some(one_request(io, buf, head.len));
        };
        control.busy.store(true, Relaxed);
        let inflight = link.activity.request_started(false);
        let (sent, complete) = write(&mut io, [&fields, &tail], body, link, &proxy).await;
        let text = |range: &Range<usize>| std::str::from_utf8(&buf[range.clone()]).ok();
        let agent = (
            head.referer.as_ref().and_then(text),
            head.user_agent.as_ref().and_then(text),
        );
        let target = text(&head.target).unwrap_or("/");
        record.finish(&proxy, link.peer, target, agent, started, sent, complete);
        drop(inflight);
        control.busy.store(false, Relaxed);
        if shape.closes() && complete {
            // RFC 9112 §9.6: the answer said `connection: close`; the rest is not read.
            let _ = io.shutdown().await;
        }
        if shape.closes() || !complete || control.stopping.load(Relaxed) {
            return None;
        }
        buf.advance(head.len);
    }
    let read = buf.freeze();
    io.scan_handed_over(&read);
    Some(Handed::ToHyper(io, read))
}

/// The connection handed to hyper for the plain request whose head is the first `len`
/// bytes of `buf`.
fn one_request<S>(io: WatchedIo<S>, mut buf: BytesMut, len: usize) -> Handed<S> {
    let head = buf.split_to(len).freeze();
    Handed::OneRequest {
        io,
        head,
        rest: buf,
    }
}

/// Writes `ready` whole: head and body, the body from its file when the connection sends
/// files. Returns the body bytes sent and whether all were.
async fn write<S>(
    io: &mut WatchedIo<S>,
    [fields, tail]: [&Bytes; 2],
    body: crate::body::Body,
    link: &ConnectionLink,
    proxy: &crate::pipeline::Proxy,
) -> (u64, bool)
where
    S: AsyncWrite + SendfileSocket + Unpin,
{
    let mut body = sendfile::from_verified_file(body, link.sendfile.as_ref(), proxy.metrics());
    let mut head = Some((fields, tail));
    let mut sent = 0u64;
    loop {
        let data = match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Some(Err(err)) => {
                tracing::warn!(peer = %link.peer, error = %err, "response body failed mid-stream: aborting the client's response");
                return (sent, false);
            }
        };
        let written = match head.take() {
            Some((first, rest)) => write_all(io, &[first, rest, &data]).await,
            None => write_all(io, &[&data]).await,
        };
        if written.is_err() {
            return (sent, false);
        }
        sent += data.len() as u64;
    }
    if let Some((first, rest)) = head {
        if write_all(io, &[first, rest]).await.is_err() {
            return (sent, false);
        }
    }
    (sent, io.flush().await.is_ok())
}

/// Writes every byte of `pieces`, in as few vectored writes as the socket allows.
async fn write_all<W: AsyncWrite + Unpin>(io: &mut W, pieces: &[&[u8]]) -> io::Result<()> {
    let (mut index, mut offset) = (0, 0);
    loop {
        while index < pieces.len() && offset == pieces[index].len() {
            index += 1;
            offset = 0;
        }
        if index == pieces.len() {
            return Ok(());
        }
        let mut slices = arrayvec::ArrayVec::<IoSlice<'_>, 4>::new();
        slices.push(IoSlice::new(&pieces[index][offset..]));
        for piece in pieces[index + 1..].iter().take(3) {
            slices.push(IoSlice::new(piece));
        }
        let polled = std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &slices));
        let mut written = polled.await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let rest = pieces[index].len() - offset;
            if written < rest {
                offset += written;
                break;
            }
            written -= rest;
            index += 1;
            offset = 0;
        }
    }
}

/// A connection with bytes read from it already: they are read again first.
pub(super) struct ReadAhead<S> {
    read: Bytes,
    inner: S,
}

impl<S> ReadAhead<S> {
    pub(super) fn new(read: Bytes, inner: S) -> ReadAhead<S> {
        ReadAhead { read, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let take = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read.split_to(take));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
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
