//! Recovery: load the last checkpoint and the index files it names, scan the
//! log after it verifying every CRC, and decide what the end of the log is:
//! a torn tail is cut and zeroed, anything else refuses to open (the rule is
//! in `tail`) unless the operator asks to truncate (`truncate_corruption`).

use super::aligned::AlignedBuf;
use super::backend::{Storage, StorageFile, ZeroFillPace};
use super::checkpoint::{Checkpoint, CHECKPOINT_FILE};
use super::group_commit::FillBuffer;
use super::in_flight::InFlight;
use super::index::{index_path, IndexEntry, IndexFile, QueueIndex};
use super::index_rebuild::{IndexFiles, IndexSpill};
use super::log::LogState;
use super::record::{self, Decoded, RecordHeader, BATCH_MARKER_SIZE_BYTES};
use super::segment::{create_segment, open_segment, parse_segment_start, Segment};
use super::tail::{self, ScanEnd, Segments, Tail};
use super::{LogConfig, LogError, INDEX_DIR, SEGMENTS_DIR};
use crate::constants::{BLOCK_SIZE_BYTES, RECORD_HEADER_SIZE_BYTES, SEGMENT_ZERO_FILL_CHUNK_BYTES};
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

/// Bytes read at a time while scanning.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

type Queues = BTreeMap<u32, QueueIndex>;

pub async fn recover<S: Storage>(storage: &S, config: &LogConfig) -> Result<LogState<S::File>, LogError> {
    // Each truncation shortens the log, so the passes end; the bound is a
    // guard against a bug, not a limit a log can reach.
    let mut truncated = false;
    for _ in 0..RECOVERY_PASSES_MAX {
        match recover_pass(storage, config, truncated).await? {
            Pass::Recovered(state) => return Ok(*state),
            // The operator's truncation cut below what the checkpoint and
            // its index files know: forget them; the next pass scans all.
            Pass::Truncated { end, checkpoint_position } => {
                truncated = true;
                if end < checkpoint_position {
                    forget_checkpoint(storage, config).await?;
                }
            }
        }
    }
    Err(LogError::Corrupt {
        path: config.dir.clone(),
        position: 0,
        detail: format!("the log still needs truncating after {RECOVERY_PASSES_MAX} truncations"),
    })
}

/// Recovery passes under the operator's truncation (each one cuts).
const RECOVERY_PASSES_MAX: usize = 64;

enum Pass<F> {
    Recovered(Box<LogState<F>>),
    /// The operator's truncation cut the log at `end`.
    Truncated {
        end: u64,
        checkpoint_position: u64,
    },
}

/// Without a checkpoint the next start scans the whole log and rebuilds
/// every index.
pub(super) async fn forget_checkpoint<S: Storage>(storage: &S, config: &LogConfig) -> Result<(), LogError> {
    let path = config.dir.join(CHECKPOINT_FILE);
    if matches!(storage.read_file(&path).await, Ok(Some(_))) {
        storage.remove(&path).await.map_err(|error| LogError::io("remove checkpoint", &path, 0, error))?;
        storage.sync_dir(&config.dir).await.map_err(|error| LogError::io("sync directory", &config.dir, 0, error))?;
    }
    Ok(())
}

