//! Sync replication (issue 13): a sync primary's consumers see a record
//! only once its standby confirmed it, or once the produce that wrote it
//! gave up waiting (FLUSH_SLAVE_TIMEOUT); offset commits and transaction
//! ends wait for the standby too and, when it does not answer, are kept
//! and answered after the timeout. Two real brokers on 127.0.0.1; the
//! standby is stopped with SIGSTOP.

mod common;

use common::{free_ports, signal, Broker};
use ringmq::client::{
    admin, Client, Consumer, ConsumerOptions, OutgoingMessage, Producer, ProducerOptions, QueueChoice,
};
use ringmq::protocol::{self, fb, FetchParams, Kind};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_millis(1000);
/// Generous: the machine is shared. Only lower bounds are close to the
/// timeout, and those cannot be early.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

fn durable_ends(address: &str) -> Vec<u64> {
    let client = Client::connect_with_timeout(address, Duration::from_secs(5)).expect("connect");
    admin::shard_statuses(&client).expect("status").iter().map(|status| status.flushed).collect()
}

fn wait_caught_up(primary: &Broker, standby: &Broker) {
    let started = Instant::now();
    while durable_ends(&primary.address()) != durable_ends(&standby.address()) {
        assert!(started.elapsed() < WAIT_LIMIT, "the standby did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bodies of queue 0 of `orders` from `offset`, as a fetch waiting up
/// to `wait_ms` for one answers.
fn fetch_from(client: &Client, offset: u64, wait_ms: u32) -> Vec<String> {
    let params = FetchParams {
        topic: "orders".into(),
        queue: 0,
        offset,
        max_count: 1000,
        max_bytes: 4 << 20,
        max_wait_ms: wait_ms,
        ..FetchParams::default()
    };
    let body = client.call(0, Kind::FetchRequest, &protocol::fetch_request(&params)).expect("fetch");
    let response = protocol::verify::<fb::FetchResponse>(&body).expect("verify");
    let (messages, _) = ringmq::client::fetched_messages(&body, &response, "orders", 0, offset).expect("records");
    messages.into_iter().map(|message| String::from_utf8(message.body).expect("utf-8")).collect()
}

fn send(producer: &Producer, body: &str) -> (fb::SendStatus, Duration) {
    let started = Instant::now();
    let receipt = producer
        .send(&OutgoingMessage { body: body.as_bytes(), ..Default::default() }, QueueChoice::Explicit(0))
        .expect("send");
    (receipt.status, started.elapsed())
}

/// Resumes the standby however the test ends, so the broker's drop can
/// stop it.
struct Stopped<'a>(&'a Broker);

impl<'a> Stopped<'a> {
    fn new(broker: &'a Broker) -> Self {
        signal(broker, libc::SIGSTOP);
        Self(broker)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

/// The shards' `unconfirmed_changes` counters summed, from the metrics
/// endpoint on `port`.
fn unconfirmed_changes(port: u16) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: ringmq\r\n\r\n").expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer
        .lines()
        .filter(|line| line.starts_with("ringmq_unconfirmed_changes_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn assert_took_the_timeout(took: Duration, what: &str) {
    assert!(took >= TIMEOUT - Duration::from_millis(100) && took < WAIT_LIMIT, "{what} took {took:?}");
}

#[test]
fn a_sync_primary_shows_consumers_only_what_its_standby_holds_or_a_produce_gave_up_on() {
    let metrics_port = free_ports(1);
    let config = format!(
        "replication = \"sync\"\nsync_standby_timeout_ms = {}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n",
        TIMEOUT.as_millis()
    );
    let primary = Broker::start_with_config(1, Some(&config));
    let client = Arc::new(Client::connect(&primary.address()).expect("connect"));
    client.create_topic("orders", 1).expect("create");
    let standby = Broker::start_with_args(1, &["--role", "standby", "--standby-of", &primary.address()]);
    wait_caught_up(&primary, &standby);
    let producer = Producer::new(client.clone(), "orders", ProducerOptions::default()).expect("producer");

    // Confirmed by the standby: SEND_OK, and fetchable.
    let (status, _) = send(&producer, "confirmed");
    assert_eq!(status, fb::SendStatus::SendOk);
    assert_eq!(fetch_from(&client, 0, 0), ["confirmed"]);

    let stopped = Stopped::new(&standby);
    // A long poll from past the confirmed record, started before the
    // produce: it answers once the produce gave up, not when the record is
    // durable on the primary.
    let polling = {
        let address = primary.address();
        std::thread::spawn(move || {
            let client = Client::connect(&address).expect("connect");
            let started = Instant::now();
            let bodies = fetch_from(&client, 1, 20_000);
            (bodies, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let sending = {
        let client = client.clone();
        std::thread::spawn(move || {
            let producer = Producer::new(client, "orders", ProducerOptions::default()).expect("producer");
            send(&producer, "unconfirmed")
        })
    };
    // During the produce's wait the record is durable here, not visible.
    std::thread::sleep(TIMEOUT / 3);
    assert!(!sending.is_finished(), "the produce answered before the standby timeout");
    assert_eq!(fetch_from(&client, 0, 0), ["confirmed"], "a record the standby has not confirmed was fetched");
    let (status, took) = sending.join().expect("the sending thread");
    assert_eq!(status, fb::SendStatus::FlushSlaveTimeout);
    assert_took_the_timeout(took, "the produce");
    // Stored and said so: visible from the answer on.
    assert_eq!(fetch_from(&client, 0, 0), ["confirmed", "unconfirmed"]);
    let (polled, waited) = polling.join().expect("the polling thread");
    assert_eq!(polled, ["unconfirmed"]);
    assert!(waited >= TIMEOUT - Duration::from_millis(100), "the long poll answered after {waited:?}");

    drop(stopped);
    // Each stop below stays shorter than the 3 s after which the primary
    // counts its standby as gone (and answers at once).
    wait_caught_up(&primary, &standby);

    // An offset commit waits for the standby, then is kept.
    let options = ConsumerOptions { session_timeout_ms: 10_000, ..ConsumerOptions::default() };
    let mut consumer = Consumer::join(client.clone(), "billing", "orders", options).expect("join");
    let stopped = Stopped::new(&standby);
    let started = Instant::now();
    consumer.commit(0, 2).expect("commit");
    assert_took_the_timeout(started.elapsed(), "the offset commit");
    assert_eq!(consumer.committed_offset(0).expect("committed"), Some(2));
    drop(stopped);
    wait_caught_up(&primary, &standby);

    // So does an end transaction; its message shows once it is answered.
    let half = OutgoingMessage { body: b"transacted", ..Default::default() };
    let receipt = producer.send_half(&half, QueueChoice::Explicit(0), "payments", "t-1").expect("half");
    assert_eq!(receipt.status, fb::SendStatus::SendOk);
    let stopped = Stopped::new(&standby);
    let started = Instant::now();
    let (state, offset) = client
        .end_transaction("orders", 0, "t-1", fb::TransactionOutcome::Commit, Duration::from_secs(20))
        .expect("commit the transaction");
    assert_took_the_timeout(started.elapsed(), "the end transaction");
    assert_eq!((state, offset), (fb::TransactionState::Committed, Some(2)));
    assert_eq!(fetch_from(&client, 0, 0), ["confirmed", "unconfirmed", "transacted"]);
    drop(stopped);
    // Both answers without the standby's confirmation were counted (the
    // shard publishes its figures now and then).
    let started = Instant::now();
    while unconfirmed_changes(metrics_port) < 2 {
        assert!(started.elapsed() < WAIT_LIMIT, "the unconfirmed changes were not counted");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Resumed, the standby confirms again: SEND_OK, fetchable at once.
    let started = Instant::now();
    loop {
        let (status, _) = send(&producer, "after the pause");
        if status == fb::SendStatus::SendOk {
            break;
        }
        assert!(started.elapsed() < WAIT_LIMIT, "still {status:?} after the standby resumed");
    }
    let bodies = fetch_from(&client, 3, 0);
    assert!(bodies.iter().all(|body| body == "after the pause") && !bodies.is_empty(), "{bodies:?}");
    let started = Instant::now();
    consumer.commit(0, 3).expect("commit");
    assert!(started.elapsed() < TIMEOUT * 5, "a confirmed commit took {:?}", started.elapsed());
}

/// Long-polls queue 0 from `offset` until `body` is there (bounded).
fn wait_fetched(client: &Client, offset: u64, body: &str) {
    let started = Instant::now();
    while !fetch_from(client, offset, 2_000).iter().any(|fetched| fetched == body) {
        assert!(started.elapsed() < WAIT_LIMIT, "{body:?} never became fetchable");
    }
}

#[test]
fn a_delayed_message_no_request_waits_for_is_released_with_or_without_the_standby() {
    let config = format!("replication = \"sync\"\nsync_standby_timeout_ms = {}\n", TIMEOUT.as_millis());
    let primary = Broker::start_with_config(1, Some(&config));
    let client = Arc::new(Client::connect(&primary.address()).expect("connect"));
    client.create_topic("orders", 1).expect("create");
    let standby = Broker::start_with_args(1, &["--role", "standby", "--standby-of", &primary.address()]);
    wait_caught_up(&primary, &standby);
    let producer = Producer::new(client.clone(), "orders", ProducerOptions::default()).expect("producer");
    let delayed = |body: &'static str| {
        let message = OutgoingMessage { body: body.as_bytes(), delay_level: 1, ..Default::default() };
        producer.send(&message, QueueChoice::Explicit(0)).expect("send delayed").status
    };

    // Delivered by a timer with the standby following: its confirmation
    // releases the delivery.
    assert_eq!(delayed("followed"), fb::SendStatus::SendOk);
    wait_fetched(&client, 0, "followed");

    // With the standby stopped (longer than the primary's 3 s window after
    // its last REPLICATE answer, so usually counted as gone) the produce is
    // not SEND_OK, and the delivery, which no request waits for, is
    // released all the same: at once with no standby, after the timeout
    // and a grace otherwise.
    let stopped = Stopped::new(&standby);
    std::thread::sleep(Duration::from_millis(4_500));
    let status = delayed("unfollowed");
    assert!(
        matches!(status, fb::SendStatus::SlaveNotAvailable | fb::SendStatus::FlushSlaveTimeout),
        "a delayed message the standby cannot confirm: {status:?}"
    );
    wait_fetched(&client, 1, "unfollowed");
    drop(stopped);
}
