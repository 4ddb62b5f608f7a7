//! Equality search on encrypted fields (`FindRecords`), and the index key's rotation and
//! backfill.
//!
//! A search turns the value into its tags under every index key version in force, asks the
//! store for the records of the declared purpose whose field carries one of them (candidates:
//! tags are short, so unrelated values collide), decides `read` of that field for every
//! candidate, puts the search on the trail (`find`, with the field name and how many candidates
//! are compared, never the value), opens the allowed candidates under that entry's grants and
//! compares them with the value inside the vault, and puts the outcome on the trail (`found`
//! per hit, with its subject and record; `find-result` with the number of hits) before it
//! answers. A candidate that is not a hit, or that the caller may not read, never leaves.
//!
//! Nor does its time tell. A search with fewer than `PADDED_CANDIDATES` candidates reads and
//! decides decoys beside them (records whose field carries a tag from a random one on) up to
//! that number: what a candidate the caller may not read costs (its record, its subject's facts,
//! the decision) a decoy costs too, so how long a search takes does not say how many records
//! the caller may not read carry the value's tag, up to that number; only what one record costs
//! against another (its size, its subject's facts) is left to measure. Decoys are never opened,
//! compared or answered; the `find` entry says how many were decided.

use super::{FieldInfo, RecordMeta, Value, Vault, VaultError, field_aad, resource};
use crate::{
    audit::AuditEvent,
    crypto,
    domain::{
        AccessContext, FieldName, InputError, Principal, Purpose, RecordId, SubjectId, now_unix,
    },
    keys::KeyError,
    policy::{Action, AdminAction, Grant},
    search::{FieldType, MAX_VALUE_BYTES, SearchConfig},
    store::{FieldRow, RecordRow, StoreError},
};
use subtle::ConstantTimeEq;

/// The most candidates one search compares: a tag shared by more records than this asks for
/// a search that tells records apart (or a wider tag).
pub const MAX_CANDIDATES: usize = 1000;

/// The fewest records a search reads and decides: its candidates, and decoys up to this
/// number.
pub const PADDED_CANDIDATES: usize = 4;

/// The most hits one search answers.
pub const MAX_HITS: usize = 100;

/// Values tagged per step of the backfill.
const BACKFILL_BATCH: usize = 256;

/// How far a backfill got: values tagged, and whether every searchable field is tagged under
/// the active index key version (so the retiring one was dropped).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Backfill {
    /// Values tagged by this run.
    pub tagged: u64,
    /// Every searchable value carries a tag under the active version.
    pub complete: bool,
    /// The retiring versions dropped by this run.
    pub dropped: u32,
}

impl Vault {
    /// Makes `search` the searchable fields per purpose.
    pub fn with_search(mut self, search: SearchConfig) -> Self {
        self.search = search;
        self
    }

    /// The searchable fields per purpose.
    pub fn search_config(&self) -> &SearchConfig {
        &self.search
    }

    /// The tags of a value about to be written to `field` of a record of `purpose`: empty when
    /// the field is not searchable, the value is bytes, or nothing is left of it to search for.
    pub(crate) fn tags_for(
        &self,
        purpose: Purpose,
        field: &str,
        value: &Value,
    ) -> Result<Vec<crate::store::TagRow>, VaultError> {
        let Some((kind, bits)) = self.search.field(purpose, field) else {
            return Ok(Vec::new());
        };
        let Value::Text(text) = value else {
            return Ok(Vec::new());
        };
        let Ok(normal) = kind.normalise(field, text) else {
            return Ok(Vec::new());
        };
        let keys = self.keyring.index_keys()?;
        keys.tags(purpose.as_str(), field, normal.as_bytes(), bits)
            .map_err(|e| VaultError::Key(KeyError::Crypto(e)))
    }

