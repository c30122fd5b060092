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
