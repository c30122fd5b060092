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
//! <dir>/keys/<segment start, 20 digits>.keys
//! <dir>/checkpoint
//! <dir>/diverged-<cut position, 20 digits>.log   (set_aside_after)
//! ```

pub mod aligned;
pub mod backend;
mod checkpoint;
mod config;
pub mod disk_probe;
pub mod disk_space;
mod diverged;
mod error;
mod follow;
mod group_commit;
mod in_flight;
mod index;
mod index_cache;
mod index_lookup;
mod index_rebuild;
mod index_writes;
pub mod io_memory;
mod key_lookup;
mod key_search;
mod keys;
mod log;
mod raw;
mod read;
mod read_ahead;
mod replicated;
pub use crate::wire::record;
mod recovery;
mod repair;
mod retention;
mod segment;
mod stats;
mod tail;
mod watermark;

/// Wall-clock microseconds, for store timestamps and retention. A fault
/// simulation sets its own clock on its thread (`simulation::clock`): the
/// timestamps are in the bytes it damages, and a seed must replay byte for
/// byte.
pub fn now_us() -> u64 {
    #[cfg(test)]
    if let Some(now) = simulation::clock::tick() {
        return now;
    }
    crate::now_us()
}
pub use checkpoint::Checkpoint;
pub use config::{FlushMode, LogConfig, Retention};
pub use diverged::{set_aside_after, side_file_path, DivergedTail};
pub use error::LogError;
pub use follow::{FollowError, ReplicaSpan};
pub use index::IndexEntry;
pub use index_cache::IndexCacheStats;
pub use key_search::KeyCandidates;
pub use keys::{KeyEntry, KeyHasher};
pub use log::{AppendRequest, Appended, CommitLog, FarCopy, IndexMemory, Positions};
pub use raw::RawBytes;
pub use read::{OpRecordRead, ReadBatch, ReadLimits, StoredRecord};
pub use repair::{repair, RepairedRange};
pub use replicated::{verified_end, ReplicaDamage};
pub use stats::{latency_histogram_us, LogStats};
pub use watermark::{Signal, Watermark};

pub const SEGMENTS_DIR: &str = "segments";
pub const INDEX_DIR: &str = "index";
pub const KEYS_DIR: &str = "keys";

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

    /// The first visible offset of `queue_id` stored at or after
    /// `timestamp_us` (the visible end if none): a binary search over the
    /// queue's index entries, whose store timestamps never go down as
    /// offsets grow (the log stamps each record with at least the last
    /// one's). It may read pages of the index file.
    pub async fn first_offset_stored_at(&self, queue_id: u32, timestamp_us: u64) -> Result<u64, LogError> {
        let mut low = self.base_offset(queue_id);
        let mut high = self.visible_end_offset(queue_id).max(low);
        while low < high {
            let middle = low + (high - low) / 2;
            // An entry retention took meanwhile lies before every kept one.
            let before = self
                .shared()
                .index_entry(queue_id, middle)
                .await?
                .is_none_or(|entry| entry.store_timestamp_us < timestamp_us);
            if before {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low)
    }

    /// Key-index entries of `key_hash` (the broker's hash of a topic and a
    /// key), visible, stored at or after `since_us`, at positions below
    /// `before`, newest first, at most `limit`. A hash matches other keys
    /// too: the caller reads each record and compares. It reads key files
    /// (and rebuilds one that fails its checks).
    pub async fn key_candidates(
        &self,
        key_hash: u64,
        since_us: u64,
        before: u64,
        limit: usize,
    ) -> Result<KeyCandidates, LogError> {
        key_search::search(self.shared(), key_hash, since_us, before, limit).await
    }

    /// The segment files of the log (the prepared next one included) and
    /// the bytes they take on disk (segments are preallocated).
    pub fn disk_usage(&self) -> (u32, u64) {
        let state = self.shared().state.borrow();
        let files = state.segments.values().chain(state.next_segment.iter());
        files.fold((0, 0), |(count, bytes), segment| (count + 1, bytes + segment.size_bytes))
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod key_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod repair_tests;
#[cfg(test)]
mod simulation;
#[cfg(test)]
pub(crate) mod tests;
