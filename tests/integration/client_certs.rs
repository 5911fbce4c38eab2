//! Mutual TLS on the listeners (RFC 8446 §4.3.2: the server asks for a certificate) and the
//! verified certificate told to origins as RFC 9440 `Client-Cert` / `Client-Cert-Chain`:
//! CAs and CRLs made with rcgen in the test, a real outpost, and a rustls client that
//! presents a certificate or none.

use crate::support;
use crate::tls_listen::{connect_as, site_toml, start_edge, write_cert, Identity};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use outpost::config::FlagOverrides;
use outpost::{Config, Outpost};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::*;

/// A certificate authority made for the test: it issues client certificates and CRLs.
struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let cert = ca_params(name).self_signed(&key).unwrap();
        Authority { cert, key }
    }

    /// A CA below this one.
    fn intermediate(&self, name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let cert = ca_params(name)
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        Authority { cert, key }
    }

    /// A client certificate with `serial`, and its key: the chain is the certificate alone.
    fn issue(&self, name: &str, serial: u8) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from_slice(&[serial]));
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], private)
    }

    /// A CRL revoking the certificates with `serials`.
    fn revoking(&self, serials: &[u8]) -> String {
        let revoked_certs = serials
            .iter()
            .map(|serial| rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&[*serial]),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }
}

/// A CA's certificate, which may sign certificates and CRLs (RFC 5280 §4.2.1.3).
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// RFC 9440 §2.2: a Structured Field Byte Sequence, base64 between colons.
fn byte_sequence(der: &CertificateDer<'_>) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    format!(":{encoded}:")
}

fn field(seen: &SeenRequest, name: &str) -> Option<String> {
    seen.headers
        .get(name)
        .map(|value| value.to_str().unwrap().to_string())
}

