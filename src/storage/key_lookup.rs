//! The key index at work: the entries not yet in the key files (the tail,
//! in memory), bringing the files up to the checkpoint, rebuilding a file
//! from its segment, recovery's catch-up and the search.
//!
//! Invariant: for every segment, the entries of its keyed records below its
//! key file's `through` are in the file, and those from `through` to the
//! appended end are in the tail (sorted by position, as appended). Recovery
//! brings every file up to the recovered end, so the tail starts empty.

use super::backend::{Storage, StorageFile};
use super::keys::{
    header_is_keyed, key_file_path, parse_key_file_start, KeyEntry, KeyFile, KeyHasher, Opened, KEY_BLOCK_ENTRIES,
};
use super::log::LogShared;
use super::record::Decoded;
use super::recovery::SegmentReader;
use super::segment::Segment;
use super::tail::Segments;
use super::{LogConfig, LogError, KEYS_DIR};
use crate::constants::{
    BLOCK_SIZE_BYTES, KEY_FILE_THROUGH_STEP_BYTES, KEY_QUERY_BLOCKS_MAX, KEY_QUERY_READ_BLOCKS, RECORD_ALIGNMENT_BYTES,
    RECORD_HEADER_SIZE_BYTES,
};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// Entries a rebuild gathers before it writes them (about 256 KiB of file).
const REBUILD_BATCH_ENTRIES: usize = 64 * KEY_BLOCK_ENTRIES;

/// Scans the records of `segment` from the file's `through` up to `to` (a
/// record boundary at or below the recovered or durable end) and appends
/// their key entries, a batch at a time (memory stays bounded whatever the
/// segment holds), then syncs.
pub async fn catch_up<F: StorageFile>(
    file: &mut KeyFile<F>,
    segment: &Segment<F>,
    to: u64,
    hasher: KeyHasher,
) -> Result<(), LogError> {
    if to <= file.through() {
        return Ok(());
    }
    let block = BLOCK_SIZE_BYTES as u64;
    let end = to - segment.start;
    let mut offset = file.through() - segment.start;
    let mut reader = SegmentReader::new(segment);
    let (mut batch, mut hashes) = (Vec::new(), Vec::new());
    while offset < end {
        match reader.probe(offset).await? {
            Decoded::Valid(header) => {
                if header_is_keyed(&header) {
                    let message_at = offset + RECORD_HEADER_SIZE_BYTES as u64;
                    let message = reader.bytes(message_at, header.message_length()).await?;
                    hashes.clear();
                    hasher(message, &mut hashes);
                    batch.extend(hashes.iter().map(|key_hash| KeyEntry {
                        key_hash: *key_hash,
                        position: segment.start + offset,
                        store_timestamp_us: header.store_timestamp_us,
                        size_bytes: header.length,
                        queue_id: header.queue_id,
                    }));
                }
                offset += header.padded_size() as u64;
            }
            // Zeros to the next block: the padding that ends a write (the
            // next write starts on a fresh block).
            Decoded::Zero => {
                let boundary = (offset / block + 1) * block;
                let rest = reader.bytes(offset, (boundary - offset) as usize).await?;
                let padding = rest.iter().all(|byte| *byte == 0);
                offset = if padding { boundary } else { offset + RECORD_ALIGNMENT_BYTES as u64 };
            }
            // Damage (a record the checkpoint vouched for and a disk lost
            // since, which reads then report): records start on 8-byte
            // boundaries and carry a magic and a CRC, so step until the
            // next one rather than lose the rest of the block or more.
            Decoded::Invalid(_) => offset += RECORD_ALIGNMENT_BYTES as u64,
        }
        if batch.len() >= REBUILD_BATCH_ENTRIES {
            file.append(&batch, segment.start + offset.min(end)).await?;
            batch.clear();
        }
    }
    file.append(&batch, to).await?;
    file.sync().await
}

