//! The producer table on disk and back. The table lives in the log (every
//! stored message carries its producer id and sequence); a snapshot only
//! shortens the replay at start-up. A snapshot holds what was durable at
//! one log position `covered` and, per queue, the first offset it does not
//! hold; start-up reads each queue from there.
//!
//! Layout (little-endian): magic, version, covered, queue count, then
//! (queue id u32, offset u64) per queue, window count, then per window
//! (producer id u64, queue id u32, next sequence u64, last stored ms u64,
//! send count u32, sends of 4 x u64), and a CRC32 of everything before it.

use super::dedup::{ProducerTable, QueueWindow, StoredSend, SEQUENCES_REMEMBERED};
use super::offsets::DELAY_QUEUE_ID;
use super::replay::{replay_messages, replay_messages_once};
use super::snapshot_file::{self, Reader};
use super::timer_records;
use crate::storage::backend::Storage;
use crate::storage::{CommitLog, LogError, StoredRecord};
use crate::wire::VerifiedMessage;
use futures_util::StreamExt;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

pub const DEDUP_SNAPSHOT_FILE: &str = "producers.snapshot";
const MAGIC: &[u8; 8] = b"RMQPROD1";

/// A decoded snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Log position everything in the snapshot was durable at.
    pub covered: u64,
    /// Per queue id, the first offset the snapshot does not hold.
    pub queue_offsets: HashMap<u32, u64>,
    pub windows: Vec<(u64, u32, QueueWindow)>,
}

/// The snapshot of `table` as of the durable position `covered`: only sends
/// that end at or below it, since a crash keeps no more of the log.
/// `queue_offsets` gives each queue's first offset not durable at `covered`.
/// (The shard writes it with `encode_in_steps`.)
#[cfg(test)]
pub fn encode(table: &ProducerTable, covered: u64, queue_offsets: &HashMap<u32, u64>) -> Vec<u8> {
    let held = table.windows().map(|(_, _, window)| held_bytes(window)).sum();
    let mut out = Encoder::start(covered, queue_offsets, held);
    for (producer_id, queue_id, window) in table.windows() {
        out.put_window(producer_id, queue_id, window);
    }
    out.seal()
}

/// Windows encoded between two chances for the shard's other tasks to run.
const WINDOWS_PER_STEP: usize = 512;

/// `encode`, a few windows at a time, letting the shard's other tasks run
/// in between: with thousands of queues the table holds tens of thousands
/// of windows (50 MB at 4 producers x 10,000 queues), and one synchronous
/// encode held every append and answer of the shard for 80-100 ms.
///
/// The windows to write are listed in the same synchronous step as the
/// caller reads `covered`: every send that ends at or below it was stored
/// (noted in the table) before, so its window is on the list. What the
/// table gains meanwhile ends past `covered` and is left out as in
/// `encode`; windows go only by idle expiry, which runs in the caller's
/// task, not meanwhile.
pub async fn encode_in_steps(
    table: &RefCell<ProducerTable>,
    covered: u64,
    queue_offsets: &HashMap<u32, u64>,
) -> Vec<u8> {
    let mut held = 0;
    let listed: Vec<(u64, u32)> = table
        .borrow()
        .windows()
        .map(|(producer_id, queue_id, window)| {
            held += held_bytes(window);
            (producer_id, queue_id)
        })
        .collect();
    let mut out = Encoder::start(covered, queue_offsets, held);
    for step in listed.chunks(WINDOWS_PER_STEP) {
        {
            let table = table.borrow();
            for &(producer_id, queue_id) in step {
                if let Some(window) = table.window(producer_id, queue_id) {
                    out.put_window(producer_id, queue_id, window);
                }
            }
        }
        futures_lite::future::yield_now().await;
    }
    out.seal()
}

/// A snapshot being written: the window count is patched in at the end.
struct Encoder {
    out: Vec<u8>,
    covered: u64,
    count_at: usize,
    windows: u64,
}

/// Bytes of a window before its sends, and of one send.
const WINDOW_HEAD_BYTES: usize = 8 + 4 + 8 + 8 + 4;
const SEND_BYTES: usize = 4 * 8;

/// At most what `window` takes in a snapshot (every send it holds).
fn held_bytes(window: &QueueWindow) -> usize {
    WINDOW_HEAD_BYTES + window.recent.len() * SEND_BYTES
}

