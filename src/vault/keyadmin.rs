//! Key administration for the security officer: list, rotate, rewrap, rekey, schedule and
//! cancel destruction, destroy what is due, set a minimum decryption version, change the root key,
//! and the attestation report. Every action is policy-checked (`manage-keys`) and audited.
//!
//! Invariant: a rewrap never re-encrypts data; a rekey re-encrypts one subject per transaction
//! and removes the old subject keys in that same transaction.
//! Invariant: a purpose key version is destroyed only in the transaction that sees it wrap
//! nothing.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use super::{Vault, VaultError, field_aad, rows};
use crate::{
    audit::{AuditEvent, Head},
    crypto::{self, Algorithm},
    domain::{Principal, Purpose, SubjectId, now_unix},
    keys::{KeyError, RootCheck, RootSecret},
    policy::AdminAction,
    store::{KeyJobRow, KeyState, Resealed, StoreError},
};

/// How long a root change request may wait for its approval and its carrying out: 24 hours.
pub const ROOT_CHANGE_TTL_SECS: i64 = 86_400;

/// Store metadata key of the pending root change (JSON; empty: none).
const META_ROOT_CHANGE: &str = "root_change";

/// Fields a rekey reseals per transaction.
const REKEY_FIELD_BATCH: usize = 256;
/// Evidence segments (64 KiB each) a rekey reseals per transaction.
const REKEY_SEGMENT_BATCH: usize = 16;
/// How often a subject's rekey reseals again what came in under an older generation while it
/// ran, before it gives up (the job continues it on its next run).
const REKEY_FINISH_ATTEMPTS: usize = 8;

/// The answer to a key job that another node of a shared store is running.
/// How often a rewrap that another node runs is looked at by one that follows it.
const REWRAP_FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

fn elsewhere(job: &str, purpose: Purpose) -> VaultError {
    VaultError::FailedPrecondition(format!(
        "a {job} of `{purpose}` is running on another node; it finishes there (or here, once \
         that node stops); `kluis admin keys report` shows its progress"
    ))
}

/// A pending change of the root key, as kept in the store: never the key, only its check.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct RootChange {
    id: String,
    requested_by: String,
    requested_at: i64,
    expires_at: i64,
    check: RootCheck,
    /// The root in force when it was asked for (`Keyring::current_root_mark`: its check value
    /// and its wrapping of the audit key): it changes that one only. A request (or its
    /// approval) put back after the root changed names another, even after a change back to
    /// the same key (`None`: written before requests named it).
    #[serde(default)]
    from: Option<String>,
    approved_by: Option<String>,
    approved_at: Option<i64>,
}

impl RootChange {
    /// Refuses a change asked for over another root key than the one in force now.
    fn over(&self, current: &str) -> Result<(), String> {
        if self.from.as_deref() == Some(current) {
            return Ok(());
        }
        Err(format!(
            "root change `{}` was asked for over another root key than the one in force now \
             (the root changed since, or the request was put back from before); ask again \
             (`kluis admin root rotate`)",
            self.id
        ))
    }
}

/// A root change just requested.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RootChangeRequest {
    /// Its id, for `approve_root_change` and `rotate_root`.
    pub id: String,
    /// Unix seconds after which it can no longer be approved or carried out.
    pub expires_at: i64,
}

fn corrupt(e: serde_json::Error) -> VaultError {
    VaultError::Store(StoreError::Corrupt(format!("pending root change: {e}")))
}

/// Whether the stored principal id `stored` is `actor` (compared in normal form).
fn same_principal(stored: &str, actor: &Principal) -> bool {
    crate::domain::PrincipalId::parse("principal", stored).is_ok_and(|p| p == actor.id)
}

/// How key jobs run.
#[derive(Clone, Copy, Debug)]
pub struct KeySettings {
    /// Subject keys (rewrap) or subjects (rekey) per transaction.
    pub batch_size: usize,
    /// Pause between batches, to leave room for traffic.
    pub batch_pause: Duration,
    /// Default waiting period before a scheduled destruction.
    pub destroy_wait_secs: u64,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            batch_pause: Duration::ZERO,
            destroy_wait_secs: 7 * 86_400,
        }
    }
}

/// One version of a purpose key, as listed.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct KeyVersionInfo {
    /// Version.
    pub version: u32,
    /// `active`, `decrypt-only`, `scheduled` or `destroyed`.
    pub state: String,
    /// AEAD of this version.
    pub algorithm: String,
    /// Subject keys wrapped under it.
    pub subject_keys: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// When a newer version replaced it.
    pub retired_at: Option<i64>,
    /// When its scheduled destruction is due.
    pub destroy_after: Option<i64>,
    /// When its material was erased.
    pub destroyed_at: Option<i64>,
}

/// One searchable field's blind index, as the key report shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchIndexInfo {
    /// The purpose.
    pub purpose: Purpose,
    /// The field.
    pub field: String,
    /// The width configured (`[search.<purpose>] tag_bits`).
    pub tag_bits: u8,
    /// Values tagged under the active index key version at that width.
    pub values: u64,
    /// Values tagged under the active version at another width (a change of `tag_bits` that
    /// no reindex has followed yet).
    pub values_at_other_widths: u64,
    /// About how many other values share a value's tag: what a search compares besides its
    /// hits (`search::candidates_per_search`).
    pub candidates_per_search: f64,
    /// The narrowest width at which the values would share a tag with at most the planner's
    /// aim of others (`search::planned_tag_bits`).
    pub planned_tag_bits: u8,
}

/// The key report: every purpose's keys, and every searchable field's index.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyReport {
    /// Every purpose's keys.
    pub purposes: Vec<PurposeKeysInfo>,
    /// Every searchable field's index, by purpose and field.
    pub search: Vec<SearchIndexInfo>,
}

/// The keys of one purpose.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct PurposeKeysInfo {
    /// The purpose.
    pub purpose: Purpose,
    /// The active version.
    pub active_version: u32,
    /// Versions below this one may not be used (0: none set).
    pub min_decrypt_version: u32,
    /// All versions, oldest first.
    pub versions: Vec<KeyVersionInfo>,
    /// Fields whose subject key no longer exists (must be 0).
    pub orphan_fields: u64,
    /// Subject keys wrapped under a destroyed version (must be 0).
    pub keys_on_destroyed_versions: u64,
    /// Start time of an unfinished rekey.
    pub rekey_pending_since: Option<i64>,
}

