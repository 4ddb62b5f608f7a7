//! The conformance suite every `Store` implementation must pass: the SQLite tests call
//! `run_all`, and so will the PostgreSQL ones. It checks behaviour, not SQL.

use std::collections::BTreeMap;

use crate::domain::{Category, ConsentState, FieldKind, Purpose, RecipientKind, RequestKind};

use super::{
    AnchorChange, AnchorRow, AuditRow, ConsentRow, DisclosureRow, FieldMeta, FieldRow, FieldsMac,
    HashAt, HoldRow, KeyJobRow, KeyRowChange, KeyState, LeaseRow, MandateRow, PurposeKeyRow,
    RecordRead, RecordRow, RecordWrite, RequestRow, RestrictionRow, Store, StoreError,
    SubjectKeyRow, TagRow, TokenRow,
};

/// A fresh anchor of `subject`, as the core stores it with the subject's first key.
fn anchor(subject: &str) -> AnchorRow {
    AnchorRow {
        subject: subject.into(),
        holds: 0,
        consents: 0,
        digest: vec![0x76; 32],
        mac: vec![0x77; 32],
    }
}

/// The change of `subject`'s anchor that a destruction makes, over the anchor stored now: the
/// core computes the digest and the MAC; a store only keeps and compares them.
#[expect(clippy::unwrap_used, reason = "a test suite: failures must panic")]
fn destroying(store: &dyn Store, subject: &str) -> (Option<AnchorRow>, AnchorRow) {
    let prev = store.subject_facts(subject).unwrap().anchor;
    let mut next = prev.clone().unwrap_or_else(|| anchor(subject));
    next.digest = next.digest.iter().map(|b| b.wrapping_add(1)).collect();
    next.mac = next.mac.iter().map(|b| b.wrapping_add(1)).collect();
    (prev, next)
}

/// `Store::delete_record` over the anchor of the record's subject as stored now.
#[expect(clippy::unwrap_used, reason = "a test suite: failures must panic")]
fn delete(store: &dyn Store, id: &str) -> Result<Option<bool>, StoreError> {
    let subject = store
        .record(id)
        .unwrap()
        .map_or_else(|| "nobody".to_owned(), |(r, _)| r.subject);
    let (prev, next) = destroying(store, &subject);
    store.delete_record(
        id,
        AnchorChange {
            prev: prev.as_ref(),
            next: &next,
        },
    )
}

/// `Store::shred_records` over the anchor of `subject` as stored now.
fn shred(
    store: &dyn Store,
    subject: &str,
    ids: &[String],
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let (prev, next) = destroying(store, subject);
    store.shred_records(
        subject,
        ids,
        AnchorChange {
            prev: prev.as_ref(),
            next: &next,
        },
    )
}

/// Record `id` of `subject`, purpose nuisance, open, with fixed MACs.
pub fn record_row(id: &str, subject: &str) -> RecordRow {
    RecordRow {
        mac: vec![0xAB; 32],
        id: id.into(),
        subject: subject.into(),
        purpose: Purpose::Nuisance,
        labels: BTreeMap::new(),
        created_at: 100,
        updated_at: 100,
        closed_at: None,
        expires_at: None,
        fields_mac: vec![0x01; 32],
    }
}

/// Stores record `id` of `subject` (purpose nuisance, fields `email` and `phone`) in a store
/// `run_all` has not run on, with what it needs: the store initialised, the subject's key.
#[expect(clippy::unwrap_used, reason = "a test suite: failures must panic")]
pub fn one_record(store: &dyn Store, id: &str, subject: &str) {
    if store.meta("root").unwrap().is_none() {
        store
            .initialize(&[("root", b"params".to_vec())], &[nuisance_key_v1()])
            .unwrap();
    }
    let key = SubjectKeyRow {
        subject: subject.into(),
        purpose: Purpose::Nuisance,
        generation: 1,
        purpose_version: 1,
        wrapped: vec![9; 40],
        created_at: 11,
    };
    store.insert_subject_key(&key, &anchor(subject)).unwrap();
    let record = record_row(id, subject);
    let field = |name: &str| FieldRow {
        mac: vec![0xCD; 32],
        version: "v1".into(),
        name: name.into(),
        category: Category::Contact,
        kind: FieldKind::Text,
        key_gen: 1,
        sealed: vec![1; 30],
        tags: Vec::new(),
    };
    store
        .insert_record(&record, &[field("email"), field("phone")])
        .unwrap();
}

/// Reads `id` with its facts, twice (a store may keep what it read), and checks each read
/// against `record` and `subject_facts`, read apart: a read with facts answers what the store
/// holds now, whatever was read of it before a change.
#[expect(clippy::unwrap_used, reason = "a test suite: failures must panic")]
fn read_as_stored(store: &dyn Store, id: &str) {
    let stored = store.record(id).unwrap().map(|(record, fields)| {
        let facts = store.subject_facts(&record.subject).unwrap();
        std::sync::Arc::new(RecordRead::new(record, fields, facts))
    });
    for _ in 0..2 {
        assert_eq!(store.record_with_facts(id).unwrap(), stored, "{id}");
    }
}

/// An audit row of `trail_by_subject`: entry `seq`, naming the subject `subject_of(seq)` (none
/// for every fifth).
pub fn audit_row(seq: u64) -> AuditRow {
    let subject = subject_of(seq);
    let entry = if subject.is_empty() {
        format!("{{\"seq\":{seq}}}")
    } else {
        format!("{{\"seq\":{seq},\"subject\":\"{subject}\"}}")
    };
    AuditRow {
        seq,
        entry: entry.into_bytes(),
        prev_hash: vec![0; 32],
        hash: vec![1; 32],
        mac: vec![2; 32],
    }
}

/// The subject entry `seq` of `audit_row` names ("" for none).
pub fn subject_of(seq: u64) -> &'static str {
    match seq % 5 {
        0 | 3 => "REL-A",
        1 => "REL-B",
        2 => "",
        _ => "REL-C",
    }
}

/// Every subject's entries of a trail of `audit_row`s up to `last`, paged from several
/// starting points and page sizes and to the end as an export reads them, are what a scan of
/// the trail finds.
#[expect(clippy::unwrap_used, reason = "a test suite: failures must panic")]
pub fn lookups_by_subject_agree(store: &dyn Store, last: u64) {
    for subject in ["REL-A", "REL-B", "REL-C", "REL-D"] {
        let all: Vec<u64> = (1..=last).filter(|s| subject_of(*s) == subject).collect();
        for (from, limit) in [(1, usize::MAX), (1, 7), (2040, 100), (4100, 3), (last, 5)] {
            let mut want: Vec<u64> = all.iter().copied().filter(|s| *s >= from).collect();
            want.truncate(limit);
            let got: Vec<u64> = store
                .subject_audit_entries(subject, from, limit)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect();
            assert_eq!(got, want, "{subject} from {from}, {limit}");
        }
        let mut paged = Vec::new();
        let mut from = 1;
        loop {
            let page = store.subject_audit_entries(subject, from, 500).unwrap();
            let Some(end) = page.last() else { break };
            from = end.seq + 1;
            paged.extend(page.iter().map(|r| r.seq));
        }
        assert_eq!(paged, all, "{subject} paged");
    }
}

/// Against an empty trail: appends 2 × 2,048 + 333 entries (more than two runs of an index
/// kept in runs) in batches of 37, checks every subject's lookups against a scan and that the
/// store finds nothing wrong with its index. Returns the last sequence number.
#[expect(clippy::unwrap_used, reason = "a test suite: failures must panic")]
pub fn trail_by_subject(store: &dyn Store) -> u64 {
    assert_eq!(store.audit_tail().unwrap(), None, "needs an empty trail");
    let last = 2 * 2048 + 333;
    let mut seq = 1;
    while seq <= last {
        let batch: Vec<AuditRow> = (seq..=last.min(seq + 36)).map(audit_row).collect();
        seq += batch.len() as u64;
        store.append_audit(&batch).unwrap();
    }
    lookups_by_subject_agree(store, last);
    assert_eq!(store.subject_index_problem().unwrap(), None);
    assert_eq!(store.audit_rows_below_one().unwrap(), (0, 0));
    last
}

/// Version 1 of the nuisance purpose key, active, as the suite's stores are initialised with.
pub fn nuisance_key_v1() -> PurposeKeyRow {
    PurposeKeyRow {
        purpose: Purpose::Nuisance,
        version: 1,
        state: KeyState::Active,
        algorithm: crate::crypto::Algorithm::Aes256Gcm,
        wrapped: vec![1, 2, 3],
        created_at: 10,
        retired_at: None,
        destroy_after: None,
        destroyed_at: None,
        barred: false,
        mac: vec![0x11; 32],
    }
}

