//! Key index: per segment, a file of (key hash -> record) entries, so that
//! `ringmq message query --topic T --key K` reads a few blocks instead of the
//! log. Storage knows nothing about messages: the broker hands the hashes of
//! a message's keys to the append (`AppendRequest::key_hashes`) and a
//! `KeyHasher` (`LogConfig::key_hasher`) that finds them in a stored
//! message again when a file must be rebuilt from the log.
//!
//! `keys/<segment start, 20 digits>.keys` holds the key entries of the
//! records of that segment, in log order, in 4 KiB blocks:
//! ```text
//! block:  magic u32 "RKY1" | crc32 u32 | count u32 | reserved u32 (zero)
//!         | through u64 | reserved u64 (zero) | count x entry | zeros
//! entry:  key_hash u64 | position u64 | store_timestamp_us u64
//!         | size_bytes u32 | queue_id u32
//! ```
//! The CRC covers the segment start and the block number (so a block read
//! at the wrong place, or from another segment's file, fails it) and the
//! block's bytes after the CRC. `through`: every keyed record of the
//! segment below this log position has its entries in this block or an
//! earlier one; the last block's `through` says how far the file goes.
//! Only the last block is ever rewritten (to add entries or move `through`).
//! A file that fails a check is never trusted: it is rebuilt from its
//! segment's records (`key_lookup`), except that a torn last block after a
//! full valid one is cut off (what a crash in the middle of a write leaves).

use super::aligned::AlignedBuf;
use super::backend::{Storage, StorageFile};
use super::record::{self, RecordHeader, NO_POSITION};
use super::LogError;
use crate::constants::BLOCK_SIZE_BYTES;
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub const KEY_FILE_EXTENSION: &str = "keys";
const KEY_BLOCK_MAGIC: u32 = 0x3159_4b52; // "RKY1" in a hex dump
const KEY_BLOCK_HEADER_BYTES: usize = 32;
pub const KEY_ENTRY_BYTES: usize = 32;
/// Entries one block holds (127).
pub const KEY_BLOCK_ENTRIES: usize = (BLOCK_SIZE_BYTES - KEY_BLOCK_HEADER_BYTES) / KEY_ENTRY_BYTES;
const _: () = assert!(KEY_BLOCK_HEADER_BYTES + KEY_BLOCK_ENTRIES * KEY_ENTRY_BYTES <= BLOCK_SIZE_BYTES);

/// Finds the key hashes of a stored message (its bytes after the record
/// header): the same hashes the broker gave its append.
pub type KeyHasher = fn(message: &[u8], hashes: &mut Vec<u64>);

/// One key of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    pub key_hash: u64,
    pub position: u64,
    pub store_timestamp_us: u64,
    pub size_bytes: u32,
    pub queue_id: u32,
}

impl KeyEntry {
    /// Where the record ends in the log (visible once the log is there).
    pub fn record_end(&self) -> u64 {
        self.position + record::padded_size(self.size_bytes as usize) as u64
    }

    fn encode(&self, destination: &mut [u8]) {
        destination[0..8].copy_from_slice(&self.key_hash.to_le_bytes());
        destination[8..16].copy_from_slice(&self.position.to_le_bytes());
        destination[16..24].copy_from_slice(&self.store_timestamp_us.to_le_bytes());
        destination[24..28].copy_from_slice(&self.size_bytes.to_le_bytes());
        destination[28..32].copy_from_slice(&self.queue_id.to_le_bytes());
    }

