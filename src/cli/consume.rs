//! `ringmq consume`: one JSON line per delivery; a queue's offset is
//! committed only after the lines of the messages before it are written
//! (stdout is line-buffered). The consumer also takes the group's retries
//! (`%RETRY%<group>`). `--reconsume-later-matching` answers RECONSUME_LATER
//! for matching bodies, so they come again with a growing
//! `reconsume_times`, and after `--max-reconsume-times` go to the group's
//! dead-letter topic. A broker restart is waited out. Every way out
//! (`--max`, `--idle-exit-ms`, SIGTERM or SIGINT) commits what was printed
//! and leaves the group, so the queues move to the other members at once.

use crate::client::{
    parse_tags, patiently, Client, ConsumeResult, ConsumerOptions, GroupConsumer, OffsetReset, ReceivedMessage,
    MAX_RECONSUME_TIMES_DEFAULT, ORDERED_BACKOFF_DEFAULT, REQUEST_TIMEOUT_DEFAULT,
};
use clap::Args;
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
    /// Only messages with one of these tags: "a || b"; * for all.
    #[arg(long, default_value = "*")]
    tags: String,
    /// Answer RECONSUME_LATER for messages whose body matches this regular
    /// expression (they are printed, then delivered again later), and
    /// CONSUME_SUCCESS for the rest.
    #[arg(long, value_name = "REGEX")]
    reconsume_later_matching: Option<regex::Regex>,
    /// Retries of a message answered later before it goes to the group's
    /// dead-letter topic.
    #[arg(long, default_value_t = MAX_RECONSUME_TIMES_DEFAULT)]
    max_reconsume_times: u32,
    /// Ordered consumption: a message answered later blocks its queue and
    /// comes again after --ordered-backoff-ms (nothing behind it first);
    /// after --max-reconsume-times it goes to the dead-letter topic.
    #[arg(long)]
    ordered: bool,
    #[arg(long, default_value_t = ORDERED_BACKOFF_DEFAULT.as_millis() as u64, requires = "ordered")]
    ordered_backoff_ms: u64,
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
        tags: parse_tags(&args.tags),
        ..ConsumerOptions::default()
    };
    let joined = patiently(JOIN_PATIENCE, || {
        GroupConsumer::join(client.clone(), &args.group, &args.topic, options.clone(), args.max_reconsume_times)
    });
    let mut consumer = joined.map_err(|error| error.to_string())?;
    consumer.ordered_backoff = Duration::from_millis(args.ordered_backoff_ms);
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0u64;
    let mut last_message = Instant::now();
    let idle = args.idle_exit_ms.map(Duration::from_millis);
    let mut write_error = None;
    while args.max.is_none_or(|max| printed < max) && write_error.is_none() && !stop.load(Ordering::SeqCst) {
        if idle.is_some_and(|idle| last_message.elapsed() >= idle) {
            break;
        }
        let handle = |message: &ReceivedMessage| {
            if args.max.is_some_and(|max| printed >= max) || write_error.is_some() {
                return ConsumeResult::Stop;
            }
            if let Err(error) = writeln!(stdout, "{}", line(message)) {
                write_error = Some(format!("writing stdout: {error}"));
                return ConsumeResult::Stop;
            }
            printed += 1;
            last_message = Instant::now();
            let later = args
                .reconsume_later_matching
                .as_ref()
                .is_some_and(|pattern| pattern.is_match(&String::from_utf8_lossy(&message.body)));
            if later {
                ConsumeResult::Later
            } else {
                ConsumeResult::Success
            }
        };
        let handled = if args.ordered { consumer.handle_next_ordered(handle) } else { consumer.handle_next(handle) };
        if let Err(error) = handled {
            tracing::warn!(%error, "a commit failed; those messages may come again");
        }
    }
    let _ = stdout.flush();
    if let Err(error) = consumer.leave() {
        tracing::warn!(%error, "could not leave the group; its queues move when the session expires");
    }
    write_error.map_or(Ok(ExitCode::SUCCESS), Err)
}

/// The JSON line of one delivery.
pub(super) fn line(message: &ReceivedMessage) -> serde_json::Value {
    let now_ms = crate::storage::now_us() / 1000;
    let mut line = serde_json::json!({
        "msg_id": message.msg_id_hex(),
        "queue": message.queue,
        "offset": message.offset,
        "key": message.key,
        "tag": message.tag,
        "body": String::from_utf8_lossy(&message.body),
        "reconsume_times": message.reconsume_times,
        "stored_at_ms": message.store_timestamp_us / 1000,
        "delivered_at_ms": now_ms,
    });
    if message.topic != message.original_topic {
        // A retry: the message keeps its id; where it first went.
        line["topic"] = message.topic.clone().into();
        line["original_msg_id"] = message.msg_id_hex().into();
        line["original_topic"] = message.original_topic.clone().into();
        line["original_queue"] = message.original_queue.into();
    }
    line
}
