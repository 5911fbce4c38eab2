//! The life of one request, as explicit phases called top to bottom by (`handle`):
//!
//! 1. **request filter** (`request::check_request`): framing and target checks; anything
//!    ambiguous is answered here and never forwarded; so is what outpost answers as the
//!    final recipient (`final_recipient`: `Max-Forwards: 0`, `OPTIONS *`).
//! 2. **route** ([`route::Router::route`]): which site, hence which origin.
//! 3. **cache lookup** ([`crate::cache::Cache::lookup`]): hit, stale-while-revalidate
//!    (a hit plus `fetch::revalidate_in_background`), fetch (a miss, or a stored response
//!    to validate), bypass, or a 504 for offline and `only-if-cached` misses.
//! 4. **upstream request** (`request::upstream_request`): hop-by-hop stripping,
//!    forwarding headers inside the trust boundary, `Via`, the Host the origin sees.
//! 5. **upstream**: a bypass is forwarded as it is (`forward`); a fetch goes through a
//!    coalesced fill (`fetch::through_cache`) whose task feeds the cache's fill writer.
//! 6. **deliver** (`deliver::deliver`): every phase above ends in a
//!    `deliver::Delivery`; client conditionals, Range, encoding, `Age` and `Via` are
//!    applied there once; `handle` adds `Cache-Status` to every response, errors included.
//!
//! The branches, by what the cache found (Cache-Status in brackets):
//! - hit (`hit`): `Lookup::Hit` → `Delivery::Stored`;
//! - stale-while-revalidate (`hit; detail=stale-while-revalidate`): `Lookup::Hit` with a
//!   plan → `Delivery::Stored`, and `fetch::revalidate_in_background`;
//! - revalidated (`fwd=stale; fwd-status=304`): `Lookup::Fetch` → fill → 304 →
//!   `FillStatus::Complete { revalidated }` → `Delivery::Stored`;
//! - stale-if-error (`fwd=stale; detail=http_5xx`): `Lookup::Fetch` → fill →
//!   `FillStatus::StaleOnError` → `Delivery::Stored`;
//! - miss, stored (`fwd=uri-miss; stored`): `Lookup::Fetch` → `Delivery::Streaming`;
//! - uncacheable (`fwd=uri-miss; detail=...`): `FillStatus::Uncacheable` →
//!   `Delivery::Relayed`;
//! - HEAD miss (`fwd=uri-miss` or `fwd=stale`): `Lookup::Fetch` for a HEAD →
//!   `head::forward_head` (forwarded as HEAD; its 200 freshens or drops a stored GET) →
//!   `Delivery::Forwarded`;
//! - bypass (`fwd=bypass` or `fwd=method`): `Lookup::Bypass` → `forward` →
//!   `Delivery::Forwarded` (unsafe methods then invalidate, `invalidate::after_unsafe`);
//! - offline (`detail=offline`): `Lookup::Hit` (anything stored) or `Lookup::OfflineMiss`
//!   → `Delivery::Synthetic` 504.
//!
//! A plain fresh memory hit also leaves its response head with `prepared`, from which
//! `server` answers the same request again without these phases.
//!
//! Errors from any phase become a response in exactly one place,
//! [`crate::error::ProxyError::to_response`]. Connection-level concerns (limits, timeouts,
//! shutdown, the access log's timing) stay in `server`.

pub mod access_log;
pub mod client_cert;
mod connect;
mod ctx;
mod deliver;
mod encode;
mod fetch;
mod final_recipient;
mod forward_proxy;
pub mod forwarding;
mod head;
pub mod interim;
mod invalidate;
mod prefix;
pub mod prepared;
mod proxy;
pub mod range;
mod request;
pub mod respond;
mod resume;
pub mod route;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::cache::lookup::Lookup;
use crate::error::{Fault, ProxyError};
use crate::telemetry::cache_status::{CacheStatus, FwdReason, CACHE_STATUS};
use crate::telemetry::Detail;
pub use ctx::RequestCtx;
use deliver::Delivery;
use forwarding::Downstream;
pub use proxy::{Proxy, SetupError};
use request::upstream_request;
pub use request::{check_request, has_only_chunked_coding};
use route::Site;

