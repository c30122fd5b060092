//! The broker: one shard per core, each a pinned glommio executor with its
//! own listener (`base_port + shard`), commit log and queues. `run` starts
//! them and returns after a SIGTERM or SIGINT once every shard has finished
//! its requests in flight, flushed and checkpointed.

mod admin;
mod checker;
mod clock;
mod connection;
pub mod cpuset;
mod cross;
pub mod data_dir;
mod dedup;
mod dedup_snapshot;
pub mod delay_levels;
mod delayed;
pub mod disk_guard;
mod due_delivery;
mod failures;
mod frame_budget;
mod groups;
mod handlers;
mod kept_state;
mod listeners;
mod long_poll;
mod message_query;
mod metrics;
mod metrics_http;
mod metrics_text;
mod offsets;
mod outgoing;
mod placement;
mod producer_links;
mod replay;
pub mod replication;
pub(crate) mod requests;
mod send_back;
mod shard;
mod snapshot_file;
mod start_gate;
mod systemd;
mod timer_records;
mod timers;
mod topics;
mod transactions;
mod transactions_snapshot;

use crate::constants::{
    CHECKPOINT_INTERVAL_MS_DEFAULT, CONNECTIONS_MAX_DEFAULT, CONNECTION_IDLE_TIMEOUT_MS_DEFAULT,
    CONNECTION_WRITE_TIMEOUT_MS_DEFAULT, DELAY_MAX_MS_DEFAULT, DISK_MAX_USED_PERCENT_DEFAULT, FRAME_BODY_BYTES_MAX,
    GROUPS_MAX_DEFAULT, INCOMPLETE_FRAMES_BYTES_MAX_DEFAULT, INCOMPLETE_FRAMES_BYTES_MIN, INDEX_CACHE_BYTES_DEFAULT,
    IN_FLIGHT_BYTES_MAX_DEFAULT, IN_FLIGHT_BYTES_MIN, IN_FLIGHT_MAX_DEFAULT, PRODUCERS_MAX_DEFAULT,
    PRODUCER_IDLE_EXPIRY_MS_DEFAULT, PRODUCER_IDLE_EXPIRY_MS_MIN, SEGMENT_SIZE_BYTES_DEFAULT, SHARDS_MAX,
    SHUTDOWN_DRAIN_MAX, SYNC_FLUSH_TIMEOUT_MS_DEFAULT, TOPICS_MAX_DEFAULT, TOPICS_MAX_LIMIT,
    TRANSACTION_CHECK_INTERVAL_MS_DEFAULT, TRANSACTION_CHECK_MAX_DEFAULT, TRANSACTION_TIMEOUT_MS_DEFAULT,
};
use crate::protocol::ShardEndpoint;
use crate::storage::backend::DmaStorage;
use crate::storage::io_memory::IO_MEMORY_BYTES;
use crate::storage::{CommitLog, FlushMode, LogConfig, Retention};
use cross::CrossEnds;
use glommio::{LocalExecutorBuilder, Placement};
use serde::{Deserialize, Serialize};
use shard::{Shard, ShardParts};
use start_gate::StartGate;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

