//! The Rust client: blocking handles usable from any thread, without an
//! async runtime, and `AsyncConnection` (feature `glommio`) for code inside a glommio executor. It fetches metadata from any shard, keeps one connection
//! per shard it needs, sends every request straight to the owning shard and
//! refreshes metadata when told `NotOwner`. `IdempotentConsumer` applies
//! each message's effect once across redeliveries, through a `DedupStore`
//! (`SqliteDedupStore` with the `sqlite` feature). `Outbox` (feature
//! `sqlite`) keeps each message in the application's SQLite file until the
//! broker acknowledged it, resending after a crash. `TransactionProducer`
//! sends half messages and answers the broker's check-backs.

pub mod admin;
#[cfg(feature = "glommio")]
mod async_connection;
#[cfg(feature = "glommio")]
mod awaited;
mod batching;
mod connection;
mod consumer;
mod dead_letters;
mod group_consumer;
mod idempotent;
#[cfg(feature = "sqlite")]
mod outbox;
mod pages;
mod producer;
mod sequencer;
#[cfg(feature = "sqlite")]
mod sqlite_dedup;
mod transaction_producer;

#[cfg(feature = "glommio")]
pub use async_connection::AsyncConnection;
pub use batching::{AsyncProducer, BatchOptions, Completion, OwnedMessage};
pub use connection::{BrokerRequests, Connection, Pending};
pub use consumer::{
    fetched_messages, parse_records, parse_tags, visit_records, Consumer, ConsumerOptions, FetchedRange, OffsetReset,
    RebalanceListener, ReceivedMessage,
};
pub use dead_letters::{dead_letters, resend_dead_letter, DeadLetterResend};
pub use group_consumer::{
    send_back, ConsumeResult, GroupConsumer, MAX_RECONSUME_TIMES_DEFAULT, ORDERED_BACKOFF_DEFAULT,
};
pub use idempotent::{Applied, DedupError, DedupStore, IdempotentConsumer, IdempotentError, MsgId, Tally};
pub use producer::{
    Flight, OutgoingMessage, PreparedMessage, Producer, ProducerOptions, QueueChoice, SendReceipt,
    DELIVERY_TIMEOUT_DEFAULT,
};
pub use sequencer::Stamp;
pub use transaction_producer::{
    CheckLocal, CheckResponder, CheckedMessage, LocalOutcome, TransactionListener, TransactionProducer,
};

#[cfg(feature = "sqlite")]
pub use outbox::{
    Outbox, OutboxError, OutboxEvent, OutboxObserver, OutboxOptions, OutboxStats, RowId, OUTBOX_RETRY_PAUSE_DEFAULT,
    OUTBOX_WINDOW_DEFAULT,
};
/// The SQLite binding the store's transactions come from, so applications
/// write their rows with the same version.
#[cfg(feature = "sqlite")]
pub use rusqlite;
#[cfg(feature = "sqlite")]
pub use sqlite_dedup::{SqliteDedupError, SqliteDedupStore};

use pages::PageCursor;

use crate::protocol::{self, fb, verify, Failure, Frame, Kind, ShardEndpoint, TopicLayout, TransactionSummary};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);
/// Pause between attempts to reach a broker that is not answering.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(200);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {address}: {error}")]
    Connect { address: String, error: String },
    #[error("connection to {address} failed: {error}")]
    Io { address: String, error: String },
    #[error("connection to {address} closed")]
    Closed { address: String },
    #[error("no answer within {after:?}")]
    Timeout { after: Duration },
    #[error("broker: {0}")]
    Broker(Failure),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Usage(String),
    /// The sender was told to stop (`Producer::stop_on`) before an answer.
    #[error("stopped before the broker answered")]
    Stopped,
}

