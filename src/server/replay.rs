//! Rebuilding state kept in the log from the producers' messages.

use crate::storage::backend::Storage;
use crate::storage::{CommitLog, LogError, StoredRecord};
use crate::wire::{verify_message, VerifiedMessage};

/// Hands every stored message of `queue_id` from `from` to `apply`, with
/// its record. Stored messages were verified when they arrived and each
/// read checks the CRC: one that fails now is skipped, logged.
pub async fn replay_messages<S: Storage>(
    log: &CommitLog<S>,
    queue_id: u32,
    from: u64,
    apply: impl FnMut(&StoredRecord, &VerifiedMessage),
) -> Result<(), LogError> {
    log.replay(queue_id, from, verified(queue_id, apply)).await
}

/// One read of `replay_messages` (`CommitLog::replay_once`): the offset to
/// go on from, or `None` once the queue has nothing more.
pub async fn replay_messages_once<S: Storage>(
    log: &CommitLog<S>,
    queue_id: u32,
    from: u64,
    (count_max, bytes_max): (usize, usize),
    apply: impl FnMut(&StoredRecord, &VerifiedMessage),
) -> Result<Option<u64>, LogError> {
    log.replay_once(queue_id, from, count_max, bytes_max, verified(queue_id, apply)).await
}

fn verified(queue_id: u32, mut apply: impl FnMut(&StoredRecord, &VerifiedMessage)) -> impl FnMut(&StoredRecord) {
    move |record| match verify_message(record.message()) {
        Ok(message) => apply(record, &message),
        Err(error) => {
            tracing::warn!(%error, queue_id, offset = record.queue_offset, "skipping an unreadable stored message")
        }
    }
}
