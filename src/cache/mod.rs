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

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::admin::metrics::{Metrics, TierLabels};
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
    pub coalescer: Arc<Coalescer>,
    /// URLs whose last response was uncacheable: their requests skip coalescing for a while
    /// (Varnish's hit-for-miss).
    hit_for_miss: moka::future::Cache<PrimaryKey, ()>,
    /// Header whose space-separated keys tag a response for purge by tag.
    surrogate_key_header: HeaderName,
}

impl Cache {
    pub fn new(config: &CacheConfig, metrics: &Metrics) -> Cache {
        let memory = MemoryTier::new(
            config.memory_capacity.as_u64(),
            config.max_variants,
            config.memory_policy,
            metrics
                .evictions
                .get_or_create(&TierLabels { tier: "memory" })
                .clone(),
        );
        let hit_for_miss = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.hit_for_miss_ttl.get().max(Duration::from_millis(1)))
            .build();
        Cache::with_stores(config, memory, Arc::new(Coalescer::default()), hit_for_miss)
    }

    /// The same stored entries, fills in flight and hit-for-miss memory, governed by the
    /// settings of `config` (a reload). The memory tier's capacity, policy and variant bound,
    /// and the hit-for-miss lifetime, are fixed when the tier is built and need a restart.
    pub fn reconfigured(&self, config: &CacheConfig) -> Cache {
        Cache::with_stores(
            config,
            self.memory.clone(),
            Arc::clone(&self.coalescer),
            self.hit_for_miss.clone(),
        )
    }

    fn with_stores(
        config: &CacheConfig,
        memory: MemoryTier,
        coalescer: Arc<Coalescer>,
        hit_for_miss: moka::future::Cache<PrimaryKey, ()>,
    ) -> Cache {
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
            memory,
            coalescer,
            surrogate_key_header: HeaderName::from_bytes(config.surrogate_key_header.as_bytes())
                .unwrap_or(HeaderName::from_static("surrogate-key")),
            hit_for_miss,
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

/// What a purge removes (all variants of every matching resource).
#[derive(Debug, Clone)]
pub enum PurgeTarget {
    /// One URL, as its primary key.
    Url(PrimaryKey),
    /// Every URL starting with this absolute-URL prefix.
    Prefix(String),
    /// Every resource tagged so by `Cache-Groups` (RFC 9875) or the surrogate-key header,
    /// optionally only those of one authority (RFC 9875 groups are scoped to an origin).
    Tag {
        tag: String,
        authority: Option<String>,
    },
}

impl Cache {
    /// Removes (hard) or marks stale (soft: kept for revalidation and stale-if-error) every
    /// stored response that `target` names. Returns how many stored responses, counting
    /// each variant, were affected.
    pub async fn purge(&self, target: &PurgeTarget, soft: bool) -> usize {
        let keys: Vec<PrimaryKey> = match target {
            PurgeTarget::Url(key) => vec![*key],
            PurgeTarget::Prefix(prefix) => {
                self.memory
                    .keys_where(|set| {
                        set.iter()
                            .any(|entry| entry.meta.url.starts_with(prefix.as_str()))
                    })
                    .await
            }
            PurgeTarget::Tag { tag, authority } => {
                self.memory
                    .keys_where(|set| {
                        set.iter().any(|entry| {
                            let in_scope = authority.as_deref().is_none_or(|authority| {
                                entry.meta.url.split_once("://").is_some_and(|(_, rest)| {
                                    rest.split('/').next() == Some(authority)
                                })
                            });
                            in_scope
                                && tags::of(&entry.meta.headers, &self.surrogate_key_header)
                                    .any(|t| t == *tag)
                        })
                    })
                    .await
            }
        };
        let mut affected = 0;
        for key in keys {
            affected += if soft {
                self.memory.mark_stale(&key).await
            } else {
                self.memory.remove(&key).await
            };
        }
        affected
    }
}

/// Cache tags of a stored response: the strings of `Cache-Groups` (RFC 9875 §2, an RFC 8941
/// list of strings) and the space-separated keys of the surrogate-key header.
pub mod tags {
    use http::{HeaderMap, HeaderName};

    pub fn of<'a>(
        headers: &'a HeaderMap,
        surrogate_key: &'a HeaderName,
    ) -> impl Iterator<Item = String> + 'a {
        let groups = headers
            .get_all("cache-groups")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(sf_strings);
        let keys = headers
            .get_all(surrogate_key)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| {
                v.split_ascii_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            });
        groups.chain(keys)
    }

    /// The string members of an RFC 8941 list (`"a", "b\\"c"`); other members are skipped.
    pub fn sf_strings(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(ch) = chars.next() {
            if ch != '"' {
                continue;
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some(inner) = chars.next() {
                match inner {
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    other => value.push(other),
                }
            }
            if closed {
                out.push(value);
            }
            // Skip parameters up to the next member.
            for rest in chars.by_ref() {
                if rest == ',' {
                    break;
                }
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn parses_rfc_8941_string_lists() {
            assert_eq!(
                super::sf_strings(r#""scripts", "shop";x=1, "a\"b""#),
                ["scripts", "shop", "a\"b"]
            );
            assert!(super::sf_strings("token, 1").is_empty());
        }
    }
}
