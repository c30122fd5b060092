//! Reading a queue: index entries up to the visible position (from memory,
//! the index-page cache or the index file: `index_lookup`), record bytes
//! from the recent written buffers when they are still in memory, else with
//! O_DIRECT reads of the segment. Every record's CRC is checked after it is
//! read; the bytes go to the caller unchanged.

use super::aligned::AlignedBuf;
use super::backend::Storage;
use super::index::{IndexEntry, QueueIndex, Slot};
use super::log::CommitLog;
use super::read_ahead::{ReadAhead, RunRead};
use super::record::{self, Decoded};
use super::LogError;
use crate::constants::{BLOCK_SIZE_BYTES, RECORD_HEADER_SIZE_BYTES};
use bytes::Bytes;
use std::collections::VecDeque;
use std::rc::Rc;

/// Largest single disk read covering several records.
const READ_COALESCE_BYTES_MAX: u64 = 1024 * 1024;

/// Records of one queue interleave with other queues' records in the log;
/// reading the gap between two of them is cheaper than a second I/O when the
/// gap is at most this large.
const READ_COALESCE_GAP_BYTES_MAX: u64 = 64 * 1024;

/// A buffer the flusher wrote, kept for reads of recent records.
pub struct WrittenBuffer {
    pub start: u64,
    pub data: AlignedBuf,
    pub filled: usize,
}

impl WrittenBuffer {
    /// Where its data (batch marker and records) ends.
    pub(super) fn data_end(&self) -> u64 {
        self.start + self.filled as u64
    }

    /// Where its write ended: the data padded to whole blocks.
    fn written_end(&self) -> u64 {
        self.start + (self.filled.div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES) as u64
    }
}

/// The last written buffers, oldest first, bounded by their capacity.
#[derive(Default)]
pub struct RecentBuffers {
    buffers: VecDeque<Rc<WrittenBuffer>>,
    bytes: usize,
}

impl RecentBuffers {
    /// Adds a written buffer; returns the evicted ones nobody reads any more.
    pub fn push(&mut self, buffer: Rc<WrittenBuffer>, bytes_max: usize) -> Vec<WrittenBuffer> {
        self.bytes += buffer.data.capacity();
        self.buffers.push_back(buffer);
        let mut evicted = Vec::new();
        while self.bytes > bytes_max && self.buffers.len() > 1 {
            let Some(oldest) = self.buffers.pop_front() else { break };
            self.bytes -= oldest.data.capacity();
            if let Ok(buffer) = Rc::try_unwrap(oldest) {
                evicted.push(buffer);
            }
        }
        evicted
    }

    /// The bytes from `position` as the segment file holds them (each
    /// write's zero padding included), through the buffer that holds
    /// `position` and the ones right after it that continue it, up to
    /// `end_mark` (the durable or the taken end, as the caller may hand out)
    /// and `limit`; only buffers whose data ends at or before `end_mark`.
    /// A standby whose durable end is the last write's data end gets that
    /// write's padding and the next write in one answer, not two.
    pub fn written_from(&self, position: u64, end_mark: u64, limit: u64) -> Option<Vec<u8>> {
        let first = self.buffers.iter().rposition(|buffer| (buffer.start..buffer.written_end()).contains(&position))?;
        let mut bytes = Vec::new();
        let mut at = position;
        for buffer in self.buffers.range(first..) {
            let continues = buffer.start <= at && at < buffer.written_end();
            if !continues || buffer.data_end() > end_mark {
                break;
            }
            let end = buffer.written_end().min(end_mark).min(limit);
            if end <= at {
                break;
            }
            bytes.extend_from_slice(
                &buffer.data.as_slice()[(at - buffer.start) as usize..(end - buffer.start) as usize],
            );
            at = end;
        }
        (!bytes.is_empty()).then_some(bytes)
    }

    /// The bytes `[position, position + length)` if one buffer holds them.
    fn find(&self, position: u64, length: usize) -> Option<Bytes> {
        let buffer = self
            .buffers
            .iter()
            .rev()
            .find(|buffer| buffer.start <= position && position + length as u64 <= buffer.data_end())?;
        let offset = (position - buffer.start) as usize;
        Some(Bytes::copy_from_slice(&buffer.data.as_slice()[offset..offset + length]))
    }
}

