//! The shards' figures for `--metrics-listen`. Each shard counts what its
//! handlers do in plain `Cell`s (`ShardCounters`, no lock, no atomic on the
//! produce or fetch path) and, every `PUBLISH_INTERVAL` from its own
//! executor, copies them with its other figures (log stats, positions,
//! tables, committed offsets) into a `ShardFigures` on the shared
//! `MetricsBoard`. The HTTP thread (`metrics_http`) only reads the board
//! and encodes it (`metrics_text`): a scrape never touches a shard.

use super::shard::Shard;
use crate::storage::LogStats;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How often each shard publishes its figures: a scrape sees them at most
/// this old.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// Upper bounds of the fdatasync latency buckets, in microseconds (the last
/// bucket, `+Inf`, is implied).
pub const FLUSH_LATENCY_BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];

/// What a shard's handlers count as they go (one executor: plain cells).
#[derive(Default)]
pub struct ShardCounters {
    pub produced_messages: Cell<u64>,
    pub produced_bytes: Cell<u64>,
    pub fetched_messages: Cell<u64>,
    pub fetched_bytes: Cell<u64>,
    /// Send-backs stored into a retry topic / a dead-letter topic.
    pub retries_sent: Cell<u64>,
    pub dead_letters_sent: Cell<u64>,
    /// Check-backs a live producer acknowledged.
    pub checks_delivered: Cell<u64>,
    /// Changes (offset commits, transaction ends, send-backs) a sync
    /// primary answered without its standby's confirmation.
    pub unconfirmed_changes: Cell<u64>,
    /// Request body bytes taken off connections and not yet answered.
    pub request_bytes_in_flight: Cell<u64>,
}

impl ShardCounters {
    pub fn add(cell: &Cell<u64>, amount: u64) {
        cell.set(cell.get().wrapping_add(amount));
    }

    /// A send-back stored a new timer entry (`send_back`): a retry or, past
    /// the consumer's reconsume times, a dead letter. A duplicate adds
    /// nothing.
    pub fn sent_back(&self, dead_letter: bool, duplicate: bool) {
        if duplicate {
            return;
        }
        Self::add(if dead_letter { &self.dead_letters_sent } else { &self.retries_sent }, 1);
    }
}

/// The fdatasync latency histogram of a shard, in fixed buckets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyBuckets {
    /// Per bucket of `FLUSH_LATENCY_BOUNDS_US` and then `+Inf`, not
    /// cumulative.
    pub counts: Vec<u64>,
    pub count: u64,
    /// The histogram's mean times its count: exact to its resolution (3
    /// significant digits), not to the microsecond.
    pub sum_us: f64,
}

impl LatencyBuckets {
    /// Each recorded value counts once, in the bucket of the highest value
    /// its histogram slot stands for (within 0.1%).
    pub fn of(histogram: &hdrhistogram::Histogram<u64>) -> Self {
        let mut counts = vec![0; FLUSH_LATENCY_BOUNDS_US.len() + 1];
        for slot in histogram.iter_recorded() {
            let value = slot.value_iterated_to();
            let bucket = FLUSH_LATENCY_BOUNDS_US.iter().position(|bound| value <= *bound);
            counts[bucket.unwrap_or(FLUSH_LATENCY_BOUNDS_US.len())] += slot.count_since_last_iteration();
        }
        let count = histogram.len();
        Self { counts, count, sum_us: histogram.mean() * count as f64 }
    }
}

/// A committed offset of a group on a queue this shard owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueOffsetFigures {
    pub group: String,
    pub topic: String,
    pub queue: u32,
    pub committed: u64,
    /// The queue's visible end minus `committed` (0 if past it).
    pub lag: u64,
}

/// One shard's figures at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardFigures {
    pub shard: u32,
    pub produced_messages: u64,
    pub produced_bytes: u64,
    pub fetched_messages: u64,
    pub fetched_bytes: u64,
    pub fdatasyncs: u64,
    pub records_flushed: u64,
    pub flush_latency: LatencyBuckets,
    pub flushed_position: u64,
    pub visible_position: u64,
    pub connections: u64,
    pub requests_in_flight: u64,
    pub request_bytes_in_flight: u64,
    pub transactions_pending: u64,
    pub checks_delivered: u64,
    pub timers_pending: u64,
    pub retries_sent: u64,
    pub dead_letters_sent: u64,
    pub unconfirmed_changes: u64,
    /// 1 on a standby, 0 on a primary.
    pub standby: u64,
    pub epoch: u64,
    pub replication_lag_bytes: u64,
    pub replication_lag_ms: u64,
    /// On a primary: 1 while a standby asks for bytes.
    pub standby_connected: u64,
    pub offsets: Vec<QueueOffsetFigures>,
}

/// Where the shards publish and the HTTP thread reads: one slot a shard,
/// empty until its first publication.
#[derive(Debug, Default)]
pub struct MetricsBoard {
    shards: Mutex<Vec<Option<ShardFigures>>>,
}

impl MetricsBoard {
    pub fn new(shard_count: u32) -> Self {
        Self { shards: Mutex::new(vec![None; shard_count as usize]) }
    }

    pub fn publish(&self, figures: ShardFigures) {
        let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = shards.get_mut(figures.shard as usize) {
            *slot = Some(figures);
        }
    }

