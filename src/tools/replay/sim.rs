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
    /// Trace time from which the stored copy is stale.
    expires: u32,
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

    /// Moves `id` to the most recent end; when it expires, if present.
    fn touch(&mut self, id: u64) -> Option<u32> {
        let slot = *self.index.get(&id)?;
        self.unlink(slot);
        self.push_front(slot);
        Some(self.nodes[slot as usize].expires)
    }

    fn contains(&self, id: u64) -> bool {
        self.index.contains_key(&id)
    }

    fn insert(&mut self, id: u64, size: u64, expires: u32) {
        let node = Node {
            id,
            size,
            expires,
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

/// A count-min sketch of 4-bit counters packed 16 to a word, four counters per object,
/// halved every ten increments per slot, sized and enabled as moka does it: only once the
/// cache is half full, for about as many objects as it then holds.
struct FrequencySketch {
    table: Vec<u64>,
    mask: u64,
    size: u32,
    sample_size: u32,
}

const NIBBLES_LOW_BITS: u64 = 0x1111_1111_1111_1111;
const NIBBLES_RESET: u64 = 0x7777_7777_7777_7777;

impl FrequencySketch {
    fn new(capacity: u64) -> FrequencySketch {
        let capacity = u32::try_from(capacity)
            .unwrap_or(u32::MAX)
            .clamp(128, 1 << 30);
        let words = capacity.next_power_of_two();
        FrequencySketch {
            table: vec![0; words as usize],
            mask: u64::from(words - 1),
            size: 0,
            sample_size: capacity.saturating_mul(10),
        }
    }

    fn spread(id: u64) -> u64 {
        let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Word index and nibble shift of counter `depth` of `hash`.
    fn slot(&self, hash: u64, depth: u64) -> (usize, u64) {
        let mut x = hash.wrapping_add(depth.wrapping_mul(0xc2b2_ae3d_27d4_eb4f));
        x = x.wrapping_mul(0x1656_67b1_9e37_79f9 | 1);
        x ^= x >> 32;
        let start = (hash & 3) << 2;
        ((x & self.mask) as usize, (start + depth) << 2)
    }

    fn estimate(&self, id: u64) -> u32 {
        let hash = Self::spread(id);
        (0..4)
            .map(|depth| {
                let (word, shift) = self.slot(hash, depth);
                ((self.table[word] >> shift) & 0xf) as u32
            })
            .min()
            .unwrap_or(0)
    }

    fn increment(&mut self, id: u64) {
        let hash = Self::spread(id);
        let mut added = false;
        for depth in 0..4 {
            let (word, shift) = self.slot(hash, depth);
            if (self.table[word] >> shift) & 0xf != 0xf {
                self.table[word] += 1 << shift;
                added = true;
            }
        }
        if added {
            self.size += 1;
            if self.size >= self.sample_size {
                let mut odd = 0;
                for word in &mut self.table {
                    odd += (*word & NIBBLES_LOW_BITS).count_ones();
                    *word = (*word >> 1) & NIBBLES_RESET;
                }
                self.size = (self.size >> 1).saturating_sub(odd >> 2);
            }
        }
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
    pub fn new(policy: Policy, capacity: u64, _expected_objects: usize) -> SimTier {
        SimTier {
            policy,
            capacity,
            used: 0,
            order: Recency::new(),
            // As moka: no sketch until the tier is half full.
            sketch: None,
        }
    }

    /// A request for `id` at trace time `now`: true on a hit (the object becomes most
    /// recent). A stored copy that has expired is dropped and the request is a miss.
    pub fn lookup(&mut self, id: u64, now: u32) -> bool {
        if let Some(sketch) = &mut self.sketch {
            sketch.increment(id);
        }
        match self.order.touch(id) {
            Some(expires) if expires > now => true,
            Some(_) => {
                if let Some(size) = self.order.remove(id) {
                    self.used -= size;
                }
                false
            }
            None => false,
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.order.contains(id)
    }

    /// Stores `id` after a miss, if the policy admits it. TinyLFU follows moka's rule:
    /// with room, admit; otherwise take victims from the least recent end until they weigh
    /// at least the newcomer (stopping once they are more popular than it), and admit only
    /// if the newcomer is more popular than all of them together.
    pub fn admit(&mut self, id: u64, size: u64, now: u32, ttl: u32) {
        if size > self.capacity || ttl == 0 {
            return;
        }
        let expires = now.saturating_add(ttl);
        if let Some(old) = self.order.remove(id) {
            self.used -= old;
        }
        if self.policy == Policy::TinyLfu && self.used + size > self.capacity {
            let candidate = self.sketch.as_ref().map_or(0, |s| s.estimate(id));
            let (mut weight, mut frequency, mut victims) = (0u64, 0u32, 0usize);
            let mut cursor = self.order.tail;
            while weight < size && frequency <= candidate && cursor != NIL {
                let node = &self.order.nodes[cursor as usize];
                weight += node.size;
                frequency += self.sketch.as_ref().map_or(0, |s| s.estimate(node.id));
                victims += 1;
                cursor = node.prev;
            }
            if weight < size || candidate <= frequency {
                return;
            }
            for _ in 0..victims {
                if let Some((_, evicted)) = self.order.pop_last() {
                    self.used -= evicted;
                }
            }
        }
        while self.used + size > self.capacity {
            match self.order.pop_last() {
                Some((_, evicted)) => self.used -= evicted,
                None => break,
            }
        }
        self.order.insert(id, size, expires);
        self.used += size;
        if self.policy == Policy::TinyLfu && self.sketch.is_none() && self.used >= self.capacity / 2
        {
            let entries = self.order.index.len() as u64;
            let scaled = (entries as f64 * (self.used as f64 / self.capacity.max(1) as f64)) as u64;
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
                let left = disk_tier.order.touch(request.id).map_or(ttl, |e| e - now);
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
