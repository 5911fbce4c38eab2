//! The shared cache (RFC 9111): keys, the stored form of a response, the caching rules, the
//! memory tier and request coalescing, behind one [`Cache`] the pipeline talks to.
//!
//! - [`key`]: primary key (which resource) and variant key (which representation).
//! - [`policy`]: storability, freshness, age, reuse, validation; `now` is always passed in.
//! - [`entry`]: the stored response and its versioned encoding.
//! - [`memory`]: the moka tier; [`disk`]: the sled-indexed file tier.
//! - [`lookup`]: what the cache can do for a request (hit, stale, fetch, bypass).
//! - [`fill`]: one origin fetch per variant, streamed to every waiting request and stored
//!   behind one writer; nothing outside the cache touches a tier.
//! - [`rules`]: per-path policy.
//!
//! Cache failures never fail a request; the pipeline decides what to do with a lookup.

pub mod digest;
pub mod disk;
pub mod entry;
pub mod fill;
pub mod heap_release;
pub mod http_date;
pub mod key;
pub mod lookup;
pub mod memory;
pub mod partial;
pub mod policy;
pub mod purge_target;
pub mod replacement;
pub mod rules;
pub mod sealed;
pub mod tags;
use tags::TagIndex;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use tokio_util::task::TaskTracker;

use crate::config::CacheConfig;
use crate::limit::{Admission, Bounds, Limiter, Refused};
use crate::telemetry::metrics::{Metrics, TierLabels};
use crate::telemetry::Tier;
use disk::{DiskMetrics, DiskStore, DiskTier, Invalidation, TempBlob};
use entry::{EntryMeta, StoredBody, StoredResponse};
use fill::{Coalescer, FillBounds};
use key::{DigestHasher, PrimaryKey, VariantKey};
use memory::{MemoryTier, VariantSet};
use partial::{PartialEntry, PartialStore};
use policy::PolicySettings;
pub use purge_target::PurgeTarget;
use rules::PathRules;

/// The cache as a whole: settings, tiers, coalescing and the hit-for-miss memory.
pub struct Cache {
    is_enabled: bool,
    policy: PolicySettings,
    max_object_size: u64,
    /// See `cache.range_fill_max_offset`.
    range_fill_max_offset: u64,
    coalesce_wait: Duration,
    fill_bounds: FillBounds,
    /// Fills running, in all and per origin.
    fill_slots: Arc<Limiter>,
    memory: MemoryTier,
    /// The persistent tier, when `cache.dir` is set and it opened.
    disk: Option<DiskTier>,
    coalescer: Arc<Coalescer>,
    /// Keys being promoted from disk to memory: one read per key however many ask.
    promotions: Arc<Mutex<HashMap<PrimaryKey, Arc<tokio::sync::Mutex<()>>>>>,
    lost_removals: LostRemovals,
    rules: PathRules,
    /// Offline mode (run-time switch, shared across reloads).
    offline: Arc<AtomicBool>,
    /// The `cache.offline` value this cache was configured with: a reload changes the
    /// switch only when the configured value changes.
    configured_offline: bool,
    offline_ignores_revalidation: bool,
    /// Writes to the disk tier running in the background.
    disk_writes: TaskTracker,
    /// Fill and encoding tasks: a shutdown lets them store what they are storing.
    fills: TaskTracker,
    /// Tag → stored resources, for purges by tag.
    tag_index: Arc<TagIndex>,
    /// Ranges of representations held without the whole (RFC 9111 §3.3).
    partials: PartialStore,
    /// URLs whose last response was uncacheable: their requests skip coalescing for a while
    /// (Varnish's hit-for-miss).
    hit_for_miss: moka::sync::Cache<PrimaryKey, (), DigestHasher>,
    /// Header whose space-separated keys tag a response for purge by tag.
    surrogate_key_header: HeaderName,
    /// Which memory-tier bodies go into sealed memory files (`cache.memory_sendfile_min`).
    sealer: sealed::Sealer,
    metrics: Arc<Metrics>,
}

/// What is new about an entry being stored ([`Cache::store`]), which decides what the disk
/// tier writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChange {
    /// Its body: written with its row.
    Body,
    /// Only its headers (freshened in place): the row is rewritten, its body kept.
    Headers,
    /// A row of its own for a stored body, as when a revalidation finds that the body of
    /// one variant answers another request too. A small body lives in a pack as its row's
    /// own, so it is written again for the new row; a body in a file is found by digest.
    NewRow,
}

/// How long a response found uncacheable makes its key skip coalescing (moka needs more
/// than zero).
fn hit_for_miss_lifetime(config: &CacheConfig) -> Duration {
    config.hit_for_miss_ttl.get().max(Duration::from_millis(1))
}

/// The keys whose last response was uncacheable, each for `cache.hit_for_miss_ttl`.
fn hit_for_miss_memory(config: &CacheConfig) -> moka::sync::Cache<PrimaryKey, (), DigestHasher> {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(hit_for_miss_lifetime(config))
        .build_with_hasher(DigestHasher::default())
}

impl Cache {
    /// Builds the tiers. A disk tier that cannot be opened (unusable directory, corrupt or
    /// locked index) is logged loudly and left out: outpost runs memory-only.
    pub fn new(config: &CacheConfig, metrics: &Arc<Metrics>) -> Cache {
        let disk = config
            .dir
            .as_deref()
            .filter(|dir| !dir.as_os_str().is_empty())
            .and_then(|dir| open_disk(dir, config, metrics));
        let coalescer = Arc::new(Coalescer::new(metrics.fill_bytes.clone()));
        let memory = MemoryTier::new(
            config.memory_tier_capacity(),
            config.max_variants,
            config.memory_policy,
            metrics
                .evictions
                .get_or_create(&TierLabels { tier: "memory" })
                .clone(),
            Some(eviction_hook(disk.clone(), Arc::clone(&coalescer))),
        )
        .counting_heap_releases(metrics.heap_releases.clone());
        // Partial entries and the disk tier's index hold memory on the tier's behalf: what
        // they hold comes out of the tier, so the process stays within memory_capacity.
        let partials = PartialStore::new(config.partial_capacity.as_u64());
        let memory = {
            let (disk, partials) = (disk.clone(), partials.clone());
            memory.charged_with(Box::new(move || {
                partials.held_bytes() + disk.as_ref().map_or(0, DiskTier::memory_held)
            }))
        };
        let hit_for_miss = hit_for_miss_memory(config);
        let has_disk = disk.is_some();
        let shared = SharedStores {
            memory,
            disk,
            coalescer,
            promotions: Arc::default(),
            lost_removals: LostRemovals::default(),
            fill_slots: Arc::new(Limiter::new(fill_slot_bounds(config))),
            hit_for_miss,
            offline: Arc::new(AtomicBool::new(config.offline)),
            disk_writes: TaskTracker::new(),
            fills: TaskTracker::new(),
            tag_index: Arc::new(TagIndex::new(!has_disk, TAG_INDEX_CAPACITY)),
            partials,
        };
        metrics.offline.set(i64::from(config.offline));
        let cache = Cache::with_stores(config, shared, Arc::clone(metrics));
        if let Some(disk) = &cache.disk {
            cache.sweep_in_background(disk.clone());
            // What the disk tier holds from earlier runs is tagged too.
            cache.rebuild_tag_index_in_background();
        }
        cache
    }

