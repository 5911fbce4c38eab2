//! Taking a fill's body up again from an offset, for a coalesced client that fell behind a
//! fill streaming through unstored ([`ResumeFrom`]): the client's own request for the rest
//! (the fill's request with that client's forwarding fields),
//! `Range: bytes=N-` with `If-Range` (RFC 9110 §14.2, §13.1.5), accepted only as a 206 of
//! exactly that rest of the same representation. Anything else ends the client's body in
//! an error (its connection is aborted), so it never receives two representations spliced
//! together, nor a clean end of a truncated body.
//!
//! Offered only where the rest can be recognised: a 200 with a strong validator, whose
//! origin does not refuse ranges, and not through the package mirror (whose digest checks
//! cover whole bodies).

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body::Frame;

use super::route::Site;
use super::Proxy;
use crate::body::{Body, BoxError};
use crate::cache::entry::{content_length, EntryMeta};
use crate::cache::fill::ResumeFrom;
use crate::cache::partial::ContentRange;
use crate::cache::policy;

/// How the rest of one origin response is asked for again.
#[derive(Clone)]
pub(super) struct OriginResume {
    proxy: Arc<Proxy>,
    site: Arc<Site>,
    /// The fill's request as it was sent, less its validators.
    uri: Uri,
    headers: HeaderMap,
    /// The representation's strong validator: sent as If-Range, and the 206 must carry it.
    validator: HeaderValue,
    /// The response's Content-Encoding, which the 206 must repeat.
    content_encoding: Option<HeaderValue>,
    /// The whole body's length, when the response declared it.
    total_len: Option<u64>,
    /// The fill's cache key: the same server of a consistent-hash pool.
    affinity: [u8; 32],
}

/// RFC 9110 §8.8.2.2: a Last-Modified date is a strong validator for an intermediate cache
/// when it is at least this long before the response's Date.
const LAST_MODIFIED_STRONG_AFTER: u64 = 60;

impl OriginResume {
    /// The way to ask again for the rest of the response `meta` (as stored) to the fill's
    /// request (`uri`, `headers`), if it can be recognised when it comes.
    pub(super) fn offer(
        proxy: &Arc<Proxy>,
        site: &Arc<Site>,
        (uri, mut headers): (&Uri, HeaderMap),
        meta: &EntryMeta,
    ) -> Option<OriginResume> {
        let refuses_ranges = crate::cache::entry::refuses_ranges(&meta.headers);
        // A body no longer than the smallest window never leaves a reader a window behind.
        let window = crate::cache::fill::writer::UNSTORED_WINDOW_PAST_BUDGET as u64;
        let total_len = content_length(&meta.headers);
        let too_short = total_len.is_some_and(|len| len <= window);
        if meta.status != StatusCode::OK || refuses_ranges || too_short || proxy.mirror.is_some() {
            return None;
        }
        let validator = strong_validator(&meta.headers)?;
        for name in &policy::CLIENT_CONDITIONALS {
            headers.remove(name);
        }
        Some(OriginResume {
            proxy: Arc::clone(proxy),
            site: Arc::clone(site),
            uri: uri.clone(),
            headers,
            validator,
            content_encoding: meta.headers.get(header::CONTENT_ENCODING).cloned(),
            total_len,
            affinity: meta.key.0,
        })
    }

