//! Bodies of the operators' requests (`ringmq status`, `group`, `offset`),
//! shared by broker and client.

use super::build::{finish, outcome};
use super::{fb, Failure};
use flatbuffers::FlatBufferBuilder;

/// What a shard says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStatus {
    pub shard: u32,
    pub port: u16,
    /// Why the shard's log fail-stopped; `None`: healthy.
    pub error: Option<String>,
    pub segments: u32,
    pub flushed: u64,
    pub disk_used_bytes: u64,
    pub connections: u32,
    /// Whether the shard is a primary's or a standby's (issue 13).
    pub standby_of: Option<String>,
    pub replication_lag_bytes: u64,
    /// On a primary: whether a standby asked for bytes lately.
    pub standby_connected: bool,
    /// The broker's epoch (0 before any promotion).
    pub epoch: u64,
    /// Every epoch the shard's log holds, oldest first.
    pub epochs: Vec<EpochStart>,
    /// 0 while the standby is caught up, else how long it has not been.
    pub replication_lag_ms: u64,
    /// Side files of records set aside when this shard's log rejoined a
    /// new primary's history.
    pub diverged_files: Vec<String>,
    /// The first log position the shard still holds.
    pub log_start: u64,
    /// On a standby: why it does not follow its primary now.
    pub replication_error: Option<String>,
}

/// Where an epoch starts in a shard's log (issue 13).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EpochStart {
    pub epoch: u64,
    pub position: u64,
}

impl EpochStart {
    pub fn read_all(starts: Option<flatbuffers::Vector<'_, fb::EpochStart>>) -> Vec<Self> {
        starts
            .map(|starts| {
                starts.iter().map(|start| Self { epoch: start.epoch(), position: start.position() }).collect()
            })
            .unwrap_or_default()
    }

    pub fn to_wire(starts: &[Self]) -> Vec<fb::EpochStart> {
        starts.iter().map(|start| fb::EpochStart::new(start.epoch, start.position)).collect()
    }
}

impl ShardStatus {
    pub fn role_name(&self) -> &'static str {
        if self.standby_of.is_some() {
            "standby"
        } else {
            "primary"
        }
    }

    pub fn read(response: &fb::ShardStatusResponse<'_>) -> Self {
        Self {
            shard: response.shard(),
            port: response.port(),
            error: (!response.healthy()).then(|| response.error().unwrap_or("unhealthy").to_string()),
            segments: response.segments(),
            flushed: response.flushed(),
            disk_used_bytes: response.disk_used_bytes(),
            connections: response.connections(),
            standby_of: (response.role() == fb::ShardRole::Standby)
                .then(|| response.standby_of().unwrap_or_default().to_string()),
            replication_lag_bytes: response.replication_lag_bytes(),
            standby_connected: response.standby_connected(),
            epoch: response.epoch(),
            epochs: EpochStart::read_all(response.epochs()),
            replication_lag_ms: response.replication_lag_ms(),
            diverged_files: response
                .diverged_files()
                .map(|files| files.iter().map(str::to_string).collect())
                .unwrap_or_default(),
            log_start: response.log_start(),
            replication_error: response.replication_error().map(str::to_string),
        }
    }
}

/// A group on one topic as its coordinator holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSummary {
    pub group: String,
    pub topic: String,
    pub generation: u64,
    /// Member id and the queues it owns.
    pub members: Vec<(String, Vec<u32>)>,
}

impl GroupSummary {
    pub fn read(info: &fb::GroupInfo<'_>) -> Self {
        let members = info
            .members()
            .into_iter()
            .flatten()
            .map(|member| (member.member_id().to_string(), member.queues().into_iter().flatten().collect()))
            .collect();
        Self {
            group: info.group().to_string(),
            topic: info.topic().to_string(),
            generation: info.generation(),
            members,
        }
    }

    /// The member owning `queue`, if any.
    pub fn owner_of(&self, queue: u32) -> Option<&str> {
        self.members.iter().find(|(_, queues)| queues.contains(&queue)).map(|(member, _)| member.as_str())
    }
}

/// A group's committed offset on one queue, and where the queue stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueOffsets {
    pub topic: String,
    pub queue: u32,
    pub committed: Option<u64>,
    pub end: u64,
    pub earliest: u64,
}

impl QueueOffsets {
    pub fn read(queue: &fb::QueueOffsets<'_>) -> Self {
        Self {
            topic: queue.topic().to_string(),
            queue: queue.queue(),
            committed: u64::try_from(queue.committed()).ok(),
            end: queue.end(),
            earliest: queue.earliest(),
        }
    }
}

/// An operator's move of a group's offset on one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetReset {
    pub group: String,
    pub topic: String,
    pub queue: u32,
    pub target: fb::ResetTarget,
    /// The offset (`Offset`) or ms since the epoch (`Time`).
    pub value: u64,
    pub force: bool,
}

