//! Per-queue index: queue offset -> (log position, size, tag hash, store
//! timestamp). In memory for every kept offset; appended to one index file
//! per queue at each checkpoint, where entry `n` of the file is offset `n`.

use super::backend::{Storage, StorageFile};
use super::LogError;
use crate::constants::BLOCK_SIZE_BYTES;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

pub const INDEX_ENTRY_SIZE_BYTES: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub position: u64,
    pub size_bytes: u32,
    pub tag_hash: u32,
    pub store_timestamp_us: u64,
}

impl IndexEntry {
    fn encode(&self, destination: &mut [u8]) {
        destination[0..8].copy_from_slice(&self.position.to_le_bytes());
        destination[8..12].copy_from_slice(&self.size_bytes.to_le_bytes());
        destination[12..16].copy_from_slice(&self.tag_hash.to_le_bytes());
        destination[16..24].copy_from_slice(&self.store_timestamp_us.to_le_bytes());
    }

    fn decode(source: &[u8]) -> Self {
        let mut word = [0; 8];
        word.copy_from_slice(&source[0..8]);
        let position = u64::from_le_bytes(word);
        word.copy_from_slice(&source[16..24]);
        let store_timestamp_us = u64::from_le_bytes(word);
        let mut half = [0; 4];
        half.copy_from_slice(&source[8..12]);
        let size_bytes = u32::from_le_bytes(half);
        half.copy_from_slice(&source[12..16]);
        let tag_hash = u32::from_le_bytes(half);
        Self { position, size_bytes, tag_hash, store_timestamp_us }
    }
}

/// An index entry and the end of the log record that created it: the entry is
/// visible once the visible log position reaches `record_end`.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub entry: IndexEntry,
    pub record_end: u64,
}

/// The in-memory index of one queue.
#[derive(Default)]
pub struct QueueIndex {
    /// Queue offset of `slots[0]`; offsets below it were deleted by retention.
    base_offset: u64,
    slots: VecDeque<Slot>,
    /// Offsets below this are in the index file.
    pub persisted_offset: u64,
}

impl QueueIndex {
    pub fn starting_at(base_offset: u64) -> Self {
        Self { base_offset, slots: VecDeque::new(), persisted_offset: base_offset }
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    pub fn next_offset(&self) -> u64 {
        self.base_offset + self.slots.len() as u64
    }

    pub fn push(&mut self, entry: IndexEntry, record_end: u64) -> u64 {
        debug_assert!(self.slots.back().is_none_or(|last| last.record_end <= record_end));
        self.slots.push_back(Slot { entry, record_end });
        self.next_offset() - 1
    }

    pub fn get(&self, offset: u64) -> Option<&Slot> {
        let index = offset.checked_sub(self.base_offset)?;
        self.slots.get(usize::try_from(index).ok()?)
    }

    /// The first offset whose record is beyond `visible_position`.
    pub fn visible_end_offset(&self, visible_position: u64) -> u64 {
        self.base_offset + self.slots.partition_point(|slot| slot.record_end <= visible_position) as u64
    }

    /// Entries `[from, to)` for the index file.
    pub fn entries(&self, from: u64, to: u64) -> Vec<IndexEntry> {
        (from..to).filter_map(|offset| self.get(offset)).map(|slot| slot.entry).collect()
    }

    /// Forgets every entry up to the last one pointing below `position`
    /// (whose segment retention is deleting).
    pub fn forget_below(&mut self, position: u64) {
        let Some(last_below) = self.slots.iter().rposition(|slot| slot.entry.position < position) else {
            return;
        };
        self.slots.drain(..=last_below);
        self.base_offset += last_below as u64 + 1;
        self.persisted_offset = self.persisted_offset.max(self.base_offset);
    }

    /// Forgets every entry whose record ends past `position` (a log cut
    /// short at recovery).
    pub fn forget_from(&mut self, position: u64) {
        let kept = self.slots.partition_point(|slot| slot.record_end <= position);
        self.slots.truncate(kept);
        self.persisted_offset = self.persisted_offset.min(self.next_offset());
    }

    /// Restores entries loaded from an index file (all durable).
    pub fn restore(base_offset: u64, entries: Vec<IndexEntry>) -> Self {
        let next_offset = base_offset + entries.len() as u64;
        let slots = entries
            .into_iter()
            .map(|entry| Slot { entry, record_end: entry.position + u64::from(entry.size_bytes) })
            .collect();
        Self { base_offset, slots, persisted_offset: next_offset }
    }
}

pub fn index_path(dir: &Path, queue_id: u32) -> PathBuf {
    dir.join(format!("{queue_id:010}.idx"))
}

/// The index file of one queue, appended with O_DIRECT block writes: the
/// partially filled last block is kept in memory and rewritten whole.
pub struct IndexFile<F> {
    path: PathBuf,
    file: F,
    /// Bytes of the last, partially filled block.
    tail: Vec<u8>,
    /// Entries in the file (offset of the next entry to write).
    entry_count: u64,
}

fn block_down(byte: u64) -> u64 {
    byte - byte % BLOCK_SIZE_BYTES as u64
}

impl<F: StorageFile> IndexFile<F> {
    /// Opens the index file and reads offsets `[base_offset, entry_count)`.
    pub async fn open<S: Storage<File = F>>(
        storage: &S,
        path: PathBuf,
        base_offset: u64,
        entry_count: u64,
    ) -> Result<(Self, Vec<IndexEntry>), LogError> {
        let io = |operation, error| LogError::io(operation, &path, 0, error);
        let file = storage.open_or_create(&path).await.map_err(|error| io("open index", error))?;
        let byte_start = base_offset * INDEX_ENTRY_SIZE_BYTES as u64;
        let byte_end = entry_count * INDEX_ENTRY_SIZE_BYTES as u64;
        let tail_start = block_down(byte_end);
        let read_start = byte_start.min(tail_start);
        let bytes = file
            .read_at(read_start, (byte_end - read_start) as usize)
            .await
            .map_err(|error| io("read index", error))?;
        if bytes.len() as u64 != byte_end - read_start {
            return Err(LogError::Corrupt {
                path,
                position: byte_end,
                detail: format!(
                    "index file holds {} of the {entry_count} entries the checkpoint names",
                    bytes.len() / INDEX_ENTRY_SIZE_BYTES
                ),
            });
        }
        let entries = bytes[(byte_start - read_start) as usize..]
            .chunks_exact(INDEX_ENTRY_SIZE_BYTES)
            .map(IndexEntry::decode)
            .collect();
        let tail = bytes[(tail_start - read_start) as usize..].to_vec();
        Ok((Self { path, file, tail, entry_count }, entries))
    }

