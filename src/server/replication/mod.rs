//! Replication to a standby broker (issue 13, partial): the settings that
//! say which role a broker plays and how a primary waits for its standby.
//! See ARCHITECTURE.md, "Replication (partial)", for what exists so far.

pub mod primary;
mod settings;

pub use settings::{Replication, ReplicationSettings, Role};

/// Settings this build parses but cannot honour yet are refused at start
/// rather than ignored: a primary that answered SEND_OK while promising a
/// standby copy it does not make would lose what it promised to keep.
pub fn refuse_unbuilt(settings: &ReplicationSettings) -> Result<(), String> {
    if settings.role == Role::Standby {
        return Err("role = \"standby\" is not built yet (issue 13 is partial; see ARCHITECTURE.md)".into());
    }
    if settings.replication != Replication::Off {
        return Err(format!(
            "replication = \"{}\" is not built yet (issue 13 is partial; see ARCHITECTURE.md)",
            format!("{:?}", settings.replication).to_lowercase()
        ));
    }
    Ok(())
}
