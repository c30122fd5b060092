//! One function per request kind. Each takes its request as `requests`
//! read and checked it, checks routing (a queue this shard does not own gets
//! `NotOwner` naming the owner) and answers with its response kind or a
//! `Failure`.

use super::admin;
use super::dedup::{Admission, StoredSend};
use super::delayed;
use super::failures::log_failure;
use super::groups::Joiner;
use super::long_poll;
use super::metrics::ShardCounters;
use super::offsets::{append_commit, OffsetCommit, OFFSETS_QUEUE_ID};
use super::producer_links::ProducerLink;
use super::replication::{release, Replication};
use super::requests::{self, GroupMember, MessageLimits, Request};
use super::send_back;
use super::shard::Shard;
use super::timer_records;
use super::transactions;
use crate::protocol::{self, coordinator_shard, fb, retry_topic, Failure, FetchedRecords, Frame, Kind};
use crate::protocol::{page, INTERNAL_TOPIC_PREFIX};
use crate::storage::{now_us, AppendRequest, LogError};
use crate::wire::VerifiedMessage;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::ops::Bound;
use std::rc::Rc;

pub type Answer = Result<(Kind, Vec<u8>), Failure>;

pub async fn handle(shard: &Rc<Shard>, link: &Rc<ProducerLink>, frame: Frame) -> Answer {
    let request = Request::read(frame.kind, &frame.body)?;
    if shard.shutting_down.get() {
        return Err(Failure::new(fb::ErrorCode::ShuttingDown, "the broker is shutting down"));
    }
    if let Some(primary) = shard.replica.standby_of() {
        let kind = Kind::from_u16(frame.kind).filter(|kind| super::replication::standby::changes_state(*kind));
        if let Some(kind) = kind {
            return Err(super::replication::standby::not_primary(&primary, kind));
        }
    }
    // Every request in flight is a future as large as the largest arm
    // here: the handlers whose futures are larger than produce's and
    // fetch's are boxed (an allocation for them, kilobytes less for every
    // request in flight; `a_request_in_flight_stays_small`).
    match request {
        Request::Metadata(request) => metadata(shard, &request),
        Request::CreateTopic(request) => Box::pin(create_topic(shard, &request)).await,
        Request::Produce(request) => produce(shard, &frame.body, &request).await,
        Request::Fetch(request) => fetch(shard, &request).await,
        Request::JoinGroup(request) => Box::pin(join_group(shard, &request)).await,
        Request::Heartbeat(request) => heartbeat(shard, &request),
        Request::LeaveGroup(request) => leave_group(shard, &request).await,
        Request::CommitOffset(request) => commit_offset(shard, &request).await,
        Request::FetchOffset(request) => fetch_offset(shard, &request),
        Request::EndTransaction(request) => Box::pin(end_transaction(shard, &request)).await,
        Request::ListTransactions(request) => list_transactions(shard, &request),
        Request::RegisterProducer { producer_group } => register_producer(shard, link, producer_group),
        Request::SendBack(request) => Box::pin(send_back(shard, &request)).await,
        Request::ResendDeadLetter(request) => Box::pin(resend_dead_letter(shard, &request)).await,
        Request::ShardStatus => admin::shard_status(shard),
        Request::ListGroups(request) => admin::list_groups(shard, &request),
        Request::GroupOffsets(request) => admin::group_offsets(shard, &request),
        Request::ResetOffset(request) => admin::reset_offset(shard, &request).await,
        Request::OffsetAtTime(request) => admin::offset_at_time(shard, &request).await,
        Request::QueryMessages(request) => Box::pin(super::message_query::query_messages(shard, &request)).await,
        Request::Replicate(request) => super::replication::primary::replicate(shard, request).await,
        Request::Promote(replication) => Box::pin(super::replication::promotion::promote(shard, replication)).await,
    }
}

/// One page of topics (in name order, from after the request's cursor).
fn metadata(shard: &Shard, request: &requests::Metadata<'_>) -> Answer {
    let wanted = &request.topics;
    let from = request.after.map_or(Bound::Unbounded, Bound::Excluded);
    let topics = shard.topics.borrow();
    let candidates = topics
        .topics
        .range::<str, _>((from, Bound::Unbounded))
        .map(|(_, topic)| topic)
        .filter(|topic| wanted.is_empty() || wanted.contains(&*topic.name))
        .map(|topic| topic.layout());
    let (layouts, more) = page::fill_page(candidates);
    let next = layouts.last().filter(|_| more).map(|last| page::name_cursor(&last.name));
    Ok((Kind::MetadataResponse, protocol::metadata_response(None, &shard.endpoints, &layouts, next.as_deref())))
}

