//! The memory tier: moka's `sync::Cache` from primary key to the set of stored variants,
//! weighed by every byte an entry holds. What leaves when it is full is decided by
//! [`WindowTinyLfu`] (the default; moka then stores without a bound of its own, and the
//! policy's evictions are removed from it), or by moka's own LRU or TinyLFU.
//!
//! moka's weighted TinyLFU is not the default because it compares a newcomer with the
//! summed popularity of all the entries it would evict: measured here, once the tier was
//! full of 1 KiB one-hit objects, a hot 100 KiB object was refused on every request. Plain
//! LRU lets a scan of one-hit objects flush the hot set. Which variant answers a request is
//! chosen here; whether it may answer is `policy`'s call.
//!
//! The policy runs behind a mutex and moka's operations happen after it decides, so two
//! threads can interleave: the policy may then hold a key moka no longer has (a lookup
//! that finds nothing forgets it), never the reverse, so the bytes moka holds stay within
//! what the policy counts.
//!
//! moka's sync cache, not its future one: nothing here waits for I/O, and the future
//! cache's lookup is a 768-byte future that every lookup's state carried and copied
//! (1.7% of a memory hit's instructions). The tier's methods stay `async` for callers.
//!
//! # Concurrent calls
//! Reads never block writers. Adding a variant uses moka's per-key compute, so two fills
//! of different variants of one URL never lose each other's entry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderMap;
use moka::ops::compute::{CompResult, Op};
use parking_lot::Mutex;

use super::entry::{EntryMeta, StoredBody, StoredResponse};
use super::heap_release::HeapDecline;
use super::key::{DigestHasher, PrimaryKey, VariantKey, Vary};
use super::replacement::{NewcomerRoom, WindowTinyLfu};
use crate::config::{MemoryPolicy, MEMORY_TIER_LEAST_SHARE};
use crate::transform::compress::Coding;
use prometheus_client::metrics::counter::Counter;

/// All stored variants of one resource, newest first.
#[derive(Debug, Default)]
pub struct VariantSet {
    variants: Vec<Arc<StoredResponse>>,
    /// Set when the tier replaces or removes this set (a store, purge or eviction), before
    /// the call doing it returns: whoever kept the set can tell it is no longer the
    /// resource's without asking moka (see [`MemoryTier::holds`]). A set is never stored
    /// again once retired; a copy of it is a new set.
    retired: AtomicBool,
}

impl Clone for VariantSet {
    fn clone(&self) -> VariantSet {
        VariantSet {
            variants: self.variants.clone(),
            retired: AtomicBool::new(false),
        }
    }
}

/// Removes stored encodings whose source body no variant has any more.
fn drop_orphaned_encodings(variants: &mut Vec<Arc<StoredResponse>>) {
    let source_digests: Vec<[u8; 32]> = variants
        .iter()
        .filter(|v| v.meta.derivation.is_none())
        .map(|v| v.meta.body_digest)
        .collect();
    variants.retain(|v| {
        v.meta
            .derivation
            .is_none_or(|d| source_digests.contains(&d.source_digest))
    });
}

impl VariantSet {
    /// The newest variant whose Vary rule gives `request` the variant key it was stored
    /// under; failing that, one in the language `request` prefers most (see
    /// [`Vary::selects_by_language`]). Variants usually share one Vary rule, so its key is
    /// computed once.
    pub fn select(&self, request: &HeaderMap) -> Option<&Arc<StoredResponse>> {
        let mut last_rule: Option<(&Vary, Option<VariantKey>)> = None;
        self.variants
            .iter()
            .filter(|entry| entry.meta.derivation.is_none())
            .find(|entry| {
                let vary = &entry.meta.vary;
                let key = match last_rule {
                    Some((rule, key)) if rule == vary => key,
                    _ => {
                        let key = vary.variant_key(request);
                        last_rule = Some((vary, key));
                        key
                    }
                };
                key == Some(entry.meta.variant)
            })
            .or_else(|| {
                self.variants.iter().find(|entry| {
                    entry.meta.derivation.is_none()
                        && entry
                            .meta
                            .vary
                            .selects_by_language(&entry.meta.headers, request)
                })
            })
    }

