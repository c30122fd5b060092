//! What the operators' commands ask the broker (`ringmq status`, `group`,
//! `offset`, `message`): each request goes to the shard that knows the answer.

use super::pages::PageCursor;
use super::{fetched_messages, visit_records, Client, ClientError, ReceivedMessage};
use crate::constants::GROUP_OFFSETS_TOPICS_MAX;
use crate::protocol::{
    self, fb, retry_topic, verify, Failure, FetchParams, GroupSummary, Kind, MessageQuery, OffsetReset, Promoted,
    QueueOffsets, ShardStatus, INTERNAL_TOPIC_PREFIX,
};

fn broker_failure(outcome: Option<fb::Outcome<'_>>) -> Result<(), ClientError> {
    match Failure::from_outcome(outcome) {
        Some(failure) => Err(ClientError::Broker(failure)),
        None => Ok(()),
    }
}

/// The shard owning `queue` of `topic`.
fn queue_shard(client: &Client, topic: &str, queue: u32) -> Result<u32, ClientError> {
    let layout = client.topic(topic)?;
    layout.queue_shards.get(queue as usize).copied().ok_or_else(|| {
        ClientError::Usage(format!("topic {topic} has {} queues; no queue {queue}", layout.queue_shards.len()))
    })
}

/// Every shard's status, shard by shard.
pub fn shard_statuses(client: &Client) -> Result<Vec<ShardStatus>, ClientError> {
    let body = protocol::shard_status_request();
    let mut statuses = Vec::new();
    for shard in 0..client.shard_count() {
        let answer = client.call(shard, Kind::ShardStatusRequest, &body)?;
        let response = verify::<fb::ShardStatusResponse>(&answer).map_err(ClientError::Protocol)?;
        broker_failure(response.outcome())?;
        statuses.push(ShardStatus::read(&response));
    }
    Ok(statuses)
}

/// Promotes the broker to primary (shard 0 promotes every shard); `None`:
/// with its configured `replication`.
pub fn promote(client: &Client, replication: Option<fb::PromoteReplication>) -> Result<Promoted, ClientError> {
    let answer = client.call(0, Kind::PromoteRequest, &protocol::promote_request(replication))?;
    let response = verify::<fb::PromoteResponse>(&answer).map_err(ClientError::Protocol)?;
    broker_failure(response.outcome())?;
    Ok(Promoted::read(&response))
}

/// The groups every coordinator holds (only `group`'s, if given), by group
/// and topic, every page; and whether a coordinator cut its list (one that
/// does not page: an older broker).
pub fn list_groups(client: &Client, group: Option<&str>) -> Result<(Vec<GroupSummary>, bool), ClientError> {
    let shards: Vec<u32> = match group {
        Some(group) => vec![client.coordinator(group)],
        None => (0..client.shard_count()).collect(),
    };
    let (mut groups, mut truncated) = (Vec::new(), false);
    for shard in shards {
        let mut pages = PageCursor::default();
        let mut body = protocol::list_groups_request(group, None);
        loop {
            let answer = client.call(shard, Kind::ListGroupsRequest, &body)?;
            let response = verify::<fb::ListGroupsResponse>(&answer).map_err(ClientError::Protocol)?;
            broker_failure(response.outcome())?;
            groups.extend(response.groups().into_iter().flatten().map(|info| GroupSummary::read(&info)));
            let Some(after) = pages.next(response.next())? else {
                truncated |= response.truncated();
                break;
            };
            body = protocol::list_groups_request(group, Some(after));
        }
    }
    groups.sort_by(|left, right| (&left.group, &left.topic).cmp(&(&right.group, &right.topic)));
    Ok((groups, truncated))
}

/// One queue of a group as `ringmq group describe` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupQueue {
    pub offsets: QueueOffsets,
    /// The member owning the queue now, if any.
    pub member: Option<String>,
}

impl GroupQueue {
    /// Messages the group has yet to consume: from its committed offset
    /// (the earliest kept one if none or below it) to the end.
    pub fn lag(&self) -> u64 {
        let from = self.offsets.committed.unwrap_or(self.offsets.earliest).max(self.offsets.earliest);
        self.offsets.end.saturating_sub(from)
    }
}

