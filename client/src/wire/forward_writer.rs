//! A flatbuffer appended front to back, every offset pointing forward: what
//! the bodies written out byte by byte share (`message_writer`,
//! `protocol::produce_answer`, `protocol::ProduceRequestBuilder`), where
//! flatbuffers' builder writes back to front.
//!
//! Positions are the flatbuffer's own, counted from where it starts in the
//! vector (flatbuffers aligns relative to the buffer's start).

/// Appends to a flatbuffer that starts at the vector's length on creation.
pub(crate) struct ForwardWriter<'a> {
    out: &'a mut Vec<u8>,
    base: usize,
}

impl<'a> ForwardWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        let base = out.len();
        Self { out, base }
    }

    /// Appends to a flatbuffer that starts at `base` in `out` and holds the
    /// bytes after it already.
    pub fn resume(out: &'a mut Vec<u8>, base: usize) -> Self {
        debug_assert!(base <= out.len());
        Self { out, base }
    }

    /// Where the next byte goes.
    pub fn at(&self) -> usize {
        self.out.len() - self.base
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub fn u16(&mut self, value: u16) {
        self.bytes(&value.to_le_bytes());
    }

    pub fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }

    pub fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    pub fn zeros(&mut self, count: usize) {
        self.out.resize(self.out.len() + count, 0);
    }

    pub fn pad_to(&mut self, at: usize) {
        debug_assert!(at >= self.at());
        self.zeros(at - self.at());
    }

    pub fn align4(&mut self) {
        self.zeros(self.at().next_multiple_of(4) - self.at());
    }

    /// A table's first field, here: how far back its vtable, at `vtable`, is.
    pub fn table_start(&mut self, vtable: usize) {
        debug_assert!(vtable < self.at());
        self.u32((self.at() - vtable) as u32);
    }

    /// An offset field, here, pointing at `target`, further on.
    pub fn forward(&mut self, target: usize) {
        debug_assert!(target > self.at());
        self.u32((target - self.at()) as u32);
    }

    /// Points the offset field at `field`, written before, at what is
    /// written next (4-aligned).
    pub fn point(&mut self, field: usize) {
        self.align4();
        debug_assert!(self.at() > field);
        self.set_u32(field, (self.at() - field) as u32);
    }

    fn set(&mut self, at: usize, bytes: &[u8]) {
        let start = self.base + at;
        self.out[start..start + bytes.len()].copy_from_slice(bytes);
    }

    pub fn set_u8(&mut self, at: usize, value: u8) {
        self.set(at, &[value]);
    }

    pub fn set_u32(&mut self, at: usize, value: u32) {
        self.set(at, &value.to_le_bytes());
    }

    pub fn set_u64(&mut self, at: usize, value: u64) {
        self.set(at, &value.to_le_bytes());
    }

    /// A string (4-aligned): its length, its bytes and a zero byte.
    pub fn string(&mut self, text: &str) {
        debug_assert_eq!(self.at() % 4, 0);
        self.u32(text.len() as u32);
        self.bytes(text.as_bytes());
        self.bytes(&[0]);
    }

    /// A vector of bytes (4-aligned): its length and its bytes.
    pub fn bytes_vector(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.at() % 4, 0);
        self.u32(bytes.len() as u32);
        self.bytes(bytes);
    }

    /// A vector of `count` offsets, to be pointed (`point`); where its first
    /// entry is.
    pub fn offsets(&mut self, count: usize) -> usize {
        debug_assert_eq!(self.at() % 4, 0);
        self.u32(count as u32);
        let first = self.at();
        self.zeros(4 * count);
        first
    }

    /// A vector of strings: the offsets, then each string.
    pub fn strings<'s>(&mut self, texts: impl ExactSizeIterator<Item = &'s str>) {
        let first = self.offsets(texts.len());
        for (index, text) in texts.enumerate() {
            self.point(first + 4 * index);
            self.string(text);
        }
    }
}
