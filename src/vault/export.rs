//! The copy of a subject's data (GDPR art. 15): every record with its purpose, lawful basis,
//! retention and decrypted values, and the "who accessed my data, and why" report, as JSON lines
//! in a stable, documented schema (`kluis.export.v1`, README "Subject access export").
//!
//! With `portable` (GDPR art. 20) only the data the subject provided, in the schema
//! `kluis.portable.v1` (docs/portability.schema.json).
//!
//! Invariant: decided per field (`export` action) and audited before anything is decrypted,
//! like any read.

use serde_json::{Value as Json, json};

use super::{
    Vault, VaultError, evidence_resource, open_field, record_meta, resource, trail::DATA_ACTIONS,
};
use crate::{
    audit::{AuditEvent, Filter},
    domain::{AccessContext, Category, Principal, Purpose, Role, SubjectId},
    policy::{Action, Decision, FieldFlags, FieldResource, Grant},
    store::{EvidenceRow, FieldRow, RecordRow},
};

/// A recorded access to a subject's data, and whether the caller may see it.
#[derive(Debug)]
pub(crate) struct AccessLine {
    /// Its sequence number in the trail.
    pub seq: u64,
    /// The entry.
    pub event: AuditEvent,
    /// The policy lets the caller see it.
    pub visible: bool,
}

/// The schema name of the export's first line.
pub const EXPORT_SCHEMA: &str = "kluis.export.v1";

/// The schema name of the portable export's first line (docs/portability.schema.json).
pub const PORTABLE_SCHEMA: &str = "kluis.portable.v1";

/// Purposes whose records hold data the subject provided under a lawful basis that art. 20
/// covers: the agreement (art. 6(1)(b)) or consent (art. 6(1)(a), 9(2)(a)). Not those under a
/// legal obligation (allocation checks, the audit) or the landlord's own legitimate interest
/// (debt collection, complaints, disputes, screening, analyses, nuisance, fraud, safety).
pub fn portable_purpose(purpose: Purpose) -> bool {
    matches!(
        purpose,
        Purpose::Contract
            | Purpose::Payments
            | Purpose::Maintenance
            | Purpose::CustomerService
            | Purpose::HomeAdaptation
    )
}

/// Whether a field of `category` in a record of `purpose` is data the subject provided:
/// identity, contact, bank and payment details, income, the agreement's data, and (for a home
/// adaptation, on consent) medical data; never evidence, fraud or criminal data, which officers
/// gather.
pub fn portable_field(purpose: Purpose, category: Category) -> bool {
    portable_purpose(purpose)
        && match category {
            Category::Identity
            | Category::Contact
            | Category::Financial
            | Category::Income
            | Category::Contract => true,
            Category::Medical => purpose == Purpose::HomeAdaptation,
            Category::NuisanceEvidence | Category::Fraud | Category::Criminal => false,
        }
}

/// Why a field decided on is not in an export.
/// Lines of the trail an export reads and decides at a time (`Vault::access_lines`).
const ACCESS_PAGE: usize = 512;

const CHANGED: &str = "changed while this export ran; export again for its current value";

/// `rows` without their values: what an export decides on.
fn without_values(rows: Vec<FieldRow>) -> Vec<FieldRow> {
    rows.into_iter()
        .map(|mut r| {
            r.sealed = Vec::new();
            r
        })
        .collect()
}

