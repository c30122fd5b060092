//! `ringmq offset --topic T --queue Q --time EPOCH_MS`: the first offset
//! stored at or after that time.

use super::table::print_row;
use crate::client::{admin, Client};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct OffsetArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    queue: u32,
    /// Milliseconds since the epoch.
    #[arg(long)]
    time: u64,
    /// One JSON object per line instead of tab-separated columns.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = super::BROKER_DEFAULT)]
    broker: String,
}

pub fn run(args: OffsetArgs) -> Result<ExitCode, String> {
    let client = Client::connect(&args.broker).map_err(|error| error.to_string())?;
    let offset =
        admin::offset_at_time(&client, &args.topic, args.queue, args.time).map_err(|error| error.to_string())?;
    let row = serde_json::json!({"topic": args.topic, "queue": args.queue, "time_ms": args.time, "offset": offset});
    print_row(args.json, &["topic", "queue", "time_ms", "offset"], &row);
    Ok(ExitCode::SUCCESS)
}