    /// Of stored metadata (as the disk tier lists it), the newest origin variant `request`
    /// selects, as [`VariantSet::select`] chooses.
    pub fn select_meta<'a>(metas: &'a [EntryMeta], request: &HeaderMap) -> Option<&'a EntryMeta> {
        let origin_variants = || metas.iter().filter(|meta| meta.derivation.is_none());
        origin_variants()
            .find(|meta| meta.vary.variant_key(request) == Some(meta.variant))
            .or_else(|| {
                origin_variants().find(|meta| meta.vary.selects_by_language(&meta.headers, request))
            })
    }

    /// The stored `coding` encoding of `source`, if it was made from `source`'s current body.
    pub fn select_encoded(
        &self,
        source: &StoredResponse,
        coding: Coding,
    ) -> Option<&Arc<StoredResponse>> {
        let key = source.meta.variant.derived(coding.as_str());
        self.variants.iter().find(|entry| {
            entry.meta.variant == key
                && entry.meta.derivation.is_some_and(|d| {
                    d.coding == coding && d.source_digest == source.meta.body_digest
                })
        })
    }

    pub fn len(&self) -> usize {
        self.variants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.variants.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<StoredResponse>> {
        self.variants.iter()
    }

    /// Whether a variant's body is in a sealed memory file (which may carry a hold on the
    /// fills' budget while its pages are held).
    fn has_sealed_body(&self) -> bool {
        self.variants
            .iter()
            .any(|variant| matches!(variant.body, StoredBody::Sealed(_)))
    }

    /// Marks the set replaced or removed (see [`VariantSet::retired`]).
    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    fn weight(&self) -> u32 {
        let total: usize = self.variants.iter().map(|v| v.weight()).sum();
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// What of its weight is on the heap: all but bodies in memory files.
    fn heap_weight(&self) -> u64 {
        let total: usize = self
            .variants
            .iter()
            .map(|variant| match &variant.body {
                StoredBody::Sealed(sealed) => variant.weight().saturating_sub(sealed.bytes().len()),
                StoredBody::Memory(_) | StoredBody::File(_) => variant.weight(),
            })
            .sum();
        total as u64
    }

    /// This set with `entry` replacing any variant with the same key, bounded to
    /// `max_variants`. Derived entries whose source body is gone are dropped, and derived
    /// entries go before origin variants when the bound bites (oldest first in each group).
    fn with(&self, entry: Arc<StoredResponse>, max_variants: usize) -> VariantSet {
        if let StoredBody::Sealed(sealed) = &entry.body {
            // Counted by the tier again: no longer held against the fills' budget.
            sealed.release_keepsake();
        }
        let mut variants = Vec::with_capacity(self.variants.len() + 1);
        variants.push(Arc::clone(&entry));
        variants.extend(
            self.variants
                .iter()
                .filter(|v| v.meta.variant != entry.meta.variant)
                .cloned(),
        );
        drop_orphaned_encodings(&mut variants);
        while variants.len() > max_variants.max(1) {
            let victim = variants
                .iter()
                .rposition(|v| v.meta.derivation.is_some())
                .unwrap_or(variants.len() - 1);
            variants.remove(victim);
        }
        VariantSet {
            variants,
            retired: AtomicBool::new(false),
        }
    }
}

/// Called with each resource the memory tier evicts for room.
pub type EvictionHook = Box<dyn Fn(&VariantSet) + Send + Sync>;

/// The in-memory tier.
#[derive(Clone)]
pub struct MemoryTier {
    cache: moka::sync::Cache<PrimaryKey, Arc<VariantSet>, DigestHasher>,
    max_variants: usize,
    /// Set with the W-TinyLFU policy: it decides evictions (moka's are unbounded then).
    replacement: Option<Arc<Replacement>>,
    /// Heap stored and evicted, so heap displaced by bodies off it is given back at once.
    heap: Arc<HeapDecline>,
}

/// An evicted resource at least this heavy (or with a sealed body) is let go at once rather
/// than at moka's next maintenance (see [`MemoryTier::remove_evicted`]): beside a body this
/// size, maintenance is cheap.
const LARGE_EVICTION: u64 = 256 << 10;

/// Memory held outside the tier on its behalf, in bytes (see [`MemoryTier::charged_with`]).
pub type MemoryCharge = Box<dyn Fn() -> u64 + Send + Sync>;

/// The W-TinyLFU policy and what its evictions report to.
struct Replacement {
    policy: Mutex<WindowTinyLfu<PrimaryKey>>,
    evictions: Counter,
    on_evict: Option<EvictionHook>,
    /// The capacity configured (changed by [`MemoryTier::resize`]): the policy's is this
    /// less what `charge` reports.
    configured: AtomicU64,
    charge: Option<MemoryCharge>,
    /// Whether the charge has been found larger than the tier may give up (said once).
    charge_capped: std::sync::atomic::AtomicBool,
}

impl Replacement {
    /// Stores `key` weighing `size` with the policy (pushing onto `evicted` what leaves),
    /// after bringing the policy's capacity in line with the charge.
    fn insert(&self, key: PrimaryKey, size: u64, evicted: &mut Vec<PrimaryKey>) {
        let configured = self.configured.load(Ordering::Relaxed);
        let mut capacity = self.capacity_now();
        let mut policy = self.policy.lock();
        if self.configured.load(Ordering::Relaxed) != configured {
            // A resize came in between: the capacity worked out before it would undo it.
            capacity = self.capacity_now();
        }
        if policy.capacity() != capacity {
            policy.set_capacity(capacity, evicted);
        }
        policy.insert(key, size, NEVER, evicted);
    }

    /// The configured capacity less the charge, down to its floor.
    fn capacity_now(&self) -> u64 {
        let configured = self.configured.load(Ordering::Relaxed);
        let Some(charge) = &self.charge else {
            return configured;
        };
        // A disk index larger than the rest would otherwise leave no memory tier at all; at
        // the floor the tier keeps the hottest objects while a disk index of up to the rest
        // of the capacity still leaves the process within it.
        let floor = configured / MEMORY_TIER_LEAST_SHARE;
        let charged = charge();
        let capacity = configured.saturating_sub(charged);
        if capacity < floor {
            if !self.charge_capped.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    charged_bytes = charged,
                    capacity = configured,
                    "the disk tier (its index and write queue) and partial entries hold \
                     more memory than seven eighths of the memory tier's share of \
                     cache.memory_capacity: the tier keeps an eighth, and the process will \
                     use more than the capacity configured; raise cache.memory_capacity, or \
                     cap cache.disk_max_objects or cache.partial_capacity"
                );
            }
            return floor;
        }
        capacity
    }
}

