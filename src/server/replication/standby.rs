//! The standby's side: each shard follows the same shard of its primary
//! over a connection of its own, asking REPLICATE from its log's durable end
//! and writing what comes back through `CommitLog::take_replicated`, which
//! verifies every record first. A bad answer or a lost connection is logged
//! and retried with back-off; nothing unverified is ever written.

use super::epochs;
use super::settings::split_host_port;
use crate::client::{AsyncConnection, ClientError};
use crate::constants::{
    GROUP_COMMIT_BUFFER_BYTES_DEFAULT, REPLICATE_BYTES_MAX, REPLICATE_WAIT_MS_MAX, TOPIC_QUEUES_MAX,
};
use crate::protocol::{self, fb, verify, Failure, Kind, ReplicateAsk, ReplicatedBytes};
use crate::server::shard::Shard;
use crate::server::topics::{check_topic_name, Topics};
use crate::storage::{FollowError, ReplicaSpan};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::Instrument;

const BACK_OFF_FIRST: Duration = Duration::from_millis(100);
const BACK_OFF_MAX: Duration = Duration::from_secs(5);
/// Bounds connecting and each request; above the longest REPLICATE wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a standby asks for the primary's topics again (new topics
/// become fetchable on the standby within this).
const TOPICS_REFRESH: Duration = Duration::from_secs(2);

/// Whether a request changes what a broker holds: a standby refuses those
/// (its data is its primary's, byte for byte).
pub fn changes_state(kind: Kind) -> bool {
    use Kind::*;
    matches!(
        kind,
        CreateTopicRequest
            | ProduceRequest
            | JoinGroupRequest
            | HeartbeatRequest
            | LeaveGroupRequest
            | CommitOffsetRequest
            | EndTransactionRequest
            | RegisterProducerRequest
            | SendBackRequest
            | ResendDeadLetterRequest
            | ResetOffsetRequest
    )
}

/// The refusal a standby gives a state-changing request.
pub fn not_primary(primary: &str, kind: Kind) -> Failure {
    Failure::new(
        fb::ErrorCode::NotPrimary,
        format!("this broker is a standby of {primary} and refuses {kind:?}: send it to the primary, {primary}"),
    )
}

/// Why one connection's following ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("the primary refused: {0}")]
    Refused(Failure),
    #[error("a malformed answer: {0}")]
    Malformed(String),
    #[error(transparent)]
    Follow(#[from] FollowError),
    #[error("a promotion stopped the following")]
    Stopped,
    #[error(
        "the primary started epoch {} at log position {} and this log runs past it to {durable}: it holds bytes \
         the primary lost in a crash before they were durable there (never acknowledged); restart this standby \
         to set them aside and follow again",
        epoch.epoch,
        epoch.position
    )]
    Diverged { epoch: crate::protocol::EpochStart, durable: u64 },
}

/// Follows the primary's shard `shard.id` (base address `primary`) until the
/// task is dropped or the log stops.
pub async fn follow(shard: Rc<Shard>, primary: String) {
    let address = match shard_address(&primary, shard.id) {
        Ok(address) => address,
        Err(error) => {
            tracing::error!(%primary, %error, "not following");
            return;
        }
    };
    let span = tracing::info_span!("standby", shard = shard.id, primary = %address);
    follow_address(shard, address).instrument(span).await
}

/// Clears `following` however following ends (a promotion waits for it).
struct Following<'a>(&'a Shard);

impl Drop for Following<'_> {
    fn drop(&mut self) {
        self.0.replica.following.set(false);
    }
}

/// The address of shard `id` of the primary whose base address is `primary`.
pub fn shard_address(primary: &str, id: u32) -> Result<String, String> {
    // `ReplicationSettings::validate` refused other addresses at start.
    let (host, base_port) = split_host_port(primary).map_err(|error| format!("standby_of {primary:?}: {error}"))?;
    let port = u16::try_from(id).ok().and_then(|id| base_port.checked_add(id));
    let port = port.ok_or_else(|| format!("the primary's port for shard {id} is past 65535"))?;
    Ok(format!("{host}:{port}"))
}

