//! Builders of every request and response body, shared by broker and client.

use super::fb;
use super::produce_request::ProduceRequestBuilder;
use crate::wire::{with_reused_builder, Finished};
use flatbuffers::{FlatBufferBuilder, WIPOffset};

/// Why a request failed, as it goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: fb::ErrorCode,
    pub message: String,
    pub owner_shard: Option<u32>,
    /// With `OutOfOrderSequence`: the sequence the broker expects next.
    pub expected_sequence: Option<u64>,
}

impl Failure {
    pub fn new(code: fb::ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), owner_shard: None, expected_sequence: None }
    }

    pub fn not_owner(owner_shard: u32, message: impl Into<String>) -> Self {
        Self { owner_shard: Some(owner_shard), ..Self::new(fb::ErrorCode::NotOwner, message) }
    }

    pub fn out_of_order(expected_sequence: u64, message: impl Into<String>) -> Self {
        Self { expected_sequence: Some(expected_sequence), ..Self::new(fb::ErrorCode::OutOfOrderSequence, message) }
    }

    /// Reads an outcome; `None` when it says success.
    pub fn from_outcome(outcome: Option<fb::Outcome<'_>>) -> Option<Self> {
        let outcome = outcome?;
        if outcome.error() == fb::ErrorCode::None {
            return None;
        }
        Some(Self {
            code: outcome.error(),
            message: outcome.message().unwrap_or_default().to_string(),
            owner_shard: u32::try_from(outcome.owner_shard()).ok(),
            expected_sequence: (outcome.error() == fb::ErrorCode::OutOfOrderSequence)
                .then_some(outcome.expected_sequence()),
        })
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.code.variant_name().unwrap_or("Unknown");
        write!(formatter, "{name}: {}", self.message)
    }
}

/// A topic's queues and the shard owning each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicLayout {
    pub name: String,
    pub queue_shards: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardEndpoint {
    pub shard: u32,
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchParams {
    pub topic: String,
    pub queue: u32,
    pub offset: u64,
    pub max_count: u32,
    pub max_bytes: u32,
    pub max_wait_ms: u32,
    /// Tag hashes to keep (`wire::tag_hash`); empty: every record.
    pub tag_hashes: Vec<u32>,
}

pub(super) fn outcome<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    failure: Option<&Failure>,
) -> WIPOffset<fb::Outcome<'a>> {
    let Some(failure) = failure else {
        return fb::Outcome::create(builder, &fb::OutcomeArgs::default());
    };
    let message = builder.create_string(&failure.message);
    let owner_shard = failure.owner_shard.map_or(-1, |shard| shard as i32);
    let args = fb::OutcomeArgs {
        error: failure.code,
        message: Some(message),
        owner_shard,
        expected_sequence: failure.expected_sequence.unwrap_or(0),
    };
    fb::Outcome::create(builder, &args)
}

pub(super) fn finish<T>(builder: &mut FlatBufferBuilder<'_>, root: WIPOffset<T>) -> Vec<u8> {
    builder.finish_minimal(root);
    builder.finished_data().to_vec()
}

fn topic_info<'a>(builder: &mut FlatBufferBuilder<'a>, topic: &TopicLayout) -> WIPOffset<fb::TopicInfo<'a>> {
    let name = builder.create_string(&topic.name);
    let queue_shards = builder.create_vector(&topic.queue_shards);
    fb::TopicInfo::create(builder, &fb::TopicInfoArgs { name: Some(name), queue_shards: Some(queue_shards) })
}

pub fn read_topic(topic: fb::TopicInfo<'_>) -> TopicLayout {
    TopicLayout { name: topic.name().to_string(), queue_shards: topic.queue_shards().iter().collect() }
}

pub fn error_response(failure: &Failure) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, Some(failure));
    let root = fb::ErrorResponse::create(&mut builder, &fb::ErrorResponseArgs { outcome: Some(outcome) });
    finish(&mut builder, root)
}

pub fn metadata_request(topics: &[&str]) -> Vec<u8> {
    metadata_page_request(topics, None)
}

/// The page of metadata after the cursor `after` (an answer's `next`).
pub fn metadata_page_request(topics: &[&str], after: Option<&[u8]>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let names: Vec<_> = topics.iter().map(|topic| builder.create_string(topic)).collect();
    let topics = builder.create_vector(&names);
    let after = after.map(|after| builder.create_vector(after));
    let root = fb::MetadataRequest::create(&mut builder, &fb::MetadataRequestArgs { topics: Some(topics), after });
    finish(&mut builder, root)
}

