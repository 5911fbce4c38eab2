//! [`ProxyError`]: everything that can stop outpost from relaying a response, classified by
//! whose fault it is, and the single place where an error becomes a response.
//!
//! Every error response carries a `Proxy-Status` header (RFC 9209) naming this proxy and an
//! `error=` type from the RFC's registry (§2.3), so an operator can tell "the origin refused"
//! from "the origin was too slow" from "the client sent garbage" without reading logs. How
//! upstream failures are recognised lives in `upstream`; this module only names and renders.

use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

use crate::body::Body;

/// Whose fault an error is; it decides the status class and the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Downstream,
    Upstream,
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed or ambiguous (RFC 9112 §6.3 framing, missing Host, ...).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client's request body broke while it was being forwarded (bad chunked framing, a
    /// connection closed mid-body): the client's fault, never the origin's.
    #[error("the request body could not be read: {detail}")]
    RequestBody { detail: String },
    /// The request's header section is larger, or has more fields, than
    /// `server.max_header_bytes` and `server.max_headers` allow (RFC 6585 §5).
    #[error("request header fields too large: {0}")]
    HeaderFieldsTooLarge(&'static str),
    /// The request target alone is longer than `server.max_header_bytes` allows (RFC 9110
    /// §15.5.15).
    #[error("the request target is longer than this server reads")]
    UriTooLong,
    /// The request needs something outpost does not do (RFC 9112 §6.1: a transfer coding
    /// other than chunked).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// The client may not do this (PURGE from an address not in `cache.purge_allowed`).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// No site answers for this Host (RFC 9110 §15.5.20).
    #[error("no site is configured for host `{0}`")]
    MisdirectedRequest(String),
    /// The TLS connection was set up for a site that asks other client certificates
    /// than this host's (RFC 9110 §15.5.20): the client should open one for this host.
    #[error("this connection's TLS handshake was for another host than `{0}`, which asks for other client certificates: open a new connection")]
    OtherSitesHandshake(String),
    #[error("origin {origin}: connection refused")]
    ConnectionRefused { origin: String },
    #[error("origin {origin}: connect timed out")]
    ConnectionTimeout { origin: String },
    /// Any other failure to establish the connection.
    #[error("origin {origin}: cannot connect: {detail}")]
    ConnectFailed { origin: String, detail: String },
    #[error("origin {origin}: DNS lookup failed: {detail}")]
    DnsError { origin: String, detail: String },
    #[error("origin {origin}: TLS failed: {detail}")]
    TlsError { origin: String, detail: String },
    /// The origin's certificate was invalid or not trusted.
    #[error("origin {origin}: certificate rejected: {detail}")]
    TlsCertificate { origin: String, detail: String },
    #[error("origin {origin}: no response header section within the configured timeout")]
    ResponseHeaderTimeout { origin: String },
    /// The origin closed or reset the connection before a complete response head.
    #[error("origin {origin}: response incomplete: {detail}")]
    ResponseIncomplete { origin: String, detail: String },
    /// The origin answered with something that is not valid HTTP.
    #[error("origin {origin}: protocol error: {detail}")]
    UpstreamProtocol { origin: String, detail: String },
    /// The origin's response header section was larger than outpost reads one in.
    #[error("origin {origin}: response header section too large")]
    ResponseHeaderTooLarge { origin: String },
    /// A package artifact whose bytes do not match the digest its index published (or
    /// that could not be checked): never stored or served.
    #[error("origin {origin}: {detail}")]
    IntegrityMismatch { origin: String, detail: String },
    /// A fill or origin-connection limit and its queue were full (`what` says which).
    #[error("{what} limit reached: try again later")]
    LimitReached { what: &'static str },
    /// The origin's body stopped arriving for longer than `upstream.body_read_timeout`.
    #[error("origin {origin}: response body stalled past the body-read timeout")]
    BodyReadTimeout { origin: String },
    /// No server of the pool may take requests (all drained, failing their checks).
    #[error("pool {pool}: no server may take requests")]
    NoServer { pool: String },
    /// Several servers of a pool were tried; `last` is how the last try failed.
    #[error("{last} (after {attempts} attempts)")]
    Retried {
        attempts: u32,
        last: Box<ProxyError>,
    },
    /// A stored body turned out corrupt or missing before any of it was sent: the entry is
    /// dropped and the object fetched again; reaches a client only if that fails the same way.
    #[error("stored body unreadable: {0}")]
    StoredBodyLost(String),
    /// A Range request waited for its fill to store the object, and the fill ended without
    /// storing it (its disk file failed mid-way): the request is sent again with its Range
    /// forwarded; reaches a client only if that fails the same way.
    #[error("the object a range was to be cut from was not stored after all")]
    RangeNotStored,
    #[error("internal error: {0}")]
    Internal(String),
}

/// The RFC 9209 §2.3 error types outpost reports, in `Proxy-Status`, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    HttpRequestError,
    HttpRequestDenied,
    DestinationNotFound,
    ConnectionRefused,
    ConnectionTimeout,
    DnsError,
    DestinationUnavailable,
    TlsProtocolError,
    TlsCertificateError,
    HttpResponseTimeout,
    HttpResponseIncomplete,
    HttpProtocolError,
    /// RFC 9209 §2.3.17.
    HttpResponseHeaderSectionSize,
    ConnectionLimitReached,
    ConnectionReadTimeout,
    ProxyInternalError,
}

