//! The cache-lookup phase: what the cache can do for a request at `now` (RFC 9111 §4):
//! serve a stored response, serve it stale while validating it in the background, fetch
//! (a miss, or a stored response to validate), bypass, or answer 504 without the origin.
//!
//! The lookup decides; it sends nothing. Serving and fetching are the pipeline's phases.

use std::sync::Arc;
use std::time::SystemTime;

use http::{header, Method};

use super::entry::StoredResponse;
use super::key::{PrimaryKey, VariantKey};
use super::memory::VariantSet;
use super::partial::PartialEntry;
use super::policy::{self, Reuse};
use super::Cache;
use crate::telemetry::cache_status::{CacheStatus, FwdReason};
use crate::telemetry::{Detail, Tier};

/// What the lookup found and wants fetched.
#[derive(Clone)]
pub struct MissPlan {
    pub key: PrimaryKey,
    pub url: String,
    /// The request's variant under the Vary rule already known for the URL.
    pub variant_hint: VariantKey,
    /// A stored response to validate, if any.
    pub stale: Option<Arc<StoredResponse>>,
    /// On a Vary miss, the resource's other variants with strong ETags (one per tag, at
    /// most [`MAX_OFFERED_TAGS`]): the fill asks the origin with those ETags alone (RFC
    /// 9111 §4.3.1: a cache may validate with the entity tags of all its stored responses),
    /// and a 304 naming one says this request selects that representation, whose stored
    /// body then answers without being sent again.
    pub other_variants: Vec<Arc<StoredResponse>>,
    pub reason: FwdReason,
    /// RFC 9111 §3.5: an authorised request must not share a fetch it might not be allowed
    /// to share; a no-store request stores nothing for others to share.
    pub is_coalescable: bool,
    /// Send the client's Range to the origin (its 206 is kept as a partial entry) instead
    /// of fetching the whole representation; such a fetch is never shared.
    pub forwards_range: bool,
    /// A partial entry that holds the forwarded range but may not be used unvalidated: the
    /// range is asked for with its validators, and a 304 freshens it and answers from it
    /// (RFC 9111 §4.3.1, §4.3.4), sparing the bytes.
    pub stale_partial: Option<Arc<PartialEntry>>,
    /// A partial entry holding the representation's first bytes: the fill asks for the
    /// rest alone (`Range` with `If-Range`) and joins the two (RFC 9111 §3.3, §3.4).
    pub prefix: Option<Arc<PartialEntry>>,
}

/// The most entity tags a Vary miss offers the origin (see [`MissPlan::other_variants`]):
/// enough for the representations a resource varies between in practice (a device class,
/// a language), few enough that a resource stored under many request variants does not
/// make every miss send a long If-None-Match.
pub const MAX_OFFERED_TAGS: usize = 8;

/// The origin's variants in `set` a Vary miss may be validated with: those with a strong
/// entity tag, one for each tag.
fn offered(set: &VariantSet) -> Vec<Arc<StoredResponse>> {
    let mut offered: Vec<Arc<StoredResponse>> = Vec::new();
    for entry in set.iter() {
        if offered.len() == MAX_OFFERED_TAGS {
            break;
        }
        let headers = &entry.meta.headers;
        let is_new_tag = !offered
            .iter()
            .any(|chosen| policy::same_entity_tag(&chosen.meta.headers, headers));
        if entry.meta.derivation.is_none()
            && policy::validates_other_variants(headers)
            && is_new_tag
        {
            offered.push(Arc::clone(entry));
        }
    }
    offered
}

/// The outcome of the cache-lookup phase.
pub enum Lookup {
    /// Serve this stored response (`set` holds its encoded variants), found in `tier`;
    /// with a plan when it is served stale and validated in the background (RFC 5861 §3).
    Hit {
        entry: Arc<StoredResponse>,
        set: Arc<VariantSet>,
        status: CacheStatus,
        tier: Tier,
        revalidate: Option<MissPlan>,
    },
    /// `only-if-cached` and nothing usable is stored: 504 without asking the origin.
    OnlyIfCachedMiss,
    /// Offline mode and nothing usable is stored: 504 without asking the origin.
    OfflineMiss,
    /// Forward without the cache (unsafe method, preconditions, cache off).
    Bypass(CacheStatus),
    /// Fetch through the cache: a miss, or a stored response to validate.
    Fetch(MissPlan),
    /// A partial entry of the representation may answer this Range request (RFC 9111
    /// §3.3): if it holds every byte asked for, it does (with `status`); if not, `otherwise`.
    /// One that `must_validate` (stale, or `no-cache`) answers only once the origin says
    /// it is unchanged.
    Partial {
        entry: Arc<PartialEntry>,
        status: CacheStatus,
        otherwise: Box<Lookup>,
        must_validate: bool,
    },
}

