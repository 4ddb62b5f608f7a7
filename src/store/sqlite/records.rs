//! The SQLite store: records and their fields, retention and shredding.

use super::*;
use crate::store::qualified;

impl RecordStore for SqliteStore {
    /// One writer, one group commit at a time: ids in order keep its pages together.
    fn record_ids_in_order(&self) -> bool {
        true
    }

    fn insert_record(&self, record: &RecordRow, fields: &[FieldRow]) -> Result<(), StoreError> {
        let write = RecordWrite::Insert {
            record: record.clone(),
            fields: fields.to_vec(),
        };
        let schema = Arc::clone(&self.schema);
        self.group.run(&self.writer, move |tx| {
            schema.check(tx, Scope::All)?;
            super::bump_mark(tx)?;
            make_write(tx, &write)
        })
    }

    fn insert_record_with_key(
        &self,
        key: &SubjectKeyRow,
        anchor: &AnchorRow,
        record: &RecordRow,
        fields: &[FieldRow],
    ) -> Result<(), StoreError> {
        let write = RecordWrite::InsertWithKey {
            key: key.clone(),
            anchor: anchor.clone(),
            record: record.clone(),
            fields: fields.to_vec(),
        };
        let schema = Arc::clone(&self.schema);
        self.group.run(&self.writer, move |tx| {
            schema.check(tx, Scope::All)?;
            super::bump_mark(tx)?;
            make_write(tx, &write)
        })
    }

