//! The domain core: records of encrypted fields, the request path (policy → audit → unwrap →
//! open), and credentials. Talks to the store, the keyring, the policy engine and the audit trail.
//!
//! Invariant: never decrypts a field without a `policy::Grant` for that field; a grant exists only
//! after the audit entry recording the decision is committed.
//! Invariant: writes are all or nothing: one denied field refuses the whole write, and a record is
//! stored with its fields in one store transaction.
//! Invariant: knows neither gRPC nor SQL; errors never carry plaintext.

pub mod answers;
pub mod custody;
pub mod disclosures;
pub mod evidence;
pub mod export;
pub mod gauges;
pub mod guard;
pub mod keyadmin;
pub mod lifecycle;
pub mod mask;
pub mod nodes;
pub mod places;
pub mod policies;
mod read;
pub mod rectify;
pub mod rights;
pub mod rows;
pub mod search;
pub mod tokens;
pub mod trail;

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, RwLock},
};

use zeroize::Zeroizing;

use crate::{
    audit::{Audit, AuditError, AuditEvent, AuditField, Carried},
    crypto::{self, AadContext},
    domain::{
        AccessContext, Category, Channels, Clock, FieldKind, FieldName, InputError, Limits,
        Principal, Purpose, RecordId, Retention, RetentionStart, SubjectId, SystemClock, now_unix,
    },
    keys::{KeyError, Keyring},
    policy::{
        Action, Decision, Engine, FieldFlags, FieldResource, Grant, MaskedGrant, PolicyError,
    },
    store::{FieldMeta, FieldRow, FieldsMac, RecordRead, RecordRow, Store, StoreError},
};

/// Errors of the domain core. Mapped to gRPC status codes in one place (`api::status`).
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The policy denied the request; the reason names the deciding policies.
    #[error("access denied: {0}")]
    Denied(String),
    /// The request is malformed or breaks a limit; nothing was stored.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The record (or token) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with the stored state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A stored ciphertext failed its integrity check.
    #[error("{0} failed its integrity check; the stored data is damaged or was tampered with")]
    DataLoss(String),
    /// The token made more requests than its rate allows.
    #[error("{0}")]
    RateLimited(String),
    /// The request needs more of the node than its limits leave now (see the message).
    #[error("{0}")]
    Exhausted(String),
    /// The audit trail cannot be written; nothing was decrypted.
    #[error("audit trail unavailable; the request was not carried out")]
    AuditUnavailable,
    /// This node cannot serve now (see the message); another node may.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key hierarchy failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The policy engine failed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The audit trail failed while reading.
    #[error(transparent)]
    Audit(AuditError),
    /// The store is behind the head kept outside it (rolled back), or that head cannot vouch
    /// for it; the vault does not start.
    #[error("{0}")]
    Rollback(String),
}

impl From<AuditError> for VaultError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Unavailable(_) => VaultError::AuditUnavailable,
            other => VaultError::Audit(other),
        }
    }
}

/// Loads the policy set from its configured source again (for a reload).
pub type PolicyLoader = Box<dyn Fn() -> Result<Engine, String> + Send + Sync>;

/// Store metadata key of the digest of the policy set in force.
const META_POLICY_DIGEST: &str = "policy_digest";
/// Store metadata key set once the store's head is kept in a head file: the head directory.
const META_HEAD_DIR: &str = "audit_head_dir";
/// Store metadata key of a store made by `serve --dev`: the sequence number of its
/// `dev-store-created` audit entry.
const META_DEV_STORE: &str = "dev_store";
/// Store metadata key of the SHA-256 of the identity configuration last put on the trail.
const META_IDENTITY_CONFIG: &str = "identity_config";

/// A field value in clear. Wiped on drop; `Debug` shows only its kind and length.
pub enum Value {
    /// UTF-8 text.
    Text(Zeroizing<String>),
    /// Bytes.
    Binary(Zeroizing<Vec<u8>>),
}

impl Value {
    fn kind(&self) -> FieldKind {
        match self {
            Value::Text(_) => FieldKind::Text,
            Value::Binary(_) => FieldKind::Binary,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Value::Text(s) => s.as_bytes(),
            Value::Binary(b) => b,
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value::{}(<{} bytes redacted>)", self.kind(), self.len())
    }
}

/// A field to store.
#[derive(Debug)]
pub struct NewField {
    /// Field name.
    pub name: FieldName,
    /// Category.
    pub category: Category,
    /// Value in clear.
    pub value: Value,
}

/// A new record decided and not yet stored (`Vault::put_record`).
struct Put {
    record_id: RecordId,
    subject: SubjectId,
    purpose: Purpose,
    /// The values, kept until the record is stored: a write refused for a stale key is sealed
    /// again.
    fields: Vec<NewField>,
    /// The record's row, sealed (its `fields_mac` is set per attempt).
    record: RecordRow,
    expires_at: Option<i64>,
}

/// An allowed write's entry turned into the one that says it was not carried out, and why.
fn not_carried_out_entry(mut event: AuditEvent, why: &VaultError) -> AuditEvent {
    event.decision = "deny".into();
    event.reason = Some(format!("not carried out: {why}"));
    event
}

/// Why `Vault::write_fields` did not write.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// Another write came between the read and this one.
    Stale,
    /// An active legal hold keeps the stored values (its id).
    Held(String),
    /// The record is gone.
    Gone,
    /// Anything else.
    Vault(VaultError),
}

impl WriteError {
    /// As the caller of a write of `record_id` is answered (a hold named by `held`).
    pub(crate) fn into_vault(self, record_id: &RecordId) -> VaultError {
        match self {
            WriteError::Stale => VaultError::FailedPrecondition(format!(
                "record `{record_id}` changed meanwhile; read it and try again"
            )),
            WriteError::Held(hold) => held(record_id, &hold),
            WriteError::Gone => VaultError::NotFound(format!("record `{record_id}`")),
            WriteError::Vault(e) => e,
        }
    }
}

/// A field returned to the caller.
#[derive(Debug)]
pub struct OpenField {
    /// Field name.
    pub name: String,
    /// Category.
    pub category: Category,
    /// Value in clear, or its masked form when `masked`.
    pub value: Value,
    /// The value is masked (`read-masked`): a caller who may not `read` it sees only this form.
    pub masked: bool,
}

/// The capability a field of a read is opened under: the whole value, or its masked form.
enum FieldGrant {
    Full(Grant),
    Masked(MaskedGrant),
}

impl FieldGrant {
    fn field(&self) -> &str {
        match self {
            FieldGrant::Full(g) => g.field(),
            FieldGrant::Masked(g) => g.field(),
        }
    }
}

/// A field the policy kept back.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Withheld {
    /// Field name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// A record's metadata.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RecordMeta {
    /// Record id.
    pub id: String,
    /// Subject.
    pub subject: String,
    /// Purpose.
    pub purpose: Purpose,
    /// Labels in clear.
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Unix seconds, when known.
    pub expires_at: Option<i64>,
}

/// The outcome of a read.
#[derive(Debug)]
pub struct RecordView {
    /// Metadata.
    pub meta: RecordMeta,
    /// The fields returned, decrypted.
    pub fields: Vec<OpenField>,
    /// The fields kept back, with reasons.
    pub withheld: Vec<Withheld>,
    /// The place of this answer's bytes (`answers`), let go with the view unless taken to go
    /// with the response (`RecordView::hold`).
    hold: Option<answers::AnswerHold>,
}

impl RecordView {
    /// The place of this answer's bytes, to keep until the response is handed on.
    pub fn hold(&self) -> Option<answers::AnswerHold> {
        self.hold.clone()
    }
}

/// A field listed without its value.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct FieldInfo {
    /// Field name.
    pub name: String,
    /// Category.
    pub category: String,
    /// Ciphertext size in bytes (of an evidence file: its plaintext size).
    pub size: u64,
    /// Set when the field is an evidence file.
    pub evidence: Option<crate::store::EvidenceMeta>,
}

/// Records as listed: each with the fields the caller may know of.
pub type Listed = Vec<(RecordMeta, Vec<FieldInfo>)>;

/// Which page of a subject's records `list_records` gives: at most `size` of those the caller
/// may know of, oldest first, after `after`. One call examines at most
/// [`ListPage::MAX_EXAMINED`] records, so a subject with any number of records (seen or not) is
/// listed in calls of bounded work.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ListPage {
    /// The record the page before ended with; `None` for the first page.
    pub after: Option<ListCursor>,
    /// Records listed, 1 to [`ListPage::MAX_SIZE`].
    pub size: usize,
}

/// Where a listing goes on: after the record of this creation time and id (the order in which
/// a subject's records are listed).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ListCursor {
    created_at: i64,
    record_id: String,
}

impl ListPage {
    /// Records a page examines when the request names no size.
    pub const DEFAULT_SIZE: usize = 100;
    /// Most records a page lists.
    pub const MAX_SIZE: usize = 1000;
    /// Most records one call examines to fill its page.
    pub const MAX_EXAMINED: usize = 10_000;

