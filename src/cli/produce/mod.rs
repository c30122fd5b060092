//! `ringmq produce`: one message per stdin line, one JSON line per result,
//! in input order. A broker restart is waited out (each line is resent for
//! up to `--delivery-timeout-ms`); the exit status is non-zero if any line
//! finally failed. `--linger-ms` batches lines into produce requests.
//! `--outbox FILE` stores each line in a SQLite outbox first (`outbox`
//! below), so lines a killed run accepted are delivered by the next one.

use crate::client::{
    AsyncProducer, BatchOptions, Client, ClientError, OutgoingMessage, OwnedMessage, Producer, ProducerOptions,
    QueueChoice, SendReceipt, REQUEST_TIMEOUT_DEFAULT,
};
use clap::Args;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Lines sent per pipelined round.
const LINES_PER_ROUND: usize = 1024;
const WINDOW: usize = 64;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[arg(long)]
    topic: String,
    /// Key of every message; messages of one key go to one queue, in order.
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    tag: Option<String>,
    /// Deliver each line after the broker's delay level N (1..18 with the
    /// default delay_levels: 1s 5s 10s 30s 1m 2m 3m … 1h 2h).
    #[arg(long, conflicts_with_all = ["delay_ms", "deliver_at_ms", "half", "transaction"])]
    delay_level: Option<u8>,
    /// Deliver each line this many milliseconds from now.
    #[arg(long, conflicts_with_all = ["deliver_at_ms", "half", "transaction"])]
    delay_ms: Option<u64>,
    /// Deliver each line at this time (ms since the epoch); a time in the
    /// past delivers at once.
    #[arg(long, conflicts_with_all = ["half", "transaction"])]
    deliver_at_ms: Option<u64>,
    /// How long each line is resent through broker restarts and
    /// unreachable shards before it is reported failed.
    #[arg(long, default_value_t = crate::client::DELIVERY_TIMEOUT_DEFAULT.as_millis() as u64)]
    delivery_timeout_ms: u64,
    /// Batch lines: a queue's lines wait up to this long to share one
    /// produce request. Without it, each line is its own request.
    #[arg(long)]
    linger_ms: Option<u64>,
    /// With --linger-ms: a batch goes out once it holds this many bytes.
    #[arg(long, default_value_t = BatchOptions::default().batch_max_bytes)]
    batch_max_bytes: usize,
    /// Store every line in this SQLite file (created if missing) before
    /// taking the next; a background sender delivers the lines in order and
    /// deletes each once acknowledged. Lines a killed run stored are resent
    /// by the next run on the same file, printed with "line": null and
    /// "resent": true.
    #[arg(long, value_name = "FILE", conflicts_with = "linger_ms")]
    outbox: Option<PathBuf>,
    /// With --outbox: skip the stdin lines earlier runs on this outbox
    /// already stored (the file counts them), numbering on after them. Run a
    /// killed `produce --outbox` again with the same input and --resume.
    #[arg(long, requires = "outbox")]
    resume: bool,
    /// Producer group of transactional messages (with --half or
    /// --transaction).
    #[arg(long)]
    producer_group: Option<String>,
    /// Send every line as a half message and leave it pending: each gets a
    /// fresh transaction id, printed.
    #[arg(long, requires = "producer_group", conflicts_with_all = ["transaction", "linger_ms"])]
    half: bool,
    /// Send every line as a half message, then end its transaction so.
    #[arg(long, value_enum, requires = "producer_group", conflicts_with = "linger_ms")]
    transaction: Option<TransactionEnd>,
    #[arg(long, default_value = super::BROKER_DEFAULT)]
    broker: String,
}

/// How `--transaction` ends each line's transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TransactionEnd {
    Commit,
    Rollback,
}

/// The JSON line of an acknowledged message (`line` null for one an earlier
/// run's outbox held).
fn receipt_line(line: Option<usize>, receipt: &SendReceipt) -> serde_json::Value {
    serde_json::json!({
        "line": line,
        "msg_id": receipt.msg_id_hex(),
        "queue": receipt.queue,
        "offset": receipt.offset,
        "status": receipt.status_name(),
        "duplicate": receipt.duplicate,
    })
}

/// The JSON line for input line `line`.
fn result_line(line: usize, result: &Result<SendReceipt, ClientError>) -> serde_json::Value {
    match result {
        Ok(receipt) => receipt_line(Some(line), receipt),
        Err(error) => serde_json::json!({"line": line, "error": error.to_string()}),
    }
}

