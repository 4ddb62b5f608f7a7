//! The disclosure register (DOMAIN.md, rule 11): who disclosed which fields of a subject's record
//! to whom, on which legal basis, when. A caller records a disclosure of data it may read
//! (`record_disclosure`); a read by an external role (contractor, bailiff, lawyer) is registered
//! by the vault itself before its audit entry is written and before anything is opened
//! (`register_external_read`). The privacy officer lists the register; the subject finds their
//! disclosures in their export, and the subject access report lists them.
//!
//! Invariant: a disclosure row is stored only with a MAC from the core (`rows`), is obeyed and
//! shown only when it checks (`DATA_LOSS` otherwise), and goes with the subject's last record in
//! the transaction that deletes it (the store's trigger).
//! Invariant: a caller records a disclosure only of fields of one record of the named subject
//! that the policy lets it `read`, decided per field and audited; denied by default.
//! Invariant: knows neither gRPC nor SQL.

use std::collections::BTreeSet;

use super::{Vault, VaultError, audit_fields, meta_resource};
use crate::{
    domain::{
        AccessContext, Category, DisclosureInput, FieldName, InputError, Principal, Purpose,
        RecipientKind, RecordId, SubjectId,
    },
    policy::{Action, AdminAction, Decision, FieldResource},
    store::{DisclosureRow, StoreError},
};

/// The most disclosures one listing returns.
pub const MAX_LIST: usize = 10_000;

impl Vault {
    /// Records that `fields` of record `record_id` (a record of `subject`) were disclosed to a
    /// recipient. The caller must be staff (no subject-side or external role) allowed to `read`
    /// every named field (decided per field, in `ctx`); the decision is audited (`disclosure`)
    /// before the row is stored.
    pub fn record_disclosure(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        record_id: &RecordId,
        fields: &[FieldName],
        input: DisclosureInput,
    ) -> Result<DisclosureRow, VaultError> {
        if fields.is_empty() {
            return Err(InputError::new("fields", "at least one field is required").into());
        }
        if fields.len() > self.limits.max_fields {
            return Err(InputError::new(
                "fields",
                format!("at most {} field names", self.limits.max_fields),
            )
            .into());
        }
        let mut seen = BTreeSet::new();
        for (i, f) in fields.iter().enumerate() {
            if !seen.insert(f.as_str()) {
                return Err(InputError::new(
                    format!("fields[{i}]"),
                    format!("field `{f}` appears twice"),
                )
                .into());
            }
        }
        // The register is the organisation's account of what it disclosed: the subject, a
        // representative or an external party records nothing in it (their reads are
        // registered by kluis itself), before anything of the record is looked at.
        if principal.roles.iter().any(|r| r.is_subject_bound()) {
            let mut event =
                self.event(principal, ctx, "disclosure", Some(subject), Some(record_id));
            event.decision = "deny".into();
            event.reason = Some("a subject-side or external party records no disclosures".into());
            self.audit.append(&event)?;
            return Err(VaultError::Denied(
                "disclosures are recorded by the organisation's staff; reads by external parties \
                are registered by kluis itself"
                    .into(),
            ));
        }
        let (record, metas) = self.load_metas(record_id)?;
        if record.subject != subject.as_str() {
            // Answered as a record that does not exist: the caller named another subject's.
            return Err(VaultError::NotFound(format!("record `{record_id}`")));
        }
        let purpose = record.purpose;
        let mut resources = Vec::with_capacity(fields.len());
        let mut absent = false;
        for name in fields {
            match metas.iter().find(|r| r.name == name.as_str()) {
                Some(meta) => resources.push(meta_resource(&record, purpose, meta)),
                None => absent = true,
            }
        }
        let decisions = self.decide(principal, Action::Read, ctx, &resources)?;
        let allowed = !absent && !decisions.is_empty() && decisions.iter().all(Decision::is_allow);
        let mut event = self.event(principal, ctx, "disclosure", Some(subject), Some(record_id));
        event.fields = audit_fields(&resources, &decisions);
        if !allowed {
            event.decision = "deny".into();
            event.reason = Some(if absent {
                "a named field is not in this record".into()
            } else {
                "the caller may not read every named field".into()
            });
            self.audit.append(&event)?;
            // Neither which fields the record holds nor the rules are the caller's to learn.
            return Err(VaultError::Denied(
                "you may record a disclosure only of fields of this record you may read (the \
                 reasons are on the audit trail)"
                    .into(),
            ));
        }
        let row = self.disclosure_row(
            subject.as_str(),
            &record.id,
            purpose,
            resources.iter().map(|r| (r.name.clone(), r.category)),
            input,
            principal,
            false,
        );
        event.decision = "allow".into();
        event.target = Some(row.id.clone());
        event.reason = Some(format!("disclosed to a `{}` recipient", row.recipient_kind));
        self.audit.append(&event)?;
        match self.store.insert_disclosure(&row) {
            Ok(()) => Ok(row),
            Err(e) => {
                let why = match &e {
                    StoreError::Missing(_) => "the record was deleted meanwhile".to_owned(),
                    other => other.to_string(),
                };
                self.not_carried_out(principal, ctx, "disclosure", subject, record_id, &why)?;
                Err(match e {
                    StoreError::Missing(_) => VaultError::NotFound(format!("record `{record_id}`")),
                    other => other.into(),
                })
            }
        }
    }

