//! Subject rights beyond access and erasure: consent and objection per purpose (GDPR art. 7 and
//! 21), restriction of processing (art. 18), and mandates ("volmacht") that let a representative
//! act for a subject within a scope. Each becomes a fact on the fields the policy decides on
//! (`objected`, `restricted`, `mandated`).
//!
//! Invariant: the facts are established from the store on every request, so a withdrawal,
//! objection, expiry or revocation takes effect at once.

use std::collections::{BTreeMap, BTreeSet};

use super::{Vault, VaultError};
use crate::{
    domain::{
        Category, ConsentState, InputError, Need, Principal, PrincipalId, Purpose, Role, SubjectId,
        check_free_text,
    },
    policy::{Action, AdminAction, Decision, FieldResource},
    store::{AnchorChange, ConsentRow, MandateRow, RestrictionRow, SubjectFacts},
};

/// Longest restriction reason, in bytes.
const MAX_REASON: usize = 1024;

/// A subject's stance on one purpose.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Consent {
    /// Consent given (consent-based purposes).
    Give,
    /// Consent withdrawn: the purpose stops processing the subject's data.
    Withdraw,
    /// Objection (purposes on legitimate interest that allow it): processing stops.
    Object,
}

impl Consent {
    /// Parses `given`, `withdrawn` or `objected`.
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        match s {
            "given" => Ok(Consent::Give),
            "withdrawn" => Ok(Consent::Withdraw),
            "objected" => Ok(Consent::Object),
            _ => Err(InputError::new(
                field,
                "expected `given`, `withdrawn` or `objected`",
            )),
        }
    }

    /// The state it leaves stored.
    fn state(self) -> ConsentState {
        match self {
            Consent::Give => ConsentState::Given,
            Consent::Withdraw => ConsentState::Withdrawn,
            Consent::Object => ConsentState::Objected,
        }
    }
}

impl Vault {
    /// Decides `action` on `resources` with the facts about the subjects filled in.
    pub(crate) fn decide(
        &self,
        principal: &Principal,
        action: Action,
        ctx: &crate::domain::AccessContext,
        resources: &[FieldResource],
    ) -> Result<Vec<Decision>, VaultError> {
        let facts = self.facts_of(principal, resources)?;
        self.decide_on(principal, action, ctx, resources, &facts)
    }