/// Runs every conformance check against an empty `store`. Panics on the first failure, so call
/// it from a test.
#[expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a test suite: failures must panic"
)]
pub fn run_all(store: &dyn Store) {
    // Initialisation is all-or-nothing and happens once.
    assert_eq!(store.meta("root").unwrap(), None);
    let pk = nuisance_key_v1();
    store
        .initialize(&[("root", b"params".to_vec())], std::slice::from_ref(&pk))
        .unwrap();
    assert!(matches!(
        store.initialize(&[("x", vec![])], &[]),
        Err(StoreError::AlreadyInitialized)
    ));
    assert_eq!(store.meta("root").unwrap().unwrap(), b"params");
    assert_eq!(store.meta("x").unwrap(), None);
    assert_eq!(store.purpose_keys("nuisance").unwrap(), vec![pk.clone()]);
    assert!(store.purpose_keys("contract").unwrap().is_empty());

    // Compare-and-set of metadata: a change over a value another writer replaced is refused.
    store.replace_meta("cas", None, b"1").unwrap();
    assert!(matches!(
        store.replace_meta("cas", None, b"2"),
        Err(StoreError::Stale(_))
    ));
    store.replace_meta("cas", Some(b"1"), b"2").unwrap();
    assert!(matches!(
        store.replace_meta("cas", Some(b"1"), b"3"),
        Err(StoreError::Stale(_))
    ));
    assert_eq!(store.meta("cas").unwrap().unwrap(), b"2");
    // A store several processes share moves its change epoch with such a change.
    if let Some(before) = store.change_epoch().unwrap() {
        store.replace_meta("cas", Some(b"2"), b"3").unwrap();
        assert!(store.change_epoch().unwrap().unwrap() > before);
    }

    // Leases: stored as given, replaced only over the row as read (the core decides who may
    // take one, `Vault::take_lease`); the clock is the store's.
    let lease = |holder: &str, until: i64, mac: &[u8]| LeaseRow {
        name: "rekey:nuisance".into(),
        holder: holder.into(),
        until,
        mac: mac.to_vec(),
    };
    let (none, now) = store.lease("rekey:nuisance").unwrap();
    assert_eq!(none, None);
    assert!((now - crate::domain::now_unix()).abs() <= 5, "{now}");
    let a = lease("node-a", now + 30, b"mac-a");
    assert!(store.replace_lease(None, &a).unwrap());
    // Inserted once only: a second node that read no row too loses.
    assert!(
        !store
            .replace_lease(None, &lease("node-b", now + 30, b"mac-b"))
            .unwrap()
    );
    assert_eq!(store.lease("rekey:nuisance").unwrap().0.as_ref(), Some(&a));
    // Replaced over the row as read, holder, expiry and MAC alike.
    let renewed = lease("node-a", now + 60, b"mac-a2");
    assert!(store.replace_lease(Some(&a), &renewed).unwrap());
    for stale in [
        a.clone(),
        lease("node-a", now + 60, b"mac-a"),
        lease("node-x", now + 60, b"mac-a2"),
    ] {
        assert!(
            !store
                .replace_lease(Some(&stale), &lease("node-b", now + 30, b"mac-b"))
                .unwrap(),
            "replaced over {stale:?}"
        );
    }
    assert_eq!(
        store.lease("rekey:nuisance").unwrap().0,
        Some(renewed.clone())
    );
    // Given up by its holder only; another lease is apart.
    let sweep = LeaseRow {
        name: "retention-sweep".into(),
        ..lease("node-b", now + 30, b"mac-s")
    };
    assert!(store.replace_lease(None, &sweep).unwrap());
    store.release_lease("rekey:nuisance", "node-b").unwrap();
    assert_eq!(store.lease("rekey:nuisance").unwrap().0, Some(renewed));
    store.release_lease("rekey:nuisance", "node-a").unwrap();
    assert_eq!(store.lease("rekey:nuisance").unwrap().0, None);
    assert_eq!(store.lease("retention-sweep").unwrap().0, Some(sweep));

    // The first subject key wins; a second insert returns the stored one.
    let sk = SubjectKeyRow {
        subject: "rel-1".into(),
        purpose: Purpose::Nuisance,
        generation: 1,
        purpose_version: 1,
        wrapped: vec![9; 40],
        created_at: 11,
    };
    assert_eq!(
        store.insert_subject_key(&sk, &anchor(&sk.subject)).unwrap(),
        sk
    );
    let other = SubjectKeyRow {
        wrapped: vec![8; 40],
        ..sk.clone()
    };
    assert_eq!(
        store
            .insert_subject_key(&other, &anchor(&other.subject))
            .unwrap(),
        sk
    );
    assert_eq!(
        store.subject_key("rel-1", "nuisance").unwrap(),
        Some(sk.clone())
    );
    assert_eq!(store.subject_key("rel-1", "contract").unwrap(), None);

    // Records with fields, in one transaction.
    let rec = RecordRow {
        mac: vec![0xAB; 32],
        id: "rec_1".into(),
        subject: "rel-1".into(),
        purpose: Purpose::Nuisance,
        labels: BTreeMap::from([("case".into(), "N-1".into())]),
        created_at: 100,
        updated_at: 100,
        closed_at: None,
        expires_at: Some(200),
        fields_mac: vec![0x01; 32],
    };
    let field = |name: &str, sealed: u8| FieldRow {
        mac: vec![0xCD; 32],
        version: "v1".into(),
        name: name.into(),
        category: Category::Contact,
        kind: FieldKind::Text,
        key_gen: 1,
        sealed: vec![sealed; 30],
        tags: Vec::new(),
    };
    store
        .insert_record(&rec, &[field("phone", 1), field("email", 2)])
        .unwrap();
    let (got, fields) = store.record("rec_1").unwrap().unwrap();
    assert_eq!(got, rec);
    assert_eq!(
        fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["email", "phone"]
    );

    // A failing multi-row insert leaves nothing behind.
    let rec2 = RecordRow {
        mac: vec![0xAB; 32],
        id: "rec_2".into(),
        ..rec.clone()
    };
    let dup = store.insert_record(&rec2, &[field("a", 1), field("a", 2)]);
    assert!(dup.is_err());
    assert!(store.record("rec_2").unwrap().is_none());
    // Read together: the records that exist, each as `record` gives it, in the order asked.
    assert_eq!(
        store.records(&["rec_2", "rec_1", "rec_none"]).unwrap(),
        vec![store.record("rec_1").unwrap().unwrap()]
    );
    assert!(store.records(&[]).unwrap().is_empty());
    assert!(matches!(
        store.insert_record(&rec, &[]),
        Err(StoreError::Exists(_))
    ));

    // A subject's first key goes in with its first record, in one transaction: when either
    // cannot be stored, neither is (nor the subject's anchor).
    let first_key = SubjectKeyRow {
        subject: "rel-first".into(),
        ..sk.clone()
    };
    let first = RecordRow {
        id: "rec_first".into(),
        subject: "rel-first".into(),
        ..rec.clone()
    };
    let has_anchor = |subject: &str| {
        store
            .anchors()
            .unwrap()
            .iter()
            .any(|a| a.subject == subject)
    };
    let id_taken = RecordRow {
        subject: "rel-first".into(),
        ..rec.clone()
    };
    assert!(matches!(
        store.insert_record_with_key(
            &first_key,
            &anchor("rel-first"),
            &id_taken,
            &[field("phone", 1)]
        ),
        Err(StoreError::Exists(_))
    ));
    let not_live = SubjectKeyRow {
        purpose_version: 2,
        ..first_key.clone()
    };
    assert!(matches!(
        store.insert_record_with_key(
            &not_live,
            &anchor("rel-first"),
            &first,
            &[field("phone", 1)]
        ),
        Err(StoreError::NotLive { version: 2, .. })
    ));
    assert_eq!(store.subject_key("rel-first", "nuisance").unwrap(), None);
    assert!(store.record("rec_first").unwrap().is_none());
    assert!(!has_anchor("rel-first"));
    store
        .insert_record_with_key(
            &first_key,
            &anchor("rel-first"),
            &first,
            &[field("phone", 1)],
        )
        .unwrap();
    assert_eq!(
        store.subject_key("rel-first", "nuisance").unwrap(),
        Some(first_key.clone())
    );
    assert_eq!(store.record("rec_first").unwrap().unwrap().0, first);
    assert!(has_anchor("rel-first"));
    // Another writer's first key for the same subject and purpose comes too late: `Exists`, and
    // its record is not stored; the key stored first stays.
    let late = RecordRow {
        id: "rec_late".into(),
        ..first.clone()
    };
    let late_key = SubjectKeyRow {
        wrapped: vec![7; 40],
        ..first_key.clone()
    };
    assert!(matches!(
        store.insert_record_with_key(&late_key, &anchor("rel-first"), &late, &[field("phone", 2)]),
        Err(StoreError::Exists(_))
    ));
    assert!(store.record("rec_late").unwrap().is_none());
    assert_eq!(
        store.subject_key("rel-first", "nuisance").unwrap(),
        Some(first_key.clone())
    );
    // A first key stored with a record whose field is sealed under another generation (one the
    // subject does not have): `StaleGeneration`, and neither is stored.
    let second_key = SubjectKeyRow {
        subject: "rel-second".into(),
        ..first_key.clone()
    };
    let second = RecordRow {
        id: "rec_second".into(),
        subject: "rel-second".into(),
        ..first.clone()
    };
    assert!(matches!(
        store.insert_record_with_key(
            &second_key,
            &anchor("rel-second"),
            &second,
            &[FieldRow {
                key_gen: 2,
                ..field("phone", 1)
            }]
        ),
        Err(StoreError::StaleGeneration { generation: 2, .. })
    ));
    assert!(store.record("rec_second").unwrap().is_none());
    assert_eq!(store.subject_key("rel-second", "nuisance").unwrap(), None);
    assert!(!has_anchor("rel-second"));
    assert_eq!(delete(store, "rec_first").unwrap(), Some(true));

    // Updates replace and add fields, over the field-set MAC as read only.
    let (one, two) = (vec![0x01; 32], vec![0x02; 32]);
    let stale = FieldsMac {
        prev: &two,
        next: &two,
    };
    assert!(matches!(
        store.update_fields("rec_1", &[field("phone", 7)], 150, stale),
        Err(StoreError::Stale(_))
    ));
    assert_eq!(store.record("rec_1").unwrap().unwrap().1, fields);
    read_as_stored(store, "rec_1");
    let change = FieldsMac {
        prev: &one,
        next: &two,
    };
    assert!(
        store
            .update_fields("rec_1", &[field("phone", 7), field("city", 3)], 150, change)
            .unwrap()
    );
    assert!(
        !store
            .update_fields("rec_nope", &[field("phone", 7)], 150, change)
            .unwrap()
    );
    let (got, fields) = store.record("rec_1").unwrap().unwrap();
    assert_eq!(got.updated_at, 150);
    assert_eq!(got.fields_mac, two);
    assert_eq!(fields.len(), 3);
    let phone = fields.iter().find(|f| f.name == "phone").unwrap();
    assert_eq!(phone.sealed, vec![7; 30]);
    read_as_stored(store, "rec_1");

    let listed = store.subject_records("rel-1").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1.len(), 3);
    assert_eq!(listed[0].1[0].size, 30);
    assert!(store.subject_records("rel-2").unwrap().is_empty());
    // By id: those that exist, in the order asked, as the subject's listing gives them.
    assert_eq!(
        store.record_metas(&["rec_nope", "rec_1", "rec_1"]).unwrap(),
        [listed[0].clone(), listed[0].clone()]
    );
    assert!(store.record_metas(&[]).unwrap().is_empty());

    // The subject's last record of the purpose: its subject key goes in the same transaction.
    assert_eq!(delete(store, "rec_1").unwrap(), Some(true));
    read_as_stored(store, "rec_1");
    assert_eq!(delete(store, "rec_1").unwrap(), None);
    assert!(store.record("rec_1").unwrap().is_none());
    assert_eq!(store.subject_key("rel-1", "nuisance").unwrap(), None);
    store.insert_subject_key(&sk, &anchor(&sk.subject)).unwrap();

    // A field sealed under a subject key generation that does not exist is refused.
    let rec3 = RecordRow {
        mac: vec![0xAB; 32],
        id: "rec_3".into(),
        ..rec.clone()
    };
    let stale = FieldRow {
        mac: vec![0xCD; 32],
        version: "v1".into(),
        key_gen: 7,
        ..field("x", 1)
    };
    assert!(matches!(
        store.insert_record(&rec3, &[stale]),
        Err(StoreError::StaleGeneration { generation: 7, .. })
    ));
    assert!(store.record("rec_3").unwrap().is_none());

    discarded_uploads(store, &sk);
    search_tags(store, &sk, &rec);
    key_rotation(store, &pk);
    lifecycle(store);
    disclosures(store);

    // Tokens: looked up by hash, revoked once.
    let tok = TokenRow {
        mac: vec![0xAB; 32],
        id: "tok_1".into(),
        hash: vec![5; 32],
        principal: "emp-7".into(),
        roles: vec!["nuisance-officer".into(), "legal-counsel".into()],
        scope_subject: None,
        created_at: 1,
        expires_at: 2,
        revoked_at: None,
        requested_by: Some("so-1".into()),
        needs_approval: true,
        approved_by: None,
        approved_at: None,
    };
    store.insert_token(&tok).unwrap();
    assert!(matches!(
        store.insert_token(&tok),
        Err(StoreError::Exists(_))
    ));
    assert_eq!(store.token_by_hash(&[5; 32]).unwrap(), Some(tok.clone()));
    assert_eq!(store.token_by_hash(&[6; 32]).unwrap(), None);
    assert!(store.token_by_hash(&[5; 32]).unwrap().unwrap().is_pending());
    // Approved once; then no longer waiting.
    assert!(store.approve_token("tok_1", "po-1", 2, &[1; 32]).unwrap());
    assert!(!store.approve_token("tok_1", "po-2", 3, &[1; 32]).unwrap());
    assert!(
        !store
            .approve_token("tok_nope", "po-1", 3, &[1; 32])
            .unwrap()
    );
    let approved = store.token_by_hash(&[5; 32]).unwrap().unwrap();
    assert!(!approved.is_pending());
    assert_eq!(approved.approved_by.as_deref(), Some("po-1"));
    // A revocation over a row that changed since it was read (another MAC) changes nothing.
    assert!(!store.revoke_token("tok_1", 3, &[2; 32], &[9; 32]).unwrap());
    let unchanged = store.token_by_hash(&[5; 32]).unwrap().unwrap();
    assert_eq!((unchanged.revoked_at, unchanged.mac), (None, vec![1; 32]));
    assert!(store.revoke_token("tok_1", 3, &[2; 32], &[1; 32]).unwrap());
    assert!(!store.revoke_token("tok_1", 4, &[2; 32], &[2; 32]).unwrap());
    // Changes carry the new MAC the core computed.
    assert_eq!(store.tokens().unwrap()[0].mac, vec![2; 32]);
    assert_eq!(store.tokens().unwrap()[0].revoked_at, Some(3));

    // Audit: append-only by sequence number.
    assert_eq!(store.audit_tail().unwrap(), None);
    let entry = |seq| AuditRow {
        seq,
        // Odd entries are about one subject, 2 about another, 4 about none.
        entry: match seq {
            4 => format!("{{\"seq\":{seq}}}"),
            2 => format!("{{\"seq\":{seq},\"subject\":\"REL-B\"}}"),
            _ => format!("{{\"seq\":{seq},\"subject\":\"REL-A\"}}"),
        }
        .into_bytes(),
        prev_hash: vec![0; 32],
        hash: vec![u8::try_from(seq).unwrap(); 32],
        mac: vec![1; 32],
    };
    store.append_audit(&[entry(1)]).unwrap();
    store
        .append_audit(&[entry(2), entry(3), entry(4), entry(5)])
        .unwrap();
    assert!(matches!(
        store.append_audit(&[entry(3)]),
        Err(StoreError::Exists(_))
    ));
    // A batch with one taken sequence number writes nothing.
    assert!(matches!(
        store.append_audit(&[entry(6), entry(5)]),
        Err(StoreError::Exists(_))
    ));
    assert_eq!(store.audit_tail().unwrap(), Some(entry(5)));
    let page = store.audit_entries(2, 2).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    // By subject: the entries that name it, in order, from `from`, at most `limit`.
    let seqs = |subject: &str, from: u64, limit: usize| {
        store
            .subject_audit_entries(subject, from, limit)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs("REL-A", 1, 10), [1, 3, 5]);
    assert_eq!(seqs("REL-A", 2, 1), [3]);
    assert_eq!(seqs("REL-B", 1, 10), [2]);
    assert!(seqs("REL-C", 1, 10).is_empty());
    assert_eq!(
        store.subject_audit_entries("REL-A", 5, 10).unwrap(),
        vec![entry(5)]
    );
    assert!(store.audit_entries(6, 10).unwrap().is_empty());

    // Writes carried by an append: made in its transaction where the store can, each undone
    // alone when it fails, the entries committed with the others; none made when the entries
    // are not.
    let carried = RecordRow {
        id: "rec_carried".into(),
        ..rec.clone()
    };
    let live = store
        .purpose_keys("nuisance")
        .unwrap()
        .into_iter()
        .find(|k| k.state == KeyState::Active)
        .unwrap();
    let carried_key = SubjectKeyRow {
        subject: "rel-carried".into(),
        purpose_version: live.version,
        ..sk.clone()
    };
    let carried_first = RecordRow {
        id: "rec_carried_first".into(),
        subject: "rel-carried".into(),
        ..rec.clone()
    };
    let writes = [
        RecordWrite::Insert {
            record: carried.clone(),
            fields: vec![field("phone", 3)],
        },
        // The id is taken by the write before: `Exists`, and only this write is undone.
        RecordWrite::Insert {
            record: carried.clone(),
            fields: vec![field("email", 4)],
        },
        RecordWrite::InsertWithKey {
            key: carried_key.clone(),
            anchor: anchor("rel-carried"),
            record: carried_first.clone(),
            fields: vec![field("phone", 5)],
        },
        // A record whose field is sealed under a generation that does not exist fails:
        // `StaleGeneration`, and nothing of it is stored (SQLite inserts the record row first
        // and undoes it; PostgreSQL checks the generation before it inserts anything).
        RecordWrite::Insert {
            record: RecordRow {
                id: "rec_carried_stale".into(),
                ..rec.clone()
            },
            fields: vec![FieldRow {
                key_gen: 7,
                ..field("phone", 6)
            }],
        },
    ];
    let mut refuse =
        |_: Option<&AuditRow>, _: &mut HashAt<'_>| -> Result<Vec<AuditRow>, StoreError> {
            Err(StoreError::Corrupt("the tail".into()))
        };
    assert!(store.append_chained_writing(&mut refuse, &writes).is_err());
    assert_eq!(store.audit_tail().unwrap(), Some(entry(5)));
    assert!(store.record("rec_carried").unwrap().is_none());
    assert_eq!(store.subject_key("rel-carried", "nuisance").unwrap(), None);
    let mut chain =
        |tail: Option<&AuditRow>, _: &mut HashAt<'_>| -> Result<Vec<AuditRow>, StoreError> {
            assert_eq!(tail, Some(&entry(5)));
            Ok(vec![entry(6)])
        };
    let (rows, outcomes) = store.append_chained_writing(&mut chain, &writes).unwrap();
    assert_eq!(rows, vec![entry(6)]);
    assert_eq!(store.audit_tail().unwrap(), Some(entry(6)));
    match outcomes {
        Some(outcomes) => {
            assert!(
                matches!(
                    outcomes.as_slice(),
                    [
                        Ok(()),
                        Err(StoreError::Exists(_)),
                        Ok(()),
                        Err(StoreError::StaleGeneration { .. })
                    ]
                ),
                "{outcomes:?}"
            );
            let (got, fields) = store.record("rec_carried").unwrap().unwrap();
            assert_eq!(got, carried);
            assert_eq!(
                fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
                ["phone"]
            );
            assert_eq!(
                store.record("rec_carried_first").unwrap().unwrap().0,
                carried_first
            );
            assert_eq!(
                store.subject_key("rel-carried", "nuisance").unwrap(),
                Some(carried_key)
            );
            assert!(store.record("rec_carried_stale").unwrap().is_none());
        }
        // A store that does not make writes with entries has made none of them.
        None => {
            assert!(store.record("rec_carried").unwrap().is_none());
            assert!(store.record("rec_carried_first").unwrap().is_none());
            assert_eq!(store.subject_key("rel-carried", "nuisance").unwrap(), None);
        }
    }
}