    /// Registers a read by an external role as a disclosure to that principal, before the read
    /// is audited and before anything is opened; `None` when the caller holds no external role.
    /// Returns the disclosure's id, which the read's audit entry names.
    pub(crate) fn register_external_read(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        record: &crate::store::RecordRow,
        fields: &[&FieldResource],
    ) -> Result<Option<String>, VaultError> {
        let Some(kind) = principal
            .roles
            .iter()
            .find_map(|&r| RecipientKind::of_external(r))
        else {
            return Ok(None);
        };
        if fields.is_empty() {
            return Ok(None);
        }
        let input = DisclosureInput {
            recipient: principal.id.as_str().into(),
            kind,
            legal_basis: format!(
                "read by an external party for `{}` ({})",
                ctx.purpose,
                ctx.purpose.lawful_basis()
            ),
            case_ref: ctx.case_ref.clone(),
        };
        let row = self.disclosure_row(
            &record.subject,
            &record.id,
            record.purpose,
            fields.iter().map(|r| (r.name.clone(), r.category)),
            input,
            principal,
            true,
        );
        self.store.insert_disclosure(&row).map_err(|e| match e {
            StoreError::Missing(_) => VaultError::NotFound(format!("record `{}`", record.id)),
            other => other.into(),
        })?;
        tracing::info!(
            disclosure_id = row.id.as_str(),
            record_id = record.id.as_str(),
            kind = kind.as_str(),
            "read by an external party registered as a disclosure"
        );
        Ok(Some(row.id))
    }

    /// The disclosure register, of one subject or all, from `since` on, oldest first, at most
    /// `limit` (at most `MAX_LIST`). The privacy officer (`manage-lifecycle`); audited. A row
    /// that fails its MAC refuses the listing (`DATA_LOSS`) rather than show it.
    pub fn list_disclosures(
        &self,
        actor: &Principal,
        subject: Option<&SubjectId>,
        since: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DisclosureRow>, VaultError> {
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ManageLifecycle,
            "disclosure-list",
            subject.map(SubjectId::as_str),
            "",
            subject.map(|s| s.as_str().to_owned()),
        )?;
        let limit = if limit == 0 {
            1000
        } else {
            limit.min(MAX_LIST)
        };
        let rows = self
            .store
            .disclosures(subject.map(SubjectId::as_str), since, limit)?;
        self.rows.check_all(&rows)?;
        event.reason = Some(format!("{} disclosures listed", rows.len()));
        event.commit()?;
        Ok(rows)
    }

    /// A subject's disclosures, every row checked (`DATA_LOSS` when one fails).
    pub(crate) fn subject_disclosures(
        &self,
        subject: &str,
    ) -> Result<Vec<DisclosureRow>, VaultError> {
        let rows = self.store.disclosures(Some(subject), None, usize::MAX)?;
        self.rows.check_all(&rows)?;
        Ok(rows)
    }

    /// Which of `disclosures` the caller may see in an export: those whose every field it may
    /// export, decided as the fields of the record they were taken from (closed as that record
    /// is now, open when it is gone).
    pub(crate) fn visible_disclosures(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        disclosures: &[DisclosureRow],
        closed: impl Fn(&str) -> bool,
    ) -> Result<Vec<bool>, VaultError> {
        let mut resources = Vec::new();
        let mut spans = Vec::with_capacity(disclosures.len());
        for d in disclosures {
            let start = resources.len();
            for (name, category) in d.fields.iter().zip(&d.categories) {
                let category: Category = category.parse().map_err(|_| {
                    StoreError::Corrupt(format!("category of disclosure `{}`", d.id))
                })?;
                resources.push(FieldResource {
                    record: d.record_id.clone(),
                    name: name.clone(),
                    category,
                    purpose: d.purpose,
                    subject: d.subject.clone(),
                    flags: crate::policy::FieldFlags {
                        record_closed: closed(&d.record_id),
                        // Its record may have been destroyed since: the register names it.
                        named_only: true,
                        ..Default::default()
                    },
                });
            }
            spans.push(start..resources.len());
        }
        let decisions = if resources.is_empty() {
            Vec::new()
        } else {
            self.decide(principal, Action::Export, ctx, &resources)?
        };
        Ok(spans
            .into_iter()
            .map(|span| {
                !span.is_empty()
                    && decisions
                        .get(span)
                        .is_some_and(|ds| ds.iter().all(Decision::is_allow))
            })
            .collect())
    }

    /// A new disclosure row with its MAC.
    #[expect(clippy::too_many_arguments, reason = "the parts of one disclosure")]
    fn disclosure_row(
        &self,
        subject: &str,
        record_id: &str,
        purpose: Purpose,
        fields: impl Iterator<Item = (String, Category)>,
        input: DisclosureInput,
        principal: &Principal,
        automatic: bool,
    ) -> DisclosureRow {
        let (names, categories): (Vec<String>, Vec<String>) =
            fields.map(|(n, c)| (n, c.as_str().to_owned())).unzip();
        self.rows.seal(
            DisclosureRow {
                id: format!("dsc_{}", hex::encode(rand::random::<[u8; 8]>())),
                subject: subject.into(),
                record_id: record_id.into(),
                purpose,
                fields: names,
                categories,
                recipient: input.recipient,
                recipient_kind: input.kind,
                legal_basis: input.legal_basis,
                case_ref: input.case_ref,
                disclosed_at: self.clock.now(),
                recorded_by: principal.id.as_str().into(),
                automatic,
                mac: Vec::new(),
            },
            |r, mac| r.mac = mac,
        )
    }
}
