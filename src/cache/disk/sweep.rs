//! The sweep after opening: removes what a crash or an earlier run left behind, while
//! requests are served. Temporary files of earlier runs, rows whose body is gone (a power
//! cut lost its file, or its pack is shorter than recorded), rows this build cannot
//! decode, and body files nobody indexes (placed, then a crash before the row). Then the
//! index recounts its totals, the packs' live bytes are counted (packs nobody uses, or
//! mostly dead, are compacted away), and the tier evicts down to capacity.

use super::store::DiskStore;
use super::DiskError;

/// What a sweep found and removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub entries: u64,
    pub orphan_files: u64,
    pub rows_without_body: u64,
    pub temp_files: u64,
    pub undecodable_rows: u64,
}

impl DiskStore {
    /// Runs the sweep; see the module doc.
    ///
    /// # Errors
    /// I/O or index failures (the tier then degrades).
    pub fn sweep(&self) -> Result<SweepReport, DiskError> {
        let mut report = SweepReport {
            temp_files: self.blobs.sweep_temp()?,
            ..SweepReport::default()
        };
        let has_no_file = |meta: &crate::cache::entry::EntryMeta| !self.body_is_present(meta);
        let (rows, released) = self.index()?.sweep_rows(&has_no_file, &self.write_lock)?;
        report.rows_without_body = rows.without_body;
        report.undecodable_rows = rows.undecodable;
        {
            let _serialised = self.write_lock.lock();
            self.delete(released)?;
        }
        // A store places and indexes under the lock, so the check under it is exact.
        report.orphan_files = self.blobs.sweep_orphans(&mut |digest, path| {
            if self.index()?.has_body(digest)? {
                return Ok(false);
            }
            let _serialised = self.write_lock.lock();
            Ok(!self.index()?.has_body(digest)? && std::fs::remove_file(path).is_ok())
        })?;
        let _serialised = self.write_lock.lock();
        self.index()?.recount()?;
        self.packs.set_live(&self.index()?.live_in_packs()?)?;
        report.entries = self.usage().0;
        let (_, released) = self
            .index()?
            .evict_over(self.capacity(), self.max_objects())?;
        self.delete(released)?;
        self.compact_packs()?;
        Ok(report)
    }
}
