//! The key hierarchy: the root key (from a passphrase via Argon2id, a key file, a quorum of
//! shares or an HSM, see `seal`), versioned
//! purpose keys wrapped under it, and a data key per (subject, purpose) wrapped under a purpose key
//! version. Unwrapped keys are cached in memory with a bound; nothing is ever stored in clear.
//!
//! Invariant: the root key is never written anywhere in clear; the store holds its key check
//! value and, under an HSM seal, the root key encrypted by the HSM's key (shares are written to
//! their custodians' files, never to the store).
//! Invariant: a wrong passphrase or key file is refused at `unseal`, before anything is decrypted.
//! Invariant: knows neither gRPC nor SQL (the store comes in as `dyn Store`).

use std::{
    collections::{HashMap, VecDeque},
    fs,
    io::Write,
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{
    audit::StoreId,
    crypto::{
        self, AadContext, Algorithm, AuditKey, CryptoError, PurposeKey, RootKey, SubjectKey,
        kdf::{self, KdfParams},
    },
    domain::{Purpose, SubjectId, now_unix},
    seal::{
        SealError,
        pkcs11::{Hsm, SealedRoot},
        shares::{self, Share, ShareSetMeta},
    },
    store::{KeyRowChange, KeyState, PurposeKeyRow, Store, StoreError, SubjectKeyRow},
    vault::rows::RowAuth,
};

mod index;
pub use index::{IndexKeyState, IndexKeys};

/// Errors of the key hierarchy.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The passphrase or key file does not match the one the store was initialised with.
    #[error(
        "wrong passphrase or key file: it does not match the key this store was initialised with"
    )]
    WrongRootKey,
    /// The store was initialised with another kind of root key source.
    #[error("this store was initialised with a {expected}; provide that instead")]
    SourceMismatch {
        /// What the store expects, e.g. `passphrase`.
        expected: &'static str,
    },
    /// The key file cannot be used.
    #[error("key file `{path}`: {problem}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The store has no purpose key for a purpose.
    #[error("no purpose key for `{0}`; the store is incomplete")]
    MissingPurposeKey(String),
    /// The version is below the purpose's minimum decryption version.
    #[error("purpose key `{purpose}` v{version} is below the minimum decryption version {min}")]
    BelowMinimum {
        /// The purpose.
        purpose: String,
        /// The version asked for.
        version: u32,
        /// The minimum.
        min: u32,
    },
    /// The version's material was destroyed.
    #[error("purpose key `{purpose}` v{version} was destroyed")]
    Destroyed {
        /// The purpose.
        purpose: String,
        /// The version.
        version: u32,
    },
    /// The root-key metadata in the store is unreadable.
    #[error("root key metadata is corrupt")]
    CorruptMeta,
    /// A purpose key row failed its integrity check (edited, inserted or put back by hand).
    #[error(
        "stored purpose key `{0}` failed its integrity check and is not used; run `kluis admin store verify`"
    )]
    Tampered(String),
    /// The store was written by a kluis whose keys and ciphertexts this one does not read.
    #[error(
        "this store has key format {found}; this kluis reads key format {KEY_FORMAT} only \
         (older formats are not migrated: format 1 used each key directly for more than one \
         purpose, format 2 kept purpose key states unauthenticated, format 3 kept one subject \
         under several spellings): initialise a new store"
    )]
    UnsupportedFormat {
        /// The format the store records (`1` when it records none).
        found: String,
    },
    /// A share or the HSM refused (says which, and what to check).
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A wrapped key failed to unwrap or a KDF failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What unlocks the root key: a passphrase (Argon2id), the contents of a key file, a quorum of
/// shares, or an HSM.
pub enum RootSecret {
    /// A passphrase, stretched with Argon2id.
    Passphrase(Zeroizing<String>),
    /// 32 random bytes read from a key file.
    KeyFile(RootKey),
    /// Shares of the root key: to open a store, at least its threshold of them; to make a new
    /// seal, a whole new set (as `seal::shares::split` made it).
    Shares(Vec<Share>),
    /// An HSM whose AES key seals the root key.
    Hsm(Arc<Hsm>),
}

impl std::fmt::Debug for RootSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootSecret::Passphrase(_) => f.write_str("RootSecret::Passphrase(<redacted>)"),
            RootSecret::KeyFile(_) => f.write_str("RootSecret::KeyFile(<redacted>)"),
            RootSecret::Shares(s) => {
                write!(f, "RootSecret::Shares({} shares, <redacted>)", s.len())
            }
            RootSecret::Hsm(h) => write!(f, "RootSecret::Hsm({h:?})"),
        }
    }
}

impl RootSecret {
    /// Reads a key file: 64 hex digits (32 bytes), optionally followed by a newline.
    pub fn read_key_file(path: &Path) -> Result<Self, KeyError> {
        let problem = |p: &str| KeyError::KeyFile {
            path: path.display().to_string(),
            problem: p.into(),
        };
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| problem(&e.to_string()))?);
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut_slice())
            .map_err(|_| problem("expected 64 hexadecimal digits (a 256-bit key)"))?;
        Ok(RootSecret::KeyFile(RootKey::from_bytes(&bytes)))
    }

    /// Writes a new random key file with mode 0600; refuses to overwrite an existing file.
    pub fn create_key_file(path: &Path) -> Result<Self, KeyError> {
        let problem = |p: String| KeyError::KeyFile {
            path: path.display().to_string(),
            problem: p,
        };
        let key = RootKey::generate();
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| problem(e.to_string()))?;
        let hexed = Zeroizing::new(hex::encode(key.expose_secret()));
        let mut text = Zeroizing::new(String::with_capacity(hexed.len() + 1));
        text.push_str(&hexed);
        text.push('\n');
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| problem(e.to_string()))?;
        Ok(RootSecret::KeyFile(key))
    }

    fn kind(&self) -> &'static str {
        match self {
            RootSecret::Passphrase(_) => "passphrase",
            RootSecret::KeyFile(_) => "key file",
            RootSecret::Shares(_) => "shares",
            RootSecret::Hsm(_) => "HSM",
        }
    }
}

/// How the root key is made, as stored in the store's `root` metadata.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
enum RootMeta {
    Passphrase {
        kdf: String,
        params: KdfParams,
        salt: String,
    },
    KeyFile,
    /// A random root key split into shares; the store keeps a digest of each.
    Shares(ShareSetMeta),
    /// A random root key sealed by an HSM's AES key.
    Pkcs11(SealedRoot),
}

/// What seals a store's root key, as its metadata says (nothing secret).
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum StoreSeal {
    /// A passphrase, stretched with Argon2id.
    Passphrase,
    /// A key file.
    KeyFile,
    /// Shares with a quorum.
    Shares(ShareSetMeta),
    /// An HSM.
    Pkcs11(SealedRoot),
}

impl StoreSeal {
    /// `passphrase`, `key-file`, `shares`, `pkcs11`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreSeal::Passphrase => "passphrase",
            StoreSeal::KeyFile => "key-file",
            StoreSeal::Shares(_) => "shares",
            StoreSeal::Pkcs11(_) => "pkcs11",
        }
    }

    /// What it is, for people: `shares: any 3 of 5 (set …)`.
    pub fn describe(&self) -> String {
        match self {
            StoreSeal::Passphrase => "passphrase (Argon2id)".into(),
            StoreSeal::KeyFile => "key file".into(),
            StoreSeal::Shares(m) => format!("shares: any {}", m.describe()),
            StoreSeal::Pkcs11(s) => {
                format!("HSM: key `{}` on token `{}`", s.key_label, s.token_label)
            }
        }
    }
}

impl From<&RootMeta> for StoreSeal {
    fn from(meta: &RootMeta) -> Self {
        match meta {
            RootMeta::Passphrase { .. } => StoreSeal::Passphrase,
            RootMeta::KeyFile => StoreSeal::KeyFile,
            RootMeta::Shares(m) => StoreSeal::Shares(m.clone()),
            RootMeta::Pkcs11(s) => StoreSeal::Pkcs11(s.clone()),
        }
    }
}

const META_ROOT: &str = "root";
const META_KEY_CHECK: &str = "root_key_check";
const META_AUDIT_KEY: &str = "audit_key";
const META_KEY_FORMAT: &str = "key_format";
const META_STORE_ID: &str = "store_id";
/// When the seal (what unlocks the root key) last changed: Unix seconds, decimal.
const META_SEAL_CHANGED_AT: &str = "seal_changed_at";

/// The key format of stores this kluis writes and reads: 4, a subkey per use of every key
/// (`crypto::subkey`), envelopes and segments of format 2, a store id, purpose key rows that
/// carry a MAC of their state (format 2 had none), and subject ids in their one spelling in
/// every row, associated data and MAC (format 3 kept them as given, so `rel-1` and `REL-1` were
/// two subjects with their own keys).
pub const KEY_FORMAT: u32 = 4;

