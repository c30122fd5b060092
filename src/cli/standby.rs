//! `ringmq standby resync --data-dir DIR`: on a stopped standby whose
//! primary no longer holds its position (retention deleted it), moves every
//! shard's log aside into `DIR/resync-<unix seconds>/` (kept, not deleted:
//! the operator removes it once the copy is whole). Started again, the
//! standby copies its primary from the primary's first segment on. One JSON
//! line: `{"moved_to":"…","shards":N}`.

use crate::server::data_dir::{shard_dirs, sync_dir, DataDirLock};
use crate::server::replication::promoted_marker::PROMOTED_FILE;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum StandbyCommand {
    /// Set a stopped standby's logs aside, so that its next start copies
    /// its primary from the primary's first segment.
    Resync {
        /// The standby's data directory (the standby must be stopped).
        #[arg(long, default_value = "ringmq-data")]
        data_dir: PathBuf,
    },
}

pub fn run(command: StandbyCommand) -> Result<ExitCode, String> {
    match command {
        StandbyCommand::Resync { data_dir } => resync(&data_dir),
    }
}

fn resync(data_dir: &Path) -> Result<ExitCode, String> {
    if !data_dir.is_dir() {
        return Err(format!("{} is not a data directory", data_dir.display()));
    }
    // A running broker holds the lock: its logs cannot move under it.
    let _lock = DataDirLock::acquire(data_dir).map_err(|error| error.to_string())?;
    let shards = shard_dirs(data_dir, None)?;
    if shards.is_empty() {
        return Err(format!("no shard directory in {}: nothing to resync", data_dir.display()));
    }
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let aside = data_dir.join(format!("resync-{seconds}"));
    std::fs::create_dir(&aside).map_err(|error| format!("{}: {error}", aside.display()))?;
    for (_, dir) in &shards {
        let Some(name) = dir.file_name() else { continue };
        std::fs::rename(dir, aside.join(name)).map_err(|error| format!("moving {}: {error}", dir.display()))?;
    }
    // A promoted broker's marker belongs to the logs it promoted.
    let marker = data_dir.join(PROMOTED_FILE);
    if marker.exists() {
        std::fs::rename(&marker, aside.join(PROMOTED_FILE))
            .map_err(|error| format!("moving {PROMOTED_FILE}: {error}"))?;
    }
    for dir in [&aside, data_dir] {
        sync_dir(dir).map_err(|error| format!("syncing {}: {error}", dir.display()))?;
    }
    println!("{}", serde_json::json!({ "moved_to": aside.display().to_string(), "shards": shards.len() }));
    Ok(ExitCode::SUCCESS)
}
