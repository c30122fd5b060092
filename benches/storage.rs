//! Storage benchmark: the raw disk and the commit log, measured in the same
//! run on the same directory, with the log's figures as ratios of the raw
//! ones. Not a test: nothing here asserts on speed.
//!
//! `cargo bench --bench storage` (data in ./target/bench-data, or
//! RINGMQ_BENCH_DIR). RINGMQ_BENCH_SECONDS sets each phase's length (3).
//! The last line printed is one JSON object with every figure.
//! RINGMQ_BENCH_INDEX_ONLY=1 runs only the index memory phase.

use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringmq::storage::backend::DmaStorage;
use ringmq::storage::{disk_probe, latency_histogram_us, AppendRequest, CommitLog, LogConfig};
use serde_json::json;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

const RECORD_MESSAGE_BYTES: usize = 1024;
const RAW_FSYNC_ITERATIONS: usize = 3000;
const RAW_BANDWIDTH_BYTES: u64 = 1024 * 1024 * 1024;
const APPENDER_COUNTS: [usize; 3] = [1, 16, 256];
/// A phase stops at its time or at this many bytes, whichever comes first,
/// so it crosses at most one (prepared) segment boundary.
const PHASE_BYTES_MAX: u64 = 900 * 1024 * 1024;
/// The index memory phase: this many small records, spread over a few queues.
const INDEX_RECORDS: u64 = 1_000_000;
const INDEX_QUEUES: u32 = 4;
const INDEX_MESSAGE_BYTES: usize = 16;
/// Records placed before waiting for them to be durable.
const INDEX_BURST: u64 = 10_000;

struct Phase {
    appenders: usize,
    records: u64,
    seconds: f64,
    latency: Histogram<u64>,
    flushes: u64,
    flush_p50_us: u64,
    /// Batch markers and block padding written, per fdatasync.
    padding_per_flush_bytes: f64,
    /// Share of the bytes written that are not records.
    padding_share: f64,
}

async fn append_phase(log: &Rc<CommitLog<DmaStorage>>, appenders: usize, duration: Duration) -> Phase {
    log.ready_next_segment().await.expect("prepare a segment");
    let stats_before = log.stats();
    let records_max = PHASE_BYTES_MAX / RECORD_MESSAGE_BYTES as u64 / appenders as u64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|appender| {
            let log = log.clone();
            glommio::spawn_local(async move {
                let message = vec![appender as u8; RECORD_MESSAGE_BYTES];
                let mut latency = latency_histogram_us();
                let mut records = 0;
                while started.elapsed() < duration && records < records_max {
                    let request = AppendRequest {
                        queue_id: appender as u32,
                        indexed: true,
                        message: &message,
                        ..Default::default()
                    };
                    let sent = Instant::now();
                    log.append(request).await.expect("append");
                    latency.saturating_record(sent.elapsed().as_micros() as u64);
                    records += 1;
                }
                (records, latency)
            })
        })
        .collect();
    let mut phase = Phase {
        appenders,
        records: 0,
        seconds: 0.0,
        latency: latency_histogram_us(),
        flushes: 0,
        flush_p50_us: 0,
        padding_per_flush_bytes: 0.0,
        padding_share: 0.0,
    };
    for task in tasks {
        let (records, latency) = task.await;
        phase.records += records;
        phase.latency.add(&latency).expect("same histogram bounds");
    }
    phase.seconds = started.elapsed().as_secs_f64();
    let stats = log.stats();
    phase.flushes = stats.flush_count - stats_before.flush_count;
    let mut flush_latency = stats.flush_latency_us.clone();
    flush_latency.subtract(&stats_before.flush_latency_us).expect("same histogram bounds");
    phase.flush_p50_us = flush_latency.value_at_quantile(0.5);
    let padding = (stats.padding_bytes_flushed - stats_before.padding_bytes_flushed) as f64;
    let written = (stats.bytes_flushed - stats_before.bytes_flushed).max(1) as f64;
    phase.padding_per_flush_bytes = padding / phase.flushes.max(1) as f64;
    phase.padding_share = padding / written;
    phase
}

/// Time to open the log after a crash (no close, no checkpoint since the
/// appends): the scan after the checkpoint plus the look past the end.
async fn crash_restart_ms(dir: &std::path::Path, log: Rc<CommitLog<DmaStorage>>) -> (f64, Rc<CommitLog<DmaStorage>>) {
    drop(log);
    let started = Instant::now();
    let log = CommitLog::open(DmaStorage, LogConfig::new(dir)).await.expect("reopen after a crash");
    (started.elapsed().as_secs_f64() * 1000.0, Rc::new(log))
}

/// Resident set size of this process, from /proc/self/statm.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|field| field.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page_size).unwrap_or(4096)
}

