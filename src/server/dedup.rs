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

/// Sends remembered per shard.
pub const DEDUP_WINDOW_ENTRIES_MAX: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstSend {
    pub queue_id: u32,
    pub offset: u64,
    pub store_timestamp_us: u64,
    /// Log position after the record: a retry waits for it to be durable.
    pub end: u64,
}

/// Two generations of sends: lookups see both; when the current one is
/// full it becomes the previous one and the old previous one is dropped
/// whole. No per-entry eviction on the hot path, and between
/// `DEDUP_WINDOW_ENTRIES_MAX / 2` and `DEDUP_WINDOW_ENTRIES_MAX` sends are
/// remembered.
#[derive(Default)]
pub struct DedupWindow {
    current: HashMap<(u64, u64), FirstSend, SendKeys>,
    previous: HashMap<(u64, u64), FirstSend, SendKeys>,
}

impl DedupWindow {
    pub fn get(&self, producer_id: u64, sequence: u64) -> Option<FirstSend> {
        let key = (producer_id, sequence);
        self.current.get(&key).or_else(|| self.previous.get(&key)).copied()
    }

    pub fn insert(&mut self, producer_id: u64, sequence: u64, send: FirstSend) {
        if self.current.len() >= DEDUP_WINDOW_ENTRIES_MAX / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert((producer_id, sequence), send);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_remembers_recent_sends_and_forgets_the_oldest() {
        let mut window = DedupWindow::default();
        let send = FirstSend { queue_id: 1, offset: 5, store_timestamp_us: 9, end: 100 };
        window.insert(7, 1, send);
        assert_eq!(window.get(7, 1), Some(send));
        for sequence in 2..(DEDUP_WINDOW_ENTRIES_MAX as u64 + 2) {
            window.insert(7, sequence, send);
        }
        assert_eq!(window.get(7, 1), None, "the oldest sends are forgotten");
        let newest = DEDUP_WINDOW_ENTRIES_MAX as u64 + 1;
        for sequence in newest - DEDUP_WINDOW_ENTRIES_MAX as u64 / 2 + 1..=newest {
            assert!(window.get(7, sequence).is_some(), "send {sequence} of the last half window is remembered");
        }
    }
}