    /// The records of the declared purpose whose `field` equals `value` (after normalising),
    /// among those the caller may read that field of: their metadata, as `list_records` gives
    /// it. At most `limit` (1 to 100; 0 means 20).
    pub fn find_records(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        field: &FieldName,
        value: &str,
        limit: usize,
    ) -> Result<Vec<(RecordMeta, Vec<FieldInfo>)>, VaultError> {
        let purpose = ctx.purpose;
        let limit = match limit {
            0 => 20,
            n if n > MAX_HITS => {
                return Err(InputError::new("limit", format!("at most {MAX_HITS}")).into());
            }
            n => n,
        };
        let Some((kind, bits)) = self.search.field(purpose, field.as_str()) else {
            return Err(VaultError::FailedPrecondition(format!(
                "field `{field}` is not searchable in records of `{purpose}`; an operator makes \
                 it so with `[search.{purpose}] fields = [\"{field}\", …]`"
            )));
        };
        if value.len() > MAX_VALUE_BYTES {
            return Err(
                InputError::new("value", format!("at most {MAX_VALUE_BYTES} bytes")).into(),
            );
        }
        let wanted = kind.normalise("value", value)?;
        let keys = self.keyring.index_keys()?;
        let probes = keys
            .tags(purpose.as_str(), field.as_str(), wanted.as_bytes(), bits)
            .map_err(|e| VaultError::Key(KeyError::Crypto(e)))?;
        let ids = self.store.find_tagged(
            purpose.as_str(),
            field.as_str(),
            &probes,
            MAX_CANDIDATES + 1,
        )?;
        let mut event = self.event(principal, ctx, "find", None, None);
        if ids.len() > MAX_CANDIDATES {
            // Said only to a caller who may read the field of such a record: to anyone else,
            // how many records share a tag is itself something of the data.
            let mut entitled = false;
            if let Some(id) = ids.first()
                && let Some((record, rows)) = self.store.record(id)?
            {
                self.rows.check(&record)?;
                self.rows.check_fields(&record, &rows)?;
                if let Some(row) = rows.iter().find(|r| r.name == field.as_str())
                    && record.purpose == purpose
                {
                    let probe = [resource(&record, purpose, row)?];
                    entitled = self
                        .decide(principal, Action::Read, ctx, &probe)?
                        .first()
                        .is_some_and(|d| d.is_allow());
                }
            }
            event.decision = "deny".into();
            event.reason = Some(format!(
                "field `{field}`: more than {MAX_CANDIDATES} candidates"
            ));
            self.audit.append(&event)?;
            if !entitled {
                return Ok(Vec::new());
            }
            return Err(VaultError::FailedPrecondition(format!(
                "more than {MAX_CANDIDATES} records of `{purpose}` share the tag of this value \
                 in `{field}`; search a field that tells them apart"
            )));
        }
        let decoys = self.decoys(purpose, field, &probes, &ids)?;
        // The candidates, from authentic rows only; a tag that points elsewhere (another
        // purpose, a field the record does not hold) is no candidate. The decoys are read,
        // checked and decided the same way, in the same statements.
        let mut candidates: Vec<(RecordRow, FieldRow)> = Vec::with_capacity(ids.len());
        let mut decoyed: Vec<(RecordRow, FieldRow)> = Vec::with_capacity(decoys.len());
        let read: Vec<&str> = ids.iter().chain(&decoys).map(String::as_str).collect();
        // Of each record only the value of `field` is read, and of its other fields what
        // checks them: a search never holds the rest of a record in memory.
        for (record, metas, value) in self.store.records_with_field(&read, field.as_str())? {
            let decoy = decoys.contains(&record.id);
            let checked = self
                .rows
                .check(&record)
                .and_then(|()| self.rows.check_field_metas(&record, &metas));
            match checked {
                Ok(()) => {}
                // A damaged record the search did not ask for fails no search (the store's
                // own verification reports it); a candidate does, as a read of it would.
                Err(e) if decoy => {
                    tracing::warn!(error = %e, "a search's decoy failed its integrity check; left out");
                    continue;
                }
                Err(e) => return Err(e),
            }
            if record.purpose != purpose {
                continue;
            }
            if let Some(row) = value {
                if decoy {
                    decoyed.push((record, row));
                } else {
                    candidates.push((record, row));
                }
            }
        }
        let real = candidates.len();
        candidates.append(&mut decoyed);
        let mut resources = candidates
            .iter()
            .map(|(record, row)| resource(record, purpose, row))
            .collect::<Result<Vec<_>, _>>()?;
        let facts = match self.facts_of(principal, &resources) {
            Ok(facts) => facts,
            // Damaged facts of a decoy's subject: decided without the decoys (the candidates'
            // own facts fail the search as before).
            Err(e) if candidates.len() > real => {
                tracing::warn!(error = %e, "the facts of a search's decoys failed their checks; left out");
                candidates.truncate(real);
                resources.truncate(real);
                self.facts_of(principal, &resources)?
            }
            Err(e) => return Err(e),
        };
        // A decoy its subject's facts name destroyed (its rows put back by hand, or destroyed
        // since they were read) is left out: it fails no search. A candidate is decided, and
        // refused, as a read of it would be.
        let decoys_read = candidates.split_off(real);
        let decoy_resources = resources.split_off(real);
        for (decoy, resource) in decoys_read.into_iter().zip(decoy_resources) {
            if facts.names_destroyed(&decoy.0.subject, &decoy.0.id)? {
                tracing::warn!("a search's decoy is a destroyed record stored again; left out");
                continue;
            }
            candidates.push(decoy);
            resources.push(resource);
        }
        let mut decisions = self.decide_on(principal, Action::Read, ctx, &resources, &facts)?;
        // What was decided of the decoys goes no further.
        let decided_decoys = candidates.len() - real;
        candidates.truncate(real);
        decisions.truncate(real);
        resources.truncate(real);
        let allowed = decisions.iter().filter(|d| d.is_allow()).count();
        event.decision = "allow".into();
        event.reason = Some(format!(
            "field `{field}`: {real} candidate(s), {allowed} the caller may read compared, \
             {decided_decoys} decoy(s) decided beside them"
        ));
        let seq = self.audit.append(&event)?;

        let mut hits: Vec<&RecordRow> = Vec::new();
        for ((record, row), decision) in candidates.iter().zip(&decisions) {
            if hits.len() == limit {
                break;
            }
            let Some(grant) = decision.grant(&seq) else {
                continue;
            };
            if self.matches(grant, record, row, kind, &wanted)? {
                hits.push(record);
            }
        }

        // The outcome on the trail before anything of it is answered: each hit under its
        // subject (so it is in that subject's access report), then the count.
        let mut entries: Vec<AuditEvent> = Vec::with_capacity(hits.len() + 1);
        for record in &hits {
            let hit = candidates
                .iter()
                .zip(resources.iter().zip(&decisions))
                .find(|((r, _), _)| r.id == record.id)
                .map(|(_, hit)| hit);
            // A hit tells an external party that the subject's field holds the value: a
            // disclosure, registered as one of its reads is, before the answer.
            let disclosure = match hit {
                Some((res, _)) => self.register_external_read(principal, ctx, record, &[res])?,
                None => None,
            };
            let subject = SubjectId::parse_stored(&record.subject).ok();
            let record_id = RecordId::parse("record_id", &record.id).ok();
            let mut e = self.event(
                principal,
                ctx,
                "found",
                subject.as_ref(),
                record_id.as_ref(),
            );
            e.decision = "allow".into();
            e.reason = Some(format!("found by `{field}`"));
            e.target = disclosure;
            // With the policies that allowed it, as a read's entry names them.
            if let Some((res, decision)) = hit {
                e.fields = vec![crate::audit::AuditField {
                    name: res.name.clone(),
                    category: res.category.as_str().into(),
                    decision: "allow".into(),
                    policies: decision.policies.clone(),
                }];
            }
            entries.push(e);
        }
        let mut result = self.event(principal, ctx, "find-result", None, None);
        result.decision = "allow".into();
        result.reason = Some(format!("field `{field}`: {} hit(s)", hits.len()));
        entries.push(result);
        self.audit.append_all(&entries)?;

        // The hits' metadata as `ListRecords` gives it, decided on the facts the candidates
        // were decided on.
        let ids: Vec<&str> = hits.iter().map(|r| r.id.as_str()).collect();
        let found = self.store.record_metas(&ids)?;
        let mut out = self.visible_metadata(principal, ctx, found, Some(&facts))?;
        // In the order the hits were found (record id).
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(out)
    }

