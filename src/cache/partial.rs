//! Partial entries (RFC 9111 §3.3, §3.4): byte ranges of one representation held without
//! the whole of it, taken from the origin's 206 responses. A later range inside them is
//! served from them; pieces with the same strong validator combine, and once they cover the
//! whole representation it becomes an ordinary stored response. A piece with another
//! validator, or with none, replaces what was held: pieces of two representations never mix.
//! One that must be validated before use is, by its strong validator, when it holds the
//! range asked for; a 304 freshens its head and keeps its pieces (RFC 9111 §4.3.4).
//!
//! Partial entries live in memory, in their own budget (`cache.partial_capacity`), one per
//! resource (the variant of its latest piece), and in the disk tier's `partials/` when
//! there is one (`cache::disk::partials`), read back when memory does not hold them.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use moka::ops::compute::Op;

use super::entry::{EntryMeta, StoredResponse};
use super::key::{DigestHasher, PrimaryKey, VariantKey};

/// A single-part `Content-Range` of a 206 (RFC 9110 §14.4): bytes `first..=last` of a
/// representation of `complete_len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub complete_len: u64,
}

impl ContentRange {
    /// `bytes first-last/complete`; `None` for anything else (an unknown complete length
    /// `*`, an unsatisfied-range form, a range past the end): such a piece is not kept.
    pub fn parse(value: &str) -> Option<ContentRange> {
        // Range unit names are case-insensitive (RFC 9110 §14.1).
        let (unit, spec) = value.trim().split_once(' ')?;
        if !unit.eq_ignore_ascii_case("bytes") {
            return None;
        }
        let spec = spec.trim();
        let (range, complete) = spec.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        let digits = |text: &str| -> Option<u64> {
            let text = text.trim();
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse().ok())?
        };
        let (first, last, complete_len) = (digits(first)?, digits(last)?, digits(complete)?);
        (first <= last && last < complete_len).then_some(ContentRange {
            first,
            last,
            complete_len,
        })
    }

    /// Bytes in the piece (never 0: `first <= last`).
    pub fn byte_count(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// Some of the bytes of one representation.
#[derive(Debug)]
pub struct PartialEntry {
    /// The representation's head as its 200 would carry it (no Content-Range, Content-Length
    /// the complete length; `body_len` too), with its freshness and variant.
    pub meta: EntryMeta,
    /// Sorted by first byte; neither overlapping nor adjoining.
    pieces: Vec<(u64, Bytes)>,
}

impl PartialEntry {
    /// A partial entry holding `bytes` at `range`, from a 206 whose head is `meta` (its
    /// status and headers as received).
    pub fn new(mut meta: EntryMeta, range: ContentRange, bytes: Bytes) -> PartialEntry {
        debug_assert_eq!(bytes.len() as u64, range.byte_count());
        meta.status = StatusCode::OK;
        meta.headers.remove(header::CONTENT_RANGE);
        meta.headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(range.complete_len),
        );
        meta.headers = super::entry::compact_headers(&meta.headers);
        meta.body_len = range.complete_len;
        PartialEntry {
            meta,
            pieces: vec![(range.first, bytes)],
        }
    }

    pub fn complete_len(&self) -> u64 {
        self.meta.body_len
    }

    /// How many bytes it holds from the first on (0 when its first piece starts later).
    pub fn prefix_len(&self) -> u64 {
        match self.pieces.first() {
            Some((0, bytes)) => bytes.len() as u64,
            _ => 0,
        }
    }

    /// The bytes from the first on that a fetch of the whole representation could start
    /// from, asking the origin for the rest alone (RFC 9111 §3.3): its prefix, when it is
    /// short of the whole, has a strong entity tag to send as If-Range, and its origin did
    /// not say it serves no ranges (RFC 9110 §14.3); otherwise 0.
    pub fn completable_prefix(&self) -> u64 {
        let prefix_len = self.prefix_len();
        let completable = prefix_len < self.complete_len()
            && self.has_strong_validator()
            && !super::entry::refuses_ranges(&self.meta.headers);
        if completable {
            prefix_len
        } else {
            0
        }
    }

    /// The pieces: first byte and bytes, in order, apart.
    pub fn pieces(&self) -> &[(u64, Bytes)] {
        &self.pieces
    }

    /// An entry read back from storage, when its pieces could be this store's: non-empty,
    /// in order, neither overlapping nor adjoining, within the representation.
    pub fn from_stored(meta: EntryMeta, pieces: Vec<(u64, Bytes)>) -> Option<PartialEntry> {
        let mut previous_end = None;
        for (first, bytes) in &pieces {
            let end = first.checked_add(bytes.len() as u64)?;
            let apart = previous_end.is_none_or(|previous| *first > previous);
            if bytes.is_empty() || !apart || end > meta.body_len {
                return None;
            }
            previous_end = Some(end);
        }
        (!pieces.is_empty()).then_some(PartialEntry { meta, pieces })
    }

    /// An entry read back from storage that kept its pieces as they came (in any order,
    /// overlapping or adjoining): joined as this store joins them, when every piece lies
    /// within the representation.
    pub fn from_written(meta: EntryMeta, pieces: Vec<(u64, Bytes)>) -> Option<PartialEntry> {
        for (first, bytes) in &pieces {
            let end = first.checked_add(bytes.len() as u64)?;
            if bytes.is_empty() || end > meta.body_len {
                return None;
            }
        }
        PartialEntry::from_stored(meta, merge(pieces))
    }

    /// What pieces must share to be combined (see [`PartialEntry::combined_with`]): the
    /// strong validator, the complete length and the variant; `None` without a strong
    /// validator (such an entry is replaced, never added to).
    pub fn representation(&self) -> Option<(Vec<u8>, u64, VariantKey)> {
        let validator = strong_etag(&self.meta.headers)?;
        Some((validator.to_vec(), self.complete_len(), self.meta.variant))
    }

    /// Whether it has a strong entity tag: what a 304 must name to vouch for its bytes, and
    /// what pieces must share to combine.
    pub fn has_strong_validator(&self) -> bool {
        strong_etag(&self.meta.headers).is_some()
    }

    /// The same pieces under `meta`, the head a 304 freshened (RFC 9111 §4.3.4).
    pub fn with_head(&self, meta: EntryMeta) -> PartialEntry {
        PartialEntry {
            meta,
            pieces: self.pieces.clone(),
        }
    }

    /// Bytes held, for the budget.
    pub fn weight(&self) -> u32 {
        let held: u64 = self.pieces.iter().map(|(_, b)| b.len() as u64).sum();
        let head: usize = self
            .meta
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 64)
            .sum();
        u32::try_from(held + head as u64 + self.meta.url.len() as u64 + 512).unwrap_or(u32::MAX)
    }

    /// RFC 9111 §3.4: this entry with `newer`'s pieces added, when both have the same strong
    /// validator (and so the same complete length); otherwise `newer` alone. The head is
    /// `newer`'s: the most recent response's fields (§3.4 updates them as §4.3.4 does).
    fn combined_with(&self, newer: PartialEntry) -> PartialEntry {
        let validator = strong_etag(&self.meta.headers);
        let is_same_representation = validator.is_some()
            && validator == strong_etag(&newer.meta.headers)
            && self.complete_len() == newer.complete_len()
            && self.meta.variant == newer.meta.variant;
        if !is_same_representation {
            return newer;
        }
        let mut pieces = self.pieces.clone();
        pieces.extend(newer.pieces);
        PartialEntry {
            meta: newer.meta,
            pieces: merge(pieces),
        }
    }

    /// Bytes `first..=last`, when one piece holds them all.
    pub fn window(&self, first: u64, last: u64) -> Option<Bytes> {
        let index = self.pieces.partition_point(|(start, _)| *start <= first);
        let (start, bytes) = self.pieces.get(index.checked_sub(1)?)?;
        let end = start + bytes.len() as u64;
        (last < end).then(|| bytes.slice((first - start) as usize..=(last - start) as usize))
    }

    /// The whole representation as an ordinary stored response, once the pieces cover it.
    pub fn completed(&self) -> Option<StoredResponse> {
        match self.pieces.as_slice() {
            [(0, bytes)] if bytes.len() as u64 == self.complete_len() => {
                Some(StoredResponse::new(self.meta.clone(), bytes.clone()))
            }
            _ => None,
        }
    }
}