async fn append_small_records(log: &CommitLog<DmaStorage>, count: u64) {
    let message = [5u8; INDEX_MESSAGE_BYTES];
    let mut end = 0;
    for sequence in 0..count {
        let queue_id = (sequence % u64::from(INDEX_QUEUES)) as u32;
        let request = AppendRequest { queue_id, indexed: true, message: &message, ..Default::default() };
        end = log.append_buffered(request).await.expect("append").end;
        if sequence % INDEX_BURST == INDEX_BURST - 1 {
            log.wait_acknowledgeable(end).await.expect("durable");
        }
    }
    log.wait_acknowledgeable(end).await.expect("durable");
}

/// Resident index memory per million messages: `INDEX_RECORDS` small
/// records into a fresh log, then a checkpoint; the process RSS grows by
/// what the index keeps (the log's buffers are warmed up before).
async fn index_memory_phase(dir: PathBuf) -> serde_json::Value {
    let config =
        LogConfig { buffer_capacity_bytes: 1024 * 1024, recent_buffers_bytes: 4 * 1024 * 1024, ..LogConfig::new(dir) };
    let log = CommitLog::open(DmaStorage, config).await.expect("open log");
    append_small_records(&log, INDEX_BURST * 10).await;
    log.checkpoint().await.expect("checkpoint");
    let rss_before = resident_bytes();
    let started = Instant::now();
    append_small_records(&log, INDEX_RECORDS).await;
    log.checkpoint().await.expect("checkpoint");
    let seconds = started.elapsed().as_secs_f64();
    let rss_delta = resident_bytes().saturating_sub(rss_before);
    let per_million = |bytes: u64| (bytes as f64 * 1e6 / INDEX_RECORDS as f64).round();
    let written = log.index_memory();
    println!(
        "index memory: {INDEX_RECORDS} records of {INDEX_MESSAGE_BYTES} B over {INDEX_QUEUES} queues in {seconds:.1} s; RSS grew {} B per million messages",
        per_million(rss_delta)
    );
    println!(
        "index memory after the checkpoint: {} B per million messages ({} unwritten entries, {} B in queues, {} B in {} cached pages)",
        per_million(written.total_bytes() as u64),
        written.unwritten_entries,
        written.queue_bytes,
        written.cache_bytes,
        written.cached_pages
    );
    let read_started = Instant::now();
    read_every_queue(&log).await;
    let read = log.index_memory();
    println!(
        "index memory after reading every record back: {} B ({} cached pages, bound {} B; {} page loads, {} hits) in {:.1} s",
        read.total_bytes(),
        read.cached_pages,
        log_index_cache_bytes(),
        read.cache_stats.loads,
        read.cache_stats.hits,
        read_started.elapsed().as_secs_f64()
    );
    let report = json!({
        "index_rss_delta_bytes_per_million": per_million(rss_delta),
        "index_resident_bytes_per_million": per_million(written.total_bytes() as u64),
        "index_resident_bytes_after_reading_all": read.total_bytes(),
    });
    log.close().await.expect("close");
    report
}

fn log_index_cache_bytes() -> usize {
    LogConfig::new("").index_cache_bytes
}

/// Reads every queue from offset 0, as consumers catching up would.
async fn read_every_queue(log: &CommitLog<DmaStorage>) {
    for queue_id in 0..INDEX_QUEUES {
        let mut offset = 0;
        loop {
            let batch = log.read(queue_id, offset, 1024, 4 << 20).await.expect("read");
            if batch.records.is_empty() {
                break;
            }
            offset = batch.next_offset;
        }
    }
}

fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("RINGMQ_BENCH_DIR").map_or_else(|| PathBuf::from("target/bench-data"), PathBuf::from);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    dir
}