    /// The page a request asks for: `size` (0 for the default) and `token` (empty for the
    /// first page, else a `next_page_token` as it was given).
    pub fn parse(size: u32, token: &str) -> Result<Self, InputError> {
        let size = match usize::try_from(size).unwrap_or(usize::MAX) {
            0 => Self::DEFAULT_SIZE,
            n if n > Self::MAX_SIZE => {
                return Err(InputError::new(
                    "page_size",
                    format!(
                        "at most {} records a page; follow `next_page_token` for the rest",
                        Self::MAX_SIZE
                    ),
                ));
            }
            n => n,
        };
        let after = if token.is_empty() {
            None
        } else {
            Some(ListCursor::parse(token)?)
        };
        Ok(Self { after, size })
    }
}

impl ListCursor {
    const PREFIX: &'static str = "p1.";

    fn parse(token: &str) -> Result<Self, InputError> {
        let bad = || {
            InputError::new(
                "page_token",
                "not a page token of kluis: pass `next_page_token` of the page before as it \
                 was given, or leave it empty for the first page",
            )
        };
        let rest = token.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        let (at, id) = rest.split_once('.').ok_or_else(bad)?;
        // One spelling of the number: digits with no sign or leading zero (but `0` itself).
        if at.is_empty()
            || !at.bytes().all(|b| b.is_ascii_digit())
            || (at.len() > 1 && at.starts_with('0'))
        {
            return Err(bad());
        }
        let created_at = at.parse::<i64>().map_err(|_| bad())?;
        let record_id = RecordId::parse("page_token", id).map_err(|_| bad())?;
        Ok(Self {
            created_at,
            record_id: record_id.as_str().to_owned(),
        })
    }

    fn of(record: &RecordRow) -> Self {
        Self {
            created_at: record.created_at,
            record_id: record.id.clone(),
        }
    }

    /// The token that names this place, for `next_page_token`.
    pub fn token(&self) -> String {
        format!("{}{}.{}", Self::PREFIX, self.created_at, self.record_id)
    }
}

/// Retention per purpose.
#[derive(Clone, Debug)]
pub struct RetentionTable(BTreeMap<Purpose, Retention>);

impl Default for RetentionTable {
    fn default() -> Self {
        Self(
            Purpose::ALL
                .iter()
                .map(|&p| (p, p.default_retention()))
                .collect(),
        )
    }
}

impl RetentionTable {
    /// Overrides the retention period of `purpose`.
    pub fn set(&mut self, purpose: Purpose, retention: Retention) {
        self.0.insert(purpose, retention);
    }

    /// The retention of `purpose`.
    pub fn of(&self, purpose: Purpose) -> Retention {
        self.0
            .get(&purpose)
            .copied()
            .unwrap_or_else(|| purpose.default_retention())
    }

    fn expires_at(&self, purpose: Purpose, created_at: i64) -> Option<i64> {
        let r = self.of(purpose);
        match r.from {
            RetentionStart::Creation => Some(created_at.saturating_add(i64::from(r.days) * 86_400)),
            RetentionStart::Closing => None,
        }
    }
}

/// The vault: everything a request needs.
pub struct Vault {
    store: Arc<dyn Store>,
    keyring: Keyring,
    policy: RwLock<Arc<Engine>>,
    policy_loader: Option<PolicyLoader>,
    audit: Audit,
    retention: RetentionTable,
    limits: Limits,
    key_settings: keyadmin::KeySettings,
    clock: Arc<dyn Clock>,
    rate_limit: tokens::RateLimiter,
    channels: Channels,
    /// Which mask a field allowed `read-masked` gets (`[masks]`).
    masks: mask::MaskTable,
    rows: rows::RowAuth,
    /// Serialises the steps of root changes.
    root_change_lock: std::sync::Mutex<()>,
    /// One retention sweep at a time on this node (the periodic one and an officer's): two
    /// would each put the same records on the trail as destroyed.
    sweep_lock: std::sync::Mutex<()>,
    /// The MAC each token row must carry (`tokens::TokenRegister`): a row put back from an older
    /// copy (a revocation undone) authenticates nobody.
    token_register: tokens::TokenRegister,
    /// Serialises the writes of one record's fields in this process (striped by record id), so
    /// that its field-set MAC is replaced over the one read; the store's check of that MAC
    /// (`Stale`) guards writers in other processes.
    record_locks: [std::sync::Mutex<()>; RECORD_LOCK_STRIPES],
    /// What this node last took in of the changes other nodes made (`nodes`).
    follower: nodes::Follower,
    /// Moves whenever a judgement of a caller may have changed: a token issued, approved or
    /// revoked here, the token register or policy set taken in from another node, a policy
    /// reload. A long call judged once (an audit watch) judges its caller again when it moved.
    judgements: std::sync::atomic::AtomicU64,
    /// The HSM of `[seal]`, when configured: a root change to it seals the new root key there.
    hsm: Option<Arc<crate::seal::pkcs11::Hsm>>,
    /// Set when the node stops serving this vault (shut down or sealed): key jobs stop after
    /// their current batch.
    stopping: std::sync::atomic::AtomicBool,
    /// Which fields of which purposes are searchable (`search`).
    search: crate::search::SearchConfig,
    /// The places of the reads being answered (`answers`).
    answers: answers::Answers,
    /// Places for calls running on blocking threads (`places`): a call waits for one before
    /// it starts.
    calls: places::CallPlaces,
}

/// The decision an audit entry names for a field returned masked.
pub const READ_MASKED: &str = "read-masked";

/// How often a write is sealed again when a rekey replaced the subject key it was sealed under
/// (the store refuses the stale generation); a rekey job moves on after one subject, so a
/// writer meets it only a few times in a row.
const REKEY_RETRIES: u32 = 3;

/// Stripes of `Vault::record_locks`.
const RECORD_LOCK_STRIPES: usize = 64;

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault").finish_non_exhaustive()
    }
}

/// Checks the trail against its head file before anything is appended, records an accepted
/// rollback or the first use of the head directory, and starts keeping the head there.
fn anchor_trail(
    store: &dyn Store,
    audit: &mut Audit,
    anchor: &crate::audit::anchor::Anchor,
) -> Result<(), VaultError> {
    use crate::audit::anchor::{HEAD_INTERVAL, HeadFile};
    let file = HeadFile::new(&anchor.dir, audit.store_id());
    let shown = file.path().display().to_string();
    let marker = store.meta(META_HEAD_DIR)?;
    let (problem, from) = match file.read() {
        Err(problem) => (Some(problem), None),
        Ok(Some(head)) => (audit.check_fresh(&head)?, Some(head.seq)),
        Ok(None) => match &marker {
            Some(dir) => (
                Some(format!(
                    "the store keeps its audit head in `{}` since it was first served with a \
                     head directory, but there is no head file: it was deleted or moved, or the \
                     head directory changed (copy `head-{}.json` into the new one)",
                    String::from_utf8_lossy(dir),
                    audit.store_id()
                )),
                None,
            ),
            None => (None, None),
        },
    };
    let tail = audit.head()?.seq;
    if let Some(problem) = problem {
        if !anchor.accept_rollback {
            return Err(VaultError::Rollback(format!(
                "refusing to serve store {}: {problem} (head file `{shown}`). If the store was \
                 restored or put back on purpose, start with --accept-rollback, which is recorded \
                 on the audit trail; otherwise find out who replaced the data directory",
                audit.store_id()
            )));
        }
        tracing::warn!(%problem, head_file = %shown, "starting on a rolled-back store (--accept-rollback)");
        audit.append(&AuditEvent {
            time: now_unix(),
            principal: "kluis".into(),
            action: "audit-rollback-accepted".into(),
            decision: "allow".into(),
            target: Some(shown.clone()),
            reason: Some(format!(
                "{problem}; started with --accept-rollback: the head moves from entry {} to \
                 entry {tail}",
                from.map_or_else(|| "(none)".to_owned(), |s| s.to_string())
            )),
            ..AuditEvent::default()
        })?;
    }
    audit.write_head(&file).map_err(VaultError::Audit)?;
    if marker.is_none() {
        let dir = anchor.dir.display().to_string();
        store.set_meta(META_HEAD_DIR, dir.as_bytes())?;
        if tail > 0 {
            tracing::warn!(head_file = %shown, entries = tail, "no head file yet for a trail of {tail} entries; anchoring from here on");
        }
        audit.append(&AuditEvent {
            time: now_unix(),
            principal: "kluis".into(),
            action: "audit-head-anchor".into(),
            decision: "allow".into(),
            target: Some(shown),
            reason: Some(format!(
                "the head is kept in `{dir}` from entry {tail} on; the store is refused at start \
                 when its trail is behind it"
            )),
            ..AuditEvent::default()
        })?;
    }
    audit.keep_head(file, HEAD_INTERVAL)?;
    Ok(())
}