pub const CLUSTER_FILE: &str = "cluster.json";
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub host: String,
    pub base_port: u16,
    /// `None`: what the data directory says, else one per CPU.
    pub shards: Option<u32>,
    pub flush: FlushMode,
    pub sync_flush_timeout: Duration,
    pub segment_size_bytes: u64,
    pub retention: Retention,
    /// How often each shard writes its index files and a checkpoint.
    pub checkpoint_interval: Duration,
    /// Bound of each shard's cache of index-file pages.
    pub index_cache_bytes: usize,
    pub connections_max: usize,
    pub in_flight_max: usize,
    /// Bytes of request bodies one connection may have in flight.
    pub in_flight_bytes_max: usize,
    pub frame_body_bytes_max: usize,
    /// A connection with no complete frame and nothing in flight this long
    /// is closed.
    pub connection_idle_timeout: Duration,
    /// A write of answers that does not finish this long (the peer does not
    /// read them) closes the connection.
    pub connection_write_timeout: Duration,
    /// Bytes one shard's connections may hold in incomplete frames; a
    /// connection that would pass it is closed.
    pub incomplete_frames_bytes_max: usize,
    /// Executors spin this long for new work before they sleep: less wake-up
    /// latency for more CPU. Zero (the default) sleeps at once.
    pub spin_before_park: Duration,
    /// The CPUs the shards run on, in shard order; `None`: shard i on CPU i.
    pub cpuset: Option<cpuset::CpuSet>,
    /// A producer that stored nothing this long is forgotten.
    pub producer_idle_expiry: Duration,
    /// Producers one shard tracks at most.
    pub producers_max: usize,
    /// Topics the broker holds at most (internal ones included).
    pub topics_max: usize,
    /// Groups (on a topic each) one coordinator shard holds at most.
    pub groups_max: usize,
    /// A half message with no outcome is checked back once it is this old
    /// (unless the message sets its own check-immunity time).
    pub transaction_timeout: Duration,
    /// How often each shard's checker looks for halves to check back.
    pub transaction_check_interval: Duration,
    /// Check-backs delivered to a live producer before the broker rolls the
    /// half back itself (listed as discarded).
    pub transaction_check_max: u32,
    /// The delays a message's delay level and a retry's back-off name.
    pub delay_levels: delay_levels::DelayLevels,
    /// A delayed message due farther ahead than this is refused.
    pub delay_max: Duration,
    /// Above this share of its filesystem used, a shard refuses produce
    /// (`disk_guard`).
    pub disk_max_used_percent: u8,
    /// `HOST:PORT` of the Prometheus endpoint (`metrics_http`); `None`: off.
    pub metrics_listen: Option<String>,
    /// Primary or standby, and what a primary waits for (`replication`).
    pub replication: replication::ReplicationSettings,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("ringmq-data"),
            host: "127.0.0.1".into(),
            base_port: 9876,
            shards: None,
            flush: FlushMode::Sync,
            sync_flush_timeout: Duration::from_millis(SYNC_FLUSH_TIMEOUT_MS_DEFAULT),
            segment_size_bytes: SEGMENT_SIZE_BYTES_DEFAULT,
            retention: Retention::default(),
            checkpoint_interval: Duration::from_millis(CHECKPOINT_INTERVAL_MS_DEFAULT),
            index_cache_bytes: INDEX_CACHE_BYTES_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            in_flight_bytes_max: IN_FLIGHT_BYTES_MAX_DEFAULT,
            frame_body_bytes_max: FRAME_BODY_BYTES_MAX,
            connection_idle_timeout: Duration::from_millis(CONNECTION_IDLE_TIMEOUT_MS_DEFAULT),
            connection_write_timeout: Duration::from_millis(CONNECTION_WRITE_TIMEOUT_MS_DEFAULT),
            incomplete_frames_bytes_max: INCOMPLETE_FRAMES_BYTES_MAX_DEFAULT,
            spin_before_park: Duration::ZERO,
            cpuset: None,
            producer_idle_expiry: Duration::from_millis(PRODUCER_IDLE_EXPIRY_MS_DEFAULT),
            producers_max: PRODUCERS_MAX_DEFAULT,
            topics_max: TOPICS_MAX_DEFAULT,
            groups_max: GROUPS_MAX_DEFAULT,
            transaction_timeout: Duration::from_millis(TRANSACTION_TIMEOUT_MS_DEFAULT),
            transaction_check_interval: Duration::from_millis(TRANSACTION_CHECK_INTERVAL_MS_DEFAULT),
            transaction_check_max: TRANSACTION_CHECK_MAX_DEFAULT,
            delay_levels: delay_levels::DelayLevels::default(),
            delay_max: Duration::from_millis(DELAY_MAX_MS_DEFAULT),
            disk_max_used_percent: DISK_MAX_USED_PERCENT_DEFAULT,
            metrics_listen: None,
            replication: replication::ReplicationSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {detail}")]
    DataDir { path: PathBuf, detail: String },
    #[error("shard {shard}: {detail}")]
    Shard { shard: u32, detail: String },
    #[error("data directory {path} is in use by another broker ({}); stop it or choose another data directory", describe_holder(*holder))]
    DataDirLocked { path: PathBuf, holder: Option<u32> },
    #[error("cannot listen on {address}: the port is still in use after {waited_ms} ms (another broker or process listens there)")]
    PortInUse { address: String, waited_ms: u64 },
    #[error("cannot listen on {address}: {detail}")]
    Listen { address: String, detail: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("metrics endpoint: {0}")]
    Metrics(String),
}

