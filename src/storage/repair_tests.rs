//! `repair` brings back every valid record after damage and marks each lost
//! offset with a tombstone: nothing renumbered, the log opens again.

use super::backend::{MemoryStorage, Storage};
use super::recovery_tests::{
    expect_refused, fill, message, position_of, segment_files, segment_holding, small_config, QUEUES,
};
use super::tests::run;
use super::*;
use crate::constants::BLOCK_SIZE_BYTES;

/// Every record of every queue reads back except `lost`, which the reader
/// reports as lost; the queue ends where it did.
async fn assert_all_but<S: Storage>(log: &CommitLog<S>, count: u64, lost: &[(u32, u64)]) {
    for queue_id in 0..QUEUES {
        assert_eq!(log.visible_end_offset(queue_id), count, "queue {queue_id} was renumbered");
        let mut offset = 0;
        while offset < count {
            let batch = log.read(queue_id, offset, 64, 1 << 20).await.expect("read after repair");
            for record in &batch.records {
                assert_eq!(record.message(), message(queue_id, record.queue_offset), "queue {queue_id}");
                assert!(!lost.contains(&(queue_id, record.queue_offset)), "a damaged record came back");
            }
            for skipped in &batch.lost_offsets {
                assert!(lost.contains(&(queue_id, *skipped)), "offset {queue_id}/{skipped} reported lost");
            }
            assert_eq!(batch.records.len() + batch.lost_offsets.len(), (batch.next_offset - offset) as usize);
            offset = batch.next_offset;
        }
    }
}

#[test]
fn a_flipped_byte_costs_one_record_and_every_later_one_comes_back() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/repair-flip");
        fill(&storage, &config, 300).await;
        let position = position_of(&storage, &config, 2, 120).await;
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, position);
        storage.flip_bit(&path, offset + 90, 5).expect("flip");
        expect_refused(&storage, &config, position).await;

        let repaired = repair(&storage, &config).await.expect("repair");
        assert_eq!(repaired.len(), 1, "{repaired:?}");
        assert_eq!((repaired[0].position, repaired[0].records_lost), (position, 1));
        let copy = storage.read_file(&repaired[0].copy).await.expect("read the copy").expect("a copy is kept");
        assert_eq!(copy.len() as u64, repaired[0].bytes);

        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("opens after repair");
        assert_all_but(&log, 300, &[(2, 120)]).await;
        let body = message(2, 300);
        let appended = log
            .append(AppendRequest { queue_id: 2, indexed: true, message: &body, ..Default::default() })
            .await
            .expect("append after repair");
        assert_eq!(appended.queue_offset, Some(300));
    });
}

#[test]
fn a_zeroed_block_becomes_tombstones_for_every_offset_it_held() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/repair-zero");
        fill(&storage, &config, 300).await;
        let position = position_of(&storage, &config, 1, 100).await;
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, position);
        let block = offset / BLOCK_SIZE_BYTES as u64 * BLOCK_SIZE_BYTES as u64;
        storage.overwrite(&path, block, &[0; BLOCK_SIZE_BYTES]).expect("zero a block");
        expect_refused(&storage, &config, position + BLOCK_SIZE_BYTES as u64).await;

        let repaired = repair(&storage, &config).await.expect("repair");
        let lost: u64 = repaired.iter().map(|range| range.records_lost).sum();
        assert!(lost >= 1, "{repaired:?}");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("opens after repair");
        let mut missing = Vec::new();
        for queue_id in 0..QUEUES {
            let mut offset = 0;
            while offset < 300 {
                let batch = log.read(queue_id, offset, 64, 1 << 20).await.expect("read");
                missing.extend(batch.lost_offsets.iter().map(|lost| (queue_id, *lost)));
                offset = batch.next_offset;
            }
        }
        assert_eq!(missing.len() as u64, lost, "tombstones read back as lost offsets");
        assert_all_but(&log, 300, &missing).await;
    });
}

