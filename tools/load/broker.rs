//! `--spawn-broker`: a `ringmq serve` of our own on a temporary data
//! directory and free loopback ports, stopped with SIGTERM at the end.
//! With `--standby`, also a primary with `--replication sync|async` and a
//! standby following it, each on its own directory and ports.

use ringmq::client::{admin, Client};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a spawned broker may take to answer, and a spawned standby to
/// connect to every shard of its primary.
const START_MAX: Duration = Duration::from_secs(30);

pub struct SpawnedBroker {
    child: Child,
    pub address: String,
    /// Its `--metrics-listen` address.
    metrics: String,
    _temp: tempfile::TempDir,
}

/// How long the broker may take to answer a metrics scrape.
const SCRAPE_MAX: Duration = Duration::from_secs(5);

/// A broker publishes its figures for scrapes this often (`server::metrics`):
/// a scrape this much later sees everything before it.
pub const METRICS_REFRESH: Duration = Duration::from_millis(600);

/// A broker's flush rounds (each made durable by one O_DSYNC write or one
/// fdatasync), summed over its shards: the disk's share of an answer, as
/// the broker itself saw it. A standby's replicated writes count too.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlushRounds {
    pub rounds: u64,
    pub records: u64,
    pub seconds: f64,
}

impl FlushRounds {
    /// From the text of a `/metrics` scrape.
    pub fn parse(metrics: &str) -> Self {
        let mut flush = Self::default();
        for line in metrics.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            match series.split('{').next().unwrap_or(series) {
                "ringmq_fdatasync_seconds_count" => flush.rounds += value.parse::<u64>().unwrap_or(0),
                "ringmq_records_flushed_total" => flush.records += value.parse::<u64>().unwrap_or(0),
                "ringmq_fdatasync_seconds_sum" => flush.seconds += value.parse::<f64>().unwrap_or(0.0),
                _ => {}
            }
        }
        flush
    }

    /// What happened between `earlier` and this.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            rounds: self.rounds.saturating_sub(earlier.rounds),
            records: self.records.saturating_sub(earlier.records),
            seconds: (self.seconds - earlier.seconds).max(0.0),
        }
    }

    pub fn mean_us(&self) -> f64 {
        if self.rounds == 0 {
            return 0.0;
        }
        self.seconds * 1e6 / self.rounds as f64
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "rounds": self.rounds,
            "records": self.records,
            "mean_us": self.mean_us().round(),
        })
    }
}

/// The spawned standby's `--spin-before-park-us`. On a machine of its own
/// a standby has idle cores to spin on; here it has the CPU `standby_cpuset`
/// gives it. Spinning spares it a wake-up from sleep per write it receives
/// (on these VMs an interrupt to a halted virtual CPU: 50-90 us of publish
/// p50 in docs/PERFORMANCE.md); longer spins crowd out the kernel's own work
/// on that CPU (p99 2-4x at 500-1000 us).
const STANDBY_SPIN_BEFORE_PARK_US: u64 = 200;

/// `--standby`: how the spawned primary replicates to its standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StandbyMode {
    /// A produce is answered SEND_OK once the standby has it durable too.
    Sync,
    /// The standby follows in the background.
    Async,
}

impl StandbyMode {
    pub fn name(self) -> &'static str {
        match self {
            StandbyMode::Sync => "sync",
            StandbyMode::Async => "async",
        }
    }
}

fn free_base_port(count: u16) -> Result<u16, String> {
    for _ in 0..200 {
        let base = fastrand::u16(20_000..32_000);
        if (base..base + count).all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok()) {
            return Ok(base);
        }
    }
    Err(format!("no {count} free ports on 127.0.0.1"))
}

/// `--broker-shards`, or one per CPU.
pub fn shard_count(shards: Option<u32>) -> u32 {
    shards.unwrap_or_else(|| cpu_count() as u32).max(1)
}