    /// The facts the policy decides on for `resources`, read once for several decisions about
    /// them (`decide_on`).
    pub(crate) fn facts_of(
        &self,
        principal: &Principal,
        resources: &[FieldResource],
    ) -> Result<DecisionFacts, VaultError> {
        let subjects: Vec<String> = resources
            .iter()
            .map(|r| r.subject.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let names: Vec<&str> = subjects.iter().map(String::as_str).collect();
        // Facts the policy decides on: each row must be authentic and the subject's anchor must
        // name them all as they are (none deleted, none an older copy), or nothing is decided.
        let all_facts = self.subjects_facts(&names)?;
        Ok(self.decision_facts(principal, subjects.into_iter().zip(&all_facts)))
    }

    /// The facts the policy decides on, from each subject's facts as read and checked
    /// (`subjects_facts`, or a record read with the facts of its subject).
    pub(crate) fn decision_facts<'a>(
        &self,
        principal: &Principal,
        checked: impl IntoIterator<Item = (String, &'a SubjectFacts)>,
    ) -> DecisionFacts {
        let now = self.clock.now();
        let mut out = BTreeMap::new();
        for (subject, facts) in checked {
            let stopped: BTreeSet<crate::domain::Purpose> = facts
                .consents
                .iter()
                .filter(|c| matches!(c.state, ConsentState::Withdrawn | ConsentState::Objected))
                .map(|c| c.purpose)
                .collect();
            // The mandates the subject gave this representative, from the same checked facts.
            let mandates: Vec<MandateRow> = if principal.roles.contains(&Role::Representative) {
                facts
                    .mandates
                    .iter()
                    .filter(|m| {
                        m.representative == principal.id.as_str()
                            && m.revoked_at.is_none()
                            && m.valid_from <= now
                            && now < m.valid_until
                    })
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            // A restriction in force (art. 18) shapes every field of the subject.
            let restricted = facts.restrictions.iter().any(|r| r.lifted_at.is_none());
            out.insert(
                subject,
                SubjectFlags {
                    stopped,
                    mandates,
                    restricted,
                    destroyed: facts.destroyed.iter().cloned().collect(),
                },
            );
        }
        DecisionFacts(out)
    }

    /// Why record `record`, read as stored and named destroyed by its subject's facts, is not
    /// obeyed: `NotFound` when it is no longer stored (destroyed between the reading of its
    /// row and of the facts), else data loss (its rows were put back by hand), logged.
    pub(crate) fn destroyed_stored(&self, record: &str) -> VaultError {
        match self.store.record_metas(&[record]) {
            Ok(stored) if stored.is_empty() => VaultError::NotFound(format!("record `{record}`")),
            Ok(_) => {
                tracing::error!(kind = "record", row = %record, "a destroyed record's rows are stored again (put back by hand) and are not obeyed; run `kluis admin store verify`");
                VaultError::DataLoss(
                    "a stored record of the subject (one that was destroyed, stored again)".into(),
                )
            }
            Err(e) => e.into(),
        }
    }

    /// A record's row and field metadata as `load_metas` reads them, refused when its subject's
    /// checked facts name it destroyed (`destroyed_stored`): for a path that acts on a record
    /// without deciding on its fields (a rectification, a hold on one record).
    pub(crate) fn load_kept(
        &self,
        record_id: &crate::domain::RecordId,
    ) -> Result<(crate::store::RecordRow, Vec<crate::store::FieldMeta>), VaultError> {
        let (record, metas) = self.load_metas(record_id)?;
        if self
            .subject_facts(&record.subject)?
            .destroyed
            .iter()
            .any(|d| d == record_id.as_str())
        {
            return Err(self.destroyed_stored(record_id.as_str()));
        }
        Ok((record, metas))
    }

    /// Decides `action` on `resources` with `facts` (from `facts_of` for the same principal
    /// and resources). A resource whose subject `facts` does not cover, or of a record its
    /// subject's facts name destroyed (its rows put back by hand), is refused as data loss.
    pub(crate) fn decide_on(
        &self,
        principal: &Principal,
        action: Action,
        ctx: &crate::domain::AccessContext,
        resources: &[FieldResource],
        facts: &DecisionFacts,
    ) -> Result<Vec<Decision>, VaultError> {
        let mut resources = resources.to_vec();
        for r in &mut resources {
            let Some(f) = facts.0.get(&r.subject) else {
                return Err(VaultError::DataLoss(
                    "a decision without the facts of its subject".into(),
                ));
            };
            if !r.flags.named_only && f.destroyed.contains(&r.record) {
                return Err(self.destroyed_stored(&r.record));
            }
            r.flags.restricted = f.restricted;
            r.flags.objected = f.stopped.contains(&r.purpose);
            r.flags.mandated = f.mandates.iter().any(|m| {
                m.purposes.iter().any(|p| p == r.purpose.as_str())
                    && m.categories.iter().any(|c| c == r.category.as_str())
            });
        }
        Ok(self
            .policy()
            .decide_fields(principal, action, ctx, &resources)?)
    }

    /// Records a subject's consent or objection for a purpose. Objection is for financial
    /// screening (the statement's promise); consent for home adaptation (medical data).
    pub fn record_consent(
        &self,
        actor: &Principal,
        subject: &SubjectId,
        purpose: Purpose,
        consent: Consent,
        justification: &str,
    ) -> Result<(), VaultError> {
        let allowed = match consent {
            Consent::Object => purpose == Purpose::FinancialScreening,
            Consent::Give | Consent::Withdraw => purpose == Purpose::HomeAdaptation,
        };
        if !allowed {
            return Err(InputError::new(
                "state",
                format!(
                    "`{}` does not apply to `{purpose}` (lawful basis: {}); objection is for \
                     `financial-screening`, consent for `home-adaptation`",
                    consent.state().as_str(),
                    purpose.lawful_basis()
                ),
            )
            .into());
        }
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ManageLifecycle,
            "consent",
            Some(subject.as_str()),
            justification,
            Some(subject.as_str().into()),
        )?;
        event.purpose = Some(purpose.as_str().into());
        event.reason = Some(consent.state().as_str().into());
        let row = self.rows.seal(
            ConsentRow {
                subject: subject.as_str().into(),
                purpose,
                state: consent.state(),
                at: self.clock.now(),
                recorded_by: actor.id.as_str().into(),
                mac: Vec::new(),
            },
            |r, mac| r.mac = mac,
        );
        event.commit_then(|| {
            self.change_restrictions(
                subject.as_str(),
                |facts| {
                    facts.consents.retain(|c| c.purpose != row.purpose);
                    facts.consents.push(row.clone());
                },
                |prev, next| self.store.set_consent(&row, prev, next).map(|()| true),
            )
            .map(drop)
        })
    }

    /// Records a mandate: `representative` may act for `subject` for these purposes and
    /// categories until `valid_until`.
    #[expect(clippy::too_many_arguments, reason = "the parts of one mandate")]
    pub fn grant_mandate(
        &self,
        actor: &Principal,
        subject: &SubjectId,
        representative: &PrincipalId,
        purposes: &[Purpose],
        categories: &[Category],
        valid_until: i64,
        justification: &str,
    ) -> Result<MandateRow, VaultError> {
        if purposes.is_empty() {
            return Err(InputError::new(
                "purposes",
                "a mandate names at least one purpose (and one category)",
            )
            .into());
        }
        if categories.is_empty() {
            return Err(InputError::new(
                "categories",
                "a mandate names at least one category (and one purpose)",
            )
            .into());
        }
        let now = self.clock.now();
        if valid_until <= now {
            return Err(InputError::new("valid_until", "lies in the past").into());
        }
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ManageLifecycle,
            "mandate-grant",
            Some(representative.as_str()),
            justification,
            Some(subject.as_str().into()),
        )?;
        let row = self.rows.seal(
            MandateRow {
                id: format!("mdt_{}", hex::encode(rand::random::<[u8; 8]>())),
                subject: subject.as_str().into(),
                representative: representative.as_str().into(),
                purposes: purposes.iter().map(|p| p.as_str().to_owned()).collect(),
                categories: categories.iter().map(|c| c.as_str().to_owned()).collect(),
                valid_from: now,
                valid_until,
                granted_by: actor.id.as_str().into(),
                revoked_at: None,
                mac: Vec::new(),
            },
            |r, mac| r.mac = mac,
        );
        event.target = Some(row.id.clone());
        event.reason = Some(format!(
            "for `{representative}`: purposes {} categories {} until {valid_until}",
            row.purposes.join(","),
            row.categories.join(",")
        ));
        // Checked before the entry, so that a subject whose restrictions do not add up gets no
        // mandate on record that is not stored.
        self.subject_facts(subject.as_str())?;
        event.commit_then(|| {
            self.change_restrictions(
                subject.as_str(),
                |facts| facts.mandates.push(row.clone()),
                |prev, next| {
                    self.store
                        .insert_mandate(&row, AnchorChange { prev, next })
                        .map(|()| true)
                },
            )
        })?;
        Ok(row)
    }

