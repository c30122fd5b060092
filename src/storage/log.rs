//! The commit log of one shard: the only way records enter and leave storage.
//!
//! Contract:
//! - `append` places a record in memory, in order, and resolves once it is
//!   acknowledgeable: durable (`FlushMode::Sync`: the fdatasync covering it
//!   returned Ok) or written (`FlushMode::Async`).
//! - A reader never sees a record beyond the visible position, which is the
//!   flushed position in sync mode and the written position in async mode.
//! - After a failed write or fdatasync the log is stopped: every waiting and
//!   every later append fails; reads of visible records go on.

use super::backend::{Storage, ZeroFillPace, ZeroFillProgress};
use super::group_commit::{run_flusher, Blocked, FillBuffer, SealedBuffer};
use super::index::{IndexFile, QueueIndex};
use super::index_cache::{IndexCache, IndexCacheStats};
use super::keys::{KeyEntry, KeyFile};
use super::read::RecentBuffers;
use super::segment::{create_segment_classified, Segment, SegmentCreation};
use super::stats::LogStats;
use super::watermark::{Signal, Watermark};
use super::{recovery, FlushMode, LogConfig, LogError};
// Store timestamps: the clock producers stamp messages with.
pub(super) use super::now_us;
use glommio::Task;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// One record to append.
#[derive(Clone, Copy, Debug, Default)]
pub struct AppendRequest<'a> {
    pub queue_id: u32,
    pub flags: u16,
    /// Whether the record gets the next offset of its queue.
    pub indexed: bool,
    pub tag_hash: u32,
    /// For an op record that makes another record visible in the queue: the
    /// position and length of that record, which a read of the op record's
    /// offset returns in its place.
    pub reference: Option<(u64, u32)>,
    /// On an op record delivering a retried message: its deliveries so far.
    pub reconsume_times: u32,
    /// Hashes of the message's keys for the key index (only an ordinary
    /// message in its queue has them: `keys::is_keyed`); must be what the
    /// log's `key_hasher` finds in `message`.
    pub key_hashes: &'a [u64],
    /// The message flatbuffer, stored exactly as given.
    pub message: &'a [u8],
    /// With a `reference`: what to store instead if the referenced record
    /// lies in an earlier segment than this record lands in (retention,
    /// oldest segment first, could delete it while this record is kept).
    pub copy_if_far: Option<FarCopy<'a>>,
    /// The clock read for its store timestamp, if the caller took it (the
    /// messages of one produce request share one read); `None`: the clock
    /// now. Either way timestamps never fall from record to record.
    pub clock_us: Option<u64>,
}

/// The copy an op record becomes when its reference would reach back into
/// an earlier segment: the referenced message itself, with these flags, and
/// `ref_position = back_pointer`, `ref_size = 0` (a pointer for recovery
/// that reads never follow). Without the message (`None`, so that the
/// common near case reads nothing) such an append fails with
/// `LogError::FarReference` and appends nothing: read it and append again.
#[derive(Clone, Copy, Debug)]
pub struct FarCopy<'a> {
    pub message: Option<&'a [u8]>,
    pub flags: u16,
    pub back_pointer: u64,
}

/// Where an appended record went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub position: u64,
    pub end: u64,
    pub queue_offset: Option<u64>,
    pub store_timestamp_us: u64,
    /// Key-index entries the record got.
    pub key_entries: usize,
}

/// The index's resident memory (`CommitLog::index_memory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexMemory {
    pub queues: usize,
    /// Entries only in memory, not yet in the index files.
    pub unwritten_entries: usize,
    /// Every queue's in-memory index (the unwritten entries included).
    pub queue_bytes: usize,
    pub cached_pages: usize,
    pub cache_bytes: usize,
    pub cache_stats: IndexCacheStats,
    /// Key-index entries only in memory, not yet in the key files.
    pub key_tail_entries: usize,
    pub key_tail_bytes: usize,
}

