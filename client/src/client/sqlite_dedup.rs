//! The SQLite [`DedupStore`]: the message ids live in the application's own
//! SQLite database, in table `ringmq_consumed`, so the handler's rows and the
//! id's mark commit in one SQLite transaction.

use super::idempotent::{Applied, DedupError, DedupStore, MsgId};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a transaction waits for another connection's write lock (a
/// second consumer process on the same database) before failing as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS ringmq_consumed (
        msg_id BLOB PRIMARY KEY,
        consumed_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS ringmq_consumed_by_time ON ringmq_consumed (consumed_at_ms);
";

#[derive(Debug, thiserror::Error)]
pub enum SqliteDedupError {
    #[error("cannot open the dedup database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("dedup database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Message ids in the application's SQLite database. One store records the
/// ids of one consuming application (one consumer group): two groups that
/// must each apply the same message need two databases.
pub struct SqliteDedupStore {
    connection: Connection,
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// The id as 16 big-endian bytes: the hex form's order, half the size.
fn id_bytes(msg_id: MsgId) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&msg_id.0.to_be_bytes());
    bytes[8..].copy_from_slice(&msg_id.1.to_be_bytes());
    bytes
}

impl SqliteDedupStore {
    /// Opens (or creates) the database at `path` in WAL mode with
    /// `synchronous=FULL`: a commit the store reported is on disk before the
    /// offset commit that follows it, even across a power cut.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SqliteDedupError> {
        let path = path.as_ref();
        let open_error = |source| SqliteDedupError::Open { path: path.to_path_buf(), source };
        let connection = Connection::open(path).map_err(open_error)?;
        // `journal_mode` answers with the mode it took: a row to read.
        let _mode: String =
            connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(open_error)?;
        connection.pragma_update(None, "synchronous", "FULL").map_err(open_error)?;
        Self::from_connection(connection)
    }

    /// A store in memory, gone with it: for tests.
    pub fn open_in_memory() -> Result<Self, SqliteDedupError> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    /// Uses a connection the application opened, leaving its journal and
    /// sync settings as they are: keep `synchronous=FULL` (or the rollback
    /// journal's default) for the zero-loss recipe.
    pub fn from_connection(connection: Connection) -> Result<Self, SqliteDedupError> {
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.execute_batch(SCHEMA)?;
        Ok(Self { connection })
    }

    /// The application's database, to read its own tables (or write
    /// outside a message's transaction).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    pub fn into_connection(self) -> Connection {
        self.connection
    }

    /// Whether `msg_id` is marked consumed.
    pub fn is_seen(&self, msg_id: MsgId) -> Result<bool, SqliteDedupError> {
        let found = self
            .connection
            .query_row("SELECT 1 FROM ringmq_consumed WHERE msg_id = ?1", [&id_bytes(msg_id)[..]], |_| Ok(()))
            .optional()?;
        Ok(found.is_some())
    }
}

impl DedupStore for SqliteDedupStore {
    type Tx<'tx> = Transaction<'tx>;
    type Error = SqliteDedupError;

