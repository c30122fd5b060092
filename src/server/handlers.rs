//! One function per request kind. Each verifies its body, checks routing
//! (a queue this shard does not own gets `NotOwner` naming the owner) and
//! answers with its response kind or a `Failure`.

use super::admin;
use super::dedup::{Admission, StoredSend};
use super::delayed;
use super::failures::log_failure;
use super::groups::Joiner;
use super::long_poll;
use super::metrics::ShardCounters;
use super::offsets::{append_commit, OffsetCommit, OFFSETS_QUEUE_ID};
use super::producer_links::ProducerLink;
use super::replication::Replication;
use super::send_back;
use super::shard::Shard;
use super::timer_records;
use super::topics::{check_length, check_name};
use super::transactions;
use crate::constants::{
    CLIENT_ID_BYTES_MAX, FETCH_BYTES_MAX, FETCH_COUNT_MAX, FETCH_TAGS_MAX, FETCH_WAIT_MS_MAX, NAME_BYTES_MAX,
    PRODUCE_MESSAGES_MAX, RECORD_HEADER_SIZE_BYTES,
};
use crate::protocol::{self, coordinator_shard, fb, retry_topic, verify, Failure, FetchedRecords, Frame, Kind};
use crate::protocol::{page, INTERNAL_TOPIC_PREFIX};
use crate::storage::{now_us, AppendRequest, LogError};
use crate::wire::{check_message_fields, verify_message, VerifiedMessage};
use bytes::{Bytes, BytesMut};
use std::collections::BTreeSet;
use std::ops::Bound;
use std::rc::Rc;
use std::time::Duration;

pub type Answer = Result<(Kind, Vec<u8>), Failure>;

pub(super) fn invalid(error: String) -> Failure {
    Failure::new(fb::ErrorCode::InvalidRequest, format!("invalid request body: {error}"))
}

pub async fn handle(shard: &Rc<Shard>, link: &Rc<ProducerLink>, frame: Frame) -> Answer {
    let Some(kind) = Kind::from_u16(frame.kind) else {
        return Err(Failure::new(fb::ErrorCode::UnknownKind, format!("unknown frame kind {}", frame.kind)));
    };
    if shard.shutting_down.get() {
        return Err(Failure::new(fb::ErrorCode::ShuttingDown, "the broker is shutting down"));
    }
    if let Some(primary) = shard.config.replication.standby_of.as_deref() {
        if super::replication::standby::changes_state(kind) {
            return Err(super::replication::standby::not_primary(primary, kind));
        }
    }
    match kind {
        Kind::MetadataRequest => metadata(shard, &frame.body),
        Kind::CreateTopicRequest => create_topic(shard, &frame.body).await,
        Kind::ProduceRequest => produce(shard, &frame.body).await,
        Kind::FetchRequest => fetch(shard, &frame.body).await,
        Kind::JoinGroupRequest => join_group(shard, &frame.body).await,
        Kind::HeartbeatRequest => heartbeat(shard, &frame.body),
        Kind::LeaveGroupRequest => leave_group(shard, &frame.body).await,
        Kind::CommitOffsetRequest => commit_offset(shard, &frame.body).await,
        Kind::FetchOffsetRequest => fetch_offset(shard, &frame.body),
        Kind::EndTransactionRequest => end_transaction(shard, &frame.body).await,
        Kind::ListTransactionsRequest => list_transactions(shard, &frame.body),
        Kind::RegisterProducerRequest => register_producer(shard, link, &frame.body),
        Kind::SendBackRequest => send_back(shard, &frame.body).await,
        Kind::ResendDeadLetterRequest => resend_dead_letter(shard, &frame.body).await,
        Kind::ShardStatusRequest => admin::shard_status(shard, &frame.body),
        Kind::ListGroupsRequest => admin::list_groups(shard, &frame.body),
        Kind::GroupOffsetsRequest => admin::group_offsets(shard, &frame.body),
        Kind::ResetOffsetRequest => admin::reset_offset(shard, &frame.body).await,
        Kind::OffsetAtTimeRequest => admin::offset_at_time(shard, &frame.body).await,
        Kind::QueryMessagesRequest => super::message_query::query_messages(shard, &frame.body).await,
        Kind::ReplicateRequest => super::replication::primary::replicate(shard, &frame.body).await,
        _ => Err(Failure::new(fb::ErrorCode::UnknownKind, format!("frame kind {kind:?} is not a request"))),
    }
}

