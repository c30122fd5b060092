//! A standby's log follows its primary's (issue 13): durable bytes the
//! primary handed out are verified record by record (`replicated`), written
//! at the same positions of segment files with the same starts, fdatasynced,
//! and indexed as recovery indexes what it scans. The standby's files end up
//! byte for byte the primary's, so a restart recovers them like any log and
//! the standby continues from its durable end.
//!
//! A following log takes no appends of its own: the two would interleave
//! records the primary never wrote.

use super::aligned::AlignedBuf;
use super::backend::{Storage, StorageFile};
use super::keys::{header_is_keyed, KeyEntry};
use super::record::{self, Decoded, RecordHeader};
use super::recovery::{filling_at, index_record};
use super::replicated::{verified_end, ReplicaDamage};
use super::{CommitLog, LogError};
use crate::constants::{BLOCK_SIZE_BYTES, RECORD_HEADER_SIZE_BYTES};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Bytes of the primary's log as one REPLICATE answer (or several
/// gathered) brought them.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaSpan<'a> {
    pub position: u64,
    pub bytes: &'a [u8],
    /// The primary's segment that holds them.
    pub segment_start: u64,
    pub segment_size_bytes: u64,
    /// The primary's durable end when it answered.
    pub source_end: u64,
}

/// Why replicated bytes were not taken.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The bytes do not hold together: nothing from there on was written.
    #[error(transparent)]
    Damage(#[from] ReplicaDamage),
    /// The bytes are not for this log's end or layout.
    #[error("replicated bytes do not continue this log: {0}")]
    Misfit(String),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl<S: Storage> CommitLog<S> {
    /// Where this log wants its primary's bytes from: its durable end,
    /// always a record boundary or padding (recovery ends on one, and
    /// `take_replicated` writes only whole records).
    pub fn follow_position(&self) -> u64 {
        self.shared().flushed.get()
    }

    /// Verifies `span.bytes` (the primary's log from `span.position`),
    /// writes the verified prefix at the same place, fdatasyncs and indexes
    /// it. Returns the new durable end: the end of the last whole write in
    /// the bytes (a write cut by their end waits for the rest), always a
    /// place the primary's log has a write boundary too.
    pub async fn take_replicated(&self, span: ReplicaSpan<'_>) -> Result<u64, FollowError> {
        let shared = self.shared();
        let ReplicaSpan { position, bytes, segment_start, segment_size_bytes, source_end } = span;
        if segment_size_bytes != shared.config.segment_size_bytes {
            return Err(FollowError::Misfit(format!(
                "the primary's segments are {segment_size_bytes} bytes, this log's {}: set the same segment_size_bytes",
                shared.config.segment_size_bytes
            )));
        }
        let durable = shared.flushed.get();
        if position != durable {
            return Err(FollowError::Misfit(format!("they start at {position}, this log's durable end is {durable}")));
        }
        {
            let state = shared.state.borrow();
            if state.filling.records > 0 || !state.sealed.is_empty() || shared.written.get() != durable {
                return Err(FollowError::Misfit("this log has appends of its own in flight".into()));
            }
        }
        let segment_end = segment_start.saturating_add(segment_size_bytes);
        if !(segment_start..segment_end).contains(&position) {
            return Err(FollowError::Misfit(format!("{position} lies outside segment {segment_start}..{segment_end}")));
        }
        let end = verified_end(position, bytes, segment_end, source_end)?;
        if end == position {
            return Ok(durable);
        }
        let segment = self.segment_starting(segment_start).await?;
        // The padding after the last write is zeros on disk already (the
        // segment files are zero-filled): the write starts at the next
        // block, and no block holding durable bytes is written again.
        let block = BLOCK_SIZE_BYTES as u64;
        let to_block = (block - position % block) % block;
        let lead = to_block.min(end - position);
        let skipped = if bytes[..lead as usize].iter().all(|byte| *byte == 0) { lead } else { 0 };
        let from = position + skipped;
        let verified = &bytes[skipped as usize..(end - position) as usize];
        if !verified.is_empty() {
            let started = std::time::Instant::now();
            let written_bytes = self.write_replicated(&segment, from, verified).await?;
            let latency_us = started.elapsed().as_micros() as u64;
            let (records, record_bytes) = self.index_replicated(&segment, from, verified)?;
            // The same figures a primary's flush round keeps: a standby's
            // `fdatasync_seconds` is its share of a sync produce's answer.
            let padding = written_bytes.saturating_sub(record_bytes);
            shared.state.borrow_mut().stats.record_flush(records, written_bytes, padding, latency_us);
        }
        {
            // The filling buffer moves to the new end; its memory (empty: a
            // following log appends nothing) is reused, not allocated anew
            // for every replicated write.
            let mut state = shared.state.borrow_mut();
            let data = state.take_buffer(shared.config.buffer_capacity_bytes);
            let before = std::mem::replace(&mut state.filling, filling_at(&segment, end, data));
            debug_assert_eq!(before.filled, 0);
            state.pool.push(before.data);
        }
        // Nothing of its own to vouch for: the primary's markers are in the bytes.
        shared.vouched.set(shared.vouched.get().max(end));
        shared.taken.advance(end);
        shared.written.advance(end);
        shared.flushed.advance(end);
        Ok(end)
    }

    /// Writes `verified` at log position `from` of `segment` (O_DIRECT,
    /// whole blocks), durable when the write completes; returns the bytes
    /// written from `from` on. Only when `from` lies inside a block
    /// (the primary's write continues past the last answer's durable end:
    /// never with whole writes) is that block written again with the bytes
    /// it holds.
    async fn write_replicated(
        &self,
        segment: &super::segment::Segment<S::File>,
        from: u64,
        verified: &[u8],
    ) -> Result<u64, FollowError> {
        let block = BLOCK_SIZE_BYTES as u64;
        let end = from + verified.len() as u64;
        let first_block = (from - segment.start) / block * block;
        let write_end = ((end - segment.start).div_ceil(block) * block).min(segment.size_bytes);
        let kept = segment.read(first_block, (from - segment.start - first_block) as usize).await?;
        let mut buffer = AlignedBuf::zeroed((write_end - first_block) as usize);
        let data = buffer.as_mut_slice();
        data[..kept.len()].copy_from_slice(&kept);
        data[kept.len()..kept.len() + verified.len()].copy_from_slice(verified);
        let io = |operation, error| LogError::io(operation, &segment.path, from, error);
        segment
            .file
            .write_durable_at(buffer.as_slice(), first_block)
            .await
            .map_err(|error| io("write replicated", error))?;
        // The kept prefix was written before: not new bytes.
        Ok(write_end - first_block - kept.len() as u64)
    }

    /// The segment starting at `start`: the active one, or the next one,
    /// which becomes active (the primary's bytes reached its next segment).
    async fn segment_starting(&self, start: u64) -> Result<Rc<super::segment::Segment<S::File>>, FollowError> {
        let shared = self.shared();
        let active = shared.state.borrow().filling.segment.clone();
        if active.start == start {
            return Ok(active);
        }
        if active.end() != start {
            return Err(FollowError::Misfit(format!(
                "segment {start} neither is this log's active one ({}) nor follows it",
                active.start
            )));
        }
        shared.prepare_next_segment(true).await?;
        let mut state = shared.state.borrow_mut();
        let next = state.next_segment.take().ok_or_else(|| FollowError::Misfit("no next segment was made".into()))?;
        state.segments.insert(next.start, next.clone());
        Ok(next)
    }

    /// Indexes verified records as recovery does: queue entries (a queue
    /// offset that does not follow its queue is refused before anything is
    /// indexed) and key entries. Returns the records and the bytes they
    /// fill, padded.
    fn index_replicated(
        &self,
        segment: &super::segment::Segment<S::File>,
        position: u64,
        bytes: &[u8],
    ) -> Result<(u64, u64), FollowError> {
        let shared = self.shared();
        let records = records_in(position, bytes)?;
        let mut state = shared.state.borrow_mut();
        // A log that starts late (a standby that joined after its primary's
        // retention deleted the start) meets each queue at whatever offset
        // the primary kept, as recovery of such a log does.
        let late_starts = state.segments.keys().next().is_some_and(|first| *first > 0);
        // Every queue offset must follow its queue before any is taken.
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        for (here, header, _) in records.iter().filter(|(_, header, _)| header.is_indexed()) {
            let known = state.queues.get(&header.queue_id).map(|queue| queue.next_offset());
            let first = if late_starts { header.queue_offset } else { 0 };
            let expected = next.entry(header.queue_id).or_insert(known.unwrap_or(first));
            if header.queue_offset != *expected {
                return Err(FollowError::Damage(ReplicaDamage {
                    position: *here,
                    detail: format!(
                        "queue {} offset {} does not follow this log's {}",
                        header.queue_id, header.queue_offset, expected
                    ),
                }));
            }
            *expected += 1;
        }
        let hasher = shared.config.key_hasher.filter(|_| state.keys_enabled);
        let (mut hashes, mut entries, mut record_bytes) = (Vec::new(), 0u64, 0u64);
        for (here, header, message) in &records {
            record_bytes += header.padded_size() as u64;
            let newest = state.last_store_timestamp_us.max(header.store_timestamp_us);
            state.last_store_timestamp_us = newest;
            // Checked above: it cannot refuse.
            let pushed = index_record(&mut state.queues, segment, header, *here, late_starts)
                .map_err(|detail| ReplicaDamage { position: *here, detail: detail.into() })?;
            entries += u64::from(pushed);
            if let Some(hasher) = hasher.filter(|_| header_is_keyed(header)) {
                hashes.clear();
                hasher(message, &mut hashes);
                entries += hashes.len() as u64;
                state.key_tail.extend(hashes.iter().map(|key_hash| KeyEntry {
                    key_hash: *key_hash,
                    position: *here,
                    store_timestamp_us: header.store_timestamp_us,
                    size_bytes: header.length,
                    queue_id: header.queue_id,
                }));
            }
        }
        drop(state);
        for _ in 0..entries {
            shared.note_index_entry();
        }
        Ok((records.len() as u64, record_bytes))
    }
}

/// A record of verified bytes: where it lies, its header and its message.
type Placed<'a> = (u64, RecordHeader, &'a [u8]);

