//! The PostgreSQL store: consent states, mandates and tokens.

use super::*;

impl RightsStore for PgStore {
    fn set_consent(
        &self,
        row: &ConsentRow,
        prev: Option<&AnchorRow>,
        next: &AnchorRow,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            replace_anchor(tx, prev, next)?;
            tx.exec(
                &format!(
                    "INSERT INTO consents ({CONSENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (subject, purpose) DO UPDATE SET
                        state = excluded.state, at = excluded.at,
                        recorded_by = excluded.recorded_by, mac = excluded.mac"
                ),
                &[
                    &row.subject,
                    &row.purpose.as_str(),
                    &row.state.as_str(),
                    &row.at,
                    &row.recorded_by,
                    &row.mac,
                ],
            )?;
            Ok(())
        })
    }

    fn all_consents(&self) -> Result<Vec<ConsentRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!("SELECT {CONSENT_COLUMNS} FROM consents ORDER BY subject, purpose"),
                &[],
            )?
            .iter()
            .map(consent_from_row)
            .collect()
        })
    }

    fn insert_mandate(&self, row: &MandateRow, anchor: AnchorChange<'_>) -> Result<(), StoreError> {
        self.write(|tx| {
            replace_anchor(tx, anchor.prev, anchor.next)?;
            tx.insert(
                &format!(
                    "INSERT INTO mandates ({MANDATE_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ),
                &[
                    &row.id,
                    &row.subject,
                    &row.representative,
                    &row.purposes.join(","),
                    &row.categories.join(","),
                    &row.valid_from,
                    &row.valid_until,
                    &row.granted_by,
                    &row.revoked_at,
                    &row.mac,
                ],
                || format!("mandate `{}`", row.id),
            )?;
            Ok(())
        })
    }

    fn revoke_mandate(
        &self,
        id: &str,
        at: i64,
        mac: &[u8],
        anchor: AnchorChange<'_>,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx.exec(
                "UPDATE mandates SET revoked_at = $2, mac = $3 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &at, &mac],
            )?;
            if n == 0 {
                return Ok(false);
            }
            replace_anchor(tx, anchor.prev, anchor.next)?;
            Ok(true)
        })
    }

    fn mandates(
        &self,
        subject: Option<&str>,
        representative: Option<&str>,
    ) -> Result<Vec<MandateRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {MANDATE_COLUMNS} FROM mandates
                     WHERE ($1::TEXT IS NULL OR subject = $1)
                       AND ($2::TEXT IS NULL OR representative = $2)
                     ORDER BY valid_from, id"
                ),
                &[&subject, &representative],
            )?
            .iter()
            .map(mandate_from_row)
            .collect()
        })
    }

    fn insert_restriction(
        &self,
        row: &RestrictionRow,
        anchor: AnchorChange<'_>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            replace_anchor(tx, anchor.prev, anchor.next)?;
            tx.insert(
                &format!(
                    "INSERT INTO restrictions ({RESTRICTION_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                ),
                &[
                    &row.id,
                    &row.subject,
                    &row.reason,
                    &row.placed_by,
                    &row.placed_at,
                    &row.lifted_at,
                    &row.lifted_by,
                    &row.mac,
                ],
                || format!("restriction `{}`", row.id),
            )?;
            Ok(())
        })
    }

    fn lift_restriction(
        &self,
        id: &str,
        at: i64,
        by: &str,
        mac: &[u8],
        anchor: AnchorChange<'_>,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx.exec(
                "UPDATE restrictions SET lifted_at = $2, lifted_by = $3, mac = $4
                 WHERE id = $1 AND lifted_at IS NULL",
                &[&id, &at, &by, &mac],
            )?;
            if n == 0 {
                return Ok(false);
            }
            replace_anchor(tx, anchor.prev, anchor.next)?;
            Ok(true)
        })
    }

    fn restrictions(&self, subject: Option<&str>) -> Result<Vec<RestrictionRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {RESTRICTION_COLUMNS} FROM restrictions
                     WHERE ($1::TEXT IS NULL OR subject = $1)
                     ORDER BY placed_at, id"
                ),
                &[&subject],
            )?
            .iter()
            .map(restriction_from_row)
            .collect()
        })
    }

    fn insert_token(&self, row: &TokenRow) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.insert(
                &format!(
                    "INSERT INTO tokens ({TOKEN_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                ),
                &[
                    &row.id,
                    &row.hash,
                    &row.principal,
                    &row.roles.join(","),
                    &row.scope_subject,
                    &row.created_at,
                    &row.expires_at,
                    &row.revoked_at,
                    &row.requested_by,
                    &row.needs_approval,
                    &row.approved_by,
                    &row.approved_at,
                    &row.mac,
                ],
                || format!("token `{}`", row.id),
            )?;
            bump_epoch(tx)
        })
    }

    fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRow>, StoreError> {
        self.read_one(|tx| {
            tx.opt(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"),
                &[&hash],
            )?
            .map(|r| token_from_row(&r))
            .transpose()
        })
    }

    fn revoke_token(&self, id: &str, at: i64, mac: &[u8], was: &[u8]) -> Result<bool, StoreError> {
        self.write_guarded(|tx| {
            let changed = tx.exec(
                "UPDATE tokens SET revoked_at = $2, mac = $3
                 WHERE id = $1 AND revoked_at IS NULL AND mac = $4",
                &[&id, &at, &mac, &was],
            )? > 0;
            if changed {
                bump_epoch(tx)?;
            }
            Ok(changed)
        })
    }

    fn approve_token(&self, id: &str, by: &str, at: i64, mac: &[u8]) -> Result<bool, StoreError> {
        self.write_guarded(|tx| {
            let changed = tx.exec(
                "UPDATE tokens SET approved_by = $2, approved_at = $3, mac = $4
                 WHERE id = $1 AND needs_approval AND approved_at IS NULL
                   AND revoked_at IS NULL",
                &[&id, &by, &at, &mac],
            )? > 0;
            if changed {
                bump_epoch(tx)?;
            }
            Ok(changed)
        })
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"),
                &[],
            )?
            .iter()
            .map(token_from_row)
            .collect()
        })
    }
}
