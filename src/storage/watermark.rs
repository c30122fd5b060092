//! Single-threaded wake-ups for the shard's own executor: a [`Watermark`] is a
//! position that only moves forward (or fails for good) and that tasks wait
//! to reach; a [`Signal`] wakes one background task.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// A waiting task and the position it waits for, ordered by position.
struct Waiter {
    target: u64,
    waker: Waker,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.target == other.target
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> Ordering {
        self.target.cmp(&other.target)
    }
}

/// A position that only grows, which tasks await to reach. Once failed, every
/// current and future waiter gets the failure.
pub struct Watermark<E: Clone> {
    value: Cell<u64>,
    failure: RefCell<Option<E>>,
    /// Lowest target first. A task polled twice may be in it twice; it is
    /// then woken twice, which is harmless, and the heap stays O(log n).
    waiters: RefCell<BinaryHeap<Reverse<Waiter>>>,
}

impl<E: Clone> Watermark<E> {
    pub fn new(value: u64) -> Self {
        Self { value: Cell::new(value), failure: RefCell::new(None), waiters: RefCell::new(BinaryHeap::new()) }
    }

    pub fn get(&self) -> u64 {
        self.value.get()
    }

    pub fn failure(&self) -> Option<E> {
        self.failure.borrow().clone()
    }

    /// Moves the mark to `value` and wakes every waiter it reached.
    pub fn advance(&self, value: u64) {
        debug_assert!(value >= self.value.get(), "watermark moved back: {} -> {value}", self.value.get());
        self.value.set(value);
        let mut reached = Vec::new();
        {
            let mut waiters = self.waiters.borrow_mut();
            while waiters.peek().is_some_and(|Reverse(waiter)| waiter.target <= value) {
                if let Some(Reverse(waiter)) = waiters.pop() {
                    reached.push(waiter.waker);
                }
            }
        }
        reached.into_iter().for_each(Waker::wake);
    }

    /// Fails the mark for good; every waiter wakes to the error.
    pub fn fail(&self, error: E) {
        self.failure.borrow_mut().get_or_insert(error);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        waiters.into_iter().for_each(|Reverse(waiter)| waiter.waker.wake());
    }

    /// Resolves once the mark is at least `target`, or with the failure.
    pub async fn wait_for(&self, target: u64) -> Result<u64, E> {
        poll_fn(|context| {
            if let Some(error) = self.failure.borrow().clone() {
                return Poll::Ready(Err(error));
            }
            let value = self.value.get();
            if value >= target {
                return Poll::Ready(Ok(value));
            }
            self.waiters.borrow_mut().push(Reverse(Waiter { target, waker: context.waker().clone() }));
            Poll::Pending
        })
        .await
    }
}

/// Wakes one waiting task; a notification sent while nobody waits is kept.
#[derive(Default)]
pub struct Signal {
    pending: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub async fn wait(&self) {
        poll_fn(|context| {
            if self.pending.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(context.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn a_waiter_resolves_when_the_mark_reaches_its_target() {
        let mark: Watermark<String> = Watermark::new(0);
        let mut wait = Box::pin(mark.wait_for(10));
        assert!(future::block_on(future::poll_once(&mut wait)).is_none());
        mark.advance(9);
        assert!(future::block_on(future::poll_once(&mut wait)).is_none());
        mark.advance(10);
        assert_eq!(future::block_on(wait), Ok(10));
    }

    #[test]
    fn a_failed_mark_fails_current_and_later_waiters() {
        let mark: Watermark<String> = Watermark::new(0);
        let mut wait = Box::pin(mark.wait_for(1));
        assert!(future::block_on(future::poll_once(&mut wait)).is_none());
        mark.fail("fsync failed".into());
        assert_eq!(future::block_on(wait), Err("fsync failed".into()));
        assert_eq!(future::block_on(mark.wait_for(0)), Err("fsync failed".into()));
    }
}
