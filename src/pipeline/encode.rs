//! The representation a client gets (RFC 9110 §12.5.3), chosen after the cache has found or
//! fetched a response:
//! - a hit whose client wants an encoding gets the stored encoded variant, made once from
//!   the stored body by a coalesced fill and kept beside it (later hits do no compression);
//! - a fill's body on its way from the origin is encoded once per coding for every request
//!   of that fill asking for it, as it arrives, and kept beside the entry the fill stores
//!   (a cold burst of browsers costs one encoder run per coding, not one per client);
//! - other responses on their way from the origin are encoded on the fly, never stored
//!   encoded;
//! - a response the origin gzipped goes as it is to clients that accept gzip and is decoded
//!   for those that do not;
//! - a client that excludes identity and accepts nothing we have gets 406.
//!
//! What is compressible and how headers change is `transform::compress`'s business.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};

use http_body_util::BodyExt;

use super::{respond, Proxy};
use crate::body::Body;
use crate::cache::entry::{Derivation, EntryMeta, StoredResponse};
use crate::cache::fill::{
    Admitted, Fill, FillKey, FillReader, FillStatus, FillTarget, FillWriter, Role,
};
use crate::cache::memory::VariantSet;
use crate::error::ProxyError;
use crate::transform::compress::{self, AcceptEncoding, Choice, Coding, EncoderPermit};

/// Serves a stored entry the origin did not encode in the representation the client
/// accepts (an entry with its own Content-Encoding goes through [`for_client`]). Also
/// returns the stored response whose body a GET is sent whole (the entry or a stored
/// encoding of it), when it is (`prepared` keeps only such answers). `set`: the entry's
/// stored variants as the lookup found them; without it (an entry a fill just stored) the
/// memory tier is asked for a stored encoding.
pub(super) async fn serve_stored(
    proxy: &Arc<Proxy>,
    set: Option<&VariantSet>,
    entry: &Arc<StoredResponse>,
    parts: &http::request::Parts,
    now: SystemTime,
) -> (Response<Body>, Option<Arc<StoredResponse>>) {
    let sent_whole =
        |entry: &Arc<StoredResponse>| (parts.method == Method::GET).then(|| Arc::clone(entry));
    let compression = &proxy.compression;
    let meta = &entry.meta;
    if !compression.is_stored_compressible(&entry.compressible, meta.status, &meta.headers) {
        // What `for_client` would conclude too, without asking again.
        return (
            respond::from_entry(proxy, entry, parts, now),
            sent_whole(entry),
        );
    }
    let identity = || {
        let mut response = respond::from_entry(proxy, entry, parts, now);
        compress::vary_on_accept_encoding(response.headers_mut());
        (response, sent_whole(entry))
    };
    if compress::has_no_transform(&parts.headers) {
        return identity();
    }
    let accept = AcceptEncoding::parse(&parts.headers);
    let coding = match accept.choose(&compression.preference) {
        Choice::Identity => return identity(),
        Choice::NotAcceptable => return (respond::not_acceptable(), None),
        Choice::Encode(coding) => coding,
    };
    let stored_encoding = match set {
        Some(set) => set.select_encoded(entry, coding).cloned(),
        None => proxy.cache.stored_encoding(entry, coding),
    };
    if let Some(encoded) = stored_encoding {
        let body = if parts.method == Method::HEAD {
            Body::empty()
        } else {
            respond::stored_body(proxy, &encoded)
        };
        let response = respond::from_meta(proxy, meta, body, parts, now);
        let response = encoded_response(response, coding, Some(encoded.meta.body_len));
        // Moved, not cloned: one reference per encoded hit.
        return (response, (parts.method == Method::GET).then_some(encoded));
    }
    if parts.method == Method::HEAD {
        let response = respond::from_entry(proxy, entry, parts, now);
        return (encoded_response(response, coding, None), None);
    }
    // Not sent whole from the set looked at: the choice below changes with the encoding's
    // fill (its hit-for-miss marker expires), not only with the set.
    let response = match encoded_once(proxy, entry, coding, !accept.excludes_identity()).await {
        // Its encoding failed, or was too large to keep, and the client excludes identity
        // (RFC 9110 §12.5.3): encoded on its way, unstored, an encoder run per request.
        None if accept.excludes_identity() => {
            match compression.reserve_encoder(coding, Some(meta.body_len), false) {
                Some(permit) => {
                    let body = respond::stored_body(proxy, entry);
                    let response = respond::from_meta(proxy, meta, body, parts, now);
                    encoded_on_its_way(compression, response, coding, permit)
                }
                // invariant: an encoder for a client that excludes identity is never refused.
                None => respond::not_acceptable(),
            }
        }
        // Its encoding failed, or was too large to keep: the identity representation is
        // acceptable to this client, and costs no encoder run per request.
        None => identity().0,
        Some(encoded) => encoded.answer(proxy, meta, coding, parts, now),
    };
    (response, None)
}

