//! Start-up: no shard listens before every shard has recovered, so a client
//! never reaches a shard that answers while another still replays its log.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// How often a recovered shard looks whether the others are done.
const POLL: Duration = Duration::from_millis(5);

pub struct StartGate {
    shards: u32,
    recovered: AtomicU32,
    failed: AtomicBool,
}

impl StartGate {
    pub fn new(shards: u32) -> Self {
        Self { shards, recovered: AtomicU32::new(0), failed: AtomicBool::new(false) }
    }

    pub fn recovered(&self) {
        self.recovered.fetch_add(1, Ordering::SeqCst);
    }

    /// A shard could not start: the others must not wait for it.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// A guard that calls `fail` when dropped before `recovered` (a shard
    /// that returns early or panics while recovering).
    pub fn watch(self: &std::sync::Arc<Self>) -> Recovering {
        Recovering { gate: Some(self.clone()) }
    }

    /// Resolves once every shard recovered (`true`) or one failed (`false`).
    pub async fn all_recovered(&self) -> bool {
        loop {
            if self.failed.load(Ordering::SeqCst) {
                return false;
            }
            if self.recovered.load(Ordering::SeqCst) >= self.shards {
                return true;
            }
            glommio::timer::sleep(POLL).await;
        }
    }
}

/// A shard's recovery in progress; see `StartGate::watch`.
pub struct Recovering {
    gate: Option<std::sync::Arc<StartGate>>,
}

impl Recovering {
    pub fn recovered(mut self) {
        if let Some(gate) = self.gate.take() {
            gate.recovered();
        }
    }
}

impl Drop for Recovering {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.fail();
        }
    }
}
