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
    mut apply: impl FnMut(&StoredRecord, &VerifiedMessage),
) -> Result<(), LogError> {
    log.replay(queue_id, from, |record| match verify_message(record.message()) {
        Ok(message) => apply(record, &message),
        Err(error) => {
            tracing::warn!(%error, queue_id, offset = record.queue_offset, "skipping an unreadable stored message")
        }
    })
    .await
}