/// What a pending root change keeps of its new secret: how the new root key is derived from it
/// (for a passphrase, the fresh salt and Argon2id parameters) and the new key's check value.
/// Never the key: with it the same secret can be recognised later, nothing more.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RootCheck {
    meta: RootMeta,
    check: String,
}

impl RootCheck {
    /// The new root key's check value, hex (safe to show: it is a MAC of a constant).
    pub fn check_value(&self) -> &str {
        &self.check
    }
}

/// A new root key derived from a secret that matched a `RootCheck`, ready for `rotate_root`.
/// Wiped on drop.
pub struct NewRoot {
    meta: RootMeta,
    root: RootKey,
}

impl std::fmt::Debug for NewRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewRoot(<redacted>)")
    }
}

/// The unsealed key hierarchy of a running vault.
pub struct Keyring {
    store: Arc<dyn Store>,
    root: RwLock<RootKey>,
    root_algorithm: Algorithm,
    store_id: StoreId,
    purpose_keys: RwLock<HashMap<(Purpose, u32), Arc<PurposeKey>>>,
    subject_keys: Mutex<SubjectKeyCache>,
    /// Authenticates the purpose key rows (states, dates, the minimum's bar).
    rows: RowAuth,
    /// The blind-index key versions, unwrapped (`index.rs`).
    index_keys: RwLock<Option<Arc<index::IndexKeys>>>,
    /// On a store several nodes share, the active version and algorithm of each purpose as
    /// last read (and authenticated) from it: a record's write takes them from here, not with
    /// a round trip of its own (`active_version_for_write`). Dropped with every change of
    /// purpose key rows made here, when the store refuses a key wrapped under a version no
    /// longer active (`forget_active`), and by `forget_all` when another node changed keys or
    /// a row was edited (within the follow interval). The store refuses a new subject key under
    /// a version that is no longer active; the algorithm values are sealed with follows another
    /// node's rotation within the follow interval. `None` on SQLite, whose rows are read from
    /// local files at every write.
    active: Option<RwLock<HeldActive>>,
}

/// The active versions a node of a shared store holds for its writes (`Keyring::active`), with
/// a count of the times they were forgotten: a read of the rows that began before a forgetting
/// does not put back what it read.
#[derive(Default)]
struct HeldActive {
    versions: HashMap<Purpose, (u32, Algorithm)>,
    forgotten: u64,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("root_algorithm", &self.root_algorithm)
            .finish_non_exhaustive()
    }
}

/// A subject key ready for use: its generation, the key, and the algorithm new ciphertexts under
/// it are sealed with (that of the purpose's active key version).
#[derive(Clone, Debug)]
pub struct ActiveSubjectKey {
    /// Generation of the subject key.
    pub generation: u32,
    /// The key.
    pub key: Arc<SubjectKey>,
    /// The AEAD for new ciphertexts.
    pub algorithm: Algorithm,
}

/// The key a write seals under (see `Keyring::subject_key_for_write`).
#[derive(Debug)]
pub struct KeyForWrite {
    /// The key.
    pub active: ActiveSubjectKey,
    /// The subject's first key of the purpose, to be stored with the record; `None` when the
    /// key is stored already.
    pub new: Option<NewSubjectKey>,
    /// The subject keys' forgettings before the key was read or made (`Keyring::forgettings`).
    seen: u64,
}

/// A subject's first key of a purpose, not stored yet.
#[derive(Debug)]
pub struct NewSubjectKey {
    /// Its row (wrapped under the purpose's active version).
    pub row: SubjectKeyRow,
    /// The subject's anchor, stored unless the subject has one.
    pub anchor: crate::store::AnchorRow,
}

impl Keyring {
    /// Initialises an empty store: its key format and a fresh random store id, root key
    /// metadata and key check value, version 1 of every purpose key and the audit key (bound to
    /// the store id), all in one transaction.
    pub fn initialize(
        store: &dyn Store,
        secret: &RootSecret,
        algorithm: Algorithm,
    ) -> Result<(), KeyError> {
        let store_id = StoreId::generate();
        let (meta, root) = root_from_secret(secret, store_id)?;
        let meta_json = serde_json::to_vec(&meta).map_err(|_| KeyError::CorruptMeta)?;
        let now = now_unix();
        let audit_key = AuditKey::generate();
        let rows = RowAuth::new(&audit_key)?;
        let mut purpose_rows = Vec::with_capacity(Purpose::ALL.len());
        for &purpose in Purpose::ALL {
            let key = PurposeKey::generate();
            let row = PurposeKeyRow {
                purpose,
                version: 1,
                state: KeyState::Active,
                algorithm,
                wrapped: wrap_purpose_key(&root, algorithm, purpose, 1, &key)?,
                created_at: now,
                retired_at: None,
                destroy_after: None,
                destroyed_at: None,
                barred: false,
                mac: Vec::new(),
            };
            purpose_rows.push(rows.seal(row, |r, m| r.mac = m));
        }
        let wrapped_audit = crypto::seal(
            &root,
            algorithm,
            1,
            &crypto::aad(&AadContext::AuditKey {
                store_id: store_id.as_bytes(),
            }),
            audit_key.expose_secret(),
        )?;
        store.initialize(
            &[
                (META_KEY_FORMAT, KEY_FORMAT.to_string().into_bytes()),
                (META_STORE_ID, store_id.as_bytes().to_vec()),
                (META_ROOT, meta_json),
                (META_KEY_CHECK, kdf::key_check_value(&root)?.to_vec()),
                (META_AUDIT_KEY, wrapped_audit),
                (META_SEAL_CHANGED_AT, now.to_string().into_bytes()),
            ],
            &purpose_rows,
        )?;
        Ok(())
    }

    /// True when the store has been initialised (has root key metadata).
    pub fn is_initialized(store: &dyn Store) -> Result<bool, KeyError> {
        Ok(store.meta(META_ROOT)?.is_some())
    }

    /// What seals the root key of an initialised store, read before any key is derived (a
    /// server decides by it whether it starts sealed, waiting for shares).
    pub fn store_seal(store: &dyn Store) -> Result<StoreSeal, KeyError> {
        check_format(store)?;
        Ok(StoreSeal::from(&read_meta(store)?))
    }

