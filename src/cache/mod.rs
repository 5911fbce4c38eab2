//! The shared cache (RFC 9111): keys, the stored form of a response, the caching rules, the
//! memory tier and request coalescing, behind one [`Cache`] the pipeline talks to.
//!
//! - [`key`]: primary key (which resource) and variant key (which representation).
//! - [`policy`]: storability, freshness, age, reuse, validation; `now` is always passed in.
//! - [`entry`]: the stored response and its versioned encoding.
//! - [`memory`]: the moka tier.
//! - [`coalesce`]: one origin fetch per variant, streamed to every waiting request.
//!
//! Cache failures never fail a request; the pipeline decides what to do with a lookup.

pub mod coalesce;
pub mod entry;
pub mod key;
pub mod memory;
pub mod policy;

use std::time::Duration;

use http::HeaderName;

use crate::config::CacheConfig;
use coalesce::Coalescer;
use key::PrimaryKey;
use memory::MemoryTier;
use policy::PolicySettings;

/// The cache as a whole: settings, tiers, coalescing and the hit-for-miss memory.
pub struct Cache {
    pub is_enabled: bool,
    pub policy: PolicySettings,
    pub max_object_size: u64,
    pub coalesce_wait: Duration,
    pub memory: MemoryTier,
    pub coalescer: Coalescer,
    /// URLs whose last response was uncacheable: their requests skip coalescing for a while
    /// (Varnish's hit-for-miss).
    hit_for_miss: moka::future::Cache<PrimaryKey, ()>,
}

impl Cache {
    pub fn new(config: &CacheConfig) -> Cache {
        let targeted_fields = config
            .targeted_cache_control
            .iter()
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        Cache {
            is_enabled: config.enabled,
            policy: PolicySettings {
                // The library takes an f32; config keeps f64 so it prints as written.
                heuristic_fraction: config.heuristic_fraction as f32,
                heuristic_max: config.heuristic_max.get(),
                store_set_cookie: config.store_set_cookie,
                targeted_fields,
            },
            max_object_size: config.max_object_size.as_u64(),
            coalesce_wait: config.coalesce_wait.get(),
            memory: MemoryTier::new(
                config.memory_capacity.as_u64(),
                config.max_variants,
                config.memory_policy,
            ),
            coalescer: Coalescer::default(),
            hit_for_miss: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.hit_for_miss_ttl.get().max(Duration::from_millis(1)))
                .build(),
        }
    }

    pub async fn is_hit_for_miss(&self, key: &PrimaryKey) -> bool {
        self.hit_for_miss.contains_key(key)
    }

    pub async fn remember_uncacheable(&self, key: PrimaryKey) {
        self.hit_for_miss.insert(key, ()).await;
    }

    pub async fn forget_uncacheable(&self, key: &PrimaryKey) {
        self.hit_for_miss.invalidate(key).await;
    }
}
