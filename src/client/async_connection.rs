//! A connection for code that runs inside a glommio executor (the load
//! generator): no threads, no locks. A writer task sends the frames queued by
//! any task of the executor; a reader task hands each answer to the task
//! waiting for its request id. Many requests may be in flight.

use super::{expect_kind, ClientError};
use crate::constants::FRAME_BODY_BYTES_MAX;
use crate::protocol::{decode_frame, encode_frame, Frame, Kind};
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

type Waiters = Rc<RefCell<HashMap<u32, LocalSender<Result<Frame, ClientError>>>>>;

pub struct AsyncConnection {
    address: String,
    outbox: LocalSender<Vec<u8>>,
    waiters: Waiters,
    closed: Rc<Cell<bool>>,
    next_request_id: Cell<u32>,
    _tasks: (glommio::Task<()>, glommio::Task<()>),
}

impl AsyncConnection {
    pub async fn connect(address: &str) -> Result<Rc<Self>, ClientError> {
        let connect_error = |error: String| ClientError::Connect { address: address.to_string(), error };
        let stream = TcpStream::connect(address).await.map_err(|error| connect_error(error.to_string()))?;
        stream.set_nodelay(true).map_err(|error| connect_error(error.to_string()))?;
        let (reader, writer) = futures_lite::io::split(stream);
        let (outbox, frames) = local_channel::new_unbounded();
        let waiters: Waiters = Rc::new(RefCell::new(HashMap::new()));
        let closed = Rc::new(Cell::new(false));
        let writer_task = glommio::spawn_local(write_frames(writer, frames, closed.clone()));
        let reader_task =
            glommio::spawn_local(read_frames(reader, waiters.clone(), closed.clone(), address.to_string()));
        Ok(Rc::new(Self {
            address: address.to_string(),
            outbox,
            waiters,
            closed,
            next_request_id: Cell::new(1),
            _tasks: (writer_task, reader_task),
        }))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Sends a request and waits for its answer of the matching kind.
    pub async fn request(&self, kind: Kind, body: &[u8]) -> Result<Bytes, ClientError> {
        let response = kind.response().ok_or_else(|| ClientError::Usage(format!("{kind:?} is not a request")))?;
        if self.closed.get() {
            return Err(ClientError::Closed { address: self.address.clone() });
        }
        let request_id = self.next_request_id.get();
        self.next_request_id.set(request_id.wrapping_add(1).max(1));
        let (sender, receiver) = local_channel::new_bounded(1);
        self.waiters.borrow_mut().insert(request_id, sender);
        if self.outbox.try_send(encode_frame(kind as u16, request_id, body)).is_err() {
            self.waiters.borrow_mut().remove(&request_id);
            return Err(ClientError::Closed { address: self.address.clone() });
        }
        let frame =
            receiver.recv().await.unwrap_or_else(|| Err(ClientError::Closed { address: self.address.clone() }))?;
        expect_kind(frame, response)
    }
}

async fn write_frames(
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    frames: LocalReceiver<Vec<u8>>,
    closed: Rc<Cell<bool>>,
) {
    let mut pending = Vec::new();
    while let Some(frame) = frames.recv().await {
        pending.extend_from_slice(&frame);
        while let Some(Some(frame)) = futures_lite::future::poll_once(frames.recv()).await {
            pending.extend_from_slice(&frame);
            if pending.len() > 1 << 20 {
                break;
            }
        }
        if writer.write_all(&pending).await.is_err() {
            closed.set(true);
            return;
        }
        pending.clear();
    }
}

async fn read_frames(
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
    waiters: Waiters,
    closed: Rc<Cell<bool>>,
    address: String,
) {
    let mut buffer = BytesMut::with_capacity(256 * 1024);
    let mut chunk = vec![0; 256 * 1024];
    let error = loop {
        match decode_frame(&mut buffer, FRAME_BODY_BYTES_MAX * 2) {
            Ok(Some(frame)) => {
                if let Some(waiter) = waiters.borrow_mut().remove(&frame.request_id) {
                    let _ = waiter.try_send(Ok(frame));
                }
                continue;
            }
            Ok(None) => {}
            Err(error) => break ClientError::Protocol(error.to_string()),
        }
        match reader.read(&mut chunk).await {
            Ok(0) => break ClientError::Closed { address: address.clone() },
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(error) => break ClientError::Io { address: address.clone(), error: error.to_string() },
        }
    };
    closed.set(true);
    for (_, waiter) in waiters.borrow_mut().drain() {
        let _ = waiter.try_send(Err(error.clone()));
    }
}
