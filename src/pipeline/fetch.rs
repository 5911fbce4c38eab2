//! The fetch phase: a miss (or a stored response to validate) joins or starts a coalesced
//! fill, the fill's task talks to the origin and feeds the cache's [`FillWriter`], and every
//! waiting request is handed a [`Delivery`] from the fill.
//!
//! The fill task ([`FillJob::run`]) decides what happens to the origin's answer:
//! - 304 to our validators: the stored headers are freshened (RFC 9111 §4.3.4) and the
//!   stored body is served;
//! - an error or no answer while a stale response may serve (RFC 5861 §4): that response;
//! - storable (RFC 9111 §3, `policy`): streamed into the fill, which stores it;
//! - not storable: handed to the leader alone; followers fetch on their own, and the URL is
//!   remembered as hit-for-miss so the next burst does not queue behind one request.
//!
//! Fills are admitted under the cache's caps ([`crate::cache::Cache::admit_fill`]); a fill
//! that cannot get a slot ends every waiting request with 503.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use super::deliver::Delivery;
use super::forwarding::{self, Downstream};
use super::interim::{self, InterimRelay};
use super::prefix;
use super::resume::OriginResume;
use super::route::Site;
use super::{upstream_request, Proxy, RequestCtx};
use crate::body::Body;
use crate::cache::entry::{EntryMeta, StoredResponse};
use crate::cache::fill::{BudgetHold, Fill, FillKey, FillReader, FillStatus, FillTarget, Role};
use crate::cache::key::{VariantKey, Vary};
use crate::cache::lookup::MissPlan;
use crate::cache::partial::{ContentRange, PartialEntry};
use crate::cache::policy::{self, FetchedFor, Freshness, NoStoreReason, ResponseDirectives};
use crate::cache::StoreChange;
use crate::error::{OriginFailure, ProxyError};
use crate::telemetry::cache_status::CacheStatus;
use crate::telemetry::metrics::CountedWhile;
use crate::telemetry::{Detail, Tier};
use crate::upstream::OriginBody;

/// What a fetch needs to know about the request that started it.
pub(super) struct Miss<'a> {
    pub proxy: &'a Arc<Proxy>,
    pub site: &'a Arc<Site>,
    pub parts: &'a http::request::Parts,
    pub downstream: Downstream<'a>,
    /// Where the origin's interim responses go, for the requests a client waits for.
    pub interim: Option<&'a InterimRelay>,
    pub plan: MissPlan,
}

/// Serves the request through a fill: joins one in flight for the same variant, or leads a
/// new one. Requests that may not share a fetch lead one nobody can join.
pub(super) async fn through_cache(
    mut miss: Miss<'_>,
    ctx: &mut RequestCtx,
) -> Result<Delivery, ProxyError> {
    let proxy = miss.proxy;
    let cache = &proxy.cache;
    ctx.status = CacheStatus::forward(miss.plan.reason);
    if miss.plan.is_coalescable && !cache.is_hit_for_miss(&miss.plan.key).await {
        let fill_key = FillKey {
            key: miss.plan.key,
            variant_hint: fill_variant(&miss),
        };
        let (role, fill, reader) = cache.coalescer().join(fill_key);
        match role {
            Role::Leader { after_abandoned } => {
                // The fill this request would have joined may have stored its response and
                // left between the lookup and now: serve that instead of fetching again.
                if let Some((set, entry)) = cache.stored_meanwhile(&miss.plan, miss.parts, ctx.now)
                {
                    fill.settle_with(Arc::clone(&entry), false);
                    cache.coalescer().leave(&fill_key, &fill);
                    ctx.status = CacheStatus::hit(entry.meta.freshness.ttl_seconds(ctx.now));
                    ctx.hit_tier = Tier::Memory;
                    return Ok(Delivery::Stored {
                        entry,
                        set: Some(set),
                    });
                }
                if let Some(abandoned) = after_abandoned {
                    // A client's retry right after a cancel: what the cancelled download
                    // brought is being kept (read back from its file), and this fetch can
                    // start from it rather than fetch those bytes again.
                    Box::pin(abandoned.wait_settled()).await;
                }
                find_prefix(&mut miss).await;
                return lead(&miss, (fill, reader), Some(fill_key), ctx).await;
            }
            Role::Follower => {
                if let Some(outcome) = follow(&miss, fill, reader, ctx).await {
                    return outcome;
                }
            }
        }
    }
    find_prefix(&mut miss).await;
    lead(&miss, cache.coalescer().solo(), None, ctx).await
}

/// The kept prefix a fill of the whole representation may start from (see
/// [`MissPlan::prefix`]): not for a fill that validates stored responses (its 304 must
/// select one), nor one that forwards the client's range, nor behind the package mirror
/// (whose digest checks cover the origin's whole body). Looked up (boxed: it may read the
/// disk tier) only where a partial entry may be held.
async fn find_prefix(miss: &mut Miss<'_>) {
    let plan = &miss.plan;
    let cache = &miss.proxy.cache;
    if plan.forwards_range
        || plan.stale.is_some()
        || plan.stale_partial.is_some()
        || !plan.other_variants.is_empty()
        || miss.proxy.mirror.is_some()
        || !cache.may_hold_partial(&plan.key)
    {
        return;
    }
    miss.plan.prefix = Box::pin(cache.prefix_to_complete(&plan.key, miss.parts)).await;
}

/// What a miss's fill is coalesced under beside its key: the variant it asks for, and for a
/// range forwarded with its Range, that range as written. Requests for one range then share
/// one origin request (a burst of players seeking to one place, or of clients of an origin
/// that ignores Range and answers each with the whole object), and no request joins a fetch
/// of another range.
fn fill_variant(miss: &Miss<'_>) -> VariantKey {
    let range = miss
        .plan
        .forwards_range
        .then(|| miss.parts.headers.get(header::RANGE))
        .flatten();
    match range {
        Some(range) => {
            let range = String::from_utf8_lossy(range.as_bytes());
            miss.plan.variant_hint.derived(&format!("range\0{range}"))
        }
        None => miss.plan.variant_hint,
    }
}

/// Starts the fill task and serves the leader from it.
async fn lead(
    miss: &Miss<'_>,
    (fill, reader): (Arc<Fill>, FillReader),
    fill_key: Option<FillKey>,
    ctx: &mut RequestCtx,
) -> Result<Delivery, ProxyError> {
    let (job, mut leader_rx, client) = FillJob::prepare(miss, &fill, fill_key, true)?;
    ctx.client = client;
    let started = Instant::now();
    // Its own task: a leader whose client hangs up must not cancel the fetch for others.
    // Started here, so that the request reaches the origin before this task yields.
    miss.proxy.cache.start_fill(job.run());
    // A Range request's leader may be answered before the fill's status: a piece of the
    // representation streaming to it. Boxed, and only then: every other miss's future
    // stays as small as it was (an early answer is boxed too, as it is kept across awaits).
    let (status, early) = if miss.parts.headers.contains_key(header::RANGE) {
        match Box::pin(status_or_answer(&fill, &mut leader_rx)).await {
            Ok(status) => (status, None),
            Err(Ok(LeaderAnswer::PieceStreaming(response))) => {
                ctx.upstream_duration = Some(started.elapsed());
                return Ok(piece_as_it_arrives(response, ctx));
            }
            Err(answer) => (fill.wait_status().await, Some(Box::new(answer))),
        }
    } else {
        (fill.wait_status().await, None)
    };
    ctx.upstream_duration = Some(started.elapsed());
    if let FillStatus::Uncacheable(reason) = status {
        drop(reader);
        let answer = match early {
            Some(answer) => *answer,
            None => leader_rx.await,
        };
        let answer = answer.map_err(|_| {
            ProxyError::Internal("fill ended without handing over its response".into())
        })?;
        ctx.status.detail = Some(Detail::NotStored(reason.as_str()));
        return answered_alone(answer, miss.parts, ctx);
    }
    let answer = match early {
        Some(answer) => answer.ok(),
        None => leader_rx.try_recv().ok(),
    };
    // A revalidation whose 304 set cookies: the shared entry for everyone, the cookies for
    // the client that caused it (sent before the fill settled).
    let status = match (status, answer) {
        (FillStatus::Complete { .. }, Some(LeaderAnswer::Own(entry))) => FillStatus::Complete {
            entry,
            revalidated: true,
        },
        (status, Some(LeaderAnswer::OwnFields(fields))) => {
            ctx.own_fields = Some(fields);
            status
        }
        (status, _) => status,
    };
    delivery_from(status, fill, reader, ctx, |_| true)
        .unwrap_or_else(|| Err(ProxyError::Internal("fill still pending".into())))
}