/// A stored body in `coding`, as the coalesced fill that makes it has it.
enum Encoded {
    Stored(Arc<StoredResponse>),
    Streaming(FillReader),
}

impl Encoded {
    /// The response to `parts` for the resource `meta` describes, with this body in
    /// `coding`.
    fn answer(
        self,
        proxy: &Proxy,
        meta: &EntryMeta,
        coding: Coding,
        parts: &http::request::Parts,
        now: SystemTime,
    ) -> Response<Body> {
        let (body, length) = match self {
            Encoded::Stored(encoded) => (
                respond::stored_body(proxy, &encoded),
                Some(encoded.meta.body_len),
            ),
            Encoded::Streaming(reader) => (Body::boxed(reader), None),
        };
        let response = respond::from_meta(proxy, meta, body, parts, now);
        encoded_response(response, coding, length)
    }
}

/// Joins (or leads) the one fill that encodes `entry` for everyone asking for `coding` now,
/// and keeps the result; `None` when the encoding failed, is known too large to keep, or
/// (when the client takes identity, `identity_acceptable`) running encoders hold their
/// memory budget.
async fn encoded_once(
    proxy: &Arc<Proxy>,
    entry: &Arc<StoredResponse>,
    coding: Coding,
    identity_acceptable: bool,
) -> Option<Encoded> {
    let fill_key = FillKey {
        key: entry.meta.key,
        variant_hint: entry.meta.variant.derived(coding.as_str()),
    };
    let marker = fill_key.key.for_variant(fill_key.variant_hint);
    if proxy.cache.is_hit_for_miss(&marker).await {
        return None;
    }
    let (role, fill, reader) = proxy.cache.coalescer().join(fill_key);
    if matches!(role, Role::Leader { .. }) {
        // An encoding that settled between the caller's look and joining needs no new run.
        if let Some(encoded) = proxy.cache.stored_encoding(entry, coding) {
            fill.settle_with(Arc::clone(&encoded), false);
            proxy.cache.coalescer().leave(&fill_key, &fill);
            return Some(Encoded::Stored(encoded));
        }
        // Encoders running now hold their budget: this request and those that joined it
        // get the identity representation; a later one tries again.
        let Some(permit) = proxy.compression.reserve_encoder(
            coding,
            Some(entry.meta.body_len),
            identity_acceptable,
        ) else {
            give_up(
                proxy,
                &fill_key,
                &fill,
                "compression.encoder_memory_budget is held",
            );
            return None;
        };
        let run = EncodingRun::new(proxy, coding, permit, (&fill, fill_key));
        let source = EncodingSource::Stored(Arc::clone(entry));
        let meta = Arc::new(entry.meta.clone());
        proxy.cache.spawn_fill(encode_and_store(run, meta, source));
    }
    joined(&fill, reader).await
}

/// What an encoding fill's task runs with, beside its source: the leader's encoder permit
/// for `coding`, and the fill it feeds, registered under `fill_key`.
struct EncodingRun {
    proxy: Arc<Proxy>,
    coding: Coding,
    permit: EncoderPermit,
    fill: Arc<Fill>,
    fill_key: FillKey,
}

impl EncodingRun {
    fn new(
        proxy: &Arc<Proxy>,
        coding: Coding,
        permit: EncoderPermit,
        (fill, fill_key): (&Arc<Fill>, FillKey),
    ) -> EncodingRun {
        EncodingRun {
            proxy: Arc::clone(proxy),
            coding,
            permit,
            fill: Arc::clone(fill),
            fill_key,
        }
    }
}

/// What a request that joined (or leads) the encoding `fill` is sent, once it has a head:
/// `None` when it was given up or failed before.
async fn joined(fill: &Fill, reader: FillReader) -> Option<Encoded> {
    match fill.wait_status().await {
        FillStatus::Streaming { .. } => Some(Encoded::Streaming(reader)),
        FillStatus::Complete { entry, .. } => Some(Encoded::Stored(entry)),
        _ => None,
    }
}