fn describe_holder(holder: Option<u32>) -> String {
    holder.map_or_else(|| "pid unknown".to_string(), |pid| format!("pid {pid}"))
}

impl ServerConfig {
    /// Refuses settings that cannot work, rather than bending them quietly.
    pub fn validate(&self) -> Result<(), ServerError> {
        let refuse = |detail: String| Err(ServerError::Config(detail));
        if self.shards.is_some_and(|shards| !(1..=SHARDS_MAX).contains(&shards)) {
            return refuse(format!("shards must be 1 to {SHARDS_MAX}"));
        }
        if let Some(cpuset) = &self.cpuset {
            cpuset.check_allowed().map_err(ServerError::Config)?;
        }
        if !(1..=TOPICS_MAX_LIMIT).contains(&self.topics_max) {
            return refuse(format!("topics_max {} must be 1 to {TOPICS_MAX_LIMIT}", self.topics_max));
        }
        if self.groups_max == 0 {
            return refuse("groups_max must be at least 1".into());
        }
        if self.connections_max == 0 {
            return refuse("connections_max must be at least 1".into());
        }
        if self.in_flight_max == 0 {
            return refuse("in_flight_max must be at least 1".into());
        }
        if self.in_flight_bytes_max < IN_FLIGHT_BYTES_MIN {
            return refuse(format!(
                "in_flight_bytes_max {} must be at least {IN_FLIGHT_BYTES_MIN}",
                self.in_flight_bytes_max
            ));
        }
        if self.connection_idle_timeout.is_zero() {
            return refuse("connection_idle_timeout_ms must be at least 1".into());
        }
        if self.connection_write_timeout.is_zero() {
            return refuse("connection_write_timeout_ms must be at least 1".into());
        }
        if self.incomplete_frames_bytes_max < INCOMPLETE_FRAMES_BYTES_MIN {
            return refuse(format!(
                "incomplete_frames_bytes_max {} must be at least {INCOMPLETE_FRAMES_BYTES_MIN} (two of the largest frame)",
                self.incomplete_frames_bytes_max
            ));
        }
        if self.producers_max == 0 {
            return refuse("producers_max must be at least 1".into());
        }
        if self.producer_idle_expiry < Duration::from_millis(PRODUCER_IDLE_EXPIRY_MS_MIN) {
            return refuse(format!(
                "producer_idle_expiry_ms {} must be at least {PRODUCER_IDLE_EXPIRY_MS_MIN}: a producer forgotten while it may still resend would have its resends stored twice",
                self.producer_idle_expiry.as_millis()
            ));
        }
        if self.transaction_timeout.is_zero() {
            return refuse("transaction_timeout_ms must be at least 1".into());
        }
        if self.transaction_check_interval.is_zero() {
            return refuse("transaction_check_interval_ms must be at least 1".into());
        }
        if self.delay_max.is_zero() {
            return refuse("delay_max_ms must be at least 1".into());
        }
        if self.transaction_check_max == 0 {
            return refuse("transaction_check_max must be at least 1".into());
        }
        if self.checkpoint_interval.is_zero() {
            return refuse("checkpoint_interval_ms must be at least 1".into());
        }
        if !(1..=100).contains(&self.disk_max_used_percent) {
            return refuse(format!("disk_max_used_percent {} must be 1 to 100", self.disk_max_used_percent));
        }
        if let Some(address) = &self.metrics_listen {
            let port = address.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                return refuse(format!("metrics_listen {address:?} is not HOST:PORT"));
            }
        }
        if matches!(self.flush, FlushMode::Async { interval } if interval.is_zero()) {
            return refuse("flush_interval_ms must be at least 1".into());
        }
        self.replication.validate().map_err(ServerError::Config)?;
        self.log_config(self.data_dir.join("shard-0"))
            .validate()
            .map_err(|error| ServerError::Config(error.to_string()))
    }

    /// The commit-log settings of the shard kept in `dir`.
    fn log_config(&self, dir: PathBuf) -> LogConfig {
        LogConfig {
            flush: self.flush,
            segment_size_bytes: self.segment_size_bytes,
            retention: self.retention,
            checkpoint_interval: self.checkpoint_interval,
            index_cache_bytes: self.index_cache_bytes,
            key_hasher: Some(crate::wire::stored_key_hashes),
            ..LogConfig::new(dir)
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Cluster {
    shards: u32,
}

fn cpu_count() -> u32 {
    std::thread::available_parallelism().map_or(1, |count| count.get() as u32)
}

/// Reads or creates the record of the shard count, fixed at creation.
fn settle_shard_count(config: &ServerConfig) -> Result<u32, ServerError> {
    let data_error = |detail: String| ServerError::DataDir { path: config.data_dir.clone(), detail };
    let path = config.data_dir.join(CLUSTER_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let cluster: Cluster =
                serde_json::from_slice(&bytes).map_err(|error| data_error(format!("{CLUSTER_FILE}: {error}")))?;
            match config.shards {
                Some(asked) if asked != cluster.shards => Err(data_error(format!(
                    "was created with {} shards; --shards {asked} cannot change that",
                    cluster.shards
                ))),
                _ => Ok(cluster.shards),
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let shards = config.shards.unwrap_or_else(|| cpu_count().min(SHARDS_MAX));
            let bytes = serde_json::to_vec(&Cluster { shards }).map_err(|error| data_error(error.to_string()))?;
            write_durably(&path, &bytes).map_err(|error| data_error(error.to_string()))?;
            Ok(shards)
        }
        Err(error) => Err(data_error(error.to_string())),
    }
}

/// Write-temp, fsync, rename, fsync-dir, before any executor runs.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Runs the broker until SIGTERM or SIGINT.
pub fn run(config: ServerConfig) -> Result<(), ServerError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|error| ServerError::Shard { shard: 0, detail: format!("signal handler: {error}") })?;
    }
    run_until(config, stop)
}