/// With `tls.client_ca_file`, a client without a certificate, or with one another CA
/// issued, is refused in the handshake (RFC 8446 §4.4.2.4: the server aborts) and counted;
/// one the CA's intermediate issued is served over HTTP/1.1 and HTTP/2, and the origin is
/// told its certificate in `Client-Cert` and the intermediate in `Client-Cert-Chain` (RFC
/// 9440 §2). A field of that name from a client is never passed on, nor chooses a stored
/// variant of an origin that answers `Vary: Client-Cert`: certificates are public, so it
/// would let anyone pose as their holder (RFC 9440 §4). The cleartext listener, which
/// cannot ask for a certificate, refuses with 403 (RFC 9209 `http_request_denied`).
#[tokio::test]
async fn only_clients_the_ca_vouches_for_are_served_and_the_origin_hears_who() {
    let origin = Origin::start(vec![(
        "/mine",
        fixed(
            &[("cache-control", "max-age=60"), ("vary", "client-cert")],
            "for one holder",
        ),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (site_cert, site_key, site_der) = write_cert(dir.path(), "a", &["a.test"]);
    let root = Authority::new("client root");
    let issuing = root.intermediate("client issuing CA");
    let ca_file = root.write(dir.path(), "clients.pem");
    let access_log = dir.path().join("access.log");
    let log_path = access_log.clone();
    let origin_url = origin.url();
    let edge = start_edge(move |tls| {
        format!(
            "[log]\naccess_log_path = \"{}\"\n[tls]\nlisten = [\"{tls}\"]\nclient_ca_file = \"{}\"\nforward_client_cert = true\n{}",
            log_path.display(),
            ca_file.display(),
            site_toml(&origin_url, "a.test", &site_cert, &site_key, "")
        )
    })
    .await;
    let admin = start_admin(&edge.proxy).await;
    let member = {
        let (mut chain, key) = issuing.issue("member", 7);
        chain.push(issuing.cert.der().clone());
        (chain, key)
    };
    let member_leaf = byte_sequence(&member.0[0]);
    let tls = edge.tls;
    let session = |identity: Option<Identity>, alpn: &'static [u8]| {
        let site_der = site_der.clone();
        async move { connect_as(tls, "a.test", &[&site_der], &[alpn], identity).await }
    };

    let mut h2 = session(Some(clone_identity(&member)), b"h2").await;
    let forged = byte_sequence(&Authority::new("forger").issue("forged", 1).0[0]);
    let first = h2
        .try_get("a.test", "/mine", &[("client-cert", &forged)])
        .await
        .expect("a member is served");
    assert_eq!(
        (first.status.as_u16(), first.text().as_str()),
        (200, "for one holder")
    );
    let seen = origin.last("/mine");
    assert_eq!(field(&seen, "client-cert"), Some(member_leaf.clone()));
    assert_eq!(
        field(&seen, "client-cert-chain"),
        Some(byte_sequence(issuing.cert.der()))
    );

    let mut h1 = session(Some(clone_identity(&member)), b"http/1.1").await;
    let again = h1.try_get("a.test", "/mine", &[]).await.unwrap();
    assert!(is_hit(&again), "{}", cache_status(&again));
    assert_eq!(origin.hits("/mine"), 1);
    // The access log names the member by its certificate's SHA-256, on hits too.
    let fingerprint: String = ring::digest::digest(&ring::digest::SHA256, member.0[0].as_ref())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    eventually("both member requests logged with the fingerprint", || {
        std::fs::read_to_string(&access_log).is_ok_and(|log| {
            log.matches(&format!("\"client_cert\":\"{fingerprint}\""))
                .count()
                == 2
        })
    })
    .await;

    for (who, identity) in [
        ("no certificate", None),
        ("another CA's", Some(Authority::new("other").issue("x", 2))),
    ] {
        let mut refused = session(identity, b"http/1.1").await;
        let outcome = refused.try_get("a.test", "/mine", &[]).await;
        assert!(outcome.is_err(), "{who}: {:?}", outcome.map(|r| r.status));
    }
    assert_eq!(origin.hits("/mine"), 1);
    eventually_some("both refusals counted", || async {
        let metrics = get(&format!("{admin}/metrics"), &[]).await.text();
        metrics
            .contains("outpost_client_certificates_refused_total 2")
            .then_some(())
    })
    .await;

    // The cleartext listener asks no certificate, so it is no way around the TLS ones
    // (the member's certificate sent as a field is no certificate at all).
    let posing = get(
        &edge.proxy.url("/mine"),
        &[("host", "a.test"), ("client-cert", &member_leaf)],
    )
    .await;
    assert_eq!(posing.status, 403, "{}", posing.text());
    assert!(
        posing
            .header("proxy-status")
            .is_some_and(|status| status.contains("http_request_denied")),
        "{:?}",
        posing.headers
    );
    assert_eq!(origin.hits("/mine"), 1);
}

fn clone_identity(identity: &Identity) -> Identity {
    (identity.0.clone(), identity.1.clone_key())
}

/// `tls.client_cert_optional` serves clients that present no certificate (the origin hears
/// of none, whatever they send), still refuses one that fails; a CRL in
/// `tls.client_crl_files` refuses the certificates it revokes (RFC 5280 §5). Without
/// `tls.forward_client_cert` the origin is told nothing, and a reload that adds the CRL
/// applies to the next connection.
#[tokio::test]
async fn optional_certificates_and_revocation_lists_follow_reloads() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "no-store")], "ok"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let (site_cert, site_key, site_der) = write_cert(dir.path(), "a", &["a.test"]);
    let ca = Authority::new("client CA");
    let ca_file = ca.write(dir.path(), "clients.pem");
    let crl_file = dir.path().join("revoked.crl");
    std::fs::write(&crl_file, ca.revoking(&[])).unwrap();
    let revoked_list = ca.revoking(&[9]);
    let config_crl = crl_file.clone();
    let origin_url = origin.url();
    let edge = start_edge(move |tls| {
        format!(
            "[tls]\nlisten = [\"{tls}\"]\nclient_ca_file = \"{}\"\nclient_cert_optional = true\nclient_crl_files = [\"{}\"]\n{}",
            ca_file.display(),
            config_crl.display(),
            site_toml(&origin_url, "a.test", &site_cert, &site_key, "")
        )
    })
    .await;
    let tls = edge.tls;
    let session = |identity: Option<Identity>| {
        let site_der = site_der.clone();
        async move { connect_as(tls, "a.test", &[&site_der], &[b"http/1.1"], identity).await }
    };
    let soon_revoked = ca.issue("soon revoked", 9);

    let mut anonymous = session(None).await;
    let reply = anonymous
        .try_get("a.test", "/p", &[("client-cert", ":Zm9yZ2Vk:")])
        .await
        .expect("served without a certificate");
    assert_eq!(reply.status, 200);
    assert_eq!(field(&origin.last("/p"), "client-cert"), None);

    // Optional certificates leave the cleartext listener open, and a forged field there
    // still says nothing.
    let plain = get(
        &edge.proxy.url("/p"),
        &[("host", "a.test"), ("client-cert", ":Zm9yZ2Vk:")],
    )
    .await;
    assert_eq!(plain.status, 200);
    assert_eq!(field(&origin.last("/p"), "client-cert"), None);

    let mut member = session(Some(clone_identity(&soon_revoked))).await;
    assert_eq!(member.get("a.test", "/p").await.status, 200);
    assert_eq!(field(&origin.last("/p"), "client-cert"), None);

    let stranger = Authority::new("stranger").issue("x", 3);
    let mut refused = session(Some(stranger)).await;
    assert!(refused.try_get("a.test", "/p", &[]).await.is_err());

    std::fs::write(&crl_file, revoked_list).unwrap();
    edge.proxy.outpost.reload().expect("reloads");
    let mut revoked = session(Some(clone_identity(&soon_revoked))).await;
    assert!(revoked.try_get("a.test", "/p", &[]).await.is_err());
    // The connection made before the reload keeps the judgement it had.
    assert_eq!(member.get("a.test", "/p").await.status, 200);
    let mut other = session(Some(ca.issue("still good", 10))).await;
    assert_eq!(other.get("a.test", "/p").await.status, 200);
}

