//! TLS termination: the rustls server configuration made from the settings (each
//! certificate and key read from its file, checked to belong together), the certificate
//! chosen by SNI among the sites' and the default one, ALPN `h2` and `http/1.1`, TLS 1.2
//! and 1.3, resumption by session cache and tickets. Built again on every reload, so a
//! renewed certificate is served to new connections while open ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::Config;

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
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server configuration for the TLS listeners, or `None` when none are configured.
///
/// # Errors
/// [`TlsSetupError`] for a missing, unreadable or empty certificate or key file, or a key
/// that is not the certificate's.
pub fn server_config(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, TlsSetupError> {
    if config.tls.listen.is_empty() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let default = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Some(certified_key(
            cert,
            key,
            config.tls.ocsp_response.as_deref(),
            &provider,
        )?),
        _ => None,
    };
    let mut by_host = Vec::new();
    for site in &config.sites {
        if let (Some(cert), Some(key)) = (&site.tls_cert, &site.tls_key) {
            let certified = certified_key(cert, key, site.tls_ocsp_response.as_deref(), &provider)?;
            for host in &site.hosts {
                by_host.push((host.to_ascii_lowercase(), Arc::clone(&certified)));
            }
        }
    }
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni { by_host, default }));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption: the session cache (rustls's default) for TLS 1.2 and stateful 1.3, and
    // tickets for clients that prefer them.
    server.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Some(Arc::new(server)))
}

fn certified_key(
    cert: &Path,
    key: &Path,
    ocsp_response: Option<&Path>,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsSetupError> {
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
    let mut certified = CertifiedKey::from_der(chain, private, provider).map_err(|err| {
        TlsSetupError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            message: err.to_string(),
        }
    })?;
    if let Some(path) = ocsp_response {
        certified.ocsp = Some(read_ocsp_response(path)?);
    }
    Ok(Arc::new(certified))
}

/// The bytes of a DER OCSP response file. Only their outer shape is checked (a DER
/// SEQUENCE that spans the file): the response is the CA's signed statement and the
/// client verifies it; a PEM or empty file here is a mistake worth refusing at start.
fn read_ocsp_response(path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    let refuse = |message: String| TlsSetupError::OcspResponse {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|err| refuse(err.to_string()))?;
    if der_sequence_len(&bytes) != Some(bytes.len()) {
        return Err(refuse(
            "not a DER OCSP response (one ASN.1 SEQUENCE; PEM or base64 must be decoded first)"
                .to_string(),
        ));
    }
    Ok(bytes)
}

/// The length of the DER SEQUENCE that starts `bytes`, header included, if it starts one.
fn der_sequence_len(bytes: &[u8]) -> Option<usize> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let count = usize::from(first & 0x7f);
    if count == 0 || count > 4 || rest.len() < count {
        return None;
    }
    let content = rest[..count]
        .iter()
        .fold(0usize, |len, byte| (len << 8) | usize::from(*byte));
    Some(2 + count + content)
}

/// Chooses the certificate by the SNI name: a site naming the host exactly, else one
/// whose `*.suffix` covers it, else the default.
#[derive(Debug)]
struct BySni {
    by_host: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        let exact = self.by_host.iter().find(|(host, _)| *host == name);
        let wildcard = || {
            self.by_host.iter().find(|(host, _)| {
                host.strip_prefix('*')
                    .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
            })
        };
        exact
            .or_else(wildcard)
            .map(|(_, key)| Arc::clone(key))
            .or_else(|| self.default.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::der_sequence_len;

    /// X.690 §8.1.3: short and long definite lengths; anything else is not one SEQUENCE.
    #[test]
    fn der_sequence_lengths() {
        assert_eq!(der_sequence_len(&[0x30, 0x03, 0x0a, 0x01, 0x00]), Some(5));
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.resize(4 + 256, 0);
        assert_eq!(der_sequence_len(&long), Some(260));
        assert_eq!(der_sequence_len(&[0x30, 0x81, 0x80]), Some(131));
        assert_eq!(der_sequence_len(b"-----BEGIN"), None, "PEM");
        assert_eq!(der_sequence_len(&[]), None);
        assert_eq!(der_sequence_len(&[0x30, 0x80]), None, "indefinite: not DER");
        assert_eq!(der_sequence_len(&[0x30, 0x82, 0x01]), None, "cut length");
    }
}
