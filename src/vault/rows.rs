//! Stored rows that grant, withhold or shape access or retention carry a MAC that the core
//! computes and checks, so that writing to the database file grants nothing: an inserted token,
//! an edited role, an undone revocation, a `closed_at` set on an open case, an edited mandate,
//! hold or objection fails its check and is never obeyed.
//!
//! The MAC is HMAC-SHA-256 under the row subkey of the audit key (wrapped under the root key),
//! over a domain label and the row's fields, length-prefixed so that no two rows encode alike.
//! The store only keeps the bytes; every store gets the same protection.
//!
//! Covered: tokens (all columns), legal holds, mandates, consent states, records (subject,
//! purpose, labels, creation, closing and expiry; not `updated_at`, which shapes nothing), and
//! field rows (record, name, category, kind; the key generation is authenticated by the value's
//! envelope header), subject requests (their deadlines, extended ones included), restrictions of
//! processing, evidence files (record, name,
//! category, media type, size, completeness) and purpose key versions (state, algorithm, dates
//! and the bar of the minimum decryption version; the wrapped material is sealed under the root
//! key with its purpose and version as associated data).
//! A deleted row has no MAC to fail, and an older copy put back carries a valid one, so every
//! subject with a subject key, a record, a hold, a consent state, a mandate or a restriction has
//! an anchor (`AnchorRow`, itself authenticated and never deleted) that counts its holds and
//! consent states and covers the MACs of its hold, consent, mandate and restriction rows (the
//! last only once the subject has one, so older anchors keep their digest); those rows are never
//! deleted, so a row erased or an older one put back by hand no longer matches, and the
//! subject's decisions and destructive paths fail closed. The anchor also covers the ids of
//! the subject's destroyed records (once it has one), named in the transaction that destroys
//! them: a destroyed record's rows put back from an older copy, where the subject key of its
//! purpose lived on with the subject's other records, are refused before any decision
//! (`Vault::decide_on`, `Vault::load_kept`), and deleting the name breaks the anchor. A record's
//! field set is covered in its row (`FieldSet`); token rows by the token register
//! (`vault::tokens`). What an anchor cannot see: a subject with no key and no record whose
//! anchor is deleted together with its rows, or an older copy of the anchor put back with the
//! rows it covered; the trail records every hold, consent and mandate change, every deletion,
//! sweep and erasure of a record, and `kluis admin store verify` compares them with
//! the store.
//!
//! Invariant: a row whose MAC fails is never obeyed; the call fails closed and an error is
//! logged naming the row, never its contents.

use subtle::ConstantTimeEq;

use std::collections::BTreeMap;

use super::{Vault, VaultError};
use crate::{
    audit::Filter,
    crypto::{AuditKey, CryptoError, kdf, subkey::Subkey},
    domain::Principal,
    policy::AdminAction,
    store::{
        AnchorRow, ConsentRow, DisclosureRow, EvidenceRow, FieldMeta, FieldRow, HoldRow, KeyJobRow,
        LeaseRow, MandateRow, PurposeKeyRow, RecordRow, RequestRow, RestrictionRow, StoreError,
        SubjectFacts, TokenRow,
    },
};

/// A row kind the core authenticates.
pub(crate) trait Authenticated {
    /// The kind, as named in errors and in `store verify`.
    const KIND: &'static str;

    /// The row's own id, for messages.
    fn row_id(&self) -> String;

    /// The MAC as stored.
    fn stored_mac(&self) -> &[u8];

    /// The bytes the MAC covers (after the kind's label).
    fn encode(&self, out: &mut Encoder);
}

/// Length-prefixed encoding of row fields.
#[derive(Default)]
pub(crate) struct Encoder(Vec<u8>);

impl Encoder {
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let len = u64::try_from(b.len()).unwrap_or(u64::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }

    fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    fn int(&mut self, n: i64) -> &mut Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    fn opt_int(&mut self, n: Option<i64>) -> &mut Self {
        match n {
            Some(n) => {
                self.0.push(1);
                self.int(n)
            }
            None => {
                self.0.push(0);
                self
            }
        }
    }

    fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => {
                self.0.push(1);
                self.str(s)
            }
            None => {
                self.0.push(0);
                self
            }
        }
    }

    fn list(&mut self, items: &[String]) -> &mut Self {
        self.int(i64::try_from(items.len()).unwrap_or(i64::MAX));
        for i in items {
            self.str(i);
        }
        self
    }
}

impl Authenticated for TokenRow {
    const KIND: &'static str = "token";

    fn row_id(&self) -> String {
        self.id.clone()
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.id)
            .bytes(&self.hash)
            .str(&self.principal)
            .list(&self.roles)
            .opt_str(self.scope_subject.as_deref())
            .int(self.created_at)
            .int(self.expires_at)
            .opt_int(self.revoked_at)
            .opt_str(self.requested_by.as_deref())
            .int(i64::from(self.needs_approval))
            .opt_str(self.approved_by.as_deref())
            .opt_int(self.approved_at);
    }
}

impl Authenticated for HoldRow {
    const KIND: &'static str = "hold";

    fn row_id(&self) -> String {
        self.id.clone()
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.id)
            .str(&self.subject)
            .opt_str(self.record_id.as_deref())
            .str(&self.reason)
            .str(&self.case_ref)
            .str(&self.placed_by)
            .int(self.placed_at)
            .opt_int(self.released_at)
            .opt_str(self.released_by.as_deref());
    }
}

/// A key job as kluis started it: its row, and the number of jobs of its kind of its purpose
/// finished before it (kept apart, in a meta row under its own MAC), so that the row of a
/// finished job put back is not authentic as the job under way.
pub(crate) struct KeyJobMac<'a> {
    pub(crate) job: &'a KeyJobRow,
    pub(crate) done: u64,
}

impl Authenticated for KeyJobMac<'_> {
    const KIND: &'static str = "key-job";

    fn row_id(&self) -> String {
        format!("{}:{}", self.job.kind, self.job.purpose)
    }

    fn stored_mac(&self) -> &[u8] {
        &self.job.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.job.purpose)
            .str(&self.job.kind)
            .int(self.job.started_at)
            .int(i64::try_from(self.done).unwrap_or(i64::MAX));
    }
}

impl Authenticated for LeaseRow {
    const KIND: &'static str = "lease";

