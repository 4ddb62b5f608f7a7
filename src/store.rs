//! The storage trait: a narrow interface of rows and transactions that the core uses, with the
//! SQL dialect kept inside each implementation. It is made of one small trait per aggregate
//! (metadata, keys, records and fields, evidence, lifecycle, tokens and rights, audit); `Store`
//! is all of them, and `prelude` brings them into scope for callers of a concrete store.
//!
//! Invariant: every multi-row change (a record with its fields, an initialisation) is one
//! transaction in the implementation: it happens whole or not at all.
//! Invariant: the store only ever sees ciphertext, wrapped keys, token hashes and audit entries
//! (which hold no values). It never sees plaintext or unwrapped keys.
//!
//! The trait is synchronous: the core runs on a call thread per request (`vault::places`; a
//! call alone on a SQLite node on the runtime's thread that took it), which suits SQLite and a
//! synchronous PostgreSQL client alike.

pub mod conformance;
pub mod postgres;
pub mod sqlite;

use std::{collections::BTreeMap, sync::Arc};

use crate::domain::{Category, ConsentState, FieldKind, Purpose, RequestKind};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Errors of the storage layer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is already initialised (`kluis init` ran before).
    #[error("the store is already initialised")]
    AlreadyInitialized,
    /// The store has not been initialised.
    #[error("the store is not initialised; run `kluis init` first")]
    NotInitialized,
    /// A row that must be unique exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// A row the change needs does not exist (any more): the record of an upload, an unfinished
    /// upload that was discarded.
    #[error("{0} does not exist")]
    Missing(String),
    /// The subject key generation a value was sealed under is gone: a rekey replaced it
    /// meanwhile. Seal again under the current one.
    #[error("subject key generation {generation} of `{subject}` was replaced")]
    StaleGeneration {
        /// The subject.
        subject: String,
        /// The generation the value was sealed under.
        generation: u32,
    },
    /// The purpose key version a key was wrapped under cannot wrap any more (rotated or
    /// destroyed meanwhile). Wrap again under the active one.
    #[error("purpose key `{purpose}` v{version} is not live")]
    NotLive {
        /// The purpose.
        purpose: String,
        /// The version.
        version: u32,
    },
    /// A row changed between the core reading it and writing what follows from it: read again.
    #[error("{0} changed meanwhile")]
    Stale(String),
    /// A key is still in use: the count of what it protects.
    #[error("still in use by {0}")]
    InUse(u64),
    /// An active legal hold covers what was to be destroyed or replaced: its id.
    #[error("under legal hold `{0}`")]
    Held(String),
    /// The store's schema is newer than this kluis understands.
    #[error("the store's schema version {found} is newer than this kluis supports ({supported})")]
    SchemaTooNew {
        /// Version found in the store.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// A stored value could not be decoded.
    #[error("corrupt stored value in {0}")]
    Corrupt(String),
    /// The database failed (I/O, locking, constraint).
    #[error("database error: {0}")]
    Database(String),
    /// The database answered a write as done but did not keep it as written (a trigger or rule
    /// someone added that drops or changes rows, a row kluis needs deleted): what was not kept.
    /// The change is refused; one found only after its commit (a metadata row read back) may
    /// have left what the database made of it.
    #[error("the database did not keep {0}")]
    NotKept(String),
    /// The database cannot be reached (down, restarting, the network): the call may succeed
    /// later, and kluis reconnects by itself.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The store's settings cannot work (a connection string, TLS settings).
    #[error("{0}")]
    Config(String),
    /// The store's file is older than its audit trail says it was written (an older copy put
    /// back beside the trail's file): refused at start, before anything is served from it.
    #[error("{0}")]
    RolledBack(String),
    /// The store's files are not as kluis keeps them: the trail's file missing, empty or
    /// holding another trail than the store's file, a file that is not a regular file (a
    /// directory, a device, a link where SQLite keeps its log), two names for one file. Refused
    /// at start, before anything is served from them; what to do is in the message.
    #[error("{0}")]
    Refused(String),
    /// What the core asked is not something this kind of store does (e.g. a snapshot of a
    /// PostgreSQL store, which its own tools take).
    #[error("{0}")]
    Unsupported(String),
    /// A transaction lost a conflict with another writer; the store runs it again itself and
    /// answers `Stale` only when it keeps losing.
    #[error("a transaction conflicted with another writer")]
    Retry,
}

impl StoreError {
    /// A subject's first key of `purpose` offered with a record while the subject has one
    /// already (`RecordStore::insert_record_with_key`).
    pub(crate) fn first_key_taken(purpose: Purpose) -> Self {
        StoreError::Exists(format!("the subject key of purpose `{purpose}`"))
    }
}

/// The state of a purpose key version.
#[derive(Clone, Copy, Debug, Eq, PartialEq, Hash)]
pub enum KeyState {
    /// Wraps new subject keys (one version per purpose).
    Active,
    /// Replaced by a newer version; still unwraps the subject keys it wraps.
    DecryptOnly,
    /// Due for destruction at `destroy_after`.
    Scheduled,
    /// Its material is erased.
    Destroyed,
}

impl KeyState {
    /// The name kept in the store and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt-only",
            KeyState::Scheduled => "scheduled",
            KeyState::Destroyed => "destroyed",
        }
    }

    /// The state named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [
            KeyState::Active,
            KeyState::DecryptOnly,
            KeyState::Scheduled,
            KeyState::Destroyed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One version of a purpose key, wrapped under the root key.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct PurposeKeyRow {
    /// The purpose.
    pub purpose: Purpose,
    /// Version, from 1.
    pub version: u32,
    /// Its state.
    pub state: KeyState,
    /// The AEAD this version seals with.
    pub algorithm: crate::crypto::Algorithm,
    /// The purpose key sealed under the root key; empty once destroyed.
    pub wrapped: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
    /// When a newer version replaced it (unix seconds).
    pub retired_at: Option<i64>,
    /// When a scheduled destruction is due (unix seconds).
    pub destroy_after: Option<i64>,
    /// When its material was erased (unix seconds).
    pub destroyed_at: Option<i64>,
    /// Below the purpose's minimum decryption version: never used to unwrap again.
    pub barred: bool,
    /// The row's MAC, computed by the core (see `vault::rows`); `wrapped` is not covered (it is
    /// sealed under the root key with the purpose and version as associated data).
    pub mac: Vec<u8>,
}

/// A change of one purpose key version's row, written only over the row it was made from: two
/// changes of one version at the same moment (a sweep on one node, a cancellation on another)
/// cannot both land, and none lands over a row that changed since it was read.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct KeyRowChange {
    /// The row as it is to be, with its new MAC.
    pub row: PurposeKeyRow,
    /// The MAC of the row it replaces, as read.
    pub prev_mac: Vec<u8>,
}

/// A subject data key, wrapped under a purpose key version.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct SubjectKeyRow {
    /// The data subject.
    pub subject: String,
    /// The purpose.
    pub purpose: Purpose,
    /// Generation of this subject key, from 1.
    pub generation: u32,
    /// The purpose key version that wraps it.
    pub purpose_version: u32,
    /// The subject key sealed under that purpose key version.
    pub wrapped: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A record's metadata.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RecordRow {
    /// `rec_…`.
    pub id: String,
    /// The data subject.
    pub subject: String,
    /// The purpose.
    pub purpose: Purpose,
    /// Labels in clear, for the case app's bookkeeping.
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Unix seconds; `None` while the record is open.
    pub closed_at: Option<i64>,
    /// Unix seconds; `None` while retention counts from a closing date not yet reached.
    pub expires_at: Option<i64>,
    /// The row's MAC, computed by the core (see `vault::rows`); `updated_at` is not covered.
    pub mac: Vec<u8>,
    /// A MAC over the record id and the names and versions of its fields (`vault::rows`): a
    /// field row deleted, or an older one put back, no longer matches it.
    pub fields_mac: Vec<u8>,
}