impl IndexMemory {
    pub fn total_bytes(&self) -> usize {
        self.queue_bytes + self.cache_bytes + self.key_tail_bytes
    }
}

/// The log's positions, in order `appended >= written >= flushed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Positions {
    pub appended: u64,
    pub written: u64,
    pub flushed: u64,
    pub visible: u64,
}

pub struct LogState<F> {
    pub segments: BTreeMap<u64, Rc<Segment<F>>>,
    pub next_segment: Option<Rc<Segment<F>>>,
    pub preparing_segment: bool,
    /// A background preparation is spawned and has not finished.
    pub preparation_requested: bool,
    pub filling: FillBuffer<F>,
    pub sealed: VecDeque<SealedBuffer<F>>,
    pub last_store_timestamp_us: u64,
    pub recent: RecentBuffers,
    /// Buffers to fill again; they hold what they held before.
    pub pool: Vec<super::aligned::AlignedBuf>,
    pub queues: BTreeMap<u32, QueueIndex>,
    pub index_files: BTreeMap<u32, IndexFile<F>>,
    /// Whether appends keep key entries (`LogConfig::key_hasher` is set).
    pub keys_enabled: bool,
    /// Key entries not yet in the key files, in log order (`key_lookup`).
    pub key_tail: VecDeque<KeyEntry>,
    /// Per segment start, its key file.
    pub key_files: BTreeMap<u64, KeyFile<F>>,
    pub unsynced_segments: Vec<Rc<Segment<F>>>,
    pub unsynced_bytes: u64,
    /// Batches the flusher has taken so far.
    pub batches_taken: u64,
    pub stats: LogStats,
    pub stopped: Option<Arc<LogError>>,
    pub checkpoint_position: u64,
    /// End of the valid data found at recovery (the filling buffer starts on
    /// the block after it): where `written` and `flushed` start.
    pub recovered_end: u64,
}

pub struct LogShared<S: Storage> {
    pub storage: S,
    pub config: LogConfig,
    pub state: RefCell<LogState<S::File>>,
    /// End of the buffers the flusher took for writing: their bytes are
    /// final (batch markers stamped) though maybe not on the disk yet.
    /// `appended >= taken >= written >= flushed`.
    pub taken: Watermark<LogError>,
    pub written: Watermark<LogError>,
    pub flushed: Watermark<LogError>,
    /// Mirrors `LogState::batches_taken`, for appenders waiting for room.
    pub batches: Watermark<LogError>,
    /// Counts finished attempts to prepare a segment.
    pub segment_attempts: Watermark<LogError>,
    pub flush_signal: Signal,
    pub closing: Cell<bool>,
    /// The next segment's fill in progress: urgent while an append waits
    /// for it, or once the active segment is nearly full
    /// (`NEXT_SEGMENT_URGENT_AT`); behind when an append waits, or when at
    /// its pace so far it would end after the active segment is full
    /// (`FillRace`).
    pub zero_fill: Rc<ZeroFillProgress>,
    /// An append waited for the segment being prepared: the preparation
    /// says so once, with how long it took.
    pub appends_waited_for_segment: Cell<bool>,
    /// When a preparation in the background last failed (a full disk):
    /// the next one waits `BACKGROUND_RETRY_AFTER_FAILURE`.
    pub background_preparation_failed_at: Cell<Option<Instant>>,
    pub checkpoint_lock: glommio::sync::Semaphore,
    /// Retention deletes no segment that ends above this position: the
    /// log's owner keeps state in records there that no snapshot covers yet.
    /// `u64::MAX` (the default) when nothing but the queues lives in the log.
    pub retention_floor: Cell<u64>,
    /// The checkpointer moves no index entry of a record ending above this
    /// position into the index files (`CommitLog::hold_index_at`): only
    /// in-memory entries know where their record ends, which a reader
    /// capped below the visible position needs. `u64::MAX` by default.
    pub index_hold: Cell<u64>,
    /// Pages of the index files, bounded by `config.index_cache_bytes`.
    pub index_cache: RefCell<IndexCache>,
    /// The index directory was synced since the log opened (a recovery's
    /// rebuild may have created files); a checkpoint that creates files
    /// syncs it again.
    pub index_dir_synced: Cell<bool>,
    /// Index entries not yet in the index files (exact after each
    /// checkpoint, counted up by appends in between).
    pub index_backlog: Cell<u64>,
    /// Wakes the checkpointer early once the backlog passes
    /// `config.index_unwritten_entries_wake`.
    pub index_backlog_signal: Signal,
    /// The largest durable position a batch marker written so far claims:
    /// recovery can tell damage below it from a torn write.
    pub vouched: Cell<u64>,
}

