//! Recovery never cuts below what was acknowledged: damage after the last
//! checkpoint refuses to open (naming the position) unless it is a torn
//! tail; a flush never rewrites acknowledged bytes. The small cases run on
//! sparse memory files, a few on real O_DIRECT files with the default sizes.

use super::backend::{DmaStorage, MemoryStorage, Storage};
use super::record::Decoded;
use super::segment::parse_segment_start;
use super::tests::run;
use super::*;
use crate::constants::BLOCK_SIZE_BYTES;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

pub(super) const QUEUES: u32 = 4;

pub(super) fn small_config(dir: &str) -> LogConfig {
    super::tests::config(Path::new(dir))
}

/// The defaults a user runs (8 MiB buffers, 1 GiB segments), with no
/// checkpoint during the test.
fn default_config(dir: &Path) -> LogConfig {
    LogConfig { checkpoint_interval: Duration::from_secs(3600), ..LogConfig::new(dir) }
}

pub(super) fn message(queue_id: u32, sequence: u64) -> Vec<u8> {
    let length = 200 + (sequence as usize * 53) % 900;
    (0..length).map(|index| (sequence as usize * 31 + index * 7 + queue_id as usize) as u8 | 1).collect()
}

/// One task per queue appends `count` records; returns the log's flushed
/// position at the end.
pub(super) async fn fill<S: Storage>(storage: &S, config: &LogConfig, count: u64) -> u64 {
    let log = Rc::new(CommitLog::open(storage.clone(), config.clone()).await.expect("open"));
    let tasks: Vec<_> = (0..QUEUES)
        .map(|queue_id| {
            let log = log.clone();
            glommio::spawn_local(async move {
                for sequence in 0..count {
                    let message = message(queue_id, sequence);
                    let request = AppendRequest { queue_id, indexed: true, message: &message, ..Default::default() };
                    log.append(request).await.expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let flushed = log.positions().flushed;
    drop(log); // no close: no checkpoint covers the records
    flushed
}

/// Where record `offset` of `queue_id` lies in the log.
pub(super) async fn position_of<S: Storage>(storage: &S, config: &LogConfig, queue_id: u32, offset: u64) -> u64 {
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open to look");
    let batch = log.read(queue_id, offset, 1, 1 << 20).await.expect("read");
    batch.records[0].position
}

pub(super) fn segment_holding(segments: &[PathBuf], position: u64) -> (PathBuf, u64) {
    let (path, start) = segments
        .iter()
        .filter_map(|path| parse_segment_start(path).map(|start| (path.clone(), start)))
        .filter(|(_, start)| *start <= position)
        .max_by_key(|(_, start)| *start)
        .expect("a segment holds the position");
    (path, position - start)
}

pub(super) async fn segment_files<S: Storage>(storage: &S, config: &LogConfig) -> Vec<PathBuf> {
    storage.list(&config.dir.join(SEGMENTS_DIR)).await.expect("list segments")
}

pub(super) async fn expect_refused<S: Storage>(storage: &S, config: &LogConfig, damaged: u64) -> String {
    match CommitLog::open(storage.clone(), config.clone()).await {
        Err(LogError::Corrupt { position, path, detail }) => {
            assert!(position <= damaged, "the error names {position}, after the damage at {damaged}: {detail}");
            assert!(parse_segment_start(&path).is_some(), "the error names the segment file, not {}", path.display());
            detail
        }
        Err(error) => panic!("expected a corruption error, got {error}"),
        Ok(_) => panic!("recovery opened a log damaged at {damaged} and cut acknowledged records"),
    }
}

#[test]
fn a_zeroed_block_in_the_middle_is_refused_not_taken_for_the_end() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/zeroed");
        fill(&storage, &config, 300).await;
        let position = position_of(&storage, &config, 1, 40).await;
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, position);
        let block = offset / BLOCK_SIZE_BYTES as u64 * BLOCK_SIZE_BYTES as u64;
        storage.overwrite(&path, block, &[0; BLOCK_SIZE_BYTES]).expect("zero a block");
        expect_refused(&storage, &config, position + BLOCK_SIZE_BYTES as u64).await;
    });
}

#[test]
fn a_bit_flip_in_the_last_acknowledged_record_is_refused() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/last");
        fill(&storage, &config, 200).await;
        let mut last = 0;
        for queue_id in 0..QUEUES {
            last = last.max(position_of(&storage, &config, queue_id, 199).await);
        }
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, last);
        storage.flip_bit(&path, offset + 100, 3).expect("flip");
        expect_refused(&storage, &config, last).await;
    });
}

