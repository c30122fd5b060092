//! `ringmq serve --metrics-listen` (or `metrics_listen`): a real broker,
//! the real client producing, consuming, sending back and ending a
//! transaction on a check-back, then scrapes over plain HTTP whose text is
//! parsed (counters, committed offset and lag, the fdatasync histogram, the
//! names the packaged Grafana dashboard uses); requests other than
//! `GET /metrics` and a silent client; a taken metrics port; and a broker
//! without the setting opens no port but its shards'.

mod common;

use common::{free_ports, Broker};
use ringmq::client::{
    CheckedMessage, Client, ConsumeResult, Consumer, ConsumerOptions, GroupConsumer, LocalOutcome, OutgoingMessage,
    Producer, ProducerOptions, QueueChoice, TransactionListener, TransactionProducer,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One sample: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Sends `request` to `port` and returns the status line and the body.
fn http(port: u16, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head/body split in {answer:?}"));
    let status = head.lines().next().expect("a status line").to_string();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
        .parse()
        .expect("a length");
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, body.to_string())
}

fn scrape(port: u16) -> Vec<Sample> {
    let (status, body) = http(port, "GET /metrics HTTP/1.1\r\nHost: ringmq\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    parse(&body)
}

/// Parses the text format: `# ...` lines (HELP, TYPE, EOF) and samples
/// `name{key="value",...} number`.
fn parse(text: &str) -> Vec<Sample> {
    assert!(text.ends_with("# EOF\n"), "the page ends in # EOF: {text}");
    let mut samples = Vec::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let labels = rest
                    .split(',')
                    .map(|pair| {
                        let (key, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                        let value = quoted.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                        (key.to_string(), value.unwrap_or_else(|| panic!("unquoted label in {line:?}")).to_string())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        assert!(name.starts_with("ringmq_"), "{line:?}");
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    samples
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    samples.iter().filter(|sample| sample.name == name).map(|sample| sample.value).sum()
}

/// The one sample of `name` whose labels include `wanted`.
fn find<'a>(samples: &'a [Sample], name: &str, wanted: &[(&str, &str)]) -> Option<&'a Sample> {
    let mut found = samples.iter().filter(|sample| {
        sample.name == name
            && wanted.iter().all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
    });
    let first = found.next();
    assert!(found.next().is_none(), "more than one {name} with {wanted:?}");
    first
}

/// Scrapes until `done` holds for the samples (the shards publish every
/// 500 ms), at most 10 s; returns the last scrape.
fn scrape_until(port: u16, what: &str, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape(port);
        if done(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "{what} never showed: {samples:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each shard's fdatasync histogram: cumulative buckets that never fall, a
/// `+Inf` bucket equal to the count, a sum; returns the total count.
fn check_histogram(samples: &[Sample], shards: u32) -> f64 {
    let mut total = 0.0;
    for shard in 0..shards {
        let shard = shard.to_string();
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|sample| sample.name == "ringmq_fdatasync_seconds_bucket" && sample.labels["shard"] == shard)
            .map(|sample| {
                let le = &sample.labels["le"];
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().expect("a bucket bound") };
                (bound, sample.value)
            })
            .collect();
        assert!(buckets.len() >= 2, "shard {shard}: buckets {buckets:?}");
        assert!(buckets.windows(2).all(|pair| pair[0].0 < pair[1].0), "bounds rise: {buckets:?}");
        assert!(buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1), "cumulative counts never fall: {buckets:?}");
        let count = find(samples, "ringmq_fdatasync_seconds_count", &[("shard", &shard)]).expect("a count").value;
        let sum = find(samples, "ringmq_fdatasync_seconds_sum", &[("shard", &shard)]).expect("a sum").value;
        let (last_bound, last_count) = buckets.pop().expect("buckets");
        assert!(last_bound.is_infinite() && last_count == count, "+Inf bucket {last_count} vs count {count}");
        assert!(count == 0.0 || sum > 0.0, "shard {shard}: {count} fdatasyncs took {sum} s");
        total += count;
    }
    total
}

/// The TCP ports process `pid` listens on (its sockets' inodes, looked up in
/// /proc/net/tcp and tcp6).
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the broker's fds")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().to_string();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address, state 0A (LISTEN), inode.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().expect("a port");
                ports.insert(u16::from_str_radix(port, 16).expect("a hex port"));
            }
        }
    }
    ports
}

