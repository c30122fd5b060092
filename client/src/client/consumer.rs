//! The consumer: a member of a group. It joins through the group's
//! coordinator shard, long-polls the queues assigned to it straight from the
//! shards that own them, and commits an offset only when told to, after the
//! application handled the messages before it (at-least-once).

use super::{expect_kind, Client, ClientError, Connection};
use crate::constants::RECORD_HEADER_SIZE_BYTES;
use crate::protocol::{self, fb, verify, Assignment, FetchParams, Frame, Kind};
use crate::wire::record::{self, Decoded};
use crate::wire::{verify_message, VerifiedMessage};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where a queue the group never committed starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OffsetReset {
    /// At the first message retention kept.
    #[default]
    Earliest,
    /// At the queue's end when the consumer gets the queue: only messages
    /// produced after that.
    Latest,
}

impl std::str::FromStr for OffsetReset {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "earliest" => Ok(OffsetReset::Earliest),
            "latest" => Ok(OffsetReset::Latest),
            other => Err(format!("{other:?} is not an offset reset policy: earliest or latest")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    pub session_timeout_ms: u32,
    /// Long poll: how long a poll waits for new messages.
    pub max_wait: Duration,
    pub max_count: u32,
    pub max_bytes: u32,
    /// Tags to receive (the broker filters by tag hash, the client checks
    /// the tag again); empty: every message.
    pub tags: Vec<String>,
    /// Static membership (Kafka's `group.instance.id`): a consumer that joins
    /// again with the instance id of a member the coordinator still holds
    /// (a restart within the session timeout) gets that member back, with
    /// its queues and no rebalance. `None`: a new member on every join.
    pub instance_id: Option<String>,
    /// Where a queue without a committed offset starts.
    pub offset_reset: OffsetReset,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            session_timeout_ms: 10_000,
            max_wait: Duration::from_millis(500),
            max_count: 256,
            max_bytes: 1 << 20,
            tags: Vec::new(),
            instance_id: None,
            offset_reset: OffsetReset::Earliest,
        }
    }
}

/// Parses a subscription expression as RocketMQ writes it: `"a || b"`, or
/// `*` (or nothing) for every tag.
pub fn parse_tags(expression: &str) -> Vec<String> {
    let tags: Vec<String> =
        expression.split("||").map(str::trim).filter(|tag| !tag.is_empty()).map(str::to_string).collect();
    if tags.iter().any(|tag| tag == "*") {
        return Vec::new();
    }
    tags
}

/// Told when the consumer's queues change, on the thread that polls, before
/// the poll fetches from the new assignment: `revoked` first (commit what
/// was handled of them; another member may already own them), then
/// `assigned`. Each gets only the queues that changed.
pub trait RebalanceListener: Send {
    fn revoked(&mut self, _queues: &[u32]) {}
    fn assigned(&mut self, _queues: &[u32]) {}
}

