//! Crash loop on real O_DIRECT files: a child process appends with sync
//! flush and reports every acknowledged record the moment its append
//! resolves; the parent kills it with SIGKILL at a random moment, restarts
//! it on the same directory and checks that every acknowledged record is
//! present, intact and in order. The seed is printed; set RINGMQ_CRASH_SEED
//! to replay, RINGMQ_CRASH_CYCLES to run longer.

use ringmq::storage::backend::DmaStorage;
use ringmq::storage::{AppendRequest, CommitLog, LogConfig};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const QUEUES: u32 = 4;
const CYCLES_DEFAULT: u64 = 60;
const CHILD_RUN_TIME_MAX: Duration = Duration::from_secs(30);

fn message(queue_id: u32, offset: u64) -> Vec<u8> {
    let length = 64 + (offset as usize * 97 + queue_id as usize * 13) % 3000;
    (0..length).map(|index| (offset as usize * 7 + index * 3 + queue_id as usize) as u8).collect()
}

fn config(dir: &str) -> LogConfig {
    LogConfig {
        segment_size_bytes: 1024 * 1024,
        buffer_capacity_bytes: 256 * 1024,
        checkpoint_interval: Duration::from_millis(50),
        ..LogConfig::new(dir)
    }
}

fn say(line: String) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "@@ {line}");
    let _ = stdout.flush();
}

/// The child: recover, report what is there, then append until killed.
#[test]
#[ignore = "run by the crash-loop test as its child process"]
fn crash_child_process() {
    let dir = std::env::var("RINGMQ_CRASH_DIR").expect("the crash loop sets RINGMQ_CRASH_DIR");
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor");
    executor.run(async move {
        let log = Rc::new(CommitLog::open(DmaStorage, config(&dir)).await.expect("recovery"));
        let mut counts = Vec::new();
        for queue_id in 0..QUEUES {
            let count = log.visible_end_offset(queue_id);
            let mut offset = log.base_offset(queue_id);
            while offset < count {
                let batch = log.read(queue_id, offset, 64, 1 << 20).await.expect("read");
                for record in batch.records {
                    if record.message() != message(queue_id, offset) {
                        say(format!("BAD {queue_id} {offset}"));
                    }
                    offset += 1;
                }
            }
            say(format!("RECOVERED {queue_id} {count}"));
            counts.push(count);
        }
        let mut tasks = Vec::new();
        for (queue_id, count) in (0..QUEUES).zip(counts) {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let started = Instant::now();
                let mut offset = count;
                while started.elapsed() < CHILD_RUN_TIME_MAX {
                    let message = message(queue_id, offset);
                    let request = AppendRequest { queue_id, indexed: true, message: &message, ..Default::default() };
                    let appended = log.append(request).await.expect("append");
                    assert_eq!(appended.queue_offset, Some(offset));
                    say(format!("ACK {queue_id} {offset}"));
                    offset += 1;
                }
            }));
        }
        say("READY".into());
        for task in tasks {
            task.await;
        }
    });
}

struct Cycle {
    recovered: BTreeMap<u32, u64>,
    acknowledged: BTreeMap<u32, u64>,
    bad: Vec<String>,
}

fn run_child(dir: &str, kill_after: Duration) -> Cycle {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "crash_child_process", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("RINGMQ_CRASH_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (lines_sender, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut cycle = Cycle { recovered: BTreeMap::new(), acknowledged: BTreeMap::new(), bad: Vec::new() };
    let mut killed_at = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wait = killed_at.map_or(Duration::from_millis(5), |_| Duration::from_millis(200));
        match lines.recv_timeout(wait) {
            Ok(line) => {
                // The test harness may print its own text before ours.
                let ours = line.find("@@").map_or("", |at| &line[at..]);
                let words: Vec<&str> = ours.split_whitespace().collect();
                match words.as_slice() {
                    ["@@", "READY"] => killed_at = Some(Instant::now() + kill_after),
                    ["@@", kind, queue, offset] => {
                        let (queue, offset): (u32, u64) =
                            (queue.parse().expect("queue"), offset.parse().expect("offset"));
                        match *kind {
                            "RECOVERED" => drop(cycle.recovered.insert(queue, offset)),
                            "ACK" => drop(cycle.acknowledged.insert(queue, offset + 1)),
                            _ => cycle.bad.push(line.clone()),
                        }
                    }
                    _ => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if killed_at.is_some_and(|at| Instant::now() >= at) {
            // SIGKILL: the child gets no chance to flush or checkpoint.
            let _ = child.kill();
            killed_at = Some(Instant::now() + Duration::from_secs(3600));
        }
        assert!(Instant::now() < deadline, "the child did not get ready or die in time");
    }
    let _ = child.wait();
    let _ = reader.join();
    cycle
}

#[test]
fn every_acknowledged_record_survives_sigkill_at_random_moments() {
    let seed =
        std::env::var("RINGMQ_CRASH_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    let cycles =
        std::env::var("RINGMQ_CRASH_CYCLES").ok().and_then(|cycles| cycles.parse().ok()).unwrap_or(CYCLES_DEFAULT);
    println!("crash loop seed {seed} ({cycles} cycles); replay with RINGMQ_CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().to_str().expect("utf-8 temp path").to_string();
    let mut acknowledged: BTreeMap<u32, u64> = BTreeMap::new();
    let mut total_acknowledged = 0;
    for cycle_number in 0..=cycles {
        let kill_after = Duration::from_millis(rng.u64(0..80));
        let cycle = run_child(&dir, kill_after);
        assert!(cycle.bad.is_empty(), "seed {seed} cycle {cycle_number}: damaged records {:?}", cycle.bad);
        for queue_id in 0..QUEUES {
            let recovered = cycle.recovered.get(&queue_id).copied();
            let expected = acknowledged.get(&queue_id).copied().unwrap_or(0);
            assert!(
                recovered.is_some_and(|recovered| recovered >= expected),
                "seed {seed} cycle {cycle_number}: queue {queue_id} recovered {recovered:?} records but {expected} were acknowledged"
            );
        }
        for (queue_id, count) in cycle.acknowledged {
            total_acknowledged += count - acknowledged.get(&queue_id).copied().unwrap_or(0).min(count);
            acknowledged.insert(queue_id, count);
        }
    }
    println!("crash loop seed {seed}: {cycles} kills, {total_acknowledged} acknowledged appends, none lost");
    assert!(total_acknowledged > 0, "the children never acknowledged anything");
}
