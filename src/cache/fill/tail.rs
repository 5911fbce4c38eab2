//! Following a fill through its disk file: a request that joins a large fill after the
//! fill stopped keeping its body in memory (it streams to a disk-tier file instead), or
//! that fell too far behind it, reads that file as it grows instead of making a second
//! origin fetch.
//!
//! The reading and verifying is the disk tier's one verified reader
//! ([`crate::cache::disk::read::hashed_body`]); this module only tells it, from the fill's
//! [`SpillState`], how far the file may be read and when it is complete. A failed fill ends
//! the follower's response in an error, never a clean end of a truncated body.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Fill, SpillState};
use crate::body::{Body, BoxError};
use crate::cache::disk::read::{hashed_body, Extent, Source};

/// A reader for a late follower of `fill`, if the fill is writing its body to disk.
pub fn reader(fill: &Arc<Fill>) -> Option<Body> {
    reader_at(fill, 0)
}

/// As [`reader`], sending only bytes from `emit_from` on (a reader that already received
/// the bytes before it from memory); the whole file is still hashed.
pub fn reader_at(fill: &Arc<Fill>, emit_from: u64) -> Option<Body> {
    if !matches!(
        &*fill.spill.borrow(),
        SpillState::Writing { .. } | SpillState::Committed { .. }
    ) {
        return None;
    }
    let source = Spill {
        _follower: fill.follow_file()?,
        spill: fill.spill.subscribe(),
    };
    Some(hashed_body(source, (emit_from, u64::MAX), None))
}

/// A fill's spill file as a verified reader's source.
struct Spill {
    /// Keeps the fill (and so its spill sender) alive while following it, and counts this
    /// reader among the fill's: a fill read only from its file is still read.
    _follower: super::FileFollower,
    spill: watch::Receiver<SpillState>,
}

impl Source for Spill {
    fn extent(&mut self) -> Result<Extent, BoxError> {
        match &*self.spill.borrow_and_update() {
            SpillState::Writing { path, written } => Ok(Extent {
                path: Arc::clone(path),
                readable: *written,
                complete: None,
            }),
            SpillState::Committed { path, len, digest } => Ok(Extent {
                path: Arc::clone(path),
                readable: *len,
                complete: Some((*len, *digest)),
            }),
            SpillState::None | SpillState::Abandoned => {
                Err("the fill being followed failed".into())
            }
        }
    }

    async fn changed(&mut self) -> Result<(), BoxError> {
        self.spill
            .changed()
            .await
            .map_err(|_| BoxError::from("fill gone"))
    }
}