/// The fill's status once it is no longer pending, or (`Err`) the answer for the leader
/// alone if that comes first; the answer is looked at first, since a piece may have been
/// read whole and the fill settled by the time the leader looks.
async fn status_or_answer(
    fill: &Fill,
    leader_rx: &mut oneshot::Receiver<LeaderAnswer>,
) -> Result<FillStatus, Result<LeaderAnswer, oneshot::error::RecvError>> {
    let status = fill.wait_status();
    tokio::pin!(status);
    std::future::poll_fn(|cx| match Pin::new(&mut *leader_rx).poll(cx) {
        Poll::Ready(answer) => Poll::Ready(Err(answer)),
        Poll::Pending => status.as_mut().poll(cx).map(Ok),
    })
    .await
}

/// The leader's 206 for its own range, sent as it arrives while the fill reads the piece
/// whole to keep it (RFC 9111 §3.3); the requests that wait on the fill are served from
/// the kept piece.
fn piece_as_it_arrives(response: Response<Body>, ctx: &mut RequestCtx) -> Delivery {
    ctx.status.fwd_status = Some(StatusCode::PARTIAL_CONTENT.as_u16());
    ctx.status.stored = true;
    ctx.status.detail = Some(Detail::Partial);
    Delivery::Relayed(response)
}

/// What the leader of an uncacheable fill is answered with: the fill's `answer`, for its
/// request `parts` (Cache-Status in `ctx`).
fn answered_alone(
    answer: LeaderAnswer,
    parts: &http::request::Parts,
    ctx: &mut RequestCtx,
) -> Result<Delivery, ProxyError> {
    Ok(match answer {
        // A piece streaming to the leader whose fill settled first (not kept after all).
        LeaderAnswer::Relayed(response) | LeaderAnswer::PieceStreaming(response) => {
            ctx.status.fwd_status = Some(response.status().as_u16());
            Delivery::Relayed(response)
        }
        LeaderAnswer::Own(entry) => {
            ctx.status.fwd_status = Some(304);
            Delivery::Stored { entry, set: None }
        }
        LeaderAnswer::OwnFields(_) => {
            return Err(ProxyError::Internal(
                "fill stored a response yet called it uncacheable".into(),
            ))
        }
        LeaderAnswer::PartialStale(entry, error, fwd_status) => {
            ctx.status.fwd_status = fwd_status;
            ctx.status.detail = Some(Detail::Error(error));
            ctx.status.ttl = Some(entry.meta.freshness.ttl_seconds(SystemTime::now()));
            if !super::range::partial_answers(&entry, parts) {
                return Err(ProxyError::Internal(
                    "a stale partial entry no longer holds the range".into(),
                ));
            }
            Delivery::Partial(entry)
        }
        LeaderAnswer::PartialRevalidated(entry, own_fields) => {
            ctx.status.fwd_status = Some(304);
            ctx.status.stored = true;
            ctx.status.detail = Some(Detail::Partial);
            // Validated because it held the range; its pieces are unchanged.
            if !super::range::partial_answers(&entry, parts) {
                return Err(ProxyError::Internal(
                    "a revalidated partial entry no longer holds the range".into(),
                ));
            }
            ctx.own_fields = (!own_fields.is_empty()).then_some(own_fields);
            Delivery::Partial(entry)
        }
        LeaderAnswer::Partial(entry, as_received, own_fields) => {
            ctx.status.fwd_status = Some(206);
            ctx.status.stored = true;
            ctx.status.detail = Some(Detail::Partial);
            if super::range::partial_answers(&entry, parts) {
                ctx.own_fields = (!own_fields.is_empty()).then_some(own_fields);
                Delivery::Partial(entry)
            } else {
                Delivery::Relayed(as_received)
            }
        }
    })
}

/// Waits for the fill another request leads. `None`: fetch alone (waited too long, the
/// response is not shareable, or its Vary selects another variant).
async fn follow(
    miss: &Miss<'_>,
    fill: Arc<Fill>,
    reader: FillReader,
    ctx: &mut RequestCtx,
) -> Option<Result<Delivery, ProxyError>> {
    let proxy = miss.proxy;
    let waited_at = Instant::now();
    let waiting = CountedWhile::new(&proxy.metrics.coalesced_waiting);
    let status = tokio::time::timeout(proxy.cache.coalesce_wait(), fill.wait_status()).await;
    drop(waiting);
    let waited = waited_at.elapsed();
    ctx.upstream_duration = Some(waited);
    proxy.metrics.coalesced_waits.inc();
    proxy
        .metrics
        .coalesced_wait_seconds
        .observe(waited.as_secs_f64());
    let status = status.ok()?;
    ctx.status.collapsed = true;
    if let FillStatus::Uncacheable(NoStoreReason::PartialContent) = status {
        // The leader's 206 for this same range went to it alone; it is kept as a partial
        // entry, which now holds this request's range too.
        let entry = partial_for_follower(miss, ctx).await;
        if entry.is_none() {
            ctx.status.collapsed = false;
        }
        return entry.map(|entry| Ok(Delivery::Partial(entry)));
    }
    let headers = &miss.parts.headers;
    // Left behind, this request asks for the rest on its own client's behalf.
    let reader = if fill.may_resume() {
        reader.speaking_for(proxy.forwarding.fields_for(headers, miss.downstream))
    } else {
        reader
    };
    let selects = |meta: &EntryMeta| meta.vary.variant_key(headers) == Some(meta.variant);
    let delivery = delivery_from(status, fill, reader, ctx, selects);
    if delivery.is_none() {
        ctx.status.collapsed = false;
    }
    delivery
}

/// The partial entry a request that waited on a fetch of its range may now be served from:
/// the one the leader's 206 was kept in, when it answers the range fresh.
async fn partial_for_follower(
    miss: &Miss<'_>,
    ctx: &mut RequestCtx,
) -> Option<Arc<crate::cache::partial::PartialEntry>> {
    if !miss.plan.forwards_range {
        return None;
    }
    let cache = &miss.proxy.cache;
    let entry = cache
        .partial_to_serve(&miss.plan.key, miss.parts, ctx.now)
        .await
        .filter(|entry| super::range::partial_answers(entry, miss.parts))?;
    ctx.status.fwd_status = Some(StatusCode::PARTIAL_CONTENT.as_u16());
    ctx.status.ttl = Some(entry.meta.freshness.ttl_seconds(ctx.now));
    Some(entry)
}

