//! The framing as a sans-IO codec: bytes in, frames out, and frames in,
//! bytes out. Every end of a connection (the broker's, the blocking
//! client's reader thread, the async client) reads through one
//! `FrameDecoder` and writes through `encode_frame` or a `FrameBatch`;
//! only the I/O around them differs (`crate::framed`).

use super::frame::{
    decode_frame, frame_header, read_room, release_excess, Frame, FrameError, WireFrame, FRAME_HEADER_BYTES,
};
use crate::constants::{
    CONNECTION_BUFFER_RETAINED_BYTES, CONNECTION_READ_BYTES_MAX, CONNECTION_READ_FIRST_BYTES, FRAME_BODY_BYTES_MAX,
};
use bytes::BytesMut;

/// Frames waiting for a writer are coalesced into one write up to about
/// this many bytes: fewer system calls, and no single write so large that
/// its timeout means little.
pub const WRITE_COALESCE_BYTES: usize = 1 << 20;

/// A frame body at least this large is not copied into a batch: it is
/// written from where it lies, right after the batch that holds its header.
pub const WRITE_IN_PLACE_BYTES: usize = 64 * 1024;

/// How a decoder's buffer may grow and what it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderLimits {
    /// A frame claiming a larger body is refused from its length prefix.
    pub body_bytes_max: usize,
    /// Room for a read before any length is known.
    pub first_read_bytes: usize,
    /// One read fills at most this much.
    pub read_bytes_max: usize,
    /// Capacity kept after a large frame has gone.
    pub retained_bytes_max: usize,
}

impl DecoderLimits {
    /// The broker's limits for a client's requests, with bodies up to
    /// `body_bytes_max` (the broker's `frame_body_bytes_max`).
    pub fn requests(body_bytes_max: usize) -> Self {
        Self {
            body_bytes_max,
            first_read_bytes: CONNECTION_READ_FIRST_BYTES,
            read_bytes_max: CONNECTION_READ_BYTES_MAX,
            retained_bytes_max: CONNECTION_BUFFER_RETAINED_BYTES,
        }
    }

    /// A client's limits for the broker's frames: an answer carries up to a
    /// frame body's worth of stored records plus their headers, hence twice
    /// the request limit.
    pub fn answers() -> Self {
        Self::requests(FRAME_BODY_BYTES_MAX * 2)
    }
}

/// Bytes in, whole frames out. The buffer grows with what arrives, never
/// with the length a frame claims beyond the largest frame the peer has
/// already sent (`read_room`; not at all while frugal), and gives back what
/// a large frame took once it is gone (`release_excess`), so it stays
/// within twice the bytes received plus one read step, or room for a frame
/// no larger than one the peer already sent whole.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    limits: DecoderLimits,
    /// Bytes at the end of `buffer` handed out by `room` and not yet
    /// `filled`: never frame bytes.
    unfilled: usize,
    /// Bytes of `buffer`'s spare capacity (past its length) that an earlier
    /// `room` initialised: the next `room` zeroes only what lies beyond
    /// them, so a read's room is zeroed once per allocation, not per read.
    spare_initialised: usize,
    /// The largest whole frame decoded so far (`read_room`).
    proven_frame_bytes: usize,
    /// The last read given at least a first read's room filled it: the
    /// peer streams, and the next growth is a whole read's worth
    /// (`read_room`).
    streaming: bool,
    /// Grow by the strict rule only (`set_frugal`).
    frugal: bool,
}

/// The stream ended in the middle of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the peer closed in the middle of a frame ({buffered} bytes buffered)")]
pub struct Truncated {
    pub buffered: usize,
}

impl FrameDecoder {
    pub fn new(limits: DecoderLimits) -> Self {
        Self {
            buffer: BytesMut::new(),
            limits,
            unfilled: 0,
            spare_initialised: 0,
            proven_frame_bytes: 0,
            streaming: false,
            frugal: false,
        }
    }

