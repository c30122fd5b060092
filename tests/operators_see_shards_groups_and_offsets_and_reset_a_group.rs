//! The operators' commands against a real broker process: `ringmq status`,
//! `group list|describe|reset-offset` and `offset --time`, run as the
//! operator runs them, with a topic, a group with committed offsets and a
//! live member.

mod common;

use common::{ringmq, ringmq_failing, Broker};
use ringmq::client::{Client, Consumer, ConsumerOptions, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use serde_json::Value;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const QUEUES: u32 = 4;

/// Sends `bodies` to `queue` of `work`, a few ms apart (each its own store
/// millisecond); returns each one's store time in microseconds.
fn send(producer: &Producer, queue: u32, bodies: &[&str]) -> Vec<u64> {
    bodies
        .iter()
        .map(|body| {
            std::thread::sleep(Duration::from_millis(5));
            let message = OutgoingMessage { body: body.as_bytes(), ..Default::default() };
            producer.send(&message, QueueChoice::Explicit(queue)).expect("send").store_timestamp_us
        })
        .collect()
}

/// A broker with topic `work` (5 messages on queue 1, 3 on queue 2) and a
/// live member of group `g` that committed 2 on queue 1.
struct Setup {
    broker: Broker,
    client: Arc<Client>,
    member: Consumer,
    stamps: Vec<u64>,
}

fn setup() -> Setup {
    let broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("work", QUEUES).expect("create");
    let producer = Producer::new(client.clone(), "work", ProducerOptions::default()).expect("producer");
    let stamps = send(&producer, 1, &["a0", "a1", "a2", "a3", "a4"]);
    send(&producer, 2, &["b0", "b1", "b2"]);
    let options = ConsumerOptions { max_wait: Duration::from_millis(50), ..ConsumerOptions::default() };
    let mut member = Consumer::join(client.clone(), "g", "work", options).expect("join");
    member.commit(1, 2).expect("the owner commits");
    Setup { broker, client, member, stamps }
}

fn describe(broker: &str) -> Vec<Value> {
    ringmq(&["group", "describe", "g", "--json", "--broker", broker], "")
}

fn queue_line<'a>(lines: &'a [Value], topic: &str, queue: u32) -> &'a Value {
    lines
        .iter()
        .find(|line| line["topic"] == topic && line["queue"] == queue)
        .unwrap_or_else(|| panic!("no line for queue {queue} of {topic} in {lines:?}"))
}