impl Vault {
    /// Assembles a vault from its parts; the keyring must be unsealed already.
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Keyring,
        policy: Engine,
        retention: RetentionTable,
        limits: Limits,
    ) -> Result<Self, VaultError> {
        Self::with_anchor(store, keyring, policy, retention, limits, None)
    }

    /// Like `new`, keeping the trail's head in a head file outside the store when `anchor` is
    /// given: refuses (`Rollback`) a store whose trail is behind its head file, unless
    /// `accept_rollback`, which is recorded on the trail.
    pub fn with_anchor(
        store: Arc<dyn Store>,
        keyring: Keyring,
        policy: Engine,
        retention: RetentionTable,
        limits: Limits,
        anchor: Option<&crate::audit::anchor::Anchor>,
    ) -> Result<Self, VaultError> {
        // Where other nodes' changes stand before anything is loaded (see `nodes`).
        let epoch = store.shared_state()?;
        let audit_key = keyring.audit_key()?;
        let rows = rows::RowAuth::new(&audit_key).map_err(KeyError::Crypto)?;
        let policy = nodes::policy_at_start(store.as_ref(), &rows, policy)?;
        // A store only this process uses: whoever held a job's lease before has died.
        if store.change_epoch()?.is_none() {
            store.clear_leases()?;
        }
        let mut audit = Audit::open(Arc::clone(&store), audit_key, keyring.store_id())?;
        if let Some(anchor) = anchor {
            anchor_trail(store.as_ref(), &mut audit, anchor)?;
        }
        // Record which policy set decides from now on, and whether it changed since last time.
        let previous = store.meta(META_POLICY_DIGEST)?;
        let changed = previous
            .as_deref()
            .is_some_and(|p| p != policy.digest().as_bytes());
        audit.append(&AuditEvent {
            time: now_unix(),
            principal: "kluis".into(),
            action: if changed {
                "policy-change"
            } else {
                "policy-load"
            }
            .into(),
            decision: "allow".into(),
            target: Some(format!("sha256:{}", policy.digest())),
            reason: Some(match &previous {
                Some(p) if changed => format!(
                    "{} policies; replaces sha256:{}",
                    policy.len(),
                    String::from_utf8_lossy(p)
                ),
                _ => format!("{} policies", policy.len()),
            }),
            ..AuditEvent::default()
        })?;
        if previous.as_deref() != Some(policy.digest().as_bytes()) {
            store.set_meta(META_POLICY_DIGEST, policy.digest().as_bytes())?;
        }
        let policy_generation = nodes::store_policy_set(store.as_ref(), &rows, &policy)?;
        let alone_here = store.answers_from_local_files();
        let vault = Self {
            store,
            keyring,
            policy: RwLock::new(Arc::new(policy)),
            policy_loader: None,
            audit,
            retention,
            limits,
            key_settings: keyadmin::KeySettings::default(),
            hsm: None,
            stopping: std::sync::atomic::AtomicBool::new(false),
            clock: Arc::new(SystemClock),
            rate_limit: tokens::RateLimiter::default(),
            channels: Channels::default(),
            masks: mask::MaskTable::default(),
            rows,
            root_change_lock: std::sync::Mutex::new(()),
            sweep_lock: std::sync::Mutex::new(()),
            token_register: tokens::TokenRegister::default(),
            follower: nodes::Follower::default(),
            judgements: std::sync::atomic::AtomicU64::new(0),
            record_locks: std::array::from_fn(|_| std::sync::Mutex::new(())),
            search: crate::search::SearchConfig::default(),
            answers: answers::Answers::new(limits.answer_bytes_per_caller, limits.answer_bytes),
            calls: places::CallPlaces::new(
                limits.max_calls_running,
                limits.max_calls_running_per_caller,
            )
            .with_alone_here(alone_here),
        };
        vault.note_epoch(epoch);
        vault
            .follower
            .policy_generation
            .store(policy_generation, std::sync::atomic::Ordering::SeqCst);
        Ok(vault)
    }

    /// Accepts requests through `channels` only (the configuration's closed list).
    pub fn with_channels(mut self, channels: Channels) -> Self {
        self.channels = channels;
        self
    }

    /// Masks fields allowed `read-masked` as `masks` says (`[masks]` of the configuration).
    pub fn with_masks(mut self, masks: mask::MaskTable) -> Self {
        self.masks = masks;
        self
    }

    /// Whether the audit trail can be written (as the last append showed). While it cannot,
    /// every call that needs an entry fails with `UNAVAILABLE` (with `DATA_LOSS` while the
    /// trail's last entry is not the one to chain on), and health says `NOT_SERVING`.
    pub fn audit_writable(&self) -> bool {
        self.audit.writable()
    }

    /// Tries to write the trail again after a failure: appends an entry saying it is available
    /// again, which on success makes `audit_writable` true.
    pub fn probe_audit(&self) -> Result<(), VaultError> {
        self.audit.append(&AuditEvent {
            time: now_unix(),
            principal: "kluis".into(),
            action: "audit-available".into(),
            decision: "allow".into(),
            reason: Some("the trail can be written again after a failure".into()),
            ..AuditEvent::default()
        })?;
        Ok(())
    }

    /// The request limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The places for calls running on blocking threads: a call takes one before it starts
    /// and holds it until its work is done.
    pub fn call_places(&self) -> &places::CallPlaces {
        &self.calls
    }

    /// The channels a request may arrive through.
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// The lifecycle's now (unix seconds): what times in a request are bounded against.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The audit trail.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Whether `store` says it was made by `kluis serve --dev` (without checking that claim:
    /// `is_dev_store` does, once unsealed). Lets `serve --dev` refuse any other store before it
    /// reads a key.
    pub fn claims_dev_store(store: &dyn Store) -> Result<bool, VaultError> {
        Ok(store.meta(META_DEV_STORE)?.is_some())
    }

    /// Marks a store just made by `kluis serve --dev` as such: a `dev-store-created` entry on
    /// the trail naming the store id, and a meta row pointing at it. The entry is MAC'd under
    /// the audit key, so the mark cannot be made by editing the database.
    pub fn mark_dev_store(&self) -> Result<(), VaultError> {
        let seq = self.audit.append(&AuditEvent {
            time: now_unix(),
            principal: "kluis-dev".into(),
            action: "dev-store-created".into(),
            decision: "allow".into(),
            target: Some(self.audit.store_id().to_hex()),
            reason: Some(
                "made by `kluis serve --dev`: development only; tokens for every role are minted \
                 without a policy check"
                    .into(),
            ),
            ..AuditEvent::default()
        })?;
        self.store
            .set_meta(META_DEV_STORE, seq.value().to_string().as_bytes())?;
        Ok(())
    }

    /// Puts the identity configuration in force (`summary`: which services act for which roles,
    /// which provider claim values give which roles) on the trail as an `identity-config` entry,
    /// when it differs from the one last recorded: roles from the organisation's identity are
    /// granted by the configuration, and the privacy officer sees each change there.
    pub fn record_identity_config(&self, summary: &str) -> Result<(), VaultError> {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(summary.as_bytes()));
        if self
            .store
            .meta(META_IDENTITY_CONFIG)?
            .is_some_and(|d| d == digest.as_bytes())
        {
            return Ok(());
        }
        self.audit.append(&AuditEvent {
            time: now_unix(),
            principal: "kluis".into(),
            action: "identity-config".into(),
            decision: "allow".into(),
            reason: Some(summary.to_owned()),
            ..AuditEvent::default()
        })?;
        self.store
            .set_meta(META_IDENTITY_CONFIG, digest.as_bytes())?;
        Ok(())
    }

    /// Whether this store was made by `kluis serve --dev`: its meta row points at an authentic
    /// `dev-store-created` entry naming this store.
    pub fn is_dev_store(&self) -> Result<bool, VaultError> {
        let Some(seq) = self
            .store
            .meta(META_DEV_STORE)?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return Ok(false);
        };
        let store_id = self.audit.store_id().to_hex();
        Ok(self.audit.authentic_entry(seq)?.is_some_and(|e| {
            e.action == "dev-store-created" && e.target.as_deref() == Some(store_id.as_str())
        }))
    }

    /// A new record's id, in the order of issue where the store keeps such ids best
    /// (`RecordStore::record_ids_in_order`), random otherwise.
    pub(crate) fn new_record_id(&self) -> RecordId {
        if self.store.record_ids_in_order() {
            RecordId::generate_in_order()
        } else {
            RecordId::generate()
        }
    }

    /// Stores a new record for `subject` under `ctx.purpose`. Returns its id and expiry.
    pub fn put_record(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        fields: Vec<NewField>,
        labels: BTreeMap<String, String>,
    ) -> Result<(RecordId, Option<i64>), VaultError> {
        let (put, entry, write, made) = self.begin_put(principal, ctx, subject, fields, labels)?;
        let stored = match self.audit.append_writing(&entry, made)? {
            (_, Carried::Made(outcome)) => outcome,
            (_, Carried::Left(made)) => made.make(self.store.as_ref()),
        };
        // The allowed entry stands; a record the store did not take is on the trail as not
        // carried out before the caller hears of it.
        self.settle_put(&put, &write, stored)
            .map_err(|e| self.not_written(Some(entry), e))?;
        Ok(self.put_stored(put))
    }

    /// [`Vault::put_record`] without waiting for the write's entry (and, where the store makes
    /// writes with entries, the write) to be committed: returns once the entry is queued with
    /// the write, and `then` gets the answer once both are committed (on the thread that
    /// committed them), or the error. Where the store makes a write after its entry (PostgreSQL),
    /// the write waits for its entry and makes it on this thread, as `put_record` does, and
    /// runs `then` before it returns, with any error. Otherwise a write refused before its
    /// entry is queued (bad input, the policy) returns the error here and never runs `then`.
    pub fn put_record_then(
        self: &Arc<Self>,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        fields: Vec<NewField>,
        labels: BTreeMap<String, String>,
        then: impl FnOnce(Result<(RecordId, Option<i64>), VaultError>) + Send + 'static,
    ) -> Result<(), VaultError> {
        if !self.store.makes_writes_with_entries() {
            let put = self.put_record(principal, ctx, subject, fields, labels);
            then(put.map_err(|e| self.after_failure(e)));
            return Ok(());
        }
        let (put, entry, write, made) = self.begin_put(principal, ctx, subject, fields, labels)?;
        let vault = Arc::clone(self);
        let unstored = entry.clone();
        self.audit
            .append_writing_then(&entry, made, move |appended| {
                let settled = appended.map(|(_, carried)| {
                    let stored = match carried {
                        Carried::Made(outcome) => outcome,
                        Carried::Left(made) => made.make(vault.store.as_ref()),
                    };
                    vault.settle_put(&put, &write, stored)
                });
                match settled {
                    Ok(Ok(())) => then(Ok(vault.put_stored(put))),
                    // Neither the entry nor the record: nothing to add to the trail.
                    Err(trail) => then(Err(vault.after_failure(trail.into()))),
                    // The allowed entry stands and the store did not take the record: a
                    // second entry says so, and the caller hears once it is committed. This
                    // thread may be leading the trail's commit, so the entry is queued, not
                    // waited for; when it cannot be committed the caller hears that instead.
                    Ok(Err(e)) => {
                        let failed = vault.after_failure(e);
                        let unstored = not_carried_out_entry(unstored, &failed);
                        let answer = Arc::clone(&vault);
                        let queued = vault.audit.append_then(&unstored, move |seq| {
                            then(Err(match seq {
                                Ok(_) => failed,
                                Err(trail) => answer.after_failure(trail.into()),
                            }));
                        });
                        if let Err(e) = queued {
                            tracing::error!(error = %e, "a write not carried out is not on the trail");
                        }
                    }
                }
            })?;
        Ok(())
    }

    /// A new record decided and its fields sealed: what it is, its entry, the key it is sealed
    /// under and its write. A failure after the decision leaves the entry, denied, on the trail.
    fn begin_put(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        fields: Vec<NewField>,
        labels: BTreeMap<String, String>,
    ) -> Result<
        (
            Put,
            AuditEvent,
            crate::keys::KeyForWrite,
            crate::store::RecordWrite,
        ),
        VaultError,
    > {
        let (put, entry) = self.decide_put(principal, ctx, subject, fields, labels)?;
        match self.prepare_put(&put) {
            Ok((write, made)) => Ok((put, entry, write, made)),
            Err(e) => Err(self.not_written(Some(entry), e)),
        }
    }

    /// Everything of a new record before its entry: the fields checked, the policy asked, the
    /// record's row sealed; and the entry.
    fn decide_put(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        fields: Vec<NewField>,
        labels: BTreeMap<String, String>,
    ) -> Result<(Put, AuditEvent), VaultError> {
        check_fields(&fields, &self.limits)?;
        let record_id = self.new_record_id();
        let resources: Vec<FieldResource> = fields
            .iter()
            .map(|f| FieldResource {
                record: record_id.as_str().into(),
                name: f.name.as_str().into(),
                category: f.category,
                purpose: ctx.purpose,
                subject: subject.as_str().into(),
                flags: Default::default(),
            })
            .collect();
        let decisions = self.decide(principal, Action::Write, ctx, &resources)?;
        // Allowed, the entry goes on the trail in the transaction that stores the record.
        let entry = self.allowed_entry(
            principal,
            ctx,
            "write",
            subject,
            &record_id,
            &resources,
            &decisions,
            || Ok(()),
        )?;
        let now = self.clock.now();
        let expires_at = self.retention.expires_at(ctx.purpose, now);
        let record = self.rows.seal(
            RecordRow {
                id: record_id.as_str().into(),
                subject: subject.as_str().into(),
                purpose: ctx.purpose,
                labels,
                created_at: now,
                updated_at: now,
                closed_at: None,
                expires_at,
                mac: Vec::new(),
                fields_mac: Vec::new(),
            },
            |r, mac| r.mac = mac,
        );
        let put = Put {
            record_id,
            subject: subject.clone(),
            purpose: ctx.purpose,
            fields,
            record,
            expires_at,
        };
        Ok((put, entry))
    }

    /// The fields of `put` sealed under the subject key the keyring has for the write, and the
    /// write that stores them.
    fn prepare_put(
        &self,
        put: &Put,
    ) -> Result<(crate::keys::KeyForWrite, crate::store::RecordWrite), VaultError> {
        let write = self
            .keyring
            .subject_key_for_write(&put.subject, put.purpose)?;
        let rows = self.seal_fields_under(
            &write.active,
            &put.subject,
            &put.record_id,
            put.purpose,
            &put.fields,
        )?;
        let mut record = put.record.clone();
        record.fields_mac = self.rows.fields_mac(
            put.record_id.as_str(),
            rows.iter().map(|f| (f.name.as_str(), f.version.as_str())),
        );
        let made = match &write.new {
            None => crate::store::RecordWrite::Insert {
                record,
                fields: rows,
            },
            Some(new) => crate::store::RecordWrite::InsertWithKey {
                key: new.row.clone(),
                anchor: new.anchor.clone(),
                record,
                fields: rows,
            },
        };
        Ok((write, made))
    }

    /// What the store did with the first write of `put` (made with its entry, or after it):
    /// done, or written again without an entry (the entry stands, once). The fields are sealed
    /// again, under the key the store has, when a rekey replaced the subject key between
    /// sealing and storing (the store refuses the stale generation), when another write
    /// stored the subject's first key first (`Exists`), or when a rotation retired the version
    /// the new key was wrapped under (`NotLive`).
    fn settle_put(
        &self,
        put: &Put,
        write: &crate::keys::KeyForWrite,
        stored: Result<(), StoreError>,
    ) -> Result<(), VaultError> {
        let mut attempt = (None, stored);
        let mut retried = 0;
        loop {
            let (again, stored) = attempt;
            let write = again.as_ref().unwrap_or(write);
            match stored {
                Ok(()) => {
                    self.keyring.stored(&put.subject, put.purpose, write);
                    return Ok(());
                }
                Err(StoreError::StaleGeneration { .. }) if retried < REKEY_RETRIES => {
                    self.keyring.forget(&put.subject, put.purpose);
                }
                Err(StoreError::NotLive { .. })
                    if write.new.is_some() && retried < REKEY_RETRIES =>
                {
                    // The version this node holds as active is no longer: read it again.
                    self.keyring.forget_active(Some(put.purpose));
                }
                Err(StoreError::Exists(_)) if write.new.is_some() && retried < REKEY_RETRIES => {}
                Err(e) => return Err(e.into()),
            }
            retried += 1;
            let (write, made) = self.prepare_put(put)?;
            attempt = (Some(write), made.make(self.store.as_ref()));
        }
    }

    /// The answer of a stored `put`: its id and expiry.
    fn put_stored(&self, put: Put) -> (RecordId, Option<i64>) {
        tracing::info!(
            record_id = put.record_id.as_str(),
            purpose = put.purpose.as_str(),
            fields = put.fields.len(),
            "record stored"
        );
        (put.record_id, put.expires_at)
    }

    /// Rectifies a record: replaces (or adds) `fields`. Old values are not kept anywhere.
    pub fn update_record(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        record_id: &RecordId,
        fields: Vec<NewField>,
    ) -> Result<i64, VaultError> {
        check_fields(&fields, &self.limits)?;
        // One writer of this record in this process from the read on: what is decided and
        // checked below is what the write replaces.
        let _one_writer = self.record_lock(record_id);
        let (record, rows) = self.load_metas(record_id)?;
        let meta = record_meta(&record)?;
        let subject = SubjectId::parse_stored(&record.subject)
            .map_err(|_| StoreError::Corrupt(format!("subject of `{}`", record.id)))?;
        let resources: Vec<FieldResource> = fields
            .iter()
            .map(|f| FieldResource {
                record: record.id.clone(),
                name: f.name.as_str().into(),
                category: f.category,
                purpose: meta.purpose,
                subject: record.subject.clone(),
                flags: Default::default(),
            })
            .collect();
        let decisions = self.decide(principal, Action::Write, ctx, &resources)?;
        let replaces = fields
            .iter()
            .any(|f| rows.iter().any(|r| r.name == f.name.as_str()));
        // Checked only after the decision, and before the entry: the caller learns about the
        // record's other fields only what it may, and a stopped update is on the trail as such.
        let precondition = || -> Result<(), VaultError> {
            for f in &fields {
                let Some(existing) = rows.iter().find(|r| r.name == f.name.as_str()) else {
                    continue;
                };
                if existing.category == f.category {
                    continue;
                }
                // May the caller know the stored field at all? If not, it is refused like any
                // field the policy keeps from it, and its category is not named either way.
                let stored = meta_resource(&record, meta.purpose, existing);
                let known = self
                    .decide(principal, Action::List, ctx, std::slice::from_ref(&stored))?
                    .first()
                    .is_some_and(Decision::is_allow);
                if !known {
                    return Err(VaultError::Denied(format!(
                        "field `{}`: you may not write it on this record",
                        f.name
                    )));
                }
                return Err(VaultError::FailedPrecondition(format!(
                    "field `{}` is stored under another category than `{}`; delete the record \
                     and store it anew to change a category",
                    f.name, f.category
                )));
            }
            let new_count = fields
                .iter()
                .filter(|f| !rows.iter().any(|r| r.name == f.name.as_str()))
                .count();
            if rows.len() + new_count > self.limits.max_fields {
                return Err(InputError::new(
                    "fields",
                    format!("a record holds at most {} fields", self.limits.max_fields),
                )
                .into());
            }
            let kept = stored_bytes(
                rows.iter()
                    .filter(|r| !fields.iter().any(|f| f.name.as_str() == r.name)),
            );
            let added: usize = fields.iter().map(|f| f.value.len()).sum();
            if kept + added > self.limits.max_record_bytes {
                return Err(InputError::new(
                    "fields",
                    format!(
                        "a record holds at most {} bytes",
                        self.limits.max_record_bytes
                    ),
                )
                .into());
            }
            // A hold keeps stored values; adding a field replaces nothing.
            if replaces {
                if let Some(hold) = self.hold_on(&record)? {
                    return Err(held(record_id, &hold));
                }
            } else {
                self.check_holds(&record.subject)?;
            }
            Ok(())
        };
        self.require_all_then(
            principal,
            ctx,
            "update",
            &subject,
            record_id,
            &resources,
            &decisions,
            precondition,
        )
        .map_err(|e| self.write_refusal(principal, ctx, &record, &resources, e))?;
        let now = self.clock.now();
        match self.write_fields(
            &subject,
            record_id,
            &record,
            &rows,
            meta.purpose,
            &fields,
            now,
        ) {
            Ok(()) => Ok(now),
            // Any failure after the allowed entry (a hold placed in between, the store's
            // refusal): nothing was written (one transaction), and the trail says so.
            Err(failed) => {
                let refusal = match failed {
                    WriteError::Held(hold) => held(record_id, &hold),
                    other => other.into_vault(record_id),
                };
                self.not_carried_out(
                    principal,
                    ctx,
                    "update",
                    &subject,
                    record_id,
                    &refusal.to_string(),
                )?;
                Err(refusal)
            }
        }
    }

    /// Seals `fields` and writes them into the stored `record` (whose fields were read as
    /// `rows`, without their values), replacing values of the same name: one transaction, guarded by the record's
    /// field-set MAC as read (`Stale` when another write came between) and by the store's own
    /// check of active holds when a value is replaced. A rekey meanwhile seals again.
    #[expect(clippy::too_many_arguments, reason = "the parts of one write")]
    pub(crate) fn write_fields(
        &self,
        subject: &SubjectId,
        record_id: &RecordId,
        record: &RecordRow,
        rows: &[FieldMeta],
        purpose: Purpose,
        fields: &[NewField],
        now: i64,
    ) -> Result<(), WriteError> {
        let mut rekeyed = 0;
        loop {
            let sealed = self
                .seal_fields(subject, record_id, purpose, fields)
                .map_err(WriteError::Vault)?;
            // The set after the change: the stored fields, the written ones in their place.
            let next = self.rows.fields_mac(
                record_id.as_str(),
                rows.iter()
                    .filter(|r| !sealed.iter().any(|f| f.name == r.name))
                    .map(|f| (f.name.as_str(), f.version.as_str()))
                    .chain(sealed.iter().map(|f| (f.name.as_str(), f.version.as_str()))),
            );
            let fields_mac = FieldsMac {
                prev: &record.fields_mac,
                next: &next,
            };
            match self
                .store
                .update_fields(record_id.as_str(), &sealed, now, fields_mac)
            {
                Err(StoreError::StaleGeneration { .. }) if rekeyed < REKEY_RETRIES => {
                    rekeyed += 1;
                    self.keyring.forget(subject, purpose);
                }
                Err(StoreError::Stale(_)) => return Err(WriteError::Stale),
                Err(StoreError::Held(hold)) => return Err(WriteError::Held(hold)),
                Ok(false) => return Err(WriteError::Gone),
                Ok(true) => return Ok(()),
                Err(e) => return Err(WriteError::Vault(e.into())),
            }
        }
    }

    /// Deletes a record and all its fields, when the policy allows deleting every field of it.
    pub fn delete_record(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        record_id: &RecordId,
    ) -> Result<(), VaultError> {
        let (record, rows) = self.load_metas(record_id)?;
        let meta = record_meta(&record)?;
        let subject = SubjectId::parse_stored(&record.subject)
            .map_err(|_| StoreError::Corrupt(format!("subject of `{}`", record.id)))?;
        let mut resources = rows
            .iter()
            .map(|r| meta_resource(&record, meta.purpose, r))
            .collect::<Vec<_>>();
        // Evidence files go with the record, so the caller must be allowed to delete them too.
        for ev in self.finished_evidence(record_id.as_str())? {
            resources.push(evidence_resource(&record, meta.purpose, &ev)?);
        }
        let decisions = self.decide(principal, Action::Delete, ctx, &resources)?;
        self.require_all_then(
            principal,
            ctx,
            "delete",
            &subject,
            record_id,
            &resources,
            &decisions,
            || match self.hold_on(&record)? {
                Some(hold) => Err(held(record_id, &hold)),
                None => Ok(()),
            },
        )?;
        // The record named destroyed in its subject's anchor, in the transaction that deletes it
        // (tried again when another change to the subject came between).
        let deleted = std::cell::RefCell::new(None);
        let changed = self.change_restrictions(
            subject.as_str(),
            |facts| facts.destroyed.push(record_id.as_str().into()),
            |prev, next| {
                let outcome = self.store.delete_record(
                    record_id.as_str(),
                    crate::store::AnchorChange { prev, next },
                );
                match outcome {
                    Err(StoreError::Stale(what)) => Err(StoreError::Stale(what)),
                    other => {
                        let written = matches!(other, Ok(Some(_)));
                        *deleted.borrow_mut() = Some(other);
                        Ok(written)
                    }
                }
            },
        );
        // The allowed entry stands: a deletion not carried out says so on the trail.
        let not_done = |e: VaultError| -> VaultError {
            match self.not_carried_out(
                principal,
                ctx,
                "delete",
                &subject,
                record_id,
                &e.to_string(),
            ) {
                Ok(()) => e,
                Err(trail) => trail,
            }
        };
        changed.map_err(not_done)?;
        match deleted.into_inner().unwrap_or(Ok(None)) {
            Ok(None) => Err(VaultError::NotFound(format!("record `{record_id}`"))),
            Ok(Some(shredded)) => {
                if shredded {
                    self.keyring.forget(&subject, meta.purpose);
                }
                Ok(())
            }
            Err(StoreError::Held(hold)) => Err(not_done(held(record_id, &hold))),
            Err(e) => Err(not_done(e.into())),
        }
    }

    /// Lists the records of `subject` the caller may know about among one page of them, with
    /// only the fields the policy lets them know of, and where the next page starts when there
    /// is one. Metadata only: nothing is decrypted.
    pub fn list_records(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        subject: &SubjectId,
        page: &ListPage,
    ) -> Result<(Listed, Option<ListCursor>), VaultError> {
        // A token scoped to a subject reaches no other (the policies forbid it for every field):
        // refused before anything of the other subject is read, so that neither the answer nor
        // its time tells whether that subject has records.
        if let Some(scope) = &principal.scope_subject
            && scope != subject
        {
            let mut event = self.event(principal, ctx, "list", Some(subject), None);
            event.decision = "deny".into();
            event.reason = Some("the token is scoped to another subject".into());
            self.audit.append(&event)?;
            return Err(VaultError::Denied(
                "this token is scoped to one subject and reaches no other".into(),
            ));
        }
        // Records are read a batch at a time until the page holds `page.size` the caller may
        // know of, the subject's records end, or `ListPage::MAX_EXAMINED` were examined. A full
        // page always gives a token, whatever follows, and names its last record listed: neither
        // the token nor its presence tells of records the caller may not know of (but past
        // `MAX_EXAMINED` hidden records in one call, whose token names the last examined).
        let mut out: Listed = Vec::new();
        let mut after = page.after.clone();
        let mut examined = 0;
        let next = loop {
            let batch = page
                .size
                .max(ListPage::DEFAULT_SIZE)
                .min(ListPage::MAX_EXAMINED - examined);
            let records = self.store.subject_records_page(
                subject.as_str(),
                after.as_ref().map(|c| (c.created_at, c.record_id.as_str())),
                batch,
            )?;
            let read = records.len();
            examined += read;
            let last = records.last().map(|(r, _)| ListCursor::of(r));
            for listed in self.visible_metadata(principal, ctx, records, None)? {
                out.push(listed);
                if out.len() == page.size {
                    break;
                }
            }
            if let Some((meta, _)) = out.last().filter(|_| out.len() == page.size) {
                break Some(ListCursor {
                    created_at: meta.created_at,
                    record_id: meta.id.clone(),
                });
            }
            if read < batch {
                break None;
            }
            if examined >= ListPage::MAX_EXAMINED {
                break last;
            }
            after = last;
        };
        let mut event = self.event(principal, ctx, "list", Some(subject), None);
        event.decision = if out.is_empty() { "deny" } else { "allow" }.into();
        event.reason = Some(format!("{} record(s) listed", out.len()));
        self.audit.append(&event)?;
        Ok((out, next))
    }

    /// The metadata of `records` the caller may know of: each record with the fields the policy
    /// lets them list (sizes and evidence metadata only where they may read), records with no
    /// such field left out. Nothing is decrypted. Decided on the rows as read; a record is
    /// checked (its row, its fields' metadata and set, its evidence rows) before anything of it
    /// is shown, so a row changed to be shown fails closed, and a record the caller may not know
    /// of costs no more than its decision (what the call's time could tell of it).
    fn visible_metadata(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        records: Vec<(RecordRow, Vec<crate::store::FieldMeta>)>,
        facts: Option<&rights::DecisionFacts>,
    ) -> Result<Vec<(RecordMeta, Vec<FieldInfo>)>, VaultError> {
        // Decide once per distinct (subject, purpose, category, name, closed), not per row.
        let mut distinct: BTreeMap<(String, Purpose, Category, String, bool), usize> =
            BTreeMap::new();
        let mut resources = Vec::new();
        for (rec, fields) in &records {
            let purpose = rec.purpose;
            for f in fields {
                let closed = rec.closed_at.is_some();
                let key = (
                    rec.subject.clone(),
                    rec.purpose,
                    f.category,
                    f.name.clone(),
                    closed,
                );
                if let std::collections::btree_map::Entry::Vacant(e) = distinct.entry(key) {
                    e.insert(resources.len());
                    resources.push(FieldResource {
                        record: format!("list-{}", resources.len()),
                        name: f.name.clone(),
                        category: f.category,
                        purpose,
                        subject: rec.subject.clone(),
                        flags: FieldFlags {
                            record_closed: closed,
                            ..FieldFlags::default()
                        },
                    });
                }
            }
        }
        // Both decisions on the same facts: those given when they cover every subject listed,
        // else read once.
        let read;
        let facts = match facts {
            Some(f) if f.covers(&resources) => f,
            _ => {
                read = self.facts_of(principal, &resources)?;
                &read
            }
        };
        let decisions = self.decide_on(principal, Action::List, ctx, &resources, facts)?;
        // Sizes and evidence metadata (media type, size, digest) tell something of the value:
        // shown only to a caller who may read the field.
        let reads = self.decide_on(principal, Action::Read, ctx, &resources, facts)?;
        let mut out = Vec::new();
        for (rec, fields) in records {
            let listed = |f: &crate::store::FieldMeta| {
                let i = *distinct.get(&(
                    rec.subject.clone(),
                    rec.purpose,
                    f.category,
                    f.name.clone(),
                    rec.closed_at.is_some(),
                ))?;
                decisions.get(i).filter(|d| d.is_allow())?;
                Some(i)
            };
            if !fields.iter().any(|f| listed(f).is_some()) {
                continue;
            }
            // Shown, so checked first. Evidence metadata (media type, size) is listed: only
            // from authentic rows, and never of a record that was destroyed (gone since it was
            // read: not listed; stored again: refused).
            self.rows.check(&rec)?;
            if facts.names_destroyed(&rec.subject, &rec.id)? {
                match self.destroyed_stored(&rec.id) {
                    VaultError::NotFound(_) => continue,
                    refused => return Err(refused),
                }
            }
            self.rows.check_field_metas(&rec, &fields)?;
            let mut fields = fields;
            if fields.iter().any(|f| f.evidence.is_some()) {
                // Listed from the rows as checked: an upload still running is not listed, a
                // finished file marked unfinished by hand fails its check, and one that finished
                // since the metadata was read is listed as finished (or, when it was not
                // decided on with the rest, not at all).
                let finished = self.finished_evidence(&rec.id)?;
                fields.retain(|f| f.evidence.is_none());
                fields.extend(
                    finished
                        .into_iter()
                        .map(crate::store::FieldMeta::of_evidence),
                );
                fields.sort_by(|a, b| a.name.cmp(&b.name));
            }
            let visible: Vec<FieldInfo> = fields
                .into_iter()
                .filter_map(|f| {
                    let i = listed(&f)?;
                    let readable = reads.get(i).is_some_and(Decision::is_allow);
                    Some(FieldInfo {
                        name: f.name,
                        category: f.category.as_str().into(),
                        size: if readable { f.size } else { 0 },
                        evidence: if readable { f.evidence } else { None },
                    })
                })
                .collect();
            if !visible.is_empty() {
                out.push((record_meta(&rec)?, visible));
            }
        }
        Ok(out)
    }

    /// Opens every granted field; `None` when a field's subject key generation no longer exists
    /// (a rekey replaced it since the fields were read).
    fn open_granted(
        &self,
        grants: &[(FieldGrant, &FieldRow, Category)],
        subject: &SubjectId,
        record: &RecordRow,
        purpose: Purpose,
    ) -> Result<Option<Vec<OpenField>>, VaultError> {
        let mut keys: BTreeMap<u32, Arc<crate::crypto::SubjectKey>> = BTreeMap::new();
        let mut fields = Vec::with_capacity(grants.len());
        for (grant, row, category) in grants {
            let key = match keys.get(&row.key_gen) {
                Some(k) => Arc::clone(k),
                None => match self.keyring.subject_key_at(subject, purpose, row.key_gen)? {
                    Some(k) => {
                        keys.insert(row.key_gen, Arc::clone(&k));
                        k
                    }
                    None => return Ok(None),
                },
            };
            fields.push(match grant {
                FieldGrant::Full(grant) => {
                    open_field(grant, &key, record, purpose, *category, row)?
                }
                FieldGrant::Masked(grant) => {
                    let mask = self.masks.of(&row.name);
                    open_masked(grant, mask, &key, record, purpose, *category, row)?
                }
            });
        }
        Ok(Some(fields))
    }

    /// Audits a write-like request and refuses it unless every field is allowed, with the
    /// vault's own preconditions (a legal hold, a category that cannot change, a limit) checked
    /// once the policy allowed and before the entry is written: a request they stop is on the
    /// trail as refused, with why, never as done.
    #[expect(
        clippy::too_many_arguments,
        reason = "all parts of one audited decision"
    )]
    fn require_all_then(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        action: &str,
        subject: &SubjectId,
        record_id: &RecordId,
        resources: &[FieldResource],
        decisions: &[Decision],
        precondition: impl FnOnce() -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let event = self.allowed_entry(
            principal,
            ctx,
            action,
            subject,
            record_id,
            resources,
            decisions,
            precondition,
        )?;
        self.audit.append(&event)?;
        Ok(())
    }

    /// The decision of `require_all_then` without its entry when it allows: a refusal is on the
    /// trail (committed) and answered as an error; an allowed request gets its entry, not yet
    /// appended, for the caller to commit before (or with) what it allows.
    #[expect(
        clippy::too_many_arguments,
        reason = "all parts of one audited decision"
    )]
    fn allowed_entry(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        action: &str,
        subject: &SubjectId,
        record_id: &RecordId,
        resources: &[FieldResource],
        decisions: &[Decision],
        precondition: impl FnOnce() -> Result<(), VaultError>,
    ) -> Result<AuditEvent, VaultError> {
        // Deny by default: a request that decides nothing (no fields) is not allowed.
        let all = !decisions.is_empty() && decisions.iter().all(Decision::is_allow);
        let mut event = self.event(principal, ctx, action, Some(subject), Some(record_id));
        event.fields = audit_fields(resources, decisions);
        let stopped = if all { precondition().err() } else { None };
        event.decision = if all && stopped.is_none() {
            "allow"
        } else {
            "deny"
        }
        .into();
        if let Some(e) = &stopped {
            event.reason = Some(match e {
                VaultError::FailedPrecondition(m) | VaultError::Denied(m) => m.clone(),
                VaultError::Input(e) => e.to_string(),
                other => format!("not carried out: {other}"),
            });
        }
        if all && stopped.is_none() {
            return Ok(event);
        }
        self.audit.append(&event)?;
        if let Some(e) = stopped {
            Err(e)
        } else if matches!(action, "delete" | "close") {
            // Neither the fields of a stored record nor their categories are the caller's to
            // learn from a refusal: the reasons stay on the trail. Only the fields a caller
            // named itself (a write) are named back.
            Err(VaultError::Denied(format!(
                "you may not {action} this record (the reasons are on the audit trail)"
            )))
        } else {
            Err(VaultError::Denied(deny_summary(resources, decisions)))
        }
    }

    /// A refusal of a write into the stored `record`: its reasons name the record's purpose and
    /// the rules that kept the write back, so they are given only to a caller who may list
    /// something of the record; any other gets the same answer whatever the record holds.
    pub(crate) fn write_refusal(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        record: &RecordRow,
        named: &[FieldResource],
        e: VaultError,
    ) -> VaultError {
        let VaultError::Denied(_) = &e else { return e };
        let known = || -> Result<bool, VaultError> {
            let purpose = record_meta(record)?.purpose;
            let mut stored = Vec::new();
            if let Some((row, fields)) = self.store.record(&record.id)? {
                answers(&record.id, &row)?;
                for f in &fields {
                    stored.push(resource(record, purpose, f)?);
                }
            }
            for ev in self.finished_evidence(&record.id)? {
                stored.push(evidence_resource(record, purpose, &ev)?);
            }
            Ok(!stored.is_empty()
                && self
                    .decide(principal, Action::List, ctx, &stored)?
                    .iter()
                    .any(Decision::is_allow))
        };
        match known() {
            Ok(true) => e,
            // Only the fields the caller named itself are named back.
            Ok(false) => VaultError::Denied(format!(
                "{}: you may not write {} on this record (the reasons are on the audit trail)",
                named
                    .iter()
                    .map(|r| format!("field `{}`", r.name))
                    .collect::<Vec<_>>()
                    .join(", "),
                if named.len() == 1 { "it" } else { "them" }
            )),
            Err(other) => other,
        }
    }

    /// A write that failed after it was allowed, before its entry went on the trail or after
    /// the store refused it in the entry's own transaction: the entry goes on now, as `deny`
    /// with `not carried out` and why (as `not_carried_out` records one the store refused), so
    /// that the request is on the trail all the same and no allowed entry stands alone for a
    /// change that was not made. The failure, or the trail's when the entry cannot be written.
    fn not_written(&self, entry: Option<AuditEvent>, e: VaultError) -> VaultError {
        let Some(event) = entry else { return e };
        match self.audit.append(&not_carried_out_entry(event, &e)) {
            Ok(_) => e,
            Err(trail) => trail.into(),
        }
    }

    /// Records that a change the trail shows as allowed was not carried out after all (the
    /// store refused it in its own transaction, e.g. a hold placed in between).
    fn not_carried_out(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        action: &str,
        subject: &SubjectId,
        record_id: &RecordId,
        why: &str,
    ) -> Result<(), VaultError> {
        let mut event = self.event(principal, ctx, action, Some(subject), Some(record_id));
        event.decision = "deny".into();
        event.reason = Some(format!("not carried out: {why}"));
        self.audit.append(&event)?;
        Ok(())
    }

    /// The lock of `record_id`'s stripe of `record_locks`.
    fn record_lock(&self, record_id: &RecordId) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let stripe = BuildHasherDefault::<DefaultHasher>::default().hash_one(record_id.as_str());
        let stripe = usize::try_from(stripe % RECORD_LOCK_STRIPES as u64).unwrap_or(0);
        let lock = self
            .record_locks
            .get(stripe)
            .unwrap_or(&self.record_locks[0]);
        lock.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The active hold covering `record`, on authentic hold rows only, all counted by the
    /// subject's anchor.
    fn hold_on(&self, record: &RecordRow) -> Result<Option<String>, VaultError> {
        // One read: the rows checked (each MAC, and the anchor over them) are the rows used.
        Ok(self
            .subject_facts(&record.subject)?
            .holds
            .into_iter()
            .filter(|h| h.released_at.is_none())
            .find(|h| h.record_id.as_ref().is_none_or(|r| r == &record.id))
            .map(|h| h.id))
    }

    /// Seals `fields` of a record under the current subject key of (subject, purpose), with the
    /// algorithm of the purpose's active key version.
    fn seal_fields(
        &self,
        subject: &SubjectId,
        record_id: &RecordId,
        purpose: Purpose,
        fields: &[NewField],
    ) -> Result<Vec<FieldRow>, VaultError> {
        let active = self.keyring.subject_key_or_create(subject, purpose)?;
        self.seal_fields_under(&active, subject, record_id, purpose, fields)
    }

    /// Seals `fields` of a record under the subject key `active`.
    fn seal_fields_under(
        &self,
        active: &crate::keys::ActiveSubjectKey,
        subject: &SubjectId,
        record_id: &RecordId,
        purpose: Purpose,
        fields: &[NewField],
    ) -> Result<Vec<FieldRow>, VaultError> {
        fields
            .iter()
            .map(|f| {
                let kind = f.value.kind();
                // Each write is a new version of the value, bound into its associated data.
                let version = hex::encode(rand::random::<[u8; 16]>());
                let aad = field_aad(
                    subject.as_str(),
                    record_id.as_str(),
                    f.name.as_str(),
                    f.category,
                    purpose,
                    kind,
                    &version,
                );
                let sealed = crypto::seal(
                    &active.key.fields(),
                    active.algorithm,
                    active.generation,
                    &aad,
                    f.value.bytes(),
                )
                .map_err(|e| VaultError::Key(KeyError::Crypto(e)))?;
                Ok(self.rows.seal_field(
                    record_id.as_str(),
                    FieldRow {
                        name: f.name.as_str().into(),
                        category: f.category,
                        kind,
                        key_gen: active.generation,
                        sealed,
                        version,
                        mac: Vec::new(),
                        tags: self.tags_for(purpose, f.name.as_str(), &f.value)?,
                    },
                ))
            })
            .collect()
    }

    fn event(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        action: &str,
        subject: Option<&SubjectId>,
        record: Option<&RecordId>,
    ) -> AuditEvent {
        AuditEvent {
            time: now_unix(),
            principal: principal.id.as_str().into(),
            roles: principal
                .roles
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            token_id: principal.token_id.clone(),
            action: action.into(),
            purpose: Some(ctx.purpose.as_str().into()),
            case_ref: (!ctx.case_ref.is_empty()).then(|| ctx.case_ref.clone()),
            justification: (!ctx.justification.is_empty()).then(|| ctx.justification.clone()),
            channel: Some(ctx.channel.clone()),
            break_glass: ctx.break_glass,
            subject: subject.map(|s| s.as_str().to_owned()),
            record: record.map(|r| r.as_str().to_owned()),
            ..caller_event(principal)
        }
    }

    /// A record with its fields; a record row that fails its MAC is not obeyed.
    fn load(&self, record_id: &RecordId) -> Result<(RecordRow, Vec<FieldRow>), VaultError> {
        let (record, fields) = self
            .store
            .record(record_id.as_str())?
            .ok_or_else(|| VaultError::NotFound(format!("record `{record_id}`")))?;
        answers(record_id.as_str(), &record)?;
        self.rows.check(&record)?;
        self.rows.check_fields(&record, &fields)?;
        Ok((record, fields))
    }

    /// A record with its fields and the facts of its subject, read together; the record and
    /// its fields checked as `load` checks them, the facts as `subject_facts` checks them.
    fn load_with_facts(&self, record_id: &RecordId) -> Result<Arc<RecordRead>, VaultError> {
        let read = self
            .store
            .record_with_facts(record_id.as_str())?
            .ok_or_else(|| VaultError::NotFound(format!("record `{record_id}`")))?;
        answers(record_id.as_str(), &read.record)?;
        // The same rows handed out again (a store keeps what it read while its file holds
        // it) were found authentic by this vault's checker when first read: they cannot have
        // changed since.
        if !read.checked_by(self.rows.checker()) {
            self.rows.check(&read.record)?;
            self.rows.check_fields(&read.record, &read.fields)?;
            self.check_facts(&read.record.subject, &read.facts)?;
            read.mark_checked(self.rows.checker());
        }
        Ok(read)
    }

    /// A record with the row of its field `name` alone, when it holds one, checked as `load`
    /// checks all of them (the row, and the set of the record's fields from their metadata):
    /// a read that names one field of a large record does not read the other values.
    fn load_one(
        &self,
        record_id: &RecordId,
        name: &FieldName,
    ) -> Result<(RecordRow, Vec<FieldRow>), VaultError> {
        let (record, metas, value) = self
            .store
            .records_with_field(&[record_id.as_str()], name.as_str())?
            .into_iter()
            .next()
            .ok_or_else(|| VaultError::NotFound(format!("record `{record_id}`")))?;
        answers(record_id.as_str(), &record)?;
        self.rows.check(&record)?;
        self.rows.check_field_metas(&record, &metas)?;
        let rows: Vec<FieldRow> = value.into_iter().collect();
        for row in &rows {
            self.rows.check(&rows::FieldPlace::of(&record.id, row))?;
            // The row is the one whose metadata the set was checked with (not an older row of
            // the field, authentic in itself, that a store answered in its place).
            let listed = metas.iter().any(|m| {
                m.evidence.is_none()
                    && m.name == row.name
                    && m.version == row.version
                    && m.mac == row.mac
            });
            if !listed {
                return Err(StoreError::Corrupt(format!(
                    "field `{}` of `{}` is not the row its record lists",
                    row.name, record.id
                ))
                .into());
            }
        }
        Ok((record, rows))
    }

    /// A record with the metadata of its fields, checked, without their values: what a call
    /// that decides on, lists or rewrites fields needs, at a cost that does not grow with the
    /// values (a record of 8 MiB is not read to register a disclosure of it).
    pub(crate) fn load_metas(
        &self,
        record_id: &RecordId,
    ) -> Result<(RecordRow, Vec<FieldMeta>), VaultError> {
        // No field is named "" (`FieldName` refuses it): the metadata alone.
        let (record, metas, _) = self
            .store
            .records_with_field(&[record_id.as_str()], "")?
            .into_iter()
            .next()
            .ok_or_else(|| VaultError::NotFound(format!("record `{record_id}`")))?;
        answers(record_id.as_str(), &record)?;
        self.rows.check(&record)?;
        self.rows.check_field_metas(&record, &metas)?;
        Ok((record, metas))
    }
}

