//! The embedded SQLite store (rusqlite, bundled): two files, the store's (`kluis.db`) and the
//! audit trail's beside it (`kluis.db.trail`, so that appending to the trail leaves the readers'
//! page caches of the records alone), WAL mode, `synchronous = FULL` so a committed audit entry
//! survives a power cut, `secure_delete` so deleted ciphertext is overwritten, and numbered schema
//! migrations tracked in `PRAGMA user_version`.
//!
//! One writer connection behind a mutex (SQLite allows one writer at a time anyway) and a small
//! pool of reader connections, which WAL lets run beside the writer. Storing a record and a new
//! subject key, the writes of every `PutRecord`, are group-committed (`sqlite/group.rs`): callers
//! writing at the same time share one commit.
//!
//! The trait implementations live by aggregate in `sqlite/` (`meta`, `keys`, `records`,
//! `evidence`, `lifecycle`, `rights`, `audit`); the schema, connections and row decoding they
//! share stay here.

mod audit;
mod cache;
mod checkpoint;
mod disclosures;
mod evidence;
mod files;
mod group;
mod keys;
mod lifecycle;
mod meta;
mod records;
mod rights;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{
    AnchorChange, AnchorRow, AuditRow, ConsentRow, DisclosureRow, EvidenceRow, FieldMeta, FieldRow,
    FieldsMac, HoldRow, KeyJobRow, KeyRowChange, KeyState, LeaseRow, MandateRow, PurposeKeyRow,
    RecordRead, RecordRow, RecordWithField, RecordWrite, RequestRow, Resealed, RestrictionRow,
    SegmentRow, StoreError, SubjectFacts, SubjectKeyRow, TagCount, TagRow, TokenRow, prelude::*,
};

/// The closed vocabularies are stored by name; a name none of them has (written by hand) fails
/// to decode and the row is `Corrupt`.
macro_rules! stored_by_name {
    ($($t:ty),*) => {$(
        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $t {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let s = value.as_str()?;
                s.parse().map_err(|_: String| {
                    rusqlite::types::FromSqlError::Other(
                        format!(
                            "unknown {} `{}`",
                            stringify!($t),
                            s.chars().take(32).collect::<String>()
                        )
                        .into(),
                    )
                })
            }
        }
    )*};
}

stored_by_name!(
    crate::domain::Purpose,
    crate::domain::Category,
    crate::domain::FieldKind,
    crate::domain::ConsentState,
    crate::domain::RequestKind,
    crate::domain::RecipientKind
);

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
    // The anchor covers the MACs of the rows it counts, so an older copy of one is noticed.
    r"
ALTER TABLE subject_anchors ADD COLUMN digest BLOB NOT NULL DEFAULT x'';
CREATE INDEX mandates_by_subject ON mandates (subject);
",
    // Jobs only one process may run at a time hold a lease.
    r"
CREATE TABLE leases (
    name   TEXT PRIMARY KEY,
    holder TEXT    NOT NULL,
    until  INTEGER NOT NULL
);
",
    // Blind-index tags of searchable field values; they go with the value they tag.
    r"
CREATE TABLE search_tags (
    record_id TEXT    NOT NULL,
    field     TEXT    NOT NULL,
    purpose   TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    bits      INTEGER NOT NULL,
    tag       INTEGER NOT NULL,
    PRIMARY KEY (record_id, field, version),
    FOREIGN KEY (record_id, field) REFERENCES fields (record_id, name) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX search_tags_lookup ON search_tags (purpose, field, version, bits, tag);
CREATE INDEX search_tags_by_version ON search_tags (version);
",
    // Restriction of processing (GDPR art. 18), covered by the subject's anchor, and the
    // extended deadline of a subject request (art. 12(3)), covered by the request's MAC.
    r"
CREATE TABLE restrictions (
    id        TEXT PRIMARY KEY,
    subject   TEXT    NOT NULL,
    reason    TEXT    NOT NULL,
    placed_by TEXT    NOT NULL,
    placed_at INTEGER NOT NULL,
    lifted_at INTEGER,
    lifted_by TEXT,
    mac       BLOB    NOT NULL
);
CREATE INDEX restrictions_by_subject ON restrictions (subject);
ALTER TABLE subject_requests ADD COLUMN extended_due_at INTEGER;
ALTER TABLE subject_requests ADD COLUMN extension_reason TEXT;
",
    // The disclosure register; a subject's disclosures go with their last record, in the
    // transaction that deletes it, whichever path deletes it.
    r"
CREATE TABLE disclosures (
    id             TEXT PRIMARY KEY,
    subject        TEXT    NOT NULL,
    record_id      TEXT    NOT NULL,
    purpose        TEXT    NOT NULL,
    fields         TEXT    NOT NULL,
    categories     TEXT    NOT NULL,
    recipient      TEXT    NOT NULL,
    recipient_kind TEXT    NOT NULL,
    legal_basis    TEXT    NOT NULL,
    case_ref       TEXT    NOT NULL,
    disclosed_at   INTEGER NOT NULL,
    recorded_by    TEXT    NOT NULL,
    automatic      INTEGER NOT NULL,
    mac            BLOB    NOT NULL
);
CREATE INDEX disclosures_by_subject ON disclosures (subject, disclosed_at);
CREATE INDEX disclosures_by_time ON disclosures (disclosed_at);
CREATE TRIGGER disclosures_go_with_the_last_record AFTER DELETE ON records
WHEN NOT EXISTS (SELECT 1 FROM records WHERE subject = OLD.subject)
BEGIN
    DELETE FROM disclosures WHERE subject = OLD.subject;
END;
",
    // A search finds its candidates in the lookup index alone, already in record order.
    r"
DROP INDEX search_tags_lookup;
CREATE INDEX search_tags_lookup ON search_tags (purpose, field, version, bits, tag, record_id);
",
    // The entries about a subject without a scan of the trail (its export and access report):
    // an index over the subject each entry names, computed from the entry itself, so that it
    // cannot disagree with it. (A BLOB given to the JSON functions is read as SQLite's binary
    // JSON, hence the cast; an entry that is not JSON has no subject.)
    r"
ALTER TABLE audit ADD COLUMN subject TEXT GENERATED ALWAYS AS (
    CASE WHEN json_valid(CAST(entry AS TEXT))
         THEN json_extract(CAST(entry AS TEXT), '$.subject') END
) VIRTUAL;
CREATE INDEX audit_by_subject ON audit (subject, seq);
",
    // A field's value last in its row: a value larger than a page spills to overflow pages,
    // and a column after it could be read only by walking them, so reading a record's field
    // metadata (a listing, a search's candidates, a disclosure) cost as much as its values.
    // (Run with foreign keys off, see `migrate`: dropping the old table must not cascade.)
    r"
CREATE TABLE fields_sealed_last (
    record_id TEXT    NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    name      TEXT    NOT NULL,
    category  TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    key_gen   INTEGER NOT NULL,
    mac       BLOB    NOT NULL DEFAULT x'',
    version   TEXT    NOT NULL DEFAULT '',
    sealed    BLOB    NOT NULL,
    PRIMARY KEY (record_id, name)
) WITHOUT ROWID;
INSERT INTO fields_sealed_last (record_id, name, category, kind, key_gen, mac, version, sealed)
    SELECT record_id, name, category, kind, key_gen, mac, version, sealed FROM fields;
DROP TABLE fields;
ALTER TABLE fields_sealed_last RENAME TO fields;
",
    // The trail's subject index in runs (`audit::index_subjects`): an index over the subject
    // each entry names had every entry write a page of its own at a random place (the
    // subjects in between), a page to the log per entry read by a case worker. Entries are
    // now indexed a run at a time, sorted within the run, each run after the last: a run's
    // rows are appended as a whole. The entries past the last run are read from the trail.
    r"
DROP INDEX audit_by_subject;
CREATE TABLE audit_runs (
    run   INTEGER PRIMARY KEY,
    up_to INTEGER NOT NULL
);
CREATE TABLE audit_subjects (
    run     INTEGER NOT NULL,
    subject TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (run, subject, seq)
) WITHOUT ROWID;
INSERT INTO audit_runs (run, up_to) SELECT 1, seq FROM audit ORDER BY seq DESC LIMIT 1;
INSERT INTO audit_subjects (run, subject, seq)
    SELECT 1, subject, seq FROM audit WHERE subject IS NOT NULL ORDER BY subject, seq;
",
    // The generated column goes: kluis reads an entry's subject from the entry itself (an
    // expression in the schema can be edited in the file, the entry not without its MAC).
    r"
ALTER TABLE audit DROP COLUMN subject;
",
    // kluis's one trigger goes: the code that deletes a record deletes its subject's
    // disclosures with the last one (`prune_disclosures`), and a statement that would run any
    // trigger or view is refused (`refuse_triggers`), so that one added to the file cannot
    // drop or change rows behind kluis's back.
    r"
DROP TRIGGER disclosures_go_with_the_last_record;
",
    // Field rows in a table with rowids. In a `WITHOUT ROWID` table a row is an index entry,
    // and SQLite reads an index entry's whole payload, overflow pages included, to give any of
    // its columns: with the value last in its row (above), a record's field metadata still
    // cost as much as its values (9.5 MB read from the file for a record of seven 1 MiB
    // fields, and a buffer of each row's size while it was read). In a table with rowids the
    // columns before the value come from the row's first page. (Foreign keys off, as above.)
    r"
CREATE TABLE fields_by_rowid (
    record_id TEXT    NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    name      TEXT    NOT NULL,
    category  TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    key_gen   INTEGER NOT NULL,
    mac       BLOB    NOT NULL DEFAULT x'',
    version   TEXT    NOT NULL DEFAULT '',
    sealed    BLOB    NOT NULL,
    PRIMARY KEY (record_id, name)
);
INSERT INTO fields_by_rowid (record_id, name, category, kind, key_gen, mac, version, sealed)
    SELECT record_id, name, category, kind, key_gen, mac, version, sealed FROM fields;
DROP TABLE fields;
ALTER TABLE fields_by_rowid RENAME TO fields;
",
    // The records of a subject that were destroyed, covered by the subject's anchor: rows put
    // back by hand after a deletion, a sweep or an erasure are not obeyed.
    r"
CREATE TABLE destroyed_records (
    subject   TEXT NOT NULL,
    record_id TEXT NOT NULL,
    PRIMARY KEY (subject, record_id)
) WITHOUT ROWID;
",
    // Evidence segments in files beside the database (`files`): a row names where its bytes
    // are in its upload's file and holds none; one with `at` NULL holds them itself.
    r"
ALTER TABLE evidence_segments ADD COLUMN at INTEGER;
ALTER TABLE evidence_segments ADD COLUMN len INTEGER;
",
    // Leases and key jobs carry a MAC: a row written by hand holds no job off, and starts none.
    r"
ALTER TABLE leases ADD COLUMN mac BLOB;
ALTER TABLE key_jobs ADD COLUMN mac BLOB;
",
    // How far the trail has seen the store's file written (`meta` `store_mark`, moved by every
    // write of it), kept with the trail in its file: an older store file put back beside a
    // newer trail is found when the store opens (`check_marks`).
    r"
CREATE TABLE trail_mark (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    store_mark INTEGER NOT NULL
);
INSERT INTO trail_mark (id, store_mark) VALUES (1, 0);
",
];

/// The `meta` key of the store's mark: a number every write of the store's file moves up
/// (`bump_mark`), in the write's transaction or, for the writes callers make on `write`, in one
/// committed before theirs.
const STORE_MARK: &str = "store_mark";

/// Moves the store's mark up by one, in the transaction open on `tx` (or in one of its own).
fn bump_mark(tx: &Connection) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('store_mark', 1)
         ON CONFLICT (key) DO UPDATE SET value = value + 1",
    )
    .and_then(|mut s| s.execute([]))
    .map_err(db)?;
    checkpoint::note_moved();
    Ok(())
}

/// Records in the trail's file the store's mark as committed, in the appending transaction on
/// `tx` before it writes anything to the store's file: the trail never names a mark the store's
/// file may not hold after a stop. The trail goes on when it cannot (the store's `meta` edited
/// outside kluis, which the schema check refuses writes for): it records what was refused.
/// Whether the mark was recorded (the caller notes it, `checkpoint::note_recorded`, once the
/// transaction has committed).
fn record_mark(tx: &Connection) -> bool {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let recorded = tx
        .prepare_cached(
            "UPDATE main.trail_mark SET store_mark = m.value
             FROM (SELECT value FROM store.meta WHERE key = 'store_mark') AS m
             WHERE id = 1 AND store_mark < m.value",
        )
        .and_then(|mut s| s.execute([]));
    match recorded {
        Ok(_) => true,
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = %db(e),
                    "the trail does not record how far the database file was written: an older \
                     copy of it put back would not be found at start"
                );
            }
            false
        }
    }
}

/// Refuses a store file older than its trail: one whose mark is below what the trail saw it
/// written to (an older copy of `kluis.db` put back beside the trail's file, whose records,
/// tokens and keys would be served as they were).
fn check_marks(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let (store, seen): (i64, i64) = conn
        .query_row(
            "SELECT coalesce((SELECT value FROM store.meta WHERE key = 'store_mark'), 0),
                    (SELECT store_mark FROM main.trail_mark WHERE id = 1)",
            [],
            |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(0))),
        )
        .map_err(db)?;
    if store < seen {
        return Err(StoreError::RolledBack(format!(
            "`{}` is older than its audit trail: the trail saw it written up to mark {seen}, and \
             it holds mark {store}. An older copy of the database file was put back beside the \
             trail's file `{}`; kluis would serve what was erased, revoked or destroyed since. \
             Put back the database file that goes with the trail, or restore a backup (one file \
             of both) into a new data directory",
            path.display(),
            trail_path(path).display()
        )));
    }
    Ok(())
}

/// Prepared statements each connection keeps (`open_connection`): more than the distinct
/// statements of the store's code.
const STATEMENTS_KEPT: usize = 128;

/// Reader connections kept open between reads. Opening one parses the schema and loses its
/// prepared statements, so the pool must cover the reads in flight at once (one per blocking
/// request; the server allows 256 streams per connection, and every case app holds one or a few).
/// A connection caches at most SQLite's default 2 MiB of pages per file: the store's and the
/// trail's, 4 MiB in all.
const MAX_IDLE_READERS: usize = 64;

