//! The origin side: HTTP/1.1 connections (plain and TLS via rustls with the `ring`
//! provider) pooled per server and driven by the tasks that wait on them ([`http1`]),
//! multiplexed HTTP/2 connections for origins configured to speak it ([`h2`]), their
//! timeouts, and the translation of their failures into [`ProxyError`]s that say what went
//! wrong (refused, timed out, reset, bad TLS).
//!
//! Which site's origin a request goes to is `pipeline::route`'s decision, which server of
//! that origin's pool is [`pool`]'s, and which headers it carries is
//! `pipeline::forwarding`'s; [`Upstream`] moves the request to the server and reports.
//! Bodies stream in both directions: nothing here buffers a body.
//!
//! One retry: an origin that closes an idle keep-alive connection just as a request goes
//! out on it (Node and Apache close after 5 s idle) fails that exchange with nothing of a
//! response received. An idempotent request (RFC 9110 §9.2.2) whose body is in memory is
//! then sent once more, on a connection opened for it, never a pooled one that may be just
//! as stale. Other requests get the error: the origin may have acted on them.

pub mod connector;
pub mod h2;
pub mod h2_settings;
pub mod http1;
pub mod pool;

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::{Config, OriginProtocol, PoolConfig, UpstreamConfig};
use crate::error::ProxyError;
use crate::limit::{Bounds, Limiter, Refused};
use connector::Counted;
use h2::{H2Origins, H2Sent};
use http1::{DrivenBody, Http1Origins};

