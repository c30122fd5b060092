//! A group's dead letters (`%DLQ%<group>`): read them all, and put one back
//! on its original queue (the broker does it once per dead letter unless
//! told again).

use super::{fetched_messages, Client, ClientError, ReceivedMessage};
use crate::protocol::{self, dead_letter_topic, fb, verify, FetchParams, Kind};

/// Records one fetch asks for.
const FETCH_COUNT: u32 = 1000;

/// The outcome of a resend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterResend {
    /// False: it was resent before (and not `again`).
    pub resent: bool,
    pub original_topic: String,
    pub original_queue: u32,
}

/// Every dead letter of `group`, queue by queue in offset order; empty when
/// the group has none (no dead-letter topic yet).
pub fn dead_letters(client: &Client, group: &str) -> Result<Vec<ReceivedMessage>, ClientError> {
    let topic = dead_letter_topic(group);
    client.refresh_metadata()?;
    let layout = match client.topic(&topic) {
        Ok(layout) => layout,
        Err(ClientError::Broker(failure)) if failure.code == fb::ErrorCode::UnknownTopic => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut letters = Vec::new();
    for (queue, shard) in layout.queue_shards.iter().enumerate() {
        let mut offset = 0;
        loop {
            let params = FetchParams {
                topic: topic.clone(),
                queue: queue as u32,
                offset,
                max_count: FETCH_COUNT,
                max_bytes: 4 << 20,
                ..FetchParams::default()
            };
            let body = client.call(*shard, Kind::FetchRequest, &protocol::fetch_request(&params))?;
            let response = verify::<fb::FetchResponse>(&body).map_err(ClientError::Protocol)?;
            let first = offset.max(response.earliest_offset());
            letters.extend(fetched_messages(&body, &response, &topic, queue as u32, first)?.0);
            if response.next_offset() <= offset {
                break;
            }
            offset = response.next_offset();
        }
    }
    Ok(letters)
}

/// Puts the dead letter at `offset` of queue `queue` of the group's
/// dead-letter topic back on its original queue.
pub fn resend_dead_letter(
    client: &Client,
    group: &str,
    queue: u32,
    offset: u64,
    again: bool,
) -> Result<DeadLetterResend, ClientError> {
    let layout = client.topic(&dead_letter_topic(group))?;
    let shard = layout
        .queue_shards
        .get(queue as usize)
        .copied()
        .ok_or_else(|| ClientError::Usage(format!("the dead-letter topic of {group} has no queue {queue}")))?;
    let body = protocol::resend_dead_letter_request(group, queue, offset, again);
    let answer = client.call(shard, Kind::ResendDeadLetterRequest, &body)?;
    let response = verify::<fb::ResendDeadLetterResponse>(&answer).map_err(ClientError::Protocol)?;
    Ok(DeadLetterResend {
        resent: response.resent(),
        original_topic: response.original_topic().unwrap_or_default().to_string(),
        original_queue: response.original_queue(),
    })
}
