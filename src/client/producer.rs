//! The producer: synchronous sends with a timeout and bounded retries. Every
//! message gets its id (producer id + sequence) when it is built, and the
//! same bytes go out on every retry, so the broker's dedup window turns a
//! retried send into the first send's result.

use super::{expect_kind, Client, ClientError, Pending};
use crate::protocol::{self, fb, verify, Kind};
use crate::wire::MessageDraft;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub struct ProducerOptions {
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(3), retries: 2, backoff: Duration::from_millis(100) }
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendReceipt {
    pub msg_id: (u64, u64),
    pub queue: u32,
    pub offset: u64,
    pub store_timestamp_us: u64,
    /// `FlushDiskTimeout`: stored, but not confirmed durable in time.
    pub status: fb::SendStatus,
}

impl SendReceipt {
    pub fn msg_id_hex(&self) -> String {
        format!("{:016x}{:016x}", self.msg_id.0, self.msg_id.1)
    }
}

/// A message built once, with its queue, ready to be sent (again).
struct Built {
    queue: u32,
    msg_id: (u64, u64),
    bytes: Vec<u8>,
}

pub struct Producer {
    client: Arc<Client>,
    topic: String,
    options: ProducerOptions,
    producer_id: u64,
    sequence: AtomicU64,
    round_robin: AtomicU32,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_micros() as u64).unwrap_or(0)
}

impl Producer {
    pub fn new(client: Arc<Client>, topic: &str, options: ProducerOptions) -> Result<Self, ClientError> {
        client.topic(topic)?;
        // Never 0: the broker skips dedup for producer id 0.
        let producer_id = fastrand::u64(1..);
        Ok(Self {
            client,
            topic: topic.to_string(),
            options,
            producer_id,
            sequence: AtomicU64::new(0),
            round_robin: AtomicU32::new(fastrand::u32(..)),
        })
    }

    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    fn pick_queue(&self, choice: QueueChoice, key: Option<&str>, queue_count: u32) -> Result<u32, ClientError> {
        let queue = match (choice, key) {
            (QueueChoice::Explicit(queue), _) => queue,
            (QueueChoice::KeyHash, Some(key)) => crc32fast::hash(key.as_bytes()) % queue_count,
            (QueueChoice::KeyHash, None) => return Err(ClientError::Usage("a keyed send needs a key".into())),
            (QueueChoice::RoundRobin, _) => self.round_robin.fetch_add(1, Ordering::Relaxed) % queue_count,
        };
        if queue >= queue_count {
            return Err(ClientError::Usage(format!("queue {queue} is out of range: the topic has {queue_count}")));
        }
        Ok(queue)
    }

    fn build(&self, message: &OutgoingMessage<'_>, queue: u32) -> Built {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let keys: Vec<&str> = message.key.into_iter().collect();
        let msg_id = (self.producer_id, sequence);
        let draft = MessageDraft {
            msg_id,
            topic: &self.topic,
            queue,
            keys: &keys,
            tag: message.tag,
            properties: message.properties,
            body: message.body,
            producer_id: self.producer_id,
            sequence,
            born_timestamp_us: now_us(),
            ..MessageDraft::default()
        };
        Built { queue, msg_id, bytes: draft.build() }
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
        let topic = self.client.topic(&self.topic)?;
        let queue_count = topic.queue_shards.len() as u32;
        let queue = self.pick_queue(choice, messages.first().and_then(|message| message.key), queue_count)?;
        let built: Vec<Built> = messages.iter().map(|message| self.build(message, queue)).collect();
        self.send_built(queue, &built)
    }

    fn send_built(&self, queue: u32, built: &[Built]) -> Result<Vec<SendReceipt>, ClientError> {
        let mut attempt = 0;
        loop {
            let result = self.start(queue, built).and_then(|pending| self.finish(pending, built));
            match result {
                Err(error) if error.is_retryable() && attempt < self.options.retries => {
                    attempt += 1;
                    tracing::debug!(%error, attempt, "retrying a send");
                    std::thread::sleep(self.options.backoff * attempt);
                    let _ = self.client.refresh_metadata();
                }
                other => return other,
            }
        }
    }

    fn start(&self, queue: u32, built: &[Built]) -> Result<Pending, ClientError> {
        let topic = self.client.topic(&self.topic)?;
        let shard =
            *topic.queue_shards.get(queue as usize).ok_or_else(|| ClientError::Usage(format!("no queue {queue}")))?;
        let messages: Vec<&[u8]> = built.iter().map(|built| built.bytes.as_slice()).collect();
        let body = protocol::produce_request(&self.topic, queue, &messages);
        self.client.connection(shard)?.send(Kind::ProduceRequest as u16, &body)
    }

    fn finish(&self, pending: Pending, built: &[Built]) -> Result<Vec<SendReceipt>, ClientError> {
        let body = expect_kind(pending.wait(self.options.timeout)?, Kind::ProduceResponse)?;
        let response = verify::<fb::ProduceResponse>(&body).map_err(ClientError::Protocol)?;
        let results =
            response.results().ok_or_else(|| ClientError::Protocol("produce answer without results".into()))?;
        if results.len() != built.len() {
            return Err(ClientError::Protocol(format!("{} results for {} messages", results.len(), built.len())));
        }
        Ok(results
            .iter()
            .zip(built)
            .map(|(result, built)| SendReceipt {
                msg_id: built.msg_id,
                queue: built.queue,
                offset: result.offset(),
                store_timestamp_us: result.store_timestamp_us(),
                status: result.status(),
            })
            .collect())
    }

    /// Sends messages one per request with up to `window` requests in
    /// flight; returns one result per message, in order.
    pub fn send_pipelined(
        &self,
        messages: &[OutgoingMessage<'_>],
        choice: QueueChoice,
        window: usize,
    ) -> Vec<Result<SendReceipt, ClientError>> {
        let window = window.max(1);
        let mut results: Vec<Option<Result<SendReceipt, ClientError>>> = (0..messages.len()).map(|_| None).collect();
        let mut in_flight: VecDeque<(usize, u32, Built, Result<Pending, ClientError>)> = VecDeque::new();
        let mut next = 0;
        while next < messages.len() || !in_flight.is_empty() {
            while next < messages.len() && in_flight.len() < window {
                let topic = self.client.topic(&self.topic);
                let queue = topic
                    .and_then(|topic| self.pick_queue(choice, messages[next].key, topic.queue_shards.len() as u32));
                match queue {
                    Ok(queue) => {
                        let built = self.build(&messages[next], queue);
                        let pending = self.start(queue, std::slice::from_ref(&built));
                        in_flight.push_back((next, queue, built, pending));
                    }
                    Err(error) => results[next] = Some(Err(error)),
                }
                next += 1;
            }
            let Some((index, queue, built, pending)) = in_flight.pop_front() else { continue };
            let first = pending.and_then(|pending| self.finish(pending, std::slice::from_ref(&built)));
            let result = match first {
                Err(error) if error.is_retryable() => self.send_built(queue, std::slice::from_ref(&built)),
                other => other,
            };
            results[index] = Some(result.and_then(|mut receipts| {
                receipts.pop().ok_or_else(|| ClientError::Protocol("an empty produce answer".into()))
            }));
        }
        results.into_iter().map(|result| result.unwrap_or_else(|| Err(ClientError::Usage("not sent".into())))).collect()
    }
}