/// One record as stored: header and message bytes.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    pub queue_offset: u64,
    pub position: u64,
    pub header: record::RecordHeader,
    /// Header followed by the message, exactly as in the log.
    pub bytes: Bytes,
    /// When this record was read through an op record's reference (a
    /// committed half, a delivered delay or retry): that op record.
    pub via: Option<OpRecordRead>,
}

/// The op record a read followed to the record it points at.
#[derive(Clone, Debug)]
pub struct OpRecordRead {
    pub position: u64,
    pub header: record::RecordHeader,
    /// The op record's own body (a transaction id, a timer entry, ...).
    pub body: Bytes,
}

impl StoredRecord {
    /// The message flatbuffer, as the producer sent it.
    pub fn message(&self) -> Bytes {
        self.bytes.slice(RECORD_HEADER_SIZE_BYTES..self.header.length as usize)
    }
}

#[derive(Clone, Debug, Default)]
pub struct ReadBatch {
    pub records: Vec<StoredRecord>,
    /// The offset to read next.
    pub next_offset: u64,
    /// The first offset not yet visible (the queue's high watermark).
    pub visible_end_offset: u64,
    /// Offsets in the batch that `ringmq repair` marked lost (tombstones):
    /// skipped, not in `records`.
    pub lost_offsets: Vec<u64>,
}

/// How much one read may return: up to `count_max` records, stopping before
/// `bytes_max` is passed (the first record always comes), none ending above
/// the log position `cap` (a reader's own visibility limit below the log's
/// visible position; `u64::MAX` for none; exact only at or above the index
/// hold, `CommitLog::hold_index_at`).
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    pub count_max: usize,
    pub bytes_max: usize,
    pub cap: u64,
}

/// Records and bytes one step of `CommitLog::replay` reads at most.
const REPLAY_BATCH_RECORDS: usize = 1024;
const REPLAY_BATCH_BYTES: usize = 4 << 20;

impl<S: Storage> CommitLog<S> {
    /// Reads up to `count_max` visible records of `queue_id` from `offset`,
    /// stopping before `bytes_max` is passed (the first record always comes).
    pub async fn read(
        &self,
        queue_id: u32,
        offset: u64,
        count_max: usize,
        bytes_max: usize,
    ) -> Result<ReadBatch, LogError> {
        let limits = ReadLimits { count_max, bytes_max, cap: u64::MAX };
        self.read_tagged(queue_id, offset, limits, &[]).await
    }

