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
pub mod progress;
pub mod restore;
pub mod serve;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

/// Whether moments are shown in the local time zone (`--local`) rather than UTC.
static LOCAL_TIME: AtomicBool = AtomicBool::new(false);

/// `t` as an RFC 3339 date and time, as the CLI shows every moment: in UTC
/// (`2026-11-30T08:05:52Z`), or with `--local` in the system's time zone with its offset
/// (`2026-11-30T09:05:52+01:00`).
pub fn time(t: &prost_types::Timestamp) -> String {
    moment(t.seconds)
}

/// Unix seconds as `time` shows them.
pub fn moment(seconds: i64) -> String {
    if LOCAL_TIME.load(Ordering::Relaxed)
        && let Ok(t) = jiff::Timestamp::from_second(seconds)
    {
        return t
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string();
    }
    rfc3339(seconds)
}

/// Parses a moment the user typed: an RFC 3339 date and time (`2026-01-31T17:00:00Z`,
/// `2026-01-31T18:00:00+01:00`), a date (`2026-01-31`: its start) or a date and time without
/// an offset (both in UTC, or with `--local` in the local time zone), or unix seconds. `flag` names the option in the message.
pub fn parse_moment(flag: &str, s: &str) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "{flag} `{s}` is not a moment: give an RFC 3339 date and time such as \
             2026-01-31T17:00:00Z (or with an offset, +01:00), a date such as 2026-01-31, or \
             unix seconds"
        )
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().map_err(|_| bad());
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_second());
    }
    // A date, or a date and time without an offset: in UTC, or with `--local` local time.
    let date: jiff::civil::DateTime = s.parse().map_err(|_| bad())?;
    let zone = if LOCAL_TIME.load(Ordering::Relaxed) {
        jiff::tz::TimeZone::system()
    } else {
        jiff::tz::TimeZone::UTC
    };
    date.to_zoned(zone)
        .map(|z| z.timestamp().as_second())
        .map_err(|_| bad())
}

/// Parses a moment ahead: a duration from now (`90d`, `12h`) or a moment as `parse_moment`
/// takes it.
pub fn parse_moment_ahead(flag: &str, s: &str, now: i64) -> Result<i64, String> {
    if let Ok(d) = parse_duration(flag, s) {
        return i64::try_from(d)
            .ok()
            .and_then(|d| now.checked_add(d))
            .ok_or_else(|| format!("{flag} `{s}` lies too far ahead"));
    }
    parse_moment(flag, s).map_err(|e| format!("{e}, or a duration from now such as 90d"))
}

/// Parses a duration: a whole number and a unit, `w` (weeks), `d` (days), `h` (hours), `m`
/// (minutes) or `s` (seconds): `7d`, `12h`, `30m`, `90s`. `0` alone is zero. `flag` names the
/// option in the message.
pub fn parse_duration(flag: &str, s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(0);
    }
    [
        ('w', 7 * 86_400u64),
        ('d', 86_400),
        ('h', 3_600),
        ('m', 60),
        ('s', 1),
    ]
    .iter()
    .find_map(|&(unit, secs)| t.strip_suffix(unit).map(|n| (n, secs)))
    .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    .and_then(|(n, secs)| n.parse::<u64>().ok()?.checked_mul(secs))
    .ok_or_else(|| {
        format!(
            "{flag} `{s}` is not a duration: give a number and a unit, such as 7d, 12h, 30m or 90s"
        )
    })
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

    /// Show moments in the local time zone (with its offset) instead of UTC; a date given
    /// without a time then means the start of that day in the local time zone.
    #[arg(long, global = true)]
    pub local: bool,

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

