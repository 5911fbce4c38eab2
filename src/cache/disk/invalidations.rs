//! Invalidations the disk tier must not lose: purges and RFC 9111 §4.4 invalidations count
//! once the index is flushed (so a crash does not bring the content back), and those made
//! while the tier is off are remembered and applied before it is used again.
//!
//! Before, an invalidation made while the tier was off reached memory alone, and the disk's
//! copy came back with the tier: purged content served again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;

use super::store::DiskStore;
use super::{DiskError, DiskTier};
use crate::cache::entry::EntryMeta;
use crate::cache::key::PrimaryKey;

/// Which stored responses a purge by prefix or tag names.
pub type Matcher = Arc<dyn Fn(&EntryMeta) -> bool + Send + Sync>;

/// One change the disk tier must make and keep.
#[derive(Clone)]
pub enum Invalidation {
    /// Every variant of a resource removed.
    Remove(PrimaryKey),
    /// Every variant of a resource made stale (a soft purge): kept for revalidation.
    MarkStale(PrimaryKey),
    /// Every resource with a variant `matches` names, removed or (`soft`) made stale: a
    /// purge by prefix or tag that could not list the tier's keys while it was off.
    Where { matches: Matcher, soft: bool },
}

/// What applying invalidations did.
#[derive(Debug, Default)]
pub struct Invalidated {
    /// Variants each invalidation affected, in order.
    pub affected: Vec<usize>,
    /// Resources evicted for room while stale rows were written (their bodies' files may
    /// be gone: the memory tier must forget files of theirs).
    pub evicted: Vec<PrimaryKey>,
}

/// Invalidations remembered for a tier that is off. Past this many, the tier is emptied
/// when it comes back instead: what they named can no longer be told apart.
const MISSED_LIMIT: usize = 100_000;

/// Invalidations the tier missed while off, in the order they were made.
#[derive(Default)]
pub(super) struct Missed {
    list: Vec<Invalidation>,
    /// The resources the list removes or marks stale (`true`), so that a resource
    /// invalidated again and again while the tier is off (POSTs to it) is listed once.
    listed: HashSet<(PrimaryKey, bool)>,
    /// Whether the list is the one that empties the tier (it overflowed).
    emptying: bool,
    /// Shows the list's length.
    pending: Gauge,
}

impl Missed {
    /// An empty list whose length `pending` shows.
    pub(super) fn counted_in(pending: Gauge) -> Missed {
        Missed {
            pending,
            ..Missed::default()
        }
    }

    fn add(&mut self, invalidations: &[Invalidation]) {
        if self.list.is_empty() && !invalidations.is_empty() {
            tracing::warn!(
                "disk tier off: invalidations (purges) are remembered and applied when it is back"
            );
        }
        self.add_quietly(invalidations);
        self.pending.set(self.list.len() as i64);
    }

    fn add_quietly(&mut self, invalidations: &[Invalidation]) {
        if self.emptying {
            return;
        }
        if self.list.len() + invalidations.len() > MISSED_LIMIT {
            tracing::error!(
                limit = MISSED_LIMIT,
                "more invalidations than can be remembered while the disk tier is off: it will be emptied when it comes back"
            );
            let everything: Matcher = Arc::new(|_| true);
            self.list = vec![Invalidation::Where {
                matches: everything,
                soft: false,
            }];
            self.emptying = true;
            self.listed = HashSet::new();
            return;
        }
        for invalidation in invalidations {
            let is_new = match invalidation {
                Invalidation::Remove(key) => self.listed.insert((*key, false)),
                Invalidation::MarkStale(key) => self.listed.insert((*key, true)),
                Invalidation::Where { .. } => true,
            };
            if is_new {
                self.list.push(invalidation.clone());
            }
        }
    }

    /// Takes the list to apply (and whether it empties the tier).
    fn take(&mut self) -> (Vec<Invalidation>, bool) {
        self.listed = HashSet::new();
        self.pending.set(0);
        (
            std::mem::take(&mut self.list),
            std::mem::replace(&mut self.emptying, false),
        )
    }

    /// Puts back what [`Missed::take`] took, which failed to apply, ahead of what was
    /// added since.
    fn restore(&mut self, taken: (Vec<Invalidation>, bool)) {
        let added = self.take();
        for (list, emptying) in [taken, added] {
            if emptying {
                self.list = list;
                self.emptying = true;
                self.listed = HashSet::new();
            } else {
                self.add_quietly(&list);
            }
        }
        self.pending.set(self.list.len() as i64);
    }
}

/// What switching a tier back on takes, shared with its [`DiskTier`] but without its
/// store (so a probe waiting to run does not keep a closed cache's directory open).
#[derive(Clone)]
pub(super) struct Switch {
    pub(super) degraded: Arc<AtomicBool>,
    pub(super) missed: Arc<Mutex<Missed>>,
    pub(super) degraded_gauge: Gauge,
}

