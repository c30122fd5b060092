//! `ringmq-load --spawn-broker --standby sync`: one short, slow run against a
//! primary alone and one against a primary with `--replication sync` and a
//! spawned standby. Both runs are reported, every message of the standby
//! run is answered SEND_OK, and the ratio is there. No assertion on speed.

mod common;

use common::load_run;
use std::process::Command;

#[test]
fn a_sync_standby_run_is_reported_beside_local_durability_and_every_send_is_ok() {
    let work = tempfile::tempdir().expect("temp dir");
    // About 400 messages per run (warm-up included).
    let (stdout, summary) = load_run(
        work.path(),
        "--spawn-broker --standby sync --broker-shards 1 --queues 1 --producers 1 --consumers 1 --cores 1 \
         --rate 200 --duration 1500ms --warmup 500ms --size 256 --window 4",
    );
    for line in [
        "run 1 of 2: local",
        "run 2 of 2: sync standby",
        "connected to every shard of the primary",
        // The standby's shards were placed (`ringmq serve --cpuset`).
        "standby shards on CPUs",
        "publish:",
        "verification:",
        "publish p50 / raw fdatasync p50",
        "sync standby publish:",
        "sync standby verification:",
        "sync standby publish p50 / raw fdatasync p50",
        "sync standby / local: publish p50",
    ] {
        assert!(stdout.contains(line), "the report lacks {line:?}:\n{stdout}");
    }
    // The raw probe, pinned to CPU 0, left the tool (and the brokers it
    // spawned) every CPU: the standby's one shard went to CPU 1.
    if std::thread::available_parallelism().is_ok_and(|cpus| cpus.get() >= 2) {
        assert!(stdout.contains("standby shards on CPUs 1 "), "{stdout}");
    }
    assert_eq!(summary["run"], "local", "{summary}");
    assert_eq!(summary["workload"]["standby"], "sync", "{summary}");
    let standby = &summary["standby"];
    assert_eq!(standby["mode"], "sync", "{summary}");
    for run in [&summary, standby] {
        assert_eq!(run["lost"], 0, "{summary}");
        assert_eq!(run["errors"], 0, "{summary}");
        assert_eq!(run["not_send_ok"], 0, "{summary}");
        assert!(run["acknowledged"].as_u64().is_some_and(|count| count > 0), "nothing acknowledged: {summary}");
        for percentile in ["p50", "p99"] {
            assert!(run["publish_latency_us"][percentile].as_u64().is_some_and(|us| us > 0), "{summary}");
        }
        assert!(run["publish_rate"].as_f64().is_some_and(|rate| rate > 0.0), "{summary}");
        assert!(run.get("publish_p50_to_raw_fsync_p50").is_some(), "{summary}");
    }
    // Every message of the standby run was answered SEND_OK, and each
    // arrived once: none was stored without its acknowledgement.
    assert_eq!(standby["not_send_ok_by_status"], serde_json::json!({}), "{summary}");
    assert_eq!(standby["received"], standby["acknowledged"], "{summary}");
    assert_eq!(standby["unacknowledged_received"], 0, "{summary}");
    for ratio in ["publish_p50", "publish_p99", "throughput"] {
        assert!(
            summary["standby_to_local"][ratio].as_f64().is_some_and(|value| value > 0.0),
            "the {ratio} ratio is missing or not positive: {summary}"
        );
    }
    assert!(summary["standby_to_local"]["publish_p50_goal_met"].is_boolean(), "{summary}");
    // Each broker's flush rounds, scraped from its metrics: the standby's
    // replicated writes count too, one per write it confirmed.
    let flush = &summary["broker_flush"];
    for broker in ["local", "primary", "standby"] {
        let rounds = flush[broker]["rounds"].as_u64().unwrap_or(0);
        assert!(rounds > 0 && flush[broker]["mean_us"].as_f64().is_some_and(|us| us > 0.0), "{broker}: {summary}");
    }
    let records = |broker: &str| flush[broker]["records"].as_u64().unwrap_or(0);
    assert!(records("standby") >= standby["acknowledged"].as_u64().unwrap_or(u64::MAX), "{summary}");
    assert!(stdout.contains("flush rounds inside the broker"), "{stdout}");
}

#[test]
fn a_standby_without_a_spawned_broker_is_refused() {
    let work = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq-load"))
        .current_dir(work.path())
        .args(["--standby", "sync", "--broker", "127.0.0.1:1", "--duration", "1s"])
        .output()
        .expect("run ringmq-load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "--standby without --spawn-broker ran:\n{stderr}");
    assert!(stderr.contains("--standby") && stderr.contains("--spawn-broker"), "unclear refusal: {stderr}");
    assert!(output.stdout.is_empty(), "it measured something: {}", String::from_utf8_lossy(&output.stdout));
    let bad_mode = Command::new(env!("CARGO_BIN_EXE_ringmq-load"))
        .current_dir(work.path())
        .args(["--spawn-broker", "--standby", "semi"])
        .output()
        .expect("run ringmq-load");
    assert!(!bad_mode.status.success());
    assert!(String::from_utf8_lossy(&bad_mode.stderr).contains("semi"));
}
