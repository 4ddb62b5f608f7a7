//! The PostgreSQL store: several kluis nodes on one database that the organisation already
//! operates, backs up and fails over. A synchronous client (`postgres`) under the synchronous
//! store traits, with a small pool of connections of its own.
//!
//! Every change runs in a `SERIALIZABLE` transaction, retried when PostgreSQL reports a
//! serialization failure or deadlock, so a check and the write that follows from it (a purpose
//! key version still live, an anchor still the one read, no hold on a record) hold together even
//! when another node writes at the same time; except the changes guarded by themselves or by a
//! lock they take (`PgStore::write_guarded`: the trail's append under its advisory lock, key
//! state updates that name the state they replace, rewraps, a new subject's first record in one
//! statement that locks its purpose key version), which run in `READ COMMITTED`. Reads of more
//! than one statement run in one `REPEATABLE READ` snapshot.
//!
//! Connections: a libpq-style URL or key/value string (`postgresql://user@host:5432/db?…`,
//! `host=/run/postgresql dbname=kluis`). TLS is verified or absent, never tried and dropped:
//! `sslmode=verify-full` (with `sslrootcert=FILE`) over TCP, and plaintext only over a Unix
//! socket or loopback. A lost connection answers `StoreError::Unavailable` and is not returned
//! to the pool; the next call connects again.
//!
//! The trait implementations live by aggregate in `postgres/`; the schema, pool and row decoding
//! they share stay here.
//!
//! Invariant: store methods run on blocking threads (the gRPC edge calls the core through
//! `spawn_blocking`); on a multi-threaded runtime's worker they step aside with `block_in_place`.

mod audit;
mod disclosures;
mod evidence;
mod group;
mod keys;
mod lifecycle;
mod meta;
mod records;
mod rights;

pub use lifecycle::SUBJECTS_FACTS;
pub use records::{
    FIND_TAGGED, RECORDS, RECORDS_WITH_FACTS, RECORDS_WITH_FIELD, tagged_from_statement,
};

use std::{
    collections::HashMap,
    sync::{Condvar, Mutex},
    time::Duration,
};

use postgres::{Client, IsolationLevel, Row, Statement, error::SqlState, types::ToSql};

use super::{
    AnchorChange, AnchorRow, AuditRow, ConsentRow, DisclosureRow, EvidenceRow, FieldMeta, FieldRow,
    FieldsMac, HoldRow, KeyJobRow, KeyRowChange, KeyState, LeaseRow, MandateRow, PurposeKeyRow,
    RecordRow, RecordWithField, RequestRow, Resealed, RestrictionRow, SegmentRow, StoreError,
    SubjectFacts, SubjectKeyRow, TagCount, TagRow, TokenRow, prelude::*, qualified,
};

/// The migrations, in order; `kluis_schema.version` counts how many have run. Text columns use
/// the `C` collation, so that ordering and paging by id are by bytes, as on SQLite.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE purpose_keys (
    purpose       TEXT COLLATE "C" NOT NULL,
    version       BIGINT  NOT NULL,
    state         TEXT    NOT NULL,
    algorithm     TEXT    NOT NULL,
    wrapped       BYTEA   NOT NULL,
    created_at    BIGINT  NOT NULL,
    retired_at    BIGINT,
    destroy_after BIGINT,
    destroyed_at  BIGINT,
    barred        BOOLEAN NOT NULL,
    mac           BYTEA   NOT NULL,
    PRIMARY KEY (purpose, version)
);
CREATE TABLE key_jobs (
    purpose    TEXT COLLATE "C" NOT NULL,
    kind       TEXT COLLATE "C" NOT NULL,
    started_at BIGINT NOT NULL,
    PRIMARY KEY (purpose, kind)
);
CREATE TABLE subject_keys (
    subject         TEXT COLLATE "C" NOT NULL,
    purpose         TEXT COLLATE "C" NOT NULL,
    generation      BIGINT NOT NULL,
    purpose_version BIGINT NOT NULL,
    wrapped         BYTEA  NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (subject, purpose, generation)
);
CREATE INDEX subject_keys_by_version ON subject_keys (purpose, purpose_version);
CREATE TABLE records (
    id         TEXT COLLATE "C" PRIMARY KEY,
    subject    TEXT COLLATE "C" NOT NULL,
    purpose    TEXT COLLATE "C" NOT NULL,
    labels     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    closed_at  BIGINT,
    expires_at BIGINT,
    mac        BYTEA  NOT NULL,
    fields_mac BYTEA  NOT NULL
);
CREATE INDEX records_by_subject ON records (subject, created_at);
CREATE INDEX records_by_expiry ON records (expires_at);
CREATE TABLE fields (
    record_id TEXT COLLATE "C" NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    name      TEXT COLLATE "C" NOT NULL,
    category  TEXT   NOT NULL,
    kind      TEXT   NOT NULL,
    key_gen   BIGINT NOT NULL,
    sealed    BYTEA  NOT NULL,
    mac       BYTEA  NOT NULL,
    version   TEXT   NOT NULL,
    PRIMARY KEY (record_id, name)
);
CREATE TABLE evidence (
    id          TEXT COLLATE "C" PRIMARY KEY,
    record_id   TEXT COLLATE "C" NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    name        TEXT COLLATE "C" NOT NULL,
    category    TEXT    NOT NULL,
    media_type  TEXT    NOT NULL,
    file_name   BYTEA   NOT NULL,
    size        BIGINT  NOT NULL,
    sha256      TEXT    NOT NULL,
    salt        BYTEA   NOT NULL,
    complete    BOOLEAN NOT NULL,
    owns_record BOOLEAN NOT NULL,
    created_at  BIGINT  NOT NULL,
    mac         BYTEA   NOT NULL,
    UNIQUE (record_id, name)
);
CREATE TABLE evidence_segments (
    evidence_id TEXT COLLATE "C" NOT NULL REFERENCES evidence (id) ON DELETE CASCADE,
    idx         BIGINT NOT NULL,
    key_gen     BIGINT NOT NULL,
    sealed      BYTEA  NOT NULL,
    PRIMARY KEY (evidence_id, idx)
);
CREATE TABLE tokens (
    id             TEXT COLLATE "C" PRIMARY KEY,
    hash           BYTEA   NOT NULL UNIQUE,
    principal      TEXT COLLATE "C" NOT NULL,
    roles          TEXT    NOT NULL,
    scope_subject  TEXT COLLATE "C",
    created_at     BIGINT  NOT NULL,
    expires_at     BIGINT  NOT NULL,
    revoked_at     BIGINT,
    requested_by   TEXT,
    needs_approval BOOLEAN NOT NULL,
    approved_by    TEXT,
    approved_at    BIGINT,
    mac            BYTEA   NOT NULL
);
CREATE TABLE holds (
    id          TEXT COLLATE "C" PRIMARY KEY,
    subject     TEXT COLLATE "C" NOT NULL,
    record_id   TEXT COLLATE "C",
    reason      TEXT   NOT NULL,
    case_ref    TEXT   NOT NULL,
    placed_by   TEXT   NOT NULL,
    placed_at   BIGINT NOT NULL,
    released_at BIGINT,
    released_by TEXT,
    mac         BYTEA  NOT NULL
);
CREATE INDEX holds_by_subject ON holds (subject);
CREATE TABLE subject_requests (
    id           TEXT COLLATE "C" PRIMARY KEY,
    subject      TEXT COLLATE "C" NOT NULL,
    kind         TEXT   NOT NULL,
    received_at  BIGINT NOT NULL,
    due_at       BIGINT NOT NULL,
    opened_by    TEXT   NOT NULL,
    completed_at BIGINT,
    note         TEXT   NOT NULL,
    mac          BYTEA  NOT NULL
);
CREATE TABLE consents (
    subject     TEXT COLLATE "C" NOT NULL,
    purpose     TEXT COLLATE "C" NOT NULL,
    state       TEXT   NOT NULL,
    at          BIGINT NOT NULL,
    recorded_by TEXT   NOT NULL,
    mac         BYTEA  NOT NULL,
    PRIMARY KEY (subject, purpose)
);
CREATE TABLE mandates (
    id             TEXT COLLATE "C" PRIMARY KEY,
    subject        TEXT COLLATE "C" NOT NULL,
    representative TEXT COLLATE "C" NOT NULL,
    purposes       TEXT   NOT NULL,
    categories     TEXT   NOT NULL,
    valid_from     BIGINT NOT NULL,
    valid_until    BIGINT NOT NULL,
    granted_by     TEXT   NOT NULL,
    revoked_at     BIGINT,
    mac            BYTEA  NOT NULL
);
CREATE INDEX mandates_by_representative ON mandates (representative);
CREATE INDEX mandates_by_subject ON mandates (subject);
CREATE TABLE subject_anchors (
    subject  TEXT COLLATE "C" PRIMARY KEY,
    holds    BIGINT NOT NULL,
    consents BIGINT NOT NULL,
    mac      BYTEA  NOT NULL,
    digest   BYTEA  NOT NULL
);
CREATE TABLE leases (
    name   TEXT COLLATE "C" PRIMARY KEY,
    holder TEXT   NOT NULL,
    until  BIGINT NOT NULL
);
CREATE TABLE kluis_epoch (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    n        BIGINT NOT NULL
);
INSERT INTO kluis_epoch (n) VALUES (0);
CREATE TABLE audit (
    seq       BIGINT PRIMARY KEY,
    entry     BYTEA NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL,
    mac       BYTEA NOT NULL
);
"#,
    // Blind-index tags of searchable field values; they go with the value they tag.
    r#"