/// MiB of records read kept in memory between reads when the configuration names no other size
/// (`read_cache_mib`; `cache`).
pub const DEFAULT_READ_CACHE_MIB: usize = 32;

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: checkpoint::Writer,
    readers: Mutex<Vec<Reader>>,
    /// Records read with their facts, kept while no commit came to the file.
    cache: cache::ReadCache,
    /// A connection that has looked at the file's `data_version` since the store opened: a
    /// reader that sees a commit, or is new to the pool, asks it whether a commit came since
    /// it last looked (`read_cached`), so that a commit empties the cache once, not once for
    /// each reader that sees it, and a pool growing under load does not empty it at all.
    watch: Mutex<Reader>,
    group: group::Group,
    /// A checkpoint after a destruction was held up: the next write tries again.
    checkpoint_owed: AtomicBool,
    /// A statement was refused for a trigger or view (`refuse_triggers`): the writer reads the
    /// schema again before its next write, so that once it is dropped writes go on.
    trigger_refused: Arc<AtomicBool>,
    /// Whether the file's schema is the one the migrations made, checked before every write.
    schema: Arc<SchemaCheck>,
    /// The evidence segments' files.
    files: files::SegmentFiles,
    /// The store's and the trail's files as opened (`FileIds`).
    opened: FileIds,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations; the audit
    /// trail lives beside it in a file of its own ([`trail_path`]), moved there from a store
    /// that still holds it (an older one, or a restored backup).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_READ_CACHE_MIB * 1024 * 1024)
    }

    /// Opens the store as `open` does, keeping at most `read_cache_bytes` of records read
    /// between reads (none with 0).
    pub fn open_with_cache(path: &Path, read_cache_bytes: usize) -> Result<Self, StoreError> {
        // The store's file is attached by its name, which SQL takes as text.
        if path.to_str().is_none() {
            return Err(StoreError::Config(format!(
                "the path `{}` is not UTF-8; give the data directory a name that is",
                path.display()
            )));
        }
        let trail = trail_path(path);
        check_files(path, &trail)?;
        if !path.exists() && trail.exists() {
            // A new store file would have its new, empty trail moved over this one.
            return Err(StoreError::Refused(format!(
                "`{}` is missing while its audit trail's file `{}` is there; kluis makes no new \
                 store beside an old trail: put the database file back, or restore a backup \
                 into a new data directory",
                path.display(),
                trail.display()
            )));
        }
        create_private(path)?;
        {
            let mut conn = open_file(path, true)?;
            conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
            migrate(&conn)?;
            audit::place_trail(&conn, path)?;
        }
        // Taken before the writer and the watch open them, and compared again once they have:
        // the files every later connection must open too.
        let opened = FileIds::of(path)?;
        let mut writer = open_connection(path, false)?;
        // Every transaction of the writer takes the write lock when it begins, waiting for it
        // as long as the busy timeout allows. A deferred one that reads first and then writes
        // would have to upgrade, and SQLite refuses an upgrade at once (SQLITE_BUSY, no
        // waiting) while any other connection holds the write lock, if only for a moment: a
        // reader that finds the WAL index header torn by a commit takes it to read it again.
        writer.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        check_marks(&writer, path)?;
        let trigger_refused = Arc::default();
        refuse_triggers(&writer, &trigger_refused);
        let schema = Arc::new(SchemaCheck::default());
        check_structure(path, opened, &schema);
        // It looks before anything is read, so that whatever came before is in the empty cache.
        let watch = open_connection(path, false)?;
        refuse_triggers(&watch, &trigger_refused);
        let watch = Reader {
            seen: Some(data_version(&watch).map_err(db)?),
            conn: watch,
        };
        check_same_files(path, opened)?;
        let store = Self {
            path: path.to_owned(),
            writer: checkpoint::Writer::new(writer, path, opened, Arc::clone(&schema)),
            readers: Mutex::new(Vec::new()),
            cache: cache::ReadCache::new(read_cache_bytes),
            watch: Mutex::new(watch),
            group: group::Group::default(),
            checkpoint_owed: AtomicBool::new(false),
            trigger_refused,
            schema,
            files: files::SegmentFiles::beside(path),
            opened,
        };
        // What a crash left between a deletion's commit and its files going. The store opens
        // whatever this finds: what it cannot remove is logged.
        if let Err(e) = store.sweep_segment_files() {
            tracing::warn!(error = %e, "evidence segment files not swept");
        }
        Ok(store)
    }

    /// Removes the segment files that no row names any more and no unfinished upload may still
    /// fill.
    fn sweep_segment_files(&self) -> Result<(), StoreError> {
        self.files.sweep(|| {
            self.read(|c| {
                c.prepare_cached(
                    "SELECT id FROM evidence WHERE complete <> 1
                     UNION SELECT DISTINCT evidence_id FROM evidence_segments WHERE at IS NOT NULL",
                )?
                .query_map([], |r| r.get(0))?
                .collect()
            })
        })?;
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The audit trail's file beside it ([`trail_path`]).
    pub fn trail_path(&self) -> PathBuf {
        trail_path(&self.path)
    }

    /// The writer, for a write that needs the whole schema as the migrations made it.
    fn write(&self) -> Result<checkpoint::WriterGuard<'_>, StoreError> {
        let conn = self.writer_unchecked()?;
        self.schema.check(&conn, Scope::All)?;
        // The mark moves before the caller's write, in a commit of its own: a mark ahead of
        // the file's rows says no more than that the file was written up to there.
        bump_mark(&conn)?;
        Ok(conn)
    }

    /// The writer, for a write that checks the schema itself, in its transaction.
    fn writer_unchecked(&self) -> Result<checkpoint::WriterGuard<'_>, StoreError> {
        let conn = self.writer.lock()?;
        if self.checkpoint_owed.load(Ordering::Relaxed) {
            self.truncate_log(&conn);
        }
        if self.trigger_refused.swap(false, Ordering::Relaxed) {
            // SQLite reads a changed schema again when a statement runs, not when one is
            // refused while it is prepared: without this, a statement refused for a trigger
            // would be refused again against the schema it was refused on, trigger dropped
            // or not.
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
                .map_err(db)?;
        }
        Ok(conn)
    }

    /// Empties the write-ahead log after a destruction (see `checkpoint_truncate`); when readers
    /// hold it up past the retry, the next write tries again.
    fn truncate_log(&self, conn: &Connection) {
        let done = checkpoint_truncate(conn);
        self.checkpoint_owed.store(!done, Ordering::Relaxed);
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        // The writer's page cache stays valid across its own commits, where every reader's is
        // dropped by each commit of another connection: a read that finds the writer idle reads
        // there (outside any transaction of it: a transaction holds the lock until it ends).
        // Its transactions begin as deferred ones for the read, as a reader's do, so that a
        // read takes no write lock.
        if let Some(mut conn) = self.writer.try_lock()
            && !self.checkpoint_owed.load(Ordering::Relaxed)
        {
            conn.set_transaction_behavior(rusqlite::TransactionBehavior::Deferred);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&conn)));
            conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
            // A read left inside its transaction (its rollback failed) would hold the write
            // lock's snapshot for every write after it.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            return match result {
                Ok(result) => result.map_err(db),
                Err(panic) => std::panic::resume_unwind(panic),
            };
        }
        self.read_on_reader(|reader| f(&reader.conn))
    }

    /// Runs `f` on a reader of the pool (one opened when none is idle), which is kept for the
    /// next read unless `f` left it inside a transaction.
    fn read_on_reader<T>(
        &self,
        f: impl FnOnce(&mut Reader) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let reader = {
            let mut idle = self
                .readers
                .lock()
                .map_err(|_| StoreError::Database("pool lock poisoned".into()))?;
            idle.pop()
        };
        let mut reader = match reader {
            Some(r) => r,
            None => {
                let conn = open_checked(&self.path, self.opened)?;
                refuse_triggers(&conn, &self.trigger_refused);
                Reader { conn, seen: None }
            }
        };
        let result = f(&mut reader).map_err(db);
        // A reader left inside its transaction (its rollback failed) would answer later reads
        // from an old snapshot: it is closed, not kept.
        if reader.conn.is_autocommit()
            && let Ok(mut idle) = self.readers.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(reader);
        }
        result
    }

    /// Runs `f` on a reader of the pool with the stamp under which it may search and fill the
    /// cache (`cache`): the reader first looks whether a commit came to the file since it last
    /// looked.
    fn read_cached<T>(
        &self,
        f: impl FnOnce(&Connection, u64) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.read_on_reader(|reader| {
            let version = data_version(&reader.conn)?;
            let stamp = match reader.seen {
                Some(seen) if seen == version => self.cache.stamp(false),
                // A commit since this reader last looked, or its first look (it cannot tell
                // what came before): the watch looks after it (`stamp_after_watch`).
                _ => self.stamp_after_watch(),
            };
            reader.seen = Some(version);
            f(&reader.conn, stamp)
        })
    }

    /// The stamp for a reader that saw a commit, or looks for the first time, once the watch
    /// has looked after it: the count of changes moves on when the watch sees a commit since
    /// it last looked. Any commit before that moved the count on when the watch saw it, so
    /// each commit empties the cache once, not once for every reader that sees it; a commit
    /// after the reader's look is for its next look. The watch looks and the count moves on
    /// under the watch's lock: a reader that finds the watch has seen a commit already finds
    /// the count moved on for it.
    fn stamp_after_watch(&self) -> u64 {
        let (stamp, emptied) = match self.watch.lock() {
            Ok(mut watch) => match data_version(&watch.conn) {
                Ok(version) if watch.seen == Some(version) => (self.cache.stamp(false), None),
                Ok(version) => {
                    watch.seen = Some(version);
                    self.cache.move_on()
                }
                // The watch cannot look: the count moves on as for a commit, and the watch
                // looks again next time (its last look stays as it was).
                Err(_) => self.cache.move_on(),
            },
            Err(_) => self.cache.move_on(),
        };
        // What the cache held goes once the watch is free: dropping it holds up no reader.
        drop(emptied);
        stamp
    }
}

/// The store file's `data_version` as `conn` sees it: another value than it saw before means a
/// commit to the file by another connection or process in between.
fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA store.data_version")?
        .query_row([], |r| r.get(0))
}

/// A connection of the readers' pool.
struct Reader {
    conn: Connection,
    /// The store file's `data_version` when it last looked; `None` before its first look.
    seen: Option<i64>,
}

impl SqliteStore {
    /// Whether rows may be found through an index over a subject, an expiry, a key version
    /// or a tag: not while the file's schema or structure is known not to be the one kluis
    /// made (`SchemaCheck`), as an index swapped or added by hand finds other rows than were
    /// stored (a listing, an export, an erasure's or a rekey's list would leave rows out).
    /// Rows read by their id are checked against their MACs (and a subject's facts against
    /// its anchor) and go on, as do reads of whole tables (`store verify`) and of the trail.
    /// Costs one atomic load while all is well; while it is not, each call checks again (one
    /// `PRAGMA schema_version` on a reader), so that reads resume once the schema is put back
    /// (a problem the check at opening found: once kluis starts over a sound file).
    fn serving(&self) -> Result<(), StoreError> {
        if !self.schema.troubled.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut checked = Ok(());
        self.read(|c| {
            checked = self.schema.check(c, Scope::All);
            Ok(())
        })?;
        checked.map_err(|e| match e {
            StoreError::Unavailable(why) => StoreError::Unavailable(format!(
                "{why}. Nor does kluis list rows through its indexes (by subject, expiry, key \
                 version or tag): they may find other rows than were stored"
            )),
            other => other,
        })
    }
}

/// Creates the database file readable by its owner only, before SQLite does (SQLite gives the
/// `-wal` and `-shm` files the same permissions as the database). An existing file is not
/// opened: closing a descriptor of it would drop the POSIX locks that the process's open SQLite
/// connections hold on it (a second store handle in the process, such as a sealed node's).
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(file) => {
            drop(file);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Database(format!(
            "cannot create `{}`: {e}",
            path.display()
        ))),
    }
}

/// A read transaction (one snapshot for several statements) begun and ended by statements the
/// connection keeps prepared, where `unchecked_transaction` parses `BEGIN` and `COMMIT` anew
/// each time: the reads every call makes. Dropped unfinished, it rolls back.
struct Snapshot<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Snapshot<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN DEFERRED")?.execute([])?;
        Ok(Self { conn, open: true })
    }

    fn finish(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for Snapshot<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        if self.open {
            // A read changed nothing: whatever the rollback answers, the connection is left
            // outside a transaction (or SQLite ended it already).
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// The file of the audit trail beside the store's file `path` (`kluis.db.trail`).
pub fn trail_path(path: &Path) -> PathBuf {
    beside(path, ".trail")
}

/// The file beside the store's file `path` whose name is the store's with `suffix`.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map_or_else(|| "kluis.db".into(), std::ffi::OsStr::to_os_string);
    name.push(suffix);
    path.with_file_name(name)
}

/// The file `kluis restore` keeps beside the store's file `path` from the moment the backup
/// takes the store's name until its checks have passed (`kluis.db.restoring`): a store with it
/// beside is one whose restore stopped before it was found sound, and is not opened as a store.
pub fn restoring_path(path: &Path) -> PathBuf {
    beside(path, ".restoring")
}

/// Refuses a store's file or trail's file that is there and is not a regular file (a
/// directory, or a link to a device such as `/dev/null`), a log, shared-memory index or journal
/// of either that is anything but a regular file of one name (a link of any kind), and the two
/// files when they are one (a hard link, or a symbolic link of one to the other): SQLite would
/// fail on them with no word of the cause ("disk I/O error"), wait on its own lock until it gave
/// up, or use a special file as its log.
fn check_files(path: &Path, trail: &Path) -> Result<(), StoreError> {
    let mut found = Vec::new();
    for (file, what) in [
        (path, "the database file"),
        (trail, "the audit trail's file"),
    ] {
        if file.symlink_metadata().is_err() {
            continue;
        }
        let meta = std::fs::metadata(file).map_err(|e| {
            StoreError::Config(format!("cannot read {what} `{}`: {e}", file.display()))
        })?;
        if !meta.is_file() {
            let kind = if meta.is_dir() {
                "a directory"
            } else {
                "a device or another special file"
            };
            return Err(StoreError::Refused(format!(
                "{what} `{}` is {kind}, not a regular file; kluis keeps the store in regular \
                 files: put the file back, or restore a backup into a new data directory",
                file.display()
            )));
        }
        found.push(meta);
    }
    // SQLite opens each file's log, shared-memory index and journal by name: it refuses a link
    // there with no word of the cause ("unable to open database file"), opens a FIFO or a
    // device as the log (and removes it when it closes), takes a directory as the index, and
    // writes its log into a file that has another name too (a hard link to a file elsewhere).
    // kluis never makes anything there but regular files of one name, and names what it found
    // instead.
    for file in [path, trail] {
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut name = file.as_os_str().to_owned();
            name.push(suffix);
            let side = PathBuf::from(name);
            let Ok(meta) = side.symlink_metadata() else {
                continue;
            };
            #[cfg(unix)]
            let other_names = std::os::unix::fs::MetadataExt::nlink(&meta) > 1;
            #[cfg(not(unix))]
            let other_names = false;
            if !meta.file_type().is_file() || other_names {
                let kind = if meta.file_type().is_symlink() {
                    "a symbolic link"
                } else if meta.is_dir() {
                    "a directory"
                } else if other_names {
                    "a file with another name too (a hard link)"
                } else {
                    "a device or another special file"
                };
                return Err(StoreError::Refused(format!(
                    "`{}` is {kind}, not a regular file, and kluis makes only regular files \
                     beside its database: someone else put it there. Remove it (with kluis \
                     stopped), or restore a backup into a new data directory",
                    side.display()
                )));
            }
        }
    }
    #[cfg(unix)]
    if let [store, kept] = found.as_slice() {
        use std::os::unix::fs::MetadataExt;
        if (store.dev(), store.ino()) == (kept.dev(), kept.ino()) {
            return Err(StoreError::Refused(format!(
                "`{}` and `{}` are one file (a hard or symbolic link); the audit trail is kept \
                 in a file of its own: put the two files back, or restore a backup into a new \
                 data directory",
                path.display(),
                trail.display()
            )));
        }
    }
    Ok(())
}

