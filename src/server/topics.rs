//! Topics: each shard's copy of the topic table, and its file.
//!
//! Queue `q` of topic `T` belongs to shard `(crc32(T) + q) % shards`, fixed
//! at creation and recorded here. In a shard's commit log, queue `q` of the
//! topic with id `t` is queue id `t * TOPIC_QUEUES_MAX + q`; id 0 is the
//! broker's own (consumer offsets).

use crate::constants::{NAME_BYTES_MAX, TOPIC_QUEUES_MAX};
use crate::protocol::{fb, internal_topic_group, queue_owner, Failure, TopicLayout, INTERNAL_TOPIC_PREFIX};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const TOPICS_FILE: &str = "topics.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// Shared, as `queue_shards`: a request that looks its topic up (every
    /// produce and fetch) takes a copy, and a 1,024-queue topic's owners
    /// are 4 KiB.
    pub name: Arc<str>,
    pub id: u32,
    pub queue_shards: Arc<[u32]>,
}

impl Topic {
    pub fn layout(&self) -> TopicLayout {
        TopicLayout { name: self.name.to_string(), queue_shards: self.queue_shards.to_vec() }
    }

    /// The commit-log queue id of queue `queue`.
    pub fn queue_id(&self, queue: u32) -> u32 {
        debug_assert!(queue < TOPIC_QUEUES_MAX);
        self.id * TOPIC_QUEUES_MAX + queue
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Topics {
    pub topics: BTreeMap<String, Topic>,
}

/// Names are short, printable ASCII without spaces or slashes. An overlong
/// one is refused by its length, without echoing it.
pub fn check_name(kind: &str, name: &str) -> Result<(), Failure> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Failure::new(
            fb::ErrorCode::InvalidTopic,
            format!("{kind} name of {} bytes is longer than the {NAME_BYTES_MAX}-byte maximum", name.len()),
        ));
    }
    let valid = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte));
    if valid {
        return Ok(());
    }
    // Quoted only within the cap: escaped, a long name of unprintable bytes
    // would make the answer six times the request.
    let quoted = match name.len() <= NAME_BYTES_MAX {
        true => format!("{name:?}"),
        false => format!("of {} bytes", name.len()),
    };
    Err(Failure::new(
        fb::ErrorCode::InvalidTopic,
        format!("{kind} name {quoted} must be 1 to {NAME_BYTES_MAX} characters of [A-Za-z0-9-_.:]"),
    ))
}

/// Ids and producer groups are free-form but short: the broker stores or
/// echoes them. The refusal names the field, not the (long) value.
pub fn check_length(kind: &str, value: &str, bytes_max: usize) -> Result<(), Failure> {
    if value.len() <= bytes_max {
        return Ok(());
    }
    Err(Failure::new(
        fb::ErrorCode::InvalidRequest,
        format!("{kind} of {} bytes is longer than the {bytes_max}-byte maximum", value.len()),
    ))
}

/// A topic name a broker may hold: a plain one, or an internal one
/// (`%RETRY%G`, `%DLQ%G`) of a valid group name.
pub fn check_topic_name(name: &str) -> Result<(), Failure> {
    if !name.starts_with(INTERNAL_TOPIC_PREFIX) {
        return check_name("topic", name);
    }
    let group = internal_topic_group(name).ok_or_else(|| {
        Failure::new(fb::ErrorCode::InvalidTopic, format!("{name:?}: names starting with % are the broker's own"))
    })?;
    check_name("group", group)
}