CREATE TABLE search_tags (
    record_id TEXT COLLATE "C" NOT NULL,
    field     TEXT COLLATE "C" NOT NULL,
    purpose   TEXT   NOT NULL,
    version   BIGINT NOT NULL,
    bits      BIGINT NOT NULL,
    tag       BIGINT NOT NULL,
    PRIMARY KEY (record_id, field, version),
    FOREIGN KEY (record_id, field) REFERENCES fields (record_id, name) ON DELETE CASCADE
);
CREATE INDEX search_tags_lookup ON search_tags (purpose, field, version, bits, tag);
CREATE INDEX search_tags_by_version ON search_tags (version);
"#,
    // Restriction of processing (GDPR art. 18), covered by the subject's anchor, and the
    // extended deadline of a subject request (art. 12(3)), covered by the request's MAC.
    r#"
CREATE TABLE restrictions (
    id        TEXT COLLATE "C" PRIMARY KEY,
    subject   TEXT COLLATE "C" NOT NULL,
    reason    TEXT   NOT NULL,
    placed_by TEXT   NOT NULL,
    placed_at BIGINT NOT NULL,
    lifted_at BIGINT,
    lifted_by TEXT,
    mac       BYTEA  NOT NULL
);
CREATE INDEX restrictions_by_subject ON restrictions (subject);
ALTER TABLE subject_requests ADD COLUMN extended_due_at BIGINT;
ALTER TABLE subject_requests ADD COLUMN extension_reason TEXT;
"#,
    // The disclosure register; a subject's disclosures go with their last record, in the
    // transaction that deletes it, whichever path deletes it.
    r#"
CREATE TABLE disclosures (
    id             TEXT COLLATE "C" PRIMARY KEY,
    subject        TEXT COLLATE "C" NOT NULL,
    record_id      TEXT COLLATE "C" NOT NULL,
    purpose        TEXT    NOT NULL,
    fields         TEXT    NOT NULL,
    categories     TEXT    NOT NULL,
    recipient      TEXT    NOT NULL,
    recipient_kind TEXT    NOT NULL,
    legal_basis    TEXT    NOT NULL,
    case_ref       TEXT    NOT NULL,
    disclosed_at   BIGINT  NOT NULL,
    recorded_by    TEXT    NOT NULL,
    automatic      BOOLEAN NOT NULL,
    mac            BYTEA   NOT NULL
);
CREATE INDEX disclosures_by_subject ON disclosures (subject, disclosed_at);
CREATE INDEX disclosures_by_time ON disclosures (disclosed_at);
CREATE FUNCTION kluis_disclosures_go_with_the_last_record() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM records WHERE subject = OLD.subject) THEN
        DELETE FROM disclosures WHERE subject = OLD.subject;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER disclosures_go_with_the_last_record AFTER DELETE ON records
FOR EACH ROW EXECUTE FUNCTION kluis_disclosures_go_with_the_last_record();
"#,
    // A search finds its candidates in the lookup index alone, already in record order.
    r#"
DROP INDEX search_tags_lookup;
CREATE INDEX search_tags_lookup ON search_tags (purpose, field, version, bits, tag, record_id);
"#,
    // The entries about a subject without a scan of the trail (its export and access report):
    // an index over the subject each entry names, computed from the entry itself, so that it
    // cannot disagree with it. The entries are UTF-8 JSON, written by kluis; the function is
    // immutable for them.
    r#"
CREATE FUNCTION kluis_audit_subject(entry BYTEA) RETURNS TEXT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT convert_from(entry, 'UTF8')::jsonb ->> 'subject' $$;
CREATE INDEX audit_by_subject ON audit (kluis_audit_subject(entry), seq);
"#,
    // The records of a subject that were destroyed, covered by the subject's anchor: rows put
    // back by hand after a deletion, a sweep or an erasure are not obeyed.
    r#"
CREATE TABLE destroyed_records (
    subject   TEXT COLLATE "C" NOT NULL,
    record_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (subject, record_id)
);
"#,
    // Leases and key jobs carry a MAC: a row written by hand holds no job off, and starts none.
    r"