/// Decrypts one field. Needs the grant for exactly this record and field.
fn open_field(
    grant: &Grant,
    key: &crate::crypto::SubjectKey,
    record: &RecordRow,
    purpose: Purpose,
    category: Category,
    row: &FieldRow,
) -> Result<OpenField, VaultError> {
    if grant.record() != record.id || grant.field() != row.name {
        return Err(VaultError::Denied(format!(
            "no grant for field `{}` of record `{}`",
            row.name, record.id
        )));
    }
    Ok(OpenField {
        name: row.name.clone(),
        category,
        value: open_value(key, record, purpose, category, row)?,
        masked: false,
    })
}

/// Decrypts one text field only to mask it: the value is wiped once its masked form is made,
/// and only that form is returned. Needs the masked grant for exactly this record and field; a
/// binary value is never opened and reads `****`.
fn open_masked(
    grant: &MaskedGrant,
    mask: mask::Mask,
    key: &crate::crypto::SubjectKey,
    record: &RecordRow,
    purpose: Purpose,
    category: Category,
    row: &FieldRow,
) -> Result<OpenField, VaultError> {
    if grant.record() != record.id || grant.field() != row.name {
        return Err(VaultError::Denied(format!(
            "no grant for field `{}` of record `{}`",
            row.name, record.id
        )));
    }
    let shown = match row.kind {
        FieldKind::Text => match open_value(key, record, purpose, category, row)? {
            Value::Text(text) => mask.apply(&text),
            Value::Binary(_) => mask::FULL.to_owned(),
        },
        FieldKind::Binary => mask::FULL.to_owned(),
    };
    Ok(OpenField {
        name: row.name.clone(),
        category,
        value: Value::Text(Zeroizing::new(shown)),
        masked: true,
    })
}