/// Runs the broker until `stop` becomes true.
pub fn run_until(mut config: ServerConfig, stop: Arc<AtomicBool>) -> Result<(), ServerError> {
    config.validate()?;
    let marker = replication::promoted_marker::PromotedMarker::load(&config.data_dir).map_err(ServerError::Config)?;
    if let Some(marker) = marker.filter(|marker| marker.apply(&mut config.replication)) {
        tracing::warn!(
            epoch = marker.epoch,
            replaced = %marker.replaced_primary,
            "this broker was promoted: it starts as primary although its configuration says standby of the primary it replaced; update the configuration"
        );
    }
    // Held until every shard has stopped: no second broker on these logs.
    let _lock = data_dir::DataDirLock::acquire(&config.data_dir)?;
    let shard_count = settle_shard_count(&config)?;
    let endpoints = (0..shard_count)
        .map(|shard| {
            let (host, port) = listeners::shard_address(&config.host, config.base_port, shard)?;
            Ok(ShardEndpoint { shard, host, port })
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    // Ports are reserved now (bound: a port another process listens on
    // fails here) but listened on only once every shard has recovered: until
    // then a client's connect is refused, which it retries, instead of
    // waiting unanswered. Two brokers starting at once can both reserve a
    // port; the second then fails at `listen`.
    let mut reserved = Vec::new();
    for endpoint in &endpoints {
        reserved.push(listeners::reserve(&endpoint.host, endpoint.port)?);
    }
    let metrics_listener = config.metrics_listen.as_deref().map(metrics_http::bind).transpose()?;
    let board = metrics_listener.as_ref().map(|_| Arc::new(metrics::MetricsBoard::new(shard_count)));
    let gate = Arc::new(StartGate::new(shard_count));
    let readiness = Arc::new(systemd::Readiness::new(shard_count));
    let cpus = cpu_count();
    let mut handles = Vec::new();
    let channels = cross::cross_channels(shard_count as usize);
    for ((index, ends), port) in channels.into_iter().enumerate().zip(reserved) {
        let shard = index as u32;
        let (config, endpoints, stop, gate) = (config.clone(), endpoints.clone(), stop.clone(), gate.clone());
        let (readiness, board) = (readiness.clone(), board.clone());
        let cpu = config.cpuset.as_ref().map_or((shard % cpus) as usize, |cpuset| cpuset.cpu_for(shard));
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu)).io_memory(IO_MEMORY_BYTES);
        if !config.spin_before_park.is_zero() {
            builder = builder.spin_before_park(config.spin_before_park);
        }
        let handle = builder
            .name(&format!("ringmq-shard-{shard}"))
            .spawn(move || async move {
                let span = tracing::info_span!("shard", id = shard, cpu);
                let started =
                    ShardStart { id: shard, shard_count, config, endpoints, ends, port, gate, readiness, board };
                let result = run_shard(started, stop.clone()).instrument(span).await;
                if result.is_err() {
                    // The other shards stop too: no broker with a shard missing.
                    stop.store(true, Ordering::SeqCst);
                }
                result
            })
            .map_err(|error| ServerError::Shard { shard, detail: format!("starting the executor: {error}") })?;
        handles.push((shard, handle));
    }
    let metrics_stop = Arc::new(AtomicBool::new(false));
    let metrics_thread = match (metrics_listener, &board) {
        (Some(listener), Some(board)) => Some(
            metrics_http::start(listener, board.clone(), metrics_stop.clone())
                .map_err(|error| ServerError::Metrics(format!("starting its thread: {error}"))),
        ),
        _ => None,
    };
    let mut first_error = None;
    if let Some(Err(error)) = &metrics_thread {
        tracing::error!(%error, "no metrics endpoint; stopping");
        stop.store(true, Ordering::SeqCst);
    }
    for (shard, handle) in handles {
        let result = handle.join().map_err(|error| ServerError::Shard { shard, detail: format!("executor: {error}") });
        if let Err(error) = result.and_then(|result| result) {
            tracing::error!(%error, "shard failed");
            stop.store(true, Ordering::SeqCst);
            first_error.get_or_insert(error);
        }
    }
    metrics_stop.store(true, Ordering::SeqCst);
    match metrics_thread.map(|started| started.map(std::thread::JoinHandle::join)) {
        Some(Ok(Err(_))) => tracing::error!("the metrics thread panicked"),
        Some(Err(error)) => {
            first_error.get_or_insert(error);
        }
        Some(Ok(Ok(()))) | None => {}
    }
    first_error.map_or(Ok(()), Err)
}

