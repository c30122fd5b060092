//! Timers: messages stored once, invisible, and made visible in a target
//! queue when due. Three kinds share one mechanism:
//!
//! - a delayed message (a delay level or a deliver-at time): the producer's
//!   record itself, in `DELAY_QUEUE_ID` (flag `DELAYED`, its header's tag
//!   hash = the target queue id, as a half's);
//! - a send-back (a retry through `%RETRY%G`, or a dead letter into
//!   `%DLQ%G`): an op record in `DELAY_QUEUE_ID` (flag `RETRY`) pointing at
//!   the message's record, its body an `EntryBody`, its header's
//!   `reconsume_times` what the delivery will carry;
//! - a dead letter put back on its original queue (`ringmq dlq resend`):
//!   the same, with the dead letter's queue and offset in the body.
//!
//! Delivery (`due_delivery`) appends, per due entry, an **intent** record in
//! `TIMER_QUEUE_ID` (the entry's position, the target queue's next offset,
//! and `confirmed`: every intent before that position has its delivery
//! durable), then the **delivery**: an op record indexed in the target queue
//! pointing at the message (no copy), its body the entry's position. The
//! delivery lands after its intent, so a recovered log (a prefix) never
//! holds a delivery without its intent. Recovery: every entry is pending,
//! minus those with an intent below the last `confirmed`; an intent above
//! it is checked by reading its target queue from the offset it names (only
//! the records of the last batch lie there) for the delivery. An entry whose
//! delivery is missing is delivered again first, so no later `confirmed`
//! passes its void intent before a new delivery is durable.

use super::offsets::{DELAY_QUEUE_ID, TIMER_QUEUE_ID};
use super::timer_records::{delivered_entry, entry_request, EntryBody, Intent, TimerEntry, TimerKey};
use crate::constants::DELIVERED_KEPT_MAX;
use crate::storage::backend::Storage;
use crate::storage::record::flags;
use crate::storage::{AppendRequest, CommitLog, LogError, StoredRecord};
use crate::wire::verify_message;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use super::delay_levels::DelayLevels;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Pending { due_ms: u64, position: u64, end: u64 },
    Delivered,
}

/// What the table knows of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnownEntry {
    /// Due then; its record ends at `end` (a duplicate answers once that is
    /// acknowledgeable).
    Pending {
        due_ms: u64,
        end: u64,
    },
    Delivered,
}

/// The shard's pending timer entries, by due time.
#[derive(Default)]
pub struct TimerTable {
    pending: BTreeMap<(u64, u64), TimerEntry>,
    known: HashMap<TimerKey, Known>,
    /// Delivered keys in delivery order with their time, to forget them.
    delivered: VecDeque<(u64, TimerKey)>,
    /// Rounds of resends each dead letter had: never forgotten, so a dead
    /// letter goes back once unless the operator says again.
    resends: HashMap<(u32, u64), u32>,
    /// Every intent before this position has its delivery durable.
    confirmed: u64,
    /// The pending entries' floors (`TimerEntry::floor`), counted.
    floors: BTreeMap<u64, usize>,
}

impl TimerTable {
    /// Whether an entry with `key` is pending or was delivered.
    pub fn known(&self, key: &TimerKey) -> Option<KnownEntry> {
        self.known.get(key).map(|known| match known {
            Known::Pending { due_ms, end, .. } => KnownEntry::Pending { due_ms: *due_ms, end: *end },
            Known::Delivered => KnownEntry::Delivered,
        })
    }

    /// Adds a pending entry. One whose key was delivered changes nothing;
    /// one whose key is pending at an earlier position takes its place (an
    /// entry rolled forward, or the later of two racing send-backs).
    pub fn insert(&mut self, entry: TimerEntry) {
        match self.known.get(&entry.key).copied() {
            Some(Known::Delivered) => return,
            Some(Known::Pending { due_ms, position, .. }) => {
                if position >= entry.position {
                    return;
                }
                if let Some(earlier) = self.pending.remove(&(due_ms, position)) {
                    self.release_floor(earlier.floor());
                }
            }
            None => {}
        }
        if let TimerKey::Resend { dead_letter_queue_id, offset, round } = entry.key {
            let rounds = self.resends.entry((dead_letter_queue_id, offset)).or_insert(0);
            *rounds = (*rounds).max(round + 1);
        }
        let known = Known::Pending { due_ms: entry.due_ms, position: entry.position, end: entry.end };
        self.known.insert(entry.key, known);
        *self.floors.entry(entry.floor()).or_insert(0) += 1;
        self.pending.insert((entry.due_ms, entry.position), entry);
    }

