//! Bounded decoding of what the mirror reads whole: gzip and xz, known by their leading
//! bytes or by a `Content-Encoding`. A few kilobytes of compressed zeros can stand for
//! gigabytes, so every decode here stops at a limit the caller gives: a document decoded to
//! read its links and digests is held within it, and an artifact decoded to check its digest
//! is hashed as it decodes, never held.

use std::io::Write;

use bytes::Bytes;

use super::digests::Expected;

/// The leading bytes of gzip and of xz.
const GZIP: &[u8] = &[0x1f, 0x8b];
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// `raw` decoded as its leading bytes say (gzip, xz, or plain text), if it decodes within
/// `limit` bytes: a small compressed file may not stand for an unbounded one. Plain text
/// is the same bytes, not a copy.
pub fn decoded(raw: &Bytes, limit: u64) -> Option<Bytes> {
    if !raw.starts_with(GZIP) && !raw.starts_with(XZ) {
        return (raw.len() as u64 <= limit).then(|| raw.clone());
    }
    let mut out = Capped::new(limit);
    decode_into(raw, &mut out).ok()?;
    Some(Bytes::from(out.bytes))
}

/// Up to the first `len` bytes of `raw` decoded; fewer when it decodes to fewer, or not
/// at all.
pub fn decoded_prefix(raw: &[u8], len: usize) -> Vec<u8> {
    let mut out = Capped::new(len as u64);
    // Stops with an error once the prefix is full; what was written is kept.
    let _ = decode_into(raw, &mut out);
    out.bytes
}

/// `raw` (a `Content-Encoding: gzip` body) gunzipped, if it is gzip and decodes within
/// `limit` bytes.
pub fn gunzipped(raw: &Bytes, limit: u64) -> Option<Bytes> {
    let mut out = Capped::new(limit);
    std::io::copy(&mut flate2::read::MultiGzDecoder::new(&raw[..]), &mut out).ok()?;
    Some(Bytes::from(out.bytes))
}

/// The decoded length a gzip body states in its trailer (ISIZE, RFC 1952 §2.3.1: the last
/// member's length modulo 2^32), to count the memory decoding it takes before it is
/// decoded; `None` when it is too short to be gzip.
pub fn gzip_stated_len(raw: &[u8]) -> Option<u64> {
    // A header of 10 bytes and a trailer of 8, at the least.
    if raw.len() < 18 || !raw.starts_with(GZIP) {
        return None;
    }
    let trailer: [u8; 4] = raw[raw.len() - 4..].try_into().ok()?;
    Some(u64::from(u32::from_le_bytes(trailer)))
}

/// `decoder` (one of this module's, or one built on them) run over `raw` within `limit` on
/// a blocking thread: decoding a large index takes seconds that no runtime thread may spend.
pub async fn off_runtime(
    raw: &Bytes,
    limit: u64,
    decoder: fn(&Bytes, u64) -> Option<Bytes>,
) -> Option<Bytes> {
    let raw = raw.clone();
    tokio::task::spawn_blocking(move || decoder(&raw, limit))
        .await
        .ok()
        .flatten()
}

/// What checking a gzip-coded artifact's decoded bytes against its digest found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodedVerdict {
    Matches,
    /// Not gzip, damaged, or decoded to other bytes than the digest is of.
    Mismatch,
    /// Decodes to more than the limit: not checked.
    TooLarge,
}

/// Whether `raw` (gzip) decodes to the bytes `expected` is the digest of, hashing the
/// decoded bytes as they come and giving up past `limit` of them.
pub fn gunzipped_matches(raw: &[u8], expected: &Expected, limit: u64) -> CodedVerdict {
    let mut out = Digesting {
        context: expected.context(),
        written: 0,
        limit,
    };
    match std::io::copy(&mut flate2::read::MultiGzDecoder::new(raw), &mut out) {
        Ok(_) if expected.is(out.context.finish().as_ref()) => CodedVerdict::Matches,
        Ok(_) => CodedVerdict::Mismatch,
        Err(_) if out.written > limit => CodedVerdict::TooLarge,
        Err(_) => CodedVerdict::Mismatch,
    }
}

