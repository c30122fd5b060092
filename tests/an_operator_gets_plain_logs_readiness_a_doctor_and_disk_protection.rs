//! Operating the broker: logs in a file carry no terminal escapes, json logs
//! parse, systemd hears READY=1 once every shard accepts and STOPPING=1 at
//! SIGTERM, `ringmq doctor --json` passes on this host, a disk above
//! `disk_max_used_percent` refuses produce with a retriable DiskFull that a
//! producer rides out, and a disk another process fills to the last byte
//! under a checkpoint skips checkpoints without stopping the log.

mod common;

use common::{answers, exit_within, free_ports, Broker};
use ringmq::client::{Client, ClientError, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::fb;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: u32 = 2;

/// `ringmq serve` with stderr into `log` and `extra` arguments.
fn serve(dir: &Path, base_port: u16, log: &Path, extra: &[&str], notify_socket: Option<&Path>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    command
        .args(["serve", "--shards", &SHARDS.to_string(), "--log", "info"])
        .args(["--listen", &format!("127.0.0.1:{base_port}"), "--data-dir"])
        .arg(dir.join("data"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .env_remove("NOTIFY_SOCKET");
    if let Some(socket) = notify_socket {
        command.env("NOTIFY_SOCKET", socket);
    }
    command.spawn().expect("start ringmq serve")
}

fn wait_answering(base_port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for shard in 0..SHARDS {
        let address = format!("127.0.0.1:{}", base_port + shard as u16);
        while !answers(&address, SHARDS) {
            assert!(Instant::now() < deadline, "no answer on {address}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: signalling our own child, not yet waited for, so the pid is its.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    exit_within(child, Duration::from_secs(30), "ringmq serve after SIGTERM")
}

#[test]
fn logs_in_a_file_have_no_escape_byte_and_systemd_hears_ready_then_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let base_port = free_ports(SHARDS as u16);
    let log = dir.path().join("serve.log");
    let mut child = serve(dir.path(), base_port, &log, &[], Some(&socket_path));

    let mut datagram = [0u8; 512];
    let length = socket.recv(&mut datagram).expect("READY=1 within 30 s");
    let ready = String::from_utf8_lossy(&datagram[..length]).to_string();
    assert!(ready.lines().any(|line| line == "READY=1"), "{ready:?}");
    // Ready means every shard accepts now, not in a moment.
    for shard in 0..SHARDS {
        let address = format!("127.0.0.1:{}", base_port + shard as u16);
        assert!(answers(&address, SHARDS), "shard {shard} does not answer after READY=1");
    }

    // SAFETY: signalling our own child, not yet waited for, so the pid is its.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let length = socket.recv(&mut datagram).expect("STOPPING=1 after SIGTERM");
    let stopping = String::from_utf8_lossy(&datagram[..length]).to_string();
    assert!(stopping.lines().any(|line| line == "STOPPING=1"), "{stopping:?}");
    let status = exit_within(&mut child, Duration::from_secs(30), "ringmq serve after SIGTERM");
    assert!(status.success(), "{status}");

    let logged = std::fs::read(&log).expect("read the log");
    let text = String::from_utf8_lossy(&logged);
    assert!(text.contains("shard listening"), "the log holds the start-up lines: {text}");
    assert!(!logged.contains(&0x1b), "an escape byte in a log written to a file: {text}");
}

#[test]
fn json_log_lines_parse_as_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base_port = free_ports(SHARDS as u16);
    let log = dir.path().join("serve.log");
    let mut child = serve(dir.path(), base_port, &log, &["--log-format", "json"], None);
    wait_answering(base_port);
    assert!(terminate(&mut child).success());
    let text = std::fs::read_to_string(&log).expect("read the log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?} is not JSON: {error}")))
        .collect();
    assert!(lines.len() >= SHARDS as usize, "{text}");
    assert!(lines.iter().all(|line| line["level"].is_string() && line["fields"]["message"].is_string()), "{text}");
    assert!(lines.iter().any(|line| line["fields"]["message"] == "shard listening"), "{text}");
}

#[test]
fn the_doctor_passes_every_check_on_this_host() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["doctor", "--json", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("run ringmq doctor");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let checks: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?} is not JSON: {error}")))
        .collect();
    let names: Vec<&str> = checks.iter().map(|check| check["check"].as_str().expect("check name")).collect();
    assert_eq!(names, ["io_uring", "memlock", "o_direct", "fdatasync", "disk_space"]);
    for check in &checks {
        assert!(check["detail"].as_str().is_some_and(|detail| !detail.is_empty()), "{check}");
        let expected_ok = if check["check"] == "disk_space" {
            // This host's disk is shared and may really be past 90% used:
            // then the check must say so, with advice.
            let detail = check["detail"].as_str().unwrap_or_default();
            let used: f64 = detail.split('%').next().and_then(|used| used.parse().ok()).expect("N% used");
            used <= 90.0
        } else {
            true
        };
        assert_eq!(check["ok"], expected_ok, "{check}");
        assert_eq!(check.get("advice").is_some(), !expected_ok, "{check}");
    }
    let all_ok = checks.iter().all(|check| check["ok"] == true);
    assert_eq!(output.status.success(), all_ok, "non-zero exit exactly when a check fails: {stdout}");
    assert_eq!(std::fs::read_dir(&data_dir).expect("data dir").count(), 0, "the probe file is removed");
}

fn message(body: &str) -> OutgoingMessage<'_> {
    OutgoingMessage { body: body.as_bytes(), ..Default::default() }
}