/// Why the upstream client could not be built (a bad CA file or client certificate).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    /// `setting` is `upstream.ca_file` or a pool's (`pools[NAME].ca_file`).
    #[error("{setting} {path}: {message}")]
    CaFile {
        setting: String,
        path: String,
        message: String,
    },
    /// `setting` is `upstream.client_cert` or `upstream.client_key`, or a pool's.
    #[error("{setting} {path}: {message}")]
    ClientCert {
        setting: String,
        path: String,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// The clients every request to every origin goes through.
#[derive(Clone)]
pub struct Upstream {
    /// HTTP/1.1 exchanges, their connections pooled and driven by the tasks that wait on
    /// them.
    http1: Arc<Http1Origins>,
    /// Upgrades (tunnels): hyper hands an upgraded connection over only from a connection
    /// task, which this client runs; never pooled, as an upgraded connection is not reused.
    upgrades: Client<Counted<HttpsConnector<HttpConnector>>, Body>,
    /// Connections open to origins, in all and per origin (see [`connector`]).
    connections: Arc<Limiter>,
    h2: Arc<H2Origins>,
    /// The largest response head accepted (the origin read buffer): see
    /// [`Upstream::refuse_large_head`].
    max_response_head: usize,
}

/// An origin's response body, unread; it holds what counts it as work in progress (over
/// HTTP/2 its stream's places under the stream caps, in a pool its server's outstanding
/// count) until it is dropped. A body already read whole (a mirror's index
/// document after rewriting, an artifact after its digest was checked) goes on as bytes.
pub struct OriginBody {
    source: OriginSource,
    /// Held, never read, until the body is done (see [`OriginBody::holding`]).
    held: Option<Box<dyn Send + Sync>>,
}

enum OriginSource {
    Incoming(Incoming),
    /// HTTP/1.1, with the connection it drives as it is read.
    Driven(DrivenBody),
    /// Taken on the first poll.
    Read(Option<bytes::Bytes>),
    /// The origin's body passed through a check on its way (a mirror's digest check of an
    /// artifact too large to hold).
    Checked(http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, crate::body::BoxError>),
}

impl OriginBody {
    fn of(source: OriginSource) -> OriginBody {
        OriginBody { source, held: None }
    }

    fn incoming(incoming: Incoming) -> OriginBody {
        OriginBody::of(OriginSource::Incoming(incoming))
    }

    /// A body the origin sent that was read whole.
    pub fn read(bytes: bytes::Bytes) -> OriginBody {
        OriginBody::of(OriginSource::Read(Some(bytes)))
    }

    /// The origin's body as `check` passes it on; an error it raises ends the body as an
    /// error (nothing is stored, the client's transfer is aborted).
    pub fn checked<B>(check: B) -> OriginBody
    where
        B: http_body::Body<Data = bytes::Bytes, Error = crate::body::BoxError> + Send + 'static,
    {
        use http_body_util::BodyExt;
        OriginBody::of(OriginSource::Checked(check.boxed_unsync()))
    }

    /// This body, keeping `guard` alive until it is dropped (read to its end, or given up).
    #[must_use]
    pub fn holding(mut self, guard: impl Send + Sync + 'static) -> OriginBody {
        self.held = Some(match self.held.take() {
            Some(earlier) => Box::new((earlier, guard)),
            None => Box::new(guard),
        });
        self
    }
}

impl http_body::Body for OriginBody {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match &mut self.source {
            OriginSource::Incoming(incoming) => std::pin::Pin::new(incoming)
                .poll_frame(cx)
                .map_err(Into::into),
            OriginSource::Driven(driven) => std::pin::Pin::new(driven)
                .poll_frame(cx)
                .map_err(Into::into),
            OriginSource::Read(bytes) => {
                std::task::Poll::Ready(bytes.take().map(|b| Ok(http_body::Frame::data(b))))
            }
            OriginSource::Checked(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            OriginSource::Incoming(incoming) => incoming.is_end_stream(),
            OriginSource::Driven(driven) => driven.is_end_stream(),
            OriginSource::Read(bytes) => bytes.is_none(),
            OriginSource::Checked(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.source {
            OriginSource::Incoming(incoming) => incoming.size_hint(),
            OriginSource::Driven(driven) => driven.size_hint(),
            OriginSource::Read(bytes) => {
                http_body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            OriginSource::Checked(body) => body.size_hint(),
        }
    }
}

impl From<OriginBody> for Body {
    fn from(body: OriginBody) -> Body {
        match (body.source, body.held) {
            // Read whole: nothing is left to count.
            (OriginSource::Read(bytes), _) => Body::full(bytes.unwrap_or_default()),
            // Nothing to carry: no allocation.
            (OriginSource::Checked(checked), None) => Body::Boxed(checked),
            (OriginSource::Incoming(incoming), None) => Body::Incoming(incoming),
            (source, held) => Body::boxed(OriginBody { source, held }),
        }
    }
}

impl Upstream {
    /// # Errors
    /// [`UpstreamSetupError`] when `ca_file` cannot be read or holds no certificate, or
    /// `client_cert` and `client_key` are not a readable certificate chain and its key.
    pub fn new(settings: &Config) -> Result<Upstream, UpstreamSetupError> {
        let config = &settings.upstream;
        let connections = Arc::new(Limiter::new(Bounds {
            total: config.max_connections,
            per_peer: config.max_connections_per_origin,
            queue: config.connection_queue,
            wait: config.connection_queue_timeout.get(),
        }));
        Upstream::build(settings, &OriginTls::of_upstream(config), connections)
    }

    /// The clients of a pool that sets TLS of its own (`ca_file`, `client_cert`): their own
    /// connections (a connection made with one pool's certificate is never another's),
    /// under this client's connection caps. `None` when the pool sets none.
    ///
    /// # Errors
    /// As [`Upstream::new`], for the pool's files.
    pub fn for_pool(
        &self,
        settings: &Config,
        pool: &PoolConfig,
    ) -> Result<Option<Upstream>, UpstreamSetupError> {
        if !pool.has_own_tls() {
            return Ok(None);
        }
        let tls = OriginTls::of_pool(&settings.upstream, pool);
        Upstream::build(settings, &tls, Arc::clone(&self.connections)).map(Some)
    }

    fn build(
        settings: &Config,
        origin_tls: &OriginTls<'_>,
        connections: Arc<Limiter>,
    ) -> Result<Upstream, UpstreamSetupError> {
        let config = &settings.upstream;
        let read_buffer = settings.origin_read_buffer().as_usize();
        let tls = origin_tls.client_config()?;
        let h2 = Arc::new(H2Origins::new(
            &tls,
            config.connect_timeout.get(),
            Arc::clone(&connections),
            config.max_streams_per_origin,
            config.max_streams_per_connection,
        ));
        let https = https_connector(tls, Some(config.connect_timeout.get()));
        let counted = Counted::new(https, Arc::clone(&connections));
        let upgrades = Client::builder(TokioExecutor::new())
            .http1_max_buf_size(read_buffer)
            // As in `Http1Origins`: RFC 9112 §5.1 and §5.2's leniencies for old origins.
            .http1_allow_spaces_after_header_name_in_responses(true)
            .http1_allow_obsolete_multiline_headers_in_responses(true)
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(0)
            // The client would otherwise rewrite Host from the URI; routing decides it.
            .set_host(false)
            .build(counted.clone());
        let http1 = Arc::new(Http1Origins::new(
            counted,
            read_buffer,
            config.pool_max_idle_per_host,
            config.pool_idle_timeout.get(),
            config.connect_timeout.get(),
        ));
        let (pool, multiplexed) = (Arc::downgrade(&http1), Arc::downgrade(&h2));
        connections.on_total_shortage(move || {
            pool.upgrade().is_some_and(|pool| pool.close_longest_idle())
                || multiplexed
                    .upgrade()
                    .is_some_and(|multiplexed| multiplexed.close_an_idle_connection())
        });
        Ok(Upstream {
            http1,
            upgrades,
            connections,
            h2,
            max_response_head: read_buffer,
        })
    }

    /// The connection caps every connection to an origin is admitted under.
    pub(crate) fn limiter(&self) -> &Arc<Limiter> {
        &self.connections
    }

    /// Connections to origins open now (pooled idle ones included), and the most there have
    /// been at once.
    pub fn connections_in_use(&self) -> (usize, usize) {
        (self.connections.in_use(), self.connections.high_water())
    }

    /// Connections waiting for a place under the connection caps now.
    pub fn connections_waiting(&self) -> usize {
        self.connections.waiting()
    }

    /// Sends `request` (its URI absolute, pointing at the origin) in the HTTP version
    /// `protocol` says and waits up to `header_timeout` for the response head (each
    /// attempt). The response body is returned unread, to be streamed; it holds one of the
    /// origin's connection slots (over HTTP/2, a stream) until it is dropped. An idempotent
    /// request with an in-memory body is sent a second time, on a new connection, when the
    /// first attempt ended before any of the response arrived (see the module doc).
    ///
    /// # Errors
    /// In [`Sent::result`], a [`ProxyError`] naming `origin` and the kind of failure;
    /// [`ProxyError::LimitReached`] when a new connection is needed and the connection caps
    /// and their queue are full.
    ///
    /// # Cancellation
    /// Dropping the future drops the connection attempt or the in-flight exchange; a
    /// connection that was mid-exchange is not returned to the pool.
    pub async fn send(
        &self,
        request: http::Request<Body>,
        origin: &str,
        protocol: OriginProtocol,
        header_timeout: Duration,
    ) -> Sent {
        let replay = replay_copy(&request);
        let first = self
            .send_once(request, origin, protocol, header_timeout, false)
            .await;
        let (result, attempts) = match (first, replay) {
            (Err(ProxyError::ResponseIncomplete { .. }), Some(again)) => {
                let second = self.send_once(again, origin, protocol, header_timeout, true);
                (second.await, 2)
            }
            (result, _) => (result, 1),
        };
        Sent {
            result: result.and_then(|response| self.refuse_large_head(response, origin)),
            attempts,
        }
    }

    /// A response whose head is larger than the origin read buffer is refused, whatever
    /// protocol brought it: hyper's own limit on HTTP/1.1 holds only when the head arrives
    /// in several reads (a head that arrives in one read past the limit is taken whole),
    /// so the same origin's 200 KB head was forwarded one time and refused the next; and
    /// HTTP/2 allows header lists of megabytes.
    fn refuse_large_head(
        &self,
        response: http::Response<OriginBody>,
        origin: &str,
    ) -> Result<http::Response<OriginBody>, ProxyError> {
        // As HTTP/1.1 spells it: the status line, each `name: value` line, the blank line.
        const STATUS_LINE: usize = "HTTP/1.1 200 OK\r\n".len();
        let mut size = STATUS_LINE + 2;
        for (name, value) in response.headers() {
            size += name.as_str().len() + value.len() + 4;
            if size > self.max_response_head {
                return Err(ProxyError::ResponseHeaderTooLarge {
                    origin: origin.to_string(),
                });
            }
        }
        Ok(response)
    }

    /// One try, over HTTP/2 or HTTP/1.1 as `protocol` and the server decide; `fresh`: on a
    /// connection opened for it (HTTP/2 reopens a closed connection anyway).
    async fn send_once(
        &self,
        request: http::Request<Body>,
        origin: &str,
        protocol: OriginProtocol,
        header_timeout: Duration,
        fresh: bool,
    ) -> Result<http::Response<OriginBody>, ProxyError> {
        // An Upgrade is an HTTP/1.1 mechanism (RFC 9113 §8.6): tunnels always go that way.
        let is_upgrade = request.headers().contains_key(http::header::UPGRADE);
        let request = if !is_upgrade && H2Origins::applies(protocol, request.uri()) {
            // Boxed: the HTTP/2 exchange's future is about 9 KB, and unboxed it would size
            // every origin request's future (each fill's included), which is moved by value.
            let sent = Box::pin(self.h2.send(request, origin, protocol, header_timeout));
            match sent.await {
                H2Sent::Done(result) => return result,
                H2Sent::UseHttp1(request) => request,
            }
        } else {
            request
        };
        if is_upgrade {
            return self.upgrade(request, origin, header_timeout).await;
        }
        match tokio::time::timeout(header_timeout, self.http1.send(request, origin, fresh)).await {
            Ok(result) => result
                .map(|response| response.map(|body| OriginBody::of(OriginSource::Driven(body)))),
            Err(_elapsed) => Err(ProxyError::ResponseHeaderTimeout {
                origin: origin.to_string(),
            }),
        }
    }

    /// A health check: GET `url` with `host`, the status if a whole response arrived
    /// within `timeout`.
    ///
    /// # Errors
    /// The failure, as for a request.
    pub async fn probe(
        &self,
        url: &str,
        host: &str,
        protocol: OriginProtocol,
        timeout: Duration,
    ) -> Result<http::StatusCode, ProxyError> {
        use http_body_util::BodyExt;
        let request = http::Request::get(url)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "outpost-health-check")
            .body(Body::empty())
            .map_err(|_| ProxyError::Internal(format!("health check URL {url}")))?;
        let check = async {
            let response = self.send(request, url, protocol, timeout).await.result?;
            let status = response.status();
            // Read to the end, so the connection can serve the next check; each chunk is
            // dropped as it comes (a health URL may answer with a large page).
            let mut body = response.into_body();
            while let Some(Ok(_)) = body.frame().await {}
            Ok(status)
        };
        tokio::time::timeout(timeout, check)
            .await
            .unwrap_or_else(|_| {
                Err(ProxyError::ResponseHeaderTimeout {
                    origin: url.to_string(),
                })
            })
    }

    /// A request that asks to upgrade its connection, through the client that can hand one
    /// over.
    async fn upgrade(
        &self,
        request: http::Request<Body>,
        origin: &str,
        header_timeout: Duration,
    ) -> Result<http::Response<OriginBody>, ProxyError> {
        match tokio::time::timeout(header_timeout, self.upgrades.request(request)).await {
            Ok(Ok(response)) => Ok(response.map(OriginBody::incoming)),
            Ok(Err(err)) => Err(classify(&err, origin)),
            Err(_elapsed) => Err(ProxyError::ResponseHeaderTimeout {
                origin: origin.to_string(),
            }),
        }
    }
}

/// What [`Upstream::send`] got, and in how many attempts.
pub struct Sent {
    pub result: Result<http::Response<OriginBody>, ProxyError>,
    /// 1, or 2 when the first attempt met a closing connection and was retried.
    pub attempts: u32,
}

/// A second copy of `request` when it may be sent again: an idempotent method (RFC 9110
/// §9.2.2) and a body already in memory (see [`buffer_replayable_body`]).
pub(crate) fn replay_copy(request: &http::Request<Body>) -> Option<http::Request<Body>> {
    if !request.method().is_idempotent() {
        return None;
    }
    let body = match request.body() {
        Body::Empty => Body::Empty,
        Body::Full(Some(bytes)) => Body::Full(Some(bytes.clone())),
        _ => return None,
    };
    let mut copy = http::Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    // The interim-response relay, if any, goes along.
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

/// Reads the body of an idempotent request into memory when its declared length is at most
/// `limit`, so that [`Upstream::send`] can send it again; other requests' bodies stream
/// (never retried), marked so that their failure is known for the client's
/// ([`ProxyError::RequestBody`]). The body must arrive within `wait`: a
/// client that declares a body and sends none must not hold the request forever.
///
/// # Errors
/// [`ProxyError::BadRequest`] when the client's body ends early, breaks or is late.
pub async fn buffer_replayable_body(
    request: http::Request<Body>,
    limit: u64,
    wait: Duration,
) -> Result<http::Request<Body>, ProxyError> {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    let declared = request.body().size_hint().exact();
    if declared == Some(0) && matches!(request.body(), Body::Incoming(_)) {
        // A request without a body (most GETs passing through): nothing to read.
        let (parts, _) = request.into_parts();
        return Ok(http::Request::from_parts(parts, Body::empty()));
    }
    let small = declared.is_some_and(|len| len > 0 && len <= limit);
    if !matches!(request.body(), Body::Incoming(_)) {
        return Ok(request);
    }
    if !request.method().is_idempotent() || !small {
        return Ok(request.map(tag_client_body));
    }
    let (parts, body) = request.into_parts();
    let bytes = tokio::time::timeout(wait, body.collect())
        .await
        .map_err(|_| ProxyError::BadRequest("request body not received in time"))?
        .map_err(|_| ProxyError::BadRequest("request body ended before its declared length"))?
        .to_bytes();
    Ok(http::Request::from_parts(parts, Body::full(bytes)))
}

/// A failure of the client's request body while it streams to the origin. The exchange
/// fails with it as a cause; [`classify_failure`] finds it there, so that a client sending
/// a broken body gets a 400 and the origin is not blamed (nor retried, nor ejected).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ClientBodyFailed(#[source] crate::body::BoxError);

/// A streamed client body on its way to the origin: a failure is the client's
/// ([`ClientBodyFailed`]), and its trailer section loses the fields a client must not set
/// there ([`crate::pipeline::forwarding::scrub_request_trailers`]).
fn tag_client_body(body: Body) -> Body {
    use http_body_util::BodyExt;
    let scrubbed = body.map_frame(|frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            crate::pipeline::forwarding::scrub_request_trailers(&mut trailers);
            http_body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    Body::boxed(scrubbed.map_err(ClientBodyFailed))
}

/// The HTTP/1.1 connector for `http://` and `https://` URLs (TLS with `tls`), over TCP
/// with Nagle's algorithm off and connects bounded by `connect_timeout` (else by the
/// system). The tools use it too, to reach a running outpost.
pub fn https_connector(
    tls: rustls::ClientConfig,
    connect_timeout: Option<Duration>,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(connect_timeout);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// The TLS client settings for origins: the web roots plus `ca_file`, and the client
/// certificate when set. The tools use them too, to reach a running outpost over https.
///
/// # Errors
/// [`UpstreamSetupError`] for an unreadable CA file or client certificate.
pub fn tls_client_config(
    config: &UpstreamConfig,
) -> Result<rustls::ClientConfig, UpstreamSetupError> {
    OriginTls::of_upstream(config).client_config()
}

/// A TLS file for origins and the setting that names it (in errors).
struct TlsFile<'a> {
    setting: String,
    path: &'a Path,
}

impl<'a> TlsFile<'a> {
    /// The file `path` names, when set, as `section.name`.
    fn set(section: &str, name: &str, path: &'a Option<PathBuf>) -> Option<TlsFile<'a>> {
        path.as_deref().map(|path| TlsFile {
            setting: format!("{section}.{name}"),
            path,
        })
    }

    fn error(&self, message: impl Into<String>) -> UpstreamSetupError {
        UpstreamSetupError::ClientCert {
            setting: self.setting.clone(),
            path: self.path.display().to_string(),
            message: message.into(),
        }
    }
}

/// A certificate chain, its private key, and the key's file (named in errors).
type ClientIdentity<'f, 'a> = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
    &'f TlsFile<'a>,
);

/// Where the TLS settings of origin connections come from: `upstream`'s, or a pool's in
/// their place.
struct OriginTls<'a> {
    ca_file: Option<TlsFile<'a>>,
    client_cert: Option<TlsFile<'a>>,
    client_key: Option<TlsFile<'a>>,
}

impl<'a> OriginTls<'a> {
    fn of_upstream(config: &'a UpstreamConfig) -> OriginTls<'a> {
        OriginTls {
            ca_file: TlsFile::set("upstream", "ca_file", &config.ca_file),
            client_cert: TlsFile::set("upstream", "client_cert", &config.client_cert),
            client_key: TlsFile::set("upstream", "client_key", &config.client_key),
        }
    }

    /// The pool's CA file in place of upstream's, and its certificate and key in place of
    /// upstream's pair (either of them set replaces both).
    fn of_pool(upstream: &'a UpstreamConfig, pool: &'a PoolConfig) -> OriginTls<'a> {
        let inherited = OriginTls::of_upstream(upstream);
        let section = format!("pools[{}]", pool.name);
        let file = |name: &str, path: &'a Option<PathBuf>| TlsFile::set(&section, name, path);
        let own_identity = pool.client_cert.is_some() || pool.client_key.is_some();
        OriginTls {
            ca_file: file("ca_file", &pool.ca_file).or(inherited.ca_file),
            client_cert: match own_identity {
                true => file("client_cert", &pool.client_cert),
                false => inherited.client_cert,
            },
            client_key: match own_identity {
                true => file("client_key", &pool.client_key),
                false => inherited.client_key,
            },
        }
    }

    fn client_config(&self) -> Result<rustls::ClientConfig, UpstreamSetupError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(ca_file) = &self.ca_file {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::CertificateDer;
            let ca_error = |message: String| UpstreamSetupError::CaFile {
                setting: ca_file.setting.clone(),
                path: ca_file.path.display().to_string(),
                message,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file.path)
                .map_err(|err| ca_error(err.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|err| ca_error(err.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificate in the file".to_string()));
            }
            for cert in certs {
                roots.add(cert).map_err(|err| ca_error(err.to_string()))?;
            }
        }
        // One crypto provider, chosen explicitly: rustls panics at first use when it cannot
        // tell which of several compiled-in providers to use.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        match self.client_identity()? {
            Some((chain, key, key_file)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| key_file.error(format!("does not go with its client_cert: {err}"))),
            None => Ok(builder.with_no_client_auth()),
        }
    }

    /// The certificate chain and key presented to origins that ask for one, when both are
    /// set, with the key's file.
    fn client_identity(&self) -> Result<Option<ClientIdentity<'_, 'a>>, UpstreamSetupError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let alone = "client_cert and client_key go together: set both or neither";
        let (cert, key) = match (&self.client_cert, &self.client_key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(cert), None) => return Err(cert.error(alone)),
            (None, Some(key)) => return Err(key.error(alone)),
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert.path)
            .map_err(|err| cert.error(err.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|err| cert.error(err.to_string()))?;
        if chain.is_empty() {
            return Err(cert.error("no PEM certificate in the file"));
        }
        let private =
            PrivateKeyDer::from_pem_file(key.path).map_err(|err| key.error(err.to_string()))?;
        Ok(Some((chain, private, key)))
    }
}

/// Maps a client error to the RFC 9209 error it is, by walking its causes.
fn classify(err: &hyper_util::client::legacy::Error, origin: &str) -> ProxyError {
    classify_failure(err, origin, err.is_connect())
}

/// Maps any failure of an exchange (`while_connecting`: before a connection was open) to
/// the RFC 9209 error it is, by walking it and its causes.
pub(crate) fn classify_failure(
    err: &(dyn StdError + 'static),
    origin: &str,
    while_connecting: bool,
) -> ProxyError {
    let origin = origin.to_string();
    let detail = chain_text(err);
    for cause in causes(err) {
        if let Some(failed) = cause.downcast_ref::<ClientBodyFailed>() {
            return ProxyError::RequestBody {
                detail: chain_text(failed),
            };
        }
        if cause.downcast_ref::<Refused>().is_some() {
            return ProxyError::LimitReached {
                what: "origin connection",
            };
        }
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                    // The usual cause is a private CA or a TLS-inspecting proxy, which the
                    // system's store may trust while our built-in roots do not.
                    let detail = format!("{detail} (trusted: the Mozilla roots outpost is built with, and upstream.ca_file or the pool's ca_file)");
                    ProxyError::TlsCertificate { origin, detail }
                }
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                    ProxyError::TlsCertificate { origin, detail }
                }
                _ => ProxyError::TlsError { origin, detail },
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return ProxyError::ConnectionRefused { origin }
                }
                std::io::ErrorKind::TimedOut if while_connecting => {
                    return ProxyError::ConnectionTimeout { origin }
                }
                _ => {}
            }
        }
        if let Some(hyper_err) = cause.downcast_ref::<hyper::Error>() {
            if hyper_err.is_parse_too_large() {
                return ProxyError::ResponseHeaderTooLarge { origin };
            }
            if hyper_err.is_parse() || hyper_err.is_parse_status() {
                return ProxyError::UpstreamProtocol { origin, detail };
            }
            if hyper_err.is_incomplete_message() || hyper_err.is_closed() || hyper_err.is_canceled()
            {
                return ProxyError::ResponseIncomplete { origin, detail };
            }
        }
    }
    if while_connecting {
        if detail.contains("dns error") {
            return ProxyError::DnsError { origin, detail };
        }
        return ProxyError::ConnectFailed { origin, detail };
    }
    ProxyError::ResponseIncomplete { origin, detail }
}

