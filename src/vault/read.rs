//! Reading a record, in two steps around its audit entry: the decision (the record loaded, the
//! policy asked for every field, the entry written out, the answer's bytes held), and, once the
//! entry is committed, the opening of what the policy allowed.
//!
//! A read served over gRPC (`Vault::get_record_then`) queues its entry and leaves the opening to
//! the thread that commits it (`Audit::append_then`): no thread sleeps per read waiting for the
//! commit, the way a caller of `Vault::get_record` does.
//!
//! Invariant: nothing is opened before the read's entry is committed: the grants that open the
//! values need the `AuditSeq` of that entry, which only a committed append gives.

use std::sync::Arc;

use super::{
    FieldGrant, READ_MASKED, RecordMeta, RecordView, Vault, VaultError, Withheld, answers,
    audit_fields, distinct_reasons, record_meta, resource,
};
use crate::{
    audit::{AuditEvent, AuditSeq},
    domain::{AccessContext, Category, FieldKind, FieldName, Principal, RecordId, SubjectId},
    policy::{Action, Decision, FieldResource},
    store::{FieldRow, RecordRead, RecordRow, StoreError},
};

/// A field named by the caller that the record does not hold, and one it holds that the caller
/// may not know of, get the same answer.
const UNAVAILABLE: &str = "not in this record, or not yours to know of";

/// A read decided and not yet opened: what its entry says, and what opening it needs.
struct Decided {
    record_id: RecordId,
    loaded: Loaded,
    /// The fields of the read, by their place in `rows`, in the order of `resources`.
    selected: Vec<usize>,
    resources: Vec<FieldResource>,
    decisions: Vec<Decision>,
    /// For a field denied `read`, the masked view the policy allowed instead.
    masked: Vec<Option<Decision>>,
    /// Whether the caller may know of each field (asked only when something is withheld).
    known: Vec<Decision>,
    withheld: Vec<Withheld>,
    /// Whether the caller named fields (a named field denied is answered as not held).
    named: bool,
    subject: SubjectId,
    meta: RecordMeta,
    hold: Option<answers::AnswerHold>,
    /// The sealed bytes of the fields returned.
    bytes: usize,
}

/// A record and its fields as a read loaded them: shared with the store when read with the
/// facts of its subject (`RecordStore::record_with_facts`), else its own.
enum Loaded {
    Shared(Arc<RecordRead>),
    Own(RecordRow, Vec<FieldRow>),
}

impl Loaded {
    fn record(&self) -> &RecordRow {
        match self {
            Loaded::Shared(read) => &read.record,
            Loaded::Own(record, _) => record,
        }
    }

    fn rows(&self) -> &[FieldRow] {
        match self {
            Loaded::Shared(read) => &read.fields,
            Loaded::Own(_, rows) => rows,
        }
    }
}

/// The most sealed bytes a read opens on the thread that commits its entry (`get_record_then`);
/// a larger read waits for its entry and opens its values on its own call thread, under its
/// place, as `get_record` does: the committing thread opens the values of every read in its
/// batch in turn, and one large answer there would hold up the answers of all the others.
const OPENED_BY_COMMITTER: usize = 64 * 1024;

impl Decided {
    /// Whether field `i` is returned, whole or masked.
    fn returned(&self, i: usize) -> bool {
        self.decisions.get(i).is_some_and(Decision::is_allow)
            || self.masked.get(i).is_some_and(Option::is_some)
    }

    /// Whether anything is returned.
    fn any_returned(&self) -> bool {
        (0..self.decisions.len()).any(|i| self.returned(i))
    }
}

impl Vault {
    /// Reads a record: the fields in `wanted` (all when empty) that the policy allows, decrypted;
    /// the others withheld with the reason. Denied when nothing may be returned.
    pub fn get_record(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        record_id: &RecordId,
        wanted: &[FieldName],
    ) -> Result<RecordView, VaultError> {
        let (event, decided) = self.decide_read(principal, ctx, record_id, wanted)?;
        let seq = self.audit.append(&event)?;
        self.open_read(decided, &seq)
    }

