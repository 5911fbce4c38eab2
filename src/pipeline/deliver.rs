//! The delivery phase: every earlier phase ends in a [`Delivery`] (what is to be sent), and
//! [`deliver`] alone turns it into the client's response, applying, exactly once:
//! the client's own conditionals (RFC 9111 §4.3.2), Range (RFC 9110 §14), the
//! representation it accepts (encoding, RFC 9110 §12.5.3), `Age` (RFC 9111 §5.1) and our
//! `Via` (RFC 9110 §7.6.3). `Cache-Status` is added by `handle`, which also covers errors.

use std::sync::Arc;

use http::Response;

use super::{encode, forwarding, range, respond, Proxy, RequestCtx};
use crate::body::Body;
use crate::cache::disk::LostStoredBody;
use crate::cache::entry::{EntryMeta, StoredResponse};
use crate::cache::fill::{Fill, FillReader, FillStatus};
use crate::cache::memory::VariantSet;
use crate::cache::partial::PartialEntry;
use crate::error::ProxyError;

/// What a phase found to send.
pub enum Delivery {
    /// A stored response: a hit, a revalidated or stale-on-error entry, or one a fill just
    /// stored. `set` holds its stored encodings when the lookup found them.
    Stored {
        entry: Arc<StoredResponse>,
        set: Option<Arc<VariantSet>>,
    },
    /// A partial entry holding every byte of the range asked for (RFC 9111 §3.3).
    Partial(Arc<PartialEntry>),
    /// A fill's body as it arrives from the origin.
    Streaming {
        meta: Arc<EntryMeta>,
        reader: FillReader,
        fill: Arc<Fill>,
    },
    /// An origin response the cache did not store (uncacheable), hop-by-hop fields removed.
    Relayed(Response<Body>),
    /// A response forwarded without the cache (bypass), hop-by-hop fields removed: sent as
    /// the origin made it.
    Forwarded(Response<Body>),
    /// A response outpost made (offline or only-if-cached 504, purge summary).
    Synthetic(Response<Body>),
}

/// Turns `delivery` into the response for the request `parts`.
///
/// # Errors
/// A Range request waiting for a fill to store its object fails as the fill does.
pub async fn deliver(
    proxy: &Arc<Proxy>,
    ctx: &mut RequestCtx,
    parts: &http::request::Parts,
    delivery: Delivery,
) -> Result<Response<Body>, ProxyError> {
    let now = ctx.now;
    match delivery {
        Delivery::Stored { entry, set } => stored(proxy, &entry, set.as_deref(), parts, ctx).await,
        Delivery::Partial(entry) => Ok(respond::ranged_from_partial(proxy, &entry, parts, now)),
        Delivery::Streaming { meta, reader, fill } => {
            if let Some(range) = range::requested(parts, &meta.headers) {
                let fill = (meta, reader, fill);
                return range_of_fill(proxy, ctx, parts, fill, &range).await;
            }
            encode::streaming(proxy, (&meta, reader, &fill), parts, now).await
        }
        Delivery::Relayed(mut response) => {
            if proxy.mirror.is_some() {
                // Set on the mirror's rewritten documents, also when they are not stored.
                response
                    .headers_mut()
                    .remove(crate::cache::policy::ORIGIN_ETAG);
            }
            let version = response.version();
            forwarding::append_via(response.headers_mut(), proxy.via_for(version));
            // Not behind the package mirror: an artifact's digest is checked at the end of
            // its body, which a range cut from it would be sent without.
            let range =
                range::requested(parts, response.headers()).filter(|_| proxy.mirror.is_none());
            if let Some(range) = range {
                // A range cut from it is no longer a 200 to encode.
                response = respond::ranged_from_relayed(response, &range);
            }
            encode::for_client(proxy, response, parts).await
        }
        Delivery::Forwarded(mut response) => {
            let version = response.version();
            forwarding::append_via(response.headers_mut(), proxy.via_for(version));
            Ok(response)
        }
        Delivery::Synthetic(response) => Ok(response),
    }
}