/// A discarded upload takes the record it created, when that holds nothing else, and with the
/// subject's last record of its purpose their subject key, in the same transaction.
#[expect(clippy::unwrap_used, reason = "a test suite: failures must panic")]
fn discarded_uploads(store: &dyn Store, sk: &SubjectKeyRow) {
    let record = record_row;
    let upload = |id: &str, record_id: &str, owns_record: bool| super::EvidenceRow {
        id: id.into(),
        record_id: record_id.into(),
        name: "photo".into(),
        category: Category::NuisanceEvidence,
        media_type: "image/jpeg".into(),
        file_name: vec![7; 24],
        size: 0,
        sha256: String::new(),
        salt: vec![5; 16],
        complete: false,
        owns_record,
        created_at: 100,
        mac: vec![0xEE; 32],
    };
    let key_of = |subject: &str| SubjectKeyRow {
        subject: subject.into(),
        ..sk.clone()
    };
    // A subject's only record, made by the upload: record and key go.
    let alone = key_of("rel-up-1");
    store
        .insert_subject_key(&alone, &anchor(&alone.subject))
        .unwrap();
    store
        .begin_evidence(
            Some(&record("rec_up_1", "rel-up-1")),
            &upload("ev_up_1", "rec_up_1", true),
        )
        .unwrap();
    assert!(store.discard_evidence("ev_up_1").unwrap());
    assert!(store.record("rec_up_1").unwrap().is_none());
    assert_eq!(store.subject_key("rel-up-1", "nuisance").unwrap(), None);
    assert!(!store.discard_evidence("ev_up_1").unwrap());
    // The twins: a subject with another record of the purpose keeps the key; a record with
    // another upload under way stays, and so does the key.
    let kept = key_of("rel-up-2");
    store
        .insert_subject_key(&kept, &anchor(&kept.subject))
        .unwrap();
    store
        .insert_record(&record("rec_up_2a", "rel-up-2"), &[])
        .unwrap();
    store
        .begin_evidence(
            Some(&record("rec_up_2b", "rel-up-2")),
            &upload("ev_up_2", "rec_up_2b", true),
        )
        .unwrap();
    assert!(store.discard_evidence("ev_up_2").unwrap());
    assert!(store.record("rec_up_2b").unwrap().is_none());
    assert_eq!(
        store.subject_key("rel-up-2", "nuisance").unwrap(),
        Some(kept)
    );
    let busy = key_of("rel-up-3");
    store
        .insert_subject_key(&busy, &anchor(&busy.subject))
        .unwrap();
    store
        .begin_evidence(
            Some(&record("rec_up_3", "rel-up-3")),
            &upload("ev_up_3a", "rec_up_3", true),
        )
        .unwrap();
    store
        .begin_evidence(
            None,
            &super::EvidenceRow {
                name: "letter".into(),
                ..upload("ev_up_3b", "rec_up_3", false)
            },
        )
        .unwrap();
    assert!(store.discard_evidence("ev_up_3a").unwrap());
    assert!(store.record("rec_up_3").unwrap().is_some());
    assert_eq!(
        store.subject_key("rel-up-3", "nuisance").unwrap(),
        Some(busy)
    );
    // What is left goes as any record goes, keys and all.
    assert!(store.discard_evidence("ev_up_3b").unwrap());
    assert_eq!(delete(store, "rec_up_3").unwrap(), Some(true));
    assert_eq!(delete(store, "rec_up_2a").unwrap(), Some(true));
    assert_eq!(store.subject_key("rel-up-2", "nuisance").unwrap(), None);
}