/// Share of the active segment (numerator, denominator) written when the
/// next one starts being zero-filled, at its pace. Half was too late: the
/// fill of a 1 GiB segment at 512 MB/s took 2.4-2.8 s beside the log's own
/// writes while the second half filled in 2.7 s, and appends waited up to
/// 300 ms at the roll (docs/PERFORMANCE.md).
const NEXT_SEGMENT_PREPARE_AT: (u64, u64) = (1, 4);

/// After a background preparation of the next segment failed (a full
/// disk refuses it at once), the next waits this long: every append past
/// the mark asks for one, and each failure logs a warning. An append that
/// needs the segment still tries at once (and is refused `DiskFull`).
const BACKGROUND_RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(1);
/// Share written when a fill still running goes to full speed.
const NEXT_SEGMENT_URGENT_AT: (u64, u64) = (3, 4);
const _: () = assert!(
    NEXT_SEGMENT_PREPARE_AT.0 * NEXT_SEGMENT_URGENT_AT.1 < NEXT_SEGMENT_URGENT_AT.0 * NEXT_SEGMENT_PREPARE_AT.1
);
/// A fill counts as behind when, at its pace so far, it would need more
/// than 4/5 of the time the appends take to fill the active segment.
const ZERO_FILL_MARGIN: (u128, u128) = (5, 4);

/// The next segment's zero fill against the appends filling the active one,
/// in bytes since the fill started (so no clock is needed).
struct FillRace {
    /// The next segment's size.
    fill_bytes: u64,
    left_bytes: u64,
    /// The active segment's used bytes when the fill started, and now.
    used_at_start: u64,
    used: u64,
    /// The active segment's size.
    size: u64,
}

impl FillRace {
    /// Whether the fill, at the pace it kept so far against the appends',
    /// ends after the active segment is full (with `ZERO_FILL_MARGIN`):
    /// then it must take more of the disk.
    fn is_behind(&self) -> bool {
        let left = u128::from(self.left_bytes.min(self.fill_bytes));
        let filled = u128::from(self.fill_bytes) - left;
        let appended = u128::from(self.used.saturating_sub(self.used_at_start));
        let room = u128::from(self.size.saturating_sub(self.used));
        // left / filled > room / appended, each side scaled by the margin.
        left * appended * ZERO_FILL_MARGIN.0 > room * filled * ZERO_FILL_MARGIN.1
    }
}

/// A shard's commit log. Must live inside a glommio executor; dropping it
/// cancels its background tasks (prefer `close`).
pub struct CommitLog<S: Storage> {
    shared: Rc<LogShared<S>>,
    tasks: RefCell<Vec<Task<()>>>,
}

