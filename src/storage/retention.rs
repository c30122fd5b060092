//! Retention: deletes whole segments, oldest first, that are older than the
//! configured age or beyond the configured total size. Never the active
//! segment, never one not yet fully durable, and every queue index forgets
//! the offsets in a segment before its file goes. A failed removal (unlink
//! or the directory fsync after it) stops the log.

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
    let victims = choose(shared, now_us);
    for segment in &victims {
        forget(shared, segment);
        shared
            .storage
            .remove(&segment.path)
            .await
            .map_err(|error| shared.fail_stop(LogError::io("remove segment", &segment.path, segment.start, error)))?;
        tracing::info!(path = %segment.path.display(), "retention deleted a segment");
    }
    Ok(victims.len())
}

fn choose<S: Storage>(shared: &LogShared<S>, now_us: u64) -> Vec<Rc<Segment<S::File>>> {
    let retention = shared.config.retention;
    let state = shared.state.borrow();
    let flushed = shared.flushed.get();
    let active_start = state.filling.segment.start;
    let mut total_bytes: u64 = state.segments.values().map(|segment| segment.size_bytes).sum();
    let mut victims = Vec::new();
    for segment in state.segments.values() {
        // Segments are in position order: stop at the first one that must stay.
        if segment.start >= active_start || segment.end() > flushed {
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

fn forget<S: Storage>(shared: &LogShared<S>, segment: &Segment<S::File>) {
    let mut state = shared.state.borrow_mut();
    for queue in state.queues.values_mut() {
        queue.forget_below(segment.end());
    }
    state.segments.remove(&segment.start);
}