    /// [`Vault::get_record`] without waiting for the read's entry to be committed: returns once
    /// the read is decided and its entry queued, and `then` gets the answer once the entry is
    /// committed (on the thread that committed it), or the error. A read of more than
    /// `OPENED_BY_COMMITTER` sealed bytes waits for its entry and runs `then` before it
    /// returns. A read refused before its entry is queued (bad input, an unknown record, the
    /// answer's bytes over the caller's share) returns the error here and never runs `then`.
    pub fn get_record_then(
        self: &Arc<Self>,
        principal: &Principal,
        ctx: &AccessContext,
        record_id: &RecordId,
        wanted: &[FieldName],
        then: impl FnOnce(Result<RecordView, VaultError>) + Send + 'static,
    ) -> Result<(), VaultError> {
        let (event, decided) = self.decide_read(principal, ctx, record_id, wanted)?;
        if decided.bytes > OPENED_BY_COMMITTER {
            let seq = self.audit.append(&event)?;
            then(
                self.open_read(decided, &seq)
                    .map_err(|e| self.after_failure(e)),
            );
            return Ok(());
        }
        let vault = Arc::clone(self);
        self.audit.append_then(&event, move |seq| {
            let view = seq
                .map_err(VaultError::from)
                .and_then(|seq| vault.open_read(decided, &seq))
                .map_err(|e| vault.after_failure(e));
            then(view);
        })?;
        Ok(())
    }

    /// Everything of a read before its entry: loads the record, asks the policy, registers a
    /// disclosure to an external party, and holds the answer's bytes; returns the entry to write.
    fn decide_read(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        record_id: &RecordId,
        wanted: &[FieldName],
    ) -> Result<(AuditEvent, Decided), VaultError> {
        // A read that names one field reads that field's value only; one of all its fields
        // reads them with the facts of its subject, together.
        let loaded = match wanted {
            [one] => {
                let (record, rows) = self.load_one(record_id, one)?;
                Loaded::Own(record, rows)
            }
            _ => Loaded::Shared(self.load_with_facts(record_id)?),
        };
        let (record, rows) = (loaded.record(), loaded.rows());
        let meta = record_meta(record)?;
        let subject = SubjectId::parse_stored(&record.subject)
            .map_err(|_| StoreError::Corrupt(format!("subject of `{}`", record.id)))?;
        let mut withheld = Vec::new();
        let mut selected = Vec::new();
        if wanted.is_empty() {
            selected.extend(0..rows.len());
        } else {
            for name in wanted {
                match rows.iter().position(|r| r.name == name.as_str()) {
                    Some(i) => selected.push(i),
                    None => withheld.push(Withheld {
                        name: name.as_str().into(),
                        reason: UNAVAILABLE.into(),
                    }),
                }
            }
        }
        let resources = selected
            .iter()
            .filter_map(|&i| rows.get(i))
            .map(|r| resource(record, meta.purpose, r))
            .collect::<Result<Vec<_>, _>>()?;
        // Every decision of this read (read, a masked view, knowing of a field) on the same
        // facts, read once.
        let facts = match &loaded {
            Loaded::Shared(read) => {
                self.decision_facts(principal, [(record.subject.clone(), &read.facts)])
            }
            Loaded::Own(..) => self.facts_of(principal, &resources)?,
        };
        let decisions = self.decide_on(principal, Action::Read, ctx, &resources, &facts)?;
        // A field denied `read` may still be allowed a masked view; binary values never are.
        let maskable: Vec<usize> = decisions
            .iter()
            .zip(selected.iter().filter_map(|&i| rows.get(i)))
            .enumerate()
            .filter(|(_, (d, row))| !d.is_allow() && row.kind == FieldKind::Text)
            .map(|(i, _)| i)
            .collect();
        let mut masked: Vec<Option<Decision>> = vec![None; decisions.len()];
        if !maskable.is_empty() {
            let candidates: Vec<FieldResource> = maskable
                .iter()
                .filter_map(|&i| resources.get(i).cloned())
                .collect();
            let masked_decisions =
                self.decide_on(principal, Action::ReadMasked, ctx, &candidates, &facts)?;
            for (&i, d) in maskable.iter().zip(masked_decisions) {
                if d.is_allow()
                    && let Some(slot) = masked.get_mut(i)
                {
                    *slot = Some(d);
                }
            }
        }
        let mut decided = Decided {
            record_id: record_id.clone(),
            loaded,
            selected,
            resources,
            decisions,
            masked,
            known: Vec::new(),
            withheld,
            named: !wanted.is_empty(),
            subject,
            meta,
            hold: None,
            bytes: 0,
        };
        // Which withheld fields the caller may know of: only those are named with a reason.
        // Asked only when something is withheld (the common read withholds nothing).
        if !(0..decided.decisions.len()).all(|i| decided.returned(i)) {
            decided.known =
                self.decide_on(principal, Action::List, ctx, &decided.resources, &facts)?;
        }

        let mut event = self.event(
            principal,
            ctx,
            "read",
            Some(&decided.subject),
            Some(record_id),
        );
        event.fields = audit_fields(&decided.resources, &decided.decisions);
        for (field, m) in event.fields.iter_mut().zip(&decided.masked) {
            if let Some(m) = m {
                field.decision = READ_MASKED.into();
                field.policies = m.policies.clone();
            }
        }
        let any_allowed = decided.any_returned();
        // A place for the values this read will open (`answers`), taken once the policy has
        // allowed them and before anything is registered, written or opened: a refusal says
        // nothing of a record, or of fields, the caller may not read.
        if any_allowed {
            let bytes = decided
                .selected
                .iter()
                .enumerate()
                .filter(|(i, _)| decided.returned(*i))
                .filter_map(|(_, &r)| decided.loaded.rows().get(r))
                .map(|r| r.sealed.len())
                .sum();
            decided.hold = Some(self.answers.hold(principal.id.as_str(), bytes)?);
            decided.bytes = bytes;
        }
        event.decision = if any_allowed { "allow" } else { "deny" }.into();
        if any_allowed {
            // A read by an external party is a disclosure: registered before its entry is
            // written and before anything is opened, or the read does not happen.
            let disclosed: Vec<&FieldResource> = decided
                .resources
                .iter()
                .enumerate()
                .filter(|(i, _)| decided.returned(*i))
                .map(|(_, r)| r)
                .collect();
            event.target =
                self.register_external_read(principal, ctx, decided.loaded.record(), &disclosed)?;
        }
        Ok((event, decided))
    }

