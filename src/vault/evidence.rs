//! Evidence files (photos, film, sound, letters): fields whose value is streamed in and out in
//! segments sealed with the streaming AEAD of `crypto::stream`, under the same subject key,
//! policy, audit, retention and erasure as any other field.
//!
//! Invariant: memory per upload or download is bounded by a few segments, whatever the file size.
//! Invariant: an upload is readable only once it is complete; an upload that fails or is
//! interrupted is discarded (`Upload` discards itself on drop, and start-up discards what a crash
//! left behind).
//! Invariant: a download opens nothing before its decision is in the audit trail, and checks every
//! segment it returns, plus the final one, so a cut-off file fails even for a range read.

use std::{collections::BTreeMap, fmt, sync::Arc};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Vault, VaultError, guard, record_meta};
use crate::{
    crypto::{
        self, AadContext, Algorithm, SubjectKey,
        stream::{self, FileKey, SEGMENT_SIZE},
    },
    domain::{
        AccessContext, Category, FieldName, InputError, Principal, Purpose, RecordId, SubjectId,
    },
    keys::KeyError,
    policy::{Action, FieldFlags, FieldResource, Grant},
    store::{EvidenceRow, RecordRow, SegmentRow, StoreError},
};

/// Segments written per store transaction (1 MiB).
const SEGMENTS_PER_BATCH: usize = 16;
/// Longest media type accepted.
const MAX_MEDIA_TYPE: usize = 127;
/// Longest file name accepted.
const MAX_FILE_NAME: usize = 255;

/// Where an upload goes: a new record of a subject, or an existing record.
#[derive(Clone, Debug)]
pub enum EvidenceTarget {
    /// A new record for this subject under the context's purpose.
    Subject(SubjectId),
    /// An existing record.
    Record(RecordId),
}

/// What the first message of an upload declares.
#[derive(Clone)]
pub struct EvidenceStart {
    /// Where it goes.
    pub target: EvidenceTarget,
    /// The field name.
    pub name: FieldName,
    /// The category.
    pub category: Category,
    /// The declared media type, e.g. `video/mp4`.
    pub media_type: String,
    /// The original file name (may be empty).
    pub file_name: String,
}

impl fmt::Debug for EvidenceStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvidenceStart")
            .field("target", &self.target)
            .field("name", &self.name)
            .field("category", &self.category)
            .field("media_type", &self.media_type)
            .finish_non_exhaustive()
    }
}

/// What a finished upload stored.
#[derive(Clone, Debug)]
pub struct EvidenceReceipt {
    /// `ev_…`.
    pub evidence_id: String,
    /// The record it belongs to.
    pub record_id: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
    /// When the record will be destroyed, when known.
    pub expires_at: Option<i64>,
}

/// What a download returns before the data.
#[derive(Clone)]
pub struct EvidenceInfo {
    /// `ev_…`.
    pub evidence_id: String,
    /// The record.
    pub record_id: String,
    /// Field name.
    pub name: String,
    /// Category.
    pub category: Category,
    /// Declared media type.
    pub media_type: String,
    /// Original file name.
    pub file_name: Zeroizing<String>,
    /// Whole file size.
    pub size: u64,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
    /// First byte returned.
    pub offset: u64,
    /// Bytes returned.
    pub length: u64,
}

impl fmt::Debug for EvidenceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvidenceInfo")
            .field("evidence_id", &self.evidence_id)
            .field("record_id", &self.record_id)
            .field("size", &self.size)
            .field("offset", &self.offset)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// How old an unfinished upload on a shared store must be to count as abandoned by a node that
/// died: longer than an upload runs (the stream times out when the client goes quiet).
pub const ABANDONED_UPLOAD_SECS: i64 = 24 * 3600;

/// A finished evidence file as stored (`Vault::stored_evidence`).
struct Stored {
    record: crate::store::RecordRow,
    evidence: crate::store::EvidenceRow,
    meta: super::RecordMeta,
    subject: SubjectId,
    record_id: RecordId,
}

/// The audit entry of a download to do `action`: evidence is downloaded to read or export it.
fn download_entry(action: Action) -> Result<&'static str, VaultError> {
    match action {
        Action::Read => Ok("evidence-read"),
        Action::Export => Ok("evidence-export"),
        _ => Err(VaultError::FailedPrecondition(format!(
            "evidence is downloaded to read or export it, not to {}",
            action.as_str()
        ))),
    }
}

