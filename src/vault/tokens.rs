//! Credentials: bearer tokens of 256 random bits, stored only as SHA-256 hashes, each bound to a
//! principal, roles, an expiry and optionally one subject.
//!
//! Invariant: a token is shown once, when issued, and never logged, audited or stored in clear.
//! Invariant: authentication costs one hash and one indexed lookup, or one hash and a lookup in
//! memory for a token authenticated from the store less than `TOKEN_SEEN_FOR` ago whose row the
//! token register still names; no KDF, no policy work.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{Vault, VaultError};
use crate::{
    audit::AuditEvent,
    domain::{
        InputError, Need, Principal, PrincipalId, Role, SubjectId, check_free_text, check_roles,
        now_unix, parse_role,
    },
    policy::AdminAction,
    store::TokenRow,
};

/// Prefix of every kluis bearer token (helps secret scanners recognise a leaked one).
pub const TOKEN_PREFIX: &str = "kluis_";
/// Default token lifetime: 30 days.
pub const DEFAULT_TTL_SECS: u64 = 30 * 86_400;
/// Longest token lifetime: 400 days.
pub const MAX_TTL_SECS: u64 = 400 * 86_400;

/// A bearer token in clear. Wiped on drop, never printed by `Debug`.
pub struct BearerToken(Zeroizing<String>);

impl BearerToken {
    /// Wraps a token string received from a caller.
    pub fn new(token: String) -> Self {
        Self(Zeroizing::new(token))
    }

    /// The token. The only way to reach it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// What a new token is for.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    /// Whom it belongs to.
    pub principal: PrincipalId,
    /// Its roles (at least one).
    pub roles: Vec<Role>,
    /// Lifetime in seconds.
    pub ttl_secs: u64,
    /// The subject it is bound to.
    pub scope_subject: Option<SubjectId>,
}

impl TokenSpec {
    /// Parses an issue request; `ttl_secs == 0` means the default lifetime.
    pub fn parse(
        principal: &str,
        roles: &[String],
        ttl_secs: u64,
        scope_subject: &str,
    ) -> Result<Self, InputError> {
        let principal = PrincipalId::parse("principal_id", principal)?;
        let mut parsed = Vec::with_capacity(roles.len());
        for (i, r) in roles.iter().enumerate() {
            let role = parse_role(&format!("roles[{i}]"), r)?;
            if !parsed.contains(&role) {
                parsed.push(role);
            }
        }
        let ttl_secs = if ttl_secs == 0 {
            DEFAULT_TTL_SECS
        } else {
            ttl_secs
        };
        if ttl_secs > MAX_TTL_SECS {
            return Err(InputError::new(
                "ttl_seconds",
                format!("at most {MAX_TTL_SECS} seconds (400 days)"),
            ));
        }
        let scope_subject = if scope_subject.is_empty() {
            None
        } else {
            Some(SubjectId::parse("scope_subject_id", scope_subject)?)
        };
        check_roles(&parsed, scope_subject.as_ref())?;
        Ok(Self {
            principal,
            roles: parsed,
            ttl_secs,
            scope_subject,
        })
    }
}

/// A token just issued: shown once.
#[derive(Debug)]
pub struct IssuedToken {
    /// Its id, safe to show and log.
    pub id: String,
    /// The token itself.
    pub token: BearerToken,
    /// Unix seconds.
    pub expires_at: i64,
    /// It authenticates nobody until a privacy officer approves it (`kluis admin token approve`).
    pub pending_approval: bool,
}

impl TokenSpec {
    /// Whether a token of this spec takes effect only after a second person approved it: it
    /// carries a role that sees personal data in clear.
    pub fn needs_approval(&self) -> bool {
        self.roles.iter().any(|r| r.reads_personal_data())
    }
}

/// Store metadata key of the token register.
const META_TOKEN_REGISTER: &str = "token_register";

/// The MAC every token row must carry, by token id, kept under a MAC of its own in the store's
/// meta and in memory. Written before the row it registers, so a crash between leaves a row
/// that authenticates nobody, never one that authenticates too much. A token row put back from
/// an older copy (a revocation or approval undone) carries another MAC than the register names
/// and authenticates nobody; one missing from the register likewise.
#[derive(Default)]
pub(crate) struct TokenRegister {
    /// `None` until first read from the store, and again once another node changed it.
    macs: std::sync::Mutex<Option<RegisterCopy>>,
    /// Tokens authenticated from their rows lately.
    seen: SeenTokens,
}

/// The register as this node last read or wrote it: the MACs and the stored bytes they came
/// from (what a change must find still stored).
struct RegisterCopy {
    map: std::collections::BTreeMap<String, String>,
    stored: Option<Vec<u8>>,
    /// When it was read from the store or written there (Unix seconds).
    read_at: i64,
}

/// How far the clocks of two nodes may be apart for [`Vault::forget_register_behind`]: a token
/// row changed (by its own node's clock) this long before the register was read here may
/// still be newer than the register held.
const REGISTER_CLOCK_SLACK: i64 = 5;

/// How often a register change is tried again when another node changed the register first.
const REGISTER_RETRIES: usize = 16;