/// Client-certificate settings are checked: forwarding, optional certificates or CRLs
/// without the CAs that issue them are configuration errors, and an unreadable CA file or
/// CRL is named when the edge starts.
#[test]
fn client_certificate_settings_are_checked_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = write_cert(dir.path(), "a", &["a.test"]);
    let base = format!(
        "origin = \"http://127.0.0.1:1\"\n[tls]\nlisten = [\"127.0.0.1:1\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    for setting in [
        "forward_client_cert = true",
        "client_cert_optional = true",
        "client_crl_files = [\"x.crl\"]",
    ] {
        let refused =
            Config::from_toml_str(&format!("{base}{setting}\n"), &FlagOverrides::default())
                .unwrap_err()
                .to_string();
        assert!(
            refused.contains("tls.client_ca_file"),
            "{setting}: {refused}"
        );
    }

    let start = |extra: &str| {
        let config = Config::from_toml_str(&format!("{base}{extra}\n"), &FlagOverrides::default())
            .expect("valid");
        Outpost::new(config).err().map(|err| err.to_string())
    };
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let refused = start(&format!("client_ca_file = \"{}\"", empty.display())).unwrap();
    assert!(
        refused.contains("empty.pem") && refused.contains("client_ca_file"),
        "{refused}"
    );

    let ca = Authority::new("client CA");
    let ca_file = ca.write(dir.path(), "clients.pem");
    let not_a_crl = dir.path().join("bad.crl");
    std::fs::write(
        &not_a_crl,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let refused = start(&format!(
        "client_ca_file = \"{}\"\nclient_crl_files = [\"{}\"]",
        ca_file.display(),
        not_a_crl.display()
    ))
    .unwrap();
    assert!(refused.contains("bad.crl"), "{refused}");
    assert_eq!(
        start(&format!("client_ca_file = \"{}\"", ca_file.display())),
        None
    );
}

/// A TLS terminator in `forwarding.trusted_proxies` that verified its client's
/// certificate passes it on in `Client-Cert` (RFC 9440 §2: the field comes from the
/// terminator the origin trusts), over cleartext too; a certificate this edge verified
/// itself still replaces whatever such a peer sends.
#[tokio::test]
async fn a_trusted_terminator_in_front_speaks_for_its_clients() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "no-store")], "ok"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let (site_cert, site_key, site_der) = write_cert(dir.path(), "a", &["a.test"]);
    let ca = Authority::new("client CA");
    let ca_file = ca.write(dir.path(), "clients.pem");
    let origin_url = origin.url();
    let edge = start_edge(move |tls| {
        format!(
            "[forwarding]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[tls]\nlisten = [\"{tls}\"]\nclient_ca_file = \"{}\"\nforward_client_cert = true\n{}",
            ca_file.display(),
            site_toml(&origin_url, "a.test", &site_cert, &site_key, "")
        )
    })
    .await;

    let vouched = get(
        &edge.proxy.url("/p"),
        &[("host", "a.test"), ("client-cert", ":dm91Y2hlZA==:")],
    )
    .await;
    assert_eq!(vouched.status, 200, "{}", vouched.text());
    assert_eq!(
        field(&origin.last("/p"), "client-cert").as_deref(),
        Some(":dm91Y2hlZA==:")
    );

    let member = ca.issue("member", 4);
    let own = byte_sequence(&member.0[0]);
    let mut session = connect_as(edge.tls, "a.test", &[&site_der], &[b"h2"], Some(member)).await;
    let reply = session
        .try_get("a.test", "/p", &[("client-cert", ":dm91Y2hlZA==:")])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(field(&origin.last("/p"), "client-cert"), Some(own));
}