/// Decodes `raw` as its leading bytes say into `out`, which ends it with an error once full.
fn decode_into(raw: &[u8], out: &mut impl Write) -> std::io::Result<()> {
    let mut decoding = DecodingWriter::new(Coding::Sniffed, out);
    decoding.write_all(raw)?;
    decoding.try_finish()
}

/// How the bytes of a document arrive: as its leading bytes say (gzip, xz or plain), or
/// gzip (a `Content-Encoding: gzip` body) around plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Sniffed,
    Gzip,
}

/// Decodes what is written to it, as its [`Coding`] says, into the writer it wraps as the
/// bytes come: a body is decoded a chunk at a time while it streams, and nothing decoded
/// is held here, so the writer decides what is kept and when to stop (with an error).
pub struct DecodingWriter<W: Write> {
    /// `None` only while one decoder is replaced by the next.
    decoder: Option<Decoder<W>>,
}

enum Decoder<W: Write> {
    /// Fewer bytes than tell the formats apart have come (a chunked body's first chunk
    /// can be one byte).
    Leading(Vec<u8>, W),
    Plain(W),
    Gzip(flate2::write::MultiGzDecoder<W>),
    Xz(liblzma::write::XzDecoder<W>),
}

impl<W: Write> DecodingWriter<W> {
    pub fn new(coding: Coding, out: W) -> DecodingWriter<W> {
        let decoder = match coding {
            Coding::Sniffed => Decoder::Leading(Vec::with_capacity(XZ.len()), out),
            Coding::Gzip => Decoder::Gzip(flate2::write::MultiGzDecoder::new(out)),
        };
        DecodingWriter {
            decoder: Some(decoder),
        }
    }

    /// The writer the decoded bytes go to.
    pub fn get_mut(&mut self) -> Option<&mut W> {
        match self.decoder.as_mut()? {
            Decoder::Leading(_, out) | Decoder::Plain(out) => Some(out),
            Decoder::Gzip(decoder) => Some(decoder.get_mut()),
            Decoder::Xz(decoder) => Some(decoder.get_mut()),
        }
    }

    /// Ends the input: an error when it stopped short of its format's end (a truncated
    /// gzip member or xz stream).
    pub fn try_finish(&mut self) -> std::io::Result<()> {
        if matches!(self.decoder, Some(Decoder::Leading(..))) {
            self.choose()?;
        }
        match self.decoder.as_mut() {
            Some(Decoder::Gzip(decoder)) => decoder.try_finish(),
            Some(Decoder::Xz(decoder)) => decoder.try_finish(),
            Some(Decoder::Plain(out)) => out.flush(),
            Some(Decoder::Leading(..)) | None => Err(decoder_lost()),
        }
    }

    /// Replaces the leading bytes with the decoder they call for, and gives it them.
    fn choose(&mut self) -> std::io::Result<()> {
        let Some(Decoder::Leading(leading, out)) = self.decoder.take() else {
            return Err(decoder_lost());
        };
        self.decoder = Some(if leading.starts_with(GZIP) {
            Decoder::Gzip(flate2::write::MultiGzDecoder::new(out))
        } else if leading.starts_with(XZ) {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMORY_LIMIT,
                liblzma::stream::CONCATENATED,
            )
            .map_err(std::io::Error::other)?;
            Decoder::Xz(liblzma::write::XzDecoder::new_stream(out, stream))
        } else {
            Decoder::Plain(out)
        });
        self.write_all(&leading)
    }
}

