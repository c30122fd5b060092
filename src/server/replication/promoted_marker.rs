//! `<data_dir>/promoted.json`: written once a promotion reached every shard.
//! A promoted broker restarted with the configuration it had as a standby
//! (`role = "standby"`, `standby_of` its old primary) must not go back to
//! following the primary it replaced: it starts as primary, and says why.
//! A `standby_of` naming another broker is the operator's new choice and is
//! followed (the epochs then find where the histories part).

use super::{ReplicationSettings, Role};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const PROMOTED_FILE: &str = "promoted.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotedMarker {
    pub epoch: u64,
    /// The primary this broker was a standby of when promoted.
    pub replaced_primary: String,
}

pub fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(PROMOTED_FILE)
}

impl PromotedMarker {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The marker in `data_dir`, if any; an unreadable one is an error (it
    /// decides which role the broker takes).
    pub fn load(data_dir: &Path) -> Result<Option<Self>, String> {
        let path = marker_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|error| format!("{}: {error}", path.display()))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(format!("{}: {error}", path.display())),
        }
    }

    /// Settings as the marker says they are now: a standby of the very
    /// primary it replaced is a primary.
    pub fn apply(&self, settings: &mut ReplicationSettings) -> bool {
        if settings.role == Role::Standby && settings.standby_of.as_deref() == Some(self.replaced_primary.as_str()) {
            settings.role = Role::Primary;
            settings.standby_of = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_of_the_replaced_primary_starts_as_primary_and_another_primary_is_followed() {
        let marker = PromotedMarker { epoch: 1, replaced_primary: "10.0.0.1:9876".into() };
        let standby_of = |primary: &str| ReplicationSettings {
            role: Role::Standby,
            standby_of: Some(primary.into()),
            ..ReplicationSettings::default()
        };
        let mut same = standby_of("10.0.0.1:9876");
        assert!(marker.apply(&mut same));
        assert_eq!((same.role, same.standby_of), (Role::Primary, None));
        let mut other = standby_of("10.0.0.2:9876");
        assert!(!marker.apply(&mut other));
        assert_eq!(other.role, Role::Standby);
        assert_eq!(serde_json::from_slice::<PromotedMarker>(&marker.encode()).ok(), Some(marker));
    }
}
