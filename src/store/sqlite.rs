//! The embedded SQLite store (rusqlite, bundled): one file, WAL mode, `synchronous = FULL` so a
//! committed audit entry survives a power cut, `secure_delete` so deleted ciphertext is
//! overwritten, and numbered schema migrations tracked in `PRAGMA user_version`.
//!
//! One writer connection behind a mutex (SQLite allows one writer at a time anyway) and a small
//! pool of reader connections, which WAL lets run beside the writer. Storing a record and a new
//! subject key, the writes of every `PutRecord`, are group-committed (`sqlite/group.rs`): callers
//! writing at the same time share one commit.

mod group;

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{
    AnchorRow, AuditRow, ConsentRow, EvidenceMeta, EvidenceRow, FieldMeta, FieldRow, FieldsMac,
    HoldRow, MandateRow, PurposeKeyRow, RecordRow, RequestRow, ResealItem, SegmentRow, Store,
    StoreError, SubjectFacts, SubjectKeyRow, TokenRow,
};

/// The migrations, in order; `PRAGMA user_version` counts how many have run.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE purpose_keys (
    purpose       TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    state         TEXT    NOT NULL,
    algorithm     TEXT    NOT NULL,
    wrapped       BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    retired_at    INTEGER,
    destroy_after INTEGER,
    destroyed_at  INTEGER,
    PRIMARY KEY (purpose, version)
);
CREATE TABLE purpose_settings (
    purpose             TEXT PRIMARY KEY,
    min_decrypt_version INTEGER NOT NULL
);
CREATE TABLE key_jobs (
    purpose    TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    started_at INTEGER NOT NULL,
    PRIMARY KEY (purpose, kind)
);
CREATE TABLE subject_keys (
    subject         TEXT    NOT NULL,
    purpose         TEXT    NOT NULL,
    generation      INTEGER NOT NULL,
    purpose_version INTEGER NOT NULL,
    wrapped         BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (subject, purpose, generation)
);
CREATE INDEX subject_keys_by_version ON subject_keys (purpose, purpose_version);
CREATE TABLE records (
    id         TEXT PRIMARY KEY,
    subject    TEXT    NOT NULL,
    purpose    TEXT    NOT NULL,
    labels     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    closed_at  INTEGER,
    expires_at INTEGER
);
CREATE INDEX records_by_subject ON records (subject, created_at);
CREATE TABLE fields (
    record_id TEXT NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    category  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    key_gen   INTEGER NOT NULL,
    sealed    BLOB NOT NULL,
    PRIMARY KEY (record_id, name)
) WITHOUT ROWID;
CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    hash          BLOB    NOT NULL UNIQUE,
    principal     TEXT    NOT NULL,
    roles         TEXT    NOT NULL,
    scope_subject TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);
CREATE TABLE holds (
    id          TEXT PRIMARY KEY,
    subject     TEXT    NOT NULL,
    record_id   TEXT,
    reason      TEXT    NOT NULL,
    case_ref    TEXT    NOT NULL,
    placed_by   TEXT    NOT NULL,
    placed_at   INTEGER NOT NULL,
    released_at INTEGER,
    released_by TEXT
);
CREATE INDEX holds_by_subject ON holds (subject);
CREATE TABLE subject_requests (
    id           TEXT PRIMARY KEY,
    subject      TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    due_at       INTEGER NOT NULL,
    opened_by    TEXT    NOT NULL,
    completed_at INTEGER,
    note         TEXT    NOT NULL
);
CREATE INDEX records_by_expiry ON records (expires_at);
CREATE TABLE consents (
    subject     TEXT    NOT NULL,
    purpose     TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    recorded_by TEXT    NOT NULL,
    PRIMARY KEY (subject, purpose)
);
CREATE TABLE mandates (
    id             TEXT PRIMARY KEY,
    subject        TEXT    NOT NULL,
    representative TEXT    NOT NULL,
    purposes       TEXT    NOT NULL,
    categories     TEXT    NOT NULL,
    valid_from     INTEGER NOT NULL,
    valid_until    INTEGER NOT NULL,
    granted_by     TEXT    NOT NULL,
    revoked_at     INTEGER
);
CREATE INDEX mandates_by_representative ON mandates (representative);
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    entry     BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL,
    mac       BLOB NOT NULL
);
",
    r"
CREATE TABLE evidence (
    id          TEXT PRIMARY KEY,
    record_id   TEXT    NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    category    TEXT    NOT NULL,
    media_type  TEXT    NOT NULL,
    file_name   BLOB    NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,
    salt        BLOB    NOT NULL,
    complete    INTEGER NOT NULL,
    owns_record INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (record_id, name)
);
CREATE TABLE evidence_segments (
    evidence_id TEXT    NOT NULL REFERENCES evidence (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    key_gen     INTEGER NOT NULL,
    sealed      BLOB    NOT NULL,
    PRIMARY KEY (evidence_id, idx)
);
",
    // Two-person approval of tokens that read personal data, and root changes.
    r"
ALTER TABLE tokens ADD COLUMN requested_by TEXT;
ALTER TABLE tokens ADD COLUMN needs_approval INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN approved_by TEXT;
ALTER TABLE tokens ADD COLUMN approved_at INTEGER;
",
    // Rows that grant, withhold or shape access or retention carry a MAC computed by the core.
    r"
ALTER TABLE tokens ADD COLUMN mac BLOB NOT NULL DEFAULT x'';
ALTER TABLE holds ADD COLUMN mac BLOB NOT NULL DEFAULT x'';
ALTER TABLE mandates ADD COLUMN mac BLOB NOT NULL DEFAULT x'';
ALTER TABLE consents ADD COLUMN mac BLOB NOT NULL DEFAULT x'';
ALTER TABLE records ADD COLUMN mac BLOB NOT NULL DEFAULT x'';
ALTER TABLE fields ADD COLUMN mac BLOB NOT NULL DEFAULT x'';
ALTER TABLE fields ADD COLUMN version TEXT NOT NULL DEFAULT '';
ALTER TABLE subject_requests ADD COLUMN mac BLOB NOT NULL DEFAULT x'';
ALTER TABLE evidence ADD COLUMN mac BLOB NOT NULL DEFAULT x'';
",
    // Purpose key states carry a MAC too, and the minimum decryption version lives in the rows
    // it bars (a deleted settings row must not lower it).
    r"
ALTER TABLE purpose_keys ADD COLUMN barred INTEGER NOT NULL DEFAULT 0;
ALTER TABLE purpose_keys ADD COLUMN mac BLOB NOT NULL DEFAULT x'';
UPDATE purpose_keys SET barred = 1
 WHERE version < (SELECT s.min_decrypt_version FROM purpose_settings s
                  WHERE s.purpose = purpose_keys.purpose);
DROP TABLE purpose_settings;
",
    // A subject's anchor counts its holds and consent states, so a deleted row is noticed.
    r"
CREATE TABLE subject_anchors (
    subject  TEXT PRIMARY KEY,
    holds    INTEGER NOT NULL,
    consents INTEGER NOT NULL,
    mac      BLOB    NOT NULL
);
ALTER TABLE records ADD COLUMN fields_mac BLOB NOT NULL DEFAULT x'';
",
];