/// What a request waiting on a fill is sent, by the fill's status; `None` when the status
/// is not for this request (`selects` refuses the variant, or it is not shareable).
fn delivery_from(
    status: FillStatus,
    fill: Arc<Fill>,
    reader: FillReader,
    ctx: &mut RequestCtx,
    selects: impl Fn(&EntryMeta) -> bool,
) -> Option<Result<Delivery, ProxyError>> {
    let now = ctx.now;
    let status_line = &mut ctx.status;
    let forwarded = |meta: &EntryMeta| fill.forwarded_status().unwrap_or(meta.status.as_u16());
    match status {
        FillStatus::Streaming { meta, storing } if selects(&meta) => {
            status_line.fwd_status = Some(forwarded(&meta));
            status_line.ttl = Some(meta.freshness.ttl_seconds(now));
            // Known to fit where it is going: it will be stored unless the origin fails
            // mid-body (RFC 9211 §2.5).
            status_line.stored =
                storing && crate::cache::entry::content_length(&meta.headers).is_some();
            Some(Ok(Delivery::Streaming { meta, reader, fill }))
        }
        // Ended unstored before this request looked: its reader, taken before the end,
        // still reads the whole body.
        FillStatus::Streamed { meta } if selects(&meta) => {
            status_line.fwd_status = Some(forwarded(&meta));
            status_line.ttl = Some(meta.freshness.ttl_seconds(now));
            Some(Ok(Delivery::Streaming { meta, reader, fill }))
        }
        FillStatus::Complete { entry, revalidated } if selects(&entry.meta) => {
            status_line.fwd_status = Some(if revalidated {
                304
            } else {
                forwarded(&entry.meta)
            });
            status_line.ttl = Some(entry.meta.freshness.ttl_seconds(now));
            status_line.stored = true;
            Some(Ok(Delivery::Stored { entry, set: None }))
        }
        FillStatus::StaleOnError {
            entry,
            error,
            fwd_status,
        } if selects(&entry.meta) => {
            status_line.ttl = Some(entry.meta.freshness.ttl_seconds(now));
            status_line.detail = Some(Detail::Error(error));
            status_line.fwd_status = fwd_status;
            Some(Ok(Delivery::Stored { entry, set: None }))
        }
        FillStatus::Failed(err) => Some(Err(err)),
        _ => None,
    }
}

/// RFC 9110 §9.3.3: the response to the POST `request` (already forwarded, its target
/// invalidated) is stored for later GET and HEAD requests of the target when it says it is
/// the target's current representation and may be stored as a GET's response would be
/// (RFC 9111 §3, judged on the POST's request headers). It then streams to the POST's
/// client through a fill nobody else joins; otherwise it comes back to be forwarded as it
/// came. Not for a POST with preconditions or a Range (the origin evaluated those, and the
/// response must not be judged on them again), nor behind a package mirror (whose stored
/// responses are its own rewriting of the origin's), nor from a peer whose unsafe requests
/// may not invalidate (`cache.unsafe_invalidation`): it could not replace either.
pub(super) async fn keep_post_response(
    request: &super::Routed<'_>,
    response: Response<OriginBody>,
    times: (SystemTime, SystemTime),
    ctx: &mut RequestCtx,
) -> PostResponse {
    let (proxy, parts, downstream) = (request.proxy, request.parts, request.downstream);
    let cache = &proxy.cache;
    let origin = (downstream.scheme, downstream.host.unwrap_or(""));
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let (head, body) = response.into_parts();
    let names_target = || {
        head.headers
            .get(header::CONTENT_LOCATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|location| {
                super::invalidate::same_origin_reference(location, &parts.uri, origin)
            })
            .is_some_and(|resolved| resolved == target)
    };
    let has_conditions = || {
        policy::CLIENT_CONDITIONALS
            .iter()
            .chain([&header::RANGE])
            .any(|name| parts.headers.contains_key(name))
    };
    let may_keep = parts.method == Method::POST
        && cache.is_enabled()
        && proxy.mirror.is_none()
        && super::invalidate::unsafe_requests_change_cache(proxy, downstream.peer)
        && !has_conditions()
        && policy::post_response_reusable(head.status, &head.headers, cache.policy())
        && names_target();
    if !may_keep {
        return PostResponse::Forward(Response::from_parts(head, body));
    }
    let reason = crate::telemetry::cache_status::FwdReason::Method;
    let plan = crate::cache::lookup::unshared_plan((origin.0, origin.1, target), reason);
    let miss = request.miss(plan);
    let (fill, reader) = cache.coalescer().solo();
    let task = FillTask::new(&miss, &fill, None, None);
    let vary = Vary::from_response(&head.headers);
    let checked = task
        .verdict(&Method::GET, &parts.uri, &head, times.1)
        .ok()
        .zip(vary.variant_key(&task.client_headers));
    let Some((read, variant)) = checked else {
        return PostResponse::Forward(Response::from_parts(head, body));
    };
    let (meta, own_fields) = task.meta_to_store(head, read, (vary, variant), times).await;
    ctx.own_fields = (!own_fields.is_empty()).then_some(own_fields);
    cache.spawn_fill(async move { task.stream_into_cache(meta, body).await });
    let status = fill.wait_status().await;
    PostResponse::Kept(
        delivery_from(status, fill, reader, ctx, |_| true)
            .unwrap_or_else(|| Err(ProxyError::Internal("fill still pending".into()))),
    )
}

/// What became of a POST's response ([`keep_post_response`]).
pub(super) enum PostResponse {
    /// It is being stored; the POST's client is served from its fill.
    Kept(Result<Delivery, ProxyError>),
    /// Not to be stored: forwarded as it came.
    Forward(Response<OriginBody>),
}

/// RFC 5861 §3: a stale response was served; validate it once in the background. If a
/// fill for it is already in flight, that one will do.
pub(super) fn revalidate_in_background(miss: &Miss<'_>) {
    if !miss.plan.is_coalescable {
        return;
    }
    let fill_key = FillKey {
        key: miss.plan.key,
        variant_hint: miss.plan.variant_hint,
    };
    let (role, fill, reader) = miss.proxy.cache.coalescer().join(fill_key);
    drop(reader);
    if !matches!(role, Role::Leader { .. }) {
        return;
    }
    fill.set_background();
    if let Ok((job, _, _)) = FillJob::prepare(miss, &fill, Some(fill_key), false) {
        miss.proxy.cache.spawn_fill(job.run());
    }
}

