//! `ringmq group list|describe|reset-offset`: the consumer groups the
//! coordinators hold, a group's offsets and lag per queue, and an
//! operator's move of a group's offsets.

use super::table::print_row;
use crate::client::{admin, Client};
use crate::protocol::{fb, OffsetReset};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// One line per group and topic its coordinator holds.
    List {
        /// One JSON object per line instead of tab-separated columns.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
    },
    /// One line per queue of the group (its retry topic's included): owner,
    /// committed offset, end and lag.
    Describe {
        group: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
    },
    /// Commit the group's offset on every queue of a topic, bypassing the
    /// members' fencing; refused while the group has live members on it
    /// unless --force.
    ResetOffset {
        group: String,
        #[arg(long)]
        topic: String,
        /// earliest, latest, offset:N or time:EPOCH_MS.
        #[arg(long, value_parser = parse_target)]
        to: (fb::ResetTarget, u64),
        /// Reset even while members are live (their own commits may
        /// overwrite it).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
    },
}

fn parse_target(text: &str) -> Result<(fb::ResetTarget, u64), String> {
    let number = |value: &str| value.parse::<u64>().map_err(|error| format!("{value:?}: {error}"));
    match text.split_once(':') {
        None if text == "earliest" => Ok((fb::ResetTarget::Earliest, 0)),
        None if text == "latest" => Ok((fb::ResetTarget::Latest, 0)),
        Some(("offset", value)) => Ok((fb::ResetTarget::Offset, number(value)?)),
        Some(("time", value)) => Ok((fb::ResetTarget::Time, number(value)?)),
        _ => Err(format!("{text:?}: expected earliest, latest, offset:N or time:EPOCH_MS")),
    }
}

fn target_name(target: fb::ResetTarget) -> &'static str {
    match target {
        fb::ResetTarget::Earliest => "earliest",
        fb::ResetTarget::Latest => "latest",
        fb::ResetTarget::Offset => "offset",
        _ => "time",
    }
}

pub fn run(command: GroupCommand) -> Result<ExitCode, String> {
    let connect = |broker: &str| Client::connect(broker).map_err(|error| error.to_string());
    match command {
        GroupCommand::List { json, broker } => {
            let client = connect(&broker)?;
            let (groups, truncated) = admin::list_groups(&client, None).map_err(|error| error.to_string())?;
            for summary in &groups {
                let members: Vec<&str> = summary.members.iter().map(|(member, _)| member.as_str()).collect();
                let row = serde_json::json!({
                    "group": summary.group,
                    "topic": summary.topic,
                    "generation": summary.generation,
                    "members": members.len(),
                    "member_ids": members,
                });
                print_row(json, &["group", "topic", "generation", "members"], &row);
            }
            warn_if_truncated(truncated);
        }
        GroupCommand::Describe { group, json, broker } => {
            let client = connect(&broker)?;
            let (queues, truncated) = admin::describe_group(&client, &group).map_err(|error| error.to_string())?;
            if queues.is_empty() {
                return Err(format!("no coordinator or shard knows group {group:?}"));
            }
            for queue in &queues {
                let row = serde_json::json!({
                    "group": group,
                    "topic": queue.offsets.topic,
                    "queue": queue.offsets.queue,
                    "member": queue.member,
                    "committed": queue.offsets.committed,
                    "end": queue.offsets.end,
                    "lag": queue.lag(),
                });
                print_row(json, &["group", "topic", "queue", "member", "committed", "end", "lag"], &row);
            }
            warn_if_truncated(truncated);
        }
        GroupCommand::ResetOffset { group, topic, to: (target, value), force, json, broker } => {
            let client = connect(&broker)?;
            let layout = client.topic(&topic).map_err(|error| error.to_string())?;
            for queue in 0..layout.queue_shards.len() as u32 {
                let reset = OffsetReset { group: group.clone(), topic: topic.clone(), queue, target, value, force };
                let offset = admin::reset_offset(&client, &reset).map_err(|error| format!("queue {queue}: {error}"))?;
                let row = serde_json::json!({
                    "group": group,
                    "topic": topic,
                    "queue": queue,
                    "to": target_name(target),
                    "committed": offset,
                });
                print_row(json, &["group", "topic", "queue", "committed"], &row);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn warn_if_truncated(truncated: bool) {
    if truncated {
        eprintln!("ringmq: the broker cut the list at its limit; not every line is shown");
    }
}
