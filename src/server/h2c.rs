//! The h2c upgrade (RFC 7540 §3.2): a cleartext HTTP/1.1 request offering `Upgrade: h2c`
//! is answered `101 Switching Protocols`, and the connection goes on as HTTP/2 with that
//! request as stream 1. RFC 9113 §3.1 retired the mechanism, but curl-based clients still
//! offer it on every plain-http request, and cargo (through curl) downloads two files at a
//! time over HTTP/1.1 where HTTP/2 lets it multiplex them all: through a package mirror on
//! plain http, that is the difference between a slow and a fast `cargo fetch`.
//!
//! hyper's HTTP/2 server cannot be handed a stream it did not read, so the request is given
//! to it as the client would have sent it: after the client's connection preface and first
//! SETTINGS frame, a HEADERS frame for stream 1 (literal HPACK fields, which leave both
//! sides' compression state untouched) is slipped into the bytes the server reads. The
//! client then gets stream 1's response as RFC 7540 §3.2 says.
//!
//! Only requests without a body are upgraded, and only when their fields fit one frame;
//! everything else is answered as HTTP/1.1, which the RFC allows.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;

use super::proxy_protocol::Prefixed;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame payload a server accepts before it says otherwise (RFC 9113 §4.2).
const MAX_FRAME: usize = 16_384;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;

/// An accepted upgrade: the switch still to happen, and stream 1's HEADERS frame.
pub struct Pending {
    upgrade: hyper::upgrade::OnUpgrade,
    stream_one: Bytes,
}

