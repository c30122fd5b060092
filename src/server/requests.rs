//! What a request says, read before its handler touches the shard: the
//! flatbuffers verifier with the broker's limits, then every check that
//! needs nothing but the bytes (names, lengths, counts, enums). The handlers
//! and the fuzz targets (`crate::fuzzing::request`) call the same functions,
//! so what the fuzzers cover is what the broker runs on a client's bytes.

use super::delay_levels::DelayLevels;
use super::delayed;
use super::replication::Replication;
use super::topics::{check_length, check_name};
use super::transactions::{self, Outcome};
use crate::constants::{
    CLIENT_ID_BYTES_MAX, FETCH_BYTES_MAX, FETCH_COUNT_MAX, FETCH_TAGS_MAX, FETCH_WAIT_MS_MAX, GROUP_OFFSETS_TOPICS_MAX,
    KEY_BYTES_MAX, NAME_BYTES_MAX, PRODUCE_MESSAGES_MAX, QUERY_MESSAGES_MAX, RECORD_HEADER_SIZE_BYTES,
};
use crate::protocol::{self, fb, page, verify, Failure, Kind, INTERNAL_TOPIC_PREFIX};
use crate::wire::{check_message_fields, verify_message, VerifiedMessage};
use bytes::Bytes;
use flatbuffers::{ForwardsUOffset, Vector};
use std::collections::BTreeSet;
use std::time::Duration;

/// A produce request's verified messages: most requests carry one, kept
/// inline.
pub type RequestMessages = smallvec::SmallVec<[VerifiedMessage; 1]>;

pub(crate) fn invalid(error: String) -> Failure {
    Failure::new(fb::ErrorCode::InvalidRequest, format!("invalid request body: {error}"))
}

