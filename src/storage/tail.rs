//! The end of the log after a crash: a torn tail to cut, or damage to refuse.
//!
//! The scan stops at the first position `stop` where no valid record lies;
//! the valid data ends at `end <= stop` (the gap is a write's zero padding).
//! What lies there is a torn tail, cut and zeroed, only if all of these hold:
//!
//! 1. it looks like what a torn write leaves: a flush never rewrites a block
//!    that holds acknowledged bytes and segments are zero-filled, so the
//!    sectors a torn write did not reach are all zeros. A damaged record with
//!    no all-zero sector in it (a bit flip, garbage) is not a torn write;
//! 2. no batch marker after it, in this segment or a later one, vouches for
//!    data beyond `end` as durable (each marker carries the durable position
//!    of the moment its write began). "After it" reaches until a run of
//!    zeros longer than anything a crash can leave unwritten among the
//!    writes in flight (`LogConfig::look_ahead_zero_run_bytes`);
//! 3. the last checkpoint did not record data beyond `end` as durable.
//!
//! Anything else is corruption: the log refuses to open, naming the segment
//! file and the position, unless the operator asks to truncate.

use super::backend::StorageFile;
use super::record::{self, Decoded, WriteShape, RECORD_MAGIC};
use super::segment::Segment;
use super::LogError;
use crate::constants::{BLOCK_SIZE_BYTES, RECORD_ALIGNMENT_BYTES, RECORD_HEADER_SIZE_BYTES};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Sector size as a position step.
const SECTOR_SIZE_BYTES: u64 = record::SECTOR_SIZE_BYTES as u64;

/// Bytes read at a time while looking past the end.
const EVIDENCE_CHUNK_BYTES: usize = 8 * 1024 * 1024;

pub type Segments<F> = BTreeMap<u64, Rc<Segment<F>>>;

/// Where the scan of valid records stopped.
pub struct ScanEnd<F> {
    pub segment: Rc<Segment<F>>,
    /// End of the last valid record: the end of the log.
    pub position: u64,
    /// Where the scan found no valid record (`>= position`).
    pub stop: u64,
    /// Why, when what lies at `stop` is not zeros.
    pub invalid: Option<&'static str>,
    /// The last write the scan entered: its start and the shape its batch
    /// marker recorded.
    pub write: Option<(u64, WriteShape)>,
}

/// What lies after the end of the valid data.
#[derive(Debug, Default)]
pub struct Evidence {
    /// Per segment start: the end of its last non-zero byte after the end.
    pub dirty_end: BTreeMap<u64, u64>,
    /// The first valid record after the end, if any.
    pub first_valid: Option<u64>,
    /// The largest durable position a batch marker after the end vouches
    /// for, and where that marker lies.
    pub durable_claim: Option<(u64, u64)>,
}

/// The verdict on a tail.
pub struct Tail {
    pub evidence: Evidence,
    pub corruption: Option<String>,
}

/// Reads everything from the stop of the scan to the end of the last
/// segment and judges it by the rule in the module header.
pub async fn examine<F: StorageFile>(
    segments: &Segments<F>,
    end: &ScanEnd<F>,
    checkpoint_position: u64,
    zero_run_max: u64,
) -> Result<Tail, LogError> {
    let mut evidence = Evidence::default();
    let mut zeros = ZeroRun { bytes: 0, max: zero_run_max };
    gather(&end.segment, end.stop - end.segment.start, &mut evidence, &mut zeros).await?;
    for later in segments.range(end.segment.end()..).map(|(_, later)| later) {
        if zeros.seen_enough() {
            break;
        }
        gather(later, 0, &mut evidence, &mut zeros).await?;
    }
    // A run of zeros is what an unwritten (or never reached) write leaves.
    let torn_like = end.invalid.is_none() || torn_write_at(end).await?;
    let corruption = judge(end, &evidence, torn_like, checkpoint_position);
    if corruption.is_none() && !evidence.dirty_end.is_empty() {
        tracing::warn!(
            end = end.position,
            stop = end.stop,
            why = end.invalid.unwrap_or("zeros"),
            "cutting a torn tail: data after the end was never acknowledged"
        );
    }
    Ok(Tail { evidence, corruption })
}

