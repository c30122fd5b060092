//! What the simulated clients know: every record placed in the log (queue,
//! offset, position, body) and which of them are durable, plus the damage
//! the simulation did to the disk behind the log's back. After a recovery it
//! judges what the log holds.
//!
//! The rules (a violation is a failure of the seed):
//! - Durable means `end <= flushed` when the power went: an fdatasync
//!   covered it (with sync flush every acknowledged record is durable; with
//!   async flush an acknowledged record may be lost until it is). Recovery
//!   may lose a durable record only if damage hit that very record, and
//!   then it must refuse to open (`LogError::Corrupt`), with one excuse:
//!   zeros (a zeroed block, or a misdirected block holding an all-zero
//!   sector) or a misdirected block at a position `p >= U`, where `U` is
//!   the largest durable position any intact batch marker on the disk
//!   vouches for, or the checkpoint's position if larger: damage inside the
//!   last durable write(s). Nothing on the disk says data beyond `U` was
//!   ever durable, and zeros there are exactly what a torn last write
//!   leaves. A misdirected block counts too: a copied write start (marker
//!   and record header) whose record claims a length reaching past the
//!   copy into the never-written zeros after the last write is, byte for
//!   byte, a write torn after its first sectors. So recovery may cut there:
//!   records ending after `p` are excused.
//! - Damage below the checkpoint's position is not scanned at recovery:
//!   the log opens, and reading the damaged record must fail with
//!   `LogError::Corrupt`, never return other bytes.
//! - Nothing phantom: every record read back is the one placed at that
//!   queue offset, byte for byte; no queue holds an offset never placed.
//! - Offsets never go backwards: a queue's recovered end covers every
//!   durable record, and the next append continues right after it.
//! - A refusal is a false alarm unless damage changed durable bytes or the
//!   crash garbled sectors (a drive writing garbage).

use super::body;
use crate::storage::backend::Storage;
use crate::storage::{Appended, CommitLog, FlushMode, LogError};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug)]
pub struct Placed {
    pub id: u64,
    pub length: usize,
    pub position: u64,
    pub end: u64,
    pub durable: bool,
}

/// Damage done to durable bytes `[from, to)` (log positions).
#[derive(Clone, Copy, Debug)]
pub struct Damage {
    pub from: u64,
    pub to: u64,
    /// The damage leaves zeros recovery may take for a torn write.
    pub zeros: bool,
}

#[derive(Default)]
pub struct Oracle {
    pub seed: u64,
    pub queues: BTreeMap<u32, Vec<Placed>>,
    /// Records damaged on the disk for good (below a checkpoint).
    pub damaged: BTreeSet<(u32, u64)>,
    pub next_id: u64,
    pub violations: Vec<String>,
    pub stats: Stats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub placed: u64,
    pub acknowledged: u64,
    pub crashes: u64,
    pub recoveries: u64,
    pub refusals: u64,
    pub excused_losses: u64,
    pub damaged_reads: u64,
    pub append_errors: u64,
    pub checkpoints: u64,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.placed += other.placed;
        self.acknowledged += other.acknowledged;
        self.crashes += other.crashes;
        self.recoveries += other.recoveries;
        self.refusals += other.refusals;
        self.excused_losses += other.excused_losses;
        self.damaged_reads += other.damaged_reads;
        self.append_errors += other.append_errors;
        self.checkpoints += other.checkpoints;
    }
}

/// What recovery may do after this crash.
#[derive(Clone, Debug, Default)]
pub struct Allowance {
    /// Durable records hit by damage this cycle.
    pub damaged: BTreeSet<(u32, u64)>,
    /// Records ending after this position may be cut (see the module rules).
    pub cut_from: Option<u64>,
    /// Unsynced sectors were garbled.
    pub garbled: bool,
    /// A description of the faults, for failure messages.
    pub faults: Vec<String>,
}

impl Allowance {
    pub fn may_refuse(&self) -> bool {
        self.garbled || !self.damaged.is_empty()
    }

    /// Damage alone does not excuse a loss (recovery must refuse); zeros
    /// where a torn last write could have left them do.
    fn may_lose(&self, record: &Placed) -> bool {
        self.cut_from.is_some_and(|from| record.end > from)
    }
}

