//! The checks flatbuffers' generated verifier makes on a `ProduceRequest`
//! and on its answer, a `ProduceResponse`, written out as
//! `wire::message_verifier` does for a message, and for the same reason:
//! the broker verifies every produce request and every producer its
//! answer, and the generic verifier spent about 1,500 instructions on a
//! request of a single message.
//!
//! A no goes to flatbuffers' verifier for the reason, as does a body with
//! a table longer than the fields known here (`wire::walk`). The tests
//! below and the `request` fuzz target compare the two answers.

#[cfg(test)]
use super::BODY_APPARENT_BYTES_MAX;
use super::{body_verifier_options, fb};
use crate::constants::VERIFIER_DEPTH_MAX;
use crate::wire::walk::{self, Walk};

/// The request and its `MessageBytes` tables.
const REQUEST_DEPTH: usize = 2;
const _: () = assert!(REQUEST_DEPTH <= VERIFIER_DEPTH_MAX);

/// Verifies a produce request's body, as `verify::<fb::ProduceRequest>`
/// does, with its reason on a refusal.
pub fn verify_produce_request(body: &[u8]) -> Result<fb::ProduceRequest<'_>, String> {
    walk::verify_with::<fb::ProduceRequest>(body, &body_verifier_options(), request).map_err(|error| error.to_string())
}

#[cfg(test)]
fn verifies(body: &[u8]) -> bool {
    walk::passes(body, &body_verifier_options(), request)
}

/// The generated verifier's checks on a `ProduceRequest`, in its order.
fn request(walk: &mut Walk<'_>) -> Option<()> {
    let request = walk.root(fb::ProduceRequest::VT_SKIP_GAP)?;
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
    let table = walk.table_behind(position, fb::MessageBytes::VT_BYTES)?;
    let bytes = walk.field(&table, fb::MessageBytes::VT_BYTES)??;
    walk.bytes(bytes)
}

/// Verifies a produce answer's body, as `verify::<fb::ProduceResponse>`
/// does, with its reason on a refusal.
pub fn verify_produce_response(body: &[u8]) -> Result<fb::ProduceResponse<'_>, String> {
    walk::verify_with::<fb::ProduceResponse>(body, &body_verifier_options(), response)
        .map_err(|error| error.to_string())
}

#[cfg(test)]
fn response_verifies(body: &[u8]) -> bool {
    walk::passes(body, &body_verifier_options(), response)
}

/// The generated verifier's checks on a `ProduceResponse`, in its order
/// (the deprecated `results` is not verified, nor read).
fn response(walk: &mut Walk<'_>) -> Option<()> {
    let response = walk.root(fb::ProduceResponse::VT_SENDS)?;
    if let Some(outcome) = walk.field(&response, fb::ProduceResponse::VT_OUTCOME)? {
        let outcome = walk.table_behind(outcome, fb::Outcome::VT_EXPECTED_SEQUENCE)?;
        walk.scalar_if_present(&outcome, fb::Outcome::VT_ERROR, 2)?;
        if let Some(message) = walk.field(&outcome, fb::Outcome::VT_MESSAGE)? {
            walk.string(message)?;
        }
        walk.scalar_if_present(&outcome, fb::Outcome::VT_OWNER_SHARD, 4)?;
        walk.scalar_if_present(&outcome, fb::Outcome::VT_EXPECTED_SEQUENCE, 8)?;
    }
    walk.scalar_if_present(&response, fb::ProduceResponse::VT_QUEUE, 4)?;
    if let Some(sends) = walk.field(&response, fb::ProduceResponse::VT_SENDS)? {
        walk.each_offset(sends, send_outcome)?;
    }
    Some(())
}

/// The offset at `position` points at a `SendOutcome` table.
fn send_outcome(walk: &mut Walk<'_>, position: usize) -> Option<()> {
    let send = walk.table_behind(position, fb::SendOutcome::VT_DUPLICATE)?;
    walk.scalar_if_present(&send, fb::SendOutcome::VT_STATUS, 1)?;
    for field in [
        fb::SendOutcome::VT_MSG_ID_HI,
        fb::SendOutcome::VT_MSG_ID_LO,
        fb::SendOutcome::VT_OFFSET,
        fb::SendOutcome::VT_STORE_TIMESTAMP_US,
    ] {
        walk.scalar_if_present(&send, field, 8)?;
    }
    walk.scalar_if_present(&send, fb::SendOutcome::VT_DUPLICATE, 1)
}