async fn follow_address(shard: Rc<Shard>, address: String) {
    shard.replica.following.set(true);
    let _following = Following(&shard);
    let mut back_off = BACK_OFF_FIRST;
    loop {
        if shard.replica.stop_following.get() {
            tracing::info!("no longer following: promoted");
            return;
        }
        if let Some(error) = shard.log.is_stopped() {
            tracing::error!(%error, "the log stopped; no longer following the primary");
            return;
        }
        let ended = match AsyncConnection::connect(&address, REQUEST_TIMEOUT).await {
            Ok(connection) => {
                tracing::info!(position = shard.log.follow_position(), "connected to the primary; following");
                let ended = stream(&shard, &connection, &mut back_off).await;
                drop(connection);
                ended
            }
            Err(error) => StreamEnd::Client(error),
        };
        let refusal = match &ended {
            StreamEnd::Refused(failure) | StreamEnd::Client(ClientError::Broker(failure)) => Some(failure),
            _ => None,
        };
        let position_gone = refusal.filter(|failure| failure.code == fb::ErrorCode::OffsetTruncated);
        let why = match position_gone {
            Some(failure) => format!(
                "the primary no longer holds this standby's position ({failure}); nothing is skipped: stop this \
                 standby, run `ringmq standby resync --data-dir {}` and start it again to copy the primary from its \
                 first segment",
                shard.config.data_dir.display()
            ),
            None => ended.to_string(),
        };
        shard.replica.stream_error.replace(Some(why.clone()));
        match &ended {
            StreamEnd::Stopped => continue,
            StreamEnd::Diverged { .. } => {
                // Only an offline cut (`rejoin`, at the next start) can
                // take the log back; following on would mix two histories.
                tracing::error!("{why}");
                return;
            }
            _ if position_gone.is_some() => tracing::error!("{why}"),
            StreamEnd::Follow(FollowError::Damage(_)) | StreamEnd::Malformed(_) => {
                tracing::error!(error = %ended, "bad replication stream; nothing of it was written; reconnecting")
            }
            _ => tracing::warn!(error = %ended, retry_in_ms = back_off.as_millis() as u64, "not following the primary"),
        }
        // In short steps: a promotion does not wait out a long back-off.
        let resume = Instant::now() + back_off;
        while Instant::now() < resume && !shard.replica.stop_following.get() {
            glommio::timer::sleep(BACK_OFF_FIRST.min(resume.saturating_duration_since(Instant::now()))).await;
        }
        back_off = (back_off * 2).min(BACK_OFF_MAX);
    }
}

/// Bytes received past the durable end, not written yet: the start of a
/// write larger than one answer. Bounded by the largest write a primary
/// makes (its group-commit buffer) plus one answer.
#[derive(Default)]
struct Gathered {
    bytes: Vec<u8>,
    segment_start: u64,
}

/// Asks and writes until something fails; `back_off` is reset by progress.
async fn stream(shard: &Shard, connection: &AsyncConnection, back_off: &mut Duration) -> StreamEnd {
    let mut caught_up = false;
    let mut gathered = Gathered::default();
    let gathered_max = GROUP_COMMIT_BUFFER_BYTES_DEFAULT + REPLICATE_BYTES_MAX as usize;
    // The first request after connecting asks for the topics.
    let mut topics_asked: Option<Instant> = None;
    loop {
        let durable = shard.log.follow_position();
        let position = durable + gathered.bytes.len() as u64;
        let with_topics = topics_asked.is_none_or(|asked| asked.elapsed() >= TOPICS_REFRESH);
        if with_topics {
            topics_asked = Some(Instant::now());
        }
        let ask = ReplicateAsk {
            position,
            confirmed: durable,
            max_bytes: REPLICATE_BYTES_MAX,
            wait_ms: REPLICATE_WAIT_MS_MAX,
            with_topics,
        };
        let answer = match connection.request(Kind::ReplicateRequest, &protocol::replicate_request(&ask)).await {
            Ok(answer) => answer,
            Err(error) => return error.into(),
        };
        let response = match verify::<fb::ReplicateResponse>(&answer) {
            Ok(response) => response,
            Err(error) => return StreamEnd::Malformed(error),
        };
        if let Some(failure) = Failure::from_outcome(response.outcome()) {
            return StreamEnd::Refused(failure);
        }
        if shard.replica.stop_following.get() {
            return StreamEnd::Stopped;
        }
        let replicated = match ReplicatedBytes::read(&response) {
            Ok(replicated) if replicated.position == position => replicated,
            Ok(replicated) => {
                return StreamEnd::Malformed(format!("asked from {position}, answered from {}", replicated.position))
            }
            Err(error) => return StreamEnd::Malformed(error),
        };
        if replicated.epoch.epoch > shard.replica.epoch() && replicated.epoch.position < durable {
            return StreamEnd::Diverged { epoch: replicated.epoch, durable };
        }
        shard.replica.primary_durable.set(replicated.durable);
        shard.replica.stream_error.replace(None);
        shard.replica.caught_up.note(replicated.durable, durable);
        if let Some(topics) = &replicated.topics {
            if let Err(error) = learn_topics(shard, topics) {
                return StreamEnd::Malformed(error);
            }
        }
        if replicated.bytes.is_empty() {
            if !caught_up && position >= replicated.durable {
                tracing::info!(position, "caught up with the primary");
                caught_up = true;
            }
            continue;
        }
        if gathered.bytes.is_empty() {
            gathered.segment_start = replicated.segment_start;
        } else if gathered.segment_start != replicated.segment_start {
            return StreamEnd::Malformed(format!("a write's rest came from segment {}", replicated.segment_start));
        }
        gathered.bytes.extend_from_slice(&replicated.bytes);
        let span = ReplicaSpan {
            position: durable,
            bytes: &gathered.bytes,
            segment_start: gathered.segment_start,
            segment_size_bytes: replicated.segment_size_bytes,
            source_end: replicated.durable,
        };
        let end = match shard.log.take_replicated(span).await {
            Ok(end) => end,
            Err(error) => return error.into(),
        };
        gathered.bytes.drain(..(end - durable) as usize);
        if end > durable {
            *back_off = BACK_OFF_FIRST;
            if let Err(error) = epochs_learned(shard).await {
                return StreamEnd::Malformed(error);
            }
        } else if gathered.bytes.len() > gathered_max {
            return StreamEnd::Malformed(format!("no whole write in {} bytes", gathered.bytes.len()));
        }
        if caught_up && replicated.durable > shard.log.follow_position() {
            tracing::info!(behind_bytes = replicated.durable - shard.log.follow_position(), "fell behind the primary");
            caught_up = false;
        }
    }
}

