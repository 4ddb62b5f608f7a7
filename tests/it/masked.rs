//! Masked views: a caller the policy allows `read-masked` and not `read` gets a masked form of
//! the value (`masked: true`), decided and audited before the vault opens it; the whole value
//! reaches them through no door: not the read, the listing, the export or a write.

use kluis::{domain::Role, pb};
use prost::Message;

use crate::common::{
    TestServer, audit_entries, ctx, download, evidence_start, field, get, put, req, text, text_of,
    upload_bytes,
};

const IBAN: &str = "NL91ABNA0417164300";
const SUBJECT: &str = "REL-0100";

/// A contract record with bank details (financial, written by the finance officer) and the
/// tenant's name; the financial fields are named for each mask.
async fn contract_record(server: &TestServer) -> String {
    put(
        server,
        Role::FinanceOfficer,
        ctx("contract", "", ""),
        SUBJECT,
        vec![
            text("iban", "financial", IBAN),
            text("bank_account", "financial", "NL91ABNA04171643XY"),
            text("phone", "financial", "+31 6 12345678"),
            text("email", "financial", "jan.jansen@example.nl"),
            text("date_of_birth", "financial", "1984-03-07"),
            text("debt_note", "financial", "arrears of 1250 euro since May"),
        ],
    )
    .await
}

/// No byte string of `secret` (nor its compact digits) in `bytes`.
fn leaks(bytes: &[u8], secret: &str) -> bool {
    bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
}

#[tokio::test]
async fn customer_service_reads_bank_details_masked_by_their_type() {
    let server = TestServer::start().await;
    let id = contract_record(&server).await;
    let cs = server.token(Role::CustomerService);
    let read = get(&server, cs, ctx("contract", "", ""), &id)
        .await
        .unwrap();
    assert!(
        read.withheld.is_empty(),
        "{:?}",
        read.withheld.iter().map(|w| &w.name).collect::<Vec<_>>()
    );
    let expect = [
        ("iban", "NL** **** **** **43 00"),
        ("bank_account", "****"), // not a valid IBAN: masked completely
        ("phone", "+** * ******78"),
        ("email", "j***@example.nl"),
        ("date_of_birth", "1984"),
        ("debt_note", "****"), // no mask configured for it: masked completely
    ];
    for (name, masked) in expect {
        let f = field(&read, name).unwrap_or_else(|| panic!("`{name}` returned"));
        assert!(f.masked, "`{name}` is marked masked");
        assert_eq!(text_of(f), masked, "`{name}`");
    }
    assert_eq!(read.fields.len(), expect.len());
    let bytes = read.encode_to_vec();
    for secret in [IBAN, "12345678", "jan.jansen", "03-07", "1250"] {
        assert!(!leaks(&bytes, secret), "`{secret}` is in the answer");
    }

    // The finance officer reads the values themselves, unmasked.
    let fo = server.token(Role::FinanceOfficer);
    let full = get(&server, fo, ctx("contract", "", ""), &id)
        .await
        .unwrap();
    let iban = field(&full, "iban").unwrap();
    assert!(!iban.masked);
    assert_eq!(text_of(iban), IBAN);
    server.stop().await;
}

