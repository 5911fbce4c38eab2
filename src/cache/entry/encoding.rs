//! [`EntryMeta`]'s versioned binary form, as the disk tier keeps it: a header naming the
//! format version, then the fields (postcard).
//!
//! Version 2 is the compact form: a one-byte header, the key and variant not repeated
//! (they are the index row's key, passed back in to decode), common header names in one
//! byte, the flags in one. Every index row pays for what it stores about twice over in
//! sled's files, so each byte here counts: a typical response's entry is 90-130 bytes
//! shorter than in version 1 (the `OPE\x01` magic and a two-byte version first), which is
//! still read.
//!
//! Version 3 adds two names whose value is implied rather than stored: a date field
//! holding the IMF-fixdate of a number of seconds (Date, Last-Modified and Expires, about
//! 24 bytes less each), and a Content-Length equal to the body's length. Each is used only
//! where the value it implies is byte for byte the stored one, so what is served is
//! unchanged. Version 2 is read by the same code: it never uses these names.
//!
//! Two bits of the flags byte, unused before, say which HTTP version the response was
//! received in; zero means HTTP/1.1, so entries written before them read as they were
//! served, and builds before them ignore the bits.
//!
//! Version 4 adds one more implied value: a field whose name and value are both in
//! [`KNOWN_FIELDS`] (`content-type: application/json`, `accept-ranges: bytes`) is stored as
//! its position there: three bytes where a content type alone took twenty or more. A
//! build that reads up to version 3 refuses version 4 entries (refetched, not misread).
//!
//! Version 5 stores a field as one value of [`StoredField`]: a name whose value is implied
//! (a date, the body's length, a known field) no longer carries the empty value's length
//! byte. A static file's response (Date, Last-Modified, Content-Length, a known
//! Content-Type and Accept-Ranges) is five bytes shorter, about 12 bytes of index file.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderName};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Derivation, EntryMeta};
use crate::cache::key::{PrimaryKey, VariantKey, Vary};
use crate::cache::policy::Freshness;
use crate::transform::compress::Coding;

/// Why an encoded entry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an outpost entry (bad magic)")]
    BadMagic,
    #[error("entry format version {0} is not supported (this build reads 1 to {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    #[error("entry is corrupt: {0}")]
    Corrupt(String),
}

/// What version 1 entries begin with, before their two-byte version.
const MAGIC: &[u8; 4] = b"OPE\x01";
/// The version written. Bump when `EncodedMeta` changes shape, and keep reading the
/// versions before; entries of a version not read are refetched, not misread.
pub const FORMAT_VERSION: u16 = 5;
/// The first byte of an entry of version 2 and later: this plus the version.
const COMPACT_HEADER: u8 = 0xC0;

/// Header names given one byte in version 2: the common response fields. Append only: a
/// name's position is its stored code.
static KNOWN_NAMES: [HeaderName; 40] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CACHE_CONTROL,
    header::ETAG,
    header::LAST_MODIFIED,
    header::DATE,
    header::EXPIRES,
    header::VARY,
    header::CONTENT_ENCODING,
    header::ACCEPT_RANGES,
    header::AGE,
    header::SERVER,
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::STRICT_TRANSPORT_SECURITY,
    header::X_CONTENT_TYPE_OPTIONS,
    header::CONTENT_DISPOSITION,
    header::LINK,
    header::LOCATION,
    header::CONTENT_LANGUAGE,
    header::CONTENT_RANGE,
    header::X_FRAME_OPTIONS,
    header::VIA,
    header::CONTENT_SECURITY_POLICY,
    header::REFERRER_POLICY,
    header::X_XSS_PROTECTION,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ALT_SVC,
    header::CONTENT_LOCATION,
    header::PRAGMA,
    header::WARNING,
    header::SET_COOKIE,
    HeaderName::from_static("timing-allow-origin"),
    HeaderName::from_static("cdn-cache-control"),
    HeaderName::from_static("surrogate-control"),
    HeaderName::from_static("surrogate-key"),
    HeaderName::from_static("cache-groups"),
];

