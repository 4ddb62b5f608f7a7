//! A throwaway PostgreSQL cluster for the tests: `initdb` into a temporary directory (as the
//! `postgres` user when the tests run as root), listening only on a Unix socket in that
//! directory. One cluster per test process; each test takes a database of its own.
//!
//! Where no PostgreSQL binaries exist the tests that need one are skipped with a loud note;
//! with `KLUIS_REQUIRE_POSTGRES=1` (which `.ci/run` sets) that is a failure instead.
//!
//! The cluster goes away with the test process: a watchdog shell holds a pipe from this
//! process, and when the pipe closes it stops the server and removes the directory.

#![allow(dead_code, reason = "each test binary uses part of the helper")]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// A running cluster.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    /// The watchdog's stdin: the cluster lives as long as this end is open.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    next_db: AtomicU32,
    as_postgres: bool,
    /// Server settings added at start (`-c name=value …`), e.g. TLS on a TCP port.
    settings: Mutex<String>,
    /// The port, which also names the Unix socket.
    port: Mutex<u16>,
}

/// The shared cluster of this test process, or `None` (with a loud note) where PostgreSQL is
/// not installed and not required.
pub fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| Cluster::start_new("shared"))
        .as_ref()
}

/// A cluster of its own, for a test that stops and starts the server.
pub fn private_cluster(name: &str) -> Option<Cluster> {
    Cluster::start_new(name)
}

#[expect(
    clippy::disallowed_methods,
    reason = "test setup reads the CI switch from the environment"
)]
fn required() -> bool {
    std::env::var_os("KLUIS_REQUIRE_POSTGRES").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Where the server binaries are: Debian's versioned directory (newest first), else `PATH`.
#[expect(
    clippy::disallowed_methods,
    reason = "test setup looks for the server binaries on PATH"
)]
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file() && p.join("pg_ctl").is_file())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(bin) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Cluster {
    fn start_new(name: &str) -> Option<Cluster> {
        let Some(bin) = find_bin() else {
            let note = "PostgreSQL server binaries (initdb, pg_ctl) not found: the PostgreSQL \
                        tests are SKIPPED. Install Debian's `postgresql` package to run them.";
            assert!(!required(), "KLUIS_REQUIRE_POSTGRES is set: {note}");
            eprintln!("\n!!! {note}\n");
            return None;
        };
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "kluis-pg-{name}-{}-{:08x}",
            std::process::id(),
            rand_u32()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        }
        let data = dir.join("data");
        let cluster = Cluster {
            bin,
            dir,
            data,
            watchdog: Mutex::new(None),
            next_db: AtomicU32::new(0),
            as_postgres,
            settings: Mutex::new(String::new()),
            port: Mutex::new(5432),
        };
        run(&mut cluster.command(
            "initdb",
            &[
                "--no-sync",
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-instructions",
                "-D",
            ],
            &[&cluster.data],
        ));
        cluster.arm_watchdog();
        cluster.start();
        Some(cluster)
    }

    /// A command of the server's tools, run as the `postgres` user when the tests are root.
    fn command(&self, tool: &str, args: &[&str], paths: &[&Path]) -> Command {
        let program = self.bin.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        c.args(args).args(paths);
        c.stdin(Stdio::null());
        c
    }

    fn arm_watchdog(&self) {
        let script = format!(
            "read _ignored; '{}' stop -D '{}' -m immediate >/dev/null 2>&1; rm -rf '{}'",
            self.bin.join("pg_ctl").display(),
            self.data.display(),
            self.dir.display()
        );
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        *self.watchdog.lock().unwrap() = Some((child, stdin));
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start(&self) {
        blocking(|| self.start_blocking());
    }

    fn start_blocking(&self) {
        let settings = self.settings.lock().unwrap().clone();
        let options = format!(
            "-k {} -c fsync=off -c full_page_writes=off -c max_connections=400 \
             -c shared_buffers=64MB {}",
            self.dir.display(),
            if settings.is_empty() {
                "-c listen_addresses=''".to_owned()
            } else {
                settings
            }
        );
        run(&mut self.command(
            "pg_ctl",
            &["start", "-w", "-t", "60", "-o", &options, "-l"],
            &[&self.dir.join("log"), Path::new("-D"), &self.data],
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while postgres::Client::connect(&self.admin_url(), postgres::NoTls).is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts the server listening on 127.0.0.1:`port` too, with TLS (when `tls`) from the
    /// PEM files `cert` and `key`, which are copied into the cluster's directory.
    pub fn listen_tcp(&self, port: u16, tls: Option<(&Path, &Path)>) {
        blocking(|| {
            self.stop_blocking();
            let mut settings = format!("-c listen_addresses=127.0.0.1 -c port={port}");
            if let Some((cert, key)) = tls {
                let (c, k) = (self.dir.join("server.crt"), self.dir.join("server.key"));
                std::fs::copy(cert, &c).unwrap();
                std::fs::copy(key, &k).unwrap();
                if self.as_postgres {
                    run(Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(&c)
                        .arg(&k));
                }
                run(Command::new("chmod").arg("600").arg(&k));
                settings.push_str(&format!(
                    " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                    c.display(),
                    k.display()
                ));
            }
            *self.settings.lock().unwrap() = settings;
            *self.port.lock().unwrap() = port;
            self.start_blocking();
        });
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        blocking(|| self.stop_blocking());
    }

    fn stop_blocking(&self) {
        run(&mut self.command("pg_ctl", &["stop", "-w", "-m", "fast", "-D"], &[&self.data]));
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// A connection string for `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={database}",
            self.dir.display(),
            self.port.lock().unwrap()
        )
    }

    fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// A new, empty database; its connection string.
    pub fn database(&self) -> String {
        blocking(|| self.create_database())
    }

    fn create_database(&self) -> String {
        let name = format!("kluis_{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        let mut admin = postgres::Client::connect(&self.admin_url(), postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        self.url(&name)
    }

    /// Runs `pg_dump` of `url` in the custom format into `file`.
    pub fn dump(&self, database: &str, file: &Path) {
        let out = self
            .command("pg_dump", &["--format=custom", "-h"], &[&self.dir])
            .args(["-U", "postgres", "-d", database])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(file, out.stdout).unwrap();
    }

    /// Restores a dump made by `dump` into the new database `database`.
    pub fn restore(&self, database: &str, file: &Path) {
        blocking(|| self.restore_blocking(database, file));
    }

    fn restore_blocking(&self, database: &str, file: &Path) {
        let mut admin = postgres::Client::connect(&self.admin_url(), postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .unwrap();
        let mut child = self
            .command(
                "pg_restore",
                &["--no-owner", "--exit-on-error", "-h"],
                &[&self.dir],
            )
            .args(["-U", "postgres", "-d", database])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&std::fs::read(file).unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "pg_restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Closing the watchdog's pipe stops the server and removes the directory.
        if let Some((mut child, stdin)) = self.watchdog.lock().unwrap().take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

fn run(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f`, which blocks, outside an async runtime's scheduler when called on one.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn rand_u32() -> u32 {
    rand::random()
}
