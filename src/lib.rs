//! ringmq: a single-node message broker that never loses an acknowledged
//! message, on a thread-per-core engine (glommio, io_uring, O_DIRECT).
//!
//! # Layout
//! - [`constants`]: every limit, with compile-time checks where two agree.
//! - [`wire`]: the flatbuffers schemas' code and message verification.
//! - [`storage`]: the per-shard commit log: segments, group commit, indexes,
//!   checkpoints, recovery, retention; behind a thin storage trait.
//!
//! Data flows one way: frame -> verified message -> shard -> log -> index ->
//! fetch.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
pub mod server;
pub mod storage;

// The wire format and the client live in `ringmq-client` (`client/`), which
// applications use without the broker; the old paths stay.
pub use ringmq_client::{client, constants, framed, protocol, wire};
