//! README's first command starts `ringmq serve` without `--data-dir`: the
//! broker creates `./ringmq-data` under the working folder and serves. A
//! relative `--data-dir` of a few levels works the same.

mod common;

use common::{answers, free_ports};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn serves_from(folder: &std::path::Path, data_dir: Option<&str>, expected: &str) {
    let port = free_ports(1);
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    command.args(["serve", "--shards", "1", "--log", "warn", "--listen", &format!("127.0.0.1:{port}")]);
    if let Some(dir) = data_dir {
        command.args(["--data-dir", dir]);
    }
    let mut child =
        command.current_dir(folder).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("start ringmq serve");
    let started = Instant::now();
    let mut served = false;
    while started.elapsed() < Duration::from_secs(30) && !served {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ringmq serve exited with {status} from {}", folder.display());
        }
        served = answers(&format!("127.0.0.1:{port}"), 1);
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "the broker answered");
    assert!(folder.join(expected).join("shard-0").is_dir(), "its data is in {expected} under the working folder");
}

#[test]
fn the_broker_starts_with_its_default_data_directory_under_the_working_folder() {
    let folder = tempfile::tempdir().expect("temp dir");
    serves_from(folder.path(), None, "ringmq-data");
    let other = tempfile::tempdir().expect("temp dir");
    serves_from(other.path(), Some("data/broker"), "data/broker");
}