impl<S: Storage> CommitLog<S> {
    /// Recovers the log in `config.dir` (creating it if empty) and starts
    /// its flusher and checkpoint tasks.
    pub async fn open(storage: S, config: LogConfig) -> Result<Self, LogError> {
        config.validate()?;
        let state = recovery::recover(&storage, &config).await?;
        let config_cache_bytes = config.index_cache_bytes;
        let end = state.recovered_end;
        let shared = Rc::new(LogShared {
            storage,
            config,
            state: RefCell::new(state),
            taken: Watermark::new(end),
            written: Watermark::new(end),
            flushed: Watermark::new(end),
            batches: Watermark::new(0),
            segment_attempts: Watermark::new(0),
            flush_signal: Signal::default(),
            closing: Cell::new(false),
            zero_fill: Rc::new(ZeroFillProgress::default()),
            appends_waited_for_segment: Cell::new(false),
            background_preparation_failed_at: Cell::new(None),
            checkpoint_lock: glommio::sync::Semaphore::new(1),
            retention_floor: Cell::new(u64::MAX),
            index_hold: Cell::new(u64::MAX),
            index_cache: RefCell::new(IndexCache::new(config_cache_bytes)),
            index_dir_synced: Cell::new(false),
            index_backlog: Cell::new(0),
            index_backlog_signal: Signal::default(),
            // Recovery's end: the checkpoint or a recovery marker vouches
            // for it, or nothing is there to vouch for.
            vouched: Cell::new(end),
        });
        shared.count_index_backlog();
        // Retention may have deleted segments after the checkpoint.
        super::retention::forget_deleted_segments(&shared).await?;
        let flusher = glommio::spawn_local(run_flusher(shared.clone()));
        let checkpointer = glommio::spawn_local(super::checkpoint::run_checkpointer(shared.clone()));
        Ok(Self { shared, tasks: RefCell::new(vec![flusher, checkpointer]) })
    }

    /// Appends one record and resolves once it is acknowledgeable (see the
    /// module contract).
    pub async fn append(&self, request: AppendRequest<'_>) -> Result<Appended, LogError> {
        let appended = self.append_buffered(request).await?;
        self.wait_acknowledgeable(appended.end).await?;
        Ok(appended)
    }

    /// Places one record in the group-commit buffer and resolves without
    /// waiting for the disk; `wait_acknowledgeable(appended.end)` does that.
    pub async fn append_buffered(&self, request: AppendRequest<'_>) -> Result<Appended, LogError> {
        let max_bytes = self.shared.config.record_size_bytes_max();
        let size_bytes = crate::constants::RECORD_HEADER_SIZE_BYTES + request.message.len();
        if size_bytes > max_bytes {
            return Err(LogError::RecordTooLarge { size_bytes, max_bytes });
        }
        let capacity = self.shared.config.buffer_capacity_bytes;
        loop {
            let now_us = request.clock_us.unwrap_or_else(now_us);
            let placed = self.shared.state.borrow_mut().place(&request, capacity, now_us)?;
            match placed {
                Ok(appended) => {
                    if appended.queue_offset.is_some() {
                        self.shared.note_index_entry();
                    }
                    for _ in 0..appended.key_entries {
                        self.shared.note_index_entry();
                    }
                    self.shared.flush_signal.notify();
                    self.shared.prepare_next_in_time();
                    return Ok(appended);
                }
                Err(Blocked::Room { batches_target }) => {
                    self.shared.flush_signal.notify();
                    self.shared.batches.wait_for(batches_target).await?;
                }
                Err(Blocked::Segment) => {
                    self.shared.appends_waited_for_segment.set(true);
                    // Boxed: this wait is rare (a roll before the next
                    // segment is ready), and its future, a kilobyte, would
                    // otherwise be part of every request in flight
                    // (docs/PERFORMANCE.md, "Memory per request in flight").
                    Box::pin(self.shared.prepare_next_segment(true)).await?;
                }
            }
        }
    }

    /// Resolves once everything up to `end` is durable (fdatasynced), in
    /// either flush mode.
    pub async fn wait_durable(&self, end: u64) -> Result<(), LogError> {
        self.shared.flushed.wait_for(end).await?;
        Ok(())
    }

    /// The end a standby may be sent bytes up to: the durable end, or with
    /// `taken` (a sync primary, `read_replicable_bytes`) the end of what the
    /// flusher took for writing, so the standby writes beside this log.
    pub fn replicable_mark(&self, taken: bool) -> &Watermark<LogError> {
        if taken {
            &self.shared.taken
        } else {
            &self.shared.flushed
        }
    }

