//! The order-payment flow of `examples/order_payment.rs`, in a module of its
//! own so that `tests/an_order_paid_message_survives_a_crash_after_the_local_commit.rs`
//! runs the very same code (tests cannot build or run an example binary).
//!
//! The order service records a payment as a row of its SQLite file and
//! announces it with an "order paid" message sent in a transaction: the
//! half first, then the local SQLite transaction (`execute_local`), then
//! commit. When the process dies between its local commit and the end, the
//! half stays pending; the broker checks it back with a live producer of
//! the group, and `check_local` answers from the same SQLite file: the
//! order's row written by this transaction -> commit, none -> rollback.

use ringmq::client::rusqlite::{self, OptionalExtension};
use ringmq::client::{
    CheckedMessage, Client, ClientError, LocalOutcome, OutgoingMessage, ProducerOptions, QueueChoice,
    TransactionListener, TransactionProducer,
};
use ringmq::protocol::fb;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The exit status of `--crash-after-local-commit`, so a caller can tell the
/// planned crash from a failure.
pub const CRASH_EXIT_CODE: i32 = 3;
/// The message property naming the order; `check_local` reads it back.
pub const ORDER_ID_PROPERTY: &str = "order_id";
/// How often the answering run looks whether the transaction is settled.
const SETTLED_POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub enum Mode {
    /// Pays the order: half, local SQLite commit, commit. With `crash_after_local_commit`
    /// the process exits right after the local commit, before `END_TRANSACTION`.
    Pay { crash_after_local_commit: bool },
    /// Only a live producer of the group: answers check-backs until the
    /// order's transaction is settled, or for at most `at_most`.
    AnswerChecks { at_most: Duration },
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub broker: String,
    pub db: PathBuf,
    pub order_id: String,
    pub topic: String,
    pub producer_group: String,
    /// Queues of the topic if this run creates it.
    pub queues: u32,
    pub mode: Mode,
}

#[derive(Debug, thiserror::Error)]
pub enum OrderPaymentError {
    #[error("broker: {0}")]
    Broker(#[from] ClientError),
    #[error("order database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("the transaction of order {order_id} was still pending after {waited:?}")]
    Unsettled { order_id: String, waited: Duration },
}

/// Where the flow reports what it did: one JSON object per step (called
/// from the check-back thread too).
pub type Report = Arc<dyn Fn(Value) + Send + Sync>;

/// The order service's SQLite file: one row per paid order, with the id of
/// the transaction that paid it.
pub struct OrderBook {
    // rusqlite's `Connection` is not `Sync`; the listener is shared with the
    // check-back thread.
    connection: Mutex<rusqlite::Connection>,
    crash_after_local_commit: bool,
    report: Report,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

impl OrderBook {
    pub fn open(path: &Path, crash_after_local_commit: bool, report: Report) -> Result<Self, rusqlite::Error> {
        let connection = rusqlite::Connection::open(path)?;
        // The check-back thread and a test reading the file may overlap.
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS orders (
                 order_id TEXT PRIMARY KEY,
                 transaction_id TEXT NOT NULL,
                 paid_at_ms INTEGER NOT NULL
             )",
        )?;
        Ok(Self { connection: Mutex::new(connection), crash_after_local_commit, report })
    }

    fn connection(&self) -> MutexGuard<'_, rusqlite::Connection> {
        // A panic while holding it left no half-done SQLite transaction
        // behind (rusqlite rolls back on drop), so the connection is usable.
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the order paid by `transaction_id` in one local transaction;
    /// false when it was paid already (by another transaction).
    fn record_payment(&self, order_id: &str, transaction_id: &str) -> Result<bool, rusqlite::Error> {
        let mut connection = self.connection();
        let local = connection.transaction()?;
        let inserted = local.execute(
            "INSERT OR IGNORE INTO orders (order_id, transaction_id, paid_at_ms) VALUES (?1, ?2, ?3)",
            (order_id, transaction_id, now_ms() as i64),
        )?;
        local.commit()?;
        Ok(inserted == 1)
    }

    /// The transaction that paid `order_id`, if it is paid.
    pub fn payment_transaction(&self, order_id: &str) -> Result<Option<String>, rusqlite::Error> {
        self.connection()
            .query_row("SELECT transaction_id FROM orders WHERE order_id = ?1", [order_id], |row| row.get(0))
            .optional()
    }
}

fn order_id_of(message: &CheckedMessage) -> Option<&str> {
    message
        .properties
        .iter()
        .find(|(key, _)| key == ORDER_ID_PROPERTY)
        .map(|(_, value)| value.as_str())
        .or_else(|| message.keys.first().map(String::as_str))
}

impl TransactionListener for OrderBook {
    fn execute_local(&self, message: &OutgoingMessage<'_>, transaction_id: &str) -> LocalOutcome {
        let Some(order_id) = message.key else {
            (self.report)(
                json!({"event": "local_rollback", "transaction_id": transaction_id, "reason": "no order id"}),
            );
            return LocalOutcome::Rollback;
        };
        let outcome = match self.record_payment(order_id, transaction_id) {
            Ok(true) => LocalOutcome::Commit,
            // Paid by an earlier transaction: a second "order paid" would
            // be a lie.
            Ok(false) => LocalOutcome::Rollback,
            // The commit may or may not have happened; the check-back reads
            // the file again later and knows.
            Err(error) => {
                (self.report)(
                    json!({"event": "local_error", "transaction_id": transaction_id, "error": error.to_string()}),
                );
                return LocalOutcome::Unknown;
            }
        };
        (self.report)(json!({
            "event": if outcome == LocalOutcome::Commit { "local_commit" } else { "already_paid" },
            "order_id": order_id,
            "transaction_id": transaction_id,
        }));
        if self.crash_after_local_commit && outcome == LocalOutcome::Commit {
            (self.report)(
                json!({"event": "crash_after_local_commit", "order_id": order_id, "exit_code": CRASH_EXIT_CODE}),
            );
            // The crash the flag exists for: the order is committed in
            // SQLite, the broker holds the half, nobody sends the end.
            std::process::exit(CRASH_EXIT_CODE);
        }
        outcome
    }

