//! `ringmq tx list|end|respond`: the transactions the broker holds, an
//! operator's resolution of one, and a stand-in producer answering the
//! broker's check-backs.

use crate::client::{CheckLocal, CheckResponder, CheckedMessage, Client, LocalOutcome, REQUEST_TIMEOUT_DEFAULT};
use crate::protocol::{fb, TransactionSummary};
use crate::storage::now_us;
use clap::{ArgGroup, Subcommand, ValueEnum};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long `respond` waits for a broker that is not there (yet).
const RESPOND_CONNECT_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Answer {
    Commit,
    Rollback,
    Unknown,
}

impl Answer {
    fn outcome(self) -> LocalOutcome {
        match self {
            Answer::Commit => LocalOutcome::Commit,
            Answer::Rollback => LocalOutcome::Rollback,
            Answer::Unknown => LocalOutcome::Unknown,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TxCommand {
    /// One line per transaction of every shard: pending ones first.
    List {
        /// Only the transactions the broker discarded.
        #[arg(long)]
        discarded: bool,
        /// One JSON object per line instead of tab-separated columns.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
    },
    /// Commit or roll back a transaction by hand.
    #[command(group(ArgGroup::new("outcome").required(true).args(["commit", "rollback"])))]
    End {
        transaction_id: String,
        #[arg(long)]
        commit: bool,
        #[arg(long)]
        rollback: bool,
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
    },
    /// Register as a live producer of a group and answer every check-back;
    /// one JSON line per check received. Runs until killed or
    /// --exit-after-ms.
    Respond {
        #[arg(long)]
        producer_group: String,
        /// The answer to a transaction the answers file does not name.
        #[arg(long, value_enum, default_value = "unknown")]
        answer: Answer,
        /// Lines `TRANSACTION_ID commit|rollback|unknown`.
        #[arg(long)]
        answers: Option<PathBuf>,
        #[arg(long)]
        exit_after_ms: Option<u64>,
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
    },
}

/// Reads an answers file: `TRANSACTION_ID commit|rollback|unknown` a line
/// (blank lines and `#` comments skipped).
fn read_answers(path: &Path) -> Result<HashMap<String, LocalOutcome>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut answers = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad =
            || format!("{} line {}: expected `TRANSACTION_ID commit|rollback|unknown`", path.display(), index + 1);
        let mut words = line.split_whitespace();
        let (Some(transaction_id), Some(answer), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        let answer = Answer::from_str(answer, true).map_err(|_| bad())?;
        answers.insert(transaction_id.to_string(), answer.outcome());
    }
    Ok(answers)
}

fn respond(
    producer_group: &str,
    answer: Answer,
    answers: Option<&Path>,
    exit_after_ms: Option<u64>,
    broker: &str,
) -> Result<ExitCode, String> {
    let answers = answers.map(read_answers).transpose()?.unwrap_or_default();
    let client = Client::connect_patiently(broker, REQUEST_TIMEOUT_DEFAULT, RESPOND_CONNECT_PATIENCE)
        .map_err(|error| error.to_string())?;
    let fallback = answer.outcome();
    let check_local: CheckLocal = Arc::new(move |message: &CheckedMessage| {
        let outcome = answers.get(&message.transaction_id).copied().unwrap_or(fallback);
        let line = serde_json::json!({
            "transaction_id": message.transaction_id,
            "msg_id": message.msg_id_hex(),
            "answer": outcome.name(),
        });
        // Scripts read the lines as they come.
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
        outcome
    });
    let _responder = CheckResponder::start(Arc::new(client), producer_group, check_local, REQUEST_TIMEOUT_DEFAULT)
        .map_err(|error| error.to_string())?;
    let deadline = exit_after_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    loop {
        match deadline {
            Some(deadline) if Instant::now() >= deadline => return Ok(ExitCode::SUCCESS),
            Some(deadline) => {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)))
            }
            None => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// A transaction state as the CLI prints it.
pub fn state_name(state: fb::TransactionState) -> &'static str {
    match state {
        fb::TransactionState::Pending => "pending",
        fb::TransactionState::Committed => "committed",
        fb::TransactionState::RolledBack => "rolled_back",
        fb::TransactionState::Discarded => "discarded",
        _ => "unknown",
    }
}

fn summary_line(summary: &TransactionSummary, now_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "transaction_id": summary.transaction_id,
        "msg_id": format!("{:016x}{:016x}", summary.msg_id.0, summary.msg_id.1),
        "topic": summary.topic,
        "queue": summary.queue,
        "producer_group": summary.producer_group,
        "age_ms": now_ms.saturating_sub(summary.stored_at_ms),
        "checks_delivered": summary.checks_delivered,
        "state": state_name(summary.state),
    })
}

pub fn run(command: TxCommand) -> Result<ExitCode, String> {
    match command {
        TxCommand::List { discarded, json, broker } => {
            let client = Client::connect(&broker).map_err(|error| error.to_string())?;
            let now_ms = now_us() / 1000;
            for summary in client.list_transactions(discarded).map_err(|error| error.to_string())? {
                let line = summary_line(&summary, now_ms);
                if json {
                    println!("{line}");
                } else {
                    let columns = [
                        "transaction_id",
                        "msg_id",
                        "topic",
                        "queue",
                        "producer_group",
                        "age_ms",
                        "checks_delivered",
                        "state",
                    ];
                    let cells: Vec<String> = columns
                        .iter()
                        .map(|column| match &line[column] {
                            serde_json::Value::String(text) => text.clone(),
                            other => other.to_string(),
                        })
                        .collect();
                    println!("{}", cells.join("\t"));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TxCommand::Respond { producer_group, answer, answers, exit_after_ms, broker } => {
            respond(&producer_group, answer, answers.as_deref(), exit_after_ms, &broker)
        }
        TxCommand::End { transaction_id, commit, rollback: _, broker } => {
            let client = Client::connect(&broker).map_err(|error| error.to_string())?;
            // The shard holding it is the one that lists it.
            let listed = client.list_transactions(false).map_err(|error| error.to_string())?;
            let summary = listed
                .into_iter()
                .find(|summary| summary.transaction_id == transaction_id)
                .ok_or_else(|| format!("no shard knows transaction {transaction_id:?}"))?;
            let outcome = if commit { fb::TransactionOutcome::Commit } else { fb::TransactionOutcome::Rollback };
            let (state, offset) = client
                .end_transaction(&summary.topic, summary.queue, &transaction_id, outcome, REQUEST_TIMEOUT_DEFAULT)
                .map_err(|error| error.to_string())?;
            let line = serde_json::json!({
                "transaction_id": transaction_id,
                "topic": summary.topic,
                "queue": summary.queue,
                "state": state_name(state),
                "offset": offset,
            });
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
