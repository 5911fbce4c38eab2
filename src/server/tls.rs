//! TLS termination: the rustls server configuration made from the settings (each
//! certificate and key read from its file, checked to belong together), the certificate
//! chosen by SNI among the sites' and the default one, ALPN `h2` and `http/1.1`, TLS 1.2
//! and 1.3, resumption by session cache and tickets, OCSP stapling from a file (see
//! `super::ocsp`), and client certificates verified against configured CAs and CRLs.
//! Built again on every reload, so a renewed certificate, response or CRL applies to new
//! connections while open ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::ocsp::{self, OcspStaple};
use crate::config::{ClientAuth, Config};

/// Why the TLS configuration could not be made; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: cannot read the certificate chain: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("{path}: cannot read the private key: {message}")]
    Key { path: PathBuf, message: String },
    #[error("{key}: this key does not belong to the certificate in {cert}: {message}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("{path}: cannot use it as a stapled OCSP response: {message}")]
    OcspResponse { path: PathBuf, message: String },
    #[error("{path}: cannot read the client CA certificates (client_ca_file): {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("{path}: cannot read the certificate revocation list (client_crl_files): {message}")]
    Crl { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What a connection's handshake asked of the client: a site routed to must ask the same
/// (compared by value, so a reload that renumbers or changes them never lets a connection
/// verified under one serve a site that asks another).
pub type VerifiedUnder = Arc<Option<ClientAuth>>;

/// The server configurations of the TLS listeners: one per client authentication the
/// configuration names ([`Config::client_auths`]), chosen by the SNI of each connection.
#[derive(Debug)]
pub struct TlsListening {
    configs: Vec<Arc<rustls::ServerConfig>>,
    /// What each of `configs` asks of clients.
    auths: Vec<VerifiedUnder>,
    /// The hosts (lowercase, `*.suffix` or `*`) of sites whose connections are verified
    /// under another configuration than the first, with its index.
    by_host: Vec<(String, usize)>,
}

impl TlsListening {
    /// The one configuration, when every connection gets it: no need to read the
    /// ClientHello first.
    pub fn single(&self) -> Option<(VerifiedUnder, Arc<rustls::ServerConfig>)> {
        match (self.auths.as_slice(), self.configs.as_slice()) {
            ([auth], [only]) => Some((Arc::clone(auth), Arc::clone(only))),
            _ => None,
        }
    }

    /// The configuration for a connection whose ClientHello names `server_name`, and what
    /// it asks of clients: found as its certificate is ([`by_server_name`]), else the
    /// global one. A request routed to a site that asks otherwise is refused, so a name
    /// matched here differently from routing never skips a check.
    pub fn for_server_name(
        &self,
        server_name: Option<&str>,
    ) -> (VerifiedUnder, Arc<rustls::ServerConfig>) {
        let index = server_name
            .and_then(|name| by_server_name(&self.by_host, &name.to_ascii_lowercase()))
            .copied()
            .unwrap_or(0);
        (
            Arc::clone(&self.auths[index]),
            Arc::clone(&self.configs[index]),
        )
    }
}

/// The server configurations for the TLS listeners, or `None` when none are configured.
///
/// # Errors
/// [`TlsSetupError`] for a missing, unreadable or empty certificate or key file, or a key
/// that is not the certificate's, or a client CA or CRL file that cannot be used.
pub fn server_config(config: &Config) -> Result<Option<Arc<TlsListening>>, TlsSetupError> {
    Ok(built(config, SystemTime::now())?.map(|built| Arc::new(built.listening)))
}

/// The server configurations, and the certificates they serve.
struct Built {
    listening: TlsListening,
    certificates: Arc<BySni>,
}

/// What [`server_config`] makes, with the certificates read at `now`.
fn built(config: &Config, now: SystemTime) -> Result<Option<Built>, TlsSetupError> {
    if config.tls.listen.is_empty() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificates = Arc::new(certificates(config, &provider, now)?);
    let auths = config.client_auths();
    let mut configs = Vec::with_capacity(auths.len());
    for auth in &auths {
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(client_verifier(auth.as_ref(), &provider)?)
            .with_cert_resolver(Arc::clone(&certificates) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Resumption: the session cache (rustls's default) for TLS 1.2 and stateful 1.3,
        // and tickets for clients that prefer them. Each configuration has its own of
        // both, so a session verified under one never resumes under another.
        server.ticketer = rustls::crypto::ring::Ticketer::new()?;
        configs.push(Arc::new(server));
    }
    let mut by_host = Vec::new();
    for site in config.all_sites() {
        let index = config.client_auth_index(&site, &auths);
        if index != 0 {
            by_host.extend(site.hosts.iter().map(|h| (h.to_ascii_lowercase(), index)));
        }
    }
    Ok(Some(Built {
        listening: TlsListening {
            configs,
            auths: auths.into_iter().map(Arc::new).collect(),
            by_host,
        },
        certificates,
    }))
}

/// Who may connect: anyone, or (with a client CA file) clients whose certificate those
/// CAs issued and no configured CRL revokes.
fn client_verifier(
    auth: Option<&ClientAuth>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsSetupError> {
    let Some(ClientAuth {
        ca_file,
        optional,
        crl_files,
    }) = auth
    else {
        return Ok(WebPkiClientVerifier::no_client_auth());
    };
    let ca_error = |message: String| TlsSetupError::ClientCa {
        path: ca_file.clone(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in
        CertificateDer::pem_file_iter(ca_file).map_err(|err| ca_error(err.to_string()))?
    {
        let certificate = certificate.map_err(|err| ca_error(err.to_string()))?;
        roots
            .add(certificate)
            .map_err(|err| ca_error(format!("not a CA certificate: {err}")))?;
    }
    if roots.is_empty() {
        return Err(ca_error("no PEM certificate in the file".to_string()));
    }
    let mut crls = Vec::new();
    for path in crl_files {
        let crl_error = |message: String| TlsSetupError::Crl {
            path: path.clone(),
            message,
        };
        let read: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(path)
                .and_then(Iterator::collect)
                .map_err(|err| crl_error(err.to_string()))?;
        if read.is_empty() {
            return Err(crl_error("no PEM X509 CRL in the file".to_string()));
        }
        // Parsed here, one file at a time, so a bad one is named.
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), Arc::clone(provider))
            .with_crls(read.iter().cloned())
            .build()
            .map_err(|err| crl_error(err.to_string()))?;
        crls.extend(read);
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
            .with_crls(crls);
    if *optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|err| ca_error(err.to_string()))
}

fn certified_key(
    cert: &Path,
    key: &Path,
    ocsp_response: Option<&Path>,
    provider: &rustls::crypto::CryptoProvider,
    now: SystemTime,
) -> Result<Served, TlsSetupError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|err| TlsSetupError::Certificate {
            path: cert.to_path_buf(),
            message: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::Certificate {
            path: cert.to_path_buf(),
            message: "no PEM certificate in the file".to_string(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|err| TlsSetupError::Key {
        path: key.to_path_buf(),
        message: err.to_string(),
    })?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|err| {
        TlsSetupError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            message: err.to_string(),
        }
    })?;
    let staple = ocsp_response
        .map(|path| read_ocsp_response(path, &certified.cert[0]))
        .transpose()?;
    Ok(Served::new(certified, staple, now))
}

/// The OCSP response in `path`, read as the one to staple with `certificate`.
fn read_ocsp_response(
    path: &Path,
    certificate: &CertificateDer<'_>,
) -> Result<(PathBuf, OcspStaple), TlsSetupError> {
    let refuse = |message: String| TlsSetupError::OcspResponse {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|err| refuse(err.to_string()))?;
    let staple = ocsp::read_staple(bytes, certificate).map_err(|err| refuse(err.to_string()))?;
    Ok((path.to_path_buf(), staple))
}

/// A certificate as served: with its OCSP response stapled while that holds, without it
/// once it has expired (a client that checks then asks the responder itself).
#[derive(Debug)]
struct Served {
    stapled: Arc<CertifiedKey>,
    /// The same certificate without the staple, and the response's file and end, when
    /// one is stapled.
    expiring: Option<Expiring>,
}

#[derive(Debug)]
struct Expiring {
    unstapled: Arc<CertifiedKey>,
    path: PathBuf,
    until: SystemTime,
    /// Whether its expiry was logged.
    told: AtomicBool,
}

impl Expiring {
    fn is_past(&self, now: SystemTime) -> bool {
        now >= self.until
    }

    /// Logs, once, that the response is no longer stapled.
    fn tell(&self) {
        if !self.told.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %self.path.display(),
                "the OCSP response has expired: it is not stapled; refresh the file and reload"
            );
        }
    }
}

impl Served {
    /// `certified`, with `staple` (read from its file) while that holds; one already
    /// expired at `now` is warned of now.
    fn new(
        mut certified: CertifiedKey,
        staple: Option<(PathBuf, OcspStaple)>,
        now: SystemTime,
    ) -> Served {
        let Some((path, staple)) = staple else {
            return Served {
                stapled: Arc::new(certified),
                expiring: None,
            };
        };
        let expired = !staple.holds_at(now);
        let expiring = staple.next_update.map(|until| Expiring {
            unstapled: Arc::new(certified.clone()),
            path,
            until,
            told: AtomicBool::new(false),
        });
        if let Some(expiring) = expiring.as_ref().filter(|_| expired) {
            expiring.tell();
        }
        certified.ocsp = Some(staple.bytes);
        Served {
            stapled: Arc::new(certified),
            expiring,
        }
    }

    /// The certificate to send at `now`.
    fn at(&self, now: SystemTime) -> Arc<CertifiedKey> {
        match &self.expiring {
            Some(expiring) if expiring.is_past(now) => {
                expiring.tell();
                Arc::clone(&expiring.unstapled)
            }
            _ => Arc::clone(&self.stapled),
        }
    }
}

/// Every certificate the TLS listeners serve: the default one and the sites', by host.
fn certificates(
    config: &Config,
    provider: &rustls::crypto::CryptoProvider,
    now: SystemTime,
) -> Result<BySni, TlsSetupError> {
    let default = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Some(Arc::new(certified_key(
            cert,
            key,
            config.tls.ocsp_response.as_deref(),
            provider,
            now,
        )?)),
        _ => None,
    };
    let mut by_host = Vec::new();
    for site in &config.sites {
        if let (Some(cert), Some(key)) = (&site.tls_cert, &site.tls_key) {
            let certified = Arc::new(certified_key(
                cert,
                key,
                site.tls_ocsp_response.as_deref(),
                provider,
                now,
            )?);
            for host in &site.hosts {
                by_host.push((host.to_ascii_lowercase(), Arc::clone(&certified)));
            }
        }
    }
    Ok(BySni { by_host, default })
}

