//! HTTPS origins: outpost verifies the origin's certificate against the built-in roots plus
//! `upstream.ca_file`, and reports a failed handshake as a 502 with a TLS Proxy-Status.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use outpost::body::Body;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::*;
use tokio::net::TcpListener;

/// A TLS origin for `localhost` with a fresh self-signed certificate; returns its port and
/// the certificate's PEM.
async fn tls_origin() -> (u16, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert_der: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("secure {}", request.uri().path());
                        Ok::<_, Infallible>(http::Response::new(Body::full(body)))
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, cert_pem)
}

#[tokio::test]
async fn https_origin_with_configured_ca_is_proxied() {
    let (port, cert_pem) = tls_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert_pem).unwrap();
    let config = format!("[upstream]\nca_file = \"{}\"", ca.display());
    let proxy = Proxy::start(&format!("https://localhost:{port}"), &config).await;
    let reply = get(&proxy.url("/page"), &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "secure /page")
    );
}

/// RFC 9209 §2.3: an origin certificate nobody vouches for is a TLS error, not a response.
#[tokio::test]
async fn https_origin_with_unknown_certificate_gives_502_tls_error() {
    let (port, _) = tls_origin().await;
    let proxy = Proxy::start(&format!("https://localhost:{port}"), "").await;
    let reply = get(&proxy.url("/page"), &[]).await;
    assert_eq!(reply.status, 502);
    let proxy_status = reply.header("proxy-status").unwrap();
    assert!(
        proxy_status.contains("error=tls_certificate_error"),
        "{proxy_status}"
    );
}
