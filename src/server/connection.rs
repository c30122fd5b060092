//! One client connection: frames are read and handled concurrently
//! (pipelining), and answered by request id in the order they complete.
//! What a client can pin is bounded: at most `in_flight_max` requests and
//! `in_flight_bytes_max` bytes of request bodies per connection, counted
//! until the answer is written to the socket; past that the connection is
//! not read (TCP pushes back on the client). A frame that cannot be parsed closes the connection
//! after an error response; any other bad request gets an error response and
//! the connection goes on.
//!
//! The connection is also the broker's way to a registered producer
//! (`producer_links`): a frame whose request id has `BROKER_REQUEST_BIT`
//! set answers a request the broker started (a check-back) and goes to the
//! link, not to a handler.

use super::handlers;
use super::outgoing::Outgoing;
use super::producer_links::ProducerLink;
use super::shard::Shard;
use crate::protocol::{self, decode_frame, fb, Failure, Frame, FrameError, Kind, BROKER_REQUEST_BIT};
use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use std::rc::Rc;
use tracing::Instrument;

const READ_CHUNK_BYTES: usize = 64 * 1024;

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
        let (responses, outbox) = local_channel::new_bounded::<Outgoing>(in_flight_max);
        let writer_task = glommio::spawn_local(write_responses(writer, outbox));
        let budget = Budget::new(in_flight_max, shard.config.in_flight_bytes_max);
        let responses = Rc::new(responses);
        let link = Rc::new(ProducerLink::new(responses.clone()));
        let outcome = read_requests(&shard, reader, &budget, &responses, &link).await;
        if let Err(error) = &outcome {
            tracing::info!(%error, "closing the connection");
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

/// What one connection may hold at once.
struct Budget {
    requests: Rc<Semaphore>,
    kib: Rc<Semaphore>,
    kib_max: u64,
}

impl Budget {
    fn new(requests: usize, bytes: usize) -> Self {
        let kib_max = (bytes / 1024).max(1) as u64;
        Self { requests: Rc::new(Semaphore::new(requests as u64)), kib: Rc::new(Semaphore::new(kib_max)), kib_max }
    }

    async fn hold(&self, body_bytes: usize) -> Result<(StaticPermit, StaticPermit), String> {
        let kib = (body_bytes as u64 / 1024 + 1).min(self.kib_max);
        let request = self.requests.clone().acquire_static_permit(1).await.map_err(|error| error.to_string())?;
        let bytes = self.kib.clone().acquire_static_permit(kib).await.map_err(|error| error.to_string())?;
        Ok((request, bytes))
    }
}

async fn read_requests(
    shard: &Rc<Shard>,
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
    budget: &Budget,
    responses: &Rc<local_channel::LocalSender<Outgoing>>,
    link: &Rc<ProducerLink>,
) -> Result<(), String> {
    let body_max = shard.config.frame_body_bytes_max;
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0; READ_CHUNK_BYTES];
    loop {
        loop {
            match decode_frame(&mut buffer, body_max) {
                Ok(Some(frame)) if frame.request_id & BROKER_REQUEST_BIT != 0 => {
                    refuse_or_deliver(frame, responses, link).await
                }
                Ok(Some(frame)) => dispatch(shard, frame, budget, responses, link).await?,
                Ok(None) => break,
                Err(error) => return Err(refuse_frame(responses, error).await),
            }
        }
        if shard.shutting_down.get() {
            return Err("the broker is shutting down".into());
        }
        let read = reader.read(&mut chunk).await.map_err(|error| error.to_string())?;
        if read == 0 {
            return match buffer.is_empty() {
                true => Ok(()),
                false => Err(format!("the peer closed in the middle of a frame ({} bytes buffered)", buffer.len())),
            };
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// The framing is lost: answer once, with request id 0, then close.
async fn refuse_frame(responses: &local_channel::LocalSender<Outgoing>, error: FrameError) -> String {
    let failure = Failure::new(fb::ErrorCode::BadFrame, error.to_string());
    let _ = responses.send(Outgoing::new(Kind::ErrorResponse, 0, protocol::error_response(&failure), None)).await;
    error.to_string()
}

/// A frame whose request id has `BROKER_REQUEST_BIT`: an answer to a
/// request the broker started goes to the link; a client request numbered
/// that way is refused (the connection goes on), never left unanswered.
async fn refuse_or_deliver(frame: Frame, responses: &local_channel::LocalSender<Outgoing>, link: &ProducerLink) {
    let is_request = Kind::from_u16(frame.kind).is_some_and(|kind| kind.response().is_some());
    if !is_request {
        link.answered(frame);
        return;
    }
    let failure = Failure::new(
        fb::ErrorCode::InvalidRequest,
        format!("request id {:#x} has the high bit set: those ids are the broker's own requests", frame.request_id),
    );
    let refusal = Outgoing::new(Kind::ErrorResponse, frame.request_id, protocol::error_response(&failure), None);
    let _ = responses.send(refusal).await;
}

async fn dispatch(
    shard: &Rc<Shard>,
    frame: Frame,
    budget: &Budget,
    responses: &Rc<local_channel::LocalSender<Outgoing>>,
    link: &Rc<ProducerLink>,
) -> Result<(), String> {
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

/// Writes answers as they come, coalescing those already waiting into one
/// write.
async fn write_responses(mut writer: futures_lite::io::WriteHalf<TcpStream>, outbox: LocalReceiver<Outgoing>) {
    let mut pending = Vec::new();
    let mut written = Vec::new();
    while let Some(answer) = outbox.recv().await {
        pending.extend_from_slice(&answer.header);
        pending.extend_from_slice(&answer.body);
        written.push(answer);
        while let Some(Some(answer)) = futures_lite::future::poll_once(outbox.recv()).await {
            pending.extend_from_slice(&answer.header);
            pending.extend_from_slice(&answer.body);
            written.push(answer);
            if pending.len() > 1 << 20 {
                break;
            }
        }
        if let Err(error) = writer.write_all(&pending).await {
            tracing::debug!(%error, "write failed; dropping answers");
            // Keep taking answers so their budget comes back and the
            // connection can finish; they have nowhere to go.
            drop(written);
            while outbox.recv().await.is_some() {}
            return;
        }
        pending.clear();
        // Their budget goes back only now that the bytes left.
        written.clear();
    }
    let _ = writer.flush().await;
    let _ = writer.close().await;
}
