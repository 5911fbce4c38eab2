//! The disk tier's index: which variants are stored (their metadata), the order they were
//! last used in, and how many rows reference each body (by digest). It knows digests, never
//! files: where a body lives is [`super::blobs`]'s business, and keeping files and index in
//! step is [`super::store::DiskStore`]'s.
//!
//! The seam is a trait because sled, the one implementation, has had no stable release
//! since 2021 (see `shared/notes/crates.md`): another index can replace it without touching
//! files, sweep or the async tier.
//!
//! # Concurrent calls
//! Reads may run concurrently with anything. Mutating calls (`add_body`, `insert`,
//! `remove*`, `touch`, `evict_over`, `recount`) must be serialised by the caller, which
//! holds one lock across the index and the files.

use std::sync::atomic::{AtomicU64, Ordering};

use super::packs::PackedAt;
use super::DiskError;
use crate::cache::entry::EntryMeta;
use crate::cache::key::{PrimaryKey, VariantKey};

/// Bytes counted per index row beyond its encoded metadata (sled's own structures).
const ROW_OVERHEAD: u64 = 128;

/// Bodies whose last reference went: the digests of files to delete, and the packed
/// bodies (where, and how long) whose space is now dead.
#[must_use]
#[derive(Debug, Default)]
pub struct Released {
    pub files: Vec<[u8; 32]>,
    pub packed: Vec<(PackedAt, u64)>,
}

impl Released {
    fn add(&mut self, other: Released) {
        self.files.extend(other.files);
        self.packed.extend(other.packed);
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.packed.is_empty()
    }
}

/// How a recorded body is read: where it is, and what it is checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyRecord {
    /// The XXH3 check; `None` for bodies recorded before checks were (their blake3
    /// digest is the check then).
    pub check: Option<u64>,
    pub place: BodyPlace,
}

/// Where a recorded body is.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyPlace {
    /// A file of its own (see [`super::blobs`]).
    File,
    /// Appended to a pack (see [`super::packs`]).
    Packed(PackedAt),
    /// Kept in the index itself, as earlier builds kept small bodies (unverified).
    InIndex(bytes::Bytes),
}

/// A stored variant as its row records it.
#[derive(Debug, Clone)]
pub struct StoredVariant {
    pub meta: EntryMeta,
    /// Where its body is, when the row itself records it (a packed body); `None` for a
    /// body recorded apart (see [`DiskIndex::body_record`]).
    pub packed: Option<BodyRecord>,
}

/// What a sweep of the rows found and removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RowSweep {
    pub without_body: u64,
    pub undecodable: u64,
}

