//! The message verifier (`wire::verify_message`) on arbitrary bytes: its
//! fast checks and flatbuffers' verifier agree, and it gives a refusal with
//! a reason, or a message whose every accessor reads without
//! a panic and agrees with the fields read at verification, and which the
//! produce path's own checks judge without a panic.

use super::{within, ALLOCATION_SLACK_BYTES, FAILURE_MESSAGE_BYTES_MAX};
use crate::constants::MESSAGE_SIZE_BYTES_MAX;
use crate::server::requests::{self, MessageLimits};
use crate::wire::generated::TransactionKind;
use crate::wire::{message_verifiers_agree, tag_hash, verify_message, VerifiedMessage, WireError};
use bytes::Bytes;

pub fn message(data: &[u8]) {
    // The fast checks never say yes where flatbuffers' verifier says no.
    assert!(message_verifiers_agree(data), "the message verifiers disagree");
    let bytes = Bytes::copy_from_slice(data);
    // The broker never copies a message: nothing near its size is allocated.
    within(ALLOCATION_SLACK_BYTES, "message verification", || match verify_message(bytes.clone()) {
        Ok(verified) => {
            assert_eq!(verified.bytes(), &bytes, "a verified message keeps the producer's bytes");
            read_every_field(&verified);
            let _ = requests::check_produced(&verified, &MessageLimits::fuzzing());
        }
        Err(error) => assert_clear(&error, data.len()),
    });
}

fn assert_clear(error: &WireError, size_bytes: usize) {
    let text = error.to_string();
    assert!(!text.is_empty() && text.len() <= FAILURE_MESSAGE_BYTES_MAX, "unclear refusal: {text:.200}");
    if let WireError::MessageTooLarge { .. } = error {
        assert!(size_bytes > MESSAGE_SIZE_BYTES_MAX, "{text}");
    }
}

/// Reads every field of a verified message, as broker and consumers do.
pub(super) fn read_every_field(verified: &VerifiedMessage) {
    let message = verified.message();
    let msg_id = message.msg_id();
    assert_eq!((msg_id.hi(), msg_id.lo()), verified.msg_id);
    assert!(!message.topic().is_empty(), "a verified message names its topic");
    assert_eq!(message.queue(), verified.queue);
    assert_eq!(message.tags().map_or(0, tag_hash), verified.tag_hash);
    assert_eq!((message.producer_id(), message.sequence()), (verified.producer_id, verified.sequence));
    assert_eq!(message.transaction() == TransactionKind::Half, verified.is_half);
    assert_eq!((message.delay_level(), message.deliver_at_ms()), (verified.delay_level, verified.deliver_at_ms));
    // Every string and vector the verifier passed reads back whole.
    let keys: usize = message.keys().into_iter().flatten().map(str::len).sum();
    let properties: usize =
        message.properties().into_iter().flatten().map(|property| property.key().len() + property.value().len()).sum();
    let body = message.body().map_or(0, |body| body.bytes().len());
    let producer_group = message.producer_group().map_or(0, str::len);
    let transaction_id = message.transaction_id().map_or(0, str::len);
    std::hint::black_box((keys, properties, body, producer_group, transaction_id, message.born_timestamp_us()));
    std::hint::black_box(message.transaction().variant_name());
}
