//! Producer sequences: per producer id and queue, the next sequence the
//! shard expects and the results of the last sends it stored. A retried
//! send gets the first send's result instead of a second copy; a send ahead
//! of the next expected sequence is refused, so each producer's messages
//! are stored in the order it sent them. Everything here is rebuilt from
//! the log at start-up (`dedup_snapshot` shortens the replay).
//!
//! Bounds, and the rule that keeps them from breaking deduplication: a
//! shard tracks at most `producers_max` producers. Once full, a send from a
//! producer it does not know is refused (`TooManyProducers`, not retried by
//! the client); every producer it tracks goes on, on any queue. Nothing is
//! ever evicted to make room: a producer evicted while it may still resend
//! would have its resend stored twice, the one thing this table prevents.
//! Entries go only by idle expiry: a producer's window of a queue whose last
//! stored send is `producer_idle_expiry_ms` old (7 days by default, never
//! under `PRODUCER_IDLE_EXPIRY_MS_MIN`, above any client's resending) is
//! forgotten at the next checkpoint tick, and the producer with its last
//! window. So a retry is a duplicate as long as its producer stored on that
//! queue within the expiry. A table rebuilt at start past a lowered
//! `producers_max` keeps what it rebuilt and refuses new producers until
//! expiry brings it under.

pub use crate::constants::SEQUENCES_REMEMBERED;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// The keys are random producer ids: a multiply-and-fold hash spreads them
/// well, at a fraction of SipHash's cost (the table is read for every
/// message).
#[derive(Default)]
pub struct ProducerIdHasher(u64);

impl Hasher for ProducerIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        let mixed = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = mixed ^ (mixed >> 29);
    }
}

type ProducerIds = BuildHasherDefault<ProducerIdHasher>;

/// One stored send and where it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredSend {
    pub sequence: u64,
    pub offset: u64,
    pub store_timestamp_us: u64,
    /// Log position after the record: a retry waits for it to be durable.
    pub end: u64,
}

/// What the shard knows of one producer's sends to one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueWindow {
    pub next_sequence: u64,
    pub last_stored_ms: u64,
    /// The last stored sends, oldest first, consecutive sequences ending
    /// at `next_sequence - 1`; every send not yet durable is among them.
    pub recent: VecDeque<StoredSend>,
}

/// What to do with a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Store,
    /// Stored before: the first result, if still remembered.
    Duplicate(Option<StoredSend>),
    /// Ahead of the next expected sequence: refuse, the producer resends in
    /// order.
    OutOfOrder {
        expected: u64,
    },
    TooManyProducers {
        max: usize,
    },
}

pub struct ProducerTable {
    producers: HashMap<u64, BTreeMap<u32, QueueWindow>, ProducerIds>,
    producers_max: usize,
}

impl ProducerTable {
    pub fn new(producers_max: usize) -> Self {
        Self { producers: HashMap::default(), producers_max }
    }

    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Whether to store `sequence` of `producer_id` in `queue_id`. A
    /// producer's sequences of a queue start at 0; a later start, or a gap,
    /// is taken only with `skip_gap`: the producer settled every earlier
    /// sequence, so none of them may be stored any more.
    pub fn admit(&self, producer_id: u64, queue_id: u32, sequence: u64, skip_gap: bool) -> Admission {
        let window = self.producers.get(&producer_id).and_then(|queues| queues.get(&queue_id));
        if window.is_none() && !self.producers.contains_key(&producer_id) && self.producers.len() >= self.producers_max
        {
            return Admission::TooManyProducers { max: self.producers_max };
        }
        let next_sequence = window.map_or(0, |window| window.next_sequence);
        if sequence == next_sequence || (sequence > next_sequence && skip_gap) {
            return Admission::Store;
        }
        if sequence > next_sequence {
            return Admission::OutOfOrder { expected: next_sequence };
        }
        let Some(window) = window else { return Admission::Duplicate(None) };
        let first = window.recent.front().map_or(window.next_sequence, |send| send.sequence);
        let remembered = sequence.checked_sub(first).and_then(|at| window.recent.get(at as usize)).copied();
        debug_assert!(remembered.is_none_or(|send| send.sequence == sequence));
        Admission::Duplicate(remembered)
    }

