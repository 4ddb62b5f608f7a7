//! The data lifecycle and subject rights: closing records, retention with crypto-shredding,
//! legal holds, erasure, and tracking subject requests against their four-week deadline (extended
//! by at most two months, GDPR art. 12(3)).
//!
//! Invariant: a record under an active legal hold is never destroyed; the store re-checks holds
//! inside the destroying transaction.
//! Invariant: a subject's key for a purpose is destroyed in the same transaction as their last
//! record under that purpose (crypto-shredding), so nothing readable is left behind.
//! Invariant: every destruction is on the audit trail before it happens.

use std::sync::Arc;

use super::{Vault, VaultError};
use crate::{
    audit::AuditEvent,
    domain::{
        self as domain, AccessContext, Clock, InputError, Need, Principal, Purpose, RecordId,
        RequestKind, RetentionStart, SubjectId, check_free_text, now_unix, request_due_at,
    },
    policy::{Action, AdminAction},
    store::{AnchorChange, HoldRow, RecordRow, RequestRow, StoreError},
};

/// Records destroyed (or, in a dry run, that would be) by a retention sweep.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Swept {
    /// The record.
    pub record_id: String,
    /// Its subject.
    pub subject: String,
    /// Its purpose.
    pub purpose: String,
    /// When it expired (unix seconds).
    pub expired_at: i64,
}

/// What an erasure did.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Erasure {
    /// Records destroyed.
    pub destroyed: Vec<String>,
    /// Purposes whose subject key was destroyed with them.
    pub shredded: Vec<String>,
    /// Records kept, with why: (record id, purpose, reason).
    pub kept: Vec<(String, String, String)>,
}

/// A subject request with its state.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RequestStatus {
    /// The request.
    pub request: RequestRow,
    /// Past its deadline and not answered.
    pub overdue: bool,
}

/// Longest hold reason, case reference or request note, in bytes.
const MAX_TEXT: usize = 1024;

/// The lease of a retention sweep under way (not of the periodic job: a node runs that, and an
/// officer's sweep may run on any node, one at a time).
const SWEEP_LEASE: &str = "retention-sweep-run";

impl Vault {
    /// Uses `clock` for the lifecycle's "now" (record times, retention, holds, requests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Closes a record (the tenancy ended, the case closed): retention that counts from closing
    /// starts now. Returns the record's expiry.
    pub fn close_record(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        record_id: &RecordId,
    ) -> Result<Option<i64>, VaultError> {
        let (record, rows) = self.load_metas(record_id)?;
        let meta = super::record_meta(&record)?;
        let subject = SubjectId::parse_stored(&record.subject).map_err(|_| {
            crate::store::StoreError::Corrupt(format!("subject of `{}`", record.id))
        })?;
        let mut resources = rows
            .iter()
            .map(|r| super::meta_resource(&record, meta.purpose, r))
            .collect::<Vec<_>>();
        // Evidence files are part of the record: closing is decided on them too.
        for ev in self.finished_evidence(record_id.as_str())? {
            resources.push(super::evidence_resource(&record, meta.purpose, &ev)?);
        }
        let decisions = self.decide(principal, Action::Close, ctx, &resources)?;
        self.require_all_then(
            principal,
            ctx,
            "close",
            &subject,
            record_id,
            &resources,
            &decisions,
            || match record.closed_at {
                Some(_) => Err(VaultError::FailedPrecondition(format!(
                    "record `{record_id}` is closed already"
                ))),
                None => Ok(()),
            },
        )?;
        let now = self.clock.now();
        let retention = self.retention.of(meta.purpose);
        let expires_at = match retention.from {
            RetentionStart::Closing => Some(now.saturating_add(i64::from(retention.days) * 86_400)),
            RetentionStart::Creation => record.expires_at,
        };
        let closed = RecordRow {
            closed_at: Some(now),
            expires_at,
            ..record
        };
        let mac = self.rows.mac(&closed);
        if !self
            .store
            .close_record(record_id.as_str(), now, expires_at, &mac)?
        {
            return Err(VaultError::FailedPrecondition(format!(
                "record `{record_id}` was closed or deleted meanwhile"
            )));
        }
        Ok(expires_at)
    }