    /// Revokes a mandate at once.
    pub fn revoke_mandate(
        &self,
        actor: &Principal,
        id: &str,
        justification: &str,
    ) -> Result<(), VaultError> {
        // The id is written to the audit entry in clear, also when it names nothing.
        super::guard::check_text("mandate_id", id)?;
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageLifecycle,
            "mandate-revoke",
            Some(id),
            justification,
        )?;
        let found = self
            .store
            .mandates(None, None)?
            .into_iter()
            .find(|m| m.id == id && m.revoked_at.is_none());
        let Some(m) = found else {
            return Err(VaultError::NotFound(format!("active mandate `{id}`")));
        };
        self.rows.check(&m)?;
        event.subject = Some(m.subject.clone());
        let now = self.clock.now();
        let revoked = MandateRow {
            revoked_at: Some(now),
            ..m
        };
        let mac = self.rows.mac(&revoked);
        let revoked = MandateRow {
            mac: mac.clone(),
            ..revoked
        };
        let subject = revoked.subject.clone();
        event.commit_then(|| {
            if self.change_restrictions(
                &subject,
                |facts| {
                    for m in facts.mandates.iter_mut().filter(|m| m.id == id) {
                        *m = revoked.clone();
                    }
                },
                |prev, next| {
                    self.store
                        .revoke_mandate(id, now, &mac, AnchorChange { prev, next })
                },
            )? {
                Ok(())
            } else {
                Err(VaultError::FailedPrecondition(format!(
                    "mandate `{id}` was revoked meanwhile"
                )))
            }
        })
    }

    /// Mandates, of one subject or all.
    pub fn list_mandates(
        &self,
        actor: &Principal,
        subject: Option<&SubjectId>,
    ) -> Result<Vec<MandateRow>, VaultError> {
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ManageLifecycle,
            "mandate-list",
            subject.map(SubjectId::as_str),
            "",
            subject.map(|s| s.as_str().to_owned()),
        )?;
        let mandates = self.store.mandates(subject.map(SubjectId::as_str), None)?;
        self.rows.check_all(&mandates)?;
        event.reason = Some(format!("{} mandates listed", mandates.len()));
        event.commit()?;
        Ok(mandates)
    }

    /// Restricts the processing of `subject`'s data (GDPR art. 18): from now on it is stored but
    /// read, listed and exported only for a legal claim and by the privacy officer (policy
    /// `restriction-of-processing`). Refused while a restriction is in force already.
    pub fn restrict_processing(
        &self,
        actor: &Principal,
        subject: &SubjectId,
        reason: &str,
    ) -> Result<RestrictionRow, VaultError> {
        check_free_text("reason", reason, "reason", MAX_REASON, Need::Required)?;
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ManageLifecycle,
            "restrict",
            Some(subject.as_str()),
            "",
            Some(subject.as_str().into()),
        )?;
        let facts = self.subject_facts(subject.as_str())?;
        if let Some(r) = facts.restrictions.iter().find(|r| r.lifted_at.is_none()) {
            return Err(VaultError::FailedPrecondition(format!(
                "the processing of `{subject}` is restricted already (restriction `{}`)",
                r.id
            )));
        }
        let row = self.rows.seal(
            RestrictionRow {
                id: format!("rst_{}", hex::encode(rand::random::<[u8; 8]>())),
                subject: subject.as_str().into(),
                reason: reason.into(),
                placed_by: actor.id.as_str().into(),
                placed_at: self.clock.now(),
                lifted_at: None,
                lifted_by: None,
                mac: Vec::new(),
            },
            |r, mac| r.mac = mac,
        );
        event.target = Some(row.id.clone());
        event.reason = Some(format!("restricted: {reason}"));
        event
            .commit_then(|| {
                self.change_restrictions(
                    subject.as_str(),
                    |facts| facts.restrictions.push(row.clone()),
                    |prev, next| {
                        if let Some(r) = self
                            .store
                            .restrictions(Some(subject.as_str()))?
                            .iter()
                            .find(|r| r.lifted_at.is_none())
                        {
                            return Err(crate::store::StoreError::Exists(format!(
                                "restriction `{}`",
                                r.id
                            )));
                        }
                        self.store
                            .insert_restriction(&row, AnchorChange { prev, next })
                            .map(|()| true)
                    },
                )
            })
            .map_err(|e| match e {
                VaultError::Store(crate::store::StoreError::Exists(what)) => {
                    VaultError::FailedPrecondition(format!(
                        "the processing of `{subject}` was restricted meanwhile ({what})"
                    ))
                }
                other => other,
            })?;
        Ok(row)
    }

    /// Lifts the restriction of processing in force for `subject`: their data is read as before.
    pub fn lift_restriction(
        &self,
        actor: &Principal,
        subject: &SubjectId,
        justification: &str,
    ) -> Result<RestrictionRow, VaultError> {
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ManageLifecycle,
            "restriction-lift",
            Some(subject.as_str()),
            justification,
            Some(subject.as_str().into()),
        )?;
        let facts = self.subject_facts(subject.as_str())?;
        let Some(active) = facts
            .restrictions
            .into_iter()
            .find(|r| r.lifted_at.is_none())
        else {
            return Err(VaultError::NotFound(format!(
                "a restriction in force for `{subject}`"
            )));
        };
        let now = self.clock.now();
        let lifted = self.rows.seal(
            RestrictionRow {
                lifted_at: Some(now),
                lifted_by: Some(actor.id.as_str().into()),
                ..active
            },
            |r, mac| r.mac = mac,
        );
        event.target = Some(lifted.id.clone());
        let id = lifted.id.clone();
        event.commit_then(|| {
            if self.change_restrictions(
                subject.as_str(),
                |facts| {
                    for r in facts.restrictions.iter_mut().filter(|r| r.id == id) {
                        *r = lifted.clone();
                    }
                },
                |prev, next| {
                    self.store.lift_restriction(
                        &id,
                        now,
                        actor.id.as_str(),
                        &lifted.mac,
                        AnchorChange { prev, next },
                    )
                },
            )? {
                Ok(())
            } else {
                Err(VaultError::FailedPrecondition(format!(
                    "restriction `{id}` was lifted meanwhile"
                )))
            }
        })?;
        Ok(lifted)
    }

    /// Restrictions of processing (lifted ones included), of one subject or all, each checked.
    pub fn list_restrictions(
        &self,
        actor: &Principal,
        subject: Option<&SubjectId>,
    ) -> Result<Vec<RestrictionRow>, VaultError> {
        let mut event = self.require_admin_about(
            actor,
            AdminAction::ManageLifecycle,
            "restriction-list",
            subject.map(SubjectId::as_str),
            "",
            subject.map(|s| s.as_str().to_owned()),
        )?;
        let rows = match subject {
            // One subject's through its anchor, so that a row deleted by hand fails closed.
            Some(s) => self.subject_facts(s.as_str())?.restrictions,
            // Every subject's: each subject that has one read through its anchor as well (an
            // older copy put back, or a sibling row deleted, fails closed); a subject whose
            // rows were all deleted by hand is found by `kluis admin store verify`, which
            // compares the trail with the store.
            None => {
                let listed = self.store.restrictions(None)?;
                let subjects: Vec<&str> = listed
                    .iter()
                    .map(|r| r.subject.as_str())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let mut rows = Vec::with_capacity(listed.len());
                for chunk in subjects.chunks(1000) {
                    for facts in self.subjects_facts(chunk)? {
                        rows.extend(facts.restrictions);
                    }
                }
                rows.sort_by(|a, b| (a.placed_at, &a.id).cmp(&(b.placed_at, &b.id)));
                rows
            }
        };
        event.reason = Some(format!("{} restrictions listed", rows.len()));
        event.commit()?;
        Ok(rows)
    }

    /// The restrictions of `subject` (lifted ones included), checked against the anchor; for
    /// answers that already decided the caller may know of the subject (export, access report).
    pub(crate) fn restrictions_of(
        &self,
        subject: &SubjectId,
    ) -> Result<Vec<RestrictionRow>, VaultError> {
        Ok(self.subject_facts(subject.as_str())?.restrictions)
    }
}