/// A record as `RecordStore::records_with_field` reads it: the record, the metadata of its
/// field rows, the whole row of the one field asked for.
pub type RecordWithField = (RecordRow, Vec<FieldMeta>, Option<FieldRow>);

/// One encrypted field of a record.
#[derive(Clone, Eq, PartialEq)]
pub struct FieldRow {
    /// Field name.
    pub name: String,
    /// Category.
    pub category: Category,
    /// Text or bytes.
    pub kind: FieldKind,
    /// The generation of the subject key that sealed it.
    pub key_gen: u32,
    /// The value sealed under the subject key (see `crypto::envelope`).
    pub sealed: Vec<u8>,
    /// The value's version: random per write, bound into its associated data.
    pub version: String,
    /// The MAC of the field's place (record, name, category, kind, version), computed by the core.
    pub mac: Vec<u8>,
    /// The blind-index tags of the value, written with it (replacing the field's tags); empty
    /// for a field that is not searchable, and when read back.
    pub tags: Vec<TagRow>,
}

/// A blind-index tag of a field value (`keys::IndexKeys::tags`): the index key version it was
/// made under, its width in bits, and its value (the first `bits` bits of an HMAC-SHA-256).
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct TagRow {
    /// The index key version.
    pub version: u32,
    /// The width in bits.
    pub bits: u8,
    /// The tag.
    pub tag: i64,
}

impl std::fmt::Debug for FieldRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldRow")
            .field("name", &self.name)
            .field("category", &self.category)
            .field("kind", &self.kind)
            .field("key_gen", &self.key_gen)
            .field("sealed_len", &self.sealed.len())
            .finish()
    }
}

/// A field's metadata without its ciphertext.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct FieldMeta {
    /// Field name.
    pub name: String,
    /// Category.
    pub category: Category,
    /// Size of the ciphertext in bytes (of an evidence file: its plaintext size).
    pub size: u64,
    /// Set when the field is an evidence file.
    pub evidence: Option<EvidenceMeta>,
    /// Text or bytes (`None` for an evidence file).
    pub kind: Option<FieldKind>,
    /// The value's version (empty for an evidence file).
    pub version: String,
    /// The field row's MAC (empty for an evidence file).
    pub mac: Vec<u8>,
}

impl FieldMeta {
    /// An evidence file as a field of its record's listing. The stores list a record's files
    /// finished or not; a listing shows them from their rows as checked (`finished_evidence`).
    pub fn of_evidence(e: EvidenceRow) -> Self {
        Self {
            name: e.name,
            category: e.category,
            size: e.size,
            evidence: Some(EvidenceMeta {
                id: e.id,
                media_type: e.media_type,
                sha256: e.sha256,
            }),
            kind: None,
            version: String::new(),
            mac: Vec::new(),
        }
    }
}

/// What is known of an evidence file without decrypting it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct EvidenceMeta {
    /// `ev_…`.
    pub id: String,
    /// The declared media type, e.g. `video/mp4`.
    pub media_type: String,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
}

/// An evidence file: a field of a record whose value is stored as segments (see
/// `crypto::stream`).
#[derive(Clone, Eq, PartialEq)]
pub struct EvidenceRow {
    /// `ev_…`.
    pub id: String,
    /// The record it belongs to.
    pub record_id: String,
    /// Field name within the record.
    pub name: String,
    /// Category.
    pub category: Category,
    /// The declared media type.
    pub media_type: String,
    /// The file name, sealed under the subject key (it may name people).
    pub file_name: Vec<u8>,
    /// Plaintext size in bytes (0 while uploading).
    pub size: u64,
    /// SHA-256 of the plaintext, hex (empty while uploading).
    pub sha256: String,
    /// The per-file salt of the file key.
    pub salt: Vec<u8>,
    /// False while the upload runs: then nothing of it is readable.
    pub complete: bool,
    /// True when the upload created the record, which goes with it when the upload fails.
    pub owns_record: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// The row's MAC, computed by the core (not covering the sealed file name, which is
    /// authenticated by its own AEAD, nor the salt, which the file key is derived from).
    pub mac: Vec<u8>,
}

impl std::fmt::Debug for EvidenceRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvidenceRow")
            .field("id", &self.id)
            .field("record_id", &self.record_id)
            .field("name", &self.name)
            .field("category", &self.category)
            .field("media_type", &self.media_type)
            .field("size", &self.size)
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

/// One sealed segment of an evidence file.
#[derive(Clone, Eq, PartialEq)]
pub struct SegmentRow {
    /// Position in the file, from 0.
    pub index: u32,
    /// The subject key generation its file key derives from.
    pub key_gen: u32,
    /// The sealed segment (see `crypto::stream`).
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SegmentRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentRow")
            .field("index", &self.index)
            .field("key_gen", &self.key_gen)
            .field("sealed_len", &self.sealed.len())
            .finish()
    }
}

/// The field-set MAC of a record before and after a change to its fields.
#[derive(Clone, Copy, Debug)]
pub struct FieldsMac<'a> {
    /// As read before the change: the store refuses (`Stale`) when it is no longer stored.
    pub prev: &'a [u8],
    /// As it is after the change.
    pub next: &'a [u8],
}

/// A subject's anchor: how many legal holds were ever placed on the subject and for how many
/// purposes it has a consent state, under a MAC. Hold and consent rows are never deleted, so the
/// counts only grow; a hold or consent row deleted by hand leaves the anchor counting more rows
/// than are stored. Every subject with a subject key, a record, a hold or a consent state has one,
/// and it is never deleted.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AnchorRow {
    /// The subject.
    pub subject: String,
    /// Legal holds ever placed on the subject (released ones included).
    pub holds: u32,
    /// Purposes the subject has a consent state for.
    pub consents: u32,
    /// A digest of the MACs of the subject's hold, consent and mandate rows, computed by the
    /// core: an older copy of one of them put back (a revocation or a withdrawal undone) no
    /// longer matches.
    pub digest: Vec<u8>,
    /// The row's MAC, computed by the core.
    pub mac: Vec<u8>,
}

/// A change of a subject's anchor, written in the transaction of the change it counts: the
/// anchor as the core read it (`None`: none stored) and the one after.
#[derive(Clone, Copy, Debug)]
pub struct AnchorChange<'a> {
    /// As read; the store refuses (`Stale`) when it is no longer stored.
    pub prev: Option<&'a AnchorRow>,
    /// As it is after the change.
    pub next: &'a AnchorRow,
}

/// A record with all its fields and the facts of its subject, read from one snapshot
/// (`RecordStore::record_with_facts`). Shared and never changed once read: a store may keep one
/// between reads and hand the same one out again while its file holds what it read.
#[derive(Debug)]
pub struct RecordRead {
    /// The record.
    pub record: RecordRow,
    /// All its fields.
    pub fields: Vec<FieldRow>,
    /// The facts of its subject.
    pub facts: SubjectFacts,
    /// The checker (`vault::rows`, by its number) that found these rows authentic; 0 until
    /// one did. Set by the core alone, once it has checked them: a store hands out a new
    /// `RecordRead` for what it reads from its file.
    checked_by: std::sync::atomic::AtomicU64,
}