/// Reader connections kept open between reads. Opening one parses the schema and loses its
/// prepared statements, so the pool must cover the reads in flight at once (one per blocking
/// request; the server allows 256 streams per connection, and every case app holds one or a few).
/// A connection caches at most SQLite's default 2 MiB of pages.
const MAX_IDLE_READERS: usize = 64;

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    group: group::Group,
    /// A checkpoint after a destruction was held up: the next write tries again.
    checkpoint_owed: std::sync::atomic::AtomicBool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)?;
        let writer = open_connection(path, true)?;
        migrate(&writer)?;
        Ok(Self {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            group: group::Group::default(),
            checkpoint_owed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        let conn = self
            .writer
            .lock()
            .map_err(|_| StoreError::Database("writer lock poisoned".into()))?;
        if self
            .checkpoint_owed
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.truncate_log(&conn);
        }
        Ok(conn)
    }

    /// Empties the write-ahead log after a destruction (see `checkpoint_truncate`); when readers
    /// hold it up past the retry, the next write tries again.
    fn truncate_log(&self, conn: &Connection) {
        let done = checkpoint_truncate(conn);
        self.checkpoint_owed
            .store(!done, std::sync::atomic::Ordering::Relaxed);
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = {
            let mut idle = self
                .readers
                .lock()
                .map_err(|_| StoreError::Database("pool lock poisoned".into()))?;
            idle.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.path, false)?,
        };
        let result = f(&conn).map_err(db);
        if let Ok(mut idle) = self.readers.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(conn);
        }
        result
    }
}

/// Creates the database file readable by its owner only, before SQLite does (SQLite gives the
/// `-wal` and `-shm` files the same permissions as the database).
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map(drop)
        .map_err(|e| StoreError::Database(format!("cannot create `{}`: {e}", path.display())))
}

fn open_connection(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;",
    )
    .map_err(db)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db)?;
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
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
        let tx = conn.unchecked_transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(None, "user_version", i + 1).map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(())
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(RecordRow, String)> {
    Ok((
        RecordRow {
            id: r.get(0)?,
            subject: r.get(1)?,
            purpose: r.get(2)?,
            labels: Default::default(),
            created_at: r.get(4)?,
            updated_at: r.get(5)?,
            closed_at: r.get(6)?,
            expires_at: r.get(7)?,
            mac: r.get(8)?,
            fields_mac: r.get(9)?,
        },
        r.get(3)?,
    ))
}

fn with_labels((mut row, labels): (RecordRow, String)) -> Result<RecordRow, StoreError> {
    row.labels = serde_json::from_str(&labels)
        .map_err(|_| StoreError::Corrupt(format!("labels of `{}`", row.id)))?;
    Ok(row)
}

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    let roles: String = r.get(3)?;
    Ok(TokenRow {
        id: r.get(0)?,
        hash: r.get(1)?,
        principal: r.get(2)?,
        roles: roles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        scope_subject: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
        requested_by: r.get(8)?,
        needs_approval: r.get(9)?,
        approved_by: r.get(10)?,
        approved_at: r.get(11)?,
        mac: r.get(12)?,
    })
}

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    let seq: i64 = r.get(0)?;
    Ok(AuditRow {
        seq: u64::try_from(seq).unwrap_or(0),
        entry: r.get(1)?,
        prev_hash: r.get(2)?,
        hash: r.get(3)?,
        mac: r.get(4)?,
    })
}

const MANDATE_COLUMNS: &str = "id, subject, representative, purposes, categories, valid_from, valid_until, granted_by, revoked_at, mac";
const HOLD_COLUMNS: &str =
    "id, subject, record_id, reason, case_ref, placed_by, placed_at, released_at, released_by, mac";
const REQUEST_COLUMNS: &str =
    "id, subject, kind, received_at, due_at, opened_by, completed_at, note, mac";
/// SQL condition: no active hold covers record `r`.
/// The id of an active hold covering record `?1`, if any.
const HOLD_ON_RECORD: &str = "SELECT h.id FROM holds h JOIN records r ON h.subject = r.subject
    AND (h.record_id IS NULL OR h.record_id = r.id)
    WHERE r.id = ?1 AND h.released_at IS NULL ORDER BY h.placed_at, h.id LIMIT 1";

/// How long a connection waits for a lock another connection holds.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a checkpoint that readers hold up is retried before it is left to the next one.
const CHECKPOINT_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Moves the write-ahead log into the database and truncates it, so that no copy of a page
/// destroyed with `secure_delete` lingers in the log. SQLite answers a checkpoint that a reader
/// holds up with `busy`; that is retried for up to `CHECKPOINT_RETRY`, not taken as done.
/// Returns whether the log was emptied.
fn checkpoint_truncate(conn: &Connection) -> bool {
    // Without the connection's 10 s busy handler: a reader in the way answers `busy` at once,
    // and the retry below bounds the wait.
    let _ = conn.busy_timeout(std::time::Duration::ZERO);
    let done = checkpoint_retrying(conn);
    if let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
        tracing::warn!(error = %e, "cannot restore the busy timeout after a checkpoint");
    }
    done
}

fn checkpoint_retrying(conn: &Connection) -> bool {
    let deadline = std::time::Instant::now() + CHECKPOINT_RETRY;
    loop {
        let outcome = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match outcome {
            // Not busy, and every frame of the log was moved: the log is empty now.
            Ok((0, log, moved)) if log == moved || log <= 0 => return true,
            Ok(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok((busy, log, moved)) => {
                tracing::warn!(
                    busy,
                    log,
                    moved,
                    "WAL checkpoint held up by readers; the next destruction or checkpoint \
                     retries it"
                );
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; it happens at the next checkpoint");
                return false;
            }
        }
    }
}

const NOT_HELD: &str = "NOT EXISTS (SELECT 1 FROM holds h WHERE h.released_at IS NULL
    AND h.subject = r.subject AND (h.record_id IS NULL OR h.record_id = r.id))";

const TOKEN_COLUMNS: &str = "id, hash, principal, roles, scope_subject, created_at, expires_at, \
     revoked_at, requested_by, needs_approval, approved_by, approved_at, mac";
const RECORD_COLUMNS: &str =
    "id, subject, purpose, labels, created_at, updated_at, closed_at, expires_at, mac, fields_mac";

