//! Fault tests on the seeded fault-injecting backend: torn tail, bit flip,
//! lost unsynced data, EIO on write and fdatasync, ENOSPC. Each prints its
//! seed on failure.

use super::backend::{FaultPlan, FaultyStorage};
use super::tests::run;
use super::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

const QUEUES: u32 = 4;

fn config() -> LogConfig {
    LogConfig {
        segment_size_bytes: 1024 * 1024,
        buffer_capacity_bytes: 64 * 1024,
        recent_buffers_bytes: 128 * 1024,
        checkpoint_interval: Duration::from_secs(3600),
        ..LogConfig::new("/faults")
    }
}

fn message(queue_id: u32, sequence: u64) -> Vec<u8> {
    let length = 100 + (sequence as usize * 53) % 700;
    (0..length).map(|index| (sequence as usize * 31 + index + queue_id as usize) as u8).collect()
}

/// Appends from one task per queue until an append fails or `count` per
/// queue is reached; returns the acknowledged count per queue.
async fn append_until_failure(log: &Rc<CommitLog<FaultyStorage>>, count: u64) -> (BTreeMap<u32, u64>, Vec<LogError>) {
    let tasks: Vec<_> = (0..QUEUES)
        .map(|queue_id| {
            let log = log.clone();
            glommio::spawn_local(async move {
                for sequence in 0..count {
                    let message = message(queue_id, sequence);
                    let request = AppendRequest { queue_id, indexed: true, message: &message, ..Default::default() };
                    if let Err(error) = log.append(request).await {
                        return (queue_id, sequence, Some(error));
                    }
                }
                (queue_id, count, None)
            })
        })
        .collect();
    let mut acknowledged = BTreeMap::new();
    let mut errors = Vec::new();
    for task in tasks {
        let (queue_id, acked, error) = task.await;
        acknowledged.insert(queue_id, acked);
        errors.extend(error);
    }
    (acknowledged, errors)
}

/// Every acknowledged record is there and intact, and what follows it in a
/// queue is a gap-free run of records that were appended.
async fn assert_recovered(log: &CommitLog<FaultyStorage>, acknowledged: &BTreeMap<u32, u64>, seed: u64) {
    for (queue_id, acked) in acknowledged {
        let end = log.visible_end_offset(*queue_id);
        assert!(end >= *acked, "seed {seed}: queue {queue_id} lost acknowledged records: {end} < {acked}");
        let mut offset = 0;
        while offset < end {
            let batch = log.read(*queue_id, offset, 100, 1 << 20).await.expect("read");
            for record in &batch.records {
                assert_eq!(
                    record.message(),
                    message(*queue_id, offset),
                    "seed {seed}: queue {queue_id} offset {offset}"
                );
                offset += 1;
            }
        }
    }
}

/// `assert_recovered`, and each queue ends at its last acknowledged record:
/// nothing more, nothing less.
async fn assert_recovered_exactly(log: &CommitLog<FaultyStorage>, acknowledged: &BTreeMap<u32, u64>) {
    assert_recovered(log, acknowledged, 0).await;
    for (queue_id, acked) in acknowledged {
        assert_eq!(log.visible_end_offset(*queue_id), *acked, "queue {queue_id}: nothing more, nothing less");
    }
}

#[test]
fn a_torn_write_at_the_tail_is_cut_and_nothing_acknowledged_is_lost() {
    for seed in 0..40 {
        run(async move {
            let plan = FaultPlan { seed, fdatasync_error_from: Some(3 + seed % 20), ..FaultPlan::default() };
            let storage = FaultyStorage::new(plan);
            let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
            let (acknowledged, errors) = append_until_failure(&log, 400).await;
            assert!(!errors.is_empty(), "seed {seed}: the planned fdatasync failure never came");
            drop(log);
            storage.crash();
            storage.set_plan(FaultPlan { seed, ..FaultPlan::default() });
            let log = CommitLog::open(storage, config()).await.unwrap_or_else(|error| panic!("seed {seed}: {error}"));
            assert_recovered(&log, &acknowledged, seed).await;
        });
    }
}