    /// Writes `entries` as offsets `from..`. The block they start in keeps
    /// what the file holds before `from`: from the cached tail when `from`
    /// continues the file, else read back (after a failed or cancelled write,
    /// or a gap of offsets retention deleted). The cache changes only once
    /// the write succeeded.
    pub async fn append(&mut self, from: u64, entries: &[IndexEntry]) -> Result<(), LogError> {
        let byte_start = from * INDEX_ENTRY_SIZE_BYTES as u64;
        let block_start = block_down(byte_start);
        let prefix = if from == self.entry_count {
            self.tail.clone()
        } else {
            let mut prefix = self
                .file
                .read_at(block_start, (byte_start - block_start) as usize)
                .await
                .map_err(|error| LogError::io("read index", &self.path, block_start, error))?;
            prefix.resize((byte_start - block_start) as usize, 0);
            prefix
        };
        debug_assert_eq!(prefix.len() as u64, byte_start - block_start);
        let mut bytes = prefix;
        let new_start = bytes.len();
        bytes.resize(new_start + entries.len() * INDEX_ENTRY_SIZE_BYTES, 0);
        for (entry, slot) in entries.iter().zip(bytes[new_start..].chunks_exact_mut(INDEX_ENTRY_SIZE_BYTES)) {
            entry.encode(slot);
        }
        let used = bytes.len();
        let padded = used.div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES;
        let mut block = super::aligned::AlignedBuf::zeroed(padded.max(BLOCK_SIZE_BYTES));
        block.as_mut_slice()[..used].copy_from_slice(&bytes);
        self.file
            .write_at(&block.as_slice()[..padded], block_start)
            .await
            .map_err(|error| LogError::io("write index", &self.path, block_start, error))?;
        self.tail = bytes[used - used % BLOCK_SIZE_BYTES..].to_vec();
        self.entry_count = from + entries.len() as u64;
        Ok(())
    }

    pub async fn sync(&self) -> Result<(), LogError> {
        self.file.fdatasync().await.map_err(|error| LogError::io("fdatasync index", &self.path, 0, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(position: u64) -> IndexEntry {
        IndexEntry { position, size_bytes: 100, tag_hash: 3, store_timestamp_us: position * 10 }
    }

    #[test]
    fn visibility_follows_the_record_end() {
        let mut index = QueueIndex::default();
        index.push(entry(0), 100);
        index.push(entry(100), 200);
        assert_eq!(index.visible_end_offset(99), 0);
        assert_eq!(index.visible_end_offset(100), 1);
        assert_eq!(index.visible_end_offset(1000), 2);
    }

    #[test]
    fn forgetting_below_a_position_moves_the_base_offset() {
        let mut index = QueueIndex::default();
        for position in [0, 100, 200, 300] {
            index.push(entry(position), position + 100);
        }
        index.forget_below(200);
        assert_eq!(index.base_offset(), 2);
        assert_eq!(index.get(1).map(|slot| slot.entry.position), None);
        assert_eq!(index.get(2).map(|slot| slot.entry.position), Some(200));
        assert_eq!(index.next_offset(), 4);
    }

    #[test]
    fn an_index_file_reopened_or_rewound_keeps_the_entries_before_the_write() {
        use crate::storage::backend::MemoryStorage;
        crate::storage::tests::run(async {
            let storage = MemoryStorage::new();
            let path = std::path::PathBuf::from("/index/0000000001.idx");
            let all: Vec<IndexEntry> = (0..300).map(|offset| entry(offset * 100)).collect();
            let (mut file, _) = IndexFile::open(&storage, path.clone(), 0, 0).await.unwrap();
            file.append(0, &all[..100]).await.unwrap();
            // As after a cancelled checkpoint: the cache is gone, the file is not.
            let (mut reopened, _) = IndexFile::open(&storage, path.clone(), 0, 0).await.unwrap();
            reopened.append(100, &all[100..250]).await.unwrap();
            // As after a failed fdatasync: the same offsets written again.
            reopened.append(170, &all[170..300]).await.unwrap();
            let (_, entries) = IndexFile::open(&storage, path, 0, 300).await.unwrap();
            assert_eq!(entries, all);
        });
    }

    #[test]
    fn an_entry_round_trips() {
        let mut bytes = [0; INDEX_ENTRY_SIZE_BYTES];
        entry(77).encode(&mut bytes);
        assert_eq!(IndexEntry::decode(&bytes), entry(77));
    }
}