    /// The same stored entries, fills in flight and hit-for-miss memory, governed by the
    /// settings of `config` (a reload). The memory tier's size changes through
    /// [`Cache::resize_memory`]; the disk tier's settings and the memory tier's policy are
    /// fixed when they are built and need a restart. A new variant bound applies to the
    /// next store of each resource; a new hit-for-miss lifetime starts an empty
    /// hit-for-miss memory (its marks only spare requests a wait).
    pub fn reconfigured(&self, config: &CacheConfig) -> Cache {
        if config.offline != self.configured_offline {
            self.set_offline(config.offline);
        }
        let shared = SharedStores {
            memory: self.memory.with_max_variants(config.max_variants),
            disk: self.disk.clone(),
            coalescer: Arc::clone(&self.coalescer),
            promotions: Arc::clone(&self.promotions),
            lost_removals: self.lost_removals.clone(),
            // Fills in flight hold slots of the old limiter; changed bounds take a new one.
            fill_slots: if self.fill_slots.bounds() == fill_slot_bounds(config) {
                Arc::clone(&self.fill_slots)
            } else {
                Arc::new(Limiter::new(fill_slot_bounds(config)))
            },
            hit_for_miss: if self.hit_for_miss.policy().time_to_live()
                == Some(hit_for_miss_lifetime(config))
            {
                self.hit_for_miss.clone()
            } else {
                hit_for_miss_memory(config)
            },
            offline: Arc::clone(&self.offline),
            disk_writes: self.disk_writes.clone(),
            fills: self.fills.clone(),
            tag_index: Arc::clone(&self.tag_index),
            partials: self.partials.clone(),
        };
        Cache::with_stores(config, shared, Arc::clone(&self.metrics))
    }

