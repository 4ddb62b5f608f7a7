//! The blind-index key: versions of one random key, kept apart from every encryption key,
//! wrapped under the root key, from which the tag key of each (purpose, field) is derived
//! (`IndexKey::tag_subkey`).
//!
//! The versions live in the meta row `index_keys`: a JSON list of (version, state, creation,
//! wrapped material), under a row MAC (`RowAuth::seal_meta`), each version's material sealed
//! under the root key with the store id and the version in its associated data. One version is
//! `active`; after a rotation the one before it is `retiring` until the backfill has tagged
//! every value under the new one, and is then dropped (its material with it). New values get a
//! tag under every version that is not dropped, so a search during the backfill finds old and new
//! values alike.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{KeyError, Keyring};
use crate::crypto::{self, AadContext, CryptoError, IndexKey, RootKey, kdf};
use crate::domain::now_unix;
use crate::store::{StoreError, TagRow};

/// The meta row that holds the index key versions.
pub(crate) const META_INDEX_KEYS: &str = "index_keys";

/// Where an index key version stands.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IndexKeyState {
    /// Tags new values; the one every search asks first.
    Active,
    /// Replaced by a newer version: still tags new values and is still searched, until the
    /// backfill has tagged every value under the active version.
    Retiring,
}

impl IndexKeyState {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexKeyState::Active => "active",
            IndexKeyState::Retiring => "retiring",
        }
    }
}

#[derive(Deserialize, Serialize)]
struct StoredVersion {
    version: u32,
    state: IndexKeyState,
    created_at: i64,
    /// Hex of the material sealed under the root key.
    wrapped: String,
}

#[derive(Default, Deserialize, Serialize)]
struct StoredIndexKeys {
    versions: Vec<StoredVersion>,
}

/// The index key versions in force, unwrapped.
pub struct IndexKeys {
    versions: Vec<(u32, IndexKeyState, i64, IndexKey)>,
    /// The meta row as read, for a compare-and-set.
    stored: Vec<u8>,
}

impl std::fmt::Debug for IndexKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.versions.iter().map(|(v, s, _, _)| (v, s)))
            .finish()
    }
}

impl IndexKeys {
    /// The active version.
    pub fn active(&self) -> u32 {
        self.versions
            .iter()
            .find(|(_, s, _, _)| *s == IndexKeyState::Active)
            .map_or(0, |(v, _, _, _)| *v)
    }

    /// Every version with its state and creation time, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = (u32, IndexKeyState, i64)> + '_ {
        self.versions.iter().map(|(v, s, at, _)| (*v, *s, *at))
    }

    /// The versions being retired.
    pub fn retiring(&self) -> Vec<u32> {
        self.versions
            .iter()
            .filter(|(_, s, _, _)| *s == IndexKeyState::Retiring)
            .map(|(v, _, _, _)| *v)
            .collect()
    }

    /// The tag of the normalised value `value` of `field` in a record of `purpose`, under
    /// every version in force: HMAC-SHA-256 under the version's tag key of (purpose, field),
    /// its first `bits` bits.
    pub fn tags(
        &self,
        purpose: &str,
        field: &str,
        value: &[u8],
        bits: u8,
    ) -> Result<Vec<TagRow>, CryptoError> {
        self.versions
            .iter()
            .map(|(version, _, _, key)| tag_under(key, *version, purpose, field, value, bits))
            .collect()
    }
}

fn tag_under(
    key: &IndexKey,
    version: u32,
    purpose: &str,
    field: &str,
    value: &[u8],
    bits: u8,
) -> Result<TagRow, CryptoError> {
    let mac = kdf::mac(&key.tag_subkey(purpose, field)?, value);
    let mut head = [0u8; 8];
    head.copy_from_slice(mac.get(..8).unwrap_or(&[0; 8]));
    let bits = bits.clamp(1, 63);
    let tag = u64::from_be_bytes(head) >> (64 - u32::from(bits));
    Ok(TagRow {
        version,
        bits,
        tag: i64::try_from(tag).unwrap_or(i64::MAX),
    })
}

fn aad(store_id: &[u8], version: u32) -> Vec<u8> {
    crypto::aad(&AadContext::IndexKey { store_id, version })
}

