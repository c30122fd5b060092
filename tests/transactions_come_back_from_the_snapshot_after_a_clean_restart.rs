//! A clean stop writes the transaction snapshot; the restart starts from it
//! (and the records after it) and every transaction is where it was: a
//! pending half is still pending and can be committed, a rolled-back one
//! stays rolled back, a committed one is consumed once.

mod common;

use common::{consume_all, Broker};
use ringmq::client::{Client, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::fb;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

fn states(client: &Client) -> BTreeMap<String, fb::TransactionState> {
    let listed = client.list_transactions(false).expect("list transactions");
    listed.into_iter().map(|summary| (summary.transaction_id, summary.state)).collect()
}

#[test]
fn transactions_come_back_from_the_snapshot_after_a_clean_restart() {
    let mut broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("paid", 2).expect("create");
    let producer = Producer::new(client.clone(), "paid", ProducerOptions::default()).expect("producer");
    let mut queues = BTreeMap::new();
    for (index, id) in ["pending", "committed", "rolled-back"].into_iter().enumerate() {
        let message = OutgoingMessage { body: id.as_bytes(), ..Default::default() };
        let receipt = producer.send_half(&message, QueueChoice::Explicit(index as u32 % 2), "pg", id).expect("half");
        queues.insert(id, receipt.queue);
    }
    client
        .end_transaction("paid", queues["committed"], "committed", fb::TransactionOutcome::Commit, TIMEOUT)
        .expect("commit");
    client
        .end_transaction("paid", queues["rolled-back"], "rolled-back", fb::TransactionOutcome::Rollback, TIMEOUT)
        .expect("rollback");

    assert!(broker.terminate().success());
    for shard in 0..2 {
        let snapshot = broker.data_dir().join(format!("shard-{shard}/transactions.snapshot"));
        assert!(snapshot.exists(), "a clean stop writes the transaction snapshot of shard {shard}");
    }
    broker.restart();
    let client = Client::connect(&broker.address()).expect("connect");
    let expected = BTreeMap::from([
        ("committed".to_string(), fb::TransactionState::Committed),
        ("pending".to_string(), fb::TransactionState::Pending),
        ("rolled-back".to_string(), fb::TransactionState::RolledBack),
    ]);
    assert_eq!(states(&client), expected);
    client
        .end_transaction("paid", queues["pending"], "pending", fb::TransactionOutcome::Commit, TIMEOUT)
        .expect("commit");
    let received = consume_all(&broker.address(), "audit", "paid");
    assert_eq!(received, ["committed".to_string(), "pending".to_string()].into_iter().collect());
}