#[test]
fn a_scrape_shows_what_was_produced_a_groups_lag_and_the_fdatasync_latency() {
    let metrics_port = free_ports(1);
    let listen = format!("127.0.0.1:{metrics_port}");
    let broker = Broker::start_with_args(2, &["--metrics-listen", &listen]);
    let shard_ports: BTreeSet<u16> = (0..2).map(|shard| broker.base_port + shard).collect();
    let expected: BTreeSet<u16> = shard_ports.iter().copied().chain([metrics_port]).collect();
    assert_eq!(listening_ports(broker.pid()), expected, "the shards' ports and the metrics port");

    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("work", 4).expect("create");
    let producer = Producer::new(client.clone(), "work", ProducerOptions::default()).expect("producer");
    let mut body_bytes = 0;
    for (queue, count) in [(1, 7), (2, 3)] {
        for index in 0..count {
            let body = format!("message {index} of queue {queue}");
            body_bytes += body.len();
            let message = OutgoingMessage { body: body.as_bytes(), ..Default::default() };
            producer.send(&message, QueueChoice::Explicit(queue)).expect("send");
        }
    }
    let options = ConsumerOptions { max_wait: Duration::from_millis(50), ..ConsumerOptions::default() };
    let mut consumer = Consumer::join(client.clone(), "g", "work", options).expect("join");
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received < 10 {
        assert!(Instant::now() < deadline, "only {received} of 10 messages consumed");
        received += consumer.poll().expect("poll").len();
    }
    consumer.commit(1, 4).expect("commit queue 1");

    let committed = [("group", "g"), ("topic", "work"), ("queue", "1")];
    // Each shard publishes its figures every half second, so a scrape may
    // lag behind what happened; wait until every shard has caught up.
    let samples = scrape_until(metrics_port, "the commit of queue 1 and every send and fetch", |samples| {
        find(samples, "ringmq_group_committed_offset", &committed).is_some_and(|sample| sample.value == 4.0)
            && sum(samples, "ringmq_produced_messages_total") >= 10.0
            && sum(samples, "ringmq_fetched_messages_total") >= 10.0
    });
    assert_eq!(sum(&samples, "ringmq_produced_messages_total"), 10.0, "every message sent, once");
    let produced_bytes = sum(&samples, "ringmq_produced_bytes_total");
    assert!(produced_bytes > body_bytes as f64, "{produced_bytes} bytes stored for {body_bytes} bytes of bodies");
    assert!(sum(&samples, "ringmq_fetched_messages_total") >= 10.0, "every message fetched");
    let lag = find(&samples, "ringmq_group_lag_messages", &committed).expect("the lag of queue 1");
    assert_eq!(lag.value, 3.0, "7 messages, 4 committed");
    assert!(find(&samples, "ringmq_group_committed_offset", &[("queue", "2")]).is_none(), "queue 2 never committed");
    let fdatasyncs = check_histogram(&samples, 2);
    assert!(fdatasyncs >= 1.0, "sync flush: at least one fdatasync");
    assert_eq!(fdatasyncs, sum(&samples, "ringmq_fdatasyncs_total"), "the histogram counts every fdatasync");
    assert!(sum(&samples, "ringmq_records_flushed_total") >= 10.0);
    assert!(sum(&samples, "ringmq_connections") >= 1.0, "the client's connections");
    for name in ["ringmq_timers_pending", "ringmq_transactions_pending", "ringmq_dead_letters_sent_total"] {
        assert_eq!(samples.iter().filter(|sample| sample.name == name).count(), 2, "{name} for each shard");
    }
    let exported: BTreeSet<&str> = samples.iter().map(|sample| sample.name.as_str()).collect();
    for name in dashboard_metric_names() {
        assert!(exported.contains(name.as_str()), "the dashboard uses {name}, which the broker does not export");
    }
}

