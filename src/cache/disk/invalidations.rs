//! Invalidations the disk tier must not lose: purges and RFC 9111 §4.4 invalidations count
//! once the index is flushed (so a crash does not bring the content back), and those made
//! while the tier is off are remembered, and written down (see [`super::pending`]), and
//! applied before it is used again: after a probe, at exit, or at the next start.
//!
//! Before, an invalidation made while the tier was off reached memory alone, and the disk's
//! copy came back with the tier: purged content served again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;

use super::pending::{PendingFile, Record};
use super::store::DiskStore;
use super::{DiskError, DiskTier};
use crate::cache::entry::EntryMeta;
use crate::cache::key::PrimaryKey;
use crate::cache::purge_target::{PurgeTarget, Selection};
use http::HeaderName;

/// One change the disk tier must make and keep.
#[derive(Clone)]
pub enum Invalidation {
    /// Every variant of a resource removed.
    Remove(PrimaryKey),
    /// Every variant of a resource made stale (a soft purge): kept for revalidation.
    MarkStale(PrimaryKey),
    /// Every resource with a variant `selection` names, removed or (`soft`) made stale: a
    /// purge by prefix or tag that could not list the tier's keys while it was off.
    Where { selection: Selection, soft: bool },
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
    /// The cache directory the list is written down in (see [`super::pending`]).
    root: Option<PathBuf>,
    /// The file, once open: another outpost may hold it for a while (a restart that
    /// overlaps), and the list waits in memory until it lets go.
    written: Option<PendingFile>,
    /// Whether some of the list is not written down (a write failed, or the file was not
    /// open); logged when it turns true.
    partly_unwritten: bool,
}

impl Missed {
    /// An empty list whose length `pending` shows.
    pub(super) fn counted_in(pending: Gauge) -> Missed {
        Missed {
            pending,
            ..Missed::default()
        }
    }

    /// The same list, written down in `root`, holding what an earlier run left there.
    pub(super) fn written_in(mut self, root: &Path) -> Missed {
        self.root = Some(root.to_path_buf());
        if let Err(err) = self.open_written() {
            tracing::warn!(error = %err, "disk tier: no file for the invalidations it misses while off, for now (they are remembered in memory until it opens)");
        }
        self
    }

    /// Opens the written list when it is not open yet, taking in what it holds and writing
    /// down what was remembered before.
    fn open_written(&mut self) -> Result<(), DiskError> {
        let (None, Some(root)) = (&self.written, &self.root) else {
            return Ok(());
        };
        let (mut written, left) = PendingFile::open(root)?;
        let left = read_back(left);
        if !left.is_empty() {
            tracing::warn!(
                left = left.len(),
                "disk tier: invalidations (purges) an earlier run could not apply are pending"
            );
        }
        // What was remembered before the file opened is written down (the file's own is).
        let unwritten = written_form(&self.list);
        self.add_quietly(&left);
        self.pending.set(self.list.len() as i64);
        let appended = written.append(&unwritten, true);
        self.written = Some(written);
        if appended.is_ok() {
            self.partly_unwritten = false;
        }
        appended
    }

    /// Remembers `invalidations`, and writes down those new to the list (`durable`: synced
    /// before this returns).
    fn add(&mut self, invalidations: &[Invalidation], durable: bool) {
        if self.list.is_empty() && !invalidations.is_empty() {
            tracing::warn!(
                "disk tier off: invalidations (purges) are remembered and applied when it is back"
            );
        }
        let added = self.add_quietly(invalidations);
        self.pending.set(self.list.len() as i64);
        let written = match &mut self.written {
            Some(written) => written.append(&written_form(&self.list[added]), durable),
            // Opening writes the whole list down, this one's too.
            None => self.open_written(),
        };
        if let Err(err) = written {
            if !std::mem::replace(&mut self.partly_unwritten, true) {
                tracing::error!(error = %err, "disk tier off: invalidations (purges) could not be written down; they are lost if outpost stops before the tier is back");
            }
        }
    }

    /// Whether the list is written down whole.
    fn is_written(&self) -> bool {
        self.written.is_some() && !self.partly_unwritten
    }

    /// Forgets the written list, every invalidation on it applied.
    fn cleared(&mut self) {
        self.partly_unwritten = false;
        if let Some(Err(err)) = self.written.as_mut().map(PendingFile::clear) {
            tracing::warn!(error = %err, "disk tier: applied invalidations stay written down; the next start applies them again");
        }
    }

