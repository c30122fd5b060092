//! `produce --outbox FILE`. Each stdin line is stored as an outbox row, in
//! the same transaction as the count of input lines stored
//! (`ringmq_produce_input`, which `--resume` reads); the outbox's sender
//! delivers the rows and a printer thread prints each acknowledgement in row
//! order, which is input order. The rows an earlier run left come first,
//! with `"line": null, "resent": true`. Once the input ends, the run exits 0
//! when every row was acknowledged and deleted; if a row finally fails
//! after that (`--delivery-timeout-ms`), it prints `{"line":…, "error":…,
//! "kept": true}` for each row not yet acknowledged and exits non-zero. The
//! rows stay in the file for the next run.

use super::{choice, ProduceArgs};
use crate::client::{Client, Outbox, OutboxEvent, OutboxObserver, OutboxOptions, ProducerOptions, RowId, SendReceipt};
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
    let mut printed = super::receipt_line(line, receipt);
    printed["resent"] = line.is_none().into();
    printed
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
            writeln!(out, "{}", delivered_line(line, &receipt)).map_err(|error| format!("writing stdout: {error}"))?;
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
pub fn produce(args: &ProduceArgs, path: &Path, client: Arc<Client>, options: ProducerOptions) -> Result<bool, String> {
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
        let message = super::outgoing(args, &line);
        let number = line_number;
        let stored =
            outbox.send_with(&message, choice(args), |transaction| record_accepted(transaction, &args.topic, number));
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