    /// Takes the next whole frame, if the bytes so far hold one. A bad
    /// length is an error as soon as its prefix is in: the framing is lost.
    /// When no whole frame is left, capacity past the retained bound goes
    /// back.
    pub fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        self.filled(0);
        // Taking a frame off the front leaves the spare capacity as it was.
        let frame = decode_frame(&mut self.buffer, self.limits.body_bytes_max)?;
        match &frame {
            Some(frame) => {
                self.proven_frame_bytes = self.proven_frame_bytes.max(FRAME_HEADER_BYTES + frame.body.len());
            }
            None => {
                let proven = self.proven();
                self.reallocating(|buffer, limits| release_excess(buffer, limits.retained_bytes_max, proven));
            }
        }
        Ok(frame)
    }

    /// Runs `change`, which may move the buffer's bytes or reallocate it;
    /// then nothing of the spare capacity is known to be initialised.
    fn reallocating<T>(&mut self, change: impl FnOnce(&mut BytesMut, &DecoderLimits) -> T) -> T {
        let before = (self.buffer.as_ptr(), self.buffer.capacity());
        let result = change(&mut self.buffer, &self.limits);
        if (self.buffer.as_ptr(), self.buffer.capacity()) != before {
            self.spare_initialised = 0;
        }
        result
    }

    fn read_room(&mut self) -> usize {
        let proven = self.proven();
        let whole_reads = self.streaming && !self.frugal;
        let step_min = if whole_reads { self.limits.read_bytes_max } else { self.limits.first_read_bytes };
        self.reallocating(|buffer, limits| read_room(buffer, step_min, limits.read_bytes_max, proven))
    }

    /// Grows the buffer for the next read, by the rules above, and returns
    /// its capacity (what a budget for incomplete frames charges).
    pub fn reserve_read(&mut self) -> usize {
        self.filled(0);
        self.read_room();
        self.buffer.capacity()
    }

    /// Where the next read goes (grown as `reserve_read` does); tell
    /// `filled` how much of it the read filled.
    pub fn room(&mut self) -> &mut [u8] {
        self.filled(0);
        let room = self.read_room();
        let start = self.buffer.len();
        let spare = &mut self.buffer.spare_capacity_mut()[..room];
        if let Some(fresh) = spare.get_mut(self.spare_initialised..) {
            fresh.fill(std::mem::MaybeUninit::new(0));
        }
        // SAFETY: `read_room` left at least `room` bytes of spare capacity;
        // the first `spare_initialised` of them were initialised by an
        // earlier `room` in this same allocation (`grow` forgets them when
        // it changes), and the rest were just zeroed above.
        unsafe { self.buffer.set_len(start + room) };
        self.spare_initialised = self.spare_initialised.saturating_sub(room);
        self.unfilled = room;
        &mut self.buffer[start..]
    }

    /// The last `room` got `bytes` (at most its length); the rest of it is
    /// dropped, and stays initialised for the next `room`.
    pub fn filled(&mut self, bytes: usize) {
        let kept = bytes.min(self.unfilled);
        // A room smaller than a first read (what a frame left of an
        // allocation) says nothing either way.
        if self.unfilled >= self.limits.first_read_bytes {
            self.streaming = kept == self.unfilled;
        }
        let end = self.buffer.len() - self.unfilled + kept;
        self.buffer.truncate(end);
        self.spare_initialised += self.unfilled - kept;
        self.unfilled = 0;
    }

    /// The stream ended: clean only between frames.
    pub fn end(&mut self) -> Result<(), Truncated> {
        self.filled(0);
        match self.buffer.len() {
            0 => Ok(()),
            buffered => Err(Truncated { buffered }),
        }
    }

    /// Bytes received and not yet taken as frames.
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.unfilled
    }

    /// Whether growth stays by the strict rule: first-read steps even for a
    /// streaming peer, and no room for a frame's claimed length even when
    /// the peer sent one as large before (a peer could claim it and stall).
    /// A broker shard whose budget for read buffers runs low keeps each
    /// connection's buffer small this way rather than closing connections.
    pub fn set_frugal(&mut self, frugal: bool) {
        self.frugal = frugal;
    }

    /// The largest frame the peer sent whole, as far as it may size the
    /// buffer now (`read_room`, `release_excess`): nothing while frugal.
    fn proven(&self) -> usize {
        if self.frugal {
            0
        } else {
            self.proven_frame_bytes
        }
    }

    /// What the buffer holds allocated now.
    pub fn capacity(&self) -> usize {
        self.buffer.capacity()
    }
}

/// One part of an outgoing frame, as a writer queues it: the header and
/// the body apart, so a body is copied once, into the write.
pub trait OutgoingFrame {
    fn header(&self) -> &[u8];
    fn body(&self) -> &[u8];
}

/// A frame encoded whole (`encode_frame`).
impl OutgoingFrame for Vec<u8> {
    fn header(&self) -> &[u8] {
        &[]
    }

