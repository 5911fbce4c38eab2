//! Replay through moka itself, configured as the memory tier configures it (the same
//! eviction policy, weight = bytes; for `wtinylfu`, unbounded moka with the tier's
//! [`WindowTinyLfu`] deciding what is removed from it): the check that [`super::sim`]'s
//! models say what the real engine does. Slower than the models, and moka applies
//! evictions in batches, so pending maintenance is run after every insertion to make the
//! result repeatable.

use super::sim::{Counts, Policy};
use super::trace::TraceRequest;
use crate::cache::replacement::WindowTinyLfu;

/// Replays `requests` through a moka cache of `capacity` bytes.
pub fn replay(
    requests: &[TraceRequest],
    policy: Policy,
    capacity: u64,
    warmup: usize,
    progress: &dyn Fn(u64),
) -> Counts {
    let builder = moka::sync::Cache::builder().weigher(|_id: &u64, (size, _): &(u32, u32)| *size);
    // The value: size and the trace time the copy expires.
    let (cache, mut decides): (moka::sync::Cache<u64, (u32, u32)>, _) = match policy {
        Policy::Lru => (
            builder
                .max_capacity(capacity)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            None,
        ),
        Policy::TinyLfu => (
            builder
                .max_capacity(capacity)
                .eviction_policy(moka::policy::EvictionPolicy::tiny_lfu())
                .build(),
            None,
        ),
        Policy::WTinyLfu => (builder.build(), Some(WindowTinyLfu::new(capacity))),
    };
    let mut evicted = Vec::new();
    let mut counts = Counts::default();
    for (index, request) in requests.iter().enumerate() {
        if index % 65_536 == 65_535 {
            progress(65_536);
        }
        let counted = index >= warmup;
        let size = u64::from(request.size);
        if counted {
            counts.requests += 1;
            counts.bytes += size;
        }
        let found = cache.get(&request.id);
        if let Some(policy) = &mut decides {
            // As the memory tier's `get`: every request is counted by the policy.
            policy.access(&request.id);
        }
        match found {
            Some((_, expires)) if expires > request.time => {
                if counted {
                    counts.hits += 1;
                    counts.hit_bytes += size;
                }
                continue;
            }
            Some(_) => {
                cache.invalidate(&request.id);
                if let Some(policy) = &mut decides {
                    policy.remove(&request.id);
                }
            }
            None => {}
        }
        if request.ttl != 0 && u64::from(request.size) <= capacity {
            let expires = request.time.saturating_add(request.ttl);
            cache.insert(request.id, (request.size, expires));
            if let Some(policy) = &mut decides {
                policy.insert(request.id, size, expires, &mut evicted);
                for gone in evicted.drain(..) {
                    cache.invalidate(&gone);
                }
            }
        }
        cache.run_pending_tasks();
    }
    progress((requests.len() % 65_536) as u64);
    counts
}