/// RFC 5861 §4 / RFC 9111 §4.2.4: the origin statuses a stale response may answer in
/// place of.
pub(super) fn is_error_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Freshness of a response with `status` and `headers` (whose directives are `read`, when
/// they have been read already) received at `times`, under the operator's path `rule` if
/// one applies.
pub(super) fn freshness_under_rule(
    cache: &crate::cache::Cache,
    rule: Option<&crate::config::PathRule>,
    (status, headers, read): (StatusCode, &HeaderMap, Option<ResponseDirectives>),
    (request_time, response_time): (SystemTime, SystemTime),
) -> Freshness {
    let settings = cache.policy();
    let read = read.unwrap_or_else(|| policy::response_directives(headers, settings));
    let mut freshness =
        Freshness::from_directives(status, headers, read, settings, request_time, response_time);
    if let Some(rule) = rule {
        crate::cache::rules::apply(&mut freshness, rule, status);
    }
    freshness
}

/// Whether a stale response (whole or partial) of `freshness` may answer because its
/// validation failed (RFC 5861 §4), judged at now with the requesting client's directives.
pub(super) fn stale_on_error_allowed(
    freshness: &Freshness,
    client_headers: &HeaderMap,
    settings: &policy::PolicySettings,
) -> bool {
    let directives = policy::request_directives(client_headers);
    policy::allows_stale_on_error(
        freshness,
        &directives,
        settings.stale_on_error,
        SystemTime::now(),
    )
}

/// The request a fill sends: the client's, as a GET (a HEAD only gets here to validate a
/// stored response in the background), without the client's own validators (we want a response we can store),
/// with ours when a stored response is being validated (RFC 9111 §4.3.1).
/// `for_client`: a client waits for this fetch's answer, and gets the origin's interim
/// responses (a background revalidation's go nowhere).
fn fill_request(
    miss: &Miss<'_>,
    for_client: bool,
) -> Result<(http::Request<Body>, IpAddr), ProxyError> {
    let mut parts = miss.parts.clone();
    parts.method = Method::GET;
    for name in &policy::CLIENT_CONDITIONALS {
        parts.headers.remove(name);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    // A Range miss fills the whole object once and the range is served from the stored
    // entry, unless the lookup chose to forward it (then the 206 is kept as a partial).
    // Every client shares the origin's variant; encodings are ours to produce (see
    // `cache::key::ORIGIN_ACCEPT_ENCODING`), and a forwarded range is of the identity
    // representation: a piece of a gzip stream could not be decoded for anyone.
    let accept_encoding = if miss.plan.forwards_range {
        "identity"
    } else {
        parts.headers.remove(header::RANGE);
        parts.headers.remove(header::IF_RANGE);
        match &miss.plan.prefix {
            Some(prefix) => prefix::ask_for_rest(&mut parts.headers, prefix),
            None => crate::cache::key::ORIGIN_ACCEPT_ENCODING,
        }
    };
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        http::HeaderValue::from_static(accept_encoding),
    );
    let (request, client) =
        upstream_request(miss.proxy, miss.site, parts, Body::empty(), miss.downstream)?;
    let mut request = interim::relay_to(request, miss.interim.filter(|_| for_client));
    if let Some(stale) = &miss.plan.stale {
        policy::add_validators(request.headers_mut(), &stale.meta.headers);
    } else if let Some(partial) = &miss.plan.stale_partial {
        policy::add_validators(request.headers_mut(), &partial.meta.headers);
    } else {
        let others = miss.plan.other_variants.iter();
        policy::add_entity_tags(
            request.headers_mut(),
            others.map(|other| &other.meta.headers),
        );
    }
    Ok((request, client))
}

/// An origin's answer: its head (cleaned, and read by the mirror), its body, and when it
/// was asked and answered.
type Exchanged = (http::response::Parts, OriginBody, (SystemTime, SystemTime));

/// The fill task: the request to send, and everything the task needs to handle the answer;
/// owned, because it outlives the request that started it.
struct FillJob {
    request: http::Request<Body>,
    task: FillTask,
}

/// What the fill task knows while it handles the origin's answer.
struct FillTask {
    proxy: Arc<Proxy>,
    site: Arc<Site>,
    /// The site's pool, by name: fills are capped per origin pool.
    origin: String,
    plan: MissPlan,
    /// The leading client's request headers: storability and the variant are judged on them.
    client_headers: HeaderMap,
    /// The operator's policy rule for this path, if any.
    rule: Option<crate::config::PathRule>,
    /// The client's path: which mirror registry (if any) the response belongs to.
    path: String,
    fill: Arc<Fill>,
    fill_key: Option<FillKey>,
    /// Taken when the leader is answered on its own.
    leader: Option<oneshot::Sender<LeaderAnswer>>,
}

/// A 206's body as read for the partial-content store.
enum Piece {
    /// Exactly the bytes its Content-Range names.
    AsRanged(Bytes),
    /// More or fewer bytes than its Content-Range names, though framed correctly: the
    /// whole body as the origin sent it.
    Mismatched(Body),
}

/// What the fill hands its leader alone.
enum LeaderAnswer {
    /// An uncacheable response, relayed as it came.
    Relayed(Response<Body>),
    /// The stored response as freshened by a 304 that was for this client only: it set
    /// cookies, or made the response unshareable (RFC 9111 §3 on the 304's headers).
    Own(Arc<StoredResponse>),
    /// A 206 for exactly the range the leader asked for, its body streaming to the leader as
    /// it arrives while the fill reads it whole to keep (sent before the fill settles).
    PieceStreaming(Response<Body>),
    /// A 206 kept as (part of) a partial entry: the entry now held, the 206 as it came for
    /// a request the entry cannot answer, and the fields the entry was kept without (the
    /// leader's own, added back when the entry answers).
    Partial(Arc<PartialEntry>, Response<Body>, HeaderMap),
    /// A partial entry a 304 freshened, which holds the leader's range, and the fields it
    /// is kept without (the leader's own).
    PartialRevalidated(Arc<PartialEntry>, HeaderMap),
    /// The stale partial entry that holds the leader's range, served because validating
    /// it failed so (RFC 5861 §4), and the origin's status if it answered.
    PartialStale(Arc<PartialEntry>, OriginFailure, Option<u16>),
    /// The response is stored without these fields (a qualified no-cache or private named
    /// them); they are the leader's own, sent before the fill's status.
    OwnFields(HeaderMap),
}

/// Where a piece's chunks go to the leader as they arrive.
type PieceSender = tokio::sync::mpsc::UnboundedSender<Result<Bytes, crate::body::BoxError>>;

/// The body of chunks sent on a [`PieceSender`]: it ends when the sender is dropped. It
/// counts against the fills' memory budget by `hold` until it ends or is dropped.
fn piece_body(
    chunks: tokio::sync::mpsc::UnboundedReceiver<Result<Bytes, crate::body::BoxError>>,
    hold: BudgetHold,
) -> Body {
    let frames = futures_util::stream::unfold((chunks, hold), |(mut chunks, hold)| async move {
        let chunk = chunks.recv().await?;
        Some((chunk.map(http_body::Frame::data), (chunks, hold)))
    });
    Body::boxed(http_body_util::StreamBody::new(frames))
}

/// A copy of a response head (`Parts` is not `Clone`): status, version and fields.
fn head_copy(head: &http::response::Parts) -> http::response::Parts {
    let mut copy = Response::new(()).into_parts().0;
    copy.status = head.status;
    copy.version = head.version;
    copy.headers = head.headers.clone();
    copy
}

/// The single complete Content-Range of a 206 whose piece may be kept: it fits the partial
/// budget and the cache, and it is of an identity representation (a piece of an encoded
/// one could not be decoded for clients that do not accept its coding). None behind a
/// package mirror: pieces combined into a whole artifact would be stored without the
/// check of its published digest that a whole fetch gets.
fn keepable_range(headers: &HeaderMap, proxy: &Proxy) -> Option<ContentRange> {
    if proxy.mirror.is_some() {
        return None;
    }
    let cache = &proxy.cache;
    let is_identity = headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|coding| coding.as_bytes().eq_ignore_ascii_case(b"identity"));
    headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ContentRange::parse)
        .filter(|range| {
            is_identity
                && cache.partials().takes(range.byte_count())
                && range.complete_len <= cache.storable_size()
        })
}

impl FillJob {
    /// The job for `miss`, with the channel on which an uncacheable response reaches the
    /// leader. A failure to build the request settles the fill as failed.
    fn prepare(
        miss: &Miss<'_>,
        fill: &Arc<Fill>,
        fill_key: Option<FillKey>,
        for_client: bool,
    ) -> Result<(FillJob, oneshot::Receiver<LeaderAnswer>, IpAddr), ProxyError> {
        let (request, client) = match fill_request(miss, for_client) {
            Ok(prepared) => prepared,
            Err(err) => {
                if let Some(fill_key) = fill_key {
                    fill.publish(FillStatus::Failed(err.clone()));
                    miss.proxy.cache.coalescer().leave(&fill_key, fill);
                }
                return Err(err);
            }
        };
        let (leader_tx, leader_rx) = oneshot::channel();
        let task = FillTask::new(miss, fill, fill_key, Some(leader_tx));
        Ok((FillJob { request, task }, leader_rx, client))
    }

