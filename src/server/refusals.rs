//! Answers the server writes itself, before hyper has a request to give the pipeline: a
//! request line too long to parse (RFC 9112 §3: a server MUST answer 414), and plain HTTP
//! sent to a TLS port. hyper refuses an over-long request line as it does an over-long
//! header section, with 431, which tells the client to trim its headers when it is the URI
//! that is too long.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How much of what the client sends after a refusal is read and dropped before the
/// connection closes, and for how long: closing with unread bytes sends a reset, which can
/// destroy the answer before the client reads it (RFC 9112 §9.6).
const DRAIN_BYTES: usize = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A complete answer that closes the connection: `status` (its code and reason), a
/// plain-text `body`, and the date (RFC 9110 §6.6.1).
pub(super) fn closing_answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ndate: {}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         cache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        httpdate::fmt_http_date(SystemTime::now()),
        body.len()
    )
    .into_bytes()
}

/// The answer to a request line longer than `server.max_header_bytes`.
pub(super) fn uri_too_long() -> Vec<u8> {
    closing_answer(
        "414 URI Too Long",
        "414 URI Too Long: the request line is longer than this server reads (server.max_header_bytes)\n",
    )
}

/// Whether the start of a request head in `buf` (`limit` bytes or more of it) is a request
/// line that has not ended within `limit` bytes.
pub(super) fn is_request_line_too_long(buf: &[u8], limit: usize) -> bool {
    buf.len() >= limit && memchr::memchr(b'\n', &buf[..limit]).is_none()
}

/// Writes `answer`, ends the sending side, and reads what the client still sends (up to
/// [`DRAIN_BYTES`], for at most [`DRAIN_TIME`]) so that the close does not reset the
/// connection under the answer.
pub(super) async fn refuse<S>(stream: &mut S, answer: &[u8], peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if stream.write_all(answer).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut scratch = vec![0u8; 16 << 10];
        let mut drained = 0;
        while drained < DRAIN_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained += read,
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIME, drain).await.is_err() {
        tracing::debug!(%peer, "client kept sending after its request was refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_is_too_long_only_when_no_line_ends_within_the_limit() {
        assert!(!is_request_line_too_long(b"GET /aaaa", 16));
        assert!(is_request_line_too_long(b"GET /aaaaaaaaaaaaaaaa", 16));
        assert!(!is_request_line_too_long(
            b"GET / HTTP/1.1\r\nX-Long: aaaaaaa",
            16
        ));
    }

    #[test]
    fn a_closing_answer_is_framed_by_its_length() {
        let answer = String::from_utf8(uri_too_long()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        let length = format!("content-length: {}", body.len());
        assert!(head.lines().any(|line| line == length), "{head}");
        assert!(head.contains("connection: close"));
    }
}
