//! Consumer-group coordination. Group `G` is coordinated by shard
//! `crc32(G) % shards`, which assigns the topic's queues to the members
//! round-robin and bumps the generation on every change. Every change goes
//! to every shard as a `GroupFence` (generation and owner of each queue):
//! a queue's shard accepts a commit only from the queue's owner in exactly
//! that generation.
//!
//! Static membership: a member that joins with an instance id is found
//! again by it. A join with the instance id of a member the coordinator
//! still holds (a restarted process, before its session expired) gets that
//! member back, with its member id and queues, and no new generation. A
//! static member that goes silent expires like any other; one that leaves
//! is gone at once (its queues move), and its next join is an ordinary one.
//! An instance id names one process: two live processes with one id share
//! the member and its queues (Kafka fences the older one with a new member
//! id; here the member id stays, so a restarted member's commits count).

use crate::constants::{
    CLIENT_ID_BYTES_MAX, GROUPS_MAX_DEFAULT, GROUP_MEMBERS_MAX, SESSION_TIMEOUT_MS_DEFAULT, SESSION_TIMEOUT_MS_MAX,
    SESSION_TIMEOUT_MS_MIN,
};
use crate::protocol::page::fill_page;
use crate::protocol::{fb, Assignment, Failure, GroupSummary};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::{Duration, Instant};

struct Member {
    last_seen: Instant,
    session_timeout: Duration,
    /// Static membership: the instance id it joined with.
    instance_id: Option<String>,
}

struct Group {
    generation: u64,
    queue_count: u32,
    members: BTreeMap<String, Member>,
    assignment: BTreeMap<String, Vec<u32>>,
}

/// A group's generation and who owns which queue in it, as the coordinator
/// announces it to every shard: the queue shards fence commits by it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupFence {
    pub group: String,
    pub topic: String,
    pub generation: u64,
    /// `owners[q]`: the member id that owns queue `q` (empty: nobody).
    pub owners: Vec<String>,
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

    fn fence(&self, group: &str, topic: &str) -> GroupFence {
        let mut owners = vec![String::new(); self.queue_count as usize];
        for (member, queues) in &self.assignment {
            for queue in queues {
                if let Some(owner) = owners.get_mut(*queue as usize) {
                    owner.clone_from(member);
                }
            }
        }
        GroupFence { group: group.to_string(), topic: topic.to_string(), generation: self.generation, owners }
    }

    fn member_of_instance(&self, instance_id: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(_, member)| member.instance_id.as_deref() == Some(instance_id))
            .map(|(member_id, _)| member_id.clone())
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
/// fence, which the shard announces to every shard.
pub struct Coordinator {
    groups: BTreeMap<(String, String), Group>,
    /// Groups (on a topic each) it holds at most (`groups_max`).
    groups_max: usize,
    shard: u32,
    members_created: u64,
    /// Generations start from the wall clock so they keep growing across
    /// broker restarts (coordinator state is not persisted: members rejoin).
    generation_base: u64,
}

/// A group whose generation changed: its new fence.
pub type Rebalanced = Option<GroupFence>;

/// Who joins: the member id it had (empty: new) and, for a static member,
/// its instance id (empty: dynamic).
#[derive(Clone, Copy, Debug, Default)]
pub struct Joiner<'a> {
    pub member_id: &'a str,
    pub instance_id: &'a str,
    pub session_timeout_ms: u32,
}

impl Coordinator {
    pub fn new(shard: u32) -> Self {
        Self::with_groups_max(shard, GROUPS_MAX_DEFAULT)
    }

    pub fn with_groups_max(shard: u32, groups_max: usize) -> Self {
        let generation_base = crate::storage::now_us() / 1000;
        Self { groups: BTreeMap::new(), groups_max, shard, members_created: 0, generation_base }
    }

    /// Whether the group can be joined: it exists, or there is room for it.
    pub fn admit_group(&mut self, group: &str, topic: &str) -> Result<(), Failure> {
        if self.groups.contains_key(&(group.to_string(), topic.to_string())) {
            return Ok(());
        }
        self.make_room(group, topic)
    }

    /// Room for one more group, or a clear refusal. Groups left without
    /// members are forgotten first, only now that room is needed (until then
    /// `group list` still shows them); a group forgotten and joined again
    /// gets generations above its old ones, so no stale fence can match.
    fn make_room(&mut self, group: &str, topic: &str) -> Result<(), Failure> {
        if self.groups.len() < self.groups_max {
            return Ok(());
        }
        let mut highest = self.generation_base;
        self.groups.retain(|_, state| {
            highest = highest.max(state.generation);
            !state.members.is_empty()
        });
        self.generation_base = highest;
        if self.groups.len() < self.groups_max {
            return Ok(());
        }
        Err(Failure::new(
            fb::ErrorCode::LimitReached,
            format!(
                "group {group} on {topic} is refused: shard {} coordinates {} groups with members and groups_max is {}; retry once members of other groups leave or expire",
                self.shard,
                self.groups.len(),
                self.groups_max
            ),
        ))
    }

