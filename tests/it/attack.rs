//! Hostile requests against equality search, masked views, the disclosure register, restriction
//! of processing, rectification on a request, deadline extension, the portable export and the
//! export with evidence files: what a case-app developer or an insider holding one token tries
//! from outside. Each test asserts the safe behaviour.

use std::collections::BTreeMap;

use kluis::{config::RawConfig, domain::Role, pb, search::RawSearch};
use tonic::Code;

use crate::common::{
    SCOPED_SUBJECT, TestServer, audit_entries, binary, ctx, download, evidence_start, export,
    field, get, list_records, nuisance_ctx, private_tempdir, put, rectify, req, text, text_of,
    upload_bytes,
};

fn searchable(fields: &[&str]) -> RawSearch {
    RawSearch {
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        tag_bits: None,
        types: None,
    }
}

/// Searchable fields in several purposes.
fn search_config(tag_bits: Option<u8>) -> RawConfig {
    let mut contract = searchable(&["email", "phone", "iban", "postcode"]);
    contract.tag_bits = tag_bits;
    RawConfig {
        search: Some(BTreeMap::from([
            ("contract".to_owned(), contract),
            ("maintenance".to_owned(), searchable(&["email", "phone"])),
            ("legal-disputes".to_owned(), searchable(&["email"])),
            ("financial-screening".to_owned(), searchable(&["email"])),
            ("debt-collection".to_owned(), searchable(&["iban"])),
            ("housing-fraud".to_owned(), searchable(&["email"])),
            ("nuisance".to_owned(), searchable(&["email"])),
        ])),
        ..Default::default()
    }
}

async fn find(
    server: &TestServer,
    token: &str,
    context: Option<pb::AccessContext>,
    field: &str,
    value: &str,
    limit: u32,
) -> Result<Vec<pb::RecordInfo>, tonic::Status> {
    server
        .client()
        .await
        .find_records(req(
            token,
            pb::FindRecordsRequest {
                context,
                field: field.into(),
                value: value.into(),
                limit,
            },
        ))
        .await
        .map(|r| r.into_inner().records)
}

