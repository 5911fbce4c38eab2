//! [`FillWriter`]: the only way a body enters a fill. The caller (the pipeline's fetch, or
//! an encoder) feeds it chunks; the writer decides, chunk by chunk, whether the body is kept
//! in memory, written to a disk-tier file as it streams, or passed through unstored, and on
//! [`FillWriter::finish`] it stores the entry in the tiers and settles the fill. Nothing
//! outside the cache touches a tier.
//!
//! A kept body whose declared length is one the cache seals in a memory file is written
//! into that file as it arrives ([`GrowingBody`]); the fill's chunks are then slices of the
//! file, the chunk received is let go at once, and storing only seals the file.
//!
//! While a body is being kept, its newest chunk is held back: readers get the last chunk
//! only after the entry is stored, so a client that has the whole response and asks again
//! finds it in the cache.
//!
//! # Cancellation
//! Dropping a writer without [`FillWriter::finish`] or [`FillWriter::fail`] leaves its
//! readers waiting until the fill itself is dropped; callers always end it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Commitment, Fill, FillStatus, SpillState, StreamSlot};
use crate::cache::disk::{BlobWriter, DiskError, DiskTier, TempBlob};
use crate::cache::entry::{EntryMeta, StoredBody, StoredResponse};
use crate::cache::sealed::GrowingBody;
use crate::cache::Cache;
use crate::error::ProxyError;

/// When a fill is not being stored and has several readers, the most bytes it holds ahead
/// of its slowest one while fills hold less than their memory budget, so that the faster
/// readers are not held to the slowest chunk by chunk. Past the budget, or with one reader,
/// none: it reads on once its readers have taken what it holds and one asks for more.
/// One reader loses nothing by that, as the socket buffers on both sides of the fill hold
/// what is in flight; a window would only be memory each stalled client holds (64 clients
/// stalled on 8 MiB bodies streaming through took a full 256 MiB tier's process from 1.07x
/// to 1.17x of the capacity with it).
const UNSTORED_WINDOW: usize = 512 << 10;
/// Past the budget, the window of a fill with several readers: about one origin read, so
/// that a reader that stalls is left behind (see `Fill::leave_laggards`) instead of holding
/// the others, while the fill holds little more than on demand.
pub const UNSTORED_WINDOW_PAST_BUDGET: usize = 128 << 10;
/// For a fill streaming to disk, how far a reader may fall behind before it follows the file.
const SPILL_DETACH_DISTANCE: usize = 4 << 20;

/// Sets the fields of a derived entry that depend on its final body length.
pub type Finalise = Box<dyn FnOnce(&mut EntryMeta, u64) + Send + Sync>;

/// What a fill's body is, for the tiers.
pub enum FillTarget {
    /// An origin response: kept in memory up to `max_object_size`, else on disk up to the
    /// disk tier's limit; one too large for both streams through and marks its URL
    /// hit-for-miss.
    Origin,
    /// A body derived from a stored one (an encoding), kept in memory only; `finalise` sets
    /// the stored fields that depend on the final length.
    Derived(Finalise),
}

/// What became of a finished fill.
#[derive(Debug)]
pub enum Admitted {
    /// Stored; the fill's status is `Complete` with this entry.
    Stored(Arc<StoredResponse>),
    /// Streamed to its readers, not kept: refused room for now (over the fills' memory
    /// budget, or a newcomer past the memory tier's window, without a disk tier); a later
    /// fill may keep it.
    NotKept,
    /// Streamed to its readers, not kept: larger than the memory tier takes, and not on disk
    /// (no disk tier, or larger than it takes, or its write failed).
    TooLarge,
    /// Written to disk, but the tier failed to index it; readers of the file got an error.
    Lost,
}

/// Why a write ended the fill early. The fill is already failed for its readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// Not being stored, and every reader has gone.
    NoReader,
    /// Nobody read it for longer than the bounds allow (size or time).
    Unread,
}

