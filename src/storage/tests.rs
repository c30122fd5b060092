//! Storage tests. Every test in `on_every_backend!` runs against real
//! O_DIRECT files in a temporary directory, memory, and the fault-injecting
//! backend with no faults planned. Fault tests use the fault backend alone.

use super::backend::{DmaStorage, FaultPlan, FaultyStorage, MemoryStorage, Storage};
use super::*;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

pub(crate) fn run<F: Future>(future: F) -> F::Output {
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("a glommio executor for the test");
    executor.run(future)
}

/// Whether `future` resolves within `limit` (on the test's executor).
pub(crate) async fn resolves_within(future: impl Future, limit: Duration) -> bool {
    let resolved = async {
        future.await;
        true
    };
    futures_lite::future::or(resolved, async {
        glommio::timer::sleep(limit).await;
        false
    })
    .await
}

pub(crate) fn config(dir: &Path) -> LogConfig {
    LogConfig {
        segment_size_bytes: 256 * 1024,
        buffer_capacity_bytes: 64 * 1024,
        recent_buffers_bytes: 128 * 1024,
        checkpoint_interval: Duration::from_secs(3600),
        ..LogConfig::new(dir)
    }
}

/// What a simulated crash does on each backend: memory and faults lose what
/// no fdatasync covered; a real directory keeps what the device accepted.
trait Crash {
    fn crash(&self);
}

impl Crash for DmaStorage {
    fn crash(&self) {}
}

impl Crash for MemoryStorage {
    fn crash(&self) {
        MemoryStorage::crash(self)
    }
}

impl Crash for FaultyStorage {
    fn crash(&self) {
        FaultyStorage::crash(self)
    }
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn dma() {
                let temp = tempfile::tempdir().expect("temp dir");
                super::run(super::$name(super::DmaStorage, super::config(temp.path())));
            }
            #[test]
            fn memory() {
                super::run(super::$name(super::MemoryStorage::new(), super::config("/memory".as_ref())));
            }
            #[test]
            fn faulty() {
                let storage = super::FaultyStorage::new(super::FaultPlan::default());
                super::run(super::$name(storage, super::config("/faulty".as_ref())));
            }
        }
    )*};
}

on_every_backend!(
    appended_records_read_back_byte_for_byte,
    records_survive_a_clean_reopen,
    records_survive_a_crash_without_checkpoint,
    segments_roll_over_and_recover,
    unflushed_records_are_invisible,
    concurrent_appends_share_fdatasyncs,
    retention_deletes_old_segments_and_their_offsets,
    a_reference_to_a_record_retention_deleted_reads_as_lost,
    retention_keeps_the_records_before_a_late_commit,
    a_reference_into_an_earlier_segment_is_stored_as_a_copy,
    references_to_large_records_keep_a_read_within_its_bytes,
    an_oversized_record_is_refused,
    async_mode_acknowledges_after_the_write,
    a_capped_read_sees_no_record_past_its_cap_even_after_a_checkpoint,
);