/// What `outpost check` tries: the server configuration made as [`server_config`] makes
/// it, and, as warnings, the configured OCSP responses that no longer hold at `now`
/// (`serve` would start without stapling them), one line each.
///
/// # Errors
/// As [`server_config`].
pub fn preflight(config: &Config, now: SystemTime) -> Result<Vec<String>, TlsSetupError> {
    let Some(Built { certificates, .. }) = built(config, now)? else {
        return Ok(Vec::new());
    };
    let mut served: Vec<&Arc<Served>> = certificates.default.iter().collect();
    served.extend(certificates.by_host.iter().map(|(_, served)| served));
    // A site's certificate stands once per host, one after the other.
    served.dedup_by(|a, b| Arc::ptr_eq(a, b));
    Ok(served
        .into_iter()
        .filter_map(|served| served.expiring.as_ref())
        .filter(|expiring| expiring.is_past(now))
        .map(|expiring| {
            format!(
                "{}: the OCSP response expired at {}; serve would not staple it",
                expiring.path.display(),
                httpdate::fmt_http_date(expiring.until)
            )
        })
        .collect())
}

/// Chooses the certificate by the SNI name: a site naming the host exactly, else one
/// whose `*.suffix` covers it, else the default.
#[derive(Debug)]
struct BySni {
    by_host: Vec<(String, Arc<Served>)>,
    default: Option<Arc<Served>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let served = hello
            .server_name()
            .and_then(|name| by_server_name(&self.by_host, &name.to_ascii_lowercase()))
            .or(self.default.as_ref());
        served.map(|served| served.at(SystemTime::now()))
    }
}

