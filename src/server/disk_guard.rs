//! Disk protection: above `disk_max_used_percent` of its filesystem a shard
//! refuses produce with `DiskFull` (retriable) instead of filling the disk
//! until an append fails with ENOSPC, which would stop the log; it takes
//! produce again by itself once space returns (retention, an operator).
//! The filesystem is looked at every `CHECK_INTERVAL` by the shard's own
//! task, never per request: a produce reads one `Cell`.

use super::shard::Shard;
use crate::storage::disk_space::filesystem_usage;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// Often enough that a burst cannot fill many GiB unseen, rare enough that
/// a `statvfs` (metadata only, no disk I/O) costs nothing measurable.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// A change of a shard's disk state, logged once per change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Full,
    Resumed,
}

/// Whether a shard takes produce, as of its last look at the filesystem.
pub struct DiskGuard {
    max_used_percent: u8,
    full: Cell<bool>,
    used_percent: Cell<f64>,
}

impl DiskGuard {
    pub fn new(max_used_percent: u8) -> Self {
        Self { max_used_percent, full: Cell::new(false), used_percent: Cell::new(0.0) }
    }

    /// Records a reading; says whether the state changed.
    pub fn observe(&self, used_percent: f64) -> Option<Transition> {
        self.used_percent.set(used_percent);
        let full = used_percent > f64::from(self.max_used_percent);
        match (self.full.replace(full), full) {
            (false, true) => Some(Transition::Full),
            (true, false) => Some(Transition::Resumed),
            _ => None,
        }
    }

    /// The refusal a produce gets while the disk is above the limit.
    pub fn refusal(&self) -> Option<String> {
        self.full.get().then(|| {
            format!(
                "disk full: the data directory's filesystem is {:.1}% used, above disk_max_used_percent {}; \
                 produce is refused until space returns (retention or an operator), retry later",
                self.used_percent.get(),
                self.max_used_percent
            )
        })
    }
}

/// One look at the shard's filesystem; logs a change of state.
pub fn check(shard: &Shard) {
    match filesystem_usage(&shard.dir) {
        Ok(usage) => match shard.disk.observe(usage.used_percent) {
            Some(Transition::Full) => tracing::warn!(
                shard = shard.id,
                used_percent = format!("{:.1}", usage.used_percent),
                available_bytes = usage.available_bytes,
                max_used_percent = shard.config.disk_max_used_percent,
                "disk above disk_max_used_percent: refusing produce until space returns"
            ),
            Some(Transition::Resumed) => tracing::info!(
                shard = shard.id,
                used_percent = format!("{:.1}", usage.used_percent),
                max_used_percent = shard.config.disk_max_used_percent,
                "disk back under disk_max_used_percent: taking produce again"
            ),
            None => {}
        },
        // The state stays as it was: a failing statvfs says nothing of space.
        Err(error) => tracing::warn!(%error, dir = %shard.dir.display(), "cannot read the filesystem usage"),
    }
}

/// The shard's watch over its filesystem, for the life of the shard.
pub async fn watch(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(CHECK_INTERVAL).await;
        check(&shard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_is_refused_above_the_limit_and_taken_again_below_it_with_one_transition_each() {
        let guard = DiskGuard::new(90);
        assert_eq!(guard.observe(50.0), None);
        assert!(guard.refusal().is_none());
        assert_eq!(guard.observe(90.0), None, "at the limit is not above it");
        assert_eq!(guard.observe(90.5), Some(Transition::Full));
        assert_eq!(guard.observe(95.0), None, "one transition, not one per reading");
        let refusal = guard.refusal().expect("refused while full");
        assert!(refusal.contains("95.0% used") && refusal.contains("disk_max_used_percent 90"), "{refusal}");
        assert_eq!(guard.observe(80.0), Some(Transition::Resumed));
        assert!(guard.refusal().is_none());
    }

    #[test]
    fn a_limit_of_100_never_refuses() {
        let guard = DiskGuard::new(100);
        assert_eq!(guard.observe(100.0), None);
        assert!(guard.refusal().is_none());
    }
}
