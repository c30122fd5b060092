//! The simulation's clock: store timestamps are bytes in the log, and the
//! faults a seed injects depend on those bytes (a zeroed block's damage
//! starts at its first byte that changes), so a seed replays identically
//! only if the timestamps do. While a seed runs, `storage::now_us` reads
//! this clock: it starts at a fixed instant and moves 1 us per reading.

use std::cell::Cell;

/// 2026-01-01T00:00:00Z, in microseconds.
const START_US: u64 = 1_767_225_600_000_000;

thread_local! {
    static NOW_US: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The simulated time, moved on by one microsecond; `None` outside a seed.
pub fn tick() -> Option<u64> {
    NOW_US.with(|now| {
        let current = now.get()?;
        now.set(Some(current + 1));
        Some(current)
    })
}

/// Runs the simulated clock until dropped (from the start for every seed).
pub struct SimulatedClock(());

impl SimulatedClock {
    pub fn start() -> Self {
        NOW_US.with(|now| now.set(Some(START_US)));
        Self(())
    }
}

impl Drop for SimulatedClock {
    fn drop(&mut self) {
        NOW_US.with(|now| now.set(None));
    }
}
