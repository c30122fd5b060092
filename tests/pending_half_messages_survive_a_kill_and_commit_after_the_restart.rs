//! `ringmq produce --half` leaves transactions pending; a SIGKILL of the
//! broker keeps them pending (rebuilt from the log); `ringmq tx end`
//! commits one and rolls back another after the restart; `ringmq produce
//! --transaction commit` sends and commits in one go.

mod common;

use common::{consume_in_order, ringmq, Broker};
use ringmq::client::Client;

fn states(address: &str) -> Vec<(String, String)> {
    let mut listed: Vec<(String, String)> = ringmq(&["tx", "list", "--json", "--broker", address], "")
        .into_iter()
        .map(|line| {
            assert!(line["age_ms"].is_u64() && line["checks_delivered"] == 0 && line["producer_group"] == "pg");
            (
                line["transaction_id"].as_str().expect("id").to_string(),
                line["state"].as_str().expect("state").to_string(),
            )
        })
        .collect();
    listed.sort();
    listed
}

#[test]
fn pending_half_messages_survive_a_kill_and_commit_after_the_restart() {
    let mut broker = Broker::start(2);
    let address = broker.address();
    Client::connect(&address).expect("connect").create_topic("orders", 4).expect("create");

    let halves = ringmq(
        &["produce", "--topic", "orders", "--producer-group", "pg", "--half", "--broker", &address],
        "a\nb\nc\n",
    );
    assert_eq!(halves.len(), 3);
    for (index, line) in halves.iter().enumerate() {
        assert_eq!((line["line"].as_u64(), line["status"].as_str()), (Some(index as u64 + 1), Some("SEND_OK")));
        assert!(line.get("offset").is_none(), "a half message has no offset: {line}");
        assert!(line["msg_id"].is_string() && line["queue"].is_u64());
    }
    let ids: Vec<String> = halves.iter().map(|line| line["transaction_id"].as_str().expect("id").to_string()).collect();
    assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), 3, "a fresh id per line");
    let pending: Vec<_> = ids.iter().map(|id| (id.clone(), "pending".to_string())).collect();
    let mut expected = pending.clone();
    expected.sort();
    assert_eq!(states(&address), expected);

    broker.kill();
    broker.restart();
    assert_eq!(states(&address), expected, "still pending after a SIGKILL");
    assert!(consume_in_order(&address, "before", "orders").is_empty(), "nothing visible yet");

    let ended = ringmq(&["tx", "end", &ids[0], "--commit", "--broker", &address], "");
    assert_eq!((ended[0]["state"].as_str(), ended[0]["offset"].as_u64()), (Some("committed"), Some(0)));
    let ended = ringmq(&["tx", "end", &ids[1], "--rollback", "--broker", &address], "");
    assert_eq!(ended[0]["state"].as_str(), Some("rolled_back"));

    let sent = ringmq(
        &["produce", "--topic", "orders", "--producer-group", "pg", "--transaction", "commit", "--broker", &address],
        "d\n",
    );
    assert_eq!((sent[0]["state"].as_str(), sent[0]["status"].as_str()), (Some("committed"), Some("SEND_OK")));
    assert!(sent[0]["offset"].is_u64());

    let bodies: Vec<String> =
        consume_in_order(&address, "after", "orders").into_iter().map(|(_, _, body)| body).collect();
    let mut bodies = bodies;
    bodies.sort();
    assert_eq!(bodies, ["a", "d"], "the commits, once each; the rollback and the pending half never");

    // Settled outcomes survive a kill too.
    broker.kill();
    broker.restart();
    let after = states(&address);
    let state_of = |id: &str| after.iter().find(|(listed, _)| listed == id).map(|(_, state)| state.as_str());
    assert_eq!(state_of(&ids[0]), Some("committed"));
    assert_eq!(state_of(&ids[1]), Some("rolled_back"));
    assert_eq!(state_of(&ids[2]), Some("pending"));
    assert_eq!(after.len(), 4);
    let again: Vec<String> =
        consume_in_order(&address, "again", "orders").into_iter().map(|(_, _, body)| body).collect();
    assert_eq!(again.len(), 2, "a restart shows each commit once: {again:?}");
}