impl RecordRead {
    /// What was read, checked by nobody yet.
    pub fn new(record: RecordRow, fields: Vec<FieldRow>, facts: SubjectFacts) -> Self {
        Self {
            record,
            fields,
            facts,
            checked_by: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether checker `checker` (never 0) found these rows authentic.
    pub fn checked_by(&self, checker: u64) -> bool {
        checker != 0 && self.checked_by.load(std::sync::atomic::Ordering::Acquire) == checker
    }

    /// Notes that checker `checker` found these rows authentic (the core's alone to say: a
    /// store outside this crate cannot).
    pub(crate) fn mark_checked(&self, checker: u64) {
        self.checked_by
            .store(checker, std::sync::atomic::Ordering::Release);
    }
}

impl PartialEq for RecordRead {
    /// The rows read; who checked them is not part of what was read.
    fn eq(&self, other: &Self) -> bool {
        self.record == other.record && self.fields == other.fields && self.facts == other.facts
    }
}

impl Eq for RecordRead {}

/// What the core checks a subject's restrictions against, read together.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct SubjectFacts {
    /// The subject's anchor, if stored.
    pub anchor: Option<AnchorRow>,
    /// The subject's consent states, by purpose.
    pub consents: Vec<ConsentRow>,
    /// The subject's holds (released ones included).
    pub holds: Vec<HoldRow>,
    /// The mandates the subject gave (revoked and expired ones included).
    pub mandates: Vec<MandateRow>,
    /// Restrictions of processing placed on the subject (lifted ones included).
    pub restrictions: Vec<RestrictionRow>,
    /// The ids of the subject's records that were destroyed (deleted, swept or erased), in id
    /// order: never stored again, and never obeyed when their rows are put back by hand.
    pub destroyed: Vec<String>,
    /// Whether the subject has a subject key or a record. Only asked of a subject without an
    /// anchor (which then should have neither): with an anchor, a store may answer `true`
    /// without looking.
    pub keyed: bool,
}

/// A legal hold: suspends destruction of a subject's data (or one record) until released.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct HoldRow {
    /// `hold_…`.
    pub id: String,
    /// The subject held.
    pub subject: String,
    /// One record only; all of the subject's records when `None`.
    pub record_id: Option<String>,
    /// Why (e.g. a pending claim).
    pub reason: String,
    /// The case the hold belongs to.
    pub case_ref: String,
    /// Who placed it.
    pub placed_by: String,
    /// Unix seconds.
    pub placed_at: i64,
    /// Unix seconds, once released.
    pub released_at: Option<i64>,
    /// Who released it.
    pub released_by: Option<String>,
    /// The row's MAC, computed by the core.
    pub mac: Vec<u8>,
}

/// A mandate ("volmacht"): a representative may act for a subject within a scope, for a time.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct MandateRow {
    /// `mdt_…`.
    pub id: String,
    /// The subject who gave it.
    pub subject: String,
    /// The representative's principal id.
    pub representative: String,
    /// Purposes it covers.
    pub purposes: Vec<String>,
    /// Categories it covers.
    pub categories: Vec<String>,
    /// Valid from (unix seconds).
    pub valid_from: i64,
    /// Valid until (unix seconds).
    pub valid_until: i64,
    /// Who recorded it.
    pub granted_by: String,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// The row's MAC, computed by the core.
    pub mac: Vec<u8>,
}

/// A restriction of processing (GDPR art. 18): while it is not lifted, the subject's data is
/// stored but read only for legal claims and by the privacy officer. Never deleted: a lifted
/// one stays, with who lifted it and when.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RestrictionRow {
    /// `rst_…`.
    pub id: String,
    /// The subject restricted.
    pub subject: String,
    /// Why (e.g. the accuracy is contested; no personal data).
    pub reason: String,
    /// Who placed it.
    pub placed_by: String,
    /// Unix seconds.
    pub placed_at: i64,
    /// Unix seconds, once lifted.
    pub lifted_at: Option<i64>,
    /// Who lifted it.
    pub lifted_by: Option<String>,
    /// The row's MAC, computed by the core.
    pub mac: Vec<u8>,
}

/// A disclosure of a subject's data to another party (DOMAIN.md, rule 11): who disclosed what
/// to whom, on which legal basis, when. Recorded by a caller (`Vault/RecordDisclosure`) or by
/// the vault for every read by an external role. Destroyed with the subject's last record.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct DisclosureRow {
    /// `dsc_…`.
    pub id: String,
    /// The subject the data is about.
    pub subject: String,
    /// The record the fields were taken from.
    pub record_id: String,
    /// That record's purpose.
    pub purpose: Purpose,
    /// The names of the fields disclosed.
    pub fields: Vec<String>,
    /// Their categories, in the order of `fields`.
    pub categories: Vec<String>,
    /// Who received them.
    pub recipient: String,
    /// What kind of party that is.
    pub recipient_kind: crate::domain::RecipientKind,
    /// The legal basis of the disclosure.
    pub legal_basis: String,
    /// The case reference; empty when none.
    pub case_ref: String,
    /// When (unix seconds).
    pub disclosed_at: i64,
    /// The principal who recorded it (for a read by an external role: that reader).
    pub recorded_by: String,
    /// Recorded by the vault itself for a read by an external role.
    pub automatic: bool,
    /// The row's MAC, computed by the core.
    pub mac: Vec<u8>,
}

/// A subject's consent state for one purpose.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ConsentRow {
    /// The subject.
    pub subject: String,
    /// The purpose.
    pub purpose: Purpose,
    /// Given, withdrawn or objected.
    pub state: ConsentState,
    /// Unix seconds.
    pub at: i64,
    /// Who recorded it.
    pub recorded_by: String,
    /// The row's MAC, computed by the core.
    pub mac: Vec<u8>,
}

/// A subject request and its deadline.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RequestRow {
    /// `req_…`.
    pub id: String,
    /// The subject.
    pub subject: String,
    /// Access, rectification, erasure or objection.
    pub kind: RequestKind,
    /// When the request was received (unix seconds).
    pub received_at: i64,
    /// When it must be answered (unix seconds), as first set: four weeks after receipt.
    pub due_at: i64,
    /// The deadline as extended (GDPR art. 12(3)), at most two months beyond `due_at`.
    pub extended_due_at: Option<i64>,
    /// Why it was extended (the last extension's reason; no personal data).
    pub extension_reason: Option<String>,
    /// Who registered it.
    pub opened_by: String,
    /// When it was answered.
    pub completed_at: Option<i64>,
    /// A note (no personal data).
    pub note: String,
    /// The row's MAC, computed by the core.
    pub mac: Vec<u8>,
}

impl RequestRow {
    /// The deadline in force: the extended one, else the first.
    pub fn due_in_force(&self) -> i64 {
        self.extended_due_at.unwrap_or(self.due_at)
    }
}

/// A bearer token, stored only as its hash.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TokenRow {
    /// `tok_…`, safe to show and log.
    pub id: String,
    /// SHA-256 of the token.
    pub hash: Vec<u8>,
    /// The principal id.
    pub principal: String,
    /// Role ids.
    pub roles: Vec<String>,
    /// The subject a scoped token is bound to.
    pub scope_subject: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds, when revoked.
    pub revoked_at: Option<i64>,
    /// Who issued it (`None` for a token made at `init` or by `serve --dev`).
    pub requested_by: Option<String>,
    /// It takes effect only once approved by a second person.
    pub needs_approval: bool,
    /// The privacy officer who approved it.
    pub approved_by: Option<String>,
    /// Unix seconds, when approved.
    pub approved_at: Option<i64>,
    /// The row's MAC, computed by the core.
    pub mac: Vec<u8>,
}