/// Expiry is the entries' own business; the policy's is for replay.
const NEVER: u32 = u32::MAX;

/// What the policy itself costs per resource, counted against the capacity with the
/// resource: its node and index slot, its share of the sketch, and moka's table entry
/// (moka weighs nothing of its own when unbounded). Measured: a 128 MiB tier filled with
/// 1 KiB objects ran 5.4 MiB higher in RSS than with moka's LRU before this was counted.
/// The sketch's doorkeeper added 20 bytes (80 bits per object it is sized for, up to two per
/// object held).
const POLICY_OVERHEAD: u64 = 212;

impl MemoryTier {
    /// `capacity` is in bytes, as weighed by [`StoredResponse::weight`].
    /// `evictions` counts resources removed to make room; `on_evict` sees each of them.
    pub fn new(
        capacity: u64,
        max_variants: usize,
        policy: MemoryPolicy,
        evictions: Counter,
        on_evict: Option<EvictionHook>,
    ) -> MemoryTier {
        let heap = Arc::new(HeapDecline::new(capacity));
        let eviction = match policy {
            MemoryPolicy::Wtinylfu => {
                let cache = moka::sync::Cache::builder()
                    .weigher(|_key: &PrimaryKey, set: &Arc<VariantSet>| set.weight())
                    .build_with_hasher(DigestHasher::default());
                let replacement = Replacement {
                    policy: Mutex::new(WindowTinyLfu::new(capacity)),
                    evictions,
                    on_evict,
                    configured: AtomicU64::new(capacity),
                    charge: None,
                    charge_capped: std::sync::atomic::AtomicBool::new(false),
                };
                return MemoryTier {
                    cache,
                    max_variants: max_variants.max(1),
                    replacement: Some(Arc::new(replacement)),
                    heap,
                };
            }
            MemoryPolicy::Lru => moka::policy::EvictionPolicy::lru(),
            MemoryPolicy::Tinylfu => moka::policy::EvictionPolicy::tiny_lfu(),
        };
        let evicted_heap = Arc::clone(&heap);
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(eviction)
            .weigher(|_key: &PrimaryKey, set: &Arc<VariantSet>| set.weight())
            .eviction_listener(move |_key, value: Arc<VariantSet>, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                    evicted_heap.freed(value.heap_weight());
                    if let Some(hook) = &on_evict {
                        hook(&value);
                    }
                }
            })
            .build_with_hasher(DigestHasher::default());
        MemoryTier {
            cache,
            max_variants: max_variants.max(1),
            replacement: None,
            heap,
        }
    }

    /// The same tier, its capacity lessened by what `charge` reports each time it stores:
    /// memory held on its behalf elsewhere (the disk tier's index and write queue), so that
    /// the process stays near `cache.memory_capacity`. It keeps at least an eighth of its
    /// capacity. Only the tier's own policy is charged (moka's capacity is fixed when it is
    /// built).
    pub fn charged_with(mut self, charge: MemoryCharge) -> MemoryTier {
        if let Some(replacement) = self.replacement.as_mut().and_then(Arc::get_mut) {
            replacement.charge = Some(charge);
        }
        self
    }

    /// The same tier, counting in `releases` each time it asks the allocator to return the
    /// heap it freed (see [`super::heap_release`]).
    pub fn counting_heap_releases(self, releases: Counter) -> MemoryTier {
        self.heap.count_releases_in(releases);
        self
    }

    /// The same tier, keeping at most `max_variants` variants of a resource from its next
    /// store on (a reload).
    pub fn with_max_variants(&self, max_variants: usize) -> MemoryTier {
        MemoryTier {
            max_variants: max_variants.max(1),
            ..self.clone()
        }
    }

    /// Holds at most `capacity` bytes (less any charge) from now on; what no longer fits is
    /// evicted at once, the least valued first, as for a newcomer. `false` with moka's own
    /// policies, whose capacity is fixed when they are built.
    pub fn resize(&self, capacity: u64) -> bool {
        let Some(replacement) = &self.replacement else {
            return false;
        };
        replacement.configured.store(capacity, Ordering::Relaxed);
        self.heap.resized(capacity);
        let capacity = replacement.capacity_now();
        let mut evicted = Vec::new();
        replacement
            .policy
            .lock()
            .set_capacity(capacity, &mut evicted);
        self.remove_evicted(replacement, evicted);
        true
    }

    /// Bytes the tier may hold now (its configured capacity less any charge).
    pub fn capacity(&self) -> u64 {
        match &self.replacement {
            Some(replacement) => replacement.policy.lock().capacity(),
            // moka's own policies are built with their capacity and never charged.
            None => self.cache.policy().max_capacity().unwrap_or(u64::MAX),
        }
    }

    /// Bytes held, as the policy weighs them; `None` with moka's own policies.
    pub fn held_bytes(&self) -> Option<u64> {
        self.replacement
            .as_ref()
            .map(|replacement| replacement.policy.lock().used())
    }

    /// When `key` is a newcomer (not held, and its request now the only one the policy
    /// has counted) of `size` bytes (when known), the room newcomers have in the tier
    /// without displacing anything (see [`NewcomerRoom`]). `None` for a
    /// key asked for before, for a newcomer that would displace what the tier holds, and
    /// with moka's own policies.
    pub fn newcomer_room(&self, key: &PrimaryKey, size: Option<u64>) -> Option<NewcomerRoom> {
        let policy = self.replacement.as_ref()?.policy.lock();
        if policy.frequency(key) > 1 || policy.contains(key) {
            return None;
        }
        policy.newcomer_room(size)
    }

    /// Whether the policy would refuse `key`, its body `body_len` bytes, were it stored
    /// now: held nowhere and larger than the window, it would lose one of the contests that
    /// make its room (see [`WindowTinyLfu::loses_its_way_in`]). A fill then need not keep
    /// its body. Always `false` with moka's own policies.
    pub fn would_refuse(&self, key: &PrimaryKey, body_len: u64) -> bool {
        self.replacement.as_ref().is_some_and(|replacement| {
            let policy = replacement.policy.lock();
            policy.loses_its_way_in(key, body_len + POLICY_OVERHEAD)
        })
    }

    /// The stored variants of `key`; the request is counted by the policy, found or not.
    pub async fn get(&self, key: &PrimaryKey) -> Option<Arc<VariantSet>> {
        let found = self.cache.get(key);
        if let Some(replacement) = &self.replacement {
            let mut policy = replacement.policy.lock();
            if policy.access(key).is_some() && found.is_none() {
                // Lost to an interleaved removal (see the module doc).
                policy.remove(key);
            }
        }
        found
    }

    /// The stored variants of `key`, looked at again for a request [`MemoryTier::get`] has
    /// counted already: not counted a second time, so the policy sees each request once,
    /// as `outpost replay` does. (moka's own policies count every read.)
    pub fn peek(&self, key: &PrimaryKey) -> Option<Arc<VariantSet>> {
        self.cache.get(key)
    }

    /// Whether the tier holds `entry` itself, just after storing it: the policy may have
    /// declined it. With one of moka's policies, whether it holds the key (asking moka
    /// for the value would count as a request and sway its policy).
    pub fn holds_entry(&self, entry: &Arc<StoredResponse>) -> bool {
        if self.replacement.is_none() {
            return self.cache.contains_key(&entry.meta.key);
        }
        self.cache
            .get(&entry.meta.key)
            .is_some_and(|set| set.iter().any(|held| Arc::ptr_eq(held, entry)))
    }

    /// Whether `set`, found earlier for `key`, is still the resource's stored variants;
    /// counted as a request for `key`, as [`MemoryTier::get`] counts one. With the tier's
    /// own policy this asks the policy and the set, not moka: every replacement and
    /// removal retires the set it replaces, and the policy holds exactly the keys moka
    /// does. moka's own policies evict on their own, so there moka is asked.
    pub fn holds(&self, key: &PrimaryKey, set: &Arc<VariantSet>) -> bool {
        match &self.replacement {
            Some(replacement) => {
                !set.retired.load(Ordering::Acquire)
                    && replacement.policy.lock().access(key).is_some()
            }
            None => self
                .cache
                .get(key)
                .is_some_and(|current| Arc::ptr_eq(&current, set)),
        }
    }

    /// Tells the policy that `key` now weighs `weight` (or is gone), and removes from moka
    /// what it evicts to make room.
    fn settle(&self, key: PrimaryKey, weight: Option<u32>) {
        let Some(replacement) = &self.replacement else {
            return;
        };
        let mut evicted = Vec::new();
        match weight {
            Some(weight) => {
                replacement.insert(key, u64::from(weight) + POLICY_OVERHEAD, &mut evicted);
            }
            None => {
                replacement.policy.lock().remove(&key);
            }
        }
        self.remove_evicted(replacement, evicted);
    }

    /// Removes from moka what the policy evicted, counting each and telling the hook.
    fn remove_evicted(&self, replacement: &Replacement, evicted: Vec<PrimaryKey>) {
        let mut large_gone = false;
        for gone in evicted {
            if let Some(set) = self.cache.remove(&gone) {
                set.retire();
                replacement.evictions.inc();
                self.heap.freed(set.heap_weight());
                large_gone |= u64::from(set.weight()) >= LARGE_EVICTION || set.has_sealed_body();
                if let Some(hook) = &replacement.on_evict {
                    hook(&set);
                }
            }
        }
        if large_gone {
            // moka keeps each removed value in its write log until its next maintenance
            // (up to dozens of removals later): a few large bodies would stay in memory
            // that the tier no longer counts, and a sealed one declined as it was stored
            // would keep its hold on the fills' budget (`Coalescer::hold`).
            self.cache.run_pending_tasks();
        }
    }

    /// Settles what a compute on `key` left with the policy; returns the set it stored.
    fn settle_computed(
        &self,
        key: PrimaryKey,
        result: CompResult<PrimaryKey, Arc<VariantSet>>,
    ) -> Option<Arc<VariantSet>> {
        match result {
            CompResult::Inserted(entry) | CompResult::ReplacedWith(entry) => {
                let set = entry.into_value();
                self.heap.stored(set.heap_weight());
                self.settle(key, Some(set.weight()));
                Some(set)
            }
            CompResult::Removed(_) => {
                self.settle(key, None);
                None
            }
            CompResult::Unchanged(_) | CompResult::StillNone(_) => None,
        }
    }

    /// Stores variants of one resource read back from disk, `entries` in the order
    /// [`MemoryTier::insert`] would take them (the last becomes the newest), and returns the
    /// set to answer from. With the tier's own policy, the policy decides first: a set it
    /// refuses at once (a disk hit colder than everything in memory) is never put into moka
    /// only to be taken out again, which cost a twelfth of a 100 KiB disk hit. The policy
    /// sees the same insert either way, so `outpost replay` still models the tier exactly.
    /// Also returns whether the set was kept (`false` only when the tier's own policy
    /// refused it).
    pub async fn insert_read_back(
        &self,
        entries: Vec<Arc<StoredResponse>>,
    ) -> Option<(Arc<VariantSet>, bool)> {
        let Some(replacement) = &self.replacement else {
            let mut stored = None;
            for entry in entries {
                stored = self.insert(entry).await;
            }
            return stored.map(|set| (set, true));
        };
        let key = entries.first()?.meta.key;
        let set = Arc::new(
            entries
                .into_iter()
                .fold(VariantSet::default(), |set, entry| {
                    set.with(entry, self.max_variants)
                }),
        );
        let weight = set.weight();
        let mut evicted = Vec::new();
        replacement.insert(key, u64::from(weight) + POLICY_OVERHEAD, &mut evicted);
        let refused = evicted.contains(&key);
        let mut answer = Arc::clone(&set);
        if !refused {
            let max_variants = self.max_variants;
            let result = self.cache.entry(key).and_compute_with(|existing| {
                let stored = match existing {
                    // Stored meanwhile (a fill): merged, as an insert would.
                    Some(existing) => {
                        let existing = existing.into_value();
                        existing.retire();
                        set.variants
                            .iter()
                            .rev()
                            .fold(VariantSet::clone(&existing), |merged, entry| {
                                merged.with(Arc::clone(entry), max_variants)
                            })
                    }
                    None => VariantSet::clone(&set),
                };
                Op::Put(Arc::new(stored))
            });
            if let CompResult::Inserted(entry) | CompResult::ReplacedWith(entry) = result {
                answer = entry.into_value();
                self.heap.stored(answer.heap_weight());
                // Merged with a set stored meanwhile: the policy learns its real weight.
                if answer.weight() != weight {
                    self.settle(key, Some(answer.weight()));
                }
            }
        }
        self.remove_evicted(replacement, evicted);
        Some((answer, !refused))
    }

    /// Stores `entry` as a variant of its resource; returns the resource's variants as
    /// stored, which the caller can use even if the policy lets them go at once (a
    /// newcomer that loses its first contest).
    pub async fn insert(&self, entry: Arc<StoredResponse>) -> Option<Arc<VariantSet>> {
        let max_variants = self.max_variants;
        let key = entry.meta.key;
        let result = self.cache.entry(key).and_compute_with(|existing| {
            let set = match existing {
                Some(existing) => {
                    let existing = existing.into_value();
                    existing.retire();
                    existing.with(entry, max_variants)
                }
                None => VariantSet::default().with(entry, max_variants),
            };
            Op::Put(Arc::new(set))
        });
        self.settle_computed(key, result)
    }

    /// Stores `entry` in place of the variant stored under `replaced` (its Vary changed:
    /// the same response, selected by other request fields now).
    pub async fn replace_variant(&self, entry: Arc<StoredResponse>, replaced: VariantKey) {
        let max_variants = self.max_variants;
        let key = entry.meta.key;
        let result = self.cache.entry(key).and_compute_with(|existing| {
            let mut set = existing
                .map(|e| {
                    let existing = e.into_value();
                    existing.retire();
                    VariantSet::clone(&existing)
                })
                .unwrap_or_default();
            set.variants.retain(|v| v.meta.variant != replaced);
            Op::Put(Arc::new(set.with(entry, max_variants)))
        });
        self.settle_computed(key, result);
    }

    /// Removes the variant `variant` of `key`.
    pub async fn remove_variant(&self, key: PrimaryKey, variant: VariantKey) {
        let result = self
            .cache
            .entry(key)
            .and_compute_with(|existing| match existing {
                None => Op::Nop,
                Some(existing) => {
                    let existing = existing.into_value();
                    existing.retire();
                    let mut set = VariantSet::clone(&existing);
                    set.variants.retain(|v| v.meta.variant != variant);
                    drop_orphaned_encodings(&mut set.variants);
                    if set.variants.is_empty() {
                        Op::Remove
                    } else {
                        Op::Put(Arc::new(set))
                    }
                }
            });
        self.settle_computed(key, result);
    }

    /// Removes every variant of `key` (RFC 9111 §4.4 invalidation, purge).
    pub async fn invalidate(&self, key: &PrimaryKey) {
        self.remove(key).await;
    }

    /// Forgets `key` if any of its variants has its body in a disk-tier file: the disk
    /// tier evicted the resource, and the file is gone or about to be.
    pub async fn forget_file_bodies(&self, key: &PrimaryKey) {
        let Some(set) = self.cache.get(key) else {
            return;
        };
        if set
            .variants
            .iter()
            .any(|entry| matches!(entry.body, super::entry::StoredBody::File(_)))
        {
            self.invalidate(key).await;
        }
    }

    /// Removes every variant of `key`; returns how many there were.
    pub async fn remove(&self, key: &PrimaryKey) -> usize {
        let removed = self.cache.remove(key).map_or(0, |set| {
            set.retire();
            set.len()
        });
        self.settle(*key, None);
        removed
    }

    /// Makes every variant of `key` stale now, keeping it for revalidation (soft purge);
    /// returns how many there were.
    pub async fn mark_stale(&self, key: &PrimaryKey) -> usize {
        let Some(set) = self.cache.get(key) else {
            return 0;
        };
        let variants = set
            .variants
            .iter()
            .map(|entry| {
                let mut stale = StoredResponse::clone(entry);
                stale.meta.freshness.lifetime = std::time::Duration::ZERO;
                Arc::new(stale)
            })
            .collect();
        let count = set.len();
        let stale = Arc::new(VariantSet {
            variants,
            retired: AtomicBool::new(false),
        });
        let weight = stale.weight();
        self.cache.insert(*key, stale);
        set.retire();
        self.settle(*key, Some(weight));
        count
    }

    /// Keys of the resources whose variant set satisfies `predicate` (a scan: purge by
    /// prefix or tag).
    pub async fn keys_where(&self, predicate: impl Fn(&VariantSet) -> bool) -> Vec<PrimaryKey> {
        self.cache
            .iter()
            .filter(|(_, set)| predicate(set))
            .map(|(key, _)| *key)
            .collect()
    }

    /// Entries (resources) and weighed bytes, after applying pending housekeeping.
    pub async fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: usize) -> Arc<StoredResponse> {
        Arc::new(crate::cache::entry::testing::entry(path, vec![0u8; size]))
    }

    /// A set found earlier is held only until the tier replaces or removes it: a store of
    /// another variant, a soft purge, a purge, the removal of a variant, an eviction. What
    /// a prepared hit relies on, under either kind of policy.
    #[tokio::test]
    async fn a_set_is_held_until_replaced_or_removed() {
        for policy in [MemoryPolicy::Wtinylfu, MemoryPolicy::Lru] {
            let tier = MemoryTier::new(64 << 20, 4, policy, Counter::default(), None);
            let stored = entry("/held", 100);
            let key = stored.meta.key;
            let first = tier.insert(Arc::clone(&stored)).await.unwrap();
            assert!(tier.holds(&key, &first), "{policy:?}");

            let mut other = StoredResponse::clone(&stored);
            other.meta.variant = VariantKey([7; 32]);
            let second = tier.insert(Arc::new(other)).await.unwrap();
            assert!(!tier.holds(&key, &first), "{policy:?}: a store replaced it");
            assert!(tier.holds(&key, &second), "{policy:?}");

            tier.mark_stale(&key).await;
            assert!(!tier.holds(&key, &second), "{policy:?}: soft purged");
            let stale = tier.get(&key).await.unwrap();
            tier.remove_variant(key, VariantKey([7; 32])).await;
            assert!(!tier.holds(&key, &stale), "{policy:?}: a variant removed");
            let last = tier.get(&key).await.unwrap();
            assert!(tier.holds(&key, &last), "{policy:?}");
            tier.invalidate(&key).await;
            assert!(!tier.holds(&key, &last), "{policy:?}: purged");
        }
        // Evicted for room by the tier's own policy.
        let tier = MemoryTier::new(1 << 20, 4, MemoryPolicy::Wtinylfu, Counter::default(), None);
        let stored = entry("/evicted", 100 << 10);
        let key = stored.meta.key;
        let set = tier.insert(stored).await.unwrap();
        for index in 0..40 {
            let newcomer = entry(&format!("/newer/{index}"), 100 << 10);
            for _ in 0..4 {
                tier.get(&newcomer.meta.key).await;
            }
            tier.insert(newcomer).await;
        }
        assert!(tier.peek(&key).is_none(), "evicted");
        assert!(!tier.holds(&key, &set));
    }

    /// A tier full of small one-hit objects still admits a large object that is asked for
    /// repeatedly (the weighted-TinyLFU pathology the default policy avoids).
    #[tokio::test]
    async fn full_tier_admits_a_large_object() {
        for policy in [MemoryPolicy::Wtinylfu, MemoryPolicy::Lru] {
            full_tier_admits_a_large_object_with(policy).await;
        }
    }

    /// A reload's new `cache.max_variants` bounds the next store of a resource, through the
    /// same stored entries.
    #[tokio::test]
    async fn a_new_variant_bound_applies_from_the_next_store() {
        let tier = MemoryTier::new(
            64 << 20,
            4,
            MemoryPolicy::Wtinylfu,
            Counter::default(),
            None,
        );
        let stored = entry("/varies", 100);
        let variant = |byte: u8| {
            let mut other = StoredResponse::clone(&stored);
            other.meta.variant = VariantKey([byte; 32]);
            Arc::new(other)
        };
        for byte in 1..=3 {
            tier.insert(variant(byte)).await;
        }
        assert_eq!(tier.peek(&stored.meta.key).unwrap().len(), 3);
        let bounded = tier.with_max_variants(2);
        let set = bounded.insert(variant(4)).await.unwrap();
        assert_eq!(set.len(), 2, "the newest two kept");
        assert_eq!(tier.peek(&stored.meta.key).unwrap().len(), 2, "one store");
    }

    /// A resize (a reload's new `cache.memory_capacity`) takes effect at once: shrunk, the
    /// tier evicts down to the new size without waiting for a store, an object with hits
    /// kept; grown, it holds more. moka's own policies cannot change size and say so.
    #[tokio::test]
    async fn a_resize_evicts_down_to_the_new_size_at_once() {
        let evictions = Counter::default();
        let tier = MemoryTier::new(4 << 20, 4, MemoryPolicy::Wtinylfu, evictions.clone(), None);
        let hot = entry("/hot", 1024);
        tier.get(&hot.meta.key).await;
        tier.insert(Arc::clone(&hot)).await;
        for index in 0..3_000 {
            if index == 100 {
                // Hits once it left the window: it is in the protected segment.
                for _ in 0..8 {
                    assert!(tier.get(&hot.meta.key).await.is_some());
                }
            }
            let small = entry(&format!("/small/{index}"), 1024);
            tier.get(&small.meta.key).await;
            tier.insert(small).await;
        }
        let (_, before) = tier.usage().await;
        assert!(before > 2 << 20, "filled past the new size: {before}");
        assert!(tier.resize(1 << 20));
        assert_eq!(tier.capacity(), 1 << 20);
        let (_, after) = tier.usage().await;
        assert!(after <= 1 << 20, "evicted down to the new size: {after}");
        assert!(evictions.get() > 0);
        assert!(tier.peek(&hot.meta.key).is_some(), "the hot object stays");
        assert!(tier.resize(8 << 20));
        for index in 0..6_000 {
            let small = entry(&format!("/more/{index}"), 1024);
            tier.get(&small.meta.key).await;
            tier.insert(small).await;
        }
        let (_, grown) = tier.usage().await;
        assert!(grown > 4 << 20, "holds more than before: {grown}");
        let lru = MemoryTier::new(4 << 20, 4, MemoryPolicy::Lru, Counter::default(), None);
        assert!(!lru.resize(1 << 20));
        assert_eq!(lru.capacity(), 4 << 20);
    }

    /// Memory held on the tier's behalf elsewhere (the disk index) is counted against its
    /// capacity from its next store on, down to an eighth of the capacity and no further.
    #[tokio::test]
    async fn a_charge_lessens_the_capacity_down_to_an_eighth() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let charged = Arc::new(AtomicU64::new(0));
        let reported = Arc::clone(&charged);
        let capacity = 4 << 20;
        let tier = MemoryTier::new(
            capacity,
            4,
            MemoryPolicy::Wtinylfu,
            Counter::default(),
            None,
        )
        .charged_with(Box::new(move || reported.load(Ordering::Relaxed)));
        async fn tier_insert(tier: &MemoryTier, path: &str, size: usize) {
            let stored = entry(path, size);
            tier.get(&stored.meta.key).await;
            tier.insert(stored).await;
        }
        for index in 0..6_000 {
            tier_insert(&tier, &format!("/o/{index}"), 1024).await;
        }
        assert_eq!(tier.capacity(), capacity);
        let (_, full) = tier.usage().await;
        assert!(full > capacity * 9 / 10, "full: {full}");

        charged.store(1 << 20, Ordering::Relaxed);
        tier_insert(&tier, "/after-charge", 1024).await;
        assert_eq!(tier.capacity(), capacity - (1 << 20));
        let (_, held) = tier.usage().await;
        assert!(
            held <= capacity - (1 << 20),
            "held {held} within the lessened capacity"
        );

        charged.store(100 << 20, Ordering::Relaxed);
        tier_insert(&tier, "/after-large-charge", 1024).await;
        let floor = capacity / MEMORY_TIER_LEAST_SHARE;
        assert_eq!(tier.capacity(), floor, "never below the floor");
        let (_, held) = tier.usage().await;
        assert!(held <= floor && held > floor / 2, "held {held}");
    }

    /// A body in a memory file is not the heap's: freeing it gives the allocator nothing
    /// back, so the tier counts only the rest of its weight (see `heap_release`).
    #[test]
    fn bodies_in_memory_files_are_not_counted_as_heap() {
        let plain = entry("/plain", 128 << 10);
        let sealed_body = crate::cache::sealed::Sealer::new(1)
            .seal(&bytes::Bytes::from(vec![0u8; 128 << 10]))
            .expect("a memory file");
        let digest = plain.meta.body_digest;
        let sealed = Arc::new(StoredResponse::from_sealed(
            plain.meta.clone(),
            sealed_body,
            digest,
        ));
        let heap_set = VariantSet::default().with(Arc::clone(&plain), 4);
        let sealed_set = VariantSet::default().with(sealed, 4);
        assert_eq!(heap_set.heap_weight(), u64::from(heap_set.weight()));
        assert_eq!(sealed_set.weight(), heap_set.weight());
        assert_eq!(
            sealed_set.heap_weight(),
            u64::from(sealed_set.weight()) - (128 << 10)
        );
    }

    /// Large bodies the policy evicts (or refuses) are let go at once, not kept alive in
    /// moka's write log until its next maintenance: the tier never holds more than it
    /// counts.
    #[tokio::test]
    async fn evicted_large_bodies_are_let_go_at_once() {
        let tier = MemoryTier::new(4 << 20, 4, MemoryPolicy::Wtinylfu, Counter::default(), None);
        let mut stored = Vec::new();
        for index in 0..16 {
            let large = entry(&format!("/large/{index}"), 1 << 20);
            stored.push(Arc::downgrade(&large));
            tier.get(&large.meta.key).await;
            tier.insert(large).await;
        }
        // moka frees a removed entry through crossbeam's epoch reclamation, which waits for
        // every thread of the process to leave the epoch it was pinned in: with other tests
        // running, that is later, not never. What must not hold the bodies is moka's write
        // log, which only its maintenance drains, and nothing here runs that maintenance.
        let alive = || stored.iter().filter(|weak| weak.strong_count() > 0).count();
        for _ in 0..100_000 {
            if alive() <= 4 {
                break;
            }
            crossbeam_epoch::pin().flush();
            std::thread::yield_now();
        }
        let alive = alive();
        assert!(alive <= 4, "{alive} bodies of 1 MiB alive in a 4 MiB tier");
    }

    async fn full_tier_admits_a_large_object_with(policy: MemoryPolicy) {
        let evictions = Counter::default();
        let tier = MemoryTier::new(4 << 20, 4, policy, evictions.clone(), None);
        // Each request looks the resource up, then stores it after a miss.
        for index in 0..10_000 {
            let small = entry(&format!("/small/{index}"), 1024);
            tier.get(&small.meta.key).await;
            tier.insert(small).await;
        }
        tier.usage().await;
        let big = entry("/big", 100 * 1024);
        for _ in 0..5 {
            if tier.get(&big.meta.key).await.is_none() {
                tier.insert(Arc::clone(&big)).await;
            }
            tier.usage().await;
        }
        let found = tier.get(&big.meta.key).await.is_some();
        assert!(found, "{policy:?}: a hot large object must get in");
        let (_, weighed) = tier.usage().await;
        assert!(
            weighed <= 4 << 20,
            "{policy:?}: capacity respected: {weighed}"
        );
        assert!(evictions.get() > 0, "{policy:?}: evictions are counted");
    }

    /// A set read back from disk is answered from whether or not the policy keeps it; one
    /// it refuses at once never enters moka (nothing is evicted for it, nothing counted),
    /// one it keeps is found afterwards.
    #[tokio::test]
    async fn a_read_back_set_is_kept_or_refused_by_the_policy() {
        for policy in [MemoryPolicy::Wtinylfu, MemoryPolicy::Lru] {
            let evictions = Counter::default();
            let tier = MemoryTier::new(1 << 20, 4, policy, evictions.clone(), None);
            // Memory full of objects asked for ten times each.
            for _round in 0..10 {
                for index in 0..100 {
                    let hot = entry(&format!("/hot/{index}"), 8 * 1024);
                    if tier.get(&hot.meta.key).await.is_none() {
                        tier.insert(hot).await;
                    }
                }
            }
            tier.usage().await;
            let evicted_before = evictions.get();
            let cold = entry("/cold", 100 * 1024);
            assert!(tier.get(&cold.meta.key).await.is_none());
            let (answered, said_kept) = tier
                .insert_read_back(vec![Arc::clone(&cold)])
                .await
                .unwrap();
            assert!(Arc::ptr_eq(&answered.variants[0], &cold));
            let kept = tier.get(&cold.meta.key).await.is_some();
            assert_eq!(said_kept, kept, "{policy:?}");
            match policy {
                MemoryPolicy::Wtinylfu => {
                    assert!(!kept, "colder than everything held: refused");
                    assert_eq!(evictions.get(), evicted_before, "nothing evicted for it");
                }
                _ => assert!(kept, "{policy:?}: LRU keeps the newest"),
            }
            let fresh = MemoryTier::new(1 << 20, 4, policy, Counter::default(), None);
            fresh
                .insert_read_back(vec![Arc::clone(&cold)])
                .await
                .unwrap();
            assert!(
                fresh.get(&cold.meta.key).await.is_some(),
                "{policy:?}: room: kept"
            );
        }
    }
}
