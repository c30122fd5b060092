//! `ringmq produce --outbox FILE`, as a user runs it, killed with SIGKILL
//! twice: every input line arrives exactly once, each queue in input order.
//!
//! The model. The user has an input of `LINES` lines and runs
//! `ringmq produce --outbox FILE` on it. A line counts as accepted once it is
//! in the outbox file, which also counts the input lines stored
//! (`ringmq_produce_input`, committed with each row); a killed run is run
//! again with the same input and `--resume`, which skips the lines already
//! stored and resends the rows the killed run left. So:
//! 1. The first run gets the first lines; once some are acknowledged, the
//!    broker is killed and more lines are fed. The run (with a short
//!    delivery timeout) sees rows fail, keeps them and takes them up again,
//!    and is killed once the broker has been gone for a few seconds and at
//!    least `ROWS_AT_KILL_MIN` rows wait in the outbox, some of them in
//!    flight to the dead broker. Lines it never read were never accepted.
//! 2. The broker restarts; a second run (`--resume`, the whole input) is
//!    killed once it has printed `SECOND_RUN_PRINTED` results: rows in
//!    flight, rows acknowledged but not yet deleted.
//! 3. A third run (`--resume`, the whole input) finishes and exits 0.
//!
//! A fresh consumer group then reads every input line exactly once, each
//! queue's lines in input order. An outbox that deleted rows before their
//! acknowledgement loses the lines in flight at a kill; one that stamped a
//! resumed queue from sequence 0 under the producer id the broker already
//! knows has those lines answered as duplicates and lost: both fail here.

mod common;

use common::{consume_in_order, Broker};
use ringmq::client::rusqlite::{self, OpenFlags};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOPIC: &str = "outboxed";
const QUEUES: u32 = 4;
const LINES: usize = 2000;
/// The first run gets this many lines while the broker is up...
const FIRST_FEED: usize = 400;
/// ...and the broker is killed once this many are acknowledged...
const ACKED_BEFORE_BROKER_KILL: usize = 200;
/// ...then it gets lines up to this one, and is killed once this many rows wait.
const SECOND_FEED_END: usize = 1000;
const ROWS_AT_KILL_MIN: usize = 300;
/// The broker stays down at least this long before the first run is killed:
/// longer than that run's delivery timeout, so rows fail, are kept, and are
/// taken up again (deleting acknowledged rows on the way).
const BROKER_DOWN_BEFORE_KILL: Duration = Duration::from_secs(3);
const FIRST_RUN_DELIVERY_TIMEOUT_MS: u64 = 1000;
const DELIVERY_TIMEOUT_MS: u64 = 60_000;
const SECOND_RUN_PRINTED: usize = 500;
const STEP_LIMIT: Duration = Duration::from_secs(60);

fn body(index: usize) -> String {
    format!("line-{index:05}")
}

fn index_of(body: &str) -> usize {
    body.strip_prefix("line-")
        .and_then(|index| index.parse().ok())
        .unwrap_or_else(|| panic!("not an input line: {body}"))
}

/// A `ringmq produce --outbox` child, killed if the test fails first.
struct Producer {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    results: mpsc::Receiver<serde_json::Value>,
}

