//! The client certificate a TLS listener verified: named in the access log by its
//! SHA-256 fingerprint, told to origins as RFC 9440 says (`Client-Cert`,
//! `Client-Cert-Chain`), and those fields kept from anyone else.
//!
//! The fields are set on the request as received, before the cache is asked, so that an
//! origin answering `Vary: Client-Cert` gets one stored variant per certificate; and they
//! are removed from every request whose peer is not a trusted proxy (RFC 9440 §4:
//! certificates are public, so a client that could send the field could pose as any
//! certificate's holder to the origin and to the cache's variants alike).

use std::fmt::Write as _;

use base64::Engine as _;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;

/// The end-entity certificate, as a Structured Field Byte Sequence (RFC 9440 §2.2).
pub const CLIENT_CERT: HeaderName = HeaderName::from_static("client-cert");
/// The rest of the chain the client sent, a List of Byte Sequences, leaf's issuer first
/// (RFC 9440 §2.3).
pub const CLIENT_CERT_CHAIN: HeaderName = HeaderName::from_static("client-cert-chain");

/// A connection's verified client certificate, made once per connection.
#[derive(Debug)]
pub struct VerifiedClient {
    /// SHA-256 of the end-entity certificate's DER, in lowercase hex (as `openssl x509
    /// -fingerprint -sha256` prints it, without the colons).
    fingerprint: String,
    /// Set when origins are told (`tls.forward_client_cert`).
    fields: Option<ClientCertFields>,
}

impl VerifiedClient {
    /// The client of a connection whose handshake verified `chain` (end-entity first), or
    /// `None` when it presented none; with the RFC 9440 fields when `forwarded`.
    pub fn of_chain(chain: &[CertificateDer<'_>], forwarded: bool) -> Option<VerifiedClient> {
        let leaf = chain.first()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
        let mut fingerprint = String::with_capacity(64);
        for byte in digest.as_ref() {
            let _ = write!(fingerprint, "{byte:02x}");
        }
        Some(VerifiedClient {
            fingerprint,
            fields: forwarded
                .then(|| ClientCertFields::of_chain(chain))
                .flatten(),
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The fields to send, when origins are told.
    pub fn fields(&self) -> Option<&ClientCertFields> {
        self.fields.as_ref()
    }
}

/// The fields for one verified certificate chain.
#[derive(Debug, Clone)]
pub struct ClientCertFields {
    cert: HeaderValue,
    chain: Option<HeaderValue>,
}

impl ClientCertFields {
    /// The fields for `chain` as the TLS handshake gave it (end-entity first), or `None`
    /// for an empty one.
    pub fn of_chain(chain: &[CertificateDer<'_>]) -> Option<ClientCertFields> {
        let (leaf, issuers) = chain.split_first()?;
        let cert = byte_sequence(leaf)?;
        let chain = if issuers.is_empty() {
            None
        } else {
            let items: Vec<String> = issuers.iter().map(|der| byte_sequence_text(der)).collect();
            HeaderValue::try_from(items.join(", ")).ok()
        };
        Some(ClientCertFields { cert, chain })
    }
}

/// Makes `headers` carry the client certificate of this connection: `ours` when the
/// listener verified one and forwards it; what a trusted proxy in front said, when it is
/// the peer and we verified none; otherwise nothing.
pub fn convey(headers: &mut HeaderMap, ours: Option<&ClientCertFields>, peer_is_trusted: bool) {
    if ours.is_none() && peer_is_trusted {
        return;
    }
    // Most requests carry neither: one walk over their few names beats two removals.
    if headers
        .keys()
        .any(|name| name == CLIENT_CERT || name == CLIENT_CERT_CHAIN)
    {
        headers.remove(CLIENT_CERT);
        headers.remove(CLIENT_CERT_CHAIN);
    }
    if let Some(ours) = ours {
        headers.insert(CLIENT_CERT, ours.cert.clone());
        if let Some(chain) = &ours.chain {
            headers.insert(CLIENT_CERT_CHAIN, chain.clone());
        }
    }
}

fn byte_sequence(der: &CertificateDer<'_>) -> Option<HeaderValue> {
    HeaderValue::try_from(byte_sequence_text(der)).ok()
}

/// RFC 8941 §3.3.5: base64 with padding, between colons.
fn byte_sequence_text(der: &CertificateDer<'_>) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    format!(":{encoded}:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(chain: &[&[u8]]) -> ClientCertFields {
        let chain: Vec<CertificateDer<'static>> = chain
            .iter()
            .map(|der| CertificateDer::from(der.to_vec()))
            .collect();
        ClientCertFields::of_chain(&chain).unwrap()
    }

    /// RFC 9440 §2.2 and §2.3: the leaf as one Byte Sequence, its issuers as a List of them.
    #[test]
    fn the_fields_are_structured_byte_sequences() {
        let ours = fields(&[b"leaf", b"intermediate", b"\xff\xfe"]);
        assert_eq!(ours.cert, ":bGVhZg==:");
        assert_eq!(ours.chain.as_ref().unwrap(), ":aW50ZXJtZWRpYXRl:, ://4=:");
        assert!(fields(&[b"leaf"]).chain.is_none());
        assert!(ClientCertFields::of_chain(&[]).is_none());
    }

    /// The access log's name for a client: the leaf's SHA-256, whatever is forwarded.
    #[test]
    fn a_client_is_known_by_its_certificates_fingerprint() {
        let chain = [CertificateDer::from(&b"abc"[..])];
        let client = VerifiedClient::of_chain(&chain, false).unwrap();
        assert_eq!(
            client.fingerprint(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(client.fields().is_none());
        assert!(VerifiedClient::of_chain(&chain, true)
            .unwrap()
            .fields()
            .is_some());
        assert!(VerifiedClient::of_chain(&[], true).is_none());
    }

    /// RFC 9440 §4: a client's own Client-Cert never passes; a trusted proxy's passes only
    /// where this connection verified no certificate of its own.
    #[test]
    fn only_a_trusted_proxy_or_our_own_handshake_says_who_the_client_is() {
        let forged = || {
            let mut headers = HeaderMap::new();
            headers.insert(CLIENT_CERT, HeaderValue::from_static(":Zm9yZ2Vk:"));
            headers.insert(CLIENT_CERT_CHAIN, HeaderValue::from_static(":Zm9yZ2Vk:"));
            headers
        };
        let ours = fields(&[b"leaf"]);

        let mut headers = forged();
        convey(&mut headers, None, false);
        assert!(headers.is_empty(), "{headers:?}");

        let mut headers = forged();
        convey(&mut headers, Some(&ours), false);
        assert_eq!(headers[CLIENT_CERT], ":bGVhZg==:");
        assert!(!headers.contains_key(CLIENT_CERT_CHAIN));

        let mut headers = forged();
        convey(&mut headers, Some(&ours), true);
        assert_eq!(headers[CLIENT_CERT], ":bGVhZg==:");
        assert!(!headers.contains_key(CLIENT_CERT_CHAIN));

        let mut headers = forged();
        convey(&mut headers, None, true);
        assert_eq!(headers, forged());
    }
}
