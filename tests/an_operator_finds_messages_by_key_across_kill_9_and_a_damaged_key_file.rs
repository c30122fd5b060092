//! `ringmq message query --topic T --key K` against a real broker process:
//! found right after the produce (before any checkpoint), filtered by
//! `--since-ms` and `--max`, still found after `kill -9` and a restart, and
//! after a byte of a key file is flipped, while running and while stopped
//! (the file is rebuilt from its segment).

mod common;

use common::{ringmq, ringmq_failing, Broker};
use ringmq::client::Client;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn produce(broker: &str, key: &str, lines: &str) {
    let answers = ringmq(&["produce", "--topic", "orders", "--key", key, "--broker", broker], lines);
    assert_eq!(answers.len(), lines.lines().count(), "one answer per line: {answers:?}");
}

fn query(broker: &str, key: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["message", "query", "--topic", "orders", "--key", key, "--json", "--broker", broker];
    args.extend_from_slice(extra);
    ringmq(&args, "")
}

fn bodies(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|line| line["body"].as_str().expect("a body")).collect()
}

/// Every non-empty key file of every shard.
fn key_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(data_dir).expect("data dir").flatten() {
        let Ok(keys) = std::fs::read_dir(shard.path().join("keys")) else { continue };
        for file in keys.flatten() {
            if file.metadata().is_ok_and(|metadata| metadata.len() > 0) {
                files.push(file.path());
            }
        }
    }
    files
}

/// Flips a bit in the first block's entries of each key file.
fn damage(files: &[PathBuf]) {
    for path in files {
        let mut bytes = std::fs::read(path).expect("read key file");
        bytes[40] ^= 0x10;
        std::fs::write(path, bytes).expect("write key file");
    }
}

#[test]
fn messages_are_found_by_key_before_a_checkpoint_after_kill_9_and_after_damage() {
    // An hour between checkpoints: the first queries find the messages in
    // the key index's memory, not in its files.
    let mut broker = Broker::start_with_args(2, &["--checkpoint-interval-ms", "3600000"]);
    let address = broker.address();
    Client::connect(&address).expect("connect").create_topic("orders", 4).expect("create");
    // One run each, so each has its own store millisecond for --since-ms.
    produce(&address, "order-1", "placed\n");
    produce(&address, "order-1", "paid\n");
    produce(&address, "order-2", "placed-2\n");
    produce(&address, "order-1", "shipped\n");

    let found = query(&address, "order-1", &[]);
    assert_eq!(bodies(&found), ["shipped", "paid", "placed"], "newest first: {found:?}");
    for line in &found {
        assert_eq!((line["topic"].as_str(), line["key"].as_str()), (Some("orders"), Some("order-1")), "{line}");
        assert!(line["msg_id"].as_str().is_some_and(|id| id.len() == 32) && line["offset"].is_u64(), "{line}");
    }
    assert_eq!(bodies(&query(&address, "order-2", &[])), ["placed-2"]);

    let paid_at = found[1]["stored_at_ms"].as_u64().expect("stored_at_ms");
    let since = query(&address, "order-1", &["--since-ms", &paid_at.to_string()]);
    assert_eq!(bodies(&since), ["shipped", "paid"], "--since-ms {paid_at}");
    assert_eq!(bodies(&query(&address, "order-1", &["--max", "1"])), ["shipped"]);
    let missing = ringmq_failing(&["message", "query", "--topic", "orders", "--key", "order-9", "--broker", &address]);
    assert!(missing.contains("no message of topic orders carries key \"order-9\""), "{missing}");
    let unknown = ringmq_failing(&["message", "query", "--topic", "nothing", "--key", "k", "--broker", &address]);
    assert_eq!(unknown.lines().count(), 1, "one clear line: {unknown}");

    // No checkpoint ran: after kill -9 the records come back from the log.
    broker.restart();
    assert_eq!(bodies(&query(&address, "order-1", &[])), ["shipped", "paid", "placed"], "after kill -9");

    // Recovery wrote the key files; damage them under the running broker:
    // the search finds a bad block, rebuilds the file and answers.
    let files = key_files(broker.data_dir());
    assert!(!files.is_empty(), "no key file was written");
    damage(&files);
    assert_eq!(bodies(&query(&address, "order-1", &[])), ["shipped", "paid", "placed"], "rebuilt while running");

    // Damage them again and restart: recovery does not trust them.
    broker.kill();
    damage(&key_files(broker.data_dir()));
    broker.restart();
    assert_eq!(bodies(&query(&address, "order-1", &[])), ["shipped", "paid", "placed"], "rebuilt at start");
    produce(&address, "order-1", "delivered\n");
    assert_eq!(bodies(&query(&address, "order-1", &["--max", "2"])), ["delivered", "shipped"]);
}
