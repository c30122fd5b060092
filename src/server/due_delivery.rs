//! The shard's timer task: in the shard's own executor, it makes due timer
//! entries (`timers`) visible in their target queues, a batch at a time,
//! each as an intent then a delivery record (see `timers` for why), and
//! marks them delivered once the batch is durable.

use super::shard::Shard;
use super::timer_records::{delivery_request, intent_request, Intent, TimerEntry};
use super::timers::roll;
use crate::constants::DELIVERED_KEPT;
use crate::storage::{now_us, LogError};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Entries one batch delivers at most.
const BATCH_ENTRIES_MAX: usize = 1024;
/// The longest the task sleeps without looking (a new entry wakes it).
const IDLE_SLEEP_MAX: Duration = Duration::from_secs(1);
/// After a failed batch (a full disk, a stopped log), wait this long.
const FAILURE_PAUSE: Duration = Duration::from_millis(500);
/// How often the task looks whether pending entries hold retention back.
const ROLL_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Entries one roll moves at most.
const ROLL_ENTRIES_MAX: usize = 1024;

/// Pending entries due long after their records would go (a long delay
/// under retention): copied to the log's end, so they no longer hold
/// retention back (RocketMQ's timer rolls its messages the same way).
async fn roll_held_back(shard: &Shard) -> Result<(), LogError> {
    let Some(held_back_to) = shard.log.retention_held_back_to(now_us()) else { return Ok(()) };
    let stale = shard.timers.borrow().pending_below(held_back_to, ROLL_ENTRIES_MAX);
    if stale.is_empty() {
        return Ok(());
    }
    let rolled = roll(&shard.log, &stale).await?;
    tracing::info!(entries = rolled.len(), "rolled timer entries forward past retention");
    let mut timers = shard.timers.borrow_mut();
    for entry in rolled {
        timers.insert(entry);
    }
    drop(timers);
    shard.timers_changed();
    Ok(())
}

pub async fn run(shard: Rc<Shard>) {
    let mut last_roll = Instant::now();
    loop {
        if shard.shutting_down.get() {
            return;
        }
        if last_roll.elapsed() >= ROLL_CHECK_INTERVAL {
            last_roll = Instant::now();
            if let Err(error) = roll_held_back(&shard).await {
                tracing::warn!(%error, "rolling timer entries forward failed; retention waits");
            }
        }
        let now_ms = now_us() / 1000;
        let due = shard.timers.borrow().due(now_ms, BATCH_ENTRIES_MAX);
        if due.is_empty() {
            let next = shard.timers.borrow().next_due_ms();
            let sleep = next.map_or(IDLE_SLEEP_MAX, |due_ms| Duration::from_millis(due_ms.saturating_sub(now_ms)));
            futures_lite::future::or(glommio::timer::sleep(sleep.min(IDLE_SLEEP_MAX)), shard.timer_wake.wait()).await;
            continue;
        }
        if let Err(error) = deliver(&shard, &due).await {
            tracing::warn!(%error, entries = due.len(), "timer deliveries failed; trying again");
            glommio::timer::sleep(FAILURE_PAUSE).await;
        }
    }
}

/// Appends an intent and a delivery per entry, waits for the batch to be
/// durable (also in async flush mode: only then may retention drop what the
/// entries kept), then marks the entries delivered. A failure part way
/// still settles the entries whose records went into the log first, so a
/// later batch never delivers them again.
async fn deliver(shard: &Shard, due: &[TimerEntry]) -> Result<(), LogError> {
    let mut appended = Vec::with_capacity(due.len());
    let mut failure = None;
    for entry in due {
        match append_pair(shard, entry).await {
            Ok(records) => appended.push((entry, records)),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let end = appended.iter().filter_map(|(_, records)| records.map(|(_, end)| end)).max();
    if let Some(end) = end {
        shard.log.wait_durable(end).await?;
    }
    let now_ms = now_us() / 1000;
    let mut timers = shard.timers.borrow_mut();
    for (entry, _) in &appended {
        timers.delivered(&entry.key, now_ms);
    }
    if let Some(last_intent) = appended.iter().filter_map(|(_, records)| records.map(|(intent, _)| intent)).max() {
        timers.confirm(last_intent + 1);
    }
    timers.forget_delivered(now_ms, DELIVERED_KEPT);
    drop(timers);
    shard.timers_changed();
    failure.map_or(Ok(()), Err)
}

/// Appends `entry`'s intent, then its delivery (a copy of the message when
/// it lies in an earlier segment); returns the intent's position and the
/// delivery's end, `None` when the message is gone (the entry is dropped).
async fn append_pair(shard: &Shard, entry: &TimerEntry) -> Result<Option<(u64, u64)>, LogError> {
    let intent = Intent {
        entry_position: entry.position,
        target_queue_id: entry.target_queue_id,
        expected_offset: shard.log.next_offset(entry.target_queue_id),
        confirmed: shard.timers.borrow().confirmed(),
    };
    let intent_record = shard.log.append_buffered(intent_request(&intent.encode())).await?;
    let body = entry.position.to_le_bytes();
    let delivery = match shard.log.append_buffered(delivery_request(entry, &body, None)).await {
        Err(LogError::FarReference { .. }) => {
            // An older segment is durable whole: the message reads back.
            let Some(message) = shard.log.record_at(entry.message_position, entry.message_size).await? else {
                tracing::error!(entry = entry.position, "a timer entry's message is gone; dropping the entry");
                return Ok(None);
            };
            shard.log.append_buffered(delivery_request(entry, &body, Some(&message.message()))).await?
        }
        other => other?,
    };
    Ok(Some((intent_record.position, delivery.end)))
}