/// The entity tag of `headers` if it is a strong one (RFC 9110 §8.8.3): the validator two
/// pieces must share to be combined.
pub(crate) fn strong_etag(headers: &HeaderMap) -> Option<&[u8]> {
    let etag = headers.get(header::ETAG)?.as_bytes();
    (etag.first() == Some(&b'"')).then_some(etag)
}

/// Sorts pieces and joins the ones that overlap or adjoin (the earlier piece's bytes win
/// where they overlap: they are the same bytes of the same representation).
fn merge(mut pieces: Vec<(u64, Bytes)>) -> Vec<(u64, Bytes)> {
    pieces.sort_by_key(|(start, _)| *start);
    let mut merged: Vec<(u64, Bytes)> = Vec::with_capacity(pieces.len());
    for (start, bytes) in pieces {
        let Some((previous_start, previous)) = merged.last_mut() else {
            merged.push((start, bytes));
            continue;
        };
        let previous_end = *previous_start + previous.len() as u64;
        if start > previous_end {
            merged.push((start, bytes));
            continue;
        }
        let end = start + bytes.len() as u64;
        if end > previous_end {
            let mut joined = BytesMut::with_capacity((end - *previous_start) as usize);
            joined.extend_from_slice(previous);
            joined.extend_from_slice(&bytes[(previous_end - start) as usize..]);
            *previous = joined.freeze();
        }
    }
    merged
}

