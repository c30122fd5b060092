//! `QUERY_MESSAGES`: the messages of a topic carrying a key, from this
//! shard's key index (`storage::key_lookup`), newest first. The index gives
//! positions by a hash of topic and key; each record is read and its topic
//! and keys compared, so a hash collision costs a read, never a wrong
//! answer.

use super::failures::log_failure;
use super::handlers::Answer;
use super::requests;
use super::shard::Shard;
use crate::constants::{QUERY_ANSWER_BYTES_MAX, QUERY_MESSAGES_MAX, RECORD_HEADER_SIZE_BYTES};
use crate::protocol::{self, Kind};
use crate::wire::{key_hash, verify_message};
use bytes::Bytes;

/// Key-index entries one search round hands over: enough for the largest
/// answer and the entry that says more match, so that only collisions or
/// records retention took make a second round (which reads the key files
/// again from the newest block down to where the first stopped).
const CANDIDATES_PER_ROUND: usize = QUERY_MESSAGES_MAX as usize + 1;

/// Records one query reads at most (matches and collisions alike); past it
/// the answer says `truncated`.
const CANDIDATES_MAX: usize = 4096;

/// The key's length and the count were checked as the request was read
/// (`requests::QueryMessages`).
pub async fn query_messages(shard: &Shard, request: &requests::QueryMessages<'_>) -> Answer {
    let (topic, key, max, since_us) = (request.topic, request.key, request.max, request.since_us);
    // An unknown topic is a clear error, not an empty answer.
    shard.topic(topic)?;
    let hash = key_hash(topic, key);
    let (mut records, mut count, mut truncated) = (Vec::new(), 0u32, false);
    let (mut before, mut read) = (u64::MAX, 0usize);
    'search: loop {
        let found =
            shard.log.key_candidates(hash, since_us, before, CANDIDATES_PER_ROUND).await.map_err(log_failure)?;
        for candidate in &found.entries {
            before = candidate.position;
            read += 1;
            // `None`: retention took the segment since the search.
            let Some(record) =
                shard.log.record_at(candidate.position, candidate.size_bytes).await.map_err(log_failure)?
            else {
                continue;
            };
            if !carries(&record.bytes, topic, key) {
                continue; // another key (or topic) with the same hash
            }
            if count == max || (count > 0 && records.len() + record.bytes.len() > QUERY_ANSWER_BYTES_MAX) {
                truncated = true;
                break 'search;
            }
            records.extend_from_slice(&record.bytes);
            count += 1;
        }
        let more = !found.complete;
        if !more {
            break;
        }
        if found.entries.len() < CANDIDATES_PER_ROUND || read >= CANDIDATES_MAX {
            // The search's read budget (or ours) ran out before `since`.
            truncated = true;
            break;
        }
    }
    tracing::debug!(topic, count, truncated, read, "message query");
    Ok((Kind::QueryMessagesResponse, protocol::query_messages_response(None, &records, count, truncated)))
}

/// Whether the stored record `record` (header and message) is a message of
/// `topic` with `key` among its keys.
fn carries(record: &Bytes, topic: &str, key: &str) -> bool {
    if record.len() < RECORD_HEADER_SIZE_BYTES {
        return false;
    }
    verify_message(record.slice(RECORD_HEADER_SIZE_BYTES..))
        .is_ok_and(|message| message.message().topic() == topic && message.has_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MessageDraft;

    fn record(topic: &str, keys: &[&str]) -> Bytes {
        let message = MessageDraft { msg_id: (1, 2), topic, keys, body: b"x", ..MessageDraft::default() }.build();
        let mut bytes = vec![0; RECORD_HEADER_SIZE_BYTES];
        bytes.extend_from_slice(&message);
        Bytes::from(bytes)
    }

    #[test]
    fn only_the_topic_and_one_of_the_keys_make_an_answer() {
        let stored = record("orders", &["a", "order-17"]);
        assert!(carries(&stored, "orders", "order-17"));
        assert!(carries(&stored, "orders", "a"));
        assert!(!carries(&stored, "orders", "order-1"), "another key (a hash collision) is no answer");
        assert!(!carries(&stored, "payments", "order-17"), "the same key in another topic is no answer");
        assert!(!carries(&Bytes::from_static(b"short"), "orders", "a"));
    }
}
