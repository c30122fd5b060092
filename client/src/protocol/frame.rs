//! Length-prefixed frames.

use crate::wire::Finished;
use bytes::{Buf, Bytes, BytesMut};

/// `u32 length`.
pub const FRAME_PREFIX_BYTES: usize = 4;
/// `u32 length | u16 kind | u32 request id`.
pub const FRAME_HEADER_BYTES: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u16,
    pub request_id: u32,
    pub body: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {length} is below the {minimum}-byte minimum")]
    TooShort { length: usize, minimum: usize },
    #[error("frame body of {length} bytes exceeds the maximum of {max} bytes")]
    TooLarge { length: usize, max: usize },
}

/// The header of a frame whose body is `body_length` bytes.
pub fn frame_header(kind: u16, request_id: u32, body_length: usize) -> [u8; FRAME_HEADER_BYTES] {
    let length = (FRAME_HEADER_BYTES - FRAME_PREFIX_BYTES + body_length) as u32;
    let mut header = [0; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&length.to_le_bytes());
    header[4..6].copy_from_slice(&kind.to_le_bytes());
    header[6..10].copy_from_slice(&request_id.to_le_bytes());
    header
}

/// A whole frame in a buffer that may hold other bytes before it: a body
/// built with room in front becomes a frame in place (`in_place`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireFrame {
    buffer: Vec<u8>,
    start: usize,
}

impl WireFrame {
    pub fn encoded(kind: u16, request_id: u32, body: &[u8]) -> Self {
        Self { buffer: encode_frame(kind, request_id, body), start: 0 }
    }

    /// The frame of `body`, its header written in the room in front of it
    /// instead of the body copied after one (a megabyte per large produce
    /// request); copied only when there is no room.
    pub fn in_place(body: Finished, kind: u16, request_id: u32) -> Self {
        let (mut buffer, start) = body.into_parts();
        let Some(header_start) = start.checked_sub(FRAME_HEADER_BYTES) else {
            return Self::encoded(kind, request_id, &buffer[start..]);
        };
        let header = frame_header(kind, request_id, buffer.len() - start);
        buffer[header_start..start].copy_from_slice(&header);
        Self { buffer, start: header_start }
    }

    /// The frame: header and body.
    pub fn bytes(&self) -> &[u8] {
        &self.buffer[self.start..]
    }
}

pub fn encode_frame(kind: u16, request_id: u32, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    frame.extend_from_slice(&frame_header(kind, request_id, body.len()));
    frame.extend_from_slice(body);
    frame
}

/// Takes one whole frame off the front of `buffer`, if it holds one. A bad
/// length is an error as soon as the prefix arrives: nothing is buffered for
/// a frame that will be refused. Nothing is reserved for the length a frame
/// claims: the reader grows the buffer with what arrives (`read_room`).
pub fn decode_frame(buffer: &mut BytesMut, body_bytes_max: usize) -> Result<Option<Frame>, FrameError> {
    if buffer.len() < FRAME_PREFIX_BYTES {
        return Ok(None);
    }
    let length = u32::from_le_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
    let minimum = FRAME_HEADER_BYTES - FRAME_PREFIX_BYTES;
    if length < minimum {
        return Err(FrameError::TooShort { length, minimum });
    }
    let body_length = length - minimum;
    if body_length > body_bytes_max {
        return Err(FrameError::TooLarge { length: body_length, max: body_bytes_max });
    }
    if buffer.len() < FRAME_PREFIX_BYTES + length {
        return Ok(None);
    }
    buffer.advance(FRAME_PREFIX_BYTES);
    let kind = buffer.get_u16_le();
    let request_id = buffer.get_u32_le();
    let body = buffer.split_to(body_length).freeze();
    Ok(Some(Frame { kind, request_id, body }))
}

/// Bytes still missing from the frame at the front of `buffer`; `None` until
/// its length prefix has arrived.
pub fn frame_bytes_missing(buffer: &[u8]) -> Option<usize> {
    let prefix: [u8; FRAME_PREFIX_BYTES] = buffer.get(..FRAME_PREFIX_BYTES)?.try_into().ok()?;
    let whole = FRAME_PREFIX_BYTES + u32::from_le_bytes(prefix) as usize;
    Some(whole.saturating_sub(buffer.len()))
}

/// Makes room in `buffer` for the next read and returns how many bytes that
/// read may fill. The buffer grows with what has arrived, never with what a
/// frame claims: by `step_bytes_min` before a length is known, then by the
/// missing bytes but at most by what the buffer already holds (or
/// `read_bytes_max`), so it stays within twice the bytes received plus one
/// step; a read fills at most `read_bytes_max`.
///
/// `step_bytes_min` is the least a growth adds: a first read's worth, or
/// while the peer streams (its last read filled all the room it had) a
/// whole read's worth, so a stream of small frames is read 64 KiB at a
/// time rather than a few frames a read.
///
/// `proven_frame_bytes` is the largest whole frame the peer has already
/// sent: a frame no larger gets all its missing room at once, since the
/// peer has shown it sends that much. A client sending 1 MiB requests then
/// costs one allocation per request, not a doubling series that copies the
/// frame's bytes about twice over.
pub fn read_room(
    buffer: &mut BytesMut,
    step_bytes_min: usize,
    read_bytes_max: usize,
    proven_frame_bytes: usize,
) -> usize {
    debug_assert!(step_bytes_min <= read_bytes_max);
    // Only a full buffer grows: a stalled frame's beginning holds no step
    // beyond the one it arrived in.
    if buffer.capacity() == buffer.len() {
        let step = match frame_bytes_missing(buffer) {
            None => step_bytes_min,
            Some(missing) if buffer.len() + missing <= proven_frame_bytes => missing.max(step_bytes_min),
            Some(missing) => missing.min(read_bytes_max.max(buffer.len())).max(step_bytes_min),
        };
        buffer.reserve(step);
    }
    (buffer.capacity() - buffer.len()).min(read_bytes_max)
}

