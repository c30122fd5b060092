//! Replication (issue 13, partial): two real brokers on 127.0.0.1 with their
//! own data directories. A standby's shards follow the primary's and hold
//! its segment files byte for byte up to the durable end, across a kill -9
//! and restart of the standby; the standby refuses changes, naming the
//! primary.

mod common;

use common::{fetch_all, signal, Broker};
use ringmq::client::{admin, Client, ClientError, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::{self, fb, Kind};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: u32 = 2;
const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);

fn durable_ends(address: &str) -> Vec<u64> {
    let client = Client::connect_with_timeout(address, Duration::from_secs(5)).expect("connect");
    admin::shard_statuses(&client).expect("status").iter().map(|status| status.flushed).collect()
}

/// Waits (bounded) until every standby shard's durable end is its
/// primary's; returns them.
fn wait_caught_up(primary: &Broker, standby: &Broker) -> Vec<u64> {
    let started = Instant::now();
    loop {
        let (wanted, got) = (durable_ends(&primary.address()), durable_ends(&standby.address()));
        if wanted == got {
            return got;
        }
        assert!(started.elapsed() < CATCH_UP_LIMIT, "the standby is at {got:?}, the primary at {wanted:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn prefix(path: &Path, length: u64) -> Vec<u8> {
    let mut bytes = vec![0; length as usize];
    std::fs::File::open(path).expect("segment file").read_exact(&mut bytes).expect("read segment");
    bytes
}

/// Every segment file of every shard, byte for byte, up to the durable end.
fn assert_same_segments(primary: &Broker, standby: &Broker, ends: &[u64]) {
    for (shard, end) in ends.iter().enumerate() {
        let dir = |broker: &Broker| broker.data_dir().join(format!("shard-{shard}")).join("segments");
        let mut starts: Vec<u64> = std::fs::read_dir(dir(primary))
            .expect("segments")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .filter(|start| start < end)
            .collect();
        starts.sort_unstable();
        assert!(!starts.is_empty());
        for (index, start) in starts.iter().enumerate() {
            let segment_end = starts.get(index + 1).copied().unwrap_or(*end).min(*end);
            let name = format!("{start:020}.log");
            let (wanted, got) = (
                prefix(&dir(primary).join(&name), segment_end - start),
                prefix(&dir(standby).join(&name), segment_end - start),
            );
            assert!(wanted == got, "shard {shard} segment {start} differs from the primary's");
        }
    }
}

fn produce(producer: &Producer, from: usize, to: usize) {
    for index in from..to {
        let body = format!("order-{index}");
        let receipt = producer
            .send(&OutgoingMessage { body: body.as_bytes(), ..Default::default() }, QueueChoice::RoundRobin)
            .expect("send");
        assert_eq!(receipt.status, fb::SendStatus::SendOk);
    }
}

#[test]
fn a_standby_follows_its_primary_byte_for_byte_and_catches_up_after_a_kill() {
    let primary = Broker::start_with_args(SHARDS, &["--replication", "async"]);
    let client = Arc::new(Client::connect(&primary.address()).expect("connect"));
    client.create_topic("orders", 4).expect("create");
    let producer = Producer::new(client.clone(), "orders", ProducerOptions::default()).expect("producer");
    // Records before the standby exists: it starts from an empty log.
    produce(&producer, 0, 100);

    let primary_address = primary.address();
    let mut standby = Broker::start_with_args(SHARDS, &["--role", "standby", "--standby-of", &primary_address]);
    let ends = wait_caught_up(&primary, &standby);
    assert!(ends.iter().all(|end| *end > 0), "every shard has records: {ends:?}");
    assert_same_segments(&primary, &standby, &ends);

    // Records while it follows.
    produce(&producer, 100, 200);
    let ends = wait_caught_up(&primary, &standby);
    assert_same_segments(&primary, &standby, &ends);

    // Status: each shard's role, and no lag once caught up (the primary
    // learns the standby's end from its next request, within a second).
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["status", "--replication", "--broker", &standby.address(), "--log", "warn"])
        .output()
        .expect("ringmq status ran");
    let text = String::from_utf8(output.stdout).expect("utf-8");
    for row in text.lines().map(|line| line.split('\t').collect::<Vec<_>>()) {
        assert_eq!(row[8..], ["standby", primary_address.as_str(), "0", "false", "0", "0"], "{text}");
    }
    let standby_status = admin::shard_statuses(&Client::connect(&standby.address()).expect("connect")).expect("status");
    for status in &standby_status {
        assert_eq!((status.role_name(), status.standby_of.as_deref()), ("standby", Some(primary_address.as_str())));
        assert_eq!(status.replication_lag_bytes, 0, "{status:?}");
    }
    let started = Instant::now();
    loop {
        let statuses = admin::shard_statuses(&client).expect("status");
        assert!(statuses.iter().all(|status| status.role_name() == "primary" && status.standby_connected));
        if statuses.iter().all(|status| status.replication_lag_bytes == 0) {
            break;
        }
        assert!(started.elapsed() < CATCH_UP_LIMIT, "the primary still sees lag: {statuses:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A standby serves fetches of the primary's topics, record for record.
    let standby_client = Client::connect(&standby.address()).expect("connect to the standby");
    let mut fetched = 0;
    for queue in 0..4 {
        let (wanted, got) = (fetch_all(&client, "orders", queue), fetch_all(&standby_client, "orders", queue));
        assert_eq!(wanted, got, "queue {queue}");
        fetched += got.len();
    }
    assert_eq!(fetched, 200);

    // A standby refuses changes, naming its primary.
    let refusal = standby_client.create_topic("payments", 1).expect_err("a standby creates no topic");
    for shard in 0..SHARDS {
        let body = protocol::produce_request("orders", shard, &[b"refused".as_slice()], false);
        match standby_client.call(shard, Kind::ProduceRequest, &body) {
            Err(ClientError::Broker(failure)) => {
                assert_eq!(failure.code, fb::ErrorCode::NotPrimary);
                assert!(failure.message.contains(&primary_address), "{failure}");
            }
            other => panic!("a produce to a standby: {other:?}"),
        }
    }
    assert!(refusal.to_string().contains(&primary_address), "{refusal}");

    // Killed while the primary goes on, restarted: it catches up exactly.
    standby.kill();
    produce(&producer, 200, 300);
    standby.restart();
    let ends = wait_caught_up(&primary, &standby);
    assert_same_segments(&primary, &standby, &ends);
    let after_restart = durable_ends(&standby.address());
    assert_eq!(after_restart, ends);
}

fn send_one(producer: &Producer, body: &str) -> (fb::SendStatus, Duration) {
    let started = Instant::now();
    let receipt = producer
        .send(&OutgoingMessage { body: body.as_bytes(), ..Default::default() }, QueueChoice::Explicit(0))
        .expect("send");
    (receipt.status, started.elapsed())
}

#[test]
fn a_sync_primary_answers_send_ok_only_with_its_standby_and_says_why_otherwise() {
    let config = "replication = \"sync\"\nsync_standby_timeout_ms = 1000\n";
    let primary = Broker::start_with_config(1, Some(config));
    let client = Arc::new(Client::connect(&primary.address()).expect("connect"));
    client.create_topic("orders", 1).expect("create");
    let producer = Producer::new(client.clone(), "orders", ProducerOptions::default()).expect("producer");

    // No standby: stored, and said so at once.
    let (status, took) = send_one(&producer, "alone");
    assert_eq!(status, fb::SendStatus::SlaveNotAvailable);
    assert!(took < Duration::from_millis(900), "no wait for a standby that is not there: {took:?}");

    let standby = Broker::start_with_args(1, &["--role", "standby", "--standby-of", &primary.address()]);
    wait_caught_up(&primary, &standby);
    for index in 0..50 {
        let (status, took) = send_one(&producer, &format!("confirmed-{index}"));
        assert_eq!(status, fb::SendStatus::SendOk, "message {index}");
        assert!(took < Duration::from_secs(2), "message {index} took {took:?}");
    }
    // Every SEND_OK record is on the standby already: its durable end is
    // at least the primary's at the last answer.
    let primary_end = durable_ends(&primary.address());
    let standby_end = durable_ends(&standby.address());
    assert!(standby_end[0] >= primary_end[0], "standby {standby_end:?}, primary {primary_end:?}");

    // A stopped standby confirms nothing: FLUSH_SLAVE_TIMEOUT after the timeout.
    signal(&standby, libc::SIGSTOP);
    let (status, took) = send_one(&producer, "unconfirmed");
    signal(&standby, libc::SIGCONT);
    assert_eq!(status, fb::SendStatus::FlushSlaveTimeout);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "took {took:?}");

    // Resumed, it confirms again; the unconfirmed record reached it too.
    let started = Instant::now();
    loop {
        let (status, _) = send_one(&producer, "after the pause");
        if status == fb::SendStatus::SendOk {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "still {status:?} after the standby resumed");
    }
    let ends = wait_caught_up(&primary, &standby);
    assert_same_segments(&primary, &standby, &ends);
}

#[test]
fn a_standby_reconnects_to_a_restarted_primary_and_catches_up() {
    let mut primary = Broker::start(1);
    let standby = Broker::start_with_args(1, &["--role", "standby", "--standby-of", &primary.address()]);
    {
        let client = Arc::new(Client::connect(&primary.address()).expect("connect"));
        client.create_topic("orders", 1).expect("create");
        let producer = Producer::new(client, "orders", ProducerOptions::default()).expect("producer");
        produce(&producer, 0, 50);
    }
    wait_caught_up(&primary, &standby);
    // The standby loses its connection, retries with back-off, and follows
    // the restarted primary from its own durable end.
    primary.restart();
    {
        let client = Arc::new(Client::connect(&primary.address()).expect("connect"));
        let producer = Producer::new(client, "orders", ProducerOptions::default()).expect("producer");
        produce(&producer, 50, 100);
    }
    let ends = wait_caught_up(&primary, &standby);
    assert_same_segments(&primary, &standby, &ends);
}

#[test]
fn a_standby_with_another_shard_count_than_its_primary_does_not_start() {
    let primary = Broker::start(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = format!("127.0.0.1:{}", common::free_ports(1));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["serve", "--shards", "1", "--log", "warn", "--disk-max-used-percent", "100", "--listen", &listen])
        .args(["--role", "standby", "--standby-of", &primary.address(), "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ringmq serve");
    let status = common::exit_within(&mut child, Duration::from_secs(20), "a standby with one shard of two");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    assert!(!status.success(), "it started: {stderr}");
    assert!(stderr.contains("2 shards, this standby 1"), "{stderr}");
}
