//! Fetching through the cache: a miss (or a stored response to validate) joins or starts a
//! coalesced fill, the fill's task talks to the origin, and every waiting request is served
//! from the fill as bytes arrive.
//!
//! The fill task ([`FillJob::run`]) decides what happens to the origin's answer:
//! - 304 to our validators: the stored headers are freshened (RFC 9111 §4.3.4) and the
//!   stored body is served;
//! - storable (RFC 9111 §3, `policy`): streamed to every reader and stored when complete;
//! - not storable: handed to the leader alone; followers fetch on their own, and the URL is
//!   remembered as hit-for-miss so the next burst does not queue behind one request.
//!
//! The shared state and its concurrency contract are `cache::coalesce`'s.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use super::cache_status::{CacheStatus, FwdReason};
use super::forwarding::{self, Downstream};
use super::route::Site;
use super::{encode, respond, upstream_request, AccessRecord, Proxy};
use crate::body::Body;
use crate::cache::coalesce::{Coalescer, Fill, FillKey, FillReader, FillStatus, Role};
use crate::cache::disk::{BlobWriter, DiskTier, TempBlob};
use crate::cache::entry::{EntryMeta, StoredResponse};
use crate::cache::key::{PrimaryKey, VariantKey, Vary};
use crate::cache::policy::{self, FetchedFor, Freshness, NoStoreReason};
use crate::error::ProxyError;

/// When a fill is not being stored, the most bytes it holds ahead of its slowest reader.
const UNSTORED_WINDOW: usize = 4 << 20;

/// What the lookup found and wants fetched.
pub(crate) struct FetchPlan {
    pub key: PrimaryKey,
    pub url: String,
    /// The request's variant under the Vary rule already known for the URL.
    pub variant_hint: VariantKey,
    /// A stored response to validate, if any.
    pub stale: Option<Arc<StoredResponse>>,
    pub reason: FwdReason,
    pub is_coalescable: bool,
}

/// Serves the request through a fill: joins one in flight for the same variant, or leads a
/// new one. Requests that may not share a fetch lead one nobody can join.
pub(super) async fn through_cache(
    proxy: &Arc<Proxy>,
    site: &Arc<Site>,
    parts: http::request::Parts,
    downstream: Downstream<'_>,
    plan: FetchPlan,
    record: &mut AccessRecord,
) -> Result<(Response<Body>, CacheStatus), ProxyError> {
    let cache = &proxy.cache;
    if plan.is_coalescable && !cache.is_hit_for_miss(&plan.key).await {
        let fill_key = FillKey {
            key: plan.key,
            variant_hint: plan.variant_hint,
        };
        let (role, fill, reader) = cache.coalescer.join(fill_key);
        match role {
            Role::Leader => {
                if let Some(served) = stored_meanwhile(proxy, &parts, &plan, &fill, fill_key).await
                {
                    return Ok(served);
                }
                return lead(
                    proxy,
                    site,
                    &parts,
                    downstream,
                    &plan,
                    (fill, reader),
                    Some(fill_key),
                    record,
                )
                .await;
            }
            Role::Follower => {
                let waited_at = Instant::now();
                let outcome = follow(proxy, &parts, &plan, &fill, reader).await;
                let waited = waited_at.elapsed();
                record.upstream_duration = Some(waited);
                proxy.metrics.coalesced_waits.inc();
                proxy
                    .metrics
                    .coalesced_wait_seconds
                    .observe(waited.as_secs_f64());
                match outcome {
                    Following::Served(response, status) => return Ok((response, status)),
                    Following::Failed(err) => return Err(err),
                    Following::GoAlone => {}
                }
            }
        }
    }
    lead(
        proxy,
        site,
        &parts,
        downstream,
        &plan,
        Coalescer::solo(),
        None,
        record,
    )
    .await
}