impl SpawnedBroker {
    /// A temporary directory under the working directory, so the raw disk
    /// probe measures the disk the broker will write to (not a tmpfs /tmp).
    pub fn directory() -> Result<tempfile::TempDir, String> {
        tempfile::Builder::new().prefix("ringmq-load-").tempdir_in(".").map_err(|error| error.to_string())
    }

    /// With `spin_us`, the broker's shards spin that long before they sleep.
    pub fn start(temp: tempfile::TempDir, shards: Option<u32>, spin_us: Option<u64>) -> Result<Self, String> {
        let spin = spin_us.map(|spin| spin.to_string());
        let extra: Vec<&str> = spin.iter().flat_map(|spin| ["--spin-before-park-us", spin.as_str()]).collect();
        Self::start_with(temp, shard_count(shards), &extra)
    }

    /// A primary with `--replication MODE`, then a standby of it on a
    /// directory and ports of its own; returns once every shard of the
    /// primary reports its standby connected. The standby's shard i runs on
    /// another CPU than the primary's shard i (`standby_cpuset`).
    pub fn start_pair(shards: Option<u32>, mode: StandbyMode) -> Result<(Self, Self), String> {
        let shard_count = shard_count(shards);
        let primary = Self::start_with(Self::directory()?, shard_count, &["--replication", mode.name()])?;
        let primary_address = primary.address.clone();
        let cpuset = standby_cpuset(shard_count, cpu_count());
        let spin = STANDBY_SPIN_BEFORE_PARK_US.to_string();
        println!(
            "standby shards on CPUs {cpuset} (shard i of the primary on CPU i), spinning {spin} us before they sleep"
        );
        let mut standby = Self::start_with(
            Self::directory()?,
            shard_count,
            &[
                "--role",
                "standby",
                "--standby-of",
                primary_address.as_str(),
                "--cpuset",
                cpuset.as_str(),
                "--spin-before-park-us",
                spin.as_str(),
            ],
        )?;
        standby.wait_connected_to(&primary_address)?;
        Ok((primary, standby))
    }

