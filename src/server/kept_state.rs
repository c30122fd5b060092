//! What a shard keeps beside its log and rebuilds from it (with the help
//! of its snapshots): consumer offsets, the producer table, the transaction
//! table and the timers. At start, and when a standby is promoted (a
//! standby's tables do not follow what it replicates).

use super::dedup::ProducerTable;
use super::offsets::{self, Offsets};
use super::shard::{self, Shard};
use super::timers::{self, TimerTable};
use super::topics::Topics;
use super::transactions::{self, TransactionTable};
use super::{dedup_snapshot, transactions_snapshot, ServerConfig};
use crate::storage::backend::DmaStorage;
use crate::storage::CommitLog;
use std::path::Path;

pub struct KeptState {
    pub offsets: Offsets,
    pub offsets_floor: u64,
    pub producers: ProducerTable,
    pub producers_floor: u64,
    pub transactions: TransactionTable,
    pub transactions_snapshot_floor: u64,
    pub timers: TimerTable,
}

/// Rebuilds shard `id`'s tables from its snapshots in `dir` and its log.
pub async fn rebuild(
    id: u32,
    config: &ServerConfig,
    dir: &Path,
    log: &CommitLog<DmaStorage>,
    topics: &Topics,
) -> Result<KeptState, String> {
    let mut offsets = Offsets::recover(&DmaStorage, dir, log).await.map_err(|error| error.to_string())?;
    offsets.clamp_to_queue_ends(|topic, queue| {
        topics.get(topic).map(|topic| log.visible_end_offset(topic.queue_id(queue)))
    });
    let offsets_floor =
        offsets::retention_floor(log, offsets.covered_by_snapshot()).await.map_err(|error| error.to_string())?;
    let mut snapshot = dedup_snapshot::load(&DmaStorage, dir).await;
    let recovered_end = log.positions().flushed;
    if snapshot.covered > recovered_end {
        // The log was cut below the snapshot (a repair or a truncation): it
        // would vouch for sends the log no longer holds.
        tracing::warn!(
            covered = snapshot.covered,
            recovered_end,
            "the producer snapshot reaches past the recovered log; replaying the whole log instead"
        );
        snapshot = dedup_snapshot::Snapshot::default();
    }
    let producers_floor = snapshot.covered;
    let queue_ids = shard::owned_queue_ids(topics, id);
    let producer_queue_ids: Vec<u32> = queue_ids.iter().copied().chain([offsets::DELAY_QUEUE_ID]).collect();
    let producers = dedup_snapshot::recover(snapshot, log, &producer_queue_ids, config.producers_max)
        .await
        .map_err(|error| format!("rebuilding the producer table: {error}"))?;
    tracing::info!(producers = producers.producer_count(), "producer table rebuilt from the log");
    let mut transactions_snapshot = transactions_snapshot::load(&DmaStorage, dir).await;
    if let Some(covered) = transactions_snapshot.as_ref().map(|snapshot| snapshot.covered) {
        if covered > recovered_end {
            tracing::warn!(
                covered,
                recovered_end,
                "the transactions snapshot reaches past the recovered log; replaying the whole log instead"
            );
            transactions_snapshot = None;
        }
    }
    let transactions_snapshot_floor = transactions_snapshot.as_ref().map_or(u64::MAX, |snapshot| snapshot.floor);
    let transactions = transactions_snapshot::recover(transactions_snapshot, log, topics, &queue_ids)
        .await
        .map_err(|error| format!("rebuilding the transaction table: {error}"))?;
    tracing::info!(
        transactions = transactions.len(),
        pending = transactions.pending_count(),
        "transaction table rebuilt from the log"
    );
    let timers = timers::recover(log, &config.delay_levels, crate::storage::now_us() / 1000)
        .await
        .map_err(|error| format!("rebuilding the timers: {error}"))?;
    tracing::info!(pending = timers.pending_count(), "timers rebuilt from the log");
    Ok(KeptState {
        offsets,
        offsets_floor,
        producers,
        producers_floor,
        transactions,
        transactions_snapshot_floor,
        timers,
    })
}

impl KeptState {
    /// Puts freshly rebuilt tables in place of a running shard's.
    pub fn install(self, shard: &Shard) {
        *shard.offsets.borrow_mut() = self.offsets;
        *shard.dedup.borrow_mut() = self.producers;
        *shard.transactions.borrow_mut() = self.transactions;
        *shard.timers.borrow_mut() = self.timers;
        shard.transactions_snapshot_floor.set(self.transactions_snapshot_floor);
        shard.set_floor(&shard.offsets_floor, self.offsets_floor);
        shard.set_floor(&shard.producers_floor, self.producers_floor);
        shard.timers_changed();
        transactions::update_floor(shard);
    }
}