/// A request that missed at lookup may reach the coalescer just after the fill it would
/// have joined stored its response and left. Before fetching again, a new leader of a miss
/// looks once more; if a fresh entry is there, it settles its own fill with it (for anyone
/// who joined meanwhile) and serves it as a hit.
async fn stored_meanwhile(
    proxy: &Arc<Proxy>,
    parts: &http::request::Parts,
    plan: &FetchPlan,
    fill: &Arc<Fill>,
    fill_key: FillKey,
) -> Option<(Response<Body>, CacheStatus)> {
    if plan.stale.is_some() {
        return None;
    }
    let set = proxy.cache.memory.get(&plan.key).await?;
    let entry = Arc::clone(set.select(&parts.headers)?);
    let now = SystemTime::now();
    let directives = policy::request_directives(&parts.headers);
    if policy::evaluate_reuse(&entry.meta.freshness, &directives, now) != policy::Reuse::Fresh {
        return None;
    }
    fill.end(None);
    fill.publish(FillStatus::Complete {
        entry: Arc::clone(&entry),
        revalidated: false,
    });
    proxy.cache.coalescer.leave(&fill_key, fill);
    let status = CacheStatus::hit(entry.meta.freshness.ttl_seconds(now));
    Some((
        encode::serve_stored(proxy, &set, &entry, parts, now).await,
        status,
    ))
}

/// Starts the fill task and serves the leader from it.
#[allow(clippy::too_many_arguments)]
async fn lead(
    proxy: &Arc<Proxy>,
    site: &Arc<Site>,
    parts: &http::request::Parts,
    downstream: Downstream<'_>,
    plan: &FetchPlan,
    (fill, reader): (Arc<Fill>, FillReader),
    fill_key: Option<FillKey>,
    record: &mut AccessRecord,
) -> Result<(Response<Body>, CacheStatus), ProxyError> {
    let (job, leader_rx, client) =
        FillJob::prepare(proxy, site, parts, downstream, plan, &fill, fill_key)?;
    record.client = client;
    let started = Instant::now();
    // Its own task: a leader whose client hangs up must not cancel the fetch for others.
    tokio::spawn(job.run());
    let status = fill.wait_status().await;
    record.upstream_duration = Some(started.elapsed());
    let now = SystemTime::now();
    let mut cache_status = CacheStatus::forward(plan.reason);
    match status {
        FillStatus::Streaming(meta) => {
            describe_stream(&mut cache_status, &meta, now);
            if let Some(ranged) = ranged_when_stored(proxy, &fill, &meta, parts, now).await {
                return ranged.map(|response| (response, cache_status));
            }
            Ok((
                encode::for_client(
                    proxy,
                    respond::from_meta(proxy, &meta, Body::boxed(reader), parts, now),
                    parts,
                ),
                cache_status,
            ))
        }
        FillStatus::Complete { entry, revalidated } => {
            describe_entry(&mut cache_status, &entry, revalidated, now);
            Ok((stored_for_client(proxy, &entry, parts, now), cache_status))
        }
        FillStatus::Uncacheable(reason) => {
            drop(reader);
            let response = leader_rx.await.map_err(|_| {
                ProxyError::Internal("fill ended without handing over its response".into())
            })?;
            cache_status.fwd_status = Some(response.status().as_u16());
            cache_status.detail = Some(reason.as_str());
            Ok((encode::for_client(proxy, response, parts), cache_status))
        }
        FillStatus::StaleOnError {
            entry,
            error,
            fwd_status,
        } => {
            describe_stale_on_error(&mut cache_status, &entry, (error, fwd_status), now);
            let response = respond::from_entry(proxy, &entry, parts, now);
            Ok((encode::for_client(proxy, response, parts), cache_status))
        }
        FillStatus::Failed(err) => Err(err),
        FillStatus::Pending => Err(ProxyError::Internal("fill still pending".into())),
    }
}

/// RFC 5861 §3: a stale response was served; validate it once in the background. If a
/// fill for it is already in flight, that one will do.
pub(super) fn revalidate_in_background(
    proxy: &Arc<Proxy>,
    site: &Arc<Site>,
    parts: &http::request::Parts,
    downstream: Downstream<'_>,
    plan: FetchPlan,
) {
    if !plan.is_coalescable {
        return;
    }
    let fill_key = FillKey {
        key: plan.key,
        variant_hint: plan.variant_hint,
    };
    let (role, fill, reader) = proxy.cache.coalescer.join(fill_key);
    drop(reader);
    if !matches!(role, Role::Leader) {
        return;
    }
    if let Ok((job, _, _)) =
        FillJob::prepare(proxy, site, parts, downstream, &plan, &fill, Some(fill_key))
    {
        tokio::spawn(job.run());
    }
}

