//! The idempotent consumer: the consumer side of the zero-loss recipe.
//!
//! Delivery is at-least-once: a consumer that dies after its handler's side
//! effect but before its offset commit gets the same messages again. The
//! handler's effect and a "seen" mark for the message id are therefore
//! written in one local transaction of the application's own store; a
//! message whose id is already marked is skipped, and its offset committed
//! as if it had been handled. The effect then happens once, whatever the
//! moment of a crash.
//!
//! [`DedupStore`] is the store-independent part; the `sqlite` feature
//! (on by default) provides [`SqliteDedupStore`](super::SqliteDedupStore).

use super::{ClientError, Consumer, ReceivedMessage};

/// A message id as the broker assigns it (`ReceivedMessage::msg_id`).
pub type MsgId = (u64, u64);

/// What [`DedupStore::apply`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The effect ran and committed together with the id's mark.
    Done,
    /// The id was marked already: the effect did not run.
    AlreadySeen,
}

/// Why a message was not applied. In both cases nothing of it was committed:
/// not the effect, not the id's mark, so it may be applied again later.
#[derive(Debug, thiserror::Error)]
pub enum DedupError<E, S> {
    /// The handler refused the message; its writes were rolled back.
    #[error("the handler refused the message")]
    Handler(E),
    /// The store failed: checking or marking the id, or committing.
    #[error("dedup store: {0}")]
    Store(#[source] S),
}

/// An application store that can run a message's effect and mark its id
/// seen in one atomic local transaction.
pub trait DedupStore {
    /// The handle the effect writes through, inside the transaction that
    /// marks the id: for SQLite, a `rusqlite::Transaction`.
    type Tx<'tx>;
    type Error: std::error::Error + Send + Sync + 'static;

    /// In one transaction: if `msg_id` is marked, does nothing and returns
    /// `AlreadySeen`; otherwise marks it, runs `effect` and commits both. If
    /// `effect` fails, rolls everything back and returns its error.
    fn apply<E, F>(&mut self, msg_id: MsgId, effect: F) -> Result<Applied, DedupError<E, Self::Error>>
    where
        F: FnOnce(&Self::Tx<'_>) -> Result<(), E>;

    /// Removes the marks of ids consumed before `consumed_before_ms` (Unix
    /// milliseconds), at most `max_ids` of them, so one call holds the
    /// store's write lock briefly; returns how many it removed (call again
    /// while it returns `max_ids`). An id forgotten is applied again if its
    /// message comes again: forget only ids older than any uncommitted
    /// offset can be (the longest a consumer may run behind, plus margin).
    fn forget_before(&mut self, consumed_before_ms: u64, max_ids: usize) -> Result<usize, Self::Error>;
}

/// What one [`IdempotentConsumer::handle_next`] call (or all of them, in
/// [`IdempotentConsumer::totals`]) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Effects that ran and committed.
    pub applied: usize,
    /// Messages whose id was already marked: delivered again after a crash
    /// or a rebalance that came before their offset commit.
    pub skipped: usize,
    /// Messages the handler or the store refused: they come again.
    pub refused: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.applied += other.applied;
        self.skipped += other.skipped;
        self.refused += other.refused;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdempotentError<S> {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The store failed on a message; that message comes again.
    #[error("dedup store: {0}")]
    Store(#[source] S),
}

/// A [`Consumer`] whose handler's effects commit in a [`DedupStore`]
/// transaction together with the message id, so each message's effect
/// happens once even though messages may be delivered more than once.
pub struct IdempotentConsumer<S: DedupStore> {
    consumer: Consumer,
    store: S,
    totals: Tally,
}

impl<S: DedupStore> IdempotentConsumer<S> {
    pub fn new(consumer: Consumer, store: S) -> Self {
        Self { consumer, store, totals: Tally::default() }
    }

    /// Polls once and applies each message through the store, queue by
    /// queue in offset order, then commits each queue's offset up to the
    /// last message applied or skipped (as `Consumer::handle_next`). A
    /// message the handler refuses is rolled back and comes again, and so
    /// does the rest of its queue's batch. A store failure does the same and
    /// is returned once the batch's offsets are committed.
    pub fn handle_next<E>(
        &mut self,
        mut handler: impl FnMut(&S::Tx<'_>, &ReceivedMessage) -> Result<(), E>,
    ) -> Result<Tally, IdempotentError<S::Error>> {
        let mut tally = Tally::default();
        let mut store_failure = None;
        let store = &mut self.store;
        let result = self.consumer.handle_next(|message| {
            match store.apply(message.msg_id, |tx| handler(tx, message)) {
                Ok(Applied::Done) => tally.applied += 1,
                Ok(Applied::AlreadySeen) => {
                    tracing::debug!(
                        msg_id = %message.msg_id_hex(),
                        queue = message.queue,
                        offset = message.offset,
                        "already applied; skipping"
                    );
                    tally.skipped += 1;
                }
                Err(DedupError::Handler(_)) => {
                    tally.refused += 1;
                    return Err(());
                }
                Err(DedupError::Store(error)) => {
                    tally.refused += 1;
                    store_failure.get_or_insert(error);
                    return Err(());
                }
            }
            Ok(())
        });
        self.totals.add(tally);
        match (store_failure, result) {
            (Some(error), result) => {
                if let Err(client_error) = result {
                    tracing::warn!(error = %client_error, "offset commit failed after a store failure");
                }
                Err(IdempotentError::Store(error))
            }
            (None, Err(error)) => Err(IdempotentError::Client(error)),
            (None, Ok(_)) => Ok(tally),
        }
    }

    /// Everything the `handle_next` calls so far did.
    pub fn totals(&self) -> Tally {
        self.totals
    }

    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    pub fn consumer_mut(&mut self) -> &mut Consumer {
        &mut self.consumer
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn into_parts(self) -> (Consumer, S) {
        (self.consumer, self.store)
    }
}