    async fn run(self) {
        let FillJob { request, task } = self;
        let fill = Arc::clone(&task.fill);
        let fill_key = task.fill_key;
        let proxy = Arc::clone(&task.proxy);
        match proxy.cache.admit_fill(&task.origin).await {
            Ok(_slot) => task.fetch_and_store(request).await,
            Err(refused) => {
                proxy.metrics.overloaded.inc();
                tracing::debug!(origin = %task.origin, %refused, "fill refused");
                fill.publish(FillStatus::Failed(ProxyError::LimitReached {
                    what: "fill",
                }));
            }
        }
        if let Some(fill_key) = fill_key {
            proxy.cache.coalescer().leave(&fill_key, &fill);
        }
    }
}

impl FillTask {
    fn new(
        miss: &Miss<'_>,
        fill: &Arc<Fill>,
        fill_key: Option<FillKey>,
        leader: Option<oneshot::Sender<LeaderAnswer>>,
    ) -> FillTask {
        let rules = miss.proxy.cache.rules();
        FillTask {
            proxy: Arc::clone(miss.proxy),
            site: Arc::clone(miss.site),
            origin: miss.site.pool.name.clone(),
            plan: miss.plan.clone(),
            client_headers: miss.parts.headers.clone(),
            rule: rules.find(&miss.site.name, miss.parts.uri.path()).cloned(),
            path: miss.parts.uri.path().to_string(),
            fill: Arc::clone(fill),
            fill_key,
            leader,
        }
    }

    /// What is stored of the storable origin answer `head` (its key no longer
    /// hit-for-miss), and the fields only the requesting client may see (`private="…"`
    /// and `no-cache="…"`, RFC 9111 §5.2.2.7 and §5.2.2.4), which are not stored.
    async fn meta_to_store(
        &self,
        head: http::response::Parts,
        read: ResponseDirectives,
        vary: (Vary, crate::cache::key::VariantKey),
        times: (SystemTime, SystemTime),
    ) -> (EntryMeta, HeaderMap) {
        self.proxy.cache.forget_uncacheable(&self.plan.key).await;
        let unshared = policy::unshared_field_names(&read.directives, self.proxy.cache.policy());
        let freshness = self.freshness(head.status, &head.headers, Some(read), times);
        let mut headers = head.headers;
        if head.status == StatusCode::OK && !headers.contains_key(http::header::ACCEPT_RANGES) {
            // RFC 9110 §14.3: ranges of a stored 200 are served from it whatever the origin
            // supports, so clients that look for it before seeking or resuming find it (as
            // nginx and Varnish add it). An origin's own value is kept.
            headers.insert(
                http::header::ACCEPT_RANGES,
                http::HeaderValue::from_static("bytes"),
            );
        }
        let fields = (headers, unshared);
        self.shared_meta((head.status, head.version), fields, vary, freshness)
    }

    /// The metadata stored under this fill's key for a response with `headers` less the
    /// fields only the requesting client may see (`unshared`, see
    /// [`policy::unshared_field_names`]), which come back beside it.
    fn shared_meta(
        &self,
        status_version: (StatusCode, http::Version),
        (mut headers, unshared): (HeaderMap, Vec<http::HeaderName>),
        vary: (Vary, crate::cache::key::VariantKey),
        freshness: Freshness,
    ) -> (EntryMeta, HeaderMap) {
        let own_fields = policy::remove_fields(&mut headers, unshared);
        let meta = EntryMeta::new(
            self.plan.key,
            self.plan.url.clone(),
            status_version,
            headers,
            vary,
            freshness,
        );
        (meta, own_fields)
    }

    /// Freshness of the origin's answer under this fill's path rule; `read`: its
    /// directives, when the storability check has read them already.
    fn freshness(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        read: Option<ResponseDirectives>,
        times: (SystemTime, SystemTime),
    ) -> Freshness {
        freshness_under_rule(
            &self.proxy.cache,
            self.rule.as_ref(),
            (status, headers, read),
            times,
        )
    }

    /// Asks the origin and stores what it answers (or hands it over unstored).
    ///
    /// Every await of a future many kilobytes large is boxed: unboxed, this future held
    /// all of theirs (48 KB), and every miss copied it, whole, several times (memcpy was a
    /// quarter of a miss's instructions under callgrind).
    async fn fetch_and_store(mut self, request: http::Request<Body>) {
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let (parts, body) = request.into_parts();
        // Kept to ask for the rest of the body again, for clients left behind (`resume`).
        let sent_headers = parts.headers.clone();
        let ask_again = self.sends_validators().then(|| {
            let mut parts = parts.clone();
            policy::remove_validators(&mut parts.headers);
            parts
        });
        let whole_again = self
            .plan
            .prefix
            .is_some()
            .then(|| prefix::whole_again(&parts));
        let Some(mut answer) =
            Box::pin(self.exchange(http::Request::from_parts(parts, body))).await
        else {
            return;
        };
        if let Some(whole_again) = whole_again {
            let Some(joined) = Box::pin(self.after_prefix(answer, whole_again)).await else {
                return;
            };
            answer = joined;
        }
        let (mut head, mut body, mut times) = answer;
        if head.status == StatusCode::NOT_MODIFIED {
            let freshened = match self.plan.stale_partial.clone() {
                Some(partial) => Box::pin(self.freshen_partial(&partial, &head, &uri, times)).await,
                None => Box::pin(self.freshen(&head, &uri, times)).await,
            };
            if freshened {
                return;
            }
            // A 304 for no stored response this fill validated (another entity tag, or
            // none of ours): it tells the client nothing (its own validators were not
            // sent), so the representation is asked for again, whole.
            if let Some(parts) = ask_again {
                drop(body);
                let request = http::Request::from_parts(parts, Body::empty());
                let Some(answer) = Box::pin(self.exchange(request)).await else {
                    return;
                };
                (head, body, times) = answer;
            }
        }
        // RFC 5861 §4: an error status from the origin may be answered with the stale entry.
        if is_error_status(head.status) {
            let status = head.status.as_u16();
            if self.stale_on_error(OriginFailure::Status(status), Some(status)) {
                return;
            }
        }
        if head.status == StatusCode::PARTIAL_CONTENT {
            return Box::pin(self.keep_partial(head, body, &uri, times)).await;
        }
        let verdict = self.verdict(&method, &uri, &head, times.1);
        let vary = Vary::from_response(&head.headers);
        let variant = vary.variant_key(&self.client_headers);
        let (read, variant) = match (verdict, variant) {
            (Ok(read), Some(variant)) => (read, variant),
            (verdict, _) => return Box::pin(self.refuse_to_store(verdict.err(), head, body)).await,
        };
        let (meta, own_fields) = self.meta_to_store(head, read, (vary, variant), times).await;
        if !own_fields.is_empty() {
            self.answer_leader(LeaderAnswer::OwnFields(own_fields));
        }
        let sent = (&uri, sent_headers);
        if let Some(resume) = OriginResume::offer(&self.proxy, &self.site, sent, &meta) {
            self.fill.offer_resume(Arc::new(resume));
        }
        Box::pin(self.stream_into_cache(meta, body)).await;
    }

