//! Filling the cache: concurrent misses for one variant make one origin fetch (a [`Fill`]),
//! every waiting request streams the bytes as the fill receives them, and the cache stores
//! what it may behind one writer ([`FillWriter`]).
//!
//! - this module: the registry of fills in flight ([`Coalescer`]), a fill's shared state
//!   (status, body chunks, who is reading them), and the admission of new fills;
//! - [`reader`]: one request's view of a fill's body, from memory or from its disk file;
//! - [`tail`]: following a fill through the disk file it is writing;
//! - [`writer`]: the only way bytes enter a fill: it keeps, spills to disk, stores and ends.
//!
//! A fill is keyed by [`FillKey`]: the primary key plus the request's variant under the Vary
//! rule already known for that resource (none for a cold key). A follower checks, once the
//! response head is known, that the response's Vary selects it too; if not, it fetches on
//! its own. The task that talks to the origin is the pipeline's; it only feeds the writer.
//!
//! # Concurrent calls
//! [`Coalescer::join`] is atomic: of any number of concurrent callers with one key, exactly
//! one becomes leader, and each caller receives a [`FillReader`] registered before the
//! first byte can arrive, so no reader misses the start of the body.
//!
//! # Cancellation
//! The fill runs in its own task: dropping a leader's or follower's request (a client hangs
//! up) drops only its reader. A small storable fill completes and is stored even if every
//! reader has gone; one nobody reads is abandoned once it passes
//! [`FillBounds::unread_limit`] bytes or has had no reader for [`FillBounds::unread_timeout`].
//! A fill that is not being stored keeps only what its slowest reader has not read yet,
//! waits for readers when that passes a window, and stops when no reader is left. When a
//! reader is a window behind one that waits for more, the laggard is left behind: it goes
//! on by its own ranged request when the fill can be taken up again from the origin
//! ([`ResumeFrom`]), or else its response is cut off, after a longer grace
//! ([`LAGGARD_CUTOFF_GRACE`]). Either way one stalled or trickling client does not hold
//! every other client of a burst to its pace.
//!
//! # Bounds
//! Bytes held in memory by all fills are counted in one gauge (`outpost_fill_bytes`). What
//! is kept against [`FillBounds::memory_budget`] is [`Commitment`]s: a fill that keeps its
//! body counts for its declared length from the start (or, with none, for what has arrived).
//! So the budget is shared out first come, first served, when each fill begins: a fill that
//! began within it keeps its body to the end, and one that would pass it does not start
//! keeping (it spills to disk, or streams through unstored). Without the up-front count,
//! many concurrent fills would all begin within the budget, pass it together halfway and
//! all give up what they had kept. One fill alone may pass the budget (up to the largest
//! object kept in memory), so a small budget does not keep large objects out of memory.

pub mod reader;
pub mod tail;
pub mod writer;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{watch, Notify};

use super::entry::{EntryMeta, StoredResponse};
use super::key::{DigestHasher, PrimaryKey, VariantKey};
use super::policy::NoStoreReason;
use super::replacement::NewcomerRoom;
use crate::error::ProxyError;
pub use reader::FillReader;
pub use writer::{Admitted, FillTarget, FillWriter, WriteError};

/// A reader following a fill through its spill file, counted among its readers while it
/// lives (`Fill::follow_file`).
pub struct FileFollower {
    fill: Arc<Fill>,
}

impl Drop for FileFollower {
    fn drop(&mut self) {
        let mut body = self.fill.body.lock();
        body.reader_count -= 1;
        if body.reader_count == 0 {
            body.unread_since = Some(Instant::now());
        }
        drop(body);
        self.fill.readers_left.notify_waiters();
    }
}

/// What concurrent requests must share to share a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FillKey {
    pub key: PrimaryKey,
    pub variant_hint: VariantKey,
}

/// The state of a fill, as waiting requests see it.
#[derive(Debug, Clone)]
pub enum FillStatus {
    Pending,
    /// The head is known and the body is streaming into the fill; `storing`: the fill
    /// means to store it (it kept room in memory or has a disk file to go to), else the
    /// body only streams through to its readers.
    Streaming {
        meta: Arc<EntryMeta>,
        storing: bool,
    },
    /// The response is stored (`revalidated`: a stored one was freshened by a 304): serve
    /// this entry.
    Complete {
        entry: Arc<StoredResponse>,
        revalidated: bool,
    },
    /// Validating `entry` failed (`error`: the Proxy-Status error type, or `http_5xx`;
    /// `fwd_status`: the origin's status, if it answered) and stale-if-error (RFC 5861 §4)
    /// allows serving it stale instead.
    StaleOnError {
        entry: Arc<StoredResponse>,
        error: crate::error::OriginFailure,
        fwd_status: Option<u16>,
    },
    /// The body streamed to its readers whole and was not stored (refused room, or too
    /// large for where it was to go): readers that joined before read all of it; nobody
    /// else can.
    Streamed {
        meta: Arc<EntryMeta>,
    },
    /// Not storable: only the leader may see this response; everyone else fetches alone.
    Uncacheable(NoStoreReason),
    /// The origin could not be reached or answered badly before a head was complete.
    Failed(ProxyError),
}

impl FillStatus {
    /// Stored, refused, failed or answered stale: nothing more will happen to it.
    pub fn is_settled(&self) -> bool {
        !matches!(self, FillStatus::Pending | FillStatus::Streaming { .. })
    }
}

/// Where a fill's body stands on disk, for requests that follow the file ([`tail`]).
#[derive(Debug, Clone, Default)]
pub enum SpillState {
    /// Not written to disk (yet).
    #[default]
    None,
    /// Being written to `path`; the first `written` bytes are there.
    Writing { path: Arc<PathBuf>, written: u64 },
    /// Stored as `path` with this length and digest.
    Committed {
        path: Arc<PathBuf>,
        len: u64,
        digest: [u8; 32],
    },
    /// The file is gone: the fill failed, outgrew the disk tier or was not stored.
    Abandoned,
}

/// Limits every fill obeys; set from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct FillBounds {
    /// A fill nobody reads is abandoned once its body passes this many bytes.
    pub unread_limit: u64,
    /// ... or once it has had no reader for this long.
    pub unread_timeout: Duration,
    /// Bytes all fills together may hold in memory.
    pub memory_budget: u64,
}

/// The in-flight fills.
pub struct Coalescer {
    /// Keyed by digests: hashed with [`DigestHasher`] (every miss joins and leaves).
    fills: Mutex<HashMap<FillKey, Arc<Fill>, DigestHasher>>,
    /// Bytes held in memory by every fill (exported as `outpost_fill_bytes`).
    held_bytes: Gauge,
    /// Bytes counted against the budget by the fills keeping their bodies in memory.
    committed: AtomicU64,
    /// The part of `committed` counted by newcomers (see [`Coalescer::commit`]).
    committed_by_newcomers: AtomicU64,
    /// Bytes of kept bodies the memory tier declined or evicted that are still being sent
    /// ([`Coalescer::hold`]): they leave that much less of the budget to fills.
    held_outside: AtomicU64,
    /// Fills streaming through unstored now ([`Coalescer::stream`]).
    streams: AtomicU64,
    /// What each of them counts for its connections' buffers ([`STREAM_READ_BUFFERS`]).
    stream_buffers: AtomicU64,
    /// Of `committed`, the bytes kept bodies have received so far (and so hold).
    kept_received: AtomicU64,
}

/// How long, in all, a fill streaming through unstored waits for readers a window behind
/// while another reader asks for more, before it leaves them to go on from the origin.
pub const LAGGARD_GRACE: Duration = Duration::from_secs(1);

/// [`LAGGARD_GRACE`] for a fill that cannot be taken up again (no strong validator, or a
/// body the mirror checks whole): the readers a window behind then lose their response, so
/// they get longer to catch up; a client that trickles holds the others back no longer.
pub const LAGGARD_CUTOFF_GRACE: Duration = Duration::from_secs(5);