enum Following {
    Served(Response<Body>, CacheStatus),
    Failed(ProxyError),
    /// Fetch alone: waited too long, the response is not shareable, or its Vary selects
    /// another variant.
    GoAlone,
}

async fn follow(
    proxy: &Proxy,
    parts: &http::request::Parts,
    plan: &FetchPlan,
    fill: &Fill,
    reader: FillReader,
) -> Following {
    let Ok(status) = tokio::time::timeout(proxy.cache.coalesce_wait, fill.wait_status()).await
    else {
        return Following::GoAlone;
    };
    let now = SystemTime::now();
    let mut cache_status = CacheStatus::forward(plan.reason);
    cache_status.collapsed = true;
    let selects = |meta: &EntryMeta| meta.vary.variant_key(&parts.headers) == Some(meta.variant);
    match status {
        FillStatus::Streaming(meta) if selects(&meta) => {
            describe_stream(&mut cache_status, &meta, now);
            Following::Served(
                encode::for_client(
                    proxy,
                    respond::from_meta(proxy, &meta, Body::boxed(reader), parts, now),
                    parts,
                ),
                cache_status,
            )
        }
        FillStatus::Complete { entry, revalidated } if selects(&entry.meta) => {
            describe_entry(&mut cache_status, &entry, revalidated, now);
            Following::Served(stored_for_client(proxy, &entry, parts, now), cache_status)
        }
        FillStatus::StaleOnError {
            entry,
            error,
            fwd_status,
        } if selects(&entry.meta) => {
            describe_stale_on_error(&mut cache_status, &entry, (error, fwd_status), now);
            let response = respond::from_entry(proxy, &entry, parts, now);
            Following::Served(encode::for_client(proxy, response, parts), cache_status)
        }
        FillStatus::Failed(err) => Following::Failed(err),
        _ => Following::GoAlone,
    }
}

/// A Range miss on an object that will be stored waits for the fill to store it and serves
/// the range from the entry (RFC 9110 §14); `None` when the request has no Range the cache
/// answers or the object will not be stored (the whole response is sent instead, as
/// RFC 9110 §14.2 allows).
async fn ranged_when_stored(
    proxy: &Proxy,
    fill: &Fill,
    meta: &EntryMeta,
    parts: &http::request::Parts,
    now: SystemTime,
) -> Option<Result<Response<Body>, ProxyError>> {
    super::range::requested(parts, &meta.headers)?;
    if content_length(&meta.headers).is_none_or(|len| len > proxy.cache.storable_size()) {
        return None;
    }
    Some(match fill.wait_settled().await {
        FillStatus::Complete { entry, .. } => Ok(stored_for_client(proxy, &entry, parts, now)),
        FillStatus::Failed(err) => Err(err),
        _ => Err(ProxyError::Internal("fill settled without an entry".into())),
    })
}

/// A stored entry as this request should get it: the range it asks for (RFC 9110 §14), or
/// the representation it accepts.
fn stored_for_client(
    proxy: &Proxy,
    entry: &StoredResponse,
    parts: &http::request::Parts,
    now: SystemTime,
) -> Response<Body> {
    match super::range::requested(parts, &entry.meta.headers) {
        Some(range) => respond::ranged_from_entry(proxy, entry, parts, now, &range),
        None => encode::for_client(proxy, respond::from_entry(proxy, entry, parts, now), parts),
    }
}

fn describe_stream(status: &mut CacheStatus, meta: &EntryMeta, now: SystemTime) {
    status.fwd_status = Some(meta.status.as_u16());
    status.ttl = Some(meta.freshness.ttl_seconds(now));
    // Known to fit: it will be stored unless the origin fails mid-body.
    status.stored = content_length(&meta.headers).is_some();
}

fn describe_entry(
    status: &mut CacheStatus,
    entry: &StoredResponse,
    revalidated: bool,
    now: SystemTime,
) {
    status.fwd_status = Some(if revalidated {
        304
    } else {
        entry.meta.status.as_u16()
    });
    status.ttl = Some(entry.meta.freshness.ttl_seconds(now));
    status.stored = true;
}