/// RFC 9110 §14: a Range miss answered from the fill fetching the whole object. One range
/// (or none satisfiable) of a body of declared length is cut from the body as it arrives,
/// so the client never waits for the rest of the object. Its reader then reads on to the
/// end when the object is being stored and the fill would finish unread anyway (within
/// `unread_fill_limit`) or the range runs to the end (`bytes=0-`, as media players ask
/// first); otherwise it lets go, and the fill goes on only for its other readers, as when
/// a whole GET's client hangs up: a few bytes asked of a large object (Safari's `bytes=0-1`
/// probe, a small byte range sent to amplify) never leave a large download running.
/// Several ranges in ascending order are cut the same way, as the parts of a
/// `multipart/byteranges` body (RFC 9110 §14.6). Ranges out of order of an object being
/// stored wait for the stored entry; of one streaming through, like a range the body's
/// length cannot place, they get the whole 200 (RFC 9110 §14.2 lets a server ignore
/// Range).
///
/// # Errors
/// As the fill fails; [`ProxyError::RangeNotStored`] when it ends without storing the
/// object after all.
async fn range_of_fill(
    proxy: &Arc<Proxy>,
    ctx: &mut RequestCtx,
    parts: &http::request::Parts,
    (meta, reader, fill): (Arc<EntryMeta>, FillReader, Arc<Fill>),
    range: &str,
) -> Result<Response<Body>, ProxyError> {
    // Behind the package mirror an artifact's digest is checked at the end of its body:
    // a range is served from the stored (checked) object, never cut before the check.
    let declared = crate::cache::entry::content_length(&meta.headers)
        .filter(|_| meta.status == http::StatusCode::OK && proxy.mirror.is_none());
    let cut = match declared.map(|len| (len, range::parse(range, len))) {
        // Several ranges are cut as parts in turn when they ascend; the fill runs to the
        // end for them as for one when the last reaches it.
        Some((len, range::Ranges::Satisfiable(ranges))) if range::in_order(&ranges) => {
            ranges.last().map(|&(_, last)| (len, last + 1 == len))
        }
        Some((_, range::Ranges::Satisfiable(_))) => None,
        Some((len, range::Ranges::Unsatisfiable)) => Some((len, false)),
        Some((_, range::Ranges::Ignore)) => {
            return encode::streaming(proxy, (&meta, reader, &fill), parts, ctx.now).await
        }
        None => None,
    };
    if let Some((len, runs_to_end)) = cut {
        let reads_on = ctx.status.stored && (runs_to_end || proxy.cache.completes_unread(len));
        let after = if reads_on {
            respond::AfterWindow::ReadsOn
        } else {
            // RFC 9211 §2.6: letting go of the fill's only reader ends it unstored.
            ctx.status.stored &= fill.reader_count() > 1;
            respond::AfterWindow::LetsGo
        };
        let request = (parts, range);
        let reader = (reader, after);
        return Ok(respond::ranged_from_fill(
            proxy, &meta, reader, request, len, ctx.now,
        ));
    }
    if !ctx.status.stored {
        return encode::streaming(proxy, (&meta, reader, &fill), parts, ctx.now).await;
    }
    match settled_reading_along(reader, &fill).await {
        FillStatus::Complete { entry, .. } => stored(proxy, &entry, None, parts, ctx).await,
        FillStatus::Failed(err) => Err(err),
        _ => Err(ProxyError::RangeNotStored),
    }
}

/// A stored entry as this request should get it: the range it asks for, or the
/// representation it accepts (a stored encoding when there is one). Notes on a plain
/// hit's [`RequestCtx::hit_source`] whose stored body it sends whole, if one.
///
/// # Errors
/// As [`encode::for_client`]: the origin's gzip fails to decode at its start; and as
/// [`read_before_head`].
async fn stored(
    proxy: &Arc<Proxy>,
    entry: &Arc<StoredResponse>,
    set: Option<&VariantSet>,
    parts: &http::request::Parts,
    ctx: &mut RequestCtx,
) -> Result<Response<Body>, ProxyError> {
    let response = if let Some(range) = range::requested(parts, &entry.meta.headers) {
        respond::ranged_from_entry(proxy, entry, parts, ctx.now, &range)
    } else {
        // The origin's own coding is passed on or decoded, never encoded again.
        if entry
            .meta
            .headers
            .contains_key(http::header::CONTENT_ENCODING)
        {
            let response = respond::from_entry(proxy, entry, parts, ctx.now);
            encode::for_client(proxy, response, parts).await?
        } else {
            let (response, sent_whole) =
                encode::serve_stored(proxy, set, entry, parts, ctx.now).await;
            if let Some(source) = &mut ctx.hit_source {
                source.body_of = sent_whole;
            }
            response
        }
    };
    read_before_head(response).await
}

/// Reads the first piece of a streamed stored body (a disk file read and verified, or an
/// encoder over a stored body) before the head goes, so that a body found corrupt or
/// missing at once is an error the caller can still answer by fetching the object again,
/// rather than a response cut right after its head. Bodies sent as they are held (memory,
/// a file verified already) are left alone: they cannot fail that way.
///
/// # Errors
/// [`ProxyError::StoredBodyLost`] for a corrupt or missing stored body (its entry is
/// already being removed); [`ProxyError::Internal`] for any other failure of the first read.
async fn read_before_head(response: Response<Body>) -> Result<Response<Body>, ProxyError> {
    if !matches!(response.body(), Body::Boxed(_)) {
        // Every memory hit: nothing to read ahead, and no response taken apart for it.
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    match body.with_first_piece_read().await {
        Ok(body) => Ok(Response::from_parts(parts, body)),
        Err(err) if LostStoredBody::is_in(&*err) => {
            Err(ProxyError::StoredBodyLost(err.to_string()))
        }
        Err(err) => Err(ProxyError::Internal(format!("stored body: {err}"))),
    }
}

/// Waits for `fill` to settle while reading along with `reader`, discarding what it reads:
/// a request waiting for the stored object is one of the fill's readers, so the fill is not
/// abandoned as unread (past `unread_fill_limit`, which refused every Range request for an
/// object larger than that with a 500), and a fill that turns out to stream through
/// unstored, reading on only as its readers ask, is not held up by it.
async fn settled_reading_along(mut reader: FillReader, fill: &Fill) -> FillStatus {
    use http_body_util::BodyExt;
    let settled = fill.wait_settled();
    tokio::pin!(settled);
    let mut reading = true;
    loop {
        tokio::select! {
            status = &mut settled => return status,
            frame = reader.frame(), if reading => {
                reading = matches!(frame, Some(Ok(_)));
            }
        }
    }
}
