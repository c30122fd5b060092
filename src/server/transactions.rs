//! Transactional half messages (RocketMQ's two-phase send), all of it here.
//!
//! A produce whose message says `transaction: Half` is stored once, in the
//! shard's own log, indexed in the internal queue `HALF_QUEUE_ID` (flag
//! `HALF`) and not in its target queue: no consumer sees it. The shard's
//! `TransactionTable` remembers it by transaction id. `END_TRANSACTION`
//! then settles it:
//!
//! - **commit** appends a small op record (flag `COMMIT`, the transaction id
//!   as body) indexed in the *target* queue and pointing at the half record
//!   (`AppendRequest::reference`): a read of that offset returns the half
//!   record itself, so a consumer gets it with no copy of the body. Where
//!   the half lies in an earlier segment than the commit lands in, the
//!   commit stores a copy of the half instead (`FarCopy`, flags `HALF |
//!   COMMIT`): retention deletes the oldest segment first and must never
//!   leave a committed message pointing at nothing;
//! - **rollback** appends an op record (flag `ROLLBACK`) indexed in the
//!   internal queue `OP_QUEUE_ID`, also pointing at the half record;
//! - **unknown** records nothing: the half stays pending.
//!
//! Halves left pending are checked back (`checker`): each check a live
//! producer acknowledged appends a small op record (flag `CHECKED`) in
//! `CHECK_QUEUE_ID`, pointing at the half; after `transaction_check_max`
//! of them the broker rolls the half back itself (flags `ROLLBACK |
//! DISCARDED`, in `DISCARD_QUEUE_ID`) and lists it as discarded.
//!
//! Everything is in the log, so recovery rebuilds the table from it
//! (`recover`): every half of `HALF_QUEUE_ID` starts pending, a half read
//! through `OP_QUEUE_ID` was rolled back, through `DISCARD_QUEUE_ID`
//! discarded, through one of the shard's queues committed at that offset;
//! each read through `CHECK_QUEUE_ID` counts one delivered check. A
//! snapshot (`transactions_snapshot`) shortens that replay. The retention
//! floor stays at or below the oldest pending half
//! (`TransactionTable::oldest_pending`) and the snapshot's replay start,
//! so a pending half, and the op records a restart must read, are never
//! deleted.
//!
//! Halves are deduplicated by transaction id, not by producer sequence: a
//! resent half answers the first result, marked duplicate.

use super::dedup::StoredSend;
pub use super::offsets::{CHECK_QUEUE_ID, DISCARD_QUEUE_ID, HALF_QUEUE_ID, OP_QUEUE_ID};
use super::replay::replay_messages;
use super::shard::Shard;
use super::topics::Topics;
use crate::constants::{CLIENT_ID_BYTES_MAX, NAME_BYTES_MAX, SETTLED_TRANSACTIONS_MAX};

/// Where a transaction stands in a list: settled (false first) and its half
/// record's log position.
pub type ListKey = (bool, u64);
use crate::protocol::page::fill_page;
use crate::protocol::{fb, Failure, TransactionSummary};
use crate::storage::backend::Storage;
use crate::storage::record::flags;
use crate::storage::{AppendRequest, CommitLog, FarCopy, LogError, StoredRecord};
use crate::wire::VerifiedMessage;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// A concurrent `END_TRANSACTION` of the same transaction looks again this
/// soon whether the one in flight finished.
const ENDING_POLL: Duration = Duration::from_millis(1);
/// A half message's own check-immunity time (RocketMQ's property name), in
/// seconds: it is not checked back before that, whatever
/// `transaction_timeout_ms` says.
pub const CHECK_IMMUNITY_PROPERTY: &str = "CHECK_IMMUNITY_TIME_IN_SECONDS";

/// Where a transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionState {
    Pending,
    /// Visible in its queue at this offset.
    Committed {
        offset: u64,
    },
    RolledBack,
    /// Rolled back by the broker after `transaction_check_max` delivered
    /// check-backs answered nothing final.
    Discarded,
}

impl TransactionState {
    pub fn wire(self) -> fb::TransactionState {
        match self {
            TransactionState::Pending => fb::TransactionState::Pending,
            TransactionState::Committed { .. } => fb::TransactionState::Committed,
            TransactionState::RolledBack => fb::TransactionState::RolledBack,
            TransactionState::Discarded => fb::TransactionState::Discarded,
        }
    }

    pub fn offset(self) -> Option<u64> {
        match self {
            TransactionState::Committed { offset } => Some(offset),
            _ => None,
        }
    }
}

/// What a producer (or an operator) decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Commit,
    Rollback,
    Unknown,
}

impl Outcome {
    pub fn from_wire(outcome: fb::TransactionOutcome) -> Option<Self> {
        match outcome {
            fb::TransactionOutcome::Commit => Some(Outcome::Commit),
            fb::TransactionOutcome::Rollback => Some(Outcome::Rollback),
            fb::TransactionOutcome::Unknown => Some(Outcome::Unknown),
            _ => None,
        }
    }
}

/// A half message the shard stored, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HalfMessage {
    pub transaction_id: String,
    /// Log position and length of the half record.
    pub position: u64,
    pub size_bytes: u32,
    /// End of the half record in the log: a duplicate waits for it.
    pub end: u64,
    /// The commit-log queue id of its target queue, and the tag hash its
    /// index entry there gets.
    pub target_queue_id: u32,
    pub tag_hash: u32,
    pub topic: String,
    pub queue: u32,
    pub producer_group: String,
    pub msg_id: (u64, u64),
    pub store_timestamp_us: u64,
    /// Its offset in `HALF_QUEUE_ID`: a check-back reads it from there.
    pub half_offset: u64,
    /// The message's own check-immunity time, if it set one.
    pub check_immunity: Option<Duration>,
    pub checks_delivered: u32,
    /// The check records counted in `checks_delivered`: their offset in
    /// `CHECK_QUEUE_ID` (a replay counts each once) and their end in the
    /// log (0 when found by recovery: durable), so a snapshot leaves out
    /// those not durable at its position.
    pub check_records: Vec<(u64, u64)>,
    pub state: TransactionState,
    /// End of the op record that settled it (0 while pending, or when
    /// found by recovery: durable).
    pub settled_end: u64,
    /// When the shard learnt its outcome (wall clock, us); 0 while pending.
    pub settled_at_us: u64,
    /// An `END_TRANSACTION` appending its op record right now.
    pub ending: bool,
}

