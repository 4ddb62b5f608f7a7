//! The embedded SQLite store (rusqlite, bundled): one file, WAL mode, `synchronous = FULL` so a
//! committed audit entry survives a power cut, `secure_delete` so deleted ciphertext is
//! overwritten, and numbered schema migrations tracked in `PRAGMA user_version`.
//!
//! One writer connection behind a mutex (SQLite allows one writer at a time anyway) and a small
//! pool of reader connections, which WAL lets run beside the writer.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{
    AuditRow, FieldMeta, FieldRow, PurposeKeyRow, RecordRow, Store, StoreError, SubjectKeyRow,
    TokenRow,
};

/// The migrations, in order; `PRAGMA user_version` counts how many have run.
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE purpose_keys (
    purpose    TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    wrapped    BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (purpose, version)
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
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    entry     BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL,
    mac       BLOB NOT NULL
);
"];

const MAX_IDLE_READERS: usize = 8;

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
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
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.writer
            .lock()
            .map_err(|_| StoreError::Database("writer lock poisoned".into()))
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
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db)?;
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

const TOKEN_COLUMNS: &str =
    "id, hash, principal, roles, scope_subject, created_at, expires_at, revoked_at";
const RECORD_COLUMNS: &str =
    "id, subject, purpose, labels, created_at, updated_at, closed_at, expires_at";

impl Store for SqliteStore {
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
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
            tx.execute(
                "INSERT INTO purpose_keys (purpose, version, state, wrapped, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![k.purpose, k.version, k.state, k.wrapped, k.created_at],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    fn purpose_keys(&self, purpose: &str) -> Result<Vec<PurposeKeyRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT purpose, version, state, wrapped, created_at FROM purpose_keys
                 WHERE purpose = ?1 ORDER BY version",
            )?;
            stmt.query_map([purpose], |r| {
                Ok(PurposeKeyRow {
                    purpose: r.get(0)?,
                    version: r.get(1)?,
                    state: r.get(2)?,
                    wrapped: r.get(3)?,
                    created_at: r.get(4)?,
                })
            })?
            .collect()
        })
    }

    fn subject_key(
        &self,
        subject: &str,
        purpose: &str,
    ) -> Result<Option<SubjectKeyRow>, StoreError> {
        self.read(|c| select_subject_key(c, subject, purpose))
    }

    fn insert_subject_key(&self, row: &SubjectKeyRow) -> Result<SubjectKeyRow, StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        tx.execute(
            "INSERT INTO subject_keys (subject, purpose, generation, purpose_version, wrapped, created_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6
             WHERE NOT EXISTS (SELECT 1 FROM subject_keys WHERE subject = ?1 AND purpose = ?2)",
            params![row.subject, row.purpose, row.generation, row.purpose_version, row.wrapped, row.created_at],
        )
        .map_err(db)?;
        let stored = select_subject_key(&tx, &row.subject, &row.purpose)
            .map_err(db)?
            .ok_or_else(|| StoreError::Database("subject key vanished after insert".into()))?;
        tx.commit().map_err(db)?;
        Ok(stored)
    }

    fn insert_record(&self, record: &RecordRow, fields: &[FieldRow]) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&record.labels)
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        tx.execute(
            &format!(
                "INSERT INTO records ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                record.id,
                record.subject,
                record.purpose,
                labels,
                record.created_at,
                record.updated_at,
                record.closed_at,
                record.expires_at
            ],
        )
        .map_err(|e| {
            if is_constraint(&e) {
                StoreError::Conflict(format!("record `{}`", record.id))
            } else {
                db(e)
            }
        })?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO fields (record_id, name, category, kind, sealed)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(db)?;
            for f in fields {
                stmt.execute(params![record.id, f.name, f.category, f.kind, f.sealed])
                    .map_err(|e| {
                        if is_constraint(&e) {
                            StoreError::Conflict(format!("field `{}`", f.name))
                        } else {
                            db(e)
                        }
                    })?;
            }
        }
        tx.commit().map_err(db)
    }

    fn record(&self, id: &str) -> Result<Option<(RecordRow, Vec<FieldRow>)>, StoreError> {
        let found = self.read(|c| {
            let Some(rec) = c
                .query_row(
                    &format!("SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1"),
                    [id],
                    record_from_row,
                )
                .optional()?
            else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached(
                "SELECT name, category, kind, sealed FROM fields WHERE record_id = ?1 ORDER BY name",
            )?;
            let fields = stmt
                .query_map([id], |r| {
                    Ok(FieldRow { name: r.get(0)?, category: r.get(1)?, kind: r.get(2)?, sealed: r.get(3)? })
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
    ) -> Result<bool, StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let n = tx
            .execute(
                "UPDATE records SET updated_at = ?2 WHERE id = ?1",
                params![id, updated_at],
            )
            .map_err(db)?;
        if n == 0 {
            return Ok(false);
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO fields (record_id, name, category, kind, sealed)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (record_id, name) DO UPDATE SET
                        category = excluded.category, kind = excluded.kind, sealed = excluded.sealed",
                )
                .map_err(db)?;
            for f in fields {
                stmt.execute(params![id, f.name, f.category, f.kind, f.sealed])
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn delete_record(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        tx.execute("DELETE FROM fields WHERE record_id = ?1", [id])
            .map_err(db)?;
        let n = tx
            .execute("DELETE FROM records WHERE id = ?1", [id])
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(n > 0)
    }

    fn subject_records(
        &self,
        subject: &str,
    ) -> Result<Vec<(RecordRow, Vec<FieldMeta>)>, StoreError> {
        let rows = self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE subject = ?1 ORDER BY created_at, id"
            ))?;
            let records = stmt.query_map([subject], record_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            let mut fstmt = c.prepare_cached(
                "SELECT name, category, length(sealed) FROM fields WHERE record_id = ?1 ORDER BY name",
            )?;
            let mut out = Vec::with_capacity(records.len());
            for rec in records {
                let fields = fstmt
                    .query_map([&rec.0.id], |r| {
                        let size: i64 = r.get(2)?;
                        Ok(FieldMeta { name: r.get(0)?, category: r.get(1)?, size: u64::try_from(size).unwrap_or(0) })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                out.push((rec, fields));
            }
            Ok(out)
        })?;
        rows.into_iter()
            .map(|(rec, fields)| Ok((with_labels(rec)?, fields)))
            .collect()
    }

    fn insert_token(&self, row: &TokenRow) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute(
            &format!(
                "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                row.id,
                row.hash,
                row.principal,
                row.roles.join(","),
                row.scope_subject,
                row.created_at,
                row.expires_at,
                row.revoked_at
            ],
        )
        .map_err(|e| {
            if is_constraint(&e) {
                StoreError::Conflict(format!("token `{}`", row.id))
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

    fn revoke_token(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at],
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
                            StoreError::Conflict(format!("audit entry {}", row.seq))
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

fn select_subject_key(
    c: &Connection,
    subject: &str,
    purpose: &str,
) -> rusqlite::Result<Option<SubjectKeyRow>> {
    c.prepare_cached(
        "SELECT subject, purpose, generation, purpose_version, wrapped, created_at FROM subject_keys
         WHERE subject = ?1 AND purpose = ?2 ORDER BY generation DESC LIMIT 1",
    )?
    .query_row(params![subject, purpose], |r| {
        Ok(SubjectKeyRow {
            subject: r.get(0)?,
            purpose: r.get(1)?,
            generation: r.get(2)?,
            purpose_version: r.get(3)?,
            wrapped: r.get(4)?,
            created_at: r.get(5)?,
        })
    })
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
