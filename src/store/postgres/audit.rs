//! The PostgreSQL store: the audit trail's rows. A store appends on the tail it appended last
//! with one statement that checks, as it inserts, that this tail is still the stored one
//! (`append_on_own_tail`); otherwise, under one advisory lock that appenders of every node take,
//! on the stored tail (`append_chained`). Sequence numbers are the primary key, so a row written
//! beside the lock (an appender on its own tail, `append_audit`) cannot take a number twice
//! (`Exists`; under the lock, the tail is read again).

use super::*;

/// The advisory lock key appenders of the trail take ("audit" in ASCII).
const AUDIT_LOCK: i64 = 0x0061_7564_6974;

/// The rows of a batch as the arrays `$1` to `$5` of `AUDIT_ROWS` take them.
struct Columns<'a> {
    seqs: Vec<i64>,
    entries: Vec<&'a [u8]>,
    prev_hashes: Vec<&'a [u8]>,
    hashes: Vec<&'a [u8]>,
    macs: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn of(rows: &'a [AuditRow]) -> Result<Self, StoreError> {
        let column = |f: fn(&AuditRow) -> &[u8]| rows.iter().map(f).collect::<Vec<&[u8]>>();
        Ok(Self {
            seqs: rows
                .iter()
                .map(|r| big(r.seq))
                .collect::<Result<Vec<i64>, _>>()?,
            entries: column(|r| &r.entry),
            prev_hashes: column(|r| &r.prev_hash),
            hashes: column(|r| &r.hash),
            macs: column(|r| &r.mac),
        })
    }

    /// The parameters `$1` to `$5`.
    fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.seqs,
            &self.entries,
            &self.prev_hashes,
            &self.hashes,
            &self.macs,
        ]
    }
}

/// The rows of a batch from the arrays `$1` to `$5` (`Columns`), in `AUDIT_COLUMNS` order.
const AUDIT_ROWS: &str =
    "SELECT * FROM unnest($1::BIGINT[], $2::BYTEA[], $3::BYTEA[], $4::BYTEA[], $5::BYTEA[])";

/// Inserts audit rows, all in one statement (one round trip, however large the batch: the
/// appenders of every node wait on the trail's lock while it runs); `Exists` when a sequence
/// number is taken.
fn insert_rows(tx: &mut Tx<'_>, rows: &[AuditRow]) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    let columns = Columns::of(rows)?;
    let inserted = tx.insert(
        &format!("INSERT INTO audit ({AUDIT_COLUMNS}) {AUDIT_ROWS}"),
        &columns.params(),
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

/// Inserts audit rows on the tail `$6`/`$7` in one statement that commits by itself, when the
/// trail's lock (`$9`) is free and that tail is still the stored tail: the count of rows
/// stored, 0 when the lock is held or the tail is another. A division by zero when some rows
/// were dropped (a trigger), which undoes the statement. Both conditions are uncorrelated
/// subqueries, evaluated once: the lock, once taken, is held until the statement commits, so
/// an appender under the lock does not meet a number taken beside it.
static APPEND_ON_TAIL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH appended AS (
             INSERT INTO audit ({AUDIT_COLUMNS}) {AUDIT_ROWS}
             WHERE (SELECT pg_try_advisory_xact_lock($9))
               AND (SELECT (seq, hash) = ($6, $7) FROM audit ORDER BY seq DESC LIMIT 1)
             RETURNING 1
         )
         SELECT count(*) / CASE WHEN count(*) IN (0, $8) THEN 1 ELSE 0 END FROM appended"
    )
});

