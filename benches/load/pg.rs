//! The PostgreSQL + pgcrypto baseline: what a team would build instead of a vault. A throwaway
//! cluster in a temporary directory (unix socket only, default durability: `fsync` and
//! `synchronous_commit` on), a table of records with five `pgp_sym_encrypt`ed fields, and
//! `pgbench` driving the same reads and writes from the same number of clients.
//!
//! Two variants: pgcrypto's defaults (iterated, salted key stretching on every value: what one
//! gets by following the manual) and key stretching off (`s2k-mode=1`, the fair variant). Both
//! use AES-256, as kluis does.
//!
//! The same cluster also holds kluis's own database when kluis runs on PostgreSQL
//! (`--store postgres`): see [`Pg::database`].

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The cipher options of a variant.
#[derive(Clone, Copy, Debug, Eq, Ord, PartialEq, PartialOrd)]
pub enum Variant {
    /// pgcrypto's default key stretching.
    Stretched,
    /// Key stretching off.
    Fast,
}

impl Variant {
    pub fn table(self) -> &'static str {
        match self {
            Variant::Stretched => "rec_s2k",
            Variant::Fast => "rec_fast",
        }
    }

    pub fn options(self) -> &'static str {
        match self {
            Variant::Stretched => "cipher-algo=aes256",
            Variant::Fast => "cipher-algo=aes256, s2k-mode=1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Stretched => "pgcrypto",
            Variant::Fast => "pgcrypto-fast",
        }
    }
}

/// A running throwaway cluster.
pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    server: Child,
    /// Rows per table to read from.
    pub rows: usize,
    /// The PostgreSQL version, as `postgres --version` prints it.
    pub version: String,
    logs: usize,
}

const PORT: &str = "54329";
const KEY: &str = "kluis-bench-passphrase";

/// The tools the baseline runs, all from one installation.
const TOOLS: [&str; 6] = [
    "initdb",
    "pg_ctl",
    "postgres",
    "pg_isready",
    "psql",
    "pgbench",
];