    fn record(&self, id: &str) -> Result<Option<(RecordRow, Vec<FieldRow>)>, StoreError> {
        // One read transaction: the record and its fields from one snapshot, so that its
        // field-set MAC is checked against the fields it was written with.
        let found = self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let found = record_in(&tx, id)?;
            tx.finish()?;
            Ok(found)
        })?;
        found
            .map(|(rec, fields)| Ok((with_labels(rec)?, fields)))
            .transpose()
    }

    fn record_with_facts(&self, id: &str) -> Result<Option<Arc<RecordRead>>, StoreError> {
        // Kept from an earlier read while no commit came to the file since (`cache`); else one
        // read transaction: one snapshot, and one start of a read (which may find the page
        // cache stale) for the record and the facts of its subject.
        let looked = self.read_cached(|c, stamp| {
            if let Some(kept) = self.cache.get(id, stamp) {
                return Ok(Looked::Kept(kept));
            }
            let tx = Snapshot::begin(c)?;
            let found = match record_in(&tx, id)? {
                Some((rec, fields)) => {
                    let facts = super::lifecycle::facts_in(&tx, &rec.0.subject)?;
                    Some((rec, fields, facts))
                }
                None => None,
            };
            tx.finish()?;
            Ok(Looked::Read(found, stamp))
        })?;
        match looked {
            Looked::Kept(kept) => Ok(Some(kept)),
            Looked::Read(None, _) => Ok(None),
            Looked::Read(Some((rec, fields, facts)), stamp) => {
                let found = Arc::new(RecordRead::new(with_labels(rec)?, fields, facts));
                self.cache.put(id, stamp, &found);
                Ok(Some(found))
            }
        }
    }

    fn records(&self, ids: &[&str]) -> Result<Vec<(RecordRow, Vec<FieldRow>)>, StoreError> {
        // One read transaction for all of them: one snapshot, and one start of a read (which
        // may find the page cache stale) instead of one per record.
        let found = self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(r) = record_in(&tx, id)? {
                    found.push(r);
                }
            }
            tx.finish()?;
            Ok(found)
        })?;
        found
            .into_iter()
            .map(|(rec, fields)| Ok((with_labels(rec)?, fields)))
            .collect()
    }

    fn records_with_field(
        &self,
        ids: &[&str],
        field: &str,
    ) -> Result<Vec<RecordWithField>, StoreError> {
        let rows = self.read(|c| {
            let c = &c.unchecked_transaction()?;
            let mut record_stmt = c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1"
            ))?;
            // The value of `field` only; of the others, what checks them.
            let mut field_stmt = c.prepare_cached(
                "SELECT name, category, length(sealed), kind, mac, version, key_gen,
                        CASE WHEN name = ?2 THEN sealed END
                 FROM fields WHERE record_id = ?1 ORDER BY name",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(rec) = record_stmt.query_row([id], record_from_row).optional()? else {
                    continue;
                };
                let mut metas = Vec::new();
                let mut found = None;
                let mut rows = field_stmt.query(params![id, field])?;
                while let Some(r) = rows.next()? {
                    let size: i64 = r.get(2)?;
                    let meta = FieldMeta {
                        name: r.get(0)?,
                        category: r.get(1)?,
                        size: u64::try_from(size).unwrap_or(0),
                        evidence: None,
                        kind: Some(r.get(3)?),
                        mac: r.get(4)?,
                        version: r.get(5)?,
                    };
                    if let Some(sealed) = r.get::<_, Option<Vec<u8>>>(7)? {
                        found = Some(FieldRow {
                            name: meta.name.clone(),
                            category: meta.category,
                            kind: r.get(3)?,
                            key_gen: r.get(6)?,
                            sealed,
                            mac: meta.mac.clone(),
                            version: meta.version.clone(),
                            tags: Vec::new(),
                        });
                    }
                    metas.push(meta);
                }
                out.push((rec, metas, found));
            }
            Ok(out)
        })?;
        rows.into_iter()
            .map(|(rec, metas, found)| Ok((with_labels(rec)?, metas, found)))
            .collect()
    }

    fn update_fields(
        &self,
        id: &str,
        fields: &[FieldRow],
        updated_at: i64,
        fields_mac: FieldsMac<'_>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let replaces = {
            let mut exists = tx
                .prepare_cached("SELECT 1 FROM fields WHERE record_id = ?1 AND name = ?2")
                .map_err(db)?;
            let mut any = false;
            for f in fields {
                any |= exists.exists(params![id, f.name]).map_err(db)?;
            }
            any
        };
        if replaces
            && let Some(hold) = tx
                .query_row(HOLD_ON_RECORD, [id], |r| r.get::<_, String>(0))
                .optional()
                .map_err(db)?
        {
            return Err(StoreError::Held(hold));
        }
        let n = tx
            .execute(
                "UPDATE records SET updated_at = ?2, fields_mac = ?4 WHERE id = ?1 AND fields_mac = ?3",
                params![id, updated_at, fields_mac.prev, fields_mac.next],
            )
            .map_err(db)?;
        if n == 0 {
            let exists = tx
                .query_row("SELECT 1 FROM records WHERE id = ?1", [id], |_| Ok(()))
                .optional()
                .map_err(db)?
                .is_some();
            return if exists {
                Err(StoreError::Stale(format!("the fields of record `{id}`")))
            } else {
                Ok(false)
            };
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO fields (record_id, name, category, kind, key_gen, sealed, mac, version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (record_id, name) DO UPDATE SET
                        category = excluded.category, kind = excluded.kind,
                        key_gen = excluded.key_gen, sealed = excluded.sealed, mac = excluded.mac,
                        version = excluded.version",
                )
                .map_err(db)?;
            let (subject, purpose): (String, String) = tx
                .query_row(
                    "SELECT subject, purpose FROM records WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(db)?;
            for f in fields {
                check_key_exists(&tx, &subject, &purpose, f.key_gen)?;
                stmt.execute(params![
                    id, f.name, f.category, f.kind, f.key_gen, f.sealed, f.mac, f.version
                ])
                .map_err(db)?;
                // The replaced value's tags go with it.
                tx.prepare_cached("DELETE FROM search_tags WHERE record_id = ?1 AND field = ?2")
                    .map_err(db)?
                    .execute(params![id, f.name])
                    .map_err(db)?;
                insert_tags(&tx, id, &purpose, f)?;
            }
        }
        tx.commit().map_err(db)?;
        if replaces {
            // The replaced ciphertext was overwritten in the database pages (`secure_delete`);
            // move the log in too, so no old copy lingers there.
            self.truncate_log(&conn);
        }
        Ok(true)
    }

    fn delete_record(
        &self,
        id: &str,
        anchor: AnchorChange<'_>,
    ) -> Result<Option<bool>, StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let Some((subject, purpose)) = tx
            .query_row(
                "SELECT subject, purpose FROM records WHERE id = ?1",
                [id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(db)?
        else {
            return Ok(None);
        };
        if let Some(hold) = tx
            .query_row(HOLD_ON_RECORD, [id], |r| r.get::<_, String>(0))
            .optional()
            .map_err(db)?
        {
            return Err(StoreError::Held(hold));
        }
        if anchor.next.subject != subject {
            return Err(StoreError::Stale(format!(
                "the anchor of the subject of record `{id}`"
            )));
        }
        super::replace_anchor(&tx, anchor.prev, anchor.next)?;
        name_destroyed(&tx, &subject, [id])?;
        tx.execute("DELETE FROM fields WHERE record_id = ?1", [id])
            .map_err(db)?;
        // Evidence and its segments go with the record (foreign keys cascade), and their files
        // once this commits.
        let files = super::evidence_of(&tx, id)?;
        super::delete_record_row(&tx, id)?;
        let shredded = super::shred_when_last(&tx, &subject, purpose.as_str())?;
        tx.commit().map_err(db)?;
        self.truncate_log(&conn);
        drop(conn);
        self.files.remove(files);
        Ok(Some(shredded))
    }

    fn subject_records(
        &self,
        subject: &str,
    ) -> Result<Vec<(RecordRow, Vec<FieldMeta>)>, StoreError> {
        self.subject_records_page(subject, None, usize::MAX)
    }

    fn subject_records_page(
        &self,
        subject: &str,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<(RecordRow, Vec<FieldMeta>)>, StoreError> {
        self.serving()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (after_at, after_id) = match after {
            Some((at, id)) => (Some(at), id),
            None => (None, ""),
        };
        let rows = self.read(|c| {
            let c = &c.unchecked_transaction()?;
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE subject = ?1
                   AND (?3 IS NULL OR created_at > ?3 OR (created_at = ?3 AND id > ?4))
                 ORDER BY created_at, id LIMIT ?2"
            ))?;
            let records = stmt
                .query_map(params![subject, limit, after_at, after_id], record_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            with_field_metas_in(c, records)
        })?;
        labelled(rows)
    }

    fn record_metas(&self, ids: &[&str]) -> Result<Vec<(RecordRow, Vec<FieldMeta>)>, StoreError> {
        let rows = self.read(|c| {
            let c = &c.unchecked_transaction()?;
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1"
            ))?;
            let mut records = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(rec) = stmt.query_row([id], record_from_row).optional()? {
                    records.push(rec);
                }
            }
            with_field_metas_in(c, records)
        })?;
        labelled(rows)
    }

    fn close_record(
        &self,
        id: &str,
        closed_at: i64,
        expires_at: Option<i64>,
        mac: &[u8],
    ) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute(
                "UPDATE records SET closed_at = ?2, expires_at = ?3, updated_at = ?2, mac = ?4
                 WHERE id = ?1 AND closed_at IS NULL",
                params![id, closed_at, expires_at, mac],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn expired_records(
        &self,
        now: i64,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<RecordRow>, StoreError> {
        self.serving()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (after_at, after_id) = match after {
            Some((at, id)) => (Some(at), id),
            None => (None, ""),
        };
        let rows = self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records r
                 WHERE expires_at IS NOT NULL AND expires_at <= ?1 AND {NOT_HELD}
                   AND (?3 IS NULL OR expires_at > ?3 OR (expires_at = ?3 AND id > ?4))
                 ORDER BY expires_at, id LIMIT ?2"
            ))?
            .query_map(params![now, limit, after_at, after_id], record_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(with_labels).collect()
    }

    fn shred_records(
        &self,
        subject: &str,
        record_ids: &[String],
        anchor: AnchorChange<'_>,
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        if anchor.next.subject != subject {
            return Err(StoreError::Stale(format!(
                "the anchor of subject `{subject}`"
            )));
        }
        super::replace_anchor(&tx, anchor.prev, anchor.next)?;
        name_destroyed(&tx, subject, record_ids.iter().map(String::as_str))?;
        let mut destroyed = Vec::new();
        let mut files = Vec::new();
        let mut purposes = std::collections::BTreeSet::new();
        for id in record_ids {
            let purpose: Option<String> = tx
                .query_row(
                    "SELECT purpose FROM records WHERE id = ?1 AND subject = ?2",
                    params![id, subject],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            let Some(purpose) = purpose else { continue };
            if let Some(hold) = tx
                .query_row(HOLD_ON_RECORD, [id], |r| r.get::<_, String>(0))
                .optional()
                .map_err(db)?
            {
                return Err(StoreError::Held(hold));
            }
            tx.execute("DELETE FROM fields WHERE record_id = ?1", [id])
                .map_err(db)?;
            files.extend(super::evidence_of(&tx, id)?);
            super::delete_record_row(&tx, id)?;
            destroyed.push(id.clone());
            purposes.insert(purpose);
        }
        let mut shredded = Vec::new();
        for purpose in purposes {
            if super::shred_when_last(&tx, subject, purpose.as_str())? {
                shredded.push(purpose);
            }
        }
        tx.commit().map_err(db)?;
        // `secure_delete` overwrote the rows in the database pages; fold the WAL in and truncate
        // it so no copy of them lingers there.
        self.truncate_log(&conn);
        drop(conn);
        self.files.remove(files);
        Ok((destroyed, shredded))
    }

    fn records_page(&self, after: &str, limit: usize) -> Result<Vec<RecordRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?
            .query_map(params![after, limit], record_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(with_labels).collect()
    }

    fn find_tagged(
        &self,
        purpose: &str,
        field: &str,
        probes: &[TagRow],
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.serving()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut ids = std::collections::BTreeSet::new();
            let mut stmt = c.prepare_cached(
                "SELECT record_id FROM search_tags
                 WHERE purpose = ?1 AND field = ?2 AND version = ?3 AND bits = ?4 AND tag = ?5
                 ORDER BY record_id LIMIT ?6",
            )?;
            for p in probes {
                for id in stmt.query_map(
                    params![purpose, field, p.version, p.bits, p.tag, limit],
                    |r| r.get::<_, String>(0),
                )? {
                    ids.insert(id?);
                }
            }
            Ok(ids
                .into_iter()
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .collect())
        })
    }

    fn tagged_from(
        &self,
        purpose: &str,
        field: &str,
        from: &TagRow,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.serving()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            // Two walks of the lookup index: from the tag on, then from the start.
            let mut stmt = c.prepare_cached(
                "SELECT record_id FROM (
                     SELECT * FROM (SELECT 0 AS part, tag, record_id FROM search_tags
                         WHERE purpose = ?1 AND field = ?2 AND version = ?3 AND bits = ?4
                           AND tag >= ?5
                         ORDER BY tag, record_id LIMIT ?6)
                     UNION ALL
                     SELECT * FROM (SELECT 1 AS part, tag, record_id FROM search_tags
                         WHERE purpose = ?1 AND field = ?2 AND version = ?3 AND bits = ?4
                           AND tag < ?5
                         ORDER BY tag, record_id LIMIT ?6))
                 ORDER BY part, tag, record_id LIMIT ?6",
            )?;
            let ids = stmt
                .query_map(
                    params![purpose, field, from.version, from.bits, from.tag, limit],
                    |r| r.get::<_, String>(0),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
    }

    fn untagged_fields(
        &self,
        purpose: &str,
        field: &str,
        version: u32,
        bits: u8,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(RecordRow, FieldRow)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {}, f.name, f.category, f.kind, f.key_gen, f.sealed, f.mac, f.version
                 FROM records r JOIN fields f ON f.record_id = r.id AND f.name = ?2
                 WHERE r.purpose = ?1 AND r.id > ?5
                   AND NOT EXISTS (SELECT 1 FROM search_tags t
                                   WHERE t.record_id = r.id AND t.field = f.name
                                     AND t.version = ?3 AND t.bits = ?4)
                 ORDER BY r.id LIMIT ?6",
                qualified(RECORD_COLUMNS, "r")
            ))?
            .query_map(params![purpose, field, version, bits, after, limit], |r| {
                let rec = record_from_row(r)?;
                let at = RECORD_COLUMNS.split(',').count();
                Ok((
                    rec,
                    FieldRow {
                        name: r.get(at)?,
                        category: r.get(at + 1)?,
                        kind: r.get(at + 2)?,
                        key_gen: r.get(at + 3)?,
                        sealed: r.get(at + 4)?,
                        mac: r.get(at + 5)?,
                        version: r.get(at + 6)?,
                        tags: Vec::new(),
                    },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(rec, f)| Ok((with_labels(rec)?, f)))
            .collect()
    }

    fn write_tags(
        &self,
        record: &str,
        field: &str,
        value_version: &str,
        tags: &[TagRow],
    ) -> Result<bool, StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let purpose: Option<String> = tx
            .query_row(
                "SELECT r.purpose FROM records r JOIN fields f ON f.record_id = r.id
                 WHERE r.id = ?1 AND f.name = ?2 AND f.version = ?3",
                params![record, field, value_version],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        let Some(purpose) = purpose else {
            return Ok(false);
        };
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO search_tags (record_id, field, purpose, version, bits, tag)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (record_id, field, version) DO UPDATE SET
                    bits = excluded.bits, tag = excluded.tag",
            )
            .map_err(db)?;
        for t in tags {
            stmt.execute(params![record, field, purpose, t.version, t.bits, t.tag])
                .map_err(db)?;
        }
        drop(stmt);
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn drop_tags(&self, version: u32) -> Result<u64, StoreError> {
        let conn = self.write()?;
        let n = conn
            .execute("DELETE FROM search_tags WHERE version = ?1", [version])
            .map_err(db)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn tag_count(&self, version: u32) -> Result<u64, StoreError> {
        let n: i64 = self.read(|c| {
            c.query_row(
                "SELECT count(*) FROM search_tags WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn tag_counts(&self, version: u32) -> Result<Vec<TagCount>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT purpose, field, bits, count(*) FROM search_tags WHERE version = ?1
                 GROUP BY purpose, field, bits ORDER BY purpose, field, bits",
            )?
            .query_map([version], |r| {
                Ok(TagCount {
                    purpose: r.get(0)?,
                    field: r.get(1)?,
                    bits: r.get(2)?,
                    tags: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                })
            })?
            .collect()
        })
    }

    fn any_tags(&self) -> Result<bool, StoreError> {
        self.read(|c| {
            c.query_row("SELECT EXISTS (SELECT 1 FROM search_tags)", [], |r| {
                r.get(0)
            })
        })
    }
}

/// Stores the tags of a field value just written.
fn insert_tags(
    tx: &rusqlite::Connection,
    record: &str,
    purpose: &str,
    f: &FieldRow,
) -> Result<(), StoreError> {
    if f.tags.is_empty() {
        return Ok(());
    }
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO search_tags (record_id, field, purpose, version, bits, tag)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(db)?;
    for t in &f.tags {
        let n = stmt
            .execute(params![record, f.name, purpose, t.version, t.bits, t.tag])
            .map_err(db)?;
        super::kept(n, || format!("a search tag of field `{}`", f.name))?;
    }
    Ok(())
}

/// A record (with its labels still as stored) and all its fields, read on `c`.
#[expect(
    clippy::type_complexity,
    reason = "a record row with its labels, and its fields"
)]
fn record_in(
    c: &Connection,
    id: &str,
) -> rusqlite::Result<Option<((RecordRow, String), Vec<FieldRow>)>> {
    let Some(rec) = c
        .prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1"
        ))?
        .query_row([id], record_from_row)
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = c.prepare_cached(
        "SELECT name, category, kind, key_gen, sealed, mac, version FROM fields WHERE record_id = ?1 ORDER BY name",
    )?;
    let fields = stmt
        .query_map([id], |r| {
            Ok(FieldRow {
                name: r.get(0)?,
                category: r.get(1)?,
                kind: r.get(2)?,
                key_gen: r.get(3)?,
                sealed: r.get(4)?,
                mac: r.get(5)?,
                version: r.get(6)?,
                tags: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some((rec, fields)))
}

/// What `record_with_facts` found: a record kept from an earlier read, or what it read (labels
/// still JSON), in a snapshot begun under the stamp.
#[expect(
    clippy::large_enum_variant,
    reason = "one a read, moved once into what it answers"
)]
enum Looked {
    Kept(Arc<RecordRead>),
    Read(
        Option<((RecordRow, String), Vec<FieldRow>, SubjectFacts)>,
        u64,
    ),
}

