//! The outbox ("persist to the database and retry"): `send` builds a message
//! once, stamped with its producer id and sequence, writes those bytes as a
//! row of table `ringmq_outbox` in the application's SQLite file (its own
//! transaction, `synchronous=FULL`) and returns; a sender thread delivers
//! the rows in row order with retries and deletes each row only after the
//! broker acknowledged it. A killed application finds its rows on the next
//! `open` and resends the same bytes, which the broker's dedup answers as
//! duplicates when it has them already.
//!
//! The invariant everything rests on: **for each queue, the rows hold
//! sequences under one producer id, increasing in row order, and are
//! exactly the bytes that go out; a sequence of that id with no row left
//! was acknowledged by the broker.** (Rows are deleted only after their
//! acknowledgement; a row answered `FLUSH_DISK_TIMEOUT` stays while later
//! ones may go.) So a resend of any row is either stored in order or
//! answered as a duplicate: never stored twice, never dropped. It holds
//! because:
//! - `send` stamps under one lock, in the order it inserts rows (row ids,
//!   `AUTOINCREMENT`, only grow), and never hands a sequence out twice: a
//!   failed commit may have stored the row, so its sequence is used up. A
//!   row that was not stored after all is the one exception to the last
//!   clause: a permanent gap (below).
//! - `open` takes a fresh producer id for queues without rows, and for a
//!   queue with rows goes on under the last row's id after its sequence
//!   (what `Producer::adopt` would do): never sequence 0 again under an id
//!   the broker knows, which it would answer as a duplicate and lose.
//! - The sender only ever `adopt`s rows into a `Producer`, which sends every
//!   row's bytes as they are. When a row finally fails, the sender launches
//!   nothing more, lands what is in flight, pauses, and starts over from the
//!   first row on a fresh producer (every stamp settled, nothing reordered,
//!   nothing lost).
//! - A permanent gap (the broker lost acknowledged messages in an
//!   async-flush crash or forgot an idle producer, or a row's commit failed)
//!   can never be filled: the producer resends the queue's oldest row with
//!   `skip_gap` (every row before it was acknowledged), unchanged.
//!
//! One outbox per file at a time (an exclusive `flock` on the database
//! file): a second one would hand out the same sequences. One topic per
//! outbox: rows name their topic, and `open` refuses a file holding rows of
//! another one rather than leave them unsent.

use super::producer::{
    build_message, choose_queue, OutgoingMessage, Producer, ProducerOptions, QueueChoice, SendReceipt,
};
use super::sequencer::new_producer_id;
use super::{Client, ClientError};
use crate::protocol::fb;
use crate::wire::verify_message;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A row of `ringmq_outbox`: its `id`, which only grows.
pub type RowId = i64;

pub use crate::constants::OUTBOX_WINDOW_DEFAULT;
pub const OUTBOX_RETRY_PAUSE_DEFAULT: Duration = Duration::from_secs(1);
/// How long a transaction waits for another connection's write lock (the
/// application's own, or the other side of the outbox) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Acknowledged rows are deleted in one transaction once this many wait...
const DELETE_BATCH: usize = 256;
/// ...or once the oldest has waited this long, or when nothing is in flight.
const DELETE_INTERVAL: Duration = Duration::from_millis(20);
/// An idle sender looks at the table again this often even unwoken.
const IDLE_WAIT: Duration = Duration::from_millis(500);

// AUTOINCREMENT: a row id is never used twice, even after every row was
// deleted, so the sender's cursor (the last id it took) never skips a new row
// and ids from an earlier run are always below this run's.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS ringmq_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        queue INTEGER NOT NULL,
        bytes BLOB NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot open the outbox {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("the outbox {path} is open elsewhere (another process or handle); one outbox per file")]
    InUse { path: PathBuf },
    #[error("cannot lock the outbox {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("the outbox {path} holds {rows} rows for topic {found:?}, not {topic:?}: open it with that topic")]
    OtherTopic { path: PathBuf, topic: String, found: String, rows: u64 },
    #[error("outbox row {row} does not hold a message for its queue: {reason}")]
    BadRow { row: RowId, reason: String },
    #[error("outbox database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The application's write in `send_with` failed: nothing was stored.
    #[error("the write sent with the message failed, nothing was stored: {0}")]
    Effect(rusqlite::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot start the outbox sender: {0}")]
    Thread(std::io::Error),
}

#[derive(Clone, Debug)]
pub struct OutboxOptions {
    /// `delivery_timeout` bounds one attempt at a row; a row that runs out
    /// of it stays and is tried again after `retry_pause`.
    pub producer: ProducerOptions,
    /// Produce requests in flight at most (one row each).
    pub window: usize,
    /// After a row failed: the pause before the rows are taken up again.
    pub retry_pause: Duration,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        Self {
            producer: ProducerOptions::default(),
            window: OUTBOX_WINDOW_DEFAULT,
            retry_pause: OUTBOX_RETRY_PAUSE_DEFAULT,
        }
    }
}

