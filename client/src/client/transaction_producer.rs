//! The transactional producer: a half message, the application's local
//! transaction, then commit or rollback (RocketMQ's two-phase send), and
//! answers to the broker's check-backs of halves left without an outcome.
//!
//! It registers as a live producer of its group on every shard (check-backs
//! come from the shard that holds the half, whichever shard this producer
//! sent to), and again whenever a connection was replaced (a broker
//! restart). A background thread does both: it takes the check requests the
//! connections' reader threads hand it, acknowledges each (the broker
//! counts a check only then), asks the listener's `check_local` and sends
//! the outcome as `END_TRANSACTION` (`from_check`).

use super::connection::{BrokerRequests, Connection};
use super::producer::{OutgoingMessage, Producer, ProducerOptions, QueueChoice, SendReceipt};
use super::{expect_kind, Client, ClientError};
use crate::protocol::{self, fb, verify, Frame, Kind, TransactionCheck};
use crate::wire::verify_message;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the background thread makes sure every shard connection is
/// registered (a restarted broker forgot the registration with the
/// connection).
const REGISTRATION_CHECK: Duration = Duration::from_millis(200);

/// What the application's local transaction decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalOutcome {
    Commit,
    Rollback,
    /// Not decided (yet): the half stays pending and is checked back later.
    Unknown,
}

impl LocalOutcome {
    pub fn wire(self) -> fb::TransactionOutcome {
        match self {
            LocalOutcome::Commit => fb::TransactionOutcome::Commit,
            LocalOutcome::Rollback => fb::TransactionOutcome::Rollback,
            LocalOutcome::Unknown => fb::TransactionOutcome::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LocalOutcome::Commit => "commit",
            LocalOutcome::Rollback => "rollback",
            LocalOutcome::Unknown => "unknown",
        }
    }
}

/// A half message the broker asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedMessage {
    pub transaction_id: String,
    pub msg_id: (u64, u64),
    pub topic: String,
    pub queue: u32,
    pub producer_group: String,
    /// Checks delivered before this one.
    pub checks_delivered: u32,
    pub body: Vec<u8>,
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
}

impl CheckedMessage {
    fn from_check(check: TransactionCheck) -> Self {
        let mut checked = CheckedMessage {
            transaction_id: check.transaction_id,
            msg_id: check.msg_id,
            topic: check.topic,
            queue: check.queue,
            producer_group: check.producer_group,
            checks_delivered: check.checks_delivered,
            body: Vec::new(),
            keys: Vec::new(),
            properties: Vec::new(),
        };
        // The broker stored it verified; one that does not verify now is
        // still checked, by its transaction id alone.
        if let Ok(message) = verify_message(Bytes::from(check.message)) {
            let fields = message.message();
            checked.body = fields.body().map(|body| body.bytes().to_vec()).unwrap_or_default();
            checked.keys = fields.keys().map(|keys| keys.iter().map(str::to_string).collect()).unwrap_or_default();
            checked.properties = fields
                .properties()
                .map(|properties| {
                    properties
                        .iter()
                        .map(|property| (property.key().to_string(), property.value().to_string()))
                        .collect()
                })
                .unwrap_or_default();
        }
        checked
    }

    pub fn msg_id_hex(&self) -> String {
        format!("{:016x}{:016x}", self.msg_id.0, self.msg_id.1)
    }
}

/// The application's side of a transaction.
pub trait TransactionListener: Send + Sync + 'static {
    /// Runs the local transaction of a half message just stored.
    fn execute_local(&self, message: &OutgoingMessage<'_>, transaction_id: &str) -> LocalOutcome;
    /// Says what became of the local transaction of a half the broker still
    /// holds without an outcome (called on the background thread).
    fn check_local(&self, message: &CheckedMessage) -> LocalOutcome;
}

/// A check request a connection's reader handed over.
struct CheckRequest {
    connection: Weak<Connection>,
    frame: Frame,
}

/// Decides a check-back: `TransactionListener::check_local`, or whatever a
/// bare responder (`ringmq tx respond`) answers.
pub type CheckLocal = Arc<dyn Fn(&CheckedMessage) -> LocalOutcome + Send + Sync>;