ALTER TABLE leases ADD COLUMN mac BYTEA;
ALTER TABLE key_jobs ADD COLUMN mac BYTEA;
",
];

/// The advisory lock key under which migrations run ("kluis" in ASCII), so that nodes starting
/// at once migrate one after the other.
const MIGRATION_LOCK: i64 = 0x006b_6c75_6973;

/// Connections kept open between calls.
const MAX_CONNECTIONS: usize = 32;

/// How long a call waits for a free connection, or for a new one to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a change is retried when PostgreSQL reports a serialization failure.
const MAX_RETRIES: u32 = 20;

/// How a connection is secured.
#[derive(Clone)]
enum Tls {
    /// Over a Unix socket or loopback, where there is nothing to protect on the wire.
    Plain,
    /// TLS with the server's certificate verified against the configured roots and its name.
    Verified(tokio_postgres_rustls::MakeRustlsConnect),
}

/// A pooled connection with its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// The PostgreSQL store.
pub struct PgStore {
    config: postgres::Config,
    tls: Tls,
    /// A redacted description of the server, for messages (no password).
    target: String,
    idle: Mutex<Pool>,
    freed: Condvar,
    /// The last audit row this store appended (`append_on_own_tail`).
    own_tail: Mutex<Option<AuditRow>>,
    /// `GetRecord`'s reads of a record with its fields and facts that arrive together, in one
    /// statement (`RecordStore::record_with_facts`).
    record_reads: group::ReadGroup<records::RecordWithFacts>,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Conn>,
    /// Connections open, idle or in use.
    open: usize,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// What a connection string names, for messages and logs: hosts, database and user, parsed
/// out of it; nothing else of it is copied, so no spelling of a password gets through.
pub fn describe_url(url: &str) -> String {
    let (rest, _, _) = split_tls_params(url);
    match rest.parse::<postgres::Config>() {
        Ok(config) => describe(&config),
        Err(_) => "a PostgreSQL connection string that cannot be read".into(),
    }
}

fn describe(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "PostgreSQL at {} (database `{}`, user `{}`)",
        if hosts.is_empty() {
            "<default host>".to_owned()
        } else {
            hosts.join(",")
        },
        config.get_dbname().unwrap_or("<default>"),
        config.get_user().unwrap_or("<default>")
    )
}

/// Whether `url` names a PostgreSQL store (rather than a SQLite file).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgresql://")
        || url.starts_with("postgres://")
        || url.contains("host=")
        || url.contains("dbname=")
}

impl PgStore {
    /// Connects to the database `url` names and runs pending migrations (under an advisory lock,
    /// so that nodes starting at once do not race).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let (config, tls, target) = parse_url(url)?;
        let store = Self {
            config,
            tls,
            target,
            idle: Mutex::new(Pool::default()),
            freed: Condvar::new(),
            own_tail: Mutex::new(None),
            record_reads: group::ReadGroup::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Where the store is, without credentials.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        self.with_conn(|c| {
            let mut tx = c.client.transaction().map_err(db)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .map_err(db)?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS kluis_schema (
                    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
                    version  BIGINT NOT NULL
                 );
                 INSERT INTO kluis_schema (version) VALUES (0) ON CONFLICT DO NOTHING;",
            )
            .map_err(db)?;
            let current: i64 = tx
                .query_one("SELECT version FROM kluis_schema", &[])
                .map_err(db)?
                .try_get(0)
                .map_err(db)?;
            if current > supported {
                return Err(StoreError::SchemaTooNew {
                    found: current,
                    supported,
                });
            }
            for (i, sql) in MIGRATIONS
                .iter()
                .enumerate()
                .skip(usize::try_from(current).unwrap_or(0))
            {
                tx.batch_execute(sql).map_err(db)?;
                let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
                tx.execute("UPDATE kluis_schema SET version = $1", &[&version])
                    .map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    fn open_connection(&self) -> Result<Conn, StoreError> {
        let client = match &self.tls {
            Tls::Plain => self.config.connect(postgres::NoTls),
            Tls::Verified(tls) => self.config.connect(tls.clone()),
        }
        .map_err(|e| {
            StoreError::Unavailable(format!("cannot connect to {}: {}", self.target, cause(&e)))
        })?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// Runs `f` with a pooled connection; a connection that broke is dropped, not pooled.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        blocking(|| {
            let mut conn = self.take()?;
            let result = f(&mut conn);
            self.give_back(conn);
            result
        })
    }

    fn take(&self) -> Result<Conn, StoreError> {
        let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
        let mut pool = self
            .idle
            .lock()
            .map_err(|_| StoreError::Database("pool lock poisoned".into()))?;
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok(c);
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                let conn = self.open_connection();
                if conn.is_err()
                    && let Ok(mut pool) = self.idle.lock()
                {
                    pool.open -= 1;
                    self.freed.notify_one();
                }
                return conn;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "all {MAX_CONNECTIONS} connections to {} are busy",
                    self.target
                )));
            }
            pool = self
                .freed
                .wait_timeout(pool, deadline - now)
                .map_err(|_| StoreError::Database("pool lock poisoned".into()))?
                .0;
        }
    }

    fn give_back(&self, conn: Conn) {
        if let Ok(mut pool) = self.idle.lock() {
            if conn.client.is_closed() {
                pool.open = pool.open.saturating_sub(1);
            } else {
                pool.idle.push(conn);
            }
            self.freed.notify_one();
        }
    }

    /// Runs `f` in a `SERIALIZABLE` transaction and commits it, again from the start when
    /// PostgreSQL reports a serialization failure or a deadlock.
    fn write<T>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_at(IsolationLevel::Serializable, f)
    }

    /// Like `write`, in a `READ COMMITTED` transaction: for changes whose every statement is
    /// guarded by itself (an update that names the state it replaces) or by a lock it takes
    /// (the audit trail's advisory lock, `FOR SHARE` on a purpose key version), where the
    /// predicate locks of `SERIALIZABLE` would only cost (a rewrap of a thousand keys runs out
    /// of them).
    fn write_guarded<T>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_at(IsolationLevel::ReadCommitted, f)
    }

    fn write_at<T>(
        &self,
        level: IsolationLevel,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_conn(|c| {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let outcome = (|| {
                    let tx = c
                        .client
                        .build_transaction()
                        .isolation_level(level)
                        .start()
                        .map_err(db)?;
                    let mut tx = Tx {
                        tx: Session::Tx(tx),
                        statements: &mut c.statements,
                    };
                    let value = f(&mut tx)?;
                    tx.commit()?;
                    Ok(value)
                })();
                match outcome {
                    Err(StoreError::Retry) if attempt < MAX_RETRIES => {
                        std::thread::sleep(Duration::from_millis(u64::from(attempt) * 2));
                    }
                    Err(StoreError::Retry) => {
                        return Err(StoreError::Stale(
                            "rows that other writers kept changing".into(),
                        ));
                    }
                    other => return other,
                }
            }
        })
    }

    /// Runs `f` in one read-only `REPEATABLE READ` snapshot.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_conn(|c| {
            let tx = c
                .client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(db)?;
            let mut tx = Tx {
                tx: Session::Tx(tx),
                statements: &mut c.statements,
            };
            let value = f(&mut tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    /// Runs `f`, which runs one statement (a read, or the trail's append on its own tail), without
    /// a transaction of its own: one round trip instead of three.
    fn read_one<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_conn(|c| {
            let mut tx = Tx {
                tx: Session::Direct(&mut c.client),
                statements: &mut c.statements,
            };
            f(&mut tx)
        })
    }
}

