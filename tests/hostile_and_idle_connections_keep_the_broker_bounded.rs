//! Hostile and idle clients against a real broker process on 127.0.0.1:
//! thousands of connections that each send the header of a largest frame and
//! 64 KiB of it, then stall, leave the broker's memory bounded and a round
//! trip working; a shard's budget for incomplete frames closes connections
//! past it, and peers that claim again a size they sent whole cannot spend
//! it; an idle connection is closed after the idle timeout, a busy one is
//! not; a peer that reads none of its answers is disconnected, and one that
//! sends requests the broker refuses and reads nothing stops being read.

mod common;

use common::Broker;
use ringmq::client::{expect_kind, Connection};
use ringmq::constants::{FRAME_BODY_BYTES_MAX, INCOMPLETE_FRAMES_BYTES_MIN};
use ringmq::protocol::{self, fb, frame_header, FetchParams, Kind};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What a stalled client sends: the header of a largest frame, then this
/// much of its body.
const STALLED_BODY_BYTES: usize = 64 * 1024;

/// Makes room for `descriptors` open files in this process.
fn allow_open_files(descriptors: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(read, 0, "getrlimit");
    if limit.rlim_cur >= descriptors {
        return;
    }
    assert!(limit.rlim_max >= descriptors, "the hard limit of open files {} is below {descriptors}", limit.rlim_max);
    limit.rlim_cur = descriptors;
    // SAFETY: as above.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(raised, 0, "setrlimit");
}

/// A connection that sends a largest frame's header and 64 KiB of its body,
/// then stalls.
fn stalled_connection(address: &str, request_id: u32) -> TcpStream {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_write_timeout(Some(Duration::from_secs(10))).expect("write timeout");
    let mut wire = frame_header(Kind::ProduceRequest as u16, request_id, FRAME_BODY_BYTES_MAX).to_vec();
    wire.resize(wire.len() + STALLED_BODY_BYTES, 0x5a);
    stream.write_all(&wire).expect("send the beginning of a frame");
    stream
}

/// Whether the broker still holds `stream` open (it sent nothing back).
fn is_open(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0; 1];
    let open = matches!(stream.read(&mut byte), Err(error) if error.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).expect("blocking");
    open
}

/// A `kB` line of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|line| line.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    let kib: u64 = line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number of kB");
    kib * 1024
}

/// Produce one message and fetch it back on one fresh connection.
fn round_trip(address: &str, topic: &str, body: &[u8]) {
    let timeout = Duration::from_secs(10);
    let connection = Connection::open(address, timeout).expect("a fresh connection");
    let message = ringmq::wire::MessageDraft { topic, body, ..Default::default() }.build();
    let produce = protocol::produce_request(topic, 0, &[&message], false);
    let answer = connection.request(Kind::ProduceRequest as u16, &produce, timeout).expect("produce");
    let answer = expect_kind(answer, Kind::ProduceResponse).expect("a produce response");
    protocol::verify::<fb::ProduceResponse>(&answer).expect("verify");
    let params = FetchParams {
        topic: topic.into(),
        queue: 0,
        offset: 0,
        max_count: 10,
        max_bytes: 1 << 20,
        max_wait_ms: 1000,
        ..FetchParams::default()
    };
    let answer =
        connection.request(Kind::FetchRequest as u16, &protocol::fetch_request(&params), timeout).expect("fetch");
    let answer = expect_kind(answer, Kind::FetchResponse).expect("a fetch response");
    let fetched = protocol::verify::<fb::FetchResponse>(&answer).expect("verify");
    assert_eq!(fetched.record_count(), 1, "the message produced comes back");
}

