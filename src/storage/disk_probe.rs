//! Measures the raw disk under a directory, the way the commit log uses it,
//! so benchmarks can print their figures as ratios of it: O_DIRECT overwrites
//! plus fdatasync into a preallocated, zero-filled file, and sequential
//! O_DIRECT write bandwidth. Must run inside a glommio executor.

use super::backend::{DmaStorage, Storage, ZeroFillPace};
use glommio::io::OpenOptions;
use hdrhistogram::Histogram;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

/// Size of the file the fdatasync probe overwrites in turn.
const PROBE_FILE_BYTES: u64 = 64 * 1024 * 1024;
const WRITE_CHUNK_BYTES: usize = 1024 * 1024;
/// 1 MiB writes the bandwidth probe keeps in flight: enough to keep the
/// device's queue busy, as the log's flusher does with large rounds.
pub const BANDWIDTH_WRITES_IN_FLIGHT: u64 = 4;

fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    options
}

/// Latency in microseconds of `iterations` O_DIRECT overwrites of
/// `write_bytes` (a multiple of 4 KiB), each followed by fdatasync.
pub async fn fdatasync_latency(dir: &Path, write_bytes: usize, iterations: usize) -> io::Result<Histogram<u64>> {
    let path = dir.join("ringmq-probe-fsync");
    drop(DmaStorage.create_zeroed(&path, PROBE_FILE_BYTES, &ZeroFillPace::unlimited()).await?);
    let file = open_options().dma_open(&path).await?;
    let mut latency = super::latency_histogram_us();
    for iteration in 0..iterations {
        let mut buffer = file.alloc_dma_buffer(write_bytes);
        buffer.as_bytes_mut().fill(iteration as u8);
        let position = (iteration as u64 * write_bytes as u64) % PROBE_FILE_BYTES;
        let started = Instant::now();
        file.write_at(buffer, position).await?;
        file.fdatasync().await?;
        latency.saturating_record(started.elapsed().as_micros() as u64);
    }
    file.close().await?;
    std::fs::remove_file(&path)?;
    Ok(latency)
}

/// Sequential O_DIRECT write bandwidth in MB/s: `total_bytes` in 1 MiB
/// writes, `in_flight` at a time, into a zero-filled file, then fdatasync.
pub async fn write_bandwidth_mb_s(dir: &Path, total_bytes: u64, in_flight: u64) -> io::Result<f64> {
    let path = dir.join("ringmq-probe-bandwidth");
    drop(DmaStorage.create_zeroed(&path, total_bytes, &ZeroFillPace::unlimited()).await?);
    let file = Rc::new(open_options().dma_open(&path).await?);
    let started = Instant::now();
    let writers: Vec<_> = (0..in_flight)
        .map(|writer| {
            let file = file.clone();
            glommio::spawn_local(async move {
                let chunks = total_bytes / WRITE_CHUNK_BYTES as u64;
                for chunk in (writer..chunks).step_by(in_flight as usize) {
                    let mut buffer = file.alloc_dma_buffer(WRITE_CHUNK_BYTES);
                    buffer.as_bytes_mut().fill(chunk as u8);
                    file.write_at(buffer, chunk * WRITE_CHUNK_BYTES as u64).await?;
                }
                io::Result::Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.await?;
    }
    file.fdatasync().await?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(total_bytes as f64 / seconds / 1e6)
}