#[test]
fn above_the_disk_limit_produce_is_refused_retriably_and_delivered_once_the_limit_allows_it() {
    // Any real filesystem is more than 1% used: this broker is "full".
    let mut broker = Broker::start_with_config(1, Some("disk_max_used_percent = 1\n"));
    let config = broker.data_dir().parent().expect("the broker's temp dir").join("ringmq.toml");
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("events", 1).expect("topics are metadata, not user data");

    let short = ProducerOptions { delivery_timeout: Duration::from_millis(1500), ..ProducerOptions::default() };
    let producer = Producer::new(client.clone(), "events", short).expect("producer");
    let started = Instant::now();
    let error = producer.send(&message("refused"), QueueChoice::Explicit(0)).expect_err("refused on a full disk");
    assert_eq!(error.code(), Some(fb::ErrorCode::DiskFull), "{error}");
    assert!(error.is_retryable(), "{error}");
    let text = error.to_string();
    assert!(text.contains("disk_max_used_percent 1") && text.contains("retry"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the producer kept resending until its delivery timeout: {:?}",
        started.elapsed()
    );
    assert!(matches!(error, ClientError::Broker(_)), "{error}");

    // A producer still resending when the limit allows it again delivers.
    let patient = ProducerOptions { delivery_timeout: Duration::from_secs(60), ..ProducerOptions::default() };
    let producer = Producer::new(client.clone(), "events", patient).expect("producer");
    let sending = std::thread::spawn(move || producer.send(&message("delivered"), QueueChoice::Explicit(0)));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!sending.is_finished(), "the producer keeps resending while the disk is full");
    std::fs::write(&config, "disk_max_used_percent = 100\n").expect("rewrite the config");
    broker.restart();
    let receipt = sending.join().expect("sender thread").expect("delivered after the limit was raised");
    assert_eq!(receipt.status, fb::SendStatus::SendOk);
    let bodies = common::consume_all(&broker.address(), "readers", "events");
    assert_eq!(bodies, ["delivered".to_string()].into_iter().collect());
}

/// A small tmpfs of its own, so a test can fill a filesystem for real
/// without touching the shared disk; unmounted on drop (lazily: a process
/// still inside does not keep it).
struct SmallFilesystem {
    dir: tempfile::TempDir,
}

impl SmallFilesystem {
    /// `None` where this process may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A child process killed when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn produce_resumes_by_itself_when_space_returns_and_each_change_is_logged_once() {
    let Some(filesystem) = SmallFilesystem::mount(64 << 20) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root); the restart test above still runs");
        return;
    };
    let config = filesystem.path().join("ringmq.toml");
    // Small segments: the logs take a few MiB of the 64 MiB.
    std::fs::write(&config, "segment_size_bytes = 1048576\ndisk_max_used_percent = 50\n").expect("config");
    let base_port = free_ports(SHARDS as u16);
    let log = filesystem.path().join("serve.log");
    let _broker =
        Running(serve(filesystem.path(), base_port, &log, &["--config", config.to_str().expect("utf-8")], None));
    wait_answering(base_port);
    let client = Arc::new(Client::connect(&format!("127.0.0.1:{base_port}")).expect("connect"));
    client.create_topic("events", 1).expect("topic");
    let short = ProducerOptions { delivery_timeout: Duration::from_millis(1000), ..ProducerOptions::default() };
    let producer = Producer::new(client.clone(), "events", short.clone()).expect("producer");
    producer.send(&message("before"), QueueChoice::Explicit(0)).expect("room on the disk");

    // Ballast past the limit: 40 of 64 MiB.
    let ballast = filesystem.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 40 << 20]).expect("ballast");
    std::thread::sleep(Duration::from_millis(1200));
    let error = producer.send(&message("refused"), QueueChoice::Explicit(0)).expect_err("the disk is past 50%");
    assert_eq!(error.code(), Some(fb::ErrorCode::DiskFull), "{error}");

    let patient = ProducerOptions { delivery_timeout: Duration::from_secs(30), ..short };
    let producer = Producer::new(client.clone(), "events", patient).expect("producer");
    let sending = std::thread::spawn(move || producer.send(&message("after"), QueueChoice::Explicit(0)));
    std::thread::sleep(Duration::from_millis(800));
    assert!(!sending.is_finished(), "the producer keeps resending while the disk is full");
    std::fs::remove_file(&ballast).expect("remove the ballast");
    let freed = Instant::now();
    let receipt = sending.join().expect("sender thread").expect("delivered once space returned, no restart");
    assert_eq!(receipt.status, fb::SendStatus::SendOk);
    assert!(freed.elapsed() < Duration::from_secs(10), "resumed {:?} after space returned", freed.elapsed());

    let text = std::fs::read_to_string(&log).expect("read the log");
    let count = |what: &str| text.lines().filter(|line| line.contains(what)).count();
    // One line per shard and change, not one per refused request.
    assert_eq!(count("refusing produce until space returns"), SHARDS as usize, "{text}");
    assert_eq!(count("taking produce again"), SHARDS as usize, "{text}");
}

