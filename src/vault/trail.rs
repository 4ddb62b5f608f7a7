//! Reading the audit trail: its MAC'd head, verification, export for the privacy officer, and
//! the "who accessed my data, and why" report of one subject (GDPR art. 15). Each is
//! policy-checked (`read-audit`, `verify-audit`) and is itself audited.

use super::{Vault, VaultError};
use crate::{
    audit::{AuditEvent, Filter, Head, Verification},
    domain::{Principal, SubjectId},
    policy::AdminAction,
};

/// The data actions a subject access report lists.
pub const DATA_ACTIONS: &[&str] = &[
    "read",
    "write",
    "update",
    "delete",
    "list",
    "close",
    "export",
    "evidence-read",
    "evidence-upload",
];

impl Vault {
    /// The trail's MAC'd head, for anchoring elsewhere.
    pub fn audit_head(&self, actor: &Principal) -> Result<Head, VaultError> {
        let mut event =
            self.require_admin(actor, AdminAction::VerifyAudit, "audit-head", None, "")?;
        let head = self.audit.head()?;
        event.reason = Some(format!("head at entry {}", head.seq));
        event.commit()?;
        Ok(head)
    }

    /// Verifies the whole trail, and against an anchored head when given.
    pub fn verify_audit(
        &self,
        actor: &Principal,
        expect: Option<&Head>,
    ) -> Result<Verification, VaultError> {
        let mut event =
            self.require_admin(actor, AdminAction::VerifyAudit, "audit-verify", None, "")?;
        // Verify first, then record that it was done: the record is not part of what was checked.
        let outcome = self.audit.verify(expect)?;
        event.reason = Some(match &outcome {
            Verification::Intact { count, .. } => format!("intact, {count} entries"),
            Verification::Broken { seq, problem } => format!("broken at entry {seq}: {problem}"),
        });
        event.commit()?;
        Ok(outcome)
    }

    /// Starts an export for the privacy or security officer: checks the policy, records the
    /// export, and returns the sequence number it stops before (the export is a snapshot).
    pub fn begin_audit_export(
        &self,
        actor: &Principal,
        filter: &Filter,
        justification: &str,
    ) -> Result<u64, VaultError> {
        let mut event = self.require_admin(
            actor,
            AdminAction::ReadAudit,
            "audit-export",
            filter.subject.as_deref(),
            justification,
        )?;
        event.subject = filter.subject.clone();
        event.reason = Some(describe(filter));
        Ok(event.commit()?.value())
    }

    /// Calls `f` with each entry before `upto` matching `filter` (sequence number and the entry
    /// as stored, JSON), until it returns false. Only after `begin_audit_export`.
    pub fn scan_audit_export(
        &self,
        filter: &Filter,
        upto: u64,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), VaultError> {
        self.audit
            .scan(filter, |seq, _event, raw| seq < upto && f(seq, raw))?;
        Ok(())
    }

    /// Every recorded access to `subject`'s data: who, in which role, for which purpose and case,
    /// why, which fields, and the decision.
    pub fn subject_access_report(
        &self,
        actor: &Principal,
        subject: &SubjectId,
        justification: &str,
    ) -> Result<Vec<(u64, AuditEvent)>, VaultError> {
        let mut event = self.require_admin(
            actor,
            AdminAction::ReadAudit,
            "subject-access-report",
            Some(subject.as_str()),
            justification,
        )?;
        event.subject = Some(subject.as_str().into());
        let upto = event.commit()?.value();
        let filter = Filter {
            subject: Some(subject.as_str().into()),
            actions: DATA_ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
            ..Filter::default()
        };
        let mut out = Vec::new();
        self.audit.scan(&filter, |seq, e, _| {
            if seq < upto {
                out.push((seq, e.clone()));
            }
            seq < upto
        })?;
        Ok(out)
    }
}

fn describe(filter: &Filter) -> String {
    let mut parts = Vec::new();
    if let Some(s) = &filter.subject {
        parts.push(format!("subject={s}"));
    }
    if let Some(p) = &filter.principal {
        parts.push(format!("principal={p}"));
    }
    if let Some(t) = filter.since {
        parts.push(format!("since={t}"));
    }
    if filter.break_glass {
        parts.push("break-glass".into());
    }
    if parts.is_empty() {
        "all entries".into()
    } else {
        parts.join(" ")
    }
}
