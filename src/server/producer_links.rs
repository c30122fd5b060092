//! The live producers of each producer group on this shard: connections
//! that sent `REGISTER_PRODUCER`, for as long as they stay open. A link
//! also carries requests the broker starts on its connection (check-backs):
//! they go out through the connection's writer task like answers, with a
//! request id that has `BROKER_REQUEST_BIT` set, and the connection's read
//! loop hands the producer's answer (same id) back here.

use super::outgoing::Outgoing;
use crate::constants::PRODUCER_GROUPS_PER_CONNECTION_MAX;
use crate::protocol::{fb, Failure, Frame, Kind, BROKER_REQUEST_BIT};
use glommio::channels::local_channel::{self, LocalSender};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Why a broker-started request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the producer's connection is closed")]
    Closed,
    #[error("the producer did not answer within {0:?}")]
    Timeout(Duration),
}

/// One client connection, as the broker's side of its own requests.
pub struct ProducerLink {
    outgoing: Rc<LocalSender<Outgoing>>,
    waiting: RefCell<HashMap<u32, LocalSender<Frame>>>,
    next_request: Cell<u32>,
    closed: Cell<bool>,
    /// Producer groups it registered with.
    groups: Cell<usize>,
}

impl ProducerLink {
    pub fn new(outgoing: Rc<LocalSender<Outgoing>>) -> Self {
        Self {
            outgoing,
            waiting: RefCell::default(),
            next_request: Cell::new(0),
            closed: Cell::new(false),
            groups: Cell::new(0),
        }
    }

    fn request_id(&self) -> u32 {
        let next = self.next_request.get();
        self.next_request.set(next.wrapping_add(1) & !BROKER_REQUEST_BIT);
        BROKER_REQUEST_BIT | next
    }

    /// Sends a request to the client and waits (at most `timeout`) for its
    /// answer frame.
    pub async fn request(&self, kind: Kind, body: Vec<u8>, timeout: Duration) -> Result<Frame, LinkError> {
        if self.closed.get() {
            return Err(LinkError::Closed);
        }
        let request_id = self.request_id();
        let (sender, receiver) = local_channel::new_bounded(1);
        self.waiting.borrow_mut().insert(request_id, sender);
        let sent = self.outgoing.send(Outgoing::new(kind, request_id, body, None)).await;
        let answer = match sent {
            Err(_) => Err(LinkError::Closed),
            Ok(()) => {
                futures_lite::future::or(async { receiver.recv().await.ok_or(LinkError::Closed) }, async {
                    glommio::timer::sleep(timeout).await;
                    Err(LinkError::Timeout(timeout))
                })
                .await
            }
        };
        self.waiting.borrow_mut().remove(&request_id);
        answer
    }

    /// The client's answer to a request the broker started; one nobody
    /// waits for any more (timed out) is dropped.
    pub fn answered(&self, frame: Frame) {
        if let Some(waiter) = self.waiting.borrow_mut().remove(&frame.request_id) {
            let _ = waiter.try_send(frame);
        }
    }

    /// The connection ended: whoever waits gets `Closed` now.
    pub fn close(&self) {
        self.closed.set(true);
        self.waiting.borrow_mut().clear();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }
}

/// The links of each producer group, and where each group's rotation is.
#[derive(Default)]
pub struct ProducerLinks {
    groups: HashMap<String, (Vec<Rc<ProducerLink>>, usize)>,
}

impl ProducerLinks {
    /// Adds `link` to `group` (once, however often it registers); refused
    /// past `PRODUCER_GROUPS_PER_CONNECTION_MAX` groups on one link.
    pub fn register(&mut self, group: &str, link: &Rc<ProducerLink>) -> Result<(), Failure> {
        let known = self.groups.get(group).is_some_and(|(links, _)| links.iter().any(|known| Rc::ptr_eq(known, link)));
        if known {
            return Ok(());
        }
        if link.groups.get() >= PRODUCER_GROUPS_PER_CONNECTION_MAX {
            return Err(Failure::new(
                fb::ErrorCode::LimitReached,
                format!(
                    "producer group {group} is refused: a connection registers at most {PRODUCER_GROUPS_PER_CONNECTION_MAX} producer groups"
                ),
            ));
        }
        link.groups.set(link.groups.get() + 1);
        self.groups.entry(group.to_string()).or_default().0.push(link.clone());
        Ok(())
    }

    /// Forgets `link` in every group (its connection ended).
    pub fn remove(&mut self, link: &Rc<ProducerLink>) {
        self.groups.retain(|_, (links, _)| {
            links.retain(|known| !Rc::ptr_eq(known, link));
            !links.is_empty()
        });
    }

    /// The next live producer of `group`, rotating among its members;
    /// `None` while the whole group is offline.
    pub fn pick(&mut self, group: &str) -> Option<Rc<ProducerLink>> {
        let (links, cursor) = self.groups.get_mut(group)?;
        links.retain(|link| !link.is_closed());
        if links.is_empty() {
            return None;
        }
        let link = links[*cursor % links.len()].clone();
        *cursor = cursor.wrapping_add(1);
        Some(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Rc<ProducerLink> {
        let (sender, _receiver) = local_channel::new_bounded(1);
        Rc::new(ProducerLink::new(Rc::new(sender)))
    }

    #[test]
    fn checks_rotate_among_live_members_and_an_offline_group_has_none() {
        let mut links = ProducerLinks::default();
        assert!(links.pick("payments").is_none(), "nobody registered");
        let (first, second) = (link(), link());
        links.register("payments", &first).expect("room");
        links.register("payments", &first).expect("again");
        links.register("payments", &second).expect("room");
        let picked: Vec<_> = (0..4).map(|_| links.pick("payments").expect("a member")).collect();
        assert!(Rc::ptr_eq(&picked[0], &first) && Rc::ptr_eq(&picked[1], &second));
        assert!(Rc::ptr_eq(&picked[2], &first) && Rc::ptr_eq(&picked[3], &second), "registered once each");
        second.close();
        assert!((0..3).all(|_| Rc::ptr_eq(&links.pick("payments").expect("a member"), &first)));
        links.remove(&first);
        assert!(links.pick("payments").is_none(), "the whole group is offline");
    }

    #[test]
    fn a_connection_registers_a_bounded_number_of_groups() {
        let mut links = ProducerLinks::default();
        let (busy, other) = (link(), link());
        for index in 0..PRODUCER_GROUPS_PER_CONNECTION_MAX {
            links.register(&format!("group-{index}"), &busy).expect("room");
        }
        links.register("group-0", &busy).expect("a group it has is no new one");
        let failure = links.register("one-more", &busy).expect_err("full");
        assert_eq!(failure.code, fb::ErrorCode::LimitReached);
        links.register("one-more", &other).expect("another connection has its own room");
    }

    #[test]
    fn broker_request_ids_always_have_the_high_bit() {
        let link = link();
        link.next_request.set(!BROKER_REQUEST_BIT);
        assert_eq!(link.request_id(), u32::MAX);
        assert_eq!(link.request_id(), BROKER_REQUEST_BIT, "wraps within the broker's half");
    }
}
