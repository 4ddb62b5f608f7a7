//! The SQLite store: evidence files, streamed in segments.

use super::{
    files::{MAX_SEALED, Placed},
    *,
};

impl EvidenceStore for SqliteStore {
    fn begin_evidence(
        &self,
        new_record: Option<&RecordRow>,
        row: &EvidenceRow,
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        if let Some(record) = new_record {
            insert_record_row(&tx, record)?;
        }
        let taken: i64 = tx
            .query_row(
                "SELECT (SELECT count(*) FROM fields WHERE record_id = ?1 AND name = ?2)
                      + (SELECT count(*) FROM evidence WHERE record_id = ?1 AND name = ?2)",
                params![row.record_id, row.name],
                |r| r.get(0),
            )
            .map_err(db)?;
        if taken > 0 {
            return Err(StoreError::Exists(format!("field `{}`", row.name)));
        }
        tx.execute(
            &format!(
                "INSERT INTO evidence ({EVIDENCE_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                row.id,
                row.record_id,
                row.name,
                row.category,
                row.media_type,
                row.file_name,
                i64::try_from(row.size).unwrap_or(i64::MAX),
                row.sha256,
                row.salt,
                row.complete,
                row.owns_record,
                row.created_at,
                row.mac
            ],
        )
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                StoreError::Missing(format!("record `{}`", row.record_id))
            } else if is_unique_violation(&e) {
                StoreError::Exists(format!("field `{}`", row.name))
            } else {
                db(e)
            }
        })?;
        tx.commit().map_err(db)
    }

    fn append_segments(
        &self,
        evidence_id: &str,
        subject: &str,
        purpose: &str,
        segments: &[SegmentRow],
    ) -> Result<(), StoreError> {
        // The bytes go to the upload's file first, outside the writer's lock; the rows that
        // name them commit after.
        let placed = self.files.append(evidence_id, segments)?;
        let stored = {
            let mut conn = self.write()?;
            append_segments_tx(&mut conn, evidence_id, subject, purpose, segments, &placed)
        };
        if let Err(StoreError::Missing(_)) = stored {
            // Bytes no row will name: the upload is gone.
            self.files.remove(vec![evidence_id.to_owned()]);
        }
        stored
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
        // The segments are on disk before the commit that makes them readable.
        self.files.sync(evidence_id)?;
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        // All the upload's segments, and where the last place its rows name in its file ends:
        // the file must hold it (a file taken during the upload and begun again by the next
        // batch holds less).
        let (stored, end): (i64, Option<i64>) = tx
            .query_row(
                "SELECT count(*), max(at + len) FROM evidence_segments WHERE evidence_id = ?1",
                [evidence_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db)?;
        if let Some(end) = end {
            self.files.check_holds(evidence_id, end)?;
        }
        // A rekey that ran during the upload destroyed the key its segments were sealed under.
        let orphaned: i64 = tx
            .query_row(
                "SELECT count(*) FROM evidence_segments s
                 JOIN evidence e ON e.id = s.evidence_id JOIN records r ON r.id = e.record_id
                 WHERE s.evidence_id = ?1 AND NOT EXISTS (
                    SELECT 1 FROM subject_keys k WHERE k.subject = r.subject
                    AND k.purpose = r.purpose AND k.generation = s.key_gen)",
                [evidence_id],
                |r| r.get(0),
            )
            .map_err(db)?;
        if orphaned > 0 {
            return Err(StoreError::Stale(format!(
                "upload `{evidence_id}`: its subject key was replaced"
            )));
        }
        if u64::try_from(stored).ok() != Some(segments) {
            return Err(StoreError::Stale(format!(
                "upload `{evidence_id}` ({stored} of {segments} segments stored)"
            )));
        }
        let n = tx
            .execute(
                "UPDATE evidence SET complete = 1, size = ?2, file_name = ?3, sha256 = '', mac = ?4
                 WHERE id = ?1 AND complete = 0",
                params![
                    evidence_id,
                    i64::try_from(size).unwrap_or(i64::MAX),
                    sealed_name,
                    mac
                ],
            )
            .map_err(db)?;
        if n == 0 {
            return Err(StoreError::Missing(format!("upload `{evidence_id}`")));
        }
        tx.execute(
            "UPDATE records SET updated_at = ?2
             WHERE id = (SELECT record_id FROM evidence WHERE id = ?1)",
            params![evidence_id, at],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn discard_evidence(&self, evidence_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let found = discard_one(&tx, evidence_id)?;
        tx.commit().map_err(db)?;
        drop(conn);
        if found {
            self.files.remove(vec![evidence_id.to_owned()]);
        }
        Ok(found)
    }

    fn unfinished_evidence(&self) -> Result<Vec<EvidenceRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE complete = 0 ORDER BY id"
            ))?
            .query_map([], evidence_from_row)?
            .collect()
        })
    }

    fn evidence(&self, evidence_id: &str) -> Result<Option<(RecordRow, EvidenceRow)>, StoreError> {
        let found = self.read(|c| {
            let Some(ev) = c
                .prepare_cached(&format!(
                    "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE id = ?1"
                ))?
                .query_row([evidence_id], evidence_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            let rec = c
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1"
                ))?
                .query_row([&ev.record_id], record_from_row)
                .optional()?;
            Ok(rec.map(|r| (r, ev)))
        })?;
        found.map(|(r, e)| Ok((with_labels(r)?, e))).transpose()
    }

    fn record_evidence(&self, record_id: &str) -> Result<Vec<EvidenceRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE record_id = ?1 ORDER BY name"
            ))?
            .query_map([record_id], evidence_from_row)?
            .collect()
        })
    }

    fn segment(&self, evidence_id: &str, index: u32) -> Result<Option<SegmentRow>, StoreError> {
        let row = || {
            self.read(|c| {
                c.prepare_cached(
                    "SELECT idx, key_gen, sealed, at, len FROM evidence_segments
                     WHERE evidence_id = ?1 AND idx = ?2",
                )?
                .query_row(params![evidence_id, index], segment_from_row)
                .optional()
            })
        };
        let Some((segment, place)) = row()? else {
            return Ok(None);
        };
        match self.with_bytes(evidence_id, segment, place) {
            // A rekey that moved the segment into its row, or a deletion, may have taken the
            // file between the row and its bytes: the row as it is now answers.
            Err(StoreError::Corrupt(what)) => match row()? {
                None => Ok(None),
                Some((segment, now)) if now != place => {
                    self.with_bytes(evidence_id, segment, now).map(Some)
                }
                Some(_) => Err(StoreError::Corrupt(what)),
            },
            other => other.map(Some),
        }
    }

    fn segment_span(&self, evidence_id: &str) -> Result<(u64, Option<(i64, i64)>), StoreError> {
        let (count, span, end, misplaced) = self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT count(*), min(idx), max(idx),
                    max(CASE WHEN typeof(at) = 'integer' AND typeof(len) = 'integer'
                        THEN at + len END),
                    count(*) FILTER (WHERE at IS NOT NULL AND (typeof(at) <> 'integer'
                        OR typeof(len) <> 'integer' OR at < 0 OR len < 0 OR len > {MAX_SEALED}))
                 FROM evidence_segments WHERE evidence_id = ?1"
            ))?
            .query_row([evidence_id], |r| {
                let count: i64 = r.get(0)?;
                let span = match (r.get::<_, Option<i64>>(1)?, r.get::<_, Option<i64>>(2)?) {
                    (Some(first), Some(last)) => Some((first, last)),
                    _ => None,
                };
                Ok((
                    u64::try_from(count).unwrap_or(0),
                    span,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
        })?;
        // A row that names no place kluis writes is damage of its own, which a read answers
        // with `DATA_LOSS` too.
        if misplaced > 0 {
            return Err(StoreError::Corrupt(format!(
                "{misplaced} segment rows of evidence `{evidence_id}` name a place in its file \
                 that kluis does not write"
            )));
        }
        // The rows that name bytes in the file name bytes it holds.
        if let Some(end) = end {
            self.files.check_holds(evidence_id, end)?;
        }
        Ok((count, span))
    }
}

