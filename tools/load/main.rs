//! ringmq-load: latency and throughput of a ringmq broker, measured the way
//! the OpenMessaging Benchmark measures brokers. Producers and consumers run
//! in glommio executors (one per core given); latency is recorded with
//! HdrHistogram from the intended send time; at the end every acknowledged
//! message must have been received.

mod broker;
mod ledger;
mod report;
mod workers;

/// glibc's allocator, except for glommio's I/O memory (the raw disk probe's, as the broker's), which it backs with
/// huge pages (`ringmq::storage::io_memory`).
#[global_allocator]
static ALLOCATOR: ringmq::storage::io_memory::IoMemoryAllocator = ringmq::storage::io_memory::IoMemoryAllocator;

use clap::Parser;
use hdrhistogram::Histogram;
use report::{describe, percentiles, Interval};
use ringmq::client::Client;
use ringmq::protocol::{self, fb, verify, Kind};
use ringmq::storage::latency_histogram_us;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use workers::{ExecutorPlan, Shared, Totals, Workload, BODY_HEADER_BYTES};

const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// After the producers stop, how long consumers may go without progress.
const DRAIN_IDLE_MAX: Duration = Duration::from_secs(5);
const DRAIN_MAX: Duration = Duration::from_secs(120);
/// How long past the end producers may still wait for answers.
const PRODUCERS_OVERDUE_MAX: Duration = Duration::from_secs(60);
/// The goal for `--standby sync`: publish p50 with a standby at
/// most this many times the p50 of local durability alone.
const STANDBY_P50_GOAL: f64 = 1.5;

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.find(|c: char| c.is_ascii_alphabetic()).map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number.parse().map_err(|_| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("bad duration unit in {text:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Parser, Debug)]
#[command(name = "ringmq-load", about = "Latency and throughput benchmark for ringmq")]
struct Args {
    #[arg(long, default_value = "ringmq-load")]
    topic: String,
    /// Queues of each topic.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// Topics producers spread over, each with --queues queues: named
    /// --topic with 1, else --topic-0, --topic-1, ... (with --consumers 0).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    topics: u32,
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Each producer on connections of its own (one per shard), not the
    /// executor's shared connection per shard: producers = connections.
    #[arg(long)]
    connection_per_producer: bool,
    /// Consumers in one group; 0 for none.
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per produce request (at most 4000, what the broker takes).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=ringmq::constants::PRODUCE_MESSAGES_MAX as i64))]
    batch: u16,
    /// Requests in flight per producer.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Total messages per second; 0 for as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    /// Messages carry keys; a key's messages go to one queue.
    #[arg(long)]
    keyed: bool,
    /// Start a broker on a temporary data directory for the run.
    #[arg(long)]
    spawn_broker: bool,
    /// Shards of the spawned broker (default: one per CPU; with --standby,
    /// half the CPUs for each of the two brokers).
    #[arg(long)]
    broker_shards: Option<u32>,
    /// The spawned broker's `--spin-before-park-us` (default: its own, no
    /// spin). On a CPU with nothing else to run, a shard that spins through
    /// its disk write is spared the wake-up of a halted CPU per completion;
    /// with the generator on the same CPUs, the spin takes CPU from it.
    #[arg(long)]
    broker_spin_before_park_us: Option<u64>,
    #[arg(long, default_value = "127.0.0.1:9876")]
    broker: String,
    /// Where the raw disk probe runs when the broker is not spawned: the
    /// broker's data directory.
    #[arg(long, default_value = ".")]
    data_dir: std::path::PathBuf,
    /// Executors (cores) for the generator; default: one per CPU (with
    /// --standby, the primary's half of them).
    #[arg(long)]
    cores: Option<usize>,
    /// CPU of the first executor; the others follow (wrapping). Keeps the
    /// generator off the broker's cores when there are spare ones.
    #[arg(long, default_value_t = 0)]
    first_cpu: usize,
    /// CPU the raw disk probe runs on; default 0, where shard 0 of a broker
    /// with the default placement runs. The disk's completions reach one
    /// CPU sooner than another (a VM's single interrupt queue): the raw
    /// figure is measured where the broker's shard waits for its own.
    #[arg(long, default_value_t = 0)]
    probe_cpu: usize,
    /// Writes the run's summary to this file: one JSON object on one line.
    #[arg(long)]
    json: Option<String>,
    #[arg(long)]
    hdr_log: Option<String>,
    #[arg(long)]
    plot: Option<String>,
    /// Two phases of the same workload, each --warmup + --duration: plain
    /// sends, then transactional ones (a half and its commit per message);
    /// reports both and their ratio. One message per request.
    #[arg(long)]
    transactional: bool,
    /// With --spawn-broker: run the workload twice, against a primary
    /// without standby (local durability alone), then against a primary
    /// with --replication sync|async and a standby broker on this machine;
    /// reports both and their ratio.
    #[arg(long, value_enum)]
    standby: Option<broker::StandbyMode>,
    #[arg(long, default_value = "warn")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    match run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ringmq-load: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The raw disk figures of one run, measured before any broker starts.