/// The disclosure register: stored only for a record of its subject, listed by subject and
/// time, and gone with the subject's last record, whichever path deletes it.
#[expect(clippy::unwrap_used, reason = "a test suite: failures must panic")]
fn disclosures(store: &dyn Store) {
    for subject in ["dsc-1", "dsc-2"] {
        let key = SubjectKeyRow {
            subject: subject.into(),
            purpose: Purpose::Nuisance,
            generation: 1,
            purpose_version: 2,
            wrapped: vec![3; 40],
            created_at: 1,
        };
        store.insert_subject_key(&key, &anchor(subject)).unwrap();
    }
    let rec = |id: &str, subject: &str| RecordRow {
        mac: vec![0xAB; 32],
        fields_mac: vec![0x01; 32],
        id: id.into(),
        subject: subject.into(),
        purpose: Purpose::Nuisance,
        labels: BTreeMap::new(),
        created_at: 1,
        updated_at: 1,
        closed_at: None,
        expires_at: Some(100),
    };
    let field = FieldRow {
        mac: vec![0xCD; 32],
        version: "v1".into(),
        name: "phone".into(),
        category: Category::Contact,
        kind: FieldKind::Text,
        key_gen: 1,
        sealed: vec![1; 20],
        tags: Vec::new(),
    };
    for (id, subject) in [
        ("rec_d1", "dsc-1"),
        ("rec_d2", "dsc-1"),
        ("rec_d3", "dsc-2"),
    ] {
        store
            .insert_record(&rec(id, subject), std::slice::from_ref(&field))
            .unwrap();
    }
    let row = |id: &str, subject: &str, record: &str, at: i64| DisclosureRow {
        id: id.into(),
        subject: subject.into(),
        record_id: record.into(),
        purpose: Purpose::Nuisance,
        fields: vec!["phone".into(), "name".into()],
        categories: vec!["contact".into(), "identity".into()],
        recipient: "Politie Midden-Nederland".into(),
        recipient_kind: RecipientKind::Police,
        legal_basis: "art. 8 Politiewet, vordering".into(),
        case_ref: if at > 20 {
            String::new()
        } else {
            "PL-2026-7".into()
        },
        disclosed_at: at,
        recorded_by: "emp-7".into(),
        automatic: at > 20,
        mac: vec![0x5A; 32],
    };
    let d1 = row("dsc_1", "dsc-1", "rec_d1", 10);
    let d2 = row("dsc_2", "dsc-1", "rec_d2", 30);
    let d3 = row("dsc_3", "dsc-2", "rec_d3", 20);
    for d in [&d1, &d2, &d3] {
        store.insert_disclosure(d).unwrap();
    }
    // Only for a record of the subject it names: another's record, or none, stores nothing.
    assert!(matches!(
        store.insert_disclosure(&row("dsc_x", "dsc-2", "rec_d1", 40)),
        Err(StoreError::Missing(_))
    ));
    assert!(matches!(
        store.insert_disclosure(&row("dsc_y", "dsc-1", "rec_none", 40)),
        Err(StoreError::Missing(_))
    ));
    assert!(store.insert_disclosure(&d1).is_err(), "ids are unique");
    assert_eq!(
        store.disclosures(None, None, 100).unwrap(),
        [d1.clone(), d3.clone(), d2.clone()]
    );
    assert_eq!(
        store.disclosures(Some("dsc-1"), None, 100).unwrap(),
        [d1.clone(), d2.clone()]
    );
    assert_eq!(
        store.disclosures(None, Some(20), 100).unwrap(),
        [d3.clone(), d2.clone()]
    );
    assert_eq!(
        store.disclosures(None, None, 1).unwrap(),
        std::slice::from_ref(&d1)
    );
    assert!(
        store
            .disclosures(Some("dsc-9"), None, 10)
            .unwrap()
            .is_empty()
    );
    // A record goes, the subject keeps others: the disclosures stay. The last goes: they go too,
    // by deletion or by the retention sweep; another subject's stay.
    delete(store, "rec_d1").unwrap();
    assert_eq!(
        store.disclosures(Some("dsc-1"), None, 100).unwrap(),
        [d1, d2]
    );
    delete(store, "rec_d2").unwrap();
    assert!(
        store
            .disclosures(Some("dsc-1"), None, 100)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.disclosures(None, None, 100).unwrap(),
        std::slice::from_ref(&d3)
    );
    let (destroyed, _) = shred(store, "dsc-2", &["rec_d3".to_owned()]).unwrap();
    assert_eq!(destroyed, ["rec_d3"]);
    assert!(store.disclosures(None, None, 100).unwrap().is_empty());
}