/// Settles the encoding `fill` its leader will not run, `why`: the requests that joined
/// it go their own way, and later ones start afresh.
fn give_up(proxy: &Proxy, fill_key: &FillKey, fill: &Arc<Fill>, why: &str) {
    fill.refuse(ProxyError::Internal(why.into()));
    proxy.cache.coalescer().leave(fill_key, fill);
}

/// Where an encoding's body comes from, and how its source's digest (which the stored
/// encoding names) becomes known.
enum EncodingSource {
    /// A stored body.
    Stored(Arc<StoredResponse>),
    /// A fill's body as it arrives, read by the reader: the digest is known once the fill
    /// has stored it, after its last byte.
    Streaming(Arc<Fill>, FillReader),
}

/// The fill task that encodes `source` (described by `meta`) and stores the result beside
/// it; an encoding of a fill that did not store its body only streams to its readers. An
/// encoding too large to keep is streamed to its readers once and remembered
/// (hit-for-miss), so later requests get the identity representation instead of an
/// encoder run each.
async fn encode_and_store(run: EncodingRun, meta: Arc<EntryMeta>, source: EncodingSource) {
    let EncodingRun {
        proxy,
        coding,
        permit,
        fill,
        fill_key,
    } = run;
    let cache = &proxy.cache;
    // However the encoding ends, later requests start afresh.
    let _leave = scopeguard::guard((), |()| cache.coalescer().leave(&fill_key, &fill));
    let source_digest = Arc::new(std::sync::OnceLock::new());
    let variant = meta.variant.derived(coding.as_str());
    let finalise = {
        let source_digest = Arc::clone(&source_digest);
        move |meta: &mut EntryMeta, len: u64| {
            meta.variant = variant;
            compress::encoded_headers(&mut meta.headers, coding, Some(len));
            meta.derivation = source_digest.get().map(|&source_digest| Derivation {
                coding,
                source_digest,
            });
        }
    };
    let mut writer = cache
        .begin_fill(
            &fill,
            (*meta).clone(),
            FillTarget::Derived(Box::new(finalise)),
        )
        .await;
    let (body, source_fill) = match source {
        EncodingSource::Stored(stored) => {
            let _ = source_digest.set(stored.meta.body_digest);
            (respond::stored_body(&proxy, &stored), None)
        }
        EncodingSource::Streaming(source, reader) => {
            let read = Arc::new(AtomicU64::new(0));
            writer.counts_source(Arc::clone(&read));
            let counted = reader.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    read.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                frame
            });
            (Body::boxed(counted), Some(source))
        }
    };
    let encoded = proxy.compression.encode_reserved(body, coding, permit);
    let Some(writer) = encode_into(writer, encoded, &meta.url, coding).await else {
        return;
    };
    if let Some(source) = source_fill {
        match source.wait_settled().await {
            FillStatus::Complete { entry, .. } => {
                let _ = source_digest.set(entry.meta.body_digest);
            }
            _ => return writer.end_unstored(),
        }
    }
    // Too large to keep: later requests do not try to make it again for a while. Refused
    // room only for now (the fills' budget was taken), the next request tries again.
    if let Admitted::TooLarge = writer.finish().await {
        cache
            .remember_uncacheable(meta.key.for_variant(variant))
            .await;
    }
}

/// Feeds `writer` the whole of `encoded`; `None` when that failed (the fill is failed for
/// its readers) or nobody reads any longer.
async fn encode_into<'c>(
    mut writer: FillWriter<'c>,
    mut encoded: Body,
    url: &str,
    coding: Coding,
) -> Option<FillWriter<'c>> {
    loop {
        match encoded.frame().await {
            None => return Some(writer),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                writer.write(data).await.ok()?;
            }
            Some(Err(error)) => {
                // The body being encoded broke off (a fill's origin failed mid-body), or
                // the encoder did.
                tracing::warn!(%url, coding = coding.as_str(), %error, "encoding stopped");
                writer
                    .fail(ProxyError::Internal("encoding failed".into()))
                    .await;
                return None;
            }
        }
    }
}

