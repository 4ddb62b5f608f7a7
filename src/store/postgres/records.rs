//! The PostgreSQL store: records and their fields, retention and shredding.

use super::*;
use crate::store::RecordRead;
use std::sync::Arc;

/// How many columns `RECORD_COLUMNS` names.
const RECORD_WIDTH: usize = 10;

/// How many columns `FIELD_COLUMNS` names.
const FIELD_WIDTH: usize = 7;

const INSERT_FIELD: &str = "INSERT INTO fields
    (record_id, name, category, kind, key_gen, sealed, mac, version)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// The statement `find_tagged` reads the candidates of `FindRecords` with: one index lookup per
/// probe on all five columns of `search_tags_lookup`. The subquery's LIMIT keeps the planner from
/// folding it into one join, which with statistics that lag behind the table (after a bulk load,
/// before autovacuum's analyze) it planned as a walk over every tag of the field with the probes
/// as a filter: about 10 ms at 5,000 records, where the lookups take microseconds. Each probe
/// gives its first `limit` records in id order (the index ends with `record_id`), so the first
/// `limit` of them all are among them.
/// `tests/it/postgres.rs` checks its plan on a table the planner has no statistics of.
/// The probes are taken by their places (`generate_subscripts`), as the ids of
/// `RECORDS_WITH_FACTS`, so that it is planned once for any number of them: with `unnest` it was
/// planned again at every call.
pub const FIND_TAGGED: &str = "SELECT DISTINCT h.record_id
    FROM generate_subscripts($5::BIGINT[], 1) AS p (i)
    CROSS JOIN LATERAL (
        SELECT t.record_id FROM search_tags t
        WHERE t.purpose = $1 AND t.field = $2 AND t.version = ($3::BIGINT[])[p.i]
          AND t.bits = ($4::BIGINT[])[p.i] AND t.tag = ($5::BIGINT[])[p.i]
        ORDER BY t.record_id LIMIT $6
    ) h
    ORDER BY h.record_id LIMIT $6";

/// The decoys' walk (`RecordStore::tagged_from`): two walks of the lookup index, from the tag
/// on, then from the start, each of at most `LIMIT` tags. The limit is written into the
/// statement as a number (`tagged_from_statement`), not passed as a parameter: for a limit it
/// does not know, PostgreSQL costs the generic plan as reading a tenth of the walk's rows, so
/// that every custom plan looked cheaper and it planned the walk again at every find (105 µs).
/// A find always asks for the same number, so this is one statement.
/// `tests/it/postgres.rs` checks its plans.
const TAGGED_FROM: &str = "SELECT record_id FROM (
        (SELECT 0 AS part, tag, record_id FROM search_tags
         WHERE purpose = $1 AND field = $2 AND version = $3 AND bits = $4
           AND tag >= $5
         ORDER BY tag, record_id LIMIT $6)
        UNION ALL
        (SELECT 1 AS part, tag, record_id FROM search_tags
         WHERE purpose = $1 AND field = $2 AND version = $3 AND bits = $4
           AND tag < $5
         ORDER BY tag, record_id LIMIT $6)
    ) s
    ORDER BY part, tag, record_id LIMIT $6";

/// `TAGGED_FROM` for at most `limit` ids: its parameters are `$1` to `$5`.
pub fn tagged_from_statement(limit: usize) -> String {
    TAGGED_FROM.replace("LIMIT $6", &format!("LIMIT {limit}"))
}

/// How many columns a row of `FACTS` has.
const FACTS_WIDTH: usize = 14;

/// The kind (first column) of the rows of `RECORD_WITH_FACTS` that carry the record and a
/// field; the others are rows of `FACTS`.
const RECORD_KIND: i16 = 6;

/// Records with their fields and the facts of their subjects, in one statement, for the ids of
/// the array `$1` (an id as often as it is named). Each row starts with the 1-based place of
/// its id in the array; then, for each id, the rows of `FACTS` about the subject its record
/// names (each followed by empty record and field columns) and a row of kind `RECORD_KIND` per
/// field (one with empty field columns when it has none) after as many empty columns as
/// `FACTS` has; an id without a record, no rows of that kind. In the order of the array.
/// Every table is read through an index on the id or the subject, whatever the statistics and
/// the plan (generic or not): the subject is one lookup per id in a subquery kept apart from
/// the rest (`OFFSET 0`). The ids are taken by their places (`generate_subscripts`), of which
/// the planner knows no count, so that it plans once for any number of them: with `unnest`,
/// whose count it reads from the array at hand, it planned the statement again at every call
/// (a generic plan for an unknown count never looked as cheap as a plan for one id), which
/// cost a lone read twice PostgreSQL's CPU. `tests/it/postgres.rs` checks its plans.
pub static RECORDS_WITH_FACTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let facts = super::lifecycle::FACTS
        .trim_end()
        .trim_end_matches("ORDER BY 1, 14")
        .replace("$1", "q.subject");
    let empty = |n: usize| vec!["NULL"; n].join(", ");
    format!(
        "SELECT q.i, x.* FROM (
             SELECT i,
                    (SELECT r0.subject FROM records r0
                      WHERE r0.id = ($1::TEXT[])[i] COLLATE \"C\") subject,
                    ($1::TEXT[])[i] COLLATE \"C\" id
             FROM generate_subscripts($1::TEXT[], 1) AS i
             OFFSET 0
         ) q
         CROSS JOIN LATERAL (
             SELECT f.*, {after_facts} FROM ({facts}) f
             UNION ALL
             SELECT {RECORD_KIND}::SMALLINT, {before_record}, {}, {}
               FROM records r LEFT JOIN fields fl ON fl.record_id = r.id
              WHERE r.id = q.id COLLATE \"C\"
         ) x
         ORDER BY 1, 2, 15, {field_name}",
        qualified(RECORD_COLUMNS, "r"),
        qualified(FIELD_COLUMNS, "fl"),
        after_facts = empty(RECORD_WIDTH + FIELD_WIDTH),
        before_record = empty(FACTS_WIDTH - 1),
        field_name = 1 + FACTS_WIDTH + RECORD_WIDTH + 1,
    )
});

