//! Per-queue sequences of one producer. The broker stores a producer's
//! messages to a queue only in sequence order, so the producer numbers them
//! per queue, keeps every unsettled one (sent, not finally answered) in
//! order, and resends in that order.
//!
//! A gap the broker can never fill (an earlier message finally failed, or
//! an async-flush broker lost acknowledged ones in a crash) shows as
//! `OutOfOrderSequence` on the oldest unsettled message. Then the queue
//! moves to a fresh producer id, which the broker lets start anywhere, and
//! its unsettled messages are restamped with it oldest first, one at a time,
//! before anything newer goes out. No message sent under the old id can be
//! stored any more (the broker waits for the gap under it), so restamping
//! never stores one twice.

use std::collections::{BTreeMap, HashMap};

/// Where a message stands in its queue's order, and what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Its place in the queue's order of sending; never changes.
    pub ticket: u64,
    pub producer_id: u64,
    pub sequence: u64,
}

/// May a message (or a batch starting with it) go out now?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Yes, with this producer id (restamp it first if it carries another).
    Go { producer_id: u64, oldest: bool },
    /// Not yet: the queue is restamping, and older messages go first.
    Wait,
}

#[derive(Debug)]
struct QueueSequence {
    producer_id: u64,
    next_sequence: u64,
    next_ticket: u64,
    /// Unsettled tickets and the producer id each was last stamped with.
    unsettled: BTreeMap<u64, u64>,
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
            unsettled: BTreeMap::new(),
        })
    }

    /// Stamps `count` new messages for `queue`, consecutive, unsettled
    /// until `settle`.
    pub fn stamp(&mut self, queue: u32, count: usize) -> Vec<Stamp> {
        let sequence = self.queue(queue);
        (0..count)
            .map(|_| {
                let stamp = Stamp {
                    ticket: sequence.next_ticket,
                    producer_id: sequence.producer_id,
                    sequence: sequence.next_sequence,
                };
                sequence.next_ticket += 1;
                sequence.next_sequence += 1;
                sequence.unsettled.insert(stamp.ticket, stamp.producer_id);
                stamp
            })
            .collect()
    }

    /// Takes back a message stamped before (by an earlier run, say, whose
    /// messages an outbox kept): it is unsettled and goes out in order with
    /// the rest; new stamps follow it.
    pub fn adopt(&mut self, queue: u32, producer_id: u64, sequence: u64) -> Stamp {
        let entry = self.queue(queue);
        if entry.unsettled.is_empty() {
            entry.producer_id = producer_id;
        }
        let stamp = Stamp { ticket: entry.next_ticket, producer_id, sequence };
        entry.next_ticket += 1;
        entry.next_sequence = entry.next_sequence.max(sequence + 1);
        entry.unsettled.insert(stamp.ticket, producer_id);
        stamp
    }

    /// Whether the message with `ticket` may be sent now.
    pub fn turn(&self, queue: u32, ticket: u64) -> Turn {
        let Some(entry) = self.queues.get(&queue) else {
            return Turn::Go { producer_id: self.producer_id, oldest: true };
        };
        let oldest = entry.unsettled.keys().next().is_none_or(|first| *first == ticket);
        let restamping = entry.unsettled.values().any(|stamped| *stamped != entry.producer_id);
        if restamping && !oldest {
            return Turn::Wait;
        }
        Turn::Go { producer_id: entry.producer_id, oldest }
    }

    /// Notes that the messages from `ticket` on (`count` of them) now carry
    /// `producer_id`.
    pub fn restamped(&mut self, queue: u32, ticket: u64, count: usize, producer_id: u64) {
        let entry = self.queue(queue);
        for (_, stamped) in entry.unsettled.range_mut(ticket..ticket + count as u64) {
            *stamped = producer_id;
        }
    }

    /// The broker refused the oldest unsettled message, stamped with
    /// `stamped_id`, as out of order: the gap below it is permanent. Moves
    /// the queue to a fresh producer id (once per gap).
    pub fn permanent_gap(&mut self, queue: u32, stamped_id: u64) -> u64 {
        let entry = self.queue(queue);
        if entry.producer_id == stamped_id {
            entry.producer_id = new_producer_id();
        }
        entry.producer_id
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
    fn stamps_are_consecutive_per_queue() {
        let mut sequencer = Sequencer::new(7);
        let first = sequencer.stamp(1, 2);
        let other = sequencer.stamp(2, 1);
        let next = sequencer.stamp(1, 1);
        assert_eq!(first.iter().map(|stamp| stamp.sequence).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(other[0].sequence, 0);
        assert_eq!(next[0].sequence, 2);
        assert!(first.iter().chain(&next).all(|stamp| stamp.producer_id == 7));
        assert_eq!(sequencer.turn(1, next[0].ticket), Turn::Go { producer_id: 7, oldest: false });
        assert_eq!(sequencer.turn(1, first[0].ticket), Turn::Go { producer_id: 7, oldest: true });
    }

    #[test]
    fn a_permanent_gap_restamps_oldest_first_and_holds_back_the_rest() {
        let mut sequencer = Sequencer::new(7);
        let stamps = sequencer.stamp(0, 3);
        let fresh = sequencer.permanent_gap(0, 7);
        assert_ne!(fresh, 7);
        assert_eq!(sequencer.permanent_gap(0, 7), fresh, "one switch per gap");
        assert_eq!(sequencer.turn(0, stamps[1].ticket), Turn::Wait, "older messages go first");
        let newer = sequencer.stamp(0, 1);
        assert_eq!(newer[0].producer_id, fresh);
        assert_eq!(sequencer.turn(0, newer[0].ticket), Turn::Wait, "nothing new overtakes the restamping");
        assert_eq!(sequencer.turn(0, stamps[0].ticket), Turn::Go { producer_id: fresh, oldest: true });
        sequencer.restamped(0, stamps[0].ticket, 1, fresh);
        sequencer.settle(0, stamps[0].ticket, 1);
        assert_eq!(sequencer.turn(0, stamps[2].ticket), Turn::Wait);
        assert_eq!(sequencer.turn(0, stamps[1].ticket), Turn::Go { producer_id: fresh, oldest: true });
        sequencer.restamped(0, stamps[1].ticket, 2, fresh);
        assert_eq!(
            sequencer.turn(0, newer[0].ticket),
            Turn::Go { producer_id: fresh, oldest: false },
            "every unsettled message carries the fresh id: pipelining again"
        );
    }

    #[test]
    fn adopted_messages_go_first_and_new_ones_follow_their_sequences() {
        let mut sequencer = Sequencer::new(7);
        let adopted = sequencer.adopt(3, 42, 10);
        let new = sequencer.stamp(3, 1);
        assert_eq!((new[0].producer_id, new[0].sequence), (42, 11));
        assert_eq!(sequencer.turn(3, adopted.ticket), Turn::Go { producer_id: 42, oldest: true });
    }
}