    /// Adds `invalidations` to the list; returns where in it those it added are (the
    /// repeats left out, or the one removal of everything the list became).
    fn add_quietly(&mut self, invalidations: &[Invalidation]) -> std::ops::Range<usize> {
        if self.emptying {
            return 0..0;
        }
        if self.list.len() + invalidations.len() > MISSED_LIMIT {
            tracing::error!(
                limit = MISSED_LIMIT,
                "more invalidations than can be remembered while the disk tier is off: it will be emptied when it comes back"
            );
            self.list = vec![Invalidation::Where {
                selection: Selection::Everything,
                soft: false,
            }];
            self.emptying = true;
            self.listed = HashSet::new();
            return 0..1;
        }
        let before = self.list.len();
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
        before..self.list.len()
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
                // Written down already.
                self.add_quietly(&list);
            }
        }
        self.pending.set(self.list.len() as i64);
    }
}

/// Invalidations as [`super::pending`] writes them down, and back.
impl Record {
    pub(super) fn of(invalidation: &Invalidation) -> Record {
        match invalidation {
            Invalidation::Remove(key) => Record::Remove { key: key.to_hex() },
            Invalidation::MarkStale(key) => Record::MarkStale { key: key.to_hex() },
            Invalidation::Where { selection, soft } => {
                let soft = *soft;
                match selection {
                    Selection::Everything => Record::Everything { soft },
                    Selection::Named {
                        target,
                        surrogate_key,
                    } => match target {
                        PurgeTarget::Url(key) => Record::Url {
                            key: key.to_hex(),
                            soft,
                        },
                        PurgeTarget::Prefix(prefix) => Record::Prefix {
                            prefix: prefix.clone(),
                            soft,
                        },
                        PurgeTarget::Tag { tag, origin } => Record::Tag {
                            tag: tag.clone(),
                            origin: origin.clone(),
                            surrogate_key: surrogate_key.as_str().to_owned(),
                            soft,
                        },
                    },
                }
            }
        }
    }

    /// The invalidation, or `None` for a record that names nothing this build can read
    /// (a bad key or header name).
    pub(super) fn invalidation(self) -> Option<Invalidation> {
        let key = |hex: &str| super::blobs::parse_hex(hex).map(PrimaryKey);
        // Prefix and URL purges do not read the header; any name stands in.
        let unused_header = || HeaderName::from_static("surrogate-key");
        let named = |target, surrogate_key, soft| Invalidation::Where {
            selection: Selection::Named {
                target,
                surrogate_key,
            },
            soft,
        };
        Some(match self {
            Record::Remove { key: hex } => Invalidation::Remove(key(&hex)?),
            Record::MarkStale { key: hex } => Invalidation::MarkStale(key(&hex)?),
            Record::Everything { soft } => Invalidation::Where {
                selection: Selection::Everything,
                soft,
            },
            Record::Url { key: hex, soft } => {
                named(PurgeTarget::Url(key(&hex)?), unused_header(), soft)
            }
            Record::Prefix { prefix, soft } => {
                named(PurgeTarget::Prefix(prefix), unused_header(), soft)
            }
            Record::Tag {
                tag,
                origin,
                surrogate_key,
                soft,
            } => named(
                PurgeTarget::Tag { tag, origin },
                HeaderName::try_from(surrogate_key).ok()?,
                soft,
            ),
        })
    }
}

/// What records read back stand for: each its invalidation, and one that names nothing
/// this build reads the removal of everything (it may have named anything).
fn read_back(records: Vec<Record>) -> Vec<Invalidation> {
    records
        .into_iter()
        .map(|record| {
            record.invalidation().unwrap_or_else(|| {
                tracing::error!("disk tier: a pending invalidation names nothing this build reads; the tier is emptied instead");
                Invalidation::Where {
                    selection: Selection::Everything,
                    soft: false,
                }
            })
        })
        .collect()
}

fn written_form(invalidations: &[Invalidation]) -> Vec<Record> {
    invalidations.iter().map(Record::of).collect()
}

