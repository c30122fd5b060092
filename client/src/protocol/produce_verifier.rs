//! The checks flatbuffers' generated verifier makes on a `ProduceRequest`,
//! written out as `wire::message_verifier` does for a message, and for the
//! same reason: the broker verifies every produce request, and the generic
//! verifier spent about 1,500 instructions on one of a single message.
//!
//! A no goes to flatbuffers' verifier for the reason (`verify`), as does a
//! request whose vtables are longer than the fields known here. The tests
//! below and the `request` fuzz target compare the two answers.

use super::{fb, verify, BODY_APPARENT_BYTES_MAX};
use crate::constants::VERIFIER_DEPTH_MAX;
use crate::wire::walk::Walk;

/// The vtables with every field known here; a longer one carries fields
/// added to the schema after this file.
const REQUEST_VTABLE_BYTES_MAX: usize = fb::ProduceRequest::VT_SKIP_GAP as usize + 2;
const MESSAGE_BYTES_VTABLE_BYTES_MAX: usize = fb::MessageBytes::VT_BYTES as usize + 2;
/// The request and its `MessageBytes` tables.
const REQUEST_DEPTH: usize = 2;
const _: () = assert!(REQUEST_DEPTH <= VERIFIER_DEPTH_MAX);

/// Verifies a produce request's body, as `verify::<fb::ProduceRequest>`
/// does, with its reason on a refusal.
pub fn verify_produce_request(body: &[u8]) -> Result<fb::ProduceRequest<'_>, String> {
    if verifies(body) {
        // SAFETY: `verifies` said yes only where `verify` (flatbuffers'
        // `root_with_opts` with the same limits) would; the tests below
        // and the `request` fuzz target compare the two.
        return Ok(unsafe { flatbuffers::root_unchecked::<fb::ProduceRequest>(body) });
    }
    verify::<fb::ProduceRequest>(body)
}

fn verifies(body: &[u8]) -> bool {
    request(&mut Walk::new(body, BODY_APPARENT_BYTES_MAX)).is_some()
}

/// The generated verifier's checks on a `ProduceRequest`, in its order.
fn request(walk: &mut Walk<'_>) -> Option<()> {
    let request = walk.root()?;
    if request.vtable_bytes > REQUEST_VTABLE_BYTES_MAX {
        return None;
    }
    // (`field(..)??`: a required field missing is a refusal.)
    let topic = walk.field(&request, fb::ProduceRequest::VT_TOPIC)??;
    walk.string(topic)?;
    walk.scalar_if_present(&request, fb::ProduceRequest::VT_QUEUE, 4)?;
    let messages = walk.field(&request, fb::ProduceRequest::VT_MESSAGES)??;
    walk.each_offset(messages, message_bytes)?;
    walk.scalar_if_present(&request, fb::ProduceRequest::VT_SKIP_GAP, 1)
}

/// The offset at `position` points at a `MessageBytes` table: its bytes,
/// required.
fn message_bytes(walk: &mut Walk<'_>, position: usize) -> Option<()> {
    let table = walk.table_behind(position)?;
    if table.vtable_bytes > MESSAGE_BYTES_VTABLE_BYTES_MAX {
        return None;
    }
    let bytes = walk.field(&table, fb::MessageBytes::VT_BYTES)??;
    walk.bytes(bytes)
}

/// Whether the checks here answer as flatbuffers' verifier does on `body`,
/// or say no where it says yes to a request with fields newer than this
/// file knows. Never a yes flatbuffers refuses.
pub fn agrees_with_flatbuffers(body: &[u8]) -> bool {
    let theirs = verify::<fb::ProduceRequest>(body);
    match (verifies(body), theirs) {
        (true, Ok(_)) | (false, Err(_)) => true,
        (false, Ok(request)) => has_newer_fields(&request),
        (true, Err(_)) => false,
    }
}

