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
                ..Default::default()
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
                masked: false,
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

/// A hostile request and the status it must get.
struct Hostile {
    what: &'static str,
    request: pb::PutRecordRequest,
    code: Code,
}

fn hostile(
    what: &'static str,
    context: Option<pb::AccessContext>,
    subject: &str,
    fields: Vec<pb::FieldValue>,
    labels: Vec<(String, String)>,
    code: Code,
) -> Hostile {
    Hostile {
        what,
        request: pb::PutRecordRequest {
            context,
            subject_id: subject.into(),
            fields,
            labels: labels.into_iter().collect(),
        },
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_hostile_requests_gets_the_documented_status_and_stores_nothing() {
    let server = TestServer::start().await;
    let s = "REL-HOSTILE";
    let ok_field = || vec![text("phone", "contact", "06-1")];
    let with_ctx = |purpose: &str, case_ref: &str, justification: &str, channel: &str| {
        Some(pb::AccessContext {
            purpose: purpose.into(),
            case_ref: case_ref.into(),
            justification: justification.into(),
            channel: channel.into(),
            break_glass: false,
        })
    };
    let bad = Code::InvalidArgument;
    let cases = vec![
        hostile(
            "10k fields",
            nuisance_ctx(),
            s,
            (0..10_000)
                .map(|i| text(&format!("f{i}"), "contact", "x"))
                .collect(),
            vec![],
            bad,
        ),
        hostile(
            "empty field name",
            nuisance_ctx(),
            s,
            vec![text("", "contact", "x")],
            vec![],
            bad,
        ),
        hostile(
            "upper-case field name",
            nuisance_ctx(),
            s,
            vec![text("Phone", "contact", "x")],
            vec![],
            bad,
        ),
        hostile(
            "field name with a NUL",
            nuisance_ctx(),
            s,
            vec![text("ph\u{0}one", "contact", "x")],
            vec![],
            bad,
        ),
        hostile(
            "look-alike purpose (Cyrillic a)",
            with_ctx("nuis\u{0430}nce", "N-1", "j", "app"),
            s,
            ok_field(),
            vec![],
            bad,
        ),
        hostile(
            "purpose with trailing space",
            with_ctx("nuisance ", "N-1", "j", "app"),
            s,
            ok_field(),
            vec![],
            bad,
        ),
        hostile(
            "empty purpose",
            with_ctx("", "N-1", "j", "app"),
            s,
            ok_field(),
            vec![],
            bad,
        ),
        hostile(
            "unknown category",
            nuisance_ctx(),
            s,
            vec![text("x", "medical-ish", "x")],
            vec![],
            bad,
        ),
        hostile(
            "look-alike category",
            nuisance_ctx(),
            s,
            vec![text("x", "c\u{043E}ntact", "x")],
            vec![],
            bad,
        ),
        hostile(
            "case reference with a newline",
            with_ctx("nuisance", "N-1\nforged", "j", "app"),
            s,
            ok_field(),
            vec![],
            bad,
        ),
        hostile(
            "justification of 100 KiB",
            with_ctx("nuisance", "N-1", &"j".repeat(100 * 1024), "app"),
            s,
            ok_field(),
            vec![],
            bad,
        ),
        hostile(
            "channel with spaces and capitals",
            with_ctx("nuisance", "N-1", "j", "Carrier Pigeon"),
            s,
            ok_field(),
            vec![],
            bad,
        ),
        hostile(
            "subject of 10 KiB",
            nuisance_ctx(),
            &"R".repeat(10 * 1024),
            ok_field(),
            vec![],
            bad,
        ),
        hostile(
            "subject with control characters",
            nuisance_ctx(),
            "REL-\u{1b}[2J",
            ok_field(),
            vec![],
            bad,
        ),
        hostile(
            "subject is a BSN",
            nuisance_ctx(),
            "111222333",
            ok_field(),
            vec![],
            bad,
        ),
        hostile(
            "subject is a BSN with dots",
            nuisance_ctx(),
            "1112.22.333",
            ok_field(),
            vec![],
            bad,
        ),
        hostile(
            "subject is a BSN with spaces",
            nuisance_ctx(),
            "111 222 333",
            ok_field(),
            vec![],
            bad,
        ),
        hostile(
            "value holds a BSN",
            nuisance_ctx(),
            s,
            vec![text("note", "contact", "bsn: 111222333.")],
            vec![],
            bad,
        ),
        hostile(
            "value holds a BSN in spaced groups",
            nuisance_ctx(),
            s,
            vec![text("note", "contact", "zie 111 222 333 hier")],
            vec![],
            bad,
        ),
        hostile(
            "binary value holds a BSN",
            nuisance_ctx(),
            s,
            vec![binary("note", "contact", b"111222333")],
            vec![],
            bad,
        ),
        hostile(
            "value holds a passport MRZ",
            nuisance_ctx(),
            s,
            vec![text(
                "note",
                "contact",
                "P<NLDDE<BRUIJN<<WILLEKE<LISELOTTE<<<<<<<<<<<\nSPECI20142NLD6503101F2403096999999990<<<<<84",
            )],
            vec![],
            bad,
        ),
        hostile(
            "label holds a BSN",
            nuisance_ctx(),
            s,
            ok_field(),
            vec![("ref".into(), "111222333".into())],
            bad,
        ),
        hostile(
            "33 labels",
            nuisance_ctx(),
            s,
            ok_field(),
            (0..33).map(|i| (format!("k{i}"), "v".into())).collect(),
            bad,
        ),
        hostile(
            "label key of 10 KiB",
            nuisance_ctx(),
            s,
            ok_field(),
            vec![("k".repeat(10 * 1024), "v".into())],
            bad,
        ),
        hostile(
            "label value with a NUL",
            nuisance_ctx(),
            s,
            ok_field(),
            vec![("k".into(), "a\u{0}b".into())],
            bad,
        ),
        hostile(
            "values above the record limit",
            nuisance_ctx(),
            s,
            (0..9)
                .map(|i| {
                    binary(
                        &format!("b{i}"),
                        "nuisance-evidence",
                        &vec![1u8; 1024 * 1024],
                    )
                })
                .collect(),
            vec![],
            bad,
        ),
        hostile(
            "a message above the 16 MiB limit",
            nuisance_ctx(),
            s,
            vec![binary(
                "big",
                "nuisance-evidence",
                &vec![1u8; 17 * 1024 * 1024],
            )],
            vec![],
            Code::OutOfRange,
        ),
    ];
    let tried = cases.len();
    let mut client = server.client().await;
    for case in cases {
        let status = client
            .put_record(req(server.token(Role::NuisanceOfficer), case.request))
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted: {}", case.what));
        assert_eq!(status.code(), case.code, "{}: {status:?}", case.what);
        assert!(!status.message().contains("111222333"), "{}", case.what);
    }
    // Also without credentials, with garbage credentials, and with a token in the wrong place.
    for token in ["", "Bearer", "x".repeat(10_000).as_str(), "' OR 1=1 --"] {
        let mut r = tonic::Request::new(pb::WhoAmIRequest {});
        if let Ok(v) = format!("Bearer {token}").parse() {
            r.metadata_mut().insert("authorization", v);
        }
        let status = client.who_am_i(r).await.err().unwrap();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    assert_eq!(stored_records(&server, s).await, 0);
    // SQL meta-characters are outside a subject id's alphabet: refused at the door, naming the
    // field. Where the alphabet allows them (a label value, kept in clear in its column) they are
    // data, not syntax: stored as they are, and the record is found under its own subject only.
    let sql = "x' OR '1'='1";
    invalid(try_put(&server, sql, ok_field()).await, "subject_id");
    let mut labelled = server.client().await;
    labelled
        .put_record(req(
            server.token(Role::NuisanceOfficer),
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: "REL-SQL".into(),
                fields: ok_field(),
                labels: [("ref".to_owned(), sql.to_owned())].into_iter().collect(),
            },
        ))
        .await
        .unwrap();
    let listed = labelled
        .list_records(req(
            server.token(Role::PrivacyOfficer),
            pb::ListRecordsRequest {
                context: ctx("nuisance", "", ""),
                subject_id: "REL-SQL".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].labels["ref"], sql);
    assert_eq!(stored_records(&server, s).await, 0);
    assert_eq!(
        audit_entries(&server)
            .iter()
            .filter(|e| e["action"] == "write" && e["decision"] == "allow")
            .count(),
        1,
        "{tried} hostile requests, nothing written"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_token_that_floods_the_server_is_slowed_down_and_others_are_not() {
    let server = TestServer::start_with_limits(kluis::config::RawLimits {
        requests_per_second: Some(5),
        ..Default::default()
    })
    .await;
    let mut client = server.client().await;
    let who = |role: Role| req(server.token(role), pb::WhoAmIRequest {});
    let mut refused = None;
    for i in 0..40 {
        if let Err(status) = client.who_am_i(who(Role::NuisanceOfficer)).await {
            refused = Some((i, status));
            break;
        }
    }
    let (i, status) = refused.expect("40 requests at once all passed a limit of 5 per second");
    assert!(i >= 10, "the burst of two seconds' worth passes ({i})");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("requests_per_second"),
        "{status:?}"
    );
    // Another token is not affected; the flooding one recovers.
    client.who_am_i(who(Role::CustomerService)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    client.who_am_i(who(Role::NuisanceOfficer)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_and_an_unauthenticated_flood_do_not_hold_the_server() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let audited = audit_entries(&server).len();
    // Slow-loris: connections that send nothing, or half the HTTP/2 preface and then nothing.
    let mut idle = Vec::new();
    for i in 0..200 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        idle.push(s);
    }
    // A flood of calls with made-up tokens, 8 at a time.
    let mut flood = Vec::new();
    for t in 0..8 {
        let addr = server.addr;
        flood.push(tokio::spawn(async move {
            let mut client = pb::vault_client::VaultClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            for i in 0..125 {
                let status = client
                    .get_record(req(
                        &format!("made-up-{t}-{i}"),
                        pb::GetRecordRequest {
                            context: nuisance_ctx(),
                            record_id: format!("rec_{}", "0".repeat(32)),
                            fields: vec![],
                        },
                    ))
                    .await
                    .err()
                    .unwrap();
                assert_eq!(status.code(), Code::Unauthenticated);
            }
        }));
    }
    // Meanwhile a real client is served (bounded, so a held server fails the test).
    let served = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut client = server.client().await;
        for _ in 0..20 {
            client
                .who_am_i(req(
                    server.token(Role::NuisanceOfficer),
                    pb::WhoAmIRequest {},
                ))
                .await
                .unwrap();
        }
    })
    .await;
    assert!(served.is_ok(), "the server was held by idle connections");
    for f in flood {
        f.await.unwrap();
    }
    // A thousand refused calls left no trace in the store: no audit entry, nothing else.
    assert_eq!(audit_entries(&server).len(), audited);
    drop(idle);
    server.stop().await;
}

/// A BSN or MRZ written in any of the spellings the guard sees through is refused in field
/// values, binary values (UTF-16), labels, case references and subject ids: INVALID_ARGUMENT
/// naming the field, the value not repeated, nothing stored. Ordinary numbers pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bsn_or_mrz_in_any_spelling_is_refused_wherever_it_is_kept_in_clear() {
    let server = TestServer::start().await;
    let s = "REL-0810";
    let full_width = "\u{FF11}\u{FF11}\u{FF11}\u{FF12}\u{FF12}\u{FF12}\u{FF13}\u{FF13}\u{FF13}";
    let arabic = "\u{0661}\u{0661}\u{0661}\u{0662}\u{0662}\u{0662}\u{0663}\u{0663}\u{0663}";
    let mrz_one_line = "p<nlddE<bruijn<<willeke<liselotte<<<<<<<<<<<\
                        speci20142nld6503101f2403096999999990<<<<<84";
    let spellings = [
        full_width,
        arabic,
        "111\u{2009}222\u{2009}333",
        "111\u{202F}222\u{00A0}333",
        "111\u{200B}222\u{FEFF}333",
        "111 - 222 - 333",
        "111\u{2212}222\u{2013}333",
        "111/222_333",
        "BSN111222333",
        "bsn-nummer: 1112.22.333",
        "NL111222333B01",
        "12345672",
        // A letter of another script touching the digits does not make them a code.
        "111222333\u{A0B8}",
        "\u{0416}111222333",
        "\u{4E00}111222333\u{AC00}",
        // Nor does one between the groups: it separates them.
        "111\u{01C0}222\u{01C0}333",
        "111\u{4E00}222\u{4E00}333",
        // A label in look-alike letters says BSN; a sign that decomposes to letters is none.
        "B\u{0405}N111222333",
        "\u{2116}111222333",
        "111222333\u{2122}",
        // A bar-like letter between groups; a suffix after a label; a VAT number touched.
        "111 I 222 I 333",
        "BSN: 111222333X",
        "NL111222333B01\u{0416}",
        // After a label the number is read whatever stands between its digits.
        "bsn nr111222333",
        "BSN \u{20AC} 111222333",
        "BSN: +31 111222333",
        "bsn 111.222.333,00",
        "BSN 111\u{A0}\u{A0}\u{A0}\u{A0}\u{A0}222333",
        "BSN: l23456782",
        "BSN 12-03-2024111222333",
        "bsn 111&#50;22333",
        mrz_one_line,
        "I<NLDSPECI20212999999990<<<<<<6503101F2403096NLD<<<<<<<<<<<8",
    ];
    let le = |t: &str| -> Vec<u8> {
        let mut b = vec![0xFF, 0xFE];
        b.extend(t.encode_utf16().flat_map(u16::to_le_bytes));
        b
    };
    // Big-endian, without a byte order mark when the text is ASCII (its zero bytes show it).
    let be = |t: &str| -> Vec<u8> {
        let bom: &[u8] = if t.is_ascii() { &[] } else { &[0xFE, 0xFF] };
        let mut b = bom.to_vec();
        b.extend(t.encode_utf16().flat_map(u16::to_be_bytes));
        b
    };
    let mut client = server.client().await;
    let mut refused = 0;
    for value in spellings {
        let with_case_ref = |case_ref: &str| {
            Some(pb::AccessContext {
                purpose: "nuisance".into(),
                case_ref: case_ref.into(),
                justification: "handling the complaint".into(),
                channel: "app".into(),
                break_glass: false,
            })
        };
        let mut cases: Vec<(pb::PutRecordRequest, &str)> = vec![
            (
                pb::PutRecordRequest {
                    context: nuisance_ctx(),
                    subject_id: s.into(),
                    fields: vec![text("note", "contact", &format!("zie {value}, graag"))],
                    labels: Default::default(),
                },
                "fields[0].text",
            ),
            (
                pb::PutRecordRequest {
                    context: nuisance_ctx(),
                    subject_id: s.into(),
                    fields: vec![
                        text("phone", "contact", "06-12345678"),
                        binary("scan", "nuisance-evidence", &le(value)),
                    ],
                    labels: Default::default(),
                },
                "fields[1].binary",
            ),
            (
                pb::PutRecordRequest {
                    context: nuisance_ctx(),
                    subject_id: s.into(),
                    fields: vec![binary("scan", "nuisance-evidence", &be(value))],
                    labels: Default::default(),
                },
                "fields[0].binary",
            ),
            (
                pb::PutRecordRequest {
                    context: nuisance_ctx(),
                    subject_id: s.into(),
                    fields: vec![text("phone", "contact", "06-12345678")],
                    labels: [("ref".to_owned(), value.to_owned())].into_iter().collect(),
                },
                "labels[ref]",
            ),
        ];
        if !value.contains(char::is_whitespace) {
            cases.push((
                pb::PutRecordRequest {
                    context: with_case_ref(value),
                    subject_id: s.into(),
                    fields: vec![text("phone", "contact", "06-12345678")],
                    labels: Default::default(),
                },
                "context.case_ref",
            ));
        }
        if value.chars().filter(|c| c.is_numeric()).count() <= 9 {
            cases.push((
                pb::PutRecordRequest {
                    context: nuisance_ctx(),
                    subject_id: value.into(),
                    fields: vec![text("phone", "contact", "06-12345678")],
                    labels: Default::default(),
                },
                "subject_id",
            ));
        }
        for (request, field) in cases {
            let subject = request.subject_id.clone();
            let status = client
                .put_record(req(server.token(Role::NuisanceOfficer), request))
                .await
                .err()
                .unwrap_or_else(|| panic!("accepted {value:?} in {field}"));
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert!(
                status.message().contains(field),
                "message `{}` does not name `{field}`",
                status.message()
            );
            for echo in [value, "111222333", "12345672", "SPECI2014", "speci2014"] {
                assert!(!status.message().contains(echo), "{field} echoes {echo:?}");
            }
            // A subject id that is a BSN cannot even be listed; the audit check below shows
            // that nothing was written for it either.
            if subject == s {
                assert_eq!(stored_records(&server, s).await, 0, "{field}");
            }
            refused += 1;
        }
    }
    assert!(refused >= 70, "{refused} requests tried");
    assert_eq!(stored_records(&server, s).await, 0);
    assert_eq!(
        audit_entries(&server)
            .iter()
            .filter(|e| e["action"] == "write" && e["decision"] == "allow")
            .count(),
        0,
        "nothing written"
    );

    // Ordinary numbers are stored: a mobile number, an IBAN, a postcode, a date and time, an
    // amount, a relation number glued to its letters, a case reference and a label.
    let ordinary = [
        "bel 06-12345672 of +31 6 12345671",
        "IBAN NL91 ABNA 0417 1643 00, postcode 1234 AB",
        "op 12-03-2024 om 1:30 uur, 1 keer",
        "schade \u{20AC} 111.222.333,00",
        "relatie REL111222333",
    ];
    let id = try_put_ctx(
        &server,
        ctx("nuisance", "N-2024-0815", "melding van 15-03-2024"),
        s,
        ordinary
            .iter()
            .enumerate()
            .map(|(i, v)| text(&format!("note{i}"), "contact", v))
            .collect(),
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
    let mut stored: Vec<&str> = resp.fields.iter().map(text_of).collect();
    stored.sort_unstable();
    let mut expected = ordinary.to_vec();
    expected.sort_unstable();
    assert_eq!(stored, expected);
    assert_eq!(stored_records(&server, s).await, 1);
    server.stop().await;
}

/// Whether the store (database and write-ahead log) holds `needle` anywhere, in any row.
fn store_holds(server: &TestServer, needle: &[u8]) -> bool {
    let db = server.db_path();
    let wal = db.with_extension("db-wal");
    [db, wal]
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
}

/// Field names, label keys, the field names of an evidence upload and of a read, and the ids
/// of administrative calls are kept in clear (in rows and in audit entries): a BSN in any of
/// them is refused with INVALID_ARGUMENT naming the field, before anything is stored or
/// audited. Their twins, with digits that fail the eleven-test or glued to letters, pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bsn_in_a_name_or_id_kept_in_clear_is_refused_before_it_is_stored_or_audited() {
    let server = TestServer::start().await;
    let s = "REL-0820";
    let mut client = server.client().await;
    let mut admin = server.admin().await;
    for name in [
        "bsn.111222333",
        "a-111222333",
        "x_111222333",
        "ref.1112.22.333",
    ] {
        let msg = invalid(
            try_put(&server, s, vec![text(name, "contact", "x")]).await,
            "fields[0].name",
        );
        assert!(msg.contains("BSN"), "{msg}");
        let msg = invalid(
            try_put(
                &server,
                s,
                vec![
                    text("phone", "contact", "06-1"),
                    binary(name, "contact", b"x"),
                ],
            )
            .await,
            "fields[1].name",
        );
        assert!(!msg.contains("111"), "{msg}");
        let mut labelled = pb::PutRecordRequest {
            context: nuisance_ctx(),
            subject_id: s.into(),
            fields: vec![text("phone", "contact", "06-1")],
            labels: Default::default(),
        };
        labelled.labels.insert(name.replace('_', "-"), "v".into());
        let status = client
            .put_record(req(server.token(Role::NuisanceOfficer), labelled))
            .await
            .err()
            .unwrap_or_else(|| panic!("label key {name:?} accepted"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("labels"), "{status:?}");
        let status = client
            .get_record(req(
                server.token(Role::NuisanceOfficer),
                pb::GetRecordRequest {
                    context: nuisance_ctx(),
                    record_id: format!("rec_{}", "0".repeat(32)),
                    fields: vec![name.into()],
                },
            ))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("fields[0]"), "{status:?}");
        let status = upload_bytes(
            &server,
            server.token(Role::NuisanceOfficer),
            evidence_start(nuisance_ctx(), s, "", name, "image/jpeg", "foto.jpg"),
            b"jpeg",
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("evidence field {name:?} accepted"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("`start.field`"), "{status:?}");
    }
    let privacy = server.token(Role::PrivacyOfficer);
    let security = server.token(Role::SecurityOfficer);
    for (id, twin) in [
        ("hold_111222333", "hold_123456789"),
        ("hold-111.222.333", "hold_a111222333"),
    ] {
        let release = |hold_id: &str| {
            req(
                privacy,
                pb::ReleaseHoldRequest {
                    hold_id: hold_id.into(),
                    justification: "vrijgeven".into(),
                },
            )
        };
        let status = admin.release_hold(release(id)).await.err().unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("`hold_id`"), "{status:?}");
        let status = admin.release_hold(release(twin)).await.err().unwrap();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        let status = admin
            .revoke_token(req(
                security,
                pb::RevokeTokenRequest {
                    token_id: id.replace("hold", "tok"),
                    justification: "weg".into(),
                },
            ))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("`token_id`"), "{status:?}");
        let status = admin
            .revoke_mandate(req(
                privacy,
                pb::RevokeMandateRequest {
                    mandate_id: id.replace("hold", "mdt"),
                    justification: "weg".into(),
                },
            ))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("`mandate_id`"), "{status:?}");
    }
    assert_eq!(stored_records(&server, s).await, 0);

    // The twins are stored and read back under their names.
    let names = ["bsn.123456789", "a-123456789", "x_123456789", "a111222333"];
    let id = try_put(
        &server,
        s,
        names.iter().map(|n| text(n, "contact", "x")).collect(),
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
    let mut stored: Vec<&str> = resp.fields.iter().map(|f| f.name.as_str()).collect();
    stored.sort_unstable();
    let mut expected = names.to_vec();
    expected.sort_unstable();
    assert_eq!(stored, expected);

    // Nothing refused reached the audit trail or any row.
    let trail = serde_json::to_string(&audit_entries(&server)).unwrap();
    for needle in [
        "-111222333",
        ".111222333",
        "_111222333",
        "111.222.333",
        "1112.22.333",
    ] {
        assert!(!trail.contains(needle), "the audit trail holds {needle}");
    }
    assert!(trail.contains("a111222333"), "the twin is on the trail");
    drop((client, admin));
    let dir_db = server.db_path();
    assert!(dir_db.exists());
    assert!(!store_holds(&server, b"-111222333"));
    assert!(!store_holds(&server, b".111222333"));
    assert!(!store_holds(&server, b"_111222333"));
    server.stop().await;
}

/// Digits hidden between invisible or odd characters, one spelling of each kind, are refused
/// in a field value over gRPC, and the same spelling of digits that fail the eleven-test is
/// stored as it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_hidden_by_invisible_or_odd_characters_are_refused_and_their_twins_stored() {
    let server = TestServer::start().await;
    let s = "REL-0821";
    let spell = |d: &str, how: usize| -> String {
        let c: Vec<char> = d.chars().collect();
        let each = |sep: &str| c.iter().map(|x| format!("{x}{sep}")).collect::<String>();
        let groups = |sep: &str| {
            let g = |a: usize| c[a..a + 3].iter().collect::<String>();
            format!("{}{sep}{}{sep}{}", g(0), g(3), g(6))
        };
        match how {
            0 => each("\u{FE0F}"),
            1 => each("\u{E0020}"),
            2 => groups("\u{3164}"),
            3 => each("\u{034F}"),
            4 => c.iter().map(|x| format!("{x}\u{0301} ")).collect(),
            5 => groups(" -- "),
            6 => groups("|"),
            7 => groups("+"),
            8 => groups("x"),
            9 => {
                let g = |a: usize| c[a..a + 3].iter().collect::<String>();
                format!("{}<b>{}</b>{}", g(0), g(3), g(6))
            }
            10 => groups("&nbsp;"),
            _ => groups(","),
        }
    };
    let mut twins = Vec::new();
    for how in 0..12 {
        let value = format!("melding: {}.", spell("111222333", how));
        let msg = invalid(
            try_put(&server, s, vec![text("note", "contact", &value)]).await,
            "fields[0].text",
        );
        assert!(msg.contains("BSN"), "{how}: {msg}");
        twins.push(format!("melding: {}.", spell("123456789", how)));
    }
    assert_eq!(stored_records(&server, s).await, 0);
    let id = try_put(
        &server,
        s,
        twins
            .iter()
            .enumerate()
            .map(|(i, v)| text(&format!("note{i}"), "contact", v))
            .collect(),
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
    for (i, twin) in twins.iter().enumerate() {
        let f = field(&resp, &format!("note{i}")).unwrap();
        assert_eq!(text_of(f), twin);
    }
    server.stop().await;
}

/// A field named for a BSN (`bsn`, `bsn_nummer`, `burgerservicenummer`) holds one when its
/// value reads as the number after a BSN label, however it is written; the same value in
/// another field is a code, an amount or a phone number, and is stored.
#[tokio::test]
async fn a_field_named_for_a_bsn_is_read_as_a_labelled_number() {
    let server = TestServer::start().await;
    for (name, value) in [
        ("bsn", "l23456782"),
        ("bsn_nummer", "\u{20AC} 123456782"),
        ("burgerservicenummer", "+31 123456782"),
        ("sofinummer", "123_____456_____782"),
        ("bsn-nr", "123.456.782,00"),
        ("bsn", "zie: l23456782"),
        ("klant.bsn", "nvt 1234 5672"),
    ] {
        let refused = try_put(&server, "REL-0901", vec![text(name, "identity", value)])
            .await
            .expect_err("a BSN in a field named for one was stored");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("fields[0].text"), "{refused:?}");
        assert!(!refused.message().contains(value), "the value was echoed");
        try_put(
            &server,
            "REL-0902",
            vec![text("kenmerk", "identity", value)],
        )
        .await
        .unwrap_or_else(|s| panic!("{value:?} in another field refused: {s:?}"));
    }
    // A name that only mentions a BSN is no label: its numbers are read as anywhere else
    // (Unix times, of which one in eleven would pass the eleven-test after a label).
    for k in 0..30u64 {
        let time = (1_716_097_655 + k * 86_413).to_string();
        try_put(
            &server,
            "REL-0902",
            vec![text("bsn_verified_at", "identity", &time)],
        )
        .await
        .unwrap_or_else(|s| panic!("{time} in `bsn_verified_at` refused: {s:?}"));
    }
    // The other doors of a value named for a BSN: binary data (in any encoding), a label kept
    // in clear, an evidence file.
    for value in ["l23456782", "123456782,00", "1234 5672"] {
        let utf16: Vec<u8> = value.encode_utf16().flat_map(u16::to_le_bytes).collect();
        for data in [value.as_bytes().to_vec(), utf16] {
            let refused = try_put(&server, "REL-0901", vec![binary("bsn", "identity", &data)])
                .await
                .expect_err("a BSN as binary data named for one was stored");
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            assert!(
                refused.message().contains("fields[0].binary"),
                "{refused:?}"
            );
            try_put(
                &server,
                "REL-0902",
                vec![binary("kenmerk", "identity", &data)],
            )
            .await
            .unwrap_or_else(|s| panic!("{value:?} as data in another field refused: {s:?}"));
        }
        let mut client = server.client().await;
        for (key, holds) in [("bsn", true), ("klant.bsn", true), ("kenmerk", false)] {
            let put = client
                .put_record(req(
                    server.token(Role::NuisanceOfficer),
                    pb::PutRecordRequest {
                        context: nuisance_ctx(),
                        subject_id: if holds { "REL-0901" } else { "REL-0902" }.into(),
                        fields: vec![text("statement", "nuisance-evidence", "noise")],
                        labels: [(key.to_owned(), value.to_owned())].into(),
                    },
                ))
                .await;
            match (holds, put) {
                (true, Err(refused)) => {
                    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
                    assert!(refused.message().contains("labels["), "{refused:?}");
                    assert!(!refused.message().contains(value), "the value was echoed");
                }
                (true, Ok(_)) => panic!("{value:?} in label `{key}` was stored"),
                (false, put) => {
                    put.unwrap_or_else(|s| panic!("{value:?} in label `{key}` refused: {s:?}"));
                }
            }
        }
    }
    let record = try_put(
        &server,
        "REL-0902",
        vec![text("statement", "nuisance-evidence", "noise")],
    )
    .await
    .unwrap();
    for (field, stored) in [
        ("bsn", false),
        ("burgerservicenummer", false),
        ("photo", true),
    ] {
        let start = evidence_start(nuisance_ctx(), "", &record, field, "text/plain", "n.txt");
        let put = upload_bytes(
            &server,
            server.token(Role::NuisanceOfficer),
            start,
            b"l23456782",
        )
        .await;
        match put {
            Ok(_) => assert!(
                stored,
                "a BSN in an evidence file named `{field}` was stored"
            ),
            Err(refused) => {
                assert!(!stored, "refused in `{field}`: {refused:?}");
                assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            }
        }
    }
    assert_eq!(stored_records(&server, "REL-0901").await, 0);
    server.stop().await;
}

