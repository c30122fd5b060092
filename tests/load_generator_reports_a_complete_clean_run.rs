//! A short, slow run of ringmq-load against a broker it spawns: the report
//! is complete, the JSON parses with every key, the HdrHistogram log and the
//! plot are written, and nothing acknowledged was lost. No assertion on speed.

mod common;

use common::load_run;
use std::process::Command;

#[test]
fn a_short_run_reports_everything_and_loses_nothing() {
    let work = tempfile::tempdir().expect("temp dir");
    let (stdout, summary) = load_run(
        work.path(),
        "--spawn-broker --broker-shards 2 --queues 4 --producers 2 --consumers 2 --rate 500 --duration 3s \
         --warmup 1s --size 256 --window 4 --hdr-log latency.hlog --plot latency.svg",
    );
    for line in [
        "raw disk under",
        "sequential O_DIRECT write",
        "publish:",
        "end-to-end:",
        "verification:",
        "publish p50 / raw fdatasync p50",
        "publish MB/s / raw write MB/s",
    ] {
        assert!(stdout.contains(line), "the report lacks {line:?}:\n{stdout}");
    }
    for key in ["publish_rate", "consume_rate", "publish_mb_s", "lost", "duplicates", "errors", "raw_fsync_p50_us"] {
        assert!(summary.get(key).is_some(), "summary lacks {key}: {summary}");
    }
    for histogram in ["publish_latency_us", "e2e_latency_us"] {
        for percentile in ["p50", "p99", "p999", "p9999", "max"] {
            assert!(summary[histogram][percentile].is_u64(), "summary lacks {histogram}.{percentile}: {summary}");
        }
    }
    assert_eq!(summary["lost"], 0);
    // Whether the generator kept its schedule, and which CPU the raw probe
    // ran on; each spawned broker's flush rounds during the run.
    assert!(summary["generator_behind"].is_boolean(), "{summary}");
    assert!(summary["schedule_lag_us"]["p99"].is_u64(), "a fixed-rate run keeps its schedule lag: {summary}");
    assert_eq!(summary["raw_probe_cpu"], 0, "{summary}");
    assert!(summary["broker_flush"]["broker"]["rounds"].as_u64().is_some_and(|rounds| rounds > 0), "{summary}");
    assert!(summary["raw_write_mb_s"].as_f64().is_some_and(|mb_s| mb_s > 0.0), "no raw bandwidth: {summary}");
    assert!(summary["publish_mb_s_to_raw_write_mb_s"].as_f64().is_some_and(|share| share > 0.0), "{summary}");
    assert!(summary["acknowledged"].as_u64().is_some_and(|count| count > 0), "nothing acknowledged: {summary}");
    let log = std::fs::read_to_string(work.path().join("latency.hlog")).expect("hdr log");
    assert!(log.contains("Tag=publish,") && log.contains("Tag=e2e,"), "{log}");
    let svg = std::fs::read_to_string(work.path().join("latency.svg")).expect("plot");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{svg}");
}

/// `--transactional`: a plain phase and a transactional one (a half and its
/// commit per message) in one run; both report, both lose nothing, and the
/// ratio is there. No assertion on speed either.
#[test]
fn a_transactional_run_reports_both_phases_and_loses_nothing() {
    let work = tempfile::tempdir().expect("temp dir");
    let (stdout, summary) = load_run(
        work.path(),
        "--spawn-broker --broker-shards 2 --queues 4 --producers 2 --consumers 2 --rate 300 --duration 2s \
         --warmup 500ms --size 256 --window 4 --transactional",
    );
    for line in
        ["publish:", "verification:", "transactional publish:", "transactional verification:", "transactional / plain:"]
    {
        assert!(stdout.contains(line), "the report lacks {line:?}:\n{stdout}");
    }
    for phase in [&summary, &summary["transactional"]] {
        assert_eq!(phase["lost"], 0, "{summary}");
        assert_eq!(phase["errors"], 0, "{summary}");
        assert!(phase["acknowledged"].as_u64().is_some_and(|count| count > 0), "nothing acknowledged: {summary}");
        for percentile in ["p50", "p99"] {
            assert!(phase["publish_latency_us"][percentile].is_u64(), "{summary}");
        }
    }
    for ratio in ["publish_p50", "publish_p99", "throughput"] {
        assert!(summary["transactional_to_plain"][ratio].is_f64(), "summary lacks the {ratio} ratio: {summary}");
    }
    assert_eq!(summary["workload"]["transactional"], true);
}

/// The floor's shape with the spawned broker spinning before it sleeps: the
/// flag reaches the broker (which refuses a flag it does not know) and the
/// summary records it.
#[test]
fn a_spawned_broker_can_spin_before_it_sleeps() {
    let work = tempfile::tempdir().expect("temp dir");
    let (_, summary) = load_run(
        work.path(),
        "--spawn-broker --broker-shards 1 --broker-spin-before-park-us 100 --queues 1 --producers 1 \
         --consumers 0 --window 1 --cores 1 --duration 1s --warmup 200ms",
    );
    assert_eq!(summary["workload"]["broker_spin_before_park_us"], 100, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");
    assert!(summary["acknowledged"].as_u64().is_some_and(|count| count > 0), "nothing acknowledged: {summary}");
}

#[test]
fn a_broker_spin_without_a_spawned_broker_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq-load"))
        .args(["--broker", "127.0.0.1:1", "--broker-spin-before-park-us", "100"])
        .output()
        .expect("run ringmq-load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a spin for no spawned broker ran:\n{stderr}");
    assert!(
        stderr.contains("--broker-spin-before-park-us") && stderr.contains("--spawn-broker"),
        "unclear refusal: {stderr}"
    );
}
