//! A connection for code that runs inside a glommio executor (the load
//! generator): no threads, no locks. A writer task sends the frames queued by
//! any task of the executor; a reader task hands each answer to the task
//! waiting for its request id. Many requests may be in flight; every frame
//! queued for the writer has a caller waiting for its answer, so the
//! callers bound the queue. Connecting and every request have timeouts
//! (a write that stalls shows as its requests' timeouts); a request that
//! times out closes the connection, which is then replaced, never reused
//! with a late answer on its way.

use super::awaited::AwaitedAnswers;
use super::connection::read_failure;
use super::{expect_kind, ClientError};
use crate::framed::glommio_io::{self, AsyncFrameReader};
use crate::protocol::{DecoderLimits, Kind, WireFrame};
use crate::wire::Finished;
use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// `future`, or `Timeout` after `limit`.
async fn within<T>(limit: Duration, future: impl Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    glommio_io::within(limit, future).await.unwrap_or(Err(ClientError::Timeout { after: limit }))
}

/// The writer and reader tasks; dropping them cancels both and closes the
/// socket.
type Tasks = Rc<RefCell<Option<(glommio::Task<()>, glommio::Task<()>)>>>;

/// What the connection, its reader and its deadline watch share.
struct Ends {
    awaited: AwaitedAnswers,
    closed: Cell<bool>,
}

impl Ends {
    /// Fails every request waiting and refuses new ones.
    fn fail(&self, error: &ClientError) {
        self.closed.set(true);
        self.awaited.fail_all(error);
    }

    /// Fails as `fail` does and closes the socket (nothing more is written
    /// or read on it).
    fn close(&self, tasks: &Tasks, error: &ClientError) {
        self.fail(error);
        drop(tasks.borrow_mut().take());
    }
}

pub struct AsyncConnection {
    address: String,
    outbox: LocalSender<WireFrame>,
    ends: Rc<Ends>,
    next_request_id: Cell<u32>,
    timeout: Duration,
    /// Held for the life of the connection (the deadline watch holds them too).
    _tasks: Tasks,
    /// Closes the connection when a request's answer is late; dropped with
    /// the connection.
    _deadline_watch: glommio::Task<()>,
}

impl AsyncConnection {
    /// Connects within `timeout`, which also bounds each request.
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
        let ends = Rc::new(Ends { awaited: AwaitedAnswers::default(), closed: Cell::new(false) });
        let writer_task = glommio::spawn_local(write_frames(writer, frames, ends.clone(), address.to_string()));
        let reader = AsyncFrameReader::new(reader, DecoderLimits::answers());
        let reader_task = glommio::spawn_local(read_frames(reader, ends.clone(), address.to_string()));
        let tasks: Tasks = Rc::new(RefCell::new(Some((writer_task, reader_task))));
        let deadline_watch = glommio::spawn_local(watch_deadlines(ends.clone(), tasks.clone(), timeout));
        Ok(Rc::new(Self {
            address: address.to_string(),
            outbox,
            ends,
            next_request_id: Cell::new(1),
            timeout,
            _tasks: tasks,
            _deadline_watch: deadline_watch,
        }))
    }

    pub fn is_closed(&self) -> bool {
        self.ends.closed.get()
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

    /// The answer within the connection's timeout (`watch_deadlines`
    /// closes the connection and fails every request once one is late).
    async fn request_framed(&self, kind: Kind, frame: impl FnOnce(u32) -> WireFrame) -> Result<Bytes, ClientError> {
        let response = kind.response().ok_or_else(|| ClientError::Usage(format!("{kind:?} is not a request")))?;
        if self.ends.closed.get() {
            return Err(ClientError::Closed { address: self.address.clone() });
        }
        let request_id = self.next_request_id.get();
        // Never `BROKER_REQUEST_BIT`: those ids are the broker's own requests.
        self.next_request_id.set((request_id.wrapping_add(1) & !crate::protocol::BROKER_REQUEST_BIT).max(1));
        let awaited = &self.ends.awaited;
        let (slot, arrival) = awaited.expect(request_id, Instant::now() + self.timeout);
        // However this ends (answered, failed, or the caller gave up), the
        // request stops counting against the deadline watch.
        let _waiting = scopeguard(|| awaited.forget(request_id, &slot));
        if self.outbox.try_send(frame(request_id)).is_err() {
            return Err(ClientError::Closed { address: self.address.clone() });
        }
        expect_kind(arrival.await?, response)
    }
}

