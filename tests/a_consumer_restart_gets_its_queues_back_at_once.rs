//! `ringmq consume` processes in a group with a member the test drives by
//! hand (raw join and heartbeats, 30 s session): a static consumer
//! (`--instance-id`) killed with SIGKILL and started again gets its queues
//! back at once, without a rebalance, and the messages produced meanwhile;
//! a plain consumer that exits (`--max`, SIGTERM) commits what it printed and
//! leaves, so the other member gets every queue at once, long before any
//! session timeout.

mod common;

use common::Broker;
use ringmq::client::{Client, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::{self, fb, verify, Assignment, Kind};
use std::collections::BTreeSet;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const QUEUES: u32 = 4;
/// Far longer than any wait below: no queue moves by a session expiring.
const SESSION_MS: u32 = 30_000;

struct Member<'a> {
    client: &'a Client,
    member_id: String,
}

impl Member<'_> {
    fn join(client: &Client) -> Member<'_> {
        let body = protocol::join_group_request("g", "work", "", "", SESSION_MS);
        let answer = client.call(client.coordinator("g"), Kind::JoinGroupRequest, &body).expect("join");
        let assignment = protocol::read_assignment(verify::<fb::GroupAssignment>(&answer).expect("assignment"));
        Member { client, member_id: assignment.member_id }
    }

    fn heartbeat(&self) -> Assignment {
        let body = protocol::heartbeat_request("g", "work", &self.member_id);
        let answer = self.client.call(self.client.coordinator("g"), Kind::HeartbeatRequest, &body).expect("heartbeat");
        protocol::read_assignment(verify::<fb::GroupAssignment>(&answer).expect("assignment"))
    }

    /// Heartbeats until it holds `queues` queues; fails after `limit`.
    fn wait_for_queues(&self, queues: usize, limit: Duration, what: &str) -> Assignment {
        let deadline = Instant::now() + limit;
        loop {
            let assignment = self.heartbeat();
            if assignment.queues.len() == queues {
                return assignment;
            }
            assert!(Instant::now() < deadline, "{what}: still {:?} after {limit:?}", assignment.queues);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `ringmq consume` process whose JSON lines arrive on `lines`.
struct Consume {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Consume {
    fn start(broker: &Broker, extra: &[&str]) -> Consume {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["consume", "--topic", "work", "--group", "g", "--broker", &broker.address()])
            .args(["--session-timeout-ms", &SESSION_MS.to_string(), "--log", "warn"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ringmq consume");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let value = serde_json::from_str(&line).unwrap_or_else(|error| panic!("{line:?}: {error}"));
                if sender.send(value).is_err() {
                    return;
                }
            }
        });
        Consume { child, lines }
    }

    /// Bodies printed until every one of `wanted` was, within `limit`.
    fn read_until(&self, wanted: &BTreeSet<String>, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + limit;
        let mut printed = Vec::new();
        let mut missing = wanted.clone();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("not printed within {limit:?}: {missing:?}");
            };
            missing.remove(line["body"].as_str().expect("a body"));
            printed.push(line);
        }
        printed
    }
}

