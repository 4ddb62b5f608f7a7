//! The disclosure register: disclosures recorded by callers who may read the fields, registered
//! by kluis for reads by external parties, listed for the privacy officer (gRPC and CLI),
//! reported to the subject in their export, authenticated, and destroyed with the subject's last
//! record.

use std::process::Command;

use kluis::{domain::Role, pb};
use rusqlite::Connection;
use tonic::Code;

use crate::common::{
    SCOPED_SUBJECT, TestClock, TestServer, audit_entries, bad_rows, ctx, download, evidence_start,
    get, put, req, text, upload_bytes,
};

const SUBJECT: &str = "REL-0300";

/// A payments record of `subject` with bank details and a name, written by the finance officer.
async fn payments_record(server: &TestServer, subject: &str) -> String {
    put(
        server,
        Role::FinanceOfficer,
        ctx("payments", "", ""),
        subject,
        vec![
            text("iban", "financial", "NL91ABNA0417164300"),
            text("name", "identity", "J. de Vries"),
        ],
    )
    .await
}

fn disclosure(subject: &str, record: &str, fields: &[&str]) -> pb::RecordDisclosureRequest {
    pb::RecordDisclosureRequest {
        context: ctx("payments", "", ""),
        subject_id: subject.into(),
        record_id: record.into(),
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        recipient: "Deurwaarderskantoor Van Dam".into(),
        recipient_kind: "bailiff".into(),
        legal_basis: "vonnis rechtbank Utrecht, executie".into(),
        case_ref: "DC-2026-14".into(),
    }
}

async fn record(
    server: &TestServer,
    role: Role,
    request: pb::RecordDisclosureRequest,
) -> Result<pb::Disclosure, tonic::Status> {
    server
        .client()
        .await
        .record_disclosure(req(server.token(role), request))
        .await
        .map(tonic::Response::into_inner)
}

async fn list(server: &TestServer, subject: &str) -> Result<Vec<pb::Disclosure>, tonic::Status> {
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
        .map(|r| r.into_inner().disclosures)
}

async fn export(
    server: &TestServer,
    subject: &str,
) -> Result<Vec<serde_json::Value>, tonic::Status> {
    let mut stream = server
        .client()
        .await
        .export_subject(req(
            server.token(Role::PrivacyOfficer),
            pb::ExportSubjectRequest {
                portable: false,
                context: ctx("customer-service", "SAR-2026-9", "subject access request"),
                subject_id: subject.into(),
            },
        ))
        .await?
        .into_inner();
    let mut lines = Vec::new();
    while let Some(line) = stream.message().await? {
        lines.push(serde_json::from_str(&line.json).unwrap());
    }
    Ok(lines)
}

