//! The tamper-evident audit trail: append-only entries, each holding the hash of the previous
//! one and a MAC under the audit key, so an edited, deleted, inserted or reordered entry is found
//! by `verify`.
//!
//! Invariant: entries hold identifiers, decisions and reasons — never field values, tokens or
//! key material.
//! Invariant: `AuditSeq` is only constructed here, by a committed `append`; a `policy::Grant`
//! needs one, so nothing is decrypted before its audit entry is durable.
//! Invariant: knows neither gRPC nor SQL.

use std::sync::{Arc, mpsc};

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

/// A MAC'd head of the trail: sequence number and hash of the last entry. Operators store it
/// elsewhere; `verify` with it detects a truncated tail.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Head {
    /// Sequence number of the last entry (0 for an empty trail).
    pub seq: u64,
    /// Hash of the last entry, hex.
    pub hash: String,
    /// HMAC-SHA-256 of the head under the audit key, hex: proves the head came from this vault.
    pub mac: String,
}

/// Which entries to read.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only entries about this subject.
    pub subject: Option<String>,
    /// Only entries by this principal.
    pub principal: Option<String>,
    /// Only entries at or after this time (unix seconds).
    pub since: Option<i64>,
    /// Only break-glass entries.
    pub break_glass: bool,
    /// Only these actions (all when empty).
    pub actions: Vec<String>,
}

impl Filter {
    fn matches(&self, e: &AuditEvent) -> bool {
        self.subject
            .as_ref()
            .is_none_or(|s| e.subject.as_ref() == Some(s))
            && self.principal.as_ref().is_none_or(|p| &e.principal == p)
            && self.since.is_none_or(|t| e.time >= t)
            && (!self.break_glass || e.break_glass)
            && (self.actions.is_empty() || self.actions.iter().any(|a| a == &e.action))
    }
}

/// Most entries written in one transaction.
const MAX_BATCH: usize = 512;

struct Pending {
    entry: Vec<u8>,
    reply: mpsc::SyncSender<Result<u64, AuditError>>,
}

/// The audit trail of one store. Appends go through one writer thread that commits whatever is
/// queued in one transaction (group commit), so concurrent requests share a commit.
pub struct Audit {
    store: Arc<dyn Store>,
    key: Arc<AuditKey>,
    queue: Option<mpsc::Sender<Pending>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        // Closing the queue ends the writer after it has committed what is queued.
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Audit {
    /// Opens the trail, positioned after its last entry, and starts its writer.
    pub fn open(store: Arc<dyn Store>, key: AuditKey) -> Result<Self, AuditError> {
        let tail = read_tail(store.as_ref())?;
        let key = Arc::new(key);
        let (tx, rx) = mpsc::channel();
        let writer = {
            let store = Arc::clone(&store);
            let key = Arc::clone(&key);
            std::thread::Builder::new()
                .name("kluis-audit".into())
                .spawn(move || write_loop(store.as_ref(), &key, &rx, tail))
                .map_err(|e| {
                    AuditError::Unavailable(format!("cannot start the audit writer: {e}"))
                })?
        };
        Ok(Self {
            store,
            key,
            queue: Some(tx),
            writer: Some(writer),
        })
    }

    /// Appends `event` and returns once it is committed. Fails with `Unavailable` when it
    /// cannot be written.
    pub fn append(&self, event: &AuditEvent) -> Result<AuditSeq, AuditError> {
        let entry = serde_json::to_vec(event).map_err(|_| AuditError::Encode)?;
        let (reply, answer) = mpsc::sync_channel(1);
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| AuditError::Unavailable("audit trail closed".into()))?;
        queue
            .send(Pending { entry, reply })
            .map_err(|_| AuditError::Unavailable("audit writer stopped".into()))?;
        let seq = answer
            .recv()
            .map_err(|_| AuditError::Unavailable("audit writer stopped".into()))??;
        Ok(AuditSeq(seq))
    }

    /// The current head, MAC'd under the audit key.
    pub fn head(&self) -> Result<Head, AuditError> {
        let (seq, hash) = read_tail(self.store.as_ref())?;
        Ok(Head {
            seq,
            hash: hex::encode(hash),
            mac: hex::encode(self.head_mac(seq, &hash)),
        })
    }

    fn head_mac(&self, seq: u64, hash: &[u8; 32]) -> [u8; 32] {
        let mut data = b"kluis.v1.audit-head".to_vec();
        data.extend_from_slice(&seq.to_be_bytes());
        data.extend_from_slice(hash);
        kdf::mac(self.key.expose_secret(), &data)
    }

