//! Consumer offsets: one committed offset per (group, topic, queue), kept by
//! the shard that owns the queue. A commit is a record in the shard's own
//! commit log (queue id 0), acknowledged after the group commit that covers
//! it; a snapshot file only shortens the replay at start-up.

use super::groups::GroupFence;
use crate::storage::backend::Storage;
use crate::storage::record::flags;
use crate::storage::{AppendRequest, CommitLog, LogError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Commit-log queue ids of the shard's internal queues, below the first
/// topic's queues (topic `t` queue `q` is `t * TOPIC_QUEUES_MAX + q`, and
/// topic ids start at 1).
/// The offset records.
pub const OFFSETS_QUEUE_ID: u32 = 0;
/// Transactional half messages, invisible until committed (`transactions`).
pub const HALF_QUEUE_ID: u32 = 1;
/// Rollback op records of half messages (`transactions`).
pub const OP_QUEUE_ID: u32 = 2;
/// Check-back op records: one per check a live producer acknowledged
/// (`checker`), so a restart keeps counting where it was.
pub const CHECK_QUEUE_ID: u32 = 3;
/// Rollback op records of the halves the broker discarded after its
/// check-backs ran out: apart from `OP_QUEUE_ID` so recovery tells them
/// from a producer's rollback.
pub const DISCARD_QUEUE_ID: u32 = 4;
/// Timer entries (`timers`): delayed messages, and the send-backs and
/// dead-letter resends waiting for their delivery.
pub const DELAY_QUEUE_ID: u32 = 5;
/// Timer intents: the progress of the deliveries (`due_delivery`).
pub const TIMER_QUEUE_ID: u32 = 6;
/// Epoch starts (`replication::epochs`): one record per promotion.
pub const EPOCH_QUEUE_ID: u32 = 7;
const _: () = assert!(EPOCH_QUEUE_ID < crate::constants::TOPIC_QUEUES_MAX);
pub const OFFSETS_SNAPSHOT_FILE: &str = "offsets.json";

pub type OffsetKey = (String, String, u32);

/// One commit, as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommit {
    pub group: String,
    pub topic: String,
    pub queue: u32,
    pub offset: u64,
    pub generation: u64,
}

impl OffsetCommit {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Snapshot {
    /// Offset-queue records before this one are folded in.
    covered: u64,
    offsets: Vec<(OffsetKey, u64)>,
}

/// What a group's newest fence says of a queue: who owns it, and in which
/// generation.
struct Fence {
    generation: u64,
    owners: Vec<String>,
}

/// Why a commit was fenced off.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fenced {
    /// No fence of the group reached this shard since it started (the
    /// coordinator forgot its members in a restart too): the member must
    /// join again.
    #[error("this shard knows no assignment of group {group}: join the group again")]
    NoAssignment { group: String },
    #[error("generation {generation} of group {group} is not the current one ({current}): the group rebalanced")]
    OtherGeneration { group: String, generation: u64, current: u64 },
    #[error("member {member_id:?} does not own queue {queue} of group {group} in generation {generation} (owner: {owner:?})")]
    NotOwner { group: String, queue: u32, member_id: String, generation: u64, owner: String },
}

/// The committed offsets of the queues a shard owns, and the fences: the
/// newest assignment each group's coordinator announced.
#[derive(Default)]
pub struct Offsets {
    committed: HashMap<OffsetKey, u64>,
    fences: HashMap<(String, String), Fence>,
    /// Offset-queue records below this one are in the snapshot on disk.
    covered_by_snapshot: u64,
}

impl Offsets {
    pub fn get(&self, key: &OffsetKey) -> Option<u64> {
        self.committed.get(key).copied()
    }

    /// Takes a group's new assignment; an older one arriving late changes
    /// nothing.
    pub fn fence(&mut self, fence: &GroupFence) {
        let key = (fence.group.clone(), fence.topic.clone());
        if self.fences.get(&key).is_some_and(|known| known.generation > fence.generation) {
            return;
        }
        // A group without members (every group ends so) keeps only its
        // generation: one owner per queue of nobody would stay on every shard.
        let owners = match fence.owners.iter().all(String::is_empty) {
            true => Vec::new(),
            false => fence.owners.clone(),
        };
        self.fences.insert(key, Fence { generation: fence.generation, owners });
    }

    /// Whether `member_id` owns `queue` in `generation`, the group's current
    /// one: only then may it commit the queue's offset.
    pub fn check_owner(
        &self,
        group: &str,
        topic: &str,
        queue: u32,
        member_id: &str,
        generation: u64,
    ) -> Result<(), Fenced> {
        let Some(fence) = self.fences.get(&(group.to_string(), topic.to_string())) else {
            return Err(Fenced::NoAssignment { group: group.to_string() });
        };
        if fence.generation != generation {
            return Err(Fenced::OtherGeneration { group: group.to_string(), generation, current: fence.generation });
        }
        let owner = fence.owners.get(queue as usize).map_or("", String::as_str);
        if owner.is_empty() || owner != member_id {
            return Err(Fenced::NotOwner {
                group: group.to_string(),
                queue,
                member_id: member_id.to_string(),
                generation,
                owner: owner.to_string(),
            });
        }
        Ok(())
    }