impl DiskStore {
    /// Applies `invalidations` and, when any changed the index and `flush_now` (a purge:
    /// it counts once it would survive a crash) or `cache.fsync` asks, flushes it. RFC 9111
    /// §4.4 invalidations otherwise wait for the index's next flush, as stores do: one
    /// fsync per unsafe request would slow every write to a cached resource.
    ///
    /// # Errors
    /// I/O or index failures (the tier then degrades, and the caller remembers them).
    pub fn invalidate(
        &self,
        invalidations: &[Invalidation],
        flush_now: bool,
    ) -> Result<Invalidated, DiskError> {
        let mut done = Invalidated::default();
        for invalidation in invalidations {
            // A partial entry cannot be revalidated: it goes either way.
            let affected = match invalidation {
                Invalidation::Remove(key) => {
                    usize::from(self.partials.remove(key)?).max(self.remove(key)?)
                }
                Invalidation::MarkStale(key) => {
                    self.partials.remove(key)?;
                    self.mark_stale(key, &mut done.evicted)?
                }
                Invalidation::Where { matches, soft } => {
                    let mut affected = self.partials.remove_where(&**matches)?.len();
                    for key in self.keys_where(&**matches)? {
                        affected += match soft {
                            true => self.mark_stale(&key, &mut done.evicted)?,
                            false => self.remove(&key)?,
                        };
                    }
                    affected
                }
            };
            done.affected.push(affected);
        }
        if (flush_now || self.fsync()) && done.affected.iter().any(|&affected| affected > 0) {
            self.flush()?;
        }
        Ok(done)
    }

    /// Rewrites every variant of `key` with no freshness left; returns how many. One that
    /// cannot be rewritten for lack of room is removed instead (stricter than asked, never
    /// laxer).
    fn mark_stale(
        &self,
        key: &PrimaryKey,
        evicted: &mut Vec<PrimaryKey>,
    ) -> Result<usize, DiskError> {
        let metas = self.variants(key)?;
        for meta in &metas {
            let mut stale = meta.clone();
            stale.freshness.lifetime = Duration::ZERO;
            match self.commit(&stale, None) {
                Ok(evicted_for_room) => evicted.extend(evicted_for_room),
                Err(DiskError::Full) => self.remove_variant(key, &meta.variant)?,
                Err(err) => return Err(err),
            }
        }
        Ok(metas.len())
    }

    /// Brings a tier that was off back: probes it, then applies what it missed, until
    /// nothing is left; the last check and the switch back happen under the list's lock,
    /// so an invalidation is either remembered before it or applied after it.
    pub(super) fn recover(&self, switch: &Switch) -> Result<(), DiskError> {
        self.probe()?;
        loop {
            let taken = {
                let mut missed = switch.missed.lock();
                if missed.list.is_empty() {
                    switch.degraded.store(false, Ordering::Relaxed);
                    switch.degraded_gauge.set(0);
                    return Ok(());
                }
                missed.take()
            };
            if let Err(err) = self.invalidate(&taken.0, true) {
                switch.missed.lock().restore(taken);
                return Err(err);
            }
        }
    }
}

impl DiskTier {
    /// Applies `invalidations` (see [`DiskStore::invalidate`] for `flush_now`), or, while
    /// the tier is off or when it fails meanwhile, remembers them for when it comes back
    /// (`None`).
    pub async fn invalidate(
        &self,
        invalidations: Vec<Invalidation>,
        flush_now: bool,
    ) -> Option<Invalidated> {
        // A tier that comes back between a failure and the remembering is tried again.
        for _ in 0..3 {
            if self.is_available() {
                let batch = invalidations.clone();
                if let Some(done) = self.run(move |s| s.invalidate(&batch, flush_now)).await {
                    return Some(done);
                }
            }
            if self.remember(&invalidations) {
                return None;
            }
        }
        tracing::warn!(
            count = invalidations.len(),
            "disk tier: invalidations not applied (the tier works but failed them)"
        );
        None
    }

    /// Before shutdown: a tier that is off and missed invalidations is tried once more,
    /// since memory forgets them at exit and the disk's copies would be served after the
    /// restart; if it still fails, says so.
    pub async fn apply_missed_before_exit(&self) {
        let missed = self.missed.lock().list.len();
        if missed == 0 || self.is_available() {
            return;
        }
        let (store, switch) = (Arc::clone(&self.store), self.switch());
        match tokio::task::spawn_blocking(move || store.recover(&switch)).await {
            Ok(Ok(())) => tracing::warn!(
                missed,
                "disk tier works again: the invalidations it missed are applied"
            ),
            Ok(Err(err)) => {
                tracing::error!(error = %err, missed, "the disk tier is still failing: invalidations it missed (purges) are lost at exit, and what they removed is served from disk after the restart; purge again once it works")
            }
            Err(join) => {
                tracing::error!(error = %join, "disk tier: applying missed invalidations failed to run")
            }
        }
    }

