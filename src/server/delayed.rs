//! Delayed messages on the produce path: checked against the broker's delay
//! settings, then stored once in `DELAY_QUEUE_ID`, invisible, as a timer
//! entry (`timers`) that the timer task (`due_delivery`) makes visible in
//! the target queue when due.

use super::dedup::StoredSend;
use super::delay_levels::DelayLevels;
use super::offsets::DELAY_QUEUE_ID;
use super::shard::Shard;
use super::timer_records::{TimerEntry, TimerKey};
use super::timers::{due_ms, KnownEntry};
use crate::constants::RECORD_HEADER_SIZE_BYTES;
use crate::storage::record::flags;
use crate::storage::{AppendRequest, LogError};
use crate::wire::VerifiedMessage;
use std::time::Duration;

pub fn is_delayed(message: &VerifiedMessage) -> bool {
    message.delay_level != 0 || message.deliver_at_ms != 0
}

/// Why a delayed message cannot be stored, if it cannot: a level the broker
/// does not have, a deliver-at time farther than `delay_max`, or a half
/// message (its commit decides when it is visible).
pub fn check_delay(
    message: &VerifiedMessage,
    levels: &DelayLevels,
    delay_max: Duration,
    now_ms: u64,
) -> Result<(), String> {
    if !is_delayed(message) {
        return Ok(());
    }
    if message.is_half {
        return Err("a half message cannot be delayed".into());
    }
    let max_ms = delay_max.as_millis() as u64;
    if message.deliver_at_ms != 0 {
        if message.deliver_at_ms > now_ms.saturating_add(max_ms) {
            return Err(format!(
                "deliver_at_ms {} is {} ms from now, farther than delay_max_ms {max_ms}",
                message.deliver_at_ms,
                message.deliver_at_ms - now_ms
            ));
        }
        return Ok(());
    }
    match levels.delay(u32::from(message.delay_level)) {
        None => Err(format!(
            "delay level {}: the broker has levels 1 to {} (delay_levels)",
            message.delay_level,
            levels.len()
        )),
        Some(delay) if delay > delay_max => Err(format!(
            "delay level {} is {} ms, farther than delay_max_ms {max_ms}",
            message.delay_level,
            delay.as_millis()
        )),
        Some(_) => Ok(()),
    }
}

/// Stores a delayed message for the queue `target_queue_id`; `Err(end)`
/// when the shard holds it already (a resend of the same msg id), with the
/// end of its record to wait for (0: delivered).
pub async fn place_delayed(
    shard: &Shard,
    target_queue_id: u32,
    message: &VerifiedMessage,
) -> Result<Result<StoredSend, u64>, LogError> {
    let key = TimerKey::Delayed { msg_id: message.msg_id };
    match shard.timers.borrow().known(&key) {
        Some(KnownEntry::Pending { end, .. }) => return Ok(Err(end)),
        Some(KnownEntry::Delivered) => return Ok(Err(0)),
        None => {}
    }
    let request = AppendRequest {
        queue_id: DELAY_QUEUE_ID,
        flags: flags::DELAYED,
        indexed: true,
        // As a half's: the target queue rides in the header's tag hash.
        tag_hash: target_queue_id,
        message: message.bytes(),
        ..AppendRequest::default()
    };
    let appended = shard.log.append_buffered(request).await?;
    let levels = &shard.config.delay_levels;
    let entry = TimerEntry {
        key,
        position: appended.position,
        end: appended.end,
        due_ms: due_ms(message.delay_level, message.deliver_at_ms, appended.store_timestamp_us, levels),
        target_queue_id,
        message_position: appended.position,
        message_size: (RECORD_HEADER_SIZE_BYTES + message.bytes().len()) as u32,
        tag_hash: message.tag_hash,
        reconsume_times: 0,
        delivery_flag: flags::DELAYED,
    };
    shard.timers.borrow_mut().insert(entry);
    shard.timers_changed();
    Ok(Ok(StoredSend {
        sequence: message.sequence,
        offset: appended.queue_offset.unwrap_or(0),
        store_timestamp_us: appended.store_timestamp_us,
        end: appended.end,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{verify_message, MessageDraft};

    fn delayed(delay_level: u8, deliver_at_ms: u64) -> VerifiedMessage {
        let draft = MessageDraft { topic: "t", body: b"x", delay_level, deliver_at_ms, ..MessageDraft::default() };
        verify_message(draft.build().into()).expect("a valid message")
    }

    #[test]
    fn levels_past_the_list_and_times_past_the_maximum_are_refused() {
        let levels = DelayLevels::parse("1s 1h").expect("levels");
        let max = Duration::from_secs(600);
        let now = 1_000_000;
        assert!(check_delay(&delayed(0, 0), &levels, max, now).is_ok());
        assert!(check_delay(&delayed(1, 0), &levels, max, now).is_ok());
        assert!(check_delay(&delayed(3, 0), &levels, max, now).unwrap_err().contains("levels 1 to 2"));
        assert!(check_delay(&delayed(2, 0), &levels, max, now).unwrap_err().contains("delay_max_ms"));
        assert!(check_delay(&delayed(0, now + 600_000), &levels, max, now).is_ok());
        assert!(check_delay(&delayed(0, now + 600_001), &levels, max, now).unwrap_err().contains("delay_max_ms"));
        assert!(check_delay(&delayed(0, 1), &levels, max, now).is_ok(), "a time in the past is due at once");
    }
}
