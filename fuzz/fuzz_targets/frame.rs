//! The frame decoder and the connection read buffer around it
//! (`ringmq::fuzzing::frame`): same frames as a plain reading of the stream,
//! the same refusal, a buffer within twice what arrived plus one step.
//!
//! `cargo +nightly fuzz run frame` in `fuzz/`; the seeds are in `corpus/frame`,
//! and `tests/every_fuzz_target_holds_on_its_corpus_and_random_mutations.rs`
//! runs the same body on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq::fuzzing::LargestAllocation;

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

fuzz_target!(|data: &[u8]| ringmq::fuzzing::frame(data));
