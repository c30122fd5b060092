//! The consumer: a member of a group. It joins through the group's
//! coordinator shard, long-polls the queues assigned to it straight from the
//! shards that own them, and commits an offset only when told to, after the
//! application handled the messages before it (at-least-once).

use super::{expect_kind, Client, ClientError};
use crate::constants::RECORD_HEADER_SIZE_BYTES;
use crate::protocol::{self, fb, verify, Assignment, FetchParams, Frame, Kind};
use crate::storage::record::{self, Decoded};
use crate::wire::{verify_message, VerifiedMessage};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    pub session_timeout_ms: u32,
    /// Long poll: how long a poll waits for new messages.
    pub max_wait: Duration,
    pub max_count: u32,
    pub max_bytes: u32,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self { session_timeout_ms: 10_000, max_wait: Duration::from_millis(500), max_count: 256, max_bytes: 1 << 20 }
    }
}

/// A message as the consumer hands it to the application.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    pub queue: u32,
    pub offset: u64,
    pub msg_id: (u64, u64),
    pub key: Option<String>,
    pub tag: Option<String>,
    pub body: Vec<u8>,
    pub reconsume_times: u32,
    pub store_timestamp_us: u64,
    pub born_timestamp_us: u64,
}

impl ReceivedMessage {
    pub fn msg_id_hex(&self) -> String {
        format!("{:016x}{:016x}", self.msg_id.0, self.msg_id.1)
    }
}

/// Walks a fetch answer's records, checking each one's CRC again and
/// verifying its message, and hands each to `visit`; returns how many.
pub fn visit_records(
    records: &Bytes,
    mut visit: impl FnMut(&record::RecordHeader, &VerifiedMessage),
) -> Result<u32, ClientError> {
    let mut count = 0;
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        let length = record::claimed_length(rest)
            .ok_or_else(|| ClientError::Protocol("a fetched record has no header".into()))?;
        let header = match record::decode(rest.get(..length).unwrap_or(rest)) {
            Decoded::Valid(header) => header,
            other => return Err(ClientError::Protocol(format!("a fetched record is damaged: {other:?}"))),
        };
        let message_bytes = records.slice(at + RECORD_HEADER_SIZE_BYTES..at + length);
        let verified = verify_message(message_bytes).map_err(|error| ClientError::Protocol(error.to_string()))?;
        visit(&header, &verified);
        count += 1;
        at += length;
    }
    Ok(count)
}

/// What a fetch answer says about the offsets it covers: from the offset
/// asked for up to `next_offset`, every offset is either a record (in
/// order) or listed lost (`ringmq repair` marked it).
#[derive(Clone, Copy, Debug)]
pub struct FetchedRange<'a> {
    pub queue: u32,
    pub first_offset: u64,
    pub next_offset: u64,
    pub lost_offsets: &'a [u64],
}

/// Splits a fetch answer's records into messages (see `visit_records`),
/// giving each the next offset of the range that is not lost. The queue's
/// own offsets are not read from the record headers: a committed
/// transactional message is the half record itself, read through a
/// reference, whose header carries no offset of the queue.
pub fn parse_records(
    range: FetchedRange<'_>,
    records: &Bytes,
    count: u32,
) -> Result<Vec<ReceivedMessage>, ClientError> {
    let covered = range.next_offset.saturating_sub(range.first_offset);
    if u64::from(count) + range.lost_offsets.len() as u64 != covered && count > 0 {
        return Err(ClientError::Protocol(format!(
            "a fetch of queue {} covers offsets {}..{} with {count} records and {} lost",
            range.queue,
            range.first_offset,
            range.next_offset,
            range.lost_offsets.len()
        )));
    }
    let mut offsets = (range.first_offset..range.next_offset).filter(|offset| !range.lost_offsets.contains(offset));
    let mut messages = Vec::with_capacity(count as usize);
    visit_records(records, |header, verified| {
        let message = verified.message();
        messages.push(ReceivedMessage {
            queue: range.queue,
            offset: offsets.next().unwrap_or(range.next_offset),
            msg_id: verified.msg_id,
            key: message.keys().and_then(|keys| keys.iter().next().map(str::to_string)),
            tag: message.tags().map(str::to_string),
            body: message.body().map(|body| body.bytes().to_vec()).unwrap_or_default(),
            reconsume_times: 0,
            store_timestamp_us: header.store_timestamp_us,
            born_timestamp_us: message.born_timestamp_us(),
        });
    })?;
    if messages.len() != count as usize {
        return Err(ClientError::Protocol(format!("fetch said {count} records, carried {}", messages.len())));
    }
    Ok(messages)
}

