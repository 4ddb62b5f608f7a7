//! The policy engine: Cedar, validated against a schema, deny by default, `forbid` wins.
//!
//! kluis ships a schema (`policy/kluis.cedarschema`) and a default policy set
//! (`policy/default.cedar`) that encode `DOMAIN.md`; operators may replace both by configuration.
//! Every decision names the policies that decided it, so a denial can be explained and audited.
//!
//! Invariant: a `Grant` is built only here, and only from an allowing `Decision` plus the
//! `AuditSeq` of a committed audit entry. Decrypting a field needs a `Grant`. An allowed
//! `read-masked` makes a `MaskedGrant` instead, never a `Grant`: it opens a value only to mask it.
//! Invariant: an evaluation error is a deny (a `forbid` that failed to evaluate must not let a
//! request through).
//! Invariant: knows neither gRPC nor SQL.

mod memo;
mod slices;
pub mod table;

use std::{collections::HashSet, str::FromStr, sync::Arc};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, Request, Schema, ValidationMode, Validator,
};
use cedar_policy_core::{
    ast,
    entities::{NoEntitiesSchema, TCComputation},
    extensions::Extensions,
};

use crate::{
    audit::AuditSeq,
    domain::{AccessContext, Category, Principal, Purpose},
};

/// The schema kluis ships.
pub const DEFAULT_SCHEMA: &str = include_str!("policy/kluis.cedarschema");
/// The policy set kluis ships.
pub const DEFAULT_POLICIES: &str = include_str!("policy/default.cedar");

/// Errors of the policy layer.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The schema does not parse.
    #[error("policy schema: {0}")]
    Schema(String),
    /// A policy does not parse, lacks an `@id`, or repeats one.
    #[error("policies: {0}")]
    Parse(String),
    /// The policies do not validate against the schema.
    #[error("policies do not validate against the schema:\n{0}")]
    Validation(String),
    /// A request could not be put to the engine (entities or context do not match the schema).
    #[error("policy request: {0}")]
    Request(String),
}

/// A data action, decided per field.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Action {
    /// Decrypt and return a field value.
    Read,
    /// Store or replace a field value.
    Write,
    /// Delete a record (decided per field of it).
    Delete,
    /// Learn that a field exists (metadata only).
    List,
    /// Decrypt a field for a copy of a subject's data (GDPR art. 15).
    Export,
    /// Close a record (end a tenancy, close a case): decided per field of it.
    Close,
    /// Return a masked form of a field value (the last digits of an IBAN, the year of a date of
    /// birth), decided only for a field the caller may not `read`; never the value itself.
    ReadMasked,
}

impl Action {
    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::List => "list",
            Action::Export => "export",
            Action::Close => "close",
            Action::ReadMasked => "read-masked",
        }
    }

    /// Every action on fields.
    pub const ALL: &'static [Action] = &[
        Action::Read,
        Action::Write,
        Action::Delete,
        Action::List,
        Action::Export,
        Action::Close,
        Action::ReadMasked,
    ];

    /// The action named `s` (its Cedar id), if any.
    pub fn from_name(s: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.as_str() == s)
    }

    /// The names of every action, for messages: `read, write, …`.
    pub fn names() -> String {
        Action::ALL
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An administrative action, decided on the vault as a whole.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum AdminAction {
    /// Issue, revoke and list tokens.
    ManageTokens,
    /// Rotate, rewrap, rekey, retire and destroy keys; change the root key.
    ManageKeys,
    /// Reload the policy set.
    ManagePolicies,
    /// Place, release and list legal holds.
    ManageHolds,
    /// Run retention, erase subjects, track subject requests.
    ManageLifecycle,
    /// Read the audit trail (export, subject access report).
    ReadAudit,
    /// Verify the audit trail and read its head.
    VerifyAudit,
    /// Approve, as the second person, a token that reads personal data or a change of the root
    /// key.
    Approve,
}

impl AdminAction {
    /// Every administrative action.
    pub const ALL: &'static [AdminAction] = &[
        AdminAction::ManageTokens,
        AdminAction::ManageKeys,
        AdminAction::ManagePolicies,
        AdminAction::ManageHolds,
        AdminAction::ManageLifecycle,
        AdminAction::ReadAudit,
        AdminAction::VerifyAudit,
        AdminAction::Approve,
    ];

    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminAction::ManageTokens => "manage-tokens",
            AdminAction::ManageKeys => "manage-keys",
            AdminAction::ManagePolicies => "manage-policies",
            AdminAction::ManageHolds => "manage-holds",
            AdminAction::ManageLifecycle => "manage-lifecycle",
            AdminAction::ReadAudit => "read-audit",
            AdminAction::VerifyAudit => "verify-audit",
            AdminAction::Approve => "approve",
        }
    }
}

/// A field as the policy sees it: where it lives and what it is, never its value.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct FieldResource {
    /// The record id.
    pub record: String,
    /// The field name.
    pub name: String,
    /// The field's category.
    pub category: Category,
    /// The record's purpose.
    pub purpose: Purpose,
    /// The record's subject.
    pub subject: String,
    /// Facts about the record and the subject that the policy may use.
    pub flags: FieldFlags,
}

/// Facts the vault establishes for a field before the policy decides.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct FieldFlags {
    /// The record is closed (its case or tenancy ended).
    pub record_closed: bool,
    /// The subject objected to, or withdrew consent for, the record's purpose.
    pub objected: bool,
    /// The caller holds an active mandate of the subject covering this field.
    pub mandated: bool,
    /// The subject's processing is restricted (GDPR art. 18): stored, not read.
    pub restricted: bool,
    /// The field is known only by name, from the trail or the disclosure register, not from a
    /// record row as read (its record may have been destroyed since). Not seen by the policy:
    /// a field of a stored record that its subject's facts name destroyed (rows put back by
    /// hand) is refused before the policy decides, a field known only by name is not.
    pub named_only: bool,
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Effect {
    /// The request may proceed.
    Allow,
    /// The request is refused.
    Deny,
}

/// The outcome of one policy evaluation.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Decision {
    /// Allow or deny.
    pub effect: Effect,
    /// The ids of the policies that decided it (permits for an allow, forbids for a deny; empty
    /// when nothing permitted).
    pub policies: Vec<String>,
    /// A human explanation, safe to show to the caller and to audit.
    pub reason: String,
    /// The record and field decided on; empty for administrative actions.
    field: Option<(String, String)>,
    /// The field action decided; empty for administrative actions.
    action: Option<Action>,
}

impl Decision {
    /// The deny of a principal whose roles may not be held together (see
    /// `domain::check_roles`): no policy is asked, so no rule written for one role can widen
    /// another.
    fn invalid_roles(principal: &Principal, field: Option<(String, String)>) -> Self {
        let reason = if principal.roles.is_empty() {
            "the caller holds no role (a service alone has only its own `roles`; acting for an \
             employee, only the employee's roles it `may_act_for`); denied"
        } else {
            "the token's roles may not be held together; denied"
        };
        Decision {
            effect: Effect::Deny,
            policies: Vec::new(),
            reason: reason.into(),
            field,
            action: None,
        }
    }

    /// True for an allow.
    pub fn is_allow(&self) -> bool {
        self.effect == Effect::Allow
    }

    /// Turns an allowing `read` or `export` decision into the capability to decrypt its field,
    /// given the proof that the audit entry recording it is committed. `None` for a deny, for
    /// the other actions, and for an allowed `read-masked`, which grants a masked view only
    /// (`masked_grant`).
    pub fn grant(&self, audit_seq: &AuditSeq) -> Option<Grant> {
        let (record, field) = self.field.clone()?;
        // Only a read or an export opens a value: an allowed listing, write, deletion or
        // closing (or a masked view) is no capability to decrypt.
        if !matches!(self.action, Some(Action::Read | Action::Export)) {
            return None;
        }
        self.is_allow().then(|| Grant {
            record,
            field,
            audit_seq: audit_seq.value(),
            _private: (),
        })
    }