/// A request the shard serves, read and checked.
#[derive(Debug)]
pub enum Request<'a> {
    Metadata(Metadata<'a>),
    CreateTopic(CreateTopic<'a>),
    Produce(Produce<'a>),
    Fetch(Fetch<'a>),
    JoinGroup(JoinGroup<'a>),
    Heartbeat(GroupMember<'a>),
    LeaveGroup(GroupMember<'a>),
    CommitOffset(CommitOffset<'a>),
    FetchOffset(FetchOffset<'a>),
    EndTransaction(EndTransaction<'a>),
    ListTransactions(ListTransactions),
    RegisterProducer {
        producer_group: &'a str,
    },
    SendBack(SendBack<'a>),
    ResendDeadLetter(ResendDeadLetter<'a>),
    ShardStatus,
    ListGroups(ListGroups<'a>),
    GroupOffsets(GroupOffsets<'a>),
    ResetOffset(ResetOffset<'a>),
    OffsetAtTime(QueueAt<'a>),
    QueryMessages(QueryMessages<'a>),
    /// A standby asking for durable log bytes (`replication::primary`).
    Replicate(fb::ReplicateRequest<'a>),
    /// `ringmq promote`: `None` keeps the configured `replication`.
    Promote(Option<Replication>),
}

impl<'a> Request<'a> {
    /// The request a frame of `kind` carries in `body`, or why the shard
    /// refuses it without looking any further.
    pub fn read(kind: u16, body: &'a [u8]) -> Result<Self, Failure> {
        let Some(known) = Kind::from_u16(kind) else {
            return Err(Failure::new(fb::ErrorCode::UnknownKind, format!("unknown frame kind {kind}")));
        };
        Ok(match known {
            Kind::MetadataRequest => Self::Metadata(Metadata::read(body)?),
            Kind::CreateTopicRequest => Self::CreateTopic(CreateTopic::read(body)?),
            Kind::ProduceRequest => Self::Produce(Produce::read(body)?),
            Kind::FetchRequest => Self::Fetch(Fetch::read(body)?),
            Kind::JoinGroupRequest => Self::JoinGroup(JoinGroup::read(body)?),
            Kind::HeartbeatRequest => {
                let request = verify::<fb::HeartbeatRequest>(body).map_err(invalid)?;
                Self::Heartbeat(GroupMember::read(request.group(), request.topic(), request.member_id())?)
            }
            Kind::LeaveGroupRequest => {
                let request = verify::<fb::LeaveGroupRequest>(body).map_err(invalid)?;
                Self::LeaveGroup(GroupMember::read(request.group(), request.topic(), request.member_id())?)
            }
            Kind::CommitOffsetRequest => Self::CommitOffset(CommitOffset::read(body)?),
            Kind::FetchOffsetRequest => Self::FetchOffset(FetchOffset::read(body)?),
            Kind::EndTransactionRequest => Self::EndTransaction(EndTransaction::read(body)?),
            Kind::ListTransactionsRequest => {
                let request = verify::<fb::ListTransactionsRequest>(body).map_err(invalid)?;
                let after = page::cursor_of(request.after())?.map(page::read_keyed_cursor).transpose()?;
                let after = after.map(|(settled, position)| (settled == "settled", position));
                Self::ListTransactions(ListTransactions { discarded: request.discarded(), after })
            }
            Kind::RegisterProducerRequest => {
                let request = verify::<fb::RegisterProducerRequest>(body).map_err(invalid)?;
                let producer_group = request.producer_group();
                // As loose as a half's own group (`check_half`): any group a
                // half can name must be registrable.
                if producer_group.is_empty() {
                    return Err(invalid("a producer registers with a producer group".into()));
                }
                check_length("producer group", producer_group, NAME_BYTES_MAX)?;
                Self::RegisterProducer { producer_group }
            }
            Kind::SendBackRequest => Self::SendBack(SendBack::read(body)?),
            Kind::ResendDeadLetterRequest => Self::ResendDeadLetter(ResendDeadLetter::read(body)?),
            Kind::ShardStatusRequest => {
                verify::<fb::ShardStatusRequest>(body).map_err(invalid)?;
                Self::ShardStatus
            }
            Kind::ListGroupsRequest => {
                let request = verify::<fb::ListGroupsRequest>(body).map_err(invalid)?;
                let group = request.group().filter(|group| !group.is_empty());
                if let Some(group) = group {
                    check_name("group", group)?;
                }
                let after = page::cursor_of(request.after())?.map(page::read_pair_cursor).transpose()?;
                Self::ListGroups(ListGroups { group, after })
            }
            Kind::GroupOffsetsRequest => Self::GroupOffsets(GroupOffsets::read(body)?),
            Kind::ResetOffsetRequest => Self::ResetOffset(ResetOffset::read(body)?),
            Kind::OffsetAtTimeRequest => {
                let request = verify::<fb::OffsetAtTimeRequest>(body).map_err(invalid)?;
                Self::OffsetAtTime(QueueAt {
                    topic: request.topic(),
                    queue: request.queue(),
                    time_ms: request.time_ms(),
                })
            }
            Kind::QueryMessagesRequest => Self::QueryMessages(QueryMessages::read(body)?),
            Kind::ReplicateRequest => Self::Replicate(verify::<fb::ReplicateRequest>(body).map_err(invalid)?),
            Kind::PromoteRequest => {
                let request = verify::<fb::PromoteRequest>(body).map_err(invalid)?;
                Self::Promote(match request.replication() {
                    fb::PromoteReplication::Configured => None,
                    fb::PromoteReplication::Off => Some(Replication::Off),
                    fb::PromoteReplication::Async => Some(Replication::Async),
                    fb::PromoteReplication::Sync => Some(Replication::Sync),
                    other => return Err(invalid(format!("unknown replication mode {}", other.0))),
                })
            }
            other => {
                return Err(Failure::new(fb::ErrorCode::UnknownKind, format!("frame kind {other:?} is not a request")))
            }
        })
    }
}

#[derive(Debug)]
pub struct Metadata<'a> {
    /// Empty: every topic.
    pub topics: BTreeSet<&'a str>,
    /// The page starts after this topic name.
    pub after: Option<&'a str>,
}

impl<'a> Metadata<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::MetadataRequest>(body).map_err(invalid)?;
        let after = page::cursor_of(request.after())?.map(page::read_name_cursor).transpose()?;
        Ok(Self { topics: request.topics().map(|topics| topics.iter().collect()).unwrap_or_default(), after })
    }
}

/// A listing of transactions, one page of it.
#[derive(Debug)]
pub struct ListTransactions {
    pub discarded: bool,
    /// The page starts after this (settled, log position).
    pub after: Option<(bool, u64)>,
}

/// A listing of the coordinator's groups, one page of it.
#[derive(Debug)]
pub struct ListGroups<'a> {
    /// `None`: every group.
    pub group: Option<&'a str>,
    /// The page starts after this (group, topic).
    pub after: Option<(&'a str, &'a str)>,
}

#[derive(Debug)]
pub struct CreateTopic<'a> {
    pub name: &'a str,
    pub queues: u32,
}

impl<'a> CreateTopic<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::CreateTopicRequest>(body).map_err(invalid)?;
        check_name("topic", request.name())?;
        Ok(Self { name: request.name(), queues: request.queues() })
    }
}

/// A produce request whose messages are not verified yet: that waits for
/// the routing checks (`messages`), so a produce sent to the wrong shard
/// learns its owner without the cost of verifying its batch twice.
#[derive(Debug)]
pub struct Produce<'a> {
    pub topic: &'a str,
    pub queue: u32,
    pub skip_gap: bool,
    messages: Vector<'a, ForwardsUOffset<fb::MessageBytes<'a>>>,
}

/// What a produced message is checked against besides its own bytes.
#[derive(Clone, Debug)]
pub struct MessageLimits<'a> {
    pub delay_levels: &'a DelayLevels,
    pub delay_max: Duration,
    pub now_ms: u64,
    /// The largest record the shard's log takes.
    pub record_bytes_max: usize,
}

impl MessageLimits<'static> {
    /// A broker's defaults, at a fixed time: what the fuzz targets check
    /// messages against.
    pub fn fuzzing() -> Self {
        static LEVELS: std::sync::OnceLock<DelayLevels> = std::sync::OnceLock::new();
        Self {
            delay_levels: LEVELS.get_or_init(DelayLevels::default),
            delay_max: Duration::from_millis(super::DELAY_MAX_MS_DEFAULT),
            now_ms: 1_700_000_000_000,
            record_bytes_max: crate::constants::RECORD_SIZE_BYTES_MAX,
        }
    }
}

impl<'a> Produce<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = protocol::verify_produce_request(body).map_err(invalid)?;
        if request.topic().starts_with(INTERNAL_TOPIC_PREFIX) {
            return Err(Failure::new(
                fb::ErrorCode::InvalidTopic,
                "topics starting with % take only the broker's own records",
            ));
        }
        Ok(Self {
            topic: request.topic(),
            queue: request.queue(),
            skip_gap: request.skip_gap(),
            messages: request.messages(),
        })
    }

    /// Every message of the batch, verified and checked, each sharing the
    /// frame's bytes (`frame_body`: the body this request was read from).
    /// A batch is refused whole for what its own bytes decide, before
    /// anything of it is placed.
    pub fn messages(&self, frame_body: &Bytes, limits: &MessageLimits<'_>) -> Result<RequestMessages, Failure> {
        if self.messages.len() > PRODUCE_MESSAGES_MAX {
            return Err(invalid(format!("a produce request carries at most {PRODUCE_MESSAGES_MAX} messages")));
        }
        let mut messages = RequestMessages::with_capacity(self.messages.len());
        let mut total_bytes = 0;
        for (index, message) in self.messages.iter().enumerate() {
            let bytes = message_bytes(frame_body, message.bytes().bytes())?;
            // Flatbuffers let entries share one vector: without this a 4 MiB
            // request could have the log store 4000 copies of its bytes.
            total_bytes += bytes.len();
            if total_bytes > frame_body.len() {
                return Err(invalid(format!(
                    "message {index} of the batch shares its bytes with another: a batch's messages take more bytes than the request"
                )));
            }
            let invalid_message = |error: String| {
                Failure::new(fb::ErrorCode::InvalidMessage, format!("message {index} of the batch: {error}"))
            };
            let verified = verify_message(bytes).map_err(|error| invalid_message(error.to_string()))?;
            check_produced(&verified, limits).map_err(invalid_message)?;
            messages.push(verified);
        }
        let record_max = limits.record_bytes_max;
        if let Some(index) =
            messages.iter().position(|message| RECORD_HEADER_SIZE_BYTES + message.bytes().len() > record_max)
        {
            return Err(Failure::new(
                fb::ErrorCode::MessageTooLarge,
                format!("message {index} of the batch is larger than the {record_max} bytes a record may take"),
            ));
        }
        Ok(messages)
    }
}

/// Why a verified message cannot be produced, if it cannot: a half without
/// its transaction fields, a delay the broker does not allow.
pub fn check_produced(message: &VerifiedMessage, limits: &MessageLimits<'_>) -> Result<(), String> {
    // A half's own id check first: its error names transaction_id.
    transactions::check_half(message)?;
    check_message_fields(&message.message()).map_err(|error| error.to_string())?;
    delayed::check_delay(message, limits.delay_levels, limits.delay_max, limits.now_ms)
}

/// The producer's message bytes, sliced out of the frame without a copy.
fn message_bytes(frame_body: &Bytes, message: &[u8]) -> Result<Bytes, Failure> {
    let start = (message.as_ptr() as usize).checked_sub(frame_body.as_ptr() as usize);
    match start {
        Some(start) if start + message.len() <= frame_body.len() => Ok(frame_body.slice(start..start + message.len())),
        _ => Err(Failure::new(fb::ErrorCode::Internal, "message bytes outside the frame")),
    }
}

#[derive(Debug)]
pub struct Fetch<'a> {
    pub topic: &'a str,
    pub queue: u32,
    pub offset: u64,
    /// 1 to `FETCH_COUNT_MAX`.
    pub count: usize,
    /// 1 to `FETCH_BYTES_MAX`.
    pub bytes_max: usize,
    /// At most `FETCH_WAIT_MS_MAX`.
    pub wait: Duration,
    /// At most `FETCH_TAGS_MAX`; empty: every record.
    pub tag_hashes: Vec<u32>,
}

impl<'a> Fetch<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::FetchRequest>(body).map_err(invalid)?;
        let tag_hashes = request.tag_hashes();
        if tag_hashes.is_some_and(|hashes| hashes.len() > FETCH_TAGS_MAX) {
            return Err(invalid(format!("a fetch filters by at most {FETCH_TAGS_MAX} tags")));
        }
        Ok(Self {
            topic: request.topic(),
            queue: request.queue(),
            offset: request.offset(),
            count: request.max_count().clamp(1, FETCH_COUNT_MAX) as usize,
            bytes_max: (request.max_bytes() as usize).clamp(1, FETCH_BYTES_MAX),
            wait: Duration::from_millis(u64::from(request.max_wait_ms().min(FETCH_WAIT_MS_MAX))),
            tag_hashes: tag_hashes.map(|hashes| hashes.iter().collect()).unwrap_or_default(),
        })
    }
}

#[derive(Debug)]
pub struct JoinGroup<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    /// Empty: a new member.
    pub member_id: &'a str,
    /// Empty: a dynamic member.
    pub instance_id: &'a str,
    pub session_timeout_ms: u32,
}

impl<'a> JoinGroup<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::JoinGroupRequest>(body).map_err(invalid)?;
        check_name("group", request.group())?;
        let member_id = request.member_id().unwrap_or_default();
        let instance_id = request.instance_id().unwrap_or_default();
        check_length("member id", member_id, CLIENT_ID_BYTES_MAX)?;
        check_length("instance id", instance_id, CLIENT_ID_BYTES_MAX)?;
        Ok(Self {
            group: request.group(),
            topic: request.topic(),
            member_id,
            instance_id,
            session_timeout_ms: request.session_timeout_ms(),
        })
    }
}