/// A message whose content says which one it is, so damage shows.
fn message(queue_id: u32, sequence: u64) -> Vec<u8> {
    let length = 40 + (sequence as usize * 37) % 900;
    let mut bytes = Vec::with_capacity(length);
    while bytes.len() < length {
        bytes.extend_from_slice(&(u64::from(queue_id) << 48 | sequence).to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

fn request(queue_id: u32, message: &[u8]) -> AppendRequest<'_> {
    AppendRequest { queue_id, indexed: true, tag_hash: queue_id, message, ..AppendRequest::default() }
}

async fn append_all<S: Storage>(log: &CommitLog<S>, queue_id: u32, sequences: std::ops::Range<u64>) {
    for sequence in sequences {
        let message = message(queue_id, sequence);
        let appended = log.append(request(queue_id, &message)).await.expect("append");
        assert_eq!(appended.queue_offset, Some(sequence));
    }
}

async fn assert_queue<S: Storage>(log: &CommitLog<S>, queue_id: u32, count: u64) {
    let mut offset = 0;
    while offset < count {
        let batch = log.read(queue_id, offset, 50, 1 << 20).await.expect("read");
        assert!(!batch.records.is_empty(), "queue {queue_id}: nothing at offset {offset} of {count}");
        for record in &batch.records {
            assert_eq!(record.queue_offset, offset);
            assert_eq!(record.message(), message(queue_id, offset), "queue {queue_id} offset {offset}");
            offset += 1;
        }
    }
    assert_eq!(log.visible_end_offset(queue_id), count, "queue {queue_id} holds more than expected");
}

async fn appended_records_read_back_byte_for_byte<S: Storage>(storage: S, config: LogConfig) {
    let log = CommitLog::open(storage, config).await.expect("open");
    for queue_id in 0..3 {
        append_all(&log, queue_id, 0..40).await;
    }
    for queue_id in 0..3 {
        assert_queue(&log, queue_id, 40).await;
    }
    let batch = log.read(1, 10, 5, 1 << 20).await.expect("read");
    assert_eq!((batch.records.len(), batch.next_offset, batch.visible_end_offset), (5, 15, 40));
    let small = log.read(1, 0, 100, 1).await.expect("read");
    assert_eq!(small.records.len(), 1, "the first record comes even past bytes_max");
    log.close().await.expect("close");
}

async fn records_survive_a_clean_reopen<S: Storage>(storage: S, config: LogConfig) {
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    append_all(&log, 7, 0..100).await;
    log.close().await.expect("close");
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("reopen");
    assert_queue(&log, 7, 100).await;
    append_all(&log, 7, 100..150).await;
    log.close().await.expect("close");
    let log = CommitLog::open(storage, config).await.expect("reopen");
    assert_queue(&log, 7, 150).await;
}

async fn records_survive_a_crash_without_checkpoint<S: Storage + Crash>(storage: S, config: LogConfig) {
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    append_all(&log, 1, 0..60).await;
    log.checkpoint().await.expect("checkpoint");
    append_all(&log, 1, 60..120).await;
    append_all(&log, 2, 0..30).await;
    drop(log);
    storage.crash();
    let log = CommitLog::open(storage, config).await.expect("recover");
    assert_queue(&log, 1, 120).await;
    assert_queue(&log, 2, 30).await;
}

async fn segments_roll_over_and_recover<S: Storage + Crash>(storage: S, config: LogConfig) {
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    append_all(&log, 0, 0..1500).await;
    assert!(log.positions().flushed > 3 * config.segment_size_bytes, "the test must span several segments");
    drop(log);
    storage.crash();
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("recover");
    assert_queue(&log, 0, 1500).await;
    append_all(&log, 0, 1500..1600).await;
    log.close().await.expect("close");
    let log = CommitLog::open(storage, config).await.expect("reopen");
    assert_queue(&log, 0, 1600).await;
}

/// A reader's cap (a sync primary's released position) hides the records
/// ending above it; the index hold keeps their entries in memory across a
/// checkpoint, where the cap can still be applied to them.
async fn a_capped_read_sees_no_record_past_its_cap_even_after_a_checkpoint<S: Storage>(storage: S, config: LogConfig) {
    let log = CommitLog::open(storage, config).await.expect("open");
    let mut ends = Vec::new();
    for sequence in 0..5 {
        let message = message(0, sequence);
        ends.push(log.append(request(0, &message)).await.expect("append").end);
    }
    let cap = ends[2];
    log.hold_index_at(cap);
    log.checkpoint().await.expect("checkpoint");
    assert_eq!(log.index_memory().unwritten_entries, 2, "the entries past the hold stay in memory");
    let limits = ReadLimits { count_max: 10, bytes_max: 1 << 20, cap };
    let batch = log.read_tagged(0, 0, limits, &[]).await.expect("capped read");
    assert_eq!((batch.records.len(), batch.next_offset, batch.visible_end_offset), (3, 3, 3));
    assert_eq!(log.visible_end_offset_below(0, cap), 3);
    assert_eq!(log.visible_end_offset_below(0, ends[3] - 1), 3, "a cap inside a record hides it");
    let nothing = log.read_tagged(0, 3, limits, &[]).await.expect("capped read at the cap");
    assert!(nothing.records.is_empty());
    assert_eq!(log.visible_end_offset_below(0, u64::MAX), 5);
    assert_queue(&log, 0, 5).await;
    log.hold_index_at(u64::MAX);
    log.checkpoint().await.expect("checkpoint");
    assert_eq!(log.index_memory().unwritten_entries, 0, "the lifted hold lets the entries go");
    log.close().await.expect("close");
}

async fn unflushed_records_are_invisible<S: Storage>(storage: S, config: LogConfig) {
    let log = CommitLog::open(storage, config).await.expect("open");
    append_all(&log, 0, 0..3).await;
    let message = message(0, 3);
    let appended = log.append_buffered(request(0, &message)).await.expect("append");
    // No await point since: the flusher cannot have run.
    let batch = log.read(0, 3, 10, 1 << 20).await.expect("read");
    assert!(batch.records.is_empty(), "a record was visible before its fdatasync");
    assert_eq!(log.visible_end_offset(0), 3);
    log.wait_acknowledgeable(appended.end).await.expect("durable");
    assert_queue(&log, 0, 4).await;
}

async fn concurrent_appends_share_fdatasyncs<S: Storage>(storage: S, config: LogConfig) {
    let log = std::rc::Rc::new(CommitLog::open(storage, config).await.expect("open"));
    let appenders: Vec<_> = (0..64u32)
        .map(|queue_id| {
            let log = log.clone();
            glommio::spawn_local(async move {
                for sequence in 0..10 {
                    let message = message(queue_id, sequence);
                    log.append(request(queue_id, &message)).await.expect("append");
                }
            })
        })
        .collect();
    for appender in appenders {
        appender.await;
    }
    let stats = log.stats();
    assert_eq!(stats.records_flushed, 640);
    assert!(stats.flush_count < 320, "{} flushes for 640 records: group commit did not batch", stats.flush_count);
    for queue_id in 0..64 {
        assert_queue(&log, queue_id, 10).await;
    }
}

async fn retention_deletes_old_segments_and_their_offsets<S: Storage>(storage: S, mut config: LogConfig) {
    config.retention.max_total_bytes = Some(3 * config.segment_size_bytes);
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    append_all(&log, 0, 0..2000).await;
    log.checkpoint().await.expect("checkpoint");
    let deleted = log.enforce_retention(now_us()).await.expect("retention");
    assert!(deleted > 0, "nothing deleted");
    let earliest = log.base_offset(0);
    assert!(earliest > 0);
    match log.read(0, 0, 1, 1 << 20).await {
        Err(LogError::OffsetTruncated { earliest: reported, .. }) => assert_eq!(reported, earliest),
        other => panic!("expected OffsetTruncated, got {other:?}"),
    }
    let batch = log.read(0, earliest, 10, 1 << 20).await.expect("read after retention");
    assert_eq!(batch.records[0].message(), message(0, earliest));
    log.close().await.expect("close");
    let log = CommitLog::open(storage, config).await.expect("reopen");
    assert_eq!(log.base_offset(0), earliest);
    assert_eq!(log.visible_end_offset(0), 2000);
}

/// A committed half message is an entry of its queue pointing back at an
/// older record; once retention deleted that record, its offset reads as
/// lost and the queue's own records around it still read.
async fn a_reference_to_a_record_retention_deleted_reads_as_lost<S: Storage>(storage: S, mut config: LogConfig) {
    config.retention.max_total_bytes = Some(3 * config.segment_size_bytes);
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    let half = message(1, 0);
    let stored = log.append(AppendRequest { flags: record::flags::HALF, ..request(1, &half) }).await.expect("half");
    append_all(&log, 0, 0..2000).await;
    append_all(&log, 5, 0..1).await;
    let size_bytes = (crate::constants::RECORD_HEADER_SIZE_BYTES + half.len()) as u32;
    let commit = AppendRequest {
        flags: record::flags::COMMIT,
        reference: Some((stored.position, size_bytes)),
        ..request(5, b"commit")
    };
    assert_eq!(log.append(commit).await.expect("commit").queue_offset, Some(1));
    let own = message(5, 2);
    log.append(request(5, &own)).await.expect("append");
    let before = log.read(5, 0, 10, 1 << 20).await.expect("read before retention");
    assert_eq!(before.records[1].message(), half, "the reference reads the half record");
    log.checkpoint().await.expect("checkpoint");
    assert!(log.enforce_retention(now_us()).await.expect("retention") > 0);
    assert_reference_lost(&log, &own).await;
    log.close().await.expect("close");
    let log = CommitLog::open(storage, config).await.expect("reopen");
    assert_reference_lost(&log, &own).await;
}

/// Op records are small index entries pointing at large records: a read
/// counts the records it returns, not the entries, stops before the one
/// that would pass its byte cap (the first always goes) and says where to
/// go on.
async fn references_to_large_records_keep_a_read_within_its_bytes<S: Storage>(storage: S, config: LogConfig) {
    let log = CommitLog::open(storage, config).await.expect("open");
    let large = vec![7u8; 20_000];
    let stored = log.append(AppendRequest { flags: record::flags::HALF, ..request(1, &large) }).await.expect("half");
    let size_bytes = (crate::constants::RECORD_HEADER_SIZE_BYTES + large.len()) as u32;
    for offset in 0..10 {
        let commit = AppendRequest {
            flags: record::flags::COMMIT,
            reference: Some((stored.position, size_bytes)),
            ..request(5, b"commit")
        };
        assert_eq!(log.append(commit).await.expect("commit").queue_offset, Some(offset));
    }
    let batch = log.read(5, 0, 10, 50_000).await.expect("read");
    assert_eq!(batch.records.len(), 2, "two records of 20 KB fit 50 KB, three do not");
    assert!(batch.records.iter().map(|record| record.bytes.len()).sum::<usize>() <= 50_000);
    assert_eq!(batch.next_offset, 2, "the read goes on at the first record left out");
    let batch = log.read(5, 2, 10, 1).await.expect("read");
    assert_eq!((batch.records.len(), batch.next_offset), (1, 3), "one record always goes");
}

/// A transaction committed long after its half: the commit's offset sits
/// among records newer than the half. Retention deleting the half's segment
/// must move the queue's base past the deleted records only, not past
/// retained ones before the commit.
async fn retention_keeps_the_records_before_a_late_commit<S: Storage>(storage: S, mut config: LogConfig) {
    config.retention.max_total_bytes = Some(3 * config.segment_size_bytes);
    let log = CommitLog::open(storage, config).await.expect("open");
    let half = message(1, 0);
    let stored = log.append(AppendRequest { flags: record::flags::HALF, ..request(1, &half) }).await.expect("half");
    log.append(request(5, &message(5, 0))).await.expect("offset 0");
    append_all(&log, 0, 0..2000).await;
    let kept = message(5, 1);
    log.append(request(5, &kept)).await.expect("offset 1");
    let size_bytes = (crate::constants::RECORD_HEADER_SIZE_BYTES + half.len()) as u32;
    let commit = AppendRequest {
        flags: record::flags::COMMIT,
        reference: Some((stored.position, size_bytes)),
        ..request(5, b"commit")
    };
    assert_eq!(log.append(commit).await.expect("commit").queue_offset, Some(2));
    let last = message(5, 3);
    log.append(request(5, &last)).await.expect("offset 3");
    log.checkpoint().await.expect("checkpoint");
    assert!(log.enforce_retention(now_us()).await.expect("retention") > 0);
    assert_eq!(log.base_offset(5), 1, "offset 0 went with its segment, offset 1 stays");
    let batch = log.read(5, 1, 10, 1 << 20).await.expect("read");
    assert_eq!(batch.lost_offsets, [2], "the commit's half went with its segment");
    let read: Vec<(u64, Vec<u8>)> =
        batch.records.iter().map(|record| (record.queue_offset, record.message().to_vec())).collect();
    assert_eq!(read, [(1, kept), (3, last)]);
}

/// An op record offered a copy points at a record of its own segment, and
/// becomes that copy (with a back-pointer reads never follow) when the
/// record lies in an earlier one: retention, oldest segment first, can never
/// leave it pointing at nothing.
async fn a_reference_into_an_earlier_segment_is_stored_as_a_copy<S: Storage>(storage: S, config: LogConfig) {
    let segment_size_bytes = config.segment_size_bytes;
    let log = CommitLog::open(storage, config).await.expect("open");
    let delayed = message(1, 0);
    let size_bytes = (crate::constants::RECORD_HEADER_SIZE_BYTES + delayed.len()) as u32;
    let stored =
        log.append(AppendRequest { flags: record::flags::DELAYED, ..request(1, &delayed) }).await.expect("a message");
    let op = |back_pointer: u64| AppendRequest {
        flags: record::flags::DELAYED | record::flags::INTERNAL,
        reference: Some((stored.position, size_bytes)),
        copy_if_far: Some(FarCopy { message: Some(&delayed), flags: record::flags::DELAYED, back_pointer }),
        ..request(5, b"entry")
    };
    log.append(op(11)).await.expect("a near op record");
    append_all(&log, 0, 0..2000).await;
    assert!(log.positions().flushed > segment_size_bytes, "the test must span segments");
    let without_copy =
        AppendRequest { copy_if_far: Some(FarCopy { message: None, ..op(0).copy_if_far.expect("a copy") }), ..op(0) };
    assert!(
        matches!(log.append(without_copy).await, Err(LogError::FarReference { .. })),
        "far without the message: refused, nothing appended"
    );
    log.append(op(22)).await.expect("a far op record");
    let batch = log.read(5, 0, 10, 1 << 20).await.expect("read");
    assert_eq!(batch.records.len(), 2);
    let (near, far) = (&batch.records[0], &batch.records[1]);
    assert!(near.via.is_some() && near.position == stored.position, "near: a reference");
    assert_eq!(near.via.as_ref().map(|via| via.body.to_vec()), Some(b"entry".to_vec()));
    assert!(far.via.is_none() && far.position > stored.position, "far: a record of its own");
    assert_eq!((far.header.ref_position, far.header.ref_size, far.header.flags), (22, 0, record::flags::DELAYED));
    assert_eq!(near.message(), far.message(), "the same message either way");
}

async fn assert_reference_lost<S: Storage>(log: &CommitLog<S>, own: &[u8]) {
    let batch = log.read(5, 0, 10, 1 << 20).await.expect("read after retention");
    assert_eq!(batch.lost_offsets, [1]);
    let offsets: Vec<u64> = batch.records.iter().map(|record| record.queue_offset).collect();
    assert_eq!((offsets, batch.next_offset), (vec![0, 2], 3));
    assert_eq!(batch.records[1].message(), own);
}

async fn an_oversized_record_is_refused<S: Storage>(storage: S, config: LogConfig) {
    let log = CommitLog::open(storage, config.clone()).await.expect("open");
    let huge = vec![1; config.record_size_bytes_max()];
    assert!(matches!(log.append(request(0, &huge)).await, Err(LogError::RecordTooLarge { .. })));
    append_all(&log, 0, 0..2).await;
    assert_queue(&log, 0, 2).await;
}

async fn async_mode_acknowledges_after_the_write<S: Storage>(storage: S, mut config: LogConfig) {
    config.flush = FlushMode::Async { interval: Duration::from_millis(5) };
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    append_all(&log, 0, 0..200).await;
    assert_queue(&log, 0, 200).await;
    log.close().await.expect("close");
    let log = CommitLog::open(storage, config).await.expect("reopen");
    assert_queue(&log, 0, 200).await;
}

on_every_backend!(bursts_larger_than_the_buffers_all_become_durable, the_next_segment_is_prepared_from_a_quarter_full);

/// Segment files in the log's directory.
async fn segment_files<S: Storage>(storage: &S, config: &LogConfig) -> usize {
    storage.list(&config.dir.join(SEGMENTS_DIR)).await.expect("list segments").len()
}

/// The next segment starts being zero-filled once a quarter of the active
/// one is written. At half, a 1 GiB fill beside the log's own writes did
/// not finish before the second half filled, and appends waited for it at
/// the roll.
async fn the_next_segment_is_prepared_from_a_quarter_full<S: Storage>(storage: S, config: LogConfig) {
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    let quarter = config.segment_size_bytes / 4;
    let (mut sequence, mut end) = (0, 0);
    // Each append waits for its write, so the next one starts a block on.
    while end + 2 * crate::constants::BLOCK_SIZE_BYTES as u64 <= quarter {
        end = log.append(request(0, &message(0, sequence))).await.expect("append").end;
        sequence += 1;
    }
    glommio::timer::sleep(Duration::from_millis(20)).await;
    assert_eq!(segment_files(&storage, &config).await, 1, "prepared before a quarter was written");
    while end <= quarter {
        end = log.append(request(0, &message(0, sequence))).await.expect("append").end;
        sequence += 1;
    }
    let prepared = async {
        while segment_files(&storage, &config).await < 2 {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    };
    assert!(resolves_within(prepared, Duration::from_secs(10)).await, "no next segment with a quarter written");
    assert!(end < config.segment_size_bytes / 2);
    log.close().await.expect("close");
}

/// Many tasks each place a burst of records bigger than all the buffers
/// together before waiting for durability, as a batch produce does.
async fn bursts_larger_than_the_buffers_all_become_durable<S: Storage>(storage: S, config: LogConfig) {
    let log = std::rc::Rc::new(CommitLog::open(storage, config).await.expect("open"));
    let tasks: Vec<_> = (0..8u32)
        .map(|queue_id| {
            let log = log.clone();
            glommio::spawn_local(async move {
                for burst in 0..3u64 {
                    let mut end = 0;
                    for sequence in burst * 200..(burst + 1) * 200 {
                        let message = message(queue_id, sequence);
                        end = log.append_buffered(request(queue_id, &message)).await.expect("append").end;
                    }
                    log.wait_acknowledgeable(end).await.expect("durable");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    for queue_id in 0..8 {
        assert_queue(&log, queue_id, 600).await;
    }
}

on_every_backend!(records_found_at_recovery_are_made_durable);

/// Written but never synced when the process died: recovery shows the
/// records, so it must make them durable before a power loss can take them.
async fn records_found_at_recovery_are_made_durable<S: Storage + Crash>(storage: S, mut config: LogConfig) {
    config.flush = FlushMode::Async { interval: Duration::from_secs(3600) };
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    append_all(&log, 0, 0..20).await;
    drop(log);
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("recover after the process died");
    let found = log.visible_end_offset(0);
    drop(log);
    storage.crash();
    let log = CommitLog::open(storage, config).await.expect("recover after a power loss");
    assert_queue(&log, 0, found).await;
}

/// Flips a byte of a file, as a damaged or torn sector would.
trait Damage {
    fn flip_byte(&self, path: &Path, position: u64);
}

impl Damage for DmaStorage {
    fn flip_byte(&self, path: &Path, position: u64) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open to damage");
        let mut byte = [0];
        file.read_exact_at(&mut byte, position).expect("read the byte to damage");
        byte[0] ^= 0x10;
        file.write_all_at(&byte, position).expect("damage");
        file.sync_all().expect("sync the damage");
    }
}

impl Damage for MemoryStorage {
    fn flip_byte(&self, path: &Path, position: u64) {
        self.flip_bit(path, position, 4).expect("damage");
    }
}

impl Damage for FaultyStorage {
    fn flip_byte(&self, path: &Path, position: u64) {
        self.flip_bit(path, position, 4).expect("damage");
    }
}

on_every_backend!(a_damaged_index_file_is_rebuilt_from_the_log);

/// A byte flipped in the position of an index entry would send the read of
/// that offset elsewhere: recovery must notice and rebuild from the log.
async fn a_damaged_index_file_is_rebuilt_from_the_log<S: Storage + Damage>(storage: S, config: LogConfig) {
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    append_all(&log, 1, 0..120).await;
    append_all(&log, 2, 0..50).await;
    log.close().await.expect("close writes the index files");
    drop(log);
    let index_file = index::index_path(&config.dir.join(INDEX_DIR), 1);
    let damaged_offset = 37;
    storage.flip_byte(&index_file, damaged_offset * index::INDEX_FILE_ENTRY_SIZE_BYTES as u64 + 2);
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("recover with a damaged index");
    assert_queue(&log, 1, 120).await;
    assert_queue(&log, 2, 50).await;
    append_all(&log, 1, 120..150).await;
    log.close().await.expect("close");
    drop(log);
    let log = CommitLog::open(storage, config).await.expect("reopen with the rewritten index");
    assert_queue(&log, 1, 150).await;
    assert_queue(&log, 2, 50).await;
}

on_every_backend!(
    a_queue_larger_than_the_index_cache_reads_back_whole,
    index_memory_stays_under_its_bound,
    a_rebuild_from_the_whole_log_holds_few_entries_in_memory,
    a_rebuild_of_more_queues_than_its_writes_in_flight_reads_back_whole
);

/// Without a checkpoint recovery rebuilds every queue's index from the whole
/// log: the entries go to the index files as the scan passes the wake
/// threshold, so memory does not grow with the retained log. (Where `open`
/// yields to the checkpointer before it returns, as on the memory disk, the
/// checkpointer may have written them too: the real-file case is the one
/// that tells.)
async fn a_rebuild_from_the_whole_log_holds_few_entries_in_memory<S: Storage>(storage: S, config: LogConfig) {
    let config = small_index(config);
    let wake = config.index_unwritten_entries_wake as usize;
    let count = 400;
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    for queue_id in 0..3 {
        append_burst(&log, queue_id, 0..count).await;
    }
    log.close().await.expect("close");
    storage.remove(&config.dir.join(super::checkpoint::CHECKPOINT_FILE)).await.expect("remove the checkpoint");
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("rebuild");
    let memory = log.index_memory();
    assert!(memory.unwritten_entries < wake, "the rebuild kept {} entries in memory", memory.unwritten_entries);
    for queue_id in 0..3 {
        assert_queue(&log, queue_id, count).await;
        assert_backwards(&log, queue_id, count).await;
    }
    log.close().await.expect("close");
    let log = CommitLog::open(storage, config).await.expect("reopen from the checkpoint after the rebuild");
    for queue_id in 0..3 {
        assert_queue(&log, queue_id, count).await;
    }
}

/// Checkpoints and a rebuild's spill write and sync many queues' index files
/// at once (`index_writes`): with more queues than their windows hold,
/// interleaved, every queue reads back whole from the checkpoint, after
/// the rebuild, and from the checkpoint after it.
async fn a_rebuild_of_more_queues_than_its_writes_in_flight_reads_back_whole<S: Storage>(
    storage: S,
    config: LogConfig,
) {
    let config = small_index(config);
    let (queues, count) = (40, 12);
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    for sequence in 0..count {
        for queue_id in 0..queues {
            append_burst(&log, queue_id, sequence..sequence + 1).await;
        }
    }
    log.close().await.expect("close");
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("reopen from the checkpoint");
    for queue_id in 0..queues {
        assert_queue(&log, queue_id, count).await;
    }
    log.close().await.expect("close");
    storage.remove(&config.dir.join(super::checkpoint::CHECKPOINT_FILE)).await.expect("remove the checkpoint");
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("rebuild");
    for queue_id in 0..queues {
        assert_queue(&log, queue_id, count).await;
    }
    log.close().await.expect("close");
    let log = CommitLog::open(storage, config).await.expect("reopen from the checkpoint after the rebuild");
    for queue_id in 0..queues {
        assert_queue(&log, queue_id, count).await;
    }
}

/// A cache of two pages, and the checkpointer woken after a few entries.
fn small_index(config: LogConfig) -> LogConfig {
    LogConfig { index_cache_bytes: crate::constants::INDEX_CACHE_BYTES_MIN, index_unwritten_entries_wake: 64, ..config }
}

/// Places records `sequences` of `queue_id` and waits for them together.
async fn append_burst<S: Storage>(log: &CommitLog<S>, queue_id: u32, sequences: std::ops::Range<u64>) {
    let mut end = 0;
    for sequence in sequences {
        let message = message(queue_id, sequence);
        let appended = log.append_buffered(request(queue_id, &message)).await.expect("append");
        assert_eq!(appended.queue_offset, Some(sequence));
        end = appended.end;
    }
    log.wait_acknowledgeable(end).await.expect("durable");
}

/// Reads single records from the last offset down, so every page is a miss.
async fn assert_backwards<S: Storage>(log: &CommitLog<S>, queue_id: u32, count: u64) {
    for offset in (0..count).rev().step_by(97) {
        let batch = log.read(queue_id, offset, 1, 1 << 20).await.expect("read");
        assert_eq!(batch.records[0].message(), message(queue_id, offset), "queue {queue_id} offset {offset}");
    }
}

async fn a_queue_larger_than_the_index_cache_reads_back_whole<S: Storage>(storage: S, config: LogConfig) {
    let config = small_index(config);
    let count = 3 * index::INDEX_PAGE_ENTRIES + 17;
    let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
    for queue_id in 0..2 {
        append_burst(&log, queue_id, 0..count).await;
    }
    log.checkpoint().await.expect("checkpoint");
    assert_eq!(log.index_memory().unwritten_entries, 0, "every entry is in the index files");
    for queue_id in 0..2 {
        assert_queue(&log, queue_id, count).await;
        assert_backwards(&log, queue_id, count).await;
    }
    assert!(log.index_memory().cache_stats.loads > 4, "the entries came from the index files");
    assert_eq!(
        log.position_of(1, count - 1).await.expect("lookup"),
        Some(log.read(1, count - 1, 1, 1 << 20).await.expect("read").records[0].position)
    );
    log.close().await.expect("close");
    let log = CommitLog::open(storage, config).await.expect("reopen");
    for queue_id in 0..2 {
        assert_queue(&log, queue_id, count).await;
        assert_backwards(&log, queue_id, count).await;
    }
}

/// Waits (a few seconds at most) until the entries not yet in the index
/// files are fewer than `limit`: the checkpointer, woken early, wrote them.
async fn wait_for_index_files<S: Storage>(log: &CommitLog<S>, limit: usize) -> IndexMemory {
    for _ in 0..500 {
        let memory = log.index_memory();
        if memory.unwritten_entries < limit {
            return memory;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    panic!("the checkpointer was not woken: {:?}", log.index_memory());
}

async fn index_memory_stays_under_its_bound<S: Storage>(storage: S, config: LogConfig) {
    let config = small_index(config);
    let wake = config.index_unwritten_entries_wake as usize;
    let log = CommitLog::open(storage, config.clone()).await.expect("open");
    let (queues, burst) = (3, 50);
    // What stays once the checkpointer caught up: the cache, fewer than
    // `wake` unwritten entries (in deques at most four times that long),
    // and each queue's own fields.
    let bound = config.index_cache_bytes
        + 4 * wake * std::mem::size_of::<index::Slot>()
        + queues * std::mem::size_of::<index::QueueIndex>();
    let rounds = 2 * index::INDEX_PAGE_ENTRIES / burst;
    for round in 0..rounds {
        for queue_id in 0..queues as u32 {
            append_burst(&log, queue_id, round * burst..(round + 1) * burst).await;
        }
        if round % 5 == 4 {
            // The interval is an hour: only the backlog can wake the checkpointer.
            let memory = wait_for_index_files(&log, wake).await;
            assert!(memory.total_bytes() <= bound, "round {round}: {memory:?} holds more than {bound} bytes");
        }
    }
    let count = rounds * burst;
    for queue_id in 0..queues as u32 {
        assert_queue(&log, queue_id, count).await;
        assert_backwards(&log, queue_id, count).await;
        let memory = log.index_memory();
        assert!(memory.cache_bytes <= config.index_cache_bytes, "{memory:?}");
    }
    let memory = wait_for_index_files(&log, wake).await;
    assert!(memory.total_bytes() <= bound, "{memory:?} holds more than {bound} bytes");
    log.close().await.expect("close");
}

/// A damaged index page fails the reads that need it, with `Corrupt`; every
/// other offset still reads.
#[test]
fn a_damaged_index_page_fails_only_its_reads() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_index(config("/memory".as_ref()));
        let count = 3 * index::INDEX_PAGE_ENTRIES;
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        append_burst(&log, 4, 0..count).await;
        log.close().await.expect("close");
        let damaged = index::INDEX_PAGE_ENTRIES + 9;
        let path = index::index_path(&config.dir.join(INDEX_DIR), 4);
        let byte = damaged * index::INDEX_FILE_ENTRY_SIZE_BYTES as u64 + 2;
        storage.flip_bit(&path, byte, 3).expect("flip");
        let log = CommitLog::open(storage, config).await.expect("the first and last pages are sound");
        match log.read(4, damaged, 1, 1 << 20).await {
            Err(LogError::Corrupt { detail, .. }) => assert!(detail.contains(&format!("offset {damaged}")), "{detail}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        let mut offset = 0;
        while offset < damaged {
            let batch = log.read(4, offset, 50, 1 << 20).await.expect("a batch ending before the damaged page");
            for record in &batch.records {
                assert_eq!(record.message(), message(4, record.queue_offset));
            }
            offset = batch.next_offset;
            if offset % index::INDEX_PAGE_ENTRIES == 0 {
                break;
            }
        }
        assert_eq!(offset, index::INDEX_PAGE_ENTRIES, "the batch before the damaged page stops at its start");
        let last = log.read(4, count - 1, 1, 1 << 20).await.expect("a sound page");
        assert_eq!(last.records[0].message(), message(4, count - 1));
    });
}

#[test]
fn the_first_offset_stored_at_a_time_is_found_by_its_index_timestamp() {
    run(async {
        let log = CommitLog::open(MemoryStorage::new(), LogConfig::new("/memory")).await.expect("open");
        let mut stamps = Vec::new();
        for sequence in 0..40u64 {
            let message = message(7, sequence);
            let appended = log.append(request(7, &message)).await.expect("append");
            stamps.push(appended.store_timestamp_us);
            if sequence % 8 == 0 {
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
        }
        let expected = |time: u64| stamps.iter().position(|stamp| *stamp >= time).unwrap_or(stamps.len()) as u64;
        for stamp in stamps.clone() {
            for time in [stamp, stamp + 1, stamp.saturating_sub(1)] {
                assert_eq!(log.first_offset_stored_at(7, time).await.expect("search"), expected(time), "time {time}");
            }
        }
        assert_eq!(log.first_offset_stored_at(7, 0).await.expect("search"), 0);
        assert_eq!(log.first_offset_stored_at(7, u64::MAX).await.expect("search"), 40, "none after: the end");
        assert_eq!(log.first_offset_stored_at(8, 0).await.expect("search"), 0, "an empty queue");
        let (segments, bytes) = log.disk_usage();
        assert!(segments >= 1 && bytes >= u64::from(segments), "{segments} segments, {bytes} bytes");
        log.close().await.expect("close");
    });
}

/// Buffers come back from the recent cache holding their old records and are
/// not zeroed again: a write from such a buffer still carries zeros after
/// its last record, as recovery's count of zero sectors expects.
#[test]
fn a_reused_buffer_writes_zeros_after_its_records() {
    run(async {
        let temp = tempfile::tempdir().expect("temp dir");
        let config = config(temp.path());
        let log = CommitLog::open(DmaStorage, config.clone()).await.expect("open");
        let old = vec![0xA5; 3000];
        // One write per append: more than the recent cache holds, so its
        // oldest buffers go back to the pool with these bytes in them.
        let writes = 2 * config.recent_buffers_bytes / config.buffer_capacity_bytes + 4;
        for _ in 0..writes {
            log.append(request(1, &old)).await.expect("append");
        }
        let small = log.append(request(1, b"small")).await.expect("append");
        log.close().await.expect("close");
        let segment = std::fs::read(temp.path().join(SEGMENTS_DIR).join(format!("{:020}.log", 0))).expect("segment");
        let block = crate::constants::BLOCK_SIZE_BYTES as u64;
        assert!(small.end < config.segment_size_bytes, "the test stays in the first segment");
        let after = &segment[small.end as usize..small.end.div_ceil(block) as usize * block as usize];
        assert!(after.iter().all(|byte| *byte == 0), "old bytes after the last record: {:?}", &after[..16]);
        let log = CommitLog::open(DmaStorage, config).await.expect("reopen");
        assert_eq!(log.visible_end_offset(1), writes as u64 + 1);
        log.close().await.expect("close");
    });
}

/// A checkpoint writes a queue's index entries a bounded write at a time;
/// more entries than one write holds read back whole from the index file
/// after a restart.
#[test]
fn an_index_larger_than_one_write_reads_back_from_its_file() {
    run(async {
        let storage = MemoryStorage::new();
        let config = LogConfig { checkpoint_interval: Duration::from_secs(3600), ..LogConfig::new("/memory") };
        let count = 2 * index::INDEX_ENTRIES_PER_WRITE as u64 + 1000;
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open");
        append_burst(&log, 7, 0..count).await;
        log.close().await.expect("close: one checkpoint with every entry");
        // Each entry at its own offset's slot (a read would not tell: a
        // damaged index file is rebuilt from the log).
        let path = index::index_path(&config.dir.join(INDEX_DIR), 7);
        let file = storage.read_file(&path).await.expect("read").expect("an index file");
        let mut last_position = None;
        for offset in 0..count {
            let slot = &file[offset as usize * index::INDEX_FILE_ENTRY_SIZE_BYTES..];
            let entry = index::IndexEntry::decode_checked(offset, slot).unwrap_or_else(|| panic!("offset {offset}"));
            assert!(last_position < Some(entry.position), "offset {offset}");
            last_position = Some(entry.position);
        }
        let log = CommitLog::open(storage, config).await.expect("reopen");
        assert_queue(&log, 7, count).await;
        assert_backwards(&log, 7, count).await;
        log.close().await.expect("close");
    });
}
