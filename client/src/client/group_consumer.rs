//! The consumer with RocketMQ's delivery contract: a member of its group on
//! the topic and on the group's retry topic `%RETRY%<group>` (joined by
//! itself), handing each message to a handler that answers
//! `CONSUME_SUCCESS` or `RECONSUME_LATER` (an error or a panic counts as
//! later). Later sends the message back to the shard that holds it: it comes
//! again through the retry topic after a back-off, with one more
//! `reconsume_times`, and after `max_reconsume_times` retries it goes to the
//! dead-letter topic `%DLQ%<group>`. A queue's offset is committed past a
//! message only once its send-back is durable.
//!
//! Ordered consumption (`handle_next_ordered`, RocketMQ's orderly listener):
//! each queue's messages go to the handler one at a time in offset order,
//! and a message answered later blocks its queue: it is handed over again
//! after a local back-off, nothing behind it first, and after
//! `max_reconsume_times` retries it goes to the dead-letter topic and the
//! queue moves on. The group's assignment gives each queue to one member,
//! so no two consumers handle one queue at once.

use super::{Client, ClientError, Consumer, ConsumerOptions, ReceivedMessage};
use crate::protocol::{self, fb, retry_topic, verify, Kind, SendBackAnswer};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// RocketMQ's `maxReconsumeTimes`.
pub const MAX_RECONSUME_TIMES_DEFAULT: u32 = 16;
/// How long an ordered queue waits before a failed message is handed over
/// again (RocketMQ's `suspendCurrentQueueTimeMillis`).
pub const ORDERED_BACKOFF_DEFAULT: Duration = Duration::from_secs(1);
/// The longest a round of ordered consumption pauses for a blocked queue, so
/// the other queues' new messages wait no longer.
const ORDERED_PAUSE_MAX: Duration = Duration::from_millis(100);

/// An ordered queue held at a message its handler answered later.
#[derive(Clone, Copy, Debug)]
struct Blocked {
    offset: u64,
    failures: u32,
    until: Instant,
}

/// What the handler made of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeResult {
    /// `CONSUME_SUCCESS`: done, its offset may be committed.
    Success,
    /// `RECONSUME_LATER`: deliver it again after a back-off.
    Later,
    /// Neither: leave it and the rest of its queue's batch uncommitted; they
    /// come again on the next poll (for a consumer that is stopping).
    Stop,
}

/// A handler's `Result`: `Ok` is success, an error is RECONSUME_LATER.
impl<E> From<Result<(), E>> for ConsumeResult {
    fn from(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => ConsumeResult::Success,
            Err(_) => ConsumeResult::Later,
        }
    }
}

pub struct GroupConsumer {
    client: Arc<Client>,
    group: String,
    topic: Consumer,
    retries: Consumer,
    max_reconsume_times: u32,
    /// Ordered consumption: the queues held at a failed message.
    blocked: HashMap<u32, Blocked>,
    /// Ordered consumption: the pause before a failed message comes again.
    pub ordered_backoff: Duration,
}

impl GroupConsumer {
    /// Joins `group` on `topic` and on the group's retry topic.
    pub fn join(
        client: Arc<Client>,
        group: &str,
        topic: &str,
        options: ConsumerOptions,
        max_reconsume_times: u32,
    ) -> Result<Self, ClientError> {
        // Joining the topic makes the broker create the retry topic.
        let topic_member = Consumer::join(client.clone(), group, topic, options.clone())?;
        client.refresh_metadata()?;
        // Polled after the topic's long poll: it only takes what is there.
        let retry_options = ConsumerOptions { max_wait: Duration::ZERO, ..options };
        let retries = Consumer::join(client.clone(), group, &retry_topic(group), retry_options)?;
        Ok(Self {
            client,
            group: group.to_string(),
            topic: topic_member,
            retries,
            max_reconsume_times,
            blocked: HashMap::new(),
            ordered_backoff: ORDERED_BACKOFF_DEFAULT,
        })
    }

    /// Handles the next batch of both subscriptions; returns how many
    /// messages were done with (succeeded or sent back).
    pub fn handle_next(
        &mut self,
        mut handler: impl FnMut(&ReceivedMessage) -> ConsumeResult,
    ) -> Result<usize, ClientError> {
        let mut handled = self.handle(true, &mut handler)?;
        handled += self.handle(false, &mut handler)?;
        Ok(handled)
    }