/// A heartbeat or a leave: a member of a group on a topic.
#[derive(Debug)]
pub struct GroupMember<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub member_id: &'a str,
}

impl<'a> GroupMember<'a> {
    fn read(group: &'a str, topic: &'a str, member_id: &'a str) -> Result<Self, Failure> {
        check_name("group", group)?;
        check_length("member id", member_id, CLIENT_ID_BYTES_MAX)?;
        Ok(Self { group, topic, member_id })
    }
}

#[derive(Debug)]
pub struct CommitOffset<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub queue: u32,
    pub offset: u64,
    pub generation: u64,
    pub member_id: &'a str,
}

impl<'a> CommitOffset<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::CommitOffsetRequest>(body).map_err(invalid)?;
        check_name("group", request.group())?;
        let member_id = request.member_id().unwrap_or_default();
        check_length("member id", member_id, CLIENT_ID_BYTES_MAX)?;
        Ok(Self {
            group: request.group(),
            topic: request.topic(),
            queue: request.queue(),
            offset: request.offset(),
            generation: request.generation(),
            member_id,
        })
    }
}

#[derive(Debug)]
pub struct FetchOffset<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub queue: u32,
}

impl<'a> FetchOffset<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::FetchOffsetRequest>(body).map_err(invalid)?;
        check_length("group", request.group(), NAME_BYTES_MAX)?;
        Ok(Self { group: request.group(), topic: request.topic(), queue: request.queue() })
    }
}

