//! The tamper-evident audit trail: append-only entries, each holding the hash of the previous
//! one and a MAC under the audit key's entry subkey, so an edited, deleted, inserted or reordered
//! entry is found by `verify`. The chain starts from a genesis hash of the store id fixed at
//! `kluis init`, and a head is MAC'd (under the head subkey) together with the store id, so the
//! trail of one store does not verify as another's, and an anchored head vouches only for the
//! store it came from.
//!
//! Invariant: entries hold identifiers, decisions and reasons — never field values, tokens or
//! key material.
//! Invariant: `AuditSeq` is only constructed here, by a committed `append`; a `policy::Grant`
//! needs one, so nothing is decrypted before its audit entry is durable.
//! Invariant: knows neither gRPC nor SQL.

pub mod anchor;

use std::{
    collections::HashMap,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    crypto::{AuditKey, CryptoError, Subkey, kdf},
    store::{AuditRow, RecordWrite, Store, StoreError},
};

/// The id of a store: 128 random bits fixed when the store is initialised, kept in its metadata
/// and bound to its audit key. A store restored from a backup keeps the id of the store the backup
/// was taken from (it is that store, continued); two stores initialised apart never share one.
#[derive(Clone, Copy, Eq, PartialEq)]
pub struct StoreId([u8; 16]);

impl StoreId {
    /// A fresh random id from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Self(id)
    }

    /// The id from its 16 stored bytes, or `None` when the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// The id from 32 hexadecimal digits.
    pub fn parse_hex(s: &str) -> Option<Self> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(Self(id))
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// 32 hexadecimal digits.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for StoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreId({})", self.to_hex())
    }
}

impl std::fmt::Display for StoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Errors of the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The trail could not be written; the request that needed it must fail.
    #[error("audit trail unavailable: {0}")]
    Unavailable(String),
    /// An entry could not be encoded.
    #[error("audit entry encoding failed")]
    Encode,
    /// The audit key's subkeys could not be derived.
    #[error("audit key: {0}")]
    Key(#[from] CryptoError),
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
    /// `allow`, `deny`, or `read-masked` (a read returned only a masked view of the field).
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
    /// The id of the credential used: a kluis token id, `cert:` and the client certificate's
    /// SHA-256 (first 16 hex digits), or `jwt` (with `:` and its `jti` when it has one).
    pub token_id: String,
    /// The service that made the call (mutual TLS or a kluis service token): acting for the
    /// employee named by `issuer` and `sub`, or on its own (a batch job) when they are absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The identity provider (`iss`) that signed the employee in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The employee's `sub` at that provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The employee's display claim, when one is configured and present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
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

/// A MAC'd head of the trail: the store, sequence number and hash of the last entry. Operators
/// store it elsewhere; `verify` with it detects a truncated tail. Only a head with the MAC of the
/// store it names is accepted as an anchor.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Head {
    /// Sequence number of the last entry (0 for an empty trail).
    pub seq: u64,
    /// Hash of the last entry, hex (the store's genesis hash for an empty trail).
    pub hash: String,
    /// HMAC-SHA-256 of store id, sequence number and hash under the audit key's head subkey,
    /// hex: proves the head came from this store.
    pub mac: String,
    /// The id of the store whose trail this is, hex.
    pub store_id: String,
}

/// One committed entry with its place in the chain (`Audit::chained_entries`).
#[derive(Clone)]
pub struct ChainedEntry {
    /// Its sequence number.
    pub seq: u64,
    /// The hash of the entry before it (the genesis hash for entry 1).
    pub prev_hash: [u8; 32],
    /// SHA-256 over `kluis.v1.audit`, the sequence number (8 bytes, big-endian), `prev_hash`
    /// and `entry`.
    pub hash: [u8; 32],
    /// The entry as stored (JSON).
    pub entry: Vec<u8>,
}

impl std::fmt::Debug for ChainedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The entry names subjects: only its place in the chain is shown.
        f.debug_struct("ChainedEntry")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
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

/// Entries waiting for their commit, and whether a caller is committing (LevelDB's writer
/// queue, as `store::sqlite::group`). A caller queues its entries; when no commit is under way
/// it leads the next one on its own thread: it takes what is queued, chains it onto the stored
/// tail, commits it in one transaction and answers every caller of the batch. A lone request
/// commits its own entry without handing it to another thread.
///
/// Each caller waits on a place of its own (`Waiter`): a leader wakes exactly the callers it
/// answered, and once its own entries are committed it hands the lead to the first caller still
/// queued, if any. Nobody wakes to find nothing for it, and no crowd of woken callers queues on
/// one lock (the cost a shared condition variable had under many concurrent requests).
///
/// A caller may also queue an entry and not wait (`Audit::append_then`, a read;
/// `Audit::append_writing_then`, a new record with its entry): it leaves what
/// is to be done once the entry is committed (`Answer::Then`), which the leader of its batch
/// runs after the commit, and its thread goes on to other work at once. Such a caller leads
/// when nobody does, one batch (a lone read commits its own entry without a hand-off), and
/// passes the lead on like a caller that waits. The lead passes to the first caller queued when
/// it waits, else to the relay thread (`relay`), which leads while callers that do not wait come
/// first: under many reads one thread commits batch after batch, and no thread sleeps per read.
///
/// An entry may carry a record write (`Audit::append_writing`), which the store makes in the
/// transaction that appends the batch, so that a write and its entry share one commit.
///
/// Invariant: a caller is answered with sequence numbers only after the transaction holding
/// its entries has committed; when that commit fails, every caller of the batch is answered
/// with the error and none of the writes is kept. (On SQLite, whose trail is a file of its own
/// committed before the store's file, a commit that fails in the store's file after the trail's
/// keeps the batch's entries, allowed writes not carried out among them, without their
/// `not carried out` follow-up: as a stop between the two files' commits leaves them. The next
/// append chains on them.)
/// Invariant: while anything is queued, one caller leads (`leading`), and it is either
/// committing or about to take the queue; the lead passes on even when a leader unwinds.
/// Invariant: `Then` runs only with the outcome of the commit that held its entry, after that
/// commit; a `Then` dropped unrun (the leader unwound, the trail closed) is never run.
struct Appender {
    state: Mutex<AppendState>,
    store: Arc<dyn Store>,
    keys: Arc<MacKeys>,
    genesis: [u8; 32],
    committed: Arc<Committed>,
    /// Where the relay thread waits to lead (`true`) or to stop (`false`).
    relay: crate::wait::Slot<bool>,
}

#[derive(Default)]
struct AppendState {
    /// The callers waiting for a batch to take them, in order.
    queue: std::collections::VecDeque<Queued>,
    /// Whether a caller leads: commits a batch or is about to.
    leading: bool,
}

/// One caller's entries, the record write the last of them carries, and how it is answered.
struct Queued {
    entries: Vec<Vec<u8>>,
    write: Option<RecordWrite>,
    answer: Answer,
}

/// How a queued caller is answered.
enum Answer {
    /// Its thread waits in its place, and may be handed the lead.
    Wait(Arc<Waiter>),
    /// Nobody waits: run by the leader once the entry's batch is committed or has failed.
    Then(Then),
}

/// What a caller that does not wait leaves to be done with its entry's sequence number (and
/// what became of the write the entry carried, if any).
type Then = Box<dyn FnOnce(Result<AuditSeq, AuditError>, Option<Carried>) + Send>;

/// Why a batch of entries was not committed, as each of its callers is told.
#[derive(Clone, Debug)]
enum NotCommitted {
    /// The trail could not be written (the store down or busy, a write refused): nothing of
    /// the batch was kept, and a later batch may succeed.
    Unavailable(String),
    /// The trail as stored is not the one to chain onto (its last entry edited, cut back or
    /// put in another's place): no batch is appended until it is put right, and `audit verify`
    /// names the entry.
    Corrupt(String),
}

impl NotCommitted {
    fn into_error(self) -> AuditError {
        match self {
            NotCommitted::Unavailable(why) => AuditError::Unavailable(why),
            NotCommitted::Corrupt(why) => AuditError::Store(StoreError::Corrupt(why)),
        }
    }
}

/// Where one caller waits to be answered or to lead.
type Waiter = crate::wait::Slot<Wake>;

/// Why a waiting caller wakes.
enum Wake {
    /// The batch holding its entries: the first one's sequence number, or why the batch
    /// failed; with what became of the write it carried.
    Answered(Result<u64, NotCommitted>, Option<Carried>),
    /// It leads the next batch (its entries are still queued).
    Lead,
}

impl Appender {
    fn lock(&self) -> MutexGuard<'_, AppendState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the lead to the first caller queued, to the relay thread when that caller does
    /// not wait, or gives it up when nobody is queued.
    fn pass_lead(&self, state: &mut AppendState) {
        match state.queue.front().map(|q| &q.answer) {
            Some(Answer::Wait(next)) => next.give(Wake::Lead),
            Some(Answer::Then(_)) => self.relay.give(true),
            None => state.leading = false,
        }
    }

