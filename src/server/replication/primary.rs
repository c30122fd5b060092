//! The primary's side of replication: REPLICATE answers a standby's shard
//! with the durable bytes of this shard's log from the position it asks for.

use super::Confirmation;
use crate::constants::{REPLICATE_BYTES_MAX, REPLICATE_WAIT_MS_MAX};
use crate::protocol::{self, fb, Kind, ReplicatedBytes};
use crate::server::failures::log_failure;
use crate::server::handlers::Answer;
use crate::server::shard::Shard;
use std::time::Duration;

/// `request` was verified when the frame was read (`server::requests`).
pub async fn replicate(shard: &Shard, request: fb::ReplicateRequest<'_>) -> Answer {
    let position = request.position();
    let confirmed = request.confirmed().min(position);
    let max_bytes = match request.max_bytes() {
        0 => REPLICATE_BYTES_MAX,
        asked => asked.min(REPLICATE_BYTES_MAX),
    };
    let wait = Duration::from_millis(u64::from(request.wait_ms().min(REPLICATE_WAIT_MS_MAX)));
    // The standby names its own durable end: that is its confirmation.
    if !shard.replica.confirmations.connected() {
        tracing::info!(shard = shard.id, position, confirmed, "a standby connected and asks for bytes");
    }
    shard.replica.confirmations.note_request(confirmed);
    shard.replica.caught_up.note(shard.log.positions().flushed, confirmed);
    // A sync primary ships each write as soon as its flusher takes it: the
    // standby's write and fdatasync run beside its own, and its producer
    // waits for both. Otherwise only durable bytes go.
    let taken = super::release::is_sync_primary(shard);
    let end = shard.log.replicable_mark(taken);
    if end.get() <= position && !wait.is_zero() {
        // A caught-up standby waits here rather than polling: it hears of a
        // new write at once (sync) or within one fdatasync, which is what a
        // synchronous primary's produce waits on.
        let more = async { end.wait_for(position.saturating_add(1)).await.is_ok() };
        let _ = futures_lite::future::or(more, async {
            glommio::timer::sleep(wait).await;
            false
        })
        .await;
    }
    shard.replica.confirmations.note_seen();
    let raw = shard.log.read_replicable_bytes(position, max_bytes as usize, taken).await.map_err(log_failure)?;
    let epoch = shard.replica.epochs.borrow().current();
    let answer = ReplicatedBytes {
        position: raw.position,
        bytes: raw.bytes,
        durable: raw.durable,
        segment_start: raw.segment_start,
        segment_size_bytes: raw.segment_size_bytes,
        topics: request.with_topics().then(|| shard.topics.borrow().encode()),
        epoch,
    };
    tracing::trace!(shard = shard.id, position, bytes = answer.bytes.len(), "replicate");
    Ok((Kind::ReplicateResponse, protocol::replicate_response(None, &answer)))
}

/// The status a sync primary answers a produce with once `end` is durable
/// here: SEND_OK only when the standby has reported `end` durable too.
pub async fn standby_status(shard: &Shard, end: u64) -> fb::SendStatus {
    match super::release::await_standby(shard, end).await {
        None | Some(Confirmation::Confirmed) => fb::SendStatus::SendOk,
        Some(Confirmation::TimedOut) => fb::SendStatus::FlushSlaveTimeout,
        Some(Confirmation::NoStandby) => fb::SendStatus::SlaveNotAvailable,
    }
}
