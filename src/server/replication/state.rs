//! What a shard knows of its place in a primary/standby pair while it runs:
//! its role (a standby becomes a primary when promoted), its epochs, and
//! how far the other side is.

use super::epochs::EpochHistory;
use super::{CaughtUp, Replication, ReplicationSettings, StandbyConfirmations};
use std::cell::{Cell, RefCell};

pub struct ReplicaState {
    /// `Some`: a standby of this primary; `None`: a primary.
    standby_of: RefCell<Option<String>>,
    /// On a primary: what a produce waits for.
    replication: Cell<Replication>,
    pub epochs: RefCell<EpochHistory>,
    /// Offsets of the epoch queue a standby has taken into `epochs`.
    pub epoch_records_read: Cell<u64>,
    /// When primary and standby last had the same bytes durable.
    pub caught_up: CaughtUp,
    /// On a primary: how far its standby has this shard's log durable.
    pub confirmations: StandbyConfirmations,
    /// When a change answered without the standby's confirmation was last
    /// warned about (`release::confirm_change`).
    pub unconfirmed_warned: Cell<Option<std::time::Instant>>,
    /// On a standby: the primary's durable end in its last answer.
    pub primary_durable: Cell<u64>,
    /// On a standby: why its stream to the primary ended last, until the
    /// next answer arrives (`ringmq status`).
    pub stream_error: RefCell<Option<String>>,
    /// Set by a promotion: the following task stops before its next write
    /// and clears `following`.
    pub stop_following: Cell<bool>,
    pub following: Cell<bool>,
    /// The tasks only a primary runs, started at promotion (a primary that
    /// started as one keeps them in its run loop).
    pub primary_tasks: RefCell<Vec<glommio::Task<()>>>,
    /// A promotion of this shard is under way (`promotion`).
    pub promoting: Cell<bool>,
}

impl ReplicaState {
    pub fn new(settings: &ReplicationSettings, epochs: EpochHistory) -> Self {
        Self {
            standby_of: RefCell::new(settings.standby_of.clone()),
            replication: Cell::new(settings.replication),
            epochs: RefCell::new(epochs),
            epoch_records_read: Cell::new(0),
            caught_up: CaughtUp::default(),
            confirmations: StandbyConfirmations::default(),
            unconfirmed_warned: Cell::new(None),
            primary_durable: Cell::new(0),
            stream_error: RefCell::new(None),
            stop_following: Cell::new(false),
            following: Cell::new(false),
            primary_tasks: RefCell::new(Vec::new()),
            promoting: Cell::new(false),
        }
    }

    pub fn standby_of(&self) -> Option<String> {
        self.standby_of.borrow().clone()
    }

    pub fn is_standby(&self) -> bool {
        self.standby_of.borrow().is_some()
    }

    pub fn replication(&self) -> Replication {
        self.replication.get()
    }

    pub fn epoch(&self) -> u64 {
        self.epochs.borrow().current().epoch
    }

    /// The last step of a promotion: from now on this shard is a primary.
    pub fn become_primary(&self, replication: Replication) {
        self.standby_of.replace(None);
        self.stream_error.replace(None);
        self.replication.set(replication);
    }
}
