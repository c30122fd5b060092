//! Retention: deletes whole segments, oldest first, that are older than the
//! configured age or beyond the configured total size. Never the active
//! segment, never one not yet fully durable, never one that ends above the
//! last checkpoint written, never one that ends above the
//! retention floor (it may hold state no snapshot covers yet), and every
//! queue index forgets the offsets in a segment before its file goes. A
//! failed removal (unlink or the directory fsync after it) stops the log.
//!
//! A queue's new base offset is its first entry pointing at or past the
//! first kept segment: found by a binary search over its index (every entry
//! points at the record appended for its offset, so entries point forwards
//! as offsets grow; an op record's reference back is followed only by
//! reads). The index file's blocks below the new base go at the next
//! checkpoint (`checkpoint`).

use super::backend::Storage;
use super::log::LogShared;
use super::segment::Segment;
use super::LogError;
use std::rc::Rc;

/// Deletes what retention allows; returns how many segments went.
pub async fn enforce<S: Storage>(shared: &Rc<LogShared<S>>, now_us: u64) -> Result<usize, LogError> {
    let retention = shared.config.retention;
    if retention.max_age.is_none() && retention.max_total_bytes.is_none() {
        return Ok(0);
    }
    let mut victims = choose(shared, now_us);
    let Some(last) = victims.last() else { return Ok(0) };
    forget_below(shared, last.end()).await?;
    // The floor may have dropped while the queues forgot (a send-back
    // pinned a message it is about to point at): keep what it covers now.
    // Its queue offsets are forgotten already; reads by position still work.
    let floor = shared.retention_floor.get();
    victims.retain(|segment| segment.end() <= floor);
    {
        let mut state = shared.state.borrow_mut();
        for segment in &victims {
            state.segments.remove(&segment.start);
        }
    }
    for segment in &victims {
        shared
            .storage
            .remove(&segment.path)
            .await
            .map_err(|error| shared.fail_stop(LogError::io("remove segment", &segment.path, segment.start, error)))?;
        super::key_lookup::forget_segment(shared, segment.start, segment.end()).await?;
        tracing::info!(path = %segment.path.display(), "retention deleted a segment");
    }
    Ok(victims.len())
}

/// Where the retention floor holds retention back: the end of the oldest
/// segment it would delete now but for the floor. A holder of the floor
/// (a timer entry due long after) moves what it keeps past it.
pub fn held_back_to<S: Storage>(shared: &LogShared<S>, now_us: u64) -> Option<u64> {
    let retention = shared.config.retention;
    let state = shared.state.borrow();
    let floor = shared.retention_floor.get();
    let active_start = state.filling.segment.start;
    let mut total_bytes: u64 = state.segments.values().map(|segment| segment.size_bytes).sum();
    for segment in state.segments.values() {
        let too_big = retention.max_total_bytes.is_some_and(|max| total_bytes > max);
        let age_us = now_us.saturating_sub(segment.last_store_timestamp_us.get());
        let too_old = retention.max_age.is_some_and(|max| u128::from(age_us) > max.as_micros());
        if segment.start >= active_start || (!too_big && !too_old) {
            return None;
        }
        if segment.end() > floor {
            return Some(segment.end());
        }
        total_bytes -= segment.size_bytes;
    }
    None
}

fn choose<S: Storage>(shared: &LogShared<S>, now_us: u64) -> Vec<Rc<Segment<S::File>>> {
    let retention = shared.config.retention;
    let state = shared.state.borrow();
    // The checkpoint written is durable, so a segment below it is too. Past
    // it (a full disk refused the later ones), a restart would scan from it
    // into a deleted segment, and a queue whose records there are gone
    // would lose where its offsets were.
    debug_assert!(state.checkpoint_position <= shared.flushed.get());
    let kept_above = state.checkpoint_position.min(shared.retention_floor.get());
    let active_start = state.filling.segment.start;
    let mut total_bytes: u64 = state.segments.values().map(|segment| segment.size_bytes).sum();
    let mut victims = Vec::new();
    for segment in state.segments.values() {
        // Segments are in position order: stop at the first one that must stay.
        if segment.start >= active_start || segment.end() > kept_above {
            break;
        }
        let too_big = retention.max_total_bytes.is_some_and(|max| total_bytes > max);
        let age_us = now_us.saturating_sub(segment.last_store_timestamp_us.get());
        let too_old = retention.max_age.is_some_and(|max| u128::from(age_us) > max.as_micros());
        if !too_big && !too_old {
            break;
        }
        total_bytes -= segment.size_bytes;
        victims.push(segment.clone());
    }
    victims
}