async fn create_topic(shard: &Shard, request: &requests::CreateTopic<'_>) -> Answer {
    let (topic, created) = shard.create_topic(request.name, request.queues).await?;
    Ok((Kind::CreateTopicResponse, protocol::create_topic_response(None, Some(&topic.layout()), created)))
}

async fn produce(shard: &Shard, body: &Bytes, request: &requests::Produce<'_>) -> Answer {
    let topic = shard.topic(request.topic)?;
    let queue_id = shard.owned_queue(&topic, request.queue)?;
    // After the routing checks (a produce to the wrong shard learns its
    // owner, whose disk may have room), before anything is placed.
    if let Some(refusal) = shard.disk.refusal() {
        return Err(Failure::new(fb::ErrorCode::DiskFull, refusal));
    }
    let limits = MessageLimits {
        delay_levels: &shard.config.delay_levels,
        delay_max: shard.config.delay_max,
        now_ms: now_us() / 1000,
        record_bytes_max: shard.log.record_size_bytes_max(),
    };
    let messages = request.messages(body, &limits)?;
    let placed = place_in_order(shard, queue_id, &messages, request.skip_gap).await?;
    let end = placed.iter().filter_map(|placed| placed.send.map(|send| send.end)).max().unwrap_or(0);
    let deadline = shard.clock.deadline(shard.config.sync_flush_timeout);
    let durable = futures_lite::future::or(async { Some(shard.log.wait_acknowledgeable(end).await) }, async {
        shard.clock.until(deadline).await;
        None
    })
    .await;
    let status = match durable {
        Some(Ok(())) if shard.replica.replication() == Replication::Sync => {
            super::replication::primary::standby_status(shard, end).await
        }
        Some(Ok(())) => fb::SendStatus::SendOk,
        Some(Err(error)) => return Err(log_failure(error)),
        None => fb::SendStatus::FlushDiskTimeout,
    };
    let sends = messages.iter().zip(&placed).map(|(message, placed)| protocol::SendOutcome {
        status,
        msg_id: message.msg_id,
        // A half or delayed message has no offset in its queue until
        // committed or due.
        offset: placed.send.filter(|_| !message.is_half && !delayed::is_delayed(message)).map(|send| send.offset),
        store_timestamp_us: placed.send.map_or(0, |send| send.store_timestamp_us),
        duplicate: placed.duplicate,
    });
    let answer = protocol::accepted_produce_response(request.queue, sends);
    count_produced(shard, &messages, &placed);
    Ok((Kind::ProduceResponse, answer))
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
) -> Result<SmallVec<[Placed; 1]>, Failure> {
    let _turn = shard.placement_line.turn().await;
    let mut placed = SmallVec::with_capacity(messages.len());
    // One read of the clock for the request: a thousand reads were 2% of
    // the shard's CPU under 1,000-message requests.
    let clock_us = now_us();
    for (index, message) in messages.iter().enumerate() {
        // A gap may open only before the first message: the rest follow it.
        placed.push(place_once(shard, queue_id, message, skip_gap && index == 0, clock_us).await?);
    }
    Ok(placed)
}