    fn body(&self) -> &[u8] {
        self
    }
}

/// A frame in a buffer of its own: header and body are one slice.
impl OutgoingFrame for WireFrame {
    fn header(&self) -> &[u8] {
        &[]
    }

    fn body(&self) -> &[u8] {
        self.bytes()
    }
}

/// Frames out, bytes in one buffer for one write.
#[derive(Debug, Default)]
pub struct FrameBatch {
    bytes: Vec<u8>,
}

/// Where a frame's body went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Into the batch.
    Copied,
    /// Nowhere yet (`WRITE_IN_PLACE_BYTES` or more): write the batch, then
    /// the frame's body from the frame, before anything else.
    InPlace,
}

impl FrameBatch {
    pub fn push(&mut self, frame: &impl OutgoingFrame) -> Pushed {
        self.bytes.extend_from_slice(frame.header());
        if frame.body().len() >= WRITE_IN_PLACE_BYTES {
            return Pushed::InPlace;
        }
        self.bytes.extend_from_slice(frame.body());
        Pushed::Copied
    }

    /// Encodes a frame into the batch.
    pub fn push_frame(&mut self, kind: u16, request_id: u32, body: &[u8]) {
        self.bytes.extend_from_slice(&frame_header(kind, request_id, body.len()));
        self.bytes.extend_from_slice(body);
    }