    fn with_stores(config: &CacheConfig, shared: SharedStores, metrics: Arc<Metrics>) -> Cache {
        let targeted_fields = config
            .targeted_cache_control
            .iter()
            .map(|name| name.get().clone())
            .collect();
        // Fixed for the process: the tier is opened once, and a tier that failed to open
        // stays away until a restart.
        let body_digest = digest::BodyDigest::for_disk_tier(shared.disk.is_some());
        Cache {
            is_enabled: config.enabled,
            policy: PolicySettings {
                // The library takes an f32; config keeps f64 so it prints as written.
                heuristic_fraction: config.heuristic_fraction as f32,
                heuristic_max: config.heuristic_max.get(),
                store_set_cookie: config.store_set_cookie,
                targeted_fields,
                stale_on_error: config.stale_on_error.get(),
            },
            max_object_size: config.max_object_size.as_u64(),
            range_fill_max_offset: config.range_fill_max_offset.as_u64(),
            coalesce_wait: config.coalesce_wait.get(),
            fill_bounds: FillBounds {
                unread_limit: config.unread_fill_limit.as_u64(),
                unread_timeout: config.unread_fill_timeout.get(),
                memory_budget: config.effective_fill_memory_budget(),
            },
            memory: shared.memory,
            disk: shared.disk,
            coalescer: shared.coalescer,
            promotions: shared.promotions,
            lost_removals: shared.lost_removals,
            fill_slots: shared.fill_slots,
            rules: PathRules::new(&config.rules),
            offline: shared.offline,
            configured_offline: config.offline,
            offline_ignores_revalidation: config.offline_ignores_revalidation,
            disk_writes: shared.disk_writes,
            fills: shared.fills,
            tag_index: shared.tag_index,
            partials: shared.partials,
            surrogate_key_header: config.surrogate_key_header.get().clone(),
            hit_for_miss: shared.hit_for_miss,
            sealer: sealed::Sealer::new(config.memory_sendfile_min.as_u64())
                .with_digest(body_digest),
            metrics,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.is_enabled
    }

    /// The RFC 9111 settings fills judge responses by.
    pub fn policy(&self) -> &PolicySettings {
        &self.policy
    }

    /// Per-path policy rules.
    pub fn rules(&self) -> &PathRules {
        &self.rules
    }

    /// The fills in flight.
    pub fn coalescer(&self) -> &Arc<Coalescer> {
        &self.coalescer
    }

    /// Whether the memory tier holds `entry` itself (not another response for its key).
    pub fn memory_holds_entry(&self, entry: &Arc<StoredResponse>) -> bool {
        self.memory.holds_entry(entry)
    }

    /// A slot for a new fill from `origin` (the caps on fills in all and per origin).
    ///
    /// # Errors
    /// [`Refused`] when the caps are reached and the queue is full or too slow.
    pub async fn admit_fill(&self, origin: &str) -> Result<Admission, Refused> {
        self.fill_slots.admit(origin).await
    }

    /// Fills holding a slot now, and the most there have been at once.
    pub fn fills_in_use(&self) -> (usize, usize) {
        (self.fill_slots.in_use(), self.fill_slots.high_water())
    }

    /// How long a follower waits for a fill's head before fetching alone.
    pub fn coalesce_wait(&self) -> Duration {
        self.coalesce_wait
    }

    /// Entries and bytes of the memory tier.
    pub async fn memory_usage(&self) -> (u64, u64) {
        self.memory.usage().await
    }

    /// The memory tier holds at most `capacity` bytes (less what the disk tier holds) from
    /// now on, as on a reload that changed its share of `cache.memory_capacity`: what no
    /// longer fits is evicted at once. `false` with one of moka's policies, whose capacity
    /// is fixed until a restart.
    pub fn resize_memory(&self, capacity: u64) -> bool {
        self.memory.resize(capacity)
    }

    /// Bytes the memory tier may hold now: its share of `cache.memory_capacity` less the
    /// memory the disk tier holds (fixed with one of moka's policies).
    pub fn memory_capacity_now(&self) -> u64 {
        self.memory.capacity()
    }

    /// Bytes the memory tier holds, as its policy weighs them (`None` with one of moka's
    /// policies): what `outpost replay` must be given as object sizes to model it.
    pub fn memory_held_bytes(&self) -> Option<u64> {
        self.memory.held_bytes()
    }

    pub async fn is_hit_for_miss(&self, key: &PrimaryKey) -> bool {
        self.hit_for_miss.contains_key(key)
    }

    pub async fn remember_uncacheable(&self, key: PrimaryKey) {
        self.hit_for_miss.insert(key, ());
    }

    pub async fn forget_uncacheable(&self, key: &PrimaryKey) {
        self.hit_for_miss.invalidate(key);
    }

    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Relaxed)
    }

    /// Switches offline mode (admin API, reload).
    pub fn set_offline(&self, offline: bool) {
        if self.offline.swap(offline, Ordering::Relaxed) != offline {
            tracing::warn!(offline, "offline mode switched");
        }
        self.metrics.offline.set(i64::from(offline));
    }

    /// The largest object this cache stores: the disk tier's limit while it is in use.
    /// Partial entries (RFC 9111 §3.3).
    pub fn partials(&self) -> &PartialStore {
        &self.partials
    }

    /// The partial entry of `key`: from memory, or else read back from the disk tier (and
    /// held in memory again).
    pub async fn partial(&self, key: &PrimaryKey) -> Option<Arc<PartialEntry>> {
        if let Some(held) = self.partials.get(key).await {
            return Some(held);
        }
        let disk = self.live_disk()?;
        let stored = disk.load_partial(*key).await?;
        Some(self.partials.add(stored).await)
    }

    /// Whether a partial entry of `key` may be held, in memory or on disk: false for
    /// certain, without a lookup, on a node that never kept one.
    pub fn may_hold_partial(&self, key: &PrimaryKey) -> bool {
        self.partials.has_held_any()
            || self
                .live_disk()
                .is_some_and(|disk| disk.may_hold_partial(key))
    }

    /// Adds `piece` to the partial entry of its resource, in memory and, in the
    /// background, on disk; returns the entry.
    pub async fn add_partial(&self, piece: PartialEntry) -> Arc<PartialEntry> {
        let held = self.partials.add(piece).await;
        if let (Some(disk), None) = (self.live_disk(), held.completed()) {
            let (disk, partials, written) =
                (disk.clone(), self.partials.clone(), Arc::clone(&held));
            self.disk_writes.spawn(Box::pin(async move {
                let current = Arc::clone(&written);
                let is_current = move || partials.holds(&current);
                disk.store_partial(written, is_current).await;
            }));
        }
        held
    }

    /// RFC 9111 §3.4: once the pieces of `held` cover the whole representation, it is
    /// stored as an ordinary response (in place of the partial entry), and returned.
    pub async fn store_if_complete(&self, held: &PartialEntry) -> Option<Arc<StoredResponse>> {
        let complete = held.completed()?;
        let entry = Arc::new(self.sealed(complete).await);
        self.store(Arc::clone(&entry), StoreChange::Body).await;
        Some(entry)
    }

    /// Drops the partial entry of `key`, in memory and on disk.
    pub async fn drop_partial(&self, key: &PrimaryKey) {
        self.partials.remove(key).await;
        if let Some(disk) = self.live_disk().filter(|disk| disk.may_hold_partial(key)) {
            disk.remove_partial(*key).await;
            // Again: a range request may have read it back from disk meanwhile.
            self.partials.remove(key).await;
        }
    }

    /// See `cache.range_fill_max_offset`.
    pub fn range_fill_max_offset(&self) -> u64 {
        self.range_fill_max_offset
    }

    /// Whether a body of at most `len` bytes derived from a fill while it streams (an
    /// encoding) would be kept in memory as it is made, so that a reader slower than the
    /// others holds none of them back: within the memory tier's object size, and within
    /// the fills' memory budget now. Also within `unread_fill_limit`: what derives from a
    /// fill reads all of it, so a larger one would no longer be stopped when its clients
    /// hang up.
    pub fn would_keep_derived(&self, len: u64) -> bool {
        len <= self.max_object_size.min(self.fill_bounds.unread_limit)
            && !self
                .coalescer
                .holds_past(self.fill_bounds.memory_budget.saturating_sub(len))
    }

    /// The count against the fills' memory budget of `len` bytes read whole before they go
    /// on: a piece to keep as a partial entry, a prefix read back from its file, an artifact
    /// held for its digest check. `None` when other fills leave it no room (one alone may
    /// pass the budget, as a fill may). Without it, concurrent range misses, cancelled
    /// downloads or artifact misses would each hold up to their limit, however many came.
    pub fn commit_held(&self, len: u64) -> Option<fill::Commitment<'_>> {
        self.coalescer
            .commit(len, self.fill_bounds.memory_budget, None)
    }

    /// What counts against the fills' memory budget now: bodies kept or held whole,
    /// streams' read-ahead and buffers, kept bodies still being sent outside the tier.
    pub fn fill_budget_used(&self) -> u64 {
        self.coalescer.budget_used()
    }

    /// Room for a body held whole as it arrives, counted against the fills' memory budget
    /// as it grows (see [`Cache::commit_held`]).
    pub fn held_room(&self) -> HeldRoom<'_> {
        HeldRoom {
            cache: self,
            commitment: None,
        }
    }

    /// Whether a fill of a body of `len` bytes goes on to the end and is stored when none
    /// of its clients reads it any more: within `unread_fill_limit`.
    pub fn completes_unread(&self, len: u64) -> bool {
        len <= self.fill_bounds.unread_limit
    }

    pub fn storable_size(&self) -> u64 {
        match &self.disk {
            Some(disk) if disk.is_available() => disk.max_object_size.max(self.max_object_size),
            _ => self.max_object_size,
        }
    }

    /// The disk tier, if one is configured (in use or degraded).
    pub fn disk_tier(&self) -> Option<&DiskTier> {
        self.disk.as_ref()
    }

    /// The disk tier, if it is in use.
    pub fn live_disk(&self) -> Option<&DiskTier> {
        self.disk.as_ref().filter(|disk| disk.is_available())
    }

    /// Whether `set`, found earlier for `key`, is still what the memory tier holds for it
    /// (the request counted by the memory policy, as a lookup counts it); the disk tier is
    /// not asked.
    pub fn memory_holds(&self, key: &PrimaryKey, set: &Arc<VariantSet>) -> bool {
        self.memory.holds(key, set)
    }

    /// The stored variants of `key`: from memory, or else promoted from disk (the body of
    /// the variant `request` selects is read, verified and promoted with its encodings;
    /// large bodies stay in their file). Returns the set and the tier that had it.
    ///
    /// # Concurrent calls
    /// Concurrent misses in memory for one key make one disk read: the first promotes, the
    /// others wait for it and then find the set in memory.
    pub async fn variants(
        &self,
        key: &PrimaryKey,
        request: &HeaderMap,
    ) -> Option<(Arc<VariantSet>, Tier)> {
        if let Some(set) = self.memory.get(key).await {
            return Some((set, Tier::Memory));
        }
        let disk = self.live_disk()?;
        self.promote_once(disk, key, request, |_| true)
            .await
            .map(|set| (set, Tier::Disk))
    }

    /// For a request that none of the variants of `key` in memory selects: the variants
    /// promoted from disk, when the disk tier holds one it selects. Memory holds the
    /// variants requests have asked for since the resource was stored or read back, so
    /// after a restart the others are on disk only (and offline, nowhere else).
    pub async fn variant_on_disk(
        &self,
        key: &PrimaryKey,
        request: &HeaderMap,
    ) -> Option<Arc<VariantSet>> {
        let disk = self.live_disk()?;
        let selects = |set: &VariantSet| set.select(request).is_some();
        let set = self.promote_once(disk, key, request, selects).await?;
        selects(&set).then_some(set)
    }

    /// Promotes `key` from disk, once for concurrent callers: each waits for the one before
    /// it, then finds in memory what that one promoted, and reads the disk itself only if
    /// that set is not `enough` for its request.
    async fn promote_once(
        &self,
        disk: &DiskTier,
        key: &PrimaryKey,
        request: &HeaderMap,
        enough: impl Fn(&VariantSet) -> bool,
    ) -> Option<Arc<VariantSet>> {
        let gate = Arc::clone(self.promotions.lock().entry(*key).or_default());
        let promoted = {
            let _promoting = gate.lock().await;
            match self.memory.peek(key) {
                // Promoted by the request we waited for.
                Some(set) if enough(&set) => Some(set),
                // Boxed: the disk path's future would otherwise size every lookup's.
                _ => Box::pin(self.promote(disk, key, request)).await,
            }
        };
        let mut promotions = self.promotions.lock();
        if promotions
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, &gate) && Arc::strong_count(&gate) == 2)
        {
            promotions.remove(key);
        }
        promoted
    }

    /// Reads `key` from disk into memory; see [`Cache::variants`].
    async fn promote(
        &self,
        disk: &DiskTier,
        key: &PrimaryKey,
        request: &HeaderMap,
    ) -> Option<Arc<VariantSet>> {
        let request = request.clone();
        let select = move |metas: &[EntryMeta]| {
            let selected = VariantSet::select_meta(metas, &request)?;
            metas.iter().position(|m| std::ptr::eq(m, selected))
        };
        self.metrics.disk_loads.inc();
        let loaded = disk.load(*key, select, self.max_object_size).await?;
        let path = disk.blob_path(&loaded.selected.body_digest);
        // A body read whole from its own file can stay there if memory will not keep it,
        // when hits may be sent from files (otherwise each hit would hash it again).
        let may_stay = loaded.body.is_some() && loaded.in_file && disk.sendfile_bodies().is_some();
        let in_file_instead = may_stay.then(|| {
            Arc::new(StoredResponse::in_file(
                loaded.selected.clone(),
                path.clone(),
                None,
            ))
        });
        let source = match loaded.body {
            // A body that can stay in its file is sent from there already; sealing it too
            // would copy it on every load that memory's policy then refuses.
            Some(body) if may_stay => StoredResponse::read_back(loaded.selected, body),
            Some(body) => {
                self.sealed(StoredResponse::read_back(loaded.selected, body))
                    .await
            }
            None => StoredResponse::in_file(loaded.selected, path, loaded.blocks),
        };
        // Encoded variants go in first, so the source is the newest of the set.
        let encoded: Vec<_> = loaded
            .encoded
            .into_iter()
            .map(|(meta, body)| Arc::new(StoredResponse::read_back(meta, body)))
            .collect();
        let mut entries = encoded.clone();
        entries.push(Arc::new(source));
        // The set as read, even if the memory tier's policy does not keep it: the request
        // is answered from what the disk gave either way.
        let (answer, kept) = self.memory.insert_read_back(entries).await?;
        if let (false, Some(in_file)) = (kept, in_file_instead) {
            // Refused: memory keeps the headers and where the body is, so the next hit
            // skips the index and can be sent from the file (`cache.disk_sendfile`).
            let mut entries = encoded;
            entries.push(in_file);
            self.memory.insert_read_back(entries).await;
        }
        Some(answer)
    }

    /// Indexes a body a fill streamed to a disk file and puts its entry in memory; `None`
    /// when the tier failed, or was too small to keep it.
    async fn commit_file(
        &self,
        disk: &DiskTier,
        meta: EntryMeta,
        temp: TempBlob,
    ) -> Option<Arc<StoredResponse>> {
        let blocks = (!temp.blocks.is_empty()).then(|| temp.blocks.clone());
        let evicted = disk.commit_temp(meta.clone(), temp).await?;
        forget_evicted_files(&self.memory, &evicted).await;
        // A tier too small to keep it evicts it at once.
        if evicted.contains(&meta.key) {
            return None;
        }
        let path = disk.blob_path(&meta.body_digest);
        let entry = Arc::new(StoredResponse::in_file(meta, path, blocks));
        self.index_tags(&entry.meta);
        self.memory.insert(Arc::clone(&entry)).await;
        Some(entry)
    }

    /// `entry` as the memory tier keeps it: a large body moves into a sealed memory file
    /// (see [`sealed`]). Before the entry is shared, so every reader sees one body. A large
    /// body is copied off the server thread (`off_thread_if_large`).
    pub async fn sealed(&self, entry: StoredResponse) -> StoredResponse {
        let StoredBody::Memory(bytes) = &entry.body else {
            return entry;
        };
        if !self.sealer.takes(bytes.len()) {
            return entry;
        }
        let (sealer, bytes) = (self.sealer, bytes.clone());
        let len = bytes.len();
        match off_thread_if_large(len, move || sealer.seal(&bytes))
            .await
            .flatten()
        {
            Some(sealed) => entry.with_sealed_body(sealed),
            None => entry,
        }
    }

    /// The entry a completed fill stores, built from the chunks its body arrived in (see
    /// [`StoredResponse::from_chunks`]); a large body that is to be sealed is hashed and
    /// copied off the server thread (`off_thread_if_large`).
    pub async fn stored_from_chunks(&self, meta: EntryMeta, chunks: Vec<Bytes>) -> StoredResponse {
        let len = chunks.iter().map(Bytes::len).sum::<usize>();
        if !self.sealer.takes(len) {
            return StoredResponse::from_chunks(meta, &chunks, &self.sealer);
        }
        let sealer = self.sealer;
        // Only a body this size or larger is worth a memory file, so the copies are cheap
        // beside sealing it.
        let (fallback_meta, fallback_chunks) = (meta.clone(), chunks.clone());
        match off_thread_if_large(len, move || {
            StoredResponse::from_chunks(meta, &chunks, &sealer)
        })
        .await
        {
            Some(entry) => entry,
            // The blocking pool is shutting down: build it here, on the heap.
            None => StoredResponse::from_chunks(
                fallback_meta,
                &fallback_chunks,
                &sealed::Sealer::new(0).with_digest(sealer.digest()),
            ),
        }
    }

    /// Whether hits may be bodies of files a connection can send with sendfile: sealed
    /// memory bodies, or disk files verified once (`cache.disk_sendfile`).
    pub fn may_send_files(&self) -> bool {
        self.sealer.is_on()
            || self
                .disk_tier()
                .is_some_and(|disk| disk.sendfile_bodies().is_some())
    }

    /// Stores `entry` in memory and, in the background, on disk (`change`: what is new
    /// about it). A partial entry of the resource is dropped: the whole representation
    /// answers every range.
    pub async fn store(&self, entry: Arc<StoredResponse>, change: StoreChange) {
        self.drop_partial(&entry.meta.key).await;
        self.index_tags(&entry.meta);
        self.memory.insert(Arc::clone(&entry)).await;
        self.store_on_disk(&entry, change, None);
    }

    /// Stores `entry`, freshened by a 304 whose Vary differs from the stored one, in place of
    /// the variant it was stored as (`replaced`), in both tiers. On disk the new row is
    /// indexed before the old one goes, so their shared body file stays.
    pub async fn replace_variant(&self, entry: Arc<StoredResponse>, replaced: VariantKey) {
        if entry.meta.variant == replaced {
            // Same row: removing the old one would remove the new.
            return self.store(entry, StoreChange::Headers).await;
        }
        self.index_tags(&entry.meta);
        self.memory
            .replace_variant(Arc::clone(&entry), replaced)
            .await;
        self.store_on_disk(&entry, StoreChange::NewRow, Some(replaced));
    }

    /// Drops the variant `variant` of `key` from both tiers: a revalidation found it may no
    /// longer be shared (RFC 9111 §3 applied to the 304's headers).
    pub async fn drop_variant(&self, key: PrimaryKey, variant: VariantKey) {
        self.memory.remove_variant(key, variant).await;
        if let Some(disk) = self.live_disk() {
            let disk = disk.clone();
            self.disk_writes
                .spawn(async move { disk.remove_variant(key, variant).await });
        }
    }

    /// Sweeps what earlier runs left on disk while requests are served; [`Cache::settle`]
    /// waits for it.
    fn sweep_in_background(&self, disk: DiskTier) {
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!("no runtime: disk tier sweep skipped");
            return;
        }
        self.disk_writes.spawn(async move {
            if let Some(report) = disk.sweep().await {
                if report != disk::SweepReport::default() {
                    tracing::info!(?report, "disk tier swept");
                }
            }
        });
    }

    /// Adds a stored response's tags to the tag index; rebuilds the index when it has
    /// outgrown its capacity.
    fn index_tags(&self, meta: &EntryMeta) {
        let mut tags = tags::of(&meta.headers, &self.surrogate_key_header).peekable();
        if tags.peek().is_none() {
            return;
        }
        if self.tag_index.add(meta.key, &meta.url, tags) {
            self.rebuild_tag_index_in_background();
        }
    }

    /// Rebuilds the tag index from both tiers in a background task (what is stored
    /// meanwhile is kept).
    fn rebuild_tag_index_in_background(&self) {
        if !self.tag_index.begin_rebuild() {
            return;
        }
        let index = Arc::clone(&self.tag_index);
        let memory = self.memory.clone();
        let disk = self.disk.clone();
        let header = self.surrogate_key_header.clone();
        let rebuild = async move {
            let add = {
                let index = Arc::clone(&index);
                move |meta: &EntryMeta, header: &HeaderName| {
                    index.add_rebuilt(meta.key, &meta.url, tags::of(&meta.headers, header));
                }
            };
            memory
                .keys_where(|set| {
                    set.iter().for_each(|entry| add(&entry.meta, &header));
                    false
                })
                .await;
            if let Some(disk) = disk {
                disk.keys_where(move |meta| {
                    add(meta, &header);
                    false
                })
                .await;
            }
            index.finish_rebuild();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(rebuild);
            }
            Err(_) => tracing::warn!("no runtime: tag index not rebuilt; purges by tag scan"),
        }
    }

    /// Writes `entry` to the disk tier in the background, then drops the variant it
    /// `replaces`, if any (the new row first, so a body they share stays).
    fn store_on_disk(
        &self,
        entry: &Arc<StoredResponse>,
        change: StoreChange,
        replaces: Option<VariantKey>,
    ) {
        let Some(disk) = self.live_disk() else {
            return;
        };
        if entry.meta.body_len > disk.max_object_size {
            return;
        }
        let body = match (&entry.body, change) {
            (_, StoreChange::Headers) => None,
            (StoredBody::Memory(bytes), _) => Some(bytes.clone()),
            (StoredBody::Sealed(sealed), _) => Some(sealed.bytes().clone()),
            // On disk already: the streaming fill indexed it.
            (StoredBody::File(_), StoreChange::Body) => return,
            // On disk already, found by its digest for the new row.
            (StoredBody::File(_), StoreChange::NewRow) => None,
        };
        let memory = self.memory.clone();
        let meta = entry.meta.clone();
        let body_len = body.as_ref().map_or(0, bytes::Bytes::len);
        let writer = disk.clone();
        let write = async move {
            let (key, evicted) = (meta.key, writer.store(meta, body).await);
            if let (Some(_), Some(replaced)) = (&evicted, replaces) {
                writer.remove_variant(key, replaced).await;
            }
            evicted
        };
        // What the queued write holds until it runs, not its body alone: with small bodies
        // the copied metadata and the write's task (its future, then the job handed to the
        // writer threads, about as large again) weigh more than the body, and counting
        // bodies only let a miss storm queue several times the backlog limit.
        let holds = body_len
            + entry.weight().saturating_sub(entry.meta.body_len as usize)
            + 2 * std::mem::size_of_val(&write);
        // Not written (the disk is behind): memory has it; disk keeps what it had, as when
        // a write fails. Anything queued here would only add to the backlog.
        let Some(queued) = disk.queue_write(holds as u64) else {
            return;
        };
        // Boxed, as fills are (see `spawn_fill`): moved by value otherwise.
        self.disk_writes.spawn(Box::pin(async move {
            let _queued = queued;
            if let Some(evicted) = write.await {
                forget_evicted_files(&memory, &evicted).await;
            }
        }));
    }

    /// Runs a fill or an encoding job in its own task (a leader whose client hangs up must
    /// not cancel it), one that [`Cache::settle`] waits for.
    pub fn spawn_fill(&self, job: impl std::future::Future<Output = ()> + Send + 'static) {
        // Boxed here: a fill's future is several kilobytes, and tokio moves a future below
        // its own boxing threshold by value through spawning, several copies per miss.
        self.fills.spawn(Box::pin(job));
    }

    /// As [`Cache::spawn_fill`], but the job's first steps run now, in the caller's task:
    /// for a miss, the origin connection is checked out and the request written at once,
    /// rather than after the new task's turn in the run queue (a whole pass of it on a busy
    /// single-threaded runtime). The rest runs in the fill's task, which is always polled
    /// once after it is spawned: what the first steps waited on is registered again there
    /// (futures go by their state when polled, not by who was woken).
    pub fn start_fill(&self, job: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut job = Box::pin(job);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if job.as_mut().poll(&mut cx).is_pending() {
            self.fills.spawn(job);
        }
    }

    /// Waits for fills in flight (a response already delivered may still be committing
    /// its body) and background disk writes, and makes the index durable: for tests that
    /// restart. See [`Cache::settle_within`].
    pub async fn settle(&self) {
        self.settle_within(Duration::MAX).await;
    }

    /// [`Cache::settle`] before shutdown: fills get at most `limit` to finish (a stalled
    /// origin must not hold the process); disk writes always finish.
    pub async fn settle_within(&self, limit: Duration) {
        self.fills.close();
        let fills = self.fills.wait();
        if tokio::time::timeout(limit, fills).await.is_err() {
            tracing::warn!(
                remaining = self.fills.len(),
                "fills still running at shutdown are abandoned: nothing of them is stored"
            );
        }
        self.fills.reopen();
        self.disk_writes.close();
        self.disk_writes.wait().await;
        self.disk_writes.reopen();
        if let Some(disk) = self.live_disk() {
            disk.flush().await;
        }
    }

    /// What the cache does last before the process exits, after [`Cache::settle_within`].
    pub async fn before_exit(&self) {
        if let Some(disk) = &self.disk {
            disk.apply_missed_before_exit().await;
        }
    }

    /// Removes every variant of `key` from both tiers (RFC 9111 §4.4 invalidation).
    pub async fn invalidate(&self, key: &PrimaryKey) -> usize {
        self.invalidate_keys(&[*key], false, None, false).await
    }

    /// Removes (or, `soft`, marks stale) every variant of each of `keys` in both tiers;
    /// returns how many variants were affected. The disk's go first, as one batch made
    /// durable (remembered while the tier is off: see [`disk::invalidations`]), so that no
    /// request promotes a variant back into memory meanwhile. `unlisted` names what a
    /// purge could not list on a disk tier that is off, for it to apply when it is back;
    /// `is_purge` makes the disk's part durable before this returns (see
    /// [`DiskStore::invalidate`]).
    async fn invalidate_keys(
        &self,
        keys: &[PrimaryKey],
        soft: bool,
        unlisted: Option<purge_target::Selection>,
        is_purge: bool,
    ) -> usize {
        // Partial entries go whatever `soft` says (they cannot be revalidated): from memory
        // before the disk's files, so that no write of one lands after, and again after,
        // for one a range request read back from disk meanwhile.
        for key in keys {
            self.partials.remove(key).await;
        }
        let mut on_disk = Vec::new();
        if let Some(disk) = &self.disk {
            let mut batch: Vec<Invalidation> = keys
                .iter()
                .map(|key| match soft {
                    true => Invalidation::MarkStale(*key),
                    false => Invalidation::Remove(*key),
                })
                .collect();
            batch.extend(unlisted.map(|selection| Invalidation::Where { selection, soft }));
            if let Some(done) = disk.invalidate(batch, is_purge).await {
                forget_evicted_files(&self.memory, &done.evicted).await;
                on_disk = done.affected;
            }
        }
        let mut affected = on_disk.get(keys.len()).copied().unwrap_or(0);
        for (n, key) in keys.iter().enumerate() {
            self.partials.remove(key).await;
            let in_memory = match soft {
                true => self.memory.mark_stale(key).await,
                false => self.memory.remove(key).await,
            };
            affected += in_memory.max(on_disk.get(n).copied().unwrap_or(0));
        }
        affected
    }

    /// A hook for a body streamed from a file that fails verification: removes the entry
    /// from both tiers and counts it.
    pub fn corruption_hook(&self, meta: &EntryMeta) -> disk::CorruptionHook {
        let memory = self.memory.clone();
        let disk = self.disk.clone();
        let lost_removals = self.lost_removals.clone();
        let (key, variant, url) = (meta.key, meta.variant, meta.url.clone());
        Box::new(move |corrupt| {
            if let Some(disk) = &disk {
                if corrupt {
                    disk.report_corrupt(&url);
                }
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            // Disk first: until memory lets go, requests meet the entry already reported;
            // the other order lets one promote the row again from disk (a fresh entry, whose
            // corruption would be reported twice).
            let removal = async move {
                if let Some(disk) = disk {
                    disk.remove_variant(key, variant).await;
                }
                memory.invalidate(&key).await;
            };
            lost_removals.run(&runtime, key, removal);
        })
    }

    /// Drops every variant of `key`, whose stored body a request found corrupt or missing
    /// before sending any of it, once the removal its read started has landed: the request
    /// then fetches the object again, and a late removal would take the new entry with it.
    pub async fn drop_lost(&self, key: &PrimaryKey) {
        self.lost_removals.finished(key).await;
        self.invalidate(key).await;
    }

    /// Partial entries and their bytes in the disk tier, if any.
    pub fn disk_partial_usage(&self) -> Option<(u64, u64)> {
        self.disk.as_ref().map(DiskTier::partial_usage)
    }

    /// Entries and bytes of the disk tier, if any.
    pub fn disk_usage(&self) -> Option<(u64, u64)> {
        self.disk.as_ref().map(DiskTier::usage)
    }

    /// Stored objects and body bytes whose path starts with each of `prefixes` (a scan of
    /// the disk tier's index, or of memory without one: for reports, not per request).
    pub async fn stored_under(&self, prefixes: Vec<String>) -> Vec<(u64, u64)> {
        let totals = Arc::new(parking_lot::Mutex::new(vec![(0u64, 0u64); prefixes.len()]));
        // The tiers' key scans visit every entry; the predicate counts and keeps nothing.
        let count = {
            let totals = Arc::clone(&totals);
            move |meta: &EntryMeta| {
                let path = url_path(&meta.url);
                if let Some(i) = prefixes.iter().position(|p| path.starts_with(p.as_str())) {
                    let mut totals = totals.lock();
                    totals[i].0 += 1;
                    totals[i].1 += meta.body_len;
                }
                false
            }
        };
        match self.live_disk() {
            Some(disk) => {
                disk.keys_where(count).await;
            }
            None => {
                self.memory
                    .keys_where(|set| {
                        set.iter().for_each(|entry| {
                            count(&entry.meta);
                        });
                        false
                    })
                    .await;
            }
        }
        let totals = totals.lock().clone();
        totals
    }
}