/// A message as the consumer hands it to the application.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// The topic it was fetched from: the subscribed one, or the group's
    /// retry topic for a retried message.
    pub topic: String,
    /// The queue and offset it was fetched at (commit and send back these).
    pub queue: u32,
    pub offset: u64,
    pub msg_id: (u64, u64),
    pub key: Option<String>,
    pub tag: Option<String>,
    pub body: Vec<u8>,
    /// Deliveries before this one (a retried message has one more each time).
    pub reconsume_times: u32,
    pub store_timestamp_us: u64,
    pub born_timestamp_us: u64,
    /// Where the producer sent it: differs from `topic`/`queue` for a
    /// retried message.
    pub original_topic: String,
    pub original_queue: u32,
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
    pub topic: &'a str,
    pub queue: u32,
    pub first_offset: u64,
    pub next_offset: u64,
    pub lost_offsets: &'a [u64],
    /// Each record's offset when the broker said (a tag filter leaves holes
    /// in the range); empty: numbered from the range.
    pub record_offsets: &'a [u64],
    /// Each record's deliveries before this one; empty: all 0.
    pub reconsume_times: &'a [u32],
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
    let numbered = !range.record_offsets.is_empty();
    if numbered && range.record_offsets.len() != count as usize {
        return Err(ClientError::Protocol(format!(
            "a fetch of queue {} gave {} offsets for {count} records",
            range.queue,
            range.record_offsets.len()
        )));
    }
    if !numbered && u64::from(count) + range.lost_offsets.len() as u64 != covered && count > 0 {
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
        let index = messages.len();
        let counted = offsets.next().unwrap_or(range.next_offset);
        messages.push(ReceivedMessage {
            topic: range.topic.to_string(),
            queue: range.queue,
            offset: range.record_offsets.get(index).copied().unwrap_or(counted),
            msg_id: verified.msg_id,
            key: message.keys().and_then(|keys| keys.iter().next().map(str::to_string)),
            tag: message.tags().map(str::to_string),
            body: message.body().map(|body| body.bytes().to_vec()).unwrap_or_default(),
            reconsume_times: range.reconsume_times.get(index).copied().unwrap_or(0),
            store_timestamp_us: header.store_timestamp_us,
            born_timestamp_us: message.born_timestamp_us(),
            original_topic: message.topic().to_string(),
            original_queue: message.queue(),
        });
    })?;
    if messages.len() != count as usize {
        return Err(ClientError::Protocol(format!("fetch said {count} records, carried {}", messages.len())));
    }
    Ok(messages)
}

