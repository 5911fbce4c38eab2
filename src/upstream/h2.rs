//! HTTP/2 to origins (RFC 9113): multiplexed connections to each origin server, shared by
//! every request to it: the first opened on first use, another whenever each open one
//! carries `upstream.max_streams_per_connection` streams, and a closed one replaced.
//!
//! hyper's pooled client addresses an HTTP/2 request to whatever authority its URI names,
//! and its pool is keyed by that authority. outpost dials a pool member by its address
//! while the origin must see the site's host in `:authority` (RFC 9113 §8.3.1), so this
//! module dials the member itself and sends, on that connection, a request whose URI
//! carries the authority the `Host` field named.
//!
//! Which version a server speaks is configured ([`OriginProtocol`]): `h2` is HTTP/2 by
//! ALPN over TLS and by prior knowledge over cleartext (§3.3); `auto` offers `h2` and
//! `http/1.1` by ALPN and remembers a server that picks HTTP/1.1, whose requests then go
//! through the HTTP/1.1 pool.
//!
//! Streams per server are capped by a semaphore (`upstream.max_streams_per_origin`), and
//! streams per connection by one semaphore each (`upstream.max_streams_per_connection`);
//! a stream's permits are held until its response body is done, so a slow body still
//! counts. A server's own SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §5.1.2) lowers a
//! connection's number when it is lower ([`super::h2_settings`]: hyper does not say it),
//! so that such a server gets another connection rather than requests waiting on a full
//! one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::h2_settings::{SettingsWatch, StreamPlaces};
use super::{classify_failure, OriginBody};
use crate::body::Body;
use crate::config::OriginProtocol;
use crate::error::ProxyError;
use crate::limit::Limiter;

/// How long an idle HTTP/2 connection waits between pings, and how long for the answer:
/// a server that vanished without a GOAWAY is noticed before a request waits on it.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 connections to every origin server that speaks it.
pub struct H2Origins {
    servers: Mutex<HashMap<String, Arc<Server>>>,
    /// ALPN `h2` only.
    tls_h2: Arc<rustls::ClientConfig>,
    /// ALPN `h2`, then `http/1.1`.
    tls_auto: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    connections: Arc<Limiter>,
    max_streams: usize,
    max_streams_per_connection: usize,
}

/// One origin server's connections and stream cap.
struct Server {
    /// Open connections, oldest first. Locked across opening one, so that requests that
    /// find every connection full open one between them, not one each.
    connections: tokio::sync::Mutex<Vec<Connection>>,
    streams: Arc<Semaphore>,
    /// `auto` only: the server chose HTTP/1.1 by ALPN.
    speaks_http1: AtomicBool,
}

/// One HTTP/2 connection and its streams' places.
struct Connection {
    sender: SendRequest<Body>,
    streams: Arc<StreamPlaces>,
}

/// A stream's places under the per-server and per-connection caps, held with its response
/// body until it is dropped.
struct StreamSlot {
    _server: OwnedSemaphorePermit,
    _connection: OwnedSemaphorePermit,
}

/// What [`H2Origins::send`] did with a request.
pub enum H2Sent {
    Done(Result<Response<OriginBody>, ProxyError>),
    /// The server speaks HTTP/1.1 (`auto`): send the request that way.
    UseHttp1(Request<Body>),
}

/// What opening a connection gave.
enum Opened {
    H2(SendRequest<Body>, Arc<StreamPlaces>),
    Http1,
}

impl H2Origins {
    pub fn new(
        tls: &rustls::ClientConfig,
        connect_timeout: Duration,
        connections: Arc<Limiter>,
        max_streams: usize,
        max_streams_per_connection: usize,
    ) -> H2Origins {
        let with_alpn = |protocols: &[&[u8]]| {
            let mut config = tls.clone();
            config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        };
        H2Origins {
            servers: Mutex::new(HashMap::new()),
            tls_h2: with_alpn(&[b"h2"]),
            tls_auto: with_alpn(&[b"h2", b"http/1.1"]),
            connect_timeout,
            connections,
            max_streams: max_streams.max(1),
            max_streams_per_connection: max_streams_per_connection.max(1),
        }
    }

