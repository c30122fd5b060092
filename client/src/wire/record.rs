//! The commit-log record: a fixed header the broker assigns, followed by the
//! message flatbuffer exactly as the producer sent it.
//!
//! ```text
//! 0  crc32        u32  over bytes 4..length (header and message)
//! 4  magic        u32  RECORD_MAGIC
//! 8  length       u32  header + message, without padding
//! 12 flags        u16  RecordFlags
//! 14 version      u16  RECORD_VERSION
//! 16 queue_id     u32
//! 20 tag_hash     u32
//! 24 queue_offset u64  NO_QUEUE_OFFSET when the record is not indexed
//! 32 store_timestamp_us u64
//! 40 ref_position u64  NO_POSITION unless an op record points at another record
//! 48 ref_size     u32
//! 52 reconsume_times u32 deliveries before this one (retry op records), else zero
//! 56 message
//! ```
//! A record starts on an 8-byte boundary; the padding after it is zero.
//!
//! Every write of the flusher starts on a fresh block with a batch marker
//! (`flags::BATCH`, no message, `ref_position` = the durable position when
//! the write began, `queue_offset` = its own position) and ends with zeros up to the next block: a flush never
//! rewrites a block that holds acknowledged bytes. A zero header therefore
//! means either the padding at the end of a write or the end of the data.

use crate::constants::{RECORD_ALIGNMENT_BYTES, RECORD_HEADER_SIZE_BYTES, RECORD_SIZE_BYTES_MAX};

pub const RECORD_MAGIC: u32 = 0x5251_4d31; // "1MQR" little-endian: "RMQ1" in a hex dump
pub const RECORD_VERSION: u16 = 1;
pub const NO_POSITION: u64 = u64::MAX;
pub const NO_QUEUE_OFFSET: u64 = u64::MAX;

/// Flags the broker sets on a record.
pub mod flags {
    /// A transactional half message: stored, invisible until committed.
    pub const HALF: u16 = 1 << 0;
    /// Op record: the transaction of `ref_position` committed.
    pub const COMMIT: u16 = 1 << 1;
    /// Op record: the transaction of `ref_position` rolled back.
    pub const ROLLBACK: u16 = 1 << 2;
    pub const DELAYED: u16 = 1 << 3;
    pub const RETRY: u16 = 1 << 4;
    pub const DEAD_LETTER: u16 = 1 << 5;
    /// Broker-internal state (consumer offsets, timer progress, ...).
    pub const INTERNAL: u16 = 1 << 6;
    /// Batch marker: the first record of every write the flusher issues. Its
    /// `ref_position` is the log position that was durable when the write
    /// began, a lower bound recovery uses to tell a torn tail from lost data.
    pub const BATCH: u16 = 1 << 7;
    /// Written by `ringmq repair` in place of a damaged record: the queue
    /// offset it carries was lost. Readers skip it and say so.
    pub const TOMBSTONE: u16 = 1 << 8;
    /// Written by `ringmq repair` over damaged bytes that held no record a
    /// queue misses: a valid record that only fills the space.
    pub const FILLER: u16 = 1 << 9;
    /// Op record: a check-back of the transaction of `ref_position` reached
    /// a live producer (recovery counts them).
    pub const CHECKED: u16 = 1 << 10;
    /// With `ROLLBACK`: the broker rolled the transaction back after its
    /// check-backs ran out.
    pub const DISCARDED: u16 = 1 << 11;
}

/// Whether a record with `flags` holds a producer's message (an ordinary,
/// half or delayed one), not an op record, a marker or repair's bytes: what
/// an op record may point at.
pub fn holds_message(record_flags: u16) -> bool {
    let not_messages = flags::INTERNAL | flags::BATCH | flags::TOMBSTONE | flags::FILLER;
    record_flags & not_messages == 0
}

/// What the broker assigns to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub length: u32,
    pub flags: u16,
    pub queue_id: u32,
    pub tag_hash: u32,
    pub queue_offset: u64,
    pub store_timestamp_us: u64,
    pub ref_position: u64,
    pub ref_size: u32,
    /// On an op record that delivers a retried message: how many times the
    /// message was delivered before. Zero on every other record.
    pub reconsume_times: u32,
}

