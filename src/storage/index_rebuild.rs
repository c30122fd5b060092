//! The index entries a recovery scan finds go to the index files once they
//! pass `index_unwritten_entries_wake`, as a checkpoint would write them: a
//! rebuild from the whole log (no checkpoint, or index files that do not
//! match it) holds that many entries in memory at most, not 32 bytes for
//! every retained message. The files are trusted only once a checkpoint
//! names them, so a crash during a rebuild means another rebuild.

use super::backend::Storage;
use super::index::{IndexFile, QueueIndex};
use super::index_writes::{write_and_sync, Entries, IndexJob};
use super::LogError;
use std::collections::BTreeMap;
use std::path::Path;

pub(super) type IndexFiles<F> = BTreeMap<u32, IndexFile<F>>;

/// Index writes a spill keeps in flight: nothing else runs during a
/// recovery.
const SPILL_APPENDS_IN_FLIGHT_MAX: usize = 16;

/// Writes a scan's index entries out past a threshold.
pub(super) struct IndexSpill<'a, S: Storage> {
    storage: &'a S,
    dir: &'a Path,
    pub files: IndexFiles<S::File>,
    threshold: u64,
    in_memory: u64,
}

impl<'a, S: Storage> IndexSpill<'a, S> {
    pub fn new(storage: &'a S, dir: &'a Path, files: IndexFiles<S::File>, threshold: u64) -> Self {
        debug_assert!(threshold > 0);
        Self { storage, dir, files, threshold, in_memory: 0 }
    }

    /// One more entry in memory; past the threshold every queue's entries
    /// go to its index file (written and synced) and leave memory.
    pub async fn entry_added(&mut self, queues: &mut BTreeMap<u32, QueueIndex>) -> Result<(), LogError> {
        self.in_memory += 1;
        if self.in_memory < self.threshold {
            return Ok(());
        }
        // A queue's entries are copied as its write is queued, and let go
        // once written: memory holds the threshold plus the writes in
        // flight and the one waiting for room.
        let files = &mut self.files;
        let jobs =
            queues.iter().filter(|(_, queue)| queue.next_offset() > queue.file_end()).map(|(queue_id, queue)| {
                let from = queue.file_end();
                let entries = queue.unwritten_entries(from, queue.next_offset());
                IndexJob { queue_id: *queue_id, from, entries, file: files.remove(queue_id) }
            });
        let written =
            write_and_sync(self.storage, self.dir, jobs, SPILL_APPENDS_IN_FLIGHT_MAX, Entries::Dropped).await?;
        for write in written {
            write.settle(&mut self.files, queues);
        }
        self.in_memory = 0;
        Ok(())
    }
}
