//! The frame decoder as a connection drives it (`server::connection`):
//! arbitrary bytes arriving in arbitrary reads into the buffer `read_room`
//! grows and `release_excess` shrinks, decoded after every read. Checked
//! against a plain reading of the whole stream: the same frames, the same
//! refusal at the same frame, and a buffer (and every allocation) within
//! twice what arrived plus one read step, or room for a frame no larger
//! than one that already arrived whole.
//!
//! Input: `flags | seed: u64 | stream`. `flags` picks the body limit (bits
//! 0-1), how reads are cut (bits 2-3) and whether filler completes the last
//! frame the stream claims (bit 4), so a few bytes can make a large frame.

use super::{within, ALLOCATION_SLACK_BYTES};
use crate::constants::{
    CONNECTION_BUFFER_RETAINED_BYTES, CONNECTION_READ_BYTES_MAX, CONNECTION_READ_FIRST_BYTES, FRAME_BODY_BYTES_MAX,
    INCOMPLETE_FRAME_BYTES_MAX,
};
use crate::protocol::{
    decode_frame, read_room, release_excess, Frame, FrameError, FRAME_HEADER_BYTES, FRAME_PREFIX_BYTES,
};
use bytes::BytesMut;

/// Stream bytes taken from the input; the rest is ignored.
const LITERAL_BYTES_MAX: usize = 64 * 1024;
/// Reads of one to a few bytes each, at most: then reads fill their room.
/// Each read zeroes its whole room first (as the connection does), so a
/// large frame in tiny reads would cost seconds an input.
const SMALL_READS_MAX: usize = 256;

pub fn frame(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let (seed, literal) = match rest.split_first_chunk::<8>() {
        Some((seed, literal)) => (u64::from_le_bytes(*seed), literal),
        None => (0, rest),
    };
    let literal = &literal[..literal.len().min(LITERAL_BYTES_MAX)];
    let body_max = match flags & 3 {
        0 => FRAME_BODY_BYTES_MAX,
        1 => (seed % 4096) as usize,
        2 => 64 * 1024,
        _ => 1 << 20,
    };
    let mut stream = literal.to_vec();
    if flags & 16 != 0 {
        stream.resize(stream.len() + filler(&stream, body_max), (seed >> 56) as u8);
    }
    let reads = Reads { style: (flags >> 2) & 3, rng: fastrand::Rng::with_seed(seed), count: 0 };
    // What arrives is all a connection's buffer may grow with: twice that
    // plus one read step (`read_room`), and never past what one frame may
    // make a buffer hold.
    let by_arrival = 2 * stream.len() + CONNECTION_READ_BYTES_MAX + CONNECTION_READ_FIRST_BYTES;
    let by_frame = INCOMPLETE_FRAME_BYTES_MAX + ALLOCATION_SLACK_BYTES;
    let body_max_bound = if body_max == FRAME_BODY_BYTES_MAX { by_frame } else { usize::MAX };
    within(by_arrival.min(body_max_bound), "frame decoding", || connection(&stream, body_max, reads));
}

/// Bytes missing from the frame the stream ends in, if the decoder would
/// take a frame of that length.
fn filler(stream: &[u8], body_max: usize) -> usize {
    let mut at = 0;
    loop {
        match reference(&stream[at..], body_max) {
            Next::Frame { length } => at += length,
            Next::Incomplete { missing } => return missing.min(body_max + FRAME_HEADER_BYTES),
            Next::Refused(_) => return 0,
        }
    }
}

/// How the peer's bytes are cut into reads.
struct Reads {
    style: u8,
    rng: fastrand::Rng,
    count: usize,
}

impl Reads {
    /// Bytes the next read delivers, 1 to `room`.
    fn next(&mut self, room: usize) -> usize {
        self.count += 1;
        let small = self.count <= SMALL_READS_MAX;
        match self.style {
            0 if small => 1,
            2 => self.rng.usize(1..=room),
            3 if small => self.rng.usize(1..=room.min(16)),
            _ => room,
        }
    }
}