impl Producer {
    fn start(broker: &Broker, outbox: &Path, delivery_timeout_ms: u64, resume: bool) -> Self {
        let address = broker.address();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
        command.args(["produce", "--topic", TOPIC, "--broker", &address, "--outbox"]);
        command.arg(outbox).args(["--delivery-timeout-ms", &delivery_timeout_ms.to_string(), "--log", "error"]);
        if resume {
            command.arg("--resume");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ringmq produce");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, results) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let result = serde_json::from_str(&line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
                if sender.send(result).is_err() {
                    return;
                }
            }
        });
        Self { child: Some(child), stdin: Some(stdin), results }
    }

    fn feed(&mut self, lines: std::ops::Range<usize>) {
        let stdin = self.stdin.as_mut().expect("input still open");
        for index in lines {
            writeln!(stdin, "{}", body(index)).expect("feed a line");
        }
        stdin.flush().expect("flush the input");
    }

    fn end_input(&mut self) {
        drop(self.stdin.take());
    }

    /// SIGKILL; returns every result it printed.
    fn kill(&mut self, mut seen: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
        let mut child = self.child.take().expect("a running producer");
        child.kill().expect("SIGKILL the producer");
        child.wait().expect("wait for the producer");
        self.end_input();
        seen.extend(self.results.iter());
        seen
    }

    /// Waits for the exit; returns its status and every result it printed.
    fn finish(&mut self) -> (ExitStatus, Vec<serde_json::Value>) {
        self.end_input();
        let child = self.child.as_mut().expect("a running producer");
        let status = common::exit_within(child, STEP_LIMIT, "ringmq produce");
        self.child = None;
        (status, self.results.iter().collect())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Collects results until `count` arrived.
fn wait_for_results(results: &mpsc::Receiver<serde_json::Value>, seen: &mut Vec<serde_json::Value>, count: usize) {
    let deadline = Instant::now() + STEP_LIMIT;
    while seen.len() < count {
        assert!(Instant::now() < deadline, "only {} of {count} results printed in time", seen.len());
        if let Ok(result) = results.recv_timeout(Duration::from_millis(100)) {
            seen.push(result);
        }
    }
}

fn read_only(outbox: &Path) -> rusqlite::Connection {
    let connection =
        rusqlite::Connection::open_with_flags(outbox, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open the outbox file");
    connection.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    connection
}

fn row_count(outbox: &Path) -> usize {
    read_only(outbox).query_row("SELECT COUNT(*) FROM ringmq_outbox", [], |row| row.get(0)).expect("count rows")
}

/// The input line of every row left in the outbox.
fn row_lines(outbox: &Path) -> Vec<usize> {
    let connection = read_only(outbox);
    let mut statement = connection.prepare("SELECT bytes FROM ringmq_outbox ORDER BY id").expect("prepare");
    let rows = statement.query_map([], |row| row.get::<_, Vec<u8>>(0)).expect("query rows");
    rows.map(|bytes| {
        let bytes = bytes.expect("a row");
        let message = ringmq::wire::verify_message(bytes.into()).expect("a row holds a message");
        let body = message.message().body().map(|body| body.bytes().to_vec()).unwrap_or_default();
        index_of(&String::from_utf8(body).expect("utf-8"))
    })
    .collect()
}

fn lines_accepted(outbox: &Path) -> usize {
    let accepted: i64 = read_only(outbox)
        .query_row("SELECT lines_accepted FROM ringmq_produce_input WHERE topic = ?1", [TOPIC], |row| row.get(0))
        .expect("the input count");
    usize::try_from(accepted).expect("a count")
}

/// The input lines of acknowledgements (not of resent rows: their line is null).
fn acknowledged_lines(results: &[serde_json::Value]) -> Vec<usize> {
    results
        .iter()
        .filter(|result| result["status"] == "SEND_OK")
        .filter_map(|result| result["line"].as_u64())
        .map(|line| line as usize)
        .collect()
}

#[test]
fn an_outbox_killed_twice_delivers_every_accepted_line_exactly_once_in_order() {
    let mut broker = Broker::start(2);
    let client = ringmq::client::Client::connect(&broker.address()).expect("connect");
    client.create_topic(TOPIC, QUEUES).expect("create the topic");
    let temp = tempfile::tempdir().expect("temp dir");
    let outbox = temp.path().join("app.db");

    // 1. Killed after the broker was gone long enough for rows to fail
    //    (and be kept), with rows piled up.
    let mut first = Producer::start(&broker, &outbox, FIRST_RUN_DELIVERY_TIMEOUT_MS, false);
    first.feed(0..FIRST_FEED);
    let mut first_results = Vec::new();
    wait_for_results(&first.results, &mut first_results, ACKED_BEFORE_BROKER_KILL);
    broker.kill();
    let broker_killed = Instant::now();
    first.feed(FIRST_FEED..SECOND_FEED_END);
    let deadline = Instant::now() + STEP_LIMIT;
    while row_count(&outbox) < ROWS_AT_KILL_MIN || broker_killed.elapsed() < BROKER_DOWN_BEFORE_KILL {
        assert!(Instant::now() < deadline, "the outbox holds {} rows, not {ROWS_AT_KILL_MIN}", row_count(&outbox));
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_results = first.kill(first_results);
    let accepted = lines_accepted(&outbox);
    let left = row_lines(&outbox);
    println!("first run: {accepted} lines accepted, {} acknowledged, {} rows left", first_results.len(), left.len());
    assert!(left.len() >= ROWS_AT_KILL_MIN && accepted <= SECOND_FEED_END);
    assert!(left.iter().all(|line| *line < accepted), "a row beyond the accepted lines");
    assert!(
        acknowledged_lines(&first_results).iter().all(|line| *line <= accepted),
        "an acknowledged line not counted"
    );
    assert!(left.windows(2).all(|pair| pair[0] < pair[1]), "rows out of input order");

    // Every accepted line is in the outbox or in the broker: no row went
    // before the broker had its message.
    broker.restart();
    let stored: BTreeSet<usize> = consume_in_order(&broker.address(), "after-the-first-kill", TOPIC)
        .iter()
        .map(|(_, _, body)| index_of(body))
        .collect();
    let kept: BTreeSet<usize> = left.iter().copied().collect();
    let lost: Vec<usize> = (0..accepted).filter(|line| !stored.contains(line) && !kept.contains(line)).collect();
    assert!(
        lost.is_empty(),
        "{} accepted lines neither kept nor stored: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );

    // 2. Killed mid-way with rows in flight.
    let mut second = Producer::start(&broker, &outbox, DELIVERY_TIMEOUT_MS, true);
    second.feed(0..LINES);
    let mut second_results = Vec::new();
    wait_for_results(&second.results, &mut second_results, SECOND_RUN_PRINTED);
    let second_results = second.kill(second_results);
    let resent = second_results.iter().filter(|result| result["resent"] == true).count();
    assert_eq!(resent, left.len().min(second_results.len()), "the first run's rows go first, each once");
    assert!(second_results.iter().all(|result| result["status"] == "SEND_OK"), "{second_results:?}");
    let accepted_second = lines_accepted(&outbox);
    let left_second = row_lines(&outbox);
    println!(
        "second run: {accepted_second} lines accepted, {} printed, {} rows left",
        second_results.len(),
        left_second.len()
    );
    assert!(acknowledged_lines(&second_results).iter().all(|line| *line > accepted && *line <= accepted_second));

    // 3. To the end.
    let mut third = Producer::start(&broker, &outbox, DELIVERY_TIMEOUT_MS, true);
    third.feed(0..LINES);
    let (status, third_results) = third.finish();
    assert!(status.success(), "the third run failed: {status}; {third_results:?}");
    assert_eq!(row_count(&outbox), 0, "the outbox is empty after a clean run");
    let resent = third_results.iter().filter(|result| result["resent"] == true).count();
    assert_eq!(resent, left_second.len(), "the second run's rows, each once");
    let new_lines = acknowledged_lines(&third_results);
    assert_eq!(new_lines, (accepted_second + 1..=LINES).collect::<Vec<_>>(), "the rest of the input, in order");
    assert!(third_results.iter().all(|result| result["status"] == "SEND_OK"));

    // Every line once, each queue in input order.
    let consumed = consume_in_order(&broker.address(), "check", TOPIC);
    let mut per_queue: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (queue, _, body) in &consumed {
        per_queue.entry(*queue).or_default().push(index_of(body));
    }
    let mut seen = BTreeSet::new();
    let duplicates: Vec<usize> =
        consumed.iter().map(|(_, _, body)| index_of(body)).filter(|index| !seen.insert(*index)).collect();
    assert!(duplicates.is_empty(), "lines stored twice: {duplicates:?}");
    let missing: Vec<usize> = (0..LINES).filter(|index| !seen.contains(index)).collect();
    assert!(missing.is_empty(), "{} lines lost, the first {:?}", missing.len(), &missing[..missing.len().min(20)]);
    for (queue, lines) in &per_queue {
        assert!(lines.windows(2).all(|pair| pair[0] < pair[1]), "queue {queue} out of input order");
    }
    assert_eq!(per_queue.len(), QUEUES as usize, "every queue was used");
}