impl TokenRow {
    /// Waiting for its second person: it authenticates nobody yet.
    pub fn is_pending(&self) -> bool {
        self.needs_approval && self.approved_at.is_none()
    }
}

/// A key job (a rekey of a purpose) under way, as stored: resumed from its start by whichever
/// node takes it over.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct KeyJobRow {
    /// The purpose whose keys it replaces.
    pub purpose: String,
    /// What it does (`rekey`).
    pub kind: String,
    /// When it started, Unix seconds: the subjects keyed before it are the job's.
    pub started_at: i64,
    /// MAC under the row subkey, with the number of the purpose's jobs of this kind finished
    /// before it (empty in a row of an older store).
    pub mac: Vec<u8>,
}

/// A job's lease (a job only one node may run at a time) as stored: who holds it, until when
/// by the store's clock, and its MAC, without which it holds nobody off.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct LeaseRow {
    /// The job (`rekey:nuisance`, `retention-sweep`, ...).
    pub name: String,
    /// The node that holds it.
    pub holder: String,
    /// When it expires, Unix seconds by the store's clock.
    pub until: i64,
    /// MAC under the row subkey.
    pub mac: Vec<u8>,
}

/// One entry of the audit trail as stored.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AuditRow {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// The entry (canonical JSON; identifiers and decisions only).
    pub entry: Vec<u8>,
    /// Hash of the previous entry (zeros for the first).
    pub prev_hash: Vec<u8>,
    /// SHA-256 over `prev_hash` and `entry`.
    pub hash: Vec<u8>,
    /// HMAC-SHA-256 of `hash` under the audit key.
    pub mac: Vec<u8>,
}

/// A list of column names (`a, b, c`) with each prefixed by a table alias (`t.a, t.b, t.c`),
/// for the stores' joins.
pub(crate) fn qualified(columns: &str, alias: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the audit rows of a batch on the stored tail (`None`: the trail is empty). It may
/// look up the hash of an earlier entry with the second argument, which reads it in the
/// transaction that appends.
pub type Chain<'a> =
    dyn FnMut(Option<&AuditRow>, &mut HashAt<'_>) -> Result<Vec<AuditRow>, StoreError> + 'a;

/// The hash of the stored audit entry at a sequence number (`None`: there is none), read in
/// the transaction that appends.
pub type HashAt<'a> = dyn FnMut(u64) -> Result<Option<Vec<u8>>, StoreError> + 'a;

/// A record write that can go in the transaction appending its audit entry
/// (`AuditStore::append_chained_writing`), so that a write and its entry share one commit.
#[derive(Clone)]
pub enum RecordWrite {
    /// What `RecordStore::insert_record` stores.
    Insert {
        /// The record.
        record: RecordRow,
        /// Its fields.
        fields: Vec<FieldRow>,
    },
    /// What `RecordStore::insert_record_with_key` stores.
    InsertWithKey {
        /// The subject's first key of the record's purpose.
        key: SubjectKeyRow,
        /// The subject's anchor, kept if one is stored.
        anchor: AnchorRow,
        /// The record.
        record: RecordRow,
        /// Its fields.
        fields: Vec<FieldRow>,
    },
}

impl RecordWrite {
    /// Makes the write through `store`'s own `RecordStore` call, in a transaction of its own.
    pub fn make(&self, store: &(impl RecordStore + ?Sized)) -> Result<(), StoreError> {
        match self {
            RecordWrite::Insert { record, fields } => store.insert_record(record, fields),
            RecordWrite::InsertWithKey {
                key,
                anchor,
                record,
                fields,
            } => store.insert_record_with_key(key, anchor, record, fields),
        }
    }
}

/// A value a rekey sealed again under the new subject key generation, to be written back only
/// over the ciphertext it was made from (a value rectified meanwhile is left as it is).
#[derive(Clone, Eq, PartialEq)]
pub enum Resealed {
    /// A field: written where its version and generation are still these.
    Field {
        /// The record.
        record_id: String,
        /// The field name.
        name: String,
        /// The value's version it was made from.
        version: String,
        /// The generation it was sealed under.
        from: u32,
        /// The new ciphertext.
        sealed: Vec<u8>,
    },
    /// A segment of an evidence file: written where its generation is still this.
    Segment {
        /// The evidence file.
        evidence_id: String,
        /// The segment's position.
        index: u32,
        /// The generation it was sealed under.
        from: u32,
        /// The new ciphertext.
        sealed: Vec<u8>,
    },
    /// The sealed file name of an evidence file: written where it is still `from`.
    FileName {
        /// The evidence file.
        evidence_id: String,
        /// The sealed name it was made from.
        from: Vec<u8>,
        /// The new sealed name.
        sealed: Vec<u8>,
    },
}

impl std::fmt::Debug for Resealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resealed::Field {
                record_id, name, ..
            } => {
                write!(f, "Resealed::Field({record_id}/{name})")
            }
            Resealed::Segment {
                evidence_id, index, ..
            } => write!(f, "Resealed::Segment({evidence_id}#{index})"),
            Resealed::FileName { evidence_id, .. } => {
                write!(f, "Resealed::FileName({evidence_id})")
            }
        }
    }
}

/// The longest lease kluis takes: a sweep's, two of its longest periods
/// (`config::MAX_SWEEP_INTERVAL_SECS`) and a minute.
pub const MAX_LEASE_SECS: i64 = 2 * crate::config::MAX_SWEEP_INTERVAL_SECS.cast_signed() + 60;

/// A snapshot of the whole store (`MetaStore::snapshot`).
#[derive(Debug)]
pub struct Snapshot {
    /// The snapshot, open for reading.
    pub file: std::fs::File,
    /// The sequence number and hash of the last entry of the trail it holds (`None`: none).
    pub trail_tail: Option<(u64, Vec<u8>)>,
}