/// Where a half record lies in the log.
pub struct HalfRecord {
    pub position: u64,
    pub size_bytes: u32,
    /// Log position after the record: a duplicate waits for it.
    pub end: u64,
    pub store_timestamp_us: u64,
    /// Its offset in `HALF_QUEUE_ID`.
    pub half_offset: u64,
}

impl HalfMessage {
    /// A half just stored (or found by recovery), pending: what the table
    /// knows of it comes from the message and where its record lies.
    pub fn pending(message: &VerifiedMessage, target_queue_id: u32, record: HalfRecord) -> Self {
        let fields = message.message();
        HalfMessage {
            transaction_id: fields.transaction_id().unwrap_or_default().to_string(),
            position: record.position,
            size_bytes: record.size_bytes,
            end: record.end,
            target_queue_id,
            tag_hash: message.tag_hash,
            topic: fields.topic().to_string(),
            queue: message.queue,
            producer_group: fields.producer_group().unwrap_or_default().to_string(),
            msg_id: message.msg_id,
            store_timestamp_us: record.store_timestamp_us,
            half_offset: record.half_offset,
            check_immunity: check_immunity(message),
            checks_delivered: 0,
            check_records: Vec::new(),
            state: TransactionState::Pending,
            settled_end: 0,
            settled_at_us: 0,
            ending: false,
        }
    }

    pub fn summary(&self) -> TransactionSummary {
        TransactionSummary {
            transaction_id: self.transaction_id.clone(),
            msg_id: self.msg_id,
            topic: self.topic.clone(),
            queue: self.queue,
            producer_group: self.producer_group.clone(),
            stored_at_ms: self.store_timestamp_us / 1000,
            checks_delivered: self.checks_delivered,
            state: self.state.wire(),
        }
    }

    /// The first send's result, for a resent half.
    pub fn first_send(&self) -> StoredSend {
        StoredSend { sequence: 0, offset: 0, store_timestamp_us: self.store_timestamp_us, end: self.end }
    }
}

/// A pending half due for a check-back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckDue {
    pub transaction_id: String,
    pub half_offset: u64,
    pub position: u64,
    pub size_bytes: u32,
    pub tag_hash: u32,
    pub topic: String,
    pub queue: u32,
    pub producer_group: String,
    pub msg_id: (u64, u64),
    pub checks_delivered: u32,
}

/// The next step of an `END_TRANSACTION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndStep {
    /// Nothing to append: answer with this state.
    Answer(TransactionState),
    /// Append the op record of `outcome` for this half (marked ending).
    Append { position: u64, size_bytes: u32, target_queue_id: u32, tag_hash: u32 },
    /// Another `END_TRANSACTION` of this transaction is appending: wait.
    Busy,
}

/// The transactions of one shard, by transaction id.
#[derive(Default)]
pub struct TransactionTable {
    transactions: HashMap<String, HalfMessage>,
    /// Positions of the pending halves: the lowest bounds retention.
    pending_positions: BTreeSet<u64>,
}

impl TransactionTable {
    pub fn get(&self, transaction_id: &str) -> Option<&HalfMessage> {
        self.transactions.get(transaction_id)
    }

    pub fn len(&self) -> usize {
        self.transactions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.transactions.is_empty()
    }

    pub fn pending_count(&self) -> usize {
        self.pending_positions.len()
    }

    /// Position of the oldest pending half: retention keeps it.
    pub fn oldest_pending(&self) -> Option<u64> {
        self.pending_positions.first().copied()
    }

    /// A newly stored half (or one found by recovery), pending.
    pub fn stored(&mut self, half: HalfMessage) {
        debug_assert_eq!(half.state, TransactionState::Pending, "a half is stored pending");
        if self.transactions.get(&half.transaction_id).is_some_and(|known| known.position == half.position) {
            // A replay after a snapshot may read a half the snapshot holds.
            return;
        }
        self.pending_positions.insert(half.position);
        if let Some(previous) = self.transactions.insert(half.transaction_id.clone(), half) {
            // Recovery may meet a half twice only if a producer stored two
            // halves under one id before dedup knew the first: keep the newest.
            self.pending_positions.remove(&previous.position);
            tracing::warn!(transaction_id = previous.transaction_id, "two halves under one transaction id");
        }
    }

    /// A transaction as a snapshot held it, in whatever state.
    pub fn restore(&mut self, half: HalfMessage) {
        if half.state == TransactionState::Pending {
            self.pending_positions.insert(half.position);
        }
        if let Some(previous) = self.transactions.insert(half.transaction_id.clone(), half) {
            self.pending_positions.remove(&previous.position);
        }
    }

    /// Begins an `END_TRANSACTION`: answers a settled or undecided one,
    /// refuses a conflicting outcome, or marks the transaction ending and
    /// says what to append.
    pub fn begin_end(&mut self, transaction_id: &str, outcome: Outcome) -> Result<EndStep, Failure> {
        let Some(half) = self.transactions.get_mut(transaction_id) else {
            return Err(Failure::new(
                fb::ErrorCode::UnknownTransaction,
                format!("transaction {transaction_id:?} is not known on this shard"),
            ));
        };
        if half.ending {
            return Ok(EndStep::Busy);
        }
        match (half.state, outcome) {
            (state, Outcome::Unknown) => Ok(EndStep::Answer(state)),
            (state @ TransactionState::Committed { .. }, Outcome::Commit)
            | (state @ (TransactionState::RolledBack | TransactionState::Discarded), Outcome::Rollback) => {
                Ok(EndStep::Answer(state))
            }
            (TransactionState::Committed { offset }, Outcome::Rollback) => Err(Failure::new(
                fb::ErrorCode::TransactionConflict,
                format!("transaction {transaction_id:?} was committed (visible at offset {offset}); it cannot be rolled back"),
            )),
            (TransactionState::RolledBack, Outcome::Commit) => Err(Failure::new(
                fb::ErrorCode::TransactionConflict,
                format!("transaction {transaction_id:?} was rolled back; it cannot be committed"),
            )),
            (TransactionState::Discarded, Outcome::Commit) => Err(Failure::new(
                fb::ErrorCode::TransactionConflict,
                format!("transaction {transaction_id:?} was discarded after its check-backs ran out; it cannot be committed"),
            )),
            (TransactionState::Pending, Outcome::Commit | Outcome::Rollback) => {
                half.ending = true;
                Ok(EndStep::Append {
                    position: half.position,
                    size_bytes: half.size_bytes,
                    target_queue_id: half.target_queue_id,
                    tag_hash: half.tag_hash,
                })
            }
        }
    }

