//! The zero-loss promise under crashes. Three producers send while a live
//! consumer reads and the broker is killed with SIGKILL at random moments
//! and restarted. The producers ride out every restart (no line is given
//! up), and afterwards a fresh group reads:
//! - every line every producer was given, exactly once (no stored duplicate),
//! - each producer's lines in each queue in the order it sent them,
//! - nothing that was never sent;
//!
//! and the live group's committed offsets never went backwards.
//!
//! The seed is printed; RINGMQ_CRASH_SEED replays it and
//! RINGMQ_BROKER_CRASH_CYCLES runs longer (20 by default). The default
//! sizes are kept; snapshots are taken every 50 ms so that restarts start
//! from one.

mod common;

use common::{consume_in_order, Broker};
use ringmq::client::{Client, Consumer, ConsumerOptions, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::{self, fb, verify, Kind};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CYCLES_DEFAULT: u64 = 20;
const PRODUCERS: usize = 3;
const QUEUES: u32 = 4;
const TOPIC: &str = "zero";
const LIVE_GROUP: &str = "live";
/// Lines a producer sends per pipelined round, and requests in flight.
const ROUND_LINES: usize = 48;
const WINDOW: usize = 16;
/// Bounds the whole test: producers stop being fed after the last restart
/// and must be done within this.
const FINISH_LIMIT: Duration = Duration::from_secs(120);

/// What one producer was given and what it was told.
#[derive(Default)]
struct Sent {
    given: Vec<String>,
    failures: Vec<String>,
}

fn producer_loop(address: String, producer: usize, stop: Arc<AtomicBool>, sent: Arc<Mutex<Sent>>) {
    let client = Client::connect_patiently(&address, Duration::from_secs(1), Duration::from_secs(60));
    let client = Arc::new(client.expect("the producer reaches the broker"));
    let options = ProducerOptions { delivery_timeout: Duration::from_secs(60), ..ProducerOptions::default() };
    let producer_handle = Producer::new(client, TOPIC, options).expect("producer");
    let mut next = 0;
    while !stop.load(Ordering::SeqCst) {
        let lines: Vec<String> = (next..next + ROUND_LINES).map(|index| format!("p{producer}-{index:07}")).collect();
        next += ROUND_LINES;
        sent.lock().expect("lock").given.extend(lines.iter().cloned());
        let messages: Vec<_> =
            lines.iter().map(|line| OutgoingMessage { body: line.as_bytes(), ..Default::default() }).collect();
        let results = producer_handle.send_pipelined(&messages, QueueChoice::RoundRobin, WINDOW);
        let mut sent = sent.lock().expect("lock");
        for (line, result) in lines.iter().zip(results) {
            if let Err(error) = result {
                sent.failures.push(format!("{line}: {error}"));
            }
        }
    }
}

/// The live consumer: reads and commits as an application would, through
/// every restart.
fn live_consumer(address: String, stop: Arc<AtomicBool>) {
    let client = Client::connect_patiently(&address, Duration::from_secs(1), Duration::from_secs(60));
    let client = Arc::new(client.expect("the consumer reaches the broker"));
    let options = ConsumerOptions { max_wait: Duration::from_millis(100), ..ConsumerOptions::default() };
    let mut consumer = loop {
        match Consumer::join(client.clone(), LIVE_GROUP, TOPIC, options.clone()) {
            Ok(consumer) => break consumer,
            Err(error) if error.is_unreachable() => std::thread::sleep(Duration::from_millis(100)),
            Err(error) => panic!("the live consumer cannot join: {error}"),
        }
    };
    while !stop.load(Ordering::SeqCst) {
        // A commit refused during a restart is made again by a later one;
        // so is one the restarted broker fences off (it knows no assignment
        // until the consumer joined again, which the refusal makes it do).
        if let Err(error) = consumer.handle_next(|_| Ok::<(), ()>(())) {
            let rejoined = error.code() == Some(fb::ErrorCode::StaleGeneration);
            assert!(error.is_unreachable() || error.is_retryable() || rejoined, "the live consumer failed: {error}");
        }
    }
}

/// The live group's committed offset of each queue, if the broker answers.
fn committed_offsets(address: &str) -> Option<BTreeMap<u32, i64>> {
    let client = Client::connect_with_timeout(address, Duration::from_secs(2)).ok()?;
    let topic = client.topic(TOPIC).ok()?;
    let mut offsets = BTreeMap::new();
    for queue in 0..QUEUES {
        let body = protocol::fetch_offset_request(LIVE_GROUP, TOPIC, queue);
        let answer = client.call(topic.queue_shards[queue as usize], Kind::FetchOffsetRequest, &body).ok()?;
        offsets.insert(queue, verify::<fb::OffsetResponse>(&answer).ok()?.offset());
    }
    Some(offsets)
}

fn assert_not_behind(before: &BTreeMap<u32, i64>, after: &BTreeMap<u32, i64>, seed: u64) {
    for (queue, offset) in before {
        let now = after.get(queue).copied().unwrap_or(-1);
        assert!(now >= *offset, "seed {seed}: the committed offset of queue {queue} went back from {offset} to {now}");
    }
}

#[test]
fn producers_ride_out_sigkills_and_each_message_is_stored_once_in_order() {
    let seed =
        std::env::var("RINGMQ_CRASH_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    let cycles =
        std::env::var("RINGMQ_BROKER_CRASH_CYCLES").ok().and_then(|value| value.parse().ok()).unwrap_or(CYCLES_DEFAULT);
    println!("broker crash loop seed {seed} ({cycles} cycles); replay with RINGMQ_CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    // Snapshots (producer table, offsets, index) every 50 ms, so kills land
    // between snapshots and restarts rebuild from a snapshot plus the log.
    // RINGMQ_CRASH_FLUSH=async runs the loop in async flush mode, where a
    // crash may lose acknowledged messages (that mode's promise): then only
    // "none twice, in order, nothing phantom" is checked.
    let flush_async = std::env::var("RINGMQ_CRASH_FLUSH").is_ok_and(|mode| mode == "async");
    let flush = if flush_async { "flush = \"async\"\n" } else { "" };
    let mut broker = Broker::start_with_config(2, Some(&format!("checkpoint_interval_ms = 50\n{flush}")));
    Client::connect(&broker.address()).expect("connect").create_topic(TOPIC, QUEUES).expect("create");

    let stop_producing = Arc::new(AtomicBool::new(false));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let sent: Vec<_> = (0..PRODUCERS).map(|_| Arc::new(Mutex::new(Sent::default()))).collect();
    let producers: Vec<_> = sent
        .iter()
        .enumerate()
        .map(|(producer, sent)| {
            let (address, stop, sent) = (broker.address(), stop_producing.clone(), sent.clone());
            std::thread::spawn(move || producer_loop(address, producer, stop, sent))
        })
        .collect();
    let consumer = {
        let (address, stop) = (broker.address(), stop_consuming.clone());
        std::thread::spawn(move || live_consumer(address, stop))
    };

    let mut committed = BTreeMap::new();
    for _ in 0..cycles {
        std::thread::sleep(Duration::from_millis(rng.u64(150..600)));
        if let Some(offsets) = committed_offsets(&broker.address()) {
            assert_not_behind(&committed, &offsets, seed);
            committed = offsets;
        }
        broker.kill();
        // Producers and consumer meet refused connections for a while.
        std::thread::sleep(Duration::from_millis(rng.u64(0..300)));
        broker.restart();
        let after = committed_offsets(&broker.address()).expect("the restarted broker answers");
        assert_not_behind(&committed, &after, seed);
        committed = after;
    }
    for shard in 0..2 {
        let snapshot = broker.data_dir().join(format!("shard-{shard}/producers.snapshot"));
        assert!(snapshot.exists(), "seed {seed}: no producer snapshot was written on shard {shard}");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop_producing.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + FINISH_LIMIT;
    for producer in producers {
        while !producer.is_finished() {
            assert!(Instant::now() < deadline, "seed {seed}: a producer did not finish within {FINISH_LIMIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        producer.join().expect("producer thread");
    }
    stop_consuming.store(true, Ordering::SeqCst);
    consumer.join().expect("the live consumer rode out every restart");

    let mut given = 0;
    for (producer, sent) in sent.iter().enumerate() {
        let sent = sent.lock().expect("lock");
        assert!(
            sent.failures.is_empty(),
            "seed {seed}: producer {producer} gave up on {:?}",
            &sent.failures[..sent.failures.len().min(5)]
        );
        given += sent.given.len();
    }
    let stored = consume_in_order(&broker.address(), "audit", TOPIC);
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for (_, _, body) in &stored {
        *copies.entry(body.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = copies.iter().filter(|(_, count)| **count > 1).map(|(body, _)| *body).collect();
    assert!(twice.is_empty(), "seed {seed}: {} messages stored more than once, e.g. {:?}", twice.len(), twice.first());
    for (producer, sent) in sent.iter().enumerate() {
        let sent = sent.lock().expect("lock");
        let missing: Vec<_> = sent.given.iter().filter(|line| !copies.contains_key(line.as_str())).collect();
        if flush_async {
            println!("seed {seed}: producer {producer}: {} lines lost to async flush", missing.len());
            continue;
        }
        assert!(
            missing.is_empty(),
            "seed {seed}: producer {producer}: {} lines missing, e.g. {:?}",
            missing.len(),
            missing.first()
        );
    }
    let sent_lines: std::collections::HashSet<String> =
        sent.iter().flat_map(|sent| sent.lock().expect("lock").given.clone()).collect();
    let phantoms: Vec<_> = copies.keys().filter(|body| !sent_lines.contains(**body)).collect();
    assert!(phantoms.is_empty(), "seed {seed}: stored but never sent: {phantoms:?}");
    // Per queue, each producer's lines in the order it numbered them.
    let mut last: HashMap<(u32, &str), &str> = HashMap::new();
    for (queue, offset, body) in &stored {
        let (producer, index) = body.split_once('-').expect("a line we sent");
        if let Some(previous) = last.insert((*queue, producer), index) {
            assert!(
                previous < index,
                "seed {seed}: queue {queue} offset {offset}: {producer}-{index} stored after {producer}-{previous}"
            );
        }
    }
    println!("seed {seed}: {cycles} kills, {given} lines given, each stored once, in order");
}
