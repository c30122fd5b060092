//! What a sync primary shows its consumers and how its acknowledged state
//! changes wait for the standby.
//!
//! Consumers see a record once the standby confirmed it or a request that
//! wrote it gave up waiting (`StandbyConfirmations::released`). A record no
//! request waits for (a due delayed message, a check-back's op record) is
//! released by `run` once the standby confirmed it or, failing that,
//! `sync_standby_timeout_ms + UNWAITED_RELEASE_GRACE` after it became
//! durable: a second after a request waiting for the same record gives up,
//! so a waiting producer is answered before its record shows.

use super::{Confirmation, Replication};
use crate::server::long_poll::ConsumerView;
use crate::server::metrics::ShardCounters;
use crate::server::shard::Shard;
use crate::storage::backend::DmaStorage;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How much longer than a request the release of unwaited records waits.
const UNWAITED_RELEASE_GRACE: Duration = Duration::from_secs(1);

/// At most one warning per shard this often about changes answered without
/// the standby's confirmation (the counter has them all).
const UNCONFIRMED_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Whether this shard's consumers see only what the standby holds.
pub fn is_sync_primary(shard: &Shard) -> bool {
    !shard.replica.is_standby() && shard.replica.replication() == Replication::Sync
}

/// The log as this shard's consumers see it.
pub fn consumer_view(shard: &Shard) -> ConsumerView<'_, DmaStorage> {
    let released = is_sync_primary(shard).then_some(&shard.replica.confirmations);
    ConsumerView { log: &shard.log, released }
}

/// Starts releasing on a shard that becomes (or starts as) a sync primary:
/// what its log holds already is released (nothing waits for it any more;
/// after a restart nobody knows what the standby holds) and the index hold
/// starts there. `None` in other modes, where no cap applies.
pub fn start(shard: &Rc<Shard>) -> Option<glommio::Task<()>> {
    if !is_sync_primary(shard) {
        shard.log.hold_index_at(u64::MAX);
        return None;
    }
    let flushed = shard.log.positions().flushed;
    shard.replica.confirmations.release(flushed);
    shard.log.hold_index_at(flushed);
    Some(glommio::spawn_local(run(shard.clone())))
}

/// Releases what no request waits for, one durable position at a time, and
/// moves the log's index hold behind it (always a position the log was
/// flushed to, so a checkpoint never lands inside a write).
async fn run(shard: Rc<Shard>) {
    let confirmations = &shard.replica.confirmations;
    let patience = shard.config.replication.sync_standby_timeout + UNWAITED_RELEASE_GRACE;
    loop {
        let released = confirmations.released();
        if shard.log.wait_durable(released.saturating_add(1)).await.is_err() {
            // A stopped log makes nothing durable again.
            return;
        }
        let target = shard.log.positions().flushed;
        let _ = confirmations.confirm_or_release(target, patience).await;
        shard.log.hold_index_at(target);
    }
}

/// In sync mode, waits for the standby to hold a record ending at `end`
/// that is durable here: `None` in other modes. A wait that gives up
/// releases `end` to consumers (the requester is told it is stored).
pub async fn await_standby(shard: &Shard, end: u64) -> Option<Confirmation> {
    if !is_sync_primary(shard) {
        return None;
    }
    let timeout = shard.config.replication.sync_standby_timeout;
    Some(shard.replica.confirmations.confirm_or_release(end, timeout).await)
}

/// A state change durable here (its record ends at `end`) is answered, in
/// sync mode, once the standby holds it too. Its answer has no status for
/// "stored, not on the standby": after `sync_standby_timeout_ms` (or at
/// once with no standby) it is answered as done, kept here, counted in
/// `unconfirmed_changes` and warned about at most every 10 s.
pub async fn confirm_change(shard: &Shard, end: u64, change: &'static str) {
    let confirmation = await_standby(shard, end).await;
    if matches!(confirmation, None | Some(Confirmation::Confirmed)) {
        return;
    }
    ShardCounters::add(&shard.counters.unconfirmed_changes, 1);
    let warned = &shard.replica.unconfirmed_warned;
    if warned.get().is_none_or(|at| at.elapsed() >= UNCONFIRMED_WARNING_EVERY) {
        warned.set(Some(Instant::now()));
        tracing::warn!(
            shard = shard.id,
            change,
            ?confirmation,
            unconfirmed = shard.counters.unconfirmed_changes.get(),
            "answered a change the standby has not confirmed: kept on this primary only"
        );
    }
}