/// Where the server binaries are: on PATH (following a symbolic link to the installation it
/// belongs to), or in Debian's versioned folder (newest first).
fn find_bin() -> Option<PathBuf> {
    let complete = |dir: &Path| TOOLS.iter().all(|t| dir.join(t).is_file());
    #[expect(
        clippy::disallowed_methods,
        reason = "a benchmark looks for a program on PATH, as a shell would"
    )]
    let path = std::env::var("PATH");
    if let Ok(path) = path {
        for dir in std::env::split_paths(&path) {
            let Ok(initdb) = std::fs::canonicalize(dir.join("initdb")) else {
                continue;
            };
            if let Some(bin) = initdb.parent().filter(|b| complete(b)) {
                return Some(bin.to_owned());
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            complete(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// The uid and gid of the `postgres` system user, when running as root (initdb and postgres
/// refuse to run as root).
fn postgres_user() -> Result<Option<(u32, u32)>, String> {
    let id = |args: &[&str]| -> Result<u32, String> {
        let out = Command::new("id")
            .args(args)
            .output()
            .map_err(|e| format!("id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                "running as root and there is no `postgres` user to run the server as".into()
            })
    };
    if id(&["-u"])? != 0 {
        return Ok(None);
    }
    Ok(Some((id(&["-u", "postgres"])?, id(&["-g", "postgres"])?)))
}

fn command(bin: &Path, name: &str, user: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(bin.join(name));
    if let Some((uid, gid)) = user {
        c.uid(uid).gid(gid);
    }
    c
}

fn run(mut c: Command, what: &str) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Pg {
    /// Starts a cluster and loads `rows` records for each of `variants` with `values` as their
    /// five field values. `Err` says why the baseline is skipped.
    /// With `statements`, the server counts every statement (`pg_stat_statements`, see
    /// [`Pg::statements`]).
    pub fn start(
        rows: usize,
        values: &[String; 5],
        variants: &[Variant],
        statements: bool,
    ) -> Result<Self, String> {
        let bin = find_bin().ok_or(
            "no PostgreSQL installation (initdb, pg_ctl, postgres, pg_isready, psql, pgbench) on PATH or in /usr/lib/postgresql/*/bin",
        )?;
        let user = postgres_user()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("chown of the cluster directory: {e}"))?;
        }
        let data = dir.path().join("data");
        let mut initdb = command(&bin, "initdb", user);
        initdb.arg("-D").arg(&data).args([
            "-U",
            "kluis",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(initdb, "initdb")?;
        let mut version = command(&bin, "postgres", user);
        version.arg("--version");
        let version = run(version, "postgres --version")?.trim().to_owned();
        let mut postgres = command(&bin, "postgres", user);
        postgres
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args([
                "-p",
                PORT,
                "-c",
                "listen_addresses=",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
            ])
            .args(if statements {
                &[
                    "-c",
                    "shared_preload_libraries=pg_stat_statements",
                    "-c",
                    "pg_stat_statements.track=all",
                    "-c",
                    "pg_stat_statements.track_planning=on",
                ][..]
            } else {
                &[][..]
            })
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("server.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            );
        let server = postgres
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        let pg = Self {
            dir,
            bin,
            server,
            rows,
            version,
            logs: 0,
        };
        let start = Instant::now();
        loop {
            let mut ready = command(&pg.bin, "pg_isready", None);
            ready.arg("-h").arg(pg.dir.path()).args(["-p", PORT, "-q"]);
            if ready.status().is_ok_and(|s| s.success()) {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let log =
                    std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default();
                return Err(format!(
                    "PostgreSQL did not become ready within 30 s: {}",
                    log.trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let v: Vec<String> = values.iter().map(|v| quote(v)).collect();
        let mut sql = String::from("CREATE EXTENSION pgcrypto;\n");
        for &variant in variants {
            let t = variant.table();
            let o = quote(variant.options());
            let k = quote(KEY);
            sql.push_str(&format!(
                "CREATE TABLE {t} (id integer PRIMARY KEY, subject text NOT NULL, \
                 f1 bytea, f2 bytea, f3 bytea, f4 bytea, f5 bytea);\n\
                 INSERT INTO {t} SELECT i, 'REL-' || i, \
                 pgp_sym_encrypt({v0} || i, {k}, {o}), pgp_sym_encrypt({v1}, {k}, {o}), \
                 pgp_sym_encrypt({v2}, {k}, {o}), pgp_sym_encrypt({v3}, {k}, {o}), \
                 pgp_sym_encrypt({v4}, {k}, {o}) FROM generate_series(1, {rows}) AS i;\n\
                 CREATE TABLE {t}_w (id bigserial PRIMARY KEY, subject text NOT NULL, \
                 f1 bytea, f2 bytea, f3 bytea, f4 bytea, f5 bytea);\n",
                v0 = v[0],
                v1 = v[1],
                v2 = v[2],
                v3 = v[3],
                v4 = v[4],
            ));
        }
        pg.psql(&sql)?;
        pg.psql("VACUUM ANALYZE")?;
        Ok(pg)
    }

    /// Creates the database `name` on this cluster; returns its connection string (over the
    /// cluster's Unix socket, as the superuser the baseline uses).
    pub fn database(&self, name: &str) -> Result<String, String> {
        self.psql(&format!("CREATE DATABASE {name}"))?;
        Ok(format!(
            "host={} port={PORT} user=kluis dbname={name}",
            self.dir.path().display()
        ))
    }

    /// The process id of the server (the postmaster; backends are its children).
    pub fn postmaster(&self) -> u32 {
        self.server.id()
    }

    /// Vacuums and analyses the database `name` after a bulk load, as the baseline's tables
    /// are, so that both sides are planned with statistics of what they hold.
    pub fn analyze(&self, name: &str) -> Result<(), String> {
        self.psql_on(name, "VACUUM ANALYZE").map(drop)
    }

    /// Forgets the statements counted so far in every database (`--pg-statements`).
    pub fn reset_statements(&self, database: &str) -> Result<(), String> {
        self.psql_on(
            database,
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()",
        )
        .map(drop)
    }

    /// The statements run on `database` since the last reset, most time first: calls, calls
    /// per `per` requests, mean and total time, how often it was planned and the mean time of
    /// a planning, rows and the statement's first characters.
    pub fn statements(&self, database: &str, per: usize) -> Result<String, String> {
        self.psql_on(
            database,
            &format!(
                "SELECT calls, round(calls::numeric / {per}, 2) AS per_request, \
                 round(mean_exec_time::numeric * 1000) AS mean_us, \
                 round(total_exec_time::numeric) AS total_ms, \
                 plans, round(mean_plan_time::numeric * 1000) AS plan_us, rows, \
                 left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS statement \
                 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname = '{database}' ORDER BY total_exec_time + total_plan_time DESC LIMIT 25",
                per = per.max(1)
            ),
        )
    }

    fn psql(&self, sql: &str) -> Result<String, String> {
        self.psql_on("postgres", sql)
    }

    fn psql_on(&self, database: &str, sql: &str) -> Result<String, String> {
        let mut c = command(&self.bin, "psql", None);
        c.arg("-h")
            .arg(self.dir.path())
            .args(["-p", PORT, "-U", "kluis", "-d", database, "-q"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql]);
        run(c, "psql")
    }

    /// The pgbench script of a read or a write of five fields.
    fn script(&self, variant: Variant, write: bool, values: &[String; 5]) -> String {
        let t = variant.table();
        let k = quote(KEY);
        if write {
            let o = quote(variant.options());
            let v: Vec<String> = values.iter().map(|v| quote(v)).collect();
            format!(
                "INSERT INTO {t}_w (subject, f1, f2, f3, f4, f5) VALUES ('REL-W', \
                 pgp_sym_encrypt({}, {k}, {o}), pgp_sym_encrypt({}, {k}, {o}), \
                 pgp_sym_encrypt({}, {k}, {o}), pgp_sym_encrypt({}, {k}, {o}), \
                 pgp_sym_encrypt({}, {k}, {o}));\n",
                v[0], v[1], v[2], v[3], v[4]
            )
        } else {
            format!(
                "\\set id random(1, {rows})\n\
                 SELECT subject, pgp_sym_decrypt(f1, {k}), pgp_sym_decrypt(f2, {k}), \
                 pgp_sym_decrypt(f3, {k}), pgp_sym_decrypt(f4, {k}), pgp_sym_decrypt(f5, {k}) \
                 FROM {t} WHERE id = :id;\n",
                rows = self.rows
            )
        }
    }

    /// Drives reads or writes with `clients` pgbench clients for about `secs`; returns the
    /// transactions done, the seconds they took and their latencies in µs.
    pub fn drive(
        &mut self,
        variant: Variant,
        write: bool,
        clients: usize,
        secs: f64,
        values: &[String; 5],
    ) -> Result<(usize, f64, Vec<u32>), String> {
        self.logs += 1;
        let script = self.dir.path().join(format!("script-{}.sql", self.logs));
        std::fs::write(&script, self.script(variant, write, values)).map_err(|e| e.to_string())?;
        let prefix = self.dir.path().join(format!("log-{}", self.logs));
        let secs = secs.round().max(1.0);
        let mut c = command(&self.bin, "pgbench", None);
        c.arg("-h")
            .arg(self.dir.path())
            .args(["-p", PORT, "-U", "kluis", "-n", "-l"])
            .arg(format!("--log-prefix={}", prefix.display()))
            .args([
                "-c",
                &clients.to_string(),
                "-j",
                &clients.min(2).to_string(),
            ])
            .args(["-T", &format!("{secs:.0}"), "-f"])
            .arg(&script)
            .arg("postgres")
            .current_dir(self.dir.path());
        run(c, "pgbench")?;
        let mut latencies = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).map_err(|e| e.to_string())? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !name.starts_with(&format!("log-{}.", self.logs)) {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            latencies.extend(
                text.lines()
                    .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u32>().ok()),
            );
            std::fs::remove_file(&path).ok();
        }
        Ok((latencies.len(), secs, latencies))
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // An immediate shutdown: the cluster is thrown away anyway.
        let user = postgres_user().ok().flatten();
        let mut stop = command(&self.bin, "pg_ctl", user);
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["stop", "-m", "immediate", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !stop.status().is_ok_and(|s| s.success()) {
            self.server.kill().ok();
        }
        self.server.wait().ok();
    }
}
