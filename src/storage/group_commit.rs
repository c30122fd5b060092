//! Group commit: appenders copy records into the shard's filling buffer; one
//! flusher writes everything that collected since its last round with
//! O_DIRECT and covers it with one fdatasync. While a round is in flight, new
//! appends fill the next buffer, so one fdatasync carries all of them.
//!
//! Positions (global log positions, `appended >= written >= flushed`):
//! - `appended`: end of the last record placed in a buffer (memory only);
//! - `written`: end of what the device accepted (`Watermark` in `LogShared`);
//! - `flushed`: end of what an fdatasync covered: durable.
//!
//! Every buffer starts on a fresh block with a batch marker (written when the
//! flusher takes the buffer, carrying the durable position of that moment)
//! and is written padded with zeros to whole blocks. The next buffer starts
//! on the next block: a flush never rewrites a block that holds acknowledged
//! bytes, so a torn write can only damage records nobody was answered for.
//! The price is the padding, at most one block per write.

use super::aligned::AlignedBuf;
use super::backend::{Storage, StorageFile};
use super::config::FlushMode;
use super::log::{LogShared, LogState};
use super::read::WrittenBuffer;
use super::record::{self, RecordHeader, BATCH_MARKER_SIZE_BYTES, NO_POSITION, NO_QUEUE_OFFSET};
use super::segment::Segment;
use super::{AppendRequest, Appended, LogError};
use crate::constants::{BLOCK_SIZE_BYTES, RECORD_HEADER_SIZE_BYTES};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Buffers sealed and waiting for the flusher, beyond the filling one. With
/// one in flight that makes at most three buffers of unsynced data.
const SEALED_BUFFERS_MAX: usize = 1;

fn align_up(value: usize) -> usize {
    value.div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES
}

/// The buffer appends go into: `data[0]` belongs at `file_offset` of
/// `segment` (a block boundary). Once a record is placed, `data[..filled]`
/// holds room for the batch marker followed by records.
pub struct FillBuffer<F> {
    pub segment: Rc<Segment<F>>,
    pub file_offset: u64,
    /// Where the log's data ended in this segment before this buffer (its
    /// batch marker records the padding between, so recovery can tell a
    /// write's padding from sectors it lost).
    pub data_before: u64,
    pub data: AlignedBuf,
    pub filled: usize,
    pub records: u64,
}

impl<F> FillBuffer<F> {
    pub fn start(&self) -> u64 {
        self.segment.start + self.file_offset
    }

    pub fn end(&self) -> u64 {
        self.start() + self.filled as u64
    }

    /// An empty buffer at `file_offset` (a block boundary) of `segment`.
    pub fn empty_at(segment: Rc<Segment<F>>, file_offset: u64, data_before: u64, data: AlignedBuf) -> Self {
        debug_assert_eq!(file_offset % BLOCK_SIZE_BYTES as u64, 0);
        debug_assert!(file_offset <= segment.size_bytes && data_before <= file_offset);
        Self { segment, file_offset, data_before, data, filled: 0, records: 0 }
    }

    /// Where the log's data ends in this segment once this buffer is written.
    fn data_end(&self) -> u64 {
        if self.filled == 0 {
            self.data_before
        } else {
            self.file_offset + self.filled as u64
        }
    }

    /// Bytes a record of `size` takes here: the first one brings the marker.
    fn cost(&self, size: usize) -> usize {
        if self.filled == 0 {
            size + BATCH_MARKER_SIZE_BYTES
        } else {
            size
        }
    }

    fn room(&self) -> usize {
        self.data.capacity() - self.filled
    }

    fn segment_room(&self) -> u64 {
        self.segment.size_bytes - self.file_offset - self.filled as u64
    }

    /// Where the buffer after this one starts in the same segment.
    fn next_file_offset(&self) -> u64 {
        self.file_offset + align_up(self.filled) as u64
    }
}

/// A buffer taken out of filling, waiting to be written.
pub struct SealedBuffer<F> {
    pub fill: FillBuffer<F>,
    /// The segment is full after this buffer: the round must fdatasync it
    /// before anything is written to the next segment.
    pub ends_segment: bool,
}

/// What `place` could not do by itself.
pub enum Blocked {
    /// Buffers are full; retry once the flusher has taken this many batches
    /// (taking a batch empties the sealed queue). A position would not do:
    /// a sealed buffer may hold no new record, its end already written.
    Room { batches_target: u64 },
    /// The active segment is full and the next one is not ready.
    Segment,
}