    fn apply<E, F>(&mut self, msg_id: MsgId, effect: F) -> Result<Applied, DedupError<E, Self::Error>>
    where
        F: FnOnce(&Transaction<'_>) -> Result<(), E>,
    {
        let store = |error: rusqlite::Error| DedupError::Store(SqliteDedupError::from(error));
        // IMMEDIATE takes the write lock before the check, so two consumers
        // on one database cannot both find the id unmarked.
        let transaction = self.connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(store)?;
        let marked = transaction
            .execute(
                "INSERT INTO ringmq_consumed (msg_id, consumed_at_ms) VALUES (?1, ?2) ON CONFLICT (msg_id) DO NOTHING",
                (&id_bytes(msg_id)[..], now_ms()),
            )
            .map_err(store)?;
        if marked == 0 {
            // Dropping the transaction rolls it back: nothing was written.
            return Ok(Applied::AlreadySeen);
        }
        effect(&transaction).map_err(DedupError::Handler)?;
        transaction.commit().map_err(store)?;
        Ok(Applied::Done)
    }

    fn forget_before(&mut self, consumed_before_ms: u64, max_ids: usize) -> Result<usize, Self::Error> {
        let before = i64::try_from(consumed_before_ms).unwrap_or(i64::MAX);
        let limit = i64::try_from(max_ids).unwrap_or(i64::MAX);
        // A sub-select: the bundled SQLite has no `DELETE ... LIMIT`.
        let forgotten = self.connection.execute(
            "DELETE FROM ringmq_consumed WHERE msg_id IN (
                 SELECT msg_id FROM ringmq_consumed WHERE consumed_at_ms < ?1 ORDER BY consumed_at_ms LIMIT ?2
             )",
            (before, limit),
        )?;
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EFFECTS: &str = "CREATE TABLE effects (msg_id TEXT NOT NULL, body TEXT NOT NULL)";

    fn store_with_effects() -> SqliteDedupStore {
        let store = SqliteDedupStore::open_in_memory().expect("store");
        store.connection().execute(EFFECTS, []).expect("effects table");
        store
    }

    fn write_effect(tx: &Transaction<'_>, body: &str) -> Result<(), rusqlite::Error> {
        tx.execute("INSERT INTO effects (msg_id, body) VALUES ('m', ?1)", [body]).map(|_| ())
    }

    fn effect_count(store: &SqliteDedupStore) -> i64 {
        store.connection().query_row("SELECT COUNT(*) FROM effects", [], |row| row.get(0)).expect("count")
    }

    #[test]
    fn a_seen_id_is_skipped_and_its_effect_does_not_run_again() {
        let mut store = store_with_effects();
        let first = store.apply((1, 2), |tx| write_effect(tx, "once"));
        assert_eq!(first.expect("first apply"), Applied::Done);
        let mut ran_again = false;
        let second = store.apply((1, 2), |tx| {
            ran_again = true;
            write_effect(tx, "twice")
        });
        assert_eq!(second.expect("second apply"), Applied::AlreadySeen);
        assert!(!ran_again, "the effect of a seen id ran");
        assert_eq!(effect_count(&store), 1);
        assert!(store.is_seen((1, 2)).expect("is_seen"));
    }

    #[test]
    fn a_failing_handler_records_nothing_and_its_write_is_rolled_back() {
        let mut store = store_with_effects();
        let refused = store.apply((7, 7), |tx| {
            write_effect(tx, "half-done")?;
            Err::<(), _>(rusqlite::Error::InvalidQuery)
        });
        assert!(matches!(refused, Err(DedupError::Handler(rusqlite::Error::InvalidQuery))), "{refused:?}");
        assert_eq!(effect_count(&store), 0, "the refused handler's row stayed");
        assert!(!store.is_seen((7, 7)).expect("is_seen"), "a refused message was marked seen");
        // It comes again and applies.
        let again = store.apply((7, 7), |tx| write_effect(tx, "done"));
        assert_eq!(again.expect("apply again"), Applied::Done);
        assert_eq!(effect_count(&store), 1);
    }

    #[test]
    fn ids_are_per_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut billing = SqliteDedupStore::open(dir.path().join("billing.db")).expect("billing");
        let mut shipping = SqliteDedupStore::open(dir.path().join("shipping.db")).expect("shipping");
        let done = |_: &Transaction<'_>| Ok::<(), rusqlite::Error>(());
        assert_eq!(billing.apply((3, 4), done).expect("billing apply"), Applied::Done);
        assert_eq!(shipping.apply((3, 4), done).expect("shipping apply"), Applied::Done);
        assert_eq!(billing.apply((3, 4), done).expect("billing again"), Applied::AlreadySeen);
        assert!(!shipping.is_seen((3, 5)).expect("is_seen"));
    }

    #[test]
    fn a_seen_id_survives_reopening_the_database() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        let mut store = SqliteDedupStore::open(&path).expect("open");
        store.apply((9, 1), |_| Ok::<(), rusqlite::Error>(())).expect("apply");
        drop(store);
        let mut reopened = SqliteDedupStore::open(&path).expect("reopen");
        let again = reopened.apply((9, 1), |_| Ok::<(), rusqlite::Error>(()));
        assert_eq!(again.expect("apply after reopen"), Applied::AlreadySeen);
    }

    #[test]
    fn forget_before_removes_only_old_ids_and_at_most_the_limit() {
        let mut store = SqliteDedupStore::open_in_memory().expect("store");
        for low in 0..5 {
            store.apply((0, low), |_| Ok::<(), rusqlite::Error>(())).expect("apply");
        }
        // Age three of them; the other two stay recent.
        store
            .connection()
            .execute("UPDATE ringmq_consumed SET consumed_at_ms = 1000 WHERE msg_id <= ?1", [&id_bytes((0, 2))[..]])
            .expect("age ids");
        assert_eq!(store.forget_before(2000, 2).expect("forget"), 2, "the limit bounds one call");
        assert_eq!(store.forget_before(2000, 2).expect("forget"), 1);
        assert_eq!(store.forget_before(2000, 2).expect("forget"), 0);
        let seen: Vec<bool> = (0..5).map(|low| store.is_seen((0, low)).expect("is_seen")).collect();
        assert_eq!(seen, [false, false, false, true, true]);
        // A forgotten id applies again.
        let again = store.apply((0, 0), |_| Ok::<(), rusqlite::Error>(()));
        assert_eq!(again.expect("apply"), Applied::Done);
    }
}
