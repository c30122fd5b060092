//! `ringmq consume`: one JSON line per message; a queue's offset is
//! committed only after the lines of the messages before it are written.
//! A broker restart is waited out: the consumer reconnects and goes on.
//! Every way out (`--max`, `--idle-exit-ms`, SIGTERM or SIGINT) commits what
//! was printed and leaves the group, so the queues move to the other
//! members at once.

use crate::client::{patiently, Client, Consumer, ConsumerOptions, OffsetReset, REQUEST_TIMEOUT_DEFAULT};
use clap::Args;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    /// Exit after this many messages.
    #[arg(long)]
    max: Option<u64>,
    /// Exit after this long without a message.
    #[arg(long)]
    idle_exit_ms: Option<u64>,
    #[arg(long, default_value = super::BROKER_DEFAULT)]
    broker: String,
    /// Static membership: a consumer started again with the same instance id
    /// within the session timeout gets its queues back without a rebalance.
    #[arg(long)]
    instance_id: Option<String>,
    /// Where a queue the group never committed starts: earliest or latest.
    #[arg(long, default_value = "earliest")]
    reset: OffsetReset,
    /// How long the group waits for a silent consumer before moving its queues.
    #[arg(long, default_value_t = 10_000)]
    session_timeout_ms: u32,
}

/// How long `consume` waits for a broker that is not answering at start.
const JOIN_PATIENCE: Duration = Duration::from_secs(120);

pub fn run(args: ConsumeArgs) -> Result<ExitCode, String> {
    let client = Client::connect_patiently(&args.broker, REQUEST_TIMEOUT_DEFAULT, JOIN_PATIENCE);
    let client = Arc::new(client.map_err(|error| error.to_string())?);
    // Set by SIGTERM or SIGINT: stop polling, commit, leave, exit 0.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).map_err(|error| format!("signal handler: {error}"))?;
    }
    let options = ConsumerOptions {
        max_wait: Duration::from_millis(200),
        session_timeout_ms: args.session_timeout_ms,
        instance_id: args.instance_id.clone(),
        offset_reset: args.reset,
        ..ConsumerOptions::default()
    };
    let joined = patiently(JOIN_PATIENCE, || Consumer::join(client.clone(), &args.group, &args.topic, options.clone()));
    let mut consumer = joined.map_err(|error| error.to_string())?;
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0u64;
    let mut last_message = Instant::now();
    let idle = args.idle_exit_ms.map(Duration::from_millis);
    while args.max.is_none_or(|max| printed < max) && !stop.load(Ordering::SeqCst) {
        if idle.is_some_and(|idle| last_message.elapsed() >= idle) {
            break;
        }
        let messages = consumer.poll().map_err(|error| error.to_string())?;
        let mut next_offsets = BTreeMap::new();
        for message in messages {
            if args.max.is_some_and(|max| printed >= max) {
                break;
            }
            let line = serde_json::json!({
                "msg_id": message.msg_id_hex(),
                "queue": message.queue,
                "offset": message.offset,
                "key": message.key,
                "tag": message.tag,
                "body": String::from_utf8_lossy(&message.body),
                "reconsume_times": message.reconsume_times,
            });
            writeln!(stdout, "{line}").map_err(|error| format!("writing stdout: {error}"))?;
            next_offsets.insert(message.queue, message.offset + 1);
            printed += 1;
            last_message = Instant::now();
        }
        stdout.flush().map_err(|error| format!("writing stdout: {error}"))?;
        for (queue, next_offset) in next_offsets {
            if let Err(error) = consumer.commit(queue, next_offset) {
                tracing::warn!(%error, queue, "commit failed; these messages may come again");
            }
        }
    }
    if let Err(error) = consumer.leave() {
        tracing::warn!(%error, "could not leave the group; its queues move when the session expires");
    }
    Ok(ExitCode::SUCCESS)
}
