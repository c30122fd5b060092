//! Per-shard commit-log statistics.

use crate::constants::FLUSH_LATENCY_US_MAX;
use hdrhistogram::Histogram;

#[derive(Clone, Debug)]
pub struct LogStats {
    pub flush_count: u64,
    pub records_flushed: u64,
    pub bytes_flushed: u64,
    /// Time from the start of a flush round's writes to its fdatasync's end.
    pub flush_latency_us: Histogram<u64>,
    pub records_per_flush: Histogram<u64>,
    pub bytes_per_flush: Histogram<u64>,
}

impl Default for LogStats {
    fn default() -> Self {
        let histogram = |max| match Histogram::new_with_bounds(1, max, 3) {
            Ok(histogram) => histogram,
            Err(error) => panic!("histogram bounds 1..{max}: {error}"),
        };
        Self {
            flush_count: 0,
            records_flushed: 0,
            bytes_flushed: 0,
            flush_latency_us: histogram(FLUSH_LATENCY_US_MAX),
            records_per_flush: histogram(1 << 24),
            bytes_per_flush: histogram(1 << 34),
        }
    }
}

impl LogStats {
    pub fn record_flush(&mut self, records: u64, bytes: u64, latency_us: u64) {
        self.flush_count += 1;
        self.records_flushed += records;
        self.bytes_flushed += bytes;
        self.flush_latency_us.saturating_record(latency_us.max(1));
        self.records_per_flush.saturating_record(records.max(1));
        self.bytes_per_flush.saturating_record(bytes.max(1));
    }

    pub fn mean_records_per_flush(&self) -> f64 {
        if self.flush_count == 0 {
            return 0.0;
        }
        self.records_flushed as f64 / self.flush_count as f64
    }
}