/// `next`: the cursor of the page after this one, when topics are left.
pub fn metadata_response(
    failure: Option<&Failure>,
    shards: &[ShardEndpoint],
    topics: &[TopicLayout],
    next: Option<&[u8]>,
) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let shards: Vec<_> = shards
        .iter()
        .map(|shard| {
            let host = builder.create_string(&shard.host);
            let args = fb::ShardAddressArgs { shard: shard.shard, host: Some(host), port: shard.port };
            fb::ShardAddress::create(&mut builder, &args)
        })
        .collect();
    let shards = builder.create_vector(&shards);
    let topics: Vec<_> = topics.iter().map(|topic| topic_info(&mut builder, topic)).collect();
    let topics = builder.create_vector(&topics);
    let next = next.map(|next| builder.create_vector(next));
    let args = fb::MetadataResponseArgs { outcome: Some(outcome), shards: Some(shards), topics: Some(topics), next };
    let root = fb::MetadataResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn create_topic_request(name: &str, queues: u32) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let name = builder.create_string(name);
    let root = fb::CreateTopicRequest::create(&mut builder, &fb::CreateTopicRequestArgs { name: Some(name), queues });
    finish(&mut builder, root)
}

pub fn create_topic_response(failure: Option<&Failure>, topic: Option<&TopicLayout>, created: bool) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let topic = topic.map(|topic| topic_info(&mut builder, topic));
    let args = fb::CreateTopicResponseArgs { outcome: Some(outcome), topic, created };
    let root = fb::CreateTopicResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// `skip_gap`: see `ProduceRequest.skip_gap` in schemas/protocol.fbs.
/// Built with room for the frame header in front (`WireFrame::in_place`).
pub fn produce_request(topic: &str, queue: u32, messages: &[&[u8]], skip_gap: bool) -> Finished {
    let bytes: usize = messages.iter().map(|message| message.len()).sum();
    let mut request = ProduceRequestBuilder::with_capacity(topic, messages.len(), bytes);
    for message in messages {
        request.push(message);
    }
    request.finish(topic, queue, skip_gap)
}

/// What became of one message of a produce request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendOutcome {
    pub status: fb::SendStatus,
    pub msg_id: (u64, u64),
    /// `None` for a duplicate of a send older than the broker's window.
    pub offset: Option<u64>,
    pub store_timestamp_us: u64,
    pub duplicate: bool,
}

impl SendOutcome {
    pub fn read(send: &fb::SendOutcome<'_>) -> Self {
        Self {
            status: send.status(),
            msg_id: (send.msg_id_hi(), send.msg_id_lo()),
            offset: u64::try_from(send.offset()).ok(),
            store_timestamp_us: send.store_timestamp_us(),
            duplicate: send.duplicate(),
        }
    }
}

/// An accepted request's answer is written out (`produce_answer`): the
/// broker answers every produce request, most of them of one message. A
/// refusal is built in the thread's reused builder.
pub fn produce_response(failure: Option<&Failure>, queue: u32, sends: &[SendOutcome]) -> Vec<u8> {
    match failure {
        None => accepted_produce_response(queue, sends.iter().copied()),
        Some(_) => built_produce_response(failure, queue, sends),
    }
}

/// An accepted request's answer from its outcomes as they are made, without
/// collecting them first (the broker's path).
pub fn accepted_produce_response(queue: u32, sends: impl ExactSizeIterator<Item = SendOutcome>) -> Vec<u8> {
    super::produce_answer::accepted(queue, sends)
}

/// The same answer through flatbuffers' builder: refusals, and the oracle
/// `produce_answer`'s tests compare it with.
pub(super) fn built_produce_response(failure: Option<&Failure>, queue: u32, sends: &[SendOutcome]) -> Vec<u8> {
    with_reused_builder(|builder| {
        let outcome = outcome(builder, failure);
        let sends: Vec<_> = sends
            .iter()
            .map(|send| {
                let args = fb::SendOutcomeArgs {
                    status: send.status,
                    msg_id_hi: send.msg_id.0,
                    msg_id_lo: send.msg_id.1,
                    offset: send.offset.and_then(|offset| i64::try_from(offset).ok()).unwrap_or(-1),
                    store_timestamp_us: send.store_timestamp_us,
                    duplicate: send.duplicate,
                };
                fb::SendOutcome::create(builder, &args)
            })
            .collect();
        let sends = builder.create_vector(&sends);
        let args = fb::ProduceResponseArgs { outcome: Some(outcome), queue, sends: Some(sends) };
        let root = fb::ProduceResponse::create(builder, &args);
        finish(builder, root)
    })
}