/// What the connections on either side of a fill streaming through unstored hold beyond
/// the fill's own chunks, counted against the fills' budget for each such fill, in origin
/// read buffers (`upstream.max_read_buffer`): the origin connection's, which the chunk last
/// handed on pins, and the client connection's write queue. Measured at 128 KiB: 60 fills
/// with stalled clients held about 280 KiB each outside their chunks.
pub const STREAM_READ_BUFFERS: u64 = 2;

/// What each stream counts ([`STREAM_READ_BUFFERS`]) until the coalescer is told the
/// origin read buffer: at 128 KiB, the largest default.
const DEFAULT_STREAM_BUFFERS: u64 = STREAM_READ_BUFFERS * (128 << 10);

/// A fill streaming through unstored, counted until dropped (see [`STREAM_READ_BUFFERS`]).
pub struct StreamSlot {
    coalescer: Arc<Coalescer>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.coalescer.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a reader that fell behind a fill streaming through unstored gets the rest of the
/// body: the pipeline's ranged request to the origin, validated to be of the same
/// representation (see `pipeline::resume`). The body it returns ends in an error, never a
/// clean end, when the rest cannot be had.
pub trait ResumeFrom: Send + Sync {
    /// The body's bytes from `offset` to its end, asked for with `own_fields` (the reader's
    /// own request fields, see [`FillReader::speaking_for`]) in place of the fill's request's
    /// fields of those names.
    fn body_from(&self, offset: u64, own_fields: Option<&http::HeaderMap>) -> crate::body::Body;
}

/// What one fill keeping its body in memory counts for against the fills' budget; given
/// back when dropped.
pub struct Commitment<'c> {
    coalescer: &'c Coalescer,
    bytes: u64,
    /// Of `bytes`, what has arrived ([`Commitment::received`]).
    received: u64,
    /// For a newcomer's body, the room newcomers' bodies may take together.
    newcomer_room: Option<u64>,
    /// For a newcomer's body, the most the tier keeps of one (a body of unknown length
    /// that grows past it is declined when stored: it is no longer kept).
    newcomer_largest: Option<u64>,
}

/// A body kept in memory that the memory tier declined or evicted, counted against the
/// fills' budget while clients are still being sent it ([`Coalescer::hold`]): until they
/// let go, its pages are as much in memory as a fill's.
pub struct BudgetHold {
    coalescer: Arc<Coalescer>,
    bytes: u64,
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.coalescer
            .held_outside
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Adds `more` to `counter` unless that takes it past `limit` while `own` is not all it
/// holds (one fill alone may pass a limit); whether it did.
fn count_within(counter: &AtomicU64, own: u64, more: u64, limit: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |all| {
            let others = all - own;
            (others == 0 || all + more <= limit).then_some(all + more)
        })
        .is_ok()
}

impl Commitment<'_> {
    /// Counts this fill for `bytes` (when more than it counts for already), unless that
    /// takes all fills past `budget` (or newcomers past their room) while others count
    /// too; whether it now does. A new commitment for nothing yet is refused too while
    /// the others are past the budget.
    pub fn grow_to(&mut self, bytes: u64, budget: u64) -> bool {
        let own = self.bytes;
        let more = bytes.saturating_sub(own);
        if more == 0 && own > 0 {
            return true;
        }
        if self.newcomer_largest.is_some_and(|largest| bytes > largest) {
            return false;
        }
        let newcomers = &self.coalescer.committed_by_newcomers;
        if let Some(room) = self.newcomer_room {
            if !count_within(newcomers, own, more, room) {
                return false;
            }
        }
        // Declined bodies still being sent leave fills only what they do not hold; once
        // they hold it all, not even a fill alone is kept. Fills streaming through hold
        // what they have read ahead and their connections' buffers: kept bodies have the
        // rest, so that together they stay within the budget (but for one kept alone, which
        // many slow streams must not stop from being stored).
        let (outside, room) = self.coalescer.kept_room(budget);
        if outside >= budget || !count_within(&self.coalescer.committed, own, more, room) {
            if self.newcomer_room.is_some() {
                newcomers.fetch_sub(more, Ordering::AcqRel);
            }
            return false;
        }
        self.bytes = bytes;
        true
    }

    /// As [`Commitment::grow_to`], but never past `budget`, not even alone: for a body that
    /// has its own way past it (an index document's pass; see `mirror::room`). Not for a
    /// newcomer's body.
    pub fn grow_within(&mut self, bytes: u64, budget: u64) -> bool {
        let more = bytes.saturating_sub(self.bytes);
        if more == 0 {
            return true;
        }
        let (_, room) = self.coalescer.kept_room(budget);
        let grown = self
            .coalescer
            .committed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |all| {
                (all + more <= room).then_some(all + more)
            })
            .is_ok();
        if grown {
            self.bytes += more;
        }
        grown
    }

    /// Counts this fill for `bytes` (when more than it counts for already) whatever the
    /// budget says: for the one body that may pass it while others wait for room (an index
    /// document the package mirror must hold whole; see `mirror::room`).
    pub fn force_to(&mut self, bytes: u64) {
        let more = bytes.saturating_sub(self.bytes);
        self.coalescer.committed.fetch_add(more, Ordering::AcqRel);
        if self.newcomer_room.is_some() {
            self.coalescer
                .committed_by_newcomers
                .fetch_add(more, Ordering::AcqRel);
        }
        self.bytes += more;
    }

    /// The body has received `total` bytes: what of its commitment has arrived, so that
    /// [`Coalescer::holds_past`] counts each kept byte once, whether arrived or not.
    pub fn received(&mut self, total: u64) {
        let received = total.min(self.bytes);
        let more = received.saturating_sub(self.received);
        self.coalescer
            .kept_received
            .fetch_add(more, Ordering::AcqRel);
        self.received += more;
    }
}

