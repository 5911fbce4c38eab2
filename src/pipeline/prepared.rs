//! Prepared hits: the response head the pipeline made for a plain memory hit, kept beside
//! the stored variant set it came from, so the same request asked again on a cleartext
//! HTTP/1.1 connection is answered without the pipeline or hyper: the head goes out as the
//! bytes it was, with `Age` and `Cache-Status` written for the moment of the new request
//! (issue 17: header blocks prepared once, no per-hit copy of stored headers).
//! `server::prepared_http1` reads those requests and writes the answers.
//!
//! # Why a prepared hit is the pipeline's answer
//! - Its request has the same target and the same fields, byte for byte, as the one the
//!   pipeline answered, and only requests whose fields are all in [`SHAPE_FIELDS`] are
//!   prepared: fields that cannot change a fresh hit except through the variant, which is
//!   covered because they are part of the shape. Conditionals, Cache-Control, Range,
//!   cookies, credentials, forwarding fields, Upgrade and any request body go through the
//!   pipeline every time.
//! - It is used only while the memory tier still holds the very variant set it was made
//!   from. A set is never changed in place: every store, purge, soft purge and eviction
//!   replaces or removes it, so the same set means the same entry, encoding and body; the
//!   set replaced or removed is marked retired before that call returns, which is what a
//!   prepared hit checks (`MemoryTier::holds`), with no lookup in moka.
//! - It is used only while that entry is fresh; `Age` and the Cache-Status `ttl` are
//!   computed for now with the functions the pipeline uses.
//! - It belongs to one [`super::Proxy`]: a reload starts with none. A proxy that shows the
//!   path view to some peers without being asked (`debug.always`) prepares none, as the
//!   head would then depend on who asks.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::StatusCode;
use parking_lot::RwLock;

use super::ctx::Exchange;
use super::route::Site;
use super::{respond, Proxy, RequestCtx};
use crate::body::Body;
use crate::cache::entry::StoredResponse;
use crate::cache::key::{PrimaryKey, VariantKey};
use crate::cache::memory::VariantSet;
use crate::cache::policy::{self, Reuse};
use crate::telemetry::cache_status::{CacheStatus, CACHE_STATUS};
use crate::telemetry::Tier;

/// The request fields a prepared hit's request may carry (each at most once). None of them
/// changes what a fresh hit is or how it is sent, other than by choosing the variant
/// (Vary) and the representation (Accept-Encoding), which the shape pins down. Browsers'
/// other fields (cookies, `Cache-Control` on reload, `Sec-Fetch-*`) keep a request on the
/// full pipeline.
pub const SHAPE_FIELDS: [&str; 7] = [
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "referer",
    "connection",
];

/// Index of `connection` in [`SHAPE_FIELDS`]. It may only say `keep-alive` or `close`,
/// and is not part of the shape: both are hop-by-hop, removed before the pipeline judges
/// the request, and only decide whether the connection stays open after the answer.
const CONNECTION_FIELD: usize = 6;

/// What identifies a prepared request: its target and its fields, in one byte string.
/// Written the same way from a raw head and from hyper's parsed request, so the two match
/// exactly when the requests do.
#[derive(Default)]
pub struct Shape {
    bytes: Vec<u8>,
    /// The request last read said `Connection: close`.
    closes: bool,
}

impl Shape {
    /// The shape of a `GET target HTTP/1.1` request with `fields` (in any order), or
    /// `None` when it may not be prepared. Reuses this shape's buffer.
    pub fn read<'a>(
        &mut self,
        target: &[u8],
        fields: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> Option<&[u8]> {
        if !target.starts_with(b"/") {
            return None;
        }
        let mut values: [Option<&[u8]>; SHAPE_FIELDS.len()] = [None; SHAPE_FIELDS.len()];
        for (name, value) in fields {
            let index = SHAPE_FIELDS
                .iter()
                .position(|known| known.eq_ignore_ascii_case(name))?;
            if values[index].replace(value).is_some() {
                return None;
            }
        }
        self.closes = match values[CONNECTION_FIELD].take() {
            None => false,
            Some(value) if value.eq_ignore_ascii_case(b"keep-alive") => false,
            Some(value) if value.eq_ignore_ascii_case(b"close") => true,
            Some(_) => return None,
        };
        self.bytes.clear();
        self.bytes.extend_from_slice(target);
        for (index, value) in values.iter().enumerate() {
            let Some(value) = value else { continue };
            // Index and length first: no value can run into the next.
            self.bytes.push(index as u8);
            self.bytes
                .extend_from_slice(&u32::try_from(value.len()).ok()?.to_le_bytes());
            self.bytes.extend_from_slice(value);
        }
        Some(&self.bytes)
    }

