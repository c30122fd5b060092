//! What a primary's shard knows of its standby: how far the standby has its
//! log durable (each REPLICATE asks from the standby's durable end, so the
//! request itself is the report) and when it last asked; and, for a sync
//! primary's consumers, how far the log is released: confirmed by the
//! standby, or given up on by a request that waited for it.

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
    /// What a sync primary's consumers may see: at least `durable`, and the
    /// end of every wait for the standby that gave up (its requester was
    /// told the record is stored, so it must not stay hidden).
    released: Watermark<()>,
}

impl Default for StandbyConfirmations {
    fn default() -> Self {
        Self { durable: Watermark::new(0), last_seen: Cell::new(None), released: Watermark::new(0) }
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
        self.release(position);
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

    /// Consumers of a sync primary may see the log up to `end` from now on.
    pub fn release(&self, end: u64) {
        if end > self.released.get() {
            self.released.advance(end);
        }
    }

    /// How far consumers of a sync primary may see the log.
    pub fn released(&self) -> u64 {
        self.released.get()
    }

    /// Resolves once the released position passes `position`.
    pub async fn wait_released_beyond(&self, position: u64) {
        // The mark never fails: `release` is its only writer.
        let _ = self.released.wait_for(position.saturating_add(1)).await;
    }

    /// Waits (at most `timeout`) for the standby to report `end` durable;
    /// a wait that gives up releases `end` all the same (see `released`).
    pub async fn confirm_or_release(&self, end: u64, timeout: Duration) -> Confirmation {
        let confirmation = self.confirm(end, timeout).await;
        if confirmation != Confirmation::Confirmed {
            self.release(end);
        }
        confirmation
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(test: impl std::future::Future<Output = ()> + 'static) {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(test);
    }

    #[test]
    fn what_the_standby_confirms_is_released() {
        let confirmations = StandbyConfirmations::default();
        confirmations.note_request(500);
        assert_eq!((confirmations.confirmed(), confirmations.released()), (500, 500));
        // A standby started over asks from further back: nothing is hidden again.
        confirmations.note_request(100);
        assert_eq!((confirmations.confirmed(), confirmations.released()), (500, 500));
    }

    /// A task waiting (`confirm_or_release`) for `end`.
    fn spawn_wait(
        confirmations: &std::rc::Rc<StandbyConfirmations>,
        end: u64,
        timeout: Duration,
    ) -> glommio::Task<Confirmation> {
        let confirmations = confirmations.clone();
        glommio::spawn_local(async move { confirmations.confirm_or_release(end, timeout).await })
    }

    #[test]
    fn a_wait_with_no_standby_releases_its_end_at_once() {
        run(async {
            let confirmations = StandbyConfirmations::default();
            let confirmation = confirmations.confirm_or_release(700, Duration::from_secs(60)).await;
            assert_eq!(confirmation, Confirmation::NoStandby);
            assert_eq!((confirmations.confirmed(), confirmations.released()), (0, 700));
        });
    }

    #[test]
    fn a_wait_that_times_out_releases_its_end_only_then() {
        run(async {
            let confirmations = std::rc::Rc::new(StandbyConfirmations::default());
            confirmations.note_request(100);
            let waiting = spawn_wait(&confirmations, 900, Duration::from_millis(200));
            glommio::timer::sleep(Duration::from_millis(50)).await;
            assert_eq!(confirmations.released(), 100, "released before the wait gave up");
            assert_eq!(waiting.await, Confirmation::TimedOut);
            assert_eq!((confirmations.confirmed(), confirmations.released()), (100, 900));
        });
    }

    #[test]
    fn a_confirmed_wait_leaves_the_release_to_the_confirmation() {
        run(async {
            let confirmations = std::rc::Rc::new(StandbyConfirmations::default());
            confirmations.note_request(100);
            let waiting = spawn_wait(&confirmations, 300, Duration::from_secs(60));
            glommio::timer::sleep(Duration::from_millis(20)).await;
            confirmations.note_request(400);
            assert_eq!(waiting.await, Confirmation::Confirmed);
            assert_eq!(confirmations.released(), 400);
        });
    }

    #[test]
    fn a_release_wakes_those_waiting_for_it() {
        run(async {
            let confirmations = std::rc::Rc::new(StandbyConfirmations::default());
            let waiter = {
                let confirmations = confirmations.clone();
                glommio::spawn_local(async move { confirmations.wait_released_beyond(0).await })
            };
            glommio::timer::sleep(Duration::from_millis(20)).await;
            confirmations.release(50);
            let woken = crate::storage::tests::resolves_within(waiter, Duration::from_secs(5)).await;
            assert!(woken, "a release woke no one");
        });
    }
}
