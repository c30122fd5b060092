//! One client connection: frames are read and handled concurrently
//! (pipelining, bounded per connection), and answered by request id in the
//! order they complete. A frame that cannot be parsed closes the connection
//! after an error response; any other bad request gets an error response and
//! the connection goes on.

use super::handlers;
use super::shard::Shard;
use crate::protocol::{self, decode_frame, encode_frame, fb, Failure, Frame, FrameError, Kind};
use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
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
        let (responses, outbox) = local_channel::new_bounded::<Vec<u8>>(in_flight_max);
        let writer_task = glommio::spawn_local(write_responses(writer, outbox));
        let in_flight = Rc::new(glommio::sync::Semaphore::new(in_flight_max as u64));
        let responses = Rc::new(responses);
        let outcome = read_requests(&shard, reader, &in_flight, &responses).await;
        if let Err(error) = &outcome {
            tracing::info!(%error, "closing the connection");
        }
        // Let the requests in flight finish and their answers go out.
        let _ = in_flight.acquire(in_flight_max as u64).await;
        drop(responses);
        writer_task.await;
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await
}

async fn read_requests(
    shard: &Rc<Shard>,
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
    in_flight: &Rc<glommio::sync::Semaphore>,
    responses: &Rc<local_channel::LocalSender<Vec<u8>>>,
) -> Result<(), String> {
    let body_max = shard.config.frame_body_bytes_max;
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0; READ_CHUNK_BYTES];
    loop {
        loop {
            match decode_frame(&mut buffer, body_max) {
                Ok(Some(frame)) => dispatch(shard, frame, in_flight, responses).await?,
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
async fn refuse_frame(responses: &local_channel::LocalSender<Vec<u8>>, error: FrameError) -> String {
    let failure = Failure::new(fb::ErrorCode::BadFrame, error.to_string());
    let frame = encode_frame(Kind::ErrorResponse as u16, 0, &protocol::error_response(&failure));
    let _ = responses.send(frame).await;
    error.to_string()
}

async fn dispatch(
    shard: &Rc<Shard>,
    frame: Frame,
    in_flight: &Rc<glommio::sync::Semaphore>,
    responses: &Rc<local_channel::LocalSender<Vec<u8>>>,
) -> Result<(), String> {
    let permit = in_flight.acquire_static_permit(1).await.map_err(|error| error.to_string())?;
    let (shard, responses) = (shard.clone(), responses.clone());
    glommio::spawn_local(async move {
        shard.requests_in_flight.set(shard.requests_in_flight.get() + 1);
        let request_id = frame.request_id;
        let response = match handlers::handle(&shard, frame).await {
            Ok((kind, body)) => encode_frame(kind as u16, request_id, &body),
            Err(failure) => {
                tracing::debug!(%failure, request_id, "request failed");
                encode_frame(Kind::ErrorResponse as u16, request_id, &protocol::error_response(&failure))
            }
        };
        let _ = responses.send(response).await;
        shard.requests_in_flight.set(shard.requests_in_flight.get() - 1);
        drop(permit);
    })
    .detach();
    Ok(())
}

/// Writes answers as they come, coalescing those already waiting into one
/// write.
async fn write_responses(mut writer: futures_lite::io::WriteHalf<TcpStream>, outbox: LocalReceiver<Vec<u8>>) {
    let mut pending = Vec::new();
    while let Some(frame) = outbox.recv().await {
        pending.extend_from_slice(&frame);
        while let Some(Some(frame)) = futures_lite::future::poll_once(outbox.recv()).await {
            pending.extend_from_slice(&frame);
            if pending.len() > 1 << 20 {
                break;
            }
        }
        if let Err(error) = writer.write_all(&pending).await {
            tracing::debug!(%error, "write failed; dropping answers");
            return;
        }
        pending.clear();
    }
    let _ = writer.flush().await;
    let _ = writer.close().await;
}