impl Keyring {
    /// The index key versions in force: cached; read from the store (and unwrapped) when not,
    /// and created (version 1) on a store that has none yet. Fails closed when the stored list
    /// fails its MAC or a version does not unwrap.
    pub fn index_keys(&self) -> Result<Arc<IndexKeys>, KeyError> {
        if let Ok(cache) = self.index_keys.read()
            && let Some(keys) = cache.as_ref()
        {
            return Ok(Arc::clone(keys));
        }
        let keys = Arc::new(self.read_index_keys()?);
        if let Ok(mut cache) = self.index_keys.write() {
            *cache = Some(Arc::clone(&keys));
        }
        Ok(keys)
    }

    /// Reads the versions from the store, creating version 1 when there is none.
    fn read_index_keys(&self) -> Result<IndexKeys, KeyError> {
        for _ in 0..8 {
            if let Some(stored) = self.store.meta(META_INDEX_KEYS)? {
                let root = self
                    .root
                    .read()
                    .map_err(|_| KeyError::Crypto(CryptoError::Open))?;
                return self.open_index_keys(&root, stored);
            }
            // Tags without the keys they were made under: the row was deleted, not never made.
            // A new key would leave every stored value unfindable without a word.
            if self.store.any_tags()? {
                return Err(KeyError::Tampered(
                    "index keys (the store holds tags but not the keys they were made under)"
                        .into(),
                ));
            }
            let key = IndexKey::generate();
            let next = self.seal_index_keys(&[(1, IndexKeyState::Active, now_unix(), &key)])?;
            match self.store.replace_meta(META_INDEX_KEYS, None, &next) {
                // Another caller or node made one first: read theirs.
                Ok(()) | Err(StoreError::Stale(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(KeyError::Store(StoreError::Stale(
            "the index keys changed under every read".into(),
        )))
    }

    fn open_index_keys(&self, root: &RootKey, stored: Vec<u8>) -> Result<IndexKeys, KeyError> {
        let tampered = || KeyError::Tampered("index keys".into());
        let bytes = self
            .rows
            .open_meta(META_INDEX_KEYS, &stored)
            .map_err(|_| tampered())?;
        let list: StoredIndexKeys = serde_json::from_slice(bytes).map_err(|_| tampered())?;
        let mut versions = Vec::with_capacity(list.versions.len());
        for v in list.versions {
            let wrapped = hex::decode(&v.wrapped).map_err(|_| tampered())?;
            let bytes = crypto::open(root, &aad(self.store_id.as_bytes(), v.version), &wrapped)?;
            let key = IndexKey::from_slice(&bytes).ok_or_else(tampered)?;
            versions.push((v.version, v.state, v.created_at, key));
        }
        let active = versions
            .iter()
            .filter(|(_, s, _, _)| *s == IndexKeyState::Active)
            .count();
        if active != 1 {
            return Err(tampered());
        }
        Ok(IndexKeys { versions, stored })
    }

    fn seal_index_keys(
        &self,
        versions: &[(u32, IndexKeyState, i64, &IndexKey)],
    ) -> Result<Vec<u8>, KeyError> {
        let root = self
            .root
            .read()
            .map_err(|_| KeyError::Crypto(CryptoError::Open))?;
        self.seal_index_keys_under(&root, versions)
    }

    fn seal_index_keys_under(
        &self,
        root: &RootKey,
        versions: &[(u32, IndexKeyState, i64, &IndexKey)],
    ) -> Result<Vec<u8>, KeyError> {
        let mut list = StoredIndexKeys::default();
        for (version, state, created_at, key) in versions {
            let wrapped = crypto::seal(
                root,
                self.root_algorithm,
                *version,
                &aad(self.store_id.as_bytes(), *version),
                key.expose_secret(),
            )?;
            list.versions.push(StoredVersion {
                version: *version,
                state: *state,
                created_at: *created_at,
                wrapped: hex::encode(wrapped),
            });
        }
        let json = Zeroizing::new(serde_json::to_vec(&list).map_err(|_| KeyError::CorruptMeta)?);
        Ok(self.rows.seal_meta(META_INDEX_KEYS, &json))
    }

    /// Makes a new index key version active; the active one becomes `retiring`. Refused while
    /// an earlier rotation's backfill has not finished (one retiring version at a time).
    /// Returns the new version.
    pub fn rotate_index_key(&self) -> Result<u32, KeyError> {
        self.forget_index_keys();
        let current = self.read_index_keys()?;
        if !current.retiring().is_empty() {
            return Err(KeyError::Store(StoreError::Stale(
                "an earlier rotation of the index key is still being backfilled; run \
                 `kluis admin keys reindex` until it reports the old version dropped"
                    .into(),
            )));
        }
        let next_version = current
            .versions
            .iter()
            .map(|(v, _, _, _)| *v)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let key = IndexKey::generate();
        let mut versions: Vec<(u32, IndexKeyState, i64, &IndexKey)> = current
            .versions
            .iter()
            .map(|(v, _, at, k)| (*v, IndexKeyState::Retiring, *at, k))
            .collect();
        versions.push((next_version, IndexKeyState::Active, now_unix(), &key));
        let next = self.seal_index_keys(&versions)?;
        let result = self
            .store
            .replace_meta(META_INDEX_KEYS, Some(&current.stored), &next);
        self.forget_index_keys();
        result?;
        crate::metrics::key_operation("index-rotate");
        Ok(next_version)
    }

    /// Drops the retiring versions `versions` (their material with them), once nothing is
    /// tagged under them any more. A no-op for versions that are not retiring.
    pub fn drop_index_keys(&self, versions: &[u32]) -> Result<(), KeyError> {
        self.forget_index_keys();
        let current = self.read_index_keys()?;
        let kept: Vec<(u32, IndexKeyState, i64, &IndexKey)> = current
            .versions
            .iter()
            .filter(|(v, s, _, _)| !(*s == IndexKeyState::Retiring && versions.contains(v)))
            .map(|(v, s, at, k)| (*v, *s, *at, k))
            .collect();
        if kept.len() == current.versions.len() {
            return Ok(());
        }
        let next = self.seal_index_keys(&kept)?;
        let result = self
            .store
            .replace_meta(META_INDEX_KEYS, Some(&current.stored), &next);
        self.forget_index_keys();
        result?;
        Ok(())
    }

    /// The index key versions, opened under `old_root`, sealed under `new_root`, for a root key
    /// change (`None` when the store has none yet).
    pub(super) fn index_keys_under(
        &self,
        old_root: &RootKey,
        new_root: &RootKey,
    ) -> Result<Option<Vec<u8>>, KeyError> {
        let Some(stored) = self.store.meta(META_INDEX_KEYS)? else {
            return Ok(None);
        };
        let current = self.open_index_keys(old_root, stored)?;
        let versions: Vec<(u32, IndexKeyState, i64, &IndexKey)> = current
            .versions
            .iter()
            .map(|(v, s, at, k)| (*v, *s, *at, k))
            .collect();
        self.seal_index_keys_under(new_root, &versions).map(Some)
    }

    /// Forgets the cached index keys (another node may have rotated them).
    pub fn forget_index_keys(&self) {
        if let Ok(mut cache) = self.index_keys.write() {
            *cache = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        crypto::Algorithm,
        keys::RootSecret,
        store::{SqliteStore, prelude::*},
    };

    fn ring() -> (tempfile::TempDir, Arc<SqliteStore>, RootSecret, Keyring) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("k.db")).unwrap());
        let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
        Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
        let ring = Keyring::unseal(store.clone(), &secret, Algorithm::Aes256Gcm, 0).unwrap();
        (dir, store, secret, ring)
    }

    fn tag(ring: &Keyring) -> Vec<TagRow> {
        ring.index_keys()
            .unwrap()
            .tags("contract", "email", b"j@example.nl", 16)
            .unwrap()
    }

    #[test]
    fn the_index_key_is_made_once_and_gives_the_same_tags_on_every_node() {
        let (_dir, store, secret, ring) = ring();
        assert!(store.meta(META_INDEX_KEYS).unwrap().is_none());
        let first = tag(&ring);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].version, 1);
        assert!(first[0].tag < 1 << 16);
        // Another node (another keyring on the store) reads the same key.
        let other = Keyring::unseal(store.clone(), &secret, Algorithm::Aes256Gcm, 0).unwrap();
        assert_eq!(tag(&other), first);
        // The twin: another value, field or purpose gets another tag.
        let keys = ring.index_keys().unwrap();
        let others = [
            keys.tags("contract", "email", b"k@example.nl", 16).unwrap(),
            keys.tags("contract", "phone", b"j@example.nl", 16).unwrap(),
            keys.tags("payments", "email", b"j@example.nl", 16).unwrap(),
        ];
        assert!(others.iter().filter(|t| **t == first).count() == 0);
        // Truncation keeps the leading bits.
        let wide = keys.tags("contract", "email", b"j@example.nl", 32).unwrap();
        assert_eq!(wide[0].tag >> 16, first[0].tag);
    }