    fn handle(
        &mut self,
        retries: bool,
        handler: &mut impl FnMut(&ReceivedMessage) -> ConsumeResult,
    ) -> Result<usize, ClientError> {
        let (client, group, max) = (self.client.clone(), self.group.clone(), self.max_reconsume_times);
        let member = if retries { &mut self.retries } else { &mut self.topic };
        member.handle_next(|message| {
            // A panicking handler is a failed one: the message comes again.
            let result = catch_unwind(AssertUnwindSafe(|| handler(message))).unwrap_or(ConsumeResult::Later);
            match result {
                ConsumeResult::Success => Ok(()),
                ConsumeResult::Stop => Err(None),
                ConsumeResult::Later => send_back(&client, &group, message, max).map(|_| ()).map_err(|error| {
                    // Not committed: the message comes again on the next poll.
                    tracing::warn!(%error, msg_id = %message.msg_id_hex(), "send-back failed; fetching the message again");
                    Some(error)
                }),
            }
        })
    }

    /// Ordered consumption (see the module notes): handles the topic's next
    /// batch queue by queue in offset order; returns how many messages were
    /// done with (succeeded or dead-lettered).
    pub fn handle_next_ordered(
        &mut self,
        mut handler: impl FnMut(&ReceivedMessage) -> ConsumeResult,
    ) -> Result<usize, ClientError> {
        let (client, group, max, backoff) =
            (self.client.clone(), self.group.clone(), self.max_reconsume_times, self.ordered_backoff);
        let blocked = &mut self.blocked;
        let handled = self.topic.handle_next(|message| {
            let held = blocked.get(&message.queue).copied().filter(|held| held.offset == message.offset);
            if held.is_some_and(|held| Instant::now() < held.until) {
                return Err(None::<ClientError>);
            }
            // A local retry counts as a delivery, as RocketMQ's orderly
            // consumer counts it.
            let retried = held.map(|held| ReceivedMessage { reconsume_times: held.failures, ..message.clone() });
            let handed = retried.as_ref().unwrap_or(message);
            let result = catch_unwind(AssertUnwindSafe(|| handler(handed))).unwrap_or(ConsumeResult::Later);
            match result {
                ConsumeResult::Success => {
                    blocked.remove(&message.queue);
                    Ok(())
                }
                ConsumeResult::Stop => Err(None),
                ConsumeResult::Later => {
                    let failures = held.map_or(0, |held| held.failures) + 1;
                    if failures <= max {
                        let until = Instant::now() + backoff;
                        blocked.insert(message.queue, Blocked { offset: message.offset, failures, until });
                        return Err(None);
                    }
                    // Retries ran out: to the dead-letter topic (a send-back
                    // allowing no retry), then the queue goes on.
                    send_back(&client, &group, message, 0).map_err(Some)?;
                    tracing::warn!(msg_id = %message.msg_id_hex(), failures, "an ordered message went to the dead-letter topic");
                    blocked.remove(&message.queue);
                    Ok(())
                }
            }
        })?;
        let next = self.blocked.values().map(|held| held.until).min();
        if let (0, Some(next)) = (handled, next) {
            std::thread::sleep(next.saturating_duration_since(Instant::now()).min(ORDERED_PAUSE_MAX));
        }
        Ok(handled)
    }

    /// Sends `message` back for a later delivery (or the dead-letter topic).
    pub fn send_back(&self, message: &ReceivedMessage) -> Result<SendBackAnswer, ClientError> {
        send_back(&self.client, &self.group, message, self.max_reconsume_times)
    }

    /// Leaves the group on both subscriptions.
    pub fn leave(self) -> Result<(), ClientError> {
        let left = self.topic.leave();
        self.retries.leave().and(left)
    }
}

/// SEND_BACK of `message` to the shard that owns the queue it was fetched
/// from.
pub fn send_back(
    client: &Client,
    group: &str,
    message: &ReceivedMessage,
    max_reconsume_times: u32,
) -> Result<SendBackAnswer, ClientError> {
    let layout = client.topic(&message.topic)?;
    let shard = layout
        .queue_shards
        .get(message.queue as usize)
        .copied()
        .ok_or_else(|| ClientError::Usage(format!("{} has no queue {}", message.topic, message.queue)))?;
    let body =
        protocol::send_back_request(group, &message.topic, message.queue, message.offset, max_reconsume_times, 0);
    let answer = client.call(shard, Kind::SendBackRequest, &body)?;
    let response = verify::<fb::SendBackResponse>(&answer).map_err(ClientError::Protocol)?;
    let sent = protocol::read_send_back_answer(response);
    tracing::debug!(msg_id = %message.msg_id_hex(), ?sent, "sent back");
    Ok(sent)
}