/// Where statements run: in a transaction, or directly (a single statement commits by itself).
enum Session<'a> {
    Tx(postgres::Transaction<'a>),
    Direct(&'a mut Client),
}

impl Session<'_> {
    fn prepare(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        match self {
            Session::Tx(t) => t.prepare(sql),
            Session::Direct(c) => c.prepare(sql),
        }
    }

    fn execute(
        &mut self,
        s: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        match self {
            Session::Tx(t) => t.execute(s, params),
            Session::Direct(c) => c.execute(s, params),
        }
    }

    fn query(
        &mut self,
        s: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        match self {
            Session::Tx(t) => t.query(s, params),
            Session::Direct(c) => c.query(s, params),
        }
    }

    fn query_opt(
        &mut self,
        s: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        match self {
            Session::Tx(t) => t.query_opt(s, params),
            Session::Direct(c) => c.query_opt(s, params),
        }
    }

    fn query_one(
        &mut self,
        s: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, postgres::Error> {
        match self {
            Session::Tx(t) => t.query_one(s, params),
            Session::Direct(c) => c.query_one(s, params),
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing a connection blocks on its runtime: step aside from an async worker first.
        let idle = match self.idle.get_mut() {
            Ok(pool) => std::mem::take(&mut pool.idle),
            Err(poisoned) => std::mem::take(&mut poisoned.into_inner().idle),
        };
        blocking(move || drop(idle));
    }
}

/// A transaction (or a single statement) with the connection's prepared statements.
struct Tx<'a> {
    tx: Session<'a>,
    statements: &'a mut HashMap<String, Statement>,
}

impl Tx<'_> {
    fn commit(self) -> Result<(), StoreError> {
        match self.tx {
            Session::Tx(t) => t.commit().map_err(db),
            Session::Direct(_) => Ok(()),
        }
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql).map_err(db)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Runs a statement; the number of rows it changed.
    fn exec(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        self.tx.execute(&s, params).map_err(db)
    }

    /// Runs an insert that may violate a unique key: `Exists(what)` when it does, an error
    /// when it stores no row.
    fn insert(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: impl FnOnce() -> String,
    ) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        match self.tx.execute(&s, params) {
            // A trigger someone added (`BEFORE INSERT` returning `NULL`) drops a row without
            // an error: the write would be acknowledged and is not stored.
            Ok(0) => Err(StoreError::NotKept(format!(
                "{} (it dropped the row)",
                what()
            ))),
            Ok(n) => Ok(n),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(StoreError::Exists(what()))
            }
            Err(e) => Err(db(e)),
        }
    }

    /// Runs a statement that inserts into several tables and answers one row (of what it
    /// stored); `Exists(what)` when it violates a unique key of a table `what(table)` names, a
    /// database error for any other.
    fn insert_returning(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: impl FnOnce(&str) -> Option<String>,
    ) -> Result<Row, StoreError> {
        let s = self.statement(sql)?;
        match self.tx.query_one(&s, params) {
            Ok(row) => Ok(row),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                match e.as_db_error().and_then(|d| d.table()).and_then(what) {
                    Some(what) => Err(StoreError::Exists(what)),
                    None => Err(db(e)),
                }
            }
            Err(e) => Err(db(e)),
        }
    }

    fn all(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let s = self.statement(sql)?;
        self.tx.query(&s, params).map_err(db)
    }

    fn opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let s = self.statement(sql)?;
        self.tx.query_opt(&s, params).map_err(db)
    }

    fn one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, StoreError> {
        let s = self.statement(sql)?;
        self.tx.query_one(&s, params).map_err(db)
    }

    /// A count (`SELECT count(*) …`).
    fn count(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let n: i64 = get(&self.one(sql, params)?, 0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Runs `f` where it may block: on a multi-threaded runtime's worker, outside its scheduler.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The database's error, with its cause.
fn cause(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(c) = source {
                s.push_str(": ");
                s.push_str(&c.to_string());
                source = c.source();
            }
            s
        }
    }
}

fn db(e: postgres::Error) -> StoreError {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            StoreError::Retry
        }
        // Connection exceptions, the server shutting down or starting, too many connections.
        Some(c)
            if c.code().starts_with("08")
                || c.code().starts_with("57P")
                || *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            StoreError::Unavailable(cause(&e))
        }
        Some(_) => StoreError::Database(cause(&e)),
        None if e.is_closed() || std::error::Error::source(&e).is_some() => {
            StoreError::Unavailable(cause(&e))
        }
        None => StoreError::Database(cause(&e)),
    }
}

/// Column `i` of `row`.
fn get<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

/// A text column holding one of a closed set of names (a purpose, a category …): a name none of
/// them has was written by hand, and the row is `Corrupt`.
fn get_named<T: std::str::FromStr>(row: &Row, i: usize, what: &str) -> Result<T, StoreError> {
    let s: String = get(row, i)?;
    s.parse().map_err(|_| {
        StoreError::Corrupt(format!(
            "unknown {what} `{}`",
            s.chars().take(32).collect::<String>()
        ))
    })
}

/// A `BIGINT` column that holds a `u32`.
fn get_u32(row: &Row, i: usize) -> Result<u32, StoreError> {
    let n: i64 = get(row, i)?;
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("column {i} out of range: {n}")))
}

/// A `BIGINT` column that holds a `u64`.
fn get_u64(row: &Row, i: usize) -> Result<u64, StoreError> {
    let n: i64 = get(row, i)?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("column {i} out of range: {n}")))
}

/// A `u64` as a `BIGINT`.
fn big(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Database(format!("{n} does not fit a BIGINT")))
}