    /// Resolves once everything up to `end` is acknowledgeable.
    pub async fn wait_acknowledgeable(&self, end: u64) -> Result<(), LogError> {
        match self.shared.config.flush {
            FlushMode::Sync => self.shared.flushed.wait_for(end).await?,
            FlushMode::Async { .. } => self.shared.written.wait_for(end).await?,
        };
        Ok(())
    }

    /// Resolves once the visible position passes `position`.
    pub async fn wait_visible_beyond(&self, position: u64) -> Result<u64, LogError> {
        self.shared.visible_mark().wait_for(position + 1).await
    }

    pub fn positions(&self) -> Positions {
        Positions {
            appended: self.shared.state.borrow().appended(),
            written: self.shared.written.get(),
            flushed: self.shared.flushed.get(),
            visible: self.shared.visible_mark().get(),
        }
    }

    /// The offset the next record appended to `queue_id` gets.
    pub fn next_offset(&self, queue_id: u32) -> u64 {
        self.shared.state.borrow().queues.get(&queue_id).map_or(0, QueueIndex::next_offset)
    }

    /// First offset of `queue_id` a reader cannot see yet.
    pub fn visible_end_offset(&self, queue_id: u32) -> u64 {
        let visible = self.shared.visible_mark().get();
        let state = self.shared.state.borrow();
        state.queues.get(&queue_id).map_or(0, |queue| queue.visible_end_offset(visible))
    }

    /// First offset of `queue_id` a reader capped at log position `cap`
    /// cannot see (`visible_end_offset` when `cap` is at least the visible
    /// position). Exact only while `cap` is at least the index hold.
    pub fn visible_end_offset_below(&self, queue_id: u32, cap: u64) -> u64 {
        let visible = self.shared.visible_mark().get().min(cap);
        let state = self.shared.state.borrow();
        state.queues.get(&queue_id).map_or(0, |queue| queue.visible_end_offset(visible))
    }

    /// Keeps the index entries of records ending above `position` in
    /// memory (checkpoints stop there), so that reads capped at or above
    /// `position` stay exact; `u64::MAX` lifts the hold. The log's owner
    /// must move it forward, or the in-memory index grows without bound.
    pub fn hold_index_at(&self, position: u64) {
        self.shared.index_hold.set(position);
    }

    /// First offset of `queue_id` not yet durable (the same as
    /// `visible_end_offset` in sync mode).
    pub fn durable_end_offset(&self, queue_id: u32) -> u64 {
        let flushed = self.shared.flushed.get();
        let state = self.shared.state.borrow();
        state.queues.get(&queue_id).map_or(0, |queue| queue.visible_end_offset(flushed))
    }

    /// The first position the log still holds (its first segment's start).
    pub fn first_position(&self) -> u64 {
        self.shared.state.borrow().segments.keys().next().copied().unwrap_or(0)
    }

    /// Whether the log still holds `position` (retention deletes from the
    /// oldest segment).
    pub fn keeps(&self, position: u64) -> bool {
        self.shared.state.borrow().segments.keys().next().is_some_and(|first| position >= *first)
    }

    /// The earliest offset retention kept for `queue_id`.
    pub fn base_offset(&self, queue_id: u32) -> u64 {
        self.shared.state.borrow().queues.get(&queue_id).map_or(0, QueueIndex::base_offset)
    }

    /// Log position of the record at `offset` of `queue_id`, if the index
    /// holds it (it may read a page of the index file).
    pub async fn position_of(&self, queue_id: u32, offset: u64) -> Result<Option<u64>, LogError> {
        Ok(self.shared.index_entry(queue_id, offset).await?.map(|entry| entry.position))
    }

