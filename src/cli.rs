//! The command line: one file per subcommand, clap derive, `///` as help text, exit codes that
//! separate *denied* from *error*.

/// `println!` for the command's output: when whoever reads it has gone (`kluis … | head`), the
/// command ends quietly with status 0 instead of panicking.
macro_rules! out {
    () => {
        $crate::cli::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))
    };
}

pub mod admin;
pub mod init;
pub mod policy;
pub mod restore;
pub mod serve;

use clap::{Parser, Subcommand};

/// Writes one line of output (see `out!`). A closed pipe ends the process with status 0; any
/// other failure to write ends it with status 1 and says why on stderr.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("kluis: cannot write the output: {e}");
        std::process::exit(1);
    }
}

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