/// A partial entry a Range request may be answered from, how, and whether only once
/// validated.
struct PartialUse {
    entry: Arc<PartialEntry>,
    status: CacheStatus,
    must_validate: bool,
}

/// What the lookup knows once it has looked at the tiers.
struct Found {
    entry: Arc<StoredResponse>,
    set: Arc<VariantSet>,
    tier: Tier,
}

impl Cache {
    /// Looks `request` (for `scheme://authority`, the authority canonical) up at `now`.
    pub async fn lookup(
        &self,
        request: &http::request::Parts,
        scheme: &str,
        authority: &str,
        now: SystemTime,
    ) -> Lookup {
        if let Some(bypass) = self.bypass(request) {
            return bypass;
        }
        let headers = &request.headers;
        let path_and_query = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let key = PrimaryKey::new(scheme, authority, path_and_query);
        let directives = policy::request_directives(headers);
        let has_authorization = headers.contains_key(header::AUTHORIZATION);
        let (mut variants, mut tier) = match self.variants(&key, headers).await {
            Some((set, tier)) => (Some(set), tier),
            None => (None, Tier::Memory),
        };
        let mut selected = variants
            .as_ref()
            .and_then(|set| set.select(headers))
            .cloned();
        if selected.is_none() && tier == Tier::Memory && variants.is_some() {
            // A vary-miss in memory may be a variant only the disk tier still holds.
            if let Some(set) = self.variant_on_disk(&key, headers).await {
                selected = set.select(headers).cloned();
                (variants, tier) = (Some(set), Tier::Disk);
            }
        }
        let plan = PlanSource {
            key,
            url: (scheme, authority, path_and_query),
            headers,
            variants: variants.as_deref(),
            is_coalescable: !has_authorization && !directives.no_store,
        };
        let (Some(entry), Some(set)) = (selected, variants.clone()) else {
            let is_vary_miss = variants.as_ref().is_some_and(|set| !set.is_empty());
            let partial = self.usable_partial(&key, request, &directives, now).await;
            let mut miss_plan = plan.plan();
            // Not for a request whose answer may not be stored (no-store): a 304 the
            // request made unstorable would otherwise drop the variant it validated, which
            // others are being served.
            if is_vary_miss && !has_authorization && !directives.no_store {
                miss_plan.other_variants = variants.as_deref().map_or_else(Vec::new, offered);
            }
            let miss = self.miss(miss_plan, &directives, is_vary_miss);
            return match partial {
                Some(PartialUse {
                    entry,
                    status,
                    must_validate,
                }) => Lookup::Partial {
                    entry,
                    status,
                    otherwise: Box::new(miss),
                    must_validate,
                },
                None => miss,
            };
        };
        if has_authorization && !entry.meta.freshness.is_shareable_with_authorization {
            // RFC 9111 §3.5: not reusable for a request with Authorization.
            return Lookup::Bypass(
                CacheStatus::forward(FwdReason::Request).with_detail(Detail::Authorization),
            );
        }
        let found = Found { entry, set, tier };
        self.reuse(found, &directives, now, &plan)
    }

    /// Requests the cache does not handle: it is off, the method is not GET or HEAD, or the
    /// request has preconditions the cache does not evaluate.
    fn bypass(&self, request: &http::request::Parts) -> Option<Lookup> {
        let bypass = |detail| CacheStatus::forward(FwdReason::Bypass).with_detail(detail);
        if !self.is_enabled {
            return Some(Lookup::Bypass(bypass(Detail::Disabled)));
        }
        if request.method != Method::GET && request.method != Method::HEAD {
            return Some(Lookup::Bypass(CacheStatus::forward(FwdReason::Method)));
        }
        let headers = &request.headers;
        let has_preconditions = headers.contains_key(header::IF_MATCH)
            || headers.contains_key(header::IF_UNMODIFIED_SINCE);
        has_preconditions.then(|| Lookup::Bypass(bypass(Detail::Precondition)))
    }

