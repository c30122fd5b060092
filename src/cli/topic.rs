//! `ringmq topic create|list`.

use crate::client::Client;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic (an existing one is left as it is).
    Create {
        name: String,
        #[arg(long, default_value_t = 8)]
        queues: u32,
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
    },
    /// List the topics.
    List {
        #[arg(long, default_value = super::BROKER_DEFAULT)]
        broker: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: TopicCommand) -> Result<ExitCode, String> {
    match command {
        TopicCommand::Create { name, queues, broker } => {
            let client = Client::connect(&broker).map_err(|error| error.to_string())?;
            let (topic, created) = client.create_topic(&name, queues).map_err(|error| error.to_string())?;
            let verb = if created { "created" } else { "exists:" };
            println!("{verb} {} with {} queues", topic.name, topic.queue_shards.len());
        }
        TopicCommand::List { broker, json } => {
            let client = Client::connect(&broker).map_err(|error| error.to_string())?;
            for topic in client.list_topics().map_err(|error| error.to_string())? {
                if json {
                    let line = serde_json::json!({"name": topic.name, "queues": topic.queue_shards.len(), "queue_shards": topic.queue_shards});
                    println!("{line}");
                } else {
                    println!("{}\t{} queues", topic.name, topic.queue_shards.len());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