    #[test]
    fn rotation_tags_under_both_until_the_old_version_is_dropped() {
        let (_dir, store, secret, ring) = ring();
        let v1 = tag(&ring);
        assert_eq!(ring.rotate_index_key().unwrap(), 2);
        let both = tag(&ring);
        assert_eq!(both.len(), 2);
        assert_eq!(both[0], v1[0]);
        assert_eq!(both[1].version, 2);
        assert_ne!(both[1].tag, v1[0].tag);
        assert_eq!(ring.index_keys().unwrap().retiring(), [1]);
        assert!(ring.rotate_index_key().is_err());
        ring.drop_index_keys(&[1]).unwrap();
        let after = tag(&ring);
        assert_eq!(after, [both[1]]);
        // A root change reseals the index keys: same tags under the new root, none under the old.
        let new_secret = RootSecret::create_key_file(&_dir.path().join("new.key")).unwrap();
        let check = ring.root_check(&new_secret).unwrap();
        let new_root = ring.new_root(&new_secret, &check).unwrap().unwrap();
        ring.rotate_root(new_root, &[]).unwrap();
        let reopened =
            Keyring::unseal(store.clone(), &new_secret, Algorithm::Aes256Gcm, 0).unwrap();
        assert_eq!(tag(&reopened), after);
        drop(secret);
    }

