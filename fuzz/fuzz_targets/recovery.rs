//! Arbitrary bytes as a segment file (first input byte even) or as a
//! queue's index file next to a valid log (odd), opened by recovery over
//! memory files, every queue read back. Never a panic; every record read
//! back is a valid record (CRC) whose bytes lie verbatim in the segment at
//! the position it was read from: nothing invented.
//!
//! `cargo +nightly fuzz run recovery` in `fuzz/`.

#![no_main]

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use libfuzzer_sys::fuzz_target;
use ringmq::storage::backend::{MemoryStorage, Storage};
use ringmq::storage::record::{self, Decoded};
use ringmq::storage::{AppendRequest, Checkpoint, CommitLog, LogConfig};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DIR: &str = "/fuzz";
/// The layout `ringmq::storage` documents for a log directory.
const SEGMENT: &str = "/fuzz/segments/00000000000000000000.log";
const CHECKPOINT: &str = "/fuzz/checkpoint";
const BLOCK_BYTES: usize = 4096;
const SEGMENT_MIN_BYTES: usize = 64 * 1024;
/// Room for every write of the template log in its first segment.
const TEMPLATE_SEGMENT_BYTES: u64 = 128 * 1024;
const INPUT_MAX_BYTES: usize = 1024 * 1024;
const INDEX_ENTRY_BYTES: usize = 24;
/// Reads per queue, so a huge claimed offset range stays quick.
const READS_MAX: u64 = 4096;

thread_local! {
    static EXECUTOR: LocalExecutor =
        LocalExecutorBuilder::new(Placement::Unbound).make().expect("a glommio executor");
    static TEMPLATE: RefCell<Option<Template>> = const { RefCell::new(None) };
}

/// `RINGMQ_FUZZ_ONLY=segment` (or `index`) feeds every input to one case,
/// e.g. to explore one past a crash the other keeps hitting.
fn forced_mode() -> Option<u8> {
    static FORCED: std::sync::OnceLock<Option<u8>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| match std::env::var("RINGMQ_FUZZ_ONLY").as_deref() {
        Ok("segment") => Some(0),
        Ok("index") => Some(1),
        _ => None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, input)) = data.split_first() else { return };
    let mode = forced_mode().unwrap_or(*mode);
    let input = &input[..input.len().min(INPUT_MAX_BYTES)];
    EXECUTOR.with(|executor| {
        executor.run(async {
            if mode % 2 == 0 {
                segment_case(input).await
            } else {
                index_case(input).await
            }
            // The dropped log's tasks are cancelled; let the executor free them.
            for _ in 0..4 {
                glommio::executor().yield_now().await;
            }
        })
    });
});

fn config(segment_size_bytes: u64) -> LogConfig {
    LogConfig {
        segment_size_bytes,
        buffer_capacity_bytes: 16 * 1024,
        recent_buffers_bytes: 16 * 1024,
        checkpoint_interval: Duration::from_secs(3600),
        ..LogConfig::new(DIR)
    }
}

/// The input as a preallocated segment: padded with zeros to whole blocks,
/// at least the smallest segment.
fn as_segment(input: &[u8]) -> Vec<u8> {
    let size = input.len().div_ceil(BLOCK_BYTES).max(1) * BLOCK_BYTES;
    let mut segment = input.to_vec();
    segment.resize(size.max(SEGMENT_MIN_BYTES), 0);
    segment
}

async fn segment_case(input: &[u8]) {
    let segment = as_segment(input);
    let storage = MemoryStorage::new();
    storage.write_file_atomic(Path::new(SEGMENT), &segment).await.expect("write the segment");
    let Ok(log) = CommitLog::open(storage, config(segment.len() as u64)).await else { return };
    read_everything(&log, &segment, queues_in(&segment)).await;
}

/// Queue ids of every valid record anywhere in the segment: the only
/// queues recovery can find in it.
fn queues_in(segment: &[u8]) -> BTreeSet<u32> {
    let mut queues = BTreeSet::new();
    for offset in (0..segment.len()).step_by(8) {
        let bytes = &segment[offset..];
        let Some(length) = record::claimed_length(bytes) else { continue };
        if let Decoded::Valid(header) = record::decode(&bytes[..length.min(bytes.len())]) {
            queues.insert(header.queue_id);
        }
    }
    queues
}