impl Vault {
    /// Starts an upload: checks the declaration, decides and audits the write, and stores the
    /// unfinished evidence row (and the new record). Data follows through `Upload::write`.
    pub fn begin_evidence(
        self: &Arc<Self>,
        principal: &Principal,
        ctx: &AccessContext,
        start: EvidenceStart,
    ) -> Result<Upload, VaultError> {
        check_start(&start)?;
        let now = self.clock.now();
        let new_id = self.new_record_id();
        let (record, new_record) = match &start.target {
            EvidenceTarget::Record(id) => {
                // Decided under the record's own purpose below: a declared purpose that differs
                // is refused by the policy (purpose limitation) and audited, never answered
                // before the decision with the record's purpose.
                let (record, _) = self.load_metas(id)?;
                (record, false)
            }
            EvidenceTarget::Subject(subject) => (
                self.rows.seal(
                    RecordRow {
                        id: new_id.as_str().into(),
                        subject: subject.as_str().into(),
                        purpose: ctx.purpose,
                        labels: BTreeMap::new(),
                        created_at: now,
                        updated_at: now,
                        closed_at: None,
                        expires_at: self.retention.expires_at(ctx.purpose, now),
                        mac: Vec::new(),
                        fields_mac: Vec::new(),
                    },
                    |r, mac| {
                        r.mac = mac;
                        r.fields_mac = self.rows.fields_mac(new_id.as_str(), []);
                    },
                ),
                true,
            ),
        };
        let subject = SubjectId::parse_stored(&record.subject)
            .map_err(|_| StoreError::Corrupt(format!("subject of `{}`", record.id)))?;
        let record_id = RecordId::parse("record", &record.id)
            .map_err(|_| StoreError::Corrupt(format!("record `{}`", record.id)))?;
        let purpose: crate::domain::Purpose = record.purpose;
        let resource = FieldResource {
            record: record.id.clone(),
            name: start.name.as_str().into(),
            category: start.category,
            purpose,
            subject: record.subject.clone(),
            flags: FieldFlags {
                record_closed: record.closed_at.is_some(),
                ..FieldFlags::default()
            },
        };
        let resources = [resource];
        let decisions = self.decide(principal, Action::Write, ctx, &resources)?;
        // A field or file of that name on the record is checked once the policy allowed and
        // before the entry: named back only to a caller who may list it, refused like any
        // field the policy keeps from it otherwise, and on the trail as refused either way.
        let precondition = || -> Result<(), VaultError> {
            if new_record {
                return Ok(());
            }
            let Some((stored, fields)) = self.store.record(&record.id)? else {
                return Ok(());
            };
            super::answers(&record.id, &stored)?;
            let name = start.name.as_str();
            let taken: Option<FieldResource> = match fields.iter().find(|f| f.name == name) {
                Some(f) => Some(super::resource(&stored, purpose, f)?),
                None => self
                    .finished_evidence(&record.id)?
                    .iter()
                    .find(|e| e.name == name)
                    .map(|e| super::evidence_resource(&stored, purpose, e))
                    .transpose()?,
            };
            let Some(taken) = taken else { return Ok(()) };
            let known = self
                .decide(principal, Action::List, ctx, std::slice::from_ref(&taken))?
                .first()
                .is_some_and(crate::policy::Decision::is_allow);
            Err(if known {
                VaultError::FailedPrecondition(format!(
                    "record `{}` has a field `{name}` already; choose another field name",
                    record.id
                ))
            } else {
                VaultError::Denied(format!(
                    "field `{name}`: you may not write it on this record"
                ))
            })
        };
        self.require_all_then(
            principal,
            ctx,
            "evidence-upload",
            &subject,
            &record_id,
            &resources,
            &decisions,
            precondition,
        )
        .map_err(|e| {
            if new_record {
                e
            } else {
                self.write_refusal(principal, ctx, &record, &resources, e)
            }
        })?;
        // Should the upload not be finished (cancelled, failed), the trail says so.
        let mut unfinished = self.event(
            principal,
            ctx,
            "evidence-upload",
            Some(&subject),
            Some(&record_id),
        );
        unfinished.fields = super::audit_fields(&resources, &decisions);
        unfinished.decision = "deny".into();
        unfinished.reason =
            Some("not carried out: the upload was not finished; nothing was stored".into());

        // Anything that stops the upload from here on is on the trail as not carried out.
        let not_carried_out = |e: VaultError| {
            let mut entry = unfinished.clone();
            entry.time = crate::domain::now_unix();
            entry.reason = Some(format!("not carried out: {e}"));
            if let Err(a) = self.audit.append(&entry) {
                tracing::error!(error = %a, "cannot audit an upload that did not start");
            }
            e
        };
        let evidence_id = format!("ev_{}", hex::encode(rand::random::<[u8; 16]>()));
        let active = self
            .keyring
            .subject_key_or_create(&subject, purpose)
            .map_err(|e| not_carried_out(e.into()))?;
        let salt = stream::new_salt();
        let aad = evidence_aad(
            &subject,
            &record.id,
            &evidence_id,
            start.name.as_str(),
            start.category,
            purpose,
        );
        let key = FileKey::derive(
            &active.key,
            active.algorithm,
            active.generation,
            &salt,
            &aad,
        )
        .map_err(|e| not_carried_out(VaultError::Key(KeyError::Crypto(e))))?;
        let file_name = crypto::seal(
            &active.key.evidence_names(),
            active.algorithm,
            active.generation,
            &aad,
            start.file_name.as_bytes(),
        )
        .map_err(|e| not_carried_out(VaultError::Key(KeyError::Crypto(e))))?;
        let row = EvidenceRow {
            id: evidence_id.clone(),
            record_id: record.id.clone(),
            name: start.name.as_str().into(),
            category: start.category,
            media_type: start.media_type.clone(),
            file_name,
            size: 0,
            sha256: String::new(),
            salt: salt.to_vec(),
            complete: false,
            owns_record: new_record,
            created_at: now,
            mac: Vec::new(),
        };
        let row = self.rows.seal(row, |r, mac| r.mac = mac);
        let begun = row.clone();
        self.store
            .begin_evidence(new_record.then_some(&record), &row)
            .map_err(|e| match e {
                StoreError::Exists(what) => VaultError::FailedPrecondition(format!(
                    "record `{}` has a {what} already; choose another field name",
                    record.id
                )),
                StoreError::Missing(_) => VaultError::NotFound(format!("record `{}`", record.id)),
                other => other.into(),
            })
            .map_err(not_carried_out)?;
        tracing::info!(
            evidence_id = evidence_id.as_str(),
            record_id = record.id.as_str(),
            purpose = ctx.purpose.as_str(),
            "evidence upload started"
        );
        let [decided] = resources;
        Ok(Upload {
            vault: Arc::clone(self),
            decided,
            evidence_id,
            record_id: record.id,
            subject,
            purpose,
            size: 0,
            sealer: Sealer {
                key,
                buffer: Zeroizing::new(Vec::with_capacity(SEGMENT_SIZE)),
                next_index: 0,
                hasher: Sha256::new(),
                batch: Vec::with_capacity(SEGMENTS_PER_BATCH),
            },
            storer: None,
            guard: guard::Scanner::new(),
            expires_at: record.expires_at,
            finished: false,
            file_name: Zeroizing::new(start.file_name.clone()),
            name_key: active,
            aad,
            begun,
            unfinished,
        })
    }

