//! Per-queue sequences of one producer. The broker stores a producer's
//! messages to a queue only in sequence order, starting at 0, so the
//! producer numbers them per queue and keeps the unsettled ones (sent, not
//! finally answered) in order of sending.
//!
//! A gap the broker can never fill (an earlier message finally failed, or
//! an async-flush broker lost acknowledged ones in a crash, or forgot an
//! idle producer) shows as `OutOfOrderSequence` on the oldest unsettled
//! message. Every earlier message is settled then, so the producer resends
//! that one with `skip_gap`: the broker moves past the gap, and a late copy
//! of a skipped message is answered as a duplicate, never stored.

use std::collections::{BTreeSet, HashMap};

/// Where a message stands in its queue's order, and what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Its place in the queue's order of sending.
    pub ticket: u64,
    pub producer_id: u64,
    pub sequence: u64,
}

#[derive(Debug)]
struct QueueSequence {
    producer_id: u64,
    next_sequence: u64,
    next_ticket: u64,
    unsettled: BTreeSet<u64>,
}

#[derive(Debug)]
pub struct Sequencer {
    producer_id: u64,
    queues: HashMap<u32, QueueSequence>,
}

/// A fresh producer id; never 0 (the broker sequences nothing for id 0).
pub fn new_producer_id() -> u64 {
    fastrand::u64(1..)
}

impl Sequencer {
    pub fn new(producer_id: u64) -> Self {
        Self { producer_id, queues: HashMap::new() }
    }

    fn queue(&mut self, queue: u32) -> &mut QueueSequence {
        let producer_id = self.producer_id;
        self.queues.entry(queue).or_insert_with(|| QueueSequence {
            producer_id,
            next_sequence: 0,
            next_ticket: 0,
            unsettled: BTreeSet::new(),
        })
    }

    /// Stamps `count` new messages for `queue`, consecutive, unsettled
    /// until `settle`.
    pub fn stamp(&mut self, queue: u32, count: usize) -> Vec<Stamp> {
        let entry = self.queue(queue);
        (0..count)
            .map(|_| {
                let stamp =
                    Stamp { ticket: entry.next_ticket, producer_id: entry.producer_id, sequence: entry.next_sequence };
                entry.next_ticket += 1;
                entry.next_sequence += 1;
                entry.unsettled.insert(stamp.ticket);
                stamp
            })
            .collect()
    }

    /// Takes back a message stamped by an earlier run (an outbox's row):
    /// it is unsettled and goes out in order with the rest, and new stamps
    /// of its queue continue after it, under its producer id. Adopt in the
    /// order the messages were stamped.
    pub fn adopt(&mut self, queue: u32, producer_id: u64, sequence: u64) -> Stamp {
        let entry = self.queue(queue);
        let stamp = Stamp { ticket: entry.next_ticket, producer_id, sequence };
        entry.next_ticket += 1;
        entry.producer_id = producer_id;
        entry.next_sequence = sequence + 1;
        entry.unsettled.insert(stamp.ticket);
        stamp
    }

    /// Whether the message with `ticket` is the oldest unsettled one of its
    /// queue: everything sent before it was answered for good.
    pub fn is_oldest(&self, queue: u32, ticket: u64) -> bool {
        self.queues.get(&queue).is_none_or(|entry| entry.unsettled.first().is_none_or(|first| *first == ticket))
    }

    /// The messages from `ticket` on (`count`) were answered for good.
    pub fn settle(&mut self, queue: u32, ticket: u64, count: usize) {
        let entry = self.queue(queue);
        for ticket in ticket..ticket + count as u64 {
            entry.unsettled.remove(&ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_consecutive_per_queue_from_zero() {
        let mut sequencer = Sequencer::new(7);
        let first = sequencer.stamp(1, 2);
        let other = sequencer.stamp(2, 1);
        let next = sequencer.stamp(1, 1);
        assert_eq!(first.iter().map(|stamp| stamp.sequence).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(other[0].sequence, 0);
        assert_eq!(next[0].sequence, 2);
        assert!(first.iter().chain(&next).all(|stamp| stamp.producer_id == 7));
        assert!(!sequencer.is_oldest(1, next[0].ticket));
        assert!(sequencer.is_oldest(1, first[0].ticket));
        sequencer.settle(1, first[0].ticket, 2);
        assert!(sequencer.is_oldest(1, next[0].ticket), "everything before it was answered");
    }

    #[test]
    fn adopted_messages_go_first_and_new_ones_follow_the_last_adopted() {
        let mut sequencer = Sequencer::new(7);
        let old = sequencer.adopt(3, 41, 4);
        let adopted = sequencer.adopt(3, 42, 10);
        let new = sequencer.stamp(3, 1);
        assert_eq!((new[0].producer_id, new[0].sequence), (42, 11));
        assert!(sequencer.is_oldest(3, old.ticket));
        assert!(!sequencer.is_oldest(3, adopted.ticket));
    }
}