    /// What the index holds in memory: the entries not yet in the index
    /// files and the page cache.
    pub fn index_memory(&self) -> IndexMemory {
        let state = self.shared.state.borrow();
        let cache = self.shared.index_cache.borrow();
        IndexMemory {
            queues: state.queues.len(),
            unwritten_entries: state.queues.values().map(QueueIndex::unwritten_len).sum(),
            queue_bytes: state.queues.values().map(QueueIndex::resident_bytes).sum(),
            cached_pages: cache.page_count(),
            cache_bytes: cache.resident_bytes(),
            cache_stats: cache.stats,
            key_tail_entries: state.key_tail.len(),
            key_tail_bytes: state.key_tail.capacity() * std::mem::size_of::<KeyEntry>(),
        }
    }

    /// Retention keeps every segment that ends above `position`: state its
    /// owner keeps in records from there on is not yet in a durable snapshot.
    pub fn set_retention_floor(&self, position: u64) {
        self.shared.retention_floor.set(position);
    }

    /// The largest record (header and message) an append takes.
    pub fn record_size_bytes_max(&self) -> usize {
        self.shared.config.record_size_bytes_max()
    }

    pub fn stats(&self) -> LogStats {
        self.shared.state.borrow().stats.clone()
    }

    /// Reads the statistics in place (`stats` copies three histograms).
    pub fn with_stats<R>(&self, read: impl FnOnce(&LogStats) -> R) -> R {
        read(&self.shared.state.borrow().stats)
    }

    pub fn is_stopped(&self) -> Option<LogError> {
        self.shared.flushed.failure()
    }

    pub(super) fn shared(&self) -> &Rc<LogShared<S>> {
        &self.shared
    }

    /// Resolves once the segment after the active one is zero-filled and
    /// ready (benchmarks use it to keep preparation out of a measurement).
    pub async fn ready_next_segment(&self) -> Result<(), LogError> {
        self.shared.prepare_next_segment(true).await
    }

    /// Writes the index files and a checkpoint now.
    pub async fn checkpoint(&self) -> Result<(), LogError> {
        super::checkpoint::write_checkpoint(&self.shared).await
    }

    /// Flushes everything, writes a checkpoint and stops the tasks. Appends
    /// placed after it began may be refused or lost.
    pub async fn close(&self) -> Result<(), LogError> {
        self.shared.closing.set(true);
        self.shared.flush_signal.notify();
        let mut tasks = std::mem::take(&mut *self.tasks.borrow_mut()).into_iter();
        if let Some(flusher) = tasks.next() {
            flusher.await;
        }
        // A checkpoint under way finishes first: its index writes, dropped
        // with the checkpointer, could still reach the disk after the last
        // checkpoint's writes to the same blocks.
        let checkpoint_under_way = self.shared.checkpoint_lock.acquire_permit(1).await;
        drop(tasks);
        drop(checkpoint_under_way);
        if let Some(error) = self.shared.flushed.failure() {
            return Err(error);
        }
        match super::checkpoint::write_checkpoint(&self.shared).await {
            // Everything appended is synced in the log: a start rebuilds the
            // index from the last checkpoint on disk, as after a crash.
            Err(error) if error.is_no_space_before_a_sync() => {
                tracing::warn!(%error, "the disk is full: the log closed without its last checkpoint; the next start reads the log from the one before");
                Ok(())
            }
            closed => closed,
        }
    }
}

impl<S: Storage> LogShared<S> {
    /// An indexed append: one more entry waits for the index file.
    pub fn note_index_entry(&self) {
        let backlog = self.index_backlog.get() + 1;
        self.index_backlog.set(backlog);
        if backlog >= self.config.index_unwritten_entries_wake {
            self.index_backlog_signal.notify();
        }
    }

    /// Recounts the entries waiting for the index files (after recovery and
    /// each checkpoint) and wakes the checkpointer if they are too many.
    pub fn count_index_backlog(&self) {
        let state = self.state.borrow();
        let backlog = state.queues.values().map(QueueIndex::unwritten_len).sum::<usize>() + state.key_tail.len();
        drop(state);
        self.index_backlog.set(backlog as u64);
        if self.index_backlog.get() >= self.config.index_unwritten_entries_wake {
            self.index_backlog_signal.notify();
        }
    }