/// Runs `on_drop` when dropped.
fn scopeguard(on_drop: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(on_drop) = self.0.take() {
                on_drop();
            }
        }
    }
    Guard(Some(on_drop))
}

/// Sleeps until the oldest unanswered request's deadline; a request still
/// unanswered then closes the connection, failing every request with
/// `Timeout`. One timer for the connection, re-armed only as the oldest
/// request changes.
async fn watch_deadlines(ends: Rc<Ends>, tasks: Tasks, timeout: Duration) {
    while !ends.closed.get() {
        let now = Instant::now();
        match ends.awaited.earliest_deadline() {
            // Any request sent from now on is due after `now + timeout`.
            None => glommio::timer::sleep(timeout).await,
            Some(deadline) if deadline > now => glommio::timer::sleep(deadline - now).await,
            Some(_) => ends.close(&tasks, &ClientError::Timeout { after: timeout }),
        }
    }
}

/// No timer per write: a frame queued is a request's, whose deadline
/// closes the connection (and drops this task) if the write stalls. A
/// frame whose caller gave up is watched no more: a write stalled on it
/// shows at the next request's deadline, and meanwhile nobody waits.
async fn write_frames(
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    frames: LocalReceiver<WireFrame>,
    ends: Rc<Ends>,
    address: String,
) {
    // Failed: the requests waiting will get no answer over this socket
    // (the reader may not see its end soon), and new ones are refused.
    if let Err(error) = glommio_io::write_frames(&mut writer, &frames, None).await {
        ends.fail(&ClientError::Io { address, error: error.to_string() });
    }
}

