//! `ringmq promote`: a standby becomes the primary of a new epoch. The shard
//! that receives PROMOTE promotes itself and asks every other shard to do
//! the same; each one
//! 1. stops following (after the write in progress: its log ends on a
//!    whole write of the old primary's),
//! 2. rebuilds its tables (offsets, producers, transactions, timers) from
//!    its log, as a start does,
//! 3. on shard 0, writes the topic registry it learned to `topics.json`,
//! 4. appends the record that starts the epoch at its log's end, durable,
//!    and adds the epoch to its `epochs` file,
//! 5. then takes state-changing requests and starts the primary's tasks.
//!
//! A promotion that failed on some shard may be asked again: a shard that
//! is already primary of the epoch answers where it started.

use super::epochs::{self, EpochHistory};
use super::promoted_marker::{marker_path, PromotedMarker};
use super::Replication;
use crate::protocol::{self, fb, EpochStart, Failure, Kind, Promoted};
use crate::server::handlers::Answer;
use crate::server::kept_state;
use crate::server::shard::Shard;
use crate::server::topics::TOPICS_FILE;
use crate::storage::backend::Storage;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a shard waits for its following task to stop: one REPLICATE
/// wait and one write of a whole answer, with room to spare.
const FOLLOWING_STOP_MAX: Duration = Duration::from_secs(30);
const FOLLOWING_POLL: Duration = Duration::from_millis(10);

/// One shard's answer: where the epoch starts in its log, and whether this
/// promotion changed it (false: it already was primary of the epoch).
pub type Promotion = Result<(EpochStart, bool), Failure>;

fn internal(detail: String) -> Failure {
    Failure::new(fb::ErrorCode::Internal, detail)
}

/// PROMOTE: every shard of the broker becomes primary of the next epoch.
pub async fn promote(shard: &Rc<Shard>, replication: Option<Replication>) -> Answer {
    let replication = replication.unwrap_or(shard.config.replication.replication);
    // A standby moves to the next epoch; a primary (perhaps promoted by an
    // earlier request that failed on another shard) completes its own.
    let epoch = shard.replica.epoch() + u64::from(shard.replica.is_standby());
    let replaced = shard.replica.standby_of().or_else(|| shard.config.replication.standby_of.clone());
    tracing::info!(epoch, ?replication, "promotion asked");
    let mut starts = Vec::new();
    let mut promoted = false;
    for (id, result) in shard.promote_everywhere(epoch, replication).await {
        let (start, changed) = result.map_err(|failure| {
            Failure::new(failure.code, format!("shard {id} was not promoted: {}; ask again", failure.message))
        })?;
        starts.push(start);
        promoted |= changed;
    }
    if let (true, Some(replaced_primary)) = (promoted, replaced.clone()) {
        let marker = PromotedMarker { epoch, replaced_primary };
        let path = marker_path(&shard.config.data_dir);
        shard
            .storage
            .write_file_atomic(&path, &marker.encode())
            .await
            .map_err(|error| internal(format!("writing {}: {error}", path.display())))?;
    }
    let answer = Promoted { epoch, promoted, starts };
    Ok((Kind::PromoteResponse, protocol::promote_response(None, &answer)))
}

/// Promotes this shard to primary of `epoch`, one promotion at a time.
pub async fn promote_here(shard: &Rc<Shard>, epoch: u64, replication: Replication) -> Promotion {
    if shard.replica.promoting.replace(true) {
        return Err(Failure::new(fb::ErrorCode::InvalidRequest, "a promotion is under way; ask again"));
    }
    let result = promote_once(shard, epoch, replication).await;
    shard.replica.promoting.set(false);
    result
}

async fn promote_once(shard: &Rc<Shard>, epoch: u64, replication: Replication) -> Promotion {
    let current = shard.replica.epochs.borrow().current();
    if !shard.replica.is_standby() {
        return if current.epoch == epoch {
            Ok((current, false))
        } else {
            Err(Failure::new(
                fb::ErrorCode::InvalidRequest,
                format!("shard {} is primary of epoch {}, not {epoch}", shard.id, current.epoch),
            ))
        };
    }
    if epoch <= current.epoch {
        return Err(internal(format!("epoch {epoch} is not past this shard's {}", current.epoch)));
    }
    stop_following(shard).await?;
    let topics = shard.topics.borrow().clone();
    let kept = kept_state::rebuild(shard.id, &shard.config, &shard.dir, &shard.log, &topics)
        .await
        .map_err(|error| internal(format!("rebuilding the tables from the log: {error}")))?;
    kept.install(shard);
    if shard.id == 0 {
        let path = shard.config.data_dir.join(TOPICS_FILE);
        shard
            .storage
            .write_file_atomic(&path, &topics.encode())
            .await
            .map_err(|error| internal(format!("writing the topic table: {error}")))?;
    }
    let history: EpochHistory = shard.replica.epochs.borrow().clone();
    let (history, start) =
        epochs::begin(&shard.storage, &shard.dir, &shard.log, &history, epoch).await.map_err(internal)?;
    *shard.replica.epochs.borrow_mut() = history;
    shard.replica.become_primary(replication);
    *shard.replica.primary_tasks.borrow_mut() = crate::server::primary_tasks(shard);
    tracing::info!(epoch, position = start.position, ?replication, "promoted: primary of a new epoch");
    Ok((start, true))
}

async fn stop_following(shard: &Shard) -> Result<(), Failure> {
    shard.replica.stop_following.set(true);
    let deadline = Instant::now() + FOLLOWING_STOP_MAX;
    while shard.replica.following.get() {
        if Instant::now() > deadline {
            return Err(internal(format!("shard {}: the following did not stop in time", shard.id)));
        }
        glommio::timer::sleep(FOLLOWING_POLL).await;
    }
    Ok(())
}