impl PurposeKeysInfo {
    /// True when the purpose has an active version and no record depends on destroyed key
    /// material.
    pub fn is_sound(&self) -> bool {
        self.active_version > 0 && self.orphan_fields == 0 && self.keys_on_destroyed_versions == 0
    }
}

/// Progress of a key job.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Progress {
    /// Units done by this run.
    pub done: u64,
    /// Units to do when it started.
    pub total: u64,
}

/// How far ahead of this node's clock a key job's stored start may be: another node's clock a
/// little ahead of this one's.
const KEY_JOB_SKEW_SECS: i64 = 5;

/// The kind of key job that replaces a purpose's subject keys.
const REKEY: &str = "rekey";

/// The meta row counting, per purpose and kind, the key jobs finished: a job's row carries the
/// count at its start under its MAC ([`rows::KeyJobMac`]), so that the row of a finished job
/// put back is not taken for the job under way.
const META_KEY_JOBS_DONE: &str = "key_jobs_done";

/// The meta row `META_KEY_JOBS_DONE` as stored (`None`: none yet), and its counts by
/// `purpose:kind`.
type KeyJobsDone = (Option<Vec<u8>>, BTreeMap<String, u64>);

impl Vault {
    /// Sets how key jobs run.
    pub fn with_key_settings(mut self, settings: KeySettings) -> Self {
        self.key_settings = settings;
        self
    }

    /// The keys of every purpose (or one), with how much each version still wraps.
    pub fn list_keys(
        &self,
        actor: &Principal,
        purpose: Option<Purpose>,
    ) -> Result<Vec<PurposeKeysInfo>, VaultError> {
        let mut event =
            self.require_admin(actor, AdminAction::ManageKeys, "keys-list", None, "")?;
        event.purpose = purpose.map(|p| p.as_str().to_owned());
        let info = self.keys_info(purpose)?;
        event.reason = Some(format!("{} purposes listed", info.len()));
        event.commit()?;
        Ok(info)
    }

    /// The attestation a security officer files after a rotation: every version, what was
    /// destroyed and when, and whether anything still depends on destroyed material; and
    /// every searchable field's index with the width that would share each tag among at most
    /// `candidates` values (0: `search::DEFAULT_PLAN_CANDIDATES`).
    pub fn key_report(&self, actor: &Principal, candidates: u32) -> Result<KeyReport, VaultError> {
        let candidates = match candidates {
            0 => crate::search::DEFAULT_PLAN_CANDIDATES,
            n if n as usize > super::search::MAX_CANDIDATES => {
                return Err(crate::domain::InputError::new(
                    "search_candidates",
                    format!("at most {}", super::search::MAX_CANDIDATES),
                )
                .into());
            }
            n => n,
        };
        let mut event =
            self.require_admin(actor, AdminAction::ManageKeys, "keys-report", None, "")?;
        let purposes = self.keys_info(None)?;
        let search = self.search_indexes(candidates)?;
        event.reason = Some(format!(
            "{} of {} purposes sound; {} searchable fields",
            purposes.iter().filter(|p| p.is_sound()).count(),
            purposes.len(),
            search.len()
        ));
        event.commit()?;
        Ok(KeyReport { purposes, search })
    }

    /// Every searchable field's index: values tagged under the active index key version, and
    /// the width the planner gives them for `candidates`.
    fn search_indexes(&self, candidates: u32) -> Result<Vec<SearchIndexInfo>, VaultError> {
        let fields: Vec<_> = self.search.all().collect();
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let active = self.keyring.index_keys()?.active();
        let counts = self.store.tag_counts(active)?;
        Ok(fields
            .into_iter()
            .map(|(purpose, field, _, tag_bits)| {
                let (mut values, mut values_at_other_widths) = (0, 0);
                for c in counts
                    .iter()
                    .filter(|c| c.purpose == purpose.as_str() && c.field == field)
                {
                    if c.bits == tag_bits {
                        values += c.tags;
                    } else {
                        values_at_other_widths += c.tags;
                    }
                }
                SearchIndexInfo {
                    purpose,
                    field: field.to_owned(),
                    tag_bits,
                    values,
                    values_at_other_widths,
                    candidates_per_search: crate::search::candidates_per_search(values, tag_bits),
                    planned_tag_bits: crate::search::planned_tag_bits(
                        values + values_at_other_widths,
                        candidates,
                    ),
                }
            })
            .collect())
    }

