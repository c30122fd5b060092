//! Bugs the simulation and the fuzzer found, each reproduced on its own and
//! kept as a regression test now that it is fixed.

use super::boot::Boot;
use crate::constants::BLOCK_SIZE_BYTES;
use crate::storage::backend::{MemoryStorage, SectorFate, Storage};
use crate::storage::segment::parse_segment_start;
use crate::storage::tests::run;
use crate::storage::{AppendRequest, CommitLog, LogConfig, LogError};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

fn config(dir: &str) -> LogConfig {
    LogConfig {
        segment_size_bytes: 512 * 1024,
        buffer_capacity_bytes: 32 * 1024,
        recent_buffers_bytes: 64 * 1024,
        checkpoint_interval: Duration::from_secs(3600),
        ..LogConfig::new(dir)
    }
}

fn message(offset: u64, length: usize) -> Vec<u8> {
    super::body(7, offset, length)
}

async fn append<S: Storage>(log: &CommitLog<S>, offset: u64, length: usize) {
    let message = message(offset, length);
    let request = AppendRequest { queue_id: 0, indexed: true, message: &message, ..AppendRequest::default() };
    let appended = log.append(request).await.expect("append");
    assert_eq!(appended.queue_offset, Some(offset));
}

/// Segment writes of the log so far: (file, offset in it).
fn segment_writes(storage: &MemoryStorage) -> Vec<(PathBuf, u64)> {
    let writes = storage.writes().into_iter();
    writes.filter(|(path, _, _)| parse_segment_start(path).is_some()).map(|(path, at, _)| (path, at)).collect()
}

fn copy_block(storage: &MemoryStorage, from: &(PathBuf, u64), to: &(PathBuf, u64)) {
    let block = storage.read_durable(&from.0, from.1, BLOCK_SIZE_BYTES).expect("read the source block");
    storage.overwrite(&to.0, to.1, &block).expect("misdirect the block");
}

/// A checkpoint rewrites the partly filled last block of an index file,
/// which holds entries an earlier checkpoint made durable. A power cut in
/// that write that garbles a sector (a drive writing garbage) leaves garbage
/// in durable entries, and recovery loads them unchecked: a debug build
/// panics in `QueueIndex::push` during the scan (`record_end` going
/// backwards), a release build serves index entries pointing anywhere.
/// Expected: a refusal, or a log whose records all read back. (Index entry
/// checksums and a rebuild from the log, on the `storage-side` branch, are
/// meant to fix this.) Found by the simulation, seed 228.
#[test]
fn a_garbled_rewrite_of_the_index_tail_loses_no_durable_entry() {
    run(async {
        let storage = MemoryStorage::new();
        let config = config("/index");
        let boot = Boot::new(storage.clone());
        let log = Rc::new(CommitLog::open(boot.clone(), config.clone()).await.expect("open"));
        for offset in 0..100 {
            append(&log, offset, 200).await;
        }
        log.checkpoint().await.expect("the first checkpoint");
        for offset in 100..150 {
            append(&log, offset, 200).await;
        }
        let checkpoint = glommio::spawn_local({
            let log = log.clone();
            async move { log.checkpoint().await }
        });
        while !boot.index_in_flight() {
            glommio::executor().yield_now().await;
        }
        // One more turn: the index write reaches the disk, its fdatasync not.
        glommio::executor().yield_now().await;
        boot.cut_power();
        drop(checkpoint);
        drop(log);
        storage.crash_with(&mut || SectorFate::Garbled);
        let log = match CommitLog::open(Boot::new(storage.clone()), config).await {
            Ok(log) => log,
            Err(LogError::Corrupt { .. }) => return,
            Err(error) => panic!("recovery failed: {error}"),
        };
        assert_eq!(log.visible_end_offset(0), 150);
        for offset in 0..150 {
            let batch = log.read(0, offset, 1, 1 << 20).await.expect("every durable record reads back");
            assert_eq!(batch.records[0].message(), message(offset, 200));
        }
    });
}

