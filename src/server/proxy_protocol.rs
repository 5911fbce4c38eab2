//! PROXY protocol v1 and v2 (HAProxy's), read from peers in `server.proxy_protocol_from`
//! only: a TCP load balancer in front tells us the real client's address, which then
//! stands for the peer in forwarding headers, ACLs, limits and logs. From anyone else a
//! PROXY header is never interpreted (it is not HTTP, and the request fails).
//!
//! From a trusted peer the header is optional (its health checks may connect without one);
//! it must arrive within the request-head timeout. A v2 `LOCAL` command or an `UNKNOWN`
//! family keeps the peer's own address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the spec's 107).
const V1_MAX: usize = 107;

/// Why a PROXY header could not be used: the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a PROXY header if the connection starts with one. Returns the client address it
/// gives (`None`: no header, or one that names no address) and the connection with the
/// bytes read past the header put back in front.
///
/// # Errors
/// [`ProxyHeaderError`] for a header that starts but is malformed or cut short.
pub async fn read_header(
    mut stream: TcpStream,
) -> Result<(Option<SocketAddr>, Prefixed<TcpStream>), ProxyHeaderError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 536];
    loop {
        let could_be =
            |signature: &[u8]| signature.starts_with(&buf[..buf.len().min(signature.len())]);
        let (v1, v2) = (could_be(b"PROXY "), could_be(&V2_SIGNATURE));
        if !v1 && !v2 {
            return Ok((None, Prefixed::new(buf, stream)));
        }
        if v1 && buf.len() >= 6 {
            if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                let address = parse_v1(&buf[..at])?;
                return Ok((address, Prefixed::new(buf.split_off(at + 2), stream)));
            }
            if buf.len() >= V1_MAX {
                return Err(ProxyHeaderError::Malformed(
                    "v1 line without CRLF within 107 bytes",
                ));
            }
        }
        if v2 && buf.len() >= 16 {
            let end = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            if buf.len() >= end {
                let address = parse_v2(buf[12], buf[13], &buf[16..end])?;
                return Ok((address, Prefixed::new(buf.split_off(end), stream)));
            }
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            if buf.is_empty() {
                return Ok((None, Prefixed::new(buf, stream)));
            }
            return Err(ProxyHeaderError::Malformed(
                "connection closed inside the header",
            ));
        }
        buf.extend_from_slice(&chunk[..read]);
    }
}

/// A stream with bytes already read from it put back in front.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let taken = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..taken]);
            this.offset += taken;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// Writes go straight to the inner stream, so sendfile may too.
impl<S: super::sendfile::SendfileSocket> super::sendfile::SendfileSocket for Prefixed<S> {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        self.inner.tcp()
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let line =
        std::str::from_utf8(line).map_err(|_| ProxyHeaderError::Malformed("v1 not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", family @ ("TCP4" | "TCP6"), source, _destination, port, _destination_port] => {
            let address: IpAddr = source
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 source address"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 source port"))?;
            if address.is_ipv4() != (*family == "TCP4") {
                return Err(ProxyHeaderError::Malformed(
                    "v1 address of the wrong family",
                ));
            }
            Ok(Some(SocketAddr::new(address, port)))
        }
        _ => Err(ProxyHeaderError::Malformed("v1 fields")),
    }
}

fn parse_v2(
    version_command: u8,
    family: u8,
    body: &[u8],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    if version_command >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version"));
    }
    match version_command & 0x0f {
        0 => return Ok(None), // LOCAL: the balancer's own connection (a health check)
        1 => {}
        _ => return Err(ProxyHeaderError::Malformed("v2 command")),
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match family >> 4 {
        1 if body.len() >= 12 => {
            let address = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(address.into(), port(8))))
        }
        2 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            Ok(Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                port(32),
            )))
        }
        1 | 2 => Err(ProxyHeaderError::Malformed("v2 address block too short")),
        _ => Ok(None), // UNSPEC or UNIX: no address to use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443").unwrap(),
            Some("203.0.113.7:56324".parse().unwrap())
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2").unwrap(),
            Some("[2001:db8::1]:1".parse().unwrap())
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN").unwrap(), None);
        for bad in [
            &b"PROXY TCP4 2001:db8::1 ::1 1 2"[..],
            b"PROXY TCP4 1.2.3.4",
            b"PROXY TCP4 a b c d",
        ] {
            assert!(parse_v1(bad).is_err());
        }
    }

    #[test]
    fn v2_blocks_parse_and_local_keeps_the_peer() {
        let mut ipv4 = vec![198, 51, 100, 9, 10, 0, 0, 1];
        ipv4.extend_from_slice(&4711u16.to_be_bytes());
        ipv4.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse_v2(0x21, 0x11, &ipv4).unwrap(),
            Some("198.51.100.9:4711".parse().unwrap())
        );
        assert_eq!(parse_v2(0x20, 0x11, &ipv4).unwrap(), None);
        assert!(parse_v2(0x21, 0x11, &ipv4[..6]).is_err());
        assert!(parse_v2(0x11, 0x11, &ipv4).is_err());
    }
}
