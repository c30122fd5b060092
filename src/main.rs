//! The `ringmq` binary: see `ringmq --help`.

fn main() -> std::process::ExitCode {
    ringmq::cli::main()
}
