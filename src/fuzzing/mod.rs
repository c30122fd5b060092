//! The bodies of the fuzz targets in `fuzz/` (`cargo +nightly fuzz run
//! frame|message|request`), in the library so the stable test
//! `tests/fuzz_corpus.rs` runs the same bodies over the checked-in corpus
//! and a seeded mutation loop. Each body panics on a broken promise: a
//! panic in the code under test, an error that is not a clear refusal, or
//! one allocation larger than the limits in `constants` allow for the input
//! (measured when the binary installs [`LargestAllocation`]).

mod allocation;
mod frame;
mod message;
mod request;
pub mod seeds;

pub use allocation::{largest_allocation_during, measuring, LargestAllocation};
pub use frame::frame;
pub use message::message;
pub use request::request;

/// Longest error message a refusal may carry: it quotes at most a value
/// that passed a length cap (a name, an id), never the raw input.
pub const FAILURE_MESSAGE_BYTES_MAX: usize = 2048;

/// Allocations any body may make whatever its input (formatting, the
/// verifier's error trace, small tables).
const ALLOCATION_SLACK_BYTES: usize = 64 * 1024;

/// Panics unless the largest allocation of `run` stays within `bound`.
fn within<R>(bound: usize, what: &str, run: impl FnOnce() -> R) -> R {
    let (result, largest) = largest_allocation_during(run);
    assert!(largest <= bound, "{what}: an allocation of {largest} bytes, past the bound of {bound}");
    result
}
