//! The placement line: produce requests place their messages in the log one
//! request at a time, in the order they arrived. Without it a small request
//! behind a large one that waits for group-commit buffer room would find
//! room first and be stored ahead of it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Tickets in the order `turn` was called; a ticket is served once every
/// earlier one has finished or given up. (glommio's semaphore is not enough:
/// a task arriving just after a release can take the permit before the
/// woken waiter runs.)
#[derive(Default)]
pub struct PlacementLine {
    issued: Cell<u64>,
    serving: Cell<u64>,
    waiting: RefCell<BTreeMap<u64, Waker>>,
    /// Tickets whose holder gave up before its turn: skipped when reached.
    abandoned: RefCell<BTreeSet<u64>>,
}

impl PlacementLine {
    /// Waits for every request that asked before to finish placing; the
    /// turn lasts as long as the returned `Turn`. The ticket is taken at the
    /// call, before any await, so the order is the order of the calls.
    pub fn turn(&self) -> WaitForTurn<'_> {
        let ticket = self.issued.get();
        self.issued.set(ticket + 1);
        WaitForTurn { line: self, ticket, served: false }
    }

    /// Moves past `ticket` (and any abandoned tickets after it) and wakes the
    /// next holder.
    fn advance(&self, ticket: u64) {
        debug_assert_eq!(self.serving.get(), ticket);
        let mut next = ticket + 1;
        {
            let mut abandoned = self.abandoned.borrow_mut();
            while abandoned.remove(&next) {
                next += 1;
            }
        }
        self.serving.set(next);
        let waker = self.waiting.borrow_mut().remove(&next);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A place in the line, waiting for its turn.
pub struct WaitForTurn<'a> {
    line: &'a PlacementLine,
    ticket: u64,
    served: bool,
}

impl<'a> Future for WaitForTurn<'a> {
    type Output = Turn<'a>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Turn<'a>> {
        if self.line.serving.get() == self.ticket {
            self.served = true;
            return Poll::Ready(Turn { line: self.line, ticket: self.ticket });
        }
        self.line.waiting.borrow_mut().insert(self.ticket, context.waker().clone());
        Poll::Pending
    }
}

impl Drop for WaitForTurn<'_> {
    /// Given up before its turn (the request was dropped): the line must
    /// not wait for it.
    fn drop(&mut self) {
        if self.served {
            return;
        }
        self.line.waiting.borrow_mut().remove(&self.ticket);
        if self.line.serving.get() == self.ticket {
            self.line.advance(self.ticket);
        } else {
            self.line.abandoned.borrow_mut().insert(self.ticket);
        }
    }
}

/// The right to place messages; the next request's turn comes when it drops.
pub struct Turn<'a> {
    line: &'a PlacementLine,
    ticket: u64,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.line.advance(self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn turns_go_in_arrival_order_even_past_a_holder_that_waits() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async {
            let line = Rc::new(PlacementLine::default());
            let order = Rc::new(RefCell::new(Vec::new()));
            let (release, released) = glommio::channels::local_channel::new_bounded::<()>(1);
            // The first request holds its turn while it waits (for room).
            let holder = {
                let (line, order) = (line.clone(), order.clone());
                glommio::spawn_local(async move {
                    let _turn = line.turn().await;
                    released.recv().await;
                    order.borrow_mut().push("large");
                })
            };
            glommio::yield_if_needed().await;
            glommio::executor().yield_task_queue_now().await;
            let waiters: Vec<_> = ["small-1", "small-2"]
                .into_iter()
                .map(|name| {
                    let (line, order) = (line.clone(), order.clone());
                    glommio::spawn_local(async move {
                        let _turn = line.turn().await;
                        order.borrow_mut().push(name);
                    })
                })
                .collect();
            glommio::executor().yield_task_queue_now().await;
            assert!(order.borrow().is_empty(), "nobody passes the holder");
            release.send(()).await.expect("release");
            holder.await;
            // Released, the first waiter is woken but has not run yet: a
            // request arriving now must still queue behind it.
            let newcomer = line.turn();
            assert!(
                futures_lite::future::poll_once(newcomer).await.is_none(),
                "a newcomer does not pass a woken waiter"
            );
            let late = {
                let (line, order) = (line.clone(), order.clone());
                glommio::spawn_local(async move {
                    let _turn = line.turn().await;
                    order.borrow_mut().push("late");
                })
            };
            for waiter in waiters {
                waiter.await;
            }
            late.await;
            assert_eq!(*order.borrow(), ["large", "small-1", "small-2", "late"], "a newcomer that gave up is skipped");
        });
    }
}
