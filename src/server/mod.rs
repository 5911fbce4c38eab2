//! The downstream edge: accepting connections, HTTP/1.1 and HTTP/2 (h2c prior knowledge, or
//! ALPN over TLS: [`tls`]) on one port, connection limits, the header-read (slowloris) and
//! idle timeouts, and graceful shutdown.
//!
//! Each connection has an `activity::ConnActivity` watchdog instead of hyper's HTTP/1
//! `header_read_timeout`, because hyper restarts that timer as soon as a response is sent and
//! would thereby cap keep-alive idle time at the header timeout. Interim (1xx) responses
//! from origins reach HTTP/1.1 clients through the connection's socket wrapper
//! (`pipeline::interim`), since hyper's server cannot send them. Cleartext HTTP/1.1
//! connections start in `prepared_http1`, which answers repeated plain hits the pipeline has
//! prepared (`pipeline::prepared`) and hands the connection to hyper at the first other
//! request. What happens to a request once its head has arrived is `pipeline`'s business.

mod activity;
pub mod bind;
mod h2c;
mod ocsp;
mod one_request;
mod prepared_http1;
pub mod proxy_protocol;
mod refusals;
mod sendfile;
pub mod tls;
mod tracker;
mod woken;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::ServerConfig;
use crate::pipeline::client_cert::VerifiedClient;
use crate::pipeline::interim::{InterimLink, InterimRelay};
use crate::pipeline::{self, Proxy};
use tls::VerifiedUnder;

/// The proxy in force: swapped whole on reload. Each request takes the one current when it
/// starts and keeps it to the end, so a reload never changes a request mid-way.
pub type SharedProxy = Arc<arc_swap::ArcSwap<Proxy>>;
use activity::{ConnActivity, Ending, Timeouts, WatchedIo};
use sendfile::{SendfileLink, SendfileSocket};
use tracker::ResponseTracker;

/// Serves `listener` until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish for up to `server.shutdown_grace`, and aborts what is left.
///
/// The `server.*` settings are read from the proxy in force for every new connection, so a
/// reload changes limits and timeouts for connections accepted after it; a new
/// `max_connections` takes effect from the next accepted connection (growing at once,
/// shrinking as permits come free).
///
/// # Errors
/// None today; accept errors (such as running out of file descriptors) are logged and
/// retried, because one bad moment must not take the whole node down.
pub async fn serve(
    listener: TcpListener,
    proxy: SharedProxy,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_on(listener, proxy, shutdown, Transport::Plain).await
}

/// As [`serve`], terminating TLS on every connection with the configuration in force when
/// it is accepted (`tls`; a reload changes it for new connections only). The handshake
/// must complete within `server.header_read_timeout`.
///
/// # Errors
/// As [`serve`].
pub async fn serve_tls(
    listener: TcpListener,
    proxy: SharedProxy,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_on(listener, proxy, shutdown, Transport::Tls).await
}

/// Cleartext HTTP or HTTPS on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    Tls,
}

