//! `ringmq consume --tags "a || b"` gets only messages tagged a or b, at
//! their own offsets, delayed ones included; `*` gets everything. The broker
//! filters by tag hash and the fetch moves past the others.

mod common;

use common::{ringmq, Broker};
use ringmq::client::Client;
use ringmq::protocol::{self, fb, verify, FetchParams, Kind};

#[test]
fn a_tag_filter_delivers_only_the_chosen_tags() {
    let broker = Broker::start_with_config(1, Some("delay_levels = \"100ms\"\n"));
    let address = broker.address();
    Client::connect(&address).expect("connect").create_topic("events", 1).expect("create");
    let produce = |tag: Option<&str>, extra: &[&str], lines: &str| {
        let mut args = vec!["produce", "--topic", "events", "--broker", &address];
        if let Some(tag) = tag {
            args.extend(["--tag", tag]);
        }
        args.extend(extra);
        let sent = ringmq(&args, lines);
        assert!(sent.iter().all(|line| line["status"] == "SEND_OK"), "{sent:?}");
    };
    produce(Some("red"), &[], "r1\nr2\n");
    produce(Some("blue"), &[], "b1\n");
    produce(None, &[], "plain\n");
    produce(Some("green"), &[], "g1\n");
    produce(Some("red"), &["--delay-level", "1"], "r-late\n");
    std::thread::sleep(std::time::Duration::from_millis(600));
    produce(Some("blue"), &[], "b-last\n");

    let consume = |group: &str, tags: &str| -> Vec<(String, u64)> {
        let args = ["consume", "--topic", "events", "--group", group, "--tags", tags, "--idle-exit-ms", "1500"];
        let lines = ringmq(&[&args[..], &["--broker", &address]].concat(), "");
        lines
            .iter()
            .map(|line| (line["body"].as_str().expect("body").to_string(), line["offset"].as_u64().expect("offset")))
            .collect()
    };
    assert_eq!(
        consume("red-or-green", "red || green"),
        [("r1".into(), 0), ("r2".into(), 1), ("g1".into(), 4), ("r-late".into(), 5)],
        "only red and green, at their own offsets"
    );
    assert_eq!(consume("blue", " blue ").len(), 2);

    // The group's offset moves past what the filter passed over, up to the
    // queue's end, though no message of it was taken.
    let client = Client::connect(&address).expect("connect");
    let body = protocol::fetch_offset_request("red-or-green", "events", 0);
    let committed = client.call(0, Kind::FetchOffsetRequest, &body).expect("fetch offset");
    assert_eq!(verify::<fb::OffsetResponse>(&committed).expect("an offset response").offset(), 7);

    // The broker filters (the client only checks again): a raw fetch for
    // red gets the red records alone and moves past the rest.
    let params = FetchParams {
        topic: "events".into(),
        max_count: 100,
        max_bytes: 1 << 20,
        tag_hashes: vec![ringmq::wire::tag_hash("red")],
        ..FetchParams::default()
    };
    let body = client.call(0, Kind::FetchRequest, &protocol::fetch_request(&params)).expect("fetch");
    let response = verify::<fb::FetchResponse>(&body).expect("a fetch response");
    assert_eq!(response.record_count(), 3);
    assert_eq!(response.record_offsets().map(|offsets| offsets.iter().collect::<Vec<_>>()), Some(vec![0, 1, 5]));
    assert_eq!(response.next_offset(), 7);
    assert_eq!(consume("everything", "*").len(), 7);
}