/// How long a token authenticated from its stored row is taken as authenticated without reading
/// the row again, while the register names the row's MAC (checked on every call): a revocation
/// or approval made through kluis is in force at the next call on this node, and on another
/// when it takes in the register (`nodes::FOLLOW_INTERVAL`) or after this long, whichever comes
/// first. A row changed or deleted by hand is obeyed up to this much later, and until then the
/// token authenticates as kluis last wrote it, never as edited. Counted from before the row was
/// read.
pub(crate) const TOKEN_SEEN_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Most tokens held as seen; past it, all are forgotten and read from the store again.
const TOKENS_SEEN_AT_MOST: usize = 4096;

/// Tokens authenticated from their stored rows lately, by the first half of the token's hash
/// (the whole hash is compared in constant time on a hit). Holds hashes and principals, never
/// a token.
#[derive(Default)]
pub(crate) struct SeenTokens {
    map: std::sync::Mutex<std::collections::HashMap<[u8; 16], std::sync::Arc<SeenToken>>>,
}

/// A token authenticated from its stored row.
struct SeenToken {
    hash: [u8; 32],
    /// The row's MAC as the register names it (hex).
    mac: String,
    /// The principal the row authenticated, its expiry included.
    principal: Principal,
    at: std::time::Instant,
}

fn seen_key(hash: &[u8; 32]) -> [u8; 16] {
    *hash.first_chunk::<16>().unwrap_or(&[0; 16])
}

impl SeenTokens {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 16], std::sync::Arc<SeenToken>>>
    {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token of `hash`, when seen less than `TOKEN_SEEN_FOR` ago.
    fn get(&self, hash: &[u8; 32]) -> Option<std::sync::Arc<SeenToken>> {
        let map = self.lock();
        let seen = map.get(&seen_key(hash))?;
        (bool::from(seen.hash.ct_eq(hash)) && seen.at.elapsed() < TOKEN_SEEN_FOR)
            .then(|| std::sync::Arc::clone(seen))
    }

    fn insert(&self, seen: SeenToken) {
        let mut map = self.lock();
        if map.len() >= TOKENS_SEEN_AT_MOST {
            map.clear();
        }
        map.insert(seen_key(&seen.hash), std::sync::Arc::new(seen));
    }

    /// Forgets token `id`: kluis changed its row (or tried to).
    fn forget(&self, id: &str) {
        self.lock().retain(|_, s| s.principal.token_id != id);
    }
}

impl Vault {
    fn read_register(&self) -> Result<RegisterCopy, VaultError> {
        let stored = self.store.meta(META_TOKEN_REGISTER)?;
        let map = match &stored {
            None => std::collections::BTreeMap::new(),
            Some(stored) => {
                let bytes = self.rows.open_meta(META_TOKEN_REGISTER, stored)?;
                serde_json::from_slice(bytes)
                    .map_err(|_| VaultError::DataLoss("stored token register".into()))?
            }
        };
        Ok(RegisterCopy {
            map,
            stored,
            read_at: now_unix(),
        })
    }

