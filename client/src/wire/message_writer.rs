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
//! 4    the Message vtable, up to its last field set; the Property vtable
//!      if the message has properties
//! ..   the Message table (8-aligned): only the fields set, as the builder
//!      writes them (a scalar at its default and an absent string or
//!      vector left out): the topic's offset, the 8-byte fields, the other
//!      4-byte fields, the 1-byte fields
//! ..   topic, keys (vector, then each key), tags, properties (vector,
//!      then each table and its two strings), body, producer_group,
//!      transaction_id
//! ```

use super::forward_writer::ForwardWriter;
use super::generated::{Message, Property};
use super::MessageDraft;

const PROPERTY_VTABLE: [u16; 4] = [8, 12, 4, 8];
const PROPERTY_TABLE_BYTES: usize = 12;
/// Fields of a Message, in id order (the vtable's).
const MESSAGE_FIELDS: usize = 15;
// The ids the vtable's order follows are the generated code's.
const _: () = assert!(Message::VT_TRANSACTION_ID == 4 + 2 * (MESSAGE_FIELDS as u16 - 1) && Property::VT_VALUE == 6);

/// Where each field set sits in the table (0: left out), in id order, and
/// the table's size.
struct TableLayout {
    fields: [u16; MESSAGE_FIELDS],
    bytes: u16,
}

/// Field ids (`Message`'s schema).
const MSG_ID: usize = 0;
const TOPIC: usize = 1;
const QUEUE: usize = 2;
const KEYS: usize = 3;
const TAGS: usize = 4;
const PROPERTIES: usize = 5;
const BODY: usize = 6;
const PRODUCER_ID: usize = 7;
const SEQUENCE: usize = 8;
const BORN_TIMESTAMP: usize = 9;
const DELAY_LEVEL: usize = 10;
const DELIVER_AT: usize = 11;
const TRANSACTION: usize = 12;
const PRODUCER_GROUP: usize = 13;
const TRANSACTION_ID: usize = 14;

impl TableLayout {
    /// After the vtable offset (4 bytes), the topic's offset fills the gap
    /// to the 8-byte fields, which stay 8-aligned in an 8-aligned table.
    fn of(draft: &MessageDraft<'_>) -> Self {
        let mut layout = Self { fields: [0; MESSAGE_FIELDS], bytes: 4 };
        let sizes = [
            (TOPIC, true, 4),
            (MSG_ID, true, 16),
            (PRODUCER_ID, draft.producer_id != 0, 8),
            (SEQUENCE, draft.sequence != 0, 8),
            (BORN_TIMESTAMP, draft.born_timestamp_us != 0, 8),
            (DELIVER_AT, draft.deliver_at_ms != 0, 8),
            (QUEUE, draft.queue != 0, 4),
            (KEYS, !draft.keys.is_empty(), 4),
            (TAGS, draft.tag.is_some(), 4),
            (PROPERTIES, !draft.properties.is_empty(), 4),
            (BODY, true, 4),
            (PRODUCER_GROUP, draft.producer_group.is_some(), 4),
            (TRANSACTION_ID, draft.transaction_id.is_some(), 4),
            (DELAY_LEVEL, draft.delay_level != 0, 1),
            (TRANSACTION, draft.half, 1),
        ];
        for (field, present, size) in sizes {
            if present {
                debug_assert_eq!(layout.bytes % size.min(8), 0);
                layout.fields[field] = layout.bytes;
                layout.bytes += size;
            }
        }
        layout
    }

    /// Fields up to the last one set: the vtable ends there, as the
    /// builder's does, so a reader stops at its end instead of reading
    /// zeros.
    fn vtable_fields(&self) -> &[u16] {
        let count = self.fields.iter().rposition(|&at| at != 0).map_or(0, |last| last + 1);
        &self.fields[..count]
    }

    fn at(&self, field: usize) -> usize {
        debug_assert_ne!(self.fields[field], 0);
        self.fields[field] as usize
    }
}

