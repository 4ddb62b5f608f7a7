//! Several nodes on one store: what a node holds in memory (unwrapped keys, the token register,
//! the policy set in force, the root key) follows the changes other nodes make, within
//! `FOLLOW_INTERVAL` and the time one poll takes.
//!
//! The store moves a change epoch in the transaction of every change other nodes must take in
//! (`MetaStore::change_epoch`); the server polls it and, when it moved, this node forgets its
//! unwrapped keys and token register and takes up the policy set the store holds. Correctness
//! does not rest on this: the store refuses what a node that has not caught up would do wrong
//! (a key wrapped under a retired version, a value sealed under a replaced subject key, an
//! anchor or field set changed meanwhile), and decisions read holds, consents and mandates from
//! the store each time.
//!
//! A node whose root key another node replaced can unwrap nothing new: it stops serving
//! (`UNAVAILABLE`, health `NOT_SERVING`) until it is restarted with the new secret.

use std::sync::{Mutex, atomic::AtomicBool, atomic::Ordering};

use super::{Vault, VaultError, rows::RowAuth};
use crate::{
    policy::{Engine, PolicySources},
    store::{LeaseRow, Store},
};

/// How often a node looks for changes other nodes made. The README states the bound: a change
/// made through any node is in force on every node within one second.
pub const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Store metadata key of the policy set in force (its texts, under a MAC of the row key).
pub(crate) const META_POLICY_SET: &str = "policy_set";

/// What a node last took in.
pub(crate) struct Follower {
    /// This node's id, in the leases it holds: random per process.
    node: String,
    /// The store's change epoch and digest of shared state (`Store::shared_state`) as this
    /// node last took them in.
    epoch: Mutex<Option<(i64, Vec<u8>)>>,
    /// Set once another node replaced the root key this node holds.
    root_replaced: AtomicBool,
    /// Set while the policy set in force on the other nodes cannot be taken up here.
    policy_behind: AtomicBool,
    /// Set once the store says other nodes may share it (a change epoch).
    shared: AtomicBool,
    /// When this node last took in everything other nodes changed (or found nothing new), in
    /// milliseconds since `since`: read by every authentication, so an atomic, not a lock.
    followed: std::sync::atomic::AtomicU64,
    since: std::time::Instant,
    /// The generation of the stored policy set this node decides by (`StoredPolicySet`).
    pub(crate) policy_generation: std::sync::atomic::AtomicU64,
}

/// How long a node of a shared store serves after it last took in what other nodes changed:
/// the README's bound for a change to be in force on every node. A node that cannot look (the
/// change epoch unreadable, a row it must check damaged) answers `UNAVAILABLE` after this,
/// not from what it holds in memory.
pub const FOLLOW_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

