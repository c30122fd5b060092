//! Every request kind as the shard reads it before touching state
//! (`ringmq::fuzzing::request`): `kind byte | body`.
//!
//! `cargo +nightly fuzz run request` in `fuzz/`; the seeds are in `corpus/request`,
//! and `tests/every_fuzz_target_holds_on_its_corpus_and_random_mutations.rs`
//! runs the same body on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq::fuzzing::LargestAllocation;

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

fuzz_target!(|data: &[u8]| ringmq::fuzzing::request(data));