/// The store's metadata, its initialisation and online snapshots.
pub trait MetaStore: Send + Sync {
    /// A value of the store's metadata (root key parameters, key check value, wrapped audit key).
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Sets a metadata value (insert or replace).
    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// What the database's own checks find wrong with the file's structure, one line each;
    /// empty when nothing. SQLite: a schema not the one the migrations made, and what
    /// `PRAGMA integrity_check` finds (an index whose b-tree is not its table's, a page out of
    /// place), which reads the whole file. PostgreSQL runs its own checks (`amcheck`) under its
    /// administrators: nothing here.
    fn structure_problems(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Whether every call answers from files on this machine (SQLite), so that what it waits
    /// for is the disk or this process's own threads, not a network (SQLite's busy timeout
    /// when another process holds the file aside): a call may then run on the runtime's thread
    /// when it arrives alone (`vault::places::CallPlace::run_here`).
    fn answers_from_local_files(&self) -> bool {
        false
    }

    /// Replaces the metadata value `key` when it is still `prev` (`None`: not stored), in one
    /// transaction; `Stale` otherwise (another node changed it since it was read).
    fn replace_meta(&self, key: &str, prev: Option<&[u8]>, next: &[u8]) -> Result<(), StoreError>;

    /// The lease `name` as stored (`None`: nobody holds it), and the store's clock now, in Unix
    /// seconds: the database's clock decides a lease's expiry, so that nodes with skewed clocks
    /// agree on it.
    fn lease(&self, name: &str) -> Result<(Option<LeaseRow>, i64), StoreError>;

    /// Stores `next` as the lease of its name when the stored one is still `prev` (`None`: no
    /// row), holder, expiry and MAC alike. Returns whether it did: `false` when another node
    /// changed the lease since it was read.
    fn replace_lease(&self, prev: Option<&LeaseRow>, next: &LeaseRow) -> Result<bool, StoreError>;

    /// Gives up the lease `name` when `holder` holds it.
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Voids every lease: for a store only one process uses (`change_epoch` is `None`), called
    /// when that process starts, since the holder of any lease found then has died.
    fn clear_leases(&self) -> Result<(), StoreError>;

    /// A number that changes with every change other nodes must take into account before they
    /// use what they hold in memory: purpose key versions and their states, the root key's
    /// wrapping, subject keys deleted (shredding, rekey), tokens, metadata (the policy set, the
    /// token register). `None` for a store only one process uses (SQLite), where the process
    /// itself knows every change.
    fn change_epoch(&self) -> Result<Option<i64>, StoreError>;

    /// `change_epoch`, with a digest of the rows a node takes in when it moves (of their
    /// versions as the database numbers them, on PostgreSQL the transaction that wrote each):
    /// the metadata
    /// (the policy set, the token register, the root key and its wrapping of the audit and
    /// index keys) and the purpose key versions with their states. The epoch is a counter that
    /// whoever administers the database can hold back (a trigger that writes it back): a node
    /// that finds the digest changed under the same epoch takes the change in all the same.
    fn shared_state(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(self.change_epoch()?.map(|n| (n, Vec::new())))
    }

    /// Initialises an empty store with its metadata and first purpose keys, in one transaction.
    /// Fails with `AlreadyInitialized` when the store holds metadata already.
    fn initialize(
        &self,
        meta: &[(&str, Vec<u8>)],
        purpose_keys: &[PurposeKeyRow],
    ) -> Result<(), StoreError>;

    /// A consistent snapshot of the whole store as one file, taken online while writers go on,
    /// returned open for reading (and already unlinked where the platform allows), with the
    /// last entry of the trail it holds.
    fn snapshot(&self) -> Result<Snapshot, StoreError>;
}

/// Purpose key versions, subject keys and key jobs.
pub trait KeyStore: Send + Sync {
    /// All versions of a purpose key, oldest first.
    fn purpose_keys(&self, purpose: &str) -> Result<Vec<PurposeKeyRow>, StoreError>;

    /// The current subject key of (subject, purpose).
    fn subject_key(
        &self,
        subject: &str,
        purpose: &str,
    ) -> Result<Option<SubjectKeyRow>, StoreError>;

    /// Stores a new subject key unless one exists for (subject, purpose); returns the one that
    /// is stored afterwards (so two concurrent writers end up with the same key). Stores
    /// `anchor` (a fresh one, counting nothing) in the same transaction when the subject has none.
    fn insert_subject_key(
        &self,
        row: &SubjectKeyRow,
        anchor: &AnchorRow,
    ) -> Result<SubjectKeyRow, StoreError>;

    /// Stores `new` as the active version of its purpose and `retired` (the version that was
    /// active, now `decrypt-only`, with its new MAC, over the row it was made from), in one
    /// transaction. Fails with `Stale` when `retired` is not the active version any more or its
    /// row changed, `Exists` when `new` exists.
    fn rotate_purpose_key(
        &self,
        retired: Option<&KeyRowChange>,
        new: &PurposeKeyRow,
    ) -> Result<(), StoreError>;

    /// Writes the state, dates, bar and MAC of `change.row` when the stored row is still the one
    /// it was made from (its MAC is `change.prev_mac`): scheduling or cancelling a destruction.
    /// Returns false when it was not.
    fn update_purpose_key(&self, change: &KeyRowChange) -> Result<bool, StoreError>;

    /// Erases a version's material and writes `change.row` (state `destroyed`, with its MAC),
    /// in one transaction with the checks that the stored row is still the one it was made
    /// from (`Stale` otherwise) and that no subject key is wrapped under it (`InUse(count)`).
    fn destroy_purpose_key(&self, change: &KeyRowChange) -> Result<(), StoreError>;

    /// Replaces the wrapped material of purpose key versions and metadata values, in one
    /// transaction (a root key change).
    fn rewrap_root(
        &self,
        keys: &[PurposeKeyRow],
        meta: &[(&str, Vec<u8>)],
    ) -> Result<(), StoreError>;

    /// Raises the minimum decryption version of `purpose` to `version`: writes `barred` (the
    /// versions below it, each barred, with its MAC, over the row it was made from), in one
    /// transaction with the check that no subject key is wrapped under a version below it.
    /// Fails with `InUse(count)` otherwise, `Stale` when a row changed since it was read.
    fn set_min_decrypt_version(
        &self,
        purpose: &str,
        version: u32,
        barred: &[KeyRowChange],
    ) -> Result<(), StoreError>;

    /// How many subject keys each version of a purpose key wraps: (version, count).
    fn subject_key_counts(&self, purpose: &str) -> Result<Vec<(u32, u64)>, StoreError>;

    /// Up to `limit` subject keys of `purpose` wrapped under a version older than `version`.
    fn subject_keys_below(
        &self,
        purpose: &str,
        version: u32,
        limit: usize,
    ) -> Result<Vec<SubjectKeyRow>, StoreError>;

    /// Stores rewrapped subject keys in one transaction. Each row replaces the stored row of the
    /// same (subject, purpose, generation) only if that one is still wrapped under `from[i]`.
    /// Returns how many were replaced.
    fn rewrap_subject_keys(
        &self,
        rows: &[SubjectKeyRow],
        from: &[u32],
    ) -> Result<usize, StoreError>;

    /// A given generation of the subject key of (subject, purpose).
    fn subject_key_at(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
    ) -> Result<Option<SubjectKeyRow>, StoreError>;