pub fn fetch_request(params: &FetchParams) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let topic = builder.create_string(&params.topic);
    let tag_hashes = (!params.tag_hashes.is_empty()).then(|| builder.create_vector(&params.tag_hashes));
    let args = fb::FetchRequestArgs {
        topic: Some(topic),
        queue: params.queue,
        offset: params.offset,
        max_count: params.max_count,
        max_bytes: params.max_bytes,
        max_wait_ms: params.max_wait_ms,
        tag_hashes,
    };
    let root = fb::FetchRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// The records of a fetch, as stored, and where the queue stands.
#[derive(Clone, Debug, Default)]
pub struct FetchedRecords<'a> {
    pub records: &'a [u8],
    pub record_count: u32,
    pub next_offset: u64,
    pub high_watermark: u64,
    pub earliest_offset: u64,
    /// Offsets `ringmq repair` marked lost, skipped by this fetch.
    pub lost_offsets: &'a [u64],
    /// Each record's queue offset.
    pub record_offsets: &'a [u64],
    /// Each record's deliveries before this one.
    pub reconsume_times: &'a [u32],
}

pub fn fetch_response(failure: Option<&Failure>, fetched: &FetchedRecords<'_>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(fetched.records.len() + 128);
    let outcome = outcome(&mut builder, failure);
    let records = builder.create_vector(fetched.records);
    let lost_offsets = (!fetched.lost_offsets.is_empty()).then(|| builder.create_vector(fetched.lost_offsets));
    let record_offsets = (!fetched.record_offsets.is_empty()).then(|| builder.create_vector(fetched.record_offsets));
    let retried = fetched.reconsume_times.iter().any(|times| *times > 0);
    let reconsume_times = retried.then(|| builder.create_vector(fetched.reconsume_times));
    let args = fb::FetchResponseArgs {
        outcome: Some(outcome),
        records: Some(records),
        record_count: fetched.record_count,
        next_offset: fetched.next_offset,
        high_watermark: fetched.high_watermark,
        earliest_offset: fetched.earliest_offset,
        lost_offsets,
        record_offsets,
        reconsume_times,
    };
    let root = fb::FetchResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// `instance_id` empty: a dynamic member; otherwise static membership.
pub fn join_group_request(
    group: &str,
    topic: &str,
    member_id: &str,
    instance_id: &str,
    session_timeout_ms: u32,
) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let group = builder.create_string(group);
    let topic = builder.create_string(topic);
    let member_id = builder.create_string(member_id);
    let instance_id = (!instance_id.is_empty()).then(|| builder.create_string(instance_id));
    let args = fb::JoinGroupRequestArgs {
        group: Some(group),
        topic: Some(topic),
        member_id: Some(member_id),
        session_timeout_ms,
        instance_id,
    };
    let root = fb::JoinGroupRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// A member's view of its group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    pub member_id: String,
    pub generation: u64,
    pub queues: Vec<u32>,
    pub heartbeat_interval_ms: u32,
}

pub fn group_assignment(failure: Option<&Failure>, assignment: &Assignment) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let member_id = builder.create_string(&assignment.member_id);
    let queues = builder.create_vector(&assignment.queues);
    let args = fb::GroupAssignmentArgs {
        outcome: Some(outcome),
        member_id: Some(member_id),
        generation: assignment.generation,
        queues: Some(queues),
        heartbeat_interval_ms: assignment.heartbeat_interval_ms,
    };
    let root = fb::GroupAssignment::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn read_assignment(assignment: fb::GroupAssignment<'_>) -> Assignment {
    Assignment {
        member_id: assignment.member_id().unwrap_or_default().to_string(),
        generation: assignment.generation(),
        queues: assignment.queues().map(|queues| queues.iter().collect()).unwrap_or_default(),
        heartbeat_interval_ms: assignment.heartbeat_interval_ms(),
    }
}