    /// The origin's `answer` to the request for the rest of the plan's kept prefix, as the
    /// fill goes on with it (see [`prefix`]): joined to the prefix, as it is, or (a 206
    /// that is not that rest) the answer to `whole_again`, the request for the whole.
    /// `None` when the origin failed (handled).
    async fn after_prefix(
        &mut self,
        (head, body, times): Exchanged,
        whole_again: http::request::Parts,
    ) -> Option<Exchanged> {
        let kept = self.plan.prefix.clone()?;
        match prefix::join(&kept, head, body) {
            prefix::Answer::Joined(joined, whole) => {
                self.fill
                    .set_forwarded_status(StatusCode::PARTIAL_CONTENT.as_u16());
                let metrics = &self.proxy.metrics;
                metrics.prefix_completions.inc();
                metrics.prefix_bytes_spared.inc_by(kept.prefix_len());
                Some((joined, whole, times))
            }
            prefix::Answer::AsItIs(head, body) => Some((head, body, times)),
            prefix::Answer::Refused(refused) => {
                let url = &self.plan.url;
                tracing::debug!(
                    url,
                    refused,
                    "the answer for the rest of a prefix is unused"
                );
                let request = http::Request::from_parts(whole_again, Body::empty());
                Box::pin(self.exchange(request)).await
            }
        }
    }

    /// Whether the fill's request carries validators of stored responses: a stale entry's
    /// own, or other variants' entity tags.
    fn sends_validators(&self) -> bool {
        self.plan.stale.is_some()
            || self.plan.stale_partial.is_some()
            || !self.plan.other_variants.is_empty()
    }

    /// The stored response a 304 with fields `not_modified` selects among those this fill
    /// validated (RFC 9111 §4.3.4). Where the fill offered several entity tags, the 304
    /// must name the one it selects.
    fn selected_by(&self, not_modified: &HeaderMap) -> Option<&Arc<StoredResponse>> {
        let selects = |stored: &&Arc<StoredResponse>| {
            policy::not_modified_selects(&stored.meta.headers, not_modified)
        };
        match (&self.plan.stale, self.plan.other_variants.as_slice()) {
            (Some(stale), _) => Some(stale).filter(selects),
            (None, [only]) => Some(only).filter(selects),
            (None, others) => others
                .iter()
                .find(|other| policy::not_modified_names(&other.meta.headers, not_modified)),
        }
    }

    /// Sends `request` to the origin; its answer's head (cleaned, and read by the mirror),
    /// body, and when it was asked and answered. `None` when the origin failed (handled).
    async fn exchange(&mut self, request: http::Request<Body>) -> Option<Exchanged> {
        let request_time = SystemTime::now();
        let affinity = Some(&self.plan.key.0[..]);
        let response = match self
            .proxy
            .send_upstream(request, &self.site, affinity)
            .await
        {
            Ok(response) => response,
            Err(err) => {
                self.origin_failed(err, None);
                return None;
            }
        };
        let times = (request_time, SystemTime::now());
        let (mut head, body) = response.into_parts();
        forwarding::clean_response_head(&mut head.headers);
        match self.through_mirror(head, body).await {
            Ok((head, body)) => Some((head, body, times)),
            Err(err) => {
                self.origin_failed(err, Some(502));
                None
            }
        }
    }

    /// The origin's answer is not to be stored (`reason`, or `Vary: *` when none): relayed
    /// to the leader, and the URL skips coalescing for a while unless only this request
    /// forbade storing (its `no-store`, or its credentials: RFC 9111 §3.5), so that
    /// requests that may share an answer still do.
    async fn refuse_to_store(
        &mut self,
        reason: Option<NoStoreReason>,
        head: http::response::Parts,
        body: OriginBody,
    ) {
        let reason = reason.unwrap_or(NoStoreReason::VaryStar);
        if !matches!(
            reason,
            NoStoreReason::RequestNoStore | NoStoreReason::Authorization
        ) {
            self.proxy.cache.remember_uncacheable(self.plan.key).await;
        }
        self.fill.publish(FillStatus::Uncacheable(reason));
        // The leader may have gone; then nobody needs this response.
        self.answer_leader(LeaderAnswer::Relayed(Response::from_parts(
            head,
            Body::from(body),
        )));
    }

    /// Whether the origin's answer may be stored (RFC 9111 §3) and fits the cache.
    fn verdict(
        &self,
        method: &Method,
        uri: &http::Uri,
        head: &http::response::Parts,
        response_time: SystemTime,
    ) -> Result<ResponseDirectives, NoStoreReason> {
        if head.status == StatusCode::NOT_MODIFIED {
            return Err(NoStoreReason::Status);
        }
        let fetched_for = FetchedFor {
            method,
            uri,
            headers: &self.client_headers,
        };
        let cache = &self.proxy.cache;
        let read = policy::check_storable(
            &fetched_for,
            head.status,
            &head.headers,
            cache.policy(),
            response_time,
        )?;
        match crate::cache::entry::content_length(&head.headers) {
            Some(len) if len > cache.storable_size() => Err(NoStoreReason::TooLarge),
            _ => Ok(read),
        }
    }

    /// A 304 to our validators: freshen the stored entry and serve it. False when the 304
    /// does not select the stored response (then it is relayed like any other answer).
    ///
    /// The freshened headers pass the storability checks again (RFC 9111 §3, §4.3.4): a
    /// 304's `Set-Cookie` is for the requester alone unless storing cookies is configured;
    /// a 304 that makes the response unshareable (`private`, `no-store`, ...) drops the
    /// stored variant and answers the requester only; a changed `Vary` re-keys it.
    async fn freshen(
        &mut self,
        head: &http::response::Parts,
        uri: &http::Uri,
        times: (SystemTime, SystemTime),
    ) -> bool {
        let Some(stale) = self.selected_by(&head.headers).cloned() else {
            return false;
        };
        let cache = &self.proxy.cache;
        let merged = policy::freshen_headers(&stale.meta.headers, &head.headers);
        let freshened = |headers: &HeaderMap| {
            let mut meta = stale.meta.clone();
            meta.freshness = self.freshness(stale.meta.status, headers, None, times);
            meta.headers = crate::cache::entry::compact_headers(headers);
            meta
        };
        let with_body = |meta| {
            Arc::new(StoredResponse {
                meta,
                body: stale.body.clone(),
                compressible: Default::default(),
            })
        };
        let mut shared_headers = merged.clone();
        let own_fields = policy::remove_unshared_fields(&mut shared_headers, cache.policy());
        let verdict = self.check_storable(uri, stale.meta.status, &shared_headers, times.1);
        let vary = Vary::from_response(&shared_headers);
        let variant = vary.variant_key(&self.client_headers);
        let (Ok(_), Some(variant)) = (&verdict, variant) else {
            let reason = verdict.err().unwrap_or(NoStoreReason::VaryStar);
            cache.drop_variant(stale.meta.key, stale.meta.variant).await;
            self.answer_leader(LeaderAnswer::Own(with_body(freshened(&merged))));
            self.fill.publish(FillStatus::Uncacheable(reason));
            return true;
        };
        let mut meta = freshened(&shared_headers);
        let replaced = (meta.vary != vary).then_some(meta.variant);
        // An entry this request selected by its language (RFC 9111 §4.1) is freshened in
        // place, not stored again under this request's own key beside its stale self.
        let selected_by_language = replaced.is_none()
            && variant != meta.variant
            && vary.selects_by_language(&shared_headers, &self.client_headers);
        meta.vary = vary;
        if !selected_by_language {
            meta.variant = variant;
        }
        let entry = with_body(meta);
        match replaced {
            Some(old_variant) => cache.replace_variant(Arc::clone(&entry), old_variant).await,
            // A vary-miss validated against another variant's validator (RFC 9111 §4.3.1,
            // §4.3.4) stores the body it selected under this request's variant too.
            None if entry.meta.variant != stale.meta.variant => {
                cache.store(Arc::clone(&entry), StoreChange::NewRow).await;
            }
            None => cache.store(Arc::clone(&entry), StoreChange::Headers).await,
        }
        if !own_fields.is_empty() {
            self.answer_leader(LeaderAnswer::Own(with_body(freshened(&merged))));
        }
        self.fill.settle_with(entry, true);
        true
    }

