//! ringmq: a single-node message broker that never loses an acknowledged
//! message, on a thread-per-core engine (glommio, io_uring, O_DIRECT).
//!
//! # Layout
//! - [`constants`], [`wire`], [`protocol`], [`framed`], [`client`]: the
//!   wire format, the framed connection and the client, from the
//!   `ringmq-client` crate (`client/`), which applications use alone.
//! - [`server`]: shards, connections, request handlers.
//! - [`storage`]: the per-shard commit log: segments, group commit, indexes,
//!   checkpoints, recovery, retention; behind a thin storage trait.
//!
//! Data flows one way: frame -> verified message -> shard -> log -> index ->
//! fetch.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
pub mod fuzzing;
pub mod server;
pub mod storage;

// The wire format and the client live in `ringmq-client` (`client/`), which
// applications use without the broker; the old paths stay.
pub use ringmq_client::{client, constants, framed, now_us, protocol, wire};