pub fn run(args: ProduceArgs) -> Result<ExitCode, String> {
    let delivery_timeout = Duration::from_millis(args.delivery_timeout_ms);
    let client = Client::connect_patiently(&args.broker, REQUEST_TIMEOUT_DEFAULT, delivery_timeout);
    let client = Arc::new(client.map_err(|error| error.to_string())?);
    let options = ProducerOptions { delivery_timeout, ..ProducerOptions::default() };
    if let Some(path) = &args.outbox {
        let failed = outbox::produce(&args, path, client, options)?;
        return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
    let producer = Producer::new(client, &args.topic, options).map_err(|error| error.to_string())?;
    let failed = match (&args.producer_group, args.linger_ms) {
        (Some(group), _) if args.half || args.transaction.is_some() => transactional::produce(&args, &producer, group)?,
        (_, Some(linger_ms)) => produce_batched(&args, Arc::new(producer), Duration::from_millis(linger_ms))?,
        _ => produce_pipelined(&args, &producer)?,
    };
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The message of one input line.
fn outgoing<'a>(args: &'a ProduceArgs, line: &'a str) -> OutgoingMessage<'a> {
    let deliver_at_ms = match (args.deliver_at_ms, args.delay_ms) {
        (Some(at), _) => at,
        (None, Some(delay)) => crate::storage::now_us() / 1000 + delay,
        (None, None) => 0,
    };
    OutgoingMessage {
        body: line.as_bytes(),
        key: args.key.as_deref(),
        tag: args.tag.as_deref(),
        properties: &[],
        delay_level: args.delay_level.unwrap_or(0),
        deliver_at_ms,
    }
}

fn choice(args: &ProduceArgs) -> QueueChoice {
    if args.key.is_some() {
        QueueChoice::KeyHash
    } else {
        QueueChoice::RoundRobin
    }
}

/// One request per line, `WINDOW` in flight; `true` if a line failed.
fn produce_pipelined(args: &ProduceArgs, producer: &Producer) -> Result<bool, String> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut stdout = std::io::stdout().lock();
    let mut line_number = 0;
    let mut failed = false;
    loop {
        let mut round = Vec::with_capacity(LINES_PER_ROUND);
        for line in lines.by_ref().take(LINES_PER_ROUND) {
            round.push(line.map_err(|error| format!("reading stdin: {error}"))?);
        }
        if round.is_empty() {
            return Ok(failed);
        }
        let messages: Vec<OutgoingMessage<'_>> = round.iter().map(|line| outgoing(args, line)).collect();
        for result in producer.send_pipelined(&messages, choice(args), WINDOW) {
            line_number += 1;
            failed |= result.is_err();
            writeln!(stdout, "{}", result_line(line_number, &result))
                .map_err(|error| format!("writing stdout: {error}"))?;
        }
        stdout.flush().map_err(|error| format!("writing stdout: {error}"))?;
    }
}

/// Results arrive in any order across queues; they are printed in input
/// order.
struct InOrder {
    next: usize,
    waiting: BTreeMap<usize, Result<SendReceipt, ClientError>>,
    failed: bool,
}

impl InOrder {
    fn print(&mut self, out: &mut impl Write) -> Result<(), String> {
        while let Some(result) = self.waiting.remove(&self.next) {
            self.failed |= result.is_err();
            writeln!(out, "{}", result_line(self.next, &result)).map_err(|error| format!("writing stdout: {error}"))?;
            self.next += 1;
        }
        out.flush().map_err(|error| format!("writing stdout: {error}"))
    }
}

/// Lines batched per queue (`--linger-ms`); `true` if a line failed.
fn produce_batched(args: &ProduceArgs, producer: Arc<Producer>, linger: Duration) -> Result<bool, String> {
    let options = BatchOptions { linger, batch_max_bytes: args.batch_max_bytes, ..BatchOptions::default() };
    let sender = AsyncProducer::new(producer, options).map_err(|error| error.to_string())?;
    let (results, answered) = mpsc::channel();
    let mut stdout = std::io::stdout().lock();
    let mut in_order = InOrder { next: 1, waiting: BTreeMap::new(), failed: false };
    for (index, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|error| format!("reading stdin: {error}"))?;
        let draft = outgoing(args, &line);
        let message = OwnedMessage {
            key: args.key.clone(),
            tag: args.tag.clone(),
            delay_level: draft.delay_level,
            deliver_at_ms: draft.deliver_at_ms,
            body: line.into_bytes(),
            ..OwnedMessage::default()
        };
        let results = results.clone();
        let completion = Box::new(move |result| {
            let _ = results.send((index + 1, result));
        });
        if let Err(error) = sender.send(message, choice(args), completion) {
            in_order.waiting.insert(index + 1, Err(error));
        }
        in_order.waiting.extend(answered.try_iter());
        in_order.print(&mut stdout)?;
    }
    // Sends what is still batched and waits for every answer.
    drop(sender);
    drop(results);
    in_order.waiting.extend(answered.iter());
    in_order.print(&mut stdout)?;
    Ok(in_order.failed)
}

mod transactional;

#[cfg(feature = "sqlite")]
mod outbox;

/// Built without the `sqlite` feature, `--outbox` is refused.
#[cfg(not(feature = "sqlite"))]
mod outbox {
    use super::ProduceArgs;
    use crate::client::{Client, ProducerOptions};
    use std::path::Path;
    use std::sync::Arc;

    pub fn produce(_: &ProduceArgs, _: &Path, _: Arc<Client>, _: ProducerOptions) -> Result<bool, String> {
        Err("--outbox needs ringmq built with the sqlite feature".into())
    }
}