    #[test]
    fn index_keys_edited_in_the_store_are_refused() {
        let (dir, store, secret, ring) = ring();
        let good = tag(&ring);
        let stored = store.meta(META_INDEX_KEYS).unwrap().unwrap();
        let fresh = || Keyring::unseal(store.clone(), &secret, Algorithm::Aes256Gcm, 0).unwrap();
        // Its state turned (retiring for active), the MAC left as it was.
        let json_end = stored.len() - 32;
        let edited = String::from_utf8(stored[..json_end].to_vec())
            .unwrap()
            .replace("\"active\"", "\"retiring\"");
        let mut forged = edited.into_bytes();
        forged.extend_from_slice(&stored[json_end..]);
        let conn = rusqlite::Connection::open(dir.path().join("k.db")).unwrap();
        let put = |bytes: &[u8]| {
            conn.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'index_keys'",
                [bytes],
            )
            .unwrap();
        };
        put(&forged);
        assert!(matches!(fresh().index_keys(), Err(KeyError::Tampered(_))));
        // Another key sealed in with a valid MAC cannot be made without the audit key; a
        // wrapped key from another store does not open here either.
        let (_d2, other_store, other_secret, other_ring) = self::ring();
        tag(&other_ring);
        put(&other_store.meta(META_INDEX_KEYS).unwrap().unwrap());
        assert!(fresh().index_keys().is_err());
        drop(other_secret);
        // The twin: the row as it was works again.
        put(&stored);
        assert_eq!(tag(&fresh()), good);
        // Deleted while tags are stored: refused, not silently replaced by a new key.
        conn.execute(
            "INSERT INTO records (id, subject, purpose, labels, created_at, updated_at, mac, fields_mac)
             VALUES ('rec_t', 'S', 'contract', '{}', 0, 0, x'', x'')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO fields (record_id, name, category, kind, key_gen, sealed, mac, version)
             VALUES ('rec_t', 'email', 'contact', 'text', 1, x'00', x'', 'v')",
            [],
        )
        .unwrap();
        assert!(store.write_tags("rec_t", "email", "v", &good).unwrap());
        conn.execute("DELETE FROM meta WHERE key = 'index_keys'", [])
            .unwrap();
        assert!(matches!(fresh().index_keys(), Err(KeyError::Tampered(_))));
        assert!(store.meta(META_INDEX_KEYS).unwrap().is_none());
    }
}
