//! `--spawn-broker`: a `ringmq serve` of our own on a temporary data
//! directory and free loopback ports, stopped with SIGTERM at the end.

use ringmq::client::Client;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SpawnedBroker {
    child: Child,
    pub address: String,
    _temp: tempfile::TempDir,
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

impl SpawnedBroker {
    /// A temporary directory under the working directory, so the raw disk
    /// probe measures the disk the broker will write to (not a tmpfs /tmp).
    pub fn directory() -> Result<tempfile::TempDir, String> {
        tempfile::Builder::new().prefix("ringmq-load-").tempdir_in(".").map_err(|error| error.to_string())
    }

    pub fn start(temp: tempfile::TempDir, shards: Option<u32>) -> Result<Self, String> {
        let binary = std::env::current_exe().map_err(|error| error.to_string())?.with_file_name("ringmq");
        if !binary.exists() {
            return Err(format!("{} not found: build it with `cargo build --release`", binary.display()));
        }
        let data_dir = temp.path().join("data");
        let shard_count =
            shards.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |count| count.get() as u32));
        let base = free_base_port(shard_count as u16)?;
        let address = format!("127.0.0.1:{base}");
        let child = Command::new(&binary)
            .args(["serve", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen", &address, "--shards", &shard_count.to_string(), "--log", "warn"])
            // A throwaway broker for one run: its figures must not depend on
            // how full the host's disk happens to be (disk protection off).
            .args(["--disk-max-used-percent", "100"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|error| format!("starting {}: {error}", binary.display()))?;
        let broker = Self { child, address, _temp: temp };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Client::connect_with_timeout(&broker.address, Duration::from_secs(1)).is_err() {
            if Instant::now() > deadline {
                return Err("the spawned broker did not answer in 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
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