    /// The register's MACs, read from the store on first use (its own MAC checked).
    fn with_register<T>(
        &self,
        f: impl FnOnce(&std::collections::BTreeMap<String, String>) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let mut guard = self
            .token_register
            .macs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(self.read_register()?);
        }
        match guard.as_ref() {
            Some(copy) => f(&copy.map),
            None => f(&std::collections::BTreeMap::new()),
        }
    }

    /// Forgets the register held in memory when `row` may have been changed after it was read
    /// (by another node, less than a poll ago): the row is then checked against the register
    /// as stored. A row changed well before the register was read cannot be named by a newer
    /// one (the register is written before the row), so a token whose row disagrees with the
    /// register for another reason (put back by hand, a change that failed halfway) costs no
    /// read of the register, however often it is presented.
    fn forget_register_behind(&self, row: &TokenRow) {
        let changed = [Some(row.created_at), row.approved_at, row.revoked_at]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(i64::MIN);
        let mut guard = self
            .token_register
            .macs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard
            .as_ref()
            .is_some_and(|copy| copy.read_at <= changed.saturating_add(REGISTER_CLOCK_SLACK))
        {
            *guard = None;
        }
    }

    /// Forgets the register held in memory: another node changed it.
    pub(crate) fn forget_token_register(&self) {
        *self
            .token_register
            .macs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Sets the register's entry for `id` to `mac` (`None`: removes it) when it is `expect`,
    /// compare-and-set against the stored register so that changes by other nodes are not
    /// lost; reads the register again when another node changed it first. Returns the entry
    /// before the change.
    fn change_register(
        &self,
        copy: &mut Option<RegisterCopy>,
        id: &str,
        mac: Option<String>,
        expect: Option<Option<&str>>,
    ) -> Result<Option<String>, VaultError> {
        for _ in 0..REGISTER_RETRIES {
            let current = match copy.take() {
                Some(c) => c,
                None => self.read_register()?,
            };
            let before = current.map.get(id).cloned();
            if let Some(expected) = expect
                && before.as_deref() != expected
            {
                *copy = Some(current);
                return Ok(before);
            }
            let mut next = current.map.clone();
            match &mac {
                Some(m) => next.insert(id.to_owned(), m.clone()),
                None => next.remove(id),
            };
            let bytes = serde_json::to_vec(&next).map_err(|e| {
                VaultError::Store(crate::store::StoreError::Database(e.to_string()))
            })?;
            let sealed = self.rows.seal_meta(META_TOKEN_REGISTER, &bytes);
            match self
                .store
                .replace_meta(META_TOKEN_REGISTER, current.stored.as_deref(), &sealed)
            {
                Ok(()) => {
                    *copy = Some(RegisterCopy {
                        map: next,
                        stored: Some(sealed),
                        read_at: now_unix(),
                    });
                    return Ok(before);
                }
                // Another node changed the register since it was read: read it again.
                Err(crate::store::StoreError::Stale(_)) => *copy = None,
                Err(e) => {
                    *copy = Some(current);
                    return Err(e.into());
                }
            }
        }
        Err(VaultError::Store(crate::store::StoreError::Stale(
            "the token register (other nodes kept changing it)".into(),
        )))
    }

    /// Registers `row`'s MAC as the one its token must carry, in the store, then writes the row
    /// with `write`, both under the register's lock (so two changes of one token in this
    /// process cannot leave the register naming the one that lost); when `write` fails, the
    /// entry is put back as it was, unless another change replaced it meanwhile.
    fn register_token<T>(
        &self,
        row: &TokenRow,
        write: impl FnOnce() -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let mut guard = self
            .token_register
            .macs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mac = hex::encode(&row.mac);
        let before = self.change_register(&mut guard, &row.id, Some(mac.clone()), None)?;
        let written = write();
        // Whatever came of it (a write that failed may still have been made, and the register
        // is then put back): the row is read again at the token's next call.
        self.token_register.seen.forget(&row.id);
        match written {
            Ok(t) => {
                self.judgements_changed();
                Ok(t)
            }
            Err(e) => {
                if let Err(undo) =
                    self.change_register(&mut guard, &row.id, before, Some(Some(&mac)))
                {
                    tracing::error!(error = %undo, token = %row.id, "could not put the token register back after a failed write");
                }
                Err(e)
            }
        }
    }

    /// Whether `row` carries the MAC the register names for it (compared in constant time).
    pub(crate) fn is_registered(&self, row: &TokenRow) -> Result<bool, VaultError> {
        self.registers(&row.id, &hex::encode(&row.mac))
    }

    /// Whether the register names `mac` (hex) for token `id` (compared in constant time).
    fn registers(&self, id: &str, mac: &str) -> Result<bool, VaultError> {
        self.with_register(|map| {
            Ok(map.get(id).is_some_and(|named| {
                named.len() == mac.len() && bool::from(named.as_bytes().ct_eq(mac.as_bytes()))
            }))
        })
    }

    /// The principal of a token authenticated from its stored row less than `TOKEN_SEEN_FOR`
    /// ago, when the register still names that row and the token has not expired since.
    fn seen_token(&self, hash: &[u8; 32]) -> Result<Option<Principal>, VaultError> {
        let Some(seen) = self.token_register.seen.get(hash) else {
            return Ok(None);
        };
        if seen.principal.expires_at <= now_unix()
            || !self.registers(&seen.principal.token_id, &seen.mac)?
        {
            return Ok(None);
        }
        Ok(Some(seen.principal.clone()))
    }

    /// Token ids the register names, for `store verify`.
    pub(crate) fn registered_tokens(&self) -> Result<Vec<String>, VaultError> {
        self.with_register(|map| Ok(map.keys().cloned().collect()))
    }

    /// Establishes who presents `token`. Unknown, expired and revoked tokens are refused alike
    /// in the message the caller sees.
    pub fn authenticate(&self, token: &BearerToken) -> Result<Principal, VaultError> {
        self.check_root_current()?;
        let unauthenticated =
            || VaultError::Unauthenticated("unknown, expired or revoked token".into());
        let refuse = |reason: &'static str| {
            crate::metrics::auth_failure(reason);
            unauthenticated()
        };
        let hash = token.hash();
        if let Some(principal) = self.seen_token(&hash)? {
            self.rate_limit
                .admit(&principal.token_id, self.limits.requests_per_second)?;
            return Ok(principal);
        }
        // `TOKEN_SEEN_FOR` counts from before the row is read.
        let read_at = std::time::Instant::now();
        let mut read_again = false;
        let row = loop {
            let Some(row) = self.store.token_by_hash(&hash)? else {
                return Err(refuse("unknown-token"));
            };
            if !bool::from(row.hash.ct_eq(&hash)) {
                return Err(refuse("unknown-token"));
            }
            if row.revoked_at.is_some() {
                return Err(refuse("revoked-token"));
            }
            if row.expires_at <= now_unix() {
                return Err(refuse("expired-token"));
            }
            // A token row written to the database by hand (inserted, a role edited, a
            // revocation undone) authenticates nobody; the row check logs it.
            if self.rows.check(&row).is_err() {
                return Err(refuse("altered-token-row"));
            }
            // An older copy of the row put back (a revocation or approval undone) carries a
            // MAC of its own, not the one kluis last wrote.
            if !self.is_registered(&row)? {
                // Unless a change of this token under way on this node (a revocation, an
                // approval) registered its row and had not written it yet when this one was
                // read: it holds the register's lock until it has, which `is_registered`
                // waited for, so the row read again is the one it wrote. Or another node
                // changed the token (issued, approved, revoked it) less than a poll ago, and
                // the register held here is behind: the row is checked again against the
                // register as stored.
                if !read_again {
                    read_again = true;
                    self.forget_register_behind(&row);
                    continue;
                }
                tracing::error!(kind = "token", row = %row.id, "a token row is not the one kluis last wrote (an older copy put back?) and authenticates nobody; run `kluis admin store verify`");
                return Err(refuse("altered-token-row"));
            }
            break row;
        };
        if row.is_pending() {
            crate::metrics::auth_failure("pending-approval");
            return Err(VaultError::Unauthenticated(format!(
                "token `{}` awaits approval by a privacy officer (`kluis admin token approve {} \
                 --justification WHY`)",
                row.id, row.id
            )));
        }
        self.rate_limit
            .admit(&row.id, self.limits.requests_per_second)?;
        let principal = principal_from_row(&row)?;
        self.token_register.seen.insert(SeenToken {
            hash,
            mac: hex::encode(&row.mac),
            principal: principal.clone(),
            at: read_at,
        });
        Ok(principal)
    }

    /// Takes one request from the rate-limit bucket of `key` (`[limits] requests_per_second`),
    /// for callers authenticated without a kluis token: a service's certificate, an employee's
    /// provider token.
    pub fn admit(&self, key: &str) -> Result<(), VaultError> {
        self.rate_limit.admit(key, self.limits.requests_per_second)
    }

    /// Issues a token, when the policy lets `actor` manage tokens. Audited either way.
    pub fn issue_token(
        &self,
        actor: &Principal,
        spec: &TokenSpec,
        justification: &str,
    ) -> Result<IssuedToken, VaultError> {
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageTokens,
            "token-issue",
            Some(spec.principal.as_str()),
            justification,
        )?;
        if spec.principal == actor.id {
            return Err(VaultError::FailedPrecondition(
                "a token cannot be issued to its issuer; ask another security officer".into(),
            ));
        }
        self.check_separation(&spec.principal, &spec.roles)?;
        let id = new_token_id();
        event.target = Some(id.clone());
        event.subject = spec.scope_subject.as_ref().map(|s| s.as_str().to_owned());
        event.reason = Some(format!(
            "for `{}` with roles {}",
            spec.principal,
            spec.roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ));
        let pending = spec.needs_approval();
        if pending && let Some(reason) = event.reason.as_mut() {
            reason.push_str("; awaits approval by a privacy officer");
        }
        // The trail first: no credential exists that is not on record.
        event.commit_then(|| self.create_token(spec, id, Some(&actor.id), pending))
    }

    /// Approves a token waiting for its second person: a privacy officer who neither issued it
    /// nor is its holder, saying why (a justification is required). Audited either way.
    pub fn approve_token(
        &self,
        actor: &Principal,
        token_id: &str,
        justification: &str,
    ) -> Result<(), VaultError> {
        check_justification(justification, Need::Required)?;
        // The id is written to the audit entry in clear, also when it names nothing.
        super::guard::check_text("token_id", token_id)?;
        let mut event = self.require_admin(
            actor,
            AdminAction::Approve,
            "token-approve",
            Some(token_id),
            justification,
        )?;
        let find = || -> Result<TokenRow, VaultError> {
            self.store
                .tokens()?
                .into_iter()
                .find(|t| t.id == token_id)
                .ok_or_else(|| VaultError::NotFound(format!("token `{token_id}`")))
        };
        let mut read_again = false;
        let row = loop {
            let row = find()?;
            self.rows.check(&row)?;
            // An older copy of the row put back (a revoked token as it was while pending) is
            // not the row kluis last wrote: approving it would bring it back. Unless a change
            // under way on this node had registered its row and not written it yet, or another
            // node changed the register less than a poll ago (as in `authenticate`): read
            // both once more.
            if self.is_registered(&row)? {
                break row;
            }
            if read_again {
                return Err(VaultError::DataLoss(format!("stored token `{token_id}`")));
            }
            read_again = true;
            self.forget_register_behind(&row);
        };
        if !row.is_pending() || row.revoked_at.is_some() {
            return Err(VaultError::FailedPrecondition(format!(
                "token `{token_id}` is not waiting for approval"
            )));
        }
        // Approving it would answer as if it now worked, and it authenticates nobody. Checked
        // again once the entry is committed, as the approval is made.
        let expired =
            || format!("token `{token_id}` expired while it waited for approval; issue a new one");
        let expires_at = row.expires_at;
        if expires_at <= now_unix() {
            return event.refuse(expired());
        }
        let same = |p: &Option<String>| {
            p.as_deref()
                .and_then(|p| PrincipalId::parse("p", p).ok())
                .is_some_and(|p| p == actor.id)
        };
        if same(&row.requested_by) {
            return event.refuse(
                "the issuer of a token cannot approve it; ask another privacy officer".into(),
            );
        }
        if same(&Some(row.principal.clone())) {
            return event.refuse(
                "a token cannot be approved by its holder; ask another privacy officer".into(),
            );
        }
        let principal = PrincipalId::parse("principal", &row.principal).map_err(|_| {
            VaultError::Store(crate::store::StoreError::Corrupt(format!(
                "token `{token_id}`"
            )))
        })?;
        let roles = parse_roles(&row)?;
        // Checked again: the principal may have become a security officer since.
        self.check_separation(&principal, &roles)?;
        event.reason = Some(format!("token of `{principal}`"));
        let now = now_unix();
        let approved = TokenRow {
            approved_by: Some(actor.id.as_str().into()),
            approved_at: Some(now),
            ..row
        };
        let mac = self.rows.mac(&approved);
        event.commit_then(|| {
            self.register_token(
                &TokenRow {
                    mac: mac.clone(),
                    ..approved
                },
                || {
                    if expires_at <= now_unix() {
                        return Err(VaultError::FailedPrecondition(expired()));
                    }
                    if self
                        .store
                        .approve_token(token_id, actor.id.as_str(), now, &mac)?
                    {
                        Ok(())
                    } else {
                        Err(VaultError::FailedPrecondition(format!(
                            "token `{token_id}` is not waiting for approval"
                        )))
                    }
                },
            )
        })
    }

    /// Separation of duties across tokens: a principal that holds or ever held
    /// `security-officer` never gets another role, and one that holds another role does not
    /// become a security officer. Principal ids are compared in their normal form.
    fn check_separation(&self, principal: &PrincipalId, roles: &[Role]) -> Result<(), VaultError> {
        let wants_officer = roles.contains(&Role::SecurityOfficer);
        let now = now_unix();
        for t in self.store.tokens()? {
            let Ok(holder) = PrincipalId::parse("principal", &t.principal) else {
                continue;
            };
            if &holder != principal {
                continue;
            }
            // Decided on authentic rows only: a forged or edited token row of this principal
            // refuses the change.
            self.rows.check(&t)?;
            let was_officer = t.roles.iter().any(|r| r == Role::SecurityOfficer.as_str());
            let active = t.revoked_at.is_none() && t.expires_at > now;
            if !wants_officer && was_officer {
                return Err(VaultError::FailedPrecondition(format!(
                    "`{principal}` holds or held `security-officer` and never gets another role \
                     (separation of duties); use a different principal"
                )));
            }
            if wants_officer && !was_officer && active {
                return Err(VaultError::FailedPrecondition(format!(
                    "`{principal}` holds another role (token `{}`); revoke it before making them \
                     a security officer",
                    t.id
                )));
            }
        }
        Ok(())
    }

    /// Issues a token without a policy check: only for `kluis init` and `serve --dev`, which act
    /// with the authority of whoever holds the root key. Audited as `kluis-init`.
    pub fn bootstrap_token(&self, spec: &TokenSpec) -> Result<IssuedToken, VaultError> {
        self.check_separation(&spec.principal, &spec.roles)?;
        let id = new_token_id();
        let event = AuditEvent {
            time: now_unix(),
            principal: "kluis-init".into(),
            action: "token-issue".into(),
            decision: "allow".into(),
            target: Some(id.clone()),
            reason: Some(format!(
                "bootstrap token for `{}` with roles {}",
                spec.principal,
                spec.roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            ..AuditEvent::default()
        };
        self.audit.append(&event)?;
        self.create_token(spec, id, None, false)
    }

    /// Revokes a token by id.
    pub fn revoke_token(
        &self,
        actor: &Principal,
        token_id: &str,
        justification: &str,
    ) -> Result<(), VaultError> {
        // The id is written to the audit entry in clear, also when it names nothing.
        super::guard::check_text("token_id", token_id)?;
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageTokens,
            "token-revoke",
            Some(token_id),
            justification,
        )?;
        let Some(row) = self
            .store
            .tokens()?
            .into_iter()
            .find(|t| t.id == token_id && t.revoked_at.is_none())
        else {
            return Err(VaultError::NotFound(format!("active token `{token_id}`")));
        };
        // Revoking works even on a row that fails its check (revocation only takes away), but
        // such a row keeps its failing MAC: revoking it does not make it authentic.
        let now = now_unix();
        let authentic = self.rows.is_authentic(&row);
        // The row as read: an approval committed meanwhile makes the revocation find another
        // row, and it is refused rather than written with a MAC over the row before.
        let was = row.mac.clone();
        let revoked = TokenRow {
            revoked_at: Some(now),
            ..row
        };
        let mac = if authentic {
            self.rows.mac(&revoked)
        } else {
            revoked.mac.clone()
        };
        event.target = Some(token_id.into());
        event.commit_then(|| {
            // The register first: from here on only the revoked row is the one kluis wrote (for
            // a row that failed its check, a MAC no stored row carries).
            self.register_token(
                &TokenRow {
                    mac: self.rows.mac(&revoked),
                    ..revoked.clone()
                },
                || {
                    if self.store.revoke_token(token_id, now, &mac, &was)? {
                        Ok(())
                    } else {
                        Err(VaultError::FailedPrecondition(format!(
                            "token `{token_id}` was revoked or approved meanwhile; list it \
                             (`kluis admin token list`) and revoke it again if it is still active"
                        )))
                    }
                },
            )
        })
    }

    /// Lists tokens (never the tokens themselves).
    pub fn list_tokens(
        &self,
        actor: &Principal,
        include_inactive: bool,
    ) -> Result<Vec<TokenRow>, VaultError> {
        let mut event =
            self.require_admin(actor, AdminAction::ManageTokens, "token-list", None, "")?;
        let now = now_unix();
        // A row written by hand is not listed as a credential (the check logs it; `kluis admin
        // store verify` names it).
        let stored = self.store.tokens()?;
        // The register as stored, read after the rows (see `store verify`): a token another
        // node issued less than a poll ago is listed. A register that cannot be read fails the
        // listing rather than leaving every token out.
        self.forget_token_register();
        self.with_register(|_| Ok(()))?;
        let tokens: Vec<TokenRow> = stored
            .into_iter()
            .filter(|t| self.rows.check(t).is_ok() && self.is_registered(t).unwrap_or(false))
            .filter(|t| include_inactive || (t.revoked_at.is_none() && t.expires_at > now))
            .collect();
        event.reason = Some(format!("{} tokens listed", tokens.len()));
        event.commit()?;
        Ok(tokens)
    }

    fn create_token(
        &self,
        spec: &TokenSpec,
        id: String,
        requested_by: Option<&PrincipalId>,
        needs_approval: bool,
    ) -> Result<IssuedToken, VaultError> {
        // Whoever built the spec, its roles obey the same rules as a parsed one.
        check_roles(&spec.roles, spec.scope_subject.as_ref())?;
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(secret.as_mut_slice());
        let token = BearerToken(Zeroizing::new(format!(
            "{TOKEN_PREFIX}{}",
            hex::encode(secret.as_slice())
        )));
        let now = now_unix();
        let expires_at = now.saturating_add(i64::try_from(spec.ttl_secs).unwrap_or(i64::MAX));
        let row = self.rows.seal(
            TokenRow {
                id: id.clone(),
                hash: token.hash().to_vec(),
                principal: spec.principal.as_str().into(),
                roles: spec.roles.iter().map(|r| r.as_str().to_owned()).collect(),
                scope_subject: spec.scope_subject.as_ref().map(|s| s.as_str().to_owned()),
                created_at: now,
                expires_at,
                revoked_at: None,
                requested_by: requested_by.map(|p| p.as_str().to_owned()),
                needs_approval,
                approved_by: None,
                approved_at: None,
                mac: Vec::new(),
            },
            |r, mac| r.mac = mac,
        );
        self.register_token(&row, || Ok(self.store.insert_token(&row)?))?;
        Ok(IssuedToken {
            id,
            token,
            expires_at,
            pending_approval: needs_approval,
        })
    }

    /// Refuses (and audits the refusal) unless the policy allows `admin` to `actor`. When
    /// allowed, returns the audit entry to complete and `commit` before the action takes effect,
    /// with the deciding policies filled in. Every administrative action starts here: an
    /// allowed one that is never committed is still appended when its entry is dropped, as not
    /// carried out, so no allowed action (a listing included) leaves the trail without a line.
    pub(crate) fn require_admin(
        &self,
        actor: &Principal,
        admin: AdminAction,
        action: &str,
        target: Option<&str>,
        justification: &str,
    ) -> Result<AdminEntry<'_>, VaultError> {
        self.require_admin_about(actor, admin, action, target, justification, None)
    }

    /// [`require_admin`](Self::require_admin) for an action about `subject`: its entry names
    /// the subject whether allowed or refused, so that a refused attempt is in that subject's
    /// trail (its export and access report) too.
    pub(crate) fn require_admin_about(
        &self,
        actor: &Principal,
        admin: AdminAction,
        action: &str,
        target: Option<&str>,
        justification: &str,
        subject: Option<String>,
    ) -> Result<AdminEntry<'_>, VaultError> {
        check_justification(justification, Need::Optional)?;
        let decision = self.policy().decide_admin(actor, admin)?;
        let mut event = admin_event(actor, action, justification);
        event.subject = subject;
        event.policies = decision.policies.clone();
        event.target = target.map(str::to_owned);
        if decision.is_allow() {
            event.decision = "allow".into();
            return Ok(AdminEntry {
                event,
                audit: &self.audit,
                done: false,
            });
        }
        event.decision = "deny".into();
        event.reason = Some(decision.reason.clone());
        self.audit.append(&event)?;
        Err(VaultError::Denied(decision.reason))
    }

    /// Records that a long call of `actor` (its entry `action`, about `subject` and `target`)
    /// ended because its credentials no longer authenticate (`why`: a token revoked or
    /// expired): the call's own entry said what it would send, this one that it was cut off.
    /// A failure to append is logged; the call ends either way.
    pub fn record_call_ended(
        &self,
        actor: &Principal,
        action: &str,
        subject: Option<&str>,
        target: Option<&str>,
        why: &VaultError,
    ) {
        let mut event = admin_event(actor, action, "");
        event.subject = subject.map(str::to_owned);
        event.target = target.map(str::to_owned);
        event.decision = "deny".into();
        event.reason = Some(format!("the call ended: {why}"));
        if let Err(e) = self.audit.append(&event) {
            tracing::warn!(error = %e, action, "could not record a long call that was cut off");
        }
    }

    /// Whether a long call `actor` began under `admin` may go on (a watch or an export of the
    /// trail, a backup being sent): the policy in force still allows it. `actor` was
    /// authenticated again by the caller. Nothing is appended while it does; when it no longer
    /// does, a denial under the call's own entry name (`action`) is appended, saying the call
    /// ended, and the call must end.
    pub fn keep_admin(
        &self,
        actor: &Principal,
        admin: AdminAction,
        action: &str,
    ) -> Result<(), VaultError> {
        let decision = self.policy().decide_admin(actor, admin)?;
        if decision.is_allow() {
            return Ok(());
        }
        let mut event = admin_event(actor, action, "");
        event.policies = decision.policies.clone();
        event.decision = "deny".into();
        event.reason = Some(format!("the call ended: {}", decision.reason));
        self.audit.append(&event)?;
        Err(VaultError::Denied(decision.reason))
    }
}

