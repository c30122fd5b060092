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
    #[arg(long, default_value = super::BROKER_DEFAULT)]
    broker: String,
}

const COLUMNS: [&str; 8] =
    ["shard", "port", "healthy", "error", "segments", "flushed", "disk_used_bytes", "connections"];

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
        });
        print_row(args.json, &COLUMNS, &row);
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
