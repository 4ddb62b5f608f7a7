//! The SQLite store: the audit trail's rows.

use super::*;

/// Entries indexed by subject at once (`index_subjects`): the most a subject's lookup reads of
/// the trail itself.
pub(super) const SUBJECT_RUN: i64 = 2048;

/// Indexes the entries past the last run by subject once there are `SUBJECT_RUN` of them: one
/// run, its rows sorted and appended after the last run's (the index is keyed by run first), so
/// that a run writes a few pages, not one per entry. A trail cut back behind the index (an
/// entry appended at `first` or before the end of the last run) first forgets what the index
/// holds from `first` on. In the transaction of the append.
fn index_subjects(tx: &Connection, first: i64, last: i64) -> Result<(), StoreError> {
    // The last run's end is the highest (`up_to` never falls from one run to the next): read
    // through the key, not over every run, on every append.
    let mark: i64 = tx
        .prepare_cached(
            "SELECT coalesce((SELECT up_to FROM audit_runs ORDER BY run DESC LIMIT 1), 0)",
        )
        .map_err(db)?
        .query_row([], |r| r.get(0))
        .map_err(db)?;
    let mark = if mark >= first {
        tx.prepare_cached("DELETE FROM audit_subjects WHERE seq >= ?1")
            .map_err(db)?
            .execute([first])
            .map_err(db)?;
        tx.prepare_cached("UPDATE audit_runs SET up_to = ?1 WHERE up_to >= ?2")
            .map_err(db)?
            .execute([first - 1, first])
            .map_err(db)?;
        first - 1
    } else {
        mark
    };
    if last - mark < SUBJECT_RUN {
        return Ok(());
    }
    let run: i64 = tx
        .prepare_cached("SELECT coalesce(max(run), 0) + 1 FROM audit_runs")
        .map_err(db)?
        .query_row([], |r| r.get(0))
        .map_err(db)?;
    // Each entry's subject read from the entry itself, in Rust: nothing in the schema (an
    // expression, a trigger) decides what a run lists.
    let mut named: Vec<(String, i64)> = Vec::new();
    {
        let mut entries = tx
            .prepare_cached("SELECT seq, entry FROM audit WHERE seq > ?1 AND seq <= ?2")
            .map_err(db)?;
        let mut rows = entries.query([mark, last]).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            let seq: i64 = row.get(0).map_err(db)?;
            let entry: Vec<u8> = row.get(1).map_err(db)?;
            if let Some(subject) = entry_subject(&entry) {
                named.push((subject, seq));
            }
        }
    }
    named.sort_unstable();
    let mut insert = tx
        .prepare_cached("INSERT INTO audit_subjects (run, subject, seq) VALUES (?1, ?2, ?3)")
        .map_err(db)?;
    for (subject, seq) in named {
        insert.execute(params![run, subject, seq]).map_err(db)?;
    }
    tx.prepare_cached("INSERT INTO audit_runs (run, up_to) VALUES (?1, ?2)")
        .map_err(db)?
        .execute([run, last])
        .map_err(db)?;
    Ok(())
}

/// The subject an audit entry names (its `subject`, a string), read from the entry itself.
fn entry_subject(entry: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        subject: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Named>(entry).ok()?.subject? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// Inserts audit rows (and indexes them by subject when a run is due); `Exists` when a
/// sequence number is taken.
fn insert_rows(tx: &Connection, rows: &[AuditRow]) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO audit (seq, entry, prev_hash, hash, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(db)?;
    for row in rows {
        let seq = i64::try_from(row.seq)
            .map_err(|_| StoreError::Database("audit sequence overflow".into()))?;
        let n = stmt
            .execute(params![seq, row.entry, row.prev_hash, row.hash, row.mac])
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Exists(format!("audit entry {}", row.seq))
                } else {
                    db(e)
                }
            })?;
        // A trigger or conflict clause someone added to the file can drop the row without an
        // error: the entry would be answered as durable and is not.
        super::kept(n, || format!("audit entry {}", row.seq))?;
    }
    let seq = |row: Option<&AuditRow>| row.and_then(|r| i64::try_from(r.seq).ok());
    if let (Some(first), Some(last)) = (seq(rows.first()), seq(rows.last())) {
        index_subjects(tx, first, last)?;
    }
    Ok(())
}

