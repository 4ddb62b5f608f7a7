//! The tamper-evident audit trail: append-only entries, each holding the hash of the previous
//! one and a MAC under the audit key, so an edited, deleted, inserted or reordered entry is found
//! by `verify`.
//!
//! Invariant: entries hold identifiers, decisions and reasons — never field values, tokens or
//! key material.
//! Invariant: `AuditSeq` is only constructed here, by a committed `append`; a `policy::Grant`
//! needs one, so nothing is decrypted before its audit entry is durable.
//! Invariant: knows neither gRPC nor SQL.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    crypto::{AuditKey, kdf},
    store::{AuditRow, Store, StoreError},
};

/// Errors of the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The trail could not be written; the request that needed it must fail.
    #[error("audit trail unavailable: {0}")]
    Unavailable(String),
    /// An entry could not be encoded.
    #[error("audit entry encoding failed")]
    Encode,
    /// The store failed while reading the trail.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Proof that an audit entry was committed: its sequence number. Only `Audit::append` makes one.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct AuditSeq(u64);

impl AuditSeq {
    /// The sequence number.
    pub fn value(&self) -> u64 {
        self.0
    }

    #[cfg(test)]
    pub(crate) fn for_tests(seq: u64) -> Self {
        Self(seq)
    }
}

/// The decision on one field, as audited.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct AuditField {
    /// Field name.
    pub name: String,
    /// Field category.
    pub category: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// Ids of the deciding policies.
    pub policies: Vec<String>,
}

/// One audited event. Identifiers and decisions only.
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct AuditEvent {
    /// Unix seconds.
    pub time: i64,
    /// The acting principal.
    pub principal: String,
    /// The principal's roles.
    pub roles: Vec<String>,
    /// The id of the token used.
    pub token_id: String,
    /// What was attempted: `read`, `write`, `delete`, `list`, `token-issue`, `token-revoke`, ...
    pub action: String,
    /// Declared purpose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Declared case reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_ref: Option<String>,
    /// Declared justification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// Channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Break-glass requested.
    pub break_glass: bool,
    /// The data subject concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The record concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// `allow` or `deny` for the request as a whole.
    pub decision: String,
    /// Per-field decisions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<AuditField>,
    /// Ids of the deciding policies for a request decided as a whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The object of an administrative action (e.g. the token id issued).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A reason or note (never a value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The outcome of `verify`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Verification {
    /// Every entry checks out.
    Intact {
        /// Number of entries.
        count: u64,
        /// Hash of the last entry (hex), zeros for an empty trail.
        head: String,
    },
    /// The first entry that does not check out.
    Broken {
        /// Its sequence number (or the expected one, for a gap).
        seq: u64,
        /// What is wrong.
        problem: String,
    },
}

