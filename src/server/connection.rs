//! One client connection: frames are read and handled concurrently
//! (pipelining), and answered by request id in the order they complete.
//! What a client can pin is bounded: at most `in_flight_max` requests and
//! `in_flight_bytes_max` bytes of request bodies per connection, counted
//! until the answer is written to the socket; past that the connection is
//! not read (TCP pushes back on the client). The read buffer grows with what
//! arrives, never with the length a frame claims, and is charged to the
//! shard's budget for incomplete frames (`frame_budget`): a connection that
//! would pass it is closed. A connection with no complete frame and nothing
//! in flight for `connection_idle_timeout` is closed, and so is one whose
//! answers cannot be written within `connection_write_timeout`. A frame that
//! cannot be parsed closes the connection
//! after an error response; any other bad request gets an error response and
//! the connection goes on.
//!
//! The connection is also the broker's way to a registered producer
//! (`producer_links`): a frame whose request id has `BROKER_REQUEST_BIT`
//! set answers a request the broker started (a check-back) and goes to the
//! link, not to a handler.

use super::frame_budget::BudgetSpent;
use super::handlers;
use super::outgoing::Outgoing;
use super::producer_links::ProducerLink;
use super::shard::Shard;
use crate::constants::CONNECTION_READ_FIRST_BYTES;
use crate::framed::glommio_io::{self, AsyncFrameReader, WriteError};
use crate::protocol::{self, fb, DecoderLimits, Failure, Frame, FrameError, Kind, Truncated, BROKER_REQUEST_BIT};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::Instrument;

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream.peer_addr().map(|address| address.to_string()).unwrap_or_default();
    let span = tracing::info_span!("connection", shard = shard.id, %peer);
    async move {
        tracing::debug!("connected");
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY");
        }
        let (reader, writer) = futures_lite::io::split(stream);
        let in_flight_max = shard.config.in_flight_max;
        // Unbounded, so that it holds only what waits: a bounded glommio
        // channel allocates all its room up front, and a connection's queue
        // comes to keep all of it resident (72 KiB at the default
        // `in_flight_max`, idle or not). What waits is bounded all the same:
        // every answer and refusal holds the connection's budget until it is
        // written, and the broker's own check-backs are bounded by their
        // round (`checker`).
        let (responses, outbox) = local_channel::new_unbounded::<Outgoing>();
        let (writer_failed, writer_gone) = local_channel::new_bounded::<()>(1);
        let write_timeout = shard.config.connection_write_timeout;
        let writer_task = glommio::spawn_local(write_responses(writer, outbox, write_timeout, writer_failed));
        let budget = Budget::new(in_flight_max, shard.config.in_flight_bytes_max);
        let responses = Rc::new(responses);
        let link = Rc::new(ProducerLink::new(responses.clone()));
        let ends = ConnectionEnds { budget: &budget, responses: &responses, link: &link, writer_gone: &writer_gone };
        match read_requests(&shard, reader, &ends).await {
            Ok(()) => {}
            Err(error @ Closing::Idle { .. }) => tracing::debug!(%error, "closing the connection"),
            Err(error @ Closing::IncompleteFrames(_)) => tracing::warn!(%error, "closing the connection"),
            Err(error) => tracing::info!(%error, "closing the connection"),
        }
        // No more check-backs on it: its producer groups lose a member.
        link.close();
        shard.producer_links.borrow_mut().remove(&link);
        // Let the requests in flight finish and their answers go out.
        let _ = budget.requests.acquire(in_flight_max as u64).await;
        drop(link);
        drop(responses);
        writer_task.await;
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await
}

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
enum Closing {
    #[error("reading: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Truncated(#[from] Truncated),
    #[error("{0}")]
    BadFrame(FrameError),
    #[error("no complete frame and nothing in flight for {idle_ms} ms (connection_idle_timeout_ms)")]
    Idle { idle_ms: u128 },
    #[error("its answers could not be written")]
    WriterGone,
    #[error(transparent)]
    IncompleteFrames(#[from] BudgetSpent),
    #[error("in-flight budget: {0}")]
    InFlight(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
}

/// What one connection may hold at once.
struct Budget {
    requests: Rc<Semaphore>,
    requests_max: u64,
    kib: Rc<Semaphore>,
    kib_max: u64,
}

impl Budget {
    fn new(requests: usize, bytes: usize) -> Self {
        let kib_max = (bytes / 1024).max(1) as u64;
        Self {
            requests: Rc::new(Semaphore::new(requests as u64)),
            requests_max: requests as u64,
            kib: Rc::new(Semaphore::new(kib_max)),
            kib_max,
        }
    }

    async fn hold(&self, body_bytes: usize) -> Result<(StaticPermit, StaticPermit), Closing> {
        let kib = (body_bytes as u64 / 1024 + 1).min(self.kib_max);
        let closed = |error: glommio::GlommioError<()>| Closing::InFlight(error.to_string());
        let request = self.requests.clone().acquire_static_permit(1).await.map_err(closed)?;
        let bytes = self.kib.clone().acquire_static_permit(kib).await.map_err(closed)?;
        Ok((request, bytes))
    }

    /// Whether a request of the connection is being handled or its answer
    /// is not written yet.
    fn in_flight(&self) -> bool {
        self.requests.available() < self.requests_max
    }
}

/// What the read loop hands requests and answers to.
struct ConnectionEnds<'a> {
    budget: &'a Budget,
    responses: &'a Rc<local_channel::LocalSender<Outgoing>>,
    link: &'a Rc<ProducerLink>,
    /// Ends when the writer gave up (a failed or timed-out write).
    writer_gone: &'a LocalReceiver<()>,
}

async fn read_requests(
    shard: &Rc<Shard>,
    reader: futures_lite::io::ReadHalf<TcpStream>,
    ends: &ConnectionEnds<'_>,
) -> Result<(), Closing> {
    // The buffer grows with what arrives (`FrameDecoder`), charged to the
    // shard's budget past its first read: a new connection's small requests
    // are served even while stalled ones hold the whole budget (that first
    // read is bounded by `connections_max` instead).
    let mut frames = AsyncFrameReader::new(reader, DecoderLimits::requests(shard.config.frame_body_bytes_max));
    let mut held = shard.incomplete_frames.account();
    let mut active_at = Instant::now();
    loop {
        loop {
            match frames.decoder().decode() {
                Ok(Some(frame)) if frame.request_id & BROKER_REQUEST_BIT != 0 => {
                    active_at = Instant::now();
                    refuse_or_deliver(frame, ends).await?
                }
                Ok(Some(frame)) => {
                    active_at = Instant::now();
                    dispatch(shard, frame, ends.budget, ends.responses, ends.link).await?
                }
                Ok(None) => break,
                Err(error) => return Err(refuse_frame(ends.responses, error).await),
            }
        }
        // No whole frame left: the decoder gave back what a large one took.
        held.settle(frames.decoder().capacity().saturating_sub(CONNECTION_READ_FIRST_BYTES));
        if shard.shutting_down.get() {
            return Err(Closing::ShuttingDown);
        }
        frames.decoder().set_frugal(shard.incomplete_frames.more_than_half_spent());
        let capacity = frames.decoder().reserve_read();
        // Refused: the buffer just grown goes with the connection.
        held.reserve(capacity.saturating_sub(CONNECTION_READ_FIRST_BYTES))?;
        if read_or_idle(shard, &mut frames, ends, &mut active_at).await? == 0 {
            return Ok(frames.decoder().end()?);
        }
    }
}

/// One read into the decoder; ends the connection once it has had no complete
/// frame (`active_at`) and nothing in flight for the idle timeout, or when
/// the writer gave up. The read itself is never dropped while the
/// connection goes on.
async fn read_or_idle(
    shard: &Shard,
    frames: &mut AsyncFrameReader<futures_lite::io::ReadHalf<TcpStream>>,
    ends: &ConnectionEnds<'_>,
    active_at: &mut Instant,
) -> Result<usize, Closing> {
    enum Woke {
        Read(std::io::Result<usize>),
        Tick,
        WriterGone,
    }
    let idle_timeout = shard.config.connection_idle_timeout;
    let read = frames.fill();
    futures_lite::pin!(read);
    loop {
        let now = Instant::now();
        let deadline = *active_at + idle_timeout;
        if now >= deadline {
            if !ends.budget.in_flight() {
                return Err(Closing::Idle { idle_ms: idle_timeout.as_millis() });
            }
            *active_at = now;
            continue;
        }
        let reading = async { Woke::Read(read.as_mut().await) };
        let ticking = async {
            glommio::timer::sleep(deadline - now).await;
            Woke::Tick
        };
        let writer_gone = async {
            let _ = ends.writer_gone.recv().await;
            Woke::WriterGone
        };
        match futures_lite::future::or(reading, futures_lite::future::or(writer_gone, ticking)).await {
            Woke::Read(read) => return read.map_err(Closing::Read),
            Woke::Tick => {}
            Woke::WriterGone => return Err(Closing::WriterGone),
        }
    }
}

/// The framing is lost: answer once, with request id 0, then close.
async fn refuse_frame(responses: &local_channel::LocalSender<Outgoing>, error: FrameError) -> Closing {
    let failure = Failure::new(fb::ErrorCode::BadFrame, error.to_string());
    let _ = responses.send(Outgoing::new(Kind::ErrorResponse, 0, protocol::error_response(&failure), None)).await;
    Closing::BadFrame(error)
}

/// A frame whose request id has `BROKER_REQUEST_BIT`: an answer to a
/// request the broker started goes to the link; a client request numbered
/// that way is refused (the connection goes on), never left unanswered. The
/// refusal holds the budget as an answer does, so a client that sends such
/// requests and reads nothing is stopped by its budget.
async fn refuse_or_deliver(frame: Frame, ends: &ConnectionEnds<'_>) -> Result<(), Closing> {
    let is_request = Kind::from_u16(frame.kind).is_some_and(|kind| kind.response().is_some());
    if !is_request {
        ends.link.answered(frame);
        return Ok(());
    }
    let held = ends.budget.hold(0).await?;
    let failure = Failure::new(
        fb::ErrorCode::InvalidRequest,
        format!("request id {:#x} has the high bit set: those ids are the broker's own requests", frame.request_id),
    );
    let refusal = Outgoing::new(Kind::ErrorResponse, frame.request_id, protocol::error_response(&failure), Some(held));
    let _ = ends.responses.send(refusal).await;
    Ok(())
}

async fn dispatch(
    shard: &Rc<Shard>,
    frame: Frame,
    budget: &Budget,
    responses: &Rc<local_channel::LocalSender<Outgoing>>,
    link: &Rc<ProducerLink>,
) -> Result<(), Closing> {
    let held = budget.hold(frame.body.len()).await?;
    let (shard, responses, link) = (shard.clone(), responses.clone(), link.clone());
    glommio::spawn_local(async move {
        shard.requests_in_flight.set(shard.requests_in_flight.get() + 1);
        let body_bytes = frame.body.len() as u64;
        let in_flight = &shard.counters.request_bytes_in_flight;
        in_flight.set(in_flight.get() + body_bytes);
        let request_id = frame.request_id;
        let (kind, body) = match handlers::handle(&shard, &link, frame).await {
            Ok(answer) => answer,
            Err(failure) => {
                tracing::debug!(%failure, request_id, "request failed");
                (Kind::ErrorResponse, protocol::error_response(&failure))
            }
        };
        shard.requests_in_flight.set(shard.requests_in_flight.get() - 1);
        let in_flight = &shard.counters.request_bytes_in_flight;
        in_flight.set(in_flight.get().saturating_sub(body_bytes));
        let _ = responses.send(Outgoing::new(kind, request_id, body, Some(held))).await;
    })
    .detach();
    Ok(())
}

/// Writes answers as they come (`glommio_io::write_frames`: those already
/// waiting in one write, an answer's budget back once it is written). A
/// write that fails or does not finish within `write_timeout` (the peer
/// does not read) ends the connection: `failed` tells the reader.
async fn write_responses(
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    outbox: LocalReceiver<Outgoing>,
    write_timeout: Duration,
    failed: local_channel::LocalSender<()>,
) {
    let reason = match glommio_io::write_frames(&mut writer, &outbox, Some(write_timeout)).await {
        Ok(()) => return,
        Err(WriteError::Io(error)) => error.to_string(),
        Err(error @ WriteError::TimedOut { .. }) => {
            format!("{error}: the peer does not read (connection_write_timeout_ms)")
        }
    };
    tracing::info!(%reason, "write failed; dropping answers and closing the connection");
    let _ = failed.try_send(());
    // Keep taking answers so their budget comes back and the connection can
    // finish; they have nowhere to go.
    while outbox.recv().await.is_some() {}
}