/// The `ringmq_*` names the packaged Grafana dashboard's queries use.
fn dashboard_metric_names() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-ringmq.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("the dashboard is JSON");
    let mut names = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for expr in panels.iter().flat_map(|panel| panel["targets"].as_array().expect("targets")) {
        let expr = expr["expr"].as_str().expect("a query");
        let mut rest = expr;
        while let Some(start) = rest.find("ringmq_") {
            let name: String = rest[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[start + name.len()..];
            names.insert(name);
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    names
}

#[test]
fn the_endpoint_refuses_other_requests_and_outlasts_a_silent_client() {
    let metrics_port = free_ports(1);
    let listen = format!("127.0.0.1:{metrics_port}");
    let broker = Broker::start_with_args(1, &["--metrics-listen", &listen]);
    let (status, _) = http(metrics_port, "GET /other HTTP/1.1\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let (status, _) = http(metrics_port, "POST /metrics HTTP/1.1\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    let (status, _) = http(metrics_port, "garbage\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    let (status, _) = http(metrics_port, &format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(16 * 1024)));
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    // A client that connects and says nothing holds the endpoint at most
    // its time bound.
    let _silent = TcpStream::connect(("127.0.0.1", metrics_port)).expect("connect");
    let started = Instant::now();
    scrape_until(metrics_port, "shard 0's figures", |samples| find(samples, "ringmq_connections", &[]).is_some());
    assert!(started.elapsed() < Duration::from_secs(5), "a scrape waited {:?}", started.elapsed());
    assert!(common::answers(&broker.address(), 1), "the broker still serves");
}

#[test]
fn without_the_flag_no_metrics_port_is_opened() {
    let broker = Broker::start(2);
    let shard_ports: BTreeSet<u16> = (0..2).map(|shard| broker.base_port + shard).collect();
    assert_eq!(listening_ports(broker.pid()), shard_ports, "only the shards listen");
}

#[test]
fn a_poison_message_counts_one_retry_then_one_dead_letter() {
    let metrics_port = free_ports(1);
    // From the config file this time; retries back off from level 3: 40 ms.
    let config = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\ndelay_levels = \"10ms 20ms 40ms 80ms\"\n");
    let broker = Broker::start_with_config(1, Some(&config));
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("orders", 1).expect("create");
    let producer = Producer::new(client.clone(), "orders", ProducerOptions::default()).expect("producer");
    for body in ["ok", "poison"] {
        let message = OutgoingMessage { body: body.as_bytes(), ..Default::default() };
        producer.send(&message, QueueChoice::Explicit(0)).expect("send");
    }
    let options = ConsumerOptions { max_wait: Duration::from_millis(50), ..ConsumerOptions::default() };
    // One retry allowed: the second RECONSUME_LATER sends it to the DLQ.
    let mut consumer = GroupConsumer::join(client.clone(), "billing", "orders", options, 1).expect("join");
    let mut poison_deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while poison_deliveries < 2 {
        assert!(Instant::now() < deadline, "the poison message came {poison_deliveries} times");
        consumer
            .handle_next(|message| match message.body.as_slice() {
                b"poison" => {
                    poison_deliveries += 1;
                    ConsumeResult::Later
                }
                _ => ConsumeResult::Success,
            })
            .expect("handle");
    }
    let samples = scrape_until(metrics_port, "one dead letter", |samples| {
        sum(samples, "ringmq_dead_letters_sent_total") == 1.0 && sum(samples, "ringmq_timers_pending") == 0.0
    });
    assert_eq!(sum(&samples, "ringmq_retries_sent_total"), 1.0, "one retry before the dead letter");
    assert_eq!(sum(&samples, "ringmq_produced_messages_total"), 2.0, "send-backs are not produce requests");
}

#[test]
fn a_metrics_port_in_use_stops_the_start_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let metrics = taken.local_addr().expect("its address").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = format!("127.0.0.1:{}", free_ports(1));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["serve", "--shards", "1", "--log", "warn", "--disk-max-used-percent", "100"])
        .args(["--listen", &listen, "--metrics-listen", &metrics, "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ringmq serve");
    let status = common::exit_within(&mut child, Duration::from_secs(20), "ringmq serve on a taken metrics port");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    assert!(!status.success(), "it started: {stderr}");
    assert!(stderr.contains(&metrics) && stderr.contains("metrics endpoint"), "{stderr}");
}

/// A local transaction whose outcome is unknown at first and committed when
/// the broker checks back.
struct CommitOnCheck;

impl TransactionListener for CommitOnCheck {
    fn execute_local(&self, _: &OutgoingMessage<'_>, _: &str) -> LocalOutcome {
        LocalOutcome::Unknown
    }

    fn check_local(&self, _: &CheckedMessage) -> LocalOutcome {
        LocalOutcome::Commit
    }
}

#[test]
fn a_delivered_check_is_counted_and_the_half_it_committed_is_no_longer_pending() {
    let metrics_port = free_ports(1);
    // Checks every 100 ms once a half is 300 ms old.
    let config = format!(
        "metrics_listen = \"127.0.0.1:{metrics_port}\"\ntransaction_timeout_ms = 300\ntransaction_check_interval_ms = 100\n"
    );
    let broker = Broker::start_with_config(1, Some(&config));
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("orders", 1).expect("create");
    let producer =
        TransactionProducer::new(client, "orders", "payments", Arc::new(CommitOnCheck), ProducerOptions::default())
            .expect("transaction producer");
    let message = OutgoingMessage { body: b"order 1 paid", ..Default::default() };
    let (_, outcome) = producer.send_in_transaction(&message, QueueChoice::Explicit(0)).expect("half");
    assert_eq!(outcome, LocalOutcome::Unknown);
    scrape_until(metrics_port, "a check delivered and the half committed", |samples| {
        sum(samples, "ringmq_checks_delivered_total") >= 1.0 && sum(samples, "ringmq_transactions_pending") == 0.0
    });
}

#[test]
fn a_standby_and_its_primary_export_their_role_epoch_and_lag() {
    let (primary_metrics, standby_metrics) = (free_ports(1), free_ports(1));
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let primary = Broker::start_with_args(2, &["--metrics-listen", &listen(primary_metrics)]);
    let primary_address = primary.address();
    let standby_args = ["--role", "standby", "--standby-of", &primary_address, "--metrics-listen"];
    let standby = Broker::start_with_args(2, &[&standby_args[..], &[listen(standby_metrics).as_str()]].concat());
    let client = Arc::new(Client::connect(&primary_address).expect("connect"));
    client.create_topic("work", 2).expect("create");
    let samples = scrape_until(primary_metrics, "the standby connected on both shards", |samples| {
        sum(samples, "ringmq_standby_connected") == 2.0
    });
    assert_eq!(sum(&samples, "ringmq_standby"), 0.0, "a primary");
    assert_eq!(sum(&samples, "ringmq_epoch"), 0.0);
    let samples = scrape_until(standby_metrics, "the standby caught up", |samples| {
        sum(samples, "ringmq_replication_lag_bytes") == 0.0 && sum(samples, "ringmq_standby") == 2.0
    });
    assert_eq!(samples.iter().filter(|sample| sample.name == "ringmq_replication_lag_seconds").count(), 2);
    drop(standby);
}
