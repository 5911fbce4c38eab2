//! Giving the heap the memory tier frees back to the system at once when what replaces it
//! is not on the heap (bodies in sealed memory files, bodies on disk).
//!
//! The allocator keeps freed pages for reuse and returns them only as they age (jemalloc's
//! `dirty_decay_ms`, 10 s). While heap objects replace heap objects that is right: the
//! pages are reused at once. But when small objects are displaced by large ones in memory
//! files, nothing reuses the freed heap, and for those seconds the process holds both the
//! old tier and the new: at a 64 MiB capacity that took the process to 1.7x of it, where
//! its budgets allow 1.2x (issue 17, target 6). So the tier counts the heap it frees net
//! of the heap it stores, and once that passes a share of its capacity asks the allocator
//! to return its freed pages now, through the hook the binary installs with
//! [`install_release`] (the allocator is the binary's choice; without a hook nothing is
//! asked).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;

/// Returns the allocator's freed pages to the system. Called off the server threads.
pub type ReleaseFreedHeap = fn();

static RELEASE: OnceLock<ReleaseFreedHeap> = OnceLock::new();

/// Whether a release is running: one at a time, process-wide (the allocator's pages are).
static RELEASING: AtomicBool = AtomicBool::new(false);

/// Installs the process's release hook (once; a second call is ignored and returns false).
pub fn install_release(release: ReleaseFreedHeap) -> bool {
    RELEASE.set(release).is_ok()
}

/// The memory tier's heap freed net of heap stored, and when to give it back.
#[derive(Debug)]
pub struct HeapDecline {
    /// Heap freed less heap stored since the last release, never below zero: stores that
    /// follow frees reuse their pages, frees that follow stores refill the net.
    net_freed: AtomicU64,
    /// Past this net, the freed heap is given back (a share of the tier's capacity).
    threshold: AtomicU64,
    release: Option<ReleaseFreedHeap>,
    /// Releases asked for (`outpost_heap_releases`), once the tier's owner has a counter.
    releases: OnceLock<Counter>,
}

/// The share of the tier's capacity (one in this many bytes) freed net before it is given
/// back: a few bodies' worth at small capacities, so that churn among heap objects, where
/// a store and the evictions it causes roughly cancel, never reaches it.
const THRESHOLD_SHARE: u64 = 16;

/// The least net freed that is given back: below it, a release costs more in page faults
/// on reuse than it saves.
const LEAST_THRESHOLD: u64 = 1 << 20;

/// The net freed past which a tier of `capacity` bytes gives its freed heap back.
fn threshold_for(capacity: u64) -> u64 {
    (capacity / THRESHOLD_SHARE).max(LEAST_THRESHOLD)
}

impl HeapDecline {
    /// For a tier of `capacity` bytes, releasing through the installed hook.
    pub fn new(capacity: u64) -> HeapDecline {
        HeapDecline::with_release(capacity, RELEASE.get().copied())
    }

    fn with_release(capacity: u64, release: Option<ReleaseFreedHeap>) -> HeapDecline {
        HeapDecline {
            net_freed: AtomicU64::new(0),
            threshold: AtomicU64::new(threshold_for(capacity)),
            release,
            releases: OnceLock::new(),
        }
    }

    /// The tier's capacity is `capacity` from now on.
    pub fn resized(&self, capacity: u64) {
        self.threshold
            .store(threshold_for(capacity), Ordering::Relaxed);
    }

    /// Counts each release asked for in `releases` from now on (the first counter given
    /// stays).
    pub fn count_releases_in(&self, releases: Counter) {
        let _ = self.releases.set(releases);
    }

    /// The tier stored `bytes` on the heap.
    pub fn stored(&self, bytes: u64) {
        // Never fails: the closure always returns a value.
        let _ = self
            .net_freed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |net| {
                Some(net.saturating_sub(bytes))
            });
    }

    /// The tier let go of `bytes` of heap; past the threshold, the freed heap is given
    /// back (on a blocking thread when a runtime is at hand).
    pub fn freed(&self, bytes: u64) {
        let threshold = self.threshold.load(Ordering::Relaxed);
        let net = self.net_freed.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if net < threshold {
            return;
        }
        let net = self.net_freed.swap(0, Ordering::AcqRel);
        if net < threshold {
            // Another caller took the count past the threshold first: keep what was left.
            self.net_freed.fetch_add(net, Ordering::AcqRel);
            return;
        }
        let Some(release) = self.release else {
            return;
        };
        if RELEASING.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(releases) = self.releases.get() {
            releases.inc();
        }
        let run = move || {
            tracing::debug!(net_freed = net, "giving the memory tier's freed heap back");
            release();
            RELEASING.store(false, Ordering::Release);
        };
        // Returning pages is a system call per run of them: never on a server thread.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(run)),
            Err(_) => run(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static RELEASES: AtomicU64 = AtomicU64::new(0);

    fn count_release() {
        RELEASES.fetch_add(1, Ordering::Relaxed);
    }

    /// Heap objects replacing heap objects never ask for a release; heap displaced by what
    /// is not on the heap does, once per threshold freed.
    #[test]
    fn only_heap_freed_net_of_heap_stored_is_given_back() {
        let decline = HeapDecline::with_release(32 << 20, Some(count_release));
        let counted = Counter::<u64>::default();
        decline.count_releases_in(counted.clone());
        assert_eq!(decline.threshold.load(Ordering::Relaxed), 2 << 20);
        let before = RELEASES.load(Ordering::Relaxed);
        // Churn: each store evicts about as much as it brings, many times the threshold.
        for _ in 0..10_000 {
            decline.stored(1250);
            decline.freed(1100);
            decline.freed(150);
        }
        assert_eq!(
            RELEASES.load(Ordering::Relaxed),
            before,
            "churn is reused heap"
        );
        // Memory-file bodies displace heap: 1 MiB freed per store of a few hundred bytes
        // (its headers), so every third one passes the threshold.
        for _ in 0..6 {
            decline.stored(300);
            decline.freed(1 << 20);
        }
        assert_eq!(RELEASES.load(Ordering::Relaxed), before + 2);
        assert_eq!(counted.get(), 2, "each release is counted");
        assert!(
            decline.net_freed.load(Ordering::Relaxed) < decline.threshold.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn without_a_hook_nothing_is_asked() {
        let decline = HeapDecline::with_release(1 << 20, None);
        decline.freed(64 << 20);
        assert_eq!(decline.net_freed.load(Ordering::Relaxed), 0);
    }
}