/// What a decision needs to know of each subject, from its checked facts (`Vault::facts_of`).
#[derive(Debug)]
pub(crate) struct DecisionFacts(BTreeMap<String, SubjectFlags>);

impl DecisionFacts {
    /// Whether the facts of `subject` name record `record` destroyed; refused as data loss
    /// when these are not the facts of `subject`.
    pub(crate) fn names_destroyed(&self, subject: &str, record: &str) -> Result<bool, VaultError> {
        match self.0.get(subject) {
            Some(f) => Ok(f.destroyed.contains(record)),
            None => Err(VaultError::DataLoss(
                "a record shown without the facts of its subject".into(),
            )),
        }
    }

    /// Whether these are the facts of every subject of `resources`.
    pub(crate) fn covers(&self, resources: &[FieldResource]) -> bool {
        resources.iter().all(|r| self.0.contains_key(&r.subject))
    }
}

#[derive(Debug)]
struct SubjectFlags {
    /// Purposes the subject withdrew consent for or objected to.
    stopped: BTreeSet<crate::domain::Purpose>,
    /// The mandates in force the subject gave the deciding representative.
    mandates: Vec<MandateRow>,
    /// Whether a restriction of processing is in force.
    restricted: bool,
    /// The subject's records that were destroyed: rows of one put back by hand are decided on
    /// for nobody.
    destroyed: BTreeSet<String>,
}
