//! Interim (1xx) responses relayed from the origin to the HTTP/1.1 client ahead of the final
//! response: RFC 9110 §15.2 has a proxy forward the 1xx responses it did not cause itself
//! (103 Early Hints, RFC 8297; 102 Processing; unknown ones).
//!
//! hyper's server cannot send a 1xx, so they travel beside it. The connection's
//! [`InterimLink`] queues the serialized heads; the client socket's writer
//! (`server::activity::WatchedIo`) writes them at a moment when nothing of hyper's is half
//! written: when hyper flushes (it does so only with its own buffer empty) or when it
//! starts writing after a completed flush. A request that goes to the origin opens an
//! [`InterimSink`] from its [`InterimRelay`]; it stays open until the request's handler
//! returns ([`InterimLink::close_open`]), and what is queued then goes out just ahead of the
//! final response. The one case where it cannot (hyper still writing the previous
//! response's end into a full socket) drops it: an interim head can be lost, never
//! misplaced. They are never stored: the cache only ever sees the final response hyper's
//! client returns. Requests answered from the cache allocate nothing for this.
//!
//! HTTP/1.0 clients get none (RFC 9110 §15.2), nor do HTTP/2 clients (hyper's server has
//! no way to send them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;

use http::header::{self, HeaderMap};
use http::StatusCode;
use parking_lot::Mutex;

use super::forwarding;

/// More than this queued and unwritten (a client not reading, an origin sending 102s in a
/// loop) and further interim responses are dropped.
const MAX_QUEUED_BYTES: usize = 16 * 1024;

/// One client connection's queue of interim response heads.
#[derive(Default)]
pub struct InterimLink {
    /// Set while `queued` holds bytes: the writer looks at it on every flush.
    has_queued: AtomicBool,
    /// Set while a sink is open: closing looks at it once per request.
    has_open: AtomicBool,
    /// Set by the socket writer while hyper's bytes may be half written (between a write
    /// and the flush that completes it).
    hyper_is_writing: AtomicBool,
    state: Mutex<LinkState>,
}

/// What a request needs to open its sink: the connection's link and the waker of the task
/// that drives the connection (an HTTP/1 connection's service runs in that task).
pub struct InterimRelay {
    pub link: Arc<InterimLink>,
    pub connection_task: Waker,
}

impl std::fmt::Debug for InterimRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InterimRelay")
    }
}

impl InterimRelay {
    /// A sink for one exchange with the origin; it replaces any earlier one of the request.
    pub fn open(&self) -> InterimSink {
        self.link.open(self.connection_task.clone())
    }
}

#[derive(Default)]
struct LinkState {
    queued: Vec<u8>,
    /// The request whose sink is open (numbered per connection), if any.
    open: Option<u64>,
    last_opened: u64,
}

/// Where the interim responses of one exchange with the origin go.
pub struct InterimSink(Arc<SinkInner>);

struct SinkInner {
    link: Arc<InterimLink>,
    request: u64,
    /// Wakes the connection's task, so that hyper flushes and the queue is written.
    connection_task: Waker,
}

impl InterimLink {
    /// Opens a sink for the request in flight; `connection_task` is the waker of the task
    /// that drives the connection.
    fn open(self: &Arc<Self>, connection_task: Waker) -> InterimSink {
        let mut state = self.state.lock();
        state.last_opened += 1;
        state.open = Some(state.last_opened);
        self.has_open.store(true, Ordering::Release);
        InterimSink(Arc::new(SinkInner {
            link: Arc::clone(self),
            request: state.last_opened,
            connection_task,
        }))
    }

    /// Ends the interim phase of the request in flight: its final response is about to be
    /// written, and its sinks relay nothing more. What is queued goes out before the final
    /// response, unless hyper is still writing (then it would not: it is dropped). Call
    /// from the connection's task, as hyper's writes are.
    pub fn close_open(&self) {
        if !self.has_open.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state.lock();
        state.open = None;
        self.has_open.store(false, Ordering::Release);
        if self.hyper_is_writing.load(Ordering::Relaxed) {
            state.queued.clear();
            self.has_queued.store(false, Ordering::Release);
        }
    }