/// Every queue of `group`: those of the topics its coordinator holds it on
/// and of its retry topic, and every queue it committed an offset on; with
/// the member owning each. Also whether a list was cut.
pub fn describe_group(client: &Client, group: &str) -> Result<(Vec<GroupQueue>, bool), ClientError> {
    client.refresh_metadata()?;
    let (held, mut truncated) = list_groups(client, Some(group))?;
    let mut topics: Vec<String> = held.iter().map(|summary| summary.topic.clone()).collect();
    let retry = retry_topic(group);
    if client.topic(&retry).is_ok() && !topics.contains(&retry) {
        topics.push(retry);
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut queues = Vec::new();
    // The topics in requests of at most GROUP_OFFSETS_TOPICS_MAX (one with
    // none if there are none); each answer also brings every queue the
    // group committed on, so a queue may come more than once.
    let mut requests: Vec<&[&str]> = names.chunks(GROUP_OFFSETS_TOPICS_MAX).collect();
    if requests.is_empty() {
        requests.push(&[]);
    }
    let mut seen = std::collections::BTreeSet::new();
    for topics in requests {
        for shard in 0..client.shard_count() {
            let mut pages = PageCursor::default();
            let mut body = protocol::group_offsets_request(group, topics, None);
            loop {
                let answer = client.call(shard, Kind::GroupOffsetsRequest, &body)?;
                let response = verify::<fb::GroupOffsetsResponse>(&answer).map_err(ClientError::Protocol)?;
                broker_failure(response.outcome())?;
                for offsets in response.queues().into_iter().flatten().map(|queue| QueueOffsets::read(&queue)) {
                    if !seen.insert((offsets.topic.clone(), offsets.queue)) {
                        continue;
                    }
                    let member = held
                        .iter()
                        .find(|summary| summary.topic == offsets.topic)
                        .and_then(|summary| summary.owner_of(offsets.queue))
                        .map(str::to_string);
                    queues.push(GroupQueue { offsets, member });
                }
                let Some(after) = pages.next(response.next())? else {
                    truncated |= response.truncated();
                    break;
                };
                body = protocol::group_offsets_request(group, topics, Some(after));
            }
        }
    }
    queues.sort_by(|left, right| {
        (&left.offsets.topic, left.offsets.queue).cmp(&(&right.offsets.topic, right.offsets.queue))
    });
    Ok((queues, truncated))
}

/// An operator's commit on one queue (see `ResetOffsetRequest`); the
/// offset committed.
pub fn reset_offset(client: &Client, reset: &OffsetReset) -> Result<u64, ClientError> {
    let shard = queue_shard(client, &reset.topic, reset.queue)?;
    let answer = client.call(shard, Kind::ResetOffsetRequest, &protocol::reset_offset_request(reset))?;
    let response = verify::<fb::QueueOffsetResponse>(&answer).map_err(ClientError::Protocol)?;
    broker_failure(response.outcome())?;
    Ok(response.offset())
}

/// The first offset of `queue` of `topic` stored at or after `time_ms`
/// (the queue's visible end if none).
pub fn offset_at_time(client: &Client, topic: &str, queue: u32, time_ms: u64) -> Result<u64, ClientError> {
    let shard = queue_shard(client, topic, queue)?;
    let answer =
        client.call(shard, Kind::OffsetAtTimeRequest, &protocol::offset_at_time_request(topic, queue, time_ms))?;
    let response = verify::<fb::QueueOffsetResponse>(&answer).map_err(ClientError::Protocol)?;
    broker_failure(response.outcome())?;
    Ok(response.offset())
}

/// Records one fetch of `find_message` asks for.
const SCAN_FETCH_COUNT: u32 = 1000;
const SCAN_FETCH_BYTES: u32 = 4 << 20;

/// The message with id `msg_id`, looked for without an index: every queue
/// of `topic` (or of every topic but the broker's own `%` ones), queue by
/// queue from its earliest kept offset to its visible end, `SCAN_FETCH_COUNT`
/// records a fetch, until found or `scan_max` records were read (then a
/// `Usage` error says so). `None`: no queue holds it.
pub fn find_message(
    client: &Client,
    msg_id: (u64, u64),
    topic: Option<&str>,
    scan_max: u64,
) -> Result<Option<ReceivedMessage>, ClientError> {
    let topics = match topic {
        Some(topic) => vec![client.topic(topic)?],
        None => {
            client.list_topics()?.into_iter().filter(|topic| !topic.name.starts_with(INTERNAL_TOPIC_PREFIX)).collect()
        }
    };
    let mut scanned = 0u64;
    for layout in &topics {
        for (queue, shard) in layout.queue_shards.iter().enumerate() {
            let mut offset = 0;
            loop {
                if scanned >= scan_max {
                    return Err(ClientError::Usage(format!(
                        "not found in the first {scanned} messages scanned (--scan-max); name the --topic to narrow the search"
                    )));
                }
                let params = FetchParams {
                    topic: layout.name.clone(),
                    queue: queue as u32,
                    offset,
                    max_count: SCAN_FETCH_COUNT,
                    max_bytes: SCAN_FETCH_BYTES,
                    ..FetchParams::default()
                };
                let body = client.call(*shard, Kind::FetchRequest, &protocol::fetch_request(&params))?;
                let response = verify::<fb::FetchResponse>(&body).map_err(ClientError::Protocol)?;
                let first = offset.max(response.earliest_offset());
                let (messages, _) = fetched_messages(&body, &response, &layout.name, queue as u32, first)?;
                scanned += messages.len() as u64;
                if let Some(found) = messages.into_iter().find(|message| message.msg_id == msg_id) {
                    return Ok(Some(found));
                }
                if response.next_offset() <= offset {
                    break;
                }
                offset = response.next_offset();
            }
        }
    }
    Ok(None)
}

/// The messages of `query.topic` carrying `query.key`, newest first (by
/// store time), at most `query.max_count`, from every shard's key index (a
/// topic's queues spread over the shards); and whether more may match (a
/// shard cut its answer, or the shards together found more than asked).
pub fn query_messages(client: &Client, query: &MessageQuery) -> Result<(Vec<ReceivedMessage>, bool), ClientError> {
    client.topic(&query.topic)?;
    let body = protocol::query_messages_request(query);
    let (mut messages, mut truncated) = (Vec::new(), false);
    for shard in 0..client.shard_count() {
        let answer = client.call(shard, Kind::QueryMessagesRequest, &body)?;
        let response = verify::<fb::QueryMessagesResponse>(&answer).map_err(ClientError::Protocol)?;
        broker_failure(response.outcome())?;
        truncated |= response.truncated();
        let records = response.records().map(|records| answer.slice_ref(records.bytes())).unwrap_or_default();
        let count = visit_records(&records, |header, verified| {
            let message = verified.message();
            messages.push(ReceivedMessage {
                topic: message.topic().to_string(),
                queue: message.queue(),
                offset: header.queue_offset,
                msg_id: verified.msg_id,
                key: message.keys().and_then(|keys| keys.iter().next().map(str::to_string)),
                tag: message.tags().map(str::to_string),
                body: message.body().map(|body| body.bytes().to_vec()).unwrap_or_default(),
                reconsume_times: 0,
                store_timestamp_us: header.store_timestamp_us,
                born_timestamp_us: message.born_timestamp_us(),
                original_topic: message.topic().to_string(),
                original_queue: message.queue(),
            });
        })?;
        if count != response.record_count() {
            return Err(ClientError::Protocol(format!(
                "a message query answer said {} records, carried {count}",
                response.record_count()
            )));
        }
    }
    messages.sort_by_key(|message| std::cmp::Reverse(message.store_timestamp_us));
    let max = match query.max_count {
        0 => usize::MAX,
        max => max as usize,
    };
    if messages.len() > max {
        messages.truncate(max);
        truncated = true;
    }
    Ok((messages, truncated))
}
