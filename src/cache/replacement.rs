//! Which objects the memory tier keeps: window TinyLFU by bytes, as one deterministic
//! structure that the live tier runs (moka stores the objects, this decides which leave) and
//! `outpost replay` runs unchanged, so the replayed hit ratios are the live tier's.
//!
//! New objects enter a small LRU window (1% of the bytes). What leaves the window is a
//! candidate for the main space, a segmented LRU (probation, and protected for objects
//! asked for again there, 80%). When main is full the candidate meets main's coldest
//! object, one at a time: the one a frequency sketch has seen less often leaves, each count
//! weighed by the object's size to a small power ([`SIZE_EXPONENT`], the weight capped at
//! [`MAX_SIZE_WEIGHT`]). So a scan of one-hit objects passes through the window and loses
//! every contest, while a popular large object beats cold small ones one by one until it
//! has its room (moka's own TinyLFU compares a newcomer with the summed popularity of
//! everything it would evict, and a large object can then never get in among small ones).
//! Ties go to the resident object, and sizes within [`SIZE_TIE_RATIO`] of each other are
//! one size, so a few bytes do not decide between two objects seen as often.
//!
//! Why the size weight: keeping an object costs its bytes, and what it saves is one request
//! per use. Counts alone spend room on large objects no more popular than the several small
//! ones they displace (the object miss ratio suffers); counts per byte would starve large
//! objects (the byte miss ratio suffers). A count times size^-0.3 sits between: on the
//! issue 17 trace (Zipf 0.9, lognormal sizes, 140 MB) the miss ratio goes from 0.3034 to
//! 0.2935 and the byte miss ratio from 0.3200 to 0.3234 (libCacheSim's W-TinyLFU: 0.3007 /
//! 0.3236). The cap keeps any object admissible: whatever the sizes, a candidate seen
//! [`MAX_SIZE_WEIGHT`] times as often as the victim wins.
//!
//! Not thread-safe by itself: the live tier holds it behind a mutex.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// Hashes keys that are already well spread (ids, digests) by their last eight bytes with
/// one multiply-xorshift round: SipHash would cost more than the policy step.
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

pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A key the policy can count: copyable, hashable, and spread over 64 bits for the sketch.
pub trait PolicyKey: Copy + Eq + Hash {
    fn fingerprint(&self) -> u64;
}

impl PolicyKey for u64 {
    fn fingerprint(&self) -> u64 {
        *self
    }
}

const NIL: u32 = u32::MAX;

struct Node<K> {
    id: K,
    size: u64,
    /// Trace time from which the copy is stale (replay only; the live tier keeps its own).
    expires: u32,
    prev: u32,
    next: u32,
}

/// Recency order over an arena: O(1) touch, insert and pop of the least recent; also the
/// bytes it holds.
pub struct Recency<K> {
    nodes: Vec<Node<K>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    index: IdMap<K, u32>,
    pub used: u64,
}