#[derive(Clone, Copy, Debug)]
struct RawDisk {
    fsync_p50_us: u64,
    write_mb_s: f64,
}

/// Bytes the raw bandwidth probe writes (after zero-filling its file).
const RAW_BANDWIDTH_BYTES: u64 = 256 * 1024 * 1024;

/// The raw disk under `dir`, as the log uses it: 4 KiB O_DIRECT overwrite +
/// fdatasync latency, and sequential O_DIRECT write bandwidth (MB/s).
/// On a thread of its own: an executor pins the thread it is made on, and
/// this process's main thread (and the brokers it spawns, which inherit
/// its CPUs) must keep all of them.
fn raw_disk(dir: &std::path::Path, cpu: usize) -> Result<(Histogram<u64>, f64), String> {
    let probe_dir = dir.to_path_buf();
    // The shards' I/O memory, so the probe writes from the same pages.
    let probe = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
        .io_memory(ringmq::storage::io_memory::IO_MEMORY_BYTES)
        .name("raw-disk-probe")
        .spawn(move || async move {
            use ringmq::storage::disk_probe;
            let latency = disk_probe::fdatasync_latency(&probe_dir, 4096, 2000).await?;
            let in_flight = disk_probe::BANDWIDTH_WRITES_IN_FLIGHT;
            let bandwidth = disk_probe::write_bandwidth_mb_s(&probe_dir, RAW_BANDWIDTH_BYTES, in_flight).await?;
            std::io::Result::Ok((latency, bandwidth))
        })
        .map_err(|error| format!("raw disk probe on CPU {cpu}: {error}"))?;
    let measured = probe.join().map_err(|error| format!("raw disk probe on CPU {cpu}: {error}"))?;
    measured.map_err(|error| format!("raw disk probe in {}: {error}", dir.display()))
}

fn join_group(client: &Client, group: &str, topic: &str, consumers: u32) -> Result<Vec<protocol::Assignment>, String> {
    let coordinator = client.coordinator(group);
    let mut members = Vec::new();
    for _ in 0..consumers {
        let body = protocol::join_group_request(group, topic, "", "", 10_000);
        let answer = client.call(coordinator, Kind::JoinGroupRequest, &body).map_err(|error| error.to_string())?;
        let assignment = verify::<fb::GroupAssignment>(&answer).map_err(|error| error.to_string())?;
        members.push(protocol::read_assignment(assignment).member_id);
    }
    // Everyone joined: read the final assignment of each.
    members
        .iter()
        .map(|member| {
            let body = protocol::heartbeat_request(group, topic, member);
            let answer = client.call(coordinator, Kind::HeartbeatRequest, &body).map_err(|error| error.to_string())?;
            let assignment = verify::<fb::GroupAssignment>(&answer).map_err(|error| error.to_string())?;
            Ok(protocol::read_assignment(assignment))
        })
        .collect()
}

