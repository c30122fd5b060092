//! `ringmq standby resync --data-dir DIR`: on a stopped standby whose
//! primary no longer holds its position (retention deleted it), moves every
//! shard's log aside into `DIR/resync-<unix seconds>/` (kept, not deleted:
//! the operator removes it once the copy is whole). Started again, the
//! standby copies its primary from the primary's first segment on. One JSON
//! line: `{"moved_to":"…","shards":N}`.
//!
//! A directory with `promoted.json` belongs to a broker that was promoted:
//! it may be serving as primary, its logs the newest copy of every
//! acknowledged message. Resync refuses it unless `--force` says the
//! operator has made it a standby of another primary.

use crate::server::data_dir::{shard_dirs, sync_dir, DataDirLock};
use crate::server::replication::promoted_marker::{PromotedMarker, PROMOTED_FILE};
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
        /// Also set aside the logs of a broker that was promoted
        /// (`promoted.json`), once it follows another primary.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(command: StandbyCommand) -> Result<ExitCode, String> {
    match command {
        StandbyCommand::Resync { data_dir, force } => resync(&data_dir, force),
    }
}

fn resync(data_dir: &Path, force: bool) -> Result<ExitCode, String> {
    if !data_dir.is_dir() {
        return Err(format!("{} is not a data directory", data_dir.display()));
    }
    // A running broker holds the lock: its logs cannot move under it.
    let _lock = DataDirLock::acquire(data_dir).map_err(|error| error.to_string())?;
    let marker = match force {
        true => None,
        false => {
            PromotedMarker::load(data_dir).map_err(|error| format!("{error} (--force moves it aside all the same)"))?
        }
    };
    if let Some(marker) = marker {
        return Err(format!(
            "{} belongs to a broker promoted to primary (epoch {}, replacing {}): its logs may be the only copy of \
             acknowledged messages, so they stay. If it now follows another primary that no longer holds its \
             position, run again with --force",
            data_dir.display(),
            marker.epoch,
            marker.replaced_primary
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promoted_brokers_logs_stay_unless_forced() {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path();
        std::fs::create_dir(data_dir.join("shard-0")).expect("shard dir");
        let marker = PromotedMarker { epoch: 2, replaced_primary: "127.0.0.1:24000".into() };
        std::fs::write(data_dir.join(PROMOTED_FILE), marker.encode()).expect("marker");

        let refused = resync(data_dir, false).expect_err("a promoted broker's logs are refused");
        assert!(refused.contains("--force") && refused.contains("epoch 2"), "{refused}");
        assert!(data_dir.join("shard-0").is_dir() && data_dir.join(PROMOTED_FILE).is_file());

        resync(data_dir, true).expect("forced");
        assert!(!data_dir.join("shard-0").exists() && !data_dir.join(PROMOTED_FILE).exists());
    }
}