impl Store for SqliteStore {
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map_err(db)?;
        Ok(())
    }

    fn initialize(
        &self,
        meta: &[(&str, Vec<u8>)],
        purpose_keys: &[PurposeKeyRow],
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let existing: i64 = tx
            .query_row("SELECT count(*) FROM meta", [], |r| r.get(0))
            .map_err(db)?;
        if existing > 0 {
            return Err(StoreError::AlreadyInitialized);
        }
        for (key, value) in meta {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map_err(db)?;
        }
        for k in purpose_keys {
            insert_purpose_key(&tx, k)?;
        }
        tx.commit().map_err(db)
    }

    fn purpose_keys(&self, purpose: &str) -> Result<Vec<PurposeKeyRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {PURPOSE_KEY_COLUMNS} FROM purpose_keys WHERE purpose = ?1 ORDER BY version"
            ))?;
            stmt.query_map([purpose], purpose_key_from_row)?.collect()
        })
    }

    fn subject_key(
        &self,
        subject: &str,
        purpose: &str,
    ) -> Result<Option<SubjectKeyRow>, StoreError> {
        self.read(|c| select_subject_key(c, subject, purpose))
    }

    fn insert_subject_key(
        &self,
        row: &SubjectKeyRow,
        anchor: &AnchorRow,
    ) -> Result<SubjectKeyRow, StoreError> {
        let row = row.clone();
        let anchor = anchor.clone();
        self.group.run(&self.writer, move |tx| {
            check_version_live(tx, &row.purpose, row.purpose_version)?;
            tx.prepare_cached(
                "INSERT INTO subject_anchors (subject, holds, consents, mac) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (subject) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    anchor.subject,
                    anchor.holds,
                    anchor.consents,
                    anchor.mac
                ])
            })
            .map_err(db)?;
            tx.prepare_cached(
                "INSERT INTO subject_keys (subject, purpose, generation, purpose_version, wrapped, created_at)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6
                 WHERE NOT EXISTS (SELECT 1 FROM subject_keys WHERE subject = ?1 AND purpose = ?2)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    row.subject,
                    row.purpose,
                    row.generation,
                    row.purpose_version,
                    row.wrapped,
                    row.created_at
                ])
            })
            .map_err(db)?;
            select_subject_key(tx, &row.subject, &row.purpose)
                .map_err(db)?
                .ok_or_else(|| StoreError::Database("subject key vanished after insert".into()))
        })
    }

    fn rotate_purpose_key(
        &self,
        retired: Option<&PurposeKeyRow>,
        new: &PurposeKeyRow,
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let active: i64 = tx
            .query_row(
                "SELECT count(*) FROM purpose_keys WHERE purpose = ?1 AND state = 'active'",
                [&new.purpose],
                |r| r.get(0),
            )
            .map_err(db)?;
        let retired_ok = match retired {
            Some(old) => active == 1 && update_key_row(&tx, old, "active").map_err(db)? == 1,
            None => active == 0,
        };
        if !retired_ok {
            return Err(StoreError::Stale(format!(
                "the active version of purpose key `{}`",
                new.purpose
            )));
        }
        insert_purpose_key(&tx, new)?;
        tx.commit().map_err(db)
    }

    fn update_purpose_key(&self, row: &PurposeKeyRow, from: &str) -> Result<bool, StoreError> {
        let conn = self.write()?;
        Ok(update_key_row(&conn, row, from).map_err(db)? > 0)
    }

    fn destroy_purpose_key(&self, row: &PurposeKeyRow) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let in_use: i64 = tx
            .query_row(
                "SELECT count(*) FROM subject_keys WHERE purpose = ?1 AND purpose_version = ?2",
                params![row.purpose, row.version],
                |r| r.get(0),
            )
            .map_err(db)?;
        if in_use > 0 {
            return Err(StoreError::InUse(u64::try_from(in_use).unwrap_or(0)));
        }
        tx.execute(
            "UPDATE purpose_keys SET state = ?3, wrapped = x'', destroyed_at = ?4,
                destroy_after = ?5, barred = ?6, mac = ?7
             WHERE purpose = ?1 AND version = ?2",
            params![
                row.purpose,
                row.version,
                row.state,
                row.destroyed_at,
                row.destroy_after,
                row.barred,
                row.mac
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        // `secure_delete` overwrote the old material in the database pages; move the WAL into the
        // database and truncate it so no copy of the old page lingers there either.
        self.truncate_log(&conn);
        Ok(())
    }

    fn rewrap_root(
        &self,
        keys: &[PurposeKeyRow],
        meta: &[(&str, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        for k in keys {
            tx.execute(
                "UPDATE purpose_keys SET wrapped = ?3
                 WHERE purpose = ?1 AND version = ?2 AND state != 'destroyed' AND wrapped != x''",
                params![k.purpose, k.version, k.wrapped],
            )
            .map_err(db)?;
        }
        for (key, value) in meta {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        // The purpose keys wrapped under the old root key must not linger in the log.
        self.truncate_log(&conn);
        Ok(())
    }

    fn set_min_decrypt_version(
        &self,
        purpose: &str,
        version: u32,
        barred: &[PurposeKeyRow],
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let older: i64 = tx
            .query_row(
                "SELECT count(*) FROM subject_keys WHERE purpose = ?1 AND purpose_version < ?2",
                params![purpose, version],
                |r| r.get(0),
            )
            .map_err(db)?;
        if older > 0 {
            return Err(StoreError::InUse(u64::try_from(older).unwrap_or(0)));
        }
        for row in barred {
            if row.purpose != purpose || row.version >= version || !row.barred {
                return Err(StoreError::Corrupt(format!(
                    "purpose key `{}` v{} is not barred below v{version}",
                    row.purpose, row.version
                )));
            }
            tx.execute(
                "UPDATE purpose_keys SET barred = 1, mac = ?3 WHERE purpose = ?1 AND version = ?2",
                params![row.purpose, row.version, row.mac],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    fn subject_key_counts(&self, purpose: &str) -> Result<Vec<(u32, u64)>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT purpose_version, count(*) FROM subject_keys WHERE purpose = ?1
                 GROUP BY purpose_version ORDER BY purpose_version",
            )?
            .query_map([purpose], |r| {
                let n: i64 = r.get(1)?;
                Ok((r.get(0)?, u64::try_from(n).unwrap_or(0)))
            })?
            .collect()
        })
    }

    fn subject_keys_below(
        &self,
        purpose: &str,
        version: u32,
        limit: usize,
    ) -> Result<Vec<SubjectKeyRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {SUBJECT_KEY_COLUMNS} FROM subject_keys
                 WHERE purpose = ?1 AND purpose_version < ?2 LIMIT ?3"
            ))?
            .query_map(params![purpose, version, limit], subject_key_from_row)?
            .collect()
        })
    }

    fn rewrap_subject_keys(
        &self,
        rows: &[SubjectKeyRow],
        from: &[u32],
    ) -> Result<usize, StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let mut n = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE subject_keys SET purpose_version = ?4, wrapped = ?5
                     WHERE subject = ?1 AND purpose = ?2 AND generation = ?3 AND purpose_version = ?6",
                )
                .map_err(db)?;
            for (row, old) in rows.iter().zip(from) {
                n += stmt
                    .execute(params![
                        row.subject,
                        row.purpose,
                        row.generation,
                        row.purpose_version,
                        row.wrapped,
                        old
                    ])
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(n)
    }

    fn subject_key_at(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
    ) -> Result<Option<SubjectKeyRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {SUBJECT_KEY_COLUMNS} FROM subject_keys
                 WHERE subject = ?1 AND purpose = ?2 AND generation = ?3"
            ))?
            .query_row(params![subject, purpose, generation], subject_key_from_row)
            .optional()
        })
    }

    fn subjects_keyed_before(
        &self,
        purpose: &str,
        before: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            c.prepare_cached(
                "SELECT subject FROM subject_keys k WHERE purpose = ?1
                 AND generation = (SELECT max(generation) FROM subject_keys
                                   WHERE subject = k.subject AND purpose = k.purpose)
                 AND created_at < ?2
                 ORDER BY subject LIMIT ?3",
            )?
            .query_map(params![purpose, before, limit], |r| r.get(0))?
            .collect()
        })
    }

    fn rekey_subject(
        &self,
        new_key: &SubjectKeyRow,
        before: i64,
        reseal: &mut super::Reseal<'_>,
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let current = select_subject_key(&tx, &new_key.subject, &new_key.purpose).map_err(db)?;
        match current {
            Some(k) if k.created_at < before && k.generation < new_key.generation => {}
            _ => return Ok(None),
        }
        check_version_live(&tx, &new_key.purpose, new_key.purpose_version)?;
        tx.execute(
            &format!(
                "INSERT INTO subject_keys ({SUBJECT_KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            params![
                new_key.subject,
                new_key.purpose,
                new_key.generation,
                new_key.purpose_version,
                new_key.wrapped,
                new_key.created_at
            ],
        )
        .map_err(db)?;
        let fields: Vec<(String, FieldRow)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT f.record_id, f.name, f.category, f.kind, f.key_gen, f.sealed, f.mac,
                        f.version
                     FROM fields f JOIN records r ON r.id = f.record_id
                     WHERE r.subject = ?1 AND r.purpose = ?2 AND f.key_gen < ?3",
                )
                .map_err(db)?;
            stmt.query_map(
                params![new_key.subject, new_key.purpose, new_key.generation],
                |r| {
                    Ok((
                        r.get(0)?,
                        FieldRow {
                            name: r.get(1)?,
                            category: r.get(2)?,
                            kind: r.get(3)?,
                            key_gen: r.get(4)?,
                            sealed: r.get(5)?,
                            mac: r.get(6)?,
                            version: r.get(7)?,
                        },
                    ))
                },
            )
            .map_err(db)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db)?
        };
        {
            let mut update = tx
                .prepare_cached("UPDATE fields SET sealed = ?3, key_gen = ?4 WHERE record_id = ?1 AND name = ?2")
                .map_err(db)?;
            for (record_id, field) in &fields {
                let sealed = reseal(ResealItem::Field { record_id, field })?;
                update
                    .execute(params![record_id, field.name, sealed, new_key.generation])
                    .map_err(db)?;
            }
        }
        let segments = reseal_segments(&tx, new_key, reseal)?;
        tx.execute(
            "DELETE FROM subject_keys WHERE subject = ?1 AND purpose = ?2 AND generation < ?3",
            params![new_key.subject, new_key.purpose, new_key.generation],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Some(
            u64::try_from(fields.len())
                .unwrap_or(0)
                .saturating_add(segments),
        ))
    }

    fn orphan_fields(&self, purpose: &str) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT (SELECT count(*) FROM fields f JOIN records r ON r.id = f.record_id
                 WHERE r.purpose = ?1 AND NOT EXISTS (
                    SELECT 1 FROM subject_keys k
                    WHERE k.subject = r.subject AND k.purpose = r.purpose AND k.generation = f.key_gen))
                 + (SELECT count(*) FROM evidence_segments s
                    JOIN evidence e ON e.id = s.evidence_id JOIN records r ON r.id = e.record_id
                 WHERE r.purpose = ?1 AND e.complete = 1 AND NOT EXISTS (
                    SELECT 1 FROM subject_keys k
                    WHERE k.subject = r.subject AND k.purpose = r.purpose AND k.generation = s.key_gen))",
                [purpose],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
        })
    }

    fn start_key_job(&self, purpose: &str, kind: &str, at: i64) -> Result<i64, StoreError> {
        let conn = self.write()?;
        conn.execute(
            "INSERT INTO key_jobs (purpose, kind, started_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (purpose, kind) DO NOTHING",
            params![purpose, kind, at],
        )
        .map_err(db)?;
        conn.query_row(
            "SELECT started_at FROM key_jobs WHERE purpose = ?1 AND kind = ?2",
            params![purpose, kind],
            |r| r.get(0),
        )
        .map_err(db)
    }

    fn finish_key_job(&self, purpose: &str, kind: &str) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute(
            "DELETE FROM key_jobs WHERE purpose = ?1 AND kind = ?2",
            params![purpose, kind],
        )
        .map_err(db)?;
        // A rekey deleted old subject keys and replaced ciphertexts, a rewrap replaced wrapped
        // keys: once per job, the log goes into the database (`secure_delete`) and is truncated.
        self.truncate_log(&conn);
        Ok(())
    }

    fn key_jobs(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT purpose, kind, started_at FROM key_jobs ORDER BY purpose, kind",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect()
        })
    }

    fn insert_record(&self, record: &RecordRow, fields: &[FieldRow]) -> Result<(), StoreError> {
        let (record, fields) = (record.clone(), fields.to_vec());
        self.group.run(&self.writer, move |tx| {
            insert_record_row(tx, &record)?;
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO fields (record_id, name, category, kind, key_gen, sealed, mac, version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db)?;
            for f in &fields {
                check_key_exists(tx, &record.subject, &record.purpose, f.key_gen)?;
                stmt.execute(params![
                    record.id, f.name, f.category, f.kind, f.key_gen, f.sealed, f.mac, f.version
                ])
                .map_err(|e| {
                    if is_constraint(&e) {
                        StoreError::Exists(format!("field `{}`", f.name))
                    } else {
                        db(e)
                    }
                })?;
            }
            Ok(())
        })
    }

    fn record(&self, id: &str) -> Result<Option<(RecordRow, Vec<FieldRow>)>, StoreError> {
        let found = self.read(|c| {
            // One read transaction: the record and its fields from one snapshot, so that its
            // field-set MAC is checked against the fields it was written with.
            let c = &c.unchecked_transaction()?;
            let Some(rec) = c
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1"
                ))?
                .query_row([id], record_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached(
                "SELECT name, category, kind, key_gen, sealed, mac, version FROM fields WHERE record_id = ?1 ORDER BY name",
            )?;
            let fields = stmt
                .query_map([id], |r| {
                    Ok(FieldRow {
                        name: r.get(0)?,
                        category: r.get(1)?,
                        kind: r.get(2)?,
                        key_gen: r.get(3)?,
                        sealed: r.get(4)?,
                        mac: r.get(5)?,
                        version: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some((rec, fields)))
        })?;
        found
            .map(|(rec, fields)| Ok((with_labels(rec)?, fields)))
            .transpose()
    }

    fn update_fields(
        &self,
        id: &str,
        fields: &[FieldRow],
        updated_at: i64,
        fields_mac: FieldsMac<'_>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let replaces = {
            let mut exists = tx
                .prepare_cached("SELECT 1 FROM fields WHERE record_id = ?1 AND name = ?2")
                .map_err(db)?;
            let mut any = false;
            for f in fields {
                any |= exists.exists(params![id, f.name]).map_err(db)?;
            }
            any
        };
        if replaces
            && let Some(hold) = tx
                .query_row(HOLD_ON_RECORD, [id], |r| r.get::<_, String>(0))
                .optional()
                .map_err(db)?
        {
            return Err(StoreError::Held(hold));
        }
        let n = tx
            .execute(
                "UPDATE records SET updated_at = ?2, fields_mac = ?4 WHERE id = ?1 AND fields_mac = ?3",
                params![id, updated_at, fields_mac.prev, fields_mac.next],
            )
            .map_err(db)?;
        if n == 0 {
            let exists = tx
                .query_row("SELECT 1 FROM records WHERE id = ?1", [id], |_| Ok(()))
                .optional()
                .map_err(db)?
                .is_some();
            return if exists {
                Err(StoreError::Stale(format!("the fields of record `{id}`")))
            } else {
                Ok(false)
            };
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO fields (record_id, name, category, kind, key_gen, sealed, mac, version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (record_id, name) DO UPDATE SET
                        category = excluded.category, kind = excluded.kind,
                        key_gen = excluded.key_gen, sealed = excluded.sealed, mac = excluded.mac,
                        version = excluded.version",
                )
                .map_err(db)?;
            let (subject, purpose): (String, String) = tx
                .query_row(
                    "SELECT subject, purpose FROM records WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(db)?;
            for f in fields {
                check_key_exists(&tx, &subject, &purpose, f.key_gen)?;
                stmt.execute(params![
                    id, f.name, f.category, f.kind, f.key_gen, f.sealed, f.mac, f.version
                ])
                .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        if replaces {
            // The replaced ciphertext was overwritten in the database pages (`secure_delete`);
            // move the log in too, so no old copy lingers there.
            self.truncate_log(&conn);
        }
        Ok(true)
    }

    fn begin_evidence(
        &self,
        new_record: Option<&RecordRow>,
        row: &EvidenceRow,
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        if let Some(record) = new_record {
            insert_record_row(&tx, record)?;
        }
        let taken: i64 = tx
            .query_row(
                "SELECT (SELECT count(*) FROM fields WHERE record_id = ?1 AND name = ?2)
                      + (SELECT count(*) FROM evidence WHERE record_id = ?1 AND name = ?2)",
                params![row.record_id, row.name],
                |r| r.get(0),
            )
            .map_err(db)?;
        if taken > 0 {
            return Err(StoreError::Exists(format!("field `{}`", row.name)));
        }
        tx.execute(
            &format!(
                "INSERT INTO evidence ({EVIDENCE_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                row.id,
                row.record_id,
                row.name,
                row.category,
                row.media_type,
                row.file_name,
                i64::try_from(row.size).unwrap_or(i64::MAX),
                row.sha256,
                row.salt,
                row.complete,
                row.owns_record,
                row.created_at,
                row.mac
            ],
        )
        .map_err(|e| {
            if is_constraint(&e) {
                StoreError::Missing(format!("record `{}`", row.record_id))
            } else {
                db(e)
            }
        })?;
        tx.commit().map_err(db)
    }

    fn append_segments(
        &self,
        evidence_id: &str,
        subject: &str,
        purpose: &str,
        segments: &[SegmentRow],
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        append_segments_tx(&mut conn, evidence_id, subject, purpose, segments)
    }

    fn finish_evidence(
        &self,
        evidence_id: &str,
        size: u64,
        segments: u64,
        sealed_name: &[u8],
        at: i64,
        mac: &[u8],
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let stored: i64 = tx
            .query_row(
                "SELECT count(*) FROM evidence_segments WHERE evidence_id = ?1",
                [evidence_id],
                |r| r.get(0),
            )
            .map_err(db)?;
        // A rekey that ran during the upload destroyed the key its segments were sealed under.
        let orphaned: i64 = tx
            .query_row(
                "SELECT count(*) FROM evidence_segments s
                 JOIN evidence e ON e.id = s.evidence_id JOIN records r ON r.id = e.record_id
                 WHERE s.evidence_id = ?1 AND NOT EXISTS (
                    SELECT 1 FROM subject_keys k WHERE k.subject = r.subject
                    AND k.purpose = r.purpose AND k.generation = s.key_gen)",
                [evidence_id],
                |r| r.get(0),
            )
            .map_err(db)?;
        if orphaned > 0 {
            return Err(StoreError::Stale(format!(
                "upload `{evidence_id}`: its subject key was replaced"
            )));
        }
        if u64::try_from(stored).ok() != Some(segments) {
            return Err(StoreError::Stale(format!(
                "upload `{evidence_id}` ({stored} of {segments} segments stored)"
            )));
        }
        let n = tx
            .execute(
                "UPDATE evidence SET complete = 1, size = ?2, file_name = ?3, sha256 = '', mac = ?4
                 WHERE id = ?1 AND complete = 0",
                params![
                    evidence_id,
                    i64::try_from(size).unwrap_or(i64::MAX),
                    sealed_name,
                    mac
                ],
            )
            .map_err(db)?;
        if n == 0 {
            return Err(StoreError::Missing(format!("upload `{evidence_id}`")));
        }
        tx.execute(
            "UPDATE records SET updated_at = ?2
             WHERE id = (SELECT record_id FROM evidence WHERE id = ?1)",
            params![evidence_id, at],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn discard_evidence(&self, evidence_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let found = discard_one(&tx, evidence_id)?;
        tx.commit().map_err(db)?;
        Ok(found)
    }

    fn discard_unfinished_evidence(&self) -> Result<u64, StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let ids: Vec<String> = tx
            .prepare("SELECT id FROM evidence WHERE complete = 0")
            .map_err(db)?
            .query_map([], |r| r.get(0))
            .map_err(db)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db)?;
        for id in &ids {
            discard_one(&tx, id)?;
        }
        tx.commit().map_err(db)?;
        Ok(u64::try_from(ids.len()).unwrap_or(0))
    }

    fn evidence(&self, evidence_id: &str) -> Result<Option<(RecordRow, EvidenceRow)>, StoreError> {
        let found = self.read(|c| {
            let Some(ev) = c
                .prepare_cached(&format!(
                    "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE id = ?1"
                ))?
                .query_row([evidence_id], evidence_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            let rec = c
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1"
                ))?
                .query_row([&ev.record_id], record_from_row)
                .optional()?;
            Ok(rec.map(|r| (r, ev)))
        })?;
        found.map(|(r, e)| Ok((with_labels(r)?, e))).transpose()
    }

    fn record_evidence(&self, record_id: &str) -> Result<Vec<EvidenceRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE record_id = ?1 AND complete = 1
                 ORDER BY name"
            ))?
            .query_map([record_id], evidence_from_row)?
            .collect()
        })
    }

    fn segment(&self, evidence_id: &str, index: u32) -> Result<Option<SegmentRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT idx, key_gen, sealed FROM evidence_segments
                 WHERE evidence_id = ?1 AND idx = ?2",
            )?
            .query_row(params![evidence_id, index], |r| {
                Ok(SegmentRow {
                    index: r.get(0)?,
                    key_gen: r.get(1)?,
                    sealed: r.get(2)?,
                })
            })
            .optional()
        })
    }

    fn delete_record(&self, id: &str) -> Result<Option<bool>, StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let Some((subject, purpose)) = tx
            .query_row(
                "SELECT subject, purpose FROM records WHERE id = ?1",
                [id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(db)?
        else {
            return Ok(None);
        };
        if let Some(hold) = tx
            .query_row(HOLD_ON_RECORD, [id], |r| r.get::<_, String>(0))
            .optional()
            .map_err(db)?
        {
            return Err(StoreError::Held(hold));
        }
        tx.execute("DELETE FROM fields WHERE record_id = ?1", [id])
            .map_err(db)?;
        // Evidence and its segments go with the record (foreign keys cascade).
        tx.execute("DELETE FROM records WHERE id = ?1", [id])
            .map_err(db)?;
        let left: i64 = tx
            .query_row(
                "SELECT count(*) FROM records WHERE subject = ?1 AND purpose = ?2",
                params![subject, purpose],
                |r| r.get(0),
            )
            .map_err(db)?;
        if left == 0 {
            tx.execute(
                "DELETE FROM subject_keys WHERE subject = ?1 AND purpose = ?2",
                params![subject, purpose],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        self.truncate_log(&conn);
        Ok(Some(left == 0))
    }

    fn subject_records(
        &self,
        subject: &str,
    ) -> Result<Vec<(RecordRow, Vec<FieldMeta>)>, StoreError> {
        let rows = self.read(|c| {
            // One read transaction: records and fields from one snapshot (see `record`).
            let c = &c.unchecked_transaction()?;
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE subject = ?1 ORDER BY created_at, id"
            ))?;
            let records = stmt.query_map([subject], record_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            let mut fstmt = c.prepare_cached(
                "SELECT name, category, length(sealed), kind, mac, version FROM fields WHERE record_id = ?1 ORDER BY name",
            )?;
            let mut out = Vec::with_capacity(records.len());
            for rec in records {
                let fields = fstmt
                    .query_map([&rec.0.id], |r| {
                        let size: i64 = r.get(2)?;
                        Ok(FieldMeta { name: r.get(0)?, category: r.get(1)?, size: u64::try_from(size).unwrap_or(0), evidence: None, kind: r.get(3)?, mac: r.get(4)?, version: r.get(5)? })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let mut fields = fields;
                fields.extend(
                    c.prepare_cached(&format!(
                        "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE record_id = ?1 AND complete = 1"
                    ))?
                    .query_map([&rec.0.id], evidence_from_row)?
                    .map(|e| e.map(|e| FieldMeta {
                        name: e.name,
                        category: e.category,
                        size: e.size,
                        evidence: Some(EvidenceMeta { id: e.id, media_type: e.media_type, sha256: e.sha256 }),
                        kind: String::new(),
                        version: String::new(),
                        mac: Vec::new(),
                    }))
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                );
                fields.sort_by(|a, b| a.name.cmp(&b.name));
                out.push((rec, fields));
            }
            Ok(out)
        })?;
        rows.into_iter()
            .map(|(rec, fields)| Ok((with_labels(rec)?, fields)))
            .collect()
    }

    fn close_record(
        &self,
        id: &str,
        closed_at: i64,
        expires_at: Option<i64>,
        mac: &[u8],
    ) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute(
                "UPDATE records SET closed_at = ?2, expires_at = ?3, updated_at = ?2, mac = ?4
                 WHERE id = ?1",
                params![id, closed_at, expires_at, mac],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn insert_hold(
        &self,
        row: &HoldRow,
        prev: Option<&AnchorRow>,
        next: &AnchorRow,
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        replace_anchor(&tx, prev, next)?;
        tx.execute(
            &format!(
                "INSERT INTO holds ({HOLD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                row.id,
                row.subject,
                row.record_id,
                row.reason,
                row.case_ref,
                row.placed_by,
                row.placed_at,
                row.released_at,
                row.released_by,
                row.mac
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn release_hold(&self, id: &str, at: i64, by: &str, mac: &[u8]) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute(
                "UPDATE holds SET released_at = ?2, released_by = ?3, mac = ?4
                 WHERE id = ?1 AND released_at IS NULL",
                params![id, at, by, mac],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn holds(&self, subject: Option<&str>, active_only: bool) -> Result<Vec<HoldRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {HOLD_COLUMNS} FROM holds
                 WHERE (?1 IS NULL OR subject = ?1) AND (?2 = 0 OR released_at IS NULL)
                 ORDER BY placed_at, id"
            ))?
            .query_map(params![subject, active_only], |r| {
                Ok(HoldRow {
                    id: r.get(0)?,
                    subject: r.get(1)?,
                    record_id: r.get(2)?,
                    reason: r.get(3)?,
                    case_ref: r.get(4)?,
                    placed_by: r.get(5)?,
                    placed_at: r.get(6)?,
                    released_at: r.get(7)?,
                    released_by: r.get(8)?,
                    mac: r.get(9)?,
                })
            })?
            .collect()
        })
    }

    fn expired_records(
        &self,
        now: i64,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<RecordRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (after_at, after_id) = match after {
            Some((at, id)) => (Some(at), id),
            None => (None, ""),
        };
        let rows = self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records r
                 WHERE expires_at IS NOT NULL AND expires_at <= ?1 AND {NOT_HELD}
                   AND (?3 IS NULL OR expires_at > ?3 OR (expires_at = ?3 AND id > ?4))
                 ORDER BY expires_at, id LIMIT ?2"
            ))?
            .query_map(params![now, limit, after_at, after_id], record_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(with_labels).collect()
    }

    fn shred_records(
        &self,
        subject: &str,
        record_ids: &[String],
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let mut destroyed = Vec::new();
        let mut purposes = std::collections::BTreeSet::new();
        for id in record_ids {
            let purpose: Option<String> = tx
                .query_row(
                    &format!("SELECT purpose FROM records r WHERE id = ?1 AND subject = ?2 AND {NOT_HELD}"),
                    params![id, subject],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            let Some(purpose) = purpose else { continue };
            tx.execute("DELETE FROM fields WHERE record_id = ?1", [id])
                .map_err(db)?;
            tx.execute("DELETE FROM records WHERE id = ?1", [id])
                .map_err(db)?;
            destroyed.push(id.clone());
            purposes.insert(purpose);
        }
        let mut shredded = Vec::new();
        for purpose in purposes {
            let left: i64 = tx
                .query_row(
                    "SELECT count(*) FROM records WHERE subject = ?1 AND purpose = ?2",
                    params![subject, purpose],
                    |r| r.get(0),
                )
                .map_err(db)?;
            if left == 0 {
                tx.execute(
                    "DELETE FROM subject_keys WHERE subject = ?1 AND purpose = ?2",
                    params![subject, purpose],
                )
                .map_err(db)?;
                shredded.push(purpose);
            }
        }
        tx.commit().map_err(db)?;
        // `secure_delete` overwrote the rows in the database pages; fold the WAL in and truncate
        // it so no copy of them lingers there.
        self.truncate_log(&conn);
        Ok((destroyed, shredded))
    }

    fn set_consent(
        &self,
        row: &ConsentRow,
        prev: Option<&AnchorRow>,
        next: &AnchorRow,
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        replace_anchor(&tx, prev, next)?;
        tx.execute(
            "INSERT INTO consents (subject, purpose, state, at, recorded_by, mac)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (subject, purpose) DO UPDATE SET
                state = excluded.state, at = excluded.at, recorded_by = excluded.recorded_by,
                mac = excluded.mac",
            params![
                row.subject,
                row.purpose,
                row.state,
                row.at,
                row.recorded_by,
                row.mac
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn subject_facts(&self, subject: &str) -> Result<SubjectFacts, StoreError> {
        self.read(|c| {
            // One read transaction: the anchor and the rows it counts from one snapshot.
            let tx = c.unchecked_transaction()?;
            let anchor = select_anchor(&tx, subject)?;
            let consents = tx
                .prepare_cached(&format!(
                    "SELECT {CONSENT_COLUMNS} FROM consents WHERE subject = ?1 ORDER BY purpose"
                ))?
                .query_map([subject], consent_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let holds: u32 = tx
                .prepare_cached("SELECT count(*) FROM holds WHERE subject = ?1")?
                .query_row([subject], |r| r.get(0))?;
            let keyed: bool = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM subject_keys WHERE subject = ?1)
                         OR EXISTS (SELECT 1 FROM records WHERE subject = ?1)",
                )?
                .query_row([subject], |r| r.get(0))?;
            tx.finish()?;
            Ok(SubjectFacts {
                anchor,
                consents,
                holds,
                keyed,
            })
        })
    }

    fn anchors(&self) -> Result<Vec<AnchorRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT subject, holds, consents, mac FROM subject_anchors ORDER BY subject",
            )?
            .query_map([], anchor_from_row)?
            .collect()
        })
    }

    fn consents(&self, subject: &str) -> Result<Vec<ConsentRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {CONSENT_COLUMNS} FROM consents WHERE subject = ?1 ORDER BY purpose"
            ))?
            .query_map([subject], consent_from_row)?
            .collect()
        })
    }

    fn all_consents(&self) -> Result<Vec<ConsentRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {CONSENT_COLUMNS} FROM consents ORDER BY subject, purpose"
            ))?
            .query_map([], consent_from_row)?
            .collect()
        })
    }

    fn records_page(&self, after: &str, limit: usize) -> Result<Vec<RecordRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?
            .query_map(params![after, limit], record_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(with_labels).collect()
    }

    fn insert_mandate(&self, row: &MandateRow) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute(
            &format!("INSERT INTO mandates ({MANDATE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            params![
                row.id,
                row.subject,
                row.representative,
                row.purposes.join(","),
                row.categories.join(","),
                row.valid_from,
                row.valid_until,
                row.granted_by,
                row.revoked_at,
                row.mac
            ],
        )
        .map_err(db)?;
        Ok(())
    }

    fn revoke_mandate(&self, id: &str, at: i64, mac: &[u8]) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute(
                "UPDATE mandates SET revoked_at = ?2, mac = ?3 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at, mac],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn mandates(
        &self,
        subject: Option<&str>,
        representative: Option<&str>,
    ) -> Result<Vec<MandateRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {MANDATE_COLUMNS} FROM mandates
                 WHERE (?1 IS NULL OR subject = ?1) AND (?2 IS NULL OR representative = ?2)
                 ORDER BY valid_from, id"
            ))?
            .query_map(params![subject, representative], |r| {
                let purposes: String = r.get(3)?;
                let categories: String = r.get(4)?;
                let split = |s: &str| {
                    s.split(',')
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .collect()
                };
                Ok(MandateRow {
                    id: r.get(0)?,
                    subject: r.get(1)?,
                    representative: r.get(2)?,
                    purposes: split(&purposes),
                    categories: split(&categories),
                    valid_from: r.get(5)?,
                    valid_until: r.get(6)?,
                    granted_by: r.get(7)?,
                    revoked_at: r.get(8)?,
                    mac: r.get(9)?,
                })
            })?
            .collect()
        })
    }

    fn insert_request(&self, row: &RequestRow) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute(
            &format!("INSERT INTO subject_requests ({REQUEST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![row.id, row.subject, row.kind, row.received_at, row.due_at, row.opened_by, row.completed_at, row.note, row.mac],
        )
        .map_err(db)?;
        Ok(())
    }

    fn complete_request(&self, id: &str, at: i64, mac: &[u8]) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute(
                "UPDATE subject_requests SET completed_at = ?2, mac = ?3
                 WHERE id = ?1 AND completed_at IS NULL",
                params![id, at, mac],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn requests(&self) -> Result<Vec<RequestRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {REQUEST_COLUMNS} FROM subject_requests ORDER BY received_at, id"
            ))?
            .query_map([], |r| {
                Ok(RequestRow {
                    id: r.get(0)?,
                    subject: r.get(1)?,
                    kind: r.get(2)?,
                    received_at: r.get(3)?,
                    due_at: r.get(4)?,
                    opened_by: r.get(5)?,
                    completed_at: r.get(6)?,
                    note: r.get(7)?,
                    mac: r.get(8)?,
                })
            })?
            .collect()
        })
    }

    fn insert_token(&self, row: &TokenRow) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute(
            &format!(
                "INSERT INTO tokens ({TOKEN_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                row.id,
                row.hash,
                row.principal,
                row.roles.join(","),
                row.scope_subject,
                row.created_at,
                row.expires_at,
                row.revoked_at,
                row.requested_by,
                row.needs_approval,
                row.approved_by,
                row.approved_at,
                row.mac
            ],
        )
        .map_err(|e| {
            if is_constraint(&e) {
                StoreError::Exists(format!("token `{}`", row.id))
            } else {
                db(e)
            }
        })?;
        Ok(())
    }

    fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"
            ))?
            .query_row([hash], token_from_row)
            .optional()
        })
    }

    fn revoke_token(&self, id: &str, at: i64, mac: &[u8]) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute(
                "UPDATE tokens SET revoked_at = ?2, mac = ?3 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at, mac],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn approve_token(&self, id: &str, by: &str, at: i64, mac: &[u8]) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute(
                "UPDATE tokens SET approved_by = ?2, approved_at = ?3, mac = ?4
                 WHERE id = ?1 AND needs_approval = 1 AND approved_at IS NULL
                   AND revoked_at IS NULL",
                params![id, by, at, mac],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"
            ))?
            .query_map([], token_from_row)?
            .collect()
        })
    }

    fn snapshot(&self) -> Result<std::fs::File, StoreError> {
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        let tmp = dir.join(format!(
            ".backup-{}.db",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        create_private(&tmp)?;
        let result = (|| {
            let source = open_connection(&self.path, false)?;
            let mut target = Connection::open(&tmp).map_err(db)?;
            {
                let backup = rusqlite::backup::Backup::new(&source, &mut target).map_err(db)?;
                // All pages in one step: one read transaction, so one consistent snapshot while
                // writers go on beside it (WAL).
                match backup.step(-1).map_err(db)? {
                    rusqlite::backup::StepResult::Done => {}
                    _ => {
                        return Err(StoreError::Database(
                            "the database was busy; try the backup again".into(),
                        ));
                    }
                }
            }
            target.close().map_err(|(_, e)| db(e))?;
            std::fs::File::open(&tmp).map_err(|e| StoreError::Database(e.to_string()))
        })();
        // The open file stays readable; nothing of it is left behind in the data directory.
        let _ = std::fs::remove_file(&tmp);
        result
    }

    fn append_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO audit (seq, entry, prev_hash, hash, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(db)?;
            for row in rows {
                let seq = i64::try_from(row.seq)
                    .map_err(|_| StoreError::Database("audit sequence overflow".into()))?;
                stmt.execute(params![seq, row.entry, row.prev_hash, row.hash, row.mac])
                    .map_err(|e| {
                        if is_constraint(&e) {
                            StoreError::Exists(format!("audit entry {}", row.seq))
                        } else {
                            db(e)
                        }
                    })?;
            }
        }
        tx.commit().map_err(db)
    }

    fn audit_tail(&self) -> Result<Option<AuditRow>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT seq, entry, prev_hash, hash, mac FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                audit_from_row,
            )
            .optional()
        })
    }

    fn audit_entries(&self, from: u64, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            c.prepare_cached(
                "SELECT seq, entry, prev_hash, hash, mac FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![from, limit], audit_from_row)?
            .collect()
        })
    }
}

