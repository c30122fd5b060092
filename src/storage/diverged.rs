//! Setting aside a diverged tail (issue 13): an old primary that comes back
//! as the standby of the promoted one may hold records past the point where
//! the new primary's history diverged from its own (records it wrote that
//! never reached the standby before the failover). Before the shard's log
//! is opened, `set_aside_after` copies them into a side file and cuts the
//! log back to the common history, so the standby can follow from there.
//!
//! Order, so that a crash at any point leaves a state a second call with
//! the same position finishes into the same log:
//! 1. the side file is written whole (temp file, fsync, rename, fsync of the
//!    directory); an existing one is kept, never rewritten shorter from
//!    what a first, interrupted call left of the tail;
//! 2. the checkpoint, every index file and every key file go, so the next
//!    start rebuilds all derived state from the log (none of it may name a
//!    record past the cut);
//! 3. the segment holding the cut is zeroed from it to its old data end
//!    with O_DIRECT and fdatasynced;
//! 4. only then are the later segments deleted (highest first), and the
//!    segments directory synced.
//!
//! The side file holds each segment's data in log order: the holding
//! segment's bytes from the cut to its data end, then every later
//! segment's from its start to its data end (the zeros a segment ends with
//! are not copied). A segment's data end is the end of its last valid
//! record or, where damage stops the walk, of its last non-zero byte before
//! a run of zeros as long as recovery's look-ahead: nothing written is lost.
//! The counts are of the valid records (CRC checked) the side file holds,
//! batch markers excluded; damage is stepped over 8 bytes at a time.
//! The whole tail is held in memory while it is copied: a diverged tail is
//! what a primary wrote and its standby never confirmed, a few writes in
//! flight in sync mode.
//!
//! The side file's name ties it to its cut: one divergence per position. A
//! side file already there is taken for this cut's (the caller archives a
//! reported side file before the log could diverge at the same position
//! again). Only files under `config.dir` are touched; the server's own
//! snapshots ignore themselves when they lie past the recovered log.

use super::backend::{Storage, StorageFile};
use super::keys::parse_key_file_start;
use super::record::{self, flags, Decoded};
use super::recovery::{forget_checkpoint, open_segments, zero_range, Padding, SegmentReader};
use super::segment::Segment;
use super::tail::{self, Segments};
use super::{LogConfig, LogError, INDEX_DIR, KEYS_DIR, SEGMENTS_DIR};
use crate::constants::{RECORD_ALIGNMENT_BYTES, RECORD_HEADER_SIZE_BYTES};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// What `set_aside_after` moved out of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DivergedTail {
    /// Where the common history ends: the cut.
    pub position: u64,
    /// The old log's data end (the end of its last valid record, or of the
    /// damaged bytes after it).
    pub end: u64,
    /// `<dir>/diverged-<position, 20 digits>.log`.
    pub side_file: PathBuf,
    /// Records (not batch markers) set aside.
    pub records: u64,
    /// Records set aside per queue id: those holding a queue offset
    /// (fillers repair wrote hold none and are only in `records`).
    pub by_queue: BTreeMap<u32, u64>,
}

/// Where `set_aside_after` keeps the records after `position`.
pub fn side_file_path(dir: &Path, position: u64) -> PathBuf {
    dir.join(format!("diverged-{position:020}.log"))
}

/// The data of one segment at or after the cut, `[from, to)` (global).
struct Extent<F> {
    segment: Rc<Segment<F>>,
    from: u64,
    to: u64,
}

impl<F> Extent<F> {
    fn is_empty(&self) -> bool {
        self.to <= self.from
    }
}