/// The ids of the array `$1`, each once, as `q.id`: taken by their places, so that a statement
/// is planned once for any number of them (as `RECORDS_WITH_FACTS`), and kept apart from the
/// rest (`OFFSET 0`).
const IDS: &str = "(SELECT DISTINCT ($1::TEXT[])[i] COLLATE \"C\" AS id
                    FROM generate_subscripts($1::TEXT[], 1) AS i OFFSET 0) q";

/// Records with their fields, for the ids of the array `$1` (`RecordStore::records`): a row
/// per field (one with empty field columns for a record without any), by id and field name.
/// Each record is one lookup by its id whatever the plan: the subquery is kept from being
/// folded into a join (`OFFSET 0`). `tests/it/postgres.rs` checks its plans.
pub static RECORDS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT x.* FROM {IDS} CROSS JOIN LATERAL (
             SELECT {}, {} FROM records r LEFT JOIN fields f ON f.record_id = r.id
             WHERE r.id = q.id OFFSET 0
         ) x
         ORDER BY 1, {}",
        qualified(RECORD_COLUMNS, "r"),
        qualified(FIELD_COLUMNS, "f"),
        RECORD_WIDTH + 1,
    )
});

/// As `RECORDS`, with the value of the field `$2` only; of the others, what checks them
/// (`RecordStore::records_with_field`).
pub static RECORDS_WITH_FIELD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT x.* FROM {IDS} CROSS JOIN LATERAL (
             SELECT {}, f.name, f.category, octet_length(f.sealed)::BIGINT, f.kind,
                    f.mac, f.version, f.key_gen, CASE WHEN f.name = $2 THEN f.sealed END
             FROM records r LEFT JOIN fields f ON f.record_id = r.id
             WHERE r.id = q.id OFFSET 0
         ) x
         ORDER BY 1, {}",
        qualified(RECORD_COLUMNS, "r"),
        RECORD_WIDTH + 1,
    )
});

/// A record with its fields and the facts of its subject.
pub(super) type RecordWithFacts = (RecordRow, Vec<FieldRow>, SubjectFacts);

/// Reads the records of `ids` with their fields and facts in one statement
/// (`RECORDS_WITH_FACTS`): one answer per id, in their order. A row that cannot be read fails
/// the answer of its id alone.
fn records_with_facts(
    tx: &mut Tx<'_>,
    ids: &[&str],
) -> Result<Vec<group::Answer<RecordWithFacts>>, StoreError> {
    type Found = (Option<(RecordRow, Vec<FieldRow>)>, SubjectFacts);
    let mut answers: Vec<Result<Found, StoreError>> =
        (0..ids.len()).map(|_| Ok(Default::default())).collect();
    for row in tx.all(&RECORDS_WITH_FACTS, &[&ids])? {
        let answer = super::at_place(&mut answers, &row, "read")?;
        if let Ok((found, facts)) = answer
            && let Err(e) = add_row(found, facts, &row)
        {
            *answer = Err(e);
        }
    }
    Ok(answers
        .into_iter()
        .map(|answer| {
            answer.map(|(found, facts)| found.map(|(record, fields)| (record, fields, facts)))
        })
        .collect())
}

/// Adds a row of `RECORDS_WITH_FACTS` to what was read for its id.
fn add_row(
    found: &mut Option<(RecordRow, Vec<FieldRow>)>,
    facts: &mut SubjectFacts,
    row: &Row,
) -> Result<(), StoreError> {
    if get::<i16>(row, 1)? != RECORD_KIND {
        return super::lifecycle::add_fact(facts, row, 1);
    }
    let (_, fields) = match found {
        Some(f) => f,
        None => found.insert((record_from_row_at(row, 1 + FACTS_WIDTH)?, Vec::new())),
    };
    if get::<Option<String>>(row, 1 + FACTS_WIDTH + RECORD_WIDTH)?.is_some() {
        fields.push(field_from_row(row, 1 + FACTS_WIDTH + RECORD_WIDTH)?);
    }
    Ok(())
}

