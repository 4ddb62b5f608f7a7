//! The command line: one file per subcommand, clap derive, `///` as help text, exit codes that
//! separate *denied* from *error*.

pub mod admin;
pub mod init;
pub mod policy;
pub mod restore;
pub mod serve;

use clap::{Parser, Subcommand};

/// kluis: a vault for special-category personal data, served over gRPC.
#[derive(Debug, Parser)]
#[command(name = "kluis", version, about, long_about = None)]
pub struct Cli {
    /// Log as JSON lines (for log shippers) instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a store and its root key, and print the first security-officer token.
    Init(init::InitArgs),
    /// Run the gRPC server.
    Serve(serve::ServeArgs),
    /// Administer a running server: tokens, keys, the audit trail, retention, holds, backups.
    Admin(admin::AdminArgs),
    /// Check policies without a server.
    Policy(policy::PolicyArgs),
    /// Restore a backup (`kluis admin backup`) into a new data directory.
    Restore(restore::RestoreArgs),
}

/// Exit codes: scripts can tell a refusal from a failure.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Exit {
    /// Done.
    Success = 0,
    /// Something failed (I/O, server unreachable, bad configuration).
    Error = 1,
    /// The server refused: not authenticated or not permitted.
    Denied = 3,
    /// A check found a problem (invalid policy, wrong key).
    CheckFailed = 4,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// Runs the parsed command.
pub fn run(cli: &Cli) -> Exit {
    match &cli.command {
        Command::Init(args) => init::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Policy(args) => policy::run(args),
        Command::Restore(args) => restore::run(args),
    }
}

/// Sets up `tracing` on stderr; `KLUIS_LOG` (or `RUST_LOG`) sets the filter, `info` by default.
pub fn init_logging(json: bool) {
    use kluis::config::Env;
    let env = kluis::config::SystemEnv;
    let filter = env
        .var("KLUIS_LOG")
        .or_else(|| env.var("RUST_LOG"))
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Prints an error for a person, with what to do where known.
pub fn fail(message: impl std::fmt::Display) -> Exit {
    eprintln!("error: {message}");
    Exit::Error
}