    /// The shape last read.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the request last read asked for the connection to close after its answer.
    pub fn closes(&self) -> bool {
        self.closes
    }

    /// The shape of a request hyper parsed, when it may be prepared.
    pub fn of_request<B>(request: &http::Request<B>) -> Option<Vec<u8>> {
        if request.method() != http::Method::GET || request.version() != http::Version::HTTP_11 {
            return None;
        }
        let target = request.uri().path_and_query()?.as_str();
        let fields = request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()));
        let mut shape = Shape::default();
        shape.read(target.as_bytes(), fields)?;
        Some(shape.bytes)
    }
}

/// One prepared answer.
struct PreparedHit {
    shape: Box<[u8]>,
    set: Weak<VariantSet>,
    entry: Weak<StoredResponse>,
    body_of: Weak<StoredResponse>,
    /// Status line and fields, without `Age`, this cache's Cache-Status member and the
    /// blank line.
    head: Bytes,
    /// The stored response had no Date: one is added for each answer (as hyper does).
    adds_date: bool,
    key: PrimaryKey,
    variant: VariantKey,
    host: Arc<str>,
    site: Arc<Site>,
    status: u16,
}

impl PreparedHit {
    /// Bytes it holds, counting the allocations its weak references keep after the
    /// entries themselves are gone.
    fn weight(&self) -> usize {
        self.shape.len()
            + self.head.len()
            + self.host.len()
            + std::mem::size_of::<Self>()
            + 2 * std::mem::size_of::<StoredResponse>()
            + std::mem::size_of::<VariantSet>()
    }
}

/// An answer ready to write: `head` then `tail` then `body`.
pub struct ReadyHit {
    pub head: Bytes,
    /// `Age`, Cache-Status (and Date when the stored response had none), the blank line.
    pub tail: Bytes,
    pub body: Body,
    pub record: HitRecord,
}

/// What the access log and metrics need of an answered prepared hit.
pub struct HitRecord {
    hit: Arc<PreparedHit>,
    status: CacheStatus,
    now: SystemTime,
}

/// u64 keys that are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type ByShape = HashMap<u64, Arc<PreparedHit>, BuildHasherDefault<Prehashed>>;

/// Two generations: answers used since the current one began are moved into it, and when
/// it is full the previous one is dropped whole. A bounded, lock-light approximation of
/// least-recently-used.
#[derive(Default)]
struct Generations {
    current: ByShape,
    current_bytes: usize,
    previous: ByShape,
}

/// The prepared answers of one proxy.
pub struct PreparedHits {
    generations: RwLock<Generations>,
    /// Bytes one generation may hold (so at most twice this in all).
    generation_bytes: usize,
    is_on: bool,
}

/// The hash a shape is filed under.
fn shape_hash(shape: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(shape)
}

impl PreparedHits {
    /// `memory_capacity`: the memory tier's, which the answers' heads are counted against
    /// (1/128 of it, at most 4 MiB in all); `is_on`: `server.prepared_hits`.
    pub fn new(memory_capacity: u64, is_on: bool) -> PreparedHits {
        let total = (memory_capacity / 128).min(4 << 20);
        PreparedHits {
            generations: RwLock::new(Generations::default()),
            generation_bytes: usize::try_from(total / 2).unwrap_or(usize::MAX),
            is_on: is_on && total > 0,
        }
    }

    pub fn is_on(&self) -> bool {
        self.is_on
    }