    /// Whether the newest fence of `group` on `topic` names an owner of
    /// some queue: the group has a live member there.
    pub fn has_live_owner(&self, group: &str, topic: &str) -> bool {
        self.fences
            .get(&(group.to_string(), topic.to_string()))
            .is_some_and(|fence| fence.owners.iter().any(|owner| !owner.is_empty()))
    }

    /// Every committed offset of `group` this shard keeps: topic, queue,
    /// offset.
    pub fn committed_of_group(&self, group: &str) -> Vec<(String, u32, u64)> {
        let mut committed: Vec<_> = self
            .committed
            .iter()
            .filter(|((name, _, _), _)| name == group)
            .map(|((_, topic, queue), offset)| (topic.clone(), *queue, *offset))
            .collect();
        committed.sort();
        committed
    }

    /// Every committed offset this shard keeps, in no order.
    pub fn committed(&self) -> impl Iterator<Item = (&OffsetKey, u64)> {
        self.committed.iter().map(|(key, offset)| (key, *offset))
    }

    pub fn apply(&mut self, commit: &OffsetCommit) {
        self.committed.insert((commit.group.clone(), commit.topic.clone(), commit.queue), commit.offset);
    }

    /// Loads the snapshot and replays the offset records after it.
    pub async fn recover<S: Storage>(storage: &S, dir: &Path, log: &CommitLog<S>) -> Result<Self, LogError> {
        let path = dir.join(OFFSETS_SNAPSHOT_FILE);
        let snapshot: Snapshot = match storage.read_file(&path).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(%error, "ignoring a damaged offsets snapshot; replaying the offset records");
                Snapshot::default()
            }),
            _ => Snapshot::default(),
        };
        let mut offsets = Offsets {
            committed: snapshot.offsets.into_iter().collect(),
            fences: HashMap::new(),
            covered_by_snapshot: snapshot.covered,
        };
        log.replay(OFFSETS_QUEUE_ID, snapshot.covered, |record| {
            match serde_json::from_slice::<OffsetCommit>(&record.message()) {
                Ok(commit) => offsets.apply(&commit),
                Err(error) => tracing::warn!(%error, "skipping an unreadable offset record"),
            }
        })
        .await?;
        Ok(offsets)
    }

    /// Offset-queue records below this one were folded into the snapshot
    /// found at start-up.
    pub fn covered_by_snapshot(&self) -> u64 {
        self.covered_by_snapshot
    }

    /// Lowers every committed offset past its queue's end to that end: a
    /// snapshot or an async-mode commit can outlive the records it pointed
    /// past (a crash before their flush, a corruption cut at recovery).
    /// `queue_end` gives the end of a topic's queue, `None` if unknown.
    pub fn clamp_to_queue_ends(&mut self, queue_end: impl Fn(&str, u32) -> Option<u64>) {
        for ((group, topic, queue), offset) in &mut self.committed {
            let Some(end) = queue_end(topic, *queue) else { continue };
            if *offset > end {
                tracing::warn!(%group, %topic, queue, old = *offset, new = end, "committed offset past the recovered end of its queue; clamped");
                *offset = end;
            }
        }
    }

    /// The snapshot bytes, saying the offset records before `covered` are
    /// folded in.
    pub fn snapshot(&self, covered: u64) -> Vec<u8> {
        let offsets = self.committed.iter().map(|(key, offset)| (key.clone(), *offset)).collect();
        serde_json::to_vec(&Snapshot { covered, offsets }).unwrap_or_default()
    }
}

/// The log position retention must keep from while the snapshot on disk
/// covers the offset records below `covered`: where the first record it
/// does not cover lies, or, if there is none yet, where the next will go.
/// It may read a page of the index file.
pub async fn retention_floor<S: Storage>(log: &CommitLog<S>, covered: u64) -> Result<u64, LogError> {
    let first_uncovered = covered.max(log.base_offset(OFFSETS_QUEUE_ID));
    let position = log.position_of(OFFSETS_QUEUE_ID, first_uncovered).await?;
    Ok(position.unwrap_or_else(|| log.positions().appended))
}

pub async fn write_snapshot<S: Storage>(storage: &S, dir: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let path = dir.join(OFFSETS_SNAPSHOT_FILE);
    storage
        .write_file_atomic(&path, bytes)
        .await
        .map_err(|error| LogError::io("write offsets snapshot", &path, 0, error))
}

