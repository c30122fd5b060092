//! A `Message` written out byte by byte in flatbuffers' format instead of
//! through `FlatBufferBuilder`, as `protocol::produce_answer` does for an
//! answer and for the same reason: a producer encodes every message it
//! sends, and the builder's generic path (each field pushed, aligned and
//! recorded, a vtable written and searched for, the buffer built back to
//! front) was most of the load generator's cost per message under batched
//! requests.
//!
//! Layout, every offset pointing forward, positions relative to the
//! message's first byte (flatbuffers aligns relative to the buffer):
//!
//! ```text
//! 0    root offset -> the Message table
//! 4    the Message vtable (15 fields), the Property vtable
//! 48   the Message table, 88 bytes at fixed places; a scalar at its
//!      default and an optional string or vector left out of the vtable
//! 136  topic, keys (vector, then each key), tags, properties (vector,
//!      then each table and its two strings), body, producer_group,
//!      transaction_id
//! ```

use super::generated::{Message, Property};
use super::MessageDraft;

/// Where the Message table's fields are.
const QUEUE_AT: u16 = 4;
const MSG_ID_AT: u16 = 8;
const PRODUCER_ID_AT: u16 = 24;
const SEQUENCE_AT: u16 = 32;
const BORN_AT: u16 = 40;
const DELIVER_AT_AT: u16 = 48;
const TOPIC_AT: u16 = 56;
const KEYS_AT: u16 = 60;
const TAGS_AT: u16 = 64;
const PROPERTIES_AT: u16 = 68;
const BODY_AT: u16 = 72;
const PRODUCER_GROUP_AT: u16 = 76;
const TRANSACTION_ID_AT: u16 = 80;
const DELAY_LEVEL_AT: u16 = 84;
const TRANSACTION_AT: u16 = 85;
const MESSAGE_TABLE_BYTES: usize = 88;

const MESSAGE_VTABLE_AT: usize = 4;
/// At most: its own size, the table's, then each of 15 fields.
const MESSAGE_VTABLE_BYTES: usize = 4 + 2 * 15;
const PROPERTY_VTABLE_AT: usize = 40;
const PROPERTY_VTABLE: [u16; 4] = [8, 12, 4, 8];
const PROPERTY_TABLE_BYTES: usize = 12;
const MESSAGE_AT: usize = 48;
const _: () = assert!(MESSAGE_VTABLE_AT + MESSAGE_VTABLE_BYTES <= PROPERTY_VTABLE_AT);
const _: () = assert!(PROPERTY_VTABLE_AT + 2 * PROPERTY_VTABLE.len() == MESSAGE_AT && MESSAGE_AT % 8 == 0);
// The ids the vtable's order follows are the generated code's.
const _: () = assert!(Message::VT_TRANSACTION_ID == 4 + 2 * 14 && Property::VT_VALUE == 6);

/// Appends `draft` encoded as a `Message` to `out`; the message starts at
/// `out`'s length on entry.
pub(super) fn write(draft: &MessageDraft<'_>, out: &mut Vec<u8>) {
    let base = out.len();
    out.reserve(encoded_bytes_max(draft));
    let mut message = Writer { out, base };
    message.u32(MESSAGE_AT as u32);
    // A scalar at its default is left out, as flatbuffers' builder does:
    // every field present costs each reader a check. Its bytes in the
    // table are zeros (the default) either way.
    let has = |present: bool, at: u16| if present { at } else { 0 };
    // Each field's place in the table, in id order; 0: left out.
    let fields: [u16; 15] = [
        MSG_ID_AT,
        TOPIC_AT,
        has(draft.queue != 0, QUEUE_AT),
        has(!draft.keys.is_empty(), KEYS_AT),
        has(draft.tag.is_some(), TAGS_AT),
        has(!draft.properties.is_empty(), PROPERTIES_AT),
        BODY_AT,
        has(draft.producer_id != 0, PRODUCER_ID_AT),
        has(draft.sequence != 0, SEQUENCE_AT),
        has(draft.born_timestamp_us != 0, BORN_AT),
        has(draft.delay_level != 0, DELAY_LEVEL_AT),
        has(draft.deliver_at_ms != 0, DELIVER_AT_AT),
        has(draft.half, TRANSACTION_AT),
        has(draft.producer_group.is_some(), PRODUCER_GROUP_AT),
        has(draft.transaction_id.is_some(), TRANSACTION_ID_AT),
    ];
    // Fields left out at the end are left out of the vtable too, as the
    // builder does: a reader stops at its end instead of reading zeros.
    let count = fields.iter().rposition(|&at| at != 0).map_or(0, |last| last + 1);
    message.u16((4 + 2 * count) as u16);
    message.u16(MESSAGE_TABLE_BYTES as u16);
    for &at in &fields[..count] {
        message.u16(at);
    }
    message.pad_to(PROPERTY_VTABLE_AT);
    for entry in PROPERTY_VTABLE {
        message.u16(entry);
    }
    debug_assert_eq!(message.at(), MESSAGE_AT);
    // The table; its offset fields are filled in as their targets are
    // written after it.
    message.zeros(MESSAGE_TABLE_BYTES);
    message.set_u32(MESSAGE_AT, (MESSAGE_AT - MESSAGE_VTABLE_AT) as u32);
    message.set_u32(MESSAGE_AT + QUEUE_AT as usize, draft.queue);
    message.set_u64(MESSAGE_AT + MSG_ID_AT as usize, draft.msg_id.0);
    message.set_u64(MESSAGE_AT + MSG_ID_AT as usize + 8, draft.msg_id.1);
    message.set_u64(MESSAGE_AT + PRODUCER_ID_AT as usize, draft.producer_id);
    message.set_u64(MESSAGE_AT + SEQUENCE_AT as usize, draft.sequence);
    message.set_u64(MESSAGE_AT + BORN_AT as usize, draft.born_timestamp_us);
    message.set_u64(MESSAGE_AT + DELIVER_AT_AT as usize, draft.deliver_at_ms);
    message.set_u8(MESSAGE_AT + DELAY_LEVEL_AT as usize, draft.delay_level);
    message.set_u8(MESSAGE_AT + TRANSACTION_AT as usize, u8::from(draft.half));

    message.point(MESSAGE_AT + TOPIC_AT as usize);
    message.string(draft.topic);
    if !draft.keys.is_empty() {
        message.point(MESSAGE_AT + KEYS_AT as usize);
        message.strings(draft.keys.iter().copied());
    }
    if let Some(tag) = draft.tag {
        message.point(MESSAGE_AT + TAGS_AT as usize);
        message.string(tag);
    }
    if !draft.properties.is_empty() {
        message.point(MESSAGE_AT + PROPERTIES_AT as usize);
        message.properties(draft.properties);
    }
    message.point(MESSAGE_AT + BODY_AT as usize);
    message.bytes_vector(draft.body);
    if let Some(group) = draft.producer_group {
        message.point(MESSAGE_AT + PRODUCER_GROUP_AT as usize);
        message.string(group);
    }
    if let Some(id) = draft.transaction_id {
        message.point(MESSAGE_AT + TRANSACTION_ID_AT as usize);
        message.string(id);
    }
}