    /// Ends what `begin_end` began: `settled` is the op record appended
    /// (its state and end), `None` when the append failed (still pending).
    pub fn finish_end(&mut self, transaction_id: &str, settled: Option<OpRecord>) {
        let Some(half) = self.transactions.get_mut(transaction_id) else { return };
        debug_assert!(half.ending, "transaction {transaction_id:?} ends without having begun to");
        half.ending = false;
        if let Some(op) = settled {
            self.settle(transaction_id, op.state, op.end);
        }
    }

    /// Records an outcome whose op record ends at `end` (0: found by
    /// recovery). Settling again with the same state changes nothing.
    pub fn settle(&mut self, transaction_id: &str, state: TransactionState, end: u64) {
        let Some(half) = self.transactions.get_mut(transaction_id) else { return };
        if half.state != TransactionState::Pending && half.state != state {
            // Two outcomes for one half cannot be appended (`begin_end`
            // refuses the second); met in the log, the first stands and the
            // shard still starts.
            tracing::error!(transaction_id, first = ?half.state, second = ?state, "a second, conflicting outcome; keeping the first");
            return;
        }
        if half.state == state {
            return;
        }
        half.state = state;
        half.settled_end = end;
        if state != TransactionState::Pending {
            self.pending_positions.remove(&half.position);
            if half.settled_at_us == 0 {
                half.settled_at_us = crate::storage::now_us();
            }
        }
    }

    /// Forgets transactions settled more than `kept` ago, and the oldest
    /// settled ones past `SETTLED_TRANSACTIONS_MAX`, so the table is bounded
    /// by what is pending plus what settled lately. A repeated
    /// `END_TRANSACTION` of a forgotten one is answered `UnknownTransaction`
    /// (a producer resends for its delivery timeout, far less). Returns how
    /// many went.
    pub fn forget_settled(&mut self, now_us: u64, kept: Duration) -> usize {
        let before = self.transactions.len();
        let kept_us = kept.as_micros() as u64;
        self.transactions.retain(|_, half| {
            half.state == TransactionState::Pending
                || half.ending
                || now_us.saturating_sub(half.settled_at_us) < kept_us
        });
        let settled = self.transactions.len() - self.pending_positions.len();
        if settled > SETTLED_TRANSACTIONS_MAX {
            let mut oldest: Vec<(u64, String)> = self
                .transactions
                .values()
                .filter(|half| half.state != TransactionState::Pending && !half.ending)
                .map(|half| (half.settled_at_us, half.transaction_id.clone()))
                .collect();
            oldest.sort_unstable();
            for (_, transaction_id) in oldest.into_iter().take(settled - SETTLED_TRANSACTIONS_MAX) {
                self.transactions.remove(&transaction_id);
            }
        }
        before - self.transactions.len()
    }

    /// Counts one check-back a live producer acknowledged: its check
    /// record at `offset` of `CHECK_QUEUE_ID`, ending at `end` (0: found by
    /// recovery). A record counted already is not counted again.
    pub fn checked(&mut self, transaction_id: &str, offset: u64, end: u64) {
        if let Some(half) = self.transactions.get_mut(transaction_id) {
            if half.check_records.iter().any(|(counted, _)| *counted == offset) {
                return;
            }
            half.check_records.push((offset, end));
            half.checks_delivered = half.checks_delivered.saturating_add(1);
        }
    }

    /// Every transaction known, in no order.
    pub fn halves(&self) -> impl Iterator<Item = &HalfMessage> {
        self.transactions.values()
    }

    /// The pending halves to check back at `now_us`: stored longer ago than
    /// `timeout` (or their own immunity time), none being ended, fewer than
    /// `check_max` checks delivered; and the ids of those whose checks ran
    /// out (to discard). Oldest first.
    pub fn due_for_check(&self, now_us: u64, timeout: Duration, check_max: u32) -> (Vec<CheckDue>, Vec<String>) {
        let (mut due, mut exhausted) = (Vec::new(), Vec::new());
        let mut pending: Vec<&HalfMessage> =
            self.transactions.values().filter(|half| half.state == TransactionState::Pending && !half.ending).collect();
        pending.sort_by_key(|half| half.position);
        for half in pending {
            if half.checks_delivered >= check_max {
                exhausted.push(half.transaction_id.clone());
                continue;
            }
            let wait = half.check_immunity.unwrap_or(timeout).as_micros() as u64;
            if now_us.saturating_sub(half.store_timestamp_us) < wait {
                continue;
            }
            due.push(CheckDue {
                transaction_id: half.transaction_id.clone(),
                half_offset: half.half_offset,
                position: half.position,
                size_bytes: half.size_bytes,
                tag_hash: half.tag_hash,
                topic: half.topic.clone(),
                queue: half.queue,
                producer_group: half.producer_group.clone(),
                msg_id: half.msg_id,
                checks_delivered: half.checks_delivered,
            });
        }
        (due, exhausted)
    }

    /// One page of the transactions to list: all, or only those the broker
    /// discarded. Pending ones first, oldest first, from after the key
    /// `after`; and the key of the last one listed when more are left.
    pub fn list(&self, discarded_only: bool, after: Option<ListKey>) -> (Vec<TransactionSummary>, Option<ListKey>) {
        let key = |half: &HalfMessage| (half.state != TransactionState::Pending, half.position);
        let mut halves: Vec<&HalfMessage> = self
            .transactions
            .values()
            .filter(|half| !discarded_only || half.state == TransactionState::Discarded)
            .filter(|half| after.is_none_or(|after| key(half) > after))
            .collect();
        halves.sort_by_key(|half| key(half));
        let (listed, more) = fill_page(halves.iter().map(|half| half.summary()));
        let last = more.then(|| halves.get(listed.len().wrapping_sub(1)).map(|half| key(half))).flatten();
        (listed, last)
    }
}