/// The path of a stored entry's `scheme://authority/path?query`.
fn url_path(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let path = url[after_scheme..]
        .find('/')
        .map_or("", |i| &url[after_scheme + i..]);
    path.split('?').next().unwrap_or(path)
}

fn fill_slot_bounds(config: &CacheConfig) -> Bounds {
    Bounds {
        total: config.max_fills,
        per_peer: config.max_fills_per_origin,
        queue: config.fill_queue,
        wait: config.fill_queue_timeout.get(),
    }
}

/// Runs `work`, which copies (and hashes) a body of `len` bytes, on the blocking pool when
/// the body is a megabyte or more, so a server thread is not held that long; `None` when
/// the pool is shutting down.
async fn off_thread_if_large<T: Send + 'static>(
    len: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    const OFF_THREAD: usize = 1 << 20;
    if len < OFF_THREAD {
        return Some(work());
    }
    tokio::task::spawn_blocking(work).await.ok()
}

/// What memory lets go:
/// - was in use until now: it moves to the recent end of the disk tier's replacement order
///   (so hot objects served from memory are not the disk's first victims);
/// - may still be being sent: a body in a sealed memory file keeps its pages while any
///   client holds a slice of it, outside the tier's count, so it holds its length against
///   the fills' budget until the last slice goes (as a body the tier declined does; see
///   [`Coalescer::hold`]). Clients stalled on evicted bodies then make fills stream
///   instead of keeping still more in memory. A body nobody holds lets go at once.
fn eviction_hook(disk: Option<DiskTier>, coalescer: Arc<Coalescer>) -> memory::EvictionHook {
    Box::new(move |set: &VariantSet| {
        for entry in set.iter() {
            if let Some(disk) = &disk {
                disk.touch_later(entry.meta.key, entry.meta.variant);
            }
            if let StoredBody::Sealed(sealed) = &entry.body {
                sealed.keep_while_held(Box::new(coalescer.hold(entry.meta.body_len)));
            }
        }
    })
}