    /// Turns an allowed `read-masked` into the capability to return a masked view of its field,
    /// given the proof that the audit entry recording it is committed. `None` for a deny and for
    /// any other action.
    pub fn masked_grant(&self, audit_seq: &AuditSeq) -> Option<MaskedGrant> {
        let (record, field) = self.field.clone()?;
        (self.is_allow() && self.action == Some(Action::ReadMasked)).then(|| MaskedGrant {
            record,
            field,
            audit_seq: audit_seq.value(),
            _private: (),
        })
    }
}

/// Proof that the policy allowed a masked view of one field (`read-masked`) and that the decision
/// is in the audit trail. Only `Decision::masked_grant` constructs it; the vault opens a field
/// under it only to mask the value, which never leaves in full.
#[derive(Debug)]
pub struct MaskedGrant {
    record: String,
    field: String,
    audit_seq: u64,
    _private: (),
}

impl MaskedGrant {
    /// The record the grant is for.
    pub fn record(&self) -> &str {
        &self.record
    }

    /// The field the grant is for.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The audit entry that recorded the decision.
    pub fn audit_seq(&self) -> u64 {
        self.audit_seq
    }
}

/// Proof that the policy allowed reading one field and that the decision is in the audit trail.
/// Only `Decision::grant` constructs it.
#[derive(Debug)]
pub struct Grant {
    record: String,
    field: String,
    audit_seq: u64,
    _private: (),
}

impl Grant {
    /// The record the grant is for.
    pub fn record(&self) -> &str {
        &self.record
    }

    /// The field the grant is for.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The audit entry that recorded the decision.
    pub fn audit_seq(&self) -> u64 {
        self.audit_seq
    }
}

/// The texts a policy set was built from: kept in the store, so that every node of a shared
/// store decides by the same set.
#[derive(Clone, Debug, Eq, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicySources {
    /// The Cedar schema.
    pub schema: String,
    /// The policy files: (name, text).
    pub files: Vec<(String, String)>,
}

/// A validated schema and policy set, ready to decide.
pub struct Engine {
    sources: std::sync::Arc<PolicySources>,
    policies: PolicySet,
    authorizer: Authorizer,
    digest: String,
    abstraction: memo::Abstraction,
    memo: memo::Memo,
    /// The policies each action and role can match (see `slices`).
    slices: slices::Slices,
    /// The schema's action entities, when any action is in a group: what `action in` a group
    /// needs at evaluation. Empty otherwise (an action is then `in` only itself).
    action_entities: Vec<ast::Entity>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("policies", &self.policies.policies().count())
            .finish()
    }
}

impl Engine {
    /// The schema and policies kluis ships.
    pub fn default_policies() -> Result<Self, PolicyError> {
        Self::from_sources(DEFAULT_SCHEMA, DEFAULT_POLICIES)
    }

    /// Parses a schema and a policy set and validates the policies against the schema (strict
    /// mode). Every policy must carry a unique `@id("…")` annotation.
    pub fn from_sources(schema_src: &str, policies_src: &str) -> Result<Self, PolicyError> {
        Self::from_files(
            schema_src,
            &[("policies".to_owned(), policies_src.to_owned())],
        )
    }

