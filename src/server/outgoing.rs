//! A frame a connection writes: an answer, or a request the broker starts.

use crate::protocol::{frame_header, Kind, OutgoingFrame, FRAME_HEADER_BYTES};
use glommio::sync::StaticPermit;

/// A frame to write (header and body apart, so the body is copied once,
/// into the write buffer) and the budget it holds until it is written: an
/// answer, or a request the broker starts (no budget).
pub struct Outgoing {
    header: [u8; FRAME_HEADER_BYTES],
    body: Vec<u8>,
    _held: Option<(StaticPermit, StaticPermit)>,
}

impl Outgoing {
    pub fn new(kind: Kind, request_id: u32, body: Vec<u8>, held: Option<(StaticPermit, StaticPermit)>) -> Self {
        Self { header: frame_header(kind as u16, request_id, body.len()), body, _held: held }
    }
}

impl OutgoingFrame for Outgoing {
    fn header(&self) -> &[u8] {
        &self.header
    }

    fn body(&self) -> &[u8] {
        &self.body
    }
}
