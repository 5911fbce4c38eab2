//! Content-coding (RFC 9110 §8.4, §12.5.3): which coding a client gets, whether a response
//! is worth compressing, how its header fields change, and the streaming encoders and the
//! gzip decoder.
//!
//! Storing an encoded variant once and serving it to later requests is `pipeline`'s job;
//! this module only decides and transforms, and never holds a whole body: encoders read the
//! body as a stream and emit chunks as they are produced.

use async_compression::tokio::bufread::{BrotliEncoder, GzipDecoder, GzipEncoder, ZstdEncoder};
use async_compression::Level;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::body::Body;
use crate::cache::key::qvalue;
use crate::config::CompressionConfig;

/// The codings outpost produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl From<crate::config::ContentCoding> for Coding {
    fn from(coding: crate::config::ContentCoding) -> Coding {
        match coding {
            crate::config::ContentCoding::Br => Coding::Br,
            crate::config::ContentCoding::Zstd => Coding::Zstd,
            crate::config::ContentCoding::Gzip => Coding::Gzip,
        }
    }
}

impl Coding {
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    pub fn parse(token: &str) -> Option<Coding> {
        match token.trim().to_ascii_lowercase().as_str() {
            "br" => Some(Coding::Br),
            "zstd" => Some(Coding::Zstd),
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            _ => None,
        }
    }
}

/// The outcome of negotiation for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Identity,
    Encode(Coding),
    /// Identity is excluded and no coding we have is acceptable: 406 (RFC 9110 §12.5.3).
    NotAcceptable,
}

/// The client's Accept-Encoding, parsed once per request.
#[derive(Debug, Clone, Default)]
pub struct AcceptEncoding {
    /// (coding token lower-cased, weight in thousandths)
    members: Vec<(String, u16)>,
    is_present: bool,
}

impl AcceptEncoding {
    pub fn parse(headers: &HeaderMap) -> AcceptEncoding {
        let mut parsed = AcceptEncoding::default();
        for value in headers.get_all(header::ACCEPT_ENCODING) {
            parsed.is_present = true;
            let Ok(text) = value.to_str() else { continue };
            for member in text.split(',') {
                let mut parts = member.split(';');
                let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                if coding.is_empty() {
                    continue;
                }
                let mut weight = Some(1000);
                for parameter in parts {
                    let parameter = parameter.trim();
                    if parameter
                        .get(..2)
                        .is_some_and(|name| name.eq_ignore_ascii_case("q="))
                    {
                        weight = qvalue(parameter.as_bytes());
                    }
                }
                if let Some(weight) = weight {
                    let coding = if coding == "x-gzip" {
                        "gzip".to_string()
                    } else {
                        coding
                    };
                    parsed.members.push((coding, weight));
                }
            }
        }
        parsed
    }

    fn weight_of(&self, coding: &str) -> Option<u16> {
        self.members
            .iter()
            .find(|(c, _)| c == coding)
            .map(|(_, w)| *w)
    }

    fn star(&self) -> Option<u16> {
        self.weight_of("*")
    }

    /// Whether `coding` (a Content-Encoding the response already has) is acceptable. A
    /// request without Accept-Encoding may take any coding by RFC 9110 §12.5.3, but those
    /// are mostly tools that cannot decode; like [`AcceptEncoding::choose`], treat them as
    /// wanting identity.
    pub fn accepts(&self, coding: &str) -> bool {
        if !self.is_present {
            return false;
        }
        let coding = coding.to_ascii_lowercase();
        let coding = if coding == "x-gzip" {
            "gzip"
        } else {
            coding.as_str()
        };
        self.weight_of(coding)
            .or_else(|| self.star())
            .is_some_and(|w| w > 0)
    }

    /// Identity's explicit weight (by name, else by `*`), if the client gave one. Identity
    /// is acceptable by default (§12.5.3) but an unlisted identity carries no preference,
    /// so any acceptable coding beats it.
    fn identity_weight(&self) -> Option<u16> {
        self.weight_of("identity").or_else(|| self.star())
    }

    /// Whether the client excludes the identity representation (`identity;q=0`, or `*;q=0`
    /// with identity unnamed; RFC 9110 §12.5.3).
    pub fn excludes_identity(&self) -> bool {
        self.is_present && self.identity_weight() == Some(0)
    }