    /// RFC 9111 §4.3.4 for a partial entry validated by its strong entity tag: a 304 that
    /// selects it freshens its head (§3.2), and the leader's range is answered from its
    /// pieces without their bytes being sent again. Whether it did. A 304 that selects it
    /// but makes its head unstorable, or changes its Vary, drops the entry; one that does
    /// not select it leaves it (the range is then asked for again without validators).
    async fn freshen_partial(
        &mut self,
        partial: &Arc<PartialEntry>,
        head: &http::response::Parts,
        uri: &http::Uri,
        times: (SystemTime, SystemTime),
    ) -> bool {
        let cache = &self.proxy.cache;
        if !policy::not_modified_selects(&partial.meta.headers, &head.headers) {
            return false;
        }
        let mut shared = policy::freshen_headers(&partial.meta.headers, &head.headers);
        let own_fields = policy::remove_unshared_fields(&mut shared, cache.policy());
        let verdict = self.check_storable(uri, StatusCode::OK, &shared, times.1);
        let (Ok(read), true) = (verdict, Vary::from_response(&shared) == partial.meta.vary) else {
            cache.drop_partial(&partial.meta.key).await;
            return false;
        };
        let mut meta = partial.meta.clone();
        meta.freshness = self.freshness(StatusCode::OK, &shared, Some(read), times);
        meta.headers = crate::cache::entry::compact_headers(&shared);
        let held = cache.add_partial(partial.with_head(meta)).await;
        self.fill
            .publish(FillStatus::Uncacheable(NoStoreReason::PartialContent));
        self.answer_leader(LeaderAnswer::PartialRevalidated(held, own_fields));
        true
    }

    /// RFC 9111 §3 for a GET of `uri` by this fill's client answered with `status` and
    /// `headers`; the response's directives as read, when it may be stored.
    fn check_storable(
        &self,
        uri: &http::Uri,
        status: StatusCode,
        headers: &HeaderMap,
        response_time: SystemTime,
    ) -> Result<ResponseDirectives, NoStoreReason> {
        let fetched_for = FetchedFor {
            method: &Method::GET,
            uri,
            headers: &self.client_headers,
        };
        policy::check_storable(
            &fetched_for,
            status,
            headers,
            self.proxy.cache.policy(),
            response_time,
        )
    }

    /// RFC 9111 §3.3, §3.4: a 206 (to a Range we forwarded, or one the origin chose to
    /// send) is kept as a partial entry when its head would be storable on a 200, it has
    /// one complete Content-Range and its bytes arrive whole and fit the partial budget.
    /// Combined with the pieces already held, it may complete the representation, which is
    /// then stored whole and answers everyone waiting. Otherwise the leader is answered
    /// from the partial entry (or with the 206 as it came) and followers fetch alone.
    async fn keep_partial(
        mut self,
        head: http::response::Parts,
        body: OriginBody,
        uri: &http::Uri,
        times: (SystemTime, SystemTime),
    ) {
        let proxy = Arc::clone(&self.proxy);
        let cache = &proxy.cache;
        // The representation's head is judged as its 200 would be: 206 says only which
        // part this is.
        let verdict = self.check_storable(uri, StatusCode::OK, &head.headers, times.1);
        let range = keepable_range(&head.headers, &proxy);
        let vary = Vary::from_response(&head.headers);
        let variant = vary.variant_key(&self.client_headers);
        let (read, range, variant) = match (verdict, range, variant) {
            (Ok(read), Some(range), Some(variant)) => (read, range, variant),
            (verdict, _, _) => {
                let reason = verdict.err().unwrap_or(NoStoreReason::PartialContent);
                return self.relay_unkept(reason, Response::from_parts(head, Body::from(body)));
            }
        };
        // The piece is read whole before it is kept: it counts against the fills' memory
        // budget, or is relayed unkept, as a body past the budget streams through unstored.
        let Some(_commitment) = cache.commit_held(range.byte_count()) else {
            tracing::debug!(url = %self.plan.url, "fills' memory budget taken: 206 relayed, not kept");
            let response = Response::from_parts(head, Body::from(body));
            return self.relay_unkept(NoStoreReason::PartialContent, response);
        };
        let tee = self.stream_piece_to_leader(&head, &range);
        let bytes = match self
            .read_piece(body, range.byte_count(), tee.as_ref())
            .await
        {
            Ok(Piece::AsRanged(bytes)) => bytes,
            Ok(Piece::Mismatched(as_received)) => {
                // Framed correctly but not the bytes its Content-Range names: stored, it
                // would put wrong bytes at those offsets; the client still gets what the
                // origin sent, as a cache that stores no partial content would pass it on.
                tracing::debug!(url = %self.plan.url, "206 body does not match its Content-Range: relayed, not stored");
                let response = Response::from_parts(head, as_received);
                return self.relay_unkept(NoStoreReason::PartialContent, response);
            }
            Err(err) => return self.origin_failed(err, Some(206)),
        };
        let unshared = policy::unshared_field_names(&read.directives, cache.policy());
        let freshness = self.freshness(StatusCode::OK, &head.headers, Some(read), times);
        let (meta, own_fields) = self.shared_meta(
            (head.status, head.version),
            (head.headers.clone(), unshared),
            (vary, variant),
            freshness,
        );
        let held = cache
            .add_partial(PartialEntry::new(meta, range, bytes.clone()))
            .await;
        if let Some(entry) = cache.store_if_complete(&held).await {
            if !own_fields.is_empty() {
                self.answer_leader(LeaderAnswer::OwnFields(own_fields));
            }
            self.fill.publish(FillStatus::Complete {
                entry,
                revalidated: false,
            });
            return;
        }
        self.fill
            .publish(FillStatus::Uncacheable(NoStoreReason::PartialContent));
        let as_received = Response::from_parts(head, Body::full(bytes));
        self.answer_leader(LeaderAnswer::Partial(held, as_received, own_fields));
    }

    /// The fill ends unstored for `reason`, and the leader gets `response` as it came.
    fn relay_unkept(&mut self, reason: NoStoreReason, response: Response<Body>) {
        self.fill.publish(FillStatus::Uncacheable(reason));
        self.answer_leader(LeaderAnswer::Relayed(response));
    }

    /// When the leader asked for exactly the 206's `piece` (see [`Self::leader_asked_for`]):
    /// the leader is answered with the 206 as it arrives, and where its chunks go.
    fn stream_piece_to_leader(
        &mut self,
        head: &http::response::Parts,
        piece: &ContentRange,
    ) -> Option<PieceSender> {
        if !self.leader_asked_for(piece, &head.headers) {
            return None;
        }
        // What the leader has not read yet is held in memory besides the piece, until its
        // response is done or dropped.
        let hold = self.proxy.cache.coalescer().hold(piece.byte_count());
        let (tee, chunks) = tokio::sync::mpsc::unbounded_channel();
        let streamed = Response::from_parts(head_copy(head), piece_body(chunks, hold));
        self.answer_leader(LeaderAnswer::PieceStreaming(streamed));
        Some(tee)
    }