pub fn heartbeat_request(group: &str, topic: &str, member_id: &str) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let group = builder.create_string(group);
    let topic = builder.create_string(topic);
    let member_id = builder.create_string(member_id);
    let args = fb::HeartbeatRequestArgs { group: Some(group), topic: Some(topic), member_id: Some(member_id) };
    let root = fb::HeartbeatRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn leave_group_request(group: &str, topic: &str, member_id: &str) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let group = builder.create_string(group);
    let topic = builder.create_string(topic);
    let member_id = builder.create_string(member_id);
    let args = fb::LeaveGroupRequestArgs { group: Some(group), topic: Some(topic), member_id: Some(member_id) };
    let root = fb::LeaveGroupRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// A commit of `offset` (the next one to consume) by `member_id`, which must
/// own `queue` in `generation`.
pub fn commit_offset_request(
    group: &str,
    topic: &str,
    queue: u32,
    offset: u64,
    generation: u64,
    member_id: &str,
) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let group = builder.create_string(group);
    let topic = builder.create_string(topic);
    let member_id = builder.create_string(member_id);
    let args = fb::CommitOffsetRequestArgs {
        group: Some(group),
        topic: Some(topic),
        queue,
        offset,
        generation,
        member_id: Some(member_id),
    };
    let root = fb::CommitOffsetRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn fetch_offset_request(group: &str, topic: &str, queue: u32) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let group = builder.create_string(group);
    let topic = builder.create_string(topic);
    let args = fb::FetchOffsetRequestArgs { group: Some(group), topic: Some(topic), queue };
    let root = fb::FetchOffsetRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn offset_response(failure: Option<&Failure>, offset: Option<u64>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let offset = offset.map_or(-1, |offset| offset as i64);
    let args = fb::OffsetResponseArgs { outcome: Some(outcome), offset };
    let root = fb::OffsetResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn end_transaction_request(
    topic: &str,
    queue: u32,
    transaction_id: &str,
    outcome: fb::TransactionOutcome,
    from_check: bool,
) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let topic = builder.create_string(topic);
    let transaction_id = builder.create_string(transaction_id);
    let args = fb::EndTransactionRequestArgs {
        topic: Some(topic),
        queue,
        transaction_id: Some(transaction_id),
        outcome,
        from_check,
    };
    let root = fb::EndTransactionRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// `offset`: with `Committed`, the queue offset the half message became
/// visible at.
pub fn end_transaction_response(
    failure: Option<&Failure>,
    state: fb::TransactionState,
    offset: Option<u64>,
) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let offset = offset.and_then(|offset| i64::try_from(offset).ok()).unwrap_or(-1);
    let args = fb::EndTransactionResponseArgs { outcome: Some(outcome), state, offset };
    let root = fb::EndTransactionResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn list_transactions_request(discarded: bool) -> Vec<u8> {
    list_transactions_page_request(discarded, None)
}

/// The page of transactions after the cursor `after` (an answer's `next`).
pub fn list_transactions_page_request(discarded: bool, after: Option<&[u8]>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let after = after.map(|after| builder.create_vector(after));
    let root = fb::ListTransactionsRequest::create(&mut builder, &fb::ListTransactionsRequestArgs { discarded, after });
    finish(&mut builder, root)
}

/// One transaction as `ListTransactions` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionSummary {
    pub transaction_id: String,
    pub msg_id: (u64, u64),
    pub topic: String,
    pub queue: u32,
    pub producer_group: String,
    pub stored_at_ms: u64,
    pub checks_delivered: u32,
    pub state: fb::TransactionState,
}

impl TransactionSummary {
    pub fn read(info: &fb::TransactionInfo<'_>) -> Self {
        Self {
            transaction_id: info.transaction_id().to_string(),
            msg_id: (info.msg_id_hi(), info.msg_id_lo()),
            topic: info.topic().unwrap_or_default().to_string(),
            queue: info.queue(),
            producer_group: info.producer_group().unwrap_or_default().to_string(),
            stored_at_ms: info.stored_at_ms(),
            checks_delivered: info.checks_delivered(),
            state: info.state(),
        }
    }
}

