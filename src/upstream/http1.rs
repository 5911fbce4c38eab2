//! HTTP/1.1 to origins over connections driven by whoever is waiting on them: the task
//! that sends a request polls its connection until the response head arrives, and the
//! task that reads the response body polls it while it reads. No connection has a task of
//! its own.
//!
//! Why: a pooled client that runs each connection in its own task adds two task switches
//! to every exchange (the request handed to the connection's task, the response and each
//! body chunk handed back). On a busy single-threaded runtime each switch waits a pass of
//! the run queue, which is most of a miss's latency under load; nginx and Pingora handle
//! the same events in the one loop that reads the body.
//!
//! A request that finds no idle connection opens one, and takes instead the first
//! connection to that server released while it is still opening: under the connection
//! caps (`upstream.max_connections_per_origin`) a new connection waits for a place that
//! only closing a connection frees, while released connections stay open in the pool, so
//! without this a request would wait out the idle timeout beside connections that came
//! free. A connect that loses while it waits for its place is dropped (nothing reached the
//! origin); one that loses while it connects is finished (within `upstream.connect_timeout`)
//! and pooled: the origin has already accepted it, and under a burst the next request
//! wants it. When the cap in all (`upstream.max_connections`) is what a connect waits
//! for, the connection idle longest, to whatever server, is closed for it.
//!
//! Idle connections wait in a per-server pool (`upstream.pool_max_idle_per_host`, most
//! recently used first) and are checked before reuse: one that the server closed, or that
//! waited longer than `upstream.pool_idle_timeout`, is dropped. A sweeper closes idle
//! connections that expire or that their server closes while nobody asks for them, so
//! they do not hold slots of the connection caps. A connection goes back to the pool only
//! after its response body was read to the end and hyper is ready for the next request;
//! one whose body is dropped unread is closed, as the exchange's state is unknown.
//!
//! Upgrades (WebSocket and other tunnels) do not come here: hyper hands their connection
//! over only from a connection task, which the caller's pooled-client path provides.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::classify_failure;
use super::connector::{Admitted, Counted, CountedIo};
use crate::body::Body;
use crate::error::ProxyError;

type Io = CountedIo<MaybeHttpsStream<TokioIo<TcpStream>>>;
type Connector = HttpsConnector<HttpConnector>;

/// The HTTP/1.1 connections to every origin server, idle ones pooled.
pub struct Http1Origins {
    connector: Counted<Connector>,
    builder: Builder,
    servers: Mutex<HashMap<String, Server>>,
    max_idle_per_server: usize,
    idle_timeout: Duration,
    /// How long a connect nobody waits for any more may take to finish for the pool.
    connect_timeout: Duration,
    sweeper: std::sync::Once,
}

/// One server's idle connections, and the requests waiting for one to be released.
#[derive(Default)]
struct Server {
    idle: Vec<Idle>,
    /// Oldest first; a request that stopped waiting leaves its sender closed.
    waiting: VecDeque<oneshot::Sender<Live>>,
}

/// A connection waiting in the pool, and since when.
struct Idle {
    live: Live,
    since: Instant,
}

impl Idle {
    /// Whether it may take a request: idle for less than `timeout`, and still reusable.
    fn usable(&mut self, timeout: Duration) -> bool {
        self.since.elapsed() < timeout && self.live.reusable()
    }
}

/// A connection: the handle requests are sent through, and the state machine that moves
/// bytes, polled by whoever waits on it.
struct Live {
    sender: SendRequest<Body>,
    /// `None` once it ended (closed, failed). Boxed: hyper's state machine is about 2 KB,
    /// and inline it would size every response body and every future holding one.
    connection: Option<Box<Connection<Io, Body>>>,
}

impl Live {
    /// Moves the connection along; `false` once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(connection) = self.connection.as_mut() else {
            return false;
        };
        match Pin::new(&mut **connection).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(result) => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "HTTP/1.1 connection to the origin ended");
                }
                self.connection = None;
                false
            }
        }
    }

    /// Whether it can take a request now: still open, and hyper waiting for one. Polls
    /// without a waker: a closed connection's end of file is read here.
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx) && !self.sender.is_closed() && self.sender.is_ready()
    }
}

/// An HTTP/1.1 response body together with the connection it arrives on, which it drives
/// while it is read and returns to the pool once read to the end.
pub struct DrivenBody {
    incoming: Incoming,
    lease: Option<Lease>,
}

struct Lease {
    live: Live,
    server: String,
    pool: Arc<Http1Origins>,
}

impl DrivenBody {
    /// Gives the connection back when the body is done and hyper is ready for another
    /// request; otherwise it is closed with the lease.
    fn release(&mut self) {
        if let Some(mut lease) = self.lease.take() {
            if lease.live.reusable() {
                lease.pool.check_in(lease.server, lease.live);
            }
        }
    }
}

