//! A connection for code that runs inside a glommio executor (the load
//! generator): no threads, no locks. A writer task sends the frames queued by
//! any task of the executor; a reader task hands each answer to the task
//! waiting for its request id. Many requests may be in flight, but the
//! queue of frames not yet written is bounded (a sender waits for room).
//! Connecting, writing and every request have timeouts; a request that
//! times out closes the connection, which is then replaced, never reused
//! with a late answer on its way.

use super::connection::read_failure;
use super::{expect_kind, ClientError};
use crate::framed::glommio_io::{self, AsyncFrameReader};
use crate::protocol::{DecoderLimits, Frame, Kind, WireFrame};
use crate::wire::Finished;
use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

/// `future`, or `Timeout` after `limit`.
async fn within<T>(limit: Duration, future: impl Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    glommio_io::within(limit, future).await.unwrap_or(Err(ClientError::Timeout { after: limit }))
}

type Waiters = Rc<RefCell<HashMap<u32, LocalSender<Result<Frame, ClientError>>>>>;

pub struct AsyncConnection {
    address: String,
    outbox: LocalSender<WireFrame>,
    waiters: Waiters,
    closed: Rc<Cell<bool>>,
    next_request_id: Cell<u32>,
    timeout: Duration,
    /// The writer and reader tasks; dropping them (at `close`) cancels
    /// both and closes the socket.
    tasks: RefCell<Option<(glommio::Task<()>, glommio::Task<()>)>>,
}

impl AsyncConnection {
    /// Connects within `timeout`, which also bounds each request and write.
    pub async fn connect(address: &str, timeout: Duration) -> Result<Rc<Self>, ClientError> {
        let connect_error = |error: String| ClientError::Connect { address: address.to_string(), error };
        let connecting = async { TcpStream::connect(address).await.map_err(|error| connect_error(error.to_string())) };
        let stream = within(timeout, connecting).await?;
        stream.set_nodelay(true).map_err(|error| connect_error(error.to_string()))?;
        let (reader, writer) = futures_lite::io::split(stream);
        // Unbounded, so frames go out in the order `request` was called: a
        // bounded channel lets a new sender overtake one waiting for room,
        // which reorders a producer's sequenced requests. Every queued frame
        // has a caller waiting for its answer, so the callers' own
        // concurrency bounds the queue.
        let (outbox, frames) = local_channel::new_unbounded();
        let waiters: Waiters = Rc::new(RefCell::new(HashMap::new()));
        let closed = Rc::new(Cell::new(false));
        let writer_task = glommio::spawn_local(write_frames(writer, frames, closed.clone(), timeout));
        let reader = AsyncFrameReader::new(reader, DecoderLimits::answers());
        let reader_task =
            glommio::spawn_local(read_frames(reader, waiters.clone(), closed.clone(), address.to_string()));
        Ok(Rc::new(Self {
            address: address.to_string(),
            outbox,
            waiters,
            closed,
            next_request_id: Cell::new(1),
            timeout,
            tasks: RefCell::new(Some((writer_task, reader_task))),
        }))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Sends a request and waits for its answer of the matching kind, for
    /// at most the connection's timeout; a timeout closes the connection.
    pub async fn request(&self, kind: Kind, body: &[u8]) -> Result<Bytes, ClientError> {
        self.request_framed(kind, |request_id| WireFrame::encoded(kind as u16, request_id, body)).await
    }

    /// `request` for a body built with room for its frame header, which
    /// goes out without being copied.
    pub async fn request_body(&self, kind: Kind, body: Finished) -> Result<Bytes, ClientError> {
        self.request_framed(kind, |request_id| WireFrame::in_place(body, kind as u16, request_id)).await
    }

    async fn request_framed(&self, kind: Kind, frame: impl FnOnce(u32) -> WireFrame) -> Result<Bytes, ClientError> {
        let answer = within(self.timeout, self.request_unbounded(kind, frame)).await;
        if matches!(answer, Err(ClientError::Timeout { .. })) {
            self.close(&ClientError::Timeout { after: self.timeout });
        }
        answer
    }

    /// Fails every request waiting, refuses new ones and closes the socket
    /// (nothing more is written or read on it).
    fn close(&self, error: &ClientError) {
        self.closed.set(true);
        let waiters: Vec<_> = self.waiters.borrow_mut().drain().collect();
        for (_, waiter) in waiters {
            let _ = waiter.try_send(Err(error.clone()));
        }
        drop(self.tasks.borrow_mut().take());
    }

    async fn request_unbounded(&self, kind: Kind, frame: impl FnOnce(u32) -> WireFrame) -> Result<Bytes, ClientError> {
        let response = kind.response().ok_or_else(|| ClientError::Usage(format!("{kind:?} is not a request")))?;
        if self.closed.get() {
            return Err(ClientError::Closed { address: self.address.clone() });
        }
        let request_id = self.next_request_id.get();
        // Never `BROKER_REQUEST_BIT`: those ids are the broker's own requests.
        self.next_request_id.set((request_id.wrapping_add(1) & !crate::protocol::BROKER_REQUEST_BIT).max(1));
        let (sender, receiver) = local_channel::new_bounded(1);
        self.waiters.borrow_mut().insert(request_id, sender);
        if self.outbox.try_send(frame(request_id)).is_err() {
            self.waiters.borrow_mut().remove(&request_id);
            return Err(ClientError::Closed { address: self.address.clone() });
        }
        let frame = receiver.recv().await;
        // Gone unanswered (a timeout or a close): nobody waits for it now.
        self.waiters.borrow_mut().remove(&request_id);
        let frame = frame.unwrap_or_else(|| Err(ClientError::Closed { address: self.address.clone() }))?;
        expect_kind(frame, response)
    }
}

async fn write_frames(
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    frames: LocalReceiver<WireFrame>,
    closed: Rc<Cell<bool>>,
    timeout: Duration,
) {
    // Closed (`close` drops this task): the broker sees the end and the
    // reader's answers stop. Failed: requests find the connection closed.
    if glommio_io::write_frames(&mut writer, &frames, timeout).await.is_err() {
        closed.set(true);
    }
}

async fn read_frames(
    mut reader: AsyncFrameReader<futures_lite::io::ReadHalf<TcpStream>>,
    waiters: Waiters,
    closed: Rc<Cell<bool>>,
    address: String,
) {
    let error = loop {
        match reader.next_frame().await {
            Ok(Some(frame)) => {
                if let Some(waiter) = waiters.borrow_mut().remove(&frame.request_id) {
                    let _ = waiter.try_send(Ok(frame));
                }
            }
            Ok(None) => break ClientError::Closed { address: address.clone() },
            Err(error) => break read_failure(&address, error),
        }
    };
    closed.set(true);
    for (_, waiter) in waiters.borrow_mut().drain() {
        let _ = waiter.try_send(Err(error.clone()));
    }
}