/// Why a switched connection could not go on as HTTP/2.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("the upgrade did not complete: {0}")]
    Upgrade(#[from] hyper::Error),
    #[error("reading the client preface: {0}")]
    Io(#[from] std::io::Error),
    #[error("no client preface within the header timeout")]
    Timeout,
    #[error("the client did not send the HTTP/2 preface and SETTINGS")]
    BadPreface,
}

/// Accepts `request`'s offer of h2c when it may be taken: the [`Pending`] switch, and the
/// 101 to answer with. `None` leaves the request to HTTP/1.1.
pub fn accept(request: &mut http::Request<Incoming>) -> Option<(Pending, http::Response<()>)> {
    let stream_one = offered(request).then(|| headers_frame(request)).flatten()?;
    let upgrade = hyper::upgrade::on(request);
    let mut response = http::Response::new(());
    *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    Some((
        Pending {
            upgrade,
            stream_one,
        },
        response,
    ))
}

/// An HTTP/1.1 request offering exactly h2c with its settings (RFC 7540 §3.2.1), and no body.
fn offered(request: &http::Request<Incoming>) -> bool {
    let headers = request.headers();
    if !headers.contains_key(header::UPGRADE) {
        return false;
    }
    let tokens = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    let connection = tokens(header::CONNECTION);
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || crate::cache::entry::content_length(headers).is_some_and(|len| len > 0);
    request.version() == http::Version::HTTP_11
        && tokens(header::UPGRADE) == ["h2c"]
        && connection.iter().any(|t| t == "upgrade")
        && connection.iter().any(|t| t == "http2-settings")
        && headers.get_all("http2-settings").iter().count() == 1
        && headers
            .get("http2-settings")
            .is_some_and(is_settings_payload)
        && !has_body
}

/// RFC 7540 §3.2.1: HTTP2-Settings is a SETTINGS payload (six bytes per setting) in
/// base64url, its padding left out. A value that is not one is no h2c offer; the request
/// is answered as HTTP/1.1.
fn is_settings_payload(value: &HeaderValue) -> bool {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    const BASE64URL: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    BASE64URL
        .decode(value.as_bytes())
        .is_ok_and(|payload| payload.len() % 6 == 0)
}

/// Stream 1's HEADERS frame for `request`, or `None` when its fields need more than one
/// frame. Connection-specific fields are left out (RFC 9113 §8.2.2); Host becomes
/// `:authority`.
fn headers_frame(request: &http::Request<Incoming>) -> Option<Bytes> {
    let mut block = BytesMut::new();
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let authority = request
        .headers()
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    literal(&mut block, b":method", request.method().as_str().as_bytes());
    literal(&mut block, b":scheme", b"http");
    literal(&mut block, b":authority", authority);
    literal(&mut block, b":path", target.as_bytes());
    for (name, value) in request.headers() {
        let connection_specific = matches!(
            name.as_str(),
            "host"
                | "connection"
                | "upgrade"
                | "http2-settings"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "te"
        );
        if !connection_specific {
            literal(&mut block, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if block.len() > MAX_FRAME {
        return None;
    }
    let mut frame = BytesMut::with_capacity(9 + block.len());
    frame.put_uint(block.len() as u64, 3);
    frame.put_u8(FRAME_HEADERS);
    frame.put_u8(END_STREAM_AND_HEADERS);
    frame.put_u32(1);
    frame.put(block);
    Some(frame.freeze())
}

/// A literal field without indexing, new name, no Huffman coding (RFC 7541 §6.2.2).
fn literal(block: &mut BytesMut, name: &[u8], value: &[u8]) {
    block.put_u8(0x00);
    string(block, name);
    string(block, value);
}

/// An HPACK string: its length as a 7-bit-prefix integer (RFC 7541 §5.1), then the bytes.
fn string(block: &mut BytesMut, bytes: &[u8]) {
    let mut len = bytes.len();
    if len < 127 {
        block.put_u8(len as u8);
    } else {
        block.put_u8(127);
        len -= 127;
        while len >= 128 {
            block.put_u8((len % 128) as u8 | 0x80);
            len /= 128;
        }
        block.put_u8(len as u8);
    }
    block.put_slice(bytes);
}

/// Completes the switch: once the 101 is out, reads the client's preface and first
/// SETTINGS frame (within `timeout`) and returns the connection for the HTTP/2 server, with
/// stream 1's HEADERS frame placed after them.
///
/// # Errors
/// [`SwitchError`] when the upgrade fails or the client does not speak HTTP/2.
pub async fn switch(
    pending: Pending,
    timeout: Duration,
) -> Result<Prefixed<TokioIo<hyper::upgrade::Upgraded>>, SwitchError> {
    let upgraded = pending.upgrade.await?;
    let mut io = TokioIo::new(upgraded);
    let mut read = BytesMut::with_capacity(256);
    let opening = async {
        // The preface and the SETTINGS frame header; then its payload.
        while read.len() < PREFACE.len() + 9 {
            if io.read_buf(&mut read).await? == 0 {
                return Err(SwitchError::BadPreface);
            }
        }
        let frame = &read[PREFACE.len()..];
        if &read[..PREFACE.len()] != PREFACE || frame[3] != FRAME_SETTINGS {
            return Err(SwitchError::BadPreface);
        }
        let settings_len =
            9 + (usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]));
        while read.len() < PREFACE.len() + settings_len {
            if io.read_buf(&mut read).await? == 0 {
                return Err(SwitchError::BadPreface);
            }
        }
        Ok(PREFACE.len() + settings_len)
    };
    let opening_len = tokio::time::timeout(timeout, opening)
        .await
        .map_err(|_| SwitchError::Timeout)??;
    let rest = read.split_off(opening_len);
    let mut prefix = read;
    prefix.extend_from_slice(&pending.stream_one);
    prefix.extend_from_slice(&rest);
    Ok(Prefixed::new(prefix.to_vec(), io))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7541 §5.1's example: 1337 with a 5-bit prefix is 31, 154, 10; with our 7-bit
    /// prefix, 1337 is 127 then 1210 in 7-bit groups.
    #[test]
    fn hpack_lengths_use_seven_bit_prefixes() {
        let mut block = BytesMut::new();
        string(&mut block, &[b'a'; 1337]);
        assert_eq!(&block[..3], &[127, 0xba, 0x09]);
        assert_eq!(block.len(), 3 + 1337);
        let mut short = BytesMut::new();
        string(&mut short, b"abc");
        assert_eq!(&short[..], b"\x03abc");
    }

    /// RFC 7540 §3.2.1: HTTP2-Settings must be base64url of whole six-byte settings;
    /// curl's value, and none (an empty SETTINGS payload), are offers; anything else is not.
    #[test]
    fn only_a_settings_payload_is_an_h2c_offer() {
        for offer in ["AAMAAABkAAQCAAAAAAIAAAAA", "AAMAAABkAARAAAAAAAIAAAAA", ""] {
            assert!(
                is_settings_payload(&HeaderValue::from_static(offer)),
                "{offer}"
            );
        }
        for not_one in ["!!!notbase64", "AAMAAA", "AAMAAABkAA+CAAAAAAIAAAAA"] {
            assert!(
                !is_settings_payload(&HeaderValue::from_static(not_one)),
                "{not_one}"
            );
        }
    }
}