/// Memory entries whose body is a file the disk tier just evicted would fail on their next
/// read: forget them, so the next request refetches.
pub async fn forget_evicted_files(memory: &MemoryTier, evicted: &[PrimaryKey]) {
    for key in evicted {
        memory.forget_file_bodies(key).await;
    }
}

/// Removals of entries whose stored body turned out lost, while they run, by key: see
/// [`Cache::drop_lost`]. Clones share them.
#[derive(Clone, Default)]
struct LostRemovals(Arc<Mutex<HashMap<PrimaryKey, LostRemoval>>>);

type LostRemoval = futures_util::future::Shared<futures_util::future::BoxFuture<'static, ()>>;

impl LostRemovals {
    /// Runs `removal` of `key`'s entry on `runtime`, noted until it has landed.
    fn run(
        &self,
        runtime: &tokio::runtime::Handle,
        key: PrimaryKey,
        removal: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        use futures_util::FutureExt;
        let removal: LostRemoval = removal.boxed().shared();
        self.0.lock().insert(key, removal.clone());
        let removals = Arc::clone(&self.0);
        runtime.spawn(async move {
            removal.clone().await;
            let mut removals = removals.lock();
            if removals
                .get(&key)
                .is_some_and(|noted| noted.ptr_eq(&removal))
            {
                removals.remove(&key);
            }
        });
    }