/// What a shard starts from.
struct ShardStart {
    id: u32,
    shard_count: u32,
    config: ServerConfig,
    endpoints: Vec<ShardEndpoint>,
    ends: CrossEnds,
    port: listeners::ReservedPort,
    gate: Arc<StartGate>,
    /// Tells systemd once every shard listens, and when the broker stops.
    readiness: Arc<systemd::Readiness>,
    /// Where the shard publishes its figures (`--metrics-listen`).
    board: Option<Arc<metrics::MetricsBoard>>,
}

async fn run_shard(start: ShardStart, stop: Arc<AtomicBool>) -> Result<(), ServerError> {
    let ShardStart { id, shard_count, config, endpoints, ends, port, gate, readiness, board } = start;
    let recovering = gate.watch();
    let shard_error = |detail: String| ServerError::Shard { shard: id, detail };
    let dir = config.data_dir.join(format!("shard-{id}"));
    let mut log_config = config.log_config(dir.clone());
    if let Some(primary) = &config.replication.standby_of {
        replication::settle_history(primary, (id, shard_count), &mut log_config, &stop).await.map_err(shard_error)?;
    }
    let log = CommitLog::open(DmaStorage, log_config).await.map_err(|error| shard_error(error.to_string()))?;
    // Nothing may go before the snapshots on disk are known.
    log.set_retention_floor(0);
    let topics = shard::load_topics(&DmaStorage, &config).await.map_err(shard_error)?;
    let kept = kept_state::rebuild(id, &config, &dir, &log, &topics).await.map_err(shard_error)?;
    let mut epochs = replication::epochs::recover(&DmaStorage, &dir, &log).await.map_err(shard_error)?;
    if replication::epochs::restart_needs_epoch(&config.replication, &log) {
        // A sync primary ships writes before they are durable: a crash may
        // have lost bytes its standby holds. The new epoch tells it where
        // this log ends now.
        let epoch = epochs.current().epoch + 1;
        (epochs, _) = replication::epochs::begin(&DmaStorage, &dir, &log, &epochs, epoch).await.map_err(shard_error)?;
        tracing::info!(epoch, position = log.positions().flushed, "a sync primary's restart starts a new epoch");
    }
    let (peers, inboxes) = cross::connect(ends).await;
    let config = Rc::new(config);
    let (clock, _ticking) = clock::CoarseClock::start();
    let shard = Rc::new(Shard::new(ShardParts {
        clock,
        id,
        shard_count,
        config: config.clone(),
        endpoints,
        dir,
        log,
        topics,
        offsets: kept.offsets,
        producers: kept.producers,
        producers_floor: kept.producers_floor,
        transactions: kept.transactions,
        transactions_snapshot_floor: kept.transactions_snapshot_floor,
        timers: kept.timers,
        peers,
        epochs,
    }));
    shard.set_floor(&shard.offsets_floor, kept.offsets_floor);
    for (index, inbox) in inboxes.into_iter().enumerate() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(message) = inbox.recv().await {
                let from = inbox_peer(index, id);
                shard.on_cross(from, message).await;
            }
        })
        .detach();
    }
    recovering.recovered();
    if !gate.all_recovered().await {
        tracing::info!("another shard failed to start; stopping");
        return shard.log.close().await.map_err(|error| shard_error(format!("closing the log: {error}")));
    }
    // Before the first connection: a shard started on a full disk refuses
    // the first produce already.
    disk_guard::check(&shard);
    let listener = port.listen()?;
    let address = listener.local_addr().map_or_else(|_| "?".to_string(), |address| address.to_string());
    let listener = listeners::into_glommio(listener);
    let mut tasks = vec![
        glommio::spawn_local(disk_guard::watch(shard.clone())),
        glommio::spawn_local(metrics::publish(shard.clone(), board)),
    ];
    match shard.replica.standby_of() {
        // A standby's log takes only its primary's bytes: the tasks that
        // append records of their own (check-backs, due timers) or write
        // snapshots of state it does not keep up to date do not run until
        // a promotion starts them.
        Some(primary) => tasks.push(glommio::spawn_local(replication::standby::follow(shard.clone(), primary))),
        None => tasks.extend(primary_tasks(&shard)),
    }
    tracing::info!(%address, role = ?shard.config.replication.role, epoch = shard.replica.epoch(), "shard listening");
    let accepting = glommio::spawn_local(accept_loop(shard.clone(), listener));
    readiness.shard_listening();
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
    }
    readiness.stopping();
    shutdown(shard, accepting, tasks).await
}

