//! Checkpoints: the index files brought up to a durable log position, then a
//! small file naming that position, written with write-temp, fsync, rename,
//! fsync-dir. Recovery starts from the last checkpoint, so restart time
//! depends on the data written after it, not on the total.
//!
//! Once an index file is synced its entries leave memory (readers find them
//! through the page cache); once the checkpoint file names a queue's new
//! base offset, the index file's blocks below it go back to the filesystem.
//! The checkpointer runs every `checkpoint_interval`, and early when the
//! entries waiting for the index files pass `index_unwritten_entries_wake`.
//! A full disk skips a checkpoint rather than stopping the log
//! (`write_checkpoint`).
//!
//! ```text
//! magic u32 | version u32 | crc32 u32 (of everything after it) | position u64
//! | queue count u32 | segment count u32
//! | per queue: queue_id u32, base_offset u64, next_offset u64
//! | per segment: start u64, last_store_timestamp_us u64
//! ```

use super::backend::Storage;
use super::index_writes::{write_and_sync, Entries, IndexJob};
use super::log::LogShared;
use super::LogError;
use std::path::Path;
use std::rc::Rc;

const CHECKPOINT_MAGIC: u32 = 0x4351_4d52;
const CHECKPOINT_VERSION: u32 = 1;
pub const CHECKPOINT_FILE: &str = "checkpoint";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueCheckpoint {
    pub queue_id: u32,
    pub base_offset: u64,
    pub next_offset: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every record before this position is durable and in the index files.
    pub position: u64,
    pub queues: Vec<QueueCheckpoint>,
    /// (segment start, newest store timestamp in it).
    pub segments: Vec<(u64, u64)>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.position.to_le_bytes());
        body.extend_from_slice(&(self.queues.len() as u32).to_le_bytes());
        body.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for queue in &self.queues {
            body.extend_from_slice(&queue.queue_id.to_le_bytes());
            body.extend_from_slice(&queue.base_offset.to_le_bytes());
            body.extend_from_slice(&queue.next_offset.to_le_bytes());
        }
        for (start, timestamp) in &self.segments {
            body.extend_from_slice(&start.to_le_bytes());
            body.extend_from_slice(&timestamp.to_le_bytes());
        }
        let mut bytes = Vec::with_capacity(12 + body.len());
        bytes.extend_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.u32()? != CHECKPOINT_MAGIC {
            return Err("bad magic".into());
        }
        if reader.u32()? != CHECKPOINT_VERSION {
            return Err("unknown version".into());
        }
        let crc = reader.u32()?;
        if crc32fast::hash(&bytes[12..]) != crc {
            return Err("crc mismatch".into());
        }
        let position = reader.u64()?;
        let queue_count = reader.u32()?;
        let segment_count = reader.u32()?;
        let mut checkpoint = Checkpoint { position, ..Checkpoint::default() };
        for _ in 0..queue_count {
            let queue_id = reader.u32()?;
            let base_offset = reader.u64()?;
            let next_offset = reader.u64()?;
            if next_offset < base_offset {
                return Err(format!("queue {queue_id}: next offset below base offset"));
            }
            checkpoint.queues.push(QueueCheckpoint { queue_id, base_offset, next_offset });
        }
        for _ in 0..segment_count {
            checkpoint.segments.push((reader.u64()?, reader.u64()?));
        }
        if reader.at != bytes.len() {
            return Err("trailing bytes".into());
        }
        Ok(checkpoint)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.at + N;
        let slice = self.bytes.get(self.at..end).ok_or("truncated checkpoint")?;
        self.at = end;
        let mut word = [0; N];
        word.copy_from_slice(slice);
        Ok(word)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.take::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

/// Brings the index files up to the flushed position and records it.
///
/// A full disk that refused a write or a file (another process filled it)
/// only skips this checkpoint: the error comes back, the log goes on, and
/// the next checkpoint writes the same entries again from memory (index and
/// key files change their in-memory state only after a write succeeded).
/// Any other failure to write or sync stops the log: nothing retries an
/// fsync.
pub async fn write_checkpoint<S: Storage>(shared: &Rc<LogShared<S>>) -> Result<(), LogError> {
    let Ok(_permit) = shared.checkpoint_lock.acquire_permit(1).await else { return Err(LogError::Closed) };
    if let Some(error) = shared.flushed.failure() {
        return Err(error);
    }
    match persist(shared).await {
        Err(error) if error.is_no_space_before_a_sync() => Err(error),
        other => other.map_err(|error| shared.fail_stop(error)),
    }
}

