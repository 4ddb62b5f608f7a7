//! The SQLite store: legal holds, subject anchors and subject requests.

use super::*;

impl LifecycleStore for SqliteStore {
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

    fn release_hold(
        &self,
        id: &str,
        at: i64,
        by: &str,
        mac: &[u8],
        anchor: AnchorChange<'_>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let n = tx
            .execute(
                "UPDATE holds SET released_at = ?2, released_by = ?3, mac = ?4
                 WHERE id = ?1 AND released_at IS NULL",
                params![id, at, by, mac],
            )
            .map_err(db)?;
        if n == 0 {
            return Ok(false);
        }
        replace_anchor(&tx, anchor.prev, anchor.next)?;
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn holds(&self, subject: Option<&str>, active_only: bool) -> Result<Vec<HoldRow>, StoreError> {
        if subject.is_some() {
            self.serving()?;
        }
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {HOLD_COLUMNS} FROM holds
                 WHERE (?1 IS NULL OR subject = ?1) AND (?2 = 0 OR released_at IS NULL)
                 ORDER BY placed_at, id"
            ))?
            .query_map(params![subject, active_only], hold_from_row)?
            .collect()
        })
    }

    fn subject_facts(&self, subject: &str) -> Result<SubjectFacts, StoreError> {
        self.read(|c| {
            // One read transaction: the anchor and the rows it counts from one snapshot.
            let tx = c.unchecked_transaction()?;
            let facts = facts_in(&tx, subject)?;
            tx.finish()?;
            Ok(facts)
        })
    }

    fn subjects_facts(&self, subjects: &[&str]) -> Result<Vec<SubjectFacts>, StoreError> {
        self.read(|c| {
            // One read transaction for all of them (each subject's rows from one snapshot as
            // well), and one start of a read instead of one per subject.
            let tx = c.unchecked_transaction()?;
            let facts = subjects
                .iter()
                .map(|s| facts_in(&tx, s))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tx.finish()?;
            Ok(facts)
        })
    }

    fn anchors(&self) -> Result<Vec<AnchorRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT subject, holds, consents, mac, digest FROM subject_anchors ORDER BY subject",
            )?
            .query_map([], anchor_from_row)?
            .collect()
        })
    }

    fn insert_request(&self, row: &RequestRow) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute(
            &format!("INSERT INTO subject_requests ({REQUEST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            params![row.id, row.subject, row.kind, row.received_at, row.due_at, row.opened_by, row.completed_at, row.note, row.mac, row.extended_due_at, row.extension_reason],
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

    fn extend_request(
        &self,
        id: &str,
        prev_mac: &[u8],
        extended_due_at: i64,
        reason: &str,
        mac: &[u8],
    ) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute(
                "UPDATE subject_requests SET extended_due_at = ?3, extension_reason = ?4, mac = ?5
                 WHERE id = ?1 AND mac = ?2 AND completed_at IS NULL",
                params![id, prev_mac, extended_due_at, reason, mac],
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
                    extended_due_at: r.get(9)?,
                    extension_reason: r.get(10)?,
                })
            })?
            .collect()
        })
    }
}

/// A subject's anchor, the rows it counts and whether it has a key or a record, read on `c`.
pub(super) fn facts_in(c: &Connection, subject: &str) -> rusqlite::Result<SubjectFacts> {
    // The anchor, and only when there is none whether the subject has a key or record (which
    // it then should not have). The consent, hold, mandate and restriction rows are read even
    // where the anchor counts none: an older anchor put back by hand must not hide rows stored
    // since.
    let anchor = select_anchor(c, subject)?;
    let keyed = match anchor {
        Some(_) => true,
        None => c
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM subject_keys WHERE subject = ?1)
                    OR EXISTS (SELECT 1 FROM records WHERE subject = ?1)",
            )?
            .query_row([subject], |r| r.get(0))?,
    };
    // Which of them the subject has any of, in one statement: most subjects have none, and a
    // statement costs more than its index probe. The rows of those it has are then read, in the
    // same snapshot, as each would be.
    let (has_consents, has_holds, has_mandates, has_restrictions, has_destroyed): (
        bool,
        bool,
        bool,
        bool,
        bool,
    ) = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM consents WHERE subject = ?1),
                    EXISTS (SELECT 1 FROM holds WHERE subject = ?1),
                    EXISTS (SELECT 1 FROM mandates WHERE subject = ?1),
                    EXISTS (SELECT 1 FROM restrictions WHERE subject = ?1),
                    EXISTS (SELECT 1 FROM destroyed_records WHERE subject = ?1)",
        )?
        .query_row([subject], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
    let consents = if has_consents {
        c.prepare_cached(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE subject = ?1 ORDER BY purpose"
        ))?
        .query_map([subject], consent_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let holds = if has_holds {
        c.prepare_cached(&format!(
            "SELECT {HOLD_COLUMNS} FROM holds WHERE subject = ?1 ORDER BY id"
        ))?
        .query_map([subject], hold_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let mandates = if has_mandates {
        c.prepare_cached(&format!(
            "SELECT {MANDATE_COLUMNS} FROM mandates WHERE subject = ?1 ORDER BY id"
        ))?
        .query_map([subject], mandate_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let restrictions = if has_restrictions {
        c.prepare_cached(&format!(
            "SELECT {RESTRICTION_COLUMNS} FROM restrictions WHERE subject = ?1 ORDER BY id"
        ))?
        .query_map([subject], restriction_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let destroyed = if has_destroyed {
        c.prepare_cached(
            "SELECT record_id FROM destroyed_records WHERE subject = ?1 ORDER BY record_id",
        )?
        .query_map([subject], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    Ok(SubjectFacts {
        anchor,
        consents,
        holds,
        mandates,
        restrictions,
        destroyed,
        keyed,
    })
}
