//! The admin listener: health endpoints, Prometheus metrics and purge, on a separate
//! address that binds to loopback (config validation refuses anything else until the admin
//! API has tokens).
//!
//! `/healthz` answers while the process serves at all; `/readyz` once the proxy listener is
//! up, which is true by the time this listener runs; `/metrics` is the Prometheus
//! exposition ([`crate::telemetry::metrics`]); `POST /purge` removes or marks stale by URL, prefix or tag;
//! `/origins` lists and steers the members of origin pools.

use std::convert::Infallible;
use std::future::Future;

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

mod origins;
mod page;

use crate::body::Body;
use crate::cache::key::{canonical_authority, PrimaryKey};
use crate::cache::PurgeTarget;
use crate::pipeline::Proxy;
use crate::telemetry::metrics::TierLabels;
use crate::{Outpost, ReloadError};

/// Serves the admin endpoints on `listener` until `shutdown` completes.
///
/// # Errors
/// None today; accept errors are logged and the loop goes on.
pub async fn serve(
    listener: TcpListener,
    outpost: Arc<Outpost>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let bound = listener.local_addr()?;
    // The main listener's head-size limit and head timeout apply here too.
    let server = outpost.config().server.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(server.header_read_timeout.get())
        .max_buf_size(server.max_header_bytes.as_usize().max(8192));
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    continue;
                }
            },
        };
        let outpost = Arc::clone(&outpost);
        let service = service_fn(move |request| {
            let outpost = Arc::clone(&outpost);
            async move {
                if let Some(refused) = cross_site_refusal(&outpost, &request, bound) {
                    return Ok::<_, Infallible>(refused);
                }
                Ok::<_, Infallible>(route(&outpost, &request).await)
            }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "admin connection error");
            }
        });
    }
}

/// Requests a web page could make a browser send: refused with 403. Without a token, the
/// Host must name the loopback address the listener is bound to (DNS rebinding gives a
/// page an attacker's name for it); with or without one, a cross-site `Origin` or
/// `Sec-Fetch-Site` means a page on another site is making the request.
fn cross_site_refusal(
    outpost: &Outpost,
    request: &Request<Incoming>,
    bound: std::net::SocketAddr,
) -> Option<Response<Body>> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let has_token = outpost.config().admin_token.is_some();
    if !has_token && !is_local_host(host, bound) {
        return Some(text(
            StatusCode::FORBIDDEN,
            "admin: Host is not this listener\n",
        ));
    }
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    let origin_is_foreign = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| origin.split_once("://").map(|(_, rest)| rest) != Some(host));
    if !matches!(fetch_site, "none" | "same-origin") || origin_is_foreign {
        return Some(text(
            StatusCode::FORBIDDEN,
            "admin: cross-site request refused\n",
        ));
    }
    None
}

/// `localhost`, a loopback address, or the bound address, with the bound port or none.
fn is_local_host(host: &str, bound: std::net::SocketAddr) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => {
            if name.contains(':') && !name.starts_with('[') {
                (host, None)
            } else {
                (name, Some(port))
            }
        }
        _ => (host, None),
    };
    if port.is_some_and(|port| port != bound.port().to_string()) {
        return false;
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip == bound.ip())
}

