//! The producer: sends that ride out a broker restart. Each message is
//! built once with its msg id (producer id + a per-producer counter) and
//! its queue's next sequence (see `sequencer`), and the same bytes go out
//! on every retry, so the broker answers a retry with the first send's
//! result (marked duplicate) and stores each producer's messages in the
//! order it sent them. A send is retried with back-off through refused
//! connections, resets, timeouts and metadata changes until
//! `delivery_timeout` runs out.

use super::sequencer::{new_producer_id, Sequencer, Stamp};
use super::{expect_kind, Client, ClientError, Pending};
use crate::constants::PRODUCE_MESSAGES_MAX;
use crate::now_us;
use crate::protocol::{self, fb, Kind, SendOutcome};
use crate::wire::{verify_message, MessageDraft};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use crate::constants::DELIVERY_TIMEOUT_DEFAULT;
pub use crate::constants::PRODUCE_REQUEST_TIMEOUT_DEFAULT;
/// A message waiting for an older one of its queue looks again this soon.
const ORDER_WAIT: Duration = Duration::from_millis(2);

#[derive(Clone, Debug)]
pub struct ProducerOptions {
    /// How long one request waits for its answer.
    pub request_timeout: Duration,
    /// How long a message is resent before it is reported failed.
    pub delivery_timeout: Duration,
    /// First pause between resends; it doubles up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        Self {
            request_timeout: PRODUCE_REQUEST_TIMEOUT_DEFAULT,
            delivery_timeout: DELIVERY_TIMEOUT_DEFAULT,
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// Which queue a message goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueChoice {
    #[default]
    RoundRobin,
    /// Same key, same queue: messages of one key stay in order.
    KeyHash,
    Explicit(u32),
}

#[derive(Clone, Debug, Default)]
pub struct OutgoingMessage<'a> {
    pub body: &'a [u8],
    pub key: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub properties: &'a [(&'a str, &'a str)],
    /// Delay level (1 = the broker's first `delay_levels` entry); 0: none.
    pub delay_level: u8,
    /// Deliver at this time (ms since the epoch); 0: none. Wins over the
    /// level.
    pub deliver_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendReceipt {
    pub msg_id: (u64, u64),
    pub queue: u32,
    /// `None` for a duplicate of a send older than the broker remembers.
    pub offset: Option<u64>,
    pub store_timestamp_us: u64,
    /// `FlushDiskTimeout`: stored, but not confirmed durable in time.
    pub status: fb::SendStatus,
    /// The broker had this message already: no second copy was stored.
    pub duplicate: bool,
}

impl SendReceipt {
    pub fn msg_id_hex(&self) -> String {
        format!("{:016x}{:016x}", self.msg_id.0, self.msg_id.1)
    }

    /// The status as `ringmq produce` prints it.
    pub fn status_name(&self) -> &'static str {
        match self.status {
            fb::SendStatus::SendOk => "SEND_OK",
            fb::SendStatus::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
            fb::SendStatus::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT",
            fb::SendStatus::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
            _ => "UNKNOWN",
        }
    }
}

/// A message built for its queue, stamped, ready to be sent (again).
#[derive(Clone, Debug)]
pub struct PreparedMessage {
    pub queue: u32,
    pub msg_id: (u64, u64),
    pub stamp: Stamp,
    pub bytes: Vec<u8>,
}

pub struct Producer {
    client: Arc<Client>,
    topic: String,
    options: ProducerOptions,
    producer_id: u64,
    next_message: AtomicU64,
    sequencer: Mutex<Sequencer>,
    round_robin: AtomicU32,
    /// Set (`stop_on`): resending gives up with `ClientError::Stopped`.
    stop: Option<Arc<AtomicBool>>,
}

