//! A shard: one core, one glommio executor, one commit log, the queues it
//! owns, their consumer offsets, the groups it coordinates and its
//! producers' sequences. Nothing in it is shared with another shard.

use super::clock::CoarseClock;
use super::cross::{CrossMessage, Peers};
use super::dedup::ProducerTable;
use super::disk_guard::DiskGuard;
use super::frame_budget::IncompleteFrames;
use super::groups::{Coordinator, GroupFence};
use super::metrics::ShardCounters;
use super::offsets::Offsets;
use super::placement::PlacementLine;
use super::producer_links::ProducerLinks;
use super::replication::epochs::EpochHistory;
use super::replication::promotion::{self, Promotion};
use super::replication::ReplicaState;
use super::replication::Replication;
use super::timers::TimerTable;
use super::topics::{Topic, Topics, TOPICS_FILE};
use super::transactions::{AppendsInFlight, TransactionTable};
use super::ServerConfig;
use crate::constants::TOPIC_NAME_BYTES_MAX;
use crate::protocol::{fb, Failure, ShardEndpoint};
use crate::storage::backend::{DmaStorage, Storage};
use crate::storage::{CommitLog, Signal};
use glommio::channels::local_channel::{self, LocalSender};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;

/// How long a coordinator waits for the shards to acknowledge a group
/// fence before it answers anyway (a shard that stopped answering).
const FENCE_ACK_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// What a topic creation ends in: the topic and whether it is new.
type Created = Result<(Topic, bool), Failure>;

pub struct Shard {
    pub clock: Rc<CoarseClock>,
    pub id: u32,
    pub shard_count: u32,
    pub config: Rc<ServerConfig>,
    pub endpoints: Vec<ShardEndpoint>,
    pub storage: DmaStorage,
    pub dir: PathBuf,
    pub log: CommitLog<DmaStorage>,
    pub topics: RefCell<Topics>,
    pub offsets: RefCell<Offsets>,
    /// Offset commits appended but not yet applied, counted by a floor of
    /// their offset-queue offset.
    pub commits_in_flight: RefCell<BTreeMap<u64, usize>>,
    pub coordinator: RefCell<Coordinator>,
    pub dedup: RefCell<ProducerTable>,
    /// Half messages and their outcomes (`transactions`).
    pub transactions: RefCell<TransactionTable>,
    /// Connections registered as live producers, by producer group.
    pub producer_links: RefCell<ProducerLinks>,
    /// Delayed messages, retries and dead letters not yet delivered (`timers`).
    pub timers: RefCell<TimerTable>,
    /// Wakes the timer task (`due_delivery`) for a new entry.
    pub timer_wake: Signal,
    /// Records a timer entry is about to point at (`TimerPin`), counted.
    timer_pins: RefCell<BTreeMap<u64, usize>>,
    pub placement_line: PlacementLine,
    /// Retention floors of state kept in the log: the two snapshots' and
    /// the oldest pending half message's. The log's floor is the lowest.
    pub offsets_floor: Cell<u64>,
    pub producers_floor: Cell<u64>,
    pub transactions_floor: Cell<u64>,
    /// The oldest position a pending timer entry needs.
    pub timers_floor: Cell<u64>,
    /// Lowest log position a replay after the transactions snapshot reads
    /// (`u64::MAX` before the first: a full replay, as without one).
    pub transactions_snapshot_floor: Cell<u64>,
    /// Transaction appends whose effect is not in the table yet.
    pub transaction_appends: AppendsInFlight,
    pub peers: Peers,
    next_token: Cell<u64>,
    creates_waiting: RefCell<HashMap<u64, LocalSender<Created>>>,
    acks_waiting: RefCell<HashMap<u64, (usize, LocalSender<()>)>>,
    /// Topic creations run one at a time (on shard 0).
    create_lock: glommio::sync::Semaphore,
    pub shutting_down: Cell<bool>,
    pub requests_in_flight: Cell<usize>,
    /// Whether the filesystem has room for produce (`disk_guard`).
    pub disk: DiskGuard,
    /// Client connections open now (`ringmq status`).
    pub connections: Cell<usize>,
    /// What the handlers count for `--metrics-listen` (`metrics`).
    pub counters: ShardCounters,
    /// Bytes the connections hold in incomplete frames, and their bound.
    pub incomplete_frames: IncompleteFrames,
    /// Primary or standby, epochs, and how far the other side is.
    pub replica: ReplicaState,
    /// A promotion's shards that have not answered yet, by token.
    promotions_waiting: RefCell<HashMap<u64, LocalSender<(u32, Promotion)>>>,
}