fn judge<F>(end: &ScanEnd<F>, evidence: &Evidence, torn_like: bool, checkpoint_position: u64) -> Option<String> {
    let at = format!("offset {} of the segment", end.stop - end.segment.start);
    if checkpoint_position > end.position {
        return Some(format!(
            "the valid data ends at {} ({at}) but the checkpoint recorded data up to {checkpoint_position} as durable",
            end.position
        ));
    }
    if let Some((durable, marker)) = evidence.durable_claim.filter(|(durable, _)| *durable > end.position) {
        return Some(format!(
            "the valid data ends at {} ({at}) but the batch written at {marker} says data up to {durable} was durable",
            end.position
        ));
    }
    if !torn_like {
        let why = end.invalid.unwrap_or("unexpected bytes");
        return Some(format!("damaged record ({why}) at {at}, not the pattern a torn write leaves"));
    }
    None
}

/// Whether the damage where the scan stopped is what a torn write leaves.
/// Inside a write whose marker survived: more all-zero sectors than the
/// write had (a sector never arrived), which a bit flip or garbage never
/// makes, whatever zeros the messages hold. Elsewhere, by its own bytes.
async fn torn_write_at<F: StorageFile>(end: &ScanEnd<F>) -> Result<bool, LogError> {
    let segment = &end.segment;
    let Some((start, shape)) =
        end.write.filter(|(start, shape)| (*start..start + u64::from(shape.length_bytes)).contains(&end.stop))
    else {
        return looks_torn(segment, end.stop - segment.start).await;
    };
    let offset = start - segment.start;
    let length = u64::from(shape.length_bytes).min(segment.size_bytes - offset) as usize;
    let bytes = segment.read(offset, length).await?;
    let sectors_after_marker = bytes.get(record::SECTOR_SIZE_BYTES..).unwrap_or_default();
    Ok(record::zero_sector_count(sectors_after_marker) > shape.zero_sectors)
}

/// Whether the damage at `offset` has an all-zero sector in it, as every
/// record a torn write cut short has. Where the header cannot say how long
/// the record is, the rest of its sector being zeros, or a zero sector
/// before the next block, does as well (a sector that kept older bytes in
/// front of zeros: a torn rewrite by an older layout, or a crash while
/// recovery zeroed a tail).
pub(super) async fn looks_torn<F: StorageFile>(segment: &Segment<F>, offset: u64) -> Result<bool, LogError> {
    let remaining = segment.size_bytes.saturating_sub(offset);
    let header_length = (RECORD_HEADER_SIZE_BYTES as u64).min(remaining) as usize;
    let header = segment.read(offset, header_length).await?;
    let first_sector = offset / SECTOR_SIZE_BYTES * SECTOR_SIZE_BYTES;
    let claimed = record::claimed_length(&header).filter(|length| record::plausible_length(*length, remaining));
    if let Some(length) = claimed {
        let last_end =
            ((offset + length as u64).div_ceil(SECTOR_SIZE_BYTES) * SECTOR_SIZE_BYTES).min(segment.size_bytes);
        let bytes = segment.read(first_sector, (last_end - first_sector) as usize).await?;
        return Ok(bytes.chunks(SECTOR_SIZE_BYTES as usize).any(record::is_zero_sector));
    }
    let sector_end = ((offset + 1).div_ceil(SECTOR_SIZE_BYTES) * SECTOR_SIZE_BYTES).min(segment.size_bytes);
    let rest_of_sector = segment.read(offset, (sector_end - offset) as usize).await?;
    let block = BLOCK_SIZE_BYTES as u64;
    let block_end = ((offset + 1).div_ceil(block) * block).min(segment.size_bytes);
    let to_block_end = segment.read(sector_end, (block_end - sector_end) as usize).await?;
    Ok(record::is_zero_sector(&rest_of_sector)
        || to_block_end.chunks(SECTOR_SIZE_BYTES as usize).any(record::is_zero_sector))
}

/// What lies in one segment from `offset` to its end, read whole.
pub(super) async fn survey_segment<F: StorageFile>(segment: &Segment<F>, offset: u64) -> Result<Evidence, LogError> {
    let mut evidence = Evidence::default();
    gather(segment, offset, &mut evidence, &mut ZeroRun { bytes: 0, max: u64::MAX }).await?;
    Ok(evidence)
}

/// The end (global) of the last non-zero byte of `segment` from `offset`
/// on, looking no further than a run of `zero_run_max` zeros: where the
/// segment's data ends, damage included.
pub(super) async fn dirty_end<F: StorageFile>(
    segment: &Segment<F>,
    offset: u64,
    zero_run_max: u64,
) -> Result<Option<u64>, LogError> {
    let mut evidence = Evidence::default();
    gather(segment, offset, &mut evidence, &mut ZeroRun { bytes: 0, max: zero_run_max }).await?;
    Ok(evidence.dirty_end.get(&segment.start).copied())
}

