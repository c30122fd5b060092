//! The shards' published figures (`metrics::ShardFigures`) in the
//! Prometheus text format, as `prometheus-client` encodes it (OpenMetrics
//! text: counters end in `_total`, the page in `# EOF`). The figures are
//! copies made by the shards; encoding them is a `Collector` run per scrape.

use super::metrics::{QueueOffsetFigures, ShardFigures, FLUSH_LATENCY_BOUNDS_US};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;

/// Every metric name starts with this and `_`.
pub const PREFIX: &str = "ringmq";

/// The content type of `encode`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The text a scrape answers for `shards`.
pub fn encode(shards: Vec<ShardFigures>) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(Figures(shards)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

type Read = fn(&ShardFigures) -> u64;
type ReadQueue = fn(&QueueOffsetFigures) -> u64;

/// Per-shard counters: name (before `_total`), help, value.
const SHARD_COUNTERS: [(&str, &str, Read); 10] = [
    ("produced_messages", "Messages stored by produce requests (duplicates not counted).", |f| f.produced_messages),
    ("produced_bytes", "Bytes of the messages stored by produce requests.", |f| f.produced_bytes),
    ("fetched_messages", "Records returned by fetch requests.", |f| f.fetched_messages),
    ("fetched_bytes", "Record bytes returned by fetch requests.", |f| f.fetched_bytes),
    ("fdatasyncs", "Flush rounds, each covered by one fdatasync.", |f| f.fdatasyncs),
    ("records_flushed", "Records (appends) made durable by those fdatasyncs.", |f| f.records_flushed),
    ("checks_delivered", "Transaction check-backs a live producer acknowledged.", |f| f.checks_delivered),
    ("retries_sent", "Send-backs stored for the group's retry topic.", |f| f.retries_sent),
    ("dead_letters_sent", "Send-backs stored for the group's dead-letter topic.", |f| f.dead_letters_sent),
    (
        "unconfirmed_changes",
        "Offset commits, transaction ends and send-backs a sync primary answered without its standby's confirmation.",
        |f| f.unconfirmed_changes,
    ),
];

/// Per-shard gauges: name, help, value.
const SHARD_GAUGES: [(&str, &str, Read); 11] = [
    ("flushed_position_bytes", "Log position every byte below which is durable.", |f| f.flushed_position),
    ("visible_position_bytes", "Log position consumers may read up to.", |f| f.visible_position),
    ("connections", "Client connections open.", |f| f.connections),
    ("requests_in_flight", "Requests read and not yet answered.", |f| f.requests_in_flight),
    ("request_bytes_in_flight", "Body bytes of the requests in flight.", |f| f.request_bytes_in_flight),
    ("transactions_pending", "Half messages with no outcome yet.", |f| f.transactions_pending),
    ("timers_pending", "Delayed messages, retries and dead letters not yet delivered.", |f| f.timers_pending),
    ("standby", "1 on a standby (follows its primary), 0 on a primary.", |f| f.standby),
    ("epoch", "The broker's epoch: one more at each promotion.", |f| f.epoch),
    ("replication_lag_bytes", "Durable log bytes the standby lacks (as this side last heard).", |f| {
        f.replication_lag_bytes
    }),
    ("standby_connected", "On a primary: 1 while a standby asks for bytes.", |f| f.standby_connected),
];

#[derive(Debug)]
struct Figures(Vec<ShardFigures>);

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for (name, help, read) in SHARD_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for figures in &self.0 {
                ConstCounter::new(read(figures)).encode(family.encode_family(&shard_label(figures))?)?;
            }
        }
        for (name, help, read) in SHARD_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for figures in &self.0 {
                gauge(read(figures)).encode(family.encode_family(&shard_label(figures))?)?;
            }
        }
        let help = "Time since standby and primary last had the same bytes durable; 0 while they do.";
        let mut family = encoder.encode_descriptor("replication_lag_seconds", help, None, MetricType::Gauge)?;
        for figures in &self.0 {
            let seconds = figures.replication_lag_ms as f64 / 1000.0;
            ConstGauge::new(seconds).encode(family.encode_family(&shard_label(figures))?)?;
        }
        let help = "Mean records (appends) per fdatasync since the start.";
        let mut family = encoder.encode_descriptor("appends_per_fdatasync", help, None, MetricType::Gauge)?;
        for figures in &self.0 {
            let mean = figures.records_flushed as f64 / figures.fdatasyncs.max(1) as f64;
            ConstGauge::new(mean).encode(family.encode_family(&shard_label(figures))?)?;
        }
        let help = "Time from a flush round's first write to its fdatasync's end (bucket edges within 0.1%).";
        let mut family = encoder.encode_descriptor("fdatasync_seconds", help, None, MetricType::Histogram)?;
        for figures in &self.0 {
            FlushLatency(figures).encode(family.encode_family(&shard_label(figures))?)?;
        }
        encode_offsets(&mut encoder, &self.0)
    }
}

fn encode_offsets(encoder: &mut DescriptorEncoder, shards: &[ShardFigures]) -> Result<(), fmt::Error> {
    let families: [(&str, &str, ReadQueue); 2] = [
        ("group_committed_offset", "The group's committed offset on the queue.", |q| q.committed),
        ("group_lag_messages", "The queue's visible end minus the group's committed offset.", |q| q.lag),
    ];
    for (name, help, read) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for figures in shards {
            for queue in &figures.offsets {
                let labels = [
                    ("shard", figures.shard.to_string()),
                    ("group", queue.group.clone()),
                    ("topic", queue.topic.clone()),
                    ("queue", queue.queue.to_string()),
                ];
                gauge(read(queue)).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

fn shard_label(figures: &ShardFigures) -> [(&'static str, String); 1] {
    [("shard", figures.shard.to_string())]
}

fn gauge(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

/// A shard's fdatasync latency buckets as a Prometheus histogram in seconds.
#[derive(Debug)]
struct FlushLatency<'a>(&'a ShardFigures);

impl EncodeMetric for FlushLatency<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let latency = &self.0.flush_latency;
        let bounds = FLUSH_LATENCY_BOUNDS_US.iter().map(|us| *us as f64 / 1e6).chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(latency.counts.iter().copied().chain(std::iter::repeat(0))).collect();
        encoder.encode_histogram::<NoLabelSet>(latency.sum_us / 1e6, latency.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
