//! `role`, `replication`, `sync_standby_timeout_ms`, `standby_of`: which
//! side of a primary/standby pair a broker is, and what a primary promises
//! about its standby before it answers a produce.

use serde::Deserialize;
use std::time::Duration;

/// Default (`sync_standby_timeout_ms`): RocketMQ's wait for its slave.
pub const SYNC_STANDBY_TIMEOUT_MS_DEFAULT: u64 = 5_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes produce; may have a standby follow it.
    #[default]
    Primary,
    /// Follows the primary named by `standby_of`; refuses every change
    /// until promoted (`replication` is then what its produce waits for).
    Standby,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// A produce is answered once the standby reported it durable too.
    Sync,
    /// The standby follows in the background.
    Async,
    /// No standby is expected.
    #[default]
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationSettings {
    pub role: Role,
    pub replication: Replication,
    /// With `Replication::Sync`: past this without the standby's word, a
    /// produce is answered FLUSH_SLAVE_TIMEOUT.
    pub sync_standby_timeout: Duration,
    /// With `Role::Standby`: the primary's base address, `HOST:PORT`.
    pub standby_of: Option<String>,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            role: Role::Primary,
            replication: Replication::Off,
            sync_standby_timeout: Duration::from_millis(SYNC_STANDBY_TIMEOUT_MS_DEFAULT),
            standby_of: None,
        }
    }
}

impl ReplicationSettings {
    /// Refuses combinations that cannot work, naming the setting to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.sync_standby_timeout.is_zero() {
            return Err("sync_standby_timeout_ms must be at least 1".into());
        }
        match self.role {
            Role::Primary => {
                if let Some(primary) = &self.standby_of {
                    return Err(format!(
                        "standby_of {primary:?} is set but role is primary: set role = \"standby\" to follow it, or drop standby_of"
                    ));
                }
            }
            Role::Standby => {
                let Some(primary) = &self.standby_of else {
                    return Err(
                        "role = \"standby\" needs standby_of = \"HOST:PORT\" (the primary's base address)".into()
                    );
                };
                // `replication` on a standby is what it waits for once
                // promoted (`ringmq promote`).
                split_host_port(primary).map_err(|detail| format!("standby_of {primary:?}: {detail}"))?;
            }
        }
        Ok(())
    }
}

/// `HOST:PORT` (`[v6]:PORT` too) into its parts.
pub fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address.rsplit_once(':').ok_or("is not HOST:PORT")?;
    let port = port.parse::<u16>().map_err(|_| "bad port")?;
    let host = host.trim_matches(['[', ']']);
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby_of(address: &str) -> ReplicationSettings {
        ReplicationSettings { role: Role::Standby, standby_of: Some(address.into()), ..ReplicationSettings::default() }
    }

    #[test]
    fn a_standby_needs_a_primary_address_and_a_primary_takes_none() {
        assert!(ReplicationSettings::default().validate().is_ok());
        assert!(standby_of("127.0.0.1:9876").validate().is_ok());
        assert!(standby_of("[::1]:9876").validate().is_ok());
        let lone = ReplicationSettings { role: Role::Standby, ..ReplicationSettings::default() };
        assert!(lone.validate().unwrap_err().contains("standby_of"));
        let primary = ReplicationSettings { standby_of: Some("h:1".into()), ..ReplicationSettings::default() };
        assert!(primary.validate().unwrap_err().contains("role"));
        for bad in ["127.0.0.1", "127.0.0.1:99999", ":9876"] {
            assert!(standby_of(bad).validate().unwrap_err().contains("standby_of"), "{bad}");
        }
    }

    #[test]
    fn a_standby_keeps_its_replication_for_its_promotion_and_a_zero_timeout_is_refused() {
        let waiting = ReplicationSettings { replication: Replication::Sync, ..standby_of("h:1") };
        assert!(waiting.validate().is_ok());
        let zero = ReplicationSettings { sync_standby_timeout: Duration::ZERO, ..ReplicationSettings::default() };
        assert!(zero.validate().unwrap_err().contains("sync_standby_timeout_ms"));
    }
}
