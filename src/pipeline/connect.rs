//! CONNECT tunnels for clients that use outpost as their forward proxy (RFC 9110 §9.3.6):
//! only to `forward_proxy.connect_allow` patterns (none by default, so never an open
//! proxy), and, when credentials are configured, only for a client presenting them
//! (`forward_proxy` holds the policy). A refused CONNECT gets 403 or
//! 407 and opens nothing; an accepted one gets 200 once the target's TCP connection is up,
//! and the client's connection becomes a byte tunnel to it with the tunnel limits.

use std::sync::Arc;

use http::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{forward_proxy, tunnel, Proxy};
use crate::body::Body;
use crate::error::ProxyError;

/// Answers a CONNECT: 403 for a target not allowed (or not `host:port`), 407 without the
/// credentials, 502 when the target cannot be reached, else 200 and the tunnel.
pub(super) async fn open(
    proxy: &Arc<Proxy>,
    request: &http::request::Parts,
    client: OnUpgrade,
) -> Result<Response<Body>, ProxyError> {
    let policy = &proxy.forward_proxy;
    let target = request.uri.authority().map(|a| (a.host(), a.port_u16()));
    let Some((host, Some(port))) = target else {
        return Err(ProxyError::Forbidden("CONNECT needs a host:port target"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !policy.allows_connect(host, port) {
        return Err(ProxyError::Forbidden(
            "CONNECT to this target is not allowed",
        ));
    }
    if !policy.is_authorised(request) {
        return Ok(forward_proxy::authentication_required());
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
