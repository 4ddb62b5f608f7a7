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
    tx.prepare_cached(
        "INSERT INTO audit_subjects (run, subject, seq)
         SELECT ?1, subject, seq FROM audit
         WHERE seq > ?2 AND seq <= ?3 AND subject IS NOT NULL ORDER BY subject, seq",
    )
    .map_err(db)?
    .execute([run, mark, last])
    .map_err(db)?;
    tx.prepare_cached("INSERT INTO audit_runs (run, up_to) VALUES (?1, ?2)")
        .map_err(db)?
        .execute([run, last])
        .map_err(db)?;
    Ok(())
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
        stmt.execute(params![seq, row.entry, row.prev_hash, row.hash, row.mac])
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Exists(format!("audit entry {}", row.seq))
                } else {
                    db(e)
                }
            })?;
    }
    let seq = |row: Option<&AuditRow>| row.and_then(|r| i64::try_from(r.seq).ok());
    if let (Some(first), Some(last)) = (seq(rows.first()), seq(rows.last())) {
        index_subjects(tx, first, last)?;
    }
    Ok(())
}

impl AuditStore for SqliteStore {
    fn append_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        insert_rows(&tx, rows)?;
        tx.commit().map_err(db)
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
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let tail = tx
            .prepare_cached(
                "SELECT seq, entry, prev_hash, hash, mac FROM audit ORDER BY seq DESC LIMIT 1",
            )
            .map_err(db)?
            .query_row([], audit_from_row)
            .optional()
            .map_err(db)?;
        let rows = chain(tail.as_ref())?;
        insert_rows(&tx, &rows)?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in writes {
            // A failed write is undone alone; should that fail, nothing of the transaction is
            // kept.
            let outcome = super::in_savepoint(&tx, |sp| super::records::make_write(sp, write))?;
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
        let found: Option<(i64, String)> = self.read(|c| {
            c.query_row(
                "WITH mark AS (SELECT coalesce((SELECT up_to FROM audit_runs ORDER BY run DESC LIMIT 1), 0) AS up_to),
                      runs AS (SELECT run, up_to,
                                      coalesce(lag(up_to) OVER (ORDER BY run), 0) AS after
                               FROM audit_runs)
                 SELECT seq, 'misses it' FROM (
                     SELECT subject, seq FROM audit
                     WHERE seq <= (SELECT up_to FROM mark) AND subject IS NOT NULL
                     EXCEPT SELECT subject, seq FROM audit_subjects)
                 UNION ALL
                 SELECT seq, 'names it for another subject, or it does not exist' FROM (
                     SELECT subject, seq FROM audit_subjects
                     EXCEPT SELECT subject, seq FROM audit WHERE subject IS NOT NULL)
                 UNION ALL
                 SELECT s.seq, 'lists it in a run that does not cover it'
                 FROM audit_subjects s LEFT JOIN runs r ON r.run = s.run
                 WHERE r.run IS NULL OR s.seq <= r.after OR s.seq > r.up_to
                 ORDER BY 1 LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
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
            let left = wanted - i64::try_from(rows.len()).unwrap_or(i64::MAX);
            if left > 0 {
                let tail = tx
                    .prepare_cached(
                        "SELECT seq, entry, prev_hash, hash, mac FROM audit
                         WHERE seq > ?1 AND seq >= ?2 AND subject = ?3 ORDER BY seq LIMIT ?4",
                    )?
                    .query_map(params![mark, from, subject, left], audit_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                rows.extend(tail);
            }
            Ok(rows)
        })
    }
}
