//! What a primary's shard knows of its standby: how far the standby has its
//! log durable (each REPLICATE asks from the standby's durable end, so the
//! request itself is the report) and when it last asked.

use crate::constants::REPLICATE_WAIT_MS_MAX;
use crate::storage::Watermark;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// A standby counts as connected while its last REPLICATE was this recent:
/// a following standby asks again at least once per `REPLICATE_WAIT_MS_MAX`.
const STANDBY_SEEN_WINDOW: Duration = Duration::from_millis(3 * REPLICATE_WAIT_MS_MAX as u64);

pub struct StandbyConfirmations {
    durable: Watermark<()>,
    last_seen: Cell<Option<Instant>>,
}

impl Default for StandbyConfirmations {
    fn default() -> Self {
        Self { durable: Watermark::new(0), last_seen: Cell::new(None) }
    }
}

/// What a sync primary's produce learned of its standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    Confirmed,
    TimedOut,
    NoStandby,
}

impl StandbyConfirmations {
    /// A REPLICATE asked from `position`: the standby has its log durable
    /// up to there.
    pub fn note_request(&self, position: u64) {
        // A standby started over on an empty log asks from further back;
        // what another copy confirmed earlier stays confirmed.
        if position > self.durable.get() {
            self.durable.advance(position);
        }
        self.note_seen();
    }

    pub fn note_seen(&self) {
        self.last_seen.set(Some(Instant::now()));
    }

    pub fn connected(&self) -> bool {
        self.last_seen.get().is_some_and(|seen| seen.elapsed() <= STANDBY_SEEN_WINDOW)
    }

    /// The standby's last reported durable end.
    pub fn confirmed(&self) -> u64 {
        self.durable.get()
    }

    /// Waits (at most `timeout`) for the standby to report `end` durable.
    pub async fn confirm(&self, end: u64, timeout: Duration) -> Confirmation {
        if self.durable.get() >= end {
            return Confirmation::Confirmed;
        }
        if !self.connected() {
            return Confirmation::NoStandby;
        }
        let confirmed = futures_lite::future::or(async { self.durable.wait_for(end).await.is_ok() }, async {
            glommio::timer::sleep(timeout).await;
            false
        })
        .await;
        if confirmed {
            Confirmation::Confirmed
        } else {
            Confirmation::TimedOut
        }
    }
}