const PURPOSE_KEY_COLUMNS: &str = "purpose, version, state, algorithm, wrapped, created_at, retired_at, destroy_after, destroyed_at, barred, mac";

fn purpose_key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PurposeKeyRow> {
    Ok(PurposeKeyRow {
        purpose: r.get(0)?,
        version: r.get(1)?,
        state: r.get(2)?,
        algorithm: r.get(3)?,
        wrapped: r.get(4)?,
        created_at: r.get(5)?,
        retired_at: r.get(6)?,
        destroy_after: r.get(7)?,
        destroyed_at: r.get(8)?,
        barred: r.get(9)?,
        mac: r.get(10)?,
    })
}

fn anchor_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AnchorRow> {
    Ok(AnchorRow {
        subject: r.get(0)?,
        holds: r.get(1)?,
        consents: r.get(2)?,
        mac: r.get(3)?,
    })
}

fn select_anchor(c: &Connection, subject: &str) -> rusqlite::Result<Option<AnchorRow>> {
    c.prepare_cached(
        "SELECT subject, holds, consents, mac FROM subject_anchors WHERE subject = ?1",
    )?
    .query_row([subject], anchor_from_row)
    .optional()
}

/// Replaces the anchor `prev` (`None`: none stored) with `next`; `Stale` when the stored one
/// is not `prev`.
fn replace_anchor(
    c: &Connection,
    prev: Option<&AnchorRow>,
    next: &AnchorRow,
) -> Result<(), StoreError> {
    let stored = select_anchor(c, &next.subject).map_err(db)?;
    if stored.as_ref() != prev {
        return Err(StoreError::Stale(format!(
            "the anchor of subject `{}`",
            next.subject
        )));
    }
    c.execute(
        "INSERT INTO subject_anchors (subject, holds, consents, mac) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (subject) DO UPDATE SET
            holds = excluded.holds, consents = excluded.consents, mac = excluded.mac",
        params![next.subject, next.holds, next.consents, next.mac],
    )
    .map_err(db)?;
    Ok(())
}