pub struct ShardParts {
    pub clock: Rc<CoarseClock>,
    pub id: u32,
    pub shard_count: u32,
    pub config: Rc<ServerConfig>,
    pub endpoints: Vec<ShardEndpoint>,
    pub dir: PathBuf,
    pub log: CommitLog<DmaStorage>,
    pub topics: Topics,
    pub offsets: Offsets,
    pub producers: ProducerTable,
    pub producers_floor: u64,
    pub transactions: TransactionTable,
    pub transactions_snapshot_floor: u64,
    pub timers: TimerTable,
    pub peers: Peers,
    pub epochs: EpochHistory,
}

impl Shard {
    pub fn new(parts: ShardParts) -> Self {
        let groups_max = parts.config.groups_max;
        let replica = ReplicaState::new(&parts.config.replication, parts.epochs);
        Shard {
            disk: DiskGuard::new(parts.config.disk_max_used_percent),
            incomplete_frames: IncompleteFrames::new(parts.config.incomplete_frames_bytes_max),
            clock: parts.clock,
            id: parts.id,
            shard_count: parts.shard_count,
            config: parts.config,
            endpoints: parts.endpoints,
            storage: DmaStorage,
            dir: parts.dir,
            log: parts.log,
            topics: RefCell::new(parts.topics),
            offsets: RefCell::new(parts.offsets),
            commits_in_flight: RefCell::new(BTreeMap::new()),
            coordinator: RefCell::new(Coordinator::with_groups_max(parts.id, groups_max)),
            dedup: RefCell::new(parts.producers),
            transactions_floor: Cell::new(
                parts.transactions.oldest_pending().unwrap_or(u64::MAX).min(parts.transactions_snapshot_floor),
            ),
            transactions_snapshot_floor: Cell::new(parts.transactions_snapshot_floor),
            transaction_appends: AppendsInFlight::default(),
            transactions: RefCell::new(parts.transactions),
            producer_links: RefCell::new(ProducerLinks::default()),
            timers_floor: Cell::new(parts.timers.floor().unwrap_or(u64::MAX)),
            timers: RefCell::new(parts.timers),
            timer_wake: Signal::default(),
            timer_pins: RefCell::new(BTreeMap::new()),
            placement_line: PlacementLine::default(),
            offsets_floor: Cell::new(0),
            producers_floor: Cell::new(parts.producers_floor),
            peers: parts.peers,
            next_token: Cell::new(1),
            creates_waiting: RefCell::new(HashMap::new()),
            acks_waiting: RefCell::new(HashMap::new()),
            create_lock: glommio::sync::Semaphore::new(1),
            shutting_down: Cell::new(false),
            requests_in_flight: Cell::new(0),
            connections: Cell::new(0),
            counters: ShardCounters::default(),
            replica,
            promotions_waiting: RefCell::new(HashMap::new()),
        }
    }

    /// Sets one of the floors (`offsets_floor`, `producers_floor`,
    /// `transactions_floor`, `timers_floor`) and the log's retention floor
    /// to the lowest.
    pub fn set_floor(&self, floor: &Cell<u64>, position: u64) {
        floor.set(position);
        let lowest = self.offsets_floor.get().min(self.producers_floor.get()).min(self.transactions_floor.get());
        self.log.set_retention_floor(lowest.min(self.timers_floor.get()));
    }

