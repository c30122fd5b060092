//! What was acknowledged and what was received, per producer and sequence,
//! as bitsets: the verification at the end of a run.

#[derive(Default, Clone)]
struct Bits {
    words: Vec<u64>,
}

impl Bits {
    /// Sets the bit; returns whether it was set already.
    fn set(&mut self, index: u64) -> bool {
        let word = (index / 64) as usize;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        let mask = 1 << (index % 64);
        let was = self.words[word] & mask != 0;
        self.words[word] |= mask;
        was
    }

    fn count(&self) -> u64 {
        self.words.iter().map(|word| u64::from(word.count_ones())).sum()
    }
}

#[derive(Default)]
pub struct Ledger {
    acknowledged: Vec<Bits>,
    received: Vec<Bits>,
    duplicates: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub acknowledged: u64,
    pub received: u64,
    /// Acknowledged, never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicates: u64,
    /// Received, never acknowledged (in flight or failed at the end).
    pub unacknowledged_received: u64,
}

fn slot(bits: &mut Vec<Bits>, producer: u32) -> &mut Bits {
    let index = producer as usize;
    if bits.len() <= index {
        bits.resize(index + 1, Bits::default());
    }
    &mut bits[index]
}

impl Ledger {
    pub fn acknowledge(&mut self, producer: u32, sequence: u64) {
        slot(&mut self.acknowledged, producer).set(sequence);
    }

    pub fn receive(&mut self, producer: u32, sequence: u64) {
        if slot(&mut self.received, producer).set(sequence) {
            self.duplicates += 1;
        }
    }

    pub fn verdict(&self) -> Verdict {
        let mut verdict = Verdict { duplicates: self.duplicates, ..Verdict::default() };
        let producers = self.acknowledged.len().max(self.received.len());
        let empty = Bits::default();
        for producer in 0..producers {
            let acknowledged = self.acknowledged.get(producer).unwrap_or(&empty);
            let received = self.received.get(producer).unwrap_or(&empty);
            let words = acknowledged.words.len().max(received.words.len());
            for word in 0..words {
                let acked = acknowledged.words.get(word).copied().unwrap_or(0);
                let got = received.words.get(word).copied().unwrap_or(0);
                verdict.lost += u64::from((acked & !got).count_ones());
                verdict.unacknowledged_received += u64::from((got & !acked).count_ones());
            }
            verdict.acknowledged += acknowledged.count();
            verdict.received += received.count();
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_counts_lost_duplicate_and_unacknowledged_messages() {
        let mut ledger = Ledger::default();
        for sequence in 0..100 {
            ledger.acknowledge(1, sequence);
        }
        for sequence in 1..101 {
            ledger.receive(1, sequence);
        }
        ledger.receive(1, 5);
        let verdict = ledger.verdict();
        assert_eq!((verdict.acknowledged, verdict.received), (100, 100));
        assert_eq!((verdict.lost, verdict.duplicates, verdict.unacknowledged_received), (1, 1, 1));
    }
}