/// What a header at some position turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A record whose CRC matched.
    Valid(RecordHeader),
    /// All zeros: no record was ever written here.
    Zero,
    /// Anything else, with why.
    Invalid(&'static str),
}

/// Bytes a record of `length` occupies in the log.
pub fn padded_size(length: usize) -> usize {
    length.div_ceil(RECORD_ALIGNMENT_BYTES) * RECORD_ALIGNMENT_BYTES
}

impl RecordHeader {
    pub fn message_length(&self) -> usize {
        self.length as usize - RECORD_HEADER_SIZE_BYTES
    }

    pub fn padded_size(&self) -> usize {
        padded_size(self.length as usize)
    }

    /// Whether the record holds a queue offset (a batch marker's offset
    /// field holds its own position).
    pub fn is_indexed(&self) -> bool {
        self.queue_offset != NO_QUEUE_OFFSET && self.flags & flags::BATCH == 0
    }

    /// Why a valid record cannot lie at log `position`: a batch marker
    /// written for another place, or one vouching for data past itself. Both
    /// are what a block written to the wrong place (a misdirected write)
    /// leaves; no write of this log makes them.
    pub fn misplaced_at(&self, position: u64) -> Option<&'static str> {
        if self.flags & flags::BATCH == 0 {
            return None;
        }
        if self.queue_offset != position {
            return Some("a batch marker written for another position (a misdirected block)");
        }
        (self.ref_position > position).then_some("a batch marker vouching for data after itself")
    }

    pub fn is_tombstone(&self) -> bool {
        self.flags & flags::TOMBSTONE != 0
    }

    /// The shape of the write a batch marker starts, if this is one.
    pub fn batch_write_shape(&self) -> Option<WriteShape> {
        let shape = WriteShape { length_bytes: self.tag_hash, zero_sectors: self.ref_size, gap_bytes: self.queue_id };
        (self.flags & flags::BATCH != 0).then_some(shape)
    }

    /// The durable position a batch marker vouches for, if this is one.
    pub fn batch_durable_position(&self) -> Option<u64> {
        (self.flags & flags::BATCH != 0).then_some(self.ref_position)
    }
}

/// A record of `length` bytes whose message is zeros, as repair writes
/// them: a tombstone for a lost queue offset, or a filler.
pub fn encode_placeholder(
    destination: &mut [u8],
    flags: u16,
    queue_id: u32,
    queue_offset: u64,
    store_timestamp_us: u64,
) {
    let length = destination.len();
    debug_assert!(length >= RECORD_HEADER_SIZE_BYTES && length % RECORD_ALIGNMENT_BYTES == 0);
    let header = RecordHeader {
        length: length as u32,
        flags: flags | flags::INTERNAL,
        queue_id,
        tag_hash: 0,
        queue_offset,
        store_timestamp_us,
        ref_position: NO_POSITION,
        ref_size: 0,
        reconsume_times: 0,
    };
    destination.fill(0);
    let zeros = vec![0; length - RECORD_HEADER_SIZE_BYTES];
    encode(destination, &header, &zeros);
}

/// Bytes of a batch marker in the log (a header without a message).
pub const BATCH_MARKER_SIZE_BYTES: usize = RECORD_HEADER_SIZE_BYTES;

/// Granularity of a torn write: a device writes a 512-byte sector whole or
/// not at all (4Kn devices write 4 KiB atomically, which is coarser).
pub const SECTOR_SIZE_BYTES: usize = 512;

static ZERO_SECTOR: [u8; SECTOR_SIZE_BYTES] = [0; SECTOR_SIZE_BYTES];

/// Whether `bytes` (at most a sector) are all zero. Slice equality compiles
/// to memcmp, fast even in a debug build.
pub fn is_zero_sector(bytes: &[u8]) -> bool {
    bytes == &ZERO_SECTOR[..bytes.len()]
}

/// All-zero sectors in `bytes`.
pub fn zero_sector_count(bytes: &[u8]) -> u32 {
    bytes.chunks(SECTOR_SIZE_BYTES).filter(|sector| is_zero_sector(sector)).count() as u32
}