/// The index the disk tier keeps; see the module doc.
pub trait DiskIndex: Send + Sync {
    /// Every stored variant of `key`, newest first, each with its body's record when its
    /// row holds it (a packed body: reading it then needs no second lookup); rows this
    /// build cannot decode are removed.
    fn variants(&self, key: &PrimaryKey) -> Result<(Vec<StoredVariant>, Released), DiskError>;
    /// The per-block digests of a stored body, if it has them.
    fn blocks(&self, digest: &[u8; 32]) -> Result<Option<Vec<[u8; 32]>>, DiskError>;
    /// Whether a body with this digest is recorded.
    fn has_body(&self, digest: &[u8; 32]) -> Result<bool, DiskError>;
    /// Records a body just stored under `digest`, with no reference yet, and the check
    /// ([`super::body_check`]) its reads are verified against.
    fn add_body(
        &self,
        digest: &[u8; 32],
        len: u64,
        blocks: &[[u8; 32]],
        check: u64,
    ) -> Result<(), DiskError>;
    /// Where the body of `meta` is and how it is checked; `None` when it is not recorded
    /// (or its row has since been replaced by one with another body).
    fn body_record(&self, meta: &EntryMeta) -> Result<Option<BodyRecord>, DiskError>;
    /// Indexes `meta` (replacing the row of the same variant) and takes a reference on its
    /// body, which must be recorded.
    fn insert(&self, meta: &EntryMeta) -> Result<Released, DiskError>;
    /// Indexes `meta` with its body appended to a pack at `at`: the row itself records
    /// it (no body record: a packed body belongs to its one row, and is not shared). A
    /// read verifies it against the metadata's blake3 digest, in the same row.
    fn insert_packed(&self, meta: &EntryMeta, at: PackedAt) -> Result<Released, DiskError>;
    /// Re-indexes `meta` (new headers, same body) over the row of its variant when that
    /// row keeps the same body in a pack; `None` when it does not.
    fn reindex_packed(&self, meta: &EntryMeta) -> Result<Option<Released>, DiskError>;
    /// The rows whose bodies are in `pack`: row key, place and length.
    fn packed_in(&self, pack: u32) -> Result<Vec<(Vec<u8>, PackedAt, u64)>, DiskError>;
    /// Records that the body of `row` moved from `from` to `to` (if it is still recorded
    /// at `from`); returns whether it was.
    fn move_packed(&self, row: &[u8], from: PackedAt, to: PackedAt) -> Result<bool, DiskError>;
    /// Bytes of recorded bodies per pack.
    fn live_in_packs(&self) -> Result<std::collections::HashMap<u32, u64>, DiskError>;
    /// Removes every variant of `key`; returns how many.
    fn remove(&self, key: &PrimaryKey) -> Result<(usize, Released), DiskError>;
    fn remove_variant(&self, key: &PrimaryKey, variant: &VariantKey)
        -> Result<Released, DiskError>;
    /// Moves a row to the recent end of the replacement order.
    fn touch(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError>;
    /// Removes the least recently used rows (exactly among few rows, by sampling among
    /// many) until rows and bodies take at most `capacity` bytes and there are at most
    /// `max_rows` rows; returns the resources evicted.
    fn evict_over(
        &self,
        capacity: u64,
        max_rows: u64,
    ) -> Result<(Vec<PrimaryKey>, Released), DiskError>;
    /// Primary keys with at least one variant matching `predicate`.
    fn keys_where(
        &self,
        predicate: &dyn Fn(&EntryMeta) -> bool,
    ) -> Result<Vec<PrimaryKey>, DiskError>;
    /// Removes rows `is_doomed` picks and rows it cannot decode. Scans without the caller's
    /// lock (stores go on meanwhile) and takes `serialise` for each removal, re-checking
    /// that the row is still as seen.
    fn sweep_rows(
        &self,
        is_doomed: &dyn Fn(&EntryMeta) -> bool,
        serialise: &parking_lot::Mutex<()>,
    ) -> Result<(RowSweep, Released), DiskError>;
    /// Counts rows and bytes exactly (replacing the estimate made at open).
    fn recount(&self) -> Result<(), DiskError>;
    /// Stored rows, and bytes of rows and bodies.
    fn usage(&self) -> (u64, u64);
    /// Bytes the index's own files occupy (counted against the capacity).
    fn own_size(&self) -> u64;
    /// Makes what was indexed so far durable.
    fn flush(&self) -> Result<(), DiskError>;
    /// Records small facts other parts keep beside the cache (the digests a package
    /// index published), replacing earlier values of the same keys.
    fn put_notes(&self, notes: &[(Vec<u8>, Vec<u8>)]) -> Result<(), DiskError>;
    /// A fact recorded with [`DiskIndex::put_notes`].
    fn note(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError>;
}

/// The sled implementation: trees `entries` (primary key ++ variant key -> tick, packed
/// body's record, encoded metadata: see `RowValue`), `blobs` (digest -> reference count,
/// size, check, and the bytes of a small body kept here rather than in a file), `blocks` (digest -> block digests of multi-block
/// bodies) and `notes` (facts kept beside the cache, such as published digests).
///
/// # Space
/// sled takes about 200 bytes of its files per row however small the row (measured: 20k
/// rows of a 64-byte key and a 24-byte value occupy 253 B each), so the index keeps as few
/// rows per object as it can: one in `entries` and one in `blobs`. The replacement order is
/// not a tree of its own (that was 450 B per object): each row carries the tick of its last
/// use, and eviction samples rows for the oldest (`SledIndex::eviction_victim`).
/// Indexes written by earlier builds had `recency` and `inline` trees: the first gives
/// the next tick once and is dropped; the second is still read while it has bodies.
pub struct SledIndex {
    db: sled::Db,
    entries: sled::Tree,
    blobs: sled::Tree,
    block_digests: sled::Tree,
    /// Small bodies as earlier builds kept them; consulted only while it is not empty.
    legacy_inline: Option<sled::Tree>,
    notes: sled::Tree,
    next_tick: AtomicU64,
    /// Ticks below this are reserved in the index, so a reopened index never reuses one.
    reserved_ticks: AtomicU64,
    eviction: parking_lot::Mutex<EvictionSampler>,
    bytes: AtomicU64,
    rows: AtomicU64,
    /// The index files' size, and when it was measured.
    own_size: parking_lot::Mutex<(std::time::Instant, u64)>,
}

/// Memory the index holds per row once its rows have been read (the sweep at open reads
/// them all). sled keeps every node it has read in memory, whatever its cache capacity
/// (a cache of 1 MiB or 8 MiB made no difference to 200k rows read at random: about 150 B
/// each beside the page table built at open); measured with `benches/rss_disk_tier.sh`,
/// an instance reopened on 187-216k objects of 1 KiB held 283-316 B per object more than
/// one on an empty directory (on 370-400k objects, 172-183 B: this errs on the side of the
/// capacity). Counted against the memory tier, so that a disk tier does
/// not carry the process far past `cache.memory_capacity`.
pub const INDEX_MEMORY_PER_ROW: u64 = 288;

/// sled's own cache of index pages, in the process's memory (the kernel's page cache still
/// holds the index files): 32 MiB here was 25 MiB of RSS beside a 128 MiB memory tier under
/// a miss storm, for no measured gain in throughput.
const SLED_CACHE_CAPACITY: u64 = 8 << 20;

/// Memory an open index holds whatever its rows: sled's page cache, its write buffers and
/// flusher. Measured with a miss storm on an 8 MiB memory tier: with a disk tier the
/// process ran about 20 MiB higher than without once its page cache had filled, of which
/// 12 MiB is not the cache.
pub const INDEX_BASE_MEMORY: u64 = SLED_CACHE_CAPACITY + (12 << 20);

/// Up to this many rows, eviction finds the least recently used row exactly, by a scan.
const EXACT_EVICTION_ROWS: u64 = 1024;
/// Rows sampled for each victim beyond [`EXACT_EVICTION_ROWS`]: the rows from one random
/// position on. Row keys are digests, so neighbours in key order are as unrelated in
/// recency as rows picked at random; a neighbour costs nearly nothing where a random
/// position costs a walk to its leaf, read back from the index's files once sled has paged
/// it out. (A miss storm into a tier full at 30k objects: 4.4-4.9k misses/s with 16 random
/// positions per victim, 5.2-5.8k with one.)
const EVICTION_SAMPLES: usize = 16;
/// The oldest rows sampled so far, kept for the next victims (Redis's eviction pool):
/// each victim is then the oldest of many more rows than one round samples.
const EVICTION_POOL: usize = 16;
/// Ticks reserved in the index at a time (one write per this many uses).
const TICK_RESERVATION: u64 = 1 << 16;
/// The default tree's key holding the reserved ticks.
const RESERVED_TICKS_KEY: &[u8] = b"outpost:reserved-ticks";
/// The default tree's key holding the byte total at the last flush; removed at open, so
/// after a crash the totals are summed again rather than trusted.
const USAGE_KEY: &[u8] = b"outpost:usage-bytes";

/// A big-endian u64 from exactly eight bytes.
fn read_u64(bytes: Option<&[u8]>) -> Option<u64> {
    Some(u64::from_be_bytes(bytes?.try_into().ok()?))
}

/// Chooses rows to evict when there are too many to scan: random positions in the row
/// keys (digests, so uniformly spread) and a pool of the oldest rows seen.
struct EvictionSampler {
    rng: rand::rngs::SmallRng,
    /// (tick, row key), oldest first.
    pool: Vec<(u64, Vec<u8>)>,
}

/// A row's key in `entries`: the primary key, then the variant key unless it is
/// [`VariantKey::NONE`] (a response without Vary, most of them: 32 bytes less per row).
struct RowKey {
    bytes: [u8; 64],
    len: usize,
}

impl std::ops::Deref for RowKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn row_key(key: &PrimaryKey, variant: &VariantKey) -> RowKey {
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(&key.0);
    bytes[32..].copy_from_slice(&variant.0);
    let len = if *variant == VariantKey::NONE { 32 } else { 64 };
    RowKey { bytes, len }
}

/// The key earlier builds gave a row without Vary (the variant key in full), which may
/// still be in the index.
fn legacy_row_key(key: &PrimaryKey, variant: &VariantKey) -> Option<[u8; 64]> {
    let row = row_key(key, variant);
    (row.len == 32).then_some(row.bytes)
}

/// A packed body as its row records it: where it is, its length, and in rows written
/// before `DIGEST_PACKED_ROW` an XXH3-64 check. Rows written before the compact form also
/// kept the first eight bytes of its blake3 digest; a compact row has none, its metadata
/// (in the same row) names the digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedBody {
    at: PackedAt,
    len: u32,
    check: Option<u64>,
    digest_tag: Option<[u8; 8]>,
}

/// The byte that begins a packed-body record in a row of the earlier, fixed-width form
/// (metadata begins with `O` or a byte of 0xC0 and above; see `entry::encoding`).
const PACKED_ROW: u8 = b'P';
/// Bytes of a packed-body record in a row of the fixed-width form.
const PACKED_RECORD: usize = 29;
/// The first byte of a compact row without a packed body, and of one with (see
/// [`RowValue`]). A fixed-width row begins with its tick's high byte, always 0.
const COMPACT_ROW: u8 = 1;
const COMPACT_PACKED_ROW: u8 = 2;
/// The first byte of a compact row with a packed body and no check of its own: the body is
/// verified against the blake3 digest its metadata names. The check's eight bytes cost
/// about 20 bytes of index file per object (sled keeps a row about 2.4 times over), and
/// the digest is in the row anyway; verifying 8 KiB (`cache.disk_inline_max`) with blake3
/// costs a few microseconds more than with XXH3.
const DIGEST_PACKED_ROW: u8 = 3;

impl PackedBody {
    /// A body verified by its digest; `None` when the place or length do not fit the
    /// record (packs are far smaller).
    fn new(at: PackedAt, len: u64) -> Option<PackedBody> {
        u32::try_from(at.offset).ok()?;
        Some(PackedBody {
            at,
            len: u32::try_from(len).ok()?,
            check: None,
            digest_tag: None,
        })
    }

    fn record(self) -> BodyRecord {
        BodyRecord {
            check: self.check,
            place: BodyPlace::Packed(self.at),
        }
    }

