//! Length-prefixed frames.

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

pub fn encode_frame(kind: u16, request_id: u32, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    frame.extend_from_slice(&frame_header(kind, request_id, body.len()));
    frame.extend_from_slice(body);
    frame
}

/// Takes one whole frame off the front of `buffer`, if it holds one. A bad
/// length is an error as soon as the prefix arrives: nothing is buffered for
/// a frame that will be refused.
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
        buffer.reserve(FRAME_PREFIX_BYTES + length - buffer.len());
        return Ok(None);
    }
    buffer.advance(FRAME_PREFIX_BYTES);
    let kind = buffer.get_u16_le();
    let request_id = buffer.get_u32_le();
    let body = buffer.split_to(body_length).freeze();
    Ok(Some(Frame { kind, request_id, body }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
