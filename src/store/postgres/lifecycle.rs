//! The PostgreSQL store: legal holds, subject anchors and subject requests.

use super::*;

/// A subject's facts in one statement: every row in one shape (kind; seven texts; three
/// numbers; two byte strings; a sort key), kind 0 the anchor, 1 consents (by purpose), 2 holds
/// and 3 mandates (by id), 4 whether the subject has a key or a record, 5 restrictions (by
/// id), 7 the ids of destroyed records (6 is a record's row in `RECORD_WITH_FACTS`).
pub(super) const FACTS: &str = r#"
SELECT 0::SMALLINT, subject, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT,
       NULL::TEXT, holds, consents, NULL::BIGINT, mac, digest, ''::TEXT COLLATE "C"
  FROM subject_anchors WHERE subject = $1
UNION ALL
SELECT 1::SMALLINT, subject, purpose, state, recorded_by, NULL, NULL, NULL, at, NULL, NULL, mac,
       NULL::BYTEA, purpose
  FROM consents WHERE subject = $1
UNION ALL
SELECT 2::SMALLINT, id, subject, record_id, reason, case_ref, placed_by, released_by, placed_at,
       released_at, NULL, mac, NULL, id
  FROM holds WHERE subject = $1
UNION ALL
SELECT 3::SMALLINT, id, subject, representative, purposes, categories, granted_by, NULL,
       valid_from, valid_until, revoked_at, mac, NULL, id
  FROM mandates WHERE subject = $1
UNION ALL
SELECT 5::SMALLINT, id, subject, reason, placed_by, lifted_by, NULL, NULL, placed_at, lifted_at,
       NULL, mac, NULL, id
  FROM restrictions WHERE subject = $1
UNION ALL
SELECT 7::SMALLINT, record_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, record_id
  FROM destroyed_records WHERE subject = $1
UNION ALL
SELECT 4::SMALLINT, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       (EXISTS (SELECT 1 FROM subject_keys WHERE subject = $1)
        OR EXISTS (SELECT 1 FROM records WHERE subject = $1))::INT::BIGINT,
       NULL, NULL, NULL, NULL, ''
ORDER BY 1, 14"#;

/// The facts (`FACTS`) of each subject of the array `$1`, in one statement: each row starts with
/// the 1-based place of its subject in the array (a subject as often as it is named), in the
/// order of the array. The subjects are taken by their places, so that the statement is
/// planned once for any number of them (as `RECORDS_WITH_FACTS`). `tests/it/postgres.rs`
/// checks its plans.
pub static SUBJECTS_FACTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let facts = FACTS
        .trim_end()
        .trim_end_matches("ORDER BY 1, 14")
        .replace("$1", "q.subject");
    format!(
        "SELECT q.i, f.* FROM (
             SELECT i, ($1::TEXT[])[i] COLLATE \"C\" AS subject
             FROM generate_subscripts($1::TEXT[], 1) AS i
             OFFSET 0
         ) q
         CROSS JOIN LATERAL ({facts}) f
         ORDER BY 1, 2, 15"
    )
});

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
        // One statement, so one snapshot and one round trip: the anchor, whether the subject
        // has a key or record, and the rows the anchor counts, in one shape (see `FACTS`).
        self.read_one(|tx| {
            let mut facts = SubjectFacts::default();
            for r in tx.all(FACTS, &[&subject])? {
                add_fact(&mut facts, &r, 0)?;
            }
            Ok(facts)
        })
    }

    fn subjects_facts(&self, subjects: &[&str]) -> Result<Vec<SubjectFacts>, StoreError> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for all of them: one snapshot and one round trip, not one per subject.
        self.read_one(|tx| {
            let mut all: Vec<SubjectFacts> = (0..subjects.len())
                .map(|_| SubjectFacts::default())
                .collect();
            for r in tx.all(&SUBJECTS_FACTS, &[&subjects])? {
                let facts = super::at_place(&mut all, &r, "subject")?;
                add_fact(facts, &r, 1)?;
            }
            Ok(all)
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
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
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
                    &row.extended_due_at,
                    &row.extension_reason,
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

    fn extend_request(
        &self,
        id: &str,
        prev_mac: &[u8],
        extended_due_at: i64,
        reason: &str,
        mac: &[u8],
    ) -> Result<bool, StoreError> {
        self.write_guarded(|tx| {
            Ok(tx.exec(
                "UPDATE subject_requests
                    SET extended_due_at = $3, extension_reason = $4, mac = $5
                  WHERE id = $1 AND mac = $2 AND completed_at IS NULL",
                &[&id, &prev_mac, &extended_due_at, &reason, &mac],
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

/// Adds one row of `FACTS` (or of a statement that reads records with them) to `facts`: its
/// columns from `at` on.
pub(super) fn add_fact(facts: &mut SubjectFacts, r: &Row, at: usize) -> Result<(), StoreError> {
    let kind: i16 = get(r, at)?;
    match kind {
        0 => {
            facts.anchor = Some(AnchorRow {
                subject: get(r, at + 1)?,
                holds: get_u32(r, at + 8)?,
                consents: get_u32(r, at + 9)?,
                mac: get(r, at + 11)?,
                digest: get(r, at + 12)?,
            });
        }
        1 => facts.consents.push(ConsentRow {
            subject: get(r, at + 1)?,
            purpose: get_named(r, at + 2, "purpose")?,
            state: get_named(r, at + 3, "consent state")?,
            recorded_by: get(r, at + 4)?,
            at: get(r, at + 8)?,
            mac: get(r, at + 11)?,
        }),
        2 => facts.holds.push(HoldRow {
            id: get(r, at + 1)?,
            subject: get(r, at + 2)?,
            record_id: get(r, at + 3)?,
            reason: get(r, at + 4)?,
            case_ref: get(r, at + 5)?,
            placed_by: get(r, at + 6)?,
            released_by: get(r, at + 7)?,
            placed_at: get(r, at + 8)?,
            released_at: get(r, at + 9)?,
            mac: get(r, at + 11)?,
        }),
        3 => {
            let purposes: String = get(r, at + 4)?;
            let categories: String = get(r, at + 5)?;
            facts.mandates.push(MandateRow {
                id: get(r, at + 1)?,
                subject: get(r, at + 2)?,
                representative: get(r, at + 3)?,
                purposes: split_list(&purposes),
                categories: split_list(&categories),
                granted_by: get(r, at + 6)?,
                valid_from: get(r, at + 8)?,
                valid_until: get(r, at + 9)?,
                revoked_at: get(r, at + 10)?,
                mac: get(r, at + 11)?,
            });
        }
        5 => facts.restrictions.push(RestrictionRow {
            id: get(r, at + 1)?,
            subject: get(r, at + 2)?,
            reason: get(r, at + 3)?,
            placed_by: get(r, at + 4)?,
            lifted_by: get(r, at + 5)?,
            placed_at: get(r, at + 8)?,
            lifted_at: get(r, at + 9)?,
            mac: get(r, at + 11)?,
        }),
        4 => facts.keyed = get::<i64>(r, at + 8)? != 0,
        7 => facts.destroyed.push(get(r, at + 1)?),
        other => {
            return Err(StoreError::Corrupt(format!(
                "a subject's facts: a row of unknown kind {other}"
            )));
        }
    }
    Ok(())
}