/// The AEAD open of one stored field; callers hold its grant.
fn open_value(
    key: &crate::crypto::SubjectKey,
    record: &RecordRow,
    purpose: Purpose,
    category: Category,
    row: &FieldRow,
) -> Result<Value, VaultError> {
    let place = || format!("field `{}` of record `{}`", row.name, record.id);
    let aad = field_aad(
        &record.subject,
        &record.id,
        &row.name,
        category,
        purpose,
        row.kind,
        &row.version,
    );
    let bytes = crypto::open(&key.fields(), &aad, &row.sealed)
        .map_err(|_| VaultError::DataLoss(place()))?;
    Ok(match row.kind {
        FieldKind::Text => {
            Value::Text(into_text(bytes).ok_or_else(|| VaultError::DataLoss(place()))?)
        }
        FieldKind::Binary => Value::Binary(bytes),
    })
}

/// Turns opened bytes into text without a copy: the buffer moves into the string, or is wiped
/// when it is not UTF-8 (`String::from_utf8`'s error would otherwise drop it unwiped).
pub(crate) fn into_text(mut bytes: Zeroizing<Vec<u8>>) -> Option<Zeroizing<String>> {
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Some(Zeroizing::new(text)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            None
        }
    }
}

fn field_aad(
    subject: &str,
    record: &str,
    field: &str,
    category: Category,
    purpose: Purpose,
    kind: FieldKind,
    version: &str,
) -> Vec<u8> {
    crypto::aad(&AadContext::Field {
        subject,
        record,
        field,
        category: category.as_str(),
        purpose: purpose.as_str(),
        kind: kind.as_str(),
        version,
    })
}

