//! Consumer-group coordination. Group `G` is coordinated by shard
//! `crc32(G) % shards`, which assigns the topic's queues to the members
//! round-robin and bumps the generation on every change; queue shards fence
//! commits from older generations.

use crate::protocol::{fb, Assignment, Failure};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const SESSION_TIMEOUT_MS_DEFAULT: u32 = 10_000;
pub const SESSION_TIMEOUT_MS_MIN: u32 = 300;
pub const SESSION_TIMEOUT_MS_MAX: u32 = 300_000;
/// Members a group may have.
pub const GROUP_MEMBERS_MAX: usize = 1024;

struct Member {
    last_seen: Instant,
    session_timeout: Duration,
}

struct Group {
    generation: u64,
    queue_count: u32,
    members: BTreeMap<String, Member>,
    assignment: BTreeMap<String, Vec<u32>>,
}

impl Group {
    fn rebalance(&mut self) {
        self.generation += 1;
        self.assignment = self.members.keys().map(|member| (member.clone(), Vec::new())).collect();
        let members: Vec<String> = self.members.keys().cloned().collect();
        if members.is_empty() {
            return;
        }
        for queue in 0..self.queue_count {
            let member = &members[queue as usize % members.len()];
            self.assignment.entry(member.clone()).or_default().push(queue);
        }
    }

    fn assignment_of(&self, member_id: &str) -> Assignment {
        let timeout = self
            .members
            .get(member_id)
            .map_or(SESSION_TIMEOUT_MS_DEFAULT as u128, |member| member.session_timeout.as_millis());
        Assignment {
            member_id: member_id.to_string(),
            generation: self.generation,
            queues: self.assignment.get(member_id).cloned().unwrap_or_default(),
            heartbeat_interval_ms: (timeout / 3).max(1) as u32,
        }
    }
}

/// The groups a coordinator shard holds. A rebalance returns the new
/// generation, which the shard announces to every shard as a fence.
pub struct Coordinator {
    groups: BTreeMap<(String, String), Group>,
    shard: u32,
    members_created: u64,
    /// Generations start from the wall clock so they keep growing across
    /// broker restarts (coordinator state is not persisted: members rejoin).
    generation_base: u64,
}

/// A group whose generation changed.
pub type Rebalanced = Option<(String, String, u64)>;

impl Coordinator {
    pub fn new(shard: u32) -> Self {
        let generation_base = crate::storage::now_us() / 1000;
        Self { groups: BTreeMap::new(), shard, members_created: 0, generation_base }
    }

    pub fn join(
        &mut self,
        group: &str,
        topic: &str,
        member_id: &str,
        session_timeout_ms: u32,
        queue_count: u32,
    ) -> Result<(Assignment, Rebalanced), Failure> {
        let key = (group.to_string(), topic.to_string());
        let base = self.generation_base;
        let entry = self.groups.entry(key.clone()).or_insert_with(|| Group {
            generation: base,
            queue_count,
            members: BTreeMap::new(),
            assignment: BTreeMap::new(),
        });
        entry.queue_count = queue_count;
        let member_id = if member_id.is_empty() {
            self.members_created += 1;
            format!("{}-{}-{:08x}", self.shard, self.members_created, fastrand::u32(..))
        } else {
            member_id.to_string()
        };
        let timeout_ms = match session_timeout_ms {
            0 => SESSION_TIMEOUT_MS_DEFAULT,
            value => value.clamp(SESSION_TIMEOUT_MS_MIN, SESSION_TIMEOUT_MS_MAX),
        };
        let group_state =
            self.groups.get_mut(&key).ok_or_else(|| Failure::new(fb::ErrorCode::Internal, "group vanished"))?;
        let is_new = !group_state.members.contains_key(&member_id);
        if is_new && group_state.members.len() >= GROUP_MEMBERS_MAX {
            return Err(Failure::new(fb::ErrorCode::InvalidRequest, format!("group has {GROUP_MEMBERS_MAX} members")));
        }
        let member =
            Member { last_seen: Instant::now(), session_timeout: Duration::from_millis(u64::from(timeout_ms)) };
        group_state.members.insert(member_id.clone(), member);
        let rebalanced = if is_new {
            group_state.rebalance();
            Some((key.0, key.1, group_state.generation))
        } else {
            None
        };
        Ok((group_state.assignment_of(&member_id), rebalanced))
    }

    pub fn heartbeat(&mut self, group: &str, topic: &str, member_id: &str) -> Result<Assignment, Failure> {
        let group_state = self.groups.get_mut(&(group.to_string(), topic.to_string()));
        let Some(group_state) = group_state.filter(|state| state.members.contains_key(member_id)) else {
            return Err(Failure::new(
                fb::ErrorCode::UnknownMember,
                format!("{member_id} is not in group {group}; join again"),
            ));
        };
        if let Some(member) = group_state.members.get_mut(member_id) {
            member.last_seen = Instant::now();
        }
        Ok(group_state.assignment_of(member_id))
    }

    pub fn leave(&mut self, group: &str, topic: &str, member_id: &str) -> Rebalanced {
        let key = (group.to_string(), topic.to_string());
        let group_state = self.groups.get_mut(&key)?;
        group_state.members.remove(member_id)?;
        group_state.rebalance();
        Some((key.0, key.1, group_state.generation))
    }

    /// Removes members whose session expired; returns the rebalanced groups.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, String, u64)> {
        let mut rebalanced = Vec::new();
        for ((group, topic), state) in &mut self.groups {
            let before = state.members.len();
            state.members.retain(|_, member| now.duration_since(member.last_seen) <= member.session_timeout);
            if state.members.len() != before {
                state.rebalance();
                rebalanced.push((group.clone(), topic.clone(), state.generation));
            }
        }
        rebalanced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_split_the_queues_and_a_leaver_gives_them_back() {
        let mut coordinator = Coordinator::new(0);
        let (first, _) = coordinator.join("g", "t", "", 1000, 4).unwrap();
        assert_eq!(first.queues, vec![0, 1, 2, 3]);
        let (second, rebalanced) = coordinator.join("g", "t", "", 1000, 4).unwrap();
        assert!(rebalanced.is_some());
        let first = coordinator.heartbeat("g", "t", &first.member_id).unwrap();
        assert_eq!(first.generation, second.generation);
        assert_eq!(first.queues.len() + second.queues.len(), 4);
        assert!(first.queues.iter().all(|queue| !second.queues.contains(queue)));
        coordinator.leave("g", "t", &second.member_id);
        let first = coordinator.heartbeat("g", "t", &first.member_id).unwrap();
        assert_eq!(first.queues, vec![0, 1, 2, 3]);
        assert!(first.generation > second.generation);
    }

    #[test]
    fn a_silent_member_expires() {
        let mut coordinator = Coordinator::new(0);
        let (member, _) = coordinator.join("g", "t", "", 300, 2).unwrap();
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(coordinator.expire(later).len(), 1);
        assert!(coordinator.heartbeat("g", "t", &member.member_id).is_err());
    }
}
