//! Tasks kept in flight up to a limit and taken back in the order they
//! started: how the storage keeps many small, independent disk operations
//! (index files written, synced or opened) going at once.
//!
//! After an error every task still in flight is waited for before the error
//! is returned: a dropped task's write may still reach the disk, later than
//! a retry's write to the same block, so none may outlive the operation.

use super::LogError;
use std::collections::VecDeque;
use std::future::Future;

/// At most `limit` tasks, finished in the order they started.
pub(super) struct InFlight<T> {
    in_flight: VecDeque<glommio::Task<Result<T, LogError>>>,
    limit: usize,
}

impl<T: 'static> InFlight<T> {
    pub fn new(limit: usize) -> Self {
        debug_assert!(limit > 0);
        Self { in_flight: VecDeque::with_capacity(limit), limit }
    }

    /// Starts `task` once there is room: when the window is full, the
    /// oldest task's result first, returned here.
    pub async fn push(
        &mut self,
        task: impl Future<Output = Result<T, LogError>> + 'static,
    ) -> Result<Option<T>, LogError> {
        let oldest = match self.in_flight.len() < self.limit {
            true => None,
            false => Some(self.oldest().await?),
        };
        debug_assert!(self.in_flight.len() < self.limit);
        self.in_flight.push_back(glommio::spawn_local(task));
        Ok(oldest)
    }

    /// Every remaining task's result, in order.
    pub async fn finish(mut self) -> Result<Vec<T>, LogError> {
        let mut results = Vec::with_capacity(self.in_flight.len());
        while !self.in_flight.is_empty() {
            results.push(self.oldest().await?);
        }
        Ok(results)
    }

    /// The oldest task's result; on its error, once every other task has
    /// finished too.
    async fn oldest(&mut self) -> Result<T, LogError> {
        let task = self.in_flight.pop_front().expect("a task in flight");
        let result = task.await;
        if result.is_err() {
            while let Some(task) = self.in_flight.pop_front() {
                let _ = task.await;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    #[test]
    fn an_error_returns_only_once_every_task_in_flight_finished() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async {
            let finished = Rc::new(Cell::new(0));
            let mut window = InFlight::new(4);
            let failing = async { Err::<(), _>(LogError::Closed) };
            assert!(window.push(failing).await.expect("room for it").is_none());
            for _ in 0..3 {
                let finished = finished.clone();
                let slow = async move {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                    finished.set(finished.get() + 1);
                    Ok(())
                };
                assert!(window.push(slow).await.expect("room for it").is_none());
            }
            assert!(matches!(window.finish().await, Err(LogError::Closed)));
            assert_eq!(finished.get(), 3, "the error came back while tasks were still running");
        });
    }

    #[test]
    fn results_come_back_in_the_order_the_tasks_started() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async {
            let mut window = InFlight::new(2);
            let mut results = Vec::new();
            for index in 0..5u64 {
                // Later tasks finish sooner.
                let task = async move {
                    glommio::timer::sleep(Duration::from_millis(10 * (5 - index))).await;
                    Ok(index)
                };
                results.extend(window.push(task).await.expect("no error"));
            }
            results.extend(window.finish().await.expect("no error"));
            assert_eq!(results, [0, 1, 2, 3, 4]);
        });
    }
}