async fn bench(dir: PathBuf, phase_duration: Duration) -> serde_json::Value {
    println!("ringmq storage benchmark in {} ({} s per phase)", dir.display(), phase_duration.as_secs_f64());
    let raw_fsync = disk_probe::fdatasync_latency(&dir, 4096, RAW_FSYNC_ITERATIONS).await.expect("raw fdatasync");
    let (raw_p50, raw_p99) = (raw_fsync.value_at_quantile(0.5), raw_fsync.value_at_quantile(0.99));
    println!("raw 4 KiB O_DIRECT overwrite + fdatasync: p50 {raw_p50} us, p99 {raw_p99} us");
    // The most one closed-loop round of 256 appenders of 1 KiB can carry.
    let raw_batch =
        disk_probe::fdatasync_latency(&dir, 256 * 1024, RAW_FSYNC_ITERATIONS / 10).await.expect("raw fdatasync");
    let raw_batch_p50 = raw_batch.value_at_quantile(0.5);
    let batch_ceiling_mb_s = 256.0 * 1024.0 / raw_batch_p50.max(1) as f64;
    println!(
        "raw 256 KiB O_DIRECT overwrite + fdatasync: p50 {raw_batch_p50} us (ceiling for 256 x 1 KiB sync appenders: {batch_ceiling_mb_s:.0} MB/s)"
    );
    let raw_mb_s = disk_probe::write_bandwidth_mb_s(&dir, RAW_BANDWIDTH_BYTES, disk_probe::BANDWIDTH_WRITES_IN_FLIGHT)
        .await
        .expect("raw bandwidth");
    let in_flight = disk_probe::BANDWIDTH_WRITES_IN_FLIGHT;
    println!("raw sequential O_DIRECT write ({in_flight} x 1 MiB in flight): {raw_mb_s:.0} MB/s");
    let log_dir = dir.join("log");
    let log = Rc::new(CommitLog::open(DmaStorage, LogConfig::new(&log_dir)).await.expect("open log"));
    let mut report = json!({
        "raw_fsync_p50_us": raw_p50, "raw_fsync_p99_us": raw_p99, "raw_write_mb_s": raw_mb_s.round(),
        "raw_256k_fsync_p50_us": raw_batch_p50, "raw_256_appender_ceiling_mb_s": batch_ceiling_mb_s.round(),
    });
    let mut single_p50 = 0;
    let mut widest_mb_s = 0.0;
    for appenders in APPENDER_COUNTS {
        let phase = append_phase(&log, appenders, phase_duration).await;
        let records_s = phase.records as f64 / phase.seconds;
        let mb_s = records_s * RECORD_MESSAGE_BYTES as f64 / 1e6;
        let [p50, p99, p999] = [0.5, 0.99, 0.999].map(|quantile| phase.latency.value_at_quantile(quantile));
        println!(
            "sync append, {:>3} appenders: {records_s:>9.0} records/s {mb_s:>7.1} MB/s  p50 {p50} us  p99 {p99} us  p99.9 {p999} us  ({:.1} records per fdatasync, flush p50 {} us)",
            phase.appenders,
            phase.records as f64 / phase.flushes.max(1) as f64,
            phase.flush_p50_us,
        );
        report[format!("appenders_{appenders}")] = json!({
            "records_s": records_s.round(), "mb_s": (mb_s * 10.0).round() / 10.0,
            "p50_us": p50, "p99_us": p99, "p999_us": p999,
            "records_per_fdatasync": (phase.records as f64 / phase.flushes.max(1) as f64 * 10.0).round() / 10.0,
            "flush_p50_us": phase.flush_p50_us,
            "padding_per_fdatasync_bytes": phase.padding_per_flush_bytes.round(),
            "padding_share": (phase.padding_share * 1000.0).round() / 1000.0,
        });
        println!(
            "    padding (batch marker + zeros to the block) per fdatasync: {:.0} bytes, {:.1}% of the bytes written",
            phase.padding_per_flush_bytes,
            phase.padding_share * 100.0
        );
        if appenders == 1 {
            single_p50 = p50;
        }
        widest_mb_s = mb_s;
    }
    let latency_ratio = single_p50 as f64 / raw_p50.max(1) as f64;
    let bandwidth_ratio = widest_mb_s / raw_mb_s;
    println!("ratio: 1-appender append p50 / raw fdatasync p50 = {latency_ratio:.2} (target <= 1.3)");
    println!("ratio: 256-appender MB/s / raw write MB/s = {bandwidth_ratio:.2} (target >= 0.40)");
    println!(
        "ratio: 256-appender MB/s / raw 256 KiB write+fdatasync ceiling = {:.2}",
        widest_mb_s / batch_ceiling_mb_s
    );
    report["ratio_append_p50_to_raw_fsync_p50"] = json!((latency_ratio * 100.0).round() / 100.0);
    let (restart_ms, log) = crash_restart_ms(&log_dir, log).await;
    println!("restart after a crash (scan since the last checkpoint, look past the end of a 1 GiB segment): {restart_ms:.0} ms");
    report["crash_restart_ms"] = json!(restart_ms.round());
    report["ratio_256_appenders_to_raw_bandwidth"] = json!((bandwidth_ratio * 100.0).round() / 100.0);
    match Rc::try_unwrap(log) {
        Ok(log) => log.close().await.expect("close"),
        Err(_) => panic!("the log is still shared"),
    }
    report
}

/// glibc's allocator, except for glommio's I/O memory, which it backs with
/// huge pages (`ringmq::storage::io_memory`).
#[global_allocator]
static ALLOCATOR: ringmq::storage::io_memory::IoMemoryAllocator = ringmq::storage::io_memory::IoMemoryAllocator;

fn main() {
    // `cargo bench` passes `--bench`; any other argument is not ours.
    let seconds = std::env::var("RINGMQ_BENCH_SECONDS").ok().and_then(|value| value.parse().ok()).unwrap_or(3.0);
    let index_only = std::env::var_os("RINGMQ_BENCH_INDEX_ONLY").is_some();
    let dir = bench_dir();
    let executor = LocalExecutorBuilder::new(Placement::Fixed(0))
        .io_memory(ringmq::storage::io_memory::IO_MEMORY_BYTES)
        .make()
        .expect("executor");
    let report = executor.run(async {
        let mut report =
            if index_only { json!({}) } else { bench(dir.clone(), Duration::from_secs_f64(seconds)).await };
        let index = index_memory_phase(dir.join("index-memory")).await;
        if let (Some(report), Some(index)) = (report.as_object_mut(), index.as_object()) {
            report.extend(index.clone());
        }
        report
    });
    let _ = std::fs::remove_dir_all(&dir);
    println!("{report}");
}