/// What switching a tier back on takes, shared with its [`DiskTier`] but without its
/// store, and with its list held weakly (so a probe waiting to run keeps neither a closed
/// cache's directory nor its file of pending invalidations open).
#[derive(Clone)]
pub(super) struct Switch {
    pub(super) degraded: Arc<AtomicBool>,
    pub(super) missed: Weak<Mutex<Missed>>,
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
                Invalidation::Where { selection, soft } => {
                    let matches = |meta: &EntryMeta| selection.matches(meta);
                    let mut affected = self.partials.remove_where(&matches)?.len();
                    for key in self.keys_where(&matches)? {
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
        let Some(missed) = switch.missed.upgrade() else {
            // The tier is gone: nothing is left to switch on.
            return Ok(());
        };
        loop {
            let taken = {
                let mut missed = missed.lock();
                // A file another outpost held may be free now, with what it left.
                if let Err(err) = missed.open_written() {
                    tracing::debug!(error = %err, "disk tier: the file of pending invalidations is not open yet");
                }
                if missed.list.is_empty() {
                    missed.cleared();
                    switch.degraded.store(false, Ordering::Relaxed);
                    switch.degraded_gauge.set(0);
                    return Ok(());
                }
                missed.take()
            };
            if let Err(err) = self.invalidate(&taken.0, true) {
                missed.lock().restore(taken);
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
            if self
                .remember(&invalidations, flush_now || self.store.fsync())
                .await
            {
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
            Ok(Err(err)) if self.missed.lock().is_written() => {
                tracing::warn!(error = %err, missed, file = super::pending::PENDING_FILE, "the disk tier is still failing: the invalidations it missed (purges) stay written down in the cache dir, and the next start applies them before it uses the tier")
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, missed, "the disk tier is still failing, and the invalidations it missed (purges) could not be written down: they are lost at exit, and what they removed is served from disk after the restart; purge again once it works")
            }
            Err(join) => {
                tracing::error!(error = %join, "disk tier: applying missed invalidations failed to run")
            }
        }
    }

    /// Remembers `invalidations` when the tier is off (checked under the lock that
    /// [`DiskStore::recover`] switches it back under), written down (`durable`: synced);
    /// whether it was off. On the blocking pool: the write goes to a disk that is failing.
    async fn remember(&self, invalidations: &[Invalidation], durable: bool) -> bool {
        let (missed, degraded) = (Arc::clone(&self.missed), Arc::clone(&self.degraded));
        let invalidations = invalidations.to_vec();
        let remembered = tokio::task::spawn_blocking(move || {
            let mut missed = missed.lock();
            if !degraded.load(Ordering::Relaxed) {
                return false;
            }
            missed.add(&invalidations, durable);
            true
        });
        remembered.await.unwrap_or(false)
    }

    /// At start, before the tier is used: applies what an earlier run wrote down and could
    /// not apply (see [`super::pending`]), or, when that fails, switches the tier off to
    /// be probed, with them remembered.
    pub fn apply_left_invalidations(&self) {
        let left = self.missed.lock().list.len();
        if left == 0 || !self.is_available() {
            return;
        }
        match self.store.recover(&self.switch()) {
            Ok(()) => tracing::warn!(
                left,
                "disk tier: applied the invalidations (purges) an earlier run could not"
            ),
            Err(err) => self.degrade(&err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        missed.add(
            &[Invalidation::Remove(key(1)), Invalidation::Remove(key(1))],
            false,
        );
        missed.add(
            &[
                Invalidation::MarkStale(key(1)),
                Invalidation::Remove(key(2)),
            ],
            false,
        );
        assert_eq!(
            removed_keys(&missed),
            vec![(key(1), false), (key(1), true), (key(2), false)]
        );
        let taken = missed.take();
        missed.add(
            &[Invalidation::Remove(key(3)), Invalidation::Remove(key(1))],
            false,
        );
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
    /// later changes, and which a failed application keeps; it is written down so too.
    #[test]
    fn too_many_to_remember_empties_the_tier_when_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut missed = Missed::default().written_in(dir.path());
        let many: Vec<Invalidation> = (0..=MISSED_LIMIT as u32)
            .map(|n| {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&n.to_be_bytes());
                Invalidation::Remove(PrimaryKey(key))
            })
            .collect();
        missed.add(&many, false);
        missed.add(&[Invalidation::MarkStale(key(9))], true);
        let everything = |missed: &Missed| match missed.list.as_slice() {
            [Invalidation::Where { soft, selection }] => {
                missed.emptying && !soft && *selection == Selection::Everything
            }
            _ => false,
        };
        assert!(everything(&missed));
        let taken = missed.take();
        assert!(missed.list.is_empty() && !missed.emptying);
        missed.add(&[Invalidation::Remove(key(4))], true);
        missed.restore(taken);
        assert!(everything(&missed));
        drop(missed);
        let (_, written) = PendingFile::open(dir.path()).unwrap();
        assert!(matches!(
            read_back(written).as_slice(),
            [
                Invalidation::Where {
                    selection: Selection::Everything,
                    soft: false
                },
                Invalidation::Remove(_)
            ]
        ));
    }

    /// Every kind of invalidation is written down and read back as itself; a record that
    /// names nothing this build reads (a key that is not one) stands for everything.
    #[test]
    fn every_kind_is_read_back_as_written() {
        let named = |target| Selection::Named {
            target,
            surrogate_key: HeaderName::from_static("x-tags"),
        };
        let all = [
            Invalidation::Remove(key(1)),
            Invalidation::MarkStale(key(2)),
            Invalidation::Where {
                selection: named(PurgeTarget::Prefix("example.test/a/".into())),
                soft: true,
            },
            Invalidation::Where {
                selection: named(PurgeTarget::Tag {
                    tag: "blue".into(),
                    origin: Some("https://example.test".into()),
                }),
                soft: false,
            },
            Invalidation::Where {
                selection: named(PurgeTarget::Url(key(3))),
                soft: false,
            },
            Invalidation::Where {
                selection: Selection::Everything,
                soft: true,
            },
        ];
        let records = written_form(&all);
        assert_eq!(written_form(&read_back(records.clone())), records);
        let tag = match &read_back(records.clone())[3] {
            Invalidation::Where {
                selection: Selection::Named { surrogate_key, .. },
                ..
            } => surrogate_key.clone(),
            _ => panic!("a tag purge"),
        };
        assert_eq!(
            tag, "x-tags",
            "a tag is matched under the header it was made with"
        );
        let unreadable = read_back(vec![Record::Remove { key: "zz".into() }]);
        assert!(matches!(
            unreadable.as_slice(),
            [Invalidation::Where {
                selection: Selection::Everything,
                soft: false
            }]
        ));
    }

    /// A restart that overlaps: the file of pending invalidations is another outpost's
    /// while it runs, so this one remembers in memory; when it takes the tier over, it
    /// opens the file, applies what the other left there with its own, and clears it.
    #[test]
    fn a_list_another_outpost_wrote_down_is_applied_on_taking_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 20, false).unwrap();
        let (theirs, mine) = (
            entry("/theirs", b"a".to_vec()),
            entry("/mine", b"b".to_vec()),
        );
        for stored in [&theirs, &mine] {
            store.commit_inline(stored);
        }
        let (mut other, _) = PendingFile::open(dir.path()).unwrap();
        other
            .append(&[Record::of(&Invalidation::Remove(theirs.meta.key))], true)
            .unwrap();
        let missed = Arc::new(Mutex::new(Missed::default().written_in(dir.path())));
        missed
            .lock()
            .add(&[Invalidation::Remove(mine.meta.key)], true);
        assert!(!missed.lock().is_written(), "the other holds the file");
        drop(other);
        let switch = Switch {
            degraded: Arc::new(AtomicBool::new(true)),
            missed: Arc::downgrade(&missed),
            degraded_gauge: Gauge::default(),
        };
        store.recover(&switch).unwrap();
        assert!(!switch.degraded.load(Ordering::Relaxed));
        assert!(store.variants(&theirs.meta.key).unwrap().is_empty());
        assert!(store.variants(&mine.meta.key).unwrap().is_empty());
        drop(missed);
        let (_, left) = PendingFile::open(dir.path()).unwrap();
        assert!(left.is_empty(), "cleared once applied");
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
                store.commit_inline(entry);
            }
            store.flush().unwrap();
            let tree = Selection::Named {
                target: crate::cache::PurgeTarget::Prefix("example.com/tree/".into()),
                surrogate_key: http::HeaderName::from_static("surrogate-key"),
            };
            let done = store
                .invalidate(
                    &[
                        Invalidation::Remove(stored[0].meta.key),
                        Invalidation::MarkStale(stored[1].meta.key),
                        Invalidation::Where {
                            selection: tree,
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
