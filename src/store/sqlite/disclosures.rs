//! The SQLite store: the disclosure register.

use super::*;

impl DisclosureStore for SqliteStore {
    fn insert_disclosure(&self, row: &DisclosureRow) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO disclosures ({DISCLOSURE_COLUMNS})
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14
                     WHERE EXISTS (SELECT 1 FROM records WHERE id = ?3 AND subject = ?2)"
                ),
                params![
                    row.id,
                    row.subject,
                    row.record_id,
                    row.purpose,
                    row.fields.join(","),
                    row.categories.join(","),
                    row.recipient,
                    row.recipient_kind,
                    row.legal_basis,
                    row.case_ref,
                    row.disclosed_at,
                    row.recorded_by,
                    row.automatic,
                    row.mac
                ],
            )
            .map_err(db)?;
        if n == 0 {
            return Err(StoreError::Missing(format!(
                "record `{}` of `{}`",
                row.record_id, row.subject
            )));
        }
        tx.commit().map_err(db)
    }

    fn disclosures(
        &self,
        subject: Option<&str>,
        since: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DisclosureRow>, StoreError> {
        if subject.is_some() {
            self.serving()?;
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {DISCLOSURE_COLUMNS} FROM disclosures
                 WHERE (?1 IS NULL OR subject = ?1) AND (?2 IS NULL OR disclosed_at >= ?2)
                 ORDER BY disclosed_at, id LIMIT ?3"
            ))?
            .query_map(params![subject, since, limit], disclosure_from_row)?
            .collect()
        })
    }
}
