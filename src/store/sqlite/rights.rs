//! The SQLite store: consent states, mandates and tokens.

use super::*;

impl RightsStore for SqliteStore {
    fn set_consent(
        &self,
        row: &ConsentRow,
        prev: Option<&AnchorRow>,
        next: &AnchorRow,
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        replace_anchor(&tx, prev, next)?;
        tx.execute(
            "INSERT INTO consents (subject, purpose, state, at, recorded_by, mac)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (subject, purpose) DO UPDATE SET
                state = excluded.state, at = excluded.at, recorded_by = excluded.recorded_by,
                mac = excluded.mac",
            params![
                row.subject,
                row.purpose,
                row.state,
                row.at,
                row.recorded_by,
                row.mac
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn all_consents(&self) -> Result<Vec<ConsentRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {CONSENT_COLUMNS} FROM consents ORDER BY subject, purpose"
            ))?
            .query_map([], consent_from_row)?
            .collect()
        })
    }

    fn insert_mandate(&self, row: &MandateRow, anchor: AnchorChange<'_>) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        replace_anchor(&tx, anchor.prev, anchor.next)?;
        tx.execute(
            &format!("INSERT INTO mandates ({MANDATE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            params![
                row.id,
                row.subject,
                row.representative,
                row.purposes.join(","),
                row.categories.join(","),
                row.valid_from,
                row.valid_until,
                row.granted_by,
                row.revoked_at,
                row.mac
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn revoke_mandate(
        &self,
        id: &str,
        at: i64,
        mac: &[u8],
        anchor: AnchorChange<'_>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let n = tx
            .execute(
                "UPDATE mandates SET revoked_at = ?2, mac = ?3 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at, mac],
            )
            .map_err(db)?;
        if n == 0 {
            return Ok(false);
        }
        replace_anchor(&tx, anchor.prev, anchor.next)?;
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn mandates(
        &self,
        subject: Option<&str>,
        representative: Option<&str>,
    ) -> Result<Vec<MandateRow>, StoreError> {
        if subject.is_some() {
            self.serving()?;
        }
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {MANDATE_COLUMNS} FROM mandates
                 WHERE (?1 IS NULL OR subject = ?1) AND (?2 IS NULL OR representative = ?2)
                 ORDER BY valid_from, id"
            ))?
            .query_map(params![subject, representative], mandate_from_row)?
            .collect()
        })
    }

    fn insert_restriction(
        &self,
        row: &RestrictionRow,
        anchor: AnchorChange<'_>,
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        replace_anchor(&tx, anchor.prev, anchor.next)?;
        tx.execute(
            &format!(
                "INSERT INTO restrictions ({RESTRICTION_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                row.id,
                row.subject,
                row.reason,
                row.placed_by,
                row.placed_at,
                row.lifted_at,
                row.lifted_by,
                row.mac
            ],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Exists(format!("restriction `{}`", row.id))
            } else {
                db(e)
            }
        })?;
        tx.commit().map_err(db)
    }

    fn lift_restriction(
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
                "UPDATE restrictions SET lifted_at = ?2, lifted_by = ?3, mac = ?4
                 WHERE id = ?1 AND lifted_at IS NULL",
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

    fn restrictions(&self, subject: Option<&str>) -> Result<Vec<RestrictionRow>, StoreError> {
        if subject.is_some() {
            self.serving()?;
        }
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {RESTRICTION_COLUMNS} FROM restrictions
                 WHERE (?1 IS NULL OR subject = ?1) ORDER BY placed_at, id"
            ))?
            .query_map(params![subject], restriction_from_row)?
            .collect()
        })
    }

    fn insert_token(&self, row: &TokenRow) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute(
            &format!(
                "INSERT INTO tokens ({TOKEN_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                row.id,
                row.hash,
                row.principal,
                row.roles.join(","),
                row.scope_subject,
                row.created_at,
                row.expires_at,
                row.revoked_at,
                row.requested_by,
                row.needs_approval,
                row.approved_by,
                row.approved_at,
                row.mac
            ],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Exists(format!("token `{}`", row.id))
            } else {
                db(e)
            }
        })?;
        Ok(())
    }

    fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"
            ))?
            .query_row([hash], token_from_row)
            .optional()
        })
    }

    fn revoke_token(&self, id: &str, at: i64, mac: &[u8], was: &[u8]) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute(
                "UPDATE tokens SET revoked_at = ?2, mac = ?3
                 WHERE id = ?1 AND revoked_at IS NULL AND mac = ?4",
                params![id, at, mac, was],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn approve_token(&self, id: &str, by: &str, at: i64, mac: &[u8]) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute(
                "UPDATE tokens SET approved_by = ?2, approved_at = ?3, mac = ?4
                 WHERE id = ?1 AND needs_approval = 1 AND approved_at IS NULL
                   AND revoked_at IS NULL",
                params![id, by, at, mac],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"
            ))?
            .query_map([], token_from_row)?
            .collect()
        })
    }
}