fn stored_disclosures(server: &TestServer, subject: &str) -> i64 {
    Connection::open(server.db_path())
        .unwrap()
        .query_row(
            "SELECT count(*) FROM disclosures WHERE subject = ?1",
            [subject],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn a_disclosure_is_recorded_listed_exported_and_reported() {
    let server = TestServer::start().await;
    let id = payments_record(&server, SUBJECT).await;
    let d = record(
        &server,
        Role::FinanceOfficer,
        disclosure(SUBJECT, &id, &["iban", "name"]),
    )
    .await
    .unwrap();
    assert!(d.disclosure_id.starts_with("dsc_"), "{}", d.disclosure_id);
    assert_eq!(d.subject_id, SUBJECT);
    assert_eq!(d.record_id, id);
    assert_eq!(d.purpose, "payments");
    assert_eq!(d.fields, ["iban", "name"]);
    assert_eq!(d.categories, ["financial", "identity"]);
    assert_eq!(d.recipient_kind, "bailiff");
    assert_eq!(d.recorded_by, "test-finance-officer");
    assert!(!d.automatic);

    // The privacy officer lists it, by subject and by time.
    let listed = list(&server, SUBJECT).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].disclosure_id, d.disclosure_id);
    assert_eq!(listed[0].recipient, "Deurwaarderskantoor Van Dam");
    assert_eq!(listed[0].legal_basis, "vonnis rechtbank Utrecht, executie");
    assert_eq!(listed[0].case_ref, "DC-2026-14");
    assert!(list(&server, "REL-0301").await.unwrap().is_empty());
    let mut admin = server.admin().await;
    let later = admin
        .list_disclosures(req(
            server.token(Role::PrivacyOfficer),
            pb::ListDisclosuresRequest {
                subject_id: String::new(),
                since: Some(prost_types::Timestamp {
                    seconds: d.disclosed_at.as_ref().unwrap().seconds + 1,
                    nanos: 0,
                }),
                limit: 10,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(later.disclosures.is_empty());
    // Nobody else lists the register.
    for role in [
        Role::FinanceOfficer,
        Role::SecurityOfficer,
        Role::CustomerService,
    ] {
        let refused = admin
            .list_disclosures(req(
                server.token(role),
                pb::ListDisclosuresRequest::default(),
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{role}");
    }

    // On the trail: the recording (naming the row, not the recipient) and the listing.
    let entries = audit_entries(&server);
    let entry = entries
        .iter()
        .find(|e| e["action"] == "disclosure")
        .unwrap();
    assert_eq!(entry["decision"], "allow");
    assert_eq!(entry["target"], d.disclosure_id.as_str());
    assert_eq!(entry["subject"], SUBJECT);
    assert!(!entry.to_string().contains("Van Dam"), "{entry}");
    assert!(entries.iter().any(|e| e["action"] == "disclosure-list"));

    // The subject's export reports it, without the organisation's case reference.
    let lines = export(&server, SUBJECT).await.unwrap();
    let line = lines.iter().find(|l| l["type"] == "disclosure").unwrap();
    assert_eq!(line["disclosure_id"], d.disclosure_id.as_str());
    assert_eq!(line["recipient"], "Deurwaarderskantoor Van Dam");
    assert_eq!(line["recipient_kind"], "bailiff");
    assert_eq!(line["legal_basis"], "vonnis rechtbank Utrecht, executie");
    assert_eq!(line["fields"][0]["name"], "iban");
    assert_eq!(line["fields"][0]["category"], "financial");
    assert_eq!(
        line["disclosed_at"],
        d.disclosed_at.as_ref().unwrap().seconds
    );
    assert!(line.get("case_ref").is_none(), "{line}");
    assert!(line.get("recorded_by").is_none(), "{line}");

    // And the subject access report lists it.
    let report = admin
        .subject_access_report(req(
            server.token(Role::PrivacyOfficer),
            pb::SubjectAccessReportRequest {
                subject_id: SUBJECT.into(),
                justification: "SAR-2026-9".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.disclosures.len(), 1);
    assert_eq!(report.disclosures[0].disclosure_id, d.disclosure_id);
    // The security officer reads the trail, not the register (recipients are personal data).
    let report = admin
        .subject_access_report(req(
            server.token(Role::SecurityOfficer),
            pb::SubjectAccessReportRequest {
                subject_id: SUBJECT.into(),
                justification: "SAR-2026-9".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!report.events.is_empty());
    assert!(report.disclosures.is_empty());
    assert!(bad_rows(&server).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_caller_who_may_not_read_the_fields_records_nothing() {
    let server = TestServer::start().await;
    let id = payments_record(&server, SUBJECT).await;
    let other = payments_record(&server, "REL-0301").await;
    // Customer service may see the IBAN masked, never read it: no disclosure of it.
    let mut cs = disclosure(SUBJECT, &id, &["iban"]);
    cs.context = ctx("customer-service", "", "");
    let refused = record(&server, Role::CustomerService, cs)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        !refused.message().contains("financial"),
        "{}",
        refused.message()
    );
    // A role without the purpose, a field the record does not hold, and no fields at all.
    let refused = record(
        &server,
        Role::MaintenancePlanner,
        disclosure(SUBJECT, &id, &["name"]),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = record(
        &server,
        Role::FinanceOfficer,
        disclosure(SUBJECT, &id, &["iban", "salary"]),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Another subject's record under this subject's name: as if it did not exist.
    let refused = record(
        &server,
        Role::FinanceOfficer,
        disclosure(SUBJECT, &other, &["iban"]),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    assert!(list(&server, "").await.unwrap().is_empty());
    assert_eq!(stored_disclosures(&server, SUBJECT), 0);
    let denied = audit_entries(&server)
        .into_iter()
        .filter(|e| e["action"] == "disclosure" && e["decision"] == "deny")
        .count();
    assert_eq!(denied, 3);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_the_limit_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let id = payments_record(&server, SUBJECT).await;
    let long = "x".repeat(201);
    let longer = "x".repeat(501);
    type Edit = Box<dyn Fn(&mut pb::RecordDisclosureRequest)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "recipient",
            "required",
            Box::new(|r| r.recipient = "   ".into()),
        ),
        (
            "recipient",
            "200",
            Box::new(move |r| r.recipient = long.clone()),
        ),
        (
            "recipient",
            "BSN",
            Box::new(|r| r.recipient = "burger 111222333".into()),
        ),
        (
            "recipient",
            "recipient",
            Box::new(|r| r.recipient = "Van\u{200B}Dam".into()),
        ),
        (
            "recipient_kind",
            "police",
            Box::new(|r| r.recipient_kind = "press".into()),
        ),
        (
            "legal_basis",
            "required",
            Box::new(|r| r.legal_basis = String::new()),
        ),
        (
            "legal_basis",
            "500",
            Box::new(move |r| r.legal_basis = longer.clone()),
        ),
        (
            "case_ref",
            "whitespace",
            Box::new(|r| r.case_ref = " DC-1".into()),
        ),
        ("fields", "at least one", Box::new(|r| r.fields.clear())),
        (
            "fields[1]",
            "twice",
            Box::new(|r| r.fields = vec!["iban".into(), "iban".into()]),
        ),
        (
            "fields[0]",
            "",
            Box::new(|r| r.fields = vec!["Not A Name".into()]),
        ),
        ("subject_id", "", Box::new(|r| r.subject_id = String::new())),
    ];
    for (field, limit, edit) in cases {
        let mut request = disclosure(SUBJECT, &id, &["iban"]);
        edit(&mut request);
        let refused = record(&server, Role::FinanceOfficer, request)
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{field}: {}",
            refused.message()
        );
        assert!(
            refused.message().contains(&format!("`{field}`")),
            "{field}: {}",
            refused.message()
        );
        assert!(
            refused.message().contains(limit),
            "{field} names `{limit}`: {}",
            refused.message()
        );
        assert!(!refused.message().contains("111222333"));
    }
    assert!(list(&server, "").await.unwrap().is_empty());
    assert_eq!(stored_disclosures(&server, SUBJECT), 0);
    server.stop().await;
}

#[tokio::test]
async fn reads_by_external_parties_are_registered_as_disclosures_before_they_happen() {
    let server = TestServer::start().await;
    let debt = put(
        &server,
        Role::FinanceOfficer,
        ctx("debt-collection", "", ""),
        SCOPED_SUBJECT,
        vec![
            text("iban", "financial", "NL91ABNA0417164300"),
            text("debt", "financial", "1250 euro"),
        ],
    )
    .await;
    let job = put(
        &server,
        Role::MaintenancePlanner,
        ctx("maintenance", "", ""),
        SCOPED_SUBJECT,
        vec![
            text("phone", "contact", "06-12345678"),
            text("name", "identity", "J. de Vries"),
        ],
    )
    .await;
    let read = get(
        &server,
        server.token(Role::Bailiff),
        ctx("debt-collection", "DC-2026-3", ""),
        &debt,
    )
    .await
    .unwrap();
    assert_eq!(read.fields.len(), 2);
    let read = get(
        &server,
        server.token(Role::Contractor),
        ctx("maintenance", "", ""),
        &job,
    )
    .await
    .unwrap();
    assert_eq!(read.fields.len(), 2);
    // A refused read discloses nothing and registers nothing.
    let refused = get(
        &server,
        server.token(Role::Contractor),
        ctx("debt-collection", "", ""),
        &debt,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Staff reads are no disclosures.
    get(
        &server,
        server.token(Role::FinanceOfficer),
        ctx("debt-collection", "", ""),
        &debt,
    )
    .await
    .unwrap();

    // A bank statement as evidence on the debt record: the bailiff's download is a disclosure
    // too, named in the download's audit entry.
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
        b"%PDF-1.7 afschrift",
    )
    .await
    .unwrap();
    let (_, bytes) = download(
        &server,
        server.token(Role::Bailiff),
        ctx("debt-collection", "DC-2026-3", ""),
        &file.evidence_id,
        None,
    )
    .await
    .unwrap();
    assert_eq!(bytes, b"%PDF-1.7 afschrift");

    let listed = list(&server, SCOPED_SUBJECT).await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let by_download = listed.iter().find(|d| d.fields == ["statement"]).unwrap();
    assert!(by_download.automatic);
    assert_eq!(by_download.recipient, "test-bailiff");
    assert_eq!(by_download.categories, ["financial"]);
    let download_entry = audit_entries(&server)
        .into_iter()
        .find(|e| e["action"] == "evidence-read" && e["principal"] == "test-bailiff")
        .unwrap();
    assert!(
        download_entry["reason"]
            .as_str()
            .unwrap()
            .contains(&by_download.disclosure_id),
        "{download_entry}"
    );
    let by_bailiff = listed
        .iter()
        .find(|d| d.record_id == debt && d.fields != ["statement"])
        .unwrap();
    assert!(by_bailiff.automatic);
    assert_eq!(by_bailiff.recipient_kind, "bailiff");
    assert_eq!(by_bailiff.recipient, "test-bailiff");
    assert_eq!(by_bailiff.recorded_by, "test-bailiff");
    assert_eq!(by_bailiff.fields, ["debt", "iban"]);
    assert_eq!(by_bailiff.case_ref, "DC-2026-3");
    assert!(by_bailiff.legal_basis.contains("debt-collection"));
    let by_contractor = listed.iter().find(|d| d.record_id == job).unwrap();
    assert_eq!(by_contractor.recipient_kind, "contractor");
    assert_eq!(by_contractor.recipient, "test-contractor");
    // Each read's audit entry names the disclosure registered for it.
    let entries = audit_entries(&server);
    let read_entry = entries
        .iter()
        .find(|e| e["action"] == "read" && e["principal"] == "test-bailiff")
        .unwrap();
    assert_eq!(read_entry["target"], by_bailiff.disclosure_id.as_str());
    assert!(bad_rows(&server).await.is_empty());
    // Registered by the vault and deleted by hand: the read's and the download's entries name
    // them, so verification finds both gone.
    let db = Connection::open(server.db_path()).unwrap();
    for d in [&by_bailiff.disclosure_id, &by_download.disclosure_id] {
        db.execute("DELETE FROM disclosures WHERE id = ?1", [d])
            .unwrap();
    }
    let mut gone: Vec<String> = bad_rows(&server)
        .await
        .into_iter()
        .filter(|b| b.kind == "disclosure" && b.problem.contains("deleted by hand"))
        .map(|b| b.id)
        .collect();
    gone.sort();
    let mut expected = vec![
        by_bailiff.disclosure_id.clone(),
        by_download.disclosure_id.clone(),
    ];
    expected.sort();
    assert_eq!(gone, expected);
    server.stop().await;
}

#[tokio::test]
async fn a_disclosure_row_edited_or_deleted_by_hand_is_found_and_never_shown() {
    let server = TestServer::start().await;
    let id = payments_record(&server, SUBJECT).await;
    let d = record(
        &server,
        Role::FinanceOfficer,
        disclosure(SUBJECT, &id, &["iban"]),
    )
    .await
    .unwrap();
    let untouched = record(
        &server,
        Role::FinanceOfficer,
        disclosure(SUBJECT, &id, &["name"]),
    )
    .await
    .unwrap();
    assert!(bad_rows(&server).await.is_empty());
    // Someone with the database file makes the recipient look harmless.
    let db = Connection::open(server.db_path()).unwrap();
    db.execute(
        "UPDATE disclosures SET recipient = 'Gemeente Utrecht', recipient_kind = 'municipality' \
         WHERE id = ?1",
        [&d.disclosure_id],
    )
    .unwrap();
    let refused = list(&server, SUBJECT).await.unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss);
    assert!(
        !refused.message().contains("Gemeente"),
        "{}",
        refused.message()
    );
    let refused = export(&server, SUBJECT).await.unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss);
    let bad = bad_rows(&server).await;
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].kind, "disclosure");
    assert_eq!(bad[0].id, d.disclosure_id);
    // Deleted instead: the trail says it was recorded, so verification names it.
    db.execute("DELETE FROM disclosures WHERE id = ?1", [&d.disclosure_id])
        .unwrap();
    let listed = list(&server, SUBJECT).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].disclosure_id, untouched.disclosure_id);
    let bad = bad_rows(&server).await;
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].kind, "disclosure");
    assert_eq!(bad[0].id, d.disclosure_id);
    assert!(
        bad[0].problem.contains("deleted by hand"),
        "{}",
        bad[0].problem
    );
    server.stop().await;
}

#[tokio::test]
async fn disclosures_go_with_the_subjects_last_record_deleted_erased_or_swept() {
    let clock = TestClock::at_now();
    let server = TestServer::start_with_clock(clock.clone()).await;
    let mut client = server.client().await;
    let mut admin = server.admin().await;
    let fo = server.token(Role::FinanceOfficer);

    // Deleted: the first record goes, its disclosure stays; the last goes, all go.
    let a = payments_record(&server, "REL-D1").await;
    let b = payments_record(&server, "REL-D1").await;
    record(
        &server,
        Role::FinanceOfficer,
        disclosure("REL-D1", &a, &["iban"]),
    )
    .await
    .unwrap();
    record(
        &server,
        Role::FinanceOfficer,
        disclosure("REL-D1", &b, &["name"]),
    )
    .await
    .unwrap();
    let delete = |id: &str| {
        req(
            fo,
            pb::DeleteRecordRequest {
                context: ctx("payments", "", ""),
                record_id: id.into(),
            },
        )
    };
    client.delete_record(delete(&a)).await.unwrap();
    assert_eq!(stored_disclosures(&server, "REL-D1"), 2);
    assert_eq!(list(&server, "REL-D1").await.unwrap().len(), 2);
    client.delete_record(delete(&b)).await.unwrap();
    assert_eq!(stored_disclosures(&server, "REL-D1"), 0);
    assert!(list(&server, "REL-D1").await.unwrap().is_empty());

    // Erased: a customer-service record goes with the erasure, and its disclosures with it.
    let c = put(
        &server,
        Role::CustomerService,
        ctx("customer-service", "", ""),
        "REL-D2",
        vec![text("phone", "contact", "06-87654321")],
    )
    .await;
    let mut to_care = disclosure("REL-D2", &c, &["phone"]);
    to_care.context = ctx("customer-service", "", "");
    to_care.recipient_kind = "care-institution".into();
    record(&server, Role::CustomerService, to_care)
        .await
        .unwrap();
    assert_eq!(stored_disclosures(&server, "REL-D2"), 1);
    admin
        .erase_subject(req(
            server.token(Role::PrivacyOfficer),
            pb::EraseSubjectRequest {
                subject_id: "REL-D2".into(),
                justification: "ER-2026-7".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(stored_disclosures(&server, "REL-D2"), 0);

    // Swept: past its retention, the record goes, and the register of the subject with it;
    // another subject's disclosures stay.
    let swept = put(
        &server,
        Role::CustomerService,
        ctx("customer-service", "", ""),
        "REL-D3",
        vec![text("phone", "contact", "06-11112222")],
    )
    .await;
    let kept = payments_record(&server, "REL-D4").await;
    let mut to_police = disclosure("REL-D3", &swept, &["phone"]);
    to_police.context = ctx("customer-service", "", "");
    to_police.recipient_kind = "police".into();
    record(&server, Role::CustomerService, to_police)
        .await
        .unwrap();
    record(
        &server,
        Role::FinanceOfficer,
        disclosure("REL-D4", &kept, &["iban"]),
    )
    .await
    .unwrap();
    clock.advance(3 * 366 * 86_400);
    let result = admin
        .sweep_retention(req(
            server.token(Role::PrivacyOfficer),
            pb::SweepRetentionRequest { dry_run: false },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(result.records.iter().any(|r| r.record_id == swept));
    assert_eq!(stored_disclosures(&server, "REL-D3"), 0);
    assert_eq!(stored_disclosures(&server, "REL-D4"), 1);
    // Gone with their records, not by hand: verification finds nothing amiss.
    assert!(bad_rows(&server).await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_the_register_as_text_and_json() {
    let server = TestServer::start().await;
    let id = payments_record(&server, SUBJECT).await;
    let d = record(
        &server,
        Role::FinanceOfficer,
        disclosure(SUBJECT, &id, &["iban", "name"]),
    )
    .await
    .unwrap();
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kluis"))
            .env_remove("KLUIS_TOKEN_FILE")
            .env_remove("KLUIS_CA_CERT")
            .env("KLUIS_LOG", "warn")
            .env("KLUIS_TOKEN", server.token(Role::PrivacyOfficer))
            .env("KLUIS_SERVER", format!("http://{}", server.addr))
            .arg("admin")
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&["disclosures", "list", "--subject", SUBJECT]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with(&d.disclosure_id), "{text}");
    assert!(
        text.contains("fields=iban,name to bailiff `Deurwaarderskantoor Van Dam`"),
        "{text}"
    );
    assert!(text.contains("case DC-2026-14"), "{text}");
    let out = cli(&["--json", "disclosures", "list", "--since", "1h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(line["disclosure_id"], d.disclosure_id.as_str());
    assert_eq!(line["recipient_kind"], "bailiff");
    assert_eq!(line["fields"][1], "name");
    assert!(line["disclosed_at"].as_str().unwrap().ends_with('Z'));
    // A mistyped moment is a usage error (exit 2), named by its option.
    let out = cli(&["disclosures", "list", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
    // Another role is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_kluis"))
        .env_remove("KLUIS_TOKEN_FILE")
        .env_remove("KLUIS_CA_CERT")
        .env("KLUIS_LOG", "warn")
        .env("KLUIS_TOKEN", server.token(Role::SecurityOfficer))
        .env("KLUIS_SERVER", format!("http://{}", server.addr))
        .args(["admin", "disclosures", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    server.stop().await;
}