/// One recovery; `truncated`: an earlier pass cut the log, so the end may
/// lie inside a write whose batch marker no longer describes it.
async fn recover_pass<S: Storage>(storage: &S, config: &LogConfig, truncated: bool) -> Result<Pass<S::File>, LogError> {
    let segments_dir = config.dir.join(SEGMENTS_DIR);
    let index_dir = config.dir.join(INDEX_DIR);
    for dir in [&segments_dir, &index_dir] {
        storage.create_dir_all(dir).await.map_err(|error| LogError::io("create directory", dir, 0, error))?;
    }
    let mut segments = open_segments(storage, &segments_dir).await?;
    if segments.is_empty() {
        let pace = ZeroFillPace::unlimited();
        let start = config.first_position;
        let first = create_segment(storage, &segments_dir, start, config.segment_size_bytes, &pace).await?;
        segments.insert(start, Rc::new(first));
    }
    let first_start = segments.keys().next().copied().unwrap_or(0);
    let checkpoint = load_checkpoint(storage, config).await;
    let (mut queues, index_files, scan_start) = match &checkpoint {
        Some(checkpoint) => match load_indexes(storage, &index_dir, checkpoint).await {
            Ok((queues, files)) => (queues, files, checkpoint.position.max(first_start)),
            Err(error) => {
                tracing::warn!(%error, "index files do not match the checkpoint; rebuilding from the whole log");
                // The rebuild rewrites the index files before a checkpoint
                // names them: a crash meanwhile must rebuild again.
                forget_checkpoint(storage, config).await?;
                (Queues::new(), BTreeMap::new(), first_start)
            }
        },
        None => (Queues::new(), BTreeMap::new(), first_start),
    };
    for (start, timestamp) in checkpoint.iter().flat_map(|checkpoint| checkpoint.segments.iter()) {
        if let Some(segment) = segments.get(start) {
            segment.last_store_timestamp_us.set(*timestamp);
        }
    }
    // A queue the scan meets first starts at offset 0, unless retention
    // deleted segments the scan would have started in.
    let late_starts = scan_start == first_start && first_start > 0;
    let mut spill = IndexSpill::new(storage, &index_dir, index_files, config.index_unwritten_entries_wake);
    let end = scan(&segments, scan_start, &mut queues, late_starts, &mut spill).await?;
    let index_files = spill.files;
    let checkpoint_position = checkpoint.as_ref().map_or(0, |checkpoint| checkpoint.position);
    let tail = tail::examine(&segments, &end, checkpoint_position, config.look_ahead_zero_run_bytes()).await?;
    let next_segment = settle_tail(config, &mut segments, &end, &tail).await?;
    if tail.corruption.is_some() {
        return Ok(Pass::Truncated { end: end.position, checkpoint_position });
    }
    sync_scanned(&segments, scan_start, &end).await?;
    let mut next_write = end.position;
    if truncated || !tail.evidence.dirty_end.is_empty() {
        next_write = vouch(&end).await?;
    }
    let key_files = super::key_lookup::recover_key_files(storage, config, &segments, end.position).await?;
    let filling = filling_at(&end.segment, next_write, AlignedBuf::zeroed(config.buffer_capacity_bytes));
    tracing::info!(end = end.position, scanned_from = scan_start, queues = queues.len(), "commit log recovered");
    Ok(Pass::Recovered(Box::new(LogState {
        segments,
        next_segment,
        recovered_end: end.position,
        preparing_segment: false,
        preparation_requested: false,
        last_store_timestamp_us: 0,
        filling,
        sealed: Default::default(),
        recent: Default::default(),
        pool: Vec::new(),
        queues,
        index_files,
        keys_enabled: config.key_hasher.is_some(),
        key_tail: Default::default(),
        key_files,
        unsynced_segments: Vec::new(),
        unsynced_bytes: 0,
        batches_taken: 0,
        stats: Default::default(),
        stopped: None,
        checkpoint_position,
    })))
}

/// After a cut, the batch marker of the write the end lies in describes a
/// write that is no longer there, and nothing vouches for the records
/// recovery just made durable. A write of a lone batch marker after the end
/// does: damage below it is then never taken for a torn tail. Returns where
/// the log goes on.
async fn vouch<F: StorageFile>(end: &ScanEnd<F>) -> Result<u64, LogError> {
    let segment = &end.segment;
    let block = BLOCK_SIZE_BYTES as u64;
    let offset = (end.position - segment.start).div_ceil(block) * block;
    if offset + block > segment.size_bytes {
        return Ok(end.position); // the next write opens the next segment and vouches
    }
    let mut data = AlignedBuf::zeroed(BLOCK_SIZE_BYTES);
    let gap_bytes = (segment.start + offset - end.position) as u32;
    let start = record::WriteStart { position: segment.start + offset, durable_position: end.position };
    record::stamp_batch_marker(data.as_mut_slice(), start, gap_bytes, super::now_us());
    let io = |operation, error| LogError::io(operation, &segment.path, segment.start + offset, error);
    segment.file.write_at(data.as_slice(), offset).await.map_err(|error| io("write batch marker", error))?;
    segment.file.fdatasync().await.map_err(|error| io("fdatasync batch marker", error))?;
    Ok(segment.start + offset + BATCH_MARKER_SIZE_BYTES as u64)
}

