//! The checks flatbuffers' generated verifier makes on a `Message`, written
//! out for this one schema: every produce runs them on every message, and
//! the generic verifier spent about 1,500 instructions per message building
//! and moving error values it then discarded.
//!
//! It answers only yes or no. `verify_message` asks flatbuffers' own
//! verifier whenever the answer is no, for the reason (and accepts if that
//! verifier does, so a check here that is stricter costs only time). A yes
//! must never be given where flatbuffers says no: the broker then reads the
//! message without checks. The tests below and the `message` fuzz target
//! compare the two answers on mutated and arbitrary bytes.
//!
//! The checks themselves are `walk`'s, with the broker's limits for a
//! message (`message::verifier_options`).

use super::generated::{Message, Property};
use super::message::verifier_options;
use super::walk::{self, Walk};
use crate::constants::VERIFIER_DEPTH_MAX;
#[cfg(test)]
use crate::constants::{MESSAGE_SIZE_BYTES_MAX, VERIFIER_TABLES_MAX};

/// `Message` and its `Property` tables: the deepest a message nests.
const MESSAGE_DEPTH: usize = 2;
const _: () = assert!(MESSAGE_DEPTH <= VERIFIER_DEPTH_MAX);

/// Verifies `bytes` as a `Message`, as `root_with_opts` with
/// `verifier_options()` does.
pub(super) fn verify(bytes: &[u8]) -> Result<Message<'_>, flatbuffers::InvalidFlatbuffer> {
    walk::verify_with::<Message>(bytes, &verifier_options(), message)
}

#[cfg(test)]
fn verifies(bytes: &[u8]) -> bool {
    walk::passes(bytes, &verifier_options(), message)
}

/// The generated verifier's checks on a `Message`, in its order.
fn message(walk: &mut Walk<'_>) -> Option<()> {
    let message = walk.root(Message::VT_TRANSACTION_ID)?;
    // (`field(..)??`: a required field missing is a refusal.) `msg_id`: a
    // struct of two u64 as 16 bytes, alignment 1 (flatc's
    // `repr(transparent)` byte array).
    let msg_id = walk.field(&message, Message::VT_MSG_ID)??;
    walk.range(msg_id, 16)?;
    let topic = walk.field(&message, Message::VT_TOPIC)??;
    walk.string(topic)?;
    walk.scalar_if_present(&message, Message::VT_QUEUE, 4)?;
    if let Some(keys) = walk.field(&message, Message::VT_KEYS)? {
        walk.each_offset(keys, |walk, key| walk.string(key))?;
    }
    if let Some(tags) = walk.field(&message, Message::VT_TAGS)? {
        walk.string(tags)?;
    }
    if let Some(properties) = walk.field(&message, Message::VT_PROPERTIES)? {
        walk.each_offset(properties, property)?;
    }
    if let Some(body) = walk.field(&message, Message::VT_BODY)? {
        walk.bytes(body)?;
    }
    walk.scalar_if_present(&message, Message::VT_PRODUCER_ID, 8)?;
    walk.scalar_if_present(&message, Message::VT_SEQUENCE, 8)?;
    walk.scalar_if_present(&message, Message::VT_BORN_TIMESTAMP_US, 8)?;
    walk.scalar_if_present(&message, Message::VT_DELAY_LEVEL, 1)?;
    walk.scalar_if_present(&message, Message::VT_DELIVER_AT_MS, 8)?;
    walk.scalar_if_present(&message, Message::VT_TRANSACTION, 1)?;
    for text in [Message::VT_PRODUCER_GROUP, Message::VT_TRANSACTION_ID] {
        if let Some(field) = walk.field(&message, text)? {
            walk.string(field)?;
        }
    }
    Some(())
}

/// The offset at `position` points at a `Property` table: its key and
/// value, both required.
fn property(walk: &mut Walk<'_>, position: usize) -> Option<()> {
    let property = walk.table_behind(position, Property::VT_VALUE)?;
    for text in [Property::VT_KEY, Property::VT_VALUE] {
        let field = walk.field(&property, text)??;
        walk.string(field)?;
    }
    Some(())
}