    fn row_id(&self) -> String {
        self.name.clone()
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.name).str(&self.holder).int(self.until);
    }
}

impl Authenticated for MandateRow {
    const KIND: &'static str = "mandate";

    fn row_id(&self) -> String {
        self.id.clone()
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.id)
            .str(&self.subject)
            .str(&self.representative)
            .list(&self.purposes)
            .list(&self.categories)
            .int(self.valid_from)
            .int(self.valid_until)
            .str(&self.granted_by)
            .opt_int(self.revoked_at);
    }
}

impl Authenticated for DisclosureRow {
    const KIND: &'static str = "disclosure";

    fn row_id(&self) -> String {
        self.id.clone()
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.id)
            .str(&self.subject)
            .str(&self.record_id)
            .str(self.purpose.as_str())
            .list(&self.fields)
            .list(&self.categories)
            .str(&self.recipient)
            .str(self.recipient_kind.as_str())
            .str(&self.legal_basis)
            .str(&self.case_ref)
            .int(self.disclosed_at)
            .str(&self.recorded_by)
            .int(i64::from(self.automatic));
    }
}

impl Authenticated for RequestRow {
    const KIND: &'static str = "request";

    fn row_id(&self) -> String {
        self.id.clone()
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.id)
            .str(&self.subject)
            .str(self.kind.as_str())
            .int(self.received_at)
            .int(self.due_at)
            .str(&self.opened_by)
            .opt_int(self.completed_at)
            .str(&self.note);
        // Covered only once extended, so that a request stored before extensions existed keeps
        // its MAC; clearing the extension by hand changes what is covered and fails.
        if let Some(extended) = self.extended_due_at {
            out.str("extended")
                .int(extended)
                .opt_str(self.extension_reason.as_deref());
        } else if self.extension_reason.is_some() {
            out.str("reason-without-extension")
                .opt_str(self.extension_reason.as_deref());
        }
    }
}

impl Authenticated for RestrictionRow {
    const KIND: &'static str = "restriction";

    fn row_id(&self) -> String {
        self.id.clone()
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.id)
            .str(&self.subject)
            .str(&self.reason)
            .str(&self.placed_by)
            .int(self.placed_at)
            .opt_int(self.lifted_at)
            .opt_str(self.lifted_by.as_deref());
    }
}

impl Authenticated for EvidenceRow {
    const KIND: &'static str = "evidence";

    fn row_id(&self) -> String {
        self.id.clone()
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.id)
            .str(&self.record_id)
            .str(&self.name)
            .str(self.category.as_str())
            .str(&self.media_type)
            .int(i64::try_from(self.size).unwrap_or(i64::MAX))
            .int(i64::from(self.complete))
            .int(i64::from(self.owns_record))
            .int(self.created_at);
    }
}

impl Authenticated for ConsentRow {
    const KIND: &'static str = "consent";

    fn row_id(&self) -> String {
        format!("{}/{}", self.subject, self.purpose)
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.subject)
            .str(self.purpose.as_str())
            .str(self.state.as_str())
            .int(self.at)
            .str(&self.recorded_by);
    }
}

impl Authenticated for RecordRow {
    const KIND: &'static str = "record";

    fn row_id(&self) -> String {
        self.id.clone()
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.id)
            .str(&self.subject)
            .str(self.purpose.as_str());
        out.int(i64::try_from(self.labels.len()).unwrap_or(i64::MAX));
        for (k, v) in &self.labels {
            out.str(k).str(v);
        }
        out.int(self.created_at)
            .opt_int(self.closed_at)
            .opt_int(self.expires_at);
    }
}

impl Authenticated for AnchorRow {
    const KIND: &'static str = "anchor";

    fn row_id(&self) -> String {
        self.subject.clone()
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(&self.subject)
            .int(i64::from(self.holds))
            .int(i64::from(self.consents))
            .bytes(&self.digest);
    }
}

/// The digest an anchor keeps of the MACs of its subject's consent, hold, mandate and
/// restriction rows (each list in id order), and of the ids of its destroyed records, so that
/// an older copy of one of them put back, or one deleted, no longer matches. Restrictions and
/// destroyed records are in it only when the subject has one, so that the anchors of other
/// subjects keep the digest they were written with; once a subject has one, the digest covers
/// it, and deleting it changes the digest.
pub(crate) fn anchor_digest(facts: &SubjectFacts) -> Vec<u8> {
    let (consents, holds, mandates) = (&facts.consents, &facts.holds, &facts.mandates);
    use sha2::{Digest, Sha256};
    let mut out = Encoder::default();
    out.str("kluis.v2.anchor");
    let mut c: Vec<(&str, &[u8])> = consents
        .iter()
        .map(|r| (r.purpose.as_str(), r.mac.as_slice()))
        .collect();
    let mut h: Vec<(&str, &[u8])> = holds
        .iter()
        .map(|r| (r.id.as_str(), r.mac.as_slice()))
        .collect();
    let mut m: Vec<(&str, &[u8])> = mandates
        .iter()
        .map(|r| (r.id.as_str(), r.mac.as_slice()))
        .collect();
    for (label, list) in [
        ("consents", &mut c),
        ("holds", &mut h),
        ("mandates", &mut m),
    ] {
        list.sort_unstable();
        out.str(label)
            .int(i64::try_from(list.len()).unwrap_or(i64::MAX));
        for (id, mac) in list.iter() {
            out.str(id).bytes(mac);
        }
    }
    if !facts.restrictions.is_empty() {
        let mut r: Vec<(&str, &[u8])> = facts
            .restrictions
            .iter()
            .map(|r| (r.id.as_str(), r.mac.as_slice()))
            .collect();
        r.sort_unstable();
        out.str("restrictions")
            .int(i64::try_from(r.len()).unwrap_or(i64::MAX));
        for (id, mac) in &r {
            out.str(id).bytes(mac);
        }
    }
    if !facts.destroyed.is_empty() {
        // Each once: a record destroyed again (its rows put back and swept) is named once.
        let mut d: Vec<&str> = facts.destroyed.iter().map(String::as_str).collect();
        d.sort_unstable();
        d.dedup();
        out.str("destroyed")
            .int(i64::try_from(d.len()).unwrap_or(i64::MAX));
        for id in d {
            out.str(id);
        }
    }
    Sha256::digest(&out.0).to_vec()
}

