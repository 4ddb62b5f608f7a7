//! The key hierarchy: the root key (from a passphrase via Argon2id, or a key file), versioned
//! purpose keys wrapped under it, and a data key per (subject, purpose) wrapped under a purpose key
//! version. Unwrapped keys are cached in memory with a bound; nothing is ever stored in clear.
//!
//! Invariant: the root key is never written anywhere; the store holds only its key check value.
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
    crypto::{
        self, AadContext, Algorithm, AuditKey, CryptoError, PurposeKey, RootKey, SubjectKey,
        kdf::{self, KdfParams},
    },
    domain::{Purpose, SubjectId, now_unix},
    store::{PurposeKeyRow, Store, StoreError, SubjectKeyRow},
};

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
    /// The root-key metadata in the store is unreadable.
    #[error("root key metadata is corrupt")]
    CorruptMeta,
    /// A wrapped key failed to unwrap or a KDF failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What unlocks the root key: a passphrase (Argon2id) or the contents of a key file.
pub enum RootSecret {
    /// A passphrase, stretched with Argon2id.
    Passphrase(Zeroizing<String>),
    /// 32 random bytes read from a key file.
    KeyFile(RootKey),
}

impl std::fmt::Debug for RootSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootSecret::Passphrase(_) => f.write_str("RootSecret::Passphrase(<redacted>)"),
            RootSecret::KeyFile(_) => f.write_str("RootSecret::KeyFile(<redacted>)"),
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
        let text = Zeroizing::new(format!("{}\n", hex::encode(key.expose_secret())));
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| problem(e.to_string()))?;
        Ok(RootSecret::KeyFile(key))
    }

    fn kind(&self) -> &'static str {
        match self {
            RootSecret::Passphrase(_) => "passphrase",
            RootSecret::KeyFile(_) => "key file",
        }
    }
}

/// How the root key is made, as stored in the store's `root` metadata.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
enum RootMeta {
    Passphrase {
        kdf: String,
        params: KdfParams,
        salt: String,
    },
    KeyFile,
}

const META_ROOT: &str = "root";
const META_KEY_CHECK: &str = "root_key_check";
const META_AUDIT_KEY: &str = "audit_key";

/// The unsealed key hierarchy of a running vault.
pub struct Keyring {
    store: Arc<dyn Store>,
    root: RootKey,
    algorithm: Algorithm,
    purpose_keys: RwLock<HashMap<(Purpose, u32), Arc<PurposeKey>>>,
    subject_keys: Mutex<SubjectKeyCache>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Initialises an empty store: root key metadata and key check value, version 1 of every
    /// purpose key and the audit key, all in one transaction.
    pub fn initialize(
        store: &dyn Store,
        secret: &RootSecret,
        algorithm: Algorithm,
    ) -> Result<(), KeyError> {
        let (meta, root) = match secret {
            RootSecret::Passphrase(p) => {
                let mut salt = [0u8; 16];
                rand::rngs::OsRng.fill_bytes(&mut salt);
                let params = KdfParams::RFC9106_SECOND;
                let root = kdf::derive_root_key(p.as_bytes(), &salt, params)?;
                let meta = RootMeta::Passphrase {
                    kdf: "argon2id".into(),
                    params,
                    salt: hex::encode(salt),
                };
                (meta, root)
            }
            RootSecret::KeyFile(k) => (RootMeta::KeyFile, RootKey::from_bytes(k.expose_secret())),
        };
        let meta_json = serde_json::to_vec(&meta).map_err(|_| KeyError::CorruptMeta)?;
        let now = now_unix();
        let mut purpose_rows = Vec::with_capacity(Purpose::ALL.len());
        for &purpose in Purpose::ALL {
            let key = PurposeKey::generate();
            let aad = crypto::aad(&AadContext::PurposeKey {
                purpose: purpose.as_str(),
                version: 1,
            });
            purpose_rows.push(PurposeKeyRow {
                purpose: purpose.as_str().into(),
                version: 1,
                state: "active".into(),
                wrapped: crypto::seal(
                    root.expose_secret(),
                    algorithm,
                    1,
                    &aad,
                    key.expose_secret(),
                )?,
                created_at: now,
            });
        }
        let audit_key = AuditKey::generate();
        let wrapped_audit = crypto::seal(
            root.expose_secret(),
            algorithm,
            1,
            &crypto::aad(&AadContext::AuditKey),
            audit_key.expose_secret(),
        )?;
        store.initialize(
            &[
                (META_ROOT, meta_json),
                (META_KEY_CHECK, kdf::key_check_value(&root).to_vec()),
                (META_AUDIT_KEY, wrapped_audit),
            ],
            &purpose_rows,
        )?;
        Ok(())
    }