    pub fn join(
        &mut self,
        group: &str,
        topic: &str,
        joiner: Joiner<'_>,
        queue_count: u32,
    ) -> Result<(Assignment, Rebalanced), Failure> {
        if joiner.instance_id.len() > CLIENT_ID_BYTES_MAX {
            return Err(Failure::new(
                fb::ErrorCode::InvalidRequest,
                format!("an instance id has at most {CLIENT_ID_BYTES_MAX} bytes"),
            ));
        }
        let key = (group.to_string(), topic.to_string());
        if !self.groups.contains_key(&key) {
            self.make_room(group, topic)?;
        }
        let base = self.generation_base;
        let group_state = self.groups.entry(key.clone()).or_insert_with(|| Group {
            generation: base,
            queue_count,
            members: BTreeMap::new(),
            assignment: BTreeMap::new(),
        });
        let queues_changed = group_state.queue_count != queue_count;
        group_state.queue_count = queue_count;
        let instance_id = (!joiner.instance_id.is_empty()).then(|| joiner.instance_id.to_string());
        // A static member known by its instance id keeps its member id
        // (whatever the joiner remembered): its restart is not a change.
        let known_instance = instance_id.as_deref().and_then(|instance| group_state.member_of_instance(instance));
        let member_id = match (known_instance, joiner.member_id) {
            (Some(member_id), _) => member_id,
            (None, "") => {
                self.members_created += 1;
                format!("{}-{}-{:08x}", self.shard, self.members_created, fastrand::u32(..))
            }
            (None, member_id) => member_id.to_string(),
        };
        let timeout_ms = match joiner.session_timeout_ms {
            0 => SESSION_TIMEOUT_MS_DEFAULT,
            value => value.clamp(SESSION_TIMEOUT_MS_MIN, SESSION_TIMEOUT_MS_MAX),
        };
        let is_new = !group_state.members.contains_key(&member_id);
        if is_new && group_state.members.len() >= GROUP_MEMBERS_MAX {
            return Err(Failure::new(
                fb::ErrorCode::LimitReached,
                format!("group {group} on {topic} already has {GROUP_MEMBERS_MAX} members, the most a group may have; a new member is refused"),
            ));
        }
        let member = Member {
            last_seen: Instant::now(),
            session_timeout: Duration::from_millis(u64::from(timeout_ms)),
            instance_id,
        };
        group_state.members.insert(member_id.clone(), member);
        let rebalanced = if is_new || queues_changed {
            group_state.rebalance();
            Some(group_state.fence(group, topic))
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
        Some(group_state.fence(group, topic))
    }

    /// One page of the groups it holds (only `group`'s, if given), in group
    /// and topic order from after `after`; and whether more were left out.
    pub fn list(&self, group: Option<&str>, after: Option<(&str, &str)>) -> (Vec<GroupSummary>, bool) {
        let from =
            after.map_or(Bound::Unbounded, |(group, topic)| Bound::Excluded((group.to_string(), topic.to_string())));
        let held = self
            .groups
            .range((from, Bound::Unbounded))
            .filter(|((name, _), _)| group.is_none_or(|group| group == name))
            .map(|((group, topic), state)| GroupSummary {
                group: group.clone(),
                topic: topic.clone(),
                generation: state.generation,
                members: state.assignment.iter().map(|(member, queues)| (member.clone(), queues.clone())).collect(),
            });
        fill_page(held)
    }

    /// Removes members whose session expired; returns the rebalanced groups.
    pub fn expire(&mut self, now: Instant) -> Vec<GroupFence> {
        let mut rebalanced = Vec::new();
        for ((group, topic), state) in &mut self.groups {
            let before = state.members.len();
            state.members.retain(|_, member| now.duration_since(member.last_seen) <= member.session_timeout);
            if state.members.len() != before {
                state.rebalance();
                rebalanced.push(state.fence(group, topic));
            }
        }
        rebalanced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(session_timeout_ms: u32) -> Joiner<'static> {
        Joiner { session_timeout_ms, ..Joiner::default() }
    }

    fn instance(instance_id: &str) -> Joiner<'_> {
        Joiner { instance_id, session_timeout_ms: 1000, ..Joiner::default() }
    }