/// At start, after the log's end is settled (and durable): every segment's
/// key file checked and brought up to the recovered end `end`, rebuilt from
/// the segment when missing or not to be trusted; files of segments that
/// are gone are removed.
pub async fn recover_key_files<S: Storage>(
    storage: &S,
    config: &LogConfig,
    segments: &Segments<S::File>,
    end: u64,
) -> Result<BTreeMap<u64, KeyFile<S::File>>, LogError> {
    let mut files = BTreeMap::new();
    let Some(hasher) = config.key_hasher else { return Ok(files) };
    let dir = config.dir.join(KEYS_DIR);
    storage.create_dir_all(&dir).await.map_err(|error| LogError::io("create directory", &dir, 0, error))?;
    let listed = storage.list(&dir).await.map_err(|error| LogError::io("list key files", &dir, 0, error))?;
    let mut existing = BTreeSet::new();
    let mut removed = false;
    for path in listed {
        match parse_key_file_start(&path) {
            Some(start) if segments.contains_key(&start) => {
                existing.insert(start);
            }
            // Retention deleted its segment; the crash came before the file.
            Some(_) => {
                storage.remove(&path).await.map_err(|error| LogError::io("remove key file", &path, 0, error))?;
                removed = true;
            }
            None => {}
        }
    }
    if removed {
        storage.sync_dir(&dir).await.map_err(|error| LogError::io("sync directory", &dir, 0, error))?;
    }
    for segment in segments.values() {
        let bound = segment.end().min(end).max(segment.start);
        let exists = existing.contains(&segment.start);
        if !exists && bound == segment.start {
            continue;
        }
        let path = key_file_path(&dir, segment.start);
        let opened = match exists {
            true => KeyFile::open(storage, path.clone(), segment.start, bound).await?,
            false => Opened::Missing("missing"),
        };
        let mut file = match opened {
            Opened::Valid(file) => file,
            Opened::Missing(why) => {
                if exists {
                    tracing::warn!(path = %path.display(), why, "a key file is not to be trusted; rebuilding it from its segment");
                }
                KeyFile::create(storage, path, segment.start).await?
            }
        };
        catch_up(&mut file, segment, bound, hasher).await?;
        files.insert(segment.start, file);
    }
    Ok(files)
}

struct KeyJob<F> {
    segment: Rc<Segment<F>>,
    file: Option<KeyFile<F>>,
    entries: Vec<KeyEntry>,
    through: u64,
}

/// Brings the key files up to `position` (durable): the tail's entries
/// below it go to their segments' files, synced, then leave memory. A file
/// whose segment holds no new keyed record is written only when its
/// segment is complete or `through` lags by `KEY_FILE_THROUGH_STEP_BYTES`
/// (what recovery would scan again). The caller stops the log on failure.
pub async fn persist<S: Storage>(shared: &LogShared<S>, position: u64) -> Result<(), LogError> {
    if shared.config.key_hasher.is_none() {
        return Ok(());
    }
    let dir = shared.config.dir.join(KEYS_DIR);
    for job in plan(shared, position) {
        let start = job.segment.start;
        let mut file = match job.file {
            Some(file) => file,
            None => KeyFile::create(&shared.storage, key_file_path(&dir, start), start).await?,
        };
        file.append(&job.entries, job.through).await?;
        file.sync().await?;
        let mut state = shared.state.borrow_mut();
        if state.segments.contains_key(&start) {
            state.key_files.insert(start, file);
        }
    }
    let mut state = shared.state.borrow_mut();
    let written = state.key_tail.partition_point(|entry| entry.record_end() <= position);
    state.key_tail.drain(..written);
    if state.key_tail.capacity() > 4 * state.key_tail.len().max(1024) {
        let keep = 2 * state.key_tail.len();
        state.key_tail.shrink_to(keep);
    }
    Ok(())
}

