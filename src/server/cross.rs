//! Cross-shard messages. They are rare (topic creation, group fences) and go
//! over glommio shared channels, one per ordered pair of shards; nothing on
//! the produce or fetch path crosses shards.

use super::groups::GroupFence;
use super::replication::promotion::Promotion;
use super::replication::Replication;
use super::topics::Topic;
use crate::protocol::Failure;
use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender};

/// Capacity of each channel between two shards.
const CROSS_CHANNEL_CAPACITY: usize = 1024;

#[derive(Debug)]
pub enum CrossMessage {
    /// To shard 0, which creates topics one at a time.
    CreateTopic {
        origin: u32,
        token: u64,
        name: String,
        queues: u32,
    },
    /// From shard 0 to every other shard: apply and acknowledge.
    ApplyTopic {
        token: u64,
        topic: Topic,
    },
    TopicApplied {
        token: u64,
    },
    /// From shard 0 to the shard that asked.
    CreateTopicDone {
        token: u64,
        result: Result<(Topic, bool), Failure>,
    },
    /// From a group's coordinator to every other shard: the group's new
    /// generation and queue owners; apply and acknowledge (`FenceApplied`).
    /// Only the owner of a queue in that generation may commit its offset.
    Fence {
        token: u64,
        fence: GroupFence,
    },
    FenceApplied {
        token: u64,
    },
    /// From the shard a PROMOTE reached to every other shard: become
    /// primary of `epoch` and answer (`Promoted`).
    Promote {
        token: u64,
        epoch: u64,
        replication: Replication,
    },
    Promoted {
        token: u64,
        result: Promotion,
    },
}

/// The unconnected ends of one shard's channels, indexed by peer shard.
pub struct CrossEnds {
    pub senders: Vec<Option<SharedSender<CrossMessage>>>,
    pub receivers: Vec<Option<SharedReceiver<CrossMessage>>>,
}

/// Channels for every ordered pair of `shards` shards: element `i` of the
/// result belongs to shard `i`.
pub fn cross_channels(shards: usize) -> Vec<CrossEnds> {
    let mut ends: Vec<CrossEnds> = (0..shards)
        .map(|_| CrossEnds {
            senders: (0..shards).map(|_| None).collect(),
            receivers: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (sender, receiver) = shared_channel::new_bounded(CROSS_CHANNEL_CAPACITY);
                ends[from].senders[to] = Some(sender);
                ends[to].receivers[from] = Some(receiver);
            }
        }
    }
    ends
}

pub type Peers = Vec<Option<ConnectedSender<CrossMessage>>>;
pub type Inboxes = Vec<ConnectedReceiver<CrossMessage>>;

/// Connects every end; the peers connect theirs concurrently.
pub async fn connect(ends: CrossEnds) -> (Peers, Inboxes) {
    let receivers: Vec<_> =
        ends.receivers.into_iter().flatten().map(|receiver| glommio::spawn_local(receiver.connect())).collect();
    let senders: Vec<_> =
        ends.senders.into_iter().map(|sender| sender.map(|sender| glommio::spawn_local(sender.connect()))).collect();
    let mut peers = Vec::new();
    for sender in senders {
        peers.push(match sender {
            Some(task) => Some(task.await),
            None => None,
        });
    }
    let mut inboxes = Vec::new();
    for receiver in receivers {
        inboxes.push(receiver.await);
    }
    (peers, inboxes)
}