/// What became of a row, told to the observer on the sender thread.
#[derive(Clone, Debug)]
pub enum OutboxEvent {
    /// The broker has the row's message (stored now, or earlier:
    /// `receipt.duplicate`); the row is deleted soon after. A row whose
    /// delete was lost to a crash comes again after the next `open`, as a
    /// duplicate.
    Delivered { row: RowId, receipt: SendReceipt },
    /// The row's message failed for now (`delivery_timeout` ran out, or the
    /// broker refused it). The row stays; it is sent again, in order, after
    /// `retry_pause`.
    Failed { row: RowId, error: ClientError },
}

/// Called on the sender thread for each event; it must not block for long.
pub type OutboxObserver = Box<dyn FnMut(&OutboxEvent) + Send>;

/// Counts since `open`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Rows the broker acknowledged, duplicates included.
    pub delivered: u64,
    /// Of those, the ones it had already.
    pub duplicates: u64,
    /// `Failed` events.
    pub failures: u64,
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Opens the database in WAL mode with the given `synchronous` level.
fn open_connection(path: &Path, synchronous: &str) -> Result<Connection, OutboxError> {
    let open_error = |source| OutboxError::Open { path: path.to_path_buf(), source };
    let connection = Connection::open(path).map_err(open_error)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    // `journal_mode` answers with the mode it took: a row to read.
    let _mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(open_error)?;
    connection.pragma_update(None, "synchronous", synchronous).map_err(open_error)?;
    connection.execute_batch(SCHEMA).map_err(open_error)?;
    Ok(connection)
}

/// An exclusive `flock` on the database file, held while the returned file
/// is open. SQLite locks with `fcntl`, which is independent of `flock` on
/// Linux, and the lock dies with the process (a `kill -9` frees it).
fn lock_exclusively(path: &Path) -> Result<File, OutboxError> {
    let file = File::open(path).map_err(|source| OutboxError::Lock { path: path.to_path_buf(), source })?;
    // SAFETY: `flock` on a descriptor this function owns and keeps open; no
    // memory is passed.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let source = std::io::Error::last_os_error();
        if source.kind() == std::io::ErrorKind::WouldBlock {
            return Err(OutboxError::InUse { path: path.to_path_buf() });
        }
        return Err(OutboxError::Lock { path: path.to_path_buf(), source });
    }
    Ok(file)
}

/// The producer id and sequence a row's bytes carry, checked against the
/// queue it was filed under.
fn row_stamp(row: RowId, queue: u32, bytes: &[u8]) -> Result<(u64, u64), OutboxError> {
    let bad = |reason: String| OutboxError::BadRow { row, reason };
    let verified = verify_message(Bytes::copy_from_slice(bytes)).map_err(|error| bad(error.to_string()))?;
    if verified.queue != queue || verified.producer_id == 0 {
        return Err(bad(format!(
            "filed under queue {queue}, built for queue {} with producer id {:016x}",
            verified.queue, verified.producer_id
        )));
    }
    Ok((verified.producer_id, verified.sequence))
}

fn queue_of(row: RowId, queue: i64) -> Result<u32, OutboxError> {
    u32::try_from(queue).map_err(|_| OutboxError::BadRow { row, reason: format!("queue {queue}") })
}

/// Rows of `topic` after `cursor`, oldest first.
fn rows_after(
    connection: &Connection,
    topic: &str,
    cursor: RowId,
    limit: usize,
) -> Result<Vec<(RowId, Vec<u8>)>, OutboxError> {
    let mut statement = connection
        .prepare_cached("SELECT id, bytes FROM ringmq_outbox WHERE topic = ?1 AND id > ?2 ORDER BY id LIMIT ?3")?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map((topic, cursor, limit), |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn delete_rows(connection: &mut Connection, rows: &BTreeSet<RowId>) -> Result<(), OutboxError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut statement = transaction.prepare_cached("DELETE FROM ringmq_outbox WHERE id = ?1")?;
        for row in rows {
            statement.execute([row])?;
        }
    }
    transaction.commit()?;
    Ok(())
}

/// The stamp the next new message of a queue gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QueueStamp {
    producer_id: u64,
    next_sequence: u64,
}

/// Stamps new messages: the send side's half of the invariant.
#[derive(Debug)]
struct Stamper {
    /// This open's fresh producer id: msg ids, and queues without rows.
    session_id: u64,
    next_message: u64,
    queues: HashMap<u32, QueueStamp>,
    round_robin: AtomicU32,
}

