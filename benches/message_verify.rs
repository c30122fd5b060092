//! Message verification benchmark: what a produce pays per message to
//! verify it, through `verify_message` (the schema's own checks) and through
//! flatbuffers' generic verifier alone. Not a test: nothing here asserts on
//! speed. CPU only.
//!
//! `cargo bench --bench message_verify`. Each line: nanoseconds per message.

use bytes::Bytes;
use flatbuffers::VerifierOptions;
use ringmq::constants::{MESSAGE_SIZE_BYTES_MAX, VERIFIER_DEPTH_MAX, VERIFIER_TABLES_MAX};
use ringmq::wire::generated::Message;
use ringmq::wire::{verify_message, MessageDraft};
use std::hint::black_box;
use std::time::Instant;

const MESSAGES: u32 = 2_000_000;

fn per_message_ns(mut verify: impl FnMut() -> bool) -> f64 {
    let started = Instant::now();
    for _ in 0..MESSAGES {
        assert!(black_box(verify()));
    }
    started.elapsed().as_nanos() as f64 / f64::from(MESSAGES)
}

fn main() {
    let options = VerifierOptions {
        max_depth: VERIFIER_DEPTH_MAX,
        max_tables: VERIFIER_TABLES_MAX,
        max_apparent_size: MESSAGE_SIZE_BYTES_MAX,
        ignore_missing_null_terminator: false,
    };
    let body = vec![7; 1024];
    // The load generator's message, and one with every field set.
    let load = MessageDraft {
        msg_id: (1, 2),
        topic: "bench",
        queue: 3,
        body: &body,
        producer_id: 9,
        sequence: 10,
        ..MessageDraft::default()
    };
    let full = MessageDraft {
        keys: &["order-17", "customer-4"],
        tag: Some("blue"),
        properties: &[("region", "eu"), ("trace", "abc")],
        producer_group: Some("payments"),
        transaction_id: Some("tx-1"),
        half: true,
        ..load.clone()
    };
    for (name, draft) in [("load generator's", load), ("every field set", full)] {
        let bytes = Bytes::from(draft.build());
        let fast = per_message_ns(|| verify_message(black_box(bytes.clone())).is_ok());
        let generic = per_message_ns(|| flatbuffers::root_with_opts::<Message>(&options, black_box(&bytes)).is_ok());
        println!("{name:>18}: verify_message {fast:6.1} ns, flatbuffers' verifier alone {generic:6.1} ns");
    }
}