/// Whole fields given one code in version 4: the response fields of QPACK's static table
/// (RFC 9204 Appendix A, drawn from what web servers send most), then the types package
/// archives and file servers send (nginx's `default_type`, archives, Debian packages).
/// A value matches only byte for byte. Append only: a field's position is its stored code.
static KNOWN_FIELDS: [(HeaderName, &str); 52] = [
    (header::ACCEPT_RANGES, "bytes"),
    (header::ACCESS_CONTROL_ALLOW_HEADERS, "cache-control"),
    (header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type"),
    (header::ACCESS_CONTROL_ALLOW_HEADERS, "*"),
    (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
    (header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "FALSE"),
    (header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "TRUE"),
    (header::ACCESS_CONTROL_ALLOW_METHODS, "get"),
    (header::ACCESS_CONTROL_ALLOW_METHODS, "get, post, options"),
    (header::ACCESS_CONTROL_ALLOW_METHODS, "options"),
    (header::ACCESS_CONTROL_EXPOSE_HEADERS, "content-length"),
    (header::ALT_SVC, "clear"),
    (header::CACHE_CONTROL, "max-age=0"),
    (header::CACHE_CONTROL, "max-age=2592000"),
    (header::CACHE_CONTROL, "max-age=604800"),
    (header::CACHE_CONTROL, "no-cache"),
    (header::CACHE_CONTROL, "no-store"),
    (header::CACHE_CONTROL, "public, max-age=31536000"),
    (header::CONTENT_ENCODING, "br"),
    (header::CONTENT_ENCODING, "gzip"),
    (header::CONTENT_TYPE, "application/dns-message"),
    (header::CONTENT_TYPE, "application/javascript"),
    (header::CONTENT_TYPE, "application/json"),
    (header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
    (header::CONTENT_TYPE, "image/gif"),
    (header::CONTENT_TYPE, "image/jpeg"),
    (header::CONTENT_TYPE, "image/png"),
    (header::CONTENT_TYPE, "text/css"),
    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
    (header::CONTENT_TYPE, "text/plain"),
    (header::CONTENT_TYPE, "text/plain;charset=utf-8"),
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    (
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000; includesubdomains",
    ),
    (
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000; includesubdomains; preload",
    ),
    (header::VARY, "accept-encoding"),
    (header::VARY, "origin"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_XSS_PROTECTION, "1; mode=block"),
    (header::X_FRAME_OPTIONS, "deny"),
    (header::X_FRAME_OPTIONS, "sameorigin"),
    (HeaderName::from_static("timing-allow-origin"), "*"),
    (header::CONTENT_TYPE, "application/octet-stream"),
    (header::CONTENT_TYPE, "application/gzip"),
    (header::CONTENT_TYPE, "application/x-gzip"),
    (header::CONTENT_TYPE, "application/x-xz"),
    (header::CONTENT_TYPE, "application/x-tar"),
    (header::CONTENT_TYPE, "application/zip"),
    (
        header::CONTENT_TYPE,
        "application/vnd.debian.binary-package",
    ),
    (header::CONTENT_TYPE, "application/x-debian-package"),
    (header::CONTENT_TYPE, "text/javascript"),
    (header::CONTENT_TYPE, "text/html"),
    (header::CONTENT_TYPE, "image/svg+xml"),
];

/// The fields whose value may be stored as seconds (RFC 9110 §5.6.7 IMF-fixdate).
const DATE_NAMES: [HeaderName; 3] = [header::DATE, header::LAST_MODIFIED, header::EXPIRES];

/// A header name as versions 2 to 4 store it (borrowed from the bytes it is decoded
/// from). Variants are appended only: a variant's position is its stored tag.
#[derive(Serialize, Deserialize)]
enum StoredName<'a> {
    Known(u8),
    Other(&'a str),
    /// Version 3: the known name `.0`, whose value is the IMF-fixdate of `.1` seconds
    /// after the epoch; the stored value is empty.
    Date(u8, u64),
    /// Version 3: Content-Length equal to the body's length; the stored value is empty.
    BodyLength,
    /// Version 4: the field at this position of [`KNOWN_FIELDS`]; the stored value is
    /// empty.
    KnownField(u8),
}

/// A header field as version 5 stores it: a name and its value, or a name whose value is
/// implied, with nothing more stored (see [`StoredName`] for what each implies). Variants
/// are appended only: a variant's position is its stored tag.
#[derive(Serialize, Deserialize)]
enum StoredField<'a> {
    Known(u8, &'a [u8]),
    Other(&'a str, &'a [u8]),
    Date(u8, u64),
    BodyLength,
    KnownField(u8),
}

impl<'a> StoredField<'a> {
    fn of(name: &'a HeaderName, value: &'a [u8], body_len: u64) -> StoredField<'a> {
        match StoredName::of_field(name, value, body_len) {
            (StoredName::Known(code), value) => StoredField::Known(code, value),
            (StoredName::Other(name), value) => StoredField::Other(name, value),
            (StoredName::Date(code, seconds), _) => StoredField::Date(code, seconds),
            (StoredName::BodyLength, _) => StoredField::BodyLength,
            (StoredName::KnownField(code), _) => StoredField::KnownField(code),
        }
    }
}

/// The name and stored value as versions 2 to 4 keep them: one decoding for every version.
impl<'a> From<StoredField<'a>> for (StoredName<'a>, &'a [u8]) {
    fn from(field: StoredField<'a>) -> Self {
        match field {
            StoredField::Known(code, value) => (StoredName::Known(code), value),
            StoredField::Other(name, value) => (StoredName::Other(name), value),
            StoredField::Date(code, seconds) => (StoredName::Date(code, seconds), &[]),
            StoredField::BodyLength => (StoredName::BodyLength, &[]),
            StoredField::KnownField(code) => (StoredName::KnownField(code), &[]),
        }
    }
}

impl<'a> StoredName<'a> {
    fn of(name: &'a HeaderName) -> StoredName<'a> {
        match known_code(name) {
            Some(code) => StoredName::Known(code),
            None => StoredName::Other(name.as_str()),
        }
    }

    /// The name of a field with `value`, and the value still to store: none where the
    /// name implies it exactly.
    fn of_field(name: &'a HeaderName, value: &'a [u8], body_len: u64) -> (Self, &'a [u8]) {
        if name == header::CONTENT_LENGTH
            && value == itoa::Buffer::new().format(body_len).as_bytes()
        {
            return (StoredName::BodyLength, &[]);
        }
        if let Some(code) = KNOWN_FIELDS
            .iter()
            .position(|(known, known_value)| known == name && known_value.as_bytes() == value)
        {
            // invariant: the table has fewer than 256 fields.
            return (StoredName::KnownField(code as u8), &[]);
        }
        if DATE_NAMES.contains(name) {
            if let (Some(code), Some(seconds)) = (known_code(name), fixdate_seconds(value)) {
                return (StoredName::Date(code, seconds), &[]);
            }
        }
        (StoredName::of(name), value)
    }

    fn name(self) -> Result<HeaderName, DecodeError> {
        match self {
            StoredName::Known(code) | StoredName::Date(code, _) => KNOWN_NAMES
                .get(usize::from(code))
                .cloned()
                .ok_or_else(|| DecodeError::Corrupt(format!("header name code {code}"))),
            StoredName::Other(name) => HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| DecodeError::Corrupt(format!("header name {name:?}"))),
            StoredName::BodyLength => Ok(header::CONTENT_LENGTH),
            StoredName::KnownField(code) => Ok(known_field(code)?.0.clone()),
        }
    }

    /// The field this name and stored `value` stand for, in an entry whose body is
    /// `body_len` bytes.
    fn field(
        self,
        value: &'a [u8],
        body_len: u64,
    ) -> Result<(HeaderName, Cow<'a, [u8]>), DecodeError> {
        let implied = match self {
            StoredName::Date(_, seconds) => {
                let at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(seconds));
                let at = at.ok_or_else(|| DecodeError::Corrupt(format!("date {seconds}")))?;
                Some(httpdate::fmt_http_date(at).into_bytes())
            }
            StoredName::BodyLength => {
                Some(itoa::Buffer::new().format(body_len).as_bytes().to_vec())
            }
            StoredName::KnownField(code) => {
                if !value.is_empty() {
                    return Err(DecodeError::Corrupt("a value beside a known field".into()));
                }
                let (name, known_value) = known_field(code)?;
                return Ok((name.clone(), Cow::Borrowed(known_value.as_bytes())));
            }
            StoredName::Known(_) | StoredName::Other(_) => None,
        };
        if implied.is_some() && !value.is_empty() {
            return Err(DecodeError::Corrupt("a value beside an implied one".into()));
        }
        Ok((
            self.name()?,
            implied.map_or(Cow::Borrowed(value), Cow::Owned),
        ))
    }
}

fn known_field(code: u8) -> Result<&'static (HeaderName, &'static str), DecodeError> {
    KNOWN_FIELDS
        .get(usize::from(code))
        .ok_or_else(|| DecodeError::Corrupt(format!("field code {code}")))
}