fn plan<S: Storage>(shared: &LogShared<S>, position: u64) -> Vec<KeyJob<S::File>> {
    let state = shared.state.borrow();
    let mut jobs = Vec::new();
    for segment in state.segments.values().filter(|segment| segment.start < position) {
        let through = segment.end().min(position);
        let file = state.key_files.get(&segment.start).cloned();
        let covered = file.as_ref().map_or(segment.start, KeyFile::through);
        if covered >= through {
            continue;
        }
        let from = state.key_tail.partition_point(|entry| entry.position < segment.start);
        let to = state.key_tail.partition_point(|entry| entry.position < through && entry.record_end() <= position);
        let entries: Vec<KeyEntry> = state.key_tail.range(from..to.max(from)).copied().collect();
        let complete = through == segment.end();
        if entries.is_empty() && !complete && through - covered < KEY_FILE_THROUGH_STEP_BYTES {
            continue;
        }
        jobs.push(KeyJob { segment: segment.clone(), file, entries, through });
    }
    jobs
}

/// Retention deleted the segment at `start`: its key file goes too (a
/// failed removal stops the log), and the tail forgets its entries.
pub async fn forget_segment<S: Storage>(shared: &LogShared<S>, start: u64, end: u64) -> Result<(), LogError> {
    let file = {
        let mut state = shared.state.borrow_mut();
        let gone = state.key_tail.partition_point(|entry| entry.position < end);
        state.key_tail.drain(..gone);
        state.key_files.remove(&start)
    };
    if let Some(file) = file {
        shared
            .storage
            .remove(&file.path)
            .await
            .map_err(|error| shared.fail_stop(LogError::io("remove key file", &file.path, start, error)))?;
    }
    Ok(())
}

/// What a search found: entries whose key hash matched, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyCandidates {
    pub entries: Vec<KeyEntry>,
    /// The search went back as far as asked (to `since` or the oldest
    /// segment); false when it stopped at `limit` or its read budget.
    pub complete: bool,
}

/// How a search of one segment ended.
enum SegmentSearch {
    /// On to the next (older) segment.
    Next,
    /// Enough found, the budget spent or older than asked: the answer.
    Done { complete: bool },
    /// A block failed its checks: rebuild the file, search again.
    Damaged,
}

/// The visible entries with `key_hash`, stored at or after `since_us`, at
/// positions below `before`, newest first, at most `limit`. Segments whose
/// newest record is older than `since_us` are not read. A key file block
/// that fails its checks makes the file be rebuilt from its segment (once
/// per search; a second failure is `Corrupt`).
pub async fn search<S: Storage>(
    shared: &Rc<LogShared<S>>,
    key_hash: u64,
    since_us: u64,
    before: u64,
    limit: usize,
) -> Result<KeyCandidates, LogError> {
    let mut found = KeyCandidates::default();
    if shared.config.key_hasher.is_none() || limit == 0 {
        found.complete = true;
        return Ok(found);
    }
    let segments: Vec<(u64, u64)> = {
        let state = shared.state.borrow();
        state
            .segments
            .values()
            .rev()
            .filter(|segment| segment.start < before && segment.last_store_timestamp_us.get() >= since_us)
            .map(|segment| (segment.start, segment.end().min(before)))
            .collect()
    };
    let query = Query { key_hash, since_us, limit, visible: shared.visible_mark().get() };
    let mut budget = KEY_QUERY_BLOCKS_MAX;
    for (start, end) in segments {
        let mut rebuilt = false;
        loop {
            let kept = found.entries.len();
            match search_segment(shared, &query, start, end, &mut budget, &mut found.entries).await? {
                SegmentSearch::Next => break,
                SegmentSearch::Done { complete } => {
                    found.complete = complete;
                    return Ok(found);
                }
                SegmentSearch::Damaged if !rebuilt => {
                    found.entries.truncate(kept);
                    rebuild(shared, start).await?;
                    rebuilt = true;
                }
                SegmentSearch::Damaged => {
                    return Err(LogError::Corrupt {
                        path: key_file_path(&shared.config.dir.join(KEYS_DIR), start),
                        position: start,
                        detail: "a rebuilt key file fails its checksum".into(),
                    })
                }
            }
        }
    }
    found.complete = true;
    Ok(found)
}

