//! HEAD requests the cache cannot answer (RFC 9110 §9.3.2, RFC 9111 §4.3.5): forwarded as
//! HEAD, never turned into a GET (a HEAD for a 2 GiB image must not download it), and never
//! stored. When a stored GET response is waiting for validation, the HEAD's 200 speaks for
//! it: when every validator it carries (none, too) and its length agree with the stored
//! response it freshens the stored headers; otherwise the stored response is no longer the
//! current one and is dropped.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

use super::deliver::Delivery;
use super::fetch::{freshness_under_rule, is_error_status, stale_on_error_allowed, Miss};
use super::{forward, RequestCtx};
use crate::body::Body;
use crate::cache::entry::{content_length, StoredResponse};
use crate::cache::policy::{self, FetchedFor};
use crate::error::{OriginFailure, ProxyError};
use crate::telemetry::cache_status::CacheStatus;
use crate::telemetry::Detail;

/// Forwards the HEAD `miss` and applies its answer to the stored GET response, if any.
pub(super) async fn forward_head(
    miss: Miss<'_>,
    body: Body,
    ctx: &mut RequestCtx,
) -> Result<Delivery, ProxyError> {
    ctx.status = CacheStatus::forward(miss.plan.reason);
    let sent_at = SystemTime::now();
    let forwarded = forward(
        miss.proxy,
        miss.site,
        miss.parts,
        body,
        (miss.downstream, miss.interim),
        ctx,
    )
    .await;
    let response = match forwarded {
        Ok(response) if is_error_status(response.status()) => {
            let status = response.status().as_u16();
            if let Some(stale) = stale_on_error(&miss, OriginFailure::Status(status), ctx) {
                ctx.status.fwd_status = Some(status);
                return Ok(stale);
            }
            response
        }
        Ok(response) => response,
        Err(err) => {
            let failure = OriginFailure::Error(err.proxy_status_error());
            return stale_on_error(&miss, failure, ctx).ok_or(err);
        }
    };
    ctx.status.fwd_status = Some(response.status().as_u16());
    if let Some(stored) = &miss.plan.stale {
        if response.status() == StatusCode::OK {
            let times = (sent_at, SystemTime::now());
            apply_to_stored(&miss, stored, response.headers(), times).await;
        }
    }
    Ok(Delivery::Forwarded(response.map(Body::from)))
}

/// The stored GET response, answering the HEAD stale because the origin could not (as a
/// GET's validation would), when it allows that.
fn stale_on_error(
    miss: &Miss<'_>,
    failure: OriginFailure,
    ctx: &mut RequestCtx,
) -> Option<Delivery> {
    let stale = miss.plan.stale.as_ref()?;
    let settings = miss.proxy.cache.policy();
    if !stale_on_error_allowed(&stale.meta.freshness, &miss.parts.headers, settings) {
        return None;
    }
    ctx.status.ttl = Some(stale.meta.freshness.ttl_seconds(SystemTime::now()));
    ctx.status.detail = Some(Detail::Error(failure));
    Some(Delivery::Stored {
        entry: Arc::clone(stale),
        set: None,
    })
}

/// §4.3.5: a HEAD 200 that agrees with the stored response (see [`same_representation`])
/// freshens it, as a 304 would, if the merged headers may still be shared; any other 200
/// means the stored response is outdated, and it is dropped.
async fn apply_to_stored(
    miss: &Miss<'_>,
    stored: &Arc<StoredResponse>,
    head: &HeaderMap,
    times: (SystemTime, SystemTime),
) {
    let cache = &miss.proxy.cache;
    let (key, variant) = (stored.meta.key, stored.meta.variant);
    if !same_representation(&stored.meta.headers, stored.meta.body_len, head) {
        cache.drop_variant(key, variant).await;
        return;
    }
    let mut merged = policy::freshen_headers(&stored.meta.headers, head);
    // A cookie set on a HEAD is for its requester (who gets the HEAD response as is).
    policy::remove_unshared_fields(&mut merged, cache.policy());
    let fetched_for = FetchedFor {
        method: &Method::GET,
        uri: &miss.parts.uri,
        headers: &miss.parts.headers,
    };
    let status = stored.meta.status;
    let storable = policy::check_storable(&fetched_for, status, &merged, cache.policy(), times.1);
    let keeps_variant = crate::cache::key::Vary::from_response(&merged) == stored.meta.vary;
    let (Ok(read), true) = (storable, keeps_variant) else {
        cache.drop_variant(key, variant).await;
        return;
    };
    let rule = cache.rules().find(&miss.site.name, miss.parts.uri.path());
    let mut meta = stored.meta.clone();
    meta.freshness = freshness_under_rule(cache, rule, (status, &merged, Some(read)), times);
    meta.headers = crate::cache::entry::compact_headers(&merged);
    let entry = Arc::new(StoredResponse {
        meta,
        body: stored.body.clone(),
        compressible: Default::default(),
    });
    cache.store(entry, crate::cache::StoreChange::Headers).await;
}

/// Whether a HEAD response may update the stored response (RFC 9111 §4.3.5): each validator
/// it carries (ETag, Last-Modified) has the stored response's value, and so does its
/// Content-Length when it states one. A HEAD with no validator at all matches: updating a
/// stored response that has none, where a conditional GET cannot, is what §4.3.5 is for.
fn same_representation(stored: &HeaderMap, stored_len: u64, head: &HeaderMap) -> bool {
    let field = |headers: &HeaderMap, name: &header::HeaderName| {
        headers
            .get(name)
            .map(|value| value.as_bytes().trim_ascii().to_vec())
    };
    let agrees = |name: header::HeaderName| match field(head, &name) {
        Some(received) => field(stored, &name) == Some(received),
        None => true,
    };
    agrees(header::ETAG)
        && agrees(header::LAST_MODIFIED)
        && content_length(head).is_none_or(|len| len == stored_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    /// RFC 9111 §4.3.5: every validator the HEAD carries, and its length when stated, must
    /// be the stored response's; one that carries none matches.
    #[test]
    fn a_head_matches_by_the_validators_it_carries_and_length() {
        let stored = headers(&[("etag", "\"v1\"")]);
        assert!(same_representation(
            &stored,
            4,
            &headers(&[("etag", "\"v1\"")])
        ));
        assert!(same_representation(
            &stored,
            4,
            &headers(&[("etag", "\"v1\""), ("content-length", "4")])
        ));
        assert!(!same_representation(
            &stored,
            4,
            &headers(&[("etag", "\"v1\""), ("content-length", "5")])
        ));
        assert!(!same_representation(
            &stored,
            4,
            &headers(&[("etag", "\"v2\"")])
        ));
        assert!(same_representation(&stored, 4, &HeaderMap::new()));
        assert!(!same_representation(
            &stored,
            4,
            &headers(&[("content-length", "5")])
        ));
        let weak = headers(&[("etag", "W/\"v1\"")]);
        assert!(same_representation(&weak, 4, &weak));
        let dated = headers(&[("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT")]);
        assert!(same_representation(&dated, 4, &dated));
        assert!(
            !same_representation(&HeaderMap::new(), 4, &dated),
            "a validator the stored response lacks"
        );
        let both = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT"),
        ]);
        assert!(same_representation(&both, 4, &dated));
        assert!(!same_representation(
            &both,
            4,
            &headers(&[("last-modified", "Thu, 02 Jan 2025 00:00:00 GMT")])
        ));
    }
}
