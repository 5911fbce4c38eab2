//! Connections to origins, counted: a connector around the TLS/TCP one whose connections
//! each hold a slot of the caps (in all and per origin) from the moment they are opened
//! until the socket is dropped, pooled idle time included. Counting connections rather
//! than exchanges is what keeps an origin's view within the cap: an exchange abandoned
//! mid-body leaves its connection open until hyper notices, and a slot released at the
//! exchange's end would let a new connection open beside it.
//!
//! # Cancellation
//! A connect waiting for a slot holds none; dropping it leaves the queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower_service::Service;

use crate::limit::{Admission, Limiter};

/// A connector whose connections count against `limiter`, keyed by the origin's
/// `host:port`.
#[derive(Clone)]
pub struct Counted<C> {
    inner: C,
    limiter: Arc<Limiter>,
}

impl<C> Counted<C> {
    pub fn new(inner: C, limiter: Arc<Limiter>) -> Counted<C> {
        Counted { inner, limiter }
    }
}

/// A connection and the slot it holds.
pub struct CountedIo<T> {
    io: T,
    _slot: Admission,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> Service<Uri> for Counted<C>
where
    C: Service<Uri> + Clone + Send + 'static,
    C::Future: Send,
    C::Response: Send,
    C::Error: Into<BoxError>,
{
    type Response = CountedIo<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let counted = self.clone();
        Box::pin(async move { counted.admit(uri).await?.connect().await })
    }
}

impl<C> Counted<C>
where
    C: Service<Uri> + Clone,
    C::Error: Into<BoxError>,
{
    /// A place under the caps for a connection to `uri`'s origin. The wait for it is the
    /// part a caller that stops needing the connection can drop for free: nothing has
    /// reached the origin yet. [`Admitted::connect`] then opens the connection.
    ///
    /// # Errors
    /// The caps refused it (the queue full, or waited past its timeout).
    pub fn admit(&self, uri: Uri) -> impl Future<Output = Result<Admitted<C>, BoxError>> {
        // Owned, so the wait borrows nothing (the connector need not be `Sync`).
        let (inner, limiter) = (self.inner.clone(), Arc::clone(&self.limiter));
        async move {
            let peer = uri.authority().map_or_else(String::new, |authority| {
                authority.as_str().to_ascii_lowercase()
            });
            let slot = limiter.admit(&peer).await?;
            Ok(Admitted { inner, slot, uri })
        }
    }
}

/// A connection admitted under the caps and not yet opened: it holds its slot.
pub struct Admitted<C> {
    inner: C,
    slot: Admission,
    uri: Uri,
}

impl<C> Admitted<C>
where
    C: Service<Uri>,
    C::Error: Into<BoxError>,
{
    /// Opens the connection, which keeps the slot until it is dropped.
    ///
    /// # Errors
    /// The connect failed (refused, timed out, the TLS handshake failed).
    pub async fn connect(mut self) -> Result<CountedIo<C::Response>, BoxError> {
        std::future::poll_fn(|cx| self.inner.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        let io = self.inner.call(self.uri).await.map_err(Into::into)?;
        Ok(CountedIo {
            io,
            _slot: self.slot,
        })
    }
}

impl<T: Connection> Connection for CountedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: Read + Unpin> Read for CountedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for CountedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