fn run(mut args: Args) -> Result<ExitCode, String> {
    if args.standby.is_some() {
        // A primary and its standby on one machine each take half of it, as
        // each would have a machine of its own (`standby_cpuset` puts the
        // standby on the other half); the generator shares the primary's
        // half, in both runs alike.
        let half = (broker::cpu_count() as u32 / 2).max(1);
        args.broker_shards = args.broker_shards.or(Some(half));
        args.cores = args.cores.or(Some(half as usize));
    }
    if args.size < BODY_HEADER_BYTES {
        return Err(format!("--size must be at least {BODY_HEADER_BYTES} bytes"));
    }
    if args.topics > 1 && args.consumers > 0 {
        return Err("--topics spreads producers over several topics; consumers read one: use --consumers 0".into());
    }
    if args.transactional && args.batch != 1 {
        // Every half has its own transaction and commit.
        return Err("--transactional sends one message per request: leave --batch at 1".into());
    }
    if args.standby.is_some() && !args.spawn_broker {
        return Err(
            "--standby starts a primary and a standby of its own: it needs --spawn-broker (it cannot add a standby to --broker)"
                .into(),
        );
    }
    if args.standby.is_some() && args.transactional {
        return Err("--standby compares plain sends: leave out --transactional".into());
    }
    if args.broker_spin_before_park_us.is_some() && (!args.spawn_broker || args.standby.is_some()) {
        return Err("--broker-spin-before-park-us sets the broker --spawn-broker starts (without --standby)".into());
    }
    // The raw disk is measured before a spawned broker starts, so the two do
    // not compete (a new broker zero-fills its first segments).
    let temp = if args.spawn_broker { Some(broker::SpawnedBroker::directory()?) } else { None };
    let probe_dir = temp.as_ref().map_or(args.data_dir.clone(), |temp| temp.path().to_path_buf());
    let (latency, write_mb_s) = raw_disk(&probe_dir, args.probe_cpu)?;
    let raw = RawDisk { fsync_p50_us: latency.value_at_quantile(0.5), write_mb_s };
    println!(
        "raw disk under {} (on CPU {}): 4 KiB O_DIRECT overwrite + fdatasync p50 {} us, p99 {} us; sequential \
         O_DIRECT write ({} x 1 MiB in flight) {write_mb_s:.0} MB/s",
        probe_dir.display(),
        args.probe_cpu,
        raw.fsync_p50_us,
        latency.value_at_quantile(0.99),
        ringmq::storage::disk_probe::BANDWIDTH_WRITES_IN_FLIGHT,
    );
    let cores = args.cores.unwrap_or_else(broker::cpu_count).max(1);
    let spawned = match (temp, args.standby) {
        (Some(temp), Some(mode)) => return compare_with_standby(&args, mode, temp, cores, raw),
        (Some(temp), None) => {
            Some(broker::SpawnedBroker::start(temp, args.broker_shards, args.broker_spin_before_park_us)?)
        }
        (None, _) => None,
    };
    let Some(broker) = spawned else {
        let (plain, transactional) = measure(&args, &args.broker, cores)?;
        return summarize(&args, &plain, transactional.as_ref(), None, raw, &[]);
    };
    let (plain, transactional, flush) = measure_spawned(&args, &[("broker", &broker)], cores)?;
    broker.stop();
    summarize(&args, &plain, transactional.as_ref(), None, raw, &flush)
}

/// A broker's flush rounds during a run, by the name it has in the report.
type BrokerFlush = Vec<(String, broker::FlushRounds)>;

/// `measure` against the first of `brokers` (all spawned), with each
/// broker's flush rounds during the run (warm-up included).
fn measure_spawned(
    args: &Args,
    brokers: &[(&str, &broker::SpawnedBroker)],
    cores: usize,
) -> Result<(PhaseRun, Option<PhaseRun>, BrokerFlush), String> {
    // One wait for the brokers' published figures to catch up, before each
    // round of scrapes, not one per scrape.
    std::thread::sleep(broker::METRICS_REFRESH);
    let before = brokers.iter().map(|(_, broker)| broker.flush_rounds()).collect::<Result<Vec<_>, _>>()?;
    let address = brokers.first().map(|(_, broker)| broker.address.as_str()).ok_or("no broker to measure")?;
    let (plain, transactional) = measure(args, address, cores)?;
    std::thread::sleep(broker::METRICS_REFRESH);
    // A failed scrape now costs the flush lines, not the finished run.
    let mut flush = Vec::new();
    for ((name, broker), before) in brokers.iter().zip(before) {
        match broker.flush_rounds() {
            Ok(after) => flush.push((name.to_string(), after.since(before))),
            Err(error) => eprintln!("ringmq-load: no flush rounds for {name}: {error}"),
        }
    }
    Ok((plain, transactional, flush))
}

