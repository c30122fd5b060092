//! `ringmq produce` and `ringmq consume`, as a user runs them, wait out a
//! broker that is killed and restarted while they run: produce (plain and
//! with --linger-ms) answers every line with SEND_OK and exits 0, consume
//! goes on and prints every message.

mod common;

use common::Broker;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LINES: usize = 400;
const LIMIT: Duration = Duration::from_secs(90);

fn ringmq(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    command.args(args).env("RUST_LOG", "error");
    command
}

/// Reads a child's stdout lines into a channel.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Feeds `prefix-N` lines to `ringmq produce` (extra `flags`), killing and
/// restarting the broker after a third of them; returns the JSON results.
fn produce_across_a_restart(broker: &mut Broker, prefix: &str, flags: &[&str]) -> Vec<serde_json::Value> {
    let address = broker.address();
    let mut args = vec!["produce", "--topic", "t", "--broker", &address];
    args.extend_from_slice(flags);
    let mut child = ringmq(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("ringmq produce");
    let results = lines_of(&mut child);
    let mut stdin = child.stdin.take().expect("piped stdin");
    for index in 0..LINES {
        writeln!(stdin, "{prefix}-{index}").expect("write a line");
        stdin.flush().expect("flush");
        if index == LINES / 3 {
            std::thread::sleep(Duration::from_millis(100));
            broker.kill();
            std::thread::sleep(Duration::from_millis(300));
            broker.restart();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(stdin);
    let status = common::exit_within(&mut child, LIMIT, "ringmq produce");
    let lines: Vec<serde_json::Value> =
        results.try_iter().map(|line| serde_json::from_str(&line).expect("a JSON line")).collect();
    assert!(status.success(), "ringmq produce failed: {status}; {lines:?}");
    lines
}

#[test]
fn produce_and_consume_wait_out_a_broker_restart() {
    let mut broker = Broker::start(2);
    let address = broker.address();
    let create = ringmq(&["topic", "create", "t", "--queues", "4", "--broker", &address]).output().expect("topic");
    assert!(create.status.success());
    let mut consumer = ringmq(&["consume", "--topic", "t", "--group", "g", "--broker", &address])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ringmq consume");
    let consumed = lines_of(&mut consumer);

    for (prefix, flags) in [("plain", &[][..]), ("lingered", &["--linger-ms", "5"][..])] {
        let results = produce_across_a_restart(&mut broker, prefix, flags);
        assert_eq!(results.len(), LINES, "{prefix}: one result per line");
        for (index, result) in results.iter().enumerate() {
            assert_eq!(result["line"], index + 1, "{prefix}: results in input order");
            assert_eq!(result["status"], "SEND_OK", "{prefix}: {result}");
            assert!(result["duplicate"].is_boolean(), "{prefix}: {result}");
        }
    }

    let mut bodies = BTreeSet::new();
    let deadline = Instant::now() + LIMIT;
    while bodies.len() < 2 * LINES {
        assert!(Instant::now() < deadline, "consume printed {} distinct messages of {}", bodies.len(), 2 * LINES);
        assert!(consumer.try_wait().expect("wait").is_none(), "ringmq consume exited");
        if let Ok(line) = consumed.recv_timeout(Duration::from_millis(200)) {
            let message: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
            bodies.insert(message["body"].as_str().expect("a body").to_string());
        }
    }
    let _ = consumer.kill();
    let _ = consumer.wait();
    let expected: BTreeSet<String> = ["plain", "lingered"]
        .iter()
        .flat_map(|prefix| (0..LINES).map(move |index| format!("{prefix}-{index}")))
        .collect();
    assert_eq!(bodies, expected);
}