/// Puts the audit trail in its own file beside the store's (`trail_path`), so that an append
/// leaves the page caches of the connections reading records as they were: SQLite drops a
/// connection's cache of a file whenever another connection committed to it. On `conn`, the
/// store's file alone, after its migrations.
///
/// A store file that still holds the trail's tables (a store made before the trail had a file,
/// one just made by the migrations, a restored backup, which is one file) has them moved: first
/// copied into the trail's file, in its own transaction, replacing what that file held; then
/// dropped from the store's file. A stop between the two leaves the same trail in both files,
/// and the next start moves it again. A trail's file that holds another trail (entries, and not
/// the same last one) is never replaced: a trail in the store's file beside it was put there
/// outside kluis, and the store is not opened. A store file without the trail's tables must
/// have its trail's file, holding the trail: a store is not served without its trail.
pub(super) fn place_trail(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let trail = trail_path(path);
    let in_store = trail_tail(conn, true)?;
    let in_file = if trail.exists() {
        // Counted only when there is a trail to compare it with (a count reads every entry).
        let found = open_file(&trail, false).and_then(|c| trail_tail(&c, in_store.is_some()));
        Some(found.map_err(|e| {
            // Not a refusal of what the file holds: it may be locked or the disk failing.
            StoreError::Config(format!(
                "the audit trail's file `{}` cannot be read ({e}); kluis does not serve a store \
                 without its trail: put the file back as it was or restore a backup into a new \
                 data directory",
                trail.display()
            ))
        })?)
    } else {
        None
    };
    let Some(ours) = in_store else {
        return match in_file {
            Some(Some(_)) => move_strays(conn, path),
            Some(None) => Err(StoreError::Refused(format!(
                "the audit trail's file `{}` holds no trail; kluis does not serve a store \
                 without its trail: put the file back as it was or restore a backup into a new \
                 data directory",
                trail.display()
            ))),
            None => Err(StoreError::Refused(format!(
                "the audit trail's file `{}` is missing beside `{}`; kluis does not serve a \
                 store without its trail: put the file back or restore a backup into a new \
                 data directory",
                trail.display(),
                path.display()
            ))),
        };
    };
    if let Some(Some(theirs)) = &in_file
        && theirs.entries > 0
        && *theirs != ours
    {
        return Err(StoreError::Refused(format!(
            "`{}` holds an audit trail ({}) and so does the trail's own file `{}` ({}), and \
             they differ: the one in `{}` was put there outside kluis (a move into the trail's \
             file that stopped halfway leaves the same trail in both). kluis changes neither: \
             find out how it came there; the store's trail is the one in its trail's file \
             (drop the tables audit_subjects, audit_runs, audit and trail_mark from `{}` to \
             serve it)",
            path.display(),
            ours.describe(),
            trail.display(),
            theirs.describe(),
            path.display(),
            path.display(),
        )));
    }
    create_private(&trail)?;
    let source = path.to_str().ok_or_else(|| {
        StoreError::Database(format!("the path `{}` is not UTF-8", path.display()))
    })?;
    let objects: Vec<(String, String, String)> = conn
        .prepare(&format!(
            "SELECT type, name, sql FROM main.sqlite_master
             WHERE tbl_name IN ({}) AND sql IS NOT NULL
             ORDER BY type <> 'table', rowid",
            TRAIL_TABLES.map(|t| format!("'{t}'")).join(", ")
        ))
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(db)?;
    // The migrations made every table of the trail: one missing from a store file that holds
    // the trail was dropped outside kluis, and the trail is not moved without it.
    if let Some(missing) = TRAIL_TABLES.iter().find(|t| {
        !objects
            .iter()
            .any(|(kind, name, _)| kind == "table" && name == *t)
    }) {
        return Err(StoreError::Corrupt(format!(
            "`{}` holds the audit trail without its table `{missing}`, which kluis made: the \
             file was edited outside kluis; restore a backup taken before",
            path.display()
        )));
    }
    {
        let mut target = open_file(&trail, false)?;
        target.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        target
            .execute("ATTACH DATABASE ?1 AS moving", [source])
            .map_err(db)?;
        let tx = target.unchecked_transaction().map_err(db)?;
        let left: Vec<(String, String)> = tx
            .prepare("SELECT type, name FROM main.sqlite_master WHERE type IN ('table', 'view', 'trigger')")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(db)?;
        for (kind, name) in left {
            // A trigger or view may have gone with its table already.
            tx.execute_batch(&format!(
                "DROP {} IF EXISTS main.\"{}\"",
                kind.to_uppercase(),
                name.replace('"', "\"\"")
            ))
            .map_err(db)?;
        }
        for (_, _, sql) in &objects {
            tx.execute_batch(sql).map_err(db)?;
        }
        for table in TRAIL_TABLES {
            tx.execute_batch(&format!(
                "INSERT INTO main.{table} SELECT * FROM moving.{table}"
            ))
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        target.execute_batch("DETACH DATABASE moving").map_err(db)?;
    }
    let tx = conn.unchecked_transaction().map_err(db)?;
    for table in TRAIL_TABLES.iter().rev() {
        tx.execute_batch(&format!("DROP TABLE main.{table}"))
            .map_err(db)?;
    }
    tx.commit().map_err(db)?;
    // The pages the trail left are zeroed (`secure_delete`); the log that still holds them goes.
    checkpoint_retrying(conn);
    Ok(())
}

/// Moves into the trail's file the trail's tables that a migration made in the store's file
/// after the trail had moved (the migrations run on the store's file alone) and the trail's
/// file lacks: copied in one transaction of the trail's file, then dropped from the store's.
fn move_strays(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let in_store = |c: &Connection, table: &str| -> Result<Option<String>, StoreError> {
        c.query_row(
            "SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)
    };
    let trail = open_file(&trail_path(path), false)?;
    let mut strays = Vec::new();
    for table in TRAIL_TABLES {
        if let Some(sql) = in_store(conn, table)?
            && in_store(&trail, table)?.is_none()
        {
            strays.push((table, sql));
        }
    }
    if strays.is_empty() {
        return Ok(());
    }
    let source = path.to_str().ok_or_else(|| {
        StoreError::Database(format!("the path `{}` is not UTF-8", path.display()))
    })?;
    trail
        .execute("ATTACH DATABASE ?1 AS moving", [source])
        .map_err(db)?;
    let tx = trail.unchecked_transaction().map_err(db)?;
    for (table, sql) in &strays {
        tx.execute_batch(sql).map_err(db)?;
        tx.execute_batch(&format!(
            "INSERT INTO main.{table} SELECT * FROM moving.{table}"
        ))
        .map_err(db)?;
    }
    tx.commit().map_err(db)?;
    let tx = conn.unchecked_transaction().map_err(db)?;
    for (table, _) in &strays {
        tx.execute_batch(&format!("DROP TABLE main.{table}"))
            .map_err(db)?;
    }
    tx.commit().map_err(db)
}

/// How a trail ends: its number of entries and its last entry.
#[derive(PartialEq, Eq)]
struct Tail {
    entries: i64,
    last: Option<(i64, Vec<u8>, Vec<u8>)>,
}

impl Tail {
    fn describe(&self) -> String {
        match &self.last {
            Some((seq, ..)) => format!("{} entries, the last entry {seq}", self.entries),
            None => "no entries".into(),
        }
    }
}

/// How the trail in `conn`'s `main` ends (without `count`, its entries are not counted);
/// `None` when it holds no trail.
fn trail_tail(conn: &Connection, count: bool) -> Result<Option<Tail>, StoreError> {
    let holds: i64 = conn
        .query_row(
            "SELECT count(*) FROM main.sqlite_master WHERE type = 'table' AND name = 'audit'",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    if holds == 0 {
        return Ok(None);
    }
    let entries = if count {
        conn.query_row("SELECT count(*) FROM main.audit", [], |r| r.get(0))
            .map_err(db)?
    } else {
        -1
    };
    let last = conn
        .query_row(
            "SELECT seq, hash, mac FROM main.audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(db)?;
    Ok(Some(Tail { entries, last }))
}

impl AuditStore for SqliteStore {
    fn append_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        let mut conn = self.writer_unchecked()?;
        let tx = conn.transaction().map_err(db)?;
        self.schema.check(&tx, Scope::Trail)?;
        insert_rows(&tx, rows)?;
        let recorded = super::record_mark(&tx);
        tx.commit().map_err(db)?;
        if recorded {
            super::checkpoint::note_recorded();
        }
        Ok(())
    }

    fn append_chained(
        &self,
        chain: &mut crate::store::Chain<'_>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        Ok(self.append_chained_writing(chain, &[])?.0)
    }

    fn makes_writes_with_entries(&self) -> bool {
        true
    }

    fn append_chained_writing(
        &self,
        chain: &mut crate::store::Chain<'_>,
        writes: &[RecordWrite],
    ) -> Result<(Vec<AuditRow>, Option<Vec<Result<(), StoreError>>>), StoreError> {
        let mut conn = self.writer_unchecked()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        // Checked under the write lock: the schema cannot change before the commit. An edit
        // outside the trail's tables refuses the writes the batch carries, not its entries,
        // so that the trail records that they were not carried out.
        self.schema.check(&tx, Scope::Trail)?;
        let refused = if writes.is_empty() {
            None
        } else {
            match self.schema.check(&tx, Scope::All) {
                Ok(()) => None,
                Err(StoreError::Unavailable(why)) => Some(why),
                Err(e) => return Err(e),
            }
        };
        let tail = tx
            .prepare_cached(
                "SELECT seq, entry, prev_hash, hash, mac FROM audit ORDER BY seq DESC LIMIT 1",
            )
            .map_err(db)?
            .query_row([], audit_from_row)
            .optional()
            .map_err(db)?;
        let rows = chain(tail.as_ref(), &mut |seq| {
            tx.prepare_cached("SELECT hash FROM audit WHERE seq = ?1")
                .map_err(db)?
                .query_row([i64::try_from(seq).unwrap_or(i64::MAX)], |r| r.get(0))
                .optional()
                .map_err(db)
        })?;
        insert_rows(&tx, &rows)?;
        // The mark as committed before this batch: should the store's file not commit after
        // the trail's, the trail names no mark it lacks.
        let recorded = super::record_mark(&tx);
        let moves = !writes.is_empty() && refused.is_none();
        if moves {
            super::bump_mark(&tx)?;
        }
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in writes {
            // A failed write is undone alone; should that fail, nothing of the transaction is
            // kept.
            let outcome = match &refused {
                None => super::in_savepoint(&tx, |sp| super::records::make_write(sp, write))?,
                Some(why) => Err(StoreError::Unavailable(why.clone())),
            };
            // An error SQLite answers by rolling back the whole transaction (disk full, I/O)
            // leaves the connection in autocommit: the entries are gone with it.
            if tx.is_autocommit() {
                return Err(StoreError::Database(
                    "the transaction was rolled back by SQLite".into(),
                ));
            }
            outcomes.push(outcome);
        }
        tx.commit().map_err(db)?;
        // Only once committed, and when no write of the batch moved the mark past it.
        if recorded && !moves {
            super::checkpoint::note_recorded();
        }
        Ok((rows, Some(outcomes)))
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

    fn audit_rows_below_one(&self) -> Result<(u64, i64), StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT count(*), coalesce(max(seq), 0) FROM audit WHERE seq < 1",
                [],
                |r| Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), r.get(1)?)),
            )
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

    fn subject_index_problem(&self) -> Result<Option<(u64, String)>, StoreError> {
        // Each entry's subject is read from the entry itself (nothing in the schema is
        // trusted for it), and the entries and the index are walked together in order.
        let found: Option<(i64, &str)> = self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let mut runs: std::collections::HashMap<i64, (i64, i64)> =
                std::collections::HashMap::new();
            let mut mark = 0;
            {
                let mut stmt = tx.prepare("SELECT run, up_to FROM audit_runs ORDER BY run")?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let (run, up_to): (i64, i64) = (row.get(0)?, row.get(1)?);
                    runs.insert(run, (mark, up_to));
                    mark = up_to;
                }
            }
            const MISSES: &str = "misses it";
            const EXTRA: &str = "names it for another subject, or it does not exist";
            const ELSEWHERE: &str = "lists it in a run that does not cover it";
            let mut index =
                tx.prepare("SELECT seq, subject, run FROM audit_subjects ORDER BY seq, subject")?;
            let mut index = index.query([])?;
            let mut next_index = || -> rusqlite::Result<Option<(i64, String, i64)>> {
                Ok(match index.next()? {
                    Some(row) => Some((row.get(0)?, row.get(1)?, row.get(2)?)),
                    None => None,
                })
            };
            let mut pending = next_index()?;
            let mut entries =
                tx.prepare("SELECT seq, entry FROM audit WHERE seq <= ?1 ORDER BY seq")?;
            let mut entries = entries.query([mark])?;
            while let Some(row) = entries.next()? {
                let seq: i64 = row.get(0)?;
                let entry: Vec<u8> = row.get(1)?;
                // Index rows before this entry name entries that do not exist.
                if let Some((at, _, _)) = &pending
                    && *at < seq
                {
                    return Ok(Some((*at, EXTRA)));
                }
                match (entry_subject(&entry), pending.take()) {
                    (None, Some((at, _, _))) if at == seq => return Ok(Some((seq, EXTRA))),
                    (None, other) => pending = other,
                    (Some(subject), Some((at, s, run))) if at == seq => {
                        if s != subject {
                            return Ok(Some((seq, MISSES)));
                        }
                        let covered = runs
                            .get(&run)
                            .is_some_and(|(after, up_to)| *after < seq && seq <= *up_to);
                        if !covered {
                            return Ok(Some((seq, ELSEWHERE)));
                        }
                        pending = next_index()?;
                        // A second row for the same entry.
                        if let Some((again, _, _)) = &pending
                            && *again == seq
                        {
                            return Ok(Some((seq, EXTRA)));
                        }
                    }
                    (Some(_), _) => return Ok(Some((seq, MISSES))),
                }
            }
            // Rows left name entries past the last run, or none.
            Ok(pending.map(|(at, _, _)| (at, EXTRA)))
        })?;
        Ok(found.map(|(seq, problem)| {
            let seq = u64::try_from(seq).unwrap_or(0);
            (seq, format!("{problem} (entry {seq})"))
        }))
    }

    fn subject_audit_entries(
        &self,
        subject: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let wanted = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            // One snapshot: the runs, the trail past them and the rows agree.
            let tx = c.unchecked_transaction()?;
            // The runs in order (each covers the sequence numbers after the one before up to
            // its `up_to`), then the trail past the last one.
            let runs: Vec<(i64, i64)> = tx
                .prepare_cached("SELECT run, up_to FROM audit_runs WHERE up_to >= ?1 ORDER BY run")?
                .query_map([from], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mark: i64 = tx
                .prepare_cached(
                    "SELECT coalesce((SELECT up_to FROM audit_runs ORDER BY run DESC LIMIT 1), 0)",
                )?
                .query_row([], |r| r.get(0))?;
            let mut seqs: Vec<i64> = Vec::new();
            {
                let mut in_run = tx.prepare_cached(
                    "SELECT seq FROM audit_subjects
                     WHERE run = ?1 AND subject = ?2 AND seq >= ?3 ORDER BY seq LIMIT ?4",
                )?;
                for (run, _) in runs {
                    let left = wanted - i64::try_from(seqs.len()).unwrap_or(i64::MAX);
                    if left <= 0 {
                        break;
                    }
                    for seq in in_run.query_map(params![run, subject, from, left], |r| r.get(0))? {
                        seqs.push(seq?);
                    }
                }
            }
            let mut rows = Vec::with_capacity(seqs.len());
            {
                let mut row = tx.prepare_cached(
                    "SELECT seq, entry, prev_hash, hash, mac FROM audit WHERE seq = ?1",
                )?;
                for seq in seqs {
                    // An entry indexed and gone (the trail cut back) is not one.
                    if let Some(found) = row.query_row([seq], audit_from_row).optional()? {
                        rows.push(found);
                    }
                }
            }
            // The entries past the last run (at most a run and a batch), each one's subject
            // read from the entry itself.
            if i64::try_from(rows.len()).unwrap_or(i64::MAX) < wanted {
                let mut tail = tx.prepare_cached(
                    "SELECT seq, entry, prev_hash, hash, mac FROM audit
                     WHERE seq > ?1 AND seq >= ?2 ORDER BY seq",
                )?;
                let mut found = tail.query(params![mark, from])?;
                while let Some(row) = found.next()? {
                    if i64::try_from(rows.len()).unwrap_or(i64::MAX) >= wanted {
                        break;
                    }
                    let entry = audit_from_row(row)?;
                    if entry_subject(&entry.entry).as_deref() == Some(subject) {
                        rows.push(entry);
                    }
                }
            }
            Ok(rows)
        })
    }
}

