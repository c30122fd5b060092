//! `ringmq message get --id MSG_ID`: one message, printed as `consume`
//! prints it. There is no id index yet: the queues are read until it is
//! found (`client::admin::find_message`).
//!
//! `ringmq message query --topic T --key K`: the messages carrying a key,
//! newest first, from every shard's key index
//! (`client::admin::query_messages`), each printed as `get` prints one.

use crate::client::{admin, Client};
use crate::protocol::MessageQuery;
use clap::Subcommand;
use std::process::ExitCode;

use crate::constants::MESSAGE_SCAN_MAX_DEFAULT;

/// Messages `query` prints unless `--max` says otherwise.
const QUERY_MAX_DEFAULT: u32 = 32;

#[derive(Subcommand, Debug)]
pub enum MessageCommand {
    /// Find a message by its id (32 hex digits: producer id, then its
    /// counter) by reading the queues, oldest first; prints one JSON line.
    Get {
        #[arg(long, value_parser = parse_msg_id)]
        id: (u64, u64),
        /// Only this topic's queues (default: every topic but the broker's own).
        #[arg(long)]
        topic: Option<String>,
        /// Give up after reading this many messages.
        #[arg(long, default_value_t = MESSAGE_SCAN_MAX_DEFAULT)]
        scan_max: u64,
        /// Accepted for symmetry: the line is JSON either way, as `consume`'s.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
    },
    /// Find the messages of a topic carrying a key (one of their keys),
    /// newest first, through the broker's key index; prints one JSON line
    /// per message, as `get`. None found: an error line and exit code 1.
    Query {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        key: String,
        /// Only messages stored at or after this time (unix milliseconds).
        #[arg(long, default_value_t = 0)]
        since_ms: u64,
        /// Print at most this many (the broker caps it at 256).
        #[arg(long, default_value_t = QUERY_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::constants::QUERY_MESSAGES_MAX)))]
        max: u32,
        /// Accepted for symmetry: the lines are JSON either way, as `get`'s.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
    },
}

fn parse_msg_id(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{text:?}: a message id is 32 hex digits");
    if text.len() != 32 || !text.is_ascii() {
        return Err(bad());
    }
    let (high, low) = text.split_at(16);
    let high = u64::from_str_radix(high, 16).map_err(|_| bad())?;
    let low = u64::from_str_radix(low, 16).map_err(|_| bad())?;
    Ok((high, low))
}

pub fn run(command: MessageCommand) -> Result<ExitCode, String> {
    match command {
        MessageCommand::Get { id, topic, scan_max, json: _, broker } => {
            let client = Client::connect(&broker).map_err(|error| error.to_string())?;
            let found =
                admin::find_message(&client, id, topic.as_deref(), scan_max).map_err(|error| error.to_string())?;
            let message = found.ok_or_else(|| format!("no queue holds message {:016x}{:016x}", id.0, id.1))?;
            let mut line = super::consume::line(&message);
            // Where it is, also when it is not a retry.
            line["topic"] = message.topic.clone().into();
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        MessageCommand::Query { topic, key, since_ms, max, json: _, broker } => {
            let client = Client::connect(&broker).map_err(|error| error.to_string())?;
            let query = MessageQuery { topic, key, since_ms, max_count: max };
            let (messages, truncated) = admin::query_messages(&client, &query).map_err(|error| error.to_string())?;
            if messages.is_empty() {
                return Err(format!("no message of topic {} carries key {:?}", query.topic, query.key));
            }
            for message in &messages {
                let mut line = super::consume::line(message);
                line["topic"] = message.topic.clone().into();
                println!("{line}");
            }
            if truncated {
                eprintln!(
                    "ringmq: more messages may carry the key than the {} shown; raise --max or narrow --since-ms",
                    messages.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_is_32_hex_digits() {
        assert_eq!(parse_msg_id("00000000000000ff0000000000000001"), Ok((255, 1)));
        for bad in ["", "ff", "00000000000000ff000000000000000g", "00000000000000ff00000000000000011"] {
            assert!(parse_msg_id(bad).is_err(), "{bad:?}");
        }
    }
}
