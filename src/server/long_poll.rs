//! A fetch's long poll waits on its own queue: it resolves once the queue's
//! visible end passes the offset asked for, not when anything else in the
//! shard becomes visible. The log has one visible watermark per shard, so
//! the waiter does wake on every move of it, but only to look up its
//! queue's end in memory; the fetch reads its queue again (and answers)
//! only when that end moved past its offset.

use crate::storage::backend::Storage;
use crate::storage::CommitLog;

/// Resolves once `queue_id`'s visible end is past `offset`, or `stop()`
/// says so (checked on every wake: a shutdown). `visible` is the log's
/// visible position the caller last read the queue at, so a record that
/// became visible since is not missed. A stopped log never makes anything
/// visible again: it never resolves then, and the caller's deadline ends
/// the wait.
pub async fn queue_passes<S: Storage>(
    log: &CommitLog<S>,
    queue_id: u32,
    offset: u64,
    mut visible: u64,
    stop: impl Fn() -> bool,
) {
    loop {
        if log.visible_end_offset(queue_id) > offset || stop() {
            return;
        }
        match log.wait_visible_beyond(visible).await {
            Ok(now) => visible = now,
            Err(_) => std::future::pending::<()>().await,
        }
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
                let visible = log.positions().visible;
                glommio::spawn_local(async move {
                    // Queue 0 has offset 0; the poll waits for offset 1.
                    queue_passes(&log, QUEUE_0, 1, visible, || false).await;
                    woken.set(true);
                })
            };
            for _ in 0..5 {
                append(QUEUE_1).await;
                glommio::timer::sleep(Duration::from_millis(10)).await;
                assert!(!woken.get(), "a record of queue 1 woke the long poll of queue 0");
            }
            append(QUEUE_0).await;
            let resolved = futures_lite::future::or(
                async {
                    waiter.await;
                    true
                },
                async {
                    glommio::timer::sleep(Duration::from_secs(5)).await;
                    false
                },
            )
            .await;
            assert!(resolved && woken.get(), "a record of its own queue ends the long poll");
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
            let visible = log.positions().visible;
            // Nothing is visible in queue 0, but the shard is stopping.
            queue_passes(&log, QUEUE_0, 0, visible, || true).await;
            log.close().await.expect("close");
        });
    }
}