#[tokio::test]
async fn the_audit_entry_says_read_masked_for_each_masked_field() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::FinanceOfficer,
        ctx("contract", "", ""),
        SUBJECT,
        vec![text("iban", "financial", IBAN)],
    )
    .await;
    // A name the customer service reads in full, on the same record (written by them).
    let mut client = server.client().await;
    client
        .update_record(req(
            server.token(Role::CustomerService),
            pb::UpdateRecordRequest {
                context: ctx("contract", "", ""),
                record_id: id.clone(),
                fields: vec![text("name", "identity", "Jan Jansen")],
            },
        ))
        .await
        .unwrap();
    let read = get(
        &server,
        server.token(Role::CustomerService),
        ctx("contract", "", ""),
        &id,
    )
    .await
    .unwrap();
    assert!(!field(&read, "name").unwrap().masked);
    assert_eq!(text_of(field(&read, "name").unwrap()), "Jan Jansen");
    assert!(field(&read, "iban").unwrap().masked);

    let entry = audit_entries(&server)
        .into_iter()
        .rev()
        .find(|e| e["action"] == "read")
        .unwrap();
    assert_eq!(entry["decision"], "allow");
    let fields = entry["fields"].as_array().unwrap();
    let of = |name: &str| fields.iter().find(|f| f["name"] == name).unwrap().clone();
    assert_eq!(of("iban")["decision"], "read-masked", "{entry}");
    assert_eq!(
        of("iban")["policies"][0],
        "customer-service-masked-bank-details"
    );
    assert_eq!(of("name")["decision"], "allow");
    assert!(!leaks(entry.to_string().as_bytes(), IBAN));
    assert!(!leaks(entry.to_string().as_bytes(), "43 00"));

    // The subject access report tells the masked view apart from a read and a refusal.
    let report = server
        .admin()
        .await
        .subject_access_report(req(
            server.token(Role::PrivacyOfficer),
            pb::SubjectAccessReportRequest {
                subject_id: SUBJECT.into(),
                justification: "SAR-1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let event = report
        .events
        .iter()
        .rev()
        .find(|e| e.action == "read")
        .unwrap();
    assert_eq!(event.fields_masked, ["iban"]);
    assert_eq!(event.fields_allowed, ["name"]);
    assert!(event.fields_denied.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn bank_details_of_payments_records_are_masked_for_customer_service_purposes_only() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::FinanceOfficer,
        ctx("payments", "", ""),
        SUBJECT,
        vec![text("iban", "financial", IBAN)],
    )
    .await;
    let cs = server.token(Role::CustomerService);
    let read = get(&server, cs, ctx("customer-service", "", ""), &id)
        .await
        .unwrap();
    assert_eq!(
        text_of(field(&read, "iban").unwrap()),
        "NL** **** **** **43 00"
    );
    // Not through social media, and not for a purpose that is not customer service's.
    let mut social = ctx("customer-service", "", "").unwrap();
    social.channel = "social-media".into();
    let refused = get(&server, cs, Some(social), &id).await.err().unwrap();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = get(&server, cs, ctx("maintenance", "", ""), &id)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // Another role without `read` gets no masked view either: deny by default.
    let planner = server.token(Role::MaintenancePlanner);
    let refused = get(&server, planner, ctx("payments", "", ""), &id)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(!leaks(refused.message().as_bytes(), IBAN));
    server.stop().await;
}

#[tokio::test]
async fn the_whole_value_reaches_customer_service_through_no_other_door() {
    let server = TestServer::start().await;
    let id = contract_record(&server).await;
    let cs = server.token(Role::CustomerService);
    let mut client = server.client().await;

    // Listing: the fields exist, their sizes (which tell the value's length) are not given.
    let list = client
        .list_records(req(
            cs,
            pb::ListRecordsRequest {
                context: ctx("contract", "", ""),
                subject_id: SUBJECT.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // A masked view is no listing: customer service lists identity and contact fields only,
    // and sizes (which tell a value's length) only of fields it may read.
    for r in &list.records {
        for f in &r.fields {
            assert_ne!(f.category, "financial", "`{}` listed", f.name);
        }
    }
    assert!(!leaks(&list.encode_to_vec(), IBAN));

    // Export: not theirs.
    let export = client
        .export_subject(req(
            cs,
            pb::ExportSubjectRequest {
                portable: false,
                context: ctx("contract", "", ""),
                subject_id: SUBJECT.into(),
            },
        ))
        .await;
    let mut exported = Vec::new();
    match export {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(line)) => exported.extend_from_slice(line.json.as_bytes()),
                    Ok(None) => break,
                    Err(s) => {
                        assert_eq!(s.code(), tonic::Code::PermissionDenied);
                        exported.extend_from_slice(s.message().as_bytes());
                        break;
                    }
                }
            }
        }
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::PermissionDenied);
            exported.extend_from_slice(s.message().as_bytes());
        }
    }
    assert!(!leaks(&exported, IBAN));
    assert!(!leaks(&exported, "43 00"));

    // Naming the field: masked, never in full.
    let named = client
        .get_record(req(
            cs,
            pb::GetRecordRequest {
                context: ctx("contract", "", ""),
                record_id: id.clone(),
                fields: vec!["iban".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named.fields.len(), 1);
    assert!(named.fields[0].masked);
    assert!(!leaks(&named.encode_to_vec(), IBAN));

    // A write: a masked view is never stored back, and customer service may not replace bank
    // details (the refusal echoes no value).
    let mut echoed = text("iban", "financial", "NL** **** **** **43 00");
    echoed.masked = true;
    let refused = client
        .update_record(req(
            server.token(Role::FinanceOfficer),
            pb::UpdateRecordRequest {
                context: ctx("contract", "", ""),
                record_id: id.clone(),
                fields: vec![echoed],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("fields[0].masked"),
        "{}",
        refused.message()
    );
    let refused = client
        .update_record(req(
            cs,
            pb::UpdateRecordRequest {
                context: ctx("contract", "", ""),
                record_id: id.clone(),
                fields: vec![text("iban", "financial", "NL20INGB0001234567")],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(!leaks(refused.message().as_bytes(), IBAN));
    // Evidence (a bank statement on the contract record) is never a masked view: refused.
    let mut start = evidence_start(
        ctx("contract", "", ""),
        "",
        &id,
        "statement",
        "application/pdf",
        "afschrift.pdf",
    );
    if let Some(pb::evidence_chunk::Part::Start(s)) = &mut start.part {
        s.category = "financial".into();
    }
    let statement = format!("%PDF-1.7 {IBAN}");
    let file = upload_bytes(
        &server,
        server.token(Role::FinanceOfficer),
        start,
        statement.as_bytes(),
    )
    .await
    .unwrap();
    let refused = download(
        &server,
        cs,
        ctx("contract", "", ""),
        &file.evidence_id,
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(!leaks(refused.message().as_bytes(), IBAN));
    // The stored value is the one the finance officer wrote.
    let full = get(
        &server,
        server.token(Role::FinanceOfficer),
        ctx("contract", "", ""),
        &id,
    )
    .await
    .unwrap();
    assert_eq!(text_of(field(&full, "iban").unwrap()), IBAN);
    server.stop().await;
}

#[tokio::test]
async fn masks_follow_the_configured_field_names() {
    let masks = [("iban".to_owned(), vec!["rekening".to_owned()])]
        .into_iter()
        .collect();
    let server = TestServer::start_with_config(kluis::config::RawConfig {
        masks: Some(masks),
        ..Default::default()
    })
    .await;
    let id = put(
        &server,
        Role::FinanceOfficer,
        ctx("contract", "", ""),
        SUBJECT,
        vec![
            text("rekening", "financial", "NL91 ABNA 0417 1643 00"),
            text("iban", "financial", IBAN),
        ],
    )
    .await;
    let read = get(
        &server,
        server.token(Role::CustomerService),
        ctx("contract", "", ""),
        &id,
    )
    .await
    .unwrap();
    assert_eq!(
        text_of(field(&read, "rekening").unwrap()),
        "NL** **** **** **43 00"
    );
    // `iban` was replaced in the list of the IBAN mask: it is masked completely now.
    assert_eq!(text_of(field(&read, "iban").unwrap()), "****");
    server.stop().await;
}

#[test]
fn a_configuration_naming_an_unknown_mask_is_refused_with_its_key() {
    let raw: kluis::config::RawConfig = toml::from_str(
        r#"
        [masks]
        iban = ["iban", "rekening"]
        postcode = ["postcode"]
        phone = ["Not A Name"]
        "#,
    )
    .unwrap();
    let err = raw.validate(false).unwrap_err().to_string();
    assert!(err.contains("`masks.postcode`"), "{err}");
    assert!(err.contains("`masks.phone[0]`"), "{err}");
}

#[tokio::test]
async fn a_restriction_of_processing_withholds_the_masked_view_too() {
    let server = TestServer::start().await;
    let id = contract_record(&server).await;
    let cs = server.token(Role::CustomerService);
    assert!(
        get(&server, cs, ctx("contract", "", ""), &id)
            .await
            .unwrap()
            .fields
            .iter()
            .any(|f| f.masked)
    );
    server
        .admin()
        .await
        .restrict_processing(req(
            server.token(Role::PrivacyOfficer),
            pb::RestrictProcessingRequest {
                subject_id: SUBJECT.into(),
                reason: "accuracy contested".into(),
            },
        ))
        .await
        .unwrap();
    // Not a masked value either: nothing of the record is read while it is restricted.
    let read = get(&server, cs, ctx("contract", "", ""), &id).await;
    match read {
        Ok(r) => assert!(r.fields.is_empty(), "{:?}", r.fields.len()),
        Err(s) => assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}"),
    }
    let entries = audit_entries(&server);
    let last_read = entries
        .iter()
        .rev()
        .find(|e| e["action"] == "read")
        .unwrap();
    assert_eq!(last_read["decision"], "deny", "{last_read}");
    server.stop().await;
}
