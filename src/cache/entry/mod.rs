//! [`StoredResponse`]: what the cache keeps for one variant of one resource, in a
//! tier-agnostic form: status, the complete header list as received (repeated fields such
//! as two `Link` lines survive), freshness, the variant it answers, and the body as shared
//! [`Bytes`] so a hit never copies it.
//!
//! [`EntryMeta`] (everything but the body) has a versioned binary encoding, so a disk tier
//! can keep the same thing and refuse what it cannot read. Deciding *whether* to store is
//! `policy`'s business; *where* is the tiers'.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::digest::BodyDigest;
use super::key::{PrimaryKey, VariantKey, Vary};
use super::policy::Freshness;
use super::sealed::{SealedBody, Sealer};
use crate::transform::compress::Coding;

mod encoding;
pub use encoding::{DecodeError, FORMAT_VERSION};

/// How a derived entry was made from a stored one (an encoded copy of its body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Derivation {
    pub coding: Coding,
    /// The body digest of the entry it was made from: a derived entry is only served while
    /// its source still has that body.
    pub source_digest: [u8; 32],
}

/// Everything about a stored response except its body.
#[derive(Debug, Clone)]
pub struct EntryMeta {
    pub key: PrimaryKey,
    /// `scheme://authority/path?query`, for logs, purge by prefix and debugging.
    pub url: String,
    pub status: StatusCode,
    /// The protocol version the response was received in: the received-protocol of the
    /// `Via` it is served with (RFC 9110 §7.6.3), also when served from the cache.
    pub received: http::Version,
    /// The response's header fields as received, minus hop-by-hop fields.
    pub headers: HeaderMap,
    pub vary: Vary,
    pub variant: VariantKey,
    pub freshness: Freshness,
    pub body_len: u64,
    /// The body's digest ([`crate::cache::digest`]): blake3 where a disk tier is configured,
    /// which names, dedupes and verifies its files by it; else a cheaper XXH3-128 that only
    /// tells this process's bodies apart (for encoded variants' sources).
    pub body_digest: [u8; 32],
    /// Set on entries outpost derived from another (encoded variants); `None` for responses
    /// as the origin sent them.
    pub derivation: Option<Derivation>,
}

/// A stored response: metadata plus body.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub meta: EntryMeta,
    pub body: StoredBody,
    /// Whether this response is worth compressing, as last judged under which compression
    /// settings: every hit asks, and the answer only changes with the settings.
    pub compressible: crate::transform::compress::Verdict,
}

/// Where a stored body is: in memory (on the heap, or in a sealed memory file that hits
/// can be sent from; see `cache::sealed`), or in a disk-tier file too large to hold in
/// memory (read and verified against `meta.body_digest` as it is served).
#[derive(Debug, Clone)]
pub enum StoredBody {
    Memory(Bytes),
    Sealed(Arc<SealedBody>),
    File(Arc<BodyFile>),
}

/// A body kept in a disk-tier file.
#[derive(Debug)]
pub struct BodyFile {
    pub path: PathBuf,
    /// blake3 of each 1 MiB block (see `disk::BLOCK`), when the body spans several: reads
    /// verify only the blocks they touch, and never send an unverified byte. `None`: only
    /// the whole-body digest is known.
    pub blocks: Option<Arc<Vec<[u8; 32]>>>,
    /// Set by the first read that finds the file missing or corrupt, so it is reported
    /// (counted, and its removal scheduled) once, however many reads meet it before the
    /// removal lands.
    pub is_reported_bad: std::sync::atomic::AtomicBool,
}

impl StoredBody {
    /// The body, when it is in memory.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            StoredBody::Memory(bytes) => Some(bytes),
            StoredBody::Sealed(sealed) => Some(sealed.bytes()),
            StoredBody::File(_) => None,
        }
    }

    pub fn file(&self) -> Option<&BodyFile> {
        match self {
            StoredBody::Memory(_) | StoredBody::Sealed(_) => None,
            StoredBody::File(file) => Some(file),
        }
    }
}

/// Memory an entry costs besides its body, header bytes and URL: the entry and variant-set
/// structures, moka's bookkeeping, and allocator fragmentation under a proxy's churn.
/// Calibrated on a running server filled with 1 KiB responses (seven headers) until RSS
/// growth matched the weighed bytes; `cargo bench --bench memory`, without that churn,
/// measures about 500 bytes less.
const ENTRY_OVERHEAD: usize = 1400;
/// Memory per header field in the stored map (bucket, index slot), besides its bytes.
const HEADER_OVERHEAD: usize = 120;