impl<F: StorageFile> LogState<F> {
    /// End of the last record placed: the filling buffer always ends there.
    pub fn appended(&self) -> u64 {
        self.filling.end()
    }

    pub fn take_buffer(&mut self, capacity: usize) -> AlignedBuf {
        self.pool.pop().unwrap_or_else(|| AlignedBuf::zeroed(capacity))
    }

    /// Takes the filling buffer out; the new one starts on the next block of
    /// the same segment, or at the start of `next`.
    pub fn seal(&mut self, capacity: usize, next: Option<Rc<Segment<F>>>) {
        let data = self.take_buffer(capacity);
        let ends_segment = next.is_some();
        let fresh = match next {
            Some(segment) => FillBuffer::empty_at(segment, 0, 0, data),
            None => {
                let (segment, offset) = (self.filling.segment.clone(), self.filling.next_file_offset());
                FillBuffer::empty_at(segment, offset, self.filling.data_end(), data)
            }
        };
        let fill = std::mem::replace(&mut self.filling, fresh);
        self.sealed.push_back(SealedBuffer { fill, ends_segment });
    }

    fn stopped_error(&self) -> Option<LogError> {
        self.stopped.as_ref().map(|cause| LogError::Stopped { cause: cause.clone() })
    }

    /// Copies one record into the filling buffer and indexes it. Never waits:
    /// says what it is blocked on instead.
    pub fn place(
        &mut self,
        request: &AppendRequest<'_>,
        capacity: usize,
        now_us: u64,
    ) -> Result<Result<Appended, Blocked>, LogError> {
        if let Some(error) = self.stopped_error() {
            return Err(error);
        }
        let mut request = *request;
        // At most twice: a reference that would reach into an earlier
        // segment becomes its copy, which needs room of its own.
        loop {
            let length = RECORD_HEADER_SIZE_BYTES + request.message.len();
            let size = record::padded_size(length);
            if let Err(blocked) = self.make_room(size, capacity) {
                return Ok(Err(blocked));
            }
            if let (Some(copy), Some((referenced, _))) = (request.copy_if_far, request.reference) {
                if referenced < self.filling.segment.start {
                    let Some(message) = copy.message else {
                        return Err(LogError::FarReference { position: referenced });
                    };
                    request = AppendRequest {
                        flags: copy.flags,
                        reference: Some((copy.back_pointer, 0)),
                        message,
                        copy_if_far: None,
                        ..request
                    };
                    continue;
                }
            }
            return Ok(Ok(self.encode(&request, length, now_us)));
        }
    }

    /// Seals buffers and rolls segments until a record of `size` fits.
    fn make_room(&mut self, size: usize, capacity: usize) -> Result<(), Blocked> {
        // At most: seal a full buffer, find the rest of the segment too
        // small, roll to the next segment.
        loop {
            let cost = self.filling.cost(size) as u64;
            if self.filling.segment_room() < cost {
                let Some(next) = self.next_segment.clone() else { return Err(Blocked::Segment) };
                if self.sealed.len() >= SEALED_BUFFERS_MAX {
                    return Err(self.room_target());
                }
                self.next_segment = None;
                self.segments.insert(next.start, next.clone());
                self.seal(capacity, Some(next));
            } else if (self.filling.room() as u64) < cost {
                if self.sealed.len() >= SEALED_BUFFERS_MAX {
                    return Err(self.room_target());
                }
                self.seal(capacity, None);
            } else {
                return Ok(());
            }
        }
    }

    fn room_target(&self) -> Blocked {
        Blocked::Room { batches_target: self.batches_taken + 1 }
    }

