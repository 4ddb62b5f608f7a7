//! The SQLite store: purpose key versions, subject keys and key jobs.

use super::*;

impl KeyStore for SqliteStore {
    fn purpose_keys(&self, purpose: &str) -> Result<Vec<PurposeKeyRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {PURPOSE_KEY_COLUMNS} FROM purpose_keys WHERE purpose = ?1 ORDER BY version"
            ))?;
            stmt.query_map([purpose], purpose_key_from_row)?.collect()
        })
    }

    fn subject_key(
        &self,
        subject: &str,
        purpose: &str,
    ) -> Result<Option<SubjectKeyRow>, StoreError> {
        self.read(|c| select_subject_key(c, subject, purpose))
    }

    fn insert_subject_key(
        &self,
        row: &SubjectKeyRow,
        anchor: &AnchorRow,
    ) -> Result<SubjectKeyRow, StoreError> {
        let row = row.clone();
        let anchor = anchor.clone();
        let schema = Arc::clone(&self.schema);
        self.group.run(&self.writer, move |tx| {
            schema.check(tx, Scope::All)?;
            super::bump_mark(tx)?;
            insert_first_subject_key(tx, &row, &anchor)?;
            select_subject_key(tx, &row.subject, row.purpose.as_str())
                .map_err(db)?
                .ok_or_else(|| StoreError::Database("subject key vanished after insert".into()))
        })
    }

    fn rotate_purpose_key(
        &self,
        retired: Option<&KeyRowChange>,
        new: &PurposeKeyRow,
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let active: i64 = tx
            .query_row(
                "SELECT count(*) FROM purpose_keys WHERE purpose = ?1 AND state = 'active'",
                [&new.purpose],
                |r| r.get(0),
            )
            .map_err(db)?;
        let retired_ok =
            match retired {
                Some(old) => active == 1
                    && old.row.purpose == new.purpose
                    && tx
                        .query_row(
                            "SELECT state FROM purpose_keys WHERE purpose = ?1 AND version = ?2",
                            params![old.row.purpose, old.row.version],
                            |r| r.get::<_, String>(0),
                        )
                        .optional()
                        .map_err(db)?
                        .as_deref()
                        == Some(KeyState::Active.as_str())
                    && update_key_row(&tx, old).map_err(db)? == 1,
                None => active == 0,
            };
        if !retired_ok {
            return Err(StoreError::Stale(format!(
                "the active version of purpose key `{}`",
                new.purpose
            )));
        }
        insert_purpose_key(&tx, new)?;
        tx.commit().map_err(db)
    }

    fn update_purpose_key(&self, change: &KeyRowChange) -> Result<bool, StoreError> {
        let conn = self.write()?;
        Ok(update_key_row(&conn, change).map_err(db)? > 0)
    }

    fn destroy_purpose_key(&self, change: &KeyRowChange) -> Result<(), StoreError> {
        let row = &change.row;
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let in_use: i64 = tx
            .query_row(
                "SELECT count(*) FROM subject_keys WHERE purpose = ?1 AND purpose_version = ?2",
                params![row.purpose, row.version],
                |r| r.get(0),
            )
            .map_err(db)?;
        if in_use > 0 {
            return Err(StoreError::InUse(u64::try_from(in_use).unwrap_or(0)));
        }
        let written = tx
            .execute(
                "UPDATE purpose_keys SET state = ?3, wrapped = x'', destroyed_at = ?4,
                    destroy_after = ?5, barred = ?6, mac = ?7
                 WHERE purpose = ?1 AND version = ?2 AND mac = ?8",
                params![
                    row.purpose,
                    row.version,
                    row.state.as_str(),
                    row.destroyed_at,
                    row.destroy_after,
                    row.barred,
                    row.mac,
                    change.prev_mac
                ],
            )
            .map_err(db)?;
        if written != 1 {
            return Err(StoreError::Stale(format!(
                "purpose key `{}` v{} changed since it was read",
                row.purpose, row.version
            )));
        }
        tx.commit().map_err(db)?;
        // `secure_delete` overwrote the old material in the database pages; move the WAL into the
        // database and truncate it so no copy of the old page lingers there either.
        self.truncate_log(&conn);
        Ok(())
    }

    fn rewrap_root(
        &self,
        keys: &[PurposeKeyRow],
        meta: &[(&str, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        for k in keys {
            tx.execute(
                "UPDATE purpose_keys SET wrapped = ?3
                 WHERE purpose = ?1 AND version = ?2 AND state != 'destroyed' AND wrapped != x''",
                params![k.purpose, k.version, k.wrapped],
            )
            .map_err(db)?;
        }
        for (key, value) in meta {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        // The purpose keys wrapped under the old root key must not linger in the log.
        self.truncate_log(&conn);
        Ok(())
    }

    fn set_min_decrypt_version(
        &self,
        purpose: &str,
        version: u32,
        barred: &[KeyRowChange],
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let older: i64 = tx
            .query_row(
                "SELECT count(*) FROM subject_keys WHERE purpose = ?1 AND purpose_version < ?2",
                params![purpose, version],
                |r| r.get(0),
            )
            .map_err(db)?;
        if older > 0 {
            return Err(StoreError::InUse(u64::try_from(older).unwrap_or(0)));
        }
        for change in barred {
            let row = &change.row;
            if row.purpose.as_str() != purpose || row.version >= version || !row.barred {
                return Err(StoreError::Corrupt(format!(
                    "purpose key `{}` v{} is not barred below v{version}",
                    row.purpose, row.version
                )));
            }
            let written = tx
                .execute(
                    "UPDATE purpose_keys SET barred = 1, mac = ?3
                     WHERE purpose = ?1 AND version = ?2 AND mac = ?4",
                    params![row.purpose, row.version, row.mac, change.prev_mac],
                )
                .map_err(db)?;
            if written != 1 {
                return Err(StoreError::Stale(format!(
                    "purpose key `{}` v{} changed since it was read",
                    row.purpose, row.version
                )));
            }
        }
        tx.commit().map_err(db)
    }

    fn subject_key_counts(&self, purpose: &str) -> Result<Vec<(u32, u64)>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT purpose_version, count(*) FROM subject_keys WHERE purpose = ?1
                 GROUP BY purpose_version ORDER BY purpose_version",
            )?
            .query_map([purpose], |r| {
                let n: i64 = r.get(1)?;
                Ok((r.get(0)?, u64::try_from(n).unwrap_or(0)))
            })?
            .collect()
        })
    }

    fn subject_keys_below(
        &self,
        purpose: &str,
        version: u32,
        limit: usize,
    ) -> Result<Vec<SubjectKeyRow>, StoreError> {
        self.serving()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {SUBJECT_KEY_COLUMNS} FROM subject_keys
                 WHERE purpose = ?1 AND purpose_version < ?2 LIMIT ?3"
            ))?
            .query_map(params![purpose, version, limit], subject_key_from_row)?
            .collect()
        })
    }

    fn rewrap_subject_keys(
        &self,
        rows: &[SubjectKeyRow],
        from: &[u32],
    ) -> Result<usize, StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let mut n = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE subject_keys SET purpose_version = ?4, wrapped = ?5
                     WHERE subject = ?1 AND purpose = ?2 AND generation = ?3 AND purpose_version = ?6",
                )
                .map_err(db)?;
            for (row, old) in rows.iter().zip(from) {
                n += stmt
                    .execute(params![
                        row.subject,
                        row.purpose,
                        row.generation,
                        row.purpose_version,
                        row.wrapped,
                        old
                    ])
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(n)
    }

    fn subject_key_at(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
    ) -> Result<Option<SubjectKeyRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {SUBJECT_KEY_COLUMNS} FROM subject_keys
                 WHERE subject = ?1 AND purpose = ?2 AND generation = ?3"
            ))?
            .query_row(params![subject, purpose, generation], subject_key_from_row)
            .optional()
        })
    }

    fn subjects_keyed_before(
        &self,
        purpose: &str,
        before: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.serving()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            c.prepare_cached(
                "SELECT DISTINCT subject FROM subject_keys k WHERE purpose = ?1
                 AND ((generation = (SELECT max(generation) FROM subject_keys
                                     WHERE subject = k.subject AND purpose = k.purpose)
                       AND created_at < ?2)
                      OR generation < (SELECT max(generation) FROM subject_keys
                                       WHERE subject = k.subject AND purpose = k.purpose))
                 ORDER BY subject LIMIT ?3",
            )?
            .query_map(params![purpose, before, limit], |r| r.get(0))?
            .collect()
        })
    }

    fn begin_rekey(&self, new_key: &SubjectKeyRow, before: i64) -> Result<bool, StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let current =
            select_subject_key(&tx, &new_key.subject, new_key.purpose.as_str()).map_err(db)?;
        match current {
            Some(k) if k.created_at < before && k.generation < new_key.generation => {}
            _ => return Ok(false),
        }
        check_version_live(&tx, new_key.purpose.as_str(), new_key.purpose_version)?;
        tx.execute(
            &format!(
                "INSERT INTO subject_keys ({SUBJECT_KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            params![
                new_key.subject,
                new_key.purpose,
                new_key.generation,
                new_key.purpose_version,
                new_key.wrapped,
                new_key.created_at
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn stale_fields(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
        limit: usize,
    ) -> Result<Vec<(String, FieldRow)>, StoreError> {
        self.serving()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            c.prepare_cached(
                "SELECT f.record_id, f.name, f.category, f.kind, f.key_gen, f.sealed, f.mac,
                    f.version
                 FROM fields f JOIN records r ON r.id = f.record_id
                 WHERE r.subject = ?1 AND r.purpose = ?2 AND f.key_gen < ?3
                 ORDER BY f.record_id, f.name LIMIT ?4",
            )?
            .query_map(params![subject, purpose, generation, limit], |r| {
                Ok((
                    r.get(0)?,
                    FieldRow {
                        name: r.get(1)?,
                        category: r.get(2)?,
                        kind: r.get(3)?,
                        key_gen: r.get(4)?,
                        sealed: r.get(5)?,
                        mac: r.get(6)?,
                        version: r.get(7)?,
                        tags: Vec::new(),
                    },
                ))
            })?
            .collect()
        })
    }

    fn stale_segments(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
        limit: usize,
    ) -> Result<Vec<(EvidenceRow, SegmentRow)>, StoreError> {
        self.serving()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let columns = crate::store::qualified(EVIDENCE_COLUMNS, "e");
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {columns}, s.idx, s.key_gen, s.sealed, s.at, s.len
                 FROM evidence_segments s JOIN evidence e ON e.id = s.evidence_id
                 JOIN records r ON r.id = e.record_id
                 WHERE r.subject = ?1 AND r.purpose = ?2 AND e.complete <> 0 AND s.key_gen < ?3
                 ORDER BY s.evidence_id, s.idx LIMIT ?4"
            ))?
            .query_map(params![subject, purpose, generation, limit], |r| {
                let (segment, place) = super::evidence::segment_at(r, 13)?;
                Ok((evidence_from_row(r)?, segment, place))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?
        .into_iter()
        .filter_map(|(evidence, segment, place)| {
            let index = segment.index;
            match self.with_bytes(&evidence.id, segment, place) {
                // Its file went after the rows were read (a deletion, another rekey): the
                // segment as it is now, when it is still stale.
                Err(StoreError::Corrupt(_)) => match self.segment(&evidence.id, index) {
                    Ok(Some(now)) if now.key_gen < generation => Some(Ok((evidence, now))),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                },
                other => Some(other.map(|segment| (evidence, segment))),
            }
        })
        .collect()
    }

    fn subject_evidence(
        &self,
        subject: &str,
        purpose: &str,
    ) -> Result<Vec<EvidenceRow>, StoreError> {
        self.serving()?;
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE complete <> 0 AND record_id IN
                 (SELECT id FROM records WHERE subject = ?1 AND purpose = ?2) ORDER BY id"
            ))?
            .query_map(params![subject, purpose], evidence_from_row)?
            .collect()
        })
    }

    fn write_resealed(&self, generation: u32, items: &[Resealed]) -> Result<u64, StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let mut n = 0u64;
        for item in items {
            let written = match item {
                Resealed::Field {
                    record_id,
                    name,
                    version,
                    from,
                    sealed,
                } => tx
                    .prepare_cached(
                        "UPDATE fields SET sealed = ?5, key_gen = ?6
                         WHERE record_id = ?1 AND name = ?2 AND version = ?3 AND key_gen = ?4",
                    )
                    .and_then(|mut s| {
                        s.execute(params![record_id, name, version, from, sealed, generation])
                    }),
                Resealed::Segment {
                    evidence_id,
                    index,
                    from,
                    sealed,
                } => tx
                    .prepare_cached(
                        // Resealed bytes are held by the row (its file goes once no row
                        // names it: `finish_rekey`).
                        "UPDATE evidence_segments SET sealed = ?4, key_gen = ?5, at = NULL,
                         len = NULL WHERE evidence_id = ?1 AND idx = ?2 AND key_gen = ?3",
                    )
                    .and_then(|mut s| {
                        s.execute(params![evidence_id, index, from, sealed, generation])
                    }),
                Resealed::FileName {
                    evidence_id,
                    from,
                    sealed,
                } => tx
                    .prepare_cached(
                        "UPDATE evidence SET file_name = ?3 WHERE id = ?1 AND file_name = ?2",
                    )
                    .and_then(|mut s| s.execute(params![evidence_id, from, sealed])),
            }
            .map_err(db)?;
            n += u64::try_from(written).unwrap_or(0);
        }
        tx.commit().map_err(db)?;
        Ok(n)
    }

    fn finish_rekey(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
        files: &[String],
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let stale: i64 = tx
            .query_row(
                "SELECT (SELECT count(*) FROM fields f JOIN records r ON r.id = f.record_id
                         WHERE r.subject = ?1 AND r.purpose = ?2 AND f.key_gen < ?3)
                      + (SELECT count(*) FROM evidence_segments s
                         JOIN evidence e ON e.id = s.evidence_id JOIN records r ON r.id = e.record_id
                         WHERE r.subject = ?1 AND r.purpose = ?2 AND e.complete <> 0
                           AND s.key_gen < ?3)",
                params![subject, purpose, generation],
                |r| r.get(0),
            )
            .map_err(db)?;
        let stored: Vec<String> = tx
            .prepare_cached(
                "SELECT id FROM evidence WHERE complete <> 0 AND record_id IN
                 (SELECT id FROM records WHERE subject = ?1 AND purpose = ?2)",
            )
            .map_err(db)?
            .query_map(params![subject, purpose], |r| r.get(0))
            .map_err(db)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db)?;
        if stale > 0 || stored.iter().any(|id| !files.contains(id)) {
            return Err(StoreError::Stale(format!(
                "the values of `{subject}` under older subject key generations"
            )));
        }
        tx.execute(
            "DELETE FROM subject_keys WHERE subject = ?1 AND purpose = ?2 AND generation < ?3",
            params![subject, purpose, generation],
        )
        .map_err(db)?;
        // The files whose every segment the rekey moved into its row (a finished file gets no
        // new segment) go once this commits.
        let mut moved = Vec::new();
        for id in files {
            let named: i64 = tx
                .prepare_cached(
                    "SELECT count(*) FROM evidence_segments WHERE evidence_id = ?1
                     AND at IS NOT NULL",
                )
                .and_then(|mut s| s.query_row([id], |r| r.get(0)))
                .map_err(db)?;
            if named == 0 {
                moved.push(id.clone());
            }
        }
        tx.commit().map_err(db)?;
        drop(conn);
        self.files.remove(moved);
        Ok(())
    }

    fn orphan_fields(&self, purpose: &str) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT (SELECT count(*) FROM fields f JOIN records r ON r.id = f.record_id
                 WHERE r.purpose = ?1 AND NOT EXISTS (
                    SELECT 1 FROM subject_keys k
                    WHERE k.subject = r.subject AND k.purpose = r.purpose AND k.generation = f.key_gen))
                 + (SELECT count(*) FROM evidence_segments s
                    JOIN evidence e ON e.id = s.evidence_id JOIN records r ON r.id = e.record_id
                 WHERE r.purpose = ?1 AND e.complete <> 0 AND NOT EXISTS (
                    SELECT 1 FROM subject_keys k
                    WHERE k.subject = r.subject AND k.purpose = r.purpose AND k.generation = s.key_gen))",
                [purpose],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
        })
    }

    fn start_key_job(&self, job: &KeyJobRow) -> Result<KeyJobRow, StoreError> {
        let conn = self.write()?;
        conn.execute(
            "INSERT INTO key_jobs (purpose, kind, started_at, mac) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (purpose, kind) DO NOTHING",
            params![job.purpose, job.kind, job.started_at, job.mac],
        )
        .map_err(db)?;
        conn.query_row(
            "SELECT purpose, kind, started_at, coalesce(mac, x'') FROM key_jobs
             WHERE purpose = ?1 AND kind = ?2",
            params![job.purpose, job.kind],
            key_job_row,
        )
        .map_err(db)
    }

    fn finish_key_job(&self, purpose: &str, kind: &str) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute(
            "DELETE FROM key_jobs WHERE purpose = ?1 AND kind = ?2",
            params![purpose, kind],
        )
        .map_err(db)?;
        // A rekey deleted old subject keys and replaced ciphertexts, a rewrap replaced wrapped
        // keys: once per job, the log goes into the database (`secure_delete`) and is truncated.
        self.truncate_log(&conn);
        Ok(())
    }

    fn key_jobs(&self) -> Result<Vec<KeyJobRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT purpose, kind, started_at, coalesce(mac, x'') FROM key_jobs
                 ORDER BY purpose, kind",
            )?
            .query_map([], key_job_row)?
            .collect()
        })
    }
}