fn known_code(name: &HeaderName) -> Option<u8> {
    // invariant: the table has fewer than 256 names.
    KNOWN_NAMES
        .iter()
        .position(|known| known == name)
        .map(|code| code as u8)
}

/// The seconds `value` is the IMF-fixdate of, if it is exactly the text that formatting
/// them gives back (another date form, or odd spacing or case, is stored as it came).
fn fixdate_seconds(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let at = httpdate::parse_http_date(text).ok()?;
    let seconds = at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    (httpdate::fmt_http_date(at) == text).then_some(seconds)
}

const IS_HEURISTIC: u8 = 1;
const REQUIRES_VALIDATION: u8 = 1 << 1;
const FORBIDS_STALE: u8 = 1 << 2;
const IS_IMMUTABLE: u8 = 1 << 3;
const IS_SHAREABLE_WITH_AUTHORIZATION: u8 = 1 << 4;
/// Two bits of the flags byte: the version the response was received in. Zero is
/// HTTP/1.1, what every entry written before these bits existed was served as.
const RECEIVED_SHIFT: u8 = 5;
const RECEIVED_MASK: u8 = 0b11 << RECEIVED_SHIFT;

fn received_bits(version: http::Version) -> u8 {
    let code = match version {
        http::Version::HTTP_09 | http::Version::HTTP_10 => 1,
        http::Version::HTTP_2 => 2,
        http::Version::HTTP_3 => 3,
        _ => 0,
    };
    code << RECEIVED_SHIFT
}

fn received_version(flags: u8) -> http::Version {
    match (flags & RECEIVED_MASK) >> RECEIVED_SHIFT {
        1 => http::Version::HTTP_10,
        2 => http::Version::HTTP_2,
        3 => http::Version::HTTP_3,
        _ => http::Version::HTTP_11,
    }
}

