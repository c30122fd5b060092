//! The dedup window: a retried send (same producer id and sequence) gets the
//! first send's result instead of a second copy in the log.

use std::collections::{HashMap, VecDeque};
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

#[derive(Default)]
pub struct DedupWindow {
    sends: HashMap<(u64, u64), FirstSend, SendKeys>,
    order: VecDeque<(u64, u64)>,
}

impl DedupWindow {
    pub fn get(&self, producer_id: u64, sequence: u64) -> Option<FirstSend> {
        self.sends.get(&(producer_id, sequence)).copied()
    }

    pub fn insert(&mut self, producer_id: u64, sequence: u64, send: FirstSend) {
        if self.sends.insert((producer_id, sequence), send).is_none() {
            self.order.push_back((producer_id, sequence));
        }
        while self.order.len() > DEDUP_WINDOW_ENTRIES_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.sends.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_remembers_the_first_send_and_forgets_the_oldest() {
        let mut window = DedupWindow::default();
        let send = FirstSend { queue_id: 1, offset: 5, store_timestamp_us: 9, end: 100 };
        window.insert(7, 1, send);
        assert_eq!(window.get(7, 1), Some(send));
        for sequence in 2..(DEDUP_WINDOW_ENTRIES_MAX as u64 + 2) {
            window.insert(7, sequence, send);
        }
        assert_eq!(window.get(7, 1), None);
        assert!(window.get(7, DEDUP_WINDOW_ENTRIES_MAX as u64 + 1).is_some());
    }
}