    /// Whether this is the body of `meta`, the metadata of the same row (a compact record
    /// has no digest of its own to compare: see [`packed_body_of`] for other metadata).
    fn is_of_own(&self, meta: &EntryMeta) -> bool {
        u64::from(self.len) == meta.body_len
            && self
                .digest_tag
                .is_none_or(|tag| meta.body_digest[..8] == tag)
    }

    fn parse_fixed(bytes: &[u8]) -> Option<PackedBody> {
        let bytes = bytes.get(1..PACKED_RECORD)?;
        Some(PackedBody {
            at: PackedAt {
                pack: u32::from_be_bytes(bytes[..4].try_into().ok()?),
                offset: u64::from(u32::from_be_bytes(bytes[4..8].try_into().ok()?)),
            },
            len: u32::from_be_bytes(bytes[8..12].try_into().ok()?),
            check: Some(u64::from_be_bytes(bytes[12..20].try_into().ok()?)),
            digest_tag: Some(bytes[20..28].try_into().ok()?),
        })
    }
}

/// A row value. The compact form, written now: `COMPACT_ROW`, the tick (LEB128), the
/// encoded metadata; or `DIGEST_PACKED_ROW`, the tick, the packed body's pack, offset and
/// length (LEB128 each), the metadata; or, as earlier builds wrote it,
/// `COMPACT_PACKED_ROW` and the same with the body's check (8 bytes) before the metadata.
/// The fixed-width form earlier builds wrote, still read: the tick (8 bytes, big-endian),
/// then for a packed body its record (`PACKED_RECORD` bytes, beginning `PACKED_ROW`), the
/// metadata. A packed 1 KiB object's row is about 26 bytes shorter compact and without a
/// check, about 60 bytes of index file.
struct RowValue<'a> {
    tick: u64,
    packed: Option<PackedBody>,
    meta: &'a [u8],
}

fn split_row(value: &[u8]) -> Option<RowValue<'_>> {
    match *value.first()? {
        COMPACT_ROW => {
            let (tick, meta) = read_varint(&value[1..])?;
            Some(RowValue {
                tick,
                packed: None,
                meta,
            })
        }
        tag @ (COMPACT_PACKED_ROW | DIGEST_PACKED_ROW) => {
            let (tick, rest) = read_varint(&value[1..])?;
            let (pack, rest) = read_varint(rest)?;
            let (offset, rest) = read_varint(rest)?;
            let (len, rest) = read_varint(rest)?;
            let (check, meta) = if tag == COMPACT_PACKED_ROW {
                let (check, meta) = rest.split_at_checked(8)?;
                (Some(u64::from_be_bytes(check.try_into().ok()?)), meta)
            } else {
                (None, rest)
            };
            let packed = PackedBody {
                at: PackedAt {
                    pack: u32::try_from(pack).ok()?,
                    offset,
                },
                len: u32::try_from(len).ok()?,
                check,
                digest_tag: None,
            };
            Some(RowValue {
                tick,
                packed: Some(packed),
                meta,
            })
        }
        _ => {
            let (tick, rest) = value.split_at_checked(8)?;
            let tick = u64::from_be_bytes(tick.try_into().ok()?);
            let (packed, meta) = match rest.first() {
                Some(&PACKED_ROW) => (
                    Some(PackedBody::parse_fixed(rest)?),
                    rest.get(PACKED_RECORD..)?,
                ),
                _ => (None, rest),
            };
            Some(RowValue { tick, packed, meta })
        }
    }
}

/// A row value in the compact form (see [`RowValue`]).
fn row_value(tick: u64, packed: Option<&PackedBody>, meta: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + 4 * 10 + 8 + meta.len());
    match packed {
        None => {
            value.push(COMPACT_ROW);
            write_varint(&mut value, tick);
        }
        Some(packed) => {
            value.push(match packed.check {
                Some(_) => COMPACT_PACKED_ROW,
                None => DIGEST_PACKED_ROW,
            });
            write_varint(&mut value, tick);
            write_varint(&mut value, u64::from(packed.at.pack));
            write_varint(&mut value, packed.at.offset);
            write_varint(&mut value, u64::from(packed.len));
            if let Some(check) = packed.check {
                value.extend_from_slice(&check.to_be_bytes());
            }
        }
    }
    value.extend_from_slice(meta);
    value
}

fn tick_of(value: &[u8]) -> Option<u64> {
    match *value.first()? {
        COMPACT_ROW | COMPACT_PACKED_ROW | DIGEST_PACKED_ROW => Some(read_varint(&value[1..])?.0),
        _ => Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?)),
    }
}

/// `value` with its tick replaced by `tick` (in the compact form).
fn with_tick(value: &[u8], tick: u64) -> Option<Vec<u8>> {
    let row = split_row(value)?;
    Some(row_value(tick, row.packed.as_ref(), row.meta))
}

/// Appends `number` as LEB128 (seven bits a byte, low first).
fn write_varint(out: &mut Vec<u8>, mut number: u64) {
    while number >= 0x80 {
        out.push((number as u8 & 0x7f) | 0x80);
        number >>= 7;
    }
    out.push(number as u8);
}

/// A LEB128 number from the start of `bytes`, and the bytes after it; `None` when it is
/// cut short or longer than a u64.
fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut number = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * index as u32;
        if shift == 63 && bits > 1 {
            return None;
        }
        number |= bits << shift;
        if byte & 0x80 == 0 {
            return Some((number, &bytes[index + 1..]));
        }
    }
    None
}

/// The packed body the row stored under `row` records, if it is the body of `meta` (which
/// may be metadata read earlier: the row may have been replaced since, by one with another
/// body). A compact record is checked against the row's own metadata.
fn packed_body_of(row: &[u8], value: &[u8], meta: &EntryMeta) -> Option<PackedBody> {
    let packed = split_row(value)?.packed?;
    if u64::from(packed.len) != meta.body_len {
        return None;
    }
    let same = match packed.digest_tag {
        Some(tag) => meta.body_digest[..8] == tag,
        None => decode_row(row, value)?.1.body_digest == meta.body_digest,
    };
    same.then_some(packed)
}

/// The tick and metadata of the row stored under `row` (see [`row_key`]).
fn decode_row(row: &[u8], value: &[u8]) -> Option<(u64, EntryMeta)> {
    let RowValue { tick, meta, .. } = split_row(value)?;
    let (key, variant) = row.split_at_checked(32)?;
    let key = PrimaryKey(key.try_into().ok()?);
    let variant = match variant {
        [] => VariantKey::NONE,
        variant => VariantKey(variant.try_into().ok()?),
    };
    Some((tick, EntryMeta::decode(meta, &key, &variant).ok()?))
}

/// A body's record in `blobs`: references, bytes it occupies, and its check (20 bytes;
/// records written before checks existed are 12 bytes and have none).
#[derive(Debug, Clone, Copy, PartialEq)]
struct BlobRecord {
    refs: u32,
    size: u64,
    check: Option<u64>,
}

impl BlobRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        out.extend_from_slice(&self.refs.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        if let Some(check) = self.check {
            out.extend_from_slice(&check.to_be_bytes());
        }
        out
    }

    fn parse(value: &[u8]) -> Option<BlobRecord> {
        let refs = u32::from_be_bytes(value.get(..4)?.try_into().ok()?);
        let size = u64::from_be_bytes(value.get(4..12)?.try_into().ok()?);
        let check = match value.len() {
            12 => None,
            20 => Some(u64::from_be_bytes(value.get(12..20)?.try_into().ok()?)),
            _ => return None,
        };
        Some(BlobRecord { refs, size, check })
    }

    /// The same record with `refs` references.
    fn with_refs(self, refs: u32) -> BlobRecord {
        BlobRecord { refs, ..self }
    }
}

