//! The message verifier (`ringmq::fuzzing::message`): a clear refusal or
//! a message whose every accessor reads.
//!
//! `cargo +nightly fuzz run message` in `fuzz/`; the seeds are in `corpus/message`,
//! and `tests/every_fuzz_target_holds_on_its_corpus_and_random_mutations.rs`
//! runs the same body on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq::fuzzing::LargestAllocation;

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

fuzz_target!(|data: &[u8]| ringmq::fuzzing::message(data));
