//! One TCP connection to one shard, usable from any thread: requests are
//! written under a lock and answered by a reader thread that hands each
//! response to whoever waits for its request id. Many requests may be in
//! flight at once (pipelining). A frame whose request id has
//! `BROKER_REQUEST_BIT` set is a request the broker started (a check-back
//! to a registered producer): the reader hands it to the connection's
//! `BrokerRequests` handler, and `answer` replies to it.

use super::ClientError;
use crate::framed::{FrameReader, ReadError};
use crate::protocol::{DecoderLimits, Frame, WireFrame, BROKER_REQUEST_BIT};
use crate::wire::Finished;
use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Writes wait at least this long before the connection is given up.
const WRITE_TIMEOUT_MIN: Duration = Duration::from_secs(1);

type Deliver = Box<dyn FnOnce(Result<Frame, ClientError>) + Send>;
/// Takes the requests the broker starts on a connection. It runs on the
/// connection's reader thread: it must hand the frame off, not wait for
/// anything on this connection.
pub type BrokerRequests = Arc<dyn Fn(Frame) + Send + Sync>;

struct Shared {
    pending: Mutex<HashMap<u32, Deliver>>,
    broker_requests: Mutex<Option<BrokerRequests>>,
    closed: AtomicBool,
    /// A handle on the socket, to shut it down when it is given up.
    socket: TcpStream,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn fail_all(&self, error: &ClientError) {
        self.closed.store(true, Ordering::SeqCst);
        // Wakes the reader thread, which then ends.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        let pending: Vec<Deliver> = lock(&self.pending).drain().map(|(_, deliver)| deliver).collect();
        for deliver in pending {
            deliver(Err(error.clone()));
        }
    }
}

pub struct Connection {
    address: String,
    writer: Mutex<TcpStream>,
    shared: Arc<Shared>,
    next_request_id: AtomicU32,
}

/// A request in flight; `wait` for its answer.
pub struct Pending {
    request_id: u32,
    receiver: mpsc::Receiver<Result<Frame, ClientError>>,
    shared: Arc<Shared>,
}

impl Pending {
    /// The answer, or `Timeout`. A connection that let a request time out
    /// is given up (its other requests fail as closed): it is never reused
    /// with a late answer still on its way.
    pub fn wait(self, timeout: Duration) -> Result<Frame, ClientError> {
        match self.receiver.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => {
                lock(&self.shared.pending).remove(&self.request_id);
                let error = ClientError::Timeout { after: timeout };
                self.shared.fail_all(&error);
                Err(error)
            }
        }
    }
}