    /// How many times the dead letter at `offset` of `queue_id` was resent.
    pub fn resend_rounds(&self, queue_id: u32, offset: u64) -> u32 {
        self.resends.get(&(queue_id, offset)).copied().unwrap_or(0)
    }

    /// Up to `count_max` entries due at `now_ms`, earliest first.
    pub fn due(&self, now_ms: u64, count_max: usize) -> Vec<TimerEntry> {
        self.pending.range(..(now_ms.saturating_add(1), 0)).take(count_max).map(|(_, entry)| entry.clone()).collect()
    }

    /// Up to `count_max` pending entries that keep a log position below
    /// `position` (retention waits for them).
    pub fn pending_below(&self, position: u64, count_max: usize) -> Vec<TimerEntry> {
        if self.floor().is_none_or(|floor| floor >= position) {
            return Vec::new();
        }
        self.pending.values().filter(|entry| entry.floor() < position).take(count_max).cloned().collect()
    }

    /// When the earliest pending entry is due.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.pending.keys().next().map(|(due_ms, _)| *due_ms)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The entry's delivery is durable.
    pub fn delivered(&mut self, key: &TimerKey, now_ms: u64) {
        if let Some(Known::Pending { due_ms, position, .. }) = self.known.get(key).copied() {
            if let Some(entry) = self.pending.remove(&(due_ms, position)) {
                self.release_floor(entry.floor());
            }
            self.known.insert(*key, Known::Delivered);
            self.delivered.push_back((now_ms, *key));
        }
    }

    fn release_floor(&mut self, floor: u64) {
        if let Some(count) = self.floors.get_mut(&floor) {
            *count -= 1;
            if *count == 0 {
                self.floors.remove(&floor);
            }
        }
    }

    /// The keys of the pending entries by their position.
    fn keys_by_position(&self) -> HashMap<u64, TimerKey> {
        self.pending.values().map(|entry| (entry.position, entry.key)).collect()
    }

    /// Brings the pending entry `key` to the front: its intent is void.
    fn due_first(&mut self, key: &TimerKey) {
        if let Some(Known::Pending { due_ms, position, end }) = self.known.get(key).copied() {
            if let Some(mut entry) = self.pending.remove(&(due_ms, position)) {
                entry.due_ms = 0;
                self.known.insert(entry.key, Known::Pending { due_ms: 0, position, end });
                self.pending.insert((0, position), entry);
            }
        }
    }

    /// Forgets delivered keys older than `kept` (or past the maximum).
    pub fn forget_delivered(&mut self, now_ms: u64, kept: Duration) {
        let kept_ms = kept.as_millis() as u64;
        while let Some((at_ms, key)) = self.delivered.front().copied() {
            let old = now_ms.saturating_sub(at_ms) > kept_ms || self.delivered.len() > DELIVERED_KEPT_MAX;
            if !old {
                break;
            }
            self.delivered.pop_front();
            if self.known.get(&key) == Some(&Known::Delivered) {
                self.known.remove(&key);
            }
        }
    }

    /// The lowest log position a pending entry needs (its record or its
    /// message's): retention keeps it.
    pub fn floor(&self) -> Option<u64> {
        self.floors.keys().next().copied()
    }

    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// Every intent below `position` has its delivery durable.
    pub fn confirm(&mut self, position: u64) {
        self.confirmed = self.confirmed.max(position);
    }
}

/// The entry a record of `DELAY_QUEUE_ID` holds: a delayed message (its own
/// bytes) or a send-back / resend (an op record read through its reference).
pub fn entry_of(record: &StoredRecord, levels: &DelayLevels) -> Option<TimerEntry> {
    let message = verify_message(record.message()).ok()?;
    let (message_position, message_size) = (record.position, record.header.length);
    let Some(via) = &record.via else {
        let due_ms = due_ms(message.delay_level, message.deliver_at_ms, record.header.store_timestamp_us, levels);
        return Some(TimerEntry {
            key: TimerKey::Delayed { msg_id: message.msg_id },
            position: record.position,
            end: record.position + u64::from(record.header.length),
            due_ms,
            target_queue_id: record.header.tag_hash,
            message_position,
            message_size,
            tag_hash: message.tag_hash,
            reconsume_times: 0,
            delivery_flag: flags::DELAYED,
        });
    };
    let body = EntryBody::decode(&via.body)?;
    let key = body.key;
    Some(TimerEntry {
        key,
        position: via.position,
        end: via.position + u64::from(via.header.length),
        due_ms: body.due_ms,
        target_queue_id: body.target_queue_id,
        message_position,
        message_size,
        tag_hash: message.tag_hash,
        reconsume_times: via.header.reconsume_times,
        delivery_flag: body.delivery_flag,
    })
}