    /// Decoys for a search with the candidates `ids`: up to `PADDED_CANDIDATES` of them in all,
    /// records whose field carries a tag of the first probe's version and width (every version
    /// in force tags every value), from a random tag on; none a candidate.
    fn decoys(
        &self,
        purpose: Purpose,
        field: &FieldName,
        probes: &[crate::store::TagRow],
        ids: &[String],
    ) -> Result<Vec<String>, VaultError> {
        use rand::Rng;
        let wanted = PADDED_CANDIDATES.saturating_sub(ids.len());
        let Some(probe) = probes.first().filter(|_| wanted > 0) else {
            return Ok(Vec::new());
        };
        let from = crate::store::TagRow {
            tag: rand::thread_rng().gen_range(0..1i64 << probe.bits),
            ..*probe
        };
        // As many more as there are candidates, in case the walk meets them.
        let found =
            self.store
                .tagged_from(purpose.as_str(), field.as_str(), &from, wanted + ids.len())?;
        Ok(found
            .into_iter()
            .filter(|id| !ids.contains(id))
            .take(wanted)
            .collect())
    }

    /// Opens one granted candidate and compares it with `wanted`, in constant time, inside the
    /// vault.
    fn matches(
        &self,
        grant: Grant,
        record: &RecordRow,
        row: &FieldRow,
        kind: FieldType,
        wanted: &str,
    ) -> Result<bool, VaultError> {
        let subject = SubjectId::parse_stored(&record.subject)
            .map_err(|_| StoreError::Corrupt(format!("subject of `{}`", record.id)))?;
        let granted = [(super::FieldGrant::Full(grant), row, row.category)];
        let Some(mut opened) = self.open_granted(&granted, &subject, record, record.purpose)?
        else {
            // A rekey moved the subject on since the candidate was read: not compared now.
            return Ok(false);
        };
        let Some(field) = opened.pop() else {
            return Ok(false);
        };
        let Value::Text(text) = field.value else {
            return Ok(false);
        };
        let Ok(normal) = kind.normalise("value", &text) else {
            return Ok(false);
        };
        Ok(bool::from(normal.as_bytes().ct_eq(wanted.as_bytes())))
    }