#[test]
fn a_damaged_first_record_of_a_later_segment_is_refused_and_the_segment_kept() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/later");
        let flushed = fill(&storage, &config, 400).await;
        assert!(flushed > 3 * config.segment_size_bytes, "the test must span several segments");
        let segments = segment_files(&storage, &config).await;
        let (last, _) = segment_holding(&segments, flushed - 1);
        let start = parse_segment_start(&last).expect("a segment name");
        storage.flip_bit(&last, 20, 0).expect("flip the first record of the last segment");
        expect_refused(&storage, &config, start + 20).await;
        assert!(segment_files(&storage, &config).await.contains(&last), "recovery deleted a segment holding records");
    });
}

#[test]
fn a_flush_never_rewrites_a_block_holding_acknowledged_bytes() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/rewrite");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        // (writes issued before the acknowledgement, durable end it made).
        let mut acknowledged = Vec::new();
        for sequence in 0..300 {
            let message = message(0, sequence);
            let request = AppendRequest { queue_id: 0, indexed: true, message: &message, ..Default::default() };
            let appended = log.append(request).await.expect("append");
            acknowledged.push((storage.writes().len(), appended.end));
        }
        let writes = storage.writes();
        let segment_writes: Vec<(usize, u64, usize)> = writes
            .iter()
            .enumerate()
            .filter_map(|(index, (path, offset, length))| {
                parse_segment_start(path).map(|start| (index, start + offset, *length))
            })
            .collect();
        for (issued_before, durable_end) in acknowledged {
            for (index, position, length) in &segment_writes {
                if *index >= issued_before && *length > 0 {
                    assert!(
                        *position >= durable_end,
                        "write {index} at {position} (+{length}) rewrites bytes acknowledged up to {durable_end}"
                    );
                }
            }
        }
    });
}

/// A crash in the middle of writes: every unsynced sector is lost, written
/// or (on a drive without power-loss protection) garbled. Nothing durable
/// may go; only garbage may make recovery refuse, never a plain torn write.
#[test]
fn a_crash_in_the_middle_of_writes_loses_nothing_durable() {
    use super::backend::SectorFate;
    for seed in 0..40u64 {
        run(async move {
            let storage = MemoryStorage::new();
            let flush = FlushMode::Async { interval: Duration::from_secs(3600) };
            let config = LogConfig { flush, ..small_config("/torn") };
            let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut appended = Vec::new();
            let mut next = [0u64; QUEUES as usize];
            for _ in 0..rng.usize(50..500) {
                let queue_id = rng.u32(0..QUEUES);
                let sequence = next[queue_id as usize];
                next[queue_id as usize] += 1;
                let message = message(queue_id, sequence);
                let request = AppendRequest { queue_id, indexed: true, message: &message, ..Default::default() };
                let placed = log.append_buffered(request).await.expect("append");
                appended.push((queue_id, sequence, placed.end));
                if rng.u8(0..8) == 0 {
                    glommio::executor().yield_now().await; // let the flusher write
                }
            }
            let durable_end = log.positions().flushed;
            drop(log);
            let garble = rng.bool();
            let fates = if garble { 3 } else { 2 };
            storage.crash_with(&mut || match rng.u8(0..fates) {
                0 => SectorFate::Lost,
                1 => SectorFate::Written,
                _ => SectorFate::Garbled,
            });
            let log = match CommitLog::open(storage, config).await {
                Ok(log) => log,
                Err(LogError::Corrupt { .. }) if garble => return,
                Err(error) => panic!("seed {seed}: a torn write made recovery refuse: {error}"),
            };
            for (queue_id, sequence, end) in appended {
                let visible = log.visible_end_offset(queue_id);
                if end <= durable_end {
                    assert!(sequence < visible, "seed {seed}: durable record {queue_id}/{sequence} lost");
                }
                if sequence < visible {
                    let batch = log.read(queue_id, sequence, 1, 1 << 20).await.expect("read");
                    assert_eq!(batch.records[0].message(), message(queue_id, sequence), "seed {seed}");
                }
            }
        });
    }
}

/// What a power cut can leave of a write that began when `durable` was the
/// durable end: its first sector (batch marker and the start of a record)
/// arrived, the second did not, some later ones did.
fn torn_write(position: u64, durable: u64, gap_bytes: u32) -> Vec<u8> {
    use super::record::{encode, encode_batch_marker, padded_size, RecordHeader, BATCH_MARKER_SIZE_BYTES, NO_POSITION};
    let mut write = vec![0u8; 3 * BLOCK_SIZE_BYTES];
    let shape = super::record::WriteShape { length_bytes: write.len() as u32, zero_sectors: 0, gap_bytes };
    let start = super::record::WriteStart { position, durable_position: durable };
    encode_batch_marker(&mut write[..BATCH_MARKER_SIZE_BYTES], start, now_us(), shape);
    let body = message(0, 300);
    let length = crate::constants::RECORD_HEADER_SIZE_BYTES + body.len();
    let header = RecordHeader {
        length: length as u32,
        flags: 0,
        queue_id: 0,
        tag_hash: 0,
        queue_offset: 300,
        store_timestamp_us: now_us(),
        ref_position: NO_POSITION,
        ref_size: 0,
        reconsume_times: 0,
    };
    let at = BATCH_MARKER_SIZE_BYTES;
    encode(&mut write[at..at + padded_size(length)], &header, &body);
    write[512..1024].fill(0);
    write
}

