//! The conformance suite every `Store` implementation must pass: the SQLite tests call
//! `run_all`, and so will the PostgreSQL ones. It checks behaviour, not SQL.

use std::collections::BTreeMap;

use super::{
    AuditRow, FieldRow, PurposeKeyRow, RecordRow, Store, StoreError, SubjectKeyRow, TokenRow,
};

/// Runs every conformance check against an empty `store`. Panics on the first failure, so call
/// it from a test.
#[expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test suite: failures must panic"
)]
pub fn run_all(store: &dyn Store) {
    // Initialisation is all-or-nothing and happens once.
    assert_eq!(store.meta("root").unwrap(), None);
    let pk = PurposeKeyRow {
        purpose: "nuisance".into(),
        version: 1,
        state: "active".into(),
        wrapped: vec![1, 2, 3],
        created_at: 10,
    };
    store
        .initialize(&[("root", b"params".to_vec())], std::slice::from_ref(&pk))
        .unwrap();
    assert!(matches!(
        store.initialize(&[("x", vec![])], &[]),
        Err(StoreError::AlreadyInitialized)
    ));
    assert_eq!(store.meta("root").unwrap().unwrap(), b"params");
    assert_eq!(store.meta("x").unwrap(), None);
    assert_eq!(store.purpose_keys("nuisance").unwrap(), vec![pk]);
    assert!(store.purpose_keys("contract").unwrap().is_empty());

    // The first subject key wins; a second insert returns the stored one.
    let sk = SubjectKeyRow {
        subject: "rel-1".into(),
        purpose: "nuisance".into(),
        generation: 1,
        purpose_version: 1,
        wrapped: vec![9; 40],
        created_at: 11,
    };
    assert_eq!(store.insert_subject_key(&sk).unwrap(), sk);
    let other = SubjectKeyRow {
        wrapped: vec![8; 40],
        ..sk.clone()
    };
    assert_eq!(store.insert_subject_key(&other).unwrap(), sk);
    assert_eq!(store.subject_key("rel-1", "nuisance").unwrap(), Some(sk));
    assert_eq!(store.subject_key("rel-1", "contract").unwrap(), None);

    // Records with fields, in one transaction.
    let rec = RecordRow {
        id: "rec_1".into(),
        subject: "rel-1".into(),
        purpose: "nuisance".into(),
        labels: BTreeMap::from([("case".into(), "N-1".into())]),
        created_at: 100,
        updated_at: 100,
        closed_at: None,
        expires_at: Some(200),
    };
    let field = |name: &str, sealed: u8| FieldRow {
        name: name.into(),
        category: "contact".into(),
        kind: "text".into(),
        sealed: vec![sealed; 30],
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
        id: "rec_2".into(),
        ..rec.clone()
    };
    let dup = store.insert_record(&rec2, &[field("a", 1), field("a", 2)]);
    assert!(dup.is_err());
    assert!(store.record("rec_2").unwrap().is_none());
    assert!(matches!(
        store.insert_record(&rec, &[]),
        Err(StoreError::Conflict(_))
    ));

    // Updates replace and add fields.
    assert!(
        store
            .update_fields("rec_1", &[field("phone", 7), field("city", 3)], 150)
            .unwrap()
    );
    assert!(
        !store
            .update_fields("rec_nope", &[field("phone", 7)], 150)
            .unwrap()
    );
    let (got, fields) = store.record("rec_1").unwrap().unwrap();
    assert_eq!(got.updated_at, 150);
    assert_eq!(fields.len(), 3);
    let phone = fields.iter().find(|f| f.name == "phone").unwrap();
    assert_eq!(phone.sealed, vec![7; 30]);

    let listed = store.subject_records("rel-1").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1.len(), 3);
    assert_eq!(listed[0].1[0].size, 30);
    assert!(store.subject_records("rel-2").unwrap().is_empty());

    assert!(store.delete_record("rec_1").unwrap());
    assert!(!store.delete_record("rec_1").unwrap());
    assert!(store.record("rec_1").unwrap().is_none());

    // Tokens: looked up by hash, revoked once.
    let tok = TokenRow {
        id: "tok_1".into(),
        hash: vec![5; 32],
        principal: "emp-7".into(),
        roles: vec!["nuisance-officer".into(), "legal-counsel".into()],
        scope_subject: None,
        created_at: 1,
        expires_at: 2,
        revoked_at: None,
    };
    store.insert_token(&tok).unwrap();
    assert!(matches!(
        store.insert_token(&tok),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.token_by_hash(&[5; 32]).unwrap(), Some(tok.clone()));
    assert_eq!(store.token_by_hash(&[6; 32]).unwrap(), None);
    assert!(store.revoke_token("tok_1", 3).unwrap());
    assert!(!store.revoke_token("tok_1", 4).unwrap());
    assert_eq!(store.tokens().unwrap()[0].revoked_at, Some(3));

    // Audit: append-only by sequence number.
    assert_eq!(store.audit_tail().unwrap(), None);
    let entry = |seq| AuditRow {
        seq,
        entry: format!("{{\"seq\":{seq}}}").into_bytes(),
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
        Err(StoreError::Conflict(_))
    ));
    // A batch with one taken sequence number writes nothing.
    assert!(matches!(
        store.append_audit(&[entry(6), entry(5)]),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.audit_tail().unwrap(), Some(entry(5)));
    let page = store.audit_entries(2, 2).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    if store.audit_entries(6, 10).unwrap().is_empty() {
        return;
    }
    panic!("audit_entries past the tail must be empty");
}
