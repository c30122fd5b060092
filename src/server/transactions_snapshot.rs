//! The transaction table on disk and back. The table lives in the log
//! (halves and their op records, `transactions`); a snapshot only shortens
//! the replay at start-up, as the producer snapshot (`dedup_snapshot`) does
//! for the producer table.
//!
//! Invariant: a snapshot holds exactly what a crash at its position
//! `covered` (the log's flushed position) keeps, and, per queue (the four
//! transaction queues and the shard's own queues), an offset from which the
//! replay re-applies everything it does not hold:
//!
//! - a half is held only if its record ends at or below `covered`;
//! - its outcome only if the op record ends at or below `covered`
//!   (`HalfMessage::settled_end`; else it is held pending), and only the
//!   checks whose record ends there (`HalfMessage::check_records`): an op
//!   acknowledged in async flush mode is in the table before it is durable;
//! - each queue's offset is its first offset not durable at `covered`,
//!   lowered to where any append still in flight may land
//!   (`AppendsInFlight`): an op durable before the snapshot whose effect the
//!   table did not have yet is read again;
//! - re-applying a record the table holds changes nothing (a half already
//!   known at its position, the same outcome again, a check record already
//!   counted by its offset).
//!
//! `floor` is the lowest log position the replay may need (`covered`, or
//! lower for an append in flight): retention keeps it, with the oldest
//! pending half. A snapshot is ignored (full replay) when missing, damaged
//! or past the recovered log.
//!
//! Layout (little-endian): magic, covered, floor, queue count, then (queue
//! id u32, offset u64) per queue, half count, then per half its fields
//! (strings as u32 length + UTF-8), and a CRC32 of everything before it.

use super::snapshot_file::{self, put_str, Reader};
use super::topics::Topics;
use super::transactions::{
    replay_into, HalfMessage, TransactionState, TransactionTable, CHECK_QUEUE_ID, DISCARD_QUEUE_ID, HALF_QUEUE_ID,
    OP_QUEUE_ID,
};
use crate::storage::backend::Storage;
use crate::storage::{CommitLog, LogError};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

pub const TRANSACTIONS_SNAPSHOT_FILE: &str = "transactions.snapshot";
/// The transaction queues a snapshot gives an offset for, with the shard's
/// own queues (where commits are).
pub const TRANSACTION_QUEUES: [u32; 4] = [HALF_QUEUE_ID, OP_QUEUE_ID, DISCARD_QUEUE_ID, CHECK_QUEUE_ID];
const MAGIC: &[u8; 8] = b"RMQTXNS1";
/// The smallest a half takes in a snapshot (fixed fields, empty strings).
const HALF_BYTES_MIN: usize = 100;

/// A decoded snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Log position everything in the snapshot was durable at.
    pub covered: u64,
    /// Lowest log position the replay after it may read.
    pub floor: u64,
    /// Per queue id, the offset the replay starts at.
    pub queue_offsets: HashMap<u32, u64>,
    pub halves: Vec<HalfMessage>,
}