/// A fill's body on its way from the origin, in the representation the request `parts`
/// accepts. When that is an encoding, one encoder run makes it for every request of this
/// fill asking for that coding now, from the body as it arrives, and it is stored beside
/// the entry the fill stores: 200 browsers in a cold burst cost one run per coding, not
/// 200. Otherwise (the client takes the body as it is; no encoding is worth sharing; the
/// fill has moved on) as [`for_client`].
///
/// # Errors
/// As [`for_client`].
pub(super) async fn streaming(
    proxy: &Arc<Proxy>,
    (meta, reader, fill): (&Arc<EntryMeta>, FillReader, &Arc<Fill>),
    parts: &http::request::Parts,
    now: SystemTime,
) -> Result<Response<Body>, ProxyError> {
    let shared = match shared_coding(proxy, meta, parts) {
        Some((coding, identity_acceptable)) => {
            encoded_from_fill(proxy, meta, fill, coding, identity_acceptable)
                .await
                .map(|encoded| (coding, encoded))
        }
        None => None,
    };
    let Some((coding, encoded)) = shared else {
        let response = respond::from_meta(proxy, meta, Body::boxed(reader), parts, now);
        return for_client(proxy, response, parts).await;
    };
    // This request's own reader of the fill is not needed: it reads the encoding.
    drop(reader);
    Ok(encoded.answer(proxy, meta, coding, parts, now))
}

/// The coding a fill's body streaming as `meta` describes is to be encoded in for
/// `parts`, once for all its requests, and whether the client also takes identity: for a
/// GET that accepts an encoding of a compressible body the origin did not encode, whose
/// declared length keeps the encoding in memory as it is made (a slower client then
/// holds back nobody), or whose length is not declared while the fills' budget has room.
fn shared_coding(
    proxy: &Proxy,
    meta: &EntryMeta,
    parts: &http::request::Parts,
) -> Option<(Coding, bool)> {
    let compression = &proxy.compression;
    if parts.method != Method::GET
        || meta.headers.contains_key(header::CONTENT_ENCODING)
        || !compression.is_compressible(meta.status, &meta.headers)
        || compress::has_no_transform(&parts.headers)
    {
        return None;
    }
    // A body of unknown length (chunked) is kept as it is encoded while the fills' budget
    // has room now; past the memory tier's object size its encoding streams on unstored.
    let length = crate::cache::entry::content_length(&meta.headers).unwrap_or(0);
    if !proxy.cache.would_keep_derived(length) {
        return None;
    }
    let accept = AcceptEncoding::parse(&parts.headers);
    match accept.choose(&compression.preference) {
        Choice::Encode(coding) => Some((coding, !accept.excludes_identity())),
        Choice::Identity | Choice::NotAcceptable => None,
    }
}

/// Joins (or leads) the one encoding of `source`'s body in `coding` for the requests of
/// that fill; `None` when there is none to join (running encoders hold their budget, or
/// the fill takes no new reader). A fill that has already handed its body to the stored
/// entry gives that entry's encoding, as hits share it.
async fn encoded_from_fill(
    proxy: &Arc<Proxy>,
    meta: &Arc<EntryMeta>,
    source: &Arc<Fill>,
    coding: Coding,
    identity_acceptable: bool,
) -> Option<Encoded> {
    // Keyed by the fill, not by the variant alone: a request holding this fill's head must
    // get this fill's body, never another response's stored under the same key.
    let transform = format!("{}\0fill {}", coding.as_str(), source.id());
    let fill_key = FillKey {
        key: meta.key,
        variant_hint: meta.variant.derived(&transform),
    };
    let (role, fill, reader) = proxy.cache.coalescer().join(fill_key);
    if matches!(role, Role::Leader { .. }) {
        let refuse = || give_up(proxy, &fill_key, &fill, "no encoding of this body is made");
        let Some(source_reader) = source.reader() else {
            refuse();
            // The fill has handed its body to the entry it stored (it arrived whole while
            // this request was on its way here): that entry's encoding, as hits share it.
            // Otherwise it streams through (or to a disk file) and takes no new reader:
            // this request encodes its own, reading on as it does.
            return match source.status_now() {
                FillStatus::Complete { entry, .. } => {
                    encoded_once(proxy, &entry, coding, identity_acceptable).await
                }
                _ => None,
            };
        };
        let length = crate::cache::entry::content_length(&meta.headers);
        let Some(permit) = proxy
            .compression
            .reserve_encoder(coding, length, identity_acceptable)
        else {
            refuse();
            return None;
        };
        let run = EncodingRun::new(proxy, coding, permit, (&fill, fill_key));
        let source = EncodingSource::Streaming(Arc::clone(source), source_reader);
        proxy
            .cache
            .spawn_fill(encode_and_store(run, Arc::clone(meta), source));
    }
    joined(&fill, reader).await
}

