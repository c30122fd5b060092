//! The requests of an `AsyncConnection` waiting for their answers, and when
//! each one times out. One deadline queue per connection instead of a timer
//! per request: a glommio timer is a reactor entry added and removed for
//! every request, about a tenth of the load generator's CPU at one message
//! per request.

use super::ClientError;
use crate::protocol::Frame;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

type Answer = Result<Frame, ClientError>;

/// Settled requests the deadline queue may hold behind an unsettled one
/// beyond twice the requests waiting, before it is swept.
const DEADLINES_SETTLED_KEPT_MAX: usize = 64;

/// Where one request's answer (or the connection's failure) is left for it.
#[derive(Default)]
pub(super) struct AnswerSlot {
    answer: RefCell<Option<Answer>>,
    waker: RefCell<Option<Waker>>,
    /// Nobody waits for it any more: answered, failed or given up. Its
    /// deadline no longer counts.
    settled: Cell<bool>,
}

impl AnswerSlot {
    fn settle(&self, answer: Answer) {
        self.settled.set(true);
        *self.answer.borrow_mut() = Some(answer);
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Resolves with the answer left in the slot.
pub(super) struct AnswerArrival(Rc<AnswerSlot>);

impl Future for AnswerArrival {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Answer> {
        if let Some(answer) = self.0.answer.borrow_mut().take() {
            return Poll::Ready(answer);
        }
        *self.0.waker.borrow_mut() = Some(context.waker().clone());
        Poll::Pending
    }
}

/// Requests sent and not yet answered, by request id, with their deadlines
/// in the order they were sent (one timeout for all, so the deadlines rise
/// from front to back).
#[derive(Default)]
pub(super) struct AwaitedAnswers {
    waiters: RefCell<HashMap<u32, Rc<AnswerSlot>>>,
    deadlines: RefCell<VecDeque<(Instant, Rc<AnswerSlot>)>>,
}

impl AwaitedAnswers {
    /// Registers a request about to be sent; its answer arrives through the
    /// returned future until `deadline`.
    pub fn expect(&self, request_id: u32, deadline: Instant) -> (Rc<AnswerSlot>, AnswerArrival) {
        let slot = Rc::new(AnswerSlot::default());
        debug_assert!(self.deadlines.borrow().back().is_none_or(|(last, _)| *last <= deadline));
        self.deadlines.borrow_mut().push_back((deadline, slot.clone()));
        self.waiters.borrow_mut().insert(request_id, slot.clone());
        (slot.clone(), AnswerArrival(slot))
    }

    /// Hands an answer to the request waiting for it; one nobody waits for
    /// (given up, or failed at a timeout) is dropped.
    pub fn answer(&self, frame: Frame) {
        let waiter = self.waiters.borrow_mut().remove(&frame.request_id);
        if let Some(slot) = waiter {
            slot.settle(Ok(frame));
        }
    }

    /// The request no longer waits (answered, or its future dropped). An
    /// answer nobody took and the task's waker go now, not when the slot
    /// leaves the deadline queue.
    pub fn forget(&self, request_id: u32, slot: &Rc<AnswerSlot>) {
        slot.settled.set(true);
        slot.answer.borrow_mut().take();
        slot.waker.borrow_mut().take();
        let mut waiters = self.waiters.borrow_mut();
        if waiters.get(&request_id).is_some_and(|waiting| Rc::ptr_eq(waiting, slot)) {
            waiters.remove(&request_id);
        }
        drop(waiters);
        self.drop_settled_front();
    }

    /// Fails every request waiting with `error`.
    pub fn fail_all(&self, error: &ClientError) {
        let waiters: Vec<_> = self.waiters.borrow_mut().drain().map(|(_, slot)| slot).collect();
        for slot in waiters {
            slot.settle(Err(error.clone()));
        }
        self.deadlines.borrow_mut().clear();
    }

    /// The deadline of the oldest request still waiting.
    pub fn earliest_deadline(&self) -> Option<Instant> {
        self.drop_settled_front();
        self.deadlines.borrow().front().map(|(deadline, _)| *deadline)
    }

    /// Settled requests leave from the front. One slow request at the front
    /// (a long poll) would keep every later one behind it, so once settled
    /// ones outnumber those waiting, the queue is swept whole: amortised,
    /// each entry is looked at a bounded number of times.
    fn drop_settled_front(&self) {
        let mut deadlines = self.deadlines.borrow_mut();
        while deadlines.front().is_some_and(|(_, slot)| slot.settled.get()) {
            deadlines.pop_front();
        }
        if deadlines.len() > 2 * self.waiters.borrow().len() + DEADLINES_SETTLED_KEPT_MAX {
            deadlines.retain(|(_, slot)| !slot.settled.get());
        }
    }

    #[cfg(test)]
    fn deadlines_held(&self) -> usize {
        self.deadlines.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn frame(request_id: u32) -> Frame {
        Frame { kind: 1, request_id, body: Bytes::from_static(b"answer") }
    }

    struct Unwoken;

    impl std::task::Wake for Unwoken {
        fn wake(self: std::sync::Arc<Self>) {}
    }

    fn ready(arrival: &mut AnswerArrival) -> Option<Answer> {
        let waker = Waker::from(std::sync::Arc::new(Unwoken));
        match Pin::new(arrival).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(answer) => Some(answer),
            Poll::Pending => None,
        }
    }

    #[test]
    fn answers_reach_their_requests_in_any_order_and_settled_deadlines_go() {
        let awaited = AwaitedAnswers::default();
        let start = Instant::now();
        let (first_slot, mut first) = awaited.expect(1, start);
        let (second_slot, mut second) = awaited.expect(2, start + Duration::from_millis(1));
        assert!(ready(&mut first).is_none());
        awaited.answer(frame(2));
        let answer = ready(&mut second).expect("answered").expect("a frame");
        assert_eq!(answer.request_id, 2);
        awaited.forget(2, &second_slot);
        assert_eq!(awaited.earliest_deadline(), Some(start), "the first request still waits");
        awaited.answer(frame(1));
        assert_eq!(ready(&mut first).expect("answered").expect("a frame").request_id, 1);
        awaited.forget(1, &first_slot);
        assert_eq!(awaited.earliest_deadline(), None);
        assert_eq!(awaited.deadlines_held(), 0, "both deadlines went once the front settled");
    }

    #[test]
    fn a_request_given_up_no_longer_counts_and_its_late_answer_is_dropped() {
        let awaited = AwaitedAnswers::default();
        let start = Instant::now();
        let (slot, arrival) = awaited.expect(7, start);
        drop(arrival);
        awaited.forget(7, &slot);
        assert_eq!(awaited.earliest_deadline(), None);
        awaited.answer(frame(7));
        assert!(slot.answer.borrow().is_none(), "nobody waited: the answer was not kept");
    }

    #[test]
    fn a_slow_request_at_the_front_does_not_keep_every_later_one() {
        let awaited = AwaitedAnswers::default();
        let start = Instant::now();
        let (_slow_slot, _slow) = awaited.expect(1, start);
        for id in 2..10_000 {
            let (slot, arrival) = awaited.expect(id, start);
            awaited.answer(frame(id));
            drop(arrival);
            awaited.forget(id, &slot);
        }
        assert!(
            awaited.deadlines_held() <= 2 + DEADLINES_SETTLED_KEPT_MAX + 1,
            "{} deadlines held behind one waiting request",
            awaited.deadlines_held()
        );
        assert_eq!(awaited.earliest_deadline(), Some(start), "the slow request still counts");
    }

    #[test]
    fn a_request_given_up_keeps_neither_its_answer_nor_its_waker() {
        let awaited = AwaitedAnswers::default();
        let start = Instant::now();
        let (_front_slot, _front) = awaited.expect(1, start);
        // Polled, then given up before any answer: its waker was kept.
        let (polled_slot, mut polled) = awaited.expect(2, start);
        assert!(ready(&mut polled).is_none());
        drop(polled);
        awaited.forget(2, &polled_slot);
        assert!(polled_slot.waker.borrow().is_none(), "the waker went with the request");
        // Answered, then given up before it was polled.
        let (answered_slot, answered) = awaited.expect(3, start);
        awaited.answer(frame(3));
        drop(answered);
        awaited.forget(3, &answered_slot);
        assert!(answered_slot.answer.borrow().is_none(), "the answer went with the request");
    }

    #[test]
    fn a_failure_reaches_every_request_waiting() {
        let awaited = AwaitedAnswers::default();
        let start = Instant::now();
        let mut arrivals: Vec<_> = (1..=3).map(|id| awaited.expect(id, start).1).collect();
        awaited.fail_all(&ClientError::Timeout { after: Duration::from_secs(1) });
        for arrival in &mut arrivals {
            assert!(matches!(ready(arrival), Some(Err(ClientError::Timeout { .. }))));
        }
        assert_eq!(awaited.earliest_deadline(), None);
    }

    #[test]
    fn a_reused_request_id_does_not_forget_the_newer_request() {
        let awaited = AwaitedAnswers::default();
        let start = Instant::now();
        let (old_slot, _old) = awaited.expect(9, start);
        awaited.answer(frame(9));
        let (_new_slot, mut new) = awaited.expect(9, start);
        awaited.forget(9, &old_slot);
        awaited.answer(frame(9));
        assert!(ready(&mut new).is_some(), "the newer request still got its answer");
    }
}