/// `--standby`: the same workload against a primary alone, then against a
/// primary with a standby; each run on brokers of its own, started fresh.
fn compare_with_standby(
    args: &Args,
    mode: broker::StandbyMode,
    temp: tempfile::TempDir,
    cores: usize,
    raw: RawDisk,
) -> Result<ExitCode, String> {
    let shards = args.broker_shards.map_or_else(|| "one per CPU".to_string(), |shards| shards.to_string());
    println!("=== run 1 of 2: local: a primary without standby (local durability alone), {shards} shards per broker");
    let local_broker = broker::SpawnedBroker::start(temp, args.broker_shards, None)?;
    let (local, _, mut flush) = measure_spawned(args, &[("local", &local_broker)], cores)?;
    local_broker.stop();
    println!(
        "=== run 2 of 2: {0} standby: a primary with --replication {0} and a standby broker following it",
        mode.name()
    );
    let (primary, standby_broker) = broker::SpawnedBroker::start_pair(args.broker_shards, mode)?;
    println!("standby {} connected to every shard of the primary {}", standby_broker.address, primary.address);
    let pair = [("primary", &primary), ("standby", &standby_broker)];
    let (standby, _, pair_flush) = measure_spawned(args, &pair, cores)?;
    flush.extend(pair_flush);
    // The standby first: it would otherwise warn about its primary leaving.
    standby_broker.stop();
    primary.stop();
    summarize(args, &local, None, Some((mode, &standby)), raw, &flush)
}

/// Creates the topic on the broker at `address` and runs the workload
/// against it: the plain phase, then the transactional one if asked.
fn measure(args: &Args, address: &str, cores: usize) -> Result<(PhaseRun, Option<PhaseRun>), String> {
    let client = Client::connect(address).map_err(|error| error.to_string())?;
    let names: Vec<String> = match args.topics {
        1 => vec![args.topic.clone()],
        topics => (0..topics).map(|index| format!("{}-{index}", args.topic)).collect(),
    };
    let mut layouts = Vec::with_capacity(names.len());
    for name in &names {
        let (layout, _) = client.create_topic(name, args.queues).map_err(|error| format!("topic {name}: {error}"))?;
        layouts.push(layout);
    }
    let endpoints: Vec<String> = (0..client.shard_count())
        .map(|shard| {
            let port = address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).unwrap_or(9876);
            let host = address.rsplit_once(':').map_or("127.0.0.1", |(host, _)| host);
            format!("{host}:{}", port + shard as u16)
        })
        .collect();
    println!(
        "workload: {} producers ({}), {} consumers, {} topic(s) x {} queues, {} B, batch {}, window {}, rate {}, {:?} (+{:?} warm-up), {cores} executors, broker {address}",
        args.producers, if args.connection_per_producer { "a connection each per shard" } else { "sharing one connection per executor and shard" },
        args.consumers, args.topics, args.queues, args.size, args.batch, args.window,
        if args.rate > 0.0 { format!("{} msg/s", args.rate) } else { "max".into() }, args.duration, args.warmup
    );
    let target = Target { client: &client, topics: &layouts, endpoints: &endpoints, cores };
    let plain = run_phase(args, &target, false)?;
    let transactional = if args.transactional {
        println!("--- transactional phase: a half and its commit per message");
        Some(run_phase(args, &target, true)?)
    } else {
        None
    };
    Ok((plain, transactional))
}

/// The broker and topic the phases run against.
struct Target<'a> {
    client: &'a Client,
    /// The topics producers send to; consumers read the first.
    topics: &'a [protocol::TopicLayout],
    endpoints: &'a [String],
    cores: usize,
}

/// What one phase measured.
struct PhaseRun {
    shared: Arc<Shared>,
    totals: Totals,
    intervals: Vec<Interval>,
    started: SystemTime,
}

