//! Where things live, computed the same way by broker and client.

/// The shard owning queue `queue` of `topic`: `(crc32(topic) + queue) % shards`.
pub fn queue_owner(topic: &str, queue: u32, shards: u32) -> u32 {
    ((u64::from(crc32fast::hash(topic.as_bytes())) + u64::from(queue)) % u64::from(shards)) as u32
}

/// The shard coordinating `group`: `crc32(group) % shards`.
pub fn coordinator_shard(group: &str, shards: u32) -> u32 {
    crc32fast::hash(group.as_bytes()) % shards
}