impl RecordStore for PgStore {
    fn insert_record(&self, record: &RecordRow, fields: &[FieldRow]) -> Result<(), StoreError> {
        self.write(|tx| insert_record_in(tx, record, fields, None))
    }

    fn insert_record_with_key(
        &self,
        key: &SubjectKeyRow,
        anchor: &AnchorRow,
        record: &RecordRow,
        fields: &[FieldRow],
    ) -> Result<(), StoreError> {
        // The key and the record in one statement, when every field is sealed under that key
        // (as the vault writes them).
        let under_key = key.subject == record.subject
            && key.purpose == record.purpose
            && fields.iter().all(|f| f.key_gen == key.generation);
        // The one statement guards itself (`first_key_ctes`, and the record's unique id), so
        // it runs under `READ COMMITTED`: under `SERIALIZABLE` the predicate locks of a new
        // subject's reads conflict with other new subjects' writes on the same index pages, and
        // a third of the writes at 64 clients were run again. A field under another key
        // generation is checked to exist, which only `SERIALIZABLE` keeps true until commit (a
        // rekey deleting it meanwhile).
        if under_key {
            return self.write_guarded(|tx| {
                if !insert_record_with_first_key(tx, key, anchor, record, fields)? {
                    return Err(StoreError::first_key_taken(key.purpose));
                }
                Ok(())
            });
        }
        self.write(|tx| {
            let stored = super::keys::insert_first_subject_key(tx, key, anchor)?
                && insert_record_in(tx, record, fields, Some(key)).map(|()| true)?;
            if !stored {
                return Err(StoreError::first_key_taken(key.purpose));
            }
            Ok(())
        })
    }

    fn record(&self, id: &str) -> Result<Option<(RecordRow, Vec<FieldRow>)>, StoreError> {
        // One statement, so one snapshot (the field-set MAC is checked against the fields it
        // was written with) and one round trip: the record on every row, a field on each.
        self.read_one(|tx| {
            let rows = tx.all(
                &format!(
                    "SELECT {}, {} FROM records r LEFT JOIN fields f ON f.record_id = r.id
                     WHERE r.id = $1 ORDER BY f.name",
                    qualified(RECORD_COLUMNS, "r"),
                    qualified(FIELD_COLUMNS, "f")
                ),
                &[&id],
            )?;
            let Some(first) = rows.first() else {
                return Ok(None);
            };
            let rec = record_from_row(first)?;
            let mut fields = Vec::with_capacity(rows.len());
            for r in &rows {
                if get::<Option<String>>(r, RECORD_WIDTH)?.is_some() {
                    fields.push(field_from_row(r, RECORD_WIDTH)?);
                }
            }
            Ok(Some((rec, fields)))
        })
    }

    fn record_with_facts(&self, id: &str) -> Result<Option<Arc<RecordRead>>, StoreError> {
        // One statement for this read and those that arrive while others run (see
        // `group::ReadGroup`): one snapshot for each, and one round trip for all of them.
        Ok(self
            .record_reads
            .read(id, |ids| self.read_one(|tx| records_with_facts(tx, ids)))?
            .map(|(record, fields, facts)| Arc::new(RecordRead::new(record, fields, facts))))
    }