/// The group membership a consumer shares with its heartbeat thread: the
/// newest assignment the coordinator gave, and the calls that change it
/// (one at a time, so two threads never both join as new members).
struct Membership {
    client: Arc<Client>,
    group: String,
    topic: String,
    instance_id: String,
    session_timeout_ms: u32,
    latest: Mutex<Assignment>,
    /// Held for a coordinator call and the update of `latest` after it.
    calls: Mutex<()>,
    stopped: Mutex<bool>,
    stop: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is a plain value, consistent after a panic elsewhere.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Membership {
    fn latest(&self) -> Assignment {
        lock(&self.latest).clone()
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

    fn take(&self, answer: &Bytes) -> Result<Assignment, ClientError> {
        let assignment =
            protocol::read_assignment(verify::<fb::GroupAssignment>(answer).map_err(ClientError::Protocol)?);
        lock(&self.latest).clone_from(&assignment);
        Ok(assignment)
    }

    /// Joins with the member id it has (a static member: with its instance
    /// id, which the coordinator knows it by).
    fn join(&self) -> Result<Assignment, ClientError> {
        let _call = lock(&self.calls);
        let member_id = lock(&self.latest).member_id.clone();
        let body = protocol::join_group_request(
            &self.group,
            &self.topic,
            &member_id,
            &self.instance_id,
            self.session_timeout_ms,
        );
        let answer = self.coordinator_call(Kind::JoinGroupRequest, &body)?;
        self.take(&answer)
    }

    /// A heartbeat; a coordinator that forgot the member (its session
    /// expired, or the broker restarted) is joined again, as a new member.
    fn heartbeat(&self) -> Result<Assignment, ClientError> {
        let call = lock(&self.calls);
        let member_id = lock(&self.latest).member_id.clone();
        let body = protocol::heartbeat_request(&self.group, &self.topic, &member_id);
        match self.coordinator_call(Kind::HeartbeatRequest, &body) {
            Ok(answer) => self.take(&answer),
            Err(error) if error.code() == Some(fb::ErrorCode::UnknownMember) => {
                lock(&self.latest).member_id.clear();
                drop(call);
                self.join()
            }
            Err(error) => Err(error),
        }
    }

    fn leave(&self) -> Result<(), ClientError> {
        let _call = lock(&self.calls);
        let member_id = lock(&self.latest).member_id.clone();
        let body = protocol::leave_group_request(&self.group, &self.topic, &member_id);
        self.coordinator_call(Kind::LeaveGroupRequest, &body).map(|_| ())
    }

    /// Stops the heartbeat thread (it ends within one request timeout).
    fn stop(&self) {
        *lock(&self.stopped) = true;
        self.stop.notify_all();
    }

    /// The heartbeat thread: a heartbeat every interval the coordinator
    /// asked for, whatever the application does between polls; failures
    /// are retried on the next beat.
    fn beat(self: Arc<Self>) {
        loop {
            let interval = Duration::from_millis(u64::from(self.latest().heartbeat_interval_ms.max(100)));
            let stopped = lock(&self.stopped);
            let (stopped, _) = self
                .stop
                .wait_timeout_while(stopped, interval, |stopped| !*stopped)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *stopped {
                return;
            }
            drop(stopped);
            if let Err(error) = self.heartbeat() {
                tracing::debug!(%error, group = %self.group, "heartbeat failed; trying again at the next beat");
            }
        }
    }
}

/// A fetch long-polling at the broker. At most one per queue is in flight;
/// one a poll did not wait for stays for the next poll, so no poll leaves
/// long polls behind at the broker that nobody reads.
struct InFlightFetch {
    /// The consumer's own number for it: an answer names the fetch it
    /// answers.
    fetch_id: u64,
    offset: u64,
    connection: Arc<Connection>,
    request_id: u32,
    sent: Instant,
}

type FetchAnswer = (u64, u32, Result<Frame, ClientError>);

/// A member of a group. A background thread sends its heartbeats; polls
/// pick up what they brought. `leave` hands its queues to the other
/// members at once; a consumer dropped without `leave` is, to the group, a
/// member that died: its queues move when its session expires (a static
/// member that comes back first gets them back).
/// The messages of a verified fetch answer (`response`, read from `body`) of
/// `queue` of `topic`, the range numbered from `first_offset` (see
/// `parse_records`), and the offsets it reports lost.
pub fn fetched_messages(
    body: &Bytes,
    response: &fb::FetchResponse<'_>,
    topic: &str,
    queue: u32,
    first_offset: u64,
) -> Result<(Vec<ReceivedMessage>, Vec<u64>), ClientError> {
    let records = response.records().map(|records| body.slice_ref(records.bytes())).unwrap_or_default();
    let lost: Vec<u64> = response.lost_offsets().map(|lost| lost.iter().collect()).unwrap_or_default();
    let record_offsets: Vec<u64> =
        response.record_offsets().map(|offsets| offsets.iter().collect()).unwrap_or_default();
    let reconsume_times: Vec<u32> = response.reconsume_times().map(|times| times.iter().collect()).unwrap_or_default();
    let range = FetchedRange {
        topic,
        queue,
        first_offset,
        next_offset: response.next_offset(),
        lost_offsets: &lost,
        record_offsets: &record_offsets,
        reconsume_times: &reconsume_times,
    };
    let messages = parse_records(range, &records, response.record_count())?;
    Ok((messages, lost))
}

pub struct Consumer {
    client: Arc<Client>,
    group: String,
    topic: String,
    options: ConsumerOptions,
    membership: Arc<Membership>,
    heartbeats: Option<std::thread::JoinHandle<()>>,
    /// The assignment the positions and commits follow (the membership's
    /// latest may be newer until the next poll takes it).
    assignment: Assignment,
    listener: Option<Box<dyn RebalanceListener>>,
    /// Next offset to fetch, per assigned queue.
    positions: BTreeMap<u32, u64>,
    fetches: BTreeMap<u32, InFlightFetch>,
    next_fetch_id: u64,
    answers_sender: mpsc::Sender<FetchAnswer>,
    answers: mpsc::Receiver<FetchAnswer>,
    /// (queue, offset) that `ringmq repair` marked lost, met since the
    /// application last took them.
    lost: Vec<(u32, u64)>,
    /// Per queue, where a fetch that gave no message moved the position (a
    /// tag filter passed over records): `handle_next` commits it, so the
    /// group's offset does not stay behind records it will never take.
    passed_over: BTreeMap<u32, u64>,
}

impl Consumer {
    pub fn join(client: Arc<Client>, group: &str, topic: &str, options: ConsumerOptions) -> Result<Self, ClientError> {
        Self::join_with_listener(client, group, topic, options, None)
    }

    /// Joins with a listener told of every change of the queues, the first
    /// assignment included.
    pub fn join_with_listener(
        client: Arc<Client>,
        group: &str,
        topic: &str,
        options: ConsumerOptions,
        listener: Option<Box<dyn RebalanceListener>>,
    ) -> Result<Self, ClientError> {
        client.topic(topic)?;
        let membership = Arc::new(Membership {
            client: client.clone(),
            group: group.to_string(),
            topic: topic.to_string(),
            instance_id: options.instance_id.clone().unwrap_or_default(),
            session_timeout_ms: options.session_timeout_ms,
            latest: Mutex::new(Assignment::default()),
            calls: Mutex::new(()),
            stopped: Mutex::new(false),
            stop: Condvar::new(),
        });
        let assignment = membership.join()?;
        let (answers_sender, answers) = mpsc::channel();
        let mut consumer = Self {
            client,
            group: group.to_string(),
            topic: topic.to_string(),
            options,
            membership: membership.clone(),
            heartbeats: None,
            assignment: Assignment::default(),
            listener,
            positions: BTreeMap::new(),
            fetches: BTreeMap::new(),
            next_fetch_id: 0,
            answers_sender,
            answers,
            lost: Vec::new(),
            passed_over: BTreeMap::new(),
        };
        if let Err(error) = consumer.apply(assignment) {
            // Not a member anyone will poll for: hand its queues back.
            let _ = membership.leave();
            return Err(error);
        }
        let heartbeats = std::thread::Builder::new()
            .name(format!("ringmq-heartbeat-{group}"))
            .spawn(move || membership.beat())
            .map_err(|error| ClientError::Usage(format!("cannot start the heartbeat thread: {error}")))?;
        consumer.heartbeats = Some(heartbeats);
        Ok(consumer)
    }

    pub fn assigned_queues(&self) -> &[u32] {
        &self.assignment.queues
    }

    pub fn generation(&self) -> u64 {
        self.assignment.generation
    }

    pub fn member_id(&self) -> &str {
        &self.assignment.member_id
    }

    /// Takes the newest assignment the heartbeats brought, if it changed.
    fn follow_membership(&mut self) -> Result<(), ClientError> {
        let latest = self.membership.latest();
        if latest != self.assignment {
            self.apply(latest)?;
        }
        Ok(())
    }

    /// Takes a (new) assignment: queues kept keep their position; queues
    /// gained start at the group's committed offset, or where the reset
    /// policy says. The listener hears of the change before any fetch.
    fn apply(&mut self, assignment: Assignment) -> Result<(), ClientError> {
        if assignment.generation != self.assignment.generation {
            tracing::info!(group = %self.group, generation = assignment.generation, queues = ?assignment.queues, "assignment");
        }
        let revoked: Vec<u32> =
            self.positions.keys().copied().filter(|queue| !assignment.queues.contains(queue)).collect();
        let mut gained = BTreeMap::new();
        for queue in &assignment.queues {
            if !self.positions.contains_key(queue) {
                let offset = match self.committed_offset(*queue)? {
                    Some(offset) => offset,
                    None => self.reset_offset(*queue)?,
                };
                gained.insert(*queue, offset);
            }
        }
        self.positions.retain(|queue, _| assignment.queues.contains(queue));
        let assigned: Vec<u32> = gained.keys().copied().collect();
        self.positions.extend(gained);
        self.assignment = assignment;
        if let Some(listener) = self.listener.as_mut() {
            if !revoked.is_empty() {
                listener.revoked(&revoked);
            }
            if !assigned.is_empty() {
                listener.assigned(&assigned);
            }
        }
        Ok(())
    }

    /// Where a queue the group never committed starts.
    fn reset_offset(&self, queue: u32) -> Result<u64, ClientError> {
        match self.options.offset_reset {
            // Below the queue's start, the first fetch moves to it.
            OffsetReset::Earliest => Ok(0),
            OffsetReset::Latest => {
                let params = FetchParams {
                    topic: self.topic.clone(),
                    queue,
                    offset: 0,
                    max_count: 1,
                    max_bytes: 1,
                    max_wait_ms: 0,
                    ..FetchParams::default()
                };
                let answer = self.client.call(
                    self.queue_shard(queue)?,
                    Kind::FetchRequest,
                    &protocol::fetch_request(&params),
                )?;
                let response = verify::<fb::FetchResponse>(&answer).map_err(ClientError::Protocol)?;
                Ok(response.high_watermark())
            }
        }
    }

    /// Fetches `queue` from `offset` on: the next poll returns the message
    /// at `offset` first. Only for a queue this consumer holds; a rebalance
    /// that takes the queue away forgets it.
    pub fn seek(&mut self, queue: u32, offset: u64) -> Result<(), ClientError> {
        match self.positions.get_mut(&queue) {
            Some(position) => {
                *position = offset;
                Ok(())
            }
            None => Err(ClientError::Usage(format!(
                "queue {queue} is not assigned to this consumer (it holds {:?})",
                self.assignment.queues
            ))),
        }
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

    /// Commits `next_offset` (the offset after the last handled message) as
    /// the member that holds `queue`. The broker refuses it
    /// (`StaleGeneration`) if the queue is another member's now, or if it
    /// forgot the group (a restart): the consumer then takes the newest
    /// assignment (joining again if need be) and returns the refusal; the
    /// queue's owner reads again from the last commit that counted.
    pub fn commit(&mut self, queue: u32, next_offset: u64) -> Result<(), ClientError> {
        // A generation the heartbeats brought in which the queue is still
        // ours is the one the broker fences by.
        self.follow_membership()?;
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
                let assignment = self.membership.heartbeat()?;
                self.apply(assignment)?;
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

    /// Sends a long poll for every assigned queue that has none in flight.
    fn launch_fetches(&mut self) -> Result<(), ClientError> {
        // A fetch the broker never answered (well past its wait and the
        // request timeout) is given up, so its queue is fetched again.
        let stuck_after = self.options.max_wait + self.client.timeout();
        self.fetches.retain(|_, fetch| {
            let stuck = fetch.sent.elapsed() > stuck_after;
            if stuck {
                fetch.connection.forget(fetch.request_id);
            }
            !stuck
        });
        let wanted: Vec<(u32, u64)> = self
            .positions
            .iter()
            .filter(|(queue, _)| !self.fetches.contains_key(queue))
            .map(|(queue, offset)| (*queue, *offset))
            .collect();
        for (queue, offset) in wanted {
            let params = FetchParams {
                topic: self.topic.clone(),
                queue,
                offset,
                max_count: self.options.max_count,
                max_bytes: self.options.max_bytes,
                max_wait_ms: self.options.max_wait.as_millis() as u32,
                tag_hashes: self.options.tags.iter().map(|tag| crate::wire::tag_hash(tag)).collect(),
            };
            let connection = self.client.connection(self.queue_shard(queue)?)?;
            let fetch_id = self.next_fetch_id;
            self.next_fetch_id += 1;
            let sender = self.answers_sender.clone();
            let deliver = Box::new(move |result| {
                let _ = sender.send((fetch_id, queue, result));
            });
            let request_id =
                connection.send_with(Kind::FetchRequest as u16, &protocol::fetch_request(&params), deliver)?;
            self.fetches
                .insert(queue, InFlightFetch { fetch_id, offset, connection, request_id, sent: Instant::now() });
        }
        Ok(())
    }

    fn poll_once(&mut self) -> Result<Vec<ReceivedMessage>, ClientError> {
        self.follow_membership()?;
        if self.positions.is_empty() && self.fetches.is_empty() {
            std::thread::sleep(self.options.max_wait);
            return Ok(Vec::new());
        }
        self.launch_fetches()?;
        let deadline = Instant::now() + self.options.max_wait + self.client.timeout();
        let mut messages = Vec::new();
        let mut failure = None;
        let mut answered = false;
        loop {
            // Once something arrived, take only what is already there: the
            // other queues' long polls stay in flight for the next poll.
            let wait = if answered { Duration::ZERO } else { deadline.saturating_duration_since(Instant::now()) };
            let Ok((fetch_id, queue, result)) = self.answers.recv_timeout(wait) else { break };
            let Some(fetch) = self.fetches.get(&queue).filter(|fetch| fetch.fetch_id == fetch_id) else {
                continue; // one given up as stuck
            };
            let offset = fetch.offset;
            self.fetches.remove(&queue);
            answered = true;
            if self.positions.get(&queue) != Some(&offset) {
                // Sent before a seek, a refused message or a rebalance
                // moved the queue's position (or took the queue away).
                continue;
            }
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
        // A tag filter passes over records too; retention moved the start.
        let truncated = offset < response.earliest_offset();
        if truncated && response.next_offset() > offset && response.record_count() == 0 && !lost_only {
            tracing::warn!(
                queue,
                from = offset,
                to = response.next_offset(),
                "offsets were deleted by retention; skipping ahead"
            );
            first = response.next_offset();
        }
        let (mut messages, lost) = fetched_messages(&body, &response, &self.topic, queue, first)?;
        // The broker filtered by tag hash; a hash collision is caught here.
        if !self.options.tags.is_empty() {
            messages.retain(|message| message.tag.as_ref().is_some_and(|tag| self.options.tags.contains(tag)));
        }
        for offset in lost {
            tracing::warn!(queue, offset, "skipped an offset lost to damage (ringmq repair)");
            self.lost.push((queue, offset));
        }
        if self.positions.get(&queue) == Some(&offset) {
            let next = response.next_offset().max(first);
            self.positions.insert(queue, next);
            let taken_to = messages.last().map_or(offset, |message| message.offset + 1);
            if next > taken_to {
                self.passed_over.insert(queue, next);
            }
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
        // Where fetches moved past records they gave nothing of (a tag
        // filter): once the queue's messages before are handled, that
        // position is the commit.
        let mut passed_over = std::mem::take(&mut self.passed_over);
        passed_over.retain(|queue, next| self.positions.get(queue) == Some(next));
        for (queue, next_offset) in passed_over.iter().filter(|(queue, _)| !by_queue.contains_key(queue)) {
            if let Err(error) = self.commit(*queue, *next_offset) {
                failure.get_or_insert(error);
            }
        }
        for (queue, messages) in by_queue {
            let mut next_offset = None;
            let mut refused = false;
            for message in &messages {
                if handler(message).is_err() {
                    // Fetch again from the refused message.
                    self.positions.insert(queue, message.offset);
                    refused = true;
                    break;
                }
                next_offset = Some(message.offset + 1);
                handled += 1;
            }
            if !refused {
                next_offset = passed_over.get(&queue).copied().or(next_offset);
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

    /// Leaves the group, handing its queues to the other members now. A
    /// static member leaves too: its queues move at once, and its next join
    /// (same instance id) is an ordinary join that gets queues at once.
    pub fn leave(mut self) -> Result<(), ClientError> {
        self.stop_heartbeats();
        self.membership.leave()
    }

    fn stop_heartbeats(&mut self) {
        self.membership.stop();
        if let Some(heartbeats) = self.heartbeats.take() {
            let _ = heartbeats.join();
        }
    }
}

impl Drop for Consumer {
    /// Stops the heartbeats without leaving: see `Consumer`.
    fn drop(&mut self) {
        self.stop_heartbeats();
    }
}
