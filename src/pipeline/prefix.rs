//! Completing a kept prefix (RFC 9111 §3.3, §3.4): a fill of the whole representation whose
//! first bytes a partial entry holds (a download that stopped early, a player's probe) asks
//! the origin for the rest alone, `Range: bytes=N-` with the entry's strong entity tag as
//! `If-Range` (RFC 9110 §13.1.5). When the origin's 206 is exactly that rest of the same
//! representation, the fill goes on as the 200 the two make together: the kept head updated
//! with the 206's fields (§3.4), then the kept bytes, then the 206's. A 200 (the
//! representation changed, or the origin ignores ranges) is the answer as it is; any other
//! 206, or a 416, is not used, and the whole representation is asked for again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use http_body::{Frame, SizeHint};

use super::resume::{rest_of, ExactLength};
use crate::body::{Body, BoxError};
use crate::cache::partial::{strong_etag, PartialEntry};
use crate::cache::policy;
use crate::upstream::OriginBody;

/// The kept bytes go to the fill in slices of at most this: its readers (a range cut as
/// the body arrives, clients streaming the miss) move on slice by slice, as with the
/// origin's own frames.
const PREFIX_SLICE: usize = 256 * 1024;

/// Makes the fill's request (`headers`) one for the rest of `prefix`'s representation;
/// returns the Accept-Encoding to send, so that the origin picks the content coding the
/// kept bytes are in (none: identity).
pub(super) fn ask_for_rest(headers: &mut HeaderMap, prefix: &PartialEntry) -> &'static str {
    let range = format!("bytes={}-", prefix.prefix_len());
    if let (Ok(range), Some(validator)) = (HeaderValue::try_from(range), validator(prefix)) {
        headers.insert(header::RANGE, range);
        headers.insert(header::IF_RANGE, validator);
    }
    if prefix.meta.headers.contains_key(header::CONTENT_ENCODING) {
        crate::cache::key::ORIGIN_ACCEPT_ENCODING
    } else {
        "identity"
    }
}

/// The fill's request for the rest (`parts`) as a request for the whole representation,
/// for when the origin's answer to it cannot be joined to the prefix.
pub(super) fn whole_again(parts: &http::request::Parts) -> http::request::Parts {
    let mut parts = parts.clone();
    parts.headers.remove(header::RANGE);
    parts.headers.remove(header::IF_RANGE);
    let accept_encoding = HeaderValue::from_static(crate::cache::key::ORIGIN_ACCEPT_ENCODING);
    parts
        .headers
        .insert(header::ACCEPT_ENCODING, accept_encoding);
    parts
}

fn validator(prefix: &PartialEntry) -> Option<HeaderValue> {
    HeaderValue::from_bytes(strong_etag(&prefix.meta.headers)?).ok()
}

/// What the origin's answer to a request for the rest comes to.
pub(super) enum Answer {
    /// The whole representation: the kept head and bytes joined to the 206's rest.
    Joined(http::response::Parts, OriginBody),
    /// Not a partial answer: the origin's response as it is.
    AsItIs(http::response::Parts, OriginBody),
    /// A 206 or 416 that is not the rest of this representation, and why.
    Refused(&'static str),
}

/// Joins `prefix` to the origin's answer (`head`, `body`) to the request for the rest.
pub(super) fn join(
    prefix: &PartialEntry,
    mut head: http::response::Parts,
    body: OriginBody,
) -> Answer {
    let partial = [
        StatusCode::PARTIAL_CONTENT,
        StatusCode::RANGE_NOT_SATISFIABLE,
    ];
    if !partial.contains(&head.status) {
        return Answer::AsItIs(head, body);
    }
    let Some(validator) = validator(prefix) else {
        return Answer::Refused("the kept prefix has no strong entity tag");
    };
    let (offset, complete_len) = (prefix.prefix_len(), prefix.complete_len());
    let coding = prefix.meta.headers.get(header::CONTENT_ENCODING);
    let left = match rest_of(
        head.status,
        &head.headers,
        (&validator, coding),
        (offset, Some(complete_len)),
    ) {
        Ok(left) => left,
        Err(refused) => return Answer::Refused(refused),
    };
    // RFC 9111 §3.4: the new response's fields, aside from Content-Range, replace the
    // stored ones; the kept head already describes the whole (its Content-Length).
    head.headers.remove(header::CONTENT_RANGE);
    let mut headers = policy::freshen_headers(&prefix.meta.headers, &head.headers);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(complete_len));
    head.status = StatusCode::OK;
    head.headers = headers;
    let Some((0, kept)) = prefix.pieces().first().cloned() else {
        return Answer::Refused("the partial entry holds no prefix");
    };
    let rest = ExactLength::new(Body::from(body), left);
    Answer::Joined(head, OriginBody::checked(AfterPrefix { kept, rest }))
}

