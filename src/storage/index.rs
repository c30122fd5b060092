//! Per-queue index: queue offset -> (log position, size, tag hash, store
//! timestamp). One index file per queue, where entry `n` of the file is
//! offset `n`, written by the checkpointer. In memory: only the entries not
//! yet in the file (`QueueIndex`); older ones are read from the file in
//! pages through the shard's bounded cache (`index_cache`).
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
use crate::constants::{BLOCK_SIZE_BYTES, INDEX_PAGE_BYTES};
use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Size of one entry in an index file.
pub const INDEX_FILE_ENTRY_SIZE_BYTES: usize = 32;
const _: () = assert!(crate::constants::BLOCK_SIZE_BYTES % INDEX_FILE_ENTRY_SIZE_BYTES == 0);
const _: () = assert!(512 % INDEX_FILE_ENTRY_SIZE_BYTES == 0);

/// Index entries per write to an index file (`BACKGROUND_WRITE_PIECE_BYTES`):
/// at 50,000 messages a second a checkpoint wrote 100,000 entries (3.2 MB)
/// at once, and the log's answers waited 10-20 ms every checkpoint.
pub const INDEX_ENTRIES_PER_WRITE: usize = crate::constants::BACKGROUND_WRITE_PIECE_BYTES / INDEX_FILE_ENTRY_SIZE_BYTES;

/// Bytes of an entry its CRC covers (everything before the CRC).
const CHECKED_BYTES: usize = INDEX_FILE_ENTRY_SIZE_BYTES - 4;

/// Slots an idle queue's unwritten buffer may keep allocated.
const UNWRITTEN_CAPACITY_KEPT: usize = 16;

/// Entries in one index-cache page.
pub const INDEX_PAGE_ENTRIES: u64 = (INDEX_PAGE_BYTES / INDEX_FILE_ENTRY_SIZE_BYTES) as u64;