async fn serve_on(
    listener: TcpListener,
    proxy: SharedProxy,
    shutdown: impl Future<Output = ()>,
    transport: Transport,
) -> std::io::Result<()> {
    let mut limit = proxy.load().server.max_connections;
    let permits = Arc::new(Semaphore::new(limit));
    // Permits still to be withdrawn after `max_connections` was lowered while they were held.
    let mut withdrawal_debt = 0usize;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let per_client = PerClient::default();
    tokio::pin!(shutdown);

    loop {
        let max_connections = proxy.load().server.max_connections;
        if max_connections != limit {
            if max_connections > limit {
                let mut added = max_connections - limit;
                let repaid = added.min(withdrawal_debt);
                withdrawal_debt -= repaid;
                added -= repaid;
                permits.add_permits(added);
            } else {
                withdrawal_debt += limit - max_connections;
            }
            limit = max_connections;
        }
        if withdrawal_debt > 0 {
            withdrawal_debt -= permits.forget_permits(withdrawal_debt);
        }
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = accept(&listener, &permits) => match accepted {
                Ok((stream, peer, permit)) => {
                    let accepted = Accepted { peer, permit };
                    if let Some(connection) = accepted.admit(&proxy, &per_client, &stop_rx) {
                        // Boxed before spawning: the task's set-up moves its future several
                        // times, and the future (with the TLS handshake's state) is large.
                        connections.spawn(Box::pin(connection.start(
                            stream,
                            transport,
                            per_client.clone(),
                        )));
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    // Out of descriptors or memory: back off instead of spinning on the error.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }

    drop(listener);
    let _ = stop_tx.send(true);
    let open = connections.len();
    let grace = proxy.load().server.shutdown_grace.get();
    tracing::info!(open, ?grace, "shutting down: no longer accepting");
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "grace period over: closing remaining connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    // invariant: the semaphore is never closed.
    let permit = Arc::clone(permits)
        .acquire_owned()
        .await
        .expect("semaphore open");
    let (stream, peer) = listener.accept().await?;
    let _ = stream.set_nodelay(true);
    Ok((stream, peer, permit))
}

fn connection_builder(settings: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let header_bytes = settings.max_header_bytes.as_usize();
    // Never `writev(false)`: hyper would then copy body buffers into its own, and the
    // stand-in bytes of a body sent from its file (see [`sendfile`]) with them.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(header_bytes.max(8192))
        .max_headers(settings.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(h2_header_list_limit(header_bytes))
        .max_concurrent_streams(256)
        // RFC 8441: WebSocket over HTTP/2, by extended CONNECT.
        .enable_connect_protocol();
    builder
}

/// The header list size HTTP/2 connections take: twice `server.max_header_bytes`, so that
/// a request past that limit but within this one reaches the request filter and is
/// answered with 414 or 431 (`pipeline::request::check_h2_header_section`). A larger one
/// gets the HTTP/2 layer's own 431 and a stream reset.
fn h2_header_list_limit(max_header_bytes: usize) -> u32 {
    u32::try_from(max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX)
}

/// The hyper connection that serves a client connection's plain requests in turns.
type OneRequestConnection<S, Svc> =
    Pin<Box<http1::Connection<TokioIo<one_request::HyperSide<WatchedIo<S>>>, Svc>>>;

/// hyper's HTTP/1 server for one plain request at a time (`one_request`), set as
/// [`connection_builder`] sets HTTP/1.
fn one_request_builder(settings: &ServerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes.as_usize().max(8192))
        .max_headers(settings.max_headers)
        .keep_alive(true);
    builder
}

/// A connection just accepted, before the per-client limit has had its say.
struct Accepted {
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

impl Accepted {
    /// The connection to serve, or `None` when its address has
    /// `server.max_connections_per_client` open already (the socket is then closed).
    fn admit(
        self,
        proxy: &SharedProxy,
        per_client: &PerClient,
        stop: &watch::Receiver<bool>,
    ) -> Option<Connection> {
        let Accepted { peer, permit } = self;
        // Read now, not before waiting: a reload while idle applies to this one.
        let settings = proxy.load().server.clone();
        let ip = peer.ip().to_canonical();
        let reads_proxy_header = settings
            .proxy_protocol_from
            .iter()
            .any(|net| net.contains(&ip));
        // A balancer speaks for many clients: they are counted once its header names them.
        let limit = if reads_proxy_header {
            0
        } else {
            settings.max_connections_per_client
        };
        let Some(client_slot) = per_client.admit(peer.ip(), limit) else {
            tracing::debug!(%peer, "connection refused: server.max_connections_per_client");
            proxy.load().metrics().client_connections_refused.inc();
            return None;
        };
        Some(Connection {
            proxy: Arc::clone(proxy),
            builder: connection_builder(&settings),
            one_request: one_request_builder(&settings),
            timeouts: Timeouts {
                header_read: settings.header_read_timeout.get(),
                idle: settings.idle_timeout.get(),
                send: settings.send_timeout.get(),
            },
            stop: stop.clone(),
            peer,
            reads_proxy_header,
            client_limit: settings.max_connections_per_client,
            _permit: permit,
            _client_slot: client_slot,
        })
    }
}

/// One accepted client connection and what it needs to serve requests.
struct Connection {
    proxy: SharedProxy,
    builder: auto::Builder<TokioExecutor>,
    /// Serves the plain requests of connections that answer prepared hits, one at a time.
    one_request: http1::Builder,
    timeouts: Timeouts,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
    /// The peer is in `server.proxy_protocol_from`: the connection may start with a PROXY
    /// header naming the real client.
    reads_proxy_header: bool,
    client_limit: usize,
    /// Held for the connection's lifetime: counts against `max_connections`.
    _permit: OwnedSemaphorePermit,
    /// Held for the connection's lifetime: counts against `max_connections_per_client`.
    _client_slot: ClientSlot,
}

/// Open connections per client address, for `server.max_connections_per_client`.
#[derive(Default, Clone)]
struct PerClient(Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>);

/// One connection of a client address; released when dropped.
struct ClientSlot {
    counts: Option<PerClient>,
    address: IpAddr,
}

impl PerClient {
    /// A slot for a new connection from `address`, or `None` when it has `limit` open
    /// already (`limit` 0: no limit, nothing counted).
    fn admit(&self, address: IpAddr, limit: usize) -> Option<ClientSlot> {
        let address = address.to_canonical();
        if limit == 0 {
            return Some(ClientSlot {
                counts: None,
                address,
            });
        }
        let mut counts = self.0.lock();
        let open = counts.entry(address).or_insert(0);
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(ClientSlot {
            counts: Some(self.clone()),
            address,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some(counts) = &self.counts else {
            return;
        };
        let mut counts = counts.0.lock();
        if let Some(open) = counts.get_mut(&self.address) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

impl Connection {
    /// Reads a PROXY header from a trusted balancer (within the head timeout; the client it
    /// names then counts against the per-client limit), then serves cleartext or TLS.
    async fn start(mut self, stream: TcpStream, transport: Transport, per_client: PerClient) {
        if !self.reads_proxy_header {
            // Everyone else's bytes go straight to HTTP (or TLS), with no layer between.
            return self.serve_over(stream, transport).await;
        }
        let peer = self.peer;
        let header = proxy_protocol::read_header(stream);
        let (client, stream) = match tokio::time::timeout(self.timeouts.header_read, header).await {
            Ok(Ok(read)) => read,
            Ok(Err(err)) => return tracing::debug!(%peer, error = %err, "closing connection"),
            Err(_) => {
                return tracing::debug!(%peer, "closing connection: PROXY header not received in time")
            }
        };
        if let Some(client) = client {
            let Some(slot) = per_client.admit(client.ip(), self.client_limit) else {
                tracing::debug!(%client, "connection refused: server.max_connections_per_client");
                self.proxy.load().metrics().client_connections_refused.inc();
                return;
            };
            self._client_slot = slot;
            self.peer = client;
        }
        self.serve_over(stream, transport).await;
    }

    async fn serve_over<S>(self, stream: S, transport: Transport)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + SendfileSocket + Unpin + Send + 'static,
    {
        match transport {
            Transport::Plain => self.run(stream, None).await,
            Transport::Tls => self.run_tls(stream).await,
        }
    }

    /// Completes the TLS handshake (within the head timeout), then serves over it. A
    /// connection that opens with plain HTTP instead gets a 400 that says so (as nginx
    /// answers), not a TLS alert that a client shows as a garbled protocol error.
    async fn run_tls<S>(self, mut stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use tokio::io::AsyncReadExt;
        let peer = self.peer;
        let Some(config) = self.proxy.load().tls.clone() else {
            tracing::warn!(%peer, "TLS connection on a proxy without a TLS configuration");
            return;
        };
        let deadline = tokio::time::Instant::now() + self.timeouts.header_read;
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, stream.read(&mut first)).await {
            Ok(Ok(1)) => {}
            Ok(_) => return tracing::debug!(%peer, "closed before a TLS handshake"),
            Err(_) => return tracing::debug!(%peer, "TLS handshake not completed in time"),
        }
        if first[0].is_ascii_uppercase() {
            // A TLS record starts 0x16; a request line starts with its method's letters.
            return answer_plain_http_on_tls(stream, peer).await;
        }
        let stream = proxy_protocol::Prefixed::new(first.to_vec(), stream);
        let handshake = async {
            match config.single() {
                Some((auth, only)) => {
                    let tls = tokio_rustls::TlsAcceptor::from(only).accept(stream).await?;
                    Ok::<_, std::io::Error>((auth, tls))
                }
                None => {
                    // Sites ask for different client certificates: the SNI says which.
                    let acceptor = rustls::server::Acceptor::default();
                    let start = tokio_rustls::LazyConfigAcceptor::new(acceptor, stream).await?;
                    let (auth, chosen) = config.for_server_name(start.client_hello().server_name());
                    Ok((auth, start.into_stream(chosen).await?))
                }
            }
        };
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok((client_auth, tls))) => {
                // Only a verifying listener has peer certificates: others pay nothing.
                let client_cert = tls.get_ref().1.peer_certificates().and_then(|chain| {
                    let forwarded = self.proxy.load().forwards_client_cert();
                    VerifiedClient::of_chain(chain, forwarded).map(Arc::new)
                });
                let facts = TlsFacts {
                    client_auth,
                    client_cert,
                };
                self.run(tls, Some(facts)).await;
            }
            Ok(Err(err)) => {
                if is_client_certificate_refusal(&err) {
                    self.proxy
                        .load()
                        .metrics()
                        .client_certificates_refused
                        .inc();
                }
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
            }
            Err(_) => tracing::debug!(%peer, "TLS handshake not completed in time"),
        }
    }

    /// Serves requests on `stream`: over TLS when the handshake's `tls` facts are given,
    /// else cleartext.
    async fn run<S>(mut self, stream: S, tls: Option<TlsFacts>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + SendfileSocket + Unpin + Send + 'static,
    {
        let activity = Arc::new(ConnActivity::new());
        let _open = crate::telemetry::metrics::CountedWhile::new(
            &self.proxy.load().metrics().open_connections,
        );
        let interim = Arc::new(InterimLink::default());
        let may_sendfile = self.proxy.load().cache().may_send_files();
        let sendfile = SendfileLink::for_socket(&stream, may_sendfile);
        let peer = self.peer;
        let proxy = Arc::clone(&self.proxy);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let link = Arc::new(ConnectionLink {
            peer,
            scheme,
            tls,
            activity: Arc::clone(&activity),
            interim: Arc::clone(&interim),
            sendfile: sendfile.clone(),
            h2c: parking_lot::Mutex::new(None),
            prepares_hits: scheme == "http" && self.proxy.load().prepared_hits().is_on(),
        });
        let mut io = WatchedIo::new(
            stream,
            Arc::clone(&activity),
            Arc::clone(&interim),
            sendfile,
        );
        io.refuse_request_lines_over(self.proxy.load().server.max_header_bytes.as_usize());
        let service_link = Arc::clone(&link);
        let service = service_fn(move |request: http::Request<Incoming>| {
            let proxy = proxy.load_full();
            let link = Arc::clone(&service_link);
            async move { Ok::<_, Infallible>(serve_request(&proxy, request, &link).await) }
        });
        let (io, read_ahead) = if link.prepares_hits {
            match self.answer_prepared_in_turns(io, &link, &service).await {
                Some(handed_over) => handed_over,
                None => return,
            }
        } else {
            (io, bytes::Bytes::new())
        };
        let io = TokioIo::new(prepared_http1::ReadAhead::new(read_ahead, io));
        // Boxed where it is made: hyper's state for both protocols is kilobytes, and a
        // future holding it inline is copied whole each time it is moved (into the task,
        // into each awaiting future): five copies per connection, a fifth of the
        // instructions of a connection that carries one request.
        let connection = Box::pin(
            self.builder
                .serve_connection_with_upgrades(io, service.clone())
                .into_owned(),
        );
        if !self.supervise(connection, &activity).await {
            return;
        }
        // The HTTP/1.1 part ended in an h2c switch: the rest is HTTP/2.
        let Some(pending) = link.h2c.lock().take() else {
            return;
        };
        let io = match h2c::switch(pending, self.timeouts.header_read).await {
            Ok(io) => io,
            Err(err) => return tracing::debug!(%peer, error = %err, "h2c upgrade failed"),
        };
        let settings = self.proxy.load().server.clone();
        let connection =
            Box::pin(h2_builder(&settings).serve_connection(TokioIo::new(io), service));
        self.supervise(connection, &activity).await;
    }

    /// Answers prepared hits, and serves plain requests with hyper one at a time between
    /// them (`one_request`), under one watchdog; the connection and the bytes read ahead
    /// when hyper is to serve the rest of it, `None` when it is over.
    async fn answer_prepared_in_turns<S, Svc>(
        &mut self,
        io: WatchedIo<S>,
        link: &ConnectionLink,
        service: &Svc,
    ) -> Option<(WatchedIo<S>, bytes::Bytes)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + SendfileSocket + Unpin,
        Svc: hyper::service::HttpService<Incoming> + Clone,
        Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        Svc::ResBody: 'static,
        <Svc::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // One watchdog for every turn: made per turn, its timers were a tenth of the cost
        // a turn added to a miss.
        let mut watchdog = Box::pin(watchdog(&mut self.stop, &link.activity, self.timeouts));
        let turns = one_request::Turns::new(Arc::clone(&link.activity));
        // Made at the first plain request, kept for the next ones.
        let mut one_request = None;
        let mut next = (io, bytes::BytesMut::new());
        loop {
            let handed = Self::answer_prepared(&self.proxy, next, link, watchdog.as_mut());
            match handed.await? {
                prepared_http1::Handed::ToHyper(io, read) => return Some((io, read)),
                prepared_http1::Handed::OneRequest { io, head, rest } => {
                    turns.begin(io, head, rest);
                    let connection = one_request.get_or_insert_with(|| {
                        let io = TokioIo::new(turns.hyper_side());
                        Box::pin(self.one_request.serve_connection(io, service.clone()))
                    });
                    let turn = (connection, &turns);
                    let served = Self::serve_turn(&self.proxy, turn, link, watchdog.as_mut());
                    let served = served.await?;
                    next = (served.io, served.read_ahead);
                }
            }
        }
    }

    /// Answers prepared hits (`prepared_http1`) under the connection's `watchdog` and
    /// shutdown, starting with the bytes in `read`; where the connection goes next.
    async fn answer_prepared<S, W>(
        proxy: &SharedProxy,
        (io, read): (WatchedIo<S>, bytes::BytesMut),
        link: &ConnectionLink,
        watchdog: Pin<&mut W>,
    ) -> Option<prepared_http1::Handed<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + SendfileSocket + Unpin,
        W: Future<Output = Ending>,
    {
        let control = prepared_http1::Control::default();
        let max_head = proxy.load().server.max_header_bytes.as_usize();
        // Boxed: its state would otherwise be part of every connection's future, which is
        // copied whole as it is spawned (a third of the work of a one-request connection).
        let mut answering = Box::pin(prepared_http1::answer(
            io, read, proxy, link, &control, max_head,
        ));
        let ending = tokio::select! {
            biased;
            handed_over = answering.as_mut() => return handed_over,
            ending = watchdog => ending,
        };
        report_ending(proxy, link.peer, ending);
        if matches!(ending, Ending::Idle | Ending::Shutdown) && control.is_busy() {
            // The answer being written is finished; the connection then closes.
            control.stop();
            answering.await;
        }
        None
    }

    /// Runs a turn of `connection`, the hyper connection that serves the connection's plain
    /// requests (`one_request`), under the connection's `watchdog` and shutdown: the
    /// connection back when it may go on after the response.
    async fn serve_turn<S, Svc, W>(
        proxy: &SharedProxy,
        (connection, turns): (
            &mut OneRequestConnection<S, Svc>,
            &one_request::Turns<WatchedIo<S>>,
        ),
        link: &ConnectionLink,
        watchdog: Pin<&mut W>,
    ) -> Option<one_request::Served<WatchedIo<S>>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + SendfileSocket + Unpin,
        Svc: hyper::service::HttpService<Incoming>,
        Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        Svc::ResBody: 'static,
        <Svc::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        W: Future<Output = Ending>,
    {
        let peer = link.peer;
        // Ready with hyper's result if it ended the connection, `None` once the turn is
        // over (hyper idle, waiting for a request only the next turn gives it).
        let turn = std::future::poll_fn(|cx| match connection.as_mut().poll(cx) {
            Poll::Ready(result) => Poll::Ready(Some(result)),
            Poll::Pending if turns.is_over() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        });
        let ended = tokio::select! {
            biased;
            ended = turn => ended,
            ending = watchdog => {
                report_ending(proxy, peer, ending);
                if let Ending::Idle | Ending::Shutdown = ending {
                    // The response being made is finished, saying the connection closes.
                    connection.as_mut().graceful_shutdown();
                    if let Err(err) = connection.as_mut().await {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                }
                return None;
            }
        };
        // hyper ends the connection itself after a response that said `Connection: close`
        // (RFC 9112 §9.6): keep-alive off, it never asks for another request.
        match ended {
            Some(Err(err)) => {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
                return None;
            }
            Some(Ok(())) => return None,
            None => {}
        }
        turns.end()
    }

    /// Runs `connection` under the connection's watchdog (head, idle and send timeouts)
    /// and shutdown; true when it ended by itself without an error.
    async fn supervise<C>(
        &mut self,
        mut connection: Pin<Box<C>>,
        activity: &Arc<ConnActivity>,
    ) -> bool
    where
        C: hyper_util::server::graceful::GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let peer = self.peer;
        let watchdog = watchdog(&mut self.stop, activity, self.timeouts);
        let ending = tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                    return false;
                }
                return true;
            }
            ending = watchdog => ending,
        };
        report_ending(&self.proxy, peer, ending);
        if let Ending::Idle | Ending::Shutdown = ending {
            connection.as_mut().graceful_shutdown();
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        }
        false
    }
}

/// Resolves when the connection should end for want of activity, or for shutdown. Polled
/// only when its timer or the shutdown signal fired, not on every wake of the connection's
/// task (each read and write of each request).
fn watchdog<'a>(
    stop: &'a mut watch::Receiver<bool>,
    activity: &'a ConnActivity,
    timeouts: Timeouts,
) -> woken::PolledWhenWoken<impl Future<Output = Ending> + 'a> {
    woken::PolledWhenWoken::new(async move {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => Ending::Shutdown,
            ending = activity.watch(timeouts) => ending,
        }
    })
}

