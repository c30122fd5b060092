//! The framed connection: frames read from a stream through the shared
//! `protocol::FrameDecoder`, frames written, and the timeouts around both.
//! The broker's connections, the blocking client's reader thread and
//! `AsyncConnection` all read and write through here; what each does with
//! a frame stays with it.
//!
//! - `blocking`: `std::io` streams (the blocking client).
//! - `glommio_io` (feature `glommio`): futures' streams inside a glommio
//!   executor (the broker, `AsyncConnection`): reads, the coalescing
//!   writer, timeouts.

mod blocking;
#[cfg(feature = "glommio")]
pub mod glommio_io;

pub use blocking::FrameReader;

use crate::protocol::{FrameError, Truncated};

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    /// The framing is lost: nothing after it can be read.
    #[error("{0}")]
    BadFrame(#[from] FrameError),
    #[error(transparent)]
    Truncated(#[from] Truncated),
}
