//! `ringmq serve`: flags over an optional TOML config file over defaults.

use crate::constants::FLUSH_INTERVAL_MS_DEFAULT;
use crate::server::cpuset::CpuSet;
use crate::server::delay_levels::DelayLevels;
use crate::server::replication::{Replication, Role};
use crate::server::{self, ServerConfig};
use crate::storage::{FlushMode, Retention};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, Debug, ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Flush {
    /// Answer a produce after the fdatasync that covers it.
    Sync,
    /// Answer after the write; fdatasync every flush_interval_ms.
    Async,
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Host and base port: shard i listens on port + i.
    #[arg(long)]
    listen: Option<String>,
    /// Shards (one executor each); fixed when the data directory is created.
    #[arg(long)]
    shards: Option<u32>,
    #[arg(long, value_enum)]
    flush: Option<Flush>,
    /// With --flush async: how often each shard fdatasyncs (default 10).
    #[arg(long)]
    flush_interval_ms: Option<u64>,
    /// A produce not durable within this long is answered
    /// FLUSH_DISK_TIMEOUT (default 5000).
    #[arg(long)]
    sync_flush_timeout_ms: Option<u64>,
    /// Bytes of each commit-log segment file (default 1073741824).
    #[arg(long)]
    segment_size_bytes: Option<u64>,
    /// Segments older than this are deleted (default: kept).
    #[arg(long)]
    retention_hours: Option<u64>,
    /// Oldest segments are deleted while a shard's log holds more than this
    /// (default: kept).
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// Connections each shard accepts at most (default 10000).
    #[arg(long)]
    connections_max: Option<usize>,
    /// Requests a connection may have in flight (default 1024).
    #[arg(long)]
    in_flight_max: Option<usize>,
    /// Request bytes a connection may have in flight (default 67108864).
    #[arg(long)]
    in_flight_bytes_max: Option<usize>,
    /// How often each shard writes its index files and a checkpoint
    /// (default 2000; at least 1).
    #[arg(long)]
    checkpoint_interval_ms: Option<u64>,
    /// Bound of each shard's cache of index-file pages, in bytes (default
    /// 67108864; at least 32768).
    #[arg(long)]
    index_cache_bytes: Option<usize>,
    /// A producer that stored nothing on a queue this long is forgotten
    /// there (its retries are then stored again); default 604800000 (7
    /// days), at least 300000.
    #[arg(long)]
    producer_idle_expiry_ms: Option<u64>,
    /// Producers each shard tracks at most; a new one past it is refused
    /// with TooManyProducers (default 100000).
    #[arg(long)]
    producers_max: Option<usize>,
    /// Topics the broker holds at most, groups' %RETRY% and %DLQ% topics
    /// included; one more is refused with LimitReached (default 10000; 1 to
    /// 1000000).
    #[arg(long)]
    topics_max: Option<usize>,
    /// Groups (each on one topic) a coordinator shard holds at most; a new
    /// one past it is refused with LimitReached (default 10000; at least 1).
    #[arg(long)]
    groups_max: Option<usize>,
    /// A half message with no outcome is checked back with its producer
    /// group once it is this old (default 6000; at least 1).
    #[arg(long)]
    transaction_timeout_ms: Option<u64>,
    /// How often each shard looks for half messages to check back (default
    /// 30000; at least 1).
    #[arg(long)]
    transaction_check_interval_ms: Option<u64>,
    /// Check-backs delivered to a live producer before the broker rolls the
    /// half message back and lists it as discarded (default 15; at least 1).
    #[arg(long)]
    transaction_check_max: Option<u32>,
    /// The delay levels (level N is the Nth), e.g. "1s 5s 10s 30s 1m"; units
    /// ms, s, m, h, d (default RocketMQ's 18 levels, 1s to 2h).
    #[arg(long)]
    delay_levels: Option<String>,
    /// A delayed message due farther ahead is refused (default 3456000000,
    /// 40 days).
    #[arg(long)]
    delay_max_ms: Option<u64>,
    /// Above this share of the data directory's filesystem used, produce
    /// is refused with DiskFull (retriable) until space returns (default
    /// 90; 1 to 100).
    #[arg(long)]
    disk_max_used_percent: Option<u8>,
    /// HOST:PORT to serve Prometheus metrics on (GET /metrics); off unless
    /// set.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// A connection with no complete frame and nothing in flight this long
    /// is closed (default 600000; at least 1).
    #[arg(long)]
    connection_idle_timeout_ms: Option<u64>,
    /// A connection whose answers cannot be written this long (the peer
    /// does not read them) is closed (default 30000; at least 1).
    #[arg(long)]
    connection_write_timeout_ms: Option<u64>,
    /// Bytes each shard's connections may hold in incomplete frames; a
    /// connection that would pass it is closed (default 268435456; at least
    /// twice the largest frame).
    #[arg(long)]
    incomplete_frames_bytes_max: Option<usize>,
    /// primary (default) takes produce; standby follows the primary named
    /// by --standby-of and refuses every change.
    #[arg(long, value_enum)]
    role: Option<Role>,
    /// On a primary: sync answers a produce once its standby has it durable
    /// too; async lets the standby follow in the background; off (default).
    #[arg(long, value_enum)]
    replication: Option<Replication>,
    /// On a standby: the primary's base address, HOST:PORT.
    #[arg(long)]
    standby_of: Option<String>,
    /// On a sync primary: a produce the standby has not confirmed within
    /// this long is answered FLUSH_SLAVE_TIMEOUT (default 5000).
    #[arg(long)]
    sync_standby_timeout_ms: Option<u64>,
    /// Shard executors spin this long (microseconds) for new work before
    /// they sleep: less wake-up latency for more CPU (default 0).
    #[arg(long)]
    spin_before_park_us: Option<u64>,
    /// CPUs the shards run on, in shard order, e.g. "1,3-4" (wrapping when
    /// there are more shards); default: shard i on CPU i.
    #[arg(long)]
    cpuset: Option<String>,
    /// TOML file with any of: data_dir, listen, shards, flush,
    /// flush_interval_ms, sync_flush_timeout_ms, checkpoint_interval_ms,
    /// index_cache_bytes, producer_idle_expiry_ms, producers_max, topics_max, groups_max,
    /// transaction_timeout_ms, transaction_check_interval_ms,
    /// transaction_check_max, delay_levels, delay_max_ms,
    /// disk_max_used_percent, metrics_listen, segment_size_bytes, retention_hours, retention_bytes,
    /// connections_max, in_flight_max, in_flight_bytes_max,
    /// connection_idle_timeout_ms, connection_write_timeout_ms,
    /// incomplete_frames_bytes_max, spin_before_park_us, role, replication,
    /// sync_standby_timeout_ms, standby_of, cpuset.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    shards: Option<u32>,
    flush: Option<Flush>,
    flush_interval_ms: Option<u64>,
    sync_flush_timeout_ms: Option<u64>,
    checkpoint_interval_ms: Option<u64>,
    index_cache_bytes: Option<usize>,
    producer_idle_expiry_ms: Option<u64>,
    producers_max: Option<usize>,
    topics_max: Option<usize>,
    groups_max: Option<usize>,
    transaction_timeout_ms: Option<u64>,
    transaction_check_interval_ms: Option<u64>,
    transaction_check_max: Option<u32>,
    delay_levels: Option<String>,
    delay_max_ms: Option<u64>,
    disk_max_used_percent: Option<u8>,
    metrics_listen: Option<String>,
    segment_size_bytes: Option<u64>,
    retention_hours: Option<u64>,
    retention_bytes: Option<u64>,
    connections_max: Option<usize>,
    in_flight_max: Option<usize>,
    in_flight_bytes_max: Option<usize>,
    connection_idle_timeout_ms: Option<u64>,
    connection_write_timeout_ms: Option<u64>,
    incomplete_frames_bytes_max: Option<usize>,
    spin_before_park_us: Option<u64>,
    role: Option<Role>,
    replication: Option<Replication>,
    sync_standby_timeout_ms: Option<u64>,
    standby_of: Option<String>,
    cpuset: Option<String>,
}