/// Zeros seen since the last non-zero byte. Writes are contiguous and at a
/// crash at most a few buffers are unsynced, so sectors a torn write missed
/// make a shorter run than `max`: past a run of `max` zeros nothing was
/// written (only damage longer than that could hide data beyond it, and a
/// later checkpoint still catches that).
struct ZeroRun {
    bytes: u64,
    max: u64,
}

impl ZeroRun {
    fn seen_enough(&self) -> bool {
        self.bytes >= self.max
    }
}

/// Records the non-zero bytes, valid records and batch markers of a segment
/// from `offset` to its end, or until a long enough run of zeros.
async fn gather<F: StorageFile>(
    segment: &Segment<F>,
    offset: u64,
    evidence: &mut Evidence,
    zeros: &mut ZeroRun,
) -> Result<(), LogError> {
    let alignment = RECORD_ALIGNMENT_BYTES as u64;
    let mut chunk_offset = offset / SECTOR_SIZE_BYTES * SECTOR_SIZE_BYTES;
    // Where to look for the next record; a record found near the end of a
    // chunk may run into the next one.
    let mut look_at = offset.div_ceil(alignment) * alignment;
    while chunk_offset < segment.size_bytes {
        let length = (EVIDENCE_CHUNK_BYTES as u64).min(segment.size_bytes - chunk_offset) as usize;
        let chunk = segment.read(chunk_offset, length).await?;
        if chunk.is_empty() {
            break;
        }
        for (index, sector) in chunk.chunks(SECTOR_SIZE_BYTES as usize).enumerate() {
            if record::is_zero_sector(sector) {
                zeros.bytes += sector.len() as u64;
                if zeros.seen_enough() {
                    return Ok(());
                }
                continue;
            }
            zeros.bytes = 0;
            let sector_offset = chunk_offset + (index as u64) * SECTOR_SIZE_BYTES;
            let last_nonzero = sector.iter().rposition(|byte| *byte != 0).map_or(0, |at| at as u64 + 1);
            let dirty = (sector_offset + last_nonzero).max(offset);
            if dirty > offset {
                let entry = evidence.dirty_end.entry(segment.start).or_insert(0);
                *entry = (*entry).max(segment.start + dirty);
            }
            let sector_end = sector_offset + sector.len() as u64;
            look_at = look_at.max(sector_offset);
            while look_at < sector_end {
                let found = record_in_chunk(segment, &chunk, chunk_offset, look_at, evidence).await?;
                look_at += found.unwrap_or(alignment);
            }
        }
        chunk_offset += chunk.len() as u64;
    }
    Ok(())
}

/// If a valid record starts at `offset` (inside `chunk`, read at
/// `chunk_offset`), notes it and returns its size.
async fn record_in_chunk<F: StorageFile>(
    segment: &Segment<F>,
    chunk: &[u8],
    chunk_offset: u64,
    offset: u64,
    evidence: &mut Evidence,
) -> Result<Option<u64>, LogError> {
    let relative = (offset - chunk_offset) as usize;
    let magic = chunk.get(relative + 4..relative + 8);
    if magic.is_some_and(|magic| magic != RECORD_MAGIC.to_le_bytes()) {
        return Ok(None);
    }
    let remaining = segment.size_bytes - offset;
    let in_chunk = &chunk[relative..];
    let header = if in_chunk.len() >= RECORD_HEADER_SIZE_BYTES {
        in_chunk[..RECORD_HEADER_SIZE_BYTES].to_vec()
    } else {
        segment.read(offset, (RECORD_HEADER_SIZE_BYTES as u64).min(remaining) as usize).await?
    };
    let plausible = |length: &usize| record::plausible_length(*length, remaining);
    let Some(length) = record::claimed_length(&header).filter(plausible) else { return Ok(None) };
    let decoded = if in_chunk.len() >= length {
        record::decode(&in_chunk[..length])
    } else {
        record::decode(&segment.read(offset, length).await?)
    };
    let Decoded::Valid(header) = decoded else { return Ok(None) };
    let position = segment.start + offset;
    if header.misplaced_at(position).is_some() {
        return Ok(None);
    }
    evidence.first_valid.get_or_insert(position);
    if let Some(durable) = header.batch_durable_position() {
        if evidence.durable_claim.is_none_or(|(known, _)| durable > known) {
            evidence.durable_claim = Some((durable, position));
        }
    }
    Ok(Some(header.padded_size() as u64))
}
