//! The order-payment example (`examples/order_payment.rs`, its flow in
//! `examples/support/order_payment_flow.rs`) across a real crash: a child
//! process pays an order, commits it in SQLite and exits before
//! `END_TRANSACTION`; the "order paid" message stays invisible. A second
//! run only answers check-backs from the SQLite file: the broker's check
//! commits the half, the message becomes visible exactly once, and the
//! order row exists once.

#[path = "../examples/support/order_payment_flow.rs"]
#[allow(dead_code)]
mod flow;

mod common;

use common::{consume_in_order, Broker};
use flow::{Mode, Report, Settings, CRASH_EXIT_CODE};
use ringmq::client::rusqlite;
use ringmq::client::Client;
use ringmq::protocol::fb;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Checks every 100 ms once a half is 300 ms old.
const FAST_CHECKS: &str = "transaction_timeout_ms = 300\ntransaction_check_interval_ms = 100\n";
const CHILD_RUN_TIME_MAX: Duration = Duration::from_secs(30);
const TOPIC: &str = "orders";
const GROUP: &str = "order-service";
const ORDER_ID: &str = "order-42";

const CHILD_TEST: &str = "order_payment_child_process";
const ENV_BROKER: &str = "RINGMQ_ORDER_BROKER";
const ENV_DB: &str = "RINGMQ_ORDER_DB";

fn settings(broker: &str, db: &Path, mode: Mode) -> Settings {
    Settings {
        broker: broker.to_string(),
        db: db.to_path_buf(),
        order_id: ORDER_ID.to_string(),
        topic: TOPIC.to_string(),
        producer_group: GROUP.to_string(),
        queues: 4,
        mode,
    }
}

/// The child: the example's first run, `--crash-after-local-commit`.
#[test]
#[ignore = "run by the crash test as its child process"]
fn order_payment_child_process() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("the crash test sets {name}"));
    let report: Report = Arc::new(|line| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    });
    let settings = settings(&env(ENV_BROKER), Path::new(&env(ENV_DB)), Mode::Pay { crash_after_local_commit: true });
    flow::run(&settings, report).expect("the crashing run fails only by its crash");
    panic!("the child was to exit right after its local commit");
}

/// Runs the child; its exit code and the JSON lines it printed.
fn run_crashing_child(broker: &str, db: &Path) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", CHILD_TEST, "--ignored", "--nocapture", "--test-threads", "1"])
        .env(ENV_BROKER, broker)
        .env(ENV_DB, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let status = common::exit_within(&mut child, CHILD_RUN_TIME_MAX, "the order child");
    let output = child.wait_with_output().expect("child output");
    // The test harness prints its own lines around ours.
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.find('{').map(|at| &line[at..]))
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (status.code(), lines)
}

fn order_rows(db: &Path) -> Vec<(String, String)> {
    let connection = rusqlite::Connection::open(db).expect("open the order database");
    let mut statement = connection.prepare("SELECT order_id, transaction_id FROM orders").expect("prepare");
    statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).expect("query").map(|row| row.expect("row")).collect()
}

#[test]
fn an_order_paid_message_left_by_a_crash_after_the_local_commit_is_committed_by_the_check_back() {
    let broker = Broker::start_with_config(2, Some(FAST_CHECKS));
    let address = broker.address();
    let temp = tempfile::tempdir().expect("temp dir");
    let db = temp.path().join("orders.db");

    let (code, lines) = run_crashing_child(&address, &db);
    assert_eq!(code, Some(CRASH_EXIT_CODE), "the child was to exit after its local commit; printed {lines:?}");
    let events: Vec<&str> = lines.iter().filter_map(|line| line["event"].as_str()).collect();
    assert_eq!(events, ["local_commit", "crash_after_local_commit"], "{lines:?}");
    let transaction_id = lines[0]["transaction_id"].as_str().expect("transaction id").to_string();
    assert_eq!(order_rows(&db), [(ORDER_ID.to_string(), transaction_id.clone())], "the order row after the crash");

    // No live producer of the group: the half stays pending, invisible.
    let client = Client::connect(&address).expect("connect");
    let pending: Vec<_> = client
        .list_transactions(false)
        .expect("list")
        .into_iter()
        .filter(|listed| listed.transaction_id == transaction_id)
        .map(|listed| listed.state)
        .collect();
    assert_eq!(pending, [fb::TransactionState::Pending], "the half after the crash");
    assert!(consume_in_order(&address, "before", TOPIC).is_empty(), "a half message was visible before its commit");

    // The second run answers the check-back from the SQLite file.
    let reported = Arc::new(Mutex::new(Vec::new()));
    let collected = reported.clone();
    let report: Report = Arc::new(move |line| collected.lock().expect("lines").push(line));
    let answering = settings(&address, &db, Mode::AnswerChecks { at_most: Duration::from_secs(20) });
    flow::run(&answering, report).expect("the second run settles the transaction");
    let reported = reported.lock().expect("lines").clone();
    let check = reported.iter().find(|line| line["event"] == "check").expect("a check-back was answered");
    assert_eq!((check["transaction_id"].as_str(), check["answer"].as_str()), (Some(&*transaction_id), Some("commit")));
    let settled = reported.iter().find(|line| line["event"] == "settled").expect("settled");
    assert_eq!(settled["state"], "committed", "{reported:?}");

    let received = consume_in_order(&address, "after", TOPIC);
    let bodies: Vec<serde_json::Value> =
        received.iter().map(|(_, _, body)| serde_json::from_str(body).expect("JSON body")).collect();
    assert_eq!(bodies, [serde_json::json!({"event": "order paid", "order_id": ORDER_ID})], "visible exactly once");
    assert_eq!(order_rows(&db), [(ORDER_ID.to_string(), transaction_id)], "the order row, once");
}
