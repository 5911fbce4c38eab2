//! Request coalescing: concurrent misses for one variant make one origin fetch (a
//! [`Fill`]), and every waiting request streams the bytes as the fill receives them.
//!
//! A fill is keyed by [`FillKey`]: the primary key plus the request's variant under the Vary
//! rule already known for that resource (none for a cold key). A follower checks, once the
//! response head is known, that the response's Vary selects it too; if not, it fetches on
//! its own. The task that runs the fetch is the pipeline's; this module owns the shared
//! state: the head, the chunks, and who is reading them.
//!
//! # Concurrent calls
//! [`Coalescer::join`] is atomic: of any number of concurrent callers with one key, exactly
//! one becomes leader, and each caller receives a [`FillReader`] registered before the
//! first byte can arrive, so no reader misses the start of the body.
//!
//! # Cancellation
//! The fill runs in its own task: dropping a leader's or follower's request (a client hangs
//! up) drops only its reader. A storable fill completes and is stored even if every reader
//! has gone. A fill that is not being stored (too large for the cache) keeps only what its
//! slowest reader has not read yet, waits for readers when that passes a window, and stops
//! when no reader is left.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{watch, Notify};

use super::entry::{EntryMeta, StoredResponse};
use super::key::{PrimaryKey, VariantKey};
use super::policy::NoStoreReason;
use crate::body::BoxError;
use crate::error::ProxyError;

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
    /// The head is known and the body is streaming into the fill.
    Streaming(Arc<EntryMeta>),
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
        error: &'static str,
        fwd_status: Option<u16>,
    },
    /// Not storable: only the leader may see this response; everyone else fetches alone.
    Uncacheable(NoStoreReason),
    /// The origin could not be reached or answered badly before a head was complete.
    Failed(ProxyError),
}

/// How far a fill has written its body to disk.
#[derive(Debug, Clone, Default)]
pub struct SpillState {
    pub path: Option<Arc<PathBuf>>,
    pub written: u64,
    pub abandoned: bool,
}

/// The in-flight fills.
#[derive(Default)]
pub struct Coalescer {
    fills: Mutex<HashMap<FillKey, Arc<Fill>>>,
}

/// The caller's role in a fill.
pub enum Role {
    /// Run the fetch (spawn it) and read as the first reader.
    Leader,
    /// Another request is fetching; wait for it.
    Follower,
}

impl Coalescer {
    /// Joins the fill for `key`, creating it (as leader) if there is none.
    pub fn join(&self, key: FillKey) -> (Role, Arc<Fill>, FillReader) {
        let mut fills = lock(&self.fills);
        if let Some(fill) = fills.get(&key) {
            if let Some(reader) = fill.reader() {
                return (Role::Follower, Arc::clone(fill), reader);
            }
            // Too large to keep in memory, but being written to disk: follow the file.
            if let Some(reader) = super::tail::reader(fill) {
                return (Role::Follower, Arc::clone(fill), FillReader::Tail(reader));
            }
        }
        let fill = Fill::new();
        // invariant: a new fill accepts readers.
        let reader = fill.reader().expect("new fill accepts readers");
        fills.insert(key, Arc::clone(&fill));
        (Role::Leader, fill, reader)
    }

    /// A fill that is not registered, so nobody can join it: for requests that must fetch
    /// on their own (hit-for-miss, a Vary mismatch, a follower that waited too long).
    pub fn solo() -> (Arc<Fill>, FillReader) {
        let fill = Fill::new();
        // invariant: a new fill accepts readers.
        let reader = fill.reader().expect("new fill accepts readers");
        (fill, reader)
    }

    /// Unregisters `fill` (if it is still the one registered for `key`): later requests
    /// start afresh, from the cache or a new fetch.
    pub fn leave(&self, key: &FillKey, fill: &Arc<Fill>) {
        let mut fills = lock(&self.fills);
        if fills
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, fill))
        {
            fills.remove(key);
        }
    }
}

