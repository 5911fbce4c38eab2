//! The one body type that flows through outpost in both directions: nothing, bytes held in
//! memory (error pages, later cache hits), a window of a stored body file, or a stream
//! passed through frame by frame.
//!
//! An enum rather than a boxed trait object, so the in-memory cases cost no allocation and
//! streams are never collected: a streamed body is forwarded frame by frame and an error in
//! it is passed on as an error (the connection is aborted), never as a clean end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;

/// Errors a streamed body can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum Body {
    Empty,
    /// Taken on the first poll.
    Full(Option<Bytes>),
    /// A body received by hyper (a downstream request or an upstream response).
    Incoming(hyper::body::Incoming),
    /// Any other stream (transforms wrap bodies into this).
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
    /// A window of a body file verified already (`cache::disk::opened`): a connection
    /// that can send it from the file itself does (`server::sendfile`); polled, it is read.
    File(Box<FileBody>),
}

/// A body file verified in full (a disk-tier file) or unchangeable (a sealed memory file)
/// and held open, as a body sees it.
pub trait VerifiedFile: Send + Sync {
    fn file(&self) -> &std::fs::File;
    /// `len` bytes from `offset`, read without hashing (the file is verified).
    fn read(self: Arc<Self>, offset: u64, len: u64) -> Body;
    /// Whether the file is a memory-tier body (`cache::sealed`) rather than a disk one.
    fn is_in_memory(&self) -> bool {
        false
    }
}

/// `len` bytes of a verified file from `offset`.
pub struct FileBody {
    pub file: Arc<dyn VerifiedFile>,
    pub offset: u64,
    pub len: u64,
    /// The read, once the body is polled.
    read: Option<Body>,
}

impl FileBody {
    pub fn new(file: Arc<dyn VerifiedFile>, offset: u64, len: u64) -> FileBody {
        FileBody {
            file,
            offset,
            len,
            read: None,
        }
    }
}

impl Body {
    pub fn empty() -> Body {
        Body::Empty
    }

    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(bytes))
        }
    }

    pub fn boxed<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Body::Boxed(body.map_err(Into::into).boxed_unsync())
    }
}

impl Body {
    /// `parts` one after another, as one body (an error in any part ends it as an error).
    pub fn chain(parts: Vec<Body>) -> Body {
        use futures_util::StreamExt;
        let frames = futures_util::stream::iter(parts).flat_map(http_body_util::BodyStream::new);
        Body::boxed(http_body_util::StreamBody::new(frames))
    }

    /// `preface` then `body`, with `body`'s first piece read before anything is produced:
    /// a multipart range whose first part is a stored file fails before its first boundary
    /// line, and so before a response head, when the file is lost (see
    /// [`Body::with_first_piece_read`]).
    pub fn read_first(body: Body, preface: Body) -> Body {
        use futures_util::StreamExt;
        use http_body_util::{BodyExt, BodyStream};
        let frames = futures_util::stream::once(async move {
            let mut body = body;
            let first = body.frame().await;
            match first {
                Some(Err(error)) => futures_util::stream::iter([Err(error)]).boxed(),
                first => BodyStream::new(preface)
                    .chain(futures_util::stream::iter(first))
                    .chain(BodyStream::new(body))
                    .boxed(),
            }
        })
        .flatten();
        Body::boxed(http_body_util::StreamBody::new(frames))
    }

    /// A streamed body (`Boxed`) with its first piece read already, so that a failure to
    /// produce any of it shows before a response head is sent; other bodies as they are.
    ///
    /// # Errors
    /// The first piece's failure.
    pub async fn with_first_piece_read(self) -> Result<Body, BoxError> {
        use http_body_util::BodyExt;
        let Body::Boxed(mut body) = self else {
            return Ok(self);
        };
        let Some(first) = body.frame().await.transpose()? else {
            return Ok(Body::Empty);
        };
        Ok(match first.into_data() {
            Ok(data) => Body::chain(vec![Body::full(data), Body::Boxed(body)]),
            // Trailers at once: nothing to send before them.
            Err(_) => Body::Boxed(body),
        })
    }
}

impl From<hyper::body::Incoming> for Body {
    fn from(incoming: hyper::body::Incoming) -> Self {
        Body::Incoming(incoming)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            Body::Boxed(boxed) => Pin::new(boxed).poll_frame(cx),
            Body::File(file) => {
                let FileBody {
                    file,
                    offset,
                    len,
                    read,
                } = &mut **file;
                let read = read.get_or_insert_with(|| Arc::clone(file).read(*offset, *len));
                Pin::new(read).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Incoming(incoming) => incoming.is_end_stream(),
            Body::Boxed(boxed) => boxed.is_end_stream(),
            Body::File(file) => file
                .read
                .as_ref()
                .map_or(file.len == 0, Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(incoming) => incoming.size_hint(),
            Body::Boxed(boxed) => boxed.size_hint(),
            Body::File(file) => SizeHint::with_exact(file.len),
        }
    }
}
