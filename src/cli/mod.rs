//! The `ringmq` command line: `serve`, `topic`, `produce`, `consume`, `tx`, `dlq`, `repair`, `doctor`,
//! and the operators' `status`, `group`, `offset`, `message`. The
//! JSON lines `produce` and `consume` print are a contract scripts rely on.

mod consume;
mod dlq;
mod doctor;
mod group;
mod message;
mod offset;
mod produce;
mod promote;
mod repair;
mod serve;
mod standby;
mod status;
mod table;
mod topic;
mod tx;

use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::process::ExitCode;

pub const BROKER_DEFAULT: &str = "127.0.0.1:9876";

#[derive(Parser, Debug)]
#[command(name = "ringmq", version, about = "A message broker that never loses an acknowledged message")]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    /// Log lines as text (for people) or json (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    // Boxed: its many flags make it far larger than the other commands.
    /// Run the broker.
    Serve(Box<serve::ServeArgs>),
    /// Create or list topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Send one message per stdin line; print one JSON line per acknowledgement.
    Produce(produce::ProduceArgs),
    /// Receive messages as a member of a group; print one JSON line each.
    Consume(consume::ConsumeArgs),
    /// List transactions, or end one by hand.
    #[command(subcommand)]
    Tx(tx::TxCommand),
    /// A group's dead letters: list them, or put them back on their topic.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Repair damaged commit logs of a stopped broker; one JSON line per range.
    Repair(repair::RepairArgs),
    /// Check that this host can run the broker: one line per check, ok or what to do.
    Doctor(doctor::DoctorArgs),
    /// One line per shard: health, log, disk and connections.
    Status(status::StatusArgs),
    /// Turn a standby into the primary of a new epoch (failover).
    Promote(promote::PromoteArgs),
    /// A standby's logs: set them aside for a full copy (`resync`).
    #[command(subcommand)]
    Standby(standby::StandbyCommand),
    /// Consumer groups: list them, describe one's offsets and lag, reset its offsets.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// The first offset of a queue stored at or after a time.
    Offset(offset::OffsetArgs),
    /// Find a message by id.
    #[command(subcommand)]
    Message(message::MessageCommand),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout carries the JSON lines. Colours only for a
    // person at a terminal: in a file or a journal the escapes are noise
    // that breaks grep and log shippers.
    let colours = format == LogFormat::Text && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A command whose output goes into a pipe that closed (`ringmq status |
/// head -1`) ends quietly, as other Unix tools do, instead of panicking in
/// `println!`. Not the broker: it writes no stdout, and a signal must not
/// end it. Sockets are unaffected (the standard library sends with
/// MSG_NOSIGNAL).
fn end_quietly_on_a_closed_stdout() {
    // SAFETY: `signal` with SIG_DFL installs no handler (no code runs in
    // signal context); it is called once, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    if !matches!(cli.command, Command::Serve(_)) {
        end_quietly_on_a_closed_stdout();
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Topic(command) => topic::run(command),
        Command::Produce(args) => produce::run(args),
        Command::Consume(args) => consume::run(args),
        Command::Tx(command) => tx::run(command),
        Command::Dlq(command) => dlq::run(command),
        Command::Repair(args) => repair::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Status(args) => status::run(args),
        Command::Promote(args) => promote::run(args),
        Command::Standby(command) => standby::run(command),
        Command::Group(command) => group::run(command),
        Command::Offset(args) => offset::run(args),
        Command::Message(command) => message::run(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ringmq: {error}");
            ExitCode::FAILURE
        }
    }
}