/// `err` and every cause below it, including errors wrapped inside `io::Error`s, whose
/// `source()` skips the wrapped error itself (TLS failures arrive wrapped twice).
fn causes<'a>(err: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut found = Vec::new();
    let mut pending: Vec<&'a (dyn StdError + 'static)> = vec![err];
    while let Some(cause) = pending.pop() {
        if found.len() > 32 {
            break;
        }
        found.push(cause);
        if let Some(inner) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            pending.push(inner);
        }
        if let Some(next) = cause.source() {
            pending.push(next);
        }
    }
    found
}

/// `outer: inner: innermost`, for logs and the Proxy-Status details.
pub(crate) fn chain_text(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(current) = cause {
        let next = current.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An origin certificate from an unknown issuer is a certificate error (RFC 9209
    /// §2.3.14) whose detail says where trust comes from: the usual fix is
    /// `upstream.ca_file`, for a private CA or a TLS-inspecting proxy.
    #[test]
    fn an_unknown_issuer_names_where_trust_comes_from() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let err = std::io::Error::other(unknown);
        match classify_failure(&err, "https://pypi.org", true) {
            ProxyError::TlsCertificate { detail, .. } => {
                assert!(detail.contains("upstream.ca_file"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        match classify_failure(&std::io::Error::other(expired), "https://pypi.org", true) {
            ProxyError::TlsCertificate { detail, .. } => {
                assert!(!detail.contains("ca_file"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
    }
}
