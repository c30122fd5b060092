//! Offset commits are fenced by the group's assignment: only the member that
//! owns a queue in the current generation may commit it, and never past the
//! queue's end. Raw protocol calls against a broker process, so each commit
//! names exactly the member and generation under test.

mod common;

use common::Broker;
use ringmq::client::{Client, ClientError, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::protocol::{self, fb, verify, Assignment, Kind};
use std::sync::Arc;

const QUEUES: u32 = 4;

fn join(client: &Client, group: &str) -> Assignment {
    let body = protocol::join_group_request(group, "work", "", "", 10_000);
    let answer = client.call(client.coordinator(group), Kind::JoinGroupRequest, &body).expect("join");
    protocol::read_assignment(verify::<fb::GroupAssignment>(&answer).expect("assignment"))
}

fn heartbeat(client: &Client, group: &str, member: &Assignment) -> Assignment {
    let body = protocol::heartbeat_request(group, "work", &member.member_id);
    let answer = client.call(client.coordinator(group), Kind::HeartbeatRequest, &body).expect("heartbeat");
    protocol::read_assignment(verify::<fb::GroupAssignment>(&answer).expect("assignment"))
}

fn commit(
    client: &Client,
    group: &str,
    member_id: &str,
    generation: u64,
    queue: u32,
    offset: u64,
) -> Result<(), ClientError> {
    let shard = client.topic("work").expect("topic").queue_shards[queue as usize];
    let body = protocol::commit_offset_request(group, "work", queue, offset, generation, member_id);
    client.call(shard, Kind::CommitOffsetRequest, &body).map(|_| ())
}

fn committed(client: &Client, group: &str, queue: u32) -> Option<u64> {
    let shard = client.topic("work").expect("topic").queue_shards[queue as usize];
    let body = protocol::fetch_offset_request(group, "work", queue);
    let answer = client.call(shard, Kind::FetchOffsetRequest, &body).expect("fetch offset");
    u64::try_from(verify::<fb::OffsetResponse>(&answer).expect("offset").offset()).ok()
}

fn refused_as(result: Result<(), ClientError>, code: fb::ErrorCode, what: &str) {
    match result {
        Err(error) => assert_eq!(error.code(), Some(code), "{what}: {error}"),
        Ok(()) => panic!("{what}: accepted"),
    }
}

#[test]
fn only_the_owner_in_the_current_generation_commits() {
    let broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("work", QUEUES).expect("create");

    let old = join(&client, "g");
    assert_eq!(old.queues.len(), QUEUES as usize);
    let b = join(&client, "g");
    // B's first commits, right after its join answer, pass on every shard:
    // the answer left only after each shard applied the new assignment.
    for queue in &b.queues {
        commit(&client, "g", &b.member_id, b.generation, *queue, 0).expect("the owner commits");
    }
    let a = heartbeat(&client, "g", &old);
    assert_eq!(a.generation, b.generation);
    assert!(a.generation > old.generation);
    for queue in &a.queues {
        commit(&client, "g", &a.member_id, a.generation, *queue, 0).expect("the owner commits");
        refused_as(
            commit(&client, "g", &b.member_id, b.generation, *queue, 0),
            fb::ErrorCode::StaleGeneration,
            "a member of the current generation committing a queue it does not own",
        );
        refused_as(
            commit(&client, "g", &a.member_id, old.generation, *queue, 0),
            fb::ErrorCode::StaleGeneration,
            "the owner committing with its older generation",
        );
        refused_as(
            commit(&client, "g", &a.member_id, u64::MAX, *queue, 0),
            fb::ErrorCode::StaleGeneration,
            "a generation from the future",
        );
        refused_as(commit(&client, "g", "", a.generation, *queue, 0), fb::ErrorCode::StaleGeneration, "no member id");
    }
    refused_as(
        commit(&client, "never-joined", &a.member_id, a.generation, 0, 0),
        fb::ErrorCode::StaleGeneration,
        "a group no shard heard of",
    );
}

#[test]
fn a_commit_past_the_end_is_refused_and_the_next_consumer_skips_nothing() {
    let broker = Broker::start(2);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("work", QUEUES).expect("create");
    let producer = Producer::new(client.clone(), "work", ProducerOptions::default()).expect("producer");
    let send = |body: String| {
        let message = OutgoingMessage { body: body.as_bytes(), ..Default::default() };
        producer.send(&message, QueueChoice::Explicit(1)).expect("send");
    };
    for index in 0..5 {
        send(format!("early-{index}"));
    }
    let member = join(&client, "g");
    commit(&client, "g", &member.member_id, member.generation, 1, 2).expect("inside the queue");
    commit(&client, "g", &member.member_id, member.generation, 1, 5).expect("at the end: everything consumed");
    refused_as(
        commit(&client, "g", &member.member_id, member.generation, 1, 6),
        fb::ErrorCode::InvalidRequest,
        "one past the end",
    );
    refused_as(
        commit(&client, "g", &member.member_id, member.generation, 1, 1_000),
        fb::ErrorCode::InvalidRequest,
        "far past the end",
    );
    assert_eq!(committed(&client, "g", 1), Some(5), "the refused commits changed nothing");
    for index in 0..5 {
        send(format!("late-{index}"));
    }
    let leave = protocol::leave_group_request("g", "work", &member.member_id);
    client.call(client.coordinator("g"), Kind::LeaveGroupRequest, &leave).expect("leave");
    let received = common::consume_in_order(&broker.address(), "g", "work");
    let bodies: Vec<&str> = received.iter().map(|(_, _, body)| body.as_str()).collect();
    assert_eq!(bodies, ["late-0", "late-1", "late-2", "late-3", "late-4"], "from the last good commit on");
}