impl Drop for Consume {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn producer(client: &Arc<Client>) -> Producer {
    Producer::new(client.clone(), "work", ProducerOptions::default()).expect("producer")
}

/// Sends `count` messages to each queue; returns the bodies by queue.
fn produce(producer: &Producer, label: &str, count: usize) -> Vec<BTreeSet<String>> {
    let mut bodies = vec![BTreeSet::new(); QUEUES as usize];
    for queue in 0..QUEUES {
        for index in 0..count {
            let body = format!("{label}-q{queue}-{index}");
            let message = OutgoingMessage { body: body.as_bytes(), ..Default::default() };
            producer.send(&message, QueueChoice::Explicit(queue)).expect("send");
            bodies[queue as usize].insert(body);
        }
    }
    bodies
}

fn of_queues(bodies: &[BTreeSet<String>], queues: &[u32]) -> BTreeSet<String> {
    queues.iter().flat_map(|queue| bodies[*queue as usize].iter().cloned()).collect()
}

fn others(queues: &[u32]) -> Vec<u32> {
    (0..QUEUES).filter(|queue| !queues.contains(queue)).collect()
}

#[test]
fn a_static_consumer_killed_and_started_again_gets_its_queues_back_without_a_rebalance() {
    let broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("work", QUEUES).expect("create");
    let producer = producer(&client);
    let member = Member::join(&client);

    let mut first = Consume::start(&broker, &["--instance-id", "worker-1"]);
    let split = member.wait_for_queues(2, Duration::from_secs(10), "the static consumer joined");
    let static_queues = others(&split.queues);
    let before = produce(&producer, "before", 5);
    first.read_until(&of_queues(&before, &static_queues), Duration::from_secs(15));
    // SIGKILL: no leave, no commit after this point.
    let _ = first.child.kill();
    let _ = first.child.wait();
    let meanwhile = produce(&producer, "meanwhile", 5);

    let started = Instant::now();
    let second = Consume::start(&broker, &["--instance-id", "worker-1", "--idle-exit-ms", "3000"]);
    let printed = second.read_until(&of_queues(&meanwhile, &static_queues), Duration::from_secs(10));
    assert!(
        started.elapsed() < Duration::from_millis(u64::from(SESSION_MS) / 2),
        "the restarted consumer waited for the old session to expire"
    );
    let after = member.heartbeat();
    assert_eq!(after.generation, split.generation, "no rebalance");
    assert_eq!(after.queues, split.queues, "the other member kept its queues");
    for line in &printed {
        let queue = line["queue"].as_u64().expect("a queue") as u32;
        assert!(static_queues.contains(&queue), "printed a message of queue {queue}, not its own: {line}");
    }
}

#[test]
fn a_plain_consumer_that_exits_or_is_terminated_leaves_and_its_queues_move_at_once() {
    let broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("work", QUEUES).expect("create");
    let producer = producer(&client);
    let member = Member::join(&client);

    // Exit on --max.
    let mut bounded = Consume::start(&broker, &["--max", "3"]);
    member.wait_for_queues(2, Duration::from_secs(10), "the consumer joined");
    let _ = produce(&producer, "first", 2);
    let status = common::exit_within(&mut bounded.child, Duration::from_secs(20), "ringmq consume --max 3");
    assert!(status.success(), "{status}");
    member.wait_for_queues(QUEUES as usize, Duration::from_secs(3), "after the consumer's exit");

    // SIGTERM.
    let mut terminated = Consume::start(&broker, &[]);
    let split = member.wait_for_queues(2, Duration::from_secs(10), "the consumer joined");
    let its_queues = others(&split.queues);
    let second = produce(&producer, "second", 3);
    let printed = terminated.read_until(&of_queues(&second, &its_queues), Duration::from_secs(15));
    // SAFETY: signalling our own child, not yet waited for: its pid is its own.
    unsafe {
        libc::kill(terminated.child.id() as i32, libc::SIGTERM);
    }
    let status = common::exit_within(&mut terminated.child, Duration::from_secs(10), "ringmq consume on SIGTERM");
    assert!(status.success(), "SIGTERM ends ringmq consume with 0: {status}");
    member.wait_for_queues(QUEUES as usize, Duration::from_secs(3), "after SIGTERM");
    // What it printed is committed.
    for queue in &its_queues {
        let printed_end = printed
            .iter()
            .filter(|line| line["queue"].as_u64() == Some(u64::from(*queue)))
            .filter_map(|line| line["offset"].as_u64())
            .max()
            .map(|offset| offset + 1);
        let shard = client.topic("work").expect("topic").queue_shards[*queue as usize];
        let body = protocol::fetch_offset_request("g", "work", *queue);
        let answer = client.call(shard, Kind::FetchOffsetRequest, &body).expect("fetch offset");
        let committed = u64::try_from(verify::<fb::OffsetResponse>(&answer).expect("offset").offset()).ok();
        assert_eq!(committed, printed_end, "queue {queue}");
    }
}