/// Fills `dir`'s filesystem to its last page: 1 MiB at a time, then 4 KiB.
fn fill_to_the_last_byte(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("ballast");
    for chunk in [1 << 20, 4096] {
        let bytes = vec![1u8; chunk];
        while file.write_all(&bytes).is_ok() {}
    }
    let _ = file.sync_all();
}

#[test]
fn a_disk_filled_under_a_checkpoint_keeps_the_log_up_and_every_acknowledged_message() {
    let Some(filesystem) = SmallFilesystem::mount(64 << 20) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    // Off the small filesystem: the broker's own log lines must not need its room.
    let outside = tempfile::tempdir().expect("temp dir");
    let config = outside.path().join("ringmq.toml");
    // No limit of its own: the disk guard looks once a second, and another
    // process can fill the disk between two looks; the log must cope.
    std::fs::write(
        &config,
        "segment_size_bytes = 4194304\ndisk_max_used_percent = 100\ncheckpoint_interval_ms = 100\n",
    )
    .expect("config");
    let base_port = free_ports(SHARDS as u16);
    let log = outside.path().join("serve.log");
    let args = ["--config", config.to_str().expect("utf-8")];
    let mut broker = Running(serve(filesystem.path(), base_port, &log, &args, None));
    wait_answering(base_port);
    let address = format!("127.0.0.1:{base_port}");
    let client = Arc::new(Client::connect(&address).expect("connect"));
    client.create_topic("events", 1).expect("topic");
    // A stopped log refuses retriably too: do not wait out the default timeout.
    let options = ProducerOptions { delivery_timeout: Duration::from_secs(10), ..ProducerOptions::default() };
    let producer = Producer::new(client.clone(), "events", options).expect("producer");
    let send = |body: String| {
        let receipt = producer.send(&message(&body), QueueChoice::Explicit(0)).expect("acknowledged");
        assert_eq!(receipt.status, fb::SendStatus::SendOk);
        body
    };
    let mut acknowledged: Vec<String> = (0..10).map(|index| send(format!("before {index}"))).collect();
    std::thread::sleep(Duration::from_millis(500)); // a checkpoint writes the queue's index file

    let ballast = filesystem.path().join("ballast");
    fill_to_the_last_byte(&ballast);
    // 400 index entries are 12.8 KB: the index file must grow, and cannot.
    // (Each message is a durable write of its own, a block: 1.6 MB, inside
    // the 4 MiB segment the shard already has.)
    acknowledged.extend((0..400).map(|index| send(format!("full {index}"))));
    std::thread::sleep(Duration::from_millis(1500));
    let text = std::fs::read_to_string(&log).expect("read the log");
    let count = |text: &str, what: &str| text.lines().filter(|line| line.contains(what)).count();
    let skipped = count(&text, "checkpoint skipped");
    assert!((1..=SHARDS as usize).contains(&skipped), "one warning per refused shard, not one per retry: {text}");
    assert_eq!(count(&text, "stopped"), 0, "{text}");
    assert_eq!(common::fetch_all(&client, "events", 0), acknowledged, "served from memory while the disk is full");

    std::fs::remove_file(&ballast).expect("remove the ballast");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&std::fs::read_to_string(&log).expect("read the log"), "checkpoints written again") < skipped {
        assert!(Instant::now() < deadline, "no checkpoint after the disk had room again");
        std::thread::sleep(Duration::from_millis(50));
    }
    acknowledged.extend((0..50).map(|index| send(format!("after {index}"))));
    drop(producer);
    drop(client);

    let _ = broker.0.kill();
    let _ = broker.0.wait();
    let restart_log = outside.path().join("serve-again.log");
    let _broker = Running(serve(filesystem.path(), base_port, &restart_log, &args, None));
    wait_answering(base_port);
    let client = Client::connect(&address).expect("connect");
    assert_eq!(common::fetch_all(&client, "events", 0), acknowledged, "each acknowledged message once, in order");
}