    /// Walks the whole trail and reports the first entry that is edited, missing, inserted or
    /// out of order, or the count and head hash when all is intact. With `expect`, a trail that
    /// ends before the anchored head, or differs from it, is reported too.
    pub fn verify(&self, expect: Option<&Head>) -> Result<Verification, AuditError> {
        if let Some(head) = expect {
            let hash = parse_hash(&head.hash);
            let mac_ok = hash.is_some_and(|h| {
                hex::decode(&head.mac)
                    .is_ok_and(|m| bool::from(m.ct_eq(&self.head_mac(head.seq, &h))))
            });
            if !head.mac.is_empty() && !mac_ok {
                return Ok(Verification::Broken {
                    seq: head.seq,
                    problem:
                        "the expected head's MAC is not this vault's (forged or mistyped head)"
                            .into(),
                });
            }
        }
        let mut expected_seq = 1u64;
        let mut prev = [0u8; 32];
        let mut anchored = false;
        loop {
            let page = self.store.audit_entries(expected_seq, 1000)?;
            if page.is_empty() {
                let count = expected_seq - 1;
                if let Some(head) = expect {
                    if head.seq > count {
                        return Ok(Verification::Broken {
                            seq: count + 1,
                            problem: format!(
                                "the trail ends at entry {count} but the anchored head is entry {}: entries were removed from the tail",
                                head.seq
                            ),
                        });
                    }
                    if !anchored && head.seq > 0 {
                        return Ok(Verification::Broken {
                            seq: head.seq,
                            problem: "entry does not match the anchored head".into(),
                        });
                    }
                }
                return Ok(Verification::Intact {
                    count,
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
                    return Ok(broken("MAC does not match (written without the audit key)"));
                }
                if let Some(head) = expect
                    && head.seq == row.seq
                {
                    if parse_hash(&head.hash) != Some(hash) {
                        return Ok(broken("entry does not match the anchored head"));
                    }
                    anchored = true;
                }
                prev = hash;
                expected_seq += 1;
            }
        }
    }

    /// Calls `f` with every entry matching `filter`, in order, until it returns false.
    /// Entries that do not parse are skipped (`verify` reports them).
    pub fn scan(
        &self,
        filter: &Filter,
        mut f: impl FnMut(u64, &AuditEvent, &[u8]) -> bool,
    ) -> Result<(), AuditError> {
        let mut from = 1u64;
        loop {
            let page = self.store.audit_entries(from, 1000)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            from = last.seq + 1;
            for row in &page {
                let Ok(event) = serde_json::from_slice::<AuditEvent>(&row.entry) else {
                    continue;
                };
                if filter.matches(&event) && !f(row.seq, &event, &row.entry) {
                    return Ok(());
                }
            }
        }
    }
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
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

/// The writer: takes what is queued (up to `MAX_BATCH`), chains it onto the tail, commits it in
/// one transaction, then answers every waiting request.
fn write_loop(
    store: &dyn Store,
    key: &AuditKey,
    queue: &mpsc::Receiver<Pending>,
    mut tail: (u64, [u8; 32]),
) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut outcome = Err(AuditError::Unavailable(
            "could not claim audit sequence numbers".into(),
        ));
        for _attempt in 0..3 {
            let (mut seq, mut prev) = tail;
            let rows: Vec<AuditRow> = batch
                .iter()
                .map(|p| {
                    seq += 1;
                    let hash = entry_hash(seq, &prev, &p.entry);
                    let row = AuditRow {
                        seq,
                        entry: p.entry.clone(),
                        prev_hash: prev.to_vec(),
                        hash: hash.to_vec(),
                        mac: kdf::mac(key.expose_secret(), &hash).to_vec(),
                    };
                    prev = hash;
                    row
                })
                .collect();
            match store.append_audit(&rows) {
                Ok(()) => {
                    outcome = Ok(tail.0 + 1);
                    tail = (seq, prev);
                    break;
                }
                // Another writer (another node) took these numbers: move to the real tail.
                Err(StoreError::Conflict(_)) => match read_tail(store) {
                    Ok(t) => tail = t,
                    Err(e) => {
                        outcome = Err(AuditError::Unavailable(e.to_string()));
                        break;
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, entries = rows.len(), "audit append failed");
                    outcome = Err(AuditError::Unavailable(e.to_string()));
                    break;
                }
            }
        }
        match outcome {
            Ok(first_seq) => {
                for (i, p) in batch.into_iter().enumerate() {
                    let _ = p.reply.send(Ok(first_seq + i as u64));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for p in batch {
                    let _ = p.reply.send(Err(AuditError::Unavailable(message.clone())));
                }
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
            audit.verify(None).unwrap(),
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
            audit.verify(None).unwrap(),
            Verification::Broken { seq: 2, .. }
        ));
    }

    #[test]
    fn concurrent_appends_share_commits_and_chain() {
        let (_d, _s, audit) = trail();
        let audit = Arc::new(audit);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let audit = Arc::clone(&audit);
                std::thread::spawn(move || {
                    (0..50)
                        .map(|n| audit.append(&event(t * 100 + n)).unwrap().value())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
        assert!(matches!(
            audit.verify(None).unwrap(),
            Verification::Intact { count: 400, .. }
        ));
    }

    #[test]
    fn head_is_maced_and_detects_truncation() {
        let (_d, store, audit) = trail();
        for n in 0..4 {
            audit.append(&event(n)).unwrap();
        }
        let head = audit.head().unwrap();
        assert_eq!(head.seq, 4);
        assert!(matches!(
            audit.verify(Some(&head)).unwrap(),
            Verification::Intact { count: 4, .. }
        ));
        let forged = Head {
            mac: hex::encode([0u8; 32]),
            ..head.clone()
        };
        assert!(matches!(
            audit.verify(Some(&forged)).unwrap(),
            Verification::Broken { .. }
        ));
        let conn = rusqlite::Connection::open(store.path()).unwrap();
        conn.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
        assert!(matches!(
            audit.verify(None).unwrap(),
            Verification::Intact { count: 3, .. }
        ));
        assert!(matches!(
            audit.verify(Some(&head)).unwrap(),
            Verification::Broken { seq: 4, .. }
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
            audit.verify(None).unwrap(),
            Verification::Broken { seq: 2, .. }
        ));
    }
}