    /// Queues `entries` (the last carrying `write`), and leads when nobody does: returns once
    /// the caller is answered (`Answer::Wait`), or at once when it does not wait and another
    /// leads; a caller that does not wait and leads returns when the lead has passed on.
    fn queue(
        &self,
        entries: Vec<Vec<u8>>,
        write: Option<RecordWrite>,
        answer: Answer,
    ) -> Option<(Result<u64, NotCommitted>, Option<Carried>)> {
        let own = match &answer {
            Answer::Wait(own) => Some(Arc::clone(own)),
            Answer::Then(_) => None,
        };
        {
            let mut state = self.lock();
            state.queue.push_back(Queued {
                entries,
                write,
                answer,
            });
            if state.leading {
                drop(state);
                match own.as_ref().map(|own| own.wait()) {
                    Some(Wake::Answered(outcome, carried)) => return Some((outcome, carried)),
                    Some(Wake::Lead) => {}
                    None => return None,
                }
            } else {
                state.leading = true;
            }
        }
        self.lead(own.as_ref(), false)
    }

    /// Leads: commits batches of what is queued and answers their callers. A caller that waits
    /// (`own`) leads until its own entries are committed, one that does not for one batch, and
    /// either then passes the lead on; the relay (`relay`) leads until nothing is queued or a
    /// caller that waits comes first, which is handed the lead.
    fn lead(
        &self,
        own: Option<&Arc<Waiter>>,
        relay: bool,
    ) -> Option<(Result<u64, NotCommitted>, Option<Carried>)> {
        let mut later = Vec::new();
        loop {
            let mut callers = Vec::new();
            let mut batch = Vec::new();
            let mut writes = Vec::new();
            {
                let mut state = self.lock();
                while let Some(next) = state.queue.front() {
                    if !batch.is_empty() && batch.len() + next.entries.len() > MAX_BATCH {
                        break;
                    }
                    let Some(queued) = state.queue.pop_front() else {
                        break;
                    };
                    let i = callers.len();
                    callers.push((Some(queued.answer), queued.entries.len()));
                    batch.extend(queued.entries);
                    writes.extend(queued.write.map(|w| (i, w)));
                }
            }
            let mut lead = Lead {
                appender: self,
                own,
                callers,
                outcome: None,
                written: Vec::new(),
                later: &mut later,
            };
            let (write_callers, writes): (Vec<usize>, Vec<RecordWrite>) =
                writes.into_iter().unzip();
            let (outcome, written) = commit_batch(
                self.store.as_ref(),
                &self.keys.entry,
                &batch,
                &writes,
                self.genesis,
                &self.committed,
            );
            lead.written = match written {
                Some(outcomes) => write_callers
                    .into_iter()
                    .zip(outcomes.into_iter().map(Carried::Made))
                    .collect(),
                None => write_callers
                    .into_iter()
                    .zip(writes.into_iter().map(|w| Carried::Left(Box::new(w))))
                    .collect(),
            };
            lead.outcome = Some(outcome);
            drop(lead);
            // The callers that do not wait, after the waiting ones are woken. One that panics
            // fails alone: the lead goes on.
            for (then, outcome, carried) in later.drain(..) {
                let answer = outcome.map(AuditSeq).map_err(NotCommitted::into_error);
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    then(answer, carried)
                }));
                if ran.is_err() {
                    tracing::error!("the work after a committed audit entry panicked");
                }
            }
            match own {
                Some(own) => {
                    if let Some(Wake::Answered(outcome, carried)) =
                        own.take_if(|w| matches!(w, Wake::Answered(..)))
                    {
                        let mut state = self.lock();
                        self.pass_lead(&mut state);
                        return Some((outcome, carried));
                    }
                }
                None => {
                    // The relay goes on while a caller that does not wait comes first (passing
                    // the lead would hand it to itself).
                    let mut state = self.lock();
                    let goes_on = relay
                        && matches!(
                            state.queue.front(),
                            Some(Queued {
                                answer: Answer::Then(_),
                                ..
                            })
                        );
                    if !goes_on {
                        self.pass_lead(&mut state);
                        return None;
                    }
                }
            }
        }
    }
}

/// The relay thread: leads when the lead passes while a caller that does not wait comes first
/// (`Appender::pass_lead`), until the trail closes.
fn relay(appender: &Appender) {
    while appender.relay.wait() {
        // A lead that unwinds has passed the lead on (`Lead`), maybe to this thread again.
        let led =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| appender.lead(None, true)));
        if led.is_err() {
            tracing::error!("the audit relay's lead failed unexpectedly; it goes on");
        }
    }
}

/// The lead of one batch: when dropped (after the commit, or in an unwind), answers the
/// batch's callers; in an unwind it also passes the lead on, as its caller will not.
struct Lead<'a> {
    appender: &'a Appender,
    /// The leader's own place, taken out of the queue should it unwind (none for a caller
    /// that does not wait, and for the relay).
    own: Option<&'a Arc<Waiter>>,
    /// The batch's callers, each with the number of its entries.
    callers: Vec<(Option<Answer>, usize)>,
    outcome: Option<Result<u64, NotCommitted>>,
    /// What became of each caller's write, by its place in `callers`.
    written: Vec<(usize, Carried)>,
    /// The batch's callers that do not wait, with their answers, for the leader to run once
    /// the lead is dropped (left unrun in an unwind).
    later: &'a mut Vec<(Then, Result<u64, NotCommitted>, Option<Carried>)>,
}

/// What became of the write an entry carried, which a committed batch always answers.
fn answered_write(carried: Option<Carried>) -> Result<Carried, AuditError> {
    carried.ok_or_else(|| {
        AuditError::Unavailable("the write carried by the entry has no outcome".into())
    })
}

/// What became of a record write an entry carried (`Audit::append_writing`).
pub enum Carried {
    /// The store made it in the transaction of the entry: its outcome.
    Made(Result<(), StoreError>),
    /// The store does not make writes with entries: the write, for the caller to make now.
    Left(Box<RecordWrite>),
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or_else(|| {
            Err(NotCommitted::Unavailable(
                "the audit append failed unexpectedly; it may not have been committed".into(),
            ))
        });
        let mut written: HashMap<usize, Carried> =
            std::mem::take(&mut self.written).into_iter().collect();
        let mut next = outcome.as_ref().ok().copied().unwrap_or(0);
        let unwinding = std::thread::panicking();
        for (i, (answer, n)) in self.callers.iter_mut().enumerate() {
            let result = outcome.as_ref().map(|_| next).map_err(Clone::clone);
            next += *n as u64;
            match answer.take() {
                Some(Answer::Wait(waiter)) => {
                    waiter.give(Wake::Answered(result, written.remove(&i)));
                }
                Some(Answer::Then(then)) if !unwinding => {
                    self.later.push((then, result, written.remove(&i)));
                }
                Some(Answer::Then(_)) | None => {}
            }
        }
        if unwinding {
            let mut state = self.appender.lock();
            if let Some(own) = self.own {
                state
                    .queue
                    .retain(|q| !matches!(&q.answer, Answer::Wait(w) if Arc::ptr_eq(w, own)));
            }
            self.appender.pass_lead(&mut state);
        }
    }
}

/// The audit trail of one store. Appends are committed in groups by the callers themselves
/// (`Appender`), so concurrent requests share a commit and none waits for another thread. With
/// `keep_head`, a second thread copies the head of what is committed into a head file outside
/// the store (`anchor`).
pub struct Audit {
    store: Arc<dyn Store>,
    keys: Arc<MacKeys>,
    store_id: StoreId,
    genesis: [u8; 32],
    appender: Arc<Appender>,
    committed: Arc<Committed>,
    keeper: Option<std::thread::JoinHandle<()>>,
    relay: Option<std::thread::JoinHandle<()>>,
}

/// The last committed entry (sequence number and hash), published by the writer after every
/// commit for the head keeper; `closed` once the writer has stopped.
struct Committed {
    state: Mutex<CommittedState>,
    changed: Condvar,
    /// Whether the last batch the writer tried was committed (false after a failed append,
    /// until one succeeds again).
    writable: std::sync::atomic::AtomicBool,
    /// The same news for async readers (`Audit::commits`): the last committed sequence number,
    /// and whether the trail has closed.
    news: tokio::sync::watch::Sender<(u64, bool)>,
}

#[derive(Clone, Copy, Default)]
struct CommittedState {
    seq: u64,
    hash: [u8; 32],
    closed: bool,
    /// `seq` and `hash` were read from the store when the trail opened, not committed by this
    /// process: they vouch for nothing (a row copied or edited while kluis was stopped).
    read_at_open: bool,
}

impl Committed {
    fn set_writable(&self, ok: bool) {
        let was = self.writable.swap(ok, std::sync::atomic::Ordering::SeqCst);
        if was != ok {
            if ok {
                tracing::warn!("the audit trail can be written again");
            } else {
                tracing::error!(
                    "the audit trail cannot be written: every call that needs an entry fails"
                );
            }
        }
    }

    /// Publishes the tail the trail opens on, as read from the store (`read_at_open`).
    fn open_on(&self, seq: u64, hash: [u8; 32]) {
        self.publish(seq, hash);
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .read_at_open = true;
    }

    fn publish(&self, seq: u64, hash: [u8; 32]) {
        // Plain numbers: a panic elsewhere cannot leave them half-written.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seq >= state.seq {
            state.seq = seq;
            state.hash = hash;
            state.read_at_open = false;
        }
        self.news.send_replace((state.seq, state.closed));
        self.changed.notify_all();
    }

    fn close(&self) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.closed = true;
        self.news.send_replace((state.seq, true));
        self.changed.notify_all();
    }

    fn get(&self) -> CommittedState {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        // No append is under way (it would hold a reference): the head keeper writes the last
        // head and stops.
        self.committed.close();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        self.appender.relay.give(false);
        if let Some(relay) = self.relay.take() {
            let _ = relay.join();
        }
    }
}

