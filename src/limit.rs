//! Bounded admission: at most N holders at once, in all and per named peer (an origin),
//! with a bounded queue of waiters and a bounded wait. Past either bound the caller is told
//! no at once, so overload becomes a quick 503 instead of unbounded memory and connections.
//!
//! Used for fills (origin fetches that store) and for origin exchanges; what a refusal
//! means to the client is the caller's business.
//!
//! # Concurrent calls
//! [`Limiter::admit`] may be called from any number of tasks. Permits are released when the
//! returned [`Admission`] is dropped, in any task.
//!
//! # Cancellation
//! Dropping an `admit` future leaves the queue at once; nothing is held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bounds of one limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub total: usize,
    pub per_peer: usize,
    /// Callers that may wait at once.
    pub queue: usize,
    /// Longest wait for a permit.
    pub wait: Duration,
}

/// Why a caller was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("limit reached and the queue is full")]
    QueueFull,
    #[error("limit reached and no slot freed within the queue timeout")]
    TimedOut,
}

/// Holds one slot of the total and one of the peer's until dropped.
#[derive(Debug)]
pub struct Admission {
    _total: OwnedSemaphorePermit,
    _peer: OwnedSemaphorePermit,
}

/// Asked to free a slot of the total when a caller has its peer's slot but must wait for
/// one of the total (see [`Limiter::on_total_shortage`]).
type Relief = Box<dyn Fn() -> bool + Send + Sync>;

/// Counts holders in all and per peer.
pub struct Limiter {
    bounds: Bounds,
    total: Arc<Semaphore>,
    peers: Mutex<HashMap<String, Arc<Semaphore>>>,
    waiting: AtomicUsize,
    /// The most holders there have been at once.
    high_water: AtomicUsize,
    /// Asked in turn until one frees a slot.
    reliefs: Mutex<Vec<Relief>>,
    /// Peers with a cap of their own instead of `bounds.per_peer` ([`Limiter::cap_peer`]).
    peer_caps: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("bounds", &self.bounds)
            .field("in_use", &self.in_use())
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

/// Leaves the queue count when the wait ends, however it ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limiter {
    pub fn new(bounds: Bounds) -> Limiter {
        Limiter {
            bounds,
            total: Arc::new(Semaphore::new(bounds.total.max(1))),
            peers: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
            reliefs: Mutex::new(Vec::new()),
            peer_caps: Mutex::new(HashMap::new()),
        }
    }

    /// Sets what is asked, once per such wait, to free a slot of the total when a caller
    /// has its peer's slot and waits for one of the total only: holders that are idle (a
    /// pooled connection to another origin) can give theirs up, where otherwise the caller
    /// would wait for them to time out. Each client sharing the limiter sets its own; they
    /// are asked in the order set until one says it freed a slot.
    pub fn on_total_shortage(&self, relief: impl Fn() -> bool + Send + Sync + 'static) {
        self.reliefs.lock().push(Box::new(relief));
    }

    /// Holds `peer` to at most `cap` slots (the smaller when set twice), in place of
    /// `bounds.per_peer`, from its first admission on: set before it is admitted.
    pub fn cap_peer(&self, peer: &str, cap: usize) {
        self.peer_caps
            .lock()
            .entry(peer.to_ascii_lowercase())
            .and_modify(|set| *set = (*set).min(cap))
            .or_insert(cap);
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// A slot for `peer`: at once when one is free, else after waiting in the queue.
    ///
    /// # Errors
    /// [`Refused`] when the queue is full or the wait passes `bounds.wait`.
    pub async fn admit(&self, peer: &str) -> Result<Admission, Refused> {
        let per_peer = self.peer(peer);
        // The peer's slot first, and a global one only with it: a global slot taken by a
        // caller whose peer is full, even for a moment, would be one too many for another
        // origin's caller (refused or queued for nothing) and for the count of holders.
        if let Ok(peer) = Arc::clone(&per_peer).try_acquire_owned() {
            if let Ok(total) = Arc::clone(&self.total).try_acquire_owned() {
                self.note_in_use();
                return Ok(Admission {
                    _total: total,
                    _peer: peer,
                });
            }
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.bounds.queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::QueueFull);
        }
        let _waiting = Waiting(&self.waiting);
        let acquire = async {
            // The peer's slot first: a request for a busy origin does not hold a global
            // slot that requests for other origins could use meanwhile.
            let peer = per_peer.acquire_owned().await;
            let total = match Arc::clone(&self.total).try_acquire_owned() {
                Ok(total) => Ok(total),
                Err(_) => {
                    let _freed = self.reliefs.lock().iter().any(|relief| relief());
                    Arc::clone(&self.total).acquire_owned().await
                }
            };
            (total, peer)
        };
        match tokio::time::timeout(self.bounds.wait, acquire).await {
            Ok((Ok(total), Ok(peer))) => {
                self.note_in_use();
                Ok(Admission {
                    _total: total,
                    _peer: peer,
                })
            }
            // The semaphores are never closed; treat it as a timeout all the same.
            Ok(_) | Err(_) => Err(Refused::TimedOut),
        }
    }

