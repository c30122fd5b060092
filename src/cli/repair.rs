//! `ringmq repair --data-dir DIR [--shard N]`: on a stopped broker, replaces
//! each damaged range of the commit logs with tombstones for the offsets it
//! lost (the damaged bytes are kept beside the segment), so the broker starts
//! again with every valid record, including those after the damage. One JSON
//! line per range on stdout:
//! `{"shard":0,"segment":"…","position":…,"bytes":…,"records_lost":…,"copy":"…"}`.

use crate::server::data_dir::{shard_dirs, DataDirLock};
use crate::storage::backend::DmaStorage;
use crate::storage::{repair, CommitLog, LogConfig, RepairedRange};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct RepairArgs {
    /// The broker's data directory (the broker must be stopped).
    #[arg(long, default_value = "ringmq-data")]
    data_dir: PathBuf,
    /// Repair only this shard.
    #[arg(long)]
    shard: Option<u32>,
}

pub fn run(args: RepairArgs) -> Result<ExitCode, String> {
    if !args.data_dir.is_dir() {
        return Err(format!("{} is not a data directory", args.data_dir.display()));
    }
    // A running broker holds the lock: repairing under it would race its writes.
    let _lock = DataDirLock::acquire(&args.data_dir).map_err(|error| error.to_string())?;
    let shards = shard_dirs(&args.data_dir, args.shard)?;
    if shards.is_empty() {
        return Err(format!("no shard directory in {}", args.data_dir.display()));
    }
    let mut failed = false;
    for (shard, dir) in shards {
        let repaired = repair_shard(dir.clone()).map_err(|error| format!("shard {shard}: {error}"))?;
        for range in &repaired {
            println!("{}", range_line(shard, range));
        }
        if let Err(error) = check_opens(dir) {
            eprintln!("ringmq: shard {shard} still does not open after repair: {error}");
            failed = true;
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `shard-N` directories of the data directory, in shard order.
fn executor() -> Result<glommio::LocalExecutor, String> {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().map_err(|error| error.to_string())
}

fn repair_shard(dir: PathBuf) -> Result<Vec<RepairedRange>, String> {
    executor()?.run(async move { repair(&DmaStorage, &LogConfig::new(dir)).await.map_err(|error| error.to_string()) })
}

/// Recovery now accepts the shard: open it (rebuilding its indexes) and close.
fn check_opens(dir: PathBuf) -> Result<(), String> {
    executor()?.run(async move {
        let log = CommitLog::open(DmaStorage, LogConfig::new(dir)).await.map_err(|error| error.to_string())?;
        log.close().await.map_err(|error| error.to_string())
    })
}

fn range_line(shard: u32, range: &RepairedRange) -> serde_json::Value {
    let name = |path: &Path| path.file_name().map_or_else(String::new, |name| name.to_string_lossy().into_owned());
    serde_json::json!({
        "shard": shard,
        "segment": name(&range.segment),
        "position": range.position,
        "bytes": range.bytes,
        "records_lost": range.records_lost,
        "copy": range.copy.display().to_string(),
    })
}
