//! `ringmq-load --topics N --connection-per-producer` against a real
//! broker: every queue of every topic gets the generator's messages, the
//! broker stores exactly the acknowledged count, and each producer holds
//! connections of its own while the run lasts. No assertion on speed.

mod common;

use common::{fetch_all_bytes, ringmq, Broker};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOPICS: u32 = 3;
const QUEUES: u32 = 2;
const PRODUCERS: u64 = 3;
const SHARDS: u32 = 2;

/// Client connections the broker holds, over all its shards.
fn connections(address: &str) -> u64 {
    ringmq(&["status", "--broker", address, "--json"], "")
        .iter()
        .map(|shard| shard["connections"].as_u64().expect("connections"))
        .sum()
}

#[test]
fn producers_spread_over_every_topic_on_connections_of_their_own() {
    let broker = Broker::start(SHARDS);
    let address = broker.address();
    let work = tempfile::tempdir().expect("temp dir");
    let json = work.path().join("summary.json");
    let mut load = Command::new(env!("CARGO_BIN_EXE_ringmq-load"))
        .args(["--broker", &address, "--data-dir"])
        .arg(broker.data_dir())
        .args(["--topic", "spread", "--topics", &TOPICS.to_string(), "--queues", &QUEUES.to_string()])
        .args(["--producers", &PRODUCERS.to_string(), "--connection-per-producer", "--consumers", "0"])
        .args(["--cores", "2", "--rate", "400", "--duration", "3s", "--warmup", "500ms", "--size", "128"])
        .args(["--window", "2", "--json"])
        .arg(&json)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ringmq-load");
    // While it runs: each producer's connection to each shard, besides the
    // generator executors' shared ones (one per executor and shard).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    while load.try_wait().expect("poll ringmq-load").is_none() {
        assert!(Instant::now() < deadline, "ringmq-load did not finish");
        most = most.max(connections(&address));
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = load.wait_with_output().expect("ringmq-load output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ringmq-load failed:\n{stdout}");
    assert!(stdout.contains("3 topic(s) x 2 queues"), "{stdout}");
    let own = PRODUCERS * u64::from(SHARDS);
    assert!(most >= own + 2 * u64::from(SHARDS), "at most {most} connections while producers each held their own");

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("summary file")).expect("JSON");
    assert_eq!(summary["workload"]["topics"], TOPICS, "{summary}");
    assert_eq!(summary["workload"]["connection_per_producer"], true, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    let acknowledged = summary["acknowledged"].as_u64().expect("acknowledged");

    let client = ringmq::client::Client::connect(&address).expect("client");
    let (mut stored, mut distinct) = (0, BTreeSet::new());
    for topic in 0..TOPICS {
        for queue in 0..QUEUES {
            let bodies = fetch_all_bytes(&client, &format!("spread-{topic}"), queue);
            assert!(!bodies.is_empty(), "queue {queue} of topic spread-{topic} got nothing");
            stored += bodies.len() as u64;
            // Bytes 8..20 of a generator's body: its producer and sequence.
            distinct.extend(bodies.iter().map(|body| body[8..20].to_vec()));
        }
    }
    assert_eq!(distinct.len() as u64, stored, "a message stored twice");
    // Warm-up included on both sides, and no send failed: each acknowledged
    // message stored once, nothing else.
    assert_eq!(stored, acknowledged, "messages stored against acknowledged");
    assert!(client.topic("spread").is_err(), "with --topics the bare --topic name is not created");
}