/// The audit entry of an allowed administrative action. `commit` appends it (before the action
/// takes effect); dropped uncommitted, as when the action stops on an error, it is appended with
/// the note that the action was not carried out.
#[must_use = "an allowed administrative action must commit its audit entry"]
pub(crate) struct AdminEntry<'a> {
    event: AuditEvent,
    audit: &'a crate::audit::Audit,
    done: bool,
}

impl AdminEntry<'_> {
    /// Appends the entry; the action may take effect once this returns.
    pub(crate) fn commit(mut self) -> Result<crate::audit::AuditSeq, VaultError> {
        self.done = true;
        Ok(self.audit.append(&self.event)?)
    }

    /// Appends the entry, then carries out `act`. Should `act` fail (the store refused it, say),
    /// a second entry says the action was not carried out, and why, so the trail never shows as
    /// done what did not happen.
    pub(crate) fn commit_then<T>(
        self,
        act: impl FnOnce() -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        self.commit_then_at(|_| act())
    }

    /// [`commit_then`](Self::commit_then), with the entry's sequence number for `act`.
    pub(crate) fn commit_then_at<T>(
        self,
        act: impl FnOnce(crate::audit::AuditSeq) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let audit = self.audit;
        let mut followup = self.event.clone();
        let seq = self.commit()?;
        act(seq).inspect_err(|e| {
            followup.time = now_unix();
            followup.decision = "deny".into();
            followup.reason = Some(format!("not carried out: {e}"));
            if let Err(a) = audit.append(&followup) {
                tracing::error!(error = %a, action = %followup.action, "cannot audit an administrative action that failed");
            }
        })
    }

    /// Refuses the action after all (a check of the vault's own, beyond the policy): the entry
    /// is appended as a deny with `why`, and the caller gets `FailedPrecondition`.
    pub(crate) fn refuse<T>(mut self, why: String) -> Result<T, VaultError> {
        self.done = true;
        self.event.decision = "deny".into();
        self.event.reason = Some(why.clone());
        self.audit.append(&self.event)?;
        Err(VaultError::FailedPrecondition(why))
    }

    /// The entry as a template for the entries of a job that appends one per step itself.
    pub(crate) fn into_template(mut self) -> AuditEvent {
        self.done = true;
        std::mem::take(&mut self.event)
    }
}