    /// Whether `protocol` sends requests to `uri`'s server through this module.
    pub fn applies(protocol: OriginProtocol, uri: &Uri) -> bool {
        match protocol {
            OriginProtocol::Http1 => false,
            OriginProtocol::H2 => true,
            OriginProtocol::Auto => uri.scheme() == Some(&Scheme::HTTPS),
        }
    }

    /// Sends `request` (its URI absolute, naming the server to dial) over the server's
    /// HTTP/2 connection, waiting up to `header_timeout` for a stream, the connection and
    /// the response head together.
    pub async fn send(
        &self,
        request: Request<Body>,
        origin: &str,
        protocol: OriginProtocol,
        header_timeout: Duration,
    ) -> H2Sent {
        let Some(authority) = request.uri().authority().cloned() else {
            return H2Sent::Done(Err(ProxyError::Internal("origin URI without host".into())));
        };
        let is_tls = request.uri().scheme() == Some(&Scheme::HTTPS);
        let key = format!("{}://{}", if is_tls { "https" } else { "http" }, authority);
        let server = self.server(&key);
        if server.speaks_http1.load(Relaxed) {
            return H2Sent::UseHttp1(request);
        }
        let deadline = tokio::time::Instant::now() + header_timeout;
        // A stream's place and the connection first: opening it tells, by ALPN in `auto`,
        // whether the server speaks HTTP/2 at all, before the request is committed here.
        let opened = async {
            let permit = Arc::clone(&server.streams)
                .acquire_owned()
                .await
                .map_err(|_| ProxyError::Internal("stream limit closed".into()))?;
            let stream = self
                .stream(&server, &authority, is_tls, protocol, origin)
                .await?;
            Ok::<_, ProxyError>(stream.map(|(sender, connection)| {
                let slot = StreamSlot {
                    _server: permit,
                    _connection: connection,
                };
                (slot, sender)
            }))
        };
        let (slot, mut sender) = match tokio::time::timeout_at(deadline, opened).await {
            Ok(Ok(Some(stream))) => stream,
            Ok(Ok(None)) => return H2Sent::UseHttp1(request),
            Ok(Err(err)) => return H2Sent::Done(Err(err)),
            Err(_elapsed) => return H2Sent::Done(Err(timed_out(origin))),
        };
        let exchange = async {
            sender
                .ready()
                .await
                .map_err(|err| connection_lost(&server, &err, origin))?;
            sender
                .send_request(for_h2(request))
                .await
                .map_err(|err| connection_lost(&server, &err, origin))
        };
        H2Sent::Done(match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(response)) => Ok(response.map(|body| OriginBody::incoming(body).holding(slot))),
            Ok(Err(err)) => Err(err),
            Err(_elapsed) => Err(timed_out(origin)),
        })
    }

    fn server(&self, key: &str) -> Arc<Server> {
        let mut servers = self.servers.lock();
        if let Some(server) = servers.get(key) {
            return Arc::clone(server);
        }
        let server = Arc::new(Server {
            connections: tokio::sync::Mutex::new(Vec::new()),
            streams: Arc::new(Semaphore::new(self.max_streams)),
            speaks_http1: AtomicBool::new(false),
        });
        servers.insert(key.to_string(), Arc::clone(&server));
        server
    }

    /// Lets go of one connection that carries no stream, to any server, so that its slot
    /// of the connection caps goes to a connection waiting for one (see
    /// [`crate::limit::Limiter::on_total_shortage`]): hyper closes a connection once its
    /// last handle is dropped. A server whose connections are being looked at or opened
    /// is skipped. Whether one was let go.
    pub fn close_an_idle_connection(&self) -> bool {
        let servers: Vec<Arc<Server>> = self.servers.lock().values().cloned().collect();
        for server in servers {
            let Ok(mut connections) = server.connections.try_lock() else {
                continue;
            };
            let idle = connections
                .iter()
                .position(|connection| connection.streams.is_idle());
            if let Some(at) = idle {
                drop(connections.remove(at));
                return true;
            }
        }
        false
    }

    /// A place for a stream on an open connection with room, or on a new one (or on an
    /// open one that frees a place before the new one is open); `None` when the server
    /// speaks HTTP/1.1.
    async fn stream(
        &self,
        server: &Server,
        authority: &Authority,
        is_tls: bool,
        protocol: OriginProtocol,
        origin: &str,
    ) -> Result<Option<(SendRequest<Body>, OwnedSemaphorePermit)>, ProxyError> {
        let mut connections = server.connections.lock().await;
        connections.retain(|connection| !connection.sender.is_closed());
        // The oldest with room: as the load falls, newer ones drain, and their servers
        // close them once idle (hyper sends no pings on an idle connection).
        for connection in connections.iter() {
            if let Ok(place) = Arc::clone(&connection.streams.semaphore).try_acquire_owned() {
                return Ok(Some((connection.sender.clone(), place)));
            }
        }
        // Every open connection is full: open another, unless a place frees on one of them
        // first (the connection caps may make opening wait in their queue).
        let freed = connections
            .iter()
            .map(|connection| {
                let sender = connection.sender.clone();
                let streams = Arc::clone(&connection.streams.semaphore);
                Box::pin(async move { (sender, streams.acquire_owned().await) })
            })
            .collect::<Vec<_>>();
        let any_freed = async {
            if freed.is_empty() {
                std::future::pending::<()>().await;
            }
            futures_util::future::select_all(freed).await.0
        };
        let opened = tokio::select! {
            opened = self.open(authority, is_tls, protocol, origin) => opened?,
            (sender, place) = any_freed => {
                let place = place
                    .map_err(|_| ProxyError::Internal("stream limit closed".into()))?;
                return Ok(Some((sender, place)));
            }
        };
        match opened {
            Opened::H2(sender, streams) => {
                let place = Arc::clone(&streams.semaphore)
                    .try_acquire_owned()
                    .map_err(|_| ProxyError::Internal("a new connection without room".into()))?;
                connections.push(Connection {
                    sender: sender.clone(),
                    streams,
                });
                Ok(Some((sender, place)))
            }
            Opened::Http1 => {
                server.speaks_http1.store(true, Relaxed);
                Ok(None)
            }
        }
    }

    async fn open(
        &self,
        authority: &Authority,
        is_tls: bool,
        protocol: OriginProtocol,
        origin: &str,
    ) -> Result<Opened, ProxyError> {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority
            .port_u16()
            .unwrap_or(if is_tls { 443 } else { 80 });
        let slot = self
            .connections
            .admit(&authority.as_str().to_ascii_lowercase())
            .await
            .map_err(|_| ProxyError::LimitReached {
                what: "origin connection",
            })?;
        let tcp = self.dial(host, port, origin).await?;
        let _ = tcp.set_nodelay(true);
        let streams = StreamPlaces::new(self.max_streams_per_connection);
        let sender = if is_tls {
            let config = match protocol {
                OriginProtocol::Auto => Arc::clone(&self.tls_auto),
                _ => Arc::clone(&self.tls_h2),
            };
            let name = ServerName::try_from(host.to_string()).map_err(|_| {
                ProxyError::Internal(format!("origin host {host} is not a TLS server name"))
            })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|err| classify_failure(&err, origin, true))?;
            let chose_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            if !chose_h2 {
                if protocol == OriginProtocol::Auto {
                    return Ok(Opened::Http1);
                }
                return Err(ProxyError::UpstreamProtocol {
                    origin: origin.to_string(),
                    detail: "the origin did not choose h2 by ALPN".to_string(),
                });
            }
            handshake(
                TokioIo::new(SettingsWatch::new(tls, &streams)),
                slot,
                origin,
            )
            .await?
        } else {
            handshake(
                TokioIo::new(SettingsWatch::new(tcp, &streams)),
                slot,
                origin,
            )
            .await?
        };
        Ok(Opened::H2(sender, streams))
    }

    async fn dial(&self, host: &str, port: u16, origin: &str) -> Result<TcpStream, ProxyError> {
        let connect = async {
            let addresses: Vec<_> = tokio::net::lookup_host((host, port))
                .await
                .map_err(|err| ProxyError::DnsError {
                    origin: origin.to_string(),
                    detail: err.to_string(),
                })?
                .collect();
            let mut last = None;
            for address in addresses {
                match TcpStream::connect(address).await {
                    Ok(stream) => return Ok(stream),
                    Err(err) => last = Some(err),
                }
            }
            Err(match last {
                Some(err) => classify_failure(&err, origin, true),
                None => ProxyError::DnsError {
                    origin: origin.to_string(),
                    detail: format!("{host} has no address"),
                },
            })
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(ProxyError::ConnectionTimeout {
                    origin: origin.to_string(),
                })
            })
    }
}