impl Connection {
    pub fn open(address: &str, timeout: Duration) -> Result<Arc<Self>, ClientError> {
        let connect_error = |error: String| ClientError::Connect { address: address.to_string(), error };
        let resolved = address.to_socket_addrs().map_err(|error| connect_error(error.to_string()))?.next();
        let resolved = resolved.ok_or_else(|| connect_error("no address".into()))?;
        let stream =
            TcpStream::connect_timeout(&resolved, timeout).map_err(|error| connect_error(error.to_string()))?;
        stream.set_nodelay(true).map_err(|error| connect_error(error.to_string()))?;
        // A broker that stops reading must not hang a writer forever.
        stream
            .set_write_timeout(Some(timeout.max(WRITE_TIMEOUT_MIN)))
            .map_err(|error| connect_error(error.to_string()))?;
        let reader = stream.try_clone().map_err(|error| connect_error(error.to_string()))?;
        let socket = stream.try_clone().map_err(|error| connect_error(error.to_string()))?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            broker_requests: Mutex::new(None),
            closed: AtomicBool::new(false),
            socket,
        });
        let reader_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("ringmq-client-{address}"))
            .spawn(move || read_responses(reader, &reader_shared))
            .map_err(|error| connect_error(error.to_string()))?;
        Ok(Arc::new(Self {
            address: address.to_string(),
            writer: Mutex::new(stream),
            shared,
            next_request_id: AtomicU32::new(1),
        }))
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Sends a request; `deliver` gets its answer (or the connection's end).
    pub fn send_with(&self, kind: u16, body: &[u8], deliver: Deliver) -> Result<u32, ClientError> {
        self.send_frame(|request_id| WireFrame::encoded(kind, request_id, body), deliver)
    }

    /// `send` for a body built with room for its frame header
    /// (`produce_request`): the frame is written without copying the body.
    pub fn send_body(&self, kind: u16, body: Finished) -> Result<Pending, ClientError> {
        self.send_pending(|request_id| WireFrame::in_place(body, kind, request_id))
    }

    /// Sends a frame whose answer a `Pending` waits for.
    fn send_pending(&self, frame: impl FnOnce(u32) -> WireFrame) -> Result<Pending, ClientError> {
        let (sender, receiver) = mpsc::channel();
        let deliver: Deliver = Box::new(move |result| {
            let _ = sender.send(result);
        });
        let request_id = self.send_frame(frame, deliver)?;
        Ok(Pending { request_id, receiver, shared: self.shared.clone() })
    }

    fn send_frame(&self, frame: impl FnOnce(u32) -> WireFrame, deliver: Deliver) -> Result<u32, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed { address: self.address.clone() });
        }
        // 0 is what the broker uses for answers to frames it could not read;
        // ids with `BROKER_REQUEST_BIT` are the broker's own requests.
        let request_id = loop {
            let id = self.next_request_id.fetch_add(1, Ordering::Relaxed) & !BROKER_REQUEST_BIT;
            if id != 0 {
                break id;
            }
        };
        lock(&self.shared.pending).insert(request_id, deliver);
        // The reader may have failed everything between the check above and
        // the insert: then nobody would ever answer this request.
        if self.is_closed() {
            if let Some(deliver) = lock(&self.shared.pending).remove(&request_id) {
                deliver(Err(ClientError::Closed { address: self.address.clone() }));
            }
            return Err(ClientError::Closed { address: self.address.clone() });
        }
        self.write(frame(request_id).bytes())?;
        Ok(request_id)
    }

    pub fn send(&self, kind: u16, body: &[u8]) -> Result<Pending, ClientError> {
        self.send_pending(|request_id| WireFrame::encoded(kind, request_id, body))
    }

    pub fn request(&self, kind: u16, body: &[u8], timeout: Duration) -> Result<Frame, ClientError> {
        self.send(kind, body)?.wait(timeout)
    }

    /// Where the requests the broker starts on this connection go; without
    /// one they are dropped (the broker gives up waiting).
    pub fn on_broker_requests(&self, handler: BrokerRequests) {
        *lock(&self.shared.broker_requests) = Some(handler);
    }

    /// Answers a request the broker started (`request_id` has
    /// `BROKER_REQUEST_BIT`).
    pub fn answer(&self, kind: u16, request_id: u32, body: &[u8]) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed { address: self.address.clone() });
        }
        self.write(WireFrame::encoded(kind, request_id, body).bytes())
    }

    /// A whole frame out, in one `write_all` so that frames written under
    /// the lock never interleave; a failed write gives the connection up.
    fn write(&self, frame: &[u8]) -> Result<(), ClientError> {
        if let Err(error) = lock(&self.writer).write_all(frame) {
            let error = ClientError::Io { address: self.address.clone(), error: error.to_string() };
            self.shared.fail_all(&error);
            return Err(error);
        }
        Ok(())
    }

    /// Forgets a request whose answer is no longer wanted.
    pub fn forget(&self, request_id: u32) {
        lock(&self.shared.pending).remove(&request_id);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
    }
}

fn read_responses(stream: TcpStream, shared: &Shared) {
    let address = stream.peer_addr().map(|address| address.to_string()).unwrap_or_default();
    let mut frames = FrameReader::new(stream, DecoderLimits::answers());
    let error = loop {
        match frames.next_frame() {
            Ok(Some(frame)) if frame.request_id & BROKER_REQUEST_BIT != 0 => {
                let handler = lock(&shared.broker_requests).clone();
                if let Some(handler) = handler {
                    handler(frame);
                }
            }
            Ok(Some(frame)) => {
                // Not under the lock: a callback may send again.
                let deliver = lock(&shared.pending).remove(&frame.request_id);
                if let Some(deliver) = deliver {
                    deliver(Ok(frame));
                }
            }
            Ok(None) => break ClientError::Closed { address: address.clone() },
            Err(error) => break read_failure(&address, error),
        }
    };
    shared.fail_all(&error);
}

/// What a reader that cannot go on tells those waiting for answers.
pub(super) fn read_failure(address: &str, error: ReadError) -> ClientError {
    match error {
        ReadError::Io(error) => ClientError::Io { address: address.to_string(), error: error.to_string() },
        ReadError::BadFrame(error) => ClientError::Protocol(format!("bad frame from {address}: {error}")),
        ReadError::Truncated(_) => ClientError::Closed { address: address.to_string() },
    }
}