    /// `read` within `limits` (records ending above `limits.cap` are not
    /// seen either), keeping only records whose index entry carries one of
    /// `tag_hashes` (all when empty): the others are passed over unread,
    /// and `next_offset` moves past them.
    pub async fn read_tagged(
        &self,
        queue_id: u32,
        offset: u64,
        limits: ReadLimits,
        tag_hashes: &[u32],
    ) -> Result<ReadBatch, LogError> {
        let bytes_max = limits.bytes_max;
        let (slots, visible_end_offset) = self.shared().visible_slots(queue_id, offset, limits).await?;
        let covered = slots.len() as u64;
        let (offsets, slots): (Vec<u64>, Vec<Slot>) = slots
            .into_iter()
            .enumerate()
            .map(|(index, slot)| (offset + index as u64, slot))
            .filter(|(_, slot)| tag_hashes.is_empty() || tag_hashes.contains(&slot.entry.tag_hash))
            .unzip();
        let mut records: Vec<StoredRecord> = Vec::with_capacity(slots.len());
        let mut lost_offsets = Vec::new();
        // Bytes of the records read: a reference (a committed half, a due
        // delay, a retry) brings the record it points at, larger than its
        // index entry, so the entries' sizes alone do not bound the batch.
        let mut read_bytes = 0;
        let mut cut_at = None;
        let mut index = 0;
        let mut ahead = ReadAhead::default();
        'runs: while index < slots.len() {
            let first_offset = offsets[index];
            let Some((bytes, run)) = ahead.take(&slots, index, |slots| self.start_run(slots)).await? else {
                let position = slots[index].entry.position;
                return Err(self.segment_gone(queue_id, offset, first_offset, position));
            };
            for (slot_index, slot) in slots[index..index + run].iter().enumerate() {
                let start = (slot.entry.position - slots[index].entry.position) as usize;
                let record_bytes = bytes.slice(start..start + slot.entry.size_bytes as usize);
                let queue_offset = offsets[index + slot_index];
                let record = self.checked(queue_id, queue_offset, slot, record_bytes)?;
                // A zero size is a back-pointer (`FarCopy`), not a reference.
                let record = match record.header.ref_size {
                    0 => Some(record),
                    _ => self.referenced(&record).await?,
                };
                match record {
                    Some(record) if !record.header.is_tombstone() => {
                        // The first record always goes, so a read moves on.
                        if !records.is_empty() && read_bytes + record.bytes.len() > bytes_max {
                            cut_at = Some(queue_offset);
                            break 'runs;
                        }
                        read_bytes += record.bytes.len();
                        records.push(record);
                    }
                    _ => lost_offsets.push(queue_offset),
                }
            }
            index += run;
        }
        let next_offset = cut_at.unwrap_or(offset + covered);
        Ok(ReadBatch { records, next_offset, visible_end_offset, lost_offsets })
    }

    /// Hands every record of `queue_id` from `from` (or the queue's base)
    /// up to the visible end to `apply`, in offset order, reading in bounded
    /// batches: how state kept in the log is rebuilt at start.
    pub async fn replay(&self, queue_id: u32, from: u64, mut apply: impl FnMut(&StoredRecord)) -> Result<(), LogError> {
        let mut next = from;
        while let Some(after) =
            self.replay_once(queue_id, next, REPLAY_BATCH_RECORDS, REPLAY_BATCH_BYTES, &mut apply).await?
        {
            next = after;
        }
        Ok(())
    }

    /// One read of `replay`: up to `count_max` records of `queue_id` from
    /// `from` (or the queue's base), stopping before `bytes_max` is
    /// passed, handed to `apply`. The offset to go on from, or `None` once
    /// nothing is left to the visible end.
    pub async fn replay_once(
        &self,
        queue_id: u32,
        from: u64,
        count_max: usize,
        bytes_max: usize,
        apply: impl FnMut(&StoredRecord),
    ) -> Result<Option<u64>, LogError> {
        let from = from.max(self.base_offset(queue_id));
        let batch = self.read(queue_id, from, count_max, bytes_max).await?;
        if batch.records.is_empty() && batch.lost_offsets.is_empty() {
            return Ok(None);
        }
        batch.records.iter().for_each(apply);
        Ok(Some(batch.next_offset))
    }

    /// The record an op record points at (a committed or rolled-back half
    /// message, a delayed message, the original of a retried or dead-letter
    /// message), read in its place at the op record's offset; `None` when
    /// retention deleted it after it settled (the offset is lost, like a
    /// repaired one). Index entries always point at the record appended for
    /// their offset, so they rise with offsets; only this read goes back.
    async fn referenced(&self, op: &StoredRecord) -> Result<Option<StoredRecord>, LogError> {
        let Some(record) = self.record_at(op.header.ref_position, op.header.ref_size).await? else {
            return Ok(None);
        };
        let via = OpRecordRead { position: op.position, header: op.header, body: op.message() };
        Ok(Some(StoredRecord { queue_offset: op.queue_offset, via: Some(via), ..record }))
    }

    /// The message record of `size_bytes` at `position` (checked: valid, a
    /// message, that long); `None` when retention deleted it.
    pub async fn record_at(&self, position: u64, size_bytes: u32) -> Result<Option<StoredRecord>, LogError> {
        let corrupt = |detail: String| LogError::Corrupt { path: self.shared().config.dir.clone(), position, detail };
        let entry = IndexEntry { position, size_bytes, tag_hash: 0, store_timestamp_us: 0 };
        let slot = Slot { entry, record_end: position + u64::from(size_bytes) };
        let Some((bytes, _)) = self.start_run(std::slice::from_ref(&slot)).finish().await? else {
            let deleted = self.shared().state.borrow().segments.keys().next().is_some_and(|first| position < *first);
            return match deleted {
                true => Ok(None),
                false => Err(corrupt("an op record points at a position no segment holds".into())),
            };
        };
        let header = match record::decode(&bytes) {
            Decoded::Valid(header) => header,
            other => return Err(corrupt(format!("the record an op record points at is invalid: {other:?}"))),
        };
        if header.length != size_bytes || !record::holds_message(header.flags) {
            return Err(corrupt(format!(
                "an op record points at a record of {} bytes with flags {:#x}, not a message of {size_bytes}",
                header.length, header.flags
            )));
        }
        Ok(Some(StoredRecord { queue_offset: header.queue_offset, position, header, bytes, via: None }))
    }

    /// What a read says when no segment holds the record at `position`
    /// (queue offset `slot_offset`): retention deleted it since the entries
    /// were chosen (the read raced it), unless the offset is still kept.
    fn segment_gone(&self, queue_id: u32, requested: u64, slot_offset: u64, position: u64) -> LogError {
        let shared = self.shared();
        let earliest = shared.state.borrow().queues.get(&queue_id).map(QueueIndex::base_offset);
        match earliest {
            Some(earliest) if slot_offset < earliest => LogError::OffsetTruncated { queue_id, requested, earliest },
            _ => LogError::Corrupt {
                path: shared.config.dir.clone(),
                position,
                detail: "an index entry points at a position no segment holds".into(),
            },
        }
    }

    /// Starts the read of the records adjacent to the first of `slots` (at
    /// least the first, in one segment); its bytes are `None` when no
    /// segment holds the first one.
    fn start_run(&self, slots: &[Slot]) -> RunRead {
        let slots = &slots[..contiguous_run(slots)];
        let first = slots[0].entry.position;
        let span = |slots: &[Slot]| {
            slots.last().map_or(0, |last| (last.entry.position - first) as usize + last.entry.size_bytes as usize)
        };
        let segment = {
            let state = self.shared().state.borrow();
            if let Some(bytes) = state.recent.find(first, span(slots)) {
                return RunRead::ready(Some(bytes), slots.len());
            }
            let segment = state.segments.range(..=first).next_back().map(|(_, segment)| segment.clone());
            segment.filter(|segment| segment.contains(first))
        };
        let Some(segment) = segment else { return RunRead::ready(None, slots.len()) };
        let in_segment = slots
            .iter()
            .take_while(|slot| slot.entry.position + u64::from(slot.entry.size_bytes) <= segment.end())
            .count()
            .max(1);
        let length = span(&slots[..in_segment]);
        RunRead::start(segment, first, length, in_segment)
    }

    /// Verifies a record read back: CRC, and the offset its header claims.
    fn checked(&self, queue_id: u32, queue_offset: u64, slot: &Slot, bytes: Bytes) -> Result<StoredRecord, LogError> {
        let corrupt = |detail: String| LogError::Corrupt {
            path: self.shared().config.dir.clone(),
            position: slot.entry.position,
            detail,
        };
        let header = match record::decode(&bytes) {
            Decoded::Valid(header) => header,
            Decoded::Zero => return Err(corrupt("an indexed record reads as zeros".into())),
            Decoded::Invalid(why) => return Err(corrupt(format!("indexed record is invalid: {why}"))),
        };
        if header.length != slot.entry.size_bytes {
            return Err(corrupt(format!(
                "the record at an index entry is {} bytes long, the index says {}",
                header.length, slot.entry.size_bytes
            )));
        }
        let log_only = record::flags::BATCH | record::flags::FILLER;
        if header.flags & log_only != 0 {
            return Err(corrupt("an index entry points at a batch marker or filler".into()));
        }
        if header.is_indexed() && (header.queue_id != queue_id || header.queue_offset != queue_offset) {
            return Err(corrupt(format!(
                "record claims queue {} offset {}, the index says queue {queue_id} offset {queue_offset}",
                header.queue_id, header.queue_offset
            )));
        }
        Ok(StoredRecord { queue_offset, position: slot.entry.position, header, bytes, via: None })
    }
}