    /// The socket writer saw hyper start writing (true) or complete a flush (false).
    pub fn set_hyper_writing(&self, is_writing: bool) {
        self.hyper_is_writing.store(is_writing, Ordering::Relaxed);
    }

    pub fn is_hyper_writing(&self) -> bool {
        self.hyper_is_writing.load(Ordering::Relaxed)
    }

    /// The queued heads, to be written now. Call only when nothing of hyper's is half
    /// written (see the module doc).
    pub fn take_queued(&self) -> Option<Vec<u8>> {
        if !self.has_queued.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.state.lock();
        self.has_queued.store(false, Ordering::Release);
        Some(std::mem::take(&mut state.queued)).filter(|queued| !queued.is_empty())
    }
}

impl InterimSink {
    /// Queues an interim response from the origin for the client, if it is one to relay.
    pub fn relay(&self, status: StatusCode, headers: &HeaderMap) {
        if !is_relayed(status) {
            return;
        }
        let head = serialize(status, headers);
        let inner = &self.0;
        let mut state = inner.link.state.lock();
        if state.open != Some(inner.request) || state.queued.len() + head.len() > MAX_QUEUED_BYTES {
            return;
        }
        state.queued.extend_from_slice(&head);
        inner.link.has_queued.store(true, Ordering::Release);
        drop(state);
        inner.connection_task.wake_by_ref();
    }
}

/// `request` to the origin, its interim responses relayed to the client when `relay` is
/// given (a fresh sink, replacing any earlier one of the request).
pub(super) fn relay_to<B>(
    mut request: http::Request<B>,
    relay: Option<&InterimRelay>,
) -> http::Request<B> {
    if let Some(relay) = relay {
        let sink = relay.open();
        hyper::ext::on_informational(&mut request, move |interim| {
            sink.relay(interim.status(), interim.headers());
        });
    }
    request
}

/// 100 answers an `Expect` that we answer ourselves (and never forward); 101 switches
/// protocols, which is not a head to pass along.
fn is_relayed(status: StatusCode) -> bool {
    status.is_informational()
        && status != StatusCode::CONTINUE
        && status != StatusCode::SWITCHING_PROTOCOLS
}

/// The HTTP/1.1 head of an interim response, without the origin's hop-by-hop fields or a
/// Content-Length (RFC 9110 §8.6: never in a 1xx).
fn serialize(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut headers = headers.clone();
    forwarding::strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    let mut head = Vec::with_capacity(64);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("link", "</a.css>; rel=preload".parse().unwrap());
        headers.insert("connection", "x-hop".parse().unwrap());
        headers.insert("x-hop", "1".parse().unwrap());
        headers.insert("content-length", "0".parse().unwrap());
        headers
    }

    /// RFC 9110 §15.2 and §8.6: hop-by-hop fields and Content-Length are not relayed.
    #[test]
    fn a_relayed_head_is_clean_http_1_1() {
        let head = serialize(StatusCode::from_u16(103).unwrap(), &hints());
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
        );
    }

    /// A sink closed (its final response is next) relays nothing, and drops what it queued.
    #[test]
    fn a_closed_sink_relays_nothing_and_keeps_its_queue_only_between_writes() {
        let link = Arc::new(InterimLink::default());
        let sink = link.open(Waker::noop().clone());
        sink.relay(StatusCode::CONTINUE, &HeaderMap::new());
        assert!(link.take_queued().is_none());
        sink.relay(StatusCode::from_u16(103).unwrap(), &hints());
        link.set_hyper_writing(true);
        link.close_open();
        assert!(link.take_queued().is_none(), "dropped: hyper is mid-write");
        link.set_hyper_writing(false);
        sink.relay(StatusCode::from_u16(103).unwrap(), &hints());
        assert!(link.take_queued().is_none());

        let next = link.open(Waker::noop().clone());
        sink.relay(StatusCode::from_u16(102).unwrap(), &HeaderMap::new());
        assert!(link.take_queued().is_none(), "an earlier request's sink");
        next.relay(StatusCode::from_u16(102).unwrap(), &HeaderMap::new());
        assert_eq!(
            link.take_queued().unwrap(),
            b"HTTP/1.1 102 Processing\r\n\r\n"
        );
    }
}
