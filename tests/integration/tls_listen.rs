//! TLS termination (issue 14): certificates made with rcgen in the test, a real outpost
//! with a TLS listener, and a hyper client over tokio-rustls speaking HTTP/1.1 or HTTP/2
//! as ALPN decides.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use outpost::config::FlagOverrides;
use outpost::{Config, Outpost};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::net::{TcpListener, TcpStream};

/// A self-signed certificate for `names`, written as `stem.pem` and `stem.key` in `dir`.
pub(crate) fn write_cert(
    dir: &Path,
    stem: &str,
    names: &[&str],
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let names: Vec<String> = names.iter().map(ToString::to_string).collect();
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    write_made(dir, stem, &made.cert, &made.key_pair)
}

/// As [`write_cert`], with `serial` for its serial number (an OCSP response names it).
fn write_cert_with_serial(
    dir: &Path,
    stem: &str,
    names: &[&str],
    serial: &[u8],
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let names: Vec<String> = names.iter().map(ToString::to_string).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key_pair).unwrap();
    write_made(dir, stem, &cert, &key_pair)
}

fn write_made(
    dir: &Path,
    stem: &str,
    made: &rcgen::Certificate,
    key_pair: &rcgen::KeyPair,
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let (cert, key) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&cert, made.pem()).unwrap();
    std::fs::write(&key, key_pair.serialize_pem()).unwrap();
    (cert, key, made.der().clone())
}

/// An outpost serving cleartext (`proxy`) and TLS (`tls`) from `toml`, with a loader that
/// reads `toml` again on reload.
pub(crate) struct Edge {
    pub(crate) proxy: Proxy,
    pub(crate) tls: SocketAddr,
}

pub(crate) async fn start_edge(
    toml: impl Fn(SocketAddr) -> String + Send + Sync + 'static,
) -> Edge {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = listener.local_addr().unwrap();
    let config = Config::from_toml_str(&toml(tls), &FlagOverrides::default()).expect("valid");
    let loader = move || Config::from_toml_str(&toml(tls), &FlagOverrides::default());
    let outpost = Outpost::new(config)
        .expect("starts")
        .with_loader(Box::new(loader));
    let proxy = Proxy::start_outpost(outpost).await;
    let serving = Arc::clone(&proxy.outpost);
    tokio::spawn(async move { serving.serve_tls(listener, std::future::pending()).await });
    Edge { proxy, tls }
}