/// A site may ask for certificates of its own CA (`tls_client_ca_file`) while the others
/// ask for none, as nginx's `ssl_verify_client` per server: the handshake asks by SNI. A
/// connection set up for one host is then not used for the other, whichever way (421,
/// RFC 9110 §15.5.20), so a public site's handshake is no way into the private one, nor a
/// private site's into the public one; the cleartext listener refuses only the private
/// site. Sites sharing a host must agree on what they ask.
#[tokio::test]
async fn a_site_asks_for_certificates_of_its_own_and_the_sni_decides() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "no-store")], "ok"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, server_der) = write_cert(dir.path(), "both", &["public.test", "private.test"]);
    let ca = Authority::new("private site's CA");
    let ca_file = ca.write(dir.path(), "clients.pem");
    let origin_url = origin.url();
    let site = |host: &str, extra: &str| {
        format!("[[sites]]\nhosts = [\"{host}\"]\norigin = \"{origin_url}\"\n{extra}\n")
    };
    let sites = format!(
        "{}{}",
        site("public.test", ""),
        site(
            "private.test",
            &format!("tls_client_ca_file = \"{}\"", ca_file.display())
        )
    );
    let toml = move |tls: std::net::SocketAddr| {
        format!(
            "[tls]\nlisten = [\"{tls}\"]\ncert = \"{}\"\nkey = \"{}\"\nforward_client_cert = true\n{sites}",
            cert.display(),
            key.display()
        )
    };
    let clash = format!(
        "{}\n{}",
        toml("127.0.0.1:1".parse().unwrap()),
        site("PRIVATE.test", "path_prefix = \"/x/\"")
    );
    let refused = Config::from_toml_str(&clash, &FlagOverrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("sites[2].tls_client_ca_file") && refused.contains("PRIVATE.test"),
        "{refused}"
    );
    let edge = start_edge(toml).await;
    let tls = edge.tls;
    let session = |sni: &'static str, identity: Option<Identity>| {
        let server_der = server_der.clone();
        async move { connect_as(tls, sni, &[&server_der], &[b"http/1.1"], identity).await }
    };

    let mut public = session("public.test", None).await;
    assert_eq!(public.get("public.test", "/p").await.status, 200);
    let across = public.get("private.test", "/p").await;
    assert_eq!(across.status, 421, "{}", across.text());
    assert_eq!(origin.hits("/p"), 1);

    let mut anonymous = session("private.test", None).await;
    assert!(anonymous.try_get("private.test", "/p", &[]).await.is_err());

    let member = ca.issue("member", 5);
    let own = byte_sequence(&member.0[0]);
    let mut private = session("private.test", Some(member)).await;
    assert_eq!(private.get("private.test", "/p").await.status, 200);
    assert_eq!(field(&origin.last("/p"), "client-cert"), Some(own));
    assert_eq!(private.get("public.test", "/p").await.status, 421);
    assert_eq!(origin.hits("/p"), 2);

    let plain_private = get(&edge.proxy.url("/p"), &[("host", "private.test")]).await;
    assert_eq!(plain_private.status, 403);
    let plain_public = get(&edge.proxy.url("/p"), &[("host", "public.test")]).await;
    assert_eq!(plain_public.status, 200);
}

/// What a connection's handshake asked is compared with what a site asks by value, not by
/// position: a reload that adds a site asking for another CA's certificates ahead of the
/// others leaves a connection verified for one site unable to reach the new one (421),
/// while it still serves the site it was made for.
#[tokio::test]
async fn a_reload_that_adds_a_private_site_gives_old_connections_no_way_in() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "no-store")], "ok"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, server_der) = write_cert(dir.path(), "both", &["old.test", "new.test"]);
    let old_ca = Authority::new("old site's CA");
    let new_ca = Authority::new("new site's CA");
    let (old_file, new_file) = (
        old_ca.write(dir.path(), "old.pem"),
        new_ca.write(dir.path(), "new.pem"),
    );
    let reloaded = Arc::new(AtomicBool::new(false));
    let with_new_site = Arc::clone(&reloaded);
    let origin_url = origin.url();
    let edge = start_edge(move |tls| {
        let site = |host: &str, ca: &Path| {
            format!(
                "[[sites]]\nhosts = [\"{host}\"]\norigin = \"{origin_url}\"\ntls_client_ca_file = \"{}\"\n",
                ca.display()
            )
        };
        let first = if with_new_site.load(Ordering::SeqCst) {
            site("new.test", &new_file)
        } else {
            String::new()
        };
        format!(
            "[tls]\nlisten = [\"{tls}\"]\ncert = \"{}\"\nkey = \"{}\"\n{first}{}",
            cert.display(),
            key.display(),
            site("old.test", &old_file)
        )
    })
    .await;
    let member = old_ca.issue("member", 6);
    let mut session = connect_as(
        edge.tls,
        "old.test",
        &[&server_der],
        &[b"http/1.1"],
        Some(member),
    )
    .await;
    assert_eq!(session.get("old.test", "/p").await.status, 200);

    reloaded.store(true, Ordering::SeqCst);
    edge.proxy.outpost.reload().expect("reloads");
    assert_eq!(session.get("new.test", "/p").await.status, 421);
    assert_eq!(session.get("old.test", "/p").await.status, 200);
    assert_eq!(origin.hits("/p"), 2);
}
