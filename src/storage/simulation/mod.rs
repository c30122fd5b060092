//! Seeded fault simulation of one shard's commit log.
//!
//! Per seed: a random small configuration, a memory disk (power cuts that
//! lose, tear or garble unsynced sectors; bit flips, zeroed and misdirected
//! blocks in durable data) or the fault-injecting disk (EIO on write or
//! fdatasync, ENOSPC on segment creation, torn power cuts, bit flips).
//! Several tasks append random records to random queues while checkpoints
//! run; the power goes at a random point; the disk is damaged; the log
//! recovers and `oracle` judges it (its module header has the rules). Then
//! the log goes on appending, for several crash cycles.
//!
//! Everything is deterministic for a seed: the executor runs one thread,
//! the disk is in memory, no timer fires (flush and checkpoint intervals
//! are an hour). `RINGMQ_SIM_SEEDS=<n>` runs seeds `0..n` (default
//! `DEFAULT_SEEDS`), `RINGMQ_SIM_SEED=<n>` replays one,
//! `RINGMQ_SIM_FIRST_SEED=<n>` shifts the range.

mod boot;
pub mod clock;
mod disk;
mod found_bugs;
mod oracle;

use super::backend::{FaultyStorage, MemoryStorage};
use super::{AppendRequest, CommitLog, FlushMode, LogConfig, LogError};
use boot::Boot;
use disk::{Harm, PowerCut, SimDisk};
use oracle::{Allowance, Judgement, Oracle, Stats};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Seeds a plain `cargo test` runs: about 10 s in a debug build.
const DEFAULT_SEEDS: u64 = 300;
/// Failures printed in full at the end of a run.
const FAILURES_SHOWN: usize = 10;
const NEVER: Duration = Duration::from_secs(3600);

/// The body of record `id`: random bytes (no 512-byte run of zeros), the
/// same every time for a seed.
pub fn body(seed: u64, id: u64, length: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ id);
    let mut bytes = vec![0; length];
    rng.fill(&mut bytes);
    bytes
}

/// The key index's hasher here: a body's first 8 bytes (random, so unique
/// in practice) are its one key hash; a shorter body has no key.
pub fn first_word_key(body: &[u8], hashes: &mut Vec<u64>) {
    if let Some(word) = body.get(..8) {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        hashes.push(u64::from_le_bytes(bytes));
    }
}

/// The shape of one seed's run.
#[derive(Clone, Debug)]
struct Scenario {
    config: LogConfig,
    queues: u32,
    appenders: usize,
    appends_per_appender: usize,
    cycles: usize,
}

impl Scenario {
    fn random(rng: &mut fastrand::Rng) -> Self {
        let block = crate::constants::BLOCK_SIZE_BYTES;
        let buffer_capacity_bytes = rng.usize(4..=16) * block;
        let flush = if rng.bool() { FlushMode::Sync } else { FlushMode::Async { interval: NEVER } };
        let config = LogConfig {
            segment_size_bytes: rng.u64(16..=128) * block as u64,
            buffer_capacity_bytes,
            recent_buffers_bytes: buffer_capacity_bytes * rng.usize(1..=4),
            flush,
            checkpoint_interval: NEVER,
            key_hasher: Some(first_word_key),
            ..LogConfig::new("/sim")
        };
        Self {
            config,
            queues: rng.u32(1..=6),
            appenders: rng.usize(1..=5),
            appends_per_appender: rng.usize(10..=120),
            cycles: rng.usize(2..=5),
        }
    }

    fn describe(&self) -> String {
        let config = &self.config;
        format!(
            "segment {} KiB, buffer {} KiB, recent {} KiB, {:?}, {} queues, {} appenders x {} appends, {} cycles",
            config.segment_size_bytes / 1024,
            config.buffer_capacity_bytes / 1024,
            config.recent_buffers_bytes / 1024,
            config.flush,
            self.queues,
            self.appenders,
            self.appends_per_appender,
            self.cycles
        )
    }
}

/// A message length: mostly small, some of a few KiB.
fn message_length(rng: &mut fastrand::Rng, max: usize) -> usize {
    let length = match rng.u8(0..20) {
        0..=13 => rng.usize(0..300),
        14..=18 => rng.usize(300..2048),
        _ => rng.usize(2048..6000),
    };
    length.min(max)
}

type Shared = Rc<RefCell<Oracle>>;

async fn yield_now() {
    glommio::executor().yield_now().await;
}