/// After recovery: the checkpoint may predate retention's last deletions,
/// so the queues forget the offsets below the first segment left.
pub async fn forget_deleted_segments<S: Storage>(shared: &LogShared<S>) -> Result<(), LogError> {
    let first_start = shared.state.borrow().segments.keys().next().copied();
    match first_start {
        Some(start) => forget_below(shared, start).await,
        None => Ok(()),
    }
}

/// Every queue forgets the offsets whose entries point below `position`.
async fn forget_below<S: Storage>(shared: &LogShared<S>, position: u64) -> Result<(), LogError> {
    let queue_ids: Vec<u32> = shared.state.borrow().queues.keys().copied().collect();
    for queue_id in queue_ids {
        let base = first_offset_at(shared, queue_id, position).await?;
        if let Some(queue) = shared.state.borrow_mut().queues.get_mut(&queue_id) {
            queue.advance_base(base);
        }
    }
    Ok(())
}

/// The first offset of `queue_id` whose entry points at or past `position`
/// (the queue's next offset if none does).
async fn first_offset_at<S: Storage>(shared: &LogShared<S>, queue_id: u32, position: u64) -> Result<u64, LogError> {
    let bounds = shared.state.borrow().queues.get(&queue_id).map(|queue| (queue.base_offset(), queue.next_offset()));
    let Some((mut low, mut high)) = bounds else { return Ok(0) };
    // Most queues keep their base: one look settles them.
    if low == high || !points_below(shared, queue_id, low, position).await? {
        return Ok(low);
    }
    low += 1;
    while low < high {
        let middle = low + (high - low) / 2;
        if points_below(shared, queue_id, middle, position).await? {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

/// Whether the entry of `offset` points below `position` (an offset gone
/// meanwhile counts as below).
async fn points_below<S: Storage>(
    shared: &LogShared<S>,
    queue_id: u32,
    offset: u64,
    position: u64,
) -> Result<bool, LogError> {
    Ok(shared.index_entry(queue_id, offset).await?.is_none_or(|entry| entry.position < position))
}

#[cfg(test)]
mod tests {
    use crate::storage::backend::MemoryStorage;
    use crate::storage::tests::run;
    use crate::storage::{AppendRequest, CommitLog, LogConfig};

    #[test]
    fn retention_keeps_every_segment_above_the_floor() {
        run(async {
            let mut config = LogConfig {
                segment_size_bytes: 64 * 1024,
                buffer_capacity_bytes: 16 * 1024,
                recent_buffers_bytes: 64 * 1024,
                ..LogConfig::new("/memory")
            };
            config.retention.max_total_bytes = Some(2 * config.segment_size_bytes);
            let log = CommitLog::open(MemoryStorage::new(), config).await.expect("open");
            let message = [7u8; 1000];
            for _ in 0..400 {
                let request = AppendRequest { queue_id: 1, indexed: true, message: &message, ..Default::default() };
                log.append(request).await.expect("append");
            }
            let floor = log.position_of(1, 100).await.expect("read").expect("offset 100 is indexed");
            log.set_retention_floor(floor);
            log.checkpoint().await.expect("checkpoint");
            log.enforce_retention(crate::storage::now_us()).await.expect("retention");
            let kept = log.base_offset(1);
            assert!(kept > 0, "retention deleted nothing below the floor");
            let kept_position = log.position_of(1, kept).await.expect("read").expect("the earliest kept offset");
            assert!(kept_position <= floor, "a segment above the floor went: kept from {kept_position}, floor {floor}");
            log.set_retention_floor(u64::MAX);
            log.enforce_retention(crate::storage::now_us()).await.expect("retention");
            assert!(log.base_offset(1) > kept, "lifting the floor lets retention go on");
            log.close().await.expect("close");
        });
    }
}
