//! Delayed messages (deliver-at times and levels) are stored once,
//! invisible, and indexed into their queue when due. Killed with SIGKILL
//! again and again while deliveries are pending, the broker still delivers
//! each one exactly once into its queue and never before its time. A
//! deliver-at past `delay_max_ms`, or a level the broker does not have, is
//! refused.

mod common;

use common::Broker;
use ringmq::client::{
    Client, ClientError, Consumer, ConsumerOptions, OutgoingMessage, Producer, ProducerOptions, QueueChoice,
};
use ringmq::protocol::{self, fb, verify, FetchParams, Kind};
use ringmq::storage::now_us;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MESSAGES: u64 = 300;
const QUEUES: u32 = 4;
const CONFIG: &str = "delay_levels = \"200ms 700ms 1500ms\"\ndelay_max_ms = 60000\n";

/// Every message now in the queues of `topic`: (body, queue, offset).
fn stored(client: &Client, topic: &str) -> Vec<(String, u32, u64)> {
    let layout = client.topic(topic).expect("topic");
    let mut found = Vec::new();
    for (queue, shard) in layout.queue_shards.iter().enumerate() {
        let mut offset = 0;
        loop {
            let params = FetchParams {
                topic: topic.into(),
                queue: queue as u32,
                offset,
                max_count: 1000,
                max_bytes: 4 << 20,
                ..FetchParams::default()
            };
            let body = client.call(*shard, Kind::FetchRequest, &protocol::fetch_request(&params)).expect("fetch");
            let response = verify::<fb::FetchResponse>(&body).expect("response");
            let first = offset.max(response.earliest_offset());
            let (messages, _) =
                ringmq::client::fetched_messages(&body, &response, topic, queue as u32, first).expect("records");
            for message in messages {
                found.push((String::from_utf8_lossy(&message.body).to_string(), message.queue, message.offset));
            }
            if response.next_offset() <= offset {
                break;
            }
            offset = response.next_offset();
        }
    }
    found
}

