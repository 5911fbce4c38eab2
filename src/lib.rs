//! outpost: a caching edge proxy (a mini-CDN node).
//!
//! # The life of a request
//! 1. [`server`] accepts the connection (HTTP/1.1 or h2c on one port), enforces connection
//!    limits and the head/idle timeouts, and hands each request head to the pipeline.
//! 2. [`pipeline::handle`] runs the phases in order: request filter, route
//!    ([`pipeline::route`]), the upstream request with forwarding headers inside the trust
//!    boundary ([`pipeline::forwarding`]), the exchange ([`upstream`]), the response filter.
//! 3. Any failure becomes a response in one place, [`error::ProxyError::to_response`], with a
//!    `Proxy-Status` header.
//! 4. [`server`] streams the response body out and writes the access-log line when it ends.
//!
//! # Module map
//! - [`config`]: layered settings and their validation.
//! - [`body`]: the body type used in both directions.
//! - [`admin`]: health endpoints on the admin listener.
//! - [`sample_origin`]: the slow demo origin behind `outpost origin` and `outpost demo`.
//!
//! # Running in-process
//! [`Outpost::serve`] takes an already-bound listener and a shutdown future, so tests and
//! embedders bind `127.0.0.1:0` and stop it when they like.

pub mod admin;
pub mod body;
pub mod cache;
pub mod config;
pub mod error;
pub mod pipeline;
pub mod sample_origin;
pub mod server;
pub mod transform;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;

/// Why outpost could not start with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamSetupError),
}

/// A configured proxy, ready to serve listeners.
pub struct Outpost {
    config: Config,
    proxy: Arc<pipeline::Proxy>,
}

impl Outpost {
    /// # Errors
    /// [`StartError`] when the configuration cannot be put to work (an unreadable CA file).
    pub fn new(config: Config) -> Result<Outpost, StartError> {
        let proxy = Arc::new(pipeline::Proxy::new(&config)?);
        Ok(Outpost { config, proxy })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Encoder runs started since start-up (each stored encoded variant costs one; hits on
    /// it cost none).
    pub fn encoder_runs(&self) -> u64 {
        self.proxy.compression().encoder_runs()
    }

    /// Serves proxy traffic on `listener` until `shutdown` completes, then drains in-flight
    /// requests for up to `server.shutdown_grace`.
    ///
    /// # Errors
    /// I/O errors that end the accept loop.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let proxy = Arc::clone(&self.proxy);
        let result = server::serve(listener, proxy, &self.config.server, shutdown).await;
        let (entries, bytes) = self.proxy.cache().memory.usage().await;
        tracing::info!(entries, bytes, "memory tier at shutdown");
        result
    }

    /// Serves the admin endpoints on `listener` until `shutdown` completes.
    ///
    /// # Errors
    /// I/O errors that end the accept loop.
    pub async fn serve_admin(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        admin::serve(listener, Arc::clone(&self.proxy), shutdown).await
    }
}
