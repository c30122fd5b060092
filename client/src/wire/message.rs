//! Verifying a producer's message, and building one (for the client).
//!
//! The broker never re-encodes a message: a [`VerifiedMessage`] owns the
//! producer's bytes and the few fields the broker routes by, read once.

use super::generated::{Message, TransactionKind};
#[cfg(test)]
use super::generated::{MessageArgs, MessageId};
use super::Finished;
use crate::constants::{
    CLIENT_ID_BYTES_MAX, KEYS_INDEXED_PER_MESSAGE_MAX, MESSAGE_KEYS_MAX, MESSAGE_KEY_BYTES_MAX, MESSAGE_PROPERTIES_MAX,
    MESSAGE_PROPERTY_NAME_BYTES_MAX, MESSAGE_SIZE_BYTES_MAX, MESSAGE_TAG_BYTES_MAX, NAME_BYTES_MAX,
    TOPIC_NAME_BYTES_MAX, VERIFIER_DEPTH_MAX, VERIFIER_TABLES_MAX,
};
use bytes::Bytes;
#[cfg(test)]
use flatbuffers::FlatBufferBuilder;
use flatbuffers::VerifierOptions;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {size_bytes} bytes exceeds the maximum of {max_bytes} bytes")]
    MessageTooLarge { size_bytes: usize, max_bytes: usize },
    #[error("invalid message flatbuffer: {0}")]
    InvalidMessage(String),
    #[error("message topic is empty")]
    EmptyTopic,
    #[error("the message's {field} of {bytes} bytes is longer than the {max}-byte maximum")]
    FieldTooLong { field: &'static str, bytes: usize, max: usize },
    #[error("the message has {count} {field}, more than the {max} a message may have")]
    TooMany { field: &'static str, count: usize, max: usize },
}

pub(super) fn verifier_options() -> VerifierOptions {
    VerifierOptions {
        max_depth: VERIFIER_DEPTH_MAX,
        max_tables: VERIFIER_TABLES_MAX,
        max_apparent_size: MESSAGE_SIZE_BYTES_MAX,
        ignore_missing_null_terminator: false,
    }
}

/// Hash of a tag, kept in the queue index for filtering without reading
/// the message.
pub fn tag_hash(tag: &str) -> u32 {
    crc32fast::hash(tag.as_bytes())
}

/// Hash of a message key within its topic, kept in the key index (FNV-1a,
/// 64 bits, over the topic, a 0xff byte no UTF-8 text holds, and the key).
/// Persisted in key files: it must never change.
pub fn key_hash(topic: &str, key: &str) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = topic.as_bytes().iter().chain(&[0xff]).chain(key.as_bytes());
    bytes.fold(OFFSET_BASIS, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME))
}

/// The key-index hashes of `message`: its first `KEYS_INDEXED_PER_MESSAGE_MAX`
/// non-empty keys, each once.
fn message_key_hashes(message: &Message<'_>, hashes: &mut Vec<u64>) {
    let Some(keys) = message.keys() else { return };
    let topic = message.topic();
    for key in keys.iter().filter(|key| !key.is_empty()).take(KEYS_INDEXED_PER_MESSAGE_MAX) {
        let hash = key_hash(topic, key);
        if !hashes.contains(&hash) {
            hashes.push(hash);
        }
    }
}

/// The key-index hashes of a stored message's bytes (`storage::KeyHasher`
/// for rebuilding key files from the log); none if it does not verify.
pub fn stored_key_hashes(bytes: &[u8], hashes: &mut Vec<u64>) {
    if let Ok(message) = super::message_verifier::verify(bytes) {
        message_key_hashes(&message, hashes);
    }
}

/// A message that passed the flatbuffers verifier with the broker's limits.
#[derive(Clone, Debug)]
pub struct VerifiedMessage {
    bytes: Bytes,
    pub msg_id: (u64, u64),
    pub queue: u32,
    pub tag_hash: u32,
    pub producer_id: u64,
    pub sequence: u64,
    pub is_half: bool,
    pub delay_level: u8,
    pub deliver_at_ms: u64,
}