/// Bytes of a real file overwritten behind the log's back.
fn damage_file(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).expect("open the segment to damage it");
    file.write_all_at(bytes, offset).expect("damage");
    file.sync_all().expect("sync the damage");
}

fn read_file_at(path: &Path, offset: u64, length: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).expect("open the segment");
    let mut bytes = vec![0; length];
    file.read_exact_at(&mut bytes, offset).expect("read");
    bytes
}

#[test]
fn default_sizes_a_flipped_byte_after_the_checkpoint_is_refused() {
    let temp = tempfile::tempdir().expect("temp dir");
    let config = default_config(temp.path());
    run(async {
        let storage = DmaStorage;
        fill(&storage, &config, 500).await;
        let position = position_of(&storage, &config, 2, 250).await;
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, position);
        let byte = read_file_at(&path, offset + 80, 1)[0];
        damage_file(&path, offset + 80, &[byte ^ 0x10]);
        let detail = expect_refused(&storage, &config, position).await;
        assert!(detail.contains("offset"), "the error names the offset in the segment: {detail}");
    });
}

#[test]
fn default_sizes_a_torn_last_write_is_cut_and_the_log_goes_on() {
    let temp = tempfile::tempdir().expect("temp dir");
    let config = default_config(temp.path());
    run(async {
        let storage = DmaStorage;
        let flushed = fill(&storage, &config, 300).await;
        let records_before = {
            let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
            let ends: Vec<u64> = (0..QUEUES).map(|queue| log.visible_end_offset(queue)).collect();
            ends
        };
        // A write that reached the disk only in part: sectors after its first
        // one never arrived (zeros), as a power cut leaves it.
        let (path, end_offset) = segment_holding(&segment_files(&storage, &config).await, flushed);
        let torn_start = end_offset.div_ceil(BLOCK_SIZE_BYTES as u64) * BLOCK_SIZE_BYTES as u64;
        let torn_position = flushed - end_offset + torn_start;
        damage_file(&path, torn_start, &torn_write(torn_position, flushed, (torn_start - end_offset) as u32));
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("a torn tail is cut, not refused");
        for (queue_id, count) in records_before.iter().enumerate() {
            assert_eq!(log.visible_end_offset(queue_id as u32), *count);
            let batch = log.read(queue_id as u32, count - 1, 1, 1 << 20).await.expect("read the last record");
            assert_eq!(batch.records[0].message(), message(queue_id as u32, count - 1));
        }
        // The batch marker is a whole record and stays; the rest is zeroed,
        // and a lone batch marker on the next block vouches for the end.
        let marker = super::record::BATCH_MARKER_SIZE_BYTES as u64;
        let block = BLOCK_SIZE_BYTES as u64;
        let rest_of_block = read_file_at(&path, torn_start + marker, (block - marker) as usize);
        assert!(rest_of_block.iter().all(|byte| *byte == 0), "the torn tail is zeroed");
        let vouching = read_file_at(&path, torn_start + block, marker as usize);
        let Decoded::Valid(header) = super::record::decode(&vouching) else { panic!("no batch marker after the cut") };
        assert_eq!(header.batch_durable_position(), Some(torn_start + marker));
        let after = read_file_at(&path, torn_start + block + marker, (2 * block - marker) as usize);
        assert!(after.iter().all(|byte| *byte == 0), "the torn tail is zeroed");
        let message = message(0, 300);
        let appended = log
            .append(AppendRequest { queue_id: 0, indexed: true, message: &message, ..Default::default() })
            .await
            .expect("append after the cut");
        assert_eq!(appended.queue_offset, Some(300));
    });
}