/// Writes the state, dates, bar and MAC of `row` where its state is `from`; the count changed.
fn update_key_row(c: &Connection, row: &PurposeKeyRow, from: &str) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE purpose_keys SET state = ?4, retired_at = ?5, destroy_after = ?6,
            destroyed_at = ?7, barred = ?8, mac = ?9
         WHERE purpose = ?1 AND version = ?2 AND state = ?3",
        params![
            row.purpose,
            row.version,
            from,
            row.state,
            row.retired_at,
            row.destroy_after,
            row.destroyed_at,
            row.barred,
            row.mac
        ],
    )
}

fn insert_purpose_key(c: &Connection, k: &PurposeKeyRow) -> Result<(), StoreError> {
    c.execute(
        &format!(
            "INSERT INTO purpose_keys ({PURPOSE_KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ),
        params![
            k.purpose,
            k.version,
            k.state,
            k.algorithm,
            k.wrapped,
            k.created_at,
            k.retired_at,
            k.destroy_after,
            k.destroyed_at,
            k.barred,
            k.mac
        ],
    )
    .map_err(|e| {
        if is_constraint(&e) {
            StoreError::Exists(format!("purpose key `{}` v{}", k.purpose, k.version))
        } else {
            db(e)
        }
    })?;
    Ok(())
}

/// Fails with `NotLive` unless the purpose key version can still wrap keys (active or
/// decrypt-only): a key wrapped just before a rotation must not land on a destroyed version.
fn check_version_live(c: &Connection, purpose: &str, version: u32) -> Result<(), StoreError> {
    let state: Option<String> = c
        .query_row(
            "SELECT state FROM purpose_keys WHERE purpose = ?1 AND version = ?2",
            params![purpose, version],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    match state.as_deref() {
        Some("active" | "decrypt-only") => Ok(()),
        _ => Err(StoreError::NotLive {
            purpose: purpose.to_owned(),
            version,
        }),
    }
}

/// Fails with `StaleGeneration` when the subject key a field was sealed under does not exist: a rekey
/// replaced it while the value was being sealed.
fn check_key_exists(
    c: &Connection,
    subject: &str,
    purpose: &str,
    generation: u32,
) -> Result<(), StoreError> {
    let found: Option<i64> = c
        .prepare_cached(
            "SELECT 1 FROM subject_keys WHERE subject = ?1 AND purpose = ?2 AND generation = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![subject, purpose, generation], |r| r.get(0))
                .optional()
        })
        .map_err(db)?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::StaleGeneration {
            subject: subject.to_owned(),
            generation,
        }),
    }
}