/// Logs (and counts) why the watchdog ends a connection.
fn report_ending(proxy: &SharedProxy, peer: SocketAddr, ending: Ending) {
    match ending {
        Ending::HeaderTimeout => {
            // A half-sent request head gets no answer: the bytes so far are not a request.
            tracing::debug!(%peer, "closing connection: request head not received in time");
        }
        Ending::SendTimeout => {
            // Dropping the connection aborts the response: the client sees it cut short.
            tracing::info!(%peer, "closing connection: the client read nothing for server.send_timeout");
            proxy.load().metrics().client_send_timeouts.inc();
        }
        Ending::Idle | Ending::Shutdown => {}
    }
}

/// The HTTP/2 server of a connection switched by h2c, set as [`connection_builder`] sets
/// HTTP/2 on the listener.
fn h2_builder(settings: &ServerConfig) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let header_bytes = settings.max_header_bytes.as_usize();
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(h2_header_list_limit(header_bytes))
        .max_concurrent_streams(256)
        .enable_connect_protocol();
    builder
}

/// What a connection's TLS handshake settled about its client.
struct TlsFacts {
    /// What the handshake asked of the client.
    client_auth: VerifiedUnder,
    /// The certificate the client presented and we verified.
    client_cert: Option<Arc<VerifiedClient>>,
}