/// The audit key's two subkeys: one MACs entries, the other heads. The audit key itself is
/// dropped once they are derived.
struct MacKeys {
    entry: Subkey,
    head: Subkey,
}

impl Audit {
    /// Opens the trail of the store `store_id`, positioned after its last entry, and starts its
    /// writer.
    pub fn open(
        store: Arc<dyn Store>,
        key: AuditKey,
        store_id: StoreId,
    ) -> Result<Self, AuditError> {
        let keys = Arc::new(MacKeys {
            entry: key.entry_mac_subkey()?,
            head: key.head_mac_subkey()?,
        });
        drop(key);
        let genesis = genesis_hash(store_id);
        let tail = read_tail(store.as_ref(), genesis)?;
        let committed = Arc::new(Committed {
            state: Mutex::default(),
            changed: Condvar::new(),
            writable: std::sync::atomic::AtomicBool::new(true),
            news: tokio::sync::watch::Sender::new((0, false)),
        });
        committed.open_on(tail.0, tail.1);
        let appender = Arc::new(Appender {
            state: Mutex::default(),
            store: Arc::clone(&store),
            keys: Arc::clone(&keys),
            genesis,
            committed: Arc::clone(&committed),
            relay: crate::wait::Slot::default(),
        });
        let relay = {
            let appender = Arc::clone(&appender);
            std::thread::Builder::new()
                .name("kluis-audit".into())
                .spawn(move || relay(&appender))
                .map_err(|e| {
                    AuditError::Unavailable(format!("cannot start the audit relay thread: {e}"))
                })?
        };
        Ok(Self {
            store,
            keys,
            store_id,
            genesis,
            appender,
            committed,
            keeper: None,
            relay: Some(relay),
        })
    }

    /// Whether the trail can be written, as far as the last append showed: false from a failed
    /// append until one succeeds again.
    pub fn writable(&self) -> bool {
        self.committed
            .writable
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Appends `event` and returns once it is committed. Fails with `Unavailable` when it
    /// cannot be written.
    pub fn append(&self, event: &AuditEvent) -> Result<AuditSeq, AuditError> {
        let entry = serde_json::to_vec(event).map_err(|_| AuditError::Encode)?;
        let seqs = self.append_entries(vec![entry])?;
        seqs.first()
            .copied()
            .ok_or_else(|| AuditError::Unavailable("nothing was appended".into()))
    }

    /// Appends `events` (queued together, so that they are committed in one group, in order)
    /// and returns once every one is committed. Fails when any cannot be written.
    pub fn append_all(&self, events: &[AuditEvent]) -> Result<Vec<AuditSeq>, AuditError> {
        let entries = events
            .iter()
            .map(|e| serde_json::to_vec(e).map_err(|_| AuditError::Encode))
            .collect::<Result<Vec<_>, _>>()?;
        self.append_entries(entries)
    }

    /// Appends `event` and, in the same transaction where the store can, makes `write` (a
    /// write the event allows): one commit for both. Returns once the entry is committed, with
    /// the write's outcome, or the write itself when the store does not make writes with
    /// entries: the caller makes it now, after its entry, as without this call. When the
    /// entry cannot be committed, nothing is written and the call fails as `append` does.
    pub fn append_writing(
        &self,
        event: &AuditEvent,
        write: RecordWrite,
    ) -> Result<(AuditSeq, Carried), AuditError> {
        let entry = serde_json::to_vec(event).map_err(|_| AuditError::Encode)?;
        let (seqs, carried) = self.append_queued(vec![entry], Some(write))?;
        let seq = seqs
            .first()
            .copied()
            .ok_or_else(|| AuditError::Unavailable("nothing was appended".into()))?;
        Ok((seq, answered_write(carried)?))
    }

    /// Queues `entries` and returns their sequence numbers once they are committed, leading
    /// the commit of what is queued when no other caller is (see `Appender`).
    fn append_entries(&self, entries: Vec<Vec<u8>>) -> Result<Vec<AuditSeq>, AuditError> {
        Ok(self.append_queued(entries, None)?.0)
    }

    /// `append_entries`, the last entry carrying `write`; returns what became of it too.
    fn append_queued(
        &self,
        entries: Vec<Vec<u8>>,
        write: Option<RecordWrite>,
    ) -> Result<(Vec<AuditSeq>, Option<Carried>), AuditError> {
        if entries.is_empty() {
            return match write {
                Some(_) => Err(AuditError::Unavailable(
                    "a write needs an entry to carry it".into(),
                )),
                None => Ok((Vec::new(), None)),
            };
        }
        let count = entries.len() as u64;
        let own = Arc::new(Waiter::default());
        let (outcome, carried) = self
            .appender
            .queue(entries, write, Answer::Wait(own))
            .ok_or_else(|| AuditError::Unavailable("the append was not answered".into()))?;
        let first = outcome.map_err(NotCommitted::into_error)?;
        Ok(((first..first + count).map(AuditSeq).collect(), carried))
    }

    /// Queues `event` and returns at once, without waiting for its commit: `then` runs with
    /// its sequence number once it is committed, or with the error when it cannot be (on the
    /// thread that committed it, which may be this one). When the trail closes first, `then`
    /// is dropped unrun. A caller that must wait for the entry runs nothing but `then` after
    /// it: what needs the entry durable goes inside. `then` must not append to this trail and
    /// wait (it runs while its thread leads, and would wait for itself).
    pub fn append_then(
        &self,
        event: &AuditEvent,
        then: impl FnOnce(Result<AuditSeq, AuditError>) + Send + 'static,
    ) -> Result<(), AuditError> {
        let entry = serde_json::to_vec(event).map_err(|_| AuditError::Encode)?;
        self.appender.queue(
            vec![entry],
            None,
            Answer::Then(Box::new(|seq, _| then(seq))),
        );
        Ok(())
    }

    /// [`Audit::append_writing`] without waiting, as [`Audit::append_then`] appends: `then`
    /// runs once the entry is committed, with what became of `write` (made in the entry's
    /// transaction, or left for the caller to make now), or with the error when the entry
    /// cannot be committed (nothing is written then). The same rules as `append_then`: what
    /// needs the entry (and the write) durable goes inside `then`, which must not append to
    /// this trail and wait.
    pub fn append_writing_then(
        &self,
        event: &AuditEvent,
        write: RecordWrite,
        then: impl FnOnce(Result<(AuditSeq, Carried), AuditError>) + Send + 'static,
    ) -> Result<(), AuditError> {
        let entry = serde_json::to_vec(event).map_err(|_| AuditError::Encode)?;
        let then = move |seq: Result<AuditSeq, AuditError>, carried: Option<Carried>| {
            then(seq.and_then(|seq| Ok((seq, answered_write(carried)?))));
        };
        self.appender
            .queue(vec![entry], Some(write), Answer::Then(Box::new(then)));
        Ok(())
    }

    /// News of commits for a reader that follows the trail without polling: the receiver sees
    /// the last sequence number this process committed, and `true` once the trail has closed.
    /// Entries other nodes of a shared store commit are not announced here: a follower reads
    /// the store now and then as well.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<(u64, bool)> {
        self.committed.news.subscribe()
    }