#[derive(Debug)]
pub struct EndTransaction<'a> {
    pub topic: &'a str,
    pub queue: u32,
    pub transaction_id: &'a str,
    pub outcome: Outcome,
}

impl<'a> EndTransaction<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::EndTransactionRequest>(body).map_err(invalid)?;
        check_length("transaction id", request.transaction_id(), CLIENT_ID_BYTES_MAX)?;
        let outcome = Outcome::from_wire(request.outcome())
            .ok_or_else(|| invalid(format!("unknown transaction outcome {}", request.outcome().0)))?;
        Ok(Self { topic: request.topic(), queue: request.queue(), transaction_id: request.transaction_id(), outcome })
    }
}

#[derive(Debug)]
pub struct SendBack<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub queue: u32,
    pub offset: u64,
    pub max_reconsume_times: u32,
    /// 0: the broker's back-off.
    pub delay_level: u8,
}

impl<'a> SendBack<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::SendBackRequest>(body).map_err(invalid)?;
        check_name("group", request.group())?;
        Ok(Self {
            group: request.group(),
            topic: request.topic(),
            queue: request.queue(),
            offset: request.offset(),
            max_reconsume_times: request.max_reconsume_times(),
            delay_level: request.delay_level(),
        })
    }
}

#[derive(Debug)]
pub struct ResendDeadLetter<'a> {
    pub group: &'a str,
    /// A queue of the group's dead-letter topic.
    pub queue: u32,
    pub offset: u64,
    pub again: bool,
}

