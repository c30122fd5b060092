//! How a commit log is set up. Everything that touches durability is explicit.

use super::record::BATCH_MARKER_SIZE_BYTES;
use super::LogError;
use crate::constants::*;
use std::path::PathBuf;
use std::time::Duration;

/// When an append resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushMode {
    /// After the fdatasync that covers the record returned Ok.
    Sync,
    /// After the write; fdatasync runs every `interval`, or sooner when the
    /// unsynced bytes reach one buffer.
    Async { interval: Duration },
}

/// What retention may delete: whole segments, oldest first, never the active one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_total_bytes: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub segment_size_bytes: u64,
    pub buffer_capacity_bytes: usize,
    pub flush: FlushMode,
    pub recent_buffers_bytes: usize,
    pub retention: Retention,
    /// How often the background task writes index files and a checkpoint.
    pub checkpoint_interval: Duration,
    /// Bound of the shard's cache of index-file pages (bytes).
    pub index_cache_bytes: usize,
    /// Index entries not yet in the index files past which the checkpointer
    /// runs early, so the in-memory tail stays bounded at any append rate.
    pub index_unwritten_entries_wake: u64,
    /// How fast the next segment is zero-filled in the background (bytes per
    /// second, 0 for no limit); an append that needs it lifts the limit.
    pub zero_fill_bytes_per_second: u64,
    /// Operator override: start even though recovery found a corrupt record
    /// followed by valid ones, cutting the log at the corruption.
    pub truncate_corruption: bool,
    /// Finds the key hashes of a stored message, for rebuilding key files
    /// from the log. `None`: the log keeps no key index at all.
    pub key_hasher: Option<super::KeyHasher>,
    /// Where a brand-new log starts: 0, or for a standby joining a primary
    /// whose retention deleted the start, the primary's first segment's
    /// start (a segment boundary). An existing log ignores it.
    pub first_position: u64,
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size_bytes: SEGMENT_SIZE_BYTES_DEFAULT,
            buffer_capacity_bytes: GROUP_COMMIT_BUFFER_BYTES_DEFAULT,
            flush: FlushMode::Sync,
            recent_buffers_bytes: RECENT_BUFFERS_BYTES_DEFAULT,
            retention: Retention::default(),
            checkpoint_interval: Duration::from_millis(CHECKPOINT_INTERVAL_MS_DEFAULT),
            index_cache_bytes: INDEX_CACHE_BYTES_DEFAULT,
            index_unwritten_entries_wake: INDEX_UNWRITTEN_ENTRIES_WAKE_DEFAULT,
            truncate_corruption: false,
            zero_fill_bytes_per_second: ZERO_FILL_BYTES_PER_SECOND_DEFAULT,
            key_hasher: None,
            first_position: 0,
        }
    }

    /// Largest record an append accepts under this configuration.
    pub fn record_size_bytes_max(&self) -> usize {
        // A write starts with its batch marker; the record is padded to 8.
        let overhead = BATCH_MARKER_SIZE_BYTES + RECORD_ALIGNMENT_BYTES;
        let by_buffer = self.buffer_capacity_bytes - 2 * BLOCK_SIZE_BYTES;
        let by_segment = self.segment_size_bytes as usize - overhead;
        RECORD_SIZE_BYTES_MAX.min(by_buffer).min(by_segment)
    }

    /// How far recovery looks past the end of the valid data: until this
    /// many zeros in a row. At a crash at most the flush round in flight
    /// (the filling and one sealed buffer) plus, in async mode, one buffer
    /// of written but unsynced data can be incomplete, so sectors a torn
    /// write missed never make a run this long.
    pub fn look_ahead_zero_run_bytes(&self) -> u64 {
        4 * self.buffer_capacity_bytes as u64
    }

    pub fn validate(&self) -> Result<(), LogError> {
        let block = BLOCK_SIZE_BYTES as u64;
        if self.segment_size_bytes < SEGMENT_SIZE_BYTES_MIN || self.segment_size_bytes % block != 0 {
            return Err(LogError::Config(format!(
                "segment size {} must be a multiple of {block} and at least {SEGMENT_SIZE_BYTES_MIN}",
                self.segment_size_bytes
            )));
        }
        let buffer_min = 4 * BLOCK_SIZE_BYTES;
        if self.buffer_capacity_bytes < buffer_min || self.buffer_capacity_bytes % BLOCK_SIZE_BYTES != 0 {
            return Err(LogError::Config(format!(
                "buffer capacity {} must be a multiple of {BLOCK_SIZE_BYTES} and at least {buffer_min}",
                self.buffer_capacity_bytes
            )));
        }
        if self.index_cache_bytes < INDEX_CACHE_BYTES_MIN {
            return Err(LogError::Config(format!(
                "index_cache_bytes {} must be at least {INDEX_CACHE_BYTES_MIN}",
                self.index_cache_bytes
            )));
        }
        if self.first_position % block != 0 {
            return Err(LogError::Config(format!("first position {} is not on a block boundary", self.first_position)));
        }
        if self.index_unwritten_entries_wake == 0 {
            return Err(LogError::Config("index_unwritten_entries_wake must be at least 1".into()));
        }
        Ok(())
    }
}