/// A misdirected block (a copy of an older write's first block over a later
/// write) is refused, rightly. But the operator's override cannot open the
/// log either: the copied records are valid, their queue offset does not
/// follow, and `recovery::index_record` fails the scan with "queue 0
/// expects offset 30 but the record has 2" before the tail rule and
/// `truncate_corruption` get a say. Expected: the override cuts the log at
/// the misdirected block and opens with offsets 0..30. Found by the
/// simulation (466 of 2000 seeds met it).
#[test]
fn the_override_opens_a_log_with_a_misdirected_block() {
    run(async {
        let storage = MemoryStorage::new();
        let config = config("/misdirected");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        for offset in 0..60 {
            append(&log, offset, 300).await;
        }
        drop(log);
        // Sync flush, one appender: write n holds the marker and record n.
        let writes = segment_writes(&storage);
        copy_block(&storage, &writes[2], &writes[30]);
        match CommitLog::open(storage.clone(), config.clone()).await {
            Err(LogError::Corrupt { .. }) => {}
            Err(error) => panic!("expected a refusal, got {error}"),
            Ok(_) => panic!("a misdirected block in the middle of the log was not noticed"),
        }
        let truncating = LogConfig { truncate_corruption: true, ..config };
        let log = CommitLog::open(storage, truncating).await.expect("the override opens the log");
        assert_eq!(log.visible_end_offset(0), 30);
    });
}

/// The same misdirection at the very start of the log: a copy of a later
/// write (marker, record 40, the start of record 41) over block 0. The
/// override opens the log and serves record 40 as the queue's first record,
/// at offset 40, with offsets 0..40 reported as deleted by retention, which
/// never ran: `recovery::index_record` takes a queue that starts above its
/// expected offset for one whose start retention deleted, even at position
/// 0 of the first segment. Expected: the cut leaves queue 0 starting at
/// offset 0. Found by the simulation (seed 554 and 5 more of 2000).
#[test]
fn the_override_does_not_start_a_queue_at_a_misplaced_copy() {
    run(async {
        let storage = MemoryStorage::new();
        let config = config("/misplaced");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        for offset in 0..40 {
            append(&log, offset, 300).await;
        }
        // One write holding record 40 whole and record 41 across its end.
        let (small, large) = (message(40, 300), message(41, 6000));
        let first = AppendRequest { queue_id: 0, indexed: true, message: &small, ..AppendRequest::default() };
        let second = AppendRequest { message: &large, ..first };
        log.append_buffered(first).await.expect("append 40");
        let placed = log.append_buffered(second).await.expect("append 41");
        log.wait_acknowledgeable(placed.end).await.expect("acknowledged");
        drop(log);
        let writes = segment_writes(&storage);
        let last = writes.last().expect("a write").clone();
        copy_block(&storage, &last, &writes[0]);
        assert!(matches!(CommitLog::open(storage.clone(), config.clone()).await, Err(LogError::Corrupt { .. })));
        let truncating = LogConfig { truncate_corruption: true, ..config };
        let log = CommitLog::open(storage, truncating).await.expect("the override opens the log");
        assert_eq!(log.base_offset(0), 0, "queue 0 starts at a misplaced copy of offset {}", log.base_offset(0));
    });
}

/// One bit flipped in the length field of the last durable record (sync
/// flush, every append acknowledged): the record's claimed extent now
/// reaches into the zero padding after its write, so `tail::looks_torn`
/// finds an all-zero sector "in" it and takes it for a torn write; no
/// marker vouches for the last write, so recovery cuts an acknowledged,
/// durable record and opens. With async flush the unvouched stretch is
/// every write since the last fdatasync began, so a flipped length there
/// cuts many durable records (seeds 4151 and 4932: records from 16 KiB
/// on, up to 45 KiB of durable data, cut). A torn write leaves the header's
/// length as written; a length pointing past the end of its write cannot
/// be one (a marker carrying its write's length would tell). Expected: a
/// refusal naming the position, as for any other flipped bit.
#[test]
fn a_flipped_length_in_the_last_acknowledged_record_is_refused() {
    run(async {
        let storage = MemoryStorage::new();
        let config = config("/length");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        for offset in 0..20 {
            append(&log, offset, 300).await;
        }
        let last = log.position_of(0, 19).await.expect("read the index").expect("record 19 is indexed");
        drop(log);
        let (path, _) = segment_writes(&storage).last().expect("a write").clone();
        // Byte 9 of the header is bits 8..16 of the length: +512 bytes.
        storage.flip_bit(&path, last + 9, 1).expect("flip");
        match CommitLog::open(storage, config).await {
            Err(LogError::Corrupt { position, .. }) => assert!(position <= last),
            Err(error) => panic!("expected a refusal, got {error}"),
            Ok(log) => panic!(
                "recovery opened and cut acknowledged record 19: the queue ends at {}",
                log.visible_end_offset(0)
            ),
        }
    });
}