    /// Up to `limit` entries from `from` on, as committed, each checked before it is handed
    /// out: the sequence numbers run on without a gap, each entry's `prev_hash` is the hash of
    /// the one before (`prev`, the hash of entry `from - 1` as read earlier; the genesis hash
    /// for entry 1; when `None`, entry `from - 1` is read and checked for it), and its hash and
    /// MAC are its own. An entry that fails is `Corrupt`, named (`verify` says more); the good
    /// entries before it are handed out first.
    pub fn chained_entries(
        &self,
        from: u64,
        prev: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<ChainedEntry>, AuditError> {
        let from = from.max(1);
        let mut prev = match prev {
            _ if from == 1 => Some(self.genesis),
            Some(prev) => Some(prev),
            // Resuming: the entry before is read (and checked) for its hash, so the first one
            // handed out is checked against it too.
            None => self
                .store
                .audit_entries(from - 1, 1)?
                .into_iter()
                .find(|row| row.seq == from - 1)
                .map(|row| self.check_chained(row, from - 1, None))
                .transpose()?
                .map(|entry| entry.hash),
        };
        let mut out = Vec::new();
        for (row, expected) in self
            .store
            .audit_entries(from, limit)?
            .into_iter()
            .zip(from..)
        {
            match self.check_chained(row, expected, prev) {
                Ok(entry) => {
                    prev = Some(entry.hash);
                    out.push(entry);
                }
                // The entries before a bad one are handed out; the next call starts at it and
                // fails.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// `row`, when it is entry `expected`, follows `prev` (when known) and carries its own hash
    /// and MAC.
    fn check_chained(
        &self,
        row: AuditRow,
        expected: u64,
        prev: Option<[u8; 32]>,
    ) -> Result<ChainedEntry, AuditError> {
        let corrupt = |what: &str| {
            AuditError::Store(StoreError::Corrupt(format!(
                "audit entry {expected} ({what}); run `kluis admin audit verify`"
            )))
        };
        if row.seq != expected {
            return Err(corrupt("missing"));
        }
        let row_prev: [u8; 32] = row
            .prev_hash
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("its previous hash is not 32 bytes"))?;
        if prev.is_some_and(|p| !bool::from(p.ct_eq(&row_prev))) {
            return Err(corrupt("it does not follow the entry before it"));
        }
        let hash = entry_hash(row.seq, &row_prev, &row.entry);
        let mac = kdf::mac(&self.keys.entry, &hash);
        if !bool::from(row.hash.ct_eq(&hash)) || !bool::from(row.mac.ct_eq(&mac)) {
            return Err(corrupt("its hash or MAC does not match"));
        }
        Ok(ChainedEntry {
            seq: row.seq,
            prev_hash: row_prev,
            hash,
            entry: row.entry,
        })
    }

    /// The id of the store this trail belongs to.
    pub fn store_id(&self) -> StoreId {
        self.store_id
    }

    /// The current head, MAC'd under the head subkey together with the store id.
    pub fn head(&self) -> Result<Head, AuditError> {
        let (seq, hash) = read_tail(self.store.as_ref(), self.genesis)?;
        Ok(make_head(&self.keys.head, self.store_id, seq, &hash))
    }

    /// The head of a trail whose last entry is `tail` (sequence number and hash, as stored),
    /// such as a backup's: with this store's MAC, for `verify` to be checked against later.
    /// `None` is an empty trail.
    pub fn head_of(&self, tail: Option<(u64, &[u8])>) -> Result<Head, AuditError> {
        let (seq, hash) = tail_of(tail, self.genesis)?;
        Ok(make_head(&self.keys.head, self.store_id, seq, &hash))
    }

    fn head_mac(&self, seq: u64, hash: &[u8; 32]) -> [u8; 32] {
        head_mac(&self.keys.head, self.store_id, seq, hash)
    }

    /// Checks that this store's trail is not behind `head`, an anchor kept outside the store
    /// (a head file): `head` must be this store's (its id, its MAC), and the trail must hold
    /// entry `head.seq` with the hash `head` names, that entry consistent with its own hash and
    /// MAC. `None` when fresh; otherwise what was found. Reads one entry: a trail rolled back as
    /// a whole is found here; an edited or spliced trail is `verify`'s to find.
    pub fn check_fresh(&self, head: &Head) -> Result<Option<String>, AuditError> {
        if let Some(Verification::Broken { problem, .. }) = self.refuse_anchor(head) {
            return Ok(Some(problem.replace("the anchored head", "the head file")));
        }
        let (tail, _) = read_tail(self.store.as_ref(), self.genesis)?;
        if head.seq > tail {
            return Ok(Some(format!(
                "the trail ends at entry {tail} but the head file names entry {}: the store is \
                 behind its head (rolled back to an older copy, or its last entries removed)",
                head.seq
            )));
        }
        let Some(want) = parse_hash(&head.hash) else {
            return Ok(Some(
                "the head file's hash is not 64 hexadecimal digits".into(),
            ));
        };
        let found = if head.seq == 0 {
            Some(self.genesis)
        } else {
            self.store
                .audit_entries(head.seq, 1)?
                .into_iter()
                .find(|row| row.seq == head.seq)
                .and_then(|row| {
                    let prev: [u8; 32] = row.prev_hash.as_slice().try_into().ok()?;
                    let hash = entry_hash(row.seq, &prev, &row.entry);
                    let mac = kdf::mac(&self.keys.entry, &hash);
                    (bool::from(row.hash.ct_eq(&hash)) && bool::from(row.mac.ct_eq(&mac)))
                        .then_some(hash)
                })
        };
        if found != Some(want) {
            return Ok(Some(format!(
                "entry {} of the trail is not the one the head file names: the store holds \
                 another history (an older copy written on since, or another trail)",
                head.seq
            )));
        }
        Ok(None)
    }

    /// Entry `seq`, when it is there and consistent with its own hash and MAC (not checked
    /// against its neighbours: `verify` does that). Only the audit key makes an entry that
    /// passes, so an entry read here was written by this store's kluis.
    pub fn authentic_entry(&self, seq: u64) -> Result<Option<AuditEvent>, AuditError> {
        let Some(row) = self
            .store
            .audit_entries(seq, 1)?
            .into_iter()
            .find(|row| row.seq == seq)
        else {
            return Ok(None);
        };
        let Ok(prev) = <[u8; 32]>::try_from(row.prev_hash.as_slice()) else {
            return Ok(None);
        };
        let hash = entry_hash(row.seq, &prev, &row.entry);
        let mac = kdf::mac(&self.keys.entry, &hash);
        if !bool::from(row.hash.ct_eq(&hash)) || !bool::from(row.mac.ct_eq(&mac)) {
            return Ok(None);
        }
        Ok(serde_json::from_slice(&row.entry).ok())
    }

    /// The head of what the writer has committed, MAC'd.
    fn committed_head(&self) -> Head {
        let state = self.committed.get();
        make_head(&self.keys.head, self.store_id, state.seq, &state.hash)
    }

    /// Writes the head of what is committed to `file` now.
    pub fn write_head(&self, file: &anchor::HeadFile) -> Result<Head, AuditError> {
        let head = self.committed_head();
        file.write(&head).map_err(|e| {
            AuditError::Unavailable(format!(
                "cannot write the head file `{}`: {e}",
                file.path().display()
            ))
        })?;
        Ok(head)
    }

    /// From now on copies the head of what is committed into `file`: soon after a commit, at
    /// most once per `interval`, and once more when the trail closes. A failed write is logged
    /// and tried again an `interval` later.
    pub fn keep_head(
        &mut self,
        file: anchor::HeadFile,
        interval: std::time::Duration,
    ) -> Result<(), AuditError> {
        if self.keeper.is_some() {
            return Ok(());
        }
        let keys = Arc::clone(&self.keys);
        let committed = Arc::clone(&self.committed);
        let store_id = self.store_id;
        let written = self.committed.get().seq;
        let keeper = std::thread::Builder::new()
            .name("kluis-audit-head".into())
            .spawn(move || {
                anchor::keep(&file, &committed, interval, written, |state| {
                    make_head(&keys.head, store_id, state.seq, &state.hash)
                });
            })
            .map_err(|e| AuditError::Unavailable(format!("cannot start the head keeper: {e}")))?;
        self.keeper = Some(keeper);
        Ok(())
    }

    /// Checks an anchored head before the walk: it must name this store and carry this store's
    /// MAC over it. `None` when it may serve as an anchor.
    pub fn refuse_anchor(&self, head: &Head) -> Option<Verification> {
        let broken = |problem: String| {
            Some(Verification::Broken {
                seq: head.seq,
                problem,
            })
        };
        match StoreId::parse_hex(&head.store_id) {
            Some(id) if id == self.store_id => {}
            Some(id) => {
                return broken(format!(
                    "the anchored head is of store {id}, not of this store {}: one store's head \
                     does not vouch for another's trail",
                    self.store_id
                ));
            }
            None => {
                return broken(
                    "the anchored head names no store id (32 hexadecimal digits); use a head as \
                     printed by `audit head`"
                        .into(),
                );
            }
        }
        if head.mac.is_empty() {
            return broken(
                "the anchored head has no MAC: only a head MAC'd by this store is accepted as an \
                 anchor"
                    .into(),
            );
        }
        let mac_ok = parse_hash(&head.hash).is_some_and(|h| {
            hex::decode(&head.mac).is_ok_and(|m| bool::from(m.ct_eq(&self.head_mac(head.seq, &h))))
        });
        if !mac_ok {
            return broken(
                "the anchored head's MAC is not this store's (forged or mistyped head)".into(),
            );
        }
        None
    }

    /// Walks the whole trail and reports the first entry that is edited, missing, inserted or
    /// out of order, or the count and head hash when all is intact. With `expect`, a head that is
    /// not this store's (other store id, MAC missing or wrong), a trail that ends before the
    /// anchored head, or one that differs from it, is reported too.
    pub fn verify(&self, expect: Option<&Head>) -> Result<Verification, AuditError> {
        if let Some(refused) = expect.and_then(|head| self.refuse_anchor(head)) {
            return Ok(refused);
        }
        // What this node committed last is an anchor of its own (taken before the trail is
        // read: entries committed meanwhile come after it).
        let CommittedState {
            seq: known,
            hash: known_hash,
            read_at_open,
            ..
        } = self.committed.get();
        // Read when the trail opened, it vouches for nothing.
        let known = if read_at_open { 0 } else { known };
        // Rows numbered below the first entry, which the walk from entry 1 on would not see.
        let (below, highest) = self.store.audit_rows_below_one()?;
        if below > 0 {
            return Ok(Verification::Broken {
                seq: 0,
                problem: format!(
                    "{below} row(s) numbered below 1 (the highest {highest}) were inserted in \
                     the database file: kluis numbers its entries from 1"
                ),
            });
        }
        let mut expected_seq = 1u64;
        let mut prev = self.genesis;
        let mut anchored = false;
        // Entries are read a page at a time; once a page holds a row that does not read as an
        // entry (a value of another type put in it by hand), one at a time, to name that row.
        let mut page_size = 1000;
        loop {
            let page = match self.store.audit_entries(expected_seq, page_size) {
                Ok(page) => page,
                Err(StoreError::Corrupt(_)) if page_size > 1 => {
                    page_size = 1;
                    continue;
                }
                // The first row stored from `expected_seq` on: that entry, or (when it is
                // missing too) the next one kept.
                Err(StoreError::Corrupt(what)) => {
                    return Ok(Verification::Broken {
                        seq: expected_seq,
                        problem: format!(
                            "this entry, or the first one stored after it when it is missing, \
                             cannot be read as an entry ({what}): edited in the database file"
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            if page.is_empty() {
                let count = expected_seq - 1;
                if known > count {
                    return Ok(Verification::Broken {
                        seq: count + 1,
                        problem: format!(
                            "the trail ends at entry {count} but this node committed entries up \
                             to {known}: entries were removed from the tail"
                        ),
                    });
                }
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
                // The index a subject's access report and export read the trail by: an entry
                // it hid would be left out of them.
                match self.store.subject_index_problem() {
                    Ok(None) => {}
                    Ok(Some((seq, problem))) => {
                        return Ok(Verification::Broken {
                            seq,
                            problem: format!("the trail's index by subject {problem}"),
                        });
                    }
                    // Rows that do not even read as the index's (its b-tree swapped for another
                    // table's by hand): broken, not a fault of kluis's.
                    Err(StoreError::Corrupt(what) | StoreError::Database(what)) => {
                        return Ok(Verification::Broken {
                            seq: count + 1,
                            problem: format!(
                                "the trail's index by subject cannot be read ({what}): edited \
                                 in the database file"
                            ),
                        });
                    }
                    Err(e) => return Err(e.into()),
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
                    return Ok(broken(if row.seq == 1 {
                        "does not start this store's trail (its chain begins in another store)"
                    } else {
                        "does not follow the previous entry (deleted, inserted or reordered)"
                    }));
                }
                let hash = entry_hash(row.seq, &prev, &row.entry);
                if !bool::from(row.hash.ct_eq(&hash)) {
                    return Ok(broken("content does not match its hash (edited)"));
                }
                let mac = kdf::mac(&self.keys.entry, &hash);
                if !bool::from(row.mac.ct_eq(&mac)) {
                    return Ok(broken("MAC does not match (written without the audit key)"));
                }
                if row.seq == known && hash != known_hash {
                    return Ok(broken(
                        "is not the entry this node committed there (replaced)",
                    ));
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
        f: impl FnMut(u64, &AuditEvent, &[u8]) -> bool,
    ) -> Result<(), AuditError> {
        self.scan_from(filter, 1, f)
    }

    /// [`scan`](Self::scan) from the entry numbered `from` on.
    pub fn scan_from(
        &self,
        filter: &Filter,
        mut from: u64,
        mut f: impl FnMut(u64, &AuditEvent, &[u8]) -> bool,
    ) -> Result<(), AuditError> {
        loop {
            // The entries about one subject from the store's index of them; the filter below
            // still checks each entry's own subject.
            let page = match &filter.subject {
                Some(subject) => self.store.subject_audit_entries(subject, from, 1000)?,
                None => self.store.audit_entries(from, 1000)?,
            };
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

/// The tail of the trail: the last entry's sequence number and hash, or (0, `genesis`) for an
/// empty trail.
fn read_tail(store: &dyn Store, genesis: [u8; 32]) -> Result<(u64, [u8; 32]), AuditError> {
    let row = store.audit_tail()?;
    tail_of(row.as_ref().map(|r| (r.seq, r.hash.as_slice())), genesis)
}

/// The sequence number and hash of a trail whose last entry is `tail` as stored (`None`: an
/// empty trail, at the genesis hash).
fn tail_of(tail: Option<(u64, &[u8])>, genesis: [u8; 32]) -> Result<(u64, [u8; 32]), AuditError> {
    match tail {
        None => Ok((0, genesis)),
        Some((seq, hash)) => Ok((
            seq,
            hash.try_into()
                .map_err(|_| StoreError::Corrupt(format!("audit entry {seq}")))?,
        )),
    }
}

/// Chains `batch` onto the stored tail and commits it in one transaction, with `writes` where
/// the store makes them there; returns the first entry's sequence number, or why nothing was
/// committed, and each write's outcome (`None` when the store did not make them).
#[expect(
    clippy::type_complexity,
    reason = "the first sequence number, and one outcome per write"
)]
fn commit_batch(
    store: &dyn Store,
    key: &Subkey,
    batch: &[Vec<u8>],
    writes: &[RecordWrite],
    genesis: [u8; 32],
    committed: &Committed,
) -> (
    Result<u64, NotCommitted>,
    Option<Vec<Result<(), StoreError>>>,
) {
    // The store hands over its tail inside the transaction that appends (locked against
    // other nodes), so the chain is built on what is stored, never on a tail in memory.
    // The tail handed over must be authentic and not behind what this process committed
    // itself: a trail cut back while kluis runs is not continued from the cut. Its MAC covers
    // its hash, not its place: an authentic row copied into the place of the last one (the
    // last one deleted) would carry a valid MAC. So the tail at the place this process last
    // committed must carry the hash it committed there, and a tail past it (another node's)
    // must hash to what it holds, which binds the hash to its place.
    let CommittedState {
        seq: known,
        hash: known_hash,
        read_at_open,
        ..
    } = committed.get();
    let mut chain = |stored: Option<&AuditRow>,
                     hash_at: &mut crate::store::HashAt<'_>|
     -> Result<Vec<AuditRow>, StoreError> {
        let behind = |seq: u64| {
            StoreError::Corrupt(format!(
                "the audit trail ends at entry {seq}, before entry {known} this node \
                 committed: it was cut back"
            ))
        };
        let (mut seq, mut prev) = match stored {
            None if known > 0 => return Err(behind(0)),
            None => (0, genesis),
            Some(row) => {
                if row.seq < known {
                    return Err(behind(row.seq));
                }
                let hash: [u8; 32] = row
                    .hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt(format!("audit entry {}", row.seq)))?;
                let mac = kdf::mac(key, &hash);
                if row.mac.len() != mac.len() || !bool::from(row.mac.as_slice().ct_eq(&mac[..])) {
                    return Err(StoreError::Corrupt(format!(
                        "audit entry {} (its MAC does not match)",
                        row.seq
                    )));
                }
                // The tail this process opened on must hash to what it holds as well.
                let in_place = if row.seq == known && !read_at_open {
                    hash == known_hash
                } else {
                    <[u8; 32]>::try_from(row.prev_hash.as_slice())
                        .is_ok_and(|prev| entry_hash(row.seq, &prev, &row.entry) == hash)
                };
                if !in_place {
                    return Err(StoreError::Corrupt(format!(
                        "audit entry {} (it is not the entry committed in its place, or its \
                         text does not match its hash: the trail was edited, or lost entries \
                         this node committed)",
                        row.seq
                    )));
                }
                // A tail past it (another node's, on a shared store) is chained on the entry
                // this process committed last, which must still be in its place with its hash:
                // otherwise another node's appends, and then this one's, would cover a row
                // deleted or replaced under it.
                if row.seq > known
                    && known > 0
                    && hash_at(known)?.as_deref() != Some(known_hash.as_slice())
                {
                    return Err(StoreError::Corrupt(format!(
                        "audit entry {known} (the last this node committed is missing or not \
                         the entry committed in its place: the trail was edited under later \
                         entries)"
                    )));
                }
                (row.seq, hash)
            }
        };
        Ok(batch
            .iter()
            .map(|entry| {
                seq += 1;
                let hash = entry_hash(seq, &prev, entry);
                let row = AuditRow {
                    seq,
                    entry: entry.clone(),
                    prev_hash: prev.to_vec(),
                    hash: hash.to_vec(),
                    mac: kdf::mac(key, &hash).to_vec(),
                };
                prev = hash;
                row
            })
            .collect())
    };
    let started = std::time::Instant::now();
    let mut written = None;
    let outcome = match store.append_chained_writing(&mut chain, writes) {
        Ok((rows, made)) => match (rows.first(), rows.last()) {
            (Some(first), Some(last)) => {
                let hash: [u8; 32] = last.hash.as_slice().try_into().unwrap_or([0; 32]);
                committed.publish(last.seq, hash);
                committed.set_writable(true);
                crate::metrics::audit_committed(rows.len(), started.elapsed());
                written = made.map(|outcomes| {
                    if outcomes.len() == writes.len() {
                        return outcomes;
                    }
                    // Not one outcome per write: which were made cannot be told, so none is
                    // answered as made.
                    tracing::error!(
                        writes = writes.len(),
                        outcomes = outcomes.len(),
                        "the store answered a carried write batch with the wrong count"
                    );
                    writes
                        .iter()
                        .map(|_| {
                            Err(StoreError::Database(
                                "the store did not answer every carried write".into(),
                            ))
                        })
                        .collect()
                });
                Ok(first.seq)
            }
            _ => Err(NotCommitted::Unavailable("nothing was appended".to_owned())),
        },
        Err(e) => {
            tracing::error!(error = %e, entries = batch.len(), "audit append failed");
            Err(match e {
                StoreError::Corrupt(why) => NotCommitted::Corrupt(why),
                e => NotCommitted::Unavailable(e.to_string()),
            })
        }
    };
    if let Err(why) = &outcome {
        committed.set_writable(false);
        crate::metrics::audit_failed(matches!(why, NotCommitted::Corrupt(_)));
    }
    (outcome, written)
}

/// The "previous hash" of a store's first entry: SHA-256 of a label and the store id. Every
/// entry's hash depends on it through the chain.
fn genesis_hash(store_id: StoreId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kluis.v2.audit.genesis");
    h.update(store_id.as_bytes());
    h.finalize().into()
}

/// The head at (`seq`, `hash`) of store `store_id`, MAC'd.
fn make_head(key: &Subkey, store_id: StoreId, seq: u64, hash: &[u8; 32]) -> Head {
    Head {
        seq,
        hash: hex::encode(hash),
        mac: hex::encode(head_mac(key, store_id, seq, hash)),
        store_id: store_id.to_hex(),
    }
}

/// The MAC of a head: store id, sequence number and hash under the head subkey.
fn head_mac(key: &Subkey, store_id: StoreId, seq: u64, hash: &[u8; 32]) -> [u8; 32] {
    let mut data = b"kluis.v2.audit.head".to_vec();
    data.extend_from_slice(store_id.as_bytes());
    data.extend_from_slice(&seq.to_be_bytes());
    data.extend_from_slice(hash);
    kdf::mac(key, &data)
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
    use crate::store::{SqliteStore, prelude::*};

    fn trail() -> (tempfile::TempDir, Arc<SqliteStore>, Audit) {
        trail_of(AuditKey::generate(), StoreId::generate())
    }

    fn trail_of(key: AuditKey, id: StoreId) -> (tempfile::TempDir, Arc<SqliteStore>, Audit) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
        let audit = Audit::open(store.clone(), key, id).unwrap();
        (dir, store, audit)
    }

    const KEY: [u8; 32] = [0x61; 32];

    /// Two trails with the same audit key and the same entries: the stores differ only where
    /// the test says.
    fn twin_trails(a: StoreId, b: StoreId) -> [(tempfile::TempDir, Arc<SqliteStore>, Audit); 2] {
        [a, b].map(|id| {
            let t = trail_of(AuditKey::from_bytes(&KEY), id);
            for n in 0..3 {
                t.2.append(&event(n)).unwrap();
            }
            t
        })
    }

    fn problem(v: Verification) -> String {
        match v {
            Verification::Broken { problem, .. } => problem,
            Verification::Intact { .. } => panic!("intact: {v:?}"),
        }
    }

    #[test]
    fn a_trail_cut_back_or_with_a_forged_tail_is_not_continued() {
        let (dir, _store, audit) = trail();
        for n in 0..3 {
            audit.append(&event(n)).unwrap();
        }
        let db =
            rusqlite::Connection::open(crate::store::sqlite::trail_path(&dir.path().join("a.db")))
                .unwrap();
        // Cut back by hand while the writer runs: the next append is refused, not chained on
        // entry 2 as if 3 had never been.
        db.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
        assert!(audit.append(&event(9)).is_err());
        // `verify` names the cut with no head given: this node's own last commit anchors it.
        match audit.verify(None).unwrap() {
            Verification::Broken { seq, problem } => {
                assert_eq!(seq, 3);
                assert!(problem.contains("committed entries up to 3"), "{problem}");
            }
            v @ Verification::Intact { .. } => panic!("intact: {v:?}"),
        }
        // Its twin: the row put back, the trail goes on.
        let (_d2, s2, a2) = trail();
        for n in 0..3 {
            a2.append(&event(n)).unwrap();
        }
        a2.append(&event(9)).unwrap();
        assert_eq!(s2.audit_tail().unwrap().unwrap().seq, 4);
        // A tail whose MAC does not match (written by hand) is not chained on either.
        let (dir3, _s3, a3) = trail();
        a3.append(&event(0)).unwrap();
        let db3 =
            rusqlite::Connection::open(crate::store::sqlite::trail_path(&dir3.path().join("a.db")))
                .unwrap();
        db3.execute("UPDATE audit SET mac = zeroblob(32) WHERE seq = 1", [])
            .unwrap();
        assert!(a3.append(&event(1)).is_err());
    }

    #[test]
    fn an_authentic_row_put_in_the_tails_place_is_not_continued() {
        let copy = |db: &rusqlite::Connection, from: i64, to: i64| {
            db.execute(
                "INSERT INTO audit (seq, entry, prev_hash, hash, mac) \
                 SELECT ?2, entry, prev_hash, hash, mac FROM audit WHERE seq = ?1",
                [from, to],
            )
            .unwrap();
        };
        // The newest entry deleted and the one before it copied into its place, MAC and all.
        let (dir, _s, audit) = trail();
        for n in 0..3 {
            audit.append(&event(n)).unwrap();
        }
        let db =
            rusqlite::Connection::open(crate::store::sqlite::trail_path(&dir.path().join("a.db")))
                .unwrap();
        db.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
        copy(&db, 2, 3);
        let e = audit.append(&event(9)).unwrap_err();
        assert!(
            e.to_string()
                .contains("not the entry committed in its place"),
            "{e}"
        );
        // A copy put past the last entry, as if another node had written it: refused too.
        let (dir, _s, audit) = trail();
        for n in 0..3 {
            audit.append(&event(n)).unwrap();
        }
        let db =
            rusqlite::Connection::open(crate::store::sqlite::trail_path(&dir.path().join("a.db")))
                .unwrap();
        copy(&db, 3, 4);
        let e = audit.append(&event(9)).unwrap_err();
        assert!(
            e.to_string()
                .contains("not the entry committed in its place"),
            "{e}"
        );

        // The same while kluis was stopped: a copy put past the last entry is not opened on.
        let id = StoreId::generate();
        let (dir, store, audit) = trail_of(AuditKey::from_bytes(&KEY), id);
        for n in 0..3 {
            audit.append(&event(n)).unwrap();
        }
        drop(audit);
        let db =
            rusqlite::Connection::open(crate::store::sqlite::trail_path(&dir.path().join("a.db")))
                .unwrap();
        copy(&db, 3, 4);
        let reopened = Audit::open(store.clone(), AuditKey::from_bytes(&KEY), id).unwrap();
        let e = reopened.append(&event(9)).unwrap_err();
        assert!(
            e.to_string()
                .contains("not the entry committed in its place"),
            "{e}"
        );
        assert!(matches!(
            reopened.verify(None).unwrap(),
            Verification::Broken { seq: 4, .. }
        ));
        // Its twin: the copy gone, the reopened trail goes on.
        drop(reopened);
        db.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
        let reopened = Audit::open(store.clone(), AuditKey::from_bytes(&KEY), id).unwrap();
        reopened.append(&event(9)).unwrap();
        assert!(matches!(
            reopened.verify(None).unwrap(),
            Verification::Intact { count: 4, .. }
        ));

        // The twins. Another writer of the same store (another node) appends past what this one
        // committed: its entries are chained on.
        let id = StoreId::generate();
        let (_d, store, audit) = trail_of(AuditKey::from_bytes(&KEY), id);
        audit.append(&event(0)).unwrap();
        let other = Audit::open(store.clone(), AuditKey::from_bytes(&KEY), id).unwrap();
        other.append(&event(1)).unwrap();
        other.append(&event(2)).unwrap();
        audit.append(&event(3)).unwrap();
        assert_eq!(store.audit_tail().unwrap().unwrap().seq, 4);
        assert!(matches!(
            audit.verify(None).unwrap(),
            Verification::Intact { .. }
        ));
        // The last entry's text edited, its hash left: the chain goes on from the hash
        // committed there, and `verify` names the entry edited.
        let (dir, _s, audit) = trail();
        for n in 0..3 {
            audit.append(&event(n)).unwrap();
        }
        let db =
            rusqlite::Connection::open(crate::store::sqlite::trail_path(&dir.path().join("a.db")))
                .unwrap();
        db.execute(
            "UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT), 'emp-1', 'emp-2') AS BLOB) \
             WHERE seq = 3",
            [],
        )
        .unwrap();
        audit.append(&event(9)).unwrap();
        match audit.verify(None).unwrap() {
            Verification::Broken { seq, problem } => {
                assert_eq!(seq, 3);
                assert!(problem.contains("edited"), "{problem}");
            }
            v @ Verification::Intact { .. } => panic!("intact: {v:?}"),
        }
    }

    /// An index by subject whose rows do not read as its own (another table's b-tree put in
    /// its place by hand) makes the trail broken, not `verify` fail.
    #[test]
    fn an_index_by_subject_that_does_not_read_is_broken_not_a_failure() {
        let (dir, _s, audit) = trail();
        for n in 0..3 {
            audit.append(&event(n)).unwrap();
        }
        assert!(matches!(
            audit.verify(None).unwrap(),
            Verification::Intact { count: 3, .. }
        ));
        let db =
            rusqlite::Connection::open(crate::store::sqlite::trail_path(&dir.path().join("a.db")))
                .unwrap();
        db.execute_batch(
            "INSERT INTO audit_runs (run, up_to) VALUES (1, 3);
             INSERT INTO audit_subjects (run, subject, seq) VALUES (1, 'REL-1', 'not a number');",
        )
        .unwrap();
        let p = problem(audit.verify(None).unwrap());
        assert!(p.contains("index by subject cannot be read"), "{p}");
    }

    #[test]
    fn a_trail_copied_into_another_store_does_not_verify_there() {
        let a = StoreId::generate();
        let (_da, sa, audit_a) = trail_of(AuditKey::from_bytes(&KEY), a);
        for n in 0..3 {
            audit_a.append(&event(n)).unwrap();
        }
        // Another store with the same audit key, whose trail is A's, copied row for row.
        let (_dc, sc, c) = trail_of(AuditKey::from_bytes(&KEY), StoreId::generate());
        sc.append_audit(&sa.audit_entries(1, 100).unwrap()).unwrap();
        let p = problem(c.verify(None).unwrap());
        assert!(p.contains("another store"), "{p}");
        assert!(matches!(
            c.verify(None).unwrap(),
            Verification::Broken { seq: 1, .. }
        ));
        // The twin: copied into a store with A's id (a restore of A), the same rows verify.
        let (_dd, sd, d) = trail_of(AuditKey::from_bytes(&KEY), a);
        sd.append_audit(&sa.audit_entries(1, 100).unwrap()).unwrap();
        assert!(matches!(
            d.verify(None).unwrap(),
            Verification::Intact { count: 3, .. }
        ));
    }

    #[test]
    fn a_head_of_another_store_does_not_anchor_its_trail() {
        // Same audit key, same entries: only the store ids differ.
        let [(_da, _sa, a), (_db, _sb, b)] = twin_trails(StoreId::generate(), StoreId::generate());
        let head_a = a.head().unwrap();
        assert!(matches!(
            a.verify(Some(&head_a)).unwrap(),
            Verification::Intact { count: 3, .. }
        ));
        let p = problem(b.verify(Some(&head_a)).unwrap());
        assert!(p.contains("not of this store"), "{p}");
        // Renamed to B, A's head fails B's MAC: the store id is under the MAC.
        let renamed = Head {
            store_id: b.store_id().to_hex(),
            ..head_a.clone()
        };
        let p = problem(b.verify(Some(&renamed)).unwrap());
        assert!(p.contains("MAC is not this store's"), "{p}");
        // B's own head of the same position verifies (the twin of both).
        assert!(matches!(
            b.verify(Some(&b.head().unwrap())).unwrap(),
            Verification::Intact { count: 3, .. }
        ));
        // Two stores initialised apart have other keys as well: still refused.
        let (_dc, _sc, c) = trail();
        assert!(matches!(
            c.verify(Some(&head_a)).unwrap(),
            Verification::Broken { .. }
        ));
    }

    #[test]
    fn a_head_without_its_mac_or_store_is_refused_as_an_anchor() {
        let (_d, _s, audit) = trail();
        for n in 0..2 {
            audit.append(&event(n)).unwrap();
        }
        let head = audit.head().unwrap();
        assert_eq!(head.store_id, audit.store_id().to_hex());
        assert!(matches!(
            audit.verify(Some(&head)).unwrap(),
            Verification::Intact { count: 2, .. }
        ));
        let stripped = Head {
            mac: String::new(),
            ..head.clone()
        };
        let p = problem(audit.verify(Some(&stripped)).unwrap());
        assert!(p.contains("no MAC"), "{p}");
        let nameless = Head {
            store_id: String::new(),
            ..head.clone()
        };
        let p = problem(audit.verify(Some(&nameless)).unwrap());
        assert!(p.contains("no store id"), "{p}");
    }

    #[test]
    fn entry_and_head_macs_use_their_own_subkeys() {
        let id = StoreId::generate();
        let (_d, store, audit) = trail_of(AuditKey::from_bytes(&KEY), id);
        audit.append(&event(1)).unwrap();
        let key = AuditKey::from_bytes(&KEY);
        let (entry, head_key) = (
            key.entry_mac_subkey().unwrap(),
            key.head_mac_subkey().unwrap(),
        );
        let row = store.audit_entries(1, 1).unwrap().remove(0);
        let hash: [u8; 32] = row.hash.as_slice().try_into().unwrap();
        assert_eq!(row.prev_hash, genesis_hash(id));
        assert_eq!(row.mac, kdf::mac(&entry, &hash));
        assert_ne!(row.mac, kdf::mac(&head_key, &hash));
        let direct = {
            use hmac::{Hmac, Mac};
            <Hmac<Sha256> as Mac>::new_from_slice(&KEY)
                .unwrap()
                .chain_update(hash)
                .finalize()
                .into_bytes()
                .to_vec()
        };
        assert_ne!(row.mac, direct);
        let head = audit.head().unwrap();
        assert_eq!(head.mac, hex::encode(head_mac(&head_key, id, 1, &hash)));
        assert_ne!(head.mac, hex::encode(head_mac(&entry, id, 1, &hash)));
    }

    #[test]
    fn a_fresh_trail_passes_its_head_and_a_rolled_back_one_does_not() {
        let (_d, store, audit) = trail();
        assert_eq!(audit.check_fresh(&audit.head().unwrap()).unwrap(), None);
        for n in 0..4 {
            audit.append(&event(n)).unwrap();
        }
        let head = audit.head().unwrap();
        assert_eq!(audit.check_fresh(&head).unwrap(), None);
        // A head behind the trail is fine: the store went on after it was written.
        audit.append(&event(9)).unwrap();
        assert_eq!(audit.check_fresh(&head).unwrap(), None);
        // The store's last entries gone: behind its head.
        let conn = rusqlite::Connection::open(store.trail_path()).unwrap();
        conn.execute("DELETE FROM audit WHERE seq >= 4", [])
            .unwrap();
        let p = audit.check_fresh(&head).unwrap().unwrap();
        assert!(
            p.contains("ends at entry 3") && p.contains("entry 4"),
            "{p}"
        );
    }

    #[test]
    fn another_history_of_the_same_store_does_not_pass_its_head() {
        let id = StoreId::generate();
        let (_da, _sa, a) = trail_of(AuditKey::from_bytes(&KEY), id);
        let (_db, _sb, b) = trail_of(AuditKey::from_bytes(&KEY), id);
        for n in 0..3 {
            a.append(&event(n)).unwrap();
            b.append(&event(n + 100)).unwrap();
        }
        // B is an older copy of A written on since: same store, same length, other entries.
        let p = b.check_fresh(&a.head().unwrap()).unwrap().unwrap();
        assert!(p.contains("another history"), "{p}");
        assert_eq!(a.check_fresh(&a.head().unwrap()).unwrap(), None);
    }

    #[test]
    fn a_head_file_without_its_mac_or_of_another_store_is_not_an_anchor() {
        let (_d, _s, audit) = trail();
        audit.append(&event(1)).unwrap();
        let head = audit.head().unwrap();
        for bad in [
            Head {
                mac: String::new(),
                ..head.clone()
            },
            Head {
                mac: hex::encode([7u8; 32]),
                ..head.clone()
            },
            Head {
                seq: 0,
                ..head.clone()
            },
        ] {
            let p = audit.check_fresh(&bad).unwrap().unwrap();
            assert!(p.contains("head file") && p.contains("MAC"), "{p}");
        }
        let (_d2, _s2, other) = trail();
        other.append(&event(1)).unwrap();
        let p = audit.check_fresh(&other.head().unwrap()).unwrap().unwrap();
        assert!(p.contains("not of this store"), "{p}");
    }

    #[test]
    fn the_head_keeper_writes_the_committed_head_and_the_last_one_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let (_d, store, mut audit) = trail();
        let file = anchor::HeadFile::new(&dir.path().join("heads"), audit.store_id());
        assert_eq!(file.read().unwrap(), None);
        audit
            .keep_head(file.clone(), std::time::Duration::from_secs(3600))
            .unwrap();
        audit.append(&event(1)).unwrap();
        // Soon after the first commit, without waiting for the interval.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while file.read().unwrap().map(|h| h.seq) != Some(1) {
            assert!(std::time::Instant::now() < deadline, "no head written");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for n in 2..=5 {
            audit.append(&event(n)).unwrap();
        }
        // Within the (long) interval nothing more is written; closing writes the last head.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(file.read().unwrap().map(|h| h.seq), Some(1));
        let id = audit.store_id();
        drop(audit);
        let head = file.read().unwrap().unwrap();
        assert_eq!(
            (head.seq, head.store_id.as_str()),
            (5, id.to_hex().as_str())
        );
        let again = Audit::open(store, AuditKey::from_bytes(&[0u8; 32]), id).unwrap();
        // Under another audit key the same head is refused: the MAC is the key's.
        assert!(again.check_fresh(&head).unwrap().is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
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

    /// An entry hidden from a subject's access report by an edit of the trail's index by
    /// subject (the chain itself intact) is found by `verify`; the twin: the index as written
    /// verifies.
    #[test]
    fn verify_finds_an_entry_the_subject_index_hides() {
        let (_d, store, audit) = trail();
        let about = |n: i64| AuditEvent {
            subject: Some(format!("REL-{}", n % 7)),
            ..event(n)
        };
        let events: Vec<AuditEvent> = (0..2100).map(about).collect();
        for batch in events.chunks(100) {
            audit.append_all(batch).unwrap();
        }
        assert!(matches!(
            audit.verify(None).unwrap(),
            Verification::Intact { count: 2100, .. }
        ));
        let conn = rusqlite::Connection::open(store.trail_path()).unwrap();
        assert_eq!(
            conn.execute("DELETE FROM audit_subjects WHERE seq = 8", [])
                .unwrap(),
            1
        );
        match audit.verify(None).unwrap() {
            Verification::Broken { seq: 8, problem } => {
                assert!(problem.contains("index by subject misses it"), "{problem}");
            }
            other => panic!("{other:?}"),
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
        let conn = rusqlite::Connection::open(store.trail_path()).unwrap();
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
    fn every_caller_gets_the_sequence_numbers_of_its_own_entries() {
        // Callers of one, two and three entries at once, and one caller with more entries than
        // a batch takes: each is answered with consecutive numbers, and the entries stored
        // under them are its own, in its order.
        let (_d, _s, audit) = trail();
        let audit = Arc::new(audit);
        let mut threads: Vec<_> = (0..6i64)
            .map(|t| {
                let audit = Arc::clone(&audit);
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for n in 0..40i64 {
                        let events: Vec<AuditEvent> = (0..=n % 3)
                            .map(|k| event(t * 1_000_000 + n * 10 + k))
                            .collect();
                        let seqs = audit.append_all(&events).unwrap();
                        assert_eq!(seqs.len(), events.len());
                        for (seq, e) in seqs.iter().zip(&events) {
                            mine.push((seq.value(), e.time));
                        }
                    }
                    mine
                })
            })
            .collect();
        threads.push({
            let audit = Arc::clone(&audit);
            std::thread::spawn(move || {
                let events: Vec<AuditEvent> = (0..MAX_BATCH as i64 + 88)
                    .map(|k| event(9_000_000 + k))
                    .collect();
                let seqs = audit.append_all(&events).unwrap();
                seqs.iter()
                    .zip(&events)
                    .map(|(s, e)| (s.value(), e.time))
                    .collect()
            })
        });
        let mut answered: Vec<(u64, i64)> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        answered.sort_unstable();
        let total = 6 * (14 + 13 * 2 + 13 * 3) + MAX_BATCH + 88;
        assert_eq!(answered.len(), total);
        let stored: Vec<(u64, i64)> = audit
            .chained_entries(1, None, total + 10)
            .unwrap()
            .into_iter()
            .map(|e| {
                let event: AuditEvent = serde_json::from_slice(&e.entry).unwrap();
                (e.seq, event.time)
            })
            .collect();
        assert_eq!(answered, stored);
        // Each caller's entries are consecutive.
        let big: Vec<u64> = answered
            .iter()
            .filter(|(_, t)| *t >= 9_000_000)
            .map(|(s, _)| *s)
            .collect();
        assert!(big.windows(2).all(|w| w[1] == w[0] + 1), "{big:?}");
    }

    #[test]
    fn a_leader_that_unwinds_answers_its_batch_and_passes_the_lead_on() {
        let (_d, _s, audit) = trail();
        let appender = &audit.appender;
        let own = Arc::new(Waiter::default());
        let in_batch = Arc::new(Waiter::default());
        let next = Arc::new(Waiter::default());
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let mut state = appender.lock();
            state.leading = true;
            for waiter in [&own, &next] {
                state.queue.push_back(Queued {
                    entries: vec![b"{}".to_vec()],
                    write: None,
                    answer: Answer::Wait(Arc::clone(waiter)),
                });
            }
        }
        let unwound = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut later = Vec::new();
                    let ran = Arc::clone(&ran);
                    let then: Then =
                        Box::new(move |_, _| ran.store(true, std::sync::atomic::Ordering::SeqCst));
                    let _lead = Lead {
                        appender,
                        own: Some(&own),
                        callers: vec![
                            (Some(Answer::Wait(Arc::clone(&in_batch))), 1),
                            (Some(Answer::Then(then)), 1),
                        ],
                        outcome: None,
                        written: Vec::new(),
                        later: &mut later,
                    };
                    panic!("the commit unwinds");
                })
                .join()
        });
        assert!(unwound.is_err());
        // The batch's caller hears that its entry may not be committed, one that does not wait
        // is never run; the leader's own place leaves the queue, and the next caller leads.
        let woken = |w: &Waiter| w.take_if(|_| true);
        assert!(matches!(
            woken(&in_batch),
            Some(Wake::Answered(Err(_), None))
        ));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        assert!(matches!(woken(&next), Some(Wake::Lead)));
        assert!(woken(&own).is_none());
        let state = appender.lock();
        assert!(state.leading);
        assert_eq!(state.queue.len(), 1);
        assert!(
            state
                .queue
                .iter()
                .all(|q| matches!(&q.answer, Answer::Wait(w) if Arc::ptr_eq(w, &next)))
        );
    }

    /// Entries queued without waiting, from many threads and among callers that wait: each
    /// `then` runs once, with its own sequence number, and only once its entry is stored; the
    /// chain verifies. Callers that wait get the lead from those that do not and hand it to the
    /// relay, so nothing stays queued when the callers stop.
    #[test]
    fn entries_queued_without_waiting_are_answered_after_their_commit() {
        let (_d, store, audit) = trail();
        let audit = Arc::new(audit);
        let (tx, rx) = std::sync::mpsc::channel::<(i64, u64, bool)>();
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let audit = Arc::clone(&audit);
                let store = Arc::clone(&store);
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for n in 0..60 {
                        let time = t * 1000 + n;
                        if t % 3 == 0 {
                            let seq = audit.append(&event(time)).unwrap().value();
                            tx.send((time, seq, true)).unwrap();
                            continue;
                        }
                        let (tx, store) = (tx.clone(), Arc::clone(&store));
                        audit
                            .append_then(&event(time), move |seq| {
                                let seq = seq.unwrap().value();
                                // Stored before `then` runs.
                                let stored = store
                                    .audit_entries(seq, 1)
                                    .unwrap()
                                    .first()
                                    .is_some_and(|e| e.seq == seq);
                                tx.send((time, seq, stored)).unwrap();
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        for t in threads {
            t.join().unwrap();
        }
        let answered: Vec<(i64, u64, bool)> = rx.iter().collect();
        assert_eq!(answered.len(), 360);
        assert!(answered.iter().all(|&(_, _, stored)| stored));
        let mut seqs: Vec<u64> = answered.iter().map(|&(_, seq, _)| seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=360).collect::<Vec<_>>());
        // Each answer is its own entry's number.
        for (time, seq, _) in answered {
            let stored = audit.chained_entries(seq, None, 1).unwrap();
            let event: AuditEvent = serde_json::from_slice(&stored[0].entry).unwrap();
            assert_eq!(event.time, time);
        }
        assert!(matches!(
            audit.verify(None).unwrap(),
            Verification::Intact { count: 360, .. }
        ));
        // The lead ends once nothing is queued (the last leader may still be running `then`s).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while audit.appender.lock().leading && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let state = audit.appender.lock();
        assert!(!state.leading && state.queue.is_empty());
    }

    /// An entry queued without waiting whose commit fails: `then` hears the error and nothing
    /// is stored; its twin, on an intact trail, is committed and answered.
    #[test]
    fn an_entry_queued_without_waiting_whose_commit_fails_is_answered_with_the_error() {
        let answer = |audit: &Audit| {
            let (tx, rx) = std::sync::mpsc::channel();
            audit
                .append_then(&event(7), move |seq| {
                    tx.send(seq.map(|s| s.value())).unwrap()
                })
                .unwrap();
            rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap()
        };
        let (dir, store, audit) = trail();
        audit.append(&event(0)).unwrap();
        let db =
            rusqlite::Connection::open(crate::store::sqlite::trail_path(&dir.path().join("a.db")))
                .unwrap();
        db.execute("UPDATE audit SET mac = zeroblob(32) WHERE seq = 1", [])
            .unwrap();
        // The tail's MAC edited: the trail is not chained on, and the answer says it was
        // tampered with (not that it is unavailable, which a retry could mend).
        assert!(matches!(
            answer(&audit),
            Err(AuditError::Store(StoreError::Corrupt(_)))
        ));
        assert_eq!(store.audit_tail().unwrap().unwrap().seq, 1);
        let (_d2, s2, a2) = trail();
        a2.append(&event(0)).unwrap();
        assert_eq!(answer(&a2).unwrap(), 2);
        assert_eq!(s2.audit_tail().unwrap().unwrap().seq, 2);
    }

    #[test]
    fn head_is_maced_and_detects_truncation() {
        let id = StoreId::generate();
        let (_d, store, audit) = trail_of(AuditKey::from_bytes(&KEY), id);
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
        let p = problem(audit.verify(Some(&forged)).unwrap());
        assert!(p.contains("MAC is not this store's"), "{p}");
        let conn = rusqlite::Connection::open(store.trail_path()).unwrap();
        conn.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
        // The node that committed entry 4 finds it missing by itself; a node opened on the
        // trail afterwards (a restart) only with the head.
        assert!(matches!(
            audit.verify(None).unwrap(),
            Verification::Broken { seq: 4, .. }
        ));
        drop(audit);
        let reopened = Audit::open(store.clone(), AuditKey::from_bytes(&KEY), id).unwrap();
        assert!(matches!(
            reopened.verify(None).unwrap(),
            Verification::Intact { count: 3, .. }
        ));
        assert!(matches!(
            reopened.verify(Some(&head)).unwrap(),
            Verification::Broken { seq: 4, .. }
        ));
    }

    #[test]
    fn verify_detects_deleted_entry() {
        let (_d, store, audit) = trail();
        for n in 0..3 {
            audit.append(&event(n)).unwrap();
        }
        let conn = rusqlite::Connection::open(store.trail_path()).unwrap();
        conn.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        assert!(matches!(
            audit.verify(None).unwrap(),
            Verification::Broken { seq: 2, .. }
        ));
    }
}
