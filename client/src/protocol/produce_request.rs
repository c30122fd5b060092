//! A produce request (`ProduceRequest` of `MessageBytes` tables), written
//! out byte by byte in flatbuffers' format instead of through
//! `FlatBufferBuilder`.
//!
//! Why: every producer builds one per request. The builder zeroed its whole
//! buffer first (1 MiB for 1,000 messages of 1 KiB: 10.7% of the load
//! generator's CPU under batched requests, with the page faults of a fresh
//! megabyte), and spent as much again writing, searching and deduplicating
//! a vtable per message table.
//!
//! Layout, every offset pointing forward:
//!
//! ```text
//! room     the frame header (`WireFrame::in_place`) and unused bytes
//! header   root offset; the ProduceRequest vtable and table; the topic;
//!          the messages vector (one offset per message)
//! region   the MessageBytes vtable, then per message its table and its
//!          bytes vector, each 4-aligned
//! ```
//!
//! The region is written as messages come; the header, whose length depends
//! on their count and the topic, is written at `finish` into room left in
//! front of the region, ending where the region starts (a request with more
//! messages than its capacity said, or a longer topic, is moved once).
//! Nothing in these tables needs more than 4-byte alignment.

use super::fb;
use super::frame::FRAME_HEADER_BYTES;
use crate::wire::forward_writer::ForwardWriter;
use crate::wire::{Finished, MessageDraft};

/// The `MessageBytes` vtable, first in the region: 6 bytes (one field,
/// `bytes`, at 4 of an 8-byte table), padded to 8.
const MESSAGE_VTABLE: [u16; 4] = [6, 8, 4, 0];
const MESSAGE_TABLE_BYTES: usize = 8;

/// The `ProduceRequest` vtable: topic, queue, messages, skip_gap, in a
/// 20-byte table.
const REQUEST_VTABLE: [u16; 6] = [12, 20, 4, 8, 12, 16];
const REQUEST_TABLE_BYTES: usize = 20;
const _: () = assert!(fb::ProduceRequest::VT_SKIP_GAP == 10 && fb::MessageBytes::VT_BYTES == 4);

/// A produce request, its messages added one at a time: copied in (`push`),
/// or encoded in place from their drafts (`push_draft`).
pub struct ProduceRequestBuilder {
    buffer: Vec<u8>,
    /// Where the region starts: the header goes just before it.
    region: usize,
    /// Where each message's table is.
    tables: Vec<usize>,
}

fn padded(bytes: usize) -> usize {
    bytes.next_multiple_of(4)
}

/// Bytes of the header for `messages` messages and `topic`.
fn header_bytes(topic: &str, messages: usize) -> usize {
    4 + 2 * REQUEST_VTABLE.len() + REQUEST_TABLE_BYTES + padded(4 + topic.len() + 1) + 4 + 4 * messages
}

impl ProduceRequestBuilder {
    /// Room for `messages` messages of `message_bytes` in all; more or a
    /// longer topic at `finish` cost one move of the request.
    pub fn with_capacity(topic: &str, messages: usize, message_bytes: usize) -> Self {
        let region = FRAME_HEADER_BYTES.next_multiple_of(4) + header_bytes(topic, messages);
        let region_bytes = 2 * MESSAGE_VTABLE.len() + messages * (MESSAGE_TABLE_BYTES + 4 + 3) + message_bytes;
        let mut buffer = Vec::with_capacity(region + region_bytes);
        buffer.resize(region, 0);
        let mut out = ForwardWriter::new(&mut buffer);
        for entry in MESSAGE_VTABLE {
            out.u16(entry);
        }
        Self { buffer, region, tables: Vec::with_capacity(messages) }
    }

    pub fn push(&mut self, message: &[u8]) {
        self.push_with(|buffer| buffer.extend_from_slice(message));
    }

    /// Encodes `draft` straight into the request, where `push` would copy
    /// it: no buffer of its own, no copy.
    pub fn push_draft(&mut self, draft: &MessageDraft<'_>) {
        self.push_with(|buffer| draft.write_to(buffer));
    }

    /// A `MessageBytes` table and its bytes vector, whose bytes `write`
    /// appends.
    fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        // Positions in the whole buffer: the request's start is not known
        // before `finish`, and only differences are written here.
        let mut out = ForwardWriter::resume(&mut self.buffer, 0);
        let table = out.at();
        debug_assert_eq!(table % 4, 0);
        out.table_start(self.region);
        // The bytes vector right after the table; its length once written.
        let length_at = table + MESSAGE_TABLE_BYTES;
        out.forward(length_at);
        out.u32(0);
        self.tables.push(table);
        write(&mut self.buffer);
        let length = (self.buffer.len() - length_at - 4) as u32;
        let mut out = ForwardWriter::resume(&mut self.buffer, 0);
        out.set_u32(length_at, length);
        out.align4();
    }

    pub fn finish(mut self, topic: &str, queue: u32, skip_gap: bool) -> Finished {
        let header = header_bytes(topic, self.tables.len());
        if header + FRAME_HEADER_BYTES > self.region {
            self.make_room(header + FRAME_HEADER_BYTES);
        }
        let start = self.region - header;
        debug_assert_eq!(start % 4, 0);
        let mut out = Header { buffer: &mut self.buffer, at: start };
        let request = start + 4 + 2 * REQUEST_VTABLE.len();
        let topic_at = request + REQUEST_TABLE_BYTES;
        let vector = topic_at + padded(4 + topic.len() + 1);
        out.u32((request - start) as u32);
        for entry in REQUEST_VTABLE {
            out.bytes(&entry.to_le_bytes());
        }
        out.u32((request - (start + 4)) as u32);
        out.forward(topic_at);
        out.u32(queue);
        out.forward(vector);
        out.bytes(&[u8::from(skip_gap), 0, 0, 0]);
        debug_assert_eq!(out.at, topic_at);
        out.u32(topic.len() as u32);
        out.bytes(topic.as_bytes());
        out.bytes(&[0]);
        while out.at % 4 != 0 {
            out.bytes(&[0]);
        }
        out.u32(self.tables.len() as u32);
        for &table in &self.tables {
            out.forward(table);
        }
        debug_assert_eq!(out.at, self.region);
        Finished::new(self.buffer, start)
    }

    /// Moves the region so that `bytes` fit in front of it.
    fn make_room(&mut self, bytes: usize) {
        let region = bytes.next_multiple_of(4);
        let shift = region - self.region;
        let mut moved = Vec::with_capacity(self.buffer.len() + shift);
        moved.resize(region, 0);
        moved.extend_from_slice(&self.buffer[self.region..]);
        self.tables.iter_mut().for_each(|table| *table += shift);
        (self.buffer, self.region) = (moved, region);
    }
}