impl StoredResponse {
    /// Builds an entry from received parts. Header values are copied into one compact
    /// allocation: as received they are slices of the connection's read buffer, and keeping
    /// them would pin that whole buffer for as long as the entry lives. The digest is
    /// blake3, right whether or not a disk tier is configured.
    pub fn new(meta: EntryMeta, body: Bytes) -> StoredResponse {
        let (len, digest) = (body.len() as u64, BodyDigest::Blake3.of(&body));
        StoredResponse::received(meta, StoredBody::Memory(body), len, digest)
    }

    /// An entry of received `meta` (its headers compacted, see [`StoredResponse::new`]) and
    /// `body` of `len` bytes whose digest is `digest`.
    fn received(meta: EntryMeta, body: StoredBody, len: u64, digest: [u8; 32]) -> StoredResponse {
        let mut meta = meta;
        meta.headers = compact_headers(&meta.headers);
        meta.body_len = len;
        meta.body_digest = digest;
        StoredResponse {
            meta,
            body,
            compressible: Default::default(),
        }
    }

    /// Builds an entry from a body received in `chunks`: in a memory file sealed by
    /// `sealer` when it takes the length, else joined into one heap buffer (a chunk as
    /// received is a slice of a connection's read buffer and would pin all of it). The
    /// digest is taken over the chunks, so a sealed body's mapping is never read, which
    /// would fault every page of it into this process.
    pub fn from_chunks(meta: EntryMeta, chunks: &[Bytes], sealer: &Sealer) -> StoredResponse {
        let mut hasher = sealer.digest().hasher();
        let mut len = 0;
        for chunk in chunks {
            hasher.update(chunk);
            len += chunk.len();
        }
        let body = match sealer.seal_chunks(chunks) {
            Some(sealed) => StoredBody::Sealed(sealed),
            None => {
                let mut joined = Vec::with_capacity(len);
                for chunk in chunks {
                    joined.extend_from_slice(chunk);
                }
                StoredBody::Memory(Bytes::from(joined))
            }
        };
        StoredResponse::received(meta, body, len as u64, hasher.finalize())
    }

    /// An entry of received `meta` whose body was written into `sealed` as it arrived
    /// (see [`crate::cache::sealed::GrowingBody`]); `digest` is the body's.
    pub fn from_sealed(
        meta: EntryMeta,
        sealed: Arc<SealedBody>,
        digest: [u8; 32],
    ) -> StoredResponse {
        let len = sealed.bytes().len() as u64;
        StoredResponse::received(meta, StoredBody::Sealed(sealed), len, digest)
    }

    /// An entry read back from the disk tier, whose body was verified against the digest
    /// in `meta`. Decoded metadata has compact headers already (see `EntryMeta::decode`).
    pub fn read_back(meta: EntryMeta, body: Bytes) -> StoredResponse {
        StoredResponse {
            meta,
            body: StoredBody::Memory(body),
            compressible: Default::default(),
        }
    }

    /// This entry with its body in `sealed`, a sealed memory file holding the same bytes.
    pub fn with_sealed_body(self, sealed: Arc<SealedBody>) -> StoredResponse {
        debug_assert_eq!(sealed.bytes().len() as u64, self.meta.body_len);
        StoredResponse {
            body: StoredBody::Sealed(sealed),
            ..self
        }
    }

    /// An entry whose body stays in a disk-tier file; `meta` already has its length and
    /// digest.
    pub fn in_file(
        meta: EntryMeta,
        path: PathBuf,
        blocks: Option<Vec<[u8; 32]>>,
    ) -> StoredResponse {
        let mut meta = meta;
        meta.headers = compact_headers(&meta.headers);
        StoredResponse {
            meta,
            body: StoredBody::File(Arc::new(BodyFile {
                path,
                blocks: blocks.map(Arc::new),
                is_reported_bad: std::sync::atomic::AtomicBool::new(false),
            })),
            compressible: Default::default(),
        }
    }

    /// Bytes this entry costs in memory: body, header names and values, URL, and measured
    /// allowances for the structures around them. Used to weigh entries against capacity.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .meta
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD)
            .sum();
        let body = self.body.as_bytes().map_or(0, Bytes::len);
        body + headers + self.meta.url.len() + ENTRY_OVERHEAD
    }
}