/// An index file entry whose position is near `u64::MAX` (a damaged index
/// file) makes `QueueIndex::restore` overflow computing `position +
/// size_bytes`: a panic at recovery in a build with overflow checks, a
/// wrapped `record_end` otherwise. Expected: the entry is refused (the log
/// rebuilds the index from the segments, or refuses to open), no panic.
/// (Index entry checksums on the `storage-side` branch are meant to fix
/// this.) Found by `fuzz/` (recovery target) in its first seconds.
#[test]
fn a_damaged_index_entry_does_not_overflow_at_recovery() {
    run(async {
        let storage = MemoryStorage::new();
        let config = config("/index-overflow");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        for offset in 0..10 {
            append(&log, offset, 100).await;
        }
        log.checkpoint().await.expect("checkpoint");
        drop(log);
        let index = config.dir.join(crate::storage::INDEX_DIR).join("0000000000.idx");
        let mut bytes = storage.read_file(&index).await.expect("read").expect("queue 0 has an index file");
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        storage.overwrite(&index, 0, &bytes[..8]).expect("damage the first entry");
        let opened = std::panic::AssertUnwindSafe(CommitLog::open(storage, config));
        let opened = futures_lite::FutureExt::catch_unwind(opened).await;
        assert!(opened.is_ok(), "recovery panicked on a damaged index entry");
    });
}

/// A power cut in the middle of an unsynced write (async flush) loses the
/// sectors from a record that starts exactly on a sector boundary to the
/// end of that block, and keeps the later sectors. The scan takes the zeros
/// after the last whole record for the padding that ends a write
/// (`Padding::Next`), goes on at the next block, finds the middle of a
/// record there and calls it "damaged record, not the pattern a torn write
/// leaves" (or, when a record happens to start on that block, "queue 0
/// expects offset N but the record has N+k"): a refusal after an ordinary
/// power cut, with nothing durable damaged. Expected: the torn tail is cut
/// and the log opens. Found by the simulation (seeds 30849, 36765, 58322,
/// ...; about 1 seed in 30,000).
#[test]
fn a_torn_write_losing_sectors_from_a_record_boundary_is_cut() {
    run(async {
        let storage = MemoryStorage::new();
        let flush = crate::storage::FlushMode::Async { interval: Duration::from_secs(3600) };
        let config = LogConfig { flush, ..config("/torn-at-boundary") };
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        // Marker (56) + record 0 (56 + 400) end at 512: record 1 starts on
        // sector 1; records of 1056 bytes then run across the block end.
        let mut end = 0;
        for (offset, length) in [(0, 400), (1, 1000), (2, 1000), (3, 1000), (4, 1000), (5, 1000)] {
            let message = message(offset, length);
            let request = AppendRequest { queue_id: 0, indexed: true, message: &message, ..AppendRequest::default() };
            end = log.append_buffered(request).await.expect("append").end;
        }
        log.wait_acknowledgeable(end).await.expect("written");
        drop(log);
        let mut sector = 0;
        storage.crash_with(&mut || {
            sector += 1;
            if (2..=8).contains(&sector) {
                SectorFate::Lost
            } else {
                SectorFate::Written
            }
        });
        match CommitLog::open(storage, config).await {
            Ok(log) => assert!(log.visible_end_offset(0) <= 1),
            Err(error) => panic!("a torn write of unsynced data made recovery refuse: {error}"),
        }
    });
}

