//! Repair of a stopped shard's log, for the operator (`ringmq repair`): the
//! way out when recovery refuses to start on damage.
//!
//! Every segment is walked record by record. A damaged range runs from where
//! no valid record lies to the next valid record (or, at the end of the
//! data, to the last non-zero byte). Each range is copied next to its
//! segment (`<segment>.damaged-<position>`), then overwritten in place with
//! valid records: a tombstone for every queue offset it held (known from the
//! gap in the queue's offsets around it) and a filler for the rest. Nothing
//! moves, so no offset is renumbered; a reader skips the tombstones and says
//! so. A damaged range at the very end that looks like a torn write is left
//! to recovery, which cuts it. The checkpoint goes, so the next start
//! rebuilds every index from the whole log.

use super::backend::{Storage, StorageFile};
use super::checkpoint::{Checkpoint, CHECKPOINT_FILE};
use super::record::{self, flags, Decoded};
use super::recovery::{open_segments, Padding, SegmentReader};
use super::segment::Segment;
use super::tail::{self, Segments};
use super::{aligned::AlignedBuf, now_us, LogConfig, LogError, SEGMENTS_DIR};
use crate::constants::{BLOCK_SIZE_BYTES, RECORD_ALIGNMENT_BYTES, RECORD_HEADER_SIZE_BYTES};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

/// One damaged range that repair replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairedRange {
    pub segment: PathBuf,
    /// Global log position of the first damaged byte.
    pub position: u64,
    pub bytes: u64,
    /// Queue offsets it held, now tombstones.
    pub records_lost: u64,
    /// Where the damaged bytes were copied.
    pub copy: PathBuf,
}

struct Damage<F> {
    segment: Rc<Segment<F>>,
    start: u64,
    end: u64,
    /// A valid record lies after it somewhere in the log.
    followed: bool,
    /// (queue, offset) the damaged bytes held.
    lost: Vec<(u32, u64)>,
}

#[derive(Default)]
struct QueueTrail {
    /// (position, offset) of the queue's last valid record so far.
    last: Option<(u64, u64)>,
}

/// Repairs the log in `config.dir`; returns the ranges it replaced.
pub async fn repair<S: Storage>(storage: &S, config: &LogConfig) -> Result<Vec<RepairedRange>, LogError> {
    let segments = open_segments(storage, &config.dir.join(SEGMENTS_DIR)).await?;
    let mut damaged = survey(&segments).await?;
    let checkpoint_position = checkpoint_position(storage, config).await;
    let last_is_torn = match damaged.last() {
        Some(last) if !last.followed && last.start >= checkpoint_position => {
            tail::looks_torn(&last.segment, last.start - last.segment.start).await?
        }
        _ => false,
    };
    if last_is_torn {
        damaged.pop(); // recovery cuts a torn tail by itself
    }
    let mut repaired = Vec::with_capacity(damaged.len());
    for damage in &damaged {
        repaired.push(mend(storage, damage).await?);
    }
    if !repaired.is_empty() {
        forget_checkpoint(storage, config).await?;
    }
    Ok(repaired)
}

/// Walks every record of every segment; returns the damaged ranges with the
/// queue offsets each one lost.
async fn survey<F: StorageFile>(segments: &Segments<F>) -> Result<Vec<Damage<F>>, LogError> {
    let mut damaged: Vec<Damage<F>> = Vec::new();
    let mut queues: BTreeMap<u32, QueueTrail> = BTreeMap::new();
    for segment in segments.values() {
        let mut reader = SegmentReader::new(segment);
        let mut offset = 0;
        while offset < segment.size_bytes {
            if let Decoded::Valid(header) = reader.probe(offset).await? {
                let position = segment.start + offset;
                if damaged.last().is_some_and(|damage| !damage.followed) {
                    damaged.iter_mut().for_each(|damage| damage.followed = true);
                }
                if header.is_indexed() {
                    note_record(&mut queues, &mut damaged, header.queue_id, header.queue_offset, position);
                }
                offset += header.padded_size() as u64;
                continue;
            }
            if let Padding::Next(boundary) = reader.padding_end(offset).await? {
                offset = boundary;
                continue;
            }
            let evidence = tail::survey_segment(segment, offset).await?;
            let start = segment.start + offset;
            match evidence.first_valid {
                Some(next) => {
                    damaged.push(Damage {
                        segment: segment.clone(),
                        start,
                        end: next,
                        followed: true,
                        lost: Vec::new(),
                    });
                    offset = next - segment.start;
                }
                None => {
                    if let Some(dirty_end) = evidence.dirty_end.get(&segment.start) {
                        let end = dirty_end.div_ceil(RECORD_ALIGNMENT_BYTES as u64) * RECORD_ALIGNMENT_BYTES as u64;
                        let lost = salvage(&mut reader, offset, &queues).await?;
                        damaged.push(Damage { segment: segment.clone(), start, end, followed: false, lost });
                    }
                    break;
                }
            }
        }
    }
    Ok(damaged)
}