async fn route(outpost: &Outpost, request: &Request<Incoming>) -> Response<Body> {
    let proxy = outpost.proxy();
    let path = request.uri().path();
    if !matches!(path, "/healthz" | "/readyz")
        && !is_authorised(
            outpost
                .config()
                .admin_token
                .as_ref()
                .map(crate::config::Secret::expose),
            request,
        )
    {
        let mut response = text(StatusCode::UNAUTHORIZED, "admin token required\n");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"outpost-admin\""),
        );
        return response;
    }
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    let query = request.uri().query().unwrap_or("");
    match (request.method(), path) {
        (_, "/healthz") if is_read => text(StatusCode::OK, "ok\n"),
        (_, "/readyz") if is_read => text(StatusCode::OK, "ready\n"),
        (_, "/metrics") if is_read => metrics(&proxy).await,
        (_, "/status") if is_read => typed(page::PAGE, "text/html; charset=utf-8"),
        (_, "/status.json") if is_read => status_json(outpost, &proxy).await,
        (_, "/offline") if is_read => json(
            StatusCode::OK,
            serde_json::json!({"offline": proxy.cache().is_offline()}),
        ),
        (&Method::POST, "/offline") => offline(&proxy, query),
        (&Method::POST, "/purge") => purge(&proxy, query).await,
        (&Method::POST, "/reload") => reload(outpost),
        (_, "/origins") if is_read => json(StatusCode::OK, origins::list(&proxy)),
        (&Method::POST, path) if path.starts_with("/origins/") => {
            let (status, answer) = origins::steer(&proxy, path, query);
            json(status, answer)
        }
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/purge" | "/reload" | "/status" | "/status.json"
            | "/offline" | "/origins",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A 200 with `body` of `content_type`.
fn typed(body: impl Into<bytes::Bytes>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The Prometheus exposition, with the tiers' sizes brought up to date.
async fn metrics(proxy: &Proxy) -> Response<Body> {
    let metrics = proxy.metrics();
    let set_usage = |tier, (entries, bytes): (u64, u64)| {
        let labels = TierLabels { tier };
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        metrics
            .cache_entries
            .get_or_create(&labels)
            .set(gauge(entries));
        metrics.cache_bytes.get_or_create(&labels).set(gauge(bytes));
    };
    set_usage("memory", proxy.cache().memory_usage().await);
    let budget_used = proxy.cache().fill_budget_used();
    metrics
        .fill_budget_used_bytes
        .set(i64::try_from(budget_used).unwrap_or(i64::MAX));
    let now = std::time::Instant::now();
    for pool in proxy.pools().configured() {
        pool.export_states(now);
    }
    if let Some(usage) = proxy.cache().disk_usage() {
        set_usage("disk", usage);
    }
    typed(
        metrics.encode(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
}

/// The status board with the tiers' state.
async fn status_json(outpost: &Outpost, proxy: &Proxy) -> Response<Body> {
    let config = outpost.config();
    let (entries, bytes) = proxy.cache().memory_usage().await;
    let capacity = config.cache.memory_capacity.as_u64();
    let mut tiers =
        serde_json::json!({"memory": {"entries": entries, "bytes": bytes, "capacity": capacity}});
    // Less than configured: the fills' budget and the process's reserve come out of it,
    // and the disk tier's memory.
    tiers["memory"]["reserve"] = serde_json::json!(config.cache.effective_memory_reserve());
    tiers["memory"]["capacity_now"] = serde_json::json!(proxy.cache().memory_capacity_now());
    let (entries, bytes, capacity) = proxy.cache().partials().usage();
    tiers["partial"] =
        serde_json::json!({"entries": entries, "bytes": bytes, "capacity": capacity});
    if let Some((entries, bytes)) = proxy.cache().disk_usage() {
        tiers["disk"] = serde_json::json!({
            "entries": entries,
            "bytes": bytes,
            "capacity": config.cache.disk_capacity.as_u64(),
            "dir": config.cache.dir,
            "degraded": proxy.cache().live_disk().is_none(),
        });
    }
    if let Some((entries, bytes)) = proxy.cache().disk_partial_usage() {
        tiers["partial"]["disk_entries"] = serde_json::json!(entries);
        tiers["partial"]["disk_bytes"] = serde_json::json!(bytes);
    }
    tiers["offline"] = serde_json::json!(proxy.cache().is_offline());
    tiers["pools"] = origins::list(proxy);
    let mut status = proxy.metrics().board.snapshot(tiers);
    if let Some(mirror) = proxy.mirror() {
        status["mirror"] = mirror.report(proxy.cache()).await;
    }
    json(StatusCode::OK, status)
}

/// `POST /reload`: the configuration read again and put in force, or why not.
fn reload(outpost: &Outpost) -> Response<Body> {
    match outpost.reload() {
        // Settings read only at start (listen addresses, ...) are named, so a script
        // knows the reload did not apply them.
        Ok(needs_restart) => json(
            StatusCode::OK,
            serde_json::json!({"reloaded": true, "restart_needed_for": needs_restart}),
        ),
        Err(err) => {
            tracing::error!(error = %err, "reload refused; the configuration in force stays");
            let status = match err {
                ReloadError::NoSource => StatusCode::NOT_IMPLEMENTED,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            json(
                status,
                serde_json::json!({"reloaded": false, "error": err.to_string()}),
            )
        }
    }
}

/// With a configured token, requests must carry `Authorization: Bearer TOKEN` (compared in
/// constant time, so the token cannot be guessed byte by byte from response times).
fn is_authorised(token: Option<&str>, request: &Request<Incoming>) -> bool {
    let Some(token) = token else { return true };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.as_bytes()).into()
}

/// `POST /offline?enabled=true|false`: the offline-mode switch (serve only what is stored).
fn offline(proxy: &Proxy, query: &str) -> Response<Body> {
    let enabled = url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "enabled")
        .map(|(_, value)| value.into_owned());
    let enabled = match enabled.as_deref() {
        Some("true" | "1" | "on") => true,
        Some("false" | "0" | "off") => false,
        _ => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "give enabled=true or enabled=false"}),
            )
        }
    };
    proxy.cache().set_offline(enabled);
    json(StatusCode::OK, serde_json::json!({"offline": enabled}))
}

