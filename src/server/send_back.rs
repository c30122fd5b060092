//! Retry and dead-letter routing. A consumer's RECONSUME_LATER becomes a
//! send-back to the shard that holds the message: a timer entry (`timers`)
//! pointing at the message's record (no copy), delivered into the group's
//! retry topic `%RETRY%G` after its back-off, or, past the consumer's
//! `max_reconsume_times`, into its dead-letter topic `%DLQ%G` at once.
//! Both topics have queue `i` on shard `i`, so the entry, the message and
//! the delivery stay in one shard's log. `ringmq dlq resend` puts a dead
//! letter back on its original queue the same way, once per round.

use super::failures::log_failure;
use super::replication::release;
use super::shard::{Shard, TimerPin};
use super::timer_records::{deliveries_before, delivery_position, entry_request, EntryBody, TimerEntry, TimerKey};
use super::timers::KnownEntry;
use super::topics::check_name;
use crate::constants::FRAME_BODY_BYTES_MAX;
use crate::protocol::{dead_letter_topic, fb, retry_topic, Failure};
use crate::storage::record::flags;
use crate::storage::{now_us, StoredRecord};
use crate::wire::{verify_message, VerifiedMessage};

/// What a send-back stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentBack {
    pub dead_letter: bool,
    pub reconsume_times: u32,
    pub duplicate: bool,
    pub due_at_ms: u64,
}

/// What a dead-letter resend did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resent {
    pub resent: bool,
    pub original_topic: String,
    pub original_queue: u32,
}

/// A consumer of `group` answered RECONSUME_LATER for the message at
/// `offset` of the shard's queue `queue_id`.
pub async fn send_back(
    shard: &Shard,
    group: &str,
    queue_id: u32,
    offset: u64,
    max_reconsume_times: u32,
    delay_level: u8,
) -> Result<SentBack, Failure> {
    check_name("group", group)?;
    let (record, message, pin) = message_at(shard, queue_id, offset).await?;
    let delivered_before = deliveries_before(&record);
    let dead_letter = delivered_before >= max_reconsume_times;
    let topic_name = if dead_letter { dead_letter_topic(group) } else { retry_topic(group) };
    let target_queue_id = shard.internal_topic(&topic_name).await?.queue_id(shard.id);
    let reconsume_times = delivered_before.saturating_add(1);
    let key = TimerKey::SendBack { target_queue_id, from_position: delivery_position(&record) };
    let now_ms = now_us() / 1000;
    let levels = &shard.config.delay_levels;
    let due_at_ms = match dead_letter {
        true => now_ms,
        false => {
            let level = match delay_level {
                0 => levels.retry_level(delivered_before),
                level => u32::from(level).min(levels.len() as u32),
            };
            now_ms.saturating_add(levels.delay(level).unwrap_or_default().as_millis() as u64)
        }
    };
    let delivery_flag = if dead_letter { flags::DEAD_LETTER } else { flags::RETRY };
    let body = EntryBody { due_ms: due_at_ms, target_queue_id, delivery_flag, key };
    let stored = store_entry(shard, &record, &message, body, reconsume_times).await?;
    drop(pin);
    shard.counters.sent_back(dead_letter, stored.is_some());
    Ok(SentBack { dead_letter, reconsume_times, duplicate: stored.is_some(), due_at_ms: stored.unwrap_or(due_at_ms) })
}