impl<'a> ResendDeadLetter<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::ResendDeadLetterRequest>(body).map_err(invalid)?;
        check_name("group", request.group())?;
        Ok(Self { group: request.group(), queue: request.queue(), offset: request.offset(), again: request.again() })
    }
}

#[derive(Debug)]
pub struct GroupOffsets<'a> {
    pub group: &'a str,
    /// At most `GROUP_OFFSETS_TOPICS_MAX`.
    pub topics: Vec<&'a str>,
    /// The page starts after this (topic, queue).
    pub after: Option<(&'a str, u32)>,
}

impl<'a> GroupOffsets<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::GroupOffsetsRequest>(body).map_err(invalid)?;
        check_name("group", request.group())?;
        let topics = request.topics();
        if topics.is_some_and(|topics| topics.len() > GROUP_OFFSETS_TOPICS_MAX) {
            return Err(invalid(format!("a group-offsets request names at most {GROUP_OFFSETS_TOPICS_MAX} topics")));
        }
        let after = page::cursor_of(request.after())?.map(page::read_keyed_cursor).transpose()?;
        let after = match after {
            Some((topic, queue)) => {
                let queue = u32::try_from(queue).map_err(|_| invalid("a bad page cursor (queue)".into()))?;
                Some((topic, queue))
            }
            None => None,
        };
        Ok(Self { group: request.group(), topics: topics.into_iter().flatten().collect(), after })
    }
}