/// Exit codes: scripts can tell a refusal from a failure. The README lists them.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Exit {
    /// Done.
    Success = 0,
    /// Something failed (I/O, server unreachable, bad configuration).
    Error = 1,
    /// The command line is wrong: an unknown option, a missing value, a value that does not
    /// parse (clap's own errors exit 2 too).
    Usage = 2,
    /// The server refused: not authenticated or not permitted.
    Denied = 3,
    /// A check found a problem (invalid policy, wrong key, a broken trail, an overdue request).
    CheckFailed = 4,
    /// `kluis policy explain` decided deny, locally, without a server.
    PolicyDeny = 5,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// Runs the parsed command.
pub fn run(cli: &Cli) -> Exit {
    LOCAL_TIME.store(cli.local, Ordering::Relaxed);
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
/// Colours only on a terminal: a log file or a pipe gets plain text.
pub fn init_logging(json: bool) {
    use kluis::config::Env;
    use std::io::IsTerminal;
    let env = kluis::config::SystemEnv;
    let filter = env
        .var("KLUIS_LOG")
        .or_else(|| env.var("RUST_LOG"))
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.fmt_fields(escaped_fields()).init();
    }
}

/// The text log's fields, each as `name=value` (the message bare), with line breaks and every
/// other control character escaped: a value that came from outside (a name stored in the
/// database, a peer's input quoted in an error) cannot begin a line of its own and pass for
/// another entry, nor drive a terminal. (The JSON log escapes them as JSON does.)
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let raw = format!("{value:?}");
        let text = kluis::escape::controls(&raw);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// Prints an error for a person, with what to do where known.
pub fn fail(message: impl std::fmt::Display) -> Exit {
    // A message may quote what came from outside (a name stored in the database): on one line.
    eprintln!("error: {}", kluis::escape::controls(&message.to_string()));
    Exit::Error
}

/// Prints why a store or node did not open: a wrong root key, a store behind its head file or
/// older than its trail, or store files not as kluis keeps them (a check failed: exit 4);
/// anything else is an error (exit 1).
pub fn open_failed(e: kluis::config::OpenError) -> Exit {
    use kluis::{config::OpenError, keys::KeyError, store::StoreError, vault::VaultError};
    if matches!(
        e,
        OpenError::Key(KeyError::WrongRootKey)
            | OpenError::Vault(VaultError::Rollback(_))
            | OpenError::Store {
                source: StoreError::RolledBack(_) | StoreError::Refused(_),
                ..
            }
    ) {
        eprintln!("error: {}", kluis::escape::controls(&e.to_string()));
        Exit::CheckFailed
    } else {
        fail(e)
    }
}

/// Request fields as the server names them in its messages, and the options a user of the
/// command typed them as.
const FIELD_FLAGS: &[(&str, &str)] = &[
    ("scope_subject_id", "--subject"),
    ("subject_id", "--subject"),
    ("principal_id", "--principal"),
    ("representative_id", "--representative"),
    ("roles", "--role"),
    ("purposes", "--purpose"),
    ("categories", "--category"),
    ("ttl_seconds", "--ttl"),
    ("wait_seconds", "--wait"),
    ("valid_until", "--until"),
    ("received_at", "--received"),
    ("since", "--since"),
    ("after_seq", "--since"),
    ("last", "--lines"),
    ("record_id", "--record"),
    ("case_ref", "--case-ref"),
    ("reason", "--reason"),
    ("justification", "--justification"),
    ("note", "--note"),
    ("kind", "--kind"),
    ("state", "--state"),
    ("purpose", "--purpose"),
    ("algorithm", "--algorithm"),
    ("version", "--version"),
    ("expect_head", "--expect-head"),
    ("context.purpose", "--purpose"),
    ("context.case_ref", "--case-ref"),
    ("context.justification", "--justification"),
    ("context.channel", "--channel"),
    ("scope", "--scope"),
    ("months", "--by"),
    ("days", "--by"),
];