/// An op record appended: the state it leaves and where it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpRecord {
    pub state: TransactionState,
    pub offset: u64,
    pub end: u64,
}

/// The appends of halves and op records whose effect is not yet in the
/// table: each with its queue's first offset not durable and the log's
/// flushed position when it began, lower bounds of where it lands. A
/// snapshot replays from there, so an append durable before the snapshot
/// but applied to the table after it is not lost.
#[derive(Default)]
pub struct AppendsInFlight {
    next: Cell<u64>,
    entries: RefCell<BTreeMap<u64, (u32, u64, u64)>>,
}

impl AppendsInFlight {
    /// Notes an append to `queue_id` about to begin; it counts until the
    /// guard is dropped (after its effect is in the table, or it failed).
    pub fn begin<'a, S: Storage>(&'a self, log: &CommitLog<S>, queue_id: u32) -> InFlightGuard<'a> {
        let token = self.next.get();
        self.next.set(token + 1);
        let entry = (queue_id, log.durable_end_offset(queue_id), log.positions().flushed);
        self.entries.borrow_mut().insert(token, entry);
        InFlightGuard { appends: self, token }
    }

    /// (queue id, first offset, log position) of each append in flight.
    pub fn entries(&self) -> Vec<(u32, u64, u64)> {
        self.entries.borrow().values().copied().collect()
    }
}

pub struct InFlightGuard<'a> {
    appends: &'a AppendsInFlight,
    token: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.appends.entries.borrow_mut().remove(&self.token);
    }
}

/// Refuses a half without what a transaction needs; `Ok` for any other
/// message.
pub fn check_half(message: &VerifiedMessage) -> Result<(), String> {
    if !message.is_half {
        return Ok(());
    }
    let fields = message.message();
    if fields.transaction_id().is_none_or(str::is_empty) {
        return Err("a half message needs a transaction_id".into());
    }
    if fields.producer_group().is_none_or(str::is_empty) {
        return Err("a half message needs a producer_group".into());
    }
    // Both stay in the transaction table while the half is pending.
    let too_long = |field: &str, value: Option<&str>, bytes_max: usize| {
        let length = value.map_or(0, str::len);
        (length > bytes_max).then(|| format!("a half message's {field} of {length} bytes is longer than {bytes_max}"))
    };
    if let Some(refusal) = too_long("transaction_id", fields.transaction_id(), CLIENT_ID_BYTES_MAX)
        .or_else(|| too_long("producer_group", fields.producer_group(), NAME_BYTES_MAX))
    {
        return Err(refusal);
    }
    Ok(())
}

