//! Consumer offsets: one committed offset per (group, topic, queue), kept by
//! the shard that owns the queue. A commit is a record in the shard's own
//! commit log (queue id 0), acknowledged after the group commit that covers
//! it; a snapshot file only shortens the replay at start-up.

use crate::storage::backend::Storage;
use crate::storage::record::flags;
use crate::storage::{AppendRequest, CommitLog, LogError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Commit-log queue id of the offset records.
pub const OFFSETS_QUEUE_ID: u32 = 0;
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

/// The committed offsets of the queues a shard owns, and the fences: the
/// newest group generation each group's coordinator announced.
#[derive(Default)]
pub struct Offsets {
    committed: HashMap<OffsetKey, u64>,
    fences: HashMap<(String, String), u64>,
}

impl Offsets {
    pub fn get(&self, key: &OffsetKey) -> Option<u64> {
        self.committed.get(key).copied()
    }

    pub fn fence(&mut self, group: &str, topic: &str, generation: u64) {
        let fence = self.fences.entry((group.to_string(), topic.to_string())).or_insert(0);
        *fence = (*fence).max(generation);
    }

    /// Whether a commit made in `generation` is current.
    pub fn is_current(&self, group: &str, topic: &str, generation: u64) -> bool {
        self.fences.get(&(group.to_string(), topic.to_string())).is_none_or(|fence| generation >= *fence)
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
        let mut offsets = Offsets { committed: snapshot.offsets.into_iter().collect(), fences: HashMap::new() };
        let mut next = snapshot.covered.max(log.base_offset(OFFSETS_QUEUE_ID));
        loop {
            let batch = log.read(OFFSETS_QUEUE_ID, next, 1024, 4 << 20).await?;
            if batch.records.is_empty() {
                break;
            }
            for record in &batch.records {
                match serde_json::from_slice::<OffsetCommit>(&record.message()) {
                    Ok(commit) => offsets.apply(&commit),
                    Err(error) => tracing::warn!(%error, "skipping an unreadable offset record"),
                }
            }
            next = batch.next_offset;
        }
        Ok(offsets)
    }

    /// The snapshot bytes, saying the offset records before `covered` are
    /// folded in.
    pub fn snapshot(&self, covered: u64) -> Vec<u8> {
        let offsets = self.committed.iter().map(|(key, offset)| (key.clone(), *offset)).collect();
        serde_json::to_vec(&Snapshot { covered, offsets }).unwrap_or_default()
    }
}

pub async fn write_snapshot<S: Storage>(storage: &S, dir: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let path = dir.join(OFFSETS_SNAPSHOT_FILE);
    storage
        .write_file_atomic(&path, bytes)
        .await
        .map_err(|error| LogError::io("write offsets snapshot", &path, 0, error))
}

/// Appends a commit durably; the caller applies it once this resolves.
pub async fn append_commit<S: Storage>(log: &CommitLog<S>, commit: &OffsetCommit) -> Result<(), LogError> {
    let message = commit.encode();
    let request = AppendRequest {
        queue_id: OFFSETS_QUEUE_ID,
        flags: flags::INTERNAL,
        indexed: true,
        message: &message,
        ..AppendRequest::default()
    };
    log.append(request).await.map(|_| ())
}