    /// What seals this store's root key, and when that last changed (Unix seconds; `None` for
    /// a store made before kluis recorded it).
    pub fn seal(&self) -> Result<(StoreSeal, Option<i64>), KeyError> {
        let seal = StoreSeal::from(&read_meta(self.store.as_ref())?);
        let changed = self
            .store
            .meta(META_SEAL_CHANGED_AT)?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok());
        Ok((seal, changed))
    }

    /// Replaces the store's set of shares by `new` (a whole set) without changing the root
    /// key: `old` must be a quorum of the recorded set and both must give the root key in use.
    /// Returns the old and the new set's record. `Stale` when another node changed the seal
    /// at the same time.
    pub fn replace_shares(
        &self,
        old: &[Share],
        new: &[Share],
    ) -> Result<(ShareSetMeta, ShareSetMeta), KeyError> {
        // Root key changes wait: the seal replaced is the one in force.
        let root = self.root.read().map_err(|_| KeyError::CorruptMeta)?;
        let prev = self
            .store
            .meta(META_ROOT)?
            .ok_or(StoreError::NotInitialized)?;
        let RootMeta::Shares(recorded) =
            serde_json::from_slice(&prev).map_err(|_| KeyError::CorruptMeta)?
        else {
            return Err(KeyError::SourceMismatch {
                expected: "key file, passphrase or HSM (this store has no shares to replace)",
            });
        };
        for share in old {
            recorded.check(share)?;
        }
        let check = kdf::key_check_value(&root)?;
        let opens = |shares: &[Share]| -> Result<bool, KeyError> {
            let key = shares::combine(shares)?;
            Ok(kdf::key_matches(&key, &check))
        };
        if !opens(old)? {
            return Err(KeyError::WrongRootKey);
        }
        let next = ShareSetMeta::of(new)?;
        if next.set == recorded.set {
            return Err(
                SealError::Share("the new shares are the old set; split anew".into()).into(),
            );
        }
        if !opens(new)? {
            return Err(SealError::Quorum(
                "the new shares do not give this store's root key; split it again from a quorum \
                 of the old shares"
                    .into(),
            )
            .into());
        }
        let json = serde_json::to_vec(&RootMeta::Shares(next.clone()))
            .map_err(|_| KeyError::CorruptMeta)?;
        self.store.replace_meta(META_ROOT, Some(&prev), &json)?;
        // The new set is in force; the date is for the report, and its failure is not the
        // change's (saying otherwise would have the new shares thrown away).
        if let Err(e) = self
            .store
            .set_meta(META_SEAL_CHANGED_AT, now_unix().to_string().as_bytes())
        {
            tracing::warn!(error = %e, "the new set of shares is in force; the date of the change was not recorded");
        }
        drop(root);
        Ok((recorded, next))
    }

    /// Unseals the key hierarchy of an initialised store: checks its key format, derives or
    /// reads the root key and checks it against the key check value before anything else.
    /// `algorithm` is used for what the root key wraps (purpose keys, the audit key) from now on.
    pub fn unseal(
        store: Arc<dyn Store>,
        secret: &RootSecret,
        algorithm: Algorithm,
        cache_capacity: usize,
    ) -> Result<Self, KeyError> {
        let store_id = check_format(store.as_ref())?;
        let root = check_root(store.as_ref(), secret, store_id)?;
        let audit_key = open_audit_key(store.as_ref(), &root, store_id)?;
        let store_shares_files = store.answers_from_local_files();
        Ok(Self {
            store,
            root: RwLock::new(root),
            root_algorithm: algorithm,
            store_id,
            purpose_keys: RwLock::new(HashMap::new()),
            subject_keys: Mutex::new(SubjectKeyCache::new(cache_capacity)),
            rows: RowAuth::new(&audit_key)?,
            index_keys: RwLock::new(None),
            active: (!store_shares_files).then(|| RwLock::new(HeldActive::default())),
        })
    }

    /// The id of the store, fixed at `initialize`.
    pub fn store_id(&self) -> StoreId {
        self.store_id
    }

    /// The audit MAC key. It unwraps only with the store id it was made for, so a changed
    /// store id is refused here.
    pub fn audit_key(&self) -> Result<AuditKey, KeyError> {
        let root = self.root.read().map_err(|_| KeyError::CorruptMeta)?;
        open_audit_key(self.store.as_ref(), &root, self.store_id)
    }

    /// All versions of a purpose key, oldest first, each checked against its MAC: a state,
    /// date or bar edited by hand, a row inserted or an older row put back beside the active
    /// one fails closed (`Tampered`) and is logged.
    pub fn purpose_key_rows(&self, purpose: Purpose) -> Result<Vec<PurposeKeyRow>, KeyError> {
        let rows = self.store.purpose_keys(purpose.as_str())?;
        for row in &rows {
            if row.purpose != purpose || !self.rows.is_authentic(row) {
                let id = format!("{} v{}", row.purpose, row.version);
                tracing::error!(kind = "purpose-key", row = %id, "a stored row failed its integrity check and is not obeyed; run `kluis admin store verify`");
                return Err(KeyError::Tampered(id));
            }
        }
        if rows.iter().filter(|r| r.state == KeyState::Active).count() > 1 {
            tracing::error!(
                purpose = purpose.as_str(),
                "more than one active purpose key version: an older row was put back"
            );
            return Err(KeyError::Tampered(format!(
                "{purpose} (two active versions)"
            )));
        }
        Ok(rows)
    }

    /// The minimum decryption version of `purpose`: one above the highest barred version (0
    /// when none is barred).
    pub fn min_decrypt_version(&self, purpose: Purpose) -> Result<u32, KeyError> {
        Ok(min_of(&self.purpose_key_rows(purpose)?))
    }

    /// Moves version `version` of `purpose` from state `from` to `to` (scheduling a destruction
    /// due at `destroy_after`, or cancelling one). Returns false when it is not in `from`.
    pub fn set_key_state(
        &self,
        purpose: Purpose,
        version: u32,
        from: KeyState,
        to: KeyState,
        destroy_after: Option<i64>,
    ) -> Result<bool, KeyError> {
        let Some(row) = self
            .purpose_key_rows(purpose)?
            .into_iter()
            .find(|r| r.version == version && r.state == from)
        else {
            return Ok(false);
        };
        let prev_mac = row.mac.clone();
        let row = PurposeKeyRow {
            state: to,
            destroy_after,
            ..row
        };
        let row = self.rows.seal(row, |r, m| r.mac = m);
        // Written only over the row read: a change another node made meanwhile (a cancelled
        // destruction, a bar) is not overwritten.
        let changed = self
            .store
            .update_purpose_key(&KeyRowChange { row, prev_mac });
        self.forget_active(Some(purpose));
        Ok(changed?)
    }

    /// Erases the material of version `version` of `purpose` (its state becomes `destroyed`);
    /// the store refuses with `InUse` while a subject key is wrapped under it.
    pub fn destroy_version(&self, purpose: Purpose, version: u32, at: i64) -> Result<(), KeyError> {
        let row = self
            .purpose_key_rows(purpose)?
            .into_iter()
            .find(|r| r.version == version)
            .ok_or_else(|| KeyError::MissingPurposeKey(format!("{purpose} v{version}")))?;
        let prev_mac = row.mac.clone();
        let row = PurposeKeyRow {
            state: KeyState::Destroyed,
            wrapped: Vec::new(),
            destroyed_at: Some(at),
            destroy_after: None,
            ..row
        };
        let row = self.rows.seal(row, |r, m| r.mac = m);
        let destroyed = self
            .store
            .destroy_purpose_key(&KeyRowChange { row, prev_mac });
        self.forget_active(Some(purpose));
        destroyed?;
        crate::metrics::key_operation("destroy");
        self.forget_purpose_key(purpose, version);
        Ok(())
    }

    /// Raises the minimum decryption version of `purpose` to `version`: every version below it
    /// is barred in its own authenticated row, so no deleted or edited setting lowers it. The
    /// store refuses with `InUse` while subject keys are wrapped under a barred version.
    pub fn set_min_decrypt_version(&self, purpose: Purpose, version: u32) -> Result<(), KeyError> {
        let barred: Vec<KeyRowChange> = self
            .purpose_key_rows(purpose)?
            .into_iter()
            .filter(|r| r.version < version && !r.barred)
            .map(|r| KeyRowChange {
                prev_mac: r.mac.clone(),
                row: self
                    .rows
                    .seal(PurposeKeyRow { barred: true, ..r }, |r, m| r.mac = m),
            })
            .collect();
        let set = self
            .store
            .set_min_decrypt_version(purpose.as_str(), version, &barred);
        self.forget_active(Some(purpose));
        set?;
        for v in 1..version {
            self.forget_purpose_key(purpose, v);
        }
        Ok(())
    }

    /// The subject key of (subject, purpose) of a given generation (the one a ciphertext names).
    pub fn subject_key_at(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        generation: u32,
    ) -> Result<Option<Arc<SubjectKey>>, KeyError> {
        if let Some((g, key)) = self.cached(subject, purpose)
            && g == generation
        {
            return Ok(Some(key));
        }
        let seen = self.forgettings();
        let Some(row) =
            self.store
                .subject_key_at(subject.as_str(), purpose.as_str(), generation)?
        else {
            return Ok(None);
        };
        let key = self.unwrap_subject_key(subject, purpose, &row)?;
        let current = self.store.subject_key(subject.as_str(), purpose.as_str())?;
        if current.is_some_and(|c| c.generation == generation) {
            self.remember(subject, purpose, generation, &key, seen);
        }
        Ok(Some(key))
    }

    /// The current subject key of (subject, purpose), created and stored when there is none,
    /// with the algorithm new ciphertexts are sealed with.
    pub fn subject_key_or_create(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
    ) -> Result<ActiveSubjectKey, KeyError> {
        let write = self.subject_key_for_write(subject, purpose)?;
        let seen = write.seen;
        let Some(new) = write.new else {
            return Ok(write.active);
        };
        // Another request may have created one meanwhile: use whichever the store kept. A
        // rotation between wrapping and storing makes the store refuse a key wrapped under a
        // version that is no longer live: wrap it again under the active one.
        // The values are sealed with the algorithm of the version the key was wrapped under
        // again, not the one read before.
        let (row, algorithm) = match self.store.insert_subject_key(&new.row, &new.anchor) {
            Err(StoreError::NotLive { .. }) => {
                self.forget_active(Some(purpose));
                let active = self.active_version(purpose)?;
                let algorithm = active.2;
                let (row, _) = self.new_subject_key_under(subject, purpose, 1, active)?;
                (self.store.insert_subject_key(&row, &new.anchor)?, algorithm)
            }
            other => (other?, write.active.algorithm),
        };
        let key = self.unwrap_subject_key(subject, purpose, &row)?;
        self.remember(subject, purpose, row.generation, &key, seen);
        Ok(ActiveSubjectKey {
            generation: row.generation,
            key,
            algorithm,
        })
    }

    /// The current subject key of (subject, purpose) for a write that stores it with the record
    /// when there is none: the key the record is to be sealed under, and, when the subject has
    /// no key of the purpose yet, a fresh one with its row and the subject's anchor (counting
    /// nothing yet), not stored. The caller stores both with the record in one transaction
    /// (`RecordStore::insert_record_with_key`) and then calls `stored`.
    pub fn subject_key_for_write(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
    ) -> Result<KeyForWrite, KeyError> {
        let active = self.active_version_for_write(purpose)?;
        let algorithm = active.2;
        let seen = self.forgettings();
        if let Some((generation, key)) = self.cached(subject, purpose) {
            return Ok(KeyForWrite {
                active: ActiveSubjectKey {
                    generation,
                    key,
                    algorithm,
                },
                new: None,
                seen,
            });
        }
        if let Some(row) = self.store.subject_key(subject.as_str(), purpose.as_str())? {
            let key = self.unwrap_subject_key(subject, purpose, &row)?;
            self.remember(subject, purpose, row.generation, &key, seen);
            return Ok(KeyForWrite {
                active: ActiveSubjectKey {
                    generation: row.generation,
                    key,
                    algorithm,
                },
                new: None,
                seen,
            });
        }
        // Under the version just read and checked (the store refuses it when it is no longer
        // active by the time the key is stored).
        let (row, key) = self.new_subject_key_under(subject, purpose, 1, active)?;
        let anchor = self
            .rows
            .anchor_of(subject.as_str(), &crate::store::SubjectFacts::default());
        Ok(KeyForWrite {
            active: ActiveSubjectKey {
                generation: row.generation,
                key: Arc::new(key),
                algorithm,
            },
            new: Some(NewSubjectKey { row, anchor }),
            seen,
        })
    }

    /// Notes that the new key of `write` was stored: later writes and reads use it from the
    /// cache.
    pub fn stored(&self, subject: &SubjectId, purpose: Purpose, write: &KeyForWrite) {
        if write.new.is_some() {
            self.remember(
                subject,
                purpose,
                write.active.generation,
                &write.active.key,
                write.seen,
            );
        }
    }

    /// A fresh subject key of `generation`, wrapped under the purpose's active version (not
    /// stored), and the key itself.
    pub fn new_subject_key(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        generation: u32,
    ) -> Result<(SubjectKeyRow, SubjectKey), KeyError> {
        let active = self.active_version(purpose)?;
        self.new_subject_key_under(subject, purpose, generation, active)
    }

    /// `new_subject_key` under `active`, the purpose's active version as `active_version`
    /// read it.
    fn new_subject_key_under(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        generation: u32,
        (version, purpose_key, algorithm): (u32, Arc<PurposeKey>, Algorithm),
    ) -> Result<(SubjectKeyRow, SubjectKey), KeyError> {
        let key = SubjectKey::generate();
        let aad = crypto::aad(&AadContext::SubjectKey {
            subject: subject.as_str(),
            purpose: purpose.as_str(),
            generation,
        });
        let row = SubjectKeyRow {
            subject: subject.as_str().into(),
            purpose,
            generation,
            purpose_version: version,
            wrapped: crypto::seal(
                purpose_key.as_ref(),
                algorithm,
                version,
                &aad,
                key.expose_secret(),
            )?,
            created_at: now_unix(),
        };
        Ok((row, key))
    }

    /// The algorithm of the purpose's active key version (what new ciphertexts are sealed with).
    pub fn active_algorithm(&self, purpose: Purpose) -> Result<Algorithm, KeyError> {
        Ok(self.active_version(purpose)?.2)
    }

    /// Drops the cached key of (subject, purpose), after a rekey replaced it.
    pub fn forget(&self, subject: &SubjectId, purpose: Purpose) {
        if let Ok(mut cache) = self.subject_keys.lock() {
            cache.remove(subject, purpose);
        }
    }

    /// Creates the next version of a purpose key and makes it active (the previous one becomes
    /// decrypt-only). `algorithm` defaults to that of the current active version.
    pub fn rotate(
        &self,
        purpose: Purpose,
        algorithm: Option<Algorithm>,
    ) -> Result<(u32, Algorithm), KeyError> {
        let rows = self.purpose_key_rows(purpose)?;
        let current = rows.iter().rev().find(|r| r.state == KeyState::Active);
        let algorithm = algorithm
            .or_else(|| current.map(|r| r.algorithm))
            .unwrap_or_default();
        let version = rows.iter().map(|r| r.version).max().unwrap_or(0) + 1;
        let key = PurposeKey::generate();
        let root = self.root.read().map_err(|_| KeyError::CorruptMeta)?;
        let row = PurposeKeyRow {
            purpose,
            version,
            state: KeyState::Active,
            algorithm,
            wrapped: wrap_purpose_key(&root, self.root_algorithm, purpose, version, &key)?,
            created_at: now_unix(),
            retired_at: None,
            destroy_after: None,
            destroyed_at: None,
            barred: false,
            mac: Vec::new(),
        };
        let row = self.rows.seal(row, |r, m| r.mac = m);
        let retired = current.map(|c| KeyRowChange {
            prev_mac: c.mac.clone(),
            row: self.rows.seal(
                PurposeKeyRow {
                    state: KeyState::DecryptOnly,
                    retired_at: Some(row.created_at),
                    ..c.clone()
                },
                |r, m| r.mac = m,
            ),
        });
        // Hold the root key's read lock until the new version is stored: a root key change
        // waits for it, so no version is left wrapped under a replaced root key.
        let rotated = self.store.rotate_purpose_key(retired.as_ref(), &row);
        self.forget_active(Some(purpose));
        rotated?;
        drop(root);
        crate::metrics::key_operation("rotate");
        if let Ok(mut map) = self.purpose_keys.write() {
            map.insert((purpose, version), Arc::new(key));
        }
        Ok((version, algorithm))
    }

    /// Rewraps up to `batch` subject keys of `purpose` that are wrapped under an older version
    /// to the active one, in one store transaction. Returns how many were rewrapped and how
    /// many were found (0 found: nothing left to do).
    pub fn rewrap_batch(&self, purpose: Purpose, batch: usize) -> Result<(usize, usize), KeyError> {
        let (active, active_key, algorithm) = self.active_version(purpose)?;
        let rows = self
            .store
            .subject_keys_below(purpose.as_str(), active, batch)?;
        if rows.is_empty() {
            return Ok((0, 0));
        }
        let mut new_rows = Vec::with_capacity(rows.len());
        let mut from = Vec::with_capacity(rows.len());
        for row in &rows {
            let old_key = self.purpose_key(purpose, row.purpose_version)?;
            let aad = crypto::aad(&AadContext::SubjectKey {
                subject: &row.subject,
                purpose: purpose.as_str(),
                generation: row.generation,
            });
            let bytes = crypto::open(old_key.as_ref(), &aad, &row.wrapped)?;
            new_rows.push(SubjectKeyRow {
                purpose_version: active,
                wrapped: crypto::seal(active_key.as_ref(), algorithm, active, &aad, &bytes)?,
                ..row.clone()
            });
            from.push(row.purpose_version);
        }
        let done = self.store.rewrap_subject_keys(&new_rows, &from)?;
        crate::metrics::key_operation("rewrap-batch");
        Ok((done, rows.len()))
    }

    /// The check of a new root secret for a pending root change: derives its root key (for a
    /// passphrase under a fresh salt; for shares, from the whole new set; for an HSM, a new
    /// random key it seals) and keeps how, and its key check value.
    pub fn root_check(&self, secret: &RootSecret) -> Result<RootCheck, KeyError> {
        let (meta, root) = root_from_secret(secret, self.store_id)?;
        Ok(RootCheck {
            meta,
            check: hex::encode(kdf::key_check_value(&root)?),
        })
    }

    /// The root key `secret` gives under `check`'s derivation, when its key check value is the
    /// one `check` recorded; `None` for another secret.
    pub fn new_root(
        &self,
        secret: &RootSecret,
        check: &RootCheck,
    ) -> Result<Option<NewRoot>, KeyError> {
        let Ok(stored) = hex::decode(&check.check) else {
            return Err(KeyError::CorruptMeta);
        };
        let root = match derive_root(&check.meta, secret, self.store_id) {
            Ok(root) => root,
            Err(KeyError::SourceMismatch { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(kdf::key_matches(&root, &stored).then(|| NewRoot {
            meta: check.meta.clone(),
            root,
        }))
    }

    /// Changes the root key to `new`: rewraps every purpose key version that still has
    /// material, and the audit key, under it, and replaces the key check value, in one
    /// transaction that also writes the metadata rows `also`. The old passphrase or key file no
    /// longer opens the store.
    pub fn rotate_root(&self, new: NewRoot, also: &[(&str, Vec<u8>)]) -> Result<(), KeyError> {
        let NewRoot {
            meta,
            root: new_root,
        } = new;
        let meta_json = serde_json::to_vec(&meta).map_err(|_| KeyError::CorruptMeta)?;
        let mut root = self.root.write().map_err(|_| KeyError::CorruptMeta)?;
        let mut rows = Vec::new();
        for &purpose in Purpose::ALL {
            for row in self.purpose_key_rows(purpose)? {
                if row.wrapped.is_empty() || row.state == KeyState::Destroyed {
                    continue;
                }
                let aad = crypto::aad(&AadContext::PurposeKey {
                    purpose: purpose.as_str(),
                    version: row.version,
                });
                let bytes = crypto::open(&*root, &aad, &row.wrapped)?;
                let wrapped =
                    crypto::seal(&new_root, self.root_algorithm, row.version, &aad, &bytes)?;
                rows.push(PurposeKeyRow { wrapped, ..row });
            }
        }
        let wrapped_audit = self
            .store
            .meta(META_AUDIT_KEY)?
            .ok_or(KeyError::CorruptMeta)?;
        let audit_aad = self.audit_key_aad();
        let audit_bytes = crypto::open(&*root, &audit_aad, &wrapped_audit)?;
        let rewrapped_audit =
            crypto::seal(&new_root, self.root_algorithm, 1, &audit_aad, &audit_bytes)?;
        let mut meta_rows = vec![
            (META_ROOT, meta_json),
            (META_KEY_CHECK, kdf::key_check_value(&new_root)?.to_vec()),
            (META_AUDIT_KEY, rewrapped_audit),
            (META_SEAL_CHANGED_AT, now_unix().to_string().into_bytes()),
        ];
        if let Some(index_keys) = self.index_keys_under(&root, &new_root)? {
            meta_rows.push((index::META_INDEX_KEYS, index_keys));
        }
        meta_rows.extend(also.iter().map(|(k, v)| (*k, v.clone())));
        let rewrapped = self.store.rewrap_root(&rows, &meta_rows);
        self.forget_active(None);
        rewrapped?;
        *root = new_root;
        crate::metrics::key_operation("root-change");
        Ok(())
    }

    fn audit_key_aad(&self) -> Vec<u8> {
        crypto::aad(&AadContext::AuditKey {
            store_id: self.store_id.as_bytes(),
        })
    }

    fn cached(&self, subject: &SubjectId, purpose: Purpose) -> Option<(u32, Arc<SubjectKey>)> {
        let cache = self.subject_keys.lock().ok()?;
        let found = cache.get(subject, purpose);
        crate::metrics::key_cache_lookup(found.is_some());
        found
    }

    /// How often subject keys were forgotten so far (`forget`, `forget_all`): a key read from
    /// the store is kept only when this has not moved since before the read (`remember`).
    fn forgettings(&self) -> u64 {
        self.subject_keys.lock().map_or(u64::MAX, |c| c.forgotten)
    }

    /// Keeps `key` for (subject, purpose), unless keys were forgotten since `seen` (taken
    /// before it was read or made): a read that began before another node's shredding or rekey
    /// was taken in does not put back the key it read.
    fn remember(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        generation: u32,
        key: &Arc<SubjectKey>,
        seen: u64,
    ) {
        if let Ok(mut cache) = self.subject_keys.lock()
            && cache.forgotten == seen
        {
            cache.insert(subject.clone(), purpose, generation, Arc::clone(key));
            crate::metrics::get()
                .key_cache_entries
                .set(i64::try_from(cache.map.len()).unwrap_or(i64::MAX));
        }
    }

    fn unwrap_subject_key(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        row: &SubjectKeyRow,
    ) -> Result<Arc<SubjectKey>, KeyError> {
        let purpose_key = self.purpose_key(purpose, row.purpose_version)?;
        let aad = crypto::aad(&AadContext::SubjectKey {
            subject: subject.as_str(),
            purpose: purpose.as_str(),
            generation: row.generation,
        });
        let bytes = crypto::open(purpose_key.as_ref(), &aad, &row.wrapped)?;
        Ok(Arc::new(
            SubjectKey::from_slice(&bytes).ok_or(CryptoError::Open)?,
        ))
    }

    /// The active version of a purpose key: (version, key, algorithm).
    fn active_version(
        &self,
        purpose: Purpose,
    ) -> Result<(u32, Arc<PurposeKey>, Algorithm), KeyError> {
        let rows = self.purpose_key_rows(purpose)?;
        let active = rows
            .iter()
            .rev()
            .find(|r| r.state == KeyState::Active)
            .ok_or_else(|| KeyError::MissingPurposeKey(purpose.as_str().into()))?;
        let algorithm = active.algorithm;
        Ok((
            active.version,
            self.purpose_key(purpose, active.version)?,
            algorithm,
        ))
    }

    /// `active_version` for a record's write: on a shared store from what this node holds
    /// (`active`), read from the store when it holds nothing. Key jobs (rekey, rewrap) and
    /// rotation read the rows every time.
    fn active_version_for_write(
        &self,
        purpose: Purpose,
    ) -> Result<(u32, Arc<PurposeKey>, Algorithm), KeyError> {
        let Some(active) = &self.active else {
            return self.active_version(purpose);
        };
        let (held, forgotten) = match active.read() {
            Ok(a) => (a.versions.get(&purpose).copied(), a.forgotten),
            Err(_) => return self.active_version(purpose),
        };
        if let Some((version, algorithm)) = held {
            return Ok((version, self.purpose_key(purpose, version)?, algorithm));
        }
        let read = self.active_version(purpose)?;
        // Kept only when nothing was forgotten since the read began: a change taken in
        // meanwhile (a rotation here, another node's seen by the follower) may postdate it.
        if let Ok(mut a) = active.write()
            && a.forgotten == forgotten
        {
            a.versions.insert(purpose, (read.0, read.2));
        }
        Ok(read)
    }

    /// Forgets the active version held for `purpose`, or for every purpose (`active`): the
    /// store refused a key wrapped under it as no longer live, or purpose key rows changed.
    pub fn forget_active(&self, purpose: Option<Purpose>) {
        if let Some(Ok(mut a)) = self.active.as_ref().map(RwLock::write) {
            a.forgotten = a.forgotten.wrapping_add(1);
            match purpose {
                Some(p) => {
                    a.versions.remove(&p);
                }
                None => a.versions.clear(),
            }
        }
    }

    fn purpose_key(&self, purpose: Purpose, version: u32) -> Result<Arc<PurposeKey>, KeyError> {
        if let Some(k) = self
            .purpose_keys
            .read()
            .ok()
            .and_then(|m| m.get(&(purpose, version)).cloned())
        {
            return Ok(k);
        }
        let rows = self.purpose_key_rows(purpose)?;
        let min = min_of(&rows);
        let row = rows
            .iter()
            .find(|r| r.version == version)
            .ok_or_else(|| KeyError::MissingPurposeKey(format!("{purpose} v{version}")))?;
        if row.barred || version < min {
            return Err(KeyError::BelowMinimum {
                purpose: purpose.as_str().into(),
                version,
                min,
            });
        }
        if row.state == KeyState::Destroyed || row.wrapped.is_empty() {
            return Err(KeyError::Destroyed {
                purpose: purpose.as_str().into(),
                version,
            });
        }
        let aad = crypto::aad(&AadContext::PurposeKey {
            purpose: purpose.as_str(),
            version,
        });
        let root = self.root.read().map_err(|_| KeyError::CorruptMeta)?;
        let bytes = crypto::open(&*root, &aad, &row.wrapped)?;
        let key = Arc::new(PurposeKey::from_slice(&bytes).ok_or(CryptoError::Open)?);
        if let Ok(mut map) = self.purpose_keys.write() {
            map.insert((purpose, version), Arc::clone(&key));
        }
        Ok(key)
    }

    /// Forgets every unwrapped purpose key version and subject key held in memory: another
    /// node changed key states, shredded or rekeyed, and what this node holds may be gone.
    pub fn forget_all(&self) {
        if let Ok(mut map) = self.purpose_keys.write() {
            map.clear();
        }
        self.forget_active(None);
        self.forget_index_keys();
        if let Ok(mut cache) = self.subject_keys.lock() {
            cache.clear();
            crate::metrics::get().key_cache_entries.set(0);
        }
    }

    /// Whether the root key this process holds is the one the store's keys are wrapped under
    /// (compared by key check value, in constant time): false once another node changed it.
    ///
    /// The root key is held (read-locked) while the stored check value is read: `rotate_root`
    /// holds it write-locked from before it stores the new check value until this process holds
    /// the new key, so the two read here are of one moment. Read the other way round, a check
    /// value read just before this node's own root change, compared with the key taken just
    /// after it, would make the node think another node had replaced its key.
    pub fn root_is_current(&self) -> Result<bool, KeyError> {
        use subtle::ConstantTimeEq;
        let root = self.root.read().map_err(|_| KeyError::CorruptMeta)?;
        let stored = self
            .store
            .meta(META_KEY_CHECK)?
            .ok_or(KeyError::CorruptMeta)?;
        let mine = kdf::key_check_value(&root)?;
        Ok(stored.len() == mine.len() && bool::from(stored.as_slice().ct_eq(&mine[..])))
    }

    /// The check value of the root key this process holds, hex.
    pub fn current_check_value(&self) -> Result<String, KeyError> {
        let root = self.root.read().map_err(|_| KeyError::CorruptMeta)?;
        Ok(hex::encode(kdf::key_check_value(&root)?))
    }

    /// What a root change names as the root it changes: the check value of the root key this
    /// process holds, and a digest of the audit key as the store holds it wrapped under that
    /// root. Every root change wraps the audit key again under a fresh nonce, so the mark moves
    /// even when the root goes back to an earlier key.
    pub fn current_root_mark(&self) -> Result<String, KeyError> {
        let wrapped = self
            .store
            .meta(META_AUDIT_KEY)?
            .ok_or(KeyError::CorruptMeta)?;
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&wrapped);
        Ok(format!(
            "{}:{}",
            self.current_check_value()?,
            hex::encode(digest.get(..16).unwrap_or_default())
        ))
    }

    /// Forgets an unwrapped purpose key version (after its destruction or a minimum change).
    pub fn forget_purpose_key(&self, purpose: Purpose, version: u32) {
        if let Ok(mut map) = self.purpose_keys.write() {
            map.remove(&(purpose, version));
        }
        self.forget_active(Some(purpose));
    }
}

/// The minimum decryption version the rows of one purpose bar: one above the highest barred.
fn min_of(rows: &[PurposeKeyRow]) -> u32 {
    rows.iter()
        .filter(|r| r.barred)
        .map(|r| r.version.saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// The audit key of the store `store_id`, unwrapped under `root`. It unwraps only with the store
/// id it was made for, so a changed store id is refused here.
fn open_audit_key(
    store: &dyn Store,
    root: &RootKey,
    store_id: StoreId,
) -> Result<AuditKey, KeyError> {
    let wrapped = store.meta(META_AUDIT_KEY)?.ok_or(KeyError::CorruptMeta)?;
    let aad = crypto::aad(&AadContext::AuditKey {
        store_id: store_id.as_bytes(),
    });
    let bytes = crypto::open(root, &aad, &wrapped)?;
    AuditKey::from_slice(&bytes).ok_or(KeyError::Crypto(CryptoError::Open))
}

fn wrap_purpose_key(
    root: &RootKey,
    algorithm: Algorithm,
    purpose: Purpose,
    version: u32,
    key: &PurposeKey,
) -> Result<Vec<u8>, KeyError> {
    let aad = crypto::aad(&AadContext::PurposeKey {
        purpose: purpose.as_str(),
        version,
    });
    Ok(crypto::seal(
        root,
        algorithm,
        version,
        &aad,
        key.expose_secret(),
    )?)
}

/// Refuses a store of another key format (clearly, before any key is derived) and reads its
/// store id.
fn check_format(store: &dyn Store) -> Result<StoreId, KeyError> {
    if store.meta(META_ROOT)?.is_none() {
        return Err(StoreError::NotInitialized.into());
    }
    let format = store.meta(META_KEY_FORMAT)?;
    if format.as_deref() != Some(KEY_FORMAT.to_string().as_bytes()) {
        return Err(KeyError::UnsupportedFormat {
            found: format.map_or_else(
                || "1".into(),
                |f| String::from_utf8_lossy(&f).chars().take(16).collect(),
            ),
        });
    }
    let id = store.meta(META_STORE_ID)?.ok_or(KeyError::CorruptMeta)?;
    StoreId::from_slice(&id).ok_or(KeyError::CorruptMeta)
}

/// The associated data an HSM seals the root key of store `store_id` under.
fn hsm_aad(store_id: StoreId) -> Vec<u8> {
    let mut aad = b"kluis.v1.root-key-seal".to_vec();
    aad.extend_from_slice(store_id.as_bytes());
    aad
}

/// Derives a root key from a secret, with the metadata that lets it be derived again.
fn root_from_secret(
    secret: &RootSecret,
    store_id: StoreId,
) -> Result<(RootMeta, RootKey), KeyError> {
    Ok(match secret {
        RootSecret::Passphrase(p) => {
            let mut salt = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut salt);
            let params = KdfParams::RFC9106_SECOND;
            let root = kdf::derive_root_key(p.as_bytes(), &salt, params)?;
            (
                RootMeta::Passphrase {
                    kdf: "argon2id".into(),
                    params,
                    salt: hex::encode(salt),
                },
                root,
            )
        }
        RootSecret::KeyFile(k) => (RootMeta::KeyFile, RootKey::from_bytes(k.expose_secret())),
        RootSecret::Shares(shares) => {
            // A new seal takes the whole set, so that every share is known to open it.
            let meta = ShareSetMeta::of(shares)?;
            (RootMeta::Shares(meta), shares::combine(shares)?)
        }
        RootSecret::Hsm(hsm) => {
            hsm.ensure_key()?;
            let root = RootKey::generate();
            let sealed = hsm.seal_root(&root, &hsm_aad(store_id))?;
            (RootMeta::Pkcs11(sealed), root)
        }
    })
}

/// Derives or reads the root key for `secret` and checks it against the stored key check value.
fn check_root(
    store: &dyn Store,
    secret: &RootSecret,
    store_id: StoreId,
) -> Result<RootKey, KeyError> {
    let meta = read_meta(store)?;
    let root = derive_root(&meta, secret, store_id)?;
    let check = store.meta(META_KEY_CHECK)?.ok_or(KeyError::CorruptMeta)?;
    if !kdf::key_matches(&root, &check) {
        tracing::warn!(
            source = secret.kind(),
            "unseal refused: root key check failed"
        );
        return Err(KeyError::WrongRootKey);
    }
    Ok(root)
}

fn read_meta(store: &dyn Store) -> Result<RootMeta, KeyError> {
    let meta = store.meta(META_ROOT)?.ok_or(StoreError::NotInitialized)?;
    serde_json::from_slice(&meta).map_err(|_| KeyError::CorruptMeta)
}

/// The root key `secret` gives under the derivation `meta` records.
fn derive_root(
    meta: &RootMeta,
    secret: &RootSecret,
    store_id: StoreId,
) -> Result<RootKey, KeyError> {
    Ok(match (meta, secret) {
        (
            RootMeta::Passphrase {
                kdf: name,
                params,
                salt,
            },
            RootSecret::Passphrase(p),
        ) => {
            if name != "argon2id" {
                return Err(KeyError::CorruptMeta);
            }
            params.check_strength()?;
            let salt = hex::decode(salt).map_err(|_| KeyError::CorruptMeta)?;
            kdf::derive_root_key(p.as_bytes(), &salt, *params)?
        }
        (RootMeta::KeyFile, RootSecret::KeyFile(k)) => RootKey::from_bytes(k.expose_secret()),
        (RootMeta::Shares(set), RootSecret::Shares(given)) => {
            for share in given {
                set.check(share)?;
            }
            shares::combine(given)?
        }
        (RootMeta::Pkcs11(sealed), RootSecret::Hsm(hsm)) => {
            hsm.open_root(sealed, &hsm_aad(store_id))?
        }
        (RootMeta::Shares(_), _) => {
            return Err(KeyError::SourceMismatch {
                expected: "quorum of key shares",
            });
        }
        (RootMeta::Pkcs11(_), _) => {
            return Err(KeyError::SourceMismatch { expected: "HSM" });
        }
        (RootMeta::Passphrase { .. }, _) => {
            return Err(KeyError::SourceMismatch {
                expected: "passphrase",
            });
        }
        (RootMeta::KeyFile, _) => {
            return Err(KeyError::SourceMismatch {
                expected: "key file",
            });
        }
    })
}

/// A bounded cache of unwrapped subject keys; evicts the oldest entry when full.
struct SubjectKeyCache {
    capacity: usize,
    map: HashMap<(SubjectId, Purpose), (u32, Arc<SubjectKey>)>,
    order: VecDeque<(SubjectId, Purpose)>,
    /// The times keys were forgotten (`remove`, `clear`).
    forgotten: u64,
}

impl SubjectKeyCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
            forgotten: 0,
        }
    }

    fn get(&self, subject: &SubjectId, purpose: Purpose) -> Option<(u32, Arc<SubjectKey>)> {
        self.map
            .get(&(subject.clone(), purpose))
            .map(|(g, k)| (*g, Arc::clone(k)))
    }

    /// Forgets every key, counted as one forgetting.
    fn clear(&mut self) {
        self.forgotten = self.forgotten.wrapping_add(1);
        self.map.clear();
        self.order.clear();
    }

    fn remove(&mut self, subject: &SubjectId, purpose: Purpose) {
        self.forgotten = self.forgotten.wrapping_add(1);
        let id = (subject.clone(), purpose);
        if self.map.remove(&id).is_some() {
            self.order.retain(|o| o != &id);
        }
    }

    fn insert(
        &mut self,
        subject: SubjectId,
        purpose: Purpose,
        generation: u32,
        key: Arc<SubjectKey>,
    ) {
        if self.capacity == 0 {
            return;
        }
        let id = (subject, purpose);
        if self.map.insert(id.clone(), (generation, key)).is_none() {
            self.order.push_back(id);
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, prelude::*};

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db")).unwrap();
        (dir, Arc::new(store))
    }

    #[test]
    fn key_file_unseals_and_other_key_file_is_refused() {
        let (dir, store) = store();
        let path = dir.path().join("root.key");
        let secret = RootSecret::create_key_file(&path).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
        let again = RootSecret::read_key_file(&path).unwrap();
        let ring = Keyring::unseal(Arc::clone(&store), &again, Algorithm::Aes256Gcm, 10).unwrap();
        ring.audit_key().unwrap();

        let other = RootSecret::create_key_file(&dir.path().join("other.key")).unwrap();
        let err =
            Keyring::unseal(Arc::clone(&store), &other, Algorithm::Aes256Gcm, 10).unwrap_err();
        assert!(matches!(err, KeyError::WrongRootKey));
        let pass = RootSecret::Passphrase(Zeroizing::new("x".into()));
        assert!(matches!(
            Keyring::unseal(store, &pass, Algorithm::Aes256Gcm, 10),
            Err(KeyError::SourceMismatch {
                expected: "key file"
            })
        ));
    }

    #[test]
    fn a_store_of_key_format_1_is_refused_clearly() {
        let (dir, store) = store();
        let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
        assert_eq!(store.meta(META_KEY_FORMAT).unwrap().unwrap(), b"4");
        Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0).unwrap();
        // A store as format 1 left it: no format recorded.
        let conn = rusqlite::Connection::open(dir.path().join("k.db")).unwrap();
        conn.execute("DELETE FROM meta WHERE key = 'key_format'", [])
            .unwrap();
        let err =
            Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0).unwrap_err();
        assert!(
            matches!(&err, KeyError::UnsupportedFormat { found } if found == "1"),
            "{err:?}"
        );
        assert!(err.to_string().contains("initialise a new store"), "{err}");
        store.set_meta(META_KEY_FORMAT, b"2").unwrap();
        assert!(matches!(
            Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0),
            Err(KeyError::UnsupportedFormat { found }) if found == "2"
        ));
        store.set_meta(META_KEY_FORMAT, b"3").unwrap();
        let err =
            Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0).unwrap_err();
        assert!(
            matches!(&err, KeyError::UnsupportedFormat { found } if found == "3"),
            "{err:?}"
        );
        assert!(err.to_string().contains("several spellings"), "{err}");
        // The twin: the format put back, the store unseals again.
        store.set_meta(META_KEY_FORMAT, b"4").unwrap();
        Keyring::unseal(store, &secret, Algorithm::Aes256Gcm, 0).unwrap();
    }

    #[test]
    fn purpose_key_states_edited_by_hand_are_not_obeyed() {
        let (dir, store) = store();
        let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
        let keys = Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0).unwrap();
        let p = Purpose::Nuisance;
        keys.rotate(p, None).unwrap();
        keys.rotate(p, None).unwrap();
        keys.set_min_decrypt_version(p, 2).unwrap();
        assert_eq!(keys.min_decrypt_version(p).unwrap(), 2);
        let v1 = || store.purpose_keys(p.as_str()).unwrap().remove(0);
        let good = keys.purpose_key_rows(p).unwrap();
        assert_eq!(good.len(), 3);
        let conn = rusqlite::Connection::open(dir.path().join("k.db")).unwrap();
        let edit = |sql: &str| {
            conn.execute(sql, [p.as_str()]).unwrap();
        };
        let fresh =
            || Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0).unwrap();
        // Each edit, then its twin (the row put back) that works again.
        let before = v1();
        for sql in [
            // The minimum lowered.
            "UPDATE purpose_keys SET barred = 0 WHERE purpose = ?1 AND version = 1",
            // A retired version made active again.
            "UPDATE purpose_keys SET state = 'active' WHERE purpose = ?1 AND version = 1",
            // Its algorithm changed.
            "UPDATE purpose_keys SET algorithm = 'xchacha20-poly1305' WHERE purpose = ?1 AND version = 1",
            // A destruction cancelled or moved.
            "UPDATE purpose_keys SET destroy_after = 1 WHERE purpose = ?1 AND version = 1",
        ] {
            edit(sql);
            let keys = fresh();
            assert!(
                matches!(keys.purpose_key_rows(p), Err(KeyError::Tampered(_))),
                "{sql}"
            );
            assert!(matches!(
                keys.min_decrypt_version(p),
                Err(KeyError::Tampered(_))
            ));
            assert!(matches!(
                keys.active_algorithm(p),
                Err(KeyError::Tampered(_))
            ));
            conn.execute(
                "UPDATE purpose_keys SET state = ?2, algorithm = ?3, destroy_after = ?4, barred = ?5
                 WHERE purpose = ?1 AND version = 1",
                rusqlite::params![p.as_str(), before.state.as_str(), before.algorithm.as_str(), before.destroy_after, before.barred],
            )
            .unwrap();
            assert_eq!(fresh().purpose_key_rows(p).unwrap(), good);
        }
        // The MAC of one version copied onto another does not vouch for it.
        conn.execute(
            "UPDATE purpose_keys SET mac = (SELECT mac FROM purpose_keys WHERE purpose = ?1 AND version = 3)
             WHERE purpose = ?1 AND version = 2",
            [p.as_str()],
        )
        .unwrap();
        assert!(matches!(
            fresh().purpose_key_rows(p),
            Err(KeyError::Tampered(_))
        ));
        // Another purpose is not affected.
        assert_eq!(
            fresh().purpose_key_rows(Purpose::Contract).unwrap().len(),
            1
        );
    }

    #[test]
    fn the_store_id_is_random_per_init_and_bound_to_the_audit_key() {
        let (dir, store) = store();
        let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
        let ring = Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0).unwrap();
        let id = ring.store_id();
        assert_eq!(store.meta(META_STORE_ID).unwrap().unwrap(), id.as_bytes());
        ring.audit_key().unwrap();
        // Another store initialised with the same root key gets another id.
        let other = SqliteStore::open(&dir.path().join("other.db")).unwrap();
        Keyring::initialize(&other, &secret, Algorithm::Aes256Gcm).unwrap();
        assert_ne!(other.meta(META_STORE_ID).unwrap().unwrap(), id.as_bytes());
        // A store id changed in the store: the audit key no longer unwraps, and the store is
        // refused at unseal.
        store
            .set_meta(META_STORE_ID, StoreId::generate().as_bytes())
            .unwrap();
        assert!(matches!(
            Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0),
            Err(KeyError::Crypto(CryptoError::Open))
        ));
        // Put back, it does again (the twin).
        store.set_meta(META_STORE_ID, id.as_bytes()).unwrap();
        let back = Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0).unwrap();
        back.audit_key().unwrap();
        store.set_meta(META_STORE_ID, b"short").unwrap();
        assert!(matches!(
            Keyring::unseal(store, &secret, Algorithm::Aes256Gcm, 0),
            Err(KeyError::CorruptMeta)
        ));
    }

    #[test]
    fn root_and_purpose_keys_wrap_under_subkeys_per_algorithm() {
        let (dir, store) = store();
        let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
        let RootSecret::KeyFile(root) = &secret else {
            unreachable!()
        };
        let row = store.purpose_keys("nuisance").unwrap().remove(0);
        let aad = crypto::aad(&AadContext::PurposeKey {
            purpose: "nuisance",
            version: 1,
        });
        // The twin: the root key opens its purpose key through its wrapping subkey …
        let purpose_key = crypto::open(root, &aad, &row.wrapped).unwrap();
        // … but the same bytes taken as a purpose key (another use) do not.
        let as_purpose = PurposeKey::from_bytes(root.expose_secret());
        assert!(matches!(
            crypto::open(&as_purpose, &aad, &row.wrapped),
            Err(CryptoError::Open)
        ));
        // A root key that wrapped with AES-256-GCM and, after a change of algorithm, with
        // XChaCha20-Poly1305 uses two subkeys; neither is the root key or its check value.
        use crypto::EnvelopeKey;
        let aes = root.aead_subkey(Algorithm::Aes256Gcm).unwrap();
        let xchacha = root.aead_subkey(Algorithm::XChaCha20Poly1305).unwrap();
        assert_ne!(aes.expose_secret(), xchacha.expose_secret());
        assert_ne!(aes.expose_secret(), root.expose_secret());
        let kcv = store.meta(META_KEY_CHECK).unwrap().unwrap();
        assert_ne!(kcv.as_slice(), aes.expose_secret());
        assert_ne!(kcv.as_slice(), xchacha.expose_secret());
        assert_eq!(purpose_key.len(), 32);
    }

    #[test]
    fn stored_kdf_parameters_above_the_limits_are_refused_before_deriving() {
        let (_dir, store) = store();
        let pass = RootSecret::Passphrase(Zeroizing::new("een lange wachtzin".into()));
        Keyring::initialize(store.as_ref(), &pass, Algorithm::Aes256Gcm).unwrap();
        let meta = store.meta(META_ROOT).unwrap().unwrap();
        // The twin: as stored, the passphrase unseals.
        Keyring::unseal(Arc::clone(&store), &pass, Algorithm::Aes256Gcm, 0).unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        json["params"]["m_cost"] = u32::MAX.into();
        store
            .set_meta(META_ROOT, &serde_json::to_vec(&json).unwrap())
            .unwrap();
        let err = Keyring::unseal(Arc::clone(&store), &pass, Algorithm::Aes256Gcm, 0).unwrap_err();
        assert!(
            matches!(err, KeyError::Crypto(CryptoError::Kdf(_))),
            "{err:?}"
        );
        // Refused from the parameters (the error names the one), before Argon2id would try to
        // fill 4 TiB.
        assert!(err.to_string().contains("m_cost"), "{err}");
        store.set_meta(META_ROOT, &meta).unwrap();
        Keyring::unseal(store, &pass, Algorithm::Aes256Gcm, 0).unwrap();
    }

    #[test]
    fn key_file_is_never_overwritten() {
        let (dir, _) = store();
        let path = dir.path().join("root.key");
        RootSecret::create_key_file(&path).unwrap();
        assert!(RootSecret::create_key_file(&path).is_err());
    }

    #[test]
    fn subject_keys_are_created_once_and_survive_the_cache() {
        let (dir, store) = store();
        let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::XChaCha20Poly1305).unwrap();
        let ring =
            Keyring::unseal(Arc::clone(&store), &secret, Algorithm::XChaCha20Poly1305, 1).unwrap();
        let s1 = SubjectId::parse("s", "REL-1").unwrap();
        let s2 = SubjectId::parse("s", "REL-2").unwrap();
        assert!(
            ring.subject_key_at(&s1, Purpose::Nuisance, 1)
                .unwrap()
                .is_none()
        );
        let active = ring.subject_key_or_create(&s1, Purpose::Nuisance).unwrap();
        assert_eq!(active.generation, 1);
        assert_eq!(active.algorithm, Algorithm::XChaCha20Poly1305);
        let _ = ring.subject_key_or_create(&s2, Purpose::Nuisance).unwrap(); // evicts s1
        let again = ring
            .subject_key_at(&s1, Purpose::Nuisance, 1)
            .unwrap()
            .unwrap();
        assert_eq!(active.key.expose_secret(), again.expose_secret());
        let other = ring.subject_key_or_create(&s1, Purpose::Contract).unwrap();
        assert_ne!(active.key.expose_secret(), other.key.expose_secret());
    }

    /// A subject key read or made before keys were forgotten (another node's shredding or
    /// rekey taken in meanwhile, `forget_all`; a rekey here, `forget`) is not kept: it would
    /// stay in use until the next forgetting. The twins: with nothing forgotten in between,
    /// it is kept.
    #[test]
    fn a_key_read_before_keys_were_forgotten_is_not_kept() {
        let (dir, store) = store();
        let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
        let ring = Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 10).unwrap();
        let p = Purpose::Nuisance;
        let subject = |n: u32| SubjectId::parse("s", &format!("REL-{n}")).unwrap();
        let stored = ring.subject_key_or_create(&subject(1), p).unwrap();
        assert!(ring.cached(&subject(1), p).is_some());
        for forget in [
            &(|r: &Keyring| r.forget_all()) as &dyn Fn(&Keyring),
            &|r: &Keyring| r.forget(&subject(9), p),
        ] {
            ring.forget_all();
            // Read from the store as `subject_key_at` reads it, with a forgetting in between.
            let seen = ring.forgettings();
            let row = store.subject_key("REL-1", "nuisance").unwrap().unwrap();
            let key = ring.unwrap_subject_key(&subject(1), p, &row).unwrap();
            forget(&ring);
            ring.remember(&subject(1), p, row.generation, &key, seen);
            assert!(ring.cached(&subject(1), p).is_none());
            // A write's key made before a forgetting and stored after it.
            let write = ring.subject_key_for_write(&subject(2), p).unwrap();
            forget(&ring);
            ring.stored(&subject(2), p, &write);
            assert!(ring.cached(&subject(2), p).is_none());
        }
        // The twins.
        let seen = ring.forgettings();
        let row = store.subject_key("REL-1", "nuisance").unwrap().unwrap();
        let key = ring.unwrap_subject_key(&subject(1), p, &row).unwrap();
        ring.remember(&subject(1), p, row.generation, &key, seen);
        let (_, kept) = ring.cached(&subject(1), p).unwrap();
        assert_eq!(kept.expose_secret(), stored.key.expose_secret());
        let write = ring.subject_key_for_write(&subject(3), p).unwrap();
        ring.stored(&subject(3), p, &write);
        assert!(ring.cached(&subject(3), p).is_some());
        assert!(
            ring.subject_key_at(&subject(1), p, 1)
                .unwrap()
                .is_some_and(|k| k.expose_secret() == stored.key.expose_secret())
        );
    }

    #[test]
    fn rotation_rewrap_and_root_change_keep_keys_usable() {
        let (dir, store) = store();
        let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
        let ring = Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0).unwrap();
        let s1 = SubjectId::parse("s", "REL-1").unwrap();
        let before = ring.subject_key_or_create(&s1, Purpose::Safety).unwrap();
        let (v, alg) = ring
            .rotate(Purpose::Safety, Some(Algorithm::XChaCha20Poly1305))
            .unwrap();
        assert_eq!((v, alg), (2, Algorithm::XChaCha20Poly1305));
        assert_eq!(ring.rewrap_batch(Purpose::Safety, 10).unwrap(), (1, 1));
        assert_eq!(ring.rewrap_batch(Purpose::Safety, 10).unwrap(), (0, 0));
        assert_eq!(
            store
                .subject_key("REL-1", "safety")
                .unwrap()
                .unwrap()
                .purpose_version,
            2
        );
        let after = ring
            .subject_key_at(&s1, Purpose::Safety, 1)
            .unwrap()
            .unwrap();
        assert_eq!(before.key.expose_secret(), after.expose_secret());

        let new_secret = RootSecret::create_key_file(&dir.path().join("new.key")).unwrap();
        let check = ring.root_check(&new_secret).unwrap();
        let other = RootSecret::create_key_file(&dir.path().join("other.key")).unwrap();
        assert!(ring.new_root(&other, &check).unwrap().is_none());
        assert!(
            ring.new_root(
                &RootSecret::Passphrase(Zeroizing::new("a passphrase, not a key".into())),
                &check
            )
            .unwrap()
            .is_none()
        );
        let new_root = ring.new_root(&new_secret, &check).unwrap().unwrap();
        ring.rotate_root(new_root, &[]).unwrap();
        assert!(matches!(
            Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0),
            Err(KeyError::WrongRootKey)
        ));
        let reopened =
            Keyring::unseal(Arc::clone(&store), &new_secret, Algorithm::Aes256Gcm, 0).unwrap();
        reopened.audit_key().unwrap();
        let again = reopened
            .subject_key_at(&s1, Purpose::Safety, 1)
            .unwrap()
            .unwrap();
        assert_eq!(before.key.expose_secret(), again.expose_secret());
    }

    #[test]
    fn a_node_changing_its_own_root_key_never_takes_itself_for_replaced() {
        // One thread changes the root key back and forth while another keeps asking whether
        // the key held is the stored one, as a node's follower does: the answer is always yes.
        let (dir, store) = store();
        let secrets = [
            RootSecret::create_key_file(&dir.path().join("a.key")).unwrap(),
            RootSecret::create_key_file(&dir.path().join("b.key")).unwrap(),
        ];
        Keyring::initialize(store.as_ref(), &secrets[0], Algorithm::Aes256Gcm).unwrap();
        let ring = Arc::new(
            Keyring::unseal(Arc::clone(&store), &secrets[0], Algorithm::Aes256Gcm, 0).unwrap(),
        );
        let checks = [
            ring.root_check(&secrets[0]).unwrap(),
            ring.root_check(&secrets[1]).unwrap(),
        ];
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let asker = {
            let (ring, done) = (Arc::clone(&ring), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut asked = 0u32;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    assert!(ring.root_is_current().unwrap(), "after {asked} answers");
                    asked += 1;
                }
                asked
            })
        };
        for n in 0..40 {
            let next = (n + 1) % 2;
            let root = ring
                .new_root(&secrets[next], &checks[next])
                .unwrap()
                .unwrap();
            ring.rotate_root(root, &[]).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(asker.join().unwrap() > 0);
    }

    #[test]
    fn tampered_wrapped_subject_key_fails_to_unwrap() {
        let (dir, store) = store();
        let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
        let ring = Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0).unwrap();
        let s1 = SubjectId::parse("s", "REL-1").unwrap();
        ring.subject_key_or_create(&s1, Purpose::Nuisance).unwrap();
        // A wrapped key of one subject presented as another's must not unwrap.
        let row = store.subject_key("REL-1", "nuisance").unwrap().unwrap();
        let moved = SubjectKeyRow {
            subject: "REL-2".into(),
            ..row
        };
        store
            .insert_subject_key(
                &moved,
                &crate::store::AnchorRow {
                    subject: "REL-2".into(),
                    holds: 0,
                    consents: 0,
                    digest: Vec::new(),
                    mac: Vec::new(),
                },
            )
            .unwrap();
        let s2 = SubjectId::parse("s", "REL-2").unwrap();
        assert!(matches!(
            ring.subject_key_at(&s2, Purpose::Nuisance, 1),
            Err(KeyError::Crypto(CryptoError::Open))
        ));
    }
}
