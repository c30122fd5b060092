//! `produce --producer-group PG --half | --transaction commit|rollback`.

use super::{choice, ProduceArgs, TransactionEnd};
use crate::client::Producer;
use std::io::{BufRead, Write};

/// Each line a half message with a fresh transaction id, then (with
/// `--transaction`) its end; one request at a time. `true` if a line failed.
pub fn produce(args: &ProduceArgs, producer: &Producer, producer_group: &str) -> Result<bool, String> {
    let mut stdout = std::io::stdout().lock();
    let mut failed = false;
    for (index, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|error| format!("reading stdin: {error}"))?;
        let line_number = index + 1;
        // Unique across runs: the producer id is fresh for each.
        let transaction_id = format!("tx-{:016x}-{line_number}", producer.producer_id());
        let message = super::outgoing(args, &line);
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
                    printed["state"] = super::super::tx::state_name(state).into();
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