/// When a delayed message stored at `store_timestamp_us` is due: its
/// deliver-at time, else its level's delay after it was stored (a level
/// the broker no longer has counts as the last).
pub fn due_ms(delay_level: u8, deliver_at_ms: u64, store_timestamp_us: u64, levels: &DelayLevels) -> u64 {
    if deliver_at_ms != 0 {
        return deliver_at_ms;
    }
    let level = u32::from(delay_level).min(levels.len() as u32);
    let delay = levels.delay(level).unwrap_or_default();
    store_timestamp_us / 1000 + delay.as_millis() as u64
}

/// Rolls `entries` forward: for each, a copy of its message (not indexed)
/// and a new entry op record pointing at the copy, same key, due time and
/// target, appended at the log's end; resolves with the new entries once
/// they are durable. Putting them in the table supersedes the old ones, so
/// retention may delete what those kept. A crash before that leaves the old
/// entries in force (and at most an unreferenced copy).
pub async fn roll<S: Storage>(log: &CommitLog<S>, entries: &[TimerEntry]) -> Result<Vec<TimerEntry>, LogError> {
    let mut rolled = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some(message) = log.record_at(entry.message_position, entry.message_size).await? else {
            tracing::error!(entry = entry.position, "a timer entry's message is gone; not rolled");
            continue;
        };
        let copy = AppendRequest {
            queue_id: DELAY_QUEUE_ID,
            flags: flags::DELAYED,
            tag_hash: entry.target_queue_id,
            message: &message.message(),
            ..AppendRequest::default()
        };
        let copied = log.append_buffered(copy).await?;
        let body = EntryBody {
            due_ms: entry.due_ms,
            target_queue_id: entry.target_queue_id,
            delivery_flag: entry.delivery_flag,
            key: entry.key,
        }
        .encode();
        let request =
            entry_request(&body, (copied.position, entry.message_size), entry.tag_hash, entry.reconsume_times);
        let op = log.append_buffered(request).await?;
        rolled.push(TimerEntry {
            position: op.position,
            end: op.end,
            message_position: copied.position,
            ..entry.clone()
        });
    }
    if let Some(end) = rolled.iter().map(|entry| entry.end).max() {
        log.wait_durable(end).await?;
    }
    Ok(rolled)
}

/// Rebuilds the table from the log: the entries, then the intents (see the
/// module notes).
pub async fn recover<S: Storage>(
    log: &CommitLog<S>,
    levels: &DelayLevels,
    now_ms: u64,
) -> Result<TimerTable, LogError> {
    let mut table = TimerTable::default();
    log.replay(DELAY_QUEUE_ID, 0, |record| match entry_of(record, levels) {
        Some(entry) => table.insert(entry),
        None => tracing::warn!(offset = record.queue_offset, "skipping an unreadable timer entry"),
    })
    .await?;
    let mut intents = Vec::new();
    log.replay(TIMER_QUEUE_ID, 0, |record| match Intent::decode(&record.message()) {
        Some(intent) => intents.push((record.position, intent)),
        None => tracing::warn!(offset = record.queue_offset, "skipping an unreadable timer intent"),
    })
    .await?;
    let confirmed = intents.iter().map(|(_, intent)| intent.confirmed).max().unwrap_or(0);
    let keys = table.keys_by_position();
    let mut void = Vec::new();
    // New intents may vouch only for what is resolved: not past a void one.
    let mut resolved_below = intents.last().map_or(0, |(position, _)| position + 1);
    for (position, intent) in &intents {
        let Some(key) = keys.get(&intent.entry_position) else { continue };
        if *position < confirmed || delivery_found(log, intent).await? {
            table.delivered(key, now_ms);
        } else {
            void.push(*key);
            resolved_below = resolved_below.min(*position);
        }
    }
    for key in void {
        // Delivered since by a later intent of the same entry, or void.
        if matches!(table.known(&key), Some(KnownEntry::Pending { .. })) {
            tracing::info!(?key, "a timer delivery was cut by the crash; delivering it again first");
            table.due_first(&key);
        }
    }
    table.confirm(resolved_below);
    Ok(table)
}