/// Record rows as read (labels still JSON) with their field metadata, read on `c`.
type RowsWithMetas = Vec<((RecordRow, String), Vec<FieldMeta>)>;

/// `records` each with the metadata of its fields, read on `c` (in the caller's snapshot).
fn with_field_metas_in(
    c: &Connection,
    records: Vec<(RecordRow, String)>,
) -> rusqlite::Result<RowsWithMetas> {
    records
        .into_iter()
        .map(|rec| {
            let fields = field_metas_in(c, &rec.0.id)?;
            Ok((rec, fields))
        })
        .collect()
}

/// `rows` with their labels decoded.
fn labelled(rows: RowsWithMetas) -> Result<Vec<(RecordRow, Vec<FieldMeta>)>, StoreError> {
    rows.into_iter()
        .map(|(rec, fields)| Ok((with_labels(rec)?, fields)))
        .collect()
}

/// The field and evidence metadata of record `id` (no ciphertext), by name, read on `c`.
fn field_metas_in(c: &Connection, id: &str) -> rusqlite::Result<Vec<FieldMeta>> {
    let mut fields = c
        .prepare_cached(
            "SELECT name, category, length(sealed), kind, mac, version FROM fields WHERE record_id = ?1 ORDER BY name",
        )?
        .query_map([id], |r| {
            let size: i64 = r.get(2)?;
            Ok(FieldMeta {
                name: r.get(0)?,
                category: r.get(1)?,
                size: u64::try_from(size).unwrap_or(0),
                evidence: None,
                kind: r.get(3)?,
                mac: r.get(4)?,
                version: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    fields.extend(
        c.prepare_cached(&format!(
            "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE record_id = ?1"
        ))?
        .query_map([id], evidence_from_row)?
        .map(|e| e.map(FieldMeta::of_evidence))
        .collect::<rusqlite::Result<Vec<_>>>()?,
    );
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(fields)
}

/// Makes `write` in the transaction `tx` (a grouped write's savepoint, or the savepoint of an
/// audit append that carries it).
pub(super) fn make_write(tx: &Connection, write: &RecordWrite) -> Result<(), StoreError> {
    match write {
        RecordWrite::Insert { record, fields } => insert_record_in(tx, record, fields),
        RecordWrite::InsertWithKey {
            key,
            anchor,
            record,
            fields,
        } => {
            if !super::keys::insert_first_subject_key(tx, key, anchor)? {
                return Err(StoreError::first_key_taken(key.purpose));
            }
            insert_record_in(tx, record, fields)
        }
    }
}

/// Inserts a record and its fields (with their search tags) in the caller's transaction.
fn insert_record_in(
    tx: &Connection,
    record: &RecordRow,
    fields: &[FieldRow],
) -> Result<(), StoreError> {
    insert_record_row(tx, record)?;
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO fields (record_id, name, category, kind, key_gen, sealed, mac, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(db)?;
    let mut checked = None;
    for f in fields {
        // The fields of one write are sealed under one generation: checked once.
        if checked != Some(f.key_gen) {
            check_key_exists(tx, &record.subject, record.purpose.as_str(), f.key_gen)?;
            checked = Some(f.key_gen);
        }
        stmt.execute(params![
            record.id, f.name, f.category, f.kind, f.key_gen, f.sealed, f.mac, f.version
        ])
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Exists(format!("field `{}`", f.name))
            } else {
                db(e)
            }
        })
        .and_then(|n| super::kept(n, || format!("field `{}`", f.name)))?;
        insert_tags(tx, &record.id, record.purpose.as_str(), f)?;
    }
    Ok(())
}

/// Names `ids` destroyed records of `subject` (`SubjectFacts::destroyed`), in the caller's
/// transaction.
fn name_destroyed<'a>(
    tx: &Connection,
    subject: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO destroyed_records (subject, record_id) VALUES (?1, ?2)
             ON CONFLICT DO NOTHING",
        )
        .map_err(db)?;
    for id in ids {
        stmt.execute(params![subject, id]).map_err(db)?;
    }
    Ok(())
}