/// The partial entries, by resource (moka's sync cache: nothing here waits for I/O, and
/// the future cache's lookup future enlarged every lookup's state).
#[derive(Clone)]
pub struct PartialStore {
    entries: moka::sync::Cache<PrimaryKey, Arc<PartialEntry>, DigestHasher>,
    /// The most one piece may hold: a quarter of the budget, so one response cannot flush
    /// every other partial entry.
    max_piece: u64,
    /// Whether an entry was ever added: until then a lookup has nothing to find, and every
    /// miss's look for a prefix to complete costs no lookup (about 1,000 instructions, on
    /// a node that serves no ranges).
    has_held_any: Arc<std::sync::atomic::AtomicBool>,
}

impl PartialStore {
    /// `capacity` in bytes; 0 keeps nothing.
    pub fn new(capacity: u64) -> PartialStore {
        PartialStore {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|_key: &PrimaryKey, entry: &Arc<PartialEntry>| entry.weight())
                .build_with_hasher(DigestHasher::default()),
            max_piece: capacity / 4,
            has_held_any: Arc::default(),
        }
    }

    /// The bytes its entries weigh now (as moka last counted them).
    pub fn held_bytes(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// The most one piece may hold.
    pub fn max_piece(&self) -> u64 {
        self.max_piece
    }

    /// Whether a piece of `len` bytes would be kept.
    pub fn takes(&self, len: u64) -> bool {
        len > 0 && len <= self.max_piece
    }

    pub async fn get(&self, key: &PrimaryKey) -> Option<Arc<PartialEntry>> {
        if !self.has_held_any() {
            return None;
        }
        self.entries.get(key)
    }

    /// Whether an entry was ever added: until then a lookup can find nothing.
    pub fn has_held_any(&self) -> bool {
        self.has_held_any.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `entry` is still what is held for its resource.
    pub fn holds(&self, entry: &Arc<PartialEntry>) -> bool {
        self.entries
            .get(&entry.meta.key)
            .is_some_and(|held| Arc::ptr_eq(&held, entry))
    }

    /// Adds `piece` to what is held for its resource and returns the result.
    pub async fn add(&self, piece: PartialEntry) -> Arc<PartialEntry> {
        self.has_held_any
            .store(true, std::sync::atomic::Ordering::Release);
        let key = piece.meta.key;
        let computed = self.entries.entry(key).and_compute_with(|existing| {
            let entry = match existing {
                Some(existing) => existing.into_value().combined_with(piece),
                None => piece,
            };
            Op::Put(Arc::new(entry))
        });
        // invariant: a Put always leaves an entry.
        computed.into_entry().expect("put").into_value()
    }

    /// Entries held, their bytes as weighed, and the budget: for the status board.
    pub fn usage(&self) -> (u64, u64, u64) {
        self.entries.run_pending_tasks();
        let capacity = self.entries.policy().max_capacity().unwrap_or(0);
        (
            self.entries.entry_count(),
            self.entries.weighted_size(),
            capacity,
        )
    }

    pub async fn remove(&self, key: &PrimaryKey) {
        self.entries.invalidate(key);
    }

    /// Removes the entries whose head `matches` (purges by prefix, tag or everything);
    /// returns their resources.
    pub async fn remove_where(&self, matches: impl Fn(&EntryMeta) -> bool) -> Vec<PrimaryKey> {
        let keys: Vec<PrimaryKey> = self
            .entries
            .iter()
            .filter(|(_, entry)| matches(&entry.meta))
            .map(|(key, _)| *key)
            .collect();
        for key in &keys {
            self.entries.invalidate(key);
        }
        keys
    }
}

/// Pieces for tests.
#[cfg(test)]
pub mod testing {
    use super::*;
    use crate::cache::entry::testing::entry;

    /// The piece of `path`'s representation of `len` bytes (entity tag `etag`) that holds
    /// `text` from `first` on.
    pub fn piece(path: &str, etag: &'static str, first: u64, text: &str, len: u64) -> PartialEntry {
        let mut meta = entry(path, "").meta;
        meta.headers
            .insert(header::ETAG, HeaderValue::from_static(etag));
        let range = ContentRange {
            first,
            last: first + text.len() as u64 - 1,
            complete_len: len,
        };
        PartialEntry::new(meta, range, Bytes::copy_from_slice(text.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(etag: &'static str, first: u64, text: &str, len: u64) -> PartialEntry {
        testing::piece("/video", etag, first, text, len)
    }

    /// RFC 9110 §14.4: only a complete single-part Content-Range makes a piece.
    #[test]
    fn content_ranges_parse_strictly() {
        assert_eq!(
            ContentRange::parse("bytes 0-499/1234"),
            Some(ContentRange {
                first: 0,
                last: 499,
                complete_len: 1234
            })
        );
        assert_eq!(
            ContentRange::parse("Bytes 1-2/3").map(|range| (range.first, range.last)),
            Some((1, 2)),
            "RFC 9110 §14.1: the unit is case-insensitive"
        );
        for bad in [
            "bytes 0-499/*",
            "bytes */1234",
            "bytes 500-499/1234",
            "bytes 0-1234/1234",
            "items 0-1/2",
            "bytes -1-2/3",
        ] {
            assert_eq!(ContentRange::parse(bad), None, "{bad}");
        }
    }

    /// RFC 9111 §3.4: pieces with the same strong validator combine, overlapping or
    /// adjoining, until the representation is complete.
    #[tokio::test]
    async fn pieces_with_one_strong_validator_combine_into_the_whole() {
        let store = PartialStore::new(1 << 20);
        let first = store.add(piece("\"v1\"", 4, "efgh", 10)).await;
        assert_eq!(first.window(5, 6).unwrap(), "fg");
        assert!(first.window(3, 5).is_none());
        assert!(first.completed().is_none());
        store.add(piece("\"v1\"", 0, "abcdef", 10)).await;
        let whole = store.add(piece("\"v1\"", 8, "ij", 10)).await;
        let complete = whole.completed().expect("complete");
        assert_eq!(complete.meta.status, StatusCode::OK);
        assert_eq!(complete.meta.headers[header::CONTENT_LENGTH], "10");
        assert!(!complete.meta.headers.contains_key(header::CONTENT_RANGE));
        assert_eq!(complete.body.as_bytes().unwrap(), "abcdefghij");
    }

    proptest::proptest! {
        /// RFC 9111 §3.4: whatever pieces of one representation arrive, in any order and
        /// overlapping, every window held is exactly the representation's bytes there, and
        /// the entry is complete exactly when the pieces cover it.
        #[test]
        fn combined_pieces_hold_exactly_the_representation(
            pieces in proptest::collection::vec((0u64..100, 1u64..40), 1..10),
        ) {
            const TEXT: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\
                                0123456789abcdefghijklmnopqrstuvwxyz!?";
            let mut covered = [false; 100];
            let mut held: Option<PartialEntry> = None;
            for (first, len) in pieces {
                let last = (first + len - 1).min(99);
                covered[first as usize..=last as usize].fill(true);
                let text = &TEXT[first as usize..=last as usize];
                let next = piece("\"v\"", first, text, 100);
                held = Some(match held {
                    Some(held) => held.combined_with(next),
                    None => next,
                });
            }
            let held = held.unwrap();
            for first in 0..100u64 {
                for last in first..100u64 {
                    if let Some(window) = held.window(first, last) {
                        proptest::prop_assert_eq!(&window[..], &TEXT.as_bytes()[first as usize..=last as usize]);
                        proptest::prop_assert!(covered[first as usize..=last as usize].iter().all(|c| *c));
                    }
                }
            }
            proptest::prop_assert_eq!(held.completed().is_some(), covered.iter().all(|c| *c));
        }
    }

    /// RFC 9111 §3.4: a weak or different validator never combines: the newer piece
    /// replaces what was held.
    #[tokio::test]
    async fn pieces_of_other_representations_replace_instead_of_combining() {
        let store = PartialStore::new(1 << 20);
        store.add(piece("\"v1\"", 0, "abcde", 10)).await;
        let other = store.add(piece("\"v2\"", 5, "VWXYZ", 10)).await;
        assert!(other.window(0, 1).is_none());
        assert!(other.completed().is_none());
        store.add(piece("W/\"w\"", 0, "abcde", 10)).await;
        let weak = store.add(piece("W/\"w\"", 5, "fghij", 10)).await;
        assert!(
            weak.window(0, 1).is_none(),
            "weak validators do not combine"
        );
        assert_eq!(weak.window(5, 9).unwrap(), "fghij");
    }
}