impl Authenticated for PurposeKeyRow {
    const KIND: &'static str = "purpose-key";

    fn row_id(&self) -> String {
        format!("{} v{}", self.purpose, self.version)
    }

    fn stored_mac(&self) -> &[u8] {
        &self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(self.purpose.as_str())
            .int(i64::from(self.version))
            .str(self.state.as_str())
            .str(self.algorithm.as_str())
            .int(self.created_at)
            .opt_int(self.retired_at)
            .opt_int(self.destroy_after)
            .opt_int(self.destroyed_at)
            .int(i64::from(self.barred));
    }
}

/// A field row's place: what its MAC covers. The value's key generation is not covered: the
/// envelope header carries it under the value's own authentication, and a rekey changes it.
pub(crate) struct FieldPlace<'a> {
    /// The record the field belongs to.
    pub record: &'a str,
    /// Field name.
    pub name: &'a str,
    /// Category id.
    pub category: &'a str,
    /// `text` or `binary`.
    pub kind: &'a str,
    /// The value's version.
    pub version: &'a str,
    /// The MAC as stored.
    pub mac: &'a [u8],
}

impl<'a> FieldPlace<'a> {
    /// The place of `row` in `record`.
    pub(crate) fn of(record: &'a str, row: &'a FieldRow) -> Self {
        Self {
            record,
            name: &row.name,
            category: row.category.as_str(),
            kind: row.kind.as_str(),
            version: &row.version,
            mac: &row.mac,
        }
    }
}

impl Authenticated for FieldPlace<'_> {
    const KIND: &'static str = "field";

    fn row_id(&self) -> String {
        format!("{}/{}", self.record, self.name)
    }

    fn stored_mac(&self) -> &[u8] {
        self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(self.record)
            .str(self.name)
            .str(self.category)
            .str(self.kind)
            .str(self.version);
    }
}

/// The set of a record's fields: their names and versions, in name order. Its MAC, kept in the
/// record row, changes with every write of a value, so a field row deleted or an older one put
/// back (its own MAC intact) no longer matches.
struct FieldSet<'a> {
    record: &'a str,
    fields: Vec<(&'a str, &'a str)>,
    mac: &'a [u8],
}

impl Authenticated for FieldSet<'_> {
    const KIND: &'static str = "field-set";

    fn row_id(&self) -> String {
        self.record.to_owned()
    }

    fn stored_mac(&self) -> &[u8] {
        self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(self.record)
            .int(i64::try_from(self.fields.len()).unwrap_or(i64::MAX));
        for (name, version) in &self.fields {
            out.str(name).str(version);
        }
    }
}

impl<'a> FieldSet<'a> {
    fn new(
        record: &'a str,
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
        mac: &'a [u8],
    ) -> Self {
        let mut fields: Vec<(&str, &str)> = fields.into_iter().collect();
        fields.sort_unstable();
        Self {
            record,
            fields,
            mac,
        }
    }
}

/// A value the core keeps in the store's meta table (a pending root change, say).
struct MetaValue<'a> {
    key: &'a str,
    bytes: &'a [u8],
    mac: &'a [u8],
}

impl Authenticated for MetaValue<'_> {
    const KIND: &'static str = "meta";

    fn row_id(&self) -> String {
        self.key.to_owned()
    }

    fn stored_mac(&self) -> &[u8] {
        self.mac
    }

    fn encode(&self, out: &mut Encoder) {
        out.str(self.key).bytes(self.bytes);
    }
}

/// Length of a MAC appended to a meta value.
const MAC_LEN: usize = 32;

/// Computes and checks row MACs.
pub struct RowAuth {
    key: Subkey,
    /// This checker's number, never 0, unique in the process: rows it found authentic are
    /// marked with it (`store::RecordRead`).
    checker: u64,
}

/// The number of the next `RowAuth`.
static NEXT_CHECKER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl std::fmt::Debug for RowAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowAuth(<redacted>)")
    }
}