/// The shape of one write as its batch marker records it: a torn write has
/// more all-zero sectors than it was written with; a bit flip does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteShape {
    pub length_bytes: u32,
    pub zero_sectors: u32,
    /// Zero padding between the data before this write (in the same
    /// segment) and its start: zeros there are padding, not lost sectors.
    pub gap_bytes: u32,
}

/// Where a write starts: the log position of its batch marker and the
/// durable position when it began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteStart {
    pub position: u64,
    pub durable_position: u64,
}

/// Writes the batch marker that starts a write into `destination` (exactly
/// `BATCH_MARKER_SIZE_BYTES`): it lies at `start.position`, everything before
/// `start.durable_position` was durable when the write began, and the write
/// has `shape`.
pub fn encode_batch_marker(destination: &mut [u8], start: WriteStart, store_timestamp_us: u64, shape: WriteShape) {
    debug_assert!(start.durable_position <= start.position, "a write vouches only for what lies before it");
    let header = RecordHeader {
        length: BATCH_MARKER_SIZE_BYTES as u32,
        flags: flags::BATCH | flags::INTERNAL,
        queue_id: shape.gap_bytes,
        tag_hash: shape.length_bytes,
        // Its own position: a copy of the block at another place (a
        // misdirected write) is told from the real marker.
        queue_offset: start.position,
        store_timestamp_us,
        ref_position: start.durable_position,
        ref_size: shape.zero_sectors,
        reconsume_times: 0,
    };
    encode(destination, &header, &[]);
}

/// Stamps the batch marker at the start of `write` (the whole write, padded
/// to blocks, its first `BATCH_MARKER_SIZE_BYTES` reserved), its shape read
/// off the write itself: its length and its all-zero sectors after the
/// marker's own, which is never zero.
pub fn stamp_batch_marker(write: &mut [u8], start: WriteStart, gap_bytes: u32, store_timestamp_us: u64) {
    debug_assert!(write.len() >= SECTOR_SIZE_BYTES && write.len() % SECTOR_SIZE_BYTES == 0);
    let zero_sectors = zero_sector_count(&write[SECTOR_SIZE_BYTES..]);
    let shape = WriteShape { length_bytes: write.len() as u32, zero_sectors, gap_bytes };
    encode_batch_marker(&mut write[..BATCH_MARKER_SIZE_BYTES], start, store_timestamp_us, shape);
}