    fn encode(&mut self, request: &AppendRequest<'_>, length: usize, now_us: u64) -> Appended {
        if self.filling.filled == 0 {
            // Room for the batch marker, written when the flusher takes the buffer.
            self.filling.filled = BATCH_MARKER_SIZE_BYTES;
        }
        let position = self.filling.end();
        let size = record::padded_size(length);
        let store_timestamp_us = now_us.max(self.last_store_timestamp_us);
        self.last_store_timestamp_us = store_timestamp_us;
        let queue_offset = request.indexed.then(|| {
            // The entry points at this record even for an op record: a read
            // follows its reference, and entries rise with offsets.
            let entry = super::index::IndexEntry {
                position,
                size_bytes: length as u32,
                tag_hash: request.tag_hash,
                store_timestamp_us,
            };
            self.queues.entry(request.queue_id).or_default().push(entry, position + size as u64)
        });
        let keyed = super::keys::is_keyed(request.flags, request.indexed, request.reference.is_some());
        let key_hashes: &[u64] = if keyed && self.keys_enabled { request.key_hashes } else { &[] };
        self.key_tail.extend(key_hashes.iter().map(|key_hash| super::keys::KeyEntry {
            key_hash: *key_hash,
            position,
            store_timestamp_us,
            size_bytes: length as u32,
            queue_id: request.queue_id,
        }));
        let (ref_position, ref_size) = request.reference.unwrap_or((NO_POSITION, 0));
        let header = RecordHeader {
            length: length as u32,
            flags: request.flags,
            queue_id: request.queue_id,
            tag_hash: request.tag_hash,
            queue_offset: queue_offset.unwrap_or(NO_QUEUE_OFFSET),
            store_timestamp_us,
            ref_position,
            ref_size,
            reconsume_times: request.reconsume_times,
        };
        let filled = self.filling.filled;
        let destination = &mut self.filling.data.as_mut_slice()[filled..filled + size];
        record::encode(destination, &header, request.message);
        self.filling.filled += size;
        self.filling.records += 1;
        self.filling.segment.last_store_timestamp_us.set(store_timestamp_us);
        Appended { position, end: self.filling.end(), queue_offset, store_timestamp_us, key_entries: key_hashes.len() }
    }

    /// Whether records wait to be written or synced.
    pub fn has_pending(&self) -> bool {
        self.filling.records > 0 || !self.sealed.is_empty() || !self.unsynced_segments.is_empty()
    }

    /// Everything a flush round writes: the sealed buffers and the filling
    /// one if it holds new records.
    fn take_batch(&mut self, capacity: usize) -> Vec<SealedBuffer<F>> {
        if self.filling.records > 0 {
            self.seal(capacity, None);
        }
        self.batches_taken += 1;
        self.sealed.drain(..).collect()
    }
}

/// What one round did.
pub struct Round {
    pub synced: bool,
}

/// A sealed buffer with its batch marker stamped: final bytes, readable
/// from the recent buffers, waiting for their write.
struct TakenWrite<F> {
    segment: Rc<Segment<F>>,
    file_offset: u64,
    buffer: Rc<WrittenBuffer>,
    records: u64,
    ends_segment: bool,
}

impl<F> TakenWrite<F> {
    /// Bytes the write covers: the data padded to whole blocks.
    fn length(&self) -> usize {
        align_up(self.buffer.filled)
    }

    fn end(&self) -> u64 {
        self.buffer.data_end()
    }
}

impl<S: Storage> LogShared<S> {
    /// Writes every pending buffer and, when `sync` is due, fdatasyncs.
    pub async fn flush_round(&self, force_sync: bool) -> Result<Round, LogError> {
        let capacity = self.config.buffer_capacity_bytes;
        let batch = self.state.borrow_mut().take_batch(capacity);
        self.batches.advance(self.state.borrow().batches_taken);
        let started = Instant::now();
        let durable_writes = self.durable_writes_fit(&batch);
        let written_buffers = !batch.is_empty();
        let (mut records, mut bytes, mut padding) = (0, 0, 0);
        for sealed in batch {
            // Stamped one at a time, each right before its write: its marker
            // claims what is durable then (after an earlier buffer that ended
            // a segment was synced), as recovery expects.
            let write = self.stamp(sealed);
            let length = write.length();
            if length > 0 {
                // Final now: a sync primary ships it to its standby while it
                // is written and synced here (`read_replicable_bytes`).
                self.taken.advance(write.end());
                self.write(&write, durable_writes).await?;
                if let Some(error) = self.state.borrow().stopped_error() {
                    return Err(error);
                }
                self.written.advance(write.end());
            }
            records += write.records;
            bytes += length as u64;
            if write.records > 0 {
                padding += (length - write.buffer.filled + BATCH_MARKER_SIZE_BYTES) as u64;
            }
            // A full segment is durable before anything reaches the next one,
            // so recovery can trust that data in a later segment means every
            // earlier segment is complete.
            if write.ends_segment {
                self.sync_unsynced().await?;
            }
        }
        let sync = match self.config.flush {
            FlushMode::Sync => true,
            FlushMode::Async { .. } => force_sync || self.state.borrow().unsynced_bytes >= capacity as u64,
        };
        if durable_writes {
            self.mark_durable(self.written.get())?;
        } else if sync {
            self.sync_unsynced().await?;
            if matches!(self.config.flush, FlushMode::Async { .. }) {
                self.vouch_when_idle().await?;
            }
        }
        if written_buffers {
            let latency_us = started.elapsed().as_micros() as u64;
            self.state.borrow_mut().stats.record_flush(records, bytes, padding, latency_us);
        }
        Ok(Round { synced: sync })
    }