    /// Up to `limit` subjects of `purpose` a rekey started at `before` still has to do: whose
    /// current subject key was created before `before`, or who still have an older generation
    /// (a rekey begun and not finished).
    fn subjects_keyed_before(
        &self,
        purpose: &str,
        before: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Begins a subject's rekey: stores `new_key` as the subject's current key of its purpose,
    /// unless the current one was created at or after `before` or is of a generation as high
    /// (returns false: begun or done already). `NotLive` unless `new_key` is wrapped under the
    /// active purpose key version. From here on new values are sealed under `new_key`; older
    /// values stay readable under their generations until `finish_rekey`.
    fn begin_rekey(&self, new_key: &SubjectKeyRow, before: i64) -> Result<bool, StoreError>;

    /// Up to `limit` fields of the subject's records of `purpose` sealed under a generation
    /// older than `generation`: (record id, field).
    fn stale_fields(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
        limit: usize,
    ) -> Result<Vec<(String, FieldRow)>, StoreError>;

    /// Up to `limit` segments of the subject's complete evidence files of `purpose` sealed
    /// under a generation older than `generation`, with their files.
    fn stale_segments(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
        limit: usize,
    ) -> Result<Vec<(EvidenceRow, SegmentRow)>, StoreError>;

    /// The subject's complete evidence files of `purpose`.
    fn subject_evidence(
        &self,
        subject: &str,
        purpose: &str,
    ) -> Result<Vec<EvidenceRow>, StoreError>;

    /// Writes resealed values back under `generation`, in one transaction, each only over the
    /// ciphertext it was made from. Returns how many were written.
    fn write_resealed(&self, generation: u32, items: &[Resealed]) -> Result<u64, StoreError>;

    /// Finishes a subject's rekey: deletes the subject's generations of `purpose` older than
    /// `generation`, in one transaction with the check that no field or complete evidence
    /// segment is sealed under one of them and that `files` names every complete evidence file
    /// (the files whose names were resealed or found new). `Stale` otherwise: a value came in
    /// under an older generation meanwhile; reseal again.
    fn finish_rekey(
        &self,
        subject: &str,
        purpose: &str,
        generation: u32,
        files: &[String],
    ) -> Result<(), StoreError>;

    /// Fields and evidence segments of `purpose` whose subject key generation no longer exists
    /// (must be 0).
    fn orphan_fields(&self, purpose: &str) -> Result<u64, StoreError>;

    /// Records that a key job (`rekey`) started for a purpose, `job` as given, unless one is
    /// recorded already; returns the job in force.
    fn start_key_job(&self, job: &KeyJobRow) -> Result<KeyJobRow, StoreError>;

    /// Removes the record of a finished key job.
    fn finish_key_job(&self, purpose: &str, kind: &str) -> Result<(), StoreError>;

    /// Unfinished key jobs, by purpose and kind.
    fn key_jobs(&self) -> Result<Vec<KeyJobRow>, StoreError>;
}

/// Records and their fields, retention and shredding.
pub trait RecordStore: Send + Sync {
    /// Whether new records get ids in the order of issue (`RecordId::generate_in_order`)
    /// rather than random ones. A store with one writer gains: a group commit of many writes
    /// dirties the last pages of the indexes keyed by record id, not a random page of each per
    /// write. A store written by many connections at once loses: they all insert into the same
    /// last page and wait on its lock (PostgreSQL: `PutRecord` at 64 clients about 0.9× with
    /// ids in order). Either is read and found alike.
    fn record_ids_in_order(&self) -> bool {
        false
    }

    /// Stores a record with its fields in one transaction. Fails with `StaleGeneration` when a
    /// field's subject key generation does not exist (any more): the caller must fetch the
    /// current key; with `Exists` when the record or a field name is taken.
    fn insert_record(&self, record: &RecordRow, fields: &[FieldRow]) -> Result<(), StoreError>;

    /// Stores a subject's first key of the record's purpose (with the subject's anchor, kept if
    /// one exists) and the record with its fields sealed under it, in one transaction: a new
    /// subject's first record costs one commit. Fails with `Exists` when the subject already
    /// has a key of that purpose (another writer stored one first: seal again under that one),
    /// with `NotLive` when `key` is wrapped under a purpose key version that is no longer
    /// active, and otherwise as `insert_record`; nothing is stored then.
    fn insert_record_with_key(
        &self,
        key: &SubjectKeyRow,
        anchor: &AnchorRow,
        record: &RecordRow,
        fields: &[FieldRow],
    ) -> Result<(), StoreError>;

    /// A record with all its fields.
    fn record(&self, id: &str) -> Result<Option<(RecordRow, Vec<FieldRow>)>, StoreError>;

    /// A record with all its fields and the facts of its subject (as
    /// `LifecycleStore::subject_facts` reads them), from one snapshot: what a read opens and
    /// what its decision rests on, read together (PostgreSQL: one statement, one round trip).
    fn record_with_facts(&self, id: &str) -> Result<Option<Arc<RecordRead>>, StoreError>;

    /// The records of `ids` that exist, each with all its fields (each from one snapshot, as
    /// `record` gives it), in the order of `ids`.
    fn records(&self, ids: &[&str]) -> Result<Vec<(RecordRow, Vec<FieldRow>)>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.extend(self.record(id)?);
        }
        Ok(found)
    }

    /// The records of `ids` that exist, in the order of `ids` (as often as named), each read in
    /// one snapshot with the metadata of its field rows (no evidence files) and the whole row of
    /// its field `field`, when it holds one: what a search checks and compares, without the
    /// other values.
    fn records_with_field(
        &self,
        ids: &[&str],
        field: &str,
    ) -> Result<Vec<RecordWithField>, StoreError>;

    /// Replaces or adds `fields` of a record, sets `updated_at` and replaces its field-set MAC,
    /// in one transaction. Returns false when the record does not exist. Fails with `Held` when
    /// an active legal hold covers the record and a stored value would be replaced (adding a
    /// field is allowed), and with `Stale` when the stored field-set MAC is not `fields_mac.prev`
    /// (another change came between).
    fn update_fields(
        &self,
        id: &str,
        fields: &[FieldRow],
        updated_at: i64,
        fields_mac: FieldsMac<'_>,
    ) -> Result<bool, StoreError>;