/// The peer shard behind inbox `index` of shard `id` (inboxes skip `id`).
fn inbox_peer(index: usize, id: u32) -> u32 {
    if (index as u32) < id {
        index as u32
    } else {
        index as u32 + 1
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: glommio::net::TcpListener) {
    let connections = Rc::new(glommio::sync::Semaphore::new(shard.config.connections_max as u64));
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = connections.try_acquire_static_permit(1) else {
            tracing::warn!("connection limit reached; refusing a connection");
            drop(stream);
            continue;
        };
        let shard = shard.clone();
        glommio::spawn_local(async move {
            shard.connections.set(shard.connections.get() + 1);
            connection::serve(shard.clone(), stream).await;
            shard.connections.set(shard.connections.get().saturating_sub(1));
            drop(permit);
        })
        .detach();
    }
}

/// The tasks only a primary runs: they append records of their own.
pub(crate) fn primary_tasks(shard: &Rc<Shard>) -> Vec<glommio::Task<()>> {
    let mut tasks = vec![
        glommio::spawn_local(background_work(shard.clone())),
        glommio::spawn_local(checker::run(shard.clone())),
        glommio::spawn_local(due_delivery::run(shard.clone())),
    ];
    // In sync mode: releases to consumers what no request waits for.
    tasks.extend(replication::release::start(shard));
    tasks
}