    /// The figures every shard published last, by shard.
    pub fn read(&self) -> Vec<ShardFigures> {
        self.shards.lock().unwrap_or_else(PoisonError::into_inner).iter().flatten().cloned().collect()
    }
}

/// Publishes the shard's figures every `PUBLISH_INTERVAL`, until dropped;
/// without a board (no `--metrics-listen`), nothing.
pub async fn publish(shard: Rc<Shard>, board: Option<Arc<MetricsBoard>>) {
    let Some(board) = board else { return };
    loop {
        board.publish(figures(&shard));
        glommio::timer::sleep(PUBLISH_INTERVAL).await;
    }
}

/// The shard's figures now, in one synchronous step.
pub fn figures(shard: &Shard) -> ShardFigures {
    let counters = &shard.counters;
    let (fdatasyncs, records_flushed, flush_latency) = shard.log.with_stats(|stats: &LogStats| {
        (stats.flush_count, stats.records_flushed, LatencyBuckets::of(&stats.flush_latency_us))
    });
    let positions = shard.log.positions();
    let lag_bytes = super::admin::replication_lag_bytes(shard);
    ShardFigures {
        shard: shard.id,
        produced_messages: counters.produced_messages.get(),
        produced_bytes: counters.produced_bytes.get(),
        fetched_messages: counters.fetched_messages.get(),
        fetched_bytes: counters.fetched_bytes.get(),
        fdatasyncs,
        records_flushed,
        flush_latency,
        flushed_position: positions.flushed,
        // On a sync primary consumers see no further than the standby
        // confirmed (or a request gave up waiting for it).
        visible_position: positions.visible.min(super::replication::release::consumer_view(shard).cap()),
        connections: shard.connections.get() as u64,
        requests_in_flight: shard.requests_in_flight.get() as u64,
        request_bytes_in_flight: counters.request_bytes_in_flight.get(),
        transactions_pending: shard.transactions.borrow().pending_count() as u64,
        checks_delivered: counters.checks_delivered.get(),
        timers_pending: shard.timers.borrow().pending_count() as u64,
        retries_sent: counters.retries_sent.get(),
        dead_letters_sent: counters.dead_letters_sent.get(),
        unconfirmed_changes: counters.unconfirmed_changes.get(),
        standby: u64::from(shard.replica.is_standby()),
        epoch: shard.replica.epoch(),
        replication_lag_bytes: lag_bytes,
        replication_lag_ms: shard.replica.caught_up.lag(lag_bytes).as_millis() as u64,
        standby_connected: u64::from(shard.replica.confirmations.connected()),
        offsets: queue_offsets(shard),
    }
}

/// Every committed offset on a queue this shard owns, with its lag: the
/// first `METRICS_OFFSET_SERIES_MAX` in group, topic and queue order, so a
/// scrape stays bounded however many groups commit.
fn queue_offsets(shard: &Shard) -> Vec<QueueOffsetFigures> {
    let topics = shard.topics.borrow();
    let mut figures: Vec<QueueOffsetFigures> = shard
        .offsets
        .borrow()
        .committed()
        .filter_map(|((group, topic_name, queue), committed)| {
            let topic = topics.get(topic_name)?;
            let owner = topic.queue_shards.get(*queue as usize)?;
            (*owner == shard.id).then(|| {
                let end = super::replication::release::consumer_view(shard).end_offset(topic.queue_id(*queue));
                QueueOffsetFigures {
                    group: group.clone(),
                    topic: topic_name.clone(),
                    queue: *queue,
                    committed,
                    lag: end.saturating_sub(committed),
                }
            })
        })
        .collect();
    figures.sort_by(|a, b| (&a.group, &a.topic, a.queue).cmp(&(&b.group, &b.topic, b.queue)));
    figures.truncate(crate::constants::METRICS_OFFSET_SERIES_MAX);
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_latency_lands_in_its_bucket_once_and_the_total_is_kept() {
        let mut histogram = crate::storage::latency_histogram_us();
        for value in [40, 50, 51, 900, 7_000_000] {
            histogram.record(value).expect("in range");
        }
        let buckets = LatencyBuckets::of(&histogram);
        assert_eq!(buckets.count, 5);
        assert_eq!(buckets.counts.iter().sum::<u64>(), 5);
        assert_eq!(buckets.counts[0], 2, "40 and 50 are at most 50 us: {buckets:?}");
        assert_eq!(buckets.counts[1], 1, "51 us: {buckets:?}");
        assert_eq!(buckets.counts[4], 1, "900 us is at most 1 ms: {buckets:?}");
        assert_eq!(buckets.counts[FLUSH_LATENCY_BOUNDS_US.len()], 1, "7 s is past every bound: {buckets:?}");
        let sum = 40.0 + 50.0 + 51.0 + 900.0 + 7_000_000.0;
        assert!((buckets.sum_us - sum).abs() / sum < 0.002, "{} vs {sum}", buckets.sum_us);
    }

    #[test]
    fn a_board_keeps_the_last_figures_of_each_shard() {
        let board = MetricsBoard::new(2);
        assert!(board.read().is_empty(), "nothing before the first publication");
        board.publish(ShardFigures { shard: 1, produced_messages: 3, ..ShardFigures::default() });
        board.publish(ShardFigures { shard: 1, produced_messages: 5, ..ShardFigures::default() });
        board.publish(ShardFigures { shard: 7, ..ShardFigures::default() });
        let read = board.read();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].produced_messages, 5);
    }
}
