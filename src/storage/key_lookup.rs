//! The key index kept up: the entries not yet in the key files (the tail,
//! in memory) written at checkpoint, recovery's catch-up and check of the
//! files, a file (re)built from its segment, retention. The search is in
//! `key_search`.
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
    BLOCK_SIZE_BYTES, KEY_FILE_THROUGH_STEP_BYTES, RECORD_ALIGNMENT_BYTES, RECORD_HEADER_SIZE_BYTES,
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
