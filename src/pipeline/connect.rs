//! CONNECT tunnels for clients that use outpost as their forward proxy (RFC 9110 §9.3.6):
//! only to `forward_proxy.connect_allow` patterns (none by default, so never an open
//! proxy), and, when credentials are configured, only for a client presenting them as
//! `Proxy-Authorization: Basic` (compared in constant time). A refused CONNECT gets 403 or
//! 407 and opens nothing; an accepted one gets 200 once the target's TCP connection is up,
//! and the client's connection becomes a byte tunnel to it with the tunnel limits.

use std::sync::Arc;

use base64::Engine as _;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{tunnel, Proxy};
use crate::body::Body;
use crate::config::ForwardProxyConfig;
use crate::error::ProxyError;

/// The configured policy, compiled.
#[derive(Default)]
pub struct ConnectPolicy {
    allow: Vec<(glob::Pattern, glob::Pattern)>,
    /// `Basic base64(user:password)`, as the header must read.
    expected_authorization: Option<String>,
}

impl ConnectPolicy {
    pub fn new(config: &ForwardProxyConfig) -> ConnectPolicy {
        let allow = config
            .connect_allow
            .iter()
            .filter_map(|pattern| {
                let (host, port) = pattern.rsplit_once(':')?;
                let host = glob::Pattern::new(&host.to_ascii_lowercase()).ok()?;
                Some((host, glob::Pattern::new(port).ok()?))
            })
            .collect();
        let expected_authorization = config.credentials.as_ref().map(|secret| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(secret.expose());
            format!("Basic {encoded}")
        });
        ConnectPolicy {
            allow,
            expected_authorization,
        }
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let port = port.to_string();
        self.allow
            .iter()
            .any(|(h, p)| h.matches(&host) && p.matches(&port))
    }

    fn is_authorised(&self, request: &http::request::Parts) -> bool {
        let Some(expected) = &self.expected_authorization else {
            return true;
        };
        let presented = request
            .headers
            .get(header::PROXY_AUTHORIZATION)
            .map_or(&[][..], HeaderValue::as_bytes);
        subtle::ConstantTimeEq::ct_eq(presented, expected.as_bytes()).into()
    }
}

/// Answers a CONNECT: 403 for a target not allowed (or not `host:port`), 407 without the
/// credentials, 502 when the target cannot be reached, else 200 and the tunnel.
pub(super) async fn open(
    proxy: &Arc<Proxy>,
    request: &http::request::Parts,
    client: OnUpgrade,
) -> Result<Response<Body>, ProxyError> {
    let policy = &proxy.connect_policy;
    let target = request.uri.authority().map(|a| (a.host(), a.port_u16()));
    let Some((host, Some(port))) = target else {
        return Err(ProxyError::Forbidden("CONNECT needs a host:port target"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !policy.allows(host, port) {
        return Err(ProxyError::Forbidden(
            "CONNECT to this target is not allowed",
        ));
    }
    if !policy.is_authorised(request) {
        let mut refused = Response::new(Body::full("407 Proxy Authentication Required\n"));
        *refused.status_mut() = StatusCode::PROXY_AUTHENTICATION_REQUIRED;
        refused.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"outpost\""),
        );
        return Ok(refused);
    }
    let origin = format!("{host}:{port}");
    let connect = TcpStream::connect((host, port));
    let stream = match tokio::time::timeout(proxy.connect_timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ProxyError::ConnectionRefused { origin })
        }
        Ok(Err(err)) => {
            return Err(ProxyError::ConnectFailed {
                origin,
                detail: err.to_string(),
            })
        }
        Err(_) => return Err(ProxyError::ConnectionTimeout { origin }),
    };
    let _ = stream.set_nodelay(true);
    tunnel::spawn(proxy, origin, async move {
        let client = client.await.ok()?;
        Some((TokioIo::new(client), stream))
    });
    Ok(Response::new(Body::empty()))
}