/// `row` written over `prev` (its MAC as read).
/// Blind-index tags: written with their value, replaced with it, found by tag, backfilled only
/// over the value they were made from, dropped by version, and gone with their record.
#[expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a test suite: failures must panic"
)]
fn search_tags(store: &dyn Store, sk: &SubjectKeyRow, rec: &RecordRow) {
    let sk = SubjectKeyRow {
        subject: "rel-s".into(),
        ..sk.clone()
    };
    store.insert_subject_key(&sk, &anchor("rel-s")).unwrap();
    let tag = |version: u32, tag: i64| TagRow {
        version,
        bits: 16,
        tag,
    };
    let field = |name: &str, version: &str, tags: Vec<TagRow>| FieldRow {
        mac: vec![0xCD; 32],
        version: version.into(),
        name: name.into(),
        category: Category::Contact,
        kind: FieldKind::Text,
        key_gen: sk.generation,
        sealed: vec![1; 30],
        tags,
    };
    let record = |id: &str| RecordRow {
        id: id.into(),
        subject: "rel-s".into(),
        ..rec.clone()
    };
    let purpose = rec.purpose.as_str();
    store
        .insert_record(
            &record("rec_s1"),
            &[
                field("email", "a", vec![tag(1, 7)]),
                field("phone", "a", vec![tag(1, 9)]),
            ],
        )
        .unwrap();
    store
        .insert_record(&record("rec_s2"), &[field("email", "a", vec![tag(1, 7)])])
        .unwrap();
    store
        .insert_record(&record("rec_s3"), &[field("email", "a", Vec::new())])
        .unwrap();
    // A subject's records a page at a time: as `subject_records` lists them, in its order (the
    // id breaks a tie of creation times), each page after the last (creation time, id) given.
    let all = store.subject_records("rel-s").unwrap();
    let ids = |page: &[(RecordRow, Vec<FieldMeta>)]| {
        page.iter().map(|(r, _)| r.id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&all), ["rec_s1", "rec_s2", "rec_s3"]);
    let first = store.subject_records_page("rel-s", None, 2).unwrap();
    assert_eq!(first, all[..2]);
    let last = &first[1].0;
    let rest = store
        .subject_records_page("rel-s", Some((last.created_at, &last.id)), 2)
        .unwrap();
    assert_eq!(rest, all[2..]);
    let after_all = Some((last.created_at + 1, ""));
    assert!(
        store
            .subject_records_page("rel-s", after_all, 2)
            .unwrap()
            .is_empty()
    );
    let before_all = Some((last.created_at - 1, "zzz"));
    assert_eq!(
        store.subject_records_page("rel-s", before_all, 9).unwrap(),
        all
    );
    assert!(
        store
            .subject_records_page("rel-none", None, 9)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .subject_records_page("rel-s", None, 0)
            .unwrap()
            .is_empty()
    );
    // Several read together: each as `record` gives it (all its fields), in the order asked,
    // as often as asked, the missing left out.
    let one = |id: &str| store.record(id).unwrap().unwrap();
    assert_eq!(
        store
            .records(&["rec_s3", "rec_none", "rec_s1", "rec_s2", "rec_s1"])
            .unwrap(),
        vec![one("rec_s3"), one("rec_s1"), one("rec_s2"), one("rec_s1")]
    );
    assert_eq!(one("rec_s1").1.len(), 2);
    // With one field's value: as often as asked, the missing left out; each record as `record`
    // gives it, its field rows' metadata as `record_metas` lists them, and the whole row of the
    // field asked for, none of another.
    let metas = |id: &str| {
        let mut listed = store.record_metas(&[id]).unwrap();
        assert_eq!(listed.len(), 1);
        listed
            .remove(0)
            .1
            .into_iter()
            .filter(|m| m.evidence.is_none())
            .collect::<Vec<_>>()
    };
    let with_email = store
        .records_with_field(&["rec_s3", "rec_none", "rec_s1", "rec_s1"], "email")
        .unwrap();
    assert_eq!(with_email.len(), 3);
    for ((record, listed, value), id) in with_email.iter().zip(["rec_s3", "rec_s1", "rec_s1"]) {
        let (whole, fields) = one(id);
        assert_eq!(record, &whole);
        assert_eq!(listed, &metas(id));
        assert_eq!(value.as_ref(), fields.iter().find(|f| f.name == "email"));
        assert!(value.is_some());
    }
    assert_eq!(metas("rec_s1").len(), 2);
    let without = store.records_with_field(&["rec_s1"], "fax").unwrap();
    assert_eq!(without.len(), 1);
    assert_eq!(without[0].1, metas("rec_s1"));
    assert!(without[0].2.is_none());
    assert!(store.records_with_field(&[], "email").unwrap().is_empty());
    // Read back without tags; found by tag, per field and purpose.
    assert!(
        store.record("rec_s1").unwrap().unwrap().1[0]
            .tags
            .is_empty()
    );
    assert_eq!(
        store
            .find_tagged(purpose, "email", &[tag(1, 7)], 10)
            .unwrap(),
        ["rec_s1", "rec_s2"]
    );
    assert_eq!(
        store
            .find_tagged(purpose, "email", &[tag(1, 7)], 1)
            .unwrap(),
        ["rec_s1"]
    );
    assert!(
        store
            .find_tagged(purpose, "phone", &[tag(1, 7)], 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .find_tagged("contract", "email", &[tag(1, 7)], 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .find_tagged(
                purpose,
                "email",
                &[TagRow {
                    bits: 17,
                    ..tag(1, 7)
                }],
                10
            )
            .unwrap()
            .is_empty()
    );
    // A replaced value's tags go with it.
    store
        .update_fields(
            "rec_s2",
            &[field("email", "b", vec![tag(1, 8)])],
            101,
            FieldsMac {
                prev: &rec.fields_mac,
                next: &rec.fields_mac,
            },
        )
        .unwrap();
    assert_eq!(
        store
            .find_tagged(purpose, "email", &[tag(1, 7)], 10)
            .unwrap(),
        ["rec_s1"]
    );
    assert_eq!(
        store
            .find_tagged(purpose, "email", &[tag(1, 8), tag(1, 7)], 10)
            .unwrap(),
        ["rec_s1", "rec_s2"]
    );
    // A search's decoys: from a tag on, in tag order, wrapping round to the smallest; of the
    // field, purpose, version and width asked only.
    let from = |t: i64, limit| {
        store
            .tagged_from(purpose, "email", &tag(1, t), limit)
            .unwrap()
    };
    assert_eq!(from(8, 10), ["rec_s2", "rec_s1"]);
    assert_eq!(from(0, 10), ["rec_s1", "rec_s2"]);
    assert_eq!(from(9, 10), ["rec_s1", "rec_s2"]);
    assert_eq!(from(8, 1), ["rec_s2"]);
    assert_eq!(from(7, 1), ["rec_s1"]);
    assert!(
        store
            .tagged_from("contract", "email", &tag(1, 0), 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .tagged_from(purpose, "email", &tag(2, 0), 10)
            .unwrap()
            .is_empty()
    );
    // The backfill: what lacks a tag under (version, bits), and tags written only over the
    // value they were made from.
    let untagged = |version| {
        store
            .untagged_fields(purpose, "email", version, 16, "", 10)
            .unwrap()
            .into_iter()
            .map(|(r, f)| (r.id, f.version))
            .collect::<Vec<_>>()
    };
    assert_eq!(untagged(1), [("rec_s3".to_owned(), "a".to_owned())]);
    assert_eq!(untagged(2).len(), 3);
    assert_eq!(
        store
            .untagged_fields(purpose, "email", 2, 16, "rec_s1", 10)
            .unwrap()
            .len(),
        2
    );
    assert!(
        !store
            .write_tags("rec_s2", "email", "a", &[tag(2, 5)])
            .unwrap()
    );
    assert!(
        !store
            .write_tags("rec_gone", "email", "a", &[tag(2, 5)])
            .unwrap()
    );
    for (id, version) in [("rec_s1", "a"), ("rec_s2", "b"), ("rec_s3", "a")] {
        assert!(
            store
                .write_tags(id, "email", version, &[tag(2, 5)])
                .unwrap()
        );
    }
    assert!(untagged(2).is_empty());
    assert_eq!(store.tag_count(2).unwrap(), 3);
    assert_eq!(store.tag_count(1).unwrap(), 3);
    // Counted per purpose, field and width, for the width planner of the key report.
    assert_eq!(
        store.tag_counts(2).unwrap(),
        [crate::store::TagCount {
            purpose: purpose.into(),
            field: "email".into(),
            bits: 16,
            tags: 3,
        }]
    );
    assert_eq!(
        store
            .tag_counts(1)
            .unwrap()
            .iter()
            .map(|c| c.tags)
            .sum::<u64>(),
        3
    );
    assert!(store.tag_counts(9).unwrap().is_empty());
    assert_eq!(store.drop_tags(1).unwrap(), 3);
    assert_eq!(store.tag_count(1).unwrap(), 0);
    assert!(
        store
            .find_tagged(purpose, "phone", &[tag(1, 9)], 10)
            .unwrap()
            .is_empty()
    );
    // Deleting a record, or shredding its subject's records, takes its tags.
    assert_eq!(delete(store, "rec_s1").unwrap(), Some(false));
    assert_eq!(store.tag_count(2).unwrap(), 2);
    let (destroyed, _) =
        shred(store, "rel-s", &["rec_s2".to_owned(), "rec_s3".to_owned()]).unwrap();
    assert_eq!(destroyed.len(), 2);
    assert_eq!(store.tag_count(2).unwrap(), 0);
    assert!(
        store
            .find_tagged(purpose, "email", &[tag(2, 5)], 10)
            .unwrap()
            .is_empty()
    );
}

fn over(row: &PurposeKeyRow, prev: &PurposeKeyRow) -> KeyRowChange {
    KeyRowChange {
        row: row.clone(),
        prev_mac: prev.mac.clone(),
    }
}

#[expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a test suite: failures must panic"
)]
fn key_rotation(store: &dyn Store, v1: &PurposeKeyRow) {
    // Rotation: v2 active, v1 decrypt-only with the MAC the core gave it, in one step.
    let v2 = PurposeKeyRow {
        version: 2,
        wrapped: vec![4, 5, 6],
        created_at: 20,
        mac: vec![0x22; 32],
        ..v1.clone()
    };
    let retired = PurposeKeyRow {
        state: KeyState::DecryptOnly,
        retired_at: Some(20),
        mac: vec![0x12; 32],
        ..v1.clone()
    };
    // Subject keys under v1 (made while it is active) are counted, listed and rewrapped
    // conditionally.
    for i in 0..3 {
        let row = SubjectKeyRow {
            subject: format!("rot-{i}"),
            purpose: Purpose::Nuisance,
            generation: 1,
            purpose_version: 1,
            wrapped: vec![i; 40],
            created_at: 30,
        };
        store
            .insert_subject_key(&row, &anchor(&row.subject))
            .unwrap();
    }
    // Without naming the active version it retires, a rotation is refused.
    assert!(matches!(
        store.rotate_purpose_key(None, &v2),
        Err(StoreError::Stale(_))
    ));
    // A retirement made from a row other than the stored one is refused.
    let forged_prev = KeyRowChange {
        row: retired.clone(),
        prev_mac: vec![0x99; 32],
    };
    assert!(matches!(
        store.rotate_purpose_key(Some(&forged_prev), &v2),
        Err(StoreError::Stale(_))
    ));
    store
        .rotate_purpose_key(Some(&over(&retired, v1)), &v2)
        .unwrap();
    // A node that has not seen the rotation yet wraps a new subject key under v1: refused, so
    // that every new key is under the active version.
    let late = SubjectKeyRow {
        subject: "rot-late".into(),
        purpose: Purpose::Nuisance,
        generation: 1,
        purpose_version: 1,
        wrapped: vec![7; 40],
        created_at: 31,
    };
    assert!(matches!(
        store.insert_subject_key(&late, &anchor(&late.subject)),
        Err(StoreError::NotLive { version: 1, .. })
    ));
    assert_eq!(store.subject_key("rot-late", "nuisance").unwrap(), None);
    // A second rotation from the same (no longer active) version is refused.
    let v3 = PurposeKeyRow {
        version: 3,
        ..v2.clone()
    };
    assert!(matches!(
        store.rotate_purpose_key(Some(&over(&retired, v1)), &v3),
        Err(StoreError::Stale(_))
    ));
    assert!(matches!(
        store.rotate_purpose_key(Some(&over(&retired, &retired)), &v3),
        Err(StoreError::Stale(_))
    ));
    let versions = store.purpose_keys("nuisance").unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0], PurposeKeyRow { ..retired.clone() });
    assert_eq!(versions[1], v2);

    let counts = store.subject_key_counts("nuisance").unwrap();
    assert_eq!(counts, vec![(1, 4)]);
    let destroyed = PurposeKeyRow {
        state: KeyState::Destroyed,
        wrapped: Vec::new(),
        destroyed_at: Some(60),
        destroy_after: None,
        mac: vec![0x14; 32],
        ..retired.clone()
    };
    let barred = PurposeKeyRow {
        barred: true,
        mac: vec![0x15; 32],
        ..destroyed.clone()
    };
    assert!(matches!(
        store.destroy_purpose_key(&over(&destroyed, &retired)),
        Err(StoreError::InUse(4))
    ));
    assert!(matches!(
        store.set_min_decrypt_version("nuisance", 2, &[over(&barred, &retired)]),
        Err(StoreError::InUse(4))
    ));
    assert_eq!(store.purpose_keys("nuisance").unwrap()[0], retired);
    let below = store.subject_keys_below("nuisance", 2, 10).unwrap();
    assert_eq!(below.len(), 4);
    let rewrapped: Vec<SubjectKeyRow> = below
        .iter()
        .map(|r| SubjectKeyRow {
            purpose_version: 2,
            wrapped: vec![9; 40],
            ..r.clone()
        })
        .collect();
    let from: Vec<u32> = below.iter().map(|r| r.purpose_version).collect();
    assert_eq!(store.rewrap_subject_keys(&rewrapped, &from).unwrap(), 4);
    // A second rewrap of the same rows changes nothing.
    assert_eq!(store.rewrap_subject_keys(&rewrapped, &from).unwrap(), 0);
    assert_eq!(store.subject_key_counts("nuisance").unwrap(), vec![(2, 4)]);

    // Destruction and the minimum version, once nothing depends on v1.
    let scheduled = PurposeKeyRow {
        state: KeyState::Scheduled,
        destroy_after: Some(50),
        mac: vec![0x13; 32],
        ..retired.clone()
    };
    assert!(
        store
            .update_purpose_key(&over(&scheduled, &retired))
            .unwrap()
    );
    // A change made from the row as it was before (two changes of one version at once, on two
    // nodes) does nothing, and so does a destruction or a bar made from that row.
    let again = PurposeKeyRow {
        destroy_after: Some(99),
        ..scheduled.clone()
    };
    assert!(!store.update_purpose_key(&over(&again, &retired)).unwrap());
    assert!(matches!(
        store.destroy_purpose_key(&over(&destroyed, &retired)),
        Err(StoreError::Stale(_))
    ));
    assert!(matches!(
        store.set_min_decrypt_version(
            "nuisance",
            2,
            &[over(
                &PurposeKeyRow {
                    barred: true,
                    ..retired.clone()
                },
                &retired
            )]
        ),
        Err(StoreError::Stale(_))
    ));
    assert_eq!(store.purpose_keys("nuisance").unwrap()[0], scheduled);
    store
        .destroy_purpose_key(&over(&destroyed, &scheduled))
        .unwrap();
    let v1_now = &store.purpose_keys("nuisance").unwrap()[0];
    assert_eq!(v1_now, &destroyed);
    assert!(v1_now.wrapped.is_empty());
    // A bar must name a version below the minimum.
    let not_below = PurposeKeyRow {
        barred: true,
        ..v2.clone()
    };
    assert!(
        store
            .set_min_decrypt_version("nuisance", 2, &[over(&not_below, &v2)])
            .is_err()
    );
    store
        .set_min_decrypt_version("nuisance", 2, &[over(&barred, &destroyed)])
        .unwrap();
    let versions = store.purpose_keys("nuisance").unwrap();
    assert_eq!(versions[0], barred);
    assert!(!versions[1].barred);

    // Rekey: a new generation, fields resealed, the old generation gone, in one step.
    let rec = RecordRow {
        mac: vec![0xAB; 32],
        fields_mac: Vec::new(),
        id: "rec_rk".into(),
        subject: "rot-0".into(),
        purpose: Purpose::Nuisance,
        labels: BTreeMap::new(),
        created_at: 1,
        updated_at: 1,
        closed_at: None,
        expires_at: None,
    };
    let f = FieldRow {
        mac: vec![0xCD; 32],
        version: "v1".into(),
        name: "a".into(),
        category: Category::Contact,
        kind: FieldKind::Text,
        key_gen: 1,
        sealed: vec![1; 20],
        tags: Vec::new(),
    };
    store.insert_record(&rec, &[f]).unwrap();
    assert_eq!(
        store
            .subjects_keyed_before("nuisance", 100, 10)
            .unwrap()
            .len(),
        4
    );
    let gen2 = SubjectKeyRow {
        subject: "rot-0".into(),
        purpose: Purpose::Nuisance,
        generation: 2,
        purpose_version: 2,
        wrapped: vec![2; 40],
        created_at: 100,
    };
    // A rekey begins: the new generation is the subject's current key, the older one stays
    // until nothing is sealed under it.
    assert!(store.begin_rekey(&gen2, 100).unwrap());
    assert!(!store.begin_rekey(&gen2, 100).unwrap());
    let current = store.subject_key("rot-0", "nuisance").unwrap().unwrap();
    assert_eq!(current.generation, 2);
    assert!(
        store
            .subject_key_at("rot-0", "nuisance", 1)
            .unwrap()
            .is_some()
    );
    assert!(matches!(
        store.finish_rekey("rot-0", "nuisance", 2, &[]),
        Err(StoreError::Stale(_))
    ));
    // Begun, not finished: still to do.
    assert_eq!(
        store
            .subjects_keyed_before("nuisance", 100, 10)
            .unwrap()
            .len(),
        4
    );
    let stale = store.stale_fields("rot-0", "nuisance", 2, 10).unwrap();
    assert_eq!(stale.len(), 1);
    let (record_id, field) = &stale[0];
    assert_eq!((record_id.as_str(), field.key_gen), ("rec_rk", 1));
    // Written back only over the ciphertext it was made from: another version (rectified
    // meanwhile) or generation writes nothing.
    let write = |version: &str, from: u32| {
        store
            .write_resealed(
                2,
                &[super::Resealed::Field {
                    record_id: record_id.clone(),
                    name: field.name.clone(),
                    version: version.into(),
                    from,
                    sealed: vec![2; 20],
                }],
            )
            .unwrap()
    };
    assert_eq!(write("v0", 1), 0);
    assert_eq!(write(&field.version, 2), 0);
    assert_eq!(write(&field.version, 1), 1);
    assert!(
        store
            .stale_fields("rot-0", "nuisance", 2, 10)
            .unwrap()
            .is_empty()
    );
    store.finish_rekey("rot-0", "nuisance", 2, &[]).unwrap();
    let (_, fields) = store.record("rec_rk").unwrap().unwrap();
    assert_eq!((fields[0].key_gen, fields[0].sealed[0]), (2, 2));
    assert!(
        store
            .subject_key_at("rot-0", "nuisance", 1)
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .subject_key("rot-0", "nuisance")
            .unwrap()
            .unwrap()
            .generation,
        2
    );
    assert_eq!(
        store
            .subjects_keyed_before("nuisance", 100, 10)
            .unwrap()
            .len(),
        3
    );
    assert_eq!(store.orphan_fields("nuisance").unwrap(), 0);
    assert!(delete(store, "rec_rk").unwrap().is_some());

    // Key jobs survive until finished: the first recorded is in force, MAC and all.
    let job = |started_at: i64, mac: &[u8]| KeyJobRow {
        purpose: "nuisance".into(),
        kind: "rekey".into(),
        started_at,
        mac: mac.to_vec(),
    };
    assert_eq!(
        store.start_key_job(&job(100, b"mac-1")).unwrap(),
        job(100, b"mac-1")
    );
    assert_eq!(
        store.start_key_job(&job(200, b"mac-2")).unwrap(),
        job(100, b"mac-1")
    );
    assert_eq!(store.key_jobs().unwrap(), vec![job(100, b"mac-1")]);
    store.finish_key_job("nuisance", "rekey").unwrap();
    assert!(store.key_jobs().unwrap().is_empty());
    assert_eq!(
        store.start_key_job(&job(200, b"mac-2")).unwrap(),
        job(200, b"mac-2")
    );
    store.finish_key_job("nuisance", "rekey").unwrap();
}