#[test]
fn lost_unsynced_data_loses_only_unacknowledged_records() {
    for seed in 0..10 {
        run(async move {
            let plan = FaultPlan { seed, fdatasync_error_from: Some(5 + seed), ..FaultPlan::default() };
            let storage = FaultyStorage::new(plan);
            let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
            let (acknowledged, _) = append_until_failure(&log, 400).await;
            drop(log);
            storage.crash_losing_unsynced();
            storage.set_plan(FaultPlan::default());
            let log = CommitLog::open(storage, config()).await.expect("recover");
            assert_recovered(&log, &acknowledged, seed).await;
            for (queue_id, acked) in &acknowledged {
                assert_eq!(log.visible_end_offset(*queue_id), *acked, "seed {seed}: an unsynced record survived");
            }
        });
    }
}

async fn append_from(log: &CommitLog<FaultyStorage>, queue_id: u32, from: u64, to: u64) {
    for sequence in from..to {
        let message = message(queue_id, sequence);
        let request = AppendRequest { queue_id, indexed: true, message: &message, ..Default::default() };
        let appended = log.append(request).await.expect("append after the cut");
        assert_eq!(appended.queue_offset, Some(sequence));
    }
}

fn first_segment() -> PathBuf {
    Path::new("/faults").join(SEGMENTS_DIR).join(format!("{:020}.log", 0))
}

async fn fill_without_checkpoint(storage: &FaultyStorage, config: &LogConfig) -> BTreeMap<u32, u64> {
    let log = Rc::new(CommitLog::open(storage.clone(), config.clone()).await.expect("open"));
    let (acknowledged, errors) = append_until_failure(&log, 500).await;
    assert!(errors.is_empty(), "{errors:?}");
    drop(log);
    acknowledged
}

#[test]
fn a_bit_flip_in_the_middle_is_reported_not_truncated() {
    run(async {
        let storage = FaultyStorage::new(FaultPlan::default());
        let acknowledged = fill_without_checkpoint(&storage, &config()).await;
        storage.flip_bit(&first_segment(), 100 * 1024 + 3, 4).expect("flip");
        match CommitLog::open(storage.clone(), config()).await {
            Err(LogError::Corrupt { position, .. }) => assert!(position <= 100 * 1024 + 3),
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(_) => panic!("a corrupt log opened silently"),
        }
        // The refusal changed nothing: with the override the log opens,
        // cut at the corrupt record.
        let log = CommitLog::open(storage, LogConfig { truncate_corruption: true, ..config() })
            .await
            .expect("open with the override");
        let kept: u64 = (0..QUEUES).map(|queue_id| log.visible_end_offset(queue_id)).sum();
        let total: u64 = acknowledged.values().sum();
        assert!(kept > 0 && kept < total, "kept {kept} of {total}");
        // The cut log takes new records and reads whole: no index entry
        // survived that points past the cut.
        let log = Rc::new(log);
        let end = log.visible_end_offset(0);
        append_from(&log, 0, end, end + 50).await;
        assert_recovered(&log, &BTreeMap::from([(0, end + 50)]), 0).await;
    });
}

#[test]
fn a_bit_flip_before_the_checkpoint_fails_only_the_read_of_that_record() {
    run(async {
        let storage = FaultyStorage::new(FaultPlan::default());
        let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
        append_until_failure(&log, 200).await;
        let Ok(log) = Rc::try_unwrap(log) else { panic!("log still shared") };
        let first = log.read(0, 0, 1, 1 << 20).await.expect("read").records[0].position;
        log.close().await.expect("close");
        storage.flip_bit(&first_segment(), first + 60, 0).expect("flip");
        let log = CommitLog::open(storage, config()).await.expect("a checkpointed log opens");
        assert!(matches!(log.read(0, 0, 1, 1 << 20).await, Err(LogError::Corrupt { .. })));
        let batch = log.read(0, 1, 10, 1 << 20).await.expect("the other records read");
        assert_eq!(batch.records[0].message(), message(0, 1));
    });
}

async fn assert_stops_on(plan: FaultPlan) {
    let storage = FaultyStorage::new(plan);
    let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
    let (acknowledged, errors) = append_until_failure(&log, 300).await;
    assert!(errors.iter().all(LogError::is_stopped), "{errors:?}");
    assert!(log.is_stopped().is_some());
    let message = message(0, 0);
    let request = AppendRequest { queue_id: 0, indexed: true, message: &message, ..Default::default() };
    assert!(matches!(log.append(request).await, Err(LogError::Stopped { .. })), "a stopped log took an append");
    for (queue_id, acked) in &acknowledged {
        assert_eq!(log.visible_end_offset(*queue_id), *acked, "visible records must be exactly the acknowledged ones");
        if *acked > 0 {
            log.read(*queue_id, 0, 10, 1 << 20).await.expect("reads go on after a stop");
        }
    }
}