/// One producer task: appends until its count is done or an append fails.
async fn appender<S: super::backend::Storage>(
    log: Rc<CommitLog<S>>,
    oracle: Shared,
    scenario: Rc<Scenario>,
    mut rng: fastrand::Rng,
    live: Rc<Cell<usize>>,
) {
    let max = scenario.config.record_size_bytes_max() - crate::constants::RECORD_HEADER_SIZE_BYTES;
    for _ in 0..scenario.appends_per_appender {
        if !append_one(&log, &oracle, &scenario, &mut rng, max).await {
            oracle.borrow_mut().stats.append_errors += 1;
            break;
        }
        if rng.u8(0..4) == 0 {
            yield_now().await;
        }
    }
    live.set(live.get() - 1);
}

/// Places one record, tells the oracle, waits for its acknowledgement.
async fn append_one<S: super::backend::Storage>(
    log: &CommitLog<S>,
    oracle: &Shared,
    scenario: &Scenario,
    rng: &mut fastrand::Rng,
    max: usize,
) -> bool {
    let queue_id = rng.u32(0..scenario.queues);
    let length = message_length(rng, max);
    let (seed, id) = {
        let mut oracle = oracle.borrow_mut();
        (oracle.seed, oracle.next_body_id())
    };
    let message = body(seed, id, length);
    let mut key_hashes = Vec::new();
    first_word_key(&message, &mut key_hashes);
    let request = AppendRequest {
        queue_id,
        indexed: true,
        message: &message,
        key_hashes: &key_hashes,
        ..AppendRequest::default()
    };
    let Ok(appended) = log.append_buffered(request).await else { return false };
    oracle.borrow_mut().place(queue_id, id, length, &appended);
    if log.wait_acknowledgeable(appended.end).await.is_err() {
        return false;
    }
    let flushed = log.positions().flushed;
    oracle.borrow_mut().acknowledge(scenario.config.flush, appended.end, flushed);
    true
}

/// Checkpoints now and then while appenders run.
async fn checkpointer<S: super::backend::Storage>(
    log: Rc<CommitLog<S>>,
    oracle: Shared,
    mut rng: fastrand::Rng,
    live: Rc<Cell<usize>>,
) {
    while live.get() > 0 {
        for _ in 0..rng.usize(5..300) {
            yield_now().await;
        }
        if log.checkpoint().await.is_err() {
            return;
        }
        oracle.borrow_mut().stats.checkpoints += 1;
    }
}

/// Runs appenders (and maybe a checkpointer) until a random crash point;
/// returns the log's durable position at that instant, with the power cut.
async fn run_until_crash<D: SimDisk>(
    log: Rc<CommitLog<Boot<D>>>,
    boot: &Boot<D>,
    oracle: &Shared,
    scenario: &Rc<Scenario>,
    rng: &mut fastrand::Rng,
) -> u64 {
    let live = Rc::new(Cell::new(scenario.appenders));
    let mut tasks = Vec::new();
    for _ in 0..scenario.appenders {
        let task_rng = fastrand::Rng::with_seed(rng.u64(..));
        let task = appender(log.clone(), oracle.clone(), scenario.clone(), task_rng, live.clone());
        tasks.push(glommio::spawn_local(task));
    }
    if rng.u8(0..3) > 0 {
        let task = checkpointer(log.clone(), oracle.clone(), fastrand::Rng::with_seed(rng.u64(..)), live.clone());
        tasks.push(glommio::spawn_local(task));
    }
    let placed_before = oracle.borrow().stats.placed;
    let target = rng.u64(0..=(scenario.appenders * scenario.appends_per_appender) as u64);
    while live.get() > 0 && oracle.borrow().stats.placed - placed_before < target {
        yield_now().await;
    }
    for _ in 0..rng.usize(0..40) {
        yield_now().await;
    }
    let flushed = log.positions().flushed;
    boot.cut_power();
    drop(tasks);
    drop(log);
    // Cancelled tasks are dropped on the executor's next turns.
    for _ in 0..4 {
        yield_now().await;
    }
    flushed
}

