//! An accepted produce request's answer (`ProduceResponse` with an empty
//! `Outcome` and one `SendOutcome` per message), written out byte by byte in
//! flatbuffers' format instead of through `FlatBufferBuilder`.
//!
//! Why: the broker answers every produce request, most of them of one
//! message, and the builder's generic path (a vtable written, searched for
//! and deduplicated per table, the buffer built back to front, then copied
//! out) was the largest item of the broker's own code per message: about
//! 2,070 instructions for a one-message answer under callgrind, and 6% of
//! the broker's CPU under 1,000-message requests.
//!
//! The layout is fixed, front to back, every offset pointing forward:
//!
//! ```text
//! 0    root offset -> the ProduceResponse table
//! 4    vtables: Outcome (no field), ProduceResponse, SendOutcome (shared)
//! 40   ProduceResponse: outcome, queue, sends (`results` is deprecated)
//! 56   Outcome, empty: no error
//! 60   sends: length, then one offset per SendOutcome
//! ..   SendOutcome tables, 8-aligned, every field present
//! ```
//!
//! The tests read it back through flatbuffers' verifier and reader, and
//! through the written-out checks the producer uses
//! (`verify_produce_response`), against the builder's answer.

use super::{fb, SendOutcome};
use crate::wire::forward_writer::ForwardWriter;

const OUTCOME_VTABLE_AT: usize = 4;
const RESPONSE_VTABLE_AT: usize = 8;
const SEND_VTABLE_AT: usize = 20;
const RESPONSE_AT: usize = 40;
const OUTCOME_AT: usize = 56;
const SENDS_AT: usize = 60;

/// Bytes of a `SendOutcome` table: its vtable offset, `status` and
/// `duplicate` (bytes), padding, then four 8-byte fields.
const SEND_BYTES: usize = 40;
const SEND_STATUS_AT: u16 = 4;
const SEND_DUPLICATE_AT: u16 = 5;
const SEND_MSG_ID_HI_AT: u16 = 8;
const SEND_MSG_ID_LO_AT: u16 = 16;
const SEND_OFFSET_AT: u16 = 24;
const SEND_STORE_TIMESTAMP_AT: u16 = 32;

/// The three vtables and the padding before the first table. A vtable is
/// its own size, its table's size, then each field's place in the table,
/// in field id order (0: absent).
const VTABLES: [u16; 18] = [
    // Outcome: no field set, all defaults (no error).
    4,
    4,
    // ProduceResponse: outcome, queue, results (deprecated, absent), sends.
    12,
    16,
    4,
    8,
    0,
    12,
    // SendOutcome: status, msg_id_hi, msg_id_lo, offset, store_timestamp_us,
    // duplicate.
    16,
    SEND_BYTES as u16,
    SEND_STATUS_AT,
    SEND_MSG_ID_HI_AT,
    SEND_MSG_ID_LO_AT,
    SEND_OFFSET_AT,
    SEND_STORE_TIMESTAMP_AT,
    SEND_DUPLICATE_AT,
    // Padding up to `RESPONSE_AT`.
    0,
    0,
];
const _: () = assert!(OUTCOME_VTABLE_AT + 2 * VTABLES.len() == RESPONSE_AT);
const _: () = assert!(RESPONSE_AT + 16 == OUTCOME_AT && OUTCOME_AT + 4 == SENDS_AT);
// The vtables' field ids are the generated code's.
const _: () = assert!(fb::SendOutcome::VT_DUPLICATE == 14 && fb::ProduceResponse::VT_SENDS == 10);

