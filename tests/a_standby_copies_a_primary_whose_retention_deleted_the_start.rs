//! A standby of a primary whose retention deleted its first segments
//! (issue 13): a new standby starts its copy at the primary's first
//! segment; one whose position the primary deleted while it was down says
//! so and skips nothing, and `ringmq standby resync` sets its logs aside so
//! that its next start copies the primary afresh.

mod common;

use common::{ringmq, Broker};
use ringmq::client::{admin, Client};
use std::time::{Duration, Instant};

/// Small segments, and retention that keeps about three of them.
const CONFIG: &str = "segment_size_bytes = 262144\nretention_bytes = 786432\ncheckpoint_interval_ms = 200\n";

fn status(address: &str) -> ringmq::protocol::ShardStatus {
    let client = Client::connect_with_timeout(address, Duration::from_secs(5)).expect("connect");
    admin::shard_statuses(&client).expect("status").remove(0)
}

/// 100 messages of 10 KB: about four segments.
fn fill(address: &str, round: usize) {
    let lines: String = (0..100).map(|number| format!("r{round}-{number:04}-{}\n", "x".repeat(10_000))).collect();
    let sent = ringmq(&["produce", "--topic", "orders", "--broker", address], &lines);
    assert!(sent.iter().all(|line| line["status"] == "SEND_OK"), "{:?}", sent.first());
}

/// Produces until retention deleted the primary's segment holding `position`.
fn fill_past(address: &str, position: u64, round: &mut usize) -> u64 {
    let started = Instant::now();
    loop {
        let log_start = status(address).log_start;
        if log_start > position {
            return log_start;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "retention kept {log_start}");
        *round += 1;
        fill(address, *round);
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn wait_caught_up(primary: &Broker, standby: &Broker) {
    let started = Instant::now();
    loop {
        let (wanted, got) = (status(&primary.address()).flushed, status(&standby.address()).flushed);
        if wanted == got {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "standby at {got}, primary at {wanted}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The segment file holding `end - 1`, byte for byte up to `end`.
fn assert_same_last_segment(primary: &Broker, standby: &Broker) {
    let end = status(&primary.address()).flushed;
    let start = end.saturating_sub(1) / 262_144 * 262_144;
    let read = |broker: &Broker| {
        let path = broker.data_dir().join("shard-0/segments").join(format!("{start:020}.log"));
        std::fs::read(path).expect("segment")[..(end - start) as usize].to_vec()
    };
    assert!(read(primary) == read(standby), "segment {start} differs");
}

#[test]
fn a_new_standby_starts_at_the_primarys_first_segment_and_resync_recopies_a_lost_position() {
    let primary = Broker::start_with_config(1, Some(CONFIG));
    let primary_address = primary.address();
    Client::connect(&primary_address).expect("connect").create_topic("orders", 1).expect("create");
    let mut round = 0;
    let log_start = fill_past(&primary_address, 0, &mut round);

    let standby_args = ["--role", "standby", "--standby-of", primary_address.as_str()];
    let mut standby = Broker::start_with(1, Some(CONFIG), &standby_args);
    wait_caught_up(&primary, &standby);
    let copied = status(&standby.address());
    assert!(copied.log_start >= log_start, "the copy starts at the primary's first segment: {copied:?}");
    assert_same_last_segment(&primary, &standby);

    // Down while retention deletes its position: it skips nothing...
    let position = copied.flushed;
    standby.kill();
    fill_past(&primary_address, position, &mut round);
    standby.restart();
    std::thread::sleep(Duration::from_secs(2));
    let stuck = status(&standby.address());
    assert_eq!(stuck.flushed, position, "a standby whose position is gone stays where it was");
    let why = stuck.replication_error.expect("status says why it does not follow");
    assert!(why.contains("ringmq standby resync"), "{why}");

    // ...until the operator resyncs it.
    standby.kill();
    let data_dir = standby.data_dir().to_str().expect("utf-8 path").to_string();
    let moved = ringmq(&["standby", "resync", "--data-dir", &data_dir], "");
    assert_eq!(moved[0]["shards"], 1, "{moved:?}");
    let aside = moved[0]["moved_to"].as_str().expect("moved_to");
    assert!(std::path::Path::new(aside).join("shard-0/segments").is_dir(), "the old logs are kept in {aside}");
    standby.restart();
    wait_caught_up(&primary, &standby);
    assert_same_last_segment(&primary, &standby);
}