/// Feeds one fill; see the module doc.
pub struct FillWriter<'c> {
    cache: &'c Cache,
    fill: Arc<Fill>,
    meta: Arc<EntryMeta>,
    target: FillTarget,
    memory_limit: u64,
    disk_limit: u64,
    /// Content-Length, when the origin sent one.
    declared: Option<u64>,
    total: u64,
    is_retained: bool,
    /// The body's count against the fills' memory budget while it is kept in memory.
    commitment: Option<Commitment<'c>>,
    spill: Option<BlobWriter>,
    /// The memory file a kept body is written into as it arrives, when its declared length
    /// is one the cache seals: the fill's chunks are then slices of that file.
    growing: Option<GrowingBody>,
    held: HeldBack,
    /// Held while the body streams through unstored.
    stream: Option<StreamSlot>,
    /// Bytes read so far of the body this one derives from (see
    /// [`FillWriter::counts_source`]).
    source_read: Option<Arc<AtomicU64>>,
    /// Whether what arrived of a body that does not complete may be kept (see
    /// [`FillWriter::keeps_what_arrived`]).
    keeps_what_arrived: bool,
}

/// The newest chunk of a kept body, held back from readers until the entry is stored
/// (see the module doc). Its bytes count among the fills' bytes while it is held.
struct HeldBack {
    chunk: Option<Bytes>,
    counted_in: prometheus_client::metrics::gauge::Gauge,
}

impl HeldBack {
    /// Holds `chunk`; returns the one held before.
    fn replace(&mut self, chunk: Bytes) -> Option<Bytes> {
        self.counted_in.inc_by(chunk.len() as i64);
        let previous = self.chunk.replace(chunk);
        self.uncount(previous.as_ref());
        previous
    }

    fn take(&mut self) -> Option<Bytes> {
        let chunk = self.chunk.take();
        self.uncount(chunk.as_ref());
        chunk
    }

    fn as_ref(&self) -> Option<&Bytes> {
        self.chunk.as_ref()
    }

    fn uncount(&self, chunk: Option<&Bytes>) {
        if let Some(chunk) = chunk {
            self.counted_in.dec_by(chunk.len() as i64);
        }
    }
}

impl Drop for HeldBack {
    fn drop(&mut self) {
        self.uncount(self.chunk.as_ref());
    }
}

impl Cache {
    /// Starts feeding `fill` with the body of a response described by `meta`: chooses
    /// where the body goes first (a response declared too large for memory, or one whose
    /// declared length the fills' memory budget has no room left for, goes straight to a
    /// disk file when the tier can take it) and publishes the head to its readers, saying
    /// whether the body is being stored.
    pub async fn begin_fill(
        &self,
        fill: &Arc<Fill>,
        meta: EntryMeta,
        target: FillTarget,
    ) -> FillWriter<'_> {
        let meta = Arc::new(meta);
        let (memory_limit, disk_limit) = match target {
            FillTarget::Origin => (self.max_object_size, self.storable_size()),
            FillTarget::Derived(_) => (self.max_object_size, self.max_object_size),
        };
        let declared = crate::cache::entry::content_length(&meta.headers);
        let mut writer = FillWriter {
            cache: self,
            fill: Arc::clone(fill),
            meta,
            target,
            memory_limit,
            disk_limit,
            declared,
            total: 0,
            is_retained: true,
            commitment: None,
            spill: None,
            growing: None,
            held: HeldBack {
                chunk: None,
                counted_in: fill.held_bytes.clone(),
            },
            stream: None,
            source_read: None,
            keeps_what_arrived: false,
        };
        let too_large = declared.is_some_and(|len| len > memory_limit);
        // A body the memory tier would refuse on arrival is not kept for it (a coding of
        // a stored resource joins a held one, which is never refused).
        let refused = matches!(writer.target, FillTarget::Origin)
            && declared.is_some_and(|len| self.memory.would_refuse(&writer.meta.key, len));
        if !too_large && !refused {
            let budget = self.fill_bounds.memory_budget;
            let newcomer_room = match writer.target {
                FillTarget::Origin => self.memory.newcomer_room(&writer.meta.key, declared),
                // A coding of a stored resource: asked for already.
                FillTarget::Derived(_) => None,
            };
            writer.commitment = self
                .coalescer
                .commit(declared.unwrap_or(0), budget, newcomer_room);
        }
        let kept = writer.commitment.is_some();
        let to_disk = !kept && declared.is_none_or(|len| len <= disk_limit);
        fill.publish(FillStatus::Streaming {
            meta: Arc::clone(&writer.meta),
            storing: kept || (to_disk && self.live_disk().is_some()),
        });
        if to_disk {
            writer.leave_memory().await;
        } else if let (FillTarget::Origin, Some(len), true) = (&writer.target, declared, kept) {
            writer.growing = self.sealer.growing(len);
        }
        writer
    }
}

