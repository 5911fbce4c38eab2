//! The client the tools speak to a running outpost with: HTTP/1.1 over `http://` or
//! `https://` (the web roots plus a CA file, as for origins), connections pooled.

use std::path::Path;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamConfig;
use crate::upstream::{https_connector, tls_client_config, UpstreamSetupError};

/// A pooled HTTP/1.1 client for `http://` and `https://` URLs.
pub type ToolClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Why the tools' client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ToolClientError {
    #[error("--ca-file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error(transparent)]
    Tls(UpstreamSetupError),
}

/// A client keeping up to `max_idle` connections per host, trusting `ca_file` besides the
/// web roots for `https://` (a mirror or an edge with its own certificate authority).
///
/// # Errors
/// [`ToolClientError`] when `ca_file` cannot be read or holds no certificate.
pub fn tool_client(max_idle: usize, ca_file: Option<&Path>) -> Result<ToolClient, ToolClientError> {
    let settings = UpstreamConfig {
        ca_file: ca_file.map(Path::to_path_buf),
        ..UpstreamConfig::default()
    };
    let tls = tls_client_config(&settings).map_err(|err| match err {
        UpstreamSetupError::CaFile { path, message, .. } => {
            ToolClientError::CaFile { path, message }
        }
        other => ToolClientError::Tls(other),
    })?;
    let https = https_connector(tls, None);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .build(https))
}