/// The check-immunity time a half message asks for, if any (a property in
/// whole seconds; an unreadable one is ignored).
fn check_immunity(message: &VerifiedMessage) -> Option<Duration> {
    let properties = message.message().properties()?;
    let property = properties.iter().find(|property| property.key() == CHECK_IMMUNITY_PROPERTY)?;
    property.value().trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Places a half message in the log (the caller holds the placement turn):
/// indexed in `HALF_QUEUE_ID`, recorded pending. A half whose transaction id
/// is known already answers the first send (`duplicate`).
pub async fn place_half(
    shard: &Shard,
    target_queue_id: u32,
    message: &VerifiedMessage,
) -> Result<(StoredSend, bool), LogError> {
    let fields = message.message();
    let transaction_id = fields.transaction_id().unwrap_or_default();
    if let Some(known) = shard.transactions.borrow().get(transaction_id) {
        return Ok((known.first_send(), true));
    }
    let request = AppendRequest {
        queue_id: HALF_QUEUE_ID,
        flags: flags::HALF,
        indexed: true,
        tag_hash: message.tag_hash,
        message: message.bytes(),
        ..AppendRequest::default()
    };
    let _in_flight = shard.transaction_appends.begin(&shard.log, HALF_QUEUE_ID);
    let appended = shard.log.append_buffered(request).await?;
    let record = HalfRecord {
        position: appended.position,
        size_bytes: (crate::constants::RECORD_HEADER_SIZE_BYTES + message.bytes().len()) as u32,
        end: appended.end,
        store_timestamp_us: appended.store_timestamp_us,
        half_offset: appended.queue_offset.unwrap_or(0),
    };
    let half = HalfMessage::pending(message, target_queue_id, record);
    let send = half.first_send();
    shard.transactions.borrow_mut().stored(half);
    update_floor(shard);
    Ok((send, false))
}

/// Keeps the log's retention floor at or below the oldest pending half and
/// the transactions snapshot's replay start (`transactions_snapshot`).
pub(super) fn update_floor(shard: &Shard) {
    let oldest = shard.transactions.borrow().oldest_pending().unwrap_or(u64::MAX);
    shard.set_floor(&shard.transactions_floor, oldest.min(shard.transactions_snapshot_floor.get()));
}

/// `END_TRANSACTION` of `transaction_id`, whose half targets the queue
/// `queue_id` (owned by this shard): appends the op record durably, then
/// settles the table. Returns the state to answer.
pub async fn end(
    shard: &Shard,
    queue_id: u32,
    transaction_id: &str,
    outcome: Outcome,
) -> Result<TransactionState, Failure> {
    let deadline = std::time::Instant::now() + shard.config.sync_flush_timeout;
    let step = loop {
        let step = shard.transactions.borrow_mut().begin_end(transaction_id, outcome)?;
        if step != EndStep::Busy {
            break step;
        }
        // Two ends of one transaction at once are rare (a producer's retry
        // racing its first try): the second waits for the first's answer,
        // so a commit is never appended twice.
        if std::time::Instant::now() >= deadline {
            return Err(Failure::new(
                fb::ErrorCode::Internal,
                format!("transaction {transaction_id:?} is still being ended by another request; retry"),
            ));
        }
        glommio::timer::sleep(ENDING_POLL).await;
    };
    let (position, size_bytes, target_queue_id, tag_hash) = match step {
        EndStep::Answer(state) => return Ok(state),
        EndStep::Append { position, size_bytes, target_queue_id, tag_hash } => {
            (position, size_bytes, target_queue_id, tag_hash)
        }
        EndStep::Busy => unreachable!("a busy transaction was waited out above"),
    };
    if target_queue_id != queue_id {
        shard.transactions.borrow_mut().finish_end(transaction_id, None);
        let half = shard.transactions.borrow().get(transaction_id).map(|half| (half.topic.clone(), half.queue));
        let (topic, queue) = half.unwrap_or_default();
        return Err(Failure::new(
            fb::ErrorCode::InvalidRequest,
            format!("transaction {transaction_id:?} belongs to queue {queue} of topic {topic}"),
        ));
    }
    let op = match outcome {
        Outcome::Commit => Op::Commit { target_queue_id },
        _ => Op::Rollback,
    };
    let in_flight = shard.transaction_appends.begin(&shard.log, op.placement().0);
    let appended = append_op(&shard.log, op, transaction_id, position, size_bytes, tag_hash).await;
    let settled = match appended {
        Ok(op) => op,
        Err(error) => {
            shard.transactions.borrow_mut().finish_end(transaction_id, None);
            return Err(super::failures::log_failure(error));
        }
    };
    shard.transactions.borrow_mut().finish_end(transaction_id, Some(settled));
    drop(in_flight);
    update_floor(shard);
    // Settled here whatever the standby says; in sync mode the answer waits
    // for it (and a commit's message shows to consumers once it holds it).
    super::replication::release::confirm_change(shard, settled.end, "end transaction").await;
    Ok(settled.state)
}

/// Rolls back a half whose check-backs ran out, as `Discarded`; does
/// nothing when an `END_TRANSACTION` settled it or is settling it now.
pub async fn discard(shard: &Shard, transaction_id: &str) -> Result<(), LogError> {
    let step = shard.transactions.borrow_mut().begin_end(transaction_id, Outcome::Rollback);
    let Ok(EndStep::Append { position, size_bytes, tag_hash, .. }) = step else { return Ok(()) };
    let in_flight = shard.transaction_appends.begin(&shard.log, DISCARD_QUEUE_ID);
    let appended = append_op(&shard.log, Op::Discard, transaction_id, position, size_bytes, tag_hash).await;
    shard.transactions.borrow_mut().finish_end(transaction_id, appended.as_ref().ok().copied());
    drop(in_flight);
    update_floor(shard);
    appended.map(|_| ())
}

/// Records a check-back a live producer acknowledged: a small op record
/// (the transaction id, pointing at the half: no copy of the body), then
/// the count.
pub async fn record_check(shard: &Shard, due: &CheckDue) -> Result<(), LogError> {
    let _in_flight = shard.transaction_appends.begin(&shard.log, CHECK_QUEUE_ID);
    let op =
        append_op(&shard.log, Op::Checked, &due.transaction_id, due.position, due.size_bytes, due.tag_hash).await?;
    shard.transactions.borrow_mut().checked(&due.transaction_id, op.offset, op.end);
    Ok(())
}

/// An op record: what happened to a half message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Commit {
        target_queue_id: u32,
    },
    Rollback,
    /// The broker's rollback after the check-backs ran out.
    Discard,
    /// A check-back a live producer acknowledged.
    Checked,
}

impl Op {
    /// The queue its record is indexed in, and its flags.
    pub fn placement(self) -> (u32, u16) {
        match self {
            Op::Commit { target_queue_id } => (target_queue_id, flags::COMMIT),
            Op::Rollback => (OP_QUEUE_ID, flags::ROLLBACK),
            Op::Discard => (DISCARD_QUEUE_ID, flags::ROLLBACK | flags::DISCARDED),
            Op::Checked => (CHECK_QUEUE_ID, flags::CHECKED),
        }
    }
}

/// Appends an op record pointing at the half (`reference`, so a read of it
/// returns the half, no copy of the body) in the queue `op` says, and
/// resolves once it is acknowledgeable with the state it leaves (`Checked`
/// leaves the half pending), its offset and its end.
pub async fn append_op<S: Storage>(
    log: &CommitLog<S>,
    op: Op,
    transaction_id: &str,
    position: u64,
    size_bytes: u32,
    tag_hash: u32,
) -> Result<OpRecord, LogError> {
    let (queue_id, op_flags) = op.placement();
    // A commit is read by consumers for as long as its queue keeps it; a
    // half in an earlier segment would go first under retention (oldest
    // segment first), so such a commit stores a copy of the half instead.
    let copy_if_far = matches!(op, Op::Commit { .. }).then_some(FarCopy {
        message: None,
        flags: flags::HALF | flags::COMMIT,
        back_pointer: position,
    });
    let request = AppendRequest {
        queue_id,
        flags: op_flags | flags::INTERNAL,
        indexed: true,
        tag_hash,
        reference: Some((position, size_bytes)),
        message: transaction_id.as_bytes(),
        copy_if_far,
        ..AppendRequest::default()
    };
    let appended = match log.append(request).await {
        Err(LogError::FarReference { .. }) => {
            // A pending half is above the retention floor: it reads back.
            let Some(half) = log.record_at(position, size_bytes).await? else {
                return Err(LogError::Corrupt {
                    path: Default::default(),
                    position,
                    detail: format!("the pending half of transaction {transaction_id:?} is gone"),
                });
            };
            let message = half.message();
            let copy = copy_if_far.map(|copy| FarCopy { message: Some(&message), ..copy });
            log.append(AppendRequest { copy_if_far: copy, ..request }).await?
        }
        other => other?,
    };
    let offset = appended.queue_offset.unwrap_or(0);
    let state = match op {
        Op::Commit { .. } => TransactionState::Committed { offset },
        Op::Rollback => TransactionState::RolledBack,
        Op::Discard => TransactionState::Discarded,
        Op::Checked => TransactionState::Pending,
    };
    Ok(OpRecord { state, offset, end: appended.end })
}

