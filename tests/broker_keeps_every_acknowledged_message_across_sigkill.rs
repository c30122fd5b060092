//! Crash loop: a producer sends with sync flush while the broker is killed
//! with SIGKILL at random moments and restarted. Afterwards every
//! acknowledged message is consumed, intact (the client checks each record's
//! CRC), and none appears that was never sent. The seed is printed; set
//! RINGMQ_CRASH_SEED to replay and RINGMQ_BROKER_CRASH_CYCLES to run longer.

mod common;

use common::{consume_all, Broker};
use ringmq::client::{Client, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CYCLES_DEFAULT: u64 = 20;

fn producer_loop(
    address: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    attempted: Arc<Mutex<BTreeSet<String>>>,
    cycle: u64,
) {
    let Ok(client) = Client::connect(&address) else { return };
    let options =
        ProducerOptions { timeout: Duration::from_millis(500), retries: 0, backoff: Duration::from_millis(10) };
    let Ok(producer) = Producer::new(Arc::new(client), "crash", options) else { return };
    let mut index = 0;
    while !stop.load(Ordering::SeqCst) {
        let body = format!("c{cycle}-m{index}");
        index += 1;
        attempted.lock().expect("lock").insert(body.clone());
        let message = OutgoingMessage { body: body.as_bytes(), ..Default::default() };
        match producer.send(&message, QueueChoice::RoundRobin) {
            Ok(receipt) if receipt.status == ringmq::protocol::fb::SendStatus::SendOk => {
                acked.lock().expect("lock").insert(body);
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn every_acknowledged_message_survives_broker_sigkills() {
    let seed =
        std::env::var("RINGMQ_CRASH_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    let cycles =
        std::env::var("RINGMQ_BROKER_CRASH_CYCLES").ok().and_then(|value| value.parse().ok()).unwrap_or(CYCLES_DEFAULT);
    println!("broker crash loop seed {seed} ({cycles} cycles); replay with RINGMQ_CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut broker = Broker::start(2);
    Client::connect(&broker.address()).expect("connect").create_topic("crash", 4).expect("create");
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let attempted = Arc::new(Mutex::new(BTreeSet::new()));
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..3)
            .map(|producer| {
                let (address, stop, acked, attempted) =
                    (broker.address(), stop.clone(), acked.clone(), attempted.clone());
                std::thread::spawn(move || producer_loop(address, stop, acked, attempted, cycle * 10 + producer))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.u64(30..300)));
        broker.kill();
        stop.store(true, Ordering::SeqCst);
        for producer in producers {
            producer.join().expect("producer thread");
        }
        broker.restart();
    }
    let acked = acked.lock().expect("lock").clone();
    let attempted = attempted.lock().expect("lock").clone();
    assert!(!acked.is_empty(), "seed {seed}: nothing was acknowledged");

    let received = consume_all(&broker.address(), "audit", "crash");
    let lost: Vec<_> = acked.difference(&received).collect();
    assert!(lost.is_empty(), "seed {seed}: {} acknowledged messages lost, e.g. {:?}", lost.len(), lost.first());
    let phantoms: Vec<_> = received.difference(&attempted).collect();
    assert!(phantoms.is_empty(), "seed {seed}: messages never sent: {phantoms:?}");
    println!("seed {seed}: {cycles} kills, {} acknowledged, {} received, none lost", acked.len(), received.len());
}
