//! The replacement policies of outpost's tiers, as exact, deterministic simulations fast
//! enough for trace replay: `lru` (the memory tier's default and the disk tier's policy)
//! and `tinylfu` (moka's weighted TinyLFU: a frequency sketch admits a newcomer only if it
//! is more popular than everything it would evict, with LRU order among admitted objects).
//!
//! moka itself is not replayed: its maintenance runs in batches and its sketch is sampled,
//! so its hit counts vary from run to run; these models follow its rules exactly and give
//! the same answer every time. Objects larger than the cache are never admitted.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a u64 id with one multiply-xorshift round (ids are already well spread or small
/// integers; SipHash would cost more than the simulation step).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z ^= z >> 32;
        z
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

const NIL: u32 = u32::MAX;

struct Node {
    id: u64,
    size: u64,
    prev: u32,
    next: u32,
}

/// Recency order over an arena: O(1) touch, insert and pop of the least recent.
struct Recency {
    nodes: Vec<Node>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    index: IdMap<u32>,
}

impl Recency {
    fn new() -> Recency {
        Recency {
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            index: IdMap::default(),
        }
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let node = &self.nodes[slot as usize];
            (node.prev, node.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, slot: u32) {
        let old_head = self.head;
        {
            let node = &mut self.nodes[slot as usize];
            node.prev = NIL;
            node.next = old_head;
        }
        match old_head {
            NIL => self.tail = slot,
            h => self.nodes[h as usize].prev = slot,
        }
        self.head = slot;
    }

    /// Moves `id` to the most recent end; its size if present.
    fn touch(&mut self, id: u64) -> Option<u64> {
        let slot = *self.index.get(&id)?;
        self.unlink(slot);
        self.push_front(slot);
        Some(self.nodes[slot as usize].size)
    }

    fn contains(&self, id: u64) -> bool {
        self.index.contains_key(&id)
    }

    fn insert(&mut self, id: u64, size: u64) {
        let node = Node {
            id,
            size,
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.index.insert(id, slot);
        self.push_front(slot);
    }

    /// The least recent, without removing it.
    fn peek_last(&self) -> Option<(u64, u64)> {
        (self.tail != NIL).then(|| {
            let node = &self.nodes[self.tail as usize];
            (node.id, node.size)
        })
    }

    fn pop_last(&mut self) -> Option<(u64, u64)> {
        let slot = self.tail;
        if slot == NIL {
            return None;
        }
        self.unlink(slot);
        self.free.push(slot);
        let node = &self.nodes[slot as usize];
        self.index.remove(&node.id);
        Some((node.id, node.size))
    }

    fn remove(&mut self, id: u64) -> Option<u64> {
        let slot = self.index.remove(&id)?;
        self.unlink(slot);
        self.free.push(slot);
        Some(self.nodes[slot as usize].size)
    }
}

/// A count-min sketch of 4-bit-style counters (saturating at 15) with periodic halving, as
/// TinyLFU uses to estimate popularity.
struct FrequencySketch {
    counters: Vec<u8>,
    mask: usize,
    additions: u64,
    reset_at: u64,
}

impl FrequencySketch {
    fn new(expected_objects: usize) -> FrequencySketch {
        let width = expected_objects.max(64).next_power_of_two();
        FrequencySketch {
            counters: vec![0; width * 4],
            mask: width - 1,
            additions: 0,
            reset_at: 10 * width as u64,
        }
    }

    fn slots(&self, id: u64) -> [usize; 4] {
        let mut hash = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let width = self.mask + 1;
        std::array::from_fn(|row| {
            hash = (hash ^ (hash >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            row * width + (hash as usize & self.mask)
        })
    }

    fn increment(&mut self, id: u64) {
        for slot in self.slots(id) {
            if self.counters[slot] < 15 {
                self.counters[slot] += 1;
            }
        }
        self.additions += 1;
        if self.additions >= self.reset_at {
            for counter in &mut self.counters {
                *counter /= 2;
            }
            self.additions /= 2;
        }
    }

    fn estimate(&self, id: u64) -> u32 {
        self.slots(id)
            .iter()
            .map(|slot| u32::from(self.counters[*slot]))
            .min()
            .unwrap_or(0)
    }
}

/// Which replacement policy a simulated tier uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Lru,
    TinyLfu,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::TinyLfu => "tinylfu",
        }
    }

    pub fn parse(text: &str) -> Option<Policy> {
        match text.to_ascii_lowercase().as_str() {
            "lru" => Some(Policy::Lru),
            "tinylfu" | "tiny-lfu" => Some(Policy::TinyLfu),
            _ => None,
        }
    }
}

/// One simulated tier of `capacity` bytes.
pub struct SimTier {
    policy: Policy,
    capacity: u64,
    used: u64,
    order: Recency,
    sketch: Option<FrequencySketch>,
}

impl SimTier {
    pub fn new(policy: Policy, capacity: u64, expected_objects: usize) -> SimTier {
        SimTier {
            policy,
            capacity,
            used: 0,
            order: Recency::new(),
            sketch: (policy == Policy::TinyLfu).then(|| FrequencySketch::new(expected_objects)),
        }
    }