/// The audit trail of one store.
pub struct Audit {
    store: Arc<dyn Store>,
    key: AuditKey,
    tail: Mutex<(u64, [u8; 32])>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl Audit {
    /// Opens the trail, positioned after its last entry.
    pub fn open(store: Arc<dyn Store>, key: AuditKey) -> Result<Self, AuditError> {
        let tail = Self::read_tail(store.as_ref())?;
        Ok(Self {
            store,
            key,
            tail: Mutex::new(tail),
        })
    }

    /// Appends `event` and returns once it is committed. Fails with `Unavailable` when it
    /// cannot be written.
    pub fn append(&self, event: &AuditEvent) -> Result<AuditSeq, AuditError> {
        let entry = serde_json::to_vec(event).map_err(|_| AuditError::Encode)?;
        let mut tail = self
            .tail
            .lock()
            .map_err(|_| AuditError::Unavailable("audit lock poisoned".into()))?;
        for _attempt in 0..3 {
            let (last_seq, prev_hash) = *tail;
            let seq = last_seq + 1;
            let hash = entry_hash(seq, &prev_hash, &entry);
            let row = AuditRow {
                seq,
                entry: entry.clone(),
                prev_hash: prev_hash.to_vec(),
                hash: hash.to_vec(),
                mac: kdf::mac(self.key.expose_secret(), &hash).to_vec(),
            };
            match self.store.append_audit(&row) {
                Ok(()) => {
                    *tail = (seq, hash);
                    return Ok(AuditSeq(seq));
                }
                // Another writer took this sequence number: move to the real tail and retry.
                Err(StoreError::Conflict(_)) => {
                    *tail = Self::read_tail(self.store.as_ref())?;
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit append failed");
                    return Err(AuditError::Unavailable(e.to_string()));
                }
            }
        }
        Err(AuditError::Unavailable(
            "could not claim an audit sequence number".into(),
        ))
    }

    /// Walks the whole trail and reports the first entry that is edited, missing, inserted or
    /// out of order, or the count and head hash when all is intact.
    pub fn verify(&self) -> Result<Verification, AuditError> {
        let mut expected_seq = 1u64;
        let mut prev = [0u8; 32];
        loop {
            let page = self.store.audit_entries(expected_seq, 1000)?;
            if page.is_empty() {
                return Ok(Verification::Intact {
                    count: expected_seq - 1,
                    head: hex::encode(prev),
                });
            }
            for row in page {
                let broken = |problem: &str| Verification::Broken {
                    seq: row.seq,
                    problem: problem.into(),
                };
                if row.seq != expected_seq {
                    return Ok(Verification::Broken {
                        seq: expected_seq,
                        problem: format!("entry {expected_seq} is missing (next is {})", row.seq),
                    });
                }
                if !bool::from(row.prev_hash.ct_eq(&prev)) {
                    return Ok(broken(
                        "does not follow the previous entry (deleted, inserted or reordered)",
                    ));
                }
                let hash = entry_hash(row.seq, &prev, &row.entry);
                if !bool::from(row.hash.ct_eq(&hash)) {
                    return Ok(broken("content does not match its hash (edited)"));
                }
                let mac = kdf::mac(self.key.expose_secret(), &hash);
                if !bool::from(row.mac.ct_eq(&mac)) {
                    return Ok(broken(
                        "MAC does not match (rewritten without the audit key)",
                    ));
                }
                prev = hash;
                expected_seq += 1;
            }
        }
    }

    fn read_tail(store: &dyn Store) -> Result<(u64, [u8; 32]), AuditError> {
        match store.audit_tail()? {
            None => Ok((0, [0; 32])),
            Some(row) => {
                let hash: [u8; 32] = row
                    .hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt(format!("audit entry {}", row.seq)))?;
                Ok((row.seq, hash))
            }
        }
    }
}

/// SHA-256 over the sequence number, the previous hash and the entry.
fn entry_hash(seq: u64, prev_hash: &[u8; 32], entry: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kluis.v1.audit");
    h.update(seq.to_be_bytes());
    h.update(prev_hash);
    h.update(entry);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn trail() -> (tempfile::TempDir, Arc<SqliteStore>, Audit) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
        let audit = Audit::open(store.clone(), AuditKey::generate()).unwrap();
        (dir, store, audit)
    }

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            time: n,
            principal: "emp-1".into(),
            action: "read".into(),
            decision: "allow".into(),
            ..Default::default()
        }
    }

    #[test]
    fn appended_entries_verify() {
        let (_d, _s, audit) = trail();
        for n in 0..5 {
            assert_eq!(
                audit.append(&event(n)).unwrap().value(),
                u64::try_from(n).unwrap() + 1
            );
        }
        assert!(matches!(
            audit.verify().unwrap(),
            Verification::Intact { count: 5, .. }
        ));
    }

    #[test]
    fn verify_detects_edited_entry() {
        let (_d, store, audit) = trail();
        for n in 0..3 {
            audit.append(&event(n)).unwrap();
        }
        let conn = rusqlite::Connection::open(store.path()).unwrap();
        conn.execute("UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT), 'allow', 'deny!') AS BLOB) WHERE seq = 2", []).unwrap();
        assert!(matches!(
            audit.verify().unwrap(),
            Verification::Broken { seq: 2, .. }
        ));
    }

    #[test]
    fn verify_detects_deleted_entry() {
        let (_d, store, audit) = trail();
        for n in 0..3 {
            audit.append(&event(n)).unwrap();
        }
        let conn = rusqlite::Connection::open(store.path()).unwrap();
        conn.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        assert!(matches!(
            audit.verify().unwrap(),
            Verification::Broken { seq: 2, .. }
        ));
    }
}