    /// True when the store has been initialised (has root key metadata).
    pub fn is_initialized(store: &dyn Store) -> Result<bool, KeyError> {
        Ok(store.meta(META_ROOT)?.is_some())
    }

    /// Unseals the key hierarchy of an initialised store: derives or reads the root key and
    /// checks it against the key check value before anything else.
    pub fn unseal(
        store: Arc<dyn Store>,
        secret: &RootSecret,
        algorithm: Algorithm,
        cache_capacity: usize,
    ) -> Result<Self, KeyError> {
        let meta = store.meta(META_ROOT)?.ok_or(StoreError::NotInitialized)?;
        let meta: RootMeta = serde_json::from_slice(&meta).map_err(|_| KeyError::CorruptMeta)?;
        let root = match (&meta, secret) {
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
        };
        let check = store.meta(META_KEY_CHECK)?.ok_or(KeyError::CorruptMeta)?;
        if !kdf::key_matches(&root, &check) {
            tracing::warn!(
                source = secret.kind(),
                "unseal refused: root key check failed"
            );
            return Err(KeyError::WrongRootKey);
        }
        Ok(Self {
            store,
            root,
            algorithm,
            purpose_keys: RwLock::new(HashMap::new()),
            subject_keys: Mutex::new(SubjectKeyCache::new(cache_capacity)),
        })
    }

    /// The audit MAC key.
    pub fn audit_key(&self) -> Result<AuditKey, KeyError> {
        let wrapped = self
            .store
            .meta(META_AUDIT_KEY)?
            .ok_or(KeyError::CorruptMeta)?;
        let bytes = crypto::open(
            self.root.expose_secret(),
            &crypto::aad(&AadContext::AuditKey),
            &wrapped,
        )?;
        AuditKey::from_slice(&bytes).ok_or(KeyError::Crypto(CryptoError::Open))
    }

    /// The algorithm new ciphertexts are sealed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The current subject key of (subject, purpose), if the subject has one.
    pub fn subject_key(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
    ) -> Result<Option<(u32, Arc<SubjectKey>)>, KeyError> {
        if let Some(hit) = self.cached(subject, purpose) {
            return Ok(Some(hit));
        }
        let Some(row) = self.store.subject_key(subject.as_str(), purpose.as_str())? else {
            return Ok(None);
        };
        Ok(Some(self.unwrap_subject_key(subject, purpose, &row)?))
    }

    /// The current subject key of (subject, purpose), created and stored when there is none.
    pub fn subject_key_or_create(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
    ) -> Result<(u32, Arc<SubjectKey>), KeyError> {
        if let Some(found) = self.subject_key(subject, purpose)? {
            return Ok(found);
        }
        let (version, purpose_key) = self.active_purpose_key(purpose)?;
        let key = SubjectKey::generate();
        let generation = 1;
        let aad = crypto::aad(&AadContext::SubjectKey {
            subject: subject.as_str(),
            purpose: purpose.as_str(),
            generation,
        });
        let row = SubjectKeyRow {
            subject: subject.as_str().into(),
            purpose: purpose.as_str().into(),
            generation,
            purpose_version: version,
            wrapped: crypto::seal(
                purpose_key.expose_secret(),
                self.algorithm,
                version,
                &aad,
                key.expose_secret(),
            )?,
            created_at: now_unix(),
        };
        // Another request may have created one meanwhile: use whichever the store kept.
        let stored = self.store.insert_subject_key(&row)?;
        self.unwrap_subject_key(subject, purpose, &stored)
    }

    fn cached(&self, subject: &SubjectId, purpose: Purpose) -> Option<(u32, Arc<SubjectKey>)> {
        let cache = self.subject_keys.lock().ok()?;
        cache.get(subject, purpose)
    }