#[test]
fn the_largest_record_fits_an_empty_segment_with_its_batch_marker() {
    run(async {
        let storage = MemoryStorage::new();
        let config =
            LogConfig { segment_size_bytes: 64 * 1024, buffer_capacity_bytes: 256 * 1024, ..small_config("/largest") };
        let log = CommitLog::open(storage, config.clone()).await.expect("open");
        let largest = vec![7u8; config.record_size_bytes_max() - crate::constants::RECORD_HEADER_SIZE_BYTES];
        for queue_offset in 0..3 {
            let request = AppendRequest { queue_id: 0, indexed: true, message: &largest, ..Default::default() };
            let append = log.append(request);
            let limit = async {
                glommio::timer::sleep(Duration::from_secs(20)).await;
                panic!("an accepted record never found room: segments roll forever");
            };
            let appended = futures_lite::future::or(append, limit).await.expect("the largest record");
            assert_eq!(appended.queue_offset, Some(queue_offset));
        }
        let too_large = vec![7u8; largest.len() + 1];
        let request = AppendRequest { queue_id: 0, indexed: true, message: &too_large, ..Default::default() };
        assert!(matches!(log.append(request).await, Err(LogError::RecordTooLarge { .. })));
    });
}

/// A lost sector run from the middle of a block to its end, with a record
/// (not a batch marker) starting on the next block: the scan must not skip
/// the hole as if it were a write's padding.
#[test]
fn a_hole_up_to_a_block_boundary_inside_a_write_is_not_taken_for_padding() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/hole");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        let header = crate::constants::RECORD_HEADER_SIZE_BYTES;
        let marker = super::record::BATCH_MARKER_SIZE_BYTES;
        // One write: marker, 2000 + 2040 bytes of records, then a record that
        // starts exactly on the next block.
        let sizes = [(0, 2000), (1, BLOCK_SIZE_BYTES - marker - 2000), (0, 500)];
        let mut end = 0;
        for (queue_id, size) in sizes {
            let body = vec![9u8; size - header];
            let request = AppendRequest { queue_id, indexed: true, message: &body, ..Default::default() };
            end = log.append_buffered(request).await.expect("append").end;
        }
        log.wait_acknowledgeable(end).await.expect("durable");
        let body = vec![3u8; 300];
        log.append(AppendRequest { queue_id: 0, indexed: true, message: &body, ..Default::default() })
            .await
            .expect("a second write vouches for the first");
        let hole = position_of(&storage, &config, 1, 0).await;
        assert_eq!((hole + 2040) % BLOCK_SIZE_BYTES as u64, 0, "the record runs to the block's end");
        drop(log);
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, hole);
        storage.overwrite(&path, offset, &vec![0; 2040]).expect("lose the sectors");
        expect_refused(&storage, &config, hole).await;
    });
}

/// A bit flip in the last write, in a record whose message holds a run of
/// zeros as long as a sector: the write's marker knows how many zero
/// sectors it was written with, so the flip is not taken for a torn write.
#[test]
fn a_bit_flip_in_a_record_full_of_zeros_in_the_last_write_is_refused() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/zeros");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        let zeros = vec![0u8; 3000];
        let mut last = None;
        for _ in 0..3 {
            let request = AppendRequest { queue_id: 0, indexed: true, message: &zeros, ..Default::default() };
            last = Some(log.append_buffered(request).await.expect("append"));
        }
        let last = last.expect("appended");
        log.wait_acknowledgeable(last.end).await.expect("durable: the last write, nothing after it");
        drop(log);
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, last.position);
        storage.flip_bit(&path, offset + 2000, 4).expect("flip");
        expect_refused(&storage, &config, last.position).await;
    });
}

/// Async flush: an fdatasync covers several writes, and only a later batch
/// marker says so. With no later write (the log went idle) a zeroed block in
/// those writes looked like a torn tail and was cut: durable records lost
/// with the log opening. The flusher now writes and syncs a lone marker
/// after such an fdatasync when nothing follows, so the damage is refused.
#[test]
fn async_an_idle_log_vouches_for_what_its_last_fdatasync_made_durable() {
    run(async {
        let storage = MemoryStorage::new();
        let config = LogConfig {
            flush: FlushMode::Async { interval: Duration::from_secs(3600) },
            ..small_config("/idle-vouch")
        };
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        let mut last = None;
        for sequence in 0..10_000 {
            let message = message(0, sequence);
            let request = AppendRequest { queue_id: 0, indexed: true, message: &message, ..Default::default() };
            let appended = log.append_buffered(request).await.expect("append");
            log.wait_acknowledgeable(appended.end).await.expect("written");
            if log.positions().flushed >= appended.end {
                last = Some(appended);
                break;
            }
        }
        let last = last.expect("a buffer's worth of writes brings an fdatasync");
        for _ in 0..16 {
            glommio::executor().yield_now().await;
        }
        drop(log);
        storage.crash();
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, last.position);
        let block = offset / BLOCK_SIZE_BYTES as u64 * BLOCK_SIZE_BYTES as u64;
        storage.overwrite(&path, block, &[0; BLOCK_SIZE_BYTES]).expect("zero the block of the last durable record");
        expect_refused(&storage, &config, last.position).await;
    });
}