/// The store's and the trail's files by device and inode. A file renamed over one of them while
/// kluis runs is another file: the connections open before go on with the one they opened,
/// while a connection opened after opens the new one, which kluis did not check at start (an
/// older copy put back would be read by new readers, and writes would go on into a file no
/// longer in the data directory). So every connection opened after the store (`open_checked`)
/// and every write (`checkpoint::Writer::lock`) first compare the files found with those
/// opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIds([(u64, u64); 2]);

impl FileIds {
    /// The files at `path` and its trail's path now.
    fn of(path: &Path) -> Result<Self, FilesNotSeen> {
        use std::os::unix::fs::MetadataExt;
        let id = |file: &Path| {
            std::fs::metadata(file)
                .map(|m| (m.dev(), m.ino()))
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => FilesNotSeen::Missing,
                    _ => FilesNotSeen::Other(format!("`{}`: {e}", file.display())),
                })
        };
        Ok(Self([id(path)?, id(&trail_path(path))?]))
    }
}

/// Why `FileIds::of` found no ids.
#[derive(Debug)]
enum FilesNotSeen {
    /// A file is gone.
    Missing,
    /// It could not be looked at.
    Other(String),
}

impl From<FilesNotSeen> for StoreError {
    fn from(e: FilesNotSeen) -> Self {
        match e {
            FilesNotSeen::Missing => {
                StoreError::Config("the store's or the trail's file is missing".into())
            }
            FilesNotSeen::Other(why) => StoreError::Database(why),
        }
    }
}

/// A connection to the store's files (`open_connection`), opened only when the files at `path`
/// are those the store opened (`opened`), and compared again once it is open. A connection
/// opened on a file renamed over the store's would, closed as the only one on it, move the
/// write-ahead log the store's connections share into that file and delete the log: one
/// refused once open is closed without its checkpoint.
fn open_checked(path: &Path, opened: FileIds) -> Result<Connection, StoreError> {
    check_same_files(path, opened)?;
    let conn = open_connection(path, false)?;
    if let Err(e) = check_same_files(path, opened) {
        let _ = conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        );
        return Err(e);
    }
    Ok(conn)
}

/// Refuses when the store's or the trail's file at `path` is not the one opened (`opened`), or
/// is gone; a file that cannot be looked at for another reason is unavailable.
fn check_same_files(path: &Path, opened: FileIds) -> Result<(), StoreError> {
    match FileIds::of(path) {
        Ok(found) if found == opened => Ok(()),
        Err(FilesNotSeen::Other(why)) => Err(StoreError::Unavailable(format!(
            "cannot look at the store's files: {why}"
        ))),
        Ok(_) | Err(FilesNotSeen::Missing) => Err(StoreError::Corrupt(format!(
            "`{}` or its trail's file `{}` is not the file kluis opened: it was replaced or \
             removed while kluis runs. kluis neither writes to a file that is no longer in the \
             data directory nor reads one it did not check when it started: restart kluis, \
             which checks the files it finds (a store older than its trail is refused)",
            path.display(),
            trail_path(path).display()
        ))),
    }
}

/// A connection to the store as kluis serves it: the trail's file as `main`, the store's file
/// attached as `store`. Every statement names its tables without a schema (each is in one file
/// only); the trail is `main` because SQLite commits a transaction over several files in their
/// order, `main` first, so that the audit entry of a write it carries is durable before the
/// write is (WAL makes each file's commit atomic, not the two together).
fn open_connection(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let trail = trail_path(path);
    let conn = open_file(&trail, create).map_err(|e| match e {
        StoreError::Database(why) if !trail.exists() => StoreError::Database(format!(
            "the audit trail's file `{}` is missing ({why}); kluis does not serve a store \
             without its trail: put the file back or restore a backup",
            trail.display()
        )),
        other => other,
    })?;
    let store = path.to_str().ok_or_else(|| {
        StoreError::Database(format!("the path `{}` is not UTF-8", path.display()))
    })?;
    conn.execute("ATTACH DATABASE ?1 AS store", [store])
        .map_err(db)?;
    conn.execute_batch(
        "PRAGMA store.journal_mode = WAL;
         PRAGMA store.synchronous = FULL;
         PRAGMA store.secure_delete = ON;",
    )
    .map_err(db)?;
    Ok(conn)
}

/// A connection to one database file, set up as kluis uses every file.
fn open_file(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    // Every statement kluis runs is prepared once per connection and kept: a write uses a
    // dozen, the writer and a reader over all calls several dozen, and rusqlite keeps 16 unless
    // told (past that each use parses its SQL again).
    conn.set_prepared_statement_cache_capacity(STATEMENTS_KEPT);
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
    if current == supported {
        return Ok(());
    }
    // A migration that rebuilds a table drops the old one, and with foreign keys on, that
    // deletes what refers to it (SQLite's way to change a table: foreign keys off outside the
    // transaction, and each migration checked to leave no reference dangling before it commits).
    conn.pragma_update(None, "foreign_keys", false)
        .map_err(db)?;
    let migrated = (|| {
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(current).unwrap_or(0))
        {
            let tx = conn.unchecked_transaction().map_err(db)?;
            tx.execute_batch(sql).map_err(db)?;
            let dangling: Option<String> = tx
                .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
                .optional()
                .map_err(db)?;
            if let Some(table) = dangling {
                return Err(StoreError::Corrupt(format!(
                    "migration {} leaves rows of `{table}` referring to nothing",
                    i + 1
                )));
            }
            tx.pragma_update(None, "user_version", i + 1).map_err(db)?;
            tx.commit().map_err(db)?;
        }
        Ok(())
    })();
    conn.pragma_update(None, "foreign_keys", true).map_err(db)?;
    migrated
}

/// Which of the store's two files an object of its schema is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum File {
    /// `kluis.db`, attached as `store` on a serving connection.
    Store,
    /// `kluis.db.trail`, a serving connection's `main`.
    Trail,
}

impl File {
    /// Its schema name on a serving connection (`open_connection`).
    fn schema(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Trail => "main",
        }
    }
}

/// One object of a database's schema (a row of `sqlite_master`).
struct SchemaObject {
    file: File,
    name: String,
    kind: String,
    table: String,
    sql: Option<String>,
    /// The page its b-tree starts at (0 for a trigger or view).
    root: i64,
}

/// The schema objects of the store's two files by file and name (`trail.audit`), without the
/// statistics tables `ANALYZE` keeps (they steer query plans only).
type Schema = std::collections::BTreeMap<String, SchemaObject>;

/// The objects of the schema `schema` on `conn` (`main`, `store`), as those of `file`.
fn objects_of(conn: &Connection, schema: &str, file: File) -> rusqlite::Result<Schema> {
    conn.prepare_cached(&format!(
        "SELECT type, name, tbl_name, sql, rootpage FROM {schema}.sqlite_master \
         WHERE NOT (type = 'table' \
                    AND name IN ('sqlite_stat1', 'sqlite_stat2', 'sqlite_stat3', 'sqlite_stat4'))"
    ))?
    .query_map([], |r| {
        let name: String = r.get(1)?;
        let label = match file {
            File::Store => "store",
            File::Trail => "trail",
        };
        Ok((
            format!("{label}.{name}"),
            SchemaObject {
                file,
                name,
                kind: r.get(0)?,
                table: r.get(2)?,
                // Spacing is not meaning: a migration reformatted since a store was made
                // compares equal.
                sql: r
                    .get::<_, Option<String>>(3)?
                    .map(|sql| sql.split_whitespace().collect::<Vec<_>>().join(" ")),
                root: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
            },
        ))
    })?
    .collect()
}

/// The schema of both files behind a serving connection.
fn schema_of(conn: &Connection) -> rusqlite::Result<Schema> {
    let mut schema = objects_of(conn, File::Store.schema(), File::Store)?;
    schema.extend(objects_of(conn, File::Trail.schema(), File::Trail)?);
    Ok(schema)
}

/// The schema kluis's migrations make, from running them on an empty database once, with the
/// trail's tables in the trail's file (`audit::place_trail` moves them there as they are).
fn migrated_schema() -> Result<&'static Schema, StoreError> {
    static MIGRATED: OnceLock<Result<Schema, String>> = OnceLock::new();
    MIGRATED
        .get_or_init(|| {
            let conn = Connection::open_in_memory().map_err(|e| e.to_string())?;
            migrate(&conn).map_err(|e| e.to_string())?;
            let found = objects_of(&conn, "main", File::Store).map_err(|e| e.to_string())?;
            Ok(found
                .into_values()
                .map(|mut o| {
                    let label = if TRAIL_TABLES.contains(&o.table.as_str()) {
                        o.file = File::Trail;
                        "trail"
                    } else {
                        "store"
                    };
                    (format!("{label}.{}", o.name), o)
                })
                .collect())
        })
        .as_ref()
        .map_err(|e| StoreError::Database(format!("cannot build the schema to compare: {e}")))
}

/// What differs from the schema the migrations make: the table it belongs to, and what.
type Difference = (String, String);

/// What in `found` differs from the schema the migrations make, per object.
fn schema_differences(found: &Schema, migrated: &Schema) -> Vec<Difference> {
    let mut differences = Vec::new();
    for (key, want) in migrated {
        let (kind, table, name) = (&want.kind, &want.table, &want.name);
        match found.get(key) {
            None => differences.push((table.clone(), format!("{kind} `{name}` is missing"))),
            Some(o) if o.kind != want.kind || o.table != want.table || o.sql != want.sql => {
                differences.push((
                    table.clone(),
                    format!("{kind} `{name}` is not defined as kluis's migrations made it"),
                ));
            }
            Some(_) => {}
        }
    }
    for (key, o) in found {
        if !migrated.contains_key(key) {
            let SchemaObject {
                kind, table, name, ..
            } = o;
            let place = match o.file {
                File::Store => "",
                File::Trail => " in the trail's file",
            };
            differences.push((
                table.clone(),
                format!("{kind} `{name}` on `{table}` was added{place}"),
            ));
        }
    }
    differences
}

/// The tables of the audit trail: its appends need only these as the migrations made them.
const TRAIL_TABLES: [&str; 4] = ["audit", "audit_runs", "audit_subjects", "trail_mark"];

/// What a write needs of the schema.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// All of it, as the migrations made it.
    All,
    /// The trail's tables (`TRAIL_TABLES`): an edit elsewhere does not keep the trail from
    /// recording that the writes it concerns were refused.
    Trail,
}

impl Scope {
    /// Whether a problem of `table` (empty: of no table in particular) keeps this scope's
    /// writes from being made.
    fn concerns(self, table: &str) -> bool {
        self == Self::All || table.is_empty() || TRAIL_TABLES.contains(&table)
    }
}

/// Keeps writes to the schema kluis's migrations made. Edited in the file (a table's definition
/// changed through `writable_schema`, a conflict clause that drops a row without an error, a
/// foreign key that now deletes in cascade, an index, trigger or view added), the schema would
/// decide what a write does behind kluis's back. SQLite moves `PRAGMA schema_version` with every
/// change of it, so a write reads that number (one page already in the cache) and compares the
/// whole schema only when it moved.
struct SchemaCheck {
    /// Per scope, the schema version last found to be the migrations' own there; -1 before.
    good: [AtomicI64; 2],
    /// The schema version last found to differ, with what differs: logged once, and not
    /// compared (nor its tables checked) again for every write refused on it.
    refused: Mutex<Option<(i64, Vec<Difference>)>>,
    /// What SQLite's integrity check found when the store opened (`check_structure`), under
    /// the table of the index a problem names (none: it concerns all): writes are refused as
    /// for a schema that differs, until kluis starts over a sound file.
    unsound: OnceLock<Vec<Difference>>,
    /// Whether the last check found the schema or the structure not kluis's own (or the check
    /// at opening found problems): record data is then not served either (`serving`).
    troubled: AtomicBool,
    /// Each object's root page when the schema last matched. Nothing kluis does while it runs
    /// moves one (no `VACUUM`, no table dropped after the migrations), so a moved root page may
    /// be b-trees swapped by hand in `sqlite_master` (the SQL text the same): an index that
    /// then reads another index's entries leaves rows out of what is found by it (a subject's
    /// records for an erasure, the subject keys a rekey moves). Its table is checked then.
    roots: Mutex<std::collections::BTreeMap<String, i64>>,
}

impl Default for SchemaCheck {
    fn default() -> Self {
        Self {
            good: [AtomicI64::new(-1), AtomicI64::new(-1)],
            refused: Mutex::default(),
            unsound: OnceLock::new(),
            troubled: AtomicBool::new(false),
            roots: Mutex::default(),
        }
    }
}