    /// Waits for the removal of `key`'s entry under way, if any.
    async fn finished(&self, key: &PrimaryKey) {
        let running = self.0.lock().get(key).cloned();
        if let Some(removal) = running {
            removal.await;
        }
    }
}

/// What a reload carries over from one [`Cache`] to the next.
struct SharedStores {
    memory: MemoryTier,
    disk: Option<DiskTier>,
    coalescer: Arc<Coalescer>,
    promotions: Arc<Mutex<HashMap<PrimaryKey, Arc<tokio::sync::Mutex<()>>>>>,
    lost_removals: LostRemovals,
    fill_slots: Arc<Limiter>,
    hit_for_miss: moka::sync::Cache<PrimaryKey, (), DigestHasher>,
    offline: Arc<AtomicBool>,
    disk_writes: TaskTracker,
    fills: TaskTracker,
    tag_index: Arc<TagIndex>,
    partials: PartialStore,
}

/// (tag, resource) pairs the tag index holds before it is rebuilt from the tiers (which
/// drops the evicted resources it still names): some 100 MiB at most.
const TAG_INDEX_CAPACITY: usize = 1_000_000;

/// Bytes of bodies the disk tier may have queued for writing: a sixteenth of the memory
/// tier, between 4 and 64 MiB, so the queue stays within the memory the tier is allowed.
fn disk_backlog_limit(memory_capacity: u64) -> u64 {
    (memory_capacity / 16).clamp(4 << 20, 64 << 20)
}

