//! How long a standby has lacked bytes its primary has durable: the time
//! since the two last matched (0 while they do). Both sides keep one: a
//! standby from its primary's answers, a primary from its standby's asks.

use std::cell::Cell;
use std::time::{Duration, Instant};

pub struct CaughtUp {
    last: Cell<Option<Instant>>,
    since: Instant,
}

impl Default for CaughtUp {
    fn default() -> Self {
        Self { last: Cell::new(None), since: Instant::now() }
    }
}

impl CaughtUp {
    /// The standby has `standby` durable, the primary `primary`.
    pub fn note(&self, primary: u64, standby: u64) {
        if standby >= primary {
            self.last.set(Some(Instant::now()));
        }
    }

    /// The lag in time, given the lag in bytes now: 0 without one, else the
    /// time since they last matched (or since this broker started).
    pub fn lag(&self, lag_bytes: u64) -> Duration {
        if lag_bytes == 0 {
            return Duration::ZERO;
        }
        self.last.get().unwrap_or(self.since).elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bytes_behind_is_no_lag_and_behind_counts_from_the_last_match() {
        let caught_up = CaughtUp::default();
        assert_eq!(caught_up.lag(0), Duration::ZERO);
        caught_up.note(100, 100);
        std::thread::sleep(Duration::from_millis(20));
        caught_up.note(200, 100);
        assert!(caught_up.lag(100) >= Duration::from_millis(20));
        caught_up.note(200, 200);
        assert!(caught_up.lag(100) < Duration::from_millis(20));
    }
}