async fn read_frames(
    mut reader: AsyncFrameReader<futures_lite::io::ReadHalf<TcpStream>>,
    ends: Rc<Ends>,
    address: String,
) {
    let error = loop {
        match reader.next_frame().await {
            Ok(Some(frame)) => ends.awaited.answer(frame),
            Ok(None) => break ClientError::Closed { address: address.clone() },
            Err(error) => break read_failure(&address, error),
        }
    };
    ends.fail(&error);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode_frame;
    use futures_lite::AsyncWriteExt;
    use glommio::net::TcpListener;

    /// Long enough that a loaded machine answers over loopback within it.
    const TIMEOUT: Duration = Duration::from_secs(1);

    /// A peer that answers the requests `answer` picks, in the order of the
    /// ids it returns, once it has read `batch` requests.
    async fn peer(listener: TcpListener, batch: usize, answer: impl Fn(Vec<u32>) -> Vec<u32>) {
        let stream = listener.accept().await.expect("a connection");
        let (reader, mut writer) = futures_lite::io::split(stream);
        let mut reader = AsyncFrameReader::new(reader, DecoderLimits::answers());
        loop {
            let mut ids = Vec::new();
            while ids.len() < batch {
                match reader.next_frame().await {
                    Ok(Some(frame)) => ids.push(frame.request_id),
                    _ => return,
                }
            }
            for id in answer(ids) {
                let frame = encode_frame(Kind::ProduceResponse as u16, id, b"answered");
                if writer.write_all(&frame).await.is_err() {
                    return;
                }
            }
        }
    }

    fn run(test: impl std::future::Future<Output = ()> + 'static) {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(test);
    }

    /// `count` requests in flight at once, their answers in the order sent.
    async fn all_at_once(connection: &Rc<AsyncConnection>, count: usize) -> Vec<Result<Bytes, ClientError>> {
        let tasks: Vec<_> = (0..count)
            .map(|_| {
                let connection = connection.clone();
                glommio::spawn_local(async move { connection.request(Kind::ProduceRequest, b"request").await })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await);
        }
        answers
    }

    fn listen() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let address = listener.local_addr().expect("its address").to_string();
        (listener, address)
    }

    #[test]
    fn answers_out_of_order_reach_their_requests() {
        run(async {
            let (listener, address) = listen();
            let _peer = glommio::spawn_local(peer(listener, 3, |ids| ids.into_iter().rev().collect()));
            let connection = AsyncConnection::connect(&address, TIMEOUT).await.expect("connected");
            for answer in all_at_once(&connection, 3).await {
                assert_eq!(answer.expect("answered").as_ref(), b"answered");
            }
            assert!(!connection.is_closed());
        });
    }

    #[test]
    fn an_unanswered_request_times_out_every_request_and_closes_the_connection() {
        run(async {
            let (listener, address) = listen();
            let _peer = glommio::spawn_local(peer(listener, usize::MAX, |_| Vec::new()));
            let connection = AsyncConnection::connect(&address, TIMEOUT).await.expect("connected");
            let started = Instant::now();
            for answer in all_at_once(&connection, 2).await {
                assert!(matches!(answer, Err(ClientError::Timeout { after }) if after == TIMEOUT), "{answer:?}");
            }
            assert!(started.elapsed() >= TIMEOUT, "not before the timeout");
            assert!(connection.is_closed());
            let after = connection.request(Kind::ProduceRequest, b"request").await;
            assert!(matches!(after, Err(ClientError::Closed { .. })), "{after:?}");
        });
    }

    #[test]
    fn a_peer_that_closes_fails_every_request_at_once() {
        run(async {
            let (listener, address) = listen();
            let _peer = glommio::spawn_local(async move {
                let stream = listener.accept().await.expect("a connection");
                let mut reader = AsyncFrameReader::new(stream, DecoderLimits::answers());
                let _ = reader.next_frame().await;
            });
            let connection = AsyncConnection::connect(&address, TIMEOUT).await.expect("connected");
            let started = Instant::now();
            for answer in all_at_once(&connection, 2).await {
                // The reader sees the end, or the writer fails first.
                let failed_at_once = matches!(answer, Err(ClientError::Closed { .. } | ClientError::Io { .. }));
                assert!(failed_at_once, "{answer:?}");
            }
            assert!(started.elapsed() < TIMEOUT, "failed when the peer closed, not at the timeout");
            assert!(connection.is_closed());
        });
    }

    #[test]
    fn a_write_the_peer_never_reads_times_its_request_out() {
        run(async {
            let (listener, address) = listen();
            let _peer = glommio::spawn_local(async move {
                let _stream = listener.accept().await.expect("a connection");
                glommio::timer::sleep(TIMEOUT * 10).await;
            });
            let connection = AsyncConnection::connect(&address, TIMEOUT).await.expect("connected");
            // Far more than the socket buffers hold: the write stalls.
            let body = vec![7u8; 64 * 1024 * 1024];
            let answer = connection.request(Kind::ProduceRequest, &body).await;
            assert!(matches!(answer, Err(ClientError::Timeout { .. })), "{answer:?}");
            assert!(connection.is_closed());
        });
    }

    #[test]
    fn a_request_its_caller_gave_up_does_not_time_the_connection_out() {
        run(async {
            let (listener, address) = listen();
            // Answers every request but the first.
            let _peer = glommio::spawn_local(peer(listener, 1, |ids| ids.into_iter().filter(|id| *id != 1).collect()));
            let connection = AsyncConnection::connect(&address, TIMEOUT).await.expect("connected");
            let given_up = glommio_io::within(TIMEOUT / 4, connection.request(Kind::ProduceRequest, b"first")).await;
            assert!(given_up.is_none(), "the first request is never answered");
            glommio::timer::sleep(TIMEOUT * 2).await;
            let answer = connection.request(Kind::ProduceRequest, b"second").await;
            assert_eq!(answer.expect("answered").as_ref(), b"answered");
            assert!(!connection.is_closed());
        });
    }
}
