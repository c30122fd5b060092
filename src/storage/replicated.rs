//! Checks raw log bytes a standby received from its primary before any of
//! them reaches its disk: every record's CRC, every batch marker's place,
//! and that padding is zeros (issue 13). A standby writes only the verified
//! prefix, which always ends on a record boundary (or inside padding), so
//! its durable end is a place the primary's log has a boundary too.

use super::record::{self, Decoded};
use crate::constants::{BLOCK_SIZE_BYTES, RECORD_HEADER_SIZE_BYTES};

/// Why replicated bytes cannot be taken: the stream is closed, nothing of
/// it from `position` on is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("replicated bytes at log position {position}: {detail}")]
pub struct ReplicaDamage {
    pub position: u64,
    pub detail: String,
}

/// The end (a log position) of the longest prefix of `bytes`, which start
/// at log `position` inside the segment `segment_start..segment_end`, made
/// of whole verified writes (batch marker, records, padding) and zero
/// padding. A write cut by the end of `bytes` ends the prefix before its
/// marker (the standby gathers more and asks again): its own recovery would
/// cut a write whose marker claims blocks it lacks. When `bytes` end at the
/// primary's durable end (`source_end`), that end is the last write's data
/// end and its padding is not sent: its whole records count.
pub fn verified_end(position: u64, bytes: &[u8], segment_end: u64, source_end: u64) -> Result<u64, ReplicaDamage> {
    let damage = |at: usize, detail: String| ReplicaDamage { position: position + at as u64, detail };
    let bytes_end = position + bytes.len() as u64;
    let mut at = 0usize;
    while at < bytes.len() {
        let here = position + at as u64;
        let rest = &bytes[at..];
        let block_end = (here / BLOCK_SIZE_BYTES as u64 + 1) * BLOCK_SIZE_BYTES as u64;
        let to_block = usize::try_from(block_end - here).unwrap_or(usize::MAX);
        // Records are 8-byte aligned and start with a CRC and a non-zero
        // magic: zeros where a header would be are padding, which runs to
        // the next block (where the next write starts).
        let probe = RECORD_HEADER_SIZE_BYTES.min(to_block).min(rest.len());
        if rest[..probe].iter().all(|byte| *byte == 0) {
            let padding = to_block.min(rest.len());
            if let Some(stray) = rest[..padding].iter().position(|byte| *byte != 0) {
                return Err(damage(at + stray, "a non-zero byte in the padding after a write".into()));
            }
            at += padding;
            continue;
        }
        if rest.len() < RECORD_HEADER_SIZE_BYTES {
            // A header still to come.
            return Ok(here);
        }
        let Some(length) = record::claimed_length(rest) else {
            return Err(damage(at, "neither a record nor padding (bad magic)".into()));
        };
        if !record::plausible_length(length, segment_end.saturating_sub(here)) {
            return Err(damage(at, format!("a record claims {length} bytes, impossible here")));
        }
        let size = record::padded_size(length);
        if rest.len() < size {
            return Ok(here);
        }
        match record::decode(&rest[..length]) {
            Decoded::Valid(header) => {
                if let Some(why) = header.misplaced_at(here) {
                    return Err(damage(at, why.into()));
                }
                if let Some(shape) = header.batch_write_shape() {
                    if here % BLOCK_SIZE_BYTES as u64 != 0 {
                        return Err(damage(at, "a batch marker off a block boundary".into()));
                    }
                    let write_end = here.saturating_add(u64::from(shape.length_bytes));
                    if write_end > segment_end || (shape.length_bytes as usize) < size {
                        return Err(damage(
                            at,
                            format!("a batch marker claims a write of {} bytes", shape.length_bytes),
                        ));
                    }
                    if write_end > bytes_end && bytes_end != source_end {
                        return Ok(here);
                    }
                }
                if let Some(stray) = rest[length..size].iter().position(|byte| *byte != 0) {
                    return Err(damage(at + length + stray, "a non-zero byte in a record's alignment".into()));
                }
            }
            Decoded::Zero => return Err(damage(at, "a zero header after a non-zero one".into())),
            Decoded::Invalid(why) => return Err(damage(at, why.into())),
        }
        at += size;
    }
    Ok(position + bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::record::{encode, padded_size, RecordHeader, WriteStart, NO_POSITION};

    const SEGMENT_END: u64 = 1 << 20;

    fn record(message: &[u8], queue_offset: u64) -> Vec<u8> {
        let length = RECORD_HEADER_SIZE_BYTES + message.len();
        let header = RecordHeader {
            length: length as u32,
            flags: 0,
            queue_id: 1,
            tag_hash: 0,
            queue_offset,
            store_timestamp_us: 1,
            ref_position: NO_POSITION,
            ref_size: 0,
            reconsume_times: 0,
        };
        let mut bytes = vec![0; padded_size(length)];
        encode(&mut bytes, &header, message);
        bytes
    }

    /// Two writes as the flusher makes them: marker, records, zeros to the
    /// block; the second starts on the next block.
    fn two_writes(start: u64) -> Vec<u8> {
        let mut log = Vec::new();
        for write in 0..2u64 {
            let mut block = vec![0; BLOCK_SIZE_BYTES];
            let mut at = RECORD_HEADER_SIZE_BYTES;
            for offset in 0..3 {
                let bytes = record(format!("message {write} {offset}").as_bytes(), write * 3 + offset);
                block[at..at + bytes.len()].copy_from_slice(&bytes);
                at += bytes.len();
            }
            let position = start + log.len() as u64;
            let marker = WriteStart { position, durable_position: position };
            record::stamp_batch_marker(&mut block, marker, 0, 1);
            log.extend_from_slice(&block);
        }
        log
    }

    #[test]
    fn whole_writes_verify_and_a_cut_record_ends_the_prefix_before_it() {
        let log = two_writes(8192);
        assert_eq!(verified_end(8192, &log, SEGMENT_END, 0), Ok(8192 + log.len() as u64));
        // Cut inside the second record of the first write: the whole write
        // waits for more...
        let first_end = RECORD_HEADER_SIZE_BYTES + record(b"message 0 0", 0).len();
        let cut = 8192 + first_end as u64 + 10;
        assert_eq!(verified_end(8192, &log[..first_end + 10], SEGMENT_END, cut + 4096), Ok(8192));
        // ... unless the primary has nothing durable past the cut: its whole
        // records count.
        assert_eq!(verified_end(8192, &log[..first_end + 10], SEGMENT_END, cut), Ok(8192 + first_end as u64));
        // The second write cut: the prefix ends at its marker.
        let second = BLOCK_SIZE_BYTES + 100;
        assert_eq!(verified_end(8192, &log[..second], SEGMENT_END, 1 << 30), Ok(8192 + BLOCK_SIZE_BYTES as u64));
        // From a record boundary in the middle, as a standby resumes.
        assert_eq!(
            verified_end(8192 + first_end as u64, &log[first_end..], SEGMENT_END, 0),
            Ok(8192 + log.len() as u64)
        );
    }

    #[test]
    fn a_flipped_bit_a_misplaced_marker_or_dirty_padding_is_damage() {
        let log = two_writes(8192);
        let mut flipped = log.clone();
        flipped[RECORD_HEADER_SIZE_BYTES + 70] ^= 1;
        assert!(verified_end(8192, &flipped, SEGMENT_END, 0).is_err());
        // The same bytes claimed for another place: the markers say where they belong.
        assert!(verified_end(8192 + 4096, &log, SEGMENT_END, 0).is_err());
        let mut dirty = log.clone();
        dirty[BLOCK_SIZE_BYTES - 1] = 1;
        let error = verified_end(8192, &dirty, SEGMENT_END, 0).unwrap_err();
        assert_eq!(error.position, 8192 + BLOCK_SIZE_BYTES as u64 - 1);
        let mut garbage = log;
        garbage[BLOCK_SIZE_BYTES..BLOCK_SIZE_BYTES + 8].copy_from_slice(b"garbage!");
        assert!(verified_end(8192, &garbage, SEGMENT_END, 0).is_err());
    }
}