    #[test]
    fn members_split_the_queues_and_a_leaver_gives_them_back() {
        let mut coordinator = Coordinator::new(0);
        let (first, _) = coordinator.join("g", "t", dynamic(1000), 4).unwrap();
        assert_eq!(first.queues, vec![0, 1, 2, 3]);
        let (second, rebalanced) = coordinator.join("g", "t", dynamic(1000), 4).unwrap();
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
        let (member, _) = coordinator.join("g", "t", dynamic(300), 2).unwrap();
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(coordinator.expire(later).len(), 1);
        assert!(coordinator.heartbeat("g", "t", &member.member_id).is_err());
    }

    #[test]
    fn every_fence_names_the_owner_of_each_queue_in_its_generation() {
        let mut coordinator = Coordinator::new(0);
        let (first, fence) = coordinator.join("g", "t", dynamic(1000), 3).unwrap();
        let fence = fence.expect("a new member changes the group");
        assert_eq!((fence.group.as_str(), fence.topic.as_str()), ("g", "t"));
        assert_eq!(fence.generation, first.generation);
        assert_eq!(fence.owners, vec![first.member_id.clone(); 3]);
        let (second, fence) = coordinator.join("g", "t", dynamic(1000), 3).unwrap();
        let fence = fence.expect("a second member changes the group");
        let first = coordinator.heartbeat("g", "t", &first.member_id).unwrap();
        assert_eq!(fence.generation, second.generation);
        for member in [&first, &second] {
            for queue in &member.queues {
                assert_eq!(fence.owners[*queue as usize], member.member_id, "queue {queue}");
            }
        }
        let fence = coordinator.leave("g", "t", &first.member_id).expect("a leaver changes the group");
        assert!(fence.generation > second.generation);
        assert_eq!(fence.owners, vec![second.member_id.clone(); 3]);
        let later = Instant::now() + Duration::from_secs(2);
        let fences = coordinator.expire(later);
        assert_eq!(fences.len(), 1);
        assert_eq!(fences[0].owners, vec![String::new(); 3], "nobody owns a queue of an empty group");
    }

    #[test]
    fn a_static_member_joining_again_gets_its_member_id_and_queues_back_without_a_rebalance() {
        let mut coordinator = Coordinator::new(0);
        let (static_member, _) = coordinator.join("g", "t", instance("worker-a"), 4).unwrap();
        let (other, _) = coordinator.join("g", "t", dynamic(1000), 4).unwrap();
        let static_member = coordinator.heartbeat("g", "t", &static_member.member_id).unwrap();
        // The process restarts: it remembers nothing but its instance id.
        let (again, fence) = coordinator.join("g", "t", instance("worker-a"), 4).unwrap();
        assert!(fence.is_none(), "no rebalance");
        assert_eq!(again, static_member);
        assert_eq!(coordinator.heartbeat("g", "t", &other.member_id).unwrap(), other);
        // Another instance id is another member.
        let (new_member, fence) = coordinator.join("g", "t", instance("worker-b"), 4).unwrap();
        assert!(fence.is_some());
        assert_ne!(new_member.member_id, static_member.member_id);
    }

    #[test]
    fn a_silent_static_member_expires_and_one_that_left_joins_as_new() {
        let mut coordinator = Coordinator::new(0);
        let (left, _) = coordinator.join("g", "t", instance("worker-a"), 2).unwrap();
        assert!(coordinator.leave("g", "t", &left.member_id).is_some());
        let (joined, fence) = coordinator.join("g", "t", instance("worker-a"), 2).unwrap();
        assert!(fence.is_some(), "a join after leaving is an ordinary one");
        assert_eq!(joined.queues, vec![0, 1], "and gets queues at once");
        assert!(joined.generation > left.generation);
        let later = Instant::now() + Duration::from_secs(2);
        assert_eq!(coordinator.expire(later).len(), 1, "silent past its session timeout");
        let (after_expiry, fence) = coordinator.join("g", "t", instance("worker-a"), 2).unwrap();
        assert!(fence.is_some());
        assert!(after_expiry.generation > joined.generation);
    }