impl SchemaCheck {
    /// The objects of `found` whose root page moved since the schema first matched and whose
    /// table does not pass `PRAGMA integrity_check` (an index swapped for another's misses its
    /// table's rows; a `VACUUM` moves pages and keeps them whole). With `settle`, the root
    /// pages found are kept when nothing is wrong (the first match records them).
    fn moved_roots(
        &self,
        conn: &Connection,
        found: &Schema,
        settle: bool,
    ) -> Result<Vec<Difference>, StoreError> {
        let mut roots = self
            .roots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let moved: std::collections::BTreeSet<(&str, &str)> = found
            .iter()
            .filter(|(key, o)| roots.get(*key).is_some_and(|&was| was != o.root))
            .map(|(_, o)| (o.file.schema(), o.table.as_str()))
            .collect();
        let mut problems = Vec::new();
        for (schema, table) in moved {
            let found: Vec<String> = conn
                .prepare(&format!(
                    "PRAGMA {schema}.integrity_check(\"{}\")",
                    table.replace('"', "\"\"")
                ))
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(db)?;
            problems.extend(found.into_iter().filter(|line| line != "ok").map(|line| {
                (
                    table.to_owned(),
                    format!(
                        "`{table}`'s b-trees moved and no longer match: {line} (swapped by hand)"
                    ),
                )
            }));
        }
        if settle && problems.is_empty() {
            *roots = found
                .iter()
                .map(|(name, o)| (name.clone(), o.root))
                .collect();
        }
        Ok(problems)
    }

    /// Keeps what the integrity check at opening found (`check_structure`).
    fn set_unsound(&self, problems: Vec<Difference>) {
        if !problems.is_empty() {
            self.troubled.store(true, Ordering::Release);
        }
        let _ = self.unsound.set(problems);
    }

    /// Whether what the check at opening found leaves anything unsound.
    fn is_unsound(&self) -> bool {
        self.unsound.get().is_some_and(|p| !p.is_empty())
    }

    /// Whether `conn`'s schema is the migrations' own in `scope`; in the transaction open on
    /// `conn`, or in one of its own.
    fn check(&self, conn: &Connection, scope: Scope) -> Result<(), StoreError> {
        let problems: Vec<&str> = self
            .unsound
            .get()
            .into_iter()
            .flatten()
            .filter(|(table, _)| scope.concerns(table))
            .map(|(_, line)| line.as_str())
            .collect();
        if !problems.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "the database file did not pass SQLite's integrity check when kluis opened it \
                 ({}); kluis makes no write on it. Find out how it came so (b-trees swapped in \
                 `sqlite_master`, a page edited), put it right or restore a backup, and start \
                 kluis again",
                problems.join("; ")
            )));
        }
        let version = schema_version;
        let [all, trail] = &self.good;
        let good = match scope {
            Scope::All => all,
            Scope::Trail => trail,
        };
        let now = version(conn).map_err(db)?;
        if now == good.load(Ordering::Relaxed) {
            return Ok(());
        }
        let refused = || {
            self.refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let known = refused()
            .as_ref()
            .filter(|(v, _)| *v == now)
            .map(|(v, all)| (*v, all.clone()));
        let (version, all) = match known {
            Some(known) => known,
            None => {
                // The number and the schema from one snapshot.
                let read = |c: &Connection| -> rusqlite::Result<(i64, Schema)> {
                    Ok((version(c)?, schema_of(c)?))
                };
                let (version, found) = if conn.is_autocommit() {
                    let tx = conn.unchecked_transaction().map_err(db)?;
                    let found = read(&tx).map_err(db)?;
                    tx.commit().map_err(db)?;
                    found
                } else {
                    read(conn).map_err(db)?
                };
                let mut all = schema_differences(&found, migrated_schema()?);
                all.extend(self.moved_roots(conn, &found, all.is_empty())?);
                if all.is_empty() {
                    for good in &self.good {
                        good.store(version, Ordering::Relaxed);
                    }
                    self.troubled.store(self.is_unsound(), Ordering::Release);
                    return Ok(());
                }
                self.troubled.store(true, Ordering::Release);
                let listed: Vec<&str> = all.iter().map(|(_, what)| what.as_str()).collect();
                tracing::error!(
                    differences = %listed.join("; "),
                    "the database file's schema is not the one kluis's migrations made: kluis \
                     makes no write on it (the trail goes on while its own tables are untouched)"
                );
                *refused() = Some((version, all.clone()));
                (version, all)
            }
        };
        let relevant: Vec<&str> = all
            .iter()
            .filter(|(table, _)| scope.concerns(table))
            .map(|(_, what)| what.as_str())
            .collect();
        if relevant.is_empty() {
            good.store(version, Ordering::Relaxed);
            return Ok(());
        }
        Err(StoreError::Unavailable(format!(
            "the database file's schema was changed outside kluis ({}); kluis makes no write on \
             it. Compare `sqlite3 kluis.db .schema` and `sqlite3 kluis.db.trail .schema` with a \
             fresh `kluis init`, find out how it came there, and put it back (or restore a \
             backup)",
            relevant.join("; ")
        )))
    }
}

/// Both files' `PRAGMA schema_version` in one number: a change of either moves it.
fn schema_version(c: &Connection) -> rusqlite::Result<i64> {
    let of = |file: File| -> rusqlite::Result<i64> {
        c.prepare_cached(&format!("PRAGMA {}.schema_version", file.schema()))?
            .query_row([], |r| r.get(0))
    };
    Ok(of(File::Store)? << 32 ^ (of(File::Trail)? & 0xFFFF_FFFF))
}

/// What SQLite's `integrity_check` finds wrong with the whole file behind `conn`, at most 100
/// lines (past that the file is to be restored, not read line by line); empty when nothing.
fn integrity_problems(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let lines: Vec<String> = conn
        .prepare("PRAGMA integrity_check(100)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(db)?;
    Ok(lines.into_iter().filter(|line| line != "ok").collect())
}

/// Files up to this size are checked (`check_structure`) before the store opens; larger ones
/// while it serves (`integrity_check` reads about 100 MiB/s here).
const CHECKED_BEFORE_OPENING: u64 = 64 << 20;

/// Runs SQLite's `integrity_check` over the file, as it is when the store opens, on a connection
/// of its own: b-trees swapped in `sqlite_master` while kluis was stopped (the SQL left, so the
/// schema compares equal) show as indexes that miss their tables' rows, and then `schema`
/// refuses every write. Before the store opens for a small file, in the background for a large
/// one (writes go on until it is done).
fn check_structure(path: &Path, opened: FileIds, schema: &Arc<SchemaCheck>) {
    let run = move |path: &Path, schema: &SchemaCheck| {
        let found = open_checked(path, opened)
            .and_then(|conn| Ok((integrity_problems(&conn)?, schema_of(&conn).map_err(db)?)));
        match found {
            Ok((lines, objects)) => {
                // Each problem under the table of the index it names (when it names one), so
                // that the trail goes on past a problem of other tables, to record what was
                // refused.
                let problems: Vec<Difference> = lines
                    .into_iter()
                    .map(|line| {
                        let table = line
                            .split_once(" index ")
                            .and_then(|(_, rest)| rest.split_whitespace().next())
                            .and_then(|index| objects.values().find(|o| o.name == index))
                            .map(|o| o.table.clone())
                            .unwrap_or_default();
                        (table, line)
                    })
                    .collect();
                if !problems.is_empty() {
                    let listed: Vec<&str> = problems.iter().map(|(_, l)| l.as_str()).collect();
                    tracing::error!(
                        problems = %listed.join("; "),
                        "the database file does not pass SQLite's integrity check: kluis makes no \
                         write on it (the trail goes on while its own tables are sound)"
                    );
                    schema.set_unsound(problems);
                }
            }
            Err(e) => tracing::warn!(error = %e, "the database file's integrity check did not run"),
        }
    };
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let small = size(path) + size(&trail_path(path)) <= CHECKED_BEFORE_OPENING;
    if small {
        run(path, schema);
    } else {
        let (path, schema) = (path.to_owned(), Arc::clone(schema));
        let spawned = std::thread::Builder::new()
            .name("kluis-integrity".into())
            .spawn(move || run(&path, &schema));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "the database file's integrity check did not start");
        }
    }
}

/// Runs `job` inside a savepoint of the transaction open on `tx`: kept (released) when it
/// succeeds, undone (rolled back to, then released) when it fails. The outer result is the
/// savepoint's own: an error there means the job's work cannot be told apart from the rest of
/// the transaction, which must then not commit.
///
/// The savepoint's three statements are prepared once per connection (rusqlite's `Savepoint`
/// parses `SAVEPOINT` and `RELEASE` on every use, a fifth of a group commit's serial work).
fn in_savepoint<T>(
    tx: &Connection,
    job: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<Result<T, StoreError>, StoreError> {
    let run = |sql: &str| tx.prepare_cached(sql).and_then(|mut s| s.execute([]));
    run("SAVEPOINT kluis_job").map_err(db)?;
    let outcome = job(tx);
    if outcome.is_err() {
        run("ROLLBACK TO kluis_job").map_err(db)?;
    }
    run("RELEASE kluis_job").map_err(db)?;
    Ok(outcome)
}

/// Makes `conn` refuse, when it prepares a statement, every statement that would run a trigger
/// or read through a view. kluis's schema has neither (its migrations drop the one trigger it
/// had), so one found in the file was added outside kluis: a `RAISE(IGNORE)` in it would drop
/// a row of the trail or a hold without an error, an update in it change rows behind kluis's
/// back. A statement prepared before such a change is prepared again when it next runs, and
/// refused then.
fn refuse_triggers(conn: &Connection, refused: &Arc<AtomicBool>) {
    let refused = Arc::clone(refused);
    conn.authorizer(Some(
        move |ctx: rusqlite::hooks::AuthContext<'_>| match ctx.accessor {
            Some(_) => {
                refused.store(true, Ordering::Relaxed);
                rusqlite::hooks::Authorization::Deny
            }
            None => rusqlite::hooks::Authorization::Allow,
        },
    ));
}

/// Deletes `subject`'s disclosures when it has no record left (in the transaction of the
/// deletion that took its last): a subject's disclosures go with their last record.
fn prune_disclosures(tx: &Connection, subject: &str) -> Result<(), StoreError> {
    tx.prepare_cached(
        "DELETE FROM disclosures WHERE subject = ?1
         AND NOT EXISTS (SELECT 1 FROM records WHERE subject = ?1)",
    )
    .and_then(|mut s| s.execute([subject]))
    .map_err(db)?;
    Ok(())
}

/// The evidence ids of record `id`, read in the transaction that deletes it: their segment
/// files go once it committed (`files::SegmentFiles::remove`).
fn evidence_of(tx: &Connection, id: &str) -> Result<Vec<String>, StoreError> {
    tx.prepare_cached("SELECT id FROM evidence WHERE record_id = ?1")
        .and_then(|mut s| s.query_map([id], |r| r.get(0))?.collect())
        .map_err(db)
}

/// Deletes the record `id` (its fields, tags and evidence gone first or by cascade) and, when
/// it was its subject's last, the subject's disclosures; whether it was there.
fn delete_record_row(tx: &Connection, id: &str) -> Result<bool, StoreError> {
    let subject: Option<String> = tx
        .prepare_cached("DELETE FROM records WHERE id = ?1 RETURNING subject")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(db)?;
    match subject {
        Some(subject) => prune_disclosures(tx, &subject).map(|()| true),
        None => Ok(false),
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    match e {
        // `refuse_triggers` refused the statement: nothing was done, and the call succeeds
        // again once the trigger or view is gone.
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::AuthorizationForStatementDenied =>
        {
            StoreError::Unavailable(
                "the database file holds a trigger or view that kluis did not create, and kluis \
                 runs no statement that would use it; list them with `SELECT type, name, \
                 tbl_name, sql FROM sqlite_master WHERE type IN ('trigger', 'view')`, find out \
                 how they came there, and drop them"
                    .into(),
            )
        }
        rusqlite::Error::FromSqlConversionFailure(_, _, cause) => {
            StoreError::Corrupt(cause.to_string())
        }
        // SQLite's columns take a value of any type: one of another type than kluis writes
        // (a ciphertext or a hash as text, a time as text) was put there by hand.
        // (A NULL read where kluis expects a value is kluis's own mistake: the columns that
        // must hold one refuse NULL.)
        rusqlite::Error::InvalidColumnType(_, column, found)
            if found != rusqlite::types::Type::Null =>
        {
            StoreError::Corrupt(format!(
                "a stored `{column}` of type {found}, which kluis never writes there"
            ))
        }
        rusqlite::Error::IntegralValueOutOfRange(_, _) => {
            StoreError::Corrupt("a stored number out of the range kluis writes".into())
        }
        // Busy past the busy timeout (another process holding the file, a checkpoint under
        // heavy load): nothing was done, and the call may succeed when it is tried again.
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::Unavailable(format!(
                "the database file stayed busy for {} s (SQLite code {})",
                BUSY_TIMEOUT.as_secs(),
                f.extended_code
            ))
        }
        e => StoreError::Database(e.to_string()),
    }
}

/// Whether `e` is a primary key or unique constraint refusing a row: the row exists already.
/// Other constraints (a check, `NOT NULL`, a trigger's `RAISE`) are not that and stay errors of
/// the database, with their own message.
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// Whether `e` is a foreign key refusing a row: what it refers to is missing.
fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
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
const REQUEST_COLUMNS: &str = "id, subject, kind, received_at, due_at, opened_by, completed_at, \
    note, mac, extended_due_at, extension_reason";
const RESTRICTION_COLUMNS: &str =
    "id, subject, reason, placed_by, placed_at, lifted_at, lifted_by, mac";
const DISCLOSURE_COLUMNS: &str = "id, subject, record_id, purpose, fields, categories, recipient, \
     recipient_kind, legal_basis, case_ref, disclosed_at, recorded_by, automatic, mac";
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

const PURPOSE_KEY_COLUMNS: &str = "purpose, version, state, algorithm, wrapped, created_at, retired_at, destroy_after, destroyed_at, barred, mac";

/// A stored name that is none of the values it stands for: the row is corrupt (decoding fails
/// with a conversion error that `db` reports as `Corrupt`).
fn unknown(column: usize, what: &str, found: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!(
            "unknown {what} `{}`",
            found.chars().take(32).collect::<String>()
        )
        .into(),
    )
}

fn purpose_key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PurposeKeyRow> {
    let state: String = r.get(2)?;
    let algorithm: String = r.get(3)?;
    Ok(PurposeKeyRow {
        purpose: r.get(0)?,
        version: r.get(1)?,
        state: KeyState::parse(&state).ok_or_else(|| unknown(2, "key state", &state))?,
        algorithm: crate::crypto::Algorithm::parse(&algorithm)
            .ok_or_else(|| unknown(3, "algorithm", &algorithm))?,
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
        digest: r.get(4)?,
    })
}

fn hold_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HoldRow> {
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
}