    /// Whether it should be written before more is added.
    pub fn is_full(&self) -> bool {
        self.bytes.len() > WRITE_COALESCE_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Written: empty again. It keeps its allocation for the next write,
    /// up to what a connection's read buffer keeps: one burst of answers
    /// (up to `WRITE_COALESCE_BYTES`) does not leave the connection holding
    /// a megabyte for the rest of its life.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.bytes.shrink_to(CONNECTION_BUFFER_RETAINED_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_frame as encode, FRAME_HEADER_BYTES};

    fn limits() -> DecoderLimits {
        DecoderLimits {
            body_bytes_max: 8 << 20,
            first_read_bytes: 4096,
            read_bytes_max: 64 * 1024,
            retained_bytes_max: 128 * 1024,
        }
    }

    /// Feeds `wire` to `decoder` the way a reader does, at most `step`
    /// bytes a read, and returns the frames in order.
    fn feed(decoder: &mut FrameDecoder, wire: &[u8], step: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut offset = 0;
        loop {
            while let Some(frame) = decoder.decode().expect("good frames") {
                frames.push(frame);
            }
            if offset == wire.len() {
                return frames;
            }
            let room = decoder.room();
            let read = room.len().min(step).min(wire.len() - offset);
            room[..read].copy_from_slice(&wire[offset..offset + read]);
            decoder.filled(read);
            offset += read;
        }
    }

    /// Feeds one frame's `wire` in reads of up to 64 KiB and counts the
    /// times the decoder's buffer grew.
    fn growths_for(decoder: &mut FrameDecoder, wire: &[u8]) -> usize {
        let (mut growths, mut offset, mut frames) = (0, 0, 0);
        while offset < wire.len() {
            let before = decoder.capacity();
            let room = decoder.room();
            let read = room.len().min(wire.len() - offset);
            room[..read].copy_from_slice(&wire[offset..offset + read]);
            decoder.filled(read);
            offset += read;
            growths += usize::from(decoder.capacity() > before);
            assert!(decoder.capacity() <= 2 * wire.len() + 68 * 1024, "capacity {}", decoder.capacity());
            while decoder.decode().expect("a good frame").is_some() {
                frames += 1;
            }
        }
        assert_eq!(frames, 1);
        growths
    }

    #[test]
    fn a_frame_no_larger_than_one_already_sent_is_not_grown_by_doubling() {
        let wire = encode(5, 1, &vec![4; 1 << 20]);
        let mut decoder = FrameDecoder::new(limits());
        let unproven = growths_for(&mut decoder, &wire);
        assert!(unproven >= 5, "the first 1 MiB frame grew the buffer {unproven} times");
        for _ in 0..3 {
            let proven = growths_for(&mut decoder, &wire);
            assert!(proven <= 2, "a frame as large as one already sent grew the buffer {proven} times");
        }
        // A larger frame is unproven again: it grows with what arrives.
        let larger = encode(5, 2, &vec![4; 3 << 20]);
        assert!(growths_for(&mut decoder, &larger) >= 3);
        // Frugal, a proven length earns nothing: a peer could claim it and
        // stall.
        decoder.set_frugal(true);
        assert!(growths_for(&mut decoder, &wire) >= 5, "a frugal decoder sized a frame from its claim");
    }

    /// Reads that fill all their room (a peer streaming small frames) earn
    /// whole 64 KiB reads, unless the decoder is frugal; a peer whose reads
    /// come in smaller than their room keeps 4 KiB steps.
    #[test]
    fn a_streaming_peer_is_read_a_whole_read_at_a_time() {
        let wire: Vec<u8> = (0..200).flat_map(|id| encode(5, id, &[7; 1000])).collect();
        let reads_with = |step: usize, frugal: bool| {
            let mut decoder = FrameDecoder::new(limits());
            decoder.set_frugal(frugal);
            let (mut offset, mut reads, mut frames, mut capacity_max) = (0, 0, 0, 0);
            while offset < wire.len() {
                let room = decoder.room();
                let read = room.len().min(step).min(wire.len() - offset);
                room[..read].copy_from_slice(&wire[offset..offset + read]);
                decoder.filled(read);
                (offset, reads) = (offset + read, reads + 1);
                capacity_max = capacity_max.max(decoder.capacity());
                while decoder.decode().expect("good frames").is_some() {
                    frames += 1;
                }
            }
            assert_eq!(frames, 200);
            (reads, capacity_max)
        };
        let (streamed, _) = reads_with(usize::MAX, false);
        assert!(streamed <= 8, "{streamed} reads for 200 KB that arrived as fast as they were read");
        let (frugal, _) = reads_with(usize::MAX, true);
        assert!(frugal >= 20, "{frugal} reads: a frugal decoder kept first-read steps");
        let (_, capacity) = reads_with(1000, false);
        assert!(capacity <= 2 * 4096, "a trickling peer's buffer grew to {capacity}");
    }

    #[test]
    fn frames_come_out_whole_whatever_the_reads_cut() {
        let mut wire = encode(5, 77, b"hello");
        wire.extend(encode(7, 78, b""));
        wire.extend(encode(9, 79, &vec![3; 200_000]));
        for step in [1, 3, 10, 4096, 1 << 20] {
            let mut decoder = FrameDecoder::new(limits());
            let frames = feed(&mut decoder, &wire, step);
            let seen: Vec<_> = frames.iter().map(|frame| (frame.kind, frame.request_id, frame.body.len())).collect();
            assert_eq!(seen, [(5, 77, 5), (7, 78, 0), (9, 79, 200_000)], "reads of {step} bytes");
            assert_eq!(&frames[0].body[..], b"hello");
            assert_eq!(decoder.end(), Ok(()));
            assert!(decoder.capacity() <= 128 * 1024, "{} bytes kept", decoder.capacity());
        }
    }

    /// The room a read gets is zeroed once per allocation, not per read: a
    /// read that scribbled past what it filled leaves those bytes in the next
    /// room, and they never become frame bytes.
    #[test]
    fn bytes_a_read_scribbled_past_its_fill_never_reach_a_frame() {
        let mut wire = encode(5, 77, &vec![1; 3000]);
        wire.extend(encode(9, 79, &vec![3; 100_000]));
        wire.extend(encode(7, 78, b"tail"));
        for step in [100, 1000, 70_000] {
            let mut decoder = FrameDecoder::new(limits());
            let (mut frames, mut offset, mut scribbled_seen) = (Vec::new(), 0, false);
            while offset < wire.len() {
                let room = decoder.room();
                scribbled_seen |= room.first() == Some(&0xEE);
                room.fill(0xEE);
                let read = room.len().min(step).min(wire.len() - offset);
                room[..read].copy_from_slice(&wire[offset..offset + read]);
                decoder.filled(read);
                offset += read;
                while let Some(frame) = decoder.decode().expect("good frames") {
                    frames.push(frame);
                }
            }
            let bodies: Vec<_> = frames.iter().map(|frame| (frame.request_id, frame.body.to_vec())).collect();
            assert_eq!(bodies, [(77, vec![1; 3000]), (79, vec![3; 100_000]), (78, b"tail".to_vec())], "step {step}");
            // Reads of a whole room (70,000 bytes) leave nothing scribbled.
            assert!(scribbled_seen || step > 64 * 1024, "step {step}: every room was zeroed again");
        }
    }

    #[test]
    fn room_not_filled_is_never_taken_for_frame_bytes() {
        let mut decoder = FrameDecoder::new(limits());
        let wire = encode(5, 1, b"abc");
        let room = decoder.room();
        room[..4].copy_from_slice(&wire[..4]);
        decoder.filled(4);
        // A read that failed: its room holds nothing.
        let _ = decoder.room();
        assert_eq!(decoder.buffered(), 4);
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.end(), Err(Truncated { buffered: 4 }));
    }

