//! The representation a client gets (RFC 9110 §12.5.3), chosen after the cache has found or
//! fetched a response:
//! - a hit whose client wants an encoding gets the stored encoded variant, made once from
//!   the stored body by a coalesced fill and kept beside it (later hits do no compression);
//! - responses on their way from the origin are encoded on the fly, never stored encoded;
//! - a response the origin gzipped goes as it is to clients that accept gzip and is decoded
//!   for those that do not;
//! - a client that excludes identity and accepts nothing we have gets 406.
//!
//! What is compressible and how headers change is `transform::compress`'s business.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};

use http_body_util::BodyExt;

use super::{respond, Proxy};
use crate::body::Body;
use crate::cache::entry::{Derivation, StoredResponse};
use crate::cache::fill::{Admitted, Fill, FillKey, FillStatus, FillTarget, Role};
use crate::cache::memory::VariantSet;
use crate::error::ProxyError;
use crate::transform::compress::{self, AcceptEncoding, Choice, Coding, EncoderPermit};

/// Serves a stored entry the origin did not encode in the representation the client
/// accepts (an entry with its own Content-Encoding goes through [`for_client`]). Also
/// returns the stored response whose body a GET is sent whole (the entry or a stored
/// encoding of it), when it is (`prepared` keeps only such answers).
pub(super) async fn serve_stored(
    proxy: &Arc<Proxy>,
    set: &VariantSet,
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
    if let Some(encoded) = set.select_encoded(entry, coding) {
        let body = if parts.method == Method::HEAD {
            Body::empty()
        } else {
            respond::stored_body(proxy, encoded)
        };
        let response = respond::from_meta(proxy, meta, body, parts, now);
        let response = encoded_response(response, coding, Some(encoded.meta.body_len));
        return (response, sent_whole(encoded));
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
        Some(Encoded::Stored(encoded)) => {
            let body = respond::stored_body(proxy, &encoded);
            let response = respond::from_meta(proxy, meta, body, parts, now);
            encoded_response(response, coding, Some(encoded.meta.body_len))
        }
        Some(Encoded::Streaming(reader)) => {
            let response = respond::from_meta(proxy, meta, Body::boxed(reader), parts, now);
            encoded_response(response, coding, None)
        }
    };
    (response, None)
}

/// A stored body in `coding`, as the coalesced fill that makes it has it.
enum Encoded {
    Stored(Arc<StoredResponse>),
    Streaming(crate::cache::fill::FillReader),
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
    if matches!(role, Role::Leader) {
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
            fill.refuse(ProxyError::Internal(
                "compression.encoder_memory_budget is held".into(),
            ));
            proxy.cache.coalescer().leave(&fill_key, &fill);
            return None;
        };
        let job = encode_and_store(
            Arc::clone(proxy),
            Arc::clone(entry),
            coding,
            permit,
            Arc::clone(&fill),
            fill_key,
        );
        proxy.cache.spawn_fill(job);
    }
    match fill.wait_status().await {
        FillStatus::Streaming { .. } => Some(Encoded::Streaming(reader)),
        FillStatus::Complete { entry, .. } => Some(Encoded::Stored(entry)),
        _ => None,
    }
}

/// The fill task that encodes a stored body and stores the result beside it. An encoding
/// too large to keep is streamed to its readers once and remembered (hit-for-miss), so later
/// requests get the identity representation instead of an encoder run each.
async fn encode_and_store(
    proxy: Arc<Proxy>,
    source: Arc<StoredResponse>,
    coding: Coding,
    permit: EncoderPermit,
    fill: Arc<Fill>,
    fill_key: FillKey,
) {
    let cache = &proxy.cache;
    // However the encoding ends, later requests start afresh.
    let _leave = scopeguard::guard((), |()| cache.coalescer().leave(&fill_key, &fill));
    let (variant, source_digest) = (
        source.meta.variant.derived(coding.as_str()),
        source.meta.body_digest,
    );
    let finalise = move |meta: &mut crate::cache::entry::EntryMeta, len: u64| {
        meta.variant = variant;
        compress::encoded_headers(&mut meta.headers, coding, Some(len));
        meta.derivation = Some(Derivation {
            coding,
            source_digest,
        });
    };
    let mut writer = cache
        .begin_fill(
            &fill,
            source.meta.clone(),
            FillTarget::Derived(Box::new(finalise)),
        )
        .await;
    let mut encoded =
        proxy
            .compression
            .encode_reserved(respond::stored_body(&proxy, &source), coding, permit);
    loop {
        match encoded.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if writer.write(data).await.is_err() {
                    return;
                }
            }
            Some(Err(error)) => {
                tracing::warn!(url = %source.meta.url, coding = coding.as_str(), %error, "encoding a stored body failed");
                writer
                    .fail(crate::error::ProxyError::Internal("encoding failed".into()))
                    .await;
                return;
            }
        }
    }
    // Too large to keep: later requests do not try to make it again for a while. Refused
    // room only for now (the fills' budget was taken), the next request tries again.
    if let Admitted::TooLarge = writer.finish().await {
        cache
            .remember_uncacheable(fill_key.key.for_variant(fill_key.variant_hint))
            .await;
    }
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
