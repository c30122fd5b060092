//! Where things live, computed the same way by broker and client.

/// The shard owning queue `queue` of `topic`: `(crc32(topic) + queue) % shards`.
pub fn queue_owner(topic: &str, queue: u32, shards: u32) -> u32 {
    ((u64::from(crc32fast::hash(topic.as_bytes())) + u64::from(queue)) % u64::from(shards)) as u32
}

/// Topic names starting with this are the broker's own; a user topic may
/// not (`[A-Za-z0-9-_.:]` only).
pub const INTERNAL_TOPIC_PREFIX: &str = "%";
const RETRY_TOPIC_PREFIX: &str = "%RETRY%";
const DEAD_LETTER_TOPIC_PREFIX: &str = "%DLQ%";

// A group's internal topics stay within the topic-name cap.
const _: () = assert!(
    crate::constants::NAME_BYTES_MAX + RETRY_TOPIC_PREFIX.len() <= crate::constants::TOPIC_NAME_BYTES_MAX
        && crate::constants::NAME_BYTES_MAX + DEAD_LETTER_TOPIC_PREFIX.len() <= crate::constants::TOPIC_NAME_BYTES_MAX
);

/// The retry topic of `group`: one queue per shard, queue `i` on shard `i`.
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_TOPIC_PREFIX}{group}")
}

/// The dead-letter topic of `group`: one queue per shard, queue `i` on
/// shard `i`.
pub fn dead_letter_topic(group: &str) -> String {
    format!("{DEAD_LETTER_TOPIC_PREFIX}{group}")
}

/// The group an internal topic belongs to, if `topic` is one.
pub fn internal_topic_group(topic: &str) -> Option<&str> {
    topic.strip_prefix(RETRY_TOPIC_PREFIX).or_else(|| topic.strip_prefix(DEAD_LETTER_TOPIC_PREFIX))
}

/// The shard coordinating `group`: `crc32(group) % shards`.
pub fn coordinator_shard(group: &str, shards: u32) -> u32 {
    crc32fast::hash(group.as_bytes()) % shards
}
