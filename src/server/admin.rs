//! The operators' requests: a shard's status, the groups its coordinator
//! holds, a group's committed offsets on its queues, an operator's offset
//! reset and the offset of a point in time (`ringmq status`, `group`,
//! `offset`). One function per request kind, as in `handlers`.

use super::handlers::{store_commit, Answer};
use super::offsets::OffsetCommit;
use super::replication::release;
use super::requests::{self, ResetTo};
use super::shard::Shard;
use crate::protocol::page::{self, Listed, PageBudget};
use crate::protocol::{self, fb, Failure, Kind, QueueOffsets, ShardStatus};
use std::collections::BTreeSet;
use std::ops::Bound;

/// The generation an operator's commit is stored with: no member's.
const OPERATOR_GENERATION: u64 = 0;

pub fn shard_status(shard: &Shard) -> Answer {
    let port = shard.endpoints.iter().find(|endpoint| endpoint.shard == shard.id).map_or(0, |endpoint| endpoint.port);
    let (segments, disk_used_bytes) = shard.log.disk_usage();
    let lag_bytes = replication_lag_bytes(shard);
    let status = ShardStatus {
        shard: shard.id,
        port,
        error: shard.log.is_stopped().map(|error| error.to_string()),
        segments,
        flushed: shard.log.positions().flushed,
        disk_used_bytes,
        connections: u32::try_from(shard.connections.get()).unwrap_or(u32::MAX),
        standby_of: shard.replica.standby_of(),
        replication_lag_bytes: lag_bytes,
        standby_connected: shard.replica.confirmations.connected(),
        epoch: shard.replica.epoch(),
        epochs: shard.replica.epochs.borrow().starts().to_vec(),
        replication_lag_ms: shard.replica.caught_up.lag(lag_bytes).as_millis() as u64,
        diverged_files: diverged_files(&shard.dir),
        log_start: shard.log.first_position(),
        replication_error: shard.replica.stream_error.borrow().clone(),
    };
    Ok((Kind::ShardStatusResponse, protocol::shard_status_response(None, &status)))
}

/// The side files of a rejoin in the shard's directory (`diverged-*.log`).
fn diverged_files(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            entry.file_name().to_str().is_some_and(|name| name.starts_with("diverged-") && name.ends_with(".log"))
        })
        .map(|entry| entry.path().display().to_string())
        .collect();
    files.sort();
    files
}

/// Durable bytes the standby lacks: on a standby, as its primary last
/// answered; on a primary, as its standby last reported (its whole log
/// before any standby asked).
pub(super) fn replication_lag_bytes(shard: &Shard) -> u64 {
    let flushed = shard.log.positions().flushed;
    if shard.replica.is_standby() {
        shard.replica.primary_durable.get().saturating_sub(flushed)
    } else {
        flushed.saturating_sub(shard.replica.confirmations.confirmed())
    }
}

pub fn list_groups(shard: &Shard, request: &requests::ListGroups<'_>) -> Answer {
    let (groups, more) = shard.coordinator.borrow().list(request.group, request.after);
    let next = groups.last().filter(|_| more).map(|last| page::pair_cursor(&last.group, &last.topic));
    Ok((Kind::ListGroupsResponse, protocol::list_groups_response(None, &groups, next.as_deref())))
}

pub fn group_offsets(shard: &Shard, request: &requests::GroupOffsets<'_>) -> Answer {
    let (group, topics) = (request.group, &request.topics);
    let after = match request.after {
        Some((topic, queue)) => Bound::Excluded((topic.to_string(), queue)),
        None => Bound::Unbounded,
    };
    let mut wanted: BTreeSet<(String, u32)> = BTreeSet::new();
    {
        let known = shard.topics.borrow();
        // A named topic this broker does not have (a retry topic not made
        // yet) adds nothing.
        for topic in topics.iter().filter_map(|name| known.get(name)) {
            for (queue, owner) in topic.queue_shards.iter().enumerate() {
                if *owner == shard.id {
                    wanted.insert((topic.name.to_string(), queue as u32));
                }
            }
        }
    }
    for (topic, queue, _) in shard.offsets.borrow().committed_of_group(group) {
        wanted.insert((topic, queue));
    }
    // One page, in topic and queue order from after the cursor.
    let mut budget = PageBudget::default();
    let (mut queues, mut more) = (Vec::new(), false);
    for (topic_name, queue) in wanted.range((after, Bound::Unbounded)).cloned() {
        // A committed offset of a topic this shard no longer owns (or knows)
        // has no queue to measure against.
        let Ok(topic) = shard.topic(&topic_name) else { continue };
        let Ok(queue_id) = shard.owned_queue(&topic, queue) else { continue };
        let committed = shard.offsets.borrow().get(&(group.to_string(), topic_name.clone(), queue));
        let offsets = QueueOffsets {
            topic: topic_name,
            queue,
            committed,
            // What its consumers can reach: on a sync primary, records the
            // standby has not confirmed yet count as lag.
            end: release::consumer_view(shard).end_offset(queue_id),
            earliest: shard.log.base_offset(queue_id),
        };
        let (bytes, tables) = offsets.page_cost();
        if !budget.take(bytes, tables) {
            more = true;
            break;
        }
        queues.push(offsets);
    }
    let next = queues.last().filter(|_| more).map(|last| page::keyed_cursor(&last.topic, u64::from(last.queue)));
    Ok((Kind::GroupOffsetsResponse, protocol::group_offsets_response(None, &queues, next.as_deref())))
}

pub async fn reset_offset(shard: &Shard, request: &requests::ResetOffset<'_>) -> Answer {
    let (group, topic_name, queue) = (request.group, request.topic, request.queue);
    let topic = shard.topic(topic_name)?;
    let queue_id = shard.owned_queue(&topic, queue)?;
    if !request.force && shard.offsets.borrow().has_live_owner(group, topic_name) {
        return Err(Failure::new(
            fb::ErrorCode::InvalidRequest,
            format!(
                "group {group} has live members on {topic_name}: their commits would overwrite the reset; stop them or force it"
            ),
        ));
    }
    let earliest = shard.log.base_offset(queue_id);
    let end = release::consumer_view(shard).end_offset(queue_id);
    let offset = match request.target {
        ResetTo::Earliest => earliest,
        ResetTo::Latest => end,
        // One offset for every queue of a topic: a shorter queue goes to its
        // end (never past what readers see, as a member's commit), one whose
        // start retention deleted to its earliest.
        ResetTo::Offset(offset) => offset.min(end).max(earliest),
        ResetTo::Time(time_ms) => shard
            .log
            .first_offset_stored_at(queue_id, time_ms.saturating_mul(1000))
            .await
            .map_err(super::failures::log_failure)?,
    };
    let commit = OffsetCommit {
        group: group.to_string(),
        topic: topic_name.to_string(),
        queue,
        offset,
        generation: OPERATOR_GENERATION,
    };
    store_commit(shard, &commit).await?;
    tracing::info!(group, topic = topic_name, queue, offset, force = request.force, "an operator reset an offset");
    Ok((Kind::ResetOffsetResponse, protocol::queue_offset_response(None, offset)))
}

pub async fn offset_at_time(shard: &Shard, request: &requests::QueueAt<'_>) -> Answer {
    let topic = shard.topic(request.topic)?;
    let queue_id = shard.owned_queue(&topic, request.queue)?;
    let offset = shard
        .log
        .first_offset_stored_at(queue_id, request.time_ms.saturating_mul(1000))
        .await
        .map_err(super::failures::log_failure)?;
    Ok((Kind::OffsetAtTimeResponse, protocol::queue_offset_response(None, offset)))
}