impl std::ops::Deref for AdminEntry<'_> {
    type Target = AuditEvent;

    fn deref(&self) -> &AuditEvent {
        &self.event
    }
}

impl std::ops::DerefMut for AdminEntry<'_> {
    fn deref_mut(&mut self) -> &mut AuditEvent {
        &mut self.event
    }
}

impl Drop for AdminEntry<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut event = std::mem::take(&mut self.event);
        // Allowed by the policy, but it did not happen: on the trail as not done.
        event.decision = "deny".into();
        event.reason = Some(match event.reason.take() {
            Some(r) => format!("{r}; not carried out"),
            None => "not carried out".into(),
        });
        if let Err(e) = self.audit.append(&event) {
            tracing::error!(error = %e, action = %event.action, "cannot audit an administrative action that stopped early");
        }
    }
}

/// Checks the justification of an administrative action (`check_free_text`). An action that
/// destroys data or is a second person's approval (an erasure, a token's or a root change's
/// approval) needs one: `Need::Required`, checked before the policy is asked.
pub(crate) fn check_justification(justification: &str, need: Need) -> Result<(), InputError> {
    check_free_text(
        "justification",
        justification,
        "justification",
        crate::domain::AccessContext::MAX_JUSTIFICATION,
        need,
    )
}

fn new_token_id() -> String {
    format!("tok_{}", hex::encode(rand::random::<[u8; 8]>()))
}

