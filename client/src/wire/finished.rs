//! A finished flatbuffer where its builder left it.

use flatbuffers::FlatBufferBuilder;

/// A finished flatbuffer at the end of its builder's buffer, not copied into
/// a vector of its own: a producer builds thousands of messages a second,
/// and a 1 MiB produce request keeps the room in front of it for its frame
/// header (`protocol::WireFrame::in_place`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    buffer: Vec<u8>,
    start: usize,
}

impl Finished {
    /// `buffer[start..]` is the flatbuffer.
    pub fn new(buffer: Vec<u8>, start: usize) -> Self {
        debug_assert!(start <= buffer.len());
        Self { buffer, start }
    }

    /// What `builder` holds once `finish_minimal` (or `finish`) ran.
    pub fn of(builder: FlatBufferBuilder<'_>) -> Self {
        let (buffer, start) = builder.collapse();
        Self::new(buffer, start)
    }

    /// The whole buffer and where the flatbuffer starts in it.
    pub fn into_parts(self) -> (Vec<u8>, usize) {
        (self.buffer, self.start)
    }
}

impl std::ops::Deref for Finished {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buffer[self.start..]
    }
}
