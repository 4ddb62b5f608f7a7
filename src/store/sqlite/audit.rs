//! The SQLite store: the audit trail's rows.

use super::*;

/// Inserts audit rows; `Exists` when a sequence number is taken.
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

    fn subject_audit_entries(
        &self,
        subject: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            c.prepare_cached(
                "SELECT seq, entry, prev_hash, hash, mac FROM audit
                 WHERE subject = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
            )?
            .query_map(params![subject, from, limit], audit_from_row)?
            .collect()
        })
    }
}