/// Sets aside the records after `position` of the closed log in
/// `config.dir` and cuts the log there (module header). `Ok(None)`: nothing
/// lies at or after `position`, and nothing changed. A second call with
/// the same position (after a crash, or after the first one finished)
/// reports the side file the first one wrote. `position` must not lie
/// before the first segment (`PositionTruncated`), past the last one or
/// inside a record (`BadCut`).
pub async fn set_aside_after<S: Storage>(
    storage: &S,
    config: &LogConfig,
    position: u64,
) -> Result<Option<DivergedTail>, LogError> {
    let segments_dir = config.dir.join(SEGMENTS_DIR);
    let segments = open_segments(storage, &segments_dir).await?;
    let Some(holding) = holding_segment(&segments, position)? else { return Ok(None) };
    check_boundary(&holding, position).await?;
    let later: Vec<Rc<Segment<S::File>>> =
        segments.range(holding.start + 1..).map(|(_, segment)| segment.clone()).collect();
    let extents = data_extents(config, &holding, position, &later).await?;
    let side_file = side_file_path(&config.dir, position);
    let existing = storage.read_file(&side_file).await.map_err(|error| io("read side file", &side_file, error))?;
    if extents.iter().all(Extent::is_empty) {
        // Nothing past the cut: either nothing diverged, or an earlier call
        // cut here (and may have been interrupted before the empty later
        // segments were gone).
        let Some(bytes) = existing else { return Ok(None) };
        delete_segments(storage, &segments_dir, &later).await?;
        return Ok(Some(report(position, summary_end(position, &bytes), side_file, &bytes)));
    }
    // A side file already there is the whole tail an interrupted call
    // copied; what is left of the tail may be less (some later segments
    // deleted), so the end is read off the side file too.
    let (bytes, end) = match existing {
        Some(bytes) => {
            let end = summary_end(position, &bytes);
            (bytes, end)
        }
        None => {
            let bytes = copy_extents(&extents).await?;
            storage
                .write_file_atomic(&side_file, &bytes)
                .await
                .map_err(|error| io("write side file", &side_file, error))?;
            (bytes, extents.iter().map(|extent| extent.to).max().unwrap_or(position))
        }
    };
    forget_derived_state(storage, config).await?;
    if let Some(first) = extents.first().filter(|first| !first.is_empty()) {
        zero_range(&first.segment, first.from, first.to).await?;
    }
    delete_segments(storage, &segments_dir, &later).await?;
    let tail = report(position, end, side_file, &bytes);
    tracing::warn!(
        position,
        end,
        records = tail.records,
        side_file = %tail.side_file.display(),
        "set aside the records after the common history"
    );
    Ok(Some(tail))
}

fn io(operation: &'static str, path: &Path, error: io::Error) -> LogError {
    LogError::io(operation, path, 0, error)
}

/// The segment the cut lies in (or at the end of); `None` for an empty log
/// cut at 0.
fn holding_segment<F>(segments: &Segments<F>, position: u64) -> Result<Option<Rc<Segment<F>>>, LogError> {
    let Some(earliest) = segments.keys().next().copied() else {
        return match position {
            0 => Ok(None),
            _ => Err(LogError::BadCut { position, detail: "the log has no segment".into() }),
        };
    };
    if position < earliest {
        return Err(LogError::PositionTruncated { requested: position, earliest });
    }
    let holding = segments.range(..=position).next_back().map(|(_, segment)| segment.clone());
    match holding.filter(|segment| position <= segment.end()) {
        Some(segment) => Ok(Some(segment)),
        None => Err(LogError::BadCut { position, detail: "past the end of the last segment".into() }),
    }
}

/// Refuses a cut inside a record: zeroing from there would leave half a
/// record that recovery cuts further back, below the common history. Walks
/// the holding segment from its start as recovery does.
async fn check_boundary<F: StorageFile>(segment: &Segment<F>, position: u64) -> Result<(), LogError> {
    let target = position - segment.start;
    let mut reader = SegmentReader::new(segment);
    let (mut offset, mut data_end) = (0, segment.start);
    while offset < target {
        match reader.probe(offset).await? {
            Decoded::Valid(header) => {
                let next = offset + header.padded_size() as u64;
                if next > target {
                    let detail = format!("inside the record at {}", segment.start + offset);
                    return Err(LogError::BadCut { position, detail });
                }
                offset = next;
                data_end = segment.start + offset;
            }
            _ => match reader.padding_end(offset).await? {
                Padding::Next(boundary) if reader.starts_write(boundary, data_end).await? => offset = boundary,
                // The data (or what recovery can read of it) ends before
                // the cut: no record holds it.
                _ => return Ok(()),
            },
        }
    }
    Ok(())
}

