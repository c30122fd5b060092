//! Replication, primary side (issue 13, partial): REPLICATE answers a
//! standby's shard with the primary's durable log bytes, byte for byte what
//! its segment files hold, and a caught-up request waits a bounded time.

mod common;

use common::Broker;
use ringmq::client::{Client, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::{self, fb, verify, Kind, ReplicateAsk, ReplicatedBytes};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MESSAGES: usize = 300;

fn replicate(client: &Client, position: u64, max_bytes: u32, wait_ms: u32) -> ReplicatedBytes {
    let ask = ReplicateAsk { position, confirmed: position, max_bytes, wait_ms, with_topics: false };
    let body = protocol::replicate_request(&ask);
    let answer = client.call(0, Kind::ReplicateRequest, &body).expect("replicate");
    let response = verify::<fb::ReplicateResponse>(&answer).expect("verify");
    assert!(protocol::Failure::from_outcome(response.outcome()).is_none(), "a failure");
    ReplicatedBytes::read(&response).expect("a coherent answer")
}

#[test]
fn the_primary_hands_out_its_durable_bytes_exactly_as_stored() {
    let broker = Broker::start(1);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("orders", 2).expect("create");
    let producer = Producer::new(client.clone(), "orders", ProducerOptions::default()).expect("producer");
    for index in 0..MESSAGES {
        let body = format!("order-{index}");
        let receipt = producer
            .send(&OutgoingMessage { body: body.as_bytes(), ..Default::default() }, QueueChoice::RoundRobin)
            .expect("send");
        assert_eq!(receipt.status, fb::SendStatus::SendOk);
    }

    // Small answers, so the copy takes many of them.
    let (mut copy, mut position, mut durable) = (Vec::new(), 0u64, 0u64);
    for _ in 0..100_000 {
        let answer = replicate(&client, position, 4096 + 123, 0);
        assert_eq!(answer.position, position);
        assert_eq!(answer.segment_start, 0, "one segment holds this little");
        durable = answer.durable;
        if answer.bytes.is_empty() {
            break;
        }
        position += answer.bytes.len() as u64;
        copy.extend_from_slice(&answer.bytes);
    }
    assert!(durable > 0 && position == durable, "copied to the durable end {durable}, got {position}");

    let segment = broker.data_dir().join("shard-0").join("segments").join(format!("{:020}.log", 0));
    let mut on_disk = vec![0u8; durable as usize];
    std::fs::File::open(&segment).expect("segment file").read_exact(&mut on_disk).expect("read segment");
    assert!(on_disk == copy, "the copy differs from the segment file");
    for index in [0, MESSAGES - 1] {
        let body = format!("order-{index}");
        assert!(copy.windows(body.len()).any(|window| window == body.as_bytes()), "{body} is in the copy");
    }

    // Caught up: the request waits (bounded) and comes back empty.
    let started = Instant::now();
    let answer = replicate(&client, durable, 0, 300);
    assert!(answer.bytes.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250), "it waited for new records");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A caught-up request hears of a new durable record without waiting out its time.
    let waiting = {
        let client = client.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            (replicate(&client, durable, 0, 1000), started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let receipt = producer
        .send(&OutgoingMessage { body: b"late", ..Default::default() }, QueueChoice::Explicit(0))
        .expect("send");
    assert_eq!(receipt.status, fb::SendStatus::SendOk);
    let (answer, waited) = waiting.join().expect("the waiting request");
    assert!(!answer.bytes.is_empty(), "the new record came back");
    assert!(waited < Duration::from_millis(900), "woken by the record, after {waited:?}");
}