/// Writes header, message and zero padding into `destination` (exactly
/// `padded_size` bytes, whatever it held before) and returns the CRC written.
pub fn encode(destination: &mut [u8], header: &RecordHeader, message: &[u8]) -> u32 {
    let length = header.length as usize;
    debug_assert_eq!(length, RECORD_HEADER_SIZE_BYTES + message.len());
    debug_assert_eq!(destination.len(), padded_size(length));
    destination[4..8].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    destination[8..12].copy_from_slice(&header.length.to_le_bytes());
    destination[12..14].copy_from_slice(&header.flags.to_le_bytes());
    destination[14..16].copy_from_slice(&RECORD_VERSION.to_le_bytes());
    destination[16..20].copy_from_slice(&header.queue_id.to_le_bytes());
    destination[20..24].copy_from_slice(&header.tag_hash.to_le_bytes());
    destination[24..32].copy_from_slice(&header.queue_offset.to_le_bytes());
    destination[32..40].copy_from_slice(&header.store_timestamp_us.to_le_bytes());
    destination[40..48].copy_from_slice(&header.ref_position.to_le_bytes());
    destination[48..52].copy_from_slice(&header.ref_size.to_le_bytes());
    destination[52..56].copy_from_slice(&header.reconsume_times.to_le_bytes());
    destination[RECORD_HEADER_SIZE_BYTES..length].copy_from_slice(message);
    destination[length..].fill(0);
    let crc = crc32fast::hash(&destination[4..length]);
    destination[0..4].copy_from_slice(&crc.to_le_bytes());
    // Pair assertion: what goes to the disk decodes to what was meant.
    debug_assert_eq!(decode(&destination[..length]), Decoded::Valid(*header));
    crc
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Reads the length field of a header without trusting it. `None` when the
/// bytes are too short or the magic is wrong.
pub fn claimed_length(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < RECORD_HEADER_SIZE_BYTES || u32_at(bytes, 4) != RECORD_MAGIC {
        return None;
    }
    Some(u32_at(bytes, 8) as usize)
}

/// Whether a claimed record length could be real with `remaining` bytes
/// left in the segment: never trust a length enough to read a gigabyte.
pub fn plausible_length(length: usize, remaining: u64) -> bool {
    (RECORD_HEADER_SIZE_BYTES..=RECORD_SIZE_BYTES_MAX).contains(&length) && length as u64 <= remaining
}

/// The queue and queue offset a header claims, without trusting it (no
/// CRC check): what repair can salvage of a damaged record.
pub fn claimed_queue_offset(bytes: &[u8]) -> Option<(u32, u64)> {
    claimed_length(bytes)?;
    Some((u32_at(bytes, 16), u64_at(bytes, 24)))
}

/// Decodes the record at the start of `bytes`, which must hold the whole
/// record (`claimed_length` tells how much that is) to be `Valid`.
pub fn decode(bytes: &[u8]) -> Decoded {
    if bytes.len() < RECORD_HEADER_SIZE_BYTES {
        return Decoded::Invalid("shorter than a header");
    }
    if bytes[..RECORD_HEADER_SIZE_BYTES].iter().all(|byte| *byte == 0) {
        return Decoded::Zero;
    }
    let Some(length) = claimed_length(bytes) else {
        return Decoded::Invalid("bad magic");
    };
    if length < RECORD_HEADER_SIZE_BYTES || length > bytes.len() {
        return Decoded::Invalid("length out of range");
    }
    if u16_at(bytes, 14) != RECORD_VERSION {
        return Decoded::Invalid("unknown record version");
    }
    if u32_at(bytes, 0) != crc32fast::hash(&bytes[4..length]) {
        return Decoded::Invalid("crc mismatch");
    }
    Decoded::Valid(RecordHeader {
        length: length as u32,
        flags: u16_at(bytes, 12),
        queue_id: u32_at(bytes, 16),
        tag_hash: u32_at(bytes, 20),
        queue_offset: u64_at(bytes, 24),
        store_timestamp_us: u64_at(bytes, 32),
        ref_position: u64_at(bytes, 40),
        ref_size: u32_at(bytes, 48),
        reconsume_times: u32_at(bytes, 52),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(message: &[u8]) -> (RecordHeader, Vec<u8>) {
        let header = RecordHeader {
            length: (RECORD_HEADER_SIZE_BYTES + message.len()) as u32,
            flags: flags::HALF,
            queue_id: 7,
            tag_hash: 99,
            queue_offset: 42,
            store_timestamp_us: 1_700_000_000_000_000,
            ref_position: NO_POSITION,
            ref_size: 0,
            reconsume_times: 3,
        };
        let mut bytes = vec![0; padded_size(header.length as usize)];
        encode(&mut bytes, &header, message);
        (header, bytes)
    }

    #[test]
    fn a_record_round_trips_and_is_padded_to_eight_bytes() {
        let (header, bytes) = sample(b"hello");
        assert_eq!(bytes.len() % RECORD_ALIGNMENT_BYTES, 0);
        assert_eq!(decode(&bytes), Decoded::Valid(header));
        assert_eq!(&bytes[RECORD_HEADER_SIZE_BYTES..RECORD_HEADER_SIZE_BYTES + 5], b"hello");
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let (_, bytes) = sample(b"some message body");
        let length = claimed_length(&bytes).unwrap();
        for byte in 0..length {
            for bit in 0..8 {
                let mut corrupt = bytes.clone();
                corrupt[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode(&corrupt), Decoded::Valid(_)),
                    "flip of bit {bit} of byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn zeros_are_the_end_and_a_truncated_record_is_invalid() {
        assert_eq!(decode(&[0; RECORD_HEADER_SIZE_BYTES]), Decoded::Zero);
        let (_, bytes) = sample(b"a message that will be cut");
        assert_eq!(decode(&bytes[..RECORD_HEADER_SIZE_BYTES + 3]), Decoded::Invalid("length out of range"));
    }
}