fn restriction_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RestrictionRow> {
    Ok(RestrictionRow {
        id: r.get(0)?,
        subject: r.get(1)?,
        reason: r.get(2)?,
        placed_by: r.get(3)?,
        placed_at: r.get(4)?,
        lifted_at: r.get(5)?,
        lifted_by: r.get(6)?,
        mac: r.get(7)?,
    })
}

fn mandate_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MandateRow> {
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
}

fn disclosure_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DisclosureRow> {
    let list = |s: String| -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Ok(DisclosureRow {
        id: r.get(0)?,
        subject: r.get(1)?,
        record_id: r.get(2)?,
        purpose: r.get(3)?,
        fields: list(r.get(4)?),
        categories: list(r.get(5)?),
        recipient: r.get(6)?,
        recipient_kind: r.get(7)?,
        legal_basis: r.get(8)?,
        case_ref: r.get(9)?,
        disclosed_at: r.get(10)?,
        recorded_by: r.get(11)?,
        automatic: r.get(12)?,
        mac: r.get(13)?,
    })
}

fn select_anchor(c: &Connection, subject: &str) -> rusqlite::Result<Option<AnchorRow>> {
    c.prepare_cached(
        "SELECT subject, holds, consents, mac, digest FROM subject_anchors WHERE subject = ?1",
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
        "INSERT INTO subject_anchors (subject, holds, consents, mac, digest)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (subject) DO UPDATE SET
            holds = excluded.holds, consents = excluded.consents, mac = excluded.mac,
            digest = excluded.digest",
        params![
            next.subject,
            next.holds,
            next.consents,
            next.mac,
            next.digest
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// Writes the state, dates, bar and MAC of `row` where its state is `from`; the count changed.
/// Writes `change.row` over the stored row when its MAC is still `change.prev_mac`; the rows
/// written (0 or 1).
fn update_key_row(c: &Connection, change: &KeyRowChange) -> rusqlite::Result<usize> {
    let row = &change.row;
    c.execute(
        "UPDATE purpose_keys SET state = ?4, retired_at = ?5, destroy_after = ?6,
            destroyed_at = ?7, barred = ?8, mac = ?9
         WHERE purpose = ?1 AND version = ?2 AND mac = ?3",
        params![
            row.purpose,
            row.version,
            change.prev_mac,
            row.state.as_str(),
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
            k.state.as_str(),
            k.algorithm.as_str(),
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
        if is_unique_violation(&e) {
            StoreError::Exists(format!("purpose key `{}` v{}", k.purpose, k.version))
        } else {
            db(e)
        }
    })?;
    Ok(())
}

/// Fails with `NotLive` unless the purpose key version is the active one: a key wrapped just
/// before a rotation (or by a node that has not seen it yet) must not land on a retired or
/// destroyed version; the core wraps it again under the active one.
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
        Some("active") => Ok(()),
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

/// The body of `append_segments`, in one transaction on the writer connection: the rows of
/// `segments`, whose bytes are in the upload's file where `placed` says.
fn append_segments_tx(
    conn: &mut Connection,
    evidence_id: &str,
    subject: &str,
    purpose: &str,
    segments: &[SegmentRow],
    placed: &[files::Placed],
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
                "INSERT INTO evidence_segments (evidence_id, idx, key_gen, sealed, at, len)
                 VALUES (?1, ?2, ?3, x'', ?4, ?5)",
            )
            .map_err(db)?;
        let mut checked = None;
        for (s, place) in segments.iter().zip(placed) {
            if checked != Some(s.key_gen) {
                check_key_exists(&tx, subject, purpose, s.key_gen)?;
                checked = Some(s.key_gen);
            }
            stmt.execute(params![
                evidence_id,
                s.index,
                s.key_gen,
                place.at,
                place.len
            ])
            .map_err(|e| {
                if is_unique_violation(&e) {
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
        if is_unique_violation(&e) {
            StoreError::Exists(format!("record `{}`", record.id))
        } else {
            db(e)
        }
    })
    .and_then(|n| kept(n, || format!("record `{}`", record.id)))
}

/// An insert that stored `n` rows stored its one row: a trigger that drops it (`RAISE(IGNORE)`,
/// someone with the file) must not leave a write acknowledged and lost.
fn kept(n: usize, what: impl FnOnce() -> String) -> Result<(), StoreError> {
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::NotKept(format!(
            "{} (it dropped the row)",
            what()
        )))
    }
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
            "SELECT record_id, owns_record FROM evidence WHERE id = ?1 AND complete = 0",
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
        let empty: Option<(String, String)> = tx
            .query_row(
                "SELECT subject, purpose FROM records WHERE id = ?1
                 AND NOT EXISTS (SELECT 1 FROM fields WHERE record_id = ?1)
                 AND NOT EXISTS (SELECT 1 FROM evidence WHERE record_id = ?1)",
                [&record_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)?;
        if let Some((subject, purpose)) = empty {
            delete_record_row(tx, &record_id)?;
            shred_when_last(tx, &subject, &purpose)?;
        }
    }
    Ok(true)
}

/// Deletes the subject key of `purpose` of `subject` when no record of theirs under that purpose
/// is left (crypto-shredding), in the transaction that deleted their last one; true when it went.
fn shred_when_last(tx: &Connection, subject: &str, purpose: &str) -> Result<bool, StoreError> {
    let left: i64 = tx
        .prepare_cached("SELECT count(*) FROM records WHERE subject = ?1 AND purpose = ?2")
        .and_then(|mut s| s.query_row(params![subject, purpose], |r| r.get(0)))
        .map_err(db)?;
    if left == 0 {
        tx.prepare_cached("DELETE FROM subject_keys WHERE subject = ?1 AND purpose = ?2")
            .and_then(|mut s| s.execute(params![subject, purpose]))
            .map_err(db)?;
    }
    Ok(left == 0)
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
    fn a_database_busy_past_the_timeout_is_unavailable_not_an_internal_error() {
        for code in [rusqlite::ffi::SQLITE_BUSY, rusqlite::ffi::SQLITE_LOCKED] {
            let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
            assert!(matches!(db(e), StoreError::Unavailable(_)), "{code}");
        }
        // Twin: another failure stays a database error.
        let e = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            None,
        );
        assert!(matches!(db(e), StoreError::Database(_)));
    }

    /// A trigger that refuses the trail's rows (someone with the file) is a database error
    /// with the trigger's message, not a row that exists already; the twin: a sequence number
    /// that is taken is `Exists`.
    #[test]
    fn a_refused_audit_row_is_no_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let store = SqliteStore::open(&path).unwrap();
        let row = |seq: u64| AuditRow {
            seq,
            entry: format!("{{\"seq\":{seq}}}").into_bytes(),
            prev_hash: vec![0; 32],
            hash: vec![1; 32],
            mac: vec![2; 32],
        };
        store.append_audit(&[row(1)]).unwrap();
        assert!(matches!(
            store.append_audit(&[row(1)]),
            Err(StoreError::Exists(what)) if what == "audit entry 1"
        ));
        let other = Connection::open(trail_path(&path)).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER no_audit BEFORE INSERT ON audit \
                 BEGIN SELECT RAISE(ABORT, 'the trail is closed'); END;",
            )
            .unwrap();
        pass_schema_check(&store);
        match store.append_audit(&[row(2)]) {
            Err(StoreError::Unavailable(message)) => {
                assert!(
                    message.contains("a trigger or view that kluis did not create"),
                    "{message}"
                );
            }
            other => panic!("expected a database error, got {other:?}"),
        }
        assert_eq!(store.audit_tail().unwrap().map(|r| r.seq), Some(1));
    }

    /// A trigger added to the file, on any table and for any change, silent (`RAISE(IGNORE)`)
    /// or not, on a connection that prepared its statements before or after it came: each
    /// statement that would run it is refused, and nothing of the change is made. The twin:
    /// once it is dropped the same calls succeed. kluis's own trigger is gone after the
    /// migrations.
    #[test]
    fn a_statement_that_would_run_a_trigger_added_to_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let store = SqliteStore::open(&path).unwrap();
        let triggers: i64 = store
            .writer
            .lock()
            .unwrap()
            .query_row(
                "SELECT (SELECT count(*) FROM store.sqlite_master WHERE type = 'trigger') \
                 + (SELECT count(*) FROM main.sqlite_master WHERE type = 'trigger')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(triggers, 0);
        let row = crate::store::conformance::audit_row;
        // Statements prepared before the trigger came.
        store.append_audit(&[row(1)]).unwrap();
        store.replace_meta("k", None, b"v1").unwrap();
        let (records, trail) = (
            Connection::open(&path).unwrap(),
            Connection::open(trail_path(&path)).unwrap(),
        );
        for (trigger, check) in [
            (
                "CREATE TRIGGER t BEFORE INSERT ON audit BEGIN SELECT RAISE(IGNORE); END;",
                0,
            ),
            (
                "CREATE TRIGGER t BEFORE UPDATE ON meta BEGIN SELECT RAISE(IGNORE); END;",
                1,
            ),
            (
                "CREATE TRIGGER t AFTER INSERT ON audit BEGIN DELETE FROM audit_runs; END;",
                0,
            ),
        ] {
            // A trigger lives in the file of its table.
            let other = if check == 0 { &trail } else { &records };
            other.execute_batch(trigger).unwrap();
            // As if the trigger came between the schema's check before a write and its
            // transaction: the statement itself is refused.
            pass_schema_check(&store);
            let refused = match check {
                0 => store.append_audit(&[row(2)]),
                _ => store.replace_meta("k", Some(b"v1"), b"v2"),
            };
            match refused {
                Err(StoreError::Unavailable(message)) => {
                    assert!(message.contains("did not create"), "{trigger}: {message}");
                }
                other => panic!("{trigger}: expected a refusal, got {other:?}"),
            }
            assert_eq!(store.audit_tail().unwrap().map(|r| r.seq), Some(1));
            assert_eq!(store.meta("k").unwrap().as_deref(), Some(&b"v1"[..]));
            other.execute_batch("DROP TRIGGER t;").unwrap();
        }
        store.append_audit(&[row(2)]).unwrap();
        store.replace_meta("k", Some(b"v1"), b"v2").unwrap();
        assert_eq!(store.audit_tail().unwrap().map(|r| r.seq), Some(2));
        assert_eq!(store.meta("k").unwrap().as_deref(), Some(&b"v2"[..]));
    }

    /// Takes the schema as it is for the migrations' own, so that a test reaches what comes
    /// after the check.
    fn pass_schema_check(store: &SqliteStore) {
        let version = schema_version(&store.writer.lock().unwrap()).unwrap();
        for good in &store.schema.good {
            good.store(version, Ordering::Relaxed);
        }
    }

    /// A schema edited in the file is not written on: an index added, a table given a conflict
    /// clause that drops a row without an error, a foreign key given another action (the last
    /// two through `writable_schema`, which SQLite does not check). Put back, writes go on
    /// without a reopen.
    #[test]
    fn a_schema_edited_in_the_file_is_not_written_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let store = SqliteStore::open(&path).unwrap();
        store.replace_meta("k", None, b"v0").unwrap();
        let other = Connection::open(&path).unwrap();
        let rewrite = |table: &str, from: &str, to: &str| {
            other.execute_batch("PRAGMA writable_schema = ON").unwrap();
            let n = other
                .execute(
                    "UPDATE sqlite_master SET sql = replace(sql, ?2, ?3) \
                     WHERE name = ?1 AND instr(sql, ?2) > 0",
                    [table, from, to],
                )
                .unwrap();
            assert_eq!(n, 1, "{table}: {from}");
            // What such an edit needs to reach connections already open.
            let version: i64 = other
                .query_row("PRAGMA schema_version", [], |r| r.get(0))
                .unwrap();
            other
                .execute_batch(&format!(
                    "PRAGMA schema_version = {}; PRAGMA writable_schema = OFF",
                    version + 1
                ))
                .unwrap();
        };
        /// What is edited, the edit, its undoing, and what the refusal names.
        type Edit<'a> = (&'a str, &'a dyn Fn(), &'a dyn Fn(), &'a str);
        // Two indexes' b-trees swapped: the SQL text stays, what each index finds does not (a
        // hold is there to be missed).
        other
            .execute(
                "INSERT INTO holds (id, subject, reason, case_ref, placed_by, placed_at) \
                 VALUES ('h1', 'REL-1', 'r', 'c', 'p', 1)",
                [],
            )
            .unwrap();
        let swap = || {
            let root = |name: &str| -> i64 {
                other
                    .query_row(
                        "SELECT rootpage FROM sqlite_master WHERE name = ?1",
                        [name],
                        |r| r.get(0),
                    )
                    .unwrap()
            };
            let (a, b) = (root("holds_by_subject"), root("records_by_subject"));
            let version: i64 = other
                .query_row("PRAGMA schema_version", [], |r| r.get(0))
                .unwrap();
            other
                .execute_batch(&format!(
                    "PRAGMA writable_schema = ON;
                     UPDATE sqlite_master SET rootpage = {b} WHERE name = 'holds_by_subject';
                     UPDATE sqlite_master SET rootpage = {a} WHERE name = 'records_by_subject';
                     PRAGMA schema_version = {};
                     PRAGMA writable_schema = OFF;",
                    version + 1
                ))
                .unwrap();
        };
        let edits: [Edit<'_>; 4] = [
            (
                "an index",
                &|| {
                    other
                        .execute_batch("CREATE UNIQUE INDEX extra ON meta (value)")
                        .unwrap();
                },
                &|| other.execute_batch("DROP INDEX extra").unwrap(),
                "index `extra` on `meta` was added",
            ),
            (
                "a conflict clause",
                &|| rewrite("meta", "PRIMARY KEY,", "PRIMARY KEY ON CONFLICT IGNORE,"),
                &|| rewrite("meta", "PRIMARY KEY ON CONFLICT IGNORE,", "PRIMARY KEY,"),
                "table `meta` is not defined as kluis's migrations made it",
            ),
            (
                "a foreign key action",
                &|| rewrite("evidence", "ON DELETE CASCADE", "ON DELETE SET NULL"),
                &|| rewrite("evidence", "ON DELETE SET NULL", "ON DELETE CASCADE"),
                "table `evidence` is not defined as kluis's migrations made it",
            ),
            (
                "b-trees swapped",
                &swap,
                &swap,
                "`holds`'s b-trees moved and no longer match: row 1 missing from index \
                 holds_by_subject (swapped by hand)",
            ),
        ];
        let row = crate::store::conformance::audit_row;
        for (value, (what, edit, undo, named)) in (0u64..).zip(edits) {
            edit();
            // The trail's own tables untouched, it goes on (to record what was refused).
            let seq = value + 1;
            store.append_audit(&[row(seq)]).unwrap();
            assert_eq!(store.audit_tail().unwrap().map(|r| r.seq), Some(seq));
            match store.replace_meta("k", Some(format!("v{value}").as_bytes()), b"x") {
                Err(StoreError::Unavailable(message)) => {
                    assert!(message.contains(named), "{what}: {message}");
                    assert!(
                        message.contains("changed outside kluis"),
                        "{what}: {message}"
                    );
                }
                other => panic!("{what}: expected a refusal, got {other:?}"),
            }
            assert_eq!(
                store.meta("k").unwrap(),
                Some(format!("v{value}").into_bytes()),
                "{what}"
            );
            // Nor is anything found through an index over a subject, an expiry, a key version
            // or a tag (an index may find other rows than were stored: a listing, an erasure
            // or a rekey would leave rows out); rows read by their id, checked against their
            // MACs, and whole tables still are (`store verify`).
            for refused in [
                store.holds(Some("REL-1"), false).map(drop),
                store.subject_records("REL-1").map(drop),
                store.expired_records(i64::MAX, None, 10).map(drop),
            ] {
                match refused {
                    Err(StoreError::Unavailable(message)) => {
                        assert!(message.contains(named), "{what}: {message}");
                        assert!(
                            message.contains("Nor does kluis list rows"),
                            "{what}: {message}"
                        );
                    }
                    other => panic!("{what}: expected a refused read, got {other:?}"),
                }
            }
            assert_eq!(store.holds(None, false).unwrap().len(), 1, "{what}");
            assert!(store.record("rec_1").unwrap().is_none(), "{what}");
            // The twin: put back, the same write is made, and reads are served again (the
            // first read finds it put back itself).
            undo();
            assert_eq!(
                store.holds(Some("REL-1"), false).unwrap().len(),
                1,
                "{what}"
            );
            let next = format!("v{}", value + 1);
            store
                .replace_meta("k", Some(format!("v{value}").as_bytes()), next.as_bytes())
                .unwrap();
            assert_eq!(store.meta("k").unwrap(), Some(next.into_bytes()), "{what}");
        }
        // An edit of the trail's tables stops the trail as well; put back, it goes on.
        let other = Connection::open(trail_path(&path)).unwrap();
        other
            .execute_batch("CREATE INDEX audit_by_entry ON audit (entry)")
            .unwrap();
        match store.append_audit(&[row(5)]) {
            Err(StoreError::Unavailable(message)) => {
                assert!(
                    message.contains("`audit_by_entry` on `audit` was added"),
                    "{message}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        other.execute_batch("DROP INDEX audit_by_entry").unwrap();
        store.append_audit(&[row(5)]).unwrap();
        assert_eq!(store.audit_tail().unwrap().map(|r| r.seq), Some(5));
    }

    #[test]
    fn a_writer_held_by_another_connection_is_answered_as_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let store = SqliteStore::open(&path).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        {
            // Without waiting the whole busy timeout in a test.
            let conn = store.writer.lock().unwrap();
            conn.busy_timeout(std::time::Duration::from_millis(50))
                .unwrap();
        }
        let refused = store.replace_meta("k", None, b"v");
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        other.execute_batch("ROLLBACK").unwrap();
        store.replace_meta("k", None, b"v").unwrap();
    }

    /// A read finds the writer idle and reads there, taking no write lock; with the writer busy
    /// it reads on a reader; either way it sees what was committed, and the writer's
    /// transactions take the write lock when they begin again afterwards.
    #[test]
    fn reads_on_the_idle_writer_or_a_reader_see_the_same_and_take_no_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let store = SqliteStore::open(&path).unwrap();
        store.replace_meta("k", None, b"v").unwrap();
        let read_meta = |c: &Connection| {
            let tx = c.unchecked_transaction()?;
            let v: Vec<u8> =
                tx.query_row("SELECT value FROM meta WHERE key = 'k'", [], |r| r.get(0))?;
            // Another connection can take the write lock while this read is open.
            let other = Connection::open(&path).unwrap();
            other.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
            tx.finish()?;
            Ok(v)
        };
        // The writer idle: the read runs on it.
        assert_eq!(store.read(read_meta).unwrap(), b"v");
        assert!(store.readers.lock().unwrap().is_empty(), "read on a reader");
        // The writer busy: the read runs on a reader, kept for the next.
        {
            let _busy = store.writer.lock().unwrap();
            assert_eq!(store.read(read_meta).unwrap(), b"v");
        }
        assert_eq!(store.readers.lock().unwrap().len(), 1, "no reader used");
        // The writer's own transactions still take the write lock when they begin.
        {
            let writer = store.writer.lock().unwrap();
            let tx = writer.unchecked_transaction().unwrap();
            let other = Connection::open(&path).unwrap();
            other
                .busy_timeout(std::time::Duration::from_millis(10))
                .unwrap();
            assert!(other.execute_batch("BEGIN IMMEDIATE").is_err());
            tx.rollback().unwrap();
        }
    }

    /// Holds the write lock of the database at `path` from another connection for 300 ms.
    fn hold_write_lock(path: &Path) -> std::thread::JoinHandle<()> {
        let other = Connection::open(path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            other.execute_batch("ROLLBACK").unwrap();
        })
    }

    #[test]
    fn a_write_that_reads_first_waits_for_a_lock_held_for_a_moment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let store = SqliteStore::open(&path).unwrap();
        // `initialize` counts the meta rows, then inserts: a read, then a write, in one
        // transaction. Begun deferred, its write would be refused at once (SQLITE_BUSY
        // without the busy timeout) instead of waiting for the lock.
        let release = hold_write_lock(&path);
        store.initialize(&[("k", b"v".to_vec())], &[]).unwrap();
        release.join().unwrap();
        // So does a grouped write (many callers' jobs in one transaction).
        let release = hold_write_lock(&path);
        let read_then_write = store.group.run(&store.writer, |c| {
            let n: i64 = c
                .query_row(
                    "SELECT count(*) FROM meta WHERE key <> 'store_mark'",
                    [],
                    |r| r.get(0),
                )
                .map_err(db)?;
            c.execute("INSERT INTO meta (key, value) VALUES ('n', ?1)", [n])
                .map_err(db)?;
            Ok(n)
        });
        assert_eq!(read_then_write.unwrap(), 1);
        release.join().unwrap();
    }

    #[test]
    fn sqlite_is_built_without_process_wide_page_cache_and_allocation_locks() {
        // `.cargo/config.toml` sets the build flags; without them every reader thread queues
        // on two global mutexes for each page it fetches.
        let c = Connection::open_in_memory().unwrap();
        let options: Vec<String> = c
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    /// SQLite's temporary files open in this process (`etilqs_…`, unlinked at once).
    #[cfg(target_os = "linux")]
    fn sqlite_temp_files() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().contains("etilqs_"))
            .count()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn statement_journals_stay_in_memory() {
        // `.cargo/config.toml` keeps statement journals in memory; by default SQLite moves one
        // past 64 KiB to a temporary file outside the data directory and writes every page of
        // it there.
        let dir = tempfile::tempdir().unwrap();
        let c = open_connection(&dir.path().join("t.db"), true).unwrap();
        c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        c.execute(
            "WITH RECURSIVE s(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM s WHERE k < 3000)
             INSERT INTO t (k, v) SELECT k, zeroblob(3000) FROM s",
            [],
        )
        .unwrap();
        // A savepoint that changes `rows` rows of 3,000 bytes, a page each, and whether a
        // temporary file was opened while it was open.
        let spills = |rows: i64| {
            c.execute_batch("BEGIN IMMEDIATE; SAVEPOINT kluis_job")
                .unwrap();
            let before = sqlite_temp_files();
            c.execute("UPDATE t SET v = zeroblob(2999) WHERE k <= ?1", [rows])
                .unwrap();
            let after = sqlite_temp_files();
            c.execute_batch("RELEASE kluis_job; COMMIT").unwrap();
            after > before
        };
        // 200 pages (800 KiB, a group commit's savepoints are far smaller) and 2,900 (11 MiB).
        assert!(
            !spills(200),
            "a statement journal of 800 KiB went to a file"
        );
        assert!(
            !spills(2900),
            "a statement journal of 11 MiB went to a file"
        );
        // What the check looks for is found: a sort larger than the page cache goes to a
        // temporary file.
        c.execute_batch("PRAGMA cache_size = 10").unwrap();
        let mut sort = c.prepare("SELECT k FROM t ORDER BY v || k").unwrap();
        let mut rows = sort.query([]).unwrap();
        let before = sqlite_temp_files();
        rows.next().unwrap().unwrap();
        assert!(
            sqlite_temp_files() > before,
            "a sort of 9 MiB left no temporary file to be seen"
        );
    }

    /// A store in a new directory (kept while the first value lives) holding record `id` of
    /// `subject` (`conformance::one_record`), and the path of its file.
    fn store_with_record(id: &str, subject: &str) -> (tempfile::TempDir, PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let store = SqliteStore::open(&path).unwrap();
        crate::store::conformance::one_record(&store, id, subject);
        (dir, path, store)
    }

    /// The `phone` field of record `id`, as a read with facts gives it.
    fn phone_of(store: &SqliteStore, id: &str) -> FieldRow {
        let read = store.record_with_facts(id).unwrap().unwrap();
        read.fields
            .iter()
            .find(|f| f.name == "phone")
            .unwrap()
            .clone()
    }

    /// A file renamed over the store's or the trail's file while the store is open (an older
    /// copy put back under a running node) is neither read by a reader opened after it nor
    /// written: both are refused as corrupt, while a reader opened before goes on with the file
    /// the store opened. The twin: before the rename, the same calls succeed.
    #[test]
    fn a_file_renamed_over_the_stores_or_the_trails_is_neither_read_nor_written() {
        for trail in [false, true] {
            let (_dir, path, store) = store_with_record("rec_s", "rel-s");
            let new_reader = |store: &SqliteStore| {
                store.read_on_reader(|_| Ok(store.read_on_reader(|_| Ok(()))))
            };
            let new_reader_alone = |store: &SqliteStore| store.read_on_reader(|_| Ok(()));
            let write = |store: &SqliteStore, id: &str| {
                store.insert_record(&crate::store::conformance::record_row(id, "rel-s"), &[])
            };
            new_reader(&store).unwrap().unwrap();
            write(&store, "rec_before").unwrap();
            // The readers opened so far are kept aside: the reads below open new ones.
            let before: Vec<Reader> = std::mem::take(&mut *store.readers.lock().unwrap());
            assert!(!before.is_empty());
            let file = if trail {
                trail_path(&path)
            } else {
                path.clone()
            };
            let copy = path.with_extension("copy");
            std::fs::copy(&file, &copy).unwrap();
            std::fs::rename(&copy, &file).unwrap();
            let refused = |what: &str, r: Result<(), StoreError>| match r {
                Err(StoreError::Corrupt(why)) => assert!(why.contains("replaced"), "{why}"),
                other => panic!("{what} (trail {trail}): {other:?}"),
            };
            refused("a new reader", new_reader_alone(&store));
            refused("a write", write(&store, "rec_after"));
            refused(
                "an audit append",
                store
                    .append_audit(&[AuditRow {
                        seq: 1,
                        entry: b"{}".to_vec(),
                        prev_hash: vec![0; 32],
                        hash: vec![1; 32],
                        mac: vec![2; 32],
                    }])
                    .map(|_| ()),
            );
            refused("a backup's snapshot", store.snapshot().map(|_| ()));
            // The log the store's connections share is still there, its commits in it.
            assert!(path.with_extension("db-wal").exists());
            // A reader opened before the rename reads the file the store opened.
            *store.readers.lock().unwrap() = before;
            assert_eq!(phone_of(&store, "rec_s").sealed, [1; 30]);
            assert!(store.record("rec_before").unwrap().is_some());
        }
    }

    /// What the store keeps of a read is not found once another connection changed the file:
    /// rows edited by hand (by another process, as the tests' connection is to SQLite) after
    /// a record was read, and read again from what was kept, are read as edited.
    #[test]
    fn a_read_after_rows_were_edited_by_hand_reads_them_as_edited() {
        let (_dir, path, store) = store_with_record("rec_c", "rel-c");
        let first = store.record_with_facts("rec_c").unwrap().unwrap();
        assert_eq!(store.record_with_facts("rec_c").unwrap().unwrap(), first);
        let by_hand = Connection::open(&path).unwrap();
        let phone = |store: &SqliteStore| phone_of(store, "rec_c").sealed;
        by_hand
            .execute(
                "UPDATE fields SET sealed = x'00' WHERE record_id = 'rec_c' AND name = 'phone'",
                [],
            )
            .unwrap();
        assert_eq!(phone(&store), [0]);
        // The subject's facts alike: a hold's row put in by hand is read with the record.
        assert!(first.facts.holds.is_empty());
        by_hand
            .execute(
                "INSERT INTO holds (id, subject, reason, case_ref, placed_by, placed_at, mac)
                 VALUES ('hold_c', 'rel-c', 'r', 'c', 'po', 1, x'00')",
                [],
            )
            .unwrap();
        let read = store.record_with_facts("rec_c").unwrap().unwrap();
        assert_eq!(
            read.facts
                .holds
                .iter()
                .map(|h| h.id.as_str())
                .collect::<Vec<_>>(),
            ["hold_c"]
        );
        by_hand
            .execute_batch("DELETE FROM fields; DELETE FROM records;")
            .unwrap();
        assert_eq!(store.record_with_facts("rec_c").unwrap(), None);
    }

    /// A read on a reader other than the one that filled the cache, after a commit: the
    /// commit is seen, whichever reader looks first; and a reader new to the pool finds nothing
    /// kept from before a commit. An append to the trail (each read's) leaves what is kept as it is.
    #[test]
    fn a_commit_is_seen_by_each_reader_and_an_append_to_the_trail_keeps_the_cache() {
        let (_dir, path, store) = store_with_record("rec_r", "rel-r");
        let hits = || store.cache.hits.load(Ordering::Relaxed);
        let sealed = || phone_of(&store, "rec_r").sealed;
        // Reader A fills the cache while reader H is held; then H, new, looks and reads.
        let held = |f: &dyn Fn() -> Vec<u8>| store.read_on_reader(|_| Ok(f())).unwrap();
        assert_eq!(held(&sealed), [1; 30]);
        assert_eq!(sealed(), [1; 30]);
        assert_eq!(store.readers.lock().unwrap().len(), 2);
        // Both have looked; a record is kept at its second read since, and then found by
        // either reader, an append to the trail between them.
        assert_eq!(sealed(), [1; 30]);
        let before = hits();
        assert_eq!(sealed(), [1; 30]);
        store
            .append_audit(&[crate::store::conformance::audit_row(1)])
            .unwrap();
        assert_eq!(held(&sealed), [1; 30]);
        assert_eq!(hits(), before + 2, "not answered from the cache");
        // A commit by hand: the reader that looks first sees it, then the other.
        let by_hand = Connection::open(&path).unwrap();
        for (n, read) in [&held as &dyn Fn(&dyn Fn() -> Vec<u8>) -> Vec<u8>, &|f| f()]
            .into_iter()
            .enumerate()
        {
            let value = u8::try_from(n).unwrap() + 2;
            by_hand
                .execute(
                    "UPDATE fields SET sealed = ?1 WHERE record_id = 'rec_r' AND name = 'phone'",
                    [vec![value]],
                )
                .unwrap();
            assert_eq!(read(&sealed), [value]);
            assert_eq!(sealed(), [value]);
            assert_eq!(held(&sealed), [value]);
        }
    }

    /// A reader opened while the others are busy finds what was kept, and a commit made before
    /// it opened, which no reader has seen yet, is read as committed.
    #[test]
    fn a_reader_new_to_the_pool_keeps_the_cache_and_sees_a_commit_before_it() {
        let (_dir, path, store) = store_with_record("rec_n", "rel-n");
        let hits = || store.cache.hits.load(Ordering::Relaxed);
        let sealed = || phone_of(&store, "rec_n").sealed;
        let held = |f: &dyn Fn() -> Vec<u8>| store.read_on_reader(|_| Ok(f())).unwrap();
        assert_eq!(sealed(), [1; 30]);
        assert_eq!(sealed(), [1; 30]);
        // The one reader held, the read opens a second: it finds what was kept.
        let before = hits();
        assert_eq!(held(&sealed), [1; 30]);
        assert_eq!(hits(), before + 1, "a new reader emptied the cache");
        assert_eq!(store.readers.lock().unwrap().len(), 2);
        // A commit by hand that neither has seen; both held, a third reader reads it.
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE fields SET sealed = x'07' WHERE record_id = 'rec_n' AND name = 'phone'",
                [],
            )
            .unwrap();
        assert_eq!(held(&|| held(&sealed)), [7]);
        assert_eq!(store.readers.lock().unwrap().len(), 3);
        assert_eq!(sealed(), [7]);
        assert_eq!(held(&|| held(&sealed)), [7]);
    }

    /// A commit seen by several readers empties the cache once: the first reader to see it
    /// reads it and keeps it, and the others, each seeing the commit at its next look, find
    /// what the first kept.
    #[test]
    fn a_commit_seen_by_several_readers_empties_the_cache_once() {
        let (_dir, path, store) = store_with_record("rec_o", "rel-o");
        let hits = || store.cache.hits.load(Ordering::Relaxed);
        let sealed = || phone_of(&store, "rec_o").sealed;
        let held = |f: &dyn Fn() -> Vec<u8>| store.read_on_reader(|_| Ok(f())).unwrap();
        // Three readers in the pool, each of which has looked.
        assert_eq!(held(&|| held(&sealed)), [1; 30]);
        assert_eq!(store.readers.lock().unwrap().len(), 3);
        assert_eq!(held(&sealed), [1; 30]);
        assert_eq!(sealed(), [1; 30]);
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE fields SET sealed = x'09' WHERE record_id = 'rec_o' AND name = 'phone'",
                [],
            )
            .unwrap();
        // The first reader sees the commit and keeps the record at its second read.
        assert_eq!(sealed(), [9]);
        assert_eq!(sealed(), [9]);
        let before = hits();
        // The second and the third see the commit now, and find what the first kept.
        assert_eq!(held(&sealed), [9]);
        assert_eq!(held(&|| held(&sealed)), [9]);
        assert_eq!(hits(), before + 2, "a commit seen again emptied the cache");
    }

    /// Readers on several threads while a writer replaces a value over and over: none reads an
    /// older value after a newer one, and once the writer is done each reads the last.
    #[test]
    fn reads_beside_writes_never_go_back_to_an_older_value() {
        let (_dir, _, store) = store_with_record("rec_w", "rel-w");
        let record = store
            .record_with_facts("rec_w")
            .unwrap()
            .unwrap()
            .record
            .clone();
        let value = |store: &SqliteStore| {
            // The value as first stored is 0.
            phone_of(store, "rec_w")
                .version
                .strip_prefix('w')
                .map_or(0, |n| n.parse::<u32>().unwrap())
        };
        const WRITES: u32 = 300;
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    let mut last = 0;
                    while !done.load(Ordering::SeqCst) {
                        let now = value(&store);
                        assert!(now >= last, "read {now} after {last}");
                        last = now;
                    }
                    assert_eq!(value(&store), WRITES);
                });
            }
            // Set however the writer ends, so that the readers stop when it fails.
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _done = Done(&done);
            let mut mac = record.fields_mac.clone();
            for n in 1..=WRITES {
                let next = n.to_be_bytes().repeat(8);
                let field = FieldRow {
                    mac: vec![0xCD; 32],
                    version: format!("w{n}"),
                    name: "phone".into(),
                    category: crate::domain::Category::Contact,
                    kind: crate::domain::FieldKind::Text,
                    key_gen: 1,
                    sealed: n.to_be_bytes().to_vec(),
                    tags: Vec::new(),
                };
                let change = crate::store::FieldsMac {
                    prev: &mac,
                    next: &next,
                };
                assert!(store.update_fields("rec_w", &[field], 100, change).unwrap());
                // Read on this thread right after the write: the write is there.
                assert_eq!(value(&store), n);
                mac = next;
            }
        });
    }

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

    /// The objects of the trail's tables that the store's file at `path` still holds.
    fn trail_objects_left(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE tbl_name LIKE 'audit%' OR tbl_name = 'trail_mark'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// The trail lives in a file of its own: a store whose trail file is gone is not opened
    /// (it would start a new trail, empty, as if nothing had been read); the twin: put back,
    /// it opens with its trail.
    #[test]
    fn a_store_without_its_trail_file_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .append_audit(&[crate::store::conformance::audit_row(1)])
                .unwrap();
        }
        let trail = trail_path(&path);
        assert!(trail.exists());
        let away = dir.path().join("elsewhere");
        std::fs::rename(&trail, &away).unwrap();
        match SqliteStore::open(&path) {
            Err(StoreError::Refused(message)) => {
                assert!(message.contains("kluis.db.trail` is missing"), "{message}");
                assert!(message.contains("restore a backup"), "{message}");
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        assert!(!trail.exists(), "no empty trail is made in its place");
        std::fs::rename(&away, &trail).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.audit_tail().unwrap().map(|r| r.seq), Some(1));
    }

    /// A trail's or store's file that is not a regular file, or the two that are one file,
    /// are refused before SQLite opens them, naming the file and the cause. The twin: the
    /// files put back as they were open.
    #[test]
    fn a_trail_or_store_file_that_is_not_a_file_of_its_own_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        drop(SqliteStore::open(&path).unwrap());
        let trail = trail_path(&path);
        let kept = dir.path().join("kept");
        std::fs::rename(&trail, &kept).unwrap();
        let refused = |expect: &str| match SqliteStore::open(&path) {
            Err(StoreError::Refused(message)) => {
                assert!(message.contains(expect), "{message}");
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        };
        std::os::unix::fs::symlink("/dev/null", &trail).unwrap();
        refused("kluis.db.trail` is a device or another special file, not a regular file");
        std::fs::remove_file(&trail).unwrap();
        std::fs::create_dir(&trail).unwrap();
        refused("kluis.db.trail` is a directory");
        std::fs::remove_dir(&trail).unwrap();
        std::fs::hard_link(&path, &trail).unwrap();
        refused("are one file (a hard or symbolic link)");
        std::fs::remove_file(&trail).unwrap();
        std::os::unix::fs::symlink(&path, &trail).unwrap();
        refused("are one file (a hard or symbolic link)");
        std::fs::remove_file(&trail).unwrap();
        let store_kept = dir.path().join("store-kept");
        std::fs::rename(&path, &store_kept).unwrap();
        std::os::unix::fs::symlink("/dev/null", &path).unwrap();
        std::fs::rename(&kept, &trail).unwrap();
        refused("the database file `");
        std::fs::remove_file(&path).unwrap();
        // A link to the file itself is the file.
        std::os::unix::fs::symlink(&store_kept, &path).unwrap();
        drop(SqliteStore::open(&path).unwrap());
    }

    /// A log, shared-memory index or journal of the store's or the trail's file that is a link
    /// (symbolic, to a file elsewhere, to a device, or dangling; or a hard link to a file
    /// elsewhere), a directory or a special file is refused
    /// before SQLite opens anything, naming the file and what it is (SQLite opens a FIFO as the
    /// log and a directory as the index, and refuses a link with no word of the cause); the
    /// file a link names is left as it was. The twin: with the name free again, the store opens.
    #[test]
    fn a_log_index_or_journal_that_is_not_a_regular_file_is_refused() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        drop(SqliteStore::open(&path).unwrap());
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("elsewhere");
        std::fs::write(&target, b"not kluis's").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let fifo = outside.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        for file in ["kluis.db", "kluis.db.trail"] {
            for suffix in ["-wal", "-shm", "-journal"] {
                let side = dir.path().join(format!("{file}{suffix}"));
                let planted: [(&str, &dyn Fn()); 6] = [
                    ("a symbolic link", &|| {
                        std::os::unix::fs::symlink(&target, &side).unwrap()
                    }),
                    ("a symbolic link", &|| {
                        std::os::unix::fs::symlink("/dev/null", &side).unwrap();
                    }),
                    ("a symbolic link", &|| {
                        std::os::unix::fs::symlink(outside.path().join("none"), &side).unwrap();
                    }),
                    ("a directory", &|| std::fs::create_dir(&side).unwrap()),
                    ("a file with another name too (a hard link)", &|| {
                        std::fs::hard_link(&target, &side).unwrap();
                    }),
                    ("a device or another special file", &|| {
                        std::fs::rename(&fifo, &side).unwrap();
                    }),
                ];
                for (kind, plant) in planted {
                    plant();
                    match SqliteStore::open(&path) {
                        Err(StoreError::Refused(message)) => assert!(
                            message.contains(&format!("{file}{suffix}` is {kind}, not a regular")),
                            "{message}"
                        ),
                        other => panic!(
                            "{file}{suffix}: expected a refusal, got {:?}",
                            other.map(|_| ())
                        ),
                    }
                    let meta = side.symlink_metadata().unwrap();
                    if meta.is_dir() {
                        std::fs::remove_dir(&side).unwrap();
                    } else if meta.file_type().is_fifo() {
                        std::fs::rename(&side, &fifo).unwrap();
                    } else {
                        std::fs::remove_file(&side).unwrap();
                    }
                }
                assert_eq!(std::fs::read(&target).unwrap(), b"not kluis's");
                assert_eq!(
                    std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
                    0o644
                );
                assert!(!outside.path().join("none").exists());
                drop(SqliteStore::open(&path).unwrap());
            }
        }
    }

    /// Puts a copy of the trail of the store at `path` back into its store file, the trail's
    /// tables as its trail's file holds them, then runs `edit` on the copy: what a move into the
    /// trail's file that stopped after its copy leaves (no edit), or a trail put in the store's
    /// file by hand.
    fn trail_back_in_store_file(path: &Path, edit: &str) {
        let conn = Connection::open(path).unwrap();
        conn.execute(
            "ATTACH DATABASE ?1 AS t",
            [trail_path(path).to_str().unwrap()],
        )
        .unwrap();
        let objects: Vec<String> = conn
            .prepare(
                "SELECT sql FROM t.sqlite_master WHERE sql IS NOT NULL \
                 ORDER BY type <> 'table', rowid",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for sql in objects {
            conn.execute_batch(&sql).unwrap();
        }
        for table in TRAIL_TABLES {
            conn.execute_batch(&format!("INSERT INTO main.{table} SELECT * FROM t.{table}"))
                .unwrap();
        }
        conn.execute_batch(edit).unwrap();
    }

    fn seqs(store: &SqliteStore) -> Vec<u64> {
        store
            .audit_entries(1, 100)
            .unwrap()
            .into_iter()
            .map(|r| r.seq)
            .collect()
    }

    /// A move of the trail into its file that stopped after the copy (the same trail in both
    /// files) is made again at the next opening, nothing doubled or lost. A trail in the store's
    /// file that differs from the one in the trail's file (forged, cut back, emptied) is not
    /// moved over it: the store is not opened, and neither file changes; the twin: dropped from
    /// the store's file, the store opens with its trail whole.
    #[test]
    fn a_move_of_the_trail_is_made_again_and_never_over_another_trail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            for seq in 1..=5 {
                store
                    .append_audit(&[crate::store::conformance::audit_row(seq)])
                    .unwrap();
            }
        }
        trail_back_in_store_file(&path, "");
        {
            let store = SqliteStore::open(&path).unwrap();
            assert_eq!(seqs(&store), [1, 2, 3, 4, 5]);
            assert_eq!(
                trail_objects_left(&path),
                0,
                "the store's file lets go of the trail once it is moved"
            );
        }
        for (edit, says) in [
            (
                "DELETE FROM audit WHERE seq > 3",
                "3 entries, the last entry 3",
            ),
            ("DELETE FROM audit", "no entries"),
            (
                "UPDATE audit SET mac = zeroblob(32) WHERE seq = 5",
                "5 entries, the last entry 5",
            ),
        ] {
            trail_back_in_store_file(&path, edit);
            match SqliteStore::open(&path) {
                Err(StoreError::Refused(message)) => {
                    assert!(message.contains(says), "{edit}: {message}");
                    assert!(
                        message.contains("(5 entries, the last entry 5), and they differ"),
                        "{edit}: {message}"
                    );
                }
                other => panic!("{edit}: expected a refusal, got {:?}", other.map(|_| ())),
            }
            assert!(
                trail_objects_left(&path) > 0,
                "{edit}: the store's file as it was"
            );
            Connection::open(&path)
                .unwrap()
                .execute_batch(
                    "DROP TABLE audit_subjects; DROP TABLE audit_runs; DROP TABLE audit;
                     DROP TABLE trail_mark;",
                )
                .unwrap();
            let store = SqliteStore::open(&path).unwrap();
            assert_eq!(seqs(&store), [1, 2, 3, 4, 5], "{edit}");
        }
        // Nor is a new store made beside a trail whose store file is gone: its empty trail
        // would be moved over the old one.
        let away = dir.path().join("elsewhere.db");
        std::fs::rename(&path, &away).unwrap();
        match SqliteStore::open(&path) {
            Err(StoreError::Refused(message)) => {
                assert!(
                    message.contains("is missing while its audit trail"),
                    "{message}"
                );
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        assert!(!path.exists());
        std::fs::rename(&away, &path).unwrap();
        assert_eq!(seqs(&SqliteStore::open(&path).unwrap()), [1, 2, 3, 4, 5]);
    }

    /// An older copy of the store's file put back beside a newer trail (a revocation, an
    /// erasure, a destruction undone) is not opened: the trail saw the file written further.
    /// Nothing of either file changes; the twin: the file that goes with the trail opens.
    #[test]
    fn an_older_store_file_beside_a_newer_trail_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let row = crate::store::conformance::audit_row;
        {
            let store = SqliteStore::open(&path).unwrap();
            store.replace_meta("k", None, b"v0").unwrap();
            store.append_audit(&[row(1)]).unwrap();
        }
        let old = dir.path().join("old.db");
        std::fs::copy(&path, &old).unwrap();
        {
            let store = SqliteStore::open(&path).unwrap();
            // A write of the store's file, then an append that sees it.
            store.replace_meta("k", Some(b"v0"), b"v1").unwrap();
            store.append_audit(&[row(2)]).unwrap();
        }
        let newer = dir.path().join("newer.db");
        std::fs::rename(&path, &newer).unwrap();
        std::fs::copy(&old, &path).unwrap();
        match SqliteStore::open(&path) {
            Err(StoreError::RolledBack(message)) => {
                assert!(
                    message.contains("is older than its audit trail"),
                    "{message}"
                );
                assert!(message.contains("restore a backup"), "{message}");
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        std::fs::rename(&newer, &path).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.meta("k").unwrap().as_deref(), Some(&b"v1"[..]));
        assert_eq!(seqs(&store), [1, 2]);
    }

    /// The marks as the files hold them: the store's, and the trail's record of it.
    fn marks(path: &Path) -> (i64, i64) {
        let store = Connection::open(path).unwrap();
        let trail = Connection::open(trail_path(path)).unwrap();
        (
            store
                .query_row("SELECT value FROM meta WHERE key = 'store_mark'", [], |r| {
                    r.get(0)
                })
                .unwrap(),
            trail
                .query_row("SELECT store_mark FROM trail_mark", [], |r| r.get(0))
                .unwrap(),
        )
    }

    /// An older copy of the store's file that lacks only writes no append followed (the last
    /// writes before a stop) is not opened either: the trail records the mark they moved once
    /// the writer has rested `MARK_AFTER` (while the store runs, so a node killed then is
    /// covered), or when the store closes. The twin: the file that goes with the trail opens.
    #[test]
    fn an_older_store_file_lacking_only_the_writes_after_the_last_append_is_not_opened() {
        let row = crate::store::conformance::audit_row;
        for close_at_once in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kluis.db");
            {
                let store = SqliteStore::open(&path).unwrap();
                store.replace_meta("k", None, b"v0").unwrap();
                store.append_audit(&[row(1)]).unwrap();
            }
            let old = dir.path().join("old.db");
            std::fs::copy(&path, &old).unwrap();
            {
                let store = SqliteStore::open(&path).unwrap();
                // A write of the store's file, and no append after it.
                store.replace_meta("k", Some(b"v0"), b"v1").unwrap();
                if !close_at_once {
                    let (moved, _) = marks(&path);
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while marks(&path).1 < moved || store.writer.mark_owed() {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "the trail did not record the mark while the writer rested"
                        );
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
            let (store_mark, trail_mark) = marks(&path);
            assert_eq!(store_mark, trail_mark, "close at once {close_at_once}");
            let newer = dir.path().join("newer.db");
            std::fs::rename(&path, &newer).unwrap();
            std::fs::copy(&old, &path).unwrap();
            match SqliteStore::open(&path) {
                Err(StoreError::RolledBack(message)) => {
                    assert!(
                        message.contains("is older than its audit trail"),
                        "{message}"
                    );
                }
                other => panic!(
                    "close at once {close_at_once}: expected a refusal, got {:?}",
                    other.map(|_| ())
                ),
            }
            std::fs::rename(&newer, &path).unwrap();
            let store = SqliteStore::open(&path).unwrap();
            assert_eq!(store.meta("k").unwrap().as_deref(), Some(&b"v1"[..]));
            assert_eq!(seqs(&store), [1]);
        }
    }

    /// The thread checks the trail's schema as every append does: with an index added to the
    /// trail's table of the mark by hand, it records nothing; the twin: dropped, the mark is
    /// recorded.
    #[test]
    fn the_mark_is_not_recorded_in_a_trail_whose_schema_was_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let store = SqliteStore::open(&path).unwrap();
        store.replace_meta("k", None, b"v0").unwrap();
        store
            .append_audit(&[crate::store::conformance::audit_row(1)])
            .unwrap();
        let trail = Connection::open(trail_path(&path)).unwrap();
        // A write of the store's file, then the table added before the writer has rested
        // (tried again should the thread have recorded the mark first on a busy machine).
        let mut value = 0;
        let store_mark = loop {
            let (old, new) = (format!("v{value}"), format!("v{}", value + 1));
            store
                .replace_meta("k", Some(old.as_bytes()), new.as_bytes())
                .unwrap();
            value += 1;
            trail
                .execute_batch("CREATE INDEX by_hand ON trail_mark (store_mark)")
                .unwrap();
            let (store_mark, trail_mark) = marks(&path);
            if trail_mark < store_mark {
                break store_mark;
            }
            trail.execute_batch("DROP INDEX by_hand").unwrap();
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (_, trail_mark) = marks(&path);
        assert!(trail_mark < store_mark, "{trail_mark} {store_mark}");
        assert!(store.writer.mark_owed());
        trail.execute_batch("DROP INDEX by_hand").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while marks(&path).1 < store_mark || store.writer.mark_owed() {
            assert!(
                std::time::Instant::now() < deadline,
                "not recorded once put right"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// An append records the mark a write before it moved, and leaves none owed: the thread
    /// has nothing to record for it.
    #[test]
    fn appends_record_the_mark_and_owe_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let store = SqliteStore::open(&path).unwrap();
        store.replace_meta("k", None, b"v0").unwrap();
        store
            .append_audit(&[crate::store::conformance::audit_row(1)])
            .unwrap();
        assert!(!store.writer.mark_owed());
        let (store_mark, trail_mark) = marks(&path);
        assert_eq!(store_mark, trail_mark);
    }

    /// A trail table a migration made in the store's file after the trail had its own (the
    /// migrations run on the store's file) is moved to the trail's file when the store opens.
    #[test]
    fn a_trail_table_made_after_the_move_joins_the_trail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(trail_path(&path))
            .unwrap()
            .execute_batch("DROP TABLE trail_mark")
            .unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch(MIGRATIONS.last().unwrap())
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(trail_objects_left(&path), 0);
        store.replace_meta("k", None, b"v").unwrap();
        store
            .append_audit(&[crate::store::conformance::audit_row(1)])
            .unwrap();
    }

    /// The trail's own file is not where other tables are to be found: a table of the store
    /// made in it (which every statement would find before the store's, as the trail's file
    /// is `main`) is a schema not kluis's own, and no write is made; the twin: dropped, writes
    /// go on.
    #[test]
    fn a_store_table_made_in_the_trails_file_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let store = SqliteStore::open(&path).unwrap();
        store.replace_meta("k", None, b"v0").unwrap();
        let trail = Connection::open(trail_path(&path)).unwrap();
        trail
            .execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
            .unwrap();
        match store.replace_meta("k", Some(b"v0"), b"v1") {
            Err(StoreError::Unavailable(message)) => {
                assert!(
                    message.contains("table `meta` on `meta` was added in the trail's file"),
                    "{message}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        trail.execute_batch("DROP TABLE meta").unwrap();
        store.replace_meta("k", Some(b"v0"), b"v1").unwrap();
        assert_eq!(store.meta("k").unwrap().as_deref(), Some(&b"v1"[..]));
    }

    #[test]
    fn the_trail_is_found_by_subject_across_its_runs_and_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let store = SqliteStore::open(&path).unwrap();
        let last = crate::store::conformance::trail_by_subject(&store);
        let conn = Connection::open(trail_path(&path)).unwrap();
        let runs = |conn: &Connection| -> Vec<(i64, i64)> {
            conn.prepare("SELECT run, up_to FROM audit_runs ORDER BY run")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        // Two runs (each at the first batch that took it past a run), the rest past them.
        let marks = runs(&conn);
        assert_eq!(marks.len(), 2, "{marks:?}");
        assert!(marks[0].1 >= audit::SUBJECT_RUN && marks[1].1 - marks[0].1 >= audit::SUBJECT_RUN);
        assert!(
            marks[1].1 < i64::try_from(last).unwrap(),
            "entries past the last run"
        );
        // The trail cut back into the second run (a test's or a tamperer's doing, which the
        // chain's verification finds): appending again forgets what the index holds past the
        // cut, and the lookups agree with the trail as it is.
        let cut = u64::try_from(marks[1].1).unwrap() - 10;
        conn.execute("DELETE FROM audit WHERE seq > ?1", [cut])
            .unwrap();
        crate::store::conformance::lookups_by_subject_agree(&store, cut);
        store
            .append_audit(&[crate::store::conformance::audit_row(cut + 1)])
            .unwrap();
        crate::store::conformance::lookups_by_subject_agree(&store, cut + 1);
        assert_eq!(runs(&conn).last().unwrap().1, i64::try_from(cut).unwrap());
        assert_eq!(store.subject_index_problem().unwrap(), None);
        // Tampering with the index (which a lookup trusts, as it trusted SQLite's own index
        // before) is found by the check `audit verify` makes: a row deleted, one changed to
        // name another subject, one moved to another run.
        for (tamper, seq, problem) in [
            ("DELETE FROM audit_subjects WHERE seq = 3", 3, "misses it"),
            (
                "UPDATE audit_subjects SET subject = 'REL-B' WHERE seq = 3",
                3,
                "",
            ),
            (
                "UPDATE audit_subjects SET run = 2 WHERE seq = 3",
                3,
                "lists it in a run that does not cover it",
            ),
            (
                "INSERT INTO audit_subjects VALUES (1, 'REL-Z', 2)",
                2,
                "names it for another subject, or it does not exist",
            ),
        ] {
            conn.execute_batch(tamper).unwrap();
            let found = store.subject_index_problem().unwrap();
            assert!(
                found.as_ref().is_some_and(|(s, p)| *s == seq
                    && p.starts_with(problem)
                    && p.ends_with(&format!("(entry {seq})"))),
                "{tamper}: {found:?}"
            );
            // Put back (the twin: the index as kluis wrote it has no problem).
            conn.execute_batch(
                "DELETE FROM audit_subjects WHERE seq IN (2, 3);
                 INSERT INTO audit_subjects VALUES (1, 'REL-A', 3);",
            )
            .unwrap();
            assert_eq!(store.subject_index_problem().unwrap(), None, "{tamper}");
        }
    }

    #[test]
    fn a_trail_indexed_per_entry_is_migrated_to_runs_with_every_entry_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let runs = MIGRATIONS
            .iter()
            .position(|m| m.contains("CREATE TABLE audit_runs"))
            .unwrap();
        {
            // A store as the migrations before the runs left it, with its trail.
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..runs] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", runs).unwrap();
            let mut insert = conn
                .prepare(
                    "INSERT INTO audit (seq, entry, prev_hash, hash, mac) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .unwrap();
            for seq in 1..=100 {
                let row = crate::store::conformance::audit_row(seq);
                insert
                    .execute(params![seq, row.entry, row.prev_hash, row.hash, row.mac])
                    .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        // The trail moved to its own file, and left the store's.
        let left = trail_objects_left(&path);
        assert_eq!(left, 0);
        // No expression in the schema says what an entry's subject is (one edited in the file
        // would hide entries from the index and its check): kluis reads it from the entry.
        let conn = Connection::open(trail_path(&path)).unwrap();
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_xinfo('audit')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(columns, ["seq", "entry", "prev_hash", "hash", "mac"]);
        crate::store::conformance::lookups_by_subject_agree(&store, 100);
        for seq in 101..=150 {
            store
                .append_audit(&[crate::store::conformance::audit_row(seq)])
                .unwrap();
        }
        crate::store::conformance::lookups_by_subject_agree(&store, 150);
    }

    #[test]
    fn a_store_of_the_old_field_layout_is_migrated_with_its_values_last_and_nothing_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kluis.db");
        let last = MIGRATIONS
            .iter()
            .position(|m| m.contains("CREATE TABLE fields_sealed_last"))
            .unwrap();
        {
            // A store as the migrations before the last left it, with a field and its tag.
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", true).unwrap();
            for sql in &MIGRATIONS[..last] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", last).unwrap();
            conn.execute_batch(
                "INSERT INTO records (id, subject, purpose, labels, created_at, updated_at)
                     VALUES ('rec_1', 'REL-1', 'contract', '[]', 1, 1);
                 INSERT INTO fields (record_id, name, category, kind, key_gen, sealed, mac, version)
                     VALUES ('rec_1', 'iban', 'financial', 'text', 1, x'0102', x'aa', 'v1');
                 INSERT INTO search_tags (record_id, field, purpose, version, bits, tag)
                     VALUES ('rec_1', 'iban', 'contract', 1, 12, 7);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('fields')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            columns,
            [
                "record_id",
                "name",
                "category",
                "kind",
                "key_gen",
                "mac",
                "version",
                "sealed"
            ]
        );
        let field: (Vec<u8>, Vec<u8>, String) = conn
            .query_row(
                "SELECT sealed, mac, version FROM fields WHERE record_id = 'rec_1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(field, (vec![1, 2], vec![0xaa], "v1".to_owned()));
        // The tag that refers to the field survived the old table's drop, and still goes with
        // the field.
        let tags = |conn: &Connection| -> i64 {
            conn.query_row("SELECT count(*) FROM search_tags", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(tags(&conn), 1);
        let on: bool = store
            .writer
            .lock()
            .unwrap()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert!(on, "foreign keys stayed off after the migration");
        store
            .writer
            .lock()
            .unwrap()
            .execute("DELETE FROM fields WHERE record_id = 'rec_1'", [])
            .unwrap();
        assert_eq!(tags(&conn), 0);
    }
}