pub(super) async fn open_segments<S: Storage>(storage: &S, dir: &Path) -> Result<Segments<S::File>, LogError> {
    let names = storage.list(dir).await.map_err(|error| LogError::io("list segments", dir, 0, error))?;
    let mut segments = Segments::new();
    for path in names {
        if let Some(start) = parse_segment_start(&path) {
            segments.insert(start, Rc::new(open_segment(storage, &path, start).await?));
        }
    }
    Ok(segments)
}

pub(super) async fn load_checkpoint<S: Storage>(storage: &S, config: &LogConfig) -> Option<Checkpoint> {
    let path = config.dir.join(CHECKPOINT_FILE);
    match storage.read_file(&path).await {
        Ok(Some(bytes)) => match Checkpoint::decode(&bytes) {
            Ok(checkpoint) => Some(checkpoint),
            Err(why) => {
                tracing::warn!(path = %path.display(), %why, "ignoring a damaged checkpoint; scanning the whole log");
                None
            }
        },
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the checkpoint; scanning the whole log");
            None
        }
    }
}

/// Index files opened at once: each open is a system call and two or three
/// small reads, and one after another 5,000 of them held a start at
/// 10,000 queues for about 2 s (docs/PERFORMANCE.md).
const INDEX_OPENS_IN_FLIGHT_MAX: usize = 16;

async fn load_indexes<S: Storage>(
    storage: &S,
    dir: &Path,
    checkpoint: &Checkpoint,
) -> Result<(Queues, IndexFiles<S::File>), LogError> {
    let mut queues = Queues::new();
    let mut files = IndexFiles::new();
    let mut opens = InFlight::new(INDEX_OPENS_IN_FLIGHT_MAX);
    for queue in &checkpoint.queues {
        let (storage, path, queue) = (storage.clone(), index_path(dir, queue.queue_id), *queue);
        // Opened, not read: pages are read (and checked) as reads need them.
        // Segments retention deleted after this checkpoint are forgotten
        // once the log is open (`retention::forget_deleted_segments`).
        let open = async move {
            let file = IndexFile::open(&storage, path, queue.base_offset, queue.next_offset).await?;
            Ok((queue.queue_id, file))
        };
        files.extend(opens.push(open).await?);
        queues.insert(queue.queue_id, QueueIndex::restore(queue.base_offset, queue.next_offset));
    }
    files.extend(opens.finish().await?);
    Ok((queues, files))
}

/// What follows a zero header inside a segment.
pub(super) enum Padding {
    /// Zeros to the next block, where the next write starts.
    Next(u64),
    /// The end of the data (a block boundary or the end of the segment).
    End,
    /// Non-zero bytes after a zero header: not padding.
    Dirty,
}

/// Reads a segment in large chunks.
pub(super) struct SegmentReader<'a, F> {
    segment: &'a Segment<F>,
    chunk_offset: u64,
    chunk: Vec<u8>,
}

impl<'a, F: StorageFile> SegmentReader<'a, F> {
    pub(super) fn new(segment: &'a Segment<F>) -> Self {
        Self { segment, chunk_offset: 0, chunk: Vec::new() }
    }

    /// Bytes at `offset` (segment-relative), up to `length`; fewer at the end.
    pub(super) async fn bytes(&mut self, offset: u64, length: usize) -> Result<&[u8], LogError> {
        let chunk_end = self.chunk_offset + self.chunk.len() as u64;
        let wanted_end = (offset + length as u64).min(self.segment.size_bytes);
        if offset < self.chunk_offset || wanted_end > chunk_end {
            let read_length = length.max(SCAN_CHUNK_BYTES).min((self.segment.size_bytes - offset) as usize);
            self.chunk = self.segment.read(offset, read_length).await?;
            self.chunk_offset = offset;
        }
        let start = (offset - self.chunk_offset) as usize;
        let end = (start + length).min(self.chunk.len());
        Ok(&self.chunk[start..end])
    }