/// What `entries` (lowercase host patterns of the sites, in order) hold for the SNI `name`
/// (lowercase): the host named exactly, else the first `*.suffix` or `*` that covers it.
fn by_server_name<'a, T>(entries: &'a [(String, T)], name: &str) -> Option<&'a T> {
    let exact = entries.iter().find(|(host, _)| host == name);
    let wildcard = || {
        entries.iter().find(|(host, _)| {
            host.strip_prefix('*')
                .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
        })
    };
    exact.or_else(wildcard).map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn certified() -> CertifiedKey {
        let made = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let key = PrivateKeyDer::try_from(made.key_pair.serialize_der()).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(vec![made.cert.der().clone()], key, &provider).unwrap()
    }

    /// RFC 6960 §4.2.2.1: a response holds until its nextUpdate; from then on the
    /// certificate is served without it, and one without a nextUpdate is always stapled.
    #[test]
    fn a_staple_is_sent_until_its_next_update() {
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let staple = |next_update| OcspStaple {
            bytes: vec![0x30, 0x00],
            next_update,
        };
        let path = PathBuf::from("a.ocsp");
        let before = until - Duration::from_secs(1);
        let served = Served::new(
            certified(),
            Some((path.clone(), staple(Some(until)))),
            before,
        );
        assert_eq!(served.at(before).ocsp.as_deref(), Some(&[0x30, 0x00][..]));
        assert_eq!(served.at(until).ocsp, None, "expired");
        assert_eq!(served.at(until + Duration::from_secs(60)).ocsp, None);
        let forever = Served::new(certified(), Some((path, staple(None))), before);
        assert!(forever
            .at(until + Duration::from_secs(1 << 30))
            .ocsp
            .is_some());
        assert_eq!(Served::new(certified(), None, before).at(before).ocsp, None);
    }
}
