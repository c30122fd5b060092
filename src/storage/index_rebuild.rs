//! The index entries a recovery scan finds go to the index files once they
//! pass `index_unwritten_entries_wake`, as a checkpoint would write them: a
//! rebuild from the whole log (no checkpoint, or index files that do not
//! match it) holds that many entries in memory at most, not 32 bytes for
//! every retained message. The files are trusted only once a checkpoint
//! names them, so a crash during a rebuild means another rebuild.

use super::backend::Storage;
use super::index::{index_path, IndexFile, QueueIndex};
use super::LogError;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

pub(super) type IndexFiles<F> = BTreeMap<u32, IndexFile<F>>;

/// Queues whose entries a spill writes and syncs at once: nothing else
/// runs during a recovery, and one after another 5,000 queues' writes held
/// a start at 10,000 queues for seconds (docs/PERFORMANCE.md).
const SPILL_WRITES_IN_FLIGHT_MAX: usize = 16;

/// One queue's spill, in flight: its queue, the offset its file now ends
/// at, and the file.
type SpillWrite<F> = glommio::Task<Result<(u32, u64, IndexFile<F>), LogError>>;

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
        // Offsets only: a queue's entries are copied as its write starts,
        // so memory holds the threshold plus the writes in flight.
        let jobs: Vec<(u32, u64, u64)> = queues
            .iter()
            .filter(|(_, queue)| queue.next_offset() > queue.file_end())
            .map(|(queue_id, queue)| (*queue_id, queue.file_end(), queue.next_offset()))
            .collect();
        let mut in_flight = VecDeque::new();
        for (queue_id, from, to) in jobs {
            if in_flight.len() == SPILL_WRITES_IN_FLIGHT_MAX {
                let oldest = in_flight.pop_front().expect("a full window holds a write");
                self.spilled(oldest, queues).await?;
            }
            let Some(queue) = queues.get(&queue_id) else { continue };
            let entries = queue.unwritten_entries(from, to);
            let file = self.files.remove(&queue_id);
            let (storage, path) = (self.storage.clone(), index_path(self.dir, queue_id));
            in_flight.push_back(glommio::spawn_local(async move {
                let file = IndexFile::append_synced(file, &storage, path, from, &entries).await?;
                Ok((queue_id, to, file))
            }));
        }
        while let Some(write) = in_flight.pop_front() {
            self.spilled(write, queues).await?;
        }
        self.in_memory = 0;
        Ok(())
    }

    /// Takes back a queue's file once its entries are written and synced;
    /// memory lets them go.
    async fn spilled(
        &mut self,
        write: SpillWrite<S::File>,
        queues: &mut BTreeMap<u32, QueueIndex>,
    ) -> Result<(), LogError> {
        let (queue_id, to, file) = write.await?;
        self.files.insert(queue_id, file);
        if let Some(queue) = queues.get_mut(&queue_id) {
            queue.written(to);
        }
        Ok(())
    }
}