impl Encoder {
    /// With room for `held` bytes of windows (`held_bytes`) up front: a
    /// snapshot of tens of MB grown by doubling copied itself several times
    /// over, each copy a pause for the shard.
    fn start(covered: u64, queue_offsets: &HashMap<u32, u64>, held: usize) -> Self {
        let expected = 64 + queue_offsets.len() * 12 + held;
        let mut out = snapshot_file::start(MAGIC, expected);
        out.extend_from_slice(&covered.to_le_bytes());
        out.extend_from_slice(&(queue_offsets.len() as u64).to_le_bytes());
        for (queue_id, offset) in queue_offsets {
            out.extend_from_slice(&queue_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        let count_at = out.len();
        out.extend_from_slice(&0u64.to_le_bytes());
        Self { out, covered, count_at, windows: 0 }
    }

    /// The part of `window` a crash at `covered` keeps: the sends that end
    /// at or below it, the last `SEQUENCES_REMEMBERED` of them (the table
    /// forgets older durable ones; a burst that was not durable yet when
    /// it was stored can leave more in the window); the next expected
    /// sequence is the first one above it.
    fn put_window(&mut self, producer_id: u64, queue_id: u32, window: &QueueWindow) {
        let durable = window.recent.partition_point(|send| send.end <= self.covered);
        let kept_from = durable.saturating_sub(SEQUENCES_REMEMBERED);
        let next_sequence = window.recent.get(durable).map_or(window.next_sequence, |send| send.sequence);
        let out = &mut self.out;
        out.extend_from_slice(&producer_id.to_le_bytes());
        out.extend_from_slice(&queue_id.to_le_bytes());
        out.extend_from_slice(&next_sequence.to_le_bytes());
        out.extend_from_slice(&window.last_stored_ms.to_le_bytes());
        out.extend_from_slice(&((durable - kept_from) as u32).to_le_bytes());
        for send in window.recent.range(kept_from..durable) {
            for value in [send.sequence, send.offset, send.store_timestamp_us, send.end] {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        self.windows += 1;
    }

    fn seal(mut self) -> Vec<u8> {
        self.out[self.count_at..self.count_at + 8].copy_from_slice(&self.windows.to_le_bytes());
        snapshot_file::seal(self.out)
    }
}

/// The producer snapshot's average write rate at most, in bytes a second.
/// It holds up to `SEQUENCES_REMEMBERED` sends per producer and queue: 50
/// MB per shard at 4 producers x 10,000 queues. Rewritten whole every
/// checkpoint interval, it took 25 MB/s of the disk and 70 ms of the
/// shard's CPU every 2 s, and publish p99.9 went from 11 to 60-80 ms
/// (docs/PERFORMANCE.md). A snapshot that large is written less often: the
/// start-up replays more of the log instead.
const PRODUCERS_SNAPSHOT_BYTES_PER_SECOND: u64 = 8 << 20;

/// When the next producer snapshot is due: at every checkpoint interval,
/// or later once the last one was large (`PRODUCERS_SNAPSHOT_BYTES_PER_SECOND`).
#[derive(Default)]
pub struct Cadence {
    last: Option<(std::time::Instant, u64)>,
}

impl Cadence {
    pub fn is_due(&self) -> bool {
        self.last.is_none_or(|(at, bytes)| {
            at.elapsed()
                >= std::time::Duration::from_secs_f64(bytes as f64 / PRODUCERS_SNAPSHOT_BYTES_PER_SECOND as f64)
        })
    }

    pub fn written(&mut self, bytes: u64) {
        self.last = Some((std::time::Instant::now(), bytes));
    }
}

pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    let mut reader = Reader::open(bytes, MAGIC, "producer")?;
    let covered = reader.u64()?;
    let queues = reader.count_u64(12)?;
    let mut queue_offsets = HashMap::with_capacity(queues);
    for _ in 0..queues {
        let queue_id = reader.u32()?;
        queue_offsets.insert(queue_id, reader.u64()?);
    }
    let window_count = reader.count_u64(32)?;
    let mut windows = Vec::with_capacity(window_count);
    for _ in 0..window_count {
        let (producer_id, queue_id) = (reader.u64()?, reader.u32()?);
        let (next_sequence, last_stored_ms) = (reader.u64()?, reader.u64()?);
        let sends = reader.u32()? as usize;
        if sends > SEQUENCES_REMEMBERED {
            return Err(format!("a window of {sends} sends is larger than {SEQUENCES_REMEMBERED}"));
        }
        let mut recent = std::collections::VecDeque::with_capacity(sends);
        for _ in 0..sends {
            let (sequence, offset) = (reader.u64()?, reader.u64()?);
            let (store_timestamp_us, end) = (reader.u64()?, reader.u64()?);
            recent.push_back(StoredSend { sequence, offset, store_timestamp_us, end });
        }
        windows.push((producer_id, queue_id, QueueWindow { next_sequence, last_stored_ms, recent }));
    }
    reader.finish("window")?;
    Ok(Snapshot { covered, queue_offsets, windows })
}

/// The snapshot on disk, or an empty one (replay everything) when there is
/// none or it is damaged.
pub async fn load<S: Storage>(storage: &S, dir: &Path) -> Snapshot {
    let path = dir.join(DEDUP_SNAPSHOT_FILE);
    snapshot_file::load(storage, &path, "producer", decode).await.unwrap_or_default()
}

/// Queues whose first replay read is in flight at once. A queue holds few
/// records after the snapshot when there are many queues, and one queue
/// after another each start waited on the disk: 5,000 queues took 3-4 s of
/// a start (docs/PERFORMANCE.md).
const QUEUES_READ_AT_ONCE: usize = 16;

/// A queue's first replay read: up to this many records, about this many
/// bytes (the reads in flight hold at most `QUEUES_READ_AT_ONCE` times it).
const FIRST_READ_LIMITS: (usize, usize) = (256, 256 * 1024);

/// Rebuilds the producer table: the snapshot, then every stored message
/// of `queue_ids` after it, in each queue's order, queue after queue. The
/// first read of several queues is in flight at once; the sends they find
/// are applied in that same order.
pub async fn recover<S: Storage>(
    snapshot: Snapshot,
    log: &CommitLog<S>,
    queue_ids: &[u32],
    producers_max: usize,
) -> Result<ProducerTable, LogError> {
    let mut table = ProducerTable::new(producers_max);
    for (producer_id, queue_id, window) in snapshot.windows {
        table.restore(producer_id, queue_id, window);
    }
    let offsets = &snapshot.queue_offsets;
    let first_reads = futures_util::stream::iter(queue_ids)
        .map(|&queue_id| async move {
            let from = offsets.get(&queue_id).copied().unwrap_or(0);
            let mut sends = Vec::new();
            let rest = replay_messages_once(log, queue_id, from, FIRST_READ_LIMITS, |record, message| {
                sends.extend(replayed_send(queue_id, record, message));
            })
            .await?;
            Ok::<_, LogError>((queue_id, sends, rest))
        })
        .buffered(QUEUES_READ_AT_ONCE);
    futures_util::pin_mut!(first_reads);
    while let Some(first_read) = first_reads.next().await {
        let (queue_id, sends, rest) = first_read?;
        sends.into_iter().for_each(|send| apply_send(&mut table, send));
        if let Some(from) = rest {
            replay_messages(log, queue_id, from, |record, message| {
                if let Some(send) = replayed_send(queue_id, record, message) {
                    apply_send(&mut table, send);
                }
            })
            .await?;
        }
    }
    Ok(table)
}

/// A producer's send found by the replay: (producer id, queue id, sequence,
/// the send).
type ReplayedSend = (u64, u32, u64, StoredSend);

/// The send a stored message of `queue_id` stands for, if the producer
/// table keeps it.
fn replayed_send(queue_id: u32, record: &StoredRecord, message: &VerifiedMessage) -> Option<ReplayedSend> {
    // Halves are deduplicated by transaction id (`transactions`); a
    // committed one read here was never in the producer table. A record
    // read through a reference (a delivered delay or retry) was admitted
    // when its entry was stored (a delivery that is a copy, too): a
    // delayed message in `DELAY_QUEUE_ID`, under its target queue (its
    // header's tag hash).
    let delivered = timer_records::delivered_entry(record).is_some();
    if message.producer_id == 0 || message.is_half || record.via.is_some() || delivered {
        return None;
    }
    let queue_id = match queue_id {
        DELAY_QUEUE_ID => record.header.tag_hash,
        own => own,
    };
    let send = StoredSend {
        sequence: message.sequence,
        offset: record.queue_offset,
        store_timestamp_us: record.header.store_timestamp_us,
        end: record.position + u64::from(record.header.length),
    };
    Some((message.producer_id, queue_id, message.sequence, send))
}

fn apply_send(table: &mut ProducerTable, (producer_id, queue_id, sequence, send): ReplayedSend) {
    // A delayed message is replayed after its queue's later sends: its
    // sequence is behind, and known as an older one.
    if table.next_sequence(producer_id, queue_id) > sequence {
        return;
    }
    // Everything the replay reads is durable.
    table.stored(producer_id, queue_id, send, u64::MAX);
}

pub async fn write<S: Storage>(storage: &S, dir: &Path, bytes: &[u8]) -> Result<(), LogError> {
    snapshot_file::write(storage, &dir.join(DEDUP_SNAPSHOT_FILE), bytes, "write producer snapshot").await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::dedup::Admission;
    use crate::storage::backend::MemoryStorage;
    use crate::storage::{AppendRequest, LogConfig};
    use crate::wire::MessageDraft;

    /// Appends message `sequence` of `producer_id` to `queue_id`; returns
    /// its offset.
    async fn append(log: &CommitLog<MemoryStorage>, producer_id: u64, queue_id: u32, sequence: u64) -> u64 {
        let draft =
            MessageDraft { topic: "t", producer_id, sequence, msg_id: (producer_id, sequence), ..Default::default() };
        let message = draft.build();
        let request = AppendRequest { queue_id, indexed: true, message: &message, ..AppendRequest::default() };
        log.append(request).await.expect("append").queue_offset.expect("indexed")
    }

    /// The table as `recover` rebuilds it from `snapshot` and the log.
    async fn rebuilt(log: &CommitLog<MemoryStorage>, snapshot: &[u8]) -> ProducerTable {
        let snapshot = if snapshot.is_empty() { Snapshot::default() } else { decode(snapshot).expect("decode") };
        recover(snapshot, log, &[1, 2], 10).await.expect("recover")
    }

    #[test]
    fn the_table_comes_back_from_a_snapshot_and_the_messages_after_it() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async {
            let log = CommitLog::open(MemoryStorage::new(), LogConfig::new("/memory")).await.expect("open");
            let mut sends = Vec::new();
            for (producer_id, queue_id, sequence) in [(5, 1, 0), (5, 1, 1), (6, 2, 0), (5, 2, 0)] {
                let offset = append(&log, producer_id, queue_id, sequence).await;
                sends.push((producer_id, queue_id, sequence, offset));
            }
            // The snapshot: what the shard knew then, as of this position.
            let covered = log.positions().flushed;
            let queue_offsets = HashMap::from([(1, log.durable_end_offset(1)), (2, log.durable_end_offset(2))]);
            let mut at_snapshot = ProducerTable::new(10);
            for (producer_id, queue_id, sequence, offset) in &sends {
                let send = StoredSend { sequence: *sequence, offset: *offset, store_timestamp_us: 0, end: 0 };
                at_snapshot.stored(*producer_id, *queue_id, send, covered);
            }
            // A producer only the snapshot knows (its messages are gone from
            // the log, say to retention).
            at_snapshot.restore(9, 1, QueueWindow { next_sequence: 50, ..QueueWindow::default() });
            let snapshot = encode(&at_snapshot, covered, &queue_offsets);
            for (producer_id, queue_id, sequence) in [(5, 1, 2), (6, 2, 1), (7, 1, 0)] {
                let offset = append(&log, producer_id, queue_id, sequence).await;
                sends.push((producer_id, queue_id, sequence, offset));
            }
            let from_snapshot = rebuilt(&log, &snapshot).await;
            let from_log = rebuilt(&log, &[]).await;
            for table in [&from_snapshot, &from_log] {
                for (producer_id, queue_id, sequence, offset) in &sends {
                    match table.admit(*producer_id, *queue_id, *sequence, false) {
                        Admission::Duplicate(Some(send)) => assert_eq!(send.offset, *offset),
                        other => panic!("{producer_id}/{queue_id}/{sequence}: {other:?}"),
                    }
                }
                assert_eq!(table.admit(5, 1, 4, false), Admission::OutOfOrder { expected: 3 });
                assert_eq!(table.admit(6, 2, 2, false), Admission::Store);
            }
            assert_eq!(from_snapshot.admit(9, 1, 49, false), Admission::Duplicate(None), "restored from the snapshot");
            assert_eq!(
                from_log.admit(9, 1, 49, false),
                Admission::OutOfOrder { expected: 0 },
                "the log alone never knew it"
            );
            log.close().await.expect("close");
        });
    }

    /// More queues than the replay reads at once, and one queue longer than
    /// its first read: every producer's window comes back whole.
    #[test]
    fn a_replay_of_more_queues_than_it_reads_at_once_rebuilds_every_window() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async {
            let log = CommitLog::open(MemoryStorage::new(), LogConfig::new("/memory")).await.expect("open");
            // Producers' queues, past the broker's own (`offsets`).
            let first_queue = crate::server::offsets::EPOCH_QUEUE_ID + 1;
            let queues = first_queue..first_queue + 3 * QUEUES_READ_AT_ONCE as u32;
            let long_queue = queues.start + 7;
            let long_sends = FIRST_READ_LIMITS.0 as u64 + 50;
            // (producer, queue) -> the offset of each sequence.
            let mut stored: HashMap<(u64, u32), Vec<u64>> = HashMap::new();
            for queue_id in queues.clone() {
                let sends = if queue_id == long_queue { long_sends } else { 3 };
                for sequence in 0..sends {
                    for producer_id in [1 + u64::from(queue_id % 3), 4] {
                        let offset = append(&log, producer_id, queue_id, sequence).await;
                        stored.entry((producer_id, queue_id)).or_default().push(offset);
                    }
                }
            }
            let queue_ids: Vec<u32> = queues.collect();
            let table = recover(Snapshot::default(), &log, &queue_ids, 10).await.expect("recover");
            for ((producer_id, queue_id), offsets) in &stored {
                let last = offsets.len() as u64 - 1;
                match table.admit(*producer_id, *queue_id, last, false) {
                    Admission::Duplicate(Some(send)) => assert_eq!(send.offset, offsets[last as usize]),
                    other => panic!("{producer_id}/{queue_id}/{last}: {other:?}"),
                }
                assert_eq!(
                    table.admit(*producer_id, *queue_id, last + 2, false),
                    Admission::OutOfOrder { expected: last + 1 },
                    "{producer_id}/{queue_id}"
                );
                assert_eq!(table.admit(*producer_id, *queue_id, last + 1, false), Admission::Store);
            }
            log.close().await.expect("close");
        });
    }

    #[test]
    fn a_snapshot_expects_the_first_send_that_was_not_durable_even_past_the_window() {
        let mut table = ProducerTable::new(10);
        let total = 3 * SEQUENCES_REMEMBERED as u64;
        // Sends 0..10 durable at position 1000; the rest are not yet.
        for sequence in 0..total {
            table.stored(4, 1, send(sequence, 100 * (sequence + 1)), 1000);
        }
        let snapshot = decode(&encode(&table, 1000, &HashMap::new())).expect("decode");
        let (_, _, window) = &snapshot.windows[0];
        assert_eq!(window.next_sequence, 10, "a restart must take sends 10 and on from the log, or from the producer");
        assert!(window.recent.is_empty(), "the durable sends were past the window");
    }

    /// A burst stored before any of it was durable stays whole in the
    /// window; once durable, a snapshot keeps the last sends the table
    /// remembers, not all of them (a longer window read back as damage, and
    /// a restart replayed the whole log).
    #[test]
    fn a_snapshot_after_a_burst_keeps_the_remembered_sends_and_reads_back() {
        let mut table = ProducerTable::new(10);
        let total = 3 * SEQUENCES_REMEMBERED as u64;
        for sequence in 0..total {
            table.stored(4, 1, send(sequence, 100 * (sequence + 1)), 0);
        }
        let covered = 100 * total;
        let snapshot = decode(&encode(&table, covered, &HashMap::new())).expect("a burst's snapshot reads back");
        let (_, _, window) = &snapshot.windows[0];
        assert_eq!(window.next_sequence, total);
        assert_eq!(window.recent.len(), SEQUENCES_REMEMBERED);
        assert_eq!(window.recent.front().map(|send| send.sequence), Some(total - SEQUENCES_REMEMBERED as u64));
    }

    fn send(sequence: u64, end: u64) -> StoredSend {
        StoredSend { sequence, offset: sequence, store_timestamp_us: 5_000, end }
    }

    #[test]
    fn a_snapshot_holds_only_what_was_durable_and_reads_back() {
        let mut table = ProducerTable::new(10);
        for (sequence, end) in [(0, 100), (1, 200), (2, 300)] {
            table.stored(9, 2, send(sequence, end), 200);
        }
        table.stored(8, 2, send(0, 400), 200);
        let queue_offsets = HashMap::from([(2, 3)]);
        let bytes = encode(&table, 200, &queue_offsets);
        let mut snapshot = decode(&bytes).expect("decodes");
        snapshot.windows.sort_by_key(|(producer, _, _)| *producer);
        assert_eq!(snapshot.covered, 200);
        assert_eq!(snapshot.queue_offsets, queue_offsets);
        let (_, _, fresh) = &snapshot.windows[0];
        assert_eq!((fresh.next_sequence, fresh.recent.len()), (0, 0), "nothing durable: expects its first send again");
        let (_, _, busy) = &snapshot.windows[1];
        assert_eq!(busy.next_sequence, 2, "sequence 2 ends past the covered position");
        assert_eq!(busy.recent, [send(0, 100), send(1, 200)]);
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let mut table = ProducerTable::new(10);
        table.stored(1, 1, send(1, 10), 10);
        let bytes = encode(&table, 10, &HashMap::new());
        for at in [0, 9, bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x20;
            assert!(decode(&damaged).is_err(), "a flip at {at} is noticed");
        }
        assert!(decode(&bytes[..bytes.len() - 5]).is_err(), "a short snapshot is refused");
    }

    /// Sorted, so that two snapshots of one table compare whatever the
    /// order their windows were written in.
    fn windows_of(bytes: &[u8]) -> Vec<(u64, u32, QueueWindow)> {
        let mut windows = decode(bytes).expect("decodes").windows;
        windows.sort_by_key(|(producer, queue, _)| (*producer, *queue));
        windows
    }

    #[test]
    fn a_snapshot_written_in_steps_is_the_table_at_its_start_while_sends_go_on() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async {
            let covered = 1_000;
            let mut table = ProducerTable::new(10_000);
            let windows = 3 * WINDOWS_PER_STEP as u64;
            for window in 0..windows {
                for sequence in 0..3 {
                    table.stored(window % 7, window as u32, send(sequence, 10 * sequence + window % 900), covered);
                }
            }
            let expected = encode(&table, covered, &HashMap::new());
            let table = std::rc::Rc::new(RefCell::new(table));
            // Sends stored while the snapshot is written end past `covered`,
            // in windows it lists and in new ones.
            let sender = {
                let table = table.clone();
                // glommio runs a spawned task at once, up to its first wait.
                glommio::spawn_local(async move {
                    for step in 0..windows {
                        futures_lite::future::yield_now().await;
                        table.borrow_mut().stored(step % 7, step as u32, send(3, covered + 1 + step), covered);
                        table.borrow_mut().stored(99, step as u32, send(0, covered + 1 + step), covered);
                    }
                })
            };
            let in_steps = encode_in_steps(&table, covered, &HashMap::new()).await;
            assert!(table.borrow().window(99, 1).is_some(), "no send went on between the steps");
            sender.await;
            assert_eq!(windows_of(&in_steps), windows_of(&expected));
        });
    }

    #[test]
    fn a_large_snapshot_waits_its_bytes_worth_of_time() {
        let mut cadence = Cadence::default();
        assert!(cadence.is_due(), "the first one at once");
        cadence.written(1024);
        std::thread::sleep(std::time::Duration::from_millis(2)); // 1 KiB is 0.12 ms' worth
        assert!(cadence.is_due(), "a small one at every checkpoint interval");
        cadence.written(10 * PRODUCERS_SNAPSHOT_BYTES_PER_SECOND);
        assert!(!cadence.is_due(), "ten seconds' worth waits");
    }
}