#[test]
fn eio_on_fdatasync_fails_the_appends_and_stops_the_log() {
    run(assert_stops_on(FaultPlan { fdatasync_error_from: Some(4), ..FaultPlan::default() }));
}

#[test]
fn eio_on_write_fails_the_appends_and_stops_the_log() {
    run(assert_stops_on(FaultPlan { write_error_from: Some(4), ..FaultPlan::default() }));
}

#[test]
fn a_full_disk_refuses_appends_clearly_and_loses_nothing() {
    run(async {
        // Creation 0 is the first segment, 1 the one prepared after it.
        let storage = FaultyStorage::new(FaultPlan { create_no_space_from: Some(2), ..FaultPlan::default() });
        let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
        let (acknowledged, errors) = append_until_failure(&log, 2000).await;
        assert!(!errors.is_empty(), "the disk never filled");
        assert!(errors.iter().all(|error| matches!(error, LogError::NoSpace { .. })), "{errors:?}");
        assert!(log.is_stopped().is_none(), "a full disk must not stop the log");
        let Ok(log) = Rc::try_unwrap(log) else { panic!("log still shared") };
        log.close().await.expect("close");
        storage.set_plan(FaultPlan::default());
        let log = CommitLog::open(storage, config()).await.expect("reopen");
        assert_recovered(&log, &acknowledged, 0).await;
        let message = message(9, 0);
        let request = AppendRequest { queue_id: 9, indexed: true, message: &message, ..Default::default() };
        log.append(request).await.expect("appends work again once there is space");
    });
}

// Fail-stop beyond the flusher: segment preparation, index files,
// checkpoints and retention. After the stop every append fails with
// `Stopped`, reads of visible records go on, and a restart finds every
// acknowledged record.

use super::backend::{Operation, TargetedFault};

fn plan_failing(fault: TargetedFault) -> FaultPlan {
    FaultPlan { targeted: vec![fault], ..FaultPlan::default() }
}

async fn assert_stopped_and_recoverable(
    storage: &FaultyStorage,
    log: Rc<CommitLog<FaultyStorage>>,
    acknowledged: &BTreeMap<u32, u64>,
    config: &LogConfig,
) {
    assert!(log.is_stopped().is_some(), "the log did not stop");
    let message = message(0, 0);
    let request = AppendRequest { queue_id: 0, indexed: true, message: &message, ..Default::default() };
    assert!(matches!(log.append(request).await, Err(LogError::Stopped { .. })), "a stopped log took an append");
    assert_recovered(&log, acknowledged, 0).await;
    drop(log);
    storage.crash();
    storage.set_plan(FaultPlan::default());
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("recover after the stop");
    assert_recovered(&log, acknowledged, 0).await;
}

#[test]
fn eio_zero_filling_the_next_segment_stops_the_log() {
    run(async {
        // Creation 0 is the first segment, at open.
        let fault = TargetedFault { from: 1, ..TargetedFault::eio(Operation::ZeroFill, ".log") };
        let storage = FaultyStorage::new(plan_failing(fault));
        let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
        let (acknowledged, errors) = append_until_failure(&log, 3000).await;
        assert!(!errors.is_empty(), "the failed segment preparation went unnoticed");
        assert!(errors.iter().all(LogError::is_stopped), "{errors:?}");
        assert_eq!(storage.targeted_calls(0), 2, "a failed segment preparation was retried");
        assert_stopped_and_recoverable(&storage, log, &acknowledged, &config()).await;
    });
}

/// Appends, then a checkpoint that meets `fault`: the checkpoint fails with
/// `Stopped` and so does every later append.
async fn assert_checkpoint_failure_stops(fault: TargetedFault) {
    let storage = FaultyStorage::new(plan_failing(fault));
    let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
    let (acknowledged, errors) = append_until_failure(&log, 100).await;
    assert!(errors.is_empty(), "{errors:?}");
    match log.checkpoint().await {
        Err(LogError::Stopped { .. }) => {}
        other => panic!("expected the checkpoint to stop the log, got {other:?}"),
    }
    // Index files are written and synced several at once: each queue's
    // file meets the fault at most once.
    let failed = storage.targeted_calls(0);
    assert!((1..=u64::from(QUEUES)).contains(&failed), "{failed} failed calls for {QUEUES} queues");
    assert!(matches!(log.checkpoint().await, Err(LogError::Stopped { .. })), "a checkpoint ran after the stop");
    assert_eq!(storage.targeted_calls(0), failed, "the failed operation was retried");
    assert_stopped_and_recoverable(&storage, log, &acknowledged, &config()).await;
}