/// One page of topics (in name order, from after the request's cursor).
fn metadata(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::MetadataRequest>(body).map_err(invalid)?;
    let wanted: BTreeSet<&str> = request.topics().map(|topics| topics.iter().collect()).unwrap_or_default();
    let after = page::cursor_of(request.after())?.map(page::read_name_cursor).transpose()?;
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    let topics = shard.topics.borrow();
    let candidates = topics
        .topics
        .range::<str, _>((from, Bound::Unbounded))
        .map(|(_, topic)| topic)
        .filter(|topic| wanted.is_empty() || wanted.contains(topic.name.as_str()))
        .map(|topic| topic.layout());
    let (layouts, more) = page::fill_page(candidates);
    let next = layouts.last().filter(|_| more).map(|last| page::name_cursor(&last.name));
    Ok((Kind::MetadataResponse, protocol::metadata_response(None, &shard.endpoints, &layouts, next.as_deref())))
}

async fn create_topic(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::CreateTopicRequest>(body).map_err(invalid)?;
    check_name("topic", request.name())?;
    let (topic, created) = shard.create_topic(request.name(), request.queues()).await?;
    Ok((Kind::CreateTopicResponse, protocol::create_topic_response(None, Some(&topic.layout()), created)))
}

/// The producer's message bytes, sliced out of the frame without a copy.
fn message_bytes(frame_body: &Bytes, message: &[u8]) -> Result<Bytes, Failure> {
    let start = (message.as_ptr() as usize).checked_sub(frame_body.as_ptr() as usize);
    match start {
        Some(start) if start + message.len() <= frame_body.len() => Ok(frame_body.slice(start..start + message.len())),
        _ => Err(Failure::new(fb::ErrorCode::Internal, "message bytes outside the frame")),
    }
}

async fn produce(shard: &Shard, body: &Bytes) -> Answer {
    let request = verify::<fb::ProduceRequest>(body).map_err(invalid)?;
    if request.topic().starts_with(INTERNAL_TOPIC_PREFIX) {
        return Err(Failure::new(
            fb::ErrorCode::InvalidTopic,
            "topics starting with % take only the broker's own records",
        ));
    }
    let topic = shard.topic(request.topic())?;
    let queue_id = shard.owned_queue(&topic, request.queue())?;
    // After the routing checks (a produce to the wrong shard learns its
    // owner, whose disk may have room), before anything is placed.
    if let Some(refusal) = shard.disk.refusal() {
        return Err(Failure::new(fb::ErrorCode::DiskFull, refusal));
    }
    let now_ms = now_us() / 1000;
    if request.messages().len() > PRODUCE_MESSAGES_MAX {
        return Err(invalid(format!("a produce request carries at most {PRODUCE_MESSAGES_MAX} messages")));
    }
    let mut messages = Vec::with_capacity(request.messages().len());
    for (index, message) in request.messages().iter().enumerate() {
        let bytes = message_bytes(body, message.bytes().bytes())?;
        let invalid_message = |error: String| {
            Failure::new(fb::ErrorCode::InvalidMessage, format!("message {index} of the batch: {error}"))
        };
        let verified = verify_message(bytes).map_err(|error| invalid_message(error.to_string()))?;
        transactions::check_half(&verified).map_err(invalid_message)?;
        check_message_fields(&verified.message()).map_err(|error| invalid_message(error.to_string()))?;
        delayed::check_delay(&verified, &shard.config.delay_levels, shard.config.delay_max, now_ms)
            .map_err(invalid_message)?;
        messages.push(verified);
    }
    // Refused before anything is placed: a request fails whole or not at all
    // for what its own bytes decide.
    let record_max = shard.log.record_size_bytes_max();
    if let Some(index) =
        messages.iter().position(|message| RECORD_HEADER_SIZE_BYTES + message.bytes().len() > record_max)
    {
        return Err(Failure::new(
            fb::ErrorCode::MessageTooLarge,
            format!("message {index} of the batch is larger than the {record_max} bytes a record may take"),
        ));
    }
    let placed = place_in_order(shard, queue_id, &messages, request.skip_gap()).await?;
    let end = placed.iter().filter_map(|placed| placed.send.map(|send| send.end)).max().unwrap_or(0);
    let deadline = shard.clock.deadline(shard.config.sync_flush_timeout);
    let durable = futures_lite::future::or(async { Some(shard.log.wait_acknowledgeable(end).await) }, async {
        shard.clock.until(deadline).await;
        None
    })
    .await;
    let status = match durable {
        Some(Ok(())) if shard.config.replication.replication == Replication::Sync => {
            super::replication::primary::standby_status(shard, end).await
        }
        Some(Ok(())) => fb::SendStatus::SendOk,
        Some(Err(error)) => return Err(log_failure(error)),
        None => fb::SendStatus::FlushDiskTimeout,
    };
    let sends: Vec<_> = messages
        .iter()
        .zip(&placed)
        .map(|(message, placed)| protocol::SendOutcome {
            status,
            msg_id: message.msg_id,
            // A half or delayed message has no offset in its queue until
            // committed or due.
            offset: placed.send.filter(|_| !message.is_half && !delayed::is_delayed(message)).map(|send| send.offset),
            store_timestamp_us: placed.send.map_or(0, |send| send.store_timestamp_us),
            duplicate: placed.duplicate,
        })
        .collect();
    count_produced(shard, &messages, &placed);
    Ok((Kind::ProduceResponse, protocol::produce_response(None, request.queue(), &sends)))
}

