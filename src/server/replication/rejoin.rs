//! Before a standby's shard opens its log: does its history continue its
//! primary's? An old primary that comes back as a standby of the broker
//! promoted in its place holds records past the new epoch's start that never
//! reached the new primary. They are set aside into a side file
//! (`storage::set_aside_after`), the log is cut to the common history, and
//! the standby follows from there. The shard asks its primary's shard for
//! its epochs (SHARD_STATUS) and waits, retrying, until it answers: a
//! standby that cannot compare histories must not serve or keep bytes the
//! primary may not have.

use super::epochs::{self, Divergence, EpochHistory};
use super::standby::shard_address;
use crate::client::AsyncConnection;
use crate::protocol::{self, fb, verify, Failure, Kind, ShardStatus};
use crate::server::dedup_snapshot::DEDUP_SNAPSHOT_FILE;
use crate::server::offsets::OFFSETS_SNAPSHOT_FILE;
use crate::server::transactions_snapshot::TRANSACTIONS_SNAPSHOT_FILE;
use crate::storage::backend::{DmaStorage, Storage};
use crate::storage::{set_aside_after, LogConfig, SEGMENTS_DIR};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const ASK_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Settles shard `config.dir`'s log with the primary `primary` before it is
/// opened; `stop` ends the wait for an unreachable primary. A new log
/// starts where the primary's does (`config.first_position`) and takes its
/// epochs: retention may have deleted the primary's first segments.
pub async fn settle(
    primary: &str,
    (id, shard_count): (u32, u32),
    config: &mut LogConfig,
    stop: &AtomicBool,
) -> Result<(), String> {
    let address = shard_address(primary, id)?;
    let (theirs, their_shards) = ask_status(&address, stop).await?;
    if their_shards != shard_count {
        return Err(format!(
            "{primary} has {their_shards} shards, this standby {shard_count}: shard i follows shard i, so they must match"
        ));
    }
    let theirs_epochs = EpochHistory::from_starts(theirs.epochs.clone());
    if !has_segments(&config.dir) {
        if theirs.log_start > 0 {
            tracing::info!(
                log_start = theirs.log_start,
                "the primary's log starts past 0: this new log starts there too"
            );
        }
        config.first_position = theirs.log_start;
        if theirs_epochs.starts().is_empty() {
            return Ok(());
        }
        DmaStorage.create_dir_all(&config.dir).await.map_err(|error| format!("{}: {error}", config.dir.display()))?;
        return epochs::save(&DmaStorage, &config.dir, &theirs_epochs).await;
    }
    let ours = epochs::load(&DmaStorage, &config.dir).await?;
    match ours.diverges_from(&theirs_epochs) {
        Divergence::None => Ok(()),
        Divergence::At(position) => set_aside(config, position, &ours).await,
        Divergence::TheyAreBehind { ours, theirs } => Err(format!(
            "{primary} is at epoch {theirs}, this log at epoch {ours}: it is a stale primary (a standby promoted since \
             took its place); point standby_of at the current primary"
        )),
        Divergence::Unrelated { ours } => Err(format!(
            "this log's epoch {} (from position {}) is not in {primary}'s history: the two logs share no known \
             history; move this shard's directory aside to copy the primary from scratch",
            ours.epoch, ours.position
        )),
    }
}

fn has_segments(dir: &Path) -> bool {
    std::fs::read_dir(dir.join(SEGMENTS_DIR)).is_ok_and(|mut entries| entries.next().is_some())
}

/// The primary shard's status, retrying until it answers or `stop`.
async fn ask_status(address: &str, stop: &AtomicBool) -> Result<(ShardStatus, u32), String> {
    let mut retry = RETRY_FIRST;
    let mut asked = 0u32;
    loop {
        match ask_once(address).await {
            Ok(history) => return Ok(history),
            Err(error) => {
                if asked % 10 == 0 {
                    tracing::warn!(%address, %error, "waiting for the primary to compare histories before opening the log");
                }
            }
        }
        asked += 1;
        if stop.load(Ordering::SeqCst) {
            return Err(format!("stopped while waiting for the primary {address}"));
        }
        glommio::timer::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// The shard's status and the broker's shard count.
async fn ask_once(address: &str) -> Result<(ShardStatus, u32), String> {
    let connection = AsyncConnection::connect(address, ASK_TIMEOUT).await.map_err(|error| error.to_string())?;
    let answer = connection
        .request(Kind::ShardStatusRequest, &protocol::shard_status_request())
        .await
        .map_err(|error| error.to_string())?;
    let response = verify::<fb::ShardStatusResponse>(&answer)?;
    if let Some(failure) = Failure::from_outcome(response.outcome()) {
        return Err(failure.to_string());
    }
    let status = ShardStatus::read(&response);
    if status.standby_of.is_some() {
        return Err(format!("{address} is a standby itself; a standby follows a primary"));
    }
    let answer = connection
        .request(Kind::MetadataRequest, &protocol::metadata_request(&[]))
        .await
        .map_err(|error| error.to_string())?;
    let metadata = verify::<fb::MetadataResponse>(&answer)?;
    let shards = metadata.shards().map_or(0, |shards| shards.len() as u32);
    Ok((status, shards))
}

/// Cuts the log at `position`; the snapshots of tables may cover records
/// past it, so they go too (the next start replays the log).
async fn set_aside(config: &LogConfig, position: u64, ours: &EpochHistory) -> Result<(), String> {
    let tail = set_aside_after(&DmaStorage, config, position).await.map_err(|error| error.to_string())?;
    let Some(tail) = tail else {
        tracing::info!(
            position,
            epoch = ours.current().epoch,
            "this log ends where the primary's history parts from it"
        );
        return Ok(());
    };
    tracing::warn!(
        position,
        end = tail.end,
        records = tail.records,
        side_file = %tail.side_file.display(),
        "records past the new primary's epoch start never reached it: set aside in the side file, not lost; the log \
         continues from the common history"
    );
    for file in [OFFSETS_SNAPSHOT_FILE, DEDUP_SNAPSHOT_FILE, TRANSACTIONS_SNAPSHOT_FILE] {
        match std::fs::remove_file(config.dir.join(file)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("removing {file} after the cut: {error}")),
        }
    }
    Ok(())
}
