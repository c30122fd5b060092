//! Queues' index files brought up to date for a checkpoint or a recovery's
//! spill: every queue's entries appended first, several files at once, then
//! every file written synced, several at once. One queue after another,
//! each write followed by its own fdatasync, 5,000 queues held a start at
//! 10,000 queues for seconds and kept the checkpoints from ever catching up
//! with the log (docs/PERFORMANCE.md). Written first, all the files' new
//! sizes go to the disk in the journal commit of the first sync, and the
//! syncs after it find their metadata already there.
//!
//! A write that extends its file (every write to a new one) is not
//! asynchronous on ext4: io_uring hands it to a kernel worker that waits for
//! the device. Many at once crowd the log's own writes out of the device's
//! queue, so the caller says how many may be in flight.
//!
//! Each write works on its own copy of the queue's file, handed back in
//! the result: the caller lets the entries leave memory only once every
//! sync returned, so a failure leaves the queues as they were.

use super::backend::Storage;
use super::in_flight::InFlight;
use super::index::{index_path, IndexEntry, IndexFile, QueueIndex};
use super::LogError;
use std::collections::BTreeMap;
use std::path::Path;

/// Index files synced at once.
const SYNCS_IN_FLIGHT_MAX: usize = 16;

/// A queue's entries to append to its index file as offsets `from..`:
/// `file` where the queue has one, else the file in the index directory,
/// created.
pub(super) struct IndexJob<F> {
    pub queue_id: u32,
    pub from: u64,
    pub entries: Vec<IndexEntry>,
    pub file: Option<IndexFile<F>>,
}

/// A queue's entries `[from, to)`, appended to `file` and synced.
pub(super) struct IndexWrite<F> {
    pub queue_id: u32,
    /// The file was created for this write: its name is durable only once
    /// the index directory is synced.
    pub created: bool,
    pub from: u64,
    pub to: u64,
    /// The entries written, where the caller asked to keep them.
    pub entries: Vec<IndexEntry>,
    pub file: IndexFile<F>,
}

impl<F> IndexWrite<F> {
    /// The queue's file back in `files`, and its written entries out of
    /// memory; the entries kept, for the caller.
    pub fn settle(
        self,
        files: &mut BTreeMap<u32, IndexFile<F>>,
        queues: &mut BTreeMap<u32, QueueIndex>,
    ) -> Vec<IndexEntry> {
        files.insert(self.queue_id, self.file);
        if let Some(queue) = queues.get_mut(&self.queue_id) {
            queue.written(self.to);
        }
        self.entries
    }
}

/// Whether the results keep the entries written (a checkpoint hands them
/// to the index cache; a spill lets them go as soon as they are written).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Entries {
    Kept,
    Dropped,
}

/// Runs `jobs` (taken from the iterator one at a time, as a window slot
/// frees), `appends_in_flight` writes at a time, and returns their results
/// in job order. The first error ends it, once the writes and syncs still
/// in flight have finished (`in_flight`).
pub(super) async fn write_and_sync<S: Storage>(
    storage: &S,
    dir: &Path,
    jobs: impl Iterator<Item = IndexJob<S::File>>,
    appends_in_flight: usize,
    entries: Entries,
) -> Result<Vec<IndexWrite<S::File>>, LogError> {
    let mut written = Vec::new();
    let mut appends = InFlight::new(appends_in_flight);
    for job in jobs {
        let (storage, path) = (storage.clone(), index_path(dir, job.queue_id));
        let append = async move {
            let created = job.file.is_none();
            let mut file = match job.file {
                Some(file) => file,
                None => IndexFile::open(&storage, path, 0, 0).await?,
            };
            file.append(job.from, &job.entries).await?;
            let to = job.from + job.entries.len() as u64;
            let entries = if entries == Entries::Kept { job.entries } else { Vec::new() };
            Ok(IndexWrite { queue_id: job.queue_id, created, from: job.from, to, entries, file })
        };
        written.extend(appends.push(append).await?);
    }
    written.extend(appends.finish().await?);
    let mut syncs = InFlight::new(SYNCS_IN_FLIGHT_MAX);
    for write in &written {
        let handle = write.file.handle();
        syncs.push(async move { handle.sync().await }).await?;
    }
    syncs.finish().await?;
    Ok(written)
}