/// Rebuilds the table from the log: the halves, then the rollbacks, then
/// the commits found in the shard's queues (`queue_ids`). A full replay;
/// `transactions_snapshot::recover` shortens it.
pub async fn recover<S: Storage>(
    log: &CommitLog<S>,
    topics: &Topics,
    queue_ids: &[u32],
) -> Result<TransactionTable, LogError> {
    let mut table = TransactionTable::default();
    replay_into(&mut table, log, topics, queue_ids, &HashMap::new()).await?;
    Ok(table)
}

/// Applies to `table` every record of the transaction queues and of
/// `queue_ids` from the offset `from` gives (else the queue's base).
/// Applying a record the table holds already changes nothing.
pub async fn replay_into<S: Storage>(
    table: &mut TransactionTable,
    log: &CommitLog<S>,
    topics: &Topics,
    queue_ids: &[u32],
    from: &HashMap<u32, u64>,
) -> Result<(), LogError> {
    let from = |queue_id: u32| from.get(&queue_id).copied().unwrap_or(0);
    replay(log, HALF_QUEUE_ID, from(HALF_QUEUE_ID), |record, message| {
        let fields = message.message();
        let topic = fields.topic();
        let Some(target) = topics.get(topic) else {
            tracing::warn!(topic, "a half message of an unknown topic; skipped");
            return;
        };
        let record = HalfRecord {
            position: record.position,
            size_bytes: record.header.length,
            end: record.position + u64::from(record.header.length),
            store_timestamp_us: record.header.store_timestamp_us,
            half_offset: record.queue_offset,
        };
        table.stored(HalfMessage::pending(message, target.queue_id(message.queue), record));
    })
    .await?;
    if table.is_empty() {
        return Ok(());
    }
    // A read of an op record's offset returns the half it points at:
    // reading the op queue or a target queue yields the half records.
    // Records read by recovery are durable: their end is given as 0.
    replay(log, OP_QUEUE_ID, from(OP_QUEUE_ID), |_, message| {
        table.settle(message.message().transaction_id().unwrap_or_default(), TransactionState::RolledBack, 0);
    })
    .await?;
    replay(log, DISCARD_QUEUE_ID, from(DISCARD_QUEUE_ID), |_, message| {
        table.settle(message.message().transaction_id().unwrap_or_default(), TransactionState::Discarded, 0);
    })
    .await?;
    replay(log, CHECK_QUEUE_ID, from(CHECK_QUEUE_ID), |record, message| {
        table.checked(message.message().transaction_id().unwrap_or_default(), record.queue_offset, 0);
    })
    .await?;
    for &queue_id in queue_ids {
        replay(log, queue_id, from(queue_id), |record, message| {
            // Only through its commit record, or as the copy a far commit
            // stores: a retry or a dead letter of a committed message
            // points at the half (or that copy) too.
            let committed = match &record.via {
                Some(via) => via.header.flags & flags::COMMIT != 0,
                None => record.header.flags & flags::COMMIT != 0,
            };
            if record.header.flags & flags::HALF != 0 && committed {
                let offset = record.queue_offset;
                table.settle(
                    message.message().transaction_id().unwrap_or_default(),
                    TransactionState::Committed { offset },
                    0,
                );
            }
        })
        .await?;
    }
    Ok(())
}

/// Reads every record of `queue_id` still in the log from `from`, in order.
async fn replay<S: Storage>(
    log: &CommitLog<S>,
    queue_id: u32,
    from: u64,
    mut apply: impl FnMut(&StoredRecord, &VerifiedMessage),
) -> Result<(), LogError> {
    replay_messages(log, queue_id, from, |record, message| {
        if message.is_half {
            apply(record, message);
        }
    })
    .await
}

#[cfg(test)]
pub(super) mod fixtures {
    //! What the transaction tests share: a topic and halves in a log.
    use super::*;
    use crate::wire::MessageDraft;

    /// Topics holding `orders` (one queue, on shard 0) and that queue's id.
    pub fn orders() -> (Topics, u32) {
        let topic = super::super::topics::Topic { name: "orders".into(), id: 1, queue_shards: vec![0].into() };
        let target = topic.queue_id(0);
        let mut topics = Topics::default();
        topics.topics.insert(topic.name.to_string(), topic);
        (topics, target)
    }