pub struct Consumer {
    client: Arc<Client>,
    group: String,
    topic: String,
    options: ConsumerOptions,
    assignment: Assignment,
    /// Next offset to fetch, per assigned queue.
    positions: BTreeMap<u32, u64>,
    /// (queue, offset) that `ringmq repair` marked lost, met since the
    /// application last took them.
    lost: Vec<(u32, u64)>,
    last_heartbeat: Instant,
}

impl Consumer {
    pub fn join(client: Arc<Client>, group: &str, topic: &str, options: ConsumerOptions) -> Result<Self, ClientError> {
        client.topic(topic)?;
        let mut consumer = Self {
            client,
            group: group.to_string(),
            topic: topic.to_string(),
            options,
            assignment: Assignment::default(),
            positions: BTreeMap::new(),
            lost: Vec::new(),
            last_heartbeat: Instant::now(),
        };
        consumer.rejoin()?;
        Ok(consumer)
    }

    pub fn assigned_queues(&self) -> &[u32] {
        &self.assignment.queues
    }

    pub fn generation(&self) -> u64 {
        self.assignment.generation
    }

    fn coordinator_call(&self, request: Kind, body: &[u8]) -> Result<Bytes, ClientError> {
        let result = self.client.call(self.client.coordinator(&self.group), request, body);
        if let Err(ClientError::Broker(failure)) = &result {
            if failure.code == fb::ErrorCode::NotOwner {
                self.client.refresh_metadata()?;
                return self.client.call(self.client.coordinator(&self.group), request, body);
            }
        }
        result
    }

    fn rejoin(&mut self) -> Result<(), ClientError> {
        let body = protocol::join_group_request(
            &self.group,
            &self.topic,
            &self.assignment.member_id,
            "",
            self.options.session_timeout_ms,
        );
        let answer = self.coordinator_call(Kind::JoinGroupRequest, &body)?;
        let assignment = verify::<fb::GroupAssignment>(&answer).map_err(ClientError::Protocol)?;
        self.apply(protocol::read_assignment(assignment))
    }

    fn heartbeat(&mut self) -> Result<(), ClientError> {
        self.last_heartbeat = Instant::now();
        let body = protocol::heartbeat_request(&self.group, &self.topic, &self.assignment.member_id);
        match self.coordinator_call(Kind::HeartbeatRequest, &body) {
            Ok(answer) => {
                let assignment = verify::<fb::GroupAssignment>(&answer).map_err(ClientError::Protocol)?;
                self.apply(protocol::read_assignment(assignment))
            }
            Err(error) if error.code() == Some(fb::ErrorCode::UnknownMember) => {
                self.assignment.member_id.clear();
                self.rejoin()
            }
            Err(error) => Err(error),
        }
    }

    /// Takes a (new) assignment: queues gained start at the group's committed
    /// offset, or at the start of the queue.
    fn apply(&mut self, assignment: Assignment) -> Result<(), ClientError> {
        if assignment.generation != self.assignment.generation {
            tracing::info!(group = %self.group, generation = assignment.generation, queues = ?assignment.queues, "assignment");
        }
        self.positions.retain(|queue, _| assignment.queues.contains(queue));
        for queue in &assignment.queues {
            if !self.positions.contains_key(queue) {
                let offset = self.committed_offset(*queue)?.unwrap_or(0);
                self.positions.insert(*queue, offset);
            }
        }
        self.assignment = assignment;
        Ok(())
    }

    fn queue_shard(&self, queue: u32) -> Result<u32, ClientError> {
        let topic = self.client.topic(&self.topic)?;
        topic.queue_shards.get(queue as usize).copied().ok_or_else(|| ClientError::Usage(format!("no queue {queue}")))
    }