/// One run of the workload (warm-up and duration) with its own consumer
/// group and producer ids: a later phase's consumers read the topic from
/// the start and skip an earlier phase's messages by their producer id.
fn run_phase(args: &Args, target: &Target<'_>, transactional: bool) -> Result<PhaseRun, String> {
    let cores = target.cores;
    let group = format!("ringmq-load-{}-{:08x}", std::process::id(), fastrand::u32(..));
    let assignments = join_group(target.client, &group, &args.topic, args.consumers)?;
    let start = Instant::now() + Duration::from_millis(200);
    let shared = Arc::new(Shared {
        start,
        warmup_end: start + args.warmup,
        produce_end: start + args.warmup + args.duration,
        stop_consumers: AtomicBool::new(false),
        producers_running: AtomicUsize::new(args.producers as usize),
        ledger: Mutex::new(ledger::Ledger::default()),
        published: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        not_send_ok: Mutex::new(BTreeMap::new()),
        failed_requests: Mutex::new(BTreeMap::new()),
        interval: Mutex::new((latency_histogram_us(), latency_histogram_us())),
    });
    let workload = Workload {
        topic: args.topic.clone(),
        group: group.clone(),
        size: args.size,
        batch: usize::from(args.batch),
        window: args.window.max(1),
        rate_per_producer: args.rate / f64::from(args.producers.max(1)),
        keyed: args.keyed,
        producer_id_base: fastrand::u64(1..u64::MAX / 2),
        transactional,
        connection_per_producer: args.connection_per_producer,
    };
    let cpus = broker::cpu_count();
    let mut handles = Vec::new();
    for executor in 0..cores {
        let plan = ExecutorPlan {
            producers: (0..args.producers).filter(|producer| *producer as usize % cores == executor).collect(),
            consumers: assignments
                .iter()
                .enumerate()
                .filter(|(consumer, _)| consumer % cores == executor)
                .map(|(consumer, assignment)| (consumer as u32, assignment.clone()))
                .collect(),
            topics: target.topics.to_vec(),
            endpoints: target.endpoints.to_vec(),
            workload: workload.clone(),
        };
        let shared = shared.clone();
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed((args.first_cpu + executor) % cpus))
            .name(&format!("ringmq-load-{executor}"))
            .spawn(move || workers::run_executor(plan, shared))
            .map_err(|error| error.to_string())?;
        handles.push(handle);
    }
    let started = SystemTime::now();
    let intervals = watch(&shared, args);
    let mut totals = Totals::new();
    for handle in handles {
        totals.add(&handle.join().map_err(|error| error.to_string())?);
    }
    Ok(PhaseRun { shared, totals, intervals, started })
}

/// Prints a line every 10 s while producing, then drains the consumers.
fn watch(shared: &Shared, args: &Args) -> Vec<Interval> {
    let mut intervals = Vec::new();
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut drain_started = None;
    let mut last_progress = (Instant::now(), 0u64);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = Instant::now();
        let producing = shared.producers_running.load(Ordering::SeqCst) > 0;
        if now.duration_since(last.0) >= PROGRESS_EVERY || (!producing && drain_started.is_none()) {
            let (published, consumed) =
                (shared.published.load(Ordering::Relaxed), shared.consumed.load(Ordering::Relaxed));
            let seconds = now.duration_since(last.0).as_secs_f64();
            let (publish, e2e) = {
                let mut interval = shared.interval.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                (
                    std::mem::replace(&mut interval.0, latency_histogram_us()),
                    std::mem::replace(&mut interval.1, latency_histogram_us()),
                )
            };
            println!(
                "publish {:>9.0} msg/s  consume {:>9.0} msg/s  backlog {:>8}  publish p50 {} us p99 {} us max {} us",
                (published - last.1) as f64 / seconds,
                (consumed - last.2) as f64 / seconds,
                published.saturating_sub(consumed),
                publish.value_at_quantile(0.5),
                publish.value_at_quantile(0.99),
                publish.max()
            );
            intervals.push(Interval {
                start: last.0.saturating_duration_since(shared.start),
                length: now.duration_since(last.0),
                publish,
                e2e,
            });
            last = (now, published, consumed);
        }
        if producing {
            // A broker that stopped answering must not hang the run.
            if now > shared.produce_end + PRODUCERS_OVERDUE_MAX {
                eprintln!("ringmq-load: producers still waiting for answers {PRODUCERS_OVERDUE_MAX:?} after the end; giving up");
                std::process::exit(2);
            }
            continue;
        }
        let started = *drain_started.get_or_insert_with(|| {
            last_progress = (now, 0);
            now
        });
        let verdict = shared.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).verdict();
        if verdict.received != last_progress.1 {
            last_progress = (now, verdict.received);
        }
        // Done when every acknowledged message arrived (messages stored but
        // not acknowledged do not count either way).
        let drained = args.consumers == 0 || verdict.lost == 0;
        if drained || now.duration_since(last_progress.0) > DRAIN_IDLE_MAX || now.duration_since(started) > DRAIN_MAX {
            shared.stop_consumers.store(true, Ordering::SeqCst);
            return intervals;
        }
    }
}