    /// Opens an evidence file for reading `range` (offset, length; length 0 means to the end):
    /// decides and audits the read, and returns what the download starts with. Nothing of the
    /// file is decrypted when the policy denies it.
    pub fn open_evidence(
        self: &Arc<Self>,
        principal: &Principal,
        ctx: &AccessContext,
        evidence_id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<(EvidenceInfo, Download), VaultError> {
        self.open_evidence_as(principal, ctx, evidence_id, range, Action::Read)
    }

    /// As `open_evidence`, decided as `action`: `Read`, or `Export` for the copy of a subject's
    /// data that the export lists it in (audited as `evidence-export`). Any other action is
    /// refused.
    pub fn open_evidence_as(
        self: &Arc<Self>,
        principal: &Principal,
        ctx: &AccessContext,
        evidence_id: &str,
        range: Option<(u64, u64)>,
        action: Action,
    ) -> Result<(EvidenceInfo, Download), VaultError> {
        let audited = download_entry(action)?;
        let Stored {
            record,
            evidence,
            meta,
            subject,
            record_id,
        } = self.stored_evidence(evidence_id)?;
        let category: Category = evidence.category;
        let resources = [super::evidence_resource(&record, meta.purpose, &evidence)?];
        let decisions = self.decide(principal, action, ctx, &resources)?;
        let mut event = self.event(principal, ctx, audited, Some(&subject), Some(&record_id));
        event.fields = super::audit_fields(&resources, &decisions);
        event.target = Some(evidence.id.clone());
        let grant = decisions.first().and_then(|d| {
            d.is_allow().then_some(())?;
            Some(d)
        });
        event.decision = if grant.is_some() { "allow" } else { "deny" }.into();
        if let Some((offset, length)) = range {
            event.reason = Some(format!("bytes {offset}+{length}"));
        }
        if grant.is_some() {
            // A download by an external party is a disclosure: registered before its entry is
            // written and before a segment is opened (the entry's reason names it).
            let file: Vec<&crate::policy::FieldResource> = resources.iter().collect();
            if let Some(id) = self.register_external_read(principal, ctx, &record, &file)? {
                let range = event.reason.take();
                event.reason = Some(match range {
                    Some(r) => format!("{r}; disclosure {id}"),
                    None => format!("disclosure {id}"),
                });
            }
        }
        let seq = self.audit.append(&event)?;
        let Some(grant) = grant.and_then(|d| d.grant(&seq)) else {
            // The reasons only to a caller who may know the file exists.
            let known = self
                .decide(principal, Action::List, ctx, &resources)?
                .first()
                .is_some_and(crate::policy::Decision::is_allow);
            return Err(VaultError::Denied(if known {
                super::distinct_reasons(&decisions)
            } else {
                "you may not read this evidence (the reasons are on the audit trail)".into()
            }));
        };
        // The range is checked only now: a caller without a grant learns nothing of the size.
        let (offset, length) = match range {
            None => (0, evidence.size),
            Some((offset, length)) => {
                if offset > evidence.size {
                    return Err(InputError::new(
                        "range.offset",
                        format!("starts past the end of the file ({} bytes)", evidence.size),
                    )
                    .into());
                }
                let rest = evidence.size - offset;
                if length > rest {
                    return Err(InputError::new(
                        "range.length",
                        format!(
                            "ends past the end of the file ({} bytes; {rest} from the offset)",
                            evidence.size
                        ),
                    )
                    .into());
                }
                (offset, if length == 0 { rest } else { length })
            }
        };

        let aad = evidence_aad(
            &subject,
            &record.id,
            &evidence.id,
            &evidence.name,
            category,
            meta.purpose,
        );
        let mut download = Download {
            vault: Arc::clone(self),
            grant,
            subject,
            purpose: meta.purpose,
            aad,
            keys: BTreeMap::new(),
            next: offset,
            end: offset.saturating_add(length),
            checked_last: false,
            last: None,
            evidence,
        };
        let (file_name, sha256) = split_name_and_digest(&download.file_name()?);
        let ev = &download.evidence;
        let info = EvidenceInfo {
            evidence_id: ev.id.clone(),
            record_id: ev.record_id.clone(),
            name: ev.name.clone(),
            category,
            media_type: ev.media_type.clone(),
            file_name,
            size: ev.size,
            sha256,
            offset,
            length,
        };
        Ok((info, download))
    }

    /// Whether a download begun with `open_evidence_as` may go on: the file is still stored
    /// and complete, and the policy in force, on the subject's facts as they are now (holds,
    /// restrictions, mandates, consents), still lets `principal` (authenticated again by the
    /// caller) do `action` on it. Nothing is appended while it does; when it no longer does, the
    /// denial is appended under the download's entry name, saying the download ended.
    pub fn keep_evidence(
        &self,
        principal: &Principal,
        ctx: &AccessContext,
        evidence_id: &str,
        action: Action,
    ) -> Result<(), VaultError> {
        let audited = download_entry(action)?;
        let Stored {
            record,
            evidence,
            meta,
            subject,
            record_id,
        } = self.stored_evidence(evidence_id)?;
        let resources = [super::evidence_resource(&record, meta.purpose, &evidence)?];
        let decisions = self.decide(principal, action, ctx, &resources)?;
        if decisions
            .first()
            .is_some_and(crate::policy::Decision::is_allow)
        {
            return Ok(());
        }
        let mut event = self.event(principal, ctx, audited, Some(&subject), Some(&record_id));
        event.fields = super::audit_fields(&resources, &decisions);
        event.target = Some(evidence.id.clone());
        event.decision = "deny".into();
        event.reason = Some(format!(
            "the download ended: {}",
            super::distinct_reasons(&decisions)
        ));
        self.audit.append(&event)?;
        Err(VaultError::Denied(format!(
            "you may no longer {} this evidence; the download ended (the reasons are on the \
             audit trail)",
            action.as_str()
        )))
    }

    /// The finished evidence files of a record, every row of it checked before its
    /// completeness is believed: a finished file marked unfinished by hand is damaged
    /// (`DataLoss`) at every door that lists, exports, decides on or deletes a record's files,
    /// not left out of it; an upload still running (its row as it was begun) is left out.
    pub(crate) fn finished_evidence(
        &self,
        record_id: &str,
    ) -> Result<Vec<EvidenceRow>, VaultError> {
        let rows = self.store.record_evidence(record_id)?;
        self.rows.check_all(&rows)?;
        Ok(rows.into_iter().filter(|e| e.complete).collect())
    }

    /// A finished evidence file and its record as stored, both checked.
    fn stored_evidence(&self, evidence_id: &str) -> Result<Stored, VaultError> {
        let gone = || VaultError::NotFound(format!("evidence `{evidence_id}`"));
        let (record, evidence) = self.store.evidence(evidence_id)?.ok_or_else(gone)?;
        // Checked before its completeness is believed: a finished file marked unfinished by
        // hand is damaged, not absent.
        self.rows.check(&record)?;
        self.rows.check(&evidence)?;
        if !evidence.complete {
            return Err(gone());
        }
        let meta = record_meta(&record)?;
        let subject = SubjectId::parse_stored(&record.subject)
            .map_err(|_| StoreError::Corrupt(format!("subject of `{}`", record.id)))?;
        let record_id = RecordId::parse("record", &record.id)
            .map_err(|_| StoreError::Corrupt(format!("record `{}`", record.id)))?;
        Ok(Stored {
            record,
            evidence,
            meta,
            subject,
            record_id,
        })
    }

    /// Discards uploads a crash left unfinished. Run at start-up, when no upload of this
    /// process can be running; on a shared store, only uploads older than
    /// `ABANDONED_UPLOAD_SECS` (other nodes may be receiving the younger ones).
    pub fn discard_unfinished_evidence(&self) -> Result<u64, VaultError> {
        let mut n = 0u64;
        // On a shared store another node may be receiving an upload right now: only uploads
        // left for longer than any upload runs are abandoned.
        let shared = self.store_is_shared()?;
        let now = crate::domain::now_unix();
        for row in self.store.unfinished_evidence()? {
            if shared && now.saturating_sub(row.created_at) < ABANDONED_UPLOAD_SECS {
                continue;
            }
            // Only an upload kluis itself left unfinished: a finished file marked unfinished by
            // hand fails its MAC and is kept (and named by `kluis admin store verify`).
            if self.rows.check(&row).is_err() {
                continue;
            }
            if self.store.discard_evidence(&row.id)? {
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(uploads = n, "discarded unfinished evidence uploads");
        }
        Ok(n)
    }
}

/// What a client says it sent, in the message that ends its upload.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct UploadEnd {
    /// The file's size in bytes.
    pub size: u64,
    /// The file's SHA-256, lowercase hex, when the client gave it.
    pub sha256: Option<String>,
}

impl UploadEnd {
    /// The end as a request gives it: `sha256` empty or 64 lowercase hex digits.
    pub fn parse(size: u64, sha256: &str) -> Result<Self, InputError> {
        if sha256.is_empty() {
            return Ok(Self { size, sha256: None });
        }
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(InputError::new(
                "end.sha256",
                "not a SHA-256: expected 64 lowercase hex digits, or nothing",
            ));
        }
        Ok(Self {
            size,
            sha256: Some(sha256.to_owned()),
        })
    }
}