/// The body of `append_segments`, in one transaction on the writer connection.
fn append_segments_tx(
    conn: &mut Connection,
    evidence_id: &str,
    subject: &str,
    purpose: &str,
    segments: &[SegmentRow],
) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(db)?;
    let open: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM evidence WHERE id = ?1 AND complete = 0",
            [evidence_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    if open.is_none() {
        return Err(StoreError::Missing(format!("upload `{evidence_id}`")));
    }
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO evidence_segments (evidence_id, idx, key_gen, sealed)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(db)?;
        let mut checked = None;
        for s in segments {
            if checked != Some(s.key_gen) {
                check_key_exists(&tx, subject, purpose, s.key_gen)?;
                checked = Some(s.key_gen);
            }
            stmt.execute(params![evidence_id, s.index, s.key_gen, s.sealed])
                .map_err(|e| {
                    if is_constraint(&e) {
                        StoreError::Exists(format!("segment {}", s.index))
                    } else {
                        db(e)
                    }
                })?;
        }
    }
    tx.commit().map_err(db)
}

/// Inserts a record's row (not its fields); `Exists` when the id is taken.
fn insert_record_row(tx: &Connection, record: &RecordRow) -> Result<(), StoreError> {
    let labels =
        serde_json::to_string(&record.labels).map_err(|e| StoreError::Database(e.to_string()))?;
    tx.prepare_cached(&format!(
        "INSERT INTO records ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            record.id,
            record.subject,
            record.purpose,
            labels,
            record.created_at,
            record.updated_at,
            record.closed_at,
            record.expires_at,
            record.mac,
            record.fields_mac
        ])
    })
    .map_err(|e| {
        if is_constraint(&e) {
            StoreError::Exists(format!("record `{}`", record.id))
        } else {
            db(e)
        }
    })?;
    Ok(())
}