fn key_job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyJobRow> {
    Ok(KeyJobRow {
        purpose: r.get(0)?,
        kind: r.get(1)?,
        started_at: r.get(2)?,
        // A row of a store from before key jobs were authenticated has none.
        mac: r.get(3)?,
    })
}

/// Inserts a subject's first key of a purpose, with the subject's anchor unless it has one, in
/// the caller's transaction: `false` when the subject already has a key of that purpose (nothing
/// inserted), `NotLive` when the key is wrapped under a version that is no longer active.
pub(super) fn insert_first_subject_key(
    tx: &Connection,
    row: &SubjectKeyRow,
    anchor: &AnchorRow,
) -> Result<bool, StoreError> {
    check_version_live(tx, row.purpose.as_str(), row.purpose_version)?;
    tx.prepare_cached(
        "INSERT INTO subject_anchors (subject, holds, consents, mac, digest)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (subject) DO NOTHING",
    )
    .and_then(|mut s| {
        s.execute(params![
            anchor.subject,
            anchor.holds,
            anchor.consents,
            anchor.mac,
            anchor.digest
        ])
    })
    .map_err(db)?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO subject_keys (subject, purpose, generation, purpose_version, wrapped, created_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6
             WHERE NOT EXISTS (SELECT 1 FROM subject_keys WHERE subject = ?1 AND purpose = ?2)",
        )
        .and_then(|mut s| {
            s.execute(params![
                row.subject,
                row.purpose,
                row.generation,
                row.purpose_version,
                row.wrapped,
                row.created_at
            ])
        })
        .map_err(db)?;
    Ok(inserted == 1)
}