/// A segment row (`idx, key_gen, sealed, at, len`), and where its bytes are when its file
/// holds them.
fn segment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(SegmentRow, Option<Placed>)> {
    segment_at(r, 0)
}

/// [`segment_from_row`] from the columns at `first` on.
pub(super) fn segment_at(
    r: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<(SegmentRow, Option<Placed>)> {
    let place = match (
        r.get::<_, Option<i64>>(first + 3)?,
        r.get::<_, Option<i64>>(first + 4)?,
    ) {
        (None, _) => None,
        (Some(at), len) => Some(Placed {
            at,
            // A row edited to name a place without a length names nothing kluis wrote.
            len: len.unwrap_or(-1),
        }),
    };
    Ok((
        SegmentRow {
            index: r.get(first)?,
            key_gen: r.get(first + 1)?,
            sealed: r.get(first + 2)?,
        },
        place,
    ))
}

impl SqliteStore {
    /// `row` with its bytes, read from its file when `place` says they are there.
    pub(super) fn with_bytes(
        &self,
        evidence_id: &str,
        mut row: SegmentRow,
        place: Option<Placed>,
    ) -> Result<SegmentRow, StoreError> {
        if let Some(place) = place {
            row.sealed = self.files.read(evidence_id, place.at, place.len)?;
        }
        Ok(row)
    }
}
