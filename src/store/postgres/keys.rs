//! The PostgreSQL store: purpose key versions, subject keys and key jobs. Every write that
//! wraps under a purpose key version checks in its own transaction that the version is still
//! live, so a node that has not yet seen a rotation or destruction cannot store a key nobody
//! can unwrap.

use super::*;

impl KeyStore for PgStore {
    fn purpose_keys(&self, purpose: &str) -> Result<Vec<PurposeKeyRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {PURPOSE_KEY_COLUMNS} FROM purpose_keys WHERE purpose = $1
                     ORDER BY version"
                ),
                &[&purpose],
            )?
            .iter()
            .map(purpose_key_from_row)
            .collect()
        })
    }

    fn subject_key(
        &self,
        subject: &str,
        purpose: &str,
    ) -> Result<Option<SubjectKeyRow>, StoreError> {
        self.read_one(|tx| select_subject_key(tx, subject, purpose))
    }

    fn insert_subject_key(
        &self,
        row: &SubjectKeyRow,
        anchor: &AnchorRow,
    ) -> Result<SubjectKeyRow, StoreError> {
        self.write(|tx| {
            insert_first_subject_key(tx, row, anchor)?;
            select_subject_key(tx, &row.subject, row.purpose.as_str())?
                .ok_or_else(|| StoreError::Database("subject key vanished after insert".into()))
        })
    }

    fn rotate_purpose_key(
        &self,
        retired: Option<&KeyRowChange>,
        new: &PurposeKeyRow,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let active = tx.count(
                "SELECT count(*) FROM purpose_keys WHERE purpose = $1 AND state = 'active'",
                &[&new.purpose.as_str()],
            )?;
            let retired_ok = match retired {
                Some(old) => {
                    active == 1
                        && old.row.purpose == new.purpose
                        && tx.count(
                            "SELECT count(*) FROM purpose_keys
                             WHERE purpose = $1 AND version = $2 AND state = 'active'",
                            &[&old.row.purpose.as_str(), &i64::from(old.row.version)],
                        )? == 1
                        && update_key_row(tx, old)? == 1
                }
                None => active == 0,
            };
            if !retired_ok {
                return Err(StoreError::Stale(format!(
                    "the active version of purpose key `{}`",
                    new.purpose
                )));
            }
            insert_purpose_key(tx, new)?;
            bump_epoch(tx)
        })
    }

    fn update_purpose_key(&self, change: &KeyRowChange) -> Result<bool, StoreError> {
        self.write_guarded(|tx| {
            let changed = update_key_row(tx, change)? > 0;
            if changed {
                bump_epoch(tx)?;
            }
            Ok(changed)
        })
    }

    fn destroy_purpose_key(&self, change: &KeyRowChange) -> Result<(), StoreError> {
        let row = &change.row;
        self.write(|tx| {
            let in_use = tx.count(
                "SELECT count(*) FROM subject_keys WHERE purpose = $1 AND purpose_version = $2",
                &[&row.purpose.as_str(), &i64::from(row.version)],
            )?;
            if in_use > 0 {
                return Err(StoreError::InUse(in_use));
            }
            let written = tx.exec(
                "UPDATE purpose_keys SET state = $3, wrapped = '\\x', destroyed_at = $4,
                    destroy_after = $5, barred = $6, mac = $7
                 WHERE purpose = $1 AND version = $2 AND mac = $8",
                &[
                    &row.purpose.as_str(),
                    &i64::from(row.version),
                    &row.state.as_str(),
                    &row.destroyed_at,
                    &row.destroy_after,
                    &row.barred,
                    &row.mac,
                    &change.prev_mac,
                ],
            )?;
            if written != 1 {
                return Err(StoreError::Stale(format!(
                    "purpose key `{}` v{} changed since it was read",
                    row.purpose, row.version
                )));
            }
            bump_epoch(tx)
        })
    }

    fn rewrap_root(
        &self,
        keys: &[PurposeKeyRow],
        meta: &[(&str, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            for k in keys {
                tx.exec(
                    "UPDATE purpose_keys SET wrapped = $3
                     WHERE purpose = $1 AND version = $2 AND state <> 'destroyed'
                       AND wrapped <> '\\x'",
                    &[&k.purpose.as_str(), &i64::from(k.version), &k.wrapped],
                )?;
            }
            for (key, value) in meta {
                tx.exec(
                    "INSERT INTO meta (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[key, value],
                )?;
            }
            bump_epoch(tx)
        })
    }

    fn set_min_decrypt_version(
        &self,
        purpose: &str,
        version: u32,
        barred: &[KeyRowChange],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let older = tx.count(
                "SELECT count(*) FROM subject_keys WHERE purpose = $1 AND purpose_version < $2",
                &[&purpose, &i64::from(version)],
            )?;
            if older > 0 {
                return Err(StoreError::InUse(older));
            }
            for change in barred {
                let row = &change.row;
                if row.purpose.as_str() != purpose || row.version >= version || !row.barred {
                    return Err(StoreError::Corrupt(format!(
                        "purpose key `{}` v{} is not barred below v{version}",
                        row.purpose, row.version
                    )));
                }
                let written = tx.exec(
                    "UPDATE purpose_keys SET barred = TRUE, mac = $3
                     WHERE purpose = $1 AND version = $2 AND mac = $4",
                    &[
                        &row.purpose.as_str(),
                        &i64::from(row.version),
                        &row.mac,
                        &change.prev_mac,
                    ],
                )?;
                if written != 1 {
                    return Err(StoreError::Stale(format!(
                        "purpose key `{}` v{} changed since it was read",
                        row.purpose, row.version
                    )));
                }
            }
            bump_epoch(tx)
        })
    }

    fn subject_key_counts(&self, purpose: &str) -> Result<Vec<(u32, u64)>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                "SELECT purpose_version, count(*) FROM subject_keys WHERE purpose = $1
                 GROUP BY purpose_version ORDER BY purpose_version",
                &[&purpose],
            )?
            .iter()
            .map(|r| Ok((get_u32(r, 0)?, get_u64(r, 1)?)))
            .collect()
        })
    }

    fn subject_keys_below(
        &self,
        purpose: &str,
        version: u32,
        max: usize,
    ) -> Result<Vec<SubjectKeyRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {SUBJECT_KEY_COLUMNS} FROM subject_keys
                     WHERE purpose = $1 AND purpose_version < $2
                     ORDER BY subject, generation LIMIT $3"
                ),
                &[&purpose, &i64::from(version), &limit(max)],
            )?
            .iter()
            .map(subject_key_from_row)
            .collect()
        })
    }

    fn rewrap_subject_keys(
        &self,
        rows: &[SubjectKeyRow],
        from: &[u32],
    ) -> Result<usize, StoreError> {
        self.write_guarded(|tx| {
            let mut n = 0u64;
            for (row, old) in rows.iter().zip(from) {
                // The new version must still be live: a node that rewraps under a version
                // another node rotated away or destroyed meanwhile stores nothing.
                check_version_live(tx, row.purpose.as_str(), row.purpose_version)?;
                n += tx.exec(
                    "UPDATE subject_keys SET purpose_version = $4, wrapped = $5
                     WHERE subject = $1 AND purpose = $2 AND generation = $3
                       AND purpose_version = $6",
                    &[
                        &row.subject,
                        &row.purpose.as_str(),
                        &i64::from(row.generation),
                        &i64::from(row.purpose_version),
                        &row.wrapped,
                        &i64::from(*old),
                    ],
                )?;
            }
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn subject_key_at(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
    ) -> Result<Option<SubjectKeyRow>, StoreError> {
        self.read_one(|tx| {
            tx.opt(
                &format!(
                    "SELECT {SUBJECT_KEY_COLUMNS} FROM subject_keys
                     WHERE subject = $1 AND purpose = $2 AND generation = $3"
                ),
                &[&subject, &purpose, &i64::from(generation)],
            )?
            .map(|r| subject_key_from_row(&r))
            .transpose()
        })
    }

    fn subjects_keyed_before(
        &self,
        purpose: &str,
        before: i64,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                "SELECT DISTINCT subject FROM subject_keys k WHERE purpose = $1
                 AND ((generation = (SELECT max(generation) FROM subject_keys
                                     WHERE subject = k.subject AND purpose = k.purpose)
                       AND created_at < $2)
                      OR generation < (SELECT max(generation) FROM subject_keys
                                       WHERE subject = k.subject AND purpose = k.purpose))
                 ORDER BY subject LIMIT $3",
                &[&purpose, &before, &limit(max)],
            )?
            .iter()
            .map(|r| get(r, 0))
            .collect()
        })
    }

    fn begin_rekey(&self, new_key: &SubjectKeyRow, before: i64) -> Result<bool, StoreError> {
        self.write(|tx| {
            // The subject's current key, locked: a rekey of the same subject elsewhere waits
            // here and then finds it begun.
            let current = tx
                .opt(
                    &format!(
                        "SELECT {SUBJECT_KEY_COLUMNS} FROM subject_keys
                         WHERE subject = $1 AND purpose = $2
                         ORDER BY generation DESC LIMIT 1 FOR UPDATE"
                    ),
                    &[&new_key.subject, &new_key.purpose.as_str()],
                )?
                .map(|r| subject_key_from_row(&r))
                .transpose()?;
            match current {
                Some(k) if k.created_at < before && k.generation < new_key.generation => {}
                _ => return Ok(false),
            }
            check_version_live(tx, new_key.purpose.as_str(), new_key.purpose_version)?;
            tx.exec(
                &format!(
                    "INSERT INTO subject_keys ({SUBJECT_KEY_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6)"
                ),
                &[
                    &new_key.subject,
                    &new_key.purpose.as_str(),
                    &i64::from(new_key.generation),
                    &i64::from(new_key.purpose_version),
                    &new_key.wrapped,
                    &new_key.created_at,
                ],
            )?;
            // Other nodes drop the generation they hold in memory and seal under the new one.
            bump_epoch(tx)?;
            Ok(true)
        })
    }

    fn stale_fields(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
        max: usize,
    ) -> Result<Vec<(String, FieldRow)>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT f.record_id, {} FROM fields f JOIN records r ON r.id = f.record_id
                     WHERE r.subject = $1 AND r.purpose = $2 AND f.key_gen < $3
                     ORDER BY f.record_id, f.name LIMIT $4",
                    qualified(FIELD_COLUMNS, "f")
                ),
                &[&subject, &purpose, &i64::from(generation), &limit(max)],
            )?
            .iter()
            .map(|r| Ok((get(r, 0)?, field_from_row(r, 1)?)))
            .collect()
        })
    }

    fn stale_segments(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
        max: usize,
    ) -> Result<Vec<(EvidenceRow, SegmentRow)>, StoreError> {
        let columns = qualified(EVIDENCE_COLUMNS, "e");
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {columns}, s.idx, s.key_gen, s.sealed
                     FROM evidence_segments s JOIN evidence e ON e.id = s.evidence_id
                     JOIN records r ON r.id = e.record_id
                     WHERE r.subject = $1 AND r.purpose = $2 AND e.complete AND s.key_gen < $3
                     ORDER BY s.evidence_id, s.idx LIMIT $4"
                ),
                &[&subject, &purpose, &i64::from(generation), &limit(max)],
            )?
            .iter()
            .map(|r| {
                Ok((
                    evidence_from_row(r)?,
                    SegmentRow {
                        index: get_u32(r, 13)?,
                        key_gen: get_u32(r, 14)?,
                        sealed: get(r, 15)?,
                    },
                ))
            })
            .collect()
        })
    }

    fn subject_evidence(
        &self,
        subject: &str,
        purpose: &str,
    ) -> Result<Vec<EvidenceRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE complete AND record_id IN
                     (SELECT id FROM records WHERE subject = $1 AND purpose = $2) ORDER BY id"
                ),
                &[&subject, &purpose],
            )?
            .iter()
            .map(evidence_from_row)
            .collect()
        })
    }

    fn write_resealed(&self, generation: u32, items: &[Resealed]) -> Result<u64, StoreError> {
        let generation = i64::from(generation);
        self.write_guarded(|tx| {
            let mut n = 0u64;
            for item in items {
                n += match item {
                    Resealed::Field {
                        record_id,
                        name,
                        version,
                        from,
                        sealed,
                    } => tx.exec(
                        "UPDATE fields SET sealed = $5, key_gen = $6
                         WHERE record_id = $1 AND name = $2 AND version = $3 AND key_gen = $4",
                        &[
                            record_id,
                            name,
                            version,
                            &i64::from(*from),
                            sealed,
                            &generation,
                        ],
                    )?,
                    Resealed::Segment {
                        evidence_id,
                        index,
                        from,
                        sealed,
                    } => tx.exec(
                        "UPDATE evidence_segments SET sealed = $4, key_gen = $5
                         WHERE evidence_id = $1 AND idx = $2 AND key_gen = $3",
                        &[
                            evidence_id,
                            &i64::from(*index),
                            &i64::from(*from),
                            sealed,
                            &generation,
                        ],
                    )?,
                    Resealed::FileName {
                        evidence_id,
                        from,
                        sealed,
                    } => tx.exec(
                        "UPDATE evidence SET file_name = $3 WHERE id = $1 AND file_name = $2",
                        &[evidence_id, from, sealed],
                    )?,
                };
            }
            Ok(n)
        })
    }

    fn finish_rekey(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
        files: &[String],
    ) -> Result<(), StoreError> {
        let generation = i64::from(generation);
        self.write(|tx| {
            let stale = tx.count(
                "SELECT (SELECT count(*) FROM fields f JOIN records r ON r.id = f.record_id
                         WHERE r.subject = $1 AND r.purpose = $2 AND f.key_gen < $3)
                      + (SELECT count(*) FROM evidence_segments s
                         JOIN evidence e ON e.id = s.evidence_id JOIN records r ON r.id = e.record_id
                         WHERE r.subject = $1 AND r.purpose = $2 AND e.complete
                           AND s.key_gen < $3)
                      + (SELECT count(*) FROM evidence e JOIN records r ON r.id = e.record_id
                         WHERE r.subject = $1 AND r.purpose = $2 AND e.complete
                           AND NOT (e.id = ANY($4)))",
                &[&subject, &purpose, &generation, &files],
            )?;
            if stale > 0 {
                return Err(StoreError::Stale(format!(
                    "the values of `{subject}` under older subject key generations"
                )));
            }
            tx.exec(
                "DELETE FROM subject_keys WHERE subject = $1 AND purpose = $2 AND generation < $3",
                &[&subject, &purpose, &generation],
            )?;
            // Other nodes drop the old generation they may hold in memory.
            bump_epoch(tx)
        })
    }

    fn orphan_fields(&self, purpose: &str) -> Result<u64, StoreError> {
        self.read_one(|tx| {
            tx.count(
                "SELECT (SELECT count(*) FROM fields f JOIN records r ON r.id = f.record_id
                 WHERE r.purpose = $1 AND NOT EXISTS (
                    SELECT 1 FROM subject_keys k
                    WHERE k.subject = r.subject AND k.purpose = r.purpose
                      AND k.generation = f.key_gen))
                 + (SELECT count(*) FROM evidence_segments s
                    JOIN evidence e ON e.id = s.evidence_id JOIN records r ON r.id = e.record_id
                 WHERE r.purpose = $1 AND e.complete AND NOT EXISTS (
                    SELECT 1 FROM subject_keys k
                    WHERE k.subject = r.subject AND k.purpose = r.purpose
                      AND k.generation = s.key_gen))",
                &[&purpose],
            )
        })
    }

    fn start_key_job(&self, job: &KeyJobRow) -> Result<KeyJobRow, StoreError> {
        self.write_guarded(|tx| {
            tx.exec(
                "INSERT INTO key_jobs (purpose, kind, started_at, mac) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (purpose, kind) DO NOTHING",
                &[&job.purpose, &job.kind, &job.started_at, &job.mac],
            )?;
            key_job_row(&tx.one(
                "SELECT purpose, kind, started_at, coalesce(mac, ''::BYTEA) FROM key_jobs
                 WHERE purpose = $1 AND kind = $2",
                &[&job.purpose, &job.kind],
            )?)
        })
    }

    fn finish_key_job(&self, purpose: &str, kind: &str) -> Result<(), StoreError> {
        self.write_guarded(|tx| {
            tx.exec(
                "DELETE FROM key_jobs WHERE purpose = $1 AND kind = $2",
                &[&purpose, &kind],
            )?;
            Ok(())
        })
    }

    fn key_jobs(&self) -> Result<Vec<KeyJobRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                "SELECT purpose, kind, started_at, coalesce(mac, ''::BYTEA) FROM key_jobs
                 ORDER BY purpose, kind",
                &[],
            )?
            .iter()
            .map(key_job_row)
            .collect()
        })
    }
}