/// Copies the trail's tables as `source` sees them (a serving connection, in its snapshot) into
/// the database of `target`, each made as kluis's migrations make it (nothing else of the
/// trail's file is copied: no trigger added by hand runs in the backup, no statistics table
/// `ANALYZE` left): a backup's copy of the trail.
pub(super) fn copy_trail(source: &Connection, target: &Connection) -> Result<(), StoreError> {
    let mut objects: Vec<&SchemaObject> = migrated_schema()?
        .values()
        .filter(|o| o.file == File::Trail)
        .collect();
    objects.sort_by_key(|o| o.kind != "table");
    let tx = target.unchecked_transaction().map_err(db)?;
    for o in objects.iter().filter(|o| o.kind == "table") {
        if let Some(sql) = &o.sql {
            tx.execute_batch(sql).map_err(db)?;
        }
    }
    for table in TRAIL_TABLES {
        let mut rows = source
            .prepare(&format!("SELECT * FROM main.{table}"))
            .map_err(db)?;
        let columns = rows.column_count();
        let mut insert = tx
            .prepare(&format!(
                "INSERT INTO main.{table} VALUES ({})",
                vec!["?"; columns].join(", ")
            ))
            .map_err(db)?;
        let mut found = rows.query([]).map_err(db)?;
        while let Some(row) = found.next().map_err(db)? {
            let values = (0..columns)
                .map(|i| row.get::<_, rusqlite::types::Value>(i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            insert
                .execute(rusqlite::params_from_iter(values))
                .map_err(db)?;
        }
    }
    // Indexes after the rows: built once.
    for o in objects.iter().filter(|o| o.kind != "table") {
        if let Some(sql) = &o.sql {
            tx.execute_batch(sql).map_err(db)?;
        }
    }
    // The trail was read after the store's file: it may have seen the file written past the
    // copy of it that the backup holds.
    tx.execute_batch(
        "UPDATE trail_mark SET store_mark = min(store_mark,
             coalesce((SELECT value FROM meta WHERE key = 'store_mark'), 0))",
    )
    .map_err(db)?;
    tx.commit().map_err(db)
}