    /// Stamps a sealed buffer's batch marker and moves it to the recent
    /// buffers (readers see only what their watermark covers).
    fn stamp(&self, sealed: SealedBuffer<S::File>) -> TakenWrite<S::File> {
        let SealedBuffer { mut fill, ends_segment } = sealed;
        if fill.records > 0 {
            let gap_bytes = (fill.file_offset - fill.data_before) as u32;
            let start = record::WriteStart { position: fill.start(), durable_position: self.flushed.get() };
            self.vouched.set(self.vouched.get().max(start.durable_position));
            let length = align_up(fill.filled);
            let write = &mut fill.data.as_mut_slice()[..length];
            // Records wrote every byte before `filled` (their padding too);
            // a reused buffer holds old bytes after it.
            write[fill.filled..].fill(0);
            record::stamp_batch_marker(write, start, gap_bytes, super::now_us());
        }
        let (segment, file_offset, records) = (fill.segment.clone(), fill.file_offset, fill.records);
        let buffer = Rc::new(WrittenBuffer { start: fill.start(), data: fill.data, filled: fill.filled });
        self.retire(buffer.clone());
        TakenWrite { segment, file_offset, buffer, records, ends_segment }
    }

    /// In sync mode a round of one write, with nothing else unsynced, is
    /// made durable by the write itself (`write_durable_at`): its fdatasync
    /// would cover exactly that write.
    fn durable_writes_fit(&self, batch: &[SealedBuffer<S::File>]) -> bool {
        matches!(self.config.flush, FlushMode::Sync)
            && matches!(batch, [only] if only.fill.filled > 0)
            && self.state.borrow().unsynced_segments.is_empty()
    }

    /// After an fdatasync in async mode that covered several writes, only
    /// the next write's batch marker would say those writes are durable, and
    /// an idle log has no next write: damage in them would look like a torn
    /// tail. A lone batch marker, written and synced on the block the next
    /// write would start on, says it now. Not in sync mode: there every
    /// write's fdatasync is waited for, and only the last one is unvouched.
    async fn vouch_when_idle(&self) -> Result<(), LogError> {
        let flushed = self.flushed.get();
        let block = BLOCK_SIZE_BYTES as u64;
        let (segment, file_offset, gap_bytes) = {
            let mut state = self.state.borrow_mut();
            let idle = state.filling.filled == 0 && state.sealed.is_empty();
            let fill = &mut state.filling;
            // A write still to come vouches for it, as does the first
            // write of the next segment.
            if flushed <= self.vouched.get() || !idle || fill.file_offset + 2 * block > fill.segment.size_bytes {
                return Ok(());
            }
            let (file_offset, gap_bytes) = (fill.file_offset, (fill.file_offset - fill.data_before) as u32);
            fill.data_before = file_offset + BATCH_MARKER_SIZE_BYTES as u64;
            fill.file_offset += block;
            (fill.segment.clone(), file_offset, gap_bytes)
        };
        let mut data = self.state.borrow_mut().take_buffer(self.config.buffer_capacity_bytes);
        let start = record::WriteStart { position: segment.start + file_offset, durable_position: flushed };
        data.clear(BLOCK_SIZE_BYTES);
        record::stamp_batch_marker(&mut data.as_mut_slice()[..BLOCK_SIZE_BYTES], start, gap_bytes, super::now_us());
        let written = segment.file.write_at(&data.as_slice()[..BLOCK_SIZE_BYTES], file_offset).await;
        self.state.borrow_mut().pool.push(data);
        written.map_err(|error| LogError::io("write batch marker", &segment.path, start.position, error))?;
        self.note_unsynced(&segment, block);
        let marker_end = start.position + BATCH_MARKER_SIZE_BYTES as u64;
        self.taken.advance(marker_end);
        self.written.advance(marker_end);
        // The marker itself needs no vouching: no second one follows it.
        self.vouched.set(marker_end);
        self.sync_unsynced().await
    }

