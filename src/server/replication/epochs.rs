//! Epochs (issue 13): a broker starts at epoch 0; each promotion starts the
//! next one at the promoted shard's log end and records it twice: as a
//! record in the log (queue `EPOCH_QUEUE_ID`), which a standby copies with
//! every other byte, and in the shard's `epochs` file, which survives
//! retention. A returning old primary compares its history with its new
//! primary's to find where the two logs part.

use crate::protocol::EpochStart;
use crate::server::offsets::EPOCH_QUEUE_ID;
use crate::server::snapshot_file::{self, Reader};
use crate::storage::backend::Storage;
use crate::storage::{AppendRequest, CommitLog, LogError};
use std::path::{Path, PathBuf};

pub const EPOCHS_FILE: &str = "epochs";
const EPOCHS_MAGIC: &[u8; 8] = b"RMQEPOC1";
/// Bytes of an epoch record's message: epoch, start position.
const EPOCH_RECORD_BYTES: usize = 16;
/// Epochs kept: a broker promoted this often has bigger problems; the
/// oldest go first (a standby that old is resynced, not compared).
const EPOCHS_KEPT_MAX: usize = 1024;

/// A shard's epochs, oldest first; empty: epoch 0 from position 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochHistory {
    starts: Vec<EpochStart>,
}

/// Where a log that holds `ours` parts from the log that holds `theirs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Divergence {
    /// Theirs continues ours: nothing to cut.
    None,
    /// Theirs started a later epoch at this position: whatever ours holds
    /// from there on never reached them.
    At(u64),
    /// Ours is at a later epoch than theirs: they are a stale primary.
    TheyAreBehind { ours: u64, theirs: u64 },
    /// No common epoch: only a full copy can join them.
    Unrelated { ours: EpochStart },
}

impl EpochHistory {
    pub fn from_starts(mut starts: Vec<EpochStart>) -> Self {
        starts.sort();
        starts.dedup_by_key(|start| start.epoch);
        let excess = starts.len().saturating_sub(EPOCHS_KEPT_MAX);
        starts.drain(..excess);
        Self { starts }
    }

    pub fn starts(&self) -> &[EpochStart] {
        &self.starts
    }

    pub fn current(&self) -> EpochStart {
        self.starts.last().copied().unwrap_or_default()
    }

    pub fn push(&mut self, start: EpochStart) {
        debug_assert!(start.epoch > self.current().epoch, "epochs only grow");
        let mut starts = std::mem::take(&mut self.starts);
        starts.push(start);
        *self = Self::from_starts(starts);
    }

    /// This history with the epochs of `records` that are newer than its
    /// current one; `None` when none is (nothing to write down).
    pub fn with_newer(&self, records: Vec<EpochStart>) -> Option<EpochHistory> {
        let current = self.current().epoch;
        let newer: Vec<EpochStart> = records.into_iter().filter(|start| start.epoch > current).collect();
        if newer.is_empty() {
            return None;
        }
        Some(Self::from_starts(self.starts.iter().copied().chain(newer).collect()))
    }