impl Stamper {
    /// Goes on after the rows an earlier run left: per queue, under the last
    /// row's producer id after its sequence.
    fn load(connection: &Connection, topic: &str, session_id: u64) -> Result<Self, OutboxError> {
        let mut stamper = Self {
            session_id,
            next_message: 0,
            queues: HashMap::new(),
            round_robin: AtomicU32::new(fastrand::u32(..)),
        };
        let mut statement = connection.prepare(
            "SELECT id, queue, bytes FROM ringmq_outbox
             WHERE id IN (SELECT MAX(id) FROM ringmq_outbox WHERE topic = ?1 GROUP BY queue)",
        )?;
        let last_rows = statement.query_map([topic], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        for last_row in last_rows {
            let (row, queue, bytes): (RowId, i64, Vec<u8>) = last_row?;
            let queue = queue_of(row, queue)?;
            let (producer_id, sequence) = row_stamp(row, queue, &bytes)?;
            stamper.queues.insert(queue, QueueStamp { producer_id, next_sequence: sequence + 1 });
        }
        Ok(stamper)
    }

    fn next_stamp(&self, queue: u32) -> QueueStamp {
        self.queues.get(&queue).copied().unwrap_or(QueueStamp { producer_id: self.session_id, next_sequence: 0 })
    }

    fn used(&mut self, queue: u32, stamp: QueueStamp) {
        self.queues.insert(queue, QueueStamp { next_sequence: stamp.next_sequence + 1, ..stamp });
    }
}

/// What `send` works with, under one lock: stamping and inserting in one
/// order is what keeps each queue's rows in sequence order.
struct SendSide {
    connection: Connection,
    stamper: Stamper,
}

#[derive(Default)]
struct Signal {
    rows_added: u64,
    rows_deleted: u64,
}

struct Shared {
    path: PathBuf,
    topic: String,
    client: Arc<Client>,
    send: Mutex<SendSide>,
    signal: Mutex<Signal>,
    changed: Condvar,
    /// Set (under `signal`) when the outbox is dropped; also stops the
    /// producer's resending.
    stop: Arc<AtomicBool>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    failures: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn notify(&self, change: impl FnOnce(&mut Signal)) {
        change(&mut lock(&self.signal));
        self.changed.notify_all();
    }

    fn signal<T>(&self, read: impl FnOnce(&Signal) -> T) -> T {
        read(&lock(&self.signal))
    }

    /// Waits while `waiting` holds, up to `timeout` or until stopped.
    fn wait_while(&self, timeout: Duration, mut waiting: impl FnMut(&Signal) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut signal = lock(&self.signal);
        while waiting(&signal) && !self.stopped() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            signal = self.changed.wait_timeout(signal, left).map(|(signal, _)| signal).unwrap_or_else(|poisoned| {
                let (signal, _) = poisoned.into_inner();
                signal
            });
        }
    }

    fn producer(&self, options: &ProducerOptions) -> Result<Producer, ClientError> {
        let producer = Producer::new(self.client.clone(), &self.topic, options.clone())?;
        Ok(producer.stop_on(self.stop.clone()))
    }
}

/// A message outbox on a SQLite file; see the module documentation.
pub struct Outbox {
    shared: Arc<Shared>,
    inherited: Vec<RowId>,
    sender: Option<JoinHandle<()>>,
    /// Held until the sender has stopped (fields drop after `drop`).
    _lock: File,
}

impl Outbox {
    /// Opens (or creates) the outbox in the SQLite file at `path` for
    /// `topic`, which must exist, and starts sending the rows an earlier
    /// run left.
    pub fn open(
        path: impl AsRef<Path>,
        client: Arc<Client>,
        topic: &str,
        producer: ProducerOptions,
    ) -> Result<Self, OutboxError> {
        Self::open_with(path, client, topic, OutboxOptions { producer, ..OutboxOptions::default() }, None)
    }