impl ErrorType {
    /// What happened, in words a client may read (no addresses, no internals).
    pub fn describe(self) -> &'static str {
        match self {
            ErrorType::HttpRequestError => "the request is malformed",
            ErrorType::HttpRequestDenied => "the request is not allowed",
            ErrorType::DestinationNotFound => "no site is configured for this host",
            ErrorType::ConnectionRefused => {
                "the origin refused the connection (connection refused)"
            }
            ErrorType::ConnectionTimeout => "connecting to the origin timed out",
            ErrorType::DnsError => "the origin's name could not be resolved",
            ErrorType::DestinationUnavailable => "the origin could not be reached",
            ErrorType::TlsProtocolError => "the TLS handshake with the origin failed",
            ErrorType::TlsCertificateError => "the origin's certificate was rejected",
            ErrorType::HttpResponseTimeout => "the origin did not answer in time",
            ErrorType::HttpResponseIncomplete => "the origin's response was incomplete",
            ErrorType::HttpProtocolError => "the origin's response was not valid HTTP",
            ErrorType::HttpResponseHeaderSectionSize => {
                "the origin's response header section was too large"
            }
            ErrorType::ConnectionLimitReached => "too busy: try again later",
            ErrorType::ConnectionReadTimeout => "the origin stopped sending its response",
            ErrorType::ProxyInternalError => "internal error",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::HttpRequestError => "http_request_error",
            ErrorType::HttpRequestDenied => "http_request_denied",
            ErrorType::DestinationNotFound => "destination_not_found",
            ErrorType::ConnectionRefused => "connection_refused",
            ErrorType::ConnectionTimeout => "connection_timeout",
            ErrorType::DnsError => "dns_error",
            ErrorType::DestinationUnavailable => "destination_unavailable",
            ErrorType::TlsProtocolError => "tls_protocol_error",
            ErrorType::TlsCertificateError => "tls_certificate_error",
            ErrorType::HttpResponseTimeout => "http_response_timeout",
            ErrorType::HttpResponseIncomplete => "http_response_incomplete",
            ErrorType::HttpProtocolError => "http_protocol_error",
            ErrorType::HttpResponseHeaderSectionSize => "http_response_header_section_size",
            ErrorType::ConnectionLimitReached => "connection_limit_reached",
            ErrorType::ConnectionReadTimeout => "connection_read_timeout",
            ErrorType::ProxyInternalError => "proxy_internal_error",
        }
    }
}

/// Why validating a stored response failed, when a stale copy answered instead (RFC 5861
/// §4, RFC 9111 §4.2.4): the origin could not be used, or it answered with a server error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginFailure {
    Error(ErrorType),
    /// 500, 502, 503 or 504.
    Status(u16),
}

