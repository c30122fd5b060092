//! Tasks kept in flight up to a limit and taken back in the order they
//! started: how the storage keeps many small, independent disk operations
//! (index files written, synced or opened) going at once.

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

    /// Waits for the oldest task if the window is full; its result.
    pub async fn free_slot(&mut self) -> Option<Result<T, LogError>> {
        if self.in_flight.len() < self.limit {
            return None;
        }
        let oldest = self.in_flight.pop_front()?;
        Some(oldest.await)
    }

    pub fn start(&mut self, task: impl Future<Output = Result<T, LogError>> + 'static) {
        debug_assert!(self.in_flight.len() < self.limit);
        self.in_flight.push_back(glommio::spawn_local(task));
    }

    /// Every task's result, in order, once all finished.
    pub async fn drain(&mut self) -> Result<Vec<T>, LogError> {
        let mut results = Vec::with_capacity(self.in_flight.len());
        while let Some(task) = self.in_flight.pop_front() {
            results.push(task.await?);
        }
        Ok(results)
    }
}