    /// After a zero header at `offset`: whether the rest of its block is the
    /// zero padding that ends a write (and the next write may start at the
    /// next block), the end of the segment's data, or something else.
    pub(super) async fn padding_end(&mut self, offset: u64) -> Result<Padding, LogError> {
        let block = BLOCK_SIZE_BYTES as u64;
        let boundary = offset.div_ceil(block) * block;
        if boundary == offset || boundary >= self.segment.size_bytes {
            let rest = (boundary.max(offset + RECORD_HEADER_SIZE_BYTES as u64)).min(self.segment.size_bytes) - offset;
            let zero = self.bytes(offset, rest as usize).await?.iter().all(|byte| *byte == 0);
            return Ok(if zero { Padding::End } else { Padding::Dirty });
        }
        let zero = self.bytes(offset, (boundary - offset) as usize).await?.iter().all(|byte| *byte == 0);
        Ok(if zero { Padding::Next(boundary) } else { Padding::Dirty })
    }

    /// Whether a write that followed the data ending at `end` (global)
    /// starts at `offset`: a valid batch marker vouching for no more than
    /// `end`, with exactly the padding between `end` and itself before it.
    pub(super) async fn starts_write(&mut self, offset: u64, end: u64) -> Result<bool, LogError> {
        let position = self.segment.start + offset;
        Ok(match self.probe(offset).await? {
            Decoded::Valid(header) => {
                let vouches = header.batch_durable_position().is_some_and(|durable| durable <= end);
                let shape = header.batch_write_shape();
                vouches && shape.is_some_and(|shape| position.checked_sub(end) == Some(u64::from(shape.gap_bytes)))
            }
            _ => false,
        })
    }

    /// After damage at `offset` inside a block: the next block, if the write
    /// that starts there followed the data ending at `end` (global) exactly.
    /// Its batch marker then says that `[end, next block)` was padding, which
    /// no write rewrites (a flush starts on a fresh block): the damage hit no
    /// record, and the log goes on.
    pub(super) async fn write_after_damaged_padding(&mut self, offset: u64, end: u64) -> Result<Option<u64>, LogError> {
        let block = BLOCK_SIZE_BYTES as u64;
        let boundary = offset.div_ceil(block) * block;
        if boundary == offset || boundary >= self.segment.size_bytes {
            return Ok(None);
        }
        Ok(self.starts_write(boundary, end).await?.then_some(boundary))
    }

    /// What lies at `offset`: a whole valid record, zeros, or garbage.
    pub(super) async fn probe(&mut self, offset: u64) -> Result<Decoded, LogError> {
        let remaining = self.segment.size_bytes - offset;
        if remaining < RECORD_HEADER_SIZE_BYTES as u64 {
            return Ok(Decoded::Zero);
        }
        let header = self.bytes(offset, RECORD_HEADER_SIZE_BYTES).await?;
        let decoded = match record::claimed_length(header) {
            Some(length) if record::plausible_length(length, remaining) => {
                record::decode(self.bytes(offset, length).await?)
            }
            _ => record::decode(header),
        };
        Ok(match decoded {
            Decoded::Valid(header) => match header.misplaced_at(self.segment.start + offset) {
                Some(why) => Decoded::Invalid(why),
                None => Decoded::Valid(header),
            },
            other => other,
        })
    }
}