impl OriginFailure {
    /// `connection_refused`, `http_503`, ...: the Cache-Status detail.
    pub fn as_str(self) -> &'static str {
        match self {
            OriginFailure::Error(error) => error.as_str(),
            OriginFailure::Status(500) => "http_500",
            OriginFailure::Status(502) => "http_502",
            OriginFailure::Status(503) => "http_503",
            OriginFailure::Status(504) => "http_504",
            OriginFailure::Status(_) => "http_5xx",
        }
    }
}

impl ProxyError {
    /// The error itself, or the last try's when several were made.
    pub fn last_try(&self) -> &ProxyError {
        match self {
            ProxyError::Retried { last, .. } => last.last_try(),
            other => other,
        }
    }

    pub fn fault(&self) -> Fault {
        match self.last_try() {
            ProxyError::BadRequest(_)
            | ProxyError::RequestBody { .. }
            | ProxyError::NotImplemented(_)
            | ProxyError::MisdirectedRequest(_)
            | ProxyError::OtherSitesHandshake(_)
            | ProxyError::Forbidden(_)
            | ProxyError::HeaderFieldsTooLarge(_)
            | ProxyError::UriTooLong
            // Load, not a fault of ours or the origin's: logged quietly, counted in metrics.
            | ProxyError::LimitReached { .. } => Fault::Downstream,
            ProxyError::Internal(_) | ProxyError::StoredBodyLost(_) | ProxyError::RangeNotStored => {
                Fault::Internal
            }
            _ => Fault::Upstream,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.last_try() {
            ProxyError::BadRequest(_) | ProxyError::RequestBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::HeaderFieldsTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::MisdirectedRequest(_) | ProxyError::OtherSitesHandshake(_) => {
                StatusCode::MISDIRECTED_REQUEST
            }
            ProxyError::ConnectionTimeout { .. } | ProxyError::ResponseHeaderTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Internal(_)
            | ProxyError::StoredBodyLost(_)
            | ProxyError::RangeNotStored => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::LimitReached { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The RFC 9209 §2.3 error type.
    pub fn proxy_status_error(&self) -> ErrorType {
        match self.last_try() {
            ProxyError::BadRequest(_)
            | ProxyError::RequestBody { .. }
            | ProxyError::NotImplemented(_)
            | ProxyError::HeaderFieldsTooLarge(_)
            | ProxyError::UriTooLong => ErrorType::HttpRequestError,
            ProxyError::Forbidden(_) => ErrorType::HttpRequestDenied,
            ProxyError::MisdirectedRequest(_) => ErrorType::DestinationNotFound,
            ProxyError::OtherSitesHandshake(_) => ErrorType::HttpRequestDenied,
            ProxyError::ConnectionRefused { .. } => ErrorType::ConnectionRefused,
            ProxyError::ConnectionTimeout { .. } => ErrorType::ConnectionTimeout,
            ProxyError::DnsError { .. } => ErrorType::DnsError,
            ProxyError::ConnectFailed { .. } => ErrorType::DestinationUnavailable,
            ProxyError::TlsError { .. } => ErrorType::TlsProtocolError,
            ProxyError::TlsCertificate { .. } => ErrorType::TlsCertificateError,
            ProxyError::ResponseHeaderTimeout { .. } => ErrorType::HttpResponseTimeout,
            ProxyError::ResponseIncomplete { .. } => ErrorType::HttpResponseIncomplete,
            ProxyError::UpstreamProtocol { .. } | ProxyError::IntegrityMismatch { .. } => {
                ErrorType::HttpProtocolError
            }
            ProxyError::ResponseHeaderTooLarge { .. } => ErrorType::HttpResponseHeaderSectionSize,
            ProxyError::LimitReached { .. } => ErrorType::ConnectionLimitReached,
            ProxyError::BodyReadTimeout { .. } => ErrorType::ConnectionReadTimeout,
            ProxyError::NoServer { .. } => ErrorType::DestinationUnavailable,
            ProxyError::Internal(_)
            | ProxyError::StoredBodyLost(_)
            | ProxyError::RangeNotStored
            | ProxyError::Retried { .. } => ErrorType::ProxyInternalError,
        }
    }

    /// The response a client gets for this error: status, `Proxy-Status`, a one-line body.
    ///
    /// Only the RFC 9209 error type and a plain description go to clients; the details (the
    /// origin's address, the error chain) go to `reveal`ed clients (trusted debug clients)
    /// and to the log. A refusal of the client's own request is its own business and is
    /// always described in full.
    pub fn to_response(&self, proxy_name: &str, reveal: bool) -> Response<Body> {
        let status = self.status();
        let error = self.proxy_status_error();
        let reveal = reveal || self.fault() == Fault::Downstream;
        let (proxy_status, text) = if reveal {
            let details = self.to_string();
            let header = format!(
                "{proxy_name}; error={}; details={}",
                error.as_str(),
                sf_string(&details)
            );
            (header, details)
        } else {
            let mut header = format!("{proxy_name}; error={}", error.as_str());
            let mut text = format!("{} ({})", error.describe(), error.as_str());
            if let ProxyError::Retried { attempts, .. } = self {
                // How hard we tried is no secret: it tells a client retrying is pointless.
                let attempts = format!("after {attempts} attempts");
                header.push_str(&format!("; details={}", sf_string(&attempts)));
                text.push_str(&format!(", {attempts}"));
            }
            if let ProxyError::IntegrityMismatch { detail, .. } = self {
                // Nor is a refused artifact: the client learns the upstream's copy is bad.
                header.push_str(&format!("; details={}", sf_string(detail)));
                text.push_str(&format!(": {detail}"));
            }
            (header, text)
        };
        let mut response = Response::new(Body::full(format!(
            "{} {}: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            text
        )));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(value) = HeaderValue::from_str(&proxy_status) {
            headers.insert("proxy-status", value);
        }
        if self.fault() == Fault::Downstream
            && matches!(
                status,
                StatusCode::BAD_REQUEST | StatusCode::NOT_IMPLEMENTED
            )
        {
            // A request whose framing or body we could not trust leaves the connection in an
            // unknown state (RFC 9112 §6.3): do not read another request from it.
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Serialises text as an RFC 9651 §3.3.3 sf-string (by `sfv`): printable ASCII only, so
/// anything else is replaced with `?` first and the header stays valid.
pub(crate) fn sf_string(text: &str) -> String {
    let printable: String = text
        .chars()
        .map(|ch| if matches!(ch, ' '..='~') { ch } else { '?' })
        .collect();
    // invariant: printable ASCII is always a valid sf-string.
    match sfv::StringRef::from_str(&printable) {
        Ok(string) => sfv::ItemSerializer::new().bare_item(string).finish(),
        Err(_) => "\"?\"".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sf_string_escapes_quotes_and_backslashes_and_drops_non_ascii() {
        assert_eq!(sf_string(r#"a "b" \c é"#), r#""a \"b\" \\c ?""#);
    }

    /// RFC 9209 §2: Proxy-Status is an RFC 9651 List; what we send parses as one.
    #[test]
    fn proxy_status_parses_as_a_structured_list() {
        let err = ProxyError::ResponseIncomplete {
            origin: "http://o\"rigin".into(),
            detail: "reset \\ \u{e9}".into(),
        };
        let response = err.to_response("edge-1", true);
        let value = response.headers()["proxy-status"].to_str().unwrap();
        let list: sfv::List = sfv::Parser::new(value).parse().unwrap();
        assert_eq!(list.len(), 1);
    }

    /// RFC 9209 §2: the header names the proxy, then the error type as a parameter.
    #[test]
    fn proxy_status_names_proxy_and_error_type() {
        let err = ProxyError::ConnectionRefused {
            origin: "http://127.0.0.1:1".into(),
        };
        let response = err.to_response("edge-1", true);
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let value = response.headers()["proxy-status"].to_str().unwrap();
        assert!(
            value.starts_with("edge-1; error=connection_refused; details=\""),
            "{value}"
        );
        // Anyone else learns the error type, not the origin's address.
        let response = err.to_response("edge-1", false);
        let value = response.headers()["proxy-status"].to_str().unwrap();
        assert_eq!(value, "edge-1; error=connection_refused");
    }
}