/// An upload in progress. Dropping it before `finish` discards everything stored of it.
pub struct Upload {
    vault: Arc<Vault>,
    /// The file as its write was decided: decided again while the upload runs (`keep`).
    decided: FieldResource,
    evidence_id: String,
    record_id: String,
    subject: SubjectId,
    purpose: Purpose,
    size: u64,
    /// Hashes the bytes and seals them into segments, beside the guard.
    sealer: Sealer,
    /// The thread that stores the batches before the sealer's (`flush`), from the first.
    storer: Option<Storer>,
    /// Reads every byte for a BSN or an MRZ, whatever the declared media type, across chunks.
    guard: guard::Scanner,
    expires_at: Option<i64>,
    finished: bool,
    /// The file name and the key it was sealed under: sealed again at the end together with
    /// the file's digest, which is kept only there (see `seal_name_and_digest`).
    file_name: Zeroizing<String>,
    name_key: crate::keys::ActiveSubjectKey,
    aad: Vec<u8>,
    /// The row as begun: its MAC is computed again for the finished row.
    begun: EvidenceRow,
    /// The entry that records an upload dropped before it finished.
    unfinished: crate::audit::AuditEvent,
}

impl fmt::Debug for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("evidence_id", &self.evidence_id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Upload {
    /// The evidence id the upload will have.
    pub fn evidence_id(&self) -> &str {
        &self.evidence_id
    }

    /// Whether the upload may go on: the policy in force, on the subject's facts as they are
    /// now, still lets `principal` (authenticated again by the caller) write the file. When it
    /// no longer does, the upload must be dropped: its entry ("not carried out") then says it
    /// ended and why, and nothing is stored.
    pub fn keep(&mut self, principal: &Principal, ctx: &AccessContext) -> Result<(), VaultError> {
        let resources = std::slice::from_ref(&self.decided);
        let decisions = self
            .vault
            .decide(principal, Action::Write, ctx, resources)?;
        if decisions.iter().all(crate::policy::Decision::is_allow) {
            return Ok(());
        }
        self.unfinished.fields = super::audit_fields(resources, &decisions);
        self.unfinished.policies = decisions
            .iter()
            .flat_map(|d| d.policies.iter().cloned())
            .collect();
        self.unfinished.reason = Some(format!(
            "not carried out: the upload ended: {}; nothing was stored",
            super::distinct_reasons(&decisions)
        ));
        Err(VaultError::Denied(
            "you may no longer write this file; the upload ended and nothing was stored (the \
             reasons are on the audit trail)"
                .into(),
        ))
    }

    /// `e`, after which the upload is dropped: unless `keep` said why already, its entry ("not
    /// carried out") says the upload ended on `e` (a token revoked or expired).
    pub fn ended(&mut self, e: VaultError) -> VaultError {
        if !matches!(e, VaultError::Denied(_)) {
            self.unfinished.reason = Some(format!(
                "not carried out: the upload ended: {e}; nothing was stored"
            ));
        }
        e
    }

    /// Takes the next bytes of the file.
    pub fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        let limit = self.vault.limits.max_evidence_bytes;
        self.size = self.size.saturating_add(data.len() as u64);
        if self.size > limit {
            return Err(InputError::new(
                "data",
                format!("evidence is larger than the limit of {limit} bytes"),
            )
            .into());
        }
        // The bytes are hashed and sealed while the guard reads them, its helper's readings
        // on a thread of their own: nothing sealed is stored before the guard has read it, and
        // nothing of an upload is readable before `finish`. The helper's readings are waited
        // for before the write returns (`settle`), so that a finding they make is answered
        // with the chunk it is in, while the client waits; they take less time than the
        // caller's readings, hashing and sealing together.
        let sealer = &mut self.sealer;
        let (checked, sealed) = self.guard.write_beside("data", data, || sealer.take(data));
        checked?;
        self.guard.settle("data")?;
        sealed?;
        if self.sealer.batch.len() >= SEGMENTS_PER_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Seals the last segment, stores what is left and makes the evidence readable, when `end`
    /// (what the client says it sent) matches what arrived; else it is discarded.
    pub fn finish(mut self, end: &UploadEnd) -> Result<EvidenceReceipt, VaultError> {
        if end.size != self.size {
            return Err(InputError::new(
                "end.size",
                format!(
                    "the upload ended declaring {} bytes, but {} arrived; nothing was stored, \
                     send the file again",
                    end.size, self.size
                ),
            )
            .into());
        }
        self.guard.finish("data")?;
        let sha256 = hex::encode(std::mem::take(&mut self.sealer.hasher).finalize());
        if end
            .sha256
            .as_ref()
            .is_some_and(|declared| *declared != sha256)
        {
            return Err(InputError::new(
                "end.sha256",
                "the bytes that arrived have another SHA-256 than the one declared; nothing was \
                 stored, send the file again",
            )
            .into());
        }
        self.sealer.seal_buffer(true)?;
        self.stored()?;
        let last = std::mem::take(&mut self.sealer.batch);
        self.append(&last)?;
        let now = self.vault.clock.now();
        // The plaintext digest would confirm a guessed file to whoever holds the database: it is
        // sealed with the file name, for readers only.
        let sealed_name =
            seal_name_and_digest(&self.name_key, &self.aad, &self.file_name, &sha256)?;
        let done = EvidenceRow {
            size: self.size,
            complete: true,
            ..self.begun.clone()
        };
        let mac = self.vault.rows.mac(&done);
        self.vault
            .store
            .finish_evidence(
                &self.evidence_id,
                self.size,
                u64::from(self.sealer.next_index),
                &sealed_name,
                now,
                &mac,
            )
            .map_err(key_replaced)?;
        self.finished = true;
        tracing::info!(
            evidence_id = self.evidence_id.as_str(),
            size = self.size,
            "evidence stored"
        );
        Ok(EvidenceReceipt {
            evidence_id: self.evidence_id.clone(),
            record_id: self.record_id.clone(),
            size: self.size,
            sha256,
            expires_at: self.expires_at,
        })
    }

    /// Stores `batch` on the upload's own thread ([`Storer`]), once the batch before it is
    /// stored: the next chunks are read by the guard, hashed and sealed meanwhile. Its outcome
    /// is taken at the next flush, at `finish`, or when the upload is dropped (before it is
    /// discarded, so that nothing is appended to an upload after it was discarded). Segments
    /// are stored in order, one batch after the other; none is readable before `finish`.
    fn flush(&mut self) -> Result<(), VaultError> {
        if self.sealer.batch.is_empty() {
            return Ok(());
        }
        // Nothing is stored before the guard has read all of it.
        self.guard.settle("data")?;
        self.stored()?;
        let batch = std::mem::replace(
            &mut self.sealer.batch,
            Vec::with_capacity(SEGMENTS_PER_BATCH),
        );
        if self.storer.is_none() {
            self.storer = Storer::start(
                Arc::clone(&self.vault.store),
                self.evidence_id.clone(),
                self.subject.as_str().to_owned(),
                self.purpose,
            );
        }
        match &mut self.storer {
            Some(storer) => {
                storer.send(batch);
                Ok(())
            }
            // Without a thread to spare, the batch is stored here.
            None => self.append(&batch),
        }
    }

    /// Waits for the batch being stored on the upload's thread (`flush`), if any: its error,
    /// if it failed.
    fn stored(&mut self) -> Result<(), VaultError> {
        self.storer
            .as_mut()
            .map_or(Ok(()), Storer::stored)
            .map_err(key_replaced)
    }

    /// Stores `batch` on this thread.
    fn append(&self, batch: &[SegmentRow]) -> Result<(), VaultError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.vault
            .store
            .append_segments(
                &self.evidence_id,
                self.subject.as_str(),
                self.purpose.as_str(),
                batch,
            )
            .map_err(key_replaced)
    }
}