/// The kept bytes, then the origin's rest.
struct AfterPrefix {
    kept: Bytes,
    rest: ExactLength,
}

impl http_body::Body for AfterPrefix {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.kept.is_empty() {
            let len = self.kept.len().min(PREFIX_SLICE);
            let slice = self.kept.split_to(len);
            return Poll::Ready(Some(Ok(Frame::data(slice))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let kept = self.kept.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + kept);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + kept);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::partial::testing::piece;
    use http_body_util::BodyExt;

    fn answer(status: u16, pairs: &[(&'static str, &str)], body: &'static str) -> Answer {
        let mut response = http::Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in pairs {
            let value = HeaderValue::from_str(value).unwrap();
            response.headers_mut().append(*name, value);
        }
        let kept = piece("/iso", "\"v1\"", 0, "0123", 10);
        let body = OriginBody::read(Bytes::from_static(body.as_bytes()));
        join(&kept, response.into_parts().0, body)
    }

    /// RFC 9111 §3.4: the 206 of exactly the rest, under the same strong entity tag, makes
    /// the whole 200 with the 206's fields (aside from Content-Range) and the whole length.
    #[tokio::test]
    async fn the_rest_of_the_same_representation_is_joined_into_the_whole() {
        let rest = [
            ("etag", "\"v1\""),
            ("content-range", "bytes 4-9/10"),
            ("content-length", "6"),
            ("cache-control", "max-age=99"),
        ];
        let Answer::Joined(head, body) = answer(206, &rest, "456789") else {
            panic!("not joined");
        };
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers.get(header::CONTENT_LENGTH).unwrap(), "10");
        assert_eq!(
            head.headers.get(header::CACHE_CONTROL).unwrap(),
            "max-age=99"
        );
        assert!(!head.headers.contains_key(header::CONTENT_RANGE));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "0123456789");
    }

    /// A 206 short of its Content-Range ends the joined body in an error, never a clean
    /// end of a truncated whole.
    #[tokio::test]
    async fn a_short_rest_fails_the_joined_body() {
        let rest = [("etag", "\"v1\""), ("content-range", "bytes 4-9/10")];
        let Answer::Joined(_, body) = answer(206, &rest, "456") else {
            panic!("not joined");
        };
        assert!(body.collect().await.is_err());
    }

    /// RFC 9110 §13.1.5: a 200 is the changed (or unranged) representation, used as it is;
    /// a 416, or a 206 of other bytes, another tag or another coding, is refused.
    #[test]
    fn anything_but_the_rest_is_not_joined() {
        assert!(matches!(
            answer(200, &[("etag", "\"v2\"")], "new"),
            Answer::AsItIs(..)
        ));
        let refused = |status, pairs: &[(&'static str, &str)]| {
            matches!(answer(status, pairs, "456789"), Answer::Refused(_))
        };
        assert!(refused(416, &[("content-range", "bytes */10")]));
        let tag = ("etag", "\"v1\"");
        assert!(refused(206, &[tag, ("content-range", "bytes 0-9/10")]));
        assert!(refused(206, &[tag, ("content-range", "bytes 4-9/12")]));
        assert!(refused(
            206,
            &[("etag", "\"v2\""), ("content-range", "bytes 4-9/10")]
        ));
        let coded = [
            tag,
            ("content-range", "bytes 4-9/10"),
            ("content-encoding", "gzip"),
        ];
        assert!(refused(206, &coded));
    }
}