struct Query {
    key_hash: u64,
    since_us: u64,
    limit: usize,
    visible: u64,
}

impl Query {
    /// Takes `entry` if it matches; `Some(done)` once the search is over.
    fn take(&self, entry: &KeyEntry, found: &mut Vec<KeyEntry>) -> Option<SegmentSearch> {
        // Store times never go down along the log: all before is older.
        if entry.store_timestamp_us < self.since_us {
            return Some(SegmentSearch::Done { complete: true });
        }
        if entry.key_hash == self.key_hash && entry.record_end() <= self.visible {
            found.push(*entry);
            if found.len() >= self.limit {
                return Some(SegmentSearch::Done { complete: false });
            }
        }
        None
    }
}

/// The segment `[start, end)`: the tail's entries (newest), then the key
/// file's blocks from the last one.
async fn search_segment<S: Storage>(
    shared: &LogShared<S>,
    query: &Query,
    start: u64,
    end: u64,
    budget: &mut u64,
    found: &mut Vec<KeyEntry>,
) -> Result<SegmentSearch, LogError> {
    let file = {
        let state = shared.state.borrow();
        let from = state.key_tail.partition_point(|entry| entry.position < start);
        let to = state.key_tail.partition_point(|entry| entry.position < end);
        for entry in state.key_tail.range(from..to.max(from)).rev() {
            if let Some(done) = query.take(entry, found) {
                return Ok(done);
            }
        }
        state.key_files.get(&start).cloned()
    };
    let Some(file) = file else { return Ok(SegmentSearch::Next) };
    // Taken with the tail above: the file's entries end where the tail's
    // begin, even if the checkpointer writes more while this reads.
    let end = end.min(file.through());
    let mut next = file.blocks();
    while next > 0 {
        let count = next.min(KEY_QUERY_READ_BLOCKS);
        if *budget < count {
            return Ok(SegmentSearch::Done { complete: false });
        }
        *budget -= count;
        let blocks = file.read_blocks(next - count, count).await?;
        for block in blocks.into_iter().rev() {
            let Some(block) = block else { return Ok(SegmentSearch::Damaged) };
            for entry in block.entries.iter().rev().filter(|entry| entry.position < end) {
                if let Some(done) = query.take(entry, found) {
                    return Ok(done);
                }
            }
        }
        next -= count;
    }
    Ok(SegmentSearch::Next)
}

/// Rewrites the key file of the segment at `start` from the segment's
/// records, up to where the damaged file claimed to go. Under the
/// checkpoint lock, so the checkpointer does not append meanwhile; a failed
/// write or sync stops the log, as for every index file.
async fn rebuild<S: Storage>(shared: &Rc<LogShared<S>>, start: u64) -> Result<(), LogError> {
    let Ok(_permit) = shared.checkpoint_lock.acquire_permit(1).await else { return Err(LogError::Closed) };
    let (segment, damaged) = {
        let state = shared.state.borrow();
        (state.segments.get(&start).cloned(), state.key_files.get(&start).cloned())
    };
    let (Some(segment), Some(damaged), Some(hasher)) = (segment, damaged, shared.config.key_hasher) else {
        return Ok(()); // retention took the segment meanwhile
    };
    tracing::warn!(path = %damaged.path.display(), "a key file block fails its checksum; rebuilding the file from its segment");
    let rebuilt = async {
        let mut file = KeyFile::create(&shared.storage, damaged.path.clone(), start).await?;
        catch_up(&mut file, &segment, damaged.through(), hasher).await?;
        Ok::<_, LogError>(file)
    }
    .await
    .map_err(|error| shared.fail_stop(error))?;
    let mut state = shared.state.borrow_mut();
    if state.segments.contains_key(&start) {
        state.key_files.insert(start, rebuilt);
    }
    Ok(())
}