    /// A request for `id`: true on a hit (the object becomes most recent).
    pub fn lookup(&mut self, id: u64) -> bool {
        if let Some(sketch) = &mut self.sketch {
            sketch.increment(id);
        }
        self.order.touch(id).is_some()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.order.contains(id)
    }

    /// Stores `id` after a miss, if the policy admits it.
    pub fn admit(&mut self, id: u64, size: u64) {
        if size > self.capacity {
            return;
        }
        if let Some(old) = self.order.remove(id) {
            self.used -= old;
        }
        if self.policy == Policy::TinyLfu && self.used + size > self.capacity {
            // moka's rule: the newcomer must be more popular than all it would evict.
            if let Some(sketch) = &self.sketch {
                let candidate = sketch.estimate(id);
                let mut needed = self.used + size - self.capacity;
                let mut victims_frequency = 0u32;
                let mut cursor = self.order.tail;
                while needed > 0 && cursor != NIL {
                    let node = &self.order.nodes[cursor as usize];
                    victims_frequency = victims_frequency.saturating_add(sketch.estimate(node.id));
                    needed = needed.saturating_sub(node.size);
                    cursor = node.prev;
                }
                if candidate <= victims_frequency {
                    return;
                }
            }
        }
        while self.used + size > self.capacity {
            match self.order.pop_last() {
                Some((_, evicted)) => self.used -= evicted,
                None => break,
            }
        }
        self.order.insert(id, size);
        self.used += size;
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
        if memory_tier.lookup(request.id) {
            if counted {
                counts.hits += 1;
                counts.hit_bytes += size;
            }
            continue;
        }
        if let Some(disk_tier) = &mut disk_tier {
            if disk_tier.lookup(request.id) {
                if counted {
                    counts.hits += 1;
                    counts.hit_bytes += size;
                    counts.disk_hits += 1;
                }
                memory_tier.admit(request.id, size);
                continue;
            }
            disk_tier.admit(request.id, size);
        }
        memory_tier.admit(request.id, size);
    }
    progress((requests.len() % 65_536) as u64);
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::trace::TraceRequest;

    fn trace(ids: &[u64]) -> Vec<TraceRequest> {
        ids.iter()
            .map(|&id| TraceRequest {
                time: 0,
                id,
                size: 1,
            })
            .collect()
    }

    /// Hand-computed: capacity 2, A B A C B A → miss miss hit miss(evicts B) miss(evicts A)
    /// miss(evicts C) → 1 hit of 6.
    #[test]
    fn lru_matches_a_hand_computed_trace() {
        let counts = replay(
            &trace(&[1, 2, 1, 3, 2, 1]),
            Policy::Lru,
            2,
            None,
            0,
            8,
            &|_| {},
        );
        assert_eq!((counts.requests, counts.hits), (6, 1));
        // Capacity 3 keeps all three: 3 hits.
        let counts = replay(
            &trace(&[1, 2, 1, 3, 2, 1]),
            Policy::Lru,
            3,
            None,
            0,
            8,
            &|_| {},
        );
        assert_eq!(counts.hits, 3);
        // Warm-up excludes the first requests from the counts.
        let counts = replay(
            &trace(&[1, 2, 1, 3, 2, 1]),
            Policy::Lru,
            3,
            None,
            3,
            8,
            &|_| {},
        );
        assert_eq!((counts.requests, counts.hits), (3, 2));
    }

    #[test]
    fn sizes_are_weighed_and_oversized_objects_never_admitted() {
        let requests = [
            TraceRequest {
                time: 0,
                id: 1,
                size: 6,
            },
            TraceRequest {
                time: 0,
                id: 2,
                size: 6,
            },
            TraceRequest {
                time: 0,
                id: 1,
                size: 6,
            },
            TraceRequest {
                time: 0,
                id: 3,
                size: 50,
            },
            TraceRequest {
                time: 0,
                id: 3,
                size: 50,
            },
        ];
        let counts = replay(&requests, Policy::Lru, 10, None, 0, 8, &|_| {});
        assert_eq!(counts.hits, 0, "2 evicted 1; 3 never fits");
        assert_eq!(counts.bytes, 118);
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

    #[test]
    fn tinylfu_keeps_a_popular_object_through_a_scan() {
        let mut ids = vec![1, 1, 1, 1];
        ids.extend(100..200);
        ids.push(1);
        let lru = replay(&trace(&ids), Policy::Lru, 4, None, 0, 256, &|_| {});
        let tinylfu = replay(&trace(&ids), Policy::TinyLfu, 4, None, 0, 256, &|_| {});
        assert_eq!(lru.hits, 3, "the scan flushed it");
        assert_eq!(tinylfu.hits, 4, "one-hit scan objects were refused");
    }
}