const EVIDENCE_COLUMNS: &str = "id, record_id, name, category, media_type, file_name, size, \
     sha256, salt, complete, owns_record, created_at, mac";

const CONSENT_COLUMNS: &str = "subject, purpose, state, at, recorded_by, mac";

fn consent_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConsentRow> {
    Ok(ConsentRow {
        subject: r.get(0)?,
        purpose: r.get(1)?,
        state: r.get(2)?,
        at: r.get(3)?,
        recorded_by: r.get(4)?,
        mac: r.get(5)?,
    })
}

fn evidence_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EvidenceRow> {
    let size: i64 = r.get(6)?;
    Ok(EvidenceRow {
        id: r.get(0)?,
        record_id: r.get(1)?,
        name: r.get(2)?,
        category: r.get(3)?,
        media_type: r.get(4)?,
        file_name: r.get(5)?,
        size: u64::try_from(size).unwrap_or(0),
        sha256: r.get(7)?,
        salt: r.get(8)?,
        complete: r.get(9)?,
        owns_record: r.get(10)?,
        created_at: r.get(11)?,
        mac: r.get(12)?,
    })
}

/// Deletes one evidence file (its segments go by cascade) and the record its upload created
/// when that holds nothing else.
fn discard_one(tx: &Connection, evidence_id: &str) -> Result<bool, StoreError> {
    let found: Option<(String, bool)> = tx
        .query_row(
            "SELECT record_id, owns_record FROM evidence WHERE id = ?1",
            [evidence_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db)?;
    let Some((record_id, owns_record)) = found else {
        return Ok(false);
    };
    tx.execute("DELETE FROM evidence WHERE id = ?1", [evidence_id])
        .map_err(db)?;
    if owns_record {
        tx.execute(
            "DELETE FROM records WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM fields WHERE record_id = ?1)
             AND NOT EXISTS (SELECT 1 FROM evidence WHERE record_id = ?1)",
            [&record_id],
        )
        .map_err(db)?;
    }
    Ok(true)
}

/// Reseals, one segment at a time, every evidence segment of the subject sealed under a
/// generation older than `new_key`'s. Returns how many.
fn reseal_segments(
    tx: &Connection,
    new_key: &SubjectKeyRow,
    reseal: &mut super::Reseal<'_>,
) -> Result<u64, StoreError> {
    let files: Vec<EvidenceRow> = tx
        .prepare_cached(&format!(
            "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE complete = 1 AND record_id IN
             (SELECT id FROM records WHERE subject = ?1 AND purpose = ?2)"
        ))
        .map_err(db)?
        .query_map(params![new_key.subject, new_key.purpose], evidence_from_row)
        .map_err(db)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db)?;
    let mut done = 0u64;
    for file in &files {
        let file_name = reseal(ResealItem::FileName { evidence: file })?;
        tx.prepare_cached("UPDATE evidence SET file_name = ?2 WHERE id = ?1")
            .map_err(db)?
            .execute(params![file.id, file_name])
            .map_err(db)?;
        let stale: Vec<u32> = tx
            .prepare_cached(
                "SELECT idx FROM evidence_segments WHERE evidence_id = ?1 AND key_gen < ?2
                 ORDER BY idx",
            )
            .map_err(db)?
            .query_map(params![file.id, new_key.generation], |r| r.get(0))
            .map_err(db)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db)?;
        for index in stale {
            let segment = tx
                .prepare_cached(
                    "SELECT idx, key_gen, sealed FROM evidence_segments
                     WHERE evidence_id = ?1 AND idx = ?2",
                )
                .map_err(db)?
                .query_row(params![file.id, index], |r| {
                    Ok(SegmentRow {
                        index: r.get(0)?,
                        key_gen: r.get(1)?,
                        sealed: r.get(2)?,
                    })
                })
                .map_err(db)?;
            let sealed = reseal(ResealItem::Segment {
                evidence: file,
                segment: &segment,
            })?;
            tx.prepare_cached(
                "UPDATE evidence_segments SET sealed = ?3, key_gen = ?4
                 WHERE evidence_id = ?1 AND idx = ?2",
            )
            .map_err(db)?
            .execute(params![file.id, index, sealed, new_key.generation])
            .map_err(db)?;
            done += 1;
        }
    }
    Ok(done)
}

fn subject_key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SubjectKeyRow> {
    Ok(SubjectKeyRow {
        subject: r.get(0)?,
        purpose: r.get(1)?,
        generation: r.get(2)?,
        purpose_version: r.get(3)?,
        wrapped: r.get(4)?,
        created_at: r.get(5)?,
    })
}

const SUBJECT_KEY_COLUMNS: &str =
    "subject, purpose, generation, purpose_version, wrapped, created_at";

fn select_subject_key(
    c: &Connection,
    subject: &str,
    purpose: &str,
) -> rusqlite::Result<Option<SubjectKeyRow>> {
    c.prepare_cached(&format!(
        "SELECT {SUBJECT_KEY_COLUMNS} FROM subject_keys
         WHERE subject = ?1 AND purpose = ?2 ORDER BY generation DESC LIMIT 1"
    ))?
    .query_row(params![subject, purpose], subject_key_from_row)
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("kluis.db")).unwrap();
        crate::store::conformance::run_all(&store);
    }

    #[test]
    fn reopening_keeps_data_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store.initialize(&[("k", b"v".to_vec())], &[]).unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.meta("k").unwrap().unwrap(), b"v");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }
}