/// Whether the checks here answer as flatbuffers' verifier does on
/// `bytes` (see `walk::agrees_with_flatbuffers`): what the tests and the
/// `message` fuzz target check.
pub fn agrees_with_flatbuffers(bytes: &[u8]) -> bool {
    walk::agrees_with_flatbuffers::<Message>(bytes, &verifier_options(), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::generated::{MessageArgs, MessageId, PropertyArgs};
    use crate::wire::MessageDraft;
    use flatbuffers::FlatBufferBuilder;

    /// Messages of every shape a client builds.
    fn drafts() -> Vec<Vec<u8>> {
        let plain = MessageDraft { msg_id: (1, 2), topic: "orders", body: b"payload", ..MessageDraft::default() };
        let full = crate::wire::message::every_field_set();
        let unicode = MessageDraft { topic: "caf\u{e9}", tag: Some("\u{1f600}"), ..plain.clone() };
        let kilobyte = MessageDraft { body: &[7; 1024], ..plain.clone() };
        [plain, full, unicode, kilobyte].iter().map(MessageDraft::build).collect()
    }

    #[test]
    fn every_shape_a_client_builds_takes_the_fast_checks() {
        for message in drafts() {
            assert!(verifies(&message), "{message:?}");
            assert!(agrees_with_flatbuffers(&message));
        }
    }

    #[test]
    fn on_damaged_messages_the_fast_checks_answer_as_flatbuffers_does() {
        let (refused, accepted) =
            crate::wire::walk::answers_on_damage(drafts(), 0x7269_6e67, verifies, agrees_with_flatbuffers);
        assert!(refused > 20_000 && accepted > 10_000, "refused {refused}, accepted {accepted}");
    }

    /// A message whose `keys` are `count` references to one string of
    /// `key_bytes`, or whose `properties` are `count` references to one table.
    fn shared(key_bytes: usize, keys: usize, properties: usize) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let topic = builder.create_string("t");
        let key = builder.create_string(&"k".repeat(key_bytes));
        let keys = builder.create_vector(&vec![key; keys]);
        let (name, value) = (builder.create_string("n"), builder.create_string("v"));
        let property = Property::create(&mut builder, &PropertyArgs { key: Some(name), value: Some(value) });
        let properties = builder.create_vector(&vec![property; properties]);
        let msg_id = MessageId::new(1, 2);
        let args = MessageArgs {
            msg_id: Some(&msg_id),
            topic: Some(topic),
            keys: Some(keys),
            properties: Some(properties),
            ..MessageArgs::default()
        };
        let message = Message::create(&mut builder, &args);
        builder.finish_minimal(message);
        builder.finished_data().to_vec()
    }

    #[test]
    fn shared_strings_and_tables_count_towards_the_apparent_size_and_the_table_limit() {
        let key_bytes = 64 * 1024;
        // Each reference counts the string's bytes again, plus its length,
        // terminator excluded, and the 4-byte reference.
        let fits = MESSAGE_SIZE_BYTES_MAX / (key_bytes + 8) - 1;
        for (message, expected) in [
            (shared(key_bytes, fits, 0), true),
            (shared(key_bytes, fits + 2, 0), false),
            (shared(1, 1, VERIFIER_TABLES_MAX - 1), true),
            (shared(1, 1, VERIFIER_TABLES_MAX), false),
        ] {
            assert_eq!(verifies(&message), expected);
            assert!(agrees_with_flatbuffers(&message));
        }
    }

    /// A message with one field newer than these checks: in itself, or
    /// (`in_property`) in its one `Property`.
    fn with_newer_field(in_property: bool) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let (key, value) = (builder.create_string("k"), builder.create_string("v"));
        let start = builder.start_table();
        builder.push_slot_always(Property::VT_KEY, key);
        builder.push_slot_always(Property::VT_VALUE, value);
        if in_property {
            builder.push_slot_always::<u32>(Property::VT_VALUE + 2, 7);
        }
        let property = flatbuffers::WIPOffset::<Property>::new(builder.end_table(start).value());
        let properties = builder.create_vector(&[property]);
        let topic = builder.create_string("t");
        let msg_id = MessageId::new(1, 2);
        let start = builder.start_table();
        builder.push_slot_always(Message::VT_MSG_ID, msg_id);
        builder.push_slot_always(Message::VT_TOPIC, topic);
        builder.push_slot_always(Message::VT_PROPERTIES, properties);
        if !in_property {
            // A u32 in the slot after `transaction_id`.
            builder.push_slot_always::<u32>(Message::VT_TRANSACTION_ID + 2, 7);
        }
        let message = builder.end_table(start);
        builder.finish_minimal(message);
        builder.finished_data().to_vec()
    }

    #[test]
    fn a_field_newer_than_these_checks_goes_to_flatbuffers() {
        for in_property in [false, true] {
            let bytes = with_newer_field(in_property);
            assert!(!verifies(&bytes), "newer field in the property: {in_property}");
            assert!(agrees_with_flatbuffers(&bytes));
            let verified = crate::wire::verify_message(bytes::Bytes::copy_from_slice(&bytes));
            assert!(verified.is_ok(), "accepted by flatbuffers");
        }
    }
}