/// Power cut and damage; returns what recovery may do about them.
async fn crash<D: SimDisk>(disk: &D, scenario: &Scenario, oracle: &Shared, rng: &mut fastrand::Rng) -> Allowance {
    let cut = D::POWER_CUTS[rng.usize(0..D::POWER_CUTS.len())];
    disk.cut_power(cut, rng);
    disk.disarm(oracle.borrow().seed);
    let mut allowance =
        Allowance { garbled: cut == PowerCut::TornGarbled, faults: vec![format!("{cut:?}")], ..Allowance::default() };
    if rng.u8(0..5) < 2 {
        return allowance;
    }
    let harm = D::HARMS[rng.usize(0..D::HARMS.len())];
    let durable = oracle.borrow().durable_records();
    let damage = disk::harm(disk, &scenario.config, &durable, harm, rng).await;
    let Ok(Some(damage)) = damage else { return allowance };
    allowance.damaged = oracle.borrow().hit_by(&damage);
    let vouched = disk::vouched_position(disk, &scenario.config).await;
    if (damage.zeros || harm == Harm::Misdirect) && damage.from >= vouched {
        allowance.cut_from = Some(damage.from);
    }
    allowance.faults.push(format!("{harm:?} at {}..{} (vouched up to {vouched})", damage.from, damage.to));
    allowance
}

/// Opens the log after a crash and judges it; a refusal the rules allow is
/// followed by the operator's truncation.
async fn recover<D: SimDisk>(
    disk: &D,
    scenario: &Scenario,
    oracle: &Shared,
    allowance: &Allowance,
) -> Option<(Rc<CommitLog<Boot<D>>>, Boot<D>)> {
    let boot = Boot::new(disk.clone());
    let error = match CommitLog::open(boot.clone(), scenario.config.clone()).await {
        Ok(log) => {
            judge(&log, oracle, allowance, Judgement::Strict).await;
            return Some((Rc::new(log), boot));
        }
        Err(error) => error,
    };
    oracle.borrow_mut().refused(&error, allowance);
    if !matches!(error, LogError::Corrupt { .. }) || !allowance.may_refuse() {
        return None;
    }
    let config = LogConfig { truncate_corruption: true, ..scenario.config.clone() };
    match CommitLog::open(boot.clone(), config).await {
        Ok(log) => {
            judge(&log, oracle, allowance, Judgement::Truncated).await;
            let late = oracle.borrow().queues.keys().copied().find(|queue_id| log.base_offset(*queue_id) != 0);
            if let Some(queue_id) = late {
                let base = log.base_offset(queue_id);
                oracle.borrow_mut().violation(format!("after the truncation queue {queue_id} starts at {base}, not 0"));
                return None;
            }
            Some((Rc::new(log), boot))
        }
        Err(error) => {
            oracle.borrow_mut().violation(format!("the operator's truncation failed to open: {error}"));
            None
        }
    }
}

/// `Oracle::recovered` without holding the oracle across awaits of tasks
/// that also borrow it (there are none during a recovery).
async fn judge<S: super::backend::Storage>(
    log: &CommitLog<S>,
    oracle: &Shared,
    allowance: &Allowance,
    judgement: Judgement,
) {
    let mut taken = std::mem::take(&mut *oracle.borrow_mut());
    taken.recovered(log, allowance, judgement).await;
    *oracle.borrow_mut() = taken;
}

/// The story of a seed, told as it happens when one seed is replayed (a
/// panic loses what is kept for the failure message).
fn tell(story: &mut Vec<String>, line: String) {
    if std::env::var_os("RINGMQ_SIM_SEED").is_some() {
        eprintln!("{line}");
    }
    story.push(line);
}

/// What one seed did.
struct Outcome {
    stats: Stats,
    violations: Vec<String>,
    story: Vec<String>,
}

async fn simulate<D: SimDisk>(seed: u64, scenario: Scenario, mut rng: fastrand::Rng) -> Outcome {
    let scenario = Rc::new(scenario);
    let disk = D::fresh(seed);
    let oracle: Shared = Rc::new(RefCell::new(Oracle::new(seed)));
    let mut story = Vec::new();
    tell(&mut story, format!("{} disk, {}", D::NAME, scenario.describe()));
    let boot = Boot::new(disk.clone());
    let opened = CommitLog::open(boot.clone(), scenario.config.clone()).await;
    let mut running = match opened {
        Ok(log) => Some((Rc::new(log), boot)),
        Err(error) => {
            oracle.borrow_mut().violation(format!("a fresh log failed to open: {error}"));
            None
        }
    };
    for cycle in 0..scenario.cycles {
        let Some((log, boot)) = running.take() else { break };
        if let Some(faults) = disk.arm(seed, &mut rng) {
            tell(&mut story, format!("cycle {cycle}: {faults}"));
        }
        let flushed = run_until_crash(log, &boot, &oracle, &scenario, &mut rng).await;
        oracle.borrow_mut().crash(flushed);
        let allowance = crash(&disk, &scenario, &oracle, &mut rng).await;
        tell(&mut story, format!("cycle {cycle}: crash with {flushed} durable: {}", allowance.faults.join(", ")));
        running = recover(&disk, &scenario, &oracle, &allowance).await;
        if !oracle.borrow().violations.is_empty() {
            break;
        }
    }
    let oracle = std::mem::take(&mut *oracle.borrow_mut());
    Outcome { stats: oracle.stats, violations: oracle.violations, story }
}

