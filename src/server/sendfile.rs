//! Disk hits sent from their file with sendfile(2) on cleartext HTTP/1 connections: no
//! read into our memory, no copy into the socket, no hashing per hit (the file was
//! verified when it was opened; see `cache::disk::opened`).
//!
//! hyper writes bodies only from memory, so the body hyper gets is a stand-in: slices of
//! [`PLACEHOLDER`], a static buffer nobody writes or reads, with the file's window queued
//! on the connection's [`SendfileLink`] when hyper first polls the body. When hyper writes,
//! [`crate::server::activity::WatchedIo`] recognises those slices by their address and
//! sends the next bytes of the queued window from the file instead. A stand-in slice
//! with no window queued fails the write (the connection is cut): it is never sent as it
//! is. hyper queues body buffers as they are (it flattens them only when the socket does
//! not take vectored writes, and then no link is made; see [`SendfileLink::for_socket`]).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;

use tokio::net::TcpStream;

use crate::body::{Body, BoxError, FileBody, VerifiedFile};
use crate::telemetry::metrics::Metrics;

/// What hyper is given in place of file bytes. Static and zeroed: it costs no memory
/// until touched, and nothing touches it.
static PLACEHOLDER: [u8; 1 << 20] = [0; 1 << 20];

/// Whether `bytes` are (part of) the stand-in.
pub fn is_placeholder(bytes: &[u8]) -> bool {
    let start = PLACEHOLDER.as_ptr() as usize;
    let at = bytes.as_ptr() as usize;
    !bytes.is_empty() && at >= start && at < start + PLACEHOLDER.len()
}

/// A client socket, as far as sendfile is concerned: the plain TCP socket beneath it, if
/// its bytes go out on that socket as they are (not TLS).
pub trait SendfileSocket {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl SendfileSocket for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl<S> SendfileSocket for tokio_rustls::server::TlsStream<S> {}

/// Runs the non-blocking `write` once `socket` is writable, again whenever it finds the
/// socket full after all.
fn poll_when_writable(
    socket: &TcpStream,
    cx: &mut Context<'_>,
    write: impl Fn(&TcpStream) -> rustix::io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(socket.poll_write_ready(cx))?;
        match socket.try_io(tokio::io::Interest::WRITABLE, || {
            write(socket).map_err(io::Error::from)
        }) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            written => return Poll::Ready(written),
        }
    }
}

/// The file windows of a connection's responses, in the order hyper writes them.
#[derive(Default)]
pub struct SendfileLink {
    windows: Mutex<VecDeque<Window>>,
}

struct Window {
    file: Arc<dyn VerifiedFile>,
    offset: u64,
    remaining: u64,
}

impl SendfileLink {
    /// A link for a connection over `socket`, if sendfile can write to it and hyper will
    /// hand it body buffers as they are (vectored writes).
    pub fn for_socket<S>(socket: &S, enabled: bool) -> Option<Arc<SendfileLink>>
    where
        S: SendfileSocket + tokio::io::AsyncWrite,
    {
        (enabled && socket.tcp().is_some() && socket.is_write_vectored())
            .then(|| Arc::new(SendfileLink::default()))
    }

    /// Sends stand-in bytes (at most `max`) from the file window they stand for.
    ///
    /// # Errors
    /// No window is queued (the stand-in would go out as it is), the file ended early (it
    /// was truncated since it was verified: the response must end short), or the socket
    /// failed.
    pub fn poll_send(
        &self,
        cx: &mut Context<'_>,
        socket: &TcpStream,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let mut windows = self.windows.lock();
        let Some(window) = windows.front_mut() else {
            return Poll::Ready(Err(io::Error::other(
                "sendfile stand-in bytes with no file window queued",
            )));
        };
        let want = usize::try_from(window.remaining)
            .unwrap_or(usize::MAX)
            .min(max);
        let (file, offset) = (window.file.file(), window.offset);
        let sent = ready!(poll_when_writable(socket, cx, |socket| {
            let mut at = offset;
            rustix::fs::sendfile(socket, file, Some(&mut at), want)
        }))?;
        if sent == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body file shorter than when it was verified",
            )));
        }
        window.offset += sent as u64;
        window.remaining -= sent as u64;
        if window.remaining == 0 {
            windows.pop_front();
        }
        Poll::Ready(Ok(sent))
    }
}

/// `body`, when it is a window of a verified file ([`Body::File`]: a disk-tier file or a
/// sealed memory body), as stand-in bytes sent with sendfile over `link` (a cleartext
/// HTTP/1 connection); without a link it is read when polled. Counted in `metrics`. Any
/// other body as it is.
pub fn from_verified_file(body: Body, link: Option<&Arc<SendfileLink>>, metrics: &Metrics) -> Body {
    let Body::File(file_body) = body else {
        return body;
    };
    let in_memory = file_body.file.is_in_memory();
    let Some(link) = link else {
        // A sealed memory body is then a slice of its mapping: no read at all.
        if !in_memory {
            metrics.verified_file_reads.inc();
        }
        return Body::File(file_body);
    };
    if in_memory {
        metrics.memory_sendfile_responses.inc();
    } else {
        metrics.sendfile_responses.inc();
    }
    let FileBody {
        file, offset, len, ..
    } = *file_body;
    Body::boxed(StandIn {
        link: Arc::clone(link),
        window: Some(Window {
            file,
            offset,
            remaining: len,
        }),
        remaining: len,
    })
}

/// The body hyper polls: stand-in slices adding up to the window, which it queues on the
/// link when first polled (hyper polls a body only to write it: a HEAD's is never polled).
struct StandIn {
    link: Arc<SendfileLink>,
    window: Option<Window>,
    remaining: u64,
}

impl http_body::Body for StandIn {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if let Some(window) = this.window.take() {
            this.link.windows.lock().push_back(window);
        }
        let len = usize::try_from(this.remaining)
            .unwrap_or(usize::MAX)
            .min(PLACEHOLDER.len());
        this.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &PLACEHOLDER[..len],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_in_slices_are_recognised_and_nothing_else() {
        assert!(is_placeholder(&PLACEHOLDER[..1]));
        assert!(is_placeholder(&PLACEHOLDER[PLACEHOLDER.len() - 1..]));
        assert!(!is_placeholder(&PLACEHOLDER[..0]));
        let zeros = vec![0u8; 64];
        assert!(!is_placeholder(&zeros));
    }
}
