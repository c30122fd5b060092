//! Frames over a blocking `std::io` stream. Timeouts are the socket's own
//! (`set_read_timeout`, `set_write_timeout`): a read or write that passes
//! one fails with an I/O error.

use super::ReadError;
use crate::protocol::{DecoderLimits, Frame, FrameDecoder};
use std::io::{ErrorKind, Read};

/// Reads whole frames from a stream.
pub struct FrameReader<R> {
    stream: R,
    decoder: FrameDecoder,
}

impl<R: Read> FrameReader<R> {
    pub fn new(stream: R, limits: DecoderLimits) -> Self {
        Self { stream, decoder: FrameDecoder::new(limits) }
    }

    /// The next frame; `None` once the stream ended between two frames.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.decode()? {
                return Ok(Some(frame));
            }
            let read = match self.stream.read(self.decoder.room()) {
                Ok(read) => read,
                // A signal, not the stream: read again.
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.into()),
            };
            self.decoder.filled(read);
            if read == 0 {
                self.decoder.end()?;
                return Ok(None);
            }
        }
    }
}