    /// Picks the representation: the coding with the highest weight, ties broken by
    /// `preference` order, identity when it weighs more than every coding.
    pub fn choose(&self, preference: &[Coding]) -> Choice {
        if !self.is_present {
            // No Accept-Encoding: any coding is allowed, but clients that send none are
            // mostly tools that cannot decode; identity is the safe answer.
            return Choice::Identity;
        }
        let mut best: Option<(Coding, u16)> = None;
        for &coding in preference {
            let weight = self
                .weight_of(coding.as_str())
                .or_else(|| self.star())
                .unwrap_or(0);
            if weight > 0 && best.is_none_or(|(_, w)| weight > w) {
                best = Some((coding, weight));
            }
        }
        let identity = self.identity_weight();
        match (best, identity) {
            (Some((_, weight)), Some(identity)) if identity > weight => Choice::Identity,
            (Some((coding, _)), _) => Choice::Encode(coding),
            (None, Some(0)) => Choice::NotAcceptable,
            (None, _) => Choice::Identity,
        }
    }
}

/// Compression settings, from the `[compression]` config section.
#[derive(Debug)]
pub struct Compression {
    pub is_enabled: bool,
    pub min_size: u64,
    pub preference: Vec<Coding>,
    extra_types: Vec<String>,
    gzip_level: i32,
    brotli_level: i32,
    zstd_level: i32,
    /// Encoder runs started (a metric): shows that stored variants are reused.
    runs: prometheus_client::metrics::counter::Counter,
    /// What running encoders may hold together (see [`Compression::reserve_encoder`]).
    encoder_budget: u64,
    /// Bytes the running encoders are estimated to hold; shared with their permits, so a
    /// permit outliving these settings (after a reload) gives back to the count it took from.
    encoders_hold: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Encodings refused for want of room in the budget (a metric).
    encoders_refused: prometheus_client::metrics::counter::Counter,
    /// Tells these settings from every other set made in this process, so a [`Verdict`]
    /// judged under them is not trusted under others (after a reload).
    generation: u64,
}

/// A stored response's compressibility as judged under one [`Compression`]'s settings,
/// kept beside the response so hits do not judge it again.
#[derive(Debug, Default)]
pub struct Verdict(std::sync::atomic::AtomicU64);

impl Clone for Verdict {
    fn clone(&self) -> Self {
        Verdict(std::sync::atomic::AtomicU64::new(self.0.load(Relaxed)))
    }
}