fn run_seed(seed: u64) -> Outcome {
    let _clock = clock::SimulatedClock::start();
    let mut rng = fastrand::Rng::with_seed(seed);
    let scenario = Scenario::random(&mut rng);
    let faulty = rng.u8(0..10) < 3;
    let simulation = async move {
        if faulty {
            simulate::<FaultyStorage>(seed, scenario, rng).await
        } else {
            simulate::<MemoryStorage>(seed, scenario, rng).await
        }
    };
    // Setting up an executor costs more than a small seed: seeds share one
    // per thread. After a panic it is not put back, and a fresh one is made.
    let executor = EXECUTOR.with(|cached| cached.borrow_mut().take()).unwrap_or_else(|| {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("a glommio executor")
    });
    let outcome = executor.run(simulation);
    EXECUTOR.with(|cached| *cached.borrow_mut() = Some(executor));
    outcome
}

thread_local! {
    static EXECUTOR: RefCell<Option<glommio::LocalExecutor>> = const { RefCell::new(None) };
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(number) => Some(number),
        Err(_) => panic!("{name}={value} is not a number"),
    }
}

fn seeds() -> std::ops::Range<u64> {
    if let Some(seed) = env_u64("RINGMQ_SIM_SEED") {
        // A replay shows what recovery logs.
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        return seed..seed + 1;
    }
    let first = env_u64("RINGMQ_SIM_FIRST_SEED").unwrap_or(0);
    first..first + env_u64("RINGMQ_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)
}

fn replay(seed: u64) -> String {
    format!("replay: RINGMQ_SIM_SEED={seed} cargo test --lib storage::simulation -- --nocapture")
}

/// Runs one seed, turning a panic into a failure that names the seed.
fn checked_seed(seed: u64) -> Result<Stats, String> {
    match std::panic::catch_unwind(|| run_seed(seed)) {
        Ok(outcome) if outcome.violations.is_empty() => Ok(outcome.stats),
        Ok(outcome) => Err(format!(
            "seed {seed} FAILED\n  {}\n  violations:\n    {}\n  {}",
            outcome.story.join("\n  "),
            outcome.violations.join("\n    "),
            replay(seed)
        )),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_default();
            Err(format!("seed {seed} PANICKED: {why}\n  {}", replay(seed)))
        }
    }
}

#[test]
fn seeded_fault_simulation() {
    let started = Instant::now();
    let seeds = seeds();
    let mut totals = Stats::default();
    let mut failures = Vec::new();
    for seed in seeds.clone() {
        match checked_seed(seed) {
            Ok(stats) => totals.add(&stats),
            Err(failure) => {
                eprintln!("{failure}");
                failures.push(failure);
            }
        }
    }
    let count = seeds.end - seeds.start;
    eprintln!(
        "simulation: {count} seeds ({}..{}) in {:.1?}, {} failed; {totals:?}",
        seeds.start,
        seeds.end,
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed; the first:\n{}",
        failures.len(),
        failures.iter().take(FAILURES_SHOWN).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Seeds that failed a long run once, beyond the range a plain run covers:
/// a misdirected copy of a batch marker read as a write of its own, and
/// damaged padding taken for the end of the log (`found_bugs` has each on
/// its own); damaged padding at the end of a segment (122948); the oracle
/// counting a misplaced marker's claim (123419, 155276); a key file's new
/// blocks landing without the rewritten block before them (199180).
const SEEDS_THAT_FAILED_ONCE: [u64; 12] =
    [2426, 27959, 43717, 46382, 54670, 66808, 72866, 96851, 122948, 123419, 155276, 199180];

#[test]
fn seeds_that_failed_once_pass() {
    let failures: Vec<String> = SEEDS_THAT_FAILED_ONCE.iter().filter_map(|seed| checked_seed(*seed).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A replay is only worth something if a seed always does the same.
#[test]
fn a_seed_replays_identically() {
    for seed in [3, 17] {
        let (first, second) = (run_seed(seed), run_seed(seed));
        assert_eq!(first.stats, second.stats, "seed {seed} ran differently twice");
        assert_eq!(first.story, second.story, "seed {seed} ran differently twice");
    }
}