/// `POST /purge?url=ABSOLUTE-URL | prefix=ABSOLUTE-URL-PREFIX | tag=TAG [&soft=true]`,
/// answered with JSON: how many stored responses were affected. A URL or prefix names its
/// resource over http and https alike (a public `https://` URL purges what a TLS terminator
/// in front had outpost store over http). One that can never match anything (not absolute,
/// another scheme, a host no site serves) is a 400, not `purged: 0`.
async fn purge(proxy: &Proxy, query: &str) -> Response<Body> {
    let mut targets = Err("give url=ABSOLUTE-URL, prefix=ABSOLUTE-URL-PREFIX or tag=TAG");
    let mut soft = false;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "url" => targets = url_targets(proxy, &value),
            "prefix" => targets = prefix_target(proxy, &value).map(|t| vec![t]),
            "tag" => {
                targets = Ok(vec![PurgeTarget::Tag {
                    tag: value.into_owned(),
                    origin: None,
                }])
            }
            "soft" => soft = matches!(&*value, "true" | "1" | "yes"),
            _ => {}
        }
    }
    let targets = match targets {
        Ok(targets) => targets,
        Err(problem) => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": problem }),
            )
        }
    };
    let mut purged = 0;
    for target in &targets {
        purged += proxy.cache().purge(target, soft).await;
    }
    proxy.metrics().purged.inc_by(purged as u64);
    tracing::info!(?targets, soft, purged, "purge");
    json(
        StatusCode::OK,
        serde_json::json!({"purged": purged, "soft": soft}),
    )
}

/// The resource `text` names, over http and over https.
fn url_targets(proxy: &Proxy, text: &str) -> Result<Vec<PurgeTarget>, &'static str> {
    // The host as the client spells it (default port left out) under either scheme: a TLS
    // terminator in front turns `https://host/x` into a request for `host` over http.
    let (authority, path) = split_absolute(proxy, text)?;
    let path = if path.is_empty() { "/" } else { path };
    Ok(["http", "https"]
        .into_iter()
        .map(|scheme| PurgeTarget::Url(PrimaryKey::new(scheme, &authority, path)))
        .collect())
}

fn prefix_target(proxy: &Proxy, text: &str) -> Result<PurgeTarget, &'static str> {
    let (authority, path) = split_absolute(proxy, text)?;
    // `example.com` must not also match `example.community`.
    let path = if path.is_empty() { "/" } else { path };
    Ok(PurgeTarget::Prefix(format!("{authority}{path}")))
}

/// The canonical authority and the rest of an absolute http(s) URL whose host a site
/// serves.
fn split_absolute<'a>(proxy: &Proxy, text: &'a str) -> Result<(String, &'a str), &'static str> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or("the URL must be absolute: scheme://host/path")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => "http",
        "https" => "https",
        _ => return Err("outpost stores only http and https URLs"),
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    if authority.is_empty() || authority.contains('@') {
        return Err("the URL has no host");
    }
    let authority = canonical_authority(scheme, authority).into_owned();
    if !proxy.serves(&authority, if path.is_empty() { "/" } else { path }) {
        return Err("no site serves this host: nothing stored can match");
    }
    Ok((authority, path))
}

/// The primary key of an absolute URL (`http://host[:port]/path?query`).
pub fn key_of_url(text: &str) -> Option<PrimaryKey> {
    let uri: http::Uri = text.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?.as_str();
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Some(PrimaryKey::new(scheme, authority, path))
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::full(format!("{value}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::is_local_host;

    /// DNS rebinding: only names for this listener's own loopback address pass.
    #[test]
    fn only_this_listener_is_a_local_host() {
        let bound: std::net::SocketAddr = "127.0.0.1:9901".parse().unwrap();
        for host in [
            "127.0.0.1:9901",
            "localhost:9901",
            "localhost",
            "[::1]:9901",
            "127.0.0.1",
        ] {
            assert!(is_local_host(host, bound), "{host}");
        }
        for host in [
            "evil.example:9901",
            "127.0.0.1:80",
            "10.0.0.1:9901",
            "",
            "[::1]:80",
        ] {
            assert!(!is_local_host(host, bound), "{host}");
        }
    }
}
