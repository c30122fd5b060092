//! Bounded answers and caps against a real broker process: thousands of
//! topics and groups of the largest size come back whole through pages
//! (the CLI prints every line), one topic, group or member past its cap is
//! refused with an error naming the cap while what exists goes on working,
//! and overlong names are refused by their length on a connection that
//! stays usable.

mod common;

use common::{ringmq, Broker};
use ringmq::client::{admin, Client, ClientError, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use ringmq::constants::{
    CLIENT_ID_BYTES_MAX, GROUP_MEMBERS_MAX, NAME_BYTES_MAX, RESPONSE_TABLES_MAX, TOPIC_QUEUES_MAX,
};
use ringmq::protocol::{self, fb, verify, Failure, Kind};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// More topics than one metadata page carries (one table each).
const TOPICS: usize = RESPONSE_TABLES_MAX + 52;
/// Groups of the most members: more tables than a reader verifies in one
/// answer, so no single answer could carry them.
const GROUPS: usize = 4;

fn broker_failure(result: Result<impl std::fmt::Debug, ClientError>) -> Failure {
    match result {
        Err(ClientError::Broker(failure)) => failure,
        other => panic!("expected a broker's refusal, got {other:?}"),
    }
}

/// A join of `member_id` to `group` on `topic`, straight to its coordinator.
fn join(client: &Client, group: &str, topic: &str, member_id: &str) -> Result<(), Failure> {
    let body = protocol::join_group_request(group, topic, member_id, "", 300_000);
    let answer = match client.call(client.coordinator(group), Kind::JoinGroupRequest, &body) {
        Ok(answer) => answer,
        Err(ClientError::Broker(failure)) => return Err(failure),
        Err(other) => panic!("join: {other}"),
    };
    let response = verify::<fb::GroupAssignment>(&answer).expect("an assignment");
    Failure::from_outcome(response.outcome()).map_or(Ok(()), Err)
}

/// A member id of the longest length, numbered.
fn long_member_id(index: usize) -> String {
    format!("{index:05}{}", "m".repeat(CLIENT_ID_BYTES_MAX - 5))
}

#[test]
fn thousands_of_topics_list_through_pages_and_one_past_topics_max_is_refused() {
    let topics_max = TOPICS.to_string();
    let broker = Broker::start_with_args(2, &["--topics-max", &topics_max]);
    let client = Client::connect(&broker.address()).expect("connect");
    let started = Instant::now();
    let names: Vec<String> = (0..TOPICS).map(|index| format!("topic-{index:05}")).collect();
    for name in &names {
        client.create_topic(name, 1).expect("create");
    }
    eprintln!("created {TOPICS} topics in {:?}", started.elapsed());

    // One more is refused, naming the cap; the existing ones go on working.
    let failure = broker_failure(client.create_topic("one-too-many", 1));
    assert_eq!(failure.code, fb::ErrorCode::LimitReached, "{failure}");
    assert!(failure.message.contains(&format!("topics_max is {TOPICS}")), "{failure}");
    let (_, created) = client.create_topic(&names[7], 1).expect("an existing topic is found");
    assert!(!created);
    let producer = Producer::new(Arc::new(client), &names[TOPICS - 1], ProducerOptions::default()).expect("producer");
    let message = OutgoingMessage { body: b"still works", ..Default::default() };
    producer.send(&message, QueueChoice::Explicit(0)).expect("a send to an existing topic");

    // A fresh client reads every page; the CLI prints every topic once.
    let started = Instant::now();
    let fresh = Client::connect(&broker.address()).expect("connect");
    let listed: Vec<String> = fresh.list_topics().expect("list").into_iter().map(|topic| topic.name).collect();
    assert_eq!(listed, names, "every topic, in order, once");
    let lines = ringmq(&["topic", "list", "--json", "--broker", &broker.address()], "");
    let printed: Vec<&str> = lines.iter().filter_map(|line| line["name"].as_str()).collect();
    assert_eq!(printed, names.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(started.elapsed() < Duration::from_secs(30), "listing took {:?}", started.elapsed());

    // The first page alone stays within the reader's limits and says more.
    let body = fresh.call(0, Kind::MetadataRequest, &protocol::metadata_request(&[])).expect("metadata");
    let response = verify::<fb::MetadataResponse>(&body).expect("a page verifies");
    let first_page = response.topics().map_or(0, |topics| topics.len());
    assert!(first_page < TOPICS && first_page > 0, "{first_page} topics on the first page");
    assert!(response.next().is_some_and(|next| !next.is_empty()), "the first page names the next");
}

#[test]
fn groups_of_the_most_members_list_through_pages_and_caps_refuse_new_groups_and_members() {
    let groups_max = GROUPS.to_string();
    let broker = Broker::start_with_args(1, &["--groups-max", &groups_max]);
    let client = Client::connect(&broker.address()).expect("connect");
    client.create_topic("work", 8).expect("create");
    let groups: Vec<String> = (0..GROUPS).map(|index| format!("group-{index}")).collect();
    let started = Instant::now();
    for group in &groups {
        for member in 0..GROUP_MEMBERS_MAX {
            join(&client, group, "work", &long_member_id(member)).expect("join");
        }
    }
    eprintln!("joined {} members in {:?}", GROUPS * GROUP_MEMBERS_MAX, started.elapsed());

    // One member more, one group more: refused, naming the cap.
    let failure = join(&client, &groups[0], "work", "one-too-many").expect_err("the group is full");
    assert_eq!(failure.code, fb::ErrorCode::LimitReached, "{failure}");
    assert!(failure.message.contains(&format!("{GROUP_MEMBERS_MAX} members")), "{failure}");
    let failure = join(&client, "group-new", "work", "").expect_err("the coordinator is full");
    assert_eq!(failure.code, fb::ErrorCode::LimitReached, "{failure}");
    assert!(failure.message.contains(&format!("groups_max is {GROUPS}")), "{failure}");
    assert!(client.topic("%RETRY%group-new").is_err(), "a refused group leaves no retry topic");
    // The existing members go on: one joins again under its own id.
    join(&client, &groups[1], "work", &long_member_id(3)).expect("a known member");

    // Every group with every member, through pages, in the CLI too.
    let started = Instant::now();
    let (listed, truncated) = admin::list_groups(&client, None).expect("list");
    assert!(!truncated);
    assert_eq!(listed.iter().map(|summary| summary.group.clone()).collect::<Vec<_>>(), groups);
    assert!(listed.iter().all(|summary| summary.members.len() == GROUP_MEMBERS_MAX));
    let lines = ringmq(&["group", "list", "--json", "--broker", &broker.address()], "");
    assert_eq!(lines.len(), GROUPS);
    for (line, group) in lines.iter().zip(&groups) {
        assert_eq!(line["group"].as_str(), Some(group.as_str()));
        assert_eq!(line["members"].as_u64(), Some(GROUP_MEMBERS_MAX as u64));
        assert_eq!(line["member_ids"].as_array().map(Vec::len), Some(GROUP_MEMBERS_MAX));
    }
    assert!(started.elapsed() < Duration::from_secs(30), "listing took {:?}", started.elapsed());
}

#[test]
fn a_group_on_thousands_of_queues_is_described_through_pages() {
    let broker = Broker::start(1);
    let client = Client::connect(&broker.address()).expect("connect");
    let topics = ["wide-a", "wide-b", "wide-c"];
    for topic in topics {
        client.create_topic(topic, TOPIC_QUEUES_MAX).expect("create");
        join(&client, "wide", topic, "").expect("join");
    }
    // Every queue of the three topics, and the retry topic's one (one shard).
    let expected = 3 * TOPIC_QUEUES_MAX as usize + 1;
    let started = Instant::now();
    let (queues, truncated) = admin::describe_group(&client, "wide").expect("describe");
    assert!(!truncated);
    assert_eq!(queues.len(), expected);
    assert!(queues.iter().filter(|queue| !queue.offsets.topic.starts_with('%')).all(|queue| queue.member.is_some()));
    let lines = ringmq(&["group", "describe", "wide", "--json", "--broker", &broker.address()], "");
    assert_eq!(lines.len(), expected, "the CLI prints every queue once");
    assert!(started.elapsed() < Duration::from_secs(30), "describing took {:?}", started.elapsed());

    // One answer alone carries a page and names the next.
    let body = protocol::group_offsets_request("wide", &topics, None);
    let answer = client.call(0, Kind::GroupOffsetsRequest, &body).expect("offsets");
    let response = verify::<fb::GroupOffsetsResponse>(&answer).expect("a page verifies");
    let first_page = response.queues().map_or(0, |queues| queues.len());
    assert!(first_page > 0 && first_page < 3 * TOPIC_QUEUES_MAX as usize, "{first_page} queues on the first page");
    assert!(response.truncated() && response.next().is_some());
}

#[test]
fn overlong_names_are_refused_by_their_length_and_the_connection_goes_on() {
    let broker = Broker::start(1);
    let client = Arc::new(Client::connect(&broker.address()).expect("connect"));
    client.create_topic("work", 1).expect("create");
    let connection = client.connection(0).expect("a connection");

    let long_topic = "t".repeat(NAME_BYTES_MAX + 1);
    let failure = broker_failure(client.create_topic(&long_topic, 1));
    assert_eq!(failure.code, fb::ErrorCode::InvalidTopic, "{failure}");
    assert!(failure.message.contains(&format!("longer than the {NAME_BYTES_MAX}-byte maximum")), "{failure}");
    assert!(!failure.message.contains(&long_topic), "the name is not echoed back");

    let failure = join(&client, &"g".repeat(NAME_BYTES_MAX + 1), "work", "").expect_err("a long group");
    assert!(failure.message.contains("group name of 250 bytes"), "{failure}");
    let failure = join(&client, "g", "work", &"m".repeat(CLIENT_ID_BYTES_MAX + 1)).expect_err("a long member id");
    assert_eq!(failure.code, fb::ErrorCode::InvalidRequest, "{failure}");
    assert!(failure.message.contains("member id of 256 bytes"), "{failure}");

    let producer = Producer::new(client.clone(), "work", ProducerOptions::default()).expect("producer");
    let long_tag = "x".repeat(300);
    let message = OutgoingMessage { body: b"b", tag: Some(&long_tag), ..Default::default() };
    let error = producer.send(&message, QueueChoice::Explicit(0)).expect_err("a long tag");
    assert!(error.to_string().contains("tag of 300 bytes"), "{error}");

    // Same connection, still answering.
    assert!(Arc::ptr_eq(&connection, &client.connection(0).expect("a connection")), "the connection was kept");
    assert!(!connection.is_closed());
    let message = OutgoingMessage { body: b"fine", ..Default::default() };
    producer.send(&message, QueueChoice::Explicit(0)).expect("a send after the refusals");
    client.create_topic("work-2", 1).expect("a create after the refusals");
}
