//! A second `ringmq serve` on a port a running broker listens on (with its
//! own data directory) retries for a bounded time, then exits non-zero
//! naming the address; it never shares the port with the first broker.

mod common;

use common::{answers, serve_expecting_exit, Broker};
use std::time::Duration;

#[test]
fn a_second_broker_on_the_same_port_is_refused() {
    let first = Broker::start(1);
    let other_dir = tempfile::tempdir().expect("temp dir");
    let (status, stderr) =
        serve_expecting_exit(&other_dir.path().join("data"), &first.address(), Duration::from_secs(40));
    assert!(!status.success(), "the second broker started: {status}");
    assert!(stderr.contains("still in use"), "unclear refusal: {stderr}");
    assert!(stderr.contains(&first.address()), "the address is not named: {stderr}");
    assert!(answers(&first.address(), 1), "the first broker stopped answering");
}