pub fn shard_status_request() -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let root = fb::ShardStatusRequest::create(&mut builder, &fb::ShardStatusRequestArgs {});
    finish(&mut builder, root)
}

pub fn shard_status_response(failure: Option<&Failure>, status: &ShardStatus) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let error = status.error.as_deref().map(|error| builder.create_string(error));
    let standby_of = status.standby_of.as_deref().map(|primary| builder.create_string(primary));
    let epochs = builder.create_vector(&EpochStart::to_wire(&status.epochs));
    let diverged: Vec<_> = status.diverged_files.iter().map(|file| builder.create_string(file)).collect();
    let diverged_files = builder.create_vector(&diverged);
    let replication_error = status.replication_error.as_deref().map(|error| builder.create_string(error));
    let role = if status.standby_of.is_some() { fb::ShardRole::Standby } else { fb::ShardRole::Primary };
    let args = fb::ShardStatusResponseArgs {
        outcome: Some(outcome),
        shard: status.shard,
        port: status.port,
        healthy: status.error.is_none(),
        error,
        segments: status.segments,
        flushed: status.flushed,
        disk_used_bytes: status.disk_used_bytes,
        connections: status.connections,
        role,
        standby_of,
        replication_lag_bytes: status.replication_lag_bytes,
        standby_connected: status.standby_connected,
        epoch: status.epoch,
        epochs: Some(epochs),
        replication_lag_ms: status.replication_lag_ms,
        diverged_files: Some(diverged_files),
        log_start: status.log_start,
        replication_error,
    };
    let root = fb::ShardStatusResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// The page of groups after the cursor `after` (an answer's `next`).
pub fn list_groups_request(group: Option<&str>, after: Option<&[u8]>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let group = group.map(|group| builder.create_string(group));
    let after = after.map(|after| builder.create_vector(after));
    let root = fb::ListGroupsRequest::create(&mut builder, &fb::ListGroupsRequestArgs { group, after });
    finish(&mut builder, root)
}