    #[test]
    fn a_claimed_length_grows_the_buffer_only_with_what_arrives() {
        let mut decoder = FrameDecoder::new(limits());
        let header = frame_header(5, 1, 4 << 20);
        let mut received = 0;
        let mut wire = header.to_vec();
        wire.resize(600_000, 7);
        for chunk in wire.chunks(10_000) {
            assert!(decoder.reserve_read() <= 2 * received + 64 * 1024 + 4096);
            let room = decoder.room();
            let read = room.len().min(chunk.len());
            room[..read].copy_from_slice(&chunk[..read]);
            decoder.filled(read);
            received += read;
            assert_eq!(decoder.decode(), Ok(None));
        }
        assert!(decoder.capacity() < 2 << 20, "{} bytes for {received} received", decoder.capacity());
    }

    #[test]
    fn a_bad_length_is_an_error_from_the_prefix() {
        let mut decoder = FrameDecoder::new(limits());
        let room = decoder.room();
        room[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        decoder.filled(4);
        assert!(matches!(decoder.decode(), Err(FrameError::TooLarge { .. })));
    }

    /// A large body stays where it is: the batch gets its header (if the
    /// frame keeps one apart) and the writer writes the body right after.
    #[test]
    fn a_large_body_is_left_out_of_the_batch_and_follows_it() {
        struct Apart(Vec<u8>);
        impl OutgoingFrame for Apart {
            fn header(&self) -> &[u8] {
                &self.0[..FRAME_HEADER_BYTES]
            }
            fn body(&self) -> &[u8] {
                &self.0[FRAME_HEADER_BYTES..]
            }
        }
        let small = encode(5, 1, b"one");
        let large = Apart(encode(6, 2, &vec![9; WRITE_IN_PLACE_BYTES]));
        let mut batch = FrameBatch::default();
        assert_eq!(batch.push(&small), Pushed::Copied);
        assert_eq!(batch.push(&large), Pushed::InPlace);
        assert_eq!(batch.bytes().len(), small.len() + FRAME_HEADER_BYTES, "only the large frame's header");
        let mut wire = batch.bytes().to_vec();
        wire.extend_from_slice(large.body());
        let frames = feed(&mut FrameDecoder::new(limits()), &wire, 4096);
        let seen: Vec<_> = frames.iter().map(|frame| (frame.request_id, frame.body.len())).collect();
        assert_eq!(seen, [(1, 3), (2, WRITE_IN_PLACE_BYTES)]);
        let whole = WireFrame::encoded(7, 3, &vec![1; WRITE_IN_PLACE_BYTES]);
        batch.clear();
        assert_eq!(batch.push(&whole), Pushed::InPlace);
        assert!(batch.is_empty(), "a whole frame is written from its own buffer");
    }

    #[test]
    fn a_batch_gives_back_what_a_burst_took_once_written() {
        let mut batch = FrameBatch::default();
        let answer = encode(5, 1, &vec![3; WRITE_IN_PLACE_BYTES - 64]);
        while !batch.is_full() {
            assert_eq!(batch.push(&answer), Pushed::Copied);
        }
        assert!(batch.bytes.capacity() > WRITE_COALESCE_BYTES);
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.bytes.capacity(), CONNECTION_BUFFER_RETAINED_BYTES);
        batch.push(&encode(5, 2, b"small"));
        batch.clear();
        assert_eq!(batch.bytes.capacity(), CONNECTION_BUFFER_RETAINED_BYTES, "a small batch keeps its room");
    }

    #[test]
    fn a_batch_holds_frames_back_to_back() {
        let mut batch = FrameBatch::default();
        batch.push(&encode(5, 1, b"one"));
        batch.push_frame(6, 2, b"two");
        let mut decoder = FrameDecoder::new(limits());
        let frames = feed(&mut decoder, batch.bytes(), 7);
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[1].kind, frames[1].request_id, &frames[1].body[..]), (6, 2, &b"two"[..]));
        assert!(!batch.is_full());
        batch.clear();
        assert!(batch.is_empty());
    }
}