/// Whether `intent`'s delivery is in its target queue: at its expected
/// offset or after it (only what was appended in the same moment).
async fn delivery_found<S: Storage>(log: &CommitLog<S>, intent: &Intent) -> Result<bool, LogError> {
    // Retention may have moved the queue's start past the expected offset.
    let mut offset = intent.expected_offset.max(log.base_offset(intent.target_queue_id));
    loop {
        let batch = log.read(intent.target_queue_id, offset, 64, 1 << 20).await?;
        if batch.records.iter().any(|record| delivered_entry(record) == Some(intent.entry_position)) {
            return Ok(true);
        }
        if batch.next_offset <= offset {
            return Ok(false);
        }
        offset = batch.next_offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::DELIVERED_KEPT;
    use crate::server::timer_records::{delivery_request, intent_request};
    use crate::storage::backend::MemoryStorage;
    use crate::storage::LogConfig;
    use crate::wire::MessageDraft;

    fn entry(position: u64, due_ms: u64) -> TimerEntry {
        TimerEntry {
            key: TimerKey::Delayed { msg_id: (position, 0) },
            position,
            end: position + 100,
            due_ms,
            target_queue_id: 1000,
            message_position: position,
            message_size: 100,
            tag_hash: 0,
            reconsume_times: 0,
            delivery_flag: flags::DELAYED,
        }
    }

    #[test]
    fn entries_come_due_in_time_order_and_once() {
        let mut table = TimerTable::default();
        table.insert(entry(300, 30));
        table.insert(entry(100, 10));
        table.insert(entry(200, 20));
        table.insert(entry(100, 5));
        assert_eq!(table.pending_count(), 3, "a known key is not added twice");
        assert_eq!(table.due(9, 10), vec![]);
        assert_eq!(table.due(20, 10).iter().map(|entry| entry.position).collect::<Vec<_>>(), vec![100, 200]);
        assert_eq!(table.next_due_ms(), Some(10));
        table.delivered(&entry(100, 10).key, 1);
        assert_eq!(table.known(&entry(100, 10).key), Some(KnownEntry::Delivered));
        assert_eq!(table.due(20, 10).len(), 1);
        assert_eq!(table.floor(), Some(200));
        table.insert(entry(100, 10));
        assert_eq!(table.pending_count(), 2, "a delivered key is not pending again");
        table.forget_delivered(2 + DELIVERED_KEPT.as_millis() as u64, DELIVERED_KEPT);
        assert_eq!(table.known(&entry(100, 10).key), None);
    }

    #[test]
    fn a_resent_dead_letter_counts_its_rounds() {
        let mut table = TimerTable::default();
        let resend = |round| TimerEntry {
            key: TimerKey::Resend { dead_letter_queue_id: 9, offset: 4, round },
            ..entry(500 + u64::from(round), 0)
        };
        assert_eq!(table.resend_rounds(9, 4), 0);
        table.insert(resend(0));
        assert_eq!(table.resend_rounds(9, 4), 1);
        table.insert(resend(1));
        assert_eq!(table.resend_rounds(9, 4), 2);
    }

    /// A delayed message due long ago, stored for the queue `target`.
    async fn append_delayed(log: &CommitLog<MemoryStorage>, number: u64, target: u32) {
        let bytes = MessageDraft {
            msg_id: (7, number),
            topic: "t",
            body: b"later",
            deliver_at_ms: 1,
            ..MessageDraft::default()
        }
        .build();
        let request = AppendRequest {
            queue_id: DELAY_QUEUE_ID,
            flags: flags::DELAYED,
            indexed: true,
            tag_hash: target,
            message: &bytes,
            ..AppendRequest::default()
        };
        log.append(request).await.expect("a delayed message");
    }

    /// Appends `entry`'s intent (vouching for intents below `confirmed`) and,
    /// unless the crash cut it, its delivery; returns the intent's position.
    async fn deliver(log: &CommitLog<MemoryStorage>, entry: &TimerEntry, confirmed: u64, delivered: bool) -> u64 {
        let intent = Intent {
            entry_position: entry.position,
            target_queue_id: entry.target_queue_id,
            expected_offset: log.next_offset(entry.target_queue_id),
            confirmed,
        };
        let position = log.append(intent_request(&intent.encode())).await.expect("intent").position;
        if delivered {
            log.append(delivery_request(entry, &entry.position.to_le_bytes(), None)).await.expect("delivery");
        }
        position
    }

    #[test]
    fn recovery_tells_a_delivery_the_crash_cut_from_one_that_landed() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async move {
            let log = CommitLog::open(MemoryStorage::new(), LogConfig::new("/memory")).await.expect("open");
            let levels = DelayLevels::default();
            let target = 5000;
            for number in 0..4 {
                append_delayed(&log, number, target).await;
            }
            let table = recover(&log, &levels, 10).await.expect("recover");
            let entries = table.due(10, 10);
            assert_eq!(entries.len(), 4, "every stored delayed message is pending and due");
            // 0: delivered, then vouched for by 1's intent. 1: delivered, not
            // vouched for yet. 2: its delivery was cut. 3: never started.
            let first = deliver(&log, &entries[0], 0, true).await;
            deliver(&log, &entries[1], first + 1, true).await;
            let cut = deliver(&log, &entries[2], first + 1, false).await;
            let table = recover(&log, &levels, 10).await.expect("recover");
            let due = |known: Option<KnownEntry>| match known {
                Some(KnownEntry::Pending { due_ms, .. }) => Some(due_ms),
                _ => None,
            };
            assert_eq!(table.known(&entries[0].key), Some(KnownEntry::Delivered), "vouched for: delivered");
            assert_eq!(table.known(&entries[1].key), Some(KnownEntry::Delivered), "found in its queue: delivered");
            assert_eq!(due(table.known(&entries[2].key)), Some(0), "cut: pending, delivered first");
            assert_eq!(due(table.known(&entries[3].key)), Some(1));
            assert!(table.confirmed() <= cut, "no new intent may vouch for the void one");
            let batch = log.read(target, 0, 10, 1 << 20).await.expect("the target queue");
            assert_eq!(batch.records.len(), 2, "two deliveries landed");
            assert!(batch.records.iter().all(|record| record.via.is_some() && delivered_entry(record).is_some()));
        });
    }

    #[test]
    fn an_entry_rolled_forward_keeps_its_key_and_time_and_frees_the_log_behind_it() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async move {
            let config = LogConfig { segment_size_bytes: 256 * 1024, ..LogConfig::new("/memory") };
            let log = CommitLog::open(MemoryStorage::new(), config).await.expect("open");
            let levels = DelayLevels::default();
            let bytes = MessageDraft {
                msg_id: (7, 1),
                topic: "t",
                body: b"in forty days",
                delay_level: 18,
                ..MessageDraft::default()
            }
            .build();
            let request = AppendRequest {
                queue_id: DELAY_QUEUE_ID,
                flags: flags::DELAYED,
                indexed: true,
                tag_hash: 5000,
                message: &bytes,
                ..AppendRequest::default()
            };
            log.append(request).await.expect("a delayed message");
            let mut table = recover(&log, &levels, 10).await.expect("recover");
            let old = table.due(u64::MAX, 1).pop().expect("pending");
            let filler = vec![7u8; 4000];
            for _ in 0..200 {
                let request =
                    AppendRequest { queue_id: 9000, indexed: true, message: &filler, ..AppendRequest::default() };
                log.append(request).await.expect("filler");
            }
            assert_eq!(table.pending_below(old.position + 1, 10), vec![old.clone()]);
            let rolled = roll(&log, std::slice::from_ref(&old)).await.expect("roll");
            table.insert(rolled[0].clone());
            let new = table.due(u64::MAX, 10);
            assert_eq!(new.len(), 1, "the rolled entry replaces the old one");
            assert!(
                new[0].position > 256 * 1024 && new[0].message_position > 256 * 1024,
                "both moved to a later segment"
            );
            assert_eq!((new[0].key, new[0].due_ms, new[0].target_queue_id), (old.key, old.due_ms, old.target_queue_id));
            assert!(table.floor().is_some_and(|floor| floor > 256 * 1024));
            let recovered = recover(&log, &levels, 10).await.expect("recover");
            assert_eq!(recovered.due(u64::MAX, 10), new, "after a restart the rolled entry is the one in force");
            let copy = log.record_at(new[0].message_position, new[0].message_size).await.expect("read").expect("kept");
            assert_eq!(copy.message().to_vec(), bytes, "the same message");
        });
    }

    #[test]
    fn a_delayed_message_is_due_at_its_time_or_its_level() {
        let levels = DelayLevels::parse("1s 10s").expect("levels");
        assert_eq!(due_ms(0, 5_000, 1_000_000, &levels), 5_000);
        assert_eq!(due_ms(1, 0, 1_000_000, &levels), 2_000);
        assert_eq!(due_ms(2, 0, 1_000_000, &levels), 11_000);
        assert_eq!(due_ms(9, 0, 1_000_000, &levels), 11_000, "a level past the list counts as the last");
    }
}