/// A valid indexed record: offsets missing since the queue's previous one
/// were lost in the damaged range between the two.
fn note_record<F>(
    queues: &mut BTreeMap<u32, QueueTrail>,
    damaged: &mut [Damage<F>],
    queue_id: u32,
    offset: u64,
    position: u64,
) {
    let trail = queues.entry(queue_id).or_default();
    if let Some((previous_position, previous_offset)) = trail.last {
        let between =
            damaged.iter_mut().rev().find(|damage| damage.start > previous_position && damage.end <= position);
        if let Some(damage) = between {
            damage.lost.extend((previous_offset + 1..offset).map(|lost| (queue_id, lost)));
        }
    }
    trail.last = Some((position, offset));
}

/// What a damaged record at the end of the data held, if its header still
/// names the next offset of a known queue.
async fn salvage<F: StorageFile>(
    reader: &mut SegmentReader<'_, F>,
    offset: u64,
    queues: &BTreeMap<u32, QueueTrail>,
) -> Result<Vec<(u32, u64)>, LogError> {
    let header = reader.bytes(offset, RECORD_HEADER_SIZE_BYTES).await?;
    let Some((queue_id, queue_offset)) = record::claimed_queue_offset(header) else { return Ok(Vec::new()) };
    let expected = queues.get(&queue_id).and_then(|trail| trail.last).map(|(_, last)| last + 1);
    Ok(if expected == Some(queue_offset) { vec![(queue_id, queue_offset)] } else { Vec::new() })
}

/// The valid records that take the place of a damaged range of `length`
/// bytes: tombstones for the lost offsets, then a filler (or zeros at the
/// end of the data, or where no record fits).
fn replacement(length: usize, lost: &[(u32, u64)], followed: bool) -> Vec<u8> {
    const TOMBSTONE: usize = RECORD_HEADER_SIZE_BYTES;
    let mut bytes = vec![0; length];
    let count = lost.len().min(length / TOMBSTONE);
    let leftover = length - count * TOMBSTONE;
    let filler = followed && leftover >= RECORD_HEADER_SIZE_BYTES;
    let timestamp = now_us();
    for (index, (queue_id, offset)) in lost.iter().take(count).enumerate() {
        let start = index * TOMBSTONE;
        let stretch = if index + 1 == count && followed && !filler { leftover } else { 0 };
        let destination = &mut bytes[start..start + TOMBSTONE + stretch];
        record::encode_placeholder(destination, flags::TOMBSTONE, *queue_id, *offset, timestamp);
    }
    if filler {
        let destination = &mut bytes[count * TOMBSTONE..];
        record::encode_placeholder(destination, flags::FILLER, 0, record::NO_QUEUE_OFFSET, timestamp);
    }
    bytes
}

/// Copies a damaged range aside, then overwrites it in place and syncs.
async fn mend<S: Storage>(storage: &S, damage: &Damage<S::File>) -> Result<RepairedRange, LogError> {
    let segment = &damage.segment;
    let offset = damage.start - segment.start;
    let length = (damage.end - damage.start) as usize;
    let io = |operation, error| LogError::io(operation, &segment.path, damage.start, error);
    let damaged = segment.file.read_at(offset, length).await.map_err(|error| io("read damaged range", error))?;
    let mut copy = segment.path.clone().into_os_string();
    copy.push(format!(".damaged-{}", damage.start));
    let copy = PathBuf::from(copy);
    storage.write_file_atomic(&copy, &damaged).await.map_err(|error| io("copy damaged range", error))?;

    let block = BLOCK_SIZE_BYTES as u64;
    let first = offset / block * block;
    let last = (offset + length as u64).div_ceil(block) * block;
    let around = segment.file.read_at(first, (last - first) as usize).await.map_err(|error| io("read", error))?;
    let mut blocks = AlignedBuf::zeroed((last - first) as usize);
    blocks.as_mut_slice()[..around.len()].copy_from_slice(&around);
    let at = (offset - first) as usize;
    blocks.as_mut_slice()[at..at + length].copy_from_slice(&replacement(length, &damage.lost, damage.followed));
    segment.file.write_at(blocks.as_slice(), first).await.map_err(|error| io("write repaired range", error))?;
    segment.file.fdatasync().await.map_err(|error| io("fdatasync repaired range", error))?;
    tracing::warn!(
        segment = %segment.path.display(),
        position = damage.start,
        bytes = length,
        records_lost = damage.lost.len(),
        copy = %copy.display(),
        "repaired a damaged range"
    );
    Ok(RepairedRange {
        segment: segment.path.clone(),
        position: damage.start,
        bytes: length as u64,
        records_lost: damage.lost.len() as u64,
        copy,
    })
}

/// The position the last checkpoint recorded as durable (0 without one).
async fn checkpoint_position<S: Storage>(storage: &S, config: &LogConfig) -> u64 {
    let bytes = storage.read_file(&config.dir.join(CHECKPOINT_FILE)).await.ok().flatten();
    bytes.and_then(|bytes| Checkpoint::decode(&bytes).ok()).map_or(0, |checkpoint| checkpoint.position)
}

/// Without a checkpoint the next start scans the whole log and rebuilds the
/// index files, which may point into what was repaired.
async fn forget_checkpoint<S: Storage>(storage: &S, config: &LogConfig) -> Result<(), LogError> {
    let path = config.dir.join(CHECKPOINT_FILE);
    match storage.read_file(&path).await {
        Ok(None) => Ok(()),
        Ok(Some(_)) => storage.remove(&path).await.map_err(|error| LogError::io("remove checkpoint", &path, 0, error)),
        Err(error) => Err(LogError::io("read checkpoint", &path, 0, error)),
    }
}