#[test]
fn delayed_messages_are_never_early_lost_or_doubled_across_kill_9() {
    let mut broker = Broker::start_with_config(2, Some(CONFIG));
    let address = broker.address();
    let client = Arc::new(Client::connect(&address).expect("connect"));
    client.create_topic("reminders", QUEUES).expect("create");
    let producer = Producer::new(client.clone(), "reminders", ProducerOptions::default()).expect("producer");

    // Refused, with the reason.
    let far = OutgoingMessage { body: b"far", deliver_at_ms: now_us() / 1000 + 120_000, ..Default::default() };
    let refused = producer.send(&far, QueueChoice::Explicit(0)).expect_err("past delay_max_ms");
    assert!(
        matches!(&refused, ClientError::Broker(f) if f.code == fb::ErrorCode::InvalidMessage && f.message.contains("delay_max_ms")),
        "{refused}"
    );
    let no_level = OutgoingMessage { body: b"level 4", delay_level: 4, ..Default::default() };
    let refused = producer.send(&no_level, QueueChoice::Explicit(0)).expect_err("no level 4");
    assert!(refused.to_string().contains("levels 1 to 3"), "{refused}");

    // A consumer through it all: when each message first reached it.
    let received: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (received, stop, address) = (received.clone(), stop.clone(), address.clone());
        std::thread::spawn(move || {
            let client = Arc::new(Client::connect(&address).expect("connect"));
            let options = ConsumerOptions { max_wait: Duration::from_millis(50), ..ConsumerOptions::default() };
            let mut consumer = Consumer::join(client, "watch", "reminders", options).expect("join");
            while !stop.load(Ordering::SeqCst) {
                let Ok(messages) = consumer.poll() else { continue };
                let now_ms = now_us() / 1000;
                let mut received = received.lock().expect("lock");
                for message in messages {
                    received.entry(String::from_utf8_lossy(&message.body).to_string()).or_insert(now_ms);
                }
            }
        })
    };

    // Each message is due at a known time: by deliver-at (some in the past)
    // or by level (due from its store time, which the receipt gives). They
    // are sent while the broker is killed and restarted: the producer
    // resends through each restart, and a resend is never stored twice.
    let sending = {
        let producer = Producer::new(client.clone(), "reminders", ProducerOptions::default()).expect("producer");
        std::thread::spawn(move || {
            let mut due_ms: BTreeMap<String, u64> = BTreeMap::new();
            for number in 0..MESSAGES {
                let body = format!("m{number}");
                let now_ms = now_us() / 1000;
                let message = match number % 4 {
                    0 => OutgoingMessage { deliver_at_ms: now_ms + 300 + number * 7, ..Default::default() },
                    1 => OutgoingMessage { deliver_at_ms: now_ms.saturating_sub(5_000), ..Default::default() },
                    2 => OutgoingMessage { delay_level: 2, ..Default::default() },
                    _ => OutgoingMessage { delay_level: 3, ..Default::default() },
                };
                let message = OutgoingMessage { body: body.as_bytes(), ..message };
                let receipt = producer.send(&message, QueueChoice::RoundRobin).expect("send");
                assert_eq!(receipt.offset, None, "a delayed message has no offset until it is due");
                let stored_ms = receipt.store_timestamp_us / 1000;
                let due = match number % 4 {
                    0 | 1 => message.deliver_at_ms,
                    2 => stored_ms + 700,
                    _ => stored_ms + 1500,
                };
                due_ms.insert(body, due);
                std::thread::sleep(Duration::from_millis(5));
            }
            due_ms
        })
    };
    // Kill the broker while messages arrive and deliveries are due.
    let started = Instant::now();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(fastrand::u64(200..700)));
        broker.kill();
        broker.restart();
    }
    let due_ms = sending.join().expect("the producer");
    let last_due = *due_ms.values().max().expect("messages");
    while now_us() / 1000 < last_due + 1000 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }

    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("the watching consumer");
    let received = received.lock().expect("lock").clone();
    for (body, due) in &due_ms {
        if let Some(at) = received.get(body) {
            assert!(at >= due, "{body} reached a consumer at {at}, before it was due at {due}");
        }
    }
    assert!(received.len() as u64 > MESSAGES / 2, "the consumer saw most deliveries: {}", received.len());

    let found = stored(&client, "reminders");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (body, _, _) in &found {
        *seen.entry(body.clone()).or_default() += 1;
    }
    let missing: Vec<_> = due_ms.keys().filter(|body| !seen.contains_key(*body)).collect();
    assert!(missing.is_empty(), "lost delayed messages: {missing:?}");
    let doubled: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(doubled.is_empty(), "delivered twice by the broker: {doubled:?}");
    assert_eq!(found.len() as u64, MESSAGES);

    // And one more watched closely: invisible until due, visible after.
    let client = Arc::new(Client::connect(&address).expect("connect"));
    let producer = Producer::new(client.clone(), "reminders", ProducerOptions::default()).expect("producer");
    // Far enough out that a loaded machine still looks before it is due.
    let due = now_us() / 1000 + 3000;
    let late = OutgoingMessage { body: b"late", deliver_at_ms: due, ..Default::default() };
    producer.send(&late, QueueChoice::Explicit(1)).expect("send");
    let mut looked_before_due = 0;
    while now_us() / 1000 < due + 3000 {
        let visible = stored(&client, "reminders").iter().any(|(body, _, _)| body == "late");
        // Read after the fetch: it may have seen the message at any moment
        // until it returned.
        let now_ms = now_us() / 1000;
        assert!(!visible || now_ms >= due, "visible by {now_ms}, due at {due}");
        if visible {
            break;
        }
        if now_ms < due {
            looked_before_due += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(looked_before_due > 0, "the delayed message was never looked at before it was due");
    assert!(stored(&client, "reminders").iter().any(|(body, _, _)| body == "late"), "delivered when due");
}