/// The flags byte of: is heuristic, requires validation, forbids stale, is immutable, is
/// shareable with Authorization (in that order).
fn flags(set: [bool; 5]) -> u8 {
    let bits = [
        IS_HEURISTIC,
        REQUIRES_VALIDATION,
        FORBIDS_STALE,
        IS_IMMUTABLE,
        IS_SHAREABLE_WITH_AUTHORIZATION,
    ];
    set.iter()
        .zip(bits)
        .filter(|(on, _)| **on)
        .fold(0, |flags, (_, bit)| flags | bit)
}

/// Versions 2 to 5, whose fields are each an `F`: a [`StoredName`] and its stored value in
/// versions 2 to 4, a [`StoredField`] in version 5. Names and values are borrowed from the
/// bytes decoded: postcard writes a `&[u8]` exactly as it wrote the `Vec<u8>` of earlier
/// builds (a length, then the bytes), and reads it back as one slice instead of element by
/// element.
#[derive(Serialize, Deserialize)]
#[serde(bound(deserialize = "F: Deserialize<'de>"))]
struct EncodedMeta<'a, F> {
    url: String,
    status: u16,
    headers: Vec<F>,
    /// `None` for `Vary: *`, empty for no Vary.
    #[serde(borrow)]
    vary: Option<Vec<StoredName<'a>>>,
    lifetime_ms: u64,
    corrected_initial_age_ms: u64,
    response_time_ms: u64,
    stale_while_revalidate_s: u64,
    stale_if_error_s: u64,
    flags: u8,
    body_len: u64,
    body_digest: [u8; 32],
    derivation: Option<(String, [u8; 32])>,
}

/// Versions 2 to 4.
type EncodedMetaV2<'a> = EncodedMeta<'a, (StoredName<'a>, &'a [u8])>;
/// Version 5, written now.
type EncodedMetaV5<'a> = EncodedMeta<'a, StoredField<'a>>;

/// Version 1: read, no longer written.
#[derive(Serialize, Deserialize)]
struct EncodedMetaV1<'a> {
    key: [u8; 32],
    url: String,
    status: u16,
    #[serde(borrow)]
    headers: Vec<(&'a str, &'a [u8])>,
    #[serde(borrow)]
    vary: Option<Vec<&'a str>>,
    variant: [u8; 32],
    lifetime_ms: u64,
    is_heuristic: bool,
    corrected_initial_age_ms: u64,
    response_time_ms: u64,
    requires_validation: bool,
    forbids_stale: bool,
    is_immutable: bool,
    stale_while_revalidate_s: u64,
    stale_if_error_s: u64,
    is_shareable_with_authorization: bool,
    body_len: u64,
    body_digest: [u8; 32],
    derivation: Option<(String, [u8; 32])>,
}