    /// Whether the leader's Range asks for exactly `piece`, which the 206's Content-Length
    /// (`headers`) agrees with: then the 206 can go to it as it arrives, unchanged. A
    /// length that disagrees is a body that will not be kept: relayed as it came.
    fn leader_asked_for(&self, piece: &ContentRange, headers: &HeaderMap) -> bool {
        let asked = self
            .client_headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok());
        self.leader.is_some()
            && crate::cache::entry::content_length(headers) == Some(piece.byte_count())
            && asked.is_some_and(|asked| {
                super::range::parse(asked, piece.complete_len)
                    == super::range::Ranges::Satisfiable(vec![(piece.first, piece.last)])
            })
    }

    /// The body of a 206 whose Content-Range promised `len` bytes, each chunk within the
    /// body-read timeout: those bytes, or the body as received when it holds more or fewer.
    /// With `tee`, each chunk also goes there as it arrives (a failure too). A tee is only
    /// given for a 206 whose Content-Length is `len`, which the framing holds it to: it
    /// cannot run past `len`, and one that ends short fails the leader's response as the
    /// origin's own would.
    async fn read_piece(
        &self,
        mut body: OriginBody,
        len: u64,
        tee: Option<&PieceSender>,
    ) -> Result<Piece, ProxyError> {
        let failed = |err: ProxyError| {
            if let Some(tee) = tee {
                let _ = tee.send(Err(err.to_string().into()));
            }
            err
        };
        let mut bytes = bytes::BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
        loop {
            match self.next_frame(&mut body).await.map_err(failed)? {
                None => break,
                Some(data) => {
                    bytes.extend_from_slice(&data);
                    if let Some(tee) = tee {
                        // The leader may have gone: the piece is still kept for the others.
                        let _ = tee.send(Ok(data));
                    }
                    if bytes.len() as u64 > len {
                        // The rest is streamed on, not read here: it may be anything long.
                        let read = Body::full(bytes.freeze());
                        return Ok(Piece::Mismatched(Body::chain(vec![read, Body::from(body)])));
                    }
                }
            }
        }
        if (bytes.len() as u64) < len {
            return Ok(Piece::Mismatched(Body::full(bytes.freeze())));
        }
        Ok(Piece::AsRanged(bytes.freeze()))
    }

    /// The next chunk of an origin body within the body-read timeout; `None` at its end.
    async fn next_frame(&self, body: &mut OriginBody) -> Result<Option<Bytes>, ProxyError> {
        loop {
            let frame = tokio::time::timeout(self.proxy.body_read_timeout, body.frame())
                .await
                .map_err(|_| ProxyError::BodyReadTimeout {
                    origin: self.origin.clone(),
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(ProxyError::ResponseIncomplete {
                        origin: self.origin.clone(),
                        detail: format!("mid-body: {source}"),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Hands `answer` to the leader (who may have gone; then nobody needs it).
    fn answer_leader(&mut self, answer: LeaderAnswer) {
        if let Some(leader) = self.leader.take() {
            let _ = leader.send(answer);
        }
    }

    /// Serves the stale entry instead of `error` when RFC 5861 §4 allows; true if it did.
    fn stale_on_error(&mut self, error: OriginFailure, fwd_status: Option<u16>) -> bool {
        if let Some(partial) = self.plan.stale_partial.clone() {
            return self.stale_partial_on_error(partial, error, fwd_status);
        }
        let Some(entry) = self.plan.stale.as_ref().filter(|s| {
            let policy = self.proxy.cache.policy();
            stale_on_error_allowed(&s.meta.freshness, &self.client_headers, policy)
        }) else {
            return false;
        };
        self.fill.publish(FillStatus::StaleOnError {
            entry: Arc::clone(entry),
            error,
            fwd_status,
        });
        true
    }

    /// The partial entry being validated answers the leader's range in place of `error`,
    /// when RFC 5861 §4 (or `cache.stale_on_error`) allows it as for a whole one.
    fn stale_partial_on_error(
        &mut self,
        partial: Arc<PartialEntry>,
        error: OriginFailure,
        fwd_status: Option<u16>,
    ) -> bool {
        let policy = self.proxy.cache.policy();
        if !stale_on_error_allowed(&partial.meta.freshness, &self.client_headers, policy) {
            return false;
        }
        self.fill
            .publish(FillStatus::Uncacheable(NoStoreReason::PartialContent));
        self.answer_leader(LeaderAnswer::PartialStale(partial, error, fwd_status));
        true
    }

    /// No response from the origin: the stale entry if it may serve, else the error.
    /// The origin's answer as the package mirror passes it on: index documents rewritten,
    /// artifacts checked against their published digests (see [`crate::mirror`]).
    async fn through_mirror(
        &self,
        head: http::response::Parts,
        body: OriginBody,
    ) -> Result<(http::response::Parts, OriginBody), ProxyError> {
        let Some(mirror) = &self.proxy.mirror else {
            return Ok((head, body));
        };
        let origin = || self.origin.clone();
        // An artifact held whole for its check, or a document for its rewrite, counts
        // against the fills' memory budget until it goes on; past it, an artifact is
        // checked as it streams and a document waits for room (`mirror::room`).
        let mut held = self.proxy.cache.held_room();
        mirror
            .on_response(
                (&self.path, &self.plan.url),
                head,
                body,
                (self.proxy.body_read_timeout, &mut held),
            )
            .await
            .map_err(|err| match err {
                crate::mirror::MirrorError::Stalled => {
                    ProxyError::BodyReadTimeout { origin: origin() }
                }
                crate::mirror::MirrorError::Body(detail) => ProxyError::ResponseIncomplete {
                    origin: origin(),
                    detail,
                },
                refused => ProxyError::IntegrityMismatch {
                    origin: origin(),
                    detail: refused.to_string(),
                },
            })
    }

    fn origin_failed(&mut self, err: ProxyError, fwd_status: Option<u16>) {
        if !self.stale_on_error(OriginFailure::Error(err.proxy_status_error()), fwd_status) {
            self.fill.publish(FillStatus::Failed(err));
        }
    }

    /// Feeds the origin's body into the cache, each chunk within the body-read timeout.
    async fn stream_into_cache(&self, meta: EntryMeta, mut body: OriginBody) {
        let proxy = &self.proxy;
        let mut writer = proxy
            .cache
            .begin_fill(&self.fill, meta, FillTarget::Origin)
            .await;
        if proxy.mirror.is_none() {
            writer.keeps_what_arrived();
        }
        // One timer for the whole body, moved on only when it fires early: a timeout per
        // chunk put an entry into the timer wheel and took it out again for every chunk.
        let read_timeout = proxy.body_read_timeout;
        let stall = tokio::time::sleep(read_timeout);
        tokio::pin!(stall);
        loop {
            // The timeout counts time spent waiting for the origin, not for slow readers.
            let waiting_since = tokio::time::Instant::now();
            let next = loop {
                tokio::select! {
                    next = body.frame() => break Ok(next),
                    () = &mut stall => {
                        let due = waiting_since + read_timeout;
                        if tokio::time::Instant::now() >= due {
                            break Err(());
                        }
                        stall.as_mut().reset(due);
                    }
                    // Every client left a large or long fill: stop the download.
                    () = writer.unread_too_long() => {
                        if Box::pin(writer.abandon_unread()).await {
                            return;
                        }
                    }
                }
            };
            let frame = match next {
                Ok(None) => break,
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(source))) => {
                    let origin = self.origin.clone();
                    tracing::warn!(%origin, url = %writer.meta().url, error = %source, "origin failed mid-body: readers aborted, nothing stored");
                    let detail = format!("origin failed mid-body: {source}");
                    Box::pin(writer.fail(ProxyError::ResponseIncomplete { origin, detail })).await;
                    return;
                }
                Err(()) => {
                    let origin = self.origin.clone();
                    tracing::warn!(%origin, url = %writer.meta().url, "origin body stalled past upstream.body_read_timeout: readers aborted, nothing stored");
                    Box::pin(writer.fail(ProxyError::BodyReadTimeout { origin })).await;
                    return;
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if writer.write(data).await.is_err() {
                return;
            }
        }
        // Boxed, as the rest of the body's end (see `fetch_and_store`).
        Box::pin(writer.finish()).await;
    }
}