/// Appends a commit durably; the caller applies it once this resolves with
/// the end of its record.
pub async fn append_commit<S: Storage>(log: &CommitLog<S>, commit: &OffsetCommit) -> Result<u64, LogError> {
    let message = commit.encode();
    let request = AppendRequest {
        queue_id: OFFSETS_QUEUE_ID,
        flags: flags::INTERNAL,
        indexed: true,
        message: &message,
        ..AppendRequest::default()
    };
    log.append(request).await.map(|appended| appended.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::MemoryStorage;
    use crate::storage::LogConfig;

    fn commit(queue: u32, offset: u64) -> OffsetCommit {
        OffsetCommit { group: "g".into(), topic: "t".into(), queue, offset, generation: 1 }
    }

    fn fence(generation: u64, owners: &[&str]) -> GroupFence {
        GroupFence {
            group: "g".into(),
            topic: "t".into(),
            generation,
            owners: owners.iter().map(|owner| owner.to_string()).collect(),
        }
    }

    #[test]
    fn only_the_owner_of_a_queue_in_the_current_generation_passes_the_fence() {
        let mut offsets = Offsets::default();
        assert!(matches!(offsets.check_owner("g", "t", 0, "a", 5), Err(Fenced::NoAssignment { .. })));
        offsets.fence(&fence(5, &["a", "b", ""]));
        assert_eq!(offsets.check_owner("g", "t", 0, "a", 5), Ok(()));
        assert_eq!(offsets.check_owner("g", "t", 1, "b", 5), Ok(()));
        assert!(matches!(offsets.check_owner("g", "t", 1, "a", 5), Err(Fenced::NotOwner { .. })));
        assert!(matches!(offsets.check_owner("g", "t", 2, "a", 5), Err(Fenced::NotOwner { .. })), "nobody's");
        assert!(matches!(offsets.check_owner("g", "t", 9, "a", 5), Err(Fenced::NotOwner { .. })), "no such queue");
        assert!(matches!(offsets.check_owner("g", "t", 0, "", 5), Err(Fenced::NotOwner { .. })));
        for generation in [4, 6, u64::MAX] {
            assert!(matches!(offsets.check_owner("g", "t", 0, "a", generation), Err(Fenced::OtherGeneration { .. })));
        }
        assert!(matches!(offsets.check_owner("other", "t", 0, "a", 5), Err(Fenced::NoAssignment { .. })));
        // A late fence of an older generation changes nothing.
        offsets.fence(&fence(7, &["b", "b", "b"]));
        offsets.fence(&fence(6, &["a", "a", "a"]));
        assert_eq!(offsets.check_owner("g", "t", 0, "b", 7), Ok(()));
        assert!(offsets.check_owner("g", "t", 0, "a", 6).is_err());
        // An empty group's fence keeps its generation, no owners.
        offsets.fence(&fence(8, &["", "", ""]));
        assert!(matches!(offsets.check_owner("g", "t", 0, "b", 8), Err(Fenced::NotOwner { .. })));
        assert!(!offsets.has_live_owner("g", "t"));
        assert!(offsets.fences.get(&("g".to_string(), "t".to_string())).is_some_and(|fence| fence.owners.is_empty()));
        offsets.fence(&fence(7, &["b", "b", "b"]));
        assert!(offsets.check_owner("g", "t", 0, "b", 7).is_err(), "still no late older fence");
    }

    #[test]
    fn offsets_past_the_end_of_their_queue_are_clamped() {
        let mut offsets = Offsets::default();
        for (queue, offset) in [(0, 50), (1, 10), (2, 7)] {
            offsets.apply(&commit(queue, offset));
        }
        let mut other = commit(0, 99);
        other.topic = "unknown".into();
        offsets.apply(&other);
        offsets.clamp_to_queue_ends(|topic, queue| (topic == "t").then_some([20, 10, 30][queue as usize]));
        let get = |topic: &str, queue| offsets.get(&("g".into(), topic.into(), queue));
        assert_eq!(get("t", 0), Some(20), "past the end: clamped");
        assert_eq!(get("t", 1), Some(10), "at the end: kept");
        assert_eq!(get("t", 2), Some(7), "below the end: kept");
        assert_eq!(get("unknown", 0), Some(99), "a queue we know nothing of: kept");
    }

    #[test]
    fn the_retention_floor_is_the_first_offset_record_the_snapshot_does_not_cover() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async {
            let log = CommitLog::open(MemoryStorage::new(), LogConfig::new("/memory")).await.expect("open");
            let mut positions = Vec::new();
            for offset in 0..5 {
                append_commit(&log, &commit(0, offset)).await.expect("append");
                positions.push(log.position_of(OFFSETS_QUEUE_ID, offset).await.expect("read").expect("indexed"));
            }
            assert_eq!(retention_floor(&log, 0).await.expect("floor"), positions[0]);
            assert_eq!(retention_floor(&log, 3).await.expect("floor"), positions[3]);
            let all_covered = retention_floor(&log, 5).await.expect("floor");
            assert_eq!(all_covered, log.positions().appended, "all covered: from the next record on");
            log.close().await.expect("close");
        });
    }
}
