//! Frames over futures' streams inside a glommio executor: a reader whose
//! single read can be raced against other events without being dropped,
//! the writer loop that coalesces queued frames, and the timeouts they use.

use super::ReadError;
use crate::protocol::{DecoderLimits, Frame, FrameBatch, FrameDecoder, OutgoingFrame, Pushed};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::LocalReceiver;
use std::future::Future;
use std::time::Duration;

/// `future`'s output, or `None` once `limit` passed first (the future is
/// then dropped).
pub async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    let bounded = async { Some(future.await) };
    let expired = async {
        glommio::timer::sleep(limit).await;
        None
    };
    futures_lite::future::or(bounded, expired).await
}

/// Reads whole frames from a stream.
pub struct AsyncFrameReader<R> {
    stream: R,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> AsyncFrameReader<R> {
    pub fn new(stream: R, limits: DecoderLimits) -> Self {
        Self { stream, decoder: FrameDecoder::new(limits) }
    }

    /// The decoder, for a reader that takes frames and accounts for its
    /// buffer itself between reads (the broker's connection).
    pub fn decoder(&mut self) -> &mut FrameDecoder {
        &mut self.decoder
    }

    /// One read into the decoder: the bytes read, 0 at the end of the
    /// stream.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        let read = self.stream.read(self.decoder.room()).await;
        self.decoder.filled(*read.as_ref().unwrap_or(&0));
        read
    }

    /// The next frame; `None` once the stream ended between two frames.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.decode()? {
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                self.decoder.end()?;
                return Ok(None);
            }
        }
    }
}

async fn write_within<W: AsyncWrite + Unpin>(
    stream: &mut W,
    bytes: &[u8],
    timeout: Option<Duration>,
) -> Result<(), WriteError> {
    let Some(timeout) = timeout else {
        return Ok(stream.write_all(bytes).await?);
    };
    match within(timeout, stream.write_all(bytes)).await {
        Some(Ok(())) => Ok(()),
        Some(Err(error)) => Err(error.into()),
        None => Err(WriteError::TimedOut { after: timeout }),
    }
}

/// Why a writer stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer does not read.
    #[error("not written within {} ms", after.as_millis())]
    TimedOut { after: Duration },
}

/// Frames of a write `write_frames` keeps room for after it, as the batch
/// keeps its bytes (`FrameBatch::clear`).
const WRITTEN_FRAMES_RETAINED: usize = 64;

/// Writes the frames `queue` hands over as they come, those already
/// waiting coalesced into one write (up to `WRITE_COALESCE_BYTES`; a large
/// body is written from its frame after the batch, not copied into it),
/// each write within `timeout` (`None`: the caller bounds its writes
/// otherwise, as a client's request deadlines do). A frame is dropped only
/// once its bytes are written (what it holds, such as a broker answer's
/// budget, goes back then), or with the writer's failure. Once the queue
/// closes, the stream is flushed and closed.
pub async fn write_frames<W, F>(
    stream: &mut W,
    queue: &LocalReceiver<F>,
    timeout: Option<Duration>,
) -> Result<(), WriteError>
where
    W: AsyncWrite + Unpin,
    F: OutgoingFrame,
{
    let mut batch = FrameBatch::default();
    let mut written = Vec::new();
    while let Some(frame) = queue.recv().await {
        let mut pushed = batch.push(&frame);
        written.push(frame);
        while pushed == Pushed::Copied && !batch.is_full() {
            let Some(Some(frame)) = futures_lite::future::poll_once(queue.recv()).await else { break };
            pushed = batch.push(&frame);
            written.push(frame);
        }
        write_within(stream, batch.bytes(), timeout).await?;
        if let (Pushed::InPlace, Some(last)) = (pushed, written.last()) {
            write_within(stream, last.body(), timeout).await?;
        }
        batch.clear();
        written.clear();
        written.shrink_to(WRITTEN_FRAMES_RETAINED);
    }
    let _ = stream.flush().await;
    let _ = stream.close().await;
    Ok(())
}