async fn scan<S: Storage>(
    segments: &Segments<S::File>,
    start: u64,
    queues: &mut Queues,
    late_starts: bool,
    spill: &mut IndexSpill<'_, S>,
) -> Result<ScanEnd<S::File>, LogError> {
    let Some(mut segment) = segments.range(..=start).next_back().map(|(_, segment)| segment.clone()) else {
        return Err(LogError::Corrupt {
            path: Default::default(),
            position: start,
            detail: "no segment holds the checkpointed position".into(),
        });
    };
    if start > segment.end() {
        return Err(LogError::Corrupt {
            path: segment.path.clone(),
            position: start,
            detail: format!("the checkpoint names position {start}, beyond the last segment"),
        });
    }
    let mut offset = start - segment.start;
    let mut end = start;
    let mut write = None;
    loop {
        let mut reader = SegmentReader::new(&segment);
        let invalid = loop {
            match reader.probe(offset).await? {
                Decoded::Valid(header) => {
                    if let Some(shape) = header.batch_write_shape() {
                        write = Some((segment.start + offset, shape));
                    }
                    // A valid record that does not continue its queue is
                    // damage (a misdirected block), judged like any other.
                    match index_record(queues, &segment, &header, segment.start + offset, late_starts) {
                        Err(why) => break Some(why),
                        Ok(true) => spill.entry_added(queues).await?,
                        Ok(false) => {}
                    }
                    offset += header.padded_size() as u64;
                    end = segment.start + offset;
                }
                // A header may reach into the next block: zeros up to the
                // boundary are the padding that ends a write all the same.
                decoded => match reader.padding_end(offset).await? {
                    // Padding ends a write; the next write starts with its
                    // batch marker. Anything else on that block is what is
                    // left of a write that lost the sector(s) before it.
                    Padding::Next(boundary) if reader.starts_write(boundary, end).await? => offset = boundary,
                    Padding::Next(_) | Padding::End => break None,
                    Padding::Dirty => match reader.write_after_damaged_padding(offset, end).await? {
                        Some(boundary) => {
                            let position = segment.start + offset;
                            tracing::warn!(position, "damaged padding between two writes: no record was there");
                            offset = boundary;
                        }
                        None if next_segment_follows(segments, &segment, end).await? => {
                            let position = segment.start + offset;
                            tracing::warn!(position, "damaged padding at the end of a segment: no record was there");
                            break None;
                        }
                        None => match decoded {
                            Decoded::Invalid(why) => break Some(why),
                            _ => break Some("a zero header followed by non-zero bytes"),
                        },
                    },
                },
            }
        };
        drop(reader);
        let next = segments.range(segment.end()..).next().map(|(_, next)| next.clone());
        if let (None, Some(next)) = (invalid, next) {
            if continues_in(&next, end).await? {
                segment = next;
                offset = 0;
                continue;
            }
        }
        return Ok(ScanEnd { stop: segment.start + offset, position: end, segment, invalid, write });
    }
}

/// Whether the segment after `segment` starts with a write that began when
/// exactly `end` was durable: a full segment is synced before the next one
/// is written, so its data ended at `end` and what lies after it is padding.
async fn next_segment_follows<F: StorageFile>(
    segments: &Segments<F>,
    segment: &Segment<F>,
    end: u64,
) -> Result<bool, LogError> {
    let Some((_, next)) = segments.range(segment.end()..).next() else { return Ok(false) };
    Ok(match SegmentReader::new(next).probe(0).await? {
        Decoded::Valid(header) => next.start == segment.end() && header.batch_durable_position() == Some(end),
        _ => false,
    })
}

/// Whether the log goes on in `next` after ending at `end` in the segment
/// before it: `next` starts with a valid record whose batch marker does not
/// vouch for more than `end` (it would if data before `end`'s successor were
/// missing from the earlier segment).
async fn continues_in<F: StorageFile>(next: &Segment<F>, end: u64) -> Result<bool, LogError> {
    Ok(match SegmentReader::new(next).probe(0).await? {
        Decoded::Valid(header) => header.batch_durable_position().is_none_or(|durable| durable <= end),
        _ => false,
    })
}

pub(super) fn index_record<F>(
    queues: &mut Queues,
    segment: &Segment<F>,
    header: &RecordHeader,
    position: u64,
    late_starts: bool,
) -> Result<bool, &'static str> {
    let timestamp = segment.last_store_timestamp_us.get().max(header.store_timestamp_us);
    segment.last_store_timestamp_us.set(timestamp);
    if !header.is_indexed() {
        return Ok(false);
    }
    if !queues.contains_key(&header.queue_id) && header.queue_offset != 0 && !late_starts {
        return Err("a queue's first record does not have offset 0");
    }
    let queue = queues.entry(header.queue_id).or_insert_with(|| QueueIndex::starting_at(header.queue_offset));
    if queue.next_offset() != header.queue_offset {
        if queue.next_offset() != queue.base_offset() || !late_starts {
            return Err("a record's queue offset does not follow its queue");
        }
        // The queue's earlier offsets were deleted by retention.
        *queue = QueueIndex::starting_at(header.queue_offset);
    }
    // An op record's entry points at the op record; reads follow its
    // reference.
    let entry = IndexEntry {
        position,
        size_bytes: header.length,
        tag_hash: header.tag_hash,
        store_timestamp_us: header.store_timestamp_us,
    };
    queue.push(entry, position + header.padded_size() as u64);
    Ok(true)
}

