//! HTTPS origins: outpost verifies the origin's certificate against the built-in roots plus
//! `upstream.ca_file`, and reports a failed handshake as a 502 with a TLS Proxy-Status.

use crate::support;

use support::*;

#[tokio::test]
async fn https_origin_with_configured_ca_is_proxied() {
    let TlsOrigin { port, cert_pem, .. } = TlsOrigin::start(&[]).await;
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
    let TlsOrigin { port, .. } = TlsOrigin::start(&[]).await;
    let proxy = Proxy::start(&format!("https://localhost:{port}"), "").await;
    let reply = get(&proxy.url("/page"), &[]).await;
    assert_eq!(reply.status, 502);
    let proxy_status = reply.header("proxy-status").unwrap();
    assert!(
        proxy_status.contains("error=tls_certificate_error"),
        "{proxy_status}"
    );
}