/// One origin fetch shared by every request waiting for it.
pub struct Fill {
    pub(super) status: watch::Sender<FillStatus>,
    /// Where a large body is being written on disk, and how far (for late followers).
    pub(super) spill: watch::Sender<SpillState>,
    body: Mutex<FillBody>,
    space: Notify,
}

struct FillBody {
    chunks: VecDeque<Bytes>,
    /// Index of `chunks[0]` in the whole body, and its byte offset.
    first_index: usize,
    first_offset: u64,
    retained_bytes: usize,
    /// While the fill is being stored every chunk is kept; afterwards only unread ones.
    retain_all: bool,
    accepts_readers: bool,
    readers: Vec<Option<ReaderSlot>>,
    end: BodyEnd,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    Open,
    Complete,
    Failed,
}

struct ReaderSlot {
    next_index: usize,
    waker: Option<Waker>,
    /// Set when the reader fell too far behind a fill that streams to disk: it continues
    /// from this byte offset in the fill's file.
    detached_at: Option<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind: keep serving.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Fill {
    fn new() -> Arc<Fill> {
        let (status, _) = watch::channel(FillStatus::Pending);
        let (spill, _) = watch::channel(SpillState::default());
        Arc::new(Fill {
            status,
            spill,
            body: Mutex::new(FillBody {
                chunks: VecDeque::new(),
                first_index: 0,
                first_offset: 0,
                retained_bytes: 0,
                retain_all: true,
                accepts_readers: true,
                readers: Vec::new(),
                end: BodyEnd::Open,
            }),
            space: Notify::new(),
        })
    }

    /// A new reader positioned at the first byte, unless the fill has started discarding
    /// what was read.
    fn reader(self: &Arc<Self>) -> Option<FillReader> {
        let mut body = lock(&self.body);
        if !body.accepts_readers {
            return None;
        }
        let slot = ReaderSlot {
            next_index: body.first_index,
            waker: None,
            detached_at: None,
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
        Some(FillReader::Live(LiveReader {
            fill: Arc::clone(self),
            slot: index,
        }))
    }

    pub fn publish(&self, status: FillStatus) {
        self.status.send_replace(status);
    }

    /// The body is being written to the disk-tier file at `path`.
    pub fn spill_started(&self, path: PathBuf) {
        self.spill.send_replace(SpillState {
            path: Some(Arc::new(path)),
            written: 0,
            abandoned: false,
        });
    }

    /// The first `written` bytes of the body are in the spill file.
    pub fn spill_progress(&self, written: u64) {
        self.spill.send_modify(|state| state.written = written);
    }

    /// The spill file is gone (the fill failed or outgrew the disk tier's limit).
    pub fn spill_abandoned(&self) {
        self.spill.send_modify(|state| state.abandoned = true);
    }

    /// Waits until the fill has settled: stored, refused, failed, or answered stale.
    pub async fn wait_settled(&self) -> FillStatus {
        let mut receiver = self.status.subscribe();
        let settled =
            |status: &FillStatus| !matches!(status, FillStatus::Pending | FillStatus::Streaming(_));
        let status = match receiver.wait_for(settled).await {
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
    pub fn push(&self, chunk: Bytes) {
        let mut body = lock(&self.body);
        body.retained_bytes += chunk.len();
        body.chunks.push_back(chunk);
        wake_all(&mut body);
    }

    /// Stops keeping the whole body (it will not be stored) and closes the fill to new
    /// readers; what every reader has read is released.
    pub fn stop_retaining(&self) {
        let mut body = lock(&self.body);
        body.retain_all = false;
        body.accepts_readers = false;
        trim(&mut body);
    }

    /// Ends a complete body, first appending `last` (a chunk held back until the entry was
    /// stored).
    pub fn end(&self, last: Option<Bytes>) {
        let mut body = lock(&self.body);
        if let Some(chunk) = last {
            body.retained_bytes += chunk.len();
            body.chunks.push_back(chunk);
        }
        body.end = BodyEnd::Complete;
        wake_all(&mut body);
    }

    /// Ends the body as failed: readers get an error, never a clean end of a truncated body.
    pub fn fail(&self) {
        let mut body = lock(&self.body);
        body.end = BodyEnd::Failed;
        body.accepts_readers = false;
        wake_all(&mut body);
    }

    /// Waits while more than `window` bytes are unread by the slowest reader of a fill that
    /// is not retaining everything. Returns false when no reader is left.
    pub async fn wait_for_readers(&self, window: usize) -> bool {
        loop {
            let notified = self.space.notified();
            {
                let body = lock(&self.body);
                if !body.readers.iter().any(Option::is_some) {
                    return false;
                }
                if body.retain_all || body.retained_bytes <= window {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// For a fill streaming to disk: readers more than `window` bytes behind continue from
    /// the file instead of holding the body in memory (and the fill back) for themselves.
    pub fn detach_slow_readers(&self, window: usize) {
        let mut body = lock(&self.body);
        if body.retain_all {
            return;
        }
        let end = body.first_offset + body.retained_bytes as u64;
        let (first_index, first_offset) = (body.first_index, body.first_offset);
        let offsets: Vec<(usize, u64)> = body
            .readers
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let slot = slot.as_ref().filter(|slot| slot.detached_at.is_none())?;
                let unread_from = slot.next_index.saturating_sub(first_index);
                let offset = first_offset
                    + body
                        .chunks
                        .iter()
                        .take(unread_from)
                        .map(|c| c.len() as u64)
                        .sum::<u64>();
                (end - offset > window as u64).then_some((index, offset))
            })
            .collect();
        if offsets.is_empty() {
            return;
        }
        for (index, offset) in offsets {
            if let Some(slot) = body.readers[index].as_mut() {
                slot.detached_at = Some(offset);
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
        }
        trim(&mut body);
    }

    /// The whole body as one buffer of exactly its size: one copy per stored fill. Even a
    /// single chunk is copied, because it is a slice of the connection's read buffer and
    /// keeping it would pin that whole allocation for as long as the entry lives.
    pub fn retained_body(&self, last: Option<&Bytes>) -> Bytes {
        let body = lock(&self.body);
        let mut joined = Vec::with_capacity(body.retained_bytes + last.map_or(0, Bytes::len));
        for chunk in body.chunks.iter().chain(last) {
            joined.extend_from_slice(chunk);
        }
        Bytes::from(joined)
    }
}

fn wake_all(body: &mut FillBody) {
    for slot in body.readers.iter_mut().flatten() {
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

/// Drops chunks every reader has read, when the fill is not keeping them.
fn trim(body: &mut FillBody) -> bool {
    if body.retain_all {
        return false;
    }
    let slowest = body
        .readers
        .iter()
        .flatten()
        .filter(|slot| slot.detached_at.is_none())
        .map(|slot| slot.next_index)
        .min()
        .unwrap_or(body.first_index + body.chunks.len());
    let mut trimmed = false;
    while body.first_index < slowest {
        match body.chunks.pop_front() {
            Some(chunk) => {
                body.retained_bytes -= chunk.len();
                body.first_index += 1;
                body.first_offset += chunk.len() as u64;
                trimmed = true;
            }
            None => break,
        }
    }
    trimmed
}

/// One request's view of a fill's body, streamed as it arrives: from the fill's chunks in
/// memory, or, for a request that joined a large fill after it started streaming to disk,
/// from the disk-tier file the fill is writing (see [`super::tail`]).
pub enum FillReader {
    Live(LiveReader),
    Tail(crate::body::Body),
}

impl http_body::Body for FillReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let FillReader::Live(live) = this {
            let Some(offset) = live.detached_at() else {
                return Pin::new(live).poll_frame(cx);
            };
            // Fell behind a fill that streams to disk: go on from its file.
            match super::tail::reader_at(&live.fill, offset) {
                Some(tail) => *this = FillReader::Tail(tail),
                None => return Poll::Ready(Some(Err("fell behind a fill that failed".into()))),
            }
        }
        match this {
            FillReader::Live(live) => Pin::new(live).poll_frame(cx),
            FillReader::Tail(tail) => Pin::new(tail).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FillReader::Live(live) => live.is_end_stream(),
            FillReader::Tail(tail) => tail.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A reader of the fill's chunks in memory.
pub struct LiveReader {
    fill: Arc<Fill>,
    slot: usize,
}

impl LiveReader {
    fn detached_at(&self) -> Option<u64> {
        lock(&self.fill.body)
            .readers
            .get(self.slot)
            .and_then(Option::as_ref)
            .and_then(|slot| slot.detached_at)
    }
}

impl http_body::Body for LiveReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut body = lock(&this.fill.body);
        let first_index = body.first_index;
        let available = first_index + body.chunks.len();
        let end = body.end;
        let Some(slot) = body.readers.get_mut(this.slot).and_then(Option::as_mut) else {
            return Poll::Ready(Some(Err("fill reader detached".into())));
        };
        if slot.detached_at.is_some() {
            // Detached between the caller's check and now: wake to switch to the file.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let next = slot.next_index;
        if next < first_index {
            return Poll::Ready(Some(Err("fill discarded unread bytes".into())));
        }
        if next < available {
            slot.next_index += 1;
            let chunk = body.chunks[next - first_index].clone();
            if trim(&mut body) {
                self::notify_space(&this.fill);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match end {
            BodyEnd::Complete => Poll::Ready(None),
            // Never a clean end for a truncated body: the client's response is aborted.
            BodyEnd::Failed => Poll::Ready(Some(Err("origin response failed mid-body".into()))),
            BodyEnd::Open => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let body = lock(&self.fill.body);
        let at_end = body.readers[self.slot]
            .as_ref()
            .is_some_and(|slot| slot.next_index >= body.first_index + body.chunks.len());
        at_end && body.end == BodyEnd::Complete
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn notify_space(fill: &Fill) {
    fill.space.notify_waiters();
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        let mut body = lock(&self.fill.body);
        if let Some(slot) = body.readers.get_mut(self.slot) {
            *slot = None;
        }
        trim(&mut body);
        drop(body);
        notify_space(&self.fill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn key(n: u8) -> FillKey {
        FillKey {
            key: PrimaryKey([n; 32]),
            variant_hint: VariantKey::NONE,
        }
    }

    #[tokio::test]
    async fn one_leader_per_key_and_readers_see_every_chunk() {
        let coalescer = Coalescer::default();
        let (role, fill, leader) = coalescer.join(key(1));
        assert!(matches!(role, Role::Leader));
        let (role, same, follower) = coalescer.join(key(1));
        assert!(matches!(role, Role::Follower) && Arc::ptr_eq(&fill, &same));
        assert!(matches!(coalescer.join(key(2)).0, Role::Leader));

        fill.push(Bytes::from_static(b"ab"));
        fill.push(Bytes::from_static(b"cd"));
        fill.end(None);
        assert_eq!(leader.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(follower.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(fill.retained_body(None), "abcd");
        coalescer.leave(&key(1), &fill);
        assert!(matches!(coalescer.join(key(1)).0, Role::Leader));
    }

    /// A failed fill ends every reader with an error, never a clean end.
    #[tokio::test]
    async fn failure_mid_body_is_an_error_for_every_reader() {
        let (fill, reader) = Coalescer::solo();
        fill.push(Bytes::from_static(b"partial"));
        fill.fail();
        assert!(reader.collect().await.is_err());
    }

    /// A fill that is not stored releases what all readers have read.
    #[tokio::test]
    async fn not_retaining_releases_read_chunks_and_refuses_new_readers() {
        let (fill, mut reader) = Coalescer::solo();
        fill.stop_retaining();
        assert!(fill.reader().is_none());
        fill.push(Bytes::from(vec![0u8; 100]));
        fill.push(Bytes::from(vec![0u8; 100]));
        assert_eq!(lock(&fill.body).retained_bytes, 200);
        let frame = reader.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap().len(), 100);
        assert_eq!(lock(&fill.body).retained_bytes, 100);
        assert!(fill.wait_for_readers(1000).await);
        drop(reader);
        assert!(!fill.wait_for_readers(0).await, "no reader left");
    }
}
