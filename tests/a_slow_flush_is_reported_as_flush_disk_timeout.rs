//! With `sync_flush_timeout_ms = 0` no fdatasync can finish in time: every
//! send is answered FLUSH_DISK_TIMEOUT (stored, durability not confirmed),
//! and the message is still stored and delivered once it is durable.

mod common;

use common::Broker;
use ringmq::client::{Client, Consumer, ConsumerOptions, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::fb;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn a_send_past_the_flush_timeout_says_so_and_the_message_is_kept() {
    let broker = Broker::start_with_config(1, Some("sync_flush_timeout_ms = 0\n"));
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("slow", 1).expect("create");
    let producer = Producer::new(client.clone(), "slow", ProducerOptions::default()).expect("producer");
    let message = OutgoingMessage { body: b"late but kept", ..Default::default() };
    let receipt = producer.send(&message, QueueChoice::Explicit(0)).expect("send");
    assert_eq!(receipt.status, fb::SendStatus::FlushDiskTimeout);

    let options = ConsumerOptions { max_wait: Duration::from_millis(200), ..ConsumerOptions::default() };
    let mut consumer = Consumer::join(client, "readers", "slow", options).expect("join");
    let mut bodies = Vec::new();
    for _ in 0..20 {
        bodies.extend(consumer.poll().expect("poll").into_iter().map(|message| message.body));
        if !bodies.is_empty() {
            break;
        }
    }
    assert_eq!(bodies, [b"late but kept".to_vec()]);
}
