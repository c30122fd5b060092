//! Ordered consumption: a message answered RECONSUME_LATER blocks its queue
//! (nothing behind it is handed over first) and comes again after a local
//! back-off; one that keeps failing goes to the dead-letter topic after the
//! maximum and the queue goes on, in order.

mod common;

use common::{ringmq, Broker};
use ringmq::client::{
    Client, ConsumeResult, ConsumerOptions, GroupConsumer, OutgoingMessage, Producer, ProducerOptions, QueueChoice,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn ordered_consumption_holds_a_queue_at_a_failing_message() {
    let broker = Broker::start(1);
    let address = broker.address();
    let client = Arc::new(Client::connect(&address).expect("connect"));
    client.create_topic("ledger", 1).expect("create");
    let producer = Producer::new(client.clone(), "ledger", ProducerOptions::default()).expect("producer");
    for body in ["m0", "flaky", "m2", "poison", "m4"] {
        let message = OutgoingMessage { body: body.as_bytes(), ..Default::default() };
        producer.send(&message, QueueChoice::Explicit(0)).expect("send");
    }
    let options = ConsumerOptions { max_wait: Duration::from_millis(100), ..ConsumerOptions::default() };
    let mut consumer = GroupConsumer::join(client, "books", "ledger", options, 2).expect("join");
    consumer.ordered_backoff = Duration::from_millis(200);
    let mut seen: Vec<(String, u32, Instant)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) && !seen.iter().any(|(body, _, _)| body == "m4") {
        consumer
            .handle_next_ordered(|message| {
                let body = String::from_utf8_lossy(&message.body).to_string();
                seen.push((body.clone(), message.reconsume_times, Instant::now()));
                let failures = seen.iter().filter(|(seen_body, _, _)| *seen_body == body).count();
                match body.as_str() {
                    "flaky" if failures < 3 => ConsumeResult::Later,
                    "poison" => ConsumeResult::Later,
                    _ => ConsumeResult::Success,
                }
            })
            .expect("handle");
    }
    let order: Vec<(&str, u32)> = seen.iter().map(|(body, times, _)| (body.as_str(), *times)).collect();
    assert_eq!(
        order,
        [
            ("m0", 0),
            ("flaky", 0),
            ("flaky", 1),
            ("flaky", 2),
            ("m2", 0),
            ("poison", 0),
            ("poison", 1),
            ("poison", 2),
            ("m4", 0)
        ],
        "in order, a failing message held its queue"
    );
    for pair in seen.windows(2).filter(|pair| pair[0].0 == pair[1].0) {
        assert!(pair[1].2.duration_since(pair[0].2) >= Duration::from_millis(190), "a retry came before its back-off");
    }
    let letters = ringmq(&["dlq", "list", "--group", "books", "--json", "--broker", &address], "");
    let bodies: Vec<&str> = letters.iter().map(|line| line["body"].as_str().expect("body")).collect();
    assert_eq!(bodies, ["poison"], "the message that kept failing is a dead letter, the flaky one is not");
}