/// A misdirected write lands a block that starts with a batch marker over a
/// block of durable, checkpointed records where a record of queue 0 starts
/// exactly on the block. Recovery does not scan below the checkpoint, which
/// is expected; but reading that record then returns the marker as the
/// queue's message (an empty message), because `CommitLog::checked` (read.rs)
/// accepts any valid record that carries no queue offset, for the sake of
/// committed half messages. Expected: `LogError::Corrupt` (the record at the
/// index entry is not an indexed record of this queue and offset, nor of its
/// length). Found by the simulation (seed 48414).
#[test]
fn a_read_never_serves_a_batch_marker_as_a_message() {
    run(async {
        let storage = MemoryStorage::new();
        let config = config("/marker-served");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        // One write: marker (56), record 0 (56 + 3984) to 4096, record 1 at 4096.
        let (first, second) = (message(0, 3984), message(1, 100));
        let request = AppendRequest { queue_id: 0, indexed: true, message: &first, ..AppendRequest::default() };
        log.append_buffered(request).await.expect("append 0");
        let placed = log.append_buffered(AppendRequest { message: &second, ..request }).await.expect("append 1");
        log.wait_acknowledgeable(placed.end).await.expect("durable");
        assert_eq!(placed.position, BLOCK_SIZE_BYTES as u64);
        for offset in 2..6 {
            append(&log, offset, 200).await;
        }
        log.checkpoint().await.expect("checkpoint");
        drop(log);
        let writes = segment_writes(&storage);
        let target = (writes[0].0.clone(), BLOCK_SIZE_BYTES as u64);
        copy_block(&storage, &writes[1], &target);
        let log = CommitLog::open(storage, config).await.expect("below the checkpoint nothing is scanned");
        match log.read(0, 1, 1, 1 << 20).await {
            Err(LogError::Corrupt { .. }) => {}
            Err(error) => panic!("expected a corruption error, got {error}"),
            Ok(batch) => panic!("record 0/1 read back as {} bytes of something else", batch.records[0].message().len()),
        }
    });
}

/// Appends one record of `length` to `queue_id` (sync flush: one write each).
async fn append_to<S: Storage>(log: &CommitLog<S>, queue_id: u32, offset: u64, length: usize) {
    let message = message(offset, length);
    let request = AppendRequest { queue_id, indexed: true, message: &message, ..AppendRequest::default() };
    assert_eq!(log.append(request).await.expect("append").queue_offset, Some(offset));
}

/// A copy of the last write's block (the first record of queue 1) over the
/// first block (the only record of queue 0) reads as a valid log of its
/// own: a batch marker, a queue starting at offset 0. The real last write,
/// whose padding did not line up with the copy's end, looked like a write
/// after the end that vouched for nothing more, and was cut: queue 0's
/// acknowledged record was gone and the log opened. A batch marker now
/// carries its own position, so a copy elsewhere is damage. Found by the
/// simulation (seeds 96851, 27959, 43717, 46382, 54670, 72866).
#[test]
fn a_copy_of_a_later_write_over_the_first_block_is_refused() {
    run(async {
        let storage = MemoryStorage::new();
        let config = config("/copied-start");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        append_to(&log, 0, 0, 100).await;
        append_to(&log, 1, 0, 1000).await;
        drop(log);
        let writes = segment_writes(&storage);
        copy_block(&storage, &writes[1], &writes[0]);
        match CommitLog::open(storage, config).await {
            Err(LogError::Corrupt { position, .. }) => assert_eq!(position, 0),
            Err(error) => panic!("expected a refusal, got {error}"),
            Ok(log) => panic!("opened with queue 0 at {} records: its record was lost", log.visible_end_offset(0)),
        }
    });
}

/// Damage in the zero padding that ends a write (where no record lies)
/// stopped the scan there: with nothing vouching for the writes after it,
/// they were cut as a torn tail (async flush), or the log refused to open
/// though no record was hit. The next write's batch marker says where the
/// data before it ended, so the padding is known to be padding and the scan
/// goes on. Found by the simulation (seeds 2426, 66808).
#[test]
fn damaged_padding_between_two_writes_loses_nothing() {
    run(async {
        let storage = MemoryStorage::new();
        let config = config("/padding");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        for offset in 0..3 {
            append(&log, offset, 100).await;
        }
        drop(log);
        let writes = segment_writes(&storage);
        let (path, block_start) = &writes[0];
        let data_end = (crate::storage::record::BATCH_MARKER_SIZE_BYTES
            + crate::storage::record::padded_size(crate::constants::RECORD_HEADER_SIZE_BYTES + 100))
            as u64;
        let garbage = vec![0x5a; BLOCK_SIZE_BYTES - data_end as usize];
        storage.overwrite(path, block_start + data_end, &garbage).expect("damage the padding");
        let log = CommitLog::open(storage, config).await.expect("damaged padding is not a refusal");
        assert_eq!(log.visible_end_offset(0), 3);
        for offset in 0..3 {
            let batch = log.read(0, offset, 1, 1 << 20).await.expect("every record reads back");
            assert_eq!(batch.records[0].message(), message(offset, 100));
        }
    });
}