#[test]
fn a_damaged_last_record_is_cut_with_its_offset_kept() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/repair-last");
        fill(&storage, &config, 100).await;
        let (queue_id, last) = {
            let mut positions = Vec::new();
            for queue_id in 0..QUEUES {
                positions.push((position_of(&storage, &config, queue_id, 99).await, queue_id));
            }
            let (position, queue_id) = positions.into_iter().max().expect("positions");
            (queue_id, position)
        };
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, last);
        storage.flip_bit(&path, offset + 70, 1).expect("flip");
        expect_refused(&storage, &config, last).await;
        let repaired = repair(&storage, &config).await.expect("repair");
        assert_eq!(repaired.iter().map(|range| range.records_lost).sum::<u64>(), 1, "{repaired:?}");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("opens after repair");
        assert_all_but(&log, 100, &[(queue_id, 99)]).await;
    });
}

#[test]
fn an_undamaged_log_is_left_alone() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/repair-none");
        fill(&storage, &config, 100).await;
        let writes = storage.writes().len();
        assert!(repair(&storage, &config).await.expect("repair").is_empty());
        assert_eq!(storage.writes().len(), writes, "repair wrote to a healthy log");
    });
}

#[test]
fn a_queue_whose_last_record_is_damaged_keeps_its_offsets_when_other_queues_follow() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/repair-trailing");
        fill(&storage, &config, 100).await;
        let mut lasts = Vec::new();
        for queue_id in 0..QUEUES {
            lasts.push((position_of(&storage, &config, queue_id, 99).await, queue_id));
        }
        let (position, queue_id) = lasts.into_iter().min().expect("positions");
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, position);
        storage.flip_bit(&path, offset + 77, 2).expect("flip");
        let repaired = repair(&storage, &config).await.expect("repair");
        assert_eq!(repaired.iter().map(|range| range.records_lost).sum::<u64>(), 1, "{repaired:?}");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("opens after repair");
        assert_all_but(&log, 100, &[(queue_id, 99)]).await;
        assert!(repair(&storage, &config).await.expect("repair again").is_empty(), "repair is idempotent");
    });
}

#[test]
fn a_damaged_last_record_of_a_segment_gets_one_tombstone_when_its_queue_goes_on() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/repair-segment-end");
        let flushed = fill(&storage, &config, 300).await;
        assert!(flushed > 2 * config.segment_size_bytes, "the test must span segments");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("open to look");
        let mut last_in_first = (0, 0, 0);
        for queue_id in 0..QUEUES {
            let batch = log.read(queue_id, 0, 300, 1 << 24).await.expect("read");
            for record in batch.records.iter().filter(|record| record.position < config.segment_size_bytes) {
                last_in_first = last_in_first.max((record.position, queue_id, record.queue_offset));
            }
        }
        drop(log);
        let (position, queue_id, queue_offset) = last_in_first;
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, position);
        storage.flip_bit(&path, offset + 60, 0).expect("flip");
        let repaired = repair(&storage, &config).await.expect("repair");
        assert_eq!(repaired.iter().map(|range| range.records_lost).sum::<u64>(), 1, "{repaired:?}");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("opens after repair");
        assert_all_but(&log, 300, &[(queue_id, queue_offset)]).await;
    });
}

/// A queue's first record damaged: no record before it names the offsets
/// lost, but without retention every queue starts at 0, so they become
/// tombstones too and the queue still starts at 0.
#[test]
fn a_damaged_first_record_of_a_queue_becomes_a_tombstone_at_offset_zero() {
    run(async {
        let storage = MemoryStorage::new();
        let config = small_config("/repair-first");
        fill(&storage, &config, 100).await;
        let position = position_of(&storage, &config, 1, 0).await;
        let (path, offset) = segment_holding(&segment_files(&storage, &config).await, position);
        storage.flip_bit(&path, offset + 70, 3).expect("flip");
        expect_refused(&storage, &config, position).await;
        let repaired = repair(&storage, &config).await.expect("repair");
        assert_eq!(repaired.iter().map(|range| range.records_lost).sum::<u64>(), 1, "{repaired:?}");
        let log = CommitLog::open(storage.clone(), config.clone()).await.expect("opens after repair");
        assert_eq!(log.base_offset(1), 0, "the queue still starts at 0");
        assert_all_but(&log, 100, &[(1, 0)]).await;
    });
}
