//! A real `ringmq serve` process for integration tests, on 127.0.0.1 only.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    /// A config file given to `ringmq serve --config`.
    config: Option<PathBuf>,
    /// More `ringmq serve` flags.
    extra_args: Vec<String>,
    pub base_port: u16,
    pub shards: u32,
    pub dir: PathBuf,
    child: Option<Child>,
    _temp: Option<tempfile::TempDir>,
}

/// A base port whose `count` ports are all free now.
pub fn free_ports(count: u16) -> u16 {
    for _ in 0..200 {
        // Below the kernel's ephemeral range, so no outgoing connection holds it.
        let base = fastrand::u16(20_000..32_000);
        if (base..base + count).all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok()) {
            return base;
        }
    }
    panic!("no {count} free ports on 127.0.0.1");
}

impl Broker {
    pub fn start(shards: u32) -> Self {
        Self::start_with_config(shards, None)
    }

    /// A broker reading `config` (TOML) as its config file.
    pub fn start_with_config(shards: u32, config: Option<&str>) -> Self {
        Self::start_with(shards, config, &[])
    }

    /// A broker started with `extra_args` as more `ringmq serve` flags.
    pub fn start_with_args(shards: u32, extra_args: &[&str]) -> Self {
        Self::start_with(shards, None, extra_args)
    }

    /// A broker reading `config` and started with `extra_args` too.
    pub fn start_with(shards: u32, config: Option<&str>, extra_args: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let config = config.map(|text| {
            let path = temp.path().join("ringmq.toml");
            std::fs::write(&path, text).expect("config file");
            path
        });
        let mut broker = Broker {
            config,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            base_port: free_ports(shards as u16),
            shards,
            dir: temp.path().join("data"),
            child: None,
            _temp: Some(temp),
        };
        broker.spawn();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.base_port)
    }

    fn spawn(&mut self) {
        let listen = self.address();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
        command.args(["serve", "--data-dir"]).arg(&self.dir);
        let mut limits_disk = false;
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
            limits_disk = std::fs::read_to_string(config).is_ok_and(|text| text.contains("disk_max_used_percent"));
        }
        if !limits_disk {
            // Tests must not depend on how full the shared host's disk is:
            // only a test that sets the limit itself gets one.
            command.args(["--disk-max-used-percent", "100"]);
        }
        let child = command
            .args(["--listen", &listen, "--shards", &self.shards.to_string(), "--log", "warn"])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ringmq serve");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Ready when every shard answers a metadata request naming all shards:
    /// a bare TCP connect could reach some other listener.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for shard in 0..self.shards {
            let address = format!("127.0.0.1:{}", self.base_port + shard as u16);
            let answers = |address: &str| {
                ringmq::client::Client::connect_with_timeout(address, Duration::from_secs(1))
                    .is_ok_and(|client| client.shard_count() == self.shards)
            };
            while !answers(&address) {
                if let Some(child) = self.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("ringmq serve exited early: {status}");
                    }
                }
                assert!(Instant::now() < deadline, "the broker did not answer on {address} in time");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL: no flush, no checkpoint.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running broker");
        // SAFETY: sending a signal to our own child's pid has no memory-safety
        // preconditions; the child has not been waited for, so the pid is its.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().expect("wait for the broker")
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Killed, then started again on the same data directory and ports
    /// with `extra_args` instead of its flags.
    pub fn restart_with_args(&mut self, extra_args: &[&str]) {
        self.kill();
        self.extra_args = extra_args.iter().map(|arg| arg.to_string()).collect();
        self.spawn();
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The running broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running broker").id()
    }
}

/// Runs `ringmq serve` on `data_dir` and `listen`, expecting it to exit
/// within `limit` (it is killed and the test fails otherwise); returns its
/// exit status and what it wrote to stderr.
pub fn serve_expecting_exit(data_dir: &Path, listen: &str, limit: Duration) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["serve", "--shards", "1", "--log", "warn", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringmq serve");
    let status = exit_within(&mut child, limit, &format!("ringmq serve on {listen}"));
    let mut stderr = String::new();
    child.stderr.take().expect("piped stderr").read_to_string(&mut stderr).expect("read stderr");
    (status, stderr)
}