/// The read loop of `server::connection::read_requests`, fed from `stream`.
fn connection(stream: &[u8], body_max: usize, mut reads: Reads) {
    let mut buffer = BytesMut::new();
    let (mut arrived, mut expected_at, mut proven, mut streaming) = (0, 0, 0, false);
    loop {
        loop {
            let decoded = decode_frame(&mut buffer, body_max);
            let expected = reference(&stream[expected_at..arrived], body_max);
            match (decoded, expected) {
                (Ok(Some(frame)), Next::Frame { length }) => {
                    assert_same_frame(&frame, &stream[expected_at..expected_at + length]);
                    expected_at += length;
                    proven = proven.max(length);
                }
                (Ok(None), Next::Incomplete { .. }) => break,
                (Err(error), Next::Refused(expected)) => {
                    assert_eq!(error, expected, "refused for another reason");
                    assert!(!error.to_string().is_empty());
                    return;
                }
                (decoded, expected) => panic!("decoded {decoded:?} where the stream holds {expected:?}"),
            }
        }
        release_excess(&mut buffer, CONNECTION_BUFFER_RETAINED_BYTES, proven);
        assert_eq!(buffer.len(), arrived - expected_at, "buffered bytes are the incomplete frame's");
        let grown_max = CONNECTION_BUFFER_RETAINED_BYTES.max(grown_capacity_max(buffer.len(), proven));
        assert!(buffer.capacity() <= grown_max, "capacity {} holding {} bytes", buffer.capacity(), buffer.len());
        if arrived == stream.len() {
            // The peer closes: what is left is the start of a frame.
            return;
        }
        let held = buffer.len();
        // As `FrameDecoder`: a whole read's step while the last read filled its room.
        let step_min = if streaming { CONNECTION_READ_BYTES_MAX } else { CONNECTION_READ_FIRST_BYTES };
        let room = read_room(&mut buffer, step_min, CONNECTION_READ_BYTES_MAX, proven);
        assert!((1..=CONNECTION_READ_BYTES_MAX).contains(&room), "a read room of {room} bytes");
        assert!(buffer.capacity() <= grown_capacity_max(held, proven).max(CONNECTION_BUFFER_RETAINED_BYTES));
        let delivered = reads.next(room).min(stream.len() - arrived);
        // As the connection reads: into zeroed room, then cut to what came.
        buffer.resize(held + room, 0);
        buffer[held..held + delivered].copy_from_slice(&stream[arrived..arrived + delivered]);
        buffer.truncate(held + delivered);
        arrived += delivered;
        if room >= CONNECTION_READ_FIRST_BYTES {
            streaming = delivered == room;
        }
    }
}

/// The most a buffer holding `held` bytes may have after one growth step:
/// doubled, or grown by one step, or room for a frame as large as the
/// largest one the peer already sent (`proven` bytes).
fn grown_capacity_max(held: usize, proven: usize) -> usize {
    (2 * held + CONNECTION_READ_BYTES_MAX + CONNECTION_READ_FIRST_BYTES).max(proven + CONNECTION_READ_FIRST_BYTES)
}

fn assert_same_frame(frame: &Frame, bytes: &[u8]) {
    let kind = u16::from_le_bytes([bytes[4], bytes[5]]);
    let request_id = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
    assert_eq!((frame.kind, frame.request_id), (kind, request_id), "frame header");
    assert!(frame.body[..] == bytes[FRAME_HEADER_BYTES..], "frame body differs from the bytes sent");
}

/// The stream read plainly: what the frame at its front is.
#[derive(Debug)]
enum Next {
    Frame { length: usize },
    Incomplete { missing: usize },
    Refused(FrameError),
}

fn reference(bytes: &[u8], body_max: usize) -> Next {
    let Some(prefix) = bytes.first_chunk::<FRAME_PREFIX_BYTES>() else {
        return Next::Incomplete { missing: FRAME_HEADER_BYTES - bytes.len() };
    };
    let length = u32::from_le_bytes(*prefix) as usize;
    let minimum = FRAME_HEADER_BYTES - FRAME_PREFIX_BYTES;
    if length < minimum {
        return Next::Refused(FrameError::TooShort { length, minimum });
    }
    if length - minimum > body_max {
        return Next::Refused(FrameError::TooLarge { length: length - minimum, max: body_max });
    }
    match bytes.len() >= FRAME_PREFIX_BYTES + length {
        true => Next::Frame { length: FRAME_PREFIX_BYTES + length },
        false => Next::Incomplete { missing: FRAME_PREFIX_BYTES + length - bytes.len() },
    }
}