/// A response on its way from the origin (or a stored one that is not compressible), in the
/// representation the client accepts: encoded on the fly, decoded from the origin's gzip,
/// or as it is.
///
/// # Errors
/// [`ProxyError::UpstreamProtocol`] when the origin's gzip fails to decode at its start.
pub(super) async fn for_client(
    proxy: &Proxy,
    response: Response<Body>,
    parts: &http::request::Parts,
) -> Result<Response<Body>, ProxyError> {
    let compression = &proxy.compression;
    let accept = AcceptEncoding::parse(&parts.headers);
    if let Some(coding) = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        let is_gzip = matches!(
            coding.trim().to_ascii_lowercase().as_str(),
            "gzip" | "x-gzip"
        );
        if !is_gzip
            || accept.accepts(coding)
            || parts.method == Method::HEAD
            || compress::has_no_transform(response.headers())
        {
            return Ok(response);
        }
        return gunzipped(response).await;
    }
    if parts.method == Method::HEAD
        || !compression.is_compressible(response.status(), response.headers())
    {
        return Ok(response);
    }
    if compress::has_no_transform(&parts.headers) {
        // RFC 9111 §5.2.1.6: the client asks intermediaries not to transform the content;
        // an encoding outpost would add is one (RFC 9110 §7.7). Decoding the origin's own
        // gzip for a client that cannot take it (above) is still done: it has no choice.
        let mut response = response;
        compress::vary_on_accept_encoding(response.headers_mut());
        return Ok(response);
    }
    Ok(match accept.choose(&compression.preference) {
        Choice::Identity => {
            let mut response = response;
            compress::vary_on_accept_encoding(response.headers_mut());
            response
        }
        Choice::NotAcceptable => respond::not_acceptable(),
        Choice::Encode(coding) => {
            let length = http_body::Body::size_hint(response.body()).upper();
            let identity_acceptable = !accept.excludes_identity();
            let Some(permit) = compression.reserve_encoder(coding, length, identity_acceptable)
            else {
                // Running encoders hold their budget: as it is, which this client accepts.
                let mut response = response;
                compress::vary_on_accept_encoding(response.headers_mut());
                return Ok(response);
            };
            encoded_on_its_way(compression, response, coding, permit)
        }
    })
}

/// `response` with its body encoded in `coding` as it is sent, by the encoder `permit`
/// holds room for: unstored, with no length until sent.
fn encoded_on_its_way(
    compression: &compress::Compression,
    response: Response<Body>,
    coding: Coding,
    permit: EncoderPermit,
) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let body = compression.encode_reserved(body, coding, permit);
    encoded_response(Response::from_parts(parts, body), coding, None)
}

/// The origin's gzip decoded for a client that does not accept it (Varnish's gunzip): the
/// decoded representation has its own (weak) validator and no length until sent. Its
/// first decoded bytes are read before the head goes: gzip that is corrupt from the start
/// is a 502 that says so, not a connection cut with nothing sent.
async fn gunzipped(response: Response<Body>) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::ACCEPT_RANGES);
    compress::vary_on_accept_encoding(&mut parts.headers);
    if let Some(etag) = parts
        .headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
    {
        if !etag.starts_with("W/") {
            if let Ok(weak) = HeaderValue::from_str(&format!("W/{etag}")) {
                parts.headers.insert(header::ETAG, weak);
            }
        }
    }
    let mut decoded = compress::decode_gzip(body);
    let first = match decoded.frame().await {
        None => return Ok(Response::from_parts(parts, Body::empty())),
        Some(Err(err)) => {
            return Err(ProxyError::UpstreamProtocol {
                origin: "(the response's gzip coding)".to_string(),
                detail: format!("gzip content does not decode: {err}"),
            })
        }
        Some(Ok(frame)) => frame,
    };
    // The decoder yields data frames only.
    let body = match first.into_data() {
        Ok(data) => Body::chain(vec![Body::full(data), decoded]),
        Err(_) => decoded,
    };
    Ok(Response::from_parts(parts, body))
}

/// Rewrites the fields of a response whose body is (or would be) `coding`-encoded; a 304
/// keeps its empty body and only gets the encoded validator and Vary.
fn encoded_response(
    mut response: Response<Body>,
    coding: Coding,
    length: Option<u64>,
) -> Response<Body> {
    if response.status() == StatusCode::NOT_MODIFIED {
        let headers = response.headers_mut();
        let etag = headers.get(header::ETAG).cloned();
        compress::encoded_headers(headers, coding, None);
        headers.remove(header::CONTENT_ENCODING);
        if etag.is_none() {
            headers.remove(header::ETAG);
        }
        return response;
    }
    compress::encoded_headers(response.headers_mut(), coding, length);
    response
}