    /// The partial entry that may answer this GET with a Range, and the Cache-Status of
    /// doing so: its variant is the request's and it may be reused now (fresh, allowed
    /// stale, or offline), or once validated, when it has a strong entity tag (a weak one
    /// would not vouch for its bytes, RFC 9110 §8.8.1).
    /// The partial entry `request` (a Range request) may be served from now without the
    /// origin, if one is stored: for a request that waited on a fill which kept the 206 it
    /// asked for as a partial entry. Whether it holds the range is the caller's to judge.
    pub async fn partial_to_serve(
        &self,
        key: &PrimaryKey,
        request: &http::request::Parts,
        now: SystemTime,
    ) -> Option<Arc<PartialEntry>> {
        let directives = policy::request_directives(&request.headers);
        self.usable_partial(key, request, &directives, now)
            .await
            .filter(|usable| !usable.must_validate)
            .map(|usable| usable.entry)
    }

    async fn usable_partial(
        &self,
        key: &PrimaryKey,
        request: &http::request::Parts,
        directives: &policy::Directives,
        now: SystemTime,
    ) -> Option<PartialUse> {
        if request.method != Method::GET || !request.headers.contains_key(header::RANGE) {
            return None;
        }
        let entry = self.partial(key).await?;
        let meta = &entry.meta;
        if meta.vary.variant_key(&request.headers) != Some(meta.variant)
            || (request.headers.contains_key(header::AUTHORIZATION)
                && !meta.freshness.is_shareable_with_authorization)
        {
            return None;
        }
        let ttl = meta.freshness.ttl_seconds(now);
        let usable = |entry, status, must_validate| PartialUse {
            entry,
            status,
            must_validate,
        };
        match policy::evaluate_reuse(&meta.freshness, directives, now) {
            Reuse::Fresh | Reuse::StaleAllowed => {}
            _ if self.is_offline() && self.offline_may_serve(&meta.freshness) => {
                let status = CacheStatus::hit(ttl).with_detail(Detail::Offline);
                return Some(usable(entry, status, false));
            }
            _ if entry.has_strong_validator() => {
                let status = CacheStatus::forward(FwdReason::Stale).with_detail(Detail::Partial);
                return Some(usable(entry, status, true));
            }
            _ => return None,
        }
        Some(usable(
            entry,
            CacheStatus::hit(ttl).with_detail(Detail::Partial),
            false,
        ))
    }

    /// The partial entry whose first bytes a fetch of the whole representation for `request`
    /// may start from (RFC 9111 §3.3: a cache may complete an incomplete response with a
    /// range request): one of the request's variant, shareable with it, holding a prefix
    /// short of the whole under a strong entity tag, which the request for the rest sends
    /// as If-Range, from an origin that did not say it serves no ranges. Its freshness does
    /// not matter: the origin's 206 vouches for the prefix.
    pub async fn prefix_to_complete(
        &self,
        key: &PrimaryKey,
        request: &http::request::Parts,
    ) -> Option<Arc<PartialEntry>> {
        if request.method != Method::GET {
            return None;
        }
        let entry = self.partial(key).await?;
        let meta = &entry.meta;
        let shareable = !request.headers.contains_key(header::AUTHORIZATION)
            || meta.freshness.is_shareable_with_authorization;
        (shareable
            && entry.completable_prefix() > 0
            && meta.vary.variant_key(&request.headers) == Some(meta.variant))
        .then_some(entry)
    }

    /// Offline mode serves what is stored, fresh or not, unless the response forbids stale
    /// use and the operator did not override that.
    fn offline_may_serve(&self, freshness: &policy::Freshness) -> bool {
        !freshness.forbids_stale || self.offline_ignores_revalidation
    }

    /// Nothing stored selects this request.
    fn miss(&self, plan: MissPlan, directives: &policy::Directives, is_vary_miss: bool) -> Lookup {
        if directives.only_if_cached {
            return Lookup::OnlyIfCachedMiss;
        }
        if self.is_offline() {
            return Lookup::OfflineMiss;
        }
        let reason = if is_vary_miss {
            FwdReason::VaryMiss
        } else {
            FwdReason::UriMiss
        };
        Lookup::Fetch(MissPlan { reason, ..plan })
    }

