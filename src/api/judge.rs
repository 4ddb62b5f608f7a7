//! Long calls judged again while they run: a watch of the trail, an export of the trail or of
//! a subject, a backup, an evidence download or upload. Such a call is judged once when it
//! starts, but may run for minutes; a token revoked or expired, a policy reloaded, a mandate
//! revoked or a restriction placed meanwhile must end it, not wait for it to finish.
//!
//! A `Judge` holds the call's credentials. Before the call sends more, it asks whether a
//! judgement is due (`Judge::due`): a change that may judge callers otherwise was made on this
//! node or taken in from another (`Vault::judgements`), or `JUDGED_EVERY` went by (an expiry).
//! Then the caller is authenticated again with the same credentials and the call's own check
//! (`keep`) asks the policy in force, on the facts as they are now; a failure ends the call with
//! `UNAUTHENTICATED` or `PERMISSION_DENIED`, the denial on the trail.
//!
//! Invariant: a long call sends a message only while no judgement is due, or right after a
//! judgement that let it go on.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    domain::Principal,
    identity::{Credentials, Identity},
    vault::{Vault, VaultError},
};

/// How often, at the longest, a long call judges its caller again: a call whose token expires
/// ends within about this long. A revocation, a policy reload or a change of a subject's facts
/// (`Vault::judgements`) has it judged again before it sends on.
pub(crate) const JUDGED_EVERY: Duration = Duration::from_secs(1);

/// A long call's caller, judged again while the call runs (see the module's documentation).
#[derive(Clone)]
pub(crate) struct Judge {
    vault: Arc<Vault>,
    identity: Arc<Identity>,
    creds: Arc<Credentials>,
    judged: Instant,
    judged_at: u64,
    /// The call's entry, for a call its caller's credentials no longer authenticate (`for_call`).
    call: Option<Arc<Call>>,
}

/// Who made a call and what it is, as its first judgement found: what the trail says of a call
/// ended because its caller's credentials no longer authenticate.
struct Call {
    principal: Principal,
    action: &'static str,
    subject: Option<String>,
    target: Option<String>,
}

impl std::fmt::Debug for Judge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credentials stay out of it.
        f.debug_struct("Judge")
            .field("judged", &self.judged)
            .field("judged_at", &self.judged_at)
            .finish_non_exhaustive()
    }
}

impl Judge {
    /// A judge for a call whose first judgement starts now: made before the call is
    /// authenticated, so that a change made while it is judged has it judged again.
    pub(crate) fn new(vault: &Arc<Vault>, identity: &Arc<Identity>, creds: Credentials) -> Self {
        Self {
            judged_at: vault.judgements(),
            judged: Instant::now(),
            vault: Arc::clone(vault),
            identity: Arc::clone(identity),
            creds: Arc::new(creds),
            call: None,
        }
    }

    /// Names the call, once its first judgement let `principal` make it: when a later
    /// judgement finds the credentials no longer authenticate (a token revoked or expired),
    /// the trail gets an entry `action` of `principal` saying the call ended and why.
    pub(crate) fn for_call(
        mut self,
        principal: Principal,
        action: &'static str,
        subject: Option<String>,
        target: Option<String>,
    ) -> Self {
        self.call = Some(Arc::new(Call {
            principal,
            action,
            subject,
            target,
        }));
        self
    }

    /// The call's credentials, for its first judgement.
    pub(crate) fn credentials(&self) -> &Arc<Credentials> {
        &self.creds
    }

    /// Whether the caller must be judged again before the call sends more.
    pub(crate) fn due(&self) -> bool {
        self.judged.elapsed() >= JUDGED_EVERY || self.changed()
    }

    /// Whether a change that may judge callers otherwise came since the last judgement.
    pub(crate) fn changed(&self) -> bool {
        self.vault.judgements() != self.judged_at
    }

    /// Authenticates the caller again and runs `keep` (the call's own check on the policy in
    /// force, which appends the denial when it refuses). On a blocking thread.
    pub(crate) fn judge(
        &mut self,
        keep: impl FnOnce(&Vault, &Principal) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        // Read before the judgement: a change made while it runs has the next one due.
        let seen = self.vault.judgements();
        let principal = match self.identity.authenticate(&self.vault, &self.creds) {
            Ok(principal) => principal,
            Err(e) => {
                if let Some(call) = &self.call {
                    self.vault.record_call_ended(
                        &call.principal,
                        call.action,
                        call.subject.as_deref(),
                        call.target.as_deref(),
                        &e,
                    );
                }
                return Err(e);
            }
        };
        keep(&self.vault, &principal)?;
        self.judged = Instant::now();
        self.judged_at = seen;
        Ok(())
    }

    /// `judge` when a judgement is due. On a blocking thread.
    pub(crate) fn keep_up(
        &mut self,
        keep: impl FnOnce(&Vault, &Principal) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        if self.due() { self.judge(keep) } else { Ok(()) }
    }

    /// `judge` on one of the caller's places among the call threads, for a call sending from
    /// the async runtime; its failure as the status that ends the call.
    pub(crate) async fn judge_on_place(
        &mut self,
        key: crate::vault::places::CallerKey,
        keep: impl FnOnce(&Vault, &Principal) -> Result<(), VaultError> + Send + 'static,
    ) -> Result<(), tonic::Status> {
        let place = super::take_place(&self.vault, key).await?;
        let mut judge = self.clone();
        let judged = place
            .run(move || judge.judge(keep).map(|()| judge))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "a judgement task failed");
                tonic::Status::internal("internal error")
            })?
            .map_err(|e| self.status(e))?;
        *self = judged;
        Ok(())
    }

    /// Sends `message` on `tx` from a blocking thread once the client has made room for it,
    /// judging the caller first when a judgement is due (`keep_up` with `keep`): a refusal goes
    /// out in its place and ends the stream. False when the stream is over.
    pub(crate) fn send_blocking<T: Send + 'static>(
        &mut self,
        tx: &super::stream::Sender<T>,
        message: Result<T, tonic::Status>,
        keep: impl FnOnce(&Vault, &Principal) -> Result<(), VaultError>,
    ) -> bool {
        let Some(slot) = tx.reserve_blocking() else {
            return false;
        };
        if let Err(e) = self.keep_up(keep) {
            slot.send(Err(self.status(e)));
            return false;
        }
        slot.send(message)
    }

    /// The status that ends a call its judgement refused.
    pub(crate) fn status(&self, e: VaultError) -> tonic::Status {
        super::status::to_status(self.vault.after_failure(e))
    }
}
