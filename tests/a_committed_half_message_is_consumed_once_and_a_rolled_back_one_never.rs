//! Transactional half messages through a real broker and the real client:
//! a commit makes the half visible once, at the offset the commit answers;
//! a rollback never; repeated outcomes are idempotent, opposite ones
//! refused, unknown transactions named; halves on two shards at once.

mod common;

use common::{consume_in_order, Broker};
use ringmq::client::{Client, ClientError, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::{self, fb, Kind};
use ringmq::wire::MessageDraft;
use std::collections::BTreeSet;
use std::sync::Arc;

fn message(body: &str) -> OutgoingMessage<'_> {
    OutgoingMessage { body: body.as_bytes(), ..Default::default() }
}

#[test]
fn a_committed_half_message_is_consumed_once_and_a_rolled_back_one_never() {
    let broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    let (topic, _) = client.create_topic("payments", 2).expect("create");
    assert_ne!(topic.queue_shards[0], topic.queue_shards[1], "the two queues live on two shards");
    let producer = Producer::new(client.clone(), "payments", ProducerOptions::default()).expect("producer");

    // An ordinary message first, so the commit's offset is not trivially 0.
    let plain = producer.send(&message("plain"), QueueChoice::Explicit(0)).expect("send");
    assert_eq!(plain.offset, Some(0));

    // Halves on both shards at once.
    let commit = producer.send_half(&message("to-commit"), QueueChoice::Explicit(0), "pg", "tx-commit").expect("half");
    assert_eq!((commit.offset, commit.duplicate, commit.status), (None, false, fb::SendStatus::SendOk));
    let rolled_back_half =
        producer.send_half(&message("to-roll-back"), QueueChoice::Explicit(1), "pg", "tx-rollback").expect("half");
    let other_half =
        producer.send_half(&message("on-queue-1"), QueueChoice::Explicit(1), "pg", "tx-other").expect("half");
    // A resent half (same transaction id) is stored once: the first result.
    let resent =
        producer.send_half(&message("to-commit"), QueueChoice::Explicit(0), "pg", "tx-commit").expect("resend");
    assert!(resent.duplicate, "a half whose transaction id is known is a duplicate");
    assert_eq!(resent.store_timestamp_us, commit.store_timestamp_us);
    assert_eq!((rolled_back_half.queue, other_half.queue), (1, 1));

    // Nothing of a pending half is visible.
    let before: Vec<String> =
        consume_in_order(&broker.address(), "early", "payments").into_iter().map(|(_, _, body)| body).collect();
    assert_eq!(before, ["plain"]);

    let listed = client.list_transactions(false).expect("list");
    let pending: BTreeSet<&str> = listed
        .iter()
        .filter(|summary| summary.state == fb::TransactionState::Pending)
        .map(|summary| summary.transaction_id.as_str())
        .collect();
    assert_eq!(pending, BTreeSet::from(["tx-commit", "tx-rollback", "tx-other"]));
    let listed_commit = listed.iter().find(|summary| summary.transaction_id == "tx-commit").expect("listed");
    assert_eq!((listed_commit.producer_group.as_str(), listed_commit.msg_id), ("pg", commit.msg_id));

    let unknown = producer.end_transaction(0, "tx-commit", fb::TransactionOutcome::Unknown).expect("unknown");
    assert_eq!(unknown, (fb::TransactionState::Pending, None), "an undecided end records nothing");
    let committed = producer.end_transaction(0, "tx-commit", fb::TransactionOutcome::Commit).expect("commit");
    assert_eq!(committed, (fb::TransactionState::Committed, Some(1)));
    let again = producer.end_transaction(0, "tx-commit", fb::TransactionOutcome::Commit).expect("commit again");
    assert_eq!(again, committed, "a repeated commit answers the same, stores nothing");
    let rolled = producer.end_transaction(1, "tx-rollback", fb::TransactionOutcome::Rollback).expect("rollback");
    assert_eq!(rolled, (fb::TransactionState::RolledBack, None));

    let code = |result: Result<_, ClientError>| result.expect_err("refused").code();
    let conflict = producer.end_transaction(0, "tx-commit", fb::TransactionOutcome::Rollback);
    assert_eq!(code(conflict), Some(fb::ErrorCode::TransactionConflict));
    let conflict = producer.end_transaction(1, "tx-rollback", fb::TransactionOutcome::Commit);
    assert_eq!(code(conflict), Some(fb::ErrorCode::TransactionConflict));
    let unknown = producer.end_transaction(0, "tx-nobody", fb::TransactionOutcome::Commit);
    assert_eq!(code(unknown), Some(fb::ErrorCode::UnknownTransaction));

    let committed_other = producer.end_transaction(1, "tx-other", fb::TransactionOutcome::Commit).expect("commit");
    assert_eq!(committed_other, (fb::TransactionState::Committed, Some(0)));

    // Ends of one transaction racing each other append one commit.
    producer.send_half(&message("raced"), QueueChoice::Explicit(0), "pg", "tx-race").expect("half");
    let ends: Vec<_> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| producer.end_transaction(0, "tx-race", fb::TransactionOutcome::Commit)))
            .collect();
        racers.into_iter().map(|racer| racer.join().expect("racer").expect("commit")).collect()
    });
    assert!(ends.iter().all(|end| *end == (fb::TransactionState::Committed, Some(2))), "{ends:?}");

    let mut received = consume_in_order(&broker.address(), "readers", "payments");
    received.sort();
    assert_eq!(
        received,
        [
            (0, 0, "plain".to_string()),
            (0, 1, "to-commit".to_string()),
            (0, 2, "raced".to_string()),
            (1, 0, "on-queue-1".to_string())
        ],
        "each commit visible once at its offset, the rollback never"
    );
    let states: Vec<_> = client
        .list_transactions(false)
        .expect("list")
        .into_iter()
        .map(|summary| (summary.transaction_id, summary.state))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        states,
        [
            ("tx-commit".to_string(), fb::TransactionState::Committed),
            ("tx-other".to_string(), fb::TransactionState::Committed),
            ("tx-race".to_string(), fb::TransactionState::Committed),
            ("tx-rollback".to_string(), fb::TransactionState::RolledBack),
        ]
    );
}

#[test]
fn a_half_without_a_transaction_id_is_refused() {
    let broker = Broker::start(1);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("payments", 1).expect("create");
    let producer = Producer::new(client.clone(), "payments", ProducerOptions::default()).expect("producer");
    let refused = producer.send_half(&message("x"), QueueChoice::Explicit(0), "pg", "");
    assert!(matches!(refused, Err(ClientError::Usage(_))), "the client refuses it before sending");
    // The broker refuses it too, from a client that does not.
    let draft = MessageDraft {
        msg_id: (1, 1),
        topic: "payments",
        half: true,
        producer_group: Some("pg"),
        ..Default::default()
    };
    let body = protocol::produce_request("payments", 0, &[&draft.build()], false);
    let refused = client.call(0, Kind::ProduceRequest, &body).expect_err("refused").code();
    assert_eq!(refused, Some(fb::ErrorCode::InvalidMessage));
}
