//! Custody of the root key as the running vault sees it: what seals it, sealing again on a
//! security officer's word, the unseal put on the trail, and replacing the set of shares.

use std::sync::Arc;

use super::{Vault, VaultError};
use crate::{
    audit::AuditEvent,
    domain::{Principal, now_unix},
    keys::StoreSeal,
    policy::AdminAction,
    seal::{
        pkcs11::Hsm,
        shares::{Share, ShareSetMeta},
    },
};

impl Vault {
    /// Uses `hsm` (from `[seal]`) for root changes to an HSM seal.
    pub fn with_hsm(mut self, hsm: Option<Arc<Hsm>>) -> Self {
        self.hsm = hsm;
        self
    }

    /// Tells the key jobs of this vault to stop after their current batch (the node is shutting
    /// down or sealing); they resume where they stopped when a vault serves the store again.
    pub fn stop_jobs(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether `stop_jobs` was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The configured HSM, if any.
    pub fn hsm(&self) -> Option<Arc<Hsm>> {
        self.hsm.clone()
    }

    /// What seals the root key and when that last changed (Unix seconds).
    pub fn seal_info(&self) -> Result<(StoreSeal, Option<i64>), VaultError> {
        Ok(self.keyring.seal()?)
    }

    /// Puts the unseal that opened this vault on the trail: how (which shares, never their
    /// bytes), and what was refused while sealed.
    pub fn record_unseal(&self, how: &str) -> Result<(), VaultError> {
        self.audit.append(&AuditEvent {
            time: now_unix(),
            principal: "kluis".into(),
            action: "unseal".into(),
            decision: "allow".into(),
            reason: Some(how.to_owned()),
            ..AuditEvent::default()
        })?;
        Ok(())
    }

    /// Allows sealing this node again: a security officer's decision, on the trail before the
    /// keys are wiped. The caller then stops serving and drops the vault.
    pub fn allow_seal(&self, actor: &Principal, justification: &str) -> Result<(), VaultError> {
        let mut event =
            self.require_admin(actor, AdminAction::ManageKeys, "seal", None, justification)?;
        event.reason = Some(
            "this node seals: its keys are wiped from memory until custodians unseal it".into(),
        );
        event.commit()?;
        Ok(())
    }

    /// Refuses any of `shares` that is not one of the recorded set (its number's share,
    /// compared in constant time), or a store not sealed by shares; the recorded set when all
    /// are of it.
    pub fn check_recorded_shares(&self, shares: &[Share]) -> Result<ShareSetMeta, VaultError> {
        let (StoreSeal::Shares(recorded), _) = self.keyring.seal()? else {
            return Err(VaultError::FailedPrecondition(
                "this store is not sealed by shares; change its seal with `kluis admin root \
                 reseal --to shares`"
                    .into(),
            ));
        };
        for share in shares {
            recorded.check(share).map_err(crate::keys::KeyError::from)?;
        }
        Ok(recorded)
    }

    /// Replaces the store's set of shares by `new` (a whole set), the root key unchanged:
    /// `old` must be a quorum of the set in force. No token: the quorum is the authority. On
    /// the trail (which shares were given, the old and the new set) before the store changes;
    /// a refusal after that is on the trail too.
    pub fn replace_shares(&self, old: &[Share], new: &[Share]) -> Result<String, VaultError> {
        // Shares that are not of the recorded set are refused before anything is written, as
        // a call without a token is.
        let recorded = self.check_recorded_shares(old)?;
        let mut given: Vec<u8> = old.iter().map(Share::number).collect();
        given.sort_unstable();
        given.dedup();
        let numbers = given
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let summary = match new.first() {
            Some(n) => format!(
                "shares {numbers} of set {} (any {}) replace it by set {} (any {} of {}); the \
                 root key stays",
                recorded.set,
                recorded.describe(),
                n.set(),
                n.threshold(),
                n.total()
            ),
            None => "no new shares given".into(),
        };
        self.audit.append(&AuditEvent {
            time: now_unix(),
            principal: "custodians".into(),
            action: "shares-replace".into(),
            decision: "allow".into(),
            reason: Some(summary.clone()),
            ..AuditEvent::default()
        })?;
        match self.keyring.replace_shares(old, new) {
            Ok(_) => Ok(summary),
            Err(e) => {
                self.audit.append(&AuditEvent {
                    time: now_unix(),
                    principal: "custodians".into(),
                    action: "shares-replace".into(),
                    decision: "deny".into(),
                    reason: Some(format!("not carried out: {e}")),
                    ..AuditEvent::default()
                })?;
                Err(e.into())
            }
        }
    }
}