fn check_fields(fields: &[NewField], limits: &Limits) -> Result<(), InputError> {
    let total: usize = fields.iter().map(|f| f.value.len()).sum();
    if total > limits.max_record_bytes {
        return Err(InputError::new(
            "fields",
            format!(
                "{total} bytes of values; a record holds at most {} bytes",
                limits.max_record_bytes
            ),
        ));
    }
    if fields.is_empty() {
        return Err(InputError::new("fields", "at least one field is required"));
    }
    if fields.len() > limits.max_fields {
        return Err(InputError::new(
            "fields",
            format!("at most {} fields per request", limits.max_fields),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, f) in fields.iter().enumerate() {
        if !names.insert(f.name.as_str()) {
            return Err(InputError::new(
                format!("fields[{i}].name"),
                format!("field `{}` appears twice", f.name),
            ));
        }
    }
    Ok(())
}

fn resource(
    record: &RecordRow,
    purpose: Purpose,
    row: &FieldRow,
) -> Result<FieldResource, VaultError> {
    Ok(FieldResource {
        record: record.id.clone(),
        name: row.name.clone(),
        category: row.category,
        purpose,
        subject: record.subject.clone(),
        flags: FieldFlags {
            record_closed: record.closed_at.is_some(),
            ..FieldFlags::default()
        },
    })
}

/// The bytes `metas`' values take as stored.
fn stored_bytes<'a>(metas: impl Iterator<Item = &'a FieldMeta>) -> usize {
    metas.fold(0, |n, m| {
        n.saturating_add(usize::try_from(m.size).unwrap_or(usize::MAX))
    })
}

/// The policy resource of field `meta` of `record`, read without its value.
fn meta_resource(record: &RecordRow, purpose: Purpose, meta: &FieldMeta) -> FieldResource {
    FieldResource {
        record: record.id.clone(),
        name: meta.name.clone(),
        category: meta.category,
        purpose,
        subject: record.subject.clone(),
        flags: FieldFlags {
            record_closed: record.closed_at.is_some(),
            ..FieldFlags::default()
        },
    }
}

/// The policy resource of an evidence file of `record`.
fn evidence_resource(
    record: &RecordRow,
    purpose: Purpose,
    ev: &crate::store::EvidenceRow,
) -> Result<FieldResource, VaultError> {
    Ok(FieldResource {
        record: record.id.clone(),
        name: ev.name.clone(),
        category: ev.category,
        purpose,
        subject: record.subject.clone(),
        flags: FieldFlags {
            record_closed: record.closed_at.is_some(),
            ..FieldFlags::default()
        },
    })
}

/// The refusal of a destructive change under a legal hold, naming the hold.
fn held(record_id: &RecordId, hold: &str) -> VaultError {
    VaultError::FailedPrecondition(format!(
        "record `{record_id}` is under legal hold `{hold}`: its values are neither replaced nor \
         deleted until the hold is released (`kluis admin hold release {hold}`)"
    ))
}

fn record_meta(rec: &RecordRow) -> Result<RecordMeta, VaultError> {
    Ok(RecordMeta {
        id: rec.id.clone(),
        subject: rec.subject.clone(),
        purpose: rec.purpose,
        labels: rec.labels.clone(),
        created_at: rec.created_at,
        updated_at: rec.updated_at,
        expires_at: rec.expires_at,
    })
}

fn audit_fields(resources: &[FieldResource], decisions: &[Decision]) -> Vec<AuditField> {
    resources
        .iter()
        .zip(decisions)
        .map(|(r, d)| AuditField {
            name: r.name.clone(),
            category: r.category.as_str().into(),
            decision: if d.is_allow() { "allow" } else { "deny" }.into(),
            policies: d.policies.clone(),
        })
        .collect()
}

fn distinct_reasons(decisions: &[Decision]) -> String {
    let mut reasons: Vec<&str> = decisions.iter().map(|d| d.reason.as_str()).collect();
    reasons.sort_unstable();
    reasons.dedup();
    if reasons.is_empty() {
        "no fields".into()
    } else {
        reasons.join("; ")
    }
}

fn deny_summary(resources: &[FieldResource], decisions: &[Decision]) -> String {
    let denied: Vec<String> = resources
        .iter()
        .zip(decisions)
        .filter(|(_, d)| !d.is_allow())
        .map(|(r, d)| format!("field `{}`: {}", r.name, d.reason))
        .collect();
    if denied.is_empty() {
        "no fields".into()
    } else {
        denied.join("; ")
    }
}

/// Fails unless `record` is the record `asked` for: a store that answered one read with the row
/// of another (authentic in itself, so its MAC holds) is not obeyed.
pub(crate) fn answers(asked: &str, record: &RecordRow) -> Result<(), VaultError> {
    if record.id == asked {
        return Ok(());
    }
    tracing::error!(asked, answered = %record.id, "the store answered a read with another record; run `kluis admin store verify`");
    Err(StoreError::Corrupt(format!(
        "the store answered the read of record `{asked}` with another record"
    ))
    .into())
}

/// An audit event that names who called: the service and the employee it acts for, as
/// `Principal` carries them. Every entry about a caller starts from it.
pub(crate) fn caller_event(principal: &Principal) -> AuditEvent {
    AuditEvent {
        service: principal.service.as_ref().map(|s| s.as_str().to_owned()),
        issuer: principal.employee.as_ref().map(|e| e.issuer.clone()),
        sub: principal.employee.as_ref().map(|e| e.sub.clone()),
        display_name: principal.employee.as_ref().and_then(|e| e.display.clone()),
        ..AuditEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opened_bytes_become_text_only_when_they_are_utf8() {
        let text = into_text(Zeroizing::new(b"Kastanjelaan 12".to_vec())).unwrap();
        assert_eq!(text.as_str(), "Kastanjelaan 12");
        assert!(into_text(Zeroizing::new(vec![0x4b, 0xff, 0x31])).is_none());
    }

    #[test]
    fn a_record_answered_for_another_read_is_not_obeyed() {
        let row = RecordRow {
            id: "rec_b".into(),
            subject: "REL-1".into(),
            purpose: Purpose::Nuisance,
            labels: BTreeMap::new(),
            created_at: 1,
            updated_at: 1,
            closed_at: None,
            expires_at: None,
            mac: vec![1; 32],
            fields_mac: vec![2; 32],
        };
        answers("rec_b", &row).unwrap();
        let err = answers("rec_a", &row).unwrap_err();
        assert!(
            matches!(&err, VaultError::Store(StoreError::Corrupt(why)) if why.contains("`rec_a`")),
            "{err:?}"
        );
        // Neither the id answered nor anything of its row is named to the caller.
        assert!(!err.to_string().contains("rec_b"), "{err}");
    }
}