    /// The timer table changed: retention keeps what its pending entries
    /// need, and the timer task looks again.
    pub fn timers_changed(&self) {
        let pinned = self.timer_pins.borrow().keys().next().copied().unwrap_or(u64::MAX);
        let floor = self.timers.borrow().floor().unwrap_or(u64::MAX).min(pinned);
        self.set_floor(&self.timers_floor, floor);
        self.timer_wake.notify();
    }

    /// Keeps retention off the record at `position` until the pin drops:
    /// for a send-back between reading a message and putting the entry that
    /// points at it in the timer table.
    pub fn pin_for_timers(&self, position: u64) -> TimerPin<'_> {
        *self.timer_pins.borrow_mut().entry(position).or_insert(0) += 1;
        self.timers_changed();
        TimerPin { shard: self, position }
    }

    /// The internal topic `name` (`%RETRY%G`, `%DLQ%G`: one queue per shard,
    /// queue `i` on shard `i`), created on first use.
    pub async fn internal_topic(&self, name: &str) -> Result<Topic, Failure> {
        if let Some(topic) = self.topics.borrow().get(name) {
            return Ok(topic.clone());
        }
        let (topic, _) = self.create_topic(name, self.shard_count).await?;
        Ok(topic)
    }

    /// The commit-log queue ids of the queues this shard owns.
    pub fn owned_queue_ids(&self) -> Vec<u32> {
        owned_queue_ids(&self.topics.borrow(), self.id)
    }

    fn token(&self) -> u64 {
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        token
    }

    async fn send(&self, to: u32, message: CrossMessage) -> Result<(), Failure> {
        let Some(Some(peer)) = self.peers.get(to as usize) else {
            return Err(Failure::new(fb::ErrorCode::Internal, format!("no channel to shard {to}")));
        };
        peer.send(message).await.map_err(|_| Failure::new(fb::ErrorCode::Internal, format!("shard {to} is gone")))
    }

    /// The topic `name`, or `UnknownTopic`.
    pub fn topic(&self, name: &str) -> Result<Topic, Failure> {
        // No topic has a longer name; refused without echoing it.
        super::topics::check_length("topic name", name, TOPIC_NAME_BYTES_MAX)
            .map_err(|failure| Failure::new(fb::ErrorCode::InvalidTopic, failure.message))?;
        self.topics
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| Failure::new(fb::ErrorCode::UnknownTopic, format!("topic {name:?} does not exist")))
    }

    /// The commit-log queue id of `queue` of `topic`, if this shard owns it.
    pub fn owned_queue(&self, topic: &Topic, queue: u32) -> Result<u32, Failure> {
        let Some(owner) = topic.queue_shards.get(queue as usize) else {
            return Err(Failure::new(
                fb::ErrorCode::QueueOutOfRange,
                format!("topic {} has {} queues; queue {queue} does not exist", topic.name, topic.queue_shards.len()),
            ));
        };
        if *owner != self.id {
            return Err(Failure::not_owner(*owner, format!("queue {queue} of {} is on shard {owner}", topic.name)));
        }
        Ok(topic.queue_id(queue))
    }

    /// Creates a topic through shard 0 and resolves once every shard knows it.
    pub async fn create_topic(&self, name: &str, queues: u32) -> Created {
        if self.id == 0 {
            return self.create_topic_here(name, queues).await;
        }
        let token = self.token();
        let (sender, receiver) = local_channel::new_bounded(1);
        self.creates_waiting.borrow_mut().insert(token, sender);
        let request = CrossMessage::CreateTopic { origin: self.id, token, name: name.to_string(), queues };
        if let Err(failure) = self.send(0, request).await {
            self.creates_waiting.borrow_mut().remove(&token);
            return Err(failure);
        }
        receiver.recv().await.unwrap_or_else(|| Err(Failure::new(fb::ErrorCode::Internal, "topic creation lost")))
    }

    /// On shard 0: persist the new table (write-temp, fsync, rename, fsync
    /// dir), then apply it on every shard and wait for each to say so.
    async fn create_topic_here(&self, name: &str, queues: u32) -> Created {
        let internal = |what: &str, error: String| Failure::new(fb::ErrorCode::Internal, format!("{what}: {error}"));
        let _permit =
            self.create_lock.acquire_permit(1).await.map_err(|error| internal("create lock", error.to_string()))?;
        if let Some(existing) = self.topics.borrow().get(name) {
            return Ok((existing.clone(), false));
        }
        let topic = self.topics.borrow().plan(name, queues, self.shard_count)?;
        self.topics.borrow().check_room(name, self.config.topics_max)?;
        let mut table = self.topics.borrow().clone();
        table.apply(topic.clone());
        let path = self.config.data_dir.join(TOPICS_FILE);
        self.storage
            .write_file_atomic(&path, &table.encode())
            .await
            .map_err(|error| internal("writing the topic table", error.to_string()))?;
        self.topics.borrow_mut().apply(topic.clone());
        let token = self.token();
        let others = self.shard_count as usize - 1;
        if others > 0 {
            let (sender, receiver) = local_channel::new_bounded(1);
            self.acks_waiting.borrow_mut().insert(token, (others, sender));
            for peer in 1..self.shard_count {
                self.send(peer, CrossMessage::ApplyTopic { token, topic: topic.clone() }).await?;
            }
            receiver.recv().await;
        }
        tracing::info!(topic = name, queues, "topic created");
        Ok((topic, true))
    }

    /// Announces a group's new assignment to every shard and resolves once
    /// each applied it (or `FENCE_ACK_WAIT_MAX` passed): a member told its
    /// new generation must find every queue shard fencing by it, or its
    /// first commit would be refused as stale.
    pub async fn announce_fence(&self, fence: GroupFence) {
        self.offsets.borrow_mut().fence(&fence);
        let others = self.shard_count as usize - 1;
        if others == 0 {
            return;
        }
        let token = self.token();
        let (sender, receiver) = local_channel::new_bounded(1);
        self.acks_waiting.borrow_mut().insert(token, (others, sender));
        for peer in (0..self.shard_count).filter(|peer| *peer != self.id) {
            let message = CrossMessage::Fence { token, fence: fence.clone() };
            if let Err(failure) = self.send(peer, message).await {
                // A shard that is gone will not answer: do not wait for it.
                tracing::warn!(%failure, peer, "could not send a group fence");
                self.acknowledged(token);
            }
        }
        let acknowledged = futures_lite::future::or(async { receiver.recv().await.is_some() }, async {
            glommio::timer::sleep(FENCE_ACK_WAIT_MAX).await;
            false
        })
        .await;
        if !acknowledged {
            self.acks_waiting.borrow_mut().remove(&token);
            tracing::warn!(group = %fence.group, generation = fence.generation, "not every shard acknowledged a group fence in time");
        }
    }

    /// Promotes every shard, this one too, to primary of `epoch`; each
    /// shard's answer, by shard.
    pub async fn promote_everywhere(self: &Rc<Self>, epoch: u64, replication: Replication) -> Vec<(u32, Promotion)> {
        let token = self.token();
        let (sender, receiver) = local_channel::new_bounded(self.shard_count as usize);
        self.promotions_waiting.borrow_mut().insert(token, sender);
        let mut answers = Vec::new();
        for peer in (0..self.shard_count).filter(|peer| *peer != self.id) {
            if let Err(failure) = self.send(peer, CrossMessage::Promote { token, epoch, replication }).await {
                answers.push((peer, Err(failure)));
            }
        }
        answers.push((self.id, promotion::promote_here(self, epoch, replication).await));
        while answers.len() < self.shard_count as usize {
            match receiver.recv().await {
                Some(answer) => answers.push(answer),
                None => break,
            }
        }
        self.promotions_waiting.borrow_mut().remove(&token);
        answers.sort_by_key(|(id, _)| *id);
        answers
    }

    fn acknowledged(&self, token: u64) {
        let mut waiting = self.acks_waiting.borrow_mut();
        if let Some((remaining, _)) = waiting.get_mut(&token) {
            *remaining -= 1;
            if *remaining == 0 {
                if let Some((_, sender)) = waiting.remove(&token) {
                    let _ = sender.try_send(());
                }
            }
        }
    }

    /// Handles a message from another shard.
    pub async fn on_cross(self: &Rc<Self>, from: u32, message: CrossMessage) {
        match message {
            CrossMessage::CreateTopic { origin, token, name, queues } => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let result = shard.create_topic_here(&name, queues).await;
                    if let Err(failure) = shard.send(origin, CrossMessage::CreateTopicDone { token, result }).await {
                        tracing::warn!(%failure, "could not answer a topic creation");
                    }
                })
                .detach();
            }
            CrossMessage::ApplyTopic { token, topic } => {
                self.topics.borrow_mut().apply(topic);
                if let Err(failure) = self.send(from, CrossMessage::TopicApplied { token }).await {
                    tracing::warn!(%failure, "could not acknowledge a topic");
                }
            }
            CrossMessage::TopicApplied { token } | CrossMessage::FenceApplied { token } => self.acknowledged(token),
            CrossMessage::CreateTopicDone { token, result } => {
                if let Some(sender) = self.creates_waiting.borrow_mut().remove(&token) {
                    let _ = sender.try_send(result);
                }
            }
            CrossMessage::Promote { token, epoch, replication } => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let result = promotion::promote_here(&shard, epoch, replication).await;
                    if let Err(failure) = shard.send(from, CrossMessage::Promoted { token, result }).await {
                        tracing::warn!(%failure, "could not answer a promotion");
                    }
                })
                .detach();
            }
            CrossMessage::Promoted { token, result } => {
                if let Some(sender) = self.promotions_waiting.borrow().get(&token) {
                    let _ = sender.try_send((from, result));
                }
            }
            CrossMessage::Fence { token, fence } => {
                self.offsets.borrow_mut().fence(&fence);
                if let Err(failure) = self.send(from, CrossMessage::FenceApplied { token }).await {
                    tracing::warn!(%failure, "could not acknowledge a group fence");
                }
            }
        }
    }
}