/// The queue `choice` picks for a message with `key` among `queue_count`;
/// `round_robin` is the caller's rotating counter.
pub(crate) fn choose_queue(
    choice: QueueChoice,
    key: Option<&str>,
    queue_count: u32,
    round_robin: &AtomicU32,
) -> Result<u32, ClientError> {
    if queue_count == 0 {
        return Err(ClientError::Protocol("the topic has no queues".into()));
    }
    let queue = match (choice, key) {
        (QueueChoice::Explicit(queue), _) => queue,
        (QueueChoice::KeyHash, Some(key)) => crc32fast::hash(key.as_bytes()) % queue_count,
        (QueueChoice::KeyHash, None) => return Err(ClientError::Usage("a keyed send needs a key".into())),
        (QueueChoice::RoundRobin, _) => round_robin.fetch_add(1, Ordering::Relaxed) % queue_count,
    };
    if queue >= queue_count {
        return Err(ClientError::Usage(format!("queue {queue} is out of range: the topic has {queue_count}")));
    }
    Ok(queue)
}

/// `message` built for `queue` of `topic` as `msg_id`, carrying
/// `producer_id` and `sequence`: the bytes every (re)send repeats.
pub(crate) fn build_message(
    topic: &str,
    message: &OutgoingMessage<'_>,
    queue: u32,
    msg_id: (u64, u64),
    producer_id: u64,
    sequence: u64,
) -> Vec<u8> {
    let keys: Vec<&str> = message.key.into_iter().collect();
    let draft = MessageDraft {
        msg_id,
        topic,
        queue,
        keys: &keys,
        tag: message.tag,
        properties: message.properties,
        body: message.body,
        producer_id,
        sequence,
        born_timestamp_us: now_us(),
        delay_level: message.delay_level,
        deliver_at_ms: message.deliver_at_ms,
        ..MessageDraft::default()
    };
    draft.build()
}

impl Producer {
    pub fn new(client: Arc<Client>, topic: &str, options: ProducerOptions) -> Result<Self, ClientError> {
        Self::with_identity(client, topic, options, new_producer_id(), 0)
    }

    /// A producer going on as an earlier one (whose messages an outbox may
    /// resend): its producer id, and the first message number it has not
    /// used, so msg ids stay unique.
    pub fn with_identity(
        client: Arc<Client>,
        topic: &str,
        options: ProducerOptions,
        producer_id: u64,
        next_message: u64,
    ) -> Result<Self, ClientError> {
        if producer_id == 0 {
            return Err(ClientError::Usage("producer id 0 is reserved for unsequenced sends".into()));
        }
        client.topic(topic)?;
        Ok(Self {
            client,
            topic: topic.to_string(),
            options,
            producer_id,
            next_message: AtomicU64::new(next_message),
            sequencer: Mutex::new(Sequencer::new(producer_id)),
            round_robin: AtomicU32::new(fastrand::u32(..)),
            stop: None,
        })
    }

    /// Gives up resending with `ClientError::Stopped` once `stop` is set
    /// (checked between attempts; a request in flight still waits up to
    /// `request_timeout`), so a background sender can be stopped promptly.
    pub fn stop_on(self, stop: Arc<AtomicBool>) -> Self {
        Self { stop: Some(stop), ..self }
    }

    fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|stop| stop.load(Ordering::SeqCst))
    }

    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// The first message number not used yet.
    pub fn next_message(&self) -> u64 {
        self.next_message.load(Ordering::SeqCst)
    }

    fn sequencer(&self) -> MutexGuard<'_, Sequencer> {
        self.sequencer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The queue `choice` picks for a message with `key`.
    pub fn pick_queue(&self, choice: QueueChoice, key: Option<&str>) -> Result<u32, ClientError> {
        let queue_count = self.client.topic(&self.topic)?.queue_shards.len() as u32;
        choose_queue(choice, key, queue_count, &self.round_robin)
    }

    /// Builds and stamps messages for one queue, in order. Each stays
    /// unsettled (later messages of the queue wait behind it when order
    /// demands) until `deliver` answers it.
    pub fn prepare(&self, messages: &[OutgoingMessage<'_>], queue: u32) -> Vec<PreparedMessage> {
        let stamps = self.sequencer().stamp(queue, messages.len());
        messages
            .iter()
            .zip(stamps)
            .map(|(message, stamp)| {
                let number = self.next_message.fetch_add(1, Ordering::SeqCst);
                let msg_id = (self.producer_id, number);
                let bytes = build_message(&self.topic, message, queue, msg_id, stamp.producer_id, stamp.sequence);
                PreparedMessage { queue, msg_id, stamp, bytes }
            })
            .collect()
    }

    /// Takes back a message built by an earlier run of this producer (an
    /// outbox's row), to be delivered in order before anything newer.
    pub fn adopt(&self, bytes: Vec<u8>) -> Result<PreparedMessage, ClientError> {
        let verified =
            verify_message(Bytes::from(bytes.clone())).map_err(|error| ClientError::Usage(error.to_string()))?;
        if verified.producer_id == 0 {
            return Err(ClientError::Usage("an adopted message needs a producer id".into()));
        }
        let stamp = self.sequencer().adopt(verified.queue, verified.producer_id, verified.sequence);
        self.next_message.fetch_max(verified.msg_id.1 + 1, Ordering::SeqCst);
        Ok(PreparedMessage { queue: verified.queue, msg_id: verified.msg_id, stamp, bytes })
    }

    /// Sends one message and waits for the broker's answer.
    pub fn send(&self, message: &OutgoingMessage<'_>, choice: QueueChoice) -> Result<SendReceipt, ClientError> {
        let mut receipts = self.send_batch(std::slice::from_ref(message), choice)?;
        receipts.pop().ok_or_else(|| ClientError::Protocol("an empty produce answer".into()))
    }

    /// Sends messages to one queue in one request.
    pub fn send_batch(
        &self,
        messages: &[OutgoingMessage<'_>],
        choice: QueueChoice,
    ) -> Result<Vec<SendReceipt>, ClientError> {
        if messages.len() > PRODUCE_MESSAGES_MAX {
            return Err(ClientError::Usage(format!("a batch holds at most {PRODUCE_MESSAGES_MAX} messages")));
        }
        let queue = self.pick_queue(choice, messages.first().and_then(|message| message.key))?;
        let prepared = self.prepare(messages, queue);
        self.deliver(&prepared)
    }

    /// Delivers prepared messages of one queue, consecutive, in one request:
    /// resends until the broker answers for good or `delivery_timeout`
    /// runs out. Settles them either way.
    pub fn deliver(&self, prepared: &[PreparedMessage]) -> Result<Vec<SendReceipt>, ClientError> {
        let Some(first) = prepared.first() else { return Ok(Vec::new()) };
        let (queue, ticket) = (first.queue, first.stamp.ticket);
        let result = self.deliver_unsettled(prepared, Instant::now() + self.options.delivery_timeout);
        self.sequencer().settle(queue, ticket, prepared.len());
        result
    }

    fn deliver_unsettled(
        &self,
        prepared: &[PreparedMessage],
        deadline: Instant,
    ) -> Result<Vec<SendReceipt>, ClientError> {
        let mut pause = self.options.backoff;
        let mut skip_gap = false;
        loop {
            if self.stopped() {
                return Err(ClientError::Stopped);
            }
            let (queue, ticket) = (prepared[0].queue, prepared[0].stamp.ticket);
            let oldest = self.sequencer().is_oldest(queue, ticket);
            let error = match self.start(prepared, skip_gap).and_then(|pending| self.finish(pending, prepared)) {
                Ok(receipts) => return Ok(receipts),
                Err(error) => error,
            };
            let out_of_order = error.code() == Some(fb::ErrorCode::OutOfOrderSequence);
            if out_of_order && oldest && !skip_gap {
                // Everything sent before it was answered for good, yet the
                // broker waits for an older sequence: it will never come.
                tracing::warn!(%error, queue, "the broker waits for a sequence that will never come; resending past the gap");
                skip_gap = true;
                continue;
            }
            if !error.is_retryable() || Instant::now() >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, "resending");
            if out_of_order {
                // An older message of this queue is on its way: go right after it.
                std::thread::sleep(ORDER_WAIT);
                continue;
            }
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(self.options.backoff_max);
            if let Err(error) = self.client.refresh_metadata() {
                tracing::debug!(%error, "metadata refresh failed; will try again");
            }
        }
    }

    fn start(&self, prepared: &[PreparedMessage], skip_gap: bool) -> Result<Pending, ClientError> {
        let queue = prepared[0].queue;
        let topic = self.client.topic(&self.topic)?;
        let shard =
            *topic.queue_shards.get(queue as usize).ok_or_else(|| ClientError::Usage(format!("no queue {queue}")))?;
        let messages: Vec<&[u8]> = prepared.iter().map(|message| message.bytes.as_slice()).collect();
        let body = protocol::produce_request(&self.topic, queue, &messages, skip_gap);
        self.client.connection(shard)?.send_body(Kind::ProduceRequest as u16, body)
    }

    fn finish(&self, pending: Pending, prepared: &[PreparedMessage]) -> Result<Vec<SendReceipt>, ClientError> {
        let body = expect_kind(pending.wait(self.options.request_timeout)?, Kind::ProduceResponse)?;
        let response = protocol::verify_produce_response(&body).map_err(ClientError::Protocol)?;
        let sends = response.sends().ok_or_else(|| ClientError::Protocol("produce answer without results".into()))?;
        if sends.len() != prepared.len() {
            return Err(ClientError::Protocol(format!("{} results for {} messages", sends.len(), prepared.len())));
        }
        Ok(sends
            .iter()
            .zip(prepared)
            .map(|(send, prepared)| {
                let send = SendOutcome::read(&send);
                SendReceipt {
                    msg_id: prepared.msg_id,
                    queue: prepared.queue,
                    offset: send.offset,
                    store_timestamp_us: send.store_timestamp_us,
                    status: send.status,
                    duplicate: send.duplicate,
                }
            })
            .collect())
    }

    /// Sends prepared messages of one queue (consecutive); `land` takes the
    /// answer.
    pub fn launch(&self, prepared: Vec<PreparedMessage>) -> Flight {
        let request = self.start(&prepared, false);
        Flight { prepared, started: Instant::now(), request }
    }

    /// The answer to a launched flight: resent (in order, with back-off)
    /// until final or `delivery_timeout` after its launch. Settles it.
    pub fn land(&self, flight: Flight) -> Result<Vec<SendReceipt>, ClientError> {
        let Flight { prepared, started, request } = flight;
        let Some(first) = prepared.first() else { return Ok(Vec::new()) };
        let (queue, ticket) = (first.queue, first.stamp.ticket);
        let deadline = started + self.options.delivery_timeout;
        let result = match request.and_then(|pending| self.finish(pending, &prepared)) {
            Err(error) if error.is_retryable() => {
                tracing::debug!(%error, "resending");
                self.deliver_unsettled(&prepared, deadline)
            }
            other => other,
        };
        self.sequencer().settle(queue, ticket, prepared.len());
        result
    }

    /// Sends a transactional half message: stored by the broker, invisible
    /// to consumers until `end_transaction` commits `transaction_id`. Built
    /// once (producer id 0: the broker deduplicates halves by transaction
    /// id, not by sequence) and resent with the same bytes like any send;
    /// a resend the broker had stored answers `duplicate`. The receipt has
    /// no offset: the message has none until committed.
    pub fn send_half(
        &self,
        message: &OutgoingMessage<'_>,
        choice: QueueChoice,
        producer_group: &str,
        transaction_id: &str,
    ) -> Result<SendReceipt, ClientError> {
        if producer_group.is_empty() || transaction_id.is_empty() {
            return Err(ClientError::Usage("a half message needs a producer group and a transaction id".into()));
        }
        let queue = self.pick_queue(choice, message.key)?;
        let number = self.next_message.fetch_add(1, Ordering::SeqCst);
        let keys: Vec<&str> = message.key.into_iter().collect();
        let msg_id = (self.producer_id, number);
        let draft = MessageDraft {
            msg_id,
            topic: &self.topic,
            queue,
            keys: &keys,
            tag: message.tag,
            properties: message.properties,
            body: message.body,
            born_timestamp_us: now_us(),
            half: true,
            producer_group: Some(producer_group),
            transaction_id: Some(transaction_id),
            ..MessageDraft::default()
        };
        let stamp = Stamp { ticket: 0, producer_id: 0, sequence: 0 };
        let prepared = [PreparedMessage { queue, msg_id, stamp, bytes: draft.build() }];
        let deadline = Instant::now() + self.options.delivery_timeout;
        let mut receipts = self.retry_until(deadline, || {
            self.start(&prepared, false).and_then(|pending| self.finish(pending, &prepared))
        })?;
        receipts.pop().ok_or_else(|| ClientError::Protocol("an empty produce answer".into()))
    }

    /// Ends the transaction of a half message sent to `queue`: commit makes
    /// it visible (the offset it got), rollback drops it for good, unknown
    /// leaves it pending. Repeating an outcome is safe (the broker answers
    /// the settled state), so it is resent through restarts until
    /// `delivery_timeout`; the opposite of a settled outcome is refused
    /// (`TransactionConflict`).
    pub fn end_transaction(
        &self,
        queue: u32,
        transaction_id: &str,
        outcome: fb::TransactionOutcome,
    ) -> Result<(fb::TransactionState, Option<u64>), ClientError> {
        let deadline = Instant::now() + self.options.delivery_timeout;
        self.retry_until(deadline, || {
            self.client.end_transaction(&self.topic, queue, transaction_id, outcome, self.options.request_timeout)
        })
    }

    /// Runs `attempt` until it succeeds, fails for good or `deadline`
    /// passes, with back-off and a metadata refresh between attempts.
    fn retry_until<T>(
        &self,
        deadline: Instant,
        mut attempt: impl FnMut() -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut pause = self.options.backoff;
        loop {
            let error = match attempt() {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !error.is_retryable() || Instant::now() >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, "resending");
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(self.options.backoff_max);
            if let Err(error) = self.client.refresh_metadata() {
                tracing::debug!(%error, "metadata refresh failed; will try again");
            }
        }
    }

    /// Sends messages one per request with up to `window` requests in
    /// flight; returns one result per message, in order. A message whose
    /// first answer was not final is resent (in order) before the results
    /// after it are taken.
    pub fn send_pipelined(
        &self,
        messages: &[OutgoingMessage<'_>],
        choice: QueueChoice,
        window: usize,
    ) -> Vec<Result<SendReceipt, ClientError>> {
        let window = window.max(1);
        let mut results: Vec<Option<Result<SendReceipt, ClientError>>> = (0..messages.len()).map(|_| None).collect();
        let mut in_flight: VecDeque<(usize, Flight)> = VecDeque::new();
        let mut next = 0;
        while next < messages.len() || !in_flight.is_empty() {
            while next < messages.len() && in_flight.len() < window {
                match self.pick_queue(choice, messages[next].key) {
                    Ok(queue) => {
                        let prepared = self.prepare(std::slice::from_ref(&messages[next]), queue);
                        in_flight.push_back((next, self.launch(prepared)));
                    }
                    Err(error) => results[next] = Some(Err(error)),
                }
                next += 1;
            }
            let Some((index, flight)) = in_flight.pop_front() else { continue };
            results[index] = Some(self.land(flight).and_then(|mut receipts| {
                receipts.pop().ok_or_else(|| ClientError::Protocol("an empty produce answer".into()))
            }));
        }
        results.into_iter().map(|result| result.unwrap_or_else(|| Err(ClientError::Usage("not sent".into())))).collect()
    }
}

/// A produce request on its way.
pub struct Flight {
    prepared: Vec<PreparedMessage>,
    started: Instant,
    request: Result<Pending, ClientError>,
}

impl Flight {
    pub fn len(&self) -> usize {
        self.prepared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
    }
}