/// Epoch records that just arrived go into the shard's history (and its
/// `epochs` file) before the standby asks again.
async fn epochs_learned(shard: &Shard) -> Result<(), String> {
    let next_offset = shard.replica.epoch_records_read.get();
    if shard.log.visible_end_offset(crate::server::offsets::EPOCH_QUEUE_ID) <= next_offset {
        return Ok(());
    }
    let records = epochs::read_records(&shard.log, next_offset).await.map_err(|error| error.to_string())?;
    shard.replica.epoch_records_read.set(shard.log.visible_end_offset(crate::server::offsets::EPOCH_QUEUE_ID));
    let known = shard.replica.epoch();
    let Some(history) = shard.replica.epochs.borrow().with_newer(records) else { return Ok(()) };
    for start in history.starts().iter().filter(|start| start.epoch > known) {
        tracing::info!(epoch = start.epoch, position = start.position, "the primary started a new epoch");
    }
    epochs::save(&shard.storage, &shard.dir, &history).await?;
    *shard.replica.epochs.borrow_mut() = history;
    Ok(())
}

/// Takes the primary's topics into this shard's registry (in memory: a
/// restarted standby asks again), so its fetches find them. Untrusted like
/// every byte from the network: a topic whose name, queues or owners could
/// not come from a primary of this shape refuses the whole answer.
fn learn_topics(shard: &Shard, bytes: &[u8]) -> Result<(), String> {
    let topics = Topics::decode(bytes).map_err(|error| format!("the primary's topics: {error}"))?;
    for (name, topic) in &topics.topics {
        // A group's `%RETRY%` and `%DLQ%` topics are the primary's too.
        check_topic_name(name).map_err(|failure| failure.message)?;
        let queues = topic.queue_shards.len();
        if **name != *topic.name || queues == 0 || queues > TOPIC_QUEUES_MAX as usize {
            return Err(format!("the primary's topic {name:?} has {queues} queues or a mismatched name"));
        }
        if topic.id >= u32::MAX / TOPIC_QUEUES_MAX {
            return Err(format!("the primary's topic {name:?} has id {}, past every queue id", topic.id));
        }
        if let Some(owner) = topic.queue_shards.iter().find(|owner| **owner >= shard.shard_count) {
            return Err(format!(
                "the primary's topic {name:?} has a queue on shard {owner}; this standby has {} shards (they must match)",
                shard.shard_count
            ));
        }
    }
    let mut known = shard.topics.borrow_mut();
    for topic in topics.topics.into_values() {
        if known.get(&topic.name) != Some(&topic) {
            tracing::info!(topic = %topic.name, "learned a topic from the primary");
            known.apply(topic);
        }
    }
    Ok(())
}