    /// Where this history's log parts from the log of `theirs`.
    pub fn diverges_from(&self, theirs: &EpochHistory) -> Divergence {
        let ours = self.current();
        let theirs_now = theirs.current();
        if ours.epoch > theirs_now.epoch {
            return Divergence::TheyAreBehind { ours: ours.epoch, theirs: theirs_now.epoch };
        }
        // Epoch 0 starts at 0 in every history, written down or not.
        let known = ours.epoch == 0 || theirs.starts.contains(&ours);
        if !known {
            return Divergence::Unrelated { ours };
        }
        match theirs.starts.iter().find(|start| start.epoch > ours.epoch) {
            Some(next) => Divergence::At(next.position),
            None => Divergence::None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = snapshot_file::start(EPOCHS_MAGIC, 4 + self.starts.len() * EPOCH_RECORD_BYTES);
        out.extend_from_slice(&(self.starts.len() as u32).to_le_bytes());
        for start in &self.starts {
            out.extend_from_slice(&encode_start(*start));
        }
        snapshot_file::seal(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut reader = Reader::open(bytes, EPOCHS_MAGIC, "epochs")?;
        let count = reader.u32()? as usize;
        if count > EPOCHS_KEPT_MAX {
            return Err(format!("{count} epochs, more than the {EPOCHS_KEPT_MAX} kept"));
        }
        let mut starts = Vec::with_capacity(count);
        for _ in 0..count {
            starts.push(EpochStart { epoch: reader.u64()?, position: reader.u64()? });
        }
        reader.finish("epoch")?;
        Ok(Self::from_starts(starts))
    }
}

pub fn epochs_path(shard_dir: &Path) -> PathBuf {
    shard_dir.join(EPOCHS_FILE)
}

/// The history in the shard's `epochs` file (written or not: a broker never
/// promoted has none). A damaged file is an error: guessing an epoch could
/// cut records a standby must keep.
pub async fn load<S: Storage>(storage: &S, shard_dir: &Path) -> Result<EpochHistory, String> {
    let path = epochs_path(shard_dir);
    match storage.read_file(&path).await {
        Ok(None) => Ok(EpochHistory::default()),
        Ok(Some(bytes)) => EpochHistory::decode(&bytes).map_err(|error| format!("{}: {error}", path.display())),
        Err(error) => Err(format!("reading {}: {error}", path.display())),
    }
}

pub async fn save<S: Storage>(storage: &S, shard_dir: &Path, history: &EpochHistory) -> Result<(), String> {
    let path = epochs_path(shard_dir);
    storage
        .write_file_atomic(&path, &history.encode())
        .await
        .map_err(|error| format!("writing {}: {error}", path.display()))
}

fn encode_start(start: EpochStart) -> [u8; EPOCH_RECORD_BYTES] {
    let mut bytes = [0; EPOCH_RECORD_BYTES];
    bytes[..8].copy_from_slice(&start.epoch.to_le_bytes());
    bytes[8..].copy_from_slice(&start.position.to_le_bytes());
    bytes
}

fn decode_start(message: &[u8]) -> Option<EpochStart> {
    let bytes: &[u8; EPOCH_RECORD_BYTES] = message.try_into().ok()?;
    let epoch = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let position = u64::from_le_bytes(bytes[8..].try_into().ok()?);
    Some(EpochStart { epoch, position })
}

/// Appends the record that starts `start.epoch` (durable when this returns).
pub async fn append_record<S: Storage>(log: &CommitLog<S>, start: EpochStart) -> Result<(), LogError> {
    let message = encode_start(start);
    let appended = log
        .append(AppendRequest { queue_id: EPOCH_QUEUE_ID, indexed: true, message: &message, ..Default::default() })
        .await?;
    log.wait_durable(appended.end).await
}

/// Whether a start must begin a new epoch: a sync primary's log that holds
/// anything (its standby may hold bytes a crash lost here).
pub fn restart_needs_epoch<S: Storage>(settings: &super::ReplicationSettings, log: &CommitLog<S>) -> bool {
    settings.standby_of.is_none() && settings.replication == super::Replication::Sync && log.positions().flushed > 0
}

/// Starts `epoch` at the log's durable end: the epoch record, durable, then
/// the `epochs` file; returns the new history and where the epoch starts.
pub async fn begin<S: Storage>(
    storage: &S,
    shard_dir: &Path,
    log: &CommitLog<S>,
    history: &EpochHistory,
    epoch: u64,
) -> Result<(EpochHistory, EpochStart), String> {
    let start = EpochStart { epoch, position: log.positions().flushed };
    append_record(log, start).await.map_err(|error| format!("appending the epoch record: {error}"))?;
    let mut history = history.clone();
    history.push(start);
    save(storage, shard_dir, &history).await?;
    Ok((history, start))
}

/// The epoch records the log holds from queue offset `from` on.
pub async fn read_records<S: Storage>(log: &CommitLog<S>, from: u64) -> Result<Vec<EpochStart>, LogError> {
    let mut starts = Vec::new();
    log.replay(EPOCH_QUEUE_ID, from, |record| match decode_start(&record.message()) {
        Some(start) => starts.push(start),
        None => tracing::warn!(offset = record.queue_offset, "an epoch record of the wrong size; ignored"),
    })
    .await?;
    Ok(starts)
}

/// The file's history with the epoch records the log holds on top (a crash
/// between a replicated epoch record and the file's update loses neither).
pub async fn recover<S: Storage>(storage: &S, shard_dir: &Path, log: &CommitLog<S>) -> Result<EpochHistory, String> {
    let history = load(storage, shard_dir).await?;
    let records = read_records(log, 0).await.map_err(|error| format!("reading the epoch records: {error}"))?;
    match history.with_newer(records) {
        Some(newer) => {
            save(storage, shard_dir, &newer).await?;
            Ok(newer)
        }
        None => Ok(history),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(starts: &[(u64, u64)]) -> EpochHistory {
        EpochHistory::from_starts(starts.iter().map(|&(epoch, position)| EpochStart { epoch, position }).collect())
    }

    #[test]
    fn the_file_round_trips_and_a_damaged_one_is_refused() {
        let epochs = history(&[(1, 4096), (2, 81920)]);
        let bytes = epochs.encode();
        assert_eq!(EpochHistory::decode(&bytes), Ok(epochs));
        let mut damaged = bytes;
        damaged[12] ^= 1;
        assert!(EpochHistory::decode(&damaged).is_err());
    }

    #[test]
    fn an_old_primary_parts_where_the_next_epoch_started() {
        let new_primary = history(&[(1, 8192)]);
        assert_eq!(history(&[]).diverges_from(&new_primary), Divergence::At(8192));
        assert_eq!(new_primary.diverges_from(&new_primary), Divergence::None);
        assert_eq!(history(&[]).diverges_from(&history(&[])), Divergence::None);
        // Twice failed over: from epoch 1 the next one is 2.
        let twice = history(&[(1, 8192), (2, 65536)]);
        assert_eq!(history(&[(1, 8192)]).diverges_from(&twice), Divergence::At(65536));
        assert_eq!(
            twice.diverges_from(&new_primary),
            Divergence::TheyAreBehind { ours: 2, theirs: 1 },
            "a stale primary is not followed"
        );
        let other = history(&[(1, 4096)]);
        assert!(matches!(other.diverges_from(&twice), Divergence::Unrelated { .. }));
    }
}