impl FillWriter<'_> {
    /// The head this fill publishes.
    pub fn meta(&self) -> &Arc<EntryMeta> {
        &self.meta
    }

    /// Has the unread bounds count `read`, the bytes read so far of the body this fill
    /// derives from (an encoding made as a fill's body arrives): an encoding is smaller
    /// than its source, and one of a body of unknown length would otherwise keep a large
    /// download going after every client has gone.
    pub fn counts_source(&mut self, read: Arc<AtomicU64>) {
        self.source_read = Some(read);
    }

    /// Has what arrived of the body kept as a partial entry if the body does not complete
    /// (see [`FillWriter::keep_prefix`]): for an origin's body whose bytes are good as they
    /// come, not one that a check of the whole may still refuse (a package mirror's
    /// artifact, whose digest mismatch ends it as a failure).
    pub fn keeps_what_arrived(&mut self) {
        self.keeps_what_arrived = true;
    }

    /// Adds the next chunk of body. Waits while a fill that is not being stored is more than
    /// a window ahead of its slowest reader.
    ///
    /// # Errors
    /// [`WriteError`] when the fill was abandoned (no reader left, or unread for too long);
    /// its readers have been failed and nothing is stored.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), WriteError> {
        self.total += chunk.len() as u64;
        if self.is_retained && (self.total > self.memory_limit || !self.count_received()) {
            self.leave_memory().await;
        }
        let chunk = self.write_into_growing(chunk);
        if self.total > self.disk_limit {
            self.drop_spill().await;
        }
        if let Some(active) = self.spill.as_mut() {
            match active.write(&chunk).await {
                Ok(()) => {
                    let written = active.flushed();
                    self.fill.spill.send_modify(|state| {
                        if let SpillState::Writing { written: at, .. } = state {
                            *at = written;
                        }
                    });
                }
                Err(source) => self.spill_failed(source).await,
            }
        }
        if self.is_retained || self.spill.is_some() {
            if let Some(previous) = self.held.replace(chunk) {
                self.fill.push(previous);
            }
            if self.spill.is_some() {
                // A reader far behind continues from the file, so neither memory nor the
                // other readers wait for it.
                self.fill.detach_slow_readers(SPILL_DETACH_DISTANCE);
            }
            return self.check_unread().await;
        }
        if let Some(previous) = self.held.take() {
            self.fill.push(previous);
        }
        self.fill.push(chunk);
        if self.stream.is_none() {
            self.stream = Some(self.cache.coalescer().stream());
        }
        let budget = self.cache.fill_bounds.memory_budget;
        let past_budget = self.cache.coalescer().holds_past(budget);
        let window = unstored_window(self.fill.readership().0, past_budget);
        let read_on = if window == 0 {
            self.fill.wait_for_demand().await
        } else {
            self.fill.wait_for_readers(window).await
        };
        if !read_on && self.abandon("no reader left").await {
            return Err(WriteError::NoReader);
        }
        self.check_unread().await
    }

    /// The whole body has arrived: stores it where it fits and settles the fill.
    ///
    /// Each way of storing is boxed: each holds this writer and its callees by value, and
    /// together unboxed they made this future 16 KB, copied on every miss.
    pub async fn finish(mut self) -> Admitted {
        let spilled = match self.spill.take() {
            Some(writer) => match Box::pin(writer.finish()).await {
                Ok(temp) => Some(temp),
                Err(source) => {
                    self.fill.set_spill(SpillState::Abandoned);
                    if let Some(disk) = self.cache.live_disk() {
                        degrade(disk, source);
                    }
                    None
                }
            },
            None => None,
        };
        if self.is_retained {
            return Box::pin(self.store_retained()).await;
        }
        if let Some(temp) = spilled {
            return Box::pin(self.commit_spilled(temp)).await;
        }
        // Streamed through, too large to keep: the next burst goes straight through. A
        // body that was only refused room (the fills' budget was taken, a newcomer past the
        // tier's window) may be kept next time: the next burst shares one fetch for it.
        let too_large = self.total > self.memory_limit;
        if too_large && matches!(self.target, FillTarget::Origin) {
            self.cache.remember_uncacheable(self.meta.key).await;
        }
        self.end_unstored();
        if too_large {
            Admitted::TooLarge
        } else {
            Admitted::NotKept
        }
    }

    /// The whole body has arrived and is not to be stored (it is too large to keep, was
    /// refused room, or what it was derived from was not stored): its readers get a clean
    /// end, and the fill settles as streamed, so that what waits for it to settle (a Range
    /// request waiting for the stored object, an encoding to be stored beside it) does not
    /// wait for ever.
    pub fn end_unstored(mut self) {
        self.fill.end(self.held.take());
        self.fill.publish(FillStatus::Streamed {
            meta: Arc::clone(&self.meta),
        });
    }

    /// The body failed (the origin broke off, or stalled past the body-read timeout):
    /// readers get an error, and only what arrived is kept, as a partial entry (see
    /// [`FillWriter::keep_prefix`]).
    pub async fn fail(mut self, error: ProxyError) {
        self.keep_prefix().await;
        self.drop_spill().await;
        self.fill.fail();
        self.fill.publish(FillStatus::Failed(error));
    }

    async fn store_retained(mut self) -> Admitted {
        let mut meta = (*self.meta).clone();
        if let Some(growing) = self.growing.take() {
            match growing.seal() {
                Ok((sealed, digest)) => {
                    let entry = Arc::new(StoredResponse::from_sealed(meta, sealed, digest));
                    return Box::pin(self.store_entry(entry)).await;
                }
                // Shorter than declared cannot happen (the connection checks the length),
                // but the chunks hold the body whatever the file says.
                Err(error) => tracing::debug!(%error, "memory file not sealed"),
            }
        }
        let chunks = self.fill.retained_chunks(self.held.as_ref());
        if let FillTarget::Derived(finalise) =
            std::mem::replace(&mut self.target, FillTarget::Origin)
        {
            finalise(
                &mut meta,
                chunks.iter().map(|chunk| chunk.len() as u64).sum(),
            );
        }
        let entry = Arc::new(self.cache.stored_from_chunks(meta, chunks).await);
        Box::pin(self.store_entry(entry)).await
    }

    async fn store_entry(mut self, entry: Arc<StoredResponse>) -> Admitted {
        self.cache
            .store(Arc::clone(&entry), crate::cache::StoreChange::Body)
            .await;
        if let StoredBody::Sealed(sealed) = &entry.body {
            if !self.cache.memory_holds_entry(&entry) {
                let hold = self.cache.coalescer().hold(entry.meta.body_len);
                sealed.keep_while_held(Box::new(hold));
            }
        }
        self.settle(Some(Arc::clone(&entry)));
        self.fill.hand_over(Arc::clone(&entry));
        Admitted::Stored(entry)
    }

    /// Streamed to disk as it arrived: index the file, then release the last chunk, so a
    /// client holding the whole response finds it stored.
    async fn commit_spilled(mut self, temp: TempBlob) -> Admitted {
        let mut stored = (*self.meta).clone();
        stored.body_len = temp.len;
        stored.body_digest = temp.digest;
        let entry = match self.cache.live_disk() {
            Some(disk) => self.cache.commit_file(disk, stored, temp).await,
            None => None,
        };
        match &entry {
            Some(entry) => {
                if let Some(file) = entry.body.file() {
                    self.fill.set_spill(SpillState::Committed {
                        path: Arc::new(file.path.clone()),
                        len: entry.meta.body_len,
                        digest: entry.meta.body_digest,
                    });
                }
            }
            None => self.fill.set_spill(SpillState::Abandoned),
        }
        let admitted = match &entry {
            Some(entry) => Admitted::Stored(Arc::clone(entry)),
            None => Admitted::Lost,
        };
        if entry.is_none() {
            // Followers of the file need an ending too.
            self.fill.end(self.held.take());
            self.fill.publish(FillStatus::Failed(ProxyError::Internal(
                "the disk tier failed while storing".into(),
            )));
            return admitted;
        }
        self.settle(entry);
        // Whole in its file now: readers still behind go on from it, and the chunks kept
        // for them are let go (a stalled client would hold up to the last 4 MiB of the
        // body in memory for as long as it stalled).
        self.fill.detach_slow_readers(0);
        admitted
    }

    /// Releases the held-back chunk and publishes the stored entry.
    fn settle(&mut self, entry: Option<Arc<StoredResponse>>) {
        self.fill.end(self.held.take());
        if let Some(entry) = entry {
            self.fill.publish(FillStatus::Complete {
                entry,
                revalidated: false,
            });
        }
    }

    /// Counts what has arrived against the fills' memory budget (a body with a declared
    /// length counts for all of it from the start); whether it may still be kept.
    fn count_received(&mut self) -> bool {
        let budget = self.cache.fill_bounds.memory_budget;
        let total = self.total;
        self.commitment.as_mut().is_some_and(|commitment| {
            let kept = commitment.grow_to(total, budget);
            commitment.received(total);
            kept
        })
    }

    /// `chunk` as it will be kept: written into the growing memory file and returned as the
    /// file's slice of it (the received chunk, a slice of the connection's read buffer, is
    /// then let go at once); as it is when no file grows, or when writing it failed (the
    /// body is then kept in chunks, and sealed by copying if at all).
    fn write_into_growing(&mut self, chunk: Bytes) -> Bytes {
        let Some(growing) = self.growing.as_mut() else {
            return chunk;
        };
        match growing.append(&chunk) {
            Ok(written) => written,
            Err(error) => {
                tracing::debug!(%error, "body goes on in memory chunks");
                self.growing = None;
                chunk
            }
        }
    }

    /// Stops keeping the body in memory: continues in a disk-tier file (with what was kept
    /// so far) when the tier can take it, else the body streams through unstored.
    async fn leave_memory(&mut self) {
        self.is_retained = false;
        self.commitment = None;
        self.growing = None;
        if let Some(disk) = self
            .cache
            .live_disk()
            .filter(|_| self.total <= self.disk_limit)
        {
            self.spill = self.spill_so_far(disk).await;
            if let Some(writer) = &self.spill {
                self.fill.set_spill(SpillState::Writing {
                    path: Arc::new(writer.path().to_path_buf()),
                    written: writer.flushed(),
                });
            }
        }
        self.fill.stop_retaining();
    }

    /// A disk-tier writer holding everything kept so far (with the held-back chunk);
    /// `None` when the tier cannot take it.
    async fn spill_so_far(&self, disk: &DiskTier) -> Option<BlobWriter> {
        // Room for the declared length, or (unknown) for what has come so far: the rest is
        // counted when the body is committed.
        let expected = crate::cache::entry::content_length(&self.meta.headers)
            .unwrap_or(self.total)
            .max(self.total);
        let mut writer = disk.blob_writer(expected).await?;
        let so_far = self.fill.retained_body(self.held.as_ref());
        match writer.write(&so_far).await {
            Ok(()) => Some(writer),
            Err(source) => {
                degrade(disk, source);
                writer.discard().await;
                None
            }
        }
    }

    async fn drop_spill(&mut self) {
        if let Some(writer) = self.spill.take() {
            self.fill.set_spill(SpillState::Abandoned);
            writer.discard().await;
        }
    }

    async fn spill_failed(&mut self, source: std::io::Error) {
        if let Some(disk) = self.cache.live_disk() {
            degrade(disk, source);
        }
        self.drop_spill().await;
    }

    /// When this fill is to be abandoned for having no reader: at once for a body that has
    /// passed (or declares more than) `unread_limit`, else `unread_timeout` after the last
    /// reader left; `None` while someone reads (or for a background fill).
    fn unread_deadline(&self) -> Option<Instant> {
        let (readers, unread_since) = self.fill.readership();
        let since = unread_since.filter(|_| readers == 0)?;
        let bounds = &self.cache.fill_bounds;
        let source = self
            .source_read
            .as_ref()
            .map_or(0, |read| read.load(Ordering::Relaxed));
        let size = self.declared.unwrap_or(0).max(self.total).max(source);
        if size > bounds.unread_limit {
            return Some(since);
        }
        Some(since + bounds.unread_timeout)
    }

    /// Resolves when nobody has read this fill for longer than the bounds allow (see
    /// [`super::FillBounds`]); a caller waiting on a stalled origin selects on it, then
    /// calls [`FillWriter::abandon_unread`]. Pending while someone reads.
    ///
    /// # Cancellation
    /// Safe to drop at any point: it only watches.
    pub async fn unread_too_long(&self) {
        loop {
            // Registered before the check, so a reader leaving in between is not missed.
            let changed = self.fill.readers_left.notified();
            match self.unread_deadline() {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline.into()) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Ends a fill [`FillWriter::unread_too_long`] gave up on: its download stops. False,
    /// and the fill goes on, when a reader joined meanwhile.
    pub async fn abandon_unread(&mut self) -> bool {
        self.abandon("nobody is reading").await
    }

    /// Abandons a fill nobody has read for longer than the bounds allow: a client that
    /// hung up after the head must not keep a large download (and its origin connection)
    /// going. Small storable bodies finish.
    async fn check_unread(&mut self) -> Result<(), WriteError> {
        let is_due = self
            .unread_deadline()
            .is_some_and(|deadline| deadline <= Instant::now());
        if is_due && self.abandon("nobody is reading").await {
            return Err(WriteError::Unread);
        }
        Ok(())
    }

    /// Stops a fill nobody reads: its readers fail (there are none) and nothing is stored.
    /// False, with nothing done, when a reader joined since that was decided.
    async fn abandon(&mut self, why: &'static str) -> bool {
        if !self.fill.close_if_unread() {
            return false;
        }
        self.keep_prefix().await;
        self.drop_spill().await;
        self.fill.fail();
        self.fill
            .publish(FillStatus::Failed(ProxyError::Internal(format!(
                "fill abandoned: {why}"
            ))));
        tracing::debug!(url = %self.meta.url, bytes = self.total, why, "fill abandoned");
        true
    }

    /// RFC 9111 §3.3: what arrived of an origin's 200 that will not complete (nobody reads
    /// it any more, or the origin broke off) is kept as a partial entry, up to the largest
    /// piece the partial store takes, when pieces of its representation can be combined: it
    /// declared its length and has a strong entity tag. Ranges inside it are then answered
    /// from it, and pieces fetched later complete it: a client that downloads in segments
    /// (aria2's first connection is a plain GET it drops at its segment's end) or a viewer
    /// who stops a video leaves the start of the object behind, where it used to leave
    /// nothing. A body being written to a disk file is read back from what was flushed.
    async fn keep_prefix(&mut self) {
        let partials = self.cache.partials();
        let complete_len = match self.declared {
            Some(len) if self.meta.status == http::StatusCode::OK => len,
            _ => return,
        };
        if !self.keeps_what_arrived
            || !matches!(self.target, FillTarget::Origin)
            || crate::cache::partial::strong_etag(&self.meta.headers).is_none()
        {
            return;
        }
        let most = usize::try_from(partials.max_piece()).unwrap_or(usize::MAX);
        // What is read back from the spill file is held in memory until kept: it counts
        // against the fills' budget, or many downloads cancelled at once would each read
        // back a piece beside the others (in memory, the fill's chunks are counted already).
        let mut read_back = None;
        let bytes = if self.is_retained {
            self.fill.retained_prefix(self.held.as_ref(), most)
        } else if let Some(spill) = &self.spill {
            let len = spill.flushed().min(partials.max_piece());
            read_back = self.cache.commit_held(len);
            if read_back.is_none() {
                tracing::debug!(url = %self.meta.url, "fills' memory budget taken: what arrived is not kept");
                return;
            }
            let Some(in_file) = read_prefix(spill.path().to_path_buf(), len).await else {
                return;
            };
            if in_file.len() as u64 != spill.flushed() {
                // Capped at the largest piece, or the file fell short: nothing after it
                // may be joined on.
                in_file
            } else {
                let room = most.saturating_sub(in_file.len());
                let batched = &spill.unflushed()[..spill.unflushed().len().min(room)];
                Bytes::from([&in_file[..], batched].concat())
            }
        } else {
            return;
        };
        let len = (bytes.len() as u64)
            .min(partials.max_piece())
            .min(complete_len);
        if !partials.takes(len) {
            return;
        }
        let range = crate::cache::partial::ContentRange {
            first: 0,
            last: len - 1,
            complete_len,
        };
        // invariant: len <= bytes.len(), so it fits a usize.
        let bytes = bytes.slice(..len as usize);
        let piece = crate::cache::partial::PartialEntry::new((*self.meta).clone(), range, bytes);
        let held = self.cache.add_partial(piece).await;
        // The pieces kept before may have held the rest.
        self.cache.store_if_complete(&held).await;
        drop(read_back);
        tracing::debug!(url = %self.meta.url, bytes = len, "kept what arrived as a partial entry");
    }
}

/// The first `len` bytes of the file at `path`, read on the blocking pool; `None` when it
/// cannot be read (the prefix is then not kept).
async fn read_prefix(path: std::path::PathBuf, len: u64) -> Option<Bytes> {
    use std::io::Read;
    tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::with_capacity(usize::try_from(len).ok()?);
        std::fs::File::open(path)
            .ok()?
            .take(len)
            .read_to_end(&mut bytes)
            .ok()?;
        Some(Bytes::from(bytes))
    })
    .await
    .ok()
    .flatten()
}