/// A live producer of a group: registered on every shard, answering its
/// check-backs on a background thread until dropped.
pub struct CheckResponder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CheckResponder {
    pub fn start(
        client: Arc<Client>,
        group: &str,
        check_local: CheckLocal,
        request_timeout: Duration,
    ) -> Result<Self, ClientError> {
        if group.is_empty() {
            return Err(ClientError::Usage("a transactional producer needs a producer group".into()));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (checks, requests) = mpsc::channel();
        let responder = Responder {
            client,
            group: group.to_string(),
            check_local,
            registered: Vec::new(),
            checks,
            request_timeout,
        };
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ringmq-tx-{group}"))
            .spawn(move || responder.run(&requests, &thread_stop))
            .map_err(|error| ClientError::Usage(format!("starting the check-back thread: {error}")))?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for CheckResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub struct TransactionProducer {
    producer: Producer,
    group: String,
    listener: Arc<dyn TransactionListener>,
    next_transaction: AtomicU64,
    _responder: CheckResponder,
}

impl TransactionProducer {
    /// A producer of `topic` in `group`; it starts answering check-backs
    /// of the group's halves at once.
    pub fn new(
        client: Arc<Client>,
        topic: &str,
        group: &str,
        listener: Arc<dyn TransactionListener>,
        options: ProducerOptions,
    ) -> Result<Self, ClientError> {
        let producer = Producer::new(client.clone(), topic, options.clone())?;
        let checking = listener.clone();
        let check_local: CheckLocal = Arc::new(move |message| checking.check_local(message));
        let responder = CheckResponder::start(client, group, check_local, options.request_timeout)?;
        Ok(Self {
            producer,
            group: group.to_string(),
            listener,
            next_transaction: AtomicU64::new(0),
            _responder: responder,
        })
    }

    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Sends `message` as a half, runs the listener's `execute_local` and
    /// ends the transaction with its outcome (nothing for `Unknown`: the
    /// broker checks back). The half's receipt and the local outcome; an
    /// `END_TRANSACTION` that fails is left to the check-back too.
    pub fn send_in_transaction(
        &self,
        message: &OutgoingMessage<'_>,
        choice: QueueChoice,
    ) -> Result<(SendReceipt, LocalOutcome), ClientError> {
        let number = self.next_transaction.fetch_add(1, Ordering::SeqCst);
        let transaction_id = format!("tx-{:016x}-{number}", self.producer.producer_id());
        let receipt = self.producer.send_half(message, choice, &self.group, &transaction_id)?;
        let outcome = self.listener.execute_local(message, &transaction_id);
        if outcome != LocalOutcome::Unknown {
            if let Err(error) = self.producer.end_transaction(receipt.queue, &transaction_id, outcome.wire()) {
                tracing::warn!(%error, transaction_id, "ending the transaction failed; the broker will check back");
            }
        }
        Ok((receipt, outcome))
    }
}

/// The background thread's state.
struct Responder {
    client: Arc<Client>,
    group: String,
    check_local: CheckLocal,
    /// The connections registered so far, by shard.
    registered: Vec<Weak<Connection>>,
    checks: Sender<CheckRequest>,
    request_timeout: Duration,
}

impl Responder {
    fn run(mut self, requests: &Receiver<CheckRequest>, stop: &AtomicBool) {
        let mut next_registration = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if Instant::now() >= next_registration {
                self.register_everywhere();
                next_registration = Instant::now() + REGISTRATION_CHECK;
            }
            match requests.recv_timeout(REGISTRATION_CHECK) {
                Ok(request) => self.answer(request),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Registers on every shard connection not registered yet (new, or a
    /// replacement after the old one closed); a shard not reachable now is
    /// tried again later.
    fn register_everywhere(&mut self) {
        let shards = self.client.shard_count() as usize;
        self.registered.resize(shards, Weak::new());
        for shard in 0..shards {
            let Ok(connection) = self.client.connection(shard as u32) else { continue };
            let known = self.registered[shard].upgrade().is_some_and(|known| Arc::ptr_eq(&known, &connection));
            if known {
                continue;
            }
            let (checks, weak) = (self.checks.clone(), Arc::downgrade(&connection));
            let handler: BrokerRequests = Arc::new(move |frame| {
                let _ = checks.send(CheckRequest { connection: weak.clone(), frame });
            });
            connection.on_broker_requests(handler);
            let body = protocol::register_producer_request(&self.group);
            let registered = connection
                .request(Kind::RegisterProducerRequest as u16, &body, self.request_timeout)
                .and_then(|frame| expect_kind(frame, Kind::RegisterProducerResponse));
            match registered {
                Ok(_) => self.registered[shard] = Arc::downgrade(&connection),
                Err(error) => tracing::debug!(%error, shard, "registering as a producer failed; will try again"),
            }
        }
    }

    /// Acknowledges a check, asks the listener, sends its outcome.
    fn answer(&self, request: CheckRequest) {
        let CheckRequest { connection, frame } = request;
        let Some(connection) = connection.upgrade() else { return };
        if frame.kind != Kind::CheckTransactionRequest as u16 {
            tracing::debug!(kind = frame.kind, "an unexpected request from the broker; ignored");
            return;
        }
        let check = match verify::<fb::CheckTransactionRequest>(&frame.body) {
            Ok(request) => TransactionCheck::read(&request),
            Err(error) => {
                tracing::warn!(%error, "an unreadable check request; ignored");
                return;
            }
        };
        let ack = protocol::check_transaction_response(None);
        if let Err(error) = connection.answer(Kind::CheckTransactionResponse as u16, frame.request_id, &ack) {
            tracing::debug!(%error, "acknowledging a check failed; the broker checks again");
            return;
        }
        let message = CheckedMessage::from_check(check);
        let outcome = (self.check_local)(&message);
        if outcome == LocalOutcome::Unknown {
            return;
        }
        let ended = self.client.end_transaction_as(
            &message.topic,
            message.queue,
            &message.transaction_id,
            outcome.wire(),
            true,
            self.request_timeout,
        );
        if let Err(error) = ended {
            tracing::warn!(%error, transaction_id = message.transaction_id, "answering a check failed; the broker checks again");
        }
    }
}
