//! The copy of a subject's data (GDPR art. 15): every record with its purpose, lawful basis,
//! retention and decrypted values, and the "who accessed my data, and why" report, as JSON lines
//! in a stable, documented schema (`kluis.export.v1`, README "Subject access export").
//!
//! Invariant: decided per field (`export` action) and audited before anything is decrypted,
//! like any read.

use serde_json::{Value as Json, json};

use super::{
    Vault, VaultError, evidence_resource, open_field, parse_stored, record_meta, resource,
    trail::DATA_ACTIONS,
};
use crate::{
    audit::Filter,
    domain::{AccessContext, Principal, SubjectId},
    policy::{Action, Grant},
    store::{EvidenceRow, FieldRow},
};

/// The schema name of the export's first line.
pub const EXPORT_SCHEMA: &str = "kluis.export.v1";

impl Vault {
    /// Exports everything the vault holds on `subject` that `principal` may export, calling
    /// `emit` with each JSON line (return false to stop): a header, one line per record, one per
    /// recorded access. Denied when nothing at all may be exported.
    pub fn export_subject(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        mut emit: impl FnMut(Json) -> bool,
    ) -> Result<(), VaultError> {
        let listed = self.store.subject_records(subject.as_str())?;
        let mut records = Vec::with_capacity(listed.len());
        for (meta, _) in &listed {
            if let Some((rec, rows)) = self.store.record(&meta.id)? {
                let evidence = self.store.record_evidence(&rec.id)?;
                records.push((rec, rows, evidence));
            }
        }
        // Per record: its fields, then its evidence files.
        let mut resources = Vec::new();
        for (rec, rows, evidence) in &records {
            let purpose = parse_stored(&rec.purpose, &rec.id)?;
            for row in rows {
                resources.push(resource(rec, purpose, row)?);
            }
            for ev in evidence {
                resources.push(evidence_resource(rec, purpose, ev)?);
            }
        }
        let decisions = self.decide(principal, Action::Export, ctx, &resources)?;
        let allowed = decisions.iter().filter(|d| d.is_allow()).count();
        let mut event = self.event(principal, ctx, "export", Some(subject), None);
        event.decision = if allowed > 0 || records.is_empty() {
            "allow"
        } else {
            "deny"
        }
        .into();
        event.reason = Some(format!(
            "{} records, {allowed} of {} fields exported",
            records.len(),
            decisions.len()
        ));
        let seq = self.audit.append(&event)?;
        if allowed == 0 && !records.is_empty() {
            return Err(VaultError::Denied(super::distinct_reasons(&decisions)));
        }

        let header = json!({
            "schema": EXPORT_SCHEMA,
            "subject_id": subject.as_str(),
            "generated_at": self.clock.now(),
        });
        if !emit(header) {
            return Ok(());
        }
        let mut decision_iter = decisions.iter();
        for (rec, rows, evidence) in &records {
            let meta = record_meta(rec)?;
            let retention = self.retention.of(meta.purpose);
            let mut fields = Vec::new();
            let mut withheld = Vec::new();
            let mut granted: Vec<(Grant, &FieldRow)> = Vec::new();
            for row in rows {
                let Some(d) = decision_iter.next() else { break };
                match d.grant(&seq) {
                    Some(g) => granted.push((g, row)),
                    None => withheld.push(json!({"name": row.name, "reason": d.reason})),
                }
            }
            let mut granted_evidence: Vec<(Grant, &EvidenceRow)> = Vec::new();
            for ev in evidence {
                let Some(d) = decision_iter.next() else { break };
                match d.grant(&seq) {
                    Some(g) => granted_evidence.push((g, ev)),
                    None => withheld.push(json!({"name": ev.name, "reason": d.reason})),
                }
            }
            if granted.is_empty() && granted_evidence.is_empty() {
                // Nothing of it may be shown: not even that it exists (an open investigation).
                continue;
            }
            let subject_id = SubjectId::parse("subject", &rec.subject).map_err(|_| {
                crate::store::StoreError::Corrupt(format!("subject of `{}`", rec.id))
            })?;
            for (grant, row) in &granted {
                let category = parse_stored(&row.category, &rec.id)?;
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
                let category = parse_stored(&ev.category, &rec.id)?;
                let aad = super::evidence::evidence_aad(
                    &subject_id,
                    &rec.id,
                    &ev.id,
                    &ev.name,
                    category,
                    meta.purpose,
                );
                let file_name =
                    super::evidence::open_file_name(self, &subject_id, meta.purpose, ev, &aad)?;
                evidence_lines.push(json!({
                    "name": ev.name,
                    "category": category.as_str(),
                    "evidence_id": ev.id,
                    "media_type": ev.media_type,
                    "file_name": file_name.as_str(),
                    "size": ev.size,
                    "sha256": ev.sha256,
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
                "labels": rec.labels,
                "categories": rows.iter().map(|r| r.category.as_str()).chain(evidence.iter().map(|e| e.category.as_str())).collect::<std::collections::BTreeSet<_>>(),
                "fields": fields,
                "evidence": evidence_lines,
                "withheld": withheld,
            });
            if !emit(line) {
                return Ok(());
            }
        }
        let filter = Filter {
            subject: Some(subject.as_str().into()),
            actions: DATA_ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
            ..Filter::default()
        };
        let mut go_on = true;
        self.audit.scan(&filter, |entry_seq, e, _| {
            if entry_seq >= seq.value() {
                return false;
            }
            let fields: Vec<&str> = e
                .fields
                .iter()
                .filter(|f| f.decision == "allow")
                .map(|f| f.name.as_str())
                .collect();
            go_on = emit(json!({
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
            }));
            go_on
        })?;
        Ok(())
    }
}