impl ClientError {
    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Closed { .. } => true,
            ClientError::Timeout { .. } => true,
            // A full disk may get room, a stopped log a restart; a producer
            // resends in order after an out-of-order refusal.
            ClientError::Broker(failure) => matches!(
                failure.code,
                fb::ErrorCode::NotOwner
                    | fb::ErrorCode::ShuttingDown
                    | fb::ErrorCode::UnknownTopic
                    | fb::ErrorCode::OutOfOrderSequence
                    | fb::ErrorCode::DiskFull
                    | fb::ErrorCode::StoreStopped
            ),
            ClientError::Protocol(_) | ClientError::Usage(_) | ClientError::Stopped => false,
        }
    }

    /// Whether the broker could not be reached or is going down: what a
    /// restart looks like from a client.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Closed { .. } => true,
            ClientError::Timeout { .. } => true,
            ClientError::Broker(failure) => failure.code == fb::ErrorCode::ShuttingDown,
            ClientError::Protocol(_) | ClientError::Usage(_) | ClientError::Stopped => false,
        }
    }

    pub fn code(&self) -> Option<fb::ErrorCode> {
        match self {
            ClientError::Broker(failure) => Some(failure.code),
            _ => None,
        }
    }
}

/// Runs `attempt` until it succeeds, fails for another reason than an
/// unreachable broker (refused, reset, timed out: a restart), or `patience`
/// runs out.
pub fn patiently<T>(patience: Duration, mut attempt: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match attempt() {
            Err(error) if error.is_unreachable() && std::time::Instant::now() < deadline => {
                tracing::warn!(%error, "the broker is not answering; retrying");
                std::thread::sleep(CONNECT_RETRY_PAUSE);
            }
            other => return other,
        }
    }
}

/// The body of `frame` if it is a `kind` answer; the broker's failure if it
/// is an error answer.
pub fn expect_kind(frame: Frame, kind: Kind) -> Result<Bytes, ClientError> {
    if frame.kind == Kind::ErrorResponse as u16 {
        let response = verify::<fb::ErrorResponse>(&frame.body).map_err(ClientError::Protocol)?;
        let failure = Failure::from_outcome(response.outcome())
            .unwrap_or_else(|| Failure::new(fb::ErrorCode::Internal, "error response without an error"));
        return Err(ClientError::Broker(failure));
    }
    if frame.kind != kind as u16 {
        return Err(ClientError::Protocol(format!("expected a {kind:?} frame, got kind {}", frame.kind)));
    }
    Ok(frame.body)
}

/// The shard addresses a metadata answer names.
fn read_shards(response: &fb::MetadataResponse<'_>) -> Vec<ShardEndpoint> {
    let shards = response.shards().into_iter().flatten();
    shards
        .map(|shard| ShardEndpoint { shard: shard.shard(), host: shard.host().to_string(), port: shard.port() })
        .collect()
}

#[derive(Default)]
struct ClusterView {
    shards: Vec<ShardEndpoint>,
    topics: HashMap<String, TopicLayout>,
    connections: HashMap<u32, Arc<Connection>>,
}

/// A handle on a broker. Cheap to share behind an `Arc`.
pub struct Client {
    bootstrap: String,
    timeout: Duration,
    view: Mutex<ClusterView>,
}