impl http_body::Body for DrivenBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut frame = Pin::new(&mut this.incoming).poll_frame(cx);
        if frame.is_pending() {
            // Asking for a frame told hyper to read one: read it now, in this task.
            if let Some(lease) = this.lease.as_mut() {
                lease.live.drive(cx);
            }
            frame = Pin::new(&mut this.incoming).poll_frame(cx);
        }
        if let Poll::Ready(None) = frame {
            this.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        // A body with nothing left (a 304, a HEAD's response, one read to its last byte but
        // not polled for its end) leaves its connection reusable.
        if self.incoming.is_end_stream() {
            self.release();
        }
    }
}

impl Http1Origins {
    pub fn new(
        connector: Counted<Connector>,
        max_read_buffer: usize,
        max_idle_per_server: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Http1Origins {
        let mut builder = Builder::new();
        builder
            .max_buf_size(max_read_buffer)
            // RFC 9112 §5.1: a proxy removes whitespace between a response field's name
            // and colon (and does not refuse the response); §5.2 lets it replace an
            // obs-fold with spaces. Old origins send both; neither is ambiguous.
            .allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true);
        Http1Origins {
            connector,
            builder,
            servers: Mutex::new(HashMap::new()),
            max_idle_per_server,
            idle_timeout,
            connect_timeout,
            sweeper: std::sync::Once::new(),
        }
    }