    fn records(&self, ids: &[&str]) -> Result<Vec<(RecordRow, Vec<FieldRow>)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for all of them: one snapshot and one round trip, not one per record.
        let wanted: Vec<&str> = ids.to_vec();
        let rows = self.read_one(|tx| tx.all(&RECORDS, &[&wanted]))?;
        let mut found: HashMap<String, (RecordRow, Vec<FieldRow>)> =
            HashMap::with_capacity(ids.len());
        for r in &rows {
            let id: String = get(r, 0)?;
            if !found.contains_key(&id) {
                found.insert(id.clone(), (record_from_row(r)?, Vec::new()));
            }
            if get::<Option<String>>(r, RECORD_WIDTH)?.is_some()
                && let Some((_, fields)) = found.get_mut(&id)
            {
                fields.push(field_from_row(r, RECORD_WIDTH)?);
            }
        }
        // In the order of `ids`, as often as each is named.
        Ok(ids
            .iter()
            .filter_map(|id| found.get(*id).cloned())
            .collect())
    }

    fn records_with_field(
        &self,
        ids: &[&str],
        field: &str,
    ) -> Result<Vec<RecordWithField>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One statement, as `records`: the value of `field` only; of the others, what checks
        // them.
        let wanted: Vec<&str> = ids.to_vec();
        let rows = self.read_one(|tx| tx.all(&RECORDS_WITH_FIELD, &[&wanted, &field]))?;
        let mut found: HashMap<String, RecordWithField> = HashMap::with_capacity(ids.len());
        for r in &rows {
            let id: String = get(r, 0)?;
            if !found.contains_key(&id) {
                found.insert(id.clone(), (record_from_row(r)?, Vec::new(), None));
            }
            let at = RECORD_WIDTH;
            if get::<Option<String>>(r, at)?.is_none() {
                continue;
            }
            let meta = FieldMeta {
                name: get(r, at)?,
                category: get_named(r, at + 1, "category")?,
                size: get_u64(r, at + 2)?,
                evidence: None,
                kind: Some(get_named(r, at + 3, "field kind")?),
                mac: get(r, at + 4)?,
                version: get(r, at + 5)?,
            };
            let Some((_, metas, value)) = found.get_mut(&id) else {
                continue;
            };
            if let Some(sealed) = get::<Option<Vec<u8>>>(r, at + 7)? {
                *value = Some(FieldRow {
                    name: meta.name.clone(),
                    category: meta.category,
                    kind: get_named(r, at + 3, "field kind")?,
                    key_gen: get_u32(r, at + 6)?,
                    sealed,
                    mac: meta.mac.clone(),
                    version: meta.version.clone(),
                    tags: Vec::new(),
                });
            }
            metas.push(meta);
        }
        // In the order of `ids`, as often as each is named.
        Ok(ids
            .iter()
            .filter_map(|id| found.get(*id).cloned())
            .collect())
    }

    fn update_fields(
        &self,
        id: &str,
        fields: &[FieldRow],
        updated_at: i64,
        fields_mac: FieldsMac<'_>,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let mut replaces = false;
            for f in fields {
                replaces |= tx
                    .opt(
                        "SELECT 1 FROM fields WHERE record_id = $1 AND name = $2",
                        &[&id, &f.name],
                    )?
                    .is_some();
            }
            if replaces && let Some(hold) = tx.opt(HOLD_ON_RECORD, &[&id])? {
                return Err(StoreError::Held(get(&hold, 0)?));
            }
            let n = tx.exec(
                "UPDATE records SET updated_at = $2, fields_mac = $4
                 WHERE id = $1 AND fields_mac = $3",
                &[&id, &updated_at, &fields_mac.prev, &fields_mac.next],
            )?;
            let Some(found) =
                tx.opt("SELECT subject, purpose FROM records WHERE id = $1", &[&id])?
            else {
                return Ok(false);
            };
            if n == 0 {
                return Err(StoreError::Stale(format!("the fields of record `{id}`")));
            }
            let subject: String = get(&found, 0)?;
            let purpose: String = get(&found, 1)?;
            for f in fields {
                check_key_exists(tx, &subject, &purpose, f.key_gen)?;
                tx.exec(
                    &format!(
                        "{INSERT_FIELD} ON CONFLICT (record_id, name) DO UPDATE SET
                            category = excluded.category, kind = excluded.kind,
                            key_gen = excluded.key_gen, sealed = excluded.sealed,
                            mac = excluded.mac, version = excluded.version"
                    ),
                    &[
                        &id,
                        &f.name,
                        &f.category.as_str(),
                        &f.kind.as_str(),
                        &i64::from(f.key_gen),
                        &f.sealed,
                        &f.mac,
                        &f.version,
                    ],
                )?;
                // The replaced value's tags go with it.
                tx.exec(
                    "DELETE FROM search_tags WHERE record_id = $1 AND field = $2",
                    &[&id, &f.name],
                )?;
                insert_tags(tx, id, &purpose, f)?;
            }
            Ok(true)
        })
    }

    fn delete_record(
        &self,
        id: &str,
        anchor: AnchorChange<'_>,
    ) -> Result<Option<bool>, StoreError> {
        self.write(|tx| {
            let Some(found) = tx.opt(
                "SELECT subject, purpose FROM records WHERE id = $1 FOR UPDATE",
                &[&id],
            )?
            else {
                return Ok(None);
            };
            let subject: String = get(&found, 0)?;
            let purpose: String = get(&found, 1)?;
            if let Some(hold) = tx.opt(HOLD_ON_RECORD, &[&id])? {
                return Err(StoreError::Held(get(&hold, 0)?));
            }
            if anchor.next.subject != subject {
                return Err(StoreError::Stale(format!(
                    "the anchor of the subject of record `{id}`"
                )));
            }
            replace_anchor(tx, anchor.prev, anchor.next)?;
            name_destroyed(tx, &subject, [id])?;
            // Fields, evidence and its segments go with the record (foreign keys cascade).
            tx.exec("DELETE FROM records WHERE id = $1", &[&id])?;
            let shredded = shred_when_last(tx, &subject, &purpose)?;
            if shredded {
                // Other nodes drop the shredded key they may hold in memory.
                bump_epoch(tx)?;
            }
            Ok(Some(shredded))
        })
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
        max: usize,
    ) -> Result<Vec<(RecordRow, Vec<FieldMeta>)>, StoreError> {
        let (after_at, after_id) = match after {
            Some((at, id)) => (Some(at), id),
            None => (None, ""),
        };
        self.read(|tx| {
            let records = tx
                .all(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM records WHERE subject = $1
                           AND ($3::BIGINT IS NULL OR created_at > $3
                                OR (created_at = $3 AND id > $4))
                         ORDER BY created_at, id LIMIT $2"
                    ),
                    &[&subject, &limit(max), &after_at, &after_id],
                )?
                .iter()
                .map(record_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            records
                .into_iter()
                .map(|rec| {
                    let fields = field_metas(tx, &rec.id)?;
                    Ok((rec, fields))
                })
                .collect()
        })
    }

    fn record_metas(&self, ids: &[&str]) -> Result<Vec<(RecordRow, Vec<FieldMeta>)>, StoreError> {
        // One snapshot for all of them, as on SQLite.
        self.read(|tx| {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(row) = tx.opt(
                    &format!("SELECT {RECORD_COLUMNS} FROM records WHERE id = $1"),
                    &[id],
                )?
                else {
                    continue;
                };
                let rec = record_from_row(&row)?;
                let fields = field_metas(tx, &rec.id)?;
                out.push((rec, fields));
            }
            Ok(out)
        })
    }

    fn close_record(
        &self,
        id: &str,
        closed_at: i64,
        expires_at: Option<i64>,
        mac: &[u8],
    ) -> Result<bool, StoreError> {
        self.write_guarded(|tx| {
            Ok(tx.exec(
                "UPDATE records SET closed_at = $2, expires_at = $3, updated_at = $2, mac = $4
                 WHERE id = $1 AND closed_at IS NULL",
                &[&id, &closed_at, &expires_at, &mac],
            )? > 0)
        })
    }

    fn expired_records(
        &self,
        now: i64,
        after: Option<(i64, &str)>,
        max: usize,
    ) -> Result<Vec<RecordRow>, StoreError> {
        let (after_at, after_id) = match after {
            Some((at, id)) => (Some(at), id),
            None => (None, ""),
        };
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM records r
                     WHERE expires_at IS NOT NULL AND expires_at <= $1 AND {NOT_HELD}
                       AND ($3::BIGINT IS NULL OR expires_at > $3
                            OR (expires_at = $3 AND id > $4))
                     ORDER BY expires_at, id LIMIT $2"
                ),
                &[&now, &limit(max), &after_at, &after_id],
            )?
            .iter()
            .map(record_from_row)
            .collect()
        })
    }

    fn shred_records(
        &self,
        subject: &str,
        record_ids: &[String],
        anchor: AnchorChange<'_>,
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        self.write(|tx| {
            if anchor.next.subject != subject {
                return Err(StoreError::Stale(format!(
                    "the anchor of subject `{subject}`"
                )));
            }
            replace_anchor(tx, anchor.prev, anchor.next)?;
            name_destroyed(tx, subject, record_ids.iter().map(String::as_str))?;
            let mut destroyed = Vec::new();
            let mut purposes = std::collections::BTreeSet::new();
            for id in record_ids {
                let Some(found) = tx.opt(
                    "SELECT purpose FROM records WHERE id = $1 AND subject = $2 FOR UPDATE",
                    &[id, &subject],
                )?
                else {
                    continue;
                };
                if let Some(hold) = tx.opt(HOLD_ON_RECORD, &[id])? {
                    return Err(StoreError::Held(get(&hold, 0)?));
                }
                let purpose: String = get(&found, 0)?;
                tx.exec("DELETE FROM records WHERE id = $1", &[id])?;
                destroyed.push(id.clone());
                purposes.insert(purpose);
            }
            let mut shredded = Vec::new();
            for purpose in purposes {
                if shred_when_last(tx, subject, &purpose)? {
                    shredded.push(purpose);
                }
            }
            if !shredded.is_empty() {
                bump_epoch(tx)?;
            }
            Ok((destroyed, shredded))
        })
    }

    fn records_page(&self, after: &str, max: usize) -> Result<Vec<RecordRow>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                &format!("SELECT {RECORD_COLUMNS} FROM records WHERE id > $1 ORDER BY id LIMIT $2"),
                &[&after, &limit(max)],
            )?
            .iter()
            .map(record_from_row)
            .collect()
        })
    }

    fn find_tagged(
        &self,
        purpose: &str,
        field: &str,
        probes: &[TagRow],
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let versions: Vec<i64> = probes.iter().map(|p| i64::from(p.version)).collect();
        let bits: Vec<i64> = probes.iter().map(|p| i64::from(p.bits)).collect();
        let tags: Vec<i64> = probes.iter().map(|p| p.tag).collect();
        self.read_one(|tx| {
            tx.all(
                FIND_TAGGED,
                &[&purpose, &field, &versions, &bits, &tags, &limit],
            )?
            .iter()
            .map(|r| get(r, 0))
            .collect()
        })
    }

    fn tagged_from(
        &self,
        purpose: &str,
        field: &str,
        from: &TagRow,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (version, bits) = (i64::from(from.version), i64::from(from.bits));
        let sql = tagged_from_statement(limit);
        self.read_one(|tx| {
            tx.all(&sql, &[&purpose, &field, &version, &bits, &from.tag])?
                .iter()
                .map(|r| get(r, 0))
                .collect()
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
        self.read_one(|tx| {
            tx.all(
                &format!(
                    "SELECT {}, {} FROM records r
                     JOIN fields f ON f.record_id = r.id AND f.name = $2
                     WHERE r.purpose = $1 AND r.id > $5
                       AND NOT EXISTS (SELECT 1 FROM search_tags t
                                       WHERE t.record_id = r.id AND t.field = f.name
                                         AND t.version = $3 AND t.bits = $4)
                     ORDER BY r.id LIMIT $6",
                    qualified(RECORD_COLUMNS, "r"),
                    qualified(FIELD_COLUMNS, "f")
                ),
                &[
                    &purpose,
                    &field,
                    &i64::from(version),
                    &i64::from(bits),
                    &after,
                    &limit,
                ],
            )?
            .iter()
            .map(|r| Ok((record_from_row(r)?, field_from_row(r, RECORD_WIDTH)?)))
            .collect()
        })
    }

    fn write_tags(
        &self,
        record: &str,
        field: &str,
        value_version: &str,
        tags: &[TagRow],
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let Some(found) = tx.opt(
                "SELECT r.purpose FROM records r JOIN fields f ON f.record_id = r.id
                 WHERE r.id = $1 AND f.name = $2 AND f.version = $3 FOR UPDATE OF f",
                &[&record, &field, &value_version],
            )?
            else {
                return Ok(false);
            };
            let purpose: String = get(&found, 0)?;
            for t in tags {
                tx.exec(
                    "INSERT INTO search_tags (record_id, field, purpose, version, bits, tag)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (record_id, field, version) DO UPDATE SET
                        bits = excluded.bits, tag = excluded.tag",
                    &[
                        &record,
                        &field,
                        &purpose,
                        &i64::from(t.version),
                        &i64::from(t.bits),
                        &t.tag,
                    ],
                )?;
            }
            Ok(true)
        })
    }

    fn drop_tags(&self, version: u32) -> Result<u64, StoreError> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM search_tags WHERE version = $1",
                &[&i64::from(version)],
            )
        })
    }

    fn tag_count(&self, version: u32) -> Result<u64, StoreError> {
        self.read_one(|tx| {
            let row = tx.one(
                "SELECT count(*) FROM search_tags WHERE version = $1",
                &[&i64::from(version)],
            )?;
            let n: i64 = get(&row, 0)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn tag_counts(&self, version: u32) -> Result<Vec<TagCount>, StoreError> {
        self.read_one(|tx| {
            tx.all(
                "SELECT purpose, field, bits, count(*) FROM search_tags WHERE version = $1
                 GROUP BY purpose, field, bits ORDER BY purpose, field, bits",
                &[&i64::from(version)],
            )?
            .iter()
            .map(|r| {
                let bits: i64 = get(r, 2)?;
                let tags: i64 = get(r, 3)?;
                Ok(TagCount {
                    purpose: get(r, 0)?,
                    field: get(r, 1)?,
                    bits: u8::try_from(bits)
                        .map_err(|_| StoreError::Corrupt(format!("tag width {bits}")))?,
                    tags: u64::try_from(tags).unwrap_or(0),
                })
            })
            .collect()
        })
    }

    fn any_tags(&self) -> Result<bool, StoreError> {
        self.read_one(|tx| {
            let row = tx.one("SELECT EXISTS (SELECT 1 FROM search_tags)", &[])?;
            get(&row, 0)
        })
    }
}

/// Stores the tags of a field value just written.
fn insert_tags(
    tx: &mut Tx<'_>,
    record: &str,
    purpose: &str,
    f: &FieldRow,
) -> Result<(), StoreError> {
    for t in &f.tags {
        tx.exec(
            "INSERT INTO search_tags (record_id, field, purpose, version, bits, tag)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &record,
                &f.name,
                &purpose,
                &i64::from(t.version),
                &i64::from(t.bits),
                &t.tag,
            ],
        )?;
    }
    Ok(())
}

/// The field and evidence metadata of record `id` (no ciphertext), by name, read in `tx`.
fn field_metas(tx: &mut Tx<'_>, id: &str) -> Result<Vec<FieldMeta>, StoreError> {
    let mut fields = tx
        .all(
            "SELECT name, category, octet_length(sealed)::BIGINT, kind, mac, version
             FROM fields WHERE record_id = $1 ORDER BY name",
            &[&id],
        )?
        .iter()
        .map(|r| {
            Ok(FieldMeta {
                name: get(r, 0)?,
                category: get_named(r, 1, "category")?,
                size: get_u64(r, 2)?,
                evidence: None,
                kind: Some(get_named(r, 3, "field kind")?),
                mac: get(r, 4)?,
                version: get(r, 5)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    for r in tx.all(
        &format!("SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE record_id = $1"),
        &[&id],
    )? {
        fields.push(FieldMeta::of_evidence(evidence_from_row(&r)?));
    }
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(fields)
}

/// Inserts a record and its fields (with their search tags) in the caller's transaction, each
/// field sealed under a subject key generation that must be stored; `inserted` is the key this
/// transaction stored itself (its generation is not looked up again when it is the record's
/// subject's and purpose's).
fn insert_record_in(
    tx: &mut Tx<'_>,
    record: &RecordRow,
    fields: &[FieldRow],
    inserted: Option<&SubjectKeyRow>,
) -> Result<(), StoreError> {
    let mut checked = inserted
        .filter(|k| k.subject == record.subject && k.purpose == record.purpose)
        .map(|k| k.generation);
    for f in fields {
        if checked != Some(f.key_gen) {
            check_key_exists(tx, &record.subject, record.purpose.as_str(), f.key_gen)?;
            checked = Some(f.key_gen);
        }
    }
    // The record, its fields and their search tags in one statement: one round trip, not
    // three. Each part runs after the one before it (it reads what that one stored), and what
    // each stored is counted, so that a row the database dropped (a trigger someone added)
    // fails the write as `Tx::insert` does.
    let insert = RecordInsert::new(record, fields)?;
    let mut params = Vec::with_capacity(RECORD_INSERT_PARAMS);
    insert.params(&mut params);
    let stored = tx.insert_returning(&INSERT_RECORD_WITH_FIELDS, &params, |t| insert.names(t))?;
    insert.check([get(&stored, 0)?, get(&stored, 1)?, get(&stored, 2)?])
}

/// Inserts a subject's first key of the record's purpose, with the subject's anchor unless it
/// has one, and the record (its fields sealed under that key) in one statement, in the
/// caller's transaction: as `keys::insert_first_subject_key` and then `insert_record_in`, one
/// round trip where those take two. Returns false, storing nothing, when the subject has a key
/// of the purpose already.
fn insert_record_with_first_key(
    tx: &mut Tx<'_>,
    key: &SubjectKeyRow,
    anchor: &AnchorRow,
    record: &RecordRow,
    fields: &[FieldRow],
) -> Result<bool, StoreError> {
    let insert = RecordInsert::new(record, fields)?;
    let generation = i64::from(key.generation);
    let purpose_version = i64::from(key.purpose_version);
    let (holds, consents) = (i64::from(anchor.holds), i64::from(anchor.consents));
    let purpose = key.purpose.as_str();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(11 + RECORD_INSERT_PARAMS);
    params.extend_from_slice(&[
        &key.subject,
        &purpose,
        &generation,
        &purpose_version,
        &key.wrapped,
        &key.created_at,
        &holds,
        &consents,
        &anchor.mac,
        &anchor.digest,
        &anchor.subject,
    ]);
    insert.params(&mut params);
    let stored =
        tx.insert_returning(&INSERT_RECORD_WITH_FIRST_KEY, &params, |t| insert.names(t))?;
    let state: Option<String> = get(&stored, 0)?;
    if state.as_deref() != Some("active") {
        return Err(StoreError::NotLive {
            purpose: key.purpose.as_str().to_owned(),
            version: key.purpose_version,
        });
    }
    if get::<i64>(&stored, 1)? != 1 {
        return Ok(false);
    }
    insert.check([get(&stored, 2)?, get(&stored, 3)?, get(&stored, 4)?])?;
    Ok(true)
}

/// How many parameters `RecordInsert::params` adds.
const RECORD_INSERT_PARAMS: usize = 21;

/// The parameters of an insert of a record, its fields and their search tags
/// (`record_ctes`), and the check of what it stored.
struct RecordInsert<'a> {
    record: &'a RecordRow,
    as_stored: (&'static str, String),
    names: Vec<&'a str>,
    categories: Vec<&'a str>,
    kinds: Vec<&'a str>,
    key_gens: Vec<i64>,
    sealed: Vec<&'a [u8]>,
    macs: Vec<&'a [u8]>,
    versions: Vec<&'a str>,
    tag_fields: Vec<&'a str>,
    tag_versions: Vec<i64>,
    tag_bits: Vec<i64>,
    tags: Vec<i64>,
}

impl<'a> RecordInsert<'a> {
    fn new(record: &'a RecordRow, fields: &'a [FieldRow]) -> Result<Self, StoreError> {
        let tagged: Vec<(&str, &TagRow)> = fields
            .iter()
            .flat_map(|f| f.tags.iter().map(move |t| (f.name.as_str(), t)))
            .collect();
        Ok(Self {
            record,
            as_stored: super::stored_as(record)?,
            names: fields.iter().map(|f| f.name.as_str()).collect(),
            categories: fields.iter().map(|f| f.category.as_str()).collect(),
            kinds: fields.iter().map(|f| f.kind.as_str()).collect(),
            key_gens: fields.iter().map(|f| i64::from(f.key_gen)).collect(),
            sealed: fields.iter().map(|f| f.sealed.as_slice()).collect(),
            macs: fields.iter().map(|f| f.mac.as_slice()).collect(),
            versions: fields.iter().map(|f| f.version.as_str()).collect(),
            tag_fields: tagged.iter().map(|(f, _)| *f).collect(),
            tag_versions: tagged.iter().map(|(_, t)| i64::from(t.version)).collect(),
            tag_bits: tagged.iter().map(|(_, t)| i64::from(t.bits)).collect(),
            tags: tagged.iter().map(|(_, t)| t.tag).collect(),
        })
    }

    /// Adds the parameters, in the order of `record_ctes`.
    fn params<'p>(&'p self, params: &mut Vec<&'p (dyn ToSql + Sync)>) {
        params.extend_from_slice(&super::record_params(self.record, &self.as_stored));
        params.extend_from_slice(&[
            &self.names as &(dyn ToSql + Sync),
            &self.categories,
            &self.kinds,
            &self.key_gens,
            &self.sealed,
            &self.macs,
            &self.versions,
            &self.tag_fields,
            &self.tag_versions,
            &self.tag_bits,
            &self.tags,
        ]);
    }

    /// What a unique key violated in `table` names.
    fn names(&self, table: &str) -> Option<String> {
        match (table, self.names.as_slice()) {
            ("records", _) => Some(format!("record `{}`", self.record.id)),
            ("fields", [one]) => Some(format!("field `{one}`")),
            ("fields", _) => Some(format!("a field of `{}`", self.names.join("`, `"))),
            _ => None,
        }
    }

    /// Fails unless the rows stored (records, fields, tags) are the rows given.
    fn check(&self, counts: [i64; 3]) -> Result<(), StoreError> {
        let wanted =
            [1, self.names.len(), self.tags.len()].map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        if counts == wanted {
            return Ok(());
        }
        Err(StoreError::NotKept(format!(
            "record `{}` whole (it dropped {} of its {} rows)",
            self.record.id,
            wanted
                .iter()
                .zip(&counts)
                .map(|(w, c)| w.saturating_sub(*c))
                .sum::<i64>(),
            wanted.iter().sum::<i64>()
        )))
    }
}

/// The CTEs `r`, `f` and `t` that insert a record, its fields and their search tags, taking
/// `RecordInsert::params` from `$from`; the record only when `guard` holds. Each part runs
/// after the one before it (it reads what that one stored).
fn record_ctes(from: usize, guard: &str) -> String {
    let ctes = format!(
        "r AS (
             INSERT INTO records ({RECORD_COLUMNS})
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 WHERE {guard}
             RETURNING 1
         ), f AS (
             INSERT INTO fields (record_id, name, category, kind, key_gen, sealed, mac, version)
             SELECT $1, * FROM unnest($11::TEXT[], $12::TEXT[], $13::TEXT[], $14::BIGINT[],
                                      $15::BYTEA[], $16::BYTEA[], $17::TEXT[])
             WHERE EXISTS (SELECT 1 FROM r)
             RETURNING 1
         ), t AS (
             INSERT INTO search_tags (record_id, field, purpose, version, bits, tag)
             SELECT $1, u.name, $3, u.version, u.bits, u.tag
             FROM unnest($18::TEXT[], $19::BIGINT[], $20::BIGINT[], $21::BIGINT[])
                  AS u (name, version, bits, tag)
             WHERE EXISTS (SELECT 1 FROM f)
             RETURNING 1
         )"
    );
    // Every parameter `$n` of the text above becomes `$(n + from - 1)`.
    let mut out = String::with_capacity(ctes.len() + 32);
    let mut rest = ctes.as_str();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + from - 1).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// A record, its fields and their search tags, in one statement; the counts of rows stored.
static INSERT_RECORD_WITH_FIELDS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {}
         SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM f), (SELECT count(*) FROM t)",
        record_ctes(1, "TRUE")
    )
});

/// A subject's first key of a purpose (with the subject's anchor unless it has one) and a
/// record sealed under it, in one statement: the purpose key version locked and checked (its
/// state is answered; nothing is stored unless it is the active one, as in
/// `keys::insert_first_subject_key`), the key stored when the subject has none of the purpose,
/// and the record only when the key was. Answers the version's state and the counts of keys,
/// records, fields and tags stored.
static INSERT_RECORD_WITH_FIRST_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {}, {}
             SELECT (SELECT state FROM live), (SELECT count(*) FROM key),
                    (SELECT count(*) FROM r), (SELECT count(*) FROM f), (SELECT count(*) FROM t)",
        super::keys::first_key_ctes(),
        record_ctes(12, "EXISTS (SELECT 1 FROM key)")
    )
});

/// Names `ids` destroyed records of `subject` (`SubjectFacts::destroyed`), in the caller's
/// transaction.
fn name_destroyed<'a>(
    tx: &mut Tx<'_>,
    subject: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), StoreError> {
    for id in ids {
        tx.exec(
            "INSERT INTO destroyed_records (subject, record_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&subject, &id],
        )?;
    }
    Ok(())
}
