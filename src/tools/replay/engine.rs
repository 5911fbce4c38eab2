//! Replay through moka itself, configured as the memory tier configures it (the same
//! eviction policy, weight = bytes): the check that [`super::sim`]'s models say what the
//! real engine does. Slower than the models, and moka applies evictions in batches, so
//! pending maintenance is run after every insertion to make the result repeatable.

use super::sim::{Counts, Policy};
use super::trace::TraceRequest;

/// Replays `requests` through a moka cache of `capacity` bytes.
pub fn replay(
    requests: &[TraceRequest],
    policy: Policy,
    capacity: u64,
    warmup: usize,
    progress: &dyn Fn(u64),
) -> Counts {
    let eviction = match policy {
        Policy::Lru => moka::policy::EvictionPolicy::lru(),
        Policy::TinyLfu => moka::policy::EvictionPolicy::tiny_lfu(),
    };
    // The value: size and the trace time the copy expires.
    let cache: moka::sync::Cache<u64, (u32, u32)> = moka::sync::Cache::builder()
        .max_capacity(capacity)
        .eviction_policy(eviction)
        .weigher(|_id: &u64, (size, _): &(u32, u32)| *size)
        .build();
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
        match cache.get(&request.id) {
            Some((_, expires)) if expires > request.time => {
                if counted {
                    counts.hits += 1;
                    counts.hit_bytes += size;
                }
                continue;
            }
            Some(_) => cache.invalidate(&request.id),
            None => {}
        }
        if request.ttl != 0 {
            let expires = request.time.saturating_add(request.ttl);
            cache.insert(request.id, (request.size, expires));
        }
        cache.run_pending_tasks();
    }
    progress((requests.len() % 65_536) as u64);
    counts
}