pub fn list_transactions_response(
    failure: Option<&Failure>,
    transactions: &[TransactionSummary],
    next: Option<&[u8]>,
) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(128 + transactions.len() * 128);
    let outcome = outcome(&mut builder, failure);
    let transactions: Vec<_> = transactions
        .iter()
        .map(|summary| {
            let transaction_id = builder.create_string(&summary.transaction_id);
            let topic = builder.create_string(&summary.topic);
            let producer_group = builder.create_string(&summary.producer_group);
            let args = fb::TransactionInfoArgs {
                transaction_id: Some(transaction_id),
                msg_id_hi: summary.msg_id.0,
                msg_id_lo: summary.msg_id.1,
                topic: Some(topic),
                queue: summary.queue,
                producer_group: Some(producer_group),
                stored_at_ms: summary.stored_at_ms,
                checks_delivered: summary.checks_delivered,
                state: summary.state,
            };
            fb::TransactionInfo::create(&mut builder, &args)
        })
        .collect();
    let transactions = builder.create_vector(&transactions);
    let next = next.map(|next| builder.create_vector(next));
    let args = fb::ListTransactionsResponseArgs { outcome: Some(outcome), transactions: Some(transactions), next };
    let root = fb::ListTransactionsResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn register_producer_request(producer_group: &str) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let producer_group = builder.create_string(producer_group);
    let args = fb::RegisterProducerRequestArgs { producer_group: Some(producer_group) };
    let root = fb::RegisterProducerRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn register_producer_response(failure: Option<&Failure>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let root = fb::RegisterProducerResponse::create(
        &mut builder,
        &fb::RegisterProducerResponseArgs { outcome: Some(outcome) },
    );
    finish(&mut builder, root)
}

/// A check-back of one half message, as the broker sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionCheck {
    pub transaction_id: String,
    pub msg_id: (u64, u64),
    pub topic: String,
    pub queue: u32,
    pub producer_group: String,
    /// The half message as stored (a wire `Message`).
    pub message: Vec<u8>,
    pub checks_delivered: u32,
}

impl TransactionCheck {
    pub fn read(request: &fb::CheckTransactionRequest<'_>) -> Self {
        Self {
            transaction_id: request.transaction_id().to_string(),
            msg_id: (request.msg_id_hi(), request.msg_id_lo()),
            topic: request.topic().to_string(),
            queue: request.queue(),
            producer_group: request.producer_group().unwrap_or_default().to_string(),
            message: request.message().map(|bytes| bytes.bytes().to_vec()).unwrap_or_default(),
            checks_delivered: request.checks_delivered(),
        }
    }

    pub fn msg_id_hex(&self) -> String {
        format!("{:016x}{:016x}", self.msg_id.0, self.msg_id.1)
    }
}

pub fn check_transaction_request(check: &TransactionCheck) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(256 + check.message.len());
    let transaction_id = builder.create_string(&check.transaction_id);
    let topic = builder.create_string(&check.topic);
    let producer_group = builder.create_string(&check.producer_group);
    let message = builder.create_vector(&check.message);
    let args = fb::CheckTransactionRequestArgs {
        transaction_id: Some(transaction_id),
        msg_id_hi: check.msg_id.0,
        msg_id_lo: check.msg_id.1,
        topic: Some(topic),
        queue: check.queue,
        producer_group: Some(producer_group),
        message: Some(message),
        checks_delivered: check.checks_delivered,
    };
    let root = fb::CheckTransactionRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn check_transaction_response(failure: Option<&Failure>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let root = fb::CheckTransactionResponse::create(
        &mut builder,
        &fb::CheckTransactionResponseArgs { outcome: Some(outcome) },
    );
    finish(&mut builder, root)
}

#[cfg(test)]
mod transaction_tests {
    use super::*;
    use crate::protocol::verify;

    #[test]
    fn end_transaction_bodies_round_trip() {
        let body = end_transaction_request("orders", 3, "tx-1", fb::TransactionOutcome::Rollback, true);
        let request = verify::<fb::EndTransactionRequest>(&body).expect("verifies");
        assert_eq!((request.topic(), request.queue(), request.transaction_id()), ("orders", 3, "tx-1"));
        assert_eq!((request.outcome(), request.from_check()), (fb::TransactionOutcome::Rollback, true));
        let body = end_transaction_response(None, fb::TransactionState::Committed, Some(7));
        let response = verify::<fb::EndTransactionResponse>(&body).expect("verifies");
        assert_eq!((response.state(), response.offset()), (fb::TransactionState::Committed, 7));
        let body = end_transaction_response(None, fb::TransactionState::Pending, None);
        assert_eq!(verify::<fb::EndTransactionResponse>(&body).expect("verifies").offset(), -1);
    }

