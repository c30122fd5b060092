//! A consumer killed (SIGKILL) between its database commit and its offset
//! commit gets the same messages again after restart; with the SQLite dedup
//! store their effect still happens once. A child process consumes through
//! `IdempotentConsumer` and kills itself right after the database commit of
//! its K-th message; a second child on the same group and database consumes
//! the rest. A control run with the id check bypassed shows the same kill
//! does apply messages twice, so the test can tell the store works.

mod common;

use common::Broker;
use ringmq::client::rusqlite::{self, Transaction};
use ringmq::client::{
    Applied, Client, Consumer, ConsumerOptions, DedupError, DedupStore, IdempotentConsumer, IdempotentError, MsgId,
    OutgoingMessage, Producer, ProducerOptions, QueueChoice, SqliteDedupError, SqliteDedupStore,
};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const QUEUES: u32 = 4;
const MESSAGES: usize = 200;
/// The first child dies right after the database commit of this many effects.
const KILL_AFTER_APPLIED: usize = 70;
const CHILD_RUN_TIME_MAX: Duration = Duration::from_secs(45);
/// Once every message is applied, the second child waits this long for
/// anything more (a redelivery it would apply twice) before it reports.
const QUIET_BEFORE_DONE: Duration = Duration::from_secs(1);

const CHILD_TEST: &str = "idempotent_consumer_child_process";
const ENV_BROKER: &str = "RINGMQ_IDEM_BROKER";
const ENV_TOPIC: &str = "RINGMQ_IDEM_TOPIC";
const ENV_GROUP: &str = "RINGMQ_IDEM_GROUP";
const ENV_DB: &str = "RINGMQ_IDEM_DB";
const ENV_KILL_AFTER: &str = "RINGMQ_IDEM_KILL_AFTER";
const ENV_BYPASS: &str = "RINGMQ_IDEM_BYPASS";

fn say(line: String) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "@@ {line}");
    let _ = stdout.flush();
}

/// The child's store: the SQLite store, plus the kill right after the K-th
/// commit (before `handle_next` gets to commit the offset). With `bypass`
/// it runs every effect without the id check, as a consumer without the
/// dedup store would.
struct ChildStore {
    inner: SqliteDedupStore,
    applied: usize,
    kill_after: Option<usize>,
    bypass: bool,
}

impl DedupStore for ChildStore {
    type Tx<'tx> = Transaction<'tx>;
    type Error = SqliteDedupError;

    fn apply<E, F>(&mut self, msg_id: MsgId, effect: F) -> Result<Applied, DedupError<E, Self::Error>>
    where
        F: FnOnce(&Transaction<'_>) -> Result<(), E>,
    {
        let applied = if self.bypass {
            let store = |error| DedupError::Store(SqliteDedupError::Sqlite(error));
            let transaction = self.inner.connection().unchecked_transaction().map_err(store)?;
            effect(&transaction).map_err(DedupError::Handler)?;
            transaction.commit().map_err(store)?;
            Applied::Done
        } else {
            self.inner.apply(msg_id, effect)?
        };
        if applied == Applied::Done {
            self.applied += 1;
            if Some(self.applied) == self.kill_after {
                // SAFETY: sending a signal to our own pid has no
                // memory-safety preconditions.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                loop {
                    std::thread::park();
                }
            }
        }
        Ok(applied)
    }

    fn forget_before(&mut self, consumed_before_ms: u64, max_ids: usize) -> Result<usize, Self::Error> {
        self.inner.forget_before(consumed_before_ms, max_ids)
    }
}

fn effect_counts(connection: &rusqlite::Connection) -> (usize, usize) {
    connection
        .query_row("SELECT COUNT(*), COUNT(DISTINCT msg_id) FROM effects", [], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("count effects")
}

/// The child: consume through `IdempotentConsumer` until every message is
/// applied (or killed on the way), then report its totals.
#[test]
#[ignore = "run by the kill test as its child process"]
fn idempotent_consumer_child_process() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("the kill test sets {name}"));
    let kill_after = std::env::var(ENV_KILL_AFTER).ok().map(|count| count.parse().expect("kill count"));
    let bypass = std::env::var(ENV_BYPASS).is_ok();
    let inner = SqliteDedupStore::open(env(ENV_DB)).expect("open the database");
    inner
        .connection()
        .execute("CREATE TABLE IF NOT EXISTS effects (msg_id TEXT NOT NULL, body TEXT NOT NULL)", [])
        .expect("effects table");
    let store = ChildStore { inner, applied: 0, kill_after, bypass };
    let client = Arc::new(Client::connect(&env(ENV_BROKER)).expect("connect"));
    let options = ConsumerOptions {
        session_timeout_ms: 1000,
        max_wait: Duration::from_millis(100),
        // Small batches: several offset commits happen before the kill.
        max_count: 16,
        ..ConsumerOptions::default()
    };
    let consumer = Consumer::join(client, &env(ENV_GROUP), &env(ENV_TOPIC), options).expect("join");
    let mut consumer = IdempotentConsumer::new(consumer, store);
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    while started.elapsed() < CHILD_RUN_TIME_MAX {
        let tally = consumer.handle_next(|transaction, message| {
            let body = String::from_utf8_lossy(&message.body);
            transaction
                .execute("INSERT INTO effects (msg_id, body) VALUES (?1, ?2)", (message.msg_id_hex(), body))
                .map(|_| ())
        });
        match tally {
            Ok(tally) if tally.applied + tally.skipped > 0 => quiet_since = Instant::now(),
            Ok(_) => {}
            // A commit refused during the rebalance after the first child's
            // death: its messages come again, and are skipped.
            Err(IdempotentError::Client(error)) => eprintln!("child: {error}"),
            Err(IdempotentError::Store(error)) => panic!("the dedup store failed: {error}"),
        }
        let (_, distinct) = effect_counts(consumer.store().inner.connection());
        if distinct >= MESSAGES && quiet_since.elapsed() >= QUIET_BEFORE_DONE {
            break;
        }
    }
    let totals = consumer.totals();
    say(format!("DONE {} {}", totals.applied, totals.skipped));
}