    /// Holders now, in all.
    pub fn in_use(&self) -> usize {
        self.bounds.total.max(1) - self.total.available_permits()
    }

    /// Callers waiting for a place now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The most holders there have been at once since start.
    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    fn note_in_use(&self) {
        self.high_water.fetch_max(self.in_use(), Ordering::Relaxed);
    }

    fn peer(&self, peer: &str) -> Arc<Semaphore> {
        let mut peers = self.peers.lock();
        if let Some(semaphore) = peers.get(peer) {
            return Arc::clone(semaphore);
        }
        // Forget idle peers now and then, so a stream of distinct names stays bounded.
        if peers.len() >= 1024 {
            let per_peer = self.bounds.per_peer.max(1);
            peers.retain(|_, s| s.available_permits() < per_peer || Arc::strong_count(s) > 1);
        }
        let slots = self
            .peer_caps
            .lock()
            .get(peer)
            .copied()
            .unwrap_or(self.bounds.per_peer);
        let semaphore = Arc::new(Semaphore::new(slots.max(1)));
        peers.insert(peer.to_string(), Arc::clone(&semaphore));
        semaphore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(total: usize, per_peer: usize, queue: usize) -> Limiter {
        Limiter::new(Bounds {
            total,
            per_peer,
            queue,
            wait: Duration::from_secs(5),
        })
    }

    /// The relief is asked only when the total is what a caller waits for, and what it
    /// frees goes to that caller; a caller waiting for its own peer's slot asks nothing.
    #[tokio::test]
    async fn a_shortage_of_the_total_asks_for_relief() {
        let limiter = Arc::new(limiter(2, 1, 4));
        let held = Arc::new(Mutex::new(Vec::new()));
        let asked = Arc::new(AtomicUsize::new(0));
        limiter.on_total_shortage({
            let (held, asked) = (Arc::clone(&held), Arc::clone(&asked));
            move || {
                asked.fetch_add(1, Ordering::SeqCst);
                held.lock().pop().is_some()
            }
        });
        for peer in ["a", "b"] {
            let admission = limiter.admit(peer).await.unwrap();
            held.lock().push(admission);
        }
        let waiting_on_a = futures_util::FutureExt::now_or_never(limiter.admit("a"));
        assert!(waiting_on_a.is_none(), "a's own slot is taken");
        assert_eq!(asked.load(Ordering::SeqCst), 0);
        let c = limiter.admit("c").await.expect("b's slot, given up");
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(held.lock().len(), 1);
        drop(c);
    }

    /// A peer with a cap of its own (a pool server's `max_connections`) gets that many
    /// slots, the smaller of two caps set for it, whatever its name's case; others keep
    /// the common bound.
    #[tokio::test]
    async fn a_capped_peer_gets_its_own_number_of_slots() {
        let limiter = limiter(10, 3, 0);
        limiter.cap_peer("Small:80", 2);
        limiter.cap_peer("small:80", 4);
        let small = [
            limiter.admit("small:80").await.unwrap(),
            limiter.admit("small:80").await.unwrap(),
        ];
        assert_eq!(
            limiter.admit("small:80").await.unwrap_err(),
            Refused::QueueFull
        );
        let mut other = Vec::new();
        for _ in 0..3 {
            other.push(limiter.admit("other:80").await.unwrap());
        }
        assert_eq!(
            limiter.admit("other:80").await.unwrap_err(),
            Refused::QueueFull
        );
        drop((small, other));
    }

    #[tokio::test]
    async fn per_peer_and_total_bounds_hold() {
        let limiter = limiter(3, 2, 0);
        let a1 = limiter.admit("a").await.unwrap();
        let _a2 = limiter.admit("a").await.unwrap();
        assert_eq!(limiter.admit("a").await.unwrap_err(), Refused::QueueFull);
        let _b1 = limiter.admit("b").await.unwrap();
        assert_eq!(limiter.admit("b").await.unwrap_err(), Refused::QueueFull);
        assert_eq!(limiter.in_use(), 3);
        drop(a1);
        assert!(limiter.admit("b").await.is_ok());
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_released_and_the_queue_is_bounded() {
        let limiter = Arc::new(limiter(1, 1, 1));
        let first = limiter.admit("a").await.unwrap();
        let waiter = {
            let limiter = Arc::clone(&limiter);
            tokio::spawn(async move { limiter.admit("a").await.map(drop) })
        };
        while limiter.waiting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(limiter.admit("a").await.unwrap_err(), Refused::QueueFull);
        drop(first);
        assert!(waiter.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_timeout_is_refused() {
        let limiter = limiter(1, 1, 4);
        let _held = limiter.admit("a").await.unwrap();
        assert_eq!(limiter.admit("a").await.unwrap_err(), Refused::TimedOut);
    }
}
