//! Bad input gets INVALID_ARGUMENT with a message naming the field and the limit, and nothing
//! is stored: BSNs, machine-readable zones, unknown names, oversized values.

use kluis::{domain::Role, pb};
use tonic::Code;

use crate::common::*;

async fn try_put(
    server: &TestServer,
    subject: &str,
    fields: Vec<pb::FieldValue>,
) -> Result<String, tonic::Status> {
    try_put_ctx(server, nuisance_ctx(), subject, fields).await
}

async fn try_put_ctx(
    server: &TestServer,
    context: Option<pb::AccessContext>,
    subject: &str,
    fields: Vec<pb::FieldValue>,
) -> Result<String, tonic::Status> {
    let mut client = server.client().await;
    client
        .put_record(req(
            server.token(Role::NuisanceOfficer),
            pb::PutRecordRequest {
                context,
                subject_id: subject.into(),
                fields,
                labels: Default::default(),
            },
        ))
        .await
        .map(|r| r.into_inner().record_id)
}

async fn stored_records(server: &TestServer, subject: &str) -> usize {
    let mut client = server.client().await;
    client
        .list_records(req(
            server.token(Role::PrivacyOfficer),
            pb::ListRecordsRequest {
                context: ctx("nuisance", "", ""),
                subject_id: subject.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .records
        .len()
}

fn invalid(result: Result<String, tonic::Status>, field: &str) -> String {
    let status = result.err().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "message `{}` does not name `{field}`",
        status.message()
    );
    status.message().to_owned()
}

#[tokio::test]
async fn valid_bsn_is_refused_and_invalid_one_is_accepted() {
    let server = TestServer::start().await;
    let msg = invalid(
        try_put(
            &server,
            "REL-0800",
            vec![text("note", "contact", "111222333")],
        )
        .await,
        "fields[0].text",
    );
    assert!(msg.contains("BSN"));
    assert!(!msg.contains("111222333"), "the refused value is echoed");
    invalid(
        try_put(
            &server,
            "REL-0800",
            vec![text("note", "contact", "bsn 111.222.333")],
        )
        .await,
        "fields[0].text",
    );
    invalid(
        try_put(&server, "111222333", vec![text("note", "contact", "x")]).await,
        "subject_id",
    );
    assert_eq!(stored_records(&server, "REL-0800").await, 0);

    let id = try_put(
        &server,
        "REL-0800",
        vec![text("note", "contact", "123456789")],
    )
    .await
    .unwrap();
    let resp = get(
        &server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &id,
    )
    .await
    .unwrap();
    assert_eq!(text_of(&resp.fields[0]), "123456789");
    server.stop().await;
}

#[tokio::test]
async fn identity_document_mrz_is_refused() {
    let server = TestServer::start().await;
    let mrz = "P<NLDDE<BRUIJN<<WILLEKE<LISELOTTE<<<<<<<<<<<\nSPECI20142NLD6503101F2401151999999990<<<<<82";
    let msg = invalid(
        try_put(&server, "REL-0801", vec![text("scan", "contact", mrz)]).await,
        "fields[0].text",
    );
    assert!(msg.contains("identity document"));
    invalid(
        try_put(
            &server,
            "REL-0801",
            vec![binary("scan", "nuisance-evidence", mrz.as_bytes())],
        )
        .await,
        "fields[0].binary",
    );
    assert_eq!(stored_records(&server, "REL-0801").await, 0);
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_name_the_field_and_store_nothing() {
    let server = TestServer::start().await;
    let cases: Vec<(Option<pb::AccessContext>, &str, Vec<pb::FieldValue>, &str)> = vec![
        (None, "REL-0802", vec![text("a", "contact", "x")], "context"),
        (
            ctx("gossip", "", ""),
            "REL-0802",
            vec![text("a", "contact", "x")],
            "context.purpose",
        ),
        (
            nuisance_ctx(),
            "",
            vec![text("a", "contact", "x")],
            "subject_id",
        ),
        (
            nuisance_ctx(),
            "REL\u{0}0802",
            vec![text("a", "contact", "x")],
            "subject_id",
        ),
        (nuisance_ctx(), "REL-0802", vec![], "fields"),
        (
            nuisance_ctx(),
            "REL-0802",
            vec![text("a", "colour", "x")],
            "fields[0].category",
        ),
        (
            nuisance_ctx(),
            "REL-0802",
            vec![text("Robert'); DROP TABLE records;--", "contact", "x")],
            "fields[0].name",
        ),
        (
            nuisance_ctx(),
            "REL-0802",
            vec![text(&"a".repeat(65), "contact", "x")],
            "fields[0].name",
        ),
        (
            nuisance_ctx(),
            "REL-0802",
            vec![text("a", "contact", "x"), text("a", "contact", "y")],
            "fields[1].name",
        ),
        (
            nuisance_ctx(),
            "REL-0802",
            vec![pb::FieldValue {
                name: "a".into(),
                category: "contact".into(),
                value: None,
            }],
            "fields[0]",
        ),
        (
            nuisance_ctx(),
            "REL-0802",
            vec![binary(
                "a",
                "nuisance-evidence",
                &vec![0u8; 1024 * 1024 + 1],
            )],
            "fields[0].binary",
        ),
        (
            nuisance_ctx(),
            "REL-0802",
            (0..257)
                .map(|i| text(&format!("f{i}"), "contact", "x"))
                .collect(),
            "fields",
        ),
    ];
    for (context, subject, fields, names) in cases {
        let msg = invalid(try_put_ctx(&server, context, subject, fields).await, names);
        assert!(!msg.is_empty());
    }
    let big = invalid(
        try_put(
            &server,
            "REL-0802",
            vec![binary(
                "a",
                "nuisance-evidence",
                &vec![0u8; 1024 * 1024 + 1],
            )],
        )
        .await,
        "1048576",
    );
    assert!(big.contains("at most"));
    assert_eq!(stored_records(&server, "REL-0802").await, 0);
    let mut client = server.client().await;
    let status = client
        .get_record(req(
            server.token(Role::NuisanceOfficer),
            pb::GetRecordRequest {
                context: nuisance_ctx(),
                record_id: "' OR 1=1 --".into(),
                fields: vec![],
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .get_record(req(
            server.token(Role::NuisanceOfficer),
            pb::GetRecordRequest {
                context: nuisance_ctx(),
                record_id: format!("rec_{}", "0".repeat(32)),
                fields: vec![],
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}
