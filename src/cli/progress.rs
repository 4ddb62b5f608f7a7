//! Progress of a long job (rewrap, rekey, retention sweep, backup, restore) on stderr: a bar
//! redrawn in place on a terminal, plain lines now and then when stderr is a file or a pipe (a
//! log, CI). Never on stdout, which carries the command's result.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

/// How often a plain progress line is written when stderr is no terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Width of the bar, in characters.
const WIDTH: u64 = 30;

/// One job's progress display.
#[derive(Debug)]
pub struct Progress {
    what: String,
    terminal: bool,
    quiet: bool,
    last_plain: Option<Instant>,
    drawn: bool,
}

impl Progress {
    /// A display for `what` (e.g. `rewrap of nuisance`); `quiet` shows nothing (`--json`).
    pub fn new(what: impl Into<String>, quiet: bool) -> Self {
        Self {
            what: what.into(),
            terminal: std::io::stderr().is_terminal(),
            quiet,
            last_plain: None,
            drawn: false,
        }
    }

    /// Shows `done` of `total`, with `detail` after it (`12/40 subject keys`).
    pub fn update(&mut self, done: u64, total: u64, detail: std::fmt::Arguments<'_>) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let filled = (done.min(total) * WIDTH)
                .checked_div(total)
                .unwrap_or(WIDTH);
            let filled = usize::try_from(filled).unwrap_or(0);
            let _ = write!(
                err,
                "\r{}: [{}{}] {detail}\x1b[K",
                self.what,
                "#".repeat(filled),
                " ".repeat(usize::try_from(WIDTH).unwrap_or(0).saturating_sub(filled)),
            );
            let _ = err.flush();
            self.drawn = true;
        } else if self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
            let _ = writeln!(err, "{}: {detail}", self.what);
            self.last_plain = Some(Instant::now());
        }
    }

    /// Shows that the job runs, without a count (a job the server reports on only at its end).
    pub fn waiting(&mut self, elapsed: Duration) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(
                err,
                "\r{}: running on the server, {} s\x1b[K",
                self.what,
                elapsed.as_secs()
            );
            let _ = err.flush();
            self.drawn = true;
        } else if self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
            let _ = writeln!(
                err,
                "{}: running on the server, {} s",
                self.what,
                elapsed.as_secs()
            );
            self.last_plain = Some(Instant::now());
        }
    }

    /// Says which step of the job begins (a step without a count, such as a check): a line of
    /// its own, on a terminal below the bar drawn so far.
    pub fn step(&mut self, detail: std::fmt::Arguments<'_>) {
        if self.quiet {
            return;
        }
        self.finish();
        eprintln!("{}: {detail}", self.what);
    }

    /// Ends the display: the line a terminal bar was drawn on is closed.
    pub fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