/// `message` with the request fields it names in backticks (`` `scope_subject_id` ``,
/// `` `roles[0]` ``, `` `expect_head.hash` ``) replaced by the options the user typed
/// (`` `--subject` ``, `` `--role` ``, `` `--expect-head` ``). Other text is left alone.
pub fn with_flags(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('`') {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        let after = after.get(1..).unwrap_or_default();
        let Some(close) = after.find('`') else {
            out.push('`');
            rest = after;
            break;
        };
        let (name, tail) = after.split_at(close);
        let base = name.split('[').next().unwrap_or(name);
        let flag = FIELD_FLAGS
            .iter()
            .find(|(field, _)| *field == base)
            .or_else(|| {
                // `expect_head.hash`: the option that carries the whole message.
                let parent = base.split('.').next().unwrap_or(base);
                FIELD_FLAGS
                    .iter()
                    .find(|(field, _)| *field == parent && base.contains('.'))
            })
            .map(|(_, flag)| *flag);
        out.push('`');
        out.push_str(flag.unwrap_or(name));
        out.push('`');
        rest = tail.get(1..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// Prints an error in what the user typed (a value that does not parse), exit code 2.
pub fn usage(message: impl std::fmt::Display) -> Exit {
    eprintln!("error: {}", kluis::escape::controls(&message.to_string()));
    Exit::Usage
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

    #[test]
    fn moments_parse_from_rfc3339_dates_and_unix_seconds() {
        let p = |s| parse_moment("--until", s);
        assert_eq!(p("2026-11-28T00:00:00Z"), Ok(1_795_824_000));
        assert_eq!(p("2026-11-28T01:00:00+01:00"), Ok(1_795_824_000));
        assert_eq!(p("2026-11-28"), Ok(1_795_824_000));
        assert_eq!(p("1970-01-01"), Ok(0));
        assert_eq!(p("1795824000"), Ok(1_795_824_000));
        assert_eq!(p("2026-11-28T00:00:00"), Ok(1_795_824_000));
        for bad in ["2026-13-01", "yesterday", "", "2026-11-28T25:00:00Z", "-5"] {
            let e = p(bad).unwrap_err();
            assert!(e.starts_with("--until `") && e.contains("RFC 3339"), "{e}");
        }
    }

    #[test]
    fn server_messages_name_the_options_typed() {
        assert_eq!(
            with_flags("`scope_subject_id`: spaces are not allowed"),
            "`--subject`: spaces are not allowed"
        );
        assert_eq!(
            with_flags("`roles[0]`: unknown role `nurse`"),
            "`--role`: unknown role `nurse`"
        );
        assert_eq!(
            with_flags("`expect_head.hash`: expected 64 hexadecimal digits"),
            "`--expect-head`: expected 64 hexadecimal digits"
        );
        assert_eq!(with_flags("no fields here"), "no fields here");
        assert_eq!(with_flags("an odd ` quote"), "an odd ` quote");
    }

    #[test]
    fn a_moment_ahead_may_be_a_duration_from_now() {
        assert_eq!(
            parse_moment_ahead("--until", "90d", 1_000),
            Ok(1_000 + 90 * 86_400)
        );
        assert_eq!(
            parse_moment_ahead("--until", "2026-11-28", 1_000),
            Ok(1_795_824_000)
        );
        let e = parse_moment_ahead("--until", "soon", 1_000).unwrap_err();
        assert!(e.contains("90d") && e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn durations_take_weeks_days_hours_minutes_and_seconds() {
        let d = |s| parse_duration("--ttl", s);
        assert_eq!(d("7d"), Ok(7 * 86_400));
        assert_eq!(d("12h"), Ok(43_200));
        assert_eq!(d("30m"), Ok(1_800));
        assert_eq!(d("90s"), Ok(90));
        assert_eq!(d("2w"), Ok(14 * 86_400));
        assert_eq!(d("0"), Ok(0));
        for bad in [
            "7",
            "d",
            "1.5d",
            "-1d",
            "7 days",
            "",
            "99999999999999999999d",
        ] {
            let e = d(bad).unwrap_err();
            assert!(
                e.starts_with("--ttl `") && e.contains("7d, 12h, 30m or 90s"),
                "{e}"
            );
        }
    }
}
