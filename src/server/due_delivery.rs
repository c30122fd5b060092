//! The shard's timer task: in the shard's own executor, it makes due timer
//! entries (`timers`) visible in their target queues, a batch at a time,
//! each as an intent then a delivery record (see `timers` for why), and
//! marks them delivered once the batch is durable.

use super::shard::Shard;
use super::timers::{delivery_request, intent_request, Intent, TimerEntry, DELIVERED_KEPT};
use crate::storage::{now_us, LogError};
use std::rc::Rc;
use std::time::Duration;

/// Entries one batch delivers at most.
const BATCH_ENTRIES_MAX: usize = 256;
/// The longest the task sleeps without looking (a new entry wakes it).
const IDLE_SLEEP_MAX: Duration = Duration::from_secs(1);
/// After a failed batch (a full disk, a stopped log), wait this long.
const FAILURE_PAUSE: Duration = Duration::from_millis(500);

pub async fn run(shard: Rc<Shard>) {
    loop {
        if shard.shutting_down.get() {
            return;
        }
        let now_ms = now_us() / 1000;
        let due = shard.timers.borrow().due(now_ms, BATCH_ENTRIES_MAX);
        if due.is_empty() {
            shard.timers.borrow_mut().forget_delivered(now_ms, DELIVERED_KEPT);
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
/// durable, then marks the entries delivered.
async fn deliver(shard: &Shard, due: &[TimerEntry]) -> Result<(), LogError> {
    let mut last = None;
    for entry in due {
        let intent = Intent {
            entry_position: entry.position,
            target_queue_id: entry.target_queue_id,
            expected_offset: shard.log.next_offset(entry.target_queue_id),
            confirmed: shard.timers.borrow().confirmed(),
        };
        let intent_record = shard.log.append_buffered(intent_request(&intent.encode())).await?;
        let body = entry.position.to_le_bytes();
        let delivery = shard.log.append_buffered(delivery_request(entry, &body)).await?;
        last = Some((intent_record.position, delivery.end));
    }
    let Some((last_intent, end)) = last else { return Ok(()) };
    shard.log.wait_acknowledgeable(end).await?;
    let now_ms = now_us() / 1000;
    let mut timers = shard.timers.borrow_mut();
    for entry in due {
        timers.delivered(&entry.key, now_ms);
    }
    timers.confirm(last_intent + 1);
    drop(timers);
    shard.timers_changed();
    Ok(())
}