    /// The rest from `offset`: the origin's 206, checked, as a body of exactly that many
    /// bytes.
    async fn fetch(self, offset: u64, own_fields: Option<HeaderMap>) -> Result<Body, BoxError> {
        self.proxy.metrics.fill_resumes.inc();
        let mut headers = self.headers;
        // The origin is told whom the request is for: the client left behind, not the one
        // whose request started the fill.
        if let Some(own_fields) = own_fields {
            for name in &super::forwarding::FORWARDING_FIELDS {
                headers.remove(name);
            }
            for (name, value) in &own_fields {
                headers.append(name.clone(), value.clone());
            }
        }
        let range = format!("bytes={offset}-");
        headers.insert(header::RANGE, HeaderValue::try_from(range)?);
        headers.insert(header::IF_RANGE, self.validator.clone());
        let mut request = Request::new(Body::empty());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = self.uri;
        *request.headers_mut() = headers;
        let response = self
            .proxy
            .send_upstream(request, &self.site, Some(&self.affinity[..]))
            .await?;
        let rest = rest_of(
            response.status(),
            response.headers(),
            (&self.validator, self.content_encoding.as_ref()),
            (offset, self.total_len),
        )
        .map_err(|refused| {
            tracing::debug!(
                offset,
                refused,
                "a client's ranged request for the rest was refused: its response is aborted"
            );
            format!("the rest of the body from the origin: {refused}")
        })?;
        Ok(Body::boxed(ExactLength::new(
            Body::from(response.into_body()),
            rest,
        )))
    }
}

impl ResumeFrom for OriginResume {
    fn body_from(&self, offset: u64, own_fields: Option<&HeaderMap>) -> Body {
        let fetch = self.clone().fetch(offset, own_fields.cloned());
        let frames = futures_util::stream::once(async move {
            match fetch.await {
                Ok(body) => http_body_util::BodyStream::new(body).boxed(),
                Err(error) => futures_util::stream::iter([Err(error)]).boxed(),
            }
        })
        .flatten();
        Body::boxed(http_body_util::StreamBody::new(frames))
    }
}

/// RFC 9110 §13.1.5: If-Range carries a strong entity tag, or else a Last-Modified date that
/// is strong (§8.8.2.2: at least [`LAST_MODIFIED_STRONG_AFTER`] seconds before Date).
fn strong_validator(headers: &HeaderMap) -> Option<HeaderValue> {
    if let Some(etag) = headers.get(header::ETAG) {
        return (!etag.as_bytes().starts_with(b"W/")).then(|| etag.clone());
    }
    let date = |name| {
        let text = headers.get(name)?.to_str().ok()?;
        httpdate::parse_http_date(text.trim()).ok()
    };
    let (modified, date_sent) = (date(header::LAST_MODIFIED)?, date(header::DATE)?);
    let before = date_sent.duration_since(modified).ok()?;
    (before.as_secs() >= LAST_MODIFIED_STRONG_AFTER)
        .then(|| headers.get(header::LAST_MODIFIED).cloned())
        .flatten()
}

/// How many bytes the origin's answer to a request for the rest from `offset` brings, if
/// it is that rest of the same representation: a 206 whose single Content-Range runs from
/// `offset` to the end of a body of the known length, carrying the validator (compared
/// strongly) and the same Content-Encoding. Otherwise why not.
pub(super) fn rest_of(
    status: StatusCode,
    headers: &HeaderMap,
    (validator, content_encoding): (&HeaderValue, Option<&HeaderValue>),
    (offset, total_len): (u64, Option<u64>),
) -> Result<u64, &'static str> {
    if status != StatusCode::PARTIAL_CONTENT {
        return Err("not a 206 (the representation changed, or ranges are not served)");
    }
    let mut condition = HeaderMap::new();
    condition.insert(header::IF_RANGE, validator.clone());
    if !super::range::if_range_allows(&condition, headers) {
        return Err("a 206 of another representation");
    }
    if headers.get(header::CONTENT_ENCODING) != content_encoding {
        return Err("a 206 of another content coding");
    }
    let range = headers
        .get(header::CONTENT_RANGE)
        .and_then(|value| value.to_str().ok())
        .and_then(ContentRange::parse)
        .ok_or("a 206 without one complete Content-Range")?;
    let whole = total_len.unwrap_or(range.complete_len);
    if range.first != offset || range.last + 1 != range.complete_len || whole != range.complete_len
    {
        return Err("a 206 of other bytes than the rest");
    }
    Ok(range.complete_len - offset)
}