/// Counts the messages a produce stored (a duplicate was counted at its
/// first send).
fn count_produced(shard: &Shard, messages: &[VerifiedMessage], placed: &[Placed]) {
    let stored = messages.iter().zip(placed).filter(|(_, placed)| !placed.duplicate);
    let (count, bytes) = stored.fold((0, 0), |(count, bytes), (message, _)| (count + 1, bytes + message.bytes().len()));
    ShardCounters::add(&shard.counters.produced_messages, count);
    ShardCounters::add(&shard.counters.produced_bytes, bytes as u64);
}

/// Where a message of a produce request ended up.
struct Placed {
    /// `None`: a duplicate of a send too old to remember where it went.
    send: Option<StoredSend>,
    duplicate: bool,
}

/// Places a request's messages in the log, one request at a time in the
/// order they arrived (a small request never overtakes a large one waiting
/// for buffer room), each message only if its producer's sequence for the
/// queue says it is new and next. A failure after some messages were placed
/// fails the request; the producer's retry finds those as duplicates.
async fn place_in_order(
    shard: &Shard,
    queue_id: u32,
    messages: &[VerifiedMessage],
    skip_gap: bool,
) -> Result<Vec<Placed>, Failure> {
    let _turn = shard.placement_line.turn().await;
    let mut placed = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        // A gap may open only before the first message: the rest follow it.
        placed.push(place_once(shard, queue_id, message, skip_gap && index == 0).await?);
    }
    Ok(placed)
}

async fn place_once(
    shard: &Shard,
    queue_id: u32,
    message: &VerifiedMessage,
    skip_gap: bool,
) -> Result<Placed, Failure> {
    if message.is_half {
        // Deduplicated by transaction id, not by producer sequence.
        let (send, duplicate) = transactions::place_half(shard, queue_id, message).await.map_err(log_failure)?;
        return Ok(Placed { send: Some(send), duplicate });
    }
    let (producer_id, sequence) = (message.producer_id, message.sequence);
    // Producer id 0: a producer that asked for no dedup and no ordering.
    let sequenced = producer_id != 0;
    if sequenced {
        match shard.dedup.borrow().admit(producer_id, queue_id, sequence, skip_gap) {
            Admission::Store => {}
            Admission::Duplicate(send) => return Ok(Placed { send, duplicate: true }),
            Admission::OutOfOrder { expected } => {
                return Err(Failure::out_of_order(
                    expected,
                    format!("producer {producer_id:016x} sent sequence {sequence} to a queue expecting {expected}; resend in order"),
                ))
            }
            Admission::TooManyProducers { max } => {
                return Err(Failure::new(
                    fb::ErrorCode::TooManyProducers,
                    format!(
                        "producer {producer_id:016x} is refused: shard {} already tracks {max} producers (producers_max); a new producer is taken once idle ones expire (producer_idle_expiry_ms)",
                        shard.id
                    ),
                ))
            }
        }
    }
    let (send, duplicate) = match append_message(shard, queue_id, message).await.map_err(log_failure)? {
        Ok(send) => (send, false),
        // A delayed message the timers hold already: answered once its first
        // copy is acknowledgeable (`end`).
        Err(end) => (StoredSend { sequence, offset: 0, store_timestamp_us: 0, end }, true),
    };
    if sequenced {
        shard.dedup.borrow_mut().stored(producer_id, queue_id, send, shard.log.positions().flushed);
    }
    Ok(Placed { send: Some(send), duplicate })
}