/// Whether the checks here answer as flatbuffers' verifier does on a
/// produce request's `body` (see `walk::agrees_with_flatbuffers`).
pub fn agrees_with_flatbuffers(body: &[u8]) -> bool {
    walk::agrees_with_flatbuffers::<fb::ProduceRequest>(body, &body_verifier_options(), request)
}

/// As `agrees_with_flatbuffers`, for a produce answer.
pub fn response_agrees_with_flatbuffers(body: &[u8]) -> bool {
    walk::agrees_with_flatbuffers::<fb::ProduceResponse>(body, &body_verifier_options(), response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::VERIFIER_TABLES_MAX;
    use crate::protocol::{produce_request, produce_response, Failure, SendOutcome};
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

    /// Answers of the shapes the broker sends: one outcome, a batch with a
    /// duplicate of unknown offset, a failure naming an owner, none.
    fn responses() -> Vec<Vec<u8>> {
        let stored = SendOutcome {
            status: fb::SendStatus::SendOk,
            msg_id: (1, 2),
            offset: Some(17),
            store_timestamp_us: 1_700_000_000_000_000,
            duplicate: false,
        };
        let duplicate = SendOutcome { offset: None, duplicate: true, ..stored };
        let batch: Vec<SendOutcome> = (0..50).map(|index| if index % 7 == 0 { duplicate } else { stored }).collect();
        let failure = Failure::not_owner(1, "queue 3 belongs to shard 1");
        vec![
            produce_response(None, 3, &[stored]),
            produce_response(None, 0, &batch),
            produce_response(Some(&failure), 3, &[]),
            produce_response(Some(&Failure::out_of_order(9, "resend in order")), 2, &[duplicate]),
        ]
    }

    #[test]
    fn every_answer_the_broker_sends_takes_the_fast_checks() {
        for response in responses() {
            assert!(response_verifies(&response), "{response:?}");
            assert!(response_agrees_with_flatbuffers(&response));
            assert!(verify_produce_response(&response).is_ok());
        }
    }

    #[test]
    fn on_damaged_answers_the_fast_checks_answer_as_flatbuffers_does() {
        let (refused, accepted) = crate::wire::walk::answers_on_damage(
            responses(),
            0x616e_7377,
            response_verifies,
            response_agrees_with_flatbuffers,
        );
        assert!(refused > 20_000 && accepted > 10_000, "refused {refused}, accepted {accepted}");
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

    /// An answer with one field newer than these checks: in its
    /// `SendOutcome` (`newer` 0), its `Outcome` (1) or itself (2).
    fn answer_with_newer_field(newer: u8) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let start = builder.start_table();
        builder.push_slot_always::<u64>(fb::SendOutcome::VT_MSG_ID_HI, 5);
        if newer == 0 {
            builder.push_slot_always::<u32>(fb::SendOutcome::VT_DUPLICATE + 2, 7);
        }
        let send = flatbuffers::WIPOffset::<fb::SendOutcome>::new(builder.end_table(start).value());
        let sends = builder.create_vector(&[send]);
        let start = builder.start_table();
        builder.push_slot_always::<i32>(fb::Outcome::VT_OWNER_SHARD, 1);
        if newer == 1 {
            builder.push_slot_always::<u32>(fb::Outcome::VT_EXPECTED_SEQUENCE + 2, 7);
        }
        let outcome = flatbuffers::WIPOffset::<fb::Outcome>::new(builder.end_table(start).value());
        let start = builder.start_table();
        builder.push_slot_always(fb::ProduceResponse::VT_OUTCOME, outcome);
        builder.push_slot_always(fb::ProduceResponse::VT_SENDS, sends);
        if newer == 2 {
            builder.push_slot_always::<u32>(fb::ProduceResponse::VT_SENDS + 2, 7);
        }
        let root = builder.end_table(start);
        builder.finish_minimal(root);
        builder.finished_data().to_vec()
    }

    #[test]
    fn an_answer_with_a_field_newer_than_these_checks_goes_to_flatbuffers() {
        for newer in 0..3 {
            let response = answer_with_newer_field(newer);
            assert!(!response_verifies(&response), "newer field in table {newer}");
            assert!(response_agrees_with_flatbuffers(&response));
            let answer = verify_produce_response(&response).expect("flatbuffers accepts it");
            assert_eq!(answer.sends().expect("sends").get(0).msg_id_hi(), 5);
            assert_eq!(answer.outcome().expect("an outcome").owner_shard(), 1);
        }
    }
}