fn split_listen(listen: &str) -> Result<(String, u16), String> {
    let (host, port) = listen.rsplit_once(':').ok_or_else(|| format!("--listen {listen:?} is not HOST:PORT"))?;
    let port = port.parse().map_err(|_| format!("--listen {listen:?}: bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

pub fn config(args: ServeArgs) -> Result<ServerConfig, String> {
    let file: ConfigFile = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
            toml::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?
        }
        None => ConfigFile::default(),
    };
    let mut config = ServerConfig::default();
    if let Some(dir) = args.data_dir.or(file.data_dir) {
        config.data_dir = dir;
    }
    let (host, base_port) = split_listen(&args.listen.or(file.listen).unwrap_or_else(|| super::BROKER_DEFAULT.into()))?;
    (config.host, config.base_port) = (host, base_port);
    config.shards = args.shards.or(file.shards);
    config.flush = match args.flush.or(file.flush).unwrap_or(Flush::Sync) {
        Flush::Sync => FlushMode::Sync,
        Flush::Async => FlushMode::Async {
            interval: Duration::from_millis(
                args.flush_interval_ms.or(file.flush_interval_ms).unwrap_or(FLUSH_INTERVAL_MS_DEFAULT),
            ),
        },
    };
    if let Some(ms) = args.sync_flush_timeout_ms.or(file.sync_flush_timeout_ms) {
        config.sync_flush_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.checkpoint_interval_ms.or(file.checkpoint_interval_ms) {
        config.checkpoint_interval = Duration::from_millis(ms);
    }
    if let Some(bytes) = args.index_cache_bytes.or(file.index_cache_bytes) {
        config.index_cache_bytes = bytes;
    }
    if let Some(ms) = args.producer_idle_expiry_ms.or(file.producer_idle_expiry_ms) {
        config.producer_idle_expiry = Duration::from_millis(ms);
    }
    if let Some(max) = args.producers_max.or(file.producers_max) {
        config.producers_max = max;
    }
    if let Some(max) = args.topics_max.or(file.topics_max) {
        config.topics_max = max;
    }
    if let Some(max) = args.groups_max.or(file.groups_max) {
        config.groups_max = max;
    }
    if let Some(ms) = args.transaction_timeout_ms.or(file.transaction_timeout_ms) {
        config.transaction_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.transaction_check_interval_ms.or(file.transaction_check_interval_ms) {
        config.transaction_check_interval = Duration::from_millis(ms);
    }
    if let Some(max) = args.transaction_check_max.or(file.transaction_check_max) {
        config.transaction_check_max = max;
    }
    if let Some(levels) = args.delay_levels.or(file.delay_levels) {
        config.delay_levels = DelayLevels::parse(&levels).map_err(|error| format!("delay_levels: {error}"))?;
    }
    if let Some(ms) = args.delay_max_ms.or(file.delay_max_ms) {
        config.delay_max = Duration::from_millis(ms);
    }
    if let Some(percent) = args.disk_max_used_percent.or(file.disk_max_used_percent) {
        config.disk_max_used_percent = percent;
    }
    config.metrics_listen = args.metrics_listen.or(file.metrics_listen);
    if let Some(bytes) = args.segment_size_bytes.or(file.segment_size_bytes) {
        config.segment_size_bytes = bytes;
    }
    config.retention = Retention {
        max_age: args.retention_hours.or(file.retention_hours).map(|hours| Duration::from_secs(hours * 3600)),
        max_total_bytes: args.retention_bytes.or(file.retention_bytes),
    };
    if let Some(max) = args.connections_max.or(file.connections_max) {
        config.connections_max = max;
    }
    if let Some(bytes) = args.in_flight_bytes_max.or(file.in_flight_bytes_max) {
        config.in_flight_bytes_max = bytes;
    }
    if let Some(ms) = args.connection_idle_timeout_ms.or(file.connection_idle_timeout_ms) {
        config.connection_idle_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.connection_write_timeout_ms.or(file.connection_write_timeout_ms) {
        config.connection_write_timeout = Duration::from_millis(ms);
    }
    if let Some(bytes) = args.incomplete_frames_bytes_max.or(file.incomplete_frames_bytes_max) {
        config.incomplete_frames_bytes_max = bytes;
    }
    if let Some(cpuset) = args.cpuset.or(file.cpuset) {
        config.cpuset = Some(CpuSet::parse(&cpuset)?);
    }
    if let Some(spin) = args.spin_before_park_us.or(file.spin_before_park_us) {
        config.spin_before_park = Duration::from_micros(spin);
    }
    if let Some(max) = args.in_flight_max.or(file.in_flight_max) {
        config.in_flight_max = max;
    }
    config.replication.role = args.role.or(file.role).unwrap_or_default();
    config.replication.replication = args.replication.or(file.replication).unwrap_or_default();
    if let Some(ms) = args.sync_standby_timeout_ms.or(file.sync_standby_timeout_ms) {
        config.replication.sync_standby_timeout = Duration::from_millis(ms);
    }
    config.replication.standby_of = args.standby_of.or(file.standby_of);
    config.validate().map_err(|error| error.to_string())?;
    Ok(config)
}

pub fn run(args: ServeArgs) -> Result<ExitCode, String> {
    let config = config(args)?;
    tracing::info!(data_dir = %config.data_dir.display(), host = %config.host, base_port = config.base_port, flush = ?config.flush, "starting ringmq");
    server::run(config).map_err(|error| error.to_string())?;
    tracing::info!("ringmq stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_parses_into_its_settings() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/ringmq.toml");
        let args = ServeArgs { config: Some(path), ..ServeArgs::default() };
        let config = config(args).expect("deploy/ringmq.toml");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/ringmq"));
        assert_eq!((config.host.as_str(), config.base_port), ("127.0.0.1", 9876));
        assert_eq!(config.flush, FlushMode::Sync);
        assert_eq!(config.sync_flush_timeout, Duration::from_secs(5));
        assert_eq!(config.in_flight_bytes_max, 64 * 1024 * 1024);
        assert_eq!(config.checkpoint_interval, Duration::from_millis(2000));
        assert_eq!(config.index_cache_bytes, 64 * 1024 * 1024);
        assert_eq!(config.producer_idle_expiry, Duration::from_millis(604_800_000));
        assert_eq!(config.producers_max, 100_000);
        assert_eq!(config.topics_max, 10_000);
        assert_eq!(config.groups_max, 10_000);
        assert_eq!(config.transaction_timeout, Duration::from_millis(6000));
        assert_eq!(config.transaction_check_interval, Duration::from_millis(30_000));
        assert_eq!(config.transaction_check_max, 15);
        assert_eq!(config.delay_levels, DelayLevels::default());
        assert_eq!(config.delay_max, Duration::from_millis(3_456_000_000));
        assert_eq!(config.disk_max_used_percent, 90);
        assert_eq!(config.metrics_listen.as_deref(), Some("127.0.0.1:9400"));
        assert_eq!(config.connection_idle_timeout, Duration::from_millis(600_000));
        assert_eq!(config.connection_write_timeout, Duration::from_millis(30_000));
        assert_eq!(config.incomplete_frames_bytes_max, 256 * 1024 * 1024);
        assert_eq!(config.replication, crate::server::replication::ReplicationSettings::default());
    }

    #[test]
    fn an_unknown_key_in_the_config_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "flsuh = \"sync\"\n").expect("write");
        let args = ServeArgs { config: Some(path), ..ServeArgs::default() };
        assert!(config(args).is_err());
    }

    /// The error `config` gives for a config file holding `text`.
    fn refusal(text: &str) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, text).expect("write");
        let args = ServeArgs { config: Some(path), ..ServeArgs::default() };
        config(args).expect_err(&format!("{text:?} should be refused"))
    }

    #[test]
    fn settings_that_cannot_work_are_refused_not_bent() {
        for (text, named) in [
            ("shards = 0", "shards"),
            ("in_flight_max = 0", "in_flight_max"),
            ("in_flight_bytes_max = 1023", "in_flight_bytes_max"),
            ("connections_max = 0", "connections_max"),
            ("checkpoint_interval_ms = 0", "checkpoint_interval_ms"),
            ("flush = \"async\"\nflush_interval_ms = 0", "flush_interval_ms"),
            ("segment_size_bytes = 1000", "segment size"),
            ("index_cache_bytes = 1000", "index_cache_bytes"),
            ("producers_max = 0", "producers_max"),
            ("topics_max = 0", "topics_max"),
            ("topics_max = 1000001", "topics_max"),
            ("groups_max = 0", "groups_max"),
            ("shards = 1025", "shards"),
            ("producer_idle_expiry_ms = 0", "producer_idle_expiry_ms"),
            ("producer_idle_expiry_ms = 299999", "producer_idle_expiry_ms"),
            ("transaction_timeout_ms = 0", "transaction_timeout_ms"),
            ("transaction_check_interval_ms = 0", "transaction_check_interval_ms"),
            ("transaction_check_max = 0", "transaction_check_max"),
            ("delay_levels = \"1s 5\"", "delay_levels"),
            ("delay_max_ms = 0", "delay_max_ms"),
            ("disk_max_used_percent = 0", "disk_max_used_percent"),
            ("disk_max_used_percent = 101", "disk_max_used_percent"),
            ("metrics_listen = \"127.0.0.1\"", "metrics_listen"),
            ("metrics_listen = \"127.0.0.1:99999\"", "metrics_listen"),
            ("connection_idle_timeout_ms = 0", "connection_idle_timeout_ms"),
            ("connection_write_timeout_ms = 0", "connection_write_timeout_ms"),
            ("incomplete_frames_bytes_max = 1048576", "incomplete_frames_bytes_max"),
            ("role = \"standby\"", "standby_of"),
            ("standby_of = \"127.0.0.1:9876\"", "role"),
            ("role = \"standby\"\nstandby_of = \"127.0.0.1\"", "standby_of"),
            ("sync_standby_timeout_ms = 0", "sync_standby_timeout_ms"),
            ("role = \"leader\"", "role"),
            ("replication = \"eventual\"", "replication"),
        ] {
            let error = refusal(text);
            assert!(error.contains(named), "{text:?}: {error:?} does not name {named}");
        }
    }

    #[test]
    fn the_checkpoint_interval_comes_from_the_flag_over_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, "checkpoint_interval_ms = 500\n").expect("write");
        let from_file = config(ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).expect("config");
        assert_eq!(from_file.checkpoint_interval, Duration::from_millis(500));
        let args = ServeArgs { config: Some(path), checkpoint_interval_ms: Some(250), ..ServeArgs::default() };
        assert_eq!(config(args).expect("config").checkpoint_interval, Duration::from_millis(250));
        let flag_zero = ServeArgs { checkpoint_interval_ms: Some(0), ..ServeArgs::default() };
        assert!(config(flag_zero).is_err());
    }

    #[test]
    fn the_index_cache_bound_comes_from_the_flag_over_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, "index_cache_bytes = 1048576\n").expect("write");
        let from_file = config(ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).expect("config");
        assert_eq!(from_file.index_cache_bytes, 1 << 20);
        let args = ServeArgs { config: Some(path), index_cache_bytes: Some(1 << 21), ..ServeArgs::default() };
        assert_eq!(config(args).expect("config").index_cache_bytes, 1 << 21);
    }

    #[test]
    fn the_transaction_settings_come_from_the_flags_over_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ringmq.toml");
        let text = "transaction_timeout_ms = 100\ntransaction_check_interval_ms = 50\ntransaction_check_max = 3\n";
        std::fs::write(&path, text).expect("write");
        let from_file = config(ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).expect("config");
        assert_eq!(from_file.transaction_timeout, Duration::from_millis(100));
        assert_eq!(from_file.transaction_check_interval, Duration::from_millis(50));
        assert_eq!(from_file.transaction_check_max, 3);
        let args = ServeArgs {
            config: Some(path),
            transaction_timeout_ms: Some(200),
            transaction_check_interval_ms: Some(20),
            transaction_check_max: Some(4),
            ..ServeArgs::default()
        };
        let from_flags = config(args).expect("config");
        assert_eq!(from_flags.transaction_timeout, Duration::from_millis(200));
        assert_eq!(from_flags.transaction_check_interval, Duration::from_millis(20));
        assert_eq!(from_flags.transaction_check_max, 4);
    }

    #[test]
    fn the_topic_and_group_caps_come_from_the_flags_over_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, "topics_max = 50\ngroups_max = 60\n").expect("write");
        let from_file = config(ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).expect("config");
        assert_eq!((from_file.topics_max, from_file.groups_max), (50, 60));
        let args = ServeArgs { config: Some(path), topics_max: Some(70), groups_max: Some(80), ..ServeArgs::default() };
        let from_flags = config(args).expect("config");
        assert_eq!((from_flags.topics_max, from_flags.groups_max), (70, 80));
        let flag_zero = ServeArgs { groups_max: Some(0), ..ServeArgs::default() };
        assert!(config(flag_zero).unwrap_err().contains("groups_max"));
    }

    #[test]
    fn the_disk_limit_comes_from_the_flag_over_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, "disk_max_used_percent = 80\n").expect("write");
        let from_file = config(ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).expect("config");
        assert_eq!(from_file.disk_max_used_percent, 80);
        let args = ServeArgs { config: Some(path), disk_max_used_percent: Some(95), ..ServeArgs::default() };
        assert_eq!(config(args).expect("config").disk_max_used_percent, 95);
        let flag_zero = ServeArgs { disk_max_used_percent: Some(0), ..ServeArgs::default() };
        assert!(config(flag_zero).is_err());
    }

    #[test]
    fn the_metrics_endpoint_is_off_by_default_and_comes_from_the_flag_over_the_file() {
        assert_eq!(config(ServeArgs::default()).expect("config").metrics_listen, None);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, "metrics_listen = \"127.0.0.1:9400\"\n").expect("write");
        let from_file = config(ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).expect("config");
        assert_eq!(from_file.metrics_listen.as_deref(), Some("127.0.0.1:9400"));
        let args =
            ServeArgs { config: Some(path), metrics_listen: Some("0.0.0.0:9500".into()), ..ServeArgs::default() };
        assert_eq!(config(args).expect("config").metrics_listen.as_deref(), Some("0.0.0.0:9500"));
    }

    #[test]
    fn the_connection_bounds_come_from_the_flags_over_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ringmq.toml");
        let text = "connection_idle_timeout_ms = 1000\nconnection_write_timeout_ms = 2000\nincomplete_frames_bytes_max = 33554432\n";
        std::fs::write(&path, text).expect("write");
        let from_file = config(ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).expect("config");
        assert_eq!(from_file.connection_idle_timeout, Duration::from_millis(1000));
        assert_eq!(from_file.connection_write_timeout, Duration::from_millis(2000));
        assert_eq!(from_file.incomplete_frames_bytes_max, 32 << 20);
        let args = ServeArgs {
            config: Some(path),
            connection_idle_timeout_ms: Some(10),
            connection_write_timeout_ms: Some(20),
            incomplete_frames_bytes_max: Some(64 << 20),
            ..ServeArgs::default()
        };
        let from_flags = config(args).expect("config");
        assert_eq!(from_flags.connection_idle_timeout, Duration::from_millis(10));
        assert_eq!(from_flags.connection_write_timeout, Duration::from_millis(20));
        assert_eq!(from_flags.incomplete_frames_bytes_max, 64 << 20);
    }

    #[test]
    fn the_replication_settings_come_from_the_flags_over_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ringmq.toml");
        std::fs::write(&path, "replication = \"sync\"\nsync_standby_timeout_ms = 700\n").expect("write");
        let from_file = config(ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).expect("config");
        assert_eq!(from_file.replication.replication, Replication::Sync);
        let args = ServeArgs { config: Some(path), replication: Some(Replication::Off), ..ServeArgs::default() };
        let from_flags = config(args).expect("config");
        assert_eq!(from_flags.replication.replication, Replication::Off);
        assert_eq!(from_flags.replication.sync_standby_timeout, Duration::from_millis(700));
        let standby =
            ServeArgs { role: Some(Role::Standby), standby_of: Some("127.0.0.1:9876".into()), ..ServeArgs::default() };
        let standby = config(standby).expect("a standby");
        assert_eq!(standby.replication.role, Role::Standby);
        assert_eq!(standby.replication.standby_of.as_deref(), Some("127.0.0.1:9876"));
        let following = ServeArgs { replication: Some(Replication::Async), ..ServeArgs::default() };
        assert_eq!(config(following).expect("async").replication.replication, Replication::Async);
        let lone = ServeArgs { role: Some(Role::Standby), ..ServeArgs::default() };
        assert!(config(lone).unwrap_err().contains("standby_of"));
    }

    /// A config key `foo_ms` is the flag `--foo-ms` (scripts drive the
    /// broker by either), and the flag wins over the file: the keys that
    /// had no flag (the others have tests of their own).
    #[test]
    fn keys_that_were_file_only_are_flags_too_and_win_over_the_file() {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("file.toml");
        let file =
            "flush = \"async\"\nflush_interval_ms = 1\nsync_flush_timeout_ms = 1\nsegment_size_bytes = 1048576\n\
                    retention_hours = 1\nretention_bytes = 1\nconnections_max = 1\nin_flight_max = 1\n\
                    in_flight_bytes_max = 2048\nreplication = \"sync\"\nsync_standby_timeout_ms = 1\n";
        std::fs::write(&path, file).expect("write");
        let flags = [
            "serve",
            "--flush-interval-ms",
            "7",
            "--sync-flush-timeout-ms",
            "7000",
            "--segment-size-bytes",
            "8388608",
            "--retention-hours",
            "48",
            "--retention-bytes",
            "4294967296",
            "--connections-max",
            "77",
            "--in-flight-max",
            "33",
            "--in-flight-bytes-max",
            "1048576",
            "--sync-standby-timeout-ms",
            "750",
            "--config",
        ];
        let parsed =
            <Serve as clap::Parser>::try_parse_from(flags.iter().copied().chain([path.to_str().expect("utf-8")]))
                .expect("every flag parses");
        let config = config(parsed.args).expect("a valid config");
        assert_eq!(config.flush, FlushMode::Async { interval: Duration::from_millis(7) });
        assert_eq!(config.sync_flush_timeout, Duration::from_millis(7000));
        assert_eq!(config.segment_size_bytes, 8 * 1024 * 1024);
        assert_eq!(config.retention.max_age, Some(Duration::from_secs(48 * 3600)));
        assert_eq!(config.retention.max_total_bytes, Some(4 * 1024 * 1024 * 1024));
        assert_eq!((config.connections_max, config.in_flight_max, config.in_flight_bytes_max), (77, 33, 1024 * 1024));
        assert_eq!(config.replication.sync_standby_timeout, Duration::from_millis(750));
    }
}