/// How a recovered log is judged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// A normal recovery: the rules above.
    Strict,
    /// After the operator truncated: records may be missing, nothing phantom.
    Truncated,
}

impl Oracle {
    pub fn new(seed: u64) -> Self {
        Self { seed, ..Self::default() }
    }

    pub fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    pub fn next_body_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A record was placed in the log: it must get the queue's next offset.
    pub fn place(&mut self, queue_id: u32, id: u64, length: usize, appended: &Appended) {
        self.stats.placed += 1;
        let queue = self.queues.entry(queue_id).or_default();
        let expected = queue.len() as u64;
        if appended.queue_offset != Some(expected) {
            let got = appended.queue_offset;
            self.violation(format!("queue {queue_id}: an append got offset {got:?}, the next offset is {expected}"));
            return;
        }
        let (position, end) = (appended.position, appended.end);
        queue.push(Placed { id, length, position, end, durable: false });
    }

    /// An append resolved Ok: with sync flush its record must be durable.
    pub fn acknowledge(&mut self, flush: FlushMode, end: u64, flushed: u64) {
        self.stats.acknowledged += 1;
        if flush == FlushMode::Sync && flushed < end {
            self.violation(format!("an append ending at {end} was acknowledged with only {flushed} durable"));
        }
    }

    /// The power went with `flushed` durable.
    pub fn crash(&mut self, flushed: u64) {
        self.stats.crashes += 1;
        for record in self.queues.values_mut().flatten() {
            record.durable |= record.end <= flushed;
        }
    }

    /// Durable records whose bytes overlap `damage`.
    pub fn hit_by(&self, damage: &Damage) -> BTreeSet<(u32, u64)> {
        let mut hit = BTreeSet::new();
        for (queue_id, records) in &self.queues {
            for (offset, record) in records.iter().enumerate() {
                let record_to = record.position + (crate::constants::RECORD_HEADER_SIZE_BYTES + record.length) as u64;
                if record.durable && record.position < damage.to && damage.from < record_to {
                    hit.insert((*queue_id, offset as u64));
                }
            }
        }
        hit
    }

    /// Durable records the simulation knows, for picking a target.
    pub fn durable_records(&self) -> Vec<(u32, u64, Placed)> {
        let mut all = Vec::new();
        for (queue_id, records) in &self.queues {
            for (offset, record) in records.iter().enumerate().filter(|(_, record)| record.durable) {
                all.push((*queue_id, offset as u64, *record));
            }
        }
        all
    }

    /// Recovery refused: fine only if the allowance says so.
    pub fn refused(&mut self, error: &LogError, allowance: &Allowance) {
        self.stats.refusals += 1;
        match error {
            LogError::Corrupt { .. } if allowance.may_refuse() => {}
            LogError::Corrupt { .. } => self.violation(format!(
                "false alarm: recovery refused though no durable byte was damaged and nothing was garbled: {error}"
            )),
            _ => self.violation(format!("recovery failed with an unexpected error: {error}")),
        }
    }

    /// Judges a recovered log and makes what it holds the new truth.
    pub async fn recovered<S: Storage>(&mut self, log: &CommitLog<S>, allowance: &Allowance, judgement: Judgement) {
        self.stats.recoveries += 1;
        self.no_phantom_queues(log);
        let queue_ids: Vec<u32> = self.queues.keys().copied().collect();
        for queue_id in queue_ids {
            let end = log.visible_end_offset(queue_id);
            self.judge_queue(log, queue_id, end, allowance, judgement).await;
            self.settle_queue(queue_id, end);
        }
    }

    fn no_phantom_queues<S: Storage>(&mut self, log: &CommitLog<S>) {
        let recovered: Vec<u32> = log.shared().state.borrow().queues.keys().copied().collect();
        for queue_id in recovered {
            let placed = self.queues.get(&queue_id).map_or(0, Vec::len) as u64;
            if log.visible_end_offset(queue_id) > placed {
                let end = log.visible_end_offset(queue_id);
                self.violation(format!("queue {queue_id} recovered {end} records, only {placed} were ever placed"));
            }
        }
    }