    /// A consistent snapshot of the whole store (ciphertext, wrapped keys, the trail), open for
    /// reading. Security officer only; audited with its size.
    pub fn backup(
        &self,
        actor: &Principal,
        justification: &str,
    ) -> Result<(std::fs::File, Head), VaultError> {
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageKeys,
            "backup",
            None,
            justification,
        )?;
        let snapshot = self.store.snapshot()?;
        // The head of the trail the snapshot holds, with this store's MAC: kept apart from the
        // backup, it lets a restore find entries cut from the backup's end. The tail is MAC'd
        // as stored; the backup's own entry, committed below, chains onto it and so refuses a
        // tail edited or cut under this node (and with it the backup).
        let head = self.audit.head_of(
            snapshot
                .trail_tail
                .as_ref()
                .map(|(seq, hash)| (*seq, hash.as_slice())),
        )?;
        let size = snapshot.file.metadata().map(|m| m.len()).unwrap_or(0);
        event.reason = Some(format!(
            "snapshot of {size} bytes, its trail up to entry {}",
            head.seq
        ));
        event.commit()?;
        tracing::info!(bytes = size, trail_head = head.seq, "backup snapshot taken");
        Ok((snapshot.file, head))
    }

    /// Makes a new version of `purpose`'s key active for new subject keys at once. Existing
    /// subject keys keep working and are moved over by a rewrap.
    pub fn rotate_key(
        &self,
        actor: &Principal,
        purpose: Purpose,
        algorithm: Option<Algorithm>,
        justification: &str,
    ) -> Result<(u32, Algorithm), VaultError> {
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageKeys,
            "key-rotate",
            Some(purpose.as_str()),
            justification,
        )?;
        // The trail first: no key changes that are not on record.
        event.purpose = Some(purpose.as_str().into());
        event.target = Some(purpose.as_str().into());
        event.reason = Some(format!(
            "new active version requested ({})",
            algorithm.map_or("current algorithm", Algorithm::as_str)
        ));
        let (version, algorithm) =
            event.commit_then(|| Ok(self.keyring.rotate(purpose, algorithm)?))?;
        tracing::info!(
            purpose = purpose.as_str(),
            version,
            algorithm = algorithm.as_str(),
            "purpose key rotated"
        );
        Ok((version, algorithm))
    }

    /// Checks and records that `actor` starts a key job (`key-rewrap`, `key-rekey`).
    pub fn authorize_key_job(
        &self,
        actor: &Principal,
        action: &str,
        purpose: Purpose,
        justification: &str,
    ) -> Result<(), VaultError> {
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageKeys,
            action,
            Some(purpose.as_str()),
            justification,
        )?;
        event.purpose = Some(purpose.as_str().into());
        event.commit()?;
        Ok(())
    }

    /// How far `purpose` is rewrapped, whoever does it: its subject keys under the active
    /// version, and all its subject keys. For reporting on a rewrap the caller was allowed.
    pub fn rewrap_standing(&self, purpose: Purpose) -> Result<(u64, u64), VaultError> {
        let active = self.active_version(purpose)?;
        let counts = self.store.subject_key_counts(purpose.as_str())?;
        let all = counts.iter().map(|(_, n)| n).sum();
        let on_active = counts
            .iter()
            .filter(|(v, _)| *v == active)
            .map(|(_, n)| n)
            .sum();
        Ok((on_active, all))
    }

    /// Rewraps every subject key of `purpose` under an older version to the active version, in
    /// batches of one transaction each, calling `progress` after each batch (return false to
    /// stop). Safe to run beside traffic and beside another rewrap; resumes where it stopped.
    /// While another node's rewrap of the purpose runs, follows it instead (`progress` with
    /// what is left, nothing done here) and takes over if that node stops.
    pub fn rewrap(
        &self,
        purpose: Purpose,
        mut progress: impl FnMut(Progress) -> bool,
    ) -> Result<Progress, VaultError> {
        // One node at a time. While another node's rewrap holds the lease (the one its rotation
        // started), follow it: report how much is left until nothing is, and take over should
        // its lease lapse (that node stopped).
        let lease = loop {
            if let Some(lease) = self.job_lease(&format!("rewrap:{purpose}"))? {
                break lease;
            }
            let (on_active, all) = self.rewrap_standing(purpose)?;
            let left = all.saturating_sub(on_active);
            if left == 0
                || !progress(Progress {
                    done: 0,
                    total: left,
                })
            {
                return Ok(Progress {
                    done: 0,
                    total: left,
                });
            }
            std::thread::sleep(REWRAP_FOLLOW_INTERVAL);
        };
        let active = self.active_version(purpose)?;
        let total: u64 = self
            .store
            .subject_key_counts(purpose.as_str())?
            .iter()
            .filter(|(v, _)| *v < active)
            .map(|(_, n)| n)
            .sum();
        let mut state = Progress { done: 0, total };
        loop {
            let (done, found) = self
                .keyring
                .rewrap_batch(purpose, self.key_settings.batch_size.max(1))?;
            state.done += done as u64;
            crate::metrics::key_job("rewrap", purpose.as_str(), state.done, state.total);
            if found == 0 || !progress(state) || self.is_stopping() {
                break;
            }
            if !lease.renew()? {
                return Err(elsewhere("rewrap", purpose));
            }
            if !self.key_settings.batch_pause.is_zero() {
                std::thread::sleep(self.key_settings.batch_pause);
            }
        }
        if state.done > 0 {
            self.system_event(
                "key-rewrap",
                purpose,
                format!("{} subject keys rewrapped to v{active}", state.done),
            )?;
        }
        Ok(state)
    }

    /// Re-encrypts every field of `purpose` under fresh subject keys, one subject per
    /// transaction; the old subject keys are deleted in the same transaction. Resumable: a rekey
    /// that was interrupted continues from the subjects not yet done.
    pub fn rekey(
        &self,
        purpose: Purpose,
        mut progress: impl FnMut(Progress) -> bool,
    ) -> Result<Progress, VaultError> {
        // One node at a time (another node's rekey holds the lease).
        let lease = self
            .job_lease(&format!("rekey:{purpose}"))?
            .ok_or_else(|| elsewhere("rekey", purpose))?;
        self.no_unfinished_by_hand()?;
        let started = self.start_rekey_job(purpose)?;
        while now_unix() < started {
            std::thread::sleep(Duration::from_millis(50));
        }
        let total: u64 = self
            .store
            .subject_key_counts(purpose.as_str())?
            .iter()
            .map(|(_, n)| n)
            .sum();
        let mut state = Progress { done: 0, total };
        let mut fields = 0u64;
        loop {
            let subjects = self.store.subjects_keyed_before(
                purpose.as_str(),
                started,
                self.key_settings.batch_size.max(1),
            )?;
            if subjects.is_empty() {
                break;
            }
            self.no_unfinished_by_hand()?;
            for subject in subjects {
                fields += self.rekey_subject(&subject, purpose, started)?;
                state.done += 1;
                crate::metrics::key_operation("rekey-subject");
            }
            crate::metrics::key_job("rekey", purpose.as_str(), state.done, state.total);
            if !progress(state) || self.is_stopping() {
                return Ok(state);
            }
            if !lease.renew()? {
                return Err(elsewhere("rekey", purpose));
            }
            if !self.key_settings.batch_pause.is_zero() {
                std::thread::sleep(self.key_settings.batch_pause);
            }
        }
        // Counted first: a job's row left behind by a failure in between is no longer this
        // purpose's job under way, and the next rekey starts afresh rather than resuming it.
        self.count_key_job_done(purpose, REKEY)?;
        self.store.finish_key_job(purpose.as_str(), REKEY)?;
        crate::metrics::key_job("rekey", purpose.as_str(), state.done, state.done);
        self.system_event(
            "key-rekey",
            purpose,
            format!(
                "{} subjects rekeyed, {fields} fields re-encrypted; old subject keys destroyed",
                state.done
            ),
        )?;
        // The rekey also tags the purpose's searchable values under the active index key
        // version (the backfill after an index key rotation), once the rekey is on the trail,
        // so a failed backfill never hides a finished rekey. A reindex running on another node
        // does the same work.
        if self.search_config().of(purpose).is_some() {
            drop(lease);
            match self.reindex(Some(purpose), |_| !self.is_stopping()) {
                Ok(_) => {}
                Err(VaultError::FailedPrecondition(why)) => {
                    tracing::info!(purpose = purpose.as_str(), %why, "backfill left to the running reindex");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(state)
    }

    /// A rekey reseals finished evidence files only (an upload still running finds its key
    /// replaced when it finishes). A finished file marked unfinished by hand would be passed over
    /// and lost with the subject key it is sealed under: the rekey is refused until it is put
    /// right. Checked as the job starts and before each batch of subjects, not in the
    /// transaction that drops a subject's old key.
    fn no_unfinished_by_hand(&self) -> Result<(), VaultError> {
        for row in self.store.unfinished_evidence()? {
            if !self.rows.is_authentic(&row) {
                tracing::error!(kind = "evidence", row = %row.id, "a finished evidence file is marked unfinished by hand; the rekey is refused");
                return Err(VaultError::DataLoss(format!(
                    "evidence `{}` is marked unfinished, and its row fails its check (edited by \
                     hand): a rekey would pass over its segments and leave them under a subject \
                     key it replaces. Run `kluis admin store verify`, put the row right, and \
                     rekey again",
                    row.id
                )));
            }
        }
        Ok(())
    }

    /// Rekeys one subject's data of `purpose`, driven from here: stores a new subject key
    /// generation (new values are sealed under it from then on), reseals what is sealed under
    /// older generations in batches, each written back only over the ciphertext it was made from,
    /// and deletes the older generations once nothing is sealed under them. Each step is its own
    /// transaction, so memory and the time a transaction holds the store stay bounded; a job
    /// interrupted anywhere continues where it stopped. Returns the values resealed.
    fn rekey_subject(
        &self,
        subject: &str,
        purpose: Purpose,
        started: i64,
    ) -> Result<u64, VaultError> {
        let subject_id = SubjectId::parse_stored(subject)
            .map_err(|_| StoreError::Corrupt(format!("subject key of `{subject}`")))?;
        // A subject whose last record went meanwhile (erased, expired) has no key left to do.
        let Some(current) = self.store.subject_key(subject, purpose.as_str())? else {
            return Ok(0);
        };
        if current.created_at < started {
            let (row, _) =
                self.keyring
                    .new_subject_key(&subject_id, purpose, current.generation + 1)?;
            // False: begun meanwhile (another run of this job); it is continued below.
            self.store.begin_rekey(&row, started)?;
            self.keyring.forget(&subject_id, purpose);
        }
        let Some(current) = self.store.subject_key(subject, purpose.as_str())? else {
            return Ok(0);
        };
        let generation = current.generation;
        let Some(new_key) = self
            .keyring
            .subject_key_at(&subject_id, purpose, generation)?
        else {
            return Ok(0);
        };
        let algorithm = self.keyring.active_algorithm(purpose)?;
        let mut old_keys: BTreeMap<u32, Arc<crypto::SubjectKey>> = BTreeMap::new();
        let mut old_key =
            |key_gen: u32, record_id: &str| -> Result<Arc<crypto::SubjectKey>, VaultError> {
                if let Some(k) = old_keys.get(&key_gen) {
                    return Ok(Arc::clone(k));
                }
                let k = self
                    .keyring
                    .subject_key_at(&subject_id, purpose, key_gen)?
                    .ok_or_else(|| {
                        VaultError::DataLoss(format!("the subject key of record `{record_id}`"))
                    })?;
                old_keys.insert(key_gen, Arc::clone(&k));
                Ok(k)
            };
        let new = (&*new_key, algorithm, generation);
        let mut done = 0u64;
        for _attempt in 0..REKEY_FINISH_ATTEMPTS {
            loop {
                let batch = self.store.stale_fields(
                    subject,
                    purpose.as_str(),
                    generation,
                    REKEY_FIELD_BATCH,
                )?;
                if batch.is_empty() {
                    break;
                }
                let mut resealed = Vec::with_capacity(batch.len());
                for (record_id, field) in &batch {
                    let old = old_key(field.key_gen, record_id)?;
                    let aad = field_aad(
                        subject,
                        record_id,
                        &field.name,
                        field.category,
                        purpose,
                        field.kind,
                        &field.version,
                    );
                    let plain = crypto::open(&old.fields(), &aad, &field.sealed).map_err(|_| {
                        VaultError::DataLoss(format!(
                            "field `{}` of record `{record_id}`",
                            field.name
                        ))
                    })?;
                    let sealed =
                        crypto::seal(&new_key.fields(), algorithm, generation, &aad, &plain)
                            .map_err(|e| VaultError::Key(KeyError::Crypto(e)))?;
                    resealed.push(Resealed::Field {
                        record_id: record_id.clone(),
                        name: field.name.clone(),
                        version: field.version.clone(),
                        from: field.key_gen,
                        sealed,
                    });
                }
                done += self.store.write_resealed(generation, &resealed)?;
            }
            loop {
                let batch = self.store.stale_segments(
                    subject,
                    purpose.as_str(),
                    generation,
                    REKEY_SEGMENT_BATCH,
                )?;
                if batch.is_empty() {
                    break;
                }
                let mut resealed = Vec::with_capacity(batch.len());
                for (evidence, segment) in &batch {
                    let old = old_key(segment.key_gen, &evidence.record_id)?;
                    resealed.push(Resealed::Segment {
                        evidence_id: evidence.id.clone(),
                        index: segment.index,
                        from: segment.key_gen,
                        sealed: super::evidence::reseal_segment(
                            subject, purpose, evidence, segment, &old, new,
                        )?,
                    });
                }
                done += self.store.write_resealed(generation, &resealed)?;
            }
            // The sealed file names, and which files were seen (the finish refuses a file that
            // completed since).
            let files = self.store.subject_evidence(subject, purpose.as_str())?;
            let mut names = Vec::new();
            for evidence in &files {
                let key_ref = crypto::Header::parse(&evidence.file_name)
                    .map_err(|_| {
                        VaultError::DataLoss(format!("the file name of evidence `{}`", evidence.id))
                    })?
                    .key_ref;
                if key_ref >= generation {
                    continue;
                }
                let old = old_key(key_ref, &evidence.record_id)?;
                names.push(Resealed::FileName {
                    evidence_id: evidence.id.clone(),
                    from: evidence.file_name.clone(),
                    sealed: super::evidence::reseal_file_name(
                        subject, purpose, evidence, &old, new,
                    )?,
                });
            }
            if !names.is_empty() {
                self.store.write_resealed(generation, &names)?;
            }
            let seen: Vec<String> = files.into_iter().map(|e| e.id).collect();
            match self
                .store
                .finish_rekey(subject, purpose.as_str(), generation, &seen)
            {
                Ok(()) => {
                    self.keyring.forget(&subject_id, purpose);
                    return Ok(done);
                }
                // Something came in under an older generation meanwhile: reseal it too.
                Err(StoreError::Stale(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(VaultError::Store(StoreError::Stale(format!(
            "the values of `{subject}` kept arriving under older subject key generations"
        ))))
    }

    /// Schedules the destruction of a version that wraps nothing any more, after `wait_secs`
    /// (the configured default when `None`). Returns when it will be due.
    pub fn schedule_key_destruction(
        &self,
        actor: &Principal,
        purpose: Purpose,
        version: u32,
        wait_secs: Option<u64>,
        justification: &str,
    ) -> Result<i64, VaultError> {
        let target = format!("{purpose} v{version}");
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageKeys,
            "key-schedule-destruction",
            Some(&target),
            justification,
        )?;
        let row = self.version_row(purpose, version)?;
        match row.state {
            KeyState::Active => {
                return Err(VaultError::FailedPrecondition(format!(
                    "`{target}` is the active version; rotate first (`kluis admin keys rotate --purpose {purpose}`)"
                )));
            }
            KeyState::Destroyed => {
                return Err(VaultError::FailedPrecondition(format!(
                    "`{target}` is destroyed already"
                )));
            }
            KeyState::DecryptOnly | KeyState::Scheduled => {}
        }
        let wraps = self.wrapped_by(purpose, version)?;
        if wraps > 0 {
            return Err(VaultError::FailedPrecondition(format!(
                "`{target}` still wraps {wraps} subject keys; run `kluis admin keys rewrap --purpose {purpose}` first"
            )));
        }
        let wait = i64::try_from(wait_secs.unwrap_or(self.key_settings.destroy_wait_secs))
            .unwrap_or(i64::MAX);
        let due = now_unix().saturating_add(wait);
        event.purpose = Some(purpose.as_str().into());
        event.target = Some(target.clone());
        event.reason = Some(format!("due at {due}"));
        // The trail first: nothing happens to a key that is not on record.
        event.commit()?;
        if !self.keyring.set_key_state(
            purpose,
            version,
            KeyState::DecryptOnly,
            KeyState::Scheduled,
            Some(due),
        )? {
            return Err(VaultError::FailedPrecondition(format!(
                "`{target}` changed state meanwhile; look again"
            )));
        }
        Ok(due)
    }

    /// Cancels a scheduled destruction; the version is decrypt-only again.
    pub fn cancel_key_destruction(
        &self,
        actor: &Principal,
        purpose: Purpose,
        version: u32,
        justification: &str,
    ) -> Result<(), VaultError> {
        let target = format!("{purpose} v{version}");
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageKeys,
            "key-cancel-destruction",
            Some(&target),
            justification,
        )?;
        self.version_row(purpose, version)?;
        event.purpose = Some(purpose.as_str().into());
        event.target = Some(target.clone());
        event.commit()?;
        if !self.keyring.set_key_state(
            purpose,
            version,
            KeyState::Scheduled,
            KeyState::DecryptOnly,
            None,
        )? {
            return Err(VaultError::FailedPrecondition(format!(
                "`{target}` is not scheduled for destruction (or was destroyed meanwhile)"
            )));
        }
        Ok(())
    }

    /// Destroys every scheduled version whose waiting period is over. With `actor`, checked
    /// and audited as theirs; without, it is the server's own sweeper.
    pub fn destroy_due_keys(
        &self,
        actor: Option<&Principal>,
    ) -> Result<Vec<(Purpose, u32)>, VaultError> {
        let template = match actor {
            Some(a) => self
                .require_admin(a, AdminAction::ManageKeys, "key-destroy", None, "")?
                .into_template(),
            None => AuditEvent {
                principal: "kluis".into(),
                action: "key-destroy".into(),
                decision: "allow".into(),
                ..AuditEvent::default()
            },
        };
        let now = now_unix();
        let mut destroyed = Vec::new();
        for &purpose in Purpose::ALL {
            for row in self.keyring.purpose_key_rows(purpose)? {
                if row.state != KeyState::Scheduled || row.destroy_after.is_none_or(|t| t > now) {
                    continue;
                }
                // The trail first: no key material goes that is not on record.
                let mut event = AuditEvent {
                    time: now,
                    ..template.clone()
                };
                event.purpose = Some(purpose.as_str().into());
                event.target = Some(format!("{purpose} v{}", row.version));
                event.reason = Some("erasing the key material from the store".into());
                self.audit.append(&event)?;
                match self.keyring.destroy_version(purpose, row.version, now) {
                    Ok(()) => {
                        tracing::info!(
                            purpose = purpose.as_str(),
                            version = row.version,
                            "purpose key version destroyed"
                        );
                        destroyed.push((purpose, row.version));
                    }
                    Err(KeyError::Store(StoreError::InUse(n))) => {
                        tracing::warn!(
                            purpose = purpose.as_str(),
                            version = row.version,
                            still_wraps = n,
                            "scheduled destruction skipped: the version is in use again"
                        );
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if actor.is_some() {
            let mut event = AuditEvent {
                time: now_unix(),
                ..template
            };
            event.reason = Some(format!("{} key versions destroyed", destroyed.len()));
            self.audit.append(&event)?;
        }
        Ok(destroyed)
    }

    /// Raises the minimum decryption version of `purpose` to `version`; refused while older
    /// versions still wrap subject keys. The minimum only ever rises: a version at or below the
    /// current one (version 1, the first, when none is set; so also version 0) is refused, and
    /// audited as refused.
    pub fn set_min_decrypt_version(
        &self,
        actor: &Principal,
        purpose: Purpose,
        version: u32,
        justification: &str,
    ) -> Result<(), VaultError> {
        let target = format!("{purpose} v{version}");
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageKeys,
            "key-set-minimum",
            Some(&target),
            justification,
        )?;
        event.purpose = Some(purpose.as_str().into());
        if version > self.active_version(purpose)? {
            return event.refuse(format!("`{purpose}` has no version {version} yet"));
        }
        let current = self.keyring.min_decrypt_version(purpose)?.max(1);
        if version <= current {
            return event.refuse(format!(
                "the minimum decryption version of `{purpose}` is {current} already and only \
                 ever rises; give a version above {current}"
            ));
        }
        // Checked before the entry, so a refusal is on the trail as one (the store checks again
        // in its own transaction).
        let below: u64 = self
            .store
            .subject_key_counts(purpose.as_str())?
            .into_iter()
            .filter(|(v, _)| *v < version)
            .map(|(_, n)| n)
            .sum();
        if below > 0 {
            return event.refuse(format!(
                "{below} subject keys of `{purpose}` are still wrapped under versions below \
                 {version}; rewrap first"
            ));
        }
        event.commit()?;
        match self.keyring.set_min_decrypt_version(purpose, version) {
            Err(KeyError::Store(StoreError::InUse(n))) => {
                Err(VaultError::FailedPrecondition(format!(
                    "{n} subject keys of `{purpose}` are still wrapped under versions below {version}; rewrap first"
                )))
            }
            other => Ok(other?),
        }
    }

    /// Asks for a change of the root key to `secret` (first step of two): records a pending
    /// root change with its id, the requester and the new secret's check (never the key). It
    /// takes effect only after a privacy officer who is not the requester approves it
    /// (`approve_root_change`) and the requester then calls `rotate_root` with the same secret
    /// and the id, within `ROOT_CHANGE_TTL_SECS`. A new request replaces one still pending.
    pub fn request_root_change(
        &self,
        actor: &Principal,
        secret: &RootSecret,
        justification: &str,
    ) -> Result<RootChangeRequest, VaultError> {
        let _one = self.lock_root_change();
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageKeys,
            "root-change-request",
            None,
            justification,
        )?;
        let check = self.keyring.root_check(secret)?;
        let now = now_unix();
        let change = RootChange {
            id: format!("root_{}", hex::encode(rand::random::<[u8; 8]>())),
            requested_by: actor.id.as_str().to_owned(),
            requested_at: now,
            expires_at: now.saturating_add(ROOT_CHANGE_TTL_SECS),
            check,
            from: Some(self.keyring.current_root_mark()?),
            approved_by: None,
            approved_at: None,
        };
        event.target = Some(change.id.clone());
        event.reason = Some(format!(
            "new root key (check value {}) awaits approval by a privacy officer until {}{}",
            change.check.check_value().get(..16).unwrap_or_default(),
            change.expires_at,
            match self.root_change()? {
                Some(old) => format!("; replaces pending request {}", old.id),
                None => String::new(),
            }
        ));
        event.commit()?;
        self.store.set_meta(
            META_ROOT_CHANGE,
            &self.rows.seal_meta(
                META_ROOT_CHANGE,
                &serde_json::to_vec(&change).map_err(corrupt)?,
            ),
        )?;
        Ok(RootChangeRequest {
            id: change.id,
            expires_at: change.expires_at,
        })
    }

    /// Approves a pending root change as its second person: a privacy officer who did not
    /// request it, saying why (a justification is required). Audited either way.
    pub fn approve_root_change(
        &self,
        actor: &Principal,
        request_id: &str,
        justification: &str,
    ) -> Result<(), VaultError> {
        super::tokens::check_justification(justification, crate::domain::Need::Required)?;
        // The id is written to the audit entry in clear, also when it names nothing.
        super::guard::check_text("request_id", request_id)?;
        let _one = self.lock_root_change();
        let mut event = self.require_admin(
            actor,
            AdminAction::Approve,
            "root-change-approve",
            Some(request_id),
            justification,
        )?;
        let Some(mut change) = self.root_change()?.filter(|c| c.id == request_id) else {
            return Err(VaultError::NotFound(format!(
                "pending root change `{request_id}`"
            )));
        };
        if change.approved_by.is_some() {
            return Err(VaultError::FailedPrecondition(format!(
                "root change `{request_id}` is approved already"
            )));
        }
        if change.expires_at <= now_unix() {
            return event.refuse(format!(
                "root change `{request_id}` expired; the security officer asks again \
                 (`kluis admin root rotate`)"
            ));
        }
        if same_principal(&change.requested_by, actor) {
            return event.refuse(
                "the requester of a root change cannot approve it; ask a privacy officer who did \
                 not request it"
                    .into(),
            );
        }
        if let Err(why) = change.over(&self.keyring.current_root_mark()?) {
            return event.refuse(why);
        }
        event.reason = Some(format!(
            "root change requested by `{}`; the requester may now carry it out until {}",
            change.requested_by, change.expires_at
        ));
        event.commit()?;
        change.approved_by = Some(actor.id.as_str().to_owned());
        change.approved_at = Some(now_unix());
        self.store.set_meta(
            META_ROOT_CHANGE,
            &self.rows.seal_meta(
                META_ROOT_CHANGE,
                &serde_json::to_vec(&change).map_err(corrupt)?,
            ),
        )?;
        Ok(())
    }

    /// Changes the root key (second step): only for the approved, unexpired root change
    /// `request_id`, by its requester, with the secret it was requested for. Rewraps the purpose
    /// keys (and the audit key) under the new root key and closes the request in the same
    /// transaction. The old passphrase or key file stops working.
    pub fn rotate_root(
        &self,
        actor: &Principal,
        request_id: &str,
        secret: &RootSecret,
        justification: &str,
    ) -> Result<(), VaultError> {
        // The id is written to the audit entry in clear, also when it names nothing.
        super::guard::check_text("request_id", request_id)?;
        let _one = self.lock_root_change();
        let mut event = self.require_admin(
            actor,
            AdminAction::ManageKeys,
            "root-rotate",
            Some(request_id),
            justification,
        )?;
        let Some(change) = self.root_change()?.filter(|c| c.id == request_id) else {
            return event.refuse(format!(
                "no pending root change `{request_id}`; ask for one first (`kluis admin root \
                 rotate` without --request)"
            ));
        };
        if !same_principal(&change.requested_by, actor) {
            return event.refuse(format!(
                "root change `{request_id}` was requested by `{}`; only they carry it out",
                change.requested_by
            ));
        }
        if change.expires_at <= now_unix() {
            return event.refuse(format!(
                "root change `{request_id}` expired; ask again (`kluis admin root rotate`)"
            ));
        }
        if let Err(why) = change.over(&self.keyring.current_root_mark()?) {
            return event.refuse(why);
        }
        let Some(approver) = change.approved_by.clone() else {
            return event.refuse(format!(
                "root change `{request_id}` awaits approval by a privacy officer (`kluis admin \
                 root approve {request_id} --justification WHY`)"
            ));
        };
        let Some(new_root) = self.keyring.new_root(secret, &change.check)? else {
            return event.refuse(format!(
                "the new root secret is not the one root change `{request_id}` was requested \
                 and approved for; ask again for this one"
            ));
        };
        event.reason = Some(format!(
            "purpose keys rewrapped under a new root key (approved by `{approver}`); the old one \
             no longer opens the store"
        ));
        event.commit()?;
        self.keyring
            .rotate_root(new_root, &[(META_ROOT_CHANGE, Vec::new())])?;
        tracing::info!("root key changed");
        Ok(())
    }

    /// The pending root change, if any (an empty row: none).
    fn root_change(&self) -> Result<Option<RootChange>, VaultError> {
        // Written by hand (an approval forged in the database), it is not obeyed.
        match self.store.meta(META_ROOT_CHANGE)? {
            Some(v) if !v.is_empty() => {
                let json = self.rows.open_meta(META_ROOT_CHANGE, &v)?;
                Ok(Some(serde_json::from_slice(json).map_err(corrupt)?))
            }
            _ => Ok(None),
        }
    }

    fn lock_root_change(&self) -> std::sync::MutexGuard<'_, ()> {
        self.root_change_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Continues what an interrupted server left: rewraps to the active versions and
    /// unfinished rekeys. Run at start-up.
    pub fn resume_key_jobs(&self) -> Result<(), VaultError> {
        // One purpose failing must not keep the others from being resumed.
        let mut first_error = None;
        for job in self.store.key_jobs()? {
            if let (Ok(p), REKEY) = (job.purpose.parse::<Purpose>(), job.kind.as_str()) {
                // Running on another node (of a shared store): that node finishes it, or this
                // one takes it over once that node stops renewing its lease.
                let Some(_free) = self.job_lease(&format!("rekey:{p}"))? else {
                    continue;
                };
                // The jobs were listed before the lease was taken: the node that held it may
                // have finished this one since (it does so before it gives the lease up), and
                // a second run would rekey every subject again.
                let unfinished = match self.key_job_under_way(p, REKEY) {
                    Ok(job) => job,
                    Err(e) => {
                        first_error.get_or_insert(e);
                        continue;
                    }
                };
                match unfinished {
                    None => continue,
                    Some(false) => {
                        // Nobody asked for this job: a row written by hand starts no rekey.
                        tracing::error!(
                            purpose = p.as_str(),
                            "a stored rekey job is not one kluis started (its MAC fails: written \
                             or edited by hand, a finished job's row put back, or a row of a \
                             build before key jobs were authenticated); it is removed, not \
                             resumed: run `kluis admin keys rekey` if a rekey was under way"
                        );
                        if let Err(e) = self.store.finish_key_job(p.as_str(), REKEY) {
                            first_error.get_or_insert(e.into());
                        }
                        continue;
                    }
                    Some(true) => {}
                }
                tracing::info!(purpose = p.as_str(), "resuming an interrupted rekey");
                if let Err(e) = self.rekey(p, |_| true) {
                    tracing::error!(purpose = p.as_str(), error = %e, "resumed rekey failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        for &purpose in Purpose::ALL {
            let Some(_free) = self.job_lease(&format!("rewrap:{purpose}"))? else {
                continue;
            };
            if let Err(e) = self.rewrap(purpose, |_| true) {
                tracing::error!(purpose = purpose.as_str(), error = %e, "resumed rewrap failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn keys_info(&self, only: Option<Purpose>) -> Result<Vec<PurposeKeysInfo>, VaultError> {
        let jobs = self.store.key_jobs()?;
        let purposes: Vec<Purpose> = match only {
            Some(p) => vec![p],
            None => Purpose::ALL.to_vec(),
        };
        purposes
            .into_iter()
            .map(|purpose| {
                let counts: BTreeMap<u32, u64> = self
                    .store
                    .subject_key_counts(purpose.as_str())?
                    .into_iter()
                    .collect();
                let rows = self.keyring.purpose_key_rows(purpose)?;
                let min_decrypt_version = self.keyring.min_decrypt_version(purpose)?;
                let versions: Vec<KeyVersionInfo> = rows
                    .iter()
                    .map(|r| KeyVersionInfo {
                        version: r.version,
                        state: r.state.as_str().to_owned(),
                        algorithm: r.algorithm.as_str().to_owned(),
                        subject_keys: counts.get(&r.version).copied().unwrap_or(0),
                        created_at: r.created_at,
                        retired_at: r.retired_at,
                        destroy_after: r.destroy_after,
                        destroyed_at: r.destroyed_at,
                    })
                    .collect();
                Ok(PurposeKeysInfo {
                    purpose,
                    active_version: rows
                        .iter()
                        .rev()
                        .find(|r| r.state == KeyState::Active)
                        .map_or(0, |r| r.version),
                    min_decrypt_version,
                    keys_on_destroyed_versions: versions
                        .iter()
                        .filter(|v| v.state == KeyState::Destroyed.as_str())
                        .map(|v| v.subject_keys)
                        .sum(),
                    versions,
                    orphan_fields: self.store.orphan_fields(purpose.as_str())?,
                    rekey_pending_since: jobs
                        .iter()
                        .find(|j| j.purpose == purpose.as_str() && j.kind == REKEY)
                        .map(|j| j.started_at),
                })
            })
            .collect()
    }

    fn active_version(&self, purpose: Purpose) -> Result<u32, VaultError> {
        self.keyring
            .purpose_key_rows(purpose)?
            .iter()
            .rev()
            .find(|r| r.state == KeyState::Active)
            .map(|r| r.version)
            .ok_or_else(|| VaultError::Key(KeyError::MissingPurposeKey(purpose.as_str().into())))
    }

    fn version_row(
        &self,
        purpose: Purpose,
        version: u32,
    ) -> Result<crate::store::PurposeKeyRow, VaultError> {
        self.keyring
            .purpose_key_rows(purpose)?
            .into_iter()
            .find(|r| r.version == version)
            .ok_or_else(|| VaultError::NotFound(format!("key version `{purpose} v{version}`")))
    }

    fn wrapped_by(&self, purpose: Purpose, version: u32) -> Result<u64, VaultError> {
        Ok(self
            .store
            .subject_key_counts(purpose.as_str())?
            .into_iter()
            .find(|(v, _)| *v == version)
            .map_or(0, |(_, n)| n))
    }

    fn system_event(
        &self,
        action: &str,
        purpose: Purpose,
        reason: String,
    ) -> Result<(), VaultError> {
        let event = AuditEvent {
            time: now_unix(),
            principal: "kluis".into(),
            action: action.into(),
            decision: "allow".into(),
            purpose: Some(purpose.as_str().into()),
            reason: Some(reason),
            ..AuditEvent::default()
        };
        self.audit.append(&event)?;
        Ok(())
    }
}

impl Vault {
    /// Records the start of a rekey of `purpose`, or finds the one under way; returns its start.
    /// A stored job that is not one kluis started as the job under way (its MAC fails: written
    /// or edited by hand, or a finished job's row put back, whose start would let the rekey pass
    /// over the subjects keyed since) is replaced, and the rekey starts afresh.
    fn start_rekey_job(&self, purpose: Purpose) -> Result<i64, VaultError> {
        let done = self.key_jobs_done(purpose, REKEY)?;
        // A subject key created in the same second as the job start counts as done, so the job
        // starts one second from now.
        let fresh = self.sealed_key_job(
            KeyJobRow {
                purpose: purpose.as_str().to_owned(),
                kind: REKEY.to_owned(),
                started_at: now_unix() + 1,
                mac: Vec::new(),
            },
            done,
        );
        let mut job = self.store.start_key_job(&fresh)?;
        if !self.key_job_is_authentic(&job, done) {
            tracing::error!(
                %purpose,
                "the stored rekey job is not one kluis started as the rekey under way (its MAC \
                 fails: written or edited by hand, or a finished job's row put back); it is \
                 replaced, and the rekey starts afresh"
            );
            self.store.finish_key_job(purpose.as_str(), REKEY)?;
            job = self.store.start_key_job(&fresh)?;
            if !self.key_job_is_authentic(&job, done) {
                return Err(VaultError::DataLoss(format!(
                    "the stored rekey job of `{purpose}` was replaced by hand again as it \
                     started; nothing was rekeyed (see the server log and run `kluis admin \
                     store verify`)"
                )));
            }
        }
        let started = job.started_at;
        // A job kluis started (here or on a node whose clock is a little ahead) begins within
        // a few seconds; a later start is a node's clock far ahead, and waiting for it would
        // hold the job, and the node's shutdown, for as long as it says.
        if started > now_unix() + KEY_JOB_SKEW_SECS {
            tracing::error!(%purpose, started, "the stored rekey job starts in the future; the rekey is refused");
            return Err(VaultError::DataLoss(format!(
                "the stored rekey job of `{purpose}` says it starts at {started} (Unix seconds), \
                 later than kluis ever starts one (a node's clock is far ahead): remove the row \
                 (`DELETE FROM key_jobs WHERE purpose = '{purpose}'`) once the clocks agree, and \
                 rekey again"
            )));
        }
        Ok(started)
    }

    /// Whether a job of `kind` of `purpose` is stored (`None`: none), and if so whether kluis
    /// started it as the job under way.
    fn key_job_under_way(&self, purpose: Purpose, kind: &str) -> Result<Option<bool>, VaultError> {
        self.store
            .key_jobs()?
            .into_iter()
            .find(|j| j.purpose == purpose.as_str() && j.kind == kind)
            .map(|job| self.stored_key_job_is_authentic(&job))
            .transpose()
    }

    fn sealed_key_job(&self, mut job: KeyJobRow, done: u64) -> KeyJobRow {
        job.mac = self.rows.mac(&rows::KeyJobMac { job: &job, done });
        job
    }

    fn key_job_is_authentic(&self, job: &KeyJobRow, done: u64) -> bool {
        self.rows.is_authentic(&rows::KeyJobMac { job, done })
    }

    /// Whether `job`, as stored, is one kluis started as the job under way (`store verify`).
    pub(crate) fn stored_key_job_is_authentic(&self, job: &KeyJobRow) -> Result<bool, VaultError> {
        let Ok(purpose) = job.purpose.parse::<Purpose>() else {
            return Ok(false);
        };
        let done = self.key_jobs_done(purpose, &job.kind)?;
        Ok(self.key_job_is_authentic(job, done))
    }

    /// How many jobs of `kind` of `purpose` finished, by the meta row under its MAC.
    fn key_jobs_done(&self, purpose: Purpose, kind: &str) -> Result<u64, VaultError> {
        let (_, counts) = self.key_jobs_done_row()?;
        Ok(counts
            .get(&format!("{purpose}:{kind}"))
            .copied()
            .unwrap_or(0))
    }

    /// The meta row as stored, and the counts it holds.
    fn key_jobs_done_row(&self) -> Result<KeyJobsDone, VaultError> {
        let raw = self.store.meta(META_KEY_JOBS_DONE)?;
        let counts = match &raw {
            None => BTreeMap::new(),
            Some(raw) => {
                let bytes = self.rows.open_meta(META_KEY_JOBS_DONE, raw)?;
                serde_json::from_slice(bytes).map_err(|_| {
                    VaultError::DataLoss(format!("the stored metadata `{META_KEY_JOBS_DONE}`"))
                })?
            }
        };
        Ok((raw, counts))
    }

    /// Counts a job of `kind` of `purpose` as finished (over the row as read: jobs of other
    /// purposes may finish on other nodes meanwhile).
    fn count_key_job_done(&self, purpose: Purpose, kind: &str) -> Result<(), VaultError> {
        let mut tries = 0;
        loop {
            let (raw, mut counts) = self.key_jobs_done_row()?;
            *counts.entry(format!("{purpose}:{kind}")).or_insert(0) += 1;
            let bytes = serde_json::to_vec(&counts)
                .map_err(|e| VaultError::Store(StoreError::Database(e.to_string())))?;
            match self.store.replace_meta(
                META_KEY_JOBS_DONE,
                raw.as_deref(),
                &self.rows.seal_meta(META_KEY_JOBS_DONE, &bytes),
            ) {
                Err(StoreError::Stale(_)) if tries < 5 => tries += 1,
                done => return done.map_err(VaultError::from),
            }
        }
    }
}
