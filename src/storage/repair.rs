//! Repair of a stopped shard's log, for the operator (`ringmq repair`): the
//! way out when recovery refuses to start on damage.
//!
//! Every segment is walked record by record. A damaged range runs from where
//! no valid record lies to the next valid record (or, at the end of the
//! data, to the last non-zero byte). Each range is copied next to its
//! segment (`<segment>.damaged-<position>`), then overwritten in place with
//! valid records: a tombstone for every queue offset it held (known from the
//! gap in the queue's offsets around it, or for a queue's first offsets from
//! 0 while retention has deleted nothing) and a filler for the rest. Nothing
//! moves, so no offset is renumbered; a reader skips the tombstones and says
//! so. A damaged range at the very end that looks like a torn write is left
//! to recovery, which cuts it. The checkpoint goes, so the next start
//! rebuilds every index from the whole log.

use super::backend::{Storage, StorageFile};
use super::record::{self, flags, Decoded};
use super::recovery::{forget_checkpoint, load_checkpoint, open_segments, Padding, SegmentReader};
use super::segment::Segment;
use super::tail::{self, Segments};
use super::{aligned::AlignedBuf, now_us, LogConfig, LogError, SEGMENTS_DIR};
use crate::constants::{BLOCK_SIZE_BYTES, RECORD_ALIGNMENT_BYTES, RECORD_HEADER_SIZE_BYTES, RECORD_SIZE_BYTES_MAX};
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
    /// (queue, offset) the damaged bytes held, in log order.
    lost: Vec<(u32, u64)>,
}

impl<F> Damage<F> {
    /// Tombstones the range has room for.
    fn capacity(&self) -> usize {
        ((self.end - self.start) as usize) / RECORD_HEADER_SIZE_BYTES
    }
}

/// Offsets of a queue missing between two of its valid records.
struct Gap {
    queue_id: u32,
    offsets: std::ops::Range<u64>,
    /// The queue's record before the gap; `None`: the gap is the queue's
    /// first offsets, which no record before names.
    after_position: Option<u64>,
    before_position: u64,
}

/// What a walk over every record found.
struct Survey<F> {
    damaged: Vec<Damage<F>>,
    gaps: Vec<Gap>,
    /// Per queue: (position, offset) of its last valid record.
    last: BTreeMap<u32, (u64, u64)>,
    /// A queue first met above offset 0 lost its first offsets.
    queues_start_at_zero: bool,
}

/// Repairs the log in `config.dir`; returns the ranges it replaced.
pub async fn repair<S: Storage>(storage: &S, config: &LogConfig) -> Result<Vec<RepairedRange>, LogError> {
    let segments = open_segments(storage, &config.dir.join(SEGMENTS_DIR)).await?;
    // Without retention every queue starts at offset 0 in the first
    // segment; after it, a queue's first kept offset is its start.
    let queues_start_at_zero = segments.keys().next().is_none_or(|first| *first == 0);
    let Survey { mut damaged, gaps, last, .. } = survey(&segments, queues_start_at_zero).await?;
    let checkpoint_position = load_checkpoint(storage, config).await.map_or(0, |checkpoint| checkpoint.position);
    let last_is_torn = match damaged.last() {
        Some(last) if !last.followed && last.start >= checkpoint_position => {
            tail::looks_torn(&last.segment, last.start - last.segment.start).await?
        }
        _ => false,
    };
    if last_is_torn {
        damaged.pop(); // recovery cuts a torn tail by itself
    }
    if damaged.is_empty() {
        return Ok(Vec::new());
    }
    place_gaps(&mut damaged, &gaps)?;
    place_trailing(&mut damaged, last).await?;
    // Before anything is rewritten: a crash during repair must not leave a
    // checkpoint whose index files point into replaced bytes.
    forget_checkpoint(storage, config).await?;
    let mut repaired = Vec::with_capacity(damaged.len());
    for damage in &damaged {
        repaired.push(mend(storage, damage).await?);
    }
    Ok(repaired)
}

