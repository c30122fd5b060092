//! Per-shard commit-log statistics.

use crate::constants::FLUSH_LATENCY_US_MAX;
use hdrhistogram::Histogram;

/// A histogram of latencies in microseconds, from 1 us to a minute, with 3
/// significant digits: what every latency in the project is recorded in.
pub fn latency_histogram_us() -> Histogram<u64> {
    histogram_up_to(FLUSH_LATENCY_US_MAX)
}

fn histogram_up_to(max: u64) -> Histogram<u64> {
    match Histogram::new_with_bounds(1, max, 3) {
        Ok(histogram) => histogram,
        Err(error) => panic!("histogram bounds 1..{max}: {error}"),
    }
}

#[derive(Clone, Debug)]
pub struct LogStats {
    pub flush_count: u64,
    pub records_flushed: u64,
    pub bytes_flushed: u64,
    /// Of `bytes_flushed`, what is not records: each write's batch marker
    /// and the zeros that pad it to whole blocks.
    pub padding_bytes_flushed: u64,
    /// Time from the start of a flush round's writes to its fdatasync's end.
    pub flush_latency_us: Histogram<u64>,
    pub records_per_flush: Histogram<u64>,
    pub bytes_per_flush: Histogram<u64>,
}

impl Default for LogStats {
    fn default() -> Self {
        Self {
            flush_count: 0,
            records_flushed: 0,
            bytes_flushed: 0,
            padding_bytes_flushed: 0,
            flush_latency_us: latency_histogram_us(),
            records_per_flush: histogram_up_to(1 << 24),
            bytes_per_flush: histogram_up_to(1 << 34),
        }
    }
}

impl LogStats {
    pub fn record_flush(&mut self, records: u64, bytes: u64, padding_bytes: u64, latency_us: u64) {
        self.flush_count += 1;
        self.records_flushed += records;
        self.bytes_flushed += bytes;
        self.padding_bytes_flushed += padding_bytes;
        self.flush_latency_us.saturating_record(latency_us.max(1));
        self.records_per_flush.saturating_record(records.max(1));
        self.bytes_per_flush.saturating_record(bytes.max(1));
    }
}