async fn persist<S: Storage>(shared: &Rc<LogShared<S>>) -> Result<(), LogError> {
    let position = checkpointable(shared);
    let (jobs, checkpoint) = plan(shared, position);
    write_indexes(shared, jobs).await?;
    super::key_lookup::persist(shared, position).await?;
    shared.count_index_backlog();
    let path = shared.config.dir.join(CHECKPOINT_FILE);
    shared
        .storage
        .write_file_atomic(&path, &checkpoint.encode())
        .await
        .map_err(|error| LogError::io("write checkpoint", &path, position, error))?;
    shared.state.borrow_mut().checkpoint_position = position;
    release_deleted_offsets(shared, &checkpoint).await
}

/// The checkpoint on disk names each queue's base offset: the index file's
/// blocks below it are no longer needed by anyone, recovery included.
async fn release_deleted_offsets<S: Storage>(shared: &LogShared<S>, checkpoint: &Checkpoint) -> Result<(), LogError> {
    for queue in &checkpoint.queues {
        let handle = shared.state.borrow().index_files.get(&queue.queue_id).map(|file| file.handle());
        if let Some(handle) = handle {
            handle.release_below(queue.base_offset).await?;
        }
    }
    Ok(())
}

/// How often a checkpoint the index backlog asks for looks again while the
/// log's owner holds it.
const HELD_CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// How far a checkpoint may reach: the flushed position, or less while the
/// log's owner holds index entries in memory (`LogShared::index_hold`).
fn checkpointable<S: Storage>(shared: &LogShared<S>) -> u64 {
    shared.flushed.get().min(shared.index_hold.get())
}

fn plan<S: Storage>(shared: &LogShared<S>, position: u64) -> (Vec<IndexJob<S::File>>, Checkpoint) {
    let state = shared.state.borrow();
    let mut jobs = Vec::new();
    let mut checkpoint = Checkpoint { position, ..Checkpoint::default() };
    for (queue_id, queue) in &state.queues {
        let to = queue.visible_end_offset(position);
        let from = queue.file_end();
        if to > from {
            let entries = queue.unwritten_entries(from, to);
            debug_assert_eq!(entries.len() as u64, to - from);
            jobs.push(IndexJob { queue_id: *queue_id, from, entries, file: None });
        }
        let next_offset = to.max(queue.base_offset());
        checkpoint.queues.push(QueueCheckpoint { queue_id: *queue_id, base_offset: queue.base_offset(), next_offset });
    }
    checkpoint.segments = state
        .segments
        .values()
        .filter(|segment| segment.start < position)
        .map(|segment| (segment.start, segment.last_store_timestamp_us.get()))
        .collect();
    (jobs, checkpoint)
}

/// Index writes a checkpoint keeps in flight. The log's appends share the
/// device: at 10,000 queues, 16 at once raised their p99 by half again
/// over 4, which keep up with the log as well (docs/PERFORMANCE.md).
const CHECKPOINT_APPENDS_IN_FLIGHT_MAX: usize = 4;

/// Appends each queue's entries to its index file and syncs them all
/// (`index_writes`), then the index directory where files were created;
/// then memory lets them go. Each writer works on a copy
/// of the file's state: readers keep using the file meanwhile, and a failed
/// write leaves the state as it was (`write_checkpoint` says what the
/// failure then means).
async fn write_indexes<S: Storage>(shared: &LogShared<S>, jobs: Vec<IndexJob<S::File>>) -> Result<(), LogError> {
    let dir = shared.config.dir.join(super::INDEX_DIR);
    // The file's state is copied as its write starts.
    let jobs = jobs.into_iter().map(|job| {
        let file = shared.state.borrow().index_files.get(&job.queue_id).cloned();
        IndexJob { file, ..job }
    });
    let written = write_and_sync(&shared.storage, &dir, jobs, CHECKPOINT_APPENDS_IN_FLIGHT_MAX, Entries::Kept).await?;
    sync_index_dir(shared, &dir, written.iter().any(|write| write.created)).await?;
    for write in written {
        let (queue_id, from) = (write.queue_id, write.from);
        let state = &mut *shared.state.borrow_mut();
        let entries = write.settle(&mut state.index_files, &mut state.queues);
        shared.index_cache.borrow_mut().absorb(queue_id, from, &entries);
    }
    Ok(())
}