/// A client's request for the path view (`outpost-debug: 1`), parsed once rather than
/// on every request's lookup.
const OUTPOST_DEBUG: http::HeaderName = http::HeaderName::from_static("outpost-debug");

/// What the connection layer knows about a request that the request itself does not show.
#[derive(Debug)]
pub struct DownstreamFacts {
    pub peer: SocketAddr,
    /// `http` or `https`: how the client reached this listener (part of the cache key).
    pub scheme: &'static str,
    /// The raw head had both Content-Length and Transfer-Encoding (hyper keeps only the
    /// latter, so the request no longer shows it).
    pub has_conflicting_framing: bool,
    /// The raw head named a transfer coding other than chunked
    /// ([`request::has_only_chunked_coding`]).
    pub has_unknown_transfer_coding: bool,
    /// Where the origin's interim (1xx) responses go, when the client can take them.
    pub interim: Option<interim::InterimRelay>,
    /// The certificate the TLS handshake verified (`tls.client_ca_file`).
    pub client_cert: Option<Arc<client_cert::VerifiedClient>>,
    /// What the TLS handshake asked of the client; `None` on cleartext.
    pub client_auth: Option<crate::server::tls::VerifiedUnder>,
}

/// Runs one request through every phase and returns the response to send, never an error:
/// failures are already turned into responses.
pub async fn handle(
    proxy: &Arc<Proxy>,
    request: Request<Incoming>,
    downstream: DownstreamFacts,
) -> (Response<Body>, Box<RequestCtx>) {
    let peer = downstream.peer;
    let mut request = request;
    let upgrade = take_upgrade(&mut request);
    if request.method() == http::Method::CONNECT && upgrade.is_none() {
        let client = hyper::upgrade::on(&mut request);
        return Box::pin(connect_tunnel(proxy, request.into_parts().0, client, peer)).await;
    }
    let (mut parts, body) = request.into_parts();
    if upgrade.as_ref().is_some_and(|u| u.over_h2) {
        // RFC 8441 §4: judged as the GET upgrade it stands for (routing, logs).
        parts.method = http::Method::GET;
    }
    // Judged with Proxy-Authorization, which stripping removes.
    let target = proxy.forward_proxy.target(&parts, &proxy.router);
    as_received(proxy, &mut parts, &downstream);
    let log = proxy.access_log.clone();
    // Boxed: the context rides along with the response body to the end of the exchange,
    // and hyper moves the request's future and the response by value.
    let mut ctx = Box::new(RequestCtx::new(
        &parts,
        peer,
        log,
        Arc::clone(&proxy.metrics),
    ));
    ctx.client_cert.clone_from(&downstream.client_cert);
    let request_debug = parts
        .headers
        .get(&OUTPOST_DEBUG)
        .is_some_and(|v| v.as_bytes() == b"1");
    let forward_site = match target {
        forward_proxy::Target::Routed => None,
        forward_proxy::Target::Forward(site) => Some(site),
        forward_proxy::Target::Unauthorised => {
            ctx.status = CacheStatus::forward(FwdReason::Bypass);
            let refused = forward_proxy::authentication_required();
            ctx.response_status = refused.status().as_u16();
            return (refused, ctx);
        }
    };
    let request_body = (Body::from(body), upgrade);
    let routing = (forward_site.clone(), &downstream);
    let served = match serve(proxy, &parts, request_body, routing, &mut ctx).await {
        Ok(delivery) => deliver::deliver(proxy, &mut ctx, &parts, delivery).await,
        Err(err) => Err(err),
    };
    let served = match served {
        // Boxed: a rare path's future would otherwise size every request's (see `branch`).
        Err(err @ (ProxyError::StoredBodyLost(_) | ProxyError::RangeNotStored)) => {
            let routing = (forward_site, &downstream);
            Box::pin(serve_again(proxy, &parts, routing, err, &mut ctx)).await
        }
        served => served,
    };
    let reveal = proxy.wants_path_view(peer, request_debug, &parts.headers);
    let mut response = match served {
        Ok(response) => response,
        Err(err) => {
            ctx.own_fields = None;
            failed(proxy, &mut ctx, &err, reveal)
        }
    };
    add_fields_of_this_exchange(proxy, &mut ctx, response.headers_mut());
    if let Some(mirror) = &proxy.mirror {
        mirror.count(parts.uri.path(), ctx.status.outcome().is_hit());
    }
    ctx.response_status = response.status().as_u16();
    if reveal {
        add_path_view(&mut response, &ctx);
    }
    (response, ctx)
}

