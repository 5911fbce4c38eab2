//! The replacement policies of outpost's tiers, as exact, deterministic simulations fast
//! enough for trace replay: `lru` (the memory tier's default and the disk tier's policy)
//! and `tinylfu` (moka's weighted TinyLFU: a frequency sketch admits a newcomer only if it
//! is more popular than everything it would evict, with LRU order among admitted objects).
//!
//! moka itself is not replayed: its maintenance runs in batches and its sketch is sampled,
//! so its hit counts vary from run to run; these models follow its rules exactly and give
//! the same answer every time. Objects larger than the cache are never admitted.

pub use crate::cache::replacement::IdHasher;
use crate::cache::replacement::{FrequencySketch, Recency, WindowTinyLfu};

/// Which replacement policy a simulated tier uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Lru,
    TinyLfu,
    /// The memory tier's default ([`WindowTinyLfu`]).
    WTinyLfu,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::TinyLfu => "tinylfu",
            Policy::WTinyLfu => "wtinylfu",
        }
    }

    pub fn parse(text: &str) -> Option<Policy> {
        match text.to_ascii_lowercase().as_str() {
            "lru" => Some(Policy::Lru),
            "tinylfu" | "tiny-lfu" => Some(Policy::TinyLfu),
            "wtinylfu" | "w-tinylfu" => Some(Policy::WTinyLfu),
            _ => None,
        }
    }
}

/// One simulated tier of `capacity` bytes.
pub struct SimTier {
    policy: Policy,
    capacity: u64,
    order: Recency<u64>,
    sketch: Option<FrequencySketch>,
    window_tiny_lfu: Option<WindowTinyLfu<u64>>,
}

impl SimTier {
    pub fn new(policy: Policy, capacity: u64, _expected_objects: usize) -> SimTier {
        SimTier {
            policy,
            capacity,
            order: Recency::new(),
            // As moka: no sketch until the tier is half full.
            sketch: None,
            window_tiny_lfu: (policy == Policy::WTinyLfu).then(|| WindowTinyLfu::new(capacity)),
        }
    }

    /// A request for `id` at trace time `now`: true on a hit (the object becomes most
    /// recent). A stored copy that has expired is dropped and the request is a miss.
    pub fn lookup(&mut self, id: u64, now: u32) -> bool {
        let found = match &mut self.window_tiny_lfu {
            Some(tier) => tier.access(&id),
            None => {
                if let Some(sketch) = &mut self.sketch {
                    sketch.increment(id);
                }
                self.order.touch(&id)
            }
        };
        match found {
            Some(expires) if expires > now => true,
            Some(_) => {
                self.remove(id);
                false
            }
            None => false,
        }
    }

    fn remove(&mut self, id: u64) {
        match &mut self.window_tiny_lfu {
            Some(tier) => {
                tier.remove(&id);
            }
            None => {
                self.order.remove(&id);
            }
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        match &self.window_tiny_lfu {
            Some(tier) => tier.contains(&id),
            None => self.order.contains(&id),
        }
    }

    /// When the stored copy of `id` expires, if there is one; reading it makes it the most
    /// recent.
    fn expiry(&mut self, id: u64) -> Option<u32> {
        self.order.touch(&id)
    }

    /// Stores `id` after a miss, if the policy admits it. TinyLFU follows moka's rule:
    /// with room, admit; otherwise take victims from the least recent end until they weigh
    /// at least the newcomer (stopping once they are more popular than it), and admit only
    /// if the newcomer is more popular than all of them together. W-TinyLFU is
    /// [`WindowTinyLfu`], the memory tier's own.
    pub fn admit(&mut self, id: u64, size: u64, now: u32, ttl: u32) {
        if size > self.capacity || ttl == 0 {
            return;
        }
        let expires = now.saturating_add(ttl);
        if let Some(tier) = &mut self.window_tiny_lfu {
            tier.insert(id, size, expires, &mut Vec::new());
            return;
        }
        self.order.remove(&id);
        if self.policy == Policy::TinyLfu && self.order.used + size > self.capacity {
            let candidate = self.sketch.as_ref().map_or(0, |s| s.estimate(id));
            let (mut weight, mut frequency, mut victims) = (0u64, 0u32, 0usize);
            for (victim, victim_size) in self.order.least_recent() {
                if weight >= size || frequency > candidate {
                    break;
                }
                weight += victim_size;
                frequency += self.sketch.as_ref().map_or(0, |s| s.estimate(victim));
                victims += 1;
            }
            if weight < size || candidate <= frequency {
                return;
            }
            for _ in 0..victims {
                self.order.pop_last();
            }
        }
        while self.order.used + size > self.capacity {
            if self.order.pop_last().is_none() {
                break;
            }
        }
        self.order.insert(id, size, expires);
        let used = self.order.used;
        if self.policy == Policy::TinyLfu && self.sketch.is_none() && used >= self.capacity / 2 {
            let entries = self.order.len() as u64;
            let scaled = (entries as f64 * (used as f64 / self.capacity.max(1) as f64)) as u64;
            self.sketch = Some(FrequencySketch::new(scaled));
        }
    }

    pub fn peek_victim(&self) -> Option<(u64, u64)> {
        self.order.peek_last()
    }
}

/// Counts of one replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub bytes: u64,
    pub hits: u64,
    pub hit_bytes: u64,
    /// Of the hits, those the disk tier answered.
    pub disk_hits: u64,
}

