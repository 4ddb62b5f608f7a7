//! Rectification on a subject's request (GDPR art. 16). Only a purpose's own role may replace a
//! value in the ordinary course; the privacy officer who handles a rectification request may
//! replace the fields a record holds while that request is open, without reading what they held.
//!
//! Invariant: a rectification needs an open, authentic `rectification` request of the record's
//! subject; it replaces only fields the record holds, under the category they are stored under,
//! and never adds one.
//! Invariant: nothing of an old value is opened or returned; the new values are sealed and
//! written as `update_record` writes them (`Vault::write_fields`: the field-set MAC as read, the
//! store's hold check), after the audit entry that names the request.

use std::collections::BTreeSet;

use super::{NewField, Vault, VaultError, WriteError, check_fields, held, record_meta};
use crate::{
    audit::AuditField,
    domain::{InputError, Principal, RecordId, RequestKind, SubjectId},
    policy::AdminAction,
    store::StoreError,
};

impl Vault {
    /// Replaces `fields` of `record_id` under the open rectification request `request_id` of
    /// the record's subject (privacy officer, `manage-lifecycle`). Returns the time of the write.
    pub fn rectify_record(
        &self,
        actor: &Principal,
        request_id: &str,
        record_id: &RecordId,
        fields: Vec<NewField>,
        justification: &str,
    ) -> Result<i64, VaultError> {
        // The id is written to the audit entry in clear, also when it names nothing.
        super::guard::check_text("request_id", request_id)?;
        check_fields(&fields, &self.limits)?;
        let mut names = BTreeSet::new();
        for f in &fields {
            if !names.insert(f.name.as_str()) {
                return Err(InputError::new(
                    "fields",
                    format!("field `{}` is named twice", f.name),
                )
                .into());
            }
        }
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageLifecycle,
            "rectify",
            Some(request_id),
            justification,
        )?;
        event.record = Some(record_id.as_str().into());
        // One writer of this record in this process from the read on.
        let _one_writer = self.record_lock(record_id);
        let request = self
            .store
            .requests()?
            .into_iter()
            .find(|r| r.id == request_id);
        let Some(request) = request else {
            return event.refuse(format!("no subject request `{request_id}`"));
        };
        self.rows.check(&request)?;
        event.subject = Some(request.subject.clone());
        if request.kind != RequestKind::Rectification {
            return event.refuse(format!(
                "request `{request_id}` is a `{}` request, not a `rectification` request",
                request.kind
            ));
        }
        if request.completed_at.is_some() {
            return event.refuse(format!(
                "request `{request_id}` is answered already; rectify under an open request"
            ));
        }
        let (record, rows) = match self.load_kept(record_id) {
            Ok(loaded) => loaded,
            Err(VaultError::NotFound(what)) => return event.refuse(format!("{what} not found")),
            Err(e) => return Err(e),
        };
        if record.subject != request.subject {
            // Said without the record's subject.
            return event.refuse(format!(
                "record `{record_id}` is not of the subject of request `{request_id}`"
            ));
        }
        let meta = record_meta(&record)?;
        event.purpose = Some(meta.purpose.as_str().into());
        for f in &fields {
            match rows.iter().find(|r| r.name == f.name.as_str()) {
                None => {
                    return event.refuse(format!(
                        "field `{}`: record `{record_id}` holds no such field; a rectification \
                         replaces fields, it adds none",
                        f.name
                    ));
                }
                Some(stored) if stored.category != f.category => {
                    return event.refuse(format!(
                        "field `{}` is stored under category `{}`, not `{}`",
                        f.name, stored.category, f.category
                    ));
                }
                // Text stays text and bytes stay bytes: a rectification corrects a value, it
                // does not change what kind of value the field holds.
                Some(stored) if stored.kind != Some(f.value.kind()) => {
                    return event.refuse(format!(
                        "field `{}` holds {}, not {}; a rectification keeps the kind of value",
                        f.name,
                        stored
                            .kind
                            .map_or("a file", crate::domain::FieldKind::as_str),
                        f.value.kind().as_str()
                    ));
                }
                Some(_) => {}
            }
        }
        // The record stays within its size limit, as `update_record` keeps it.
        let kept = super::stored_bytes(
            rows.iter()
                .filter(|r| !fields.iter().any(|f| f.name.as_str() == r.name)),
        );
        let added: usize = fields.iter().map(|f| f.value.len()).sum();
        if kept + added > self.limits.max_record_bytes {
            return Err(InputError::new(
                "fields",
                format!(
                    "a record holds at most {} bytes",
                    self.limits.max_record_bytes
                ),
            )
            .into());
        }
        let subject = SubjectId::parse_stored(&record.subject)
            .map_err(|_| StoreError::Corrupt(format!("subject of `{}`", record.id)))?;
        if let Some(hold) = self.hold_on(&record)? {
            return event.refuse(held(record_id, &hold).to_string());
        }
        event.fields = fields
            .iter()
            .map(|f| AuditField {
                name: f.name.as_str().into(),
                category: f.category.as_str().into(),
                decision: "allow".into(),
                policies: Vec::new(),
            })
            .collect();
        event.reason = Some(format!(
            "rectification under request `{request_id}`: {} field(s) replaced, old values not read",
            fields.len()
        ));
        let now = self.clock.now();
        event.commit_then(|| {
            self.write_fields(
                &subject,
                record_id,
                &record,
                &rows,
                meta.purpose,
                &fields,
                now,
            )
            .map_err(|e| match e {
                WriteError::Held(hold) => held(record_id, &hold),
                other => other.into_vault(record_id),
            })
        })?;
        tracing::info!(
            record_id = record_id.as_str(),
            request_id,
            fields = fields.len(),
            "record rectified under a subject request"
        );
        Ok(now)
    }
}
