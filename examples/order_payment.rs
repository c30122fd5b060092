//! An order service paying an order: the order row goes into SQLite and the
//! "order paid" message to ringmq in one transaction (half message, local
//! commit, commit). The flow itself is in `support/order_payment_flow.rs`.
//!
//! ```sh
//! cargo run --example order_payment -- --db orders.db --order-id o-1 --crash-after-local-commit
//! cargo run --example order_payment -- --db orders.db --order-id o-1 --answer-checks-for-ms 30000
//! ```

#[path = "support/order_payment_flow.rs"]
mod flow;

use clap::Parser;
use flow::{Mode, Report, Settings};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "order_payment", about = "Pays an order in SQLite and announces it in a ringmq transaction")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9876")]
    broker: String,
    /// The order service's SQLite file.
    #[arg(long, default_value = "orders.db")]
    db: PathBuf,
    #[arg(long)]
    order_id: String,
    #[arg(long, default_value = "orders")]
    topic: String,
    /// Queues of the topic if this run creates it.
    #[arg(long, default_value_t = 4)]
    queues: u32,
    #[arg(long, default_value = "order-service")]
    producer_group: String,
    /// Exit right after the local SQLite commit, before END_TRANSACTION:
    /// the half stays pending until a check-back settles it.
    #[arg(long, conflicts_with = "answer_checks_for_ms")]
    crash_after_local_commit: bool,
    /// Send nothing: answer the broker's check-backs (from the SQLite file)
    /// until the order's transaction is settled, for at most N ms.
    #[arg(long)]
    answer_checks_for_ms: Option<u64>,
    #[arg(long, default_value = "warn")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let mode = match args.answer_checks_for_ms {
        Some(ms) => Mode::AnswerChecks { at_most: Duration::from_millis(ms) },
        None => Mode::Pay { crash_after_local_commit: args.crash_after_local_commit },
    };
    let settings = Settings {
        broker: args.broker,
        db: args.db,
        order_id: args.order_id,
        topic: args.topic,
        producer_group: args.producer_group,
        queues: args.queues,
        mode,
    };
    // Flushed line by line: `--crash-after-local-commit` exits without
    // unwinding, and its last lines must be out.
    let report: Report = Arc::new(|line| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    });
    match flow::run(&settings, report) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("order_payment: {error}");
            ExitCode::FAILURE
        }
    }
}