impl Drop for Commitment<'_> {
    fn drop(&mut self) {
        self.coalescer
            .committed
            .fetch_sub(self.bytes, Ordering::AcqRel);
        self.coalescer
            .kept_received
            .fetch_sub(self.received, Ordering::AcqRel);
        if self.newcomer_room.is_some() {
            self.coalescer
                .committed_by_newcomers
                .fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// The caller's role in a fill.
pub enum Role {
    /// Run the fetch (spawn it) and read as the first reader. `after_abandoned`: the fill
    /// registered for the key was being abandoned for having no reader (see
    /// [`Fill::close_if_unread`]), and what arrived of it may be about to be kept as a
    /// partial entry, which this fetch could start from once it has settled.
    Leader { after_abandoned: Option<Arc<Fill>> },
    /// Another request is fetching; wait for it.
    Follower,
}

impl Coalescer {
    pub fn new(held_bytes: Gauge) -> Coalescer {
        Coalescer {
            fills: Mutex::new(HashMap::with_hasher(DigestHasher::default())),
            held_bytes,
            committed: AtomicU64::new(0),
            committed_by_newcomers: AtomicU64::new(0),
            held_outside: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            stream_buffers: AtomicU64::new(DEFAULT_STREAM_BUFFERS),
            kept_received: AtomicU64::new(0),
        }
    }

    /// Origin connections read into buffers of up to `bytes` from now on (a reload may
    /// change it): each stream counts [`STREAM_READ_BUFFERS`] of them.
    pub fn set_origin_read_buffer(&self, bytes: u64) {
        self.stream_buffers
            .store(STREAM_READ_BUFFERS * bytes, Ordering::Release);
    }

    /// A fill's count against the fills' memory `budget` for keeping a body of `bytes`
    /// (0 when its length is not known yet); `None` when other fills have already counted
    /// too much for it to fit.
    ///
    /// A newcomer's body (a resource asked for only this once) also counts against
    /// `newcomer_room`, the room the memory tier has for newcomers: once the tier is full
    /// they enter only through its admission window and leave it unless asked for again,
    /// so bodies of concurrent newcomers past the window would be kept in memory only to
    /// be evicted as they are stored. One fill alone is refused only when its body is
    /// larger than the largest newcomer the tier keeps, which it declines on sight, as
    /// `outpost replay` models it; so a request at a time keeps what it would without this.
    pub fn commit(
        &self,
        bytes: u64,
        budget: u64,
        newcomer_room: Option<NewcomerRoom>,
    ) -> Option<Commitment<'_>> {
        // The tier declines a newcomer larger than it keeps on sight (see
        // `WindowTinyLfu::declines_newcomer`): kept, its body would only be thrown away.
        if newcomer_room.is_some_and(|room| bytes > room.largest) {
            return None;
        }
        let mut commitment = Commitment {
            coalescer: self,
            bytes: 0,
            received: 0,
            newcomer_room: newcomer_room.map(|room| room.together),
            newcomer_largest: newcomer_room.map(|room| room.largest),
        };
        commitment.grow_to(bytes, budget).then_some(commitment)
    }

    /// Counts `bytes` against the fills' memory budget until the hold is dropped: for a
    /// body kept in memory that lives on outside the memory tier (declined by its policy
    /// or evicted), so that clients stalled on such bodies cannot make every later fill keep
    /// one more. While such bodies hold less than the whole budget, a fill alone is still
    /// kept (as it may pass the budget alone).
    pub fn hold(self: &Arc<Self>, bytes: u64) -> BudgetHold {
        self.held_outside.fetch_add(bytes, Ordering::AcqRel);
        BudgetHold {
            coalescer: Arc::clone(self),
            bytes,
        }
    }

    /// Bytes counted against the fills' memory budget now.
    pub fn committed_bytes(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Whether fills hold more in memory than `budget`, or will: the bodies they are
    /// keeping (each for all it is committed for, arrived or not) or streaming (as received
    /// so far), the connections' buffers of those streaming ([`STREAM_READ_BUFFERS`] each), and
    /// kept bodies the memory tier declined or evicted that are still being sent
    /// ([`Coalescer::hold`]). Kept bodies count as committed so that fills streaming beside
    /// them stop reading ahead as soon as they begin, not once they have arrived.
    pub fn holds_past(&self, budget: u64) -> bool {
        self.budget_used() > budget
    }

    /// What declined bodies still being sent hold ([`Coalescer::hold`]), and the room of
    /// `budget` that they and fills streaming through leave to kept bodies together.
    fn kept_room(&self, budget: u64) -> (u64, u64) {
        let outside = self.held_outside.load(Ordering::Acquire);
        let room = budget
            .saturating_sub(outside)
            .saturating_sub(self.streaming_bytes());
        (outside, room)
    }

    /// What counts against the fills' memory budget now (see [`Coalescer::holds_past`]).
    pub fn budget_used(&self) -> u64 {
        let committed = self.committed.load(Ordering::Acquire);
        committed + self.streaming_bytes() + self.held_outside.load(Ordering::Acquire)
    }

    /// What fills streaming through unstored hold: the chunks they have read and not yet
    /// handed to every reader, and their connections' buffers ([`STREAM_READ_BUFFERS`] each).
    fn streaming_bytes(&self) -> u64 {
        let kept = self.kept_received.load(Ordering::Acquire);
        let read_ahead = self.held_bytes().saturating_sub(kept);
        read_ahead
            + self.streams.load(Ordering::Acquire) * self.stream_buffers.load(Ordering::Acquire)
    }

    /// Counts a fill streaming through unstored until the slot is dropped.
    pub fn stream(self: &Arc<Self>) -> StreamSlot {
        self.streams.fetch_add(1, Ordering::AcqRel);
        StreamSlot {
            coalescer: Arc::clone(self),
        }
    }

    /// Bytes all fills hold in memory now.
    fn held_bytes(&self) -> u64 {
        u64::try_from(self.held_bytes.get()).unwrap_or(0)
    }

    /// Joins the fill for `key`, creating it (as leader) if there is none.
    pub fn join(&self, key: FillKey) -> (Role, Arc<Fill>, FillReader) {
        let mut fills = self.fills.lock();
        // A settled fill has stored (or refused) its response and is about to leave: a
        // request joining it now would take that result without the reuse checks a cache
        // hit passes (RFC 9111 §4: a `no-cache` entry or a `max-age=0` request must still
        // be validated). It leads instead, and finds the stored entry as a leader does.
        let mut after_abandoned = None;
        if let Some(fill) = fills.get(&key).filter(|fill| !fill.is_settled()) {
            if let Some(reader) = fill.reader() {
                return (Role::Follower, Arc::clone(fill), reader);
            }
            // Too large to keep in memory, but being written to disk: follow the file.
            if let Some(reader) = tail::reader(fill) {
                return (Role::Follower, Arc::clone(fill), FillReader::Tail(reader));
            }
            after_abandoned = fill.is_closed().then(|| Arc::clone(fill));
        }
        let fill = Fill::new(self.held_bytes.clone());
        // invariant: a new fill accepts readers.
        let reader = fill.reader().expect("new fill accepts readers");
        fills.insert(key, Arc::clone(&fill));
        (Role::Leader { after_abandoned }, fill, reader)
    }

    /// The fill registered for `key` while it is being abandoned for having no reader (see
    /// [`Fill::close_if_unread`]): what arrived of it may be about to be kept.
    pub fn being_abandoned(&self, key: &FillKey) -> Option<Arc<Fill>> {
        let fills = self.fills.lock();
        let fill = fills.get(key)?;
        (fill.is_closed() && !fill.is_settled()).then(|| Arc::clone(fill))
    }

    /// A fill that is not registered, so nobody can join it: for requests that must fetch
    /// on their own (hit-for-miss, a Vary mismatch, a follower that waited too long).
    pub fn solo(&self) -> (Arc<Fill>, FillReader) {
        let fill = Fill::new(self.held_bytes.clone());
        // invariant: a new fill accepts readers.
        let reader = fill.reader().expect("new fill accepts readers");
        (fill, reader)
    }

    /// Unregisters `fill` (if it is still the one registered for `key`): later requests
    /// start afresh, from the cache or a new fetch.
    pub fn leave(&self, key: &FillKey, fill: &Arc<Fill>) {
        let mut fills = self.fills.lock();
        if fills
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, fill))
        {
            fills.remove(key);
        }
    }

    /// Fills registered now.
    pub fn in_flight(&self) -> usize {
        self.fills.lock().len()
    }
}

/// One origin fetch shared by every request waiting for it.
pub struct Fill {
    status: watch::Sender<FillStatus>,
    /// Where a large body is being written on disk, and how far (for late followers).
    spill: watch::Sender<SpillState>,
    body: Mutex<FillBody>,
    /// Notified when readers make room or leave.
    space: Notify,
    /// Notified only when a reader leaves: what the unread watch waits for. Readers make
    /// room with every chunk they take, and waking the fill's task for each was a wasted
    /// poll per chunk.
    readers_left: Notify,
    held_bytes: Gauge,
    /// Offered by the fill's task when the origin's response can be asked for again from
    /// an offset (it has a strong validator): readers left behind go on from there.
    resume: std::sync::OnceLock<Arc<dyn ResumeFrom>>,
    /// The origin's status, where it is not the status of the response the fill stores
    /// (a 206 of the rest of a kept prefix, joined to it into a 200): what Cache-Status
    /// reports as `fwd-status` (RFC 9211 §2.4).
    forwarded_status: std::sync::OnceLock<u16>,
    /// Tells this fill from every other of the process's run: what is derived from its
    /// body while it streams (an encoding) is coalesced under it.
    id: u64,
}

/// The next [`Fill::id`].
static NEXT_FILL_ID: AtomicU64 = AtomicU64::new(0);

/// The body as readers share it. Reader positions are counted per chunk (`waiting_at`), so
/// a read, a trim and a departure cost O(1) amortised however many readers follow.
struct FillBody {
    chunks: VecDeque<Bytes>,
    /// Index of `chunks[0]` in the whole body, and its byte offset.
    first_index: usize,
    first_offset: u64,
    retained_bytes: usize,
    /// `waiting_at[i]`: attached readers whose next chunk is `first_index + i`; one more
    /// entry than `chunks` (readers that have read everything so far).
    waiting_at: VecDeque<usize>,
    /// While the fill is being stored every chunk is kept; afterwards only unread ones.
    retain_all: bool,
    accepts_readers: bool,
    /// Being abandoned for having no reader: nobody may join it, not even from its file.
    is_closed: bool,
    readers: Vec<Option<ReaderSlot>>,
    reader_count: usize,
    /// When the last reader left (None while someone reads).
    unread_since: Option<Instant>,
    /// Filled for the cache alone (a background validation): never abandoned as unread.
    is_background: bool,
    end: BodyEnd,
    /// The stored entry holding this same body, once there is one: readers go on from its
    /// body and the chunks are let go (see [`Fill::hand_over`]).
    handed_over: Option<Arc<StoredResponse>>,
    /// The fill waits for a reader to ask for more before it reads on
    /// ([`Fill::wait_for_demand`]): a reader that finds nothing new says so.
    awaits_demand: bool,
    /// How long, in all, the fill has waited for slower readers while another asked for
    /// more since it last left any to the origin (see [`Fill::wait_for_readers`]).
    held_back: Duration,
}