/// `next`: the cursor of the page after this one, when groups are left
/// (`truncated` too, for clients that do not follow pages).
pub fn list_groups_response(failure: Option<&Failure>, groups: &[GroupSummary], next: Option<&[u8]>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(128 + groups.len() * 128);
    let outcome = outcome(&mut builder, failure);
    let groups: Vec<_> = groups
        .iter()
        .map(|summary| {
            let members: Vec<_> = summary
                .members
                .iter()
                .map(|(member_id, queues)| {
                    let member_id = builder.create_string(member_id);
                    let queues = builder.create_vector(queues);
                    let args = fb::GroupMemberInfoArgs { member_id: Some(member_id), queues: Some(queues) };
                    fb::GroupMemberInfo::create(&mut builder, &args)
                })
                .collect();
            let members = builder.create_vector(&members);
            let group = builder.create_string(&summary.group);
            let topic = builder.create_string(&summary.topic);
            let args = fb::GroupInfoArgs {
                group: Some(group),
                topic: Some(topic),
                generation: summary.generation,
                members: Some(members),
            };
            fb::GroupInfo::create(&mut builder, &args)
        })
        .collect();
    let groups = builder.create_vector(&groups);
    let truncated = next.is_some();
    let next = next.map(|next| builder.create_vector(next));
    let args = fb::ListGroupsResponseArgs { outcome: Some(outcome), groups: Some(groups), truncated, next };
    let root = fb::ListGroupsResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// The page of queues after the cursor `after` (an answer's `next`).
pub fn group_offsets_request(group: &str, topics: &[&str], after: Option<&[u8]>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let names: Vec<_> = topics.iter().map(|topic| builder.create_string(topic)).collect();
    let topics = builder.create_vector(&names);
    let group = builder.create_string(group);
    let after = after.map(|after| builder.create_vector(after));
    let args = fb::GroupOffsetsRequestArgs { group: Some(group), topics: Some(topics), after };
    let root = fb::GroupOffsetsRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// `next`: the cursor of the page after this one, when queues are left.
pub fn group_offsets_response(failure: Option<&Failure>, queues: &[QueueOffsets], next: Option<&[u8]>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(128 + queues.len() * 64);
    let outcome = outcome(&mut builder, failure);
    let queues: Vec<_> = queues
        .iter()
        .map(|queue| {
            let topic = builder.create_string(&queue.topic);
            let args = fb::QueueOffsetsArgs {
                topic: Some(topic),
                queue: queue.queue,
                committed: queue.committed.and_then(|offset| i64::try_from(offset).ok()).unwrap_or(-1),
                end: queue.end,
                earliest: queue.earliest,
            };
            fb::QueueOffsets::create(&mut builder, &args)
        })
        .collect();
    let queues = builder.create_vector(&queues);
    let truncated = next.is_some();
    let next = next.map(|next| builder.create_vector(next));
    let args = fb::GroupOffsetsResponseArgs { outcome: Some(outcome), queues: Some(queues), truncated, next };
    let root = fb::GroupOffsetsResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn reset_offset_request(reset: &OffsetReset) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let group = builder.create_string(&reset.group);
    let topic = builder.create_string(&reset.topic);
    let args = fb::ResetOffsetRequestArgs {
        group: Some(group),
        topic: Some(topic),
        queue: reset.queue,
        target: reset.target,
        value: reset.value,
        force: reset.force,
    };
    let root = fb::ResetOffsetRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn queue_offset_response(failure: Option<&Failure>, offset: u64) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let args = fb::QueueOffsetResponseArgs { outcome: Some(outcome), offset };
    let root = fb::QueueOffsetResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn offset_at_time_request(topic: &str, queue: u32, time_ms: u64) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let topic = builder.create_string(topic);
    let args = fb::OffsetAtTimeRequestArgs { topic: Some(topic), queue, time_ms };
    let root = fb::OffsetAtTimeRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// What `ringmq message query` asks each shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageQuery {
    pub topic: String,
    pub key: String,
    /// Stored at or after this time (unix ms); 0: every kept message.
    pub since_ms: u64,
    pub max_count: u32,
}

pub fn query_messages_request(query: &MessageQuery) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let topic = builder.create_string(&query.topic);
    let key = builder.create_string(&query.key);
    let args = fb::QueryMessagesRequestArgs {
        topic: Some(topic),
        key: Some(key),
        since_ms: query.since_ms,
        max_count: query.max_count,
    };
    let root = fb::QueryMessagesRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// `records`: stored records back to back, newest first.
pub fn query_messages_response(
    failure: Option<&Failure>,
    records: &[u8],
    record_count: u32,
    truncated: bool,
) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(records.len() + 128);
    let outcome = outcome(&mut builder, failure);
    let records = builder.create_vector(records);
    let args =
        fb::QueryMessagesResponseArgs { outcome: Some(outcome), records: Some(records), record_count, truncated };
    let root = fb::QueryMessagesResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::verify;

    #[test]
    fn admin_bodies_round_trip() {
        let status = ShardStatus {
            shard: 1,
            port: 9877,
            error: Some("stopped".into()),
            segments: 2,
            flushed: 4096,
            disk_used_bytes: 1 << 30,
            connections: 3,
            standby_of: Some("10.0.0.1:9876".into()),
            replication_lag_bytes: 8192,
            standby_connected: false,
            epoch: 2,
            epochs: vec![EpochStart { epoch: 1, position: 4096 }, EpochStart { epoch: 2, position: 65536 }],
            replication_lag_ms: 120,
            diverged_files: vec!["/data/shard-1/diverged-00000000000000004096.log".into()],
            log_start: 1 << 30,
            replication_error: Some("the primary is gone".into()),
        };
        let body = shard_status_response(None, &status);
        assert_eq!(ShardStatus::read(&verify::<fb::ShardStatusResponse>(&body).expect("verifies")), status);
        let summary = GroupSummary {
            group: "g".into(),
            topic: "t".into(),
            generation: 7,
            members: vec![("m-1".into(), vec![0, 2]), ("m-2".into(), vec![1])],
        };
        let body = list_groups_response(None, std::slice::from_ref(&summary), Some(b"g\0t"));
        let response = verify::<fb::ListGroupsResponse>(&body).expect("verifies");
        assert!(response.truncated());
        assert_eq!(response.next().map(|next| next.bytes()), Some(&b"g\0t"[..]));
        let read: Vec<_> = response.groups().into_iter().flatten().map(|info| GroupSummary::read(&info)).collect();
        assert_eq!(read, vec![summary.clone()]);
        assert_eq!(read[0].owner_of(2), Some("m-1"));
        assert_eq!(read[0].owner_of(3), None);
        let queues = [
            QueueOffsets { topic: "t".into(), queue: 0, committed: Some(5), end: 9, earliest: 0 },
            QueueOffsets { topic: "t".into(), queue: 1, committed: None, end: 0, earliest: 0 },
        ];
        let body = group_offsets_response(None, &queues, None);
        let response = verify::<fb::GroupOffsetsResponse>(&body).expect("verifies");
        let read: Vec<_> = response.queues().into_iter().flatten().map(|queue| QueueOffsets::read(&queue)).collect();
        assert_eq!(read, queues);
        assert!(!response.truncated() && response.next().is_none());
        let reset = OffsetReset {
            group: "g".into(),
            topic: "t".into(),
            queue: 3,
            target: fb::ResetTarget::Time,
            value: 1234,
            force: true,
        };
        let body = reset_offset_request(&reset);
        let request = verify::<fb::ResetOffsetRequest>(&body).expect("verifies");
        assert_eq!(
            (request.queue(), request.target(), request.value(), request.force()),
            (3, reset.target, 1234, true)
        );
    }
}
