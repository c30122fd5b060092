//! The `ringmq` binary: see `ringmq --help`.

/// glibc's allocator, except for glommio's I/O memory, which it backs with
/// huge pages (`ringmq::storage::io_memory`).
#[global_allocator]
static ALLOCATOR: ringmq::storage::io_memory::IoMemoryAllocator = ringmq::storage::io_memory::IoMemoryAllocator;

fn main() -> std::process::ExitCode {
    ringmq::cli::main()
}