/// A limit as a `BIGINT`.
fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (the client library knows only
/// modes that may fall back to plaintext): the rest, and the two.
fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let mut sslmode = None;
    let mut sslrootcert = None;
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let rest = if let Some((base, query)) = url.split_once('?').filter(|_| is_url) {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", v)) => sslmode = Some(v.to_owned()),
                Some(("sslrootcert", v)) => sslrootcert = Some(v.to_owned()),
                _ => kept.push(pair),
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else if is_url {
        url.to_owned()
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            match pair.split_once('=') {
                Some(("sslmode", v)) => sslmode = Some(v.to_owned()),
                Some(("sslrootcert", v)) => sslrootcert = Some(v.to_owned()),
                _ => kept.push(pair),
            }
        }
        kept.join(" ")
    };
    (rest, sslmode, sslrootcert)
}

/// Parses a libpq-style URL or key/value string into the client's settings and how the
/// connection is secured. `sslmode` and `sslrootcert` are read here: the client library knows
/// only modes that may fall back to plaintext.
fn parse_url(url: &str) -> Result<(postgres::Config, Tls, String), StoreError> {
    let bad = |m: String| StoreError::Config(m);
    let (rest, sslmode, sslrootcert) = split_tls_params(url);
    let mut config: postgres::Config = rest.parse().map_err(|e| {
        bad(format!(
            "the store URL is not a PostgreSQL connection string: {e}; write it as \
             `postgresql://user@host:5432/db?sslmode=verify-full&sslrootcert=FILE` or \
             `host=/run/postgresql dbname=kluis`"
        ))
    })?;
    if config.get_hosts().is_empty() {
        return Err(bad(
            "the store URL names no host; add `host=/socket/dir` or `@host:port`".into(),
        ));
    }
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let local = config.get_hosts().iter().all(|h| match h {
        postgres::config::Host::Unix(_) => true,
        postgres::config::Host::Tcp(name) => {
            matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1" | "[::1]")
        }
    });
    let target = describe(&config);
    let tls = match sslmode.as_deref() {
        None | Some("disable") if local => Tls::Plain,
        None | Some("disable") => {
            return Err(bad(format!(
                "the store URL reaches {} over the network without TLS; add \
                 `sslmode=verify-full&sslrootcert=FILE` (kluis sends special-category data \
                 to its database only over verified TLS, or over a Unix socket or loopback)",
                hosts.join(",")
            )));
        }
        Some("verify-full") => {
            let file = sslrootcert.map(std::path::PathBuf::from).ok_or_else(|| {
                bad(
                    "sslmode=verify-full needs `sslrootcert=FILE`: the CA that signed the \
                     database server's certificate"
                        .into(),
                )
            })?;
            config.ssl_mode(postgres::config::SslMode::Require);
            Tls::Verified(rustls_connector(&file)?)
        }
        Some(mode @ ("allow" | "prefer")) => {
            return Err(bad(format!(
                "sslmode={mode} falls back to plaintext without a word; use \
                 `sslmode=verify-full&sslrootcert=FILE`, or `sslmode=disable` over a Unix \
                 socket or loopback"
            )));
        }
        Some(mode @ ("require" | "verify-ca")) => {
            return Err(bad(format!(
                "sslmode={mode} does not check the server's name; use \
                 `sslmode=verify-full&sslrootcert=FILE`"
            )));
        }
        Some(other) => {
            return Err(bad(format!(
                "unknown sslmode `{}`; use verify-full or disable",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    config.connect_timeout(CONNECT_TIMEOUT);
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    config.application_name("kluis");
    Ok((config, tls, target))
}

fn rustls_connector(
    roots_file: &std::path::Path,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let bad = |m: String| StoreError::Config(m);
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(roots_file).map_err(|e| {
        bad(format!(
            "cannot read sslrootcert `{}`: {e}",
            roots_file.display()
        ))
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| {
            bad(format!(
                "sslrootcert `{}` holds a certificate that cannot be read: {e}",
                roots_file.display()
            ))
        })?;
        roots.add(cert).map_err(|e| {
            bad(format!(
                "sslrootcert `{}` holds a certificate that cannot be used: {e}",
                roots_file.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(bad(format!(
            "sslrootcert `{}` holds no certificate",
            roots_file.display()
        )));
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

// Row decoding, shared by the aggregates.

const RECORD_COLUMNS: &str =
    "id, subject, purpose, labels, created_at, updated_at, closed_at, expires_at, mac, fields_mac";

fn record_from_row(r: &Row) -> Result<RecordRow, StoreError> {
    record_from_row_at(r, 0)
}

/// A record from the `RECORD_COLUMNS` of `r` that start at column `at`.
fn record_from_row_at(r: &Row, at: usize) -> Result<RecordRow, StoreError> {
    let id: String = get(r, at)?;
    let labels: String = get(r, at + 3)?;
    let labels = serde_json::from_str(&labels)
        .map_err(|_| StoreError::Corrupt(format!("labels of `{id}`")))?;
    Ok(RecordRow {
        id,
        subject: get(r, at + 1)?,
        purpose: get_named(r, at + 2, "purpose")?,
        labels,
        created_at: get(r, at + 4)?,
        updated_at: get(r, at + 5)?,
        closed_at: get(r, at + 6)?,
        expires_at: get(r, at + 7)?,
        mac: get(r, at + 8)?,
        fields_mac: get(r, at + 9)?,
    })
}

const FIELD_COLUMNS: &str = "name, category, kind, key_gen, sealed, mac, version";

fn field_from_row(r: &Row, at: usize) -> Result<FieldRow, StoreError> {
    Ok(FieldRow {
        name: get(r, at)?,
        category: get_named(r, at + 1, "category")?,
        kind: get_named(r, at + 2, "field kind")?,
        key_gen: get_u32(r, at + 3)?,
        sealed: get(r, at + 4)?,
        mac: get(r, at + 5)?,
        version: get(r, at + 6)?,
        tags: Vec::new(),
    })
}

const TOKEN_COLUMNS: &str = "id, hash, principal, roles, scope_subject, created_at, expires_at, \
     revoked_at, requested_by, needs_approval, approved_by, approved_at, mac";

fn token_from_row(r: &Row) -> Result<TokenRow, StoreError> {
    let roles: String = get(r, 3)?;
    Ok(TokenRow {
        id: get(r, 0)?,
        hash: get(r, 1)?,
        principal: get(r, 2)?,
        roles: split_list(&roles),
        scope_subject: get(r, 4)?,
        created_at: get(r, 5)?,
        expires_at: get(r, 6)?,
        revoked_at: get(r, 7)?,
        requested_by: get(r, 8)?,
        needs_approval: get(r, 9)?,
        approved_by: get(r, 10)?,
        approved_at: get(r, 11)?,
        mac: get(r, 12)?,
    })
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

const AUDIT_COLUMNS: &str = "seq, entry, prev_hash, hash, mac";

fn audit_from_row(r: &Row) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        seq: get_u64(r, 0)?,
        entry: get(r, 1)?,
        prev_hash: get(r, 2)?,
        hash: get(r, 3)?,
        mac: get(r, 4)?,
    })
}

const MANDATE_COLUMNS: &str = "id, subject, representative, purposes, categories, valid_from, \
     valid_until, granted_by, revoked_at, mac";

fn mandate_from_row(r: &Row) -> Result<MandateRow, StoreError> {
    let purposes: String = get(r, 3)?;
    let categories: String = get(r, 4)?;
    Ok(MandateRow {
        id: get(r, 0)?,
        subject: get(r, 1)?,
        representative: get(r, 2)?,
        purposes: split_list(&purposes),
        categories: split_list(&categories),
        valid_from: get(r, 5)?,
        valid_until: get(r, 6)?,
        granted_by: get(r, 7)?,
        revoked_at: get(r, 8)?,
        mac: get(r, 9)?,
    })
}

const HOLD_COLUMNS: &str =
    "id, subject, record_id, reason, case_ref, placed_by, placed_at, released_at, released_by, mac";

const DISCLOSURE_COLUMNS: &str = "id, subject, record_id, purpose, fields, categories, recipient, \
     recipient_kind, legal_basis, case_ref, disclosed_at, recorded_by, automatic, mac";

fn disclosure_from_row(r: &Row) -> Result<DisclosureRow, StoreError> {
    let fields: String = get(r, 4)?;
    let categories: String = get(r, 5)?;
    Ok(DisclosureRow {
        id: get(r, 0)?,
        subject: get(r, 1)?,
        record_id: get(r, 2)?,
        purpose: get_named(r, 3, "purpose")?,
        fields: split_list(&fields),
        categories: split_list(&categories),
        recipient: get(r, 6)?,
        recipient_kind: get_named(r, 7, "recipient kind")?,
        legal_basis: get(r, 8)?,
        case_ref: get(r, 9)?,
        disclosed_at: get(r, 10)?,
        recorded_by: get(r, 11)?,
        automatic: get(r, 12)?,
        mac: get(r, 13)?,
    })
}

fn hold_from_row(r: &Row) -> Result<HoldRow, StoreError> {
    Ok(HoldRow {
        id: get(r, 0)?,
        subject: get(r, 1)?,
        record_id: get(r, 2)?,
        reason: get(r, 3)?,
        case_ref: get(r, 4)?,
        placed_by: get(r, 5)?,
        placed_at: get(r, 6)?,
        released_at: get(r, 7)?,
        released_by: get(r, 8)?,
        mac: get(r, 9)?,
    })
}

const REQUEST_COLUMNS: &str = "id, subject, kind, received_at, due_at, opened_by, completed_at, \
    note, mac, extended_due_at, extension_reason";

const RESTRICTION_COLUMNS: &str =
    "id, subject, reason, placed_by, placed_at, lifted_at, lifted_by, mac";

fn restriction_from_row(r: &Row) -> Result<RestrictionRow, StoreError> {
    Ok(RestrictionRow {
        id: get(r, 0)?,
        subject: get(r, 1)?,
        reason: get(r, 2)?,
        placed_by: get(r, 3)?,
        placed_at: get(r, 4)?,
        lifted_at: get(r, 5)?,
        lifted_by: get(r, 6)?,
        mac: get(r, 7)?,
    })
}

fn request_from_row(r: &Row) -> Result<RequestRow, StoreError> {
    Ok(RequestRow {
        id: get(r, 0)?,
        subject: get(r, 1)?,
        kind: get_named(r, 2, "request kind")?,
        received_at: get(r, 3)?,
        due_at: get(r, 4)?,
        opened_by: get(r, 5)?,
        completed_at: get(r, 6)?,
        note: get(r, 7)?,
        mac: get(r, 8)?,
        extended_due_at: get(r, 9)?,
        extension_reason: get(r, 10)?,
    })
}

const CONSENT_COLUMNS: &str = "subject, purpose, state, at, recorded_by, mac";

fn consent_from_row(r: &Row) -> Result<ConsentRow, StoreError> {
    Ok(ConsentRow {
        subject: get(r, 0)?,
        purpose: get_named(r, 1, "purpose")?,
        state: get_named(r, 2, "consent state")?,
        at: get(r, 3)?,
        recorded_by: get(r, 4)?,
        mac: get(r, 5)?,
    })
}

const ANCHOR_COLUMNS: &str = "subject, holds, consents, mac, digest";

fn anchor_from_row(r: &Row) -> Result<AnchorRow, StoreError> {
    Ok(AnchorRow {
        subject: get(r, 0)?,
        holds: get_u32(r, 1)?,
        consents: get_u32(r, 2)?,
        mac: get(r, 3)?,
        digest: get(r, 4)?,
    })
}

const PURPOSE_KEY_COLUMNS: &str = "purpose, version, state, algorithm, wrapped, created_at, \
     retired_at, destroy_after, destroyed_at, barred, mac";

fn purpose_key_from_row(r: &Row) -> Result<PurposeKeyRow, StoreError> {
    let state: String = get(r, 2)?;
    let algorithm: String = get(r, 3)?;
    let shown = |s: &str| s.chars().take(32).collect::<String>();
    Ok(PurposeKeyRow {
        purpose: get_named(r, 0, "purpose")?,
        version: get_u32(r, 1)?,
        state: KeyState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown key state `{}`", shown(&state))))?,
        algorithm: crate::crypto::Algorithm::parse(&algorithm).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown algorithm `{}`", shown(&algorithm)))
        })?,
        wrapped: get(r, 4)?,
        created_at: get(r, 5)?,
        retired_at: get(r, 6)?,
        destroy_after: get(r, 7)?,
        destroyed_at: get(r, 8)?,
        barred: get(r, 9)?,
        mac: get(r, 10)?,
    })
}

const SUBJECT_KEY_COLUMNS: &str =
    "subject, purpose, generation, purpose_version, wrapped, created_at";

fn subject_key_from_row(r: &Row) -> Result<SubjectKeyRow, StoreError> {
    Ok(SubjectKeyRow {
        subject: get(r, 0)?,
        purpose: get_named(r, 1, "purpose")?,
        generation: get_u32(r, 2)?,
        purpose_version: get_u32(r, 3)?,
        wrapped: get(r, 4)?,
        created_at: get(r, 5)?,
    })
}

const EVIDENCE_COLUMNS: &str = "id, record_id, name, category, media_type, file_name, size, \
     sha256, salt, complete, owns_record, created_at, mac";

fn evidence_from_row(r: &Row) -> Result<EvidenceRow, StoreError> {
    Ok(EvidenceRow {
        id: get(r, 0)?,
        record_id: get(r, 1)?,
        name: get(r, 2)?,
        category: get_named(r, 3, "category")?,
        media_type: get(r, 4)?,
        file_name: get(r, 5)?,
        size: get_u64(r, 6)?,
        sha256: get(r, 7)?,
        salt: get(r, 8)?,
        complete: get(r, 9)?,
        owns_record: get(r, 10)?,
        created_at: get(r, 11)?,
        mac: get(r, 12)?,
    })
}

fn segment_from_row(r: &Row) -> Result<SegmentRow, StoreError> {
    Ok(SegmentRow {
        index: get_u32(r, 0)?,
        key_gen: get_u32(r, 1)?,
        sealed: get(r, 2)?,
    })
}

// Statements shared by the aggregates.

/// The id of an active hold covering record `$1`, if any.
const HOLD_ON_RECORD: &str = "SELECT h.id FROM holds h JOIN records r ON h.subject = r.subject
    AND (h.record_id IS NULL OR h.record_id = r.id)
    WHERE r.id = $1 AND h.released_at IS NULL ORDER BY h.placed_at, h.id LIMIT 1";

/// SQL condition: no active hold covers record `r`.
const NOT_HELD: &str = "NOT EXISTS (SELECT 1 FROM holds h WHERE h.released_at IS NULL
    AND h.subject = r.subject AND (h.record_id IS NULL OR h.record_id = r.id))";

/// Moves the change epoch on (see `MetaStore::change_epoch`), in the transaction of the change:
/// other nodes see the new number once the change is visible to them.
/// A change the epoch does not announce (its row gone, a trigger that keeps the number) would be
/// in force on this node only: it is refused, with the transaction that makes it. The
/// subquery reads the number as it was before this statement.
fn bump_epoch(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    let moved = tx.all(
        "UPDATE kluis_epoch SET n = n + 1 RETURNING n > (SELECT n FROM kluis_epoch)",
        &[],
    )?;
    match moved.as_slice() {
        [row] if get::<bool>(row, 0)? => Ok(()),
        _ => Err(StoreError::NotKept(
            "the move of the change epoch (table `kluis_epoch`, one row): it is missing or \
             something in the database keeps it; other nodes would not take the change in, so \
             it is not made"
                .into(),
        )),
    }
}

fn select_anchor(tx: &mut Tx<'_>, subject: &str) -> Result<Option<AnchorRow>, StoreError> {
    tx.opt(
        &format!("SELECT {ANCHOR_COLUMNS} FROM subject_anchors WHERE subject = $1"),
        &[&subject],
    )?
    .map(|r| anchor_from_row(&r))
    .transpose()
}

/// Replaces the anchor `prev` (`None`: none stored) with `next`; `Stale` when the stored one is
/// not `prev`.
fn replace_anchor(
    tx: &mut Tx<'_>,
    prev: Option<&AnchorRow>,
    next: &AnchorRow,
) -> Result<(), StoreError> {
    let stored = select_anchor(tx, &next.subject)?;
    if stored.as_ref() != prev {
        return Err(StoreError::Stale(format!(
            "the anchor of subject `{}`",
            next.subject
        )));
    }
    tx.exec(
        "INSERT INTO subject_anchors (subject, holds, consents, mac, digest)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (subject) DO UPDATE SET
            holds = excluded.holds, consents = excluded.consents, mac = excluded.mac,
            digest = excluded.digest",
        &[
            &next.subject,
            &i64::from(next.holds),
            &i64::from(next.consents),
            &next.mac,
            &next.digest,
        ],
    )?;
    Ok(())
}

fn insert_purpose_key(tx: &mut Tx<'_>, k: &PurposeKeyRow) -> Result<(), StoreError> {
    tx.insert(
        &format!(
            "INSERT INTO purpose_keys ({PURPOSE_KEY_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ),
        &[
            &k.purpose.as_str(),
            &i64::from(k.version),
            &k.state.as_str(),
            &k.algorithm.as_str(),
            &k.wrapped,
            &k.created_at,
            &k.retired_at,
            &k.destroy_after,
            &k.destroyed_at,
            &k.barred,
            &k.mac,
        ],
        || format!("purpose key `{}` v{}", k.purpose, k.version),
    )?;
    Ok(())
}

/// Writes the state, dates, bar and MAC of `row` where its state is `from`; the count changed.
/// Writes `change.row` over the stored row when its MAC is still `change.prev_mac`; the rows
/// written (0 or 1).
fn update_key_row(tx: &mut Tx<'_>, change: &KeyRowChange) -> Result<u64, StoreError> {
    let row = &change.row;
    tx.exec(
        "UPDATE purpose_keys SET state = $4, retired_at = $5, destroy_after = $6,
            destroyed_at = $7, barred = $8, mac = $9
         WHERE purpose = $1 AND version = $2 AND mac = $3",
        &[
            &row.purpose.as_str(),
            &i64::from(row.version),
            &change.prev_mac,
            &row.state.as_str(),
            &row.retired_at,
            &row.destroy_after,
            &row.destroyed_at,
            &row.barred,
            &row.mac,
        ],
    )
}

/// Fails with `NotLive` unless the purpose key version is the active one: a key wrapped just
/// before a rotation (or by a node that has not seen it yet) must not land on a retired or
/// destroyed version; the core wraps it again under the active one.
fn check_version_live(tx: &mut Tx<'_>, purpose: &str, version: u32) -> Result<(), StoreError> {
    let state: Option<String> = tx
        .opt(
            "SELECT state FROM purpose_keys WHERE purpose = $1 AND version = $2 FOR SHARE",
            &[&purpose, &i64::from(version)],
        )?
        .map(|r| get(&r, 0))
        .transpose()?;
    match state.as_deref() {
        Some("active") => Ok(()),
        _ => Err(StoreError::NotLive {
            purpose: purpose.to_owned(),
            version,
        }),
    }
}

/// Fails with `StaleGeneration` when the subject key a value was sealed under does not exist: a
/// rekey replaced it while the value was being sealed.
fn check_key_exists(
    tx: &mut Tx<'_>,
    subject: &str,
    purpose: &str,
    generation: u32,
) -> Result<(), StoreError> {
    let found = tx.opt(
        "SELECT 1 FROM subject_keys WHERE subject = $1 AND purpose = $2 AND generation = $3",
        &[&subject, &purpose, &i64::from(generation)],
    )?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::StaleGeneration {
            subject: subject.to_owned(),
            generation,
        }),
    }
}

fn select_subject_key(
    tx: &mut Tx<'_>,
    subject: &str,
    purpose: &str,
) -> Result<Option<SubjectKeyRow>, StoreError> {
    tx.opt(
        &format!(
            "SELECT {SUBJECT_KEY_COLUMNS} FROM subject_keys
             WHERE subject = $1 AND purpose = $2 ORDER BY generation DESC LIMIT 1"
        ),
        &[&subject, &purpose],
    )?
    .map(|r| subject_key_from_row(&r))
    .transpose()
}

/// A record's purpose and labels as stored: its name, and JSON text.
fn stored_as(record: &RecordRow) -> Result<(&'static str, String), StoreError> {
    let labels =
        serde_json::to_string(&record.labels).map_err(|e| StoreError::Database(e.to_string()))?;
    Ok((record.purpose.as_str(), labels))
}

/// The entry of `all` a row of a statement over an array answers: the row's first column is
/// the 1-based place in the array of the `what` (a read, a subject) it is about.
fn at_place<'a, T>(all: &'a mut [T], row: &Row, what: &str) -> Result<&'a mut T, StoreError> {
    let place: i32 = get(row, 0)?;
    let count = all.len();
    usize::try_from(place)
        .ok()
        .and_then(|p| p.checked_sub(1))
        .and_then(|p| all.get_mut(p))
        .ok_or_else(|| StoreError::Database(format!("a row for {what} {place} of {count}")))
}

/// The parameters `$1` to `$10` of an insert of a record's row, in the order of
/// `RECORD_COLUMNS`; `stored` is the record's purpose and `labels_json`.
fn record_params<'a>(
    record: &'a RecordRow,
    stored: &'a (&'static str, String),
) -> [&'a (dyn ToSql + Sync); 10] {
    [
        &record.id,
        &record.subject,
        &stored.0,
        &stored.1,
        &record.created_at,
        &record.updated_at,
        &record.closed_at,
        &record.expires_at,
        &record.mac,
        &record.fields_mac,
    ]
}

/// Inserts a record's row (not its fields); `Exists` when the id is taken.
fn insert_record_row(tx: &mut Tx<'_>, record: &RecordRow) -> Result<(), StoreError> {
    let stored = stored_as(record)?;
    tx.insert(
        &format!(
            "INSERT INTO records ({RECORD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ),
        &record_params(record, &stored),
        || format!("record `{}`", record.id),
    )?;
    Ok(())
}

/// Deletes one unfinished upload (its segments go by cascade) and the record it created when
/// that holds nothing else.
fn discard_one(tx: &mut Tx<'_>, evidence_id: &str) -> Result<bool, StoreError> {
    let Some(found) = tx.opt(
        "SELECT record_id, owns_record FROM evidence WHERE id = $1 AND NOT complete",
        &[&evidence_id],
    )?
    else {
        return Ok(false);
    };
    let record_id: String = get(&found, 0)?;
    let owns_record: bool = get(&found, 1)?;
    tx.exec("DELETE FROM evidence WHERE id = $1", &[&evidence_id])?;
    if owns_record {
        let gone = tx.opt(
            "DELETE FROM records WHERE id = $1
             AND NOT EXISTS (SELECT 1 FROM fields WHERE record_id = $1)
             AND NOT EXISTS (SELECT 1 FROM evidence WHERE record_id = $1)
             RETURNING subject, purpose",
            &[&record_id],
        )?;
        if let Some(gone) = gone {
            let (subject, purpose): (String, String) = (get(&gone, 0)?, get(&gone, 1)?);
            if shred_when_last(tx, &subject, &purpose)? {
                bump_epoch(tx)?;
            }
        }
    }
    Ok(true)
}

/// Deletes the subject key of `purpose` of `subject` when no record of theirs under that purpose
/// is left (crypto-shredding), in the transaction that deleted their last one; true when it went.
/// The caller tells the other nodes (`bump_epoch`).
fn shred_when_last(tx: &mut Tx<'_>, subject: &str, purpose: &str) -> Result<bool, StoreError> {
    let left = tx.count(
        "SELECT count(*) FROM records WHERE subject = $1 AND purpose = $2",
        &[&subject, &purpose],
    )?;
    if left == 0 {
        tx.exec(
            "DELETE FROM subject_keys WHERE subject = $1 AND purpose = $2",
            &[&subject, &purpose],
        )?;
    }
    Ok(left == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> String {
        match parse_url(url) {
            Err(StoreError::Config(m)) => m,
            Err(e) => panic!("{url}: unexpected error {e}"),
            Ok(_) => panic!("{url}: accepted"),
        }
    }

    #[test]
    fn plaintext_only_over_a_socket_or_loopback() {
        for url in [
            "host=/run/postgresql dbname=kluis",
            "postgresql://kluis@localhost:5432/kluis",
            "postgresql://kluis@127.0.0.1/kluis?sslmode=disable",
            "host=::1 dbname=kluis sslmode=disable",
        ] {
            let (_, tls, _) = parse_url(url).unwrap();
            assert!(matches!(tls, Tls::Plain), "{url}");
        }
        let m = refused("postgresql://kluis@db.example.org/kluis");
        assert!(m.contains("verify-full"), "{m}");
        let m = refused("postgresql://kluis@db.example.org/kluis?sslmode=disable");
        assert!(m.contains("without TLS"), "{m}");
    }

    #[test]
    fn modes_that_fall_back_or_do_not_verify_are_refused() {
        for mode in ["prefer", "allow"] {
            let m = refused(&format!("postgresql://k@db.example.org/k?sslmode={mode}"));
            assert!(m.contains("falls back to plaintext"), "{m}");
            // Also over loopback: a mode that says "maybe" is never what a vault means.
            refused(&format!("host=localhost dbname=k sslmode={mode}"));
        }
        for mode in ["require", "verify-ca"] {
            let m = refused(&format!("postgresql://k@db.example.org/k?sslmode={mode}"));
            assert!(m.contains("verify-full"), "{m}");
        }
        refused("postgresql://k@db.example.org/k?sslmode=sometimes");
    }

    #[test]
    fn verify_full_needs_a_readable_root_certificate() {
        let m = refused("postgresql://k@db.example.org/k?sslmode=verify-full");
        assert!(m.contains("sslrootcert"), "{m}");
        let m = refused(
            "postgresql://k@db.example.org/k?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        );
        assert!(m.contains("/nonexistent/ca.pem"), "{m}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let m = refused(&format!(
            "postgresql://k@db.example.org/k?sslmode=verify-full&sslrootcert={}",
            empty.display()
        ));
        assert!(m.contains("no certificate"), "{m}");
    }

    #[test]
    fn targets_do_not_show_passwords() {
        let (_, _, target) =
            parse_url("postgresql://kluis:s3cret-pw@localhost:5432/kluis").unwrap();
        assert!(!target.contains("s3cret"), "{target}");
        assert!(target.contains("localhost"), "{target}");
        let m = refused("postgresql://kluis:s3cret-pw@db.example.org/kluis");
        assert!(!m.contains("s3cret"), "{m}");
    }

    #[test]
    fn urls_name_postgres_stores() {
        assert!(is_postgres_url("postgresql://k@localhost/k"));
        assert!(is_postgres_url("postgres://k@localhost/k"));
        assert!(is_postgres_url("host=/tmp dbname=k"));
        assert!(!is_postgres_url("/var/lib/kluis"));
    }
}