/// Sends bytes as they are, as the message of a call (a client built from other proto files,
/// or an attacker writing frames by hand).
#[derive(Clone, Default)]
struct RawBytes;

struct RawEncoder;

struct AnswerDecoder<U>(std::marker::PhantomData<U>);

impl tonic::codec::Codec for RawBytes {
    type Encode = bytes::Bytes;
    type Decode = pb::PutRecordResponse;
    type Encoder = RawEncoder;
    type Decoder = AnswerDecoder<pb::PutRecordResponse>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        AnswerDecoder(std::marker::PhantomData)
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(buf, item);
        Ok(())
    }
}

impl<U: prost::Message + Default> tonic::codec::Decoder for AnswerDecoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<U>, tonic::Status> {
        // Whatever the method answers, only its status matters here.
        let _ = bytes::Buf::copy_to_bytes(buf, bytes::Buf::remaining(buf));
        Ok(Some(U::default()))
    }
}

/// A call of `call_raw`: token, path, messages, whether a client stream, what the status says.
type RawCase<'a> = (&'a str, &'static str, Vec<Vec<u8>>, bool, &'a str);

/// Calls `path` with `messages` as their bytes (a client stream when `streaming`, else the
/// one message of a unary call), as `token`; gives the call's status.
async fn call_raw(
    server: &TestServer,
    token: &str,
    path: &'static str,
    mut messages: Vec<Vec<u8>>,
    streaming: bool,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(server.raw_channel().await);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let answer = if streaming {
        let stream = tokio_stream::iter(messages.into_iter().map(bytes::Bytes::from));
        grpc.client_streaming(req(token, stream), path, RawBytes)
            .await
            .map(drop)
    } else {
        assert_eq!(messages.len(), 1, "a unary call has one message");
        let message = bytes::Bytes::from(messages.remove(0));
        grpc.unary(req(token, message), path, RawBytes)
            .await
            .map(drop)
    };
    match answer {
        Ok(()) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

#[tokio::test]
async fn bytes_that_are_no_message_of_the_api_are_invalid_arguments_and_store_nothing() {
    use prost::Message;
    let server = TestServer::start().await;
    let officer = server.token(Role::NuisanceOfficer).to_owned();
    let security = server.token(Role::SecurityOfficer).to_owned();
    // A whole write whose last field's name is not UTF-8: the subject and the first field
    // decode, the message does not.
    let write = pb::PutRecordRequest {
        context: nuisance_ctx(),
        subject_id: "REL-0909".into(),
        fields: vec![
            text("street", "contact", "Dorpsstraat 1"),
            text("qz", "contact", "x"),
        ],
        labels: Default::default(),
    }
    .encode_to_vec();
    let name_at = write
        .windows(2)
        .position(|w| w == b"qz")
        .expect("the name is in the encoding");
    let mut not_utf8 = write.clone();
    not_utf8[name_at..name_at + 2].copy_from_slice(&[0xff, 0xfe]);
    // The record id (field 2) sent as a number, not a string.
    let wrong_type = vec![0x10, 0x01];
    // A string whose length runs past the end of the message.
    let past_the_end = vec![0x12, 0x7f, b'a'];
    // No message at all: a varint that never ends.
    let junk = vec![0xff; 11];
    // An upload whose start is sound and whose next message is not.
    let start = evidence_start(
        nuisance_ctx(),
        "REL-0910",
        "",
        "photo",
        "image/jpeg",
        "hal.jpg",
    )
    .encode_to_vec();
    // What prost says of the bytes, and the field where it can name one.
    let cases: Vec<RawCase<'_>> = vec![
        (
            &officer,
            "/kluis.v1.Vault/PutRecord",
            vec![not_utf8],
            false,
            "FieldValue.name",
        ),
        (
            &officer,
            "/kluis.v1.Vault/PutRecord",
            vec![junk.clone()],
            false,
            "invalid varint",
        ),
        (
            &officer,
            "/kluis.v1.Vault/GetRecord",
            vec![wrong_type],
            false,
            "GetRecordRequest.record_id",
        ),
        (
            &officer,
            "/kluis.v1.Vault/GetRecord",
            vec![past_the_end],
            false,
            "GetRecordRequest.record_id",
        ),
        (
            &officer,
            "/kluis.v1.Vault/ExportSubject",
            vec![junk.clone()],
            false,
            "invalid varint",
        ),
        (
            &officer,
            "/kluis.v1.Vault/PutEvidence",
            vec![junk.clone()],
            true,
            "invalid varint",
        ),
        (
            &officer,
            "/kluis.v1.Vault/PutEvidence",
            vec![start, junk.clone()],
            true,
            "invalid varint",
        ),
        (
            &security,
            "/kluis.v1.Admin/IssueToken",
            vec![junk.clone()],
            false,
            "invalid varint",
        ),
        (
            &security,
            "/kluis.v1.Admin/AuditHead",
            vec![junk.clone()],
            false,
            "invalid varint",
        ),
        (
            &security,
            "/kluis.v1.Operator/Unseal",
            vec![junk],
            false,
            "invalid varint",
        ),
    ];
    for (token, path, messages, streaming, said) in cases {
        let status = call_raw(&server, token, path, messages, streaming).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{path}: {}",
            status.message()
        );
        assert!(
            status
                .message()
                .contains("failed to decode Protobuf message")
                && status.message().contains(said)
                && status.message().contains("proto/kluis/v1"),
            "{path}: {}",
            status.message()
        );
    }
    assert_eq!(stored_records(&server, "REL-0910").await, 0);
    assert_eq!(stored_records(&server, "REL-0909").await, 0);
    // The twin: the same bytes with the name as it was are a write that is stored.
    let status = call_raw(
        &server,
        &officer,
        "/kluis.v1.Vault/PutRecord",
        vec![write],
        false,
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{}", status.message());
    assert_eq!(stored_records(&server, "REL-0909").await, 1);
}

/// A request body of `frames`, then its end.
struct Framed(std::collections::VecDeque<bytes::Bytes>);

impl http_body::Body for Framed {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|d| Ok(http_body::Frame::data(d))))
    }
}