    /// `open` with options and an observer of every delivery and failure.
    pub fn open_with(
        path: impl AsRef<Path>,
        client: Arc<Client>,
        topic: &str,
        options: OutboxOptions,
        observer: Option<OutboxObserver>,
    ) -> Result<Self, OutboxError> {
        let path = path.as_ref();
        // FULL: a row `send` reported is on disk, even across a power cut.
        let send_connection = open_connection(path, "FULL")?;
        let file_lock = lock_exclusively(path)?;
        let other_topic: Option<(String, u64)> = send_connection
            .query_row(
                "SELECT topic, COUNT(*) FROM ringmq_outbox WHERE topic <> ?1 GROUP BY topic LIMIT 1",
                [topic],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        if let Some((found, rows)) = other_topic {
            return Err(OutboxError::OtherTopic { path: path.to_path_buf(), topic: topic.to_string(), found, rows });
        }
        let inherited: Vec<RowId> = {
            let mut statement = send_connection.prepare("SELECT id FROM ringmq_outbox WHERE topic = ?1 ORDER BY id")?;
            let rows = statement.query_map([topic], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let stamper = Stamper::load(&send_connection, topic, new_producer_id())?;
        // NORMAL: the sender only reads and deletes; a delete lost to a power
        // cut is a resend the broker answers as a duplicate.
        let sender_connection = open_connection(path, "NORMAL")?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            topic: topic.to_string(),
            client,
            send: Mutex::new(SendSide { connection: send_connection, stamper }),
            signal: Mutex::new(Signal::default()),
            changed: Condvar::new(),
            stop: Arc::new(AtomicBool::new(false)),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let producer = shared.producer(&options.producer)?;
        if !inherited.is_empty() {
            tracing::info!(rows = inherited.len(), path = %path.display(), "resending the rows an earlier run left in the outbox");
        }
        let sender = Sender {
            shared: shared.clone(),
            connection: sender_connection,
            options,
            observer,
            producer,
            cursor: 0,
            in_flight: VecDeque::new(),
            acked: BTreeSet::new(),
            acked_since: None,
            drain: None,
        };
        let sender = std::thread::Builder::new()
            .name("ringmq-outbox".into())
            .spawn(move || sender.run())
            .map_err(OutboxError::Thread)?;
        Ok(Self { shared, inherited, sender: Some(sender), _lock: file_lock })
    }

    /// Stores `message` for the outbox's topic in the queue `choice` picks;
    /// it is on disk when this returns (the row's id), and the sender
    /// delivers it in order after the rows before it. An error means nothing
    /// was stored, except after a failed commit (a disk error), where the
    /// row may still be there and be sent.
    pub fn send(&self, message: &OutgoingMessage<'_>, choice: QueueChoice) -> Result<RowId, OutboxError> {
        self.send_with(message, choice, |_| Ok(()))
    }

    /// `send`, with the application's own writes in the same transaction as
    /// the row (the transactional outbox): both commit, or neither.
    pub fn send_with(
        &self,
        message: &OutgoingMessage<'_>,
        choice: QueueChoice,
        effect: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<RowId, OutboxError> {
        let shared = &self.shared;
        let queue_count = shared.client.topic(&shared.topic)?.queue_shards.len() as u32;
        let mut side = lock(&shared.send);
        let side = &mut *side;
        let queue = choose_queue(choice, message.key, queue_count, &side.stamper.round_robin)?;
        let stamp = side.stamper.next_stamp(queue);
        let msg_id = (side.stamper.session_id, side.stamper.next_message);
        side.stamper.next_message += 1;
        let bytes = build_message(&shared.topic, message, queue, msg_id, stamp.producer_id, stamp.next_sequence);
        let transaction = side.connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        transaction.execute(
            "INSERT INTO ringmq_outbox (topic, queue, bytes, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            (&shared.topic, queue, &bytes, now_ms()),
        )?;
        let row = transaction.last_insert_rowid();
        effect(&transaction).map_err(OutboxError::Effect)?;
        // Used up from here on, even if the commit fails: the row may be on
        // disk anyway, and a sequence handed out twice would be answered as
        // a duplicate and lost. A row that is not there leaves a gap the
        // producer skips (`skip_gap`) when the next row of the queue is its
        // oldest.
        side.stamper.used(queue, stamp);
        transaction.commit()?;
        shared.notify(|signal| signal.rows_added += 1);
        Ok(row)
    }

    /// Rows not yet deleted: not yet acknowledged, or acknowledged a moment
    /// ago.
    pub fn pending(&self) -> Result<usize, OutboxError> {
        let side = lock(&self.shared.send);
        let count: i64 = side.connection.query_row(
            "SELECT COUNT(*) FROM ringmq_outbox WHERE topic = ?1",
            [&self.shared.topic],
            |row| row.get(0),
        )?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// Waits up to `timeout` for every row to be delivered and deleted.
    pub fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.shared.signal(|signal| signal.rows_deleted);
            match self.pending() {
                Ok(0) => return true,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot count the outbox rows"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.shared.wait_while(left.min(IDLE_WAIT), |signal| signal.rows_deleted == seen);
        }
    }

    /// The rows earlier runs left, found at `open`, oldest first.
    pub fn inherited(&self) -> &[RowId] {
        &self.inherited
    }

    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn stats(&self) -> OutboxStats {
        let shared = &self.shared;
        OutboxStats {
            delivered: shared.delivered.load(Ordering::Relaxed),
            duplicates: shared.duplicates.load(Ordering::Relaxed),
            failures: shared.failures.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Outbox {
    /// Stops the sender (a request in flight may take up to the producer's
    /// `request_timeout`); the rows stay for the next `open`.
    fn drop(&mut self) {
        self.shared.notify(|_| self.shared.stop.store(true, Ordering::SeqCst));
        if let Some(sender) = self.sender.take() {
            if sender.join().is_err() {
                tracing::error!("the outbox sender panicked");
            }
        }
    }
}

/// Why the sender stopped launching: it lands what is in flight, then
/// starts over from the first row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Drain {
    /// A row failed: wait `retry_pause` first.
    pause: bool,
}

/// The sender thread.
struct Sender {
    shared: Arc<Shared>,
    connection: Connection,
    options: OutboxOptions,
    observer: Option<OutboxObserver>,
    /// Only ever adopts rows.
    producer: Producer,
    /// The last row taken into `producer`.
    cursor: RowId,
    /// One row per flight, in row order.
    in_flight: VecDeque<(RowId, u32, super::Flight)>,
    /// Acknowledged, not yet deleted; skipped when rows are taken again.
    acked: BTreeSet<RowId>,
    acked_since: Option<Instant>,
    drain: Option<Drain>,
}

impl Sender {
    fn run(mut self) {
        while !self.shared.stopped() {
            let seen = self.shared.signal(|signal| signal.rows_added);
            if self.drain.is_none() {
                self.launch_rows();
            }
            if self.in_flight.is_empty() {
                self.delete_acked();
                if let Some(drain) = self.drain.take() {
                    self.start_over(drain);
                    continue;
                }
                self.shared.wait_while(IDLE_WAIT, |signal| signal.rows_added == seen);
                continue;
            }
            self.land_oldest();
            let waited = self.acked_since.is_some_and(|since| since.elapsed() >= DELETE_INTERVAL);
            if self.acked.len() >= DELETE_BATCH || waited {
                self.delete_acked();
            }
        }
        // Dropping the flights abandons their requests; their rows stay.
        self.delete_acked();
    }

    fn emit(&mut self, event: OutboxEvent) {
        if let Some(observer) = self.observer.as_mut() {
            observer(&event);
        }
    }

    fn begin_drain(&mut self, drain: Drain) {
        let current = self.drain.get_or_insert(drain);
        current.pause |= drain.pause;
    }

    /// Takes the rows after the cursor into the producer and launches them,
    /// up to the window.
    fn launch_rows(&mut self) {
        let room = self.options.window.max(1).saturating_sub(self.in_flight.len());
        if room == 0 {
            return;
        }
        let rows = match rows_after(&self.connection, &self.shared.topic, self.cursor, room) {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "cannot read the outbox rows; trying again after a pause");
                self.begin_drain(Drain { pause: true });
                return;
            }
        };
        for (row, bytes) in rows {
            self.cursor = row;
            if self.acked.contains(&row) {
                continue;
            }
            match self.producer.adopt(bytes) {
                Ok(prepared) => {
                    let queue = prepared.queue;
                    self.in_flight.push_back((row, queue, self.producer.launch(vec![prepared])));
                }
                Err(error) => {
                    // Never skipped: that would reorder its queue. It holds
                    // the outbox until the application removes it.
                    tracing::error!(row, %error, "an outbox row does not hold a message");
                    self.shared.failures.fetch_add(1, Ordering::Relaxed);
                    self.emit(OutboxEvent::Failed { row, error });
                    self.begin_drain(Drain { pause: true });
                    return;
                }
            }
        }
    }

    fn land_oldest(&mut self) {
        let Some((row, queue, flight)) = self.in_flight.pop_front() else { return };
        let result = self.producer.land(flight).and_then(|mut receipts| match (receipts.pop(), receipts.len()) {
            (Some(receipt), 0) => Ok(receipt),
            _ => Err(ClientError::Protocol("not one answer for one message".into())),
        });
        match result {
            Ok(receipt) if receipt.status == fb::SendStatus::SendOk => {
                self.acked.insert(row);
                self.acked_since.get_or_insert_with(Instant::now);
                self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                if receipt.duplicate {
                    self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                self.emit(OutboxEvent::Delivered { row, receipt });
            }
            Ok(receipt) => {
                // Stored, durability not confirmed (FLUSH_DISK_TIMEOUT): the
                // row stays and is resent in order; the broker answers the
                // resend once it is durable.
                tracing::warn!(row, status = receipt.status_name(), "stored but not confirmed; resending");
                self.begin_drain(Drain { pause: false });
            }
            Err(ClientError::Stopped) => {}
            Err(error) => {
                tracing::warn!(row, queue, %error, "an outbox row failed for now; it stays and is sent again");
                self.shared.failures.fetch_add(1, Ordering::Relaxed);
                self.emit(OutboxEvent::Failed { row, error });
                self.begin_drain(Drain { pause: true });
            }
        }
    }

    fn delete_acked(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        match delete_rows(&mut self.connection, &self.acked) {
            Ok(()) => {
                self.acked.clear();
                self.acked_since = None;
                self.shared.notify(|signal| signal.rows_deleted += 1);
            }
            // They stay in `acked` (never sent again in this run) and are
            // deleted by a later attempt.
            Err(error) => tracing::warn!(%error, rows = self.acked.len(), "cannot delete acknowledged outbox rows yet"),
        }
    }

    /// Everything in flight has landed: pause after a failure, then take
    /// the rows again from the first on a fresh producer.
    fn start_over(&mut self, drain: Drain) {
        let pause = drain.pause;
        if pause {
            self.shared.wait_while(self.options.retry_pause, |_| true);
        }
        match self.shared.producer(&self.options.producer) {
            Ok(producer) => self.producer = producer,
            // Every stamp of the current one is settled: it does as well.
            Err(error) => tracing::debug!(%error, "keeping the current producer"),
        }
        self.cursor = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        self, decode_frame, encode_frame, verify, Failure, Kind, SendOutcome, ShardEndpoint, TopicLayout,
    };
    use bytes::BytesMut;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    const TOPIC: &str = "orders";
    const QUEUES: u32 = 3;
    const WAIT_LIMIT: Duration = Duration::from_secs(20);

    /// What the fake broker does with a produce request.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Mode {
        /// Stores (or finds a duplicate) and answers, as a broker does.
        Answer,
        /// Stores, but the answer is lost.
        StoreSilently,
    }

    /// One message the fake broker stored.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Stored {
        queue: u32,
        producer_id: u64,
        sequence: u64,
        body: String,
    }

    struct FakeState {
        mode: Mode,
        /// After its next `OutOfOrderSequence` answer, the fake goes on in this mode.
        mode_after_gap: Option<Mode>,
        /// Per (producer id, queue) the next sequence, as `server::dedup` keeps it.
        next: HashMap<(u64, u32), u64>,
        stored: Vec<Stored>,
    }

    /// A one-shard broker on 127.0.0.1 with the real dedup rule, whose
    /// answers a test can withhold.
    struct FakeBroker {
        address: String,
        state: Arc<Mutex<FakeState>>,
    }

    impl FakeBroker {
        fn start(mode: Mode) -> Self {
            let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
            let port = listener.local_addr().expect("address").port();
            let state = Arc::new(Mutex::new(FakeState {
                mode,
                mode_after_gap: None,
                next: HashMap::new(),
                stored: Vec::new(),
            }));
            let accepting = state.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    let state = accepting.clone();
                    std::thread::spawn(move || serve(stream, port, &state));
                }
            });
            Self { address: format!("127.0.0.1:{port}"), state }
        }

        fn set_mode(&self, mode: Mode) {
            lock(&self.state).mode = mode;
        }

        fn stored(&self) -> Vec<Stored> {
            lock(&self.state).stored.clone()
        }

        fn client(&self) -> Arc<Client> {
            Arc::new(Client::connect(&self.address).expect("connect to the fake broker"))
        }
    }

