//! Where the CPU time of a case goes, read from `/proc` before and after it (Linux; elsewhere
//! there are no figures). Five consumers:
//!
//! - the load generator: this process's main thread and its runtime's threads (named
//!   [`LOAD_THREADS`]);
//! - kluis: every other thread of this process (the servers' runtime, its blocking threads, the
//!   audit writer), counted as the process's total minus the load generator, so that threads
//!   that ended during the case still count;
//! - pgbench: the child processes this process waited for during the case;
//! - PostgreSQL: the postmaster, its live backends and the backends it reaped during the case;
//! - the machine: every core's busy time (`/proc/stat`), which shows what the other users of a
//!   shared machine took; and of it, the time the machine's host gave to others while this
//!   machine had work (steal), which slows every figure of the case alike.
//!
//! Clock ticks are 10 ms on Linux: over a case of a second or more that is a few percent of one
//! core.

use std::{sync::OnceLock, time::Instant};

/// The name of the load generator's runtime threads.
pub const LOAD_THREADS: &str = "load-client";

/// CPU time used up to a moment, in clock ticks.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    at: Instant,
    process: u64,
    load: u64,
    children: u64,
    postgres: u64,
    machine: u64,
    steal: u64,
}

/// CPU seconds each consumer used over one or more intervals, and how long these were.
#[derive(Clone, Copy, Debug, Default)]
pub struct Split {
    /// Wall-clock seconds.
    pub seconds: f64,
    /// kluis: this process but the load generator.
    pub kluis: f64,
    /// The load generator's threads.
    pub load: f64,
    /// PostgreSQL's processes.
    pub postgres: f64,
    /// Waited-for children: pgbench.
    pub pgbench: f64,
    /// Every core of the machine, whoever used it.
    pub machine: f64,
    /// Of `machine`, the time a virtual machine's host took its cores away (steal).
    pub steal: f64,
}

impl Split {
    /// The CPU used between `before` and `after`.
    pub fn between(before: &Sample, after: &Sample) -> Self {
        let s = |a: u64, b: u64| a.saturating_sub(b) as f64 / ticks_per_second();
        let process = s(after.process, before.process);
        let load = s(after.load, before.load);
        Self {
            seconds: after.at.duration_since(before.at).as_secs_f64(),
            kluis: (process - load).max(0.0),
            load,
            postgres: s(after.postgres, before.postgres),
            pgbench: s(after.children, before.children),
            machine: s(after.machine, before.machine),
            steal: s(after.steal, before.steal),
        }
    }

    /// Adds `other`'s intervals to these.
    pub fn add(&mut self, other: &Self) {
        self.seconds += other.seconds;
        self.kluis += other.kluis;
        self.load += other.load;
        self.postgres += other.postgres;
        self.pgbench += other.pgbench;
        self.machine += other.machine;
        self.steal += other.steal;
    }

    /// Average cores busy: CPU seconds over wall-clock seconds.
    pub fn cores(&self, cpu_seconds: f64) -> f64 {
        if self.seconds > 0.0 {
            cpu_seconds / self.seconds
        } else {
            0.0
        }
    }

    /// The figures as JSON, with the CPU per request of `requests` requests.
    pub fn json(&self, requests: usize) -> serde_json::Value {
        let per = |cpu: f64| {
            if requests > 0 {
                cpu * 1e6 / requests as f64
            } else {
                0.0
            }
        };
        serde_json::json!({
            "seconds": self.seconds,
            "kluis_cores": self.cores(self.kluis),
            "load_generator_cores": self.cores(self.load),
            "postgres_cores": self.cores(self.postgres),
            "pgbench_cores": self.cores(self.pgbench),
            "machine_cores": self.cores(self.machine),
            "steal_cores": self.cores(self.steal),
            "kluis_us_per_request": per(self.kluis),
            "postgres_us_per_request": per(self.postgres),
            "pgbench_us_per_request": per(self.pgbench),
        })
    }
}

/// The CPU time used so far; `postmaster` is the PostgreSQL server's process id, if one runs.
/// `None` where `/proc` cannot be read.
pub fn sample(postmaster: Option<u32>) -> Option<Sample> {
    // Asked here, so that `getconf` is not a child waited for during a case.
    ticks_per_second();
    let at = Instant::now();
    let own = times(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let pid = std::process::id();
    let mut load = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let main = task.file_name().to_str() == Some(pid.to_string().as_str());
        if (main || comm(&text) == Some(LOAD_THREADS))
            && let Some(t) = times(&text)
        {
            load += t.own;
        }
    }
    let postgres = postmaster.map_or(0, postgres_ticks);
    let (machine, steal) = machine_busy()?;
    Some(Sample {
        at,
        process: own.own,
        load,
        children: own.reaped,
        postgres,
        machine,
        steal,
    })
}

/// The times of one `/proc/<pid>/stat` line.
struct Times {
    ppid: u32,
    /// utime + stime.
    own: u64,
    /// cutime + cstime: the children waited for.
    reaped: u64,
}

/// Parses a `stat` line: `pid (comm) state ppid … utime stime cutime cstime …` (proc(5)); the
/// command name may hold spaces and parentheses, so fields are counted from the last `)`.
fn times(text: &str) -> Option<Times> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3 of proc(5), so field n is at n - 3.
    let n = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
    Some(Times {
        ppid: u32::try_from(n(4)?).ok()?,
        own: n(14)? + n(15)?,
        reaped: n(16)? + n(17)?,
    })
}

fn comm(text: &str) -> Option<&str> {
    text.get(text.find('(')? + 1..text.rfind(')')?)
}

/// The postmaster's own and reaped time, plus that of its live children.
fn postgres_ticks(postmaster: u32) -> u64 {
    let Some(pm) = std::fs::read_to_string(format!("/proc/{postmaster}/stat"))
        .ok()
        .and_then(|t| times(&t))
    else {
        return 0;
    };
    let mut ticks = pm.own + pm.reaped;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == postmaster {
            continue;
        }
        if let Some(t) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|t| times(&t))
            && t.ppid == postmaster
        {
            ticks += t.own + t.reaped;
        }
    }
    ticks
}

/// Busy ticks of all cores together (user, nice, system, irq, softirq and steal of
/// `/proc/stat`), and the steal alone.
fn machine_busy() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    Some((busy, v.get(7).copied().unwrap_or(0)))
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf`; 100 (Linux's value) when that fails.
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}