/// The body of a `ProduceResponse` that accepted the request: an `Outcome`
/// without error, `queue`, and `sends` in their order.
pub(super) fn accepted(queue: u32, sends: impl ExactSizeIterator<Item = SendOutcome>) -> Vec<u8> {
    let count = sends.len();
    let first_send = (SENDS_AT + 4 + 4 * count).next_multiple_of(8);
    let mut body = Vec::with_capacity(first_send + SEND_BYTES * count);
    let mut out = ForwardWriter::new(&mut body);
    out.u32(RESPONSE_AT as u32);
    for entry in VTABLES {
        out.u16(entry);
    }
    debug_assert_eq!(out.at(), RESPONSE_AT);
    out.table_start(RESPONSE_VTABLE_AT);
    out.forward(OUTCOME_AT);
    out.u32(queue);
    out.forward(SENDS_AT);
    out.table_start(OUTCOME_VTABLE_AT);
    debug_assert_eq!(out.at(), SENDS_AT);
    out.u32(count as u32);
    for index in 0..count {
        out.forward(first_send + SEND_BYTES * index);
    }
    out.pad_to(first_send);
    for send in sends {
        put_send(&mut out, &send);
    }
    debug_assert_eq!(body.len(), body.capacity());
    body
}

fn put_send(out: &mut ForwardWriter<'_>, send: &SendOutcome) {
    debug_assert_eq!(out.at() % 8, 0);
    out.table_start(SEND_VTABLE_AT);
    out.bytes(&[send.status.0, u8::from(send.duplicate), 0, 0]);
    out.u64(send.msg_id.0);
    out.u64(send.msg_id.1);
    let offset = send.offset.and_then(|offset| i64::try_from(offset).ok()).unwrap_or(-1);
    out.bytes(&offset.to_le_bytes());
    out.u64(send.store_timestamp_us);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{body_verifier_options, produce_response_verifiers_agree, verify_produce_response};

    /// The builder's answer, which `accepted` replaces.
    fn built(queue: u32, sends: &[SendOutcome]) -> Vec<u8> {
        super::super::build::built_produce_response(None, queue, sends)
    }

    /// What a reader gets from an answer, through flatbuffers' verifier.
    fn read(body: &[u8]) -> (fb::ErrorCode, Option<String>, i32, u64, u32, Vec<SendOutcome>) {
        let response =
            flatbuffers::root_with_opts::<fb::ProduceResponse>(&body_verifier_options(), body).expect("verifies");
        let outcome = response.outcome().expect("an outcome");
        (
            outcome.error(),
            outcome.message().map(str::to_string),
            outcome.owner_shard(),
            outcome.expected_sequence(),
            response.queue(),
            response.sends().expect("sends").iter().map(|send| SendOutcome::read(&send)).collect(),
        )
    }

    fn sends_of(seed: u64, count: usize) -> Vec<SendOutcome> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                let value = next();
                SendOutcome {
                    status: fb::SendStatus((value % 4) as u8),
                    msg_id: (next(), next()),
                    offset: match value % 5 {
                        0 => None,
                        1 => Some(u64::MAX - value % 3),
                        _ => Some(next() >> 1),
                    },
                    store_timestamp_us: next(),
                    duplicate: value % 3 == 0,
                }
            })
            .collect()
    }

    #[test]
    fn an_answer_reads_back_as_the_builders_does_through_both_verifiers() {
        for (seed, count) in [(1, 0), (2, 1), (3, 2), (4, 3), (5, 7), (6, 64), (7, 1000)] {
            let sends = sends_of(seed, count);
            let queue = (seed as u32).wrapping_mul(0x9e37_79b9);
            let body = accepted(queue, sends.iter().copied());
            assert_eq!(read(&body), read(&built(queue, &sends)), "{count} sends");
            assert!(produce_response_verifiers_agree(&body));
            let fast = verify_produce_response(&body).expect("the written-out checks accept it");
            assert_eq!(fast.sends().map(|sends| sends.len()), Some(count));
            assert_eq!(body.len() % 8, 0, "{} bytes", body.len());
        }
    }

    #[test]
    fn an_offset_beyond_a_signed_one_is_unknown_as_with_the_builder() {
        let sends = [SendOutcome {
            status: fb::SendStatus::SendOk,
            msg_id: (1, 2),
            offset: Some(u64::MAX),
            store_timestamp_us: 3,
            duplicate: false,
        }];
        let (.., read_sends) = read(&accepted(0, sends.iter().copied()));
        assert_eq!(read_sends[0].offset, None);
    }
}