/// A TLS connection to `addr` for `sni`, trusting `roots`, offering `alpn`.
pub(crate) struct Session {
    sender: Sender,
    peer_certificate: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub(crate) async fn connect(
    addr: SocketAddr,
    sni: &str,
    roots: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Session {
    connect_as(addr, sni, roots, alpn, None).await
}

/// A client certificate chain (end-entity first) and its key, for [`connect_as`].
pub(crate) type Identity = (
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// As [`connect`], presenting `identity` when the server asks for a certificate. With TLS
/// 1.3 the client's handshake ends before the server judges it: a refused certificate
/// shows on the first request ([`Session::try_get`]).
pub(crate) async fn connect_as(
    addr: SocketAddr,
    sni: &str,
    roots: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
    identity: Option<Identity>,
) -> Session {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (_, connection) = tls.get_ref();
    let peer_certificate = connection.peer_certificates().unwrap()[0].clone();
    let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let sender = if alpn.as_deref() == Some(b"h2") {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        Sender::H2(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Sender::H1(sender)
    };
    Session {
        sender,
        peer_certificate,
        alpn,
    }
}

impl Session {
    pub(crate) async fn get(&mut self, host: &str, path: &str) -> Reply {
        self.try_get(host, path, &[]).await.expect("a response")
    }

    /// GET `path` of `host` with `headers`, or the error that ended the connection.
    pub(crate) async fn try_get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, hyper::Error> {
        let with_headers = |mut request: http::request::Builder| {
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.body(Full::default()).unwrap()
        };
        let (response, version) = match &mut self.sender {
            Sender::H1(sender) => {
                let request = with_headers(http::Request::get(path).header("host", host));
                (sender.send_request(request).await?, http::Version::HTTP_11)
            }
            Sender::H2(sender) => {
                let uri = format!("https://{host}{path}");
                let request = with_headers(http::Request::get(uri));
                (sender.send_request(request).await?, http::Version::HTTP_2)
            }
        };
        assert_eq!(response.version(), version);
        let (parts, body) = response.into_parts();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: body.collect().await?.to_bytes(),
        })
    }
}

pub(crate) fn site_toml(origin: &str, host: &str, cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[[sites]]\nhosts = [\"{host}\"]\norigin = \"{origin}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}\n",
        cert.display(),
        key.display()
    )
}

/// An edge whose one TLS site, `a.test`, has `origin` behind it; the site's certificate,
/// and the directory that holds its files (kept while the edge runs).
async fn a_test_edge(origin: &Origin) -> (Edge, CertificateDer<'static>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_cert(dir.path(), "a", &["a.test"]);
    let origin_url = origin.url();
    let edge = start_edge(move |tls| {
        format!(
            "[tls]\nlisten = [\"{tls}\"]\n{}",
            site_toml(&origin_url, "a.test", &cert, &key, "")
        )
    })
    .await;
    (edge, der, dir)
}

/// SNI picks the site's certificate (the default one for other names); ALPN negotiates
/// h2, and an h2 client gets cached hits over TLS; http/1.1 works too.
#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_negotiates_h2() {
    let origin = Origin::start(vec![(
        "/page",
        fixed(&[("cache-control", "max-age=60")], "secret"),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (default_cert, default_key, default_der) =
        write_cert(dir.path(), "default", &["default.test"]);
    let (site_cert, site_key, site_der) = write_cert(dir.path(), "a", &["a.test"]);
    let origin_url = origin.url();
    let edge = start_edge(move |tls| {
        format!(
            "origin = \"{origin_url}\"\n[tls]\nlisten = [\"{tls}\"]\ncert = \"{}\"\nkey = \"{}\"\n{}",
            default_cert.display(),
            default_key.display(),
            site_toml(&origin_url, "a.test", &site_cert, &site_key, "")
        )
    })
    .await;

    let mut h2 = connect(edge.tls, "a.test", &[&site_der], &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.peer_certificate, site_der);
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let first = h2.get("a.test", "/page").await;
    assert_eq!(
        (first.status.as_u16(), first.text().as_str()),
        (200, "secret")
    );
    let again = h2.get("a.test", "/page").await;
    assert!(is_hit(&again), "{}", cache_status(&again));
    assert_eq!(origin.hits("/page"), 1);

    let mut other = connect(edge.tls, "default.test", &[&default_der], &[b"http/1.1"]).await;
    assert_eq!(other.peer_certificate, default_der);
    assert_eq!(other.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(other.get("default.test", "/page").await.status, 200);
}

/// The scheme is part of the cache key: https and http requests for one path are separate
/// entries, and the origin hears of TLS in X-Forwarded-Proto and Forwarded.
#[tokio::test]
async fn https_and_http_requests_are_separate_entries() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "max-age=60")], "x"))]).await;
    let (edge, der, _dir) = a_test_edge(&origin).await;
    let plain = get(&edge.proxy.url("/p"), &[("host", "a.test")]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(origin.last("/p").headers["x-forwarded-proto"], "http");
    let mut session = connect(edge.tls, "a.test", &[&der], &[b"http/1.1"]).await;
    let secure = session.get("a.test", "/p").await;
    assert!(!is_hit(&secure), "{}", cache_status(&secure));
    assert_eq!(origin.hits("/p"), 2);
    let seen = origin.last("/p");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert!(seen.headers["forwarded"]
        .to_str()
        .unwrap()
        .contains("proto=https"));
    assert!(is_hit(&session.get("a.test", "/p").await));
}