    fn unwrap_subject_key(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        row: &SubjectKeyRow,
    ) -> Result<(u32, Arc<SubjectKey>), KeyError> {
        let purpose_key = self.purpose_key(purpose, row.purpose_version)?;
        let aad = crypto::aad(&AadContext::SubjectKey {
            subject: subject.as_str(),
            purpose: purpose.as_str(),
            generation: row.generation,
        });
        let bytes = crypto::open(purpose_key.expose_secret(), &aad, &row.wrapped)?;
        let key = Arc::new(SubjectKey::from_slice(&bytes).ok_or(CryptoError::Open)?);
        if let Ok(mut cache) = self.subject_keys.lock() {
            cache.insert(subject.clone(), purpose, row.generation, Arc::clone(&key));
        }
        Ok((row.generation, key))
    }

    fn active_purpose_key(&self, purpose: Purpose) -> Result<(u32, Arc<PurposeKey>), KeyError> {
        let rows = self.store.purpose_keys(purpose.as_str())?;
        let active = rows
            .iter()
            .rev()
            .find(|r| r.state == "active")
            .ok_or_else(|| KeyError::MissingPurposeKey(purpose.as_str().into()))?;
        Ok((active.version, self.purpose_key(purpose, active.version)?))
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
        let rows = self.store.purpose_keys(purpose.as_str())?;
        let row = rows
            .iter()
            .find(|r| r.version == version)
            .ok_or_else(|| KeyError::MissingPurposeKey(format!("{purpose} v{version}")))?;
        let aad = crypto::aad(&AadContext::PurposeKey {
            purpose: purpose.as_str(),
            version,
        });
        let bytes = crypto::open(self.root.expose_secret(), &aad, &row.wrapped)?;
        let key = Arc::new(PurposeKey::from_slice(&bytes).ok_or(CryptoError::Open)?);
        if let Ok(mut map) = self.purpose_keys.write() {
            map.insert((purpose, version), Arc::clone(&key));
        }
        Ok(key)
    }
}

/// A bounded cache of unwrapped subject keys; evicts the oldest entry when full.
struct SubjectKeyCache {
    capacity: usize,
    map: HashMap<(SubjectId, Purpose), (u32, Arc<SubjectKey>)>,
    order: VecDeque<(SubjectId, Purpose)>,
}

impl SubjectKeyCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, subject: &SubjectId, purpose: Purpose) -> Option<(u32, Arc<SubjectKey>)> {
        self.map
            .get(&(subject.clone(), purpose))
            .map(|(g, k)| (*g, Arc::clone(k)))
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
    use crate::store::SqliteStore;

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
        let s1 = SubjectId::parse("s", "rel-1").unwrap();
        let s2 = SubjectId::parse("s", "rel-2").unwrap();
        assert!(ring.subject_key(&s1, Purpose::Nuisance).unwrap().is_none());
        let (g, k1) = ring.subject_key_or_create(&s1, Purpose::Nuisance).unwrap();
        assert_eq!(g, 1);
        let _ = ring.subject_key_or_create(&s2, Purpose::Nuisance).unwrap(); // evicts s1
        let (_, again) = ring.subject_key(&s1, Purpose::Nuisance).unwrap().unwrap();
        assert_eq!(k1.expose_secret(), again.expose_secret());
        let (_, other_purpose) = ring.subject_key_or_create(&s1, Purpose::Contract).unwrap();
        assert_ne!(k1.expose_secret(), other_purpose.expose_secret());
    }

    #[test]
    fn tampered_wrapped_subject_key_fails_to_unwrap() {
        let (dir, store) = store();
        let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
        let ring = Keyring::unseal(Arc::clone(&store), &secret, Algorithm::Aes256Gcm, 0).unwrap();
        let s1 = SubjectId::parse("s", "rel-1").unwrap();
        ring.subject_key_or_create(&s1, Purpose::Nuisance).unwrap();
        // A wrapped key of one subject presented as another's must not unwrap.
        let row = store.subject_key("rel-1", "nuisance").unwrap().unwrap();
        let moved = SubjectKeyRow {
            subject: "rel-2".into(),
            ..row
        };
        store.insert_subject_key(&moved).unwrap();
        let s2 = SubjectId::parse("s", "rel-2").unwrap();
        assert!(matches!(
            ring.subject_key(&s2, Purpose::Nuisance),
            Err(KeyError::Crypto(CryptoError::Open))
        ));
    }
}
