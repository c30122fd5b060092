//! Check-back of half messages left without an outcome (issue 10): a
//! restarted producer commits what a dead one left; nothing is counted while
//! the whole group is offline; 15 unknown answers discard a half; pending
//! halves and their check counts survive a SIGKILL of the broker; halves on
//! several shards are each checked by their own shard.

mod common;

use common::{consume_in_order, ringmq, Broker};
use ringmq::client::{
    CheckedMessage, Client, LocalOutcome, OutgoingMessage, Producer, ProducerOptions, QueueChoice, TransactionListener,
    TransactionProducer,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Checks every 100 ms once a half is 300 ms old.
const FAST_CHECKS: &str = "transaction_timeout_ms = 300\ntransaction_check_interval_ms = 100\n";
const WAIT_MAX: Duration = Duration::from_secs(30);

/// `ringmq tx respond` in the background; its JSON lines as they come.
struct Responder {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Responder {
    fn start(address: &str, group: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["tx", "respond", "--producer-group", group, "--broker", address, "--log", "warn"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ringmq tx respond");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or_else(|error| panic!("{line:?}: {error}"));
                collected.lock().expect("lines").push(value);
            }
        });
        Self { child, lines }
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        self.lines.lock().expect("lines").clone()
    }

    /// SIGKILL: a producer that dies.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Transaction id -> (state, checks delivered), from `ringmq tx list`.
fn listed(address: &str, discarded: bool) -> BTreeMap<String, (String, u64)> {
    let mut args = vec!["tx", "list", "--json", "--broker", address];
    if discarded {
        args.push("--discarded");
    }
    ringmq(&args, "")
        .into_iter()
        .map(|line| {
            let id = line["transaction_id"].as_str().expect("id").to_string();
            let state = line["state"].as_str().expect("state").to_string();
            (id, (state, line["checks_delivered"].as_u64().expect("checks")))
        })
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one half per line with `ringmq produce --half` (the producer then
/// exits: it died without an outcome); returns their transaction ids.
fn send_halves(address: &str, group: &str, lines: &str) -> Vec<String> {
    let sent =
        ringmq(&["produce", "--topic", "orders", "--producer-group", group, "--half", "--broker", address], lines);
    sent.iter().map(|line| line["transaction_id"].as_str().expect("id").to_string()).collect()
}

struct Scripted {
    check: LocalOutcome,
    checked: Mutex<Vec<CheckedMessage>>,
}

impl TransactionListener for Scripted {
    fn execute_local(&self, _message: &OutgoingMessage<'_>, _transaction_id: &str) -> LocalOutcome {
        LocalOutcome::Unknown
    }

    fn check_local(&self, message: &CheckedMessage) -> LocalOutcome {
        self.checked.lock().expect("checked").push(message.clone());
        self.check
    }
}

fn scripted(check: LocalOutcome) -> Arc<Scripted> {
    Arc::new(Scripted { check, checked: Mutex::new(Vec::new()) })
}

#[test]
fn a_restarted_producer_of_the_group_commits_what_a_dead_one_left_pending() {
    let broker = Broker::start_with_config(2, Some(FAST_CHECKS));
    let address = broker.address();
    Client::connect(&address).expect("connect").create_topic("orders", 4).expect("create");

    // The first producer stores its half, its local transaction says
    // nothing yet, and it dies (client and connections gone).
    let (receipt, outcome) = {
        let client = Arc::new(Client::connect(&address).expect("connect"));
        let producer = TransactionProducer::new(
            client,
            "orders",
            "payments",
            scripted(LocalOutcome::Unknown),
            ProducerOptions::default(),
        )
        .expect("producer");
        let message = OutgoingMessage { body: b"paid", key: Some("order-1"), ..OutgoingMessage::default() };
        producer.send_in_transaction(&message, QueueChoice::RoundRobin).expect("half")
    };
    assert_eq!(outcome, LocalOutcome::Unknown);
    assert!(receipt.offset.is_none(), "a half has no offset");

    // Its replacement answers the check-back with a commit.
    let listener = scripted(LocalOutcome::Commit);
    let client = Arc::new(Client::connect(&address).expect("connect"));
    let _producer =
        TransactionProducer::new(client, "orders", "payments", listener.clone(), ProducerOptions::default())
            .expect("producer");
    wait_for("the check-back commit", || listed(&address, false).values().any(|(state, _)| state == "committed"));
    let checked = listener.checked.lock().expect("checked").clone();
    assert!(!checked.is_empty());
    assert_eq!((checked[0].body.as_slice(), checked[0].keys.clone()), (&b"paid"[..], vec!["order-1".to_string()]));
    assert_eq!((checked[0].msg_id, checked[0].queue), (receipt.msg_id, receipt.queue));
    let bodies: Vec<String> = consume_in_order(&address, "g", "orders").into_iter().map(|(_, _, body)| body).collect();
    assert_eq!(bodies, ["paid"], "committed once, visible once");
}

#[test]
fn while_the_whole_group_is_offline_no_check_is_counted() {
    let broker = Broker::start_with_config(1, Some(FAST_CHECKS));
    let address = broker.address();
    Client::connect(&address).expect("connect").create_topic("orders", 2).expect("create");
    let ids = send_halves(&address, "offline", "a\nb\n");
    // A live producer of another group changes nothing for this one.
    let _other = Responder::start(&address, "another-group", &["--answer", "commit"]);
    std::thread::sleep(Duration::from_millis(1500));
    let before = listed(&address, false);
    for id in &ids {
        assert_eq!(before[id], ("pending".to_string(), 0), "no live producer of the group: nothing counted");
    }
    // Once a member is back, checks reach it and count.
    let responder = Responder::start(&address, "offline", &["--answer", "unknown"]);
    wait_for("delivered checks", || listed(&address, false).values().all(|(_, checks)| *checks >= 2));
    assert!(responder.lines().iter().all(|line| line["answer"] == "unknown"));
    assert!(listed(&address, false).values().all(|(state, _)| state == "pending"));
}

#[test]
fn fifteen_unknown_answers_roll_the_half_back_as_discarded() {
    let mut broker =
        Broker::start_with_config(1, Some("transaction_timeout_ms = 100\ntransaction_check_interval_ms = 50\n"));
    let address = broker.address();
    Client::connect(&address).expect("connect").create_topic("orders", 2).expect("create");
    let ids = send_halves(&address, "undecided", "never\n");
    let mut responder = Responder::start(&address, "undecided", &[]);
    wait_for("the discard", || !listed(&address, true).is_empty());
    let discarded = listed(&address, true);
    assert_eq!(discarded.keys().collect::<Vec<_>>(), [&ids[0]]);
    assert_eq!(discarded[&ids[0]], ("discarded".to_string(), 15), "after the default 15 delivered checks");
    responder.kill();
    let answered = responder.lines();
    assert!(
        answered.len() >= 15
            && answered.iter().all(|line| line["answer"] == "unknown" && line["transaction_id"] == ids[0])
    );
    assert!(answered[0]["msg_id"].as_str().is_some_and(|id| id.len() == 32));
    // Rebuilt from the log as discarded, never visible.
    broker.kill();
    broker.restart();
    assert_eq!(listed(&address, true)[&ids[0]], ("discarded".to_string(), 15));
    assert!(consume_in_order(&address, "g", "orders").is_empty());
    let refused = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["tx", "end", &ids[0], "--commit", "--broker", &address, "--log", "warn"])
        .output()
        .expect("ringmq tx end");
    assert!(!refused.status.success(), "a discarded transaction cannot be committed");
}

#[test]
fn pending_halves_and_their_check_counts_survive_a_kill_of_the_broker_and_are_checked_after() {
    let mut broker = Broker::start_with_config(2, Some(FAST_CHECKS));
    let address = broker.address();
    Client::connect(&address).expect("connect").create_topic("orders", 4).expect("create");
    let ids = send_halves(&address, "pg", "a\nb\n");
    let mut responder = Responder::start(&address, "pg", &["--answer", "unknown"]);
    wait_for("two checks each", || listed(&address, false).values().all(|(_, checks)| *checks >= 2));
    responder.kill();
    // A check in flight when it died may still land: let it.
    std::thread::sleep(Duration::from_millis(500));
    let counted = listed(&address, false);

    broker.kill();
    broker.restart();
    assert_eq!(listed(&address, false), counted, "pending, with their check counts, after a SIGKILL");

    let dir = tempfile::tempdir().expect("temp dir");
    let answers = dir.path().join("answers");
    std::fs::write(&answers, format!("{} commit\n{} rollback\n", ids[0], ids[1])).expect("answers file");
    let answers = answers.to_str().expect("utf-8 path").to_string();
    let _responder = Responder::start(&address, "pg", &["--answers", &answers]);
    wait_for("both outcomes", || {
        let now = listed(&address, false);
        now[&ids[0]].0 == "committed" && now[&ids[1]].0 == "rolled_back"
    });
    let bodies: Vec<String> = consume_in_order(&address, "g", "orders").into_iter().map(|(_, _, body)| body).collect();
    assert_eq!(bodies, ["a"]);
}

#[test]
fn halves_on_several_shards_are_each_checked_by_their_own_shard() {
    let broker = Broker::start_with_config(2, Some(FAST_CHECKS));
    let address = broker.address();
    let client = Arc::new(Client::connect(&address).expect("connect"));
    let (topic, _) = client.create_topic("orders", 4).expect("create");
    assert!(topic.queue_shards.contains(&0) && topic.queue_shards.contains(&1), "{:?}", topic.queue_shards);

    // Halves on every queue, from a producer that never ends them.
    let producer = Producer::new(client.clone(), "orders", ProducerOptions::default()).expect("producer");
    let mut ids = Vec::new();
    for queue in 0..4 {
        let id = format!("tx-{queue}");
        let message = OutgoingMessage { body: id.as_bytes(), ..OutgoingMessage::default() };
        producer.send_half(&message, QueueChoice::Explicit(queue), "spread", &id).expect("half");
        ids.push(id);
    }
    let listener = scripted(LocalOutcome::Commit);
    let _checker =
        TransactionProducer::new(client.clone(), "orders", "spread", listener.clone(), ProducerOptions::default())
            .expect("producer");
    wait_for("every half committed", || {
        let now = listed(&address, false);
        ids.iter().all(|id| now.get(id).is_some_and(|(state, _)| state == "committed"))
    });
    // Each shard lists (and so checked) exactly the halves of its own queues.
    for shard in 0..2u32 {
        let body = ringmq::protocol::list_transactions_request(false);
        let answer = client.call(shard, ringmq::protocol::Kind::ListTransactionsRequest, &body).expect("list");
        let response =
            ringmq::protocol::verify::<ringmq::protocol::fb::ListTransactionsResponse>(&answer).expect("body");
        let queues: Vec<u32> = response.transactions().expect("a list").iter().map(|info| info.queue()).collect();
        assert!(!queues.is_empty(), "shard {shard} holds halves");
        assert!(queues.iter().all(|queue| topic.queue_shards[*queue as usize] == shard));
    }
    let checked: std::collections::BTreeSet<String> =
        listener.checked.lock().expect("checked").iter().map(|message| message.transaction_id.clone()).collect();
    assert_eq!(checked, ids.iter().cloned().collect());
}