    /// Appends a half of `transaction_id` to `orders`; returns its position,
    /// its record's own length (header and message, no padding) and bytes.
    pub async fn append_half<S: Storage>(log: &CommitLog<S>, transaction_id: &str, number: u64) -> (u64, u32, Vec<u8>) {
        let bytes = MessageDraft {
            msg_id: (9, number),
            topic: "orders",
            body: transaction_id.as_bytes(),
            half: true,
            producer_group: Some("payments"),
            transaction_id: Some(transaction_id),
            ..MessageDraft::default()
        }
        .build();
        let request = AppendRequest {
            queue_id: HALF_QUEUE_ID,
            flags: flags::HALF,
            indexed: true,
            message: &bytes,
            ..Default::default()
        };
        let appended = log.append(request).await.expect("half");
        (appended.position, (crate::constants::RECORD_HEADER_SIZE_BYTES + bytes.len()) as u32, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(transaction_id: &str, position: u64) -> HalfMessage {
        HalfMessage {
            transaction_id: transaction_id.into(),
            position,
            size_bytes: 100,
            end: position + 100,
            target_queue_id: 1024,
            tag_hash: 0,
            topic: "orders".into(),
            queue: 0,
            producer_group: "payments".into(),
            msg_id: (1, position),
            store_timestamp_us: 5_000,
            half_offset: position,
            check_immunity: None,
            checks_delivered: 0,
            check_records: Vec::new(),
            state: TransactionState::Pending,
            settled_end: 0,
            settled_at_us: 0,
            ending: false,
        }
    }

    fn op(state: TransactionState) -> OpRecord {
        OpRecord { state, offset: 0, end: 0 }
    }

    fn code(result: Result<EndStep, Failure>) -> fb::ErrorCode {
        result.expect_err("refused").code
    }

    #[test]
    fn a_commit_appends_once_and_a_repeat_answers_the_settled_state() {
        let mut table = TransactionTable::default();
        table.stored(half("a", 100));
        let step = table.begin_end("a", Outcome::Commit).expect("begins");
        assert!(matches!(step, EndStep::Append { position: 100, size_bytes: 100, target_queue_id: 1024, .. }));
        assert_eq!(table.begin_end("a", Outcome::Commit), Ok(EndStep::Busy), "one end at a time");
        table.finish_end("a", Some(op(TransactionState::Committed { offset: 7 })));
        let committed = TransactionState::Committed { offset: 7 };
        assert_eq!(table.begin_end("a", Outcome::Commit), Ok(EndStep::Answer(committed)));
        assert_eq!(table.begin_end("a", Outcome::Unknown), Ok(EndStep::Answer(committed)));
        assert_eq!(code(table.begin_end("a", Outcome::Rollback)), fb::ErrorCode::TransactionConflict);
    }

    #[test]
    fn a_rollback_refuses_a_later_commit() {
        let mut table = TransactionTable::default();
        table.stored(half("a", 100));
        assert!(matches!(table.begin_end("a", Outcome::Rollback), Ok(EndStep::Append { .. })));
        table.finish_end("a", Some(op(TransactionState::RolledBack)));
        assert_eq!(table.begin_end("a", Outcome::Rollback), Ok(EndStep::Answer(TransactionState::RolledBack)));
        assert_eq!(code(table.begin_end("a", Outcome::Commit)), fb::ErrorCode::TransactionConflict);
    }

    #[test]
    fn unknown_ids_and_undecided_outcomes_append_nothing() {
        let mut table = TransactionTable::default();
        assert_eq!(code(table.begin_end("nobody", Outcome::Commit)), fb::ErrorCode::UnknownTransaction);
        table.stored(half("a", 100));
        assert_eq!(table.begin_end("a", Outcome::Unknown), Ok(EndStep::Answer(TransactionState::Pending)));
        assert!(!table.get("a").expect("known").ending);
    }

    #[test]
    fn a_failed_append_leaves_the_transaction_pending_and_endable() {
        let mut table = TransactionTable::default();
        table.stored(half("a", 100));
        assert!(matches!(table.begin_end("a", Outcome::Commit), Ok(EndStep::Append { .. })));
        table.finish_end("a", None);
        assert_eq!(table.get("a").expect("known").state, TransactionState::Pending);
        assert!(matches!(table.begin_end("a", Outcome::Rollback), Ok(EndStep::Append { .. })));
    }

    #[test]
    fn retention_keeps_the_oldest_pending_half() {
        let mut table = TransactionTable::default();
        assert_eq!(table.oldest_pending(), None);
        table.stored(half("a", 100));
        table.stored(half("b", 300));
        table.stored(half("c", 200));
        assert_eq!(table.oldest_pending(), Some(100));
        table.settle("a", TransactionState::Committed { offset: 0 }, 0);
        assert_eq!(table.oldest_pending(), Some(200));
        table.settle("c", TransactionState::RolledBack, 0);
        table.settle("b", TransactionState::RolledBack, 0);
        assert_eq!((table.oldest_pending(), table.pending_count(), table.len()), (None, 0, 3));
    }

    #[test]
    fn the_list_pages_under_the_answer_budget_and_the_cursor_resumes_it() {
        let mut table = TransactionTable::default();
        let long = "x".repeat(CLIENT_ID_BYTES_MAX - 8);
        let total = 3000;
        for index in 0..total {
            table.stored(half(&format!("{long}-{index:05}"), 1000 + index));
        }
        // Every tenth one settled: listed after every pending one.
        for index in (0..total).step_by(10) {
            table.settle(&format!("{long}-{index:05}"), TransactionState::RolledBack, 0);
        }
        let (mut listed, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let (page, last) = table.list(false, after);
            let body = crate::protocol::list_transactions_response(None, &page, Some(&[0; 64]));
            assert!(body.len() <= crate::constants::RESPONSE_BYTES_MAX, "a page of {} bytes", body.len());
            assert!(crate::protocol::verify::<fb::ListTransactionsResponse>(&body).is_ok(), "the reader's limits");
            listed.extend(page.into_iter().map(|summary| (summary.state, summary.transaction_id)));
            pages += 1;
            match last {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        assert!(pages > 1, "{pages} page");
        assert_eq!(listed.len(), total as usize, "each once");
        let settled_from = listed.iter().position(|(state, _)| *state != fb::TransactionState::Pending);
        assert_eq!(settled_from, Some(total as usize - 300), "pending ones first");
        let unique: BTreeSet<_> = listed.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(unique.len(), total as usize);
    }

    #[test]
    fn the_list_puts_pending_transactions_first() {
        let mut table = TransactionTable::default();
        table.stored(half("settled", 100));
        table.settle("settled", TransactionState::RolledBack, 0);
        table.stored(half("pending", 200));
        let listed: Vec<_> = table.list(false, None).0.into_iter().map(|summary| summary.transaction_id).collect();
        assert_eq!(listed, ["pending", "settled"]);
        assert!(table.list(true, None).0.is_empty(), "nothing is discarded");
        assert_eq!(table.list(false, None).0[0].stored_at_ms, 5);
    }

    #[test]
    fn recovery_finds_commits_in_the_target_queue_and_rollbacks_in_the_op_queue() {
        use crate::storage::backend::MemoryStorage;
        use crate::storage::LogConfig;
        let (topics, target) = fixtures::orders();
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async move {
            let log = CommitLog::open(MemoryStorage::new(), LogConfig::new("/memory")).await.expect("open");
            let mut halves = Vec::new();
            for (number, transaction_id) in ["a", "b", "c"].into_iter().enumerate() {
                halves.push(fixtures::append_half(&log, transaction_id, number as u64).await);
            }
            let size = |index: usize| halves[index].1;
            let committed = append_op(&log, Op::Commit { target_queue_id: target }, "a", halves[0].0, size(0), 0).await;
            assert_eq!(committed.expect("commit").state, TransactionState::Committed { offset: 0 });
            let rolled_back = append_op(&log, Op::Rollback, "b", halves[1].0, size(1), 0).await;
            assert_eq!(rolled_back.expect("rollback").state, TransactionState::RolledBack);
            for _ in 0..2 {
                let checked = append_op(&log, Op::Checked, "c", halves[2].0, size(2), 0).await;
                assert_eq!(checked.expect("check").state, TransactionState::Pending);
            }
            let batch = log.read(target, 0, 10, 1 << 20).await.expect("the target queue reads");
            assert_eq!(batch.records.len(), 1, "only the committed half is in its queue");
            assert_eq!(batch.records[0].message(), halves[0].2.as_slice(), "the half's own bytes");
            let table = recover(&log, &topics, &[target]).await.expect("recovers");
            let state = |id: &str| table.get(id).expect("known").state;
            assert_eq!(state("a"), TransactionState::Committed { offset: 0 });
            assert_eq!(state("b"), TransactionState::RolledBack);
            assert_eq!(state("c"), TransactionState::Pending);
            assert_eq!(table.get("c").expect("known").checks_delivered, 2, "each check record counts");
            assert_eq!(table.oldest_pending(), Some(halves[2].0));
            let discarded = append_op(&log, Op::Discard, "c", halves[2].0, size(2), 0).await;
            assert_eq!(discarded.expect("discard").state, TransactionState::Discarded);
            let table = recover(&log, &topics, &[target]).await.expect("recovers");
            assert_eq!(table.get("c").expect("known").state, TransactionState::Discarded);
            let listed: Vec<_> = table.list(true, None).0.into_iter().map(|summary| summary.transaction_id).collect();
            assert_eq!(listed, ["c"]);
            log.close().await.expect("close");
        });
    }

    /// A commit whose half lies in an earlier segment stores a copy of it:
    /// the committed message outlives the half's segment, and recovery
    /// still finds the commit.
    #[test]
    fn a_commit_of_a_half_in_an_earlier_segment_stores_a_copy() {
        use crate::storage::backend::MemoryStorage;
        use crate::storage::LogConfig;
        let (topics, target) = fixtures::orders();
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        executor.run(async move {
            let config = LogConfig {
                segment_size_bytes: 64 * 1024,
                buffer_capacity_bytes: 16 * 1024,
                recent_buffers_bytes: 16 * 1024,
                ..LogConfig::new("/memory")
            };
            let log = CommitLog::open(MemoryStorage::new(), config).await.expect("open");
            let (position, size, half) = fixtures::append_half(&log, "far", 1).await;
            let filler = vec![7u8; 1000];
            while log.positions().flushed < 64 * 1024 + 4096 {
                let request = AppendRequest { queue_id: 900, indexed: true, message: &filler, ..Default::default() };
                log.append(request).await.expect("filler");
            }
            let committed = append_op(&log, Op::Commit { target_queue_id: target }, "far", position, size, 0).await;
            assert_eq!(committed.expect("commit").state, TransactionState::Committed { offset: 0 });
            let batch = log.read(target, 0, 1, 1 << 20).await.expect("the target queue reads");
            let record = &batch.records[0];
            assert_eq!(record.message(), half.as_slice(), "the half's bytes");
            assert!(record.via.is_none() && record.position > 64 * 1024, "a copy in the later segment");
            assert_eq!(record.header.flags & (flags::HALF | flags::COMMIT), flags::HALF | flags::COMMIT);
            assert_eq!(record.header.ref_position, position, "the copy points back at the half");
            let table = recover(&log, &topics, &[target]).await.expect("recovers");
            assert_eq!(table.get("far").expect("known").state, TransactionState::Committed { offset: 0 });
            log.close().await.expect("close");
        });
    }

    #[test]
    fn a_second_conflicting_outcome_keeps_the_first() {
        let mut table = TransactionTable::default();
        table.stored(half("a", 100));
        table.settle("a", TransactionState::RolledBack, 0);
        table.settle("a", TransactionState::Committed { offset: 1 }, 0);
        assert_eq!(table.get("a").expect("known").state, TransactionState::RolledBack);
        assert_eq!(table.oldest_pending(), None);
    }

    #[test]
    fn checks_are_due_after_the_timeout_and_exhausted_after_the_maximum() {
        let mut table = TransactionTable::default();
        table.stored(half("old", 100));
        table.stored(half("immune", 200));
        table.transactions.get_mut("immune").expect("known").check_immunity = Some(Duration::from_secs(60));
        let timeout = Duration::from_millis(6);
        let (due, exhausted) = table.due_for_check(5_000 + 5_999, timeout, 2);
        assert!(due.is_empty() && exhausted.is_empty(), "too young");
        let (due, _) = table.due_for_check(5_000 + 6_000, timeout, 2);
        assert_eq!(due.iter().map(|due| due.transaction_id.as_str()).collect::<Vec<_>>(), ["old"]);
        table.checked("old", 0, 0);
        table.checked("old", 1, 0);
        let (due, exhausted) = table.due_for_check(5_000 + 6_000, timeout, 2);
        assert!(due.is_empty());
        assert_eq!(exhausted, ["old"]);
        assert!(matches!(table.begin_end("old", Outcome::Rollback), Ok(EndStep::Append { .. })));
        table.finish_end("old", Some(op(TransactionState::Discarded)));
        assert_eq!(code(table.begin_end("old", Outcome::Commit)), fb::ErrorCode::TransactionConflict);
        assert_eq!(table.list(true, None).0.len(), 1);
    }

    #[test]
    fn settled_transactions_are_forgotten_after_a_while_and_pending_ones_never() {
        let mut table = TransactionTable::default();
        table.stored(half("settled", 100));
        table.stored(half("pending", 200));
        table.settle("settled", TransactionState::RolledBack, 0);
        let settled_at = table.get("settled").expect("known").settled_at_us;
        assert!(settled_at > 0);
        let kept = Duration::from_secs(60);
        assert_eq!(table.forget_settled(settled_at + 59_000_000, kept), 0, "recently settled: kept");
        assert_eq!(table.forget_settled(settled_at + 61_000_000, kept), 1);
        assert!(table.get("settled").is_none());
        assert_eq!(table.forget_settled(u64::MAX, kept), 0, "a pending transaction is never forgotten");
        assert!(table.get("pending").is_some());
    }
}