/// Whether a broker with `shards` shards answers a metadata request on `address`.
pub fn answers(address: &str, shards: u32) -> bool {
    ringmq::client::Client::connect_with_timeout(address, Duration::from_secs(1))
        .is_ok_and(|client| client.shard_count() == shards)
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Consumes `topic` as a new member of `group` until nothing arrives for two
/// seconds; returns every body received (the client checks each CRC).
pub fn consume_all(address: &str, group: &str, topic: &str) -> std::collections::BTreeSet<String> {
    consume_in_order(address, group, topic).into_iter().map(|(_, _, body)| body).collect()
}

/// Consumes `topic` as a new member of `group` until nothing arrives for two
/// seconds; returns every message as (queue, offset, body), in the order
/// received (offset order within each queue).
pub fn consume_in_order(address: &str, group: &str, topic: &str) -> Vec<(u32, u64, String)> {
    use ringmq::client::{Client, Consumer, ConsumerOptions};
    let client = std::sync::Arc::new(Client::connect(address).expect("connect"));
    let options = ConsumerOptions { max_wait: Duration::from_millis(100), ..ConsumerOptions::default() };
    let mut consumer = Consumer::join(client, group, topic, options).expect("join");
    let mut received = Vec::new();
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(2) {
        let messages = consumer.poll().expect("poll: a damaged record would fail here");
        if !messages.is_empty() {
            idle_since = Instant::now();
        }
        for message in messages {
            received.push((message.queue, message.offset, String::from_utf8(message.body).expect("utf-8")));
        }
    }
    received
}

/// Runs `ringmq` with `args` and `stdin`; returns its stdout's JSON lines
/// (it must exit 0).
pub fn ringmq(args: &[&str], stdin: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .args(["--log", "warn"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ringmq");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let output = child.wait_with_output().expect("ringmq ran");
    assert!(output.status.success(), "ringmq {args:?} failed");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?} is not JSON: {error}")))
        .collect()
}

/// Waits up to `limit` for `child` to exit; kills it and fails the test
/// (naming `what`) if it does not.
pub fn exit_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child process") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `ringmq` expecting it to fail; returns its stderr.
pub fn ringmq_failing(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .output()
        .expect("ringmq ran");
    assert!(!output.status.success(), "ringmq {args:?} succeeded: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8(output.stderr).expect("utf-8")
}

/// Sends `signal` (SIGSTOP, SIGCONT, ...) to the running broker.
pub fn signal(broker: &Broker, signal: i32) {
    // SAFETY: sending a signal to our own child's pid has no memory-safety
    // preconditions; the child has not been waited for, so the pid is its.
    let sent = unsafe { libc::kill(broker.pid() as i32, signal) };
    assert_eq!(sent, 0, "signal {signal}");
}

/// Every body of `queue` of `topic` from offset 0, in offset order, as a
/// broker's fetch answers (no group: a standby refuses joins).
pub fn fetch_all(client: &ringmq::client::Client, topic: &str, queue: u32) -> Vec<String> {
    fetch_all_bytes(client, topic, queue).into_iter().map(|body| String::from_utf8(body).expect("utf-8")).collect()
}

/// `fetch_all`, bodies as bytes.
pub fn fetch_all_bytes(client: &ringmq::client::Client, topic: &str, queue: u32) -> Vec<Vec<u8>> {
    use ringmq::protocol::{self, fb, FetchParams, Kind};
    let shard = client.topic(topic).expect("topic").queue_shards[queue as usize];
    let (mut bodies, mut offset) = (Vec::new(), 0);
    loop {
        let params = FetchParams {
            topic: topic.into(),
            queue,
            offset,
            max_count: 1000,
            max_bytes: 4 << 20,
            max_wait_ms: 0,
            ..FetchParams::default()
        };
        let body = client.call(shard, Kind::FetchRequest, &protocol::fetch_request(&params)).expect("fetch");
        let response = protocol::verify::<fb::FetchResponse>(&body).expect("verify");
        let (messages, _) = ringmq::client::fetched_messages(&body, &response, topic, queue, offset).expect("records");
        if response.next_offset() <= offset {
            return bodies;
        }
        bodies.extend(messages.into_iter().map(|message| message.body));
        offset = response.next_offset();
    }
}

/// Runs `ringmq-load` in `work` (where a spawned broker's data directory,
/// the raw disk probe and relative output paths go) with `args` (split on
/// whitespace) and `--json summary.json`, and checks that it succeeded and
/// wrote one JSON object on one line. Its report (stdout) and that summary.
pub fn load_run(work: &Path, args: &str) -> (String, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq-load"))
        .current_dir(work)
        .args(args.split_whitespace())
        .args(["--json", "summary.json"])
        .output()
        .expect("run ringmq-load");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "ringmq-load failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let written = std::fs::read_to_string(work.join("summary.json")).expect("summary file");
    assert_eq!(written.lines().count(), 1, "one JSON object on one line:\n{written}");
    let summary = serde_json::from_str(&written).expect("JSON");
    (stdout, summary)
}