    fn serve(mut stream: TcpStream, port: u16, state: &Mutex<FakeState>) {
        let mut buffer = BytesMut::new();
        let mut chunk = vec![0; 64 * 1024];
        loop {
            while let Ok(Some(frame)) = decode_frame(&mut buffer, crate::constants::FRAME_BODY_BYTES_MAX) {
                let answer = match Kind::from_u16(frame.kind) {
                    Some(Kind::MetadataRequest) => {
                        let shard = ShardEndpoint { shard: 0, host: "127.0.0.1".into(), port };
                        let topic = TopicLayout { name: TOPIC.into(), queue_shards: vec![0; QUEUES as usize] };
                        Some((Kind::MetadataResponse, protocol::metadata_response(None, &[shard], &[topic], None)))
                    }
                    Some(Kind::ProduceRequest) => produce(&frame.body, state),
                    _ => None,
                };
                if let Some((kind, body)) = answer {
                    if stream.write_all(&encode_frame(kind as u16, frame.request_id, &body)).is_err() {
                        return;
                    }
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
    }

    /// The dedup rule of `server::dedup` for one-message requests.
    fn produce(body: &[u8], state: &Mutex<FakeState>) -> Option<(Kind, Vec<u8>)> {
        let request = verify::<fb::ProduceRequest>(body).expect("a produce request");
        let bytes = request.messages().get(0).bytes().bytes().to_vec();
        let message = verify_message(Bytes::from(bytes)).expect("a message");
        let body = String::from_utf8_lossy(message.message().body().map(|body| body.bytes()).unwrap_or_default());
        let mut state = lock(state);
        let key = (message.producer_id, message.queue);
        let next = state.next.get(&key).copied().unwrap_or(0);
        if message.sequence > next && !request.skip_gap() {
            let failure = Failure::out_of_order(next, "ahead of the next sequence");
            if let Some(mode) = state.mode_after_gap.take() {
                state.mode = mode;
            }
            return Some((Kind::ErrorResponse, protocol::error_response(&failure)));
        }
        let duplicate = message.sequence < next;
        if !duplicate {
            state.next.insert(key, message.sequence + 1);
            let stored = Stored {
                queue: message.queue,
                producer_id: message.producer_id,
                sequence: message.sequence,
                body: body.into_owned(),
            };
            state.stored.push(stored);
        }
        if state.mode == Mode::StoreSilently {
            return None;
        }
        let outcome = SendOutcome {
            status: fb::SendStatus::SendOk,
            msg_id: message.msg_id,
            offset: Some(state.stored.len() as u64),
            store_timestamp_us: 0,
            duplicate,
        };
        Some((Kind::ProduceResponse, protocol::produce_response(None, message.queue, &[outcome])))
    }

    fn options() -> OutboxOptions {
        let producer = ProducerOptions {
            request_timeout: Duration::from_millis(200),
            delivery_timeout: Duration::from_millis(600),
            backoff: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
        };
        OutboxOptions { producer, window: 8, retry_pause: Duration::from_millis(50) }
    }

    fn open(path: &Path, broker: &FakeBroker, events: Option<mpsc::Sender<OutboxEvent>>) -> Outbox {
        let observer = events.map(|events| -> OutboxObserver {
            Box::new(move |event| {
                let _ = events.send(event.clone());
            })
        });
        Outbox::open_with(path, broker.client(), TOPIC, options(), observer).expect("open the outbox")
    }

    fn send(outbox: &Outbox, body: &str, queue: u32) -> RowId {
        let message = OutgoingMessage { body: body.as_bytes(), ..OutgoingMessage::default() };
        outbox.send(&message, QueueChoice::Explicit(queue)).expect("send")
    }

    /// (row, queue, producer id, sequence, body) of every row, in row order.
    fn rows(path: &Path) -> Vec<(RowId, u32, u64, u64, String)> {
        let connection = Connection::open(path).expect("open");
        let mut statement =
            connection.prepare("SELECT id, queue, bytes FROM ringmq_outbox ORDER BY id").expect("prepare");
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, RowId>(0)?, row.get::<_, u32>(1)?, row.get::<_, Vec<u8>>(2)?)))
            .expect("query");
        rows.map(|row| {
            let (id, queue, bytes) = row.expect("row");
            let message = verify_message(Bytes::from(bytes)).expect("a message");
            let body = message.message().body().map(|body| body.bytes().to_vec()).unwrap_or_default();
            (id, queue, message.producer_id, message.sequence, String::from_utf8(body).expect("utf-8"))
        })
        .collect()
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT_LIMIT;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stored_bodies(broker: &FakeBroker, queue: u32) -> Vec<String> {
        broker.stored().into_iter().filter(|stored| stored.queue == queue).map(|stored| stored.body).collect()
    }

    #[test]
    fn a_row_is_deleted_only_after_the_broker_acknowledged_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        let broker = FakeBroker::start(Mode::StoreSilently);
        let (events, received) = mpsc::channel();
        let outbox = open(&path, &broker, Some(events));
        let sent: Vec<RowId> = (0..3).map(|index| send(&outbox, &format!("m{index}"), index % 2)).collect();
        wait_until("the broker stored all three", || broker.stored().len() == 3);
        // Stored, never acknowledged: resent until they fail, kept.
        std::thread::sleep(options().producer.delivery_timeout * 2);
        assert_eq!(outbox.pending().expect("pending"), 3, "a row went without an acknowledgement");
        assert!(received.try_iter().all(|event| matches!(event, OutboxEvent::Failed { .. })));
        assert!(outbox.stats().failures > 0);

        broker.set_mode(Mode::Answer);
        assert!(outbox.wait_empty(WAIT_LIMIT), "acknowledged rows were not deleted");
        let delivered: Vec<(RowId, bool)> = received
            .try_iter()
            .filter_map(|event| match event {
                OutboxEvent::Delivered { row, receipt } => Some((row, receipt.duplicate)),
                OutboxEvent::Failed { .. } => None,
            })
            .collect();
        assert_eq!(
            delivered,
            sent.iter().map(|row| (*row, true)).collect::<Vec<_>>(),
            "answered as duplicates, in order"
        );
        assert_eq!(broker.stored().len(), 3, "resends stored a second copy");
        assert_eq!(outbox.stats().delivered, 3);
        assert_eq!(outbox.stats().duplicates, 3);
    }