    pub fn visible_mark(&self) -> &Watermark<LogError> {
        match self.config.flush {
            FlushMode::Sync => &self.flushed,
            FlushMode::Async { .. } => &self.written,
        }
    }

    /// Stops the log for good after a failed write or sync outside the
    /// flusher (segment preparation, index files, checkpoint, retention) and
    /// returns what callers see: `Stopped`, with the first cause.
    pub fn fail_stop(&self, error: LogError) -> LogError {
        if error.is_stopped() {
            return error;
        }
        let already = self.state.borrow().stopped.clone();
        let cause = match already {
            Some(cause) => cause,
            None => {
                self.stop(error.clone());
                self.state.borrow().stopped.clone().unwrap_or_else(|| Arc::new(error))
            }
        };
        LogError::Stopped { cause }
    }

    fn stopped_error(&self) -> Option<LogError> {
        let cause = self.state.borrow().stopped.clone()?;
        Some(LogError::Stopped { cause })
    }

    /// Makes sure the segment after the active one exists. One task prepares
    /// at a time; the others wait for its attempt and try again. A full disk
    /// fails only this attempt; a failed write or sync of the new file stops
    /// the log.
    pub async fn prepare_next_segment(&self, urgent: bool) -> Result<(), LogError> {
        if let Some(stopped) = self.stopped_error() {
            return Err(stopped);
        }
        let attempts = self.segment_attempts.get();
        let start = {
            let mut state = self.state.borrow_mut();
            if state.next_segment.is_some() {
                return Ok(());
            }
            let start = (!state.preparing_segment).then(|| state.filling.segment.end());
            state.preparing_segment = true;
            if start.is_some() {
                self.zero_fill.segment_used_at_start.set(state.filling.file_offset + state.filling.filled as u64);
            }
            start
        };
        let Some(start) = start else {
            if urgent {
                // Someone needs the segment now: fill at full speed.
                self.zero_fill.urgent.set(true);
                self.zero_fill.behind.set(true);
            }
            self.segment_attempts.wait_for(attempts + 1).await?;
            return Ok(());
        };
        let size = self.config.segment_size_bytes;
        self.zero_fill.urgent.set(urgent);
        self.zero_fill.behind.set(urgent);
        self.zero_fill.left_bytes.set(size);
        let pace =
            ZeroFillPace { bytes_per_second: self.config.zero_fill_bytes_per_second, progress: self.zero_fill.clone() };
        let segments_dir = self.config.dir.join(super::SEGMENTS_DIR);
        let started = Instant::now();
        let created = create_segment_classified(&self.storage, &segments_dir, start, size, &pace).await;
        let took_ms = started.elapsed().as_millis() as u64;
        // A refused creation is the appends' `DiskFull`, not a slow fill.
        if self.appends_waited_for_segment.take() && created.is_ok() {
            tracing::warn!(start, took_ms, "appends waited for the next segment's zero fill");
        } else {
            tracing::debug!(start, took_ms, "next segment prepared");
        }
        self.state.borrow_mut().preparing_segment = false;
        let result = match created {
            Ok(segment) => {
                self.state.borrow_mut().next_segment = Some(Rc::new(segment));
                Ok(())
            }
            Err(SegmentCreation::Refused(error)) => Err(error),
            Err(SegmentCreation::Failed(error)) => Err(self.fail_stop(error)),
        };
        self.segment_attempts.advance(attempts + 1);
        result
    }