/// What a request's service needs of its connection.
struct ConnectionLink {
    peer: SocketAddr,
    scheme: &'static str,
    /// What the TLS handshake settled (`None`: cleartext).
    tls: Option<TlsFacts>,
    activity: Arc<ConnActivity>,
    interim: Arc<InterimLink>,
    /// Set on cleartext connections that may send disk hits from their file.
    sendfile: Option<Arc<SendfileLink>>,
    /// An h2c upgrade accepted by a request: the connection goes on as HTTP/2 when its
    /// HTTP/1.1 part ends.
    h2c: parking_lot::Mutex<Option<h2c::Pending>>,
    /// Cleartext, with `server.prepared_hits` on: the pipeline's plain hits are prepared
    /// for the connections that answer them.
    prepares_hits: bool,
}

/// One request through the pipeline, its response body tracked for the connection's
/// watchdog and the access log.
async fn serve_request(
    proxy: &Arc<Proxy>,
    mut request: http::Request<Incoming>,
    link: &ConnectionLink,
) -> http::Response<ResponseTracker> {
    if link.scheme == "http" {
        if let Some((pending, switching)) = h2c::accept(&mut request) {
            *link.h2c.lock() = Some(pending);
            let inflight = link.activity.request_started(false);
            return switching
                .map(|()| ResponseTracker::unrecorded(crate::body::Body::empty(), inflight));
        }
    }
    let is_http1 = request.version() < http::Version::HTTP_2;
    let has_conflicting_framing = link.activity.take_framing_conflict();
    let inflight = link
        .activity
        .request_started(request.version() == http::Version::HTTP_2);
    let interim = interim_relay(&link.interim, &request).await;
    // Interim responses end before the final one starts, or when the client goes away.
    let close_interim = scopeguard::guard(interim.as_ref().map(|r| Arc::clone(&r.link)), |link| {
        if let Some(link) = link {
            link.close_open();
        }
    });
    let downstream = pipeline::DownstreamFacts {
        peer: link.peer,
        scheme: link.scheme,
        has_conflicting_framing,
        has_unknown_transfer_coding: !pipeline::has_only_chunked_coding(request.headers()),
        interim,
        client_cert: link.tls.as_ref().and_then(|tls| tls.client_cert.clone()),
        client_auth: link.tls.as_ref().map(|tls| Arc::clone(&tls.client_auth)),
    };
    let shape = link
        .prepares_hits
        .then(|| pipeline::prepared::Shape::of_request(&request))
        .flatten();
    // Boxed: hyper moves the service's future into its connection state by value, and
    // the whole pipeline's state would otherwise be copied with it on every request.
    let (response, record) = Box::pin(pipeline::handle(proxy, request, downstream)).await;
    drop(close_interim);
    let (head, body) = response.into_parts();
    if let Some(shape) = shape {
        proxy.prepared_hits().remember(proxy, shape, &head, &record);
    }
    let sendfile = link.sendfile.as_ref().filter(|_| is_http1);
    let body = sendfile::from_verified_file(body, sendfile, proxy.metrics());
    // A body in memory knows its length; only a streamed one needs the header.
    let declared_len = http_body::Body::size_hint(&body)
        .exact()
        .or_else(|| crate::cache::entry::content_length(&head.headers));
    let body = ResponseTracker::new(body, declared_len, record, inflight);
    http::Response::from_parts(head, body)
}