/// Walks every record of every segment: the damaged ranges, and the gaps in
/// each queue's offsets they explain.
async fn survey<F: StorageFile>(segments: &Segments<F>, queues_start_at_zero: bool) -> Result<Survey<F>, LogError> {
    let mut found = Survey { damaged: Vec::new(), gaps: Vec::new(), last: BTreeMap::new(), queues_start_at_zero };
    let mut data_end = 0;
    for segment in segments.values() {
        let mut reader = SegmentReader::new(segment);
        let mut offset = 0;
        while offset < segment.size_bytes {
            if let Decoded::Valid(header) = reader.probe(offset).await? {
                let position = segment.start + offset;
                // Only ranges at the end of the data so far lack a follower.
                for damage in found.damaged.iter_mut().rev().take_while(|damage| !damage.followed) {
                    damage.followed = true;
                }
                if header.is_indexed() {
                    found.note_record(header.queue_id, header.queue_offset, position);
                }
                offset += header.padded_size() as u64;
                data_end = segment.start + offset;
                continue;
            }
            if let Padding::Next(boundary) = reader.padding_end(offset).await? {
                if reader.starts_write(boundary, data_end).await? {
                    offset = boundary;
                    continue;
                }
            }
            let evidence = tail::survey_segment(segment, offset).await?;
            let start = segment.start + offset;
            let (end, followed) = match evidence.first_valid {
                Some(next) => (next, true),
                None => match evidence.dirty_end.get(&segment.start) {
                    Some(dirty_end) => {
                        (dirty_end.div_ceil(RECORD_ALIGNMENT_BYTES as u64) * RECORD_ALIGNMENT_BYTES as u64, false)
                    }
                    None => break, // the end of this segment's data
                },
            };
            found.damaged.push(Damage { segment: segment.clone(), start, end, followed, lost: Vec::new() });
            if !followed {
                break;
            }
            offset = end - segment.start;
        }
    }
    Ok(found)
}

impl<F> Survey<F> {
    fn note_record(&mut self, queue_id: u32, offset: u64, position: u64) {
        let (after_position, first_missing) = match self.last.get(&queue_id) {
            Some((previous_position, previous_offset)) => (Some(*previous_position), previous_offset + 1),
            None if self.queues_start_at_zero => (None, 0),
            None => (None, offset),
        };
        if offset > first_missing {
            self.gaps.push(Gap { queue_id, offsets: first_missing..offset, after_position, before_position: position });
        }
        self.last.insert(queue_id, (position, offset));
    }
}

/// Gives each gap's offsets, in order, to the damaged ranges between its
/// two records, filling each range's room before the next: per queue the
/// tombstones then keep increasing offsets in log order.
fn place_gaps<F>(damaged: &mut [Damage<F>], gaps: &[Gap]) -> Result<(), LogError> {
    for gap in gaps {
        let mut offsets = gap.offsets.clone();
        for damage in damaged.iter_mut() {
            let before_gap = gap.after_position.is_some_and(|after| damage.start <= after);
            if before_gap || damage.end > gap.before_position {
                continue;
            }
            while damage.lost.len() < damage.capacity() {
                let Some(offset) = offsets.next() else { break };
                damage.lost.push((gap.queue_id, offset));
            }
        }
        if let Some(offset) = offsets.next() {
            return Err(no_room(gap.queue_id, offset));
        }
    }
    Ok(())
}

/// Offsets after a queue's last valid record: the headers still readable
/// in the damaged ranges after it name them (the CRC cannot vouch for
/// them, so only the offsets that continue the queue are taken).
async fn place_trailing<F: StorageFile>(
    damaged: &mut [Damage<F>],
    mut last: BTreeMap<u32, (u64, u64)>,
) -> Result<(), LogError> {
    for damage in damaged.iter_mut() {
        let offset = damage.start - damage.segment.start;
        let bytes = damage.segment.read(offset, (damage.end - damage.start) as usize).await?;
        for at in (0..bytes.len()).step_by(RECORD_ALIGNMENT_BYTES) {
            let Some((queue_id, queue_offset)) = record::claimed_queue_offset(&bytes[at..]) else { continue };
            let Some((position, previous)) = last.get(&queue_id).copied() else { continue };
            if position < damage.start && queue_offset == previous + 1 && damage.lost.len() < damage.capacity() {
                damage.lost.push((queue_id, queue_offset));
                last.insert(queue_id, (position, queue_offset));
            }
        }
    }
    Ok(())
}