impl PgStore {
    /// Appends on the tail this store appended last, when that is still the stored tail, with
    /// one statement that commits by itself: one round trip where `append_chained` under the
    /// lock takes five (begin, lock, tail, insert, commit). The statement stores the rows only
    /// while no appender holds the trail's lock (it takes it, without waiting, until it
    /// commits) and the last row is the tail with its hash; the primary key keeps a number
    /// from being taken twice (an appender of another node on its own tail that read the same
    /// tail: whichever inserts second fails, and nothing of its statement is stored). Like a
    /// commit, a statement whose connection is lost while it runs may have stored its rows:
    /// the next append chains on them. `None` when this store has no such tail
    /// or the stored tail is another (another node appended, or the trail was edited): the
    /// caller then appends under the lock on the tail as stored, which `chain` checks as
    /// before.
    fn append_on_own_tail(
        &self,
        chain: &mut crate::store::Chain<'_>,
    ) -> Result<Option<Vec<AuditRow>>, StoreError> {
        let Some(tail) = self.own_tail.lock().ok().and_then(|mut t| t.take()) else {
            return Ok(None);
        };
        // Its own tail is the entry its node committed last, so `chain` has no earlier entry
        // to look up; should it ask, the locked path below answers in its transaction.
        let Ok(rows) = chain(Some(&tail), &mut |_| Err(StoreError::Retry)) else {
            return Ok(None);
        };
        let Some(first) = rows.first() else {
            self.remember_tail(std::slice::from_ref(&tail));
            return Ok(Some(rows));
        };
        if first.seq != tail.seq + 1 {
            return Ok(None);
        }
        let columns = Columns::of(&rows)?;
        let (tail_seq, count) = (
            big(tail.seq)?,
            big(u64::try_from(rows.len()).unwrap_or(u64::MAX))?,
        );
        let stored = self.read_one(|tx| {
            let s = tx.statement(&APPEND_ON_TAIL)?;
            let mut params = columns.params().to_vec();
            params.extend_from_slice(&[
                &tail_seq as &(dyn ToSql + Sync),
                &tail.hash,
                &count,
                &AUDIT_LOCK,
            ]);
            match tx.tx.query_one(&s, &params) {
                Ok(row) => Ok(Some(get::<i64>(&row, 0)? == count)),
                // Another appender took a number first (reported as a conflict of transactions
                // where the database runs statements `SERIALIZABLE` by default); or (division
                // by zero) the database dropped some of the rows, and the statement stored
                // none: under the lock, `insert_rows` says so.
                Err(e)
                    if [
                        SqlState::UNIQUE_VIOLATION,
                        SqlState::T_R_SERIALIZATION_FAILURE,
                        SqlState::T_R_DEADLOCK_DETECTED,
                        SqlState::DIVISION_BY_ZERO,
                    ]
                    .iter()
                    .any(|c| e.code() == Some(c)) =>
                {
                    Ok(None)
                }
                Err(e) => Err(db(e)),
            }
        })?;
        if stored != Some(true) {
            return Ok(None);
        }
        self.remember_tail(&rows);
        Ok(Some(rows))
    }

    /// Keeps the last row this store appended, for the next append on it.
    fn remember_tail(&self, rows: &[AuditRow]) {
        if let (Some(last), Ok(mut tail)) = (rows.last(), self.own_tail.lock()) {
            *tail = Some(last.clone());
        }
    }
}

/// The hash of the entry at `seq`, in the caller's transaction.
fn hash_at(tx: &mut Tx<'_>, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
    tx.opt("SELECT hash FROM audit WHERE seq = $1", &[&big(seq)?])?
        .map(|r| get(&r, 0))
        .transpose()
}

impl AuditStore for PgStore {
    fn append_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        self.write(|tx| insert_rows(tx, rows))
    }

    fn append_chained(
        &self,
        chain: &mut crate::store::Chain<'_>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        if let Some(rows) = self.append_on_own_tail(chain)? {
            return Ok(rows);
        }
        let rows = self.write_guarded(|tx| {
            // One appender at a time across all nodes, until this transaction ends.
            tx.exec("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
            let tail = tx
                .opt(
                    &format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq DESC LIMIT 1"),
                    &[],
                )?
                .map(|r| audit_from_row(&r))
                .transpose()?;
            let rows = chain(tail.as_ref(), &mut |seq| hash_at(tx, seq))?;
            match insert_rows(tx, &rows) {
                // An appender on its own tail (`append_on_own_tail`) does not take the lock:
                // it took the number first. Read the tail again.
                Err(StoreError::Exists(_)) => Err(StoreError::Retry),
                other => other.map(|()| rows),
            }
        })?;
        self.remember_tail(&rows);
        Ok(rows)
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

    fn audit_rows_below_one(&self) -> Result<(u64, i64), StoreError> {
        self.read_one(|tx| {
            let row = tx.one(
                "SELECT count(*), coalesce(max(seq), 0) FROM audit WHERE seq < 1",
                &[],
            )?;
            let count: i64 = get(&row, 0)?;
            Ok((u64::try_from(count).unwrap_or(0), get(&row, 1)?))
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