    /// The rest of a read once its entry is committed (`seq`): the refusal when nothing may be
    /// returned, else the granted fields opened.
    fn open_read(&self, mut decided: Decided, seq: &AuditSeq) -> Result<RecordView, VaultError> {
        if !decided.any_returned() {
            // Name the rules, not the fields, and only the rules about fields the caller may know
            // of: a rule about the others (an open investigation, a special category) would
            // tell what the record holds.
            let knowable: Vec<Decision> = decided
                .decisions
                .iter()
                .zip(&decided.known)
                .filter(|(_, k)| k.is_allow())
                .map(|(d, _)| d.clone())
                .collect();
            return Err(VaultError::Denied(if knowable.is_empty() {
                "you may not read this record (the reasons are on the audit trail)".into()
            } else {
                distinct_reasons(&knowable)
            }));
        }
        let mut withheld = std::mem::take(&mut decided.withheld);
        let grants: Vec<(FieldGrant, &FieldRow, Category)> = decided
            .decisions
            .iter()
            .zip(&decided.masked)
            .zip(decided.selected.iter().zip(&decided.resources))
            .filter_map(|((d, m), (&row, res))| {
                let grant = match (d.grant(seq), m) {
                    (Some(g), _) => FieldGrant::Full(g),
                    (None, Some(m)) => FieldGrant::Masked(m.masked_grant(seq)?),
                    (None, None) => return None,
                };
                Some((grant, decided.loaded.rows().get(row)?, res.category))
            })
            .collect();
        withheld.extend(
            decided
                .decisions
                .iter()
                .zip(&decided.known)
                .zip(&decided.resources)
                .enumerate()
                .filter(|(i, _)| !decided.returned(*i))
                .filter_map(|(_, ((d, k), r))| {
                    if k.is_allow() {
                        Some(Withheld {
                            name: r.name.clone(),
                            reason: d.reason.clone(),
                        })
                    } else if decided.named {
                        // Named by the caller: answered as a field the record does not hold.
                        Some(Withheld {
                            name: r.name.clone(),
                            reason: UNAVAILABLE.into(),
                        })
                    } else {
                        None
                    }
                }),
        );
        let purpose = decided.meta.purpose;
        let record_id = &decided.record_id;
        let fields =
            match self.open_granted(&grants, &decided.subject, decided.loaded.record(), purpose)? {
                Some(fields) => fields,
                None => {
                    // A rekey moved the subject to a new key generation after the record was read:
                    // read the resealed values again (the grants are for the same fields).
                    let (record, rows) = self.load(record_id)?;
                    let regranted: Vec<(FieldGrant, &FieldRow, Category)> = grants
                        .into_iter()
                        .filter_map(|(g, _, c)| {
                            rows.iter().find(|r| r.name == g.field()).map(|r| (g, r, c))
                        })
                        .collect();
                    self.open_granted(&regranted, &decided.subject, &record, purpose)?
                        .ok_or_else(|| {
                            VaultError::DataLoss(format!("the subject key of record `{record_id}`"))
                        })?
                }
            };
        Ok(RecordView {
            meta: decided.meta,
            fields,
            withheld,
            hold: decided.hold,
        })
    }
}