/// What a caller sees of an answer: the hits' subjects, or the code and the message.
fn outcome(r: &Result<Vec<pb::RecordInfo>, tonic::Status>) -> String {
    match r {
        Ok(records) => format!(
            "ok {:?}",
            records.iter().map(|r| &r.subject_id).collect::<Vec<_>>()
        ),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

async fn restrict(server: &TestServer, subject: &str) {
    server
        .admin()
        .await
        .restrict_processing(req(
            server.token(Role::PrivacyOfficer),
            pb::RestrictProcessingRequest {
                subject_id: subject.into(),
                reason: "accuracy contested".into(),
            },
        ))
        .await
        .unwrap();
}

async fn register(server: &TestServer, subject: &str) -> Vec<pb::Disclosure> {
    server
        .admin()
        .await
        .list_disclosures(req(
            server.token(Role::PrivacyOfficer),
            pb::ListDisclosuresRequest {
                subject_id: subject.into(),
                since: None,
                limit: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .disclosures
}

fn disclosure_request(
    context: Option<pb::AccessContext>,
    subject: &str,
    record: &str,
    fields: &[&str],
) -> pb::RecordDisclosureRequest {
    pb::RecordDisclosureRequest {
        context,
        subject_id: subject.into(),
        record_id: record.into(),
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        recipient: "Politie Midden-Nederland".into(),
        recipient_kind: "police".into(),
        legal_basis: "vordering art. 126nd Sv".into(),
        case_ref: "PV-2026-1".into(),
    }
}

async fn record_disclosure(
    server: &TestServer,
    token: &str,
    request: pb::RecordDisclosureRequest,
) -> Result<pb::Disclosure, tonic::Status> {
    server
        .client()
        .await
        .record_disclosure(req(token, request))
        .await
        .map(tonic::Response::into_inner)
}

fn contract() -> Option<pb::AccessContext> {
    ctx("contract", "", "")
}

fn contains_any(haystack: &str, needles: &[&str]) -> Option<String> {
    needles
        .iter()
        .find(|n| haystack.contains(**n))
        .map(|n| (*n).to_owned())
}

// ---------------------------------------------------------------------------------------------
// Equality search
// ---------------------------------------------------------------------------------------------

/// Who searches, with which token and context, which field, a value held and one not held.
type HiddenHitCase<'a> = (
    &'a str,
    String,
    Option<pb::AccessContext>,
    &'a str,
    &'a str,
    &'a str,
);

/// A hit the caller may not read answers exactly as no hit: same code, same message, same
/// (empty) list, for every caller that may not read the field of the record that holds it.
#[tokio::test(flavor = "multi_thread")]
async fn attack_find_answers_a_hidden_hit_exactly_as_no_hit() {
    let server = TestServer::start_with_config(search_config(None)).await;
    put(
        &server,
        Role::CustomerService,
        contract(),
        "REL-0042",
        vec![
            text("email", "contact", "secret.tenant@example.nl"),
            text("postcode", "contact", "3511 AB"),
        ],
    )
    .await;
    put(
        &server,
        Role::FinanceOfficer,
        contract(),
        "REL-0042",
        vec![text("iban", "financial", "NL91ABNA0417164300")],
    )
    .await;
    put(
        &server,
        Role::MaintenancePlanner,
        ctx("maintenance", "", ""),
        "REL-0042",
        vec![text("phone", "contact", "06-87654321")],
    )
    .await;
    let subject = server.issue(Role::Subject, Some("REL-0001"));
    let cases: Vec<HiddenHitCase> = vec![
        // Masked only: customer service may not read bank details.
        (
            "customer service, iban",
            server.token(Role::CustomerService).to_owned(),
            contract(),
            "iban",
            "NL91ABNA0417164300",
            "NL02RABO0123456789",
        ),
        (
            "customer service, iban, declared complaints",
            server.token(Role::CustomerService).to_owned(),
            ctx("complaints", "", ""),
            "iban",
            "NL91ABNA0417164300",
            "NL02RABO0123456789",
        ),
        // Another subject's record, for a scoped token.
        (
            "subject of REL-0001",
            subject.clone(),
            contract(),
            "email",
            "secret.tenant@example.nl",
            "nobody@example.nl",
        ),
        (
            "contractor of REL-0001",
            server.token(Role::Contractor).to_owned(),
            ctx("maintenance", "", ""),
            "phone",
            "0687654321",
            "0611111111",
        ),
        // A role without the purpose.
        (
            "nuisance officer declaring contract",
            server.token(Role::NuisanceOfficer).to_owned(),
            contract(),
            "email",
            "secret.tenant@example.nl",
            "nobody@example.nl",
        ),
        (
            "analyst",
            server.token(Role::Analyst).to_owned(),
            contract(),
            "postcode",
            "3511AB",
            "9999ZZ",
        ),
        (
            "auditor declaring audit over contract",
            server.token(Role::Auditor).to_owned(),
            ctx("audit", "", ""),
            "email",
            "secret.tenant@example.nl",
            "nobody@example.nl",
        ),
        (
            "privacy officer",
            server.token(Role::PrivacyOfficer).to_owned(),
            contract(),
            "email",
            "secret.tenant@example.nl",
            "nobody@example.nl",
        ),
        (
            "social media channel",
            server.token(Role::CustomerService).to_owned(),
            Some(pb::AccessContext {
                channel: "social-media".into(),
                ..contract().unwrap()
            }),
            "iban",
            "NL91ABNA0417164300",
            "NL02RABO0123456789",
        ),
    ];
    for (who, token, context, field, present, absent) in cases {
        for limit in [0, 1, 100] {
            let hit = find(&server, &token, context.clone(), field, present, limit).await;
            let miss = find(&server, &token, context.clone(), field, absent, limit).await;
            assert_eq!(
                outcome(&hit),
                outcome(&miss),
                "{who}: a hidden hit answers otherwise than no hit (limit {limit})"
            );
            assert!(
                hit.as_ref().map_or(true, Vec::is_empty),
                "{who}: found {}",
                outcome(&hit)
            );
        }
    }
    server.stop().await;
}

/// The candidate cap is said only to a caller who may read the field of a candidate: anyone
/// else learns nothing of how often a value occurs.
#[tokio::test(flavor = "multi_thread")]
async fn attack_find_candidate_cap_is_no_frequency_oracle() {
    let server = TestServer::start_with_config(search_config(Some(8))).await;
    let mut jobs = tokio::task::JoinSet::new();
    let addr = server.addr;
    let token = server.token(Role::CustomerService).to_owned();
    for worker in 0..8u32 {
        let token = token.clone();
        jobs.spawn(async move {
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = pb::vault_client::VaultClient::new(channel);
            let mut i = worker;
            while i < 1001 {
                client
                    .put_record(req(
                        &token,
                        pb::PutRecordRequest {
                            context: contract(),
                            subject_id: format!("POP-{i}"),
                            fields: vec![text("postcode", "contact", "7311 XK")],
                            labels: Default::default(),
                        },
                    ))
                    .await
                    .unwrap();
                i += 8;
            }
        });
    }
    while let Some(j) = jobs.join_next().await {
        j.unwrap();
    }
    // The twin: a reader is told.
    let reader = find(
        &server,
        server.token(Role::CustomerService),
        contract(),
        "postcode",
        "7311XK",
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(reader.code(), Code::FailedPrecondition, "{reader:?}");
    assert!(!reader.message().contains("7311"), "{reader:?}");
    let subject = server.issue(Role::Subject, Some("REL-0001"));
    for (who, token, context) in [
        ("subject of REL-0001", subject.as_str(), contract()),
        (
            "finance officer (no contact data of contracts)",
            server.token(Role::FinanceOfficer),
            contract(),
        ),
        (
            "maintenance planner declaring contract",
            server.token(Role::MaintenancePlanner),
            contract(),
        ),
        ("analyst", server.token(Role::Analyst), contract()),
    ] {
        let popular = find(&server, token, context.clone(), "postcode", "7311XK", 0).await;
        let rare = find(&server, token, context, "postcode", "9999ZZ", 0).await;
        assert_eq!(
            outcome(&popular),
            outcome(&rare),
            "{who}: the candidate cap tells a popular value from a rare one"
        );
    }
    server.stop().await;
}

/// A restricted subject, an objected subject and an erased subject are no hits.
#[tokio::test(flavor = "multi_thread")]
async fn attack_find_restricted_objected_or_erased_subjects_are_no_hits() {
    let server = TestServer::start_with_config(search_config(None)).await;
    let cs = server.token(Role::CustomerService).to_owned();
    put(
        &server,
        Role::CustomerService,
        contract(),
        "REL-0510",
        vec![text("email", "contact", "restricted@example.nl")],
    )
    .await;
    put(
        &server,
        Role::CustomerService,
        contract(),
        "REL-0511",
        vec![text("email", "contact", "erased@example.nl")],
    )
    .await;
    put(
        &server,
        Role::AllocationOfficer,
        ctx("financial-screening", "", ""),
        "REL-0512",
        vec![text("email", "contact", "objected@example.nl")],
    )
    .await;
    // Twins: found before.
    assert_eq!(
        find(
            &server,
            &cs,
            contract(),
            "email",
            "restricted@example.nl",
            0
        )
        .await
        .unwrap()
        .len(),
        1
    );
    let screening = ctx("financial-screening", "", "");
    let alloc = server.token(Role::AllocationOfficer).to_owned();
    assert_eq!(
        find(
            &server,
            &alloc,
            screening.clone(),
            "email",
            "objected@example.nl",
            0
        )
        .await
        .unwrap()
        .len(),
        1
    );
    restrict(&server, "rel-0510").await;
    server
        .admin()
        .await
        .erase_subject(req(
            server.token(Role::PrivacyOfficer),
            pb::EraseSubjectRequest {
                subject_id: "REL-0511".into(),
                justification: "ER-2026-1".into(),
            },
        ))
        .await
        .unwrap();
    server
        .admin()
        .await
        .record_consent(req(
            server.token(Role::PrivacyOfficer),
            pb::RecordConsentRequest {
                subject_id: "REL-0512".into(),
                purpose: "financial-screening".into(),
                state: "objected".into(),
                justification: "objection letter 12".into(),
            },
        ))
        .await
        .unwrap();
    let restricted = find(
        &server,
        &cs,
        contract(),
        "email",
        "restricted@example.nl",
        0,
    )
    .await;
    assert!(
        restricted.as_ref().is_ok_and(Vec::is_empty),
        "restricted subject found: {}",
        outcome(&restricted)
    );
    let erased = find(&server, &cs, contract(), "email", "erased@example.nl", 0).await;
    assert!(
        erased.as_ref().is_ok_and(Vec::is_empty),
        "{}",
        outcome(&erased)
    );
    let objected = find(
        &server,
        &alloc,
        screening,
        "email",
        "objected@example.nl",
        0,
    )
    .await;
    assert!(
        objected.as_ref().is_ok_and(Vec::is_empty),
        "objected subject found: {}",
        outcome(&objected)
    );
    // No `found` entry for the restricted or objected subject after the restriction.
    let entries = audit_entries(&server);
    let found: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "found" && e["decision"] == "allow")
        .map(|e| e["subject"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        found.iter().filter(|s| *s == "REL-0510").count(),
        1,
        "{found:?}"
    );
    server.stop().await;
}

/// Odd values: a clear INVALID_ARGUMENT naming the field, never echoing the value, never on the
/// trail.
#[tokio::test(flavor = "multi_thread")]
async fn attack_find_odd_values_are_refused_by_name_without_echo() {
    let server = TestServer::start_with_config(search_config(None)).await;
    put(
        &server,
        Role::CustomerService,
        contract(),
        "REL-0520",
        vec![
            text("email", "contact", "jan.öst@exämple.nl"),
            text("phone", "contact", "06-12345678"),
        ],
    )
    .await;
    let cs = server.token(Role::CustomerService).to_owned();
    // Unicode is searched, not refused.
    let found = find(&server, &cs, contract(), "email", "JAN.ÖST@EXÄMPLE.NL", 0).await;
    assert!(
        matches!(&found, Ok(r) if r.len() == 1),
        "{}",
        outcome(&found)
    );
    let mega = "m".repeat(1 << 20);
    // A NUL or an invisible character is part of a value like any other: no hit, or refused
    // by name.
    for value in ["secretnul\0@example.nl", "\0", "\u{200B}"] {
        let r = find(&server, &cs, contract(), "email", value, 0).await;
        match &r {
            Ok(hits) => assert!(hits.is_empty()),
            Err(s) => {
                assert_eq!(s.code(), Code::InvalidArgument);
                assert!(s.message().contains("`value`") && !s.message().contains("secret"));
            }
        }
    }
    for (field, value, limit, named) in [
        ("phone", "secret-no-digits", 0, "`value`"),
        ("email", mega.as_str(), 0, "`value`"),
        ("email", "a@b.nl", u32::MAX, "`limit`"),
        ("", "a@b.nl", 0, "`field`"),
        ("email\0", "a@b.nl", 0, "`field`"),
        ("secretfieldxx", "a@b.nl", 0, ""),
    ] {
        let r = find(&server, &cs, contract(), field, value, limit).await;
        let status = r.as_ref().err().cloned();
        let Some(status) = status else {
            panic!("{field:?} / {} bytes: {}", value.len(), outcome(&r));
        };
        assert!(
            matches!(
                status.code(),
                Code::InvalidArgument | Code::FailedPrecondition
            ),
            "{field:?}: {status:?}"
        );
        assert!(
            status.message().contains(named),
            "{field:?}: {}",
            status.message()
        );
        assert!(
            !status.message().contains("secret") || field == "secretfieldxx",
            "value echoed: {}",
            status.message()
        );
        assert!(
            status.message().len() < 1000,
            "{} bytes",
            status.message().len()
        );
    }
    let trail = serde_json::to_string(&audit_entries(&server)).unwrap();
    for v in [
        "secretnul",
        "secret-no-digits",
        "mmmmmmmm",
        "jan.öst",
        "JAN.ÖST",
        "12345678",
    ] {
        assert!(!trail.contains(v), "`{v}` on the trail");
    }
    server.stop().await;
}

/// A hit's metadata is what ListRecords gives the caller: no size or digest of a field it may
/// not read, no name of a field it may not know of.
#[tokio::test(flavor = "multi_thread")]
async fn attack_find_hit_metadata_gives_nothing_of_unreadable_fields() {
    let server = TestServer::start_with_config(search_config(None)).await;
    let record = put(
        &server,
        Role::CustomerService,
        contract(),
        "REL-0530",
        vec![text("email", "contact", "meta@example.nl")],
    )
    .await;
    server
        .client()
        .await
        .update_record(req(
            server.token(Role::FinanceOfficer),
            pb::UpdateRecordRequest {
                context: contract(),
                record_id: record.clone(),
                fields: vec![text("iban", "financial", "NL91ABNA0417164300")],
            },
        ))
        .await
        .unwrap();
    let mut start = evidence_start(
        contract(),
        "",
        &record,
        "statement",
        "application/pdf",
        "bankafschrift.pdf",
    );
    if let Some(pb::evidence_chunk::Part::Start(s)) = &mut start.part {
        s.category = "financial".into();
    }
    upload_bytes(
        &server,
        server.token(Role::FinanceOfficer),
        start,
        b"%PDF-1.7 saldo 1250",
    )
    .await
    .unwrap();
    // A lawyer of REL-0001 and a legal-disputes record with a nuisance statement.
    let dispute = put(
        &server,
        Role::LegalCounsel,
        ctx("legal-disputes", "LD-2026-1", "claim for arrears"),
        SCOPED_SUBJECT,
        vec![
            text("email", "contact", "own@example.nl"),
            text("neighbour_statement", "nuisance-evidence", "he shouts"),
        ],
    )
    .await;
    let cs = server.token(Role::CustomerService).to_owned();
    let hits = find(&server, &cs, contract(), "email", "meta@example.nl", 0)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    let listed = list_records(&server, &cs, contract(), "REL-0530")
        .await
        .unwrap();
    for f in &hits[0].fields {
        if f.name == "iban" || f.name == "statement" {
            assert_eq!(f.size, 0, "size of `{}` given to customer service", f.name);
            if let Some(e) = &f.evidence {
                assert!(e.sha256.is_empty(), "digest of `{}` given", f.name);
            }
        }
    }
    let names = |r: &pb::RecordInfo| {
        let mut n: Vec<String> = r.fields.iter().map(|f| f.name.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&hits[0]), names(&listed[0]), "find and list differ");
    // The lawyer's hit: no special-category field named.
    let lawyer = server.token(Role::Lawyer).to_owned();
    let claim = ctx("legal-disputes", "LD-2026-1", "claim for arrears");
    let hits = find(
        &server,
        &lawyer,
        claim.clone(),
        "email",
        "own@example.nl",
        0,
    )
    .await
    .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].record_id, dispute);
    assert!(
        hits[0]
            .fields
            .iter()
            .all(|f| f.name != "neighbour_statement"),
        "the lawyer learns of a nuisance statement: {:?}",
        names(&hits[0])
    );
    // A hit of an external party names only fields it may read in the register.
    let reg = register(&server, SCOPED_SUBJECT).await;
    assert!(
        reg.iter()
            .all(|d| !d.fields.iter().any(|f| f == "neighbour_statement")),
        "{reg:?}"
    );
    server.stop().await;
}

/// An open investigation stays closed to the subject and their representative: a search for
/// their own address under `housing-fraud` or `nuisance` tells nothing of it.
#[tokio::test(flavor = "multi_thread")]
async fn attack_find_reveals_no_open_investigation_to_the_subject() {
    let server = TestServer::start_with_config(search_config(None)).await;
    let me = SCOPED_SUBJECT;
    put(
        &server,
        Role::FraudInvestigator,
        ctx("housing-fraud", "HF-2026-1", "subletting suspected"),
        me,
        vec![text("email", "contact", "me@example.nl")],
    )
    .await;
    put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        me,
        vec![text("email", "contact", "me@example.nl")],
    )
    .await;
    server
        .admin()
        .await
        .grant_mandate(req(
            server.token(Role::PrivacyOfficer),
            pb::GrantMandateRequest {
                subject_id: me.into(),
                representative_id: "test-representative".into(),
                purposes: vec!["housing-fraud".into(), "nuisance".into(), "contract".into()],
                categories: vec!["contact".into(), "identity".into()],
                valid_until: Some(prost_types::Timestamp {
                    seconds: kluis::domain::now_unix() + 30 * 86_400,
                    nanos: 0,
                }),
                justification: "volmacht 2026-3".into(),
            },
        ))
        .await
        .unwrap();
    let mut told = Vec::new();
    for role in [Role::Subject, Role::Representative] {
        for (purpose, case) in [("housing-fraud", "HF-2026-1"), ("nuisance", "N-2026-0042")] {
            let context = ctx(purpose, case, "my own data");
            let own = find(
                &server,
                server.token(role),
                context.clone(),
                "email",
                "me@example.nl",
                0,
            )
            .await;
            let other = find(
                &server,
                server.token(role),
                context,
                "email",
                "not-me@example.nl",
                0,
            )
            .await;
            if outcome(&own) != outcome(&other) {
                told.push(format!(
                    "{role} / {purpose}: {} vs {}",
                    outcome(&own),
                    outcome(&other)
                ));
            }
        }
    }
    assert!(told.is_empty(), "an open investigation shows: {told:#?}");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Masked views
// ---------------------------------------------------------------------------------------------

/// Edge values are masked to no more than the mask keeps: anything that does not parse as its
/// type reads `****`.
#[tokio::test(flavor = "multi_thread")]
async fn attack_masked_edge_values_show_no_more_than_the_mask_keeps() {
    let server = TestServer::start().await;
    let cases: Vec<(&str, &str, Option<&str>, &[&str])> = vec![
        // (field, stored value, exact mask expected or None, substrings that must not show)
        ("iban", "NL91", Some("****"), &["91"]),
        (
            "iban",
            "NL91ABNA0417164300 and NL02RABO0123456789",
            Some("****"),
            &["RABO", "ABNA", "6789"],
        ),
        (
            "iban",
            "nl91abna0417164300",
            None,
            &["abna", "ABNA", "0417", "1643"],
        ),
        (
            "iban",
            "NO9386011117947",
            Some("NO** **** ***7 947"),
            &["9386", "8601", "1111"],
        ),
        ("iban", "NL91ABNA0417164300\n", None, &["ABNA", "0417"]),
        ("phone", "12345", Some("****"), &["123", "45"]),
        (
            "phone",
            "06-12345678 of 06-87654321",
            Some("****"),
            &["876", "543"],
        ),
        (
            "phone",
            "0612345678;moeder",
            Some("****"),
            &["moeder", "1234"],
        ),
        ("phone", "+31 6 1234567812345678", Some("****"), &["1234"]),
        (
            "email",
            "janjansen.example.nl",
            Some("****"),
            &["jansen", "example"],
        ),
        ("email", "@example.nl", Some("****"), &["example"]),
        ("email", "jan@evil@example.nl", Some("****"), &["evil"]),
        (
            "email",
            "jan@example.nl, piet@geheim.nl",
            Some("****"),
            &["piet", "geheim"],
        ),
        ("email", "\"jan@home\"@example.nl", None, &["home"]),
        (
            "email",
            "jan@example.nl (06-12345678)",
            Some("****"),
            &["12345678"],
        ),
        ("date_of_birth", "1984-02-30", Some("****"), &["1984"]),
        (
            "date_of_birth",
            "1984-03-07 overleden 2020-01-01",
            Some("****"),
            &["overleden", "2020"],
        ),
        ("date_of_birth", "07-03-1984", Some("1984"), &["07-03"]),
    ];
    let cs = server.token(Role::CustomerService).to_owned();
    let mut failures = Vec::new();
    for (name, value, expect, hidden) in cases {
        let id = put(
            &server,
            Role::FinanceOfficer,
            contract(),
            "REL-0540",
            vec![text(name, "financial", value)],
        )
        .await;
        let read = get(&server, &cs, contract(), &id).await.unwrap();
        let Some(f) = field(&read, name) else {
            continue; // withheld entirely: shows nothing
        };
        assert!(f.masked, "{name} = {value:?} returned unmasked");
        let shown = text_of(f);
        if let Some(e) = expect
            && shown != e
        {
            failures.push(format!("{name} = {value:?} shows {shown:?}, want {e:?}"));
        }
        if let Some(leak) = contains_any(shown, hidden) {
            failures.push(format!("{name} = {value:?} shows {shown:?} ({leak})"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    server.stop().await;
}

/// Neither another channel, break-glass nor another declared purpose turns a masked view into
/// the value; social media gets not even the masked view.
#[tokio::test(flavor = "multi_thread")]
async fn attack_masked_view_is_not_widened_by_context_tricks() {
    let server = TestServer::start().await;
    const IBAN: &str = "NL91ABNA0417164300";
    let id = put(
        &server,
        Role::FinanceOfficer,
        contract(),
        "REL-0550",
        vec![text("iban", "financial", IBAN)],
    )
    .await;
    let cs = server.token(Role::CustomerService).to_owned();
    let base = contract().unwrap();
    let contexts = [
        (
            "break-glass",
            pb::AccessContext {
                break_glass: true,
                case_ref: "EM-1".into(),
                justification: "tenant on the phone, urgent".into(),
                ..base.clone()
            },
        ),
        (
            "social media",
            pb::AccessContext {
                channel: "social-media".into(),
                ..base.clone()
            },
        ),
        (
            "payments",
            pb::AccessContext {
                purpose: "payments".into(),
                ..base.clone()
            },
        ),
        (
            "audit",
            pb::AccessContext {
                purpose: "audit".into(),
                ..base.clone()
            },
        ),
    ];
    for (who, context) in contexts {
        let read = get(&server, &cs, Some(context.clone()), &id).await;
        if let Ok(read) = &read {
            for f in &read.fields {
                let shown = match &f.value {
                    Some(pb::field_value::Value::Text(t)) => t.clone(),
                    Some(pb::field_value::Value::Binary(b)) => hex::encode(b),
                    None => String::new(),
                };
                assert!(!shown.contains("0417"), "{who}: {shown}");
                assert!(f.masked || f.name != "iban", "{who}: unmasked iban");
                if who == "social media" {
                    panic!("social media got a view of bank details: {shown:?}");
                }
            }
        }
        // An explicit field list with odd names does not help either.
        let mut client = server.client().await;
        let named = client
            .get_record(req(
                &cs,
                pb::GetRecordRequest {
                    context: Some(context),
                    record_id: id.clone(),
                    fields: vec!["iban".into(), "iban".into(), "IBAN".into()],
                },
            ))
            .await;
        if let Ok(r) = named {
            let r = r.into_inner();
            assert!(
                r.fields.iter().all(|f| f.masked),
                "{who}: {:?}",
                r.fields.iter().map(|f| &f.name).collect::<Vec<_>>()
            );
        }
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The disclosure register
// ---------------------------------------------------------------------------------------------

/// The subject and the external parties are recipients, not the organisation: they write
/// nothing into its disclosure register.
#[tokio::test(flavor = "multi_thread")]
async fn attack_disclosure_register_is_not_written_by_subjects_or_external_parties() {
    let server = TestServer::start().await;
    let contract_rec = put(
        &server,
        Role::CustomerService,
        contract(),
        SCOPED_SUBJECT,
        vec![text("email", "contact", "me@example.nl")],
    )
    .await;
    let job = put(
        &server,
        Role::MaintenancePlanner,
        ctx("maintenance", "", ""),
        SCOPED_SUBJECT,
        vec![text("phone", "contact", "06-12345678")],
    )
    .await;
    let debt = put(
        &server,
        Role::FinanceOfficer,
        ctx("debt-collection", "", ""),
        SCOPED_SUBJECT,
        vec![text("iban", "financial", "NL91ABNA0417164300")],
    )
    .await;
    let mut written = Vec::new();
    for (role, context, record, field) in [
        (Role::Subject, contract(), &contract_rec, "email"),
        (Role::Representative, contract(), &contract_rec, "email"),
        (Role::Contractor, ctx("maintenance", "", ""), &job, "phone"),
        (
            Role::Bailiff,
            ctx("debt-collection", "DC-1", "executie"),
            &debt,
            "iban",
        ),
        (
            Role::Lawyer,
            ctx("debt-collection", "DC-1", "incasso"),
            &debt,
            "iban",
        ),
    ] {
        let r = record_disclosure(
            &server,
            server.token(role),
            disclosure_request(context, SCOPED_SUBJECT, record, &[field]),
        )
        .await;
        match r {
            Ok(d) => written.push(format!(
                "{role}: {} to {:?} ({})",
                d.disclosure_id, d.recipient, d.recipient_kind
            )),
            Err(s) => assert_eq!(s.code(), Code::PermissionDenied, "{role}: {s:?}"),
        }
    }
    assert!(
        written.is_empty(),
        "recipients wrote the controller's register: {written:#?}"
    );
    // Each attempt is on the trail, refused.
    let refused = audit_entries(&server)
        .into_iter()
        .filter(|e| e["action"] == "disclosure" && e["decision"] == "deny")
        .count();
    assert_eq!(refused, 5);
    server.stop().await;
}

/// Odd spellings and odd input for a disclosure: refused by name, nothing stored.
#[tokio::test(flavor = "multi_thread")]
async fn attack_record_disclosure_odd_input_is_refused_and_nothing_stored() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::FinanceOfficer,
        ctx("payments", "", ""),
        "REL-0560",
        vec![text("iban", "financial", "NL91ABNA0417164300")],
    )
    .await;
    let fo = server.token(Role::FinanceOfficer).to_owned();
    let payments = ctx("payments", "", "");
    type Edit = Box<dyn Fn(&mut pb::RecordDisclosureRequest)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "recipient_kind",
            Box::new(|r| r.recipient_kind = "Police".into()),
        ),
        (
            "recipient_kind",
            Box::new(|r| r.recipient_kind = "police ".into()),
        ),
        (
            "recipient_kind",
            Box::new(|r| r.recipient_kind = "POLICE".into()),
        ),
        (
            "recipient_kind",
            Box::new(|r| r.recipient_kind = "care_institution".into()),
        ),
        (
            "recipient_kind",
            Box::new(|r| r.recipient_kind = String::new()),
        ),
        (
            "recipient_kind",
            Box::new(|r| r.recipient_kind = "police\u{200B}".into()),
        ),
        (
            "recipient",
            Box::new(|r| r.recipient = "Politie\nMidden".into()),
        ),
        ("recipient", Box::new(|r| r.recipient = "Politie\0".into())),
        (
            "recipient",
            Box::new(|r| r.recipient = "Politie \u{202E}nedreN".into()),
        ),
        (
            "legal_basis",
            Box::new(|r| r.legal_basis = "x".repeat(1 << 20)),
        ),
        (
            "legal_basis",
            Box::new(|r| r.legal_basis = "vordering\r\n".into()),
        ),
        ("legal_basis", Box::new(|r| r.legal_basis = " \t ".into())),
        (
            "legal_basis",
            Box::new(|r| r.legal_basis = "vordering inzake BSN 111222333".into()),
        ),
        ("case_ref", Box::new(|r| r.case_ref = "111222333".into())),
        ("case_ref", Box::new(|r| r.case_ref = "PV\n1".into())),
        ("case_ref", Box::new(|r| r.case_ref = "P".repeat(129))),
        ("fields", Box::new(|r| r.fields = vec!["x".repeat(1 << 16)])),
        (
            "subject_id",
            Box::new(|r| r.subject_id = "REL-0560\u{200B}".into()),
        ),
        ("record_id", Box::new(|r| r.record_id = String::new())),
    ];
    let mut stored = Vec::new();
    for (field, edit) in edits {
        let mut request = disclosure_request(payments.clone(), "REL-0560", &id, &["iban"]);
        edit(&mut request);
        match record_disclosure(&server, &fo, request).await {
            Ok(d) => stored.push(format!("{field}: stored {d:?}")),
            Err(s) => {
                if s.code() != Code::InvalidArgument && s.code() != Code::NotFound {
                    stored.push(format!("{field}: {:?} {}", s.code(), s.message()));
                }
                if !s.message().contains(field) && s.code() == Code::InvalidArgument {
                    stored.push(format!("{field}: not named in {:?}", s.message()));
                }
                assert!(s.message().len() < 2000, "{field}: long message");
            }
        }
    }
    assert!(stored.is_empty(), "{stored:#?}");
    assert!(register(&server, "REL-0560").await.is_empty());
    // A foreign record and a record id that does not exist answer alike.
    let other = put(
        &server,
        Role::FinanceOfficer,
        ctx("payments", "", ""),
        "REL-0561",
        vec![text("iban", "financial", "NL02RABO0123456789")],
    )
    .await;
    let foreign = record_disclosure(
        &server,
        &fo,
        disclosure_request(payments.clone(), "REL-0560", &other, &["iban"]),
    )
    .await
    .unwrap_err();
    let missing = record_disclosure(
        &server,
        &fo,
        disclosure_request(
            payments.clone(),
            "REL-0560",
            &format!("{}0", &other[..other.len() - 1]),
            &["iban"],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(foreign.code(), missing.code());
    // A field the record lacks and a field the caller may not read answer alike (customer
    // service learns no field names of a record through the register).
    let cs = server.token(Role::CustomerService).to_owned();
    let lacks = record_disclosure(
        &server,
        &cs,
        disclosure_request(ctx("contract", "", ""), "REL-0560", &id, &["salary"]),
    )
    .await
    .unwrap_err();
    let holds = record_disclosure(
        &server,
        &cs,
        disclosure_request(ctx("contract", "", ""), "REL-0560", &id, &["iban"]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (lacks.code(), lacks.message()),
        (holds.code(), holds.message()),
        "a field the record holds answers otherwise than one it lacks"
    );
    server.stop().await;
}

/// Every door an external party reads through is registered: the read, a byte range of an
/// evidence file, the evidence export flag; and what it may not do (export) it does not.
#[tokio::test(flavor = "multi_thread")]
async fn attack_external_party_reads_through_no_unregistered_door() {
    let server = TestServer::start_with_config(search_config(None)).await;
    let debt = put(
        &server,
        Role::FinanceOfficer,
        ctx("debt-collection", "", ""),
        SCOPED_SUBJECT,
        vec![text("iban", "financial", "NL91ABNA0417164300")],
    )
    .await;
    let mut start = evidence_start(
        ctx("debt-collection", "", ""),
        "",
        &debt,
        "statement",
        "application/pdf",
        "afschrift.pdf",
    );
    if let Some(pb::evidence_chunk::Part::Start(s)) = &mut start.part {
        s.category = "financial".into();
    }
    let file = upload_bytes(
        &server,
        server.token(Role::FinanceOfficer),
        start,
        b"%PDF-1.7 saldo 1250 euro",
    )
    .await
    .unwrap();
    let bailiff = server.token(Role::Bailiff).to_owned();
    let dc = ctx("debt-collection", "DC-2026-1", "beslag");
    assert_eq!(register(&server, SCOPED_SUBJECT).await.len(), 0);
    // Listing: metadata only, no values, so no disclosure; but no digest either.
    let listed = list_records(&server, &bailiff, dc.clone(), SCOPED_SUBJECT)
        .await
        .unwrap();
    for r in &listed {
        for f in &r.fields {
            if let Some(e) = &f.evidence {
                assert!(
                    e.sha256.is_empty() || !register(&server, SCOPED_SUBJECT).await.is_empty(),
                    "evidence digest given to the bailiff unregistered"
                );
            }
        }
    }
    // A one-byte range: registered.
    let before = register(&server, SCOPED_SUBJECT).await.len();
    let (info, bytes) = download(
        &server,
        &bailiff,
        dc.clone(),
        &file.evidence_id,
        Some((3, 1)),
    )
    .await
    .unwrap();
    assert_eq!(bytes.len(), 1);
    assert!(!info.sha256.is_empty());
    assert!(
        register(&server, SCOPED_SUBJECT).await.len() > before,
        "a range read by the bailiff was not registered"
    );
    // An empty range at the end (only the info message: name and digest): registered or refused.
    let before = register(&server, SCOPED_SUBJECT).await.len();
    let tail = download(
        &server,
        &bailiff,
        dc.clone(),
        &file.evidence_id,
        Some((info.size, 0)),
    )
    .await;
    if let Ok((info, _)) = &tail {
        assert!(
            register(&server, SCOPED_SUBJECT).await.len() > before || info.sha256.is_empty(),
            "the file's name and digest reached the bailiff unregistered"
        );
    }
    // The export flag: the bailiff may not export.
    let mut client = server.client().await;
    let exported = async {
        let mut s = client
            .get_evidence(req(
                &bailiff,
                pb::GetEvidenceRequest {
                    context: dc.clone(),
                    evidence_id: file.evidence_id.clone(),
                    range: None,
                    export: true,
                },
            ))
            .await?
            .into_inner();
        let mut n = 0;
        while let Some(m) = s.message().await? {
            if let Some(pb::evidence_data::Part::Data(d)) = m.part {
                n += d.len();
            }
        }
        Ok::<usize, tonic::Status>(n)
    }
    .await;
    assert!(
        exported.is_err(),
        "the bailiff exported evidence: {exported:?}"
    );
    // Export, full and portable: not the bailiff's, nor the contractor's.
    for role in [Role::Bailiff, Role::Contractor, Role::Lawyer] {
        for portable in [false, true] {
            let r = export(
                &server,
                server.token(role),
                dc.clone(),
                SCOPED_SUBJECT,
                portable,
            )
            .await;
            assert_eq!(
                r.as_ref().err().map(tonic::Status::code),
                Some(Code::PermissionDenied),
                "{role} exported (portable {portable}): {r:?}"
            );
        }
    }
    // A search hit by the bailiff: registered.
    let before = register(&server, SCOPED_SUBJECT).await.len();
    let hits = find(
        &server,
        &bailiff,
        dc.clone(),
        "iban",
        "NL91 ABNA 0417 1643 00",
        0,
    )
    .await
    .unwrap();
    assert_eq!(hits.len(), 1);
    assert!(
        register(&server, SCOPED_SUBJECT).await.len() > before,
        "a hit was not registered"
    );
    server.stop().await;
}

/// The register is the privacy officer's alone; the security officer's report carries none.
#[tokio::test(flavor = "multi_thread")]
async fn attack_the_register_is_listed_by_the_privacy_officer_only() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::FinanceOfficer,
        ctx("payments", "", ""),
        SCOPED_SUBJECT,
        vec![text("iban", "financial", "NL91ABNA0417164300")],
    )
    .await;
    record_disclosure(
        &server,
        server.token(Role::FinanceOfficer),
        disclosure_request(ctx("payments", "", ""), SCOPED_SUBJECT, &id, &["iban"]),
    )
    .await
    .unwrap();
    let mut listed_by = Vec::new();
    for &role in Role::ALL {
        if role == Role::PrivacyOfficer {
            continue;
        }
        for subject in ["", SCOPED_SUBJECT] {
            let r = server
                .admin()
                .await
                .list_disclosures(req(
                    server.token(role),
                    pb::ListDisclosuresRequest {
                        subject_id: subject.into(),
                        since: None,
                        limit: 0,
                    },
                ))
                .await;
            match r {
                Ok(r) => listed_by.push(format!(
                    "{role} ({subject:?}): {}",
                    r.into_inner().disclosures.len()
                )),
                Err(s) => assert!(matches!(s.code(), Code::PermissionDenied), "{role}: {s:?}"),
            }
        }
        if let Ok(report) = server
            .admin()
            .await
            .subject_access_report(req(
                server.token(role),
                pb::SubjectAccessReportRequest {
                    subject_id: SCOPED_SUBJECT.into(),
                    justification: "SAR-1".into(),
                    ..Default::default()
                },
            ))
            .await
        {
            let report = report.into_inner();
            if !report.disclosures.is_empty() {
                listed_by.push(format!("{role}: report with disclosures"));
            }
        }
    }
    assert!(listed_by.is_empty(), "{listed_by:#?}");
    // Bad listing input: refused, not an internal error.
    for (subject, limit, since) in [
        ("REL 0001", 0, None),
        ("", 10_001, None),
        (
            "",
            0,
            Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
        ),
        (
            "",
            0,
            Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
        ),
    ] {
        let r = server
            .admin()
            .await
            .list_disclosures(req(
                server.token(Role::PrivacyOfficer),
                pb::ListDisclosuresRequest {
                    subject_id: subject.into(),
                    since,
                    limit,
                },
            ))
            .await;
        if let Err(s) = r {
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        } else {
            assert!(
                since.is_none_or(|t| t.nanos >= 0 && t.seconds < 1 << 40) && subject.is_empty(),
                "accepted: {subject:?} {limit} {since:?}"
            );
        }
    }
    // The subject's own export line leaves out the case reference and who recorded it.
    let lines = export(
        &server,
        server.token(Role::Subject),
        ctx("payments", "", ""),
        SCOPED_SUBJECT,
        false,
    )
    .await
    .unwrap();
    let line = lines.iter().find(|l| l["type"] == "disclosure").unwrap();
    let s = line.to_string();
    assert!(
        !s.contains("PV-2026-1") && !s.contains("test-finance-officer"),
        "{s}"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Restriction of processing
// ---------------------------------------------------------------------------------------------

/// While a subject is restricted, no non-exempt role reads through any door: search, evidence
/// (read and export), a disclosure, break-glass, the portable export, a claim without a case.
#[tokio::test(flavor = "multi_thread")]
async fn attack_a_restricted_subject_is_read_through_no_other_door() {
    let server = TestServer::start_with_config(search_config(None)).await;
    let me = SCOPED_SUBJECT;
    let contract_rec = put(
        &server,
        Role::CustomerService,
        contract(),
        me,
        vec![text("email", "contact", "restricted@example.nl")],
    )
    .await;
    put(
        &server,
        Role::MaintenancePlanner,
        ctx("maintenance", "", ""),
        me,
        vec![text("phone", "contact", "06-12345678")],
    )
    .await;
    let debt = put(
        &server,
        Role::FinanceOfficer,
        ctx("debt-collection", "", ""),
        me,
        vec![text("iban", "financial", "NL91ABNA0417164300")],
    )
    .await;
    let nuisance = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        me,
        vec![text("statement", "nuisance-evidence", "noise at night")],
    )
    .await;
    let photo = upload_bytes(
        &server,
        server.token(Role::NuisanceOfficer),
        evidence_start(
            nuisance_ctx(),
            "",
            &nuisance,
            "photo",
            "image/jpeg",
            "hal.jpg",
        ),
        b"\xFF\xD8\xFF photo",
    )
    .await
    .unwrap();
    let safety_ctx = || {
        Some(pb::AccessContext {
            purpose: "safety".into(),
            case_ref: "S-2026-1".into(),
            justification: "threat to a neighbour".into(),
            channel: "app".into(),
            break_glass: true,
        })
    };
    let safety = put(
        &server,
        Role::NuisanceOfficer,
        ctx("safety", "S-2026-1", "threat to a neighbour"),
        me,
        vec![text("name", "identity", "J. de Vries")],
    )
    .await;
    // Twins before the restriction.
    let cs = server.token(Role::CustomerService).to_owned();
    assert_eq!(
        find(
            &server,
            &cs,
            contract(),
            "email",
            "restricted@example.nl",
            0
        )
        .await
        .unwrap()
        .len(),
        1
    );
    download(
        &server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &photo.evidence_id,
        None,
    )
    .await
    .unwrap();
    let disclosed_before = register(&server, me).await.len();
    restrict(&server, me).await;

    let mut open = Vec::new();
    // Search.
    for (who, token, context, field, value) in [
        (
            "customer service",
            cs.clone(),
            contract(),
            "email",
            "restricted@example.nl",
        ),
        (
            "contractor",
            server.token(Role::Contractor).to_owned(),
            ctx("maintenance", "", ""),
            "phone",
            "0612345678",
        ),
        (
            "bailiff",
            server.token(Role::Bailiff).to_owned(),
            ctx("debt-collection", "DC-1", "beslag"),
            "iban",
            "NL91ABNA0417164300",
        ),
    ] {
        let r = find(&server, &token, context, field, value, 0).await;
        if matches!(&r, Ok(v) if !v.is_empty()) {
            open.push(format!("find by {who}: {}", outcome(&r)));
        }
    }
    // Evidence, read and export flag.
    for export_flag in [false, true] {
        let mut client = server.client().await;
        let r = client
            .get_evidence(req(
                server.token(Role::NuisanceOfficer),
                pb::GetEvidenceRequest {
                    context: nuisance_ctx(),
                    evidence_id: photo.evidence_id.clone(),
                    range: Some(pb::ByteRange {
                        offset: 0,
                        length: 1,
                    }),
                    export: export_flag,
                },
            ))
            .await;
        if let Ok(r) = r {
            let mut s = r.into_inner();
            if let Ok(Some(_)) = s.message().await {
                open.push(format!(
                    "evidence by the nuisance officer (export {export_flag})"
                ));
            }
        }
    }
    // A disclosure of a restricted record.
    if record_disclosure(
        &server,
        &cs,
        disclosure_request(contract(), me, &contract_rec, &["email"]),
    )
    .await
    .is_ok()
    {
        open.push("RecordDisclosure by customer service".into());
    }
    // Break-glass.
    if let Ok(r) = get(
        &server,
        server.token(Role::NuisanceOfficer),
        safety_ctx(),
        &safety,
    )
    .await
        && !r.fields.is_empty()
    {
        open.push("break-glass read".into());
    }
    // The bailiff's read, and a claim without a case reference.
    if let Ok(r) = get(
        &server,
        server.token(Role::Bailiff),
        ctx("debt-collection", "DC-1", "beslag"),
        &debt,
    )
    .await
        && !r.fields.is_empty()
    {
        open.push("bailiff read".into());
    }
    for case in ["", " ", "\u{200B}"] {
        if let Ok(r) = get(
            &server,
            server.token(Role::LegalCounsel),
            ctx("legal-disputes", case, "claim"),
            &nuisance,
        )
        .await
            && !r.fields.is_empty()
        {
            open.push(format!("legal counsel with case {case:?}"));
        }
    }
    // Portable export by the subject.
    if let Ok(lines) = export(&server, server.token(Role::Subject), contract(), me, true).await
        && lines
            .iter()
            .any(|l| l["fields"].as_array().is_some_and(|f| !f.is_empty()))
    {
        open.push("portable export by the subject".into());
    }
    assert!(
        open.is_empty(),
        "restricted subject read through: {open:#?}"
    );
    assert_eq!(
        register(&server, me).await.len(),
        disclosed_before,
        "a refused read registered a disclosure"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Rectification on a request
// ---------------------------------------------------------------------------------------------

async fn open_request(server: &TestServer, subject: &str, kind: &str) -> pb::SubjectRequest {
    server
        .admin()
        .await
        .open_subject_request(req(
            server.token(Role::PrivacyOfficer),
            pb::OpenSubjectRequestRequest {
                subject_id: subject.into(),
                kind: kind.into(),
                received_at: None,
                note: "letter 12".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// The privacy officer replaces no kind, no evidence file, nothing masked, nothing twice, nothing
/// under a completed request or a request of another subject, nothing under a hold.
#[tokio::test(flavor = "multi_thread")]
async fn attack_rectification_stays_within_its_request_and_the_stored_shape() {
    let server = TestServer::start().await;
    let subject = "REL-0700";
    let record = put(
        &server,
        Role::CustomerService,
        contract(),
        subject,
        vec![
            text("email", "contact", "old@example.nl"),
            binary("signature", "contact", b"\x89PNG sig"),
        ],
    )
    .await;
    let nuisance = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        subject,
        vec![text("statement", "nuisance-evidence", "noise")],
    )
    .await;
    let photo = upload_bytes(
        &server,
        server.token(Role::NuisanceOfficer),
        evidence_start(
            nuisance_ctx(),
            "",
            &nuisance,
            "photo",
            "image/jpeg",
            "p.jpg",
        ),
        b"\xFF\xD8\xFF original",
    )
    .await
    .unwrap();
    let po = server.token(Role::PrivacyOfficer).to_owned();
    let request = open_request(&server, "rel-0700", "rectification").await;
    let other_request = open_request(&server, "REL-0701", "rectification").await;
    let rid = request.request_id.clone();
    let masked = pb::FieldValue {
        masked: true,
        ..text("email", "contact", "m***@example.nl")
    };
    let mut accepted = Vec::new();
    let attempts: Vec<(&str, String, String, Vec<pb::FieldValue>)> = vec![
        (
            "text to binary",
            rid.clone(),
            record.clone(),
            vec![binary("email", "contact", b"bin@example.nl")],
        ),
        (
            "binary to text",
            rid.clone(),
            record.clone(),
            vec![text("signature", "contact", "forged")],
        ),
        (
            "an evidence file replaced by text",
            rid.clone(),
            nuisance.clone(),
            vec![text("photo", "nuisance-evidence", "no photo")],
        ),
        ("masked", rid.clone(), record.clone(), vec![masked]),
        (
            "twice",
            rid.clone(),
            record.clone(),
            vec![
                text("email", "contact", "a@example.nl"),
                text("email", "contact", "b@example.nl"),
            ],
        ),
        (
            "another subject's request",
            other_request.request_id.clone(),
            record.clone(),
            vec![text("email", "contact", "x@example.nl")],
        ),
        (
            "request id in capitals",
            rid.to_uppercase(),
            record.clone(),
            vec![text("email", "contact", "x@example.nl")],
        ),
        (
            "too large",
            rid.clone(),
            record.clone(),
            vec![text("email", "contact", &"x".repeat((1 << 20) + 1))],
        ),
        (
            "uppercase field name",
            rid.clone(),
            record.clone(),
            vec![text("Email", "contact", "x@example.nl")],
        ),
    ];
    for (what, request_id, record_id, fields) in attempts {
        if let Ok(done) = rectify(&server, &po, &request_id, &record_id, fields).await {
            accepted.push(format!("{what}: {:?}", done.fields));
        }
    }
    // Not the security officer, nor a case worker, with the request open.
    for role in [
        Role::SecurityOfficer,
        Role::CustomerService,
        Role::LegalCounsel,
    ] {
        let r = rectify(
            &server,
            server.token(role),
            &rid,
            &record,
            vec![text("email", "contact", "x@example.nl")],
        )
        .await;
        if r.is_ok() {
            accepted.push(format!("{role} rectified"));
        }
    }
    // Under a hold: refused.
    let hold = server
        .admin()
        .await
        .place_hold(req(
            &po,
            pb::PlaceHoldRequest {
                subject_id: subject.into(),
                record_id: record.clone(),
                reason: "claim".into(),
                case_ref: "LD-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    if rectify(
        &server,
        &po,
        &rid,
        &record,
        vec![text("email", "contact", "held@example.nl")],
    )
    .await
    .is_ok()
    {
        accepted.push("under a hold".into());
    }
    server
        .admin()
        .await
        .release_hold(req(
            &po,
            pb::ReleaseHoldRequest {
                hold_id: hold.hold_id,
                justification: "settled".into(),
            },
        ))
        .await
        .unwrap();
    // Completed: refused.
    server
        .admin()
        .await
        .complete_subject_request(req(
            &po,
            pb::CompleteSubjectRequestRequest {
                request_id: rid.clone(),
                justification: "answered".into(),
            },
        ))
        .await
        .unwrap();
    if rectify(
        &server,
        &po,
        &rid,
        &record,
        vec![text("email", "contact", "late@example.nl")],
    )
    .await
    .is_ok()
    {
        accepted.push("under a completed request".into());
    }
    assert!(accepted.is_empty(), "{accepted:#?}");
    // Nothing changed.
    let read = get(
        &server,
        server.token(Role::CustomerService),
        contract(),
        &record,
    )
    .await
    .unwrap();
    assert_eq!(text_of(field(&read, "email").unwrap()), "old@example.nl");
    let (_, bytes) = download(
        &server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &photo.evidence_id,
        None,
    )
    .await
    .unwrap();
    assert_eq!(bytes, b"\xFF\xD8\xFF original");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Deadline extension
// ---------------------------------------------------------------------------------------------

async fn extend(
    server: &TestServer,
    token: String,
    id: String,
    months: u32,
    days: u32,
    reason: String,
) -> Result<pb::SubjectRequest, tonic::Status> {
    server
        .admin()
        .await
        .extend_subject_request(req(
            &token,
            pb::ExtendSubjectRequestRequest {
                request_id: id,
                months,
                days,
                reason,
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Overflowing numbers, nothing at all, more than two months in steps, odd reasons, other
/// roles: refused with the right code, never an internal error.
#[tokio::test(flavor = "multi_thread")]
async fn attack_extension_numbers_and_reasons_are_bounded() {
    let server = TestServer::start().await;
    let request = open_request(&server, "REL-0800", "access").await;
    let rid = request.request_id.clone();
    let po = server.token(Role::PrivacyOfficer).to_owned();
    let mut wrong = Vec::new();
    for (months, days, reason) in [
        (u32::MAX, 0, "archive"),
        (0, u32::MAX, "archive"),
        (u32::MAX, u32::MAX, "archive"),
        (0, 0, "archive"),
        (2, 1, "archive"),
        (0, 63, "archive"),
        (1, 0, " "),
        (1, 0, "archive\n"),
        (1, 0, "archive\u{202E}"),
        (1, 0, "BSN 111222333"),
    ] {
        match extend(
            &server,
            po.clone(),
            rid.clone(),
            months,
            days,
            reason.into(),
        )
        .await
        {
            Ok(r) => wrong.push(format!(
                "{months}m {days}d {reason:?}: extended to {:?}",
                r.due_at
            )),
            Err(s) => {
                if !matches!(s.code(), Code::InvalidArgument | Code::FailedPrecondition) {
                    wrong.push(format!("{months}m {days}d: {:?} {}", s.code(), s.message()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // In steps: one month, then one month, then one day more is refused.
    extend(&server, po.clone(), rid.clone(), 1, 0, "archive".into())
        .await
        .unwrap();
    let second = extend(&server, po.clone(), rid.clone(), 1, 0, "archive".into()).await;
    if let Ok(second) = &second {
        let due = second.due_at.as_ref().unwrap().seconds;
        let original = second.original_due_at.as_ref().unwrap().seconds;
        assert!(due - original <= 62 * 86_400, "more than two months");
        if extend(&server, po.clone(), rid.clone(), 0, 1, "archive".into())
            .await
            .is_ok()
        {
            wrong.push("a third step past two months".into());
        }
    }
    for role in [
        Role::SecurityOfficer,
        Role::CustomerService,
        Role::LegalCounsel,
    ] {
        if extend(
            &server,
            server.token(role).to_owned(),
            rid.clone(),
            0,
            1,
            "x".into(),
        )
        .await
        .is_ok()
        {
            wrong.push(format!("{role} extended"));
        }
    }
    // A request that does not exist, and one in capitals: not found or invalid, never extended.
    for id in ["req_0000000000000000", &rid.to_uppercase()] {
        if let Err(s) = extend(&server, po.clone(), id.to_owned(), 0, 1, "x".into()).await {
            assert!(
                matches!(
                    s.code(),
                    Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition
                ),
                "{id}: {s:?}"
            );
        } else {
            wrong.push(format!("{id} extended"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Portable export and the export with evidence files
// ---------------------------------------------------------------------------------------------

/// The portable export carries only what the subject provided: no evidence, no labels, no
/// access, disclosure or restriction lines, nothing of other purposes.
#[tokio::test(flavor = "multi_thread")]
async fn attack_portable_export_carries_nothing_beyond_what_the_subject_provided() {
    let server = TestServer::start().await;
    let me = SCOPED_SUBJECT;
    let contract_rec = server
        .client()
        .await
        .put_record(req(
            server.token(Role::CustomerService),
            pb::PutRecordRequest {
                context: contract(),
                subject_id: me.into(),
                fields: vec![text("email", "contact", "me@example.nl")],
                labels: [("dossier".to_owned(), "LBL-SECRET-7".to_owned())].into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .record_id;
    let mut start = evidence_start(
        contract(),
        "",
        &contract_rec,
        "id_scan",
        "application/pdf",
        "contract-bijlage.pdf",
    );
    if let Some(pb::evidence_chunk::Part::Start(s)) = &mut start.part {
        s.category = "financial".into();
    }
    let file = upload_bytes(
        &server,
        server.token(Role::FinanceOfficer),
        start,
        b"%PDF bijlage",
    )
    .await
    .unwrap();
    put(
        &server,
        Role::FraudInvestigator,
        ctx("housing-fraud", "HF-1", "subletting"),
        me,
        vec![text("finding", "fraud", "FRAUD-SECRET")],
    )
    .await;
    put(
        &server,
        Role::FinanceOfficer,
        ctx("debt-collection", "", ""),
        me,
        vec![text("debt", "financial", "DEBT-SECRET")],
    )
    .await;
    record_disclosure(
        &server,
        server.token(Role::CustomerService),
        disclosure_request(contract(), me, &contract_rec, &["email"]),
    )
    .await
    .unwrap();
    let lines = export(&server, server.token(Role::Subject), contract(), me, true)
        .await
        .unwrap();
    let all = serde_json::to_string(&lines).unwrap();
    for leak in [
        "LBL-SECRET-7",
        file.evidence_id.as_str(),
        "contract-bijlage",
        file.sha256.as_str(),
        "FRAUD-SECRET",
        "DEBT-SECRET",
        "Politie",
        "\"access\"",
        "\"disclosure\"",
    ] {
        assert!(
            !all.contains(leak),
            "`{leak}` in the portable export: {all}"
        );
    }
    // Not for customer service, the privacy officer's declared purpose aside.
    for role in [Role::CustomerService, Role::Analyst, Role::SecurityOfficer] {
        let r = export(&server, server.token(role), contract(), me, true).await;
        assert!(r.is_err(), "{role} exported portably");
    }
    server.stop().await;
}

/// `--with-evidence --force` replaces a planted symlink, never writes through it; a caller that
/// may not export gets no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_export_with_evidence_writes_through_no_planted_link() {
    let server = TestServer::start().await;
    let me = SCOPED_SUBJECT;
    let record = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        me,
        vec![text("statement", "nuisance-evidence", "noise")],
    )
    .await;
    let photo = upload_bytes(
        &server,
        server.token(Role::NuisanceOfficer),
        evidence_start(
            nuisance_ctx(),
            "",
            &record,
            "photo",
            "image/jpeg",
            "hal.jpg",
        ),
        b"\xFF\xD8\xFF photo bytes",
    )
    .await
    .unwrap();
    let dir = private_tempdir();
    let evidence = dir.path().join("evidence");
    std::fs::create_dir(&evidence).unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"keep me").unwrap();
    let target = evidence.join(format!("{}-hal.jpg", photo.evidence_id));
    std::os::unix::fs::symlink(&victim, &target).unwrap();
    let lines = dir.path().join("export.jsonl");
    let run = |token: &str, force: bool| {
        let mut args = vec![
            "admin".to_owned(),
            "--server".to_owned(),
            format!("http://{}", server.addr),
            "export".into(),
            "--subject".into(),
            me.into(),
            "--case-ref".into(),
            "SAR-2026-9".into(),
            "--justification".into(),
            "access request".into(),
            "--with-evidence".into(),
            evidence.to_str().unwrap().into(),
            "--output".into(),
            lines.to_str().unwrap().into(),
        ];
        if force {
            args.push("--force".into());
        }
        std::process::Command::new(env!("CARGO_BIN_EXE_kluis"))
            .args(&args)
            .env_remove("KLUIS_TOKEN_FILE")
            .env("KLUIS_TOKEN", token)
            .env("KLUIS_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = run(server.token(Role::PrivacyOfficer), true);
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"keep me",
        "the export wrote through a planted symlink (exit {:?}, {})",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    // A caller that may not export: no file, non-zero exit.
    let other = private_tempdir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kluis"))
        .args([
            "admin",
            "--server",
            &format!("http://{}", server.addr),
            "export",
            "--subject",
            me,
            "--case-ref",
            "N-2026-0042",
            "--justification",
            "handling the complaint",
            "--with-evidence",
            other.path().join("ev").to_str().unwrap(),
            "--output",
            other.path().join("x.jsonl").to_str().unwrap(),
        ])
        .env_remove("KLUIS_TOKEN_FILE")
        .env("KLUIS_TOKEN", server.token(Role::CustomerService))
        .env("KLUIS_LOG", "warn")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let written: Vec<_> = std::fs::read_dir(other.path().join("ev"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "{written:?}");
    server.stop().await;
}

/// What the subject's own export says about an open investigation: nothing, not through an
/// access line of a search that found them, nor a disclosure line, nor an evidence file fetched
/// with the export flag.
#[tokio::test(flavor = "multi_thread")]
async fn attack_the_subjects_export_reveals_no_open_investigation() {
    let server = TestServer::start_with_config(search_config(None)).await;
    let me = SCOPED_SUBJECT;
    put(
        &server,
        Role::CustomerService,
        contract(),
        me,
        vec![text("email", "contact", "me@example.nl")],
    )
    .await;
    let fraud_ctx = || ctx("housing-fraud", "HF-2026-77", "subletting suspected");
    let fraud = put(
        &server,
        Role::FraudInvestigator,
        fraud_ctx(),
        me,
        vec![
            text("email", "contact", "me@example.nl"),
            text("finding", "fraud", "sublets to a third party"),
        ],
    )
    .await;
    let nuisance = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        me,
        vec![text("statement", "nuisance-evidence", "noise")],
    )
    .await;
    let photo = upload_bytes(
        &server,
        server.token(Role::NuisanceOfficer),
        evidence_start(
            nuisance_ctx(),
            "",
            &nuisance,
            "photo",
            "image/jpeg",
            "hal.jpg",
        ),
        b"\xFF\xD8\xFF photo",
    )
    .await
    .unwrap();
    // The investigator searches, reads and discloses to the police.
    let hits = find(
        &server,
        server.token(Role::FraudInvestigator),
        fraud_ctx(),
        "email",
        "me@example.nl",
        0,
    )
    .await
    .unwrap();
    assert_eq!(hits.len(), 1);
    get(
        &server,
        server.token(Role::FraudInvestigator),
        fraud_ctx(),
        &fraud,
    )
    .await
    .unwrap();
    record_disclosure(
        &server,
        server.token(Role::FraudInvestigator),
        disclosure_request(fraud_ctx(), me, &fraud, &["email", "finding"]),
    )
    .await
    .unwrap();
    let mut shown = Vec::new();
    for role in [Role::Subject, Role::Representative] {
        for portable in [false, true] {
            let exported = export(&server, server.token(role), contract(), me, portable).await;
            if role == Role::Subject {
                // The twin: the subject's own export works and holds their contract data.
                let all = serde_json::to_string(exported.as_ref().unwrap()).unwrap();
                assert!(all.contains("me@example.nl"), "{all}");
            }
            if let Ok(lines) = exported {
                let all = serde_json::to_string(&lines).unwrap();
                if let Some(leak) = contains_any(
                    &all,
                    &[
                        "housing-fraud",
                        "HF-2026",
                        &fraud,
                        "Politie",
                        "nuisance",
                        &nuisance,
                    ],
                ) {
                    shown.push(format!(
                        "{role} export (portable {portable}) names `{leak}`"
                    ));
                }
            }
        }
        // The evidence file of the open case, by id, with and without the export flag.
        for export_flag in [false, true] {
            let mut client = server.client().await;
            let r = client
                .get_evidence(req(
                    server.token(role),
                    pb::GetEvidenceRequest {
                        context: nuisance_ctx(),
                        evidence_id: photo.evidence_id.clone(),
                        range: None,
                        export: export_flag,
                    },
                ))
                .await;
            if let Ok(r) = r
                && let Ok(Some(_)) = r.into_inner().message().await
            {
                shown.push(format!(
                    "{role} fetched the open case's evidence (export {export_flag})"
                ));
            }
        }
    }
    assert!(shown.is_empty(), "{shown:#?}");
    server.stop().await;
}

/// A representative's export keeps within the mandate's categories and purposes.
#[tokio::test(flavor = "multi_thread")]
async fn attack_a_representatives_export_stays_within_the_mandate() {
    let server = TestServer::start_with_config(search_config(None)).await;
    let me = SCOPED_SUBJECT;
    let rec = put(
        &server,
        Role::CustomerService,
        contract(),
        me,
        vec![text("email", "contact", "me@example.nl")],
    )
    .await;
    server
        .client()
        .await
        .update_record(req(
            server.token(Role::FinanceOfficer),
            pb::UpdateRecordRequest {
                context: contract(),
                record_id: rec.clone(),
                fields: vec![text("iban", "financial", "NL91ABNA0417164300")],
            },
        ))
        .await
        .unwrap();
    put(
        &server,
        Role::FinanceOfficer,
        ctx("payments", "", ""),
        me,
        vec![text("bank_account", "financial", "NL02RABO0123456789")],
    )
    .await;
    let mandate = server
        .admin()
        .await
        .grant_mandate(req(
            server.token(Role::PrivacyOfficer),
            pb::GrantMandateRequest {
                subject_id: me.into(),
                representative_id: "test-representative".into(),
                purposes: vec!["contract".into()],
                categories: vec!["contact".into()],
                valid_until: Some(prost_types::Timestamp {
                    seconds: kluis::domain::now_unix() + 30 * 86_400,
                    nanos: 0,
                }),
                justification: "volmacht 2026-4".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let rep = server.token(Role::Representative).to_owned();
    let mut leaks = Vec::new();
    for portable in [false, true] {
        if let Ok(lines) = export(&server, &rep, contract(), me, portable).await {
            let all = serde_json::to_string(&lines).unwrap();
            if let Some(l) = contains_any(&all, &["NL91ABNA0417164300", "NL02RABO0123456789"]) {
                leaks.push(format!("export (portable {portable}) holds {l}"));
            }
        }
    }
    let hit = find(&server, &rep, contract(), "iban", "NL91ABNA0417164300", 0).await;
    let miss = find(&server, &rep, contract(), "iban", "NL02RABO0123456789", 0).await;
    if outcome(&hit) != outcome(&miss) {
        leaks.push(format!("search: {} vs {}", outcome(&hit), outcome(&miss)));
    }
    if let Ok(r) = record_disclosure(
        &server,
        &rep,
        disclosure_request(contract(), me, &rec, &["iban"]),
    )
    .await
    {
        leaks.push(format!("disclosed iban: {}", r.disclosure_id));
    }
    // The twin within the mandate, then the mandate revoked: nothing more.
    let own = find(&server, &rep, contract(), "email", "me@example.nl", 0).await;
    assert_eq!(outcome(&own), format!("ok [{me:?}]"));
    server
        .admin()
        .await
        .revoke_mandate(req(
            server.token(Role::PrivacyOfficer),
            pb::RevokeMandateRequest {
                mandate_id: mandate.mandate_id,
                justification: "volmacht ingetrokken".into(),
            },
        ))
        .await
        .unwrap();
    let after = find(&server, &rep, contract(), "email", "me@example.nl", 0).await;
    if matches!(&after, Ok(v) if !v.is_empty()) {
        leaks.push(format!("found after revocation: {}", outcome(&after)));
    }
    if export(&server, &rep, contract(), me, true)
        .await
        .is_ok_and(|l| l.len() > 1)
    {
        leaks.push("portable export after revocation".into());
    }
    assert!(leaks.is_empty(), "{leaks:#?}");
    server.stop().await;
}

/// Restriction of processing is the privacy officer's: no other role places, lifts or lists it;
/// bad input is refused by name; a completed request is not extended.
#[tokio::test(flavor = "multi_thread")]
async fn attack_restrictions_and_requests_are_managed_by_the_privacy_officer_only() {
    let server = TestServer::start().await;
    restrict(&server, "REL-0900").await;
    let mut wrong = Vec::new();
    for &role in Role::ALL {
        if role == Role::PrivacyOfficer {
            continue;
        }
        let token = server.token(role).to_owned();
        let mut admin = server.admin().await;
        if admin
            .restrict_processing(req(
                &token,
                pb::RestrictProcessingRequest {
                    subject_id: SCOPED_SUBJECT.into(),
                    reason: "x".into(),
                },
            ))
            .await
            .is_ok()
        {
            wrong.push(format!("{role} restricted"));
        }
        if admin
            .lift_restriction(req(
                &token,
                pb::LiftRestrictionRequest {
                    subject_id: "REL-0900".into(),
                    justification: "x".into(),
                },
            ))
            .await
            .is_ok()
        {
            wrong.push(format!("{role} lifted"));
        }
        if let Ok(r) = admin
            .list_restrictions(req(
                &token,
                pb::ListRestrictionsRequest {
                    subject_id: String::new(),
                },
            ))
            .await
            && !r.into_inner().restrictions.is_empty()
        {
            wrong.push(format!("{role} listed restrictions"));
        }
        if let Ok(r) = admin
            .list_subject_requests(req(
                &token,
                pb::ListSubjectRequestsRequest {
                    overdue_only: false,
                },
            ))
            .await
            && !r.into_inner().requests.is_empty()
        {
            wrong.push(format!("{role} listed subject requests"));
        }
    }
    let po = server.token(Role::PrivacyOfficer).to_owned();
    for (subject, reason) in [
        ("REL-0901", " "),
        ("REL-0901", "BSN 111222333"),
        ("REL-0901", "contested\u{202E}"),
        ("REL-0901", "contested\n"),
        ("REL 0901", "contested"),
        ("", "contested"),
    ] {
        let r = server
            .admin()
            .await
            .restrict_processing(req(
                &po,
                pb::RestrictProcessingRequest {
                    subject_id: subject.into(),
                    reason: reason.into(),
                },
            ))
            .await;
        match r {
            Ok(_) => wrong.push(format!("restricted {subject:?} for {reason:?}")),
            Err(s) => {
                if s.code() != Code::InvalidArgument || s.message().contains("111222333") {
                    wrong.push(format!(
                        "{subject:?} {reason:?}: {:?} {}",
                        s.code(),
                        s.message()
                    ));
                }
            }
        }
    }
    // A completed request is not extended.
    let request = open_request(&server, "REL-0902", "access").await;
    server
        .admin()
        .await
        .complete_subject_request(req(
            &po,
            pb::CompleteSubjectRequestRequest {
                request_id: request.request_id.clone(),
                justification: "answered".into(),
            },
        ))
        .await
        .unwrap();
    if extend(
        &server,
        po.clone(),
        request.request_id.clone(),
        0,
        7,
        "archive".into(),
    )
    .await
    .is_ok()
    {
        wrong.push("a completed request extended".into());
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    server.stop().await;
}

/// A rectified searchable value is found under its new value and no longer under the old one.
#[tokio::test(flavor = "multi_thread")]
async fn attack_a_rectified_value_is_searched_as_it_is_now() {
    let server = TestServer::start_with_config(search_config(None)).await;
    let record = put(
        &server,
        Role::CustomerService,
        contract(),
        "REL-0950",
        vec![text("email", "contact", "wrong@example.nl")],
    )
    .await;
    let request = open_request(&server, "REL-0950", "rectification").await;
    rectify(
        &server,
        server.token(Role::PrivacyOfficer),
        &request.request_id,
        &record,
        vec![text("email", "contact", "right@example.nl")],
    )
    .await
    .unwrap();
    let cs = server.token(Role::CustomerService).to_owned();
    let old = find(&server, &cs, contract(), "email", "wrong@example.nl", 0).await;
    let new = find(&server, &cs, contract(), "email", "right@example.nl", 0).await;
    assert!(old.as_ref().is_ok_and(Vec::is_empty), "{}", outcome(&old));
    assert_eq!(outcome(&new), "ok [\"REL-0950\"]");
    server.stop().await;
}