/// Puts the dead letter at `offset` of queue `queue` of `%DLQ%<group>` back
/// on its original queue, unless it went back before and not `again`.
pub async fn resend_dead_letter(
    shard: &Shard,
    group: &str,
    queue: u32,
    offset: u64,
    again: bool,
) -> Result<Resent, Failure> {
    check_name("group", group)?;
    let dead_letters = shard.topic(&dead_letter_topic(group))?;
    let queue_id = shard.owned_queue(&dead_letters, queue)?;
    let (record, message, pin) = message_at(shard, queue_id, offset).await?;
    let fields = message.message();
    let original = shard.topic(fields.topic())?;
    // The message's record is in this shard's log, so its queue is too.
    let target_queue_id = shard.owned_queue(&original, message.queue)?;
    let resent = Resent { resent: false, original_topic: original.name.to_string(), original_queue: message.queue };
    let round = shard.timers.borrow().resend_rounds(queue_id, offset);
    if round > 0 && !again {
        return Ok(resent);
    }
    let key = TimerKey::Resend { dead_letter_queue_id: queue_id, offset, round };
    let body = EntryBody { due_ms: now_us() / 1000, target_queue_id, delivery_flag: flags::RETRY, key };
    store_entry(shard, &record, &message, body, 0).await?;
    drop(pin);
    Ok(Resent { resent: true, ..resent })
}

/// The message at `offset` of `queue_id`, read through any reference, and
/// a pin that keeps retention off its record until the entry pointing at it
/// is in the timer table.
async fn message_at(
    shard: &Shard,
    queue_id: u32,
    offset: u64,
) -> Result<(StoredRecord, VerifiedMessage, TimerPin<'_>), Failure> {
    let batch = shard.log.read(queue_id, offset, 1, FRAME_BODY_BYTES_MAX).await.map_err(log_failure)?;
    let Some(record) = batch.records.into_iter().next().filter(|record| record.queue_offset == offset) else {
        return Err(Failure::new(
            fb::ErrorCode::InvalidRequest,
            format!("no message at offset {offset} of this queue (its end is {})", batch.visible_end_offset),
        ));
    };
    // In the same step as the check: retention keeps the record from now on,
    // or had deleted it already.
    let pin = shard.pin_for_timers(record.position);
    if !shard.log.keeps(record.position) {
        return Err(Failure::new(fb::ErrorCode::OffsetTruncated, format!("retention deleted offset {offset}")));
    }
    let message = verify_message(record.message())
        .map_err(|error| Failure::new(fb::ErrorCode::Internal, format!("a stored message does not verify: {error}")))?;
    Ok((record, message, pin))
}

/// Appends a timer entry pointing at `record` and waits until it is
/// durable; `Ok(Some(due))` without appending when `key` is known (pending
/// until `due`, once its record is acknowledgeable; or delivered: `Some(0)`).
async fn store_entry(
    shard: &Shard,
    record: &StoredRecord,
    message: &VerifiedMessage,
    body: EntryBody,
    reconsume_times: u32,
) -> Result<Option<u64>, Failure> {
    let key = body.key;
    let known = shard.timers.borrow().known(&key);
    match known {
        Some(KnownEntry::Pending { due_ms, end }) => {
            shard.log.wait_acknowledgeable(end).await.map_err(log_failure)?;
            release::confirm_change(shard, end, "send back or dead-letter resend").await;
            return Ok(Some(due_ms));
        }
        Some(KnownEntry::Delivered) => return Ok(Some(0)),
        None => {}
    }
    let encoded = body.encode();
    let request = entry_request(&encoded, (record.position, record.header.length), message.tag_hash, reconsume_times);
    let appended = shard.log.append_buffered(request).await.map_err(log_failure)?;
    let entry = TimerEntry {
        key,
        position: appended.position,
        end: appended.end,
        due_ms: body.due_ms,
        target_queue_id: body.target_queue_id,
        message_position: record.position,
        message_size: record.header.length,
        tag_hash: message.tag_hash,
        reconsume_times,
        delivery_flag: body.delivery_flag,
    };
    // In the table before it is durable: its delivery lands after it in the
    // log, so a delivery that is durable vouches for the entry.
    shard.timers.borrow_mut().insert(entry);
    shard.timers_changed();
    shard.log.wait_acknowledgeable(appended.end).await.map_err(log_failure)?;
    release::confirm_change(shard, appended.end, "send back or dead-letter resend").await;
    Ok(None)
}
