//! Per-queue index: queue offset -> (log position, size, tag hash, store
//! timestamp). In memory for every kept offset; appended to one index file
//! per queue at each checkpoint, where entry `n` of the file is offset `n`.
//!
//! An index file entry is 32 bytes, so a 4 KiB block (and a 512-byte
//! sector) holds whole entries:
//! ```text
//! position u64 | size_bytes u32 | tag_hash u32 | store_timestamp_us u64
//! | reserved u32 (zero) | crc32 u32 of (queue offset u64 LE, the 28 bytes before it)
//! ```
//! The CRC covers the offset the entry belongs to, so zeros (a lost write),
//! a torn sector and an entry written at the wrong place all fail it. A
//! file that fails it is never trusted: loading errors and recovery
//! rebuilds the index from the log.

use super::backend::{Storage, StorageFile};
use super::LogError;
use crate::constants::BLOCK_SIZE_BYTES;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// Size of one entry in an index file.
pub const INDEX_FILE_ENTRY_SIZE_BYTES: usize = 32;
const _: () = assert!(crate::constants::BLOCK_SIZE_BYTES % INDEX_FILE_ENTRY_SIZE_BYTES == 0);
const _: () = assert!(512 % INDEX_FILE_ENTRY_SIZE_BYTES == 0);

/// Bytes of an entry its CRC covers (everything before the CRC).
const CHECKED_BYTES: usize = INDEX_FILE_ENTRY_SIZE_BYTES - 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub position: u64,
    pub size_bytes: u32,
    pub tag_hash: u32,
    pub store_timestamp_us: u64,
}

fn entry_crc(offset: u64, checked: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    hasher.update(checked);
    hasher.finalize()
}

impl IndexEntry {
    /// Writes the file entry of queue offset `offset` into `destination`
    /// (`INDEX_FILE_ENTRY_SIZE_BYTES` long).
    fn encode(&self, offset: u64, destination: &mut [u8]) {
        destination[0..8].copy_from_slice(&self.position.to_le_bytes());
        destination[8..12].copy_from_slice(&self.size_bytes.to_le_bytes());
        destination[12..16].copy_from_slice(&self.tag_hash.to_le_bytes());
        destination[16..24].copy_from_slice(&self.store_timestamp_us.to_le_bytes());
        destination[24..CHECKED_BYTES].fill(0);
        let crc = entry_crc(offset, &destination[..CHECKED_BYTES]);
        destination[CHECKED_BYTES..INDEX_FILE_ENTRY_SIZE_BYTES].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads the file entry of queue offset `offset`, if its CRC holds.
    fn decode_checked(offset: u64, source: &[u8]) -> Option<Self> {
        let mut stored = [0; 4];
        stored.copy_from_slice(&source[CHECKED_BYTES..INDEX_FILE_ENTRY_SIZE_BYTES]);
        (u32::from_le_bytes(stored) == entry_crc(offset, &source[..CHECKED_BYTES])).then(|| Self::decode(source))
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

/// Decodes the entries of offsets `first..` in `bytes`, refusing the file at
/// the first entry that fails its CRC.
fn checked_entries(path: &Path, first: u64, bytes: &[u8]) -> Result<Vec<IndexEntry>, LogError> {
    (first..)
        .zip(bytes.chunks_exact(INDEX_FILE_ENTRY_SIZE_BYTES))
        .map(|(offset, entry)| {
            IndexEntry::decode_checked(offset, entry).ok_or_else(|| LogError::Corrupt {
                path: path.to_path_buf(),
                position: offset * INDEX_FILE_ENTRY_SIZE_BYTES as u64,
                detail: format!("the index entry of offset {offset} fails its checksum"),
            })
        })
        .collect()
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
        let byte_start = base_offset * INDEX_FILE_ENTRY_SIZE_BYTES as u64;
        let byte_end = entry_count * INDEX_FILE_ENTRY_SIZE_BYTES as u64;
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
                    bytes.len() / INDEX_FILE_ENTRY_SIZE_BYTES
                ),
            });
        }
        let entries = checked_entries(&path, base_offset, &bytes[(byte_start - read_start) as usize..])?;
        let tail = bytes[(tail_start - read_start) as usize..].to_vec();
        Ok((Self { path, file, tail, entry_count }, entries))
    }

    /// Writes `entries` as offsets `from..`. The block they start in keeps
    /// what the file holds before `from`: from the cached tail when `from`
    /// continues the file, else read back (after a failed or cancelled write,
    /// or a gap of offsets retention deleted). The cache changes only once
    /// the write succeeded.
    pub async fn append(&mut self, from: u64, entries: &[IndexEntry]) -> Result<(), LogError> {
        let byte_start = from * INDEX_FILE_ENTRY_SIZE_BYTES as u64;
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
        bytes.resize(new_start + entries.len() * INDEX_FILE_ENTRY_SIZE_BYTES, 0);
        let slots = bytes[new_start..].chunks_exact_mut(INDEX_FILE_ENTRY_SIZE_BYTES);
        for ((offset, entry), slot) in (from..).zip(entries).zip(slots) {
            entry.encode(offset, slot);
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
        let mut bytes = [0; INDEX_FILE_ENTRY_SIZE_BYTES];
        entry(77).encode(5, &mut bytes);
        assert_eq!(IndexEntry::decode_checked(5, &bytes), Some(entry(77)));
    }

    #[test]
    fn a_damaged_zeroed_or_misplaced_entry_fails_its_checksum() {
        let mut bytes = [0; INDEX_FILE_ENTRY_SIZE_BYTES];
        entry(77).encode(5, &mut bytes);
        for index in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[index] ^= 0x04;
            assert_eq!(IndexEntry::decode_checked(5, &damaged), None, "damage at byte {index} went unnoticed");
        }
        assert_eq!(IndexEntry::decode_checked(6, &bytes), None, "an entry read as another offset passed");
        assert_eq!(IndexEntry::decode_checked(0, &[0; INDEX_FILE_ENTRY_SIZE_BYTES]), None);
    }

    #[test]
    fn an_index_file_with_a_bad_entry_is_refused() {
        use crate::storage::backend::MemoryStorage;
        crate::storage::tests::run(async {
            let storage = MemoryStorage::new();
            let path = std::path::PathBuf::from("/index/0000000002.idx");
            let all: Vec<IndexEntry> = (0..300).map(|offset| entry(offset * 100)).collect();
            let (mut file, _) = IndexFile::open(&storage, path.clone(), 0, 0).await.unwrap();
            file.append(0, &all).await.unwrap();
            file.sync().await.unwrap();
            let damaged_offset = 201;
            let byte = damaged_offset * INDEX_FILE_ENTRY_SIZE_BYTES as u64 + 13;
            storage.flip_bit(&path, byte, 1).unwrap();
            match IndexFile::open(&storage, path.clone(), 0, 300).await {
                Err(LogError::Corrupt { detail, .. }) => assert!(detail.contains("offset 201"), "{detail}"),
                Err(other) => panic!("expected Corrupt, got {other}"),
                Ok(_) => panic!("a damaged index file was trusted"),
            }
            // Offsets before the damage still load.
            let (_, entries) = IndexFile::open(&storage, path, 0, 201).await.unwrap();
            assert_eq!(entries, all[..201]);
        });
    }
}