impl RowAuth {
    /// The authenticator of the store whose audit key is `key`.
    pub fn new(key: &AuditKey) -> Result<Self, CryptoError> {
        Ok(Self {
            key: key.row_mac_subkey()?,
            checker: NEXT_CHECKER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// This checker's number, never 0 (`store::RecordRead::checked_by`).
    pub(crate) fn checker(&self) -> u64 {
        self.checker
    }

    /// The MAC `row` must carry.
    pub(crate) fn mac<R: Authenticated>(&self, row: &R) -> Vec<u8> {
        let mut out = Encoder::default();
        out.str("kluis.v2.row").str(R::KIND);
        row.encode(&mut out);
        kdf::mac(&self.key, &out.0).to_vec()
    }

    /// `row` with its MAC set.
    pub(crate) fn seal<R: Authenticated>(
        &self,
        mut row: R,
        set: impl FnOnce(&mut R, Vec<u8>),
    ) -> R {
        let mac = self.mac(&row);
        set(&mut row, mac);
        row
    }

    /// Whether `row` carries the MAC it must (compared in constant time).
    pub(crate) fn is_authentic<R: Authenticated>(&self, row: &R) -> bool {
        let want = self.mac(row);
        want.len() == row.stored_mac().len() && bool::from(want.ct_eq(row.stored_mac()))
    }

    /// Fails closed on a row that is not authentic: logs an error naming the row (never its
    /// contents) and refuses with `DataLoss`.
    pub(crate) fn check<R: Authenticated>(&self, row: &R) -> Result<(), VaultError> {
        if self.is_authentic(row) {
            return Ok(());
        }
        let id = row.row_id();
        tracing::error!(
            kind = R::KIND,
            row = %id,
            "a stored row failed its integrity check and is not obeyed; run `kluis admin store verify`"
        );
        Err(VaultError::DataLoss(format!("stored {} `{id}`", R::KIND)))
    }

    /// The anchor of `subject` with `facts`' rows, with its MAC.
    pub(crate) fn anchor_of(&self, subject: &str, facts: &SubjectFacts) -> AnchorRow {
        self.seal(
            AnchorRow {
                subject: subject.into(),
                holds: u32::try_from(facts.holds.len()).unwrap_or(u32::MAX),
                consents: u32::try_from(facts.consents.len()).unwrap_or(u32::MAX),
                digest: anchor_digest(facts),
                mac: Vec::new(),
            },
            |r, m| r.mac = m,
        )
    }

    /// `field` of `record` with its MAC set.
    pub(crate) fn seal_field(&self, record: &str, mut field: FieldRow) -> FieldRow {
        field.mac = self.mac(&FieldPlace::of(record, &field));
        field
    }

    /// The field-set MAC of `record` holding the fields (name, version) `fields`.
    pub(crate) fn fields_mac<'a>(
        &self,
        record: &'a str,
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<u8> {
        self.mac(&FieldSet::new(record, fields, &[]))
    }

    /// Checks the field rows of `record` and that they are the set it was written with (fails
    /// closed as `check` does).
    pub(crate) fn check_fields(
        &self,
        record: &RecordRow,
        fields: &[FieldRow],
    ) -> Result<(), VaultError> {
        fields
            .iter()
            .try_for_each(|f| self.check(&FieldPlace::of(&record.id, f)))?;
        self.check(&FieldSet::new(
            &record.id,
            fields.iter().map(|f| (f.name.as_str(), f.version.as_str())),
            &record.fields_mac,
        ))
    }

    /// Checks the listed field rows of `record` and their set (evidence files are not field
    /// rows).
    pub(crate) fn check_field_metas(
        &self,
        record: &RecordRow,
        fields: &[FieldMeta],
    ) -> Result<(), VaultError> {
        let rows = || fields.iter().filter(|f| f.evidence.is_none());
        rows().try_for_each(|f| {
            self.check(&FieldPlace {
                record: &record.id,
                name: &f.name,
                category: f.category.as_str(),
                kind: f.kind.map_or("", crate::domain::FieldKind::as_str),
                version: &f.version,
                mac: &f.mac,
            })
        })?;
        self.check(&FieldSet::new(
            &record.id,
            rows().map(|f| (f.name.as_str(), f.version.as_str())),
            &record.fields_mac,
        ))
    }

    /// `bytes` for the meta row `key`, with its MAC appended.
    pub(crate) fn seal_meta(&self, key: &str, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out.extend(self.mac(&MetaValue {
            key,
            bytes,
            mac: &[],
        }));
        out
    }

    /// The value of the meta row `key` as sealed by `seal_meta`; fails closed (and logs) when
    /// its MAC does not check.
    pub(crate) fn open_meta<'a>(
        &self,
        key: &str,
        stored: &'a [u8],
    ) -> Result<&'a [u8], VaultError> {
        let split = stored.len().saturating_sub(MAC_LEN);
        let (bytes, mac) = stored.split_at(split);
        self.check(&MetaValue { key, bytes, mac })?;
        Ok(bytes)
    }

    /// Checks every row of `rows`.
    pub(crate) fn check_all<'a, R: Authenticated + 'a>(
        &self,
        rows: impl IntoIterator<Item = &'a R>,
    ) -> Result<(), VaultError> {
        rows.into_iter().try_for_each(|r| self.check(r))
    }
}

/// Why `facts` do not add up for `subject`, if they do not (the MACs of the anchor and the
/// consent rows are checked apart).
fn anchor_problem(facts: &SubjectFacts) -> Option<&'static str> {
    let consents = u32::try_from(facts.consents.len()).unwrap_or(u32::MAX);
    let holds = u32::try_from(facts.holds.len()).unwrap_or(u32::MAX);
    match &facts.anchor {
        Some(a) if a.holds != holds || a.consents != consents => {
            Some("counts other holds or consent states than are stored (a row deleted by hand)")
        }
        Some(a) if a.digest != anchor_digest(facts) => Some(
            "names other hold, consent, mandate, restriction or destroyed-record rows than are \
                 stored (one deleted, or an older copy put back, by hand: a release, withdrawal, \
                 revocation, restriction or destruction undone)",
        ),
        Some(_) => None,
        None if holds > 0
            || consents > 0
            || !facts.mandates.is_empty()
            || !facts.restrictions.is_empty()
            || !facts.destroyed.is_empty()
            || facts.keyed =>
        {
            Some(
                "is missing for a subject with holds, consent states, mandates, restrictions, \
                 keys, records or destroyed records (deleted by hand)",
            )
        }
        None => None,
    }
}

/// How often a change to a subject's restrictions is tried again when another came between.
const ANCHOR_ATTEMPTS: usize = 5;

impl Vault {
    /// The subject's restriction facts (anchor, consent states, holds), checked: every consent
    /// row and the anchor must carry their MACs, and the anchor must count exactly the hold
    /// and consent rows stored, or the call fails closed (`DataLoss`) and an error is logged.
    pub(crate) fn subject_facts(&self, subject: &str) -> Result<SubjectFacts, VaultError> {
        let facts = self.store.subject_facts(subject)?;
        self.check_facts(subject, &facts)?;
        Ok(facts)
    }

    /// `subject_facts` of each of `subjects`, in their order, read together.
    pub(crate) fn subjects_facts(
        &self,
        subjects: &[&str],
    ) -> Result<Vec<SubjectFacts>, VaultError> {
        let facts = self.store.subjects_facts(subjects)?;
        if facts.len() != subjects.len() {
            return Err(VaultError::DataLoss(
                "the store answered the facts of other subjects than were asked".into(),
            ));
        }
        for (subject, f) in subjects.iter().zip(&facts) {
            self.check_facts(subject, f)?;
        }
        Ok(facts)
    }

    /// Checks the facts read for `subject`: every row authentic, and the anchor naming them
    /// all as they are.
    pub(crate) fn check_facts(
        &self,
        subject: &str,
        facts: &SubjectFacts,
    ) -> Result<(), VaultError> {
        self.rows.check_all(&facts.consents)?;
        self.rows.check_all(&facts.holds)?;
        self.rows.check_all(&facts.mandates)?;
        self.rows.check_all(&facts.restrictions)?;
        if let Some(a) = &facts.anchor {
            self.rows.check(a)?;
            if a.subject != subject {
                return Err(VaultError::DataLoss(format!(
                    "stored anchor `{}`",
                    a.subject
                )));
            }
        }
        if let Some(problem) = anchor_problem(facts) {
            tracing::error!(kind = AnchorRow::KIND, row = %subject, problem, "a subject's restrictions do not add up and are not obeyed; run `kluis admin store verify`");
            return Err(VaultError::DataLoss(format!(
                "stored holds and consent states of `{subject}`"
            )));
        }
        Ok(())
    }