impl Vault {
    /// Exports everything the vault holds on `subject` that `principal` may export, calling
    /// `emit` with each JSON line (return false to stop): a header, one line per record, one per
    /// recorded access; with each line, the fields and files whose values it holds, as decided
    /// (`keep_export` decides them again for a long export). Denied when nothing at all may be
    /// exported.
    pub fn export_subject(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        mut emit: impl FnMut(Json, &[FieldResource]) -> bool,
    ) -> Result<(), VaultError> {
        let listed = self.store.subject_records(subject.as_str())?;
        let mut records = Vec::with_capacity(listed.len());
        for (meta, _) in &listed {
            if let Some((rec, rows)) = self.store.record(&meta.id)? {
                super::answers(&meta.id, &rec)?;
                self.rows.check(&rec)?;
                self.rows.check_fields(&rec, &rows)?;
                let evidence = self.finished_evidence(&rec.id)?;
                records.push((rec, without_values(rows), evidence));
            }
        }
        // Per record: its fields, then its evidence files.
        let mut resources = Vec::new();
        for (rec, rows, evidence) in &records {
            let purpose = rec.purpose;
            for row in rows {
                resources.push(resource(rec, purpose, row)?);
            }
            for ev in evidence {
                resources.push(evidence_resource(rec, purpose, ev)?);
            }
        }
        let decisions = self.decide(principal, Action::Export, ctx, &resources)?;
        // What the caller may know exists: a record with nothing to export is listed as withheld
        // only when the caller may know of it, else it is absent.
        let known = self.decide(principal, Action::List, ctx, &resources)?;
        let allowed = decisions.iter().filter(|d| d.is_allow()).count();
        // Whether the caller may export this subject's data at all: then an export with nothing
        // to show is an empty one, not a refusal that would tell an open case exists.
        let entitled = {
            // Any closed record of any purpose and category the caller could export: the answer
            // depends on the caller and the subject, never on what is stored.
            let probes: Vec<FieldResource> = Purpose::ALL
                .iter()
                .flat_map(|&purpose| {
                    Category::ALL.iter().map(move |&category| FieldResource {
                        record: "rec_export_probe".into(),
                        name: String::new(),
                        category,
                        purpose,
                        subject: subject.as_str().into(),
                        flags: FieldFlags {
                            record_closed: true,
                            ..FieldFlags::default()
                        },
                    })
                })
                .collect();
            self.decide(principal, Action::Export, ctx, &probes)?
        };
        // The disclosures of the subject's data, each shown as far as the fields it names are.
        let disclosures = self.subject_disclosures(subject.as_str())?;
        let disclosure_visible =
            self.visible_disclosures(principal, ctx, &disclosures, |record_id| {
                records
                    .iter()
                    .any(|(r, _, _)| r.id == record_id && r.closed_at.is_some())
            })?;
        let permitted = allowed > 0 || entitled.iter().any(Decision::is_allow);
        // Read only for a permitted export, through the subject's anchor.
        let restrictions = if permitted {
            self.restrictions_of(subject)?
        } else {
            Vec::new()
        };
        let mut event = self.event(principal, ctx, "export", Some(subject), None);
        event.decision = if permitted { "allow" } else { "deny" }.into();
        // The recorded accesses are read only for an export the caller may make, and page by
        // page as they are sent (`access_lines`): a refused caller costs no reading of the
        // trail, and a long trail no memory.
        event.reason = Some(format!(
            "{} records, {allowed} of {} fields exported",
            records.len(),
            decisions.len(),
        ));
        let seq = self.audit.append(&event)?;
        if !permitted {
            // Said without the reasons, which would list purposes and categories.
            return Err(VaultError::Denied(
                "you may export nothing of this subject's data".into(),
            ));
        }

        let header = json!({
            "schema": EXPORT_SCHEMA,
            "subject_id": subject.as_str(),
            "generated_at": self.clock.now(),
        });
        if !emit(header, &[]) {
            return Ok(());
        }
        let mut decision_iter = decisions.iter().zip(known.iter()).zip(resources.iter());
        for (rec, rows, evidence) in &records {
            let meta = record_meta(rec)?;
            let retention = self.retention.of(meta.purpose);
            let mut fields = Vec::new();
            let mut withheld = Vec::new();
            let mut granted: Vec<(Grant, &FieldRow)> = Vec::new();
            // What the line holds values of, as decided.
            let mut holds: Vec<FieldResource> = Vec::new();
            for row in rows {
                let Some(((d, k), r)) = decision_iter.next() else {
                    break;
                };
                match d.grant(&seq) {
                    Some(g) => {
                        granted.push((g, row));
                        holds.push(r.clone());
                    }
                    // Withheld, named only when the caller may know the field exists.
                    None if k.is_allow() => {
                        withheld.push(json!({"name": row.name, "reason": d.reason}));
                    }
                    None => {}
                }
            }
            let mut granted_evidence: Vec<(Grant, &EvidenceRow)> = Vec::new();
            for ev in evidence {
                let Some(((d, k), r)) = decision_iter.next() else {
                    break;
                };
                match d.grant(&seq) {
                    Some(g) => {
                        granted_evidence.push((g, ev));
                        holds.push(r.clone());
                    }
                    None if k.is_allow() => {
                        withheld.push(json!({"name": ev.name, "reason": d.reason}));
                    }
                    None => {}
                }
            }
            if granted.is_empty() && granted_evidence.is_empty() {
                if withheld.is_empty() {
                    // The caller may not know of it at all (an open investigation): absent.
                    continue;
                }
                // Known to the caller but not theirs to read: listed as withheld, no values.
                let line = json!({
                    "type": "record",
                    "record_id": rec.id,
                    "purpose": meta.purpose.as_str(),
                    "status": "withheld",
                    "created_at": rec.created_at,
                    "updated_at": rec.updated_at,
                    "closed_at": rec.closed_at,
                    "expires_at": rec.expires_at,
                    "labels": rec.labels,
                    "fields": [],
                    "evidence": [],
                    "withheld": withheld,
                });
                if !emit(line, &[]) {
                    return Ok(());
                }
                continue;
            }
            let subject_id = SubjectId::parse_stored(&rec.subject).map_err(|_| {
                crate::store::StoreError::Corrupt(format!("subject of `{}`", rec.id))
            })?;
            let current = self.current_values(rec, granted.iter().map(|(_, row)| *row))?;
            let mut opened = Vec::with_capacity(granted.len());
            for ((grant, decided), now) in granted.iter().zip(current) {
                match now {
                    Some(row) => opened.push((grant, row)),
                    None => withheld.push(json!({"name": decided.name, "reason": CHANGED})),
                }
            }
            for (grant, row) in &opened {
                let category = row.category;
                let key = self
                    .keyring
                    .subject_key_at(&subject_id, meta.purpose, row.key_gen)?
                    .ok_or_else(|| {
                        VaultError::DataLoss(format!("the subject key of record `{}`", rec.id))
                    })?;
                let open = open_field(grant, &key, rec, meta.purpose, category, row)?;
                let value = match &open.value {
                    super::Value::Text(t) => {
                        json!({"name": open.name, "category": category.as_str(), "text": t.as_str()})
                    }
                    super::Value::Binary(b) => {
                        json!({"name": open.name, "category": category.as_str(), "binary_hex": hex::encode(b.as_slice())})
                    }
                };
                fields.push(value);
            }
            let mut evidence_lines = Vec::new();
            for (grant, ev) in &granted_evidence {
                if grant.record() != rec.id || grant.field() != ev.name {
                    return Err(VaultError::Denied(format!(
                        "no grant for evidence `{}`",
                        ev.id
                    )));
                }
                let category = ev.category;
                let aad = super::evidence::evidence_aad(
                    &subject_id,
                    &rec.id,
                    &ev.id,
                    &ev.name,
                    category,
                    meta.purpose,
                );
                let (file_name, sha256) = super::evidence::split_name_and_digest(
                    &super::evidence::open_file_name(self, &subject_id, meta.purpose, ev, &aad)?,
                );
                evidence_lines.push(json!({
                    "name": ev.name,
                    "category": category.as_str(),
                    "evidence_id": ev.id,
                    "media_type": ev.media_type,
                    "file_name": file_name.as_str(),
                    "size": ev.size,
                    "sha256": sha256,
                    "created_at": ev.created_at,
                }));
            }
            let line = json!({
                "type": "record",
                "record_id": rec.id,
                "purpose": meta.purpose.as_str(),
                "lawful_basis": meta.purpose.lawful_basis(),
                "retention": {
                    "days": retention.days,
                    "counts_from": retention.from.as_str(),
                },
                "created_at": rec.created_at,
                "updated_at": rec.updated_at,
                "closed_at": rec.closed_at,
                "expires_at": rec.expires_at,
                "status": if withheld.is_empty() { "complete" } else { "partial" },
                "labels": rec.labels,
                "categories": granted.iter().map(|(_, r)| r.category.as_str()).chain(granted_evidence.iter().map(|(_, e)| e.category.as_str())).collect::<std::collections::BTreeSet<_>>(),
                "fields": fields,
                "evidence": evidence_lines,
                "withheld": withheld,
            });
            if !emit(line, &holds) {
                return Ok(());
            }
        }
        // Restrictions of processing (art. 18) the subject asked for, lifted ones included.
        for r in &restrictions {
            let line = json!({
                "type": "restriction",
                "restriction_id": r.id,
                "reason": r.reason,
                "placed_by": r.placed_by,
                "placed_at": r.placed_at,
                "lifted_at": r.lifted_at,
                "lifted_by": r.lifted_by,
            });
            if !emit(line, &[]) {
                return Ok(());
            }
        }
        // The recorded accesses, each shown only as far as the records it is about are.
        // Up to the export's own entry: the lines as they stood when it was decided.
        let sent = self.access_lines(principal, ctx, subject, &records, seq.value(), |line| {
            let AccessLine {
                seq: entry_seq,
                event: e,
                ..
            } = line;
            let fields: Vec<&str> = e
                .fields
                .iter()
                .filter(|f| f.decision == "allow")
                .map(|f| f.name.as_str())
                .collect();
            let masked: Vec<&str> = e
                .fields
                .iter()
                .filter(|f| f.decision == super::READ_MASKED)
                .map(|f| f.name.as_str())
                .collect();
            let line = json!({
                "type": "access",
                "seq": entry_seq,
                "time": e.time,
                "principal_id": e.principal,
                "roles": e.roles,
                "action": e.action,
                "purpose": e.purpose,
                "case_ref": e.case_ref,
                "justification": e.justification,
                "channel": e.channel,
                "decision": e.decision,
                "record_id": e.record,
                "fields": fields,
                "fields_masked": masked,
            });
            emit(line, &[])
        })?;
        if !sent {
            return Ok(());
        }
        // Who received the subject's data, on which basis, when (DOMAIN.md, rule 11). The case
        // reference and who recorded it are the organisation's own bookkeeping and stay out.
        for (d, _) in disclosures
            .iter()
            .zip(&disclosure_visible)
            .filter(|(_, visible)| **visible)
        {
            let fields: Vec<Json> = d
                .fields
                .iter()
                .zip(&d.categories)
                .map(|(n, c)| json!({"name": n, "category": c}))
                .collect();
            let line = json!({
                "type": "disclosure",
                "disclosure_id": d.id,
                "record_id": d.record_id,
                "purpose": d.purpose.as_str(),
                "fields": fields,
                "recipient": d.recipient,
                "recipient_kind": d.recipient_kind.as_str(),
                "legal_basis": d.legal_basis,
                "disclosed_at": d.disclosed_at,
                "automatic": d.automatic,
            });
            if !emit(line, &[]) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The data `subject` provided (GDPR art. 20) that `principal` may export, as JSON lines in
    /// the schema `kluis.portable.v1` (docs/portability.schema.json): a header, then one line
    /// per record with portable fields (`portable_field`). Decided per field as `export` and
    /// audited (action `export`, reason `portable`) before anything is decrypted; denied when
    /// nothing at all may be exported. No labels, evidence files, withheld fields, restrictions
    /// or access lines: those are the controller's, not what the subject provided.
    pub fn export_portable(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        mut emit: impl FnMut(Json, &[FieldResource]) -> bool,
    ) -> Result<(), VaultError> {
        let listed = self.store.subject_records(subject.as_str())?;
        let mut records = Vec::with_capacity(listed.len());
        for (meta, _) in &listed {
            if !portable_purpose(meta.purpose) {
                continue;
            }
            if let Some((rec, rows)) = self.store.record(&meta.id)? {
                super::answers(&meta.id, &rec)?;
                self.rows.check(&rec)?;
                self.rows.check_fields(&rec, &rows)?;
                let rows: Vec<FieldRow> = without_values(rows)
                    .into_iter()
                    .filter(|r| portable_field(rec.purpose, r.category))
                    .collect();
                if !rows.is_empty() {
                    records.push((rec, rows));
                }
            }
        }
        let mut resources = Vec::new();
        for (rec, rows) in &records {
            for row in rows {
                resources.push(resource(rec, rec.purpose, row)?);
            }
        }
        let decisions = self.decide(principal, Action::Export, ctx, &resources)?;
        let allowed = decisions.iter().filter(|d| d.is_allow()).count();
        let probes: Vec<FieldResource> = Purpose::ALL
            .iter()
            .filter(|p| portable_purpose(**p))
            .flat_map(|&purpose| {
                Category::ALL
                    .iter()
                    .filter(move |c| portable_field(purpose, **c))
                    .map(move |&category| FieldResource {
                        record: "rec_export_probe".into(),
                        name: String::new(),
                        category,
                        purpose,
                        subject: subject.as_str().into(),
                        flags: FieldFlags {
                            record_closed: true,
                            ..FieldFlags::default()
                        },
                    })
            })
            .collect();
        let entitled = self.decide(principal, Action::Export, ctx, &probes)?;
        let permitted = allowed > 0 || entitled.iter().any(Decision::is_allow);
        let mut event = self.event(principal, ctx, "export", Some(subject), None);
        event.decision = if permitted { "allow" } else { "deny" }.into();
        event.fields = super::audit_fields(&resources, &decisions);
        event.reason = Some(format!(
            "portable (art. 20): {} records, {allowed} of {} fields exported",
            records.len(),
            decisions.len()
        ));
        let seq = self.audit.append(&event)?;
        if !permitted {
            return Err(VaultError::Denied(
                "you may export nothing of this subject's data".into(),
            ));
        }
        let header = json!({
            "schema": PORTABLE_SCHEMA,
            "subject_id": subject.as_str(),
            "generated_at": self.clock.now(),
        });
        if !emit(header, &[]) {
            return Ok(());
        }
        let mut decision_iter = decisions.iter().zip(resources.iter());
        for (rec, rows) in &records {
            let mut fields = Vec::new();
            let mut granted = Vec::new();
            // What the line holds values of, as decided.
            let mut holds: Vec<FieldResource> = Vec::new();
            for row in rows {
                let Some((d, r)) = decision_iter.next() else {
                    break;
                };
                if let Some(grant) = d.grant(&seq) {
                    granted.push((grant, row));
                    holds.push(r.clone());
                }
            }
            let current = self.current_values(rec, granted.iter().map(|(_, row)| *row))?;
            for ((grant, decided), now) in granted.into_iter().zip(current) {
                // A portable export has no place for a withheld field: it ends unfinished.
                let row = now.ok_or_else(|| {
                    VaultError::FailedPrecondition(format!(
                        "field `{}` of record `{}` {CHANGED}",
                        decided.name, rec.id
                    ))
                })?;
                let row = &row;
                let key = self
                    .keyring
                    .subject_key_at(subject, rec.purpose, row.key_gen)?
                    .ok_or_else(|| {
                        VaultError::DataLoss(format!("the subject key of record `{}`", rec.id))
                    })?;
                let open = open_field(&grant, &key, rec, rec.purpose, row.category, row)?;
                fields.push(match &open.value {
                    super::Value::Text(t) => {
                        json!({"name": open.name, "category": row.category.as_str(), "text": t.as_str()})
                    }
                    super::Value::Binary(b) => {
                        json!({"name": open.name, "category": row.category.as_str(), "binary_hex": hex::encode(b.as_slice())})
                    }
                });
            }
            if fields.is_empty() {
                continue;
            }
            let line = json!({
                "type": "record",
                "record_id": rec.id,
                "purpose": rec.purpose.as_str(),
                "lawful_basis": rec.purpose.lawful_basis(),
                "created_at": rec.created_at,
                "updated_at": rec.updated_at,
                "fields": fields,
            });
            if !emit(line, &holds) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Whether a subject export may send its next line: the policy in force, on the subject's
    /// facts as they are now (a mandate revoked, a restriction placed, consent withdrawn),
    /// still lets `principal` (authenticated again by the caller) export each field and file
    /// the line holds (`holds`, as passed to the export's `emit`). Nothing is appended while it
    /// does; when it no longer does, the denial is appended, saying the export ended.
    pub fn keep_export(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        holds: &[FieldResource],
    ) -> Result<(), VaultError> {
        if holds.is_empty() {
            return Ok(());
        }
        let decisions = self.decide(principal, Action::Export, ctx, holds)?;
        if decisions.iter().all(Decision::is_allow) {
            return Ok(());
        }
        let mut event = self.event(principal, ctx, "export", Some(subject), None);
        event.fields = super::audit_fields(holds, &decisions);
        event.decision = "deny".into();
        event.reason = Some(format!(
            "the export ended: {}",
            super::distinct_reasons(&decisions)
        ));
        self.audit.append(&event)?;
        Err(VaultError::Denied(
            "you may no longer export this subject's data; the export ended (the reasons are \
             on the audit trail)"
                .into(),
        ))
    }

    /// The rows of `decided` (fields of `record` without their values, as the export decided
    /// on them) as stored now, with their values, read and checked one record at a time: an
    /// export holds one record's values, not the whole subject's. `None` for a field whose
    /// version changed, or that went, since the decision.
    fn current_values<'a>(
        &self,
        record: &RecordRow,
        decided: impl Iterator<Item = &'a FieldRow>,
    ) -> Result<Vec<Option<FieldRow>>, VaultError> {
        let decided: Vec<&FieldRow> = decided.collect();
        if decided.is_empty() {
            return Ok(Vec::new());
        }
        // A record gone since the decision was erased or deleted meanwhile: nothing more of
        // the subject is sent (not even the names of its fields), as a download of a file
        // erased meanwhile ends.
        let Some((now, rows)) = self.store.record(&record.id)? else {
            return Err(VaultError::NotFound(format!(
                "record `{}` was erased or deleted while this export ran; nothing more was sent. \
                 Request the export again",
                record.id
            )));
        };
        super::answers(&record.id, &now)?;
        self.rows.check(&now)?;
        self.rows.check_fields(&now, &rows)?;
        Ok(decided
            .iter()
            .map(|d| {
                rows.iter()
                    .find(|r| {
                        r.name == d.name
                            && r.version == d.version
                            && r.category == d.category
                            && r.kind == d.kind
                    })
                    .cloned()
            })
            .collect())
    }

    /// The one place a recorded access to `subject` becomes an answer: every data line of the
    /// trail about them before the entry `before` that `principal` may see, handed to `send` in
    /// the trail's order, which stops when it says `false`. Returns whether every line was
    /// sent. A line tells who worked on which record, for which purpose and case, and why, so
    /// it is shown only when the caller may export every field it names, decided as those fields are: under the record's
    /// own purpose and current state, or, when the record is gone, the declared purpose, and
    /// closed only when the trail shows it was closed; each field both in the category the
    /// access named and the one it is stored under. A line whose declared purpose differs from
    /// the record's is also decided under the declared purpose, and a line of an investigating
    /// role under that investigation's purpose, each as an open case of it. A line that names no
    /// field (a listing, an export) is decided as every field of the subject's records of its
    /// purpose, or, with none left, in every category of that purpose.
    ///
    /// The trail is read and decided [`ACCESS_PAGE`] lines at a time, each page sent before the
    /// next is read: what an export holds does not grow with the subject's trail.
    pub(crate) fn access_lines(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        records: &[(RecordRow, Vec<FieldRow>, Vec<EvidenceRow>)],
        before: u64,
        mut send: impl FnMut(&AccessLine) -> bool,
    ) -> Result<bool, VaultError> {
        // A record that is gone counts as closed only when the trail shows it was closed; one
        // deleted, refused or never stored while its case was open stays open. Read first (a
        // close may come after the lines about the record), and kept: one id per closed record.
        let mut closed_on_trail = std::collections::BTreeSet::new();
        self.audit.scan(
            &Filter {
                subject: Some(subject.as_str().into()),
                actions: vec!["close".to_owned()],
                ..Filter::default()
            },
            |seq, e, _| {
                if seq >= before {
                    return false;
                }
                if e.decision == "allow"
                    && let Some(r) = &e.record
                {
                    closed_on_trail.insert(r.clone());
                }
                true
            },
        )?;
        let filter = Filter {
            subject: Some(subject.as_str().into()),
            actions: DATA_ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
            ..Filter::default()
        };
        let mut page: Vec<(u64, AuditEvent)> = Vec::with_capacity(ACCESS_PAGE);
        // Every page so far sent (`Ok(true)`), or why the scan stopped.
        let mut sent = Ok(true);
        let mut send_page = |page: &mut Vec<(u64, AuditEvent)>| -> Result<bool, VaultError> {
            let entries = std::mem::take(page);
            for line in self.decide_access_lines(
                principal,
                ctx,
                subject,
                records,
                &closed_on_trail,
                entries,
            )? {
                if line.visible && !send(&line) {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        self.audit.scan(&filter, |seq, e, _| {
            if seq >= before {
                return false;
            }
            page.push((seq, e.clone()));
            if page.len() < ACCESS_PAGE {
                return true;
            }
            sent = send_page(&mut page);
            matches!(sent, Ok(true))
        })?;
        if !sent? {
            return Ok(false);
        }
        send_page(&mut page)
    }

    /// `entries` of the trail about `subject`, each with whether `principal` may see it (see
    /// `access_lines`).
    fn decide_access_lines(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        records: &[(RecordRow, Vec<FieldRow>, Vec<EvidenceRow>)],
        closed_on_trail: &std::collections::BTreeSet<String>,
        entries: Vec<(u64, AuditEvent)>,
    ) -> Result<Vec<AccessLine>, VaultError> {
        let mut resources: Vec<FieldResource> = Vec::new();
        // Per entry: the range of its resources, or None when it cannot be decided (hidden).
        let mut spans: Vec<Option<std::ops::Range<usize>>> = Vec::with_capacity(entries.len());
        for (_, e) in &entries {
            let start = resources.len();
            let about = e
                .record
                .as_deref()
                .and_then(|r| records.iter().find(|(rec, _, _)| rec.id == r));
            let declared = match e.purpose.as_deref().map(str::parse::<Purpose>) {
                Some(Err(_)) => {
                    spans.push(None);
                    continue;
                }
                Some(Ok(p)) => Some(p),
                None => None,
            };
            // The line is decided as the record it is about (its own purpose and state), and
            // also under the purpose the access declared when that differs, as an open case
            // of it: a case reference and justification of an open investigation stay with
            // those who may see that investigation.
            let mut under: Vec<(Purpose, bool)> = Vec::with_capacity(2);
            match about {
                Some((rec, _, _)) => {
                    under.push((rec.purpose, rec.closed_at.is_some()));
                }
                None => {
                    if let Some(p) = declared {
                        let closed = e
                            .record
                            .as_deref()
                            .is_some_and(|r| closed_on_trail.contains(r));
                        under.push((p, closed));
                    }
                }
            }
            // And under the investigation an investigating role of the caller works on: who
            // looked tells of a case as much as why.
            let investigations = e
                .roles
                .iter()
                .filter_map(|r| r.parse::<Role>().ok())
                .filter_map(Role::investigation);
            for p in declared.into_iter().chain(investigations) {
                if !under.iter().any(|(q, _)| *q == p) {
                    under.push((p, false));
                }
            }
            if under.is_empty() {
                spans.push(None);
                continue;
            }
            let mut undecidable = false;
            for (n, &(purpose, closed)) in under.iter().enumerate() {
                // The first purpose is the record's own: decided as its stored fields.
                let as_stored = n == 0;
                // Named on the trail: its record may have been destroyed since. Decided as a
                // stored record (and refused when that one was destroyed) only as the record
                // read with the export.
                let named_only = !(as_stored && about.is_some());
                let resource = |name: &str, category: Category, record: &str| FieldResource {
                    record: record.to_owned(),
                    name: name.to_owned(),
                    category,
                    purpose,
                    subject: subject.as_str().into(),
                    flags: FieldFlags {
                        record_closed: closed,
                        named_only,
                        ..FieldFlags::default()
                    },
                };
                let record = match (as_stored, e.record.as_deref()) {
                    (true, Some(r)) => r,
                    _ => "rec_access_line",
                };
                if e.fields.is_empty() {
                    let before = resources.len();
                    if as_stored {
                        for (rec, rows, evidence) in records {
                            if rec.purpose != purpose {
                                continue;
                            }
                            let purpose = rec.purpose;
                            for row in rows {
                                resources.push(super::resource(rec, purpose, row)?);
                            }
                            for ev in evidence {
                                resources.push(super::evidence_resource(rec, purpose, ev)?);
                            }
                        }
                    }
                    if resources.len() == before {
                        // Nothing of that purpose left (or another purpose than the record's):
                        // decided in every category, so no category opens a line the others
                        // would keep back.
                        for &c in Category::ALL {
                            resources.push(resource("", c, record));
                        }
                    }
                    continue;
                }
                for f in &e.fields {
                    let Ok(sent) = f.category.parse::<Category>() else {
                        undecidable = true;
                        break;
                    };
                    resources.push(resource(&f.name, sent, record));
                    // A field the record holds under another category than the access named
                    // is decided as it is stored as well.
                    let stored_as = about.and_then(|(_, rows, evidence)| {
                        rows.iter()
                            .find(|r| r.name == f.name)
                            .map(|r| r.category.as_str())
                            .or_else(|| {
                                evidence
                                    .iter()
                                    .find(|v| v.name == f.name)
                                    .map(|v| v.category.as_str())
                            })
                    });
                    match stored_as.map(str::parse::<Category>) {
                        Some(Ok(c)) if c != sent => resources.push(resource(&f.name, c, record)),
                        Some(Err(_)) => undecidable = true,
                        _ => {}
                    }
                }
            }
            if undecidable {
                resources.truncate(start);
                spans.push(None);
                continue;
            }
            spans.push(Some(start..resources.len()));
        }
        let decisions = self.decide(principal, Action::Export, ctx, &resources)?;
        Ok(entries
            .into_iter()
            .zip(spans)
            .map(|((seq, event), span)| {
                let visible = span.is_some_and(|r| {
                    decisions
                        .get(r)
                        .is_some_and(|ds| !ds.is_empty() && ds.iter().all(Decision::is_allow))
                });
                AccessLine {
                    seq,
                    event,
                    visible,
                }
            })
            .collect())
    }
}
