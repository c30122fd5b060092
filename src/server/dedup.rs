//! Producer sequences: per producer id and queue, the next sequence the
//! shard expects and the results of the last sends it stored. A retried
//! send gets the first send's result instead of a second copy; a send ahead
//! of the next expected sequence is refused, so each producer's messages
//! are stored in the order it sent them. Everything here is rebuilt from
//! the log at start-up (`dedup_snapshot` shortens the replay).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Stored sends remembered per producer and queue, with their results: at
/// least as many as a client may have in flight (64 by default), so any
/// retry of an unacknowledged send finds its first result.
pub const SEQUENCES_REMEMBERED: usize = 64;
/// Kafka's producer id expiry: a producer idle this long is forgotten.
pub const PRODUCER_IDLE_EXPIRY_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;
/// Producers one shard tracks at most: ~100 bytes for a producer that sent
/// once, ~2.5 KiB per queue for a busy one.
pub const PRODUCERS_MAX_DEFAULT: usize = 100_000;

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
    /// at `next_sequence - 1`.
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
    /// producer new to this queue may start at any sequence: its first
    /// send defines where it starts (every frame of one connection is
    /// placed in arrival order, so its first send arrives first).
    pub fn admit(&self, producer_id: u64, queue_id: u32, sequence: u64) -> Admission {
        let Some(queues) = self.producers.get(&producer_id) else {
            if self.producers.len() >= self.producers_max {
                return Admission::TooManyProducers { max: self.producers_max };
            }
            return Admission::Store;
        };
        let Some(window) = queues.get(&queue_id) else { return Admission::Store };
        if sequence == window.next_sequence {
            return Admission::Store;
        }
        if sequence > window.next_sequence {
            return Admission::OutOfOrder { expected: window.next_sequence };
        }
        let first = window.recent.front().map_or(window.next_sequence, |send| send.sequence);
        let remembered = sequence.checked_sub(first).and_then(|at| window.recent.get(at as usize)).copied();
        debug_assert!(remembered.is_none_or(|send| send.sequence == sequence));
        Admission::Duplicate(remembered)
    }

    /// Notes a send stored in the log (or found there at start-up).
    pub fn stored(&mut self, producer_id: u64, queue_id: u32, send: StoredSend) {
        let window = self.producers.entry(producer_id).or_default().entry(queue_id).or_default();
        if send.sequence != window.next_sequence {
            // A producer's first send to this queue, or (at start-up) one
            // that follows a gap the log cannot explain: start over there.
            window.recent.clear();
        }
        window.next_sequence = send.sequence + 1;
        window.last_stored_ms = window.last_stored_ms.max(send.store_timestamp_us / 1000);
        window.recent.push_back(send);
        if window.recent.len() > SEQUENCES_REMEMBERED {
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

    #[test]
    fn sends_are_stored_in_sequence_order_and_retries_get_the_first_result() {
        let mut table = ProducerTable::new(10);
        assert_eq!(table.admit(7, 1, 5), Admission::Store, "a new producer starts anywhere");
        table.stored(7, 1, send(5));
        assert_eq!(table.admit(7, 1, 5), Admission::Duplicate(Some(send(5))));
        assert_eq!(table.admit(7, 1, 7), Admission::OutOfOrder { expected: 6 });
        assert_eq!(table.admit(7, 1, 6), Admission::Store);
        assert_eq!(table.admit(7, 2, 0), Admission::Store, "each queue has its own sequences");
        assert_eq!(table.admit(7, 1, 4), Admission::Duplicate(None), "before the first: stored before, result unknown");
    }

    #[test]
    fn the_window_keeps_the_last_sequences_and_older_ones_stay_duplicates() {
        let mut table = ProducerTable::new(10);
        let total = SEQUENCES_REMEMBERED as u64 + 10;
        for sequence in 0..total {
            table.stored(1, 0, send(sequence));
        }
        assert_eq!(table.admit(1, 0, total - 1), Admission::Duplicate(Some(send(total - 1))));
        let oldest = total - SEQUENCES_REMEMBERED as u64;
        assert_eq!(table.admit(1, 0, oldest), Admission::Duplicate(Some(send(oldest))));
        assert_eq!(table.admit(1, 0, oldest - 1), Admission::Duplicate(None), "older than the window");
        assert_eq!(table.admit(1, 0, total), Admission::Store);
        let (_, _, window) = table.windows().next().expect("a window");
        assert_eq!(window.recent.len(), SEQUENCES_REMEMBERED);
    }

    #[test]
    fn idle_producers_are_forgotten_and_the_cap_refuses_new_ones() {
        let mut table = ProducerTable::new(2);
        table.stored(1, 0, send(1));
        table.stored(2, 0, send(3));
        assert_eq!(table.admit(3, 0, 0), Admission::TooManyProducers { max: 2 });
        assert_eq!(table.admit(1, 5, 0), Admission::Store, "a known producer may use another queue");
        assert_eq!(table.expire(3_000 + 1_500, 2_000), 1, "producer 1 stored last at 1000 ms");
        assert_eq!(table.producer_count(), 1);
        assert_eq!(table.admit(3, 0, 0), Admission::Store);
    }
}