/// Content-Length, when present and a valid number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the response says its origin serves no ranges of it, `Accept-Ranges: none`
/// (RFC 9110 §14.3): it is then neither asked for a range nor answered with one.
pub fn refuses_ranges(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT_RANGES)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"none"))
}

/// A copy of `headers` whose values share one exact-size allocation and whose map has no
/// spare capacity.
pub fn compact_headers(headers: &HeaderMap) -> HeaderMap {
    let fields = headers
        .iter()
        .map(|(name, value)| (name.clone(), value.as_bytes()))
        .collect();
    // Every value was a valid field value a moment ago; re-validation cannot fail.
    compact_fields(fields).unwrap_or_else(|_| headers.clone())
}

/// The map of `fields` (in order), their values sharing one exact-size allocation, the map
/// without spare capacity. `Err` names the first field whose value is not a valid one.
pub fn compact_fields<V: AsRef<[u8]>>(
    fields: Vec<(HeaderName, V)>,
) -> Result<HeaderMap, HeaderName> {
    let total = fields.iter().map(|(_, value)| value.as_ref().len()).sum();
    let mut buffer = Vec::with_capacity(total);
    for (_, value) in &fields {
        buffer.extend_from_slice(value.as_ref());
    }
    let buffer = Bytes::from(buffer);
    let mut compact = HeaderMap::with_capacity(fields.len());
    let mut offset = 0;
    for (name, value) in fields {
        let len = value.as_ref().len();
        let slice = buffer.slice(offset..offset + len);
        offset += len;
        match HeaderValue::from_maybe_shared(slice) {
            Ok(value) => compact.append(name, value),
            Err(_) => return Err(name),
        };
    }
    Ok(compact)
}

impl EntryMeta {
    /// Metadata for a response about to be stored; the body's length and digest are filled
    /// in by [`StoredResponse::new`].
    pub fn new(
        key: PrimaryKey,
        url: String,
        (status, received): (StatusCode, http::Version),
        headers: HeaderMap,
        (vary, variant): (Vary, VariantKey),
        freshness: Freshness,
    ) -> EntryMeta {
        EntryMeta {
            key,
            url,
            status,
            received,
            headers,
            vary,
            variant,
            freshness,
            body_len: 0,
            body_digest: [0; 32],
            derivation: None,
        }
    }
}

/// Stored responses for unit tests of the tiers.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::cache::policy::PolicySettings;
    use std::time::SystemTime;

    /// A 200 for `http://example.com{path}` with `headers` and `body`, received at `now`,
    /// under the Vary its headers name (the variant of a request without headers).
    pub fn entry_at(
        path: &str,
        headers: HeaderMap,
        body: Bytes,
        now: SystemTime,
    ) -> StoredResponse {
        let freshness = Freshness::compute(
            StatusCode::OK,
            &headers,
            &PolicySettings::default(),
            now,
            now,
        );
        let vary = Vary::from_response(&headers);
        let variant = vary
            .variant_key(&HeaderMap::new())
            .unwrap_or(VariantKey::NONE);
        let meta = EntryMeta::new(
            PrimaryKey::new("http", "example.com", path),
            format!("http://example.com{path}"),
            (StatusCode::OK, http::Version::HTTP_11),
            headers,
            (vary, variant),
            freshness,
        );
        StoredResponse::new(meta, body)
    }

    /// A `max-age=60` response for `path` with `body`, received now.
    pub fn entry(path: &str, body: impl Into<Bytes>) -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
        entry_at(path, headers, body.into(), SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn sample() -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.append("link", HeaderValue::from_static("<a>; rel=preload"));
        headers.append("link", HeaderValue::from_static("<b>; rel=preload"));
        headers.append("cache-control", HeaderValue::from_static("max-age=60"));
        headers.append("vary", HeaderValue::from_static("accept-encoding"));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        testing::entry_at("/a", headers, Bytes::from_static(b"hello"), now)
    }

    #[test]
    fn compacted_headers_are_equal_and_share_one_buffer() {
        let entry = sample();
        assert_eq!(entry.meta.headers.get_all("link").iter().count(), 2);
        let compact = compact_headers(&entry.meta.headers);
        assert_eq!(compact, entry.meta.headers);
    }
}
