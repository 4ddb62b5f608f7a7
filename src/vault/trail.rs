//! Reading the audit trail: its MAC'd head, verification, export for the privacy officer, and
//! the "who accessed my data, and why" report of one subject (GDPR art. 15). Each is
//! policy-checked (`read-audit`, `verify-audit`) and is itself audited.

use super::{Vault, VaultError};
use crate::{
    audit::{AuditError, AuditEvent, ChainedEntry, Filter, Head, Verification},
    domain::{InputError, Principal, SubjectId},
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
    "evidence-export",
    "rectify",
    "found",
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
        match (event.commit(), outcome) {
            (Ok(_), outcome) => Ok(outcome),
            // A trail broken at its end (rows copied or inserted by hand before the last entry
            // this node committed) takes no entry until it is put back: the security officer
            // still learns where it is broken, told that this answer is not on the trail.
            (Err(e), Verification::Broken { seq, problem }) => {
                tracing::warn!(error = %e, seq, "a verification that found the trail broken could not be put on it");
                Ok(Verification::Broken {
                    seq,
                    problem: format!(
                        "{problem} (this verification is not on the trail, which took no entry: \
                         {e})"
                    ),
                })
            }
            (Err(e), Verification::Intact { .. }) => Err(e),
        }
    }

    /// Starts an export for the privacy or security officer: checks the policy, records the
    /// export, and returns the sequence number it stops before (the export is a snapshot).
    pub fn begin_audit_export(
        &self,
        actor: &Principal,
        filter: &Filter,
        justification: &str,
    ) -> Result<u64, VaultError> {
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ReadAudit,
            "audit-export",
            filter.subject.as_deref(),
            justification,
            filter.subject.clone(),
        )?;
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

    /// Starts a watch of the trail for the privacy or security officer (shipping to a SIEM):
    /// checks the policy and records the watch, saying where it starts. Returns the entry it
    /// starts at and its own entry: after `after` when given (it must not lie beyond the
    /// trail), else the last `last` entries up to and including its own.
    pub fn begin_audit_watch(
        &self,
        actor: &Principal,
        after: Option<u64>,
        last: u64,
        follow: bool,
        justification: &str,
    ) -> Result<AuditWatch, VaultError> {
        let mut event = self.require_admin(
            actor,
            AdminAction::ReadAudit,
            "audit-watch",
            None,
            justification,
        )?;
        let head = self.audit.head()?.seq;
        // Its own entry is the next one, unless another node commits first: then later.
        let start = match after {
            Some(after) if after > head => {
                return Err(InputError::new(
                    "after_seq",
                    format!(
                        "entry {after} is beyond the trail, which ends at entry {head}: resume \
                        from a sequence number this store's trail has given (is it the right \
                        server?)"
                    ),
                )
                .into());
            }
            Some(after) => after + 1,
            None => (head + 2).saturating_sub(last).max(1),
        };
        let how = if follow {
            "following"
        } else {
            "up to this entry"
        };
        event.reason = Some(format!("from entry {start}, {how}"));
        let own = event.commit()?.value();
        Ok(AuditWatch { start, own })
    }

    /// Entries of the trail from `from` on, checked (`Audit::chained_entries`): for a watch
    /// begun with `begin_audit_watch`.
    pub fn audit_entries_from(
        &self,
        from: u64,
        prev: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<ChainedEntry>, VaultError> {
        // An entry that fails its checks is a damaged store (`DATA_LOSS`), not an internal error.
        self.audit
            .chained_entries(from, prev, limit)
            .map_err(|e| match e {
                AuditError::Store(e) => VaultError::Store(e),
                other => other.into(),
            })
    }

    /// News of this process's commits to the trail (`Audit::commits`).
    pub fn audit_commits(&self) -> tokio::sync::watch::Receiver<(u64, bool)> {
        self.audit.commits()
    }

    /// Every recorded access to `subject`'s data: who, in which role, for which purpose and case,
    /// why, which fields, and the decision; and the subject's disclosure register (a row that
    /// fails its MAC refuses the report, `DATA_LOSS`).
    ///
    /// One answer holds at most `Limits::max_report_accesses` accesses, as that is what the
    /// answer costs in memory: `page` asks for those after an entry, at most so many (a larger
    /// page holds as many as the limit); a report
    /// asked for whole that holds more is refused (`FailedPrecondition`, after its entry, with a
    /// second entry saying it was not given). Each page is a decision and an entry of its own,
    /// listing the accesses before that entry.
    pub fn subject_access_report(
        &self,
        actor: &Principal,
        subject: &SubjectId,
        justification: &str,
        page: ReportPage,
    ) -> Result<SubjectAccessReport, VaultError> {
        let most = self.limits.max_report_accesses;
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ReadAudit,
            "subject-access-report",
            Some(subject.as_str()),
            justification,
            Some(subject.as_str().into()),
        )?;
        // The disclosure register of the subject, every row checked before the entry is written;
        // with the first page only, and only for a reader who may see the register
        // (`manage-lifecycle`: the privacy officer), never for the security officer, who reads
        // the trail but no personal data.
        let disclosures = if page.after == 0
            && self
                .policy()
                .decide_admin(actor, AdminAction::ManageLifecycle)?
                .is_allow()
        {
            self.subject_disclosures(subject.as_str())?
        } else {
            Vec::new()
        };
        // A page asked larger than the limit holds as many as the limit.
        let size = page.size.map_or(most, |size| size.clamp(1, most));
        if page.after > 0 || page.size.is_some() {
            event.reason = Some(match page.size {
                Some(_) => format!("at most {size} accesses after entry {}", page.after),
                None => format!("the accesses after entry {}", page.after),
            });
        }
        let filter = Filter {
            subject: Some(subject.as_str().into()),
            actions: DATA_ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
            ..Filter::default()
        };
        event.commit_then_at(|own| {
            let upto = own.value();
            // A page can only begin before its own entry: a later `after_seq` was never a
            // `next_after_seq`, and its empty page would pass for the end of the report.
            if page.after >= upto {
                return Err(InputError::new(
                    "after_seq",
                    "is past the end of the trail: begin with 0, then give the last answer's \
                     `next_after_seq`",
                )
                .into());
            }
            // One more than the page holds: whether the report goes on after it.
            let mut out = Vec::with_capacity(size.saturating_add(1).min(1024));
            self.audit
                .scan_from(&filter, page.after.saturating_add(1), |seq, e, _| {
                    if seq >= upto {
                        return false;
                    }
                    out.push((seq, e.clone()));
                    out.len() <= size
                })?;
            let mut next_after = None;
            if out.len() > size {
                if page.size.is_none() {
                    return Err(VaultError::FailedPrecondition(format!(
                        "the report holds more than {most} accesses \
                         (`limits.max_report_accesses`): ask for it in pages, `page_size` 1 to \
                         {most} and `after_seq` the last answer's `next_after_seq`"
                    )));
                }
                out.truncate(size);
                next_after = out.last().map(|(seq, _)| *seq);
            }
            Ok(SubjectAccessReport {
                events: out,
                disclosures,
                next_after,
            })
        })
    }
}

/// What the privacy officer reports to a subject: every recorded access to their data (with
/// its sequence number) and their disclosure register.
#[derive(Debug)]
pub struct SubjectAccessReport {
    /// The accesses, oldest first.
    pub events: Vec<(u64, AuditEvent)>,
    /// The disclosures of their data, oldest first (with the first page).
    pub disclosures: Vec<crate::store::DisclosureRow>,
    /// Where the next page begins (the last access of this one), when the report goes on.
    pub next_after: Option<u64>,
}

/// Which accesses of a subject access report to answer.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReportPage {
    /// Only those after this entry (0: from the first).
    pub after: u64,
    /// At most this many (and at most `Limits::max_report_accesses`); `None`: the whole
    /// report, which may hold no more than that limit.
    pub size: Option<usize>,
}

/// Where a watch of the trail starts (`Vault::begin_audit_watch`).
#[derive(Clone, Copy, Debug)]
pub struct AuditWatch {
    /// The first entry to send.
    pub start: u64,
    /// The entry that records the watch.
    pub own: u64,
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
