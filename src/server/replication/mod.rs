//! Replication to a standby broker (issue 13, partial): the settings that
//! say which role a broker plays, the primary's REPLICATE answers, and the
//! standby's shards following the primary's. See ARCHITECTURE.md,
//! "Replication (partial)", for what exists so far and what does not.

pub mod primary;
mod settings;
pub mod standby;

pub use settings::{Replication, ReplicationSettings, Role};

/// Settings this build parses but cannot honour yet are refused at start
/// rather than ignored: a primary that answered SEND_OK while promising a
/// standby copy it does not make would lose what it promised to keep.
pub fn refuse_unbuilt(settings: &ReplicationSettings) -> Result<(), String> {
    if settings.replication == Replication::Sync {
        return Err("replication = \"sync\" is not built yet (issue 13 is partial; see ARCHITECTURE.md)".into());
    }
    Ok(())
}