#[test]
fn thousands_of_stalled_connections_keep_the_broker_under_a_gib_and_serving() {
    let started = Instant::now();
    let connections_max = 2000;
    // Every stalled connection but one: the round trip takes the last.
    let stalled_count = connections_max - 1;
    allow_open_files(stalled_count as u64 + 256);
    let broker = Broker::start_with_config(1, Some(&format!("connections_max = {connections_max}\n")));
    ringmq::client::Client::connect(&broker.address()).expect("connect").create_topic("storm", 1).expect("create");
    // The connections of the start-up checks and the creation are released.
    std::thread::sleep(Duration::from_millis(500));
    let before = status_bytes(broker.pid(), "VmRSS:");

    let stalled: Vec<TcpStream> =
        (0..stalled_count).map(|index| stalled_connection(&broker.address(), index as u32 + 1)).collect();
    // Until the broker has read what they sent.
    std::thread::sleep(Duration::from_secs(2));
    let open = stalled.iter().filter(|stream| is_open(stream)).count();
    assert_eq!(open, stalled_count, "every stalled connection is still open");

    let rss = status_bytes(broker.pid(), "VmRSS:");
    let data = status_bytes(broker.pid(), "VmData:");
    eprintln!(
        "{stalled_count} stalled connections: broker VmRSS {} MiB (before {} MiB), VmData {} MiB",
        rss >> 20,
        before >> 20,
        data >> 20
    );
    assert!(rss < 1 << 30, "the broker's RSS is {} MiB with {stalled_count} stalled connections", rss >> 20);
    // What the broker allocated, resident or not: with overcommit, the
    // clients could make it resident by sending the rest of their frames.
    // Reserving each frame's claimed length puts this past 8 GiB.
    assert!(data < 2 << 30, "the broker allocated {} MiB for {stalled_count} stalled connections", data >> 20);

    round_trip(&broker.address(), "storm", b"through the storm");
    let open = stalled.iter().filter(|stream| is_open(stream)).count();
    assert_eq!(open, stalled_count, "the stalled connections were all open during the round trip");
    drop(stalled);
    assert!(started.elapsed() < Duration::from_secs(90), "took {:?}", started.elapsed());
}

/// A one-shard broker with `budget` bytes for incomplete frames and a
/// topic `t` of one queue.
fn broker_with_budget(budget: usize) -> Broker {
    let config = format!("incomplete_frames_bytes_max = {budget}\n");
    let broker = Broker::start_with_config(1, Some(&config));
    ringmq::client::Client::connect(&broker.address()).expect("connect").create_topic("t", 1).expect("create");
    broker
}