    /// Deletes a record with its fields and evidence in one transaction, and the subject key of
    /// its purpose when it was the subject's last record under that purpose (crypto-shredding);
    /// names the record destroyed for its subject (`SubjectFacts::destroyed`) and replaces the
    /// subject's anchor with `anchor.next` in the same transaction. Fails with `Held` when an
    /// active legal hold covers the record, and with `Stale` when the stored anchor is not
    /// `anchor.prev` or `anchor.next` is not the anchor of the record's subject; nothing is
    /// changed then. Returns `None` when it did not exist, else whether the subject key went too.
    fn delete_record(&self, id: &str, anchor: AnchorChange<'_>)
    -> Result<Option<bool>, StoreError>;

    /// The records `ids` that exist, in the order of `ids`, with their field metadata as
    /// `subject_records` gives it, read in one snapshot.
    fn record_metas(&self, ids: &[&str]) -> Result<Vec<(RecordRow, Vec<FieldMeta>)>, StoreError>;

    /// The records of a subject with their field metadata (no ciphertext), oldest first.
    fn subject_records(
        &self,
        subject: &str,
    ) -> Result<Vec<(RecordRow, Vec<FieldMeta>)>, StoreError>;

    /// Up to `limit` records of a subject with their field metadata, in `subject_records`' order
    /// (oldest first), after `after` (the (creation time, id) of the last record of the previous
    /// page), read in one snapshot.
    fn subject_records_page(
        &self,
        subject: &str,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<(RecordRow, Vec<FieldMeta>)>, StoreError>;

    /// Closes an open record: sets its closing time and the expiry that follows from it.
    /// Returns false when there is no open record of that id (closed or deleted meanwhile).
    fn close_record(
        &self,
        id: &str,
        closed_at: i64,
        expires_at: Option<i64>,
        mac: &[u8],
    ) -> Result<bool, StoreError>;

    /// Up to `limit` records whose expiry is at or before `now` and that no active hold covers,
    /// in (expiry, id) order, after `after` (the last (expiry, id) of the previous page).
    fn expired_records(
        &self,
        now: i64,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<RecordRow>, StoreError>;

    /// Destroys records of one subject in one transaction: their fields and rows, and the subject
    /// key of every purpose under which the subject has no record left (crypto-shredding); names
    /// every one of `record_ids` destroyed for the subject (`SubjectFacts::destroyed`) and
    /// replaces the subject's anchor with `anchor.next`. Fails with `Stale` when the stored
    /// anchor is not `anchor.prev` (another change to the subject came between), and with
    /// `Held` when an active hold covers one of the records; nothing is changed then. Returns
    /// the records destroyed (those no longer stored are not) and the purposes whose subject key
    /// was destroyed.
    fn shred_records(
        &self,
        subject: &str,
        record_ids: &[String],
        anchor: AnchorChange<'_>,
    ) -> Result<(Vec<String>, Vec<String>), StoreError>;

    /// Up to `limit` record rows with ids after `after`, in id order (for verification).
    fn records_page(&self, after: &str, limit: usize) -> Result<Vec<RecordRow>, StoreError>;

    /// The ids of up to `limit` records of `purpose` whose field `field` carries one of the
    /// tags `probes`, in id order, without repeats.
    fn find_tagged(
        &self,
        purpose: &str,
        field: &str,
        probes: &[TagRow],
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Up to `limit` ids of records of `purpose` whose field `field` carries a tag of
    /// `from`'s version and width, from `from`'s tag on in (tag, record id) order, wrapping
    /// round to the smallest tag when that end is reached: the decoys a search decides beside
    /// its candidates, from a random tag.
    fn tagged_from(
        &self,
        purpose: &str,
        field: &str,
        from: &TagRow,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Up to `limit` records of `purpose` with ids after `after`, in id order, whose field
    /// `field` carries no tag under index key version `version` at width `bits`, each with that
    /// field (for the backfill).
    fn untagged_fields(
        &self,
        purpose: &str,
        field: &str,
        version: u32,
        bits: u8,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(RecordRow, FieldRow)>, StoreError>;

    /// Adds `tags` to field `field` of record `record` (replacing a tag under the same index key
    /// version), only while the stored value is the one of `value_version`. False when the
    /// value changed or went meanwhile.
    fn write_tags(
        &self,
        record: &str,
        field: &str,
        value_version: &str,
        tags: &[TagRow],
    ) -> Result<bool, StoreError>;

    /// Deletes every tag made under index key version `version`; returns how many.
    fn drop_tags(&self, version: u32) -> Result<u64, StoreError>;

    /// How many tags were made under index key version `version`.
    fn tag_count(&self, version: u32) -> Result<u64, StoreError>;

    /// The tags made under index key version `version`, counted per purpose, field and width,
    /// ordered by purpose, field and width.
    fn tag_counts(&self, version: u32) -> Result<Vec<TagCount>, StoreError>;

    /// Whether any tag is stored, under any index key version.
    fn any_tags(&self) -> Result<bool, StoreError>;
}

/// How many values of one field of one purpose carry a tag of one width (`tag_counts`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TagCount {
    /// The purpose.
    pub purpose: String,
    /// The field.
    pub field: String,
    /// The tag width in bits.
    pub bits: u8,
    /// Tags of this purpose, field and width.
    pub tags: u64,
}

/// Evidence files, streamed in segments.
pub trait EvidenceStore: Send + Sync {
    /// Starts an evidence upload: stores `row` (not complete) and, when given, the new record it
    /// belongs to, in one transaction. Fails with `Exists` when the record has a field or
    /// evidence of that name already.
    fn begin_evidence(
        &self,
        new_record: Option<&RecordRow>,
        row: &EvidenceRow,
    ) -> Result<(), StoreError>;

    /// Appends segments to an unfinished upload in one transaction. Fails with `Missing` when
    /// the upload is gone or complete, or a segment's subject key generation no longer exists.
    fn append_segments(
        &self,
        evidence_id: &str,
        subject: &str,
        purpose: &str,
        segments: &[SegmentRow],
    ) -> Result<(), StoreError>;

    /// Completes an upload: checks that exactly `segments` segments are stored, records the size
    /// and the sealed name (which now holds the sealed digest too) and makes it readable; sets
    /// the record's `updated_at`. One transaction.
    fn finish_evidence(
        &self,
        evidence_id: &str,
        size: u64,
        segments: u64,
        sealed_name: &[u8],
        at: i64,
        mac: &[u8],
    ) -> Result<(), StoreError>;

    /// Deletes an unfinished upload with its segments (and the record when the upload created
    /// it and it holds nothing else). Returns false when there is no unfinished upload of that
    /// id: a finished file is never discarded.
    fn discard_evidence(&self, evidence_id: &str) -> Result<bool, StoreError>;

    /// The unfinished uploads (at start-up, when none can be running, they are discarded).
    fn unfinished_evidence(&self) -> Result<Vec<EvidenceRow>, StoreError>;

    /// An evidence file with its record.
    fn evidence(&self, evidence_id: &str) -> Result<Option<(RecordRow, EvidenceRow)>, StoreError>;

    /// The evidence files of a record, finished or not: the caller checks each row before it
    /// believes its `complete` (a finished file marked unfinished by hand is damaged, not absent).
    fn record_evidence(&self, record_id: &str) -> Result<Vec<EvidenceRow>, StoreError>;

    /// One segment of an evidence file.
    fn segment(&self, evidence_id: &str, index: u32) -> Result<Option<SegmentRow>, StoreError>;

    /// How many segment rows an evidence file has, with the lowest and the highest index
    /// among them (`None` when it has none): `kluis admin store verify` expects exactly the
    /// indexes `0..n` of the file's size.
    fn segment_span(&self, evidence_id: &str) -> Result<(u64, Option<(i64, i64)>), StoreError>;
}

/// Legal holds, subject anchors and subject requests.
pub trait LifecycleStore: Send + Sync {
    /// Stores a legal hold and replaces the subject's anchor `prev` (`None`: it had none) with
    /// `next`, in one transaction. Fails with `Stale` when the stored anchor is not `prev`.
    fn insert_hold(
        &self,
        row: &HoldRow,
        prev: Option<&AnchorRow>,
        next: &AnchorRow,
    ) -> Result<(), StoreError>;

    /// Releases a hold and changes its subject's anchor, in one transaction. Returns false when
    /// no active hold has this id; `Stale` when the anchor changed meanwhile.
    fn release_hold(
        &self,
        id: &str,
        at: i64,
        by: &str,
        mac: &[u8],
        anchor: AnchorChange<'_>,
    ) -> Result<bool, StoreError>;

    /// Holds, of one subject or all, active only or all.
    fn holds(&self, subject: Option<&str>, active_only: bool) -> Result<Vec<HoldRow>, StoreError>;

    /// A subject's anchor, consent states, holds, mandates and whether it has a key or a record,
    /// read in one snapshot.
    fn subject_facts(&self, subject: &str) -> Result<SubjectFacts, StoreError>;

    /// `subject_facts` of each of `subjects`, in their order.
    fn subjects_facts(&self, subjects: &[&str]) -> Result<Vec<SubjectFacts>, StoreError> {
        subjects.iter().map(|s| self.subject_facts(s)).collect()
    }

    /// Every subject anchor.
    fn anchors(&self) -> Result<Vec<AnchorRow>, StoreError>;

    /// Stores a subject request.
    fn insert_request(&self, row: &RequestRow) -> Result<(), StoreError>;

    /// Marks a request answered. Returns false when no open request has this id.
    fn complete_request(&self, id: &str, at: i64, mac: &[u8]) -> Result<bool, StoreError>;

    /// All subject requests, oldest first.
    fn requests(&self) -> Result<Vec<RequestRow>, StoreError>;

    /// Extends an open request's deadline: writes `extended_due_at`, `reason` and `mac` where
    /// the stored MAC is still `prev_mac` and the request is open. Returns false otherwise.
    fn extend_request(
        &self,
        id: &str,
        prev_mac: &[u8],
        extended_due_at: i64,
        reason: &str,
        mac: &[u8],
    ) -> Result<bool, StoreError>;
}

/// Consent states, mandates and tokens.
pub trait RightsStore: Send + Sync {
    /// Records a subject's consent state for a purpose (`given`, `withdrawn`, `objected`),
    /// replacing the one before, and replaces the subject's anchor `prev` with `next`, in one
    /// transaction. Fails with `Stale` when the stored anchor is not `prev`.
    fn set_consent(
        &self,
        row: &ConsentRow,
        prev: Option<&AnchorRow>,
        next: &AnchorRow,
    ) -> Result<(), StoreError>;

    /// Every subject's consent states (for `kluis admin store verify`).
    fn all_consents(&self) -> Result<Vec<ConsentRow>, StoreError>;

    /// Stores a mandate and changes its subject's anchor, in one transaction (`Stale` when the
    /// anchor changed meanwhile).
    fn insert_mandate(&self, row: &MandateRow, anchor: AnchorChange<'_>) -> Result<(), StoreError>;

    /// Revokes a mandate and changes its subject's anchor, in one transaction. Returns false
    /// when no active mandate has this id; `Stale` when the anchor changed meanwhile.
    fn revoke_mandate(
        &self,
        id: &str,
        at: i64,
        mac: &[u8],
        anchor: AnchorChange<'_>,
    ) -> Result<bool, StoreError>;

    /// Mandates, of one subject and/or one representative.
    fn mandates(
        &self,
        subject: Option<&str>,
        representative: Option<&str>,
    ) -> Result<Vec<MandateRow>, StoreError>;

    /// Stores a restriction of processing and changes its subject's anchor, in one transaction
    /// (`Stale` when the anchor changed meanwhile).
    fn insert_restriction(
        &self,
        row: &RestrictionRow,
        anchor: AnchorChange<'_>,
    ) -> Result<(), StoreError>;

    /// Lifts a restriction and changes its subject's anchor, in one transaction. Returns false
    /// when no restriction in force has this id; `Stale` when the anchor changed meanwhile.
    fn lift_restriction(
        &self,
        id: &str,
        at: i64,
        by: &str,
        mac: &[u8],
        anchor: AnchorChange<'_>,
    ) -> Result<bool, StoreError>;

    /// Restrictions of processing, of one subject or all, oldest first (lifted ones included).
    fn restrictions(&self, subject: Option<&str>) -> Result<Vec<RestrictionRow>, StoreError>;

    /// Stores a token row.
    fn insert_token(&self, row: &TokenRow) -> Result<(), StoreError>;

    /// The token with this hash.
    fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRow>, StoreError>;

    /// Marks a token revoked, over its row as the core read it (`was`: the MAC the row carried
    /// then). Returns false when no active token has this id and that MAC (unknown, revoked,
    /// or approved meanwhile: a MAC computed over the row as read must not land on another).
    fn revoke_token(&self, id: &str, at: i64, mac: &[u8], was: &[u8]) -> Result<bool, StoreError>;

    /// Records the approval of a token waiting for one. Returns false when no such token is
    /// waiting (unknown, approved already, not needing approval, or revoked).
    fn approve_token(&self, id: &str, by: &str, at: i64, mac: &[u8]) -> Result<bool, StoreError>;

    /// All tokens, oldest first.
    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError>;
}

/// The disclosure register's rows. A subject's disclosures go with their last record: every
/// transaction that deletes a subject's last record (a deletion, the retention sweep, an
/// erasure, a discarded upload) deletes them too.
pub trait DisclosureStore: Send + Sync {
    /// Stores a disclosure, in one transaction with the check that its record exists and
    /// belongs to its subject (`Missing` otherwise: nothing is stored).
    fn insert_disclosure(&self, row: &DisclosureRow) -> Result<(), StoreError>;

    /// Disclosures, of one subject or all, disclosed at or after `since`, oldest first (by time,
    /// then id), at most `limit`.
    fn disclosures(
        &self,
        subject: Option<&str>,
        since: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DisclosureRow>, StoreError>;
}

/// The audit trail's rows.
pub trait AuditStore: Send + Sync {
    /// Appends audit entries in one transaction (all or none); fails with `Exists` when a
    /// sequence number is taken.
    fn append_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError>;

    /// Appends the entries `chain` builds on the stored tail (`None`: the trail is empty), in
    /// one transaction, and only while that tail is still the stored tail: the store holds
    /// every other appender (of any node) off between reading the tail and committing, or
    /// offers the tail it appended last and stores the rows only if, in the statement that
    /// stores them, that row is still in its place with its hash and nothing follows it (a
    /// sequence number taken by another appender meanwhile fails the statement whole). When
    /// it is not, `chain` is called again with the tail as stored. Returns the rows appended.
    fn append_chained(
        &self,
        chain: &mut crate::store::Chain<'_>,
    ) -> Result<Vec<AuditRow>, StoreError>;

    /// Whether `append_chained_writing` makes the writes in the transaction of the entries
    /// (a caller that makes them itself after the entries does so on its own thread, not on the
    /// one that committed them).
    fn makes_writes_with_entries(&self) -> bool {
        false
    }

    /// Appends as `append_chained` does and, where the store can, makes `writes` in the same
    /// transaction after the entries, each in a savepoint of its own: a write that fails is
    /// undone alone, while the entries and the other writes commit. Returns the rows appended
    /// and each write's outcome in order, or `None` for the writes when this store does not
    /// make them with the entries (the caller then makes them after the entries committed,
    /// as it would without this call: the default).
    #[expect(
        clippy::type_complexity,
        reason = "the rows appended, and one outcome per write"
    )]
    fn append_chained_writing(
        &self,
        chain: &mut crate::store::Chain<'_>,
        _writes: &[RecordWrite],
    ) -> Result<(Vec<AuditRow>, Option<Vec<Result<(), StoreError>>>), StoreError> {
        Ok((self.append_chained(chain)?, None))
    }

    /// The last audit entry.
    fn audit_tail(&self) -> Result<Option<AuditRow>, StoreError>;

    /// Where the store keeps the trail's index by subject apart from the entries (rows that
    /// are not computed from them), the first entry it disagrees with them on and how: an
    /// entry it misses, one it names that no entry is, or one under the wrong run. `None` when
    /// it agrees, or when the database computes the index from the entries itself.
    fn subject_index_problem(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(None)
    }

    /// Up to `limit` audit entries from sequence number `from`, in order.
    fn audit_entries(&self, from: u64, limit: usize) -> Result<Vec<AuditRow>, StoreError>;

    /// How many rows of the trail are numbered below 1, where kluis numbers no entry (its
    /// entries start at 1), and the highest such number: rows inserted by hand, which nothing
    /// that reads the trail from its first entry on would see.
    fn audit_rows_below_one(&self) -> Result<(u64, i64), StoreError>;

    /// Up to `limit` audit entries about `subject` (whose `subject` is it) from sequence number
    /// `from`, in order: from an index of the entries themselves, not a scan of the trail.
    fn subject_audit_entries(
        &self,
        subject: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError>;
}

/// What kluis needs from a store.
pub trait Store:
    MetaStore
    + KeyStore
    + RecordStore
    + EvidenceStore
    + LifecycleStore
    + RightsStore
    + DisclosureStore
    + AuditStore
{
}

impl<T> Store for T where
    T: MetaStore
        + KeyStore
        + RecordStore
        + EvidenceStore
        + LifecycleStore
        + RightsStore
        + DisclosureStore
        + AuditStore
{
}

/// The store's traits, for callers of their methods.
pub mod prelude {
    pub use super::{
        AuditStore, DisclosureStore, EvidenceStore, KeyStore, LifecycleStore, MetaStore,
        RecordStore, RightsStore, Store,
    };
}