impl<'a> EncodedMetaV1<'a> {
    /// The same fields in version 2's shape, after checking that the entry is the one
    /// the row names (a version 1 entry carries its own key).
    fn upgrade(
        self,
        key: &PrimaryKey,
        variant: &VariantKey,
    ) -> Result<EncodedMetaV2<'a>, DecodeError> {
        if self.key != key.0 || self.variant != variant.0 {
            return Err(DecodeError::Corrupt("an entry under another key".into()));
        }
        Ok(EncodedMetaV2 {
            url: self.url,
            status: self.status,
            headers: self
                .headers
                .into_iter()
                .map(|(name, value)| (StoredName::Other(name), value))
                .collect(),
            vary: self
                .vary
                .map(|names| names.into_iter().map(StoredName::Other).collect()),
            lifetime_ms: self.lifetime_ms,
            corrected_initial_age_ms: self.corrected_initial_age_ms,
            response_time_ms: self.response_time_ms,
            stale_while_revalidate_s: self.stale_while_revalidate_s,
            stale_if_error_s: self.stale_if_error_s,
            flags: flags([
                self.is_heuristic,
                self.requires_validation,
                self.forbids_stale,
                self.is_immutable,
                self.is_shareable_with_authorization,
            ]),
            body_len: self.body_len,
            body_digest: self.body_digest,
            derivation: self.derivation,
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl EntryMeta {
    /// The versioned binary form (version [`FORMAT_VERSION`]); the key and variant are
    /// not in it: whoever stores it keeps them, and passes them back to
    /// [`EntryMeta::decode`].
    pub fn encode(&self) -> Vec<u8> {
        let f = &self.freshness;
        let encoded = EncodedMetaV5 {
            url: self.url.clone(),
            status: self.status.as_u16(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| StoredField::of(name, value.as_bytes(), self.body_len))
                .collect(),
            vary: match &self.vary {
                Vary::None => Some(Vec::new()),
                Vary::Star => None,
                Vary::Fields(names) => Some(names.iter().map(StoredName::of).collect()),
            },
            lifetime_ms: millis(f.lifetime),
            corrected_initial_age_ms: millis(f.corrected_initial_age),
            response_time_ms: millis(
                f.response_time
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
            stale_while_revalidate_s: f.stale_while_revalidate.as_secs(),
            stale_if_error_s: f.stale_if_error.as_secs(),
            flags: flags([
                f.is_heuristic,
                f.requires_validation,
                f.forbids_stale,
                f.is_immutable,
                f.is_shareable_with_authorization,
            ]) | received_bits(self.received),
            body_len: self.body_len,
            body_digest: self.body_digest,
            derivation: self
                .derivation
                .map(|d| (d.coding.as_str().to_string(), d.source_digest)),
        };
        let mut out = Vec::with_capacity(192);
        out.push(COMPACT_HEADER + FORMAT_VERSION as u8);
        // invariant: postcard serialises these plain fields into a Vec without failing.
        let fields = postcard::to_allocvec(&encoded).expect("entry metadata serialises");
        out.extend_from_slice(&fields);
        out
    }

    /// The entry stored as `bytes` under `key` and `variant`.
    ///
    /// # Errors
    /// [`DecodeError`] for another format, another version, damaged bytes, or a version 1
    /// entry that names another key; never panics on hostile input.
    pub fn decode(
        bytes: &[u8],
        key: &PrimaryKey,
        variant: &VariantKey,
    ) -> Result<EntryMeta, DecodeError> {
        let (version, rest) = match bytes {
            [header @ 0xC0..=0xFF, rest @ ..] => (u16::from(header - COMPACT_HEADER), rest),
            _ => {
                let rest = bytes
                    .strip_prefix(MAGIC.as_slice())
                    .ok_or(DecodeError::BadMagic)?;
                let (version, rest) = rest.split_at_checked(2).ok_or(DecodeError::BadMagic)?;
                match u16::from_be_bytes([version[0], version[1]]) {
                    1 => (1, rest),
                    other => return Err(DecodeError::UnsupportedVersion(other)),
                }
            }
        };
        let corrupt = |err: postcard::Error| DecodeError::Corrupt(err.to_string());
        match version {
            1 => postcard::from_bytes::<EncodedMetaV1>(rest)
                .map_err(corrupt)?
                .upgrade(key, variant)?
                .into_meta(*key, *variant),
            2..=4 => postcard::from_bytes::<EncodedMetaV2>(rest)
                .map_err(corrupt)?
                .into_meta(*key, *variant),
            5 => postcard::from_bytes::<EncodedMetaV5>(rest)
                .map_err(corrupt)?
                .into_meta(*key, *variant),
            other => Err(DecodeError::UnsupportedVersion(other)),
        }
    }
}

impl<'a, F: Into<(StoredName<'a>, &'a [u8])>> EncodedMeta<'a, F> {
    fn into_meta(self, key: PrimaryKey, variant: VariantKey) -> Result<EntryMeta, DecodeError> {
        let corrupt = |what: String| DecodeError::Corrupt(what);
        // Compact as decoded: a promoted entry then needs no second copy.
        let fields = self
            .headers
            .into_iter()
            .map(|field| {
                let (name, value) = field.into();
                name.field(value, self.body_len)
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let headers =
            super::compact_fields(fields).map_err(|name| corrupt(format!("value of {name}")))?;
        let vary = match self.vary {
            None => Vary::Star,
            Some(names) if names.is_empty() => Vary::None,
            Some(names) => Vary::Fields(
                names
                    .into_iter()
                    .map(StoredName::name)
                    .collect::<Result<_, _>>()?,
            ),
        };
        let has = |flag: u8| self.flags & flag != 0;
        Ok(EntryMeta {
            key,
            url: self.url,
            status: StatusCode::from_u16(self.status)
                .map_err(|_| corrupt(format!("status {}", self.status)))?,
            received: received_version(self.flags),
            headers,
            vary,
            variant,
            freshness: Freshness {
                lifetime: Duration::from_millis(self.lifetime_ms),
                is_heuristic: has(IS_HEURISTIC),
                corrected_initial_age: Duration::from_millis(self.corrected_initial_age_ms),
                response_time: SystemTime::UNIX_EPOCH
                    + Duration::from_millis(self.response_time_ms),
                requires_validation: has(REQUIRES_VALIDATION),
                forbids_stale: has(FORBIDS_STALE),
                is_immutable: has(IS_IMMUTABLE),
                stale_while_revalidate: Duration::from_secs(self.stale_while_revalidate_s),
                stale_if_error: Duration::from_secs(self.stale_if_error_s),
                is_shareable_with_authorization: has(IS_SHAREABLE_WITH_AUTHORIZATION),
            },
            body_len: self.body_len,
            body_digest: self.body_digest,
            derivation: match self.derivation {
                None => None,
                Some((coding, source_digest)) => Some(Derivation {
                    coding: Coding::parse(&coding)
                        .ok_or_else(|| corrupt(format!("coding {coding:?}")))?,
                    source_digest,
                }),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::testing::entry_at;
    use http::header::{HeaderMap, HeaderValue};

    fn sample() -> EntryMeta {
        let mut headers = HeaderMap::new();
        headers.append("link", HeaderValue::from_static("<a>; rel=preload"));
        headers.append("link", HeaderValue::from_static("<b>; rel=preload"));
        headers.append("cache-control", HeaderValue::from_static("max-age=60"));
        headers.append("vary", HeaderValue::from_static("accept-encoding"));
        headers.append("x-origin-thing", HeaderValue::from_static("kept by name"));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        entry_at("/a", headers, bytes::Bytes::from_static(b"hello"), now).meta
    }

    /// A static file's response: each of its fields but the ETag and Cache-Control is
    /// stored implied or as a code from version 4 on.
    fn sample_with_implied() -> EntryMeta {
        let mut headers = HeaderMap::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let fields = [
            ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
            ("last-modified", "Mon, 13 Nov 2023 22:13:20 GMT"),
            ("content-type", "application/octet-stream"),
            ("content-length", "5"),
            ("accept-ranges", "bytes"),
            ("etag", "\"5-abc\""),
            ("cache-control", "max-age=86400"),
        ];
        for (name, value) in fields {
            headers.append(name, HeaderValue::from_static(value));
        }
        entry_at("/s", headers, bytes::Bytes::from_static(b"hello"), now).meta
    }

    fn decode(bytes: &[u8]) -> Result<EntryMeta, DecodeError> {
        let meta = sample();
        EntryMeta::decode(bytes, &meta.key, &meta.variant)
    }

    fn assert_same(decoded: &EntryMeta, meta: &EntryMeta) {
        assert_eq!(decoded.key, meta.key);
        assert_eq!(decoded.headers.get_all("link").iter().count(), 2);
        assert_eq!(decoded.headers, meta.headers);
        assert_eq!(decoded.vary, meta.vary);
        assert_eq!(decoded.variant, meta.variant);
        assert_eq!(decoded.freshness, meta.freshness);
        assert_eq!(decoded.body_digest, *blake3::hash(b"hello").as_bytes());
        assert_eq!(decoded.url, meta.url);
        assert_eq!(decoded.received, meta.received);
    }

    #[test]
    fn metadata_round_trips_with_repeated_and_unknown_headers() {
        let meta = sample();
        assert_same(&decode(&meta.encode()).unwrap(), &meta);
        // Each flag on its own, and all at once.
        for set in 0..=5 {
            let mut flagged = meta.clone();
            let f = &mut flagged.freshness;
            let on = |n: usize| set == n || set == 5;
            (f.is_heuristic, f.requires_validation, f.forbids_stale) = (on(0), on(1), on(2));
            (f.is_immutable, f.is_shareable_with_authorization) = (on(3), on(4));
            let decoded = decode(&flagged.encode()).unwrap();
            assert_eq!(decoded.freshness, flagged.freshness, "flags {set}");
        }
    }

    /// The version a response was received in survives the disk tier beside the flags
    /// (entries written before it was stored read as HTTP/1.1: see
    /// `bytes_earlier_builds_wrote_decode_the_same`).
    #[test]
    fn the_received_version_round_trips_beside_the_flags() {
        let mut meta = sample();
        meta.freshness.is_shareable_with_authorization = true;
        for version in [
            http::Version::HTTP_10,
            http::Version::HTTP_11,
            http::Version::HTTP_2,
            http::Version::HTTP_3,
        ] {
            meta.received = version;
            let decoded = decode(&meta.encode()).unwrap();
            assert_eq!(decoded.received, version);
            assert_eq!(decoded.freshness, meta.freshness, "{version:?}");
        }
    }

    #[test]
    fn decoded_values_share_one_exact_buffer() {
        let meta = sample();
        let decoded = decode(&meta.encode()).unwrap();
        let total: usize = decoded.headers.values().map(HeaderValue::len).sum();
        let starts: Vec<usize> = decoded
            .headers
            .values()
            .map(|value| value.as_bytes().as_ptr() as usize)
            .collect();
        let first = *starts.iter().min().unwrap();
        let end = decoded
            .headers
            .values()
            .map(|value| value.as_bytes().as_ptr() as usize + value.len())
            .max()
            .unwrap();
        // Contiguous, in one allocation no larger than the values themselves.
        assert_eq!(end - first, total);
        assert_same(&decoded, &meta);
    }

    /// `sample()` as builds before values were decoded borrowed wrote it, in both
    /// versions: what is on disk must still be read the same.
    const WRITTEN_V2: &str = "c214687474703a2f2f6578616d706c652e636f6d2f61c801050010103c613e3b2072656c3d7072656c6f61640010103c623e3b2072656c3d7072656c6f616400020a6d61782d6167653d363000070f6163636570742d656e636f64696e67010e782d6f726967696e2d7468696e670c6b657074206279206e616d650101010f6163636570742d656e636f64696e67e0d4030080d095ffbc3100000005ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f00";
    const WRITTEN_V1: &str = "4f50450100014159a9567a3e0e4e9e5020537a14f5ef6d5a8a06be010383c94ae77c53170b5f14687474703a2f2f6578616d706c652e636f6d2f61c80105046c696e6b103c613e3b2072656c3d7072656c6f6164046c696e6b103c623e3b2072656c3d7072656c6f61640d63616368652d636f6e74726f6c0a6d61782d6167653d363004766172790f6163636570742d656e636f64696e670e782d6f726967696e2d7468696e670c6b657074206279206e616d6501010f6163636570742d656e636f64696e678f030f665bfdc4b8d440e0dbabce324adefc86cf7bc3ce788f40c3a8e3e5288ce0d403000080d095ffbc3100000000000005ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f00";

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
            .collect()
    }

    /// `sample_with_implied()` as version 4 wrote it.
    const WRITTEN_V4: &str = "c414687474703a2f2f6578616d706c652e636f6d2f73c80107020580e2cfaa0600020480bfcaaa0600042900030004000000030722352d6162632200020d6d61782d6167653d3836343030010080b899290080d095ffbc3100000005ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f00";

    #[test]
    fn bytes_earlier_builds_wrote_decode_the_same() {
        let meta = sample();
        // The sample's `vary: accept-encoding` is one known field (version 4), with no
        // value's length after it (version 5); the rest is as version 2 had it: two bytes
        // where version 2 had 18.
        let written = meta.encode();
        assert_eq!(written[0], COMPACT_HEADER + 5);
        assert_eq!(written.len() + 16, unhex(WRITTEN_V2).len());
        assert_same(&decode(&written).unwrap(), &meta);
        assert_same(&decode(&unhex(WRITTEN_V2)).unwrap(), &meta);
        assert_same(&decode(&unhex(WRITTEN_V1)).unwrap(), &meta);
    }

    /// Version 4 entries (implied values with an empty value stored beside them) read as
    /// they were written; version 5 drops the five empty values' lengths and serves the
    /// same fields, in the same order.
    #[test]
    fn version_4_entries_decode_the_same_and_version_5_is_shorter() {
        let meta = sample_with_implied();
        let v4 = EntryMeta::decode(&unhex(WRITTEN_V4), &meta.key, &meta.variant).unwrap();
        let written = meta.encode();
        let v5 = EntryMeta::decode(&written, &meta.key, &meta.variant).unwrap();
        for decoded in [&v4, &v5] {
            assert_eq!(decoded.headers, meta.headers);
            let order = |m: &EntryMeta| -> Vec<(String, Vec<u8>)> {
                m.headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect()
            };
            assert_eq!(order(decoded), order(&meta));
            assert_eq!(decoded.freshness, meta.freshness);
            assert_eq!(decoded.body_digest, meta.body_digest);
        }
        assert_eq!(written.len() + 5, unhex(WRITTEN_V4).len());
    }

    /// The form an earlier build wrote.
    fn encode_v1(meta: &EntryMeta) -> Vec<u8> {
        let f = &meta.freshness;
        let encoded = EncodedMetaV1 {
            key: meta.key.0,
            url: meta.url.clone(),
            status: meta.status.as_u16(),
            headers: meta
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()))
                .collect(),
            vary: match &meta.vary {
                Vary::None => Some(Vec::new()),
                Vary::Star => None,
                Vary::Fields(names) => Some(names.iter().map(HeaderName::as_str).collect()),
            },
            variant: meta.variant.0,
            lifetime_ms: millis(f.lifetime),
            is_heuristic: f.is_heuristic,
            corrected_initial_age_ms: millis(f.corrected_initial_age),
            response_time_ms: millis(
                f.response_time
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap(),
            ),
            requires_validation: f.requires_validation,
            forbids_stale: f.forbids_stale,
            is_immutable: f.is_immutable,
            stale_while_revalidate_s: f.stale_while_revalidate.as_secs(),
            stale_if_error_s: f.stale_if_error.as_secs(),
            is_shareable_with_authorization: f.is_shareable_with_authorization,
            body_len: meta.body_len,
            body_digest: meta.body_digest,
            derivation: None,
        };
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&postcard::to_allocvec(&encoded).unwrap());
        out
    }

    /// Entries an earlier build stored are read as they were; one stored under another
    /// key than the row's is refused. The compact form is much shorter.
    #[test]
    fn version_1_entries_are_read_and_must_be_the_rows_own() {
        let meta = sample();
        let v1 = encode_v1(&meta);
        assert_same(&decode(&v1).unwrap(), &meta);
        let elsewhere = PrimaryKey([9; 32]);
        assert!(matches!(
            EntryMeta::decode(&v1, &elsewhere, &meta.variant),
            Err(DecodeError::Corrupt(_))
        ));
        let v2 = meta.encode();
        assert!(v2.len() + 80 < v1.len(), "{} vs {}", v2.len(), v1.len());
    }

    #[test]
    fn damaged_or_foreign_bytes_are_refused_without_panicking() {
        let encoded = sample().encode();
        assert!(matches!(decode(b"nope"), Err(DecodeError::BadMagic)));
        let mut later_version = encoded.clone();
        later_version[0] += 1;
        assert!(matches!(
            decode(&later_version),
            Err(DecodeError::UnsupportedVersion(6))
        ));
        let mut other_v1 = encode_v1(&sample());
        other_v1[5] = 99;
        assert!(matches!(
            decode(&other_v1),
            Err(DecodeError::UnsupportedVersion(99))
        ));
        for cut in [1, 20, encoded.len() - 1] {
            assert!(decode(&encoded[..cut]).is_err(), "truncated at {cut}");
        }
        let mut flipped = encoded.clone();
        for index in 1..flipped.len() {
            flipped[index] ^= 0xff;
            let _ = decode(&flipped);
            flipped[index] ^= 0xff;
        }
        // A name code past the table is refused, not looked up out of bounds.
        assert!(StoredName::Known(200).name().is_err());
        assert!(StoredName::Date(200, 0).name().is_err());
        assert!(StoredName::KnownField(200).name().is_err());
        assert!(StoredName::KnownField(200).field(b"", 0).is_err());
        assert!(StoredName::KnownField(0).field(b"bytes", 0).is_err());
        // An implied value with a stored one beside it is damage, not a choice.
        assert!(StoredName::BodyLength.field(b"5", 5).is_err());
        assert!(StoredName::Date(5, u64::MAX).field(b"", 0).is_err());
    }

    /// Dates in the preferred form (RFC 9110 §5.6.7) and a Content-Length equal to the
    /// body's are stored implied and served byte for byte as they came; every other form
    /// (the obsolete RFC 850 and asctime ones, odd case, a length that is not the body's)
    /// is stored as it came.
    #[test]
    fn implied_dates_and_lengths_round_trip_byte_for_byte() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let fields = [
            ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
            ("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT"),
            ("expires", "Sunday, 06-Nov-94 08:49:37 GMT"),
            ("expires", "Sun Nov  6 08:49:37 1994"),
            ("expires", "wed, 01 jan 2025 00:00:00 gmt"),
            ("expires", "0"),
            ("content-length", "5"),
            ("x-date-like", "Fri, 03 Jan 2025 00:00:00 GMT"),
        ];
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(name, HeaderValue::from_static(value));
        }
        let meta = entry_at(
            "/d",
            headers.clone(),
            bytes::Bytes::from_static(b"hello"),
            now,
        )
        .meta;
        let encoded = meta.encode();
        let decoded = EntryMeta::decode(&encoded, &meta.key, &meta.variant).unwrap();
        assert_eq!(decoded.headers, meta.headers);
        let all = |map: &HeaderMap| -> Vec<(String, Vec<u8>)> {
            map.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(
            all(&decoded.headers),
            all(&meta.headers),
            "same fields, same order"
        );
        // Two dates and the length implied: their text is not in the stored bytes.
        let text = String::from_utf8_lossy(&encoded);
        assert!(!text.contains("Tue, 14 Nov 2023") && !text.contains("Wed, 01 Jan 2025"));
        assert!(text.contains("06-Nov-94") && text.contains("jan 2025"));
        assert!(
            text.contains("Fri, 03 Jan 2025"),
            "only the three date fields are implied"
        );

        let mut other_length = meta.clone();
        other_length
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        let decoded = EntryMeta::decode(&other_length.encode(), &meta.key, &meta.variant);
        assert_eq!(decoded.unwrap().headers[header::CONTENT_LENGTH], "6");
    }

    /// Whole fields of the table are stored as one code and served byte for byte; a
    /// value that differs in any byte (case, spacing, parameters) is stored as it came.
    #[test]
    fn known_fields_are_stored_as_codes_and_served_as_they_came() {
        let fields = [
            ("content-type", "application/octet-stream"),
            ("accept-ranges", "bytes"),
            ("x-content-type-options", "nosniff"),
            ("content-type", "Application/JSON"),
            ("cache-control", "max-age=0 "),
            ("access-control-allow-origin", "https://example.com"),
            ("x-frame-options", "sameorigin"),
        ];
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(name, HeaderValue::from_static(value));
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let meta = entry_at("/k", headers, bytes::Bytes::from_static(b"hi"), now).meta;
        let encoded = meta.encode();
        let decoded = EntryMeta::decode(&encoded, &meta.key, &meta.variant).unwrap();
        let all = |map: &HeaderMap| -> Vec<(String, Vec<u8>)> {
            map.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(all(&decoded.headers), all(&meta.headers));
        let text = String::from_utf8_lossy(&encoded);
        for known in ["octet-stream", "bytes", "nosniff", "sameorigin"] {
            assert!(!text.contains(known), "{known} is stored as a code");
        }
        for verbatim in ["Application/JSON", "max-age=0 ", "https://example.com"] {
            assert!(text.contains(verbatim), "{verbatim} is stored as it came");
        }
        // Every entry of the table is a valid field, and no two are the same.
        for (at, (name, value)) in KNOWN_FIELDS.iter().enumerate() {
            assert!(HeaderValue::from_str(value).is_ok(), "{name}: {value}");
            assert!(
                !KNOWN_FIELDS[..at].contains(&(name.clone(), *value)),
                "{name}: {value} twice"
            );
        }
    }
}