fn primary_of(row: &[u8]) -> Option<PrimaryKey> {
    row.get(..32)
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .map(PrimaryKey)
}

/// How long an open waits for an index lock still held by a closing instance.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the sled database in `dir`. sled releases its lock file from a background thread a
/// moment after the last handle is dropped, so an instance reopened at once (a restart in
/// the same process) can find it still locked: that, and only that, is retried for a while.
fn open_db(dir: &std::path::Path) -> Result<sled::Db, DiskError> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_CAPACITY)
            .flush_every_ms(Some(200))
            .open();
        match opened {
            Err(sled::Error::Io(err))
                if err.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_PATIENCE =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

impl SledIndex {
    /// Opens (or creates) the index in `dir` without reading any row or body: the totals
    /// are those recorded at the last flush (or summed from the body records for an index
    /// written before totals were recorded), until the sweep recounts.
    ///
    /// # Errors
    /// An index sled cannot open (corrupt, or open in another process).
    pub fn open(dir: &std::path::Path) -> Result<SledIndex, DiskError> {
        let db = open_db(dir)?;
        let has_tree = |name: &str| {
            db.tree_names()
                .iter()
                .any(|tree| tree.as_ref() == name.as_bytes())
        };
        let (had_recency, had_inline) = (has_tree("recency"), has_tree("inline"));
        let entries = db.open_tree("entries")?;
        let blobs = db.open_tree("blobs")?;
        let block_digests = db.open_tree("blocks")?;
        let notes = db.open_tree("notes")?;
        let legacy_inline = match had_inline {
            true => Some(db.open_tree("inline")?).filter(|tree| !tree.is_empty()),
            false => None,
        };
        let mut next_tick = read_u64(db.get(RESERVED_TICKS_KEY)?.as_deref()).unwrap_or(1);
        if had_recency {
            // An earlier build's replacement order: its last tick is where ours go on.
            let recency = db.open_tree("recency")?;
            if let Some((key, _)) = recency.last()? {
                next_tick = next_tick.max(read_u64(key.get(..8)).unwrap_or(0) + 1);
            }
            drop(recency);
            db.drop_tree("recency")?;
        }
        let rows = entries.len() as u64;
        let bytes = match read_u64(db.get(USAGE_KEY)?.as_deref()) {
            Some(bytes) => bytes,
            None => {
                let mut bytes = 0u64;
                for item in blobs.iter() {
                    let (_, value) = item?;
                    if let Some(record) = BlobRecord::parse(&value) {
                        bytes += record.size;
                    }
                }
                // Row sizes are not summed at open (that would read every row); an
                // allowance per row stands in until the sweep recounts.
                bytes + rows * (ROW_OVERHEAD + 512)
            }
        };
        let own_size = db.size_on_disk().unwrap_or(0);
        let index = SledIndex {
            own_size: parking_lot::Mutex::new((std::time::Instant::now(), own_size)),
            eviction: parking_lot::Mutex::new(EvictionSampler {
                rng: rand::SeedableRng::seed_from_u64(next_tick),
                pool: Vec::new(),
            }),
            db,
            entries,
            blobs,
            block_digests,
            legacy_inline,
            notes,
            next_tick: AtomicU64::new(next_tick),
            reserved_ticks: AtomicU64::new(next_tick),
            bytes: AtomicU64::new(bytes),
            rows: AtomicU64::new(rows),
        };
        // A crash from here on leaves totals to be recounted, not believed.
        index.db.remove(USAGE_KEY)?;
        Ok(index)
    }

    /// The variant rows and the bytes of their keys and values: what the index holds live,
    /// before sled's own structures and the dead space its files keep until a segment is
    /// cleaned. Reads every row (for the disk bench, which sets it beside the files' size).
    ///
    /// # Errors
    /// A read sled fails.
    pub fn row_bytes(&self) -> Result<(u64, u64), DiskError> {
        let mut totals = (0, 0);
        for item in self.entries.iter() {
            let (key, value) = item?;
            totals.0 += 1;
            totals.1 += (key.len() + value.len()) as u64;
        }
        Ok(totals)
    }

    /// The next tick; every [`TICK_RESERVATION`] ticks, the index records how far ticks
    /// may go before it records again, so a reopened index starts past every tick used.
    fn tick(&self) -> Result<u64, DiskError> {
        let tick = self.next_tick.fetch_add(1, Ordering::Relaxed);
        if tick >= self.reserved_ticks.load(Ordering::Relaxed) {
            let reserved = tick + TICK_RESERVATION;
            self.db
                .insert(RESERVED_TICKS_KEY, &reserved.to_be_bytes())?;
            self.reserved_ticks.store(reserved, Ordering::Relaxed);
        }
        Ok(tick)
    }

    /// Counts a row rewritten from `before` to `after` bytes (a varint tick grown, or a
    /// fixed-width row written again in the compact form).
    fn row_resized(&self, (before, after): (usize, usize)) {
        match after.checked_sub(before) {
            Some(grown) => {
                self.bytes.fetch_add(grown as u64, Ordering::Relaxed);
            }
            None => self.sub_bytes((before - after) as u64),
        }
    }

    fn sub_bytes(&self, amount: u64) {
        let current = self.bytes.load(Ordering::Relaxed);
        self.bytes.fetch_sub(amount.min(current), Ordering::Relaxed);
    }

    /// Unindexes one row and releases its body.
    fn remove_row(&self, row: &[u8]) -> Result<(bool, Released), DiskError> {
        let Some(value) = self.entries.remove(row)? else {
            return Ok((false, Released::default()));
        };
        self.rows.fetch_sub(1, Ordering::Relaxed);
        self.sub_bytes(value.len() as u64 + ROW_OVERHEAD);
        if let Some(packed) = split_row(&value).and_then(|row| row.packed) {
            // The row's own body: nobody else references it.
            self.sub_bytes(u64::from(packed.len));
            let released = Released {
                files: Vec::new(),
                packed: vec![(packed.at, u64::from(packed.len))],
            };
            return Ok((true, released));
        }
        let released = match decode_row(row, &value) {
            Some((_, meta)) => self.release_body(&meta.body_digest)?,
            None => Released::default(),
        };
        Ok((true, released))
    }

    /// Drops one reference to a body; the last one releases it.
    fn release_body(&self, digest: &[u8; 32]) -> Result<Released, DiskError> {
        let Some(value) = self.blobs.get(digest)? else {
            return Ok(Released::default());
        };
        let record = BlobRecord::parse(&value).unwrap_or(BlobRecord {
            refs: 1,
            size: 0,
            check: None,
        });
        if record.refs > 1 {
            self.blobs
                .insert(digest, record.with_refs(record.refs - 1).encode())?;
            return Ok(Released::default());
        }
        self.blobs.remove(digest)?;
        self.block_digests.remove(digest)?;
        self.sub_bytes(record.size);
        let kept_in_index = match &self.legacy_inline {
            Some(tree) => tree.remove(digest)?.is_some(),
            None => false,
        };
        let mut released = Released::default();
        // A body kept in the index has no file to delete.
        if !kept_in_index {
            released.files.push(*digest);
        }
        Ok(released)
    }

    /// Writes `meta`'s row with a new tick (and its packed body's record, if any),
    /// replacing the row of the same variant, and releases the body the replaced row
    /// referenced.
    fn put_row(
        &self,
        meta: &EntryMeta,
        packed: Option<&PackedBody>,
    ) -> Result<Released, DiskError> {
        let row = row_key(&meta.key, &meta.variant);
        let (_, mut released) = self.remove_row(&row)?;
        if let Some(legacy) = legacy_row_key(&meta.key, &meta.variant) {
            released.add(self.remove_row(&legacy)?.1);
        }
        let tick = self.tick()?;
        let value = row_value(tick, packed, &meta.encode());
        let body_here = packed.map_or(0, |packed| u64::from(packed.len));
        self.bytes.fetch_add(
            value.len() as u64 + ROW_OVERHEAD + body_here,
            Ordering::Relaxed,
        );
        self.entries.insert(&*row, value)?;
        self.rows.fetch_add(1, Ordering::Relaxed);
        Ok(released)
    }

    /// The key and value of the row of `key`'s `variant` (under its key, or the longer key
    /// an earlier build gave it).
    fn find_row(
        &self,
        key: &PrimaryKey,
        variant: &VariantKey,
    ) -> Result<Option<(Vec<u8>, sled::IVec)>, DiskError> {
        let short = row_key(key, variant);
        let legacy = legacy_row_key(key, variant);
        for row in std::iter::once(&short[..]).chain(legacy.as_ref().map(|l| &l[..])) {
            if let Some(value) = self.entries.get(row)? {
                return Ok(Some((row.to_vec(), value)));
            }
        }
        Ok(None)
    }

    /// The row to evict next: the least recently used one, exactly when there are few
    /// rows; among many, the oldest of the rows sampled at random positions this round
    /// and the oldest ones kept from earlier rounds, checked to be unchanged since seen.
    /// With 16 samples a round and a pool of 16, a victim is older than nearly every row
    /// (Redis's approximated LRU, measured there to track true LRU closely).
    fn eviction_victim(&self) -> Result<Option<Vec<u8>>, DiskError> {
        if self.rows.load(Ordering::Relaxed) <= EXACT_EVICTION_ROWS {
            let mut oldest: Option<(u64, sled::IVec)> = None;
            for item in self.entries.iter() {
                let (row, value) = item?;
                let tick = tick_of(&value).unwrap_or(0);
                if oldest.as_ref().is_none_or(|(oldest, _)| tick < *oldest) {
                    oldest = Some((tick, row));
                }
            }
            return Ok(oldest.map(|(_, row)| row.to_vec()));
        }
        let mut sampler = self.eviction.lock();
        // A second round at most: the first empties the pool of candidates used since
        // they were sampled, so the second's candidates are all as just seen (the caller's
        // lock keeps rows from changing meanwhile).
        for _round in 0..2 {
            let start: [u8; 32] = rand::Rng::random(&mut sampler.rng);
            // From the position to the end of the keys, then on from the first.
            let run = self
                .entries
                .range(start..)
                .chain(self.entries.iter())
                .take(EVICTION_SAMPLES);
            let mut sampled_any = false;
            for item in run {
                let (row, value) = item?;
                sampled_any = true;
                let tick = tick_of(&value).unwrap_or(0);
                match sampler
                    .pool
                    .iter_mut()
                    .find(|(_, pooled)| pooled[..] == row[..])
                {
                    Some(pooled) => pooled.0 = tick,
                    None => sampler.pool.push((tick, row.to_vec())),
                }
            }
            if !sampled_any {
                return Ok(None);
            }
            sampler.pool.sort_unstable_by_key(|(tick, _)| *tick);
            sampler.pool.truncate(EVICTION_POOL);
            while !sampler.pool.is_empty() {
                let (tick, row) = sampler.pool.remove(0);
                // Touched or replaced since it was sampled: no longer a candidate.
                let current = self.entries.get(&row)?;
                if current.as_deref().and_then(tick_of) == Some(tick) {
                    return Ok(Some(row));
                }
            }
        }
        Ok(None)
    }
}

impl DiskIndex for SledIndex {
    fn variants(&self, key: &PrimaryKey) -> Result<(Vec<StoredVariant>, Released), DiskError> {
        let mut out = Vec::new();
        let mut undecodable = Vec::new();
        for item in self.entries.scan_prefix(key.0) {
            let (row, value) = item?;
            match decode_row(&row, &value) {
                Some((_, meta)) => {
                    let packed = split_row(&value)
                        .and_then(|row| row.packed)
                        .filter(|packed| packed.is_of_own(&meta))
                        .map(PackedBody::record);
                    out.push(StoredVariant { meta, packed });
                }
                None => undecodable.push(row),
            }
        }
        let mut released = Released::default();
        for row in undecodable {
            tracing::warn!("disk tier: removing an index row this build cannot read");
            released.add(self.remove_row(&row)?.1);
        }
        // Newest first, as the memory tier orders variants.
        out.sort_by_key(|variant| std::cmp::Reverse(variant.meta.freshness.response_time));
        Ok((out, released))
    }

    fn blocks(&self, digest: &[u8; 32]) -> Result<Option<Vec<[u8; 32]>>, DiskError> {
        let Some(value) = self.block_digests.get(digest)? else {
            return Ok(None);
        };
        if value.len() % 32 != 0 {
            return Ok(None);
        }
        Ok(Some(
            value
                .chunks_exact(32)
                .filter_map(|d| <[u8; 32]>::try_from(d).ok())
                .collect(),
        ))
    }

    fn has_body(&self, digest: &[u8; 32]) -> Result<bool, DiskError> {
        Ok(self.blobs.contains_key(digest)?)
    }

    fn add_body(
        &self,
        digest: &[u8; 32],
        len: u64,
        blocks: &[[u8; 32]],
        check: u64,
    ) -> Result<(), DiskError> {
        if !blocks.is_empty() {
            self.block_digests.insert(digest, blocks.concat())?;
        }
        let record = BlobRecord {
            refs: 0,
            size: len,
            check: Some(check),
        };
        self.blobs.insert(digest, record.encode())?;
        self.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn body_record(&self, meta: &EntryMeta) -> Result<Option<BodyRecord>, DiskError> {
        let digest = &meta.body_digest;
        let Some(value) = self.blobs.get(digest)? else {
            // Not a file: a packed body, recorded in the row itself.
            let Some((row, value)) = self.find_row(&meta.key, &meta.variant)? else {
                return Ok(None);
            };
            return Ok(packed_body_of(&row, &value, meta).map(PackedBody::record));
        };
        let Some(record) = BlobRecord::parse(&value) else {
            return Err(DiskError::Inconsistent("an unreadable body record"));
        };
        let place = match &self.legacy_inline {
            Some(tree) => match tree.get(digest)? {
                Some(body) => BodyPlace::InIndex(bytes::Bytes::copy_from_slice(&body)),
                None => BodyPlace::File,
            },
            None => BodyPlace::File,
        };
        Ok(Some(BodyRecord {
            check: record.check,
            place,
        }))
    }

    fn insert(&self, meta: &EntryMeta) -> Result<Released, DiskError> {
        let digest = meta.body_digest;
        let Some(record) = self.blobs.get(digest)?.and_then(|r| BlobRecord::parse(&r)) else {
            return Err(DiskError::Inconsistent(
                "a row for a body that is not recorded",
            ));
        };
        // The new reference first, then the replaced row's release: replacing a row with
        // the same body (a freshened response) never drops its count to zero.
        self.blobs
            .insert(digest, record.with_refs(record.refs + 1).encode())?;
        self.put_row(meta, None)
    }

    fn insert_packed(&self, meta: &EntryMeta, at: PackedAt) -> Result<Released, DiskError> {
        let packed = PackedBody::new(at, meta.body_len)
            .ok_or(DiskError::Inconsistent("a packed body beyond 4 GiB"))?;
        self.put_row(meta, Some(&packed))
    }

    fn reindex_packed(&self, meta: &EntryMeta) -> Result<Option<Released>, DiskError> {
        let Some((row, value)) = self.find_row(&meta.key, &meta.variant)? else {
            return Ok(None);
        };
        let Some(packed) = packed_body_of(&row, &value, meta) else {
            return Ok(None);
        };
        // The body stays where it is: the old row goes without releasing it.
        if self.entries.remove(&row[..])?.is_some() {
            self.rows.fetch_sub(1, Ordering::Relaxed);
            self.sub_bytes(value.len() as u64 + ROW_OVERHEAD + u64::from(packed.len));
        }
        self.put_row(meta, Some(&packed)).map(Some)
    }

    fn packed_in(&self, pack: u32) -> Result<Vec<(Vec<u8>, PackedAt, u64)>, DiskError> {
        let mut found = Vec::new();
        for item in self.entries.iter() {
            let (row, value) = item?;
            if let Some(packed) = split_row(&value).and_then(|row| row.packed) {
                if packed.at.pack == pack {
                    found.push((row.to_vec(), packed.at, u64::from(packed.len)));
                }
            }
        }
        Ok(found)
    }

    fn move_packed(&self, row: &[u8], from: PackedAt, to: PackedAt) -> Result<bool, DiskError> {
        let Some(value) = self.entries.get(row)? else {
            return Ok(false);
        };
        let Some(RowValue {
            tick,
            packed: Some(packed),
            meta,
        }) = split_row(&value)
        else {
            return Ok(false);
        };
        if packed.at != from {
            return Ok(false);
        }
        let moved = PackedBody { at: to, ..packed };
        let updated = row_value(tick, Some(&moved), meta);
        let resized = (value.len(), updated.len());
        self.entries.insert(row, updated)?;
        self.row_resized(resized);
        Ok(true)
    }

    fn live_in_packs(&self) -> Result<std::collections::HashMap<u32, u64>, DiskError> {
        let mut live = std::collections::HashMap::new();
        for item in self.entries.iter() {
            let (_, value) = item?;
            if let Some(packed) = split_row(&value).and_then(|row| row.packed) {
                *live.entry(packed.at.pack).or_insert(0) += u64::from(packed.len);
            }
        }
        Ok(live)
    }

    fn remove(&self, key: &PrimaryKey) -> Result<(usize, Released), DiskError> {
        let rows: Vec<_> = self
            .entries
            .scan_prefix(key.0)
            .keys()
            .collect::<Result<_, _>>()?;
        let mut removed = 0;
        let mut released = Released::default();
        for row in rows {
            let (was_there, freed) = self.remove_row(&row)?;
            removed += usize::from(was_there);
            released.add(freed);
        }
        Ok((removed, released))
    }

    fn remove_variant(
        &self,
        key: &PrimaryKey,
        variant: &VariantKey,
    ) -> Result<Released, DiskError> {
        let (_, mut released) = self.remove_row(&row_key(key, variant))?;
        if let Some(legacy) = legacy_row_key(key, variant) {
            released.add(self.remove_row(&legacy)?.1);
        }
        Ok(released)
    }

    fn touch(&self, key: &PrimaryKey, variant: &VariantKey) -> Result<(), DiskError> {
        let Some((row, value)) = self.find_row(key, variant)? else {
            return Ok(());
        };
        let Some(old_tick) = tick_of(&value) else {
            return Ok(());
        };
        // Already among the most recent quarter of rows: moving it again changes nothing
        // eviction would notice, and costs an index write.
        let newest = self.next_tick.load(Ordering::Relaxed);
        if newest.saturating_sub(old_tick) < self.rows.load(Ordering::Relaxed) / 4 + 1 {
            return Ok(());
        }
        let tick = self.tick()?;
        let Some(updated) = with_tick(&value, tick) else {
            return Ok(());
        };
        let resized = (value.len(), updated.len());
        self.entries.insert(row, updated)?;
        self.row_resized(resized);
        Ok(())
    }

    fn evict_over(
        &self,
        capacity: u64,
        max_rows: u64,
    ) -> Result<(Vec<PrimaryKey>, Released), DiskError> {
        let mut evicted = Vec::new();
        let mut released = Released::default();
        while self.bytes.load(Ordering::Relaxed) > capacity
            || self.rows.load(Ordering::Relaxed) > max_rows
        {
            let Some(row) = self.eviction_victim()? else {
                break;
            };
            let (was_there, freed) = self.remove_row(&row)?;
            released.add(freed);
            if let Some(primary) = primary_of(&row).filter(|_| was_there) {
                evicted.push(primary);
            }
        }
        Ok((evicted, released))
    }

    fn keys_where(
        &self,
        predicate: &dyn Fn(&EntryMeta) -> bool,
    ) -> Result<Vec<PrimaryKey>, DiskError> {
        let mut keys = Vec::new();
        for item in self.entries.iter() {
            let (row, value) = item?;
            let Some((_, meta)) = decode_row(&row, &value) else {
                continue;
            };
            if predicate(&meta) {
                if let Some(key) = primary_of(&row).filter(|key| keys.last() != Some(key)) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }

    fn sweep_rows(
        &self,
        is_doomed: &dyn Fn(&EntryMeta) -> bool,
        serialise: &parking_lot::Mutex<()>,
    ) -> Result<(RowSweep, Released), DiskError> {
        let mut sweep = RowSweep::default();
        let mut doomed = Vec::new();
        for item in self.entries.iter() {
            let (row, value) = item?;
            match decode_row(&row, &value) {
                Some((_, meta)) if !is_doomed(&meta) => {}
                Some(_) => {
                    sweep.without_body += 1;
                    doomed.push((row, value));
                }
                None => {
                    sweep.undecodable += 1;
                    doomed.push((row, value));
                }
            }
        }
        let mut released = Released::default();
        for (row, seen) in doomed {
            let _serialised = serialise.lock();
            if self.entries.get(&row)?.as_ref() == Some(&seen) {
                released.add(self.remove_row(&row)?.1);
            }
        }
        Ok((sweep, released))
    }

    fn recount(&self) -> Result<(), DiskError> {
        let mut bytes = 0u64;
        let mut rows = 0u64;
        for item in self.entries.iter() {
            let (_, value) = item?;
            rows += 1;
            bytes += value.len() as u64 + ROW_OVERHEAD;
            if let Some(packed) = split_row(&value).and_then(|row| row.packed) {
                bytes += u64::from(packed.len);
            }
        }
        for item in self.blobs.iter() {
            let (_, value) = item?;
            if let Some(record) = BlobRecord::parse(&value) {
                bytes += record.size;
            }
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.rows.store(rows, Ordering::Relaxed);
        Ok(())
    }

    fn usage(&self) -> (u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn own_size(&self) -> u64 {
        // sled sums its files' sizes: cheap, but not for every commit.
        let mut cached = self.own_size.lock();
        let (measured_at, size) = *cached;
        if measured_at.elapsed() >= std::time::Duration::from_secs(1) {
            let size = self.db.size_on_disk().unwrap_or(size);
            *cached = (std::time::Instant::now(), size);
            return size;
        }
        size
    }

    fn flush(&self) -> Result<(), DiskError> {
        // The total as of now, so the next open need not read every body record; it is
        // an estimate until that open's sweep recounts.
        let bytes = self.bytes.load(Ordering::Relaxed);
        self.db.insert(USAGE_KEY, &bytes.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    fn put_notes(&self, notes: &[(Vec<u8>, Vec<u8>)]) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        let mut changed = 0usize;
        for (key, value) in notes {
            // A new version of an index repeats most of the last one's records (and one
            // suite under two names, all of them): reading a record is cheaper than
            // writing it again.
            if self
                .notes
                .get(key)?
                .is_some_and(|stored| stored == value[..])
            {
                continue;
            }
            batch.insert(key.as_slice(), value.as_slice());
            changed += 1;
        }
        if changed > 0 {
            self.notes.apply_batch(batch)?;
        }
        Ok(())
    }

    fn note(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.notes.get(key)?.map(|value| value.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::testing::entry;

    /// Notes put again: unchanged ones are left as they are, changed ones replaced, new
    /// ones added, and all of them survive a reopen.
    #[test]
    fn notes_put_again_keep_the_newest_values() {
        let dir = tempfile::tempdir().unwrap();
        let note = |key: &str, value: &str| (key.as_bytes().to_vec(), value.as_bytes().to_vec());
        {
            let index = SledIndex::open(dir.path()).unwrap();
            index.put_notes(&[note("a", "1"), note("b", "1")]).unwrap();
            index
                .put_notes(&[note("a", "1"), note("b", "2"), note("c", "1")])
                .unwrap();
            index.put_notes(&[note("a", "1")]).unwrap();
            index.flush().unwrap();
        }
        let index = SledIndex::open(dir.path()).unwrap();
        for (key, value) in [("a", "1"), ("b", "2"), ("c", "1")] {
            assert_eq!(
                index.note(key.as_bytes()).unwrap().as_deref(),
                Some(value.as_bytes())
            );
        }
    }

    /// Records written before checks existed (12 bytes) still parse, have no check (their
    /// readers fall back to the blake3 digest), and keep having none as references move;
    /// junk is refused.
    #[test]
    fn blob_records_with_and_without_a_check() {
        let dir = tempfile::tempdir().unwrap();
        let index = SledIndex::open(dir.path()).unwrap();
        let mut meta = entry("/file", "a body in a file").meta;
        let digest = meta.body_digest;
        index.add_body(&digest, 4096, &[], 0xfeed).unwrap();
        let record = index.body_record(&meta).unwrap().unwrap();
        assert_eq!(
            (record.check, record.place),
            (Some(0xfeed), BodyPlace::File)
        );
        let legacy = BlobRecord {
            refs: 2,
            size: 4096,
            check: None,
        };
        assert_eq!(legacy.encode().len(), 12);
        index.blobs.insert(digest, legacy.encode()).unwrap();
        assert_eq!(index.body_record(&meta).unwrap().unwrap().check, None);
        let moved = BlobRecord::parse(&legacy.with_refs(3).encode()).unwrap();
        assert_eq!(moved, legacy.with_refs(3));
        assert_eq!(BlobRecord::parse(&[0; 13]), None);
        meta.body_digest = [4; 32];
        assert_eq!(index.body_record(&meta).unwrap(), None, "not recorded");
    }

    /// A packed body's record lives in its row: read back, kept when only the headers
    /// change, moved by compaction, and not taken for another body's once the row is
    /// replaced.
    #[test]
    fn packed_bodies_are_recorded_in_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let index = SledIndex::open(dir.path()).unwrap();
        let first = entry("/p", "first body").meta;
        let at = PackedAt {
            pack: 3,
            offset: 1 << 20,
        };
        assert!(index.insert_packed(&first, at).unwrap().is_empty());
        let record = index.body_record(&first).unwrap().unwrap();
        assert_eq!(
            (record.check, record.place),
            (None, BodyPlace::Packed(at)),
            "verified by the digest in its row"
        );
        // New headers, same body: the row keeps its place, nothing is released.
        let mut freshened = first.clone();
        freshened.url.push_str("?fresh");
        assert!(index
            .reindex_packed(&freshened)
            .unwrap()
            .unwrap()
            .is_empty());
        let (metas, _) = index.variants(&first.key).unwrap();
        let metas: Vec<EntryMeta> = metas.into_iter().map(|v| v.meta).collect();
        assert_eq!(metas[0].url, freshened.url);
        assert_eq!(index.packed_in(3).unwrap().len(), 1);
        let row = index.packed_in(3).unwrap().remove(0).0;
        let to = PackedAt { pack: 4, offset: 0 };
        assert!(index.move_packed(&row, at, to).unwrap());
        assert!(
            !index.move_packed(&row, at, to).unwrap(),
            "not there any more"
        );
        assert_eq!(index.live_in_packs().unwrap(), [(4, 10)].into());
        // Replaced by another body: the old metadata finds no body for it.
        let second = entry("/p", "another body").meta;
        let released = index.insert_packed(&second, at).unwrap();
        assert_eq!(released.packed, vec![(to, 10)]);
        assert_eq!(index.body_record(&first).unwrap(), None);
        assert!(index.reindex_packed(&first).unwrap().is_none());
        assert_eq!(index.usage().0, 1);
    }

    /// Rows of the fixed-width form an earlier build wrote (8-byte tick, 29-byte packed
    /// record) are read, found for their metadata and not for another body's, and written
    /// again in the compact form when touched, which is shorter and counted as such.
    #[test]
    fn fixed_width_rows_are_read_and_rewritten_compact() {
        let dir = tempfile::tempdir().unwrap();
        let index = SledIndex::open(dir.path()).unwrap();
        let stored = entry("/fixed", "a packed body").meta;
        let at = PackedAt {
            pack: 7,
            offset: 4096,
        };
        let mut fixed = 5u64.to_be_bytes().to_vec();
        fixed.push(PACKED_ROW);
        fixed.extend_from_slice(&at.pack.to_be_bytes());
        fixed.extend_from_slice(&(at.offset as u32).to_be_bytes());
        fixed.extend_from_slice(&(stored.body_len as u32).to_be_bytes());
        fixed.extend_from_slice(&99u64.to_be_bytes());
        fixed.extend_from_slice(&stored.body_digest[..8]);
        fixed.extend_from_slice(&stored.encode());
        let row = row_key(&stored.key, &stored.variant);
        index.entries.insert(&*row, fixed.clone()).unwrap();
        index.recount().unwrap();

        let record = index.body_record(&stored).unwrap().unwrap();
        assert_eq!(
            record,
            PackedBody {
                check: Some(99),
                ..PackedBody::new(at, stored.body_len).unwrap()
            }
            .record()
        );
        let (variants, _) = index.variants(&stored.key).unwrap();
        assert_eq!(variants[0].packed, Some(record.clone()));
        let mut other = stored.clone();
        other.body_digest = [9; 32];
        assert_eq!(index.body_record(&other).unwrap(), None, "another body");

        // Far from the newest tick, so that the touch moves it.
        index.next_tick.store(1 << 20, Ordering::Relaxed);
        index.touch(&stored.key, &stored.variant).unwrap();
        let compact = index.entries.get(&*row).unwrap().unwrap();
        assert_eq!(compact[0], COMPACT_PACKED_ROW);
        assert!(
            compact.len() + 15 < fixed.len(),
            "{} vs {}",
            compact.len(),
            fixed.len()
        );
        assert_eq!(tick_of(&compact), Some(1 << 20));
        assert_eq!(index.body_record(&stored).unwrap(), Some(record));
        assert_eq!(index.body_record(&other).unwrap(), None, "another body");
        let counted = index.usage();
        index.recount().unwrap();
        assert_eq!(index.usage(), counted, "the shorter row was counted");
    }

    /// LEB128 numbers round-trip at their edges; cut or overlong ones are refused, and no
    /// row value, however damaged, panics when split.
    #[test]
    fn varints_round_trip_and_damaged_rows_are_refused() {
        for number in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut bytes = Vec::new();
            write_varint(&mut bytes, number);
            bytes.push(0xAA);
            assert_eq!(read_varint(&bytes), Some((number, &[0xAA][..])));
        }
        assert_eq!(read_varint(&[0x80, 0x80]), None, "cut short");
        assert_eq!(read_varint(&[0xFF; 10]), None, "beyond 64 bits");
        assert_eq!(
            read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]),
            None
        );
        let by_digest = PackedBody::new(PackedAt { pack: 1, offset: 2 }, 3).unwrap();
        let checked = PackedBody {
            check: Some(4),
            ..by_digest
        };
        for packed in [by_digest, checked] {
            let value = row_value(300, Some(&packed), b"meta");
            for cut in 0..value.len() {
                let _ = split_row(&value[..cut]);
                let _ = tick_of(&value[..cut]);
            }
            let whole = split_row(&value).unwrap();
            assert_eq!(
                (whole.tick, whole.packed, whole.meta),
                (300, Some(packed), &b"meta"[..])
            );
        }
        assert_eq!(
            row_value(300, Some(&checked), b"meta").len(),
            row_value(300, Some(&by_digest), b"meta").len() + 8
        );
    }

    /// Rows stored with small (packed) bodies, the ticks of rows `0..count` in order.
    fn fill(index: &SledIndex, count: usize) -> Vec<EntryMeta> {
        (0..count)
            .map(|n| {
                let stored = entry(&format!("/{n}"), format!("body {n}"));
                let at = PackedAt {
                    pack: 1,
                    offset: n as u64 * 16,
                };
                let released = index.insert_packed(&stored.meta, at).unwrap();
                assert!(released.is_empty());
                stored.meta
            })
            .collect()
    }

    /// Among many rows (beyond an exact scan), eviction samples: what it removes is old.
    /// Of 4,000 rows, evicting about a tenth removes none of the newest half and none of
    /// the rows touched since they were stored, and mostly rows among the oldest fifth.
    #[test]
    fn sampled_eviction_removes_old_rows() {
        let dir = tempfile::tempdir().unwrap();
        let index = SledIndex::open(dir.path()).unwrap();
        let count = 4000;
        let metas = fill(&index, count);
        // Rows 0..100 are used again: they become the most recent.
        for meta in &metas[..100] {
            index.touch(&meta.key, &meta.variant).unwrap();
        }
        let (_, bytes) = index.usage();
        let (evicted, released) = index.evict_over(bytes - bytes / 10, u64::MAX).unwrap();
        assert!(released.files.is_empty(), "small bodies have no files");
        assert_eq!(released.packed.len(), evicted.len());
        assert!(evicted.len() >= count / 11, "{} evicted", evicted.len());
        let age_of = |key: &PrimaryKey| metas.iter().position(|meta| meta.key == *key).unwrap();
        let ages: Vec<usize> = evicted.iter().map(age_of).collect();
        assert!(
            ages.iter().all(|&age| (100..count / 2).contains(&age)),
            "{ages:?}"
        );
        let among_oldest_fifth = ages.iter().filter(|&&age| age < count / 5).count();
        assert!(among_oldest_fifth * 10 >= ages.len() * 9, "{ages:?}");
        assert_eq!(index.usage().0, (count - evicted.len()) as u64);
    }

    /// An index written by an earlier build: its replacement order gives the next tick and
    /// goes; bodies it kept in a tree of their own are read and released from there.
    #[test]
    fn an_earlier_builds_index_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let stored = entry("/old", "an old small body");
        let digest = stored.meta.body_digest;
        {
            let db = open_db(dir.path()).unwrap();
            let record = BlobRecord {
                refs: 1,
                size: 100,
                check: Some(42),
            };
            db.open_tree("blobs")
                .unwrap()
                .insert(digest, record.encode())
                .unwrap();
            db.open_tree("inline")
                .unwrap()
                .insert(digest, &b"an old small body"[..])
                .unwrap();
            // Earlier builds keyed every row by primary and variant key in full.
            let mut row = stored.meta.key.0.to_vec();
            row.extend_from_slice(&stored.meta.variant.0);
            let mut value = 500u64.to_be_bytes().to_vec();
            value.extend_from_slice(&stored.meta.encode());
            db.open_tree("entries")
                .unwrap()
                .insert(&row[..], value)
                .unwrap();
            let mut recency = 500u64.to_be_bytes().to_vec();
            recency.extend_from_slice(&row);
            db.open_tree("recency")
                .unwrap()
                .insert(recency, &[][..])
                .unwrap();
            db.flush().unwrap();
        }
        let index = reopen(dir.path());
        assert!(!index
            .db
            .tree_names()
            .iter()
            .any(|name| name.as_ref() == b"recency"));
        assert_eq!(index.tick().unwrap(), 501);
        let record = index.body_record(&stored.meta).unwrap().unwrap();
        assert_eq!(record.check, Some(42));
        let body = bytes::Bytes::from_static(b"an old small body");
        assert_eq!(record.place, BodyPlace::InIndex(body));
        let (metas, _) = index.variants(&stored.meta.key).unwrap();
        let metas: Vec<EntryMeta> = metas.into_iter().map(|v| v.meta).collect();
        assert_eq!(metas.len(), 1);
        assert_eq!(metas[0].variant, VariantKey::NONE);
        // The row under its old, longer key is found to be touched and to be replaced.
        let (key, variant) = (stored.meta.key, stored.meta.variant);
        let before = index.next_tick.load(Ordering::Relaxed);
        index.touch(&key, &variant).unwrap();
        assert_eq!(index.next_tick.load(Ordering::Relaxed), before + 1, "moved");
        assert!(index.insert(&stored.meta).unwrap().is_empty(), "same body");
        assert_eq!(index.variants(&key).unwrap().0.len(), 1);
        assert_eq!(index.usage().0, 1);
        let (removed, released) = index.remove(&key).unwrap();
        assert_eq!(removed, 1);
        assert!(released.is_empty(), "the body had no file");
        assert_eq!(index.body_record(&stored.meta).unwrap(), None);
        assert!(index.legacy_inline.as_ref().unwrap().is_empty());
    }

    /// Ticks go on past every tick used before a reopen, even one that was not flushed
    /// as the last tick (only the reservation is).
    #[test]
    fn ticks_never_repeat_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let last = {
            let index = SledIndex::open(dir.path()).unwrap();
            fill(&index, 3);
            let last = index.tick().unwrap();
            index.flush().unwrap();
            last
        };
        let index = reopen(dir.path());
        assert!(index.tick().unwrap() > last);
        assert_eq!(index.usage().0, 3);
    }

    /// Opens again once the earlier instance has let go of its lock.
    fn reopen(dir: &std::path::Path) -> SledIndex {
        SledIndex::open(dir).unwrap()
    }
}
