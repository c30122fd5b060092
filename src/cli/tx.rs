//! `ringmq tx list|end`: the transactions the broker holds, and an
//! operator's resolution of one.

use crate::client::{Client, REQUEST_TIMEOUT_DEFAULT};
use crate::protocol::{fb, TransactionSummary};
use crate::storage::now_us;
use clap::{ArgGroup, Subcommand};
use std::process::ExitCode;

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
