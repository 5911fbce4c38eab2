//! Room in memory for the index documents the mirror holds whole while it reads and
//! rewrites them: counted against the fills' memory budget, as artifacts held for their
//! digest check are, but waited for instead of gone without.
//!
//! An artifact without room is checked as it streams; a document cannot be: relayed as it
//! came, it would be stored unrewritten, and every later client would be sent upstream.
//! So a document that finds no room waits for it, reading no more of its body meanwhile.
//! Documents waiting for each other would wait for ever (each holding what it has read),
//! so one document at a time holds the pass: it grows past the budget and never waits,
//! and when it is done the others try again. What documents hold is then within the budget
//! and one document past it, whatever the number read at once. (A fill alone may pass the
//! budget; a document never does but by the pass, or two could be past it at once.)
//!
//! Small documents (most of them: a cold `npm install` reads hundreds) never wait: what
//! they hold is counted, and bounded by the connections that fetch them.
//!
//! A wait is bounded too (`patience`): a document that waited that long reads on past the
//! budget. The one with the pass can be held up by the others after all: over HTTP/2 to
//! the upstream, streams share their connection's flow-control window, and a document not
//! read on keeps its share of it. Past its patience, a waiting document lets its stream go
//! on rather than let the one with the pass stall into its body-read timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Bytes held whole, counted against a budget (the fills' memory budget in the proxy).
pub trait HeldBytes: Send {
    /// Whether `len` bytes in all may be held now; if so they are counted from now on. A
    /// body alone may pass the budget.
    fn grow_to(&mut self, len: u64) -> bool;
    /// As [`HeldBytes::grow_to`], but never past the budget, not even alone.
    fn grow_within(&mut self, len: u64) -> bool;
    /// Counts `len` bytes in all, room or not.
    fn force_to(&mut self, len: u64);
    /// Counts nothing any more: the bytes were let go.
    fn release(&mut self);
}

impl HeldBytes for crate::cache::HeldRoom<'_> {
    fn grow_to(&mut self, len: u64) -> bool {
        crate::cache::HeldRoom::grow_to(self, len)
    }
    fn grow_within(&mut self, len: u64) -> bool {
        crate::cache::HeldRoom::grow_within(self, len)
    }
    fn force_to(&mut self, len: u64) {
        crate::cache::HeldRoom::force_to(self, len);
    }
    fn release(&mut self) {
        crate::cache::HeldRoom::release(self);
    }
}

/// A document holding at most this much never waits for room.
pub const SMALL_DOCUMENT: u64 = 1 << 20;

/// The one pass past the budget, shared by the documents being read.
#[derive(Default)]
pub struct DocumentPass {
    taken: AtomicBool,
    /// Told when the pass is given back.
    returned: Notify,
}

/// What one document being read holds, in `held`; dropped when the document is let go.
pub struct DocumentRoom<'a> {
    pass: &'a DocumentPass,
    held: &'a mut dyn HeldBytes,
    /// How long it waits for room at most, in all.
    patience: Duration,
    has_pass: bool,
    has_waited: bool,
    /// It waited for `patience`, and reads on past the budget.
    is_impatient: bool,
}

impl DocumentPass {
    /// Room for one document, counted in `held`, waited for at most `patience` in all.
    pub fn room<'a>(&'a self, held: &'a mut dyn HeldBytes, patience: Duration) -> DocumentRoom<'a> {
        DocumentRoom {
            pass: self,
            held,
            patience,
            has_pass: false,
            has_waited: false,
            is_impatient: false,
        }
    }
}

impl DocumentRoom<'_> {
    /// Returns once `len` bytes in all are counted for the document: at once while there
    /// is room, the document is small, or it holds the pass; else when it has taken the
    /// pass, found room after the pass was given back, or run out of patience.
    pub async fn grow_to(&mut self, len: u64) {
        loop {
            if self.has_pass || self.is_impatient || len <= SMALL_DOCUMENT {
                self.held.force_to(len);
                return;
            }
            // Listening before looking, so that a pass given back in between is not missed.
            let returned = self.pass.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if self.held.grow_within(len) {
                return;
            }
            if self
                .pass
                .taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.has_pass = true;
                continue;
            }
            self.has_waited = true;
            let started = tokio::time::Instant::now();
            if tokio::time::timeout(self.patience, returned).await.is_err() {
                tracing::debug!(
                    "index document read on past the fills' memory budget after waiting for room"
                );
                self.is_impatient = true;
            }
            self.patience = self.patience.saturating_sub(started.elapsed());
        }
    }

    /// Whether this document holds the pass (it has grown past the budget's room).
    pub fn has_pass(&self) -> bool {
        self.has_pass
    }

    /// Whether this document has waited for room.
    pub fn has_waited(&self) -> bool {
        self.has_waited
    }
}