/// A reload re-reads certificate files: new connections get the new certificate while a
/// connection opened before keeps working.
#[tokio::test]
async fn a_reload_swaps_the_certificate_while_open_connections_keep_working() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "no-store")], "ok"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, old_der) = write_cert(dir.path(), "a", &["a.test"]);
    let (origin_url, cert_path, key_path) = (origin.url(), cert.clone(), key.clone());
    let edge = start_edge(move |tls| {
        format!(
            "[tls]\nlisten = [\"{tls}\"]\n{}",
            site_toml(&origin_url, "a.test", &cert_path, &key_path, "")
        )
    })
    .await;
    let mut before = connect(edge.tls, "a.test", &[&old_der], &[b"h2"]).await;
    assert_eq!(before.get("a.test", "/p").await.status, 200);

    let (_, _, new_der) = write_cert(dir.path(), "a", &["a.test"]);
    assert_ne!(new_der, old_der);
    edge.proxy.outpost.reload().expect("reload");
    let after = connect(edge.tls, "a.test", &[&new_der], &[b"h2"]).await;
    assert_eq!(after.peer_certificate, new_der);
    assert_eq!(before.get("a.test", "/p").await.status, 200);
}

/// A site can be HTTPS only: cleartext requests get 308 to https (same target, the TLS
/// listener's port), and responses over TLS carry its Strict-Transport-Security.
#[tokio::test]
async fn a_site_redirects_cleartext_and_sets_hsts_over_tls() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "max-age=60")], "x"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_cert(dir.path(), "a", &["a.test"]);
    let origin_url = origin.url();
    let edge = start_edge(move |tls| {
        let extra = "redirect_https = true\nhsts = \"max-age=600; includeSubDomains\"";
        format!(
            "[tls]\nlisten = [\"{tls}\"]\n{}",
            site_toml(&origin_url, "a.test", &cert, &key, extra)
        )
    })
    .await;
    let plain = get(&edge.proxy.url("/p?q=1"), &[("host", "a.test:8080")]).await;
    assert_eq!(plain.status, 308);
    let location = format!("https://a.test:{}/p?q=1", edge.tls.port());
    assert_eq!(plain.header("location"), Some(location.as_str()));
    assert!(plain.header("strict-transport-security").is_none());
    assert_eq!(origin.hits("/p"), 0);
    let mut session = connect(edge.tls, "a.test", &[&der], &[b"http/1.1"]).await;
    let secure = session.get("a.test", "/p?q=1").await;
    assert_eq!(
        secure.header("strict-transport-security"),
        Some("max-age=600; includeSubDomains")
    );
}

/// A missing file or a key that is not the certificate's stops start-up with an error
/// naming the file.
#[tokio::test]
async fn bad_certificate_files_are_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _, _) = write_cert(dir.path(), "a", &["a.test"]);
    let (_, other_key, _) = write_cert(dir.path(), "b", &["b.test"]);
    let missing = dir.path().join("missing.pem");
    let start = |cert: &Path, key: &Path| {
        let toml = format!(
            "origin = \"http://127.0.0.1:1\"\n[tls]\nlisten = [\"127.0.0.1:1\"]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        );
        let config = Config::from_toml_str(&toml, &FlagOverrides::default()).unwrap();
        Outpost::new(config).err().expect("refused").to_string()
    };
    let error = start(&missing, &other_key);
    assert!(error.contains("missing.pem"), "{error}");
    let error = start(&cert, &other_key);
    assert!(
        error.contains("b.key") && error.contains("does not belong"),
        "{error}"
    );
}

/// Plain HTTP sent to the TLS listener gets a 400 that says the port speaks HTTPS (as
/// nginx answers), not a TLS alert; a TLS client on the same listener is served as ever.
#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_400_that_says_so() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "max-age=60")], "x"))]).await;
    let (edge, der, _dir) = a_test_edge(&origin).await;
    let reply = raw_exchange(edge.tls, b"GET /p HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("speaks HTTPS"), "{reply}");
    assert_eq!(origin.hits("/p"), 0);
    let mut tls = connect(edge.tls, "a.test", &[&der], &[b"http/1.1"]).await;
    assert_eq!(tls.get("a.test", "/p").await.status, 200);
}

