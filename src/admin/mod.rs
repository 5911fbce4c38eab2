//! The admin listener: health endpoints for orchestrators, on a separate address that binds
//! to loopback (config validation refuses anything else until the admin API has tokens).
//!
//! `/healthz` answers while the process serves at all; `/readyz` once the proxy listener is
//! up, which is true by the time this listener runs. Metrics, purge and status belong here
//! as they arrive.

use std::convert::Infallible;
use std::future::Future;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::Body;

/// Serves the admin endpoints on `listener` until `shutdown` completes.
///
/// # Errors
/// None today; accept errors are logged and the loop goes on.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    continue;
                }
            },
        };
        let connection = builder
            .serve_connection(
                TokioIo::new(stream),
                service_fn(|request| async move { Ok::<_, Infallible>(route(&request)) }),
            )
            .into_owned();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "admin connection error");
            }
        });
    }
}

fn route(request: &Request<Incoming>) -> Response<Body> {
    let (status, text) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => (StatusCode::OK, "ready\n"),
        (_, "/healthz" | "/readyz") => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(Body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
