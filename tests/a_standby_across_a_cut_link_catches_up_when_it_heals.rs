//! Replication across a real network link (issue 13): the primary runs in
//! this test's network namespace, its sync standby in a namespace of its own,
//! joined by a veth pair. Cutting the link turns the primary's answers into
//! FLUSH_SLAVE_TIMEOUT, then SLAVE_NOT_AVAILABLE (every message still stored
//! on the primary); the standby notices the dead connection and says so in
//! its status. Healing the link, the standby reconnects, catches up byte for
//! byte, and the primary answers SEND_OK again.
//!
//! Needs root and iproute2 (`ip netns add`); elsewhere it says why on stderr
//! and passes without testing anything.

mod common;

use ringmq::client::{admin, Client, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::fb;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The standby's port inside its own namespace (nothing else listens there).
const STANDBY_PORT: u16 = 9_300;
const SYNC_STANDBY_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Messages produced while the link is cut, after SLAVE_NOT_AVAILABLE.
const SENDS_WHILE_CUT: usize = 20;
/// Bounds starting a broker, a first confirmation, a catch-up.
const START_LIMIT: Duration = Duration::from_secs(30);
/// A standby notices a dead connection within its request timeout (10 s)
/// and reconnects within its back-off (at most 5 s) plus a connect timeout
/// (10 s); generous on a loaded machine.
const NOTICE_LIMIT: Duration = Duration::from_secs(60);
const HEAL_LIMIT: Duration = Duration::from_secs(60);

/// Runs `ip` with `args`; its stderr when it fails (or cannot run).
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).stdin(Stdio::null()).output();
    match output {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!("`ip {}`: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim())),
        Err(error) => Err(format!("`ip {}` did not run: {error}", args.join(" "))),
    }
}

/// A network namespace joined to this one by a veth pair, and the brokers
/// of the test; dropping it kills the brokers and deletes the namespace (its
/// veth end goes with it, and the peer in this namespace with that).
struct Link {
    namespace: String,
    /// The veth end in this (the root) namespace: cut and healed.
    root_end: String,
    /// 10.213.X.1 (here) and 10.213.X.2 (in the namespace).
    root_ip: String,
    inner_ip: String,
    children: Vec<Child>,
}

impl Link {
    /// `Err` (with why) when no namespace can be made here: not root, no
    /// `ip`, no namespaces. Once the namespace exists, any failure panics.
    fn create() -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let pid = std::process::id();
        let namespace = format!("ringmq-cut-{pid}");
        ip(&["netns", "add", &namespace])?;
        // From here on, Drop cleans up whatever was made.
        let mut link = Link {
            namespace,
            root_end: format!("rmq{pid}a"),
            root_ip: String::new(),
            inner_ip: String::new(),
            children: Vec::new(),
        };
        let inner_end = format!("rmq{pid}b");
        let addresses = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().expect("ip addr show");
        let addresses = String::from_utf8_lossy(&addresses.stdout).into_owned();
        // A /30 from the pid, not one already on this machine (parallel runs).
        let x = (0..250)
            .map(|step| (pid as usize + step) % 250 + 1)
            .find(|x| !addresses.contains(&format!("10.213.{x}.")))
            .expect("a free 10.213.X.0/30");
        link.root_ip = format!("10.213.{x}.1");
        link.inner_ip = format!("10.213.{x}.2");
        let steps: [&[&str]; 6] = [
            &["link", "add", &link.root_end, "type", "veth", "peer", "name", &inner_end],
            &["link", "set", &inner_end, "netns", &link.namespace],
            &["addr", "add", &format!("{}/30", link.root_ip), "dev", &link.root_end],
            &["link", "set", &link.root_end, "up"],
            &["-n", &link.namespace, "addr", "add", &format!("{}/30", link.inner_ip), "dev", &inner_end],
            &["-n", &link.namespace, "link", "set", &inner_end, "up"],
        ];
        for step in steps {
            ip(step).unwrap_or_else(|error| panic!("setting up the link: {error}"));
        }
        ip(&["-n", &link.namespace, "link", "set", "lo", "up"]).expect("lo up in the namespace");
        Ok(link)
    }

    fn cut(&self) {
        ip(&["link", "set", &self.root_end, "down"]).expect("cut the link");
    }

    fn heal(&self) {
        ip(&["link", "set", &self.root_end, "up"]).expect("heal the link");
    }

    /// `ringmq ARGS` run inside the namespace.
    fn ringmq_inside(&self) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace, env!("CARGO_BIN_EXE_ringmq")]);
        command
    }

    /// The standby's shard 0 status (`ringmq status --json`, run inside the
    /// namespace: it works whether the link is up or not); `None` while it
    /// does not answer.
    fn standby_status(&self, address: &str) -> Option<serde_json::Value> {
        let output = self
            .ringmq_inside()
            .args(["status", "--json", "--log", "warn", "--broker", address])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .expect("ip netns exec ringmq status ran");
        let text = String::from_utf8(output.stdout).expect("utf-8");
        let line = text.lines().next()?;
        Some(serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?} is not JSON: {error}")))
    }

    fn check_running(&mut self) {
        for child in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("a broker exited early: {status}");
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The root end goes with its peer; deleted anyway if the namespace
        // never got its end.
        let _ = ip(&["netns", "del", &self.namespace]);
        let _ = ip(&["link", "del", &self.root_end]);
    }
}