/// Opens the disk tier, sweeping leftovers in the background; `None` (memory only, logged)
/// when it cannot be opened.
fn open_disk(dir: &Path, config: &CacheConfig, metrics: &Metrics) -> Option<DiskTier> {
    let disk_metrics = DiskMetrics {
        integrity_failures: metrics.integrity_failures.clone(),
        errors: metrics.disk_errors.clone(),
        degraded: metrics.disk_degraded.clone(),
        evictions: metrics
            .evictions
            .get_or_create(&TierLabels { tier: "disk" })
            .clone(),
        full_refusals: metrics.disk_full_refusals.clone(),
        writes_skipped: metrics.disk_writes_skipped.clone(),
        write_backlog: metrics.disk_write_backlog.clone(),
        invalidations_pending: metrics.disk_invalidations_pending.clone(),
    };
    let limits = disk::StoreLimits {
        min_free: config.disk_min_free.as_u64(),
        max_variants: config.max_variants,
        max_objects: match config.disk_max_objects {
            0 => u64::MAX,
            limit => limit,
        },
    };
    let opened = DiskStore::open_awaiting_index(dir, config.disk_capacity.as_u64(), config.fsync);
    let (store, index_failure) = match opened {
        Ok((store, index_failure)) => (store.with_limits(limits), index_failure),
        Err(err) => {
            disk_metrics.errors.inc();
            disk_metrics.degraded.set(1);
            tracing::error!(dir = %dir.display(), error = %err, "disk tier unavailable: running with the memory tier only");
            return None;
        }
    };
    match &index_failure {
        Some(err) if err.is_out_of_room() => {
            tracing::error!(dir = %dir.display(), error = %err, "disk tier index does not open: its file system is full (the reserve kept for this is gone too); running with the memory tier only until there is room")
        }
        Some(err) => {
            tracing::error!(dir = %dir.display(), error = %err, "disk tier index does not open (another outpost may hold it); running with the memory tier only until it does")
        }
        None => {
            let (rows, bytes) = store.usage();
            tracing::info!(dir = %dir.display(), entries = rows, bytes, "disk tier opened");
        }
    }
    let tier = DiskTier::new(
        Arc::new(store),
        disk_metrics,
        config.max_object_size.as_u64(),
        config.disk_max_object_size.as_u64(),
    )
    .with_retry_after(config.disk_retry_after.get())
    .with_inline_max(config.disk_inline_max.as_u64())
    .with_sendfile(config.disk_sendfile)
    .with_backlog_limit(disk_backlog_limit(config.memory_capacity.as_u64()))
    .with_partial_budget(config.partial_capacity.as_u64());
    match index_failure {
        // Off, and probed until the index opens (see `DiskStore::open_awaiting_index`),
        // with what an earlier run left to invalidate.
        Some(err) => tier.degrade(&err),
        None => tier.apply_left_invalidations(),
    }
    Some(tier)
}

impl Cache {
    /// Removes (hard) or marks stale (soft: kept for revalidation and stale-if-error) every
    /// stored response that `target` names, in both tiers. Returns how many stored
    /// responses, counting each variant, were affected.
    pub async fn purge(&self, target: &PurgeTarget, soft: bool) -> usize {
        let header = self.surrogate_key_header.clone();
        // Partial entries are only ever removed: they cannot be revalidated. Each resource
        // counts once, whether its entry was in memory, on disk or both.
        let mut partial_keys: std::collections::HashSet<PrimaryKey> = self
            .partials
            .remove_where(|meta| target.matches(meta, &header))
            .await
            .into_iter()
            .collect();
        if let (Some(disk), false) = (self.live_disk(), matches!(target, PurgeTarget::Url(_))) {
            partial_keys.extend(disk.remove_partials_where(target.matcher(&header)).await);
            // Again: a range request may have read one back from disk meanwhile.
            self.partials
                .remove_where(|meta| target.matches(meta, &header))
                .await;
        }
        let partials = partial_keys.len();
        if let PurgeTarget::Tag { tag, origin } = target {
            if let Some(candidates) = self.tag_index.keys(tag, origin.as_deref()) {
                return partials + self.purge_tagged(target, tag, candidates, soft).await;
            }
        }
        let mut keys: Vec<PrimaryKey> = match target {
            PurgeTarget::Url(key) => vec![*key],
            _ => {
                self.memory
                    .keys_where(|set| set.iter().any(|e| target.matches(&e.meta, &header)))
                    .await
            }
        };
        let mut unlisted = None;
        if let (Some(disk), false) = (&self.disk, matches!(target, PurgeTarget::Url(_))) {
            let matches = target.matcher(&header);
            if disk.is_available() {
                let listing = Arc::clone(&matches);
                let mut listed: std::collections::HashSet<PrimaryKey> =
                    keys.iter().copied().collect();
                for key in disk.keys_where(move |meta| listing(meta)).await {
                    if listed.insert(key) {
                        keys.push(key);
                    }
                }
            }
            // Off, before or during the listing: the tier applies it when it is back.
            unlisted = (!disk.is_available()).then(|| target.selection(&header));
        }
        partials + self.invalidate_keys(&keys, soft, unlisted, true).await
    }

    /// A purge by `tag` through the tag index: each candidate resource is purged if a
    /// stored variant still carries the tag (the index may be out of date), and forgotten.
    async fn purge_tagged(
        &self,
        target: &PurgeTarget,
        tag: &str,
        candidates: Vec<PrimaryKey>,
        soft: bool,
    ) -> usize {
        let header = &self.surrogate_key_header;
        let mut tagged = Vec::new();
        for key in candidates {
            let in_memory = self
                .memory
                .get(&key)
                .await
                .is_some_and(|set| set.iter().any(|e| target.matches(&e.meta, header)));
            let is_tagged = in_memory
                || match self.live_disk() {
                    Some(disk) => disk
                        .variants(key)
                        .await
                        .iter()
                        .any(|meta| target.matches(meta, header)),
                    None => false,
                };
            if is_tagged {
                tagged.push(key);
            }
            if !soft {
                self.tag_index.forget(tag, &key);
            }
        }
        // A tier that is off could not say which candidates it holds tagged.
        let unlisted = self
            .disk
            .as_ref()
            .filter(|disk| !disk.is_available())
            .map(|_| target.selection(header));
        self.invalidate_keys(&tagged, soft, unlisted, true).await
    }
}

