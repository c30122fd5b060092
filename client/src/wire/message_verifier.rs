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
//! Mirrored from flatbuffers 23.5.26 (`verifier.rs`) with the broker's
//! `VerifierOptions`: positions are checked for alignment relative to the
//! buffer's start; every range checked adds its size to an apparent size
//! that must stay within `MESSAGE_SIZE_BYTES_MAX`; tables count towards
//! `VERIFIER_TABLES_MAX`; strings are UTF-8 with a zero byte after them.

use super::generated::{Message, Property};
use crate::constants::{MESSAGE_SIZE_BYTES_MAX, VERIFIER_DEPTH_MAX, VERIFIER_TABLES_MAX};

/// The vtable of a `Message` with every field this verifier knows (the
/// last is `transaction_id`). A longer vtable carries fields added to the
/// schema after this file: such a message goes to flatbuffers' verifier,
/// which the generated code keeps up to date.
const MESSAGE_VTABLE_BYTES_MAX: usize = Message::VT_TRANSACTION_ID as usize + 2;
/// `Message` and its `Property` tables: the deepest a message nests.
const MESSAGE_DEPTH: usize = 2;
const _: () = assert!(MESSAGE_DEPTH <= VERIFIER_DEPTH_MAX);

const OFFSET_BYTES: usize = 4;

/// Whether flatbuffers' verifier would accept `bytes` as a `Message`.
pub(super) fn verifies(bytes: &[u8]) -> bool {
    Walk { buffer: bytes, apparent_bytes: 0, tables: 0 }.message().is_some()
}

/// A table being verified: where it is and where its vtable is.
struct Table {
    position: usize,
    vtable: usize,
    vtable_bytes: usize,
}

/// One verification. `None` anywhere: flatbuffers would refuse the buffer.
struct Walk<'a> {
    buffer: &'a [u8],
    apparent_bytes: usize,
    tables: usize,
}