fn key_job_row(r: &Row) -> Result<KeyJobRow, StoreError> {
    Ok(KeyJobRow {
        purpose: get(r, 0)?,
        kind: get(r, 1)?,
        started_at: get(r, 2)?,
        // A row of a store from before key jobs were authenticated has none.
        mac: get(r, 3)?,
    })
}

/// Inserts a subject's first key of a purpose, with the subject's anchor unless it has one, in
/// the caller's transaction: `false` when the subject already has a key of that purpose (nothing
/// inserted), `NotLive` when the key is wrapped under a version that is no longer active.
pub(super) fn insert_first_subject_key(
    tx: &mut Tx<'_>,
    row: &SubjectKeyRow,
    anchor: &AnchorRow,
) -> Result<bool, StoreError> {
    // One statement, one round trip: the purpose key version locked and checked (`NotLive`
    // unless it is the active one, as `check_version_live` does, and then nothing is
    // inserted), the subject's anchor when it has none, and the key when the subject has none
    // under the purpose.
    let found = tx.one(
        &INSERT_FIRST_KEY,
        &[
            &row.subject,
            &row.purpose.as_str(),
            &i64::from(row.generation),
            &i64::from(row.purpose_version),
            &row.wrapped,
            &row.created_at,
            &i64::from(anchor.holds),
            &i64::from(anchor.consents),
            &anchor.mac,
            &anchor.digest,
            &anchor.subject,
        ],
    )?;
    let state: Option<String> = get(&found, 0)?;
    if state.as_deref() != Some("active") {
        return Err(StoreError::NotLive {
            purpose: row.purpose.as_str().to_owned(),
            version: row.purpose_version,
        });
    }
    Ok(get::<i64>(&found, 1)? == 1)
}