impl<W: Write> Write for DecodingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self.decoder.as_mut() {
            Some(Decoder::Leading(leading, _)) => {
                let taken = data.len().min(XZ.len() - leading.len());
                leading.extend_from_slice(&data[..taken]);
                if leading.len() == XZ.len() {
                    self.choose()?;
                }
                Ok(taken)
            }
            Some(Decoder::Plain(out)) => out.write(data),
            Some(Decoder::Gzip(decoder)) => decoder.write(data),
            Some(Decoder::Xz(decoder)) => decoder.write(data),
            None => Err(decoder_lost()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A decoder that could not be set up (an xz stream) leaves nothing to write to.
fn decoder_lost() -> std::io::Error {
    std::io::Error::other("no decoder")
}

/// The most memory one xz decode may take: an xz header names its dictionary's size, up to
/// 1.5 GiB, and a few bytes would otherwise make us allocate it. `xz -9`, the largest
/// preset, needs 65 MiB to decode.
const XZ_MEMORY_LIMIT: u64 = 128 << 20;

fn past_the_limit() -> std::io::Error {
    std::io::Error::other("decoded past the limit")
}

/// A writer that refuses to grow past `limit` bytes.
struct Capped {
    bytes: Vec<u8>,
    limit: u64,
}

impl Capped {
    fn new(limit: u64) -> Capped {
        Capped {
            bytes: Vec::new(),
            limit,
        }
    }
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = usize::try_from(self.limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.bytes.len());
        if room == 0 && !data.is_empty() {
            return Err(past_the_limit());
        }
        let taken = data.len().min(room);
        self.bytes.extend_from_slice(&data[..taken]);
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes what it is given and fails once past `limit` bytes (`written`
/// then says by how much).
struct Digesting {
    context: ring::digest::Context,
    written: u64,
    limit: u64,
}

impl Write for Digesting {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.written += data.len() as u64;
        if self.written > self.limit {
            return Err(past_the_limit());
        }
        self.context.update(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::digests::Algorithm;

    fn sha256(bytes: &[u8]) -> Expected {
        Expected {
            algorithm: Algorithm::Sha256,
            digest: ring::digest::digest(&ring::digest::SHA256, bytes)
                .as_ref()
                .to_vec(),
        }
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// 64 MiB of zeros compress to about 64 KiB: the decoded size, not the coded one, is
    /// what is bounded.
    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        let bomb = Bytes::from(gz(&vec![0u8; 64 << 20]));
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        assert_eq!(gunzipped(&bomb, 1 << 20), None);
        assert_eq!(gunzipped(&bomb, 64 << 20).map(|b| b.len()), Some(64 << 20));
        let zeros = sha256(&vec![0u8; 64 << 20]);
        assert_eq!(
            gunzipped_matches(&bomb, &zeros, 1 << 20),
            CodedVerdict::TooLarge
        );
        assert_eq!(
            gunzipped_matches(&bomb, &zeros, 64 << 20),
            CodedVerdict::Matches
        );
        let other = sha256(b"other");
        assert_eq!(
            gunzipped_matches(&bomb, &other, 64 << 20),
            CodedVerdict::Mismatch
        );
        assert_eq!(
            gunzipped_matches(b"not gzip", &other, 64 << 20),
            CodedVerdict::Mismatch
        );
    }

    /// An xz header names the dictionary its decoder must allocate; one naming 4 GiB in a
    /// few hundred bytes is refused, not allocated.
    #[test]
    fn an_xz_header_asking_for_a_huge_dictionary_is_refused() {
        let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 0);
        encoder.write_all(b"Package: a\n").unwrap();
        let mut raw = encoder.finish().unwrap();
        assert_eq!(
            decoded(&Bytes::from(raw.clone()), 1 << 20).as_deref(),
            Some(&b"Package: a\n"[..])
        );
        // The block header follows the 12-byte stream header: its size byte, its flags,
        // then the LZMA2 filter (ID 0x21, one byte of properties: the dictionary size).
        let header_len = (usize::from(raw[12]) + 1) * 4;
        let header = 12..12 + header_len;
        let filter = raw[header.clone()]
            .windows(2)
            .position(|w| w == [0x21, 0x01])
            .unwrap();
        raw[12 + filter + 2] = 40; // 4 GiB - 1
        let mut crc = flate2::Crc::new();
        crc.update(&raw[12..12 + header_len - 4]);
        raw[12 + header_len - 4..12 + header_len].copy_from_slice(&crc.sum().to_le_bytes());
        assert_eq!(decoded(&Bytes::from(raw), 1 << 30), None);
    }

    /// A gzip body's trailer states its decoded length, which is counted before decoding.
    #[test]
    fn a_gzip_trailer_states_the_decoded_length() {
        use std::io::Write;
        let text = "a line of an index document\n".repeat(10_000);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        let coded = encoder.finish().unwrap();
        assert_eq!(gzip_stated_len(&coded), Some(text.len() as u64));
        assert_eq!(gzip_stated_len(b"plain text, not gzip at all"), None);
        assert_eq!(gzip_stated_len(&coded[..10]), None);
    }
}