    /// Like `from_sources`, with the policies in named files: errors say `file:line: problem`.
    pub fn from_files(schema_src: &str, files: &[(String, String)]) -> Result<Self, PolicyError> {
        let (schema, _warnings) = Schema::from_cedarschema_str(schema_src)
            .map_err(|e| PolicyError::Schema(miette_text(&e)))?;
        let mut policies = PolicySet::new();
        let mut origin: std::collections::HashMap<String, String> =
            std::collections::HashMap::new();
        let mut parse_errors = Vec::new();
        for (name, text) in files {
            let parsed = match PolicySet::from_str(text) {
                Ok(p) => p,
                Err(e) => {
                    let line = miette::Diagnostic::labels(&e)
                        .and_then(|mut l| l.next())
                        .map_or(1, |l| line_of(text, l.offset()));
                    parse_errors.push(format!("{name}:{line}: {}", miette_text(&e)));
                    continue;
                }
            };
            for p in parsed.policies() {
                let Some(id) = p.annotation("id") else {
                    parse_errors.push(format!("{name}: every policy needs an @id(\"…\") annotation; this one has none:\n{p}"));
                    continue;
                };
                if origin.contains_key(id) {
                    parse_errors.push(format!("{name}: policy id `{id}` is used twice"));
                    continue;
                }
                let line = text
                    .find(&format!("@id(\"{id}\")"))
                    .map_or(1, |at| line_of(text, at));
                origin.insert(id.to_owned(), format!("{name}:{line}"));
                policies
                    .add(p.new_id(PolicyId::new(id)))
                    .map_err(|e| PolicyError::Parse(e.to_string()))?;
            }
        }
        if !parse_errors.is_empty() {
            return Err(PolicyError::Parse(parse_errors.join("\n")));
        }
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors: Vec<String> = result
                .validation_errors()
                .map(|e| {
                    let at = origin
                        .get(e.policy_id().to_string().as_str())
                        .cloned()
                        .unwrap_or_default();
                    format!("- {at}: {}", miette_text(e))
                })
                .collect();
            return Err(PolicyError::Validation(errors.join("\n")));
        }
        let all: String = files
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let abstraction = memo::Abstraction::of(&policies);
        let actions: Vec<&str> = Action::ALL
            .iter()
            .map(|a| a.as_str())
            .chain(AdminAction::ALL.iter().map(|a| a.as_str()))
            .collect();
        let slices = slices::Slices::of(&policies, &schema, &actions);
        let action_entities = grouped_action_entities(&schema)?;
        conforms(&schema)?;
        Ok(Self {
            sources: std::sync::Arc::new(PolicySources {
                schema: schema_src.to_owned(),
                files: files.to_vec(),
            }),
            policies,
            authorizer: Authorizer::new(),
            digest: digest(schema_src, &all),
            abstraction,
            memo: memo::Memo::default(),
            slices,
            action_entities,
        })
    }

    /// This engine evaluating every policy for every request, as before the set was cut per
    /// action and role: the baseline the policy benchmark measures the slices against.
    #[doc(hidden)]
    pub fn without_slices(mut self) -> Self {
        self.slices = slices::Slices::default();
        self
    }

    /// The texts this set was built from.
    pub fn sources(&self) -> &PolicySources {
        &self.sources
    }

    /// SHA-256 (hex) of the schema and policy texts: names the policy set in the audit trail.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The text of the policy with this id, as Cedar prints it.
    pub fn policy_text(&self, id: &str) -> Option<String> {
        self.policies
            .policy(&PolicyId::new(id))
            .map(ToString::to_string)
    }

    /// How many policies the set holds.
    pub fn len(&self) -> usize {
        self.policies.policies().count()
    }

    /// True for an empty policy set (which denies everything).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides `action` on each of `fields` for `principal` acting in `ctx`. One decision per
    /// field, in order. A decision the policy set has made before for an input it cannot tell
    /// apart from this one is reused (see `memo`); the rest are evaluated together, with their
    /// entities built once.
    pub fn decide_fields(
        &self,
        principal: &Principal,
        action: Action,
        ctx: &AccessContext,
        fields: &[FieldResource],
    ) -> Result<Vec<Decision>, PolicyError> {
        if !principal.roles_are_valid() {
            return Ok(fields
                .iter()
                .map(|f| {
                    Decision::invalid_roles(principal, Some((f.record.clone(), f.name.clone())))
                })
                .collect());
        }
        if !self.abstraction.memoisable() {
            let all: Vec<(usize, &FieldResource)> = fields.iter().enumerate().collect();
            return Ok(self
                .evaluate_fields(principal, action, ctx, &all)?
                .into_iter()
                .map(|(d, _)| {
                    crate::metrics::decision(action.as_str(), d.is_allow(), false);
                    d
                })
                .collect());
        }
        let mut decided: Vec<Option<Decision>> = Vec::with_capacity(fields.len());
        let mut misses: Vec<(usize, &FieldResource, Vec<u8>)> = Vec::new();
        for (i, f) in fields.iter().enumerate() {
            let mut key = Vec::with_capacity(192);
            self.abstraction.key(&mut key, principal, action, ctx, f, i);
            if let Some(hit) = self.memo.get(&key) {
                let mut d = Decision::clone(&hit);
                d.field = Some((f.record.clone(), f.name.clone()));
                d.action = Some(action);
                crate::metrics::decision(action.as_str(), d.is_allow(), true);
                decided.push(Some(d));
            } else {
                decided.push(None);
                misses.push((i, f, key));
            }
        }
        if !misses.is_empty() {
            let todo: Vec<(usize, &FieldResource)> =
                misses.iter().map(|(i, f, _)| (*i, *f)).collect();
            let evaluated = self.evaluate_fields(principal, action, ctx, &todo)?;
            for ((i, _, key), (decision, clean)) in misses.into_iter().zip(evaluated) {
                crate::metrics::decision(action.as_str(), decision.is_allow(), false);
                if clean {
                    let mut memoised = decision.clone();
                    memoised.field = None;
                    self.memo.put(&key, memoised);
                }
                if let Some(slot) = decided.get_mut(i) {
                    *slot = Some(decision);
                }
            }
        }
        decided
            .into_iter()
            .map(|d| d.ok_or_else(|| PolicyError::Request("a field was left undecided".into())))
            .collect()
    }

    /// Decides without the memo: what `decide_fields` must always agree with.
    #[cfg(test)]
    fn decide_fields_unmemoised(
        &self,
        principal: &Principal,
        action: Action,
        ctx: &AccessContext,
        fields: &[FieldResource],
    ) -> Result<Vec<Decision>, PolicyError> {
        let todo: Vec<(usize, &FieldResource)> = fields.iter().enumerate().collect();
        Ok(self
            .evaluate_fields_in(principal, action, ctx, &todo, &self.policies)?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    /// Evaluates `action` on `fields` (each with its position in the request); each decision
    /// comes with whether evaluation was free of errors.
    fn evaluate_fields(
        &self,
        principal: &Principal,
        action: Action,
        ctx: &AccessContext,
        fields: &[(usize, &FieldResource)],
    ) -> Result<Vec<(Decision, bool)>, PolicyError> {
        let set = self
            .slices
            .get(action.as_str(), &principal.roles)
            .unwrap_or(&self.policies);
        self.evaluate_fields_in(principal, action, ctx, fields, set)
    }

    /// `evaluate_fields` against the policies `set` (a slice, or the whole set).
    fn evaluate_fields_in(
        &self,
        principal: &Principal,
        action: Action,
        ctx: &AccessContext,
        fields: &[(usize, &FieldResource)],
        set: &PolicySet,
    ) -> Result<Vec<(Decision, bool)>, PolicyError> {
        if !principal.roles_are_valid() {
            return Ok(fields
                .iter()
                .map(|&(_, f)| {
                    let d = Decision::invalid_roles(
                        principal,
                        Some((f.record.clone(), f.name.clone())),
                    );
                    (d, false)
                })
                .collect());
        }
        let principal_uid = principal_uid(principal)?;
        let (entities, field_uids) = request_entities(principal, &principal_uid, fields)?;
        let entities = self.entities(entities)?;
        let context = context_of(ctx);
        let action_uid = uid("Kluis::Action", action.as_str())?;
        fields
            .iter()
            .zip(field_uids)
            .map(|(&(_, f), resource)| {
                // The entities and context are built by `request_entities` and `context_of`,
                // which `conforms` checked against the schema when the set was loaded;
                // validating every request again would double the cost of a decision. Should
                // they ever disagree, evaluation errors deny.
                let request = Request::new(
                    principal_uid.clone(),
                    action_uid.clone(),
                    resource,
                    context.clone(),
                    None,
                )
                .map_err(|e| PolicyError::Request(e.to_string()))?;
                let (mut decision, clean) = self.evaluate(&request, &entities, set);
                if clean && decision.effect == Effect::Deny && decision.policies.is_empty() {
                    decision.reason = format!(
                        "no policy permits {} to {} `{}` data of purpose `{}` for purpose `{}`",
                        roles_text(principal),
                        action.as_str(),
                        f.category,
                        f.purpose,
                        ctx.purpose
                    );
                }
                decision.field = Some((f.record.clone(), f.name.clone()));
                decision.action = Some(action);
                Ok((decision, clean))
            })
            .collect()
    }

    /// Decides an administrative action for `principal`.
    pub fn decide_admin(
        &self,
        principal: &Principal,
        action: AdminAction,
    ) -> Result<Decision, PolicyError> {
        let set = self
            .slices
            .get(action.as_str(), &principal.roles)
            .unwrap_or(&self.policies);
        self.decide_admin_in(principal, action, set)
    }

    /// `decide_admin` against the policies `set` (a slice, or the whole set).
    fn decide_admin_in(
        &self,
        principal: &Principal,
        action: AdminAction,
        set: &PolicySet,
    ) -> Result<Decision, PolicyError> {
        if !principal.roles_are_valid() {
            return Ok(Decision::invalid_roles(principal, None));
        }
        let principal_uid = principal_uid(principal)?;
        let (entities, system) = admin_entities(principal, &principal_uid)?;
        let entities = self.entities(entities)?;
        // Checked against the schema when the set was loaded (`conforms`), as for fields.
        let request = Request::new(
            principal_uid,
            uid("Kluis::Action", action.as_str())?,
            system,
            Context::empty(),
            None,
        )
        .map_err(|e| PolicyError::Request(e.to_string()))?;
        let (mut decision, clean) = self.evaluate(&request, &entities, set);
        if clean && decision.effect == Effect::Deny && decision.policies.is_empty() {
            decision.reason = format!(
                "no policy permits {} to {}",
                roles_text(principal),
                action.as_str()
            );
        }
        crate::metrics::decision(action.as_str(), decision.is_allow(), false);
        Ok(decision)
    }

    /// A request's entities, with the schema's action entities when actions are grouped. Not
    /// checked against the schema: `conforms` checked what kluis builds when the set loaded.
    /// Their hierarchy is transitively closed as built (see `HIERARCHY`), so Cedar does not
    /// compute its closure again for every request.
    fn entities(&self, request: Vec<ast::Entity>) -> Result<Entities, PolicyError> {
        cedar_policy_core::entities::Entities::from_entities(
            request
                .into_iter()
                .chain(self.action_entities.iter().cloned()),
            None::<&NoEntitiesSchema>,
            HIERARCHY,
            Extensions::all_available(),
        )
        .map(Entities::from)
        .map_err(|e| PolicyError::Request(e.to_string()))
    }

    /// One Cedar evaluation against `set` (the slice the request can match, or the whole set);
    /// false beside the decision when evaluation hit an error (a deny).
    fn evaluate(
        &self,
        request: &Request,
        entities: &Entities,
        set: &PolicySet,
    ) -> (Decision, bool) {
        let response = self.authorizer.is_authorized(request, set, entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        // Cedar reports the deciding policies as a set; sorted, the same decision always reads
        // the same in the audit trail.
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        policies.sort_unstable();
        if !errors.is_empty() {
            tracing::error!(errors = ?errors, "policy evaluation error; denying");
            let decision = Decision {
                effect: Effect::Deny,
                policies,
                reason: "policy evaluation error; denied".into(),
                field: None,
                action: None,
            };
            return (decision, false);
        }
        let decision = match response.decision() {
            CedarDecision::Allow => Decision {
                effect: Effect::Allow,
                reason: format!("permitted by {}", quoted(&policies)),
                policies,
                field: None,
                action: None,
            },
            CedarDecision::Deny => Decision {
                effect: Effect::Deny,
                reason: if policies.is_empty() {
                    "no policy permits it".into()
                } else {
                    format!("forbidden by {}", quoted(&policies))
                },
                policies,
                field: None,
                action: None,
            },
        };
        (decision, true)
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

fn digest(schema: &str, policies: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(
        u64::try_from(schema.len())
            .unwrap_or(u64::MAX)
            .to_be_bytes(),
    );
    h.update(schema.as_bytes());
    h.update(policies.as_bytes());
    hex::encode(h.finalize())
}

/// The entity types requests are built from, parsed once (Cedar parses a type name with its
/// policy parser).
static TYPE_NAMES: std::sync::LazyLock<std::collections::HashMap<&'static str, EntityTypeName>> =
    std::sync::LazyLock::new(|| {
        [
            "Kluis::Principal",
            "Kluis::Role",
            "Kluis::Field",
            "Kluis::Action",
            "Kluis::System",
        ]
        .into_iter()
        .filter_map(|name| Some((name, EntityTypeName::from_str(name).ok()?)))
        .collect()
    });

fn uid(type_name: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let ty = match TYPE_NAMES.get(type_name) {
        Some(ty) => ty.clone(),
        None => {
            EntityTypeName::from_str(type_name).map_err(|e| PolicyError::Request(e.to_string()))?
        }
    };
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

fn principal_uid(principal: &Principal) -> Result<EntityUid, PolicyError> {
    uid("Kluis::Principal", principal.id.as_str())
}

/// How Cedar takes the hierarchy of a request's entities. What kluis builds is transitively
/// closed as it stands: a principal's parents are its roles, and kluis builds no role entity,
/// so a role has no parents of its own; a field and the vault have no parents; the schema's
/// action entities come with their closure computed (a group in a group included). Cedar computing the closure again for every
/// request was a tenth of a fresh decision. The unit tests make Cedar check the claim instead
/// (`EnforceAlreadyComputed` fails a request whose hierarchy is not closed).
const HIERARCHY: TCComputation = if cfg!(test) {
    TCComputation::EnforceAlreadyComputed
} else {
    TCComputation::AssumeAlreadyComputed
};

/// An entity with attributes that are values already, as Cedar would hold them after evaluating
/// restricted expressions: the same entity without evaluating anything per request.
fn entity(
    uid_: &EntityUid,
    attrs: impl IntoIterator<Item = (&'static str, ast::Value)>,
    parents: HashSet<ast::EntityUID>,
) -> ast::Entity {
    ast::Entity::new_with_attr_partial_value(
        uid_.as_ref().clone(),
        attrs.into_iter().map(|(k, v)| (k.into(), v.into())),
        HashSet::new(),
        parents,
        std::iter::empty(),
    )
}

/// The entities of a decision on `fields`: the principal's and one per field (`record#position`),
/// with the fields' uids in order.
fn request_entities(
    principal: &Principal,
    principal_uid: &EntityUid,
    fields: &[(usize, &FieldResource)],
) -> Result<(Vec<ast::Entity>, Vec<EntityUid>), PolicyError> {
    let mut entities = Vec::with_capacity(fields.len() + 1);
    entities.push(principal_entity(principal, principal_uid)?);
    let mut field_uids = Vec::with_capacity(fields.len());
    for &(i, f) in fields {
        let uid = uid("Kluis::Field", &format!("{}#{i}", f.record))?;
        let attrs = [
            ("name", f.name.as_str().into()),
            ("category", f.category.as_str().into()),
            ("purpose", f.purpose.as_str().into()),
            ("subject", f.subject.as_str().into()),
            ("record_closed", f.flags.record_closed.into()),
            ("objected", f.flags.objected.into()),
            ("mandated", f.flags.mandated.into()),
            ("restricted", f.flags.restricted.into()),
        ];
        entities.push(entity(&uid, attrs, HashSet::new()));
        field_uids.push(uid);
    }
    Ok((entities, field_uids))
}

/// The context of a decision on fields: the caller's declared purpose and case.
fn context_of(ctx: &AccessContext) -> Context {
    let attrs: [(&str, ast::Value); 5] = [
        ("purpose", ctx.purpose.as_str().into()),
        ("case_ref", ctx.case_ref.as_str().into()),
        ("justification", ctx.justification.as_str().into()),
        ("channel", ctx.channel.as_str().into()),
        ("break_glass", ctx.break_glass.into()),
    ];
    ast::Context::Value(Arc::new(
        attrs.into_iter().map(|(k, v)| (k.into(), v)).collect(),
    ))
    .into()
}

/// The entities of an administrative decision: the principal's and the vault's, with the
/// vault's uid.
fn admin_entities(
    principal: &Principal,
    principal_uid: &EntityUid,
) -> Result<(Vec<ast::Entity>, EntityUid), PolicyError> {
    let system = uid("Kluis::System", "kluis")?;
    let entities = vec![
        principal_entity(principal, principal_uid)?,
        entity(&system, [], HashSet::new()),
    ];
    Ok((entities, system))
}

/// The schema's action entities when any action is in a group, none otherwise.
fn grouped_action_entities(schema: &Schema) -> Result<Vec<ast::Entity>, PolicyError> {
    let actions = schema
        .action_entities()
        .map_err(|e| PolicyError::Schema(miette_text(&e)))?;
    let grouped = actions.iter().any(|a| {
        actions
            .ancestors(&a.uid())
            .is_some_and(|mut groups| groups.next().is_some())
    });
    Ok(if grouped {
        actions.iter().map(|a| a.as_ref().clone()).collect()
    } else {
        Vec::new()
    })
}

/// Checks, once when a set loads, that the entities and contexts kluis builds for its requests
/// conform to the schema (a custom schema may demand attributes kluis does not supply): every
/// request after that is evaluated without checking them again.
fn conforms(schema: &Schema) -> Result<(), PolicyError> {
    let unfit = |e: &dyn std::error::Error| {
        PolicyError::Schema(format!(
            "the schema does not describe the requests kluis makes: {}",
            miette_text(e)
        ))
    };
    let field = FieldResource {
        record: "rec_probe".into(),
        name: "name".into(),
        category: crate::domain::Category::Identity,
        purpose: crate::domain::Purpose::CustomerService,
        subject: "REL-probe".into(),
        flags: FieldFlags::default(),
    };
    let ctx = AccessContext {
        purpose: crate::domain::Purpose::CustomerService,
        case_ref: String::new(),
        justification: String::new(),
        channel: "app".into(),
        break_glass: false,
    };
    // Every role kluis knows, as the principal's parents and as entities of their own: a schema
    // that leaves a role out (an enumerated `Role`) or gives roles attributes would be refused
    // by every request of that role; it is refused here, once.
    let roles = crate::domain::Role::ALL.to_vec();
    let role_entities = roles
        .iter()
        .map(|r| {
            Ok(Entity::new_no_attrs(
                uid("Kluis::Role", r.as_str())?,
                HashSet::new(),
            ))
        })
        .collect::<Result<Vec<_>, PolicyError>>()?;
    Entities::from_entities(role_entities, Some(schema)).map_err(|e| unfit(&e))?;
    for scope in [None, Some("REL-probe")] {
        let principal = Principal {
            id: crate::domain::PrincipalId::parse("principal", "probe")
                .map_err(|e| PolicyError::Request(e.to_string()))?,
            roles: roles.clone(),
            scope_subject: scope
                .map(|s| crate::domain::SubjectId::parse("scope_subject", s))
                .transpose()
                .map_err(|e| PolicyError::Request(e.to_string()))?,
            token_id: String::new(),
            expires_at: 0,
            service: None,
            employee: None,
        };
        let principal_uid = principal_uid(&principal)?;
        let (entities, field_uids) = request_entities(&principal, &principal_uid, &[(0, &field)])?;
        Entities::from_entities(entities.into_iter().map(Entity::from), Some(schema))
            .map_err(|e| unfit(&e))?;
        let (admin, system) = admin_entities(&principal, &principal_uid)?;
        Entities::from_entities(admin.into_iter().map(Entity::from), Some(schema))
            .map_err(|e| unfit(&e))?;
        let ctx = &ctx;
        let field_requests = Action::ALL.iter().flat_map(|a| {
            field_uids
                .iter()
                .map(move |f| (a.as_str(), f.clone(), Ok(context_of(ctx))))
        });
        let admin_requests = AdminAction::ALL.iter().map(|a| {
            (
                a.as_str(),
                system.clone(),
                Ok::<_, PolicyError>(Context::empty()),
            )
        });
        for (action, resource, context) in field_requests.chain(admin_requests) {
            Request::new(
                principal_uid.clone(),
                uid("Kluis::Action", action)?,
                resource,
                context?,
                Some(schema),
            )
            .map_err(|e| unfit(&e))?;
        }
    }
    Ok(())
}

/// The principal's entity, a member of its roles. The roles themselves need no entities: a role
/// has no attributes and no groups, and `principal in role` reads only the principal's parents.
fn principal_entity(principal: &Principal, uid_: &EntityUid) -> Result<ast::Entity, PolicyError> {
    let mut parents = HashSet::with_capacity(principal.roles.len());
    for role in &principal.roles {
        parents.insert(uid("Kluis::Role", role.as_str())?.into());
    }
    // A rule that exempts a role holds only for a token that carries that role alone.
    let single_role = ("single_role", ast::Value::from(principal.roles.len() == 1));
    let scope = principal
        .scope_subject
        .as_ref()
        .map(|scope| ("scope_subject", ast::Value::from(scope.as_str())));
    Ok(entity(
        uid_,
        std::iter::once(single_role).chain(scope),
        parents,
    ))
}

fn roles_text(principal: &Principal) -> String {
    let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
    format!("role(s) `{}`", roles.join("`, `"))
}

fn quoted(ids: &[String]) -> String {
    ids.iter()
        .map(|id| format!("`{id}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders a Cedar diagnostic with its causes on one line each.
fn miette_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PrincipalId, Role, SubjectId};

    fn principal(roles: &[Role], scope: Option<&str>) -> Principal {
        Principal {
            id: PrincipalId::parse("p", "emp-1").unwrap(),
            roles: roles.to_vec(),
            scope_subject: scope.map(|s| SubjectId::parse("s", s).unwrap()),
            token_id: "tok_x".into(),
            expires_at: i64::MAX,
            service: None,
            employee: None,
        }
    }

    fn ctx(purpose: Purpose) -> AccessContext {
        AccessContext::parse(
            "c",
            purpose.as_str(),
            "N-2026-1",
            "case work",
            "app",
            false,
            &crate::domain::Channels::default(),
        )
        .unwrap()
    }

    fn field(name: &str, category: Category, purpose: Purpose) -> FieldResource {
        FieldResource {
            record: "rec_1".into(),
            name: name.into(),
            category,
            purpose,
            subject: "REL-1".into(),
            flags: Default::default(),
        }
    }

    /// A request: who, what, in which context, on which fields.
    type Sample = (Principal, Action, AccessContext, Vec<FieldResource>);

    /// A seeded random sample of requests over every action, role (one or two), purpose,
    /// category, flag and free-text class the default policies tell apart.
    fn sample_requests(samples: usize, seed: u64) -> Vec<Sample> {
        use rand::{Rng, SeedableRng, seq::SliceRandom};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let names = ["name", "surname", "phone", "medical_need", "meds", "x"];
        let subjects = ["REL-1", "REL-2"];
        let case_refs = ["", "N-1", "N-2"];
        let justifications = ["", "case work"];
        let channels = ["app", "social-media"];
        let mut requests = Vec::new();
        for _ in 0..samples {
            let n = rng.gen_range(1..=2);
            let mut roles: Vec<Role> = Role::ALL.choose_multiple(&mut rng, n).copied().collect();
            roles.dedup();
            let scope = [None, Some("REL-1"), Some("REL-2")][rng.gen_range(0..3)];
            let p = principal(&roles, scope);
            let c = AccessContext::parse(
                "c",
                Purpose::ALL[rng.gen_range(0..Purpose::ALL.len())].as_str(),
                case_refs[rng.gen_range(0..case_refs.len())],
                justifications[rng.gen_range(0..justifications.len())],
                channels[rng.gen_range(0..channels.len())],
                rng.gen_bool(0.2),
                &crate::domain::Channels::default(),
            )
            .unwrap();
            let action = Action::ALL[rng.gen_range(0..Action::ALL.len())];
            let fields: Vec<FieldResource> = (0..rng.gen_range(1..4))
                .map(|_| FieldResource {
                    record: "rec_1".into(),
                    name: names[rng.gen_range(0..names.len())].into(),
                    category: Category::ALL[rng.gen_range(0..Category::ALL.len())],
                    purpose: Purpose::ALL[rng.gen_range(0..Purpose::ALL.len())],
                    subject: subjects[rng.gen_range(0..subjects.len())].into(),
                    flags: FieldFlags {
                        record_closed: rng.gen_bool(0.3),
                        objected: rng.gen_bool(0.2),
                        mandated: rng.gen_bool(0.3),
                        restricted: rng.gen_bool(0.2),
                        named_only: rng.gen_bool(0.1),
                    },
                })
                .collect();
            requests.push((p, action, c, fields));
        }
        requests
    }

    /// Decides a seeded random sample of requests against the specialised slices and against
    /// the whole set, and demands the same decisions, with the same evaluation errors. Returns
    /// how many fields were allowed and how many decisions hit an error.
    fn slices_agree(engine: &Engine, samples: usize) -> (usize, usize) {
        let (mut allowed, mut errors) = (0, 0);
        for (p, action, c, fields) in sample_requests(samples, 0x736c_6963_6573) {
            let todo: Vec<(usize, &FieldResource)> = fields.iter().enumerate().collect();
            let sliced = engine.evaluate_fields(&p, action, &c, &todo).unwrap();
            let whole = engine
                .evaluate_fields_in(&p, action, &c, &todo, &engine.policies)
                .unwrap();
            assert_eq!(sliced, whole, "{:?} {action:?} {c:?} {fields:?}", p.roles);
            allowed += sliced.iter().filter(|(d, _)| d.is_allow()).count();
            errors += sliced.iter().filter(|(_, clean)| !clean).count();
        }
        (allowed, errors)
    }

    /// Decides a seeded random sample of requests with the memo and without it, twice over so
    /// that the second pass is answered from the memo, and demands the same decisions.
    fn memo_agrees(engine: &Engine, samples: usize) {
        let requests = sample_requests(samples, 0x006b_6c75_6973);
        let mut decided = 0;
        for _pass in 0..2 {
            for (p, action, c, fields) in &requests {
                let memo = engine.decide_fields(p, *action, c, fields).unwrap();
                let fresh = engine
                    .decide_fields_unmemoised(p, *action, c, fields)
                    .unwrap();
                assert_eq!(memo, fresh, "{:?} {action:?} {c:?} {fields:?}", p.roles);
                decided += fields.len();
            }
        }
        // The memo must have been used, or this test shows nothing (unless it is off).
        if engine.abstraction.memoisable() {
            assert!(
                engine.memo.len() <= decided / 2,
                "memo {} of {decided}",
                engine.memo.len()
            );
        } else {
            assert_eq!(engine.memo.len(), 0);
        }
    }

    #[test]
    fn administrative_decisions_of_a_slice_equal_those_of_the_whole_set() {
        let engine = Engine::default_policies().unwrap();
        let mut role_sets: Vec<Vec<Role>> = Role::ALL.iter().map(|r| vec![*r]).collect();
        for (i, a) in Role::ALL.iter().enumerate() {
            for b in Role::ALL.iter().skip(i + 1) {
                role_sets.push(vec![*a, *b]);
            }
        }
        let mut allowed = 0;
        for roles in &role_sets {
            let p = principal(roles, None);
            for &action in AdminAction::ALL {
                let sliced = engine.decide_admin(&p, action).unwrap();
                let whole = engine
                    .decide_admin_in(&p, action, &engine.policies)
                    .unwrap();
                assert_eq!(sliced, whole, "{roles:?} {action:?}");
                allowed += usize::from(sliced.is_allow());
            }
        }
        assert!(
            allowed > 0,
            "no administrative decision allowed: the test shows nothing"
        );
    }

    #[test]
    fn a_slice_holds_only_what_can_apply() {
        let engine = Engine::default_policies().unwrap();
        let whole = engine.policies.policies().count();
        let slice = engine
            .slices
            .get(Action::Read.as_str(), &[Role::NuisanceOfficer])
            .unwrap()
            .policies()
            .count();
        assert!(slice > 0 && slice < whole / 2, "{slice} of {whole}");
    }

    #[test]
    fn a_slice_leaves_out_what_can_never_fire_for_its_role() {
        let engine = Engine::default_policies().unwrap();
        let ids = |action: Action, role: Role| -> Vec<String> {
            engine
                .slices
                .get(action.as_str(), &[role])
                .unwrap()
                .policies()
                .map(|p| p.id().to_string())
                .collect()
        };
        let nuisance = ids(Action::Read, Role::NuisanceOfficer);
        for never in [
            "separation-of-duties",
            "special-category-never-for-these-roles",
            "external-roles-need-scope",
            "bailiff-lawyer",
            "subject-not-during-open-investigation",
        ] {
            assert!(
                !nuisance.contains(&never.to_owned()),
                "{never} in {nuisance:?}"
            );
        }
        for kept in [
            "nuisance-officer",
            "purpose-limitation",
            "scoped-token-one-subject",
        ] {
            assert!(
                nuisance.contains(&kept.to_owned()),
                "{kept} not in {nuisance:?}"
            );
        }
        // The twin: for the roles it names, the same forbid stays.
        assert!(ids(Action::Read, Role::SecurityOfficer).contains(&"separation-of-duties".into()));
        assert!(ids(Action::Read, Role::Bailiff).contains(&"external-roles-need-scope".into()));
    }

    #[test]
    fn specialised_slices_decide_as_the_whole_default_set() {
        let engine = Engine::default_policies().unwrap();
        let (allowed, _) = slices_agree(&engine, 4000);
        assert!(allowed > 20, "{allowed} allowed: the sample shows little");
    }

    #[test]
    fn specialised_slices_keep_every_evaluation_error_and_every_rewrite_right() {
        // Each policy puts a role or action test, which the slices replace by its value, beside
        // something else: an attribute of the third field, which a request with fewer fields does
        // not have (evaluation fails, and a rewrite must not drop that), `if`, `!`, `unless`, `!=`, a comparison written the other
        // way round, an action group, `single_role`, and sets of literals.
        let schema = DEFAULT_SCHEMA.replace(
            r#"action "read", "write", "delete", "list", "export", "close", "read-masked" appliesTo {"#,
            r#"action "field-access";
  action "read", "write", "delete", "list", "export", "close", "read-masked" in ["field-access"] appliesTo {"#,
        );
        assert_ne!(schema, DEFAULT_SCHEMA, "the action group was not added");
        let policies = r#"
            @id("fails-before-role") forbid(principal, action, resource)
              when { Kluis::Field::"rec_1#2".name == "x" && principal in Kluis::Role::"bailiff" };
            @id("role-before-fails") forbid(principal, action, resource)
              when { principal in Kluis::Role::"lawyer" && Kluis::Field::"rec_1#2".name == "x" };
            @id("fails-or-role") forbid(principal, action, resource)
              when { Kluis::Field::"rec_1#2".name == "x" || principal in Kluis::Role::"analyst" };
            @id("group") permit(principal, action in Kluis::Action::"field-access", resource)
              when { ["identity", "contact"].contains(resource.category) &&
                     (principal in Kluis::Role::"customer-service" || principal in Kluis::Role::"contractor") };
            @id("reversed") permit(principal, action, resource)
              when { Kluis::Action::"export" == action && principal.single_role &&
                     principal in [Kluis::Role::"privacy-officer", Kluis::Role::"auditor"] };
            @id("not-equal") forbid(principal, action, resource)
              when { action != Kluis::Action::"read" && resource.category == "medical" };
            @id("if") permit(principal, action, resource)
              when { if principal in Kluis::Role::"nuisance-officer"
                     then context.purpose == "nuisance" else !(context.purpose == "nuisance") };
            @id("unless") forbid(principal, action, resource)
              when { resource.restricted }
              unless { principal.single_role && principal in Kluis::Role::"privacy-officer" };
            @id("scope") permit(principal in Kluis::Role::"subject", action, resource)
              when { principal has scope_subject && principal.scope_subject == resource.subject };
        "#;
        let field_actions = r#"action in [Kluis::Action::"read", Kluis::Action::"write", Kluis::Action::"delete", Kluis::Action::"list", Kluis::Action::"export", Kluis::Action::"close", Kluis::Action::"read-masked"],"#;
        let policies = policies.replace("action,", field_actions);
        let engine = Engine::from_sources(&schema, &policies).unwrap();
        assert!(!engine.action_entities.is_empty());
        let (allowed, errors) = slices_agree(&engine, 3000);
        assert!(allowed > 50, "{allowed} allowed: the sample shows little");
        assert!(
            errors > 50,
            "{errors} errors: the failing policies were not evaluated"
        );
        // The policies that can fail stay in every slice, for every role.
        for &role in Role::ALL {
            let slice = engine.slices.get(Action::Read.as_str(), &[role]).unwrap();
            assert!(slice.policy(&PolicyId::new("fails-before-role")).is_some());
            assert!(slice.policy(&PolicyId::new("fails-or-role")).is_some());
        }
        memo_agrees(&engine, 800);
    }

    #[test]
    fn an_action_group_of_another_namespace_is_obeyed_by_every_slice() {
        let schema = format!(
            "namespace Groups {{ action \"all\"; action \"personal-data\" in [\"all\"]; }}\n{}",
            DEFAULT_SCHEMA.replace(
                r#"action "read", "write", "delete", "list", "export", "close", "read-masked" appliesTo {"#,
                r#"action "read", "write", "delete", "list", "export", "close", "read-masked" in [Groups::Action::"personal-data"] appliesTo {"#,
            )
        );
        let policies = format!(
            "{DEFAULT_POLICIES}\n@id(\"no-phone\") forbid(principal, action in Groups::Action::\"personal-data\", resource) when {{ resource.name == \"phone\" }};\n\
             @id(\"group-in-condition\") forbid(principal, action, resource) when {{ action in Groups::Action::\"personal-data\" && resource.name == \"meds\" }};\n\
             @id(\"group-of-a-group\") forbid(principal, action in Groups::Action::\"all\", resource) when {{ resource.name == \"address\" }};"
        );
        let engine = Engine::from_sources(&schema, &policies).unwrap();
        for roles in [
            &[Role::CustomerService][..],
            &[Role::CustomerService, Role::Analyst],
        ] {
            let p = principal(roles, None);
            let c = ctx(Purpose::CustomerService);
            let d = engine
                .decide_fields(
                    &p,
                    Action::Read,
                    &c,
                    &[
                        field("phone", Category::Contact, Purpose::CustomerService),
                        field("meds", Category::Contact, Purpose::CustomerService),
                        field("email", Category::Contact, Purpose::CustomerService),
                        field("address", Category::Contact, Purpose::CustomerService),
                    ],
                )
                .unwrap();
            // `read` is in `all` only through `personal-data`: the hierarchy's closure.
            assert!(!d[3].is_allow(), "{roles:?}: {:?}", d[3]);
            assert!(
                d[3].policies.contains(&"group-of-a-group".to_owned()),
                "{roles:?}: {:?}",
                d[3]
            );
            assert!(!d[0].is_allow(), "{roles:?}: {:?}", d[0]);
            assert!(
                d[0].policies.contains(&"no-phone".to_owned()),
                "{roles:?}: {:?}",
                d[0]
            );
            assert!(!d[1].is_allow(), "{roles:?}: {:?}", d[1]);
            assert!(
                d[1].policies.contains(&"group-in-condition".to_owned()),
                "{roles:?}: {:?}",
                d[1]
            );
            // The twin: a field the group's policies do not name.
            assert_eq!(d[2].is_allow(), roles.len() == 1, "{roles:?}: {:?}", d[2]);
        }
        slices_agree(&engine, 1500);
    }

    #[test]
    fn a_schema_that_leaves_out_a_role_or_gives_roles_attributes_is_refused() {
        let roles: Vec<String> = Role::ALL
            .iter()
            .filter(|r| **r != Role::Contractor)
            .map(|r| format!("\"{}\"", r.as_str()))
            .collect();
        let enumerated = DEFAULT_SCHEMA.replace(
            "entity Role;",
            &format!("entity Role enum [{}];", roles.join(", ")),
        );
        let with_attribute =
            DEFAULT_SCHEMA.replace("entity Role;", "entity Role = { \"rank\": Long };");
        // Policies that name no role: they validate under either schema.
        let policies = r#"@id("list-identity") permit(principal, action == Kluis::Action::"list", resource)
            when { resource.category == "identity" };"#;
        for schema in [enumerated, with_attribute] {
            assert_ne!(schema, DEFAULT_SCHEMA);
            let err = Engine::from_sources(&schema, policies).unwrap_err();
            assert!(
                err.to_string()
                    .contains("the schema does not describe the requests kluis makes"),
                "{err}"
            );
        }
        // The twin: every role enumerated is a schema that describes them.
        let all: Vec<String> = Role::ALL
            .iter()
            .map(|r| format!("\"{}\"", r.as_str()))
            .collect();
        let every = DEFAULT_SCHEMA.replace(
            "entity Role;",
            &format!("entity Role enum [{}];", all.join(", ")),
        );
        Engine::from_sources(&every, policies).unwrap();
        Engine::from_sources(&every, DEFAULT_POLICIES).unwrap();
    }

    #[test]
    fn a_schema_that_does_not_describe_kluis_requests_is_refused_when_it_loads() {
        let schema = DEFAULT_SCHEMA.replace(
            r#""restricted": Bool,"#,
            r#""restricted": Bool,
    "department": String,"#,
        );
        assert_ne!(schema, DEFAULT_SCHEMA);
        let err = Engine::from_sources(&schema, DEFAULT_POLICIES).unwrap_err();
        assert!(
            err.to_string()
                .contains("the schema does not describe the requests kluis makes"),
            "{err}"
        );
        assert!(err.to_string().contains("department"), "{err}");
        // A schema with the attribute optional describes them.
        let optional = DEFAULT_SCHEMA.replace(
            r#""restricted": Bool,"#,
            r#""restricted": Bool,
    "department"?: String,"#,
        );
        Engine::from_sources(&optional, DEFAULT_POLICIES).unwrap();
    }

    #[test]
    fn memoised_decisions_equal_fresh_ones_for_the_default_policies() {
        memo_agrees(&Engine::default_policies().unwrap(), 1200);
    }

    #[test]
    fn a_decision_that_depends_on_another_field_is_not_memoised() {
        let policies = r#"@id("sibling") permit(principal, action in [Kluis::Action::"read"], resource)
            when { Kluis::Field::"rec_1#1" has name && Kluis::Field::"rec_1#1".name == "x" };"#;
        let engine = Engine::from_sources(DEFAULT_SCHEMA, policies).unwrap();
        let p = principal(&[Role::NuisanceOfficer], None);
        let c = ctx(Purpose::Nuisance);
        let f0 = field("phone", Category::Contact, Purpose::Nuisance);
        let with = |name: &str| {
            vec![
                f0.clone(),
                field(name, Category::Contact, Purpose::Nuisance),
            ]
        };
        let first = engine
            .decide_fields(&p, Action::Read, &c, &with("x"))
            .unwrap();
        let second = engine
            .decide_fields(&p, Action::Read, &c, &with("y"))
            .unwrap();
        assert!(first[0].is_allow());
        assert!(
            !second[0].is_allow(),
            "field 0 must not reuse a decision made beside `x`"
        );
    }

    #[test]
    fn memoised_decisions_equal_fresh_ones_when_policies_use_values_otherwise() {
        // Each reads a free-text input other than by equality with a literal: were the memo to
        // key only the literal class, `meds` and `medical_need` (or the two subjects, or the two
        // case references) would share a decision and differ from the fresh one.
        for policies in [
            r#"@id("like") permit(principal, action, resource) when { resource.name like "med*" };"#,
            r#"@id("cross") permit(principal, action, resource) when { context.case_ref != "" && resource.subject like "*1" };"#,
            r#"@id("uid") permit(principal, action, resource) when { resource == Kluis::Field::"rec_1#0" };
               @id("lit") forbid(principal, action, resource) when { resource.name == "x" };"#,
        ] {
            let field_actions = r#"action in [Kluis::Action::"read", Kluis::Action::"write", Kluis::Action::"delete", Kluis::Action::"list", Kluis::Action::"export"],"#;
            let policies = policies.replace("action,", field_actions);
            memo_agrees(
                &Engine::from_sources(DEFAULT_SCHEMA, &policies).unwrap(),
                1500,
            );
        }
    }

    #[test]
    fn default_policies_validate() {
        Engine::default_policies().unwrap();
    }

    #[test]
    fn forbid_overrides_permit_and_names_the_policy() {
        let engine = Engine::default_policies().unwrap();
        let p = principal(&[Role::NuisanceOfficer, Role::FraudInvestigator], None);
        let mut c = ctx(Purpose::Nuisance);
        c.channel = "social-media".into();
        let d = engine
            .decide_fields(
                &p,
                Action::Read,
                &c,
                &[field(
                    "photo",
                    Category::NuisanceEvidence,
                    Purpose::Nuisance,
                )],
            )
            .unwrap();
        assert_eq!(d[0].effect, Effect::Deny);
        assert_eq!(d[0].policies, ["no-confidential-data-via-social-media"]);
    }

    #[test]
    fn roles_that_may_not_be_held_together_decide_nothing() {
        let engine = Engine::default_policies().unwrap();
        let c = ctx(Purpose::Nuisance);
        let f = [field("phone", Category::Contact, Purpose::Nuisance)];
        for p in [
            principal(&[Role::NuisanceOfficer, Role::SecurityOfficer], None),
            principal(
                &[Role::NuisanceOfficer, Role::Representative],
                Some("REL-1"),
            ),
            principal(&[Role::Subject, Role::CustomerService], Some("REL-1")),
            principal(&[Role::Contractor], None),
            principal(&[Role::Representative], None),
            principal(&[], None),
        ] {
            for action in Action::ALL {
                let d = engine.decide_fields(&p, *action, &c, &f).unwrap();
                assert!(!d[0].is_allow(), "{:?} {action:?}", p.roles);
                assert!(d[0].policies.is_empty());
                let why = if p.roles.is_empty() {
                    "holds no role"
                } else {
                    "may not be held together"
                };
                assert!(d[0].reason.contains(why), "{}", d[0].reason);
                // The memo is not consulted either way: the unmemoised path agrees.
                let fresh = engine
                    .decide_fields_unmemoised(&p, *action, &c, &f)
                    .unwrap();
                assert_eq!(d, fresh);
            }
            assert!(
                !engine
                    .decide_admin(&p, AdminAction::ManageTokens)
                    .unwrap()
                    .is_allow()
            );
        }
    }

    #[test]
    fn allow_names_the_permit() {
        let engine = Engine::default_policies().unwrap();
        let p = principal(&[Role::NuisanceOfficer], None);
        let d = engine
            .decide_fields(
                &p,
                Action::Read,
                &ctx(Purpose::Nuisance),
                &[field("phone", Category::Contact, Purpose::Nuisance)],
            )
            .unwrap();
        assert!(d[0].is_allow());
        assert_eq!(d[0].policies, ["nuisance-officer"]);
    }

    #[test]
    fn contractor_sees_name_and_contact_of_their_subject_only() {
        let engine = Engine::default_policies().unwrap();
        let p = principal(&[Role::Contractor], Some("REL-1"));
        let c = ctx(Purpose::Maintenance);
        let fields = [
            field("name", Category::Identity, Purpose::Maintenance),
            field("date_of_birth", Category::Identity, Purpose::Maintenance),
            field("phone", Category::Contact, Purpose::Maintenance),
        ];
        let d = engine.decide_fields(&p, Action::Read, &c, &fields).unwrap();
        assert_eq!(
            d.iter().map(Decision::is_allow).collect::<Vec<_>>(),
            [true, false, true]
        );
        let other = FieldResource {
            subject: "REL-2".into(),
            ..fields[2].clone()
        };
        let d = engine
            .decide_fields(&p, Action::Read, &c, &[other])
            .unwrap();
        assert_eq!(d[0].policies, ["scoped-token-one-subject"]);
        let unscoped = principal(&[Role::Contractor], None);
        let d = engine
            .decide_fields(&unscoped, Action::Read, &c, &fields[2..])
            .unwrap();
        assert!(!d[0].is_allow());
    }

    #[test]
    fn only_security_officer_manages_tokens() {
        let engine = Engine::default_policies().unwrap();
        let so = principal(&[Role::SecurityOfficer], None);
        assert!(
            engine
                .decide_admin(&so, AdminAction::ManageTokens)
                .unwrap()
                .is_allow()
        );
        let po = principal(&[Role::PrivacyOfficer], None);
        assert!(
            !engine
                .decide_admin(&po, AdminAction::ManageTokens)
                .unwrap()
                .is_allow()
        );
    }

    #[test]
    fn invalid_policies_are_refused_with_the_cedar_error() {
        let bad_attr = r#"@id("x") permit(principal, action == Kluis::Action::"read", resource) when { resource.colour == "red" };"#;
        let err = Engine::from_sources(DEFAULT_SCHEMA, bad_attr).unwrap_err();
        assert!(matches!(err, PolicyError::Validation(_)), "{err}");
        let no_id = r#"permit(principal, action, resource);"#;
        assert!(matches!(
            Engine::from_sources(DEFAULT_SCHEMA, no_id),
            Err(PolicyError::Parse(_))
        ));
        let syntax = r#"@id("x") permit(principal action resource);"#;
        assert!(matches!(
            Engine::from_sources(DEFAULT_SCHEMA, syntax),
            Err(PolicyError::Parse(_))
        ));
    }

    #[test]
    fn an_allowed_read_masked_grants_a_masked_view_only() {
        let engine = Engine::default_policies().unwrap();
        let p = principal(&[Role::CustomerService], None);
        let iban = field("iban", Category::Financial, Purpose::Contract);
        let seq = AuditSeq::for_tests(1);
        let masked = engine
            .decide_fields(
                &p,
                Action::ReadMasked,
                &ctx(Purpose::Contract),
                std::slice::from_ref(&iban),
            )
            .unwrap();
        assert!(masked[0].is_allow());
        assert_eq!(masked[0].policies, ["customer-service-masked-bank-details"]);
        assert!(masked[0].grant(&seq).is_none(), "never the value");
        assert_eq!(masked[0].masked_grant(&seq).unwrap().field(), "iban");
        let read = engine
            .decide_fields(&p, Action::Read, &ctx(Purpose::Contract), &[iban])
            .unwrap();
        assert!(!read[0].is_allow());
        assert!(read[0].masked_grant(&seq).is_none());
        // A read allowed grants the value, not a masked view.
        let fo = principal(&[Role::FinanceOfficer], None);
        let f = field("iban", Category::Financial, Purpose::Payments);
        let read = engine
            .decide_fields(&fo, Action::Read, &ctx(Purpose::Payments), &[f])
            .unwrap();
        assert!(read[0].grant(&seq).is_some());
        assert!(read[0].masked_grant(&seq).is_none());
    }

    #[test]
    fn a_deny_grants_nothing() {
        let engine = Engine::default_policies().unwrap();
        let p = principal(&[Role::Analyst], None);
        let d = engine
            .decide_fields(
                &p,
                Action::Read,
                &ctx(Purpose::PortfolioAnalysis),
                &[field(
                    "phone",
                    Category::Contact,
                    Purpose::PortfolioAnalysis,
                )],
            )
            .unwrap();
        assert!(!d[0].is_allow());
        assert!(d[0].grant(&AuditSeq::for_tests(1)).is_none());
    }

    #[test]
    fn only_an_allowed_read_or_export_is_a_capability_to_decrypt() {
        let engine = Engine::default_policies().unwrap();
        let p = principal(&[Role::NuisanceOfficer], None);
        let f = field("phone", Category::Contact, Purpose::Nuisance);
        let seq = AuditSeq::for_tests(1);
        for action in Action::ALL {
            let d = engine
                .decide_fields(
                    &p,
                    *action,
                    &ctx(Purpose::Nuisance),
                    std::slice::from_ref(&f),
                )
                .unwrap();
            if !d[0].is_allow() {
                continue;
            }
            let opens = d[0].grant(&seq).is_some();
            assert_eq!(
                opens,
                matches!(action, Action::Read | Action::Export),
                "{action:?}"
            );
        }
        // The twin: the allowed read does open.
        let read = engine
            .decide_fields(&p, Action::Read, &ctx(Purpose::Nuisance), &[f])
            .unwrap();
        assert!(read[0].grant(&seq).is_some());
    }
}