fn describe_stale_on_error(
    status: &mut CacheStatus,
    entry: &StoredResponse,
    (error, fwd_status): (&'static str, Option<u16>),
    now: SystemTime,
) {
    status.ttl = Some(entry.meta.freshness.ttl_seconds(now));
    status.detail = Some(error);
    status.fwd_status = fwd_status;
}

/// Whether `stale` may answer because its validation failed (RFC 5861 §4), judged at now
/// with the requesting client's directives.
fn stale_on_error_allowed(stale: &StoredResponse, client_headers: &HeaderMap) -> bool {
    let directives = policy::request_directives(client_headers);
    policy::allows_stale_on_error(&stale.meta.freshness, &directives, SystemTime::now())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The request a fill sends: the client's, as a GET (a HEAD miss fills the cache for the
/// GETs to come), without the client's own validators (we want a response we can store),
/// with ours when a stored response is being validated (RFC 9111 §4.3.1).
fn fill_request(
    proxy: &Proxy,
    site: &Site,
    parts: &http::request::Parts,
    downstream: Downstream<'_>,
    stale: Option<&StoredResponse>,
) -> Result<(http::Request<Body>, IpAddr), ProxyError> {
    let mut parts = parts.clone();
    parts.method = Method::GET;
    for name in &policy::CLIENT_CONDITIONALS {
        parts.headers.remove(name);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    // A Range miss fills the whole object once; the range is served from the stored entry.
    parts.headers.remove(header::RANGE);
    // Every client shares the origin's variant; encodings are ours to produce (see
    // `cache::key::ORIGIN_ACCEPT_ENCODING`).
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        http::HeaderValue::from_static(crate::cache::key::ORIGIN_ACCEPT_ENCODING),
    );
    let (mut request, client) = upstream_request(proxy, site, parts, Body::empty(), downstream)?;
    if let Some(stale) = stale {
        policy::add_validators(request.headers_mut(), &stale.meta.headers);
    }
    Ok((request, client))
}

/// Everything the fill task needs; owned, because it outlives the request that started it.
struct FillJob {
    proxy: Arc<Proxy>,
    request: http::Request<Body>,
    origin: String,
    key: PrimaryKey,
    url: String,
    /// The leading client's request headers: storability and the variant are judged on them.
    client_headers: HeaderMap,
    stale: Option<Arc<StoredResponse>>,
    /// The operator's policy rule for this path, if any.
    rule: Option<crate::config::PathRule>,
    fill: Arc<Fill>,
    fill_key: Option<FillKey>,
    leader: oneshot::Sender<Response<Body>>,
}

impl FillJob {
    /// The job for `plan`, with the channel on which an uncacheable response reaches the
    /// leader. A failure to build the request settles the fill as failed.
    fn prepare(
        proxy: &Arc<Proxy>,
        site: &Arc<Site>,
        parts: &http::request::Parts,
        downstream: Downstream<'_>,
        plan: &FetchPlan,
        fill: &Arc<Fill>,
        fill_key: Option<FillKey>,
    ) -> Result<(FillJob, oneshot::Receiver<Response<Body>>, IpAddr), ProxyError> {
        let prepared = fill_request(proxy, site, parts, downstream, plan.stale.as_deref());
        let (request, client) = match prepared {
            Ok(prepared) => prepared,
            Err(err) => {
                if let Some(fill_key) = fill_key {
                    fill.publish(FillStatus::Failed(err.clone()));
                    proxy.cache.coalescer.leave(&fill_key, fill);
                }
                return Err(err);
            }
        };
        let (leader_tx, leader_rx) = oneshot::channel();
        let job = FillJob {
            proxy: Arc::clone(proxy),
            request,
            origin: site.origin.url().to_string(),
            key: plan.key,
            url: plan.url.clone(),
            client_headers: parts.headers.clone(),
            stale: plan.stale.clone(),
            rule: proxy
                .cache
                .rules
                .find(&site.name, parts.uri.path())
                .cloned(),
            fill: Arc::clone(fill),
            fill_key,
            leader: leader_tx,
        };
        Ok((job, leader_rx, client))
    }

    async fn run(self) {
        let fill = Arc::clone(&self.fill);
        let fill_key = self.fill_key;
        let proxy = Arc::clone(&self.proxy);
        self.fetch_and_store().await;
        if let Some(fill_key) = fill_key {
            proxy.cache.coalescer.leave(&fill_key, &fill);
        }
    }

    async fn fetch_and_store(self) {
        let FillJob {
            proxy,
            request,
            origin,
            key,
            url,
            client_headers,
            stale,
            rule,
            fill,
            leader,
            ..
        } = self;
        let with_rule = |mut freshness: Freshness| {
            if let Some(rule) = &rule {
                crate::cache::rules::apply(&mut freshness, rule);
            }
            freshness
        };
        let cache = &proxy.cache;
        let method = request.method().clone();
        let uri = request.uri().clone();
        let request_time = SystemTime::now();
        let response = match proxy.send_upstream(request, &origin).await {
            Ok(response) => response,
            Err(err) => {
                let error = err.proxy_status_error();
                match stale.filter(|s| stale_on_error_allowed(s, &client_headers)) {
                    Some(entry) => fill.publish(FillStatus::StaleOnError {
                        entry,
                        error,
                        fwd_status: None,
                    }),
                    None => fill.publish(FillStatus::Failed(err)),
                }
                return;
            }
        };
        let response_time = SystemTime::now();
        let (mut head, body) = response.into_parts();
        forwarding::strip_hop_by_hop(&mut head.headers);

        if head.status == StatusCode::NOT_MODIFIED {
            if let Some(stale) = stale
                .as_ref()
                .filter(|s| policy::not_modified_selects(&s.meta.headers, &head.headers))
            {
                let headers = policy::freshen_headers(&stale.meta.headers, &head.headers);
                let freshness = with_rule(Freshness::compute(
                    stale.meta.status,
                    &headers,
                    &cache.policy,
                    request_time,
                    response_time,
                ));
                let mut meta = stale.meta.clone();
                meta.headers = crate::cache::entry::compact_headers(&headers);
                meta.freshness = freshness;
                let entry = Arc::new(StoredResponse {
                    meta,
                    body: stale.body.clone(),
                });
                cache.store(Arc::clone(&entry), false).await;
                fill.publish(FillStatus::Complete {
                    entry,
                    revalidated: true,
                });
                return;
            }
        }

        let fetched_for = FetchedFor {
            method: &method,
            uri: &uri,
            headers: &client_headers,
        };
        // RFC 5861 §4: an error status from the origin may be answered with the stale entry.
        if matches!(head.status.as_u16(), 500 | 502 | 503 | 504) {
            if let Some(entry) = stale
                .as_ref()
                .filter(|s| stale_on_error_allowed(s, &client_headers))
            {
                let error = match head.status.as_u16() {
                    500 => "http_500",
                    502 => "http_502",
                    503 => "http_503",
                    _ => "http_504",
                };
                fill.publish(FillStatus::StaleOnError {
                    entry: Arc::clone(entry),
                    error,
                    fwd_status: Some(head.status.as_u16()),
                });
                return;
            }
        }
        let verdict = if head.status == StatusCode::NOT_MODIFIED {
            Err(NoStoreReason::Status)
        } else {
            policy::check_storable(
                &fetched_for,
                head.status,
                &head.headers,
                &cache.policy,
                response_time,
            )
            .and_then(|()| match content_length(&head.headers) {
                Some(len) if len > cache.storable_size() => Err(NoStoreReason::TooLarge),
                _ => Ok(()),
            })
        };
        let vary = Vary::from_response(&head.headers);
        let variant = vary.variant_key(&client_headers);
        let (Ok(()), Some(variant)) = (verdict, variant) else {
            let reason = verdict.err().unwrap_or(NoStoreReason::VaryStar);
            if reason != NoStoreReason::RequestNoStore {
                cache.remember_uncacheable(key).await;
            }
            fill.publish(FillStatus::Uncacheable(reason));
            forwarding::append_via(&mut head.headers, head.version, &proxy.proxy_name);
            // The leader may have gone; then nobody needs this response.
            let _ = leader.send(Response::from_parts(head, Body::from(body)));
            return;
        };
        cache.forget_uncacheable(&key).await;

        let freshness = with_rule(Freshness::compute(
            head.status,
            &head.headers,
            &cache.policy,
            request_time,
            response_time,
        ));
        let meta = Arc::new(EntryMeta::new(
            key,
            url,
            head.status,
            head.headers,
            (vary, variant),
            freshness,
        ));
        fill.publish(FillStatus::Streaming(Arc::clone(&meta)));
        let limits = PumpLimits {
            memory: cache.max_object_size,
            disk: cache.storable_size(),
            declared: content_length(&meta.headers),
        };
        let disk = cache.live_disk();
        match pump(body, &fill, limits, proxy.body_read_timeout, disk).await {
            Pumped::Complete {
                is_retained: true,
                last,
                ..
            } => {
                let body = fill.retained_body(last.as_ref());
                let entry = Arc::new(StoredResponse::new((*meta).clone(), body));
                cache.store(Arc::clone(&entry), true).await;
                fill.end(last);
                fill.publish(FillStatus::Complete {
                    entry,
                    revalidated: false,
                });
            }
            Pumped::Complete {
                is_retained: false,
                last,
                spilled: Some(temp),
            } => {
                // Streamed to disk as it arrived: index the file, then release the last
                // chunk, so a client holding the whole response finds it stored.
                let mut stored = (*meta).clone();
                stored.body_len = temp.len;
                stored.body_digest = temp.digest;
                let blocks = (!temp.blocks.is_empty()).then(|| temp.blocks.clone());
                let entry = match disk {
                    Some(disk) => match disk.commit_temp(stored.clone(), temp).await {
                        Some(evicted) => {
                            crate::cache::forget_evicted_files(&cache.memory, &evicted).await;
                            // A tier too small to keep it evicts it at once.
                            let path = disk.inner().blob_path(&stored.body_digest);
                            (!evicted.contains(&stored.key))
                                .then(|| Arc::new(StoredResponse::in_file(stored, path, blocks)))
                        }
                        None => None,
                    },
                    None => None,
                };
                if let Some(entry) = &entry {
                    cache.memory.insert(Arc::clone(entry)).await;
                }
                fill.end(last);
                match entry {
                    Some(entry) => fill.publish(FillStatus::Complete {
                        entry,
                        revalidated: false,
                    }),
                    // Followers of the file need an ending too.
                    None => fill.publish(FillStatus::Failed(ProxyError::Internal(
                        "the disk tier failed while storing".into(),
                    ))),
                }
            }
            Pumped::Complete {
                is_retained: false,
                last,
                ..
            } => {
                // Streamed through, too large to keep: the next burst goes straight through.
                cache.remember_uncacheable(key).await;
                fill.end(last);
            }
            Pumped::Failed => {
                fill.publish(FillStatus::Failed(ProxyError::ResponseIncomplete {
                    origin: origin.clone(),
                    detail: "origin failed mid-body".into(),
                }));
                tracing::warn!(%origin, url = %meta.url, "origin failed mid-body: readers aborted, nothing stored");
            }
            Pumped::Abandoned => {}
        }
    }
}

pub(super) enum Pumped {
    /// The whole body arrived; `last` is the held-back final chunk, for the caller to hand
    /// to [`Fill::end`] once the entry is stored (so that a client that has the whole
    /// response and asks again finds it in the cache). `spilled`: the body, too large for
    /// memory, was written to a disk-tier file as it streamed.
    Complete {
        is_retained: bool,
        last: Option<bytes::Bytes>,
        spilled: Option<TempBlob>,
    },
    Failed,
    /// Not being stored and every reader has gone.
    Abandoned,
}

/// Size limits for one fill.
pub(super) struct PumpLimits {
    /// Bodies up to this size are kept in memory.
    pub memory: u64,
    /// Bodies up to this size are written to the disk tier (when there is one).
    pub disk: u64,
    /// Content-Length, when the origin sent one.
    pub declared: Option<u64>,
}

impl PumpLimits {
    pub fn memory_only(max: u64) -> PumpLimits {
        PumpLimits {
            memory: max,
            disk: max,
            declared: None,
        }
    }
}

/// Moves a body (the origin's, or an encoder's) into the fill, chunk by chunk. A body that
/// outgrows memory is written to a disk-tier file as it goes, when `disk` is given and the
/// body fits its limit. On failure the fill is ended as failed here (and a partial file
/// discarded); on success the caller ends it with [`Fill::end`].
pub(super) async fn pump<B>(
    mut body: B,
    fill: &Fill,
    limits: PumpLimits,
    read_timeout: Duration,
    disk: Option<&DiskTier>,
) -> Pumped
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    let mut total: u64 = 0;
    let mut is_retained = true;
    let mut writer: Option<BlobWriter> = None;
    if let (Some(disk), Some(declared)) = (disk, limits.declared) {
        if declared > limits.memory && declared <= limits.disk {
            // Known to be too large for memory: straight to disk, nothing held.
            writer = disk.blob_writer().await;
            if let Some(writer) = &writer {
                is_retained = false;
                fill.spill_started(writer.path().to_path_buf());
                fill.stop_retaining();
            }
        }
    }
    // While the body is being kept, its newest chunk is held back: readers get the last
    // chunk only after the caller has stored the entry (see `Fill::end`).
    let mut held: Option<bytes::Bytes> = None;
    loop {
        let frame = match tokio::time::timeout(read_timeout, body.frame()).await {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(_))) | Err(_) => {
                if let Some(writer) = writer.take() {
                    fill.spill_abandoned();
                    writer.discard().await;
                }
                fill.fail();
                return Pumped::Failed;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if is_retained && total > limits.memory {
            is_retained = false;
            if let Some(disk) = disk.filter(|_| total <= limits.disk) {
                writer = spill_so_far(disk, fill, held.as_ref()).await;
                if let Some(writer) = &writer {
                    fill.spill_started(writer.path().to_path_buf());
                }
            }
            fill.stop_retaining();
        }
        if total > limits.disk {
            if let Some(writer) = writer.take() {
                fill.spill_abandoned();
                writer.discard().await;
            }
        }
        if let Some(active) = writer.as_mut() {
            match active.write(&data).await {
                Ok(()) => fill.spill_progress(active.flushed()),
                Err(err) => {
                    fill.spill_abandoned();
                    if let (Some(writer), Some(disk)) = (writer.take(), disk) {
                        disk.degrade(&crate::cache::disk::DiskError::Io {
                            path: "body file".into(),
                            source: err,
                        });
                        writer.discard().await;
                    }
                }
            }
        }
        if is_retained || writer.is_some() {
            if let Some(previous) = held.replace(data) {
                fill.push(previous);
            }
            if writer.is_some() {
                // A reader far behind continues from the file, so neither memory nor the
                // other readers wait for it.
                fill.detach_slow_readers(UNSTORED_WINDOW);
            }
            continue;
        }
        if let Some(previous) = held.take() {
            fill.push(previous);
        }
        fill.push(data);
        if !fill.wait_for_readers(UNSTORED_WINDOW).await {
            fill.fail();
            return Pumped::Abandoned;
        }
    }
    let spilled = match writer {
        Some(writer) => match writer.finish().await {
            Ok(temp) => {
                fill.spill_progress(temp.len);
                Some(temp)
            }
            Err(err) => {
                fill.spill_abandoned();
                if let Some(disk) = disk {
                    disk.degrade(&crate::cache::disk::DiskError::Io {
                        path: "body file".into(),
                        source: err,
                    });
                }
                None
            }
        },
        None => None,
    };
    if !is_retained && spilled.is_none() {
        if let Some(previous) = held.take() {
            fill.push(previous);
        }
    }
    Pumped::Complete {
        is_retained,
        last: held,
        spilled,
    }
}

/// A disk-tier writer holding everything the fill kept so far (`held`: the chunk not yet
/// handed to readers); `None` when the tier cannot take it.
async fn spill_so_far(
    disk: &DiskTier,
    fill: &Fill,
    held: Option<&bytes::Bytes>,
) -> Option<BlobWriter> {
    let mut writer = disk.blob_writer().await?;
    let so_far = fill.retained_body(held);
    match writer.write(&so_far).await {
        Ok(()) => Some(writer),
        Err(err) => {
            disk.degrade(&crate::cache::disk::DiskError::Io {
                path: "body file".into(),
                source: err,
            });
            writer.discard().await;
            None
        }
    }
}
