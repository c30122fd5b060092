//! `ringmq promote`: turns a standby into the primary of a new epoch (issue
//! 13). What an operator or an external controller runs once the old
//! primary is known dead or fenced (ARCHITECTURE.md, "Failover").

use super::table::print_row;
use crate::client::{admin, Client};
use crate::protocol::fb;
use crate::server::replication::Replication;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// What the new primary's produce waits for; by default its configured
    /// `replication`.
    #[arg(long, value_enum)]
    replication: Option<Replication>,
    /// One JSON object per line instead of tab-separated columns.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = super::BROKER_DEFAULT)]
    broker: String,
}

const COLUMNS: [&str; 4] = ["shard", "epoch", "epoch_start", "promoted"];

pub fn run(args: PromoteArgs) -> Result<ExitCode, String> {
    let client = Client::connect(&args.broker).map_err(|error| error.to_string())?;
    let replication = args.replication.map(|replication| match replication {
        Replication::Off => fb::PromoteReplication::Off,
        Replication::Async => fb::PromoteReplication::Async,
        Replication::Sync => fb::PromoteReplication::Sync,
    });
    let promoted = admin::promote(&client, replication).map_err(|error| error.to_string())?;
    for (shard, start) in promoted.starts.iter().enumerate() {
        let row = serde_json::json!({
            "shard": shard,
            "epoch": promoted.epoch,
            "epoch_start": start.position,
            "promoted": promoted.promoted,
        });
        print_row(args.json, &COLUMNS, &row);
    }
    if !promoted.promoted {
        eprintln!("ringmq: {} already was primary of epoch {}; nothing changed", args.broker, promoted.epoch);
    }
    Ok(ExitCode::SUCCESS)
}