/// Where each segment's data at or after the cut lies.
async fn data_extents<F: StorageFile>(
    config: &LogConfig,
    holding: &Rc<Segment<F>>,
    position: u64,
    later: &[Rc<Segment<F>>],
) -> Result<Vec<Extent<F>>, LogError> {
    let zero_run_max = config.look_ahead_zero_run_bytes();
    let mut extents = Vec::with_capacity(later.len() + 1);
    for (segment, from) in std::iter::once((holding, position)).chain(later.iter().map(|later| (later, later.start))) {
        let to = data_end(segment, from, zero_run_max).await?;
        extents.push(Extent { segment: segment.clone(), from, to: to.max(from) });
    }
    Ok(extents)
}

/// The end of a segment's data from `from` (global) on: its valid records,
/// write after write, then any non-zero bytes where that walk stops.
async fn data_end<F: StorageFile>(segment: &Segment<F>, from: u64, zero_run_max: u64) -> Result<u64, LogError> {
    let mut reader = SegmentReader::new(segment);
    let mut offset = from - segment.start;
    let mut valid_end = from;
    while offset < segment.size_bytes {
        match reader.probe(offset).await? {
            Decoded::Valid(header) => {
                offset += header.padded_size() as u64;
                valid_end = segment.start + offset;
            }
            _ => match reader.padding_end(offset).await? {
                Padding::Next(boundary) if reader.starts_write(boundary, valid_end).await? => offset = boundary,
                _ => break,
            },
        }
    }
    let alignment = RECORD_ALIGNMENT_BYTES as u64;
    let dirty = tail::dirty_end(segment, offset.min(segment.size_bytes), zero_run_max).await?;
    let dirty = dirty.map_or(0, |end| (end.div_ceil(alignment) * alignment).min(segment.end()));
    Ok(valid_end.max(dirty))
}

async fn copy_extents<F: StorageFile>(extents: &[Extent<F>]) -> Result<Vec<u8>, LogError> {
    let mut bytes = Vec::new();
    for extent in extents.iter().filter(|extent| !extent.is_empty()) {
        let segment = &extent.segment;
        let length = (extent.to - extent.from) as usize;
        let read = segment.read(extent.from - segment.start, length).await?;
        if read.len() != length {
            return Err(LogError::Corrupt {
                path: segment.path.clone(),
                position: extent.from,
                detail: format!("the segment file ended after {} of {length} bytes", read.len()),
            });
        }
        bytes.extend_from_slice(&read);
    }
    Ok(bytes)
}

/// Removes the checkpoint, every index file and every key file: recovery
/// then scans the whole log and rebuilds them, none naming a record past
/// the cut. The checkpoint goes first: index files without it are never
/// trusted.
async fn forget_derived_state<S: Storage>(storage: &S, config: &LogConfig) -> Result<(), LogError> {
    forget_checkpoint(storage, config).await?;
    let is_index = |path: &Path| path.extension().is_some_and(|extension| extension == "idx");
    remove_files(storage, &config.dir.join(INDEX_DIR), is_index).await?;
    remove_files(storage, &config.dir.join(KEYS_DIR), |path| parse_key_file_start(path).is_some()).await
}

async fn remove_files<S: Storage>(storage: &S, dir: &Path, chosen: impl Fn(&Path) -> bool) -> Result<(), LogError> {
    let listed = match storage.list(dir).await {
        Ok(listed) => listed,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io("list directory", dir, error)),
    };
    let mut removed = false;
    for path in listed.iter().filter(|path| chosen(path)) {
        storage.remove(path).await.map_err(|error| io("remove derived file", path, error))?;
        removed = true;
    }
    if removed {
        storage.sync_dir(dir).await.map_err(|error| io("sync directory", dir, error))?;
    }
    Ok(())
}