fn lock(view: &Mutex<ClusterView>) -> MutexGuard<'_, ClusterView> {
    view.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Client {
    /// Connects to any shard of a broker and reads its metadata.
    pub fn connect(bootstrap: &str) -> Result<Self, ClientError> {
        Self::connect_with_timeout(bootstrap, REQUEST_TIMEOUT_DEFAULT)
    }

    pub fn connect_with_timeout(bootstrap: &str, timeout: Duration) -> Result<Self, ClientError> {
        let client = Self { bootstrap: bootstrap.to_string(), timeout, view: Mutex::new(ClusterView::default()) };
        client.refresh_metadata()?;
        Ok(client)
    }

    /// Like `connect_with_timeout`, but waits out a broker that is not
    /// there yet or restarting for up to `patience`.
    pub fn connect_patiently(bootstrap: &str, timeout: Duration, patience: Duration) -> Result<Self, ClientError> {
        patiently(patience, || Self::connect_with_timeout(bootstrap, timeout))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reads shards and topics again, from a shard it knows or the bootstrap,
    /// page by page.
    pub fn refresh_metadata(&self) -> Result<(), ClientError> {
        let body = protocol::metadata_request(&[]);
        let known = lock(&self.view).connections.values().find(|connection| !connection.is_closed()).cloned();
        let first = match &known {
            Some(connection) => connection.request(Kind::MetadataRequest as u16, &body, self.timeout),
            None => Err(ClientError::Closed { address: String::new() }),
        };
        let (connection, first) = match (known, first) {
            (Some(connection), Ok(frame)) => (connection, frame),
            _ => {
                let connection = Connection::open(&self.bootstrap, self.timeout)?;
                let frame = connection.request(Kind::MetadataRequest as u16, &body, self.timeout)?;
                (connection, frame)
            }
        };
        let mut shards;
        let mut topics = HashMap::new();
        let mut pages = PageCursor::default();
        let mut frame = first;
        loop {
            let body = expect_kind(frame, Kind::MetadataResponse)?;
            let response = verify::<fb::MetadataResponse>(&body).map_err(ClientError::Protocol)?;
            if let Some(failure) = Failure::from_outcome(response.outcome()) {
                return Err(ClientError::Broker(failure));
            }
            shards = read_shards(&response);
            let page = response.topics().into_iter().flatten().map(protocol::read_topic);
            topics.extend(page.map(|topic| (topic.name.clone(), topic)));
            let Some(after) = pages.next(response.next())? else { break };
            let body = protocol::metadata_page_request(&[], Some(after));
            frame = connection.request(Kind::MetadataRequest as u16, &body, self.timeout)?;
        }
        if shards.is_empty() {
            return Err(ClientError::Protocol("metadata names no shard".into()));
        }
        let mut view = lock(&self.view);
        view.shards = shards;
        view.topics = topics;
        Ok(())
    }

    pub fn shard_count(&self) -> u32 {
        lock(&self.view).shards.len() as u32
    }

    /// The topic's layout, refreshing metadata once if it is unknown.
    pub fn topic(&self, name: &str) -> Result<TopicLayout, ClientError> {
        if let Some(topic) = lock(&self.view).topics.get(name).cloned() {
            return Ok(topic);
        }
        self.refresh_metadata()?;
        lock(&self.view).topics.get(name).cloned().ok_or_else(|| {
            ClientError::Broker(Failure::new(fb::ErrorCode::UnknownTopic, format!("topic {name:?} does not exist")))
        })
    }

    pub fn list_topics(&self) -> Result<Vec<TopicLayout>, ClientError> {
        self.refresh_metadata()?;
        let mut topics: Vec<_> = lock(&self.view).topics.values().cloned().collect();
        topics.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(topics)
    }

    /// The open connection to `shard`, opening one if needed.
    pub fn connection(&self, shard: u32) -> Result<Arc<Connection>, ClientError> {
        let endpoint = {
            let view = lock(&self.view);
            if let Some(connection) = view.connections.get(&shard).filter(|connection| !connection.is_closed()) {
                return Ok(connection.clone());
            }
            view.shards.iter().find(|endpoint| endpoint.shard == shard).cloned()
        };
        let endpoint = endpoint.ok_or_else(|| ClientError::Usage(format!("the broker has no shard {shard}")))?;
        let connection = Connection::open(&format!("{}:{}", endpoint.host, endpoint.port), self.timeout)?;
        // Another thread may have opened one meanwhile: keep the first, so
        // nobody's requests die with a replaced connection.
        let mut view = lock(&self.view);
        let slot = view.connections.entry(shard).or_insert_with(|| connection.clone());
        if slot.is_closed() {
            *slot = connection;
        }
        Ok(slot.clone())
    }

    /// One request to `shard`, answered with `kind`.
    pub fn call(&self, shard: u32, request: Kind, body: &[u8]) -> Result<Bytes, ClientError> {
        let response = request.response().ok_or_else(|| ClientError::Usage(format!("{request:?} is not a request")))?;
        let frame = self.connection(shard)?.request(request as u16, body, self.timeout)?;
        expect_kind(frame, response)
    }

    /// Creates a topic (or finds it existing); returns it and whether it is new.
    pub fn create_topic(&self, name: &str, queues: u32) -> Result<(TopicLayout, bool), ClientError> {
        let body = self.call(0, Kind::CreateTopicRequest, &protocol::create_topic_request(name, queues))?;
        let response = verify::<fb::CreateTopicResponse>(&body).map_err(ClientError::Protocol)?;
        let topic = response.topic().map(protocol::read_topic);
        let topic = topic.ok_or_else(|| ClientError::Protocol("create-topic answer without the topic".into()))?;
        lock(&self.view).topics.insert(topic.name.clone(), topic.clone());
        Ok((topic, response.created()))
    }

    /// One `END_TRANSACTION` to the shard owning `queue` of `topic`; the
    /// settled state and, for a commit, the offset the message got.
    pub fn end_transaction(
        &self,
        topic: &str,
        queue: u32,
        transaction_id: &str,
        outcome: fb::TransactionOutcome,
        timeout: Duration,
    ) -> Result<(fb::TransactionState, Option<u64>), ClientError> {
        self.end_transaction_as(topic, queue, transaction_id, outcome, false, timeout)
    }

    /// `end_transaction`, saying whether it answers a broker's check-back.
    pub fn end_transaction_as(
        &self,
        topic: &str,
        queue: u32,
        transaction_id: &str,
        outcome: fb::TransactionOutcome,
        from_check: bool,
        timeout: Duration,
    ) -> Result<(fb::TransactionState, Option<u64>), ClientError> {
        let layout = self.topic(topic)?;
        let shard = *layout
            .queue_shards
            .get(queue as usize)
            .ok_or_else(|| ClientError::Usage(format!("topic {topic} has no queue {queue}")))?;
        let body = protocol::end_transaction_request(topic, queue, transaction_id, outcome, from_check);
        let frame = self.connection(shard)?.request(Kind::EndTransactionRequest as u16, &body, timeout)?;
        let body = expect_kind(frame, Kind::EndTransactionResponse)?;
        let response = verify::<fb::EndTransactionResponse>(&body).map_err(ClientError::Protocol)?;
        if let Some(failure) = Failure::from_outcome(response.outcome()) {
            return Err(ClientError::Broker(failure));
        }
        Ok((response.state(), u64::try_from(response.offset()).ok()))
    }

    /// Every shard's transactions (with `discarded`: only those the broker
    /// discarded), shard by shard, every page.
    pub fn list_transactions(&self, discarded: bool) -> Result<Vec<TransactionSummary>, ClientError> {
        let mut listed = Vec::new();
        for shard in 0..self.shard_count() {
            let mut pages = PageCursor::default();
            let mut body = protocol::list_transactions_request(discarded);
            loop {
                let answer = self.call(shard, Kind::ListTransactionsRequest, &body)?;
                let response = verify::<fb::ListTransactionsResponse>(&answer).map_err(ClientError::Protocol)?;
                if let Some(failure) = Failure::from_outcome(response.outcome()) {
                    return Err(ClientError::Broker(failure));
                }
                let transactions = response.transactions().into_iter().flatten();
                listed.extend(transactions.map(|info| TransactionSummary::read(&info)));
                let Some(after) = pages.next(response.next())? else { break };
                body = protocol::list_transactions_page_request(discarded, Some(after));
            }
        }
        Ok(listed)
    }

    /// The shard coordinating `group`.
    pub fn coordinator(&self, group: &str) -> u32 {
        protocol::coordinator_shard(group, self.shard_count().max(1))
    }
}