/// What an upload does with its bytes beside the guard: hashes them, and seals them into
/// segments of `SEGMENT_SIZE`, gathered into a batch to store.
struct Sealer {
    key: FileKey,
    buffer: Zeroizing<Vec<u8>>,
    next_index: u32,
    hasher: Sha256,
    batch: Vec<SegmentRow>,
}

impl Sealer {
    /// Takes the next bytes of the file.
    fn take(&mut self, mut data: &[u8]) -> Result<(), VaultError> {
        self.hasher.update(data);
        while !data.is_empty() {
            if self.buffer.len() == SEGMENT_SIZE {
                // More data follows, so this full segment is not the last one.
                self.seal_buffer(false)?;
            }
            let take = (SEGMENT_SIZE - self.buffer.len()).min(data.len());
            let (now, rest) = data.split_at(take);
            self.buffer.extend_from_slice(now);
            data = rest;
        }
        Ok(())
    }

    fn seal_buffer(&mut self, last: bool) -> Result<(), VaultError> {
        let sealed = self
            .key
            .seal_segment(self.next_index, last, &self.buffer)
            .map_err(|e| VaultError::Key(KeyError::Crypto(e)))?;
        self.batch.push(SegmentRow {
            index: self.next_index,
            key_gen: self.key.key_ref(),
            sealed,
        });
        self.buffer.clear();
        self.next_index = self.next_index.checked_add(1).ok_or_else(|| {
            InputError::new("data", "evidence has more segments than kluis can number")
        })?;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The batch being stored lands before the upload is discarded, whatever its outcome,
        // and the upload's thread ends.
        if let Some(storer) = self.storer.take() {
            match storer.end() {
                Ok(()) => {}
                Err(Some(e)) => tracing::info!(
                    evidence_id = self.evidence_id.as_str(),
                    error = %e,
                    "a batch of an unfinished upload was not stored"
                ),
                Err(None) => tracing::error!(
                    evidence_id = self.evidence_id.as_str(),
                    "storing a batch of an unfinished upload failed unexpectedly"
                ),
            }
        }
        self.unfinished.time = crate::domain::now_unix();
        if let Err(e) = self.vault.audit.append(&self.unfinished) {
            tracing::warn!(
                evidence_id = self.evidence_id.as_str(),
                error = %e,
                "could not record an unfinished upload on the trail"
            );
        }
        match self.vault.store.discard_evidence(&self.evidence_id) {
            Ok(_) => {
                // The record the upload made may have been its subject's last of the purpose,
                // and its subject key went with it.
                if self.begun.owns_record {
                    self.vault.keyring.forget(&self.subject, self.purpose);
                }
                tracing::info!(
                    evidence_id = self.evidence_id.as_str(),
                    "unfinished evidence upload discarded"
                );
            }
            // Start-up discards it then.
            Err(e) => tracing::warn!(
                evidence_id = self.evidence_id.as_str(),
                error = %e,
                "could not discard an unfinished upload now"
            ),
        }
    }
}