    fn find(&self, shape: &[u8]) -> Option<Arc<PreparedHit>> {
        let hash = shape_hash(shape);
        let generations = self.generations.read();
        if let Some(hit) = generations.current.get(&hash) {
            return (*hit.shape == *shape).then(|| Arc::clone(hit));
        }
        let hit = generations.previous.get(&hash)?;
        if *hit.shape != *shape {
            return None;
        }
        let hit = Arc::clone(hit);
        drop(generations);
        self.file(hash, Arc::clone(&hit));
        Some(hit)
    }

    /// Whether the current generation has the answer to `shape` made from `set`.
    fn is_prepared(&self, shape: &[u8], set: &Arc<VariantSet>) -> bool {
        let generations = self.generations.read();
        generations
            .current
            .get(&shape_hash(shape))
            .is_some_and(|hit| {
                *hit.shape == *shape && std::ptr::eq(hit.set.as_ptr(), Arc::as_ptr(set))
            })
    }

    fn file(&self, hash: u64, hit: Arc<PreparedHit>) {
        let weight = hit.weight();
        let mut generations = self.generations.write();
        if generations.current_bytes + weight > self.generation_bytes {
            generations.previous = std::mem::take(&mut generations.current);
            generations.current_bytes = 0;
        }
        generations.current_bytes += weight;
        if let Some(replaced) = generations.current.insert(hash, hit) {
            generations.current_bytes -= replaced.weight();
        }
    }

    /// The answer to the request of `shape` at `now`, if a prepared one is still what the
    /// pipeline would send. The memory tier counts the request, as a lookup would.
    pub async fn answer(&self, proxy: &Proxy, shape: &Shape, now: SystemTime) -> Option<ReadyHit> {
        let hit = self.find(shape.bytes())?;
        let set = hit.set.upgrade()?;
        if !proxy.cache.memory_holds(&hit.key, &set) {
            return None;
        }
        let entry = hit.entry.upgrade()?;
        let body_of = hit.body_of.upgrade()?;
        let freshness = &entry.meta.freshness;
        if policy::evaluate_reuse(freshness, &policy::Directives::default(), now) != Reuse::Fresh {
            return None;
        }
        let status = CacheStatus::hit(freshness.ttl_seconds(now));
        let mut tail = BytesMut::with_capacity(128);
        let mut digits = itoa::Buffer::new();
        tail.put_slice(b"age: ");
        tail.put_slice(
            digits
                .format(freshness.current_age(now).as_secs())
                .as_bytes(),
        );
        tail.put_slice(b"\r\ncache-status: ");
        tail.put_slice(status.to_header_value(&proxy.proxy_name).as_bytes());
        tail.put_slice(b"\r\n");
        if hit.adds_date {
            tail.put_slice(b"date: ");
            tail.put_slice(httpdate::fmt_http_date(now).as_bytes());
            tail.put_slice(b"\r\n");
        }
        if shape.closes() {
            // As hyper answers a request that asks to close (RFC 9112 §9.6).
            tail.put_slice(b"connection: close\r\n");
        }
        tail.put_slice(b"\r\n");
        // A body read from its disk file is read into before the head is committed: if it
        // turns out lost, the pipeline answers instead, and it fetches the object again.
        let body = respond::stored_body(proxy, &body_of)
            .with_first_piece_read()
            .await
            .ok()?;
        Some(ReadyHit {
            head: hit.head.clone(),
            tail: tail.freeze(),
            body,
            record: HitRecord { hit, status, now },
        })
    }