/// After a large frame, gives back the capacity past `retained_bytes_max`:
/// what is left (part of the next frame, if any) moves to a buffer of its
/// own size. Room the frame at the front still needs is not excess when
/// that frame is no larger than `proven_frame_bytes` (see `read_room`).
pub fn release_excess(buffer: &mut BytesMut, retained_bytes_max: usize, proven_frame_bytes: usize) {
    let front_frame = frame_bytes_missing(buffer).map_or(0, |missing| buffer.len() + missing);
    let needed = if front_frame <= proven_frame_bytes { front_frame } else { 0 };
    if buffer.capacity() > retained_bytes_max.max(needed) && buffer.len() <= retained_bytes_max {
        *buffer = BytesMut::from(&buffer[..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body built with room in front becomes the same frame as one
    /// encoded by copying; without room it is copied.
    #[test]
    fn a_request_body_becomes_its_frame_in_place_or_by_a_copy() {
        let body = b"flatbuffer bytes".to_vec();
        let mut roomy = vec![0xEE; 32];
        roomy.extend_from_slice(&body);
        let frame = WireFrame::in_place(Finished::new(roomy, 32), 5, 77);
        assert_eq!(frame.bytes(), &encode_frame(5, 77, &body)[..]);
        let mut tight = vec![0xEE; 3];
        tight.extend_from_slice(&body);
        let tight = Finished::new(tight, 3);
        assert_eq!(&tight[..], &body[..]);
        assert_eq!(WireFrame::in_place(tight, 5, 77).bytes(), &encode_frame(5, 77, &body)[..]);
    }

    #[test]
    fn a_produce_request_leaves_room_for_its_frame_header() {
        let messages: Vec<Vec<u8>> = (0..1000).map(|index| vec![index as u8; 1024]).collect();
        let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let body = crate::protocol::produce_request("orders", 3, &slices, false);
        let copied = encode_frame(7, 9, &body);
        let frame = WireFrame::in_place(body, 7, 9);
        assert_eq!(frame.bytes(), &copied[..]);
        assert_ne!(frame.start, 0, "the builder's estimate left room: no copy");
    }

    #[test]
    fn frames_round_trip_even_when_they_arrive_byte_by_byte() {
        let mut wire = encode_frame(5, 77, b"hello");
        wire.extend(encode_frame(7, 78, b""));
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire {
            buffer.extend_from_slice(&[byte]);
            while let Some(frame) = decode_frame(&mut buffer, 1024).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].kind, frames[0].request_id, &frames[0].body[..]), (5, 77, &b"hello"[..]));
        assert_eq!((frames[1].kind, frames[1].request_id, frames[1].body.len()), (7, 78, 0));
    }

    #[test]
    fn a_bad_length_is_refused_from_the_prefix_alone() {
        let mut buffer = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(matches!(decode_frame(&mut buffer, 1024), Err(FrameError::TooLarge { .. })));
        let mut buffer = BytesMut::from(&3u32.to_le_bytes()[..]);
        assert!(matches!(decode_frame(&mut buffer, 1024), Err(FrameError::TooShort { .. })));
    }

    #[test]
    fn a_length_prefix_alone_reserves_nothing_for_the_frame_it_claims() {
        let mut header = frame_header(5, 1, 4 * 1024 * 1024).to_vec();
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&header[..FRAME_PREFIX_BYTES]);
        assert_eq!(decode_frame(&mut buffer, 8 << 20), Ok(None));
        assert!(buffer.capacity() < 64 * 1024, "capacity {} for 4 bytes received", buffer.capacity());
        // The buffer grows with what arrives, in bounded steps.
        header.drain(..FRAME_PREFIX_BYTES);
        buffer.extend_from_slice(&header);
        let mut received = buffer.len();
        for _ in 0..40 {
            let room = read_room(&mut buffer, 4096, 64 * 1024, 0);
            assert!(room > 0 && room <= 64 * 1024);
            let arrived = room.min(10_000);
            buffer.extend_from_slice(&vec![7; arrived]);
            received += arrived;
            assert_eq!(decode_frame(&mut buffer, 8 << 20), Ok(None));
            assert!(
                buffer.capacity() <= 2 * received + 64 * 1024 + 4096,
                "capacity {} after {received} bytes",
                buffer.capacity()
            );
        }
        assert!(buffer.capacity() < 1 << 20);
    }

    #[test]
    fn the_buffer_shrinks_back_after_a_large_frame() {
        let mut wire = encode_frame(5, 1, &vec![1; 3 << 20]);
        wire.extend(encode_frame(6, 2, b"next"));
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        let mut offset = 0;
        while offset < wire.len() {
            let room = read_room(&mut buffer, 4096, 64 * 1024, 0);
            let end = (offset + room).min(wire.len() - 3);
            let end = if end == offset { wire.len() } else { end };
            buffer.extend_from_slice(&wire[offset..end]);
            offset = end;
            while let Some(frame) = decode_frame(&mut buffer, 8 << 20).expect("good frames") {
                frames.push(frame);
            }
            release_excess(&mut buffer, 128 * 1024, 0);
            assert!(buffer.capacity() <= 2 * offset + 128 * 1024);
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].body.len(), 3 << 20);
        assert_eq!(&frames[1].body[..], b"next");
        assert!(buffer.capacity() <= 128 * 1024, "{} bytes kept after the large frame", buffer.capacity());
    }
}