/// The fields no stored response carries: Cache-Status (RFC 9211 §2: after any members
/// from caches nearer the origin), the site's HSTS on TLS, and the origin's fields that were
/// this client's alone.
fn add_fields_of_this_exchange(proxy: &Proxy, ctx: &mut RequestCtx, headers: &mut http::HeaderMap) {
    headers.append(CACHE_STATUS, ctx.status.to_header_value(&proxy.proxy_name));
    if let Some(hsts) = ctx.hsts.take() {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts);
    }
    if let Some(own_fields) = ctx.own_fields.take() {
        for (name, value) in &own_fields {
            headers.append(name, value.clone());
        }
    }
}

/// The client's wish to switch protocols, an HTTP/1.1 Upgrade or an RFC 8441 extended
/// CONNECT; taken before the request is split, as it is the client connection once switched.
fn take_upgrade(request: &mut Request<Incoming>) -> Option<tunnel::Upgrade> {
    if let Some(protocol) = tunnel::requested(request) {
        let client = hyper::upgrade::on(&mut *request);
        return Some(tunnel::Upgrade {
            protocol,
            client,
            over_h2: false,
        });
    }
    let protocol = tunnel::extended_connect(request)?;
    Some(tunnel::Upgrade {
        protocol,
        client: hyper::upgrade::on(request),
        over_h2: true,
    })
}

/// The request as every phase judges it: its fields as they will be forwarded (the client
/// certificate's only as this connection or a trusted proxy says), and a mirror's Simple
/// API request asking in its canonical spelling.
fn as_received(proxy: &Proxy, parts: &mut http::request::Parts, downstream: &DownstreamFacts) {
    as_forwarded(&mut parts.headers);
    // Before any phase looks: a Client-Cert may choose a variant (`Vary: Client-Cert`).
    client_cert::convey(
        &mut parts.headers,
        downstream.client_cert.as_ref().and_then(|c| c.fields()),
        proxy.forwarding.is_trusted(downstream.peer.ip()),
    );
    if let Some(mirror) = &proxy.mirror {
        mirror.negotiate(parts);
    }
}