/// A port free on `ip` here.
fn free_port(ip: &str) -> u16 {
    (0..200)
        .map(|_| fastrand::u16(20_000..32_000))
        .find(|port| TcpListener::bind((ip, *port)).is_ok() && TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port")
}

fn serve_args(command: &mut Command, data_dir: &Path, listen: &str) {
    command
        .args(["serve", "--shards", "1", "--log", "warn", "--disk-max-used-percent", "100", "--listen", listen])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
}

fn primary_flushed(client: &Client) -> u64 {
    admin::shard_statuses(client).expect("primary status")[0].flushed
}

fn flushed(status: &serde_json::Value) -> u64 {
    status["flushed"].as_u64().expect("flushed")
}

fn send(producer: &Producer, body: &str) -> (fb::SendStatus, Duration) {
    let started = Instant::now();
    let message = OutgoingMessage { body: body.as_bytes(), ..Default::default() };
    let receipt = producer.send(&message, QueueChoice::Explicit(0)).expect("send");
    (receipt.status, started.elapsed())
}

fn segment_prefix(data_dir: &Path, length: u64) -> Vec<u8> {
    let path = data_dir.join("shard-0").join("segments").join(format!("{:020}.log", 0));
    let mut bytes = vec![0; length as usize];
    std::fs::File::open(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .read_exact(&mut bytes)
        .unwrap_or_else(|error| panic!("{} holds fewer than {length} bytes: {error}", path.display()));
    bytes
}

/// Waits (bounded) until the standby follows again: no replication error,
/// its durable end the primary's, no lag; returns that end.
fn wait_following(link: &mut Link, standby: &str, client: &Client, limit: Duration, what: &str) -> u64 {
    let started = Instant::now();
    loop {
        link.check_running();
        let primary_end = primary_flushed(client);
        if let Some(status) = link.standby_status(standby) {
            if status["replication_error"].is_null()
                && flushed(&status) == primary_end
                && status["replication_lag_bytes"].as_u64() == Some(0)
            {
                return primary_end;
            }
            assert!(started.elapsed() < limit, "{what}: the primary is at {primary_end}, the standby says {status}");
        } else {
            assert!(started.elapsed() < limit, "{what}: the standby does not answer its status");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_standby_across_a_cut_link_catches_up_when_it_heals() {
    // Before the link: dropped after it, once the brokers are gone.
    let temp = tempfile::tempdir().expect("temp dir");
    let mut link = match Link::create() {
        Ok(link) => link,
        Err(why) => {
            eprintln!("SKIPPED: no network namespace for the cut-link test ({why}); it needs root and iproute2");
            return;
        }
    };
    let test_started = Instant::now();
    let (primary_dir, standby_dir): (PathBuf, PathBuf) = (temp.path().join("primary"), temp.path().join("standby"));
    let config = temp.path().join("primary.toml");
    let timeout_ms = SYNC_STANDBY_TIMEOUT.as_millis();
    std::fs::write(&config, format!("replication = \"sync\"\nsync_standby_timeout_ms = {timeout_ms}\n"))
        .expect("config file");

    let primary_address = format!("{}:{}", link.root_ip, free_port(&link.root_ip));
    let mut primary = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    serve_args(&mut primary, &primary_dir, &primary_address);
    link.children.push(primary.arg("--config").arg(&config).spawn().expect("start the primary"));

    let standby_address = format!("{}:{STANDBY_PORT}", link.inner_ip);
    let mut standby = link.ringmq_inside();
    serve_args(&mut standby, &standby_dir, &standby_address);
    standby.args(["--role", "standby", "--standby-of", &primary_address]);
    link.children.push(standby.spawn().expect("start the standby in the namespace"));

    let started = Instant::now();
    while !common::answers(&primary_address, 1) {
        link.check_running();
        assert!(started.elapsed() < START_LIMIT, "the primary does not answer on {primary_address}");
        std::thread::sleep(Duration::from_millis(50));
    }
    while link.standby_status(&standby_address).is_none() {
        link.check_running();
        assert!(started.elapsed() < START_LIMIT, "the standby does not answer on {standby_address}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = Arc::new(Client::connect(&primary_address).expect("connect to the primary"));
    client.create_topic("orders", 1).expect("create");
    let producer = Producer::new(client.clone(), "orders", ProducerOptions::default()).expect("producer");

    // (1) The standby follows over the link: SEND_OK, same durable end.
    let started = Instant::now();
    loop {
        let (status, _) = send(&producer, "warm-up");
        if status == fb::SendStatus::SendOk {
            break;
        }
        assert!(started.elapsed() < START_LIMIT, "the standby never confirmed over the link: {status:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for index in 0..10 {
        let (status, _) = send(&producer, &format!("before-{index}"));
        assert_eq!(status, fb::SendStatus::SendOk, "message {index} before the cut");
    }
    let end_before = wait_following(&mut link, &standby_address, &client, START_LIMIT, "before the cut");
    // While the link is up the standby answers over it too.
    let over_link = Client::connect_with_timeout(&standby_address, Duration::from_secs(5)).expect("standby over veth");
    assert_eq!(admin::shard_statuses(&over_link).expect("status over the link")[0].flushed, end_before);
    drop(over_link);
    eprintln!("followed over the link at {end_before} after {:?}", test_started.elapsed());

    // (2) Cut: no confirmation, then no standby; every message stored.
    link.cut();
    let cut_at = Instant::now();
    let (status, took) = send(&producer, "cut-0");
    assert_eq!(status, fb::SendStatus::FlushSlaveTimeout, "the first send after the cut");
    assert!(took >= SYNC_STANDBY_TIMEOUT * 9 / 10, "FLUSH_SLAVE_TIMEOUT before the timeout: {took:?}");
    let mut sent = 1;
    loop {
        let (status, _) = send(&producer, &format!("cut-{sent}"));
        sent += 1;
        if status == fb::SendStatus::SlaveNotAvailable {
            break;
        }
        assert_eq!(status, fb::SendStatus::FlushSlaveTimeout, "send {sent} after the cut");
        assert!(cut_at.elapsed() < Duration::from_secs(30), "the primary still sees its standby after the cut");
    }
    eprintln!("SLAVE_NOT_AVAILABLE {:?} after the cut", cut_at.elapsed());
    for _ in 0..SENDS_WHILE_CUT {
        let (status, took) = send(&producer, &format!("cut-{sent}"));
        sent += 1;
        assert_eq!(status, fb::SendStatus::SlaveNotAvailable, "send {sent} after the cut");
        assert!(took < SYNC_STANDBY_TIMEOUT, "SLAVE_NOT_AVAILABLE waits for nobody: {took:?}");
    }
    let end_cut = primary_flushed(&client);
    assert!(end_cut > end_before, "the primary stored the messages of the cut: {end_cut} > {end_before}");
    // The standby notices its connection is dead and says so.
    loop {
        link.check_running();
        let status = link.standby_status(&standby_address).expect("the standby answers inside its namespace");
        assert_eq!(flushed(&status), end_before, "nothing crossed the cut link: {status}");
        if !status["replication_error"].is_null() {
            eprintln!("the standby noticed {:?} after the cut: {}", cut_at.elapsed(), status["replication_error"]);
            break;
        }
        assert!(cut_at.elapsed() < NOTICE_LIMIT, "the standby never noticed the cut link: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // (3) Heal: the standby reconnects and catches up byte for byte.
    link.heal();
    let healed_at = Instant::now();
    let end = wait_following(&mut link, &standby_address, &client, HEAL_LIMIT, "after the heal");
    assert!(end >= end_cut);
    eprintln!("caught up {:?} after the heal", healed_at.elapsed());
    assert!(segment_prefix(&primary_dir, end) == segment_prefix(&standby_dir, end), "the standby's segment differs");

    // Confirmed again: SEND_OK, on the standby byte for byte too.
    let started = Instant::now();
    loop {
        let (status, _) = send(&producer, "after-the-heal");
        if status == fb::SendStatus::SendOk {
            break;
        }
        assert!(started.elapsed() < HEAL_LIMIT, "still {status:?} after the standby caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let end_after = wait_following(&mut link, &standby_address, &client, START_LIMIT, "after a SEND_OK");
    assert!(end_after > end);
    assert!(
        segment_prefix(&primary_dir, end_after) == segment_prefix(&standby_dir, end_after),
        "the standby's segment differs after the heal"
    );
    eprintln!("done in {:?}", test_started.elapsed());
}