/// Refuses corruption (unless overridden) and zeroes what lies after the
/// end, in this segment and later ones. A later segment is kept, zeroed, as
/// the next segment: recovery deletes no segment file.
async fn settle_tail<F: StorageFile>(
    config: &LogConfig,
    segments: &mut Segments<F>,
    end: &ScanEnd<F>,
    tail: &Tail,
) -> Result<Option<Rc<Segment<F>>>, LogError> {
    if let Some(detail) = &tail.corruption {
        if !config.truncate_corruption {
            return Err(LogError::Corrupt {
                path: end.segment.path.clone(),
                position: end.stop,
                detail: detail.clone(),
            });
        }
        tracing::error!(position = end.position, %detail, "TRUNCATING CORRUPT LOG as the operator asked: records after this position are dropped");
    }
    let later: Vec<Rc<Segment<F>>> = segments.range(end.segment.end()..).map(|(_, later)| later.clone()).collect();
    for segment in std::iter::once(&end.segment).chain(later.iter()) {
        let from = end.position.max(segment.start);
        if tail.corruption.is_some() {
            // The cut may lie far below data the look-ahead never reached:
            // nothing of it may come back, nor serve as evidence later.
            zero_range(segment, from, segment.end()).await?;
        } else if let Some(dirty_end) = tail.evidence.dirty_end.get(&segment.start) {
            zero_range(segment, from, *dirty_end).await?;
        }
    }
    for segment in &later {
        segments.remove(&segment.start);
    }
    let next = later.into_iter().next().filter(|next| next.start == end.segment.end());
    Ok(next)
}

/// What the scan found may have been written but never synced before the
/// crash; it becomes "flushed" now, so make it durable first.
async fn sync_scanned<F: StorageFile>(
    segments: &Segments<F>,
    scan_start: u64,
    end: &ScanEnd<F>,
) -> Result<(), LogError> {
    let first = segments.range(..=scan_start).next_back().map_or(end.segment.start, |(start, _)| *start);
    for segment in segments.range(first..=end.segment.start).map(|(_, segment)| segment) {
        segment
            .file
            .fdatasync()
            .await
            .map_err(|error| LogError::io("fdatasync segment", &segment.path, segment.start, error))?;
    }
    Ok(())
}

/// Zeroes `[from, to)` of a segment, keeping the bytes before `from` in its
/// first block, and syncs.
pub(super) async fn zero_range<F: StorageFile>(segment: &Segment<F>, from: u64, to: u64) -> Result<(), LogError> {
    let block = BLOCK_SIZE_BYTES as u64;
    let start = (from - segment.start) / block * block;
    let end = ((to - segment.start).div_ceil(block) * block).min(segment.size_bytes);
    if end <= start {
        return Ok(());
    }
    let io = |operation, error| LogError::io(operation, &segment.path, from, error);
    let kept = segment.read(start, (from - segment.start - start) as usize).await?;
    let chunk = (SEGMENT_ZERO_FILL_CHUNK_BYTES as u64).min(end - start) as usize;
    let mut buffer = AlignedBuf::zeroed(chunk);
    buffer.as_mut_slice()[..kept.len()].copy_from_slice(&kept);
    let mut at = start;
    while at < end {
        let length = ((end - at) as usize).min(chunk);
        segment.file.write_at(&buffer.as_slice()[..length], at).await.map_err(|error| io("zero tail", error))?;
        if at == start {
            buffer.as_mut_slice()[..kept.len()].fill(0);
        }
        at += length as u64;
    }
    segment.file.fdatasync().await.map_err(|error| io("fdatasync tail", error))
}

/// The empty filling buffer that continues the log on the block after
/// `position` of `segment`.
pub(super) fn filling_at<F: StorageFile>(segment: &Rc<Segment<F>>, position: u64, data: AlignedBuf) -> FillBuffer<F> {
    let block = BLOCK_SIZE_BYTES as u64;
    let data_before = position - segment.start;
    let file_offset = (data_before.div_ceil(block) * block).min(segment.size_bytes);
    FillBuffer::empty_at(segment.clone(), file_offset, data_before, data)
}
