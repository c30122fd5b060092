//! A second `ringmq serve` on a data directory a running broker holds exits
//! non-zero, naming the holder's pid; the first broker goes on serving.

mod common;

use common::{answers, free_ports, serve_expecting_exit, Broker};
use std::time::Duration;

#[test]
fn a_second_broker_on_the_same_data_directory_is_refused() {
    let first = Broker::start(1);
    let other_port = free_ports(1);
    let listen = format!("127.0.0.1:{other_port}");
    let (status, stderr) = serve_expecting_exit(first.data_dir(), &listen, Duration::from_secs(20));
    assert!(!status.success(), "the second broker started: {status}");
    assert!(stderr.contains("in use by another broker"), "unclear refusal: {stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "the holder's pid is not named: {stderr}");
    assert!(answers(&first.address(), 1), "the first broker stopped answering");
}