/// The HTTP/2 handshake on `io`; the connection runs on its own task, holding its slot of
/// the connection caps until it ends.
async fn handshake<T>(
    io: T,
    slot: crate::limit::Admission,
    origin: &str,
) -> Result<SendRequest<Body>, ProxyError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .handshake(io)
        .await
        .map_err(|err| ProxyError::UpstreamProtocol {
            origin: origin.to_string(),
            detail: format!("HTTP/2 handshake: {err}"),
        })?;
    let origin = origin.to_string();
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(err) = connection.await {
            tracing::debug!(%origin, error = %err, "HTTP/2 connection to the origin ended");
        }
    });
    Ok(sender)
}

fn timed_out(origin: &str) -> ProxyError {
    ProxyError::ResponseHeaderTimeout {
        origin: origin.to_string(),
    }
}

/// A failed exchange: forget connections that are closed, so the next request opens one.
fn connection_lost(server: &Server, err: &hyper::Error, origin: &str) -> ProxyError {
    if let Ok(mut connections) = server.connections.try_lock() {
        connections.retain(|connection| !connection.sender.is_closed());
    }
    classify_failure(err, origin, false)
}

/// The request as HTTP/2 carries it: the authority of the `Host` field (what the origin
/// is to serve) in the URI, for `:authority`, and no `Host` beside it (RFC 9113 §8.3.1).
/// Connection-specific fields were removed before (§8.2.2).
fn for_h2(request: Request<Body>) -> Request<Body> {
    let (mut parts, body) = request.into_parts();
    if let Some(host) = parts.headers.remove(HOST) {
        let authority = host
            .to_str()
            .ok()
            .and_then(|text| text.parse::<Authority>().ok());
        if let Some(authority) = authority {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.authority = Some(authority);
            if let Ok(rebuilt) = Uri::from_parts(uri) {
                parts.uri = rebuilt;
            }
        }
    }
    parts.version = http::Version::HTTP_2;
    Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9113 §8.3.1: the origin sees the Host field's authority in `:authority`, while
    /// the connection goes to the member's address.
    #[test]
    fn the_host_field_becomes_the_authority() {
        let request = Request::get("http://10.0.0.7:8080/a?b=1")
            .header(HOST, "www.example.com")
            .body(Body::empty())
            .unwrap();
        let sent = for_h2(request);
        assert_eq!(sent.uri(), "http://www.example.com/a?b=1");
        assert!(sent.headers().get(HOST).is_none());
        assert_eq!(sent.version(), http::Version::HTTP_2);
    }

    #[test]
    fn auto_applies_to_tls_servers_only() {
        let tls: Uri = "https://origin.example/".parse().unwrap();
        let clear: Uri = "http://origin.example/".parse().unwrap();
        assert!(H2Origins::applies(OriginProtocol::Auto, &tls));
        assert!(!H2Origins::applies(OriginProtocol::Auto, &clear));
        assert!(H2Origins::applies(OriginProtocol::H2, &clear));
        assert!(!H2Origins::applies(OriginProtocol::Http1, &tls));
    }
}