    /// Sends `request` (its URI absolute, naming the server to dial) on an idle connection
    /// to that server, or on a new one (always when `fresh`), and waits for the response
    /// head. The caller bounds the wait.
    ///
    /// # Errors
    /// The connection's or the exchange's failure, classified for Proxy-Status.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Body>,
        origin: &str,
        fresh: bool,
    ) -> Result<Response<DrivenBody>, ProxyError> {
        let server = server_key(request.uri());
        let mut live = if fresh {
            self.open(request.uri().clone(), origin).await?
        } else {
            match self.check_out(&server) {
                Ok(live) => live,
                Err(released) => {
                    self.open_or_take_released(&server, released, request.uri().clone(), origin)
                        .await?
                }
            }
        };
        to_origin_form(&mut request);
        let mut response = std::pin::pin!(live.sender.send_request(request));
        let head = poll_fn(|cx| {
            // The connection first: it writes the request and reads the head, then the
            // response future finds it.
            live.drive(cx);
            response.as_mut().poll(cx)
        })
        .await;
        match head {
            Ok(response) => {
                let lease = Lease {
                    live,
                    server,
                    pool: Arc::clone(self),
                };
                Ok(response.map(|incoming| DrivenBody {
                    incoming,
                    lease: Some(lease),
                }))
            }
            Err(err) => Err(classify_failure(&err, origin, false)),
        }
    }

    async fn open(&self, uri: Uri, origin: &str) -> Result<Live, ProxyError> {
        let admitted = self.admit(uri, origin).await?;
        establish(&self.builder, admitted, origin).await
    }

    /// A place under the connection caps for a connection to `uri`'s server.
    async fn admit(&self, uri: Uri, origin: &str) -> Result<Admitted<Connector>, ProxyError> {
        self.connector
            .admit(uri)
            .await
            .map_err(|err| classify_failure(&*err, origin, true))
    }

    /// The most recently used idle connection to `server` that can take a request, or, when
    /// there is none, where the next connection to it released will be sent.
    fn check_out(&self, server: &str) -> Result<Live, oneshot::Receiver<Live>> {
        loop {
            let mut idle = {
                let mut servers = self.servers.lock();
                match servers.get_mut(server).and_then(|entry| entry.idle.pop()) {
                    Some(idle) => idle,
                    None => {
                        // Under the same lock as the look for an idle one: a connection
                        // released in between goes to this request.
                        let entry = servers.entry(server.to_string()).or_default();
                        let (sender, released) = oneshot::channel();
                        entry.waiting.retain(|waiter| !waiter.is_closed());
                        entry.waiting.push_back(sender);
                        return Err(released);
                    }
                }
            };
            if idle.usable(self.idle_timeout) {
                return Ok(idle.live);
            }
        }
    }

    /// A new connection to `server`, or the first one released while it opens.
    async fn open_or_take_released(
        self: &Arc<Self>,
        server: &str,
        mut released: oneshot::Receiver<Live>,
        uri: Uri,
        origin: &str,
    ) -> Result<Live, ProxyError> {
        let admitted = tokio::select! {
            biased;
            Ok(live) = &mut released => return Ok(live),
            admitted = self.admit(uri, origin) => admitted?,
        };
        // Boxed and owned: if a released connection wins from here, this one is finished
        // in a task of its own.
        let builder = self.builder.clone();
        let owned_origin = origin.to_string();
        let mut connecting =
            Box::pin(async move { establish(&builder, admitted, &owned_origin).await });
        let opened = tokio::select! {
            biased;
            Ok(live) = &mut released => {
                self.pool_when_made(server.to_string(), connecting);
                return Ok(live);
            }
            opened = &mut connecting => opened,
        };
        // One released just as this connect finished goes to the next request.
        released.close();
        if let Ok(live) = released.try_recv() {
            Arc::clone(self).check_in(server.to_string(), live);
        }
        opened
    }

    /// Finishes a connect that lost to a released connection, and pools what it made: the
    /// origin has accepted it (and perhaps most of a TLS handshake), so dropping it would
    /// waste that and open another for the next request of a burst.
    fn pool_when_made(
        self: &Arc<Self>,
        server: String,
        connecting: Pin<Box<impl Future<Output = Result<Live, ProxyError>> + Send + 'static>>,
    ) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if let Ok(Ok(live)) = tokio::time::timeout(pool.connect_timeout, connecting).await {
                pool.check_in(server, live);
            }
        });
    }

    /// A released connection: to the longest waiting request for its server, or else into
    /// the pool.
    fn check_in(self: Arc<Self>, server: String, mut live: Live) {
        let mut servers = self.servers.lock();
        let entry = servers.entry(server).or_default();
        while let Some(waiter) = entry.waiting.pop_front() {
            match waiter.send(live) {
                Ok(()) => return,
                Err(unwanted) => live = unwanted,
            }
        }
        if self.max_idle_per_server == 0 {
            drop(servers);
            // Closed outside the lock, as in `close_longest_idle`.
            drop(live);
            return;
        }
        self.sweeper.call_once(|| self.start_sweeper());
        // The longest idle goes: the most recent ones are reused first anyway.
        let closing = (entry.idle.len() >= self.max_idle_per_server).then(|| entry.idle.remove(0));
        entry.idle.push(Idle {
            live,
            since: Instant::now(),
        });
        drop(servers);
        // Closed outside the lock, as in `close_longest_idle`.
        drop(closing);
    }

    /// Closes the connection that has been idle longest, to any server: its slot of the
    /// connection caps goes to a connection waiting for one (see
    /// [`crate::limit::Limiter::on_total_shortage`]). Whether there was one.
    pub fn close_longest_idle(&self) -> bool {
        let closing = {
            let mut servers = self.servers.lock();
            let longest = servers
                .values_mut()
                .filter(|entry| !entry.idle.is_empty())
                // Each server's longest idle is its first.
                .min_by_key(|entry| entry.idle[0].since);
            longest.map(|entry| entry.idle.remove(0))
        };
        let closed = closing.is_some();
        // Closed outside the lock: dropping a TLS connection may write its close_notify.
        drop(closing);
        closed
    }

    /// Closes idle connections that expired or that their server closed, every half of
    /// the idle timeout, for as long as the pool exists.
    fn start_sweeper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool: Weak<Http1Origins> = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(50));
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    fn sweep(&self) {
        let closing: Vec<Idle> = {
            let mut servers = self.servers.lock();
            let mut closing = Vec::new();
            servers.retain(|_, entry| {
                let mut kept = Vec::with_capacity(entry.idle.len());
                for mut idle in entry.idle.drain(..) {
                    if idle.usable(self.idle_timeout) {
                        kept.push(idle);
                    } else {
                        closing.push(idle);
                    }
                }
                entry.idle = kept;
                entry.waiting.retain(|waiter| !waiter.is_closed());
                !entry.idle.is_empty() || !entry.waiting.is_empty()
            });
            closing
        };
        // Closed outside the lock: dropping a TLS connection may write its close_notify.
        drop(closing);
    }
}

/// Which pool a request's connection comes from: its scheme and authority.
/// Opens an admitted connection and starts HTTP/1.1 on it.
async fn establish(
    builder: &Builder,
    admitted: Admitted<Connector>,
    origin: &str,
) -> Result<Live, ProxyError> {
    let io = admitted
        .connect()
        .await
        .map_err(|err| classify_failure(&*err, origin, true))?;
    let (sender, connection) = builder
        .handshake(io)
        .await
        .map_err(|err| classify_failure(&err, origin, true))?;
    Ok(Live {
        sender,
        connection: Some(Box::new(connection)),
    })
}

fn server_key(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri.authority().map_or("", |authority| authority.as_str());
    let mut key = String::with_capacity(scheme.len() + 3 + authority.len());
    key.push_str(scheme);
    key.push_str("://");
    key.push_str(&authority.to_ascii_lowercase());
    key
}

/// RFC 9112 §3.2.1: a request to an origin server carries the origin-form target (path
/// and query); `CONNECT` keeps its authority-form (§3.2.3).
fn to_origin_form(request: &mut Request<Body>) {
    if request.method() == http::Method::CONNECT {
        return;
    }
    let uri = request.uri_mut();
    *uri = match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    };
}