/// One queue offset. `size_bytes == 0` is a tombstone: the offset was lost
/// (`ringmq repair`), a fetch skips it.
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
    pub fn is_tombstone(&self) -> bool {
        self.size_bytes == 0
    }

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
    pub(super) fn decode_checked(offset: u64, source: &[u8]) -> Option<Self> {
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

impl Slot {
    /// The slot of an entry read back from an index file: every entry there
    /// is durable, so visible.
    pub fn from_file(entry: IndexEntry) -> Self {
        Self { entry, record_end: entry.position + u64::from(entry.size_bytes) }
    }
}

/// The in-memory part of one queue's index. Offsets `[base_offset,
/// file_end)` are in the index file (or were deleted by retention before
/// they got there); `[file_end, next_offset)` are only here, until the
/// checkpointer writes them.
#[derive(Default)]
pub struct QueueIndex {
    /// Offsets below it were deleted by retention.
    base_offset: u64,
    file_end: u64,
    unwritten: VecDeque<Slot>,
}

impl QueueIndex {
    pub fn starting_at(base_offset: u64) -> Self {
        Self { base_offset, file_end: base_offset, unwritten: VecDeque::new() }
    }

    /// A queue loaded from a checkpoint: offsets `[base_offset, file_end)`
    /// are in its index file.
    pub fn restore(base_offset: u64, file_end: u64) -> Self {
        Self { base_offset, file_end: file_end.max(base_offset), unwritten: VecDeque::new() }
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    /// The first offset not in the index file.
    pub fn file_end(&self) -> u64 {
        self.file_end
    }

    pub fn next_offset(&self) -> u64 {
        self.file_end + self.unwritten.len() as u64
    }

    pub fn unwritten_len(&self) -> usize {
        self.unwritten.len()
    }

    pub fn push(&mut self, entry: IndexEntry, record_end: u64) -> u64 {
        debug_assert!(self.unwritten.back().is_none_or(|last| last.record_end <= record_end));
        self.unwritten.push_back(Slot { entry, record_end });
        self.next_offset() - 1
    }

    /// The slot of `offset` if it is not yet in the index file.
    pub fn unwritten_slot(&self, offset: u64) -> Option<&Slot> {
        let index = offset.checked_sub(self.file_end)?;
        self.unwritten.get(usize::try_from(index).ok()?)
    }

    /// The first offset whose record is beyond `visible_position`. Every
    /// entry in the index file is durable, so visible.
    pub fn visible_end_offset(&self, visible_position: u64) -> u64 {
        self.file_end + self.unwritten.partition_point(|slot| slot.record_end <= visible_position) as u64
    }

    /// Entries `[from, to)` for the index file (`from` at least `file_end`).
    pub fn unwritten_entries(&self, from: u64, to: u64) -> Vec<IndexEntry> {
        (from..to).filter_map(|offset| self.unwritten_slot(offset)).map(|slot| slot.entry).collect()
    }

    /// Offsets below `to` are in the index file now: memory lets them go.
    pub fn written(&mut self, to: u64) {
        let written = to.saturating_sub(self.file_end).min(self.unwritten.len() as u64);
        self.unwritten.drain(..written as usize);
        self.file_end += written;
        self.release_spare_capacity();
    }

    /// Retention deleted every offset below `base_offset`.
    pub fn advance_base(&mut self, base_offset: u64) {
        self.base_offset = self.base_offset.max(base_offset).min(self.next_offset());
        if self.base_offset > self.file_end {
            self.unwritten.drain(..(self.base_offset - self.file_end) as usize);
            self.file_end = self.base_offset;
            self.release_spare_capacity();
        }
    }

    /// Bytes this queue's index holds in memory.
    pub fn resident_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.unwritten.capacity() * std::mem::size_of::<Slot>()
    }

    /// After a burst the buffer would keep its peak size: give most back.
    fn release_spare_capacity(&mut self) {
        if self.unwritten.capacity() > 4 * self.unwritten.len().max(UNWRITTEN_CAPACITY_KEPT) {
            self.unwritten.shrink_to(2 * self.unwritten.len());
        }
    }
}

pub fn index_path(dir: &Path, queue_id: u32) -> PathBuf {
    dir.join(format!("{queue_id:010}.idx"))
}

/// The open index file of one queue, shared by the writer and the readers.
pub struct IndexHandle<F> {
    path: PathBuf,
    file: F,
    /// Bytes below this were given back to the filesystem (retention).
    released_below: Cell<u64>,
}

impl<F: StorageFile> IndexHandle<F> {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the entries of `offsets` and checks every CRC: a short file or
    /// a bad entry is corruption.
    pub async fn read_entries(&self, offsets: Range<u64>) -> Result<Vec<IndexEntry>, LogError> {
        let byte_start = offsets.start * INDEX_FILE_ENTRY_SIZE_BYTES as u64;
        let length = (offsets.end - offsets.start) as usize * INDEX_FILE_ENTRY_SIZE_BYTES;
        let bytes = self
            .file
            .read_at(byte_start, length)
            .await
            .map_err(|error| LogError::io("read index", &self.path, byte_start, error))?;
        if bytes.len() < length {
            return Err(LogError::Corrupt {
                path: self.path.clone(),
                position: byte_start + bytes.len() as u64,
                detail: format!(
                    "the index file ends before offset {} (entries {}..{} expected)",
                    offsets.start + (bytes.len() / INDEX_FILE_ENTRY_SIZE_BYTES) as u64,
                    offsets.start,
                    offsets.end
                ),
            });
        }
        checked_entries(&self.path, offsets.start, &bytes)
    }

    pub async fn sync(&self) -> Result<(), LogError> {
        self.file.fdatasync().await.map_err(|error| LogError::io("fdatasync index", &self.path, 0, error))
    }

    /// Gives the blocks holding only offsets below `offset` back to the
    /// filesystem (they read as zeros after). Where the filesystem cannot
    /// punch holes, the space stays and a warning says so once.
    pub async fn release_below(&self, offset: u64) -> Result<(), LogError> {
        let end = block_down(offset * INDEX_FILE_ENTRY_SIZE_BYTES as u64);
        let start = self.released_below.get();
        if end <= start {
            return Ok(());
        }
        match self.file.deallocate(start, end - start).await {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::Unsupported => {
                tracing::warn!(path = %self.path.display(), "the filesystem cannot punch holes: retention leaves the index file's size as it is");
            }
            Err(error) => return Err(LogError::io("release index blocks", &self.path, start, error)),
        }
        self.released_below.set(end);
        Ok(())
    }
}

/// The writer's side of an index file: appended with O_DIRECT block writes,
/// the partially filled last block kept in memory and rewritten whole.
/// Cheap to clone (the checkpointer works on a copy while readers use the
/// handle).
pub struct IndexFile<F> {
    handle: Rc<IndexHandle<F>>,
    /// Bytes of the last, partially filled block.
    tail: Vec<u8>,
    /// Entries in the file (offset of the next entry to write).
    entry_count: u64,
}

impl<F> Clone for IndexFile<F> {
    fn clone(&self) -> Self {
        Self { handle: self.handle.clone(), tail: self.tail.clone(), entry_count: self.entry_count }
    }
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

/// The offsets of the cache page holding `offset`, clipped to `kept`.
pub fn page_range(offset: u64, kept: &Range<u64>) -> Range<u64> {
    let start = offset - offset % INDEX_PAGE_ENTRIES;
    start.max(kept.start)..(start + INDEX_PAGE_ENTRIES).min(kept.end)
}

impl<F: StorageFile> IndexFile<F> {
    /// Opens the index file of offsets `[base_offset, entry_count)` without
    /// reading it whole: the file must be long enough, and the entries of
    /// its first and last pages must pass their CRCs (a torn or short file
    /// shows there); the rest is checked page by page as reads load it.
    pub async fn open<S: Storage<File = F>>(
        storage: &S,
        path: PathBuf,
        base_offset: u64,
        entry_count: u64,
    ) -> Result<Self, LogError> {
        let file = storage.open_or_create(&path).await.map_err(|error| LogError::io("open index", &path, 0, error))?;
        let handle = Rc::new(IndexHandle { path, file, released_below: Cell::new(0) });
        if entry_count > base_offset {
            let kept = base_offset..entry_count;
            handle.read_entries(page_range(base_offset, &kept)).await?;
            handle.read_entries(page_range(entry_count - 1, &kept)).await?;
        }
        let byte_end = entry_count * INDEX_FILE_ENTRY_SIZE_BYTES as u64;
        let tail_start = block_down(byte_end);
        let mut tail = handle
            .file
            .read_at(tail_start, (byte_end - tail_start) as usize)
            .await
            .map_err(|error| LogError::io("read index", &handle.path, tail_start, error))?;
        // Past the file's end (offsets retention deleted before they were
        // written): zeros, as a later write would leave them.
        tail.resize((byte_end - tail_start) as usize, 0);
        Ok(Self { handle, tail, entry_count })
    }

    pub fn handle(&self) -> Rc<IndexHandle<F>> {
        self.handle.clone()
    }

    /// Writes `entries` as offsets `from..`, at most
    /// `INDEX_ENTRIES_PER_WRITE` per write.
    pub async fn append(&mut self, from: u64, entries: &[IndexEntry]) -> Result<(), LogError> {
        for (index, part) in entries.chunks(INDEX_ENTRIES_PER_WRITE).enumerate() {
            self.write_entries(from + (index * INDEX_ENTRIES_PER_WRITE) as u64, part).await?;
        }
        Ok(())
    }

    /// One write of `entries` as offsets `from..`. The block they start in
    /// keeps what the file holds before `from`: from the cached tail when
    /// `from` continues the file, else read back (after a failed or
    /// cancelled write, or a gap of offsets retention deleted). The cache
    /// changes only once the write succeeded.
    async fn write_entries(&mut self, from: u64, entries: &[IndexEntry]) -> Result<(), LogError> {
        let byte_start = from * INDEX_FILE_ENTRY_SIZE_BYTES as u64;
        let block_start = block_down(byte_start);
        let prefix = if from == self.entry_count {
            self.tail.clone()
        } else {
            let mut prefix = self
                .handle
                .file
                .read_at(block_start, (byte_start - block_start) as usize)
                .await
                .map_err(|error| LogError::io("read index", &self.handle.path, block_start, error))?;
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
        self.handle
            .file
            .write_at(&block.as_slice()[..padded], block_start)
            .await
            .map_err(|error| LogError::io("write index", &self.handle.path, block_start, error))?;
        self.tail = bytes[used - used % BLOCK_SIZE_BYTES..].to_vec();
        self.entry_count = from + entries.len() as u64;
        Ok(())
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
    fn written_entries_leave_memory_and_retention_moves_the_base() {
        let mut index = QueueIndex::default();
        for position in [0, 100, 200, 300] {
            index.push(entry(position), position + 100);
        }
        index.written(2);
        assert_eq!((index.file_end(), index.unwritten_len(), index.next_offset()), (2, 2, 4));
        assert!(index.unwritten_slot(1).is_none(), "offset 1 is in the file now");
        assert_eq!(index.unwritten_slot(2).map(|slot| slot.entry.position), Some(200));
        index.advance_base(3);
        assert_eq!((index.base_offset(), index.file_end(), index.unwritten_len()), (3, 3, 1));
        index.advance_base(10);
        assert_eq!((index.base_offset(), index.next_offset()), (4, 4), "the base never passes the end");
    }

    fn file_of(count: u64) -> Vec<IndexEntry> {
        (0..count).map(|offset| entry(offset * 100)).collect()
    }

    async fn written_file(storage: &MemoryStorage, path: &Path, all: &[IndexEntry]) -> IndexFile<MemoryFile> {
        let mut file = IndexFile::open(storage, path.to_path_buf(), 0, 0).await.expect("open");
        file.append(0, all).await.expect("append");
        file.handle().sync().await.expect("sync");
        file
    }

    use crate::storage::backend::{MemoryFile, MemoryStorage};
    use crate::storage::tests::run;

    #[test]
    fn an_index_file_reopened_or_rewound_keeps_the_entries_before_the_write() {
        run(async {
            let storage = MemoryStorage::new();
            let path = PathBuf::from("/index/0000000001.idx");
            let all = file_of(300);
            let mut file = IndexFile::open(&storage, path.clone(), 0, 0).await.unwrap();
            file.append(0, &all[..100]).await.unwrap();
            // As after a cancelled checkpoint: the cache is gone, the file is not.
            let mut reopened = IndexFile::open(&storage, path.clone(), 0, 0).await.unwrap();
            reopened.append(100, &all[100..250]).await.unwrap();
            // As after a failed fdatasync: the same offsets written again.
            reopened.append(170, &all[170..300]).await.unwrap();
            let file = IndexFile::open(&storage, path, 0, 300).await.unwrap();
            assert_eq!(file.handle().read_entries(0..300).await.unwrap(), all);
        });
    }

    #[test]
    fn opening_checks_the_last_page_and_reads_check_the_others() {
        run(async {
            let storage = MemoryStorage::new();
            let path = PathBuf::from("/index/0000000002.idx");
            let count = 4 * INDEX_PAGE_ENTRIES - 7;
            let all = file_of(count);
            written_file(&storage, &path, &all).await;
            let in_the_middle = INDEX_PAGE_ENTRIES + 3;
            storage.flip_bit(&path, in_the_middle * INDEX_FILE_ENTRY_SIZE_BYTES as u64 + 13, 1).unwrap();
            let file = IndexFile::open(&storage, path.clone(), 0, count).await.expect("only two pages are checked");
            let page = page_range(in_the_middle, &(0..count));
            match file.handle().read_entries(page).await {
                Err(LogError::Corrupt { detail, .. }) => {
                    assert!(detail.contains(&format!("offset {in_the_middle}")), "{detail}")
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
            let near_the_end = count - 2;
            storage.flip_bit(&path, near_the_end * INDEX_FILE_ENTRY_SIZE_BYTES as u64 + 3, 0).unwrap();
            match IndexFile::open(&storage, path.clone(), 0, count).await {
                Err(LogError::Corrupt { detail, .. }) => {
                    assert!(detail.contains(&format!("offset {near_the_end}")), "{detail}")
                }
                Err(other) => panic!("expected Corrupt, got {other}"),
                Ok(_) => panic!("a torn last page was trusted"),
            }
            assert!(
                matches!(IndexFile::open(&storage, path, 0, count + 1).await, Err(LogError::Corrupt { .. })),
                "a file shorter than the checkpoint says is refused"
            );
        });
    }

    #[test]
    fn releasing_offsets_gives_their_blocks_back_and_keeps_the_rest() {
        run(async {
            let storage = MemoryStorage::new();
            let path = PathBuf::from("/index/0000000003.idx");
            let count = 3 * INDEX_PAGE_ENTRIES;
            let all = file_of(count);
            let file = written_file(&storage, &path, &all).await;
            let base = INDEX_PAGE_ENTRIES + 5;
            file.handle().release_below(base).await.expect("release");
            assert!(file.handle().read_entries(0..INDEX_PAGE_ENTRIES).await.is_err(), "released entries read as zeros");
            let kept = file.handle().read_entries(base..count).await.expect("the kept entries");
            assert_eq!(kept, all[base as usize..]);
            let reopened = IndexFile::open(&storage, path, base, count).await.expect("reopen from the base");
            assert_eq!(reopened.handle().read_entries(base..base + 1).await.unwrap(), all[base as usize..][..1]);
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
}