    /// Remembers `invalidations` when the tier is off (checked under the lock that
    /// [`DiskStore::recover`] switches it back under); whether it was off.
    fn remember(&self, invalidations: &[Invalidation]) -> bool {
        let mut missed = self.missed.lock();
        if self.is_available() {
            return false;
        }
        missed.add(invalidations);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::NewBody;
    use crate::cache::entry::testing::entry;

    fn key(n: u8) -> PrimaryKey {
        PrimaryKey([n; 32])
    }

    fn removed_keys(missed: &Missed) -> Vec<(PrimaryKey, bool)> {
        missed
            .list
            .iter()
            .filter_map(|invalidation| match invalidation {
                Invalidation::Remove(key) => Some((*key, false)),
                Invalidation::MarkStale(key) => Some((*key, true)),
                Invalidation::Where { .. } => None,
            })
            .collect()
    }

    /// A resource invalidated again and again while the tier is off is listed once for
    /// each kind; a failed application goes back ahead of what came meanwhile.
    #[test]
    fn repeats_are_listed_once_and_a_failed_batch_keeps_its_place() {
        let mut missed = Missed::default();
        missed.add(&[Invalidation::Remove(key(1)), Invalidation::Remove(key(1))]);
        missed.add(&[
            Invalidation::MarkStale(key(1)),
            Invalidation::Remove(key(2)),
        ]);
        assert_eq!(
            removed_keys(&missed),
            vec![(key(1), false), (key(1), true), (key(2), false)]
        );
        let taken = missed.take();
        missed.add(&[Invalidation::Remove(key(3)), Invalidation::Remove(key(1))]);
        missed.restore(taken);
        assert_eq!(
            removed_keys(&missed),
            vec![
                (key(1), false),
                (key(1), true),
                (key(2), false),
                (key(3), false)
            ]
        );
    }

    /// Past the limit, the list becomes one removal of everything, which nothing added
    /// later changes, and which a failed application keeps.
    #[test]
    fn too_many_to_remember_empties_the_tier_when_it_is_back() {
        let mut missed = Missed::default();
        let many: Vec<Invalidation> = (0..=MISSED_LIMIT as u32)
            .map(|n| {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&n.to_be_bytes());
                Invalidation::Remove(PrimaryKey(key))
            })
            .collect();
        missed.add(&many);
        missed.add(&[Invalidation::MarkStale(key(9))]);
        let any = entry("/any", b"x".to_vec()).meta;
        let everything = |missed: &Missed| match missed.list.as_slice() {
            [Invalidation::Where { soft, matches }] => missed.emptying && !soft && matches(&any),
            _ => false,
        };
        assert!(everything(&missed));
        let taken = missed.take();
        assert!(missed.list.is_empty() && !missed.emptying);
        missed.add(&[Invalidation::Remove(key(4))]);
        missed.restore(taken);
        assert!(everything(&missed));
    }

    /// Applied invalidations: a removal, a soft purge (the row stays, with no freshness
    /// left), and a purge by matcher; each counted, and read back so after reopening.
    /// (That the flush makes them durable is `crash::a_purge_survives_a_kill_9_right_after_it`'s
    /// to show: dropping the store flushes too.)
    #[test]
    fn invalidations_apply_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let stored: Vec<_> = ["/gone", "/stale", "/tree/a", "/tree/b", "/kept"]
            .into_iter()
            .map(|path| entry(path, format!("body of {path}").into_bytes()))
            .collect();
        {
            let store = DiskStore::open(dir.path(), 1 << 20, false).unwrap();
            for entry in &stored {
                let body = NewBody::Inline(entry.body.as_bytes().unwrap().clone());
                store.commit(&entry.meta, Some(body)).unwrap();
            }
            store.flush().unwrap();
            let tree: Matcher = Arc::new(|meta| meta.url.contains("/tree/"));
            let done = store
                .invalidate(
                    &[
                        Invalidation::Remove(stored[0].meta.key),
                        Invalidation::MarkStale(stored[1].meta.key),
                        Invalidation::Where {
                            matches: tree,
                            soft: false,
                        },
                        Invalidation::Remove(key(7)),
                    ],
                    true,
                )
                .unwrap();
            assert_eq!(done.affected, vec![1, 1, 2, 0]);
        }
        let store = DiskStore::open(dir.path(), 1 << 20, false).unwrap();
        let variants = |n: usize| store.variants(&stored[n].meta.key).unwrap();
        assert!(variants(0).is_empty() && variants(2).is_empty() && variants(3).is_empty());
        assert_eq!(variants(1)[0].freshness.lifetime, Duration::ZERO);
        assert_eq!(variants(4).len(), 1);
        assert_ne!(variants(4)[0].freshness.lifetime, Duration::ZERO);
    }
}
