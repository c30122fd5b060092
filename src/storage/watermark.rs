//! Single-threaded wake-ups for the shard's own executor: a [`Watermark`] is a
//! position that only moves forward (or fails for good) and that tasks wait
//! to reach; a [`Signal`] wakes one background task.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Room for waiters a watermark keeps once they are all gone: a burst of
/// requests in flight does not hold its peak for good.
const WAITERS_RETAINED_MAX: usize = 16 * 1024;

/// A position that only grows, which tasks await to reach. Once failed, every
/// current and future waiter gets the failure.
pub struct Watermark<E: Clone> {
    value: Cell<u64>,
    failure: RefCell<Option<E>>,
    /// A wait that is dropped removes its entry, so abandoned waits (a
    /// deadline that lost its race) leave nothing behind.
    waiters: RefCell<Waiters>,
    registrations: Cell<u64>,
}

/// Registered waits by (target, registration number), unique keys.
///
/// Targets nearly always come in rising order (log positions, deadlines of
/// one timeout): those go to the back of a deque, without an allocation
/// per wait, and an advance pops them from the front. A target below the
/// last one registered (a short deadline behind a long poll's) goes to a
/// tree, so no registration shifts a long deque.
#[derive(Default)]
struct Waiters {
    /// Keys rise from front to back.
    in_order: VecDeque<Waiter>,
    out_of_order: BTreeMap<WaitKey, Waker>,
}

/// A registered wait: its key and the task to wake.
struct Waiter {
    key: WaitKey,
    waker: Waker,
}

/// (target, registration number): unique, and ordered as waiters are.
type WaitKey = (u64, u64);

impl Waiters {
    fn register(&mut self, key: WaitKey, waker: Waker) {
        match self.in_order.back() {
            Some(last) if last.key > key => {
                self.out_of_order.insert(key, waker);
            }
            _ => self.in_order.push_back(Waiter { key, waker }),
        }
    }

    /// Where `key` is in the deque, if there.
    fn in_order_index(&self, key: WaitKey) -> Option<usize> {
        let (first, last) = (self.in_order.front()?, self.in_order.back()?);
        if key < first.key || key > last.key {
            return None;
        }
        self.in_order.binary_search_by(|waiter| waiter.key.cmp(&key)).ok()
    }

    fn waker_mut(&mut self, key: WaitKey) -> Option<&mut Waker> {
        match self.in_order_index(key) {
            Some(index) => Some(&mut self.in_order[index].waker),
            None => self.out_of_order.get_mut(&key),
        }
    }

    fn remove(&mut self, key: WaitKey) {
        match self.in_order_index(key) {
            // Shifts the shorter side: waits mostly end oldest first.
            Some(index) => drop(self.in_order.remove(index)),
            None => drop(self.out_of_order.remove(&key)),
        }
        self.release_room();
    }

    /// Takes one wait whose target is at most `value`, if any is left.
    fn pop_reached(&mut self, value: u64) -> Option<Waker> {
        if let Some(front) = self.in_order.front().filter(|front| front.key.0 <= value) {
            debug_assert!(self.in_order.len() == 1 || self.in_order[1].key > front.key);
            return self.in_order.pop_front().map(|waiter| waiter.waker);
        }
        match self.out_of_order.first_key_value() {
            Some((key, _)) if key.0 <= value => self.out_of_order.pop_first().map(|(_, waker)| waker),
            _ => {
                self.release_room();
                None
            }
        }
    }

    fn release_room(&mut self) {
        if self.in_order.is_empty() && self.in_order.capacity() > WAITERS_RETAINED_MAX {
            self.in_order = VecDeque::new();
        }
    }

    fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }

    fn take_all(&mut self) -> impl Iterator<Item = Waker> {
        let Waiters { in_order, out_of_order } = std::mem::take(self);
        in_order.into_iter().map(|waiter| waiter.waker).chain(out_of_order.into_values())
    }
}

