//! Asynchronous sends with batching, the way rdkafka users expect: `send`
//! queues a message and returns; a sender thread gathers each queue's
//! messages into one produce request until `linger` passes or the batch
//! reaches `batch_max_bytes`, keeps up to `window` requests in flight and
//! calls each message's completion with its result. Order per queue holds:
//! batches are stamped in the order they close and delivered through the
//! producer's sequencer like every other send.

use super::producer::{Flight, OutgoingMessage, PreparedMessage, Producer, QueueChoice, SendReceipt};
use super::ClientError;
use crate::constants::{PRODUCE_BATCH_BYTES_MAX, PRODUCE_MESSAGES_MAX, PRODUCE_MESSAGE_OVERHEAD_BYTES};
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Called once with a message's final result, on the sender thread.
pub type Completion = Box<dyn FnOnce(Result<SendReceipt, ClientError>) + Send>;

#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// How long a batch waits for more messages (Kafka's `linger.ms`).
    pub linger: Duration,
    /// A batch closes once its request holds about this many bytes (and
    /// at `PRODUCE_MESSAGES_MAX` messages, or before it would pass what the
    /// broker reads in one frame).
    pub batch_max_bytes: usize,
    /// Produce requests in flight at most.
    pub window: usize,
    /// Messages queued but not yet batched at most: `send` blocks past it.
    pub buffer_max_messages: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self { linger: Duration::from_millis(5), batch_max_bytes: 1 << 20, window: 16, buffer_max_messages: 10_000 }
    }
}

/// A message the sender thread owns until it is sent.
#[derive(Clone, Debug, Default)]
pub struct OwnedMessage {
    pub body: Vec<u8>,
    pub key: Option<String>,
    pub tag: Option<String>,
    pub properties: Vec<(String, String)>,
    pub delay_level: u8,
    pub deliver_at_ms: u64,
}

impl OwnedMessage {
    /// What the message adds to a produce request, about.
    fn request_bytes(&self) -> usize {
        let properties: usize = self.properties.iter().map(|(key, value)| key.len() + value.len() + 16).sum();
        self.body.len()
            + self.key.as_ref().map_or(0, String::len)
            + self.tag.as_ref().map_or(0, String::len)
            + properties
            + PRODUCE_MESSAGE_OVERHEAD_BYTES
    }
}

/// A command without waiting; an empty channel reads as a timeout.
fn try_take(commands: &mpsc::Receiver<Command>) -> Result<Command, RecvTimeoutError> {
    commands.try_recv().map_err(|error| match error {
        TryRecvError::Empty => RecvTimeoutError::Timeout,
        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
    })
}

enum Command {
    Send { message: OwnedMessage, queue: u32, completion: Completion },
    Flush(mpsc::Sender<()>),
}

pub struct AsyncProducer {
    producer: Arc<Producer>,
    commands: Option<SyncSender<Command>>,
    sender: Option<JoinHandle<()>>,
}

impl AsyncProducer {
    pub fn new(producer: Arc<Producer>, options: BatchOptions) -> Result<Self, ClientError> {
        let (commands, received) = mpsc::sync_channel(options.buffer_max_messages.max(1));
        let thread_producer = producer.clone();
        let sender = std::thread::Builder::new()
            .name("ringmq-async-producer".into())
            .spawn(move || Batcher::new(thread_producer, options).run(received))
            .map_err(|error| ClientError::Usage(format!("cannot start the sender thread: {error}")))?;
        Ok(Self { producer, commands: Some(commands), sender: Some(sender) })
    }

    /// Queues a message; `completion` gets its result. Blocks while
    /// `buffer_max_messages` are queued.
    pub fn send(&self, message: OwnedMessage, choice: QueueChoice, completion: Completion) -> Result<(), ClientError> {
        let queue = self.producer.pick_queue(choice, message.key.as_deref())?;
        let commands = self.commands.as_ref().ok_or_else(|| ClientError::Usage("the producer is closed".into()))?;
        commands
            .send(Command::Send { message, queue, completion })
            .map_err(|_| ClientError::Usage("the sender thread has stopped".into()))
    }

    /// Waits until every message queued before this call has its result.
    pub fn flush(&self) {
        let (done, finished) = mpsc::channel();
        if let Some(commands) = &self.commands {
            if commands.send(Command::Flush(done)).is_ok() {
                let _ = finished.recv();
            }
        }
    }
}

impl Drop for AsyncProducer {
    /// Sends what is queued, then stops the sender thread.
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
    }
}

/// One queue's batch being filled.
struct OpenBatch {
    messages: Vec<(OwnedMessage, Completion)>,
    bytes: usize,
    opened: Instant,
}

/// The sender thread's state.
struct Batcher {
    producer: Arc<Producer>,
    options: BatchOptions,
    open: HashMap<u32, OpenBatch>,
    /// Closed batches, stamped in the order they closed, not yet launched.
    closed: VecDeque<(Vec<PreparedMessage>, Vec<Completion>)>,
    in_flight: VecDeque<(Flight, Vec<Completion>)>,
    /// Messages taken from the channel, and those whose completion ran.
    accepted: u64,
    completed: u64,
    /// Flushes waiting, each for the messages accepted before it.
    flushes: Vec<(u64, mpsc::Sender<()>)>,
}

