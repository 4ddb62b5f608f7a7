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
pub mod operator;
pub mod policy;
pub mod restore;
pub mod serve;

use clap::{Parser, Subcommand};

/// `t` as an RFC 3339 date and time in UTC (`2026-11-30T08:05:52Z`), as the CLI shows every
/// moment.
pub fn time(t: &prost_types::Timestamp) -> String {
    rfc3339(t.seconds)
}

/// Unix seconds as an RFC 3339 date and time in UTC; out of range (before year 0 or after 9999)
/// as the plain number.
pub fn rfc3339(seconds: i64) -> String {
    // Days from the civil date: Howard Hinnant's `civil_from_days`.
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return seconds.to_string();
    }
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

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
    /// Custody of the root key: unseal a server with shares, see whether it is sealed, make a
    /// new set of shares. No token: a quorum of shares is the authority.
    Operator(operator::OperatorArgs),
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
        Command::Operator(args) => operator::run(args),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_show_as_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(1_795_824_000), "2026-11-28T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        // Out of the four-digit years: the number itself, never a wrong date.
        assert_eq!(rfc3339(253_402_300_800), "253402300800");
        assert_eq!(rfc3339(i64::MIN), i64::MIN.to_string());
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
    }
}
