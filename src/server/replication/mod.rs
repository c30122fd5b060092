//! Replication to a standby broker (issue 13, partial): the settings that
//! say which role a broker plays, the primary's REPLICATE answers, and the
//! standby's shards following the primary's. See ARCHITECTURE.md,
//! "Replication (partial)", for what exists so far and what does not.

mod confirmations;
pub mod epochs;
mod lag;
pub mod primary;
pub mod promoted_marker;
pub mod promotion;
mod rejoin;
pub mod release;
mod settings;
pub mod standby;
mod state;
pub use rejoin::settle as settle_history;

pub use confirmations::{Confirmation, StandbyConfirmations};
pub use lag::CaughtUp;
pub use settings::{Replication, ReplicationSettings, Role};
pub use state::ReplicaState;