/// What a child run reported: its exit status and, if it finished, its
/// applied and skipped totals.
struct ChildRun {
    status: ExitStatus,
    totals: Option<(usize, usize)>,
}

fn run_child(broker: &str, topic: &str, group: &str, db: &Path, kill_after: Option<usize>, bypass: bool) -> ChildRun {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", CHILD_TEST, "--ignored", "--nocapture", "--test-threads", "1"])
        .env(ENV_BROKER, broker)
        .env(ENV_TOPIC, topic)
        .env(ENV_GROUP, group)
        .env(ENV_DB, db)
        .env_remove(ENV_KILL_AFTER)
        .env_remove(ENV_BYPASS)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(count) = kill_after {
        command.env(ENV_KILL_AFTER, count.to_string());
    }
    if bypass {
        command.env(ENV_BYPASS, "1");
    }
    let mut child = command.spawn().expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let reader = std::thread::spawn(move || {
        let mut totals = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The test harness may print its own text before ours.
            let ours = line.find("@@").map_or("", |at| &line[at..]);
            if let ["@@", "DONE", applied, skipped] = ours.split_whitespace().collect::<Vec<_>>().as_slice() {
                totals = Some((applied.parse().expect("applied"), skipped.parse().expect("skipped")));
            }
        }
        totals
    });
    let status = common::exit_within(&mut child, CHILD_RUN_TIME_MAX + Duration::from_secs(15), "the consumer child");
    let totals = reader.join().expect("stdout reader");
    ChildRun { status, totals }
}

/// Both children on `group` and one database: the first killed after
/// `KILL_AFTER_APPLIED` effects, the second to the end. Returns the effects
/// table's (rows, distinct ids, bodies) and the second child's skipped count.
fn consume_across_a_kill(broker: &str, topic: &str, group: &str, db: &Path, bypass: bool) -> (usize, usize, usize) {
    let killed = run_child(broker, topic, group, db, Some(KILL_AFTER_APPLIED), bypass);
    assert_eq!(killed.status.signal(), Some(libc::SIGKILL), "the first child was to kill itself: {:?}", killed.status);
    let connection = rusqlite::Connection::open(db).expect("open the database");
    let (rows, _) = effect_counts(&connection);
    assert_eq!(rows, KILL_AFTER_APPLIED, "the killed child's committed effects");

    let restarted = run_child(broker, topic, group, db, None, bypass);
    assert!(restarted.status.success(), "the second child failed: {:?}", restarted.status);
    let (_, skipped) = restarted.totals.expect("the second child reports its totals");
    let (rows, distinct) = effect_counts(&connection);
    (rows, distinct, skipped)
}

#[test]
fn a_consumer_killed_between_its_database_commit_and_its_offset_commit_applies_each_message_once() {
    let broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("orders", QUEUES).expect("create topic");
    let producer = Producer::new(client, "orders", ProducerOptions::default()).expect("producer");
    let bodies: BTreeSet<String> = (0..MESSAGES).map(|index| format!("order-{index}")).collect();
    for body in &bodies {
        producer
            .send(&OutgoingMessage { body: body.as_bytes(), ..Default::default() }, QueueChoice::RoundRobin)
            .expect("send");
    }
    let temp = tempfile::tempdir().expect("temp dir");

    let db = temp.path().join("billing.db");
    let (rows, distinct, skipped) = consume_across_a_kill(&broker.address(), "orders", "billing", &db, false);
    assert_eq!((rows, distinct), (MESSAGES, MESSAGES), "effects (rows, distinct ids) with the dedup store");
    assert!(skipped >= 1, "the restarted consumer skipped no already-applied message: the kill missed its window");
    let connection = rusqlite::Connection::open(&db).expect("open the database");
    let mut statement = connection.prepare("SELECT body FROM effects").expect("prepare");
    let applied: BTreeSet<String> =
        statement.query_map([], |row| row.get(0)).expect("query").map(|body| body.expect("body")).collect();
    assert_eq!(applied, bodies, "every produced message applied");

    // Control: the same kill, with the id check bypassed, applies the
    // redelivered messages again.
    let control_db = temp.path().join("control.db");
    let (rows, distinct, _) = consume_across_a_kill(&broker.address(), "orders", "control", &control_db, true);
    assert_eq!(distinct, MESSAGES, "the control run applied every message");
    assert!(rows > MESSAGES, "without the dedup store the kill should cause double effects; got {rows} rows");
    println!("dedup store: {MESSAGES} effects, {skipped} redelivered messages skipped; without it: {rows} effects");
}