impl<K: PolicyKey> Recency<K> {
    pub fn new() -> Recency<K> {
        Recency {
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            index: IdMap::default(),
            used: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
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
    pub fn touch(&mut self, id: &K) -> Option<u32> {
        let slot = *self.index.get(id)?;
        self.unlink(slot);
        self.push_front(slot);
        Some(self.nodes[slot as usize].expires)
    }

    pub fn contains(&self, id: &K) -> bool {
        self.index.contains_key(id)
    }

    /// Inserts `id` as the most recent (it must not be present).
    pub fn insert(&mut self, id: K, size: u64, expires: u32) {
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
        self.used += size;
    }

    /// The most recent, without removing it: key and size.
    pub fn peek_first(&self) -> Option<(K, u64)> {
        (self.head != NIL).then(|| {
            let node = &self.nodes[self.head as usize];
            (node.id, node.size)
        })
    }

    /// The least recent, without removing it.
    pub fn peek_last(&self) -> Option<(K, u64)> {
        (self.tail != NIL).then(|| {
            let node = &self.nodes[self.tail as usize];
            (node.id, node.size)
        })
    }

    /// From the least recent on: key and size.
    pub fn least_recent(&self) -> impl Iterator<Item = (K, u64)> + '_ {
        let mut cursor = self.tail;
        std::iter::from_fn(move || {
            if cursor == NIL {
                return None;
            }
            let node = &self.nodes[cursor as usize];
            cursor = node.prev;
            Some((node.id, node.size))
        })
    }

    /// Removes the least recent: its key, size and expiry.
    pub fn pop_last(&mut self) -> Option<(K, u64, u32)> {
        let slot = self.tail;
        if slot == NIL {
            return None;
        }
        self.unlink(slot);
        self.free.push(slot);
        let node = &self.nodes[slot as usize];
        self.index.remove(&node.id);
        self.used -= node.size;
        Some((node.id, node.size, node.expires))
    }

    /// Removes `id`: its size and expiry, if present.
    pub fn remove(&mut self, id: &K) -> Option<(u64, u32)> {
        let slot = self.index.remove(id)?;
        self.unlink(slot);
        self.free.push(slot);
        let node = &self.nodes[slot as usize];
        self.used -= node.size;
        Some((node.size, node.expires))
    }
}

impl<K: PolicyKey> Default for Recency<K> {
    fn default() -> Self {
        Recency::new()
    }
}

/// A count-min sketch of 4-bit counters packed 16 to a word, four counters per object,
/// halved every ten increments per counted object, so popularity fades. The policy's own
/// sketch increments conservatively (only the counters at the object's minimum move; moka's,
/// which `outpost replay` models with [`FrequencySketch::new`], moves all four): a cold object that shares
/// counters with others then reads as seen once, not twice, and a newcomer does not have to
/// beat a victim's borrowed counts (a 100x larger hot object got in on its 8th request
/// instead of its 4th with plain increments).
///
/// The policy's sketch also has a doorkeeper (TinyLFU, Einziger et al., §3.4.2): an
/// object's first request since the last halving only marks it there, and the counters
/// hear of it from its second on. Without it, a stream of objects asked for once each (a
/// crawl of large files, unique downloads) filled the counters between halvings, since a
/// tier of large objects holds few and its sketch is small: most new keys then read as
/// seen twice and won their contests against residents seen once. In a 128 MiB tier,
/// unique 1 MiB misses were stored, only to be evicted, about 40% of the time, against 2%
/// with the doorkeeper.
pub struct FrequencySketch {
    table: Vec<u64>,
    mask: u64,
    size: u32,
    sample_size: u32,
    /// The number of objects it was sized for.
    capacity: u32,
    /// Whether increments move only the counters at the minimum.
    conservative: bool,
    /// The conservative sketch's doorkeeper: a Bloom filter of the objects counted once
    /// since the last halving (cleared with it). The first request for an object sets its
    /// bits here and moves no counter; only later ones reach the counters. Empty for the
    /// plain sketch.
    doorkeeper: Vec<u64>,
}

const NIBBLES_LOW_BITS: u64 = 0x1111_1111_1111_1111;
const NIBBLES_RESET: u64 = 0x7777_7777_7777_7777;

impl FrequencySketch {
    pub fn new(capacity: u64) -> FrequencySketch {
        let capacity = u32::try_from(capacity)
            .unwrap_or(u32::MAX)
            .clamp(128, 1 << 30);
        let words = capacity.next_power_of_two();
        FrequencySketch {
            table: vec![0; words as usize],
            mask: u64::from(words - 1),
            size: 0,
            sample_size: capacity.saturating_mul(10),
            capacity,
            conservative: false,
            doorkeeper: Vec::new(),
        }
    }

    /// A sketch whose increments move only the counters at the object's minimum.
    pub fn conservative(capacity: u64) -> FrequencySketch {
        let sketch = FrequencySketch::new(capacity);
        // A halving comes after `sample_size` counted requests, so the doorkeeper holds at
        // most that many objects: 8 bits each and three probes keep false positives near 3%.
        let words = (u64::from(sketch.sample_size) * DOORKEEPER_BITS).div_ceil(64);
        FrequencySketch {
            conservative: true,
            doorkeeper: vec![0; usize::try_from(words).unwrap_or(usize::MAX)],
            ..sketch
        }
    }