impl Topics {
    pub fn get(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    /// The topic as it would be created now (the caller persists and applies
    /// it). An internal topic (`%RETRY%G`, `%DLQ%G`) has one queue per
    /// shard, queue `i` on shard `i`, so a send-back stays on its shard.
    pub fn plan(&self, name: &str, queues: u32, shards: u32) -> Result<Topic, Failure> {
        let id = self.topics.values().map(|topic| topic.id).max().unwrap_or(0) + 1;
        check_topic_name(name)?;
        if name.starts_with(INTERNAL_TOPIC_PREFIX) {
            return Ok(Topic { name: name.into(), id, queue_shards: (0..shards).collect() });
        }
        if queues == 0 || queues > TOPIC_QUEUES_MAX {
            return Err(Failure::new(
                fb::ErrorCode::InvalidRequest,
                format!("a topic has 1 to {TOPIC_QUEUES_MAX} queues, not {queues}"),
            ));
        }
        let queue_shards = (0..queues).map(|queue| queue_owner(name, queue, shards)).collect();
        Ok(Topic { name: name.into(), id, queue_shards })
    }

    /// Refuses a topic past `topics_max` (every topic counts, a group's
    /// `%RETRY%` and `%DLQ%` topics too: each takes queue ids, files and a
    /// line of every metadata answer). Existing topics go on working.
    pub fn check_room(&self, name: &str, topics_max: usize) -> Result<(), Failure> {
        if self.topics.len() < topics_max {
            return Ok(());
        }
        Err(Failure::new(
            fb::ErrorCode::LimitReached,
            format!(
                "topic {name:?} is refused: the broker holds {} topics and topics_max is {topics_max} (a group's %RETRY% and %DLQ% topics count too)",
                self.topics.len()
            ),
        ))
    }

    pub fn apply(&mut self, topic: Topic) {
        self.topics.insert(topic.name.to_string(), topic);
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_spread_over_shards_from_the_topic_hash() {
        let topics = Topics::default();
        let topic = topics.plan("orders", 8, 3).unwrap();
        assert_eq!(topic.id, 1);
        let first = queue_owner("orders", 0, 3);
        for (queue, shard) in topic.queue_shards.iter().enumerate() {
            assert_eq!(*shard, (first + queue as u32) % 3);
        }
    }

    #[test]
    fn a_refused_name_is_quoted_only_within_the_cap() {
        let short = check_name("topic", "a b").expect_err("a space");
        assert!(short.message.contains("\"a b\""), "{}", short.message);
        // Found by the `request` fuzz target's bound on refusals: the whole
        // name came back, escaped six-fold.
        let long = "\u{7f}".repeat(4 * NAME_BYTES_MAX);
        let refused = check_name("topic", &long).expect_err("too long");
        assert!(refused.message.len() < 200, "{} bytes: {:.80}", refused.message.len(), refused.message);
        assert!(refused.message.contains(&format!("of {} bytes", long.len())), "{}", refused.message);
    }

    /// A standby checks the primary's topics with it: a group's internal
    /// topics pass (found by `ringmq-load --standby sync`: the standby
    /// refused every answer once a consumer group existed).
    #[test]
    fn internal_topic_names_are_checked_by_their_group() {
        assert!(check_topic_name("%RETRY%ringmq-load-1-ab").is_ok());
        assert!(check_topic_name("%DLQ%billing").is_ok());
        assert!(check_topic_name("orders").is_ok());
        assert!(check_topic_name("%RETRY%a b").is_err());
        assert!(check_topic_name("%OTHER%billing").is_err());
        assert!(check_topic_name("%RETRY%").is_err());
    }

    #[test]
    fn bad_names_and_queue_counts_are_refused() {
        let topics = Topics::default();
        assert!(topics.plan("", 1, 1).is_err());
        assert!(topics.plan("a b", 1, 1).is_err());
        assert!(topics.plan("ok", 0, 1).is_err());
        assert!(topics.plan("ok", TOPIC_QUEUES_MAX + 1, 1).is_err());
        assert!(topics.plan("%mine", 1, 1).is_err());
        assert!(topics.plan("%RETRY%a b", 1, 1).is_err());
        let long = "n".repeat(NAME_BYTES_MAX + 1);
        let failure = topics.plan(&long, 1, 1).expect_err("too long");
        assert!(failure.message.contains("longer than the 249-byte maximum"), "{}", failure.message);
        assert!(!failure.message.contains(&long), "the name is not echoed");
        assert!(topics.plan(&"n".repeat(NAME_BYTES_MAX), 1, 1).is_ok());
    }

    #[test]
    fn a_topic_past_the_cap_is_refused_and_names_the_setting() {
        let mut topics = Topics::default();
        for name in ["a", "b"] {
            topics.check_room(name, 2).expect("room");
            topics.apply(topics.plan(name, 1, 1).expect("a plan"));
        }
        let failure = topics.check_room("c", 2).expect_err("full");
        assert_eq!(failure.code, fb::ErrorCode::LimitReached);
        assert!(failure.message.contains("topics_max is 2"), "{}", failure.message);
        assert!(topics.check_room("c", 3).is_ok(), "a higher cap has room");
    }

    #[test]
    fn an_internal_topic_has_queue_i_on_shard_i() {
        let topic = Topics::default().plan("%RETRY%billing", 1, 3).unwrap();
        assert_eq!(&*topic.queue_shards, [0, 1, 2]);
        assert_eq!(&*Topics::default().plan("%DLQ%billing", 1, 2).unwrap().queue_shards, [0, 1]);
    }
}