    /// Prepares the answer the pipeline just made (`head`, with `ctx`) to the request of
    /// `shape`, when it was a plain memory hit sent whole and nothing about it depends on
    /// the moment or the peer beyond what an answer recomputes.
    pub fn remember(
        &self,
        proxy: &Proxy,
        shape: Vec<u8>,
        head: &http::response::Parts,
        ctx: &RequestCtx,
    ) {
        if !self.is_on || proxy.debug.always {
            return;
        }
        let Some(source) = &ctx.hit_source else {
            return;
        };
        let (Some(body_of), Some(site)) = (&source.body_of, &ctx.site) else {
            return;
        };
        // Exactly what an answer writes: a fresh hit and nothing else to say.
        let is_plain_hit = ctx.status.ttl.is_some_and(|ttl| ttl > 0)
            && ctx.status == CacheStatus::hit(ctx.status.ttl.unwrap_or_default())
            && ctx.hit_tier == Tier::Memory;
        if !is_plain_hit || !sends_whole(&head.headers, body_of.meta.body_len) {
            return;
        }
        if self.is_prepared(&shape, &source.set) {
            // Asked again on a connection hyper serves: nothing to make anew.
            return;
        }
        let hit = PreparedHit {
            shape: shape.into_boxed_slice(),
            set: Arc::downgrade(&source.set),
            entry: Arc::downgrade(&source.entry),
            body_of: Arc::downgrade(body_of),
            head: head_bytes(head.status, &head.headers),
            adds_date: !head.headers.contains_key(header::DATE),
            key: source.entry.meta.key,
            variant: source.entry.meta.variant,
            host: Arc::from(ctx.host.as_str()),
            site: Arc::clone(site),
            status: head.status.as_u16(),
        };
        self.file(shape_hash(&hit.shape), Arc::new(hit));
    }
}

/// Whether a response with `headers` is framed by a Content-Length of `len` and carries
/// nothing only one client may see (the path view).
fn sends_whole(headers: &HeaderMap, len: u64) -> bool {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let is_len = lengths
        .next()
        .is_some_and(|value| value.as_bytes() == itoa::Buffer::new().format(len).as_bytes());
    is_len
        && lengths.next().is_none()
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && !headers.contains_key("outpost-path")
}

/// The status line and fields as hyper writes them, less `Age` (written per answer) and
/// the last Cache-Status member (ours, written per answer).
fn head_bytes(status: StatusCode, headers: &HeaderMap) -> Bytes {
    let mut head = BytesMut::with_capacity(512);
    head.put_slice(b"HTTP/1.1 ");
    head.put_slice(status.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    head.put_slice(b"\r\n");
    let mut cache_status_left = headers.get_all(CACHE_STATUS).iter().count();
    for (name, value) in headers {
        if name == header::AGE {
            continue;
        }
        if name == CACHE_STATUS {
            cache_status_left -= 1;
            if cache_status_left == 0 {
                continue;
            }
        }
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    head.freeze()
}

impl HitRecord {
    /// Records the answer as the pipeline records a request: metrics, the status board,
    /// the mirror's counts and the access-log line (`agent`: the request's Referer and
    /// User-Agent, for the combined format).
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &self,
        proxy: &Proxy,
        peer: std::net::SocketAddr,
        target: &str,
        agent: (Option<&str>, Option<&str>),
        started: Instant,
        bytes: u64,
        complete: bool,
    ) {
        let hit = &self.hit;
        proxy.metrics.prepared_hits.inc();
        if let Some(mirror) = &proxy.mirror {
            mirror.count(target.split('?').next().unwrap_or(target), true);
        }
        let Some(log) = &proxy.access_log else {
            // Without a log line to write, what the context would record is counted directly.
            let exchange = Exchange {
                outcome: self.status.outcome(),
                method: &http::Method::GET,
                tier: Tier::Memory,
                key: Some(hit.key),
                bytes,
            };
            exchange.count(&proxy.metrics, || format!("http://{}{target}", hit.host));
            return;
        };
        let agent_field = |field: Option<&str>| {
            field
                .filter(|_| log.wants_agent_fields())
                .map(str::to_string)
        };
        let ctx = RequestCtx {
            started,
            now: self.now,
            peer,
            client: peer.ip(),
            method: http::Method::GET,
            version: http::Version::HTTP_11,
            host: hit.host.to_string(),
            uri: http::Uri::try_from(target).unwrap_or_default(),
            site: Some(Arc::clone(&hit.site)),
            key: Some(hit.key),
            variant: Some(hit.variant),
            status: self.status.clone(),
            hit_tier: Tier::Memory,
            upstream_duration: None,
            error: None,
            response_status: hit.status,
            log: proxy.access_log.clone(),
            referer: agent_field(agent.0),
            user_agent: agent_field(agent.1),
            metrics: Arc::clone(&proxy.metrics),
            hsts: None,
            hit_source: None,
            own_fields: None,
            client_cert: None,
            forwards_range: false,
        };
        ctx.finish(bytes, complete);
    }
}
