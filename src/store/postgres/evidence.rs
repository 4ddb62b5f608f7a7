//! The PostgreSQL store: evidence files, streamed in segments of at most 64 KiB each, one row
//! per segment.

use super::*;

impl EvidenceStore for PgStore {
    fn begin_evidence(
        &self,
        new_record: Option<&RecordRow>,
        row: &EvidenceRow,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            if let Some(record) = new_record {
                insert_record_row(tx, record)?;
            }
            let taken = tx.count(
                "SELECT (SELECT count(*) FROM fields WHERE record_id = $1 AND name = $2)
                      + (SELECT count(*) FROM evidence WHERE record_id = $1 AND name = $2)",
                &[&row.record_id, &row.name],
            )?;
            if taken > 0 {
                return Err(StoreError::Exists(format!("field `{}`", row.name)));
            }
            let s = tx.statement(&format!(
                "INSERT INTO evidence ({EVIDENCE_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            ))?;
            tx.tx
                .execute(
                    &s,
                    &[
                        &row.id,
                        &row.record_id,
                        &row.name,
                        &row.category.as_str(),
                        &row.media_type,
                        &row.file_name,
                        &big(row.size)?,
                        &row.sha256,
                        &row.salt,
                        &row.complete,
                        &row.owns_record,
                        &row.created_at,
                        &row.mac,
                    ],
                )
                .map_err(|e| match e.code() {
                    Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => {
                        StoreError::Missing(format!("record `{}`", row.record_id))
                    }
                    Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
                        StoreError::Exists(format!("field `{}`", row.name))
                    }
                    _ => db(e),
                })?;
            Ok(())
        })
    }

    fn append_segments(
        &self,
        evidence_id: &str,
        subject: &str,
        purpose: &str,
        segments: &[SegmentRow],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            if tx
                .opt(
                    "SELECT 1 FROM evidence WHERE id = $1 AND NOT complete",
                    &[&evidence_id],
                )?
                .is_none()
            {
                return Err(StoreError::Missing(format!("upload `{evidence_id}`")));
            }
            let mut checked = None;
            for s in segments {
                if checked != Some(s.key_gen) {
                    check_key_exists(tx, subject, purpose, s.key_gen)?;
                    checked = Some(s.key_gen);
                }
                tx.insert(
                    "INSERT INTO evidence_segments (evidence_id, idx, key_gen, sealed)
                     VALUES ($1, $2, $3, $4)",
                    &[
                        &evidence_id,
                        &i64::from(s.index),
                        &i64::from(s.key_gen),
                        &s.sealed,
                    ],
                    || format!("segment {}", s.index),
                )?;
            }
            Ok(())
        })
    }

    fn finish_evidence(
        &self,
        evidence_id: &str,
        size: u64,
        segments: u64,
        sealed_name: &[u8],
        at: i64,
        mac: &[u8],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let stored = tx.count(
                "SELECT count(*) FROM evidence_segments WHERE evidence_id = $1",
                &[&evidence_id],
            )?;
            // A rekey that ran during the upload destroyed the key its segments were sealed
            // under.
            let orphaned = tx.count(
                "SELECT count(*) FROM evidence_segments s
                 JOIN evidence e ON e.id = s.evidence_id JOIN records r ON r.id = e.record_id
                 WHERE s.evidence_id = $1 AND NOT EXISTS (
                    SELECT 1 FROM subject_keys k WHERE k.subject = r.subject
                    AND k.purpose = r.purpose AND k.generation = s.key_gen)",
                &[&evidence_id],
            )?;
            if orphaned > 0 {
                return Err(StoreError::Stale(format!(
                    "upload `{evidence_id}`: its subject key was replaced"
                )));
            }
            if stored != segments {
                return Err(StoreError::Stale(format!(
                    "upload `{evidence_id}` ({stored} of {segments} segments stored)"
                )));
            }
            let n = tx.exec(
                "UPDATE evidence SET complete = TRUE, size = $2, file_name = $3, sha256 = '',
                    mac = $4
                 WHERE id = $1 AND NOT complete",
                &[&evidence_id, &big(size)?, &sealed_name, &mac],
            )?;
            if n == 0 {
                return Err(StoreError::Missing(format!("upload `{evidence_id}`")));
            }
            tx.exec(
                "UPDATE records SET updated_at = $2
                 WHERE id = (SELECT record_id FROM evidence WHERE id = $1)",
                &[&evidence_id, &at],
            )?;
            Ok(())
        })
    }

    fn discard_evidence(&self, evidence_id: &str) -> Result<bool, StoreError> {
        self.write(|tx| discard_one(tx, evidence_id))
    }

    fn unfinished_evidence(&self) -> Result<Vec<EvidenceRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!("SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE NOT complete ORDER BY id"),
                &[],
            )?
            .iter()
            .map(evidence_from_row)
            .collect()
        })
    }

    fn evidence(&self, evidence_id: &str) -> Result<Option<(RecordRow, EvidenceRow)>, StoreError> {
        self.read(|tx| {
            let Some(ev) = tx.opt(
                &format!("SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE id = $1"),
                &[&evidence_id],
            )?
            else {
                return Ok(None);
            };
            let ev = evidence_from_row(&ev)?;
            let rec = tx.opt(
                &format!("SELECT {RECORD_COLUMNS} FROM records WHERE id = $1"),
                &[&ev.record_id],
            )?;
            rec.map(|r| Ok((record_from_row(&r)?, ev))).transpose()
        })
    }

    fn record_evidence(&self, record_id: &str) -> Result<Vec<EvidenceRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE record_id = $1 ORDER BY name"
                ),
                &[&record_id],
            )?
            .iter()
            .map(evidence_from_row)
            .collect()
        })
    }

    fn segment(&self, evidence_id: &str, index: u32) -> Result<Option<SegmentRow>, StoreError> {
        self.with_conn(|c| {
            // One statement: no transaction of its own needed.
            let sql = "SELECT idx, key_gen, sealed FROM evidence_segments
                       WHERE evidence_id = $1 AND idx = $2";
            let s = match c.statements.get(sql) {
                Some(s) => s.clone(),
                None => {
                    let s = c.client.prepare(sql).map_err(db)?;
                    c.statements.insert(sql.to_owned(), s.clone());
                    s
                }
            };
            c.client
                .query_opt(&s, &[&evidence_id, &i64::from(index)])
                .map_err(db)?
                .map(|r| segment_from_row(&r))
                .transpose()
        })
    }

    fn segment_span(&self, evidence_id: &str) -> Result<(u64, Option<(i64, i64)>), StoreError> {
        self.read_one(|tx| {
            let row = tx.one(
                "SELECT count(*), min(idx)::BIGINT, max(idx)::BIGINT FROM evidence_segments
                 WHERE evidence_id = $1",
                &[&evidence_id],
            )?;
            let count: i64 = get(&row, 0)?;
            let span = match (get::<Option<i64>>(&row, 1)?, get::<Option<i64>>(&row, 2)?) {
                (Some(first), Some(last)) => Some((first, last)),
                _ => None,
            };
            Ok((u64::try_from(count).unwrap_or(0), span))
        })
    }
}