/// At a fixed rate, a schedule lag p99 above this means the generator ran
/// behind its own schedule: its lateness is in every latency (as the
/// coordinated-omission correction wants), but it then says more about the
/// generator's CPUs than about the broker.
const SCHEDULE_LAG_P99_BEHIND_US: u64 = 1_000;

/// One phase's figures: printed (each line after `prefix`) and as JSON.
struct PhaseSummary {
    json: serde_json::Value,
    publish_rate: f64,
    lost: u64,
    not_send_ok: u64,
}

fn summarize_phase(args: &Args, phase: &PhaseRun, raw: RawDisk, prefix: &str) -> PhaseSummary {
    let (shared, totals) = (&phase.shared, &phase.totals);
    let verdict = shared.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).verdict();
    let seconds = args.duration.as_secs_f64();
    let publish_rate = totals.publish.len() as f64 * f64::from(args.batch) / seconds;
    let consume_rate = totals.e2e.len() as f64 / seconds;
    let publish_mb_s = publish_rate * args.size as f64 / 1e6;
    let errors = shared.errors.load(Ordering::Relaxed);
    let publish_p50 = totals.publish.value_at_quantile(0.5);
    println!("{prefix}publish: {publish_rate:.0} msg/s, {publish_mb_s:.1} MB/s; latency {}", describe(&totals.publish));
    println!("{prefix}end-to-end: {consume_rate:.0} msg/s; latency {}", describe(&totals.e2e));
    println!("{prefix}send delay (intended -> actual): {}", describe(&totals.send_delay));
    let lag_p99 = totals.schedule_lag.value_at_quantile(0.99);
    let generator_behind = args.rate > 0.0 && lag_p99 > SCHEDULE_LAG_P99_BEHIND_US;
    if generator_behind {
        println!(
            "{prefix}the generator ran behind its schedule (its own lag p99 {lag_p99} us before any wait for \
             window room, above {SCHEDULE_LAG_P99_BEHIND_US} us): the latencies include its lateness; give it \
             CPUs of its own (--cores, --first-cpu) or a lower --rate"
        );
    }
    let raw_p50 = raw.fsync_p50_us;
    println!(
        "{prefix}publish p50 / raw fdatasync p50 = {:.2} ({publish_p50} us / {raw_p50} us)",
        publish_p50 as f64 / raw_p50.max(1) as f64
    );
    let bandwidth_share = publish_mb_s / raw.write_mb_s.max(f64::MIN_POSITIVE);
    println!(
        "{prefix}publish MB/s / raw write MB/s = {bandwidth_share:.3} ({publish_mb_s:.1} MB/s / {:.0} MB/s)",
        raw.write_mb_s
    );
    if args.consumers == 0 {
        // Nothing was read back: no message can be called lost.
        println!(
            "{prefix}verification: {} acknowledged, not read back (--consumers 0), {errors} send errors",
            verdict.acknowledged
        );
    } else {
        println!(
            "{prefix}verification: {} acknowledged, {} received, {} lost, {} duplicates, {} received unacknowledged, {errors} send errors",
            verdict.acknowledged, verdict.received, verdict.lost, verdict.duplicates, verdict.unacknowledged_received
        );
    }
    let not_send_ok = shared.not_send_ok.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    let not_send_ok_total: u64 = not_send_ok.values().sum();
    let failed_requests = shared.failed_requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    if !failed_requests.is_empty() {
        let kinds: Vec<String> = failed_requests.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
        println!(
            "{prefix}requests that got no answer (their messages are among the send errors): {}",
            kinds.join(", ")
        );
    }
    let by_status: Vec<String> = not_send_ok.iter().map(|(status, count)| format!("{status} {count}")).collect();
    println!(
        "{prefix}answered other than SEND_OK (not acknowledged, among the send errors): {not_send_ok_total} messages{}",
        if by_status.is_empty() { String::new() } else { format!(" ({})", by_status.join(", ")) }
    );
    let lost = if args.consumers == 0 { 0 } else { verdict.lost };
    let json = json!({
        "publish_rate": publish_rate.round(),
        "consume_rate": consume_rate.round(),
        "publish_mb_s": (publish_mb_s * 10.0).round() / 10.0,
        "publish_latency_us": percentiles(&totals.publish),
        "e2e_latency_us": percentiles(&totals.e2e),
        "send_delay_us": percentiles(&totals.send_delay),
        "schedule_lag_us": percentiles(&totals.schedule_lag),
        "generator_behind": generator_behind,
        "acknowledged": verdict.acknowledged,
        "received": verdict.received,
        "lost": lost,
        "duplicates": verdict.duplicates,
        "unacknowledged_received": verdict.unacknowledged_received,
        "errors": errors,
        "publish_p50_to_raw_fsync_p50": ((publish_p50 as f64 / raw_p50.max(1) as f64) * 100.0).round() / 100.0,
        "publish_mb_s_to_raw_write_mb_s": (bandwidth_share * 1e6).round() / 1e6,
        "not_send_ok": not_send_ok_total,
        "not_send_ok_by_status": not_send_ok,
        "failed_requests_by_kind": failed_requests,
    });
    PhaseSummary { json, publish_rate, lost, not_send_ok: not_send_ok_total }
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    ((numerator / denominator.max(1.0)) * 100.0).round() / 100.0
}