/// Appends `draft` encoded as a `Message` to `out`; the message starts at
/// `out`'s length on entry.
pub(super) fn write(draft: &MessageDraft<'_>, out: &mut Vec<u8>) {
    out.reserve(encoded_bytes_max(draft));
    let layout = TableLayout::of(draft);
    let vtable = layout.vtable_fields();
    let mut message = ForwardWriter::new(out);
    let vtable_at = 4;
    let property_vtable = vtable_at + 4 + 2 * vtable.len();
    let mut table = property_vtable;
    if !draft.properties.is_empty() {
        table += 2 * PROPERTY_VTABLE.len();
    }
    let table = table.next_multiple_of(8);
    message.u32(table as u32);
    message.u16((4 + 2 * vtable.len()) as u16);
    message.u16(layout.bytes);
    for &at in vtable {
        message.u16(at);
    }
    if !draft.properties.is_empty() {
        for entry in PROPERTY_VTABLE {
            message.u16(entry);
        }
    }
    message.pad_to(table);
    // The table; its offset fields are filled in as their targets are
    // written after it.
    message.zeros(layout.bytes as usize);
    message.set_u32(table, (table - vtable_at) as u32);
    message.set_u64(table + layout.at(MSG_ID), draft.msg_id.0);
    message.set_u64(table + layout.at(MSG_ID) + 8, draft.msg_id.1);
    let scalars = [
        (PRODUCER_ID, draft.producer_id),
        (SEQUENCE, draft.sequence),
        (BORN_TIMESTAMP, draft.born_timestamp_us),
        (DELIVER_AT, draft.deliver_at_ms),
    ];
    for (field, value) in scalars {
        if value != 0 {
            message.set_u64(table + layout.at(field), value);
        }
    }
    if draft.queue != 0 {
        message.set_u32(table + layout.at(QUEUE), draft.queue);
    }
    if draft.delay_level != 0 {
        message.set_u8(table + layout.at(DELAY_LEVEL), draft.delay_level);
    }
    if draft.half {
        message.set_u8(table + layout.at(TRANSACTION), 1);
    }

    message.point(table + layout.at(TOPIC));
    message.string(draft.topic);
    if !draft.keys.is_empty() {
        message.point(table + layout.at(KEYS));
        message.strings(draft.keys.iter().copied());
    }
    if let Some(tag) = draft.tag {
        message.point(table + layout.at(TAGS));
        message.string(tag);
    }
    if !draft.properties.is_empty() {
        message.point(table + layout.at(PROPERTIES));
        properties(&mut message, property_vtable, draft.properties);
    }
    message.point(table + layout.at(BODY));
    message.bytes_vector(draft.body);
    if let Some(group) = draft.producer_group {
        message.point(table + layout.at(PRODUCER_GROUP));
        message.string(group);
    }
    if let Some(id) = draft.transaction_id {
        message.point(table + layout.at(TRANSACTION_ID));
        message.string(id);
    }
}

/// At most what `write` appends (each string or vector padded by up to 3,
/// plus its length and terminator).
fn encoded_bytes_max(draft: &MessageDraft<'_>) -> usize {
    let string = |text: &str| 4 + text.len() + 4;
    let optional = |text: Option<&str>| text.map_or(0, string);
    // Root, the largest vtables and padding, the largest table.
    4 + (4 + 2 * MESSAGE_FIELDS)
        + 2 * PROPERTY_VTABLE.len()
        + 8
        + 4
        + 16
        + 4 * 8
        + 8 * 4
        + 2
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

/// The `properties` vector, then each `Property` table (behind the vtable
/// at `vtable`) and its two strings.
fn properties(message: &mut ForwardWriter<'_>, vtable: usize, properties: &[(&str, &str)]) {
    let first = message.offsets(properties.len());
    for (index, (key, value)) in properties.iter().enumerate() {
        message.point(first + 4 * index);
        let table = message.at();
        message.zeros(PROPERTY_TABLE_BYTES);
        message.set_u32(table, (table - vtable) as u32);
        message.point(table + PROPERTY_VTABLE[2] as usize);
        message.string(key);
        message.point(table + PROPERTY_VTABLE[3] as usize);
        message.string(value);
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
        let built = draft.built_by_flatbuffers();
        assert_eq!(read(&written), read(&built), "{draft:?}");
        // As compact as the builder's (which pads its start to 8).
        assert!(written.len() <= built.len() + 4, "{} bytes against {}: {draft:?}", written.len(), built.len());
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