    #[test]
    fn rows_survive_a_reopen_and_go_first_in_row_order_under_their_own_stamps() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        let broker = FakeBroker::start(Mode::StoreSilently);
        let first_run = open(&path, &broker, None);
        let queues = [0, 1, 0, 0, 1, 0];
        let sent: Vec<RowId> =
            queues.iter().enumerate().map(|(index, queue)| send(&first_run, &format!("old{index}"), *queue)).collect();
        wait_until("the broker stored the first run's messages", || broker.stored().len() == queues.len());
        drop(first_run);

        let left = rows(&path);
        assert_eq!(
            left.iter().map(|row| row.0).collect::<Vec<_>>(),
            sent,
            "every row stays without an acknowledgement"
        );
        let first_id = left[0].2;
        assert!(left.iter().all(|row| row.2 == first_id), "one producer id per run");
        let sequences = |queue: u32| left.iter().filter(|row| row.1 == queue).map(|row| row.3).collect::<Vec<_>>();
        assert_eq!((sequences(0), sequences(1)), (vec![0, 1, 2, 3], vec![0, 1]), "consecutive per queue, in row order");

        broker.set_mode(Mode::Answer);
        let second_run = open(&path, &broker, None);
        assert_eq!(second_run.inherited(), sent.as_slice());
        send(&second_run, "new0", 0);
        send(&second_run, "new2", 2);
        assert!(second_run.wait_empty(WAIT_LIMIT));
        assert_eq!(stored_bodies(&broker, 0), ["old0", "old2", "old3", "old5", "new0"], "queue 0 once each, in order");
        assert_eq!(stored_bodies(&broker, 1), ["old1", "old4"]);
        let stored = broker.stored();
        let new0 = stored.iter().find(|stored| stored.body == "new0").expect("new0");
        assert_eq!((new0.producer_id, new0.sequence), (first_id, 4), "a queue with rows goes on after them");
        let new2 = stored.iter().find(|stored| stored.body == "new2").expect("new2");
        assert_ne!(new2.producer_id, first_id, "a queue without rows starts under the fresh id");
        assert_eq!(new2.sequence, 0);
    }

    #[test]
    fn a_permanent_gap_is_skipped_with_the_rows_bytes_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        let broker = FakeBroker::start(Mode::Answer);
        let outbox = open(&path, &broker, None);
        send(&outbox, "a", 0);
        send(&outbox, "b", 0);
        assert!(outbox.wait_empty(WAIT_LIMIT));
        let original = broker.stored()[0].producer_id;
        {
            // The broker loses both acknowledged messages (an async-flush
            // crash), and the first answer after the gap is lost too.
            let mut state = lock(&broker.state);
            state.next.insert((original, 0), 0);
            state.stored.clear();
            state.mode_after_gap = Some(Mode::StoreSilently);
        }
        send(&outbox, "c", 0);
        wait_until("c is stored past the gap", || !broker.stored().is_empty());
        drop(outbox);
        let left = rows(&path);
        assert_eq!(left.len(), 1, "c was never acknowledged");
        assert_eq!((left[0].2, left[0].3), (original, 2), "the row keeps its stamp");

        // After a crash the row goes out as it is: a duplicate, not a copy.
        broker.set_mode(Mode::Answer);
        let reopened = open(&path, &broker, None);
        send(&reopened, "d", 0);
        assert!(reopened.wait_empty(WAIT_LIMIT));
        let stored = broker.stored();
        assert_eq!(stored.iter().map(|stored| stored.body.as_str()).collect::<Vec<_>>(), ["c", "d"]);
        assert_eq!((stored[0].producer_id, stored[0].sequence), (original, 2));
        assert_eq!((stored[1].producer_id, stored[1].sequence), (original, 3), "new messages follow it");
    }

    #[test]
    fn a_failed_application_write_stores_nothing_and_uses_no_sequence() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        let broker = FakeBroker::start(Mode::StoreSilently);
        let outbox = open(&path, &broker, None);
        let message = OutgoingMessage { body: b"refused", ..OutgoingMessage::default() };
        let refused = outbox.send_with(&message, QueueChoice::Explicit(0), |transaction| {
            transaction.execute("INSERT INTO no_such_table VALUES (1)", []).map(|_| ())
        });
        assert!(matches!(refused, Err(OutboxError::Effect(_))), "{refused:?}");
        assert_eq!(outbox.pending().expect("pending"), 0);
        let message = OutgoingMessage { body: b"kept", ..OutgoingMessage::default() };
        outbox
            .send_with(&message, QueueChoice::Explicit(0), |transaction| {
                transaction.execute_batch("CREATE TABLE orders (id INTEGER); INSERT INTO orders VALUES (7);")
            })
            .expect("send with the application's write");
        drop(outbox);
        let left = rows(&path);
        assert_eq!(left.iter().map(|row| (row.3, row.4.as_str())).collect::<Vec<_>>(), [(0, "kept")]);
        let connection = Connection::open(&path).expect("open");
        let orders: i64 = connection.query_row("SELECT COUNT(*) FROM orders", [], |row| row.get(0)).expect("count");
        assert_eq!(orders, 1, "the application's row committed with the message");
    }

    #[test]
    fn an_outbox_is_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Outbox>();
    }

    #[test]
    fn one_outbox_per_file_and_one_topic_per_outbox() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        let broker = FakeBroker::start(Mode::StoreSilently);
        let outbox = open(&path, &broker, None);
        let second = Outbox::open_with(&path, broker.client(), TOPIC, options(), None);
        assert!(matches!(second, Err(OutboxError::InUse { .. })), "a second outbox on one file");
        send(&outbox, "x", 1);
        drop(outbox);
        let connection = Connection::open(&path).expect("open");
        connection.execute("UPDATE ringmq_outbox SET topic = 'elsewhere'", []).expect("move the row");
        let other = Outbox::open_with(&path, broker.client(), TOPIC, options(), None);
        assert!(matches!(other, Err(OutboxError::OtherTopic { rows: 1, .. })), "rows of another topic");
    }
}