#[test]
fn eio_on_an_index_file_fdatasync_stops_the_log() {
    run(assert_checkpoint_failure_stops(TargetedFault::eio(Operation::Fdatasync, "/index/")));
}

#[test]
fn eio_on_an_index_file_write_stops_the_log() {
    run(assert_checkpoint_failure_stops(TargetedFault::eio(Operation::Write, "/index/")));
}

#[test]
fn a_failed_sync_of_the_index_directory_stops_the_log() {
    // New index files' names are durable only through this sync: a full
    // disk here is no reason to go on either.
    run(assert_checkpoint_failure_stops(TargetedFault::eio(Operation::SyncDir, "/index")));
    run(assert_checkpoint_failure_stops(no_space_on(Operation::SyncDir, "/index", 0)));
}

#[test]
fn the_index_directory_is_synced_once_files_were_created_and_only_then() {
    run(async {
        // A fault that never fires counts the directory's syncs.
        let counted = TargetedFault { from: u64::MAX, ..TargetedFault::eio(Operation::SyncDir, "/index") };
        let storage = FaultyStorage::new(plan_failing(counted));
        let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
        append_from(&log, 0, 0, 10).await;
        log.checkpoint().await.expect("checkpoint");
        assert_eq!(storage.targeted_calls(0), 1, "the first checkpoint after an open syncs the directory");
        append_from(&log, 0, 10, 20).await;
        log.checkpoint().await.expect("checkpoint");
        assert_eq!(storage.targeted_calls(0), 1, "no file was created, yet the directory was synced");
        append_from(&log, 1, 0, 10).await;
        log.checkpoint().await.expect("checkpoint");
        assert_eq!(storage.targeted_calls(0), 2, "queue 1's new index file was named before its directory was synced");
        let log = crashed_and_reopened(&storage, log, &config()).await;
        assert_recovered(&log, &BTreeMap::from([(0, 20), (1, 10)]), 0).await;
    });
}

#[test]
fn eio_writing_the_checkpoint_file_stops_the_log() {
    run(assert_checkpoint_failure_stops(TargetedFault::eio(Operation::WriteFileAtomic, CHECKPOINT_NAME)));
}

const CHECKPOINT_NAME: &str = "checkpoint";

#[test]
fn a_failed_background_checkpoint_stops_the_log_and_is_not_retried() {
    run(async {
        let config = LogConfig { checkpoint_interval: Duration::from_millis(5), ..config() };
        let storage = FaultyStorage::new(plan_failing(TargetedFault::eio(Operation::Fdatasync, "/index/")));
        let log = Rc::new(CommitLog::open(storage.clone(), config.clone()).await.expect("open"));
        let (acknowledged, errors) = append_until_failure(&log, 100_000).await;
        assert!(!errors.is_empty(), "the failed background checkpoint went unnoticed");
        assert!(errors.iter().all(LogError::is_stopped), "{errors:?}");
        let failed = storage.targeted_calls(0);
        assert!((1..=u64::from(QUEUES)).contains(&failed), "{failed} index fdatasyncs for {QUEUES} queues");
        glommio::timer::sleep(Duration::from_millis(30)).await;
        assert_eq!(storage.targeted_calls(0), failed, "an index fdatasync was retried after it failed");
        assert_stopped_and_recoverable(&storage, log, &acknowledged, &config).await;
    });
}

#[test]
fn a_failed_segment_removal_stops_the_log() {
    run(async {
        let config = retention_config();
        let storage = FaultyStorage::new(plan_failing(TargetedFault::eio(Operation::Remove, ".log")));
        let log = Rc::new(CommitLog::open(storage.clone(), config.clone()).await.expect("open"));
        let (acknowledged, errors) = append_until_failure(&log, 3000).await;
        assert!(errors.is_empty(), "{errors:?}");
        log.checkpoint().await.expect("checkpoint");
        assert!(matches!(log.enforce_retention(now_us()).await, Err(LogError::Stopped { .. })));
        let message = message(0, 0);
        let request = AppendRequest { queue_id: 0, indexed: true, message: &message, ..Default::default() };
        assert!(matches!(log.append(request).await, Err(LogError::Stopped { .. })));
        assert!(log.is_stopped().is_some());
        // Retention forgot the first segment's offsets before the removal
        // failed; a restart finds them again.
        drop(log);
        storage.set_plan(FaultPlan::default());
        let log = CommitLog::open(storage, config).await.expect("recover after the stop");
        assert_recovered(&log, &acknowledged, 0).await;
    });
}