/// Group expiry, idle producers and the snapshots of state kept in the log.
async fn background_work(shard: Rc<Shard>) {
    let mut last_snapshot = std::time::Instant::now();
    let mut producers_due = dedup_snapshot::Cadence::default();
    loop {
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let rebalanced = shard.coordinator.borrow_mut().expire(std::time::Instant::now());
        for fence in rebalanced {
            tracing::info!(group = %fence.group, topic = %fence.topic, generation = fence.generation, "group member expired; rebalanced");
            shard.announce_fence(fence).await;
        }
        // With the log's checkpoints: a restart replays about as much of
        // the log for this state as the log's own recovery scans.
        if last_snapshot.elapsed() >= shard.config.checkpoint_interval {
            last_snapshot = std::time::Instant::now();
            expire_idle_producers(&shard);
            write_offsets_snapshot(&shard).await;
            if producers_due.is_due() {
                let bytes = write_producers_snapshot(&shard).await;
                producers_due.written(bytes);
            }
            write_transactions_snapshot(&shard).await;
        }
    }
}

fn expire_idle_producers(shard: &Shard) {
    let idle_ms = shard.config.producer_idle_expiry.as_millis() as u64;
    let expired = shard.dedup.borrow_mut().expire(crate::storage::now_us() / 1000, idle_ms);
    if expired > 0 {
        tracing::info!(expired, idle_ms, "forgot idle producers");
    }
}

async fn write_offsets_snapshot(shard: &Shard) {
    // Only durable commits may be folded in: after a crash the log keeps no
    // more than that (it matters in async flush mode).
    let durable = shard.log.durable_end_offset(offsets::OFFSETS_QUEUE_ID);
    let covered = shard.commits_in_flight.borrow().keys().next().copied().unwrap_or(durable).min(durable);
    let bytes = shard.offsets.borrow().snapshot(covered);
    // Taken before the write: later appends land beyond it anyway.
    let floor = offsets::retention_floor(&shard.log, covered).await;
    match (offsets::write_snapshot(&shard.storage, &shard.dir, &bytes).await, floor) {
        // The offset records below `covered` now live in the snapshot too:
        // retention may delete the segments that held them.
        (Ok(()), Ok(floor)) => shard.set_floor(&shard.offsets_floor, floor),
        (Ok(()), Err(error)) => {
            tracing::warn!(%error, "cannot find the retention floor; retention keeps the previous one")
        }
        (Err(error), _) => tracing::warn!(%error, "offsets snapshot failed; start-up will replay more"),
    }
}

