//! A byte flipped in the middle of the log after the last checkpoint (the
//! broker was killed with SIGKILL): the broker refuses to start, naming the
//! segment and position; `ringmq repair` replaces the damaged record with a
//! tombstone; the broker then serves every acknowledged message but that one.

mod common;

use common::{consume_all, serve_expecting_exit, Broker};
use ringmq::client::{Client, Consumer, ConsumerOptions, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::fb;
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const MESSAGES: usize = 200;
const DAMAGED: usize = 100;

fn body(index: usize) -> String {
    format!("repair-test-message-{index:05}-{}", "x".repeat(200))
}

fn segment_file(data_dir: &Path) -> PathBuf {
    let dir = data_dir.join("shard-0").join("segments");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("segments dir")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    segments.sort();
    segments.into_iter().next().expect("a segment")
}

/// Flips a byte inside the body of message `index`; returns the file offset.
fn flip_inside(path: &Path, index: usize) -> u64 {
    let file = std::fs::File::open(path).expect("open segment");
    let mut head = vec![0; 8 << 20];
    let read = file.read_at(&mut head, 0).expect("read segment");
    let needle = body(index);
    let at = head[..read].windows(needle.len()).position(|window| window == needle.as_bytes()).expect("body on disk");
    let offset = at as u64 + 5;
    let file = std::fs::OpenOptions::new().write(true).open(path).expect("open for writing");
    file.write_all_at(&[head[offset as usize] ^ 0x01], offset).expect("flip");
    file.sync_all().expect("sync");
    offset
}

#[test]
fn a_flipped_byte_stops_the_start_and_repair_brings_back_the_rest() {
    let mut broker = Broker::start_with_config(1, Some("checkpoint_interval_ms = 3600000\n"));
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("damaged", 1).expect("create topic");
    let producer = Producer::new(client, "damaged", ProducerOptions::default()).expect("producer");
    for index in 0..MESSAGES {
        let text = body(index);
        let message = OutgoingMessage { body: text.as_bytes(), ..Default::default() };
        let receipt = producer.send(&message, QueueChoice::Explicit(0)).expect("send");
        assert_eq!(receipt.status, fb::SendStatus::SendOk);
    }
    broker.kill();

    let segment = segment_file(broker.data_dir());
    let flipped = flip_inside(&segment, DAMAGED);
    let (status, stderr) = serve_expecting_exit(broker.data_dir(), &broker.address(), Duration::from_secs(60));
    assert!(!status.success(), "the broker started on a damaged log: {stderr}");
    let name = segment.file_name().expect("name").to_string_lossy().into_owned();
    assert!(stderr.contains("corrupt") && stderr.contains(&name), "the error names the segment: {stderr}");
    assert!(stderr.contains("shard-0"), "the error names the shard: {stderr}");
    let named = stderr
        .split("at position ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse::<u64>().ok())
        .expect("the error names a position");
    assert!(named <= flipped && flipped - named < 1024, "position {named} is not the damaged record at {flipped}");

    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["repair", "--data-dir"])
        .arg(broker.data_dir())
        .output()
        .expect("run ringmq repair");
    assert!(output.status.success(), "repair failed: {}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["shard"], 0);
    assert_eq!(lines[0]["segment"], name.as_str());
    assert_eq!(lines[0]["position"], named);
    assert_eq!(lines[0]["records_lost"], 1);
    assert!(lines[0]["bytes"].as_u64().is_some_and(|bytes| bytes > 0));

    broker.restart();
    let received = consume_all(&broker.address(), "audit", "damaged");
    let expected: BTreeSet<String> = (0..MESSAGES).filter(|index| *index != DAMAGED).map(body).collect();
    assert_eq!(received, expected, "every acknowledged message but the damaged one");

    // Every message keeps its offset, and the consumer is told which one is lost.
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    let options = ConsumerOptions { max_wait: Duration::from_millis(100), ..ConsumerOptions::default() };
    let mut consumer = Consumer::join(client, "offsets", "damaged", options).expect("join");
    let mut offsets = Vec::new();
    let mut lost = Vec::new();
    for _ in 0..100 {
        for message in consumer.poll().expect("poll") {
            let text = String::from_utf8(message.body).expect("utf-8");
            offsets.push((message.offset, text));
        }
        lost.extend(consumer.take_lost_offsets());
        if offsets.len() + lost.len() >= MESSAGES {
            break;
        }
    }
    assert_eq!(lost, [(0, DAMAGED as u64)], "the lost offset is reported");
    let expected: Vec<(u64, String)> =
        (0..MESSAGES).filter(|index| *index != DAMAGED).map(|index| (index as u64, body(index))).collect();
    assert_eq!(offsets, expected, "each message at its own offset, past the lost one");
}