/// The index files this checkpoint (`created`) or a recovery's rebuild
/// created: their names must be durable before a checkpoint names their
/// queues.
async fn sync_index_dir<S: Storage>(shared: &LogShared<S>, dir: &Path, created: bool) -> Result<(), LogError> {
    if !created && shared.index_dir_synced.get() {
        return Ok(());
    }
    shared.storage.sync_dir(dir).await.map_err(|error| LogError::io("sync index directory", dir, 0, error))?;
    shared.index_dir_synced.set(true);
    Ok(())
}

/// Resolves when the interval passed, or earlier once the index backlog
/// passed its limit and the flushed position moved (only flushed entries
/// can go to the index files).
async fn checkpoint_due<S: Storage>(shared: &LogShared<S>) {
    let backlog = async {
        loop {
            shared.index_backlog_signal.wait().await;
            let checkpointed = shared.state.borrow().checkpoint_position;
            // A failure wakes it too; the loop then sees the stop.
            if shared.flushed.wait_for(checkpointed + 1).await.is_err() || checkpointable(shared) > checkpointed {
                return;
            }
            // Held (`LogShared::index_hold`): the hold is the owner's to
            // move, not an append's; look again after a pause rather than
            // on every append that notifies.
            glommio::timer::sleep(HELD_CHECKPOINT_PAUSE).await;
        }
    };
    futures_lite::future::or(glommio::timer::sleep(shared.config.checkpoint_interval), backlog).await
}

/// How long the checkpointer waits after a full disk refused a checkpoint
/// before it tries again (the index backlog would wake it at once).
const NO_SPACE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Background task: a checkpoint whenever the interval passed (or the index
/// backlog grew too long) and the flushed position moved, and retention
/// after it. A checkpoint a full disk refused is tried again every
/// `NO_SPACE_RETRY_AFTER`, with a warning when that starts and a line when
/// one succeeds again; retention still runs meanwhile (it frees room).
pub async fn run_checkpointer<S: Storage>(shared: Rc<LogShared<S>>) {
    let mut refused_since: Option<std::time::Instant> = None;
    loop {
        match refused_since {
            Some(_) => glommio::timer::sleep(NO_SPACE_RETRY_AFTER).await,
            None => checkpoint_due(&shared).await,
        }
        if shared.closing.get() || shared.flushed.failure().is_some() {
            return;
        }
        if checkpointable(&shared) > shared.state.borrow().checkpoint_position {
            match write_checkpoint(&shared).await {
                Ok(()) => {
                    if let Some(since) = refused_since.take() {
                        tracing::info!(
                            refused_for_ms = since.elapsed().as_millis() as u64,
                            "checkpoints written again: the disk has room"
                        );
                    }
                }
                Err(error) if error.is_no_space_before_a_sync() => {
                    if refused_since.is_none() {
                        tracing::warn!(%error, retry_after_ms = NO_SPACE_RETRY_AFTER.as_millis() as u64, "the disk is full: checkpoint skipped, the index stays in memory until one succeeds");
                        refused_since = Some(std::time::Instant::now());
                    }
                }
                // The log is stopped (`stop` said why) or closed: nothing retries.
                Err(_) => return,
            }
        }
        if let Err(error) = super::retention::enforce(&shared, super::log::now_us()).await {
            if error.is_stopped() {
                return;
            }
            tracing::warn!(%error, "retention failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_any_damage_is_refused() {
        let checkpoint = Checkpoint {
            position: 12_345,
            queues: vec![QueueCheckpoint { queue_id: 3, base_offset: 1, next_offset: 9 }],
            segments: vec![(0, 77)],
        };
        let bytes = checkpoint.encode();
        assert_eq!(Checkpoint::decode(&bytes), Ok(checkpoint));
        for index in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x10;
            assert!(Checkpoint::decode(&damaged).is_err(), "damage at byte {index} went unnoticed");
        }
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