    /// Starts or hurries the next segment's zero fill as the active segment
    /// fills: started at `NEXT_SEGMENT_PREPARE_AT` (never during start-up),
    /// at full speed from `NEXT_SEGMENT_URGENT_AT` so appends do not wait
    /// for it at the roll.
    fn prepare_next_in_time(self: &Rc<Self>) {
        let state = self.state.borrow();
        if state.next_segment.is_some() {
            return;
        }
        let used = state.filling.file_offset + state.filling.filled as u64;
        let size = state.filling.segment.size_bytes;
        let past = |(numerator, denominator): (u64, u64)| used >= size / denominator * numerator;
        let preparing = state.preparing_segment;
        drop(state);
        if preparing && past(NEXT_SEGMENT_URGENT_AT) {
            self.zero_fill.urgent.set(true);
            self.zero_fill.behind.set(self.zero_fill_behind(used, size));
        } else if !preparing && past(NEXT_SEGMENT_PREPARE_AT) {
            self.prepare_in_background();
        }
    }

    fn zero_fill_behind(&self, used: u64, size: u64) -> bool {
        let progress = &self.zero_fill;
        let fill = FillRace {
            fill_bytes: self.config.segment_size_bytes,
            left_bytes: progress.left_bytes.get(),
            used_at_start: progress.segment_used_at_start.get(),
            used,
            size,
        };
        fill.is_behind()
    }

    /// Prepares the next segment in a task of its own, so the append that
    /// rolls over finds it ready.
    pub fn prepare_in_background(self: &Rc<Self>) {
        {
            let mut state = self.state.borrow_mut();
            // One request at a time: a batch of appends past the quarter
            // mark (`NEXT_SEGMENT_PREPARE_AT`) would otherwise spawn a task
            // per record.
            if state.next_segment.is_some() || state.preparing_segment || state.preparation_requested {
                return;
            }
            let failed_at = self.background_preparation_failed_at.get();
            if failed_at.is_some_and(|at| at.elapsed() < BACKGROUND_RETRY_AFTER_FAILURE) {
                return;
            }
            state.preparation_requested = true;
        }
        let shared = self.clone();
        glommio::spawn_local(async move {
            let prepared = shared.prepare_next_segment(false).await;
            shared.state.borrow_mut().preparation_requested = false;
            let failed = prepared.is_err();
            shared.background_preparation_failed_at.set(failed.then(Instant::now));
            match prepared {
                // `stop` already said why.
                Err(error) if error.is_stopped() => {}
                Err(error) => tracing::warn!(
                    %error,
                    retry_after_ms = BACKGROUND_RETRY_AFTER_FAILURE.as_millis() as u64,
                    "preparing the next segment failed; the append that needs it will retry"
                ),
                Ok(()) => {}
            }
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::FillRace;

    const GIB: u64 = 1 << 30;

    fn race(left_bytes: u64, used: u64) -> FillRace {
        FillRace { fill_bytes: GIB, left_bytes, used_at_start: GIB / 4, used, size: GIB }
    }

    #[test]
    fn a_fill_at_one_and_a_half_times_the_appends_pace_is_not_behind() {
        // 3/4 filled while half a segment was appended: the last quarter
        // takes a sixth of the half the appends need for the last quarter.
        assert!(!race(GIB / 4, 3 * GIB / 4).is_behind());
    }

    #[test]
    fn a_fill_that_would_use_most_of_the_room_left_is_behind() {
        // A shard appending 300 MB/s beside a fill reaching 410 MB/s: 70% of
        // the fill done when the appends reach three quarters. At that pace
        // its last 30% takes 86% of the appends' time to the roll.
        let left = 3 * GIB / 10;
        assert!(race(left, 3 * GIB / 4).is_behind());
        // The same fill a little further on is not.
        assert!(!race(GIB / 5, 3 * GIB / 4).is_behind());
    }

    #[test]
    fn a_done_fill_or_idle_appends_are_never_behind() {
        assert!(!race(0, GIB - 1).is_behind(), "nothing left to fill");
        assert!(!race(GIB / 2, GIB / 4).is_behind(), "nothing appended since the fill started");
        assert!(race(GIB, 3 * GIB / 4).is_behind(), "nothing filled while the appends went on");
        assert!(race(GIB / 2, GIB).is_behind(), "the active segment is full");
    }
}
