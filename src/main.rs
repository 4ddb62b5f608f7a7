//! The `kluis` command: parse the command line and dispatch to `cli/<command>.rs`.

#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

/// kluis's allocator: many threads allocate and free small buffers per call, which glibc's
/// malloc serves with locks and consolidation that cost more than the call's own work.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.log_json);
    cli::run(&args).into()
}