/// The plain phase's figures at the top level of the JSON (as without
/// `--transactional`); with it, the transactional phase under
/// `transactional` and the costs under `transactional_to_plain`. With
/// `--standby`, `plain` is the run without standby (`"run": "local"`), the
/// run with one is under `standby` and the costs under `standby_to_local`.
fn summarize(
    args: &Args,
    plain: &PhaseRun,
    transactional: Option<&PhaseRun>,
    standby: Option<(broker::StandbyMode, &PhaseRun)>,
    raw: RawDisk,
    flush: &[(String, broker::FlushRounds)],
) -> Result<ExitCode, String> {
    let seconds = args.duration.as_secs_f64();
    println!("---");
    if standby.is_some() {
        println!("--- local: without standby (local durability alone)");
    }
    let plain_summary = summarize_phase(args, plain, raw, "");
    let mut summary = plain_summary.json.clone();
    summary["raw_fsync_p50_us"] = json!(raw.fsync_p50_us);
    summary["raw_write_mb_s"] = json!(raw.write_mb_s.round());
    summary["raw_probe_cpu"] = json!(args.probe_cpu);
    summary["workload"] = json!({
        "producers": args.producers, "consumers": args.consumers, "queues": args.queues, "topics": args.topics,
        "connection_per_producer": args.connection_per_producer, "size": args.size,
        "batch": args.batch, "window": args.window, "rate": args.rate, "duration_s": seconds, "keyed": args.keyed,
        "transactional": args.transactional,
        "standby": args.standby.map(|mode| mode.name()),
        "broker_spin_before_park_us": args.broker_spin_before_park_us,
    });
    let mut lost = plain_summary.lost;
    if let Some(phase) = transactional {
        println!("--- transactional (half + commit per message)");
        let tx_summary = summarize_phase(args, phase, raw, "transactional ");
        let quantile = |run: &PhaseRun, quantile: f64| run.totals.publish.value_at_quantile(quantile) as f64;
        let p50 = ratio(quantile(phase, 0.5), quantile(plain, 0.5));
        let p99 = ratio(quantile(phase, 0.99), quantile(plain, 0.99));
        let throughput = ratio(tx_summary.publish_rate, plain_summary.publish_rate);
        println!(
            "transactional / plain: publish p50 {p50:.2} ({} us / {} us), p99 {p99:.2}, throughput {throughput:.2} ({:.0} / {:.0} msg/s)",
            quantile(phase, 0.5), quantile(plain, 0.5), tx_summary.publish_rate, plain_summary.publish_rate
        );
        summary["transactional"] = tx_summary.json;
        summary["transactional_to_plain"] = json!({"publish_p50": p50, "publish_p99": p99, "throughput": throughput});
        lost += tx_summary.lost;
    }
    if let Some((mode, phase)) = standby {
        let name = mode.name();
        println!("--- {name} standby: a primary with --replication {name} and a standby");
        let standby_summary = summarize_phase(args, phase, raw, &format!("{name} standby "));
        let quantile = |run: &PhaseRun, quantile: f64| run.totals.publish.value_at_quantile(quantile) as f64;
        let p50 = ratio(quantile(phase, 0.5), quantile(plain, 0.5));
        let p99 = ratio(quantile(phase, 0.99), quantile(plain, 0.99));
        let throughput = ratio(standby_summary.publish_rate, plain_summary.publish_rate);
        // No sample on either side (nothing answered SEND_OK): no ratio to
        // speak of, and no goal met.
        let measured = !phase.totals.publish.is_empty() && !plain.totals.publish.is_empty();
        let goal_met = measured && p50 <= STANDBY_P50_GOAL;
        println!("--- {name} standby / local (side by side)");
        println!("{:<22} {:>12} {:>12} {:>14}", "run", "publish p50", "publish p99", "publish msg/s");
        for (label, run, rate) in [
            ("local", plain, plain_summary.publish_rate),
            (format!("{name} standby").as_str(), phase, standby_summary.publish_rate),
        ] {
            println!("{label:<22} {:>9} us {:>9} us {rate:>14.0}", quantile(run, 0.5), quantile(run, 0.99));
        }
        println!(
            "{name} standby / local: publish p50 {p50:.2} ({} us / {} us), p99 {p99:.2}, throughput {throughput:.2} ({:.0} / {:.0} msg/s); goal p50 <= {STANDBY_P50_GOAL:.1}: {}",
            quantile(phase, 0.5),
            quantile(plain, 0.5),
            standby_summary.publish_rate,
            plain_summary.publish_rate,
            match (measured, goal_met) {
                (false, _) => "no samples to compare",
                (true, true) => "met",
                (true, false) => "not met",
            }
        );
        if standby_summary.not_send_ok > 0 {
            eprintln!(
                "ringmq-load: {} messages of the {name} standby run were answered other than SEND_OK (see its report)",
                standby_summary.not_send_ok
            );
        }
        summary["run"] = json!("local");
        summary["standby"] = standby_summary.json;
        summary["standby"]["run"] = json!(format!("{name}-standby"));
        summary["standby"]["mode"] = json!(name);
        summary["standby_to_local"] = json!({
            "publish_p50": p50, "publish_p99": p99, "throughput": throughput,
            "publish_p50_goal": STANDBY_P50_GOAL, "publish_p50_goal_met": goal_met,
        });
        lost += standby_summary.lost;
    }
    if !flush.is_empty() {
        println!("--- flush rounds inside the broker(s) during the run, warm-up included (its disk time per round)");
        for (name, rounds) in flush {
            let per_round = rounds.records as f64 / rounds.rounds.max(1) as f64;
            println!(
                "{name:<8} {:>9} rounds, mean {:>6.0} us = {:.2} x raw fdatasync p50, {per_round:.1} records each",
                rounds.rounds,
                rounds.mean_us(),
                ratio(rounds.mean_us(), raw.fsync_p50_us as f64),
            );
            summary["broker_flush"][name] = rounds.json();
        }
    }
    if let Some(path) = &args.json {
        // One object per line, as every `--json` of the project writes.
        let mut line = serde_json::to_vec(&summary).map_err(|error| error.to_string())?;
        line.push(b'\n');
        std::fs::write(path, line).map_err(|error| format!("{path}: {error}"))?;
    }
    // The interval log and the plot are the plain phase's, as without
    // `--transactional`; the plot adds the transactional publish curve.
    if let Some(path) = &args.hdr_log {
        report::write_hdr_log(path, &plain.intervals, plain.started)?;
    }
    if let Some(path) = &args.plot {
        let mut series =
            vec![("publish", "#1f77b4", &plain.totals.publish), ("end-to-end", "#d62728", &plain.totals.e2e)];
        if let Some(phase) = transactional {
            series.push(("transactional publish", "#2ca02c", &phase.totals.publish));
        }
        if let Some((_, phase)) = standby {
            series.push(("publish with standby", "#ff7f0e", &phase.totals.publish));
        }
        report::write_svg(path, &series)?;
    }
    if lost > 0 {
        eprintln!("ringmq-load: {lost} acknowledged messages were never received");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
