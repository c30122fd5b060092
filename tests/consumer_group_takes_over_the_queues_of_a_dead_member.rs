//! Two consumers split the queues; one dies (stops without leaving, as a
//! killed process would); after its session expires the other takes its
//! queues over, and every produced message is consumed at least once.

mod common;

use common::Broker;
use ringmq::client::{Client, Consumer, ConsumerOptions, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const QUEUES: u32 = 4;
const MESSAGES: usize = 200;

fn options() -> ConsumerOptions {
    ConsumerOptions { session_timeout_ms: 1000, max_wait: Duration::from_millis(100), ..ConsumerOptions::default() }
}

fn consume_some(consumer: &mut Consumer, seen: &mut BTreeSet<String>, polls: usize) {
    for _ in 0..polls {
        let messages = consumer.poll().expect("poll");
        let mut next = std::collections::BTreeMap::new();
        for message in messages {
            seen.insert(String::from_utf8(message.body).expect("utf-8"));
            next.insert(message.queue, message.offset + 1);
        }
        for (queue, offset) in next {
            // A stale generation during a rebalance is fine: the message
            // comes again to the new owner.
            let _ = consumer.commit(queue, offset);
        }
    }
}

#[test]
fn the_survivor_takes_over_the_queues_of_a_dead_member() {
    let broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("work", QUEUES).expect("create");
    let producer = Producer::new(client.clone(), "work", ProducerOptions::default()).expect("producer");
    let bodies: Vec<String> = (0..MESSAGES).map(|index| format!("job-{index}")).collect();

    let mut alive = Consumer::join(client.clone(), "workers", "work", options()).expect("join a");
    let mut doomed = Consumer::join(client.clone(), "workers", "work", options()).expect("join b");
    let mut seen = BTreeSet::new();
    // Let both see the two-member assignment (heartbeats bring it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive.generation() != doomed.generation() && Instant::now() < deadline {
        consume_some(&mut alive, &mut seen, 1);
        consume_some(&mut doomed, &mut seen, 1);
    }
    assert_eq!(alive.assigned_queues().len() + doomed.assigned_queues().len(), QUEUES as usize);
    assert!(!doomed.assigned_queues().is_empty());

    for body in &bodies[..MESSAGES / 2] {
        producer
            .send(&OutgoingMessage { body: body.as_bytes(), ..Default::default() }, QueueChoice::RoundRobin)
            .expect("send");
    }
    consume_some(&mut alive, &mut seen, 3);
    consume_some(&mut doomed, &mut seen, 3);
    // The member dies: no leave, no more heartbeats.
    drop(doomed);
    for body in &bodies[MESSAGES / 2..] {
        producer
            .send(&OutgoingMessage { body: body.as_bytes(), ..Default::default() }, QueueChoice::RoundRobin)
            .expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < MESSAGES && Instant::now() < deadline {
        consume_some(&mut alive, &mut seen, 1);
    }
    assert_eq!(alive.assigned_queues().len(), QUEUES as usize, "the survivor owns every queue");
    let missing: Vec<_> = bodies.iter().filter(|body| !seen.contains(*body)).collect();
    assert!(missing.is_empty(), "never consumed: {missing:?}");
}