/// Deletes the segments after the cut, highest first: an interrupted call
/// leaves the log's lower segments, never a gap.
async fn delete_segments<S: Storage>(storage: &S, dir: &Path, later: &[Rc<Segment<S::File>>]) -> Result<(), LogError> {
    for segment in later.iter().rev() {
        storage.remove(&segment.path).await.map_err(|error| io("remove segment", &segment.path, error))?;
    }
    if !later.is_empty() {
        storage.sync_dir(dir).await.map_err(|error| io("sync directory", dir, error))?;
    }
    Ok(())
}

fn report(position: u64, end: u64, side_file: PathBuf, bytes: &[u8]) -> DivergedTail {
    let (records, by_queue) = count_records(bytes);
    DivergedTail { position, end, side_file, records, by_queue }
}

/// The valid records in side-file bytes, batch markers excluded.
fn count_records(bytes: &[u8]) -> (u64, BTreeMap<u32, u64>) {
    let (mut records, mut by_queue) = (0, BTreeMap::new());
    walk_records(bytes, |_, header| {
        if header.flags & flags::BATCH != 0 {
            return;
        }
        records += 1;
        if header.is_indexed() {
            *by_queue.entry(header.queue_id).or_insert(0) += 1;
        }
    });
    (records, by_queue)
}

/// The old log's data end, read off a side file alone (when the log no
/// longer holds the tail): each later segment's part starts with a batch
/// marker that names its own position.
fn summary_end(position: u64, bytes: &[u8]) -> u64 {
    let mut last_marker = None;
    walk_records(bytes, |at, header| {
        if header.flags & flags::BATCH != 0 && header.queue_offset >= position {
            last_marker = Some((at, header.queue_offset));
        }
    });
    let (at, marker_position) = last_marker.unwrap_or((0, position));
    marker_position + (bytes.len() - at) as u64
}