    /// What may be done with the stored response that selects this request (RFC 9111 §4.2,
    /// §4.3; RFC 5861 §3), in offline mode too.
    fn reuse(
        &self,
        found: Found,
        directives: &policy::Directives,
        now: SystemTime,
        plan: &PlanSource<'_>,
    ) -> Lookup {
        let Found { entry, set, tier } = found;
        let ttl = entry.meta.freshness.ttl_seconds(now);
        let validate = |entry, reason| {
            Lookup::Fetch(MissPlan {
                stale: Some(entry),
                reason,
                ..plan.plan()
            })
        };
        let hit = |entry, status, revalidate| Lookup::Hit {
            entry,
            set,
            status,
            tier,
            revalidate,
        };
        let reuse = policy::evaluate_reuse(&entry.meta.freshness, directives, now);
        if self.is_offline() && !matches!(reuse, Reuse::Fresh | Reuse::StaleAllowed) {
            if !self.offline_may_serve(&entry.meta.freshness) {
                return Lookup::OfflineMiss;
            }
            return hit(
                entry,
                CacheStatus::hit(ttl).with_detail(Detail::Offline),
                None,
            );
        }
        match reuse {
            Reuse::Fresh | Reuse::StaleAllowed => hit(entry, CacheStatus::hit(ttl), None),
            Reuse::StaleWhileRevalidate if !directives.only_if_cached => {
                let revalidate = MissPlan {
                    stale: Some(Arc::clone(&entry)),
                    reason: FwdReason::Stale,
                    ..plan.plan()
                };
                let status = CacheStatus::hit(ttl).with_detail(Detail::StaleWhileRevalidate);
                hit(entry, status, Some(revalidate))
            }
            _ if directives.only_if_cached => Lookup::OnlyIfCachedMiss,
            Reuse::ValidateStale | Reuse::StaleWhileRevalidate => validate(entry, FwdReason::Stale),
            Reuse::ValidateForRequest => validate(entry, FwdReason::Request),
        }
    }

    /// The stored `coding` encoding of `source` in memory, if there is one now (one may have
    /// settled since the caller looked).
    pub fn stored_encoding(
        &self,
        source: &StoredResponse,
        coding: crate::transform::compress::Coding,
    ) -> Option<Arc<StoredResponse>> {
        let set = self.memory.peek(&source.meta.key)?;
        set.select_encoded(source, coding).cloned()
    }

    /// A fresh stored response for `plan` that arrived after its lookup (a fill that
    /// settled between the lookup and joining the coalescer); memory only.
    pub fn stored_meanwhile(
        &self,
        plan: &MissPlan,
        request: &http::request::Parts,
        now: SystemTime,
    ) -> Option<(Arc<VariantSet>, Arc<StoredResponse>)> {
        if plan.stale.is_some() {
            return None;
        }
        let set = self.memory.peek(&plan.key)?;
        let entry = Arc::clone(set.select(&request.headers)?);
        let directives = policy::request_directives(&request.headers);
        if policy::evaluate_reuse(&entry.meta.freshness, &directives, now) != Reuse::Fresh {
            return None;
        }
        Some((set, entry))
    }
}

/// What a miss plan is made of, kept as borrowed parts until a plan is wanted: most
/// lookups are hits and want none, so no hit builds the URL or clones the key's parts.
struct PlanSource<'a> {
    key: PrimaryKey,
    /// Scheme, canonical authority, path and query.
    url: (&'a str, &'a str, &'a str),
    headers: &'a http::HeaderMap,
    variants: Option<&'a VariantSet>,
    is_coalescable: bool,
}

impl PlanSource<'_> {
    fn plan(&self) -> MissPlan {
        let (scheme, authority, path_and_query) = self.url;
        MissPlan {
            key: self.key,
            url: joined_url(scheme, authority, path_and_query),
            variant_hint: self
                .variants
                .and_then(|set| set.iter().next())
                .and_then(|entry| entry.meta.vary.variant_key(self.headers))
                .unwrap_or(VariantKey::NONE),
            stale: None,
            other_variants: Vec::new(),
            reason: FwdReason::UriMiss,
            is_coalescable: self.is_coalescable,
            forwards_range: false,
            stale_partial: None,
            prefix: None,
        }
    }
}

/// The plan of a fill nobody joins that stores a response to a request the lookup did not
/// plan for (RFC 9110 §9.3.3: a POST's, for later GETs of the same target), under the
/// target's GET key.
pub fn unshared_plan(
    (scheme, authority, path_and_query): (&str, &str, &str),
    reason: FwdReason,
) -> MissPlan {
    MissPlan {
        key: PrimaryKey::new(scheme, authority, path_and_query),
        url: joined_url(scheme, authority, path_and_query),
        variant_hint: VariantKey::NONE,
        stale: None,
        other_variants: Vec::new(),
        reason,
        is_coalescable: false,
        forwards_range: false,
        stale_partial: None,
        prefix: None,
    }
}

/// `scheme://authority/path?query`, joined in one allocation.
fn joined_url(scheme: &str, authority: &str, path_and_query: &str) -> String {
    let mut url = String::with_capacity(scheme.len() + 3 + authority.len() + path_and_query.len());
    url.push_str(scheme);
    url.push_str("://");
    url.push_str(authority);
    url.push_str(path_and_query);
    url
}