    #[test]
    fn the_list_names_each_group_topic_with_its_members_and_queues() {
        let mut coordinator = Coordinator::new(0);
        let (first, _) = coordinator.join("g", "t", dynamic(1000), 3).unwrap();
        let (second, _) = coordinator.join("g", "t", dynamic(1000), 3).unwrap();
        coordinator.join("h", "t", dynamic(1000), 1).unwrap();
        let (listed, truncated) = coordinator.list(Some("g"), None);
        assert!(!truncated);
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].group.as_str(), listed[0].topic.as_str()), ("g", "t"));
        assert_eq!(listed[0].generation, second.generation);
        let first = coordinator.heartbeat("g", "t", &first.member_id).unwrap();
        for member in [&first, &second] {
            for queue in &member.queues {
                assert_eq!(listed[0].owner_of(*queue), Some(member.member_id.as_str()));
            }
        }
        let (all, truncated) = coordinator.list(None, None);
        assert_eq!((all.len(), truncated), (2, false));
        let (after_g, truncated) = coordinator.list(None, Some(("g", "t")));
        assert_eq!((after_g.len(), after_g[0].group.as_str(), truncated), (1, "h", false));
    }

    #[test]
    fn a_group_past_the_cap_is_refused_until_an_empty_one_can_be_forgotten() {
        let mut coordinator = Coordinator::with_groups_max(3, 2);
        let (first, _) = coordinator.join("a", "t", dynamic(1000), 1).unwrap();
        coordinator.join("b", "t", dynamic(1000), 1).unwrap();
        let failure = coordinator.join("c", "t", dynamic(1000), 1).unwrap_err();
        assert_eq!(failure.code, fb::ErrorCode::LimitReached);
        assert!(failure.message.contains("groups_max is 2"), "{}", failure.message);
        let (second, _) = coordinator.join("a", "t", dynamic(1000), 1).expect("an existing group takes a new member");
        coordinator.leave("a", "t", &first.member_id);
        coordinator.leave("a", "t", &second.member_id);
        let (listed, _) = coordinator.list(Some("a"), None);
        assert_eq!(listed.len(), 1, "an empty group is listed while there is room");
        let old_generation = listed[0].generation;
        let (third, _) = coordinator.join("c", "t", dynamic(1000), 1).expect("room once a is empty");
        assert!(coordinator.list(Some("a"), None).0.is_empty(), "the empty group was forgotten");
        assert_eq!(coordinator.join("a", "t", dynamic(1000), 1).unwrap_err().code, fb::ErrorCode::LimitReached);
        coordinator.leave("c", "t", &third.member_id);
        let (again, _) = coordinator.join("a", "t", dynamic(1000), 1).expect("room once c is empty");
        assert!(again.generation > old_generation, "no fence of the forgotten group can match");
    }

    #[test]
    fn the_list_pages_under_the_answer_budget_and_the_cursor_resumes_it() {
        let mut coordinator = Coordinator::new(0);
        let (groups, members) = (100, 60);
        for group in 0..groups {
            for member in 0..members {
                let member_id = format!("{member:03}{}", "m".repeat(CLIENT_ID_BYTES_MAX - 3));
                let joiner = Joiner { member_id: &member_id, session_timeout_ms: 10_000, ..Joiner::default() };
                coordinator.join(&format!("g{group:03}"), "t", joiner, 8).unwrap();
            }
        }
        let (mut listed, mut after, mut pages) = (Vec::<GroupSummary>::new(), None::<(String, String)>, 0);
        loop {
            let cursor = after.as_ref().map(|(group, topic)| (group.as_str(), topic.as_str()));
            let (page, more) = coordinator.list(None, cursor);
            let body = crate::protocol::list_groups_response(None, &page, Some(&[0; 64]));
            assert!(body.len() <= crate::constants::RESPONSE_BYTES_MAX, "a page of {} bytes", body.len());
            assert!(crate::protocol::verify::<fb::ListGroupsResponse>(&body).is_ok(), "the reader's limits");
            pages += 1;
            after = page.last().map(|last| (last.group.clone(), last.topic.clone()));
            listed.extend(page);
            if !more {
                break;
            }
        }
        assert!(pages > 1, "{pages} page");
        assert_eq!(listed.len(), groups);
        assert!(listed.windows(2).all(|pair| pair[0].group < pair[1].group), "in order, each once");
        assert!(listed.iter().all(|summary| summary.members.len() == members));
    }

    #[test]
    fn a_member_past_the_cap_is_refused_and_the_others_stay() {
        let mut coordinator = Coordinator::new(0);
        for _ in 0..GROUP_MEMBERS_MAX {
            coordinator.join("g", "t", dynamic(1000), 1).unwrap();
        }
        let failure = coordinator.join("g", "t", dynamic(1000), 1).unwrap_err();
        assert_eq!(failure.code, fb::ErrorCode::LimitReached);
        assert!(failure.message.contains(&format!("{GROUP_MEMBERS_MAX} members")), "{}", failure.message);
        assert_eq!(coordinator.list(Some("g"), None).0[0].members.len(), GROUP_MEMBERS_MAX);
    }

    #[test]
    fn an_overlong_instance_id_is_refused() {
        let mut coordinator = Coordinator::new(0);
        let long = "x".repeat(CLIENT_ID_BYTES_MAX + 1);
        let failure = coordinator.join("g", "t", instance(&long), 2).unwrap_err();
        assert_eq!(failure.code, fb::ErrorCode::InvalidRequest);
    }
}