fn no_room(queue_id: u32, offset: u64) -> LogError {
    LogError::Corrupt {
        path: Default::default(),
        position: 0,
        detail: format!("repair cannot place a tombstone for queue {queue_id} offset {offset}: the damaged ranges are too small for the offsets missing around them"),
    }
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
    // A record length must stay within a record's limit: long ranges take
    // several fillers, the last at least a header long.
    let piece_max = RECORD_SIZE_BYTES_MAX / RECORD_ALIGNMENT_BYTES * RECORD_ALIGNMENT_BYTES;
    let mut at = count * TOMBSTONE;
    while filler && length - at >= RECORD_HEADER_SIZE_BYTES {
        let rest = length - at;
        let mut piece = rest.min(piece_max);
        if rest - piece > 0 && rest - piece < RECORD_HEADER_SIZE_BYTES {
            piece -= RECORD_HEADER_SIZE_BYTES;
        }
        let destination = &mut bytes[at..at + piece];
        record::encode_placeholder(destination, flags::FILLER, 0, record::NO_QUEUE_OFFSET, timestamp);
        at += piece;
    }
    bytes
}

/// Copies a damaged range aside, then overwrites it in place and syncs.
async fn mend<S: Storage>(storage: &S, damage: &Damage<S::File>) -> Result<RepairedRange, LogError> {
    let segment = &damage.segment;
    let offset = damage.start - segment.start;
    let length = (damage.end - damage.start) as usize;
    let io = |operation, error| LogError::io(operation, &segment.path, damage.start, error);
    let block = BLOCK_SIZE_BYTES as u64;
    let first = offset / block * block;
    let last = (offset + length as u64).div_ceil(block) * block;
    // One read: the whole blocks the rewrite covers hold the damaged bytes.
    let around = segment.read(first, (last - first) as usize).await?;
    let at = (offset - first) as usize;
    let damaged = around.get(at..at + length).ok_or_else(|| LogError::Corrupt {
        path: segment.path.clone(),
        position: damage.start,
        detail: "the damaged range lies past the end of its segment file".into(),
    })?;
    let mut copy = segment.path.clone().into_os_string();
    copy.push(format!(".damaged-{}", damage.start));
    let copy = PathBuf::from(copy);
    storage.write_file_atomic(&copy, damaged).await.map_err(|error| io("copy damaged range", error))?;

    let mut blocks = AlignedBuf::zeroed((last - first) as usize);
    blocks.as_mut_slice()[..around.len()].copy_from_slice(&around);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::record::Decoded;

    /// Walks `bytes` as the scan would: valid records back to back to the end.
    fn records_in(bytes: &[u8]) -> Vec<(u16, u64)> {
        let mut found = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let Some(length) = record::claimed_length(&bytes[at..]) else { panic!("no record at {at}") };
            match record::decode(&bytes[at..at + length]) {
                Decoded::Valid(header) => found.push((header.flags, header.queue_offset)),
                other => panic!("invalid record at {at}: {other:?}"),
            }
            at += record::padded_size(length);
        }
        assert_eq!(at, bytes.len(), "the records fill the range exactly");
        found
    }

    #[test]
    fn a_replacement_fills_its_range_exactly_with_valid_records() {
        let lost = [(1, 7), (1, 8), (2, 3)];
        for length in [56, 64, 112, 168, 176, 224, 4096, 4 * RECORD_SIZE_BYTES_MAX + 40] {
            let length = length / 8 * 8;
            let count = lost.len().min(length / RECORD_HEADER_SIZE_BYTES);
            let found = records_in(&replacement(length, &lost, true));
            let tombstones: Vec<u64> =
                found.iter().filter(|(flags, _)| flags & flags::TOMBSTONE != 0).map(|(_, offset)| *offset).collect();
            assert_eq!(tombstones, [7, 8, 3][..count].to_vec(), "length {length}");
        }
    }
}