    /// Places a legal hold on a subject (or one of their records): nothing it covers is
    /// destroyed until it is released.
    pub fn place_hold(
        &self,
        actor: &Principal,
        subject: &SubjectId,
        record: Option<&RecordId>,
        reason: &str,
        case_ref: &str,
    ) -> Result<HoldRow, VaultError> {
        check_free_text("reason", reason, "hold reason", MAX_TEXT, Need::Required)?;
        check_free_text(
            "case_ref",
            case_ref,
            "case reference",
            MAX_TEXT,
            Need::Required,
        )?;
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ManageHolds,
            "hold-place",
            Some(subject.as_str()),
            reason,
            Some(subject.as_str().into()),
        )?;
        if let Some(r) = record {
            let (row, _) = self.load_kept(r)?;
            if row.subject != subject.as_str() {
                return Err(
                    InputError::new("record_id", "the record belongs to another subject").into(),
                );
            }
        }
        let row = self.rows.seal(
            HoldRow {
                id: format!("hold_{}", hex::encode(rand::random::<[u8; 8]>())),
                subject: subject.as_str().into(),
                record_id: record.map(|r| r.as_str().to_owned()),
                reason: reason.into(),
                case_ref: case_ref.into(),
                placed_by: actor.id.as_str().into(),
                placed_at: self.clock.now(),
                released_at: None,
                released_by: None,
                mac: Vec::new(),
            },
            |r, mac| r.mac = mac,
        );
        event.record = row.record_id.clone();
        event.case_ref = Some(case_ref.into());
        event.target = Some(row.id.clone());
        // Checked before the entry, so that a subject whose restrictions do not add up gets no
        // hold on record that is not stored.
        self.subject_facts(subject.as_str())?;
        event.commit_then(|| {
            self.change_restrictions(
                subject.as_str(),
                |facts| facts.holds.push(row.clone()),
                |prev, next| self.store.insert_hold(&row, prev, next).map(|()| true),
            )
        })?;
        Ok(row)
    }

    /// Releases a legal hold.
    pub fn release_hold(
        &self,
        actor: &Principal,
        hold_id: &str,
        justification: &str,
    ) -> Result<(), VaultError> {
        // The id is written to the audit entry in clear, also when it names nothing.
        super::guard::check_text("hold_id", hold_id)?;
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageHolds,
            "hold-release",
            Some(hold_id),
            justification,
        )?;
        let hold = self
            .store
            .holds(None, true)?
            .into_iter()
            .find(|h| h.id == hold_id)
            .ok_or_else(|| VaultError::NotFound(format!("active hold `{hold_id}`")))?;
        self.rows.check(&hold)?;
        event.subject = Some(hold.subject.clone());
        event.record = hold.record_id.clone();
        let now = self.clock.now();
        let released = HoldRow {
            released_at: Some(now),
            released_by: Some(actor.id.as_str().into()),
            ..hold
        };
        let mac = self.rows.mac(&released);
        let released = HoldRow {
            mac: mac.clone(),
            ..released
        };
        let subject = released.subject.clone();
        event.commit_then(|| {
            if self.change_restrictions(
                &subject,
                |facts| {
                    for h in facts.holds.iter_mut().filter(|h| h.id == hold_id) {
                        *h = released.clone();
                    }
                },
                |prev, next| {
                    self.store.release_hold(
                        hold_id,
                        now,
                        actor.id.as_str(),
                        &mac,
                        AnchorChange { prev, next },
                    )
                },
            )? {
                Ok(())
            } else {
                Err(VaultError::FailedPrecondition(format!(
                    "hold `{hold_id}` was released meanwhile"
                )))
            }
        })
    }

    /// Holds, of one subject or all.
    pub fn list_holds(
        &self,
        actor: &Principal,
        subject: Option<&SubjectId>,
        include_released: bool,
    ) -> Result<Vec<HoldRow>, VaultError> {
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ManageHolds,
            "hold-list",
            subject.map(SubjectId::as_str),
            "",
            subject.map(|s| s.as_str().to_owned()),
        )?;
        let holds = self
            .store
            .holds(subject.map(SubjectId::as_str), !include_released)?;
        self.rows.check_all(&holds)?;
        event.reason = Some(format!("{} holds listed", holds.len()));
        event.commit()?;
        Ok(holds)
    }

    /// Destroys every record past its retention that no hold covers, one subject per
    /// transaction, with the subject key of each purpose the subject has nothing left under.
    /// A dry run only lists them. `actor` is `None` for the server's own sweeper.
    pub fn sweep_retention(
        &self,
        actor: Option<&Principal>,
        dry_run: bool,
    ) -> Result<Vec<Swept>, VaultError> {
        let template = match actor {
            Some(a) => self
                .require_admin(a, AdminAction::ManageLifecycle, "retention-sweep", None, "")?
                .into_template(),
            None => system_event("retention-sweep"),
        };
        // A real sweep waits for one under way on this node (it then finds what that one
        // left); a dry run changes nothing and goes on beside it.
        let _one_sweep = (!dry_run).then(|| {
            self.sweep_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        });
        // And one at a time among the nodes of a shared store, under a lease given up when the
        // sweep ends (a node that dies mid-sweep leaves it to the others after a minute).
        let lease = if dry_run {
            None
        } else {
            match self.job_lease(SWEEP_LEASE)? {
                Some(lease) => Some(lease),
                // The node's own sweep leaves it to the one under way.
                None if actor.is_none() => return Ok(Vec::new()),
                None => {
                    let why = "a retention sweep is under way on another node: try again when \
                               it has ended (it puts each record on the trail as it destroys it)";
                    self.audit.append(&AuditEvent {
                        time: now_unix(),
                        decision: "deny".into(),
                        reason: Some(format!("not carried out: {why}")),
                        ..template
                    })?;
                    return Err(VaultError::FailedPrecondition(why.into()));
                }
            }
        };
        let now = self.clock.now();
        let mut swept = Vec::new();
        // Pages follow (expiry, id), so records skipped (not authentic, a hold placed in
        // between) never block the ones after them.
        let mut after: Option<(i64, String)> = None;
        // A dry run lists everything at once; a real sweep works in pages of 500.
        let limit = if dry_run { 100_000 } else { 500 };
        loop {
            let page: Vec<RecordRow> = self.store.expired_records(
                now,
                after.as_ref().map(|(at, id)| (*at, id.as_str())),
                limit,
            )?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some((last.expires_at.unwrap_or(now), last.id.clone()));
            // A record whose row fails its MAC (an expiry moved forward by hand, say) is not
            // destroyed on its word: it is skipped and logged, and `store verify` names it.
            let batch: Vec<RecordRow> = page
                .into_iter()
                .filter(|r| self.rows.check(r).is_ok())
                .collect();
            let mut by_subject: std::collections::BTreeMap<String, Vec<RecordRow>> =
                Default::default();
            for r in batch {
                by_subject.entry(r.subject.clone()).or_default().push(r);
            }
            for (subject, records) in by_subject {
                // Checks every hold, consent, mandate and restriction row and the anchor over
                // them; on a failure (logged by the check) nothing of this subject is destroyed
                // on a forged word.
                let Ok(facts) = self.subject_facts(&subject) else {
                    continue;
                };
                // A restriction of processing (art. 18) keeps the data stored: the subject may
                // need it for a legal claim after the landlord no longer does (18(1)(c)). Its
                // records are destroyed by a sweep after the restriction is lifted.
                if facts.restrictions.iter().any(|r| r.lifted_at.is_none()) {
                    continue;
                }
                // A hold placed since the page was read, as the checked facts have it: kept.
                let listed: Vec<Swept> = records
                    .iter()
                    .filter(|r| !held_in(&facts, &r.id))
                    .map(|r| Swept {
                        record_id: r.id.clone(),
                        subject: subject.clone(),
                        purpose: r.purpose.as_str().into(),
                        expired_at: r.expires_at.unwrap_or(now),
                    })
                    .collect();
                if dry_run {
                    swept.extend(listed);
                    continue;
                }
                // The trail first: nothing is destroyed that is not on record.
                for s in &listed {
                    let mut event = AuditEvent {
                        time: now_unix(),
                        ..template.clone()
                    };
                    event.action = "retention-destroy".into();
                    event.subject = Some(subject.clone());
                    event.record = Some(s.record_id.clone());
                    event.purpose = Some(s.purpose.clone());
                    event.reason = Some(format!("retention ended at {}", s.expired_at));
                    self.audit.append(&event)?;
                }
                let ids: Vec<String> = listed.iter().map(|s| s.record_id.clone()).collect();
                if ids.is_empty() {
                    continue;
                }
                // Each named destroyed in the subject's anchor, in the transaction that destroys
                // them, over the facts read above: when the subject changed since (a hold
                // placed, another node's sweep), nothing is destroyed now and the next sweep
                // decides again.
                let mut next = facts.clone();
                next.destroyed.extend(ids.iter().cloned());
                let next = self.rows.anchor_of(&subject, &next);
                let change = AnchorChange {
                    prev: facts.anchor.as_ref(),
                    next: &next,
                };
                let (destroyed, shredded) = match self.store.shred_records(&subject, &ids, change) {
                    Ok(done) => done,
                    Err(StoreError::Stale(_) | StoreError::Held(_)) => (Vec::new(), Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                self.forget_shredded(&subject, &shredded);
                // A record the store kept after all (a hold placed in between, another change
                // to its subject), or that was gone by then (another node's sweep, an
                // erasure), is on the trail as not destroyed by this sweep, saying which.
                // The subject's facts now, read once for all it kept: whether a hold covers one.
                let facts_now = if destroyed.len() < listed.len() {
                    self.subject_facts(&subject).ok()
                } else {
                    None
                };
                for s in listed.iter().filter(|s| !destroyed.contains(&s.record_id)) {
                    let mut event = AuditEvent {
                        time: now_unix(),
                        ..template.clone()
                    };
                    event.action = "retention-destroy".into();
                    event.decision = "deny".into();
                    event.subject = Some(subject.clone());
                    event.record = Some(s.record_id.clone());
                    event.purpose = Some(s.purpose.clone());
                    // Its metadata only: whether the row is still there.
                    let gone = self.store.record_metas(&[s.record_id.as_str()])?.is_empty();
                    let held = !gone
                        && facts_now
                            .as_ref()
                            .is_some_and(|now| held_in(now, &s.record_id));
                    event.reason = Some(
                        if gone {
                            "not carried out: destroyed meanwhile (another node's sweep, or an \
                             erasure)"
                        } else if held {
                            "not carried out: a legal hold covers it now"
                        } else {
                            "not carried out: its subject changed meanwhile; the next sweep \
                             decides again"
                        }
                        .into(),
                    );
                    self.audit.append(&event)?;
                }
                swept.extend(
                    listed
                        .into_iter()
                        .filter(|s| destroyed.contains(&s.record_id)),
                );
            }
            if dry_run {
                break;
            }
            // Renewed after each page; taken over by another node (this one stalled past the
            // lease), the sweep stops here and that node goes on.
            if let Some(lease) = &lease
                && !lease.renew()?
            {
                tracing::warn!(
                    "another node took over the retention sweep; this one stops after {} records",
                    swept.len()
                );
                break;
            }
        }
        drop(lease);
        if actor.is_some() {
            let mut event = AuditEvent {
                time: now_unix(),
                ..template
            };
            event.reason = Some(if dry_run {
                format!("dry run: {} records due", swept.len())
            } else {
                format!("{} records destroyed", swept.len())
            });
            self.audit.append(&event)?;
        }
        Ok(swept)
    }

    /// Erases a subject (GDPR art. 17): destroys all their records and subject keys, except
    /// records under a legal hold or kept under a legal obligation; those are reported with why.
    /// A justification (the erasure request's reference) is required.
    pub fn erase_subject(
        &self,
        actor: &Principal,
        subject: &SubjectId,
        justification: &str,
    ) -> Result<Erasure, VaultError> {
        super::tokens::check_justification(justification, Need::Required)?;
        let template = self
            .require_admin_about(
                actor,
                AdminAction::ManageLifecycle,
                "erase-subject",
                Some(subject.as_str()),
                justification,
                Some(subject.as_str().into()),
            )?
            .into_template();
        let now = self.clock.now();
        // The holds as checked (each MAC, and the anchor over them), active ones.
        let facts = self.subject_facts(subject.as_str())?;
        let holds: Vec<HoldRow> = facts
            .holds
            .iter()
            .filter(|h| h.released_at.is_none())
            .cloned()
            .collect();
        let records = self.store.subject_records(subject.as_str())?;
        self.rows.check_all(records.iter().map(|(r, _)| r))?;
        let mut outcome = Erasure::default();
        let mut to_destroy = Vec::new();
        for (rec, _) in &records {
            let purpose: Purpose = rec.purpose;
            let hold = holds
                .iter()
                .find(|h| h.record_id.as_ref().is_none_or(|r| r == &rec.id));
            let live = rec.expires_at.is_none_or(|t| t > now);
            if let Some(h) = hold {
                outcome.kept.push((
                    rec.id.clone(),
                    rec.purpose.as_str().into(),
                    format!("legal hold `{}`: {} (case {})", h.id, h.reason, h.case_ref),
                ));
            } else if purpose.survives_erasure() && live {
                let until = rec
                    .expires_at
                    .map_or("the end of its retention".to_owned(), |t| {
                        format!("unix time {t}")
                    });
                outcome.kept.push((
                    rec.id.clone(),
                    rec.purpose.as_str().into(),
                    format!(
                        "kept under a legal obligation ({}) until {until}",
                        purpose.lawful_basis()
                    ),
                ));
            } else {
                to_destroy.push(rec.id.clone());
            }
        }
        let mut event = AuditEvent {
            time: now_unix(),
            ..template
        };
        event.subject = Some(subject.as_str().into());
        event.reason = Some(format!(
            "{} records to destroy, {} kept",
            to_destroy.len(),
            outcome.kept.len()
        ));
        // The records it destroys, by id: `store verify` holds the store to them.
        if !to_destroy.is_empty() {
            event.target = Some(to_destroy.join(","));
        }
        self.audit.append(&event)?;
        // Each named destroyed in the subject's anchor, in the transaction that destroys them,
        // over the facts the holds were read from. Refused by the store after its entry (a
        // hold placed or another change to the subject meanwhile): the trail says it was not
        // carried out.
        let mut next = facts.clone();
        next.destroyed.extend(to_destroy.iter().cloned());
        let next = self.rows.anchor_of(subject.as_str(), &next);
        let change = AnchorChange {
            prev: facts.anchor.as_ref(),
            next: &next,
        };
        // Called with nothing to destroy as well: the store's checks of its schema run on
        // every write, and an erasure that found nothing through an index swapped by hand
        // must not answer that it erased everything.
        let (destroyed, shredded) =
            match self
                .store
                .shred_records(subject.as_str(), &to_destroy, change)
            {
                Ok(done) => done,
                Err(StoreError::Stale(_)) => {
                    let e = VaultError::FailedPrecondition(format!(
                        "the holds or records of `{subject}` changed while it was being erased; \
                         nothing was erased: try again"
                    ));
                    return Err(self.not_written(Some(event), e));
                }
                Err(e) => return Err(self.not_written(Some(event), e.into())),
            };
        self.forget_shredded(subject.as_str(), &shredded);
        outcome.destroyed = destroyed;
        outcome.shredded = shredded;
        Ok(outcome)
    }

    /// Registers a subject request received at `received_at` (now when `None`); it is due at the
    /// end of the day four weeks later, in Amsterdam (`request_due_at`).
    pub fn open_request(
        &self,
        actor: &Principal,
        subject: &SubjectId,
        kind: RequestKind,
        received_at: Option<i64>,
        note: &str,
    ) -> Result<RequestRow, VaultError> {
        check_free_text("note", note, "note", MAX_TEXT, Need::Optional)?;
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ManageLifecycle,
            "request-open",
            Some(subject.as_str()),
            note,
            Some(subject.as_str().into()),
        )?;
        let received_at = received_at.unwrap_or_else(|| self.clock.now());
        if received_at > self.clock.now() {
            return Err(InputError::new("received_at", "lies in the future").into());
        }
        let row = self.rows.seal(
            RequestRow {
                id: format!("req_{}", hex::encode(rand::random::<[u8; 8]>())),
                subject: subject.as_str().into(),
                kind,
                received_at,
                due_at: request_due_at(received_at),
                extended_due_at: None,
                extension_reason: None,
                opened_by: actor.id.as_str().into(),
                completed_at: None,
                note: note.into(),
                mac: Vec::new(),
            },
            |r, mac| r.mac = mac,
        );
        event.target = Some(row.id.clone());
        event.reason = Some(format!("{} request, due at {}", row.kind, row.due_at));
        event.commit()?;
        self.store.insert_request(&row)?;
        Ok(row)
    }

    /// Marks a subject request answered.
    pub fn complete_request(
        &self,
        actor: &Principal,
        id: &str,
        justification: &str,
    ) -> Result<(), VaultError> {
        // The id is written to the audit entry in clear, also when it names nothing.
        super::guard::check_text("request_id", id)?;
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageLifecycle,
            "request-complete",
            Some(id),
            justification,
        )?;
        let Some(request) = self
            .store
            .requests()?
            .into_iter()
            .find(|r| r.id == id && r.completed_at.is_none())
        else {
            return Err(VaultError::NotFound(format!("open request `{id}`")));
        };
        self.rows.check(&request)?;
        let now = self.clock.now();
        let completed = RequestRow {
            completed_at: Some(now),
            ..request
        };
        let mac = self.rows.mac(&completed);
        event.target = Some(id.into());
        event.commit_then(|| {
            if self.store.complete_request(id, now, &mac)? {
                Ok(())
            } else {
                Err(VaultError::FailedPrecondition(format!(
                    "request `{id}` was completed meanwhile"
                )))
            }
        })
    }

    /// Extends the deadline of an open subject request (GDPR art. 12(3)) by `months` calendar
    /// months and `days` days from the deadline in force, at most two months beyond the original
    /// due date in all (several extensions together included). The reason is required and kept
    /// with the request; the request row's MAC covers the extended date.
    pub fn extend_request(
        &self,
        actor: &Principal,
        id: &str,
        months: u32,
        days: u32,
        reason: &str,
    ) -> Result<RequestStatus, VaultError> {
        // The id is written to the audit entry in clear, also when it names nothing.
        super::guard::check_text("request_id", id)?;
        check_free_text("reason", reason, "reason", MAX_TEXT, Need::Required)?;
        if months == 0 && days == 0 {
            return Err(InputError::new(
                "months",
                "an extension moves the deadline by at least one day (months and days are 0)",
            )
            .into());
        }
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageLifecycle,
            "request-extend",
            Some(id),
            "",
        )?;
        let Some(request) = self.store.requests()?.into_iter().find(|r| r.id == id) else {
            return Err(VaultError::NotFound(format!("request `{id}`")));
        };
        self.rows.check(&request)?;
        event.subject = Some(request.subject.clone());
        if request.completed_at.is_some() {
            return event.refuse(format!(
                "request `{id}` is answered already; only an open request is extended"
            ));
        }
        let limit = domain::request_extension_limit(request.due_at);
        let extended = domain::request_deadline_plus(request.due_in_force(), months, days)
            .filter(|&t| t <= limit)
            .ok_or_else(|| {
                InputError::new(
                    "months",
                    format!(
                        "{months} months and {days} days beyond the deadline in force ({}) pass \
                         the limit of {} months beyond the original due date ({}): at most until \
                         {}",
                        moment(request.due_in_force()),
                        domain::REQUEST_EXTENSION_MONTHS,
                        moment(request.due_at),
                        moment(limit)
                    ),
                )
            })?;
        let prev_mac = request.mac.clone();
        let row = self.rows.seal(
            RequestRow {
                extended_due_at: Some(extended),
                extension_reason: Some(reason.into()),
                ..request
            },
            |r, mac| r.mac = mac,
        );
        event.target = Some(id.into());
        event.reason = Some(format!(
            "due at {} extended to {} (by {months} months {days} days): {reason}",
            moment(row.due_at),
            moment(extended)
        ));
        event.commit_then(|| {
            if self
                .store
                .extend_request(id, &prev_mac, extended, reason, &row.mac)?
            {
                Ok(())
            } else {
                Err(VaultError::FailedPrecondition(format!(
                    "request `{id}` changed meanwhile; list it and try again"
                )))
            }
        })?;
        Ok(RequestStatus {
            overdue: self.clock.now() > extended,
            request: row,
        })
    }

    /// Subject requests with whether each is overdue; only open, overdue ones when asked.
    pub fn list_requests(
        &self,
        actor: &Principal,
        overdue_only: bool,
    ) -> Result<Vec<RequestStatus>, VaultError> {
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageLifecycle,
            "request-list",
            None,
            "",
        )?;
        let now = self.clock.now();
        let stored = self.store.requests()?;
        self.rows.check_all(&stored)?;
        let requests: Vec<RequestStatus> = stored
            .into_iter()
            .map(|request| RequestStatus {
                overdue: request.completed_at.is_none() && now > request.due_in_force(),
                request,
            })
            .filter(|s| !overdue_only || s.overdue)
            .collect();
        event.reason = Some(format!("{} requests listed", requests.len()));
        event.commit()?;
        Ok(requests)
    }

    /// Refuses when any hold of `subject`, active or released, fails its MAC, or when the
    /// subject's anchor counts a hold or consent state that is not stored: a hold released,
    /// edited or deleted by hand must not let destruction through. (The store re-checks the active
    /// holds in the destroying transaction.)
    pub(crate) fn check_holds(&self, subject: &str) -> Result<(), VaultError> {
        // `subject_facts` checks every hold row's MAC and the anchor over them.
        self.subject_facts(subject).map(drop)
    }

    fn forget_shredded(&self, subject: &str, purposes: &[String]) {
        if let Ok(subject) = SubjectId::parse_stored(subject) {
            for p in purposes.iter().filter_map(|p| p.parse::<Purpose>().ok()) {
                self.keyring.forget(&subject, p);
            }
        }
    }
}

/// Unix seconds as RFC 3339 in UTC, for messages (the number itself when out of range).
fn moment(t: i64) -> String {
    jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |m| m.to_string())
}

fn system_event(action: &str) -> AuditEvent {
    AuditEvent {
        principal: "kluis".into(),
        action: action.into(),
        decision: "allow".into(),
        ..AuditEvent::default()
    }
}

/// Whether an active legal hold in `facts` covers record `id` (one on its subject, or on it).
fn held_in(facts: &crate::store::SubjectFacts, id: &str) -> bool {
    facts
        .holds
        .iter()
        .any(|h| h.released_at.is_none() && h.record_id.as_ref().is_none_or(|r| r == id))
}