/// The snapshot of `table` as of the durable position `covered`: only
/// what a crash there keeps (see the module invariant).
pub fn encode(table: &TransactionTable, covered: u64, floor: u64, queue_offsets: &HashMap<u32, u64>) -> Vec<u8> {
    let mut out = snapshot_file::start(MAGIC, 64 + queue_offsets.len() * 12 + table.len() * 160);
    out.extend_from_slice(&covered.to_le_bytes());
    out.extend_from_slice(&floor.to_le_bytes());
    out.extend_from_slice(&(queue_offsets.len() as u64).to_le_bytes());
    for (queue_id, offset) in queue_offsets {
        out.extend_from_slice(&queue_id.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    let halves: Vec<HalfMessage> =
        table.halves().filter(|half| half.end <= covered).map(|half| durable_part(half, covered)).collect();
    out.extend_from_slice(&(halves.len() as u64).to_le_bytes());
    for half in &halves {
        put_str(&mut out, &half.transaction_id);
        put_str(&mut out, &half.topic);
        put_str(&mut out, &half.producer_group);
        out.extend_from_slice(&half.size_bytes.to_le_bytes());
        out.extend_from_slice(&half.target_queue_id.to_le_bytes());
        out.extend_from_slice(&half.tag_hash.to_le_bytes());
        out.extend_from_slice(&half.queue.to_le_bytes());
        let immunity_us = half.check_immunity.map_or(u64::MAX, |immunity| immunity.as_micros() as u64);
        let (state, committed_offset) = match half.state {
            TransactionState::Pending => (0u8, 0),
            TransactionState::Committed { offset } => (1, offset),
            TransactionState::RolledBack => (2, 0),
            TransactionState::Discarded => (3, 0),
        };
        for value in [
            half.position,
            half.end,
            half.msg_id.0,
            half.msg_id.1,
            half.store_timestamp_us,
            half.half_offset,
            immunity_us,
            committed_offset,
            half.settled_end,
            half.settled_at_us,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.push(state);
        out.extend_from_slice(&(half.check_records.len() as u32).to_le_bytes());
        for (offset, end) in &half.check_records {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
    }
    snapshot_file::seal(out)
}

/// The part of `half` a crash at `covered` keeps: an outcome or a check
/// whose op record ends past it is left out (the replay reads it again).
fn durable_part(half: &HalfMessage, covered: u64) -> HalfMessage {
    let mut durable = half.clone();
    durable.ending = false;
    if durable.state != TransactionState::Pending && durable.settled_end > covered {
        durable.state = TransactionState::Pending;
        durable.settled_end = 0;
        durable.settled_at_us = 0;
    }
    durable.check_records.retain(|(_, end)| *end <= covered);
    durable.checks_delivered = durable.check_records.len() as u32;
    durable
}

pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    let mut reader = Reader::open(bytes, MAGIC, "transactions")?;
    let (covered, floor) = (reader.u64()?, reader.u64()?);
    let queues = reader.count_u64(12)?;
    let mut queue_offsets = HashMap::with_capacity(queues);
    for _ in 0..queues {
        let queue_id = reader.u32()?;
        queue_offsets.insert(queue_id, reader.u64()?);
    }
    let count = reader.count_u64(HALF_BYTES_MIN)?;
    let mut halves = Vec::with_capacity(count);
    for _ in 0..count {
        let (transaction_id, topic, producer_group) = (reader.string()?, reader.string()?, reader.string()?);
        let (size_bytes, target_queue_id, tag_hash, queue) =
            (reader.u32()?, reader.u32()?, reader.u32()?, reader.u32()?);
        let mut values = [0u64; 10];
        for value in &mut values {
            *value = reader.u64()?;
        }
        let [position, end, msg_id_high, msg_id_low, store_timestamp_us, half_offset, immunity_us, committed_offset, settled_end, settled_at_us] =
            values;
        let state = match reader.u8()? {
            0 => TransactionState::Pending,
            1 => TransactionState::Committed { offset: committed_offset },
            2 => TransactionState::RolledBack,
            3 => TransactionState::Discarded,
            other => return Err(format!("unknown transaction state {other}")),
        };
        let checks = reader.count_u32(16)?;
        let mut check_records = Vec::with_capacity(checks);
        for _ in 0..checks {
            check_records.push((reader.u64()?, reader.u64()?));
        }
        halves.push(HalfMessage {
            transaction_id,
            position,
            size_bytes,
            end,
            target_queue_id,
            tag_hash,
            topic,
            queue,
            producer_group,
            msg_id: (msg_id_high, msg_id_low),
            store_timestamp_us,
            half_offset,
            check_immunity: (immunity_us != u64::MAX).then(|| Duration::from_micros(immunity_us)),
            checks_delivered: check_records.len() as u32,
            check_records,
            state,
            settled_end,
            settled_at_us,
            ending: false,
        });
    }
    reader.finish("transaction")?;
    Ok(Snapshot { covered, floor, queue_offsets, halves })
}

/// The snapshot on disk, or `None` (replay everything) when there is none
/// or it is damaged.
pub async fn load<S: Storage>(storage: &S, dir: &Path) -> Option<Snapshot> {
    snapshot_file::load(storage, &dir.join(TRANSACTIONS_SNAPSHOT_FILE), "transactions", decode).await
}

/// Rebuilds the transaction table: the snapshot (none: a full replay),
/// then every record of the transaction queues and `queue_ids` after it.
pub async fn recover<S: Storage>(
    snapshot: Option<Snapshot>,
    log: &CommitLog<S>,
    topics: &Topics,
    queue_ids: &[u32],
) -> Result<TransactionTable, LogError> {
    let Some(snapshot) = snapshot else {
        return super::transactions::recover(log, topics, queue_ids).await;
    };
    let mut table = TransactionTable::default();
    for half in snapshot.halves {
        table.restore(half);
    }
    // A queue the snapshot does not name (created after it) is read whole.
    replay_into(&mut table, log, topics, queue_ids, &snapshot.queue_offsets).await?;
    Ok(table)
}

pub async fn write<S: Storage>(storage: &S, dir: &Path, bytes: &[u8]) -> Result<(), LogError> {
    snapshot_file::write(storage, &dir.join(TRANSACTIONS_SNAPSHOT_FILE), bytes, "write transactions snapshot").await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::transactions::{append_op, fixtures, Op, OpRecord};
    use crate::storage::backend::MemoryStorage;
    use crate::storage::LogConfig;
    use std::collections::BTreeMap;

    fn half(transaction_id: &str, position: u64) -> HalfMessage {
        HalfMessage {
            transaction_id: transaction_id.into(),
            position,
            size_bytes: 100,
            end: position + 100,
            target_queue_id: 1024,
            tag_hash: 7,
            topic: "orders".into(),
            queue: 3,
            producer_group: "payments".into(),
            msg_id: (1, position),
            store_timestamp_us: 5_000,
            half_offset: position / 100,
            check_immunity: Some(Duration::from_secs(30)),
            checks_delivered: 0,
            check_records: Vec::new(),
            state: TransactionState::Pending,
            settled_end: 0,
            settled_at_us: 0,
            ending: false,
        }
    }

    fn op(state: TransactionState, end: u64) -> Option<OpRecord> {
        Some(OpRecord { state, offset: 0, end })
    }

    /// Each transaction's state, checks and position, by id.
    fn summary(table: &TransactionTable) -> BTreeMap<String, (TransactionState, u32, u64)> {
        table
            .halves()
            .map(|half| (half.transaction_id.clone(), (half.state, half.checks_delivered, half.position)))
            .collect()
    }

    #[test]
    fn a_snapshot_reads_back_as_it_was_written() {
        let mut table = TransactionTable::default();
        table.stored(half("pending", 100));
        table.checked("pending", 0, 250);
        table.checked("pending", 1, 260);
        table.stored(half("committed", 200));
        assert!(table.begin_end("committed", crate::server::transactions::Outcome::Commit).is_ok());
        table.finish_end("committed", op(TransactionState::Committed { offset: 9 }, 300));
        let mut rolled_back = half("rolled-back", 300);
        rolled_back.check_immunity = None;
        table.stored(rolled_back);
        table.settle("rolled-back", TransactionState::Discarded, 0);
        let queue_offsets = HashMap::from([(HALF_QUEUE_ID, 3), (1024, 1)]);
        let snapshot = decode(&encode(&table, 1000, 900, &queue_offsets)).expect("decodes");
        assert_eq!((snapshot.covered, snapshot.floor, &snapshot.queue_offsets), (1000, 900, &queue_offsets));
        let mut halves = snapshot.halves;
        halves.sort_by_key(|half| half.position);
        let mut expected: Vec<HalfMessage> = table.halves().cloned().collect();
        expected.sort_by_key(|half| half.position);
        assert_eq!(halves, expected);
        let mut restored = TransactionTable::default();
        halves.into_iter().for_each(|half| restored.restore(half));
        assert_eq!(summary(&restored), summary(&table));
        assert_eq!(restored.oldest_pending(), Some(100));
    }

    #[test]
    fn a_snapshot_never_holds_what_was_not_durable_at_its_position() {
        let mut table = TransactionTable::default();
        // Its rollback ends past the position: still pending in the snapshot.
        table.stored(half("late-outcome", 100));
        table.settle("late-outcome", TransactionState::RolledBack, 350);
        // One check durable, one not.
        table.stored(half("checked", 150));
        table.checked("checked", 0, 280);
        table.checked("checked", 1, 320);
        // Its own record ends past the position: not in the snapshot at all.
        table.stored(half("late-half", 250));
        table.stored(half("durable", 180));
        table.settle("durable", TransactionState::Committed { offset: 4 }, 290);
        let snapshot = decode(&encode(&table, 300, 300, &HashMap::new())).expect("decodes");
        let mut restored = TransactionTable::default();
        snapshot.halves.into_iter().for_each(|half| restored.restore(half));
        let state = |id: &str| restored.get(id).map(|half| (half.state, half.checks_delivered));
        assert_eq!(state("late-outcome"), Some((TransactionState::Pending, 0)));
        assert_eq!(state("checked"), Some((TransactionState::Pending, 1)));
        assert_eq!(state("late-half"), None);
        assert_eq!(state("durable"), Some((TransactionState::Committed { offset: 4 }, 0)));
        assert_eq!(restored.oldest_pending(), Some(100));
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let mut table = TransactionTable::default();
        table.stored(half("a", 100));
        table.checked("a", 0, 150);
        let bytes = encode(&table, 1000, 1000, &HashMap::from([(HALF_QUEUE_ID, 1)]));
        for at in [0, 9, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x20;
            assert!(decode(&damaged).is_err(), "a flip at {at} is noticed");
        }
        assert!(decode(&bytes[..bytes.len() - 5]).is_err(), "a short snapshot is refused");
        assert!(decode(b"").is_err());
    }

    async fn append_half(log: &CommitLog<MemoryStorage>, transaction_id: &str, number: u64) -> (u64, u32) {
        let (position, size, _) = fixtures::append_half(log, transaction_id, number).await;
        (position, size)
    }

    #[test]
    fn the_table_comes_back_from_a_snapshot_and_the_records_after_it() {
        let (topics, target) = fixtures::orders();
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async move {
            let log = CommitLog::open(MemoryStorage::new(), LogConfig::new("/memory")).await.expect("open");
            let halves = std::cell::RefCell::new(HashMap::new());
            for (number, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
                let appended = append_half(&log, id, number as u64).await;
                halves.borrow_mut().insert(id, appended);
            }
            let op_on = |op: Op, id: &'static str| {
                let (position, size) = halves.borrow()[id];
                let log = &log;
                async move { append_op(log, op, id, position, size, 0).await.expect("op") }
            };
            op_on(Op::Commit { target_queue_id: target }, "a").await;
            op_on(Op::Checked, "c").await;
            // The snapshot: the table then, as of the durable position.
            let mut at_snapshot = transactions_recover(&log, &topics, target).await;
            // A settled transaction only the snapshot knows (its records gone
            // from the log, say to retention).
            let mut gone = half("gone", 1);
            gone.end = 2;
            at_snapshot.restore(gone);
            at_snapshot.settle("gone", TransactionState::RolledBack, 0);
            let covered = log.positions().flushed;
            let queue_offsets: HashMap<u32, u64> =
                TRANSACTION_QUEUES.into_iter().chain([target]).map(|id| (id, log.durable_end_offset(id))).collect();
            let snapshot = encode(&at_snapshot, covered, covered, &queue_offsets);
            // After it: a new half, outcomes and checks of older ones.
            let appended = append_half(&log, "e", 4).await;
            halves.borrow_mut().insert("e", appended);
            op_on(Op::Rollback, "b").await;
            op_on(Op::Checked, "c").await;
            op_on(Op::Commit { target_queue_id: target }, "d").await;
            op_on(Op::Checked, "e").await;

            let from_snapshot = recover(Some(decode(&snapshot).expect("decodes")), &log, &topics, &[target]).await;
            let from_snapshot = from_snapshot.expect("recovers");
            let from_log = recover(None, &log, &topics, &[target]).await.expect("recovers");
            let mut expected = summary(&from_log);
            assert_eq!(expected["a"].0, TransactionState::Committed { offset: 0 });
            assert_eq!(expected["b"].0, TransactionState::RolledBack);
            assert_eq!((expected["c"].0, expected["c"].1), (TransactionState::Pending, 2));
            assert_eq!(expected["d"].0, TransactionState::Committed { offset: 1 });
            assert_eq!((expected["e"].0, expected["e"].1), (TransactionState::Pending, 1));
            assert!(!expected.contains_key("gone"), "the log alone never knew it");
            expected.insert("gone".into(), (TransactionState::RolledBack, 0, 1));
            assert_eq!(summary(&from_snapshot), expected, "the snapshot and the records after it");
            assert_eq!(from_snapshot.oldest_pending(), from_log.oldest_pending());

            // A replay from lower offsets (appends in flight at the snapshot)
            // reads records the snapshot holds: nothing is counted twice.
            let mut early = decode(&snapshot).expect("decodes");
            early.queue_offsets.values_mut().for_each(|offset| *offset = 0);
            let from_early = recover(Some(early), &log, &topics, &[target]).await.expect("recovers");
            assert_eq!(summary(&from_early), expected);
            log.close().await.expect("close");
        });
    }

    async fn transactions_recover(log: &CommitLog<MemoryStorage>, topics: &Topics, target: u32) -> TransactionTable {
        recover(None, log, topics, &[target]).await.expect("recovers")
    }
}
