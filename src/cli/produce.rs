//! `ringmq produce`: one message per stdin line, one JSON line per result,
//! in input order. Exit status non-zero if any message failed.

use crate::client::{Client, OutgoingMessage, Producer, ProducerOptions, QueueChoice};
use crate::protocol::fb;
use clap::Args;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;

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
    #[arg(long, default_value = super::BROKER_DEFAULT)]
    broker: String,
}

pub fn run(args: ProduceArgs) -> Result<ExitCode, String> {
    let client = Arc::new(Client::connect(&args.broker).map_err(|error| error.to_string())?);
    let producer = Producer::new(client, &args.topic, ProducerOptions::default()).map_err(|error| error.to_string())?;
    let choice = if args.key.is_some() { QueueChoice::KeyHash } else { QueueChoice::RoundRobin };
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
            break;
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
        for result in producer.send_pipelined(&messages, choice, WINDOW) {
            line_number += 1;
            let line = match result {
                Ok(receipt) => {
                    let status =
                        if receipt.status == fb::SendStatus::SendOk { "SEND_OK" } else { "FLUSH_DISK_TIMEOUT" };
                    serde_json::json!({"line": line_number, "msg_id": receipt.msg_id_hex(), "queue": receipt.queue, "offset": receipt.offset, "status": status})
                }
                Err(error) => {
                    failed = true;
                    serde_json::json!({"line": line_number, "error": error.to_string()})
                }
            };
            writeln!(stdout, "{line}").map_err(|error| format!("writing stdout: {error}"))?;
        }
        stdout.flush().map_err(|error| format!("writing stdout: {error}"))?;
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
