//! Round trip through a real broker process and the real client: single and
//! batch sends, consumption, long poll, NOT_OWNER routing, restart.

mod common;

use common::Broker;
use ringmq::client::{Client, Consumer, ConsumerOptions, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::{self, fb, FetchParams, Kind};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

fn drain(consumer: &mut Consumer, expected: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for _ in 0..200 {
        for message in consumer.poll().expect("poll") {
            bodies.push(String::from_utf8(message.body.clone()).expect("utf-8"));
            consumer.commit(message.queue, message.offset + 1).expect("commit");
        }
        if bodies.len() >= expected {
            break;
        }
    }
    bodies
}

#[test]
fn messages_round_trip_through_a_real_broker() {
    let broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    let (topic, created) = client.create_topic("orders", 4).expect("create");
    assert!(created);
    assert_eq!(topic.queue_shards.len(), 4);
    let (_, created_again) = client.create_topic("orders", 9).expect("create again");
    assert!(!created_again, "an existing topic is kept as it is");

    let producer = Producer::new(client.clone(), "orders", ProducerOptions::default()).expect("producer");
    let mut sent = BTreeSet::new();
    for index in 0..20 {
        let body = format!("single-{index}");
        let receipt =
            producer.send(&OutgoingMessage { body: body.as_bytes(), ..Default::default() }, QueueChoice::RoundRobin);
        assert_eq!(receipt.expect("send").status, fb::SendStatus::SendOk);
        sent.insert(body);
    }
    let batch: Vec<String> = (0..50).map(|index| format!("batch-{index}")).collect();
    let messages: Vec<_> =
        batch.iter().map(|body| OutgoingMessage { body: body.as_bytes(), ..Default::default() }).collect();
    let receipts = producer.send_batch(&messages, QueueChoice::Explicit(3)).expect("batch");
    assert_eq!(receipts.len(), 50);
    assert!(
        receipts.windows(2).all(|pair| pair[1].offset == pair[0].offset.map(|offset| offset + 1)),
        "a batch is contiguous in its queue"
    );
    sent.extend(batch);

    let options = ConsumerOptions { max_wait: Duration::from_millis(100), ..ConsumerOptions::default() };
    let mut consumer = Consumer::join(client.clone(), "readers", "orders", options).expect("join");
    assert_eq!(consumer.assigned_queues(), &[0, 1, 2, 3]);
    let received: BTreeSet<String> = drain(&mut consumer, sent.len()).into_iter().collect();
    assert_eq!(received, sent);
}

#[test]
fn a_long_poll_wakes_when_a_message_arrives() {
    let broker = Broker::start(1);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("events", 1).expect("create");
    let poller = {
        let client = client.clone();
        std::thread::spawn(move || {
            let params = FetchParams {
                topic: "events".into(),
                queue: 0,
                offset: 0,
                max_count: 10,
                max_bytes: 1 << 20,
                max_wait_ms: 20_000,
                ..FetchParams::default()
            };
            let body = client.connection(0).expect("connection").request(
                Kind::FetchRequest as u16,
                &protocol::fetch_request(&params),
                Duration::from_secs(30),
            );
            let body = ringmq::client::expect_kind(body.expect("answer"), Kind::FetchResponse).expect("fetch");
            protocol::verify::<fb::FetchResponse>(&body).expect("verify").record_count()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let producer = Producer::new(client, "events", ProducerOptions::default()).expect("producer");
    producer.send(&OutgoingMessage { body: b"wake up", ..Default::default() }, QueueChoice::Explicit(0)).expect("send");
    assert_eq!(poller.join().expect("poller"), 1, "the waiting fetch returned the new record");
}

#[test]
fn a_request_to_the_wrong_shard_gets_not_owner_naming_the_owner() {
    let broker = Broker::start(2);
    let client = Client::connect(&broker.address()).expect("connect");
    let (topic, _) = client.create_topic("routed", 2).expect("create");
    let owner = topic.queue_shards[0];
    let wrong = 1 - owner;
    let message = ringmq::wire::MessageDraft { topic: "routed", body: b"x", ..Default::default() }.build();
    let body = protocol::produce_request("routed", 0, &[&message], false);
    match client.call(wrong, Kind::ProduceRequest, &body) {
        Err(ringmq::client::ClientError::Broker(failure)) => {
            assert_eq!(failure.code, fb::ErrorCode::NotOwner);
            assert_eq!(failure.owner_shard, Some(owner));
        }
        other => panic!("expected NotOwner, got {other:?}"),
    }
    client.call(owner, Kind::ProduceRequest, &body).expect("the owner takes it");
}

#[test]
fn topics_messages_and_offsets_survive_a_clean_restart() {
    let mut broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("kept", 2).expect("create");
    let producer = Producer::new(client.clone(), "kept", ProducerOptions::default()).expect("producer");
    for index in 0..10 {
        let body = format!("m{index}");
        producer
            .send(&OutgoingMessage { body: body.as_bytes(), ..Default::default() }, QueueChoice::RoundRobin)
            .expect("send");
    }
    let options = ConsumerOptions { max_wait: Duration::from_millis(100), ..ConsumerOptions::default() };
    let mut consumer = Consumer::join(client, "g", "kept", options.clone()).expect("join");
    assert!(drain(&mut consumer, 4).len() >= 4);
    drop(consumer);
    assert!(broker.terminate().success(), "SIGTERM exits 0");
    broker.restart();
    let client = Arc::new(Client::connect(&broker.address()).expect("reconnect"));
    assert_eq!(client.topic("kept").expect("topic").queue_shards.len(), 2);
    let mut fresh = Consumer::join(client, "other", "kept", options).expect("join");
    assert_eq!(drain(&mut fresh, 10).len(), 10);
}

#[test]
fn a_refused_message_comes_again_and_accepted_ones_are_committed() {
    let broker = Broker::start(1);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("jobs", 1).expect("create");
    let producer = Producer::new(client.clone(), "jobs", ProducerOptions::default()).expect("producer");
    for index in 0..5 {
        let body = format!("job-{index}");
        producer
            .send(&OutgoingMessage { body: body.as_bytes(), ..Default::default() }, QueueChoice::Explicit(0))
            .expect("send");
    }
    let options = ConsumerOptions { max_wait: Duration::from_millis(100), ..ConsumerOptions::default() };
    let mut consumer = Consumer::join(client.clone(), "workers", "jobs", options.clone()).expect("join");
    let mut seen = Vec::new();
    let mut refused_once = false;
    for _ in 0..50 {
        consumer
            .handle_next(|message| {
                let body = String::from_utf8_lossy(&message.body).to_string();
                if body == "job-2" && !refused_once {
                    refused_once = true;
                    return Err("not now");
                }
                seen.push(body);
                Ok(())
            })
            .expect("handle");
        if seen.len() >= 5 {
            break;
        }
    }
    assert_eq!(seen, ["job-0", "job-1", "job-2", "job-3", "job-4"], "in order, the refused one again");
    assert_eq!(consumer.committed_offset(0).expect("offset"), Some(5));
}

/// A produce request with message `sequence` of producer 42 for queue 0 of
/// "once".
fn sequenced_with(sequence: u64, skip_gap: bool) -> Vec<u8> {
    let draft = ringmq::wire::MessageDraft {
        msg_id: (42, 100 + sequence),
        topic: "once",
        body: b"exactly once in the log",
        producer_id: 42,
        sequence,
        ..Default::default()
    };
    protocol::produce_request("once", 0, &[&draft.build()], skip_gap).to_vec()
}

fn sequenced(sequence: u64) -> Vec<u8> {
    sequenced_with(sequence, false)
}

/// (offset, duplicate) of the only message of a produce answer.
fn produced(client: &Client, body: &[u8]) -> Result<(Option<u64>, bool), ringmq::client::ClientError> {
    let answer = client.call(0, Kind::ProduceRequest, body)?;
    let response = protocol::verify::<fb::ProduceResponse>(&answer).expect("verify");
    let send = protocol::SendOutcome::read(&response.sends().expect("sends").get(0));
    Ok((send.offset, send.duplicate))
}

fn expected_sequence(error: &ringmq::client::ClientError) -> Option<u64> {
    match error {
        ringmq::client::ClientError::Broker(failure) if failure.code == fb::ErrorCode::OutOfOrderSequence => {
            failure.expected_sequence
        }
        _ => None,
    }
}

#[test]
fn a_retried_send_returns_the_first_result_and_sequences_are_stored_in_order() {
    let broker = Broker::start(1);
    let client = Client::connect(&broker.address()).expect("connect");
    client.create_topic("once", 1).expect("create");
    let late_start = produced(&client, &sequenced(3)).expect_err("a producer starts at 0");
    assert_eq!(expected_sequence(&late_start), Some(0));
    assert_eq!(produced(&client, &sequenced(0)).expect("send"), (Some(0), false));
    for _ in 0..2 {
        assert_eq!(produced(&client, &sequenced(0)).expect("retry"), (Some(0), true), "a retry gets the first result");
    }
    let ahead = produced(&client, &sequenced(2)).expect_err("sequence 2 before 1");
    assert_eq!(expected_sequence(&ahead), Some(1));
    assert!(ahead.is_retryable(), "the producer resends in order");
    assert_eq!(produced(&client, &sequenced(1)).expect("send"), (Some(1), false));
    assert_eq!(produced(&client, &sequenced(2)).expect("send"), (Some(2), false), "in order now");
    // The producer settled 3 and 4 as failed: it moves past them, and a late
    // copy of one of them is never stored.
    assert_eq!(produced(&client, &sequenced_with(5, true)).expect("past the gap"), (Some(3), false));
    assert_eq!(produced(&client, &sequenced(4)).expect("late"), (None, true), "a skipped sequence is not stored");
    let received = common::consume_in_order(&broker.address(), "audit", "once");
    assert_eq!(received.len(), 4, "each sequence stored once: {received:?}");
}

#[test]
fn a_retry_after_a_restart_finds_the_first_send_from_the_snapshot_or_the_log() {
    let mut broker = Broker::start(1);
    let client = Client::connect(&broker.address()).expect("connect");
    client.create_topic("once", 1).expect("create");
    for sequence in 0..3 {
        assert_eq!(produced(&client, &sequenced(sequence)).expect("send"), (Some(sequence), false));
    }
    // A clean stop writes the producer snapshot; a kill leaves only the log.
    assert!(broker.terminate().success());
    assert!(broker.data_dir().join("shard-0/producers.snapshot").exists(), "a clean stop writes the snapshot");
    broker.restart();
    let client = Client::connect(&broker.address()).expect("connect");
    assert_eq!(produced(&client, &sequenced(1)).expect("retry"), (Some(1), true), "from the snapshot");
    assert_eq!(produced(&client, &sequenced(3)).expect("send"), (Some(3), false));
    broker.kill();
    broker.restart();
    let client = Client::connect(&broker.address()).expect("connect");
    assert_eq!(produced(&client, &sequenced(3)).expect("retry"), (Some(3), true), "from the log after the snapshot");
    let ahead = produced(&client, &sequenced(5)).expect_err("sequence 5 before 4");
    assert_eq!(expected_sequence(&ahead), Some(4));
    assert_eq!(common::consume_in_order(&broker.address(), "audit", "once").len(), 4);
}

#[test]
fn an_async_producer_batches_completes_every_message_and_keeps_queue_order() {
    use ringmq::client::{AsyncProducer, BatchOptions, OwnedMessage};
    let broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("async", 4).expect("create");
    let producer = Arc::new(Producer::new(client, "async", ProducerOptions::default()).expect("producer"));
    // A long linger and the default size: batches fill up to what one
    // request may carry (PRODUCE_MESSAGES_MAX), and more is split.
    let options = BatchOptions { linger: Duration::from_millis(50), ..BatchOptions::default() };
    let sender = AsyncProducer::new(producer, options).expect("async producer");
    let (done, results) = std::sync::mpsc::channel();
    let total = 20_000;
    for index in 0..total {
        let message = OwnedMessage { body: format!("m-{index:05}").into_bytes(), ..OwnedMessage::default() };
        let done = done.clone();
        let completion = Box::new(move |result| {
            let _ = done.send((index, result));
        });
        sender.send(message, QueueChoice::RoundRobin, completion).expect("queued");
    }
    sender.flush();
    drop(done);
    let results: Vec<_> = results.try_iter().collect();
    assert_eq!(results.len(), total, "flush returns once every message has its result");
    let mut per_queue: std::collections::BTreeMap<u32, Vec<(u64, usize)>> = Default::default();
    for (index, result) in results {
        let receipt = result.expect("sent");
        assert!(!receipt.duplicate);
        per_queue.entry(receipt.queue).or_default().push((receipt.offset.expect("an offset"), index));
    }
    for (queue, mut sends) in per_queue {
        sends.sort();
        assert!(sends.windows(2).all(|pair| pair[0].1 < pair[1].1), "queue {queue}: stored in the order sent");
    }
    drop(sender);
    assert_eq!(common::consume_all(&broker.address(), "audit", "async").len(), total);
}