#[expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a test suite: failures must panic"
)]
fn lifecycle(store: &dyn Store) {
    // Two records of one subject under one purpose (v2 is the live version after key_rotation).
    let key = SubjectKeyRow {
        subject: "life-1".into(),
        purpose: Purpose::Nuisance,
        generation: 1,
        purpose_version: 2,
        wrapped: vec![3; 40],
        created_at: 1,
    };
    store
        .insert_subject_key(&key, &anchor(&key.subject))
        .unwrap();
    let rec = |id: &str, expires: Option<i64>| RecordRow {
        mac: vec![0xAB; 32],
        fields_mac: vec![0x01; 32],
        id: id.into(),
        subject: "life-1".into(),
        purpose: Purpose::Nuisance,
        labels: BTreeMap::new(),
        created_at: 1,
        updated_at: 1,
        closed_at: None,
        expires_at: expires,
    };
    let field = FieldRow {
        mac: vec![0xCD; 32],
        version: "v1".into(),
        name: "a".into(),
        category: Category::Contact,
        kind: FieldKind::Text,
        key_gen: 1,
        sealed: vec![1; 20],
        tags: Vec::new(),
    };
    store
        .insert_record(&rec("rec_l1", None), std::slice::from_ref(&field))
        .unwrap();
    store
        .insert_record(&rec("rec_l2", Some(50)), std::slice::from_ref(&field))
        .unwrap();

    // Closing sets the expiry; expired records are found unless held.
    read_as_stored(store, "rec_l1");
    assert!(
        store
            .close_record("rec_l1", 40, Some(60), &[3; 32])
            .unwrap()
    );
    assert!(!store.close_record("rec_nope", 40, None, &[3; 32]).unwrap());
    assert_eq!(store.record("rec_l1").unwrap().unwrap().0.mac, vec![3; 32]);
    read_as_stored(store, "rec_l1");
    // Closed once: a second close (a concurrent one) changes nothing.
    assert!(
        !store
            .close_record("rec_l1", 45, Some(90), &[8; 32])
            .unwrap()
    );
    let (closed, _) = store.record("rec_l1").unwrap().unwrap();
    assert_eq!((closed.closed_at, closed.expires_at), (Some(40), Some(60)));
    // Records page by id.
    let page = store.records_page("rec_l1", 10).unwrap();
    assert!(page.iter().all(|r| r.id.as_str() > "rec_l1"));
    assert!(page.iter().any(|r| r.id == "rec_l2"));
    let first = store.records_page("", 1).unwrap();
    assert_eq!(first.len(), 1);
    let expired = |now| {
        store
            .expired_records(now, None, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(expired(55), ["rec_l2"]);
    assert_eq!(expired(70), ["rec_l2", "rec_l1"]);
    // Paged by (expiry, id): the page after rec_l2 holds only rec_l1.
    let next: Vec<String> = store
        .expired_records(70, Some((50, "rec_l2")), 10)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(next, ["rec_l1"]);
    assert!(
        store
            .expired_records(70, Some((60, "rec_l1")), 10)
            .unwrap()
            .is_empty()
    );
    let hold = HoldRow {
        mac: vec![0xAB; 32],
        id: "hold_1".into(),
        subject: "life-1".into(),
        record_id: Some("rec_l1".into()),
        reason: "claim".into(),
        case_ref: "LD-1".into(),
        placed_by: "po".into(),
        placed_at: 60,
        released_at: None,
        released_by: None,
    };
    // A hold is stored with the anchor that counts it, only over the anchor as it was read.
    let before = store.subject_facts("life-1").unwrap();
    assert_eq!(before.anchor, Some(anchor("life-1")));
    assert_eq!((before.holds.len(), before.keyed), (0, true));
    let counted = AnchorRow {
        holds: 1,
        mac: vec![0x78; 32],
        ..anchor("life-1")
    };
    assert!(matches!(
        store.insert_hold(&hold, None, &counted),
        Err(StoreError::Stale(_))
    ));
    assert!(store.holds(Some("life-1"), false).unwrap().is_empty());
    read_as_stored(store, "rec_l1");
    store
        .insert_hold(&hold, before.anchor.as_ref(), &counted)
        .unwrap();
    read_as_stored(store, "rec_l1");
    let after = store.subject_facts("life-1").unwrap();
    assert_eq!(after.anchor.as_ref(), Some(&counted));
    assert_eq!(after.holds, vec![hold.clone()]);
    assert!(store.anchors().unwrap().contains(&counted));
    assert_eq!(expired(70), ["rec_l2"]);
    // A held record is neither deleted nor has a stored value replaced; adding a field is fine.
    assert!(matches!(
        delete(store, "rec_l1"),
        Err(StoreError::Held(h)) if h == "hold_1"
    ));
    let (_, held_fields) = store.record("rec_l1").unwrap().unwrap();
    let replaced = FieldRow {
        mac: vec![0xCD; 32],
        version: "v1".into(),
        sealed: vec![9; 12],
        ..held_fields[0].clone()
    };
    assert!(matches!(
        store.update_fields(
            "rec_l1",
            std::slice::from_ref(&replaced),
            61,
            FieldsMac {
                prev: &[0x01; 32],
                next: &[0x02; 32]
            }
        ),
        Err(StoreError::Held(h)) if h == "hold_1"
    ));
    assert_eq!(store.record("rec_l1").unwrap().unwrap().1, held_fields);
    let added = FieldRow {
        mac: vec![0xCD; 32],
        version: "v1".into(),
        name: "added".into(),
        ..held_fields[0].clone()
    };
    assert!(
        store
            .update_fields(
                "rec_l1",
                &[added],
                61,
                FieldsMac {
                    prev: &[0x01; 32],
                    next: &[0x02; 32]
                }
            )
            .unwrap()
    );
    assert_eq!(
        store.holds(Some("life-1"), true).unwrap(),
        vec![hold.clone()]
    );

    // Shredding refuses a held record, changing nothing; it destroys the key only with the
    // last record; and it names what it destroyed in the subject's facts.
    let ids = vec!["rec_l1".to_owned(), "rec_l2".to_owned()];
    assert!(matches!(
        shred(store, "life-1", &ids),
        Err(StoreError::Held(h)) if h == "hold_1"
    ));
    assert!(store.record("rec_l2").unwrap().is_some());
    assert!(store.subject_facts("life-1").unwrap().destroyed.is_empty());
    assert_eq!(
        store.subject_facts("life-1").unwrap().anchor.as_ref(),
        Some(&counted)
    );
    // Over an anchor that is no longer stored: refused, nothing changes.
    let stale = AnchorRow {
        mac: vec![0x55; 32],
        ..counted.clone()
    };
    assert!(matches!(
        store.shred_records(
            "life-1",
            &ids[1..],
            AnchorChange {
                prev: Some(&stale),
                next: &stale,
            }
        ),
        Err(StoreError::Stale(_))
    ));
    assert!(store.record("rec_l2").unwrap().is_some());
    let (destroyed, shredded) = shred(store, "life-1", &ids[1..]).unwrap();
    assert_eq!(destroyed, ["rec_l2"]);
    assert!(shredded.is_empty());
    assert!(store.subject_key("life-1", "nuisance").unwrap().is_some());
    assert_eq!(store.subject_facts("life-1").unwrap().destroyed, ["rec_l2"]);
    let counted = store.subject_facts("life-1").unwrap().anchor.unwrap();
    // A release changes the anchor with it, only over the anchor as it was read.
    let released_anchor = AnchorRow {
        digest: vec![0x70; 32],
        mac: vec![0x71; 32],
        ..counted.clone()
    };
    let change = AnchorChange {
        prev: Some(&counted),
        next: &released_anchor,
    };
    assert!(matches!(
        store.release_hold(
            "hold_1",
            80,
            "po",
            &[4; 32],
            AnchorChange {
                prev: None,
                next: &released_anchor
            }
        ),
        Err(StoreError::Stale(_))
    ));
    assert!(store.holds(Some("life-1"), true).unwrap().len() == 1);
    assert!(
        store
            .release_hold("hold_1", 80, "po", &[4; 32], change)
            .unwrap()
    );
    assert_eq!(
        store.subject_facts("life-1").unwrap().anchor,
        Some(released_anchor.clone())
    );
    // Released already: nothing changes, the anchor neither.
    let again = AnchorChange {
        prev: Some(&released_anchor),
        next: &counted,
    };
    assert!(
        !store
            .release_hold("hold_1", 81, "po", &[4; 32], again)
            .unwrap()
    );
    assert_eq!(
        store.subject_facts("life-1").unwrap().anchor,
        Some(released_anchor.clone())
    );
    assert_eq!(
        store.holds(Some("life-1"), false).unwrap()[0].mac,
        vec![4; 32]
    );
    assert!(store.holds(Some("life-1"), true).unwrap().is_empty());
    assert_eq!(store.holds(None, false).unwrap()[0].released_at, Some(80));
    let (destroyed, shredded) = shred(store, "life-1", &ids).unwrap();
    assert_eq!(destroyed, ["rec_l1"]);
    assert_eq!(shredded, ["nuisance"]);
    assert_eq!(
        store.subject_facts("life-1").unwrap().destroyed,
        ["rec_l1", "rec_l2"]
    );
    assert!(store.subject_key("life-1", "nuisance").unwrap().is_none());
    // Another subject's record is not theirs to shred.
    store
        .insert_subject_key(&key, &anchor(&key.subject))
        .unwrap();
    store
        .insert_record(&rec("rec_l3", None), std::slice::from_ref(&field))
        .unwrap();
    assert!(
        shred(store, "life-2", &["rec_l3".to_owned()])
            .unwrap()
            .0
            .is_empty()
    );
    assert!(store.record("rec_l3").unwrap().is_some());
    // Deleting a subject's last record of a purpose takes the subject key with it; one of two
    // leaves it.
    store
        .insert_record(&rec("rec_l4", None), std::slice::from_ref(&field))
        .unwrap();
    assert_eq!(delete(store, "rec_l4").unwrap(), Some(false));
    assert!(store.subject_key("life-1", "nuisance").unwrap().is_some());
    assert_eq!(delete(store, "rec_l3").unwrap(), Some(true));
    assert!(store.subject_key("life-1", "nuisance").unwrap().is_none());

    // Consent, mandates and subject requests.
    let consent = |state: ConsentState, at: i64| ConsentRow {
        subject: "life-1".into(),
        purpose: Purpose::FinancialScreening,
        state,
        at,
        recorded_by: "po".into(),
        mac: vec![u8::try_from(at).unwrap(); 32],
    };
    let prev = store.subject_facts("life-1").unwrap().anchor.unwrap();
    let next = AnchorRow {
        consents: 1,
        mac: vec![0x79; 32],
        ..prev.clone()
    };
    assert!(matches!(
        store.set_consent(&consent(ConsentState::Objected, 5), Some(&next), &next),
        Err(StoreError::Stale(_))
    ));
    assert!(store.subject_facts("life-1").unwrap().consents.is_empty());
    store
        .set_consent(&consent(ConsentState::Objected, 5), Some(&prev), &next)
        .unwrap();
    store
        .set_consent(&consent(ConsentState::Given, 6), Some(&next), &next)
        .unwrap();
    let facts = store.subject_facts("life-1").unwrap();
    assert_eq!(facts.consents, vec![consent(ConsentState::Given, 6)]);
    assert_eq!(facts.anchor, Some(next));
    // A subject never written about has no facts.
    assert_eq!(
        store.subject_facts("nobody").unwrap(),
        super::SubjectFacts::default()
    );
    // Read together: one set of facts per subject asked, in the order asked.
    assert_eq!(
        store
            .subjects_facts(&["nobody", "life-1", "nobody"])
            .unwrap(),
        vec![
            super::SubjectFacts::default(),
            store.subject_facts("life-1").unwrap(),
            super::SubjectFacts::default(),
        ]
    );
    assert_eq!(
        store.all_consents().unwrap(),
        vec![consent(ConsentState::Given, 6)]
    );
    let mandate = MandateRow {
        mac: vec![0xAB; 32],
        id: "mdt_1".into(),
        subject: "life-1".into(),
        representative: "rep-1".into(),
        purposes: vec!["contract".into(), "payments".into()],
        categories: vec!["contact".into()],
        valid_from: 1,
        valid_until: 100,
        granted_by: "po".into(),
        revoked_at: None,
    };
    let anchor_now = store.subject_facts("life-1").unwrap().anchor.unwrap();
    let with_mandate = AnchorRow {
        digest: vec![0x72; 32],
        ..anchor_now.clone()
    };
    store
        .insert_mandate(
            &mandate,
            AnchorChange {
                prev: Some(&anchor_now),
                next: &with_mandate,
            },
        )
        .unwrap();
    assert_eq!(
        store.subject_facts("life-1").unwrap().mandates,
        vec![mandate.clone()]
    );
    assert_eq!(
        store.mandates(None, Some("rep-1")).unwrap(),
        vec![mandate.clone()]
    );
    assert!(store.mandates(Some("life-2"), None).unwrap().is_empty());
    let revoked_anchor = AnchorRow {
        digest: vec![0x73; 32],
        ..with_mandate.clone()
    };
    let change = AnchorChange {
        prev: Some(&with_mandate),
        next: &revoked_anchor,
    };
    assert!(store.revoke_mandate("mdt_1", 7, &[5; 32], change).unwrap());
    let again = AnchorChange {
        prev: Some(&revoked_anchor),
        next: &with_mandate,
    };
    assert!(!store.revoke_mandate("mdt_1", 8, &[5; 32], again).unwrap());
    assert_eq!(
        store.mandates(Some("life-1"), None).unwrap()[0].mac,
        vec![5; 32]
    );
    let request = RequestRow {
        id: "req_1".into(),
        subject: "life-1".into(),
        kind: RequestKind::Access,
        received_at: 10,
        due_at: 20,
        opened_by: "po".into(),
        completed_at: None,
        note: "letter".into(),
        mac: vec![6; 32],
        extended_due_at: None,
        extension_reason: None,
    };
    store.insert_request(&request).unwrap();
    // An extension is written only over the MAC as read, and only while the request is open.
    assert!(
        !store
            .extend_request("req_1", &[9; 32], 30, "complex", &[10; 32])
            .unwrap()
    );
    assert!(
        store
            .extend_request("req_1", &[6; 32], 30, "complex", &[10; 32])
            .unwrap()
    );
    let extended = store.requests().unwrap()[0].clone();
    assert_eq!(extended.extended_due_at, Some(30));
    assert_eq!(extended.extension_reason.as_deref(), Some("complex"));
    assert_eq!(extended.due_at, 20);
    assert_eq!(extended.mac, vec![10; 32]);
    assert!(store.complete_request("req_1", 15, &[7; 32]).unwrap());
    assert!(!store.complete_request("req_1", 16, &[8; 32]).unwrap());
    assert_eq!(store.requests().unwrap()[0].mac, vec![7; 32]);
    assert_eq!(store.requests().unwrap()[0].completed_at, Some(15));
    assert_eq!(store.requests().unwrap()[0].extended_due_at, Some(30));
    assert!(
        !store
            .extend_request("req_1", &[7; 32], 40, "again", &[11; 32])
            .unwrap()
    );

    // Restrictions of processing: stored with the anchor, lifted once, read in the facts.
    let restriction = RestrictionRow {
        id: "rst_1".into(),
        subject: "life-1".into(),
        reason: "accuracy contested".into(),
        placed_by: "po".into(),
        placed_at: 50,
        lifted_at: None,
        lifted_by: None,
        mac: vec![12; 32],
    };
    let stale = AnchorChange {
        prev: Some(&with_mandate),
        next: &with_mandate,
    };
    assert!(matches!(
        store.insert_restriction(&restriction, stale),
        Err(StoreError::Stale(_))
    ));
    assert!(store.restrictions(Some("life-1")).unwrap().is_empty());
    let restricted_anchor = AnchorRow {
        digest: vec![0x74; 32],
        ..revoked_anchor.clone()
    };
    store
        .insert_restriction(
            &restriction,
            AnchorChange {
                prev: Some(&revoked_anchor),
                next: &restricted_anchor,
            },
        )
        .unwrap();
    let facts = store.subject_facts("life-1").unwrap();
    assert_eq!(facts.restrictions, vec![restriction.clone()]);
    assert_eq!(facts.anchor.as_ref(), Some(&restricted_anchor));
    assert_eq!(facts.mandates.len(), 1);
    assert!(store.restrictions(Some("life-2")).unwrap().is_empty());
    assert_eq!(store.restrictions(None).unwrap(), vec![restriction.clone()]);
    let lifted_anchor = AnchorRow {
        digest: vec![0x75; 32],
        ..restricted_anchor.clone()
    };
    assert!(
        store
            .lift_restriction(
                "rst_1",
                60,
                "po2",
                &[13; 32],
                AnchorChange {
                    prev: Some(&restricted_anchor),
                    next: &lifted_anchor,
                },
            )
            .unwrap()
    );
    // Lifted once only; the anchor stays as the lift left it.
    assert!(
        !store
            .lift_restriction(
                "rst_1",
                61,
                "po3",
                &[14; 32],
                AnchorChange {
                    prev: Some(&lifted_anchor),
                    next: &restricted_anchor,
                },
            )
            .unwrap()
    );
    let facts = store.subject_facts("life-1").unwrap();
    assert_eq!(facts.anchor.as_ref(), Some(&lifted_anchor));
    let lifted = &facts.restrictions[0];
    assert_eq!(lifted.lifted_at, Some(60));
    assert_eq!(lifted.lifted_by.as_deref(), Some("po2"));
    assert_eq!(lifted.mac, vec![13; 32]);
    assert_eq!(lifted.reason, "accuracy contested");

    // A record read with the facts of its subject: what each read alone answers, its fields
    // (stored in one statement on PostgreSQL, their tags too) in name order.
    let tagged = |name: &str, tag: i64| FieldRow {
        name: name.into(),
        tags: vec![TagRow {
            version: 1,
            bits: 16,
            tag,
        }],
        ..field.clone()
    };
    // (Its key went with its last records: a new one, the anchor kept.)
    store
        .insert_subject_key(&key, &anchor(&key.subject))
        .unwrap();
    store
        .insert_record(
            &rec("rec_l3", None),
            &[tagged("zz", 7), field.clone(), tagged("m", 9)],
        )
        .unwrap();
    store.insert_record(&rec("rec_l4", None), &[]).unwrap();
    let facts = store.subject_facts("life-1").unwrap();
    assert!(facts.anchor.is_some() && !facts.restrictions.is_empty());
    for id in ["rec_l3", "rec_l4"] {
        let (record, fields) = store.record(id).unwrap().unwrap();
        assert_eq!(
            store.record_with_facts(id).unwrap(),
            Some(std::sync::Arc::new(RecordRead::new(
                record,
                fields,
                facts.clone()
            ))),
            "{id}"
        );
    }
    let (_, fields) = store.record("rec_l3").unwrap().unwrap();
    let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["a", "m", "zz"]);
    let counts = store.tag_counts(1).unwrap();
    let count = |field: &str| {
        counts
            .iter()
            .filter(|c| c.field == field && c.bits == 16)
            .map(|c| c.tags)
            .sum::<u64>()
    };
    assert_eq!((count("zz"), count("m")), (1, 1));
    assert_eq!(store.record_with_facts("rec_none").unwrap(), None);
    reads_at_once(
        store,
        &["rec_l3", "rec_l4", "rec_none", "rec_1", "rec_first"],
        &["life-1", "rel-1", "nobody", "rel-first"],
    );
}

/// Reads of records with their facts, and of subjects' facts, from many threads at once (a
/// store may answer reads that arrive together in one statement): each answers what the same
/// read alone answers, whatever the reads beside it, the same one read by several and a missing
/// one included.
#[expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a test suite: failures must panic"
)]
fn reads_at_once(store: &dyn Store, ids: &[&str], subjects: &[&str]) {
    let records: Vec<_> = ids
        .iter()
        .map(|id| store.record_with_facts(id).unwrap())
        .collect();
    assert!(records.iter().filter(|a| a.is_some()).count() >= 2);
    let facts: Vec<_> = subjects
        .iter()
        .map(|s| store.subject_facts(s).unwrap())
        .collect();
    assert!(facts.iter().filter(|f| f.anchor.is_some()).count() >= 2);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (records, facts) = (&records, &facts);
            s.spawn(move || {
                for i in 0..150 {
                    let n = (t * 7 + i * 3) % ids.len();
                    assert_eq!(
                        &store.record_with_facts(ids[n]).unwrap(),
                        &records[n],
                        "{} read beside others",
                        ids[n]
                    );
                    let n = (t * 5 + i) % subjects.len();
                    assert_eq!(
                        &store.subject_facts(subjects[n]).unwrap(),
                        &facts[n],
                        "the facts of {} read beside others",
                        subjects[n]
                    );
                }
            });
        }
    });
}