/// At most what `write` appends (each string or vector padded by up to 3,
/// plus its length and terminator).
fn encoded_bytes_max(draft: &MessageDraft<'_>) -> usize {
    let string = |text: &str| 4 + text.len() + 4;
    let optional = |text: Option<&str>| text.map_or(0, string);
    MESSAGE_AT
        + MESSAGE_TABLE_BYTES
        + string(draft.topic)
        + 4
        + draft.keys.iter().map(|key| 4 + string(key)).sum::<usize>()
        + optional(draft.tag)
        + 4
        + draft
            .properties
            .iter()
            .map(|(key, value)| 4 + PROPERTY_TABLE_BYTES + string(key) + string(value))
            .sum::<usize>()
        + 4
        + draft.body.len()
        + 3
        + optional(draft.producer_group)
        + optional(draft.transaction_id)
}

/// Appends to a message that starts at `base`; positions are the
/// message's own.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    base: usize,
}

impl Writer<'_> {
    fn at(&self) -> usize {
        self.out.len() - self.base
    }

    fn u16(&mut self, value: u16) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn u32(&mut self, value: u32) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn zeros(&mut self, count: usize) {
        self.out.resize(self.out.len() + count, 0);
    }

    fn pad_to(&mut self, at: usize) {
        debug_assert!(at >= self.at());
        self.zeros(at - self.at());
    }

    fn align4(&mut self) {
        self.zeros(self.at().next_multiple_of(4) - self.at());
    }

    fn set(&mut self, at: usize, bytes: &[u8]) {
        let start = self.base + at;
        self.out[start..start + bytes.len()].copy_from_slice(bytes);
    }

    fn set_u8(&mut self, at: usize, value: u8) {
        self.set(at, &[value]);
    }

    fn set_u32(&mut self, at: usize, value: u32) {
        self.set(at, &value.to_le_bytes());
    }

    fn set_u64(&mut self, at: usize, value: u64) {
        self.set(at, &value.to_le_bytes());
    }

    /// Points the offset field at `field` at what is written next.
    fn point(&mut self, field: usize) {
        self.align4();
        debug_assert!(self.at() > field);
        self.set_u32(field, (self.at() - field) as u32);
    }

    fn string(&mut self, text: &str) {
        debug_assert_eq!(self.at() % 4, 0);
        self.u32(text.len() as u32);
        self.out.extend_from_slice(text.as_bytes());
        self.out.push(0);
    }

    fn bytes_vector(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.at() % 4, 0);
        self.u32(bytes.len() as u32);
        self.out.extend_from_slice(bytes);
    }

    /// A vector of `count` offsets; returns where its first entry is.
    fn offsets(&mut self, count: usize) -> usize {
        debug_assert_eq!(self.at() % 4, 0);
        self.u32(count as u32);
        let first = self.at();
        self.zeros(4 * count);
        first
    }

    fn strings<'s>(&mut self, texts: impl ExactSizeIterator<Item = &'s str>) {
        let first = self.offsets(texts.len());
        for (index, text) in texts.enumerate() {
            self.point(first + 4 * index);
            self.string(text);
        }
    }

    fn properties(&mut self, properties: &[(&str, &str)]) {
        let first = self.offsets(properties.len());
        for (index, (key, value)) in properties.iter().enumerate() {
            self.point(first + 4 * index);
            let table = self.at();
            self.zeros(PROPERTY_TABLE_BYTES);
            self.set_u32(table, (table - PROPERTY_VTABLE_AT) as u32);
            self.point(table + PROPERTY_VTABLE[2] as usize);
            self.string(key);
            self.point(table + PROPERTY_VTABLE[3] as usize);
            self.string(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::verifier_options;
    use crate::wire::{message_verifiers_agree, verify_message};
    use bytes::Bytes;

    /// Every field a reader gets, through flatbuffers' verifier.
    type Fields = (
        (u64, u64),
        String,
        u32,
        Option<Vec<String>>,
        Option<String>,
        Option<Vec<(String, String)>>,
        Option<Vec<u8>>,
        (u64, u64, u64),
        (u8, u64, u8),
        (Option<String>, Option<String>),
    );

    fn read(bytes: &[u8]) -> Fields {
        let message = flatbuffers::root_with_opts::<Message>(&verifier_options(), bytes).expect("verifies");
        let msg_id = message.msg_id();
        (
            (msg_id.hi(), msg_id.lo()),
            message.topic().to_string(),
            message.queue(),
            message.keys().map(|keys| keys.iter().map(str::to_string).collect()),
            message.tags().map(str::to_string),
            message.properties().map(|properties| {
                properties.iter().map(|property| (property.key().to_string(), property.value().to_string())).collect()
            }),
            message.body().map(|body| body.bytes().to_vec()),
            (message.producer_id(), message.sequence(), message.born_timestamp_us()),
            (message.delay_level(), message.deliver_at_ms(), message.transaction().0),
            (message.producer_group().map(str::to_string), message.transaction_id().map(str::to_string)),
        )
    }

    fn check(draft: &MessageDraft<'_>) {
        let written = draft.build();
        assert_eq!(read(&written), read(&draft.built_by_flatbuffers()), "{draft:?}");
        assert!(message_verifiers_agree(&written));
        match verify_message(Bytes::from(written.clone())) {
            Ok(verified) => assert_eq!(verified.msg_id, draft.msg_id),
            // The broker's one refusal of a well-formed message.
            Err(error) => assert!(draft.topic.is_empty() && matches!(error, crate::wire::WireError::EmptyTopic)),
        }
        // Written after other bytes, at any alignment, the message is the same.
        for before in [1, 4, 7] {
            let mut out = vec![9; before];
            draft.write_to(&mut out);
            assert_eq!(&out[before..], &written[..]);
        }
        draft.with_built(|message| assert_eq!(message, &written[..]));
        assert_eq!(&draft.build_in_place()[..], &written[..]);
    }

    #[test]
    fn a_message_reads_back_as_the_builders_does_in_every_shape() {
        let body: Vec<u8> = (0..3000).map(|byte| (byte * 7) as u8).collect();
        let plain = MessageDraft { msg_id: (1, 2), topic: "orders", body: b"payload", ..MessageDraft::default() };
        check(&plain);
        check(&MessageDraft::default());
        check(&crate::wire::message::every_field_set());
        // The largest values, a key that is not ASCII, an empty property key.
        let full = MessageDraft {
            msg_id: (u64::MAX, 3),
            queue: u32::MAX,
            keys: &["k1", "", "key-two", "caf\u{e9}"],
            properties: &[("a", "1"), ("", "v")],
            sequence: u64::MAX,
            delay_level: 255,
            ..crate::wire::message::every_field_set()
        };
        check(&full);
        for length in [0, 1, 2, 3, 4, 5, 1023, 1024, 3000] {
            check(&MessageDraft { body: &body[..length], ..plain.clone() });
            check(&MessageDraft { body: &body[..length], topic: &"t".repeat(length % 9), ..full.clone() });
        }
        check(&MessageDraft { keys: &["only"], ..plain.clone() });
        check(&MessageDraft { properties: &[("k", "v")], ..plain.clone() });
        check(&MessageDraft { transaction_id: Some("x"), ..plain.clone() });
        check(&MessageDraft { producer_group: Some("g"), ..plain.clone() });
        let large = vec![5; 100 * 1024];
        check(&MessageDraft { body: &large, ..full.clone() });
    }

    #[test]
    fn the_estimate_reserves_enough_for_one_allocation() {
        let draft = MessageDraft {
            keys: &["a", "bb", "ccc"],
            tag: Some("t"),
            properties: &[("k", "v"), ("kk", "vv")],
            producer_group: Some("g"),
            transaction_id: Some("tx"),
            body: &[1; 17],
            topic: "topic",
            ..MessageDraft::default()
        };
        assert!(draft.build().len() <= encoded_bytes_max(&draft));
    }
}