/// The records (not batch markers) of verified bytes from `position`.
fn records_in(position: u64, bytes: &[u8]) -> Result<Vec<Placed<'_>>, FollowError> {
    let block = BLOCK_SIZE_BYTES as u64;
    let (mut at, mut records) = (0usize, Vec::new());
    while at + RECORD_HEADER_SIZE_BYTES <= bytes.len() {
        let here = position + at as u64;
        let rest = &bytes[at..];
        let Some(length) = record::claimed_length(rest) else {
            // Padding: the next write starts on the next block.
            at += ((here / block + 1) * block - here) as usize;
            continue;
        };
        let Decoded::Valid(header) = record::decode(&rest[..length.min(rest.len())]) else {
            return Err(FollowError::Misfit(format!("the verified record at {here} no longer decodes")));
        };
        if header.batch_write_shape().is_none() {
            records.push((here, header, &rest[RECORD_HEADER_SIZE_BYTES..length]));
        }
        at += header.padded_size();
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::super::backend::DmaStorage;
    use super::super::tests::{config, run};
    use super::super::{AppendRequest, LogConfig, SEGMENTS_DIR};
    use super::*;
    use std::path::Path;

    async fn append(log: &CommitLog<DmaStorage>, from: u32, to: u32) {
        for index in from..to {
            // Sizes vary so records straddle blocks and answers.
            let message = format!("message {index} {}", "x".repeat((index as usize * 37) % 1000)).into_bytes();
            let request = AppendRequest { queue_id: index % 3, indexed: true, message: &message, ..Default::default() };
            log.append(request).await.expect("append");
        }
    }

    /// Copies `primary` into `standby` in answers of `chunk` bytes.
    async fn follow(primary: &CommitLog<DmaStorage>, standby: &CommitLog<DmaStorage>, chunk: usize) {
        for _ in 0..100_000 {
            let position = standby.follow_position();
            let raw = primary.read_durable_bytes(position, chunk).await.expect("read");
            if raw.bytes.is_empty() && position >= raw.durable {
                return;
            }
            let end = standby.take_replicated(span(position, &raw)).await.expect("take");
            if end == position {
                // Only a cut write: ask for a longer answer next.
                let raw = primary.read_durable_bytes(position, 1 << 20).await.expect("read");
                standby.take_replicated(span(position, &raw)).await.expect("take");
            }
        }
        panic!("the standby did not catch up");
    }

    fn span(position: u64, raw: &super::super::RawBytes) -> ReplicaSpan<'_> {
        ReplicaSpan {
            position,
            bytes: &raw.bytes,
            segment_start: raw.segment_start,
            segment_size_bytes: raw.segment_size_bytes,
            source_end: raw.durable,
        }
    }

    fn segment_bytes(dir: &Path, start: u64, length: u64) -> Vec<u8> {
        let bytes = std::fs::read(dir.join(SEGMENTS_DIR).join(format!("{start:020}.log"))).expect("segment");
        bytes[..length as usize].to_vec()
    }

    fn standby_config(dir: &Path) -> LogConfig {
        config(dir)
    }

    #[test]
    fn a_standby_log_holds_the_primarys_bytes_and_queues_and_resumes_after_a_reopen() {
        let (primary_dir, standby_dir) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let (primary_config, standby_config) = (config(primary_dir.path()), standby_config(standby_dir.path()));
        let segment_size = primary_config.segment_size_bytes;
        run(async move {
            let primary = CommitLog::open(DmaStorage, primary_config).await.expect("primary");
            let standby = CommitLog::open(DmaStorage, standby_config.clone()).await.expect("standby");
            append(&primary, 0, 150).await;
            follow(&primary, &standby, 5000).await;
            assert_eq!(standby.follow_position(), primary.positions().flushed);
            // Its writes count as flush rounds, as a primary's do.
            let (rounds, records) = standby.with_stats(|stats| (stats.flush_count, stats.records_flushed));
            assert!(rounds > 0 && records == 150, "{rounds} rounds, {records} records");
            standby.close().await.expect("close standby");
            drop(standby);
            // More records while the standby is down, across a segment roll.
            append(&primary, 150, 500).await;
            let durable = primary.positions().flushed;
            assert!(durable > 2 * segment_size, "the primary rolled over segments");
            let standby = CommitLog::open(DmaStorage, standby_config).await.expect("standby reopened");
            follow(&primary, &standby, 7000).await;
            assert_eq!(standby.follow_position(), durable);
            for queue in 0..3 {
                assert_eq!(standby.next_offset(queue), primary.next_offset(queue), "queue {queue}");
                let wanted = primary.read(queue, 5, 10, usize::MAX).await.expect("primary read");
                let got = standby.read(queue, 5, 10, usize::MAX).await.expect("standby read");
                assert_eq!(format!("{wanted:?}"), format!("{got:?}"), "queue {queue}");
            }
            // Every segment file, byte for byte, up to the durable end.
            for start in (0..durable).step_by(segment_size as usize) {
                let length = segment_size.min(durable - start);
                assert!(
                    segment_bytes(primary_dir.path(), start, length)
                        == segment_bytes(standby_dir.path(), start, length),
                    "segment {start} differs"
                );
            }
            primary.close().await.expect("close");
            standby.close().await.expect("close");
        });
    }

    #[test]
    fn a_damaged_answer_writes_nothing() {
        let (primary_dir, standby_dir) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let (primary_config, standby_config) = (config(primary_dir.path()), config(standby_dir.path()));
        run(async move {
            let primary = CommitLog::open(DmaStorage, primary_config).await.expect("primary");
            let standby = CommitLog::open(DmaStorage, standby_config).await.expect("standby");
            append(&primary, 0, 20).await;
            let mut raw = primary.read_durable_bytes(0, 1 << 20).await.expect("read");
            raw.bytes[200] ^= 0x10;
            let taken = standby.take_replicated(span(0, &raw)).await;
            assert!(matches!(taken, Err(FollowError::Damage(_))), "{taken:?}");
            assert_eq!(standby.follow_position(), 0);
            assert_eq!(standby.next_offset(0), 0);
            let elsewhere = standby.take_replicated(ReplicaSpan { position: 64, ..span(0, &raw) }).await;
            assert!(matches!(elsewhere, Err(FollowError::Misfit(_))));
            primary.close().await.expect("close");
            standby.close().await.expect("close");
        });
    }
}