pub(crate) fn admin_event(actor: &Principal, action: &str, justification: &str) -> AuditEvent {
    AuditEvent {
        time: now_unix(),
        principal: actor.id.as_str().into(),
        roles: actor.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        token_id: actor.token_id.clone(),
        action: action.into(),
        justification: Some(justification.trim())
            .filter(|j| !j.is_empty())
            .map(str::to_owned),
        ..super::caller_event(actor)
    }
}

fn principal_from_row(row: &TokenRow) -> Result<Principal, VaultError> {
    let corrupt = || {
        VaultError::Store(crate::store::StoreError::Corrupt(format!(
            "token `{}`",
            row.id
        )))
    };
    let roles = parse_roles(row)?;
    // A stored combination the rules do not allow authenticates nobody.
    Principal::new(
        PrincipalId::parse("principal", &row.principal).map_err(|_| corrupt())?,
        roles,
        row.scope_subject
            .as_deref()
            .map(SubjectId::parse_stored)
            .transpose()
            .map_err(|_| corrupt())?,
        row.id.clone(),
        row.expires_at,
    )
    .map_err(|_| corrupt())
}

fn parse_roles(row: &TokenRow) -> Result<Vec<Role>, VaultError> {
    row.roles
        .iter()
        .map(|r| r.parse::<Role>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            VaultError::Store(crate::store::StoreError::Corrupt(format!(
                "token `{}`",
                row.id
            )))
        })
}