    pub fn capacity(&self) -> u64 {
        u64::from(self.capacity)
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

    /// The doorkeeper's word and bit of each of `hash`'s three probes (double hashing),
    /// each mapped onto the filter by a multiply and shift, so it need not be a power of two
    /// long.
    fn doorkeeper_probes(&self, hash: u64) -> [(usize, u64); 3] {
        let bits = self.doorkeeper.len() as u128 * 64;
        let step = hash.rotate_left(32) | 1;
        [0u64, 1, 2].map(|probe| {
            let mixed = hash.wrapping_add(probe.wrapping_mul(step));
            let bit = ((u128::from(mixed) * bits) >> 64) as u64;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn doorkeeper_has(&self, hash: u64) -> bool {
        !self.doorkeeper.is_empty()
            && self
                .doorkeeper_probes(hash)
                .iter()
                .all(|(word, bit)| self.doorkeeper[*word] & bit != 0)
    }

    pub fn estimate(&self, id: u64) -> u32 {
        let hash = Self::spread(id);
        u32::from(self.doorkeeper_has(hash))
            + (0..4)
                .map(|depth| {
                    let (word, shift) = self.slot(hash, depth);
                    ((self.table[word] >> shift) & 0xf) as u32
                })
                .min()
                .unwrap_or(0)
    }

    pub fn increment(&mut self, id: u64) {
        let hash = Self::spread(id);
        let slots = [0, 1, 2, 3].map(|depth| self.slot(hash, depth));
        let counts = slots.map(|(word, shift)| (self.table[word] >> shift) & 0xf);
        // Conservative: only the counters at the object's minimum move.
        let least = self
            .conservative
            .then(|| counts.iter().copied().min().unwrap_or(0));
        // An object the counters know already is past the doorkeeper (counting it there
        // or in the counters reads the same), so a popular object's request, most of them,
        // does not probe it.
        if least == Some(0) && !self.doorkeeper.is_empty() && !self.doorkeeper_has(hash) {
            for (word, bit) in self.doorkeeper_probes(hash) {
                self.doorkeeper[word] |= bit;
            }
            self.count_sample();
            return;
        }
        let mut added = false;
        for ((word, shift), count) in slots.into_iter().zip(counts) {
            // Read again: the check must hold for the counter as it is now.
            let current = (self.table[word] >> shift) & 0xf;
            if least.is_none_or(|least| count == least) && current != 0xf {
                self.table[word] += 1 << shift;
                added = true;
            }
        }
        if added {
            self.count_sample();
        }
    }

    /// Counts one request towards the next halving, and halves every counter (and empties
    /// the doorkeeper) when it is due.
    fn count_sample(&mut self) {
        self.size += 1;
        if self.size >= self.sample_size {
            let mut odd = 0;
            for word in &mut self.table {
                odd += (*word & NIBBLES_LOW_BITS).count_ones();
                *word = (*word >> 1) & NIBBLES_RESET;
            }
            self.doorkeeper.fill(0);
            self.size = (self.size >> 1).saturating_sub(odd >> 2);
        }
    }
}

/// The window's share of the bytes.
const WINDOW_SHARE: f64 = 0.01;
/// The protected segment's share of main's bytes.
const PROTECTED_SHARE: f64 = 0.8;
/// A newcomer is kept in the window only if the window holds this many objects its size
/// (or the free room takes it). One larger is pushed out of the window by the next newcomer
/// like it, into a contest it loses: a stream of unique objects that size was written into
/// the tier one after the other only to be evicted, for a window that gives none of them
/// time to be asked for again (unique 1 MiB misses in the default 194 MiB tier, whose
/// window is 1.9 MiB). On the issue 17 trace the hit ratios move by at most 0.15 points.
const NEWCOMERS_PER_WINDOW: u64 = 2;
/// Objects the sketch is first sized for; it grows with the number held.
const INITIAL_SKETCH: u64 = 1024;
/// The doorkeeper's bits per counted request between halvings.
const DOORKEEPER_BITS: u64 = 8;
/// A contest weighs each count by size^-SIZE_EXPONENT (see the module doc).
pub const SIZE_EXPONENT: f64 = 0.3;
/// The most the size weight can favour one side: a candidate seen this many times as often
/// as its victim always wins, however large it is.
pub const MAX_SIZE_WEIGHT: f64 = 3.0;

/// Sizes within this factor of each other weigh the same in a contest.
///
/// The size weight chooses between objects of clearly different cost. Between two of
/// nearly one size it would let a few bytes of header decide: a newcomer seen once, a
/// little smaller than a resident seen once, won, so a stream of one-hit objects of one
/// size (unique 1 MiB downloads, say) replaced each other in turn, every body written into
/// the tier only to be evicted, where TinyLFU keeps the resident unless the newcomer was
/// seen more often. On the issue 17 trace the hit ratios move by at most 0.15 points either
/// way (1.1x to 2x all did; this one moved them least).
pub const SIZE_TIE_RATIO: f64 = 1.25;

/// Whether a candidate seen `candidate_count` times, weighing `candidate_size` bytes,
/// displaces a resident seen `victim_count` times weighing `victim_size` (ties keep the
/// resident; sizes within [`SIZE_TIE_RATIO`] of each other are the same size).
fn candidate_wins(
    candidate_count: u32,
    candidate_size: u64,
    victim_count: u32,
    victim_size: u64,
) -> bool {
    let ratio = candidate_size.max(1) as f64 / victim_size.max(1) as f64;
    if (1.0 / SIZE_TIE_RATIO..=SIZE_TIE_RATIO).contains(&ratio) {
        return candidate_count > victim_count;
    }
    let weight = ratio
        .powf(SIZE_EXPONENT)
        .clamp(1.0 / MAX_SIZE_WEIGHT, MAX_SIZE_WEIGHT);
    f64::from(candidate_count) > f64::from(victim_count).max(DECAYED_COUNT) * weight
}

/// What a victim the sketch reads as never asked for counts in a size-weighed contest.
///
/// Every object held was asked for; one that reads as nothing was asked for once before
/// the sketch's last halving, which took its count to zero (or out of the doorkeeper).
/// Counted as nothing, it lost to any larger candidate seen once, whatever the sizes: just
/// after a halving, a stream of unique 1 MiB misses (or 8 MiB downloads) displaced
/// thousands of small objects seen once a little earlier, at 300 of them per body, in
/// memory files counted as soon as stored while the allocator kept the small objects'
/// heap (a 64 MiB tier's process went from 1.15x to 1.26x of the capacity). Counted as
/// half a request, what a halving leaves of one, a candidate seen once still displaces
/// such objects up to about ten times smaller than itself (2^(1/SIZE_EXPONENT)), and one
/// seen twice any of them.
const DECAYED_COUNT: f64 = 0.5;

/// Bytes the tier has for newcomers, objects asked for only once and not held: what it
/// keeps of them without displacing anything held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewcomerRoom {
    /// What newcomers may take together: the free room or the admission window they
    /// enter, whichever is larger.
    pub together: u64,
    /// The largest newcomer kept: the free room, or the share of the window that leaves
    /// room for another like it (`NEWCOMERS_PER_WINDOW`), whichever is larger.
    pub largest: u64,
}

/// Window TinyLFU over byte-weighted objects (see the module doc).
pub struct WindowTinyLfu<K> {
    capacity: u64,
    window_capacity: u64,
    protected_capacity: u64,
    window: Recency<K>,
    probation: Recency<K>,
    protected: Recency<K>,
    sketch: FrequencySketch,
}

impl<K: PolicyKey> WindowTinyLfu<K> {
    pub fn new(capacity: u64) -> WindowTinyLfu<K> {
        let mut policy = WindowTinyLfu {
            capacity,
            window_capacity: 0,
            protected_capacity: 0,
            window: Recency::new(),
            probation: Recency::new(),
            protected: Recency::new(),
            sketch: FrequencySketch::conservative(INITIAL_SKETCH),
        };
        policy.set_capacity(capacity, &mut Vec::new());
        policy
    }

    /// Bytes it may hold.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Holds at most `capacity` bytes from now on, its segments keeping their shares; what
    /// no longer fits leaves as it would for a newcomer (the window's overflow contests
    /// probation's least recent), pushed onto `evicted`.
    pub fn set_capacity(&mut self, capacity: u64, evicted: &mut Vec<K>) {
        let window_capacity = (capacity as f64 * WINDOW_SHARE) as u64;
        self.capacity = capacity;
        self.window_capacity = window_capacity;
        self.protected_capacity = ((capacity - window_capacity) as f64 * PROTECTED_SHARE) as u64;
        self.demote_protected_overflow();
        self.make_room(evicted);
    }

    /// Moves protected's least recent objects to probation while protected is over its share.
    fn demote_protected_overflow(&mut self) {
        while self.protected.used > self.protected_capacity {
            match self.protected.pop_last() {
                Some((demoted, size, expires)) => self.probation.insert(demoted, size, expires),
                None => break,
            }
        }
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.window.used + self.probation.used + self.protected.used
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        self.window.len() + self.probation.len() + self.protected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: &K) -> bool {
        self.window.contains(id) || self.probation.contains(id) || self.protected.contains(id)
    }

    /// Times `id` has been asked for, as the sketch estimates it (never less).
    pub fn frequency(&self, id: &K) -> u32 {
        self.sketch.estimate(id.fingerprint())
    }

    /// The room newcomers (objects asked for only once) have in the tier; `None` when a
    /// newcomer of `size` (when known) would win its contest against main's least recent,
    /// so its room is not bounded by the window (see [`NewcomerRoom`]).
    ///
    /// Past the window they must win a contest against main's least recent, which one
    /// request wins only against a much larger victim. So the window and the free room
    /// together are no room: a newcomer larger than the window overflows it at once, and
    /// unless the free room takes it, it is the first candidate to contest main's least
    /// recent, and loses. Let in, it was stored only to be evicted in the same step, after
    /// pushing the window's objects out into contests of their own; in a tier full of 1 MiB
    /// bodies, which leave well under 1 MiB free, the live tier wrote nearly every unique
    /// 1 MiB miss into a memory file for nothing.
    pub fn newcomer_room(&self, size: Option<u64>) -> Option<NewcomerRoom> {
        let victim = self
            .probation
            .peek_last()
            .or_else(|| self.protected.peek_last());
        if let (Some(size), Some((victim, victim_size))) = (size, victim) {
            let victim_count = self.sketch.estimate(victim.fingerprint());
            if candidate_wins(1, size, victim_count, victim_size) {
                return None;
            }
        }
        let free = self.capacity.saturating_sub(self.used());
        Some(NewcomerRoom {
            together: self.window_capacity.max(free),
            largest: (self.window_capacity / NEWCOMERS_PER_WINDOW).max(free),
        })
    }

    /// Whether `id`, weighing `size`, is a newcomer (asked for only this once, not held)
    /// larger than the largest newcomer the tier keeps ([`Self::newcomer_room`]): one that
    /// would lose its contest, or leave the window with the next newcomer like it. It is
    /// declined on sight. Let in, it would first push the window's objects out into
    /// contests of their own, and a scan of large one-hit objects would drain the window of
    /// what it holds for nothing.
    pub fn declines_newcomer(&self, id: &K, size: u64) -> bool {
        !self.contains(id)
            && self.frequency(id) <= 1
            && self
                .newcomer_room(Some(size))
                .is_some_and(|room| size > room.largest)
    }

    /// Whether `id`, weighing `size`, not held and larger than the window (so that it
    /// contests main's least recent objects as soon as it is stored), would lose one of the
    /// contests that make its room, as `make_room` would play them: against
    /// probation's objects from the least recent, then the window's (which it pushes into
    /// probation behind them), until they have freed enough; protected is never reached
    /// while it is in probation, so running out of those is losing too. Let in, it would
    /// evict every object it beat before the one it loses to, and then leave itself: the
    /// tier would lose those objects for nothing, and the live tier would have written its
    /// body into memory only to drop it.
    pub fn loses_its_way_in(&self, id: &K, size: u64) -> bool {
        if size <= self.window_capacity || self.contains(id) {
            return false;
        }
        let mut needed = (self.used() + size).saturating_sub(self.capacity);
        if needed == 0 {
            return false;
        }
        let count = self.frequency(id);
        let victims = self
            .probation
            .least_recent()
            .chain(self.window.least_recent());
        for (victim, victim_size) in victims {
            if !candidate_wins(count, size, self.frequency(&victim), victim_size) {
                return true;
            }
            needed = needed.saturating_sub(victim_size);
            if needed == 0 {
                return false;
            }
        }
        true
    }

    /// A request for `id`, found or not: counted, and a held object becomes most recent
    /// (from probation it moves to protected). Its expiry if held.
    pub fn access(&mut self, id: &K) -> Option<u32> {
        self.sketch.increment(id.fingerprint());
        if let Some(expires) = self.window.touch(id) {
            return Some(expires);
        }
        if let Some(expires) = self.protected.touch(id) {
            return Some(expires);
        }
        let (size, expires) = self.probation.remove(id)?;
        self.protected.insert(*id, size, expires);
        self.demote_protected_overflow();
        Some(expires)
    }

    /// Stores `id` weighing `size` (again: a held object keeps its place with the new
    /// size), then makes room; every object that leaves, `id` itself perhaps, is pushed
    /// onto `evicted`. An object larger than the whole capacity is not held.
    pub fn insert(&mut self, id: K, size: u64, expires: u32, evicted: &mut Vec<K>) {
        if size > self.capacity {
            if self.remove(&id) {
                evicted.push(id);
            }
            return;
        }
        if self.declines_newcomer(&id, size) || self.loses_its_way_in(&id, size) {
            evicted.push(id);
            return;
        }
        let segment = if self.window.remove(&id).is_some() {
            &mut self.window
        } else if self.probation.remove(&id).is_some() {
            &mut self.probation
        } else if self.protected.remove(&id).is_some() {
            &mut self.protected
        } else {
            &mut self.window
        };
        segment.insert(id, size, expires);
        self.grow_sketch();
        self.make_room(evicted);
    }

    /// Forgets `id`; whether it was held.
    pub fn remove(&mut self, id: &K) -> bool {
        self.window.remove(id).is_some()
            || self.probation.remove(id).is_some()
            || self.protected.remove(id).is_some()
    }

    /// The sketch counts about as many objects as are held, so it is re-made larger as
    /// more are. The held objects keep their counts across (a count-min sketch cannot be
    /// rehashed, but what it says of each held key can be counted again); what it knew of
    /// objects not held is lost. Without this, a scan that grows the tier's object count
    /// would wipe the hot set's popularity just when it needs it.
    fn grow_sketch(&mut self) {
        let held = self.len() as u64;
        if held <= self.sketch.capacity() {
            return;
        }
        let mut grown = FrequencySketch::conservative(held.saturating_mul(2));
        for segment in [&self.window, &self.probation, &self.protected] {
            for (id, _) in segment.least_recent() {
                let fingerprint = id.fingerprint();
                for _ in 0..self.sketch.estimate(fingerprint) {
                    grown.increment(fingerprint);
                }
            }
        }
        self.sketch = grown;
    }

    /// Moves what overflows the window into main, then evicts the losers of candidate
    /// against victim contests until everything fits.
    fn make_room(&mut self, evicted: &mut Vec<K>) {
        let mut candidates = 0usize;
        while self.window.used > self.window_capacity {
            let Some((id, size, expires)) = self.window.pop_last() else {
                break;
            };
            self.probation.insert(id, size, expires);
            candidates += 1;
        }
        while self.used() > self.capacity {
            // The candidates are the most recent of probation; the victim its least recent.
            let candidate = self.probation.peek_first().filter(|_| candidates > 0);
            let victim = self
                .probation
                .peek_last()
                .or_else(|| self.protected.peek_last())
                .or_else(|| self.window.peek_last());
            let Some((victim, victim_size)) = victim else {
                break;
            };
            let loser = match candidate {
                Some((candidate, candidate_size)) if candidate != victim => {
                    let candidate_count = self.sketch.estimate(candidate.fingerprint());
                    let victim_count = self.sketch.estimate(victim.fingerprint());
                    if candidate_wins(candidate_count, candidate_size, victim_count, victim_size) {
                        victim
                    } else {
                        candidates -= 1;
                        candidate
                    }
                }
                Some((candidate, _)) => {
                    candidates -= 1;
                    candidate
                }
                None => victim,
            };
            self.remove(&loser);
            evicted.push(loser);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(capacity: u64) -> WindowTinyLfu<u64> {
        WindowTinyLfu::new(capacity)
    }

    /// Requests `id` (weighing `size`); stores it on a miss. Whether it was a hit.
    fn request(tier: &mut WindowTinyLfu<u64>, id: u64, size: u64) -> bool {
        if tier.access(&id).is_some() {
            return true;
        }
        tier.insert(id, size, u32::MAX, &mut Vec::new());
        false
    }

    /// A large object that would beat main's coldest objects but lose to warmer ones
    /// before it has its room is not stored: stored, it would have evicted the cold ones
    /// it beat and then itself, and the tier would hold less for nothing.
    #[test]
    fn a_large_object_that_would_lose_on_its_way_in_evicts_nothing() {
        let mut t = tier(100_000);
        // Main's least recent: 50 objects seen once; behind them 50 seen six times.
        for id in 0..50 {
            request(&mut t, id, 1000);
        }
        for id in 50..100 {
            for _ in 0..6 {
                request(&mut t, id, 1000);
            }
        }
        assert_eq!(t.len(), 100);
        let large = 1_000;
        for _ in 0..4 {
            t.access(&large);
        }
        // Seen four times, 60 KB: it beats the objects seen once (4 > 1 x the size weight
        // of 3), then needs ten more of those seen six times, and loses to the first.
        assert!(t.loses_its_way_in(&large, 60_000));
        let mut evicted = Vec::new();
        t.insert(large, 60_000, u32::MAX, &mut evicted);
        assert_eq!(evicted, vec![large]);
        assert_eq!(t.len(), 100, "nothing was evicted for it");
        assert!((0..50).all(|id| t.contains(&id)));
        // With room to win, it is stored.
        let mut roomy = tier(100_000);
        for id in 0..100 {
            request(&mut roomy, id, 1000);
        }
        for _ in 0..4 {
            roomy.access(&large);
        }
        assert!(!roomy.loses_its_way_in(&large, 60_000));
        roomy.insert(large, 60_000, u32::MAX, &mut evicted);
        assert!(roomy.contains(&large));
    }

    /// What `loses_its_way_in` foresees is what storing does: over a long mixed stream of
    /// small and large objects of skewed popularity, every large object it lets through
    /// is held once stored (make_room never evicts it in the same step), and every one it
    /// refuses leaves the tier as it was.
    #[test]
    fn the_foreseen_contests_are_the_ones_storing_plays() {
        let mut t = tier(2_000_000);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut admitted, mut refused) = (0, 0);
        for _ in 0..200_000 {
            let roll = next();
            // Small objects of skewed popularity, and now and then a large one.
            let (id, size) = if roll % 50 == 0 {
                (
                    1_000_000 + (roll >> 8) % 200,
                    30_000 + (roll >> 16) % 700_000,
                )
            } else {
                let rank = (roll >> 8) % 1000;
                (rank * rank % 20_000, 1000 + rank)
            };
            if t.access(&id).is_some() {
                continue;
            }
            let foreseen_loss = size > t.window_capacity
                && t.used() + size > t.capacity
                && t.loses_its_way_in(&id, size);
            let (held_before, used_before) = (t.len(), t.used());
            let mut evicted = Vec::new();
            t.insert(id, size, u32::MAX, &mut evicted);
            if foreseen_loss {
                refused += 1;
                assert_eq!(evicted, vec![id]);
                assert_eq!((t.len(), t.used()), (held_before, used_before));
            } else if size > t.window_capacity && used_before + size > t.capacity {
                admitted += 1;
                assert!(t.contains(&id), "{id} of {size} B foreseen to win, lost");
            }
        }
        assert!(
            admitted > 50 && refused > 50,
            "{admitted} admitted, {refused} refused"
        );
    }

    /// A scan of one-hit objects twice the tier's size leaves the hot set in place.
    #[test]
    fn a_scan_of_one_hit_objects_leaves_the_hot_set() {
        let mut t = tier(1_000_000);
        for round in 0..20 {
            for hot in 0..100u64 {
                request(&mut t, hot, 5_000);
            }
            let _ = round;
        }
        for cold in 1_000..1_400u64 {
            request(&mut t, cold, 5_000);
        }
        let kept = (0..100u64).filter(|hot| t.contains(hot)).count();
        assert_eq!(kept, 100, "the whole hot set survives the scan");
        assert!(t.used() <= 1_000_000);
    }

    /// Objects asked for once before the sketch's last halving read as never asked for,
    /// but still weigh as half a request against a larger candidate: a one-hit object a
    /// hundred times their size is declined, rather than displacing a hundred of them,
    /// while one asked for a few times gets in.
    #[test]
    fn objects_seen_before_a_halving_still_weigh_against_far_larger_newcomers() {
        let mut t = tier(1_000_000);
        for small in 0..1_100u64 {
            request(&mut t, small, 1_000);
        }
        // Unique objects asked for and never stored, until the sketch has halved.
        for passing in 0..40_000u64 {
            t.access(&(1_000_000 + passing));
        }
        let held: Vec<u64> = (0..1_100u64).filter(|id| t.contains(id)).collect();
        let decayed = held.iter().filter(|id| t.frequency(id) == 0).count();
        assert!(
            decayed * 10 > held.len() * 9,
            "{decayed} of {} read as never asked for",
            held.len()
        );
        let large = 5_000_000u64;
        t.access(&large);
        let mut evicted = Vec::new();
        t.insert(large, 100_000, u32::MAX, &mut evicted);
        assert_eq!(evicted, [large], "declined, nothing else moved");
        assert_eq!(
            (0..1_100u64).filter(|id| t.contains(id)).count(),
            held.len()
        );
        for _ in 0..3 {
            t.access(&large);
        }
        evicted.clear();
        t.insert(large, 100_000, u32::MAX, &mut evicted);
        assert!(t.contains(&large), "asked for four times, it wins its room");
        assert!(t.used() <= 1_000_000);
    }

    /// A large object asked for again and again gets in among small objects that were
    /// asked for once each, evicting them one by one.
    #[test]
    fn a_popular_large_object_displaces_cold_small_ones() {
        let mut t = tier(1_000_000);
        for small in 0..2_000u64 {
            request(&mut t, small + 10, 1_000);
        }
        let mut hits = 0;
        for _ in 0..10 {
            if request(&mut t, 1, 100_000) {
                hits += 1;
            }
        }
        assert!(t.contains(&1), "the large object is held");
        // A hundred times larger, it must be seen about 100^0.3 (capped at 3) times as often
        // as each small object it displaces: it wins its contests on its fourth request and
        // answers every request after that.
        assert!(
            hits >= 6,
            "admitted by its fourth request: {hits} hits of 10"
        );
        assert!(t.used() <= 1_000_000);
    }

    /// A stream of objects asked for once each does not fill the counters: a new object,
    /// asked for once, reads as seen once, and one asked for twice as seen twice (TinyLFU's
    /// doorkeeper, Einziger et al. §3.4.2). Without it, after 5,000 one-hit objects in a
    /// sketch sized for 1,024 most new objects read as seen twice.
    #[test]
    fn one_hit_objects_do_not_fill_the_sketch() {
        let mut sketch = FrequencySketch::conservative(1024);
        for id in 0..5_000u64 {
            sketch.increment(id);
        }
        let fresh = 1_000_000..1_001_000u64;
        for id in fresh.clone() {
            sketch.increment(id);
        }
        let read_twice = fresh.clone().filter(|id| sketch.estimate(*id) > 1).count();
        assert!(read_twice < 50, "{read_twice} of 1000 read as seen twice");
        let twice = 2_000_000u64;
        sketch.increment(twice);
        sketch.increment(twice);
        assert_eq!(sketch.estimate(twice), 2);
        assert_eq!(sketch.estimate(3_000_000), 0, "never asked for");
    }

    /// Among objects of nearly one size, a newcomer seen once does not displace a resident
    /// seen once, even a few bytes lighter: the tier keeps what it holds, and the newcomer
    /// is declined on sight rather than stored and evicted. Seen again, it wins.
    #[test]
    fn one_hit_newcomers_of_one_size_do_not_displace_each_other() {
        let mut t = tier(1_000_000);
        for resident in 0..96u64 {
            request(&mut t, resident, 10_400);
        }
        assert!(1_000_000 - t.used() < 10_000, "full: {}", t.used());
        for newcomer in 1_000..1_300u64 {
            let mut evicted = Vec::new();
            t.access(&newcomer);
            t.insert(newcomer, 10_399, u32::MAX, &mut evicted);
            assert_eq!(evicted, [newcomer], "declined, nothing else moved");
        }
        assert_eq!((0..96u64).filter(|id| t.contains(id)).count(), 96);
        assert!(request(&mut t, 7, 10_400), "a resident still answers");
        t.access(&1_000);
        t.access(&1_000);
        let mut evicted = Vec::new();
        t.insert(1_000, 10_399, u32::MAX, &mut evicted);
        assert!(
            t.contains(&1_000),
            "seen more often than the victim, it wins"
        );
    }

    /// Everything evicted is reported, and what is held never exceeds the capacity.
    #[test]
    fn evictions_are_reported_and_capacity_holds() {
        let mut t = tier(50_000);
        let mut evicted = Vec::new();
        let mut stored = std::collections::HashSet::new();
        for id in 0..1_000u64 {
            t.access(&id);
            t.insert(id, 100 + (id % 7) * 300, u32::MAX, &mut evicted);
            stored.insert(id);
            for gone in evicted.drain(..) {
                stored.remove(&gone);
            }
            assert!(t.used() <= 50_000);
        }
        assert_eq!(stored.len(), t.len());
        assert!(stored.iter().all(|id| t.contains(id)));
    }

    /// A smaller capacity evicts at once down to it, and what stays is the hot set: the
    /// objects asked for again, not the one-hit objects that came after them.
    #[test]
    fn a_smaller_capacity_evicts_the_coldest_down_to_it() {
        let mut t = tier(1_000_000);
        for _round in 0..5 {
            for hot in 0..50u64 {
                request(&mut t, hot, 5_000);
            }
        }
        for cold in 1_000..1_150u64 {
            request(&mut t, cold, 5_000);
        }
        assert!(t.used() > 900_000, "full before: {}", t.used());
        let mut evicted = Vec::new();
        t.set_capacity(400_000, &mut evicted);
        assert_eq!(t.capacity(), 400_000);
        assert!(t.used() <= 400_000, "fits the new capacity: {}", t.used());
        assert!(
            evicted.iter().all(|id| !t.contains(id)),
            "evicted means gone"
        );
        let kept_hot = (0..50u64).filter(|hot| t.contains(hot)).count();
        assert!(kept_hot >= 45, "the hot set stays: {kept_hot} of 50");
        // Growing back evicts nothing and lets the tier fill again.
        let mut evicted = Vec::new();
        t.set_capacity(1_000_000, &mut evicted);
        assert!(evicted.is_empty());
        for cold in 2_000..2_100u64 {
            request(&mut t, cold, 5_000);
        }
        assert!(t.used() > 800_000, "fills again: {}", t.used());
    }

    /// Newcomers have the free room or the window to themselves: once the tier is full of
    /// objects their size, that is the window alone (past it they lose their contests),
    /// unless a newcomer is so much smaller than main's least recent that it would win.
    #[test]
    fn newcomers_have_the_free_room_or_the_window() {
        let mut t = tier(1_000_000);
        assert_eq!(
            t.newcomer_room(Some(5_000)),
            Some(NewcomerRoom {
                together: 1_000_000,
                largest: 1_000_000
            }),
            "an empty tier: all of it"
        );
        for cold in 0..400u64 {
            request(&mut t, cold, 5_000);
        }
        assert!(t.used() > 995_000, "full: {}", t.used());
        let room = t
            .newcomer_room(Some(5_000))
            .expect("a newcomer its victims' size");
        assert!(
            (10_000..=15_000).contains(&room.together),
            "the window's 10,000 and what is free: {room:?}"
        );
        assert!(
            (5_000..=room.together).contains(&room.largest),
            "half the window, or what is free: {room:?}"
        );
        assert_eq!(t.newcomer_room(None), Some(room), "size unknown");
        assert_eq!(
            t.newcomer_room(Some(100)),
            None,
            "fifty times smaller than its victim, a newcomer displaces it"
        );
    }

    /// A newcomer larger than the window overflows it at once; unless the free room takes
    /// it, it contests main's least recent first and loses. So the window and the free room
    /// together are no room for it: it is declined on sight and moves nothing. One the
    /// window can hold beside another like it is let in and stays.
    #[test]
    fn a_newcomer_larger_than_the_window_needs_the_free_room_alone() {
        let mut t = tier(1_000_000);
        for cold in 0..142u64 {
            request(&mut t, cold, 7_000);
        }
        let free = 1_000_000 - t.used();
        assert!((1..7_000).contains(&free), "full, a little free: {free}");
        let between = 10_000 + free / 2;
        assert_eq!(
            t.newcomer_room(Some(between)).map(|room| room.together),
            Some(10_000),
            "the window, larger than what is free"
        );
        let in_window: Vec<u64> = (0..142u64).filter(|id| t.window.contains(id)).collect();
        t.access(&9_998);
        let mut evicted = Vec::new();
        t.insert(9_998, between, u32::MAX, &mut evicted);
        assert_eq!(evicted, [9_998], "declined, and nothing else moved");
        assert!(in_window.iter().all(|id| t.window.contains(id)));
        let mut evicted = Vec::new();
        assert!(
            !t.declines_newcomer(&9_999, 5_000),
            "half the window's size"
        );
        t.access(&9_999);
        t.insert(9_999, 5_000, u32::MAX, &mut evicted);
        assert!(t.contains(&9_999), "held by the window: {evicted:?}");
    }

    /// A newcomer the window holds only alone (more than half of it) is pushed out by the
    /// next one like it into a contest it loses, so it would be stored only to be evicted:
    /// a stream of them is declined on sight, each moving nothing, and the window keeps
    /// what it holds. Against the admission of every newcomer that fits the window, each of
    /// these was stored.
    #[test]
    fn newcomers_the_window_holds_only_alone_are_declined() {
        let mut t = tier(1_000_000);
        for cold in 0..400u64 {
            request(&mut t, cold, 5_000);
        }
        let in_window: Vec<u64> = (0..400u64).filter(|id| t.window.contains(id)).collect();
        assert!(!in_window.is_empty(), "the window holds the latest");
        for unique in 10_000..10_050u64 {
            assert!(t.access(&unique).is_none());
            let mut evicted = Vec::new();
            t.insert(unique, 6_000, u32::MAX, &mut evicted);
            assert_eq!(evicted, [unique], "declined, and nothing else moved");
        }
        assert!(in_window.iter().all(|id| t.window.contains(id)));
        assert!(
            !t.declines_newcomer(&20_000, 5_000),
            "half the window: kept beside another like it"
        );
    }

    /// A newcomer larger than the room newcomers have is declined on sight, and moves
    /// nothing: the window keeps what it holds. Asked for again, it is no newcomer, and
    /// contests main's least recent as any object does.
    #[test]
    fn a_newcomer_larger_than_its_room_is_declined_without_draining_the_window() {
        let mut t = tier(1_000_000);
        for cold in 0..400u64 {
            request(&mut t, cold, 5_000);
        }
        let in_window: Vec<u64> = (0..400u64).filter(|id| t.window.contains(id)).collect();
        assert!(!in_window.is_empty(), "the window holds the latest");
        let room = t.newcomer_room(Some(50_000)).expect("it would lose");
        assert!(room.largest < 50_000, "larger than its room: {room:?}");
        assert!(t.access(&9_999).is_none());
        let mut evicted = Vec::new();
        t.insert(9_999, 50_000, u32::MAX, &mut evicted);
        assert_eq!(evicted, [9_999], "declined, and nothing else moved");
        assert!(!t.contains(&9_999));
        assert!(in_window.iter().all(|id| t.window.contains(id)));
        assert!(
            !t.declines_newcomer(&9_999, 4_000),
            "a newcomer within its room"
        );
        t.access(&9_999);
        assert!(
            !t.declines_newcomer(&9_999, 50_000),
            "asked for twice, it contests main's least recent"
        );
    }
}