/// The thread an upload stores its batches on (`kluis-evidence`), from its first batch to its
/// end: one batch at a time, in order, while the next is sealed. One thread for the upload's
/// life, not one per batch: a thread's start (its stack mapped and faulted in, its allocator's
/// caches filled) and end (unmapped, with TLB shootdowns on every core) cost more than storing
/// a batch's megabyte into the page cache.
struct Storer {
    /// `None` once the upload ends: the thread ends when it has stored what it holds.
    batches: Option<std::sync::mpsc::SyncSender<Vec<SegmentRow>>>,
    outcomes: std::sync::mpsc::Receiver<Result<(), StoreError>>,
    /// Whether a batch was handed over whose outcome was not taken.
    pending: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Storer {
    /// The thread for the segments of `evidence_id`, or `None` when none can be started.
    fn start(
        store: Arc<dyn crate::store::Store>,
        evidence_id: String,
        subject: String,
        purpose: Purpose,
    ) -> Option<Self> {
        // One batch held by the thread at most: `flush` takes its outcome before the next.
        let (batches, to_store) = std::sync::mpsc::sync_channel::<Vec<SegmentRow>>(1);
        let (answer, outcomes) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("kluis-evidence".into())
            .spawn(move || {
                for batch in to_store {
                    let outcome =
                        store.append_segments(&evidence_id, &subject, purpose.as_str(), &batch);
                    if answer.send(outcome).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Self {
            batches: Some(batches),
            outcomes,
            pending: false,
            thread: Some(thread),
        })
    }

    /// Hands `batch` to the thread; its outcome is taken by the next `stored`. Call `stored`
    /// first: the thread holds one batch at a time.
    fn send(&mut self, batch: Vec<SegmentRow>) {
        if let Some(batches) = &self.batches {
            // A thread that is gone leaves its outcome (a panic) to `stored`.
            let _ = batches.send(batch);
            self.pending = true;
        }
    }

    /// The outcome of the batch handed over last, waiting for it; `Ok` when none is pending.
    /// A thread that panicked passes its panic on, as storing on the caller's thread would.
    fn stored(&mut self) -> Result<(), StoreError> {
        if !std::mem::take(&mut self.pending) {
            return Ok(());
        }
        match self.outcomes.recv() {
            Ok(outcome) => outcome,
            Err(_) => {
                self.batches = None;
                match self.thread.take().map(std::thread::JoinHandle::join) {
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    // The thread leaves its loop only when its batches are closed or its
                    // outcomes not taken, which only `end` does: never read as stored.
                    _ => std::panic::resume_unwind(Box::new(
                        "the thread storing an upload ended while the upload ran",
                    )),
                }
            }
        }
    }

    /// Takes the outcome of the batch pending, if any, and ends the thread: nothing is stored
    /// of the upload after this returns. `Err(None)` when the thread panicked.
    fn end(mut self) -> Result<(), Option<StoreError>> {
        let outcome = if std::mem::take(&mut self.pending) {
            match self.outcomes.recv() {
                Ok(outcome) => outcome.map_err(Some),
                Err(_) => Err(None),
            }
        } else {
            Ok(())
        };
        self.batches = None;
        let joined = self.thread.take().map(std::thread::JoinHandle::join);
        match joined {
            Some(Err(_)) => Err(None),
            _ => outcome,
        }
    }
}

impl Drop for Storer {
    fn drop(&mut self) {
        // Closing the batches ends the thread once it has stored what it holds.
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn key_replaced(e: StoreError) -> VaultError {
    match e {
        StoreError::StaleGeneration { .. } | StoreError::Stale(_) | StoreError::Missing(_) => VaultError::FailedPrecondition(
            "the subject key was replaced by a key rotation during the upload, or the record was \
             deleted; nothing was stored, upload the file again"
                .into(),
        ),
        other => other.into(),
    }
}

/// A download in progress: yields the requested bytes a segment at a time.
pub struct Download {
    vault: Arc<Vault>,
    grant: Grant,
    subject: SubjectId,
    purpose: Purpose,
    evidence: EvidenceRow,
    aad: Vec<u8>,
    keys: BTreeMap<(u32, u8), FileKey>,
    next: u64,
    end: u64,
    checked_last: bool,
    last: Option<Piece>,
}

/// A piece of an evidence file as opened: the plaintext at `range` of `buf`, which holds the
/// segment as it was read and opened where it lay (its header and tag around the plaintext,
/// or a part of a segment copied out).
pub struct Piece {
    buf: Zeroizing<Vec<u8>>,
    range: std::ops::Range<usize>,
}

impl Piece {
    /// The plaintext.
    pub fn as_slice(&self) -> &[u8] {
        self.buf.get(self.range.clone()).unwrap_or_default()
    }

    /// The plaintext as `Bytes`, for a message, without copying it. `Bytes` does not wipe what
    /// it holds (THREAT_MODEL.md, "Plaintext copies that remain").
    pub fn into_bytes(mut self) -> bytes::Bytes {
        let range = self.range.clone();
        bytes::Bytes::from(std::mem::take(&mut *self.buf)).slice(range)
    }
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Download")
            .field("evidence_id", &self.evidence.id)
            .field("next", &self.next)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Download {
    /// The next piece of the requested range (at most one segment), or `None` at its end.
    pub fn next_chunk(&mut self) -> Result<Option<Piece>, VaultError> {
        let count = stream::segment_count(self.evidence.size);
        let last_index = count - 1;
        let seg = SEGMENT_SIZE as u64;
        if !self.checked_last {
            // Authenticate the end of the file before sending anything: a file that was cut off
            // fails before its first byte, also when only a range of it is read. Kept for when
            // the range reaches it.
            self.last = Some(self.open(last_index)?);
            self.checked_last = true;
        }
        if self.next >= self.end {
            return Ok(None);
        }
        let index = self.next / seg;
        let plain = match self.last.take() {
            Some(last) if index == last_index => last,
            kept => {
                self.last = kept;
                self.open(index)?
            }
        };
        let seg_start = index * seg;
        let from = usize::try_from(self.next - seg_start).unwrap_or(usize::MAX);
        let to = usize::try_from(self.end.min(seg_start + seg) - seg_start).unwrap_or(usize::MAX);
        // A whole segment is handed on as opened; a part of one is copied out, so that no
        // more of the file than was asked for stays in the message's memory.
        let piece = if from == 0 && to == plain.range.len() {
            plain
        } else {
            let part = plain
                .as_slice()
                .get(from..to)
                .ok_or_else(|| self.damaged(index))?;
            Piece {
                buf: Zeroizing::new(part.to_vec()),
                range: 0..part.len(),
            }
        };
        self.next = seg_start + to as u64;
        Ok(Some(piece))
    }

    fn damaged(&self, index: u64) -> VaultError {
        VaultError::DataLoss(format!(
            "segment {index} of evidence `{}`",
            self.evidence.id
        ))
    }

    /// Reads, opens (where it was read into) and checks segment `index`.
    fn open(&mut self, index: u64) -> Result<Piece, VaultError> {
        if self.grant.record() != self.evidence.record_id
            || self.grant.field() != self.evidence.name
        {
            return Err(VaultError::Denied("no grant for this evidence".into()));
        }
        let idx = u32::try_from(index).map_err(|_| self.damaged(index))?;
        let count = stream::segment_count(self.evidence.size);
        let expected_len =
            stream::segment_len(self.evidence.size, index).ok_or_else(|| self.damaged(index))?;
        // A rekey may replace the segment between reading it and fetching its key: read again.
        for _ in 0..2 {
            let row = self
                .vault
                .store
                .segment(&self.evidence.id, idx)?
                .ok_or_else(|| self.damaged(index))?;
            let header =
                stream::SegmentHeader::parse(&row.sealed).map_err(|_| self.damaged(index))?;
            if header.key_ref != row.key_gen {
                return Err(self.damaged(index));
            }
            let Some(key) = self.file_key(header.key_ref, header.algorithm)? else {
                continue;
            };
            let mut buf = Zeroizing::new(row.sealed);
            let range = key
                .open_segment_in_place(idx, index + 1 == count, &mut buf)
                .map_err(|_| self.damaged(index))?;
            if range.len() != expected_len {
                return Err(self.damaged(index));
            }
            return Ok(Piece { buf, range });
        }
        Err(VaultError::DataLoss(format!(
            "the subject key of evidence `{}`",
            self.evidence.id
        )))
    }

    fn file_key(
        &mut self,
        generation: u32,
        algorithm: Algorithm,
    ) -> Result<Option<&FileKey>, VaultError> {
        let slot = (generation, algorithm.id());
        if !self.keys.contains_key(&slot) {
            let Some(subject_key) =
                self.vault
                    .keyring
                    .subject_key_at(&self.subject, self.purpose, generation)?
            else {
                return Ok(None);
            };
            let key = FileKey::derive(
                &subject_key,
                algorithm,
                generation,
                &self.evidence.salt,
                &self.aad,
            )
            .map_err(|e| VaultError::Key(KeyError::Crypto(e)))?;
            self.keys.insert(slot, key);
        }
        Ok(self.keys.get(&slot))
    }

    fn file_name(&mut self) -> Result<Zeroizing<String>, VaultError> {
        let open = |d: &Self| open_file_name(&d.vault, &d.subject, d.purpose, &d.evidence, &d.aad);
        match open(self) {
            // A rekey may have resealed it since the row was read: read the row again, once.
            Err(VaultError::DataLoss(_)) => {
                if let Some((_, fresh)) = self.vault.store.evidence(&self.evidence.id)? {
                    self.evidence.file_name = fresh.file_name;
                }
                open(self)
            }
            other => other,
        }
    }
}

/// Opens the sealed file name of an evidence file.
/// Seals an evidence file's name and its plaintext SHA-256 (hex) together, under the subject
/// key's evidence-name subkey: `name ‖ 0x00 ‖ digest` (a file name holds no control
/// characters).
fn seal_name_and_digest(
    key: &crate::keys::ActiveSubjectKey,
    aad: &[u8],
    name: &str,
    sha256: &str,
) -> Result<Vec<u8>, VaultError> {
    let mut plain = Zeroizing::new(Vec::with_capacity(name.len() + 1 + sha256.len()));
    plain.extend_from_slice(name.as_bytes());
    plain.push(0);
    plain.extend_from_slice(sha256.as_bytes());
    crypto::seal(
        &key.key.evidence_names(),
        key.algorithm,
        key.generation,
        aad,
        &plain,
    )
    .map_err(|e| VaultError::Key(KeyError::Crypto(e)))
}

/// An opened name blob split into the file name and, once the upload finished, the digest.
pub(crate) fn split_name_and_digest(opened: &str) -> (Zeroizing<String>, String) {
    match opened.split_once('\0') {
        Some((name, digest)) => (Zeroizing::new(name.to_owned()), digest.to_owned()),
        None => (Zeroizing::new(opened.to_owned()), String::new()),
    }
}

pub(crate) fn open_file_name(
    vault: &Vault,
    subject: &SubjectId,
    purpose: Purpose,
    evidence: &EvidenceRow,
    aad: &[u8],
) -> Result<Zeroizing<String>, VaultError> {
    let damaged = || VaultError::DataLoss(format!("the file name of evidence `{}`", evidence.id));
    let header = crypto::Header::parse(&evidence.file_name).map_err(|_| damaged())?;
    let key = vault
        .keyring
        .subject_key_at(subject, purpose, header.key_ref)?
        .ok_or_else(damaged)?;
    let bytes =
        crypto::open(&key.evidence_names(), aad, &evidence.file_name).map_err(|_| damaged())?;
    super::into_text(bytes).ok_or_else(damaged)
}

/// The associated data of an evidence file (its key derivation and its sealed file name).
pub(crate) fn evidence_aad(
    subject: &SubjectId,
    record: &str,
    evidence: &str,
    field: &str,
    category: Category,
    purpose: Purpose,
) -> Vec<u8> {
    crypto::aad(&AadContext::Evidence {
        subject: subject.as_str(),
        record,
        evidence,
        field,
        category: category.as_str(),
        purpose: purpose.as_str(),
    })
}

/// Re-encrypts one segment under a new subject key during a rekey: `old` is the subject key of the segment's generation, `new` the new key,
/// its algorithm and generation.
pub(crate) fn reseal_segment(
    subject: &str,
    purpose: Purpose,
    evidence: &EvidenceRow,
    segment: &SegmentRow,
    old: &SubjectKey,
    new: (&SubjectKey, Algorithm, u32),
) -> Result<Vec<u8>, VaultError> {
    let damaged = || {
        VaultError::DataLoss(format!(
            "segment {} of evidence `{}`",
            segment.index, evidence.id
        ))
    };
    let subject = SubjectId::parse_stored(subject).map_err(|_| damaged())?;
    let category: Category = evidence.category;
    let aad = evidence_aad(
        &subject,
        &evidence.record_id,
        &evidence.id,
        &evidence.name,
        category,
        purpose,
    );
    let header = stream::SegmentHeader::parse(&segment.sealed).map_err(|_| damaged())?;
    let crypto_err = |e| VaultError::Key(KeyError::Crypto(e));
    let old_key = FileKey::derive(old, header.algorithm, segment.key_gen, &evidence.salt, &aad)
        .map_err(crypto_err)?;
    let last = u64::from(segment.index) + 1 == stream::segment_count(evidence.size);
    let plain = old_key
        .open_segment(segment.index, last, &segment.sealed)
        .map_err(|_| damaged())?;
    let (new_key, algorithm, generation) = new;
    let new_key = FileKey::derive(new_key, algorithm, generation, &evidence.salt, &aad)
        .map_err(crypto_err)?;
    new_key
        .seal_segment(segment.index, last, &plain)
        .map_err(crypto_err)
}

/// Re-encrypts the sealed file name of an evidence file under a new subject key.
pub(crate) fn reseal_file_name(
    subject: &str,
    purpose: Purpose,
    evidence: &EvidenceRow,
    old: &SubjectKey,
    new: (&SubjectKey, Algorithm, u32),
) -> Result<Vec<u8>, VaultError> {
    let damaged = || VaultError::DataLoss(format!("the file name of evidence `{}`", evidence.id));
    let subject = SubjectId::parse_stored(subject).map_err(|_| damaged())?;
    let category: Category = evidence.category;
    let aad = evidence_aad(
        &subject,
        &evidence.record_id,
        &evidence.id,
        &evidence.name,
        category,
        purpose,
    );
    let plain =
        crypto::open(&old.evidence_names(), &aad, &evidence.file_name).map_err(|_| damaged())?;
    let (key, algorithm, generation) = new;
    crypto::seal(&key.evidence_names(), algorithm, generation, &aad, &plain)
        .map_err(|e| VaultError::Key(KeyError::Crypto(e)))
}

/// Checks an upload's declaration: the category, media type and file name.
fn check_start(start: &EvidenceStart) -> Result<(), InputError> {
    // A field named for a BSN holds a note at most (`onbekend`), read as the number after a
    // label from any word on; a file is not read so (it streams, and may be of any length).
    if guard::names_a_bsn(start.name.as_str()) {
        return Err(InputError::new(
            "start.field",
            format!(
                "`{}` is named for a BSN, and kluis stores no BSNs: such a field holds no file; \
                 name the field for what the file shows",
                start.name.as_str()
            ),
        ));
    }
    if start.category == Category::Identity {
        return Err(InputError::new(
            "start.category",
            "evidence of category `identity` would be a copy of an identity document; kluis \
             stores no copies of identity documents",
        ));
    }
    let media = &start.media_type;
    let valid_media = media.len() <= MAX_MEDIA_TYPE
        && media.split_once('/').is_some_and(|(t, s)| {
            let token = |p: &str| {
                !p.is_empty()
                    && p.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.' | b'_')
                    })
            };
            token(t) && token(s)
        });
    if !valid_media {
        return Err(InputError::new(
            "start.media_type",
            format!(
                "expected a media type such as `image/jpeg` or `video/mp4`, at most \
                 {MAX_MEDIA_TYPE} bytes"
            ),
        ));
    }
    guard::check_text("start.media_type", media)?;
    // Shown as given to whoever reads the file: no direction override makes `exe.pdf` of it.
    let name = &start.file_name;
    crate::domain::check_free_text(
        "start.file_name",
        name,
        "file name",
        MAX_FILE_NAME,
        crate::domain::Need::Optional,
    )?;
    guard::check_file_name("start.file_name", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(category: Category, media: &str, file: &str) -> EvidenceStart {
        EvidenceStart {
            target: EvidenceTarget::Subject(SubjectId::parse("s", "REL-1").unwrap()),
            name: FieldName::parse("n", "photo").unwrap(),
            category,
            media_type: media.into(),
            file_name: file.into(),
        }
    }

    #[test]
    fn declarations_are_checked() {
        let ok = start(Category::NuisanceEvidence, "video/mp4", "hallway.mp4");
        assert!(check_start(&ok).is_ok());
        for (s, field) in [
            (
                start(Category::Identity, "image/jpeg", "x.jpg"),
                "start.category",
            ),
            (
                start(Category::NuisanceEvidence, "video", "x"),
                "start.media_type",
            ),
            (
                start(Category::NuisanceEvidence, "a/b c", "x"),
                "start.media_type",
            ),
            (
                start(
                    Category::NuisanceEvidence,
                    "image/jpeg",
                    "Paspoort J. Jansen.jpg",
                ),
                "start.file_name",
            ),
            (
                start(Category::NuisanceEvidence, "image/jpeg", "scan\n.jpg"),
                "start.file_name",
            ),
            (
                start(
                    Category::NuisanceEvidence,
                    "video/mp4",
                    "clip\u{202E}4pm.exe",
                ),
                "start.file_name",
            ),
            (
                start(Category::NuisanceEvidence, "video/mp4", "clip\u{200B}.mp4"),
                "start.file_name",
            ),
        ] {
            let e = check_start(&s).unwrap_err();
            assert_eq!(e.field, field);
        }
    }
}
