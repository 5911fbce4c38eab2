//! [`ResponseTracker`]: wraps a response body on its way out to count the bytes sent, write
//! the access-log line once the body is finished or abandoned, and tell the connection's
//! watchdog that the request is over.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use super::activity::InflightGuard;
use crate::body::{Body, BoxError};
use crate::pipeline::RequestCtx;

pub struct ResponseTracker {
    body: Body,
    /// `None` for a response that is not a request's outcome (an h2c switch's 101).
    record: Option<Box<RequestCtx>>,
    bytes_sent: u64,
    /// The body's length when known up front (Content-Length): hyper stops polling a
    /// body once it has sent that many bytes, so reaching it is completion too.
    declared_len: Option<u64>,
    is_complete: bool,
    _inflight: InflightGuard,
}

impl ResponseTracker {
    /// `declared_len`: the body's length, when known before it is sent.
    pub fn new(
        body: Body,
        declared_len: Option<u64>,
        record: Box<RequestCtx>,
        inflight: InflightGuard,
    ) -> ResponseTracker {
        ResponseTracker {
            declared_len,
            body,
            record: Some(record),
            bytes_sent: 0,
            is_complete: false,
            _inflight: inflight,
        }
    }
}

impl ResponseTracker {
    /// A body that records nothing when it ends (the 101 of an h2c switch: the request it
    /// answers is recorded when stream 1 is answered).
    pub fn unrecorded(body: Body, inflight: InflightGuard) -> ResponseTracker {
        ResponseTracker {
            declared_len: Some(0),
            body,
            record: None,
            bytes_sent: 0,
            is_complete: false,
            _inflight: inflight,
        }
    }
}

impl http_body::Body for ResponseTracker {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.is_complete = true,
            Poll::Ready(Some(Err(err))) => {
                tracing::warn!(
                    target = %this.record.as_ref().map_or(Cow::Borrowed(""), |r| r.target()),
                    error = %err,
                    "response body failed mid-stream: aborting the client's response"
                );
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ResponseTracker {
    fn drop(&mut self) {
        // hyper drops a body it never polls (HEAD, 304) as soon as the head is written.
        let is_complete = self.is_complete
            || self.body.is_end_stream()
            || self.declared_len == Some(self.bytes_sent);
        if let Some(record) = &self.record {
            record.finish(self.bytes_sent, is_complete);
        }
    }
}