impl Drop for DocumentRoom<'_> {
    fn drop(&mut self) {
        // What it counted goes before the waiting are told, so that they find the room.
        self.held.release();
        if self.has_pass {
            self.pass.taken.store(false, Ordering::Release);
            self.pass.returned.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::{Arc, Mutex};

    const PATIENCE: Duration = Duration::from_secs(60);
    const MIB: u64 = 1 << 20;

    /// A budget of `limit` bytes shared by several holders (the fills' budget in small).
    #[derive(Clone)]
    struct Budget {
        counted: Arc<Mutex<u64>>,
        limit: u64,
    }

    struct Held {
        budget: Budget,
        own: u64,
    }

    impl Budget {
        fn new(limit: u64) -> Budget {
            Budget {
                counted: Arc::new(Mutex::new(0)),
                limit,
            }
        }
        fn holder(&self) -> Held {
            Held {
                budget: self.clone(),
                own: 0,
            }
        }
        fn counted(&self) -> u64 {
            *self.counted.lock().unwrap()
        }
    }

    impl HeldBytes for Held {
        fn grow_within(&mut self, len: u64) -> bool {
            self.grow_to(len)
        }
        fn grow_to(&mut self, len: u64) -> bool {
            let mut counted = self.budget.counted.lock().unwrap();
            let more = len.saturating_sub(self.own);
            if *counted + more > self.budget.limit {
                return false;
            }
            *counted += more;
            self.own += more;
            true
        }
        fn force_to(&mut self, len: u64) {
            let more = len.saturating_sub(self.own);
            *self.budget.counted.lock().unwrap() += more;
            self.own += more;
        }
        fn release(&mut self) {
            *self.budget.counted.lock().unwrap() -= self.own;
            self.own = 0;
        }
    }

    /// Two large documents that each hold part of the budget and want more than is left do
    /// not wait for each other: one takes the pass and finishes, then the other goes on.
    #[tokio::test]
    async fn documents_waiting_for_room_always_make_progress() {
        let budget = Budget::new(8 * MIB);
        let pass = DocumentPass::default();
        let (mut first_held, mut second_held) = (budget.holder(), budget.holder());
        let mut first = pass.room(&mut first_held, PATIENCE);
        let mut second = pass.room(&mut second_held, PATIENCE);
        first.grow_to(3 * MIB).await;
        second.grow_to(3 * MIB).await;
        assert_eq!(budget.counted(), 6 * MIB);

        // No room for either: the first takes the pass and passes the budget.
        first.grow_to(6 * MIB).await;
        assert!(first.has_pass());
        assert_eq!(budget.counted(), 9 * MIB);
        // The second waits until the first is done, then finds room.
        let mut waiting = Box::pin(second.grow_to(4 * MIB));
        assert!((&mut waiting).now_or_never().is_none(), "it waits");
        drop(first);
        waiting.await;
        assert!(!second.has_pass(), "room was found once the first let go");
        assert!(second.has_waited());
        assert_eq!(budget.counted(), 4 * MIB);
        drop(second);
        assert_eq!(budget.counted(), 0);
    }

    /// A small document is counted but never waits, even past the budget.
    #[tokio::test]
    async fn a_small_document_never_waits() {
        let budget = Budget::new(0);
        let pass = DocumentPass::default();
        let mut held = budget.holder();
        let mut room = pass.room(&mut held, PATIENCE);
        room.grow_to(SMALL_DOCUMENT).await;
        assert!(!room.has_pass());
        assert_eq!(budget.counted(), SMALL_DOCUMENT);
    }

    /// A document that has waited its patience out reads on past the budget, while
    /// another still holds the pass: a wait never outlasts it. (Time is paused: the
    /// patience passes when nothing else can happen.)
    #[tokio::test(start_paused = true)]
    async fn a_document_out_of_patience_reads_on_past_the_budget() {
        let budget = Budget::new(2 * MIB);
        let pass = DocumentPass::default();
        let (mut first_held, mut second_held) = (budget.holder(), budget.holder());
        let mut first = pass.room(&mut first_held, PATIENCE);
        first.grow_to(4 * MIB).await;
        assert!(first.has_pass());
        let mut second = pass.room(&mut second_held, Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        second.grow_to(3 * MIB).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(second.has_waited() && !second.has_pass());
        assert_eq!(budget.counted(), 7 * MIB);
        // Out of patience once, it no longer waits.
        second.grow_to(5 * MIB).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop((first, second));
        assert_eq!(budget.counted(), 0);
    }
}