    /// One O_DIRECT write of a whole buffer, padded to whole blocks; with
    /// `durable`, one that is durable when it completes.
    async fn write(&self, write: &TakenWrite<S::File>, durable: bool) -> Result<(), LogError> {
        let (file, length) = (&write.segment.file, write.length());
        let data = &write.buffer.data.as_slice()[..length];
        let written = if durable {
            file.write_durable_at(data, write.file_offset).await
        } else {
            file.write_at(data, write.file_offset).await
        };
        written.map_err(|error| LogError::io("write", &write.segment.path, write.buffer.start, error))?;
        if !durable {
            self.note_unsynced(&write.segment, length as u64);
        }
        Ok(())
    }

    fn note_unsynced(&self, segment: &Rc<Segment<S::File>>, bytes: u64) {
        let mut state = self.state.borrow_mut();
        state.unsynced_bytes += bytes;
        if !state.unsynced_segments.iter().any(|known| known.start == segment.start) {
            state.unsynced_segments.push(segment.clone());
        }
    }

    /// fdatasync of every segment written since the last one, oldest first;
    /// then everything written is durable.
    async fn sync_unsynced(&self) -> Result<(), LogError> {
        let written = self.written.get();
        let segments = std::mem::take(&mut self.state.borrow_mut().unsynced_segments);
        if segments.is_empty() {
            return Ok(());
        }
        for segment in &segments {
            segment.file.fdatasync().await.map_err(|error| LogError::io("fdatasync", &segment.path, written, error))?;
        }
        self.state.borrow_mut().unsynced_bytes = 0;
        self.mark_durable(written)
    }

    /// Everything up to `written` reached the disk durably.
    fn mark_durable(&self, written: u64) -> Result<(), LogError> {
        if let Some(error) = self.state.borrow().stopped_error() {
            // Stopped while this round was on the disk: its records were
            // refused to their appenders and must not become visible.
            return Err(error);
        }
        if written > self.flushed.get() {
            self.flushed.advance(written);
        }
        Ok(())
    }

    /// A taken buffer goes to the recent cache; evicted ones that nobody
    /// holds any more (a write in flight does) back to the pool, as they
    /// are: records and `stamp` write every byte a write carries, so the
    /// megabytes a buffer held are not zeroed again.
    fn retire(&self, buffer: Rc<WrittenBuffer>) {
        let mut state = self.state.borrow_mut();
        for evicted in state.recent.push(buffer, self.config.recent_buffers_bytes) {
            if state.pool.len() < 2 * SEALED_BUFFERS_MAX + 2 {
                state.pool.push(evicted.data);
            }
        }
    }

    /// Fails every waiter and refuses every later append: after a failed
    /// write or fdatasync nothing is known about what reached the disk.
    pub fn stop(&self, error: LogError) {
        tracing::error!(%error, "commit log stopped: no more appends are accepted");
        let cause = Arc::new(error);
        self.state.borrow_mut().stopped = Some(cause.clone());
        self.taken.fail(LogError::Stopped { cause: cause.clone() });
        self.written.fail(LogError::Stopped { cause: cause.clone() });
        self.batches.fail(LogError::Stopped { cause: cause.clone() });
        self.flushed.fail(LogError::Stopped { cause });
    }
}

/// The flusher task of a log: one per shard.
pub async fn run_flusher<S: Storage>(shared: Rc<LogShared<S>>) {
    let mut last_sync = Instant::now();
    loop {
        match shared.config.flush {
            FlushMode::Sync => shared.flush_signal.wait().await,
            FlushMode::Async { interval } => {
                let remaining = interval.saturating_sub(last_sync.elapsed());
                futures_lite::future::or(shared.flush_signal.wait(), glommio::timer::sleep(remaining)).await;
            }
        }
        // Stopped by another task (a failed index write, checkpoint or
        // segment preparation): nothing more reaches the disk or a reader.
        if shared.state.borrow().stopped.is_some() {
            return;
        }
        let closing = shared.closing.get();
        let interval_due = match shared.config.flush {
            FlushMode::Async { interval } => last_sync.elapsed() >= interval,
            FlushMode::Sync => false,
        };
        match shared.flush_round(closing || interval_due).await {
            Ok(round) if round.synced => last_sync = Instant::now(),
            Ok(_) => {}
            Err(error) => {
                if !error.is_stopped() {
                    shared.stop(error);
                }
                return;
            }
        }
        if closing && !shared.state.borrow().has_pending() {
            return;
        }
    }
}