#[test]
fn status_shows_every_shard_healthy_with_its_port_and_log() {
    let broker = Broker::start(2);
    let address = broker.address();
    let lines = ringmq(&["status", "--json", "--broker", &address], "");
    assert_eq!(lines.len(), 2, "one line per shard: {lines:?}");
    for (shard, line) in lines.iter().enumerate() {
        assert_eq!(line["shard"], shard as u64, "{line}");
        assert_eq!(line["port"], u64::from(broker.base_port) + shard as u64, "{line}");
        assert_eq!(line["healthy"], true, "{line}");
        assert_eq!(line["error"], Value::Null, "{line}");
        assert!(line["segments"].as_u64().is_some_and(|segments| segments >= 1), "{line}");
        assert!(line["disk_used_bytes"].as_u64().is_some_and(|bytes| bytes > 0), "{line}");
        assert!(line["flushed"].as_u64().is_some(), "{line}");
        // The status command's own connection at least.
        assert!(line["connections"].as_u64().is_some_and(|count| count >= 1), "{line}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["status", "--broker", &address, "--log", "warn"])
        .output()
        .expect("ringmq ran");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let rows: Vec<Vec<&str>> = text.lines().map(|line| line.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows.iter().all(|row| row.len() == 8 && row[2] == "true" && row[3] == "-"), "{text}");
    let stderr = ringmq_failing(&["status", "--broker", "127.0.0.1:1"]);
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
}

#[test]
fn group_list_and_describe_show_the_member_committed_offsets_and_lag() {
    let Setup { broker, client, member, .. } = setup();
    let address = broker.address();
    // A second member takes half the queues.
    let options = ConsumerOptions { max_wait: Duration::from_millis(50), ..ConsumerOptions::default() };
    let second = Consumer::join(client.clone(), "g", "work", options).expect("join");
    assert_eq!(second.assigned_queues().len(), QUEUES as usize / 2);
    let listed = ringmq(&["group", "list", "--json", "--broker", &address], "");
    let work = listed
        .iter()
        .find(|line| line["group"] == "g" && line["topic"] == "work")
        .unwrap_or_else(|| panic!("group g on work not listed: {listed:?}"));
    assert_eq!(work["members"], 2, "{work}");
    assert_eq!(work["generation"], second.generation(), "{work}");

    let lines = describe(&address);
    for queue in 0..QUEUES {
        let line = queue_line(&lines, "work", queue);
        assert_eq!(line["group"], "g");
        let owner = if second.assigned_queues().contains(&queue) { second.member_id() } else { member.member_id() };
        assert_eq!(line["member"], owner, "queue {queue}: {line}");
    }
    let (q0, q1, q2) = (queue_line(&lines, "work", 0), queue_line(&lines, "work", 1), queue_line(&lines, "work", 2));
    assert_eq!((&q1["committed"], &q1["end"], &q1["lag"]), (&Value::from(2), &Value::from(5), &Value::from(3)));
    assert_eq!((&q2["committed"], &q2["end"], &q2["lag"]), (&Value::Null, &Value::from(3), &Value::from(3)));
    assert_eq!((&q0["end"], &q0["lag"]), (&Value::from(0), &Value::from(0)));
    // The group's retry topic, one queue per shard, made by the join.
    for queue in 0..2 {
        let retry = queue_line(&lines, "%RETRY%g", queue);
        assert_eq!(retry["end"], 0, "{retry}");
    }
    assert_eq!(lines.len(), QUEUES as usize + 2, "{lines:?}");
    let stderr = ringmq_failing(&["group", "describe", "nobody", "--broker", &address]);
    assert!(stderr.contains("nobody"), "{stderr}");
}

#[test]
fn a_reset_is_refused_while_a_member_lives_and_a_consumer_starts_where_it_was_forced() {
    let Setup { broker, member, stamps, .. } = setup();
    let address = broker.address();
    let reset = |to: &str, force: bool| {
        let mut args =
            vec!["group", "reset-offset", "g", "--topic", "work", "--to", to, "--json", "--broker", &address];
        if force {
            args.push("--force");
        }
        args.iter().map(|arg| arg.to_string()).collect::<Vec<_>>()
    };
    let refused = reset("offset:3", false);
    let stderr = ringmq_failing(&refused.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stderr.contains("live members"), "{stderr}");
    assert_eq!(queue_line(&describe(&address), "work", 1)["committed"], 2, "a refused reset commits nothing");

    let forced = reset("offset:3", true);
    let lines = ringmq(&forced.iter().map(String::as_str).collect::<Vec<_>>(), "");
    assert_eq!(lines.len(), QUEUES as usize, "{lines:?}");
    let committed: Vec<u64> = lines.iter().map(|line| line["committed"].as_u64().expect("an offset")).collect();
    // Each queue at 3, or at its end if shorter.
    assert_eq!(committed, vec![0, 3, 3, 0]);
    let described = describe(&address);
    assert_eq!(queue_line(&described, "work", 1)["committed"], 3);
    assert_eq!(queue_line(&described, "work", 1)["lag"], 2);

    // The member goes without committing; a consumer starts at the reset.
    member.leave().expect("leave");
    let consumed =
        ringmq(&["consume", "--topic", "work", "--group", "g", "--idle-exit-ms", "2000", "--broker", &address], "");
    let got: Vec<(u64, u64, String)> = consumed
        .iter()
        .map(|line| {
            let queue = line["queue"].as_u64().expect("queue");
            (queue, line["offset"].as_u64().expect("offset"), line["body"].as_str().expect("body").to_string())
        })
        .collect();
    assert_eq!(got, vec![(1, 3, "a3".into()), (1, 4, "a4".into())]);

    // No live member now: no --force needed. A time between a1 and a2.
    let between_ms = stamps[1] / 1000 + 1;
    assert!(stamps[2] / 1000 >= between_ms, "a1 and a2 were stored in different milliseconds");
    let to = format!("time:{between_ms}");
    let by_time = reset(&to, false);
    let lines = ringmq(&by_time.iter().map(String::as_str).collect::<Vec<_>>(), "");
    assert_eq!(lines[1]["committed"], 2, "{lines:?}");
    assert_eq!(queue_line(&describe(&address), "work", 1)["committed"], 2);
    // Durable: a restart replays it from the log.
    let mut broker = broker;
    broker.restart();
    assert_eq!(queue_line(&describe(&address), "work", 1)["committed"], 2, "the reset survives a kill");
}

#[test]
fn offset_by_time_is_the_first_message_stored_at_or_after_it() {
    let Setup { broker, stamps, client, .. } = setup();
    let address = broker.address();
    let offset_at = |time_ms: u64| -> u64 {
        let time = time_ms.to_string();
        let lines =
            ringmq(&["offset", "--topic", "work", "--queue", "1", "--time", &time, "--json", "--broker", &address], "");
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines[0]["offset"].as_u64().expect("an offset")
    };
    for index in 1..stamps.len() {
        let between_ms = stamps[index - 1] / 1000 + 1;
        assert!(stamps[index] / 1000 >= between_ms, "stored in different milliseconds");
        assert_eq!(offset_at(between_ms), index as u64, "a time between message {} and {index}", index - 1);
        assert_eq!(offset_at(stamps[index] / 1000), index as u64, "the store millisecond of message {index}");
    }
    assert_eq!(offset_at(0), 0, "before everything: the first");
    assert_eq!(offset_at(stamps[4] / 1000 + 60_000), 5, "after everything: the end");
    let stderr = ringmq_failing(&["offset", "--topic", "work", "--queue", "9", "--time", "0", "--broker", &address]);
    assert!(stderr.contains("queue 9"), "{stderr}");
    drop(client);
}

#[test]
fn message_get_finds_a_message_by_id_and_prints_it_as_consume_does() {
    let Setup { broker, client, .. } = setup();
    let address = broker.address();
    let producer = Producer::new(client.clone(), "work", ProducerOptions::default()).expect("producer");
    let mut ids = Vec::new();
    for (queue, body) in [(3, "c0"), (3, "c1"), (0, "d0")] {
        let message = OutgoingMessage { body: body.as_bytes(), key: Some("k"), ..Default::default() };
        let receipt = producer.send(&message, QueueChoice::Explicit(queue)).expect("send");
        ids.push((format!("{:016x}{:016x}", receipt.msg_id.0, receipt.msg_id.1), queue, receipt.offset, body));
    }
    for (id, queue, offset, body) in &ids {
        let lines = ringmq(&["message", "get", "--id", id, "--broker", &address], "");
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["msg_id"], id.as_str(), "{line}");
        assert_eq!(
            (&line["topic"], &line["queue"], &line["body"]),
            (&Value::from("work"), &Value::from(*queue), &Value::from(*body))
        );
        assert_eq!(line["offset"].as_u64(), *offset, "{line}");
        assert_eq!(line["key"], "k", "{line}");
    }
    let unknown = format!("{}{:016x}", &ids[0].0[..16], u64::MAX);
    let stderr = ringmq_failing(&["message", "get", "--id", &unknown, "--broker", &address]);
    assert!(stderr.contains("no queue holds"), "{stderr}");
    let stderr = ringmq_failing(&["message", "get", "--id", &ids[1].0, "--scan-max", "1", "--broker", &address]);
    assert!(stderr.contains("--scan-max"), "{stderr}");
}

/// `ringmq status | head -1` and the like: a closed stdout ends the command
/// quietly, never with a panic.
#[test]
fn a_command_whose_reader_goes_away_ends_quietly() {
    let broker = Broker::start(2);
    for args in [&["status", "--json"][..], &["status"][..]] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(args)
            .args(["--broker", &broker.address(), "--log", "warn"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ringmq status");
        // The reader goes away before the first line.
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