    /// Changes a subject's restrictions: `apply` makes the change to the facts as read (a hold
    /// placed or released, a consent state recorded, a mandate granted or revoked), and `write`
    /// stores it with the anchor as read and the anchor of the changed facts; it is tried again
    /// when another change came between. Returns what `write` returned.
    pub(crate) fn change_restrictions(
        &self,
        subject: &str,
        apply: impl Fn(&mut SubjectFacts),
        write: impl Fn(Option<&AnchorRow>, &AnchorRow) -> Result<bool, StoreError>,
    ) -> Result<bool, VaultError> {
        for _ in 0..ANCHOR_ATTEMPTS {
            let facts = self.subject_facts(subject)?;
            let mut changed = facts.clone();
            apply(&mut changed);
            let next = self.rows.anchor_of(subject, &changed);
            match write(facts.anchor.as_ref(), &next) {
                Err(StoreError::Stale(_)) => continue,
                other => {
                    let written = other?;
                    // Long calls about the subject decide on these facts again before they
                    // send on (`api::judge`).
                    self.judgements_changed();
                    return Ok(written);
                }
            }
        }
        Err(VaultError::FailedPrecondition(format!(
            "the holds, consent states or mandates of `{subject}` kept changing meanwhile; try again"
        )))
    }
}

/// A stored row that fails verification: what it is and what is wrong. Never its contents.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct BadRow {
    /// `token`, `hold`, `mandate`, `consent`, `restriction`, `disclosure`, `anchor`, `record`,
    /// `field`, `evidence`, `request`, `purpose-key`, `key-job`, `meta`, or `database` (the
    /// file's structure).
    pub kind: &'static str,
    /// The row's id (for a consent: `subject/purpose`).
    pub id: String,
    /// What is wrong.
    pub problem: String,
}

impl Vault {
    /// The authentic token rows of `tokens` that the token register does not name, and the
    /// tokens the register names that are not among them.
    fn stale_tokens(&self, tokens: &[TokenRow]) -> Result<Vec<BadRow>, VaultError> {
        let mut stale = Vec::new();
        for t in tokens {
            if self.rows.is_authentic(t) && !self.is_registered(t)? {
                stale.push(BadRow {
                    kind: TokenRow::KIND,
                    id: t.row_id(),
                    problem: "is not the row kluis last wrote (an older copy put back by hand: a \
                                  revocation or approval undone)"
                        .into(),
                });
            }
        }
        for id in self.registered_tokens()? {
            if !tokens.iter().any(|t| t.id == id) {
                stale.push(BadRow {
                    kind: TokenRow::KIND,
                    id,
                    problem: "was issued but is not in the store: deleted by hand".into(),
                });
            }
        }
        Ok(stale)
    }

