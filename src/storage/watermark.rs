//! Single-threaded wake-ups for the shard's own executor: a [`Watermark`] is a
//! position that only moves forward (or fails for good) and that tasks wait
//! to reach; a [`Signal`] wakes one background task.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A position that only grows, which tasks await to reach. Once failed, every
/// current and future waiter gets the failure.
pub struct Watermark<E: Clone> {
    value: Cell<u64>,
    failure: RefCell<Option<E>>,
    /// Waiters sorted by (target, registration number), lowest target
    /// first. Targets mostly come in rising order (log positions, deadlines
    /// of one timeout), so a registration is a push at the back and an
    /// advance pops from the front: no allocation per wait, as a tree node
    /// was. A wait that is dropped removes its entry, so abandoned waits (a
    /// deadline that lost its race) leave nothing behind.
    waiters: RefCell<VecDeque<Waiter>>,
    registrations: Cell<u64>,
}

/// A registered wait: its key and the task to wake.
struct Waiter {
    key: WaitKey,
    waker: Waker,
}

/// (target, registration number): unique, and ordered as waiters are.
type WaitKey = (u64, u64);

/// Where `key` is, or would be inserted, in `waiters`.
fn search(waiters: &VecDeque<Waiter>, key: WaitKey) -> Result<usize, usize> {
    waiters.binary_search_by(|waiter| waiter.key.cmp(&key))
}

impl<E: Clone> Watermark<E> {
    pub fn new(value: u64) -> Self {
        Self {
            value: Cell::new(value),
            failure: RefCell::new(None),
            waiters: RefCell::new(VecDeque::new()),
            registrations: Cell::new(0),
        }
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
        loop {
            // Popped before waking: a woken task may run (and register
            // again) before this returns.
            let reached = {
                let mut waiters = self.waiters.borrow_mut();
                match waiters.front() {
                    Some(front) if front.key.0 <= value => waiters.pop_front(),
                    _ => None,
                }
            };
            match reached {
                Some(waiter) => waiter.waker.wake(),
                None => return,
            }
        }
    }

    /// Fails the mark for good; every waiter wakes to the error.
    pub fn fail(&self, error: E) {
        self.failure.borrow_mut().get_or_insert(error);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        waiters.into_iter().for_each(|waiter| waiter.waker.wake());
    }

    /// Resolves once the mark is at least `target`, or with the failure.
    pub fn wait_for(&self, target: u64) -> WaitFor<'_, E> {
        WaitFor { mark: self, target, key: None }
    }

    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// The future of [`Watermark::wait_for`].
pub struct WaitFor<'a, E: Clone> {
    mark: &'a Watermark<E>,
    target: u64,
    key: Option<WaitKey>,
}

impl<E: Clone> WaitFor<'_, E> {
    fn deregister(&mut self) {
        if let Some(key) = self.key.take() {
            let mut waiters = self.mark.waiters.borrow_mut();
            if let Ok(index) = search(&waiters, key) {
                waiters.remove(index);
            }
        }
    }
}

impl<E: Clone> Future for WaitFor<'_, E> {
    type Output = Result<u64, E>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(error) = self.mark.failure.borrow().clone() {
            self.deregister();
            return Poll::Ready(Err(error));
        }
        let value = self.mark.value.get();
        if value >= self.target {
            self.deregister();
            return Poll::Ready(Ok(value));
        }
        let mark = self.mark;
        let mut waiters = mark.waiters.borrow_mut();
        if let Some(Ok(index)) = self.key.map(|key| search(&waiters, key)) {
            waiters[index].waker.clone_from(context.waker());
            return Poll::Pending;
        }
        let number = mark.registrations.get();
        mark.registrations.set(number + 1);
        let key = (self.target, number);
        let waiter = Waiter { key, waker: context.waker().clone() };
        // Registration numbers rise, so a key is past every key of an equal
        // or lower target already registered.
        match waiters.back() {
            Some(last) if last.key > key => {
                let index = search(&waiters, key).unwrap_or_else(|index| index);
                waiters.insert(index, waiter);
            }
            _ => waiters.push_back(waiter),
        }
        drop(waiters);
        self.key = Some(key);
        Poll::Pending
    }
}

impl<E: Clone> Drop for WaitFor<'_, E> {
    fn drop(&mut self) {
        self.deregister();
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
        std::future::poll_fn(|context| {
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
        assert_eq!(mark.waiting(), 0);
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

    #[test]
    fn an_abandoned_or_repolled_wait_leaves_nothing_behind() {
        let mark: Watermark<String> = Watermark::new(0);
        let mut wait = Box::pin(mark.wait_for(5));
        for _ in 0..3 {
            assert!(future::block_on(future::poll_once(&mut wait)).is_none());
        }
        assert_eq!(mark.waiting(), 1, "polling again reuses the registration");
        drop(wait);
        assert_eq!(mark.waiting(), 0, "a dropped wait deregisters");
    }

    #[test]
    fn waits_registered_out_of_order_resolve_by_target_and_a_dropped_one_leaves() {
        let mark: Watermark<String> = Watermark::new(0);
        let mut waits: Vec<_> =
            [5, 3, 9, 3, 7, 1].into_iter().map(|target| Some(Box::pin(mark.wait_for(target)))).collect();
        for wait in waits.iter_mut().flatten() {
            assert!(future::block_on(future::poll_once(wait)).is_none());
        }
        assert_eq!(mark.waiting(), 6);
        waits[2] = None;
        assert_eq!(mark.waiting(), 5, "the wait for 9, in the middle, deregistered");
        mark.advance(4);
        assert_eq!(mark.waiting(), 2, "only the waits for 5 and 7 are left");
        let ready = |waits: &mut Vec<Option<Pin<Box<WaitFor<'_, String>>>>>| -> Vec<bool> {
            let polled = waits.iter_mut().map(|wait| match wait {
                Some(wait) => future::block_on(future::poll_once(wait)).is_some(),
                None => false,
            });
            polled.collect()
        };
        assert_eq!(ready(&mut waits), [false, true, false, true, false, true]);
        mark.advance(7);
        assert_eq!(mark.waiting(), 0);
        waits[1] = None;
        waits[3] = None;
        waits[5] = None;
        assert_eq!(ready(&mut waits), [true, false, false, false, true, false]);
    }
}