/// Replays `requests` through a memory tier (and, with `disk`, a disk tier behind it that
/// keeps everything stored, as outpost stores to both), counting after `warmup` requests.
pub fn replay(
    requests: &[super::trace::TraceRequest],
    policy: Policy,
    memory: u64,
    disk: Option<u64>,
    warmup: usize,
    expected_objects: usize,
    progress: &dyn Fn(u64),
) -> Counts {
    let mut memory_tier = SimTier::new(policy, memory, expected_objects);
    let mut disk_tier = disk.map(|capacity| SimTier::new(Policy::Lru, capacity, expected_objects));
    let mut counts = Counts::default();
    for (index, request) in requests.iter().enumerate() {
        if index % 65_536 == 65_535 {
            progress(65_536);
        }
        let size = u64::from(request.size);
        let counted = index >= warmup;
        if counted {
            counts.requests += 1;
            counts.bytes += size;
        }
        let (now, ttl) = (request.time, request.ttl);
        if memory_tier.lookup(request.id, now) {
            if counted {
                counts.hits += 1;
                counts.hit_bytes += size;
            }
            continue;
        }
        if let Some(disk_tier) = &mut disk_tier {
            if disk_tier.lookup(request.id, now) {
                if counted {
                    counts.hits += 1;
                    counts.hit_bytes += size;
                    counts.disk_hits += 1;
                }
                // Promoted with what is left of its freshness (the disk copy's).
                let left = disk_tier.expiry(request.id).map_or(ttl, |e| e - now);
                memory_tier.admit(request.id, size, now, left);
                continue;
            }
            disk_tier.admit(request.id, size, now, ttl);
        }
        memory_tier.admit(request.id, size, now, ttl);
    }
    progress((requests.len() % 65_536) as u64);
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::replay::trace::{TraceRequest, FOREVER};

    fn trace(ids: &[u64]) -> Vec<TraceRequest> {
        ids.iter()
            .map(|&id| TraceRequest {
                time: 0,
                id,
                size: 1,
                ttl: FOREVER,
            })
            .collect()
    }

    /// Hand-computed: capacity 2, A B A C B A → miss miss hit miss(evicts B) miss(evicts A)
    /// miss(evicts C) → 1 hit of 6.
    #[test]
    fn lru_matches_a_hand_computed_trace() {
        let lru = |capacity, warmup| {
            let requests = trace(&[1, 2, 1, 3, 2, 1]);
            let counts = replay(&requests, Policy::Lru, capacity, None, warmup, 8, &|_| {});
            (counts.requests, counts.hits)
        };
        assert_eq!(lru(2, 0), (6, 1));
        // Capacity 3 keeps all three: 3 hits.
        assert_eq!(lru(3, 0), (6, 3));
        // Warm-up excludes the first requests from the counts.
        assert_eq!(lru(3, 3), (3, 2));
    }

    #[test]
    fn sizes_are_weighed_and_oversized_objects_never_admitted() {
        let requests = [
            TraceRequest {
                time: 0,
                id: 1,
                size: 6,
                ttl: FOREVER,
            },
            TraceRequest {
                time: 0,
                id: 2,
                size: 6,
                ttl: FOREVER,
            },
            TraceRequest {
                time: 0,
                id: 1,
                size: 6,
                ttl: FOREVER,
            },
            TraceRequest {
                time: 0,
                id: 3,
                size: 50,
                ttl: FOREVER,
            },
            TraceRequest {
                time: 0,
                id: 3,
                size: 50,
                ttl: FOREVER,
            },
        ];
        let counts = replay(&requests, Policy::Lru, 10, None, 0, 8, &|_| {});
        assert_eq!(counts.hits, 0, "2 evicted 1; 3 never fits");
        assert_eq!(counts.bytes, 118);
    }

    /// A copy is fresh for its ttl (RFC 9111 §4.2 in a trace's terms): after that the
    /// request is a miss and the object is stored again; ttl 0 is never stored.
    #[test]
    fn expired_and_uncacheable_objects_are_misses() {
        let at = |time, id, ttl| TraceRequest {
            time,
            id,
            size: 1,
            ttl,
        };
        let requests = [
            at(0, 1, 10),
            at(5, 1, 10),
            at(20, 1, 10),
            at(25, 1, 10),
            at(26, 2, 0),
            at(27, 2, 0),
        ];
        for policy in [Policy::Lru, Policy::TinyLfu] {
            let counts = replay(&requests, policy, 10, None, 0, 8, &|_| {});
            assert_eq!(counts.hits, 2, "{policy:?}");
        }
        let with_disk = replay(&requests, Policy::Lru, 1, Some(10), 0, 8, &|_| {});
        assert_eq!(with_disk.hits, 2);
    }

    #[test]
    fn a_disk_tier_answers_what_memory_let_go() {
        let counts = replay(
            &trace(&[1, 2, 3, 1]),
            Policy::Lru,
            1,
            Some(10),
            0,
            8,
            &|_| {},
        );
        assert_eq!((counts.hits, counts.disk_hits), (1, 1));
    }

    /// As in moka, popularity is counted once the tier is half full (here after 10 and
    /// 11); then 1 is seen four times, and the one-hit scan cannot displace it.
    #[test]
    fn tinylfu_keeps_a_popular_object_through_a_scan() {
        let mut ids = vec![10, 11, 1, 1, 1, 1];
        ids.extend(100..200);
        ids.push(1);
        let lru = replay(&trace(&ids), Policy::Lru, 4, None, 0, 256, &|_| {});
        let tinylfu = replay(&trace(&ids), Policy::TinyLfu, 4, None, 0, 256, &|_| {});
        assert_eq!(lru.hits, 3, "the scan flushed it");
        assert_eq!(tinylfu.hits, 4, "one-hit scan objects were refused");
    }
}