/// Snapshots the producer table as of the durable position, so that start-up
/// replays only the messages after it and retention may delete before it.
/// Returns the snapshot's size in bytes (0 when it failed).
async fn write_producers_snapshot(shard: &Shard) -> u64 {
    // One synchronous step: the position, every queue's durable end and
    // the windows listed (`encode_in_steps`) agree.
    let covered = shard.log.positions().flushed;
    let queue_offsets = shard
        .owned_queue_ids()
        .into_iter()
        .chain([offsets::DELAY_QUEUE_ID])
        .map(|id| (id, shard.log.durable_end_offset(id)))
        .collect();
    let bytes = dedup_snapshot::encode_in_steps(&shard.dedup, covered, &queue_offsets).await;
    match dedup_snapshot::write(&shard.storage, &shard.dir, &bytes).await {
        Ok(()) => {
            shard.set_floor(&shard.producers_floor, covered);
            bytes.len() as u64
        }
        Err(error) => {
            tracing::warn!(%error, "producer snapshot failed; start-up will replay more");
            0 // tried again at the next interval
        }
    }
}

/// Snapshots the transaction table as of the durable position (see
/// `transactions_snapshot` for what it holds), so that start-up replays
/// only the records after it and retention may delete settled halves.
async fn write_transactions_snapshot(shard: &Shard) {
    // One synchronous step: the position, every queue's durable end and the
    // appends in flight agree.
    let covered = shard.log.positions().flushed;
    let mut floor = covered;
    let mut queue_offsets: std::collections::HashMap<u32, u64> = transactions_snapshot::TRANSACTION_QUEUES
        .into_iter()
        .chain(shard.owned_queue_ids())
        .map(|id| (id, shard.log.durable_end_offset(id)))
        .collect();
    for (queue_id, offset, position) in shard.transaction_appends.entries() {
        let from = queue_offsets.entry(queue_id).or_insert(offset);
        *from = (*from).min(offset);
        floor = floor.min(position);
    }
    let bytes = transactions_snapshot::encode(&shard.transactions.borrow(), covered, floor, &queue_offsets);
    match transactions_snapshot::write(&shard.storage, &shard.dir, &bytes).await {
        Ok(()) => {
            shard.transactions_snapshot_floor.set(floor);
            transactions::update_floor(shard);
        }
        Err(error) => tracing::warn!(%error, "transactions snapshot failed; start-up will replay more"),
    }
}

async fn shutdown(
    shard: Rc<Shard>,
    accepting: glommio::Task<()>,
    background: Vec<glommio::Task<()>>,
) -> Result<(), ServerError> {
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    drop(accepting);
    drop(background);
    drop(shard.replica.primary_tasks.take());
    shard.shutting_down.set(true);
    let started = std::time::Instant::now();
    while shard.requests_in_flight.get() > 0 && started.elapsed() < SHUTDOWN_DRAIN_MAX {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
    }
    // A standby's tables were rebuilt at its start and do not follow what
    // it replicated since: a snapshot of them would hide records from the
    // next start's replay.
    if !shard.replica.is_standby() {
        write_offsets_snapshot(&shard).await;
        write_producers_snapshot(&shard).await;
        write_transactions_snapshot(&shard).await;
    }
    shard
        .log
        .close()
        .await
        .map_err(|error| ServerError::Shard { shard: shard.id, detail: format!("closing the log: {error}") })?;
    tracing::info!("shard stopped cleanly");
    Ok(())
}