    /// Notes a send stored in the log (or found there at start-up);
    /// `durable` is the log's durable position: sends beyond it stay
    /// remembered past `SEQUENCES_REMEMBERED`.
    pub fn stored(&mut self, producer_id: u64, queue_id: u32, send: StoredSend, durable: u64) {
        let window = self.producers.entry(producer_id).or_default().entry(queue_id).or_default();
        if send.sequence != window.next_sequence {
            // A skipped gap: the remembered sends no longer run up to it.
            window.recent.clear();
        }
        window.next_sequence = send.sequence + 1;
        window.last_stored_ms = window.last_stored_ms.max(send.store_timestamp_us / 1000);
        window.recent.push_back(send);
        while window.recent.len() > SEQUENCES_REMEMBERED
            && window.recent.front().is_some_and(|send| send.end <= durable)
        {
            window.recent.pop_front();
        }
    }

    /// Forgets producers that stored nothing for `idle_ms`; returns how many.
    pub fn expire(&mut self, now_ms: u64, idle_ms: u64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, queues| {
            queues.retain(|_, window| now_ms.saturating_sub(window.last_stored_ms) < idle_ms);
            !queues.is_empty()
        });
        before - self.producers.len()
    }

    pub fn windows(&self) -> impl Iterator<Item = (u64, u32, &QueueWindow)> {
        self.producers.iter().flat_map(|(producer_id, queues)| {
            queues.iter().map(move |(queue_id, window)| (*producer_id, *queue_id, window))
        })
    }

    /// The window of `producer_id` in `queue_id`, if the table has one.
    pub fn window(&self, producer_id: u64, queue_id: u32) -> Option<&QueueWindow> {
        self.producers.get(&producer_id)?.get(&queue_id)
    }

    /// The sequence the producer's next message of the queue must carry (0
    /// for a producer the table does not know there).
    pub fn next_sequence(&self, producer_id: u64, queue_id: u32) -> u64 {
        self.producers
            .get(&producer_id)
            .and_then(|queues| queues.get(&queue_id))
            .map_or(0, |window| window.next_sequence)
    }

    /// Puts back a window read from a snapshot.
    pub fn restore(&mut self, producer_id: u64, queue_id: u32, window: QueueWindow) {
        self.producers.entry(producer_id).or_default().insert(queue_id, window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(sequence: u64) -> StoredSend {
        StoredSend { sequence, offset: 100 + sequence, store_timestamp_us: 1_000_000 * sequence, end: 4096 * sequence }
    }

    const DURABLE: u64 = u64::MAX;

    #[test]
    fn sends_are_stored_in_sequence_order_and_retries_get_the_first_result() {
        let mut table = ProducerTable::new(10);
        assert_eq!(table.admit(7, 1, 5, false), Admission::OutOfOrder { expected: 0 }, "a producer starts at 0");
        assert_eq!(table.admit(7, 1, 0, false), Admission::Store);
        table.stored(7, 1, send(0), DURABLE);
        assert_eq!(table.admit(7, 1, 0, false), Admission::Duplicate(Some(send(0))));
        assert_eq!(table.admit(7, 1, 2, false), Admission::OutOfOrder { expected: 1 });
        assert_eq!(table.admit(7, 1, 1, false), Admission::Store);
        assert_eq!(table.admit(7, 2, 0, false), Admission::Store, "each queue has its own sequences");
    }

    #[test]
    fn a_settled_gap_is_skipped_and_what_it_skipped_is_never_stored() {
        let mut table = ProducerTable::new(10);
        assert_eq!(table.admit(7, 1, 5, true), Admission::Store, "a producer the shard forgot starts later");
        table.stored(7, 1, send(5), DURABLE);
        assert_eq!(table.admit(7, 1, 9, true), Admission::Store);
        table.stored(7, 1, send(9), DURABLE);
        assert_eq!(table.admit(7, 1, 7, false), Admission::Duplicate(None), "a late send of a skipped sequence");
        assert_eq!(table.admit(7, 1, 9, false), Admission::Duplicate(Some(send(9))));
        assert_eq!(table.admit(7, 1, 10, false), Admission::Store);
    }

    #[test]
    fn the_window_keeps_the_last_sequences_and_older_ones_stay_duplicates() {
        let mut table = ProducerTable::new(10);
        let total = SEQUENCES_REMEMBERED as u64 + 10;
        for sequence in 0..total {
            table.stored(1, 0, send(sequence), DURABLE);
        }
        assert_eq!(table.admit(1, 0, total - 1, false), Admission::Duplicate(Some(send(total - 1))));
        let oldest = total - SEQUENCES_REMEMBERED as u64;
        assert_eq!(table.admit(1, 0, oldest, false), Admission::Duplicate(Some(send(oldest))));
        assert_eq!(table.admit(1, 0, oldest - 1, false), Admission::Duplicate(None), "older than the window");
        assert_eq!(table.admit(1, 0, total, false), Admission::Store);
        let (_, _, window) = table.windows().next().expect("a window");
        assert_eq!(window.recent.len(), SEQUENCES_REMEMBERED);
    }

    #[test]
    fn sends_not_yet_durable_are_remembered_past_the_window() {
        let mut table = ProducerTable::new(10);
        let total = 2 * SEQUENCES_REMEMBERED as u64;
        for sequence in 0..total {
            table.stored(1, 0, send(sequence), 4096 * 10);
        }
        let (_, _, window) = table.windows().next().expect("a window");
        assert_eq!(window.recent.front().map(|send| send.sequence), Some(11), "the first send ending past durable");
        table.stored(1, 0, send(total), DURABLE);
        let (_, _, window) = table.windows().next().expect("a window");
        assert_eq!(window.recent.len(), SEQUENCES_REMEMBERED, "trimmed once durable");
    }

    #[test]
    fn a_full_table_forgets_nobody_to_make_room() {
        let mut table = ProducerTable::new(1);
        table.stored(1, 0, send(0), DURABLE);
        assert_eq!(table.admit(2, 0, 0, false), Admission::TooManyProducers { max: 1 });
        assert_eq!(table.admit(1, 0, 0, false), Admission::Duplicate(Some(send(0))), "a tracked retry is known");
        assert_eq!(table.admit(1, 0, 1, false), Admission::Store, "and its next send stored");
        // Rebuilt past a lowered cap: what was rebuilt stays, new ones wait.
        table.restore(3, 0, QueueWindow { next_sequence: 5, ..QueueWindow::default() });
        assert_eq!(table.producer_count(), 2);
        assert_eq!(table.admit(3, 0, 4, false), Admission::Duplicate(None));
        assert_eq!(table.admit(4, 0, 0, false), Admission::TooManyProducers { max: 1 });
    }

    #[test]
    fn idle_producers_are_forgotten_and_the_cap_refuses_new_ones() {
        let mut table = ProducerTable::new(2);
        table.stored(1, 0, send(1), DURABLE);
        table.stored(2, 0, send(3), DURABLE);
        assert_eq!(table.admit(3, 0, 0, false), Admission::TooManyProducers { max: 2 });
        assert_eq!(table.admit(1, 5, 0, false), Admission::Store, "a known producer may use another queue");
        assert_eq!(table.expire(3_000 + 1_500, 2_000), 1, "producer 1 stored last at 1000 ms");
        assert_eq!(table.producer_count(), 1);
        assert_eq!(table.admit(3, 0, 0, false), Admission::Store);
    }
}
