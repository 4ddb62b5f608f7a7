//! The policy set in force: reading it for a decision, explaining a decision, and replacing it
//! at run time (an admin RPC or SIGHUP) without a restart. An invalid set is refused with its
//! errors and the old one stays in force; every change is audited with the set's digest.

use std::sync::Arc;

use super::{META_POLICY_DIGEST, PolicyLoader, Vault, VaultError};
use crate::{
    audit::AuditEvent,
    domain::{Principal, now_unix},
    policy::{AdminAction, Engine},
};

/// The outcome of a reload.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Reload {
    /// Digest of the set now in force.
    pub digest: String,
    /// Policies in it.
    pub policies: usize,
    /// False when the new set is the same as the old one.
    pub changed: bool,
}

impl Vault {
    /// Where `reload_policies` reads the policy set from.
    pub fn with_policy_loader(mut self, loader: PolicyLoader) -> Self {
        self.policy_loader = Some(loader);
        self
    }

    /// The policy set in force (cheap: a shared handle).
    pub fn policy(&self) -> Arc<Engine> {
        match self.policy.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the policy set from its source again and puts it in force. `actor` is `None` for
    /// a reload by signal. An invalid set is refused (`FailedPrecondition` with Cedar's errors)
    /// and the old set stays in force.
    pub fn reload_policies(&self, actor: Option<&Principal>) -> Result<Reload, VaultError> {
        let mut event = match actor {
            Some(a) => self
                .require_admin(a, AdminAction::ManagePolicies, "policy-reload", None, "")?
                .into_template(),
            None => AuditEvent {
                principal: "kluis".into(),
                action: "policy-reload".into(),
                decision: "allow".into(),
                reason: Some("reload by signal".into()),
                ..AuditEvent::default()
            },
        };
        let loader = self.policy_loader.as_ref().ok_or_else(|| {
            VaultError::FailedPrecondition("this server has no policy source to reload from".into())
        })?;
        let engine = match loader() {
            Ok(e) => e,
            Err(errors) => {
                event.decision = "deny".into();
                event.reason =
                    Some("the new policy set is invalid; the old one stays in force".into());
                self.audit.append(&event)?;
                tracing::error!(
                    "policy reload refused: the new set is invalid; the old one stays in force"
                );
                return Err(VaultError::FailedPrecondition(format!(
                    "the new policy set is invalid; the old one stays in force:\n{errors}"
                )));
            }
        };
        let old = self.policy();
        let changed = old.digest() != engine.digest();
        let reload = Reload {
            digest: engine.digest().to_owned(),
            policies: engine.len(),
            changed,
        };
        event.action = if changed {
            "policy-change"
        } else {
            "policy-reload"
        }
        .into();
        event.time = now_unix();
        event.target = Some(format!("sha256:{}", reload.digest));
        event.reason = Some(format!(
            "{} policies; replaces sha256:{}",
            reload.policies,
            old.digest()
        ));
        // The trail first: no policy decides that is not on record.
        self.audit.append(&event)?;
        // The set in force lives in the store: the other nodes take it up within a second.
        let stored = super::nodes::store_policy_set(self.store.as_ref(), &self.rows, &engine);
        let generation = match stored {
            Ok(generation) => generation,
            Err(e) => {
                // Refused by the store: the old set stays in force, and the trail says so
                // after the entry that announced the change.
                event.time = now_unix();
                event.decision = "deny".into();
                event.reason = Some(format!("not carried out: {e}; the old set stays in force"));
                if let Err(a) = self.audit.append(&event) {
                    tracing::error!(error = %a, "cannot audit a policy reload the store refused");
                }
                tracing::error!(error = %e, "policy reload refused by the store; the old set stays in force");
                return Err(e);
            }
        };
        // What the next start compares its set with (whether to record a `policy-change`):
        // the set is in force on every node already, so a failure here costs at most an entry
        // that names the change once more.
        if let Err(e) = self
            .store
            .set_meta(META_POLICY_DIGEST, engine.digest().as_bytes())
        {
            tracing::warn!(error = %e, "cannot record the digest of the policy set now in force");
        }
        self.follower
            .policy_generation
            .store(generation, std::sync::atomic::Ordering::SeqCst);
        match self.policy.write() {
            Ok(mut p) => *p = Arc::new(engine),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(engine),
        }
        self.judgements_changed();
        tracing::info!(digest = %reload.digest, policies = reload.policies, changed, "policy set reloaded");
        Ok(reload)
    }
}

/// A decision explained: the decision and the text of each deciding policy.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Explanation {
    /// The decision.
    pub decision: crate::policy::Decision,
    /// (id, text) of each deciding policy.
    pub policies: Vec<(String, String)>,
}

impl Vault {
    /// Explains how the policy in force decides `action` on a field like `resource` for
    /// `principal` (or, for the security and privacy officers, for another role).
    pub fn explain(
        &self,
        caller: &Principal,
        as_role: Option<crate::domain::Role>,
        action: crate::policy::Action,
        ctx: &crate::domain::AccessContext,
        resource: crate::policy::FieldResource,
    ) -> Result<Explanation, VaultError> {
        let mut principal = caller.clone();
        if let Some(role) = as_role.filter(|r| !caller.roles.contains(r)) {
            self.require_admin(
                caller,
                AdminAction::ManagePolicies,
                "policy-explain",
                Some(role.as_str()),
                "",
            )?
            .commit()?;
            principal.roles = vec![role];
        } else {
            // For the caller's own roles no admin right is needed, but it is an answer about
            // the policy all the same: on the trail, with what was asked (never a value).
            let mut event = AuditEvent {
                time: now_unix(),
                principal: caller.id.as_str().into(),
                roles: caller.roles.iter().map(|r| r.as_str().to_owned()).collect(),
                token_id: caller.token_id.clone(),
                action: "policy-explain".into(),
                decision: "allow".into(),
                purpose: Some(ctx.purpose.as_str().into()),
                channel: Some(ctx.channel.clone()),
                reason: Some(format!(
                    "{} of `{}` data, for the caller's own roles",
                    action.as_str(),
                    resource.category
                )),
                ..super::caller_event(caller)
            };
            if !resource.subject.is_empty() {
                event.subject = Some(resource.subject.clone());
            }
            self.audit.append(&event)?;
        }
        let engine = self.policy();
        let decision = engine
            .decide_fields(&principal, action, ctx, std::slice::from_ref(&resource))?
            .pop()
            .ok_or_else(|| VaultError::FailedPrecondition("no decision".into()))?;
        let policies = decision
            .policies
            .iter()
            .map(|id| (id.clone(), engine.policy_text(id).unwrap_or_default()))
            .collect();
        Ok(Explanation { decision, policies })
    }
}