impl Follower {
    /// Milliseconds since this node began.
    fn millis(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Default for Follower {
    fn default() -> Self {
        Self {
            node: format!(
                "node-{}-{}",
                std::process::id(),
                hex::encode(rand::random::<[u8; 4]>())
            ),
            epoch: Mutex::new(None),
            root_replaced: AtomicBool::new(false),
            policy_behind: AtomicBool::new(false),
            shared: AtomicBool::new(false),
            followed: std::sync::atomic::AtomicU64::new(0),
            since: std::time::Instant::now(),
            policy_generation: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// The policy set in force as the store keeps it: its texts and its generation, one more at
/// every change of the set, under the row's MAC. A node never takes up a set of an older
/// generation than the one it decides by: a copy of the row put back from before a reload is
/// genuine, and only its generation tells it apart.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPolicySet {
    #[serde(flatten)]
    sources: PolicySources,
    /// 0 in a row stored before generations were kept.
    #[serde(default)]
    generation: u64,
}

/// Stores `engine`'s texts as the policy set in force, when they are not stored already, one
/// generation after the stored one (over the row as read; a reload on another node meanwhile
/// is read again, and this one, the later, stored after it). Gives the generation in force.
pub(crate) fn store_policy_set(
    store: &dyn Store,
    rows: &RowAuth,
    engine: &Engine,
) -> Result<u64, VaultError> {
    store_policy_set_after(store, rows, engine, 0)
}

/// `store_policy_set`, of a generation after `after` too.
fn store_policy_set_after(
    store: &dyn Store,
    rows: &RowAuth,
    engine: &Engine,
    after: u64,
) -> Result<u64, VaultError> {
    let mut tries = 0;
    loop {
        match store_policy_set_over(store, rows, engine, after) {
            Err(VaultError::Store(crate::store::StoreError::Stale(_))) if tries < 3 => tries += 1,
            done => return done,
        }
    }
}

fn store_policy_set_over(
    store: &dyn Store,
    rows: &RowAuth,
    engine: &Engine,
    after: u64,
) -> Result<u64, VaultError> {
    let raw = store.meta(META_POLICY_SET)?;
    let stored = raw
        .as_deref()
        .map(|raw| open_policy_set(rows, raw))
        .transpose()?;
    if let Some((sources, generation)) = &stored
        && *sources == *engine.sources()
    {
        return Ok(*generation);
    }
    let generation = stored.map_or(1, |(_, g)| g + 1).max(after + 1);
    let bytes = serde_json::to_vec(&StoredPolicySet {
        sources: engine.sources().clone(),
        generation,
    })
    .map_err(|e| VaultError::Store(crate::store::StoreError::Database(e.to_string())))?;
    store.replace_meta(
        META_POLICY_SET,
        raw.as_deref(),
        &rows.seal_meta(META_POLICY_SET, &bytes),
    )?;
    Ok(generation)
}

/// The policy set the store holds and its generation, its MAC checked.
pub(crate) fn stored_policy_set(
    store: &dyn Store,
    rows: &RowAuth,
) -> Result<Option<(PolicySources, u64)>, VaultError> {
    store
        .meta(META_POLICY_SET)?
        .map(|raw| open_policy_set(rows, &raw))
        .transpose()
}

fn open_policy_set(rows: &RowAuth, raw: &[u8]) -> Result<(PolicySources, u64), VaultError> {
    let bytes = rows.open_meta(META_POLICY_SET, raw)?;
    serde_json::from_slice::<StoredPolicySet>(bytes)
        .map(|s| (s.sources, s.generation))
        .map_err(|_| VaultError::DataLoss("the stored policy set".into()))
}

/// The policy set a node starting on a shared store decides by: the one in force on the other
/// nodes (the store's), not its own files, which take effect only through a reload on it.
pub(crate) fn policy_at_start(
    store: &dyn Store,
    rows: &RowAuth,
    local: Engine,
) -> Result<Engine, VaultError> {
    if store.change_epoch()?.is_none() {
        return Ok(local);
    }
    let Some((sources, _)) = stored_policy_set(store, rows)? else {
        return Ok(local);
    };
    if sources == *local.sources() {
        return Ok(local);
    }
    let engine = Engine::from_files(&sources.schema, &sources.files)?;
    tracing::warn!(
        in_force = %engine.digest(),
        local = %local.digest(),
        "this node's policy files differ from the set in force on the shared store; the set in \
         force decides here too. Run `kluis admin policy reload` against this node to make its \
         files the set in force everywhere"
    );
    Ok(engine)
}

impl Vault {
    /// Where the judgements of callers stand: a number that moves whenever one may have
    /// changed (a token's state, the token register, the policy set in force, a subject's
    /// holds, consent states, mandates or restrictions; on a shared store, any change taken in
    /// from another node). Equal numbers mean nothing changed in between but the clock
    /// (expiry, a mandate's end).
    pub fn judgements(&self) -> u64 {
        self.judgements.load(Ordering::SeqCst)
    }

    /// Moves `judgements`: called after a change that may judge a caller otherwise.
    pub(crate) fn judgements_changed(&self) {
        self.judgements.fetch_add(1, Ordering::SeqCst);
    }

    /// Records where the store's changes stood (`epoch`, read before this node loaded anything
    /// into memory), so that its first poll forgets only what changed since.
    pub(crate) fn note_epoch(&self, epoch: Option<(i64, Vec<u8>)>) {
        *self
            .follower
            .epoch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = epoch;
    }

    /// Takes in the changes other nodes made since the last call: forgets unwrapped keys and
    /// the token register, takes up the stored policy set, and stops serving when the root key
    /// was replaced. Returns whether anything had changed. Does nothing on a store only this
    /// process uses.
    pub fn follow_store(&self) -> Result<bool, VaultError> {
        let state = match self.store.shared_state() {
            Ok(Some(state)) => state,
            Ok(None) => return Ok(false),
            Err(e) => {
                // A database server that does not answer, or an epoch row that is gone: this
                // node cannot tell what the others changed.
                if !self.store.answers_from_local_files() {
                    self.follower.shared.store(true, Ordering::SeqCst);
                }
                return Err(e.into());
            }
        };
        self.follower.shared.store(true, Ordering::SeqCst);
        let mut last = self
            .follower
            .epoch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.as_ref() == Some(&state) {
            self.followed();
            return Ok(false);
        }
        if let Some((epoch, _)) = &*last
            && *epoch == state.0
        {
            // The rows changed and the epoch did not move: a change whose epoch someone holds
            // back (a trigger that writes it back). It is taken in all the same.
            tracing::error!(
                epoch,
                "the store's keys, tokens or policy set changed while its change epoch did not \
                 move (a trigger or an edit by hand holds the epoch back?); the change is taken \
                 in. Look for triggers on `kluis_epoch` (`SELECT tgname FROM pg_trigger WHERE \
                 tgrelid = 'kluis_epoch'::regclass`)"
            );
        }
        // Read the epoch first, then drop what may be stale: a change committed meanwhile moves
        // the epoch again and is taken in at the next call. A replaced root key stops this node
        // before its keys are dropped: a request in between would find the rewrapped keys and
        // take them for tampered ones.
        if !self.keyring.root_is_current()? {
            self.stop_for_replaced_root();
        }
        self.keyring.forget_all();
        self.forget_token_register();
        self.judgements_changed();
        // A policy set this node cannot take up (a MAC that fails, a set this build cannot
        // read) must not leave it deciding by the old one: it stops serving until it can.
        let adopted = stored_policy_set(self.store.as_ref(), &self.rows).and_then(|stored| {
            let in_force = self.follower.policy_generation.load(Ordering::SeqCst);
            match stored {
                Some((_, generation)) if generation < in_force => {
                    // A copy put back from before a reload: this node goes on deciding by the
                    // set in force, and stores it again over the copy for the nodes that start.
                    tracing::error!(
                        stored = generation,
                        in_force,
                        "the stored policy set is older than the one in force here (a copy \
                         put back by hand?); the set in force stays, and is stored again"
                    );
                    let policy = self.policy();
                    let stored = store_policy_set_after(
                        self.store.as_ref(),
                        &self.rows,
                        &policy,
                        in_force,
                    )?;
                    self.follower
                        .policy_generation
                        .store(stored, Ordering::SeqCst);
                    Ok(())
                }
                Some((sources, generation)) if sources != *self.policy().sources() => {
                    self.follower
                        .policy_generation
                        .store(generation, Ordering::SeqCst);
                    let engine = Engine::from_files(&sources.schema, &sources.files)?;
                    tracing::info!(digest = %engine.digest(), "policy set changed on another node; in force here now");
                    match self.policy.write() {
                        Ok(mut p) => *p = std::sync::Arc::new(engine),
                        Err(poisoned) => *poisoned.into_inner() = std::sync::Arc::new(engine),
                    }
                    self.judgements_changed();
                    Ok(())
                }
                _ => Ok(()),
            }
        });
        if let Err(e) = adopted {
            if !self.follower.policy_behind.swap(true, Ordering::SeqCst) {
                tracing::error!(error = %e, "cannot take up the policy set in force on the other nodes; this node stops serving until it can");
            }
            return Err(e);
        }
        if self.follower.policy_behind.swap(false, Ordering::SeqCst) {
            tracing::warn!("the policy set in force is taken up; this node serves again");
        }
        *last = Some(state);
        self.followed();
        Ok(true)
    }

    /// Notes that this node has taken in every change other nodes made up to now.
    fn followed(&self) {
        self.follower
            .followed
            .store(self.follower.millis(), Ordering::SeqCst);
    }

    fn stop_for_replaced_root(&self) {
        if !self.follower.root_replaced.swap(true, Ordering::SeqCst) {
            tracing::error!(
                "another node changed the root key: this node can unwrap nothing new and stops \
                 serving; restart it with the new passphrase or key file"
            );
        }
    }

    /// `e`, or `UNAVAILABLE` when `e` says a stored key or row failed its integrity check
    /// because another node replaced the root key since this node's last look: the keys it
    /// rewrapped do not open under this node's root key, and that is no sign of tampering. A
    /// change of root commits the rewrapped keys and the new key check value together, so a
    /// key that did not open is followed by a key check that tells.
    pub(crate) fn after_failure(&self, e: VaultError) -> VaultError {
        use crate::{crypto::CryptoError, keys::KeyError, store::StoreError};
        let integrity = matches!(
            e,
            VaultError::DataLoss(_)
                | VaultError::Store(StoreError::Corrupt(_))
                | VaultError::Key(
                    KeyError::Tampered(_)
                        | KeyError::Crypto(CryptoError::Open)
                        | KeyError::CorruptMeta
                        | KeyError::Store(StoreError::Corrupt(_))
                )
        );
        // Only a store other nodes share can have its root key changed under this node.
        if !integrity || !matches!(self.store.change_epoch(), Ok(Some(_))) {
            return e;
        }
        match self.keyring.root_is_current() {
            Ok(false) => {
                self.stop_for_replaced_root();
                self.check_root_current().err().unwrap_or(e)
            }
            _ => e,
        }
    }

    /// Fails with `UNAVAILABLE` once another node replaced the root key this node holds, and
    /// while this node cannot take up the policy set in force on the others.
    pub(crate) fn check_root_current(&self) -> Result<(), VaultError> {
        if self.follower.root_replaced.load(Ordering::SeqCst) {
            return Err(VaultError::Unavailable(
                "this node's root key was replaced on another node; restart it with the new \
                 passphrase or key file"
                    .into(),
            ));
        }
        if self.follower.policy_behind.load(Ordering::SeqCst) {
            return Err(VaultError::Unavailable(
                "this node cannot take up the policy set in force on the other nodes (see its \
                 log); another node can serve"
                    .into(),
            ));
        }
        if self.follower.shared.load(Ordering::SeqCst) {
            let since = self
                .follower
                .millis()
                .saturating_sub(self.follower.followed.load(Ordering::SeqCst));
            if since > u64::try_from(FOLLOW_BOUND.as_millis()).unwrap_or(u64::MAX) {
                return Err(VaultError::Unavailable(format!(
                    "this node has not been able to take in the changes other nodes made for \
                     {since} ms (see its log), and does not answer from what it holds; another \
                     node can serve"
                )));
            }
        }
        Ok(())
    }

    /// Whether this node can serve: its root key is current, a database server holding the
    /// store answers (a query; SQLite has none to ask), and its trail can be written.
    pub fn is_serving(&self) -> bool {
        !self.follower.root_replaced.load(Ordering::SeqCst)
            && !self.follower.policy_behind.load(Ordering::SeqCst)
            && self.store.change_epoch().is_ok()
            && (self.audit_writable() || self.probe_audit().is_ok())
    }
}

/// How long a job's lease lasts without renewal: a node that dies mid-job leaves it for another
/// node after this long. Jobs renew it after every batch.
pub const JOB_LEASE_SECS: i64 = 60;

/// A lease this node holds; given up when dropped.
pub(crate) struct Lease<'a> {
    vault: &'a Vault,
    name: String,
}

impl Lease<'_> {
    /// Renews the lease; false when another node took it (this one stalled past its expiry).
    pub(crate) fn renew(&self) -> Result<bool, VaultError> {
        self.vault
            .take_lease(&self.name, &self.vault.follower.node, JOB_LEASE_SECS)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .vault
            .store
            .release_lease(&self.name, &self.vault.follower.node)
        {
            tracing::warn!(lease = %self.name, error = %e, "cannot give up a job lease; it expires by itself");
        }
    }
}

impl Vault {
    /// This node's id in leases and logs.
    pub fn node_id(&self) -> &str {
        &self.follower.node
    }

    /// Takes the lease of the job `name` for this node: `None` while another node runs it.
    pub(crate) fn job_lease(&self, name: &str) -> Result<Option<Lease<'_>>, VaultError> {
        Ok(self
            .take_lease(name, &self.follower.node, JOB_LEASE_SECS)?
            .then(|| Lease {
                vault: self,
                name: name.to_owned(),
            }))
    }

    /// Takes the lease `name` for `holder`, or renews it, for `ttl_secs` by the store's clock,
    /// when it is free, expired, held by `holder` already, or held by a row kluis did not write:
    /// one without the MAC kluis gives a lease, or held until later than `MAX_LEASE_SECS` from
    /// now (no lease kluis takes lasts that long). A row written by hand thus holds no job off.
    /// Returns whether `holder` holds it now. A node that dies stops renewing, and another
    /// takes the lease once it expires.
    ///
    /// `holder` is this node's id ([`Vault::node_id`]) but for tools acting as another node.
    pub fn take_lease(&self, name: &str, holder: &str, ttl_secs: i64) -> Result<bool, VaultError> {
        // A node that changed the lease between the read and the write took it: read again,
        // in case it let go of it meanwhile.
        for _ in 0..3 {
            let (stored, now) = self.store.lease(name)?;
            if let Some(row) = &stored
                && row.holder != holder
                && row.until >= now
            {
                let authentic = self.rows.is_authentic(row);
                if authentic && row.until <= now + crate::store::MAX_LEASE_SECS {
                    return Ok(false);
                }
                tracing::error!(
                    lease = %name,
                    "a stored job lease is not one kluis took (its MAC fails or it lasts longer \
                     than any kluis takes); it holds nothing off and is taken over"
                );
            }
            let next = self.rows.seal(
                LeaseRow {
                    name: name.to_owned(),
                    holder: holder.to_owned(),
                    until: now.saturating_add(ttl_secs),
                    mac: Vec::new(),
                },
                |row, mac| row.mac = mac,
            );
            if self.store.replace_lease(stored.as_ref(), &next)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Runs `job` when this node holds (or takes) the lease `name`, kept for `ttl_secs` and
    /// renewed at each run, so that one node runs a periodic job and another takes over when it
    /// dies. Returns `None` when another node holds it.
    pub fn as_only_node<T>(
        &self,
        name: &str,
        ttl_secs: i64,
        job: impl FnOnce(&Vault) -> Result<T, VaultError>,
    ) -> Result<Option<T>, VaultError> {
        if !self.take_lease(name, &self.follower.node, ttl_secs)? {
            return Ok(None);
        }
        job(self).map(Some)
    }

    /// Whether other nodes may share this node's store.
    pub fn store_is_shared(&self) -> Result<bool, VaultError> {
        Ok(self.store.change_epoch()?.is_some())
    }
}