/// How far a fill streaming through unstored to `readers` reads ahead of the slowest (see
/// [`UNSTORED_WINDOW`]), and so how far behind a reader may fall before it is left behind;
/// 0 when it reads on only as they ask.
fn unstored_window(readers: usize, fills_past_budget: bool) -> usize {
    match (readers > 1, fills_past_budget) {
        (false, _) => 0,
        (true, false) => UNSTORED_WINDOW,
        (true, true) => UNSTORED_WINDOW_PAST_BUDGET,
    }
}

fn degrade(disk: &DiskTier, source: std::io::Error) {
    disk.degrade(&DiskError::Io {
        path: "body file".into(),
        source,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lone client's stream reads the origin as the client asks, however much budget is
    /// free; coalesced clients get a window while fills are within their budget, and past
    /// it a small one (a laggard is left behind rather than held for).
    #[test]
    fn only_coalesced_readers_are_read_ahead_of() {
        for past_budget in [false, true] {
            assert_eq!(unstored_window(1, past_budget), 0, "one: on demand");
            assert_eq!(unstored_window(0, past_budget), 0, "none to read for");
        }
        assert_eq!(unstored_window(2, false), UNSTORED_WINDOW);
        assert_eq!(unstored_window(2, true), UNSTORED_WINDOW_PAST_BUDGET);
    }
}
