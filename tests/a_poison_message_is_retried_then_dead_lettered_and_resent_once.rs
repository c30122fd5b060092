//! A message the handler keeps answering RECONSUME_LATER comes back through
//! the group's retry topic with a growing `reconsume_times`, after a
//! back-off, `max_reconsume_times + 1` deliveries in all; then it is in the
//! group's dead-letter topic, and nowhere else. `ringmq dlq resend` puts it
//! back on its topic once. A panicking handler counts as later.

mod common;

use common::{ringmq, Broker};
use ringmq::client::{
    Client, ConsumeResult, ConsumerOptions, GroupConsumer, OutgoingMessage, Producer, ProducerOptions, QueueChoice,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_RECONSUME_TIMES: u32 = 3;
/// Retries back off from level 3: 300, 400, 400 ms here.
const CONFIG: &str = "delay_levels = \"100ms 200ms 300ms 400ms\"\n";

#[test]
fn a_poison_message_is_retried_then_dead_lettered_and_resent_once() {
    let broker = Broker::start_with_config(2, Some(CONFIG));
    let address = broker.address();
    let client = Arc::new(Client::connect(&address).expect("connect"));
    client.create_topic("orders", 4).expect("create");
    let producer = Producer::new(client.clone(), "orders", ProducerOptions::default()).expect("producer");
    for body in ["ok-1", "poison", "ok-2", "panics-once"] {
        producer
            .send(&OutgoingMessage { body: body.as_bytes(), ..Default::default() }, QueueChoice::RoundRobin)
            .expect("send");
    }

    let options = ConsumerOptions { max_wait: Duration::from_millis(100), ..ConsumerOptions::default() };
    let mut consumer =
        GroupConsumer::join(client.clone(), "billing", "orders", options.clone(), MAX_RECONSUME_TIMES).expect("join");
    let mut deliveries: Vec<(String, u32, Instant, String)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        consumer
            .handle_next(|message| {
                let body = String::from_utf8(message.body.clone()).expect("utf-8");
                deliveries.push((body.clone(), message.reconsume_times, Instant::now(), message.topic.clone()));
                match body.as_str() {
                    "poison" => ConsumeResult::Later,
                    "panics-once" if message.reconsume_times == 0 => panic!("a handler bug"),
                    _ => ConsumeResult::Success,
                }
            })
            .expect("handle");
        let poison = deliveries.iter().filter(|delivery| delivery.0 == "poison").count();
        if poison > MAX_RECONSUME_TIMES as usize && started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let of = |body: &str| -> Vec<(u32, Instant, String)> {
        deliveries.iter().filter(|delivery| delivery.0 == body).map(|d| (d.1, d.2, d.3.clone())).collect()
    };
    assert_eq!(of("ok-1").len(), 1);
    assert_eq!(of("ok-2").len(), 1);
    let panicked: Vec<u32> = of("panics-once").iter().map(|delivery| delivery.0).collect();
    assert_eq!(panicked, vec![0, 1], "a panic is a RECONSUME_LATER: one retry, then success");
    let poison = of("poison");
    let times: Vec<u32> = poison.iter().map(|delivery| delivery.0).collect();
    assert_eq!(times, (0..=MAX_RECONSUME_TIMES).collect::<Vec<_>>(), "N+1 deliveries, reconsume_times growing");
    assert_eq!(poison[0].2, "orders");
    assert!(poison[1..].iter().all(|delivery| delivery.2 == "%RETRY%billing"), "retries come through the retry topic");
    for pair in poison.windows(2) {
        let waited = pair[1].1.duration_since(pair[0].1);
        assert!(waited >= Duration::from_millis(290), "a retry came back after {waited:?}, before its back-off");
    }
    consumer.leave().expect("leave");

    let letters = ringmq(&["dlq", "list", "--group", "billing", "--json", "--broker", &address], "");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["body"], "poison");
    assert_eq!(letter["original_topic"], "orders");
    assert_eq!(letter["reconsume_times"], MAX_RECONSUME_TIMES + 1);
    assert!(letter["original_queue"].is_u64() && letter["stored_at_ms"].is_u64() && letter["msg_id"].is_string());

    let msg_id = letter["msg_id"].as_str().expect("msg id");
    let args = ["dlq", "resend", "--group", "billing", "--msg-id", msg_id, "--broker", &address];
    let resent = ringmq(&args, "");
    assert_eq!((resent.len(), &resent[0]["resent"]), (1, &serde_json::json!(true)));
    assert_eq!(ringmq(&args, "")[0]["resent"], false, "a dead letter goes back once");

    // The group gets the resent copy and fails it again: it is retried and
    // dead-lettered again, not taken for the first copy's send-backs.
    let mut again = GroupConsumer::join(client.clone(), "billing", "orders", options.clone(), MAX_RECONSUME_TIMES)
        .expect("join again");
    let mut second: Vec<u32> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) && second.len() <= MAX_RECONSUME_TIMES as usize {
        again
            .handle_next(|message| {
                assert_eq!(message.body, b"poison", "only the resent copy comes");
                second.push(message.reconsume_times);
                ConsumeResult::Later
            })
            .expect("handle");
    }
    assert_eq!(second, (0..=MAX_RECONSUME_TIMES).collect::<Vec<_>>(), "the resent copy is retried from 0");
    std::thread::sleep(Duration::from_millis(500));
    again.leave().expect("leave");
    let letters = ringmq(&["dlq", "list", "--group", "billing", "--json", "--broker", &address], "");
    assert_eq!(letters.len(), 2, "dead-lettered a second time: {letters:?}");

    // A fresh group sees the topic: the resent copy once, at its own offset.
    let mut fresh = GroupConsumer::join(client, "audit", "orders", options, MAX_RECONSUME_TIMES).expect("join");
    let mut bodies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        fresh
            .handle_next(|message| {
                bodies.push(String::from_utf8_lossy(&message.body).to_string());
                ConsumeResult::Success
            })
            .expect("handle");
    }
    bodies.sort();
    assert_eq!(bodies, ["ok-1", "ok-2", "panics-once", "poison", "poison"], "the original and its one resend");
    let again: Vec<_> = args.iter().copied().chain(["--again"]).collect();
    assert_eq!(ringmq(&again, "")[0]["resent"], true, "--again resends anyway");
}