/// The CTEs `live`, `anchor` and `key` of a statement that stores a subject's first key of a
/// purpose (parameters `$1` to `$6` its row, `$7` to `$11` the subject's anchor): the purpose
/// key version locked and read, the anchor stored unless the subject has one, and the key when
/// the subject has none of the purpose; nothing unless the version is the active one.
///
/// Under `READ COMMITTED` as well: the lock on the version waits for a rotation that changes
/// it and then reads the row as it committed; a first key is always generation 1, so one stored
/// meanwhile by another transaction is a conflict on the key's primary key, which stores
/// nothing here (and the caller hears that the subject has a key). What `READ COMMITTED` does
/// not see: another node storing the subject's first key, rekeying it and deleting generation 1,
/// all while this statement waits for the version's lock (behind a root rewrap). The statement
/// then stores a second key of the purpose beside the new generation; nothing is lost (its
/// record opens under it, and the next rekey takes it in).
pub(super) fn first_key_ctes() -> String {
    format!(
        "live AS (
             SELECT state FROM purpose_keys WHERE purpose = $2 AND version = $4 FOR SHARE
         ), anchor AS (
             INSERT INTO subject_anchors (subject, holds, consents, mac, digest)
             SELECT $11, $7, $8, $9, $10 WHERE EXISTS (SELECT 1 FROM live WHERE state = 'active')
             ON CONFLICT (subject) DO NOTHING
         ), key AS (
             INSERT INTO subject_keys ({SUBJECT_KEY_COLUMNS})
             SELECT $1, $2, $3, $4, $5, $6
             WHERE EXISTS (SELECT 1 FROM live WHERE state = 'active')
               AND NOT EXISTS (SELECT 1 FROM subject_keys WHERE subject = $1 AND purpose = $2)
             ON CONFLICT (subject, purpose, generation) DO NOTHING
             RETURNING 1
         )"
    )
}

/// A subject's first key of a purpose (`first_key_ctes`); the version's state and the count of
/// keys stored.
static INSERT_FIRST_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {} SELECT (SELECT state FROM live), (SELECT count(*) FROM key)",
        first_key_ctes()
    )
});
