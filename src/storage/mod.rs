//! Storage: the per-shard commit log. Segments of preallocated, zero-filled
//! files written with O_DIRECT; group commit (one flusher, one fdatasync per
//! round); per-queue indexes; checkpoints; recovery; retention.
//!
//! `storage` knows nothing about the wire protocol: a message is bytes.
//!
//! Data directory of one log:
//! ```text
//! <dir>/segments/<start position, 20 digits>.log
//! <dir>/index/<queue id, 10 digits>.idx
//! <dir>/checkpoint
//! ```

pub mod aligned;
pub mod backend;
mod checkpoint;
mod config;
pub mod disk_probe;
mod error;
mod group_commit;
mod index;
mod index_cache;
mod index_lookup;
mod log;
mod read;
pub mod record;
mod recovery;
mod repair;
mod retention;
mod segment;
mod stats;
mod tail;
mod watermark;

pub use checkpoint::Checkpoint;
pub use config::{FlushMode, LogConfig, Retention};
pub use error::LogError;
pub use index::IndexEntry;
pub use index_cache::IndexCacheStats;
pub use log::{now_us, AppendRequest, Appended, CommitLog, FarCopy, IndexMemory, Positions};
pub use read::{OpRecordRead, ReadBatch, StoredRecord};
pub use repair::{repair, RepairedRange};
pub use stats::{latency_histogram_us, LogStats};
pub use watermark::{Signal, Watermark};

pub const SEGMENTS_DIR: &str = "segments";
pub const INDEX_DIR: &str = "index";

impl<S: backend::Storage> CommitLog<S> {
    /// Applies retention now; returns how many segments were deleted.
    pub async fn enforce_retention(&self, now_us: u64) -> Result<usize, LogError> {
        retention::enforce(self.shared(), now_us).await
    }

    /// The end of the oldest segment retention would delete now but for the
    /// retention floor, if the floor holds it back.
    pub fn retention_held_back_to(&self, now_us: u64) -> Option<u64> {
        retention::held_back_to(self.shared(), now_us)
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod repair_tests;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