/// What a body held whole as it arrives counts against the fills' memory budget
/// ([`Cache::held_room`]); given back when dropped.
pub struct HeldRoom<'c> {
    cache: &'c Cache,
    commitment: Option<fill::Commitment<'c>>,
}

impl<'c> HeldRoom<'c> {
    /// Whether `len` bytes may be held: they count against the budget from now on.
    pub fn grow_to(&mut self, len: u64) -> bool {
        match &mut self.commitment {
            Some(commitment) => commitment.grow_to(len, self.cache.fill_bounds.memory_budget),
            None => {
                self.commitment = self.cache.commit_held(len);
                self.commitment.is_some()
            }
        }
    }

    /// Whether `len` bytes may be held within the budget, even were they alone in it (see
    /// [`fill::Commitment::grow_within`]): they count against it from now on.
    pub fn grow_within(&mut self, len: u64) -> bool {
        let budget = self.cache.fill_bounds.memory_budget;
        self.counted()
            .is_some_and(|commitment| commitment.grow_within(len, budget))
    }

    /// Counts `len` bytes against the budget, room or not (see [`fill::Commitment::force_to`]).
    pub fn force_to(&mut self, len: u64) {
        if let Some(commitment) = self.counted() {
            commitment.force_to(len);
        }
    }

    /// The commitment, made for nothing yet if there is none (which an unbounded budget
    /// never refuses).
    fn counted(&mut self) -> Option<&mut fill::Commitment<'c>> {
        if self.commitment.is_none() {
            self.commitment = self.cache.coalescer.commit(0, u64::MAX, None);
        }
        self.commitment.as_mut()
    }

    /// Gives back what is counted: the bytes are no longer held.
    pub fn release(&mut self) {
        self.commitment = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MemoryPolicy;
    use prometheus_client::metrics::counter::Counter;

    /// A body held whole may pass the fills' budget alone (`grow_to`); one that has its own
    /// way past it (an index document's pass) is held to it even alone (`grow_within`),
    /// and what it is forced to count still counts against the others.
    #[tokio::test]
    async fn held_bodies_pass_the_budget_alone_unless_held_within_it() {
        const MIB: u64 = 1 << 20;
        let config = CacheConfig {
            fill_memory_budget: Some(crate::config::ByteSize(MIB)),
            ..CacheConfig::default()
        };
        let cache = Cache::new(&config, &Arc::new(Metrics::new()));
        let mut alone = cache.held_room();
        assert!(alone.grow_to(2 * MIB), "a body alone may pass the budget");
        drop(alone);
        let mut within = cache.held_room();
        assert!(within.grow_within(MIB / 2));
        assert!(
            !within.grow_within(2 * MIB),
            "held within the budget, even alone"
        );
        within.force_to(2 * MIB);
        assert_eq!(cache.fill_budget_used(), 2 * MIB);
        assert!(
            !cache.held_room().grow_to(MIB / 4),
            "others are past the budget"
        );
        within.release();
        assert_eq!(cache.fill_budget_used(), 0);
    }

    /// Partial entries come out of the memory tier's share of `memory_capacity`, as the disk
    /// tier's index does: with pieces kept (what arrived of dropped downloads, 206 pieces),
    /// the tier holds less, and the process stays within the capacity configured.
    #[tokio::test]
    async fn partial_entries_are_charged_to_the_memory_tier() {
        let config = CacheConfig {
            memory_capacity: crate::config::ByteSize(64 << 20),
            partial_capacity: crate::config::ByteSize(32 << 20),
            ..CacheConfig::default()
        };
        let cache = Cache::new(&config, &Arc::new(Metrics::new()));
        let tier_capacity = config.memory_tier_capacity();
        let text = "p".repeat(1 << 20);
        for index in 0..6 {
            let path = format!("/partial/{index}");
            let piece = partial::testing::piece(&path, "\"p\"", 0, &text, 4 << 20);
            cache.partials.add(piece).await;
        }
        let (_, partials_held, _) = cache.partials.usage();
        assert!(partials_held >= 6 << 20, "{partials_held}");
        for index in 0..400 {
            let path = format!("/whole/{index}");
            let stored = Arc::new(entry::testing::entry(&path, vec![1u8; 256 << 10]));
            for _ in 0..2 {
                cache.memory.get(&stored.meta.key).await;
            }
            cache.memory.insert(stored).await;
        }
        let (_, tier_held) = cache.memory.usage().await;
        assert!(
            tier_held + partials_held <= tier_capacity,
            "tier {tier_held} + partials {partials_held} > {tier_capacity}"
        );
        assert!(
            tier_held > tier_capacity / 2,
            "the tier is still used: {tier_held}"
        );
    }

    fn sealed_entry(path: &str, len: usize) -> Arc<StoredResponse> {
        let plain = entry::testing::entry(path, vec![7u8; len]);
        let sealed = sealed::Sealer::new(1)
            .seal(&Bytes::from(vec![7u8; len]))
            .expect("a memory file");
        let digest = plain.meta.body_digest;
        Arc::new(StoredResponse::from_sealed(plain.meta, sealed, digest))
    }

    /// A sealed body the tier evicts while a client still holds a slice of it keeps its
    /// pages outside the tier's count: it holds its length against the fills' budget
    /// while held, until the tier takes it again (then the tier counts it).
    #[tokio::test]
    async fn an_evicted_body_still_being_sent_holds_the_fills_budget() {
        for policy in [MemoryPolicy::Wtinylfu, MemoryPolicy::Lru] {
            let coalescer = Arc::new(Coalescer::new(Default::default()));
            let tier = MemoryTier::new(
                1 << 20,
                4,
                policy,
                Counter::default(),
                Some(eviction_hook(None, Arc::clone(&coalescer))),
            );
            let (sent, len) = (sealed_entry("/sent", 200 << 10), 200 << 10);
            let key = sent.meta.key;
            tier.insert(Arc::clone(&sent)).await.expect("stored");
            assert!(
                coalescer.commit(len, len, None).is_some(),
                "{policy:?}: in the tier, it holds nothing"
            );
            for index in 0..40 {
                // On the heap: no other body is held, whatever moka keeps for a while.
                let newcomer = Arc::new(entry::testing::entry(
                    &format!("/newer/{index}"),
                    vec![0u8; 100 << 10],
                ));
                for _ in 0..4 {
                    tier.get(&newcomer.meta.key).await;
                }
                tier.insert(newcomer).await;
            }
            tier.usage().await;
            assert!(tier.peek(&key).is_none(), "{policy:?}: evicted");
            assert!(
                coalescer.commit(1, len, None).is_none(),
                "{policy:?}: still being sent, it holds the whole budget"
            );
            // Stored again (a revalidation by a request that found it before the eviction
            // reuses the body).
            for _ in 0..8 {
                tier.get(&key).await;
            }
            tier.insert(Arc::clone(&sent)).await;
            tier.usage().await;
            assert!(tier.peek(&key).is_some(), "{policy:?}: stored again");
            assert!(
                coalescer.commit(len, len, None).is_some(),
                "{policy:?}: back in the tier, it holds nothing"
            );
        }
    }
}
