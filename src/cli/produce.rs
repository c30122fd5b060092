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

/// The JSON line for input line `line`.
fn result_line(line: usize, result: &Result<SendReceipt, ClientError>) -> serde_json::Value {
    match result {
        Ok(receipt) => serde_json::json!({
            "line": line,
            "msg_id": receipt.msg_id_hex(),
            "queue": receipt.queue,
            "offset": receipt.offset,
            "status": receipt.status_name(),
            "duplicate": receipt.duplicate,
        }),
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
        (Some(group), _) if args.half || args.transaction.is_some() => produce_transactional(&args, &producer, group)?,
        (_, Some(linger_ms)) => produce_batched(&args, Arc::new(producer), Duration::from_millis(linger_ms))?,
        _ => produce_pipelined(&args, &producer)?,
    };
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn choice(args: &ProduceArgs) -> QueueChoice {
    if args.key.is_some() {
        QueueChoice::KeyHash
    } else {
        QueueChoice::RoundRobin
    }
}

/// Each line a half message with a fresh transaction id, then (with
/// `--transaction`) its end; one request at a time. `true` if a line failed.
fn produce_transactional(args: &ProduceArgs, producer: &Producer, producer_group: &str) -> Result<bool, String> {
    let mut stdout = std::io::stdout().lock();
    let mut failed = false;
    for (index, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|error| format!("reading stdin: {error}"))?;
        let line_number = index + 1;
        // Unique across runs: the producer id is fresh for each.
        let transaction_id = format!("tx-{:016x}-{line_number}", producer.producer_id());
        let message = OutgoingMessage {
            body: line.as_bytes(),
            key: args.key.as_deref(),
            tag: args.tag.as_deref(),
            properties: &[],
        };
        let result = producer.send_half(&message, choice(args), producer_group, &transaction_id).and_then(|receipt| {
            let Some(end) = args.transaction else { return Ok((receipt, None)) };
            let outcome = match end {
                TransactionEnd::Commit => crate::protocol::fb::TransactionOutcome::Commit,
                TransactionEnd::Rollback => crate::protocol::fb::TransactionOutcome::Rollback,
            };
            let ended = producer.end_transaction(receipt.queue, &transaction_id, outcome)?;
            Ok((receipt, Some(ended)))
        });
        let printed = match result {
            Ok((receipt, ended)) => {
                let mut printed = serde_json::json!({
                    "line": line_number,
                    "msg_id": receipt.msg_id_hex(),
                    "transaction_id": transaction_id,
                    "queue": receipt.queue,
                    "status": receipt.status_name(),
                });
                if let Some((state, offset)) = ended {
                    printed["state"] = super::tx::state_name(state).into();
                    if let Some(offset) = offset {
                        printed["offset"] = offset.into();
                    }
                }
                printed
            }
            Err(error) => {
                failed = true;
                serde_json::json!({"line": line_number, "transaction_id": transaction_id, "error": error.to_string()})
            }
        };
        writeln!(stdout, "{printed}").map_err(|error| format!("writing stdout: {error}"))?;
        stdout.flush().map_err(|error| format!("writing stdout: {error}"))?;
    }
    Ok(failed)
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
        let messages: Vec<OutgoingMessage<'_>> = round
            .iter()
            .map(|line| OutgoingMessage {
                body: line.as_bytes(),
                key: args.key.as_deref(),
                tag: args.tag.as_deref(),
                properties: &[],
            })
            .collect();
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
        let message = OwnedMessage {
            body: line.into_bytes(),
            key: args.key.clone(),
            tag: args.tag.clone(),
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

/// `produce --outbox FILE`. Each stdin line is stored as an outbox row, in
/// the same transaction as the count of input lines stored
/// (`ringmq_produce_input`, which `--resume` reads); the outbox's sender
/// delivers the rows and a printer thread prints each acknowledgement in row
/// order, which is input order. The rows an earlier run left come first,
/// with `"line": null, "resent": true`. Once the input ends, the run exits 0
/// when every row was acknowledged and deleted; if a row finally fails
/// after that (`--delivery-timeout-ms`), it prints `{"line":…, "error":…,
/// "kept": true}` for each row not yet acknowledged and exits non-zero. The
/// rows stay in the file for the next run.
#[cfg(feature = "sqlite")]
mod outbox {
    use super::{choice, ProduceArgs};
    use crate::client::{
        Client, Outbox, OutboxEvent, OutboxObserver, OutboxOptions, OutgoingMessage, ProducerOptions, RowId,
        SendReceipt,
    };
    use rusqlite::{Connection, OptionalExtension, Transaction};
    use std::collections::{BTreeSet, HashMap};
    use std::io::{BufRead, Write};
    use std::path::Path;
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    /// How long a run whose rows were all acknowledged waits for their
    /// deletes before it reports the outbox not empty.
    const DELETE_WAIT: Duration = Duration::from_secs(10);

    /// The input count, in the application's part of the outbox file: the
    /// row and the count commit together, so after a kill the count is
    /// exactly the lines stored.
    const INPUT_SCHEMA: &str = "
        CREATE TABLE IF NOT EXISTS ringmq_produce_input (
            topic TEXT PRIMARY KEY,
            lines_accepted INTEGER NOT NULL,
            finished INTEGER NOT NULL
        );
    ";

    enum Note {
        /// The rows an earlier run left, oldest first; sent before any line.
        Inherited(Vec<RowId>),
        Accepted {
            row: RowId,
            line: usize,
        },
        Event(OutboxEvent),
        /// No more lines.
        Eof,
    }

    fn record_accepted(transaction: &Transaction<'_>, topic: &str, line: usize) -> rusqlite::Result<()> {
        transaction
            .execute("UPDATE ringmq_produce_input SET lines_accepted = ?2 WHERE topic = ?1", (topic, line as i64))
            .map(|_| ())
    }

    /// The count an earlier run left: (lines stored, whether it read its
    /// input to the end). Marks this run's input as being read; without
    /// `resume`, starts counting a new input from 0.
    fn start_input(path: &Path, topic: &str, resume: bool) -> Result<(usize, bool), String> {
        let sqlite = |error: rusqlite::Error| format!("outbox {}: {error}", path.display());
        let connection = Connection::open(path).map_err(sqlite)?;
        connection.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        connection.execute_batch(INPUT_SCHEMA).map_err(sqlite)?;
        let earlier: Option<(i64, bool)> = connection
            .query_row("SELECT lines_accepted, finished FROM ringmq_produce_input WHERE topic = ?1", [topic], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
            .map_err(sqlite)?;
        let (accepted, finished) = earlier.unwrap_or((0, true));
        let accepted = usize::try_from(accepted).unwrap_or(0);
        let start = if resume { accepted } else { 0 };
        connection
            .execute(
                "INSERT OR REPLACE INTO ringmq_produce_input (topic, lines_accepted, finished) VALUES (?1, ?2, 0)",
                (topic, start as i64),
            )
            .map_err(sqlite)?;
        Ok((accepted, finished))
    }

    fn finish_input(path: &Path, topic: &str) -> Result<(), String> {
        let sqlite = |error: rusqlite::Error| format!("outbox {}: {error}", path.display());
        let connection = Connection::open(path).map_err(sqlite)?;
        connection.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        connection.execute("UPDATE ringmq_produce_input SET finished = 1 WHERE topic = ?1", [topic]).map_err(sqlite)?;
        Ok(())
    }

    fn delivered_line(line: Option<usize>, receipt: &SendReceipt) -> serde_json::Value {
        serde_json::json!({
            "line": line,
            "msg_id": receipt.msg_id_hex(),
            "queue": receipt.queue,
            "offset": receipt.offset,
            "status": receipt.status_name(),
            "duplicate": receipt.duplicate,
            "resent": line.is_none(),
        })
    }

    /// Prints acknowledgements in row order. Rows are registered in
    /// increasing order (earlier runs' first), so an unregistered row is
    /// newer than every registered one and never holds the printing up.
    #[derive(Default)]
    struct Printer {
        lines: HashMap<RowId, Option<usize>>,
        outstanding: BTreeSet<RowId>,
        receipts: HashMap<RowId, SendReceipt>,
        errors: HashMap<RowId, String>,
        eof: bool,
    }

    impl Printer {
        /// `true` once every row is acknowledged after the input ended;
        /// `false` when a row finally failed after it ended.
        fn run(mut self, notes: mpsc::Receiver<Note>) -> Result<bool, String> {
            let mut out = std::io::stdout().lock();
            for note in notes.iter() {
                let mut failed = false;
                match note {
                    Note::Inherited(rows) => {
                        for row in rows {
                            self.lines.insert(row, None);
                            self.outstanding.insert(row);
                        }
                    }
                    Note::Accepted { row, line } => {
                        self.lines.insert(row, Some(line));
                        self.outstanding.insert(row);
                    }
                    Note::Event(OutboxEvent::Delivered { row, receipt }) => {
                        self.receipts.insert(row, receipt);
                    }
                    Note::Event(OutboxEvent::Failed { row, error }) => {
                        self.errors.insert(row, error.to_string());
                        failed = self.eof;
                    }
                    Note::Eof => self.eof = true,
                }
                self.print_delivered(&mut out)?;
                if self.eof && self.outstanding.is_empty() {
                    return Ok(true);
                }
                if failed {
                    self.print_kept(&mut out)?;
                    return Ok(false);
                }
            }
            self.print_kept(&mut out)?;
            Ok(false)
        }

        fn print_delivered(&mut self, out: &mut impl Write) -> Result<(), String> {
            while let Some(&row) = self.outstanding.first() {
                let Some(receipt) = self.receipts.remove(&row) else { break };
                self.outstanding.remove(&row);
                let line = self.lines.remove(&row).flatten();
                writeln!(out, "{}", delivered_line(line, &receipt))
                    .map_err(|error| format!("writing stdout: {error}"))?;
            }
            out.flush().map_err(|error| format!("writing stdout: {error}"))
        }

        /// One error line per row not acknowledged: it stays in the outbox.
        fn print_kept(&mut self, out: &mut impl Write) -> Result<(), String> {
            for row in std::mem::take(&mut self.outstanding) {
                let line = self.lines.remove(&row).flatten();
                let error = self.errors.remove(&row).unwrap_or_else(|| "not delivered yet".into());
                let json = serde_json::json!({"line": line, "error": error, "resent": line.is_none(), "kept": true});
                writeln!(out, "{json}").map_err(|error| format!("writing stdout: {error}"))?;
            }
            out.flush().map_err(|error| format!("writing stdout: {error}"))
        }
    }

    /// `true` if something is left undelivered.
    pub fn produce(
        args: &ProduceArgs,
        path: &Path,
        client: Arc<Client>,
        options: ProducerOptions,
    ) -> Result<bool, String> {
        let (notes, received) = mpsc::channel();
        let events = notes.clone();
        let observer: OutboxObserver = Box::new(move |event| {
            let _ = events.send(Note::Event(event.clone()));
        });
        let options = OutboxOptions { producer: options, ..OutboxOptions::default() };
        let outbox =
            Outbox::open_with(path, client, &args.topic, options, Some(observer)).map_err(|error| error.to_string())?;
        let (accepted_before, finished_before) = start_input(path, &args.topic, args.resume)?;
        if !args.resume && !finished_before && accepted_before > 0 {
            tracing::warn!(
                lines = accepted_before,
                "an earlier run on this outbox stopped after storing this many lines of its input; \
                 to go on with that input, run again with --resume"
            );
        }
        let skip = if args.resume { accepted_before } else { 0 };
        let _ = notes.send(Note::Inherited(outbox.inherited().to_vec()));
        let printer = std::thread::Builder::new()
            .name("ringmq-produce-printer".into())
            .spawn(move || Printer::default().run(received))
            .map_err(|error| format!("cannot start the printer: {error}"))?;

        let mut stopped_early = None;
        let mut line_number = skip;
        for line in std::io::stdin().lock().lines().skip(skip) {
            let line = match line {
                Ok(line) => line,
                Err(error) => {
                    stopped_early = Some(format!("reading stdin: {error}"));
                    break;
                }
            };
            line_number += 1;
            let message = OutgoingMessage {
                body: line.as_bytes(),
                key: args.key.as_deref(),
                tag: args.tag.as_deref(),
                properties: &[],
            };
            let number = line_number;
            let stored = outbox
                .send_with(&message, choice(args), |transaction| record_accepted(transaction, &args.topic, number));
            match stored {
                Ok(row) => {
                    let _ = notes.send(Note::Accepted { row, line: line_number });
                }
                Err(error) => {
                    stopped_early = Some(format!("line {line_number} was not stored: {error}"));
                    break;
                }
            }
        }
        if stopped_early.is_none() {
            finish_input(path, &args.topic)?;
        }
        let _ = notes.send(Note::Eof);
        drop(notes);
        let delivered = printer.join().map_err(|_| "the printer thread panicked".to_string())??;
        let empty = delivered && outbox.wait_empty(DELETE_WAIT);
        let stats = outbox.stats();
        tracing::info!(
            delivered = stats.delivered,
            duplicates = stats.duplicates,
            failures = stats.failures,
            "outbox run done"
        );
        if delivered && !empty {
            tracing::error!("every line was acknowledged, but their outbox rows are not all deleted yet");
        }
        if let Some(reason) = stopped_early {
            return Err(reason);
        }
        Ok(!empty)
    }
}
