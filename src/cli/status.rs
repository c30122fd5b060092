//! `ringmq status`: one line per shard, as the shard tells it.

use super::table::print_row;
use crate::client::{admin, Client};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// One JSON object per line instead of tab-separated columns.
    #[arg(long)]
    json: bool,
    /// Six more columns: the shard's role (primary or standby), its
    /// primary (on a standby), the replication lag in bytes, whether a
    /// standby is connected (on a primary), the epoch and the replication
    /// lag in milliseconds. `--json` always has them.
    #[arg(long)]
    replication: bool,
    #[arg(long, default_value = super::BROKER_DEFAULT)]
    broker: String,
}

const COLUMNS: [&str; 8] =
    ["shard", "port", "healthy", "error", "segments", "flushed", "disk_used_bytes", "connections"];

/// With `--replication`, after the eight columns scripts read by position.
const REPLICATION_COLUMNS: [&str; 14] = [
    "shard",
    "port",
    "healthy",
    "error",
    "segments",
    "flushed",
    "disk_used_bytes",
    "connections",
    "role",
    "standby_of",
    "replication_lag_bytes",
    "standby_connected",
    "epoch",
    "replication_lag_ms",
];

pub fn run(args: StatusArgs) -> Result<ExitCode, String> {
    let client = Client::connect(&args.broker).map_err(|error| error.to_string())?;
    let statuses = admin::shard_statuses(&client).map_err(|error| error.to_string())?;
    for status in &statuses {
        let row = serde_json::json!({
            "shard": status.shard,
            "port": status.port,
            "healthy": status.error.is_none(),
            "error": status.error,
            "segments": status.segments,
            "flushed": status.flushed,
            "disk_used_bytes": status.disk_used_bytes,
            "connections": status.connections,
            "role": status.role_name(),
            "standby_of": status.standby_of,
            "replication_lag_bytes": status.replication_lag_bytes,
            "standby_connected": status.standby_connected,
            "epoch": status.epoch,
            "replication_lag_ms": status.replication_lag_ms,
            "diverged_files": status.diverged_files,
            "log_start": status.log_start,
            "replication_error": status.replication_error,
        });
        let columns: &[&str] = if args.replication { &REPLICATION_COLUMNS } else { &COLUMNS };
        print_row(args.json, columns, &row);
    }
    // A script can tell a fail-stopped shard from the exit code alone.
    let unhealthy: Vec<String> =
        statuses.iter().filter(|status| status.error.is_some()).map(|status| status.shard.to_string()).collect();
    if unhealthy.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("ringmq: shard {} not healthy (see its error column)", unhealthy.join(", "));
    Ok(ExitCode::FAILURE)
}