/// A body that must bring exactly `left` more bytes: more, or an end before them, is an
/// error (a 206 sent chunked has no framing to hold it to its Content-Range).
pub(super) struct ExactLength {
    inner: Body,
    left: u64,
}

impl ExactLength {
    pub(super) fn new(inner: Body, left: u64) -> ExactLength {
        ExactLength { inner, left }
    }
}

impl http_body::Body for ExactLength {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |data| data.len() as u64);
                if len > self.left {
                    return Poll::Ready(Some(Err("the rest ran past its Content-Range".into())));
                }
                self.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) if self.left > 0 => {
                Poll::Ready(Some(Err("the rest ended before its Content-Range".into())))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    /// RFC 9110 §13.1.5: never a weak entity tag; a date only without an entity tag, and
    /// only when §8.8.2.2 makes it strong.
    #[test]
    fn if_range_takes_only_a_strong_validator() {
        let strong = headers(&[("etag", "\"v1\"")]);
        assert_eq!(strong_validator(&strong).unwrap(), "\"v1\"");
        assert!(strong_validator(&headers(&[("etag", "W/\"v1\"")])).is_none());
        let old = "Tue, 01 Dec 2026 10:00:00 GMT";
        let dated = |date: &str| headers(&[("last-modified", old), ("date", date)]);
        assert_eq!(
            strong_validator(&dated("Tue, 01 Dec 2026 10:01:00 GMT")).unwrap(),
            old
        );
        assert!(strong_validator(&dated("Tue, 01 Dec 2026 10:00:59 GMT")).is_none());
        assert!(strong_validator(&headers(&[("last-modified", old)])).is_none());
    }

    /// Only the 206 of exactly the rest of the same representation is taken.
    #[test]
    fn only_the_rest_of_the_same_representation_is_taken() {
        let validator = HeaderValue::from_static("\"v1\"");
        let gzip = HeaderValue::from_static("gzip");
        let check = |status: u16, pairs: &[(&'static str, &str)], total: Option<u64>| {
            rest_of(
                StatusCode::from_u16(status).unwrap(),
                &headers(pairs),
                (&validator, Some(&gzip)),
                (100, total),
            )
        };
        let good = [
            ("etag", "\"v1\""),
            ("content-encoding", "gzip"),
            ("content-range", "bytes 100-999/1000"),
        ];
        assert_eq!(check(206, &good, Some(1000)), Ok(900));
        assert_eq!(check(206, &good, None), Ok(900), "length from the 206");
        assert!(check(200, &good, Some(1000)).is_err(), "the whole again");
        assert!(check(206, &good, Some(2000)).is_err(), "another length");
        let mut other = good;
        other[0] = ("etag", "\"v2\"");
        assert!(check(206, &other, Some(1000)).is_err(), "another tag");
        other = good;
        other[1] = ("content-encoding", "br");
        assert!(check(206, &other, Some(1000)).is_err(), "another coding");
        other = good;
        other[2] = ("content-range", "bytes 0-999/1000");
        assert!(check(206, &other, Some(1000)).is_err(), "from elsewhere");
        other[2] = ("content-range", "bytes 100-499/1000");
        assert!(check(206, &other, Some(1000)).is_err(), "not to the end");
    }

    /// The rest's body is held to its Content-Range: short or long is an error.
    #[tokio::test]
    async fn the_rest_is_held_to_its_length() {
        use http_body_util::BodyExt;
        let exactly = |bytes: &'static [u8], left| ExactLength {
            inner: Body::full(Bytes::from_static(bytes)),
            left,
        };
        assert_eq!(
            exactly(b"abc", 3).collect().await.unwrap().to_bytes(),
            "abc"
        );
        assert!(exactly(b"abc", 4).collect().await.is_err(), "short");
        assert!(exactly(b"abc", 2).collect().await.is_err(), "long");
    }
}