    fn start_with(temp: tempfile::TempDir, shard_count: u32, extra: &[&str]) -> Result<Self, String> {
        let binary = std::env::current_exe().map_err(|error| error.to_string())?.with_file_name("ringmq");
        if !binary.exists() {
            return Err(format!("{} not found: build it with `cargo build --release`", binary.display()));
        }
        let data_dir = temp.path().join("data");
        let base = free_base_port(shard_count as u16 + 1)?;
        let address = format!("127.0.0.1:{base}");
        let metrics = format!("127.0.0.1:{}", base + shard_count as u16);
        let child = Command::new(&binary)
            .args(["serve", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen", &address, "--shards", &shard_count.to_string(), "--log", "warn"])
            .args(["--metrics-listen", &metrics])
            // A throwaway broker for one run: its figures must not depend on
            // how full the host's disk happens to be (disk protection off).
            .args(["--disk-max-used-percent", "100"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|error| format!("starting {}: {error}", binary.display()))?;
        let mut broker = Self { child, address, metrics, _temp: temp };
        let deadline = Instant::now() + START_MAX;
        while Client::connect_with_timeout(&broker.address, Duration::from_secs(1)).is_err() {
            broker.check_running()?;
            if Instant::now() > deadline {
                return Err(format!("the spawned broker ({}) did not answer in {START_MAX:?}", extra.join(" ")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!("the spawned broker on {} exited: {status}", self.address)),
            Ok(None) => Ok(()),
            Err(error) => Err(format!("the spawned broker on {}: {error}", self.address)),
        }
    }

    /// Polls the primary's shard status (what `ringmq status --json` shows)
    /// until every shard has `standby_connected`.
    fn wait_connected_to(&mut self, primary: &str) -> Result<(), String> {
        let deadline = Instant::now() + START_MAX;
        let client = Client::connect_with_timeout(primary, Duration::from_secs(5))
            .map_err(|error| format!("the spawned primary {primary}: {error}"))?;
        loop {
            self.check_running()?;
            let waiting = match admin::shard_statuses(&client) {
                Ok(statuses) if statuses.is_empty() => "no shard answered".to_string(),
                Ok(statuses) => {
                    let missing: Vec<String> = statuses
                        .iter()
                        .filter(|status| !status.standby_connected)
                        .map(|status| status.shard.to_string())
                        .collect();
                    if missing.is_empty() {
                        return Ok(());
                    }
                    format!("shard {} of the primary report no standby connected", missing.join(", "))
                }
                Err(error) => format!("status of the primary: {error}"),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "the spawned standby {} did not connect to its primary {primary} within {START_MAX:?}: {waiting}",
                    self.address
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its flush rounds as its metrics endpoint last published them: at
    /// most `METRICS_REFRESH` old.
    pub fn flush_rounds(&self) -> Result<FlushRounds, String> {
        use std::io::{Read, Write};
        let scrape = || -> std::io::Result<String> {
            let address = self.metrics.parse().map_err(std::io::Error::other)?;
            let mut stream = std::net::TcpStream::connect_timeout(&address, SCRAPE_MAX)?;
            stream.set_read_timeout(Some(SCRAPE_MAX))?;
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: ringmq\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        };
        let failed =
            |error: &dyn std::fmt::Display| format!("metrics of the spawned broker ({}): {error}", self.metrics);
        let text = scrape().map_err(|error| failed(&error))?;
        let status = text.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(failed(&format!("answered {status:?}")));
        }
        Ok(FlushRounds::parse(&text))
    }

    pub fn stop(mut self) {
        // SAFETY: the pid is our own child's, not yet waited for.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for SpawnedBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPUs this process may use (at least 1).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |count| count.get())
}

/// The standby's `--cpuset`: its shard i on a CPU other than its primary's
/// shard i (which runs on CPU i), the CPUs after the primary's shards first.
/// On separate machines a standby's CPU is its own; here each pair of
/// shards at least does not share one while there are two.
pub fn standby_cpuset(shards: u32, cpus: usize) -> String {
    let (shards, cpus) = (shards as usize, cpus.max(1));
    let offset = match shards % cpus {
        0 => 1,
        rest => rest,
    };
    let list: Vec<String> = (0..shards).map(|shard| ((shard + offset) % cpus).to_string()).collect();
    list.join(",")
}

#[cfg(test)]
mod tests {
    use super::{standby_cpuset, FlushRounds};

    #[test]
    fn flush_rounds_sum_every_shard_of_a_scrape() {
        let text = "# HELP x\n\
            ringmq_fdatasync_seconds_sum{shard=\"0\"} 0.5\n\
            ringmq_fdatasync_seconds_count{shard=\"0\"} 1000\n\
            ringmq_fdatasync_seconds_bucket{le=\"0.001\",shard=\"0\"} 7\n\
            ringmq_fdatasync_seconds_sum{shard=\"1\"} 1.5\n\
            ringmq_fdatasync_seconds_count{shard=\"1\"} 3000\n\
            ringmq_records_flushed_total{shard=\"0\"} 4000\n";
        let flush = FlushRounds::parse(text);
        assert_eq!(flush, FlushRounds { rounds: 4000, records: 4000, seconds: 2.0 });
        assert_eq!(flush.mean_us(), 500.0);
        let earlier = FlushRounds { rounds: 2000, records: 1000, seconds: 1.5 };
        assert_eq!(flush.since(earlier).mean_us(), 250.0);
    }

    #[test]
    fn a_standby_runs_on_the_cpus_after_its_primarys_shards() {
        assert_eq!(standby_cpuset(1, 2), "1");
        assert_eq!(standby_cpuset(2, 8), "2,3");
        assert_eq!(standby_cpuset(2, 2), "1,0");
        assert_eq!(standby_cpuset(3, 4), "3,0,1");
        assert_eq!(standby_cpuset(4, 2), "1,0,1,0");
        assert_eq!(standby_cpuset(1, 1), "0");
    }
}
