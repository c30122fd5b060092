//! ringmq-client: what the broker and its applications share. The wire
//! format (frames, request kinds, the flatbuffers schemas and the stored
//! record header) and the client built on it. An application depends on
//! this crate alone; the broker (`ringmq`) depends on it too and re-exports
//! its modules.
//!
//! # Layout
//! - [`constants`]: every limit, with compile-time checks where two agree.
//! - [`wire`]: the flatbuffers schemas' code, message verification and the
//!   record header a fetch answer carries.
//! - [`protocol`]: frames, request kinds, body verification and builders.
//! - [`framed`]: frames read and written on a stream, with timeouts, for
//!   every end of a connection (the broker's too).
//! - [`client`]: connections, producers, consumers, the outbox.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod client;
pub mod constants;
pub mod framed;
pub mod protocol;
pub mod wire;

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the unit of every timestamp in a
/// message and a record header (0 for a clock before 1970).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_micros() as u64).unwrap_or(0)
}