/// Whether a request flatbuffers accepted has a vtable longer than those
/// known here (its own or a message's).
fn has_newer_fields(request: &fb::ProduceRequest<'_>) -> bool {
    let vtable_bytes = |table: &flatbuffers::Table<'_>| table.vtable().num_bytes();
    vtable_bytes(&request._tab) > REQUEST_VTABLE_BYTES_MAX
        || request.messages().iter().any(|message| vtable_bytes(&message._tab) > MESSAGE_BYTES_VTABLE_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::VERIFIER_TABLES_MAX;
    use crate::protocol::produce_request;
    use crate::wire::MessageDraft;
    use flatbuffers::FlatBufferBuilder;

    /// Requests of the shapes producers send: one message, a batch, a gap
    /// skipped, an empty batch, a non-ASCII topic.
    fn requests() -> Vec<Vec<u8>> {
        let message =
            MessageDraft { msg_id: (1, 2), topic: "orders", body: &[7; 40], ..MessageDraft::default() }.build();
        let small = b"not verified here: a message's own checks are wire's".to_vec();
        let batch: Vec<&[u8]> = (0..50).map(|index| if index % 2 == 0 { &message[..] } else { &small[..] }).collect();
        [
            produce_request("orders", 3, &[&message], false),
            produce_request("orders", 0, &batch, true),
            produce_request("orders", 1, &[], false),
            produce_request("caf\u{e9}", 2, &[&small, b""], false),
        ]
        .iter()
        .map(|request| request.to_vec())
        .collect()
    }

    #[test]
    fn every_shape_a_producer_sends_takes_the_fast_checks() {
        for request in requests() {
            assert!(verifies(&request), "{request:?}");
            assert!(agrees_with_flatbuffers(&request));
            assert!(verify_produce_request(&request).is_ok());
        }
    }

    #[test]
    fn on_damaged_requests_the_fast_checks_answer_as_flatbuffers_does() {
        let (refused, accepted) =
            crate::wire::walk::answers_on_damage(requests(), 0x7072_6f64, verifies, agrees_with_flatbuffers);
        assert!(refused > 20_000 && accepted > 10_000, "refused {refused}, accepted {accepted}");
    }

    /// A request whose messages are `count` references to one
    /// `MessageBytes` table of `bytes` bytes.
    fn shared(bytes: usize, count: usize) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let body = builder.create_vector(&vec![7u8; bytes]);
        let message = fb::MessageBytes::create(&mut builder, &fb::MessageBytesArgs { bytes: Some(body) });
        let messages = builder.create_vector(&vec![message; count]);
        let topic = builder.create_string("t");
        let args = fb::ProduceRequestArgs { topic: Some(topic), queue: 0, messages: Some(messages), skip_gap: false };
        let root = fb::ProduceRequest::create(&mut builder, &args);
        builder.finish_minimal(root);
        builder.finished_data().to_vec()
    }

    #[test]
    fn shared_tables_count_towards_the_table_limit_and_the_apparent_size() {
        let bytes = 1024 * 1024;
        // Each reference counts the bytes again, with their length, the
        // table's offset, vtable and field: about 1 MiB each.
        let fits = BODY_APPARENT_BYTES_MAX / (bytes + 64) - 1;
        for (request, expected) in [
            (shared(1, VERIFIER_TABLES_MAX - 1), true),
            (shared(1, VERIFIER_TABLES_MAX), false),
            (shared(bytes, fits), true),
            (shared(bytes, fits + 2), false),
        ] {
            assert_eq!(verifies(&request), expected);
            assert!(agrees_with_flatbuffers(&request));
        }
    }

    #[test]
    fn a_field_newer_than_these_checks_goes_to_flatbuffers() {
        let mut builder = FlatBufferBuilder::new();
        let body = builder.create_vector(&[1u8, 2, 3]);
        let start = builder.start_table();
        builder.push_slot_always(fb::MessageBytes::VT_BYTES, body);
        builder.push_slot_always::<u32>(fb::MessageBytes::VT_BYTES + 2, 7);
        let message = builder.end_table(start);
        let message = flatbuffers::WIPOffset::<fb::MessageBytes>::new(message.value());
        let messages = builder.create_vector(&[message]);
        let topic = builder.create_string("t");
        let args = fb::ProduceRequestArgs { topic: Some(topic), queue: 0, messages: Some(messages), skip_gap: false };
        let root = fb::ProduceRequest::create(&mut builder, &args);
        builder.finish_minimal(root);
        let request = builder.finished_data();
        assert!(!verifies(request));
        assert!(agrees_with_flatbuffers(request));
        assert_eq!(verify_produce_request(request).expect("flatbuffers accepts it").messages().len(), 1);
    }
}
