//! A delayed message due long after retention would delete its segment is
//! rolled forward by its shard's timer (copied to the log's end), so
//! retention deletes the old segments anyway, and the message still comes
//! once when due.

mod common;

use common::{consume_in_order, ringmq, Broker};
use ringmq::client::Client;
use std::time::{Duration, Instant};

const CONFIG: &str = "segment_size_bytes = 262144\nretention_bytes = 786432\ncheckpoint_interval_ms = 200\n";

fn segment_starts(broker: &Broker) -> Vec<u64> {
    let dir = broker.data_dir().join("shard-0").join("segments");
    let mut starts: Vec<u64> = std::fs::read_dir(&dir)
        .expect("segments")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    starts.sort();
    starts
}

#[test]
fn a_long_delay_does_not_hold_retention_back() {
    let broker = Broker::start_with_config(1, Some(CONFIG));
    let address = broker.address();
    Client::connect(&address).expect("connect").create_topic("reminders", 1).expect("create");
    let sent = ringmq(&["produce", "--topic", "reminders", "--delay-ms", "9000", "--broker", &address], "later\n");
    assert_eq!(sent[0]["status"], "SEND_OK");
    // Few long lines: `ringmq` writes stdin before it reads stdout, whose
    // pipe must not fill meanwhile.
    let filler: String = (0..300).map(|number| format!("{number:04}{}\n", "x".repeat(10_000))).collect();
    ringmq(&["produce", "--topic", "reminders", "--broker", &address], &filler);
    let started = Instant::now();
    while segment_starts(&broker).first() == Some(&0) && started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(
        segment_starts(&broker).first(),
        Some(&0),
        "retention deleted the first segment: {:?}",
        segment_starts(&broker)
    );
    while started.elapsed() < Duration::from_secs(9) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let bodies: Vec<String> =
        consume_in_order(&address, "g", "reminders").into_iter().map(|(_, _, body)| body).collect();
    assert_eq!(bodies.iter().filter(|body| *body == "later").count(), 1, "delivered once, when due");
}

/// Delivered when its message lies segments back (no retention here): the
/// delivery is a copy, and it reads back as the message, once.
#[test]
fn a_delivery_segments_after_its_message_is_a_copy_that_reads_back() {
    let broker = Broker::start_with_config(1, Some("segment_size_bytes = 262144\n"));
    let address = broker.address();
    Client::connect(&address).expect("connect").create_topic("reminders", 1).expect("create");
    let sent = ringmq(&["produce", "--topic", "reminders", "--delay-ms", "4000", "--broker", &address], "later\n");
    assert_eq!(sent[0]["status"], "SEND_OK");
    let filler: String = (0..100).map(|number| format!("{number:04}{}\n", "x".repeat(10_000))).collect();
    ringmq(&["produce", "--topic", "reminders", "--broker", &address], &filler);
    assert!(segment_starts(&broker).len() >= 4, "the message is segments back: {:?}", segment_starts(&broker));
    std::thread::sleep(Duration::from_millis(4500));
    let received = consume_in_order(&address, "g", "reminders");
    let later: Vec<_> = received.iter().filter(|(_, _, body)| body == "later").collect();
    assert_eq!(later.len(), 1, "delivered once");
    assert_eq!(later[0].1, 100, "after the filler, at its own offset");
}