/// Stores a message the producer table admitted: in its queue, or as a
/// timer entry when delayed (`Err(end)`: the shard holds that delayed
/// message, its record ending at `end`).
async fn append_message(
    shard: &Shard,
    queue_id: u32,
    message: &VerifiedMessage,
) -> Result<Result<StoredSend, u64>, LogError> {
    if delayed::is_delayed(message) {
        return delayed::place_delayed(shard, queue_id, message).await;
    }
    let key_hashes = message.key_hashes();
    let request = AppendRequest {
        queue_id,
        indexed: true,
        tag_hash: message.tag_hash,
        message: message.bytes(),
        key_hashes: &key_hashes,
        ..AppendRequest::default()
    };
    let appended = shard.log.append_buffered(request).await?;
    Ok(Ok(StoredSend {
        sequence: message.sequence,
        offset: appended.queue_offset.unwrap_or(0),
        store_timestamp_us: appended.store_timestamp_us,
        end: appended.end,
    }))
}

async fn fetch(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::FetchRequest>(body).map_err(invalid)?;
    let topic = shard.topic(request.topic())?;
    let queue_id = shard.owned_queue(&topic, request.queue())?;
    let count = request.max_count().clamp(1, FETCH_COUNT_MAX) as usize;
    let bytes_max = (request.max_bytes() as usize).clamp(1, FETCH_BYTES_MAX);
    let wait = Duration::from_millis(u64::from(request.max_wait_ms().min(FETCH_WAIT_MS_MAX)));
    let deadline = shard.clock.deadline(wait);
    let tag_hashes: Vec<u32> = request.tag_hashes().map(|hashes| hashes.iter().collect()).unwrap_or_default();
    if tag_hashes.len() > FETCH_TAGS_MAX {
        return Err(invalid(format!("a fetch filters by at most {FETCH_TAGS_MAX} tags")));
    }
    loop {
        let visible = shard.log.positions().visible;
        let batch = match shard.log.read_tagged(queue_id, request.offset(), count, bytes_max, &tag_hashes).await {
            Ok(batch) => batch,
            // Retention deleted the offset: say where the queue now starts,
            // so the consumer moves on from there (and can tell it skipped).
            Err(LogError::OffsetTruncated { earliest, .. }) => {
                let fetched = FetchedRecords {
                    next_offset: earliest,
                    high_watermark: shard.log.visible_end_offset(queue_id),
                    earliest_offset: earliest,
                    ..FetchedRecords::default()
                };
                return Ok((Kind::FetchResponse, protocol::fetch_response(None, &fetched)));
            }
            Err(other) => return Err(log_failure(other)),
        };
        if !batch.lost_offsets.is_empty() {
            tracing::warn!(
                queue_id,
                lost = ?batch.lost_offsets,
                "skipping lost offsets: damage ringmq repair could not bring back, or committed half messages retention deleted"
            );
        }
        let expired = shard.clock.now_ms() >= deadline;
        // A tag filter that passed over records moved too: the consumer
        // goes on from past them.
        let moved = batch.next_offset > request.offset();
        if moved || expired || shard.shutting_down.get() {
            let mut records = BytesMut::with_capacity(batch.records.iter().map(|record| record.bytes.len()).sum());
            for record in &batch.records {
                records.extend_from_slice(&record.bytes);
            }
            // Needed only where a tag filter left holes: otherwise the range
            // minus the lost offsets numbers the records.
            let record_offsets: Vec<u64> = match tag_hashes.is_empty() {
                true => Vec::new(),
                false => batch.records.iter().map(|record| record.queue_offset).collect(),
            };
            let reconsume_times: Vec<u32> = batch.records.iter().map(timer_records::deliveries_before).collect();
            ShardCounters::add(&shard.counters.fetched_messages, batch.records.len() as u64);
            ShardCounters::add(&shard.counters.fetched_bytes, records.len() as u64);
            let fetched = FetchedRecords {
                records: &records,
                record_count: batch.records.len() as u32,
                next_offset: batch.next_offset.max(request.offset()),
                high_watermark: batch.visible_end_offset,
                earliest_offset: shard.log.base_offset(queue_id),
                lost_offsets: &batch.lost_offsets,
                record_offsets: &record_offsets,
                reconsume_times: &reconsume_times,
            };
            return Ok((Kind::FetchResponse, protocol::fetch_response(None, &fetched)));
        }
        // Long poll on this queue alone: read again once its own visible end
        // passes the offset asked for (or at the deadline, or shutdown).
        futures_lite::future::or(
            long_poll::queue_passes(&shard.log, queue_id, request.offset(), visible, || shard.shutting_down.get()),
            shard.clock.until(deadline),
        )
        .await;
    }
}

