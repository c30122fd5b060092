//! The index entries a recovery scan finds go to the index files once they
//! pass `index_unwritten_entries_wake`, as a checkpoint would write them: a
//! rebuild from the whole log (no checkpoint, or index files that do not
//! match it) holds that many entries in memory at most, not 32 bytes for
//! every retained message. The files are trusted only once a checkpoint
//! names them, so a crash during a rebuild means another rebuild.

use super::backend::Storage;
use super::index::{index_path, IndexFile, QueueIndex};
use super::LogError;
use std::collections::BTreeMap;
use std::path::Path;

pub(super) type IndexFiles<F> = BTreeMap<u32, IndexFile<F>>;

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
        for (queue_id, queue) in queues.iter_mut() {
            let (from, to) = (queue.file_end(), queue.next_offset());
            if to == from {
                continue;
            }
            let entries = queue.unwritten_entries(from, to);
            if !self.files.contains_key(queue_id) {
                let file = IndexFile::open(self.storage, index_path(self.dir, *queue_id), 0, 0).await?;
                self.files.insert(*queue_id, file);
            }
            let Some(file) = self.files.get_mut(queue_id) else { continue };
            file.append(from, &entries).await?;
            file.sync().await?;
            queue.written(to);
        }
        self.in_memory = 0;
        Ok(())
    }
}