impl Batcher {
    fn new(producer: Arc<Producer>, options: BatchOptions) -> Self {
        Self {
            producer,
            options,
            open: HashMap::new(),
            closed: VecDeque::new(),
            in_flight: VecDeque::new(),
            accepted: 0,
            completed: 0,
            flushes: Vec::new(),
        }
    }

    fn run(mut self, commands: mpsc::Receiver<Command>) {
        let mut disconnected = false;
        loop {
            let completed = self.completed;
            self.flushes.retain(|(target, done)| {
                let waiting = completed < *target;
                if !waiting {
                    let _ = done.send(());
                }
                waiting
            });
            let idle = self.open.is_empty() && self.closed.is_empty() && self.in_flight.is_empty();
            if idle && disconnected {
                return;
            }
            if !disconnected {
                disconnected = self.take_commands(&commands, idle);
            }
            let (now, linger) = (Instant::now(), self.options.linger);
            // A flush does not wait for linger (it may close a little more
            // than what came before it).
            let everything = disconnected || !self.flushes.is_empty();
            self.close_batches(|batch| everything || now.duration_since(batch.opened) >= linger);
            self.launch_closed();
            // Messages keep queueing in the channel meanwhile; the batches
            // that closed in between go out together after it.
            self.land_oldest();
        }
    }

    /// Takes what commands there are, waiting for the first one while
    /// `idle` or until the next batch's linger passes; `true` once every
    /// handle is gone.
    fn take_commands(&mut self, commands: &mpsc::Receiver<Command>, idle: bool) -> bool {
        let first = if idle {
            commands.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else if self.in_flight.is_empty() && self.closed.is_empty() {
            let next_close = self.open.values().map(|batch| batch.opened + self.options.linger).min();
            let wait = next_close.map_or(Duration::ZERO, |at| at.saturating_duration_since(Instant::now()));
            commands.recv_timeout(wait)
        } else {
            try_take(commands)
        };
        let mut next = first;
        loop {
            match next {
                Ok(command) => self.accept(command),
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => return true,
            }
            next = try_take(commands);
        }
    }

    fn accept(&mut self, command: Command) {
        match command {
            Command::Flush(done) => self.flushes.push((self.accepted, done)),
            Command::Send { message, queue, completion } => {
                self.accepted += 1;
                let batch = self.open.entry(queue).or_insert_with(|| OpenBatch {
                    messages: Vec::new(),
                    bytes: 0,
                    opened: Instant::now(),
                });
                let bytes = message.request_bytes();
                if !batch.messages.is_empty() && batch.bytes + bytes > PRODUCE_BATCH_BYTES_MAX {
                    if let Some(full) = self.open.remove(&queue) {
                        self.close(queue, full);
                    }
                    return self.accept(Command::Send { message, queue, completion });
                }
                batch.bytes += bytes;
                batch.messages.push((message, completion));
                let full = batch.bytes >= self.options.batch_max_bytes || batch.messages.len() >= PRODUCE_MESSAGES_MAX;
                if full {
                    if let Some(full) = self.open.remove(&queue) {
                        self.close(queue, full);
                    }
                }
            }
        }
    }

    fn close_batches(&mut self, closing: impl Fn(&OpenBatch) -> bool) {
        let due: Vec<u32> = self.open.iter().filter(|(_, batch)| closing(batch)).map(|(queue, _)| *queue).collect();
        for queue in due {
            if let Some(batch) = self.open.remove(&queue) {
                self.close(queue, batch);
            }
        }
    }

    /// A closed batch is stamped now: stamps follow the order batches close.
    fn close(&mut self, queue: u32, batch: OpenBatch) {
        let (messages, completions): (Vec<_>, Vec<_>) = batch.messages.into_iter().unzip();
        let properties: Vec<Vec<(&str, &str)>> = messages
            .iter()
            .map(|message| message.properties.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect())
            .collect();
        let outgoing: Vec<OutgoingMessage<'_>> = messages
            .iter()
            .zip(&properties)
            .map(|(message, properties)| OutgoingMessage {
                body: &message.body,
                key: message.key.as_deref(),
                tag: message.tag.as_deref(),
                properties,
                delay_level: message.delay_level,
                deliver_at_ms: message.deliver_at_ms,
            })
            .collect();
        self.closed.push_back((self.producer.prepare(&outgoing, queue), completions));
    }

    fn launch_closed(&mut self) {
        while self.in_flight.len() < self.options.window.max(1) {
            let Some((prepared, completions)) = self.closed.pop_front() else { return };
            self.in_flight.push_back((self.producer.launch(prepared), completions));
        }
    }

    /// Waits for the oldest request's final answer and hands it out.
    fn land_oldest(&mut self) {
        let Some((flight, completions)) = self.in_flight.pop_front() else { return };
        self.completed += completions.len() as u64;
        match self.producer.land(flight) {
            Ok(receipts) if receipts.len() == completions.len() => {
                for (receipt, completion) in receipts.into_iter().zip(completions) {
                    completion(Ok(receipt));
                }
            }
            Ok(receipts) => {
                let error =
                    ClientError::Protocol(format!("{} results for {} messages", receipts.len(), completions.len()));
                completions.into_iter().for_each(|completion| completion(Err(error.clone())));
            }
            Err(error) => completions.into_iter().for_each(|completion| completion(Err(error.clone()))),
        }
    }
}