    #[test]
    fn transaction_lists_round_trip() {
        let summary = TransactionSummary {
            transaction_id: "tx-9".into(),
            msg_id: (1, 2),
            topic: "orders".into(),
            queue: 1,
            producer_group: "payments".into(),
            stored_at_ms: 1234,
            checks_delivered: 0,
            state: fb::TransactionState::Pending,
        };
        let body = list_transactions_response(None, std::slice::from_ref(&summary), Some(b"cursor"));
        let response = verify::<fb::ListTransactionsResponse>(&body).expect("verifies");
        let read: Vec<_> =
            response.transactions().expect("a list").iter().map(|info| TransactionSummary::read(&info)).collect();
        assert_eq!(read, vec![summary]);
        assert_eq!(response.next().map(|next| next.bytes()), Some(&b"cursor"[..]));
        assert!(verify::<fb::ListTransactionsRequest>(&list_transactions_request(true)).expect("verifies").discarded());
        let body = list_transactions_page_request(false, Some(b"after"));
        let request = verify::<fb::ListTransactionsRequest>(&body).expect("verifies");
        assert_eq!(request.after().map(|after| after.bytes()), Some(&b"after"[..]));
    }

    #[test]
    fn check_transaction_bodies_round_trip() {
        let check = TransactionCheck {
            transaction_id: "tx-1".into(),
            msg_id: (1, 2),
            topic: "orders".into(),
            queue: 3,
            producer_group: "pg".into(),
            message: vec![1, 2, 3],
            checks_delivered: 4,
        };
        let body = check_transaction_request(&check);
        let request = verify::<fb::CheckTransactionRequest>(&body).expect("verifies");
        assert_eq!(TransactionCheck::read(&request), check);
        let body = register_producer_request("pg");
        assert_eq!(verify::<fb::RegisterProducerRequest>(&body).expect("verifies").producer_group(), "pg");
        assert!(verify::<fb::CheckTransactionResponse>(&check_transaction_response(None)).is_ok());
        assert!(verify::<fb::RegisterProducerResponse>(&register_producer_response(None)).is_ok());
    }
}

pub fn send_back_request(
    group: &str,
    topic: &str,
    queue: u32,
    offset: u64,
    max_reconsume_times: u32,
    delay_level: u8,
) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let group = builder.create_string(group);
    let topic = builder.create_string(topic);
    let args = fb::SendBackRequestArgs {
        group: Some(group),
        topic: Some(topic),
        queue,
        offset,
        max_reconsume_times,
        delay_level,
    };
    let root = fb::SendBackRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// What the broker did with a send-back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendBackAnswer {
    pub dead_letter: bool,
    pub reconsume_times: u32,
    pub duplicate: bool,
    pub due_at_ms: u64,
}

pub fn send_back_response(failure: Option<&Failure>, answer: &SendBackAnswer) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let args = fb::SendBackResponseArgs {
        outcome: Some(outcome),
        dead_letter: answer.dead_letter,
        reconsume_times: answer.reconsume_times,
        duplicate: answer.duplicate,
        due_at_ms: answer.due_at_ms,
    };
    let root = fb::SendBackResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn read_send_back_answer(response: fb::SendBackResponse<'_>) -> SendBackAnswer {
    SendBackAnswer {
        dead_letter: response.dead_letter(),
        reconsume_times: response.reconsume_times(),
        duplicate: response.duplicate(),
        due_at_ms: response.due_at_ms(),
    }
}

pub fn resend_dead_letter_request(group: &str, queue: u32, offset: u64, again: bool) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let group = builder.create_string(group);
    let args = fb::ResendDeadLetterRequestArgs { group: Some(group), queue, offset, again };
    let root = fb::ResendDeadLetterRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn resend_dead_letter_response(
    failure: Option<&Failure>,
    resent: bool,
    original_topic: &str,
    original_queue: u32,
) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let original_topic = builder.create_string(original_topic);
    let args = fb::ResendDeadLetterResponseArgs {
        outcome: Some(outcome),
        resent,
        original_topic: Some(original_topic),
        original_queue,
    };
    let root = fb::ResendDeadLetterResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}