fn coordinated(shard: &Shard, group: &str, topic: &str) -> Result<u32, Failure> {
    check_name("group", group)?;
    let topic = shard.topic(topic)?;
    let coordinator = coordinator_shard(group, shard.shard_count);
    if coordinator != shard.id {
        return Err(Failure::not_owner(coordinator, format!("group {group} is coordinated by shard {coordinator}")));
    }
    Ok(topic.queue_shards.len() as u32)
}

async fn join_group(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::JoinGroupRequest>(body).map_err(invalid)?;
    let queue_count = coordinated(shard, request.group(), request.topic())?;
    check_length("member id", request.member_id().unwrap_or_default(), CLIENT_ID_BYTES_MAX)?;
    check_length("instance id", request.instance_id().unwrap_or_default(), CLIENT_ID_BYTES_MAX)?;
    // Refused before its retry topic is made: a group the coordinator has no
    // room for leaves nothing behind.
    shard.coordinator.borrow_mut().admit_group(request.group(), request.topic())?;
    // The group's consumers subscribe to its retry topic by themselves.
    if !request.topic().starts_with(INTERNAL_TOPIC_PREFIX) {
        shard.internal_topic(&retry_topic(request.group())).await?;
    }
    let joiner = Joiner {
        member_id: request.member_id().unwrap_or_default(),
        instance_id: request.instance_id().unwrap_or_default(),
        session_timeout_ms: request.session_timeout_ms(),
    };
    let (assignment, rebalanced) =
        shard.coordinator.borrow_mut().join(request.group(), request.topic(), joiner, queue_count)?;
    // Answered only once every shard fences by the new assignment.
    if let Some(fence) = rebalanced {
        shard.announce_fence(fence).await;
    }
    Ok((Kind::JoinGroupResponse, protocol::group_assignment(None, &assignment)))
}

fn heartbeat(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::HeartbeatRequest>(body).map_err(invalid)?;
    coordinated(shard, request.group(), request.topic())?;
    check_length("member id", request.member_id(), CLIENT_ID_BYTES_MAX)?;
    let assignment = shard.coordinator.borrow_mut().heartbeat(request.group(), request.topic(), request.member_id())?;
    Ok((Kind::HeartbeatResponse, protocol::group_assignment(None, &assignment)))
}

async fn leave_group(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::LeaveGroupRequest>(body).map_err(invalid)?;
    coordinated(shard, request.group(), request.topic())?;
    check_length("member id", request.member_id(), CLIENT_ID_BYTES_MAX)?;
    let rebalanced = shard.coordinator.borrow_mut().leave(request.group(), request.topic(), request.member_id());
    if let Some(fence) = rebalanced {
        shard.announce_fence(fence).await;
    }
    let assignment = protocol::Assignment { member_id: request.member_id().to_string(), ..Default::default() };
    Ok((Kind::LeaveGroupResponse, protocol::group_assignment(None, &assignment)))
}

async fn commit_offset(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::CommitOffsetRequest>(body).map_err(invalid)?;
    check_name("group", request.group())?;
    let topic = shard.topic(request.topic())?;
    let queue_id = shard.owned_queue(&topic, request.queue())?;
    let member_id = request.member_id().unwrap_or_default();
    check_length("member id", member_id, CLIENT_ID_BYTES_MAX)?;
    shard
        .offsets
        .borrow()
        .check_owner(request.group(), request.topic(), request.queue(), member_id, request.generation())
        .map_err(|fenced| Failure::new(fb::ErrorCode::StaleGeneration, fenced.to_string()))?;
    // An offset past what readers can see would make the next owner skip
    // the messages in between once they arrive.
    let end = shard.log.visible_end_offset(queue_id);
    if request.offset() > end {
        return Err(Failure::new(
            fb::ErrorCode::InvalidRequest,
            format!(
                "offset {} is past the end of queue {} of {} ({end}): a commit names the next offset to consume",
                request.offset(),
                request.queue(),
                request.topic()
            ),
        ));
    }
    let commit = OffsetCommit {
        group: request.group().to_string(),
        topic: request.topic().to_string(),
        queue: request.queue(),
        offset: request.offset(),
        generation: request.generation(),
    };
    store_commit(shard, &commit).await?;
    Ok((Kind::CommitOffsetResponse, protocol::offset_response(None, Some(commit.offset))))
}

