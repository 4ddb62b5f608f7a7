//! The PostgreSQL store: legal holds, subject anchors and subject requests.

use super::*;

impl LifecycleStore for PgStore {
    fn insert_hold(
        &self,
        row: &HoldRow,
        prev: Option<&AnchorRow>,
        next: &AnchorRow,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            replace_anchor(tx, prev, next)?;
            tx.insert(
                &format!(
                    "INSERT INTO holds ({HOLD_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ),
                &[
                    &row.id,
                    &row.subject,
                    &row.record_id,
                    &row.reason,
                    &row.case_ref,
                    &row.placed_by,
                    &row.placed_at,
                    &row.released_at,
                    &row.released_by,
                    &row.mac,
                ],
                || format!("hold `{}`", row.id),
            )?;
            Ok(())
        })
    }

    fn release_hold(
        &self,
        id: &str,
        at: i64,
        by: &str,
        mac: &[u8],
        anchor: AnchorChange<'_>,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx.exec(
                "UPDATE holds SET released_at = $2, released_by = $3, mac = $4
                 WHERE id = $1 AND released_at IS NULL",
                &[&id, &at, &by, &mac],
            )?;
            if n == 0 {
                return Ok(false);
            }
            replace_anchor(tx, anchor.prev, anchor.next)?;
            Ok(true)
        })
    }

    fn holds(&self, subject: Option<&str>, active_only: bool) -> Result<Vec<HoldRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {HOLD_COLUMNS} FROM holds
                     WHERE ($1::TEXT IS NULL OR subject = $1)
                       AND (NOT $2 OR released_at IS NULL)
                     ORDER BY placed_at, id"
                ),
                &[&subject, &active_only],
            )?
            .iter()
            .map(hold_from_row)
            .collect()
        })
    }

    fn subject_facts(&self, subject: &str) -> Result<SubjectFacts, StoreError> {
        // One snapshot: the anchor and the rows it counts.
        self.read(|tx| {
            let anchor = select_anchor(tx, subject)?;
            let keyed: bool = get(
                &tx.one(
                    "SELECT EXISTS (SELECT 1 FROM subject_keys WHERE subject = $1)
                         OR EXISTS (SELECT 1 FROM records WHERE subject = $1)",
                    &[&subject],
                )?,
                0,
            )?;
            let consents = tx
                .all(
                    &format!(
                        "SELECT {CONSENT_COLUMNS} FROM consents WHERE subject = $1
                         ORDER BY purpose"
                    ),
                    &[&subject],
                )?
                .iter()
                .map(consent_from_row)
                .collect::<Result<_, _>>()?;
            let holds = tx
                .all(
                    &format!("SELECT {HOLD_COLUMNS} FROM holds WHERE subject = $1 ORDER BY id"),
                    &[&subject],
                )?
                .iter()
                .map(hold_from_row)
                .collect::<Result<_, _>>()?;
            let mandates = tx
                .all(
                    &format!(
                        "SELECT {MANDATE_COLUMNS} FROM mandates WHERE subject = $1 ORDER BY id"
                    ),
                    &[&subject],
                )?
                .iter()
                .map(mandate_from_row)
                .collect::<Result<_, _>>()?;
            Ok(SubjectFacts {
                anchor,
                consents,
                holds,
                mandates,
                keyed,
            })
        })
    }

    fn anchors(&self) -> Result<Vec<AnchorRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!("SELECT {ANCHOR_COLUMNS} FROM subject_anchors ORDER BY subject"),
                &[],
            )?
            .iter()
            .map(anchor_from_row)
            .collect()
        })
    }

    fn insert_request(&self, row: &RequestRow) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.insert(
                &format!(
                    "INSERT INTO subject_requests ({REQUEST_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                ),
                &[
                    &row.id,
                    &row.subject,
                    &row.kind.as_str(),
                    &row.received_at,
                    &row.due_at,
                    &row.opened_by,
                    &row.completed_at,
                    &row.note,
                    &row.mac,
                ],
                || format!("subject request `{}`", row.id),
            )?;
            Ok(())
        })
    }

    fn complete_request(&self, id: &str, at: i64, mac: &[u8]) -> Result<bool, StoreError> {
        self.write_guarded(|tx| {
            Ok(tx.exec(
                "UPDATE subject_requests SET completed_at = $2, mac = $3
                 WHERE id = $1 AND completed_at IS NULL",
                &[&id, &at, &mac],
            )? > 0)
        })
    }

    fn requests(&self) -> Result<Vec<RequestRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!("SELECT {REQUEST_COLUMNS} FROM subject_requests ORDER BY received_at, id"),
                &[],
            )?
            .iter()
            .map(request_from_row)
            .collect()
        })
    }
}
