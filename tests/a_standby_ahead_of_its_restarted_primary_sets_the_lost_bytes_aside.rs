//! A sync primary ships each write to its standby while its own fdatasync
//! runs, so a crash can lose bytes the standby holds (never acknowledged:
//! the producer waits for both). The primary's restart starts a new epoch
//! where its log ends; the standby sees it runs past that start, stops
//! following and says so; restarted, it sets those bytes aside and follows
//! again, byte for byte.
//!
//! The lost write is simulated: the primary's log is put back to a copy
//! taken earlier, keeping its `epochs` file (a real crash cannot lose an
//! epoch record: it is durable before the primary serves).

mod common;

use common::Broker;
use ringmq::client::{admin, Client, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::{fb, ShardStatus};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONFIG: &str = "replication = \"sync\"\nsync_standby_timeout_ms = 2000\n";

fn status(address: &str) -> ShardStatus {
    let client = Client::connect_with_timeout(address, Duration::from_secs(5)).expect("connect");
    admin::shard_statuses(&client).expect("status").remove(0)
}

fn send_all(address: &str, bodies: impl Iterator<Item = String>) {
    let client = Arc::new(Client::connect(address).expect("connect"));
    let producer = Producer::new(client, "orders", ProducerOptions::default()).expect("producer");
    for body in bodies {
        let started = Instant::now();
        loop {
            let message = OutgoingMessage { body: body.as_bytes(), ..Default::default() };
            let receipt = producer.send(&message, QueueChoice::Explicit(0)).expect("send");
            if receipt.status == fb::SendStatus::SendOk {
                break;
            }
            // Only while the standby (re)connects.
            assert!(started.elapsed() < Duration::from_secs(30), "{body}: {:?}", receipt.status);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(60), "{what} did not happen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn a_standby_ahead_of_its_restarted_primary_sets_the_bytes_the_primary_lost_aside() {
    let mut primary = Broker::start_with_config(1, Some(CONFIG));
    let primary_address = primary.address();
    let mut standby = Broker::start_with_args(1, &["--role", "standby", "--standby-of", &primary_address]);
    Client::connect(&primary_address).expect("connect").create_topic("orders", 1).expect("create");
    send_all(&primary_address, (0..10).map(|index| format!("kept-{index:03}")));

    // The copy the "crash" will go back to.
    let shard_dir = primary.data_dir().join("shard-0");
    let backup = tempfile::tempdir().expect("temp dir");
    primary.terminate();
    copy_dir(&shard_dir, backup.path());

    // Restarted, the sync primary starts epoch 1; more goes to both.
    primary.restart();
    wait_until("the standby learning epoch 1", || status(&standby.address()).epoch == 1);
    send_all(&primary_address, (0..10).map(|index| format!("lost-{index:03}")));
    let ahead = status(&primary_address).flushed;
    wait_until("the standby catching up", || status(&standby.address()).flushed == ahead);

    // The "crash": the primary's log loses the last writes, not its epochs.
    primary.kill();
    let epochs = std::fs::read(shard_dir.join("epochs")).expect("epochs file");
    std::fs::remove_dir_all(&shard_dir).expect("remove");
    copy_dir(backup.path(), &shard_dir);
    std::fs::write(shard_dir.join("epochs"), epochs).expect("epochs file");
    primary.restart();
    let restarted = status(&primary_address);
    assert_eq!(restarted.epoch, 2, "{restarted:?}");
    assert!(restarted.flushed < ahead, "the primary lost the last writes: {restarted:?}");

    // The standby sees epoch 2 start before its own end and stops following.
    wait_until("the standby noticing", || {
        status(&standby.address()).replication_error.is_some_and(|why| why.contains("restart this standby"))
    });

    // Restarted, it sets the lost bytes aside and follows the primary again.
    standby.restart();
    let end = status(&primary_address).flushed;
    wait_until("the standby following again", || {
        let now = status(&standby.address());
        now.flushed == status(&primary_address).flushed && now.epoch == 2
    });
    let side_files = status(&standby.address()).diverged_files;
    assert_eq!(side_files.len(), 1, "{side_files:?}");
    let side = std::fs::read(&side_files[0]).expect("side file");
    let holds = |body: &str| side.windows(body.len()).any(|window| window == body.as_bytes());
    assert!((0..10).all(|index| holds(&format!("lost-{index:03}"))), "the lost records are in the side file");
    assert!((0..10).all(|index| !holds(&format!("kept-{index:03}"))), "nothing the primary kept is");
    let segment = |broker: &Broker| {
        let bytes = std::fs::read(broker.data_dir().join("shard-0/segments").join(format!("{:020}.log", 0)));
        bytes.expect("segment")[..end as usize].to_vec()
    };
    assert!(segment(&primary) == segment(&standby), "the standby's log is the primary's again");
    send_all(&primary_address, (0..3).map(|index| format!("after-{index:03}")));
}