/// Writes the header into the room in front of the region.
struct Header<'a> {
    buffer: &'a mut Vec<u8>,
    at: usize,
}

impl Header<'_> {
    fn bytes(&mut self, bytes: &[u8]) {
        self.buffer[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }

    /// An offset field pointing at `target`, further on.
    fn forward(&mut self, target: usize) {
        debug_assert!(target > self.at);
        self.u32((target - self.at) as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{body_verifier_options, produce_verifiers_agree, verify_produce_request};
    use flatbuffers::FlatBufferBuilder;

    /// The same request through flatbuffers' builder: the oracle.
    fn built(topic: &str, queue: u32, messages: &[Vec<u8>], skip_gap: bool) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let tables: Vec<_> = messages
            .iter()
            .map(|message| {
                let bytes = builder.create_vector(message);
                fb::MessageBytes::create(&mut builder, &fb::MessageBytesArgs { bytes: Some(bytes) })
            })
            .collect();
        let messages = builder.create_vector(&tables);
        let topic = builder.create_string(topic);
        let args = fb::ProduceRequestArgs { topic: Some(topic), queue, messages: Some(messages), skip_gap };
        let root = fb::ProduceRequest::create(&mut builder, &args);
        builder.finish_minimal(root);
        builder.finished_data().to_vec()
    }

    fn written(topic: &str, queue: u32, messages: &[Vec<u8>], skip_gap: bool, capacity: usize) -> Finished {
        let bytes = messages.iter().map(Vec::len).sum();
        let mut request = ProduceRequestBuilder::with_capacity("t", capacity, bytes);
        for message in messages {
            request.push(message);
        }
        request.finish(topic, queue, skip_gap)
    }

    /// What the broker reads from a request, through flatbuffers' verifier.
    fn read(body: &[u8]) -> (String, u32, Vec<Vec<u8>>, bool) {
        let request =
            flatbuffers::root_with_opts::<fb::ProduceRequest>(&body_verifier_options(), body).expect("verifies");
        let messages = request.messages().iter().map(|message| message.bytes().bytes().to_vec()).collect();
        (request.topic().to_string(), request.queue(), messages, request.skip_gap())
    }

    fn messages_of(seed: usize, count: usize) -> Vec<Vec<u8>> {
        (0..count).map(|index| (0..(index * 7 + seed) % 1100).map(|byte| (byte * 31 + index) as u8).collect()).collect()
    }

    #[test]
    fn a_request_reads_back_as_the_builders_does_through_both_verifiers() {
        let topics = ["orders", "", "caf\u{e9}", "%RETRY%group-with-a-long-name"];
        for (seed, count) in [(0, 0), (1, 1), (2, 2), (3, 3), (5, 17), (8, 1000)] {
            for (index, topic) in topics.iter().enumerate() {
                let messages = messages_of(seed, count);
                let (queue, skip_gap) = (seed as u32 * 977 + index as u32, index % 2 == 1);
                // As planned, one message too many, none planned.
                for capacity in [count, count.saturating_sub(1), 0] {
                    let request = written(topic, queue, &messages, skip_gap, capacity);
                    assert_eq!(read(&request), read(&built(topic, queue, &messages, skip_gap)), "{count} messages");
                    assert!(produce_verifiers_agree(&request));
                    let fast = verify_produce_request(&request).expect("the written-out checks accept it");
                    assert_eq!(fast.messages().len(), count);
                    let (buffer, start) = request.into_parts();
                    assert!(start >= FRAME_HEADER_BYTES, "room for the frame header");
                    assert_eq!((buffer.as_ptr() as usize + start) % 4, 0);
                }
            }
        }
    }

    #[test]
    fn a_draft_encoded_in_place_is_the_message_pushed_as_bytes() {
        let drafts: Vec<MessageDraft<'_>> = (0..5u64)
            .map(|index| MessageDraft {
                msg_id: (index, index + 1),
                topic: "orders",
                keys: if index % 2 == 0 { &["k"] } else { &[] },
                body: &[7; 1000][..(index as usize * 37) % 1000],
                sequence: index,
                ..MessageDraft::default()
            })
            .collect();
        let mut in_place = ProduceRequestBuilder::with_capacity("orders", 2, 100);
        let mut copied = ProduceRequestBuilder::with_capacity("orders", 2, 100);
        for draft in &drafts {
            in_place.push_draft(draft);
            copied.push(&draft.build());
        }
        let (in_place, copied) = (in_place.finish("orders", 4, true), copied.finish("orders", 4, true));
        assert_eq!(&in_place[..], &copied[..]);
        let (.., messages, _) = read(&in_place);
        assert_eq!(messages, drafts.iter().map(MessageDraft::build).collect::<Vec<_>>());
    }
}