/// Verifies `bytes` as a `Message` within the broker's limits.
pub fn verify_message(bytes: Bytes) -> Result<VerifiedMessage, WireError> {
    if bytes.len() > MESSAGE_SIZE_BYTES_MAX {
        return Err(WireError::MessageTooLarge { size_bytes: bytes.len(), max_bytes: MESSAGE_SIZE_BYTES_MAX });
    }
    let message =
        super::message_verifier::verify(&bytes).map_err(|error| WireError::InvalidMessage(error.to_string()))?;
    if message.topic().is_empty() {
        return Err(WireError::EmptyTopic);
    }
    let msg_id = message.msg_id();
    let verified = VerifiedMessage {
        msg_id: (msg_id.hi(), msg_id.lo()),
        queue: message.queue(),
        tag_hash: message.tags().map(tag_hash).unwrap_or(0),
        producer_id: message.producer_id(),
        sequence: message.sequence(),
        is_half: message.transaction() == TransactionKind::Half,
        delay_level: message.delay_level(),
        deliver_at_ms: message.deliver_at_ms(),
        bytes: Bytes::new(),
    };
    Ok(VerifiedMessage { bytes, ..verified })
}

fn check_length(field: &'static str, text: Option<&str>, max: usize) -> Result<(), WireError> {
    let bytes = text.map_or(0, str::len);
    if bytes > max {
        return Err(WireError::FieldTooLong { field, bytes, max });
    }
    Ok(())
}

fn check_count(field: &'static str, count: usize, max: usize) -> Result<(), WireError> {
    if count > max {
        return Err(WireError::TooMany { field, count, max });
    }
    Ok(())
}

/// The caps on what a new message names, checked where the broker takes
/// it in (a produce), not where anyone reads it: a message stored before a
/// cap existed still reads.
pub fn check_message_fields(message: &Message<'_>) -> Result<(), WireError> {
    check_length("topic", Some(message.topic()), TOPIC_NAME_BYTES_MAX)?;
    check_length("tag", message.tags(), MESSAGE_TAG_BYTES_MAX)?;
    let keys = message.keys().into_iter().flatten();
    check_count("keys", message.keys().map_or(0, |keys| keys.len()), MESSAGE_KEYS_MAX)?;
    for key in keys {
        check_length("key", Some(key), MESSAGE_KEY_BYTES_MAX)?;
    }
    check_count("properties", message.properties().map_or(0, |properties| properties.len()), MESSAGE_PROPERTIES_MAX)?;
    for property in message.properties().into_iter().flatten() {
        check_length("property name", Some(property.key()), MESSAGE_PROPERTY_NAME_BYTES_MAX)?;
    }
    check_length("producer group", message.producer_group(), NAME_BYTES_MAX)?;
    check_length("transaction id", message.transaction_id(), CLIENT_ID_BYTES_MAX)
}

impl VerifiedMessage {
    /// The producer's bytes, unchanged.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Its key-index hashes (see `stored_key_hashes`).
    pub fn key_hashes(&self) -> Vec<u64> {
        let mut hashes = Vec::new();
        message_key_hashes(&self.message(), &mut hashes);
        hashes
    }

    /// Whether `key` is one of its keys.
    pub fn has_key(&self, key: &str) -> bool {
        self.message().keys().is_some_and(|keys| keys.iter().any(|candidate| candidate == key))
    }

    /// Reads the message; cannot fail, it was verified.
    pub fn message(&self) -> Message<'_> {
        // SAFETY: `bytes` passed `root_with_opts::<Message>` in
        // `verify_message` and is immutable since.
        unsafe { flatbuffers::root_unchecked::<Message>(&self.bytes) }
    }
}

/// A draft with every field set, for tests of what reads and writes
/// messages.
#[cfg(test)]
pub(super) fn every_field_set() -> MessageDraft<'static> {
    MessageDraft {
        msg_id: (1, 2),
        topic: "orders",
        queue: 3,
        keys: &["k1", "", "key-two"],
        tag: Some("blue"),
        properties: &[("a", "1"), ("name", "")],
        body: &[],
        producer_id: 9,
        sequence: 10,
        born_timestamp_us: 11,
        delay_level: 2,
        deliver_at_ms: 12,
        half: true,
        producer_group: Some("group"),
        transaction_id: Some("tx-1"),
    }
}