#[test]
fn a_shard_closes_the_connections_past_its_budget_for_incomplete_frames() {
    let budget = INCOMPLETE_FRAMES_BYTES_MIN;
    let broker = broker_with_budget(budget);
    let count = 2 * budget / STALLED_BODY_BYTES;
    allow_open_files(count as u64 + 256);
    let stalled: Vec<TcpStream> =
        (0..count).map(|index| stalled_connection(&broker.address(), index as u32 + 1)).collect();
    std::thread::sleep(Duration::from_secs(2));
    let open = stalled.iter().filter(|stream| is_open(stream)).count();
    eprintln!("{open} of {count} stalled connections kept within a budget of {budget} bytes");
    assert!(open > 0, "connections within the budget stay open");
    assert!(
        open * STALLED_BODY_BYTES <= budget,
        "{open} connections of {STALLED_BODY_BYTES} bytes each stay open within a budget of {budget} bytes"
    );
    // Connections that each hold 4 KiB past their first read take what is
    // left of the budget, to the last 4 KiB.
    let nibbling: Vec<TcpStream> = (0..64)
        .map(|index| {
            let mut stream = TcpStream::connect(broker.address()).expect("connect");
            let mut wire = frame_header(Kind::ProduceRequest as u16, index + 1, 6 * 1024).to_vec();
            wire.resize(5 * 1024, 0x5a);
            stream.write_all(&wire).expect("send the beginning of a small frame");
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(nibbling.iter().any(|stream| !is_open(stream)), "the budget is spent to its last 4 KiB");
    // A new connection's small requests fit in its first read, which the
    // budget does not count: served while the budget is spent.
    round_trip(&broker.address(), "t", b"while the budget is spent");
    assert_eq!(stalled.iter().filter(|stream| is_open(stream)).count(), open, "the stalled ones are still open");
}

/// A peer that has sent a whole frame of some size may get room for the
/// next one as soon as its length arrives (fewer copies of large requests),
/// so it could claim that size again and stall. Past half the shard's
/// budget, such claims get the strict rule: many such peers do not spend
/// the budget, and none is closed for it.
#[test]
fn peers_that_claim_a_size_they_sent_before_and_stall_keep_within_half_the_budget() {
    let budget = INCOMPLETE_FRAMES_BYTES_MIN;
    let broker = broker_with_budget(budget);
    let body = vec![0x5a; 512 * 1024];
    let message = ringmq::wire::MessageDraft { topic: "t", body: &body, ..Default::default() }.build();
    let request = protocol::produce_request("t", 0, &[&message], false);
    let frame = protocol::encode_frame(Kind::ProduceRequest as u16, 1, &request);
    // Twice what the budget could hold if each claim got its room; held by
    // the strict rule (twice the 64 KiB each sends), half of them fit.
    let count = 2 * (budget / frame.len());
    allow_open_files(count as u64 + 256);
    // A connection the broker closed (for its budget) is `None`.
    let claimers: Vec<Option<TcpStream>> = (0..count)
        .map(|index| {
            let mut stream = TcpStream::connect(broker.address()).expect("connect");
            stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
            stream.write_all(&frame).ok()?;
            let mut prefix = [0; 4];
            stream.read_exact(&mut prefix).ok()?;
            let mut answer = vec![0; u32::from_le_bytes(prefix) as usize];
            stream.read_exact(&mut answer).ok()?;
            // The same size claimed again, and enough of it to fill the
            // first read's room, so that the buffer grows.
            let mut claim = frame_header(Kind::ProduceRequest as u16, index as u32 + 2, request.len()).to_vec();
            claim.resize(claim.len() + STALLED_BODY_BYTES, 0x5a);
            stream.write_all(&claim).ok()?;
            Some(stream)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let open = claimers.iter().flatten().filter(|stream| is_open(stream)).count();
    assert_eq!(open, count, "{} of {count} claiming connections closed for the budget", count - open);
    round_trip(&broker.address(), "t", b"while the claims stall");
}

#[test]
fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let broker = Broker::start_with_config(1, Some("connection_idle_timeout_ms = 500\n"));
    let silent = TcpStream::connect(broker.address()).expect("connect");
    let mut half_frame = TcpStream::connect(broker.address()).expect("connect");
    // A frame's beginning is not activity: only a complete frame is.
    half_frame.write_all(&1000u32.to_le_bytes()).expect("write");
    let opened = Instant::now();

    // A connection with a request every 150 ms stays open past the timeout.
    let busy = Connection::open(&broker.address(), Duration::from_secs(5)).expect("connect");
    while opened.elapsed() < Duration::from_millis(1500) {
        let answer =
            busy.request(Kind::MetadataRequest as u16, &protocol::metadata_request(&[]), Duration::from_secs(5));
        expect_kind(answer.expect("a busy connection is answered"), Kind::MetadataResponse).expect("metadata");
        std::thread::sleep(Duration::from_millis(150));
    }

    for (name, mut stream) in [("silent", silent), ("half a frame", half_frame)] {
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut byte = [0; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("the {name} connection should be closed by the broker, got {other:?}"),
        }
        let closed_after = opened.elapsed();
        assert!(closed_after < Duration::from_secs(3), "the {name} connection was closed after {closed_after:?}");
    }
}

#[test]
fn a_peer_that_does_not_read_its_answers_is_disconnected() {
    let broker = Broker::start_with_config(1, Some("connection_write_timeout_ms = 500\n"));
    round_trip_setup(&broker.address(), "big", &vec![7; 1 << 20]);
    let mut stream = TcpStream::connect(broker.address()).expect("connect");
    shrink_receive_buffer(&stream);
    // 24 fetches of a 1 MiB message: far more than the sockets buffer.
    let requests = 24;
    let params = FetchParams {
        topic: "big".into(),
        queue: 0,
        offset: 0,
        max_count: 1,
        max_bytes: 2 << 20,
        max_wait_ms: 0,
        ..FetchParams::default()
    };
    let fetch = protocol::fetch_request(&params);
    let wire: Vec<u8> = (0..requests)
        .flat_map(|request_id| protocol::encode_frame(Kind::FetchRequest as u16, request_id + 1, &fetch))
        .collect();
    stream.write_all(&wire).expect("send the fetches");
    // Read nothing until well after the broker has its answers (a debug
    // build takes a few seconds to check their CRCs) and its write timeout.
    std::thread::sleep(Duration::from_secs(6));
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut received = 0usize;
    let mut chunk = vec![0; 1 << 16];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => received += read,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => break,
            Err(error) => panic!("the broker should have closed the connection; after {received} bytes: {error}"),
        }
    }
    assert!(received < (requests as usize) << 20, "{received} bytes of answers came: the broker never gave up");
    round_trip(&broker.address(), "big", &[]);
}

#[test]
fn a_peer_that_sends_refused_requests_and_reads_nothing_stops_being_read() {
    let broker = Broker::start_with_config(1, Some("in_flight_max = 8\n"));
    ringmq::client::Client::connect(&broker.address()).expect("connect").create_topic("t", 1).expect("create");
    let mut stream = TcpStream::connect(broker.address()).expect("connect");
    shrink_receive_buffer(&stream);
    stream.set_write_timeout(Some(Duration::from_secs(3))).expect("write timeout");
    // Requests numbered as the broker's own: each is refused with an answer
    // this peer never reads. Their answers must hold the connection's
    // budget, so that the broker stops reading once 8 are stuck.
    let chunk: Vec<u8> = (0..2048u32)
        .flat_map(|n| {
            protocol::encode_frame(Kind::MetadataRequest as u16, 0x8000_0000 | n, &protocol::metadata_request(&[]))
        })
        .collect();
    let limit = 64usize << 20;
    let mut sent = 0usize;
    let stopped = loop {
        if sent >= limit {
            break false;
        }
        match stream.write(&chunk) {
            Ok(written) => sent += written,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break true,
            Err(error) => panic!("the broker closed the connection after {sent} bytes: {error}"),
        }
    };
    assert!(stopped, "the broker read {sent} bytes of requests it could not answer");
    round_trip(&broker.address(), "t", b"still serving");
}

/// A small receive buffer: loopback's autotuned one could take every answer.
fn shrink_receive_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let bytes: libc::c_int = 64 * 1024;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local
    // on a descriptor this stream owns.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUF");
}