impl<E: Clone> Watermark<E> {
    pub fn new(value: u64) -> Self {
        Self {
            value: Cell::new(value),
            failure: RefCell::new(None),
            waiters: RefCell::new(Waiters::default()),
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
        // Taken one at a time, the borrow released before each wake (a
        // `while let` would hold it through the body): a waker may run code
        // that registers or deregisters.
        loop {
            let reached = self.waiters.borrow_mut().pop_reached(value);
            match reached {
                Some(waker) => waker.wake(),
                None => return,
            }
        }
    }

    /// Fails the mark for good; every waiter wakes to the error.
    pub fn fail(&self, error: E) {
        self.failure.borrow_mut().get_or_insert(error);
        let waiters: Vec<Waker> = self.waiters.borrow_mut().take_all().collect();
        waiters.into_iter().for_each(Waker::wake);
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
            self.mark.waiters.borrow_mut().remove(key);
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
        if let Some(waker) = self.key.and_then(|key| waiters.waker_mut(key)) {
            waker.clone_from(context.waker());
            return Poll::Pending;
        }
        let number = mark.registrations.get();
        mark.registrations.set(number + 1);
        let key = (self.target, number);
        waiters.register(key, context.waker().clone());
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

    /// A waker that reads the watermark it waits on when woken, as a task
    /// run at once by its waker would.
    fn waker_reading(mark: &Watermark<String>) -> Waker {
        use std::task::{RawWaker, RawWakerVTable};
        fn read(data: *const ()) {
            // SAFETY: `data` is the `&Watermark` given to `waker_reading`,
            // which the test keeps alive while any copy of the waker is used.
            let mark = unsafe { &*(data as *const Watermark<String>) };
            let _ = mark.waiting();
        }
        const VTABLE: RawWakerVTable = RawWakerVTable::new(|data| RawWaker::new(data, &VTABLE), read, read, |_| {});
        let data = mark as *const Watermark<String> as *const ();
        // SAFETY: the vtable's functions only read the watermark at `data`
        // (see `read`); cloning copies the pointer and dropping does nothing.
        unsafe { Waker::from_raw(RawWaker::new(data, &VTABLE)) }
    }

    #[test]
    fn a_waker_may_use_the_watermark_while_an_advance_wakes() {
        let mark: Watermark<String> = Watermark::new(0);
        let waker = waker_reading(&mark);
        let mut context = Context::from_waker(&waker);
        let mut waits: Vec<_> = (1..=3).map(|target| Box::pin(mark.wait_for(target))).collect();
        for wait in &mut waits {
            assert!(wait.as_mut().poll(&mut context).is_pending());
        }
        mark.advance(3);
        assert_eq!(mark.waiting(), 0);
        for wait in &mut waits {
            assert_eq!(wait.as_mut().poll(&mut context), Poll::Ready(Ok(3)));
        }
    }

    #[test]
    fn a_burst_of_waits_does_not_keep_its_room_once_they_are_gone() {
        let mark: Watermark<String> = Watermark::new(0);
        let burst = WAITERS_RETAINED_MAX * 2;
        let mut waits: Vec<_> = (1..=burst as u64).map(|target| Box::pin(mark.wait_for(target))).collect();
        for wait in &mut waits {
            assert!(future::block_on(future::poll_once(wait)).is_none());
        }
        assert!(mark.waiters.borrow().in_order.capacity() >= burst);
        mark.advance(burst as u64 / 2);
        assert_eq!(mark.waiting(), burst / 2);
        assert!(mark.waiters.borrow().in_order.capacity() >= burst, "room is kept while waits remain");
        mark.advance(burst as u64);
        assert_eq!(mark.waiting(), 0);
        assert!(mark.waiters.borrow().in_order.capacity() <= WAITERS_RETAINED_MAX);
        for wait in waits {
            assert_eq!(future::block_on(wait), Ok(burst as u64));
        }
    }
}
