//! The consumer client against a broker process: heartbeats go on while the
//! application does not poll, the rebalance listener hears of every queue
//! gained and lost, `seek` moves a queue's position, and a group with no
//! committed offset starts where `offset_reset` says.

mod common;

use common::Broker;
use ringmq::client::{
    Client, Consumer, ConsumerOptions, OffsetReset, OutgoingMessage, Producer, ProducerOptions, QueueChoice,
    RebalanceListener,
};
use ringmq::protocol::{self, fb, verify, Kind};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const QUEUES: u32 = 4;

fn options() -> ConsumerOptions {
    ConsumerOptions { session_timeout_ms: 1000, max_wait: Duration::from_millis(100), ..ConsumerOptions::default() }
}

fn setup() -> (Broker, Arc<Client>, Producer) {
    let broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("work", QUEUES).expect("create");
    let producer = Producer::new(client.clone(), "work", ProducerOptions::default()).expect("producer");
    (broker, client, producer)
}

fn send(producer: &Producer, queue: u32, body: &str) {
    let message = OutgoingMessage { body: body.as_bytes(), ..Default::default() };
    producer.send(&message, QueueChoice::Explicit(queue)).expect("send");
}

/// Polls until `count` messages came (or 10 s passed); returns (queue, offset, body).
fn receive(consumer: &mut Consumer, count: usize) -> Vec<(u32, u64, String)> {
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.len() < count && Instant::now() < deadline {
        for message in consumer.poll().expect("poll") {
            received.push((message.queue, message.offset, String::from_utf8(message.body).expect("utf-8")));
        }
    }
    received
}

#[test]
fn a_consumer_that_does_not_poll_stays_in_its_group() {
    let (_broker, client, _producer) = setup();
    let consumer = Consumer::join(client.clone(), "g", "work", options()).expect("join");
    let generation = consumer.generation();
    // Three session timeouts without a poll: only the background heartbeats
    // keep the member.
    std::thread::sleep(Duration::from_millis(3000));
    let body = protocol::heartbeat_request("g", "work", consumer.member_id());
    let answer = client.call(client.coordinator("g"), Kind::HeartbeatRequest, &body).expect("still a member");
    let assignment = protocol::read_assignment(verify::<fb::GroupAssignment>(&answer).expect("assignment"));
    assert_eq!(assignment.generation, generation, "the member never expired");
    assert_eq!(assignment.queues.len(), QUEUES as usize);
}

/// What the listener heard: ("assigned" or "revoked", the queues).
type Event = (&'static str, Vec<u32>);

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Event>>>);

impl RebalanceListener for Recorder {
    fn revoked(&mut self, queues: &[u32]) {
        self.0.lock().expect("events").push(("revoked", queues.to_vec()));
    }

    fn assigned(&mut self, queues: &[u32]) {
        self.0.lock().expect("events").push(("assigned", queues.to_vec()));
    }
}

#[test]
fn the_rebalance_listener_hears_of_queues_gained_and_lost() {
    let (_broker, client, _producer) = setup();
    let recorder = Recorder::default();
    let listener = Box::new(recorder.clone());
    let mut first = Consumer::join_with_listener(client.clone(), "g", "work", options(), Some(listener)).expect("join");
    assert_eq!(recorder.0.lock().expect("events").clone(), vec![("assigned", vec![0, 1, 2, 3])]);
    let second = Consumer::join(client.clone(), "g", "work", options()).expect("join");
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.generation() != second.generation() && Instant::now() < deadline {
        first.poll().expect("poll");
    }
    let lost = second.assigned_queues().to_vec();
    assert_eq!(lost.len(), 2);
    second.leave().expect("leave");
    while first.assigned_queues().len() != QUEUES as usize && Instant::now() < deadline {
        first.poll().expect("poll");
    }
    let events = recorder.0.lock().expect("events").clone();
    assert_eq!(events, vec![("assigned", vec![0, 1, 2, 3]), ("revoked", lost.clone()), ("assigned", lost)]);
}

#[test]
fn seek_moves_a_queue_back_and_an_unheld_queue_is_refused() {
    let (_broker, client, producer) = setup();
    for index in 0..5 {
        send(&producer, 0, &format!("m{index}"));
    }
    let mut consumer = Consumer::join(client.clone(), "g", "work", options()).expect("join");
    let first: Vec<u64> = receive(&mut consumer, 5).into_iter().map(|(_, offset, _)| offset).collect();
    assert_eq!(first, vec![0, 1, 2, 3, 4]);
    consumer.seek(0, 2).expect("seek");
    let again: Vec<u64> = receive(&mut consumer, 3).into_iter().map(|(_, offset, _)| offset).collect();
    assert_eq!(again, vec![2, 3, 4]);
    assert!(consumer.seek(QUEUES, 0).is_err(), "a queue the consumer does not hold");
}

#[test]
fn a_group_without_commits_starts_where_the_reset_policy_says() {
    let (_broker, client, producer) = setup();
    for queue in 0..QUEUES {
        send(&producer, queue, &format!("old-{queue}"));
    }
    let latest = ConsumerOptions { offset_reset: OffsetReset::Latest, ..options() };
    let mut from_latest = Consumer::join(client.clone(), "latest", "work", latest).expect("join");
    let mut from_earliest = Consumer::join(client.clone(), "earliest", "work", options()).expect("join");
    for queue in 0..QUEUES {
        send(&producer, queue, &format!("new-{queue}"));
    }
    let mut bodies: Vec<String> = receive(&mut from_latest, 4).into_iter().map(|(_, _, body)| body).collect();
    bodies.sort();
    assert_eq!(bodies, ["new-0", "new-1", "new-2", "new-3"]);
    assert!(receive(&mut from_latest, 1).is_empty(), "nothing older comes later");
    assert_eq!(receive(&mut from_earliest, 8).len(), 8, "earliest: the old messages too");
}

#[test]
fn after_a_broker_restart_a_commit_is_refused_until_the_consumer_joined_again() {
    let (mut broker, client, producer) = setup();
    send(&producer, 0, "before");
    // A long session: the heartbeat thread beats every 10 s, so the rejoin
    // below is the commit's own doing.
    let slow_beats = ConsumerOptions { session_timeout_ms: 30_000, ..options() };
    let mut consumer = Consumer::join(client.clone(), "g", "work", slow_beats).expect("join");
    consumer.commit(0, 1).expect("commit before the restart");
    broker.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        match consumer.commit(0, 1) {
            Err(error) if error.is_unreachable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => break other,
        }
    };
    // The restarted broker knows no assignment of the group.
    let error = refusal.expect_err("a shard that knows no assignment refuses");
    assert_eq!(error.code(), Some(fb::ErrorCode::StaleGeneration), "{error}");
    consumer.commit(0, 1).expect("the consumer joined again: its next commit counts");
    assert_eq!(consumer.committed_offset(0).expect("offset"), Some(1));
}
