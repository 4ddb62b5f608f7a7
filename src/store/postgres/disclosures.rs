//! The PostgreSQL store: the disclosure register.

use super::*;

impl DisclosureStore for PgStore {
    fn insert_disclosure(&self, row: &DisclosureRow) -> Result<(), StoreError> {
        self.write(|tx| {
            let n = tx.exec(
                &format!(
                    "INSERT INTO disclosures ({DISCLOSURE_COLUMNS})
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14
                     WHERE EXISTS (SELECT 1 FROM records WHERE id = $3 AND subject = $2)"
                ),
                &[
                    &row.id,
                    &row.subject,
                    &row.record_id,
                    &row.purpose.as_str(),
                    &row.fields.join(","),
                    &row.categories.join(","),
                    &row.recipient,
                    &row.recipient_kind.as_str(),
                    &row.legal_basis,
                    &row.case_ref,
                    &row.disclosed_at,
                    &row.recorded_by,
                    &row.automatic,
                    &row.mac,
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Missing(format!(
                    "record `{}` of `{}`",
                    row.record_id, row.subject
                )));
            }
            Ok(())
        })
    }

    fn disclosures(
        &self,
        subject: Option<&str>,
        since: Option<i64>,
        max: usize,
    ) -> Result<Vec<DisclosureRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {DISCLOSURE_COLUMNS} FROM disclosures
                     WHERE ($1::TEXT IS NULL OR subject = $1)
                       AND ($2::BIGINT IS NULL OR disclosed_at >= $2)
                     ORDER BY disclosed_at, id LIMIT $3"
                ),
                &[&subject, &since, &limit(max)],
            )?
            .iter()
            .map(disclosure_from_row)
            .collect()
        })
    }
}