    fn decode(source: &[u8]) -> Self {
        Self {
            key_hash: u64_at(source, 0),
            position: u64_at(source, 8),
            store_timestamp_us: u64_at(source, 16),
            size_bytes: u32_at(source, 24),
            queue_id: u32_at(source, 28),
        }
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Whether a record gets key entries: an ordinary message appended to its
/// queue (no flags, no reference). Half messages, delayed messages and their
/// deliveries, retries and every internal record have none. The append and
/// the rebuild from the log both decide by this alone.
pub fn is_keyed(flags: u16, indexed: bool, referenced: bool) -> bool {
    flags == 0 && indexed && !referenced
}

/// `is_keyed` for a record read back from the log.
pub fn header_is_keyed(header: &RecordHeader) -> bool {
    is_keyed(header.flags, header.is_indexed(), header.ref_position != NO_POSITION)
}

/// A decoded block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyBlock {
    pub through: u64,
    pub entries: Vec<KeyEntry>,
}

fn block_crc(segment_start: u64, number: u64, checked: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&segment_start.to_le_bytes());
    hasher.update(&number.to_le_bytes());
    hasher.update(checked);
    hasher.finalize()
}

/// Writes block `number` of the key file of the segment at `segment_start`
/// into `destination` (one block, zeroed).
pub fn encode_block(segment_start: u64, number: u64, through: u64, entries: &[KeyEntry], destination: &mut [u8]) {
    debug_assert!(entries.len() <= KEY_BLOCK_ENTRIES);
    destination[..BLOCK_SIZE_BYTES].fill(0);
    destination[0..4].copy_from_slice(&KEY_BLOCK_MAGIC.to_le_bytes());
    destination[8..12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    destination[16..24].copy_from_slice(&through.to_le_bytes());
    let slots = destination[KEY_BLOCK_HEADER_BYTES..BLOCK_SIZE_BYTES].chunks_exact_mut(KEY_ENTRY_BYTES);
    for (entry, slot) in entries.iter().zip(slots) {
        entry.encode(slot);
    }
    let crc = block_crc(segment_start, number, &destination[8..BLOCK_SIZE_BYTES]);
    destination[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads block `number` of the segment at `segment_start`, if every check
/// holds (magic, CRC, count, reserved bytes zero).
pub fn decode_block(segment_start: u64, number: u64, bytes: &[u8]) -> Option<KeyBlock> {
    if bytes.len() != BLOCK_SIZE_BYTES || u32_at(bytes, 0) != KEY_BLOCK_MAGIC {
        return None;
    }
    if u32_at(bytes, 4) != block_crc(segment_start, number, &bytes[8..]) {
        return None;
    }
    let count = u32_at(bytes, 8) as usize;
    if count > KEY_BLOCK_ENTRIES || u32_at(bytes, 12) != 0 || u64_at(bytes, 24) != 0 {
        return None;
    }
    let entries =
        bytes[KEY_BLOCK_HEADER_BYTES..].chunks_exact(KEY_ENTRY_BYTES).take(count).map(KeyEntry::decode).collect();
    Some(KeyBlock { through: u64_at(bytes, 16), entries })
}

pub fn key_file_path(dir: &Path, segment_start: u64) -> PathBuf {
    dir.join(format!("{segment_start:020}.{KEY_FILE_EXTENSION}"))
}

/// The segment start a key file name encodes, if it is one.
pub fn parse_key_file_start(path: &Path) -> Option<u64> {
    if path.extension()?.to_str()? != KEY_FILE_EXTENSION {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

/// The key file of one segment: what is known of it without reading it.
/// Cheap to clone (the writer works on a copy, so a failed write leaves the
/// state as it was).
pub struct KeyFile<F> {
    pub path: PathBuf,
    pub segment_start: u64,
    file: Rc<F>,
    /// Whole blocks in the file.
    blocks: u64,
    /// Entries in the last block.
    last_count: usize,
    /// The last block's `through` (the segment start for an empty file).
    through: u64,
}

impl<F> Clone for KeyFile<F> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            segment_start: self.segment_start,
            file: self.file.clone(),
            blocks: self.blocks,
            last_count: self.last_count,
            through: self.through,
        }
    }
}

/// What opening a key file found.
pub enum Opened<F> {
    Valid(KeyFile<F>),
    /// Not there, or not to be trusted (why): start it again.
    Missing(&'static str),
}

impl<F: StorageFile> KeyFile<F> {
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn through(&self) -> u64 {
        self.through
    }

    /// Opens the key file at `path` of the segment at `segment_start` and
    /// checks what can be checked without reading it whole: whole blocks,
    /// a valid last block whose `through` lies in `[segment_start, bound]`.
    pub async fn open<S: Storage<File = F>>(
        storage: &S,
        path: PathBuf,
        segment_start: u64,
        bound: u64,
    ) -> Result<Opened<F>, LogError> {
        let file = storage.open(&path).await.map_err(|error| LogError::io("open key file", &path, 0, error))?;
        let size = file.size_bytes().await.map_err(|error| LogError::io("size key file", &path, 0, error))?;
        if size == 0 {
            return Ok(Opened::Missing("empty"));
        }
        if size % BLOCK_SIZE_BYTES as u64 != 0 {
            return Ok(Opened::Missing("not whole blocks (a torn write)"));
        }
        let mut blocks = size / BLOCK_SIZE_BYTES as u64;
        let mut last = read_block(&file, &path, segment_start, blocks - 1).await?;
        if last.is_none() && blocks > 1 {
            // Only the last write can be torn, and it starts at most one
            // block earlier (the rewritten last block): a valid block before
            // it is a shorter file that recovery catches up from its `through`.
            let before = read_block(&file, &path, segment_start, blocks - 2).await?;
            if before.as_ref().is_some_and(|block| block.entries.len() == KEY_BLOCK_ENTRIES) {
                tracing::warn!(path = %path.display(), "the last block of a key file is torn; it is written again");
                blocks -= 1;
                last = before;
            }
        }
        let Some(last) = last else { return Ok(Opened::Missing("its last block fails its checksum")) };
        if last.through < segment_start || last.through > bound {
            return Ok(Opened::Missing("it covers more than the recovered log"));
        }
        Ok(Opened::Valid(Self {
            path,
            segment_start,
            file: Rc::new(file),
            blocks,
            last_count: last.entries.len(),
            through: last.through,
        }))
    }

    /// Removes whatever is at `path` and creates an empty key file there.
    pub async fn create<S: Storage<File = F>>(
        storage: &S,
        path: PathBuf,
        segment_start: u64,
    ) -> Result<Self, LogError> {
        match storage.remove(&path).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(LogError::io("remove key file", &path, 0, error))
            }
            _ => {}
        }
        let file =
            storage.open_or_create(&path).await.map_err(|error| LogError::io("create key file", &path, 0, error))?;
        if let Some(dir) = path.parent() {
            storage.sync_dir(dir).await.map_err(|error| LogError::io("sync directory", dir, 0, error))?;
        }
        Ok(Self { path, segment_start, file: Rc::new(file), blocks: 0, last_count: 0, through: segment_start })
    }

    /// Reads blocks `first..first + count`; `None` for a block that fails
    /// its checks.
    pub async fn read_blocks(&self, first: u64, count: u64) -> Result<Vec<Option<KeyBlock>>, LogError> {
        let start = first * BLOCK_SIZE_BYTES as u64;
        let length = count as usize * BLOCK_SIZE_BYTES;
        let bytes = self
            .file
            .read_at(start, length)
            .await
            .map_err(|error| LogError::io("read key file", &self.path, start, error))?;
        let mut blocks: Vec<Option<KeyBlock>> = (first..)
            .zip(bytes.chunks_exact(BLOCK_SIZE_BYTES))
            .map(|(number, block)| decode_block(self.segment_start, number, block))
            .collect();
        // A short read (the file shrank under us): the missing blocks fail.
        blocks.resize(count as usize, None);
        Ok(blocks)
    }

    /// Appends `entries` (in log order, all past `through`) and moves
    /// `through`. The last block, if not full (or if nothing is added), is
    /// read back and rewritten with them. Not synced: `sync` does that.
    ///
    /// Only the last block's first `last_count` entries are kept from the
    /// read-back: an append that failed after rewriting that block (a full
    /// disk refused the blocks after it) left more there, which this
    /// append brings again.
    pub async fn append(&mut self, entries: &[KeyEntry], through: u64) -> Result<(), LogError> {
        let rewrite_last = self.blocks > 0 && (self.last_count < KEY_BLOCK_ENTRIES || entries.is_empty());
        let first_block = if rewrite_last { self.blocks - 1 } else { self.blocks };
        let mut pending = Vec::with_capacity(entries.len() + KEY_BLOCK_ENTRIES);
        if rewrite_last {
            let last = read_block(&*self.file, &self.path, self.segment_start, first_block).await?;
            match last.filter(|last| last.entries.len() >= self.last_count) {
                Some(last) => pending.extend_from_slice(&last.entries[..self.last_count]),
                None => {
                    return Err(LogError::Corrupt {
                        path: self.path.clone(),
                        position: first_block * BLOCK_SIZE_BYTES as u64,
                        detail: "the last block of a key file fails its checksum or lost entries".into(),
                    })
                }
            }
        }
        pending.extend_from_slice(entries);
        let chunks: Vec<&[KeyEntry]> =
            if pending.is_empty() { vec![&[][..]] } else { pending.chunks(KEY_BLOCK_ENTRIES).collect() };
        let mut buffer = AlignedBuf::zeroed(chunks.len() * BLOCK_SIZE_BYTES);
        let blocks = buffer.as_mut_slice().chunks_exact_mut(BLOCK_SIZE_BYTES);
        for (index, (chunk, block)) in chunks.iter().zip(blocks).enumerate() {
            // An earlier block covers everything before the next block's first record.
            let block_through =
                chunks.get(index + 1).and_then(|next| next.first()).map_or(through, |next| next.position);
            encode_block(self.segment_start, first_block + index as u64, block_through, chunk, block);
        }
        let start = first_block * BLOCK_SIZE_BYTES as u64;
        let write_error = |error| LogError::io("write key file", &self.path, start, error);
        let mut bytes = buffer.as_slice();
        if rewrite_last && chunks.len() > 1 {
            // The rewritten last block goes first, alone and synced: a crash
            // may land a multi-block write in any order, and new blocks
            // after an old (valid, partly filled) version of it would say
            // entries are in the file that never arrived.
            self.file.write_at(&bytes[..BLOCK_SIZE_BYTES], start).await.map_err(write_error)?;
            self.sync().await?;
            bytes = &bytes[BLOCK_SIZE_BYTES..];
        }
        let rest_start = start + (buffer.as_slice().len() - bytes.len()) as u64;
        self.file.write_at(bytes, rest_start).await.map_err(write_error)?;
        self.blocks = first_block + chunks.len() as u64;
        self.last_count = chunks.last().map_or(0, |chunk| chunk.len());
        self.through = through;
        Ok(())
    }

    pub async fn sync(&self) -> Result<(), LogError> {
        self.file.fdatasync().await.map_err(|error| LogError::io("fdatasync key file", &self.path, 0, error))
    }
}

async fn read_block<F: StorageFile>(
    file: &F,
    path: &Path,
    segment_start: u64,
    number: u64,
) -> Result<Option<KeyBlock>, LogError> {
    let start = number * BLOCK_SIZE_BYTES as u64;
    let bytes = file
        .read_at(start, BLOCK_SIZE_BYTES)
        .await
        .map_err(|error| LogError::io("read key file", path, start, error))?;
    Ok(decode_block(segment_start, number, &bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::MemoryStorage;
    use crate::storage::tests::run;

    /// Every entry of the first `blocks` blocks of `file`, each block valid.
    async fn entries_of<F: StorageFile>(file: &KeyFile<F>, blocks: u64) -> Vec<KeyEntry> {
        let read = file.read_blocks(0, blocks).await.expect("read");
        read.into_iter().flat_map(|block| block.expect("a valid block").entries).collect()
    }

    fn entry(position: u64) -> KeyEntry {
        KeyEntry { key_hash: position * 7, position, store_timestamp_us: position + 1, size_bytes: 100, queue_id: 1024 }
    }

    #[test]
    fn a_block_round_trips_and_any_damage_or_misplacement_fails_it() {
        let entries: Vec<KeyEntry> = (0..5).map(|index| entry(4096 + index * 104)).collect();
        let mut block = vec![0; BLOCK_SIZE_BYTES];
        encode_block(4096, 3, 9000, &entries, &mut block);
        assert_eq!(decode_block(4096, 3, &block), Some(KeyBlock { through: 9000, entries: entries.clone() }));
        assert_eq!(decode_block(4096, 4, &block), None, "a block read as another passed");
        assert_eq!(decode_block(0, 3, &block), None, "another segment's block passed");
        for index in 0..BLOCK_SIZE_BYTES {
            let mut damaged = block.clone();
            damaged[index] ^= 0x20;
            assert_eq!(decode_block(4096, 3, &damaged), None, "damage at byte {index} went unnoticed");
        }
        assert_eq!(decode_block(4096, 3, &vec![0; BLOCK_SIZE_BYTES]), None, "zeros passed");
    }

    #[test]
    fn appends_fill_blocks_rewrite_the_last_one_and_reopen() {
        run(async {
            let storage = MemoryStorage::new();
            let path = PathBuf::from("/keys/00000000000000000000.keys");
            let mut file = KeyFile::create(&storage, path.clone(), 0).await.expect("create");
            let all: Vec<KeyEntry> = (0..300).map(|index| entry(index * 104)).collect();
            file.append(&all[..100], 100 * 104).await.expect("append");
            file.append(&all[100..], 300 * 104).await.expect("append");
            file.append(&[], 400 * 104).await.expect("only through moves");
            file.sync().await.expect("sync");
            assert_eq!(file.blocks(), 3);
            let Opened::Valid(reopened) = KeyFile::open(&storage, path.clone(), 0, u64::MAX).await.expect("open")
            else {
                panic!("a good file was not trusted")
            };
            assert_eq!((reopened.blocks(), reopened.through()), (3, 400 * 104));
            let read = entries_of(&reopened, 3).await;
            assert_eq!(read, all);
            assert!(
                matches!(KeyFile::open(&storage, path.clone(), 0, 300 * 104).await, Ok(Opened::Missing(_))),
                "a file covering more than the log is not trusted"
            );
            storage.flip_bit(&path, 2 * BLOCK_SIZE_BYTES as u64 + 40, 3).expect("flip");
            let blocks = reopened.read_blocks(0, 3).await.expect("read");
            assert!(blocks[0].is_some() && blocks[2].is_none(), "reads check every block");
            // A torn last block after a full one: the file ends before it.
            let Opened::Valid(mut shorter) = KeyFile::open(&storage, path.clone(), 0, u64::MAX).await.expect("open")
            else {
                panic!("a file with a torn last block after a full one was not kept")
            };
            assert_eq!((shorter.blocks(), shorter.through()), (2, all[254].position));
            shorter.append(&all[254..], 300 * 104).await.expect("written again");
            shorter.sync().await.expect("sync");
            let read = entries_of(&shorter, 3).await;
            assert_eq!(read, all);
            // A damaged last block after one that is not full: not trusted.
            storage.flip_bit(&path, 2 * BLOCK_SIZE_BYTES as u64 + 40, 3).expect("flip");
            storage.flip_bit(&path, BLOCK_SIZE_BYTES as u64 + 40, 3).expect("flip");
            assert!(
                matches!(KeyFile::open(&storage, path.clone(), 0, u64::MAX).await, Ok(Opened::Missing(_))),
                "a damaged file is not trusted"
            );
        });
    }
}