/// The request's fields as they will be forwarded. Every phase judges the request so: a
/// field the client names in Connection never reaches the origin, so it must not choose a
/// variant or a stored response either (a `Connection: Accept-Language` would otherwise
/// store the default page as the French one).
fn as_forwarded(headers: &mut http::HeaderMap) {
    let takes_trailers = forwarding::accepts_trailers(headers);
    forwarding::strip_hop_by_hop(headers);
    if takes_trailers {
        // Trailers pass through end to end, so the next hop may send them (RFC 9110
        // §10.1.4); gRPC needs this to reach its origin.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The path view for a trusted debugging client (`outpost-path`): what outpost did.
fn add_path_view(response: &mut Response<Body>, ctx: &RequestCtx) {
    let age = response
        .headers()
        .get(header::AGE)
        .and_then(|v| v.to_str().ok());
    if let Ok(value) = HeaderValue::from_str(&ctx.path_view(age)) {
        response.headers_mut().insert("outpost-path", value);
    }
}

/// A CONNECT (forward-proxy use): judged with its Proxy-Authorization, before hop-by-hop
/// fields are stripped, and never near the cache.
async fn connect_tunnel(
    proxy: &Arc<Proxy>,
    parts: http::request::Parts,
    client: hyper::upgrade::OnUpgrade,
    peer: SocketAddr,
) -> (Response<Body>, Box<RequestCtx>) {
    let log = proxy.access_log.clone();
    let mut ctx = Box::new(RequestCtx::new(
        &parts,
        peer,
        log,
        Arc::clone(&proxy.metrics),
    ));
    ctx.status = CacheStatus::forward(FwdReason::Method);
    ctx.host = parts
        .uri
        .authority()
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut response = match connect::open(proxy, &parts, client).await {
        Ok(response) => response,
        Err(err) => failed(proxy, &mut ctx, &err, false),
    };
    response
        .headers_mut()
        .append(CACHE_STATUS, ctx.status.to_header_value(&proxy.proxy_name));
    ctx.response_status = response.status().as_u16();
    (response, ctx)
}

/// Logs and records a failed request, and makes its response.
fn failed(proxy: &Proxy, ctx: &mut RequestCtx, err: &ProxyError, reveal: bool) -> Response<Body> {
    let peer = ctx.peer;
    match err.fault() {
        Fault::Downstream => tracing::debug!(%peer, error = %err, "request refused"),
        Fault::Upstream => {
            tracing::warn!(%peer, error = %err, "origin failed");
            let error = err.proxy_status_error();
            let board = &proxy.metrics.board;
            board.record_origin_error(ctx.site_name(), ctx.url(), error, err.to_string());
        }
        Fault::Internal => tracing::error!(%peer, error = %err, "internal error"),
    }
    ctx.error = Some(err.proxy_status_error());
    err.to_response(&proxy.proxy_name, reveal)
}

/// The request filter: what the head as received says of its framing, then
/// [`check_request`], and for HTTP/2 the header limits HTTP/1 heads are held to as read.
///
/// # Errors
/// The refusal, as the client is to get it.
fn request_filter(
    proxy: &Proxy,
    parts: &http::request::Parts,
    facts: &DownstreamFacts,
) -> Result<(), ProxyError> {
    if facts.has_conflicting_framing {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if facts.has_unknown_transfer_coding {
        return Err(ProxyError::NotImplemented(
            "a transfer coding other than chunked",
        ));
    }
    check_request(parts)?;
    if parts.version == http::Version::HTTP_2 {
        request::check_h2_header_section(parts, &proxy.server)?;
    }
    Ok(())
}

/// The phases up to the delivery: filter, route, lookup, then the branch the lookup chose.
async fn serve(
    proxy: &Arc<Proxy>,
    parts: &http::request::Parts,
    (body, upgrade): (Body, Option<tunnel::Upgrade>),
    (forward_site, facts): (Option<Arc<Site>>, &DownstreamFacts),
    ctx: &mut RequestCtx,
) -> Result<Delivery, ProxyError> {
    request_filter(proxy, parts, facts)?;
    if final_recipient::answers_here(parts) {
        ctx.status = CacheStatus::default().with_detail(Detail::FinalRecipient);
        return Ok(Delivery::Synthetic(final_recipient::answer(parts)));
    }
    let host = route::request_host(parts, facts.scheme)?;
    ctx.host = host.as_deref().unwrap_or_default().to_owned();
    let is_forwarded = forward_site.is_some();
    let site = match forward_site {
        Some(site) => site,
        None => Arc::clone(proxy.router.route(host.as_deref(), parts.uri.path())?),
    };
    ctx.site = Some(Arc::clone(&site));
    if site.redirect_https && facts.scheme == "http" {
        ctx.status = CacheStatus::forward(FwdReason::Bypass);
        let redirect = respond::redirect_to_https(host.as_deref(), parts, proxy.https_port);
        return Ok(Delivery::Synthetic(redirect));
    }
    if facts.scheme == "https" {
        ctx.hsts.clone_from(&site.hsts);
    }
    let authority = host.as_deref().unwrap_or("");
    if parts.method.as_str() == "PURGE" {
        ctx.status = CacheStatus::forward(FwdReason::Bypass).with_detail(Detail::Purge);
        let response = Box::pin(invalidate::purge_request(
            proxy,
            parts,
            facts.peer,
            facts.scheme,
            authority,
        ))
        .await?;
        return Ok(Delivery::Synthetic(response));
    }
    if !is_forwarded {
        // A forward-proxy target has its own allowances (`forward_proxy`).
        check_client_auth(proxy, &site, facts, host.as_deref(), ctx)?;
    }
    let downstream = Downstream {
        peer: facts.peer,
        scheme: facts.scheme,
        host: host.as_deref(),
    };
    if let Some(upgrade) = upgrade {
        ctx.status = CacheStatus::forward(FwdReason::Bypass);
        let response =
            Box::pin(tunnel::open(proxy, &site, parts, downstream, upgrade, ctx)).await?;
        ctx.status.fwd_status = Some(response.status().as_u16());
        return Ok(Delivery::Forwarded(response));
    }
    let request = Routed {
        proxy,
        site: &site,
        parts,
        downstream,
        interim: facts.interim.as_ref(),
    };
    let lookup = proxy
        .cache
        .lookup(parts, facts.scheme, authority, ctx.now)
        .await;
    branch(&request, lookup, body, ctx).await
}

/// The site asks for the client certificates the connection was verified for. A TLS
/// connection whose handshake asked another site's (its SNI named another host) is sent
/// to open its own (421, RFC 9110 §15.5.20, as nginx answers). The cleartext listener
/// asks for none, so it must not be a way around a site that requires one: refused,
/// unless a trusted proxy in front did the check.
fn check_client_auth(
    proxy: &Proxy,
    site: &Site,
    facts: &DownstreamFacts,
    host: Option<&str>,
    ctx: &mut RequestCtx,
) -> Result<(), ProxyError> {
    let refused = match facts.client_auth.as_deref() {
        Some(verified_under) if *verified_under != site.client_auth => {
            ProxyError::OtherSitesHandshake(host.unwrap_or_default().to_string())
        }
        None if site.requires_client_cert && !proxy.forwarding.is_trusted(facts.peer.ip()) => {
            ProxyError::Forbidden("this site requires a client certificate: use https")
        }
        _ => return Ok(()),
    };
    ctx.status = CacheStatus::forward(FwdReason::Bypass);
    Err(refused)
}

/// The request served again, at no cost to the client, after a failure met before any of
/// its answer was sent:
/// - its stored body turned out lost ([`ProxyError::StoredBodyLost`]): the entry is
///   dropped (every variant, as the lost body may be an encoding's), and the lookup, now a
///   miss, fetches the object again;
/// - the object a Range miss waited for was not stored after all
///   ([`ProxyError::RangeNotStored`], RFC 9110 §14): the range is forwarded, rather than
///   fetching the whole object once more.
async fn serve_again(
    proxy: &Arc<Proxy>,
    parts: &http::request::Parts,
    routing: (Option<Arc<Site>>, &DownstreamFacts),
    failure: ProxyError,
    ctx: &mut RequestCtx,
) -> Result<Response<Body>, ProxyError> {
    if let ProxyError::StoredBodyLost(lost) = &failure {
        tracing::warn!(
            uri = %parts.uri,
            "{lost}: the entry is dropped and the object fetched again"
        );
        if let Some(key) = ctx.key {
            proxy.cache.drop_lost(&key).await;
        }
    } else {
        tracing::warn!(uri = %parts.uri, "{failure}: the range is forwarded");
        ctx.forwards_range = true;
    }
    ctx.forget_hit();
    // A hit's request body is never read, and no GET sends one on a fill.
    let delivery = serve(proxy, parts, (Body::empty(), None), routing, ctx).await?;
    deliver::deliver(proxy, ctx, parts, delivery).await
}

/// A request that has been filtered and routed.
struct Routed<'a> {
    proxy: &'a Arc<Proxy>,
    site: &'a Arc<Site>,
    parts: &'a http::request::Parts,
    downstream: Downstream<'a>,
    interim: Option<&'a interim::InterimRelay>,
}

impl<'a> Routed<'a> {
    fn miss(&self, plan: crate::cache::lookup::MissPlan) -> fetch::Miss<'a> {
        fetch::Miss {
            proxy: self.proxy,
            site: self.site,
            parts: self.parts,
            downstream: self.downstream,
            interim: self.interim,
            plan,
        }
    }
}

/// A hit: delivered stored, revalidated in the background when stale-while-revalidate
/// allows it, or noted for `prepared` when plain.
fn hit(
    request: &Routed<'_>,
    entry: Arc<crate::cache::entry::StoredResponse>,
    set: Arc<crate::cache::memory::VariantSet>,
    revalidate: Option<crate::cache::lookup::MissPlan>,
    ctx: &mut RequestCtx,
) -> Delivery {
    ctx.key = Some(entry.meta.key);
    ctx.variant = Some(entry.meta.variant);
    if let Some(plan) = revalidate {
        fetch::revalidate_in_background(&request.miss(plan));
    } else if ctx.status.detail.is_none() && request.proxy.prepared_hits.is_on() {
        ctx.hit_source = Some(ctx::HitSource {
            set: Arc::clone(&set),
            entry: Arc::clone(&entry),
            body_of: None,
        });
    }
    let set = Some(set);
    Delivery::Stored { entry, set }
}

/// A Range request a partial entry may answer: the entry, when it holds every byte asked
/// for and may be used as it is; otherwise what to do instead, with the representation's
/// length now known. A partial entry that must be validated and holds the range has the
/// range asked for with its validators (RFC 9111 §4.3.1): a 304 answers from its pieces.
fn from_partial(
    parts: &http::request::Parts,
    entry: Arc<crate::cache::partial::PartialEntry>,
    must_validate: bool,
    mut otherwise: Box<Lookup>,
    max_offset: u64,
) -> FromPartial {
    let answers = range::partial_answers(&entry, parts);
    if answers && !must_validate {
        return FromPartial::Serve(entry);
    }
    let held = Some(range::Held::of(&entry));
    if let Lookup::Fetch(plan) = otherwise.as_mut() {
        if answers && range::forwards(parts, held, max_offset) {
            plan.reason = FwdReason::Stale;
            plan.stale_partial = Some(entry);
        }
    }
    FromPartial::Instead(otherwise, held)
}

/// What a partial entry holds of the representation a Range miss that found none asks
/// for, once the download of it being stopped now has kept its start (a `curl -C -` sent
/// the moment after a cancel): the range is then decided on as if the lookup had found it
/// (see [`range::forwards`]). `None` when no download of it is being stopped.
async fn held_once_stopped(
    proxy: &Proxy,
    plan: &crate::cache::lookup::MissPlan,
    parts: &http::request::Parts,
) -> Option<range::Held> {
    let cache = &proxy.cache;
    let whole = crate::cache::fill::FillKey {
        key: plan.key,
        variant_hint: plan.variant_hint,
    };
    cache
        .coalescer()
        .being_abandoned(&whole)?
        .wait_settled()
        .await;
    let entry = cache.prefix_to_complete(&plan.key, parts).await?;
    Some(range::Held::of(&entry))
}

/// What [`from_partial`] decided.
enum FromPartial {
    Serve(Arc<crate::cache::partial::PartialEntry>),
    /// Another branch, and what the partial entry holds of the representation.
    Instead(Box<Lookup>, Option<range::Held>),
}

/// The branch the lookup chose, up to what is to be delivered.
///
/// The paths that go to the origin are boxed: their futures are many kilobytes, and
/// unboxed they would size every request's future, hits included, which hyper moves in
/// memory on each request (measured: a 17 KB future, memmove 8% of a hit's CPU).
async fn branch(
    request: &Routed<'_>,
    lookup: Lookup,
    body: Body,
    ctx: &mut RequestCtx,
) -> Result<Delivery, ProxyError> {
    let proxy = request.proxy;
    let offline = || Delivery::Synthetic(respond::gateway_timeout_offline());
    let max_offset = proxy.cache.range_fill_max_offset();
    let (lookup, held) = match lookup {
        Lookup::Partial {
            entry,
            status,
            otherwise,
            must_validate,
        } => match from_partial(request.parts, entry, must_validate, otherwise, max_offset) {
            FromPartial::Serve(entry) => {
                ctx.status = status;
                ctx.key = Some(entry.meta.key);
                ctx.variant = Some(entry.meta.variant);
                ctx.hit_tier = crate::telemetry::Tier::Memory;
                return Ok(Delivery::Partial(entry));
            }
            FromPartial::Instead(lookup, held) => (*lookup, held),
        },
        other => (other, None),
    };
    match lookup {
        Lookup::Hit {
            entry,
            set,
            status,
            tier,
            revalidate,
        } => {
            ctx.status = status;
            ctx.hit_tier = tier;
            Ok(hit(request, entry, set, revalidate, ctx))
        }
        Lookup::OnlyIfCachedMiss => {
            // RFC 9111 §5.2.1.7: nothing suitable is stored and the origin may not be asked.
            ctx.status = CacheStatus::default().with_detail(Detail::OnlyIfCached);
            Ok(Delivery::Synthetic(
                respond::gateway_timeout_only_if_cached(),
            ))
        }
        // Offline, nothing is forwarded: misses, unsafe methods, preconditions and the rest.
        Lookup::OfflineMiss | Lookup::Bypass(_) if proxy.cache.is_offline() => {
            ctx.status = CacheStatus::default().with_detail(Detail::Offline);
            Ok(offline())
        }
        Lookup::OfflineMiss => {
            ctx.status = CacheStatus::default().with_detail(Detail::Offline);
            Ok(offline())
        }
        Lookup::Bypass(status) => {
            ctx.status = status;
            Box::pin(bypass(request, body, ctx)).await
        }
        Lookup::Partial { .. } => Err(ProxyError::Internal("nested partial lookup".into())),
        Lookup::Fetch(mut plan) => {
            let held = match held {
                None if request.parts.headers.contains_key(header::RANGE) => {
                    Box::pin(held_once_stopped(proxy, &plan, request.parts)).await
                }
                held => held,
            };
            if ctx.forwards_range || range::forwards(request.parts, held, max_offset) {
                // Coalesced only with requests for the same range (see `fetch`).
                plan.forwards_range = true;
            }
            ctx.key = Some(plan.key);
            ctx.variant = plan.stale.as_ref().map(|entry| entry.meta.variant);
            if request.parts.method == http::Method::HEAD {
                return Box::pin(head::forward_head(request.miss(plan), body, ctx)).await;
            }
            Box::pin(fetch::through_cache(request.miss(plan), ctx)).await
        }
    }
}

/// Forwards without the cache; a non-error answer to an unsafe method invalidates (RFC 9111
/// §4.4, RFC 9875 §3).
async fn bypass(
    request: &Routed<'_>,
    body: Body,
    ctx: &mut RequestCtx,
) -> Result<Delivery, ProxyError> {
    let (proxy, parts) = (request.proxy, request.parts);
    let to = (request.downstream, request.interim);
    let sent_at = SystemTime::now();
    let response = forward(proxy, request.site, parts, body, to, ctx).await?;
    ctx.status.fwd_status = Some(response.status().as_u16());
    if invalidate::is_safe_method(&parts.method) {
        return Ok(Delivery::Forwarded(response.map(Body::from)));
    }
    let authority = request.downstream.host.unwrap_or("");
    let (head, body) = response.into_parts();
    let origin = (request.downstream.scheme, authority);
    let peer = request.downstream.peer;
    invalidate::after_unsafe(proxy, peer, &parts.uri, origin, &head).await;
    let response = Response::from_parts(head, body);
    // A POST's answer is stored only after the invalidation above (RFC 9111 §4.4), which
    // would remove it.
    let times = (sent_at, SystemTime::now());
    match fetch::keep_post_response(request, response, times, ctx).await {
        fetch::PostResponse::Kept(delivery) => delivery,
        fetch::PostResponse::Forward(response) => Ok(Delivery::Forwarded(response.map(Body::from))),
    }
}

/// Forwards a request without the cache; the response streams back with its hop-by-hop
/// fields removed.
async fn forward(
    proxy: &Proxy,
    site: &Site,
    parts: &http::request::Parts,
    body: Body,
    (downstream, interim): (Downstream<'_>, Option<&interim::InterimRelay>),
    ctx: &mut RequestCtx,
) -> Result<Response<crate::upstream::OriginBody>, ProxyError> {
    let (upstream_request, client) =
        upstream_request(proxy, site, parts.clone(), body, downstream)?;
    let upstream_request = interim::relay_to(upstream_request, interim);
    ctx.client = client;
    let sent_at = Instant::now();
    let response = proxy.send_upstream(upstream_request, site, None).await;
    ctx.upstream_duration = Some(sent_at.elapsed());
    let (mut head, body) = response?.into_parts();
    forwarding::clean_response_head(&mut head.headers);
    Ok(Response::from_parts(head, body))
}