    async fn judge_queue<S: Storage>(
        &mut self,
        log: &CommitLog<S>,
        queue_id: u32,
        end: u64,
        allowance: &Allowance,
        judgement: Judgement,
    ) {
        let records = self.queues.get(&queue_id).cloned().unwrap_or_default();
        if log.base_offset(queue_id) != 0 && judgement == Judgement::Strict {
            let base = log.base_offset(queue_id);
            self.violation(format!("queue {queue_id} starts at offset {base} with retention off"));
        }
        for (offset, record) in records.iter().enumerate() {
            let offset = offset as u64;
            if offset >= end {
                self.judge_missing(queue_id, offset, record, end, allowance, judgement);
            } else {
                self.judge_read(log, queue_id, offset, record, allowance, judgement).await;
            }
        }
    }

    fn judge_missing(
        &mut self,
        queue_id: u32,
        offset: u64,
        record: &Placed,
        end: u64,
        allowance: &Allowance,
        judgement: Judgement,
    ) {
        if !record.durable || judgement == Judgement::Truncated {
            return;
        }
        if allowance.may_lose(record) {
            self.stats.excused_losses += 1;
            return;
        }
        self.violation(format!(
            "durable record {queue_id}/{offset} (log {}..{}) is gone: the queue recovered to offset {end} and the log opened",
            record.position, record.end
        ));
    }

    async fn judge_read<S: Storage>(
        &mut self,
        log: &CommitLog<S>,
        queue_id: u32,
        offset: u64,
        record: &Placed,
        allowance: &Allowance,
        judgement: Judgement,
    ) {
        let damaged = self.damaged.contains(&(queue_id, offset)) || allowance.damaged.contains(&(queue_id, offset));
        match log.read(queue_id, offset, 1, 1 << 20).await {
            Ok(batch) => match batch.records.first() {
                Some(stored) if stored.message() == body(self.seed, record.id, record.length) => {
                    // Where the log keeps it now: after the operator's
                    // truncation that may be a misdirected copy's place.
                    let position = stored.position;
                    self.judge_key(log, queue_id, offset, record, position).await;
                }
                Some(stored) => self.violation(format!(
                    "phantom: {queue_id}/{offset} read back {} bytes that are not the record placed there (log {})",
                    stored.message().len(),
                    record.position
                )),
                None => self.violation(format!("{queue_id}/{offset} is below the queue's end but reads nothing")),
            },
            Err(LogError::Corrupt { .. }) if damaged => {
                self.stats.damaged_reads += 1;
                self.damaged.insert((queue_id, offset));
            }
            // After a truncation a record may be gone in any way; it may
            // not come back as other bytes.
            Err(_) if judgement == Judgement::Truncated => {}
            Err(error) => {
                self.violation(format!("reading {queue_id}/{offset} (log {}) failed: {error}", record.position))
            }
        }
    }

    /// A record that reads back must be found by its key (the key index
    /// was caught up, or rebuilt, at recovery): the newest entry of its key
    /// at or below `position`, where the read found it, is its own.
    async fn judge_key<S: Storage>(
        &mut self,
        log: &CommitLog<S>,
        queue_id: u32,
        offset: u64,
        record: &Placed,
        position: u64,
    ) {
        let mut hashes = Vec::new();
        super::first_word_key(&body(self.seed, record.id, record.length), &mut hashes);
        let Some(hash) = hashes.first() else { return };
        match log.key_candidates(*hash, 0, position + 1, 1).await {
            Ok(found) if found.entries.first().is_some_and(|entry| entry.position == position) => {}
            Ok(found) => self.violation(format!(
                "key index: {queue_id}/{offset} (log {position}) is not found by its key (found {:?})",
                found.entries.first()
            )),
            Err(error) => self.violation(format!("key index: searching {queue_id}/{offset}'s key failed: {error}")),
        }
    }

    /// What the queue holds now is durable; offsets past its end are free.
    fn settle_queue(&mut self, queue_id: u32, end: u64) {
        if let Some(records) = self.queues.get_mut(&queue_id) {
            records.truncate(end as usize);
            records.iter_mut().for_each(|record| record.durable = true);
        }
        self.damaged.retain(|(queue, offset)| *queue != queue_id || *offset < end);
    }
}