    /// The group's committed offset of `queue`.
    pub fn committed_offset(&self, queue: u32) -> Result<Option<u64>, ClientError> {
        let body = protocol::fetch_offset_request(&self.group, &self.topic, queue);
        let answer = self.client.call(self.queue_shard(queue)?, Kind::FetchOffsetRequest, &body)?;
        let response = verify::<fb::OffsetResponse>(&answer).map_err(ClientError::Protocol)?;
        Ok(u64::try_from(response.offset()).ok())
    }

    /// Commits `next_offset` (the offset after the last handled message).
    pub fn commit(&mut self, queue: u32, next_offset: u64) -> Result<(), ClientError> {
        let body = protocol::commit_offset_request(
            &self.group,
            &self.topic,
            queue,
            next_offset,
            self.assignment.generation,
            &self.assignment.member_id,
        );
        match self.client.call(self.queue_shard(queue)?, Kind::CommitOffsetRequest, &body) {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some(fb::ErrorCode::StaleGeneration) => {
                // The group rebalanced: pick up the new assignment; the queue's
                // new owner re-reads from the last commit that counted.
                self.heartbeat()?;
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// Waits up to `max_wait` for messages on the assigned queues. A broker
    /// that is restarting (refused or reset connections, timeouts) is
    /// waited out: the poll pauses and returns nothing, and the next one
    /// reconnects, rejoining the group if the coordinator forgot it.
    pub fn poll(&mut self) -> Result<Vec<ReceivedMessage>, ClientError> {
        match self.poll_once() {
            Err(error) if error.is_unreachable() => {
                tracing::warn!(%error, "the broker is unreachable; polling again shortly");
                std::thread::sleep(self.options.max_wait.max(Duration::from_millis(100)));
                if let Err(error) = self.client.refresh_metadata() {
                    tracing::debug!(%error, "metadata refresh failed");
                }
                Ok(Vec::new())
            }
            other => other,
        }
    }

    fn poll_once(&mut self) -> Result<Vec<ReceivedMessage>, ClientError> {
        let interval = Duration::from_millis(u64::from(self.assignment.heartbeat_interval_ms.max(100)));
        if self.last_heartbeat.elapsed() >= interval {
            self.heartbeat()?;
        }
        if self.positions.is_empty() {
            std::thread::sleep(self.options.max_wait);
            return Ok(Vec::new());
        }
        let (sender, answers) = mpsc::channel::<(u32, u64, Result<Frame, ClientError>)>();
        let mut in_flight = Vec::new();
        for (queue, offset) in &self.positions {
            let params = FetchParams {
                topic: self.topic.clone(),
                queue: *queue,
                offset: *offset,
                max_count: self.options.max_count,
                max_bytes: self.options.max_bytes,
                max_wait_ms: self.options.max_wait.as_millis() as u32,
            };
            let connection = self.client.connection(self.queue_shard(*queue)?)?;
            let (sender, queue, offset) = (sender.clone(), *queue, *offset);
            let deliver = Box::new(move |result| {
                let _ = sender.send((queue, offset, result));
            });
            let request_id =
                connection.send_with(Kind::FetchRequest as u16, &protocol::fetch_request(&params), deliver)?;
            in_flight.push((connection, request_id));
        }
        drop(sender);
        let deadline = Instant::now() + self.options.max_wait + self.client.timeout();
        let mut messages = Vec::new();
        let mut failure = None;
        let mut answered = 0;
        while answered < in_flight.len() {
            // Once something arrived, take only what is already there.
            let wait =
                if messages.is_empty() { deadline.saturating_duration_since(Instant::now()) } else { Duration::ZERO };
            let Ok((queue, offset, result)) = answers.recv_timeout(wait) else { break };
            answered += 1;
            // One queue's failure must not drop what other queues delivered
            // (their positions already moved past it).
            match self.take_fetch(queue, offset, result) {
                Ok(fetched) => messages.extend(fetched),
                Err(error) => {
                    tracing::warn!(%error, queue, "fetch failed");
                    failure.get_or_insert(error);
                }
            }
        }
        for (connection, request_id) in in_flight {
            connection.forget(request_id);
        }
        match failure {
            Some(error) if messages.is_empty() => Err(error),
            _ => Ok(messages),
        }
    }

    fn take_fetch(
        &mut self,
        queue: u32,
        offset: u64,
        result: Result<Frame, ClientError>,
    ) -> Result<Vec<ReceivedMessage>, ClientError> {
        let body = match result.and_then(|frame| expect_kind(frame, Kind::FetchResponse)) {
            Ok(body) => body,
            Err(error) if error.is_retryable() => {
                tracing::debug!(%error, queue, "fetch failed; will retry");
                let _ = self.client.refresh_metadata();
                return Ok(Vec::new());
            }
            Err(error) => return Err(error),
        };
        let response = verify::<fb::FetchResponse>(&body).map_err(ClientError::Protocol)?;
        let records = response.records().map(|records| body.slice_ref(records.bytes())).unwrap_or_default();
        let mut first = offset;
        if response.high_watermark() < offset && response.record_count() == 0 {
            // The broker's queue ends before our position (its log lost an
            // unsynced tail, async flush): read again from where it ends.
            tracing::warn!(
                queue,
                position = offset,
                end = response.high_watermark(),
                "the queue is shorter than our position; rewinding"
            );
            if self.positions.get(&queue) == Some(&offset) {
                self.positions.insert(queue, response.high_watermark());
            }
            return Ok(Vec::new());
        }
        let lost_only = response.lost_offsets().is_some_and(|lost| !lost.is_empty());
        if response.next_offset() > offset && response.record_count() == 0 && !lost_only {
            tracing::warn!(
                queue,
                from = offset,
                to = response.next_offset(),
                "offsets were deleted by retention; skipping ahead"
            );
            first = response.next_offset();
        }
        let lost: Vec<u64> = response.lost_offsets().map(|lost| lost.iter().collect()).unwrap_or_default();
        let range =
            FetchedRange { queue, first_offset: first, next_offset: response.next_offset(), lost_offsets: &lost };
        let messages = parse_records(range, &records, response.record_count())?;
        for offset in lost {
            tracing::warn!(queue, offset, "skipped an offset lost to damage (ringmq repair)");
            self.lost.push((queue, offset));
        }
        if self.positions.get(&queue) == Some(&offset) {
            self.positions.insert(queue, response.next_offset().max(first));
        }
        Ok(messages)
    }

    /// Polls once and hands each message to `handler`, queue by queue in
    /// offset order. A queue's offset is committed up to the last message the
    /// handler accepted; after a refusal the rest of that queue's batch is
    /// left, and the refused message comes again (at-least-once). Returns
    /// how many messages were handled.
    pub fn handle_next<E>(
        &mut self,
        mut handler: impl FnMut(&ReceivedMessage) -> Result<(), E>,
    ) -> Result<usize, ClientError> {
        let messages = self.poll()?;
        let mut by_queue: BTreeMap<u32, Vec<ReceivedMessage>> = BTreeMap::new();
        for message in messages {
            by_queue.entry(message.queue).or_default().push(message);
        }
        let mut handled = 0;
        let mut failure = None;
        for (queue, messages) in by_queue {
            let mut next_offset = None;
            for message in &messages {
                if handler(message).is_err() {
                    // Fetch again from the refused message.
                    self.positions.insert(queue, message.offset);
                    break;
                }
                next_offset = Some(message.offset + 1);
                handled += 1;
            }
            // A failed commit (a rebalance, say) must not keep the other
            // queues' messages from the handler: they were fetched already.
            if let Some(next_offset) = next_offset {
                if let Err(error) = self.commit(queue, next_offset) {
                    failure.get_or_insert(error);
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(handled),
        }
    }

    /// The (queue, offset) pairs skipped since the last call because
    /// `ringmq repair` marked them lost: messages that will never come.
    pub fn take_lost_offsets(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.lost)
    }

    /// Leaves the group, handing its queues to the other members now.
    pub fn leave(self) -> Result<(), ClientError> {
        let body = protocol::leave_group_request(&self.group, &self.topic, &self.assignment.member_id);
        self.coordinator_call(Kind::LeaveGroupRequest, &body).map(|_| ())
    }
}