/// Reads every visible offset of every queue; whatever comes back must be a
/// valid record lying verbatim at its position in the segment.
async fn read_everything(log: &CommitLog<MemoryStorage>, segment: &[u8], queues: BTreeSet<u32>) {
    for queue_id in queues {
        let base = log.base_offset(queue_id);
        let end = log.visible_end_offset(queue_id).min(base.saturating_add(READS_MAX));
        for offset in base..end {
            let Ok(batch) = log.read(queue_id, offset, 1, 1 << 20).await else { continue };
            for stored in &batch.records {
                let at = usize::try_from(stored.position).expect("a position inside the segment");
                let on_disk = segment.get(at..at + stored.bytes.len());
                assert_eq!(on_disk, Some(&stored.bytes[..]), "record {queue_id}/{offset} is not the segment's bytes");
                assert!(matches!(record::decode(&stored.bytes), Decoded::Valid(_)), "an invalid record was served");
            }
        }
    }
}

/// A small valid log: its segment, checkpoint and index files.
struct Template {
    files: Vec<(PathBuf, Vec<u8>)>,
    segment: Vec<u8>,
    checkpoint: Checkpoint,
}

async fn template() -> Template {
    let storage = MemoryStorage::new();
    let log = CommitLog::open(storage.clone(), config(TEMPLATE_SEGMENT_BYTES)).await.expect("open the template log");
    let mut rng = fastrand::Rng::with_seed(1);
    // Ten records per write, so the template fits a small segment.
    for sequence in 0..90u32 {
        let mut message = vec![0; rng.usize(1..400)];
        rng.fill(&mut message);
        let request = AppendRequest { queue_id: sequence % 3, indexed: true, message: &message, ..Default::default() };
        let placed = log.append_buffered(request).await.expect("append to the template log");
        if sequence % 10 == 9 {
            log.wait_acknowledgeable(placed.end).await.expect("the template log is durable");
        }
        if sequence == 59 {
            log.checkpoint().await.expect("checkpoint the template log");
        }
    }
    drop(log);
    let mut files = Vec::new();
    for dir in ["segments", "index"] {
        for path in storage.list(&Path::new(DIR).join(dir)).await.expect("list") {
            let bytes = storage.read_file(&path).await.expect("read").expect("a listed file exists");
            files.push((path, bytes));
        }
    }
    let checkpoint_bytes = storage.read_file(Path::new(CHECKPOINT)).await.expect("read").expect("a checkpoint");
    let checkpoint = Checkpoint::decode(&checkpoint_bytes).expect("a valid checkpoint");
    let segment = files.iter().find(|(path, _)| path == Path::new(SEGMENT)).expect("segment 0").1.clone();
    Template { files, segment, checkpoint }
}

async fn index_case(input: &[u8]) {
    if TEMPLATE.with(|template| template.borrow().is_none()) {
        let built = template().await;
        TEMPLATE.with(|template| *template.borrow_mut() = Some(built));
    }
    let (files, segment, mut checkpoint) = TEMPLATE.with(|template| {
        let template = template.borrow();
        let template = template.as_ref().expect("built above");
        (template.files.clone(), template.segment.clone(), template.checkpoint.clone())
    });
    let storage = MemoryStorage::new();
    for (path, bytes) in &files {
        storage.write_file_atomic(path, bytes).await.expect("copy the template");
    }
    // The input is queue 0's index file, holding as many entries as fit.
    let queue = checkpoint.queues.first_mut().expect("the template checkpoint names queues");
    let queue_id = queue.queue_id;
    queue.next_offset = queue.base_offset + (input.len() / INDEX_ENTRY_BYTES) as u64;
    let index = Path::new(DIR).join("index").join(format!("{queue_id:010}.idx"));
    storage.write_file_atomic(&index, input).await.expect("write the index");
    storage.write_file_atomic(Path::new(CHECKPOINT), &checkpoint.encode()).await.expect("write the checkpoint");
    let Ok(log) = CommitLog::open(storage, config(TEMPLATE_SEGMENT_BYTES)).await else { return };
    let mut queues = queues_in(&segment);
    queues.extend(checkpoint.queues.iter().map(|queue| queue.queue_id));
    read_everything(&log, &segment, queues).await;
}