/// Calls `visit` with the side-file offset and header of every valid
/// record in `bytes`; zeros and damage are stepped over 8 bytes at a time
/// (records start on 8-byte boundaries, and every part of a side file is
/// 8-byte aligned).
fn walk_records(bytes: &[u8], mut visit: impl FnMut(usize, &record::RecordHeader)) {
    let mut at = 0;
    while at + RECORD_HEADER_SIZE_BYTES <= bytes.len() {
        let rest = &bytes[at..];
        let claimed =
            record::claimed_length(rest).filter(|length| record::plausible_length(*length, rest.len() as u64));
        if let Some(Decoded::Valid(header)) = claimed.map(|length| record::decode(&rest[..length])) {
            visit(at, &header);
            at += header.padded_size();
        } else {
            at += RECORD_ALIGNMENT_BYTES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::{DmaStorage, MemoryStorage, StorageFile};
    use super::super::checkpoint::CHECKPOINT_FILE;
    use super::super::tests::{config, run};
    use super::super::{AppendRequest, Appended, CommitLog};
    use super::*;
    use std::fs;

    /// One appended record and what it held.
    struct Written {
        queue_id: u32,
        appended: Appended,
        message: Vec<u8>,
    }

    async fn append<S: Storage>(log: &CommitLog<S>, from: u32, to: u32) -> Vec<Written> {
        let mut written = Vec::new();
        for index in from..to {
            // Sizes vary so records straddle sectors; sync flush makes each
            // append a write of its own, behind its batch marker.
            let message = format!("message {index} {}", "x".repeat((index as usize * 37) % 900)).into_bytes();
            let queue_id = index % 3;
            let request = AppendRequest { queue_id, indexed: true, message: &message, ..Default::default() };
            let appended = log.append(request).await.expect("append");
            written.push(Written { queue_id, appended, message });
        }
        written
    }

    /// Every file under `dir` (relative path, bytes).
    fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut found = BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(next) = pending.pop() {
            for entry in fs::read_dir(&next).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(dir).expect("under dir").to_path_buf();
                    found.insert(relative, fs::read(&path).expect("read file"));
                }
            }
        }
        found
    }

    fn segment_file(start: u64) -> PathBuf {
        Path::new(SEGMENTS_DIR).join(format!("{start:020}.log"))
    }

    /// What the side file must hold: the holding segment's bytes from the
    /// cut, then each later segment's from its start (its first batch
    /// marker), each to its last record's end.
    fn expected_side_bytes(before: &BTreeMap<PathBuf, Vec<u8>>, after_cut: &[Written], segment_size: u64) -> Vec<u8> {
        let mut ends: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for (index, written) in after_cut.iter().enumerate() {
            let start = written.appended.position / segment_size * segment_size;
            let from = if index == 0 { written.appended.position } else { start };
            let range = ends.entry(start).or_insert((from, 0));
            range.1 = range.1.max(written.appended.end);
        }
        let mut bytes = Vec::new();
        for (start, (from, to)) in ends {
            let file = &before[&segment_file(start)];
            bytes.extend_from_slice(&file[(from - start) as usize..(to - start) as usize]);
        }
        bytes
    }

    fn per_queue(written: &[Written]) -> BTreeMap<u32, u64> {
        let mut counts = BTreeMap::new();
        for written in written {
            *counts.entry(written.queue_id).or_insert(0) += 1;
        }
        counts
    }

    /// Every record of `written` reads back from `log` at its offset, byte
    /// for byte, and each queue ends right after them.
    async fn assert_holds_exactly<S: Storage>(log: &CommitLog<S>, written: &[Written]) {
        for queue_id in 0..3 {
            let messages: Vec<&Vec<u8>> =
                written.iter().filter(|written| written.queue_id == queue_id).map(|written| &written.message).collect();
            assert_eq!(log.next_offset(queue_id), messages.len() as u64, "queue {queue_id}");
            let batch = log.read(queue_id, 0, messages.len(), usize::MAX).await.expect("read");
            let read: Vec<Vec<u8>> =
                batch.records.iter().map(|record| record.bytes[RECORD_HEADER_SIZE_BYTES..].to_vec()).collect();
            assert_eq!(read.len(), messages.len(), "queue {queue_id}");
            assert!(read.iter().zip(&messages).all(|(read, wanted)| read == *wanted), "queue {queue_id}");
        }
    }

    /// A closed log of several small segments, and where to cut it: a
    /// record in the middle of the second segment.
    async fn closed_log(config: &LogConfig, records: u32) -> (Vec<Written>, usize) {
        let log = CommitLog::open(DmaStorage, config.clone()).await.expect("open");
        let written = append(&log, 0, records).await;
        log.close().await.expect("close");
        let segment_size = config.segment_size_bytes;
        let last_end = written.last().expect("records").appended.end;
        assert!(last_end > 2 * segment_size, "the log spans at least three segments");
        let cut = written.iter().position(|written| written.appended.position >= segment_size * 3 / 2).expect("cut");
        (written, cut)
    }

    #[test]
    fn the_records_after_the_cut_go_to_the_side_file_and_the_log_reopens_at_the_cut() {
        let temp = tempfile::tempdir().expect("temp dir");
        let config = config(temp.path());
        let segment_size = config.segment_size_bytes;
        run(async move {
            let (written, cut) = closed_log(&config, 200).await;
            let position = written[cut].appended.position;
            // A key file of a segment after the cut, as a keyed log has.
            fs::create_dir_all(temp.path().join(KEYS_DIR)).expect("keys dir");
            fs::write(key_path(temp.path(), 2 * segment_size), [7; 64]).expect("key file");
            let before = files(temp.path());
            assert!(before.contains_key(Path::new(CHECKPOINT_FILE)), "close wrote a checkpoint");

            let tail = set_aside_after(&DmaStorage, &config, position).await.expect("set aside").expect("a tail");
            let end = written.last().expect("records").appended.end;
            assert_eq!((tail.position, tail.end), (position, end));
            assert_eq!(tail.side_file, temp.path().join(format!("diverged-{position:020}.log")));
            assert_eq!(tail.records, (written.len() - cut) as u64);
            assert_eq!(tail.by_queue, per_queue(&written[cut..]));
            let side = fs::read(&tail.side_file).expect("side file");
            let expected = expected_side_bytes(&before, &written[cut..], segment_size);
            let first_difference = side.iter().zip(&expected).position(|(a, b)| a != b);
            assert!(
                side == expected,
                "side file bytes: {} vs {}, first difference at {first_difference:?}",
                side.len(),
                expected.len()
            );

            let after = files(temp.path());
            let holding = position / segment_size * segment_size;
            let kept = &after[&segment_file(holding)];
            let old = &before[&segment_file(holding)];
            let offset = (position - holding) as usize;
            assert_eq!(kept.len(), old.len(), "the segment stays preallocated");
            assert!(kept[..offset] == old[..offset], "the common history is untouched");
            assert!(kept[offset..].iter().all(|byte| *byte == 0), "the tail is zeroed");
            let left: Vec<&PathBuf> = after.keys().filter(|path| path.starts_with(SEGMENTS_DIR)).collect();
            assert_eq!(left, vec![&segment_file(0), &segment_file(holding)], "later segments are deleted");
            assert!(!after.contains_key(Path::new(CHECKPOINT_FILE)), "the checkpoint is gone");
            let derived = |path: &&PathBuf| path.starts_with(INDEX_DIR) || path.starts_with(KEYS_DIR);
            assert_eq!(after.keys().filter(derived).count(), 0, "index and key files are gone");

            let log = CommitLog::open(DmaStorage, config.clone()).await.expect("reopen");
            assert_eq!(log.positions().flushed, position);
            assert_holds_exactly(&log, &written[..cut]).await;
            let mut kept: Vec<Written> = written.into_iter().take(cut).collect();
            for written in append(&log, 1000, 1100).await {
                kept.push(written);
            }
            assert_holds_exactly(&log, &kept).await;
            log.close().await.expect("close");
            drop(log);
            let log = CommitLog::open(DmaStorage, config).await.expect("reopen after appends");
            assert_holds_exactly(&log, &kept).await;
            log.close().await.expect("close");
        });
    }

    fn key_path(dir: &Path, segment_start: u64) -> PathBuf {
        super::super::keys::key_file_path(&dir.join(KEYS_DIR), segment_start)
    }

    #[test]
    fn a_cut_at_the_end_of_the_log_changes_nothing() {
        let temp = tempfile::tempdir().expect("temp dir");
        let config = config(temp.path());
        run(async move {
            let (written, _) = closed_log(&config, 200).await;
            let end = written.last().expect("records").appended.end;
            let before = files(temp.path());
            assert_eq!(set_aside_after(&DmaStorage, &config, end).await.expect("set aside"), None);
            assert!(files(temp.path()) == before, "nothing changed");
        });
    }

    /// Puts back `files` (taken before the first call) as they were.
    fn restore(dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>, chosen: impl Fn(&Path) -> bool) {
        for (path, bytes) in files.iter().filter(|(path, _)| chosen(path)) {
            fs::create_dir_all(dir.join(path).parent().expect("parent")).expect("dir");
            fs::write(dir.join(path), bytes).expect("restore");
        }
    }

    #[test]
    fn a_second_call_after_a_crash_finishes_the_same_cut_and_keeps_the_side_file() {
        let temp = tempfile::tempdir().expect("temp dir");
        let config = config(temp.path());
        let segment_size = config.segment_size_bytes;
        run(async move {
            let (written, cut) = closed_log(&config, 200).await;
            let position = written[cut].appended.position;
            let before = files(temp.path());
            let first = set_aside_after(&DmaStorage, &config, position).await.expect("first").expect("a tail");
            let cut_log = files(temp.path());
            let side = fs::read(&first.side_file).expect("side file");

            // A crash right after the side file: nothing else happened.
            restore(temp.path(), &before, |_| true);
            let again = set_aside_after(&DmaStorage, &config, position).await.expect("again").expect("a tail");
            assert_eq!(again, first);
            assert!(files(temp.path()) == cut_log, "the same log");

            // A crash after the zeroing, before the later segments went:
            // the side file must not be rewritten from what is left.
            let holding = position / segment_size * segment_size;
            restore(temp.path(), &before, |path| {
                path.starts_with(SEGMENTS_DIR) && parse_start(path).is_some_and(|start| start > holding)
            });
            let again = set_aside_after(&DmaStorage, &config, position).await.expect("again").expect("a tail");
            assert_eq!(again, first);
            assert!(files(temp.path()) == cut_log, "the same log");
            assert!(fs::read(&first.side_file).expect("side file") == side, "the side file is kept");

            // A crash while the later segments went, highest first: the
            // end is still the old log's.
            restore(temp.path(), &before, |path| parse_start(path) == Some(holding + segment_size));
            let again = set_aside_after(&DmaStorage, &config, position).await.expect("again").expect("a tail");
            assert_eq!(again, first);
            assert!(files(temp.path()) == cut_log, "the same log");

            // After a finished call: reported again from the side file.
            let again = set_aside_after(&DmaStorage, &config, position).await.expect("again").expect("a tail");
            assert_eq!(again, first);
            assert!(files(temp.path()) == cut_log, "nothing changed");
        });
    }

    fn parse_start(path: &Path) -> Option<u64> {
        super::super::segment::parse_segment_start(path)
    }

    #[test]
    fn a_cut_before_the_first_segment_past_the_last_or_inside_a_record_is_refused() {
        let temp = tempfile::tempdir().expect("temp dir");
        let config = config(temp.path());
        let segment_size = config.segment_size_bytes;
        run(async move {
            let (written, cut) = closed_log(&config, 200).await;
            let inside = written[cut].appended.position + 8;
            let error = set_aside_after(&DmaStorage, &config, inside).await.expect_err("inside a record");
            assert!(matches!(error, LogError::BadCut { position, .. } if position == inside), "{error}");
            let far = 100 * segment_size;
            let error = set_aside_after(&DmaStorage, &config, far).await.expect_err("past the end");
            assert!(matches!(error, LogError::BadCut { position, .. } if position == far), "{error}");
            // Retention deleted the first segment.
            let before = files(temp.path());
            fs::remove_file(temp.path().join(segment_file(0))).expect("remove first segment");
            let error = set_aside_after(&DmaStorage, &config, 4096).await.expect_err("before the first segment");
            assert!(
                matches!(error, LogError::PositionTruncated { requested: 4096, earliest } if earliest == segment_size),
                "{error}"
            );
            let mut after = files(temp.path());
            after.insert(segment_file(0), before[&segment_file(0)].clone());
            assert!(after == before, "nothing changed");
        });
    }

    /// The default segment size (1 GiB, sparse in memory): one segment,
    /// the cut in its middle.
    #[test]
    fn a_cut_inside_a_default_sized_segment_sets_aside_its_tail() {
        let config = LogConfig::new("/memory");
        let storage = MemoryStorage::new();
        run(async move {
            let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
            let written = append(&log, 0, 60).await;
            log.close().await.expect("close");
            drop(log);
            let cut = 25;
            let position = written[cut].appended.position;
            let end = written.last().expect("records").appended.end;
            let file = storage.open(&config.dir.join(segment_file(0))).await.expect("open segment");
            let tail_bytes = file.read_at(position, (end - position) as usize).await.expect("read segment");
            drop(file);
            let tail = set_aside_after(&storage, &config, position).await.expect("set aside").expect("a tail");
            assert_eq!(tail.end, end);
            assert_eq!(
                (tail.records, tail.by_queue.clone()),
                ((written.len() - cut) as u64, per_queue(&written[cut..]))
            );
            let side = storage.read_file(&tail.side_file).await.expect("read").expect("side file");
            assert!(side == tail_bytes, "side file bytes");
            let log = CommitLog::open(storage.clone(), config).await.expect("reopen");
            assert_eq!(log.positions().flushed, position);
            assert_holds_exactly(&log, &written[..cut]).await;
            log.close().await.expect("close");
        });
    }
}