/// A record retention keeps while this lives (`Shard::pin_for_timers`).
pub struct TimerPin<'a> {
    shard: &'a Shard,
    position: u64,
}

impl Drop for TimerPin<'_> {
    fn drop(&mut self) {
        let mut pins = self.shard.timer_pins.borrow_mut();
        if let Some(count) = pins.get_mut(&self.position) {
            *count -= 1;
            if *count == 0 {
                pins.remove(&self.position);
            }
        }
        drop(pins);
        self.shard.timers_changed();
    }
}

/// Loads the topic table a shard starts with.
pub async fn load_topics(storage: &DmaStorage, config: &ServerConfig) -> Result<Topics, String> {
    let path = config.data_dir.join(TOPICS_FILE);
    match storage.read_file(&path).await {
        Ok(Some(bytes)) => Topics::decode(&bytes).map_err(|error| format!("{}: {error}", path.display())),
        Ok(None) => Ok(Topics::default()),
        Err(error) => Err(format!("{}: {error}", path.display())),
    }
}

/// The commit-log queue ids of the queues shard `id` owns.
pub fn owned_queue_ids(topics: &Topics, id: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    for topic in topics.topics.values() {
        for (queue, owner) in topic.queue_shards.iter().enumerate() {
            if *owner == id {
                ids.push(topic.queue_id(queue as u32));
            }
        }
    }
    ids
}