    /// Makes a new index key version active (the active one starts retiring: new values are
    /// tagged under both, searches ask both, until `reindex` has tagged every value under the
    /// new one). A security officer's action, on the trail first.
    pub fn rotate_index_key(
        &self,
        actor: &Principal,
        justification: &str,
    ) -> Result<u32, VaultError> {
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageKeys,
            "index-key-rotate",
            Some("index"),
            justification,
        )?;
        if !self.keyring.index_keys()?.retiring().is_empty() {
            return Err(VaultError::FailedPrecondition(
                "an earlier rotation of the index key is still being backfilled; run `kluis admin \
                 keys reindex` until it reports the old version dropped"
                    .into(),
            ));
        }
        event.reason = Some("new active index key version requested".into());
        let version = event.commit_then(|| Ok(self.keyring.rotate_index_key()?))?;
        tracing::info!(version, "index key rotated");
        Ok(version)
    }

    /// Allows and audits a reindex of `purpose` (or of every purpose) by `actor`.
    pub fn authorize_reindex(
        &self,
        actor: &Principal,
        purpose: Option<Purpose>,
        justification: &str,
    ) -> Result<(), VaultError> {
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageKeys,
            "index-reindex",
            Some(purpose.map_or("all purposes", Purpose::as_str)),
            justification,
        )?;
        event.purpose = purpose.map(|p| p.as_str().into());
        event.commit()?;
        Ok(())
    }

    /// Tags every searchable value of `purpose` (or of every purpose) that has no tag under
    /// the active index key version at the configured width, in batches, calling `progress`
    /// after each (false stops). When no searchable value is left untagged anywhere, drops the
    /// tags of retiring versions and then the versions themselves. One node at a time.
    pub fn reindex(
        &self,
        only: Option<Purpose>,
        mut progress: impl FnMut(super::keyadmin::Progress) -> bool,
    ) -> Result<Backfill, VaultError> {
        let _lease = self.job_lease("reindex")?.ok_or_else(|| {
            VaultError::FailedPrecondition(
                "a reindex is running on another node; it finishes there".into(),
            )
        })?;
        let keys = self.keyring.index_keys()?;
        let active = keys.active();
        let mut state = super::keyadmin::Progress { done: 0, total: 0 };
        let mut tagged = 0u64;
        let targets: Vec<(Purpose, String, FieldType, u8)> = self
            .search
            .all()
            .filter(|(p, _, _, _)| only.is_none_or(|o| o == *p))
            .map(|(p, f, t, b)| (p, f.to_owned(), t, b))
            .collect();
        for (purpose, field, kind, bits) in &targets {
            let mut after = String::new();
            loop {
                let batch = self.store.untagged_fields(
                    purpose.as_str(),
                    field,
                    active,
                    *bits,
                    &after,
                    BACKFILL_BATCH,
                )?;
                let Some((last, _)) = batch.last() else {
                    break;
                };
                after = last.id.clone();
                state.total += batch.len() as u64;
                for (record, row) in &batch {
                    self.rows.check(record)?;
                    if let Some(tags) = self.tags_of_stored(record, row, *kind, *bits)?
                        && self
                            .store
                            .write_tags(&record.id, &row.name, &row.version, &tags)?
                    {
                        tagged += 1;
                    }
                    state.done += 1;
                }
                crate::metrics::key_job("reindex", purpose.as_str(), state.done, state.total);
                if !progress(state) || self.is_stopping() {
                    return Ok(Backfill {
                        tagged,
                        complete: false,
                        dropped: 0,
                    });
                }
            }
        }
        // Complete only when no searchable field of any purpose is left untagged (values
        // written meanwhile are tagged under every version in force).
        let mut complete = true;
        for (purpose, field, _, bits) in self.search.all() {
            if !self
                .store
                .untagged_fields(purpose.as_str(), field, active, bits, "", 1)?
                .is_empty()
            {
                complete = false;
                break;
            }
        }
        let retiring = keys.retiring();
        let mut dropped = 0;
        if complete && !retiring.is_empty() {
            for v in &retiring {
                self.store.drop_tags(*v)?;
            }
            self.keyring.drop_index_keys(&retiring)?;
            dropped = u32::try_from(retiring.len()).unwrap_or(u32::MAX);
        }
        self.audit.append(&AuditEvent {
            time: now_unix(),
            principal: "kluis".into(),
            action: "index-backfill".into(),
            decision: "allow".into(),
            purpose: only.map(|p| p.as_str().into()),
            reason: Some(format!(
                "{tagged} value(s) tagged under index key v{active}{}",
                if dropped > 0 {
                    format!("; retiring version(s) {retiring:?} dropped")
                } else if complete {
                    String::new()
                } else {
                    "; values of other purposes are still to be tagged".into()
                }
            )),
            ..AuditEvent::default()
        })?;
        Ok(Backfill {
            tagged,
            complete,
            dropped,
        })
    }

    /// The tags of a stored value under every index key version in force, opened inside the
    /// vault (never answered); `None` when it is bytes, or its subject key went meanwhile.
    fn tags_of_stored(
        &self,
        record: &RecordRow,
        row: &FieldRow,
        kind: FieldType,
        bits: u8,
    ) -> Result<Option<Vec<crate::store::TagRow>>, VaultError> {
        if row.kind != crate::domain::FieldKind::Text {
            return Ok(None);
        }
        let subject = SubjectId::parse_stored(&record.subject)
            .map_err(|_| StoreError::Corrupt(format!("subject of `{}`", record.id)))?;
        let Some(key) = self
            .keyring
            .subject_key_at(&subject, record.purpose, row.key_gen)?
        else {
            return Ok(None);
        };
        let aad = field_aad(
            &record.subject,
            &record.id,
            &row.name,
            row.category,
            record.purpose,
            row.kind,
            &row.version,
        );
        let plain = crypto::open(&key.fields(), &aad, &row.sealed).map_err(|_| {
            VaultError::DataLoss(format!("field `{}` of record `{}`", row.name, record.id))
        })?;
        let Some(text) = super::into_text(plain) else {
            return Ok(None);
        };
        let Ok(normal) = kind.normalise(&row.name, &text) else {
            return Ok(None);
        };
        let keys = self.keyring.index_keys()?;
        let tags = keys
            .tags(record.purpose.as_str(), &row.name, normal.as_bytes(), bits)
            .map_err(|e| VaultError::Key(KeyError::Crypto(e)))?;
        Ok(Some(tags))
    }
}