/// Per-token request rates: a token bucket per token id, refilled at the configured rate, holding
/// at most two seconds' worth. Checked after authentication, before any other work.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
}

impl RateLimiter {
    /// Most tokens tracked before idle ones are forgotten.
    const MAX_TRACKED: usize = 100_000;

    /// Takes one request from the bucket of `token_id`, or refuses when it is empty.
    pub fn admit(&self, token_id: &str, per_second: u32) -> Result<(), VaultError> {
        if per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(per_second);
        let burst = rate * 2.0;
        let now = std::time::Instant::now();
        // The buckets are plain numbers: a panic elsewhere cannot leave them inconsistent.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= Self::MAX_TRACKED {
            // Forget buckets that are full again: they hold no state worth keeping.
            buckets.retain(|_, (level, at)| {
                *level + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (level, at) = buckets.entry(token_id.to_owned()).or_insert((burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *level < 1.0 {
            return Err(VaultError::RateLimited(format!(
                "this token made more than {per_second} requests per second; slow down and retry \
                 (limits.requests_per_second)"
            )));
        }
        *level -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        crypto::Algorithm,
        domain::Limits,
        keys::{Keyring, RootSecret},
        policy::Engine,
        store::SqliteStore,
        vault::RetentionTable,
    };

    /// A node over `store`, as `kluis serve` opens one.
    fn node(store: &Arc<SqliteStore>, secret: &RootSecret) -> Vault {
        let keyring =
            Keyring::unseal(store.clone(), secret, Algorithm::Aes256Gcm, 100_000).unwrap();
        Vault::new(
            store.clone(),
            keyring,
            Engine::default_policies().unwrap(),
            RetentionTable::default(),
            Limits::default(),
        )
        .unwrap()
    }

    fn refused(vault: &Vault, token: &BearerToken) -> bool {
        matches!(
            vault.authenticate(token),
            Err(VaultError::Unauthenticated(_))
        )
    }

    /// A token seen a moment ago is refused as soon as the register no longer names its row:
    /// revoked on this node, at the next call; revoked on another node sharing the store, once
    /// this one takes in the register (what its poll does when the change epoch moved).
    #[test]
    fn a_token_seen_a_moment_ago_follows_the_register() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("kluis.db")).unwrap());
        let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
        let (a, b) = (node(&store, &secret), node(&store, &secret));
        let officer = Principal::new(
            PrincipalId::parse("principal", "so-1").unwrap(),
            vec![Role::SecurityOfficer],
            None,
            "tok_officer",
            i64::MAX,
        )
        .unwrap();
        let analyst = TokenSpec::parse("emp-9", &["analyst".to_owned()], 3600, "").unwrap();
        let first = a.issue_token(&officer, &analyst, "new colleague").unwrap();
        let second = a.issue_token(&officer, &analyst, "second device").unwrap();
        for token in [&first, &second] {
            assert_eq!(a.authenticate(&token.token).unwrap().token_id, token.id);
            assert_eq!(b.authenticate(&token.token).unwrap().token_id, token.id);
        }

        a.revoke_token(&officer, &first.id, "left").unwrap();
        assert!(refused(&a, &first.token), "revoked here, seen a moment ago");
        assert_eq!(a.authenticate(&second.token).unwrap().token_id, second.id);

        a.revoke_token(&officer, &second.id, "left").unwrap();
        b.forget_token_register();
        assert!(refused(&b, &first.token), "revoked on another node");
        assert!(refused(&b, &second.token), "revoked on another node");
        // Twin: a token nobody revoked goes on authenticating on both.
        let third = a.issue_token(&officer, &analyst, "third device").unwrap();
        b.forget_token_register();
        assert_eq!(b.authenticate(&third.token).unwrap().token_id, third.id);
        assert_eq!(a.authenticate(&third.token).unwrap().token_id, third.id);
    }
}