/// What lets the request relay the origin's interim responses: HTTP/1.1 only (RFC 9110
/// §15.2 forbids 1xx to HTTP/1.0 clients; hyper's HTTP/2 server cannot send them).
async fn interim_relay(
    link: &Arc<InterimLink>,
    request: &http::Request<Incoming>,
) -> Option<InterimRelay> {
    if request.version() != http::Version::HTTP_11 {
        return None;
    }
    // An HTTP/1 connection's service runs in the connection's own task: this waker makes
    // hyper flush, which writes the queued heads.
    let connection_task = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
    Some(InterimRelay {
        link: Arc::clone(link),
        connection_task,
    })
}

/// The handshake failed on the client's certificate: none where one is required, or one
/// the configured CAs did not issue, expired, or revoked.
fn is_client_certificate_refusal(err: &std::io::Error) -> bool {
    let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    matches!(
        tls,
        rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)
    )
}

/// The answer to a plain HTTP request on a TLS listener; the connection is then closed.
async fn answer_plain_http_on_tls<S>(mut stream: S, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let answer = refusals::closing_answer(
        "400 Bad Request",
        "400 Bad Request: this port speaks HTTPS; the request was sent as plain HTTP\n",
    );
    tracing::debug!(%peer, "plain HTTP on a TLS listener: answered 400");
    refusals::refuse(&mut stream, &answer, peer).await;
}