/// Where an operator moves a group's offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
    /// The first record stored at or after this time (ms since the epoch).
    Time(u64),
}

#[derive(Debug)]
pub struct ResetOffset<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub queue: u32,
    pub target: ResetTo,
    pub force: bool,
}

impl<'a> ResetOffset<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::ResetOffsetRequest>(body).map_err(invalid)?;
        check_name("group", request.group())?;
        let target = match request.target() {
            fb::ResetTarget::Earliest => ResetTo::Earliest,
            fb::ResetTarget::Latest => ResetTo::Latest,
            fb::ResetTarget::Offset => ResetTo::Offset(request.value()),
            fb::ResetTarget::Time => ResetTo::Time(request.value()),
            other => return Err(invalid(format!("unknown reset target {}", other.0))),
        };
        Ok(Self {
            group: request.group(),
            topic: request.topic(),
            queue: request.queue(),
            target,
            force: request.force(),
        })
    }
}

/// A queue and a point in time.
#[derive(Debug)]
pub struct QueueAt<'a> {
    pub topic: &'a str,
    pub queue: u32,
    pub time_ms: u64,
}

/// The messages of a topic carrying a key (`server::message_query`).
#[derive(Debug)]
pub struct QueryMessages<'a> {
    pub topic: &'a str,
    /// 1 to `KEY_BYTES_MAX` bytes.
    pub key: &'a str,
    /// 1 to `QUERY_MESSAGES_MAX`.
    pub max: u32,
    /// Stored at or after this time (µs since the epoch); 0: any.
    pub since_us: u64,
}

impl<'a> QueryMessages<'a> {
    fn read(body: &'a [u8]) -> Result<Self, Failure> {
        let request = verify::<fb::QueryMessagesRequest>(body).map_err(invalid)?;
        let key = request.key();
        if key.is_empty() || key.len() > KEY_BYTES_MAX {
            return Err(invalid(format!("a key is 1 to {KEY_BYTES_MAX} bytes, not {}", key.len())));
        }
        let max = match request.max_count() {
            0 => QUERY_MESSAGES_MAX,
            asked => asked.min(QUERY_MESSAGES_MAX),
        };
        Ok(Self { topic: request.topic(), key, max, since_us: request.since_ms().saturating_mul(1000) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MessageDraft;

    /// Entries of a batch pointing at one shared vector are refused: each
    /// message must bring its own bytes, so what the log stores never
    /// exceeds what arrived.
    #[test]
    fn a_batch_whose_messages_share_their_bytes_is_refused() {
        let message =
            MessageDraft { msg_id: (1, 1), topic: "orders", body: &[7; 1000], ..MessageDraft::default() }.build();
        let mut builder = flatbuffers::FlatBufferBuilder::new();
        let bytes = builder.create_vector(&message);
        let entry = fb::MessageBytes::create(&mut builder, &fb::MessageBytesArgs { bytes: Some(bytes) });
        let entries = builder.create_vector(&[entry; 100]);
        let topic = builder.create_string("orders");
        let args = fb::ProduceRequestArgs { topic: Some(topic), queue: 0, messages: Some(entries), skip_gap: false };
        let root = fb::ProduceRequest::create(&mut builder, &args);
        builder.finish_minimal(root);
        let body = Bytes::copy_from_slice(builder.finished_data());
        let Ok(Request::Produce(produce)) = Request::read(Kind::ProduceRequest as u16, &body) else {
            panic!("a produce")
        };
        let error = produce.messages(&body, &MessageLimits::fuzzing()).expect_err("shared bytes are refused");
        assert!(error.to_string().contains("shares its bytes"), "{error}");
        let single = crate::protocol::produce_request("orders", 0, &[&message, &message], false);
        let single = Bytes::from(single.to_vec());
        let Ok(Request::Produce(produce)) = Request::read(Kind::ProduceRequest as u16, &single) else {
            panic!("a produce")
        };
        assert_eq!(produce.messages(&single, &MessageLimits::fuzzing()).expect("own bytes each").len(), 2);
    }
}