/// Appends a commit durably (as `append_commit`), then applies it.
pub(super) async fn store_commit(shard: &Shard, commit: &OffsetCommit) -> Result<(), Failure> {
    // Not above the offset this commit's record gets: a snapshot taken while
    // it is in flight covers only the records before it.
    let floor = shard.log.visible_end_offset(OFFSETS_QUEUE_ID);
    *shard.commits_in_flight.borrow_mut().entry(floor).or_insert(0) += 1;
    let appended = append_commit(&shard.log, commit).await;
    {
        let mut in_flight = shard.commits_in_flight.borrow_mut();
        if let Some(count) = in_flight.get_mut(&floor) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&floor);
            }
        }
    }
    appended.map_err(log_failure)?;
    shard.offsets.borrow_mut().apply(commit);
    Ok(())
}

fn fetch_offset(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::FetchOffsetRequest>(body).map_err(invalid)?;
    check_length("group", request.group(), NAME_BYTES_MAX)?;
    let topic = shard.topic(request.topic())?;
    shard.owned_queue(&topic, request.queue())?;
    let key = (request.group().to_string(), request.topic().to_string(), request.queue());
    let offset = shard.offsets.borrow().get(&key);
    Ok((Kind::FetchOffsetResponse, protocol::offset_response(None, offset)))
}

async fn end_transaction(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::EndTransactionRequest>(body).map_err(invalid)?;
    check_length("transaction id", request.transaction_id(), CLIENT_ID_BYTES_MAX)?;
    let topic = shard.topic(request.topic())?;
    let queue_id = shard.owned_queue(&topic, request.queue())?;
    let outcome = transactions::Outcome::from_wire(request.outcome())
        .ok_or_else(|| invalid(format!("unknown transaction outcome {}", request.outcome().0)))?;
    let state = transactions::end(shard, queue_id, request.transaction_id(), outcome).await?;
    let response = protocol::end_transaction_response(None, state.wire(), state.offset());
    Ok((Kind::EndTransactionResponse, response))
}

fn list_transactions(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::ListTransactionsRequest>(body).map_err(invalid)?;
    let after = page::cursor_of(request.after())?.map(page::read_keyed_cursor).transpose()?;
    let after = after.map(|(settled, position)| (settled == "settled", position));
    let (listed, last) = shard.transactions.borrow().list(request.discarded(), after);
    let next =
        last.map(|(settled, position)| page::keyed_cursor(if settled { "settled" } else { "pending" }, position));
    Ok((Kind::ListTransactionsResponse, protocol::list_transactions_response(None, &listed, next.as_deref())))
}

/// The connection becomes a live producer of the group: check-backs of the
/// group's halves on this shard may come on it.
fn register_producer(shard: &Shard, link: &Rc<ProducerLink>, body: &[u8]) -> Answer {
    let request = verify::<fb::RegisterProducerRequest>(body).map_err(invalid)?;
    // As loose as a half's own group (`check_half`): any group a half can
    // name must be registrable.
    if request.producer_group().is_empty() {
        return Err(invalid("a producer registers with a producer group".into()));
    }
    check_length("producer group", request.producer_group(), NAME_BYTES_MAX)?;
    shard.producer_links.borrow_mut().register(request.producer_group(), link)?;
    Ok((Kind::RegisterProducerResponse, protocol::register_producer_response(None)))
}

async fn send_back(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::SendBackRequest>(body).map_err(invalid)?;
    let topic = shard.topic(request.topic())?;
    let queue_id = shard.owned_queue(&topic, request.queue())?;
    let sent = send_back::send_back(
        shard,
        request.group(),
        queue_id,
        request.offset(),
        request.max_reconsume_times(),
        request.delay_level(),
    )
    .await?;
    let answer = protocol::SendBackAnswer {
        dead_letter: sent.dead_letter,
        reconsume_times: sent.reconsume_times,
        duplicate: sent.duplicate,
        due_at_ms: sent.due_at_ms,
    };
    Ok((Kind::SendBackResponse, protocol::send_back_response(None, &answer)))
}

async fn resend_dead_letter(shard: &Shard, body: &[u8]) -> Answer {
    let request = verify::<fb::ResendDeadLetterRequest>(body).map_err(invalid)?;
    let resent =
        send_back::resend_dead_letter(shard, request.group(), request.queue(), request.offset(), request.again())
            .await?;
    let response =
        protocol::resend_dead_letter_response(None, resent.resent, &resent.original_topic, resent.original_queue);
    Ok((Kind::ResendDeadLetterResponse, response))
}
