//! The `kluis` command: parse the command line and dispatch to `cli/<command>.rs`.

#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.log_json);
    cli::run(&args).into()
}