thread_local! {
    /// The buffer `with_built` encodes into, kept between messages.
    static REUSED_MESSAGE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Room `build_in_place` leaves in front of a message: a frame header,
/// rounded up so the message starts 8-aligned.
const FRAME_ROOM_BYTES: usize = crate::protocol::FRAME_HEADER_BYTES.next_multiple_of(8);

/// The fields a producer sets; `build` encodes them once, for good.
#[derive(Clone, Debug, Default)]
pub struct MessageDraft<'a> {
    pub msg_id: (u64, u64),
    pub topic: &'a str,
    pub queue: u32,
    pub keys: &'a [&'a str],
    pub tag: Option<&'a str>,
    pub properties: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub producer_id: u64,
    pub sequence: u64,
    pub born_timestamp_us: u64,
    pub delay_level: u8,
    pub deliver_at_ms: u64,
    pub half: bool,
    pub producer_group: Option<&'a str>,
    pub transaction_id: Option<&'a str>,
}

impl MessageDraft<'_> {
    /// The message, encoded (`message_writer`).
    pub fn build(&self) -> Vec<u8> {
        let mut message = Vec::new();
        super::message_writer::write(self, &mut message);
        message
    }

    /// The message with room in front of it for a frame header
    /// (`protocol::WireFrame::in_place`).
    pub fn build_in_place(&self) -> Finished {
        let start = FRAME_ROOM_BYTES;
        let mut buffer = vec![0; start];
        super::message_writer::write(self, &mut buffer);
        Finished::new(buffer, start)
    }

    /// Calls `use_message` with the message encoded in the thread's reused
    /// buffer (a large one in a buffer of its own, which the thread would
    /// not keep); a call from inside `use_message` gets a buffer of its own.
    pub fn with_built<R>(&self, use_message: impl FnOnce(&[u8]) -> R) -> R {
        let mut buffer = REUSED_MESSAGE.with(|reused| reused.take());
        buffer.clear();
        super::message_writer::write(self, &mut buffer);
        let result = use_message(&buffer);
        if buffer.capacity() <= super::REUSED_BUILDER_BYTES_MAX {
            REUSED_MESSAGE.with(|reused| reused.replace(buffer));
        }
        result
    }

    /// Appends the message to `out`, starting at its length on entry.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        super::message_writer::write(self, out);
    }

    /// The same message through flatbuffers' builder: the oracle of
    /// `message_writer`'s tests.
    #[cfg(test)]
    pub(super) fn built_by_flatbuffers(&self) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        self.encode(&mut builder);
        builder.finished_data().to_vec()
    }

    #[cfg(test)]
    fn encode(&self, builder: &mut FlatBufferBuilder<'_>) {
        let topic = builder.create_string(self.topic);
        let keys: Vec<_> = self.keys.iter().map(|key| builder.create_string(key)).collect();
        let keys = (!keys.is_empty()).then(|| builder.create_vector(&keys));
        let tags = self.tag.map(|tag| builder.create_string(tag));
        let properties: Vec<_> = self
            .properties
            .iter()
            .map(|(key, value)| {
                let key = builder.create_string(key);
                let value = builder.create_string(value);
                super::generated::Property::create(
                    builder,
                    &super::generated::PropertyArgs { key: Some(key), value: Some(value) },
                )
            })
            .collect();
        let properties = (!properties.is_empty()).then(|| builder.create_vector(&properties));
        let body = builder.create_vector(self.body);
        let producer_group = self.producer_group.map(|group| builder.create_string(group));
        let transaction_id = self.transaction_id.map(|id| builder.create_string(id));
        let msg_id = MessageId::new(self.msg_id.0, self.msg_id.1);
        let args = MessageArgs {
            msg_id: Some(&msg_id),
            topic: Some(topic),
            queue: self.queue,
            keys,
            tags,
            properties,
            body: Some(body),
            producer_id: self.producer_id,
            sequence: self.sequence,
            born_timestamp_us: self.born_timestamp_us,
            delay_level: self.delay_level,
            deliver_at_ms: self.deliver_at_ms,
            transaction: if self.half { TransactionKind::Half } else { TransactionKind::None },
            producer_group,
            transaction_id,
        };
        let message = Message::create(builder, &args);
        builder.finish_minimal(message);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_hash_never_changes_and_separates_topic_from_key() {
        // Key files on disk hold these hashes: a new value is a format change.
        assert_eq!(key_hash("orders", "order-17"), 0x5464_a42c_5cd1_2c7a);
        assert_ne!(key_hash("ab", "c"), key_hash("a", "bc"));
    }

    use super::*;

    /// The caps a produce checks, on a message built with `draft`.
    fn fields_of(draft: MessageDraft<'_>) -> Result<(), WireError> {
        let verified = verify_message(Bytes::from(draft.build())).expect("a message");
        check_message_fields(&verified.message())
    }

    #[test]
    fn a_new_message_past_a_field_cap_is_refused_naming_the_field() {
        let base = || MessageDraft { topic: "t", body: b"b", ..MessageDraft::default() };
        assert!(fields_of(base()).is_ok());
        let tag = "x".repeat(MESSAGE_TAG_BYTES_MAX);
        assert!(fields_of(MessageDraft { tag: Some(&tag), ..base() }).is_ok(), "at the cap");
        let tag = "x".repeat(MESSAGE_TAG_BYTES_MAX + 1);
        let error = fields_of(MessageDraft { tag: Some(&tag), ..base() }).expect_err("a long tag");
        assert_eq!(error.to_string(), "the message's tag of 256 bytes is longer than the 255-byte maximum");
        let key = "k".repeat(MESSAGE_KEY_BYTES_MAX + 1);
        let keys = [key.as_str()];
        assert!(fields_of(MessageDraft { keys: &keys, ..base() }).is_err(), "a long key");
        let many: Vec<&str> = vec!["k"; MESSAGE_KEYS_MAX + 1];
        let error = fields_of(MessageDraft { keys: &many, ..base() }).expect_err("many keys");
        assert!(matches!(error, WireError::TooMany { field: "keys", .. }), "{error}");
        let name = "p".repeat(MESSAGE_PROPERTY_NAME_BYTES_MAX + 1);
        let properties = [(name.as_str(), "v")];
        assert!(fields_of(MessageDraft { properties: &properties, ..base() }).is_err(), "a long property name");
        let topic = "t".repeat(TOPIC_NAME_BYTES_MAX + 1);
        assert!(fields_of(MessageDraft { topic: &topic, ..base() }).is_err(), "a long topic");
    }

    #[test]
    fn a_built_message_verifies_and_reads_back_unchanged() {
        let draft = MessageDraft {
            msg_id: (1, 2),
            topic: "orders",
            queue: 3,
            keys: &["k1"],
            tag: Some("blue"),
            body: b"payload",
            producer_id: 9,
            sequence: 10,
            ..MessageDraft::default()
        };
        let bytes = Bytes::from(draft.build());
        let verified = verify_message(bytes.clone()).unwrap();
        assert_eq!(verified.bytes(), &bytes);
        assert_eq!(verified.msg_id, (1, 2));
        assert_eq!(verified.tag_hash, tag_hash("blue"));
        assert_eq!(verified.message().body().map(|body| body.bytes()), Some(&b"payload"[..]));
        assert_eq!(&draft.build_in_place()[..], &bytes[..], "the reused builder and a fresh one agree");
        let other = MessageDraft { topic: "o", body: b"p", ..draft.clone() }.build();
        assert_eq!(verify_message(Bytes::from(other)).unwrap().message().topic(), "o");
        assert_eq!(draft.build(), bytes, "nothing of a longer message before stays in the reused builder");
        let large_body = vec![7; 100 * 1024];
        let large = MessageDraft { body: &large_body, ..draft.clone() };
        assert_eq!(large.build(), large.build_in_place().to_vec(), "a large message, in a builder of its own");
    }

    #[test]
    fn garbage_and_truncated_messages_are_refused() {
        assert!(matches!(verify_message(Bytes::from_static(b"garbage!")), Err(WireError::InvalidMessage(_))));
        let draft = MessageDraft { topic: "t", body: &[7; 100], ..MessageDraft::default() };
        let bytes = draft.build();
        let truncated = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
        assert!(verify_message(truncated).is_err());
    }

    #[test]
    fn an_oversized_message_is_refused_before_parsing() {
        let huge = Bytes::from(vec![0; MESSAGE_SIZE_BYTES_MAX + 1]);
        assert!(matches!(verify_message(huge), Err(WireError::MessageTooLarge { .. })));
    }
}
