//! `ringmq dlq list|resend`: a group's dead letters, and putting them back
//! on their original topic (once each, unless `--again`).

use crate::client::{dead_letters, resend_dead_letter, Client, ReceivedMessage};
use clap::Subcommand;
use std::io::Write;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// One line per dead letter of the group, queue by queue.
    List {
        #[arg(long)]
        group: String,
        /// One JSON object per line instead of tab-separated columns.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
    },
    /// Put the group's dead letters (or one) back on their original topic
    /// and queue; one JSON line each. A dead letter goes back once.
    Resend {
        #[arg(long)]
        group: String,
        /// Only the dead letter with this message id.
        #[arg(long)]
        msg_id: Option<String>,
        /// Resend dead letters that were resent before too.
        #[arg(long)]
        again: bool,
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
    },
}

pub fn run(command: DlqCommand) -> Result<ExitCode, String> {
    match command {
        DlqCommand::List { group, json, broker } => list(&group, json, &broker),
        DlqCommand::Resend { group, msg_id, again, broker } => resend(&group, msg_id.as_deref(), again, &broker),
    }
}

fn connect(broker: &str) -> Result<Client, String> {
    Client::connect(broker).map_err(|error| error.to_string())
}

fn list(group: &str, json: bool, broker: &str) -> Result<ExitCode, String> {
    let client = connect(broker)?;
    let letters = dead_letters(&client, group).map_err(|error| error.to_string())?;
    let mut stdout = std::io::stdout().lock();
    for letter in &letters {
        let written = if json {
            writeln!(stdout, "{}", list_line(letter))
        } else {
            writeln!(
                stdout,
                "{}\t{}\t{}\t{}\t{}\t{}",
                letter.msg_id_hex(),
                letter.original_topic,
                letter.original_queue,
                letter.reconsume_times,
                letter.store_timestamp_us / 1000,
                String::from_utf8_lossy(&letter.body)
            )
        };
        written.map_err(|error| format!("writing stdout: {error}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn list_line(letter: &ReceivedMessage) -> serde_json::Value {
    serde_json::json!({
        "msg_id": letter.msg_id_hex(),
        "original_topic": letter.original_topic,
        "original_queue": letter.original_queue,
        "reconsume_times": letter.reconsume_times,
        "stored_at_ms": letter.store_timestamp_us / 1000,
        "body": String::from_utf8_lossy(&letter.body),
        "queue": letter.queue,
        "offset": letter.offset,
    })
}

fn resend(group: &str, msg_id: Option<&str>, again: bool, broker: &str) -> Result<ExitCode, String> {
    let client = connect(broker)?;
    let letters = dead_letters(&client, group).map_err(|error| error.to_string())?;
    let chosen: Vec<&ReceivedMessage> =
        letters.iter().filter(|letter| msg_id.is_none_or(|id| letter.msg_id_hex().eq_ignore_ascii_case(id))).collect();
    if let (Some(id), true) = (msg_id, chosen.is_empty()) {
        return Err(format!("group {group} has no dead letter with message id {id}"));
    }
    let mut stdout = std::io::stdout().lock();
    for letter in chosen {
        let resent = resend_dead_letter(&client, group, letter.queue, letter.offset, again)
            .map_err(|error| format!("resending {}: {error}", letter.msg_id_hex()))?;
        let line = serde_json::json!({
            "msg_id": letter.msg_id_hex(),
            "original_topic": resent.original_topic,
            "original_queue": resent.original_queue,
            "resent": resent.resent,
        });
        writeln!(stdout, "{line}").map_err(|error| format!("writing stdout: {error}"))?;
    }
    Ok(ExitCode::SUCCESS)
}
