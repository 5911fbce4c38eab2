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

/// Each pool presents its own client certificate and trusts its own CA: two origins that
/// each admit only the identity their CA issued, one behind `upstream`'s settings and one
/// behind a pool's, both serve. The pool's connections are its own: a pool to the same
/// server without those settings is refused by it (502), even right after the other pool
/// left a connection to it idle.
#[tokio::test]
async fn each_pool_presents_its_own_client_certificate() {
    let (a, a_identity) = TlsOrigin::start_requiring_client_cert().await;
    let (b, b_identity) = TlsOrigin::start_requiring_client_cert().await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (a_ca, a_cert, a_key) = (
        write("a-ca.pem", &a.cert_pem),
        write("a.pem", &a_identity.cert_pem),
        write("a.key", &a_identity.key_pem),
    );
    let (b_ca, b_cert, b_key) = (
        write("b-ca.pem", &b.cert_pem),
        write("b.pem", &b_identity.cert_pem),
        write("b.key", &b_identity.key_pem),
    );
    let b_url = format!("https://localhost:{}", b.port);
    let toml = format!(
        "[upstream]\nca_file = \"{a_ca}\"\nclient_cert = \"{a_cert}\"\nclient_key = \"{a_key}\"\n\
         [[pools]]\nname = \"b\"\nservers = [{{ url = \"{b_url}\" }}]\n\
         ca_file = \"{b_ca}\"\nclient_cert = \"{b_cert}\"\nclient_key = \"{b_key}\"\n\
         [[pools]]\nname = \"b-as-upstream\"\nservers = [{{ url = \"{b_url}\" }}]\n\
         [[sites]]\nhosts = [\"b.test\"]\npool = \"b\"\n\
         [[sites]]\nhosts = [\"c.test\"]\npool = \"b-as-upstream\"\n"
    );
    let proxy = Proxy::start(&format!("https://localhost:{}", a.port), &toml).await;
    let reply = get(&proxy.url("/page"), &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "secure /page"),
        "upstream's identity for the default origin"
    );
    let reply = get(&proxy.url("/page"), &[("host", "b.test")]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "secure /page"),
        "the pool's own identity and CA"
    );
    let reply = get(&proxy.url("/other"), &[("host", "c.test")]).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        reply
            .header("proxy-status")
            .is_some_and(|status| status.contains("tls_certificate_error")),
        "upstream's CA does not vouch for b: {:?}",
        reply.header("proxy-status")
    );

    let half = format!(
        "origin = \"{b_url}\"\n[[pools]]\nname = \"p\"\nservers = [{{ url = \"{b_url}\" }}]\n\
         client_key = \"{b_key}\"\n"
    );
    let refused = outpost::Config::from_toml_str(&half, &Default::default()).unwrap_err();
    assert!(
        refused.to_string().contains("pools[0].client_cert"),
        "{refused}"
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

/// Authenticated origin pulls: an origin that requires a client certificate (RFC 8446
/// §4.3.2, CertificateRequest) refuses outpost without one, a 502 (RFC 9209 §2.3); with
/// `upstream.client_cert` and `upstream.client_key` it serves. One of the two alone is a
/// configuration error, not a silent anonymous pull.
#[tokio::test]
async fn an_origin_requiring_a_client_certificate_gets_the_configured_one() {
    let (origin, identity) = TlsOrigin::start_requiring_client_cert().await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca = write("ca.pem", &origin.cert_pem);
    let cert = write("edge.pem", &identity.cert_pem);
    let key = write("edge.key", &identity.key_pem);
    let url = format!("https://localhost:{}", origin.port);

    let anonymous = Proxy::start(&url, &format!("[upstream]\nca_file = \"{ca}\"")).await;
    let reply = get(&anonymous.url("/page"), &[]).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(reply.header("proxy-status").is_some());

    let identified = Proxy::start(
        &url,
        &format!(
            "[upstream]\nca_file = \"{ca}\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\""
        ),
    )
    .await;
    let reply = get(&identified.url("/page"), &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "secure /page")
    );

    let half = format!("origin = \"{url}\"\n[upstream]\nclient_cert = \"{cert}\"");
    let refused = outpost::Config::from_toml_str(&half, &Default::default()).unwrap_err();
    assert!(refused.to_string().contains("go together"), "{refused}");
    // A key that is not the certificate's is refused when the client is built.
    let other = TlsOrigin::start_requiring_client_cert().await.1;
    let other_key = write("other.key", &other.key_pem);
    let mismatched = outpost::Config::from_toml_str(
        &format!(
            "origin = \"{url}\"\n[upstream]\nclient_cert = \"{cert}\"\nclient_key = \"{other_key}\""
        ),
        &Default::default(),
    )
    .unwrap();
    assert!(outpost::upstream::Upstream::new(&mismatched).is_err());
}