async fn place_once(
    shard: &Shard,
    queue_id: u32,
    message: &VerifiedMessage,
    skip_gap: bool,
    clock_us: u64,
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
    let (send, duplicate) = match append_message(shard, queue_id, message, clock_us).await.map_err(log_failure)? {
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
    clock_us: u64,
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
        clock_us: Some(clock_us),
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

async fn fetch(shard: &Shard, request: &requests::Fetch<'_>) -> Answer {
    let topic = shard.topic(request.topic)?;
    let queue_id = shard.owned_queue(&topic, request.queue)?;
    let (count, bytes_max, tag_hashes) = (request.count, request.bytes_max, &request.tag_hashes);
    let deadline = shard.clock.deadline(request.wait);
    loop {
        // Taken afresh each time: a promotion may change what consumers see.
        let view = release::consumer_view(shard);
        let seen = view.seen();
        let limits = view.limits(count, bytes_max);
        let batch = match shard.log.read_tagged(queue_id, request.offset, limits, tag_hashes).await {
            Ok(batch) => batch,
            // Retention deleted the offset: say where the queue now starts,
            // so the consumer moves on from there (and can tell it skipped).
            Err(LogError::OffsetTruncated { earliest, .. }) => {
                let fetched = FetchedRecords {
                    next_offset: earliest,
                    high_watermark: view.end_offset(queue_id),
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
        let moved = batch.next_offset > request.offset;
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
                next_offset: batch.next_offset.max(request.offset),
                high_watermark: batch.visible_end_offset,
                earliest_offset: shard.log.base_offset(queue_id),
                lost_offsets: &batch.lost_offsets,
                record_offsets: &record_offsets,
                reconsume_times: &reconsume_times,
            };
            return Ok((Kind::FetchResponse, protocol::fetch_response(None, &fetched)));
        }
        // Long poll on this queue alone: read again once its own end, as
        // consumers see it, passes the offset asked for (or at the
        // deadline, or shutdown).
        futures_lite::future::or(
            long_poll::queue_passes(&view, queue_id, request.offset, seen, || shard.shutting_down.get()),
            shard.clock.until(deadline),
        )
        .await;
    }
}

fn coordinated(shard: &Shard, group: &str, topic: &str) -> Result<u32, Failure> {
    let topic = shard.topic(topic)?;
    let coordinator = coordinator_shard(group, shard.shard_count);
    if coordinator != shard.id {
        return Err(Failure::not_owner(coordinator, format!("group {group} is coordinated by shard {coordinator}")));
    }
    Ok(topic.queue_shards.len() as u32)
}

async fn join_group(shard: &Shard, request: &requests::JoinGroup<'_>) -> Answer {
    let queue_count = coordinated(shard, request.group, request.topic)?;
    // Refused before its retry topic is made: a group the coordinator has no
    // room for leaves nothing behind.
    shard.coordinator.borrow_mut().admit_group(request.group, request.topic)?;
    // The group's consumers subscribe to its retry topic by themselves.
    if !request.topic.starts_with(INTERNAL_TOPIC_PREFIX) {
        shard.internal_topic(&retry_topic(request.group)).await?;
    }
    let joiner = Joiner {
        member_id: request.member_id,
        instance_id: request.instance_id,
        session_timeout_ms: request.session_timeout_ms,
    };
    let (assignment, rebalanced) =
        shard.coordinator.borrow_mut().join(request.group, request.topic, joiner, queue_count)?;
    // Answered only once every shard fences by the new assignment.
    if let Some(fence) = rebalanced {
        shard.announce_fence(fence).await;
    }
    Ok((Kind::JoinGroupResponse, protocol::group_assignment(None, &assignment)))
}

fn heartbeat(shard: &Shard, request: &GroupMember<'_>) -> Answer {
    coordinated(shard, request.group, request.topic)?;
    let assignment = shard.coordinator.borrow_mut().heartbeat(request.group, request.topic, request.member_id)?;
    Ok((Kind::HeartbeatResponse, protocol::group_assignment(None, &assignment)))
}

async fn leave_group(shard: &Shard, request: &GroupMember<'_>) -> Answer {
    coordinated(shard, request.group, request.topic)?;
    let rebalanced = shard.coordinator.borrow_mut().leave(request.group, request.topic, request.member_id);
    if let Some(fence) = rebalanced {
        shard.announce_fence(fence).await;
    }
    let assignment = protocol::Assignment { member_id: request.member_id.to_string(), ..Default::default() };
    Ok((Kind::LeaveGroupResponse, protocol::group_assignment(None, &assignment)))
}

async fn commit_offset(shard: &Shard, request: &requests::CommitOffset<'_>) -> Answer {
    let topic = shard.topic(request.topic)?;
    let queue_id = shard.owned_queue(&topic, request.queue)?;
    shard
        .offsets
        .borrow()
        .check_owner(request.group, request.topic, request.queue, request.member_id, request.generation)
        .map_err(|fenced| Failure::new(fb::ErrorCode::StaleGeneration, fenced.to_string()))?;
    // An offset past what readers can see would make the next owner skip
    // the messages in between once they arrive.
    let end = shard.log.visible_end_offset(queue_id);
    if request.offset > end {
        return Err(Failure::new(
            fb::ErrorCode::InvalidRequest,
            format!(
                "offset {} is past the end of queue {} of {} ({end}): a commit names the next offset to consume",
                request.offset, request.queue, request.topic
            ),
        ));
    }
    let commit = OffsetCommit {
        group: request.group.to_string(),
        topic: request.topic.to_string(),
        queue: request.queue,
        offset: request.offset,
        generation: request.generation,
    };
    store_commit(shard, &commit).await?;
    Ok((Kind::CommitOffsetResponse, protocol::offset_response(None, Some(commit.offset))))
}

/// Appends a commit durably (as `append_commit`), then applies it; in
/// sync mode answers once the standby holds it too (`confirm_change`).
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
    let end = appended.map_err(log_failure)?;
    shard.offsets.borrow_mut().apply(commit);
    // Applied before: it is durable here and kept whatever the standby says.
    release::confirm_change(shard, end, "offset commit").await;
    Ok(())
}

fn fetch_offset(shard: &Shard, request: &requests::FetchOffset<'_>) -> Answer {
    let topic = shard.topic(request.topic)?;
    shard.owned_queue(&topic, request.queue)?;
    let key = (request.group.to_string(), request.topic.to_string(), request.queue);
    let offset = shard.offsets.borrow().get(&key);
    Ok((Kind::FetchOffsetResponse, protocol::offset_response(None, offset)))
}

async fn end_transaction(shard: &Shard, request: &requests::EndTransaction<'_>) -> Answer {
    let topic = shard.topic(request.topic)?;
    let queue_id = shard.owned_queue(&topic, request.queue)?;
    let state = transactions::end(shard, queue_id, request.transaction_id, request.outcome).await?;
    let response = protocol::end_transaction_response(None, state.wire(), state.offset());
    Ok((Kind::EndTransactionResponse, response))
}

fn list_transactions(shard: &Shard, request: &requests::ListTransactions) -> Answer {
    let (listed, last) = shard.transactions.borrow().list(request.discarded, request.after);
    let next =
        last.map(|(settled, position)| page::keyed_cursor(if settled { "settled" } else { "pending" }, position));
    Ok((Kind::ListTransactionsResponse, protocol::list_transactions_response(None, &listed, next.as_deref())))
}

/// The connection becomes a live producer of the group: check-backs of the
/// group's halves on this shard may come on it.
fn register_producer(shard: &Shard, link: &Rc<ProducerLink>, producer_group: &str) -> Answer {
    shard.producer_links.borrow_mut().register(producer_group, link)?;
    Ok((Kind::RegisterProducerResponse, protocol::register_producer_response(None)))
}

async fn send_back(shard: &Shard, request: &requests::SendBack<'_>) -> Answer {
    let topic = shard.topic(request.topic)?;
    let queue_id = shard.owned_queue(&topic, request.queue)?;
    let sent = send_back::send_back(
        shard,
        request.group,
        queue_id,
        request.offset,
        request.max_reconsume_times,
        request.delay_level,
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

async fn resend_dead_letter(shard: &Shard, request: &requests::ResendDeadLetter<'_>) -> Answer {
    let resent =
        send_back::resend_dead_letter(shard, request.group, request.queue, request.offset, request.again).await?;
    let response =
        protocol::resend_dead_letter_response(None, resent.resent, &resent.original_topic, resent.original_queue);
    Ok((Kind::ResendDeadLetterResponse, response))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `handler` returns, without calling it.
    fn future_bytes<H, F>(_: H) -> usize
    where
        H: FnOnce(&'static Rc<Shard>, &'static Rc<ProducerLink>, Frame) -> F,
    {
        std::mem::size_of::<F>()
    }

    /// Every request in flight costs a future of this size (2,592 bytes
    /// before the large rare handlers were boxed, 1,320 after).
    const REQUEST_FUTURE_BYTES_MAX: usize = 1536;

    #[test]
    fn a_request_in_flight_stays_small() {
        let bytes = future_bytes(handle);
        assert!(bytes <= REQUEST_FUTURE_BYTES_MAX, "a request's future takes {bytes} bytes: box the arm that grew");
    }
}
