//! The dedup window: a retried send (same producer id and sequence) gets the
//! first send's result instead of a second copy in the log.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The keys are a random producer id and a counter: a multiply-and-fold
/// hash spreads them well, at a fraction of SipHash's cost (the window is
/// updated for every message).
#[derive(Default)]
pub struct SendKeyHasher(u64);

impl Hasher for SendKeyHasher {
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

type SendKeys = BuildHasherDefault<SendKeyHasher>;

/// A generation of remembered sends spans this long: a retry within it (the
/// producer times out after 3 s) finds the first send.
pub const DEDUP_GENERATION_MS: u64 = 10_000;
/// ... unless the generation fills up first, which bounds memory (two
/// generations of at most this many sends, ~48 bytes each).
pub const DEDUP_WINDOW_ENTRIES_MAX: usize = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstSend {
    pub queue_id: u32,
    pub offset: u64,
    pub store_timestamp_us: u64,
    /// Log position after the record: a retry waits for it to be durable.
    pub end: u64,
}

/// Two generations of sends: lookups see both; when the current one is
/// `DEDUP_GENERATION_MS` old or full it becomes the previous one and the old
/// previous one is dropped whole. No per-entry eviction on the hot path; at
/// least the last generation's sends are remembered.
/// What the window knows of a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Its first copy is being placed in the log (waiting for room): a retry
    /// must wait for it, not store a second copy.
    InFlight,
    Stored(FirstSend),
}

#[derive(Default)]
pub struct DedupWindow {
    current: HashMap<(u64, u64), Seen, SendKeys>,
    previous: HashMap<(u64, u64), Seen, SendKeys>,
    current_since_ms: u64,
}

impl DedupWindow {
    pub fn get(&self, producer_id: u64, sequence: u64) -> Option<Seen> {
        let key = (producer_id, sequence);
        self.current.get(&key).or_else(|| self.previous.get(&key)).copied()
    }

    /// Remembers a send; `now_ms` is the shard's clock.
    pub fn insert(&mut self, producer_id: u64, sequence: u64, seen: Seen, now_ms: u64) {
        let old = now_ms.saturating_sub(self.current_since_ms) >= DEDUP_GENERATION_MS;
        if old || self.current.len() >= DEDUP_WINDOW_ENTRIES_MAX / 2 {
            self.previous = std::mem::take(&mut self.current);
            self.current_since_ms = now_ms;
        }
        self.current.insert((producer_id, sequence), seen);
    }

    /// Forgets a send whose first copy failed, so a retry may store it.
    pub fn forget(&mut self, producer_id: u64, sequence: u64) {
        let key = (producer_id, sequence);
        self.current.remove(&key);
        self.previous.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_remembers_recent_sends_and_forgets_the_oldest() {
        let mut window = DedupWindow::default();
        let send = FirstSend { queue_id: 1, offset: 5, store_timestamp_us: 9, end: 100 };
        window.insert(7, 1, Seen::InFlight, 0);
        assert_eq!(window.get(7, 1), Some(Seen::InFlight));
        window.insert(7, 1, Seen::Stored(send), 0);
        assert_eq!(window.get(7, 1), Some(Seen::Stored(send)));
        window.insert(7, 2, Seen::Stored(send), DEDUP_GENERATION_MS - 1);
        window.insert(7, 3, Seen::Stored(send), DEDUP_GENERATION_MS);
        assert!(window.get(7, 1).is_some() && window.get(7, 3).is_some(), "the previous generation is remembered");
        window.insert(7, 4, Seen::Stored(send), 2 * DEDUP_GENERATION_MS);
        assert_eq!(window.get(7, 1), None, "two generations back is forgotten");
        assert!(window.get(7, 3).is_some() && window.get(7, 4).is_some());
        window.forget(7, 3);
        assert_eq!(window.get(7, 3), None);
    }
}
