//! What a consumer may see of a shard's log, and the fetch's long poll on
//! it. A consumer sees the log's visible records, and on a sync primary
//! only those its standby confirmed or a request gave up waiting for (the
//! released position, `StandbyConfirmations::released`).
//!
//! A long poll waits on its own queue: it resolves once the queue's end as
//! the consumer sees it passes the offset asked for, not when anything else
//! in the shard becomes visible. The log has one visible watermark per
//! shard (and a sync primary one released watermark), so the waiter does
//! wake on every move of either, but only to look up its queue's end in
//! memory; the fetch reads its queue again (and answers) only when that end
//! moved past its offset.

use super::replication::StandbyConfirmations;
use crate::storage::backend::Storage;
use crate::storage::{CommitLog, ReadLimits};

/// The log as consumers see it.
pub struct ConsumerView<'a, S: Storage> {
    pub log: &'a CommitLog<S>,
    /// On a sync primary: its released position caps what consumers see.
    pub released: Option<&'a StandbyConfirmations>,
}

/// The positions a consumer's read was made at: a long poll wakes once
/// either moves past them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub visible: u64,
    pub released: u64,
}

impl<S: Storage> ConsumerView<'_, S> {
    /// The highest log position a consumer may see (`u64::MAX`: the log's
    /// visible position alone decides).
    pub fn cap(&self) -> u64 {
        self.released.map_or(u64::MAX, StandbyConfirmations::released)
    }

    /// The first offset of `queue_id` a consumer cannot see yet.
    pub fn end_offset(&self, queue_id: u32) -> u64 {
        self.log.visible_end_offset_below(queue_id, self.cap())
    }

    pub fn limits(&self, count_max: usize, bytes_max: usize) -> ReadLimits {
        ReadLimits { count_max, bytes_max, cap: self.cap() }
    }

    /// Read before the queue is: what became visible since is not missed.
    pub fn seen(&self) -> Seen {
        Seen { visible: self.log.positions().visible, released: self.cap() }
    }

    /// Resolves once the log's visible position or the released one moved
    /// past `seen`, with the positions then. A stopped log never makes
    /// anything visible again: without a released position to wait for it
    /// never resolves.
    async fn moved_since(&self, seen: Seen) -> Seen {
        let visible = async {
            match self.log.wait_visible_beyond(seen.visible).await {
                Ok(_) => (),
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let released = async {
            match self.released {
                Some(confirmations) => confirmations.wait_released_beyond(seen.released).await,
                None => std::future::pending::<()>().await,
            }
        };
        futures_lite::future::or(visible, released).await;
        self.seen()
    }
}

/// Resolves once `queue_id`'s end as consumers see it is past `offset`, or
/// `stop()` says so (checked on every wake: a shutdown). `seen` is what the
/// caller last read the queue at. The caller's deadline ends a wait that
/// nothing ends (a stopped log).
pub async fn queue_passes<S: Storage>(
    view: &ConsumerView<'_, S>,
    queue_id: u32,
    offset: u64,
    mut seen: Seen,
    stop: impl Fn() -> bool,
) {
    loop {
        if view.end_offset(queue_id) > offset || stop() {
            return;
        }
        seen = view.moved_since(seen).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::MemoryStorage;
    use crate::storage::{AppendRequest, LogConfig};
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    const QUEUE_0: u32 = 100;
    const QUEUE_1: u32 = 101;

    #[test]
    fn a_long_poll_on_one_queue_ignores_records_of_another_queue_of_the_shard() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async {
            let log = Rc::new(CommitLog::open(MemoryStorage::new(), LogConfig::new("/memory")).await.expect("open"));
            let append = |queue_id| {
                let log = log.clone();
                async move {
                    let request =
                        AppendRequest { queue_id, indexed: true, message: b"a message", ..AppendRequest::default() };
                    log.append(request).await.expect("append");
                }
            };
            append(QUEUE_0).await;
            let woken = Rc::new(Cell::new(false));
            let waiter = {
                let (log, woken) = (log.clone(), woken.clone());
                glommio::spawn_local(async move {
                    let view = ConsumerView { log: &log, released: None };
                    // Queue 0 has offset 0; the poll waits for offset 1.
                    queue_passes(&view, QUEUE_0, 1, view.seen(), || false).await;
                    woken.set(true);
                })
            };
            for _ in 0..5 {
                append(QUEUE_1).await;
                glommio::timer::sleep(Duration::from_millis(10)).await;
                assert!(!woken.get(), "a record of queue 1 woke the long poll of queue 0");
            }
            append(QUEUE_0).await;
            let resolved = crate::storage::tests::resolves_within(waiter, Duration::from_secs(5)).await;
            assert!(resolved && woken.get(), "a record of its own queue ends the long poll");
            match Rc::try_unwrap(log) {
                Ok(log) => log.close().await.expect("close"),
                Err(_) => panic!("the log is still shared"),
            }
        });
    }

    #[test]
    fn a_capped_long_poll_waits_for_the_release_not_the_visible_record() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async {
            let log = Rc::new(CommitLog::open(MemoryStorage::new(), LogConfig::new("/memory")).await.expect("open"));
            let confirmations = Rc::new(StandbyConfirmations::default());
            let append = || {
                let log = log.clone();
                async move {
                    let request = AppendRequest {
                        queue_id: QUEUE_0,
                        indexed: true,
                        message: b"a message",
                        ..AppendRequest::default()
                    };
                    log.append(request).await.expect("append").end
                }
            };
            let first = append().await;
            confirmations.release(first);
            let woken = Rc::new(Cell::new(false));
            let waiter = {
                let (log, confirmations, woken) = (log.clone(), confirmations.clone(), woken.clone());
                glommio::spawn_local(async move {
                    let view = ConsumerView { log: &log, released: Some(&confirmations) };
                    assert_eq!(view.end_offset(QUEUE_0), 1);
                    queue_passes(&view, QUEUE_0, 1, view.seen(), || false).await;
                    woken.set(true);
                })
            };
            let second = append().await;
            glommio::timer::sleep(Duration::from_millis(30)).await;
            assert!(!woken.get(), "a record visible in the log but not released ended the long poll");
            confirmations.release(second);
            let resolved = crate::storage::tests::resolves_within(waiter, Duration::from_secs(5)).await;
            assert!(resolved && woken.get(), "the release ends the long poll");
            match Rc::try_unwrap(log) {
                Ok(log) => log.close().await.expect("close"),
                Err(_) => panic!("the log is still shared"),
            }
        });
    }

    #[test]
    fn a_long_poll_ends_on_stop() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async {
            let log = CommitLog::open(MemoryStorage::new(), LogConfig::new("/memory")).await.expect("open");
            let view = ConsumerView { log: &log, released: None };
            // Nothing is visible in queue 0, but the shard is stopping.
            queue_passes(&view, QUEUE_0, 0, view.seen(), || true).await;
            log.close().await.expect("close");
        });
    }
}