/// Disk hits over TLS, whose connections sendfile cannot write to: once the stored file
/// has been verified they are read from it, byte for byte, on HTTP/1.1 and HTTP/2, while a
/// cleartext connection to the same edge is sent the same file with sendfile.
#[tokio::test]
async fn disk_hits_over_tls_are_read_from_the_verified_file() {
    let body = Bytes::from((0..300 << 10).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
    let origin = Origin::start(vec![(
        "/file",
        Fixture::Static {
            status: http::StatusCode::OK,
            headers: vec![("cache-control", "max-age=600".into())],
            body: body.clone(),
        },
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_cert(dir.path(), "a", &["a.test"]);
    let (origin_url, cache_dir) = (origin.url(), dir.path().join("cache"));
    let edge = start_edge(move |tls| {
        format!(
            "[tls]\nlisten = [\"{tls}\"]\n[cache]\ndir = \"{}\"\nmax_object_size = \"64KiB\"\n{}",
            cache_dir.display(),
            site_toml(&origin_url, "a.test", &cert, &key, "")
        )
    })
    .await;
    let metrics = Arc::clone(edge.proxy.outpost.proxy().metrics());
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut session = connect(edge.tls, "a.test", &[&der], &[alpn]).await;
        let before = metrics.verified_file_reads.get();
        // A miss, a hit that verifies the file as it streams it, then hits read from it:
        // no waiting involved.
        let mut read_from_file = false;
        for _ in 0..3 {
            assert!(session.get("a.test", "/file").await.body == body);
            read_from_file |= metrics.verified_file_reads.get() > before;
        }
        assert!(
            read_from_file,
            "{alpn:?}: no hit read from the verified file"
        );
    }
    assert_eq!(metrics.sendfile_responses.get(), 0);
    // Cleartext is its own entry (a miss), whose body is the same verified file. How the
    // miss itself is sent depends on whether its fill finished first (then it is answered
    // from the stored file too); the hit after it is always sent with sendfile.
    let plain = get(&edge.proxy.url("/file"), &[("host", "a.test")]).await;
    assert!(plain.body == body);
    let after_miss = metrics.sendfile_responses.get();
    assert!(after_miss <= 1, "{after_miss}");
    let hit = get(&edge.proxy.url("/file"), &[("host", "a.test")]).await;
    assert!(hit.body == body);
    assert!(is_hit(&hit), "{}", cache_status(&hit));
    assert_eq!(metrics.sendfile_responses.get(), after_miss + 1);
}

/// Records the OCSP response the server staples, and trusts any certificate (the test is
/// about the staple, not the chain; the other tests verify chains).
#[derive(Debug)]
struct StapleRecorder {
    stapled: std::sync::Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for StapleRecorder {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.stapled.lock().unwrap() = Some(ocsp_response.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a handshake with `sni` on `addr` was stapled, by TLS `version`.
async fn stapled_ocsp(
    addr: SocketAddr,
    sni: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(StapleRecorder {
        stapled: std::sync::Mutex::new(None),
        provider: Arc::clone(&provider),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let stapled = recorder.stapled.lock().unwrap().take();
    stapled.expect("the certificate was verified")
}

/// A DER element of `tag` around `content` (X.690 §8.1).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        len @ 0..0x80 => out.push(len as u8),
        len @ 0x80..0x100 => out.extend([0x81, len as u8]),
        len => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// A successful basic OCSP response (RFC 6960 §4.2.1) saying the certificate with
/// `serial` is good until `next_update` (a GeneralizedTime); its signature is filler,
/// which only a client verifies. `status` is the DER of its certStatus.
fn ocsp_response_with(serial: &[u8], status: &[u8], next_update: &str) -> Vec<u8> {
    let cert_id = [
        tlv(0x30, &tlv(0x06, &[0x2b, 0x0e, 0x03, 0x02, 0x1a])),
        tlv(0x04, &[1; 20]),
        tlv(0x04, &[2; 20]),
        tlv(0x02, serial),
    ]
    .concat();
    let single = [
        tlv(0x30, &cert_id),
        status.to_vec(),
        tlv(0x18, b"20261201000000Z"),
        tlv(0xa0, &tlv(0x18, next_update.as_bytes())),
    ]
    .concat();
    let data = [
        tlv(0xa2, &tlv(0x04, &[3; 20])),
        tlv(0x18, b"20261201000000Z"),
        tlv(0x30, &tlv(0x30, &single)),
    ]
    .concat();
    let basic = [
        tlv(0x30, &data),
        tlv(
            0x30,
            &tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
        ),
        tlv(0x03, &[0, 9, 9, 9]),
    ]
    .concat();
    let basic_oid = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
    let response_bytes = [tlv(0x06, &basic_oid), tlv(0x04, &tlv(0x30, &basic))].concat();
    let response = [tlv(0x0a, &[0]), tlv(0xa0, &tlv(0x30, &response_bytes))].concat();
    tlv(0x30, &response)
}

fn good_ocsp_response(serial: &[u8], next_update: &str) -> Vec<u8> {
    ocsp_response_with(serial, &[0x80, 0], next_update)
}

/// RFC 6066 §8 (TLS 1.2) and RFC 8446 §4.4.2.1 (TLS 1.3): a client that asks for the
/// certificate's status gets the configured OCSP response stapled, for the default
/// certificate and a site's; a certificate without one staples nothing, and neither does
/// one whose response has expired (RFC 6960 §4.2.2.1 nextUpdate), which outpost starts
/// with, warning, rather than refuse to serve.
#[tokio::test]
async fn the_configured_ocsp_response_is_stapled_while_it_holds() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "max-age=60")], "x"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = write_cert_with_serial(dir.path(), "a", &["a.test"], &[0x0a, 0x01]);
    let (default_cert, default_key, _) =
        write_cert_with_serial(dir.path(), "d", &["d.test"], &[0x0d, 0x02]);
    let (plain_cert, plain_key, _) = write_cert(dir.path(), "p", &["p.test"]);
    let (old_cert, old_key, _) = write_cert_with_serial(dir.path(), "o", &["o.test"], &[0x0e]);
    let site_response = good_ocsp_response(&[0x0a, 0x01], "20991231000000Z");
    let site_ocsp = dir.path().join("a.ocsp");
    std::fs::write(&site_ocsp, &site_response).unwrap();
    let default_response = good_ocsp_response(&[0x0d, 0x02], "20991231000000Z");
    let default_ocsp = dir.path().join("d.ocsp");
    std::fs::write(&default_ocsp, &default_response).unwrap();
    let expired_ocsp = dir.path().join("o.ocsp");
    std::fs::write(
        &expired_ocsp,
        good_ocsp_response(&[0x0e], "20200101000000Z"),
    )
    .unwrap();
    let origin_url = origin.url();
    let edge = start_edge(move |tls| {
        format!(
            "[tls]\nlisten = [\"{tls}\"]\ncert = \"{}\"\nkey = \"{}\"\nocsp_response = \"{}\"\n{}{}{}",
            default_cert.display(),
            default_key.display(),
            default_ocsp.display(),
            site_toml(
                &origin_url,
                "a.test",
                &cert,
                &key,
                &format!("tls_ocsp_response = \"{}\"", site_ocsp.display())
            ),
            site_toml(&origin_url, "p.test", &plain_cert, &plain_key, ""),
            site_toml(
                &origin_url,
                "o.test",
                &old_cert,
                &old_key,
                &format!("tls_ocsp_response = \"{}\"", expired_ocsp.display())
            ),
        )
    })
    .await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        assert_eq!(
            stapled_ocsp(edge.tls, "a.test", version).await,
            site_response
        );
        assert_eq!(
            stapled_ocsp(edge.tls, "other.test", version).await,
            default_response,
            "the default certificate's"
        );
        assert!(stapled_ocsp(edge.tls, "p.test", version).await.is_empty());
        assert!(
            stapled_ocsp(edge.tls, "o.test", version).await.is_empty(),
            "expired: not stapled"
        );
    }
}

/// A file that is no response a client would take for this certificate stops start-up
/// with an error naming it, rather than stapling bytes that fail every handshake's check:
/// not DER (a PEM one, say) or cut short, a responder's error status (RFC 6960 §4.2.1
/// tryLater), another certificate's response, or one saying it is revoked.
#[tokio::test]
async fn an_ocsp_response_no_client_accepts_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = write_cert_with_serial(dir.path(), "a", &["a.test"], &[0x0a]);
    let files = [
        (
            "response.pem",
            b"-----BEGIN OCSP RESPONSE-----\nMAMKAQM=\n".to_vec(),
            "DER",
        ),
        ("truncated.der", vec![0x30, 0x05, 0x0a, 0x01], "DER"),
        (
            "try-later.der",
            vec![0x30, 0x03, 0x0a, 0x01, 0x03],
            "status is 3",
        ),
        (
            "other.der",
            good_ocsp_response(&[0x0b], "20991231000000Z"),
            "another certificate",
        ),
        (
            "revoked.der",
            ocsp_response_with(
                &[0x0a],
                &tlv(0xa1, &tlv(0x18, b"20261101000000Z")),
                "20991231000000Z",
            ),
            "revoked",
        ),
    ];
    for (name, bytes, why) in files {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let toml = format!(
            "origin = \"http://127.0.0.1:1\"\n[tls]\nlisten = [\"127.0.0.1:1\"]\ncert = \"{}\"\nkey = \"{}\"\nocsp_response = \"{}\"\n",
            cert.display(),
            key.display(),
            file.display()
        );
        let config = Config::from_toml_str(&toml, &FlagOverrides::default()).unwrap();
        let error = Outpost::new(config).err().expect("refused").to_string();
        assert!(
            error.contains(name) && error.contains("OCSP") && error.contains(why),
            "{error}"
        );
    }
}

/// `outpost check` warns of a configured OCSP response past its nextUpdate (RFC 6960
/// §4.2.2.1), which `serve` would start without stapling, and passes; a response that
/// still holds draws no warning.
#[test]
fn check_warns_of_an_expired_ocsp_response() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = write_cert_with_serial(dir.path(), "a", &["a.test"], &[0x0a]);
    let config = dir.path().join("outpost.toml");
    for (next_update, expired) in [("20200101000000Z", true), ("20991231000000Z", false)] {
        let response = dir.path().join("a.ocsp");
        std::fs::write(&response, good_ocsp_response(&[0x0a], next_update)).unwrap();
        std::fs::write(
            &config,
            format!(
                "origin = \"http://127.0.0.1:1\"\n[tls]\nlisten = [\"127.0.0.1:0\"]\ncert = \"{}\"\nkey = \"{}\"\nocsp_response = \"{}\"\n",
                cert.display(),
                key.display(),
                response.display()
            ),
        )
        .unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"));
        command.args(["check", "--config", config.to_str().unwrap()]);
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OUTPOST_")) {
            command.env_remove(name);
        }
        let output = command.output().expect("outpost runs");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{said}");
        let warned =
            said.contains("warning:") && said.contains("a.ocsp: the OCSP response expired");
        assert_eq!(warned, expired, "{next_update}: {said}");
    }
}

/// `outpost load` speaks https too (RFC 9110 §4.2.2): against the TLS listener, trusting
/// the edge's own certificate by `--ca-file`, every request is answered and counted;
/// without it, the unknown certificate fails every request, and the run says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_drives_an_https_edge_that_its_ca_file_vouches_for() {
    let origin = Origin::start(vec![(
        "/obj",
        fixed(&[("cache-control", "max-age=60")], "x"),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = write_cert(dir.path(), "edge", &["localhost"]);
    let (origin_url, cert_path, key_path) = (origin.url(), cert.clone(), key.clone());
    let edge = start_edge(move |tls| {
        format!(
            "origin = \"{origin_url}\"\n[log]\naccess_log = false\n[tls]\nlisten = [\"{tls}\"]\n\
             cert = \"{}\"\nkey = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        )
    })
    .await;
    let url = format!("https://localhost:{}/obj?k={{key}}", edge.tls.port());
    let json = dir.path().join("load.json");
    let run = |ca_file: Option<PathBuf>| {
        let (url, json) = (url.clone(), json.clone());
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"));
            command.args(["load", &url, "--keys", "10", "--requests", "200", "-c", "4"]);
            command.args([
                "--duration",
                "60s",
                "--quiet",
                "--json",
                json.to_str().unwrap(),
            ]);
            if let Some(ca_file) = &ca_file {
                command.args(["--ca-file", ca_file.to_str().unwrap()]);
            }
            command.output().expect("outpost runs")
        })
    };
    let trusted = run(Some(cert.clone())).await.unwrap();
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["requests"], 200);
    assert_eq!(report["statuses"]["200"], 200);
    assert!(report["hits"].as_u64().unwrap() >= 200 - 10 * 4);
    assert_eq!(origin.hits("/obj"), 10, "one fill per key");

    let untrusted = run(None).await.unwrap();
    assert!(!untrusted.status.success());
    let said = String::from_utf8_lossy(&untrusted.stderr);
    assert!(said.contains("every request failed"), "{said}");
}