impl Walk<'_> {
    fn message(&mut self) -> Option<()> {
        let root = self.offset_target(0)?;
        let message = self.table_at(root)?;
        if message.vtable_bytes > MESSAGE_VTABLE_BYTES_MAX {
            return None;
        }
        // `msg_id`: a struct of two u64 as 16 bytes, alignment 1 (flatc's
        // `repr(transparent)` byte array).
        // (`field(..)??`: a required field missing is a refusal.)
        let msg_id = self.field(&message, Message::VT_MSG_ID)??;
        self.range(msg_id, 16)?;
        let topic = self.field(&message, Message::VT_TOPIC)??;
        self.string(topic)?;
        self.scalar_if_present(&message, Message::VT_QUEUE, 4)?;
        if let Some(keys) = self.field(&message, Message::VT_KEYS)? {
            self.each_offset(keys, |walk, key| walk.string(key))?;
        }
        if let Some(tags) = self.field(&message, Message::VT_TAGS)? {
            self.string(tags)?;
        }
        if let Some(properties) = self.field(&message, Message::VT_PROPERTIES)? {
            self.each_offset(properties, Self::property)?;
        }
        if let Some(body) = self.field(&message, Message::VT_BODY)? {
            let body = self.offset_target(body)?;
            self.vector(body, 1)?;
        }
        self.scalar_if_present(&message, Message::VT_PRODUCER_ID, 8)?;
        self.scalar_if_present(&message, Message::VT_SEQUENCE, 8)?;
        self.scalar_if_present(&message, Message::VT_BORN_TIMESTAMP_US, 8)?;
        self.scalar_if_present(&message, Message::VT_DELAY_LEVEL, 1)?;
        self.scalar_if_present(&message, Message::VT_DELIVER_AT_MS, 8)?;
        self.scalar_if_present(&message, Message::VT_TRANSACTION, 1)?;
        for text in [Message::VT_PRODUCER_GROUP, Message::VT_TRANSACTION_ID] {
            if let Some(field) = self.field(&message, text)? {
                self.string(field)?;
            }
        }
        Some(())
    }

    /// The offset at `position` points at a `Property` table: its key and
    /// value, both required.
    fn property(&mut self, position: usize) -> Option<()> {
        let target = self.offset_target(position)?;
        let property = self.table_at(target)?;
        for text in [Property::VT_KEY, Property::VT_VALUE] {
            let field = self.field(&property, text)??;
            self.string(field)?;
        }
        Some(())
    }

    /// `range_in_buffer`: in the buffer, counted into the apparent size.
    fn range(&mut self, position: usize, size: usize) -> Option<()> {
        if position.saturating_add(size) > self.buffer.len() {
            return None;
        }
        self.apparent_bytes += size;
        (self.apparent_bytes <= MESSAGE_SIZE_BYTES_MAX).then_some(())
    }

    /// `in_buffer` of a scalar, whose alignment is its size.
    fn scalar(&mut self, position: usize, size: usize) -> Option<()> {
        debug_assert!(size.is_power_of_two() && size <= 8);
        if position % size != 0 {
            return None;
        }
        self.range(position, size)
    }

    fn scalar_if_present(&mut self, table: &Table, field: u16, size: usize) -> Option<()> {
        match self.field(table, field)? {
            Some(position) => self.scalar(position, size),
            None => Some(()),
        }
    }

    fn u16_at(&mut self, position: usize) -> Option<usize> {
        self.scalar(position, 2)?;
        let bytes = self.buffer.get(position..position + 2)?;
        Some(usize::from(u16::from_le_bytes([bytes[0], bytes[1]])))
    }

    fn u32_at(&mut self, position: usize) -> Option<u32> {
        self.scalar(position, 4)?;
        let bytes = self.buffer.get(position..position + 4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Where the unsigned offset at `position` points.
    fn offset_target(&mut self, position: usize) -> Option<usize> {
        Some((self.u32_at(position)? as usize).saturating_add(position))
    }

    /// `visit_table`: the signed offset to the vtable, the vtable's length
    /// (even, in the buffer), the table and depth limits.
    fn table_at(&mut self, position: usize) -> Option<Table> {
        let soffset = self.u32_at(position)? as i32;
        let vtable = if soffset > 0 {
            position.checked_sub(soffset.unsigned_abs() as usize)?
        } else {
            position.checked_add(soffset.unsigned_abs() as usize)?
        };
        let vtable_bytes = self.u16_at(vtable)?;
        if vtable.saturating_add(vtable_bytes) % 2 != 0 {
            return None;
        }
        self.range(vtable, vtable_bytes)?;
        self.tables += 1;
        (self.tables <= VERIFIER_TABLES_MAX).then_some(Table { position, vtable, vtable_bytes })
    }

    /// `deref`: the field's position, if the vtable has it and it is set.
    fn field(&mut self, table: &Table, field: u16) -> Option<Option<usize>> {
        let field = usize::from(field);
        if field >= table.vtable_bytes {
            return Some(None);
        }
        let offset = self.u16_at(table.vtable.saturating_add(field))?;
        Some((offset > 0).then(|| table.position.saturating_add(offset)))
    }

    /// `verify_vector_range`: the length, the elements' alignment and room;
    /// the elements' range.
    fn vector(&mut self, position: usize, element_bytes: usize) -> Option<std::ops::Range<usize>> {
        let length = self.u32_at(position)? as usize;
        let start = position.saturating_add(OFFSET_BYTES);
        // The length was aligned: so are elements of at most its size.
        debug_assert!(start % element_bytes == 0);
        let size = length.saturating_mul(element_bytes);
        self.range(start, size)?;
        Some(start..start.saturating_add(size))
    }

    /// The field at `position` points at a vector of offsets: `visit`
    /// each of them.
    fn each_offset(&mut self, position: usize, visit: impl Fn(&mut Self, usize) -> Option<()>) -> Option<()> {
        let target = self.offset_target(position)?;
        let elements = self.vector(target, OFFSET_BYTES)?;
        elements.step_by(OFFSET_BYTES).try_for_each(|element| visit(self, element))
    }

    /// The field at `position` points at a string: UTF-8, followed by a
    /// zero byte.
    fn string(&mut self, position: usize) -> Option<()> {
        let target = self.offset_target(position)?;
        let text = self.vector(target, 1)?;
        if self.buffer.get(text.end) != Some(&0) {
            return None;
        }
        std::str::from_utf8(self.buffer.get(text)?).ok().map(|_| ())
    }
}

/// Whether `verifies` answers as flatbuffers' verifier does on `bytes`, or
/// says no where that verifier says yes to a message with fields newer
/// than this file knows: what the tests and the `message` fuzz target
/// check. Never a yes flatbuffers refuses.
pub fn agrees_with_flatbuffers(bytes: &[u8]) -> bool {
    let flatbuffers_yes = flatbuffers::root_with_opts::<Message>(&super::message::verifier_options(), bytes).is_ok();
    match (verifies(bytes), flatbuffers_yes) {
        (ours, theirs) if ours == theirs => true,
        (false, true) => root_vtable_bytes(bytes).is_some_and(|bytes| bytes > MESSAGE_VTABLE_BYTES_MAX),
        _ => false,
    }
}

/// The length of the root table's vtable (in a buffer flatbuffers accepted).
fn root_vtable_bytes(bytes: &[u8]) -> Option<usize> {
    let mut walk = Walk { buffer: bytes, apparent_bytes: 0, tables: 0 };
    let root = walk.offset_target(0)?;
    walk.table_at(root).map(|table| table.vtable_bytes)
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
        let full = MessageDraft {
            queue: 3,
            keys: &["k1", "", "key-two"],
            tag: Some("blue"),
            properties: &[("a", "1"), ("name", "")],
            producer_id: 9,
            sequence: 10,
            born_timestamp_us: 11,
            delay_level: 2,
            deliver_at_ms: 12,
            half: true,
            producer_group: Some("group"),
            transaction_id: Some("tx-1"),
            body: &[],
            ..plain.clone()
        };
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

    /// Writes `value`'s low bytes at `position`, as far as the buffer goes.
    fn overwrite(message: &mut [u8], position: usize, value: u32, width: usize) {
        for (index, byte) in value.to_le_bytes().iter().take(width).enumerate() {
            if let Some(slot) = message.get_mut(position + index) {
                *slot = *byte;
            }
        }
    }

    /// One random damage: a byte, a small or large offset-sized value at an
    /// aligned position, a cut, or bytes added at the end.
    fn damage(message: &mut Vec<u8>, random: &mut fastrand::Rng) {
        let position = random.usize(..message.len().max(1));
        match random.u8(..6) {
            0 => overwrite(message, position, random.u32(..), 1),
            1 => {
                let value = [0, 1, 2, 3, 4, 8, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, u32::MAX][random.usize(..11)];
                overwrite(message, position & !3, value, 4);
            }
            2 => overwrite(message, position & !1, random.u32(..64), 2),
            3 => message.truncate(position),
            4 => message.extend((0..random.usize(1..9)).map(|_| random.u8(..))),
            _ => {
                let delta = random.i32(-16..16);
                let at = position & !3;
                if let Some(word) = message.get(at..at + 4) {
                    let value = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                    overwrite(message, at, value.wrapping_add_signed(delta), 4);
                }
            }
        }
    }

    #[test]
    fn on_damaged_messages_the_fast_checks_answer_as_flatbuffers_does() {
        let mut random = fastrand::Rng::with_seed(0x7269_6e67);
        let (mut refused, mut accepted) = (0, 0);
        for base in drafts() {
            for _ in 0..25_000 {
                let mut message = base.clone();
                for _ in 0..random.usize(1..4) {
                    damage(&mut message, &mut random);
                }
                assert!(agrees_with_flatbuffers(&message), "they disagree on {message:?}");
                if verifies(&message) {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
        }
        // Both answers were given often: the damage reached the structure.
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

    #[test]
    fn a_field_newer_than_these_checks_goes_to_flatbuffers() {
        let mut builder = FlatBufferBuilder::new();
        let topic = builder.create_string("t");
        let msg_id = MessageId::new(1, 2);
        let start = builder.start_table();
        builder.push_slot_always(Message::VT_MSG_ID, &msg_id);
        builder.push_slot_always(Message::VT_TOPIC, topic);
        // A u32 in the slot after `transaction_id`.
        builder.push_slot_always::<u32>(Message::VT_TRANSACTION_ID + 2, 7);
        let message = builder.end_table(start);
        builder.finish_minimal(message);
        let bytes = builder.finished_data();
        assert!(!verifies(bytes));
        assert!(agrees_with_flatbuffers(bytes));
        assert!(crate::wire::verify_message(bytes::Bytes::copy_from_slice(bytes)).is_ok(), "accepted by flatbuffers");
    }
}