/// Generations of [`Compression`] settings; 0 is never one, so a new [`Verdict`] is unjudged.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Compression {
    pub fn new(
        config: &CompressionConfig,
        runs: prometheus_client::metrics::counter::Counter,
    ) -> Compression {
        Compression {
            generation: GENERATIONS.fetch_add(1, Relaxed),
            is_enabled: config.enabled,
            min_size: config.min_size.as_u64(),
            preference: config
                .preference
                .iter()
                .map(|&coding| Coding::from(coding))
                .collect(),
            extra_types: config
                .types
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
            gzip_level: config.gzip_level,
            brotli_level: config.brotli_level,
            zstd_level: config.zstd_level,
            runs,
            encoder_budget: u64::MAX,
            encoders_hold: Default::default(),
            encoders_refused: Default::default(),
        }
    }

    /// These settings with running encoders held to `budget` bytes together; refusals are
    /// counted in `refused`.
    #[must_use]
    pub fn with_encoder_budget(
        mut self,
        budget: u64,
        refused: prometheus_client::metrics::counter::Counter,
    ) -> Compression {
        self.encoder_budget = budget;
        self.encoders_refused = refused;
        self
    }

    /// Room for one more encoder of `coding` for a body of `length` bytes (`None`: not
    /// known), counted against the encoders' budget until the permit is dropped; `None`
    /// when the encoders running now leave too little. One encoder alone is never refused,
    /// so a small budget does not turn compression off; nor is one for a client that
    /// excludes identity (`identity_acceptable` false), which has nothing else to get.
    ///
    /// Each response encoded on its way holds an encoder until its client has it all: a
    /// burst of compressible misses, or clients that read slowly, would otherwise hold
    /// encoders' tables (up to megabytes each) beside the cache without limit. A refused
    /// response goes as it is, which every client that does not exclude identity accepts.
    pub fn reserve_encoder(
        &self,
        coding: Coding,
        length: Option<u64>,
        identity_acceptable: bool,
    ) -> Option<EncoderPermit> {
        let bytes = self.encoder_memory(coding, length);
        let budget = if identity_acceptable {
            self.encoder_budget
        } else {
            u64::MAX
        };
        let counted = self
            .encoders_hold
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |held| {
                    (held == 0 || held.saturating_add(bytes) <= budget)
                        .then(|| held.saturating_add(bytes))
                },
            )
            .is_ok();
        if !counted {
            self.encoders_refused.inc();
            return None;
        }
        Some(EncoderPermit {
            hold: std::sync::Arc::clone(&self.encoders_hold),
            bytes,
        })
    }

    /// Bytes running encoders are estimated to hold now.
    pub fn encoders_held(&self) -> u64 {
        self.encoders_hold
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The heap an encoder of `coding` at these settings' level holds while it runs, for a
    /// body of `length` bytes (`None`: not known), as the codecs size it: zlib's fixed
    /// state; zstd's window, its input and output buffers and its hash and chain tables
    /// (fitted as `zstd_tables` fits them); brotli's ring buffer, sized to the body when
    /// it is smaller than the window, and its hashers. Checked against the heap measured
    /// by `cargo bench --bench encoder_memory`, at each coding's lowest, default and
    /// highest level.
    pub fn encoder_memory(&self, coding: Coding, length: Option<u64>) -> u64 {
        const KIB: u64 = 1 << 10;
        match coding {
            Coding::Gzip => 400 * KIB,
            Coding::Zstd => {
                let (window, chain, hash) = zstd_fitted_tables(self.zstd_level, length);
                // The optimal parsers of levels 16 and up keep statistics of their own.
                let parser = if self.zstd_level >= 16 { 1024 * KIB } else { 0 };
                (1 << window) + (4 << chain) + (4 << hash) + 640 * KIB + parser
            }
            Coding::Br => {
                let window = brotli_window_log(length);
                let ring = length.map_or(1 << window, |length| length.min(1 << window));
                brotli_memory(self.brotli_level, window, ring)
            }
        }
    }

    pub fn encoder_runs(&self) -> u64 {
        self.runs.get()
    }

    /// [`Compression::is_compressible`] for a stored response whose last verdict is kept
    /// in `kept`: judged once per response and settings.
    pub fn is_stored_compressible(
        &self,
        kept: &Verdict,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> bool {
        let judged = kept.0.load(Relaxed);
        if judged >> 1 == self.generation {
            return judged & 1 == 1;
        }
        let verdict = self.is_compressible(status, headers);
        kept.0
            .store(self.generation << 1 | u64::from(verdict), Relaxed);
        verdict
    }

    /// Whether a response with this status and these fields benefits from compression:
    /// a compressible media type, no Content-Encoding already, not `no-transform` (RFC 9111
    /// §5.2.2.6), not partial, and not smaller than `min_size`.
    pub fn is_compressible(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if !self.is_enabled || status != StatusCode::OK {
            return false;
        }
        // The media type first: it settles most responses (every hit asks), and reading
        // it allocates only for a type spelled with capitals.
        let Some(content_type) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        let media_type: std::borrow::Cow<'_, str> =
            if media_type.bytes().any(|b| b.is_ascii_uppercase()) {
                media_type.to_ascii_lowercase().into()
            } else {
                media_type.into()
            };
        if !is_compressible_type(&media_type) && !self.extra_types.iter().any(|t| *t == *media_type)
        {
            return false;
        }
        if headers.contains_key(header::CONTENT_ENCODING)
            || headers.contains_key(header::CONTENT_RANGE)
            || has_no_transform(headers)
        {
            return false;
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        length.is_none_or(|len| len >= self.min_size)
    }

    fn level(&self, coding: Coding) -> Level {
        Level::Precise(match coding {
            Coding::Gzip => self.gzip_level,
            Coding::Br => self.brotli_level,
            Coding::Zstd => self.zstd_level,
        })
    }

    /// `body` encoded with `coding`, as a stream, holding `permit` (its room in the
    /// encoders' budget) as long as the encoder lives.
    pub fn encode_reserved(&self, body: Body, coding: Coding, permit: EncoderPermit) -> Body {
        let encoded = self.encode(body, coding);
        Body::boxed(encoded.map_frame(move |frame| {
            // The permit lives in this closure, so as long as the encoder beside it.
            let _ = &permit;
            frame
        }))
    }

    /// `body` encoded with `coding`, as a stream, outside the encoders' budget.
    pub fn encode(&self, body: Body, coding: Coding) -> Body {
        self.runs.inc();
        // Known for stored bodies and for responses with a Content-Length.
        let length = http_body::Body::size_hint(&body).upper();
        // An encoder compresses all the input it is handed in one poll: feeding it bounded
        // pieces (a stored body is one chunk of up to max_object_size) keeps each poll short,
        // so a large body never holds an async worker for long.
        let pieces = body
            .into_data_stream()
            .map_ok(|chunk| {
                futures_util::stream::iter(
                    split_into_pieces(chunk, ENCODER_INPUT_PIECE)
                        .map(Ok::<_, crate::body::BoxError>),
                )
            })
            .try_flatten();
        let reader = StreamReader::new(pieces.map_err(std::io::Error::other));
        let level = self.level(coding);
        match coding {
            Coding::Gzip => encoded_stream(GzipEncoder::with_quality(reader, level)),
            Coding::Br => {
                let mut params = async_compression::brotli::EncoderParams::default().quality(level);
                if let Some(length) = length {
                    params = params.size_hint(usize::try_from(length).unwrap_or(usize::MAX));
                }
                let needed = brotli_window_log(length);
                if needed < BROTLI_DEFAULT_WINDOW_LOG {
                    params = params.window_size(needed as i32);
                }
                encoded_stream(BrotliEncoder::with_params(reader, params))
            }
            Coding::Zstd => match zstd_tables(self.zstd_level, length) {
                Some((window, chain, hash)) => {
                    use async_compression::zstd::CParameter;
                    let tables = [
                        CParameter::window_log(window),
                        CParameter::chain_log(chain),
                        CParameter::hash_log(hash),
                    ];
                    encoded_stream(ZstdEncoder::with_quality_and_params(reader, level, &tables))
                }
                None => encoded_stream(ZstdEncoder::with_quality(reader, level)),
            },
        }
    }
}

/// The window (log2 of its bytes) to encode a body of `length` bytes with, or of unknown
/// length with [`UNKNOWN_LENGTH_WINDOW_LOG`].
fn window_log_for(length: Option<u64>) -> u32 {
    length.map_or(UNKNOWN_LENGTH_WINDOW_LOG, whole_body_window_log)
}

/// The window for a body of unknown length (chunked, or read to the close): 512 KiB, the
/// window ngx_brotli uses by default. The codecs' own, 4 MiB at the default levels, would
/// cost an encoder 10-15 MiB (`cargo bench --bench encoder_memory`) for what is usually a
/// page or a script; a longer body loses only matches further back than 512 KiB.
const UNKNOWN_LENGTH_WINDOW_LOG: u32 = 19;

/// The smallest window (log2 of its bytes) through which an encoder sees all of a
/// `length`-byte body at once (brotli's window is 16 bytes short of its power of two); a
/// larger one compresses the body no better.
///
/// Brotli and zstd otherwise size their windows and match tables for input of unknown
/// length: measured with `cargo bench --bench encoder_memory` at the default levels, a
/// brotli encoder then holds about 10 MiB and a zstd encoder 15 MiB whatever the body; zstd's
/// match tables are cut with its window ([`zstd_tables`]). A window is only ever made
/// smaller than the codec's own choice, never larger.
fn whole_body_window_log(length: u64) -> u32 {
    let needed = length.saturating_add(16).max(1 << SMALLEST_WINDOW_LOG);
    u64::BITS - (needed - 1).leading_zeros()
}

/// The smallest window brotli (RFC 7932 §9.1) and zstd take.
const SMALLEST_WINDOW_LOG: u32 = 10;
/// Brotli's window when none is given.
const BROTLI_DEFAULT_WINDOW_LOG: u32 = 22;
/// Below this window, brotli's qualities 5 to 9 switch to a slower match finder (its
/// "forgetful chain" hashers): measured with `cargo bench --bench compression`, quality 5
/// ran at 22 MB/s with windows fitted to the corpus's smaller files against 40 MB/s with
/// this floor, for the same ratio.
const BROTLI_SMALLEST_FAST_WINDOW_LOG: u32 = 17;

/// The window brotli is given for a body of `length` bytes (or of unknown length).
fn brotli_window_log(length: Option<u64>) -> u32 {
    window_log_for(length).clamp(BROTLI_SMALLEST_FAST_WINDOW_LOG, BROTLI_DEFAULT_WINDOW_LOG)
}

/// Heap of a brotli encoder at `quality` with a window of `2^window` bytes whose ring
/// buffer holds `ring` bytes: qualities 0 and 1 compress fragments with small fixed
/// tables; 2 to 9 hash into tables of fixed size; 10 and 11 keep a binary tree over the
/// whole window.
fn brotli_memory(quality: i32, window: u32, ring: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    match quality {
        ..=1 => 448 << 10,
        2..=9 => MIB + MIB / 2 + ring * 15 / 2,
        _ => 2 * MIB + (8 << window) + ring * 8,
    }
}

/// An encoder's room in the encoders' budget ([`Compression::reserve_encoder`]), given
/// back when dropped (with the encoder it was taken for).
#[derive(Debug)]
pub struct EncoderPermit {
    hold: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bytes: u64,
}

impl Drop for EncoderPermit {
    fn drop(&mut self) {
        self.hold
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// zstd's window, chain and hash logs at `level` for a body of `length` bytes (or of
/// unknown length), when they are smaller than the level's own for input of unknown length.
/// zstd fits them itself only when told the input's length, which a streaming encoder here
/// cannot tell it; so this does as it would (`ZSTD_getCParams`, `ZSTD_adjustCParams`): the
/// level's row of the table for the source's size, the window cut to what the body needs,
/// the hash table at most twice the window and the chain table at most the window (one
/// more for the binary-tree strategies of levels 13 and up).
fn zstd_tables(level: i32, length: Option<u64>) -> Option<(u32, u32, u32)> {
    let fitted = zstd_fitted_tables(level, length);
    (fitted != zstd_level_tables(level, None)).then_some(fitted)
}

/// zstd's window, chain and hash logs at `level` for a body of `length` bytes, fitted as
/// [`zstd_tables`] says.
fn zstd_fitted_tables(level: i32, length: Option<u64>) -> (u32, u32, u32) {
    let (window, chain, hash) = zstd_level_tables(level, length);
    let window = window.min(window_log_for(length));
    let chain_over_window = u32::from(level >= 13);
    (
        window,
        chain.min(window + chain_over_window),
        hash.min(window + 1),
    )
}

/// Window, chain and hash logs of zstd's `level` for a source of `length` bytes: the first
/// three columns of its table for that size (`lib/compress/clevels.h`).
fn zstd_level_tables(level: i32, length: Option<u64>) -> (u32, u32, u32) {
    let table = match length {
        Some(length) if length <= 16 << 10 => 3,
        Some(length) if length <= 128 << 10 => 2,
        Some(length) if length <= 256 << 10 => 1,
        _ => 0,
    };
    // As zstd reads its levels: 0 is its default, 3; negative levels share the first row.
    let row = match level {
        0 => 3,
        level => usize::try_from(level.clamp(0, 22)).unwrap_or(0),
    };
    let (window, chain, hash) = ZSTD_LEVEL_TABLES[table][row];
    (u32::from(window), u32::from(chain), u32::from(hash))
}

/// zstd's window, chain and hash logs by source size and level (`lib/compress/clevels.h`).
const ZSTD_LEVEL_TABLES: [[(u8, u8, u8); 23]; 4] = [
    // sources over 256 KiB and of unknown length
    [
        (19, 12, 13),
        (19, 13, 14),
        (20, 15, 16),
        (21, 16, 17),
        (21, 18, 18),
        (21, 18, 19),
        (21, 18, 19),
        (21, 19, 20),
        (21, 19, 20),
        (22, 20, 21),
        (22, 21, 22),
        (22, 21, 22),
        (22, 22, 23),
        (22, 22, 22),
        (22, 22, 23),
        (22, 23, 23),
        (22, 22, 22),
        (23, 23, 22),
        (23, 23, 22),
        (23, 24, 22),
        (25, 25, 23),
        (26, 26, 24),
        (27, 27, 25),
    ],
    // sources up to 256 KiB
    [
        (18, 12, 13),
        (18, 13, 14),
        (18, 14, 14),
        (18, 16, 16),
        (18, 16, 17),
        (18, 17, 18),
        (18, 18, 19),
        (18, 18, 19),
        (18, 18, 19),
        (18, 18, 19),
        (18, 18, 19),
        (18, 18, 19),
        (18, 19, 19),
        (18, 18, 19),
        (18, 18, 19),
        (18, 18, 19),
        (18, 19, 19),
        (18, 19, 19),
        (18, 19, 19),
        (18, 19, 19),
        (18, 19, 19),
        (18, 19, 19),
        (18, 19, 19),
    ],
    // up to 128 KiB
    [
        (17, 12, 12),
        (17, 12, 13),
        (17, 13, 15),
        (17, 15, 16),
        (17, 17, 17),
        (17, 16, 17),
        (17, 16, 17),
        (17, 16, 17),
        (17, 16, 17),
        (17, 16, 17),
        (17, 16, 17),
        (17, 17, 17),
        (17, 18, 17),
        (17, 18, 17),
        (17, 18, 17),
        (17, 18, 17),
        (17, 18, 17),
        (17, 18, 17),
        (17, 18, 17),
        (17, 18, 17),
        (17, 18, 17),
        (17, 18, 17),
        (17, 18, 17),
    ],
    // up to 16 KiB
    [
        (14, 12, 13),
        (14, 14, 15),
        (14, 14, 15),
        (14, 14, 15),
        (14, 14, 14),
        (14, 14, 14),
        (14, 14, 14),
        (14, 14, 14),
        (14, 14, 14),
        (14, 15, 14),
        (14, 15, 14),
        (14, 15, 14),
        (14, 15, 14),
        (14, 15, 14),
        (14, 15, 15),
        (14, 15, 15),
        (14, 15, 15),
        (14, 15, 15),
        (14, 15, 15),
        (14, 15, 15),
        (14, 15, 15),
        (14, 15, 15),
        (14, 15, 15),
    ],
];

/// A gzip body decoded, as a stream (for clients that do not accept the origin's gzip).
pub fn decode_gzip(body: Body) -> Body {
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    stream_body(ReaderStream::new(GzipDecoder::new(reader)))
}

/// Input bytes an encoder gets per poll.
const ENCODER_INPUT_PIECE: usize = 64 << 10;
/// Output buffer of an encoded stream: one chunk per this many encoded bytes.
const ENCODER_OUTPUT_CHUNK: usize = 32 << 10;

/// `chunk` as slices of at most `piece` bytes (no copy).
fn split_into_pieces(chunk: Bytes, piece: usize) -> impl Iterator<Item = Bytes> {
    let len = chunk.len();
    (0..len)
        .step_by(piece)
        .map(move |start| chunk.slice(start..(start + piece).min(len)))
}

fn encoded_stream<R>(encoder: R) -> Body
where
    R: tokio::io::AsyncRead + Send + 'static,
{
    stream_body(ReaderStream::with_capacity(encoder, ENCODER_OUTPUT_CHUNK))
}

fn stream_body<S>(stream: S) -> Body
where
    S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    Body::boxed(StreamBody::new(stream.map(|chunk| chunk.map(Frame::data))))
}

/// RFC 9111 §5.2.2.6 / §5.2.1.6: the response must not be transformed.
pub fn has_no_transform(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
}

/// text/*, JSON, JavaScript, XML, SVG, wasm and the `+json` / `+xml` structured suffixes.
fn is_compressible_type(media_type: &str) -> bool {
    media_type.starts_with("text/")
        || media_type.ends_with("+json")
        || media_type.ends_with("+xml")
        || matches!(
            media_type,
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/ecmascript"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
                | "application/manifest+json"
                | "application/x-ndjson"
        )
}

/// Adds `Accept-Encoding` to Vary unless it is there (or Vary is `*`): every representation
/// of a compressible resource depends on it.
pub fn vary_on_accept_encoding(headers: &mut HeaderMap) {
    crate::cache::key::vary_on(headers, "Accept-Encoding");
}

/// The fields of an encoded representation derived from `headers`: Content-Encoding set,
/// Vary extended, the ETag given a coding suffix so it cannot be confused with the identity
/// representation's, and fields that described the identity bytes removed. `length` is the
/// encoded length when known.
pub fn encoded_headers(headers: &mut HeaderMap, coding: Coding, length: Option<u64>) {
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.as_str()),
    );
    match length {
        Some(length) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
    headers.remove(header::ACCEPT_RANGES);
    headers.remove("content-digest");
    headers.remove("repr-digest");
    headers.remove("content-md5");
    vary_on_accept_encoding(headers);
    if let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok()) {
        if let Some(suffixed) = suffixed_etag(etag, coding) {
            headers.insert(header::ETAG, suffixed);
        }
    }
}

/// `"abc"` becomes `"abc-br"`, `W/"abc"` becomes `W/"abc-br"`.
fn suffixed_etag(etag: &str, coding: Coding) -> Option<HeaderValue> {
    let etag = etag.trim();
    let (prefix, quoted) = match etag.strip_prefix("W/") {
        Some(rest) => ("W/", rest),
        None => ("", etag),
    };
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    HeaderValue::from_str(&format!("{prefix}\"{inner}-{}\"", coding.as_str())).ok()
}

/// The ETag with any coding suffix removed, so that If-None-Match accepts either form.
/// Borrowed when there is none (a browser's revalidation compares tags on every request).
pub fn strip_coding_suffix(etag: &str) -> Cow<'_, str> {
    for coding in [Coding::Br, Coding::Zstd, Coding::Gzip] {
        let base = etag
            .strip_suffix('"')
            .and_then(|rest| rest.strip_suffix(coding.as_str()))
            .and_then(|rest| rest.strip_suffix('-'));
        if let Some(base) = base {
            return Cow::Owned(format!("{base}\""));
        }
    }
    Cow::Borrowed(etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFERENCE: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    /// Encoders count against their budget while their permits live: past it one more is
    /// refused (and counted), except the first alone and one for a client with no other
    /// choice; a dropped permit gives its room back. Each is counted for its coding and
    /// body: a zstd encoder for 1 MiB holds more than one for 100 KiB, gzip's is fixed.
    #[test]
    fn encoders_are_held_to_their_memory_budget() {
        let refused = prometheus_client::metrics::counter::Counter::default();
        let unlimited = Compression::new(&CompressionConfig::default(), Default::default());
        let small = unlimited.encoder_memory(Coding::Zstd, Some(100 << 10));
        let large = unlimited.encoder_memory(Coding::Zstd, Some(1 << 20));
        assert!(small < large && large <= unlimited.encoder_memory(Coding::Zstd, None) * 3);
        assert_eq!(
            unlimited.encoder_memory(Coding::Gzip, Some(1 << 10)),
            unlimited.encoder_memory(Coding::Gzip, None)
        );

        let compression = Compression::new(&CompressionConfig::default(), Default::default())
            .with_encoder_budget(small + small / 2, refused.clone());
        let alone = compression
            .reserve_encoder(Coding::Zstd, Some(1 << 20), true)
            .expect("one encoder alone passes any budget");
        assert_eq!(compression.encoders_held(), large);
        assert!(compression
            .reserve_encoder(Coding::Gzip, Some(1 << 10), true)
            .is_none());
        assert_eq!(refused.get(), 1);
        let insisted = compression
            .reserve_encoder(Coding::Gzip, Some(1 << 10), false)
            .expect("a client that excludes identity has no other choice");
        drop(alone);
        drop(insisted);
        assert_eq!(compression.encoders_held(), 0);
        let first = compression.reserve_encoder(Coding::Zstd, Some(100 << 10), true);
        assert!(first.is_some());
        assert!(compression
            .reserve_encoder(Coding::Zstd, Some(100 << 10), true)
            .is_none());
        assert_eq!(refused.get(), 2);
    }

    /// A stored response's compressibility is judged once per settings: a reload that
    /// changes the settings (here: compression turned on, then a type added) is obeyed at
    /// once, not answered from what earlier settings concluded.
    #[test]
    fn a_stored_verdict_is_judged_again_under_new_settings() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-thing"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        let kept = Verdict::default();
        let settings = |enabled: bool, types: &[&str]| {
            let config = CompressionConfig {
                enabled,
                types: types.iter().map(|t| t.to_string()).collect(),
                ..CompressionConfig::default()
            };
            Compression::new(&config, Default::default())
        };
        let off = settings(false, &["application/x-thing"]);
        let plain = settings(true, &[]);
        let with_type = settings(true, &["application/x-thing"]);
        let ok = StatusCode::OK;
        assert!(!off.is_stored_compressible(&kept, ok, &headers));
        assert!(!plain.is_stored_compressible(&kept, ok, &headers));
        assert!(with_type.is_stored_compressible(&kept, ok, &headers));
        // Asked again under each, the kept verdict agrees with judging afresh.
        for compression in [&off, &plain, &with_type, &with_type, &off] {
            let fresh = compression.is_compressible(ok, &headers);
            assert_eq!(
                compression.is_stored_compressible(&kept, ok, &headers),
                fresh
            );
        }
    }

    fn choose(value: &str) -> Choice {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        AcceptEncoding::parse(&headers).choose(&PREFERENCE)
    }

    /// RFC 9110 §12.5.3 negotiation table.
    #[test]
    fn negotiation_follows_weights_then_server_preference() {
        use Choice::*;
        use Coding::*;
        let table = [
            ("gzip, deflate, br, zstd", Encode(Br)),
            ("gzip", Encode(Gzip)),
            ("GZIP ,  deflate", Encode(Gzip)),
            ("x-gzip", Encode(Gzip)),
            ("gzip;q=1.0, br;q=0.5", Encode(Gzip)),
            ("br;q=0.2, zstd;q=0.8, gzip;q=0.8", Encode(Zstd)),
            ("gzip;q=0, br;q=0", Identity),
            ("*", Encode(Br)),
            ("*;q=0.5, gzip", Encode(Gzip)),
            ("*;q=0", NotAcceptable),
            ("identity;q=0", NotAcceptable),
            ("identity;q=0, gzip", Encode(Gzip)),
            ("*;q=0, identity", Identity),
            ("deflate", Identity),
            ("", Identity),
            ("identity", Identity),
            ("gzip;q=0.5, identity;q=1", Identity),
            ("gzip;q=2", Identity),
            ("br;q=0.001", Encode(Br)),
        ];
        for (value, expected) in table {
            assert_eq!(choose(value), expected, "Accept-Encoding: {value}");
        }
        assert_eq!(
            AcceptEncoding::parse(&HeaderMap::new()).choose(&PREFERENCE),
            Identity
        );
    }

    #[test]
    fn windows_are_fitted_to_known_lengths_and_never_grown() {
        assert_eq!(whole_body_window_log(0), 10);
        assert_eq!(whole_body_window_log(100 << 10), 17);
        // Brotli's window is 16 bytes short of its power of two.
        assert_eq!(whole_body_window_log((1 << 17) - 16), 17);
        assert_eq!(whole_body_window_log(1 << 17), 18);
        // zstd's own rows for small sources (its table for up to 128 KiB, level 9).
        assert_eq!(zstd_tables(9, Some(100 << 10)), Some((17, 16, 17)));
        assert_eq!(zstd_tables(9, Some(10)), Some((10, 10, 11)));
        assert_eq!(zstd_tables(9, None), Some((19, 19, 20)));
        for level in -5..=22 {
            let (window, chain, hash) = zstd_level_tables(level, None);
            for length in [0, 1, 1000, 100 << 10, 1 << 20, 3 << 20, 64 << 20] {
                match zstd_tables(level, Some(length)) {
                    Some((fitted_window, fitted_chain, fitted_hash)) => {
                        assert!(fitted_window < window, "level {level}, {length} bytes");
                        assert!(fitted_chain <= chain && fitted_hash <= hash);
                        assert!(u64::from(1u32 << fitted_window) >= length);
                    }
                    None => assert!(whole_body_window_log(length) >= window),
                }
            }
        }
    }

    /// Bodies encoded with windows fitted to their length decode to the same bytes (RFC 7932
    /// brotli, RFC 8878 zstd), whether the length is right on a window's edge or not, and so
    /// do bodies of unknown length longer than the window they get.
    #[tokio::test]
    async fn bodies_encoded_with_fitted_windows_decode_whole() {
        use async_compression::tokio::bufread::{BrotliDecoder, ZstdDecoder};
        use http_body_util::BodyExt;
        use tokio::io::AsyncReadExt;
        let text = include_bytes!("../../testdata/text/packages.json");
        let compression = Compression::new(&CompressionConfig::default(), Default::default());
        // Longer than the window a body of unknown length gets.
        let long: Vec<u8> = text.iter().copied().cycle().take(3 << 19).collect();
        for length in [100, (1 << 17) - 16, (1 << 17) + 1, long.len()] {
            let body = Bytes::copy_from_slice(&long[..length]);
            for (coding, told) in [Coding::Br, Coding::Zstd]
                .into_iter()
                .flat_map(|c| [(c, true), (c, false)])
            {
                let input = if told {
                    Body::full(body.clone())
                } else {
                    // Length unknown: the streaming window, shorter than the whole text.
                    let frame = Ok::<_, std::io::Error>(http_body::Frame::data(body.clone()));
                    Body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
                        [frame],
                    )))
                };
                let encoded = compression.encode(input, coding);
                let encoded = encoded.collect().await.unwrap().to_bytes();
                let mut decoded = Vec::new();
                match coding {
                    Coding::Br => {
                        BrotliDecoder::new(&encoded[..])
                            .read_to_end(&mut decoded)
                            .await
                    }
                    _ => {
                        ZstdDecoder::new(&encoded[..])
                            .read_to_end(&mut decoded)
                            .await
                    }
                }
                .unwrap();
                assert_eq!(decoded, body, "{coding:?} at {length} bytes, told: {told}");
            }
        }
    }

    #[test]
    fn etag_suffix_round_trips() {
        assert_eq!(suffixed_etag("\"abc\"", Coding::Br).unwrap(), "\"abc-br\"");
        assert_eq!(
            suffixed_etag("W/\"abc\"", Coding::Gzip).unwrap(),
            "W/\"abc-gzip\""
        );
        assert_eq!(strip_coding_suffix("\"abc-br\""), "\"abc\"");
        assert_eq!(strip_coding_suffix("W/\"abc-zstd\""), "W/\"abc\"");
        assert_eq!(strip_coding_suffix("\"abc\""), "\"abc\"");
    }

    #[test]
    fn vary_is_merged_not_duplicated() {
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
        vary_on_accept_encoding(&mut headers);
        vary_on_accept_encoding(&mut headers);
        let vary: Vec<_> = headers.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept-Language", "Accept-Encoding"]);
    }
}