impl FillBody {
    /// One more reader, a live one or a file follower: the fill is being read.
    fn reader_joined(&mut self) {
        self.reader_count += 1;
        self.unread_since = None;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    Open,
    Complete,
    Failed,
}

struct ReaderSlot {
    next_index: usize,
    /// Byte offset of `next_index`.
    next_offset: u64,
    waker: Option<Waker>,
    /// Set when the reader fell too far behind: it continues from this byte offset in the
    /// fill's file, or, for a fill streaming through unstored, from the origin.
    detached_at: Option<u64>,
    /// Detached to go on from the origin: no longer one of the fill's readers (counted in
    /// `reader_count`), as the fill will never send it anything again.
    resumes: bool,
}

impl Fill {
    fn new(held_bytes: Gauge) -> Arc<Fill> {
        let (status, _) = watch::channel(FillStatus::Pending);
        let (spill, _) = watch::channel(SpillState::None);
        Arc::new(Fill {
            status,
            spill,
            body: Mutex::new(FillBody {
                chunks: VecDeque::new(),
                first_index: 0,
                first_offset: 0,
                retained_bytes: 0,
                waiting_at: VecDeque::from([0]),
                retain_all: true,
                accepts_readers: true,
                is_closed: false,
                readers: Vec::new(),
                reader_count: 0,
                unread_since: None,
                is_background: false,
                end: BodyEnd::Open,
                handed_over: None,
                awaits_demand: false,
                held_back: Duration::ZERO,
            }),
            space: Notify::new(),
            readers_left: Notify::new(),
            held_bytes,
            resume: std::sync::OnceLock::new(),
            forwarded_status: std::sync::OnceLock::new(),
            id: NEXT_FILL_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// This fill's number, unique in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A new reader positioned at the first byte, unless the fill has started discarding
    /// what was read (or handed its readers over to the stored entry).
    pub fn reader(self: &Arc<Self>) -> Option<FillReader> {
        let mut body = self.body.lock();
        if !body.accepts_readers {
            return None;
        }
        let slot = ReaderSlot {
            next_index: body.first_index,
            next_offset: body.first_offset,
            waker: None,
            detached_at: None,
            resumes: false,
        };
        let index = match body.readers.iter().position(Option::is_none) {
            Some(free) => {
                body.readers[free] = Some(slot);
                free
            }
            None => {
                body.readers.push(Some(slot));
                body.readers.len() - 1
            }
        };
        body.waiting_at[0] += 1;
        body.reader_joined();
        Some(FillReader::live(Arc::clone(self), index))
    }

    /// The fill's status now.
    pub fn status_now(&self) -> FillStatus {
        self.status.borrow().clone()
    }

    /// Whether the fill has settled: stored, refused, failed, or answered stale.
    pub fn is_settled(&self) -> bool {
        self.status.borrow().is_settled()
    }

    pub fn publish(&self, status: FillStatus) {
        self.status.send_replace(status);
    }

    /// Settles the fill with an entry that is already stored (one found after the fill was
    /// created, or a stored one freshened by a 304): its readers are served that entry.
    pub fn settle_with(&self, entry: Arc<StoredResponse>, revalidated: bool) {
        self.end(None);
        self.publish(FillStatus::Complete { entry, revalidated });
    }

    fn set_spill(&self, state: SpillState) {
        self.spill.send_replace(state);
    }

    /// Counts one more reader that follows the fill through its spill file rather than
    /// its chunks (see [`tail`]), until the returned guard is dropped: a fill whose only
    /// reader fell behind to the file, or joined it late, is still being read, so it is
    /// not abandoned as unread.
    fn follow_file(self: &Arc<Self>) -> Option<FileFollower> {
        let mut body = self.body.lock();
        if body.is_closed {
            return None;
        }
        body.reader_joined();
        Some(FileFollower {
            fill: Arc::clone(self),
        })
    }

    /// Whether it was closed to readers for having none (see [`Fill::close_if_unread`]).
    fn is_closed(&self) -> bool {
        self.body.lock().is_closed
    }

    /// Takes no reader from now on, when none is attached: a fill about to be abandoned
    /// for having none. False when one joined since that was decided (a client's retry
    /// right after a cancel): the fill goes on for it. Decided under the lock readers join
    /// under, so no request joins a fill that is then failed under it.
    pub(super) fn close_if_unread(&self) -> bool {
        let mut body = self.body.lock();
        if body.reader_count > 0 {
            return false;
        }
        body.accepts_readers = false;
        body.is_closed = true;
        true
    }

    /// Waits until the fill has settled: stored, refused, failed, or answered stale.
    pub async fn wait_settled(&self) -> FillStatus {
        let mut receiver = self.status.subscribe();
        let status = match receiver.wait_for(FillStatus::is_settled).await {
            Ok(status) => status.clone(),
            Err(_) => FillStatus::Failed(ProxyError::Internal("fill abandoned".into())),
        };
        status
    }

    /// Waits until the fill's status is no longer pending.
    pub async fn wait_status(&self) -> FillStatus {
        let mut receiver = self.status.subscribe();
        let status = match receiver
            .wait_for(|status| !matches!(status, FillStatus::Pending))
            .await
        {
            Ok(status) => status.clone(),
            // The sender lives as long as `self`: unreachable, but answer sensibly.
            Err(_) => FillStatus::Failed(ProxyError::Internal("fill abandoned".into())),
        };
        status
    }

    /// Appends a chunk of body and wakes the readers.
    fn push(&self, chunk: Bytes) {
        let mut body = self.body.lock();
        self.held_bytes.inc_by(chunk.len() as i64);
        body.retained_bytes += chunk.len();
        body.chunks.push_back(chunk);
        body.waiting_at.push_back(0);
        // A fill no longer keeping its body drops at once what no attached reader will
        // read: once its readers have all gone on from its file (a fill streaming to disk
        // whose clients stalled), nothing else would, and it held the rest of a large body
        // in memory for nobody until they let go.
        self.trim(&mut body);
        wake_all(&mut body);
    }

    /// Stops keeping the whole body (it will not be stored) and closes the fill to new
    /// readers; what every reader has read is released.
    fn stop_retaining(&self) {
        let mut body = self.body.lock();
        body.retain_all = false;
        body.accepts_readers = false;
        self.trim(&mut body);
    }

    /// Ends a complete body, first appending `last` (a chunk held back until the entry was
    /// stored).
    fn end(&self, last: Option<Bytes>) {
        if let Some(chunk) = last {
            self.push(chunk);
        }
        let mut body = self.body.lock();
        body.end = BodyEnd::Complete;
        wake_all(&mut body);
    }

    /// Hands readers over to `entry`, the stored response whose body is this fill's whole
    /// body in one piece: each reader goes on from the same offset in it at its next read,
    /// and the chunks are dropped as readers leave them. Without this, every client still
    /// reading a large response would keep a second copy of it, the fill's chunks, alive
    /// until it had read the last byte. Late readers are served the entry itself.
    fn hand_over(&self, entry: Arc<StoredResponse>) {
        let mut body = self.body.lock();
        // Every reader leaves the chunks now, not at its next read: a client that reads
        // slowly may not be polled again for a long time.
        let first_index = body.first_index;
        let FillBody {
            readers,
            waiting_at,
            ..
        } = &mut *body;
        for slot in readers.iter().flatten() {
            if slot.detached_at.is_none() && slot.next_index >= first_index {
                waiting_at[slot.next_index - first_index] -= 1;
            }
        }
        body.handed_over = Some(entry);
        body.retain_all = false;
        body.accepts_readers = false;
        wake_all(&mut body);
        self.trim(&mut body);
    }

    /// Ends the body as failed: readers get an error, never a clean end of a truncated body.
    fn fail(&self) {
        let mut body = self.body.lock();
        body.end = BodyEnd::Failed;
        body.accepts_readers = false;
        wake_all(&mut body);
    }

    /// Settles a fill its leader will not run: its readers' bodies fail and every request
    /// waiting on it sees `error` (and goes its own way).
    pub fn refuse(&self, error: ProxyError) {
        self.fail();
        self.publish(FillStatus::Failed(error));
    }

    /// Marks a fill that runs for the cache alone (RFC 5861 §3 background validation), so
    /// it is not abandoned for having no reader.
    pub fn set_background(&self) {
        self.body.lock().is_background = true;
    }

    /// Readers attached now: a request about to let go of its reader learns from it
    /// whether the fill goes on for others.
    pub fn reader_count(&self) -> usize {
        self.body.lock().reader_count
    }

    /// Readers attached now, and since when there has been none (`None` for a background
    /// fill, which nobody is expected to read).
    fn readership(&self) -> (usize, Option<Instant>) {
        let body = self.body.lock();
        let since = body.unread_since.filter(|_| !body.is_background);
        (body.reader_count, since)
    }

    /// Waits while more than `window` bytes are unread by the slowest reader of a fill that
    /// is not retaining everything. Returns false when no reader is left.
    ///
    /// The time it spends waiting while a reader has read everything and asks for more is
    /// added up (from zero again after laggards were left); once that passes the grace
    /// ([`LAGGARD_GRACE`], or [`LAGGARD_CUTOFF_GRACE`] for a fill that cannot be taken up
    /// again), readers more than `window` behind are left ([`Fill::leave_laggards`]) and
    /// the fill reads on. A reader that is behind only for a moment (its task not yet run)
    /// catches up well within that; one that stalls, or that reads a trickle, holds the
    /// others back for that long in all.
    async fn wait_for_readers(&self, window: usize) -> bool {
        let grace = if self.may_resume() {
            LAGGARD_GRACE
        } else {
            LAGGARD_CUTOFF_GRACE
        };
        loop {
            let notified = self.space.notified();
            let grace_left = {
                let mut body = self.body.lock();
                if body.reader_count == 0 {
                    return false;
                }
                if body.retain_all || body.retained_bytes <= window {
                    body.awaits_demand = false;
                    return true;
                }
                // A reader that finds nothing new wakes the fill, to start the clock.
                body.awaits_demand = true;
                if someone_asks(&body) {
                    let left = grace.saturating_sub(body.held_back);
                    if left.is_zero() && self.leave_laggards(&mut body, window) {
                        // The next laggards get their own grace: readers that fall a window
                        // behind for a moment later on are not left at once.
                        body.held_back = Duration::ZERO;
                        body.awaits_demand = false;
                        return true;
                    }
                    Some(left).filter(|left| !left.is_zero())
                } else {
                    None
                }
            };
            match grace_left {
                Some(left) => {
                    let since = tokio::time::Instant::now();
                    let _ = tokio::time::timeout(left, notified).await;
                    self.body.lock().held_back += since.elapsed();
                }
                None => notified.await,
            }
        }
    }

    /// Offers the way to take this fill's body up again from an offset (see
    /// [`ResumeFrom`]); the first offer stands.
    pub fn offer_resume(&self, resume: Arc<dyn ResumeFrom>) {
        let _ = self.resume.set(resume);
    }

    /// The rest of the body from `offset`, from the origin, for a reader detached from a
    /// fill streaming through unstored.
    fn resumed_from(
        &self,
        offset: u64,
        own_fields: Option<&http::HeaderMap>,
    ) -> Option<crate::body::Body> {
        self.resume
            .get()
            .map(|resume| resume.body_from(offset, own_fields))
    }

    /// Whether a reader left behind goes on by a request of its own ([`Fill::offer_resume`]).
    pub fn may_resume(&self) -> bool {
        self.resume.get().is_some()
    }

    /// Records that the origin answered `status` for the response this fill stores under
    /// another (see the field).
    pub fn set_forwarded_status(&self, status: u16) {
        let _ = self.forwarded_status.set(status);
    }

    /// The origin's status, when it differs from the stored response's.
    pub fn forwarded_status(&self) -> Option<u16> {
        self.forwarded_status.get().copied()
    }

    /// For a fill streaming through unstored whose attached reader has read all there is
    /// and asks for more: readers more than `window` behind it are detached to go on from
    /// the origin (or, when the fill cannot be taken up again, to end in an error), and
    /// what only they still needed is released. Returns whether any was.
    fn leave_laggards(&self, body: &mut FillBody, window: usize) -> bool {
        let left = self.detach_behind(body, window, true);
        if left > 0 && !self.may_resume() {
            tracing::info!(
                readers = left,
                "coalesced clients a window behind a response that cannot be resumed were cut off"
            );
        }
        left > 0
    }

    /// Waits until every reader has read all there is and one of them has asked for more
    /// (its client's connection is ready for the next bytes). Returns false when no reader
    /// is left. A fill past the fills' budget reads the origin only on demand: reading on
    /// would hold one more chunk (a slice of a whole origin read buffer) for each stalled
    /// client.
    async fn wait_for_demand(&self) -> bool {
        // The flag is cleared as the wait ends, except when no reader is left to see it.
        self.wait_on_readers(|body| {
            // Until then, a reader that finds nothing new wakes the fill.
            body.awaits_demand = !(body.retained_bytes == 0 && someone_asks(body));
            !body.awaits_demand
        })
        .await
    }

    /// Waits, woken as readers take chunks, ask or leave, until `ready` holds for the body
    /// or the fill retains everything. Returns false when no reader is left.
    async fn wait_on_readers(&self, mut ready: impl FnMut(&mut FillBody) -> bool) -> bool {
        loop {
            let notified = self.space.notified();
            {
                let mut body = self.body.lock();
                if body.reader_count == 0 {
                    return false;
                }
                if body.retain_all || ready(&mut body) {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// For a fill streaming to disk: readers more than `window` bytes behind continue from
    /// the file instead of holding the body in memory (and the fill back) for themselves.
    fn detach_slow_readers(&self, window: usize) {
        let mut body = self.body.lock();
        if !body.retain_all {
            self.detach_behind(&mut body, window, false);
        }
    }

    /// Detaches the attached readers more than `window` bytes behind the end of what the
    /// fill holds (`to_origin`: to go on from the origin, no longer counted as readers),
    /// wakes them, and releases what only they still needed. Returns how many there were.
    fn detach_behind(&self, body: &mut FillBody, window: usize, to_origin: bool) -> usize {
        let end = body.first_offset + body.retained_bytes as u64;
        let first_index = body.first_index;
        let mut detached = Vec::new();
        for slot in body.readers.iter_mut().flatten() {
            if slot.detached_at.is_none() && end - slot.next_offset > window as u64 {
                slot.detached_at = Some(slot.next_offset);
                slot.resumes = to_origin;
                detached.push(slot.next_index - first_index);
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
        }
        for position in &detached {
            body.waiting_at[*position] -= 1;
        }
        if to_origin {
            body.reader_count -= detached.len();
        }
        if !detached.is_empty() {
            self.trim(body);
        }
        detached.len()
    }

    /// The body kept so far, as the chunks it arrived in, then `last`.
    fn retained_chunks(&self, last: Option<&Bytes>) -> Vec<Bytes> {
        let body = self.body.lock();
        body.chunks.iter().chain(last).cloned().collect()
    }

    /// The whole body as one buffer of exactly its size: one copy per stored fill. Even a
    /// single chunk is copied, because it is a slice of the connection's read buffer and
    /// keeping it would pin that whole allocation for as long as the entry lives.
    fn retained_body(&self, last: Option<&Bytes>) -> Bytes {
        self.retained_prefix(last, usize::MAX)
    }

    /// As [`Fill::retained_body`], at most its first `limit` bytes.
    fn retained_prefix(&self, last: Option<&Bytes>, limit: usize) -> Bytes {
        let body = self.body.lock();
        let whole = body.retained_bytes + last.map_or(0, Bytes::len);
        let mut joined = Vec::with_capacity(whole.min(limit));
        for chunk in body.chunks.iter().chain(last) {
            let room = limit - joined.len();
            if room == 0 {
                break;
            }
            joined.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        Bytes::from(joined)
    }

    /// Drops chunks no attached reader still needs, when the fill is not keeping them.
    /// Returns whether anything was dropped.
    fn trim(&self, body: &mut FillBody) -> bool {
        if body.retain_all {
            return false;
        }
        let mut released = 0;
        while body.waiting_at.front() == Some(&0) && !body.chunks.is_empty() {
            if let Some(chunk) = body.chunks.pop_front() {
                released += chunk.len();
                body.first_index += 1;
                body.first_offset += chunk.len() as u64;
            }
            body.waiting_at.pop_front();
        }
        if released == 0 {
            return false;
        }
        body.retained_bytes -= released;
        self.held_bytes.dec_by(released as i64);
        true
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let body = self.body.lock();
        self.held_bytes.dec_by(body.retained_bytes as i64);
    }
}

/// Whether an attached reader has read everything so far and waits for more.
fn someone_asks(body: &FillBody) -> bool {
    let end_index = body.first_index + body.chunks.len();
    body.readers.iter().flatten().any(|slot| {
        slot.detached_at.is_none() && slot.waker.is_some() && slot.next_index == end_index
    })
}

fn wake_all(body: &mut FillBody) {
    for slot in body.readers.iter_mut().flatten() {
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::future::Future;

    fn key(n: u8) -> FillKey {
        FillKey {
            key: PrimaryKey([n; 32]),
            variant_hint: VariantKey::NONE,
        }
    }

    fn coalescer() -> Coalescer {
        Coalescer::new(Gauge::default())
    }

    /// A fill is closed for being unread only while nobody reads it; once closed, a
    /// request for its key leads a fetch of its own instead of joining it.
    #[test]
    fn a_fill_closes_only_while_unread_and_then_takes_no_reader() {
        let coalescer = coalescer();
        let (_, fill, leader) = coalescer.join(key(1));
        assert!(!fill.close_if_unread(), "its leader reads it");
        drop(leader);
        assert!(fill.close_if_unread());
        assert!(fill.reader().is_none() && fill.follow_file().is_none());
        let (role, other, _) = coalescer.join(key(1));
        let Role::Leader { after_abandoned } = role else {
            panic!("a closed fill is not joined");
        };
        assert!(!Arc::ptr_eq(&fill, &other));
        assert!(after_abandoned.is_some_and(|abandoned| Arc::ptr_eq(&fill, &abandoned)));
    }

    /// A fill being abandoned is found as such until it settles; one that is read is not.
    #[test]
    fn a_fill_being_abandoned_is_found_until_it_settles() {
        let coalescer = coalescer();
        let (_, fill, reader) = coalescer.join(key(1));
        assert!(coalescer.being_abandoned(&key(1)).is_none(), "it is read");
        drop(reader);
        assert!(fill.close_if_unread());
        let found = coalescer.being_abandoned(&key(1));
        assert!(found.is_some_and(|found| Arc::ptr_eq(&found, &fill)));
        fill.publish(FillStatus::Failed(ProxyError::Internal("abandoned".into())));
        assert!(coalescer.being_abandoned(&key(1)).is_none(), "it settled");
    }

    #[tokio::test]
    async fn one_leader_per_key_and_readers_see_every_chunk() {
        let coalescer = coalescer();
        let (role, fill, leader) = coalescer.join(key(1));
        assert!(matches!(role, Role::Leader { .. }));
        let (role, same, follower) = coalescer.join(key(1));
        assert!(matches!(role, Role::Follower) && Arc::ptr_eq(&fill, &same));
        assert!(matches!(coalescer.join(key(2)).0, Role::Leader { .. }));

        fill.push(Bytes::from_static(b"ab"));
        fill.push(Bytes::from_static(b"cd"));
        fill.end(None);
        assert_eq!(leader.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(follower.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(fill.retained_body(None), "abcd");
        coalescer.leave(&key(1), &fill);
        assert!(matches!(coalescer.join(key(1)).0, Role::Leader { .. }));
    }

    /// A request arriving after a fill settled, before the fill task has left the
    /// registry, does not join it: it leads, so its own lookup rules decide (RFC 9111 §4).
    #[tokio::test]
    async fn a_settled_fill_is_not_joined() {
        let coalescer = coalescer();
        let (_, fill, _leader) = coalescer.join(key(1));
        fill.publish(FillStatus::Failed(ProxyError::Internal("gone".into())));
        let (role, next, _) = coalescer.join(key(1));
        assert!(matches!(role, Role::Leader { .. }) && !Arc::ptr_eq(&fill, &next));
        // The old fill leaving does not unregister its successor.
        coalescer.leave(&key(1), &fill);
        let (role, same, _) = coalescer.join(key(1));
        assert!(matches!(role, Role::Follower) && Arc::ptr_eq(&next, &same));
    }

    /// The budget is shared out as fills begin; one fill alone may pass it; what a fill
    /// counts for is given back when it is dropped.
    #[test]
    fn commitments_share_the_budget_first_come_first_served() {
        let coalescer = coalescer();
        let budget = 1000;
        let mut first = coalescer
            .commit(600, budget, None)
            .expect("room for the first");
        assert!(
            coalescer.commit(600, budget, None).is_none(),
            "no room left"
        );
        let second = coalescer.commit(400, budget, None).expect("what is left");
        assert!(
            !first.grow_to(700, budget),
            "growing past it with others there"
        );
        drop(second);
        assert!(
            first.grow_to(1500, budget),
            "alone, a fill may pass the budget"
        );
        assert!(
            coalescer.commit(0, budget, None).is_none(),
            "over the budget already"
        );
        drop(first);
        assert_eq!(coalescer.committed.load(Ordering::Acquire), 0);
        assert!(coalescer.commit(1000, budget, None).is_some());
    }

    /// A declined body still being sent counts against the budget until it is let go:
    /// meanwhile a fill alone is still kept, but none beside it; once declined bodies hold
    /// the whole budget, none at all.
    #[test]
    fn a_hold_takes_its_share_of_the_budget_until_dropped() {
        let coalescer = Arc::new(coalescer());
        let budget = 1000;
        let hold = coalescer.hold(900);
        let alone = coalescer
            .commit(600, budget, None)
            .expect("a fill alone is kept");
        assert!(
            coalescer.commit(100, budget, None).is_none(),
            "no room beside it"
        );
        drop(alone);
        let more = coalescer.hold(100);
        assert!(
            coalescer.commit(1, budget, None).is_none(),
            "the budget is all held"
        );
        drop((hold, more));
        let first = coalescer.commit(600, budget, None).expect("alone");
        assert!(coalescer.commit(400, budget, None).is_some(), "room again");
        drop(first);
    }

    /// Each fill streaming through unstored counts its connections' buffers against the
    /// budget while it streams, so fewer of them read ahead of stalled clients.
    #[test]
    fn streams_count_their_connections_buffers_until_dropped() {
        let coalescer = Arc::new(coalescer());
        let budget = 2 * DEFAULT_STREAM_BUFFERS;
        let streams = [coalescer.stream(), coalescer.stream()];
        assert!(!coalescer.holds_past(budget), "two streams fill it exactly");
        let third = coalescer.stream();
        assert!(coalescer.holds_past(budget), "a third is past it");
        let alone = coalescer
            .commit(1, budget, None)
            .expect("one kept body alone may pass the budget");
        assert!(
            coalescer.commit(1, budget, None).is_none(),
            "the streams' buffers hold the rest"
        );
        drop((streams, third, alone));
        assert!(!coalescer.holds_past(0), "nothing counted once they end");
        assert!(coalescer.commit(budget, budget, None).is_some());
    }

    /// A stream counts two of the origin read buffers it is told of: with buffers half the
    /// default, four streams hold what two did.
    #[test]
    fn streams_count_the_origin_read_buffer_in_use() {
        let coalescer = Arc::new(coalescer());
        coalescer.set_origin_read_buffer(64 << 10);
        let budget = 2 * DEFAULT_STREAM_BUFFERS;
        let streams: Vec<_> = (0..4).map(|_| coalescer.stream()).collect();
        assert!(
            !coalescer.holds_past(budget),
            "four streams fill it exactly"
        );
        let fifth = coalescer.stream();
        assert!(coalescer.holds_past(budget), "a fifth is past it");
        drop((streams, fifth));
    }

    /// A kept body counts for all it is committed for from its start, not as it arrives:
    /// fills streaming beside it stop reading ahead at once.
    #[test]
    fn a_kept_body_counts_for_its_commitment_before_it_arrives() {
        let coalescer = coalescer();
        let mut kept = coalescer.commit(800, 1000, None).expect("room");
        assert!(coalescer.holds_past(700), "committed, nothing arrived yet");
        assert!(!coalescer.holds_past(800));
        kept.received(300);
        assert_eq!(coalescer.kept_received.load(Ordering::Acquire), 300);
        drop(kept);
        assert_eq!(coalescer.kept_received.load(Ordering::Acquire), 0);
        assert!(!coalescer.holds_past(0));
    }

    /// Newcomers' bodies also share the room the tier has for newcomers, first come first
    /// served, while bodies asked for before count only against the budget; one newcomer
    /// alone may pass its room, as one fill may pass the budget.
    #[test]
    fn newcomers_share_their_room_and_the_budget() {
        let coalescer = coalescer();
        let (budget, room) = (
            10_000,
            NewcomerRoom {
                together: 1_000,
                largest: 3_000,
            },
        );
        let first = coalescer
            .commit(600, budget, Some(room))
            .expect("room for the first newcomer");
        assert!(
            coalescer.commit(600, budget, Some(room)).is_none(),
            "no newcomers' room left"
        );
        let known = coalescer
            .commit(5_000, budget, None)
            .expect("asked for before: only the budget counts");
        let mut second = coalescer
            .commit(400, budget, Some(room))
            .expect("what is left of the room");
        assert!(!second.grow_to(500, budget), "not past the room");
        assert_eq!(coalescer.committed_bytes(), 6_000);
        drop(first);
        assert!(second.grow_to(1_000, budget), "alone among newcomers");
        assert!(
            second.grow_to(2_000, budget),
            "one newcomer alone may pass its room"
        );
        drop((second, known));
        assert_eq!(coalescer.committed_bytes(), 0);
        assert_eq!(coalescer.committed_by_newcomers.load(Ordering::Acquire), 0);
        assert!(
            coalescer.commit(3_001, budget, Some(room)).is_none(),
            "a newcomer larger than the tier keeps, alone: it declines it on sight"
        );
        let mut unknown = coalescer
            .commit(0, budget, Some(room))
            .expect("a length not known yet");
        assert!(unknown.grow_to(3_000, budget));
        assert!(
            !unknown.grow_to(3_001, budget),
            "grown past what the tier keeps of one newcomer"
        );
        drop(unknown);
        let window_half = NewcomerRoom {
            together: 1_000,
            largest: 500,
        };
        assert!(
            coalescer.commit(501, budget, Some(window_half)).is_none(),
            "larger than the largest newcomer kept"
        );
        let kept = coalescer
            .commit(500, budget, Some(window_half))
            .expect("the largest newcomer kept");
        assert!(
            coalescer.commit(500, budget, Some(window_half)).is_some(),
            "two such newcomers together"
        );
        drop(kept);
        assert_eq!(coalescer.committed_by_newcomers.load(Ordering::Acquire), 0);
    }

    /// A reader that fell behind to the fill's spill file is still a reader of the fill:
    /// a large fill whose only client stalled is not abandoned as unread while that client
    /// is served from the file, and is counted as unread once the reader is gone.
    #[tokio::test]
    async fn a_reader_following_the_spill_file_still_counts_as_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill");
        std::fs::write(&path, b"abcdef").unwrap();
        let (fill, mut reader) = coalescer().solo();
        fill.set_spill(SpillState::Writing {
            path: Arc::new(path),
            written: 6,
        });
        fill.stop_retaining();
        fill.push(Bytes::from_static(b"abc"));
        fill.push(Bytes::from_static(b"def"));
        fill.detach_slow_readers(0);
        let _ = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(http_body::Body::poll_frame(
                std::pin::Pin::new(&mut reader),
                cx,
            ))
        })
        .await;
        assert!(
            matches!(reader, FillReader::Tail(_)),
            "went on from the file"
        );
        assert_eq!(fill.readership(), (1, None));
        drop(reader);
        let (readers, unread_since) = fill.readership();
        assert_eq!(readers, 0);
        assert!(unread_since.is_some());
    }

    /// Once every reader of a fill streaming to disk has gone on from its file, what the
    /// fill reads next is not held for nobody (it used to be, to the end of the body, for
    /// as long as a stalled client kept its connection).
    #[tokio::test]
    async fn chunks_no_attached_reader_will_read_are_not_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill");
        std::fs::write(&path, b"abcdef").unwrap();
        let coalescer = coalescer();
        let (fill, reader) = coalescer.solo();
        fill.set_spill(SpillState::Writing {
            path: Arc::new(path),
            written: 6,
        });
        fill.stop_retaining();
        fill.push(Bytes::from_static(b"abc"));
        assert_eq!(coalescer.held_bytes(), 3, "held for its reader");
        fill.detach_slow_readers(0);
        assert_eq!(coalescer.held_bytes(), 0);
        fill.push(Bytes::from_static(b"def"));
        fill.push(Bytes::from_static(b"ghi"));
        assert_eq!(coalescer.held_bytes(), 0, "read on for the file alone");
        assert_eq!(fill.body.lock().retained_bytes, 0);
        drop(reader);
    }

    /// A failed fill ends every reader with an error, never a clean end.
    #[tokio::test]
    async fn failure_mid_body_is_an_error_for_every_reader() {
        let (fill, reader) = coalescer().solo();
        fill.push(Bytes::from_static(b"partial"));
        fill.fail();
        assert!(reader.collect().await.is_err());
    }

    /// A fill that is not stored releases what all readers have read, and the held-bytes
    /// gauge follows.
    #[tokio::test]
    async fn not_retaining_releases_read_chunks_and_refuses_new_readers() {
        let coalescer = coalescer();
        let (fill, mut reader) = coalescer.solo();
        fill.stop_retaining();
        assert!(fill.reader().is_none());
        fill.push(Bytes::from(vec![0u8; 100]));
        fill.push(Bytes::from(vec![0u8; 100]));
        assert_eq!(fill.body.lock().retained_bytes, 200);
        assert_eq!(coalescer.held_bytes(), 200);
        let frame = reader.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap().len(), 100);
        assert_eq!(fill.body.lock().retained_bytes, 100);
        assert_eq!(coalescer.held_bytes(), 100);
        assert!(fill.wait_for_readers(1000).await);
        drop(reader);
        assert!(!fill.wait_for_readers(0).await, "no reader left");
        assert_eq!(coalescer.held_bytes(), 0);
        assert!(
            fill.readership().1.is_some(),
            "unread since the reader left"
        );
    }

    /// Past the fills' budget an unstored fill reads on only once its readers have taken all
    /// it holds and one of them asks for more, and that reader's asking wakes it: a stalled
    /// client then holds no chunk in the fill.
    #[tokio::test]
    async fn a_fill_waiting_for_demand_reads_on_when_a_reader_asks() {
        struct Woken(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Woken {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(Woken(false.into()));
        let fill_waker = Waker::from(Arc::clone(&woken));
        let mut fill_cx = std::task::Context::from_waker(&fill_waker);
        let mut reader_cx = std::task::Context::from_waker(Waker::noop());

        let coalescer = coalescer();
        let (fill, mut reader) = coalescer.solo();
        fill.stop_retaining();
        fill.push(Bytes::from(vec![1u8; 100]));
        let mut demand = std::pin::pin!(fill.wait_for_demand());
        assert!(demand.as_mut().poll(&mut fill_cx).is_pending(), "unread");
        let frame = reader.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap().len(), 100);
        assert!(
            demand.as_mut().poll(&mut fill_cx).is_pending(),
            "taken, but no one asked for more"
        );
        woken.0.store(false, Ordering::SeqCst);
        let mut next = std::pin::pin!(reader.frame());
        assert!(next.as_mut().poll(&mut reader_cx).is_pending());
        assert!(woken.0.load(Ordering::SeqCst), "asking wakes the fill");
        assert!(matches!(
            demand.as_mut().poll(&mut fill_cx),
            std::task::Poll::Ready(true)
        ));
        fill.push(Bytes::from(vec![2u8; 10]));
        fill.end(None);
        let frame = next.await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap().as_ref(), [2u8; 10]);
        drop(reader);
        assert!(!fill.wait_for_demand().await, "no reader left");
    }

    /// The rest of a known body from an offset, as the origin would send it to a ranged
    /// request; records the offsets asked for.
    struct RestOf(Bytes, Mutex<Vec<u64>>);

    impl ResumeFrom for RestOf {
        fn body_from(&self, offset: u64, _: Option<&http::HeaderMap>) -> crate::body::Body {
            self.1.lock().push(offset);
            crate::body::Body::full(self.0.slice(offset as usize..))
        }
    }

    /// A reader a window behind one that asks for more is left to go on from the origin
    /// once the other has waited [`LAGGARD_GRACE`] for it: the fill reads on and holds
    /// nothing for the laggard, which still gets every byte, in order, once its client
    /// reads again.
    #[tokio::test(start_paused = true)]
    async fn a_laggard_goes_on_from_the_origin_and_holds_back_nobody() {
        let whole: Bytes = (0..60u8).collect::<Vec<u8>>().into();
        let rest = Arc::new(RestOf(whole.clone(), Mutex::new(Vec::new())));
        let coalescer = coalescer();
        let (fill, mut fast) = coalescer.solo();
        let mut slow = fill.reader().unwrap();
        fill.offer_resume(Arc::clone(&rest) as Arc<dyn ResumeFrom>);
        fill.stop_retaining();
        fill.push(whole.slice(0..10));
        assert_eq!(
            slow.frame().await.unwrap().unwrap().into_data().unwrap(),
            whole.slice(0..10)
        );
        fill.push(whole.slice(10..30));
        fill.push(whole.slice(30..40));
        let mut reader_cx = std::task::Context::from_waker(Waker::noop());
        for _ in 0..3 {
            fast.frame().await.unwrap().unwrap();
        }
        let mut asks = std::pin::pin!(fast.frame());
        assert!(asks.as_mut().poll(&mut reader_cx).is_pending(), "read all");
        let started = tokio::time::Instant::now();
        assert!(fill.wait_for_readers(20).await, "30 behind: left behind");
        assert_eq!(started.elapsed(), LAGGARD_GRACE, "after the grace");
        assert_eq!(
            fill.body.lock().held_back,
            Duration::ZERO,
            "the next get theirs"
        );
        assert_eq!(fill.readership().0, 1, "the laggard is no longer a reader");
        assert_eq!(coalescer.held_bytes(), 0, "nothing held for it");
        fill.push(whole.slice(40..60));
        fill.end(None);
        assert_eq!(
            asks.await.unwrap().unwrap().into_data().unwrap(),
            whole.slice(40..60)
        );
        assert_eq!(slow.collect().await.unwrap().to_bytes(), whole.slice(10..));
        assert_eq!(*rest.1.lock(), [10], "asked from where it stopped");
    }

    /// With no reader waiting for more, the fill waits for the slowest, past any grace: no
    /// client is held back.
    #[tokio::test(start_paused = true)]
    async fn with_no_reader_asking_the_fill_waits_for_the_slowest() {
        for resumable in [false, true] {
            let coalescer = coalescer();
            let (fill, mut fast) = coalescer.solo();
            let _slow = fill.reader().unwrap();
            if resumable {
                let rest = RestOf(Bytes::from_static(b"0123456789"), Mutex::new(Vec::new()));
                fill.offer_resume(Arc::new(rest));
            }
            fill.stop_retaining();
            fill.push(Bytes::from_static(b"0123456789"));
            fast.frame().await.unwrap().unwrap();
            let wait = fill.wait_for_readers(5);
            let waited = tokio::time::timeout(LAGGARD_CUTOFF_GRACE * 3, wait).await;
            assert!(waited.is_err(), "{resumable}");
            assert_eq!(fill.readership().0, 2);
        }
    }

    /// Without a way to take the body up again, a reader a window behind one that asks for
    /// more holds it back for [`LAGGARD_CUTOFF_GRACE`] in all, then loses its response (an
    /// error, never a short clean end); the other reads on and gets every byte.
    #[tokio::test(start_paused = true)]
    async fn a_laggard_that_cannot_resume_is_cut_off_after_the_longer_grace() {
        let whole: Bytes = (0..40u8).collect::<Vec<u8>>().into();
        let coalescer = coalescer();
        let (fill, mut fast) = coalescer.solo();
        let mut slow = fill.reader().unwrap();
        fill.stop_retaining();
        fill.push(whole.slice(0..10));
        fill.push(whole.slice(10..30));
        for _ in 0..2 {
            fast.frame().await.unwrap().unwrap();
        }
        let mut cx = std::task::Context::from_waker(Waker::noop());
        let mut asks = std::pin::pin!(fast.frame());
        assert!(asks.as_mut().poll(&mut cx).is_pending(), "read all");
        let started = tokio::time::Instant::now();
        assert!(fill.wait_for_readers(20).await, "30 behind: left behind");
        assert_eq!(started.elapsed(), LAGGARD_CUTOFF_GRACE);
        assert_eq!(fill.readership().0, 1, "the laggard is no longer a reader");
        assert_eq!(coalescer.held_bytes(), 0, "nothing held for it");
        fill.push(whole.slice(30..40));
        fill.end(None);
        assert_eq!(
            asks.await.unwrap().unwrap().into_data().unwrap(),
            whole.slice(30..40)
        );
        assert!(slow.frame().await.unwrap().is_err(), "cut off, not ended");
    }

    /// What fills hold, streamed or kept, and the holds of bodies still being sent, are
    /// measured together against the budget; what readers have taken is not held.
    #[tokio::test]
    async fn fills_and_holds_are_measured_together_against_the_budget() {
        let coalescer = Arc::new(coalescer());
        let (streamed, mut reader) = coalescer.solo();
        streamed.stop_retaining();
        streamed.push(Bytes::from(vec![0u8; 600]));
        let (kept, _kept_reader) = coalescer.solo();
        kept.push(Bytes::from(vec![0u8; 300]));
        assert!(!coalescer.holds_past(1000));
        let hold = coalescer.hold(200);
        assert!(coalescer.holds_past(1000), "600 + 300 + 200");
        reader.frame().await.unwrap().unwrap();
        assert!(!coalescer.holds_past(1000), "the streamed chunk was taken");
        drop(hold);
        assert!(!coalescer.holds_past(300) && coalescer.holds_past(299));
    }

    /// Many readers at different positions: only chunks the slowest has read are released,
    /// and the per-chunk counts stay consistent as readers come and go.
    #[tokio::test]
    async fn slowest_reader_holds_exactly_its_unread_chunks() {
        let coalescer = coalescer();
        let (fill, first) = coalescer.solo();
        let mut readers = vec![first];
        for _ in 0..9 {
            readers.push(fill.reader().unwrap());
        }
        fill.stop_retaining();
        for n in 0..5u8 {
            fill.push(Bytes::from(vec![n; 10]));
        }
        // Reader i reads i % 5 chunks.
        for (i, reader) in readers.iter_mut().enumerate() {
            for _ in 0..i % 5 {
                reader.frame().await.unwrap().unwrap();
            }
        }
        assert_eq!(
            fill.body.lock().retained_bytes,
            50,
            "readers 0 and 5 read nothing"
        );
        readers.remove(5);
        readers.remove(0);
        assert_eq!(
            fill.body.lock().retained_bytes,
            40,
            "now the slowest read one chunk"
        );
        fill.end(None);
        for reader in readers {
            reader.collect().await.unwrap();
        }
        assert_eq!(coalescer.held_bytes(), 0);
    }
}