/// How many slots from the first lie close enough, in increasing position,
/// to read with one I/O.
fn contiguous_run(slots: &[Slot]) -> usize {
    let mut run = 1;
    while run < slots.len() {
        let previous = &slots[run - 1].entry;
        let next = &slots[run].entry;
        let previous_end = previous.position + u64::from(previous.size_bytes);
        // An entry may point backwards (a reference, or a damaged entry):
        // it starts a new run, and only a forward entry has a span.
        let close = next.position >= previous_end && next.position - previous_end <= READ_COALESCE_GAP_BYTES_MAX;
        if !close {
            break;
        }
        let span = next.position + u64::from(next.size_bytes) - slots[0].entry.position;
        if span > READ_COALESCE_BYTES_MAX {
            break;
        }
        run += 1;
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::IndexEntry;

    fn slot(position: u64, size_bytes: u32) -> Slot {
        let entry = IndexEntry { position, size_bytes, tag_hash: 0, store_timestamp_us: 0 };
        Slot { entry, record_end: position + u64::from(size_bytes) }
    }

    /// A written buffer at `start` holding `filled` bytes of `fill`.
    fn written(start: u64, filled: usize, fill: u8) -> Rc<WrittenBuffer> {
        let mut data = AlignedBuf::zeroed(4 * BLOCK_SIZE_BYTES);
        data.as_mut_slice()[..filled].fill(fill);
        Rc::new(WrittenBuffer { start, data, filled })
    }

    #[test]
    fn a_standby_at_a_writes_data_end_gets_its_padding_and_the_next_write_at_once() {
        let block = BLOCK_SIZE_BYTES as u64;
        let mut recent = RecentBuffers::default();
        // Two writes: 100 bytes at 0 (padded to the block), 300 at the next block.
        recent.push(written(0, 100, 1), usize::MAX);
        recent.push(written(block, 300, 2), usize::MAX);
        let bytes = recent.written_from(100, block + 300, u64::MAX).expect("bytes");
        assert_eq!(bytes.len() as u64, block + 300 - 100);
        assert!(bytes[..(block - 100) as usize].iter().all(|byte| *byte == 0), "the first write's padding");
        assert!(bytes[(block - 100) as usize..].iter().all(|byte| *byte == 2), "the second write's data");
        // Only up to the mark: a buffer not wholly below it is not handed out.
        assert_eq!(recent.written_from(100, 100, u64::MAX), None);
        assert_eq!(recent.written_from(100, block + 299, u64::MAX).map(|bytes| bytes.len() as u64), Some(block - 100));
        // And the limit (the answer's size, the segment's end) holds.
        assert_eq!(recent.written_from(0, block + 300, 50).map(|bytes| bytes.len()), Some(50));
        // A gap (another segment, a lone marker's block) ends the bytes.
        let mut gapped = RecentBuffers::default();
        gapped.push(written(0, 100, 1), usize::MAX);
        gapped.push(written(2 * block, 300, 2), usize::MAX);
        assert_eq!(
            gapped.written_from(100, 2 * block + 300, u64::MAX).map(|bytes| bytes.len() as u64),
            Some(block - 100)
        );
    }

    #[test]
    fn an_entry_pointing_backwards_ends_the_run() {
        assert_eq!(contiguous_run(&[slot(1000, 100), slot(1100, 100), slot(1300, 50)]), 3);
        assert_eq!(contiguous_run(&[slot(1000, 100), slot(500, 100), slot(600, 100)]), 1);
        assert_eq!(contiguous_run(&[slot(1 << 40, 100), slot(0, 100)]), 1);
        let far = READ_COALESCE_GAP_BYTES_MAX + 1101;
        assert_eq!(contiguous_run(&[slot(1000, 100), slot(far, 100)]), 1);
    }
}