/// A log that keeps two segments' worth.
fn retention_config() -> LogConfig {
    let mut config = config();
    config.retention.max_total_bytes = Some(2 * config.segment_size_bytes);
    config
}

/// Appends to queue 0 from offset `from` until five segments are durable;
/// returns the queue's next offset.
async fn append_five_segments(log: &CommitLog<FaultyStorage>, from: u64) -> u64 {
    let mut count = from;
    while log.positions().flushed < 5 * config().segment_size_bytes {
        append_from(log, 0, count, count + 100).await;
        count += 100;
    }
    count
}

/// Starts a read of queue 0 from offset 0 with the disk holding reads, and
/// waits (a second at most) until `reads` of its reads wait there.
async fn read_held_at_the_disk(
    storage: &FaultyStorage,
    log: &Rc<CommitLog<FaultyStorage>>,
    reads: usize,
) -> glommio::Task<Result<ReadBatch, LogError>> {
    storage.hold_reads();
    let reader = {
        let log = log.clone();
        glommio::spawn_local(async move { log.read(0, 0, usize::MAX, usize::MAX).await })
    };
    for _ in 0..1000 {
        if storage.reads_waiting() >= reads {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    reader
}

/// A queue whose records lie far apart in the log (one of many queues) is
/// read with several disk reads in flight (`read_ahead`), and comes back
/// whole and in order.
#[test]
fn an_interleaved_queue_is_read_with_several_disk_reads_in_flight() {
    run(async {
        let storage = FaultyStorage::new(FaultPlan::default());
        let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
        let count = 20;
        for sequence in 0..count {
            append_from(&log, 0, sequence, sequence + 1).await;
            // About 90 KiB of another queue: farther apart than a read coalesces.
            append_from(&log, 1, sequence * 200, (sequence + 1) * 200).await;
        }
        let reader = read_held_at_the_disk(&storage, &log, 2).await;
        assert!(storage.reads_waiting() > 1, "{} read(s) in flight", storage.reads_waiting());
        storage.release_reads();
        let batch = reader.await.expect("read");
        assert_eq!(batch.records.len(), count as usize);
        for (sequence, record) in (0..).zip(&batch.records) {
            assert_eq!(record.message(), message(0, sequence), "offset {sequence}");
        }
    });
}

#[test]
fn a_read_racing_retention_says_offset_truncated() {
    run(async {
        let config = retention_config();
        let storage = FaultyStorage::new(FaultPlan::default());
        let log = Rc::new(CommitLog::open(storage.clone(), config.clone()).await.expect("open"));
        append_five_segments(&log, 0).await;
        // Retention runs behind a checkpoint; its lookups of the index then
        // read the index files, which must not wait with the reader below.
        log.checkpoint().await.expect("checkpoint");
        log.read(0, 0, usize::MAX, usize::MAX).await.expect("a read that caches the index pages");
        let reader = read_held_at_the_disk(&storage, &log, 1).await;
        // The read's first runs (`read_ahead`) wait at the disk.
        assert!(storage.reads_waiting() >= 1, "the read never reached the disk");
        let deleted = log.enforce_retention(now_us()).await.expect("retention");
        // Reads already started finish on their open segment files: the
        // read-ahead (about 2 MiB, two segments here) must not reach past
        // what retention deleted for the read to meet a deleted segment.
        assert!(deleted >= 3, "retention deleted {deleted} segments");
        storage.release_reads();
        match reader.await {
            Err(LogError::OffsetTruncated { queue_id: 0, requested: 0, earliest }) => {
                assert_eq!(earliest, log.base_offset(0));
                assert!(earliest > 0);
            }
            other => panic!("expected OffsetTruncated, got {other:?}"),
        }
        let batch = log.read(0, log.base_offset(0), 10, 1 << 20).await.expect("read after retention");
        assert_eq!(batch.records[0].message(), message(0, log.base_offset(0)));
    });
}

// A full disk under a checkpoint (another process took the room): the
// checkpoint is skipped and the log goes on; the next checkpoint writes the
// same entries again, and a restart finds every acknowledged record.

/// A power cut (unsynced writes torn at random), then the log opened again.
async fn crashed_and_reopened(
    storage: &FaultyStorage,
    log: Rc<CommitLog<FaultyStorage>>,
    config: &LogConfig,
) -> CommitLog<FaultyStorage> {
    drop(log);
    storage.crash();
    CommitLog::open(storage.clone(), config.clone()).await.expect("recover")
}

fn no_space_on(operation: Operation, path_contains: &str, from: u64) -> TargetedFault {
    TargetedFault { operation, path_contains: path_contains.to_owned(), from, errno: libc::ENOSPC }
}

#[test]
fn a_full_disk_under_a_checkpoint_skips_it_and_the_next_one_writes_it() {
    run(async {
        let storage = FaultyStorage::new(plan_failing(no_space_on(Operation::Write, "/index/", 0)));
        let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
        // 1,000 entries a queue: several blocks per index write, of which
        // the full disk lands the first half.
        let (acknowledged, errors) = append_until_failure(&log, 1000).await;
        assert!(errors.is_empty(), "{errors:?}");
        let mut refused = 0;
        for _ in 0..2 {
            match log.checkpoint().await {
                Err(error) => assert!(error.is_no_space() && !error.is_stopped(), "{error}"),
                Ok(()) => panic!("a checkpoint passed a full disk"),
            }
            let tried = storage.targeted_calls(0) - refused;
            assert!((1..=u64::from(QUEUES)).contains(&tried), "a checkpoint made {tried} index writes");
            refused += tried;
        }
        assert!(log.is_stopped().is_none(), "a full disk under a checkpoint stopped the log");
        assert!(log.index_memory().unwritten_entries >= 4000, "the entries wait in memory");
        assert_recovered(&log, &acknowledged, 0).await;
        append_from(&log, 0, 1000, 1100).await;
        storage.set_plan(FaultPlan::default());
        log.checkpoint().await.expect("a checkpoint once the disk has room");
        assert_eq!(log.index_memory().unwritten_entries, 0);
        let mut acknowledged = acknowledged;
        acknowledged.insert(0, 1100);
        let log = crashed_and_reopened(&storage, log, &config()).await;
        assert_recovered_exactly(&log, &acknowledged).await;
    });
}

#[test]
fn a_full_disk_in_the_middle_of_many_index_writes_skips_the_checkpoint_whole() {
    run(async {
        // 40 queues, more than a checkpoint writes or syncs at once: the
        // disk fills after ten of their writes landed, and those queues'
        // entries stay in memory with the rest until a checkpoint succeeds.
        let storage = FaultyStorage::new(plan_failing(no_space_on(Operation::Write, "/index/", 10)));
        let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
        let queues = 40;
        let mut acknowledged = BTreeMap::new();
        for queue_id in 0..queues {
            append_from(&log, queue_id, 0, 30).await;
            acknowledged.insert(queue_id, 30);
        }
        assert!(log.checkpoint().await.is_err_and(|error| error.is_no_space() && !error.is_stopped()));
        assert_eq!(log.index_memory().unwritten_entries, queues as usize * 30, "entries left memory unsynced");
        assert_recovered(&log, &acknowledged, 0).await;
        for queue_id in 0..queues {
            append_from(&log, queue_id, 30, 35).await;
            acknowledged.insert(queue_id, 35);
        }
        storage.set_plan(FaultPlan::default());
        log.checkpoint().await.expect("a checkpoint once the disk has room");
        assert_eq!(log.index_memory().unwritten_entries, 0);
        let log = crashed_and_reopened(&storage, log, &config()).await;
        assert_recovered_exactly(&log, &acknowledged).await;
    });
}

#[test]
fn a_full_disk_under_the_last_checkpoint_still_closes_the_log() {
    run(async {
        // A broker stopped on a full disk: its log closes, and what it
        // acknowledged is found again from the last checkpoint on disk.
        let storage = FaultyStorage::new(plan_failing(no_space_on(Operation::Write, "/index/", 0)));
        let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
        let (acknowledged, errors) = append_until_failure(&log, 300).await;
        assert!(errors.is_empty(), "{errors:?}");
        log.close().await.expect("a full disk skips the last checkpoint, not the close");
        assert!(log.is_stopped().is_none(), "closed, not stopped");
        let log = crashed_and_reopened(&storage, log, &config()).await;
        assert_recovered_exactly(&log, &acknowledged).await;
    });
}

#[test]
fn a_full_disk_under_the_checkpoint_file_skips_it() {
    run(async {
        let storage = FaultyStorage::new(plan_failing(no_space_on(Operation::WriteFileAtomic, CHECKPOINT_NAME, 0)));
        let log = Rc::new(CommitLog::open(storage.clone(), config()).await.expect("open"));
        let (acknowledged, errors) = append_until_failure(&log, 300).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert!(log.checkpoint().await.is_err_and(|error| error.is_no_space() && !error.is_stopped()));
        append_from(&log, 1, 300, 350).await;
        storage.set_plan(FaultPlan::default());
        log.checkpoint().await.expect("a checkpoint once the disk has room");
        let mut acknowledged = acknowledged;
        acknowledged.insert(1, 350);
        let log = crashed_and_reopened(&storage, log, &config()).await;
        assert_recovered(&log, &acknowledged, 0).await;
    });
}

#[test]
fn no_space_on_an_index_file_fdatasync_still_stops_the_log() {
    run(assert_checkpoint_failure_stops(no_space_on(Operation::Fdatasync, "/index/", 0)));
}

#[test]
fn the_checkpointer_retries_a_checkpoint_a_full_disk_refused() {
    run(async {
        let config = LogConfig { checkpoint_interval: Duration::from_millis(5), ..config() };
        let storage = FaultyStorage::new(plan_failing(no_space_on(Operation::Write, "/index/", 0)));
        let log = Rc::new(CommitLog::open(storage.clone(), config.clone()).await.expect("open"));
        let (acknowledged, errors) = append_until_failure(&log, 500).await;
        assert!(errors.is_empty(), "{errors:?}");
        glommio::timer::sleep(Duration::from_millis(300)).await;
        let refused = storage.targeted_calls(0);
        assert!(refused >= 1, "no checkpoint met the full disk");
        // Up to one write per queue each time.
        assert!(refused <= 2 * u64::from(QUEUES), "the checkpointer retried at once: {refused} writes in 300 ms");
        assert!(log.is_stopped().is_none());
        storage.set_plan(FaultPlan::default());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.index_memory().unwritten_entries > 0 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint after the disk had room again");
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        let log = crashed_and_reopened(&storage, log, &config).await;
        assert_recovered(&log, &acknowledged, 0).await;
    });
}

#[test]
fn retention_waits_for_the_checkpoints_a_full_disk_refused() {
    run(async {
        let config = retention_config();
        let storage = FaultyStorage::new(FaultPlan::default());
        let log = Rc::new(CommitLog::open(storage.clone(), config.clone()).await.expect("open"));
        // Queue 1 has records only before the checkpoint; queue 0 goes on.
        append_from(&log, 1, 0, 10).await;
        log.checkpoint().await.expect("checkpoint");
        storage.set_plan(plan_failing(no_space_on(Operation::Write, "/index/", 0)));
        let count = append_five_segments(&log, 0).await;
        assert!(log.checkpoint().await.is_err_and(|error| error.is_no_space()), "the disk is full");
        // A segment past the checkpoint on disk would leave a restart
        // scanning from it into a deleted segment.
        assert_eq!(log.enforce_retention(now_us()).await.expect("retention"), 0);
        storage.set_plan(FaultPlan::default());
        log.checkpoint().await.expect("a checkpoint once the disk has room");
        let deleted = log.enforce_retention(now_us()).await.expect("retention");
        // Reads already started finish on their open segment files: the
        // read-ahead (about 2 MiB, two segments here) must not reach past
        // what retention deleted for the read to meet a deleted segment.
        assert!(deleted >= 3, "retention deleted {deleted} segments");
        let base = log.base_offset(0);
        let log = crashed_and_reopened(&storage, log, &config).await;
        assert_eq!((log.base_offset(0), log.visible_end_offset(0)), (base, count), "the same offsets are kept");
        let batch = log.read(0, base, 10, 1 << 20).await.expect("read the first kept offset");
        assert_eq!(batch.records[0].message(), message(0, base));
        assert_eq!(log.visible_end_offset(1), 10, "the idle queue keeps its next offset");
        append_from(&log, 0, count, count + 10).await;
        append_from(&log, 1, 10, 11).await;
    });
}