    /// Checks every authenticated row of the store and compares the rows the trail says must
    /// exist (holds placed, mandates granted, consent changes, subject requests opened) with what
    /// is stored, so that a deleted hold, objection or request is found too. Security officer (`verify-audit`); audited.
    pub fn verify_store(&self, actor: &Principal) -> Result<Vec<BadRow>, VaultError> {
        /// `read`, or `None` with a bad row when the store cannot read a row of `kind` (a value
        /// of another type than kluis writes, put there by hand): the rest is still verified.
        fn readable<T>(
            unreadable: &mut Vec<BadRow>,
            kind: &'static str,
            read: Result<T, StoreError>,
        ) -> Result<Option<T>, VaultError> {
            match read {
                Ok(t) => Ok(Some(t)),
                Err(StoreError::Corrupt(what)) => {
                    unreadable.push(BadRow {
                        kind,
                        id: "(unreadable)".into(),
                        problem: format!("a row cannot be read ({what}): edited by hand"),
                    });
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        }
        let mut event =
            self.require_admin(actor, AdminAction::VerifyAudit, "store-verify", None, "")?;
        let mut bad = Vec::new();
        // The file's own structure first: an index swapped for another's by hand leaves rows
        // out of what kluis finds by it (a subject's records for an erasure, the subject keys
        // a rekey moves).
        for problem in self.store.structure_problems()? {
            bad.push(BadRow {
                kind: "database",
                id: "structure".into(),
                problem,
            });
        }
        let mut check = |kind: &'static str, id: String, ok: bool| {
            if !ok {
                bad.push(BadRow {
                    kind,
                    id,
                    problem: "fails its integrity check (edited, inserted or moved by hand)".into(),
                });
            }
        };
        let mut key_rows = 0usize;
        let mut unreadable = Vec::new();
        for &purpose in crate::domain::Purpose::ALL {
            match self.store.purpose_keys(purpose.as_str()) {
                Ok(keys) => {
                    for k in keys {
                        key_rows += 1;
                        check(PurposeKeyRow::KIND, k.row_id(), self.rows.is_authentic(&k));
                    }
                }
                Err(StoreError::Corrupt(what)) => unreadable.push(BadRow {
                    kind: PurposeKeyRow::KIND,
                    id: purpose.as_str().into(),
                    problem: format!("a version cannot be read ({what}): edited by hand"),
                }),
                Err(e) => return Err(e.into()),
            }
        }
        // Key jobs under way: a row kluis did not start as the job under way (written or edited
        // by hand, a finished job's row put back) is replaced when the job runs again.
        if let Some(jobs) = readable(&mut unreadable, KeyJobMac::KIND, self.store.key_jobs())? {
            for job in jobs {
                let ok = self.stored_key_job_is_authentic(&job)?;
                check(KeyJobMac::KIND, format!("{}:{}", job.kind, job.purpose), ok);
            }
        }
        let tokens = readable(&mut unreadable, TokenRow::KIND, self.store.tokens())?;
        let tokens_read = tokens.is_some();
        let tokens = tokens.unwrap_or_default();
        // The register as stored, read after the rows: a token changed on another node less
        // than a poll ago is registered before its row is written, so it is not reported.
        self.forget_token_register();
        for t in &tokens {
            check(TokenRow::KIND, t.row_id(), self.rows.is_authentic(t));
        }
        let mut stale_tokens = if tokens_read {
            self.stale_tokens(&tokens)?
        } else {
            Vec::new()
        };
        // A token being changed (issued, approved, revoked: its register entry, then its row,
        // two transactions, maybe on another node) while they are read looks stale for that
        // moment: read both again a little later, a few times, and name only what stayed stale.
        for wait in [20, 100, 500] {
            if stale_tokens.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(wait));
            let again = self.store.tokens()?;
            self.forget_token_register();
            let still = self.stale_tokens(&again)?;
            stale_tokens.retain(|b| still.iter().any(|s| s.id == b.id && s.problem == b.problem));
        }
        let holds = readable(
            &mut unreadable,
            HoldRow::KIND,
            self.store.holds(None, false),
        )?
        .unwrap_or_default();
        for h in &holds {
            check(HoldRow::KIND, h.row_id(), self.rows.is_authentic(h));
        }
        let mandates = readable(
            &mut unreadable,
            MandateRow::KIND,
            self.store.mandates(None, None),
        )?
        .unwrap_or_default();
        for m in &mandates {
            check(MandateRow::KIND, m.row_id(), self.rows.is_authentic(m));
        }
        let consents = readable(&mut unreadable, ConsentRow::KIND, self.store.all_consents())?
            .unwrap_or_default();
        for c in &consents {
            check(ConsentRow::KIND, c.row_id(), self.rows.is_authentic(c));
        }
        let requests =
            readable(&mut unreadable, RequestRow::KIND, self.store.requests())?.unwrap_or_default();
        for r in &requests {
            check(RequestRow::KIND, r.row_id(), self.rows.is_authentic(r));
        }
        let restrictions = readable(
            &mut unreadable,
            RestrictionRow::KIND,
            self.store.restrictions(None),
        )?
        .unwrap_or_default();
        for r in &restrictions {
            check(RestrictionRow::KIND, r.row_id(), self.rows.is_authentic(r));
        }
        let disclosures = readable(
            &mut unreadable,
            DisclosureRow::KIND,
            self.store.disclosures(None, None, usize::MAX),
        )?
        .unwrap_or_default();
        for d in &disclosures {
            check(DisclosureRow::KIND, d.row_id(), self.rows.is_authentic(d));
        }
        let anchors =
            readable(&mut unreadable, AnchorRow::KIND, self.store.anchors())?.unwrap_or_default();
        for a in &anchors {
            check(AnchorRow::KIND, a.row_id(), self.rows.is_authentic(a));
        }
        let mut subjects: std::collections::BTreeSet<String> = anchors
            .iter()
            .map(|a| a.subject.clone())
            .chain(holds.iter().map(|h| h.subject.clone()))
            .chain(consents.iter().map(|c| c.subject.clone()))
            .chain(mandates.iter().map(|m| m.subject.clone()))
            .chain(restrictions.iter().map(|r| r.subject.clone()))
            .collect();
        let mut bad_sets = Vec::new();
        let mut after = String::new();
        let mut records = 0usize;
        // Records past a page that cannot be read cannot be paged through: that page ends it.
        while let Some(page) = readable(
            &mut unreadable,
            RecordRow::KIND,
            self.store.records_page(&after, 1000),
        )? {
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            // Each record row with its fields from one snapshot (the page may be older), read
            // together for the page.
            let ids: Vec<&str> = page.iter().map(|r| r.id.as_str()).collect();
            let mut read: BTreeMap<String, (RecordRow, Vec<FieldRow>)> =
                readable(&mut unreadable, RecordRow::KIND, self.store.records(&ids))?
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(r, fields)| (r.id.clone(), (r, fields)))
                    .collect();
            for r in &page {
                records += 1;
                subjects.insert(r.subject.clone());
                check(RecordRow::KIND, r.row_id(), self.rows.is_authentic(r));
                if let Some((r, fields)) = read.remove(&r.id) {
                    for f in &fields {
                        let place = FieldPlace::of(&r.id, f);
                        check(
                            FieldPlace::KIND,
                            place.row_id(),
                            self.rows.is_authentic(&place),
                        );
                    }
                    let set = FieldSet::new(
                        &r.id,
                        fields.iter().map(|f| (f.name.as_str(), f.version.as_str())),
                        &r.fields_mac,
                    );
                    if !self.rows.is_authentic(&set) {
                        bad_sets.push(BadRow {
                            kind: FieldSet::KIND,
                            id: r.id.clone(),
                            problem: "its fields are not the ones it was written with (a field \
                                      row deleted, or an older one put back, by hand)"
                                .into(),
                        });
                    }
                }
                // Every evidence row, finished or not: a finished file marked unfinished by hand
                // fails its MAC; an upload still running has the segments that arrived so far.
                // Rows that cannot be read (a value of another type stored by hand) are named
                // by their record (the files of that record are then not checked further), and
                // the rest is still verified.
                let evidence = match self.store.record_evidence(&r.id) {
                    Err(StoreError::Corrupt(what)) => {
                        unreadable.push(BadRow {
                            kind: RecordRow::KIND,
                            id: r.id.clone(),
                            problem: format!(
                                "an evidence row of this record cannot be read ({what}): \
                                 edited by hand"
                            ),
                        });
                        Vec::new()
                    }
                    other => other?,
                };
                for e in evidence {
                    let authentic = self.rows.is_authentic(&e);
                    check(EvidenceRow::KIND, e.row_id(), authentic);
                    if !(authentic && e.complete) {
                        continue;
                    }
                    // Its segments are exactly those of its size: a segment row inserted
                    // (under another index) or deleted by hand is named here; a segment edited
                    // or moved fails its AEAD when it is read.
                    let n = crate::crypto::stream::segment_count(e.size);
                    let (count, span) = match self.store.segment_span(&e.id) {
                        Err(StoreError::Corrupt(what)) => {
                            unreadable.push(BadRow {
                                kind: EvidenceRow::KIND,
                                id: e.row_id(),
                                problem: format!(
                                    "its segment rows cannot be read ({what}): edited by hand"
                                ),
                            });
                            continue;
                        }
                        other => other?,
                    };
                    let last = i64::try_from(n).unwrap_or(i64::MAX) - 1;
                    if count != n || span != Some((0, last)) {
                        bad_sets.push(BadRow {
                            kind: EvidenceRow::KIND,
                            id: e.row_id(),
                            problem: format!(
                                "has {count} segment rows where its size makes {n} numbered from \
                                 0 (a segment row inserted or deleted by hand)"
                            ),
                        });
                    }
                }
            }
        }
        bad.extend(unreadable);
        bad.extend(stale_tokens);
        bad.extend(bad_sets);
        let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
        for chunk in subjects.chunks(1000) {
            for (subject, facts) in chunk.iter().zip(self.store.subjects_facts(chunk)?) {
                if let Some(problem) = anchor_problem(&facts) {
                    bad.push(BadRow {
                        kind: AnchorRow::KIND,
                        id: (*subject).to_owned(),
                        problem: format!("the anchor of this subject {problem}"),
                    });
                }
                // A destroyed record stored again: its rows put back by hand.
                for ids in facts.destroyed.chunks(1000) {
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    for (r, _) in self.store.record_metas(&ids)? {
                        if r.subject == *subject {
                            bad.push(BadRow {
                                kind: RecordRow::KIND,
                                id: r.id,
                                problem: "was destroyed (its subject's anchor names it) and is \
                                          stored again: its rows were put back by hand"
                                    .into(),
                            });
                        }
                    }
                }
            }
        }
        // What the trail says must still be there.
        let mut placed: BTreeMap<String, u64> = BTreeMap::new();
        let mut granted: BTreeMap<String, u64> = BTreeMap::new();
        let mut opened: BTreeMap<String, u64> = BTreeMap::new();
        let mut restricted: BTreeMap<String, u64> = BTreeMap::new();
        let mut consent_state: BTreeMap<String, (String, u64)> = BTreeMap::new();
        let mut disclosed: BTreeMap<String, (String, u64)> = BTreeMap::new();
        // The last entry that destroyed records of a subject: its disclosures may have gone with
        // its last record.
        let mut destroyed: BTreeMap<String, u64> = BTreeMap::new();
        // The records the trail says were deleted or swept (and not said after to have been
        // kept): none may be stored, even when an older anchor was put back with them.
        let mut gone: BTreeMap<String, u64> = BTreeMap::new();
        let filter = Filter {
            actions: [
                "hold-place",
                "mandate-grant",
                "consent",
                "request-open",
                "restrict",
                "disclosure",
                "read",
                "found",
                "evidence-read",
                "delete",
                "retention-destroy",
                "erase-subject",
            ]
            .iter()
            .map(|a| (*a).to_owned())
            .collect(),
            ..Filter::default()
        };
        self.audit.scan(&filter, |seq, e, _| {
            // A deletion or a sweep names its record; an erasure the records it destroys.
            let named: Vec<&str> = match (e.action.as_str(), &e.record, &e.target) {
                ("delete" | "retention-destroy", Some(r), _) => vec![r.as_str()],
                ("erase-subject", _, Some(ids)) => {
                    ids.split(',').filter(|id| id.starts_with("rec_")).collect()
                }
                _ => Vec::new(),
            };
            for r in named {
                if e.decision == "allow" {
                    gone.insert(r.to_owned(), seq);
                } else if e
                    .reason
                    .as_deref()
                    .is_some_and(|why| why.starts_with("not carried out"))
                {
                    gone.remove(r);
                }
            }
            if e.decision == "allow" {
                match (e.action.as_str(), &e.target) {
                    ("hold-place", Some(id)) => {
                        placed.insert(id.clone(), seq);
                    }
                    ("mandate-grant", Some(id)) => {
                        granted.insert(id.clone(), seq);
                    }
                    ("request-open", Some(id)) => {
                        opened.insert(id.clone(), seq);
                    }
                    ("restrict", Some(id)) => {
                        restricted.insert(id.clone(), seq);
                    }
                    // A disclosure recorded by a caller, or a read or search hit by an
                    // external party that the vault registered (the entry names it).
                    ("disclosure" | "read" | "found", Some(id)) if id.starts_with("dsc_") => {
                        if let Some(s) = &e.subject {
                            disclosed.insert(id.clone(), (s.clone(), seq));
                        }
                    }
                    // An evidence download by an external party: the entry's reason names the
                    // disclosure (its target is the file).
                    ("evidence-read", _) => {
                        let id = e
                            .reason
                            .as_deref()
                            .and_then(|r| r.split("disclosure ").nth(1))
                            .filter(|id| id.starts_with("dsc_"));
                        if let (Some(id), Some(s)) = (id, &e.subject) {
                            disclosed.insert(id.to_owned(), (s.clone(), seq));
                        }
                    }
                    ("delete" | "retention-destroy" | "erase-subject", _) => {
                        if let Some(s) = &e.subject {
                            destroyed.insert(s.clone(), seq);
                        }
                    }
                    ("consent", _) => {
                        if let (Some(s), Some(p), Some(state)) = (&e.subject, &e.purpose, &e.reason)
                        {
                            consent_state.insert(format!("{s}/{p}"), (state.clone(), seq));
                        }
                    }
                    _ => {}
                }
            }
            true
        })?;
        let missing = |kind: &'static str, id: &str, seq: u64, what: &str| BadRow {
            kind,
            id: id.to_owned(),
            problem: format!("{what} (audit entry {seq}) but not in the store: deleted by hand"),
        };
        for (id, seq) in &placed {
            if !holds.iter().any(|h| &h.id == id) {
                bad.push(missing(HoldRow::KIND, id, *seq, "placed"));
            }
        }
        for (id, seq) in &granted {
            if !mandates.iter().any(|m| &m.id == id) {
                bad.push(missing(MandateRow::KIND, id, *seq, "granted"));
            }
        }
        for (id, seq) in &opened {
            if !requests.iter().any(|r| &r.id == id) {
                bad.push(missing(RequestRow::KIND, id, *seq, "opened"));
            }
        }
        for (id, seq) in &restricted {
            if !restrictions.iter().any(|r| &r.id == id) {
                bad.push(missing(RestrictionRow::KIND, id, *seq, "placed"));
            }
        }
        let gone_ids: Vec<&str> = gone.keys().map(String::as_str).collect();
        for ids in gone_ids.chunks(1000) {
            for (r, _) in self.store.record_metas(ids)? {
                // Not named already from its subject's facts.
                if bad
                    .iter()
                    .any(|b| b.kind == RecordRow::KIND && b.id == r.id)
                {
                    continue;
                }
                let seq = gone.get(&r.id).copied().unwrap_or_default();
                bad.push(BadRow {
                    kind: RecordRow::KIND,
                    problem: format!(
                        "destroyed (audit entry {seq}) and stored again: its rows were put back \
                         by hand"
                    ),
                    id: r.id,
                });
            }
        }
        for (id, (subject, seq)) in &disclosed {
            let gone_with_records = destroyed.get(subject).is_some_and(|d| d > seq);
            if !gone_with_records && !disclosures.iter().any(|d| &d.id == id) {
                bad.push(missing(DisclosureRow::KIND, id, *seq, "recorded"));
            }
        }
        for (key, (state, seq)) in &consent_state {
            match consents.iter().find(|c| &c.row_id() == key) {
                None => bad.push(missing(
                    ConsentRow::KIND,
                    key,
                    *seq,
                    &format!("recorded as `{state}`"),
                )),
                Some(c) if c.state.as_str() != state.as_str() => bad.push(BadRow {
                    kind: ConsentRow::KIND,
                    id: key.clone(),
                    problem: format!(
                        "stored as `{}` but recorded as `{state}` (audit entry {seq})",
                        c.state
                    ),
                }),
                Some(_) => {}
            }
        }
        event.reason = Some(format!(
            "{key_rows} key versions, {} tokens, {} holds, {} mandates, {} consents, {records} records checked; {} bad",
            tokens.len(),
            holds.len(),
            mandates.len(),
            consents.len(),
            bad.len()
        ));
        event.commit()?;
        for b in &bad {
            tracing::error!(kind = b.kind, row = %b.id, problem = %b.problem, "store verification found a bad row");
        }
        Ok(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(byte: u8) -> RowAuth {
        RowAuth::new(&AuditKey::from_bytes(&[byte; 32])).unwrap()
    }

    fn hold() -> HoldRow {
        HoldRow {
            id: "hold_1".into(),
            subject: "rel-1".into(),
            record_id: None,
            reason: "claim".into(),
            case_ref: "LD-1".into(),
            placed_by: "po".into(),
            placed_at: 10,
            released_at: None,
            released_by: None,
            mac: Vec::new(),
        }
    }

    #[test]
    fn a_sealed_row_is_authentic() {
        let a = auth(1);
        let row = a.seal(hold(), |r, m| r.mac = m);
        assert!(a.is_authentic(&row));
        a.check(&row).unwrap();
    }

    #[test]
    fn an_edited_row_fails() {
        let a = auth(1);
        let row = a.seal(hold(), |r, m| r.mac = m);
        let released = HoldRow {
            released_at: Some(11),
            released_by: Some("po".into()),
            ..row.clone()
        };
        assert!(!a.is_authentic(&released));
        let moved = HoldRow {
            subject: "rel-2".into(),
            ..row.clone()
        };
        assert!(matches!(a.check(&moved), Err(VaultError::DataLoss(_))));
        let truncated = HoldRow {
            mac: row.mac.get(..16).unwrap().to_vec(),
            ..row.clone()
        };
        assert!(!a.is_authentic(&truncated));
        let empty = HoldRow {
            mac: Vec::new(),
            ..row
        };
        assert!(!a.is_authentic(&empty));
    }

    #[test]
    fn another_stores_key_does_not_vouch() {
        let row = auth(1).seal(hold(), |r, m| r.mac = m);
        assert!(!auth(2).is_authentic(&row));
    }

    #[test]
    fn kinds_and_field_boundaries_do_not_collide() {
        let a = auth(1);
        // The same strings as a mandate and as a consent, or shifted between fields, differ.
        let c1 = ConsentRow {
            subject: "ab".into(),
            purpose: crate::domain::Purpose::Contract,
            state: crate::domain::ConsentState::Objected,
            at: 1,
            recorded_by: "po".into(),
            mac: Vec::new(),
        };
        let c2 = ConsentRow {
            subject: "a".into(),
            purpose: crate::domain::Purpose::Payments,
            ..c1.clone()
        };
        assert_ne!(a.mac(&c1), a.mac(&c2));
        let withdrawn = ConsentRow {
            state: crate::domain::ConsentState::Withdrawn,
            ..c1.clone()
        };
        let sealed = a.seal(c1, |r, m| r.mac = m);
        let forged = ConsentRow {
            mac: sealed.mac.clone(),
            ..withdrawn
        };
        assert!(!a.is_authentic(&forged));
    }

    #[test]
    fn an_anchor_covers_the_names_of_destroyed_records_once_there_are_some() {
        let held = SubjectFacts {
            holds: vec![auth(1).seal(hold(), |r, m| r.mac = m)],
            ..SubjectFacts::default()
        };
        let before = anchor_digest(&held);
        // The digest of a subject with none is the one anchors were written with before
        // destroyed records were named: the label and the list come only with a first name.
        let named = |ids: &[&str]| SubjectFacts {
            destroyed: ids.iter().map(|&i| i.to_owned()).collect(),
            ..held.clone()
        };
        assert_eq!(anchor_digest(&named(&[])), before);
        let one = anchor_digest(&named(&["rec_a"]));
        assert_ne!(one, before, "a name destroyed changes the digest");
        // Its twin: another name, or one more, or one taken away, differs again.
        assert_ne!(anchor_digest(&named(&["rec_b"])), one);
        let two = anchor_digest(&named(&["rec_a", "rec_b"]));
        assert_ne!(two, one);
        // In any order, and a name twice counts once (a record destroyed again).
        assert_eq!(anchor_digest(&named(&["rec_b", "rec_a"])), two);
        assert_eq!(anchor_digest(&named(&["rec_a", "rec_b", "rec_a"])), two);
        // A name is not a hold: the lists do not run into each other.
        assert_ne!(anchor_digest(&named(&["hold_1"])), before);
        let problem = |facts: &SubjectFacts, digest: Vec<u8>| {
            anchor_problem(&SubjectFacts {
                anchor: Some(AnchorRow {
                    subject: "rel-1".into(),
                    holds: 1,
                    consents: 0,
                    digest,
                    mac: Vec::new(),
                }),
                ..facts.clone()
            })
        };
        // A name deleted by hand no longer adds up; as written, it does.
        assert!(problem(&named(&[]), one.clone()).is_some());
        assert!(problem(&named(&["rec_a"]), one).is_none());
        // Names without an anchor: the anchor was deleted by hand (names come only with one).
        let unanchored = SubjectFacts {
            destroyed: vec!["rec_a".into()],
            ..SubjectFacts::default()
        };
        assert!(anchor_problem(&unanchored).is_some());
        assert!(anchor_problem(&SubjectFacts::default()).is_none());
    }
}
