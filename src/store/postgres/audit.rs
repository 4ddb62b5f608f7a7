//! The PostgreSQL store: the audit trail's rows. Appenders of every node take one advisory lock
//! and chain on the stored tail (`append_chained`); sequence numbers are the primary key as well,
//! so a row written beside the lock (`append_audit`) cannot take a number twice (`Exists`).

use super::*;

/// The advisory lock key appenders of the trail take ("audit" in ASCII).
const AUDIT_LOCK: i64 = 0x0061_7564_6974;

/// Inserts audit rows, all in one statement (one round trip, however large the batch: the
/// appenders of every node wait on the trail's lock while it runs); `Exists` when a sequence
/// number is taken.
fn insert_rows(tx: &mut Tx<'_>, rows: &[AuditRow]) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    let seqs = rows
        .iter()
        .map(|r| big(r.seq))
        .collect::<Result<Vec<i64>, _>>()?;
    let column = |f: fn(&AuditRow) -> &[u8]| rows.iter().map(f).collect::<Vec<&[u8]>>();
    let entries = column(|r| &r.entry);
    let prev_hashes = column(|r| &r.prev_hash);
    let hashes = column(|r| &r.hash);
    let macs = column(|r| &r.mac);
    let inserted = tx.insert(
        &format!(
            "INSERT INTO audit ({AUDIT_COLUMNS})
             SELECT * FROM unnest($1::BIGINT[], $2::BYTEA[], $3::BYTEA[], $4::BYTEA[], $5::BYTEA[])"
        ),
        &[&seqs, &entries, &prev_hashes, &hashes, &macs],
        || match rows.len() {
            1 => format!("audit entry {}", first.seq),
            _ => format!("audit entries {} to {}", first.seq, last.seq),
        },
    )?;
    if usize::try_from(inserted).ok() != Some(rows.len()) {
        return Err(StoreError::Database(format!(
            "{inserted} audit rows stored of {}",
            rows.len()
        )));
    }
    Ok(())
}

impl AuditStore for PgStore {
    fn append_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        self.write(|tx| insert_rows(tx, rows))
    }

    fn append_chained(
        &self,
        chain: &mut crate::store::Chain<'_>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        self.write_guarded(|tx| {
            // One appender at a time across all nodes, until this transaction ends.
            tx.exec("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
            let tail = tx
                .opt(
                    &format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq DESC LIMIT 1"),
                    &[],
                )?
                .map(|r| audit_from_row(&r))
                .transpose()?;
            let rows = chain(tail.as_ref())?;
            insert_rows(tx, &rows)?;
            Ok(rows)
        })
    }

    fn audit_tail(&self) -> Result<Option<AuditRow>, StoreError> {
        self.read_one(|tx| {
            tx.opt(
                &format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq DESC LIMIT 1"),
                &[],
            )?
            .map(|r| audit_from_row(&r))
            .transpose()
        })
    }

    fn audit_entries(&self, from: u64, max: usize) -> Result<Vec<AuditRow>, StoreError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        self.read_one(|tx| {
            tx.all(
                &format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2"),
                &[&from, &limit(max)],
            )?
            .iter()
            .map(audit_from_row)
            .collect()
        })
    }

    fn subject_audit_entries(
        &self,
        subject: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit
                     WHERE kluis_audit_subject(entry) = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
                ),
                &[&subject, &from, &limit(max)],
            )?
            .iter()
            .map(audit_from_row)
            .collect()
        })
    }
}