    // Called only after the broker's transaction_timeout_ms, long after a
    // live execute_local has committed: a missing row means the local
    // transaction never happened.
    fn check_local(&self, message: &CheckedMessage) -> LocalOutcome {
        let order_id = order_id_of(message);
        let paid_by = match order_id.map(|order_id| self.payment_transaction(order_id)).transpose() {
            Ok(paid_by) => paid_by.flatten(),
            Err(error) => {
                // Not known now: the broker asks again.
                (self.report)(
                    json!({"event": "check", "transaction_id": message.transaction_id, "answer": "unknown", "error": error.to_string()}),
                );
                return LocalOutcome::Unknown;
            }
        };
        let answer = if paid_by.as_deref() == Some(message.transaction_id.as_str()) {
            LocalOutcome::Commit
        } else {
            LocalOutcome::Rollback
        };
        (self.report)(json!({
            "event": "check",
            "order_id": order_id,
            "transaction_id": message.transaction_id,
            "checks_delivered": message.checks_delivered,
            "answer": answer.name(),
        }));
        answer
    }
}

fn state_name(state: fb::TransactionState) -> &'static str {
    match state {
        fb::TransactionState::Pending => "pending",
        fb::TransactionState::Committed => "committed",
        fb::TransactionState::RolledBack => "rolled_back",
        fb::TransactionState::Discarded => "discarded",
        _ => "unknown",
    }
}

/// Runs one invocation of the example.
pub fn run(settings: &Settings, report: Report) -> Result<(), OrderPaymentError> {
    let crash_after_local_commit = matches!(settings.mode, Mode::Pay { crash_after_local_commit: true });
    let book = Arc::new(OrderBook::open(&settings.db, crash_after_local_commit, report.clone())?);
    let client = Arc::new(Client::connect(&settings.broker)?);
    client.create_topic(&settings.topic, settings.queues)?;
    let producer = TransactionProducer::new(
        client.clone(),
        &settings.topic,
        &settings.producer_group,
        book.clone(),
        ProducerOptions::default(),
    )?;
    match settings.mode {
        Mode::Pay { .. } => {
            let order_id = settings.order_id.as_str();
            let body = json!({"event": "order paid", "order_id": order_id}).to_string();
            let properties = [(ORDER_ID_PROPERTY, order_id)];
            let message = OutgoingMessage {
                body: body.as_bytes(),
                key: Some(order_id),
                properties: &properties,
                ..Default::default()
            };
            // Keyed: every message of one order lands in one queue, in order.
            let (receipt, outcome) = producer.send_in_transaction(&message, QueueChoice::KeyHash)?;
            report(json!({
                "event": "sent",
                "order_id": order_id,
                "msg_id": format!("{:016x}{:016x}", receipt.msg_id.0, receipt.msg_id.1),
                "queue": receipt.queue,
                "outcome": outcome.name(),
            }));
            Ok(())
        }
        Mode::AnswerChecks { at_most } => {
            report(
                json!({"event": "answering_checks", "producer_group": settings.producer_group, "at_most_ms": at_most.as_millis() as u64}),
            );
            wait_settled(&client, &book, settings, at_most, &report)
        }
    }
}

/// Waits, while the producer answers check-backs, until the order's
/// transaction is no longer pending; without a paid row (the local
/// transaction never happened), until no half of the group on the topic is.
fn wait_settled(
    client: &Client,
    book: &OrderBook,
    settings: &Settings,
    at_most: Duration,
    report: &Report,
) -> Result<(), OrderPaymentError> {
    let started = Instant::now();
    let paid_by = book.payment_transaction(&settings.order_id)?;
    loop {
        let ours: Vec<_> = client
            .list_transactions(false)?
            .into_iter()
            .filter(|listed| listed.producer_group == settings.producer_group && listed.topic == settings.topic)
            .filter(|listed| paid_by.as_ref().is_none_or(|paid_by| *paid_by == listed.transaction_id))
            .collect();
        let pending = ours.iter().any(|listed| listed.state == fb::TransactionState::Pending);
        if !pending {
            for listed in &ours {
                report(json!({
                    "event": "settled",
                    "order_id": settings.order_id,
                    "transaction_id": listed.transaction_id,
                    "state": state_name(listed.state),
                }));
            }
            if ours.is_empty() {
                report(json!({"event": "settled", "order_id": settings.order_id, "state": "none_pending"}));
            }
            return Ok(());
        }
        if started.elapsed() >= at_most {
            report(json!({"event": "timeout", "order_id": settings.order_id, "waited_ms": at_most.as_millis() as u64}));
            return Err(OrderPaymentError::Unsettled { order_id: settings.order_id.clone(), waited: at_most });
        }
        std::thread::sleep(SETTLED_POLL);
    }
}
