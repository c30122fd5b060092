//! The key index searched: segments newest first, the tail's entries then
//! the key file's blocks, each block checked; a damaged file is rebuilt
//! from its segment (`key_lookup::catch_up`) and searched again.

use super::backend::Storage;
use super::key_lookup::catch_up;
use super::keys::{key_file_path, KeyEntry, KeyFile};
use super::log::LogShared;
use super::{LogError, KEYS_DIR};
use crate::constants::{KEY_QUERY_BLOCKS_MAX, KEY_QUERY_READ_BLOCKS};
use std::rc::Rc;

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
        let file = state.key_files.get(&start).cloned();
        // The file holds what lies below its `through`. A checkpoint a full
        // disk refused can leave those entries in the tail as well (the
        // tail is cleared once every file is written): count them once.
        let tail_start = file.as_ref().map_or(start, |file| file.through().max(start));
        let from = state.key_tail.partition_point(|entry| entry.position < tail_start);
        let to = state.key_tail.partition_point(|entry| entry.position < end);
        for entry in state.key_tail.range(from..to.max(from)).rev() {
            if let Some(done) = query.take(entry, found) {
                return Ok(done);
            }
        }
        file
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