/// A gRPC frame: `flag`, the length `announced`, then `body`.
fn frame(flag: u8, announced: usize, body: &[u8]) -> Vec<u8> {
    let mut f = vec![flag];
    f.extend_from_slice(&u32::try_from(announced).unwrap().to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// Posts `body` as it is to `path`, as `token`: the call's status.
async fn post_framed(
    server: &TestServer,
    token: &str,
    path: &str,
    body: Vec<Vec<u8>>,
) -> tonic::Status {
    post_framed_with(server, token, path, body, "identity").await
}

/// `post_framed`, with `encoding` as the request's `grpc-encoding`.
async fn post_framed_with(
    server: &TestServer,
    token: &str,
    path: &str,
    body: Vec<Vec<u8>>,
    encoding: &str,
) -> tonic::Status {
    use tower::ServiceExt;
    let request = tonic::codegen::http::Request::post(format!("http://kluis{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", encoding)
        .header("authorization", format!("Bearer {token}"))
        .body(tonic::body::Body::new(Framed(
            body.into_iter().map(bytes::Bytes::from).collect(),
        )))
        .unwrap();
    let response = server.raw_channel().await.oneshot(request).await.unwrap();
    status_of_response(response).await
}

/// tonic answers a request framed wrong (no message, a frame cut short, a compressed flag it
/// cannot take) with `INTERNAL` before kluis sees a message; kluis's services answer
/// `INVALID_ARGUMENT`, saying how a request is framed, and store nothing.
#[tokio::test]
async fn badly_framed_requests_are_invalid_arguments_and_store_nothing() {
    use prost::Message;
    let server = TestServer::start().await;
    let officer = server.token(Role::NuisanceOfficer).to_owned();
    let write = pb::PutRecordRequest {
        context: nuisance_ctx(),
        subject_id: "REL-0911".into(),
        fields: vec![text("phone", "contact", "06-3")],
        labels: Default::default(),
    }
    .encode_to_vec();
    let start = evidence_start(
        nuisance_ctx(),
        "REL-0911",
        "",
        "photo",
        "image/jpeg",
        "hal.jpg",
    )
    .encode_to_vec();
    let cases: Vec<(&str, &str, Vec<Vec<u8>>)> = vec![
        ("no message", "/kluis.v1.Vault/PutRecord", vec![]),
        (
            "an empty body frame",
            "/kluis.v1.Vault/PutRecord",
            vec![Vec::new()],
        ),
        (
            "a length past the end",
            "/kluis.v1.Vault/PutRecord",
            vec![frame(0, write.len() + 9, &write)],
        ),
        (
            "half a prefix",
            "/kluis.v1.Vault/GetRecord",
            vec![vec![0, 0]],
        ),
        (
            "compressed without an encoding",
            "/kluis.v1.Vault/PutRecord",
            vec![frame(1, write.len(), &write)],
        ),
        (
            "a flag that is no flag",
            "/kluis.v1.Vault/PutRecord",
            vec![frame(7, write.len(), &write)],
        ),
        (
            "an upload's second frame with a flag that is no flag",
            "/kluis.v1.Vault/PutEvidence",
            vec![frame(0, start.len(), &start), frame(7, 4, b"jpeg")],
        ),
        (
            "an upload's second frame cut short",
            "/kluis.v1.Vault/PutEvidence",
            vec![frame(0, start.len(), &start), frame(0, 4096, b"jpeg")],
        ),
    ];
    for (what, path, body) in cases {
        let status = post_framed(&server, &officer, path, body).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{what}: {}",
            status.message()
        );
        assert!(
            status
                .message()
                .contains("not framed as gRPC frames a message"),
            "{what}: {}",
            status.message()
        );
    }
    // A compression kluis does not take is UNIMPLEMENTED, as gRPC says, without repeating what
    // the client put in the header.
    let status = post_framed_with(
        &server,
        &officer,
        "/kluis.v1.Vault/PutRecord",
        vec![frame(1, write.len(), &write)],
        "bsn-111222333",
    )
    .await;
    assert_eq!(status.code(), Code::Unimplemented, "{}", status.message());
    assert!(
        status.message().contains("`grpc-encoding`") && !status.message().contains("111222333"),
        "{}",
        status.message()
    );
    assert_eq!(stored_records(&server, "REL-0911").await, 0);
    // The twin: the same write framed right is stored.
    let status = post_framed(
        &server,
        &officer,
        "/kluis.v1.Vault/PutRecord",
        vec![frame(0, write.len(), &write)],
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{}", status.message());
    assert_eq!(stored_records(&server, "REL-0911").await, 1);
}

/// A response body: `data` as one gRPC frame, then trailers saying OK.
struct AnswerBody(Option<bytes::Bytes>, bool);

impl http_body::Body for AnswerBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Some(data) = self.0.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        if std::mem::replace(&mut self.1, false) {
            let mut trailers = tonic::codegen::http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        std::task::Poll::Ready(None)
    }
}

/// A server that calls itself `kluis.v1.Operator` and answers every call with bytes that are
/// no message of kluis's API (a string that is not UTF-8): a server of another version, or not
/// kluis at all.
#[derive(Clone)]
struct ForeignOperator;

impl tonic::server::NamedService for ForeignOperator {
    const NAME: &'static str = "kluis.v1.Operator";
}

impl tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for ForeignOperator {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let answer = frame(0, 4, &[0x0a, 0x02, 0xff, 0xfe]);
        let response = tonic::codegen::http::Response::builder()
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::new(AnswerBody(
                Some(bytes::Bytes::from(answer)),
                true,
            )))
            .unwrap();
        std::future::ready(Ok(response))
    }
}

/// kluis's clients (the CLI's) keep tonic's codec: an answer that does not decode is the
/// server's fault (`INTERNAL`), never taken for a refusal of what was sent (`INVALID_ARGUMENT`,
/// which `kluis operator rekey-shares` takes as "nothing changed" and deletes the new shares).
#[tokio::test]
async fn an_answer_that_does_not_decode_is_no_refusal_to_a_client() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ForeignOperator)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = pb::operator_client::OperatorClient::new(channel)
        .replace_shares(pb::ReplaceSharesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{}", status.message());
    assert!(
        status
            .message()
            .contains("failed to decode Protobuf message"),
        "{}",
        status.message()
    );
    server.abort();
}
