//! A shard's budget for bytes held in incomplete frames: every connection's
//! read buffer is charged to it, so a few thousand clients that each send a
//! frame's beginning and stall cannot grow the shard's memory past it. A
//! connection's first read (`CONNECTION_READ_FIRST_BYTES`) is not charged,
//! so small requests on a new connection are served while the budget is
//! spent; those reads are bounded by `connections_max`.

use std::cell::Cell;

/// What one shard's connections hold in their read buffers, and its bound.
#[derive(Debug)]
pub struct IncompleteFrames {
    held: Cell<usize>,
    max: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the shard's budget for incomplete frames is spent: {held} of {max} bytes held, this connection asks for {asked} more")]
pub struct BudgetSpent {
    pub held: usize,
    pub max: usize,
    pub asked: usize,
}

impl IncompleteFrames {
    pub fn new(max: usize) -> Self {
        Self { held: Cell::new(0), max }
    }

    /// Bytes held now by all the shard's connections.
    pub fn held(&self) -> usize {
        self.held.get()
    }

    /// Past half the budget, connections stop taking whole-read steps for
    /// streams of small frames (`FrameDecoder::set_frugal`): the budget is
    /// kept for frames that need it.
    pub fn more_than_half_spent(&self) -> bool {
        self.held.get() > self.max / 2
    }

    /// A connection's account, empty.
    pub fn account(&self) -> Charge<'_> {
        Charge { budget: self, charged: 0 }
    }
}

/// One connection's share of the budget; given back when dropped.
#[derive(Debug)]
pub struct Charge<'a> {
    budget: &'a IncompleteFrames,
    charged: usize,
}

impl Charge<'_> {
    /// Asks that this connection may hold `bytes`; refused (nothing changes)
    /// when the shard would pass its budget.
    pub fn reserve(&mut self, bytes: usize) -> Result<(), BudgetSpent> {
        let asked = bytes.saturating_sub(self.charged);
        let held = self.budget.held.get();
        if asked > 0 && held + asked > self.budget.max {
            return Err(BudgetSpent { held, max: self.budget.max, asked });
        }
        self.settle(bytes);
        Ok(())
    }

    /// Records that this connection holds `bytes` now (after an allocation
    /// that `reserve` allowed, or after frames left the buffer).
    pub fn settle(&mut self, bytes: usize) {
        let held = self.budget.held.get() - self.charged + bytes;
        self.budget.held.set(held);
        self.charged = bytes;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.settle(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_share_the_budget_and_give_back_what_they_held() {
        let budget = IncompleteFrames::new(100);
        let mut first = budget.account();
        let mut second = budget.account();
        first.reserve(60).expect("within the budget");
        assert_eq!(second.reserve(50), Err(BudgetSpent { held: 60, max: 100, asked: 50 }));
        second.reserve(40).expect("exactly the rest");
        assert_eq!(budget.held(), 100);
        first.settle(10);
        second.reserve(90).expect("what the first gave back");
        drop(second);
        assert_eq!(budget.held(), 10);
        drop(first);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn past_half_the_budget_is_tight() {
        let budget = IncompleteFrames::new(100);
        let mut charge = budget.account();
        charge.reserve(50).expect("within the budget");
        assert!(!budget.more_than_half_spent());
        charge.reserve(51).expect("within the budget");
        assert!(budget.more_than_half_spent());
    }
}