/// Creates `topic` (one queue) and stores one message of `body` in it.
fn round_trip_setup(address: &str, topic: &str, body: &[u8]) {
    let client = ringmq::client::Client::connect(address).expect("connect");
    client.create_topic(topic, 1).expect("create");
    let message = ringmq::wire::MessageDraft { topic, body, ..Default::default() }.build();
    client.call(0, Kind::ProduceRequest, &protocol::produce_request(topic, 0, &[&message], false)).expect("produce");
}

#[test]
fn ids_and_producer_groups_past_their_length_caps_are_refused_by_name() {
    use ringmq::client::{Client, ClientError};
    use ringmq::constants::{CLIENT_ID_BYTES_MAX, NAME_BYTES_MAX, TOPIC_NAME_BYTES_MAX};
    let broker = Broker::start(1);
    let client = Client::connect(&broker.address()).expect("connect");
    client.create_topic("t", 1).expect("create");
    let long_id = "i".repeat(CLIENT_ID_BYTES_MAX + 1);
    let long_group = "g".repeat(NAME_BYTES_MAX + 1);
    let long_topic = "t".repeat(TOPIC_NAME_BYTES_MAX + 1);
    let half = ringmq::wire::MessageDraft {
        topic: "t",
        body: b"x",
        half: true,
        producer_group: Some("pg"),
        transaction_id: Some(&long_id),
        ..Default::default()
    }
    .build();
    let cases = [
        (Kind::JoinGroupRequest, protocol::join_group_request("g", "t", &long_id, "", 10_000), "member id"),
        (Kind::JoinGroupRequest, protocol::join_group_request("g", "t", "", &long_id, 10_000), "instance id"),
        (Kind::HeartbeatRequest, protocol::heartbeat_request("g", "t", &long_id), "member id"),
        (Kind::RegisterProducerRequest, protocol::register_producer_request(&long_group), "producer group"),
        (
            Kind::EndTransactionRequest,
            protocol::end_transaction_request("t", 0, &long_id, fb::TransactionOutcome::Commit, false),
            "transaction id",
        ),
        (Kind::ProduceRequest, protocol::produce_request("t", 0, &[&half], false).to_vec(), "transaction_id"),
        (Kind::FetchOffsetRequest, protocol::fetch_offset_request(&long_group, "t", 0), "group"),
        (Kind::ProduceRequest, protocol::produce_request(&long_topic, 0, &[&half], false).to_vec(), "topic name"),
    ];
    for (kind, body, named) in cases {
        match client.call(0, kind, &body) {
            Err(ClientError::Broker(failure)) => {
                assert!(
                    failure.message.contains(named) && failure.message.contains("bytes"),
                    "{kind:?}: {failure} does not name {named}"
                );
                assert!(
                    !failure.message.contains(&long_id)
                        && !failure.message.contains(&long_group)
                        && !failure.message.contains(&long_topic),
                    "{kind:?}: the refusal echoes the long value"
                );
            }
            other => panic!("{kind:?} with a too long {named}: expected a refusal, got {other:?}"),
        }
    }
    // At the cap, accepted.
    let at_cap = "g".repeat(NAME_BYTES_MAX);
    client.call(0, Kind::RegisterProducerRequest, &protocol::register_producer_request(&at_cap)).expect("at the cap");
}
